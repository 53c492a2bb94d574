//! Loading broken copies of the fixture (built in a temp dir) must fail with an error that
//! names the problem: a missing tensor, an unexpected one, a wrong shape, a truncated file, a
//! missing shard, the wrong folder.

use std::path::Path;

use safetensors::Dtype;
use starflow_studio::autoencoder::{AutoencoderError, AutoencoderKl};
use starflow_studio::checkpoint::{CheckpointError, TensorFile};
use starflow_studio::text::hub::HubError;
use starflow_studio::text::{PromptTokenizer, T5Encoder, T5Error, TokenizerError};

use super::reference::{cpu, fixture};

type Stored = (String, Vec<usize>, Vec<f32>);

/// Copy `src` to `dst`, letting `edit` drop, add, rename or reshape tensors: each stored tensor
/// becomes the tensors `edit` returns for it.
fn rewrite_safetensors(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Vec<Stored>,
) {
    let file = TensorFile::open(src).unwrap_or_else(|err| panic!("{err}"));
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .keys()
        .flat_map(|key| {
            let shape = file.shape(key).expect("listed keys have a shape").to_vec();
            let values = file.read_f32(key).expect("the fixture's weights are f32");
            edit(key, shape, values)
        })
        .map(|(key, shape, values)| {
            (key, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(key, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .expect("the byte length matches the shape");
            (key.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, dst).expect("the temp dir is writable");
}

fn copy(src: &Path, dst: &Path, names: &[&str]) {
    for name in names {
        std::fs::copy(src.join(name), dst.join(name)).expect("the fixture file copies");
    }
}

#[test]
fn t5_with_a_missing_tensor_names_it() {
    let temp = tempfile::tempdir().expect("a temp dir");
    copy(&fixture("t5"), temp.path(), &["config.json"]);
    let missing = "encoder.block.1.layer.1.DenseReluDense.wo.weight";
    rewrite_safetensors(
        &fixture("t5/model.safetensors"),
        &temp.path().join("model.safetensors"),
        |key, shape, values| {
            if key == missing { vec![] } else { vec![(key.to_string(), shape, values)] }
        },
    );

    let err = T5Encoder::load_dir(temp.path(), &cpu()).expect_err("a tensor is missing");
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, T5Error::Checkpoint(CheckpointError::Missing { .. })), "{err:?}");
    assert!(message.contains(missing) && message.contains("[32, 64]"), "{message}");
    assert!(message.contains("model.safetensors"), "names the file: {message}");
}

#[test]
fn t5_with_an_unexpected_encoder_tensor_refuses_it() {
    let temp = tempfile::tempdir().expect("a temp dir");
    copy(&fixture("t5"), temp.path(), &["config.json"]);
    // Only block 0 has a position bias in T5; a second one means another architecture.
    let bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    let extra = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";
    rewrite_safetensors(
        &fixture("t5/model.safetensors"),
        &temp.path().join("model.safetensors"),
        |key, shape, values| {
            let mut tensors = vec![(key.to_string(), shape.clone(), values.clone())];
            if key == bias {
                tensors.push((extra.to_string(), shape, values));
            }
            tensors
        },
    );

    let err = T5Encoder::load_dir(temp.path(), &cpu()).expect_err("an unexpected tensor");
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, T5Error::Checkpoint(CheckpointError::Unexpected { .. })), "{err:?}");
    assert!(message.contains(extra), "{message}");
}

#[test]
fn t5_shard_listed_in_the_index_but_absent_is_named() {
    let temp = tempfile::tempdir().expect("a temp dir");
    let hub = fixture("t5/hub_layout");
    copy(
        &hub,
        temp.path(),
        &["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"],
    );

    let err = T5Encoder::load_dir(temp.path(), &cpu()).expect_err("shard 2 is missing");
    let message = err.to_string();
    println!("{message}");
    assert!(
        matches!(err, T5Error::Hub(HubError::Checkpoint(CheckpointError::Open { .. }))),
        "{err:?}"
    );
    assert!(message.contains("model-00002-of-00002.safetensors"), "{message}");
}

