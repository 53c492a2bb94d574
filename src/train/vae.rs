//! The autoencoder stage: a tiny diffusers-layout AutoencoderKL trained on the shapes images
//! with a pixel MSE plus a small KL term (no perceptual or adversarial loss: flat-colored
//! shapes need none), its latent scale factor measured on data as Stable Diffusion's 0.18215
//! was (`1 / std` of posterior samples), and its reconstruction PSNR on held-out images.

use burn::tensor::{Device, Tensor, TensorData};
use burn_optim::{GradientsParams, ModuleOptimizer};

use super::TrainError;
use super::batch::{images_tensor, step_seed, to_device, training_pairs};
use super::init::{InitRule, Initializer};
use super::params::ParamKeys;
use crate::autoencoder::config::{DOWN_BLOCK, UP_BLOCK};
use crate::autoencoder::{AutoencoderKl, AutoencoderKlConfig};
use crate::checkpoint::RandomWeights;
use crate::data::shapes::{MAX_JITTER, Scene, held_out_scenes};
use crate::image_out::RgbImage;
use crate::model::noise::standard_normal;
use crate::text::hub::WeightFiles;

/// Held-out images the PSNR is measured on (every held-out scene once, up to this many).
pub const PSNR_IMAGES: usize = 64;
/// Training images the latent scale factor is measured on.
pub const SCALE_IMAGES: usize = 256;
/// Images encoded per call while measuring (bounds memory).
const MEASURE_BATCH: usize = 32;

/// The default model's autoencoder: two levels (factor 2: a 64 x 64 image becomes a 4 x 32 x
/// 32 latent), one resnet per encoder level, no mid-block attention, as diffusers'
/// AutoencoderKL with smaller widths. `scaling_factor` is a placeholder until
/// [`measure_scaling_factor`] replaces it.
///
/// Factor 4 (three levels, 16 x 16 latents) was tried first: after 1,000 steps it still drew
/// every 11 px shape as a round blob (a third of held-out round trips read the right shape),
/// while factor 2 keeps each shape's corners within reach of the latent grid.
pub fn tiny_autoencoder_config() -> AutoencoderKlConfig {
    AutoencoderKlConfig {
        in_channels: 3,
        out_channels: 3,
        latent_channels: 4,
        block_out_channels: vec![16, 32],
        layers_per_block: 1,
        norm_num_groups: 8,
        act_fn: "silu".to_string(),
        down_block_types: vec![DOWN_BLOCK.to_string(); 2],
        up_block_types: vec![UP_BLOCK.to_string(); 2],
        scaling_factor: 1.0,
        shift_factor: None,
        mid_block_add_attention: false,
        use_quant_conv: true,
        use_post_quant_conv: true,
        class_name: Some("AutoencoderKL".to_string()),
    }
}

/// An autoencoder of `config` on `device` with its parameter keys, at the training start
/// drawn from `seed`, or with the values `resume` gives by key.
pub fn build_autoencoder(
    config: &AutoencoderKlConfig,
    seed: u64,
    device: &Device,
    resume: Option<&crate::checkpoint::TensorFile>,
) -> Result<(AutoencoderKl, ParamKeys), TrainError> {
    let weights = WeightFiles::random(RandomWeights::new(seed, 1.0));
    let vae = AutoencoderKl::load(config, &weights, device)?;
    let drawn = weights.into_random_tensors();
    let (vae, keys) = ParamKeys::name(vae, &drawn, "vae")?;
    let vae = match resume {
        Some(file) => keys.assign(vae, |key, _| file.read_f32(key).ok())?,
        None => {
            let mut init = Initializer::new(step_seed(seed, "vae-init", 0), InitRule::Autoencoder);
            let mut start: std::collections::HashMap<&str, Vec<f32>> = Default::default();
            for tensor in &drawn {
                start.insert(&tensor.key, init.values(&tensor.key, &tensor.shape));
            }
            keys.assign(vae, |key, _| start.remove(key))?
        }
    };
    Ok((vae, keys))
}

