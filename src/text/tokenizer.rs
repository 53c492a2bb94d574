//! The prompt tokenizer: a Hugging Face `tokenizer.json` run by the `tokenizers` crate, with
//! STARFlow's settings (`utils/common.py`, `encode_text`): `padding="max_length"`,
//! `truncation=True`, `max_length=txt_size`. The T5 post-processor appends `</s>` (id 1), which
//! counts towards the length and survives truncation; padding is `<pad>` (id 0) on the right.
//!
//! Besides the ids and the mask, each prompt reports how many tokens it uses and, when it was too
//! long, what was cut, so the UI can show it.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// The padding token of T5 vocabularies.
pub const PAD_TOKEN: &str = "<pad>";
/// The end-of-sequence token the T5 post-processor appends.
pub const EOS_TOKEN: &str = "</s>";

/// What can go wrong while loading or running the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "The tokenizer could not be loaded: {reason}. Pick the text encoder's tokenizer.json. \
         (file: {path:?})"
    )]
    Load { path: PathBuf, reason: String },
    #[error(
        "This tokenizer has no {token:?} token, so it is not a T5 tokenizer. Pick the text \
         encoder's tokenizer.json. (file: {path:?})"
    )]
    MissingToken { path: PathBuf, token: &'static str },
    #[error(
        "This tokenizer does not end a prompt with {EOS_TOKEN:?} (the empty prompt gave ids \
         {ids:?}); T5 tokenizers do. Pick the text encoder's tokenizer.json. (file: {path:?})"
    )]
    NoEos { path: PathBuf, ids: Vec<u32> },
    #[error("The text length must be at least 1 token (it counts the final {EOS_TOKEN:?}).")]
    ZeroLength,
    #[error("The prompt could not be tokenized: {reason}. Prompt: {prompt:?}")]
    Encode { prompt: String, reason: String },
}

/// A tokenizer that pads and truncates every prompt to `text_len` tokens.
#[derive(Debug, Clone)]
pub struct PromptTokenizer {
    /// Pads and truncates: gives what the text encoder sees.
    fixed: Tokenizer,
    /// Neither pads nor truncates: gives the full count and what was cut.
    full: Tokenizer,
    text_len: usize,
    pad_id: u32,
    eos_id: u32,
}

/// One tokenized prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTokens {
    /// `text_len` ids: the kept pieces, `</s>`, then `<pad>`.
    pub ids: Vec<u32>,
    /// 1 for each token the tokenizer produced (including a `<pad>` typed into the prompt),
    /// 0 for padding.
    pub mask: Vec<u32>,
    /// Tokens of the whole prompt including `</s>`, before truncation.
    pub prompt_tokens: usize,
    /// What truncation removed, if anything.
    pub cut: Option<CutText>,
}

/// The end of a prompt that did not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutText {
    /// Number of tokens dropped (the final `</s>` is always kept).
    pub tokens: usize,
    /// The dropped part of the prompt, as typed (surrounding whitespace trimmed).
    pub text: String,
}

impl PromptTokens {
    /// Tokens the text encoder attends to (at most `text_len`, `</s>` included).
    pub fn used_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m != 0).count()
    }
}

impl PromptTokenizer {
    /// Load `tokenizer.json` and set padding and truncation to `text_len` tokens.
    pub fn from_file(path: impl AsRef<Path>, text_len: usize) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        if text_len == 0 {
            return Err(TokenizerError::ZeroLength);
        }
        let load_error = |reason: String| TokenizerError::Load { path: path.to_path_buf(), reason };
        let mut full = Tokenizer::from_file(path).map_err(|err| load_error(err.to_string()))?;
        full.with_truncation(None).map_err(|err| load_error(err.to_string()))?;
        full.with_padding(None);

        let token_id = |token: &'static str| {
            full.token_to_id(token)
                .ok_or(TokenizerError::MissingToken { path: path.to_path_buf(), token })
        };
        let pad_id = token_id(PAD_TOKEN)?;
        let eos_id = token_id(EOS_TOKEN)?;

        // The post-processor must append `</s>`: the empty prompt is exactly `[</s>]`.
        let empty = full.encode("", true).map_err(|err| load_error(err.to_string()))?;
        if empty.get_ids() != [eos_id] {
            return Err(TokenizerError::NoEos {
                path: path.to_path_buf(),
                ids: empty.get_ids().to_vec(),
            });
        }

        let mut fixed = full.clone();
        let truncation = TruncationParams {
            direction: TruncationDirection::Right,
            max_length: text_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        fixed.with_truncation(Some(truncation)).map_err(|err| load_error(err.to_string()))?;
        fixed.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(text_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: PAD_TOKEN.to_string(),
        }));
        Ok(Self { fixed, full, text_len, pad_id, eos_id })
    }

    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// Entries of the vocabulary, added tokens included (the largest id is one less).
    pub fn vocab_size(&self) -> usize {
        self.full.get_vocab_size(true)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Tokenize one prompt to exactly `text_len` ids.
    pub fn encode(&self, prompt: &str) -> Result<PromptTokens, TokenizerError> {
        let encode_error = |err: tokenizers::Error| TokenizerError::Encode {
            prompt: prompt.to_string(),
            reason: err.to_string(),
        };
        let fixed = self.fixed.encode(prompt, true).map_err(encode_error)?;
        let full = self.full.encode(prompt, true).map_err(encode_error)?;

        let prompt_tokens = full.get_ids().len();
        let cut = (prompt_tokens > self.text_len).then(|| {
            // Truncation keeps the first `text_len - 1` pieces and the final `</s>`.
            let first_dropped = self.text_len - 1;
            let start = full.get_offsets()[first_dropped].0;
            let text = prompt.get(start..).unwrap_or_default().trim().to_string();
            CutText { tokens: prompt_tokens - self.text_len, text }
        });
        Ok(PromptTokens {
            ids: fixed.get_ids().to_vec(),
            mask: fixed.get_attention_mask().to_vec(),
            prompt_tokens,
            cut,
        })
    }

    /// Tokenize several prompts.
    pub fn encode_batch(&self, prompts: &[&str]) -> Result<Vec<PromptTokens>, TokenizerError> {
        prompts.iter().map(|prompt| self.encode(prompt)).collect()
    }
}

/// Token ids `[batch, tokens]` and the float mask `[batch, tokens]` (1 real, 0 padding) of
/// tokenized prompts, all of the same length.
pub fn batch_tensors(prompts: &[PromptTokens], device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let batch = prompts.len();
    let tokens = prompts.first().map_or(0, |prompt| prompt.ids.len());
    assert!(
        prompts.iter().all(|prompt| prompt.ids.len() == tokens && prompt.mask.len() == tokens),
        "every prompt of a batch is padded to the tokenizer's text length"
    );
    let ids: Vec<i64> =
        prompts.iter().flat_map(|p| p.ids.iter().map(|&id| i64::from(id))).collect();
    let mask: Vec<f32> = prompts.iter().flat_map(|p| p.mask.iter().map(|&m| m as f32)).collect();
    let ids = Tensor::from_data(TensorData::new(ids, [batch, tokens]), device);
    let mask = Tensor::from_data(TensorData::new(mask, [batch, tokens]), device);
    (ids, mask)
}
