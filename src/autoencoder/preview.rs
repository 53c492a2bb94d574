//! A cheap preview decode: each latent cell becomes one RGB pixel by a per-channel linear map,
//! `rgb = sum_c latent[c] * weights[c] + bias`, as Stable Diffusion tools show progress while
//! sampling. It costs one 1x1 convolution instead of the decoder, at 1/8 of the image size.
//!
//! The map for the SD kl-f8 latent space ([`LatentPreview::sd_kl_f8`]) was fitted by keturn
//! for Stable Diffusion 1.4 by least squares between latents and their decoded, downscaled
//! images ("Decoding latents to RGB without upscaling",
//! <https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204/2>), and is
//! the one common SD front ends ship. sd-vae-ft-ema fine-tunes only the decoder of that VAE, so
//! its latent space, and STARFlow's, is the same. For our own (tiny) autoencoders the map is
//! fitted the same way with [`LatentPreview::fit`] from a few latents and decoded images.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};

/// What can go wrong while fitting a preview map.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error(
        "The latent {latent:?} and the image {image:?} don't match: the image must be RGB and \
         the same whole multiple of the latent grid along both sides."
    )]
    Shapes { latent: [usize; 4], image: [usize; 4] },
    #[error(
        "The preview map can't be fitted: the latents are degenerate (constant or linearly \
         dependent channels). Fit on more varied images."
    )]
    Degenerate,
    #[error("A tensor could not be read back from the device: {0}")]
    Read(String),
}

/// A linear map from latent channels to RGB in `[-1, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentPreview {
    /// One `[r, g, b]` row per latent channel.
    pub weights: Vec<[f32; 3]>,
    pub bias: [f32; 3],
}

impl LatentPreview {
    /// The SD kl-f8 map (keturn, for SD 1.4), applied to flow-space latents (scaled by
    /// 0.18215), as the sampler holds them.
    pub fn sd_kl_f8() -> Self {
        Self {
            weights: vec![
                [0.298, 0.207, 0.208],
                [0.187, 0.286, 0.173],
                [-0.158, 0.189, 0.264],
                [-0.184, -0.271, -0.473],
            ],
            bias: [0.0; 3],
        }
    }

    pub fn channels(&self) -> usize {
        self.weights.len()
    }

