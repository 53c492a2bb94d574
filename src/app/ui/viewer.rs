//! The image: the live preview while sampling, then a scrubber over the stored stages (noise,
//! each block, denoised, final), each decoded and, on request, as false-color channels.

use eframe::egui;

use super::channels::{self, ChannelCallback};
use crate::app::app::{PLAY_STEP_SECS, RunState, StudioApp};

pub fn viewer_ui(ui: &mut egui::Ui, app: &mut StudioApp) {
    let channel_shader = app.channel_shader;
    let show_channels = &mut app.show_channels;
    let Some(run) = app.run.as_mut() else {
        ui.centered_and_justified(|ui| {
            ui.label("No image yet. Type a prompt and press Generate (Ctrl+Enter).");
        });
        return;
    };

    match &run.state {
        RunState::Running => {
            let (fraction, text) = match &run.status {
                Some(status) => {
                    let eta = status.eta_secs.map_or(String::new(), |s| format!(" · ETA {s:.1} s"));
                    let text = format!(
                        "{} · {}/{} tokens · {:.0}%{eta}",
                        status.block_name,
                        status.progress.done,
                        status.progress.tokens,
                        status.fraction * 100.0
                    );
                    (status.fraction, text)
                }
                None => (0.0, "starting…".to_string()),
            };
            ui.add(egui::ProgressBar::new(fraction).text(text));
        }
        RunState::Finished => {
            ui.label(format!("Done · seed {}", run.seed));
        }
        RunState::Cancelled => {
            ui.label(format!("Stopped · seed {}", run.seed));
        }
        RunState::Failed(message) => {
            ui.colored_label(ui.visuals().error_fg_color, format!("Failed: {message}"));
        }
    }

    // Scrubber.
    let count = run.stages.len();
    let shown = run.shown_stage();
    if let Some(since) = run.playing_since
        && count > 0
    {
        let steps = (since.elapsed().as_secs_f32() / PLAY_STEP_SECS) as usize;
        run.selected = Some(steps % count);
    }
    ui.horizontal(|ui| {
        let mut index = shown.unwrap_or(count.saturating_sub(1));
        if ui.add_enabled(count > 0 && index > 0, egui::Button::new("Previous")).clicked() {
            run.selected = Some(index - 1);
            run.playing_since = None;
        }
        let playing = run.playing_since.is_some();
        if ui
            .add_enabled(count > 1, egui::Button::new(if playing { "Pause" } else { "Play" }))
            .clicked()
        {
            run.playing_since = if playing { None } else { Some(std::time::Instant::now()) };
        }
        if ui.add_enabled(count > 0 && index + 1 < count, egui::Button::new("Next")).clicked() {
            run.selected = Some(index + 1);
            run.playing_since = None;
        }
        if count > 1 {
            let label = ui.label("Stage");
            let slider = ui
                .add(egui::Slider::new(&mut index, 0..=count - 1).show_value(false))
                .labelled_by(label.id);
            if slider.changed() {
                run.selected = Some(index);
                run.playing_since = None;
            }
        }
        if run.state == RunState::Running && run.selected.is_some() && ui.button("Live").clicked() {
            run.selected = None;
        }
        ui.checkbox(show_channels, "Latent channels");
    });

    let caption = match run.shown_stage() {
        Some(index) => {
            let stage = &run.stages[index].stage;
            let tokens = stage.tokens.map_or(String::new(), |t| format!(" · {t} tokens"));
            format!("Stage {}/{}: {}{tokens}", index + 1, count, stage.name)
        }
        None => match &run.status {
            Some(status) => format!(
                "Live: {} · {}/{} tokens",
                status.block_name, status.progress.done, status.progress.tokens
            ),
            None => "Live".to_string(),
        },
    };
    ui.label(caption);

    let (texture, latent, key) = match run.shown_stage() {
        Some(index) => {
            let view = &run.stages[index];
            (Some(view.texture.clone()), view.stage.latent.clone(), view.key)
        }
        None => (run.preview.clone(), None, 0),
    };
    let Some(texture) = texture else { return };
    let available = ui.available_size();
    let channel_room = if *show_channels && latent.is_some() { 0.45 } else { 1.0 };
    let ppp = ui.pixels_per_point();
    let [width, height] = texture.size();
    let scale_px =
        integer_scale(width, height, available.x * ppp, available.y * channel_room * ppp);
    let size = egui::vec2(width as f32, height as f32) * scale_px / ppp;
    ui.add(egui::Image::new((texture.id(), size)).texture_options(egui::TextureOptions::NEAREST));

    if *show_channels && let Some(latent) = latent {
        let grid_scale = integer_scale(
            latent.width * channels::columns(latent.channels),
            latent.height * latent.channels.div_ceil(channels::columns(latent.channels)),
            available.x * ppp,
            ui.available_height() * ppp * 0.9,
        );
        let size = channels::grid_size(&latent, grid_scale, ppp);
        ui.label(format!(
            "Raw latent channels, ±{:.2}: blue negative, red positive",
            channels::value_range(&latent)
        ));
        if channel_shader {
            let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
            ui.painter().add(eframe::egui_wgpu::Callback::new_paint_callback(
                rect,
                ChannelCallback { key, latent },
            ));
        } else if let Some(index) = run.shown_stage() {
            let view = &mut run.stages[index];
            let texture = view.channels_texture.get_or_insert_with(|| {
                ui.ctx().load_texture(
                    format!("channels-{key}"),
                    channels::false_color_grid(&latent),
                    egui::TextureOptions::NEAREST,
                )
            });
            ui.add(egui::Image::new((texture.id(), size)));
        }
    }
}

/// The largest whole number of physical pixels per image pixel that fits, or a fractional
/// shrink when the image is larger than the room.
fn integer_scale(width: usize, height: usize, room_w_px: f32, room_h_px: f32) -> f32 {
    let fit = (room_w_px / width.max(1) as f32).min(room_h_px / height.max(1) as f32);
    if fit >= 1.0 { fit.floor() } else { fit.max(0.05) }
}
