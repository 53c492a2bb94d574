//! diffusers' VAE `Encoder` (image -> moments) and `Decoder` (latent -> image).
//!
//! Encoder: `conv_in`, one `DownEncoderBlock2D` per level (`layers_per_block` resnets, then a
//! downsampler except on the last level), mid block, `conv_norm_out`, SiLU, `conv_out` to
//! `2 * latent_channels`. Decoder: `conv_in`, mid block, one `UpDecoderBlock2D` per level with the
//! widths reversed (`layers_per_block + 1` resnets, then an upsampler except on the last level),
//! `conv_norm_out`, SiLU, `conv_out`.

use std::fmt;

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::blocks::{Conv, Downsample, MidBlock, ResnetBlock, Upsample, load_group_norm};
use super::config::AutoencoderKlConfig;
use crate::checkpoint::CheckpointError;
use crate::text::hub::ShardedLoader;

/// A point of the forward passes that the `*_observed` functions report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeStage {
    EncoderConvIn,
    /// After down block `i`, including its downsampler.
    EncoderDownBlock(usize),
    /// The mid-block attention's output (residual included).
    EncoderMidAttention,
    EncoderMidBlock,
    /// After `conv_out`, before `quant_conv`.
    EncoderOutput,
    /// The moments: `quant_conv`'s output (the encoder's when there is no `quant_conv`).
    QuantConv,
    PostQuantConv,
    DecoderConvIn,
    DecoderMidAttention,
    DecoderMidBlock,
    /// After up block `i`, including its upsampler.
    DecoderUpBlock(usize),
}

/// One level of the encoder.
#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock>,
    pub downsampler: Option<Downsample>,
}

/// One level of the decoder.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock>,
    pub upsampler: Option<Upsample>,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv,
}

impl fmt::Display for VaeStage {
    /// The diffusers module path of the stage (`encoder.down_blocks.2`, ...).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EncoderConvIn => write!(f, "encoder.conv_in"),
            Self::EncoderDownBlock(index) => write!(f, "encoder.down_blocks.{index}"),
            Self::EncoderMidAttention => write!(f, "encoder.mid_block.attention"),
            Self::EncoderMidBlock => write!(f, "encoder.mid_block"),
            Self::EncoderOutput => write!(f, "encoder.output"),
            Self::QuantConv => write!(f, "quant_conv"),
            Self::PostQuantConv => write!(f, "post_quant_conv"),
            Self::DecoderConvIn => write!(f, "decoder.conv_in"),
            Self::DecoderMidAttention => write!(f, "decoder.mid_block.attention"),
            Self::DecoderMidBlock => write!(f, "decoder.mid_block"),
            Self::DecoderUpBlock(index) => write!(f, "decoder.up_blocks.{index}"),
        }
    }
}

impl Encoder {
    /// # Shapes
    /// - `image`: `[batch, in_channels, height, width]`
    /// - returns `[batch, 2 * latent_channels, height / f, width / f]`, `f = 2^(levels - 1)`
    pub fn forward_observed(
        &self,
        image: Tensor<4>,
        observe: &mut dyn FnMut(VaeStage, &Tensor<4>),
    ) -> Tensor<4> {
        let mut x = self.conv_in.forward(image); // [batch, widths[0], height, width]
        observe(VaeStage::EncoderConvIn, &x);

        for (index, block) in self.down_blocks.iter().enumerate() {
            for resnet in &block.resnets {
                x = resnet.forward(x);
            }
            if let Some(downsampler) = &block.downsampler {
                x = downsampler.forward(x); // [batch, widths[index], height / 2, width / 2]
            }
            observe(VaeStage::EncoderDownBlock(index), &x);
        }

        let (attended, x) = self.mid_block.forward(x);
        if let Some(attended) = &attended {
            observe(VaeStage::EncoderMidAttention, attended);
        }
        observe(VaeStage::EncoderMidBlock, &x);

        let moments = self.conv_out.forward(silu(self.conv_norm_out.forward(x)));
        observe(VaeStage::EncoderOutput, &moments);
        moments
    }

