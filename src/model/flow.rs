//! The stack of flow blocks: loading, the forward (data -> noise) pass with log-likelihood,
//! the sequential and block-wise Jacobi samplers, and both denoisers.

use std::ops::ControlFlow;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use super::attention::{Attention, Mlp, RmsNorm, TransformerLayer};
use super::block::{
    AffineParams, BlockCondition, BlockForward, BlockSpec, DenoiserBlock, FlowBlock, Trace,
    one_hot_labels,
};
use super::config::{Conditioning, FlowConfig, GuidanceRule, PatchOrder, PositionKind};
use super::guidance::{Guidance, gaussian_rule, linear_rule};
use super::rope::{RopeTable, rope_table};
use crate::checkpoint::{
    CheckpointError, NamedTensor, RandomWeights, TensorFile, WeightLoader, is_deprecated_buffer,
};

/// LayerNorm epsilon of every official transformer layer.
const LAYER_NORM_EPS: f64 = 1e-5;
/// Layers of the official learned denoiser (`NonCausalBlock(num_layers=8)`).
const DENOISER_LAYERS: usize = 8;
/// The learned denoiser's hard-coded step (`noise_std_const`), whatever `noise_std` is.
pub const LEARNED_DENOISER_STEP: f64 = 0.3;
/// `proj_out` weight scale of random models, as in the golden t2i config: large enough that
/// the flow is far from the identity, small enough that sampling stays bounded.
const RANDOM_PROJ_OUT_FACTOR: f32 = 0.5;
const RANDOM_PROJ_OUT_FACTOR_UNCLIPPED: f32 = 0.15;

/// What a batch is conditioned on.
#[derive(Debug, Clone)]
pub enum Condition {
    /// No condition, for `batch` samples.
    Unconditional { batch: usize },
    /// Text vectors `[batch, text_len, text_dim]`, padded positions zero.
    Text(Tensor<3>),
    /// Class labels; `None` is the null class.
    Labels(Vec<Option<usize>>),
}

impl Condition {
    pub fn batch(&self) -> usize {
        match self {
            Condition::Unconditional { batch } => *batch,
            Condition::Text(text) => text.dims()[0],
            Condition::Labels(labels) => labels.len(),
        }
    }

    /// This condition followed by `other` along the batch.
    fn concat(&self, other: &Condition) -> Condition {
        match (self, other) {
            (Condition::Text(a), Condition::Text(b)) => {
                Condition::Text(Tensor::cat(vec![a.clone(), b.clone()], 0))
            }
            (Condition::Labels(a), Condition::Labels(b)) => {
                Condition::Labels(a.iter().chain(b.iter()).copied().collect())
            }
            (a, b) => Condition::Unconditional { batch: a.batch() + b.batch() },
        }
    }
}

/// Result of the forward pass.
#[derive(Debug, Clone)]
pub struct FlowForward {
    /// The noise-side latent, NCHW.
    pub z: Tensor<4>,
    /// Tokens `[batch, tokens, patch_dim]` (raster): index 0 is the input, `k >= 1` after block `k - 1`.
    pub outputs: Vec<Tensor<3>>,
    /// Per block, `-ln sigma` per element in that block's own order.
    pub logdets: Vec<Tensor<3>>,
    /// The deep block's text stream after its last layer, if it has text.
    pub text_out: Option<Tensor<3>>,
}

impl FlowForward {
    /// Sum of all log-determinants per sample, `[batch]`.
    pub fn logdet_total(&self) -> Tensor<1> {
        let sums: Vec<Tensor<1>> =
            self.logdets.iter().map(|l| l.clone().sum_dims_squeeze::<1, usize>(&[1, 2])).collect();
        sums.into_iter().reduce(|a, b| a + b).expect("a flow has at least one block")
    }

    /// Negative log-likelihood per sample without the Gaussian constant:
    /// `0.5 * sum(z^2) - sum(logdets)`, `[batch]`.
    pub fn nll_sum(&self) -> Tensor<1> {
        let [batch, ..] = self.z.dims();
        let energy =
            self.z.clone().square().reshape([batch as i64, -1]).sum_dim(1).squeeze_dim::<1>(1);
        energy.mul_scalar(0.5) - self.logdet_total()
    }

