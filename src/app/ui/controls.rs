//! Prompt and settings: what the next generation will use.

use eframe::egui;

use super::Action;
use crate::app::app::StudioApp;
use crate::app::state::{MAX_BATCH, SamplerKind};
use crate::model::GuidanceRule;
use crate::pipeline::Denoise;

pub fn controls_ui(ui: &mut egui::Ui, app: &mut StudioApp, actions: &mut Vec<Action>) {
    let model = app.model_info().cloned();
    let settings = &mut app.settings;

    let label = ui.label("Prompt");
    ui.add(
        egui::TextEdit::multiline(&mut settings.prompt)
            .desired_rows(4)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(label.id);
    match model.as_ref().map(|m| (m.tokenizer.as_ref(), m.config.conditioning)) {
        Some((Some(tokenizer), _)) => match tokenizer.encode_batch(&[settings.prompt.as_str()]) {
            Ok(tokens) => {
                let tokens = &tokens[0];
                ui.label(format!("tokens: {} / {}", tokens.used_tokens(), tokenizer.text_len()));
                if let Some(cut) = &tokens.cut {
                    ui.colored_label(
                        ui.visuals().warn_fg_color,
                        format!(
                            "The prompt is too long: {} tokens are cut: \u{201c}{}\u{201d}",
                            cut.tokens, cut.text
                        ),
                    );
                }
            }
            Err(error) => {
                ui.colored_label(ui.visuals().error_fg_color, format!("tokens: {error}"));
            }
        },
        Some((None, crate::model::Conditioning::Text)) | None => {
            ui.weak("tokens: no tokenizer");
        }
        Some((None, _)) => {
            ui.weak("tokens: no tokenizer (this model is not conditioned on text; the prompt is only stored with the image)");
        }
    }

    ui.checkbox(&mut settings.use_negative_prompt, "Negative prompt (experimental)").on_hover_text(
        "Replaces the empty caption of the null branch that guidance compares against.",
    );
    if settings.use_negative_prompt {
        let label = ui.label("Negative prompt");
        ui.add(
            egui::TextEdit::multiline(&mut settings.negative_prompt)
                .desired_rows(2)
                .desired_width(f32::INFINITY),
        )
        .labelled_by(label.id);
    }
    ui.separator();

    if let Some(classes) = model.as_ref().and_then(|m| m.num_classes()) {
        let text = match settings.class {
            Some(class) => format!("class {class}"),
            None => "unconditional".to_string(),
        };
        egui::ComboBox::from_label("Class").selected_text(text).show_ui(ui, |ui| {
            ui.selectable_value(&mut settings.class, None, "unconditional");
            for class in 0..classes {
                ui.selectable_value(&mut settings.class, Some(class), format!("class {class}"));
            }
        });
    }

    let guidable = model.as_ref().is_some_and(|m| m.guidable());
    let max_guidance = model.as_ref().map_or(10.0, |m| m.config.max_guidance.max(0.0));
    ui.add_enabled_ui(guidable, |ui| {
        let default = model.as_ref().map_or(0.0, |m| m.config.default_guidance);
        ui.add(egui::Slider::new(&mut settings.guidance, 0.0..=max_guidance).text("Guidance"))
            .on_hover_text(format!(
                "Guidance weight w; 0 is off. The model's default is {default}."
            ));
        let model_rule = model.as_ref().map_or(GuidanceRule::Gaussian, |m| m.config.guidance_rule);
        let rule = settings.guidance_rule.unwrap_or(model_rule);
        egui::ComboBox::from_label("Guidance rule").selected_text(rule_label(rule)).show_ui(
            ui,
            |ui| {
                for option in [GuidanceRule::Gaussian, GuidanceRule::Linear] {
                    let mut text = rule_label(option).to_string();
                    if option == model_rule {
                        text.push_str(" (model default)");
                    }
                    if ui.selectable_label(rule == option, text).clicked() {
                        settings.guidance_rule = (option != model_rule).then_some(option);
                    }
                }
            },
        );
    });
    if !guidable && model.is_some() {
        ui.weak("This model is unconditional: guidance does not apply.");
    }

    ui.horizontal(|ui| {
        ui.label("Sampler");
        ui.radio_value(&mut settings.sampler, SamplerKind::Sequential, "Sequential (exact)");
        ui.radio_value(&mut settings.sampler, SamplerKind::Jacobi, "Jacobi");
    });
    if settings.sampler == SamplerKind::Jacobi {
        ui.add(
            egui::Slider::new(&mut settings.jacobi_threshold, 1e-5..=1e-1)
                .logarithmic(true)
                .text("Jacobi threshold"),
        );
    }

    ui.horizontal(|ui| {
        let label = ui.label("Seed");
        ui.add(egui::DragValue::new(&mut settings.seed).speed(1.0)).labelled_by(label.id);
        if ui.button("Random seed").clicked() {
            settings.seed = rand::random::<u64>() >> 11;
        }
    });

    let has_learned = model.as_ref().is_some_and(|m| m.config.learned_denoiser);
    egui::ComboBox::from_label("Denoise").selected_text(denoise_label(settings.denoise)).show_ui(
        ui,
        |ui| {
            ui.selectable_value(
                &mut settings.denoise,
                Denoise::Score,
                denoise_label(Denoise::Score),
            );
            if has_learned {
                ui.selectable_value(
                    &mut settings.denoise,
                    Denoise::Learned,
                    denoise_label(Denoise::Learned),
                );
            }
            ui.selectable_value(&mut settings.denoise, Denoise::None, denoise_label(Denoise::None));
        },
    );

    ui.horizontal(|ui| {
        let label = ui.label("Batch");
        ui.add(egui::DragValue::new(&mut settings.batch_count).range(1..=MAX_BATCH))
            .labelled_by(label.id);
        ui.weak("images (seed, seed + 1, …)");
    });
    ui.separator();

    let running = app.is_running();
    ui.horizontal(|ui| {
        let ready = app.model_info().is_some();
        if ui
            .add_enabled(ready, egui::Button::new("Generate"))
            .on_hover_text("Ctrl+Enter")
            .clicked()
        {
            actions.push(Action::Generate);
        }
        if ui.add_enabled(running, egui::Button::new("Stop")).on_hover_text("Esc").clicked() {
            actions.push(Action::Cancel);
        }
    });
}

fn rule_label(rule: GuidanceRule) -> &'static str {
    match rule {
        GuidanceRule::Gaussian => "STARFlow (Gaussian)",
        GuidanceRule::Linear => "TARFlow (linear)",
    }
}

fn denoise_label(denoise: Denoise) -> &'static str {
    match denoise {
        Denoise::Score => "score step",
        Denoise::Learned => "learned denoiser",
        Denoise::None => "off",
    }
}
