//! prompt -> text -> flow -> denoise -> decode: one generation job and what it produces.
//!
//! A model directory holds
//! - the flow's config: `flow.json` (our [`FlowConfig`] as JSON) or `flow.yaml` (the official
//!   `configs/*.yaml` format); without either, the preset matching the released file name;
//! - the flow weights: the one `*.pth` or `*.safetensors` file at its top level;
//! - `text_encoder/`: a Hugging Face T5 folder (config.json, weights, tokenizer.json), needed
//!   by text-conditioned flows;
//! - `vae/`: a diffusers AutoencoderKL folder (config.json, weights), needed unless the latent
//!   has 3 channels: a flow without `vae/` is a pixel-space flow whose samples are the image.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};

use crate::autoencoder::{AutoencoderError, AutoencoderKl, LatentPreview};
use crate::checkpoint::{CheckpointError, TensorFile};
use crate::image_out::{ImageError, RgbImage, to_rgb8};
use crate::model::{
    Condition, Conditioning, ConfigError, Flow, FlowConfig, Guidance, SampleError, SampleObserver,
    Sampler,
};
use crate::text::{PromptTokens, TextEncoder, TextError, TokenizerError};

/// How to remove the training noise from the sample.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Denoise {
    /// One score step through the flow (the released script's choice).
    Score,
    /// The model's learned denoiser head.
    Learned,
    /// Keep the noisy sample.
    None,
}

/// Storage type of the flow's linear weights.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Precision {
    /// f16 for large models on a GPU that runs f16 shaders, f32 otherwise.
    Auto,
    F32,
    F16,
}

/// Flows above this many parameters get f16 weights on a GPU under [`Precision::Auto`]
/// (the 3B model: 15.4 GB in f32, 7.7 GB in f16); smaller ones keep exact f32.
const AUTO_F16_MIN_PARAMETERS: usize = 500_000_000;

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
        "This model is text-conditioned but the folder has no text_encoder/ (a Hugging Face T5 \
         folder with config.json, weights and tokenizer.json). (folder: {path:?})"
    )]
    NoTextEncoder { path: PathBuf },
    #[error(
        "The text encoder's width is {found}, but the flow expects text vectors of width \
         {expected}: they belong to different models. (folder: {path:?})"
    )]
    TextWidth { path: PathBuf, expected: usize, found: usize },
    #[error(
        "The autoencoder's latent has {found} channels, but the flow models {expected}: they \
         belong to different models. (folder: {path:?})"
    )]
    LatentChannels { path: PathBuf, expected: usize, found: usize },
    #[error("flow.yaml could not be used: {error}. (file: {path:?})")]
    Yaml { path: PathBuf, error: ConfigError },
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Autoencoder(#[from] AutoencoderError),
    #[error(
        "The model has a tensor of {tensor_mib:.0} MiB but this GPU's largest buffer is \
         {limit_mib:.0} MiB. Use --precision f16 to halve it, or --backend cpu."
    )]
    TensorTooLarge { tensor_mib: f64, limit_mib: f64 },
    #[error(
        "This model needs about {needed_gib:.1} GiB of memory but about {available_gib:.1} GiB \
         is free. Close other programs, or use a smaller model."
    )]
    Memory { needed_gib: f64, available_gib: f64 },
    #[error(
        "The model's latent has {channels} channels and the folder has no vae/; only a \
         3-channel latent can be shown without an autoencoder. Add the autoencoder folder."
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
    pub text: Option<TextEncoder>,
    pub vae: Option<AutoencoderKl>,
    /// Cheap latent -> RGB map for live previews of autoencoder latents.
    pub preview: Option<LatentPreview>,
    pub folder: PathBuf,
    pub weights_file: PathBuf,
    pub device: Device,
}

/// Where the embedded default model lives (`assets/default-model` in the source tree).
pub fn default_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets").join("default-model")
}

/// Whether the embedded default model is present.
pub fn default_model_available() -> bool {
    default_model_dir().join("flow.json").is_file()
}

