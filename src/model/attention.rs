//! One pre-norm transformer layer (`AttentionBlock`: LayerNorm, multi-head attention with
//! RoPE, LayerNorm, GELU MLP) and the KV cache the sampler owns.

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

use super::rope::{RopeTable, apply_rope};

/// Which keys a query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Keys up to the query's own position (cached prefix included).
    Causal,
    /// Every key (the learned denoiser).
    Full,
}

/// Cached keys (already rotated) and values of one layer, preallocated to the block's length.
#[derive(Debug, Clone)]
pub struct LayerCache {
    keys: Tensor<4>,   // [batch, heads, capacity, head_dim]
    values: Tensor<4>, // [batch, heads, capacity, head_dim]
    len: usize,
}

/// The caches of every layer of one block. Writes go at the shared write pointer `len`.
#[derive(Debug, Clone)]
pub struct BlockCache {
    layers: Vec<LayerCache>,
    capacity: usize,
}

impl BlockCache {
    pub fn new(
        layers: usize,
        batch: usize,
        heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &Device,
    ) -> Self {
        let empty = LayerCache {
            keys: Tensor::zeros([batch, heads, capacity, head_dim], device),
            values: Tensor::zeros([batch, heads, capacity, head_dim], device),
            len: 0,
        };
        Self { layers: vec![empty; layers], capacity }
    }

    /// Positions written so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |layer| layer.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Move the write pointer back by `positions` (Jacobi re-runs a chunk).
    pub fn rewind(&mut self, positions: usize) {
        for layer in &mut self.layers {
            layer.len = layer.len.saturating_sub(positions);
        }
    }

    pub fn layer_mut(&mut self, index: usize) -> &mut LayerCache {
        &mut self.layers[index]
    }
}

/// Multi-head self-attention (`attention.norm`, `attention.qkv`, `attention.proj`).
#[derive(Module, Debug)]
pub struct Attention {
    pub norm: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    #[module(skip)]
    pub heads: usize,
    #[module(skip)]
    pub head_dim: usize,
}

/// The GELU MLP (`mlp.norm`, `mlp.main.0`, `mlp.main.2`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub norm: LayerNorm,
    pub up: Linear,
    pub down: Linear,
}

/// One transformer layer.
#[derive(Module, Debug)]
pub struct TransformerLayer {
    pub attention: Attention,
    pub mlp: Mlp,
}

/// Per-call attention settings.
#[derive(Debug, Clone, Default)]
pub struct AttentionCall<'a> {
    /// Rotary table rows of the tokens in this call (`None`: no rotary embedding).
    pub rope: Option<&'a RopeTable>,
    /// Multiplier on the attention logits per batch row, `[batch, 1, 1, 1]` (the inverse of
    /// TARFlow's attention temperature on the null half); `None` means 1.
    pub logit_scale: Option<Tensor<4>>,
}

impl Attention {
    /// # Shapes
    /// - `x`: `[batch, tokens, model_dim]`, the tokens of this call, which follow the
    ///   `cache.len()` positions already cached
    /// - returns `[batch, tokens, model_dim]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Mask,
        call: &AttentionCall,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [batch, tokens, model_dim] = x.dims();
        let (heads, head_dim) = (self.heads, self.head_dim);

        let qkv = dense(&self.qkv, self.norm.forward(x)); // [batch, tokens, 3 * model_dim]
        let split = |index: usize| {
            qkv.clone()
                .narrow(2, index * model_dim, model_dim)
                .reshape([batch, tokens, heads, head_dim])
                .swap_dims(1, 2) // [batch, heads, tokens, head_dim]
        };
        let (mut query, mut key, value) = (split(0), split(1), split(2));
        if let Some(rope) = call.rope {
            query = apply_rope(query, rope);
            key = apply_rope(key, rope);
        }

        let (keys, values, prefix) = match cache {
            Some(cache) => {
                let start = cache.len;
                let end = start + tokens;
                let capacity = cache.keys.dims()[2];
                assert!(end <= capacity, "KV cache holds {capacity} positions, asked for {end}");
                // Taken out of the cache while written, so that a backend can write in place.
                let range = [0..batch, 0..heads, start..end, 0..head_dim];
                cache.keys.inplace(|keys| keys.slice_assign(range.clone(), key));
                cache.values.inplace(|values| values.slice_assign(range, value));
                cache.len = end;
                (
                    cache.keys.clone().narrow(2, 0, end),
                    cache.values.clone().narrow(2, 0, end),
                    start,
                )
            }
            None => (key, value, 0),
        };

        let scale = (head_dim as f64).powf(-0.5);
        let mut scores = query.matmul(keys.swap_dims(2, 3)).mul_scalar(scale); // [batch, heads, tokens, keys]
        if let Some(logit_scale) = &call.logit_scale {
            scores = scores * logit_scale.clone();
        }
        if mask == Mask::Causal && tokens > 1 {
            scores = scores + causal_bias(tokens, prefix, &qkv.device());
        }
        let weights = softmax(scores, 3);
        let mixed = weights.matmul(values); // [batch, heads, tokens, head_dim]

        let merged = mixed.swap_dims(1, 2).reshape([batch, tokens, model_dim]);
        dense(&self.proj, merged)
    }
}

/// `0` where query `i` (after `prefix` cached positions) may see key `j`, `-inf` elsewhere.
fn causal_bias(tokens: usize, prefix: usize, device: &Device) -> Tensor<4> {
    let keys = prefix + tokens;
    let values: Vec<f32> = (0..tokens)
        .flat_map(|i| (0..keys).map(move |j| if j <= prefix + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::<2>::from_data(TensorData::new(values, [tokens, keys]), device).unsqueeze::<4>()
}

impl Mlp {
    /// # Shapes
    /// - `x`: `[batch, tokens, model_dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        dense(&self.down, gelu_erf(dense(&self.up, self.norm.forward(x))))
    }
}

/// A linear layer whose weights may be stored in half precision: the input is cast to the
/// weights' type for the matrix product and the result back to the input's type, so the rest
/// of the network (norms, attention, the affine update) stays in f32.
pub fn dense<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let weight_dtype = layer.weight.val().dtype();
    let input_dtype = x.dtype();
    if weight_dtype == input_dtype {
        layer.forward(x)
    } else {
        layer.forward(x.cast(weight_dtype)).cast(input_dtype)
    }
}

/// Exact GELU, `x * (1 + erf(x / sqrt 2)) / 2`, written out so that autodiff differentiates
/// `erf` itself: burn-wgpu's fused `gelu` backward was measured at 7e-4 relative error on
/// lavapipe (the CPU backend at 1e-7), which broke the score denoiser's float precision.
pub fn gelu_erf<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * x.div_scalar(std::f64::consts::SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5)
}

impl TransformerLayer {
    /// Residual attention then residual MLP.
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Mask,
        call: &AttentionCall,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let x = x.clone() + self.attention.forward(x, mask, call, cache);
        x.clone() + self.mlp.forward(x)
    }
}

/// RMSNorm with the "unit offset" weight: `x / sqrt(mean(x^2) + eps) * (1 + g)`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: burn::module::Param<Tensor<1>>,
}

/// Epsilon of the official `RMSNorm`.
pub const RMS_NORM_EPS: f64 = 1e-6;

impl RmsNorm {
    /// # Shapes
    /// - `x`: `[batch, tokens, model_dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mean_square = x.clone().square().mean_dim(2); // [batch, tokens, 1]
        let normed = x / mean_square.add_scalar(RMS_NORM_EPS).sqrt();
        normed * self.weight.val().add_scalar(1.0).unsqueeze::<3>()
    }
}
