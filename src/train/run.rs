//! `run_training`: the stages in order, snapshots and resuming, and the final model folder.
//!
//! The checkpoint folder holds `state.json` (the options' fingerprint, the finished step of
//! each stage, the measured scale factor and PSNR, the loss history) and one snapshot folder
//! per stage (`autoencoder-NNNNNN/`, `joint-NNNNNN/`, `decoder-NNNNNN/`: weights under official keys and the
//! optimizer's burnpack). A snapshot is complete before `state.json` names it (written by
//! rename), so a run killed at any moment resumes from a consistent step.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use burn_optim::grad_clipping::GradientClippingConfig;
use burn_optim::{AdamWConfig, ModuleOptimizer};
use serde::{Deserialize, Serialize};

use super::batch::learning_rate;
use super::eval::write_sample_grid;
use super::joint::{JointStep, LatentCache, build_text_flow, joint_step};
use super::params::stable_hash;
use super::tokenizer::train_tokenizer;
use super::vae::{
    VaeStep, build_autoencoder, decoder_step, held_out_psnr, measure_scaling_factor, vae_step,
};
use super::{LossPoint, Stage, TrainError, TrainEvent, TrainOptions, TrainReport};
use crate::autoencoder::AutoencoderKl;
use crate::checkpoint::{NamedTensor, TensorFile, write_safetensors};
use crate::data::shapes::IMAGE_SIZE;
use crate::text::PromptTokenizer;

const STATE_FILE: &str = "state.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
/// The finished autoencoder in diffusers layout, inside the checkpoint folder.
const AUTOENCODER_DIR: &str = "vae";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const VAE_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// The run's progress, persisted in `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct RunState {
    fingerprint: String,
    autoencoder_steps_done: usize,
    autoencoder_snapshot: Option<String>,
    /// Set once the autoencoder stage is finished and measured.
    scaling_factor: Option<f64>,
    autoencoder_psnr_db: Option<f64>,
    joint_steps_done: usize,
    joint_snapshot: Option<String>,
    #[serde(default)]
    decoder_steps_done: usize,
    #[serde(default)]
    decoder_snapshot: Option<String>,
    /// Set once the decoder stage is finished, its weights written into `vae/`, and measured.
    #[serde(default)]
    decoder_psnr_db: Option<f64>,
    history: Vec<LossPoint>,
}

impl RunState {
    /// The finished-steps count and snapshot name that `state.json` keeps for `stage`.
    fn progress_of(&mut self, stage: Stage) -> (&mut usize, &mut Option<String>) {
        match stage {
            Stage::Autoencoder => {
                (&mut self.autoencoder_steps_done, &mut self.autoencoder_snapshot)
            }
            Stage::Decoder => (&mut self.decoder_steps_done, &mut self.decoder_snapshot),
            Stage::Joint => (&mut self.joint_steps_done, &mut self.joint_snapshot),
        }
    }

    /// Writes `stage`'s snapshot after `done` steps, names it in `state.json` (in `dir`), drops
    /// the previous one and reports it.
    fn save_snapshot(
        &mut self,
        dir: &Path,
        stage: Stage,
        done: usize,
        weights: &[(&str, Vec<NamedTensor>)],
        optim: &ModuleOptimizer,
        progress: &mut dyn FnMut(&TrainEvent) -> ControlFlow<()>,
    ) -> Result<(), TrainError> {
        let prefix = match stage {
            Stage::Autoencoder => "autoencoder",
            Stage::Decoder => "decoder",
            Stage::Joint => "joint",
        };
        let name = format!("{prefix}-{done:06}");
        let folder = write_snapshot(dir, &name, weights, optim)?;
        let (steps_done, snapshot) = self.progress_of(stage);
        let old = snapshot.replace(name.clone());
        *steps_done = done;
        write_json(&dir.join(STATE_FILE), &*self)?;
        remove_old_snapshot(dir, old.as_deref(), &name);
        let _ = progress(&TrainEvent::Checkpoint { stage, step: done, path: folder });
        Ok(())
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TrainError + 'a {
    move |error| TrainError::Io { action, path: path.to_path_buf(), error }
}

/// A fingerprint of everything that decides the result (not where it is written).
fn fingerprint(options: &TrainOptions) -> String {
    let mut decisive = options.clone();
    decisive.model_dir = PathBuf::new();
    decisive.checkpoint_dir = PathBuf::new();
    decisive.checkpoint_every = 0;
    decisive.grid_prompts = 0;
    let text = serde_json::to_string(&decisive).expect("the options serialize to JSON");
    format!("{:016x}", stable_hash(&text))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).expect("our configs serialize to JSON");
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, text).map_err(io("write", &partial))?;
    std::fs::rename(&partial, path).map_err(io("write", path))
}