    /// The official training loss: batch mean of `0.5 mean(z^2) - sum_blocks mean(logdet)`.
    pub fn loss(&self) -> Tensor<1> {
        let dims = self.z.dims();
        let per_sample = (dims[1] * dims[2] * dims[3]) as f64;
        self.nll_sum().div_scalar(per_sample).mean()
    }

    /// Bits per dimension per sample, with the Gaussian constant: `nll / (D ln 2)`.
    pub fn bits_per_dim(&self) -> Tensor<1> {
        let dims = self.z.dims();
        let per_sample = (dims[1] * dims[2] * dims[3]) as f64;
        let constant = 0.5 * per_sample * (2.0 * std::f64::consts::PI).ln();
        self.nll_sum().add_scalar(constant).div_scalar(per_sample * std::f64::consts::LN_2)
    }
}

/// How to invert each block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Exact: one token per network call, KV-cached.
    Sequential,
    /// Block-wise Jacobi (official `MetaBlock.jacobi`): chunks of `chunk` tokens iterated until
    /// `mean((new - old)^2) / mean(new^2) < threshold` or `max_iterations`.
    Jacobi { chunk: usize, threshold: f32, max_iterations: usize },
}

impl Sampler {
    /// The settings of the official text-to-image script.
    pub fn official_jacobi() -> Self {
        Sampler::Jacobi { chunk: 16, threshold: 0.001, max_iterations: 32 }
    }
}

/// Where a sampling run stands, reported after every token (sequential) or iteration (Jacobi).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Position in the inversion order (0 = the deep block).
    pub order: usize,
    /// `blocks[block]` being inverted.
    pub block: usize,
    /// Tokens of this block finished.
    pub done: usize,
    pub tokens: usize,
    /// Network calls made in this block so far.
    pub calls: usize,
}

/// Receives progress and may stop the run.
pub trait SampleObserver {
    /// Called after each step; `Break` cancels the run.
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        let _ = progress;
        ControlFlow::Continue(())
    }

    /// Whether to build the partially filled latent now (it costs a copy).
    fn wants_partial(&mut self, progress: &Progress) -> bool {
        let _ = progress;
        false
    }

    /// The latent with finished tokens of the running block and its input noise elsewhere, NCHW.
    fn partial(&mut self, progress: &Progress, latent: Tensor<4>) {
        let _ = (progress, latent);
    }

    /// A block finished; `latent` is its output, NCHW.
    fn block_done(&mut self, order: usize, block: usize, latent: &Tensor<4>) {
        let _ = (order, block, latent);
    }
}

/// An observer that watches nothing.
pub struct NoObserver;
impl SampleObserver for NoObserver {}

/// The run was stopped by its observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sampling was cancelled")]
pub struct Cancelled;

/// Everything a sampling run produced.
#[derive(Debug, Clone)]
pub struct SampleOutput {
    /// NCHW latents: the starting noise, then the output of each inverted block (deep first).
    /// The last one is the sample.
    pub latents: Vec<Tensor<4>>,
    /// Jacobi iterations per chunk, in execution order (empty for the sequential sampler).
    pub jacobi_iterations: Vec<usize>,
}

impl SampleOutput {
    pub fn result(&self) -> &Tensor<4> {
        self.latents.last().expect("a sample has at least the noise")
    }
}

/// A STARFlow or TARFlow model.
#[derive(Module, Debug)]
pub struct Flow {
    pub blocks: Vec<FlowBlock>,
    pub denoiser: Option<DenoiserBlock>,
    #[module(skip)]
    pub config: FlowConfig,
}

fn layer(
    loader: &mut WeightLoader,
    prefix: &str,
    width: usize,
    head_dim: usize,
    expansion: usize,
) -> Result<TransformerLayer, CheckpointError> {
    let hidden = width * expansion;
    Ok(TransformerLayer {
        attention: Attention {
            norm: loader.layer_norm(&format!("{prefix}.attention.norm"), width, LAYER_NORM_EPS)?,
            qkv: loader.linear(&format!("{prefix}.attention.qkv"), width, 3 * width)?,
            proj: loader.linear(&format!("{prefix}.attention.proj"), width, width)?,
            heads: width / head_dim,
            head_dim,
        },
        mlp: Mlp {
            norm: loader.layer_norm(&format!("{prefix}.mlp.norm"), width, LAYER_NORM_EPS)?,
            up: loader.linear(&format!("{prefix}.mlp.main.0"), width, hidden)?,
            down: loader.linear(&format!("{prefix}.mlp.main.2"), hidden, width)?,
        },
    })
}

