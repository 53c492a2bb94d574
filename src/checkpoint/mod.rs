//! Reading weights: PyTorch `.pth` (zip or legacy pickle, through burn-store's reader) and
//! `.safetensors` (through the safetensors crate), in f32, f16, bf16 or f64, converted to f32.
//!
//! Loading is strict. [`WeightLoader`] hands out tensors by their official key with the shape
//! the model expects and remembers which keys it gave out; [`WeightLoader::finish`] then refuses
//! any key the model did not ask for, apart from the deprecated buffers the official code still
//! saves (see [`is_deprecated_buffer`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::store::pytorch_reader::{DType as TorchDType, PytorchReader, Tensor as TorchTensor};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype as SafeDtype, SafeTensors};

/// What can go wrong while reading a checkpoint. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("The checkpoint file could not be opened: {error}. Check the path. (file: {path:?})")]
    Open { path: PathBuf, error: std::io::Error },
    #[error("The checkpoint file is empty (0 bytes). Download it again. (file: {path:?})")]
    Empty { path: PathBuf },
    #[error(
        "This file is an HTML page, not a checkpoint: the download probably saved a web page \
         instead of the file. Download the file itself again. (file: {path:?})"
    )]
    Html { path: PathBuf },
    #[error(
        "This file is neither a PyTorch checkpoint (.pth) nor a safetensors file; it starts with \
         bytes {head:?}. Pick a .pth or .safetensors file. (file: {path:?})"
    )]
    UnknownFormat { path: PathBuf, head: Vec<u8> },
    #[error(
        "The checkpoint could not be read: {reason}. The file may be truncated or corrupt; \
         download it again. (file: {path:?})"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "The checkpoint has no tensor {key:?} (expected shape {expected:?}). It is probably a \
         checkpoint of another model or configuration. (file: {path:?})"
    )]
    Missing { path: PathBuf, key: String, expected: Vec<usize> },
    #[error(
        "This checkpoint doesn't fit the selected model: {key} is {found:?}, expected \
         {expected:?}. Pick the matching config or file. (file: {path:?})"
    )]
    Shape { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error(
        "The checkpoint has {count} tensor(s) the model does not use, first {first:?}: it is \
         probably a checkpoint of another model or configuration. (file: {path:?})"
    )]
    Unexpected { path: PathBuf, count: usize, first: String },
    #[error(
        "Tensor {key:?} is stored as {dtype}, but only float tensors (f32, f16, bf16, f64) can be \
         weights. (file: {path:?})"
    )]
    DType { path: PathBuf, key: String, dtype: String },
}

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDType {
    F64,
    F32,
    F16,
    BF16,
    /// Anything else (integers, bool, 8-bit floats): not usable as a weight.
    Other,
}

enum Source {
    /// Byte range in the memory-mapped safetensors file.
    Safetensors {
        start: usize,
        end: usize,
    },
    Pytorch(TorchTensor),
}

struct Entry {
    shape: Vec<usize>,
    dtype: StoredDType,
    dtype_name: String,
    source: Source,
}

/// An opened checkpoint: tensor names, shapes and types, with the data read on demand.
pub struct TensorFile {
    path: PathBuf,
    mmap: Option<memmap2::Mmap>,
    entries: BTreeMap<String, Entry>,
}

impl TensorFile {
    /// Open a `.pth` or `.safetensors` file, telling them apart by their first bytes.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path)
            .map_err(|error| CheckpointError::Open { path: path.clone(), error })?;
        let len = file
            .metadata()
            .map_err(|error| CheckpointError::Open { path: path.clone(), error })?
            .len();
        if len == 0 {
            return Err(CheckpointError::Empty { path });
        }

        // SAFETY: the map is read-only; a checkpoint changed by another program while we read
        // it gives wrong numbers or a read error, as any reader would, not undefined layout.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|error| CheckpointError::Open { path: path.clone(), error })?;
        let head: Vec<u8> = mmap.iter().take(16).copied().collect();

