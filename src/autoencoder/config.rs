//! `AutoencoderKlConfig`: the keys of a diffusers `AutoencoderKL` `config.json` that change what
//! the network computes, with diffusers' defaults for the keys old files leave out.

use serde::{Deserialize, Serialize};

use crate::text::hub::InvalidConfig;

/// The only block types an `AutoencoderKL` of the Stable Diffusion family uses.
pub const DOWN_BLOCK: &str = "DownEncoderBlock2D";
pub const UP_BLOCK: &str = "UpDecoderBlock2D";

/// diffusers' `AutoencoderKL.__init__` arguments. Defaults are diffusers 0.42's, which is also
/// how it reads 0.4-era files such as sd-vae-ft-ema's (no `scaling_factor` there).
/// `latents_mean`, `latents_std`, `force_upcast` and `sample_size` are not read: `AutoencoderKL`
/// itself never applies them and STARFlow's VAE wrapper does not either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKlConfig {
    #[serde(default = "default_image_channels")]
    pub in_channels: usize,
    #[serde(default = "default_image_channels")]
    pub out_channels: usize,
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    /// Channels per level, finest first (`(128, 256, 512, 512)` for the SD VAE); the latent grid
    /// is the image size divided by `2^(levels - 1)`.
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    /// Multiplies the latent on its way into the flow (0.18215 for the SD VAE).
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Subtracted before scaling (SD3/FLUX VAEs); absent or null for the SD VAE.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default, rename = "_class_name")]
    pub class_name: Option<String>,
}

fn default_image_channels() -> usize {
    3
}

fn default_latent_channels() -> usize {
    4
}

fn default_layers_per_block() -> usize {
    1
}

fn default_norm_num_groups() -> usize {
    32
}

fn default_act_fn() -> String {
    "silu".to_string()
}

fn default_down_blocks() -> Vec<String> {
    vec![DOWN_BLOCK.to_string()]
}

fn default_up_blocks() -> Vec<String> {
    vec![UP_BLOCK.to_string()]
}

fn default_scaling_factor() -> f64 {
    0.18215
}

fn default_true() -> bool {
    true
}

impl AutoencoderKlConfig {
    /// stabilityai/sd-vae-ft-ema (and sd-vae-ft-mse), as in its `config.json` with diffusers'
    /// defaults for the keys it omits.
    pub fn sd_vae_ft_ema() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            act_fn: "silu".to_string(),
            down_block_types: vec![DOWN_BLOCK.to_string(); 4],
            up_block_types: vec![UP_BLOCK.to_string(); 4],
            scaling_factor: 0.18215,
            shift_factor: None,
            mid_block_add_attention: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            class_name: Some("AutoencoderKL".to_string()),
        }
    }

    /// Image pixels per latent cell along each side: `2^(levels - 1)`.
    pub fn downsample_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Check what the model code relies on.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if let Some(class_name) = &self.class_name {
            if class_name != "AutoencoderKL" {
                let value = format!("{class_name:?}");
                return Err(InvalidConfig::new(
                    "_class_name",
                    value,
                    "it must be \"AutoencoderKL\"",
                ));
            }
        }
        let sizes = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ];
        for (field, value) in sizes {
            if value == 0 {
                return Err(InvalidConfig::new(field, value.to_string(), "it must be at least 1"));
            }
        }
        let levels = self.block_out_channels.len();
        if levels == 0 || self.block_out_channels.contains(&0) {
            let value = format!("{:?}", self.block_out_channels);
            let requirement = "it must list at least one positive width";
            return Err(InvalidConfig::new("block_out_channels", value, requirement));
        }
        if let Some(width) =
            self.block_out_channels.iter().find(|&&w| w % self.norm_num_groups != 0)
        {
            let value = format!("{:?}", self.block_out_channels);
            let requirement = format!(
                "norm_num_groups {} must divide every width ({width} doesn't)",
                self.norm_num_groups
            );
            return Err(InvalidConfig::new("block_out_channels", value, requirement));
        }
        let block_lists = [
            ("down_block_types", &self.down_block_types, DOWN_BLOCK),
            ("up_block_types", &self.up_block_types, UP_BLOCK),
        ];
        for (field, types, expected) in block_lists {
            if types.len() != levels || types.iter().any(|t| t != expected) {
                let requirement = format!("it must be {levels} x {expected:?} (one per width)");
                return Err(InvalidConfig::new(field, format!("{types:?}"), requirement));
            }
        }
        if self.act_fn != "silu" {
            let value = format!("{:?}", self.act_fn);
            return Err(InvalidConfig::new("act_fn", value, "only \"silu\" is supported"));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            let value = self.scaling_factor.to_string();
            return Err(InvalidConfig::new("scaling_factor", value, "it must be positive"));
        }
        Ok(())
    }
}
