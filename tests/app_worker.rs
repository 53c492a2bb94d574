//! The generation worker without a window: job order, cancel latency in token steps, dropped
//! previews never dropping a final event, errors and panics reported as events.

use std::path::Path;
use std::time::{Duration, Instant};

use starflow_studio::app::fixture::{tiny_config, write_model_folder};
use starflow_studio::app::worker::{Event, JobId, ModelInfo, Worker, WorkerOptions};
use starflow_studio::backend::BackendChoice;
use starflow_studio::model::{Guidance, GuidanceRule, Sampler};
use starflow_studio::pipeline::{Denoise, GenerateRequest};

/// Generous bound for one tiny CPU generation on a slow, shared CI machine.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

fn request(seed: u64, class: Option<usize>) -> GenerateRequest {
    GenerateRequest {
        prompt: String::new(),
        negative_prompt: None,
        class,
        seed,
        guidance: Guidance::new(1.0, GuidanceRule::Gaussian),
        sampler: Sampler::Sequential,
        denoise: Denoise::Score,
    }
}

fn loaded_worker(folder: &Path, options: WorkerOptions) -> (Worker, ModelInfo) {
    let worker = Worker::spawn(options).expect("worker starts");
    worker.load(folder, BackendChoice::Cpu);
    loop {
        match worker.recv_timeout(EVENT_TIMEOUT).expect("the worker answers the load") {
            Event::Loaded(info) => return (worker, *info),
            Event::LoadFailed { message, .. } => panic!("load failed: {message}"),
            _ => {}
        }
    }
}

fn model(side: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let folder = dir.path().join("model");
    write_model_folder(&folder, &tiny_config(side), 3).expect("model folder");
    (dir, folder)
}

/// Events until `stop` says so.
fn collect_until(worker: &Worker, mut stop: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let event = worker.recv_timeout(EVENT_TIMEOUT).expect("the worker keeps answering");
        let done = stop(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}

fn job_of(event: &Event) -> Option<JobId> {
    match event {
        Event::Started { id, .. }
        | Event::Progress { id, .. }
        | Event::Preview { id, .. }
        | Event::Stage { id, .. }
        | Event::Finished { id, .. }
        | Event::Cancelled { id, .. } => Some(*id),
        Event::Failed { id, .. } => *id,
        _ => None,
    }
}

#[test]
fn jobs_run_in_the_order_they_were_sent() {
    let (_dir, folder) = model(8);
    let (mut worker, info) = loaded_worker(&folder, WorkerOptions::default());
    let ids: Vec<JobId> = (0..3).map(|seed| worker.generate(request(seed, Some(1)), 1)).collect();
    let mut finished = 0;
    let events = collect_until(&worker, |e| {
        finished += matches!(e, Event::Finished { .. }) as usize;
        finished == 3
    });

    let order: Vec<JobId> = events.iter().filter_map(job_of).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "no event of a later job comes before the end of an earlier one");
    let seeds: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Finished { outcome, .. } => Some(outcome.request.seed),
            _ => None,
        })
        .collect();
    assert_eq!(seeds, vec![0, 1, 2]);
    assert_eq!(order.first(), ids.first());

    let stages = events.iter().find_map(|e| match e {
        Event::Finished { outcome, .. } => Some(outcome.stages.len()),
        _ => None,
    });
    assert_eq!(
        stages,
        Some(info.config.num_blocks() + 3),
        "noise, each block, denoised, final image"
    );
}

#[test]
fn a_batch_uses_consecutive_seeds() {
    let (_dir, folder) = model(8);
    let (mut worker, _) = loaded_worker(&folder, WorkerOptions::default());
    worker.generate(request(41, None), 2);
    let mut seeds = Vec::new();
    collect_until(&worker, |e| {
        if let Event::Finished { outcome, .. } = e {
            seeds.push((outcome.index, outcome.request.seed));
        }
        seeds.len() == 2
    });
    assert_eq!(seeds, vec![(0, 41), (1, 42)]);
}