        if looks_like_html(&mmap) {
            return Err(CheckpointError::Html { path });
        }
        if head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80) {
            drop(mmap);
            return Self::open_pytorch(path);
        }
        if head.len() >= 9 && head[8] == b'{' {
            return Self::open_safetensors(path, mmap);
        }
        Err(CheckpointError::UnknownFormat { path, head })
    }

    fn open_safetensors(path: PathBuf, mmap: memmap2::Mmap) -> Result<Self, CheckpointError> {
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|err| {
            CheckpointError::Corrupt { path: path.clone(), reason: err.to_string() }
        })?;
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            let dtype = match info.dtype {
                SafeDtype::F64 => StoredDType::F64,
                SafeDtype::F32 => StoredDType::F32,
                SafeDtype::F16 => StoredDType::F16,
                SafeDtype::BF16 => StoredDType::BF16,
                _ => StoredDType::Other,
            };
            let source = Source::Safetensors { start: data_start + start, end: data_start + end };
            let entry = Entry {
                shape: info.shape.clone(),
                dtype,
                dtype_name: format!("{:?}", info.dtype),
                source,
            };
            entries.insert(name, entry);
        }
        Ok(Self { path, mmap: Some(mmap), entries })
    }

    fn open_pytorch(path: PathBuf) -> Result<Self, CheckpointError> {
        let reader = PytorchReader::new(&path).map_err(|err| CheckpointError::Corrupt {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        let mut entries = BTreeMap::new();
        for (name, tensor) in reader.into_tensors() {
            let dtype = match tensor.dtype() {
                TorchDType::F64 => StoredDType::F64,
                TorchDType::F32 => StoredDType::F32,
                TorchDType::F16 => StoredDType::F16,
                TorchDType::BF16 => StoredDType::BF16,
                _ => StoredDType::Other,
            };
            let entry = Entry {
                shape: tensor.shape().to_vec(),
                dtype,
                dtype_name: format!("{:?}", tensor.dtype()),
                source: Source::Pytorch(tensor),
            };
            entries.insert(name, entry);
        }
        Ok(Self { path, mmap: None, entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|entry| entry.shape.as_slice())
    }

    pub fn dtype(&self, key: &str) -> Option<StoredDType> {
        self.entries.get(key).map(|entry| entry.dtype)
    }

    /// Elements of the largest tensor (what must fit in one GPU buffer).
    pub fn largest_tensor_elements(&self) -> usize {
        self.entries.values().map(|entry| entry.shape.iter().product::<usize>()).max().unwrap_or(0)
    }

    /// Number of stored elements over all tensors.
    pub fn num_elements(&self) -> usize {
        self.entries.values().map(|entry| entry.shape.iter().product::<usize>()).sum()
    }

    /// The tensor's values as f64, whatever float type it is stored in.
    pub fn read_f64(&self, key: &str) -> Result<Vec<f64>, CheckpointError> {
        let (entry, bytes) = self.raw(key)?;
        let values = match entry.dtype {
            StoredDType::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("chunks_exact yields 8 bytes")))
                .collect(),
            _ => self.read_f32(key)?.into_iter().map(f64::from).collect(),
        };
        Ok(values)
    }

    /// The tensor's values as f32 (f64 is rounded, f16 and bf16 widened).
    pub fn read_f32(&self, key: &str) -> Result<Vec<f32>, CheckpointError> {
        let (entry, bytes) = self.raw(key)?;
        let expected_len = entry.shape.iter().product::<usize>();
        let values: Vec<f32> = match entry.dtype {
            StoredDType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("chunks_exact yields 4 bytes")))
                .collect(),
            StoredDType::F64 => bytes
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes(b.try_into().expect("chunks_exact yields 8 bytes")) as f32
                })
                .collect(),
            StoredDType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StoredDType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StoredDType::Other => {
                return Err(CheckpointError::DType {
                    path: self.path.clone(),
                    key: key.to_string(),
                    dtype: entry.dtype_name.clone(),
                });
            }
        };
        if values.len() != expected_len {
            return Err(self.corrupt(format!(
                "tensor {key:?} holds {} values, its shape {:?} needs {expected_len}",
                values.len(),
                entry.shape
            )));
        }
        Ok(values)
    }

    fn raw(&self, key: &str) -> Result<(&Entry, std::borrow::Cow<'_, [u8]>), CheckpointError> {
        let entry = self.entries.get(key).ok_or_else(|| CheckpointError::Missing {
            path: self.path.clone(),
            key: key.to_string(),
            expected: Vec::new(),
        })?;
        let bytes = match &entry.source {
            Source::Safetensors { start, end } => {
                let mmap = self.mmap.as_ref().expect("safetensors entries keep their map");
                let slice = mmap.get(*start..*end).ok_or_else(|| {
                    self.corrupt(format!("tensor {key:?} lies past the end of the file"))
                })?;
                std::borrow::Cow::Borrowed(slice)
            }
            Source::Pytorch(tensor) => {
                std::borrow::Cow::Owned(tensor.read().map_err(|err| self.corrupt(err.to_string()))?)
            }
        };
        Ok((entry, bytes))
    }

    fn corrupt(&self, reason: String) -> CheckpointError {
        CheckpointError::Corrupt { path: self.path.clone(), reason }
    }
}

