//! `FlowConfig`: every switch of the official STARFlow `transformer_flow.Model` (and of the
//! original TARFlow model) that changes what the network computes, with validation.

use serde::{Deserialize, Serialize};

/// How a block turns the scale half of `proj_out` into the conditional standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleKind {
    /// `sigma = softplus(a + ln(e - 1))` (STARFlow `use_softplus: 1`): a zero output gives 1.
    Softplus,
    /// `sigma = exp(a)` (TARFlow, STARFlow `use_softplus: 0`).
    Exp,
}

/// Where token positions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionKind {
    /// 2-D rotary embedding over (row, column), plus a third axis for text when the model has
    /// a text prefix ("3-D RoPE").
    Rope,
    /// A learned `(tokens, width)` table added after `proj_in` (TARFlow).
    Learned,
}

/// Token order rule between blocks (`seq_order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeqOrder {
    /// Block `i` is flipped iff `i` is even (the released STARFlow models).
    L2R,
    /// Block `i` is flipped iff `i` is odd (TARFlow; STARFlow's parser default).
    R2L,
}

/// Channel order inside one patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchOrder {
    /// STARFlow: `c (h p1) (w p2) -> h w (p1 p2 c)`, latent channel fastest.
    PixelMajor,
    /// TARFlow (`torch.nn.functional.unfold`): channel index `c * p^2 + p1 * p + p2`.
    ChannelMajor,
}

/// What the model is conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Conditioning {
    /// Nothing.
    None,
    /// A sequence of `text_len` vectors of width `text_dim` (T5 output), used as a causal
    /// prefix inside the conditioned blocks.
    Text,
    /// STARFlow's class path: a one-hot "text" of length 1 and width `num_classes + 1`, the last
    /// index being the null class.
    OneHotClass { num_classes: usize },
    /// TARFlow's class embedding `(num_classes, 1, width)` added to every token of every
    /// block; the null condition is the mean embedding.
    ClassEmbedding { num_classes: usize },
}

/// Which guidance rule a model uses by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuidanceRule {
    /// STARFlow: product of Gaussians `p_c^(1+w) / p_u^w`, deep block only (or every block
    /// with text), both batch halves follow the guided token. `w = 0` is off.
    Gaussian,
    /// TARFlow: linear extrapolation of the raw log-scale and shift in every block, optional
    /// annealing and attention temperature on the null pass. `w = 0` is off.
    Linear,
}

/// The flow's architecture. Field defaults follow the official parser defaults where a
/// default exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Channels of the latent the flow models (`in_channels`).
    pub latent_channels: usize,
    /// Latent height at the training size.
    pub latent_height: usize,
    /// Latent width at the training size.
    pub latent_width: usize,
    /// Side of a square patch (`patch_size`).
    #[serde(default = "one")]
    pub patch_size: usize,
    #[serde(default = "pixel_major")]
    pub patch_order: PatchOrder,
    /// Transformer width of the shallow blocks (`channels`).
    pub width: usize,
    /// Width of the deep (last) block (`top_block_channels`); `None` means `width`.
    #[serde(default)]
    pub deep_width: Option<usize>,
    /// Per-head width (`head_dim`); heads = width / head_dim.
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// Transformer layers of each flow block, data side first; the last is the deep block.
    pub layers_per_block: Vec<usize>,
    /// MLP expansion factor.
    #[serde(default = "default_expansion")]
    pub mlp_expansion: usize,
    /// Learned start token (`sos`) instead of shifting outputs by one.
    #[serde(default)]
    pub sos: bool,
    #[serde(default = "exp_scale")]
    pub scale: ScaleKind,
    /// `c * tanh(o / c)` on all `proj_out` outputs; 0 disables it.
    #[serde(default)]
    pub soft_clip: f32,
    /// RMSNorm with unit offset before `proj_out` (`use_final_norm`).
    #[serde(default)]
    pub final_norm: bool,
    #[serde(default = "rope")]
    pub positions: PositionKind,
    /// RoPE reference side (`pt_seq_len`); `None` means the token grid side at training size.
    #[serde(default)]
    pub rope_reference_side: Option<usize>,
    #[serde(default = "r2l")]
    pub seq_order: SeqOrder,
    #[serde(default = "no_conditioning")]
    pub conditioning: Conditioning,
    /// Text prefix length (`txt_size`).
    #[serde(default)]
    pub text_len: usize,
    /// Text vector width (`txt_dim`).
    #[serde(default)]
    pub text_dim: usize,
    /// Condition only the deep block (`cond_top_only`); otherwise every block sees the text
    /// and is guided.
    #[serde(default)]
    pub condition_deep_only: bool,
    /// The 8-layer non-causal learned denoiser (`learnable_self_denoiser`).
    #[serde(default)]
    pub learned_denoiser: bool,
    /// Whether the learned denoiser sees the condition (`conditional_denoiser`).
    #[serde(default)]
    pub learned_denoiser_conditional: bool,
    /// Std of the Gaussian noise added to training latents (`noise_std`).
    #[serde(default = "default_noise_std")]
    pub noise_std: f32,
    #[serde(default = "gaussian_rule")]
    pub guidance_rule: GuidanceRule,
    /// Guidance weight the app starts with.
    #[serde(default)]
    pub default_guidance: f32,
    /// Largest guidance weight the app offers.
    #[serde(default = "default_max_guidance")]
    pub max_guidance: f32,
}

