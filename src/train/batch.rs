//! Training batches: images as tensors and per-step seeds, so that the batch, the noise and the
//! caption dropout of step `s` depend only on the run's seed and `s` (a resumed run draws the
//! same batches as an uninterrupted one, with no random-generator state to save).

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};

use super::params::stable_hash;
use crate::data::shapes::{Scene, TrainingStream};
use crate::image_out::RgbImage;

/// A seed for draw `tag` at `step` of the run with `seed` (splitmix64 of the mix).
pub fn step_seed(seed: u64, tag: &str, step: usize) -> u64 {
    let mut z = seed ^ stable_hash(tag) ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `batch` training pairs for `step`, shapes jittered by up to `jitter` pixels (held-out
/// scenes never appear).
pub fn training_pairs(
    seed: u64,
    tag: &str,
    step: usize,
    batch: usize,
    jitter: usize,
) -> Vec<(Scene, RgbImage)> {
    let mut stream = TrainingStream::new(step_seed(seed, tag, step), jitter);
    (0..batch).map(|_| stream.next_pair()).collect()
}

/// The scenes of [`training_pairs`] with the same arguments, without their images.
pub fn training_scenes_at(seed: u64, tag: &str, step: usize, batch: usize) -> Vec<Scene> {
    let mut stream = TrainingStream::new(step_seed(seed, tag, step), 0);
    (0..batch).map(|_| stream.next_scene().0).collect()
}

/// Which captions of a batch are replaced by the empty prompt (caption dropout).
pub fn dropped_captions(seed: u64, step: usize, batch: usize, share: f64) -> Vec<bool> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(seed, "caption-dropout", step));
    (0..batch).map(|_| rng.random_bool(share.clamp(0.0, 1.0))).collect()
}

/// RGB images as `[batch, 3, height, width]` in `[-1, 1]`.
pub fn images_tensor(images: &[&RgbImage], device: &Device) -> Tensor<4> {
    let (height, width) = images.first().map_or((0, 0), |i| (i.height, i.width));
    let mut values = Vec::with_capacity(images.len() * 3 * height * width);
    for image in images {
        for channel in 0..3 {
            values.extend(
                image.pixels.iter().skip(channel).step_by(3).map(|&v| v as f32 / 127.5 - 1.0),
            );
        }
    }
    Tensor::from_data(TensorData::new(values, [images.len(), 3, height, width]), device)
}

/// A tensor moved to another device (for example from the plain CPU device to its autodiff
/// twin) through its values.
pub fn to_device<const D: usize>(tensor: Tensor<D>, device: &Device) -> Tensor<D> {
    Tensor::from_data(tensor.into_data(), device)
}

/// Learning rate at `step`: linear warmup over `warmup` steps, then cosine decay to
/// `FINAL_LR_SHARE` of the peak at `steps`.
pub fn learning_rate(peak: f64, step: usize, steps: usize, warmup: usize) -> f64 {
    /// Where the cosine ends, as a share of the peak: low enough to settle, not zero.
    const FINAL_LR_SHARE: f64 = 0.1;
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = steps.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (FINAL_LR_SHARE + (1.0 - FINAL_LR_SHARE) * cosine)
}
