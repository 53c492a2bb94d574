//! Flow invariants on tiny random models: the reverse inverts the forward, Jacobi with a tight
//! threshold is the sequential sampler, the log-determinant is the Jacobian's, and the sampler
//! reports progress, partial latents and cancellation as documented.

use std::ops::ControlFlow;

use burn::tensor::{Device, Tensor};
use starflow_studio::model::config::{Conditioning, PositionKind, ScaleKind, SeqOrder};
use starflow_studio::model::noise::standard_normal;
use starflow_studio::model::{
    Condition, Flow, FlowConfig, Guidance, GuidanceRule, NoObserver, Progress, SampleError,
    SampleObserver, Sampler,
};

/// f32 round trip through a few small blocks: the official f32 run recovers its noise to
/// 4.4e-6 on the t2i golden config; ours gets a little more room for random weights.
const ROUNDTRIP_TOLERANCE: f32 = 2e-5;
/// Jacobi iterated past `chunk + 1` sweeps is exact up to f32 rounding along the chain.
const JACOBI_EXACT_TOLERANCE: f32 = 2e-5;
/// log|det J| from 8 autodiff gradient rows and an f64 LU against the flow's own sum.
const LOGDET_TOLERANCE: f64 = 1e-4;

fn text_config() -> FlowConfig {
    FlowConfig::released_flags_at((2, 4, 6), 48, 24, vec![1, 2, 2], (3, 5))
}

fn shift_config() -> FlowConfig {
    FlowConfig {
        sos: false,
        scale: ScaleKind::Exp,
        soft_clip: 0.0,
        final_norm: false,
        seq_order: SeqOrder::R2L,
        condition_deep_only: false,
        ..text_config()
    }
}

fn tarflow_config() -> FlowConfig {
    FlowConfig {
        latent_channels: 2,
        latent_height: 4,
        latent_width: 4,
        patch_size: 2,
        patch_order: starflow_studio::model::config::PatchOrder::ChannelMajor,
        width: 16,
        head_dim: 8,
        layers_per_block: vec![1, 1],
        sos: false,
        scale: ScaleKind::Exp,
        soft_clip: 0.0,
        final_norm: false,
        positions: PositionKind::Learned,
        seq_order: SeqOrder::R2L,
        conditioning: Conditioning::ClassEmbedding { num_classes: 3 },
        text_len: 0,
        text_dim: 0,
        condition_deep_only: false,
        guidance_rule: GuidanceRule::Linear,
        default_guidance: 0.0,
        ..FlowConfig::starflow_3b_t2i_256()
    }
}

fn condition_for(config: &FlowConfig, batch: usize, device: &Device) -> Condition {
    match config.conditioning {
        Conditioning::Text => {
            Condition::Text(standard_normal([batch, config.text_len, config.text_dim], 98, device))
        }
        Conditioning::ClassEmbedding { .. } | Conditioning::OneHotClass { .. } => {
            Condition::Labels((0..batch).map(|i| Some(i % 2)).collect())
        }
        Conditioning::None => Condition::Unconditional { batch },
    }
}

fn max_abs_diff(a: &Tensor<4>, b: &Tensor<4>) -> f32 {
    (a.clone() - b.clone()).abs().max().into_scalar()
}

fn latent(config: &FlowConfig, batch: usize, device: &Device) -> Tensor<4> {
    standard_normal(
        [batch, config.latent_channels, config.latent_height, config.latent_width],
        99,
        device,
    )
}

#[test]
fn reverse_of_forward_returns_the_input() {
    let device = Device::flex();
    for config in [text_config(), shift_config(), tarflow_config()] {
        config.validate().expect("test configs are valid");
        let (flow, _) = Flow::random(&config, 7, &device);
        let x = latent(&config, 2, &device);
        let condition = condition_for(&config, 2, &device);
        let z = flow.forward(x.clone(), &condition).z;
        let back = flow
            .sample(z, &condition, None, &Guidance::off(), Sampler::Sequential, &mut NoObserver)
            .expect("sampling runs");
        let err = max_abs_diff(back.result(), &x);
        let scale: f32 = x.clone().abs().max().into_scalar();
        let z_scale: f32 = flow.forward(x.clone(), &condition).z.abs().max().into_scalar();
        eprintln!("{:?}: round trip error {err}, max |x| {scale}, max |z| {z_scale}", config.scale);
        assert!(err < ROUNDTRIP_TOLERANCE, "{:?}: round trip error {err}", config.scale);
    }
}

#[test]
fn jacobi_with_tight_threshold_equals_sequential() {
    let device = Device::flex();
    let config = text_config();
    let (flow, _) = Flow::random(&config, 11, &device);
    let noise = latent(&config, 2, &device);
    let condition = condition_for(&config, 2, &device);
    let null = Condition::Text(Tensor::zeros([2, config.text_len, config.text_dim], &device));
    for weight in [0.0, 2.0] {
        let guidance = Guidance::new(weight, GuidanceRule::Gaussian);
        let seq = flow
            .sample(
                noise.clone(),
                &condition,
                Some(&null),
                &guidance,
                Sampler::Sequential,
                &mut NoObserver,
            )
            .expect("sequential");
        let sampler = Sampler::Jacobi { chunk: 5, threshold: 1e-14, max_iterations: 8 };
        let jac = flow
            .sample(noise.clone(), &condition, Some(&null), &guidance, sampler, &mut NoObserver)
            .expect("jacobi");
        for (k, (a, b)) in seq.latents.iter().zip(&jac.latents).enumerate() {
            let err = max_abs_diff(a, b);
            assert!(err < JACOBI_EXACT_TOLERANCE, "guidance {weight}, latent {k}: {err}");
        }
        assert!(jac.jacobi_iterations.iter().all(|&n| n <= 8));
    }
}

