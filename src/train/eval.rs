//! `eval-default`: generate images for held-out captions through the [`Pipeline`], without
//! guidance and at the model's default guidance, score them with the attribute checker, and
//! measure the flow's bits per dimension on held-out images.
//!
//! The grid PNG has each cell's guidance weight and caption drawn under it (see [`grid`]);
//! the same lines are in a text file beside it.
//!
//! [`grid`]: super::grid

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::checker::{Agreement, agree, read};
use crate::data::shapes::{Scene, held_out_scenes};
use crate::image_out::{ImageError, RgbImage, to_rgb8};
use crate::model::noise::standard_normal;
use crate::model::{Condition, Guidance, NoObserver, Sampler};
use crate::pipeline::{Denoise, GenerateRequest, Pipeline, PipelineError};
use crate::text::TokenizerError;

use super::batch::images_tensor;
use super::grid::{Cell, write_grid};

/// Held-out scenes whose autoencoder round trips are shown (all are scored).
const ROUND_TRIP_GRID_SCENES: usize = 16;
/// Prompts shown in the eval grid (all are scored).
const EVAL_GRID_PROMPTS: usize = 32;
/// Held-out images per bits-per-dimension batch.
const BPD_BATCH: usize = 16;
/// Seed of the augmentation noise of the bits-per-dimension measurement.
const BPD_NOISE_SEED: u64 = 7;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Prompt(#[from] TokenizerError),
    #[error("Could not {action}: {error}. (path: {path:?})")]
    Io { action: &'static str, path: PathBuf, error: std::io::Error },
    #[error(
        "The model folder has no text encoder or no autoencoder; eval-default needs both. (folder: {path:?})"
    )]
    NotTextToImage { path: PathBuf },
    #[error("A tensor could not be read back from the device: {0}")]
    Read(String),
}

/// Accuracy per attribute, as shares in `[0, 1]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttributeAccuracy {
    pub background: f64,
    pub count: f64,
    pub color: f64,
    pub shape: f64,
    pub place: f64,
}

/// What `eval_default` measured; written as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub prompts: usize,
    /// The default guidance weight the guided images used.
    pub guidance: f32,
    /// Share of images fully right at the default guidance.
    pub fully_right: f64,
    /// Share of images fully right at guidance 0.
    pub fully_right_unguided: f64,
    /// Accuracy per attribute at the default guidance.
    pub attributes: AttributeAccuracy,
    pub attributes_unguided: AttributeAccuracy,
    /// Held-out bits per dimension of the noisy flow-space latents.
    pub bits_per_dim: f64,
    /// The checker on autoencoder round trips of held-out images: the most the flow can reach
    /// through this autoencoder.
    pub autoencoder_ceiling: Ceiling,
    pub grid: PathBuf,
    pub captions: PathBuf,
}

/// The checker's scores on reconstructions of real images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    pub images: usize,
    pub fully_right: f64,
    pub attributes: AttributeAccuracy,
    /// Mean posterior standard deviation in flow space (unit-variance latents): noise the
    /// flow's training data carries on top of `noise_std`, which no flow can remove.
    pub posterior_std: f64,
}

fn accuracy(agreements: &[Agreement]) -> (f64, AttributeAccuracy) {
    let n = agreements.len().max(1) as f64;
    let share = |f: fn(&Agreement) -> bool| agreements.iter().filter(|a| f(a)).count() as f64 / n;
    let attributes = AttributeAccuracy {
        background: share(|a| a.background),
        count: share(|a| a.count),
        color: share(|a| a.color),
        shape: share(|a| a.shape),
        place: share(|a| a.place),
    };
    (share(|a| a.all()), attributes)
}

/// One image for `prompt` from `seed` at guidance `weight`, as eval-default draws them
/// (sequential sampler, score denoising).
pub fn generate(
    pipeline: &Pipeline,
    prompt: &str,
    seed: u64,
    weight: f32,
) -> Result<RgbImage, EvalError> {
    let request = GenerateRequest {
        prompt: prompt.to_string(),
        negative_prompt: None,
        class: None,
        seed,
        guidance: Guidance::new(weight, pipeline.config().guidance_rule),
        sampler: Sampler::Sequential,
        denoise: Denoise::Score,
    };
    Ok(pipeline.generate(&request, pipeline.noise(seed), &mut NoObserver)?.image)
}