/// The `count` transformer layers `{prefix}.attn_blocks.{l}` of one block.
fn layers(
    loader: &mut WeightLoader,
    prefix: &str,
    count: usize,
    width: usize,
    config: &FlowConfig,
) -> Result<Vec<TransformerLayer>, CheckpointError> {
    (0..count)
        .map(|l| {
            let key = format!("{prefix}.attn_blocks.{l}");
            layer(loader, &key, width, config.head_dim, config.mlp_expansion)
        })
        .collect()
}

fn rms_norm(
    loader: &mut WeightLoader,
    key: &str,
    width: usize,
) -> Result<RmsNorm, CheckpointError> {
    Ok(RmsNorm { weight: Param::from_tensor(loader.tensor(key, [width])?) })
}

impl Flow {
    /// Build the model from a checkpoint with the official key names. Strict: every tensor the
    /// config implies must be there with its shape, and nothing else but deprecated buffers.
    ///
    /// The config must have passed [`FlowConfig::validate`].
    pub fn load(
        config: &FlowConfig,
        file: &TensorFile,
        device: &Device,
    ) -> Result<Self, CheckpointError> {
        Self::build(config, WeightLoader::new(file, device))
    }

    /// [`load`](Self::load) with the linear layers' weights in `dtype` (for example f16 on a
    /// GPU with f16 support); activations, norms and the sampling state stay f32.
    pub fn load_with_dtype(
        config: &FlowConfig,
        file: &TensorFile,
        device: &Device,
        dtype: burn::tensor::DType,
    ) -> Result<Self, CheckpointError> {
        Self::build(config, WeightLoader::new(file, device).with_linear_dtype(dtype))
    }

    /// A model with random weights (see [`RandomWeights`]), and its state dict under the
    /// official key names, for tests, benchmarks and as a training start.
    pub fn random(config: &FlowConfig, seed: u64, device: &Device) -> (Self, Vec<NamedTensor>) {
        // Without the soft clip an exp scale amplifies freely: use the golden alt config's factor.
        let factor = if config.soft_clip > 0.0 {
            RANDOM_PROJ_OUT_FACTOR
        } else {
            RANDOM_PROJ_OUT_FACTOR_UNCLIPPED
        };
        let mut weights = RandomWeights::new(seed, factor);
        let flow = Self::build(config, WeightLoader::random(&mut weights, device))
            .expect("a random source has every tensor");
        (flow, weights.into_tensors())
    }

