//! Hugging Face model folders: `config.json` next to the weights, stored either as one
//! safetensors file (`model.safetensors`) or as shards listed in an index
//! (`model.safetensors.index.json` mapping each key to `model-0000i-of-0000n.safetensors`).
//!
//! The index is only used to find the shard files. Which tensor is where is read from the shards
//! themselves: hub indexes list aliases that no shard holds (flan-t5-xl lists
//! `encoder.embed_tokens.weight`, an alias of `shared.weight`).
//!
//! This is shared by the text encoder and the autoencoder (diffusers names its files
//! `diffusion_pytorch_model.safetensors[.index.json]`).

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use burn::tensor::{Device, Tensor};
use serde::de::DeserializeOwned;

use crate::checkpoint::{CheckpointError, NamedTensor, RandomWeights, TensorFile, WeightLoader};

/// What can go wrong while finding a model's files in its folder.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "The folder has no {config:?}: it is probably not a model folder. Pick the folder that \
         holds config.json and the weights. (folder: {dir:?})"
    )]
    NoConfig { dir: PathBuf, config: String },
    #[error("The model's config could not be read: {reason}. {hint} (file: {path:?})")]
    Config { path: PathBuf, reason: String, hint: &'static str },
    #[error(
        "The folder has neither {single:?} nor {index:?}{other}. Download the safetensors weights \
         into this folder. (folder: {dir:?})"
    )]
    NoWeights { dir: PathBuf, single: String, index: String, other: String },
    #[error("The shard index could not be read: {reason}. Download it again. (file: {path:?})")]
    Index { path: PathBuf, reason: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// A config value the model code can't work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` is {value}, but {requirement}")]
pub struct InvalidConfig {
    pub field: &'static str,
    pub value: String,
    pub requirement: String,
}

impl InvalidConfig {
    pub fn new(
        field: &'static str,
        value: impl Into<String>,
        requirement: impl Into<String>,
    ) -> Self {
        Self { field, value: value.into(), requirement: requirement.into() }
    }
}

/// The weights of one model: one safetensors file, or every shard an index names.
pub struct WeightFiles {
    files: Vec<TensorFile>,
    /// The single file, or the index: what error messages name for a key no file holds.
    origin: PathBuf,
    /// Set for [`WeightFiles::random`]: every key is invented instead of read.
    random: Option<Mutex<RandomWeights>>,
}

/// Read and parse `dir/config.json` (or another name) into `T`; unknown keys are ignored.
pub fn read_config<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<T, HubError> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(HubError::NoConfig { dir: dir.to_path_buf(), config: name.to_string() });
    }
    let text = std::fs::read_to_string(&path).map_err(|err| HubError::Config {
        path: path.clone(),
        reason: err.to_string(),
        hint: "Check that the file is readable.",
    })?;
    serde_json::from_str(&text).map_err(|err| {
        // Valid JSON with the wrong keys is another kind of model; anything else a broken file.
        let hint = match err.classify() {
            serde_json::error::Category::Data => {
                "It is probably the config of another kind of model; pick the right folder."
            }
            _ => "The file is not valid JSON; download it again.",
        };
        HubError::Config { path, reason: err.to_string(), hint }
    })
}

impl WeightFiles {
    /// The weights in `dir`: `{stem}.safetensors` if present, else the shards listed in
    /// `{stem}.safetensors.index.json`.
    pub fn open_dir(dir: &Path, stem: &str) -> Result<Self, HubError> {
        let single = format!("{stem}.safetensors");
        let index = format!("{single}.index.json");
        if dir.join(&single).is_file() {
            return Self::open_file(&dir.join(&single));
        }
        if dir.join(&index).is_file() {
            return Self::open_index(&dir.join(&index));
        }

        // Name the PyTorch pickles we do not read, so the message says what to fetch instead.
        let pickles = [format!("{stem}.bin"), "pytorch_model.bin".to_string()];
        let other = match pickles.iter().find(|name| dir.join(name).is_file()) {
            Some(name) => {
                format!(" (only {name:?}, a PyTorch pickle; this loader reads safetensors)")
            }
            None => String::new(),
        };
        Err(HubError::NoWeights { dir: dir.to_path_buf(), single, index, other })
    }

    /// One safetensors (or `.pth`) file.
    pub fn open_file(path: &Path) -> Result<Self, HubError> {
        let file = TensorFile::open(path)?;
        Ok(Self { files: vec![file], origin: path.to_path_buf(), random: None })
    }

