//! One autoregressive affine flow step (`MetaBlock`): its teacher-forced forward pass
//! (data -> noise) and the network call the samplers make for one chunk of tokens.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::softplus;
use burn::tensor::{Tensor, TensorData};

use super::attention::{AttentionCall, BlockCache, Mask, RmsNorm, TransformerLayer, dense};
use super::config::ScaleKind;
use super::rope::RopeTable;

/// `ln(e - 1)`: the offset that makes `softplus(0 + offset) = 1`.
pub const INV_SOFTPLUS_1: f64 = 0.541324854612918;

/// Fixed facts about one block, derived from the config.
#[derive(Debug, Clone)]
pub struct BlockSpec {
    pub index: usize,
    pub patch_dim: usize,
    pub width: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub flipped: bool,
    pub sos: bool,
    pub scale: ScaleKind,
    pub soft_clip: f32,
}

/// Intermediate tensors recorded by a traced forward pass, under the golden files' names.
#[derive(Debug, Default)]
pub struct Trace {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Trace {
    pub fn record<const D: usize>(&mut self, name: impl Into<String>, tensor: &Tensor<D>) {
        let shape = tensor.dims().to_vec();
        let values =
            tensor.clone().try_into_vec_as::<f32>().expect("a traced tensor reads back as f32");
        self.tensors.insert(name.into(), (shape, values));
    }
}

/// What a block is conditioned on in one call, already batched.
#[derive(Debug, Clone, Default)]
pub struct BlockCondition {
    /// Raw conditioning vectors `[batch, text_len, text_dim]` for blocks with a text prefix.
    pub text: Option<Tensor<3>>,
    /// TARFlow class labels per batch row (`None`: the null class, the mean embedding).
    pub labels: Option<Vec<Option<usize>>>,
    /// Attention logit multiplier per batch row `[batch, 1, 1, 1]`.
    pub logit_scale: Option<Tensor<4>>,
}

/// One flow block.
#[derive(Module, Debug)]
pub struct FlowBlock {
    pub proj_in: Linear,
    pub proj_out: Linear,
    /// `[1, 1, patch_dim]`.
    pub sos: Option<Param<Tensor<3>>>,
    pub proj_txt: Option<Linear>,
    /// Learned positions `[tokens, width]` in raster order (TARFlow).
    pub pos_embed: Option<Param<Tensor<2>>>,
    /// `[num_classes, 1, width]` (TARFlow).
    pub class_embed: Option<Param<Tensor<3>>>,
    pub layers: Vec<TransformerLayer>,
    pub final_norm: Option<RmsNorm>,
    #[module(skip)]
    pub spec: BlockSpec,
}

/// The forward pass of one block.
#[derive(Debug, Clone)]
pub struct BlockForward {
    /// `[batch, tokens, patch_dim]`, raster order.
    pub z: Tensor<3>,
    /// `-ln(sigma)` per element, `[batch, tokens, patch_dim]`, in the block's own order.
    pub logdet: Tensor<3>,
    /// The text stream after the last layer (and final norm), if the block has text.
    pub text_out: Option<Tensor<3>>,
}

/// The two halves of `proj_out` for a chunk of outputs, after the soft clip.
#[derive(Debug, Clone)]
pub struct AffineParams {
    /// Raw scale logits `a`, `[batch, tokens, patch_dim]`.
    pub log_scale: Tensor<3>,
    /// Shift `mu`, `[batch, tokens, patch_dim]`.
    pub shift: Tensor<3>,
}

impl FlowBlock {
    /// Reverse the token order if this block is flipped (its own inverse).
    pub fn permute(&self, tokens: Tensor<3>) -> Tensor<3> {
        if self.spec.flipped { tokens.flip([1]) } else { tokens }
    }

    /// Standard deviation from the raw scale logits.
    pub fn sigma(&self, log_scale: Tensor<3>) -> Tensor<3> {
        match self.spec.scale {
            ScaleKind::Softplus => softplus(log_scale.add_scalar(INV_SOFTPLUS_1), 1.0),
            ScaleKind::Exp => log_scale.exp(),
        }
    }

    fn text_len(condition: &BlockCondition) -> usize {
        condition.text.as_ref().map_or(0, |t| t.dims()[1])
    }

    /// The class embedding rows for `labels`, `[batch, 1, width]`.
    fn class_vectors(&self, labels: &[Option<usize>]) -> Option<Tensor<3>> {
        let table = self.class_embed.as_ref()?.val(); // [classes, 1, width]
        let mean = table.clone().mean_dim(0); // [1, 1, width]
        let rows: Vec<Tensor<3>> = labels
            .iter()
            .map(|label| match label {
                Some(class) => table.clone().narrow(0, *class, 1),
                None => mean.clone(),
            })
            .collect();
        Some(Tensor::cat(rows, 0))
    }

