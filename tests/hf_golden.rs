//! The text encoder, its tokenizer and the autoencoder against reference outputs of Hugging
//! Face transformers 5.24 and diffusers 0.42 (`tests/golden-hf`, described in its README):
//! tiny random-weight copies of flan-t5-xl's encoder and of sd-vae-ft-ema, in their hub file
//! layouts. Every float tensor of `outputs_f64.safetensors` is compared; the tolerances come
//! from `tolerances.json` (the reference's own float32-vs-float64 error per tensor).
//!
//! Folders listed (colon-separated) in `STARFLOW_GOLDEN_HF_DIR` are checked too. The models run
//! on the CPU (burn-flex) and, when wgpu finds an adapter, on wgpu.

#[path = "hf_golden/loading_errors.rs"]
mod loading_errors;
#[path = "hf_golden/reference.rs"]
mod reference;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use starflow_studio::autoencoder::coder::VaeStage;
use starflow_studio::autoencoder::{AutoencoderKl, LatentDistribution, LatentPreview};
use starflow_studio::text::t5::{Activation, T5Stage, relative_position_bucket};
use starflow_studio::text::{PromptTokenizer, T5Encoder, TextEncoder};

use reference::{Reference, cpu, golden_dirs, part, prompts, reference_tokens, text_lengths, wgpu};

/// The synthetic preview map is recovered from exact data by a float64 solve; what remains is
/// float32 rounding of the latents and images.
const PREVIEW_FIT_TOLERANCE: f32 = 1e-4;

/// Inputs stored in the VAE reference file next to the outputs.
const VAE_INPUTS: [&str; 4] = ["image", "encode.eps", "decode.latent_scaled", "dist_probe.moments"];

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[test]
fn tokenizer_gives_the_reference_ids_and_masks() {
    for dir in golden_dirs() {
        let Some(t5_dir) = part(&dir, "t5") else { continue };
        let reference = Reference::open(&t5_dir, "tokenizer");
        let prompts = prompts(&t5_dir);
        for len in text_lengths(&reference) {
            let tokenizer = PromptTokenizer::from_file(t5_dir.join("tokenizer.json"), len)
                .unwrap_or_else(|err| panic!("{err}"));
            let ids = reference.i64s(&format!("L{len}.input_ids"));
            let mask = reference.i64s(&format!("L{len}.attention_mask"));
            for (index, prompt) in prompts.texts.iter().enumerate() {
                let tokens = tokenizer.encode(prompt).unwrap_or_else(|err| panic!("{err}"));
                let row = index * len..(index + 1) * len;
                let ours_ids: Vec<i64> = tokens.ids.iter().map(|&id| i64::from(id)).collect();
                let ours_mask: Vec<i64> = tokens.mask.iter().map(|&m| i64::from(m)).collect();
                assert_eq!(ours_ids, ids[row.clone()], "L{len} ids of prompt {index} {prompt:?}");
                assert_eq!(ours_mask, mask[row], "L{len} mask of prompt {index} {prompt:?}");
            }
        }
    }
}

#[test]
fn tokenizer_reports_tokens_used_and_text_cut() {
    for dir in golden_dirs() {
        let Some(t5_dir) = part(&dir, "t5") else { continue };
        let prompts = prompts(&t5_dir);
        for len in [16, 128] {
            let tokenizer = PromptTokenizer::from_file(t5_dir.join("tokenizer.json"), len)
                .unwrap_or_else(|err| panic!("{err}"));
            for (prompt, &total) in prompts.texts.iter().zip(&prompts.num_tokens) {
                let tokens = tokenizer.encode(prompt).unwrap_or_else(|err| panic!("{err}"));
                assert_eq!(tokens.prompt_tokens, total, "token count of {prompt:?}");
                assert_eq!(
                    tokens.used_tokens(),
                    total.min(len),
                    "tokens used by {prompt:?} at L={len}"
                );
                match &tokens.cut {
                    None => {
                        assert!(total <= len, "{prompt:?} has {total} tokens but nothing was cut")
                    }
                    Some(cut) => {
                        assert_eq!(
                            cut.tokens,
                            total - len,
                            "tokens cut from {prompt:?} at L={len}"
                        );
                        assert!(!cut.text.is_empty(), "the cut text of {prompt:?} is empty");
                        assert!(
                            prompt.trim_end().ends_with(&cut.text),
                            "{:?} ends {prompt:?}",
                            cut.text
                        );
                    }
                }
            }
        }
    }

    // Known cases of the in-repo prompts: the 17-token caption loses its last word at L=16.
    let t5_dir = golden_dirs()[0].join("t5");
    let tokenizer = PromptTokenizer::from_file(t5_dir.join("tokenizer.json"), 16).expect("loads");
    let cut = tokenizer.encode("a painting of a blue horse in the park").expect("encodes").cut;
    assert_eq!(cut.map(|c| (c.tokens, c.text)), Some((1, "park".to_string())));
    let cut = tokenizer.encode("a <b>bold</b> sign: x < y").expect("encodes").cut;
    assert_eq!(cut.map(|c| (c.tokens, c.text)), Some((5, "x < y".to_string())));
    let empty = tokenizer.encode("").expect("encodes");
    assert_eq!((empty.ids[0], empty.mask[0], empty.used_tokens()), (1, 1, 1), "\"\" is [</s>]");
}