/// Losses of one autoencoder step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeLosses {
    /// Mean squared error per pixel value, on the `[-1, 1]` scale.
    pub reconstruction: f32,
    /// KL divergence to N(0, 1) per latent element.
    pub kl: f32,
}

/// The settings of one autoencoder step.
#[derive(Debug, Clone, Copy)]
pub struct VaeStep {
    pub seed: u64,
    pub step: usize,
    pub batch: usize,
    /// Weight of the KL term (per latent element) against the per-pixel loss.
    pub kl_weight: f64,
    /// Weight of shape pixels against background pixels in the reconstruction loss.
    pub foreground_weight: f64,
    pub lr: f64,
}

/// Per pixel: `foreground_weight` where the image is not its scene's background, else 1, as
/// `[batch, 1, height, width]`.
fn pixel_weights(
    pairs: &[(Scene, RgbImage)],
    foreground_weight: f32,
    device: &Device,
) -> Tensor<4> {
    let (height, width) = pairs.first().map_or((0, 0), |(_, i)| (i.height, i.width));
    let mut values = Vec::with_capacity(pairs.len() * height * width);
    for (scene, image) in pairs {
        let background = scene.background.rgb();
        values.extend(
            image
                .pixels
                .chunks_exact(3)
                .map(|p| if p == background { 1.0 } else { foreground_weight }),
        );
    }
    Tensor::from_data(TensorData::new(values, [pairs.len(), 1, height, width]), device)
}

/// One optimizer step on a fresh batch. `device` is an autodiff device.
pub fn vae_step(
    vae: AutoencoderKl,
    optim: &mut ModuleOptimizer,
    settings: VaeStep,
    device: &Device,
) -> Result<(AutoencoderKl, VaeLosses), TrainError> {
    let VaeStep { seed, step, batch, kl_weight, foreground_weight, lr } = settings;
    let pairs = training_pairs(seed, "vae-batch", step, batch, MAX_JITTER);
    let images = images_tensor(&pairs.iter().map(|(_, image)| image).collect::<Vec<_>>(), device);
    let weights = pixel_weights(&pairs, foreground_weight as f32, device);

    let distribution = vae.encode(images.clone());
    let noise =
        standard_normal(distribution.mean.dims(), step_seed(seed, "vae-noise", step), device);
    let reconstruction = vae.decode(distribution.sample(noise));
    let squared = (reconstruction - images).square();
    // Weighted mean of the squared error, normalized so that a weight of 1 is the plain MSE.
    let weighted = (squared.clone() * weights.clone()).mean().div(weights.mean());
    let mse = squared.mean();
    let kl = (distribution.mean.clone().square() + distribution.var()
        - distribution.logvar.clone())
    .sub_scalar(1.0)
    .mul_scalar(0.5)
    .mean();
    let loss = weighted + kl.clone().mul_scalar(kl_weight);

    let losses = VaeLosses { reconstruction: scalar(mse)?, kl: scalar(kl)? };
    if !losses.reconstruction.is_finite() || !losses.kl.is_finite() {
        return Err(TrainError::NonFinite { stage: "autoencoder", step });
    }
    let grads = GradientsParams::from_grads(loss.backward(), &vae);
    Ok((optim.step(lr, vae, grads), losses))
}

/// One optimizer step of the decoder on a fresh batch: `frozen` (on a plain device) encodes,
/// `vae` (on the autodiff `device`) decodes, and only its decoder receives gradients.
pub fn decoder_step(
    vae: AutoencoderKl,
    optim: &mut ModuleOptimizer,
    frozen: &AutoencoderKl,
    settings: VaeStep,
    device: &Device,
) -> Result<(AutoencoderKl, VaeLosses), TrainError> {
    let VaeStep { seed, step, batch, foreground_weight, lr, .. } = settings;
    let pairs = training_pairs(seed, "decoder-batch", step, batch, MAX_JITTER);
    let images: Vec<&RgbImage> = pairs.iter().map(|(_, image)| image).collect();
    let plain = frozen.encoder.conv_in.weight.val().device();
    let distribution = frozen.encode(images_tensor(&images, &plain));
    let noise =
        standard_normal(distribution.mean.dims(), step_seed(seed, "decoder-noise", step), &plain);
    let latents = to_device(distribution.sample(noise), device);
    let targets = images_tensor(&images, device);
    let weights = pixel_weights(&pairs, foreground_weight as f32, device);

    let squared = (vae.decode(latents) - targets).square();
    let loss = (squared.clone() * weights.clone()).mean().div(weights.mean());
    let mse = squared.mean();
    let losses = VaeLosses { reconstruction: scalar(mse)?, kl: 0.0 };
    if !losses.reconstruction.is_finite() {
        return Err(TrainError::NonFinite { stage: "decoder", step });
    }
    let grads = GradientsParams::from_grads(loss.backward(), &vae);
    Ok((optim.step(lr, vae, grads), losses))
}

