//! Rotary position embedding as the official `misc/pe.py` builds it: interleaved pairs, angle
//! slots split into (row, column[, text]) axes, positions attached to sequence slots after the
//! block's permutation.

use burn::tensor::{Device, Tensor, TensorData};

use super::config::FlowConfig;

const THETA: f64 = 10000.0;
/// Angle slots reserved for the text axis whenever the model has a text length.
const TEXT_SLOTS: usize = 8;

/// Cosines and sines for every sequence row of one block, each `[rows, head_dim]`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub cos: Tensor<2>,
    pub sin: Tensor<2>,
}

impl RopeTable {
    /// Rows `start .. start + len`.
    pub fn rows(&self, start: usize, len: usize) -> RopeTable {
        RopeTable {
            cos: self.cos.clone().narrow(0, start, len),
            sin: self.sin.clone().narrow(0, start, len),
        }
    }

    pub fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rotation angles in radians, `rows * head_dim` values row-major, for a token grid of
/// `rows x cols` with an optional text prefix of `text_rows` rows placed first.
///
/// Computed in f64 so that the f32 tables are correctly rounded.
pub fn rope_angles(config: &FlowConfig, grid: (usize, usize), text_rows: usize) -> Vec<f64> {
    let head_dim = config.head_dim;
    let slots = head_dim / 2;
    let text_axis = config.rope_has_text_axis();
    let spatial_slots = if text_axis { slots - TEXT_SLOTS } else { slots };
    let per_axis = spatial_slots / 2;

    let spatial_freq: Vec<f64> =
        (0..per_axis).map(|k| 1.0 / THETA.powf((2 * k) as f64 / spatial_slots as f64)).collect();
    let text_freq: Vec<f64> =
        (0..TEXT_SLOTS).map(|k| 1.0 / THETA.powf(k as f64 / TEXT_SLOTS as f64)).collect();

    let (grid_rows, grid_cols) = grid;
    let side = config.rope_side() as f64;
    let pixel_scale = side / ((grid_rows * grid_cols) as f64).sqrt();
    let text_scale = if text_rows > 0 { side / text_rows as f64 } else { 0.0 };

    let mut positions: Vec<[f64; 3]> = Vec::with_capacity(text_rows + grid_rows * grid_cols);
    for t in 0..text_rows {
        positions.push([0.0, 0.0, t as f64 * text_scale]);
    }
    for r in 0..grid_rows {
        for c in 0..grid_cols {
            positions.push([r as f64 * pixel_scale, c as f64 * pixel_scale, 0.0]);
        }
    }

    let mut angles = Vec::with_capacity(positions.len() * head_dim);
    for [row, col, text] in positions {
        let mut push = |angle: f64| {
            angles.push(angle);
            angles.push(angle);
        };
        spatial_freq.iter().for_each(|f| push(row * f));
        spatial_freq.iter().for_each(|f| push(col * f));
        if text_axis {
            text_freq.iter().for_each(|f| push(text * f));
        }
    }
    angles
}

/// The table for one block on `device`.
pub fn rope_table(
    config: &FlowConfig,
    grid: (usize, usize),
    text_rows: usize,
    device: &Device,
) -> RopeTable {
    let angles = rope_angles(config, grid, text_rows);
    let rows = angles.len() / config.head_dim;
    let shape = [rows, config.head_dim];
    let cos: Vec<f32> = angles.iter().map(|a| a.cos() as f32).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin() as f32).collect();
    RopeTable {
        cos: Tensor::from_data(TensorData::new(cos, shape), device),
        sin: Tensor::from_data(TensorData::new(sin, shape), device),
    }
}

/// Rotate `x` by the table rows that match its sequence positions.
///
/// # Shapes
/// - `x`: `[batch, heads, tokens, head_dim]`
/// - `table`: `tokens` rows
pub fn apply_rope(x: Tensor<4>, table: &RopeTable) -> Tensor<4> {
    let [batch, heads, tokens, head_dim] = x.dims();
    let pairs = x.clone().reshape([batch, heads, tokens, head_dim / 2, 2]);
    let even = pairs.clone().narrow(4, 0, 1);
    let odd = pairs.narrow(4, 1, 1);
    // (x0, x1) -> (-x1, x0) within each adjacent pair.
    let rotated = Tensor::cat(vec![odd.neg(), even], 4).reshape([batch, heads, tokens, head_dim]);

    let cos = table.cos.clone().unsqueeze::<4>(); // [1, 1, tokens, head_dim]
    let sin = table.sin.clone().unsqueeze::<4>();
    x * cos + rotated * sin
}
