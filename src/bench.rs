//! `starflow-studio bench`: sampling speed of a tiny random STARFlow, printed as a table.
//!
//! Reports time per network call (one token for the sequential sampler, one 16-token chunk
//! iteration for Jacobi) at several positions of the deep and a shallow block, time per
//! block and per image, for the sequential and the Jacobi sampler, on each backend asked for.
//! Every timing syncs the device before the clock stops (wgpu runs lazily).

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::Device;

use crate::model::noise::standard_normal;
use crate::model::{
    Condition, Flow, FlowConfig, Guidance, GuidanceRule, Progress, SampleObserver, Sampler,
};

/// The benchmark model: the released flag set at a laptop-friendly size (16x16 latent, 256
/// tokens, width 128, 2 heads of 64, blocks [2, 2, 6]), guidance on as in real use.
pub fn bench_config() -> FlowConfig {
    FlowConfig::released_flags_at((4, 16, 16), 128, 64, vec![2, 2, 6], (16, 32))
}

struct Timer {
    device: Device,
    last: Instant,
    /// (order, done tokens, seconds since the previous report)
    steps: Vec<(usize, usize, f64)>,
    block_start: Instant,
    blocks: Vec<(usize, f64)>,
}

impl SampleObserver for Timer {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        // A failed sync would surface again at the final read; timing continues regardless.
        let _ = self.device.sync();
        let now = Instant::now();
        self.steps.push((progress.order, progress.done, (now - self.last).as_secs_f64()));
        self.last = now;
        ControlFlow::Continue(())
    }

    fn block_done(&mut self, _order: usize, block: usize, _latent: &burn::tensor::Tensor<4>) {
        let _ = self.device.sync();
        let now = Instant::now();
        self.blocks.push((block, (now - self.block_start).as_secs_f64()));
        self.block_start = now;
        self.last = now;
    }
}

/// One measured run.
pub struct BenchRow {
    pub backend: String,
    pub sampler: String,
    pub per_token_ms: Vec<(usize, f64)>,
    pub per_block_s: Vec<(usize, f64)>,
    pub image_s: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Run the benchmark on `device` for both samplers.
pub fn run(device: &Device, backend: &str) -> Vec<BenchRow> {
    let config = bench_config();
    let (flow, _) = Flow::random(&config, 1, device);
    let text = Condition::Text(standard_normal([1, config.text_len, config.text_dim], 2, device));
    let null =
        Condition::Text(burn::tensor::Tensor::zeros([1, config.text_len, config.text_dim], device));
    let guidance = Guidance::new(3.0, GuidanceRule::Gaussian);
    let tokens = config.tokens();
    let mut rows = Vec::new();
    for (name, sampler) in
        [("sequential", Sampler::Sequential), ("jacobi 16/1e-3", Sampler::official_jacobi())]
    {
        let noise = standard_normal([1, 4, 16, 16], 3, device);
        // Warm-up: kernels compile and autotune on the first call.
        let warm = Sampler::Jacobi { chunk: 16, threshold: 1.0, max_iterations: 1 };
        let _ = flow.sample(
            noise.clone(),
            &text,
            Some(&null),
            &guidance,
            warm,
            &mut crate::model::NoObserver,
        );
        let _ = device.sync();

        let now = Instant::now();
        let mut timer = Timer {
            device: device.clone(),
            last: now,
            steps: Vec::new(),
            block_start: now,
            blocks: Vec::new(),
        };
        let started = Instant::now();
        let out = flow.sample(noise, &text, Some(&null), &guidance, sampler, &mut timer);
        let _ = device.sync();
        let image_s = started.elapsed().as_secs_f64();
        if let Err(err) = out {
            log::error!("benchmark run failed: {err}");
            continue;
        }
        // Per-token time of the deep block (order 0) around each probed position.
        let per_token_ms = [1usize, tokens / 4, tokens / 2, 3 * tokens / 4, tokens]
            .iter()
            .map(|&pos| {
                let near: Vec<f64> = timer
                    .steps
                    .iter()
                    .filter(|(order, done, _)| *order == 0 && done.abs_diff(pos) <= 4)
                    .map(|(_, _, s)| s * 1e3)
                    .collect();
                (pos, median(near))
            })
            .collect();
        rows.push(BenchRow {
            backend: backend.to_string(),
            sampler: name.to_string(),
            per_token_ms,
            per_block_s: timer.blocks,
            image_s,
        });
    }
    rows
}

/// The table as text.
pub fn format_rows(rows: &[BenchRow]) -> String {
    let config = bench_config();
    let mut out = format!(
        "tiny STARFlow: {} tokens, width {}, blocks {:?}, guidance 3 (doubled deep batch)\n",
        config.tokens(),
        config.width,
        config.layers_per_block
    );
    out.push_str("backend | sampler | deep-block ms per call near token 1, N/4, N/2, 3N/4, N | s per block (deep first) | s per image\n");
    out.push_str("--- | --- | --- | --- | ---\n");
    for row in rows {
        let tokens: Vec<String> =
            row.per_token_ms.iter().map(|(_, ms)| format!("{ms:.2}")).collect();
        let blocks: Vec<String> =
            row.per_block_s.iter().map(|(b, s)| format!("b{b} {s:.2}")).collect();
        out.push_str(&format!(
            "{} | {} | {} | {} | {:.2}\n",
            row.backend,
            row.sampler,
            tokens.join(" / "),
            blocks.join(", "),
            row.image_s
        ));
    }
    out
}
