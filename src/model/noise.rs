//! Seeded standard-normal draws, reproducible across platforms and backends: the values come
//! from ChaCha8 on the CPU and are then uploaded, so a seed means the same image everywhere.

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// `N(0, 1)` values of `shape` from `seed`.
pub fn standard_normal<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let device = Device::flex();
        let a: Vec<f32> = standard_normal([64], 1, &device).try_into_vec_as().expect("reads");
        let b: Vec<f32> = standard_normal([64], 1, &device).try_into_vec_as().expect("reads");
        let c: Vec<f32> = standard_normal([64], 2, &device).try_into_vec_as().expect("reads");
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mean = a.iter().sum::<f32>() / 64.0;
        assert!(mean.abs() < 0.5, "mean {mean}");
    }
}
