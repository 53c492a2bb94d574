//! Training the embedded default model (issue #4): the caption tokenizer, a tiny
//! AutoencoderKL, then a tiny T5-style encoder jointly with a tiny STARFlow, written as a model
//! folder in the released pipeline's layout so the same strict loader reads it.
//!
//! Everything follows from [`TrainOptions::seed`]: initial weights, batches, noise and caption
//! dropout of step `s` are drawn from seeds derived from it and `s`. Checkpoints are
//! snapshots (weights under their official keys plus burn's optimizer state) written every
//! [`TrainOptions::checkpoint_every`] steps; a run started again with the same options resumes
//! from the last one and ends with the same weights as an uninterrupted run.
//!
//! - [`tokenizer`]: `tokenizer.json`; [`vae`]: the autoencoder stage; [`joint`]: text + flow
//! - [`params`]: official keys of trained parameters; [`init`]: the training start
//! - [`batch`]: per-step data; [`eval`]: `eval-default`; [`grid`]: captioned sample grids;
//!   [`progress`]: the terminal bar

pub mod batch;
pub mod eval;
pub mod grid;
pub mod init;
pub mod joint;
pub mod params;
pub mod progress;
pub mod run;
pub mod tokenizer;
pub mod vae;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::autoencoder::{AutoencoderError, AutoencoderKlConfig};
use crate::checkpoint::CheckpointError;
use crate::model::{ConfigError, FlowConfig};
use crate::text::{T5Config, T5Error, TextError, TokenizerError};

pub use eval::{EvalError, EvalReport, eval_default};
pub use progress::TerminalProgress;
pub use run::run_training;

/// Default [`TrainOptions::foreground_weight`]: shapes cover 2 to 7 % of an image, so at 10
/// they carry 20 to 43 % of the reconstruction loss.
pub const FOREGROUND_WEIGHT: f64 = 10.0;

/// A training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Autoencoder,
    Joint,
    /// The autoencoder's decoder alone, the encoder (and so the flow's latent space) frozen.
    Decoder,
}

/// Steps, batch and learning rate of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageOptions {
    pub steps: usize,
    pub batch: usize,
    /// Peak AdamW learning rate.
    pub lr: f64,
    /// Linear warmup steps before the cosine decay.
    pub warmup: usize,
}

/// Everything that decides what `run_training` produces, plus where it writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// The model folder written at the end (flow.json, flow.safetensors, text_encoder/, vae/).
    pub model_dir: PathBuf,
    /// Snapshots and the run's state; a run with the same options resumes from here.
    pub checkpoint_dir: PathBuf,
    pub seed: u64,
    /// The autoencoder's architecture (its `scaling_factor` is measured, not read).
    pub autoencoder: AutoencoderKlConfig,
    /// The text encoder's architecture (its `vocab_size` is set from the tokenizer).
    pub text: T5Config,
    pub flow: FlowConfig,
    pub autoencoder_stage: StageOptions,
    pub joint_stage: StageOptions,
    /// Decoder fine-tuning after the autoencoder stage (STARFlow fine-tunes its decoder too): the
    /// encoder is frozen, so the flow's latents keep their meaning while reconstructions
    /// sharpen. 0 steps skips it.
    pub decoder_stage: StageOptions,
    /// Weight of the KL term against the per-pixel MSE.
    pub kl_weight: f64,
    /// Weight of shape pixels against background pixels in the autoencoder's loss (shapes
    /// cover 2 to 7 % of an image, so a plain MSE learns the background first).
    pub foreground_weight: f64,
    /// Share of captions replaced by the empty prompt (STARFlow: about 10 %).
    pub caption_dropout: f64,
    /// Pixels the shapes of the flow's training images may move from their slots (the
    /// autoencoder always sees `MAX_JITTER`). 0: one layout per caption, so that each
    /// caption's latents are one point plus the augmentation noise, a Gaussian each affine
    /// autoregressive step can fit; jittered layouts make the first token of each shape
    /// multimodal, which the tiny flow blurs into blobs.
    pub flow_jitter: usize,
    /// Global gradient-norm clip of the joint stage (0: none).
    pub grad_clip_norm: f32,
    /// Steps between snapshots (the last step of each stage always gets one).
    pub checkpoint_every: usize,
    /// Held-out captions in the final sample grid.
    pub grid_prompts: usize,
}

impl TrainOptions {
    /// The full run of the default model (issue #4): sized for about 90 minutes on two CPU
    /// cores; see the step times in the model card before changing the step counts.
    pub fn default_model(model_dir: PathBuf, checkpoint_dir: PathBuf) -> Self {
        let text = joint::tiny_text_config(0);
        let flow = joint::tiny_flow_config(text.d_model);
        Self {
            model_dir,
            checkpoint_dir,
            seed: 4,
            autoencoder: vae::tiny_autoencoder_config(),
            text,
            flow,
            // Sized from measured step times of a release build on 2 cores (autoencoder batch
            // 16: 1.1 s, joint batch 32: 0.75 s): about 11 + 50 minutes, inside the 90-minute
            // budget with room for the measurements and the sample grid.
            autoencoder_stage: StageOptions { steps: 600, batch: 16, lr: 2e-3, warmup: 50 },
            joint_stage: StageOptions { steps: 4000, batch: 32, lr: 5e-4, warmup: 100 },
            decoder_stage: StageOptions { steps: 1600, batch: 16, lr: 1e-3, warmup: 20 },
            // The KL term only keeps the posterior from collapsing; at 1e-4 it held the
            // posterior std at 0.36 in flow space (noise the flow had to learn and the
            // checker read as soft blobs: 11 % of real held-out images survived a round trip).
            kl_weight: 1e-6,
            foreground_weight: FOREGROUND_WEIGHT,
            caption_dropout: 0.1,
            flow_jitter: 0,
            grad_clip_norm: 1.0,
            checkpoint_every: 100,
            grid_prompts: 16,
        }
    }

