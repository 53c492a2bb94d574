//! The building blocks of diffusers' `AutoencoderKL`: convolutions, `ResnetBlock2D`,
//! `Downsample2D`, `Upsample2D`, and the mid block (`UNetMidBlock2D`: resnet, one-head
//! self-attention, resnet), each loaded under its diffusers key names.

use burn::module::{Module, Param};
use burn::nn::{GroupNorm, GroupNormConfig, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::{conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions, PadMode};

use crate::checkpoint::CheckpointError;
use crate::text::hub::ShardedLoader;

/// Epsilon of every GroupNorm in the autoencoder (diffusers passes `resnet_eps=1e-6`).
pub const GROUP_NORM_EPS: f64 = 1e-6;

/// A 2-D convolution with bias and square kernel, stride and symmetric padding.
#[derive(Module, Debug)]
pub struct Conv {
    /// `[out_channels, in_channels, kernel, kernel]`.
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
    #[module(skip)]
    pub stride: usize,
    #[module(skip)]
    pub padding: usize,
}

/// diffusers' `ResnetBlock2D` without time embedding:
/// `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv,
    pub norm2: GroupNorm,
    pub conv2: Conv,
    /// A 1x1 convolution when the channel count changes.
    pub conv_shortcut: Option<Conv>,
}

/// diffusers' `Downsample2D` as the VAE uses it: pad one zero column on the right and one zero
/// row at the bottom, then a 3x3 stride-2 convolution without padding.
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv,
}

/// diffusers' `Upsample2D`: nearest-neighbour x2, then a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample {
    pub conv: Conv,
}

/// The mid-block self-attention (diffusers `Attention` with one head of width `channels`):
/// GroupNorm, the `height * width` positions as tokens in row-major order, softmax of
/// `q k^T / sqrt(channels)`, output projection, residual. The scores take `tokens^2` floats per
/// image: 4 MiB for a 256 px image (32 x 32 latent), 1 GiB at 1024 px.
#[derive(Module, Debug)]
pub struct MidAttention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
}

/// diffusers' `UNetMidBlock2D` as the VAE uses it: resnet, attention (optional), resnet.
#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnet_in: ResnetBlock,
    pub attention: Option<MidAttention>,
    pub resnet_out: ResnetBlock,
}

impl Conv {
    /// # Shapes
    /// - `x`: `[batch, in_channels, height, width]`
    /// - returns `[batch, out_channels, height', width']`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (stride, padding) = (self.stride, self.padding);
        let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
        conv2d(x, self.weight.val(), Some(self.bias.val()), options)
    }

    /// Load `{prefix}.weight` `[out, in, kernel, kernel]` and `{prefix}.bias` `[out]`.
    pub fn load(
        loader: &mut ShardedLoader,
        prefix: &str,
        [in_channels, out_channels, kernel]: [usize; 3],
        stride: usize,
        padding: usize,
    ) -> Result<Self, CheckpointError> {
        let shape = [out_channels, in_channels, kernel, kernel];
        let weight = loader.tensor(&format!("{prefix}.weight"), shape)?;
        let bias = loader.tensor(&format!("{prefix}.bias"), [out_channels])?;
        Ok(Self {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
            stride,
            padding,
        })
    }
}

/// Load a GroupNorm (`{prefix}.weight`, `{prefix}.bias`) over `channels` in `groups` groups of
/// consecutive channels. The caller has checked that `groups` divides `channels`.
pub fn load_group_norm(
    loader: &mut ShardedLoader,
    prefix: &str,
    groups: usize,
    channels: usize,
) -> Result<GroupNorm, CheckpointError> {
    let mut norm =
        GroupNormConfig::new(groups, channels).with_epsilon(GROUP_NORM_EPS).init(loader.device());
    norm.gamma = Some(Param::from_tensor(loader.tensor(&format!("{prefix}.weight"), [channels])?));
    norm.beta = Some(Param::from_tensor(loader.tensor(&format!("{prefix}.bias"), [channels])?));
    Ok(norm)
}

impl ResnetBlock {
    /// # Shapes
    /// - `x`: `[batch, in_channels, height, width]`
    /// - returns `[batch, out_channels, height, width]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let hidden = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let hidden = self.conv2.forward(silu(self.norm2.forward(hidden)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + hidden
    }

    pub fn load(
        loader: &mut ShardedLoader,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
    ) -> Result<Self, CheckpointError> {
        let conv_shortcut = if in_channels != out_channels {
            let prefix = format!("{prefix}.conv_shortcut");
            Some(Conv::load(loader, &prefix, [in_channels, out_channels, 1], 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: load_group_norm(loader, &format!("{prefix}.norm1"), groups, in_channels)?,
            conv1: Conv::load(
                loader,
                &format!("{prefix}.conv1"),
                [in_channels, out_channels, 3],
                1,
                1,
            )?,
            norm2: load_group_norm(loader, &format!("{prefix}.norm2"), groups, out_channels)?,
            conv2: Conv::load(
                loader,
                &format!("{prefix}.conv2"),
                [out_channels, out_channels, 3],
                1,
                1,
            )?,
            conv_shortcut,
        })
    }
}