/// The one weights file at the folder's top level.
pub fn find_weights(folder: &Path) -> Result<PathBuf, PipelineError> {
    let entries = std::fs::read_dir(folder)
        .map_err(|error| PipelineError::Folder { path: folder.to_path_buf(), error })?;
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

/// The text width and the autoencoder's spatial factor, read from the companions' configs
/// (needed to interpret an official flow.yaml).
fn companion_shapes(folder: &Path) -> Result<(usize, usize), PipelineError> {
    let text_dim = if folder.join("text_encoder").is_dir() {
        let config: crate::text::T5Config =
            crate::text::hub::read_config(&folder.join("text_encoder"), "config.json").map_err(
                |e| PipelineError::Text(TextError::Encoder(crate::text::T5Error::Hub(e))),
            )?;
        config.d_model
    } else {
        0
    };
    let downsample = if folder.join("vae").is_dir() {
        let config: crate::autoencoder::AutoencoderKlConfig =
            crate::text::hub::read_config(&folder.join("vae"), "config.json")
                .map_err(AutoencoderError::from)?;
        config.downsample_factor()
    } else {
        1
    };
    Ok((text_dim, downsample))
}

/// The flow config of a model folder: `flow.json`, `flow.yaml`, else the preset of the
/// weights' file name.
pub fn folder_config(folder: &Path, weights: &Path) -> Result<FlowConfig, PipelineError> {
    let json = folder.join("flow.json");
    if json.is_file() {
        let text = std::fs::read_to_string(&json)
            .map_err(|error| PipelineError::Folder { path: json.clone(), error })?;
        return FlowConfig::from_json(&text)
            .map_err(|error| PipelineError::Config { path: json, error });
    }
    let yaml = folder.join("flow.yaml");
    if yaml.is_file() {
        let text = std::fs::read_to_string(&yaml)
            .map_err(|error| PipelineError::Folder { path: yaml.clone(), error })?;
        let (text_dim, downsample) = companion_shapes(folder)?;
        return FlowConfig::from_official_yaml(&text, downsample, text_dim)
            .map_err(|error| PipelineError::Yaml { path: yaml, error });
    }
    let name = weights.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    FlowConfig::preset_for_file(&name)
        .ok_or(PipelineError::NoConfig { path: folder.to_path_buf(), file: name })
}

/// Bytes the loaded model needs at most while sampling: f32 weights of all parts plus the
/// largest block's KV cache at batch 2 (guidance doubles the deep block's batch).
pub fn memory_needed_bytes(config: &FlowConfig, weight_elements: usize) -> u64 {
    let cache = (0..config.num_blocks())
        .map(|b| {
            let positions =
                config.tokens() + if config.block_has_text(b) { config.condition_len() } else { 0 };
            2 * 2 * config.layers_per_block[b] * positions * config.block_width(b)
        })
        .max()
        .unwrap_or(0);
    4 * (weight_elements + cache) as u64
}

/// Free memory the operating system reports (Linux `MemAvailable`), if it reports one.
fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn folder_elements(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("safetensors"))
        .filter_map(|p| TensorFile::open(&p).ok())
        .map(|f| f.num_elements())
        .sum()
}

/// Latents decoded to fit a preview map for an autoencoder without published coefficients.
const PREVIEW_FIT_SAMPLES: usize = 4;

/// The live-preview map: the published SD kl-f8 coefficients for an SD-style autoencoder (4
/// channels, factor 8, scale 0.18215), else a least-squares fit to what this autoencoder
/// decodes standard-normal flow latents to.
fn preview_for(vae: &AutoencoderKl, config: &FlowConfig, device: &Device) -> Option<LatentPreview> {
    let vae_config = vae.config();
    let sd_like = vae_config.latent_channels == 4
        && vae_config.downsample_factor() == 8
        && (vae_config.scaling_factor - 0.18215).abs() < 1e-6;
    if sd_like {
        return Some(LatentPreview::sd_kl_f8());
    }
    let shape =
        [PREVIEW_FIT_SAMPLES, config.latent_channels, config.latent_height, config.latent_width];
    let latent = crate::model::noise::standard_normal(shape, 0, device);
    let image = vae.decode_from_flow(latent.clone());
    match LatentPreview::fit(latent, image) {
        Ok(preview) => Some(preview),
        Err(err) => {
            log::warn!(
                "No live preview map for this autoencoder ({err}); previews use the full decoder"
            );
            None
        }
    }
}

