//! The real app driven through egui_kittest by widget labels, on a tiny random model: prompt,
//! class, Ctrl+Enter, live progress and preview, the final image, scrubbing every stage, the
//! channel view, export with metadata read back, dropping that PNG to restore settings, the
//! history, cancel then generate again, a model folder that fails to load, persistence.
//!
//! With a wgpu adapter (Mesa lavapipe in CI) the harness also renders frames and checks that
//! they are not blank; without one that half is skipped and says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use starflow_studio::app::app::{ModelState, RunState};
use starflow_studio::app::fixture::{tiny_config, write_model_folder};
use starflow_studio::app::{AppOptions, StudioApp};
use starflow_studio::backend::BackendChoice;
use starflow_studio::image_out::read_png;
use starflow_studio::metadata::GenerationRecord;

/// Generous bound for loading and one tiny CPU generation on a slow, shared CI machine.
const WAIT: Duration = Duration::from_secs(90);

struct Folders {
    _root: tempfile::TempDir,
    model: PathBuf,
    history: PathBuf,
    export: PathBuf,
}

fn folders(side: usize) -> Folders {
    let root = tempfile::tempdir().expect("temp dir");
    let model = root.path().join("model");
    write_model_folder(&model, &tiny_config(side), 11).expect("model folder");
    let history = root.path().join("history");
    let export = root.path().join("export");
    std::fs::create_dir_all(&export).expect("export folder");
    Folders { model, history, export, _root: root }
}

fn options(folders: &Folders) -> AppOptions {
    AppOptions {
        history_folder: folders.history.clone(),
        export_folder: Some(folders.export.clone()),
        model_folder: Some(folders.model.clone()),
        backend: Some(BackendChoice::Cpu),
        generate_on_start: false,
        event_capacity: 64,
    }
}

/// Whether the harness renders with wgpu; says so when it cannot.
fn renders(test: &str) -> bool {
    match starflow_studio::backend::wgpu_adapter_name() {
        Some(name) => {
            eprintln!("{test}: rendering with wgpu adapter {name}");
            true
        }
        None => {
            eprintln!(
                "{test}: no wgpu adapter was found (install mesa-vulkan-drivers); the rendering checks did not run"
            );
            false
        }
    }
}

fn app_harness(
    options: AppOptions,
    render: bool,
    storage: Option<&'static dyn eframe::Storage>,
) -> Harness<'static, StudioApp> {
    let mut builder = Harness::builder().with_size(egui::vec2(1100.0, 720.0));
    if render {
        builder = builder.wgpu();
    }
    builder.build_eframe(move |cc| {
        cc.storage = storage;
        StudioApp::new(cc, options)
    })
}

/// Step frames until `done` holds, calling `watch` on every frame.
fn step_until(
    harness: &mut Harness<'_, StudioApp>,
    what: &str,
    mut done: impl FnMut(&StudioApp) -> bool,
) {
    let started = Instant::now();
    while !done(harness.state()) {
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for {what}; message: {:?}",
            harness.state().message
        );
        harness.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    harness.step();
}

fn run_state(app: &StudioApp) -> Option<RunState> {
    app.run.as_ref().map(|r| r.state.clone())
}

/// The frame is not one flat color.
fn assert_not_blank(harness: &mut Harness<'_, StudioApp>, what: &str) {
    let image = harness.render().expect("renders");
    let first = image.get_pixel(0, 0);
    let differing = image.pixels().filter(|p| *p != first).count();
    assert!(differing > 1000, "{what}: only {differing} pixels differ from the corner");
}

