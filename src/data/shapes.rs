//! The procedural captioned dataset the embedded default model is trained on: 64 x 64 RGB
//! images of flat-colored shapes (circle, square, triangle), 1 to 3 of one kind and color,
//! grouped in one of five named places, on one of four background colors, with plain English
//! captions such as "two red circles on a blue background, top left".
//!
//! A fixed tenth of the caption combinations is held out: [`Scene::is_held_out`] is true for
//! them and the training stream never draws one.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::image_out::RgbImage;

/// Image side in pixels.
pub const IMAGE_SIZE: usize = 64;
/// Shape size (circle diameter, square side, triangle base) in pixels.
pub const SHAPE_SIZE: usize = 11;
/// The most a shape may be moved from its slot: the arrangements leave 4 px between shapes and
/// 3 px to the region's edge, so one pixel each way keeps shapes apart and the place readable.
pub const MAX_JITTER: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    White,
    Black,
    Gray,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Place {
    TopLeft,
    TopRight,
    Center,
    BottomLeft,
    BottomRight,
}

pub const SHAPES: [ShapeKind; 3] = [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle];
pub const SHAPE_COLORS: [Color; 5] =
    [Color::Red, Color::Green, Color::Blue, Color::Yellow, Color::White];
pub const BACKGROUNDS: [Color; 4] = [Color::Black, Color::Gray, Color::Blue, Color::White];
pub const PLACES: [Place; 5] =
    [Place::TopLeft, Place::TopRight, Place::Center, Place::BottomLeft, Place::BottomRight];

impl Color {
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 40, 40],
            Color::Green => [40, 180, 60],
            Color::Blue => [40, 70, 210],
            Color::Yellow => [235, 215, 50],
            Color::White => [245, 245, 245],
            Color::Black => [15, 15, 15],
            Color::Gray => [128, 128, 128],
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::White => "white",
            Color::Black => "black",
            Color::Gray => "gray",
        }
    }

    pub const ALL: [Color; 7] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::White,
        Color::Black,
        Color::Gray,
    ];
}

impl ShapeKind {
    pub fn word(self, count: usize) -> &'static str {
        match (self, count) {
            (ShapeKind::Circle, 1) => "circle",
            (ShapeKind::Circle, _) => "circles",
            (ShapeKind::Square, 1) => "square",
            (ShapeKind::Square, _) => "squares",
            (ShapeKind::Triangle, 1) => "triangle",
            (ShapeKind::Triangle, _) => "triangles",
        }
    }
}

impl Place {
    pub fn words(self) -> &'static str {
        match self {
            Place::TopLeft => "top left",
            Place::TopRight => "top right",
            Place::Center => "center",
            Place::BottomLeft => "bottom left",
            Place::BottomRight => "bottom right",
        }
    }

    /// The 32 x 32 region (left, top) in which the shapes are placed.
    pub fn region(self) -> (usize, usize) {
        match self {
            Place::TopLeft => (0, 0),
            Place::TopRight => (32, 0),
            Place::Center => (16, 16),
            Place::BottomLeft => (0, 32),
            Place::BottomRight => (32, 32),
        }
    }
}

fn count_word(count: usize) -> &'static str {
    match count {
        1 => "one",
        2 => "two",
        _ => "three",
    }
}

/// What an image shows; the caption is derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scene {
    pub count: usize,
    pub color: Color,
    pub shape: ShapeKind,
    pub background: Color,
    pub place: Place,
}

impl Scene {
    pub fn caption(&self) -> String {
        format!(
            "{} {} {} on a {} background, {}",
            count_word(self.count),
            self.color.word(),
            self.shape.word(self.count),
            self.background.word(),
            self.place.words()
        )
    }

    /// Every valid combination (shape color differs from the background), in a fixed order.
    pub fn all() -> Vec<Scene> {
        let mut scenes = Vec::new();
        for count in 1..=3 {
            for color in SHAPE_COLORS {
                for shape in SHAPES {
                    for background in BACKGROUNDS {
                        for place in PLACES {
                            if color != background {
                                scenes.push(Scene { count, color, shape, background, place });
                            }
                        }
                    }
                }
            }
        }
        scenes
    }

    /// The fixed held-out tenth: chosen by a hash of the caption, so it does not depend on
    /// the order of the lists above.
    pub fn is_held_out(&self) -> bool {
        let hash = self
            .caption()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        hash % 10 == 3
    }

    /// Draw the image; `seed` jitters the shapes by a pixel.
    pub fn render(&self, seed: u64) -> RgbImage {
        self.render_jittered(seed, 1)
    }

