//! Official key names for the parameters of any module built by our strict loaders, so that a
//! module being trained can be initialized, checkpointed, resumed and saved under the same keys
//! the loaders read.
//!
//! The loaders hand out tensors by key but the modules don't keep the keys. [`ParamKeys::name`]
//! recovers them from a module built with random weights ([`crate::checkpoint::RandomWeights`]):
//! every drawn tensor is a distinct continuous random draw, so each parameter's values match
//! exactly one drawn tensor, as stored or transposed (the loaders turn PyTorch's `[out, in]`
//! linear weights into burn's `[in, out]`). Each parameter then gets a [`ParamId`] derived from
//! its key, so that the optimizer state saved by burn (keyed by id) fits the same module rebuilt
//! after a restart.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};

use super::TrainError;
use crate::checkpoint::NamedTensor;

/// Where a parameter's values are stored under its key.
#[derive(Debug, Clone)]
struct KeyEntry {
    key: String,
    /// Shape under the key (PyTorch layout).
    stored_shape: Vec<usize>,
    /// Whether burn holds the transpose of the stored 2-D tensor.
    transposed: bool,
}

/// The key of each parameter of one module, by its (key-derived) id.
#[derive(Debug, Clone, Default)]
pub struct ParamKeys {
    entries: HashMap<ParamId, KeyEntry>,
}

/// A 64-bit FNV-1a hash: stable across runs and platforms (std's hasher is not).
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn read_values<const D: usize>(tensor: &Tensor<D>) -> Vec<f32> {
    tensor.clone().try_into_vec_as::<f32>().expect("a float parameter reads back as f32")
}

/// Collects every float parameter's id, shape and values.
#[derive(Default)]
struct Collect {
    params: Vec<(ParamId, Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        self.params.push((param.id, value.dims().to_vec(), read_values(&value)));
    }
}

/// Replaces each parameter's id (and optionally values) by key.
struct Rename<'a> {
    ids: &'a HashMap<ParamId, ParamId>,
}

impl ModuleMapper for Rename<'_> {
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if let Some(id) = self.ids.get(&param.id) {
            param.id = *id;
        }
        param
    }
}

struct Assign<'a, F: FnMut(&str, &[usize]) -> Option<Vec<f32>>> {
    keys: &'a ParamKeys,
    values: F,
    missing: Vec<String>,
}

impl<F: FnMut(&str, &[usize]) -> Option<Vec<f32>>> ModuleMapper for Assign<'_, F> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(entry) = self.keys.entries.get(&param.id) else {
            return param;
        };
        let Some(stored) = (self.values)(&entry.key, &entry.stored_shape) else {
            self.missing.push(entry.key.clone());
            return param;
        };
        let current = param.val();
        let dims = current.dims();
        let values = if entry.transposed {
            transpose(&stored, entry.stored_shape[0], entry.stored_shape[1])
        } else {
            stored
        };
        let tensor = Tensor::<D>::from_data(TensorData::new(values, dims), &current.device());
        let mut fresh = Param::from_tensor(tensor);
        fresh.id = param.id;
        fresh
    }
}

struct Export<'a> {
    keys: &'a ParamKeys,
    tensors: Vec<NamedTensor>,
}

impl ModuleVisitor for Export<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(entry) = self.keys.entries.get(&param.id) else {
            return;
        };
        let value = param.val();
        let dims = value.dims();
        let values = read_values(&value);
        let values = if entry.transposed { transpose(&values, dims[0], dims[1]) } else { values };
        self.tensors.push(NamedTensor {
            key: entry.key.clone(),
            shape: entry.stored_shape.clone(),
            values,
        });
    }
}

impl ParamKeys {
    /// Name the parameters of `module`, which was just built from the random draws `drawn`,
    /// and give each the id `hash(namespace/key)`. Fails if a parameter matches no draw (it was
    /// not built by the loader).
    pub fn name<M: Module>(
        module: M,
        drawn: &[NamedTensor],
        namespace: &str,
    ) -> Result<(M, Self), TrainError> {
        let mut collect = Collect::default();
        module.visit(&mut collect);

        // Index the draws by the bit pattern of their first value, which transposing keeps.
        let mut by_first: HashMap<u32, Vec<usize>> = HashMap::new();
        for (index, tensor) in drawn.iter().enumerate() {
            if let Some(first) = tensor.values.first() {
                by_first.entry(first.to_bits()).or_default().push(index);
            }
        }

        let mut ids = HashMap::new();
        let mut entries = HashMap::new();
        for (id, dims, values) in &collect.params {
            let candidates = values.first().and_then(|v| by_first.get(&v.to_bits()));
            let found = candidates.into_iter().flatten().find_map(|&index| {
                let tensor = &drawn[index];
                if tensor.shape == *dims && tensor.values == *values {
                    return Some((index, false));
                }
                let reversed = dims.len() == 2 && tensor.shape == [dims[1], dims[0]];
                if reversed && transpose(&tensor.values, dims[1], dims[0]) == *values {
                    return Some((index, true));
                }
                None
            });
            let Some((index, transposed)) = found else {
                return Err(TrainError::UnnamedParameter {
                    namespace: namespace.to_string(),
                    shape: dims.clone(),
                });
            };
            let key = drawn[index].key.clone();
            let new_id = ParamId::from(stable_hash(&format!("{namespace}/{key}")));
            ids.insert(*id, new_id);
            entries.insert(
                new_id,
                KeyEntry { key, stored_shape: drawn[index].shape.clone(), transposed },
            );
        }
        let module = module.map(&mut Rename { ids: &ids });
        Ok((module, Self { entries }))
    }

    /// Number of named parameters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replace every parameter's values with `values(key, stored_shape)` (stored layout).
    /// Fails naming the first key for which `values` gave nothing.
    pub fn assign<M: Module>(
        &self,
        module: M,
        values: impl FnMut(&str, &[usize]) -> Option<Vec<f32>>,
    ) -> Result<M, TrainError> {
        let mut assign = Assign { keys: self, values, missing: Vec::new() };
        let module = module.map(&mut assign);
        match assign.missing.first() {
            None => Ok(module),
            Some(key) => {
                Err(TrainError::MissingKey { key: key.clone(), count: assign.missing.len() })
            }
        }
    }

    /// The module's parameters under their keys and stored shapes, sorted by key.
    pub fn export<M: Module>(&self, module: &M) -> Vec<NamedTensor> {
        let mut export = Export { keys: self, tensors: Vec::new() };
        module.visit(&mut export);
        export.tensors.sort_by(|a, b| a.key.cmp(&b.key));
        export.tensors
    }
}
