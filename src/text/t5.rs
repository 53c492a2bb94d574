//! The T5 encoder stack (T5 v1.1 / flan-t5, as `transformers`' `T5EncoderModel` and
//! `T5Model.encoder`): token embedding `shared`, pre-norm blocks of self-attention with a
//! relative position bias and a (gated) feed-forward, RMS layer norms without bias or mean, and a
//! final layer norm. STARFlow uses `google/flan-t5-xl`'s encoder in float32 and multiplies its
//! last hidden state by the attention mask.
//!
//! Conventions that differ from most transformers (checked against transformers 5.24 in
//! `tests/hf_golden.rs`): no `1/sqrt(head_dim)` on the attention logits, the position bias is
//! computed by block 0's `relative_attention_bias` and reused by every block, the feed-forward
//! of flan-t5 is `wo(gelu_tanh(wi_0 x) * wi_1 x)`, and there is no embedding scaling.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{gelu, relu, silu, softmax};
use burn::tensor::module::embedding;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::hub::{HubError, InvalidConfig, ShardedLoader, WeightFiles, read_config};
pub use super::t5_config::{Activation, T5Config};
use crate::checkpoint::CheckpointError;

/// What can go wrong while loading a T5 encoder.
#[derive(Debug, thiserror::Error)]
pub enum T5Error {
    #[error("This text encoder's config can't be used: {0}. Pick a T5 v1.1 or flan-t5 encoder.")]
    Config(InvalidConfig),
    #[error(
        "This text encoder's config can't be used: {source}. Pick the folder of a T5 v1.1 or \
         flan-t5 encoder. (file: {path:?})"
    )]
    ConfigFile { path: PathBuf, source: InvalidConfig },
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// transformers' `T5LayerNorm`: `weight * x / sqrt(mean(x^2) + eps)`, no mean, no bias.
#[derive(Module, Debug)]
pub struct T5LayerNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    pub epsilon: f64,
}

/// Self-attention of one block (`layer.0.SelfAttention`), without biases.
#[derive(Module, Debug)]
pub struct T5Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    #[module(skip)]
    pub heads: usize,
    #[module(skip)]
    pub head_dim: usize,
}

/// The feed-forward of one block (`layer.1.DenseReluDense`): `wo(act(wi_0 x) * wi_1 x)` when
/// gated, `wo(act(wi x))` otherwise.
#[derive(Module, Debug)]
pub struct T5FeedForward {
    /// `wi_0` when gated, `wi` otherwise.
    pub wi: Linear,
    /// `wi_1`, the linear gate.
    pub gate: Option<Linear>,
    pub wo: Linear,
    #[module(skip)]
    pub activation: Activation,
}

/// One encoder block: `x + attention(norm(x))`, then `x + feed_forward(norm(x))`.
#[derive(Module, Debug)]
pub struct T5Block {
    pub attention_norm: T5LayerNorm,
    pub attention: T5Attention,
    pub feed_forward_norm: T5LayerNorm,
    pub feed_forward: T5FeedForward,
}

/// The encoder stack.
#[derive(Module, Debug)]
pub struct T5Encoder {
    /// `shared.weight`: `[vocab_size, model_dim]`.
    pub shared: Param<Tensor<2>>,
    /// Block 0's `relative_attention_bias.weight`: `[buckets, heads]`.
    pub relative_attention_bias: Param<Tensor<2>>,
    pub blocks: Vec<T5Block>,
    pub final_layer_norm: T5LayerNorm,
    #[module(skip)]
    pub config: T5Config,
}

/// A point of the forward pass that [`T5Encoder::forward_observed`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Stage {
    /// `shared.weight[ids]`.
    InputsEmbeds,
    /// The residual stream after block `i`'s attention sub-layer.
    AfterAttention(usize),
    /// The residual stream after block `i`.
    BlockOutput(usize),
    /// After `final_layer_norm`, before masking (padded positions are not zero here).
    LastHiddenState,
}

