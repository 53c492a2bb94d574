//! The training start: initial values by official key, following the reference code of each
//! part rather than the golden-test recipe of [`crate::checkpoint::RandomWeights`].
//!
//! - Linear and convolution weights: PyTorch's default, `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
//! - T5 (transformers `T5PreTrainedModel._init_weights`, factor 1): `shared` N(0, 1), `q`
//!   N(0, (d_model * d_kv)^-1/2), other projections N(0, fan_in^-1/2), the position bias
//!   N(0, d_model^-1/2), layer norms 1.
//! - The flow: `proj_out` zero (the official `MetaBlock` zero-initializes it, so each block
//!   starts as the identity), start tokens N(0, 1), LayerNorms 1 and 0, the final RMSNorm's
//!   weight 0 (it is applied as `1 + weight`).
//! - The autoencoder's `quant_conv` starts with the log-variance half at [`LOGVAR_START`]
//!   (its weights zero, its bias the constant): a posterior that starts at std 1 stays wide
//!   for hundreds of steps under a small KL weight, and the decoder learns to blur.
//! - Biases 0, GroupNorms 1 and 0.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// Initial log-variance of the autoencoder's posterior: std 0.018 in latent units, about 1 %
/// of the latents' spread, so that the decoder sees nearly clean latents from the start.
pub const LOGVAR_START: f32 = -8.0;

/// Which reference a module's init follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitRule {
    Flow,
    /// T5 of this width and head width (the `q` projection's extra factor).
    T5 {
        d_model: usize,
        d_kv: usize,
    },
    Autoencoder,
}

/// Draws initial values by key, reproducibly from a seed.
pub struct Initializer {
    rng: rand_chacha::ChaCha8Rng,
    rule: InitRule,
}

impl Initializer {
    pub fn new(seed: u64, rule: InitRule) -> Self {
        Self { rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed), rule }
    }

    fn normal(&mut self, count: usize, std: f32) -> Vec<f32> {
        (0..count)
            .map(|_| {
                let n: f32 = StandardNormal.sample(&mut self.rng);
                n * std
            })
            .collect()
    }

    fn uniform(&mut self, count: usize, bound: f32) -> Vec<f32> {
        (0..count).map(|_| self.rng.random_range(-bound..=bound)).collect()
    }

    /// Values for `key` of (stored) `shape`. Call in a fixed key order for reproducibility.
    pub fn values(&mut self, key: &str, shape: &[usize]) -> Vec<f32> {
        let count: usize = shape.iter().product();
        let last = key.rsplit('.').next().unwrap_or(key);
        // Stored layouts: linear [out, in], convolution [out, in, k, k]: fan_in is all but dim 0.
        let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f32;
        let is_norm = key.contains("norm");
        match self.rule {
            InitRule::Flow => {
                if key.ends_with("proj_out.weight") || key.ends_with("proj_out.bias") {
                    vec![0.0; count]
                } else if key.ends_with("final_norm.weight") {
                    vec![0.0; count]
                } else if is_norm && last == "weight" {
                    vec![1.0; count]
                } else if last == "bias" {
                    vec![0.0; count]
                } else if last == "sos_embed" {
                    self.normal(count, 1.0)
                } else {
                    self.uniform(count, fan_in.sqrt().recip())
                }
            }
            InitRule::T5 { d_model, d_kv } => {
                if is_norm {
                    vec![1.0; count]
                } else if key == "shared.weight" {
                    self.normal(count, 1.0)
                } else if key.ends_with("relative_attention_bias.weight") {
                    self.normal(count, (d_model as f32).sqrt().recip())
                } else if key.ends_with("SelfAttention.q.weight") {
                    self.normal(count, (fan_in * d_kv as f32).sqrt().recip())
                } else {
                    self.normal(count, fan_in.sqrt().recip())
                }
            }
            InitRule::Autoencoder => {
                if key == "quant_conv.weight" || key == "quant_conv.bias" {
                    // Output channels: the mean's half, then the log-variance's half.
                    let half = shape[0] / 2;
                    let per_channel = count / shape[0].max(1);
                    let mut values = if last == "bias" {
                        vec![0.0; count]
                    } else {
                        self.uniform(count, fan_in.sqrt().recip())
                    };
                    let fill = if last == "bias" { LOGVAR_START } else { 0.0 };
                    values[half * per_channel..].iter_mut().for_each(|v| *v = fill);
                    values
                } else if is_norm && last == "weight" {
                    vec![1.0; count]
                } else if last == "bias" {
                    vec![0.0; count]
                } else {
                    self.uniform(count, fan_in.sqrt().recip())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoencoder_posterior_starts_narrow() {
        let mut init = Initializer::new(1, InitRule::Autoencoder);
        let bias = init.values("quant_conv.bias", &[8]);
        assert_eq!(
            bias,
            [0.0, 0.0, 0.0, 0.0, LOGVAR_START, LOGVAR_START, LOGVAR_START, LOGVAR_START]
        );
        let weight = init.values("quant_conv.weight", &[8, 8, 1, 1]);
        assert!(weight[32..].iter().all(|v| *v == 0.0), "log-variance rows start at zero");
        assert!(weight[..32].iter().any(|v| *v != 0.0), "mean rows are drawn");
    }

    #[test]
    fn flow_proj_out_starts_at_zero_and_norms_at_one() {
        let mut init = Initializer::new(1, InitRule::Flow);
        assert!(init.values("blocks.0.proj_out.weight", &[8, 16]).iter().all(|v| *v == 0.0));
        assert!(
            init.values("blocks.0.attn_blocks.0.mlp.norm.weight", &[16]).iter().all(|v| *v == 1.0)
        );
        let qkv = init.values("blocks.0.attn_blocks.0.attention.qkv.weight", &[48, 16]);
        assert!(qkv.iter().all(|v| v.abs() <= 0.25) && qkv.iter().any(|v| *v != 0.0));
    }
}
