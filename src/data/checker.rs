//! A deterministic attribute checker for the shapes dataset: it segments a (possibly blurry)
//! generated image and decides background color, shape kind, shape color, count and place.

use serde::{Deserialize, Serialize};

use super::shapes::{BACKGROUNDS, Color, IMAGE_SIZE, Place, SHAPE_COLORS, Scene, ShapeKind};
use crate::image_out::RgbImage;

/// Components smaller than this many pixels are noise, not shapes (a shape covers ~60-95).
const MIN_COMPONENT_PX: usize = 20;
/// Fill ratio of a component in its bounding box: square ~1, circle ~0.79, triangle ~0.5.
const SQUARE_MIN_FILL: f32 = 0.9;
const CIRCLE_MIN_FILL: f32 = 0.65;

/// What the checker read from an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    pub background: Color,
    pub count: usize,
    pub color: Option<Color>,
    pub shape: Option<ShapeKind>,
    pub place: Option<Place>,
}

/// Per-attribute agreement of a reading with the scene it should show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Agreement {
    pub background: bool,
    pub count: bool,
    pub color: bool,
    pub shape: bool,
    pub place: bool,
}

impl Agreement {
    pub fn all(&self) -> bool {
        self.background && self.count && self.color && self.shape && self.place
    }
}

fn nearest(rgb: [f32; 3], palette: &[Color]) -> Color {
    *palette
        .iter()
        .min_by(|a, b| distance(rgb, a.rgb()).total_cmp(&distance(rgb, b.rgb())))
        .expect("palettes are not empty")
}

fn distance(a: [f32; 3], b: [u8; 3]) -> f32 {
    (0..3).map(|i| (a[i] - b[i] as f32).powi(2)).sum()
}

/// Read the attributes of a 64 x 64 image.
pub fn read(image: &RgbImage) -> Reading {
    let pixel = |i: usize| {
        [image.pixels[3 * i] as f32, image.pixels[3 * i + 1] as f32, image.pixels[3 * i + 2] as f32]
    };
    let n = image.width * image.height;

    // Background: the background color nearest to the border pixels' mean.
    let border: Vec<usize> = (0..n)
        .filter(|&i| {
            let (x, y) = (i % image.width, i / image.width);
            x == 0 || y == 0 || x + 1 == image.width || y + 1 == image.height
        })
        .collect();
    let mut mean = [0.0f32; 3];
    for &i in &border {
        let p = pixel(i);
        (0..3).for_each(|c| mean[c] += p[c] / border.len() as f32);
    }
    let background = nearest(mean, &BACKGROUNDS);

    // Each pixel snaps to the nearest of the background and the shape colors.
    let mut palette: Vec<Color> =
        SHAPE_COLORS.iter().copied().filter(|c| *c != background).collect();
    palette.push(background);
    let labels: Vec<Color> = (0..n).map(|i| nearest(pixel(i), &palette)).collect();

    // Connected components of foreground pixels (4-neighbour).
    let mut component = vec![usize::MAX; n];
    let mut components: Vec<Vec<usize>> = Vec::new();
    for start in 0..n {
        if labels[start] == background || component[start] != usize::MAX {
            continue;
        }
        let id = components.len();
        let mut members = Vec::new();
        let mut stack = vec![start];
        component[start] = id;
        while let Some(i) = stack.pop() {
            members.push(i);
            let (x, y) = (i % image.width, i / image.width);
            let mut visit = |j: usize| {
                if labels[j] != background && component[j] == usize::MAX {
                    component[j] = id;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < image.width {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - image.width);
            }
            if y + 1 < image.height {
                visit(i + image.width);
            }
        }
        components.push(members);
    }
    components.retain(|c| c.len() >= MIN_COMPONENT_PX);

    if components.is_empty() {
        return Reading { background, count: 0, color: None, shape: None, place: None };
    }

    // Color: the most common snapped color over all shapes.
    let mut votes = std::collections::BTreeMap::new();
    for &i in components.iter().flatten() {
        *votes.entry(labels[i]).or_insert(0usize) += 1;
    }
    let color = votes.into_iter().max_by_key(|(_, v)| *v).map(|(c, _)| c);

    // Shape: the median fill ratio of the components' bounding boxes.
    let mut fills: Vec<f32> = components
        .iter()
        .map(|c| {
            let xs = c.iter().map(|i| i % image.width);
            let ys = c.iter().map(|i| i / image.width);
            let (x0, x1) = (xs.clone().min().unwrap_or(0), xs.max().unwrap_or(0));
            let (y0, y1) = (ys.clone().min().unwrap_or(0), ys.max().unwrap_or(0));
            c.len() as f32 / ((x1 - x0 + 1) * (y1 - y0 + 1)) as f32
        })
        .collect();
    fills.sort_by(f32::total_cmp);
    let fill = fills[fills.len() / 2];
    let shape = Some(if fill >= SQUARE_MIN_FILL {
        ShapeKind::Square
    } else if fill >= CIRCLE_MIN_FILL {
        ShapeKind::Circle
    } else {
        ShapeKind::Triangle
    });

    // Place: where the centroid of all shape pixels falls.
    let pixels: Vec<usize> = components.iter().flatten().copied().collect();
    let cx = pixels.iter().map(|i| (i % image.width) as f32).sum::<f32>() / pixels.len() as f32;
    let cy = pixels.iter().map(|i| (i / image.width) as f32).sum::<f32>() / pixels.len() as f32;
    let half = IMAGE_SIZE as f32 / 2.0;
    let near_center =
        (cx - half).abs() < IMAGE_SIZE as f32 / 8.0 && (cy - half).abs() < IMAGE_SIZE as f32 / 8.0;
    let place = Some(match (near_center, cx < half, cy < half) {
        (true, _, _) => Place::Center,
        (false, true, true) => Place::TopLeft,
        (false, false, true) => Place::TopRight,
        (false, true, false) => Place::BottomLeft,
        (false, false, false) => Place::BottomRight,
    });

    Reading { background, count: components.len(), color, shape, place }
}

/// Compare a reading with the scene.
pub fn agree(reading: &Reading, scene: &Scene) -> Agreement {
    Agreement {
        background: reading.background == scene.background,
        count: reading.count == scene.count,
        color: reading.color == Some(scene.color),
        shape: reading.shape == Some(scene.shape),
        place: reading.place == Some(scene.place),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_reads_every_ground_truth_scene() {
        let scenes = Scene::all();
        let mut wrong = Vec::new();
        for (i, scene) in scenes.iter().enumerate() {
            let reading = read(&scene.render(i as u64));
            if !agree(&reading, scene).all() {
                wrong.push(format!("{}: read {reading:?}", scene.caption()));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} misread:\n{}",
            wrong.len(),
            scenes.len(),
            wrong.join("\n")
        );
    }
}
