//! The image autoencoder: diffusers' `AutoencoderKL` (stabilityai/sd-vae-ft-ema for STARFlow),
//! configured from `config.json` and loaded from `diffusion_pytorch_model.safetensors` under
//! diffusers' key names, plus a cheap preview decode.
//!
//! `encode` and `decode` work in the autoencoder's own latent space. The flow works in the
//! scaled space (spec section 3.1): `flow = (latent - shift) * scaling_factor` on the way in,
//! `latent = flow / scaling_factor + shift` on the way out ([`AutoencoderKl::to_flow`],
//! [`AutoencoderKl::from_flow`]); the shift is 0 for the SD VAE.
//!
//! - [`config`]: `AutoencoderKlConfig`
//! - [`blocks`]: convolutions, resnets, down/upsamplers, the mid block and its attention
//! - [`coder`]: the encoder and decoder stacks
//! - [`preview`]: latent -> RGB by a per-channel linear map

pub mod blocks;
pub mod coder;
pub mod config;
pub mod preview;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::checkpoint::CheckpointError;
use crate::text::hub::{HubError, InvalidConfig, WeightFiles, read_config};
use blocks::Conv;
use coder::{Decoder, Encoder, VaeStage};

pub use config::AutoencoderKlConfig;
pub use preview::LatentPreview;

/// Bounds diffusers' `DiagonalGaussianDistribution` clamps the log-variance to.
pub const LOGVAR_MIN: f64 = -30.0;
pub const LOGVAR_MAX: f64 = 20.0;

/// What can go wrong while loading an autoencoder.
#[derive(Debug, thiserror::Error)]
pub enum AutoencoderError {
    #[error("This autoencoder's config can't be used: {0}. Pick a diffusers AutoencoderKL.")]
    Config(InvalidConfig),
    #[error(
        "This autoencoder's config can't be used: {source}. Pick the folder of a diffusers \
         AutoencoderKL (such as sd-vae-ft-ema). (file: {path:?})"
    )]
    ConfigFile { path: PathBuf, source: InvalidConfig },
    #[error(
        "These are CompVis/LDM-format autoencoder weights (keys like {key:?}), not the diffusers \
         layout. Use the diffusers repository's diffusion_pytorch_model.safetensors. (file: \
         {path:?})"
    )]
    LdmLayout { path: PathBuf, key: String },
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// diffusers' `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKl {
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// 1x1, `2 * latent_channels` -> `2 * latent_channels`.
    pub quant_conv: Option<Conv>,
    /// 1x1, `latent_channels` -> `latent_channels`.
    pub post_quant_conv: Option<Conv>,
    #[module(skip)]
    pub config: AutoencoderKlConfig,
}

/// diffusers' `DiagonalGaussianDistribution`: the encoder's posterior over latents.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    /// `[batch, latent_channels, height, width]`.
    pub mean: Tensor<4>,
    /// Clamped to `[LOGVAR_MIN, LOGVAR_MAX]`, same shape as `mean`.
    pub logvar: Tensor<4>,
}

impl LatentDistribution {
    /// Split moments `[batch, 2 * latent_channels, height, width]` into mean (first half) and
    /// log-variance (second half, clamped).
    pub fn from_moments(moments: Tensor<4>) -> Self {
        let [_, channels, _, _] = moments.dims();
        let latent_channels = channels / 2;
        let mean = moments.clone().narrow(1, 0, latent_channels);
        let logvar =
            moments.narrow(1, latent_channels, latent_channels).clamp(LOGVAR_MIN, LOGVAR_MAX);
        Self { mean, logvar }
    }

    /// `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<4> {
        self.logvar.clone().mul_scalar(0.5).exp()
    }

    pub fn var(&self) -> Tensor<4> {
        self.logvar.clone().exp()
    }

    /// `mean + std * noise`, with `noise` standard normal of the mean's shape (what
    /// `latent_dist.sample()` computes with that draw).
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.std() * noise
    }

    /// The mean (`latent_dist.mode()`).
    pub fn mode(&self) -> Tensor<4> {
        self.mean.clone()
    }
}

impl AutoencoderKl {
    /// Load `config.json` and `diffusion_pytorch_model.safetensors` (or its sharded form) from
    /// a diffusers folder such as stabilityai/sd-vae-ft-ema's.
    pub fn load_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self, AutoencoderError> {
        let dir = dir.as_ref();
        let config: AutoencoderKlConfig = read_config(dir, "config.json")?;
        config.validate().map_err(|source| AutoencoderError::ConfigFile {
            path: dir.join("config.json"),
            source,
        })?;
        let weights = WeightFiles::open_dir(dir, "diffusion_pytorch_model")?;
        Self::load(&config, &weights, device)
    }

