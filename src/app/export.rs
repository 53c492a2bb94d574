//! Writing images out: formats, file names from prompts, the per-block strip, and the file
//! thread that encodes, writes (atomically), reads dropped files, talks to the clipboard and
//! keeps the history, so that the UI thread never touches a file or an encoder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::history::{self, HistoryEntry};
use super::state::{A1111Parameters, parse_parameters};
use crate::image_out::{RgbImage, encode_png, read_png, write_atomic};
use crate::metadata::{GenerationRecord, PARAMETERS_KEY};

/// Longest file name stem taken from a prompt, in bytes (file systems allow 255 per name).
pub const MAX_PROMPT_STEM_BYTES: usize = 80;
/// JPEG quality of exports.
const JPEG_QUALITY: u8 = 95;
/// Tiles of the per-block strip are magnified to at least this height.
const STRIP_MIN_TILE_PX: usize = 128;
const STRIP_GAP_PX: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportFormat {
    /// Lossless, with the generation parameters embedded.
    Png,
    Jpeg,
    /// Lossless WebP (the image crate writes only lossless WebP).
    WebP,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 3] = [ExportFormat::Png, ExportFormat::Jpeg, ExportFormat::WebP];

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Png => "png",
            ExportFormat::Jpeg => "jpg",
            ExportFormat::WebP => "webp",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ExportFormat::Png => "PNG (with parameters)",
            ExportFormat::Jpeg => "JPEG",
            ExportFormat::WebP => "WebP (lossless)",
        }
    }

    /// The format a path's extension names.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "png" => Some(ExportFormat::Png),
            "jpg" | "jpeg" => Some(ExportFormat::Jpeg),
            "webp" => Some(ExportFormat::WebP),
            _ => None,
        }
    }
}

/// A file name stem from a prompt: letters, digits and dashes, at most
/// [`MAX_PROMPT_STEM_BYTES`] bytes (cut at a character boundary), then the seed.
pub fn file_stem(prompt: &str, seed: u64) -> String {
    let mut stem = String::new();
    for word in prompt.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let word = word.to_lowercase();
        let extra = if stem.is_empty() { 0 } else { 1 };
        if stem.len() + extra + word.len() > MAX_PROMPT_STEM_BYTES {
            // A single overlong word is cut at a character boundary.
            if stem.is_empty() {
                stem = word
                    .chars()
                    .scan(0, |len, c| {
                        *len += c.len_utf8();
                        (*len <= MAX_PROMPT_STEM_BYTES).then_some(c)
                    })
                    .collect();
            }
            break;
        }
        if extra == 1 {
            stem.push('-');
        }
        stem.push_str(&word);
    }
    if stem.is_empty() {
        stem.push_str("starflow");
    }
    format!("{stem}-{seed}")
}

/// Encode `image` in `format`; PNG carries `text` as iTXt chunks, the others carry none.
pub fn encode(
    image: &RgbImage,
    format: ExportFormat,
    text: &[(String, String)],
) -> anyhow::Result<Vec<u8>> {
    if format == ExportFormat::Png {
        return Ok(encode_png(image, text)?);
    }
    let buffer =
        image::RgbImage::from_raw(image.width as u32, image.height as u32, image.pixels.clone())
            .context("the image buffer does not match its size")?;
    let mut bytes = Vec::new();
    match format {
        ExportFormat::Jpeg => {
            let encoder =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY);
            buffer.write_with_encoder(encoder).context("encoding the JPEG")?;
        }
        ExportFormat::WebP => {
            let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut bytes);
            buffer.write_with_encoder(encoder).context("encoding the WebP")?;
        }
        ExportFormat::Png => unreachable!("handled above"),
    }
    Ok(bytes)
}

/// The images side by side, magnified by one integer factor (nearest neighbour) so that tiny
/// latents stay visible, with a dark gap between tiles.
pub fn strip(images: &[&RgbImage]) -> anyhow::Result<RgbImage> {
    let Some(first) = images.first() else { bail!("there are no stages to put in a strip") };
    let (width, height) = (first.width, first.height);
    if images.iter().any(|i| (i.width, i.height) != (width, height)) {
        bail!("the stages have different sizes");
    }
    let scale = STRIP_MIN_TILE_PX.div_ceil(height.max(1)).max(1);
    let (tile_w, tile_h) = (width * scale, height * scale);
    let total_w = images.len() * tile_w + (images.len() - 1) * STRIP_GAP_PX;
    let mut pixels = vec![16u8; total_w * tile_h * 3];
    for (index, image) in images.iter().enumerate() {
        let left = index * (tile_w + STRIP_GAP_PX);
        for y in 0..tile_h {
            for x in 0..tile_w {
                let source = ((y / scale) * width + x / scale) * 3;
                let target = (y * total_w + left + x) * 3;
                pixels[target..target + 3].copy_from_slice(&image.pixels[source..source + 3]);
            }
        }
    }
    Ok(RgbImage { width: total_w, height: tile_h, pixels })
}