impl Pipeline {
    /// Load a model folder onto `device` with [`Precision::Auto`].
    pub fn load(folder: &Path, device: &Device) -> Result<Self, PipelineError> {
        Self::load_with_progress(folder, device, Precision::Auto, &mut |_, _| {})
    }

    /// [`load`](Self::load), reporting each stage with the share of the work done.
    pub fn load_with_progress(
        folder: &Path,
        device: &Device,
        precision: Precision,
        progress: &mut dyn FnMut(&str, f32),
    ) -> Result<Self, PipelineError> {
        let started = std::time::Instant::now();
        let weights_file = find_weights(folder)?;
        let config = folder_config(folder, &weights_file)?;
        let text_dir = folder.join("text_encoder");
        let vae_dir = folder.join("vae");
        if config.conditioning == Conditioning::Text && !text_dir.is_dir() {
            return Err(PipelineError::NoTextEncoder { path: folder.to_path_buf() });
        }
        if config.latent_channels != 3 && !vae_dir.is_dir() {
            return Err(PipelineError::NoDecoder { channels: config.latent_channels });
        }

        progress("reading the flow weights", 0.0);
        let file = TensorFile::open(&weights_file)?;
        let elements = file.num_elements() + folder_elements(&text_dir) + folder_elements(&vae_dir);
        // A device with an identity is a GPU runtime (burn's CPU backend has none). On the CPU
        // the model lives in system memory, which can be checked; wgpu reports no GPU memory
        // size, so there only the buffer limit below is checked.
        let on_gpu = device.identity().is_some();
        let needed = memory_needed_bytes(&config, elements);
        if !on_gpu
            && let Some(available) = available_memory_bytes()
            && needed > available
        {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(PipelineError::Memory {
                needed_gib: gib(needed),
                available_gib: gib(available),
            });
        }
        let half = match precision {
            Precision::F32 => false,
            Precision::F16 => true,
            Precision::Auto => {
                on_gpu
                    && device.supports_dtype(burn::tensor::DType::F16)
                    && file.num_elements() > AUTO_F16_MIN_PARAMETERS
            }
        };
        let bytes_per_weight = if half { 2 } else { 4 };
        if on_gpu && let Some(limit) = crate::backend::wgpu_max_buffer_bytes() {
            let largest = (file.largest_tensor_elements() * bytes_per_weight) as u64;
            if largest > limit {
                let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
                return Err(PipelineError::TensorTooLarge {
                    tensor_mib: mib(largest),
                    limit_mib: mib(limit),
                });
            }
        }
        let dtype = if half { burn::tensor::DType::F16 } else { burn::tensor::DType::F32 };
        let flow = Flow::load_with_dtype(&config, &file, device, dtype)?;
        if half {
            log::info!("Flow weights are stored in f16 on the GPU");
        }

        let text = if config.conditioning == Conditioning::Text {
            progress("loading the text encoder", 0.5);
            let text = TextEncoder::load_dir(&text_dir, config.text_len, device)?;
            let found = text.encoder.model_dim();
            if found != config.text_dim {
                return Err(PipelineError::TextWidth {
                    path: folder.to_path_buf(),
                    expected: config.text_dim,
                    found,
                });
            }
            Some(text)
        } else {
            None
        };

        let vae = if vae_dir.is_dir() {
            progress("loading the autoencoder", 0.8);
            let vae = AutoencoderKl::load_dir(&vae_dir, device)?;
            let found = vae.config().latent_channels;
            if found != config.latent_channels {
                return Err(PipelineError::LatentChannels {
                    path: folder.to_path_buf(),
                    expected: config.latent_channels,
                    found,
                });
            }
            Some(vae)
        } else {
            None
        };
        let preview = vae.as_ref().and_then(|vae| preview_for(vae, &config, device));
        progress("ready", 1.0);
        log::info!(
            "Loaded {:?}: {} parameters in {:.1} s",
            weights_file,
            elements,
            started.elapsed().as_secs_f64()
        );
        Ok(Self {
            flow,
            text,
            vae,
            preview,
            folder: folder.to_path_buf(),
            weights_file,
            device: device.clone(),
        })
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
        let shape = file
            .shape("noise")
            .ok_or_else(|| PipelineError::NoNoiseTensor { path: path.to_path_buf() })?
            .to_vec();
        let expected = self.latent_shape();
        if shape.len() != 4 || shape[1..] != expected[1..] || shape[0] != 1 {
            return Err(PipelineError::NoiseShape { expected: expected.to_vec(), found: shape });
        }
        let values = file.read_f32("noise")?;
        Ok(Tensor::from_data(burn::tensor::TensorData::new(values, expected), &self.device))
    }