// ---------------------------------------------------------------------------------------------
// T5 encoder

#[test]
fn t5_relative_position_buckets_match_the_reference_table() {
    for dir in golden_dirs() {
        let Some(t5_dir) = part(&dir, "t5") else { continue };
        let reference = Reference::open(&t5_dir, "buckets");
        let encoder = T5Encoder::load_dir(&t5_dir, &cpu()).unwrap_or_else(|err| panic!("{err}"));
        let config = encoder.config();
        let table = reference.i64s("relative_position_bucket");
        let max = (table.len() / 2) as i64;
        for (index, &expected) in table.iter().enumerate() {
            let relative = index as i64 - max;
            let ours = relative_position_bucket(
                relative,
                true,
                config.relative_attention_num_buckets,
                config.relative_attention_max_distance,
            );
            assert_eq!(ours as i64, expected, "bucket of relative position {relative}");
        }
    }
}

fn check_t5(t5_dir: &Path, device: &Device, label: &str) {
    let encoder = T5Encoder::load_dir(t5_dir, device).unwrap_or_else(|err| panic!("{err}"));
    let mut reference = Reference::open(t5_dir, label);
    reference.compared.insert("relative_position_bucket".to_string());

    for len in text_lengths(&reference) {
        let (ids, mask) = reference_tokens(&mut reference, len, device);
        let mut stages = Vec::new();
        let masked = encoder
            .forward_observed(ids, mask, &mut |stage, tensor| stages.push((stage, tensor.clone())));
        reference.compare(&format!("L{len}.last_hidden_state_masked"), masked);

        for (stage, tensor) in stages {
            let name = match stage {
                T5Stage::InputsEmbeds => format!("L{len}.debug.inputs_embeds"),
                T5Stage::AfterAttention(block) => {
                    format!("L{len}.debug.block{block}.after_attention")
                }
                T5Stage::BlockOutput(block) => format!("L{len}.debug.block{block}.output"),
                T5Stage::LastHiddenState => format!("L{len}.last_hidden_state"),
            };
            if reference.has(&name) {
                reference.compare(&name, tensor);
            }
        }
        let bias_name = format!("L{len}.debug.position_bias");
        if reference.has(&bias_name) {
            reference.compare(&bias_name, encoder.position_bias(len));
        }
    }
    reference.finish();
}

#[test]
fn t5_matches_the_reference_on_cpu() {
    for dir in golden_dirs() {
        if let Some(t5_dir) = part(&dir, "t5") {
            check_t5(&t5_dir, &cpu(), "t5 cpu");
        }
    }
}

#[test]
fn t5_matches_the_reference_on_wgpu() {
    let Some(device) = wgpu("t5_matches_the_reference_on_wgpu") else { return };
    for dir in golden_dirs() {
        if let Some(t5_dir) = part(&dir, "t5") {
            check_t5(&t5_dir, &device, "t5 wgpu");
        }
    }
}

/// The comparison can fail: the exact GELU instead of transformers' `gelu_new` moves the output
/// by about 8e-4 (golden-hf README, cross-check), far past the tolerance.
#[test]
fn t5_with_the_erf_gelu_fails_the_comparison() {
    let t5_dir = golden_dirs()[0].join("t5");
    let device = cpu();
    let mut encoder = T5Encoder::load_dir(&t5_dir, &device).unwrap_or_else(|err| panic!("{err}"));
    for block in &mut encoder.blocks {
        block.feed_forward.activation = Activation::Gelu;
    }

    let mut reference = Reference::open(&t5_dir, "control, expected to FAIL: t5 with erf GELU");
    let (ids, mask) = reference_tokens(&mut reference, 16, &device);
    let error = reference.compare("L16.last_hidden_state_masked", encoder.forward(ids, mask));
    assert!(!reference.failures.is_empty(), "the erf GELU passed with max error {error:.3e}");
}