#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn prompt_to_image_to_scrubber_to_export_to_restore() {
    let render = renders("prompt_to_image_to_scrubber_to_export_to_restore");
    let folders = folders(16);
    let mut harness = app_harness(options(&folders), render, None);
    step_until(&mut harness, "the model to load", |app| app.model_info().is_some());
    assert!(
        harness.query_by_label_contains("Device: CPU").is_some(),
        "the status bar shows the device"
    );

    harness.get_by_role_and_label(Role::MultilineTextInput, "Prompt").focus();
    harness.step();
    harness.get_by_role_and_label(Role::MultilineTextInput, "Prompt").type_text("a red fox");
    harness.step();
    assert_eq!(harness.state().settings.prompt, "a red fox");
    assert!(harness.query_by_label_contains("no tokenizer").is_some());

    harness.get_by_role_and_label(Role::ComboBox, "Class").click();
    harness.step();
    harness.step();
    harness.get_by_label("class 2").click();
    harness.step();
    assert_eq!(harness.state().settings.class, Some(2));
    let seed = harness.state().settings.seed;

    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    let mut saw_progress = false;
    let mut saw_preview = false;
    step_until(&mut harness, "the first preview", |app| {
        let run = app.run.as_ref();
        saw_progress |= run.is_some_and(|r| r.status.is_some());
        saw_preview |= run.is_some_and(|r| r.previews_shown > 0);
        saw_preview || run_state(app) == Some(RunState::Finished)
    });
    if run_state(harness.state()) == Some(RunState::Running) {
        assert!(
            harness.query_by_label_contains("tokens ·").is_some(),
            "a progress bar names the block and tokens"
        );
        assert!(harness.query_by_label_contains("Live:").is_some(), "the live preview is shown");
        if render {
            assert_not_blank(&mut harness, "a frame during the run");
        }
    }
    step_until(&mut harness, "the final image", |app| {
        saw_progress |= app.run.as_ref().is_some_and(|r| r.status.is_some());
        saw_preview |= app.run.as_ref().is_some_and(|r| r.previews_shown > 0);
        run_state(app) == Some(RunState::Finished)
    });
    assert!(saw_progress && saw_preview, "progress {saw_progress}, preview {saw_preview}");
    assert!(!harness.state().settings.prompt.contains('\n'), "Ctrl+Enter did not type a newline");
    let app = harness.state();
    let run = app.run.as_ref().expect("a run");
    let image = run.outcome.as_ref().expect("an outcome").image();
    assert_eq!((image.width, image.height), (16, 16));
    let count = run.stages.len();
    assert_eq!(count, 3 + 3, "noise, three blocks, denoised, final");
    assert!(
        harness.query_by_label_contains(&format!("Stage {count}/{count}: final image")).is_some()
    );

    // Scrub back to the noise, one stage at a time, then forward again.
    let mut names = Vec::new();
    for index in (1..=count).rev() {
        let label = format!("Stage {index}/{count}: ");
        let node = harness.get_by_label_contains(&label);
        let accesskit = node.accesskit_node();
        names.push(accesskit.value().or_else(|| accesskit.label()).unwrap_or_default().to_string());
        if index > 1 {
            harness.get_by_label("Previous").click();
            harness.step();
        }
    }
    names.reverse();
    assert!(names[0].ends_with("noise"), "{names:?}");
    assert!(
        names[1].contains("after block 2 (deep)") && names[1].contains("64 tokens"),
        "{names:?}"
    );
    assert!(names[2].contains("after block 1") && names[3].contains("after block 0"), "{names:?}");
    assert!(names[4].ends_with("denoised"), "{names:?}");
    harness.get_by_label("Next").click();
    harness.step();
    assert!(harness.query_by_label_contains(&format!("Stage 2/{count}")).is_some());

    harness.get_by_label("Latent channels").click();
    harness.step();
    assert!(harness.query_by_label_contains("Raw latent channels").is_some());
    if render {
        // The shader needs storage buffers in fragment shaders: every Vulkan, Metal and DX12
        // adapter has them; on an OpenGL-only adapter the app draws the CPU color map instead.
        let native =
            starflow_studio::backend::wgpu_adapter_name().is_some_and(|name| !name.contains("Gl,"));
        if native {
            assert!(harness.state().channel_shader, "the WGSL channel view is installed on wgpu");
        } else if !harness.state().channel_shader {
            eprintln!("OpenGL adapter: the channel view uses its CPU fallback, checked below");
        }
        assert_not_blank(&mut harness, "the channel view");
    }

    // Export through the path field (no dialog in tests) and read the metadata back.
    let export_path = PathBuf::from(harness.state().export_path.clone());
    assert_eq!(export_path.parent(), Some(folders.export.as_path()));
    assert_eq!(
        export_path.file_name().and_then(|n| n.to_str()),
        Some(format!("a-red-fox-{seed}.png").as_str())
    );
    harness.get_by_label("Save to path").click();
    step_until(&mut harness, "the PNG to be written", |_| export_path.is_file());
    let (png, text) = read_png(&std::fs::read(&export_path).expect("reads")).expect("decodes");
    assert_eq!((png.width, png.height), (16, 16));
    let record = GenerationRecord::from_png_text(&text).expect("our JSON chunk");
    assert_eq!((record.prompt.as_str(), record.class, record.seed), ("a red fox", Some(2), seed));
    let parameters = &text.iter().find(|(k, _)| k == "parameters").expect("A1111 chunk").1;
    assert!(
        parameters.starts_with("a red fox\n") && parameters.contains(&format!("Seed: {seed}")),
        "{parameters}"
    );

    harness.get_by_label("Save strip").click();
    let strip = folders.export.join(format!("a-red-fox-{seed}-strip.png"));
    step_until(&mut harness, "the strip to be written", |_| strip.is_file());

    // Change the settings, then drop the PNG to restore them.
    harness.get_by_label("Random seed").click();
    harness.step();
    harness.state_mut().settings.class = None;
    harness.state_mut().settings.prompt.clear();
    assert_ne!(harness.state().settings.seed, seed);
    harness.input_mut().dropped_files.push(Arc::new(Dropped(export_path.clone())));
    step_until(&mut harness, "the settings to be restored", |app| app.settings.seed == seed);
    let settings = &harness.state().settings;
    assert_eq!((settings.prompt.as_str(), settings.class), ("a red fox", Some(2)));
    assert!(harness.query_by_label_contains(&format!("Restored prompt, seed {seed}")).is_some());

    // The result went to the history folder and shows in the gallery.
    step_until(&mut harness, "the history entry", |app| !app.history.is_empty());
    let entries = std::fs::read_dir(&folders.history).expect("history folder").count();
    assert_eq!(entries, 1);
    assert!(
        harness.query_by_label(&format!("seed {seed}")).is_some(),
        "the gallery labels the entry"
    );
}