    fn build(config: &FlowConfig, mut loader: WeightLoader) -> Result<Self, CheckpointError> {
        let c = config.patch_dim();
        let tokens = config.tokens();
        let mut blocks = Vec::with_capacity(config.num_blocks());
        for (index, &num_layers) in config.layers_per_block.iter().enumerate() {
            let width = config.block_width(index);
            let p = format!("blocks.{index}");
            let proj_txt = match config.condition_width() {
                Some(text_dim) if config.block_has_text(index) => {
                    Some(loader.linear(&format!("{p}.proj_txt"), text_dim, width)?)
                }
                _ => None,
            };
            let sos = if config.sos {
                Some(Param::from_tensor(loader.tensor(&format!("{p}.sos_embed"), [1, 1, c])?))
            } else {
                None
            };
            let pos_embed = if config.positions == PositionKind::Learned {
                Some(Param::from_tensor(loader.tensor(&format!("{p}.pos_embed"), [tokens, width])?))
            } else {
                None
            };
            let class_embed = match config.conditioning {
                Conditioning::ClassEmbedding { num_classes } => Some(Param::from_tensor(
                    loader.tensor(&format!("{p}.class_embed"), [num_classes, 1, width])?,
                )),
                _ => None,
            };
            let layers = layers(&mut loader, &p, num_layers, width, config)?;
            let final_norm = if config.final_norm {
                Some(rms_norm(&mut loader, &format!("{p}.final_norm.weight"), width)?)
            } else {
                None
            };
            blocks.push(FlowBlock {
                proj_in: loader.linear(&format!("{p}.proj_in"), c, width)?,
                proj_out: loader.linear(&format!("{p}.proj_out"), width, 2 * c)?,
                sos,
                proj_txt,
                pos_embed,
                class_embed,
                layers,
                final_norm,
                spec: BlockSpec {
                    index,
                    patch_dim: c,
                    width,
                    heads: width / config.head_dim,
                    head_dim: config.head_dim,
                    flipped: config.block_flipped(index),
                    sos: config.sos,
                    scale: config.scale,
                    soft_clip: config.soft_clip,
                },
            });
        }

        let denoiser = if config.learned_denoiser {
            let width = config.width;
            let p = "learnable_self_denoiser";
            let proj_txt = match config.condition_width() {
                Some(text_dim) if config.learned_denoiser_conditional => {
                    Some(loader.linear(&format!("{p}.proj_txt"), text_dim, width)?)
                }
                _ => None,
            };
            let layers = layers(&mut loader, p, DENOISER_LAYERS, width, config)?;
            let final_norm = if config.final_norm {
                Some(rms_norm(&mut loader, &format!("{p}.final_norm.weight"), width)?)
            } else {
                None
            };
            Some(DenoiserBlock {
                proj_in: loader.linear(&format!("{p}.proj_in"), c, width)?,
                proj_txt,
                layers,
                final_norm,
                proj_out: loader.linear(&format!("{p}.proj_out"), width, c)?,
            })
        } else {
            None
        };

        loader.finish(is_deprecated_buffer)?;
        Ok(Self { blocks, denoiser, config: config.clone() })
    }

    pub fn device(&self) -> Device {
        self.blocks[0].proj_in.weight.val().device()
    }

    /// NCHW latent to tokens `[batch, tokens, patch_dim]` in raster order.
    pub fn patchify(&self, latent: Tensor<4>) -> Tensor<3> {
        let [batch, channels, height, width] = latent.dims();
        let p = self.config.patch_size;
        let (rows, cols) = (height / p, width / p);
        let grid = latent.reshape([batch, channels, rows, p, cols, p]);
        let ordered = match self.config.patch_order {
            PatchOrder::PixelMajor => grid.permute([0, 2, 4, 3, 5, 1]), // [batch, rows, cols, p1, p2, channels]
            PatchOrder::ChannelMajor => grid.permute([0, 2, 4, 1, 3, 5]), // [batch, rows, cols, channels, p1, p2]
        };
        ordered.reshape([batch, rows * cols, channels * p * p])
    }

    /// Tokens back to an NCHW latent of `height x width` (in latent pixels).
    pub fn unpatchify(&self, tokens: Tensor<3>, height: usize, width: usize) -> Tensor<4> {
        let [batch, _, _] = tokens.dims();
        let p = self.config.patch_size;
        let channels = self.config.latent_channels;
        let (rows, cols) = (height / p, width / p);
        match self.config.patch_order {
            PatchOrder::PixelMajor => {
                tokens.reshape([batch, rows, cols, p, p, channels]).permute([0, 5, 1, 3, 2, 4])
            }
            PatchOrder::ChannelMajor => {
                tokens.reshape([batch, rows, cols, channels, p, p]).permute([0, 3, 1, 4, 2, 5])
            }
        }
        .reshape([batch, channels, height, width])
    }

    /// Rotary table for block `block` on a token grid, with text rows if the block has text.
    fn rope_for(&self, block: usize, grid: (usize, usize), text_len: usize) -> Option<RopeTable> {
        (self.config.positions == PositionKind::Rope).then(|| {
            let rows = if self.config.block_has_text(block) { text_len } else { 0 };
            rope_table(&self.config, grid, rows, &self.device())
        })
    }

    /// The conditioning vectors a text-prefixed block sees for `condition`.
    fn condition_text(&self, condition: &Condition) -> Option<Tensor<3>> {
        match (condition, self.config.conditioning) {
            (Condition::Text(text), _) => Some(text.clone()),
            (Condition::Labels(labels), Conditioning::OneHotClass { num_classes }) => {
                Some(one_hot_labels(labels, num_classes, &self.device()))
            }
            _ => None,
        }
    }

