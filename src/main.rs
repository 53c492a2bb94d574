//! Command line: no subcommand opens the window; `generate` makes one image; `bench` prints
//! sampling speed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use starflow_studio::backend::{self, BackendChoice};
use starflow_studio::image_out::save_png;
use starflow_studio::metadata::GenerationRecord;
use starflow_studio::model::{Guidance, Sampler};
use starflow_studio::pipeline::{Denoise, GenerateRequest, Pipeline, Precision, default_model_dir};

#[derive(Parser)]
#[command(
    name = "starflow-studio",
    version,
    about = "Text-to-image with STARFlow normalizing flows"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SamplerChoice {
    /// Exact, one token per step.
    Sequential,
    /// Block-wise Jacobi (the official script's fast mode).
    Jacobi,
}

#[derive(Subcommand)]
enum Command {
    /// Generate one image and write it as PNG.
    Generate {
        /// The prompt (text models).
        #[arg(long, default_value = "")]
        prompt: String,
        /// Class label (class-conditional models; omitted = unconditional).
        #[arg(long)]
        class: Option<usize>,
        /// Where to write the PNG.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Guidance weight; 0 is off. Default: the model's.
        #[arg(long)]
        guidance: Option<f32>,
        #[arg(long, value_enum, default_value = "sequential")]
        sampler: SamplerChoice,
        /// Jacobi stopping threshold on the relative change of a chunk.
        #[arg(long, default_value_t = 0.001)]
        jacobi_threshold: f32,
        #[arg(long, value_enum, default_value = "score")]
        denoise: Denoise,
        #[arg(long, value_enum, default_value = "wgpu")]
        backend: BackendChoice,
        /// Model folder (flow.json and weights). Default: the embedded model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Also write one PNG per intermediate latent into this folder.
        #[arg(long)]
        layers_out: Option<PathBuf>,
        /// Storage type of the flow's weights.
        #[arg(long, value_enum, default_value = "auto")]
        precision: Precision,
        /// Use this noise (safetensors tensor `noise`, [batch, channels, height, width]) instead
        /// of the seeded draw.
        #[arg(long)]
        noise: Option<PathBuf>,
    },
    /// Fetch the released pipeline (flow, text encoder, autoencoder) into a model folder.
    Download {
        /// The model folder to fill.
        #[arg(long)]
        out: PathBuf,
        /// Which parts (flow, text-encoder, vae); default all.
        #[arg(long, value_delimiter = ',')]
        parts: Vec<starflow_studio::download::Part>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Train the embedded default model from a seed (resumes an interrupted run).
    Train {
        /// Where the finished model folder is written.
        #[arg(long, default_value = "assets/default-model")]
        out: PathBuf,
        /// Snapshots of the run, for resuming.
        #[arg(long, default_value = "target/train-checkpoints")]
        checkpoints: PathBuf,
        #[arg(long, default_value_t = 4)]
        seed: u64,
        /// Autoencoder steps (default: the shipped model's schedule).
        #[arg(long)]
        autoencoder_steps: Option<usize>,
        /// Joint text encoder and flow steps (default: the shipped model's schedule).
        #[arg(long)]
        joint_steps: Option<usize>,
        /// Weight of the autoencoder's KL term (default: the shipped model's).
        #[arg(long)]
        kl_weight: Option<f64>,
        /// Weight of shape pixels in the autoencoder's loss (default: the shipped model's).
        #[arg(long)]
        foreground_weight: Option<f64>,
    },
    /// Score the default model on held-out captions with the attribute checker.
    EvalDefault {
        /// Number of held-out captions.
        #[arg(long, default_value_t = 200)]
        prompts: usize,
        /// Where report.json and the image grid go.
        #[arg(long)]
        out: PathBuf,
        /// The model folder (default: the embedded model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Guidance weight of the guided images (default: the model's default).
        #[arg(long)]
        guidance: Option<f32>,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendChoice,
    },
    /// Print sampling speed of a tiny random model per token, block and image.
    Bench {
        /// Backends to measure.
        #[arg(long, value_enum, num_args = 1.., default_values = ["cpu", "wgpu"])]
        backend: Vec<BackendChoice>,
    },
}

fn init_logging() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if std::env::var_os("RUST_LOG").is_none() {
        for noisy in ["wgpu", "wgpu_core", "wgpu_hal", "naga", "cubecl", "burn_wgpu"] {
            builder.filter_module(noisy, log::LevelFilter::Warn);
        }
    }
    builder.init();
}