    /// Draw the image with each shape moved by up to `jitter` pixels each way (drawn from
    /// `seed`); 0 draws the one canonical layout of the caption.
    pub fn render_jittered(&self, seed: u64, jitter: usize) -> RgbImage {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut pixels = Vec::with_capacity(IMAGE_SIZE * IMAGE_SIZE * 3);
        for _ in 0..IMAGE_SIZE * IMAGE_SIZE {
            pixels.extend(self.background.rgb());
        }
        let mut image = RgbImage { width: IMAGE_SIZE, height: IMAGE_SIZE, pixels };
        let (left, top) = self.place.region();
        // Fixed arrangements centred in the 32 px region (so the group's centre names the
        // place), each shape moved by at most one pixel; gaps of 4 px or more keep shapes apart.
        let slots: &[(usize, usize)] = match self.count {
            1 => &[(11, 11)],
            2 => &[(3, 11), (19, 11)],
            _ => &[(3, 3), (19, 3), (11, 19)],
        };
        let jitter = jitter.min(MAX_JITTER);
        for &(x, y) in slots {
            let x = left + x + rng.random_range(0..=2 * jitter) - jitter;
            let y = top + y + rng.random_range(0..=2 * jitter) - jitter;
            draw_shape(&mut image, self.shape, x, y, self.color.rgb());
        }
        image
    }
}

fn draw_shape(image: &mut RgbImage, shape: ShapeKind, left: usize, top: usize, rgb: [u8; 3]) {
    let size = SHAPE_SIZE as f32;
    for dy in 0..SHAPE_SIZE {
        for dx in 0..SHAPE_SIZE {
            let (px, py) = (dx as f32 + 0.5, dy as f32 + 0.5);
            let inside = match shape {
                ShapeKind::Square => true,
                ShapeKind::Circle => {
                    let r = size / 2.0;
                    (px - r).powi(2) + (py - r).powi(2) <= r * r
                }
                // Apex at the top middle, base along the bottom row.
                ShapeKind::Triangle => (px - size / 2.0).abs() <= py / 2.0,
            };
            let (x, y) = (left + dx, top + dy);
            if inside && x < image.width && y < image.height {
                let i = (y * image.width + x) * 3;
                image.pixels[i..i + 3].copy_from_slice(&rgb);
            }
        }
    }
}

/// An endless, seeded stream of training pairs (held-out scenes excluded).
pub struct TrainingStream {
    rng: rand_chacha::ChaCha8Rng,
    scenes: Vec<Scene>,
    jitter: usize,
}

impl TrainingStream {
    /// Images jittered by up to `jitter` pixels (see [`Scene::render_jittered`]).
    pub fn new(seed: u64, jitter: usize) -> Self {
        let scenes = training_scenes();
        Self { rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed), scenes, jitter }
    }

    pub fn next_pair(&mut self) -> (Scene, RgbImage) {
        let (scene, seed) = self.next_scene();
        let image = scene.render_jittered(seed, self.jitter);
        (scene, image)
    }

    /// The next scene and the seed its image is drawn from, without drawing it (the same
    /// draws as [`TrainingStream::next_pair`]).
    pub fn next_scene(&mut self) -> (Scene, u64) {
        let scene = self.scenes[self.rng.random_range(0..self.scenes.len())];
        (scene, self.rng.random())
    }
}

/// The training scenes (every combination that is not held out), in a fixed order.
pub fn training_scenes() -> Vec<Scene> {
    Scene::all().into_iter().filter(|s| !s.is_held_out()).collect()
}

/// The held-out scenes, in a fixed order.
pub fn held_out_scenes() -> Vec<Scene> {
    Scene::all().into_iter().filter(Scene::is_held_out).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_read_as_documented() {
        let scene = Scene {
            count: 2,
            color: Color::Red,
            shape: ShapeKind::Circle,
            background: Color::Blue,
            place: Place::TopLeft,
        };
        assert_eq!(scene.caption(), "two red circles on a blue background, top left");
    }

    #[test]
    fn held_out_is_about_a_tenth_and_never_streamed() {
        let all = Scene::all();
        let held = held_out_scenes();
        let share = held.len() as f64 / all.len() as f64;
        assert!((0.05..0.15).contains(&share), "held-out share {share}");
        let mut stream = TrainingStream::new(1, MAX_JITTER);
        for _ in 0..2000 {
            assert!(!stream.next_pair().0.is_held_out());
        }
    }

    #[test]
    fn rendering_is_deterministic_and_draws_the_shapes() {
        let scene = Scene {
            count: 3,
            color: Color::Yellow,
            shape: ShapeKind::Triangle,
            background: Color::Black,
            place: Place::Center,
        };
        assert_eq!(scene.render(5), scene.render(5));
        let image = scene.render(5);
        let yellow = image.pixels.chunks(3).filter(|p| *p == Color::Yellow.rgb()).count();
        assert!(yellow > 3 * 40 && yellow < 3 * 80, "{yellow} yellow pixels for three triangles");
    }

    #[test]
    fn jitter_zero_draws_one_layout_and_jitter_moves_shapes() {
        let scene = Scene {
            count: 2,
            color: Color::Red,
            shape: ShapeKind::Circle,
            background: Color::Blue,
            place: Place::TopLeft,
        };
        let canonical = scene.render_jittered(0, 0);
        assert!((1..50).all(|seed| scene.render_jittered(seed, 0) == canonical));
        let moved = (0..50).filter(|&seed| scene.render_jittered(seed, MAX_JITTER) != canonical);
        assert!(moved.count() > 40, "jittered renders should mostly differ from the canonical one");
        assert_eq!(scene.render(9), scene.render_jittered(9, MAX_JITTER));
    }
}