/// Encode and write atomically (temp file in the same folder, then rename).
pub fn save(
    path: &Path,
    image: &RgbImage,
    format: ExportFormat,
    text: &[(String, String)],
) -> anyhow::Result<()> {
    let bytes = encode(image, format, text)?;
    write_atomic(path, &bytes)?;
    log::info!("Wrote {path:?}");
    Ok(())
}

/// The user's pictures folder, else the home folder, else the working folder.
pub fn pictures_folder() -> PathBuf {
    directories::UserDirs::new()
        .and_then(|dirs| {
            dirs.picture_dir()
                .map(Path::to_path_buf)
                .or_else(|| Some(dirs.home_dir().to_path_buf()))
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

/// What a dropped file told us.
#[derive(Debug, Clone)]
pub enum Restored {
    Record(GenerationRecord),
    Parameters(A1111Parameters),
}

/// Work for the file thread.
pub enum FileJob {
    Save {
        path: PathBuf,
        image: RgbImage,
        format: ExportFormat,
        text: Vec<(String, String)>,
    },
    /// The stages side by side as one PNG (see [`strip`]).
    SaveStrip {
        path: PathBuf,
        images: Vec<RgbImage>,
        text: Vec<(String, String)>,
    },
    /// Open the native folder dialog on its own thread; answers [`FileEvent::PickedFolder`].
    PickFolder,
    /// Open the native save dialog on its own thread; answers [`FileEvent::Picked`].
    PickPath {
        folder: PathBuf,
        name: String,
        format: ExportFormat,
    },
    /// Read a dropped file (its bytes if the integration read them already).
    ReadDropped {
        path: PathBuf,
        bytes: Option<Vec<u8>>,
    },
    Copy {
        image: RgbImage,
    },
    HistoryList,
    HistoryAdd {
        image: RgbImage,
        record: GenerationRecord,
    },
    HistoryDelete {
        path: PathBuf,
    },
}

pub enum FileEvent {
    Saved {
        path: PathBuf,
    },
    /// The dialog's answer; `None` also when no dialog backend exists.
    Picked {
        path: Option<PathBuf>,
        format: ExportFormat,
        elapsed: Duration,
    },
    PickedFolder {
        path: Option<PathBuf>,
    },
    Restored {
        path: PathBuf,
        restored: Restored,
    },
    Copied,
    History(Vec<HistoryEntry>),
    HistoryAdded(HistoryEntry),
    HistoryDeleted {
        path: PathBuf,
    },
    Failed {
        message: String,
    },
}

/// The file thread's handle.
pub struct FileWorker {
    jobs: Option<Sender<FileJob>>,
    events: Receiver<FileEvent>,
    thread: Option<JoinHandle<()>>,
}

impl FileWorker {
    pub fn spawn(
        history_folder: PathBuf,
        notify: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> anyhow::Result<Self> {
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<FileJob>();
        let (event_tx, event_rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("starflow-files".into())
            .spawn(move || serve(job_rx, event_tx, history_folder, notify))
            .context("starting the file thread")?;
        Ok(Self { jobs: Some(job_tx), events: event_rx, thread: Some(thread) })
    }

    pub fn send(&self, job: FileJob) {
        // A closed channel means the thread is gone; try_recv reports that.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    pub fn try_recv(&self) -> Result<FileEvent, crossbeam_channel::TryRecvError> {
        self.events.try_recv()
    }

    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> Result<FileEvent, crossbeam_channel::RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    pub fn shutdown(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("The file thread panicked");
        }
    }
}

impl Drop for FileWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    jobs: Receiver<FileJob>,
    events: Sender<FileEvent>,
    history_folder: PathBuf,
    notify: Option<Arc<dyn Fn() + Send + Sync>>,
) {
    // Kept alive so that what we copied stays on the X11/Wayland clipboard.
    let mut clipboard: Option<arboard::Clipboard> = None;
    let send = |event: FileEvent| {
        let _ = events.send(event);
        if let Some(notify) = &notify {
            notify();
        }
    };
    for job in jobs.iter() {
        let result: anyhow::Result<Option<FileEvent>> = match job {
            FileJob::Save { path, image, format, text } => {
                save(&path, &image, format, &text).map(|()| Some(FileEvent::Saved { path }))
            }
            FileJob::SaveStrip { path, images, text } => strip(&images.iter().collect::<Vec<_>>())
                .and_then(|image| save(&path, &image, ExportFormat::Png, &text))
                .map(|()| Some(FileEvent::Saved { path })),
            FileJob::PickFolder => {
                let events = events.clone();
                let notify = notify.clone();
                let spawned = std::thread::Builder::new()
                    .name("starflow-folder-dialog".into())
                    .spawn(move || {
                        let path = rfd::FileDialog::new().pick_folder();
                        let _ = events.send(FileEvent::PickedFolder { path });
                        if let Some(notify) = notify {
                            notify();
                        }
                    });
                spawned.map(|_| None).context("starting the folder dialog")
            }
            FileJob::PickPath { folder, name, format } => {
                pick_path(folder, name, format, events.clone(), notify.clone());
                Ok(None)
            }
            FileJob::ReadDropped { path, bytes } => read_dropped(&path, bytes)
                .map(|restored| Some(FileEvent::Restored { path, restored })),
            FileJob::Copy { image } => {
                copy(&mut clipboard, &image).map(|()| Some(FileEvent::Copied))
            }
            FileJob::HistoryList => {
                history::list(&history_folder).map(|entries| Some(FileEvent::History(entries)))
            }
            FileJob::HistoryAdd { image, record } => history::add(&history_folder, &image, &record)
                .map(|entry| Some(FileEvent::HistoryAdded(entry))),
            FileJob::HistoryDelete { path } => {
                history::delete(&path).map(|()| Some(FileEvent::HistoryDeleted { path }))
            }
        };
        match result {
            Ok(Some(event)) => send(event),
            Ok(None) => {}
            Err(error) => send(FileEvent::Failed { message: format!("{error:#}") }),
        }
    }
}

fn pick_path(
    folder: PathBuf,
    name: String,
    format: ExportFormat,
    events: Sender<FileEvent>,
    notify: Option<Arc<dyn Fn() + Send + Sync>>,
) {
    let spawned =
        std::thread::Builder::new().name("starflow-save-dialog".into()).spawn(move || {
            let started = Instant::now();
            let path = rfd::FileDialog::new()
                .set_directory(&folder)
                .set_file_name(&name)
                .add_filter(format.label(), &[format.extension()])
                .save_file();
            let _ = events.send(FileEvent::Picked { path, format, elapsed: started.elapsed() });
            if let Some(notify) = notify {
                notify();
            }
        });
    if let Err(error) = spawned {
        log::warn!("The save dialog could not be started ({error}); use the path field");
    }
}

fn read_dropped(path: &Path, bytes: Option<Vec<u8>>) -> anyhow::Result<Restored> {
    let bytes = match bytes {
        Some(bytes) => bytes,
        None => {
            std::fs::read(path).with_context(|| format!("reading the dropped file {path:?}"))?
        }
    };
    let (_, text) = read_png(&bytes).with_context(|| {
        format!("The dropped file is not a PNG this app can read; drop a PNG made by STARFlow Studio or with an A1111 `parameters` chunk. (file: {path:?})")
    })?;
    if let Some(record) = GenerationRecord::from_png_text(&text) {
        return Ok(Restored::Record(record));
    }
    match text.iter().find(|(key, _)| key == PARAMETERS_KEY) {
        Some((_, parameters)) => Ok(Restored::Parameters(parse_parameters(parameters))),
        None => bail!(
            "The dropped PNG carries no generation parameters (no `parameters` or starflow-studio chunk). (file: {path:?})"
        ),
    }
}

fn copy(clipboard: &mut Option<arboard::Clipboard>, image: &RgbImage) -> anyhow::Result<()> {
    if clipboard.is_none() {
        *clipboard = Some(
            arboard::Clipboard::new().context("The clipboard is not available on this desktop")?,
        );
    }
    let rgba: Vec<u8> =
        image.pixels.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    let data = arboard::ImageData { width: image.width, height: image.height, bytes: rgba.into() };
    clipboard
        .as_mut()
        .expect("set above")
        .set_image(data)
        .context("copying the image to the clipboard")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_stay_short_and_plain() {
        assert_eq!(file_stem("A red fox, in snow!", 7), "a-red-fox-in-snow-7");
        assert_eq!(file_stem("  ", 3), "starflow-3");
        let long = "ünïcödé ".repeat(100);
        let stem = file_stem(&long, u64::MAX);
        assert!(stem.len() <= MAX_PROMPT_STEM_BYTES + 21, "{} bytes", stem.len());
        let one_word = "x".repeat(1000);
        assert_eq!(file_stem(&one_word, 1).len(), MAX_PROMPT_STEM_BYTES + 2);
    }

    #[test]
    fn the_strip_magnifies_tiles_side_by_side() {
        let tile = RgbImage { width: 2, height: 2, pixels: vec![200; 12] };
        let strip = strip(&[&tile, &tile, &tile]).expect("same sizes");
        assert_eq!((strip.width, strip.height), (3 * 128 + 2 * STRIP_GAP_PX, 128));
    }

    #[test]
    fn jpeg_and_webp_encode() {
        let image =
            RgbImage { width: 4, height: 3, pixels: (0..36).map(|v| v as u8 * 7).collect() };
        let jpeg = encode(&image, ExportFormat::Jpeg, &[]).expect("jpeg");
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let webp = encode(&image, ExportFormat::WebP, &[]).expect("webp");
        assert_eq!(&webp[..4], b"RIFF");
    }
}