#[test]
fn vae_with_a_wrong_shape_names_key_and_shapes() {
    let temp = tempfile::tempdir().expect("a temp dir");
    copy(&fixture("vae"), temp.path(), &["config.json"]);
    let target = temp.path().join("diffusion_pytorch_model.safetensors");
    rewrite_safetensors(
        &fixture("vae/diffusion_pytorch_model.safetensors"),
        &target,
        |key, shape, values| {
            if key == "decoder.conv_in.weight" {
                let shape = vec![shape[0], shape[1], 1, 1];
                let values = values[..shape.iter().product()].to_vec();
                return vec![(key.to_string(), shape, values)];
            }
            vec![(key.to_string(), shape, values)]
        },
    );

    let err = AutoencoderKl::load_dir(temp.path(), &cpu()).expect_err("one shape is wrong");
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, AutoencoderError::Checkpoint(CheckpointError::Shape { .. })), "{err:?}");
    assert!(message.contains("decoder.conv_in.weight"), "{message}");
    assert!(message.contains("[32, 4, 1, 1]") && message.contains("[32, 4, 3, 3]"), "{message}");
}

#[test]
fn vae_with_a_truncated_file_says_so() {
    let temp = tempfile::tempdir().expect("a temp dir");
    copy(&fixture("vae"), temp.path(), &["config.json"]);
    let bytes = std::fs::read(fixture("vae/diffusion_pytorch_model.safetensors")).expect("fixture");
    let target = temp.path().join("diffusion_pytorch_model.safetensors");
    std::fs::write(&target, &bytes[..bytes.len() / 2]).expect("the temp dir is writable");

    let err = AutoencoderKl::load_dir(temp.path(), &cpu()).expect_err("the file is cut in half");
    let message = err.to_string();
    println!("{message}");
    assert!(
        matches!(
            err,
            AutoencoderError::Hub(HubError::Checkpoint(CheckpointError::Corrupt { .. }))
                | AutoencoderError::Checkpoint(CheckpointError::Corrupt { .. })
        ),
        "{err:?}"
    );
    assert!(
        message.contains("truncated") && message.contains("diffusion_pytorch_model.safetensors"),
        "{message}"
    );
}

#[test]
fn loading_from_the_wrong_folder_says_what_is_wrong() {
    // The T5 folder given to the autoencoder, and the other way round.
    let err = AutoencoderKl::load_dir(fixture("t5"), &cpu()).expect_err("a T5 folder");
    println!("{err}");
    assert!(matches!(err, AutoencoderError::Hub(HubError::Config { .. })), "{err:?}");
    assert!(err.to_string().contains("block_out_channels"), "{err}");

    let err = T5Encoder::load_dir(fixture("vae"), &cpu()).expect_err("a VAE folder");
    println!("{err}");
    assert!(matches!(err, T5Error::Hub(HubError::Config { .. })), "{err:?}");
    assert!(err.to_string().contains("config.json"), "{err}");

    // A folder with no model at all, and one with a config but no weights.
    let temp = tempfile::tempdir().expect("a temp dir");
    let err = T5Encoder::load_dir(temp.path(), &cpu()).expect_err("an empty folder");
    println!("{err}");
    assert!(matches!(err, T5Error::Hub(HubError::NoConfig { .. })), "{err:?}");

    copy(&fixture("vae"), temp.path(), &["config.json"]);
    let err = AutoencoderKl::load_dir(temp.path(), &cpu()).expect_err("no weights");
    println!("{err}");
    assert!(matches!(err, AutoencoderError::Hub(HubError::NoWeights { .. })), "{err:?}");
    assert!(err.to_string().contains("diffusion_pytorch_model.safetensors"), "{err}");

    // A tokenizer path that is not a tokenizer.
    let err =
        PromptTokenizer::from_file(fixture("t5/config.json"), 16).expect_err("not a tokenizer");
    println!("{err}");
    assert!(matches!(err, TokenizerError::Load { .. }), "{err:?}");
    assert!(err.to_string().contains("config.json"), "{err}");
}