/// log|det| of a square matrix by LU with partial pivoting, in f64.
fn log_abs_det(mut m: Vec<Vec<f64>>) -> f64 {
    let n = m.len();
    let mut total = 0.0;
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs())).expect("rows");
        m.swap(col, pivot);
        let p = m[col][col];
        total += p.abs().ln();
        for row in col + 1..n {
            let factor = m[row][col] / p;
            for k in col..n {
                m[row][k] -= factor * m[col][k];
            }
        }
    }
    total
}

#[test]
fn logdet_matches_brute_force_jacobian() {
    let device = Device::flex();
    let config = FlowConfig { latent_height: 2, latent_width: 2, ..text_config() };
    let (flow, _) = Flow::random(&config, 3, &device);
    let x = latent(&config, 1, &device);
    let condition = condition_for(&config, 1, &device);
    let dims = config.latent_channels * 4;

    let mut jacobian = Vec::with_capacity(dims);
    for output in 0..dims {
        let input = x.clone().autodiff().require_grad();
        let z = flow.forward(input.clone(), &condition).z.reshape([dims]);
        let picked = z.narrow(0, output, 1).sum();
        let grads = picked.backward();
        let row =
            input.grad(&grads).expect("gradient").inner().try_into_vec_as::<f32>().expect("reads");
        jacobian.push(row.into_iter().map(f64::from).collect::<Vec<_>>());
    }
    let brute = log_abs_det(jacobian);
    let ours: f32 = flow.forward(x, &condition).logdet_total().into_scalar();
    assert!((brute - ours as f64).abs() < LOGDET_TOLERANCE, "brute force {brute}, flow {ours}");
}

struct Recorder {
    seen: Vec<Progress>,
    stop_after: Option<usize>,
    partial_at: usize,
    partial: Option<(Progress, Tensor<4>)>,
    blocks_done: Vec<usize>,
}

impl SampleObserver for Recorder {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        self.seen.push(progress);
        match self.stop_after {
            Some(n) if self.seen.len() >= n => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }

    fn wants_partial(&mut self, progress: &Progress) -> bool {
        progress.order == 0 && progress.done == self.partial_at
    }

    fn partial(&mut self, progress: &Progress, latent: Tensor<4>) {
        self.partial = Some((*progress, latent));
    }

    fn block_done(&mut self, _order: usize, block: usize, _latent: &Tensor<4>) {
        self.blocks_done.push(block);
    }
}

#[test]
fn progress_partial_latent_and_block_order_are_reported() {
    let device = Device::flex();
    let config = text_config();
    let (flow, _) = Flow::random(&config, 5, &device);
    let noise = latent(&config, 1, &device);
    let condition = condition_for(&config, 1, &device);
    let mut recorder = Recorder {
        seen: Vec::new(),
        stop_after: None,
        partial_at: 7,
        partial: None,
        blocks_done: Vec::new(),
    };
    let out = flow
        .sample(
            noise.clone(),
            &condition,
            None,
            &Guidance::off(),
            Sampler::Sequential,
            &mut recorder,
        )
        .expect("runs");
    let tokens = config.tokens();
    assert_eq!(recorder.seen.len(), tokens * config.num_blocks(), "one report per token per block");
    assert_eq!(recorder.blocks_done, vec![2, 1, 0], "deep block first");
    assert!(recorder.seen.iter().all(|p| p.tokens == tokens && p.done <= tokens));

    // The deep block is not flipped (L2R, 3 blocks: block 2 even => flipped). Either way the
    // partial latent agrees with the block output on finished tokens and with the noise elsewhere.
    let (progress, partial) = recorder.partial.expect("a partial latent was built");
    assert_eq!(progress.done, 7);
    let deep_out = flow.patchify(out.latents[1].clone());
    let start = flow.patchify(noise);
    let partial = flow.patchify(partial);
    let flipped = config.block_flipped(config.deep_index());
    let order: Vec<usize> =
        if flipped { (0..tokens).rev().collect() } else { (0..tokens).collect() };
    for (rank, &token) in order.iter().enumerate() {
        let expected = if rank < 7 { &deep_out } else { &start };
        let err: f32 = (partial.clone().narrow(1, token, 1) - expected.clone().narrow(1, token, 1))
            .abs()
            .max()
            .into_scalar();
        assert!(err < 1e-6, "token {token} (rank {rank}) differs by {err}");
    }
}

#[test]
fn cancelling_stops_within_one_token() {
    let device = Device::flex();
    let config = text_config();
    let (flow, _) = Flow::random(&config, 5, &device);
    let mut recorder = Recorder {
        seen: Vec::new(),
        stop_after: Some(3),
        partial_at: usize::MAX,
        partial: None,
        blocks_done: Vec::new(),
    };
    let result = flow.sample(
        latent(&config, 1, &device),
        &condition_for(&config, 1, &device),
        None,
        &Guidance::off(),
        Sampler::Sequential,
        &mut recorder,
    );
    assert_eq!(result.err(), Some(SampleError::Cancelled(starflow_studio::model::Cancelled)));
    assert_eq!(recorder.seen.len(), 3, "no token step ran after the stop");
}

#[test]
fn guidance_without_null_condition_is_refused() {
    let device = Device::flex();
    let config = text_config();
    let (flow, _) = Flow::random(&config, 5, &device);
    let result = flow.sample(
        latent(&config, 1, &device),
        &condition_for(&config, 1, &device),
        None,
        &Guidance::new(2.0, GuidanceRule::Gaussian),
        Sampler::Sequential,
        &mut NoObserver,
    );
    assert_eq!(result.err(), Some(SampleError::NoNullCondition));
}
