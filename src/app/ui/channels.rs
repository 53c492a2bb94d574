//! The raw latent channels in false color: drawn by `shaders/latent_channels.wgsl` through an
//! egui-wgpu paint callback when the window renders with wgpu, else by the same color map on
//! the CPU into a texture.

use std::collections::HashMap;
use std::sync::Arc;

use eframe::egui;
use eframe::egui_wgpu::{self, wgpu};
use wgpu::util::DeviceExt as _;

use crate::app::worker::LatentData;

/// Latents whose buffers stay on the GPU; older ones are dropped.
const MAX_CACHED_LATENTS: usize = 64;

/// Grid columns for `channels` tiles (at most 4 across).
pub fn columns(channels: usize) -> usize {
    channels.clamp(1, 4)
}

/// The largest magnitude, the color scale.
pub fn value_range(latent: &LatentData) -> f32 {
    latent.values.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6)
}

/// The CPU twin of the shader's color map.
pub fn diverging(t: f32) -> egui::Color32 {
    let (middle, negative, positive) = ([0.87, 0.87, 0.87], [0.23, 0.30, 0.75], [0.71, 0.02, 0.15]);
    let (end, amount) = if t < 0.0 { (negative, -t) } else { (positive, t) };
    let mix = |i: usize| {
        ((middle[i] + (end[i] - middle[i]) * amount.clamp(0.0, 1.0)) * 255.0).round() as u8
    };
    egui::Color32::from_rgb(mix(0), mix(1), mix(2))
}

/// The channel grid as an image, for renderers without the shader.
pub fn false_color_grid(latent: &LatentData) -> egui::ColorImage {
    let columns = columns(latent.channels);
    let rows = latent.channels.div_ceil(columns);
    let (width, height) = (latent.width * columns, latent.height * rows);
    let range = value_range(latent);
    let mut pixels = vec![egui::Color32::TRANSPARENT; width * height];
    for channel in 0..latent.channels {
        let (left, top) = ((channel % columns) * latent.width, (channel / columns) * latent.height);
        for y in 0..latent.height {
            for x in 0..latent.width {
                let value = latent.values[(channel * latent.height + y) * latent.width + x];
                pixels[(top + y) * width + left + x] = diverging(value / range);
            }
        }
    }
    egui::ColorImage::new([width, height], pixels)
}

/// The size in points of the channel grid drawn `scale` physical pixels per latent pixel.
pub fn grid_size(latent: &LatentData, scale_px: f32, pixels_per_point: f32) -> egui::Vec2 {
    let columns = columns(latent.channels);
    let rows = latent.channels.div_ceil(columns);
    egui::vec2((latent.width * columns) as f32, (latent.height * rows) as f32) * scale_px
        / pixels_per_point
}

/// The shader's pipeline and the per-latent buffers, kept in egui-wgpu's callback resources.
pub struct ChannelPipeline {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    latents: HashMap<u64, wgpu::BindGroup>,
}

/// Register the pipeline with the renderer. `false` when the adapter cannot read storage
/// buffers in fragment shaders (some GL drivers); the CPU path is used then.
pub fn install(render_state: &egui_wgpu::RenderState) -> bool {
    let device = &render_state.device;
    if device.limits().max_storage_buffers_per_shader_stage == 0 {
        log::warn!(
            "The GPU cannot read storage buffers in fragment shaders; latent channels are drawn on the CPU"
        );
        return false;
    }
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("latent_channels"),
        source: wgpu::ShaderSource::Wgsl(
            include_str!("../../../shaders/latent_channels.wgsl").into(),
        ),
    });
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("latent_channels"),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 1,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            },
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("latent_channels"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("latent_channels"),
        layout: Some(&pipeline_layout),
        vertex: wgpu::VertexState {
            module: &module,
            entry_point: Some("vs_main"),
            buffers: &[],
            compilation_options: wgpu::PipelineCompilationOptions::default(),
        },
        primitive: wgpu::PrimitiveState::default(),
        depth_stencil: None,
        multisample: wgpu::MultisampleState::default(),
        fragment: Some(wgpu::FragmentState {
            module: &module,
            entry_point: Some("fs_main"),
            targets: &[Some(wgpu::ColorTargetState {
                format: render_state.target_format,
                blend: Some(wgpu::BlendState::ALPHA_BLENDING),
                write_mask: wgpu::ColorWrites::ALL,
            })],
            compilation_options: wgpu::PipelineCompilationOptions::default(),
        }),
        multiview_mask: None,
        cache: None,
    });
    render_state.renderer.write().callback_resources.insert(ChannelPipeline {
        pipeline,
        layout,
        latents: HashMap::new(),
    });
    true
}

/// One draw of a latent's channel grid; `key` identifies the latent (its buffers are cached).
pub struct ChannelCallback {
    pub key: u64,
    pub latent: Arc<LatentData>,
}

impl egui_wgpu::CallbackTrait for ChannelCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        _queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(channel_pipeline) = resources.get_mut::<ChannelPipeline>() else {
            return Vec::new();
        };
        if channel_pipeline.latents.contains_key(&self.key) {
            return Vec::new();
        }
        if channel_pipeline.latents.len() >= MAX_CACHED_LATENTS {
            channel_pipeline.latents.clear();
        }
        let latent = &self.latent;
        let params: [u32; 8] = [
            latent.channels as u32,
            latent.height as u32,
            latent.width as u32,
            columns(latent.channels) as u32,
            value_range(latent).to_bits(),
            0,
            0,
            0,
        ];
        let params_bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
        let values_bytes: Vec<u8> = latent.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("latent_channels.params"),
            contents: &params_bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let storage = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("latent_channels.values"),
            contents: &values_bytes,
            usage: wgpu::BufferUsages::STORAGE,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("latent_channels"),
            layout: &channel_pipeline.layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: storage.as_entire_binding() },
            ],
        });
        channel_pipeline.latents.insert(self.key, bind_group);
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(channel_pipeline) = resources.get::<ChannelPipeline>() else {
            return;
        };
        let Some(bind_group) = channel_pipeline.latents.get(&self.key) else {
            return;
        };
        render_pass.set_pipeline(&channel_pipeline.pipeline);
        render_pass.set_bind_group(0, bind_group, &[]);
        render_pass.draw(0..3, 0..1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_grid_tiles_each_channel_and_colors_by_sign() {
        let latent = LatentData {
            channels: 3,
            height: 1,
            width: 2,
            values: vec![-1.0, 0.0, 1.0, 0.5, 0.0, 0.0],
        };
        let grid = false_color_grid(&latent);
        assert_eq!(grid.size, [6, 1]);
        assert_eq!(grid.pixels[0], diverging(-1.0));
        assert_eq!(grid.pixels[2], diverging(1.0));
        assert!(grid.pixels[0].b() > grid.pixels[0].r() && grid.pixels[2].r() > grid.pixels[2].b());
    }
}
