//! The inference thread: it owns the [`Pipeline`], takes [`Job`]s in order and streams
//! [`Event`]s back on a bounded channel.
//!
//! Previews and progress are sent with `try_send` and dropped when the channel is full (the UI
//! is slow or minimized); stages, results, cancellations and failures are sent with a blocking
//! `send` and never dropped. Cancelling is a job-id watermark: every job issued before the
//! cancel stops at its next token step. A panic inside a job is caught and reported as
//! [`Event::Failed`]; the thread keeps serving jobs.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use burn::tensor::Tensor;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::backend::{self, BackendChoice, SelectedDevice};
use crate::image_out::RgbImage;
use crate::metadata::GenerationRecord;
use crate::model::{Conditioning, FlowConfig, Progress, SampleError, SampleObserver};
use crate::pipeline::{GenerateRequest, Pipeline, PipelineError};

/// Identifies one generate job (all images of its batch).
pub type JobId = u64;

/// What the UI asks the worker to do.
#[derive(Debug)]
pub enum Job {
    /// Pick the device for `backend` (once per choice) and load a model folder onto it.
    Load { folder: PathBuf, backend: BackendChoice },
    /// `count` images with seeds `request.seed`, `request.seed + 1`, ...
    Generate { id: JobId, request: GenerateRequest, count: usize },
    /// Panic inside the job handler; lets tests check that a crash is caught and reported.
    #[doc(hidden)]
    Panic { message: String },
}

/// What the worker reports.
#[derive(Debug)]
pub enum Event {
    /// The device models are loaded onto, for the status bar.
    Device {
        description: String,
        fell_back: bool,
    },
    Loading {
        folder: PathBuf,
    },
    /// Droppable: which loading stage runs and the share done.
    LoadProgress {
        stage: String,
        done: f32,
    },
    Loaded(Box<ModelInfo>),
    LoadFailed {
        folder: PathBuf,
        message: String,
    },
    /// One image of a job starts; `plan` lists the blocks in inversion order.
    Started {
        id: JobId,
        index: usize,
        seed: u64,
        plan: Vec<BlockPlan>,
    },
    /// Droppable.
    Progress {
        id: JobId,
        status: RunStatus,
    },
    /// The partially filled latent, decoded. Droppable.
    Preview {
        id: JobId,
        status: RunStatus,
        image: RgbImage,
    },
    /// The starting noise or a finished block's output, while the run goes on.
    Stage {
        id: JobId,
        stage: Stage,
    },
    Finished {
        id: JobId,
        outcome: Box<Outcome>,
    },
    /// The job stopped at a cancel; `status` is where it stood.
    Cancelled {
        id: JobId,
        status: Option<RunStatus>,
    },
    /// A job failed or panicked; `id` is `None` for a failure outside a generate job.
    Failed {
        id: Option<JobId>,
        message: String,
    },
}

/// The loaded model as the UI sees it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub folder: PathBuf,
    /// The weights file name without its extension.
    pub name: String,
    pub config: FlowConfig,
    /// The prompt tokenizer's limit in tokens; `None` when the model has no tokenizer.
    pub tokenizer_len: Option<usize>,
    /// The model's prompt tokenizer, for the token counter: string processing only, cheap
    /// enough for the UI thread (the encoder itself stays on the worker).
    pub tokenizer: Option<crate::text::PromptTokenizer>,
}

impl ModelInfo {
    /// Classes of a class-conditional model.
    pub fn num_classes(&self) -> Option<usize> {
        match self.config.conditioning {
            Conditioning::OneHotClass { num_classes }
            | Conditioning::ClassEmbedding { num_classes } => Some(num_classes),
            Conditioning::None | Conditioning::Text => None,
        }
    }

    /// Whether guidance changes anything (the model has a condition).
    pub fn guidable(&self) -> bool {
        self.config.conditioning != Conditioning::None
    }
}

/// One block of the inversion, with its share of the run's cost.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockPlan {
    pub order: usize,
    pub block: usize,
    pub tokens: usize,
    pub flipped: bool,
    /// Network work of this block in layer-tokens (doubled where guidance doubles the batch).
    pub cost: f64,
}

impl BlockPlan {
    pub fn name(&self, num_blocks: usize) -> String {
        block_name(self.block, num_blocks, self.flipped)
    }
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStatus {
    pub progress: Progress,
    pub block_name: String,
    /// Progress of the whole image, weighted by each block's cost.
    pub fraction: f32,
    pub elapsed_secs: f64,
    /// Seconds left, from the measured cost rate; `None` until there is enough to measure.
    pub eta_secs: Option<f64>,
}

/// A latent as plain numbers, NCHW with batch 1.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentData {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub values: Vec<f32>,
}