    /// A few steps of everything at the default architecture, for tests.
    pub fn smoke(
        model_dir: PathBuf,
        checkpoint_dir: PathBuf,
        autoencoder_steps: usize,
        joint_steps: usize,
    ) -> Self {
        let mut options = Self::default_model(model_dir, checkpoint_dir);
        options.autoencoder_stage =
            StageOptions { steps: autoencoder_steps, batch: 4, lr: 2e-3, warmup: 1 };
        options.joint_stage = StageOptions { steps: joint_steps, batch: 4, lr: 1e-3, warmup: 1 };
        options.decoder_stage = StageOptions { steps: 2, batch: 4, lr: 1e-3, warmup: 1 };
        options.checkpoint_every = 2;
        options.grid_prompts = 2;
        options
    }
}

/// A point of the loss curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub stage: Stage,
    pub step: usize,
    /// Autoencoder: reconstruction MSE on `[-1, 1]`; joint: the flow loss (nats per dim).
    pub loss: f32,
    /// Joint only: bits per dimension of the noisy latents.
    pub bits_per_dim: Option<f32>,
}

/// What `run_training` reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// A stage starts (or resumes at `start_step`).
    Stage { stage: Stage, steps: usize, start_step: usize },
    /// Step `point.step` (0-based) finished in `step_secs`.
    Step { point: LossPoint, steps: usize, step_secs: f64 },
    /// A snapshot was written after `step` steps.
    Checkpoint { stage: Stage, step: usize, path: PathBuf },
    /// Something a user may want to read (measured scale factor, PSNR, files written).
    Note(String),
}

/// The results of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub model_dir: PathBuf,
    pub sample_grid: PathBuf,
    /// Where this process started: `None` for a fresh run.
    pub resumed_from: Option<(Stage, usize)>,
    pub latent_shape: [usize; 3],
    pub scaling_factor: f64,
    /// Mean PSNR of held-out reconstructions, dB, after the autoencoder stage.
    pub autoencoder_psnr_db: f64,
    /// The same after the decoder stage (`None` when it has no steps).
    pub decoder_psnr_db: Option<f64>,
    /// Every step's loss (of this run and the runs it resumed).
    pub history: Vec<LossPoint>,
    /// Mean seconds per step in this process, per stage (`None` if no step ran here).
    pub autoencoder_step_secs: Option<f64>,
    pub joint_step_secs: Option<f64>,
    pub decoder_step_secs: Option<f64>,
    /// Bytes of the model folder's files.
    pub model_bytes: u64,
    pub parameters: usize,
}

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("Could not {action}: {error}. Check that the folder is writable. (path: {path:?})")]
    Io { action: &'static str, path: PathBuf, error: std::io::Error },
    #[error("The tokenizer could not be trained or written: {reason}. (file: {path:?})")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("The training options don't describe a working model: {0}")]
    Options(String),
    #[error(
        "The checkpoint folder holds a run with other training options; delete it or pick \
         another --checkpoints folder to start afresh. (folder: {path:?})"
    )]
    OtherRun { path: PathBuf },
    #[error(
        "The run's state file could not be read: {reason}. Delete it to start afresh. (file: {path:?})"
    )]
    State { path: PathBuf, reason: String },
    #[error(
        "The optimizer state could not be {action}: {reason}. Delete the checkpoint folder to \
         start afresh. (file: {path:?})"
    )]
    Optimizer { action: &'static str, path: PathBuf, reason: String },
    #[error(
        "The {stage} loss is not finite at step {step}: training diverged. Lower the learning \
         rate or the clip norm and start afresh."
    )]
    NonFinite { stage: &'static str, step: usize },
    #[error(
        "Training was stopped after {step} {stage:?} steps; run it again to resume from the last checkpoint."
    )]
    Stopped { stage: Stage, step: usize },
    #[error(
        "A {namespace} parameter of shape {shape:?} was not built by the weight loader, so it has \
         no key to be saved under (a bug in the training code)."
    )]
    UnnamedParameter { namespace: String, shape: Vec<usize> },
    #[error(
        "The snapshot has no tensor {key:?} ({count} missing); delete the checkpoint folder to start afresh."
    )]
    MissingKey { key: String, count: usize },
    #[error("A tensor could not be read back from the device: {0}")]
    Read(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Autoencoder(#[from] AutoencoderError),
    #[error(transparent)]
    TextEncoder(#[from] T5Error),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Prompt(#[from] TokenizerError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("The trained model folder could not be used: {0}")]
    Eval(#[from] EvalError),
}
