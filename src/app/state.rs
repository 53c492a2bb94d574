//! What the user edits and what persists across restarts (through eframe's storage), and how
//! a saved image's metadata restores it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::export::ExportFormat;
use super::worker::ModelInfo;
use crate::backend::BackendChoice;
use crate::metadata::GenerationRecord;
use crate::model::{Guidance, GuidanceRule, Sampler};
use crate::pipeline::{Denoise, GenerateRequest};

/// eframe storage key of [`Settings`].
pub const SETTINGS_KEY: &str = "starflow-studio.settings";
/// Jacobi chunk of the official text-to-image script.
pub const JACOBI_CHUNK: usize = 16;
/// Jacobi iteration cap of the official text-to-image script.
pub const JACOBI_MAX_ITERATIONS: usize = 32;
/// The largest batch the UI offers.
pub const MAX_BATCH: usize = 16;

/// Which sampler the user picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SamplerKind {
    Sequential,
    Jacobi,
}

/// The user's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub prompt: String,
    /// Replaces the empty caption of the null branch when `use_negative_prompt` is set.
    pub negative_prompt: String,
    pub use_negative_prompt: bool,
    /// Class of a class-conditional model; `None` is the null (unconditional) class.
    pub class: Option<usize>,
    /// Guidance weight `w`; 0 is off.
    pub guidance: f32,
    /// `None` follows the model's rule.
    pub guidance_rule: Option<GuidanceRule>,
    pub sampler: SamplerKind,
    pub jacobi_threshold: f32,
    pub seed: u64,
    pub denoise: Denoise,
    pub batch_count: usize,
    pub model_folder: Option<PathBuf>,
    pub backend: BackendChoice,
    pub export_format: ExportFormat,
    /// Folder of the export path field; `None` is the user's pictures folder.
    pub export_folder: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            use_negative_prompt: false,
            class: None,
            guidance: 0.0,
            guidance_rule: None,
            sampler: SamplerKind::Sequential,
            jacobi_threshold: 0.001,
            seed: 0,
            denoise: Denoise::Score,
            batch_count: 1,
            model_folder: None,
            backend: BackendChoice::Wgpu,
            export_format: ExportFormat::Png,
            export_folder: None,
        }
    }
}

impl Settings {
    /// The generation job these settings describe for `model`.
    pub fn request(&self, model: &ModelInfo) -> GenerateRequest {
        let config = &model.config;
        let rule = self.guidance_rule.unwrap_or(config.guidance_rule);
        let weight = if model.guidable() {
            self.guidance.clamp(0.0, config.max_guidance.max(0.0))
        } else {
            0.0
        };
        let sampler = match self.sampler {
            SamplerKind::Sequential => Sampler::Sequential,
            SamplerKind::Jacobi => Sampler::Jacobi {
                chunk: JACOBI_CHUNK,
                threshold: self.jacobi_threshold,
                max_iterations: JACOBI_MAX_ITERATIONS,
            },
        };
        let negative = self.use_negative_prompt && !self.negative_prompt.trim().is_empty();
        GenerateRequest {
            prompt: self.prompt.clone(),
            negative_prompt: negative.then(|| self.negative_prompt.clone()),
            class: if model.num_classes().is_some() { self.class } else { None },
            seed: self.seed,
            guidance: Guidance::new(weight, rule),
            sampler,
            denoise: self.denoise,
        }
    }

    /// Fit the settings to a newly loaded model: the guidance default and range, the classes,
    /// a denoiser it has.
    pub fn adapt_to(&mut self, model: &ModelInfo, first_load_of_model: bool) {
        let config = &model.config;
        if first_load_of_model {
            self.guidance = config.default_guidance;
            self.guidance_rule = None;
        }
        self.guidance = self.guidance.clamp(0.0, config.max_guidance.max(0.0));
        if let (Some(class), Some(classes)) = (self.class, model.num_classes())
            && class >= classes
        {
            self.class = None;
        }
        if self.denoise == Denoise::Learned && !config.learned_denoiser {
            self.denoise = Denoise::Score;
        }
    }