    /// `proj_in` on latent-space inputs at sequence slots `start ..`, plus learned positions
    /// and the class embedding where the block has them.
    fn embed_inputs(
        &self,
        inputs: Tensor<3>,
        start: usize,
        condition: &BlockCondition,
    ) -> Tensor<3> {
        let [_, tokens, _] = inputs.dims();
        let mut hidden = dense(&self.proj_in, inputs); // [batch, tokens, width]
        if let Some(pos_embed) = &self.pos_embed {
            let table = self.permute_table(pos_embed.val());
            hidden = hidden + table.narrow(0, start, tokens).unsqueeze::<3>();
        }
        if let Some(labels) = &condition.labels
            && let Some(classes) = self.class_vectors(labels)
        {
            hidden = hidden + classes;
        }
        hidden
    }

    fn permute_table(&self, table: Tensor<2>) -> Tensor<2> {
        if self.spec.flipped { table.flip([0]) } else { table }
    }

    /// Final norm, `proj_out` and the soft clip, split into the two halves.
    fn head(&self, hidden: Tensor<3>, trace: Option<(&mut Trace, &str)>) -> AffineParams {
        let hidden = match &self.final_norm {
            Some(norm) => norm.forward(hidden),
            None => hidden,
        };
        let mut out = dense(&self.proj_out, hidden.clone()); // [batch, tokens, 2 * patch_dim]
        if let Some((trace, prefix)) = trace {
            if self.final_norm.is_some() {
                trace.record(format!("{prefix}.final_norm.x"), &hidden);
            }
            trace.record(format!("{prefix}.proj_out_raw"), &out);
        }
        if self.spec.soft_clip > 0.0 {
            let clip = self.spec.soft_clip as f64;
            out = out.div_scalar(clip).tanh().mul_scalar(clip);
        }
        let c = self.spec.patch_dim;
        AffineParams { log_scale: out.clone().narrow(2, 0, c), shift: out.narrow(2, c, c) }
    }

    /// Teacher-forced pass over all tokens at once.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, tokens, patch_dim]`, raster order
    /// - `rope`: rows for `[text prefix, tokens]` of this block
    pub fn forward(
        &self,
        tokens: Tensor<3>,
        condition: &BlockCondition,
        rope: Option<&RopeTable>,
        mut trace: Option<&mut Trace>,
    ) -> BlockForward {
        let [batch, num_tokens, patch_dim] = tokens.dims();
        let prefix = format!("debug.block{}", self.spec.index);
        let device = tokens.device();

        let permuted = self.permute(tokens);
        let inputs = match &self.sos {
            Some(sos) => {
                let start = sos.val().expand([batch, 1, patch_dim]);
                let body = permuted.clone().narrow(1, 0, num_tokens - 1);
                Tensor::cat(vec![start, body], 1)
            }
            None => permuted.clone(),
        };
        if let Some(trace) = trace.as_deref_mut() {
            trace.record(format!("{prefix}.proj_in.input"), &inputs);
        }

        let mut hidden = if let Some(trace) = trace.as_deref_mut() {
            let projected = dense(&self.proj_in, inputs.clone());
            trace.record(format!("{prefix}.proj_in"), &projected);
            self.embed_inputs(inputs, 0, condition)
        } else {
            self.embed_inputs(inputs, 0, condition)
        };

        let text_len = match (&self.proj_txt, &condition.text) {
            (Some(proj_txt), Some(text)) => {
                let text = dense(proj_txt, text.clone()); // [batch, text_len, width]
                if let Some(trace) = trace.as_deref_mut() {
                    trace.record(format!("{prefix}.proj_txt"), &text);
                }
                let len = text.dims()[1];
                hidden = Tensor::cat(vec![text, hidden], 1);
                len
            }
            _ => 0,
        };

        let call = AttentionCall { rope, logit_scale: condition.logit_scale.clone() };
        for (index, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(hidden, Mask::Causal, &call, None);
            if let Some(trace) = trace.as_deref_mut() {
                let image = hidden.clone().narrow(1, text_len, num_tokens);
                if self.pos_embed.is_some() {
                    trace.record(format!("{prefix}.layer{index}"), &image);
                } else {
                    trace.record(format!("{prefix}.layer{index}.x"), &image);
                }
                if text_len > 0 {
                    trace.record(
                        format!("{prefix}.layer{index}.y"),
                        &hidden.clone().narrow(1, 0, text_len),
                    );
                }
            }
        }

        let text_out = (text_len > 0).then(|| {
            let text = hidden.clone().narrow(1, 0, text_len);
            match &self.final_norm {
                Some(norm) => norm.forward(text),
                None => text,
            }
        });
        if let (Some(trace), Some(text)) = (trace.as_deref_mut(), &text_out)
            && self.final_norm.is_some()
        {
            trace.record(format!("{prefix}.final_norm.y"), text);
        }
        let image = hidden.narrow(1, text_len, num_tokens);
        let params = self.head(image, trace.as_deref_mut().map(|t| (t, prefix.as_str())));

        // Without a start token, output i predicts token i + 1 and token 0 passes unchanged.
        let (log_scale, shift) = if self.spec.sos {
            (params.log_scale, params.shift)
        } else {
            let zeros = Tensor::zeros([batch, 1, patch_dim], &device);
            let shift_right =
                |t: Tensor<3>| Tensor::cat(vec![zeros.clone(), t.narrow(1, 0, num_tokens - 1)], 1);
            (shift_right(params.log_scale), shift_right(params.shift))
        };

        // With an exp scale, ln(sigma) is the logit itself; log(exp(a)) would only add the
        // rounding of two transcendental functions (large on some GPU drivers).
        let (z, logdet) = match self.spec.scale {
            ScaleKind::Exp => ((permuted - shift) * log_scale.clone().neg().exp(), log_scale.neg()),
            ScaleKind::Softplus => {
                let sigma = self.sigma(log_scale);
                ((permuted - shift) / sigma.clone(), sigma.log().neg())
            }
        };
        BlockForward { z: self.permute(z), logdet, text_out }
    }