    /// # Shapes
    /// - `latent`: `[batch, channels, height, width]`, in the space the map was fitted in
    /// - returns `[batch, 3, height, width]`, roughly in `[-1, 1]` (not clamped)
    pub fn rgb(&self, latent: Tensor<4>) -> Tensor<4> {
        let [_, channels, _, _] = latent.dims();
        assert_eq!(
            channels,
            self.channels(),
            "a preview map has one row per latent channel of the autoencoder it was fitted for"
        );
        let device = latent.device();
        let (weight, bias) = self.conv_weights(&device);
        conv2d(latent, weight, Some(bias), ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
    }

    /// The map as a 1x1 convolution: weight `[3, channels, 1, 1]`, bias `[3]`.
    fn conv_weights(&self, device: &Device) -> (Tensor<4>, Tensor<1>) {
        let channels = self.channels();
        let weight: Vec<f32> =
            (0..3).flat_map(|rgb| self.weights.iter().map(move |row| row[rgb])).collect();
        let weight = Tensor::from_data(TensorData::new(weight, [3, channels, 1, 1]), device);
        let bias = Tensor::from_data(TensorData::new(self.bias.to_vec(), [3]), device);
        (weight, bias)
    }

    /// Fit the map by least squares between latents and the images they decode to, each image
    /// averaged over the pixels of one latent cell.
    ///
    /// # Shapes
    /// - `latent`: `[batch, channels, height, width]`
    /// - `image`: `[batch, 3, height * f, width * f]` for a whole `f >= 1`
    pub fn fit(latent: Tensor<4>, image: Tensor<4>) -> Result<Self, PreviewError> {
        let latent_dims = latent.dims();
        let image_dims = image.dims();
        let [batch, channels, height, width] = latent_dims;
        let [image_batch, rgb, image_height, image_width] = image_dims;
        let factor = image_height / height.max(1);
        let shapes_fit = image_batch == batch
            && rgb == 3
            && factor >= 1
            && image_height == factor * height
            && image_width == factor * width;
        if !shapes_fit {
            return Err(PreviewError::Shapes { latent: latent_dims, image: image_dims });
        }

        let read = |t: Tensor<4>| {
            t.try_into_vec_as::<f32>().map_err(|e| PreviewError::Read(e.to_string()))
        };
        let latent = read(latent)?;
        let image = read(image)?;

        // Normal equations of [latent, 1] -> rgb, accumulated in f64.
        let features = channels + 1;
        let mut gram = vec![0.0f64; features * features];
        let mut moment = vec![0.0f64; features * 3];
        let mut row = vec![0.0f64; features];
        for b in 0..batch {
            for y in 0..height {
                for x in 0..width {
                    for (c, value) in row.iter_mut().take(channels).enumerate() {
                        *value = f64::from(latent[((b * channels + c) * height + y) * width + x]);
                    }
                    row[channels] = 1.0;
                    let target = cell_mean(&image, image_dims, b, y, x, factor);
                    for i in 0..features {
                        for j in 0..features {
                            gram[i * features + j] += row[i] * row[j];
                        }
                        for (k, t) in target.iter().enumerate() {
                            moment[i * 3 + k] += row[i] * t;
                        }
                    }
                }
            }
        }

        let solution = solve(gram, moment, features, 3).ok_or(PreviewError::Degenerate)?;
        let weights =
            (0..channels).map(|c| [0, 1, 2].map(|k| solution[c * 3 + k] as f32)).collect();
        let bias = [0, 1, 2].map(|k| solution[channels * 3 + k] as f32);
        Ok(Self { weights, bias })
    }
}

/// Mean RGB of the `factor x factor` pixels under latent cell `(y, x)` of image `b`.
fn cell_mean(
    image: &[f32],
    dims: [usize; 4],
    b: usize,
    y: usize,
    x: usize,
    factor: usize,
) -> [f64; 3] {
    let [_, rgb, height, width] = dims;
    let mut sum = [0.0f64; 3];
    for (k, total) in sum.iter_mut().enumerate() {
        for dy in 0..factor {
            let start = ((b * rgb + k) * height + y * factor + dy) * width + x * factor;
            *total += image[start..start + factor].iter().map(|&v| f64::from(v)).sum::<f64>();
        }
    }
    sum.map(|total| total / (factor * factor) as f64)
}

/// Solve `a x = b` for `x` (`a`: `[n, n]`, `b`: `[n, m]`, row-major) by Gaussian elimination
/// with partial pivoting; `None` when `a` is singular relative to its largest entry.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize, m: usize) -> Option<Vec<f64>> {
    let scale = a.iter().fold(0.0f64, |max, v| max.max(v.abs()));
    if scale == 0.0 {
        return None;
    }
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[pivot * n + col].abs() <= 1e-12 * scale {
            return None;
        }
        for k in 0..n {
            a.swap(col * n + k, pivot * n + k);
        }
        for k in 0..m {
            b.swap(col * m + k, pivot * m + k);
        }
        for row in 0..n {
            if row == col {
                continue;
            }
            let ratio = a[row * n + col] / a[col * n + col];
            for k in col..n {
                a[row * n + k] -= ratio * a[col * n + k];
            }
            for k in 0..m {
                b[row * m + k] -= ratio * b[col * m + k];
            }
        }
    }
    for row in 0..n {
        let diagonal = a[row * n + row];
        for k in 0..m {
            b[row * m + k] /= diagonal;
        }
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_recovers_a_known_system() {
        // [[2, 1], [1, 3]] x = [[3], [5]] has x = [[0.8], [1.4]].
        let x = solve(vec![2.0, 1.0, 1.0, 3.0], vec![3.0, 5.0], 2, 1).expect("regular system");
        assert!((x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12, "{x:?}");
    }

    #[test]
    fn solve_refuses_a_singular_system() {
        assert_eq!(solve(vec![1.0, 2.0, 2.0, 4.0], vec![1.0, 2.0], 2, 1), None);
    }
}