#[test]
fn cancel_stops_within_one_token_step_and_frees_the_worker() {
    // 16x16 latent, patch 2: 64 tokens per block, 192 sequential steps in all.
    let (_dir, folder) = model(16);
    let (mut worker, _) = loaded_worker(&folder, WorkerOptions::default());
    let first = worker.generate(request(5, Some(0)), 1);
    collect_until(
        &worker,
        |e| matches!(e, Event::Progress { status, .. } if status.progress.done >= 3),
    );

    worker.cancel();
    let steps_at_cancel = worker.steps_taken();
    let events =
        collect_until(&worker, |e| matches!(e, Event::Cancelled { .. } | Event::Finished { .. }));
    let steps_after = worker.steps_taken() - steps_at_cancel;
    eprintln!("cancel latency: {steps_after} token step(s) after the cancel");
    assert!(steps_after <= 1, "{steps_after} token steps ran after the cancel");
    match events.last() {
        Some(Event::Cancelled { id, status }) => {
            assert_eq!(*id, first);
            let status = status.as_ref().expect("it stopped mid-run");
            assert!(status.progress.done < status.progress.tokens || status.progress.order < 2);
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }

    let second = worker.generate(request(6, Some(0)), 1);
    let events =
        collect_until(&worker, |e| matches!(e, Event::Finished { .. } | Event::Failed { .. }));
    assert!(
        matches!(events.last(), Some(Event::Finished { id, .. }) if *id == second),
        "{:?}",
        events.last()
    );
}

#[test]
fn a_slow_ui_loses_previews_but_never_a_result() {
    let (_dir, folder) = model(8);
    let options =
        WorkerOptions { event_capacity: 4, preview_interval: Duration::ZERO, notify: None };
    let (mut worker, info) = loaded_worker(&folder, options);
    worker.generate(request(1, Some(2)), 1);
    worker.generate(request(2, Some(2)), 1);

    // The UI does not read for a while; the worker fills the channel and waits.
    std::thread::sleep(Duration::from_millis(1500));
    let mut finished = Vec::new();
    let mut previews = 0;
    let mut stages = 0;
    collect_until(&worker, |e| {
        match e {
            Event::Preview { .. } => previews += 1,
            Event::Stage { .. } => stages += 1,
            Event::Finished { id, outcome } => finished.push((*id, outcome.stages.len())),
            _ => {}
        }
        finished.len() == 2
    });
    let steps_per_image = info.config.num_blocks() * info.config.tokens();
    eprintln!("{previews} previews arrived for {} token steps", 2 * steps_per_image);
    assert!(previews < 2 * steps_per_image, "some previews were dropped");
    assert_eq!(
        finished.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![info.config.num_blocks() + 3; 2]
    );
    assert_eq!(stages, 2 * (info.config.num_blocks() + 1), "every live stage arrived");
}

#[test]
fn errors_and_panics_arrive_as_events_and_the_worker_goes_on() {
    let (_dir, folder) = model(8);
    let mut worker = Worker::spawn(WorkerOptions::default()).expect("worker starts");

    let early = worker.generate(request(0, None), 1);
    let events = collect_until(&worker, |e| matches!(e, Event::Failed { .. }));
    match events.last() {
        Some(Event::Failed { id, message }) => {
            assert_eq!(*id, Some(early));
            assert!(message.contains("No model is loaded"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let empty = tempfile::tempdir().expect("temp dir");
    worker.load(empty.path(), BackendChoice::Cpu);
    let events =
        collect_until(&worker, |e| matches!(e, Event::LoadFailed { .. } | Event::Loaded(_)));
    match events.last() {
        Some(Event::LoadFailed { message, .. }) => {
            assert!(message.contains("no flow weights"), "{message}")
        }
        other => panic!("{other:?}"),
    }

    worker.load(&folder, BackendChoice::Cpu);
    collect_until(&worker, |e| matches!(e, Event::Loaded(_)));
    worker.generate(request(0, Some(99)), 1);
    let events =
        collect_until(&worker, |e| matches!(e, Event::Failed { .. } | Event::Finished { .. }));
    match events.last() {
        Some(Event::Failed { message, .. }) => {
            assert!(message.contains("class 99 does not exist"), "{message}")
        }
        other => panic!("{other:?}"),
    }

    worker.send_panic("boom in a test");
    let events = collect_until(&worker, |e| matches!(e, Event::Failed { .. }));
    match events.last() {
        Some(Event::Failed { id: None, message }) => {
            assert!(message.contains("crashed") && message.contains("boom in a test"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    worker.generate(request(0, Some(1)), 1);
    let events =
        collect_until(&worker, |e| matches!(e, Event::Failed { .. } | Event::Finished { .. }));
    assert!(matches!(events.last(), Some(Event::Finished { .. })), "the model survived the panic");
}

#[test]
fn shutting_down_mid_run_joins_promptly() {
    let (_dir, folder) = model(16);
    let (mut worker, _) =
        loaded_worker(&folder, WorkerOptions { event_capacity: 4, ..WorkerOptions::default() });
    worker.generate(request(9, Some(0)), 4);
    collect_until(&worker, |e| matches!(e, Event::Progress { .. }));
    let started = Instant::now();
    worker.shutdown();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "shutdown took {waited:?}");
}