/// The bucket of relative position `key - query`, as transformers'
/// `T5Attention._relative_position_bucket`, including its float32 logarithm: half the buckets
/// per direction when `bidirectional`, exact below `num_buckets / 4` (per direction),
/// logarithmic up to `max_distance`, the last bucket beyond.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let (num_buckets, offset, distance) = if bidirectional {
        let half = num_buckets / 2;
        let offset = if relative_position > 0 { half } else { 0 };
        (half, offset, relative_position.unsigned_abs() as usize)
    } else {
        (num_buckets, 0, (-relative_position.min(0)) as usize)
    };
    let max_exact = num_buckets / 2;
    if distance < max_exact {
        return offset + distance;
    }

    // The reference computes this in float32 (`log` of a float tensor divided by a Python
    // float), then truncates. Done the same way here; for 32 buckets and distance 128 float64
    // gives the same buckets, but other sizes could land a distance on the other side.
    let log_ratio = (distance as f32 / max_exact as f32).ln();
    let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + (log_ratio / log_range * (num_buckets - max_exact) as f32) as usize;
    offset + large.min(num_buckets - 1)
}

impl T5LayerNorm {
    /// # Shapes
    /// - `x`: `[batch, tokens, model_dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let variance = x.clone().square().mean_dim(2); // [batch, tokens, 1]
        let normed = x * variance.add_scalar(self.epsilon).sqrt().recip();
        normed * self.weight.val().unsqueeze::<3>()
    }
}

impl T5Attention {
    /// # Shapes
    /// - `x`: `[batch, tokens, model_dim]`, already normalized
    /// - `bias`: `[batch or 1, heads, tokens, tokens]`, position bias plus key mask
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [batch, tokens, _] = x.dims();
        let (heads, head_dim) = (self.heads, self.head_dim);
        let split = |projected: Tensor<3>| {
            // [batch, tokens, inner_dim] -> [batch, heads, tokens, head_dim]
            projected.reshape([batch, tokens, heads, head_dim]).swap_dims(1, 2)
        };
        let query = split(self.q.forward(x.clone()));
        let key = split(self.k.forward(x.clone()));
        let value = split(self.v.forward(x));

        // No 1/sqrt(head_dim): T5 folds it into the weights.
        let scores = query.matmul(key.swap_dims(2, 3)) + bias; // [batch, heads, tokens, tokens]
        let mixed = softmax(scores, 3).matmul(value); // [batch, heads, tokens, head_dim]

        let merged = mixed.swap_dims(1, 2).reshape([batch, tokens, heads * head_dim]);
        self.o.forward(merged) // [batch, tokens, model_dim]
    }
}

impl T5FeedForward {
    /// # Shapes
    /// - `x`: `[batch, tokens, model_dim]`, already normalized
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hidden = activate(self.activation, self.wi.forward(x.clone())); // [batch, tokens, d_ff]
        let hidden = match &self.gate {
            Some(gate) => hidden * gate.forward(x),
            None => hidden,
        };
        self.wo.forward(hidden)
    }
}

impl T5Block {
    /// # Shapes
    /// - `x`: `[batch, tokens, model_dim]`
    /// - `bias`: `[batch or 1, heads, tokens, tokens]`
    ///
    /// Returns the stream after the attention sub-layer and after the whole block.
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> (Tensor<3>, Tensor<3>) {
        let after_attention =
            x.clone() + self.attention.forward(self.attention_norm.forward(x), bias);
        let normed = self.feed_forward_norm.forward(after_attention.clone());
        let output = after_attention.clone() + self.feed_forward.forward(normed);
        (after_attention, output)
    }
}

impl T5Encoder {
    /// Load `config.json` and the weights (`model.safetensors` or the sharded
    /// `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`) from a Hugging
    /// Face folder. Encoder-decoder checkpoints load too: decoder tensors and `lm_head` are
    /// ignored.
    pub fn load_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self, T5Error> {
        let dir = dir.as_ref();
        let config: T5Config = read_config(dir, "config.json")?;
        config
            .validate()
            .map_err(|source| T5Error::ConfigFile { path: dir.join("config.json"), source })?;
        let weights = WeightFiles::open_dir(dir, "model")?;
        Self::load(&config, &weights, device)
    }