/// The hub layout: an encoder-decoder checkpoint in two shards with an index that lists
/// aliases no shard holds, plus the tokenizer; prompt strings in, masked states out.
#[test]
fn t5_from_sharded_hub_folder_matches_the_reference() {
    for dir in golden_dirs() {
        let Some(t5_dir) = part(&dir, "t5") else { continue };
        let hub_dir = t5_dir.join("hub_layout");
        if !hub_dir.is_dir() {
            println!("{t5_dir:?} has no hub_layout/; skipping it there");
            continue;
        }
        let mut reference = Reference::open(&t5_dir, "t5 hub_layout cpu");
        let prompts = prompts(&t5_dir);
        let texts: Vec<&str> = prompts.texts.iter().map(String::as_str).collect();
        for len in text_lengths(&reference) {
            let text =
                TextEncoder::load_dir(&hub_dir, len, &cpu()).unwrap_or_else(|err| panic!("{err}"));
            let (states, tokens) = text.encode(&texts).unwrap_or_else(|err| panic!("{err}"));
            let used: Vec<usize> = tokens.iter().map(|t| t.used_tokens()).collect();
            let expected: Vec<usize> = prompts.num_tokens.iter().map(|&n| n.min(len)).collect();
            assert_eq!(used, expected, "tokens used at L={len}");
            reference.compare(&format!("L{len}.last_hidden_state_masked"), states);
        }
        assert!(reference.failures.is_empty(), "mismatches: {:?}", reference.failures);
    }
}

// ---------------------------------------------------------------------------------------------
// Autoencoder

fn check_vae(vae_dir: &Path, device: &Device, label: &str) {
    let vae = AutoencoderKl::load_dir(vae_dir, device).unwrap_or_else(|err| panic!("{err}"));
    let mut reference = Reference::open(vae_dir, label);

    // Encode, with the reference's noise draw for the posterior sample.
    let image: Tensor<4> = reference.input("image", device);
    let eps: Tensor<4> = reference.input("encode.eps", device);
    let mut stages = Vec::new();
    let posterior =
        vae.encode_observed(image.clone(), &mut |stage, t| stages.push((stage, t.clone())));
    reference.compare("encode.mean", posterior.mean.clone());
    reference.compare("encode.logvar", posterior.logvar.clone());
    reference.compare("encode.std", posterior.std());
    let sample = posterior.sample(eps);
    reference.compare("encode.sample", sample.clone());
    reference.compare("encode.latent_scaled", vae.to_flow(sample));
    reference.compare("encode.mode_scaled", vae.to_flow(posterior.mode()));

    // Decode a flow-space latent.
    let latent_scaled: Tensor<4> = reference.input("decode.latent_scaled", device);
    let latent = vae.from_flow(latent_scaled);
    reference.compare("decode.latent", latent.clone());
    let decoded = vae.decode_observed(latent, &mut |stage, t| stages.push((stage, t.clone())));
    reference.compare("decode.sample", decoded);
    reference.compare("forward.sample", vae.forward(image));

    for (stage, tensor) in stages {
        let name = match stage {
            VaeStage::QuantConv => "encode.moments".to_string(),
            other => format!("debug.{other}"),
        };
        reference.compare(&name, tensor);
    }

    // The posterior's clamps on a probe that crosses both log-variance limits.
    let moments: Tensor<4> = reference.input("dist_probe.moments", device);
    let probe = LatentDistribution::from_moments(moments);
    reference.compare("dist_probe.mean", probe.mean.clone());
    reference.compare("dist_probe.logvar", probe.logvar.clone());
    reference.compare("dist_probe.std", probe.std());
    reference.compare("dist_probe.var", probe.var());

    for input in VAE_INPUTS {
        assert!(reference.compared.contains(input), "{input} was used");
    }
    reference.finish();
}

#[test]
fn vae_matches_the_reference_on_cpu() {
    for dir in golden_dirs() {
        if let Some(vae_dir) = part(&dir, "vae") {
            check_vae(&vae_dir, &cpu(), "vae cpu");
        }
    }
}

