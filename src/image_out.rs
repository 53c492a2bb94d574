//! Turning decoded samples into 8-bit RGB and writing PNG files, atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("expected a 3-channel image, got {channels} channels")]
    NotRgb { channels: usize },
    #[error(
        "could not write the image: {error}. Check that the folder exists and is writable. (path: {path:?})"
    )]
    Write { path: PathBuf, error: std::io::Error },
    #[error("could not encode the PNG: {0}")]
    Encode(String),
}

/// Pixels as the official code writes them: `round((clamp(x, -1, 1) + 1) / 2 * 255)`.
///
/// # Shapes
/// - `sample`: `[channels, height, width]`, values roughly in `[-1, 1]`
pub fn to_rgb8(sample: Tensor<3>) -> Result<RgbImage, ImageError> {
    let [channels, height, width] = sample.dims();
    if channels != 3 {
        return Err(ImageError::NotRgb { channels });
    }

    // The flow can overshoot the data range, so clamp before quantizing.
    let levels = sample.clamp(-1.0, 1.0).add_scalar(1.0).mul_scalar(127.5).round();

    let interleaved = levels.permute([1, 2, 0]); // [height, width, channels]
    let values: Vec<f32> =
        interleaved.try_into_vec_as::<f32>().map_err(|e| ImageError::Encode(format!("{e:?}")))?;
    Ok(RgbImage { width, height, pixels: values.into_iter().map(|v| v as u8).collect() })
}

/// PNG bytes with `tEXt`/`iTXt` chunks for `text` (key, value) pairs.
pub fn encode_png(image: &RgbImage, text: &[(String, String)]) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, image.width as u32, image.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            // iTXt carries UTF-8 (prompts need not be Latin-1).
            encoder
                .add_itxt_chunk(key.clone(), value.clone())
                .map_err(|e| ImageError::Encode(e.to_string()))?;
        }
        let mut writer = encoder.write_header().map_err(|e| ImageError::Encode(e.to_string()))?;
        writer.write_image_data(&image.pixels).map_err(|e| ImageError::Encode(e.to_string()))?;
    }
    Ok(bytes)
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename, so that
/// a crash or a full disk never leaves a half-written image under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let wrap = |error| ImageError::Write { path: path.to_path_buf(), error };
    let mut temp = tempfile::NamedTempFile::new_in(folder).map_err(wrap)?;
    temp.write_all(bytes).map_err(wrap)?;
    temp.as_file().sync_all().map_err(wrap)?;
    temp.persist(path).map_err(|e| wrap(e.error))?;
    Ok(())
}

/// Encode and write a PNG atomically.
pub fn save_png(
    path: &Path,
    image: &RgbImage,
    text: &[(String, String)],
) -> Result<(), ImageError> {
    write_atomic(path, &encode_png(image, text)?)
}

/// Read back a PNG's pixels and text chunks (for tests and for restoring settings).
pub fn read_png(bytes: &[u8]) -> Result<(RgbImage, Vec<(String, String)>), ImageError> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().map_err(|e| ImageError::Encode(e.to_string()))?;
    let mut pixels = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let frame = reader.next_frame(&mut pixels).map_err(|e| ImageError::Encode(e.to_string()))?;
    pixels.truncate(frame.buffer_size());
    let info = reader.info();
    let mut text: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    for chunk in &info.utf8_text {
        if let Ok(value) = chunk.get_text() {
            text.push((chunk.keyword.clone(), value));
        }
    }
    if frame.color_type != png::ColorType::Rgb {
        return Err(ImageError::Encode(format!(
            "expected an RGB PNG, found {:?}",
            frame.color_type
        )));
    }
    Ok((RgbImage { width: frame.width as usize, height: frame.height as usize, pixels }, text))
}