fn looks_like_html(bytes: &[u8]) -> bool {
    let start: Vec<u8> = bytes
        .iter()
        .take(512)
        .skip_while(|b| b.is_ascii_whitespace() || **b == 0xEF || **b == 0xBB || **b == 0xBF)
        .take(15)
        .map(|b| b.to_ascii_lowercase())
        .collect();
    start.starts_with(b"<!doctype html")
        || start.starts_with(b"<html")
        || start.starts_with(b"<?xml")
}

/// Buffers the official code saves but never uses: `var`, `feat_rope.freqs_cos/sin` and each
/// block's `attn_mask`. They may be present or absent.
pub fn is_deprecated_buffer(key: &str) -> bool {
    key == "var"
        || key == "feat_rope.freqs_cos"
        || key == "feat_rope.freqs_sin"
        || (key.starts_with("blocks.") && key.ends_with(".attn_mask"))
}

/// A named f32 tensor in row-major order, as written to a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub key: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Write tensors as a float32 safetensors file with the given keys.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<(), std::io::Error> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            let view = safetensors::tensor::TensorView::new(SafeDtype::F32, t.shape.clone(), b)
                .expect("the byte length matches the shape by construction");
            (t.key.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).map_err(std::io::Error::other)
}

/// Random weights following the recipe of the golden vectors (../shared/golden/README.md),
/// which keeps the flows non-trivial and sampling bounded: LayerNorm 1 + 0.1 N and 0.1 N,
/// RMSNorm 0.2 N, Linear N / sqrt(fan_in) (proj_out scaled by `proj_out_factor`), biases
/// 0.05 N, start tokens N, learned positions 0.1 N, class embeddings 0.5 N.
pub struct RandomWeights {
    rng: rand_chacha::ChaCha8Rng,
    pub proj_out_factor: f32,
    produced: Vec<NamedTensor>,
}

impl RandomWeights {
    pub fn new(seed: u64, proj_out_factor: f32) -> Self {
        use rand::SeedableRng;
        Self {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            proj_out_factor,
            produced: Vec::new(),
        }
    }

    fn draw(&mut self, key: &str, shape: &[usize]) -> Vec<f32> {
        use rand_distr::{Distribution, StandardNormal};
        let count: usize = shape.iter().product();
        let last = key.rsplit('.').next().unwrap_or(key);
        let (mean, std) = if key.ends_with("final_norm.weight") {
            (0.0, 0.2)
        } else if key.ends_with("norm.weight") {
            (1.0, 0.1)
        } else if key.ends_with("norm.bias") {
            (0.0, 0.1)
        } else if last == "bias" {
            (0.0, 0.05)
        } else if last == "sos_embed" {
            (0.0, 1.0)
        } else if last == "pos_embed" {
            (0.0, 0.1)
        } else if last == "class_embed" {
            (0.0, 0.5)
        } else {
            let fan_in = *shape.last().unwrap_or(&1) as f32;
            let factor = if key.ends_with("proj_out.weight") { self.proj_out_factor } else { 1.0 };
            (0.0, factor / fan_in.sqrt())
        };
        (0..count)
            .map(|_| {
                let n: f32 = StandardNormal.sample(&mut self.rng);
                mean + std * n
            })
            .collect()
    }

    /// Everything drawn so far, in drawing order.
    pub fn into_tensors(self) -> Vec<NamedTensor> {
        self.produced
    }

