//! The whole text-to-image path on a tiny fixture built here in the real formats and layout:
//! a random STARFlow (safetensors + flow.json or the official flow.yaml), the tiny T5 and the
//! tiny AutoencoderKL of tests/golden-hf, through `generate --model DIR`.

use std::path::Path;
use std::process::Command;

use burn::tensor::Device;
use starflow_studio::checkpoint::write_safetensors;
use starflow_studio::image_out::read_png;
use starflow_studio::metadata::GenerationRecord;
use starflow_studio::model::{Flow, FlowConfig};
use starflow_studio::pipeline::{Pipeline, PipelineError};

const HF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden-hf");

fn flow_config() -> FlowConfig {
    FlowConfig {
        default_guidance: 2.0,
        ..FlowConfig::released_flags_at((4, 4, 4), 48, 24, vec![1, 1, 2], (16, 32))
    }
}

fn copy(from: &str, to: &Path, names: &[&str]) {
    std::fs::create_dir_all(to).expect("mkdir");
    for name in names {
        std::fs::copy(Path::new(HF).join(from).join(name), to.join(name)).expect("copies fixture");
    }
}

fn build_folder(dir: &Path, config: &FlowConfig, json: bool) {
    let (_, tensors) = Flow::random(config, 8, &Device::flex());
    write_safetensors(&dir.join("flow.safetensors"), &tensors).expect("writes");
    if json {
        std::fs::write(dir.join("flow.json"), serde_json::to_string(config).expect("json"))
            .expect("writes");
    }
    copy("t5", &dir.join("text_encoder"), &["config.json", "model.safetensors", "tokenizer.json"]);
    copy("vae", &dir.join("vae"), &["config.json", "diffusion_pytorch_model.safetensors"]);
}

fn generate(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starflow-studio"))
        .args(["generate", "--backend", "cpu", "--prompt", "two red circles on a blue background"])
        .args(extra)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .output()
        .expect("runs")
}

#[test]
fn prompt_to_png_through_t5_flow_denoise_and_vae() {
    let dir = tempfile::tempdir().expect("temp dir");
    build_folder(dir.path(), &flow_config(), true);
    let out = dir.path().join("out.png");
    let layers = dir.path().join("layers");
    let layers_arg = layers.to_str().expect("temp paths are UTF-8");
    let output = generate(dir.path(), &out, &["--seed", "3", "--layers-out", layers_arg]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let layer_count = std::fs::read_dir(&layers).expect("layers written").count();
    assert_eq!(layer_count, 3 + 2, "noise, three blocks, denoised");
    let (image, text) = read_png(&std::fs::read(&out).expect("png")).expect("decodes");
    assert_eq!((image.width, image.height), (32, 32), "4x4 latent times the VAE's factor 8");
    let record = GenerationRecord::from_png_text(&text).expect("record");
    assert_eq!(record.prompt, "two red circles on a blue background");
    assert_eq!(record.guidance, 2.0);
}

#[test]
fn official_yaml_config_is_read_with_the_companions_shapes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = flow_config();
    build_folder(dir.path(), &config, false);
    let yaml = "arguments:\n- img_size: 32\n- txt_size: 16\n- channel_size: 4\n- patch_size: 1\n\
                - channels: 48\n- head_dim: 24\n- blocks: 3\n- layers_per_block: 1 1 2\n- noise_std: 0.3\n\
                - rope: 1\n- sos: 1\n- seq_order: L2R\n- use_softplus: 1\n- cond_top_only: 1\n\
                - use_final_norm: 1\n- soft_clip: 4\n";
    std::fs::write(dir.path().join("flow.yaml"), yaml).expect("writes");
    let pipeline = Pipeline::load(dir.path(), &Device::flex()).expect("loads from flow.yaml");
    let loaded = pipeline.config();
    assert_eq!((loaded.latent_height, loaded.text_dim, loaded.text_len), (4, 32, 16));
    assert_eq!(loaded.layers_per_block, config.layers_per_block);
    let tokens = pipeline.tokenize("a red circle").expect("has a tokenizer").expect("tokenizes");
    assert!(tokens.used_tokens() > 1 && tokens.cut.is_none());
    let out = dir.path().join("yaml.png");
    let output = generate(dir.path(), &out, &["--sampler", "jacobi", "--denoise", "none"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn broken_folders_say_what_is_wrong() {
    let device = Device::flex();
    let dir = tempfile::tempdir().expect("temp dir");
    build_folder(dir.path(), &flow_config(), true);

    // Wrong text width: the flow expects 30-wide text vectors, the T5 gives 32.
    let mut other = flow_config();
    other.text_dim = 30;
    std::fs::write(dir.path().join("flow.json"), serde_json::to_string(&other).expect("json"))
        .expect("writes");
    let (_, tensors) = Flow::random(&other, 8, &device);
    write_safetensors(&dir.path().join("flow.safetensors"), &tensors).expect("writes");
    let err = Pipeline::load(dir.path(), &device).err().expect("refused");
    assert!(matches!(err, PipelineError::TextWidth { expected: 30, found: 32, .. }), "{err}");

    // No text encoder.
    let dir = tempfile::tempdir().expect("temp dir");
    build_folder(dir.path(), &flow_config(), true);
    std::fs::remove_dir_all(dir.path().join("text_encoder")).expect("rm");
    let err = Pipeline::load(dir.path(), &device).err().expect("refused");
    assert!(matches!(err, PipelineError::NoTextEncoder { .. }), "{err}");

    // The autoencoder's folder in the text encoder's place.
    copy(
        "vae",
        &dir.path().join("text_encoder"),
        &["config.json", "diffusion_pytorch_model.safetensors"],
    );
    let err = Pipeline::load(dir.path(), &device).err().expect("refused");
    assert!(err.to_string().contains("text_encoder"), "{err}");

    // A truncated autoencoder weights file.
    let dir = tempfile::tempdir().expect("temp dir");
    build_folder(dir.path(), &flow_config(), true);
    let vae = dir.path().join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&vae).expect("reads");
    std::fs::write(&vae, &bytes[..bytes.len() / 3]).expect("writes");
    let err = Pipeline::load(dir.path(), &device).err().expect("refused");
    assert!(err.to_string().contains("diffusion_pytorch_model.safetensors"), "{err}");

    // A missing tensor in the flow.
    let dir = tempfile::tempdir().expect("temp dir");
    build_folder(dir.path(), &flow_config(), true);
    let (_, mut tensors) = Flow::random(&flow_config(), 8, &device);
    tensors.retain(|t| t.key != "blocks.2.proj_txt.weight");
    write_safetensors(&dir.path().join("flow.safetensors"), &tensors).expect("writes");
    let err = Pipeline::load(dir.path(), &device).err().expect("refused");
    assert!(err.to_string().contains("blocks.2.proj_txt.weight"), "{err}");
}