fn one() -> usize {
    1
}
fn pixel_major() -> PatchOrder {
    PatchOrder::PixelMajor
}
fn default_head_dim() -> usize {
    64
}
fn default_expansion() -> usize {
    4
}
fn exp_scale() -> ScaleKind {
    ScaleKind::Exp
}
fn rope() -> PositionKind {
    PositionKind::Rope
}
fn r2l() -> SeqOrder {
    SeqOrder::R2L
}
fn no_conditioning() -> Conditioning {
    Conditioning::None
}
fn default_noise_std() -> f32 {
    0.3
}
fn gaussian_rule() -> GuidanceRule {
    GuidanceRule::Gaussian
}
fn default_max_guidance() -> f32 {
    10.0
}

/// A config that cannot describe a working model. Each variant names the field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("config field `{field}` is {value}, but {requirement}")]
    Invalid { field: &'static str, value: String, requirement: String },
    #[error("config file could not be parsed: {0}")]
    Parse(String),
}

fn invalid(
    field: &'static str,
    value: impl std::fmt::Debug,
    requirement: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid { field, value: format!("{value:?}"), requirement: requirement.into() }
}

impl FlowConfig {
    /// The released text-to-image model `starflow_3B_t2i_256x256.pth`, as in the official
    /// `configs/starflow_3B_t2i_256x256.yaml` (with the parser defaults for omitted keys).
    pub fn starflow_3b_t2i_256() -> Self {
        Self {
            latent_channels: 4,
            latent_height: 32,
            latent_width: 32,
            patch_size: 1,
            patch_order: PatchOrder::PixelMajor,
            width: 3072,
            deep_width: None,
            head_dim: 64,
            layers_per_block: vec![2, 2, 2, 2, 2, 24],
            mlp_expansion: 4,
            sos: true,
            scale: ScaleKind::Softplus,
            soft_clip: 4.0,
            final_norm: true,
            positions: PositionKind::Rope,
            rope_reference_side: None,
            seq_order: SeqOrder::L2R,
            conditioning: Conditioning::Text,
            text_len: 128,
            text_dim: 2048,
            condition_deep_only: true,
            learned_denoiser: false,
            learned_denoiser_conditional: false,
            noise_std: 0.3,
            guidance_rule: GuidanceRule::Gaussian,
            // The official scripts and README sample with `--cfg 3.6`.
            default_guidance: 3.6,
            max_guidance: 10.0,
        }
    }

    /// The released text-to-image flag set (SOS, softplus, soft clip 4, final norm, L2R, text
    /// prefix in the deep block only) at another size: for tiny test, benchmark and default
    /// models. `latent` is (channels, height, width), `text` is (length, width).
    pub fn released_flags_at(
        latent: (usize, usize, usize),
        width: usize,
        head_dim: usize,
        layers_per_block: Vec<usize>,
        text: (usize, usize),
    ) -> Self {
        let (latent_channels, latent_height, latent_width) = latent;
        Self {
            latent_channels,
            latent_height,
            latent_width,
            width,
            head_dim,
            layers_per_block,
            text_len: text.0,
            text_dim: text.1,
            default_guidance: 0.0,
            ..Self::starflow_3b_t2i_256()
        }
    }