    /// Every shard named in a `*.safetensors.index.json` (shards are looked up next to it).
    pub fn open_index(path: &Path) -> Result<Self, HubError> {
        let index_error = |reason: String| HubError::Index { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|err| index_error(err.to_string()))?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|err| index_error(err.to_string()))?;
        let weight_map = index
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| index_error("it has no \"weight_map\" object".to_string()))?;

        let mut shard_names = BTreeSet::new();
        for (key, shard) in weight_map {
            let name = shard
                .as_str()
                .ok_or_else(|| index_error(format!("the shard of {key:?} is not a file name")))?;
            let plain = Path::new(name).components().all(|c| matches!(c, Component::Normal(_)));
            if !plain {
                return Err(index_error(format!("shard {name:?} lies outside the folder")));
            }
            shard_names.insert(name.to_string());
        }
        if shard_names.is_empty() {
            return Err(index_error("it lists no shards".to_string()));
        }

        let dir = path.parent().unwrap_or(Path::new("."));
        let files = shard_names
            .iter()
            .map(|name| TensorFile::open(dir.join(name)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { files, origin: path.to_path_buf(), random: None })
    }

    /// Weights that hold every key a loader asks for, drawn by `weights` (see
    /// [`RandomWeights`]): a T5 encoder or an autoencoder with random weights, built by the
    /// same loaders as a checkpoint, for tests and as a training start. [`Self::contains`] is
    /// false for every key, so the loaders pick the current key names.
    pub fn random(weights: RandomWeights) -> Self {
        let origin = PathBuf::from("<random weights>");
        Self { files: Vec::new(), origin, random: Some(Mutex::new(weights)) }
    }

    /// The tensors a random source handed out, in drawing order (empty for files).
    pub fn into_random_tensors(self) -> Vec<NamedTensor> {
        match self.random {
            Some(random) => {
                random.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()).into_tensors()
            }
            None => Vec::new(),
        }
    }

    /// The file or index the weights came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn files(&self) -> &[TensorFile] {
        &self.files
    }

    pub fn contains(&self, key: &str) -> bool {
        self.files.iter().any(|file| file.contains(key))
    }

    /// Number of stored elements over all files.
    pub fn num_elements(&self) -> usize {
        self.files.iter().map(TensorFile::num_elements).sum()
    }

    pub fn loader(&self, device: &Device) -> ShardedLoader<'_> {
        let loaders = self.files.iter().map(|file| WeightLoader::new(file, device)).collect();
        // A panic while drawing leaves nothing half-written that matters: keep drawing.
        let random =
            self.random.as_ref().map(|r| r.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        ShardedLoader { weights: self, loaders, random, device: device.clone() }
    }
}

/// A [`WeightLoader`] over several files: each key is taken from the file that holds it.
pub struct ShardedLoader<'a> {
    weights: &'a WeightFiles,
    loaders: Vec<WeightLoader<'a>>,
    /// The source of [`WeightFiles::random`], held while this loader lives.
    random: Option<MutexGuard<'a, RandomWeights>>,
    device: Device,
}

impl ShardedLoader<'_> {
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, key: &str) -> bool {
        self.weights.contains(key)
    }

    /// The tensor `key`, which must have exactly `shape`.
    pub fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Tensor<D>, CheckpointError> {
        if let Some(random) = self.random.as_mut() {
            return Ok(random.tensor(key, shape, &self.device));
        }
        let position = self.weights.files.iter().position(|file| file.contains(key));
        match position {
            Some(position) => self.loaders[position].tensor(key, shape),
            None => Err(CheckpointError::Missing {
                path: self.weights.origin.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
            }),
        }
    }

    /// A PyTorch `Linear` without bias (`{prefix}.weight` stored `[out, in]`) as burn's row
    /// layout `[in, out]`.
    pub fn linear_no_bias(
        &mut self,
        prefix: &str,
        d_input: usize,
        d_output: usize,
    ) -> Result<burn::nn::Linear, CheckpointError> {
        let weight = self.tensor(&format!("{prefix}.weight"), [d_output, d_input])?.transpose();
        Ok(burn::nn::Linear { weight: burn::module::Param::from_tensor(weight), bias: None })
    }

    /// A PyTorch `Linear` with bias, as burn's row layout `[in, out]`.
    pub fn linear(
        &mut self,
        prefix: &str,
        d_input: usize,
        d_output: usize,
    ) -> Result<burn::nn::Linear, CheckpointError> {
        let mut linear = self.linear_no_bias(prefix, d_input, d_output)?;
        let bias = self.tensor(&format!("{prefix}.bias"), [d_output])?;
        linear.bias = Some(burn::module::Param::from_tensor(bias));
        Ok(linear)
    }

    /// Refuse the keys nobody asked for in any file, except those `ignorable` accepts.
    pub fn finish(self, ignorable: impl Fn(&str) -> bool) -> Result<(), CheckpointError> {
        for loader in self.loaders {
            loader.finish(&ignorable)?;
        }
        Ok(())
    }
}