    /// Build the autoencoder of `config` from `weights`, with strict key and shape checks.
    pub fn load(
        config: &AutoencoderKlConfig,
        weights: &WeightFiles,
        device: &Device,
    ) -> Result<Self, AutoencoderError> {
        config.validate().map_err(AutoencoderError::Config)?;
        // TODO(#3): CompVis/LDM-format weights (sd-vae-ft-ema-original) are refused; the user
        // sees LdmLayout and has to fetch the diffusers repository's files instead.
        let ldm_key = "encoder.down.0.block.0.norm1.weight";
        if weights.contains(ldm_key) {
            let path = weights.origin().to_path_buf();
            return Err(AutoencoderError::LdmLayout { path, key: ldm_key.to_string() });
        }

        let mut loader = weights.loader(device);
        let encoder = Encoder::load(&mut loader, config)?;
        let decoder = Decoder::load(&mut loader, config)?;
        let (latent, moments) = (config.latent_channels, 2 * config.latent_channels);
        let quant_conv = match config.use_quant_conv {
            true => Some(Conv::load(&mut loader, "quant_conv", [moments, moments, 1], 1, 0)?),
            false => None,
        };
        let post_quant_conv = match config.use_post_quant_conv {
            true => Some(Conv::load(&mut loader, "post_quant_conv", [latent, latent, 1], 1, 0)?),
            false => None,
        };
        loader.finish(|_| false)?;
        Ok(Self { encoder, decoder, quant_conv, post_quant_conv, config: config.clone() })
    }

    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// `AutoencoderKL.encode(image).latent_dist`.
    ///
    /// # Shapes
    /// - `image`: `[batch, in_channels, height, width]`, values in `[-1, 1]`
    /// - the distribution's tensors: `[batch, latent_channels, height / f, width / f]`
    pub fn encode(&self, image: Tensor<4>) -> LatentDistribution {
        self.encode_observed(image, &mut |_, _| {})
    }

    /// [`Self::encode`], reporting intermediate tensors to `observe`.
    pub fn encode_observed(
        &self,
        image: Tensor<4>,
        observe: &mut dyn FnMut(VaeStage, &Tensor<4>),
    ) -> LatentDistribution {
        let moments = self.encoder.forward_observed(image, observe);
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(moments),
            None => moments,
        };
        observe(VaeStage::QuantConv, &moments);
        LatentDistribution::from_moments(moments)
    }

    /// `AutoencoderKL.decode(latent).sample`.
    ///
    /// # Shapes
    /// - `latent`: `[batch, latent_channels, height, width]`, unscaled (see [`Self::from_flow`])
    /// - returns `[batch, out_channels, height * f, width * f]`, roughly in `[-1, 1]`
    pub fn decode(&self, latent: Tensor<4>) -> Tensor<4> {
        self.decode_observed(latent, &mut |_, _| {})
    }

    /// [`Self::decode`], reporting intermediate tensors to `observe`.
    pub fn decode_observed(
        &self,
        latent: Tensor<4>,
        observe: &mut dyn FnMut(VaeStage, &Tensor<4>),
    ) -> Tensor<4> {
        let latent = match &self.post_quant_conv {
            Some(conv) => {
                let latent = conv.forward(latent);
                observe(VaeStage::PostQuantConv, &latent);
                latent
            }
            None => latent,
        };
        self.decoder.forward_observed(latent, observe)
    }

    /// `AutoencoderKL.forward(image, sample_posterior=False)`: decode the posterior mean.
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        self.decode(self.encode(image).mode())
    }

    /// Autoencoder latent -> flow space: `(latent - shift) * scaling_factor`.
    pub fn to_flow(&self, latent: Tensor<4>) -> Tensor<4> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        latent.sub_scalar(shift).mul_scalar(self.config.scaling_factor)
    }

    /// Flow space -> autoencoder latent: `flow / scaling_factor + shift`.
    pub fn from_flow(&self, flow: Tensor<4>) -> Tensor<4> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        flow.div_scalar(self.config.scaling_factor).add_scalar(shift)
    }

    /// STARFlow's `VAE.encode`: a posterior sample in flow space, with `noise` standard normal
    /// `[batch, latent_channels, height / f, width / f]`.
    pub fn encode_to_flow(&self, image: Tensor<4>, noise: Tensor<4>) -> Tensor<4> {
        self.to_flow(self.encode(image).sample(noise))
    }

    /// STARFlow's `VAE.decode`: flow-space latent -> image, roughly in `[-1, 1]` (not clamped).
    pub fn decode_from_flow(&self, flow: Tensor<4>) -> Tensor<4> {
        self.decode(self.from_flow(flow))
    }
}