    /// How `prompt` is tokenized (for the UI's counter), or `None` for models without text.
    pub fn tokenize(&self, prompt: &str) -> Option<Result<PromptTokens, TokenizerError>> {
        self.text
            .as_ref()
            .map(|text| text.tokenizer.encode_batch(&[prompt]).map(|mut t| t.remove(0)))
    }

    fn conditions(
        &self,
        request: &GenerateRequest,
    ) -> Result<(Condition, Condition), PipelineError> {
        match self.config().conditioning {
            Conditioning::None => {
                Ok((Condition::Unconditional { batch: 1 }, Condition::Unconditional { batch: 1 }))
            }
            Conditioning::OneHotClass { num_classes }
            | Conditioning::ClassEmbedding { num_classes } => {
                if let Some(class) = request.class
                    && class >= num_classes
                {
                    return Err(PipelineError::Class { class, num_classes });
                }
                Ok((Condition::Labels(vec![request.class]), Condition::Labels(vec![None])))
            }
            Conditioning::Text => {
                let text = self
                    .text
                    .as_ref()
                    .ok_or_else(|| PipelineError::NoTextEncoder { path: self.folder.clone() })?;
                // The null branch is the empty caption unless a negative prompt replaces it.
                let negative = request.negative_prompt.as_deref().unwrap_or("");
                let (vectors, _) = text.encode(&[request.prompt.as_str(), negative])?;
                let cond = vectors.clone().narrow(0, 0, 1);
                let null = vectors.narrow(0, 1, 1);
                Ok((Condition::Text(cond), Condition::Text(null)))
            }
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
        let sample = self.flow.sample(
            noise,
            &condition,
            Some(&null),
            &request.guidance,
            request.sampler,
            observer,
        )?;
        let noisy = sample.result().clone();
        let sigma = self.config().noise_std as f64;
        let denoised = match request.denoise {
            Denoise::None => noisy,
            Denoise::Score => self.flow.denoise_score(noisy, &condition, sigma),
            Denoise::Learned => self
                .flow
                .denoise_learned(noisy, &condition)
                .ok_or(PipelineError::NoLearnedDenoiser)?,
        };
        let image = self.decode(denoised.clone())?;
        Ok(Generated {
            latents: sample.latents,
            denoised,
            image,
            jacobi_iterations: sample.jacobi_iterations,
        })
    }

    /// The image of one latent (batch 1), through the autoencoder's decoder if there is one.
    pub fn decode(&self, latent: Tensor<4>) -> Result<RgbImage, PipelineError> {
        let pixels = match &self.vae {
            Some(vae) => vae.decode_from_flow(latent),
            None => latent,
        };
        let [_, channels, height, width] = pixels.dims();
        if channels != 3 {
            return Err(PipelineError::NoDecoder { channels });
        }
        Ok(to_rgb8(pixels.reshape([channels, height, width]))?)
    }

    /// A cheap preview of one latent: the linear latent -> RGB map at latent resolution for
    /// autoencoder latents, the latent itself for pixel-space flows.
    pub fn decode_preview(&self, latent: Tensor<4>) -> Result<RgbImage, PipelineError> {
        let pixels = match (&self.vae, &self.preview) {
            (None, _) => latent,
            (Some(_), Some(preview)) => preview.rgb(latent),
            (Some(_), None) => return self.decode(latent),
        };
        let [_, channels, height, width] = pixels.dims();
        Ok(to_rgb8(pixels.reshape([channels, height, width]))?)
    }

    /// Image size in pixels (width, height).
    pub fn image_size(&self) -> (usize, usize) {
        let factor = self.vae.as_ref().map_or(1, |v| v.config().downsample_factor());
        (self.config().latent_width * factor, self.config().latent_height * factor)
    }
}
