//! Reading `tests/golden-hf` (and the folders of `STARFLOW_GOLDEN_HF_DIR`) and comparing our
//! tensors with the float64 references under tolerances derived from `tolerances.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use starflow_studio::backend::wgpu_adapter_name;
use starflow_studio::checkpoint::{StoredDType, TensorFile};

/// Our float32 kernels add in other orders than PyTorch's (matmul tiling, convolution lowering,
/// reductions), so our error against the float64 run is of the size of the reference's own
/// float32 error, not equal to it: allow this multiple of it.
pub const F32_ERROR_FACTOR: f64 = 4.0;

/// Where the reference's float32 run is exact (gathers, copies, clamps), allow this many float32
/// ulps of the tensor's largest value (exp on a GPU is a few ulps off).
pub const ULP_ALLOWANCE: f64 = 8.0;

// ---------------------------------------------------------------------------------------------
// Folders and devices

/// The in-repo fixture, then the folders of `STARFLOW_GOLDEN_HF_DIR`.
pub fn golden_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden-hf")];
    if let Ok(extra) = std::env::var("STARFLOW_GOLDEN_HF_DIR") {
        for dir in extra.split(':').filter(|part| !part.is_empty()).map(PathBuf::from) {
            assert!(dir.is_dir(), "STARFLOW_GOLDEN_HF_DIR lists {dir:?}, which is not a folder");
            dirs.push(dir);
        }
    }
    dirs
}

/// `dir/part` when it exists; the in-repo fixture must have every part.
pub fn part(dir: &Path, part: &str) -> Option<PathBuf> {
    let path = dir.join(part);
    if path.is_dir() {
        return Some(path);
    }
    let in_repo = dir == Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden-hf");
    assert!(!in_repo, "the in-repo fixture lacks {path:?}");
    println!("{dir:?} has no {part}/; skipping it there");
    None
}

/// The CPU device (burn-flex).
pub fn cpu() -> Device {
    Device::flex()
}

/// The wgpu device when wgpu finds an adapter; otherwise `test` says plainly that it skips.
pub fn wgpu(test: &str) -> Option<Device> {
    match wgpu_adapter_name() {
        Some(name) => {
            println!("{test}: running on wgpu adapter {name}");
            Some(Device::wgpu(Default::default()))
        }
        None => {
            println!("{test}: no wgpu adapter was found; skipping the wgpu part");
            None
        }
    }
}

/// One `outputs_f64.safetensors` with its `tolerances.json`.
pub struct Reference {
    pub file: TensorFile,
    pub bytes: Vec<u8>,
    pub tolerances: serde_json::Value,
    pub label: String,
    pub compared: BTreeSet<String>,
    pub failures: Vec<String>,
}

impl Reference {
    pub fn open(dir: &Path, label: &str) -> Self {
        let path = dir.join("outputs_f64.safetensors");
        let file = TensorFile::open(&path).unwrap_or_else(|err| panic!("{err}"));
        let bytes = std::fs::read(&path).expect("the reference file was just opened");
        let text =
            std::fs::read_to_string(dir.join("tolerances.json")).expect("tolerances.json exists");
        let tolerances = serde_json::from_str(&text).expect("tolerances.json is JSON");
        let label = format!("{label} {}", dir.display());
        Self { file, bytes, tolerances, label, compared: BTreeSet::new(), failures: Vec::new() }
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.contains(name)
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.file.shape(name).unwrap_or_else(|| panic!("the reference has no {name}")).to_vec()
    }

    pub fn f64s(&self, name: &str) -> Vec<f64> {
        self.file.read_f64(name).unwrap_or_else(|err| panic!("{err}"))
    }

