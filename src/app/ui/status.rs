//! The status bar: device, the last message or error, UI time per frame.

use eframe::egui;

use super::Action;
use crate::app::app::StudioApp;

pub fn status_ui(ui: &mut egui::Ui, app: &mut StudioApp, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        ui.label(format!("Device: {}", app.device.as_deref().unwrap_or("not chosen yet")));
        ui.separator();
        if app.worker_dead && ui.button("Restart worker").clicked() {
            actions.push(Action::RestartWorker);
        }
        if let Some(message) = &app.message {
            if message.error {
                ui.colored_label(ui.visuals().error_fg_color, &message.text);
            } else {
                ui.label(&message.text);
            }
        }
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            ui.weak(format!("UI {:.1} ms/frame", app.frame_stats.last_ui_secs * 1e3));
        });
    });
}