pub(super) fn scalar(tensor: Tensor<1>) -> Result<f32, TrainError> {
    let values: Vec<f32> =
        tensor.try_into_vec_as().map_err(|err| TrainError::Read(format!("{err:?}")))?;
    values.first().copied().ok_or_else(|| TrainError::Read("an empty loss tensor".to_string()))
}

/// `1 / std` of posterior samples of training images, as SD's 0.18215 was computed, so that
/// flow-space latents have unit variance. `vae` is on a plain (inference) device.
pub fn measure_scaling_factor(
    vae: &AutoencoderKl,
    seed: u64,
    device: &Device,
) -> Result<f64, TrainError> {
    let (mut sum, mut sum_sq, mut count) = (0.0f64, 0.0f64, 0usize);
    for chunk in 0..SCALE_IMAGES.div_ceil(MEASURE_BATCH) {
        let pairs = training_pairs(seed, "scale-batch", chunk, MEASURE_BATCH, MAX_JITTER);
        let images =
            images_tensor(&pairs.iter().map(|(_, image)| image).collect::<Vec<_>>(), device);
        let distribution = vae.encode(images);
        let noise = standard_normal(
            distribution.mean.dims(),
            step_seed(seed, "scale-noise", chunk),
            device,
        );
        let values: Vec<f32> = distribution
            .sample(noise)
            .try_into_vec_as()
            .map_err(|err| TrainError::Read(format!("{err:?}")))?;
        for v in values {
            sum += v as f64;
            sum_sq += (v as f64) * (v as f64);
            count += 1;
        }
    }
    let mean = sum / count as f64;
    let std = (sum_sq / count as f64 - mean * mean).max(0.0).sqrt();
    if !(std.is_finite() && std > 0.0) {
        return Err(TrainError::NonFinite { stage: "autoencoder scale factor", step: 0 });
    }
    Ok(1.0 / std)
}

/// Mean PSNR (dB, pixels on a 0-1 scale) of posterior-mean reconstructions of held-out
/// scenes, clamped to the image range.
pub fn held_out_psnr(vae: &AutoencoderKl, device: &Device) -> Result<f64, TrainError> {
    let scenes: Vec<_> = held_out_scenes().into_iter().take(PSNR_IMAGES).collect();
    let mut psnrs = Vec::with_capacity(scenes.len());
    for (chunk_index, chunk) in scenes.chunks(MEASURE_BATCH).enumerate() {
        let rendered: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, scene)| scene.render((chunk_index * MEASURE_BATCH + i) as u64))
            .collect();
        let images = images_tensor(&rendered.iter().collect::<Vec<_>>(), device);
        let reconstruction = vae.forward(images.clone()).clamp(-1.0, 1.0);
        // On the 0-1 scale the squared error is a quarter of the [-1, 1] one.
        let per_image = (reconstruction - images).square().reshape([chunk.len() as i64, -1]);
        let mse = per_image.mean_dim(1).div_scalar(4.0); // [batch, 1]
        let mse: Vec<f32> =
            mse.try_into_vec_as().map_err(|err| TrainError::Read(format!("{err:?}")))?;
        psnrs.extend(mse.iter().map(|&m| -10.0 * (m.max(1e-10) as f64).log10()));
    }
    Ok(psnrs.iter().sum::<f64>() / psnrs.len().max(1) as f64)
}