    /// The preset whose released file name is `file_name` (without directories).
    pub fn preset_for_file(file_name: &str) -> Option<Self> {
        file_name.starts_with("starflow_3B_t2i_256x256").then(Self::starflow_3b_t2i_256)
    }

    pub fn num_blocks(&self) -> usize {
        self.layers_per_block.len()
    }

    pub fn deep_index(&self) -> usize {
        self.num_blocks() - 1
    }

    /// Channels per token: latent channels times patch area.
    pub fn patch_dim(&self) -> usize {
        self.latent_channels * self.patch_size * self.patch_size
    }

    /// Token grid at the training size.
    pub fn token_grid(&self) -> (usize, usize) {
        (self.latent_height / self.patch_size, self.latent_width / self.patch_size)
    }

    pub fn tokens(&self) -> usize {
        let (rows, cols) = self.token_grid();
        rows * cols
    }

    pub fn block_width(&self, block: usize) -> usize {
        if block == self.deep_index() { self.deep_width.unwrap_or(self.width) } else { self.width }
    }

    /// Whether the block sequence is reversed in block `block`.
    pub fn block_flipped(&self, block: usize) -> bool {
        match self.seq_order {
            SeqOrder::L2R => block % 2 == 0,
            SeqOrder::R2L => block % 2 == 1,
        }
    }

    /// Width of the conditioning vectors fed to `proj_txt`, if the model has a text path.
    pub fn condition_width(&self) -> Option<usize> {
        match self.conditioning {
            Conditioning::Text => Some(self.text_dim),
            Conditioning::OneHotClass { num_classes } => Some(num_classes + 1),
            Conditioning::None | Conditioning::ClassEmbedding { .. } => None,
        }
    }

    /// Length of the conditioning prefix, if the model has a text path.
    pub fn condition_len(&self) -> usize {
        match self.conditioning {
            Conditioning::Text => self.text_len,
            Conditioning::OneHotClass { .. } => 1,
            Conditioning::None | Conditioning::ClassEmbedding { .. } => 0,
        }
    }

    /// Whether block `block` has a text prefix (`proj_txt`).
    pub fn block_has_text(&self, block: usize) -> bool {
        self.condition_width().is_some()
            && (!self.condition_deep_only || block == self.deep_index())
    }

    /// Whether guidance acts in block `block`.
    pub fn block_guided(&self, block: usize) -> bool {
        match self.conditioning {
            Conditioning::None => false,
            Conditioning::ClassEmbedding { .. } => true,
            _ => self.block_has_text(block),
        }
    }

    /// RoPE reference side (`pt_seq_len`).
    pub fn rope_side(&self) -> usize {
        self.rope_reference_side.unwrap_or_else(|| self.token_grid().0)
    }

    /// Whether the rotary table has the third (text) axis: the official code splits off 8
    /// slots whenever the model has a text length (`latent_len = txt_size > 0`).
    pub fn rope_has_text_axis(&self) -> bool {
        self.condition_len() > 0
    }