    fn block_condition(&self, block: usize, condition: &Condition) -> BlockCondition {
        let text =
            if self.config.block_has_text(block) { self.condition_text(condition) } else { None };
        let labels = match (condition, self.config.conditioning) {
            (Condition::Labels(labels), Conditioning::ClassEmbedding { .. }) => {
                Some(labels.clone())
            }
            (_, Conditioning::ClassEmbedding { .. }) => Some(vec![None; condition.batch()]),
            _ => None,
        };
        BlockCondition { text, labels, logit_scale: None }
    }

    fn text_len(&self, condition: &Condition) -> usize {
        self.condition_text(condition).map_or(0, |t| t.dims()[1])
    }

    /// Data -> noise through every block, teacher-forced.
    ///
    /// # Shapes
    /// - `latent`: `[batch, channels, height, width]`
    pub fn forward(&self, latent: Tensor<4>, condition: &Condition) -> FlowForward {
        self.forward_traced(latent, condition, None)
    }

    /// [`forward`](Self::forward), recording intermediates under the golden files' names.
    pub fn forward_traced(
        &self,
        latent: Tensor<4>,
        condition: &Condition,
        mut trace: Option<&mut Trace>,
    ) -> FlowForward {
        let [_, _, height, width] = latent.dims();
        let grid = (height / self.config.patch_size, width / self.config.patch_size);
        let text_len = self.text_len(condition);

        let mut tokens = self.patchify(latent);
        let mut outputs = vec![tokens.clone()];
        let mut logdets = Vec::with_capacity(self.blocks.len());
        let mut text_out = None;
        for (index, block) in self.blocks.iter().enumerate() {
            let rope = self.rope_for(index, grid, text_len);
            if let (Some(trace), Some(table)) = (trace.as_deref_mut(), &rope) {
                let name = if index == self.config.deep_index() { "top" } else { "shallow" };
                let angles = super::rope::rope_angles(
                    &self.config,
                    grid,
                    if self.config.block_has_text(index) { text_len } else { 0 },
                );
                let shape = vec![table.len(), self.config.head_dim];
                trace.tensors.insert(
                    format!("debug.freqs_cis.{name}"),
                    (shape, angles.iter().map(|a| *a as f32).collect()),
                );
            }
            let BlockForward { z, logdet, text_out: text } = block.forward(
                tokens,
                &self.block_condition(index, condition),
                rope.as_ref(),
                trace.as_deref_mut(),
            );
            tokens = z;
            outputs.push(tokens.clone());
            logdets.push(logdet);
            text_out = text;
        }
        FlowForward { z: self.unpatchify(tokens, height, width), outputs, logdets, text_out }
    }

