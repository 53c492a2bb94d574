//! The gallery of past results: thumbnails, reuse their settings, export again, delete.

use eframe::egui;

use super::Action;
use crate::app::app::StudioApp;

pub fn history_ui(ui: &mut egui::Ui, app: &mut StudioApp, actions: &mut Vec<Action>) {
    ui.heading("History");
    if app.history.is_empty() {
        ui.weak("Finished images appear here.");
        return;
    }
    egui::ScrollArea::vertical().show(ui, |ui| {
        for (index, item) in app.history.iter().enumerate() {
            ui.push_id(index, |ui| {
                let [width, height] = item.texture.size();
                let scale = (96.0 / width.max(height).max(1) as f32).min(1.0);
                ui.add(egui::Image::new((
                    item.texture.id(),
                    egui::vec2(width as f32, height as f32) * scale,
                )))
                .on_hover_text(item.entry.record.as_ref().map_or_else(
                    || item.entry.path.display().to_string(),
                    |r| format!("{}\nseed {}, guidance {}", r.prompt, r.seed, r.guidance),
                ));
                if let Some(record) = &item.entry.record {
                    ui.weak(format!("seed {}", record.seed));
                }
                ui.horizontal(|ui| {
                    if ui
                        .add_enabled(item.entry.record.is_some(), egui::Button::new("Reuse"))
                        .clicked()
                    {
                        actions.push(Action::HistoryReuse(index));
                    }
                    if ui
                        .button("Export")
                        .on_hover_text("Save again, into the Save path's folder")
                        .clicked()
                    {
                        actions.push(Action::HistoryExport(index));
                    }
                    if ui.button("Delete").clicked() {
                        actions.push(Action::HistoryDelete(index));
                    }
                });
                ui.separator();
            });
        }
    });
}