    /// Check every field once; code further in relies on these facts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.latent_channels == 0 {
            return Err(invalid("latent_channels", self.latent_channels, "it must be at least 1"));
        }
        if self.patch_size == 0 {
            return Err(invalid("patch_size", self.patch_size, "it must be at least 1"));
        }
        if self.latent_height == 0 || self.latent_height % self.patch_size != 0 {
            return Err(invalid(
                "latent_height",
                self.latent_height,
                format!("it must be a positive multiple of patch_size {}", self.patch_size),
            ));
        }
        if self.latent_width == 0 || self.latent_width % self.patch_size != 0 {
            return Err(invalid(
                "latent_width",
                self.latent_width,
                format!("it must be a positive multiple of patch_size {}", self.patch_size),
            ));
        }
        if self.layers_per_block.is_empty() || self.layers_per_block.contains(&0) {
            return Err(invalid(
                "layers_per_block",
                &self.layers_per_block,
                "it needs at least one block and every block at least one layer",
            ));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return Err(invalid("head_dim", self.head_dim, "it must be a positive even number"));
        }
        for (field, width) in
            [("width", self.width), ("deep_width", self.block_width(self.deep_index()))]
        {
            if width == 0 || width % self.head_dim != 0 {
                return Err(invalid(
                    field,
                    width,
                    format!("it must be a positive multiple of head_dim {}", self.head_dim),
                ));
            }
        }
        if self.positions == PositionKind::Rope {
            let slots = self.head_dim / 2;
            let spatial =
                if self.rope_has_text_axis() { slots.checked_sub(8) } else { Some(slots) };
            if !matches!(spatial, Some(s) if s > 0 && s % 2 == 0) {
                return Err(invalid(
                    "head_dim",
                    self.head_dim,
                    "RoPE needs head_dim / 2 (minus 8 text slots when there is text) to be a \
                     positive even number",
                ));
            }
        }
        match self.conditioning {
            Conditioning::Text => {
                if self.text_len == 0 || self.text_dim == 0 {
                    return Err(invalid(
                        "text_len",
                        (self.text_len, self.text_dim),
                        "text conditioning needs text_len and text_dim above 0",
                    ));
                }
            }
            Conditioning::OneHotClass { num_classes }
            | Conditioning::ClassEmbedding { num_classes } => {
                if num_classes == 0 {
                    return Err(invalid(
                        "conditioning.num_classes",
                        num_classes,
                        "it must be at least 1",
                    ));
                }
            }
            Conditioning::None => {}
        }
        if matches!(self.conditioning, Conditioning::ClassEmbedding { .. })
            && self.positions != PositionKind::Learned
        {
            return Err(invalid(
                "conditioning",
                self.conditioning,
                "the TARFlow class embedding is only supported with learned positions",
            ));
        }
        if self.learned_denoiser && self.positions != PositionKind::Rope {
            return Err(invalid(
                "learned_denoiser",
                true,
                "the learned denoiser needs RoPE positions",
            ));
        }
        if !(self.noise_std >= 0.0) {
            return Err(invalid("noise_std", self.noise_std, "it must be 0 or more"));
        }
        if !(self.soft_clip >= 0.0) {
            return Err(invalid("soft_clip", self.soft_clip, "it must be 0 (off) or more"));
        }
        if !(self.default_guidance >= 0.0 && self.default_guidance <= self.max_guidance) {
            return Err(invalid(
                "default_guidance",
                self.default_guidance,
                format!("it must lie in 0..=max_guidance ({})", self.max_guidance),
            ));
        }
        Ok(())
    }

    /// Parse the JSON form of this struct and validate it.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Build a config from the official constructor keyword arguments (the keys of
    /// `transformer_flow.Model(...)`, which are also the keys of the official yaml
    /// `arguments:`). `tarflow` selects the original TARFlow class, whose fixed conventions
    /// (learned positions, exp scale, unfold patches, class embedding) differ.
    pub fn from_official_kwargs(
        kwargs: &serde_json::Value,
        tarflow: bool,
    ) -> Result<Self, ConfigError> {
        let get_usize = |key: &'static str| -> Result<Option<usize>, ConfigError> {
            match kwargs.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(value) => value
                    .as_u64()
                    .or_else(|| value.as_bool().map(u64::from))
                    .map(|v| Some(v as usize))
                    .ok_or_else(|| invalid(key, value, "it must be a whole number")),
            }
        };
        let get_f32 = |key: &'static str| -> Result<Option<f32>, ConfigError> {
            match kwargs.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(value) => value
                    .as_f64()
                    .map(|v| Some(v as f32))
                    .ok_or_else(|| invalid(key, value, "it must be a number")),
            }
        };
        let required = |key: &'static str| -> Result<usize, ConfigError> {
            get_usize(key)?.ok_or_else(|| invalid(key, "missing", "it is required"))
        };

        let in_channels = required("in_channels")?;
        let img_size = required("img_size")?;
        let patch_size = get_usize("patch_size")?.unwrap_or(1);
        let num_blocks = required("num_blocks")?;
        let layers_per_block: Vec<usize> = match kwargs.get("layers_per_block") {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|v| v as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid("layers_per_block", items, "it must list whole numbers"))?,
            Some(value) => vec![value.as_u64().ok_or_else(|| {
                invalid("layers_per_block", value, "it must be a number or a list")
            })? as usize],
            None => return Err(invalid("layers_per_block", "missing", "it is required")),
        };
        let layers_per_block = if layers_per_block.len() == 1 {
            vec![layers_per_block[0]; num_blocks]
        } else {
            layers_per_block
        };
        if layers_per_block.len() != num_blocks {
            return Err(invalid(
                "layers_per_block",
                &layers_per_block,
                format!("it must have one entry per block ({num_blocks})"),
            ));
        }

        let config = if tarflow {
            let num_classes = get_usize("num_classes")?.unwrap_or(0);
            Self {
                latent_channels: in_channels,
                latent_height: img_size,
                latent_width: img_size,
                patch_size,
                patch_order: PatchOrder::ChannelMajor,
                width: required("channels")?,
                deep_width: None,
                head_dim: 64,
                layers_per_block,
                mlp_expansion: 4,
                sos: false,
                scale: ScaleKind::Exp,
                soft_clip: 0.0,
                final_norm: false,
                positions: PositionKind::Learned,
                rope_reference_side: None,
                seq_order: SeqOrder::R2L,
                conditioning: if num_classes > 0 {
                    Conditioning::ClassEmbedding { num_classes }
                } else {
                    Conditioning::None
                },
                text_len: 0,
                text_dim: 0,
                condition_deep_only: false,
                learned_denoiser: false,
                learned_denoiser_conditional: false,
                noise_std: get_f32("noise_std")?.unwrap_or(0.05),
                guidance_rule: GuidanceRule::Linear,
                default_guidance: 0.0,
                max_guidance: 10.0,
            }
        } else {
            let txt_size = get_usize("txt_size")?.unwrap_or(0);
            let txt_dim = get_usize("txt_dim")?.unwrap_or(0);
            let seq_order = match kwargs.get("seq_order").and_then(|v| v.as_str()).unwrap_or("R2L")
            {
                "L2R" => SeqOrder::L2R,
                "R2L" => SeqOrder::R2L,
                other => return Err(invalid("seq_order", other, "it must be \"L2R\" or \"R2L\"")),
            };
            if get_usize("rope")?.unwrap_or(0) == 0 {
                return Err(invalid(
                    "rope",
                    0,
                    "STARFlow's learned-position branch (rope: 0) crashes in the official code, \
                     so no such checkpoint exists; use rope: 1",
                ));
            }
            let conditioning =
                if txt_size > 0 && txt_dim > 0 { Conditioning::Text } else { Conditioning::None };
            Self {
                latent_channels: in_channels,
                latent_height: img_size,
                latent_width: img_size,
                patch_size,
                patch_order: PatchOrder::PixelMajor,
                width: required("channels")?,
                deep_width: get_usize("top_block_channels")?,
                head_dim: get_usize("head_dim")?.unwrap_or(64),
                layers_per_block,
                mlp_expansion: 4,
                sos: get_usize("sos")?.unwrap_or(0) != 0,
                scale: if get_usize("use_softplus")?.unwrap_or(0) != 0 {
                    ScaleKind::Softplus
                } else {
                    ScaleKind::Exp
                },
                soft_clip: get_f32("soft_clip")?.unwrap_or(0.0),
                final_norm: get_usize("use_final_norm")?.unwrap_or(0) != 0,
                positions: PositionKind::Rope,
                rope_reference_side: get_usize("pt_seq_len")?,
                seq_order,
                conditioning,
                text_len: txt_size,
                text_dim: txt_dim,
                condition_deep_only: get_usize("cond_top_only")?.unwrap_or(0) != 0,
                learned_denoiser: get_usize("learnable_self_denoiser")?.unwrap_or(0) != 0,
                learned_denoiser_conditional: get_usize("conditional_denoiser")?.unwrap_or(0) != 0,
                noise_std: get_f32("noise_std")?.unwrap_or(0.3),
                guidance_rule: GuidanceRule::Gaussian,
                default_guidance: 0.0,
                max_guidance: 10.0,
            }
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_preset_is_valid_and_flips_blocks_as_documented() {
        let config = FlowConfig::starflow_3b_t2i_256();
        config.validate().expect("the 3B preset validates");
        let flips: Vec<bool> = (0..6).map(|b| config.block_flipped(b)).collect();
        assert_eq!(flips, [true, false, true, false, true, false]);
        assert!(config.block_has_text(5) && !config.block_has_text(4));
        assert_eq!(config.tokens(), 1024);
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = FlowConfig::starflow_3b_t2i_256();
        config.width = 3000;
        match config.validate() {
            Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "width"),
            other => panic!("expected a width error, got {other:?}"),
        }
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let config = FlowConfig::starflow_3b_t2i_256();
        let text = serde_json::to_string(&config).expect("config serializes");
        assert_eq!(FlowConfig::from_json(&text).expect("parses"), config);
    }
}