    /// Noise -> data. `null` is the unconditional input guidance compares against (T5 of the
    /// empty prompt, or null labels); it is needed only when guidance is on.
    ///
    /// # Shapes
    /// - `noise`: `[batch, channels, height, width]`, standard normal
    pub fn sample(
        &self,
        noise: Tensor<4>,
        condition: &Condition,
        null: Option<&Condition>,
        guidance: &Guidance,
        sampler: Sampler,
        observer: &mut dyn SampleObserver,
    ) -> Result<SampleOutput, SampleError> {
        let [batch, _, height, width] = noise.dims();
        let grid = (height / self.config.patch_size, width / self.config.patch_size);
        if condition.batch() != batch {
            return Err(SampleError::Batch { noise: batch, condition: condition.batch() });
        }
        let guided_run = guidance.is_on() && self.config.conditioning != Conditioning::None;
        let null = match (guided_run, null) {
            (true, Some(null)) if null.batch() == batch => Some(null),
            (true, Some(null)) => {
                return Err(SampleError::Batch { noise: batch, condition: null.batch() });
            }
            (true, None) => return Err(SampleError::NoNullCondition),
            (false, _) => None,
        };
        if let Sampler::Jacobi { chunk, max_iterations, .. } = sampler {
            if !self.config.sos {
                return Err(SampleError::JacobiNeedsSos);
            }
            if chunk == 0 || max_iterations == 0 {
                return Err(SampleError::JacobiSettings);
            }
            if guided_run && guidance.rule == GuidanceRule::Linear && guidance.annealed {
                return Err(SampleError::JacobiAnnealing);
            }
        }

        let doubled = null.map(|null| condition.concat(null));
        let mut tokens = self.patchify(noise.clone());
        let mut latents = vec![noise];
        let mut jacobi_iterations = Vec::new();
        for (order, index) in (0..self.blocks.len()).rev().enumerate() {
            let guided = guided_run && self.config.block_guided(index);
            let (block_condition, text_len) = match &doubled {
                Some(doubled) if guided => {
                    let mut bc = self.block_condition(index, doubled);
                    if guidance.rule == GuidanceRule::Linear
                        && guidance.null_attention_temperature != 1.0
                    {
                        bc.logit_scale = Some(logit_scales(
                            batch,
                            guidance.null_attention_temperature,
                            &self.device(),
                        ));
                    }
                    (bc, self.text_len(doubled))
                }
                _ => (self.block_condition(index, condition), self.text_len(condition)),
            };
            let rope = self.rope_for(index, grid, text_len);
            let run = BlockRun {
                flow: self,
                block: &self.blocks[index],
                order,
                condition: block_condition,
                rope,
                guidance: guided.then_some(*guidance),
                batch,
                height,
                width,
            };
            let block = &self.blocks[index];
            let zeta = block.permute(tokens);
            let sampled = match sampler {
                Sampler::Sequential => run.sequential(zeta, observer)?,
                Sampler::Jacobi { chunk, threshold, max_iterations } => run.jacobi(
                    zeta,
                    chunk,
                    threshold,
                    max_iterations,
                    observer,
                    &mut jacobi_iterations,
                )?,
            };
            tokens = block.permute(sampled);
            let latent = self.unpatchify(tokens.clone(), height, width);
            observer.block_done(order, index, &latent);
            latents.push(latent);
        }
        Ok(SampleOutput { latents, jacobi_iterations })
    }

    /// One score step: `x + s^2 * grad log p(x | condition)`, the gradient taken through the
    /// whole flow with burn's autodiff (the official `self_denoise`, steps 1, lr 1).
    pub fn denoise_score(&self, latent: Tensor<4>, condition: &Condition, sigma: f64) -> Tensor<4> {
        let input = latent.clone().autodiff().require_grad();
        let nll = self.forward(input.clone(), condition).nll_sum().sum();
        let grads = nll.backward();
        let gradient = input.grad(&grads).expect("the input latent requires a gradient").inner();
        latent - gradient.mul_scalar(sigma * sigma)
    }

    /// The learned self-denoiser: `x - 0.3 * D(x, condition)`. `None` if the model has none.
    pub fn denoise_learned(&self, latent: Tensor<4>, condition: &Condition) -> Option<Tensor<4>> {
        self.learned_denoiser_raw(latent.clone(), condition)
            .map(|raw| latent - raw.mul_scalar(LEARNED_DENOISER_STEP))
    }

    /// The learned denoiser's own output `D(x, condition)`, NCHW.
    pub fn learned_denoiser_raw(
        &self,
        latent: Tensor<4>,
        condition: &Condition,
    ) -> Option<Tensor<4>> {
        let denoiser = self.denoiser.as_ref()?;
        let [_, _, height, width] = latent.dims();
        let grid = (height / self.config.patch_size, width / self.config.patch_size);
        let text = if self.config.learned_denoiser_conditional {
            self.condition_text(condition)
        } else {
            None
        };
        let text_len = text.as_ref().map_or(0, |t| t.dims()[1]);
        let rope = rope_table(&self.config, grid, text_len, &self.device());
        let tokens = denoiser.forward(self.patchify(latent), text, Some(&rope));
        Some(self.unpatchify(tokens, height, width))
    }
}