    pub fn load(
        loader: &mut ShardedLoader,
        config: &AutoencoderKlConfig,
    ) -> Result<Self, CheckpointError> {
        let widths = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let last = widths.len() - 1;
        let conv_in =
            Conv::load(loader, "encoder.conv_in", [config.in_channels, widths[0], 3], 1, 1)?;

        let mut down_blocks = Vec::with_capacity(widths.len());
        let mut channels = widths[0];
        for (index, &width) in widths.iter().enumerate() {
            let prefix = format!("encoder.down_blocks.{index}");
            let mut resnets = Vec::with_capacity(config.layers_per_block);
            for layer in 0..config.layers_per_block {
                let key = format!("{prefix}.resnets.{layer}");
                resnets.push(ResnetBlock::load(loader, &key, channels, width, groups)?);
                channels = width;
            }
            let downsampler = if index < last {
                Some(Downsample::load(loader, &format!("{prefix}.downsamplers.0"), width)?)
            } else {
                None
            };
            down_blocks.push(DownBlock { resnets, downsampler });
        }

        let add_attention = config.mid_block_add_attention;
        let mid_block =
            MidBlock::load(loader, "encoder.mid_block", widths[last], groups, add_attention)?;
        let conv_norm_out = load_group_norm(loader, "encoder.conv_norm_out", groups, widths[last])?;
        let moments = 2 * config.latent_channels;
        let conv_out = Conv::load(loader, "encoder.conv_out", [widths[last], moments, 3], 1, 1)?;
        Ok(Self { conv_in, down_blocks, mid_block, conv_norm_out, conv_out })
    }
}

impl Decoder {
    /// # Shapes
    /// - `latent`: `[batch, latent_channels, height, width]`, after `post_quant_conv`
    /// - returns `[batch, out_channels, height * f, width * f]`, `f = 2^(levels - 1)`
    pub fn forward_observed(
        &self,
        latent: Tensor<4>,
        observe: &mut dyn FnMut(VaeStage, &Tensor<4>),
    ) -> Tensor<4> {
        let x = self.conv_in.forward(latent); // [batch, widths[last], height, width]
        observe(VaeStage::DecoderConvIn, &x);

        let (attended, mut x) = self.mid_block.forward(x);
        if let Some(attended) = &attended {
            observe(VaeStage::DecoderMidAttention, attended);
        }
        observe(VaeStage::DecoderMidBlock, &x);

        for (index, block) in self.up_blocks.iter().enumerate() {
            for resnet in &block.resnets {
                x = resnet.forward(x);
            }
            if let Some(upsampler) = &block.upsampler {
                x = upsampler.forward(x); // [batch, reversed[index], 2 * height, 2 * width]
            }
            observe(VaeStage::DecoderUpBlock(index), &x);
        }

        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }

    pub fn load(
        loader: &mut ShardedLoader,
        config: &AutoencoderKlConfig,
    ) -> Result<Self, CheckpointError> {
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let groups = config.norm_num_groups;
        let last = reversed.len() - 1;
        let conv_in =
            Conv::load(loader, "decoder.conv_in", [config.latent_channels, reversed[0], 3], 1, 1)?;
        let add_attention = config.mid_block_add_attention;
        let mid_block =
            MidBlock::load(loader, "decoder.mid_block", reversed[0], groups, add_attention)?;

        let mut up_blocks = Vec::with_capacity(reversed.len());
        let mut channels = reversed[0];
        for (index, &width) in reversed.iter().enumerate() {
            let prefix = format!("decoder.up_blocks.{index}");
            let mut resnets = Vec::with_capacity(config.layers_per_block + 1);
            for layer in 0..=config.layers_per_block {
                let key = format!("{prefix}.resnets.{layer}");
                resnets.push(ResnetBlock::load(loader, &key, channels, width, groups)?);
                channels = width;
            }
            let upsampler = if index < last {
                Some(Upsample::load(loader, &format!("{prefix}.upsamplers.0"), width)?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsampler });
        }

        let conv_norm_out =
            load_group_norm(loader, "decoder.conv_norm_out", groups, reversed[last])?;
        let conv_out =
            Conv::load(loader, "decoder.conv_out", [reversed[last], config.out_channels, 3], 1, 1)?;
        Ok(Self { conv_in, mid_block, up_blocks, conv_norm_out, conv_out })
    }
}
