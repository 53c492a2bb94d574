//! Sample grids with their captions drawn in: each cell is an image enlarged by
//! [`CELL_SCALE`] with a label band beneath it (the guidance weight, then the caption wrapped
//! to the cell's width). Text is rasterized by `ab_glyph` from egui's bundled Hack font, so
//! no font file is shipped or looked up on the system.

use std::path::Path;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};

use crate::image_out::{ImageError, RgbImage, save_png};

/// Cells per row: four prompts, each unguided then guided.
pub const GRID_COLUMNS: usize = 8;
/// Nearest-neighbour enlargement of each 64 px image, so that a caption line fits under it.
const CELL_SCALE: usize = 2;
/// Glyph height in pixels: the smallest at which Hack stays readable.
const TEXT_PX: f32 = 10.0;
/// Label lines under a cell: the weight, then up to three lines of caption (the longest
/// caption, 58 characters, takes three at 128 px).
const LABEL_LINES: usize = 4;
/// Spacing of label lines.
const LINE_PX: usize = 11;
/// Margin around the text and between cells.
const PAD: usize = 3;
const BACKGROUND: [u8; 3] = [24, 24, 24];
const INK: [u8; 3] = [230, 230, 230];

/// One cell of a grid: an image and the lines written under it.
pub struct Cell {
    pub image: RgbImage,
    pub title: String,
    pub caption: String,
}

/// `text` broken at spaces into lines of at most `columns` characters (a longer word gets its
/// own line and is cut).
fn wrap(text: &str, columns: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= columns => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.chars().take(columns).collect()),
        }
    }
    lines
}

/// Draws `text` with its baseline at `baseline`, starting at `left`, alpha-blending `INK`.
fn draw_text(canvas: &mut RgbImage, font: &FontRef<'_>, left: f32, baseline: f32, text: &str) {
    let scale = PxScale::from(TEXT_PX);
    let scaled = font.as_scaled(scale);
    let mut x = left;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        let glyph = id.with_scale_and_position(scale, point(x, baseline));
        x += scaled.h_advance(id);
        let Some(outline) = font.outline_glyph(glyph) else { continue };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let px = bounds.min.x as i64 + gx as i64;
            let py = bounds.min.y as i64 + gy as i64;
            if px < 0 || py < 0 || px as usize >= canvas.width || py as usize >= canvas.height {
                return;
            }
            let i = (py as usize * canvas.width + px as usize) * 3;
            for (value, ink) in canvas.pixels[i..i + 3].iter_mut().zip(INK) {
                let blended = *value as f32 * (1.0 - coverage) + ink as f32 * coverage;
                *value = blended.round().clamp(0.0, 255.0) as u8;
            }
        });
    }
}

/// The grid as one image: rows of [`GRID_COLUMNS`] cells, labels drawn in.
pub fn render_grid(cells: &[Cell]) -> RgbImage {
    let font = FontRef::try_from_slice(epaint_default_fonts::HACK_REGULAR)
        .expect("egui's bundled Hack font is a valid TrueType font");
    let (image_w, image_h) =
        cells.first().map_or((1, 1), |c| (c.image.width * CELL_SCALE, c.image.height * CELL_SCALE));
    let cell_w = image_w + PAD;
    let cell_h = image_h + PAD + LABEL_LINES * LINE_PX + PAD;
    let columns = GRID_COLUMNS.min(cells.len().max(1));
    let rows = cells.len().div_ceil(columns).max(1);
    let (width, height) = (columns * cell_w + PAD, rows * cell_h + PAD);
    let mut canvas = RgbImage { width, height, pixels: BACKGROUND.repeat(width * height) };

    let advance = font.as_scaled(PxScale::from(TEXT_PX)).h_advance(font.glyph_id('m'));
    let text_columns = ((image_w as f32 / advance).floor() as usize).max(1);
    for (index, cell) in cells.iter().enumerate() {
        let left = PAD + (index % columns) * cell_w;
        let top = PAD + (index / columns) * cell_h;
        for y in 0..image_h.min(cell.image.height * CELL_SCALE) {
            for x in 0..image_w.min(cell.image.width * CELL_SCALE) {
                let from = ((y / CELL_SCALE) * cell.image.width + x / CELL_SCALE) * 3;
                let to = ((top + y) * width + left + x) * 3;
                canvas.pixels[to..to + 3].copy_from_slice(&cell.image.pixels[from..from + 3]);
            }
        }
        let mut lines = vec![cell.title.clone()];
        lines.extend(wrap(&cell.caption, text_columns));
        for (line_index, line) in lines.iter().take(LABEL_LINES).enumerate() {
            let baseline = (top + image_h + PAD + (line_index + 1) * LINE_PX) as f32 - 2.0;
            draw_text(&mut canvas, &font, left as f32, baseline, line);
        }
    }
    canvas
}

/// [`render_grid`] written as a PNG.
pub fn write_grid(path: &Path, cells: &[Cell]) -> Result<(), ImageError> {
    save_png(path, &render_grid(cells), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(rgb: [u8; 3]) -> RgbImage {
        RgbImage { width: 64, height: 64, pixels: rgb.repeat(64 * 64) }
    }

    #[test]
    fn wrapping_keeps_words_whole_and_lines_short() {
        let lines = wrap("three yellow triangles on a white background, bottom right", 23);
        assert!(lines.iter().all(|l| l.len() <= 23), "{lines:?}");
        assert_eq!(lines.join(" "), "three yellow triangles on a white background, bottom right");
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn captions_are_drawn_under_each_cell() {
        let cells: Vec<Cell> = (0..3)
            .map(|i| Cell {
                image: flat([200, 0, 0]),
                title: format!("w {i}"),
                caption: if i == 1 { String::new() } else { "one red circle".to_string() },
            })
            .collect();
        let grid = render_grid(&cells);
        let cell_w = 64 * CELL_SCALE + PAD;
        assert_eq!(grid.width, 3 * cell_w + PAD);
        // The image is copied enlarged.
        let at = |x: usize, y: usize| &grid.pixels[(y * grid.width + x) * 3..][..3];
        assert_eq!(at(PAD + 5, PAD + 5), [200, 0, 0]);
        // Ink in the label band: the second text line holds the caption only where there is one.
        let inked = |cell: usize, line: usize| {
            let top = PAD + 64 * CELL_SCALE + PAD + line * LINE_PX;
            let left = PAD + cell * cell_w;
            (top..top + LINE_PX)
                .flat_map(|y| (left..left + 64 * CELL_SCALE).map(move |x| (x, y)))
                .filter(|&(x, y)| at(x, y)[0] > 128)
                .count()
        };
        assert!(inked(0, 0) > 10 && inked(0, 1) > 30, "title and caption are drawn");
        assert!(inked(1, 0) > 10, "an empty caption still has its title");
        assert_eq!(inked(1, 1), 0, "no caption, no ink");
    }
}
