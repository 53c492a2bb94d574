// The raw channels of a latent in false color, tiled in a grid: negative values blue, zero
// light grey, positive red, scaled by `value_range` (the latent's largest magnitude).
// Drawn by src/app/ui/channels.rs through an egui-wgpu paint callback; the viewport is the
// callback's rectangle, so one triangle covering clip space fills it.

struct Params {
    channels: u32,
    height: u32,
    width: u32,
    columns: u32,
    value_range: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
};

@group(0) @binding(0) var<uniform> params: Params;
// NCHW with batch 1: channel-major, then rows, then columns.
@group(0) @binding(1) var<storage, read> values: array<f32>;

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    @location(0) uv: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOut {
    // (0, 0), (2, 0), (0, 2) in uv: one triangle that covers the unit square.
    let uv = vec2<f32>(f32((index << 1u) & 2u), f32(index & 2u));
    var out: VertexOut;
    out.position = vec4<f32>(uv.x * 2.0 - 1.0, 1.0 - uv.y * 2.0, 0.0, 1.0);
    out.uv = uv;
    return out;
}

fn diverging(t: f32) -> vec3<f32> {
    let negative = vec3<f32>(0.23, 0.30, 0.75);
    let middle = vec3<f32>(0.87, 0.87, 0.87);
    let positive = vec3<f32>(0.71, 0.02, 0.15);
    if (t < 0.0) {
        return mix(middle, negative, -t);
    }
    return mix(middle, positive, t);
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let rows = (params.channels + params.columns - 1u) / params.columns;
    let cell = vec2<f32>(in.uv.x * f32(params.columns), in.uv.y * f32(rows));
    let column = min(u32(cell.x), params.columns - 1u);
    let row = min(u32(cell.y), rows - 1u);
    let channel = row * params.columns + column;
    if (channel >= params.channels) {
        return vec4<f32>(0.0, 0.0, 0.0, 0.0);
    }
    let local = fract(cell);
    let x = min(u32(local.x * f32(params.width)), params.width - 1u);
    let y = min(u32(local.y * f32(params.height)), params.height - 1u);
    let value = values[(channel * params.height + y) * params.width + x];
    let t = clamp(value / max(params.value_range, 1e-6), -1.0, 1.0);
    return vec4<f32>(diverging(t), 1.0);
}
