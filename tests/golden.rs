//! Conformance against the official PyTorch code: every config folder under tests/golden (an
//! unchanged copy of ../shared/golden) and under each folder in STARFLOW_GOLDEN_DIR. Forward,
//! sampling (sequential, Jacobi, each guidance) and denoising tensors are compared with the
//! float64 twins, on the CPU backend and on burn-wgpu when an adapter exists.

mod common;

use std::path::Path;

use burn::tensor::{Device, Tensor};
use common::{GoldenCheck, golden_config_dirs, read_json, wgpu_device_or_skip};
use starflow_studio::checkpoint::TensorFile;
use starflow_studio::model::block::Trace;
use starflow_studio::model::{
    Condition, Flow, FlowConfig, Guidance, GuidanceRule, NoObserver, Sampler,
};

struct Fixture {
    dir: std::path::PathBuf,
    meta: serde_json::Value,
    flow: Flow,
    tarflow: bool,
}

fn load(dir: &Path, device: &Device) -> Fixture {
    let meta = read_json(&dir.join("config.json"));
    let tarflow = meta["family"] == "tarflow";
    let mut config = FlowConfig::from_official_kwargs(&meta["constructor_kwargs"], tarflow)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"));
    if let Some(std) = meta["noise_std"].as_f64() {
        config.noise_std = std as f32;
    }
    let weights =
        TensorFile::open(dir.join("weights.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let flow = Flow::load(&config, &weights, device).unwrap_or_else(|e| panic!("{e}"));
    Fixture { dir: dir.to_path_buf(), meta, flow, tarflow }
}

fn labels(meta: &serde_json::Value) -> Vec<Option<usize>> {
    let list = meta["labels"].as_array().or_else(|| meta["class"]["labels"].as_array());
    list.expect("class configs list their labels")
        .iter()
        .map(|v| Some(v.as_u64().expect("labels are whole numbers") as usize))
        .collect()
}

fn check_forward(fx: &Fixture, device: &Device, label: &str) {
    let mut check = GoldenCheck::new(&fx.dir, label);
    let x: Tensor<4> = check.input("forward", "x", device);
    let blocks = fx.flow.blocks.len();
    if fx.tarflow {
        let condition = Condition::Labels(labels(&fx.meta));
        let mut trace = Trace::default();
        let out = fx.flow.forward_traced(x.clone(), &condition, Some(&mut trace));
        check.compare("forward", "z", out.outputs.last().expect("outputs"));
        for i in 0..blocks {
            check.compare("forward", &format!("outputs.{i}"), &out.outputs[i + 1]);
            check.compare(
                "forward",
                &format!("block_logdet.{i}"),
                &out.logdets[i].clone().mean_dims(&[1, 2]),
            );
        }
        let per_block: Vec<Tensor<3>> =
            out.logdets.iter().map(|l| l.clone().mean_dims(&[1, 2])).collect();
        let total = per_block.into_iter().reduce(|a, b| a + b).expect("blocks");
        check.compare("forward", "logdets", &total);
        check.compare("forward", "loss", &out.loss());
        for (name, (_, values)) in &trace.tensors {
            if check.has("forward", name) {
                check.compare_values("forward", name, values);
            }
        }
        let uncond = fx.flow.forward(x, &Condition::Labels(vec![None; 2]));
        check.compare("forward", "uncond.z", uncond.outputs.last().expect("outputs"));
        let per_block: Vec<Tensor<3>> =
            uncond.logdets.iter().map(|l| l.clone().mean_dims(&[1, 2])).collect();
        check.compare(
            "forward",
            "uncond.logdets",
            &per_block.into_iter().reduce(|a, b| a + b).expect("blocks"),
        );
    } else {
        let condition = Condition::Text(check.input("forward", "y", device));
        let mut trace = Trace::default();
        let out = fx.flow.forward_traced(x, &condition, Some(&mut trace));
        check.compare("forward", "z", &out.z);
        for k in 0..=blocks {
            check.compare("forward", &format!("outputs.{k}"), &out.outputs[k]);
        }
        for i in 0..blocks {
            check.compare("forward", &format!("logdets.{i}"), &out.logdets[i]);
        }
        check.compare("forward", "logdet_total", &out.logdet_total());
        check.compare("forward", "loss", &out.loss());
        check.compare("forward", "y_out", out.text_out.as_ref().expect("the deep block has text"));
        let mut traced = 0;
        for (name, (_, values)) in &trace.tensors {
            if check.has("forward", name) {
                check.compare_values("forward", name, values);
                traced += 1;
            }
        }
        assert!(traced > 5 * blocks, "only {traced} debug tensors matched names in the reference");
    }
    check.finish();
}

/// `(kind, tag, sampler, guidance)` for every sampling run the config recorded.
fn sampling_runs(fx: &Fixture) -> Vec<(String, String, Sampler, Guidance)> {
    let sampling = &fx.meta["sampling"];
    let mut runs = Vec::new();
    if fx.tarflow {
        for run in sampling.as_array().expect("TARFlow lists its runs") {
            let guidance = Guidance {
                weight: run["guidance"].as_f64().expect("weight") as f32,
                rule: GuidanceRule::Linear,
                annealed: run["annealed_guidance"].as_bool().unwrap_or(false),
                null_attention_temperature: run["attn_temp"].as_f64().unwrap_or(1.0) as f32,
            };
            let tag = run["tag"].as_str().expect("tag").to_string();
            runs.push((String::new(), tag, Sampler::Sequential, guidance));
        }
        return runs;
    }
    let tags = sampling["guidance_tags"].as_object().expect("guidance tags");
    for (tag, weight) in tags {
        let guidance =
            Guidance::new(weight.as_f64().expect("weight") as f32, GuidanceRule::Gaussian);
        runs.push(("seq".into(), tag.clone(), Sampler::Sequential, guidance));
        for kind in ["jacobi", "jacobi_fixed"] {
            let settings = &sampling[kind];
            if settings.is_null() {
                continue;
            }
            let sampler = Sampler::Jacobi {
                chunk: settings["jacobi_block_size"].as_u64().expect("block size") as usize,
                threshold: settings["jacobi_th"].as_f64().expect("threshold") as f32,
                max_iterations: settings["jacobi_max_iter"].as_u64().expect("max iter") as usize,
            };
            runs.push((kind.into(), tag.clone(), sampler, guidance));
        }
    }
    runs
}

fn check_sample(fx: &Fixture, device: &Device, label: &str) {
    let mut check = GoldenCheck::new(&fx.dir, label);
    let blocks = fx.flow.blocks.len();
    let (noise, condition, null): (Tensor<4>, Condition, Condition) = if fx.tarflow {
        (
            check.input("sample", "noise_nchw", device),
            Condition::Labels(labels(&fx.meta)),
            Condition::Labels(vec![None; 2]),
        )
    } else {
        (
            check.input("sample", "noise", device),
            Condition::Text(check.input("sample", "y_cond", device)),
            Condition::Text(check.input("sample", "y_null", device)),
        )
    };
    for (kind, tag, sampler, guidance) in sampling_runs(fx) {
        let out = fx
            .flow
            .sample(noise.clone(), &condition, Some(&null), &guidance, sampler, &mut NoObserver)
            .unwrap_or_else(|e| panic!("{label} {kind}.{tag}: {e}"));
        let prefix = if kind.is_empty() { tag.clone() } else { format!("{kind}.{tag}") };
        for k in 1..=blocks {
            check.compare("sample", &format!("{prefix}.{k}"), &out.latents[k]);
        }
        check.compare("sample", &format!("{prefix}.result"), out.result());
        if kind.starts_with("jacobi") {
            let expected: Vec<usize> = fx.meta["sampling"]["jacobi_iters_per_chunk_f32"][&prefix]
                .as_array()
                .expect("iteration counts are recorded")
                .iter()
                .map(|v| v.as_u64().expect("count") as usize)
                .collect();
            assert_eq!(
                out.jacobi_iterations, expected,
                "{label} {prefix}: Jacobi iterations per chunk"
            );
        }
    }
    check.finish();
}

fn check_denoise(fx: &Fixture, device: &Device, label: &str) {
    let mut check = GoldenCheck::new(&fx.dir, label);
    let sigma = fx.flow.config.noise_std as f64;
    let condition = if fx.tarflow {
        Condition::Labels(labels(&fx.meta))
    } else {
        Condition::Text(check.input("denoise", "y", device))
    };
    let tags: Vec<String> = if fx.tarflow {
        sampling_runs(fx).into_iter().map(|(_, tag, _, _)| tag).collect()
    } else {
        fx.meta["sampling"]["guidance_tags"].as_object().expect("tags").keys().cloned().collect()
    };
    for tag in tags {
        let input: Tensor<4> = check.input("denoise", &format!("{tag}.input"), device);
        let score = fx.flow.denoise_score(input.clone(), &condition, sigma);
        let name = if fx.tarflow { format!("{tag}.output") } else { format!("{tag}.score_output") };
        check.compare("denoise", &name, &score);
        if check.has("denoise", &format!("{tag}.learned_raw")) {
            let raw = fx
                .flow
                .learned_denoiser_raw(input.clone(), &condition)
                .expect("model has a denoiser");
            check.compare("denoise", &format!("{tag}.learned_raw"), &raw);
            let out = fx.flow.denoise_learned(input, &condition).expect("model has a denoiser");
            check.compare("denoise", &format!("{tag}.learned_output"), &out);
        }
    }
    check.finish();
}

fn for_each_config(device: &Device, label: &str, check: fn(&Fixture, &Device, &str)) {
    let dirs = golden_config_dirs("tests/golden", "STARFLOW_GOLDEN_DIR");
    assert!(dirs.len() >= 4, "expected the four golden configs, found {dirs:?}");
    for dir in dirs {
        let fixture = load(&dir, device);
        check(&fixture, device, label);
    }
}

#[test]
fn forward_matches_reference_on_cpu() {
    for_each_config(&Device::flex(), "cpu", check_forward);
}

#[test]
fn sampling_matches_reference_on_cpu() {
    for_each_config(&Device::flex(), "cpu", check_sample);
}

#[test]
fn denoising_matches_reference_on_cpu() {
    for_each_config(&Device::flex(), "cpu", check_denoise);
}

#[test]
fn forward_matches_reference_on_wgpu() {
    if let Some(device) = wgpu_device_or_skip("forward_matches_reference_on_wgpu") {
        for_each_config(&device, "wgpu", check_forward);
    }
}

#[test]
fn sampling_matches_reference_on_wgpu() {
    if let Some(device) = wgpu_device_or_skip("sampling_matches_reference_on_wgpu") {
        for_each_config(&device, "wgpu", check_sample);
    }
}

#[test]
fn denoising_matches_reference_on_wgpu() {
    if let Some(device) = wgpu_device_or_skip("denoising_matches_reference_on_wgpu") {
        for_each_config(&device, "wgpu", check_denoise);
    }
}
