//! prompt -> text -> flow -> denoise -> decode: one generation job and what it produces.
//!
//! A model directory holds `flow.json` (our [`FlowConfig`] as JSON) and the flow weights, the
//! one `*.pth` or `*.safetensors` file at its top level. A model whose latent has 3 channels
//! and no `vae/` folder is a pixel-space flow: its samples are the image.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};

use crate::checkpoint::{CheckpointError, TensorFile};
use crate::image_out::{ImageError, RgbImage, to_rgb8};
use crate::model::{
    Condition, ConfigError, Conditioning, Flow, FlowConfig, Guidance, SampleError, SampleObserver, Sampler,
};

/// How to remove the training noise from the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Denoise {
    /// One score step through the flow (the released script's choice).
    Score,
    /// The model's learned denoiser head.
    Learned,
    /// Keep the noisy sample.
    None,
}

/// Everything one generation needs besides the model.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Replaces the empty prompt of the null branch (experimental).
    pub negative_prompt: Option<String>,
    /// Class label for class-conditional models (`None`: unconditional/null class).
    pub class: Option<usize>,
    pub seed: u64,
    pub guidance: Guidance,
    pub sampler: Sampler,
    pub denoise: Denoise,
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Generated {
    /// NCHW latents (batch 1): the noise, then each inverted block's output (deep first).
    pub latents: Vec<Tensor<4>>,
    /// The latent after denoising (equal to the last of `latents` with `Denoise::None`).
    pub denoised: Tensor<4>,
    pub image: RgbImage,
    pub jacobi_iterations: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("The model folder could not be read: {error}. (folder: {path:?})")]
    Folder { path: PathBuf, error: std::io::Error },
    #[error(
        "The model folder has no flow weights: expected one *.pth or *.safetensors file at its \
         top level. (folder: {path:?})"
    )]
    NoWeights { path: PathBuf },
    #[error(
        "The model folder has several flow weight files ({names}); keep exactly one at its top \
         level. (folder: {path:?})"
    )]
    SeveralWeights { path: PathBuf, names: String },
    #[error(
        "The model folder has no flow.json and {file:?} is not a released file name with a \
         known config; add flow.json. (folder: {path:?})"
    )]
    NoConfig { path: PathBuf, file: String },
    #[error("flow.json is not valid: {error}. (file: {path:?})")]
    Config { path: PathBuf, error: ConfigError },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "This model needs a text encoder and an autoencoder, which are not built yet \
         (issue #3); only pixel-space flows without text run today."
    )]
    NeedsCompanions,
    #[error(
        "The model's latent has {channels} channels and the folder has no vae/; only a \
         3-channel latent can be shown without an autoencoder."
    )]
    NoDecoder { channels: usize },
    #[error("The model has no learned denoiser; use --denoise score or none.")]
    NoLearnedDenoiser,
    #[error("The noise tensor has shape {found:?}, expected {expected:?}.")]
    NoiseShape { expected: Vec<usize>, found: Vec<usize> },
    #[error("The noise file has no tensor named \"noise\". (file: {path:?})")]
    NoNoiseTensor { path: PathBuf },
    #[error("class {class} does not exist: the model has {num_classes} classes (0..{num_classes})")]
    Class { class: usize, num_classes: usize },
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// A loaded model, ready to generate.
pub struct Pipeline {
    pub flow: Flow,
    pub folder: PathBuf,
    pub weights_file: PathBuf,
    pub device: Device,
}

