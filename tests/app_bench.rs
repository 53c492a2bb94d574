//! UI benchmark (issue #5), printed as a table: time from Generate to the first preview on
//! screen, and the UI thread's work per frame while the worker samples, for the real app in
//! egui_kittest on tiny random models (CPU backend, sequential sampler, fixed seed).
//!
//! `cargo test --test app_bench -- --nocapture` (dev profile: absolute numbers are slower than
//! a release build). `STARFLOW_BENCH_RUNS` sets the measured runs per size (default 3), after
//! one warm-up run.

use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use starflow_studio::app::app::RunState;
use starflow_studio::app::fixture::{tiny_config, write_model_folder};
use starflow_studio::app::{AppOptions, StudioApp};
use starflow_studio::backend::BackendChoice;

const WAIT: Duration = Duration::from_secs(300);
/// Latent sides measured: 64 and 256 tokens per block.
const SIDES: [usize; 2] = [16, 32];

struct Row {
    side: usize,
    tokens: usize,
    first_preview_ms: Vec<f64>,
    run_secs: Vec<f64>,
    frame_ms: Vec<f64>,
    step_ms: Vec<f64>,
    previews: Vec<usize>,
}

fn percentile(values: &[f64], fraction: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn measure(side: usize, runs: usize) -> Row {
    let root = tempfile::tempdir().expect("temp dir");
    let model = root.path().join("model");
    let config = tiny_config(side);
    write_model_folder(&model, &config, 1).expect("model folder");
    let options = AppOptions {
        history_folder: root.path().join("history"),
        export_folder: Some(root.path().to_path_buf()),
        model_folder: Some(model),
        backend: Some(BackendChoice::Cpu),
        generate_on_start: false,
        event_capacity: 64,
    };
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1100.0, 720.0))
        .build_eframe(move |cc| StudioApp::new(cc, options));
    let started = Instant::now();
    while harness.state().model_info().is_none() {
        assert!(started.elapsed() < WAIT, "the model did not load");
        harness.step();
        std::thread::sleep(Duration::from_millis(2));
    }

    let mut row = Row {
        side,
        tokens: config.tokens(),
        first_preview_ms: Vec::new(),
        run_secs: Vec::new(),
        frame_ms: Vec::new(),
        step_ms: Vec::new(),
        previews: Vec::new(),
    };
    for run in 0..=runs {
        harness.state_mut().settings.seed = 7;
        harness.state_mut().generate();
        let requested = Instant::now();
        let mut frames = Vec::new();
        let mut steps = Vec::new();
        loop {
            // About 60 frames per second, as a window would draw them.
            std::thread::sleep(Duration::from_millis(16));
            let step_started = Instant::now();
            harness.step();
            steps.push(step_started.elapsed().as_secs_f64() * 1e3);
            frames.push(harness.state().frame_stats.last_ui_secs * 1e3);
            let state = harness.state().run.as_ref().map(|r| r.state.clone());
            if state == Some(RunState::Finished) {
                break;
            }
            assert!(
                requested.elapsed() < WAIT && state != Some(RunState::Cancelled),
                "the run did not finish: {state:?}"
            );
        }
        if run == 0 {
            continue;
        }
        let view = harness.state().run.as_ref().expect("a run");
        row.first_preview_ms.push(view.first_preview_secs.map_or(f64::NAN, |s| s * 1e3));
        row.run_secs.push(requested.elapsed().as_secs_f64());
        row.previews.push(view.previews_shown);
        row.frame_ms.extend(frames);
        row.step_ms.extend(steps);
    }
    row
}

#[test]
fn bench_ui_prints_time_to_first_preview_and_frame_work() {
    let runs: usize =
        std::env::var("STARFLOW_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let rows: Vec<Row> = SIDES.iter().map(|&side| measure(side, runs)).collect();

    println!(
        "\nSTARFlow Studio UI benchmark: CPU backend, sequential sampler, {runs} runs after a warm-up (dev build)"
    );
    println!(
        "{:>8} {:>7} {:>16} {:>9} {:>10} {:>15} {:>15} {:>15}",
        "latent",
        "tokens",
        "first preview",
        "run",
        "previews",
        "UI ms/frame",
        "UI p95 ms",
        "step ms/frame"
    );
    for row in &rows {
        let previews = row.previews.iter().sum::<usize>() as f64 / row.previews.len().max(1) as f64;
        println!(
            "{:>8} {:>7} {:>13.1} ms {:>7.2} s {:>10.0} {:>15.2} {:>15.2} {:>15.2}",
            format!("{0}x{0}", row.side),
            row.tokens,
            percentile(&row.first_preview_ms, 0.5),
            percentile(&row.run_secs, 0.5),
            previews,
            percentile(&row.frame_ms, 0.5),
            percentile(&row.frame_ms, 0.95),
            percentile(&row.step_ms, 0.5),
        );
    }
    println!(
        "first preview: Generate to the first preview texture (median); UI ms/frame: the app's own draw and event work"
    );
    println!(
        "(median and 95th percentile); step ms/frame: the whole egui frame in the harness, layout included."
    );

    for row in &rows {
        assert!(row.first_preview_ms.iter().all(|ms| ms.is_finite()), "every run showed a preview");
    }
}