impl Downsample {
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`
    /// - returns `[batch, channels, height / 2, width / 2]` (rounded down)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // (left, right, top, bottom): asymmetric, as `F.pad(x, (0, 1, 0, 1))`.
        let padded = x.pad((0, 1, 0, 1), PadMode::Constant(0.0));
        // padded: [batch, channels, height + 1, width + 1]
        self.conv.forward(padded)
    }

    pub fn load(
        loader: &mut ShardedLoader,
        prefix: &str,
        channels: usize,
    ) -> Result<Self, CheckpointError> {
        let conv = Conv::load(loader, &format!("{prefix}.conv"), [channels, channels, 3], 2, 0)?;
        Ok(Self { conv })
    }
}

impl Upsample {
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`
    /// - returns `[batch, channels, 2 * height, 2 * width]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, height, width] = x.dims();
        let options = InterpolateOptions::new(InterpolateMode::Nearest)
            .with_output_size([2 * height, 2 * width]);
        self.conv.forward(interpolate(x, options))
    }

    pub fn load(
        loader: &mut ShardedLoader,
        prefix: &str,
        channels: usize,
    ) -> Result<Self, CheckpointError> {
        let conv = Conv::load(loader, &format!("{prefix}.conv"), [channels, channels, 3], 1, 1)?;
        Ok(Self { conv })
    }
}

impl MidAttention {
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, channels, height, width] = x.dims();
        let tokens = height * width;

        let normed = self.group_norm.forward(x.clone());
        let sequence = normed.reshape([batch, channels, tokens]).swap_dims(1, 2);
        // sequence: [batch, tokens, channels]
        let query = self.to_q.forward(sequence.clone());
        let key = self.to_k.forward(sequence.clone());
        let value = self.to_v.forward(sequence);

        let scale = (channels as f64).powf(-0.5);
        let scores = query.matmul(key.swap_dims(1, 2)).mul_scalar(scale); // [batch, tokens, tokens]
        let mixed = softmax(scores, 2).matmul(value); // [batch, tokens, channels]

        let projected = self.to_out.forward(mixed).swap_dims(1, 2); // [batch, channels, tokens]
        projected.reshape([batch, channels, height, width]) + x
    }

    /// Load the current names (`to_q`, `to_k`, `to_v`, `to_out.0`) or, when those are absent,
    /// the names of diffusers 0.4-era conversions such as sd-vae-ft-ema (`query`, `key`,
    /// `value`, `proj_attn`); both are Linear `[channels, channels]` with bias.
    pub fn load(
        loader: &mut ShardedLoader,
        prefix: &str,
        channels: usize,
        groups: usize,
    ) -> Result<Self, CheckpointError> {
        let old_names = !loader.contains(&format!("{prefix}.to_q.weight"))
            && loader.contains(&format!("{prefix}.query.weight"));
        let [q, k, v, out] = if old_names {
            ["query", "key", "value", "proj_attn"]
        } else {
            ["to_q", "to_k", "to_v", "to_out.0"]
        };
        let mut linear =
            |name: &str| loader.linear(&format!("{prefix}.{name}"), channels, channels);
        let (to_q, to_k, to_v, to_out) = (linear(q)?, linear(k)?, linear(v)?, linear(out)?);
        Ok(Self {
            group_norm: load_group_norm(loader, &format!("{prefix}.group_norm"), groups, channels)?,
            to_q,
            to_k,
            to_v,
            to_out,
        })
    }
}

impl MidBlock {
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`
    ///
    /// Returns the output of the attention (if any) and of the whole block.
    pub fn forward(&self, x: Tensor<4>) -> (Option<Tensor<4>>, Tensor<4>) {
        let x = self.resnet_in.forward(x);
        let (attended, x) = match &self.attention {
            Some(attention) => {
                let attended = attention.forward(x);
                (Some(attended.clone()), attended)
            }
            None => (None, x),
        };
        (attended, self.resnet_out.forward(x))
    }

    pub fn load(
        loader: &mut ShardedLoader,
        prefix: &str,
        channels: usize,
        groups: usize,
        with_attention: bool,
    ) -> Result<Self, CheckpointError> {
        let resnet = |loader: &mut ShardedLoader, index: usize| {
            ResnetBlock::load(
                loader,
                &format!("{prefix}.resnets.{index}"),
                channels,
                channels,
                groups,
            )
        };
        let resnet_in = resnet(loader, 0)?;
        let attention = if with_attention {
            Some(MidAttention::load(loader, &format!("{prefix}.attentions.0"), channels, groups)?)
        } else {
            None
        };
        let resnet_out = resnet(loader, 1)?;
        Ok(Self { resnet_in, attention, resnet_out })
    }
}
