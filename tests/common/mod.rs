//! Shared helpers for the reference comparisons: finding golden folders, reading reference
//! tensors, comparing with tolerances derived from the reference's own float32 error.

#![allow(dead_code)]

pub mod pth;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use starflow_studio::checkpoint::TensorFile;

/// A different but equally careful float32 implementation accumulates in another order, so
/// its error against the float64 twin may be a few times the official float32 run's error;
/// this factor bounds that. Measured ratios are printed by each test.
pub const F32_ERROR_FACTOR: f64 = 10.0;

/// Floor relative to the tensor's magnitude, for tensors the official f32 run reproduced
/// exactly (inputs) or that tolerances.json does not list: about 8 float32 ulps.
pub const RELATIVE_FLOOR: f64 = 1e-6;

/// The in-repository copy of ../shared/golden plus every folder in `STARFLOW_GOLDEN_DIR`
/// (colon-separated, same layout: one subfolder per config).
pub fn golden_config_dirs(in_repo: &str, env: &str) -> Vec<PathBuf> {
    let mut roots = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(in_repo)];
    if let Ok(extra) = std::env::var(env) {
        roots.extend(extra.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    let mut dirs = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            panic!("golden folder {root:?} cannot be read");
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("config.json").is_file())
            .collect();
        found.sort();
        dirs.extend(found);
    }
    dirs
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The wgpu device if an adapter exists; otherwise says so plainly and gives `None`.
pub fn wgpu_device_or_skip(test: &str) -> Option<Device> {
    match starflow_studio::backend::wgpu_adapter_name() {
        Some(name) => {
            eprintln!("{test}: running on wgpu adapter {name}");
            Some(Device::wgpu(Default::default()))
        }
        None => {
            eprintln!(
                "{test}: no wgpu adapter was found (install Mesa's lavapipe, package \
                 mesa-vulkan-drivers); the wgpu half of this test did not run"
            );
            None
        }
    }
}

/// One comparison's outcome.
#[derive(Debug)]
pub struct Measured {
    pub name: String,
    pub max_abs_diff: f64,
    pub allowed: f64,
    pub worst_index: usize,
    pub ours: f64,
    pub reference: f64,
}

impl Measured {
    pub fn passed(&self) -> bool {
        self.max_abs_diff <= self.allowed
    }
}

/// Compares our tensors with one config folder's float64 references.
pub struct GoldenCheck {
    pub dir: PathBuf,
    pub label: String,
    tolerances: serde_json::Value,
    pub results: Vec<Measured>,
}

impl GoldenCheck {
    pub fn new(dir: &Path, label: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            label: label.to_string(),
            tolerances: read_json(&dir.join("tolerances.json")),
            results: Vec::new(),
        }
    }

    pub fn config_name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Reference values of `name` in `{kind}_f64.safetensors`.
    pub fn reference(&self, kind: &str, name: &str) -> Vec<f64> {
        let path = self.dir.join(format!("{kind}_f64.safetensors"));
        let file = TensorFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        file.read_f64(name).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn reference_shape(&self, kind: &str, name: &str) -> Vec<usize> {
        let path = self.dir.join(format!("{kind}_f64.safetensors"));
        let file = TensorFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        file.shape(name).unwrap_or_else(|| panic!("{path:?} has no {name}")).to_vec()
    }

    pub fn has(&self, kind: &str, name: &str) -> bool {
        let path = self.dir.join(format!("{kind}_f64.safetensors"));
        TensorFile::open(&path).map(|f| f.contains(name)).unwrap_or(false)
    }

    /// The reference as an f32 tensor on `device`, with its stored shape.
    pub fn input<const D: usize>(&self, kind: &str, name: &str, device: &Device) -> Tensor<D> {
        let shape = self.reference_shape(kind, name);
        let values: Vec<f32> = self.reference(kind, name).into_iter().map(|v| v as f32).collect();
        let dims: [usize; D] =
            shape.try_into().unwrap_or_else(|s| panic!("{name} has shape {s:?}"));
        Tensor::from_data(burn::tensor::TensorData::new(values, dims), device)
    }

    fn allowed(&self, kind: &str, name: &str, reference: &[f64]) -> f64 {
        let max_abs_ref = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let official_f32_error =
            self.tolerances[kind]["per_tensor"][name]["max_abs_diff"].as_f64().unwrap_or(0.0);
        F32_ERROR_FACTOR * official_f32_error + RELATIVE_FLOOR * max_abs_ref.max(1.0)
    }

    /// Compare `ours` (any shape with the reference's element count, same element order).
    pub fn compare<const D: usize>(&mut self, kind: &str, name: &str, ours: &Tensor<D>) {
        let values: Vec<f32> = ours.clone().try_into_vec_as::<f32>().expect("reads back as f32");
        self.compare_values(kind, name, &values);
    }

    pub fn compare_values(&mut self, kind: &str, name: &str, ours: &[f32]) {
        let reference = self.reference(kind, name);
        assert_eq!(
            ours.len(),
            reference.len(),
            "{} {} {kind}/{name}: we have {} values, the reference {}",
            self.label,
            self.config_name(),
            ours.len(),
            reference.len()
        );
        let allowed = self.allowed(kind, name, &reference);
        let mut worst = (0usize, 0.0f64);
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            let diff = (*a as f64 - b).abs();
            if diff > worst.1 || diff.is_nan() {
                worst = (i, if diff.is_nan() { f64::INFINITY } else { diff });
            }
        }
        self.results.push(Measured {
            name: format!("{kind}/{name}"),
            max_abs_diff: worst.1,
            allowed,
            worst_index: worst.0,
            ours: ours[worst.0] as f64,
            reference: reference[worst.0],
        });
    }

    /// Print every comparison and panic listing the failures.
    pub fn finish(self) {
        let mut failures = Vec::new();
        let worst_ratio =
            self.results.iter().map(|m| m.max_abs_diff / m.allowed).fold(0.0f64, f64::max);
        for m in &self.results {
            if !m.passed() {
                failures.push(format!(
                    "{} {} {}: index {} ours {:.9} reference {:.9} (|diff| {:.3e} > allowed {:.3e})",
                    self.label,
                    self.config_name(),
                    m.name,
                    m.worst_index,
                    m.ours,
                    m.reference,
                    m.max_abs_diff,
                    m.allowed
                ));
            }
        }
        let max_diff = self.results.iter().map(|m| m.max_abs_diff).fold(0.0f64, f64::max);
        eprintln!(
            "{} {}: {} tensors compared, max |diff| {:.3e}, worst diff/allowed {:.3}",
            self.label,
            self.config_name(),
            self.results.len(),
            max_diff,
            worst_ratio
        );
        assert!(
            !self.results.is_empty(),
            "{} {}: nothing was compared",
            self.label,
            self.config_name()
        );
        assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    }
}
