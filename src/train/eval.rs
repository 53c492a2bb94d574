//! `eval-default`: generate images for held-out captions through the [`Pipeline`], without
//! guidance and at the model's default guidance, score them with the attribute checker, and
//! measure the flow's bits per dimension on held-out images.
//!
//! The grid PNG has no caption text drawn in (that needs a font renderer); the captions are
//! in a text file beside it, one line per cell.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::checker::{Agreement, agree, read};
use crate::data::shapes::{Scene, held_out_scenes};
use crate::image_out::{ImageError, RgbImage, save_png};
use crate::model::noise::standard_normal;
use crate::model::{Condition, Guidance, NoObserver, Sampler};
use crate::pipeline::{Denoise, GenerateRequest, Pipeline, PipelineError};
use crate::text::TokenizerError;

use super::batch::images_tensor;

/// Cells per row of the grids: four prompts, each unguided then guided.
const GRID_COLUMNS: usize = 8;
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
    pub grid: PathBuf,
    pub captions: PathBuf,
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

/// One image for `prompt` from `seed` (sequential sampler, score denoising).
fn generate(
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

/// Tile images into rows of [`GRID_COLUMNS`] and write the PNG.
fn write_grid(path: &Path, images: &[RgbImage]) -> Result<(), EvalError> {
    let (cell_w, cell_h) = images.first().map_or((1, 1), |i| (i.width, i.height));
    let columns = GRID_COLUMNS.min(images.len().max(1));
    let rows = images.len().div_ceil(columns).max(1);
    let (width, height) = (columns * cell_w, rows * cell_h);
    let mut pixels = vec![0u8; width * height * 3];
    for (index, image) in images.iter().enumerate() {
        let (left, top) = ((index % columns) * cell_w, (index / columns) * cell_h);
        for y in 0..image.height.min(cell_h) {
            let row =
                &image.pixels[y * image.width * 3..(y * image.width + image.width.min(cell_w)) * 3];
            let start = ((top + y) * width + left) * 3;
            pixels[start..start + row.len()].copy_from_slice(row);
        }
    }
    save_png(path, &RgbImage { width, height, pixels }, &[])?;
    Ok(())
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
    let mut images = Vec::new();
    let mut lines = Vec::new();
    for (index, scene) in eval_scenes(prompts).iter().enumerate() {
        let caption = scene.caption();
        for w in [0.0, weight] {
            images.push(generate(&pipeline, &caption, index as u64, w)?);
            lines.push(format!("cell {}: guidance {w}: {caption}", images.len() - 1));
        }
    }
    let grid = model_dir.join("samples.png");
    write_grid(&grid, &images)?;
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

/// Generate `prompts` held-out captions with the model in `model_dir`, at guidance 0 and at
/// its default guidance, score them, and write `report.json`, `grid.png` and `captions.txt`
/// into `out_dir`.
pub fn eval_default(
    model_dir: &Path,
    prompts: usize,
    out_dir: &Path,
    device: &Device,
) -> Result<EvalReport, EvalError> {
    std::fs::create_dir_all(out_dir).map_err(|error| EvalError::Io {
        action: "create the output folder",
        path: out_dir.to_path_buf(),
        error,
    })?;
    let pipeline = Pipeline::load(model_dir, device)?;
    let weight = pipeline.config().default_guidance;
    let (mut guided, mut unguided) = (Vec::new(), Vec::new());
    let mut grid_images = Vec::new();
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
                lines.push(format!("cell {}: guidance {w}: {caption}", grid_images.len()));
                grid_images.push(image);
            }
        }
        log::debug!("eval {index}: {caption:?}: guided {:?}", guided.last());
    }
    let grid = out_dir.join("grid.png");
    write_grid(&grid, &grid_images)?;
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
