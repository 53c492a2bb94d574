//! The eframe app: drain worker and file events, draw the panels, act on what they ask.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;

use super::AppOptions;
use super::export::{
    ExportFormat, FileEvent, FileJob, FileWorker, Restored, file_stem, pictures_folder,
};
use super::history::HistoryEntry;
use super::state::{SETTINGS_KEY, Settings};
use super::ui::{self, Action};
use super::worker::{
    BlockPlan, Event, JobId, ModelInfo, Outcome, RunStatus, Stage, Worker, WorkerOptions,
};

/// Longest time one frame spends draining events.
const DRAIN_BUDGET: Duration = Duration::from_millis(4);
/// A dialog that answers faster than this did not open: no portal runs.
const DIALOG_MIN_OPEN: Duration = Duration::from_millis(300);
/// Seconds per stage when playing the scrubber.
pub const PLAY_STEP_SECS: f32 = 0.6;

/// Where the model stands.
#[derive(Debug, Clone)]
pub enum ModelState {
    None,
    Loading { folder: PathBuf, stage: String, done: f32 },
    Ready(Box<ModelInfo>),
    Failed { folder: PathBuf, message: String },
}

/// A line in the status bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Running,
    Finished,
    Cancelled,
    Failed(String),
}

/// A stage with its texture (uploaded once).
pub struct StageView {
    pub stage: Stage,
    pub texture: egui::TextureHandle,
    /// Identifies the latent for the GPU channel view's buffer cache.
    pub key: u64,
    /// The CPU channel grid, made when first shown without the shader.
    pub channels_texture: Option<egui::TextureHandle>,
}

/// One image being made or made.
pub struct Run {
    pub id: JobId,
    pub index: usize,
    pub seed: u64,
    pub plan: Vec<BlockPlan>,
    pub state: RunState,
    pub status: Option<RunStatus>,
    pub preview: Option<egui::TextureHandle>,
    pub previews_shown: usize,
    pub stages: Vec<StageView>,
    pub outcome: Option<Box<Outcome>>,
    /// The scrubber's stage; `None` follows the live preview.
    pub selected: Option<usize>,
    pub playing_since: Option<Instant>,
    pub requested_at: Instant,
    pub first_preview_secs: Option<f64>,
}

impl Run {
    pub fn shown_stage(&self) -> Option<usize> {
        match self.selected {
            Some(index) => Some(index.min(self.stages.len().saturating_sub(1))),
            None if self.state == RunState::Running && self.preview.is_some() => None,
            None => self.stages.len().checked_sub(1),
        }
    }
}

/// A history entry with its thumbnail texture.
pub struct HistoryItem {
    pub entry: HistoryEntry,
    pub texture: egui::TextureHandle,
}

/// UI time per frame.
#[derive(Debug, Clone, Default)]
pub struct FrameStats {
    pub last_ui_secs: f64,
    pub frames: u64,
}

pub struct StudioApp {
    pub settings: Settings,
    pub options: AppOptions,
    worker: Worker,
    files: FileWorker,
    pub model: ModelState,
    pub device: Option<String>,
    pub run: Option<Run>,
    pub history: Vec<HistoryItem>,
    pub export_path: String,
    pub model_folder_text: String,
    pub dialog_unavailable: bool,
    pub message: Option<Message>,
    pub show_channels: bool,
    pub channel_shader: bool,
    pub worker_dead: bool,
    pub frame_stats: FrameStats,
    current_job: Option<JobId>,
    pending_generate: bool,
    next_key: u64,
    ctx: egui::Context,
}

impl Run {
    /// A run that has just started image `index` of job `id`; the Generate press time and
    /// the first preview's delay carry over from earlier images of the same job.
    fn starting(
        id: JobId,
        index: usize,
        seed: u64,
        plan: Vec<BlockPlan>,
        requested_at: Instant,
        first_preview_secs: Option<f64>,
    ) -> Self {
        Self {
            id,
            index,
            seed,
            plan,
            state: RunState::Running,
            status: None,
            preview: None,
            previews_shown: 0,
            stages: Vec::new(),
            outcome: None,
            selected: None,
            playing_since: None,
            requested_at,
            first_preview_secs,
        }
    }
}

