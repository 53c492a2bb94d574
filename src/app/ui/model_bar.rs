//! The model picker: the embedded default (when assets/ has it), or a folder; the backend; loading
//! state and errors.

use std::path::PathBuf;

use eframe::egui;

use super::Action;
use crate::app::app::{ModelState, StudioApp};
use crate::backend::BackendChoice;

pub fn model_bar_ui(ui: &mut egui::Ui, app: &mut StudioApp, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        ui.strong("STARFlow Studio");
        ui.separator();
        let available = crate::pipeline::default_model_available();
        let loading = matches!(app.model, ModelState::Loading { .. });
        if ui
            .add_enabled(available && !loading, egui::Button::new("Embedded default model"))
            .on_disabled_hover_text("Not in this build's assets/ folder: load a model folder.")
            .clicked()
        {
            actions.push(Action::LoadModel(crate::pipeline::default_model_dir()));
        }
        let label = ui.label("Model folder");
        ui.add(egui::TextEdit::singleline(&mut app.model_folder_text).desired_width(260.0))
            .labelled_by(label.id);
        if ui.button("Browse…").clicked() {
            actions.push(Action::BrowseModel);
        }
        let folder = app.model_folder_text.trim().to_string();
        if ui.add_enabled(!loading && !folder.is_empty(), egui::Button::new("Load")).clicked() {
            actions.push(Action::LoadModel(PathBuf::from(folder)));
        }
        egui::ComboBox::from_label("Device")
            .selected_text(backend_label(app.settings.backend))
            .show_ui(ui, |ui| {
                for choice in [BackendChoice::Wgpu, BackendChoice::Cpu] {
                    ui.selectable_value(&mut app.settings.backend, choice, backend_label(choice));
                }
            });
    });
    ui.horizontal(|ui| match &app.model {
        ModelState::None => {
            ui.label("No model loaded");
        }
        ModelState::Loading { folder, stage, done } => {
            ui.spinner();
            ui.add(egui::ProgressBar::new(*done).desired_width(120.0));
            ui.label(format!("Loading {}: {stage}…", folder.display()));
        }
        ModelState::Ready(info) => {
            ui.label(format!(
                "{} · {}x{} latent, {} channels, {} blocks",
                info.name,
                info.config.latent_width,
                info.config.latent_height,
                info.config.latent_channels,
                info.config.num_blocks()
            ));
        }
        ModelState::Failed { message, .. } => {
            ui.colored_label(ui.visuals().error_fg_color, "Model failed to load")
                .on_hover_text(message.clone());
        }
    });
    if let ModelState::Failed { message, .. } = &app.model {
        ui.colored_label(ui.visuals().error_fg_color, message.clone());
    }
}

fn backend_label(choice: BackendChoice) -> &'static str {
    match choice {
        BackendChoice::Wgpu => "GPU (wgpu, CPU fallback)",
        BackendChoice::Cpu => "CPU",
    }
}