    /// Run the text prefix through every layer, writing its keys and values into `cache`.
    ///
    /// # Shapes
    /// - `text`: `[batch, text_len, text_dim]`; `rope`: the block's full table
    pub fn prefill(
        &self,
        text: Tensor<3>,
        condition: &BlockCondition,
        rope: Option<&RopeTable>,
        cache: &mut BlockCache,
    ) {
        let Some(proj_txt) = &self.proj_txt else { return };
        let text_len = text.dims()[1];
        let rows = rope.map(|table| table.rows(0, text_len));
        let call =
            AttentionCall { rope: rows.as_ref(), logit_scale: condition.logit_scale.clone() };
        let mut hidden = dense(proj_txt, text);
        for (index, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(hidden, Mask::Causal, &call, Some(cache.layer_mut(index)));
        }
    }

    /// The network on a chunk of latent-space inputs occupying sequence slots
    /// `slot .. slot + chunk` (slot 0 is the start token or token 0), after the cached prefix.
    ///
    /// # Shapes
    /// - `inputs`: `[batch, chunk, patch_dim]`
    /// - returns params for the same `chunk` outputs
    pub fn step(
        &self,
        inputs: Tensor<3>,
        slot: usize,
        condition: &BlockCondition,
        rope: Option<&RopeTable>,
        cache: &mut BlockCache,
    ) -> AffineParams {
        let chunk = inputs.dims()[1];
        let text_len = if self.proj_txt.is_some() { Self::text_len(condition) } else { 0 };
        let rows = rope.map(|table| table.rows(text_len + slot, chunk));
        let call =
            AttentionCall { rope: rows.as_ref(), logit_scale: condition.logit_scale.clone() };
        let mut hidden = self.embed_inputs(inputs, slot, condition);
        for (index, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(hidden, Mask::Causal, &call, Some(cache.layer_mut(index)));
        }
        self.head(hidden, None)
    }

    /// A fresh cache sized for this block's sequence.
    pub fn new_cache(
        &self,
        batch: usize,
        capacity: usize,
        device: &burn::tensor::Device,
    ) -> BlockCache {
        BlockCache::new(
            self.layers.len(),
            batch,
            self.spec.heads,
            capacity,
            self.spec.head_dim,
            device,
        )
    }
}

/// The learnable self-denoiser (`NonCausalBlock`): a non-causal transformer over all tokens
/// (with the text prefix when conditional) predicting the scaled score.
#[derive(Module, Debug)]
pub struct DenoiserBlock {
    pub proj_in: Linear,
    pub proj_txt: Option<Linear>,
    pub layers: Vec<TransformerLayer>,
    pub final_norm: Option<RmsNorm>,
    pub proj_out: Linear,
}

impl DenoiserBlock {
    /// # Shapes
    /// - `tokens`: `[batch, tokens, patch_dim]`, raster order; returns the same shape
    pub fn forward(
        &self,
        tokens: Tensor<3>,
        text: Option<Tensor<3>>,
        rope: Option<&RopeTable>,
    ) -> Tensor<3> {
        let num_tokens = tokens.dims()[1];
        let mut hidden = dense(&self.proj_in, tokens);
        let text_len = match (&self.proj_txt, text) {
            (Some(proj_txt), Some(text)) => {
                let text = dense(proj_txt, text);
                let len = text.dims()[1];
                hidden = Tensor::cat(vec![text, hidden], 1);
                len
            }
            _ => 0,
        };
        let call = AttentionCall { rope, logit_scale: None };
        for layer in &self.layers {
            hidden = layer.forward(hidden, Mask::Full, &call, None);
        }
        let image = hidden.narrow(1, text_len, num_tokens);
        let image = match &self.final_norm {
            Some(norm) => norm.forward(image),
            None => image,
        };
        dense(&self.proj_out, image)
    }
}

/// One-hot rows `[batch, 1, num_classes + 1]` for STARFlow's class path; `None` is the null
/// class at the last index.
pub fn one_hot_labels(
    labels: &[Option<usize>],
    num_classes: usize,
    device: &burn::tensor::Device,
) -> Tensor<3> {
    let width = num_classes + 1;
    let mut values = vec![0.0f32; labels.len() * width];
    for (row, label) in labels.iter().enumerate() {
        values[row * width + label.unwrap_or(num_classes)] = 1.0;
    }
    Tensor::from_data(TensorData::new(values, [labels.len(), 1, width]), device)
}