#[test]
fn escape_cancels_and_the_next_run_finishes() {
    let folders = folders(24);
    let mut harness = app_harness(options(&folders), false, None);
    step_until(&mut harness, "the model to load", |app| app.model_info().is_some());
    harness.get_by_label("Generate").click();
    step_until(&mut harness, "progress", |app| {
        app.run.as_ref().is_some_and(|r| r.status.is_some())
    });
    harness.key_press(egui::Key::Escape);
    step_until(&mut harness, "the cancel", |app| run_state(app) == Some(RunState::Cancelled));
    assert!(harness.query_by_label_contains("Stopped in block").is_some());

    harness.state_mut().settings.sampler = starflow_studio::app::state::SamplerKind::Jacobi;
    // The Jacobi threshold row appears and moves the buttons; lay the frame out again first.
    harness.step();
    harness.get_by_label("Generate").click();
    step_until(&mut harness, "the second run", |app| run_state(app) == Some(RunState::Finished));
}

#[test]
fn a_broken_model_folder_is_explained_and_the_app_keeps_running() {
    let folders = folders(8);
    let empty = folders.model.parent().expect("root").join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let mut harness =
        app_harness(AppOptions { model_folder: Some(empty), ..options(&folders) }, false, None);
    step_until(&mut harness, "the load to fail", |app| {
        matches!(app.model, ModelState::Failed { .. })
    });
    assert!(harness.query_all_by_label_contains("no flow weights").count() >= 1);

    // Type the good folder and load it.
    harness.state_mut().model_folder_text = folders.model.display().to_string();
    harness.get_by_label("Load").click();
    step_until(&mut harness, "the good model", |app| app.model_info().is_some());
}

