//! What a PNG carries about how it was made: an AUTOMATIC1111-style `parameters` text and a
//! JSON record with everything needed to reproduce the image.

use serde::{Deserialize, Serialize};

use crate::model::{GuidanceRule, Sampler};
use crate::pipeline::{Denoise, GenerateRequest, Pipeline};

/// PNG text key of the JSON record.
pub const JSON_KEY: &str = "starflow-studio";
/// PNG text key AUTOMATIC1111 and compatible tools read.
pub const PARAMETERS_KEY: &str = "parameters";

/// The reproducible description of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub class: Option<usize>,
    pub seed: u64,
    pub guidance: f32,
    pub guidance_rule: GuidanceRule,
    pub sampler: String,
    pub jacobi_threshold: Option<f32>,
    pub denoise: Denoise,
    pub width_px: usize,
    pub height_px: usize,
    pub model: String,
    pub steps: usize,
    pub elapsed_secs: f64,
    pub app_version: String,
}

impl GenerationRecord {
    pub fn new(request: &GenerateRequest, pipeline: &Pipeline, elapsed_secs: f64) -> Self {
        let config = pipeline.config();
        let (sampler, jacobi_threshold) = match request.sampler {
            Sampler::Sequential => ("sequential".to_string(), None),
            Sampler::Jacobi { chunk, threshold, .. } => {
                (format!("jacobi-{chunk}"), Some(threshold))
            }
        };
        let model = pipeline
            .weights_file
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            prompt: request.prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            class: request.class,
            seed: request.seed,
            guidance: request.guidance.weight,
            guidance_rule: request.guidance.rule,
            sampler,
            jacobi_threshold,
            denoise: request.denoise,
            width_px: config.latent_width,
            height_px: config.latent_height,
            model,
            steps: config.tokens() * config.num_blocks(),
            elapsed_secs,
            app_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The A1111 line format: prompt, optional negative prompt, then `Key: value` fields.
    /// `CFG scale` is the diffusion-style scale, `1 + w` for STARFlow's rule.
    pub fn parameters_text(&self) -> String {
        let mut text = self.prompt.clone();
        if let Some(negative) = &self.negative_prompt {
            text.push_str(&format!("\nNegative prompt: {negative}"));
        }
        let cfg_scale = match self.guidance_rule {
            GuidanceRule::Gaussian => self.guidance + 1.0,
            GuidanceRule::Linear => self.guidance,
        };
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}, Denoise: {:?}",
            self.steps, self.sampler, cfg_scale, self.seed, self.width_px, self.height_px, self.model, self.denoise
        ));
        text
    }

    /// The text chunks to embed in a PNG.
    pub fn png_text(&self) -> Vec<(String, String)> {
        let json = serde_json::to_string(self).expect("a record of plain fields serializes");
        vec![(PARAMETERS_KEY.to_string(), self.parameters_text()), (JSON_KEY.to_string(), json)]
    }

    /// The record from a PNG's text chunks, if it has ours.
    pub fn from_png_text(text: &[(String, String)]) -> Option<Self> {
        text.iter().find(|(k, _)| k == JSON_KEY).and_then(|(_, v)| serde_json::from_str(v).ok())
    }
}