impl StudioApp {
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        let mut settings: Settings = cc
            .storage
            .and_then(|storage| eframe::get_value(storage, SETTINGS_KEY))
            .unwrap_or_default();
        if let Some(folder) = &options.model_folder {
            settings.model_folder = Some(folder.clone());
        }
        if let Some(backend) = options.backend {
            settings.backend = backend;
        }
        let ctx = cc.egui_ctx.clone();
        let channel_shader = cc.wgpu_render_state.as_ref().is_some_and(ui::channels::install);
        let worker = spawn_worker(&ctx, options.event_capacity).unwrap_or_else(|error| {
            panic!("the generation worker thread could not be started: {error:#}")
        });
        let files = FileWorker::spawn(options.history_folder.clone(), Some(notifier(&ctx)))
            .unwrap_or_else(|error| panic!("the file thread could not be started: {error:#}"));
        files.send(FileJob::HistoryList);
        let mut app = Self {
            model_folder_text: settings
                .model_folder
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
            settings,
            pending_generate: options.generate_on_start,
            options,
            worker,
            files,
            model: ModelState::None,
            device: None,
            run: None,
            history: Vec::new(),
            export_path: String::new(),
            dialog_unavailable: false,
            message: None,
            show_channels: false,
            channel_shader,
            worker_dead: false,
            frame_stats: FrameStats::default(),
            current_job: None,
            next_key: 1,
            ctx,
        };
        app.suggest_export_path();
        // First run (nothing remembered): the embedded default model, so the app works at once.
        let start_folder = app.settings.model_folder.clone().or_else(|| {
            crate::pipeline::default_model_available().then(crate::pipeline::default_model_dir)
        });
        if let Some(folder) = start_folder {
            app.load_model(&folder);
        }
        app
    }

    pub fn load_model(&mut self, folder: &Path) {
        self.model_folder_text = folder.display().to_string();
        self.model =
            ModelState::Loading { stage: String::new(), done: 0.0, folder: folder.to_path_buf() };
        self.worker.load(folder, self.settings.backend);
    }

    pub fn is_running(&self) -> bool {
        self.run.as_ref().is_some_and(|run| run.state == RunState::Running)
            || (self.current_job.is_some()
                && self.run.as_ref().is_none_or(|r| Some(r.id) != self.current_job))
    }

    pub fn model_info(&self) -> Option<&ModelInfo> {
        match &self.model {
            ModelState::Ready(info) => Some(info),
            _ => None,
        }
    }

    /// Start a generation (stopping one that runs).
    pub fn generate(&mut self) {
        let Some(model) = self.model_info() else {
            self.message =
                Some(Message { text: "Load a model before generating.".into(), error: true });
            return;
        };
        let request = self.settings.request(model);
        if self.is_running() {
            self.worker.cancel();
        }
        let id = self.worker.generate(request, self.settings.batch_count);
        self.current_job = Some(id);
        self.run = Some(Run::starting(id, 0, self.settings.seed, Vec::new(), Instant::now(), None));
        self.message = None;
    }

    pub fn cancel(&mut self) {
        self.worker.cancel();
    }

    fn restart_worker(&mut self) {
        self.worker.shutdown();
        match spawn_worker(&self.ctx, self.options.event_capacity) {
            Ok(worker) => {
                self.worker = worker;
                self.worker_dead = false;
                self.current_job = None;
                if let Some(run) = &mut self.run
                    && run.state == RunState::Running
                {
                    run.state = RunState::Failed("the worker was restarted".into());
                }
                if let Some(folder) = self.settings.model_folder.clone() {
                    self.load_model(&folder);
                }
            }
            Err(error) => self.message = Some(Message { text: format!("{error:#}"), error: true }),
        }
    }

    fn texture(&mut self, name: &str, image: &crate::image_out::RgbImage) -> egui::TextureHandle {
        let color = egui::ColorImage::from_rgb([image.width, image.height], &image.pixels);
        self.ctx.load_texture(name, color, egui::TextureOptions::NEAREST)
    }

    fn stage_view(&mut self, stage: Stage) -> StageView {
        let key = self.next_key;
        self.next_key += 1;
        let texture = self.texture(&format!("stage-{key}"), &stage.image);
        StageView { stage, texture, key, channels_texture: None }
    }

    /// Apply worker and file events for at most [`DRAIN_BUDGET`].
    pub fn drain_events(&mut self) {
        let started = Instant::now();
        while started.elapsed() < DRAIN_BUDGET {
            match self.worker.try_recv() {
                Ok(event) => self.apply(event),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    if !self.worker_dead {
                        self.worker_dead = true;
                        self.message = Some(Message {
                            text: "The generation worker stopped unexpectedly (it crashed). Press \
                                   Restart worker to start it again."
                                .into(),
                            error: true,
                        });
                    }
                    break;
                }
            }
        }
        while let Ok(event) = self.files.try_recv() {
            self.apply_file(event);
        }
        if self.pending_generate && self.model_info().is_some() {
            self.pending_generate = false;
            self.generate();
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Device { description, .. } => self.device = Some(description),
            Event::Loading { folder } => {
                self.model = ModelState::Loading { folder, stage: String::new(), done: 0.0 }
            }
            Event::LoadProgress { stage: new_stage, done: new_done } => {
                if let ModelState::Loading { stage, done, .. } = &mut self.model {
                    *stage = new_stage;
                    *done = new_done;
                }
            }
            Event::Loaded(info) => {
                let new_model =
                    self.settings.model_folder.as_deref() != Some(info.folder.as_path());
                self.settings.adapt_to(&info, new_model);
                self.settings.model_folder = Some(info.folder.clone());
                self.message =
                    Some(Message { text: format!("Loaded {}", info.name), error: false });
                self.model = ModelState::Ready(info);
            }
            Event::LoadFailed { folder, message } => {
                self.message = Some(Message { text: message.clone(), error: true });
                self.model = ModelState::Failed { folder, message };
                self.pending_generate = false;
            }
            Event::Started { id, index, seed, plan } => {
                if Some(id) != self.current_job {
                    return;
                }
                let requested_at = self.run.as_ref().map_or_else(Instant::now, |r| r.requested_at);
                let first_preview_secs = self.run.as_ref().and_then(|r| r.first_preview_secs);
                self.run =
                    Some(Run::starting(id, index, seed, plan, requested_at, first_preview_secs));
            }
            Event::Progress { id, status } => {
                if let Some(run) = self.run_for(id) {
                    run.status = Some(status);
                }
            }
            Event::Preview { id, status, image } => {
                if self.run_for(id).is_none() {
                    return;
                }
                let color = egui::ColorImage::from_rgb([image.width, image.height], &image.pixels);
                let ctx = self.ctx.clone();
                let run = self.run_for(id).expect("checked above");
                match &mut run.preview {
                    Some(texture) => texture.set(color, egui::TextureOptions::NEAREST),
                    None => {
                        run.preview =
                            Some(ctx.load_texture("preview", color, egui::TextureOptions::NEAREST))
                    }
                }
                run.status = Some(status);
                run.previews_shown += 1;
                if run.first_preview_secs.is_none() {
                    run.first_preview_secs = Some(run.requested_at.elapsed().as_secs_f64());
                }
            }
            Event::Stage { id, stage } => {
                if self.run_for(id).is_none() {
                    return;
                }
                let view = self.stage_view(stage);
                if let Some(run) = self.run_for(id) {
                    run.stages.push(view);
                }
            }
            Event::Finished { id, outcome } => {
                if self.run_for(id).is_none() {
                    // A result of an older job still goes to the history.
                    self.files.send(FileJob::HistoryAdd {
                        image: outcome.image().clone(),
                        record: outcome.record.clone(),
                    });
                    return;
                }
                let have = self.run_for(id).map_or(0, |r| r.stages.len());
                let missing: Vec<StageView> =
                    outcome.stages.iter().skip(have).cloned().map(|s| self.stage_view(s)).collect();
                self.files.send(FileJob::HistoryAdd {
                    image: outcome.image().clone(),
                    record: outcome.record.clone(),
                });
                let last_of_batch = outcome.index + 1 >= self.settings.batch_count;
                let run = self.run_for(id).expect("checked above");
                run.stages.extend(missing);
                run.state = RunState::Finished;
                run.selected = None;
                run.outcome = Some(outcome);
                if last_of_batch {
                    self.current_job = None;
                }
                self.suggest_export_path();
            }
            Event::Cancelled { id, status } => {
                if let Some(run) = self.run_for(id) {
                    run.state = RunState::Cancelled;
                    let text = match &status {
                        Some(s) => format!(
                            "Stopped in {} at token {}/{}.",
                            s.block_name, s.progress.done, s.progress.tokens
                        ),
                        None => "Stopped before it started.".to_string(),
                    };
                    self.message = Some(Message { text, error: false });
                }
                if Some(id) == self.current_job {
                    self.current_job = None;
                }
            }
            Event::Failed { id, message } => {
                if let Some(id) = id {
                    if let Some(run) = self.run_for(id) {
                        run.state = RunState::Failed(message.clone());
                    }
                    if Some(id) == self.current_job {
                        self.current_job = None;
                    }
                }
                log::error!("{message}");
                self.message = Some(Message { text: message, error: true });
            }
        }
    }

    fn run_for(&mut self, id: JobId) -> Option<&mut Run> {
        self.run.as_mut().filter(|run| run.id == id)
    }

    fn apply_file(&mut self, event: FileEvent) {
        match event {
            FileEvent::Saved { path } => {
                if let Some(folder) = path.parent() {
                    self.settings.export_folder = Some(folder.to_path_buf());
                }
                self.message =
                    Some(Message { text: format!("Saved {}", path.display()), error: false });
            }
            FileEvent::Picked { path: Some(path), .. } => self.save_to(&path),
            FileEvent::Picked { path: None, elapsed, .. } => {
                if elapsed < DIALOG_MIN_OPEN {
                    self.dialog_unavailable = true;
                    self.message = Some(Message {
                        text: "No file dialog is available on this desktop (no portal); type a \
                               path in Save path and press Save to path."
                            .into(),
                        error: false,
                    });
                }
            }
            FileEvent::PickedFolder { path: Some(folder) } => self.load_model(&folder),
            FileEvent::PickedFolder { path: None } => {
                self.message = Some(Message {
                    text: "No folder was picked. Without a desktop portal no dialog opens; type \
                           the model folder and press Load."
                        .into(),
                    error: false,
                });
            }
            FileEvent::Restored { path, restored } => {
                let name =
                    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                match restored {
                    Restored::Record(record) => self.settings.restore(&record),
                    Restored::Parameters(parameters) => {
                        let rule =
                            self.model_info().map_or(crate::model::GuidanceRule::Gaussian, |m| {
                                m.config.guidance_rule
                            });
                        self.settings.restore_parameters(&parameters, rule);
                    }
                }
                if let Some(model) = self.model_info().cloned() {
                    self.settings.adapt_to(&model, false);
                }
                self.message = Some(Message {
                    text: format!(
                        "Restored prompt, seed {} and settings from {name}",
                        self.settings.seed
                    ),
                    error: false,
                });
            }
            FileEvent::Copied => {
                self.message = Some(Message { text: "Copied the image.".into(), error: false })
            }
            FileEvent::History(entries) => {
                self.history = entries.into_iter().map(|entry| self.history_item(entry)).collect();
            }
            FileEvent::HistoryAdded(entry) => {
                let item = self.history_item(entry);
                self.history.insert(0, item);
            }
            FileEvent::HistoryDeleted { path } => {
                self.history.retain(|item| item.entry.path != path)
            }
            FileEvent::Failed { message } => {
                log::error!("{message}");
                self.message = Some(Message { text: message, error: true });
            }
        }
    }

    fn history_item(&mut self, entry: HistoryEntry) -> HistoryItem {
        let name = format!("history-{}", entry.path.display());
        let texture = self.texture(&name, &entry.thumbnail);
        HistoryItem { entry, texture }
    }

    /// The export folder: the path field's folder, the last one used, or the pictures folder.
    fn export_folder(&self) -> PathBuf {
        let typed = PathBuf::from(self.export_path.trim());
        typed
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && p.is_dir())
            .map(Path::to_path_buf)
            .or_else(|| self.settings.export_folder.clone())
            .or_else(|| self.options.export_folder.clone())
            .unwrap_or_else(pictures_folder)
    }

    fn suggest_export_path(&mut self) {
        let (prompt, seed) = match self.run.as_ref().and_then(|r| r.outcome.as_ref()) {
            Some(outcome) => (outcome.request.prompt.clone(), outcome.request.seed),
            None => (self.settings.prompt.clone(), self.settings.seed),
        };
        let name =
            format!("{}.{}", file_stem(&prompt, seed), self.settings.export_format.extension());
        self.export_path = self.export_folder().join(name).display().to_string();
    }

    fn save_to(&mut self, path: &Path) {
        let Some(outcome) = self.run.as_ref().and_then(|r| r.outcome.as_ref()) else {
            self.message = Some(Message {
                text: "There is no finished image to save yet.".into(),
                error: true,
            });
            return;
        };
        let (path, format) = path_with_format(path, self.settings.export_format);
        let text = if format == ExportFormat::Png { outcome.record.png_text() } else { Vec::new() };
        self.files.send(FileJob::Save { path, image: outcome.image().clone(), format, text });
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Generate => self.generate(),
            Action::Cancel => self.cancel(),
            Action::LoadModel(folder) => self.load_model(&folder),
            Action::BrowseModel => self.files.send(FileJob::PickFolder),
            Action::RestartWorker => self.restart_worker(),
            Action::SaveToPath => {
                let path = PathBuf::from(self.export_path.trim());
                self.save_to(&path);
            }
            Action::SaveDialog => {
                let path = PathBuf::from(self.export_path.trim());
                let name =
                    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                self.files.send(FileJob::PickPath {
                    folder: self.export_folder(),
                    name,
                    format: self.settings.export_format,
                });
            }
            Action::SaveStrip => {
                let Some(run) = self.run.as_ref().filter(|r| r.outcome.is_some()) else {
                    return;
                };
                let outcome = run.outcome.as_ref().expect("filtered above");
                let typed = PathBuf::from(self.export_path.trim());
                let stem = typed
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "starflow".into());
                let path = self.export_folder().join(format!("{stem}-strip.png"));
                let images = outcome.stages.iter().map(|s| s.image.clone()).collect();
                self.files.send(FileJob::SaveStrip {
                    path,
                    images,
                    text: outcome.record.png_text(),
                });
            }
            Action::Copy => {
                if let Some(outcome) = self.run.as_ref().and_then(|r| r.outcome.as_ref()) {
                    self.files.send(FileJob::Copy { image: outcome.image().clone() });
                }
            }
            Action::FormatChanged => {
                let typed = PathBuf::from(self.export_path.trim());
                self.export_path = typed
                    .with_extension(self.settings.export_format.extension())
                    .display()
                    .to_string();
            }
            Action::HistoryReuse(index) => {
                if let Some(record) = self.history.get(index).and_then(|i| i.entry.record.clone()) {
                    self.settings.restore(&record);
                    self.message = Some(Message {
                        text: format!("Reusing the settings of seed {}", record.seed),
                        error: false,
                    });
                }
            }
            Action::HistoryExport(index) => {
                let Some(item) = self.history.get(index) else {
                    return;
                };
                let (prompt, seed) = item
                    .entry
                    .record
                    .as_ref()
                    .map_or((String::new(), 0), |r| (r.prompt.clone(), r.seed));
                let format = self.settings.export_format;
                let path = self.export_folder().join(format!(
                    "{}.{}",
                    file_stem(&prompt, seed),
                    format.extension()
                ));
                let text = match (&item.entry.record, format) {
                    (Some(record), ExportFormat::Png) => record.png_text(),
                    _ => Vec::new(),
                };
                self.files.send(FileJob::Save {
                    path,
                    image: item.entry.image.clone(),
                    format,
                    text,
                });
            }
            Action::HistoryDelete(index) => {
                if let Some(item) = self.history.get(index) {
                    self.files.send(FileJob::HistoryDelete { path: item.entry.path.clone() });
                }
            }
        }
    }

    fn handle_keys_and_drops(&mut self, ctx: &egui::Context) -> Vec<Action> {
        let mut actions = Vec::new();
        // Taken before the prompt box sees them, so Ctrl+Enter does not insert a newline.
        let (generate, cancel, dropped) = ctx.input_mut(|input| {
            let generate = input.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter);
            let cancel = input.consume_key(egui::Modifiers::NONE, egui::Key::Escape);
            let dropped: Vec<PathBuf> =
                input.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect();
            (generate, cancel, dropped)
        });
        if generate {
            actions.push(Action::Generate);
        }
        if cancel && self.is_running() {
            actions.push(Action::Cancel);
        }
        for path in dropped {
            self.files.send(FileJob::ReadDropped { path, bytes: None });
        }
        actions
    }

    pub fn shutdown(&mut self) {
        self.worker.shutdown();
        self.files.shutdown();
    }
}

