//! Past results, one PNG with its metadata per entry in the user's data folder. Runs on the
//! file thread.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::image_out::{RgbImage, read_png, save_png};
use crate::metadata::GenerationRecord;

/// Newest entries the gallery loads.
pub const MAX_ENTRIES: usize = 200;
/// Thumbnails fit in this square.
pub const THUMBNAIL_PX: usize = 96;

#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub path: PathBuf,
    pub record: Option<GenerationRecord>,
    pub image: RgbImage,
    pub thumbnail: RgbImage,
}

/// `<data dir>/history`, from the directories crate; `None` when the platform has no home.
pub fn default_folder() -> Option<PathBuf> {
    directories::ProjectDirs::from("org", "starflow", "STARFlow Studio")
        .map(|dirs| dirs.data_dir().join("history"))
}

/// The newest entries first. A missing folder is an empty history; unreadable files are
/// skipped with a warning.
pub fn list(folder: &Path) -> anyhow::Result<Vec<HistoryEntry>> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("reading the history folder {folder:?}"));
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    paths.reverse();
    paths.truncate(MAX_ENTRIES);
    Ok(paths
        .into_iter()
        .filter_map(|path| match read_entry(&path) {
            Ok(entry) => Some(entry),
            Err(error) => {
                log::warn!("Skipping a history entry that cannot be read: {error:#}");
                None
            }
        })
        .collect())
}

/// Save a result as `<unix millis>-<seed>.png` with its metadata.
pub fn add(
    folder: &Path,
    image: &RgbImage,
    record: &GenerationRecord,
) -> anyhow::Result<HistoryEntry> {
    std::fs::create_dir_all(folder)
        .with_context(|| format!("creating the history folder {folder:?}"))?;
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut path = folder.join(format!("{millis:015}-{}.png", record.seed));
    let mut suffix = 1;
    while path.exists() {
        path = folder.join(format!("{millis:015}-{}-{suffix}.png", record.seed));
        suffix += 1;
    }
    save_png(&path, image, &record.png_text()).context("saving the result to the history")?;
    Ok(HistoryEntry {
        path,
        record: Some(record.clone()),
        image: image.clone(),
        thumbnail: thumbnail(image),
    })
}

pub fn delete(path: &Path) -> anyhow::Result<()> {
    std::fs::remove_file(path).with_context(|| format!("deleting the history entry {path:?}"))
}

fn read_entry(path: &Path) -> anyhow::Result<HistoryEntry> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path:?}"))?;
    let (image, text) = read_png(&bytes).with_context(|| format!("decoding {path:?}"))?;
    let record = GenerationRecord::from_png_text(&text);
    Ok(HistoryEntry { path: path.to_path_buf(), record, thumbnail: thumbnail(&image), image })
}

/// Fit into [`THUMBNAIL_PX`]: box-average when shrinking, nearest neighbour when growing.
pub fn thumbnail(image: &RgbImage) -> RgbImage {
    let longest = image.width.max(image.height).max(1);
    if longest <= THUMBNAIL_PX {
        let scale = THUMBNAIL_PX / longest;
        return resize_nearest(image, scale.max(1));
    }
    let step = longest.div_ceil(THUMBNAIL_PX);
    let (width, height) = (image.width / step, image.height / step);
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            for channel in 0..3 {
                let mut sum = 0u32;
                for dy in 0..step {
                    for dx in 0..step {
                        sum += image.pixels
                            [((y * step + dy) * image.width + x * step + dx) * 3 + channel]
                            as u32;
                    }
                }
                pixels.push((sum / (step * step) as u32) as u8);
            }
        }
    }
    RgbImage { width, height, pixels }
}

fn resize_nearest(image: &RgbImage, scale: usize) -> RgbImage {
    let (width, height) = (image.width * scale, image.height * scale);
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let source = ((y / scale) * image.width + x / scale) * 3;
            pixels.extend_from_slice(&image.pixels[source..source + 3]);
        }
    }
    RgbImage { width, height, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_the_square() {
        let big = RgbImage { width: 256, height: 128, pixels: vec![9; 256 * 128 * 3] };
        let small = thumbnail(&big);
        assert!(
            small.width <= THUMBNAIL_PX && small.height <= THUMBNAIL_PX,
            "{}x{}",
            small.width,
            small.height
        );
        let tiny = RgbImage { width: 6, height: 8, pixels: vec![9; 6 * 8 * 3] };
        assert_eq!((thumbnail(&tiny).width, thumbnail(&tiny).height), (72, 96));
    }
}