    /// Take prompt, seed and settings from a saved image's record.
    pub fn restore(&mut self, record: &GenerationRecord) {
        self.prompt = record.prompt.clone();
        self.use_negative_prompt = record.negative_prompt.is_some();
        self.negative_prompt = record.negative_prompt.clone().unwrap_or_default();
        self.class = record.class;
        self.seed = record.seed;
        self.guidance = record.guidance;
        self.guidance_rule = Some(record.guidance_rule);
        if record.sampler.starts_with("jacobi") {
            self.sampler = SamplerKind::Jacobi;
            if let Some(threshold) = record.jacobi_threshold {
                self.jacobi_threshold = threshold;
            }
        } else {
            self.sampler = SamplerKind::Sequential;
        }
        self.denoise = record.denoise;
    }

    /// Take what an AUTOMATIC1111 `parameters` text carries. `rule` converts its diffusion
    /// `CFG scale` into our weight (`w = scale - 1` for STARFlow's rule).
    pub fn restore_parameters(&mut self, parameters: &A1111Parameters, rule: GuidanceRule) {
        self.prompt = parameters.prompt.clone();
        self.use_negative_prompt = parameters.negative_prompt.is_some();
        self.negative_prompt = parameters.negative_prompt.clone().unwrap_or_default();
        if let Some(seed) = parameters.seed {
            self.seed = seed;
        }
        if let Some(scale) = parameters.cfg_scale {
            self.guidance = match rule {
                GuidanceRule::Gaussian => (scale - 1.0).max(0.0),
                GuidanceRule::Linear => scale.max(0.0),
            };
        }
        match parameters.sampler.as_deref() {
            Some(s) if s.starts_with("jacobi") => self.sampler = SamplerKind::Jacobi,
            Some("sequential") => self.sampler = SamplerKind::Sequential,
            _ => {}
        }
    }
}

/// The fields of an AUTOMATIC1111 `parameters` text we understand.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct A1111Parameters {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub cfg_scale: Option<f32>,
    pub sampler: Option<String>,
}

/// Parse the A1111 line format: prompt lines, an optional `Negative prompt:` line, then one
/// line of `Key: value` pairs starting with `Steps:`.
pub fn parse_parameters(text: &str) -> A1111Parameters {
    let mut prompt_lines = Vec::new();
    let mut negative: Option<String> = None;
    let mut fields = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            negative = Some(rest.trim().to_string());
        } else if line.starts_with("Steps:") {
            fields = line;
        } else if let Some(negative) = negative.as_mut() {
            negative.push('\n');
            negative.push_str(line);
        } else {
            prompt_lines.push(line);
        }
    }
    let field = |key: &str| {
        fields.split(", ").find_map(|pair| {
            pair.strip_prefix(key).and_then(|v| v.strip_prefix(": ")).map(str::trim)
        })
    };
    A1111Parameters {
        prompt: prompt_lines.join("\n"),
        negative_prompt: negative,
        seed: field("Seed").and_then(|v| v.parse().ok()),
        cfg_scale: field("CFG scale").and_then(|v| v.parse().ok()),
        sampler: field("Sampler").map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_text_round_trips_prompt_seed_and_scale() {
        let text = "a red fox\nin snow\nNegative prompt: blurry\nSteps: 20, Sampler: jacobi-16, CFG scale: 4.5, Seed: 42, Size: 6x8";
        let parsed = parse_parameters(text);
        assert_eq!(parsed.prompt, "a red fox\nin snow");
        assert_eq!(parsed.negative_prompt.as_deref(), Some("blurry"));
        assert_eq!((parsed.seed, parsed.cfg_scale), (Some(42), Some(4.5)));
        let mut settings = Settings::default();
        settings.restore_parameters(&parsed, GuidanceRule::Gaussian);
        assert_eq!(
            (settings.seed, settings.guidance, settings.sampler),
            (42, 3.5, SamplerKind::Jacobi)
        );
    }

    #[test]
    fn settings_survive_a_json_round_trip_and_missing_fields_default() {
        let settings = Settings { prompt: "x".into(), seed: 9, ..Settings::default() };
        let text = serde_json::to_string(&settings).expect("serializes");
        assert_eq!(serde_json::from_str::<Settings>(&text).expect("parses"), settings);
        let partial: Settings = serde_json::from_str(r#"{"seed": 3}"#).expect("parses");
        assert_eq!((partial.seed, partial.batch_count), (3, 1));
    }
}