impl eframe::App for StudioApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        // Drained here too, so that a minimized window keeps the worker's channel flowing.
        self.drain_events();
        if self.run.as_ref().is_some_and(|r| r.playing_since.is_some()) {
            ctx.request_repaint_after(Duration::from_millis(50));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let started = Instant::now();
        let ctx = ui.ctx().clone();
        let mut actions = self.handle_keys_and_drops(&ctx);
        egui::Panel::top("model")
            .show(ui, |ui| ui::model_bar::model_bar_ui(ui, self, &mut actions));
        egui::Panel::bottom("status").show(ui, |ui| ui::status::status_ui(ui, self, &mut actions));
        egui::Panel::left("controls").resizable(true).default_size(300.0).show(ui, |ui| {
            egui::ScrollArea::vertical()
                .show(ui, |ui| ui::controls::controls_ui(ui, self, &mut actions));
        });
        egui::Panel::right("history")
            .resizable(true)
            .default_size(180.0)
            .show(ui, |ui| ui::history::history_ui(ui, self, &mut actions));
        egui::CentralPanel::default().show(ui, |ui| {
            ui::export_bar::export_bar_ui(ui, self, &mut actions);
            ui.separator();
            ui::viewer::viewer_ui(ui, self);
        });
        for action in actions {
            self.act(action);
        }
        self.frame_stats.last_ui_secs = started.elapsed().as_secs_f64();
        self.frame_stats.frames += 1;
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.settings);
    }

    fn on_exit(&mut self) {
        self.shutdown();
    }
}

fn notifier(ctx: &egui::Context) -> Arc<dyn Fn() + Send + Sync> {
    let ctx = ctx.clone();
    Arc::new(move || ctx.request_repaint())
}

fn spawn_worker(ctx: &egui::Context, event_capacity: usize) -> anyhow::Result<Worker> {
    Worker::spawn(WorkerOptions {
        event_capacity,
        notify: Some(notifier(ctx)),
        ..WorkerOptions::default()
    })
}

/// `path` with an extension: a known one picks the format, else `fallback`'s is added.
fn path_with_format(path: &Path, fallback: ExportFormat) -> (PathBuf, ExportFormat) {
    match ExportFormat::from_path(path) {
        Some(format) => (path.to_path_buf(), format),
        None => {
            let mut name = path.as_os_str().to_owned();
            name.push(".");
            name.push(fallback.extension());
            (PathBuf::from(name), fallback)
        }
    }
}