/// One step of the flow a scrubber can show.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    /// Tokens of the block that produced it.
    pub tokens: Option<usize>,
    pub image: RgbImage,
    pub latent: Option<Arc<LatentData>>,
}

/// A finished image with everything the app shows and saves.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub index: usize,
    pub request: GenerateRequest,
    pub record: GenerationRecord,
    /// The noise, each block's output (deep first), the denoised latent, the final image.
    pub stages: Vec<Stage>,
}

impl Outcome {
    pub fn image(&self) -> &RgbImage {
        &self.stages.last().expect("an outcome has its final image").image
    }
}

/// How the worker is set up.
#[derive(Clone)]
pub struct WorkerOptions {
    pub event_capacity: usize,
    /// Least time between two previews.
    pub preview_interval: Duration,
    /// Called after each event (the UI's `request_repaint`).
    pub notify: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self { event_capacity: 64, preview_interval: Duration::from_millis(33), notify: None }
    }
}

/// The handle the UI keeps: job sender, event receiver, cancel watermark, the thread.
pub struct Worker {
    jobs: Option<Sender<Job>>,
    events: Option<Receiver<Event>>,
    cancel_below: Arc<AtomicU64>,
    steps: Arc<AtomicU64>,
    next_id: JobId,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn(options: WorkerOptions) -> anyhow::Result<Self> {
        let (job_tx, job_rx) = crossbeam_channel::unbounded();
        let (event_tx, event_rx) = crossbeam_channel::bounded(options.event_capacity.max(4));
        let cancel_below = Arc::new(AtomicU64::new(0));
        let steps = Arc::new(AtomicU64::new(0));
        let shared = Shared {
            events: event_tx,
            options,
            cancel_below: cancel_below.clone(),
            steps: steps.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("starflow-worker".into())
            .spawn(move || serve(job_rx, shared))
            .context("starting the generation worker thread")?;
        Ok(Self {
            jobs: Some(job_tx),
            events: Some(event_rx),
            cancel_below,
            steps,
            next_id: 1,
            thread: Some(thread),
        })
    }

    pub fn load(&self, folder: &Path, backend: BackendChoice) {
        self.send(Job::Load { folder: folder.to_path_buf(), backend });
    }

    /// Queue a generation; returns its id.
    pub fn generate(&mut self, request: GenerateRequest, count: usize) -> JobId {
        let id = self.next_id;
        self.next_id += 1;
        self.send(Job::Generate { id, request, count: count.max(1) });
        id
    }

    /// Stop the running job at its next token step and drop every queued one.
    pub fn cancel(&self) {
        self.cancel_below.store(self.next_id, Ordering::SeqCst);
    }

    #[doc(hidden)]
    pub fn send_panic(&self, message: &str) {
        self.send(Job::Panic { message: message.to_string() });
    }

    fn send(&self, job: Job) {
        // A closed job channel means the thread is gone; `try_recv` reports that to the UI.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// The next event, if any; `Err(Disconnected)` when the worker thread has died.
    pub fn try_recv(&self) -> Result<Event, crossbeam_channel::TryRecvError> {
        match &self.events {
            Some(events) => events.try_recv(),
            None => Err(crossbeam_channel::TryRecvError::Disconnected),
        }
    }

    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Event, crossbeam_channel::RecvTimeoutError> {
        match &self.events {
            Some(events) => events.recv_timeout(timeout),
            None => Err(crossbeam_channel::RecvTimeoutError::Disconnected),
        }
    }

    /// Network calls made since the worker started (for measuring cancel latency).
    pub fn steps_taken(&self) -> u64 {
        self.steps.load(Ordering::SeqCst)
    }

    /// Cancel everything, close the channels and join the thread. Dropping the event receiver
    /// first makes a worker blocked on a full channel return at once.
    pub fn shutdown(&mut self) {
        self.cancel();
        self.jobs = None;
        self.events = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("The generation worker panicked while shutting down");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The UI hung up; the worker stops.
struct Disconnected;

struct Shared {
    events: Sender<Event>,
    options: WorkerOptions,
    cancel_below: Arc<AtomicU64>,
    steps: Arc<AtomicU64>,
}

impl Shared {
    fn send(&self, event: Event) -> Result<(), Disconnected> {
        self.events.send(event).map_err(|_| Disconnected)?;
        self.notify();
        Ok(())
    }

    /// Send unless the channel is full; only a disconnect is an error.
    fn offer(&self, event: Event) -> Result<(), Disconnected> {
        match self.events.try_send(event) {
            Ok(()) => {
                self.notify();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(Disconnected),
        }
    }

    fn notify(&self) {
        if let Some(notify) = &self.options.notify {
            notify();
        }
    }

    fn cancelled(&self, id: JobId) -> bool {
        id < self.cancel_below.load(Ordering::SeqCst)
    }

    /// Room for a preview while keeping space for events that must not wait.
    fn has_room(&self) -> bool {
        let capacity = self.events.capacity().unwrap_or(usize::MAX);
        self.events.len() + 2 < capacity / 2 + 2
    }
}

/// What the thread owns.
struct State {
    pipeline: Option<Pipeline>,
    devices: Vec<(BackendChoice, SelectedDevice)>,
}

fn serve(jobs: Receiver<Job>, shared: Shared) {
    let mut state = State { pipeline: None, devices: Vec::new() };
    for job in jobs.iter() {
        let id = match &job {
            Job::Generate { id, .. } => Some(*id),
            _ => None,
        };
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| handle(job, &mut state, &shared)));
        let result = match outcome {
            Ok(result) => result,
            Err(panic) => {
                let message = format!(
                    "The generation worker crashed: {}. The app keeps running; try again, or \
                     load the model again if it keeps failing.",
                    panic_text(&panic)
                );
                shared.send(Event::Failed { id, message })
            }
        };
        if result.is_err() {
            log::debug!("The UI closed its event channel; the worker stops");
            return;
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "an unknown panic".to_string()
    }
}

fn handle(job: Job, state: &mut State, shared: &Shared) -> Result<(), Disconnected> {
    match job {
        Job::Load { folder, backend } => load(&folder, backend, state, shared),
        Job::Generate { id, request, count } => {
            let Some(pipeline) = &state.pipeline else {
                return shared.send(Event::Failed {
                    id: Some(id),
                    message: "No model is loaded. Pick a model folder first.".to_string(),
                });
            };
            for index in 0..count {
                if shared.cancelled(id) {
                    return shared.send(Event::Cancelled { id, status: None });
                }
                let request = GenerateRequest {
                    seed: request.seed.wrapping_add(index as u64),
                    ..request.clone()
                };
                if !generate_one(id, index, request, pipeline, shared)? {
                    break;
                }
            }
            Ok(())
        }
        Job::Panic { message } => panic!("{message}"),
    }
}

fn load(
    folder: &Path,
    backend: BackendChoice,
    state: &mut State,
    shared: &Shared,
) -> Result<(), Disconnected> {
    let device = match state.devices.iter().find(|(choice, _)| *choice == backend) {
        Some((_, device)) => device.clone(),
        None => {
            let device = backend::select(backend);
            state.devices.push((backend, device.clone()));
            device
        }
    };
    shared.send(Event::Device {
        description: device.description.clone(),
        fell_back: device.fell_back,
    })?;
    shared.send(Event::Loading { folder: folder.to_path_buf() })?;

    // Free the old model's memory before loading the next one.
    state.pipeline = None;
    let mut last_stage = String::new();
    let mut report = |stage: &str, done: f32| {
        if stage != last_stage {
            last_stage = stage.to_string();
            // Progress is droppable; a full channel only skips a stage label.
            let _ = shared.offer(Event::LoadProgress { stage: stage.to_string(), done });
        }
    };
    match Pipeline::load_with_progress(
        folder,
        &device.device,
        crate::pipeline::Precision::Auto,
        &mut report,
    ) {
        Ok(pipeline) => {
            let name = pipeline
                .weights_file
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let info = ModelInfo {
                folder: folder.to_path_buf(),
                name,
                config: pipeline.config().clone(),
                tokenizer_len: pipeline.text.as_ref().map(|t| t.tokenizer.text_len()),
                tokenizer: pipeline.text.as_ref().map(|t| t.tokenizer.clone()),
            };
            state.pipeline = Some(pipeline);
            shared.send(Event::Loaded(Box::new(info)))
        }
        Err(error) => shared
            .send(Event::LoadFailed { folder: folder.to_path_buf(), message: error.to_string() }),
    }
}

/// Run one image; `Ok(false)` when the batch should stop (cancelled or failed).
fn generate_one(
    id: JobId,
    index: usize,
    request: GenerateRequest,
    pipeline: &Pipeline,
    shared: &Shared,
) -> Result<bool, Disconnected> {
    let config = pipeline.config();
    let plan = plan(config, request.guidance.is_on());
    shared.send(Event::Started { id, index, seed: request.seed, plan: plan.clone() })?;
    log::debug!("Job {id} image {index}: seed {}, {:?}", request.seed, request.sampler);

    let noise = pipeline.noise(request.seed);
    let noise_stage = stage(pipeline, "noise".to_string(), None, noise.clone());
    match &noise_stage {
        Ok(stage) => shared.send(Event::Stage { id, stage: stage.clone() })?,
        Err(error) => {
            shared.send(Event::Failed {
                id: Some(id),
                message: format!("Could not show the noise: {error}"),
            })?;
            return Ok(false);
        }
    }

    let started = Instant::now();
    let mut observer = RunObserver {
        id,
        pipeline,
        shared,
        plan: &plan,
        started,
        last_preview: None,
        last_progress: None,
        status: None,
        disconnected: false,
    };
    let generated = pipeline.generate(&request, noise, &mut observer);
    if observer.disconnected {
        return Err(Disconnected);
    }
    let status = observer.status.clone();
    let generated = match generated {
        Ok(generated) => generated,
        Err(PipelineError::Sample(SampleError::Cancelled(_))) => {
            shared.send(Event::Cancelled { id, status })?;
            return Ok(false);
        }
        Err(error) => {
            shared.send(Event::Failed {
                id: Some(id),
                message: format!("Generation failed: {error}"),
            })?;
            return Ok(false);
        }
    };
    let elapsed_secs = started.elapsed().as_secs_f64();

    let num_blocks = config.num_blocks();
    let mut stages = vec![noise_stage.unwrap_or_else(|_| unreachable!("checked above"))];
    let built: Result<Vec<Stage>, PipelineError> = generated
        .latents
        .iter()
        .skip(1)
        .zip(&plan)
        .map(|(latent, block)| {
            stage(
                pipeline,
                format!("after {}", block.name(num_blocks)),
                Some(block.tokens),
                latent.clone(),
            )
        })
        .chain(std::iter::once(stage(
            pipeline,
            "denoised".to_string(),
            None,
            generated.denoised.clone(),
        )))
        .collect();
    match built {
        Ok(built) => stages.extend(built),
        Err(error) => {
            shared.send(Event::Failed {
                id: Some(id),
                message: format!("Could not decode the stages: {error}"),
            })?;
            return Ok(false);
        }
    }
    stages.push(Stage {
        name: "final image".to_string(),
        tokens: None,
        image: generated.image.clone(),
        latent: None,
    });

    let record = GenerationRecord::new(&request, pipeline, elapsed_secs);
    shared.send(Event::Finished {
        id,
        outcome: Box::new(Outcome { index, request, record, stages }),
    })?;
    Ok(true)
}

/// The blocks in inversion order (deep first) with their cost in layer-tokens.
pub fn plan(config: &FlowConfig, guided: bool) -> Vec<BlockPlan> {
    let tokens = config.tokens();
    (0..config.num_blocks())
        .rev()
        .enumerate()
        .map(|(order, block)| {
            let doubled =
                guided && config.conditioning != Conditioning::None && config.block_guided(block);
            let batch = if doubled { 2.0 } else { 1.0 };
            let width = config.block_width(block) as f64 / config.width.max(1) as f64;
            BlockPlan {
                order,
                block,
                tokens,
                flipped: config.block_flipped(block),
                cost: config.layers_per_block[block].max(1) as f64
                    * tokens as f64
                    * batch
                    * width
                    * width,
            }
        })
        .collect()
}

/// "block 2 (deep)", "block 1, flipped".
pub fn block_name(block: usize, num_blocks: usize, flipped: bool) -> String {
    let mut name = format!("block {block}");
    if block + 1 == num_blocks {
        name.push_str(" (deep)");
    }
    if flipped {
        name.push_str(", flipped");
    }
    name
}

/// Share of the run done after `progress`, weighted by block cost.
pub fn weighted_fraction(plan: &[BlockPlan], progress: &Progress) -> f32 {
    let total: f64 = plan.iter().map(|b| b.cost).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let before: f64 = plan.iter().take(progress.order).map(|b| b.cost).sum();
    let current = plan
        .get(progress.order)
        .map_or(0.0, |b| b.cost * progress.done as f64 / progress.tokens.max(1) as f64);
    ((before + current) / total).clamp(0.0, 1.0) as f32
}

fn stage(
    pipeline: &Pipeline,
    name: String,
    tokens: Option<usize>,
    latent: Tensor<4>,
) -> Result<Stage, PipelineError> {
    let data = latent_data(&latent);
    let image = pipeline.decode(latent)?;
    Ok(Stage { name, tokens, image, latent: data.map(Arc::new) })
}

fn latent_data(latent: &Tensor<4>) -> Option<LatentData> {
    let [_, channels, height, width] = latent.dims();
    let values = latent.clone().try_into_vec_as::<f32>().ok()?;
    Some(LatentData { channels, height, width, values })
}

/// Turns sampler callbacks into events and checks the cancel watermark each step.
struct RunObserver<'a> {
    id: JobId,
    pipeline: &'a Pipeline,
    shared: &'a Shared,
    plan: &'a [BlockPlan],
    started: Instant,
    last_preview: Option<Instant>,
    last_progress: Option<Instant>,
    status: Option<RunStatus>,
    disconnected: bool,
}

/// Least time between two progress events.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(16);
/// Measured share of the run needed before an ETA is shown.
const ETA_MIN_FRACTION: f32 = 0.02;

impl RunObserver<'_> {
    fn status(&self, progress: Progress) -> RunStatus {
        let fraction = weighted_fraction(self.plan, &progress);
        let elapsed_secs = self.started.elapsed().as_secs_f64();
        let eta_secs = (fraction >= ETA_MIN_FRACTION)
            .then(|| elapsed_secs * (1.0 - fraction as f64) / fraction as f64);
        let num_blocks = self.plan.len();
        let block_name = block_name(
            progress.block,
            num_blocks,
            self.plan.get(progress.order).is_some_and(|b| b.flipped),
        );
        RunStatus { progress, block_name, fraction, elapsed_secs, eta_secs }
    }
}

impl SampleObserver for RunObserver<'_> {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        self.shared.steps.fetch_add(1, Ordering::SeqCst);
        let status = self.status(progress);
        self.status = Some(status.clone());
        if self.shared.cancelled(self.id) || self.disconnected {
            return ControlFlow::Break(());
        }
        let due = self.last_progress.is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL)
            || progress.done == progress.tokens;
        if due {
            self.last_progress = Some(Instant::now());
            if self.shared.offer(Event::Progress { id: self.id, status }).is_err() {
                self.disconnected = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn wants_partial(&mut self, _progress: &Progress) -> bool {
        let due =
            self.last_preview.is_none_or(|t| t.elapsed() >= self.shared.options.preview_interval);
        due && self.shared.has_room() && !self.shared.cancelled(self.id)
    }

    // TODO(#5): previews are read back to the CPU and uploaded as a texture; sharing burn-wgpu's
    // device with egui-wgpu (../shared/STACK.md) would keep them on the GPU.
    fn partial(&mut self, progress: &Progress, latent: Tensor<4>) {
        self.last_preview = Some(Instant::now());
        // A preview that cannot be decoded is skipped; the final decode reports the error.
        let Ok(image) = self.pipeline.decode(latent) else {
            return;
        };
        let status = self.status(*progress);
        if self.shared.offer(Event::Preview { id: self.id, status, image }).is_err() {
            self.disconnected = true;
        }
    }

    fn block_done(&mut self, order: usize, block: usize, latent: &Tensor<4>) {
        let Some(plan) = self.plan.get(order) else {
            return;
        };
        let name = format!("after {}", block_name(block, self.plan.len(), plan.flipped));
        if let Ok(stage) = stage(self.pipeline, name, Some(plan.tokens), latent.clone())
            && self.shared.send(Event::Stage { id: self.id, stage }).is_err()
        {
            self.disconnected = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GuidanceRule;
    use crate::model::config::Conditioning;

    fn config() -> FlowConfig {
        FlowConfig {
            latent_channels: 3,
            latent_height: 4,
            latent_width: 4,
            patch_size: 1,
            width: 16,
            head_dim: 8,
            layers_per_block: vec![1, 1, 4],
            conditioning: Conditioning::OneHotClass { num_classes: 2 },
            condition_deep_only: true,
            guidance_rule: GuidanceRule::Gaussian,
            ..FlowConfig::starflow_3b_t2i_256()
        }
    }

    #[test]
    fn the_deep_block_dominates_the_weighted_progress() {
        let plan = plan(&config(), true);
        let progress = Progress { order: 0, block: 2, done: 16, tokens: 16, calls: 16 };
        let after_deep = weighted_fraction(&plan, &progress);
        // 4 layers at twice the batch against 1 + 1 layers: 8 / 10 of the work.
        assert!(
            (after_deep - 0.8).abs() < 1e-6,
            "the guided deep block is most of the work: {after_deep}"
        );
        let last = Progress { order: 2, block: 0, done: 16, tokens: 16, calls: 16 };
        assert_eq!(weighted_fraction(&plan, &last), 1.0);
    }

    #[test]
    fn block_names_mark_the_deep_and_flipped_blocks() {
        assert_eq!(block_name(2, 3, false), "block 2 (deep)");
        assert_eq!(block_name(1, 3, true), "block 1, flipped");
    }
}