fn write_text(path: &Path, lines: &[String]) -> Result<(), EvalError> {
    std::fs::write(path, lines.join("\n") + "\n").map_err(|error| EvalError::Io {
        action: "write the captions",
        path: path.to_path_buf(),
        error,
    })
}

/// Held-out scenes `0..count`, cycling when more are asked for than exist.
fn eval_scenes(count: usize) -> Vec<Scene> {
    let held = held_out_scenes();
    (0..count).map(|i| held[i % held.len()]).collect()
}

/// Images for `prompts` held-out captions at guidance 0 and at the default guidance: the
/// pairs side by side in `samples.png`, captions in `samples.txt`, inside `model_dir`.
pub fn write_sample_grid(
    model_dir: &Path,
    prompts: usize,
    device: &Device,
) -> Result<PathBuf, EvalError> {
    let pipeline = Pipeline::load(model_dir, device)?;
    let weight = pipeline.config().default_guidance;
    let mut cells = Vec::new();
    let mut lines = Vec::new();
    for (index, scene) in eval_scenes(prompts).iter().enumerate() {
        let caption = scene.caption();
        for w in [0.0, weight] {
            let image = generate(&pipeline, &caption, index as u64, w)?;
            lines.push(format!("cell {}: guidance {w}: {caption}", cells.len()));
            cells.push(Cell { image, title: format!("w {w}"), caption: caption.clone() });
        }
    }
    let grid = model_dir.join("samples.png");
    write_grid(&grid, &cells)?;
    write_text(&model_dir.join("samples.txt"), &lines)?;
    Ok(grid)
}

/// Held-out bits per dimension: each held-out scene rendered once, encoded (posterior mean),
/// moved to flow space, noised with `noise_std` as in training, scored with its caption.
fn held_out_bits_per_dim(pipeline: &Pipeline) -> Result<f64, EvalError> {
    let (Some(vae), Some(text)) = (&pipeline.vae, &pipeline.text) else {
        return Err(EvalError::NotTextToImage { path: pipeline.folder.clone() });
    };
    let scenes = held_out_scenes();
    let noise_std = pipeline.config().noise_std as f64;
    let mut total = 0.0;
    for (chunk_index, chunk) in scenes.chunks(BPD_BATCH).enumerate() {
        let rendered: Vec<RgbImage> =
            chunk.iter().enumerate().map(|(i, s)| s.render(i as u64)).collect();
        let images = images_tensor(&rendered.iter().collect::<Vec<_>>(), &pipeline.device);
        let latents = vae.to_flow(vae.encode(images).mode());
        let noise =
            standard_normal(latents.dims(), BPD_NOISE_SEED + chunk_index as u64, &pipeline.device);
        let noisy = latents + noise.mul_scalar(noise_std);
        let captions: Vec<String> = chunk.iter().map(Scene::caption).collect();
        let prompts: Vec<&str> = captions.iter().map(String::as_str).collect();
        let (vectors, _) = text.encode(&prompts)?;
        let bpd = pipeline.flow.forward(noisy, &Condition::Text(vectors)).bits_per_dim();
        let values: Vec<f32> =
            bpd.try_into_vec_as().map_err(|err| EvalError::Read(format!("{err:?}")))?;
        total += values.iter().map(|&v| v as f64).sum::<f64>();
    }
    Ok(total / scenes.len() as f64)
}