/// Why a sampling run could not start or finish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error("the noise has batch {noise} but the condition has batch {condition}")]
    Batch { noise: usize, condition: usize },
    #[error("guidance is on but no null condition was given")]
    NoNullCondition,
    #[error(
        "the Jacobi sampler needs a model with a start token (sos); use the sequential sampler"
    )]
    JacobiNeedsSos,
    #[error("the Jacobi chunk size and iteration count must be at least 1")]
    JacobiSettings,
    #[error("annealed linear guidance is only supported by the sequential sampler")]
    JacobiAnnealing,
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// `[2 * batch, 1, 1, 1]`: 1 for the conditional half, `1 / temperature` for the null half.
fn logit_scales(batch: usize, temperature: f32, device: &Device) -> Tensor<4> {
    let mut values = vec![1.0f32; batch];
    values.extend(std::iter::repeat_n(1.0 / temperature, batch));
    Tensor::<1>::from_data(burn::tensor::TensorData::new(values, [2 * batch]), device).reshape([
        2 * batch,
        1,
        1,
        1,
    ])
}

/// The inversion of one block.
struct BlockRun<'a> {
    flow: &'a Flow,
    block: &'a FlowBlock,
    order: usize,
    condition: BlockCondition,
    rope: Option<RopeTable>,
    /// Set when this block is guided (the batch is then doubled: conditional, null).
    guidance: Option<Guidance>,
    batch: usize,
    height: usize,
    width: usize,
}