    pub fn i64s(&self, name: &str) -> Vec<i64> {
        let tensors = SafeTensors::deserialize(&self.bytes).expect("the reference parses");
        let view = tensors.tensor(name).unwrap_or_else(|_| panic!("the reference has no {name}"));
        assert_eq!(view.dtype(), Dtype::I64, "{name} is int64");
        view.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("chunks_exact yields 8 bytes")))
            .collect()
    }

    /// The reference tensor as an f32 input on `device`.
    pub fn input<const D: usize>(&mut self, name: &str, device: &Device) -> Tensor<D> {
        self.compared.insert(name.to_string());
        let shape: [usize; D] = self.shape(name).try_into().expect("the input has rank D");
        let values: Vec<f32> = self.f64s(name).into_iter().map(|v| v as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// `F32_ERROR_FACTOR` times the reference's own f32 error, plus `ULP_ALLOWANCE` ulps.
    pub fn tolerance(&self, name: &str) -> f64 {
        let entry = &self.tolerances["f32_vs_f64"][name];
        let max_abs_diff = entry["max_abs_diff"].as_f64();
        let max_abs_value = entry["max_abs_value"].as_f64();
        let (Some(diff), Some(value)) = (max_abs_diff, max_abs_value) else {
            panic!("tolerances.json has no f32_vs_f64 figures for {name}");
        };
        F32_ERROR_FACTOR * diff + ULP_ALLOWANCE * f64::from(f32::EPSILON) * value
    }

    /// Compare `ours` with reference tensor `name`; a mismatch is recorded, printed with its
    /// worst entries, and fails the test in [`Self::finish`]. Returns the largest error.
    pub fn compare<const D: usize>(&mut self, name: &str, ours: Tensor<D>) -> f64 {
        self.compared.insert(name.to_string());
        let shape = self.shape(name);
        let ours_shape = ours.dims().to_vec();
        if ours_shape != shape {
            let message = format!("{name}: our shape {ours_shape:?}, reference {shape:?}");
            println!("[{}] FAIL {message}", self.label);
            self.failures.push(message);
            return f64::INFINITY;
        }
        let ours: Vec<f32> = ours.try_into_vec_as::<f32>().expect("our tensor reads back");
        let reference = self.f64s(name);
        let tolerance = self.tolerance(name);

        let errors: Vec<f64> =
            ours.iter().zip(&reference).map(|(&o, &r)| (f64::from(o) - r).abs()).collect();
        let max_error = errors
            .iter()
            .fold(0.0f64, |max, &e| if e.is_nan() { f64::INFINITY } else { max.max(e) });
        let failing: Vec<usize> =
            (0..errors.len()).filter(|&i| !(errors[i] <= tolerance)).collect();
        println!(
            "[{}] {name}: max |ours - f64| = {max_error:.3e} (tolerance {tolerance:.3e})",
            self.label
        );
        if !failing.is_empty() {
            let mut worst = failing.clone();
            worst.sort_by(|&a, &b| errors[b].total_cmp(&errors[a]));
            for &i in worst.iter().take(5) {
                println!(
                    "    {name}{:?}: ours {:.9}, reference {:.9}, diff {:.3e}",
                    unravel(i, &shape),
                    ours[i],
                    reference[i],
                    errors[i]
                );
            }
            let message = format!(
                "{name}: {} of {} entries off by more than {tolerance:.3e} (max {max_error:.3e})",
                failing.len(),
                errors.len()
            );
            println!("[{}] FAIL {message}", self.label);
            self.failures.push(message);
        }
        max_error
    }

    /// Fail if a comparison failed or a float tensor of the file was not looked at.
    pub fn finish(self) {
        let unchecked: Vec<&str> = self
            .file
            .keys()
            .filter(|key| !self.compared.contains(*key))
            .filter(|key| self.file.dtype(key) == Some(StoredDType::F64))
            .collect();
        assert!(
            unchecked.is_empty(),
            "[{}] reference tensors not compared: {unchecked:?}",
            self.label
        );
        assert!(
            self.failures.is_empty(),
            "[{}] mismatches:\n{}",
            self.label,
            self.failures.join("\n")
        );
    }
}

pub fn unravel(mut index: usize, shape: &[usize]) -> Vec<usize> {
    let mut position = vec![0; shape.len()];
    for (axis, &size) in shape.iter().enumerate().rev() {
        position[axis] = index % size;
        index /= size;
    }
    position
}

/// Text lengths with reference tensors (`L16.*`, `L128.*`).
pub fn text_lengths(reference: &Reference) -> Vec<usize> {
    let mut lengths: Vec<usize> = reference
        .file
        .keys()
        .filter_map(|key| key.strip_prefix('L')?.strip_suffix(".input_ids")?.parse().ok())
        .collect();
    lengths.sort_unstable();
    assert!(!lengths.is_empty(), "the T5 reference has no L*.input_ids");
    lengths
}

/// Reference ids `[batch, tokens]` and float mask for text length `len`.
pub fn reference_tokens(
    reference: &mut Reference,
    len: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2>) {
    let shape: [usize; 2] =
        reference.shape(&format!("L{len}.input_ids")).try_into().expect("rank 2");
    let ids = reference.i64s(&format!("L{len}.input_ids"));
    let mask: Vec<f32> =
        reference.i64s(&format!("L{len}.attention_mask")).iter().map(|&m| m as f32).collect();
    let ids = Tensor::from_data(TensorData::new(ids, shape), device);
    let mask = Tensor::from_data(TensorData::new(mask, shape), device);
    (ids, mask)
}

pub struct Prompts {
    pub texts: Vec<String>,
    /// Untruncated token count per prompt, `</s>` included.
    pub num_tokens: Vec<usize>,
}

pub fn prompts(t5_dir: &Path) -> Prompts {
    let text = std::fs::read_to_string(t5_dir.join("prompts.json")).expect("prompts.json exists");
    let json: serde_json::Value = serde_json::from_str(&text).expect("prompts.json is JSON");
    let texts = json["prompts"]
        .as_array()
        .expect("prompts.json lists prompts")
        .iter()
        .map(|p| p.as_str().expect("a prompt is a string").to_string())
        .collect();
    let num_tokens = json["per_prompt"]
        .as_array()
        .expect("prompts.json has per_prompt")
        .iter()
        .map(|p| p["num_tokens"].as_u64().expect("num_tokens is a count") as usize)
        .collect();
    Prompts { texts, num_tokens }
}

/// A part (`t5`, `vae`, ...) of the in-repo fixture.
pub fn fixture(part: &str) -> PathBuf {
    golden_dirs()[0].join(part)
}
