//! Text conditioning: prompt -> token ids -> T5 encoder -> `[batch, text_len, model_dim]`
//! vectors with padded positions zeroed, as STARFlow computes them (spec section 4).
//!
//! - [`tokenizer`]: `tokenizer.json` through the `tokenizers` crate, padded and truncated to the
//!   flow's text length, with a report of what was cut
//! - [`t5`]: the T5 v1.1 / flan-t5 encoder stack; [`t5_config`]: its `config.json`
//! - [`hub`]: finding `config.json` and the (possibly sharded) weights in a model folder

pub mod hub;
pub mod t5;
pub mod t5_config;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};

pub use t5::{T5Config, T5Encoder, T5Error};
pub use tokenizer::{CutText, PromptTokenizer, PromptTokens, TokenizerError};

/// What can go wrong while loading the text encoder and its tokenizer from one folder.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Encoder(#[from] T5Error),
    #[error(
        "The tokenizer has {tokenizer} entries but the text encoder embeds only {vocab_size}: \
         they belong to different models. Use the tokenizer.json of the encoder's own \
         repository. (folder: {dir:?})"
    )]
    VocabMismatch { dir: PathBuf, tokenizer: usize, vocab_size: usize },
}

/// The tokenizer and the encoder of one Hugging Face folder (for example google/flan-t5-xl).
pub struct TextEncoder {
    pub tokenizer: PromptTokenizer,
    pub encoder: T5Encoder,
}

impl TextEncoder {
    /// Load `tokenizer.json`, `config.json` and the weights from `dir`; prompts are padded and
    /// truncated to `text_len` tokens (STARFlow's `txt_size`, 128 for the released model).
    pub fn load_dir(
        dir: impl AsRef<Path>,
        text_len: usize,
        device: &Device,
    ) -> Result<Self, TextError> {
        let dir = dir.as_ref();
        let tokenizer = PromptTokenizer::from_file(dir.join("tokenizer.json"), text_len)?;
        let encoder = T5Encoder::load_dir(dir, device)?;

        // An id past the embedding would panic inside the gather, so refuse the pair here.
        let entries = tokenizer.vocab_size();
        let vocab_size = encoder.config().vocab_size;
        if entries > vocab_size {
            return Err(TextError::VocabMismatch {
                dir: dir.to_path_buf(),
                tokenizer: entries,
                vocab_size,
            });
        }
        Ok(Self { tokenizer, encoder })
    }

    /// Tokenize and encode `prompts`.
    ///
    /// # Shapes
    /// - returns `[batch, text_len, model_dim]`, zero at padded positions, and the tokens of
    ///   each prompt (for the UI: tokens used, text cut)
    pub fn encode(
        &self,
        prompts: &[&str],
    ) -> Result<(Tensor<3>, Vec<PromptTokens>), TokenizerError> {
        let tokens = self.tokenizer.encode_batch(prompts)?;
        let device = self.encoder.shared.val().device();
        let (ids, mask) = tokenizer::batch_tensors(&tokens, &device);
        Ok((self.encoder.forward(ids, mask), tokens))
    }
}
