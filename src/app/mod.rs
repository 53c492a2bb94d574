//! The desktop window: type a prompt, watch the image form, step through the flow, export.
//!
//! - `app.rs`: the eframe app (drain events, draw, act)
//! - `state.rs`: what the user edits, persisted through eframe's storage
//! - `worker.rs`: the inference thread (jobs, events, cancel)
//! - `export.rs`: formats, file names, the file thread; `history.rs`: the gallery on disk
//! - `ui/`: one file per panel; `ui/channels.rs` draws `shaders/latent_channels.wgsl`
//!
//! For scripted runs (the headless screenshot check) these environment variables apply:
//! `STARFLOW_STUDIO_MODEL` (a model folder to load at start), `STARFLOW_STUDIO_BACKEND`
//! (`cpu` or `wgpu`), `STARFLOW_STUDIO_GENERATE=1` (generate once the model is loaded) and
//! `STARFLOW_STUDIO_HISTORY` (the history folder instead of the user's data folder).

#[allow(clippy::module_inception)]
pub mod app;
pub mod export;
pub mod fixture;
pub mod history;
pub mod state;
pub mod ui;
pub mod worker;

use std::path::PathBuf;

use crate::backend::BackendChoice;

pub use app::StudioApp;

/// Window size at first start, in points.
pub const INITIAL_WINDOW_SIZE: [f32; 2] = [1100.0, 720.0];

/// How the app is set up, apart from the persisted settings.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub history_folder: PathBuf,
    /// Export folder used when the settings have none (default: the pictures folder).
    pub export_folder: Option<PathBuf>,
    /// Load this model at start, overriding the settings.
    pub model_folder: Option<PathBuf>,
    pub backend: Option<BackendChoice>,
    /// Generate once the model has loaded.
    pub generate_on_start: bool,
    pub event_capacity: usize,
}

impl AppOptions {
    /// The defaults with the `STARFLOW_STUDIO_*` environment variables applied.
    pub fn from_env() -> Self {
        let history_folder = std::env::var_os("STARFLOW_STUDIO_HISTORY")
            .map(PathBuf::from)
            .or_else(history::default_folder)
            .unwrap_or_else(|| PathBuf::from("starflow-history"));
        let backend = match std::env::var("STARFLOW_STUDIO_BACKEND").as_deref() {
            Ok("cpu") => Some(BackendChoice::Cpu),
            Ok("wgpu") => Some(BackendChoice::Wgpu),
            _ => None,
        };
        Self {
            history_folder,
            export_folder: None,
            model_folder: std::env::var_os("STARFLOW_STUDIO_MODEL").map(PathBuf::from),
            backend,
            generate_on_start: std::env::var("STARFLOW_STUDIO_GENERATE").is_ok_and(|v| v == "1"),
            event_capacity: 64,
        }
    }
}

/// Open the window and block until it is closed.
pub fn run() -> anyhow::Result<()> {
    let options = AppOptions::from_env();
    let native = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("STARFlow Studio")
            .with_inner_size(INITIAL_WINDOW_SIZE)
            .with_min_inner_size([640.0, 420.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "STARFlow Studio",
        native,
        Box::new(move |cc| Ok(Box::new(StudioApp::new(cc, options)))),
    )
    .map_err(|err| {
        anyhow::anyhow!(
            "The window could not be opened: {err}. A desktop session (X11 or Wayland) with a GPU \
             driver or Mesa is needed; use `starflow-studio generate` without one."
        )
    })
}