#[test]
fn vae_matches_the_reference_on_wgpu() {
    let Some(device) = wgpu("vae_matches_the_reference_on_wgpu") else { return };
    for dir in golden_dirs() {
        if let Some(vae_dir) = part(&dir, "vae") {
            check_vae(&vae_dir, &device, "vae wgpu");
        }
    }
}

/// sd-vae-ft-ema's layout: 0.4-era config (no scaling_factor) and the old attention names.
#[test]
fn vae_with_old_attention_names_and_config_matches_the_reference() {
    for dir in golden_dirs() {
        let Some(vae_dir) = part(&dir, "vae") else { continue };
        let hub_dir = vae_dir.join("hub_layout");
        if !hub_dir.is_dir() {
            println!("{vae_dir:?} has no hub_layout/; skipping it there");
            continue;
        }
        let device = cpu();
        let vae = AutoencoderKl::load_dir(&hub_dir, &device).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(vae.scaling_factor(), 0.18215, "diffusers' default scaling factor applies");

        let mut reference = Reference::open(&vae_dir, "vae hub_layout cpu");
        let image: Tensor<4> = reference.input("image", &device);
        reference.compare("encode.mean", vae.encode(image).mean);
        let latent_scaled: Tensor<4> = reference.input("decode.latent_scaled", &device);
        reference.compare("decode.sample", vae.decode_from_flow(latent_scaled));
        assert!(reference.failures.is_empty(), "mismatches: {:?}", reference.failures);
    }
}

// ---------------------------------------------------------------------------------------------
// Preview decode

#[test]
fn preview_fit_recovers_a_known_linear_map() {
    let device = cpu();
    let [batch, channels, height, width, factor] = [2, 4, 5, 6, 8];
    let truth = LatentPreview {
        weights: vec![[0.5, -0.2, 0.1], [0.3, 0.4, -0.6], [-0.1, 0.2, 0.9], [0.7, 0.0, -0.3]],
        bias: [0.05, -0.1, 0.2],
    };

    // A latent with varied channels, and the image the map paints from it, 8x upscaled.
    let values: Vec<f32> = (0..batch * channels * height * width)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 2.0 + ((i * i) % 7) as f32 * 0.1)
        .collect();
    let latent =
        Tensor::<4>::from_data(TensorData::new(values, [batch, channels, height, width]), &device);
    let rgb = truth.rgb(latent.clone()); // [batch, 3, height, width]
    let image = rgb
        .reshape([batch, 3, height, 1, width, 1])
        .repeat_dim(3, factor)
        .repeat_dim(5, factor)
        .reshape([batch, 3, height * factor, width * factor]);

    let fitted = LatentPreview::fit(latent, image).unwrap_or_else(|err| panic!("{err}"));
    for (c, (ours, expected)) in fitted.weights.iter().zip(&truth.weights).enumerate() {
        for k in 0..3 {
            let diff = (ours[k] - expected[k]).abs();
            assert!(
                diff < PREVIEW_FIT_TOLERANCE,
                "weight [{c}][{k}]: ours {}, truth {}",
                ours[k],
                expected[k]
            );
        }
    }
    for k in 0..3 {
        let diff = (fitted.bias[k] - truth.bias[k]).abs();
        assert!(
            diff < PREVIEW_FIT_TOLERANCE,
            "bias [{k}]: ours {}, truth {}",
            fitted.bias[k],
            truth.bias[k]
        );
    }
}

#[test]
fn preview_of_a_latent_is_the_per_channel_map_at_latent_size() {
    let device = cpu();
    let mut reference = Reference::open(&golden_dirs()[0].join("vae"), "preview");
    let latent: Tensor<4> = reference.input("decode.latent_scaled", &device);
    let [batch, channels, height, width] = latent.dims();
    let values = latent.clone().try_into_vec_as::<f32>().expect("reads back");
    let map = LatentPreview::sd_kl_f8();

    let rgb = map.rgb(latent);
    assert_eq!(rgb.dims(), [batch, 3, height, width]);
    let rgb = rgb.try_into_vec_as::<f32>().expect("reads back");
    let (y, x) = (height - 1, width / 2);
    for k in 0..3 {
        let expected: f32 = (0..channels)
            .map(|c| values[(c * height + y) * width + x] * map.weights[c][k])
            .sum::<f32>()
            + map.bias[k];
        let ours = rgb[(k * height + y) * width + x];
        assert!(
            (ours - expected).abs() < 1e-6,
            "channel {k} at ({y}, {x}): ours {ours}, expected {expected}"
        );
    }
}
