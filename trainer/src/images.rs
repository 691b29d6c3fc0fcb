//! Finding, reading and checking training images.

use std::path::{Path, PathBuf};

use concepts_runtime::preprocess::{
    decode_image, preprocess, read_image_file, PixelValues, PreprocessConfig,
};
use image::RgbImage;

use crate::error::{Result, TrainError};

/// File extensions taken as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// The image files in `dir`, sorted by path; with `recursive`, in sub-folders too. Hidden
/// files and folders (names starting with `.`) are skipped.
pub fn list_images(dir: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| TrainError::io("reading folder", &d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TrainError::io("reading folder", &d, e))?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if path.is_dir() {
                if recursive {
                    stack.push(path);
                }
            } else if is_image_path(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A decoded image and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub image: RgbImage,
}

use concepts_fs::sha256_hex;

/// Reads and decodes `path` within `config`'s image bounds (the one bounded path of
/// [`concepts_runtime::preprocess`]), refusing images whose shorter side is under `min_side`
/// pixels.
pub fn load_checked(path: &Path, config: &PreprocessConfig, min_side: u32) -> Result<LoadedImage> {
    let bytes = read_image_file(path, &config.limits).map_err(|e| TrainError::Image {
        path: path.to_path_buf(),
        msg: format!("cannot be read: {e}"),
    })?;
    decode_checked(path, &bytes, config, min_side)
}

/// Like [`load_checked`] for bytes already read.
pub fn decode_checked(
    path: &Path,
    bytes: &[u8],
    config: &PreprocessConfig,
    min_side: u32,
) -> Result<LoadedImage> {
    let image = decode_image(bytes, path, config).map_err(|e| TrainError::Image {
        path: path.to_path_buf(),
        msg: format!("cannot be decoded: {e}"),
    })?;
    let (w, h) = image.dimensions();
    if w.min(h) < min_side {
        return Err(TrainError::Image {
            path: path.to_path_buf(),
            msg: format!(
                "is {w}x{h} pixels, too small: the shorter side must be at least {min_side}"
            ),
        });
    }
    Ok(LoadedImage {
        path: path.to_path_buf(),
        sha256: sha256_hex(bytes),
        image,
    })
}

/// The smallest shorter side accepted for a vision tower of `image_size` pixels: half of it,
/// between 8 and 64 pixels.
pub fn min_image_side(image_size: usize) -> u32 {
    (image_size as u32 / 2).clamp(8, 64)
}

/// Preprocesses `image`, mirrored left-right first when `flip` is set.
pub fn pixels(image: &RgbImage, flip: bool, config: &PreprocessConfig) -> Result<PixelValues> {
    let px = if flip {
        preprocess(&image::imageops::flip_horizontal(image), config)
    } else {
        preprocess(image, config)
    };
    Ok(px.map_err(concepts_runtime::RuntimeError::from)?)
}
