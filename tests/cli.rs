//! The `generate` command on a real model folder built here (a tiny random pixel-space flow
//! saved as safetensors with flow.json), run as a user runs it.

use std::path::Path;
use std::process::Command;

use burn::tensor::Device;
use starflow_studio::app::fixture::{tiny_config, write_model_folder};
use starflow_studio::checkpoint::{NamedTensor, write_safetensors};
use starflow_studio::image_out::read_png;
use starflow_studio::metadata::GenerationRecord;
use starflow_studio::model::FlowConfig;

/// The app fixture's tiny class-conditional pixel flow, non-square (8 x 6).
fn pixel_config() -> FlowConfig {
    FlowConfig { latent_width: 6, ..tiny_config(8) }
}

fn model_folder(dir: &Path, config: &FlowConfig) {
    write_model_folder(dir, config, 4).expect("writes the model folder");
}

fn studio() -> Command {
    Command::new(env!("CARGO_BIN_EXE_starflow-studio"))
}

#[test]
fn generate_writes_a_png_with_parameters_and_layer_images() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model");
    std::fs::create_dir(&model).expect("mkdir");
    let config = pixel_config();
    model_folder(&model, &config);
    let out = dir.path().join("out.png");
    let layers = dir.path().join("layers");
    let status = studio()
        .args([
            "generate",
            "--backend",
            "cpu",
            "--seed",
            "7",
            "--class",
            "2",
            "--sampler",
            "jacobi",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .arg("--layers-out")
        .arg(&layers)
        .output()
        .expect("runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    let (image, text) = read_png(&std::fs::read(&out).expect("png written")).expect("decodes");
    assert_eq!((image.width, image.height), (6, 8));
    let distinct: std::collections::BTreeSet<u8> = image.pixels.iter().copied().collect();
    assert!(distinct.len() > 10, "the image is not flat: {} levels", distinct.len());
    let record = GenerationRecord::from_png_text(&text).expect("our JSON chunk");
    assert_eq!((record.seed, record.class, record.guidance), (7, Some(2), 1.0));
    let parameters = &text.iter().find(|(k, _)| k == "parameters").expect("A1111 chunk").1;
    assert!(parameters.contains("Seed: 7") && parameters.contains("CFG scale: 2"), "{parameters}");

    let mut names: Vec<String> = std::fs::read_dir(&layers)
        .expect("layers folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), config.num_blocks() + 2, "noise, each block, denoised: {names:?}");

    // The same seed gives the same image; a saved noise tensor equal to the seeded draw too.
    let again = dir.path().join("again.png");
    let noise_file = dir.path().join("noise.safetensors");
    let noise = starflow_studio::model::noise::standard_normal([1, 3, 8, 6], 7, &Device::flex());
    let values = noise.try_into_vec_as::<f32>().expect("reads");
    write_safetensors(
        &noise_file,
        &[NamedTensor { key: "noise".into(), shape: vec![1, 3, 8, 6], values }],
    )
    .expect("writes");
    let status = studio()
        .args([
            "generate",
            "--backend",
            "cpu",
            "--seed",
            "7",
            "--class",
            "2",
            "--sampler",
            "jacobi",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&again)
        .arg("--noise")
        .arg(&noise_file)
        .output()
        .expect("runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let (second, _) = read_png(&std::fs::read(&again).expect("png")).expect("decodes");
    assert_eq!(second.pixels, image.pixels);
}

#[test]
fn generate_explains_bad_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let output = studio()
        .args(["generate", "--backend", "cpu"])
        .arg("--model")
        .arg(&empty)
        .arg("--out")
        .arg(dir.path().join("x.png"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no flow weights"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let model = dir.path().join("model");
    std::fs::create_dir(&model).expect("mkdir");
    model_folder(&model, &pixel_config());
    let output = studio()
        .args(["generate", "--backend", "cpu", "--class", "9"])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(dir.path().join("x.png"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("class 9 does not exist"), "{stderr}");

    let output = studio()
        .args(["generate", "--backend", "cpu"])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(dir.path().join("no/such/folder/x.png"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("could not write"), "{stderr}");
}
