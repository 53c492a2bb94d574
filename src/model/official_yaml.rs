//! The official config file format (`configs/*.yaml` of apple/ml-starflow): an `arguments:`
//! list of one-key maps holding `train.py` parser arguments, e.g.
//!
//! ```yaml
//! arguments:
//! - img_size: 256
//! - layers_per_block: 2 2 2 2 2 24
//! ```
//!
//! Parser names differ from the model's constructor: `channel_size` is the latent channel
//! count, `img_size` is in image pixels (the latent side is `img_size / vae_downsample`),
//! `blocks` is the block count, and the text width comes from the text encoder.

use std::collections::BTreeMap;

use super::config::{ConfigError, FlowConfig};

#[derive(serde::Deserialize)]
struct OfficialFile {
    arguments: Vec<BTreeMap<String, serde_yaml_ng::Value>>,
}

fn to_json(value: &serde_yaml_ng::Value) -> serde_json::Value {
    match value {
        serde_yaml_ng::Value::Bool(b) => serde_json::Value::from(*b),
        serde_yaml_ng::Value::Number(n) => {
            if let Some(i) = n.as_u64() {
                serde_json::Value::from(i)
            } else {
                serde_json::Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_yaml_ng::Value::String(s) => serde_json::Value::from(s.clone()),
        _ => serde_json::Value::Null,
    }
}

/// The parser arguments of an official yaml file, in file order.
pub fn parse_arguments(text: &str) -> Result<BTreeMap<String, serde_json::Value>, ConfigError> {
    let file: OfficialFile =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    Ok(file
        .arguments
        .iter()
        .flat_map(|map| map.iter().map(|(k, v)| (k.clone(), to_json(v))))
        .collect())
}

impl FlowConfig {
    /// Build the flow config from an official yaml. `vae_downsample` is the autoencoder's
    /// spatial factor (8 for SD-VAE) and `text_dim` the text encoder's width (2048 for
    /// flan-t5-xl); the released file names get the preset's guidance defaults.
    pub fn from_official_yaml(
        text: &str,
        vae_downsample: usize,
        text_dim: usize,
    ) -> Result<Self, ConfigError> {
        let args = parse_arguments(text)?;
        let number = |key: &str| args.get(key).and_then(|v| v.as_u64()).map(|v| v as usize);
        let img_size = number("img_size")
            .ok_or_else(|| ConfigError::Parse("the yaml has no img_size argument".into()))?;
        if vae_downsample == 0 || img_size % vae_downsample != 0 {
            return Err(ConfigError::Invalid {
                field: "img_size",
                value: img_size.to_string(),
                requirement: format!(
                    "it must be a multiple of the autoencoder's factor {vae_downsample}"
                ),
            });
        }
        let layers: Vec<serde_json::Value> = match args.get("layers_per_block") {
            Some(serde_json::Value::String(list)) => list
                .split_whitespace()
                .map(|n| n.parse::<u64>().map(serde_json::Value::from))
                .collect::<Result<_, _>>()
                .map_err(|e| ConfigError::Parse(format!("layers_per_block: {e}")))?,
            Some(serde_json::Value::Number(n)) => vec![serde_json::Value::Number(n.clone())],
            _ => {
                return Err(ConfigError::Parse("the yaml has no layers_per_block argument".into()));
            }
        };

        let mut kwargs = serde_json::Map::new();
        kwargs.insert("in_channels".into(), number("channel_size").unwrap_or(4).into());
        kwargs.insert("img_size".into(), (img_size / vae_downsample).into());
        kwargs.insert("num_blocks".into(), number("blocks").unwrap_or(layers.len()).into());
        kwargs.insert("layers_per_block".into(), serde_json::Value::Array(layers));
        if number("txt_size").unwrap_or(0) > 0 {
            kwargs.insert("txt_dim".into(), text_dim.into());
        }
        for key in [
            "patch_size",
            "channels",
            "top_block_channels",
            "head_dim",
            "rope",
            "sos",
            "txt_size",
            "use_softplus",
            "cond_top_only",
            "use_final_norm",
            "soft_clip",
            "noise_std",
            "seq_order",
            "pt_seq_len",
            "learnable_self_denoiser",
            "conditional_denoiser",
        ] {
            if let Some(value) = args.get(key) {
                kwargs.insert(key.into(), value.clone());
            }
        }
        let mut config = Self::from_official_kwargs(&serde_json::Value::Object(kwargs), false)?;
        let preset = Self::starflow_3b_t2i_256();
        if config.layers_per_block == preset.layers_per_block && config.width == preset.width {
            config.default_guidance = preset.default_guidance;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The argument list of the official `configs/starflow_3B_t2i_256x256.yaml`.
    const RELEASED: &str = "arguments:\n- no_flip: 1\n- fsdp: 1\n- img_size: 256\n- txt_size: 128\n\
        - channel_size: 4\n- patch_size: 1\n- channels: 3072\n- blocks: 6\n\
        - layers_per_block: 2 2 2 2 2 24\n- noise_std: 0.3\n- lr: 6.4e-05\n- rope: 1\n- sos: 1\n\
        - seq_order: L2R\n- use_softplus: 1\n- cond_top_only: 1\n- use_final_norm: 1\n\
        - vae: stabilityai/sd-vae-ft-ema\n- text: google/flan-t5-xl\n- cfg: 2.5\n- soft_clip: 4\n";

    #[test]
    fn released_yaml_gives_the_released_preset() {
        let config = FlowConfig::from_official_yaml(RELEASED, 8, 2048).expect("parses");
        assert_eq!(config, FlowConfig::starflow_3b_t2i_256());
    }

    #[test]
    fn bad_yaml_says_what_is_wrong() {
        let err = FlowConfig::from_official_yaml(
            "arguments:\n- img_size: 250\n- layers_per_block: 2\n",
            8,
            16,
        )
        .expect_err("250 is not a multiple of 8");
        assert!(err.to_string().contains("img_size"), "{err}");
    }
}