/// The checker on every held-out scene rendered once, encoded (posterior mean) and decoded.
/// The first [`ROUND_TRIP_GRID_SCENES`] pairs (image, reconstruction) go to `grid_path`.
fn autoencoder_ceiling(pipeline: &Pipeline, grid_path: &Path) -> Result<Ceiling, EvalError> {
    let Some(vae) = &pipeline.vae else {
        return Err(EvalError::NotTextToImage { path: pipeline.folder.clone() });
    };
    let scenes = held_out_scenes();
    let mut agreements = Vec::with_capacity(scenes.len());
    let mut std_sum = 0.0;
    let mut cells = Vec::new();
    for chunk in scenes.chunks(BPD_BATCH) {
        let rendered: Vec<RgbImage> =
            chunk.iter().enumerate().map(|(i, s)| s.render(i as u64)).collect();
        let images = images_tensor(&rendered.iter().collect::<Vec<_>>(), &pipeline.device);
        let posterior = vae.encode(images);
        let mut rendered = rendered.into_iter();
        let std = posterior.std().mul_scalar(vae.scaling_factor()).mean();
        let std: Vec<f32> =
            std.try_into_vec_as().map_err(|err| EvalError::Read(format!("{err:?}")))?;
        std_sum += std[0] as f64 * chunk.len() as f64;
        let decoded = vae.decode(posterior.mode());
        for (index, scene) in chunk.iter().enumerate() {
            let image = to_rgb8(decoded.clone().slice(index..index + 1).squeeze_dim(0))?;
            agreements.push(agree(&read(&image), scene));
            let original = rendered.next().expect("one rendered image per scene");
            if cells.len() < 2 * ROUND_TRIP_GRID_SCENES {
                let caption = scene.caption();
                cells.push(Cell {
                    image: original,
                    title: "image".into(),
                    caption: caption.clone(),
                });
                cells.push(Cell { image, title: "round trip".into(), caption });
            }
        }
    }
    let (fully_right, attributes) = accuracy(&agreements);
    write_grid(grid_path, &cells)?;
    let posterior_std = std_sum / scenes.len().max(1) as f64;
    Ok(Ceiling { images: scenes.len(), fully_right, attributes, posterior_std })
}

/// Generate `prompts` held-out captions with the model in `model_dir`, at guidance 0 and at
/// `guidance` (the model's default when `None`), score them, and write `report.json`,
/// `grid.png`, `captions.txt` and `round_trips.png` (autoencoder round trips) into `out_dir`.
pub fn eval_default(
    model_dir: &Path,
    prompts: usize,
    guidance: Option<f32>,
    out_dir: &Path,
    device: &Device,
) -> Result<EvalReport, EvalError> {
    std::fs::create_dir_all(out_dir).map_err(|error| EvalError::Io {
        action: "create the output folder",
        path: out_dir.to_path_buf(),
        error,
    })?;
    let pipeline = Pipeline::load(model_dir, device)?;
    let weight = guidance.unwrap_or(pipeline.config().default_guidance);
    let (mut guided, mut unguided) = (Vec::new(), Vec::new());
    let mut cells = Vec::new();
    let mut lines = Vec::new();
    for (index, scene) in eval_scenes(prompts).iter().enumerate() {
        let caption = scene.caption();
        let seed = index as u64;
        let plain = generate(&pipeline, &caption, seed, 0.0)?;
        let tilted = generate(&pipeline, &caption, seed, weight)?;
        unguided.push(agree(&read(&plain), scene));
        guided.push(agree(&read(&tilted), scene));
        if index < EVAL_GRID_PROMPTS {
            for (w, image) in [(0.0, plain), (weight, tilted)] {
                lines.push(format!("cell {}: guidance {w}: {caption}", cells.len()));
                cells.push(Cell { image, title: format!("w {w}"), caption: caption.clone() });
            }
        }
        log::debug!("eval {index}: {caption:?}: guided {:?}", guided.last());
    }
    let grid = out_dir.join("grid.png");
    write_grid(&grid, &cells)?;
    let captions = out_dir.join("captions.txt");
    write_text(&captions, &lines)?;

    let (fully_right, attributes) = accuracy(&guided);
    let (fully_right_unguided, attributes_unguided) = accuracy(&unguided);
    let report = EvalReport {
        prompts,
        guidance: weight,
        fully_right,
        fully_right_unguided,
        attributes,
        attributes_unguided,
        bits_per_dim: held_out_bits_per_dim(&pipeline)?,
        autoencoder_ceiling: autoencoder_ceiling(&pipeline, &out_dir.join("round_trips.png"))?,
        grid,
        captions,
    };
    let path = out_dir.join("report.json");
    let text = serde_json::to_string_pretty(&report).expect("the report serializes to JSON");
    std::fs::write(&path, text).map_err(|error| EvalError::Io {
        action: "write the report",
        path,
        error,
    })?;
    Ok(report)
}