fn main() -> anyhow::Result<()> {
    backend::keep_freed_memory();
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        None => starflow_studio::app::run(),
        Some(Command::Download { out, parts, quiet }) => {
            let mut options = starflow_studio::download::DownloadOptions::from_env();
            if !parts.is_empty() {
                options.parts = parts;
            }
            options.progress = !quiet;
            let report = starflow_studio::download::download_release(&out, &options)?;
            log::info!(
                "{} files in {out:?} are complete ({} bytes fetched now)",
                report.files.len(),
                report.bytes_fetched()
            );
            Ok(())
        }
        Some(Command::Train {
            out,
            checkpoints,
            seed,
            autoencoder_steps,
            joint_steps,
            kl_weight,
            foreground_weight,
        }) => {
            let mut options = starflow_studio::train::TrainOptions::default_model(out, checkpoints);
            options.seed = seed;
            if let Some(steps) = autoencoder_steps {
                options.autoencoder_stage.steps = steps;
            }
            if let Some(steps) = joint_steps {
                options.joint_stage.steps = steps;
            }
            options.kl_weight = kl_weight.unwrap_or(options.kl_weight);
            options.foreground_weight = foreground_weight.unwrap_or(options.foreground_weight);
            let mut bar = starflow_studio::train::TerminalProgress::new();
            let report =
                starflow_studio::train::run_training(&options, &mut |event| bar.observe(event))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some(Command::EvalDefault { prompts, out, model, guidance, backend: choice }) => {
            let model = model.unwrap_or_else(default_model_dir);
            let selected = backend::select(choice);
            let report = starflow_studio::train::eval_default(
                &model,
                prompts,
                guidance,
                &out,
                &selected.device,
            )?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some(Command::Bench { backend }) => {
            let mut rows = Vec::new();
            for choice in backend {
                let selected = backend::select(choice);
                if choice == BackendChoice::Wgpu && selected.fell_back {
                    println!("wgpu: no adapter found, skipped");
                    continue;
                }
                rows.extend(starflow_studio::bench::run(&selected.device, &selected.description));
            }
            print!("{}", starflow_studio::bench::format_rows(&rows));
            Ok(())
        }
        Some(Command::Generate {
            prompt,
            class,
            out,
            seed,
            guidance,
            sampler,
            jacobi_threshold,
            denoise,
            backend: choice,
            model,
            layers_out,
            precision,
            noise,
        }) => {
            let model = match model {
                Some(model) => model,
                None if starflow_studio::pipeline::default_model_available() => default_model_dir(),
                None => bail!(
                    "No --model was given and the embedded default model is missing from {:?}; \
                     train it with `starflow-studio train` or pass --model FOLDER.",
                    default_model_dir()
                ),
            };
            let selected = backend::select(choice);
            log::info!("Device: {}", selected.description);
            let pipeline = Pipeline::load_with_progress(
                &model,
                &selected.device,
                precision,
                &mut |stage, _| {
                    log::debug!("loading: {stage}");
                },
            )
            .with_context(|| format!("loading the model in {model:?}"))?;
            let sampler = match sampler {
                SamplerChoice::Sequential => Sampler::Sequential,
                SamplerChoice::Jacobi => {
                    Sampler::Jacobi { chunk: 16, threshold: jacobi_threshold, max_iterations: 32 }
                }
            };
            let config = pipeline.config();
            let weight = guidance.unwrap_or(config.default_guidance);
            let request = GenerateRequest {
                prompt,
                negative_prompt: None,
                class,
                seed,
                guidance: Guidance::new(weight, config.guidance_rule),
                sampler,
                denoise,
            };
            let noise = match &noise {
                Some(path) => pipeline.noise_from_file(path)?,
                None => pipeline.noise(seed),
            };
            let started = std::time::Instant::now();
            let generated =
                pipeline.generate(&request, noise, &mut starflow_studio::model::NoObserver)?;
            let elapsed_secs = started.elapsed().as_secs_f64();
            let record = GenerationRecord::new(&request, &pipeline, elapsed_secs);
            save_png(&out, &generated.image, &record.png_text())?;
            log::info!(
                "Wrote {out:?} ({}x{}) in {elapsed_secs:.1} s",
                generated.image.width,
                generated.image.height
            );
            if let Some(dir) = layers_out {
                write_layers(&dir, &pipeline, &generated)?;
            }
            Ok(())
        }
    }
}

fn write_layers(
    dir: &Path,
    pipeline: &Pipeline,
    generated: &starflow_studio::pipeline::Generated,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
    let blocks = pipeline.config().num_blocks();
    for (k, latent) in generated.latents.iter().enumerate() {
        let name = if k == 0 {
            "00_noise.png".to_string()
        } else {
            format!("{k:02}_after_block{}.png", blocks - k)
        };
        let image = pipeline.decode(latent.clone())?;
        save_png(&dir.join(&name), &image, &[])?;
    }
    let image = pipeline.decode(generated.denoised.clone())?;
    save_png(&dir.join(format!("{:02}_denoised.png", generated.latents.len())), &image, &[])?;
    log::info!("Wrote {} layer images to {dir:?}", generated.latents.len() + 1);
    Ok(())
}