#[derive(Default)]
struct MemoryStorage(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.lock().expect("not poisoned").get(key).cloned()
    }
    fn set_string(&mut self, key: &str, value: String) {
        self.0.lock().expect("not poisoned").insert(key.to_string(), value);
    }
    fn remove_string(&mut self, key: &str) {
        self.0.lock().expect("not poisoned").remove(key);
    }
    fn flush(&mut self) {}
}

#[test]
fn settings_persist_across_restarts() {
    let folders = folders(8);
    let mut harness = app_harness(options(&folders), false, None);
    step_until(&mut harness, "the model to load", |app| app.model_info().is_some());
    harness.state_mut().settings.prompt = "kept".into();
    harness.state_mut().settings.seed = 1234;
    let mut storage = MemoryStorage::default();
    eframe::App::save(harness.state_mut(), &mut storage);
    drop(harness);

    let storage: &'static MemoryStorage = Box::leak(Box::new(storage));
    let harness =
        app_harness(AppOptions { model_folder: None, ..options(&folders) }, false, Some(storage));
    let settings = &harness.state().settings;
    assert_eq!((settings.prompt.as_str(), settings.seed), ("kept", 1234));
    assert_eq!(settings.model_folder.as_deref(), Some(folders.model.as_path()));
}

/// A tiny text-to-image folder: random flow, the tiny T5 and AutoencoderKL of tests/golden-hf.
fn text_model_folder(root: &Path) -> PathBuf {
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden-hf");
    let model = root.join("text-model");
    let config = starflow_studio::model::FlowConfig::released_flags_at(
        (4, 4, 4),
        48,
        24,
        vec![1, 1, 2],
        (16, 32),
    );
    write_model_folder(&model, &config, 5).expect("model folder");
    for (from, to, names) in [
        ("t5", "text_encoder", &["config.json", "model.safetensors", "tokenizer.json"][..]),
        ("vae", "vae", &["config.json", "diffusion_pytorch_model.safetensors"][..]),
    ] {
        std::fs::create_dir_all(model.join(to)).expect("mkdir");
        for name in names {
            std::fs::copy(hf.join(from).join(name), model.join(to).join(name)).expect("copies");
        }
    }
    model
}

#[test]
fn token_counter_counts_with_the_model_tokenizer_and_warns_when_cut() {
    let root = tempfile::tempdir().expect("temp dir");
    let folders = Folders {
        model: text_model_folder(root.path()),
        history: root.path().join("history"),
        export: root.path().to_path_buf(),
        _root: tempfile::tempdir().expect("temp dir"),
    };
    let mut harness = app_harness(options(&folders), false, None);
    step_until(&mut harness, "the text model to load", |app| app.model_info().is_some());
    let prompt = harness.get_by_role_and_label(Role::MultilineTextInput, "Prompt");
    prompt.focus();
    harness.step();
    harness.get_by_role_and_label(Role::MultilineTextInput, "Prompt").type_text("a red circle");
    harness.step();
    assert!(harness.query_by_label_contains("tokens: ").is_some(), "the counter is shown");
    assert!(
        harness.query_by_label_contains("no tokenizer").is_none(),
        "the model's tokenizer counts"
    );
    assert!(harness.query_by_label_contains("too long").is_none(), "a short prompt is not cut");

    let long = " and a blue square on a gray background".repeat(6);
    harness.get_by_role_and_label(Role::MultilineTextInput, "Prompt").type_text(&long);
    harness.step();
    assert!(
        harness.query_by_label_contains("tokens: 16 / 16").is_some(),
        "a long prompt fills the 16 tokens"
    );
    assert!(harness.query_by_label_contains("too long").is_some(), "the cut is shown");

    // The text model generates through T5, the flow and the autoencoder to a 32x32 image.
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    step_until(&mut harness, "the final image", |app| run_state(app) == Some(RunState::Finished));
}