/// The one weights file at the folder's top level.
pub fn find_weights(folder: &Path) -> Result<PathBuf, PipelineError> {
    let entries = std::fs::read_dir(folder).map_err(|error| PipelineError::Folder { path: folder.to_path_buf(), error })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("pth" | "safetensors")))
        .collect();
    found.sort();
    match found.len() {
        0 => Err(PipelineError::NoWeights { path: folder.to_path_buf() }),
        1 => Ok(found.remove(0)),
        _ => Err(PipelineError::SeveralWeights {
            path: folder.to_path_buf(),
            names: found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The flow config of a model folder: `flow.json`, else the preset of the weights' name.
pub fn folder_config(folder: &Path, weights: &Path) -> Result<FlowConfig, PipelineError> {
    let json = folder.join("flow.json");
    if json.is_file() {
        let text = std::fs::read_to_string(&json).map_err(|error| PipelineError::Folder { path: json.clone(), error })?;
        return FlowConfig::from_json(&text).map_err(|error| PipelineError::Config { path: json, error });
    }
    let name = weights.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    FlowConfig::preset_for_file(&name).ok_or(PipelineError::NoConfig { path: folder.to_path_buf(), file: name })
}

impl Pipeline {
    /// Load a model folder onto `device`.
    pub fn load(folder: &Path, device: &Device) -> Result<Self, PipelineError> {
        let weights_file = find_weights(folder)?;
        let config = folder_config(folder, &weights_file)?;
        if config.conditioning == Conditioning::Text {
            return Err(PipelineError::NeedsCompanions);
        }
        if config.latent_channels != 3 {
            return Err(PipelineError::NoDecoder { channels: config.latent_channels });
        }
        let started = std::time::Instant::now();
        let file = TensorFile::open(&weights_file)?;
        let flow = Flow::load(&config, &file, device)?;
        log::info!(
            "Loaded {:?}: {} parameters in {:.1} s",
            weights_file,
            file.num_elements(),
            started.elapsed().as_secs_f64()
        );
        Ok(Self { flow, folder: folder.to_path_buf(), weights_file, device: device.clone() })
    }

    pub fn config(&self) -> &FlowConfig {
        &self.flow.config
    }

    /// Latent shape for one image.
    pub fn latent_shape(&self) -> [usize; 4] {
        let c = self.config();
        [1, c.latent_channels, c.latent_height, c.latent_width]
    }

    /// The seeded starting noise.
    pub fn noise(&self, seed: u64) -> Tensor<4> {
        crate::model::noise::standard_normal(self.latent_shape(), seed, &self.device)
    }

    /// Read a `noise` tensor `[batch, channels, height, width]` from a safetensors file.
    pub fn noise_from_file(&self, path: &Path) -> Result<Tensor<4>, PipelineError> {
        let file = TensorFile::open(path)?;
        let shape = file.shape("noise").ok_or_else(|| PipelineError::NoNoiseTensor { path: path.to_path_buf() })?.to_vec();
        let expected = self.latent_shape();
        if shape.len() != 4 || shape[1..] != expected[1..] || shape[0] != 1 {
            return Err(PipelineError::NoiseShape { expected: expected.to_vec(), found: shape });
        }
        let values = file.read_f32("noise")?;
        Ok(Tensor::from_data(burn::tensor::TensorData::new(values, expected), &self.device))
    }

    fn conditions(&self, request: &GenerateRequest) -> Result<(Condition, Condition), PipelineError> {
        match self.config().conditioning {
            Conditioning::None => Ok((Condition::Unconditional { batch: 1 }, Condition::Unconditional { batch: 1 })),
            Conditioning::OneHotClass { num_classes } | Conditioning::ClassEmbedding { num_classes } => {
                if let Some(class) = request.class
                    && class >= num_classes
                {
                    return Err(PipelineError::Class { class, num_classes });
                }
                Ok((Condition::Labels(vec![request.class]), Condition::Labels(vec![None])))
            }
            Conditioning::Text => Err(PipelineError::NeedsCompanions),
        }
    }

    /// Sample, denoise and decode one image from `noise`.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        noise: Tensor<4>,
        observer: &mut dyn SampleObserver,
    ) -> Result<Generated, PipelineError> {
        let (condition, null) = self.conditions(request)?;
        let sample = self.flow.sample(noise, &condition, Some(&null), &request.guidance, request.sampler, observer)?;
        let noisy = sample.result().clone();
        let sigma = self.config().noise_std as f64;
        let denoised = match request.denoise {
            Denoise::None => noisy,
            Denoise::Score => self.flow.denoise_score(noisy, &condition, sigma),
            Denoise::Learned => {
                self.flow.denoise_learned(noisy, &condition).ok_or(PipelineError::NoLearnedDenoiser)?
            }
        };
        let image = self.decode(denoised.clone())?;
        Ok(Generated { latents: sample.latents, denoised, image, jacobi_iterations: sample.jacobi_iterations })
    }

    /// The image of one latent (batch 1).
    pub fn decode(&self, latent: Tensor<4>) -> Result<RgbImage, PipelineError> {
        let [_, channels, height, width] = latent.dims();
        if channels != 3 {
            return Err(PipelineError::NoDecoder { channels });
        }
        Ok(to_rgb8(latent.reshape([channels, height, width]))?)
    }
}