    /// Build the encoder of `config` from `weights`, with strict key and shape checks.
    pub fn load(
        config: &T5Config,
        weights: &WeightFiles,
        device: &Device,
    ) -> Result<Self, T5Error> {
        let (gated, activation) = config.validate().map_err(T5Error::Config)?;
        let mut loader = weights.loader(device);
        let (model_dim, inner_dim) = (config.d_model, config.inner_dim());

        // The embedding is stored once as `shared.weight`; `encoder.embed_tokens.weight` is its
        // alias, present in some exports only.
        let embedding_key = if !loader.contains("shared.weight")
            && loader.contains("encoder.embed_tokens.weight")
        {
            "encoder.embed_tokens.weight"
        } else {
            "shared.weight"
        };
        let shared = loader.tensor(embedding_key, [config.vocab_size, model_dim])?;
        let bias_key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
        let relative_attention_bias =
            loader.tensor(bias_key, [config.relative_attention_num_buckets, config.num_heads])?;

        let norm =
            |loader: &mut ShardedLoader, key: &str| -> Result<T5LayerNorm, CheckpointError> {
                let weight = loader.tensor(key, [model_dim])?;
                Ok(T5LayerNorm {
                    weight: Param::from_tensor(weight),
                    epsilon: config.layer_norm_epsilon,
                })
            };
        let mut blocks = Vec::with_capacity(config.num_layers);
        for index in 0..config.num_layers {
            let prefix = format!("encoder.block.{index}");
            let attention_prefix = format!("{prefix}.layer.0.SelfAttention");
            let attention = T5Attention {
                q: loader.linear_no_bias(&format!("{attention_prefix}.q"), model_dim, inner_dim)?,
                k: loader.linear_no_bias(&format!("{attention_prefix}.k"), model_dim, inner_dim)?,
                v: loader.linear_no_bias(&format!("{attention_prefix}.v"), model_dim, inner_dim)?,
                o: loader.linear_no_bias(&format!("{attention_prefix}.o"), inner_dim, model_dim)?,
                heads: config.num_heads,
                head_dim: config.d_kv,
            };
            let ff_prefix = format!("{prefix}.layer.1.DenseReluDense");
            let (wi, gate) = if gated {
                let wi =
                    loader.linear_no_bias(&format!("{ff_prefix}.wi_0"), model_dim, config.d_ff)?;
                let gate =
                    loader.linear_no_bias(&format!("{ff_prefix}.wi_1"), model_dim, config.d_ff)?;
                (wi, Some(gate))
            } else {
                (loader.linear_no_bias(&format!("{ff_prefix}.wi"), model_dim, config.d_ff)?, None)
            };
            let feed_forward = T5FeedForward {
                wi,
                gate,
                wo: loader.linear_no_bias(&format!("{ff_prefix}.wo"), config.d_ff, model_dim)?,
                activation,
            };
            blocks.push(T5Block {
                attention_norm: norm(&mut loader, &format!("{prefix}.layer.0.layer_norm.weight"))?,
                attention,
                feed_forward_norm: norm(
                    &mut loader,
                    &format!("{prefix}.layer.1.layer_norm.weight"),
                )?,
                feed_forward,
            });
        }
        let final_layer_norm = norm(&mut loader, "encoder.final_layer_norm.weight")?;

        loader.finish(|key| {
            key.starts_with("decoder.")
                || key == "lm_head.weight"
                || key == "encoder.embed_tokens.weight"
                || key == "shared.weight"
        })?;
        Ok(Self {
            shared: Param::from_tensor(shared),
            relative_attention_bias: Param::from_tensor(relative_attention_bias),
            blocks,
            final_layer_norm,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// Width of the output: `model_dim`.
    pub fn model_dim(&self) -> usize {
        self.config.d_model
    }

    /// Block 0's position bias for `tokens` positions (no mask): entry `[0, h, q, k]` is
    /// `relative_attention_bias[bucket(k - q), h]`.
    ///
    /// # Shapes
    /// - returns `[1, heads, tokens, tokens]`
    pub fn position_bias(&self, tokens: usize) -> Tensor<4> {
        let weight = self.relative_attention_bias.val(); // [buckets, heads]
        let device = weight.device();
        let (num_buckets, max_distance) = (
            self.config.relative_attention_num_buckets,
            self.config.relative_attention_max_distance,
        );
        let buckets: Vec<i64> = (0..tokens as i64)
            .flat_map(|query| (0..tokens as i64).map(move |key| (query, key)))
            .map(|(query, key)| {
                relative_position_bucket(key - query, true, num_buckets, max_distance) as i64
            })
            .collect();
        let buckets =
            Tensor::<1, Int>::from_data(TensorData::new(buckets, [tokens * tokens]), &device);

        let heads = self.config.num_heads;
        weight
            .select(0, buckets) // [tokens * tokens, heads]
            .reshape([tokens, tokens, heads])
            .permute([2, 0, 1]) // [heads, tokens, tokens]
            .unsqueeze::<4>() // [1, heads, tokens, tokens]
    }

    /// The last hidden state with padded positions zeroed, as STARFlow feeds it to the flow.
    ///
    /// # Shapes
    /// - `ids`: `[batch, tokens]`
    /// - `mask`: `[batch, tokens]`, 1 for tokens, 0 for padding
    /// - returns `[batch, tokens, model_dim]`
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<3> {
        self.forward_observed(ids, mask, &mut |_, _| {})
    }

    /// [`Self::forward`], reporting intermediate tensors to `observe` on the way.
    pub fn forward_observed(
        &self,
        ids: Tensor<2, Int>,
        mask: Tensor<2>,
        observe: &mut dyn FnMut(T5Stage, &Tensor<3>),
    ) -> Tensor<3> {
        let [_batch, tokens] = ids.dims();

        let mut x = embedding(self.shared.val(), ids); // [batch, tokens, model_dim]
        observe(T5Stage::InputsEmbeds, &x);

        // Padded keys get float32's lowest value, as in transformers; queries are not masked.
        let key_bias = mask.clone().neg().add_scalar(1.0).mul_scalar(f32::MIN);
        let key_bias = key_bias.unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(1);
        // key_bias: [batch, 1, 1, tokens]
        let bias = self.position_bias(tokens) + key_bias; // [batch, heads, tokens, tokens]

        for (index, block) in self.blocks.iter().enumerate() {
            let (after_attention, output) = block.forward(x, bias.clone());
            observe(T5Stage::AfterAttention(index), &after_attention);
            observe(T5Stage::BlockOutput(index), &output);
            x = output;
        }

        let hidden = self.final_layer_norm.forward(x);
        observe(T5Stage::LastHiddenState, &hidden);
        hidden * mask.unsqueeze_dim::<3>(2) // [batch, tokens, model_dim]
    }
}

/// transformers' `NewGELUActivation` (`gelu_new`): `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715
/// x^3)))`. Written out with `x * x * x` so that no backend takes a float power of a negative.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cube = x.clone() * x.clone() * x.clone();
    let inner =
        (x.clone() + cube.mul_scalar(0.044715)).mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

fn activate<const D: usize>(activation: Activation, x: Tensor<D>) -> Tensor<D> {
    match activation {
        Activation::GeluTanh => gelu_tanh(x),
        Activation::Gelu => gelu(x),
        Activation::Relu => relu(x),
        Activation::Silu => silu(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_at_powers_of_two_match_the_reference_table() {
        // tolerances.json `bucket_at_power_of_two_distances`: distance -> [bucket(+d), bucket(-d)].
        for (distance, positive, negative) in
            [(16, 26, 10), (32, 28, 12), (64, 30, 14), (128, 31, 15)]
        {
            assert_eq!(relative_position_bucket(distance, true, 32, 128), positive, "+{distance}");
            assert_eq!(relative_position_bucket(-distance, true, 32, 128), negative, "-{distance}");
        }
    }

    #[test]
    fn small_distances_are_exact() {
        for distance in 0..8 {
            assert_eq!(relative_position_bucket(-distance, true, 32, 128), distance as usize);
            let expected = if distance == 0 { 0 } else { 16 + distance as usize };
            assert_eq!(relative_position_bucket(distance, true, 32, 128), expected);
        }
    }

    #[test]
    fn flan_t5_xl_feed_forward_is_gated_tanh_gelu() {
        assert_eq!(T5Config::flan_t5_xl().feed_forward(), Ok((true, Activation::GeluTanh)));
    }
}
