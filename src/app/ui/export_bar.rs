//! Saving the image: the native dialog, a path field that always works, the per-block strip,
//! the clipboard.

use eframe::egui;

use super::Action;
use crate::app::app::StudioApp;
use crate::app::export::ExportFormat;

pub fn export_bar_ui(ui: &mut egui::Ui, app: &mut StudioApp, actions: &mut Vec<Action>) {
    let finished = app.run.as_ref().is_some_and(|r| r.outcome.is_some());
    ui.horizontal(|ui| {
        let before = app.settings.export_format;
        egui::ComboBox::from_label("Format").selected_text(before.label()).show_ui(ui, |ui| {
            for format in ExportFormat::ALL {
                ui.selectable_value(&mut app.settings.export_format, format, format.label());
            }
        });
        if app.settings.export_format != before {
            actions.push(Action::FormatChanged);
        }
        ui.add_enabled_ui(finished, |ui| {
            let dialog = ui.button("Save…");
            if app.dialog_unavailable {
                dialog
                    .clone()
                    .on_hover_text("No file dialog is available here; use the path field.");
            }
            if dialog.clicked() {
                actions.push(Action::SaveDialog);
            }
            if ui
                .button("Save strip")
                .on_hover_text("Noise, each block, denoised and final side by side (PNG)")
                .clicked()
            {
                actions.push(Action::SaveStrip);
            }
            if ui.button("Copy").on_hover_text("Copy the image to the clipboard").clicked() {
                actions.push(Action::Copy);
            }
        });
    });
    ui.horizontal(|ui| {
        let label = ui.label("Save path");
        let width = (ui.available_width() - 110.0).max(120.0);
        ui.add(egui::TextEdit::singleline(&mut app.export_path).desired_width(width))
            .labelled_by(label.id);
        if ui.add_enabled(finished, egui::Button::new("Save to path")).clicked() {
            actions.push(Action::SaveToPath);
        }
    });
}