fn load_state(dir: &Path, fingerprint: &str) -> Result<RunState, TrainError> {
    let path = dir.join(STATE_FILE);
    if !path.is_file() {
        return Ok(RunState { fingerprint: fingerprint.to_string(), ..RunState::default() });
    }
    let text = std::fs::read_to_string(&path).map_err(io("read the run state", &path))?;
    let state: RunState = serde_json::from_str(&text)
        .map_err(|err| TrainError::State { path: path.clone(), reason: err.to_string() })?;
    if state.fingerprint != fingerprint {
        return Err(TrainError::OtherRun { path: dir.to_path_buf() });
    }
    Ok(state)
}

fn check_options(options: &TrainOptions) -> Result<(), TrainError> {
    options.flow.validate()?;
    options.autoencoder.validate().map_err(|err| TrainError::Options(err.to_string()))?;
    let factor = options.autoencoder.downsample_factor();
    let flow = &options.flow;
    let latent = (flow.latent_channels, flow.latent_height * factor, flow.latent_width * factor);
    if latent != (options.autoencoder.latent_channels, IMAGE_SIZE, IMAGE_SIZE) {
        return Err(TrainError::Options(format!(
            "the flow's latent {}x{}x{} times the autoencoder's factor {factor} must be the \
             autoencoder's {} channels at {IMAGE_SIZE} px",
            flow.latent_channels,
            flow.latent_height,
            flow.latent_width,
            options.autoencoder.latent_channels
        )));
    }
    if flow.text_dim != options.text.d_model {
        return Err(TrainError::Options(format!(
            "the flow's text_dim {} must be the text encoder's d_model {}",
            flow.text_dim, options.text.d_model
        )));
    }
    if options.checkpoint_every == 0
        || options.autoencoder_stage.batch == 0
        || options.joint_stage.batch == 0
        || options.decoder_stage.batch == 0
    {
        return Err(TrainError::Options(
            "checkpoint_every and the batch sizes must be at least 1".to_string(),
        ));
    }
    Ok(())
}

