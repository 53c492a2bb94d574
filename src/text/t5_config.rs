//! `T5Config`: the architecture keys of a Hugging Face T5 `config.json`, with transformers'
//! defaults and the feed-forward variant it derives from `feed_forward_proj`.

use serde::{Deserialize, Serialize};

use super::hub::InvalidConfig;

/// The architecture keys of a Hugging Face T5 `config.json`; other keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Rows of the embedding `shared` (32128 for flan-t5; more than the tokenizer's entries).
    pub vocab_size: usize,
    /// Width of the residual stream: `model_dim`, the text width the flow sees.
    pub d_model: usize,
    /// Width of one attention head: `head_dim`.
    pub d_kv: usize,
    /// Hidden width of the feed-forward.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    #[serde(default = "default_num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// `"relu"` (original T5), `"gated-gelu"` (T5 v1.1, flan-t5), `"gated-silu"`, ...
    #[serde(default = "default_feed_forward_proj")]
    pub feed_forward_proj: String,
    /// Written by transformers, derived from `feed_forward_proj`; when present it wins, as in
    /// transformers.
    #[serde(default)]
    pub dense_act_fn: Option<String>,
    #[serde(default)]
    pub is_gated_act: Option<bool>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_num_buckets() -> usize {
    32
}

fn default_max_distance() -> usize {
    128
}

fn default_layer_norm_epsilon() -> f64 {
    1e-6
}

fn default_feed_forward_proj() -> String {
    "relu".to_string()
}

/// The feed-forward's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// transformers' `gelu_new`: the tanh approximation of GELU (flan-t5).
    GeluTanh,
    /// The exact (erf) GELU.
    Gelu,
    Relu,
    Silu,
}

impl T5Config {
    /// google/flan-t5-xl's encoder, as in its published `config.json`.
    pub fn flan_t5_xl() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 2048,
            d_kv: 64,
            d_ff: 5120,
            num_layers: 24,
            num_heads: 32,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".to_string(),
            dense_act_fn: Some("gelu_new".to_string()),
            is_gated_act: Some(true),
            model_type: Some("t5".to_string()),
        }
    }

    /// Width of the attention projections (`heads * head_dim`; equal to `d_model` in flan-t5).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Whether the feed-forward is gated, and its activation, as transformers derives them.
    pub fn feed_forward(&self) -> Result<(bool, Activation), InvalidConfig> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let derived_gated = parts.len() == 2 && parts[0] == "gated";
        if !(parts.len() == 1 || derived_gated) {
            let value = format!("{:?}", self.feed_forward_proj);
            return Err(InvalidConfig::new(
                "feed_forward_proj",
                value,
                "it must be ACT or gated-ACT",
            ));
        }
        let derived_act = match self.feed_forward_proj.as_str() {
            "gated-gelu" => "gelu_new",
            _ => parts[parts.len() - 1],
        };
        let act_name = self.dense_act_fn.as_deref().unwrap_or(derived_act);
        let act = match act_name {
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                let requirement = "it must be gelu_new, gelu, relu or silu";
                return Err(InvalidConfig::new("dense_act_fn", format!("{other:?}"), requirement));
            }
        };
        Ok((self.is_gated_act.unwrap_or(derived_gated), act))
    }

    /// Check the sizes and options; returns whether the feed-forward is gated, and its
    /// activation.
    pub fn validate(&self) -> Result<(bool, Activation), InvalidConfig> {
        if let Some(model_type) = &self.model_type {
            if model_type != "t5" {
                let value = format!("{model_type:?}");
                return Err(InvalidConfig::new("model_type", value, "it must be \"t5\""));
            }
        }
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
        ];
        for (field, value) in sizes {
            if value == 0 {
                return Err(InvalidConfig::new(field, value.to_string(), "it must be at least 1"));
            }
        }
        let buckets = self.relative_attention_num_buckets;
        if buckets < 4 || buckets % 2 != 0 {
            let field = "relative_attention_num_buckets";
            return Err(InvalidConfig::new(field, buckets.to_string(), "it must be even and >= 4"));
        }
        // Distances of at least max_exact = buckets / 4 are log-bucketed up to max_distance.
        if self.relative_attention_max_distance <= buckets / 4 {
            let field = "relative_attention_max_distance";
            let value = self.relative_attention_max_distance.to_string();
            let requirement = "it must exceed relative_attention_num_buckets / 4";
            return Err(InvalidConfig::new(field, value, requirement));
        }
        self.feed_forward()
    }
}