impl BlockRun<'_> {
    fn network_batch(&self) -> usize {
        if self.guidance.is_some() { 2 * self.batch } else { self.batch }
    }

    /// Duplicate guided tokens into both halves of the network batch.
    fn to_network(&self, tokens: Tensor<3>) -> Tensor<3> {
        if self.guidance.is_some() { Tensor::cat(vec![tokens.clone(), tokens], 0) } else { tokens }
    }

    fn cache_and_prefill(&self) -> super::attention::BlockCache {
        let tokens = self.flow.config.tokens_for(self.height, self.width);
        let text_len = if self.block.proj_txt.is_some() {
            self.condition.text.as_ref().map_or(0, |t| t.dims()[1])
        } else {
            0
        };
        let mut cache =
            self.block.new_cache(self.network_batch(), text_len + tokens, &self.flow.device());
        if let Some(text) = &self.condition.text
            && self.block.proj_txt.is_some()
        {
            self.block.prefill(text.clone(), &self.condition, self.rope.as_ref(), &mut cache);
        }
        cache
    }

    /// `(shift, sigma)` per output from the network's params, guided where needed.
    ///
    /// `first_output` is the index of the first output token (for annealing).
    fn gaussian(
        &self,
        params: AffineParams,
        first_output: usize,
        steps: usize,
    ) -> (Tensor<3>, Tensor<3>) {
        let Some(guidance) = self.guidance else {
            let sigma = self.block.sigma(params.log_scale);
            return (params.shift, sigma);
        };
        let b = self.batch;
        let half = |t: &Tensor<3>, i: usize| t.clone().narrow(0, i * b, b);
        match guidance.rule {
            GuidanceRule::Gaussian => {
                let sigma = self.block.sigma(params.log_scale);
                gaussian_rule(
                    half(&params.shift, 0),
                    half(&sigma, 0),
                    half(&params.shift, 1),
                    half(&sigma, 1),
                    guidance.weight as f64,
                )
            }
            GuidanceRule::Linear => {
                let weight = if guidance.annealed {
                    guidance.weight as f64 * (first_output as f64) / (steps.max(1) as f64)
                } else {
                    guidance.weight as f64
                };
                let log_scale =
                    linear_rule(half(&params.log_scale, 0), half(&params.log_scale, 1), weight);
                let shift = linear_rule(half(&params.shift, 0), half(&params.shift, 1), weight);
                (shift, self.block.sigma(log_scale))
            }
        }
    }

    fn report(
        &self,
        observer: &mut dyn SampleObserver,
        progress: Progress,
        partial: impl FnOnce() -> Tensor<3>,
    ) -> Result<(), Cancelled> {
        if observer.wants_partial(&progress) {
            let latent =
                self.flow.unpatchify(self.block.permute(partial()), self.height, self.width);
            observer.partial(&progress, latent);
        }
        match observer.progress(progress) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(Cancelled),
        }
    }

    /// One token per call. `zeta` is the block's noise side in its own order `[batch, tokens, c]`.
    fn sequential(
        &self,
        zeta: Tensor<3>,
        observer: &mut dyn SampleObserver,
    ) -> Result<Tensor<3>, Cancelled> {
        let [_, tokens, patch_dim] = zeta.dims();
        let mut cache = self.cache_and_prefill();
        let sos = self.block.sos.as_ref().map(|s| s.val());
        let steps = if sos.is_some() { tokens } else { tokens - 1 };
        let mut done: Vec<Tensor<3>> = Vec::with_capacity(tokens);
        if sos.is_none() {
            // Without a start token, token 0 passes through unchanged.
            done.push(zeta.clone().narrow(1, 0, 1));
        }
        for step in 0..steps {
            let input = match (&sos, step) {
                (Some(sos), 0) => sos.clone().expand([self.network_batch(), 1, patch_dim]),
                _ => self.to_network(done.last().expect("a previous token exists").clone()),
            };
            let params =
                self.block.step(input, step, &self.condition, self.rope.as_ref(), &mut cache);
            let (shift, sigma) = self.gaussian(params, step + 1, steps);
            let output = if sos.is_some() { step } else { step + 1 };
            let token = zeta.clone().narrow(1, output, 1) * sigma + shift; // [batch, 1, patch_dim]
            done.push(token);

            let progress = Progress {
                order: self.order,
                block: self.block.spec.index,
                done: done.len(),
                tokens,
                calls: step + 1,
            };
            self.report(observer, progress, || {
                let mut parts = done.clone();
                if done.len() < tokens {
                    parts.push(zeta.clone().narrow(1, done.len(), tokens - done.len()));
                }
                Tensor::cat(parts, 1)
            })?;
        }
        Ok(Tensor::cat(done, 1))
    }

    /// Block-wise Jacobi iteration with the official cache convention: a chunk that stops keeps
    /// the keys and values of its last iteration's inputs (computed before its final update).
    fn jacobi(
        &self,
        zeta: Tensor<3>,
        chunk: usize,
        threshold: f32,
        max_iterations: usize,
        observer: &mut dyn SampleObserver,
        iterations_log: &mut Vec<usize>,
    ) -> Result<Tensor<3>, Cancelled> {
        let [_, tokens, patch_dim] = zeta.dims();
        let mut cache = self.cache_and_prefill();
        let sos =
            self.block.sos.as_ref().expect("Jacobi is only started for models with sos").val();
        let sos = sos.expand([self.batch, 1, patch_dim]);
        // Current estimate of every token, initialised to the noise itself.
        let mut estimate = zeta.clone();
        let mut calls = 0;
        let mut start = 0;
        while start < tokens {
            let size = chunk.min(tokens - start);
            for iteration in 0..max_iterations {
                // Slot j's input is token j - 1 (slot 0: the start token).
                let inputs = if start == 0 {
                    Tensor::cat(vec![sos.clone(), estimate.clone().narrow(1, 0, size - 1)], 1)
                } else {
                    estimate.clone().narrow(1, start - 1, size)
                };
                let params = self.block.step(
                    self.to_network(inputs),
                    start,
                    &self.condition,
                    self.rope.as_ref(),
                    &mut cache,
                );
                calls += 1;
                let (shift, sigma) = self.gaussian(params, start + 1, tokens);
                let updated = shift + sigma * zeta.clone().narrow(1, start, size);
                let previous = estimate.clone().narrow(1, start, size);
                let change =
                    (updated.clone() - previous).square().mean() / updated.clone().square().mean();
                let change: f32 = change.into_scalar();
                estimate = estimate
                    .slice_assign([0..self.batch, start..start + size, 0..patch_dim], updated);

                let last = change < threshold || iteration + 1 == max_iterations;
                let progress = Progress {
                    order: self.order,
                    block: self.block.spec.index,
                    done: if last { start + size } else { start },
                    tokens,
                    calls,
                };
                self.report(observer, progress, || estimate.clone())?;
                if last {
                    iterations_log.push(iteration + 1);
                    break;
                }
                cache.rewind(size);
            }
            start += size;
        }
        Ok(estimate)
    }
}

impl FlowConfig {
    /// Tokens of a latent of `height x width`.
    pub fn tokens_for(&self, height: usize, width: usize) -> usize {
        (height / self.patch_size) * (width / self.patch_size)
    }
}