/// A finished snapshot: weights files and the optimizer, in a fresh folder.
fn write_snapshot(
    dir: &Path,
    name: &str,
    weights: &[(&str, Vec<NamedTensor>)],
    optim: &ModuleOptimizer,
) -> Result<PathBuf, TrainError> {
    let folder = dir.join(name);
    let partial = dir.join(format!("{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io("clear an unfinished snapshot", &partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io("create a snapshot folder", &partial))?;
    for (file, tensors) in weights {
        let path = partial.join(file);
        write_safetensors(&path, tensors).map_err(io("write snapshot weights", &path))?;
    }
    let optim_path = partial.join(OPTIMIZER_FILE);
    optim.save(&optim_path).map_err(|err| TrainError::Optimizer {
        action: "saved",
        path: optim_path.clone(),
        reason: err.to_string(),
    })?;
    if folder.exists() {
        std::fs::remove_dir_all(&folder).map_err(io("replace a snapshot", &folder))?;
    }
    std::fs::rename(&partial, &folder).map_err(io("finish a snapshot", &folder))?;
    Ok(folder)
}

fn load_optimizer(optim: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer, TrainError> {
    optim.load(path).map_err(|err| TrainError::Optimizer {
        action: "loaded",
        path: path.to_path_buf(),
        reason: err.to_string(),
    })
}

fn remove_old_snapshot(dir: &Path, old: Option<&str>, new: &str) {
    if let Some(old) = old
        && old != new
    {
        // A leftover snapshot only wastes space; the state no longer names it.
        if let Err(err) = std::fs::remove_dir_all(dir.join(old)) {
            log::warn!("Could not remove the old snapshot {:?}: {err}", dir.join(old));
        }
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Run (or resume) the whole training described by `options`; `progress` sees every step and
/// may stop the run with `Break` (the last snapshot stays, and [`TrainError::Stopped`] is
/// returned). Runs on the CPU backend.
pub fn run_training(
    options: &TrainOptions,
    progress: &mut dyn FnMut(&TrainEvent) -> ControlFlow<()>,
) -> Result<TrainReport, TrainError> {
    check_options(options)?;
    let dir = &options.checkpoint_dir;
    std::fs::create_dir_all(dir).map_err(io("create the checkpoint folder", dir))?;
    let fingerprint = fingerprint(options);
    let mut state = load_state(dir, &fingerprint)?;
    log::debug!("training options fingerprint {fingerprint}");
    let resumed_from = if state.joint_steps_done > 0 {
        Some((Stage::Joint, state.joint_steps_done))
    } else if state.decoder_steps_done > 0 {
        Some((Stage::Decoder, state.decoder_steps_done))
    } else if state.autoencoder_steps_done > 0 {
        Some((Stage::Autoencoder, state.autoencoder_steps_done))
    } else {
        None
    };
    let plain = Device::flex();
    let train_device = plain.clone().autodiff();

    let tokenizer_path = dir.join(TOKENIZER_FILE);
    train_tokenizer(&tokenizer_path)?;

    // Stage 1: the autoencoder.
    let vae_dir = dir.join(AUTOENCODER_DIR);
    let mut vae_secs = Vec::new();
    if state.scaling_factor.is_none() {
        let stage = &options.autoencoder_stage;
        let snapshot =
            state.autoencoder_snapshot.as_ref().map(|name| dir.join(name).join(VAE_WEIGHTS));
        let resume = snapshot.as_ref().map(TensorFile::open).transpose()?;
        let (mut vae, keys) =
            build_autoencoder(&options.autoencoder, options.seed, &train_device, resume.as_ref())?;
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        if let Some(name) = &state.autoencoder_snapshot {
            optim = load_optimizer(optim, &dir.join(name).join(OPTIMIZER_FILE))?;
        }
        let start = state.autoencoder_steps_done;
        let _ = progress(&TrainEvent::Stage {
            stage: Stage::Autoencoder,
            steps: stage.steps,
            start_step: start,
        });
        for step in start..stage.steps {
            let started = Instant::now();
            let lr = learning_rate(stage.lr, step, stage.steps, stage.warmup);
            let settings = VaeStep {
                seed: options.seed,
                step,
                batch: stage.batch,
                kl_weight: options.kl_weight,
                foreground_weight: options.foreground_weight,
                lr,
            };
            let (next, losses) = vae_step(vae, &mut optim, settings, &train_device)?;
            vae = next;
            vae_secs.push(started.elapsed().as_secs_f64());
            let point = LossPoint {
                stage: Stage::Autoencoder,
                step,
                loss: losses.reconstruction,
                bits_per_dim: None,
            };
            state.history.push(point);
            let stop = progress(&TrainEvent::Step {
                point,
                steps: stage.steps,
                step_secs: started.elapsed().as_secs_f64(),
            });
            let done = step + 1;
            if done % options.checkpoint_every == 0 || done == stage.steps {
                let weights = [(VAE_WEIGHTS, keys.export(&vae))];
                state.save_snapshot(dir, Stage::Autoencoder, done, &weights, &optim, progress)?;
            }
            if stop.is_break() {
                return Err(TrainError::Stopped { stage: Stage::Autoencoder, step: done });
            }
        }

        // Measure on the plain device, through the strict loader, as the pipeline will load it.
        std::fs::create_dir_all(&vae_dir).map_err(io("create the autoencoder folder", &vae_dir))?;
        let weights_path = vae_dir.join(VAE_WEIGHTS);
        write_safetensors(&weights_path, &keys.export(&vae))
            .map_err(io("write the autoencoder", &weights_path))?;
        write_json(&vae_dir.join("config.json"), &options.autoencoder)?;
        let measured = AutoencoderKl::load_dir(&vae_dir, &plain)?;
        let scaling_factor = measure_scaling_factor(&measured, options.seed, &plain)?;
        let psnr = held_out_psnr(&measured, &plain)?;
        let mut config = options.autoencoder.clone();
        config.scaling_factor = scaling_factor;
        write_json(&vae_dir.join("config.json"), &config)?;
        state.scaling_factor = Some(scaling_factor);
        state.autoencoder_psnr_db = Some(psnr);
        write_json(&dir.join(STATE_FILE), &state)?;
        log::info!(
            "Autoencoder: held-out PSNR {psnr:.2} dB, latent scale factor {scaling_factor:.5}"
        );
        let _ = progress(&TrainEvent::Note(format!(
            "autoencoder: held-out PSNR {psnr:.2} dB, scaling_factor {scaling_factor:.5}"
        )));
    }

    // Stage 2: the decoder, the encoder frozen (so the latents the flow learns are the
    // autoencoder stage's; this stage and the joint one do not depend on each other).
    let stage = &options.decoder_stage;
    let mut decoder_secs = Vec::new();
    if stage.steps > 0 && state.decoder_psnr_db.is_none() {
        let frozen = AutoencoderKl::load_dir(&vae_dir, &plain)?;
        let start_weights = match &state.decoder_snapshot {
            Some(name) => dir.join(name).join(VAE_WEIGHTS),
            None => vae_dir.join(VAE_WEIGHTS),
        };
        let resume = TensorFile::open(&start_weights)?;
        let (mut tuned, vae_keys) =
            build_autoencoder(&options.autoencoder, options.seed, &train_device, Some(&resume))?;
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        if let Some(name) = &state.decoder_snapshot {
            optim = load_optimizer(optim, &dir.join(name).join(OPTIMIZER_FILE))?;
        }
        let start = state.decoder_steps_done;
        let _ = progress(&TrainEvent::Stage {
            stage: Stage::Decoder,
            steps: stage.steps,
            start_step: start,
        });
        for step in start..stage.steps {
            let started = Instant::now();
            let settings = VaeStep {
                seed: options.seed,
                step,
                batch: stage.batch,
                kl_weight: 0.0,
                foreground_weight: options.foreground_weight,
                lr: learning_rate(stage.lr, step, stage.steps, stage.warmup),
            };
            let (next, losses) = decoder_step(tuned, &mut optim, &frozen, settings, &train_device)?;
            tuned = next;
            decoder_secs.push(started.elapsed().as_secs_f64());
            let point = LossPoint {
                stage: Stage::Decoder,
                step,
                loss: losses.reconstruction,
                bits_per_dim: None,
            };
            state.history.push(point);
            let stop = progress(&TrainEvent::Step {
                point,
                steps: stage.steps,
                step_secs: started.elapsed().as_secs_f64(),
            });
            let done = step + 1;
            if done % options.checkpoint_every == 0 || done == stage.steps {
                let weights = [(VAE_WEIGHTS, vae_keys.export(&tuned))];
                state.save_snapshot(dir, Stage::Decoder, done, &weights, &optim, progress)?;
            }
            if stop.is_break() {
                return Err(TrainError::Stopped { stage: Stage::Decoder, step: done });
            }
        }
        // The tuned weights replace the autoencoder's (its encoder is unchanged: it received
        // no gradients), then measured through the strict loader.
        let weights_path = vae_dir.join(VAE_WEIGHTS);
        write_safetensors(&weights_path, &vae_keys.export(&tuned))
            .map_err(io("write the autoencoder", &weights_path))?;
        let psnr = held_out_psnr(&AutoencoderKl::load_dir(&vae_dir, &plain)?, &plain)?;
        state.decoder_psnr_db = Some(psnr);
        write_json(&dir.join(STATE_FILE), &state)?;
        let _ = progress(&TrainEvent::Note(format!(
            "decoder: held-out PSNR {psnr:.2} dB after fine-tuning"
        )));
    }

    // Stage 3: the text encoder and the flow.
    let vae = AutoencoderKl::load_dir(&vae_dir, &plain)?;
    let tokenizer = PromptTokenizer::from_file(&tokenizer_path, options.flow.text_len)?;
    let mut text_config = options.text.clone();
    text_config.vocab_size = tokenizer.vocab_size();
    let stage = &options.joint_stage;
    let snapshot = state.joint_snapshot.as_ref().map(|name| dir.join(name));
    let resume_files = match &snapshot {
        Some(folder) => Some((
            TensorFile::open(folder.join("text.safetensors"))?,
            TensorFile::open(folder.join("flow.safetensors"))?,
        )),
        None => None,
    };
    let resume = resume_files.as_ref().map(|(text, flow)| (text, flow));
    let (mut model, keys) =
        build_text_flow(&text_config, &options.flow, options.seed, &train_device, resume)?;
    let mut adamw = AdamWConfig::new().with_weight_decay(0.0);
    if options.grad_clip_norm > 0.0 {
        adamw =
            adamw.with_grad_clipping(Some(GradientClippingConfig::Norm(options.grad_clip_norm)));
    }
    let mut optim = adamw.init();
    if let Some(folder) = &snapshot {
        optim = load_optimizer(optim, &folder.join(OPTIMIZER_FILE))?;
    }
    let start = state.joint_steps_done;
    let cache = (options.flow_jitter == 0 && start < stage.steps).then(|| LatentCache::build(&vae));
    let mut joint_secs = Vec::new();
    let _ =
        progress(&TrainEvent::Stage { stage: Stage::Joint, steps: stage.steps, start_step: start });
    for step in start..stage.steps {
        let started = Instant::now();
        let lr = learning_rate(stage.lr, step, stage.steps, stage.warmup);
        let settings = JointStep {
            seed: options.seed,
            step,
            batch: stage.batch,
            caption_dropout: options.caption_dropout,
            jitter: options.flow_jitter,
            lr,
        };
        let (next, losses) = joint_step(
            model,
            &mut optim,
            &vae,
            cache.as_ref(),
            &tokenizer,
            settings,
            &train_device,
        )?;
        model = next;
        joint_secs.push(started.elapsed().as_secs_f64());
        let point = LossPoint {
            stage: Stage::Joint,
            step,
            loss: losses.loss,
            bits_per_dim: Some(losses.bits_per_dim),
        };
        state.history.push(point);
        let stop = progress(&TrainEvent::Step {
            point,
            steps: stage.steps,
            step_secs: started.elapsed().as_secs_f64(),
        });
        let done = step + 1;
        if done % options.checkpoint_every == 0 || done == stage.steps {
            let weights = [
                ("text.safetensors", keys.text.export(&model.text)),
                ("flow.safetensors", keys.flow.export(&model.flow)),
            ];
            state.save_snapshot(dir, Stage::Joint, done, &weights, &optim, progress)?;
        }
        if stop.is_break() {
            return Err(TrainError::Stopped { stage: Stage::Joint, step: done });
        }
    }

    // The model folder, in the released pipeline's layout.
    let out = &options.model_dir;
    let text_dir = out.join("text_encoder");
    let out_vae = out.join("vae");
    for folder in [out, &text_dir, &out_vae] {
        std::fs::create_dir_all(folder).map_err(io("create the model folder", folder))?;
    }
    write_json(&out.join("flow.json"), &options.flow)?;
    let flow_path = out.join("flow.safetensors");
    write_safetensors(&flow_path, &keys.flow.export(&model.flow))
        .map_err(io("write the flow", &flow_path))?;
    let text_path = text_dir.join("model.safetensors");
    write_safetensors(&text_path, &keys.text.export(&model.text))
        .map_err(io("write the text encoder", &text_path))?;
    write_json(&text_dir.join("config.json"), &text_config)?;
    let copies = [
        (tokenizer_path.clone(), text_dir.join(TOKENIZER_FILE)),
        (vae_dir.join("config.json"), out_vae.join("config.json")),
        (vae_dir.join(VAE_WEIGHTS), out_vae.join(VAE_WEIGHTS)),
    ];
    for (from, to) in copies {
        std::fs::copy(&from, &to).map_err(io("copy into the model folder", &to))?;
    }
    let model_bytes = folder_bytes(out);
    let sample_grid = write_sample_grid(out, options.grid_prompts, &plain)?;
    let _ = progress(&TrainEvent::Note(format!(
        "model written to {out:?}, samples in {sample_grid:?}"
    )));

    let scaling_factor = state.scaling_factor.expect("the autoencoder stage sets the scale factor");
    let counted = TensorFile::open(&flow_path)?.num_elements()
        + TensorFile::open(&text_path)?.num_elements()
        + TensorFile::open(out_vae.join(VAE_WEIGHTS))?.num_elements();
    Ok(TrainReport {
        model_dir: out.clone(),
        sample_grid,
        resumed_from,
        latent_shape: [
            options.flow.latent_channels,
            options.flow.latent_height,
            options.flow.latent_width,
        ],
        scaling_factor,
        autoencoder_psnr_db: state.autoencoder_psnr_db.unwrap_or(f64::NAN),
        decoder_psnr_db: state.decoder_psnr_db,
        history: state.history,
        autoencoder_step_secs: mean(&vae_secs),
        joint_step_secs: mean(&joint_secs),
        decoder_step_secs: mean(&decoder_secs),
        model_bytes,
        parameters: counted,
    })
}

/// Bytes of all files under `dir`.
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                folder_bytes(&path)
            } else {
                entry.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}
