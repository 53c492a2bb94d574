//! The caption tokenizer: a word-level `tokenizer.json` trained with the `tokenizers` crate on
//! every caption of the dataset, in the T5 conventions [`PromptTokenizer`] relies on: `<pad>` is
//! id 0, `</s>` id 1 (appended by the post-processor), `<unk>` id 2 for words no caption uses.
//! Text is lowercased and split on whitespace and punctuation, so "Two red circles, top left"
//! and "two red circles , top left" give the same ids. The empty prompt is `[</s>]`: the null
//! condition.

use std::path::Path;

use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

use super::TrainError;
use crate::data::shapes::Scene;
use crate::text::tokenizer::{EOS_TOKEN, PAD_TOKEN};

/// Stands for words no caption contains.
pub const UNK_TOKEN: &str = "<unk>";

/// Train the tokenizer on all captions (held-out ones included: they only add no new words,
/// and a held-out caption must not be `<unk>`-ridden at evaluation) and write it to `path`.
pub fn train_tokenizer(path: &Path) -> Result<(), TrainError> {
    let failed = |reason: String| TrainError::Tokenizer { path: path.to_path_buf(), reason };
    let special = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN].map(|t| AddedToken::from(t, true)).to_vec();
    let mut trainer = WordLevelTrainer::builder()
        .show_progress(false)
        .special_tokens(special)
        .build()
        .map_err(|err| failed(err.to_string()))?;
    let model = WordLevel::builder()
        .unk_token(UNK_TOKEN.to_string())
        .build()
        .map_err(|err| failed(err.to_string()))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("$A {EOS_TOKEN}"))
        .and_then(|b| b.try_pair(format!("$A {EOS_TOKEN} $B {EOS_TOKEN}")))
        .map_err(failed)?
        .special_tokens(vec![(EOS_TOKEN, 1)])
        .build()
        .map_err(|err| failed(err.to_string()))?;
    let pre = Sequence::new(vec![WhitespaceSplit.into(), Punctuation::default().into()]);
    let mut tokenizer = TokenizerBuilder::<
        WordLevel,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(model)
    .with_normalizer(Some(Lowercase.into()))
    .with_pre_tokenizer(Some(pre.into()))
    .with_post_processor(Some(post.into()))
    .with_decoder(None)
    .build()
    .map_err(|err| failed(err.to_string()))?;

    let captions: Vec<String> = Scene::all().iter().map(Scene::caption).collect();
    tokenizer.train(&mut trainer, captions.iter()).map_err(|err| failed(err.to_string()))?;
    tokenizer.save(path, true).map_err(|err| failed(err.to_string()))?;
    Ok(())
}
