//! Tiny random pixel-space models written as real model folders, for the app's tests, its UI
//! benchmark and the headless screenshot check. They make noise-like images, not pictures.

use std::path::Path;

use anyhow::Context as _;
use burn::tensor::Device;

use crate::checkpoint::write_safetensors;
use crate::model::config::{Conditioning, PositionKind, ScaleKind, SeqOrder};
use crate::model::{Flow, FlowConfig, GuidanceRule};

/// A class-conditional (4 classes) STARFlow-style config with `side x side` latent pixels and
/// patch 2, so `(side / 2)^2` tokens per block, 3 blocks.
pub fn tiny_config(side: usize) -> FlowConfig {
    FlowConfig {
        latent_channels: 3,
        latent_height: side,
        latent_width: side,
        patch_size: 2,
        width: 48,
        head_dim: 24,
        layers_per_block: vec![1, 1, 2],
        sos: true,
        scale: ScaleKind::Softplus,
        soft_clip: 4.0,
        final_norm: true,
        positions: PositionKind::Rope,
        seq_order: SeqOrder::L2R,
        conditioning: Conditioning::OneHotClass { num_classes: 4 },
        text_len: 0,
        text_dim: 0,
        condition_deep_only: true,
        guidance_rule: GuidanceRule::Gaussian,
        default_guidance: 1.0,
        max_guidance: 5.0,
        ..FlowConfig::starflow_3b_t2i_256()
    }
}

/// Write `flow.json` and `tiny.safetensors` for `config` into `folder` (created if missing).
pub fn write_model_folder(folder: &Path, config: &FlowConfig, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder).with_context(|| format!("creating {folder:?}"))?;
    let (_, tensors) = Flow::random(config, seed, &Device::flex());
    write_safetensors(&folder.join("tiny.safetensors"), &tensors).context("writing the weights")?;
    let json = serde_json::to_string_pretty(config).context("serializing the config")?;
    std::fs::write(folder.join("flow.json"), json)
        .with_context(|| format!("writing {folder:?}/flow.json"))?;
    Ok(())
}