    /// Draw the tensor `key` of `shape` as [`WeightLoader::random`] does, and record it.
    pub fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Tensor<D> {
        let values = self.draw(key, &shape);
        let drawn =
            NamedTensor { key: key.to_string(), shape: shape.to_vec(), values: values.clone() };
        self.produced.push(drawn);
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

enum LoaderSource<'a> {
    File(&'a TensorFile),
    Random(&'a mut RandomWeights),
}

/// Hands out a checkpoint's tensors by key with shape checks, and keeps track of what was used.
pub struct WeightLoader<'a> {
    source: LoaderSource<'a>,
    device: Device,
    used: BTreeSet<String>,
    linear_dtype: burn::tensor::DType,
}

impl<'a> WeightLoader<'a> {
    pub fn new(file: &'a TensorFile, device: &Device) -> Self {
        Self {
            source: LoaderSource::File(file),
            device: device.clone(),
            used: BTreeSet::new(),
            linear_dtype: burn::tensor::DType::F32,
        }
    }

    /// A loader that invents every tensor it is asked for (tiny test and benchmark models).
    pub fn random(weights: &'a mut RandomWeights, device: &Device) -> Self {
        Self {
            source: LoaderSource::Random(weights),
            device: device.clone(),
            used: BTreeSet::new(),
            linear_dtype: burn::tensor::DType::F32,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Store the weights and biases of [`linear`](Self::linear) layers in `dtype` (f16 halves
    /// the memory of a large model on a GPU); everything else stays f32.
    pub fn with_linear_dtype(mut self, dtype: burn::tensor::DType) -> Self {
        self.linear_dtype = dtype;
        self
    }

    /// The tensor `key`, which must have exactly `shape`.
    pub fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Tensor<D>, CheckpointError> {
        let values = match &mut self.source {
            LoaderSource::File(file) => {
                let found = file.shape(key).ok_or_else(|| CheckpointError::Missing {
                    path: file.path.clone(),
                    key: key.to_string(),
                    expected: shape.to_vec(),
                })?;
                if found != shape.as_slice() {
                    return Err(CheckpointError::Shape {
                        path: file.path.clone(),
                        key: key.to_string(),
                        expected: shape.to_vec(),
                        found: found.to_vec(),
                    });
                }
                file.read_f32(key)?
            }
            LoaderSource::Random(random) => {
                let values = random.draw(key, &shape);
                random.produced.push(NamedTensor {
                    key: key.to_string(),
                    shape: shape.to_vec(),
                    values: values.clone(),
                });
                values
            }
        };
        self.used.insert(key.to_string());
        Ok(Tensor::from_data(TensorData::new(values, shape), &self.device))
    }

    /// A PyTorch `Linear` (`{prefix}.weight` stored `[out, in]`, `{prefix}.bias` `[out]`) as
    /// burn's row layout `[in, out]`.
    pub fn linear(
        &mut self,
        prefix: &str,
        d_input: usize,
        d_output: usize,
    ) -> Result<burn::nn::Linear, CheckpointError> {
        let dtype = self.linear_dtype;
        let weight = self.tensor(&format!("{prefix}.weight"), [d_output, d_input])?.transpose();
        let bias = self.tensor(&format!("{prefix}.bias"), [d_output])?;
        let (weight, bias) = if dtype == burn::tensor::DType::F32 {
            (weight, bias)
        } else {
            (weight.cast(dtype), bias.cast(dtype))
        };
        Ok(burn::nn::Linear {
            weight: burn::module::Param::from_tensor(weight),
            bias: Some(burn::module::Param::from_tensor(bias)),
        })
    }

    /// A PyTorch `LayerNorm` with affine weight and bias.
    pub fn layer_norm(
        &mut self,
        prefix: &str,
        dim: usize,
        epsilon: f64,
    ) -> Result<burn::nn::LayerNorm, CheckpointError> {
        let mut norm = burn::nn::LayerNormConfig::new(dim).with_epsilon(epsilon).init(&self.device);
        norm.gamma =
            burn::module::Param::from_tensor(self.tensor(&format!("{prefix}.weight"), [dim])?);
        norm.beta =
            Some(burn::module::Param::from_tensor(self.tensor(&format!("{prefix}.bias"), [dim])?));
        Ok(norm)
    }

    /// Refuse the keys nobody asked for, except those `ignorable` accepts.
    pub fn finish(self, ignorable: impl Fn(&str) -> bool) -> Result<(), CheckpointError> {
        let LoaderSource::File(file) = self.source else { return Ok(()) };
        let unexpected: Vec<&str> =
            file.keys().filter(|key| !self.used.contains(*key) && !ignorable(key)).collect();
        match unexpected.first() {
            None => Ok(()),
            Some(first) => Err(CheckpointError::Unexpected {
                path: file.path.clone(),
                count: unexpected.len(),
                first: first.to_string(),
            }),
        }
    }

    /// Keys used so far (for reports).
    pub fn used(&self) -> usize {
        self.used.len()
    }
}
