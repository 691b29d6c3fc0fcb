//! Image preprocessing, bit-compatible with the PIL backend of transformers'
//! `CLIPImageProcessor` / `LlavaImageProcessor` as used by llava-hf checkpoints.
//!
//! The pipeline is: decode → apply the EXIF orientation (as
//! `transformers.image_utils.load_image` does) → convert to RGB (PIL's `convert("RGB")`:
//! alpha is dropped) → optional
//! pad-to-square (original LLaVA-1.5 `expand2square`) → resize → center crop →
//! rescale → normalize, producing CHW `f32`.
//!
//! Every image takes one bounded path ([`decode_image`] / [`load_image`], then
//! [`preprocess`]): the encoded size, the pixel count, the pixel count padded to a square and
//! each side after resizing are checked against [`ImageLimits`] from the image's header,
//! before anything is allocated for it — a 1 × 1,000,000 PNG of 4 KB is refused instead of
//! becoming a 48 × 48,000,000 buffer. See [`ImageLimits`] for the memory this bounds.
//!
//! The key design choice is that resizing is a port of Pillow's
//! `src/libImaging/Resample.c` (`ImagingResample` with the 8 bits-per-channel
//! fixed-point passes), not a generic float resampler: transformers resizes
//! through PIL on `uint8` data, and the rounding of that integer pipeline is
//! what makes the reference pixel values. Rescale and normalize reproduce
//! numpy's `float64 → float32` order of operations, so the output matches the
//! reference to the last bit on identical decoded pixels.

use std::io::{BufRead, Cursor, Seek};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use serde::Deserialize;

/// OpenAI CLIP normalisation mean, used by every LLaVA-1.5 checkpoint. Like numpy, the
/// pipeline rounds these Python floats to `f32` before use.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP normalisation standard deviation.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Bounds on one image, checked before anything is allocated for it.
///
/// With these bounds, decoding and preprocessing one image allocate at most about
/// `8 × max_pixels` bytes for the decoded image (16-bit RGBA at worst, also the `image`
/// crate's allocation cap), `6 × max_pixels` for its RGB and planar copies, and
/// `3 × max(max_pixels, max_side²)` for the resize passes: with the defaults (40 megapixels,
/// 4096) about 0.6 GB for the largest acceptable photo, and a few MB for a typical one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded file, in bytes.
    pub max_encoded_bytes: u64,
    /// Most pixels (width × height) of the image, and of the image padded to a square when
    /// the pipeline pads.
    pub max_pixels: u64,
    /// Longest side after padding and resizing (the shortest-edge resize of a thin image
    /// makes its long side huge).
    pub max_side: u32,
}

impl ImageLimits {
    /// 32 MiB files, 40 megapixels, and sides of at most 4096 pixels after resizing.
    pub const DEFAULT: ImageLimits = ImageLimits {
        max_encoded_bytes: 32 << 20,
        max_pixels: 40_000_000,
        max_side: 4096,
    };
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Errors of image loading and preprocessing.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The image file could not be read.
    #[error("image `{path}`: cannot read file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The image file is empty.
    #[error("image `{path}`: file is empty")]
    Empty { path: PathBuf },
    /// The bytes are not an image in a supported format (JPEG, PNG, WebP).
    #[error(
        "image `{path}`: unsupported or unrecognised image format (expected JPEG, PNG or WebP)"
    )]
    UnsupportedFormat { path: PathBuf },
    /// The image data is corrupt or could not be decoded.
    #[error("image `{path}`: cannot decode: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The file could not be read within the bounds (too large, not a regular file).
    #[error("image: {0}")]
    File(#[source] concepts_fs::FsError),
    /// The image is over one of its [`ImageLimits`].
    #[error("image `{path}`: {what} {found} is over the limit of {limit}")]
    TooLarge {
        path: PathBuf,
        /// Which bound ("encoded bytes", "pixels", …).
        what: &'static str,
        limit: u64,
        found: u64,
    },
    /// The image has a zero width or height.
    #[error("image `{path}`: has no pixels ({width}x{height})")]
    NoPixels {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    /// `preprocessor_config.json` could not be read or parsed.
    #[error("preprocessor config `{path}`: {message}")]
    Config { path: PathBuf, message: String },
    /// A preprocessing parameter is out of range.
    #[error("invalid preprocessing parameter: {0}")]
    InvalidParameter(String),
    /// Building the output tensor failed.
    #[error("pixel values tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// A Pillow resampling filter (the `resample` integer of `preprocessor_config.json`).
///
/// `NEAREST` (0) goes through a different Pillow code path and is not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `Image.LANCZOS` (1).
    Lanczos,
    /// `Image.BILINEAR` (2).
    Bilinear,
    /// `Image.BICUBIC` (3), the CLIP default.
    Bicubic,
    /// `Image.BOX` (4).
    Box,
    /// `Image.HAMMING` (5).
    Hamming,
}

impl Resample {
    /// Maps PIL's integer filter id.
    pub fn from_pil_id(id: i64) -> Option<Self> {
        match id {
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            4 => Some(Self::Box),
            5 => Some(Self::Hamming),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Self::Box => box_filter(x),
            Self::Bilinear => bilinear_filter(x),
            Self::Hamming => hamming_filter(x),
            Self::Bicubic => bicubic_filter(x),
            Self::Lanczos => lanczos_filter(x),
        }
    }
}

/// How the image is resized before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// Scale so that the shorter edge has this length, keeping the aspect
    /// ratio (the longer edge is truncated, as transformers does).
    ShortestEdge(u32),
    /// Scale to exactly this size.
    Exact { height: u32, width: u32 },
}

/// Image preprocessing parameters, mirroring the fields of
/// `preprocessor_config.json` that affect the pixel values.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Target of the resize step; `None` skips resizing (`do_resize: false`).
    pub resize: Option<ResizeTo>,
    /// Resampling filter of the resize step.
    pub resample: Resample,
    /// Center-crop size `(height, width)`; `None` skips the crop.
    pub crop: Option<(u32, u32)>,
    /// Multiplier applied in `f64` before the cast to `f32`; `None` skips rescaling.
    pub rescale_factor: Option<f64>,
    /// Per-channel `(mean, std)`; `None` skips normalisation.
    pub normalize: Option<([f32; 3], [f32; 3])>,
    /// Pad to a square before resizing, as the original LLaVA-1.5 code does.
    pub pad_to_square: bool,
    /// Bounds checked from an image's header before it is decoded, padded or resized.
    pub limits: ImageLimits,
}

impl PreprocessConfig {
    /// The `llava-hf/llava-1.5-*-hf` preprocessor: shortest edge 336, bicubic,
    /// center crop 336×336, rescale 1/255, OpenAI CLIP mean/std, no padding.
    pub fn llava_1_5() -> Self {
        Self::square(336)
    }

    /// A CLIP-style preprocessor for a square vision input of `size` pixels
    /// (shortest edge `size`, center crop `size`×`size`), e.g. the 48 px toy model.
    pub fn square(size: u32) -> Self {
        Self {
            resize: Some(ResizeTo::ShortestEdge(size)),
            resample: Resample::Bicubic,
            crop: Some((size, size)),
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some((to_f32(OPENAI_CLIP_MEAN), to_f32(OPENAI_CLIP_STD))),
            pad_to_square: false,
            limits: ImageLimits::DEFAULT,
        }
    }

    /// Returns this configuration with other image bounds.
    pub fn with_limits(mut self, limits: ImageLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks a `width` × `height` image against [`PreprocessConfig::limits`] as this
    /// pipeline would process it: its pixels, its pixels padded to a square (when padding),
    /// and each side after the resize. Needs nothing but the two numbers, so it runs on an
    /// image's header before the image is decoded.
    pub fn check_size(&self, width: u32, height: u32, name: &Path) -> Result<(), PreprocessError> {
        let limits = &self.limits;
        let over = |what, limit: u64, found: u64| {
            (found > limit).then(|| PreprocessError::TooLarge {
                path: name.to_path_buf(),
                what,
                limit,
                found,
            })
        };
        let pixels = u64::from(width) * u64::from(height);
        if let Some(e) = over("pixels", limits.max_pixels, pixels) {
            return Err(e);
        }
        let (mut h, mut w) = (u64::from(height), u64::from(width));
        if self.pad_to_square {
            let side = h.max(w);
            if let Some(e) = over("pixels padded to a square", limits.max_pixels, side * side) {
                return Err(e);
            }
            (h, w) = (side, side);
        }
        if let (Some(target), true) = (self.resize, h > 0 && w > 0) {
            let (rh, rw) = resize_output_size_u64(h, w, target);
            let side = rh.max(rw);
            if let Some(e) = over("side after resizing", u64::from(limits.max_side), side) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Returns this configuration with the pad-to-square step switched on or off.
    pub fn with_pad_to_square(mut self, pad: bool) -> Self {
        self.pad_to_square = pad;
        self
    }

    /// Reads `preprocessor_config.json` from a model directory. Without the file, and for
    /// keys it lacks, the llava-1.5 settings for a vision input of `image_size` pixels apply
    /// ([`PreprocessConfig::square`]; [`PreprocessConfig::llava_1_5`] for 336).
    pub fn from_model_dir(dir: &Path, image_size: u32) -> Result<Self, PreprocessError> {
        let path = dir.join("preprocessor_config.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Self::from_json(&text, image_size).map_err(|message| PreprocessError::Config {
                    path: path.clone(),
                    message,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::square(image_size)),
            Err(e) => Err(PreprocessError::Config {
                path,
                message: e.to_string(),
            }),
        }
    }

    /// Parses the text of a `preprocessor_config.json`. Missing keys take the values of
    /// [`PreprocessConfig::square`]`(image_size)`.
    pub fn from_json(text: &str, image_size: u32) -> Result<Self, String> {
        let raw: RawPreprocessorConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let default = Self::square(image_size);
        let resize = if raw.do_resize.unwrap_or(true) {
            Some(match raw.size {
                None => default.resize.expect("llava default resizes"),
                Some(size) => size.resize_to()?,
            })
        } else {
            None
        };
        let resample = match raw.resample {
            None => Resample::Bicubic,
            Some(id) => Resample::from_pil_id(id).ok_or_else(|| {
                format!("unsupported resample filter {id} (NEAREST is not supported)")
            })?,
        };
        let crop = if raw.do_center_crop.unwrap_or(true) {
            Some(match raw.crop_size {
                None => default.crop.expect("llava default crops"),
                Some(size) => size.height_width()?,
            })
        } else {
            None
        };
        let rescale_factor = if raw.do_rescale.unwrap_or(true) {
            Some(raw.rescale_factor.unwrap_or(1.0 / 255.0))
        } else {
            None
        };
        let normalize = if raw.do_normalize.unwrap_or(true) {
            let mean = channel_triple(raw.image_mean, OPENAI_CLIP_MEAN, "image_mean")?;
            let std = channel_triple(raw.image_std, OPENAI_CLIP_STD, "image_std")?;
            Some((mean, std))
        } else {
            None
        };
        let config = Self {
            resize,
            resample,
            crop,
            rescale_factor,
            normalize,
            pad_to_square: raw.do_pad.unwrap_or(false),
            limits: ImageLimits::DEFAULT,
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), PreprocessError> {
        let zero = match self.resize {
            Some(ResizeTo::ShortestEdge(s)) => s == 0,
            Some(ResizeTo::Exact { height, width }) => height == 0 || width == 0,
            None => false,
        } || matches!(self.crop, Some((h, w)) if h == 0 || w == 0);
        if zero {
            return Err(PreprocessError::InvalidParameter(
                "resize and crop sizes must be positive".into(),
            ));
        }
        if let Some((_, std)) = self.normalize {
            if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
                return Err(PreprocessError::InvalidParameter(format!(
                    "image_std must be finite and non-zero, got {std:?}"
                )));
            }
        }
        Ok(())
    }

    /// The pad colour of [`PreprocessConfig::pad_to_square`]:
    /// `tuple(int(x * 255) for x in image_mean)`, or black without normalisation.
    pub fn pad_color(&self) -> [u8; 3] {
        match self.normalize {
            // Truncation towards zero is Python's `int()`.
            Some((mean, _)) => mean.map(|m| (f64::from(m) * 255.0).clamp(0.0, 255.0) as u8),
            None => [0, 0, 0],
        }
    }
}

#[derive(Deserialize)]
struct RawPreprocessorConfig {
    do_resize: Option<bool>,
    size: Option<RawSize>,
    resample: Option<i64>,
    do_center_crop: Option<bool>,
    crop_size: Option<RawSize>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f64>>,
    image_std: Option<Vec<f64>>,
    do_pad: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Int(u32),
    Dict {
        shortest_edge: Option<u32>,
        height: Option<u32>,
        width: Option<u32>,
    },
}

impl RawSize {
    fn resize_to(&self) -> Result<ResizeTo, String> {
        match *self {
            // Old CLIP configs: an int `size` is the shortest edge.
            RawSize::Int(s) => Ok(ResizeTo::ShortestEdge(s)),
            RawSize::Dict {
                shortest_edge: Some(s),
                ..
            } => Ok(ResizeTo::ShortestEdge(s)),
            RawSize::Dict {
                height: Some(height),
                width: Some(width),
                ..
            } => Ok(ResizeTo::Exact { height, width }),
            RawSize::Dict { .. } => {
                Err("`size` needs `shortest_edge` or both `height` and `width`".into())
            }
        }
    }

    fn height_width(&self) -> Result<(u32, u32), String> {
        match *self {
            RawSize::Int(s) => Ok((s, s)),
            RawSize::Dict {
                height: Some(h),
                width: Some(w),
                ..
            } => Ok((h, w)),
            RawSize::Dict { .. } => Err("`crop_size` needs `height` and `width`".into()),
        }
    }
}

/// numpy's `np.array(values, dtype=float32)`: round each `f64` to nearest.
fn to_f32(v: [f64; 3]) -> [f32; 3] {
    v.map(|x| x as f32)
}

fn channel_triple(v: Option<Vec<f64>>, default: [f64; 3], name: &str) -> Result<[f32; 3], String> {
    match v {
        None => Ok(to_f32(default)),
        Some(v) if v.len() == 3 => Ok([v[0] as f32, v[1] as f32, v[2] as f32]),
        Some(v) if v.len() == 1 => Ok([v[0] as f32; 3]),
        Some(v) => Err(format!("`{name}` must have 3 values, got {}", v.len())),
    }
}

/// Preprocessed pixel values of one image: `f32`, channel-major (CHW), RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    height: usize,
    width: usize,
    data: Vec<f32>,
}

impl PixelValues {
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The values in CHW order (`3 * height * width` of them).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// A `[1, 3, H, W]` tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor, PreprocessError> {
        Ok(Tensor::from_slice(
            &self.data,
            (1, 3, self.height, self.width),
            device,
        )?)
    }
}

/// Reads an image file within `limits` (a regular file of at most
/// [`ImageLimits::max_encoded_bytes`]; `/dev/zero` or a FIFO is refused, not drained).
pub fn read_image_file(path: &Path, limits: &ImageLimits) -> Result<Vec<u8>, PreprocessError> {
    concepts_fs::read_bounded(path, limits.max_encoded_bytes).map_err(|e| match e {
        concepts_fs::FsError::Io { path, source, .. } => PreprocessError::Io { path, source },
        other => PreprocessError::File(other),
    })
}

/// Reads and decodes an image file (JPEG, PNG or WebP) within `config`'s bounds, applies
/// its EXIF orientation and converts it to 8-bit RGB. See [`decode_image`].
pub fn load_image(path: &Path, config: &PreprocessConfig) -> Result<RgbImage, PreprocessError> {
    let bytes = read_image_file(path, &config.limits)?;
    decode_image(&bytes, path, config)
}

/// Decodes in-memory image bytes; `name` is used in error messages.
///
/// The bytes, then the header's width and height ([`PreprocessConfig::check_size`]), are
/// checked against `config.limits` before any pixel buffer is allocated, and the decoder
/// itself runs under an allocation cap.
pub fn decode_image(
    bytes: &[u8],
    name: &Path,
    config: &PreprocessConfig,
) -> Result<RgbImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty {
            path: name.to_path_buf(),
        });
    }
    let limits = &config.limits;
    if bytes.len() as u64 > limits.max_encoded_bytes {
        return Err(PreprocessError::TooLarge {
            path: name.to_path_buf(),
            what: "encoded bytes",
            limit: limits.max_encoded_bytes,
            found: bytes.len() as u64,
        });
    }
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|source| PreprocessError::Io {
                path: name.to_path_buf(),
                source,
            })
    };
    match reader()?.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP) => {}
        _ => {
            return Err(PreprocessError::UnsupportedFormat {
                path: name.to_path_buf(),
            })
        }
    }
    let decode_error = |source| match source {
        image::ImageError::Unsupported(_) => PreprocessError::UnsupportedFormat {
            path: name.to_path_buf(),
        },
        source => PreprocessError::Decode {
            path: name.to_path_buf(),
            source,
        },
    };
    let (width, height) = reader()?.into_dimensions().map_err(decode_error)?;
    if width == 0 || height == 0 {
        return Err(PreprocessError::NoPixels {
            path: name.to_path_buf(),
            width,
            height,
        });
    }
    config.check_size(width, height, name)?;
    let mut reader = reader()?;
    let mut decoder_limits = image::Limits::default();
    // 16-bit RGBA is the widest decoded layout: 8 bytes a pixel, plus decoder workspace.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(16 << 20));
    reader.limits(decoder_limits);
    let img = decode_oriented(reader).map_err(decode_error)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(PreprocessError::NoPixels {
            path: name.to_path_buf(),
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(to_rgb(img))
}

fn decode_oriented<R: BufRead + Seek>(reader: ImageReader<R>) -> image::ImageResult<DynamicImage> {
    let mut decoder = reader.into_decoder()?;
    let orientation = decoder.orientation()?;
    let mut img = DynamicImage::from_decoder(decoder)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// RGB conversion as PIL's `Image.convert("RGB")`, which transformers' `load_image` and the
/// original LLaVA code apply to every file: alpha is dropped (not composited), grey is
/// replicated, and 16-bit samples keep their high byte as PIL's 16-bit PNG unpackers do.
/// (PIL clips 16-bit greyscale to 255 instead; such images are rare in this use.)
fn to_rgb(img: DynamicImage) -> RgbImage {
    let high_byte = |v: &u16| (v >> 8) as u8;
    let (w, h) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageRgb8(rgb) => return rgb,
        DynamicImage::ImageRgb16(buf) => buf.as_raw().iter().map(high_byte).collect(),
        DynamicImage::ImageRgba16(buf) => buf
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [high_byte(&p[0]), high_byte(&p[1]), high_byte(&p[2])])
            .collect(),
        DynamicImage::ImageLuma16(buf) => buf
            .as_raw()
            .iter()
            .flat_map(|v| [high_byte(v); 3])
            .collect(),
        DynamicImage::ImageLumaA16(buf) => buf
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [high_byte(&p[0]); 3])
            .collect(),
        DynamicImage::ImageRgba8(buf) => buf
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        DynamicImage::ImageLumaA8(buf) => buf
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0]; 3])
            .collect(),
        other => return other.to_rgb8(),
    };
    RgbImage::from_raw(w, h, data).expect("same pixel count")
}

/// Loads and preprocesses an image file, within `config`'s bounds.
pub fn preprocess_file(
    path: &Path,
    config: &PreprocessConfig,
) -> Result<PixelValues, PreprocessError> {
    preprocess(&load_image(path, config)?, config)
}

/// Runs the preprocessing pipeline on an RGB image, after checking that padding and
/// resizing it stay within `config.limits` ([`PreprocessConfig::check_size`]).
pub fn preprocess(
    image: &RgbImage,
    config: &PreprocessConfig,
) -> Result<PixelValues, PreprocessError> {
    config.validate()?;
    config.check_size(image.width(), image.height(), Path::new("image"))?;
    let mut img = Planar::from_rgb(image);
    if config.pad_to_square {
        img = img.pad_to_square(config.pad_color());
    }
    if let Some(target) = config.resize {
        let (h, w) = resize_output_size(img.height, img.width, target);
        img = resample(&img, w, h, config.resample);
    }
    if let Some((crop_h, crop_w)) = config.crop {
        img = img.center_crop(crop_h as usize, crop_w as usize);
    }
    let mut data = Vec::with_capacity(img.data.len());
    for c in 0..3 {
        let plane = &img.data[c * img.height * img.width..(c + 1) * img.height * img.width];
        data.extend(plane.iter().map(|&v| {
            // numpy: `image.astype(float64) * scale` then `.astype(float32)`;
            // normalisation happens in float32.
            let x = match config.rescale_factor {
                Some(s) => (f64::from(v) * s) as f32,
                None => f32::from(v),
            };
            match config.normalize {
                Some((mean, std)) => (x - mean[c]) / std[c],
                None => x,
            }
        }));
    }
    Ok(PixelValues {
        height: img.height,
        width: img.width,
        data,
    })
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`:
/// the short edge becomes `size`, the long edge `int(size * long / short)`.
/// [`resize_output_size`] in `u64`, for sizes checked before they are allocated.
fn resize_output_size_u64(height: u64, width: u64, target: ResizeTo) -> (u64, u64) {
    match target {
        ResizeTo::Exact { height, width } => (u64::from(height), u64::from(width)),
        ResizeTo::ShortestEdge(size) => {
            let size = u64::from(size);
            let (short, long) = (width.min(height), width.max(height));
            let new_long = ((size * long) as f64 / short as f64) as u64;
            if width <= height {
                (new_long, size)
            } else {
                (size, new_long)
            }
        }
    }
}

fn resize_output_size(height: usize, width: usize, target: ResizeTo) -> (usize, usize) {
    let (h, w) = resize_output_size_u64(height as u64, width as u64, target);
    (h as usize, w as usize)
}

/// An 8-bit image in CHW layout (the layout transformers works in).
#[derive(Clone)]
struct Planar {
    height: usize,
    width: usize,
    data: Vec<u8>,
}

impl Planar {
    fn from_rgb(img: &RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let raw = img.as_raw();
        let mut data = vec![0u8; 3 * h * w];
        for (i, px) in raw.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * h * w + i] = px[c];
            }
        }
        Self {
            height: h,
            width: w,
            data,
        }
    }

    fn at(&self, c: usize, y: usize, x: usize) -> u8 {
        self.data[(c * self.height + y) * self.width + x]
    }

    /// `LlavaImageProcessor.pad_to_square` / LLaVA's `expand2square`: the image
    /// is placed at offset `(max - side) // 2` on a canvas of `color`.
    fn pad_to_square(&self, color: [u8; 3]) -> Self {
        if self.height == self.width {
            return self.clone();
        }
        let side = self.height.max(self.width);
        let (top, left) = ((side - self.height) / 2, (side - self.width) / 2);
        let mut data = Vec::with_capacity(3 * side * side);
        for (c, &fill) in color.iter().enumerate() {
            let start = data.len();
            data.resize(start + side * side, fill);
            for y in 0..self.height {
                let row = &self.data[(c * self.height + y) * self.width..][..self.width];
                data[start + (top + y) * side + left..][..self.width].copy_from_slice(row);
            }
        }
        Self {
            height: side,
            width: side,
            data,
        }
    }

    /// transformers' `center_crop`: `top = (h - crop_h) // 2`, and when the
    /// image is smaller than the crop it is first zero-padded with
    /// `ceil((new - old) / 2)` before the same offsets.
    fn center_crop(&self, crop_h: usize, crop_w: usize) -> Self {
        let (h, w) = (self.height as i64, self.width as i64);
        let (ch, cw) = (crop_h as i64, crop_w as i64);
        let top = (h - ch).div_euclid(2);
        let left = (w - cw).div_euclid(2);
        let (new_h, new_w) = (ch.max(h), cw.max(w));
        let top_pad = (new_h - h + 1) / 2;
        let left_pad = (new_w - w + 1) / 2;
        // Window into the padded canvas, clamped as numpy slicing does.
        let y0 = (top + top_pad).max(0);
        let y1 = (top + ch + top_pad).min(new_h);
        let x0 = (left + left_pad).max(0);
        let x1 = (left + cw + left_pad).min(new_w);
        let (out_h, out_w) = ((y1 - y0).max(0) as usize, (x1 - x0).max(0) as usize);
        let mut data = Vec::with_capacity(3 * out_h * out_w);
        for c in 0..3 {
            for py in y0..y1 {
                for px in x0..x1 {
                    let (sy, sx) = (py - top_pad, px - left_pad);
                    let inside = (0..h).contains(&sy) && (0..w).contains(&sx);
                    data.push(if inside {
                        self.at(c, sy as usize, sx as usize)
                    } else {
                        0
                    });
                }
            }
        }
        Self {
            height: out_h,
            width: out_w,
            data,
        }
    }
}

// ---------------------------------------------------------------------------
// Port of Pillow's Resample.c (8 bits per channel).

fn box_filter(x: f64) -> f64 {
    if x > -0.5 && x <= 0.5 {
        1.0
    } else {
        0.0
    }
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn hamming_filter(x: f64) -> f64 {
    let x = x.abs();
    if x == 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let x = x * std::f64::consts::PI;
    // Pillow writes `0.54f + 0.46f * cos(x)`: float literals promoted to double.
    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
}

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc_filter(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn lanczos_filter(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc_filter(x) * sinc_filter(x / 3.0)
    } else {
        0.0
    }
}

/// `32 - 8 - 2`: 8 bits of result and two bits of headroom for filters with
/// negative lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel filter windows: `bounds[i] = (first input index, count)`
/// and `ksize` fixed-point coefficients per output pixel.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

/// `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
fn precompute_coeffs(
    in_size: usize,
    in0: f32,
    in1: f32,
    out_size: usize,
    filter: Resample,
) -> Coeffs {
    // `(double)(in1 - in0)`: the subtraction is in single precision.
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate towards zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let v = if ww != 0.0 { kx / ww } else { *kx };
            let scaled = v * f64::from(1u32 << PRECISION_BITS);
            kk[xx * ksize + x] = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin as usize, n));
    }
    Coeffs { ksize, bounds, kk }
}

/// `clip8`: the accumulator carries `PRECISION_BITS` fraction bits (and a
/// rounding half); an arithmetic shift then a clamp to `0..=255`.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `ImagingResampleInner` with `box = (0, 0, width, height)`: a horizontal
/// pass over only the rows the vertical pass reads, then a vertical pass.
fn resample(img: &Planar, out_w: usize, out_h: usize, filter: Resample) -> Planar {
    let (in_w, in_h) = (img.width, img.height);
    if out_w == in_w && out_h == in_h {
        // PIL's `resize` returns a copy for an identity resize.
        return img.clone();
    }
    let vert = precompute_coeffs(in_h, 0.0, in_h as f32, out_h, filter);
    let mut cur = img.clone();
    let mut vbounds = vert.bounds.clone();
    if out_w != in_w {
        let ybox_first = vert.bounds[0].0;
        let (last_min, last_n) = vert.bounds[out_h - 1];
        let ybox_last = last_min + last_n;
        for b in &mut vbounds {
            b.0 -= ybox_first;
        }
        let horiz = precompute_coeffs(in_w, 0.0, in_w as f32, out_w, filter);
        let rows = ybox_last - ybox_first;
        let mut data = vec![0u8; 3 * rows * out_w];
        for c in 0..3 {
            for yy in 0..rows {
                let src = &img.data[(c * in_h + yy + ybox_first) * in_w..][..in_w];
                let dst = &mut data[(c * rows + yy) * out_w..][..out_w];
                for (xx, out) in dst.iter_mut().enumerate() {
                    let (xmin, n) = horiz.bounds[xx];
                    let k = &horiz.kk[xx * horiz.ksize..][..n];
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (p, kx) in src[xmin..xmin + n].iter().zip(k) {
                        ss += i32::from(*p) * kx;
                    }
                    *out = clip8(ss);
                }
            }
        }
        cur = Planar {
            height: rows,
            width: out_w,
            data,
        };
    }
    if out_h != in_h {
        let w = cur.width;
        let mut data = vec![0u8; 3 * out_h * w];
        for c in 0..3 {
            let plane = &cur.data[c * cur.height * w..][..cur.height * w];
            for (yy, &(ymin, n)) in vbounds.iter().enumerate() {
                let k = &vert.kk[yy * vert.ksize..][..n];
                let dst = &mut data[(c * out_h + yy) * w..][..w];
                for (xx, out) in dst.iter_mut().enumerate() {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (y, ky) in k.iter().enumerate() {
                        ss += i32::from(plane[(ymin + y) * w + xx]) * ky;
                    }
                    *out = clip8(ss);
                }
            }
        }
        cur = Planar {
            height: out_h,
            width: w,
            data,
        };
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w.max(2).saturating_sub(1).max(1)) as u8,
                (y * 255 / h.max(2).saturating_sub(1).max(1)) as u8,
                ((x * 7 + y * 13) % 256) as u8,
            ])
        })
    }

    #[test]
    fn resize_output_size_truncates_the_long_edge() {
        // 500x333 (w x h): long = int(336 * 500 / 333) = 504.
        assert_eq!(
            resize_output_size(333, 500, ResizeTo::ShortestEdge(336)),
            (336, 504)
        );
        assert_eq!(
            resize_output_size(500, 333, ResizeTo::ShortestEdge(336)),
            (504, 336)
        );
        assert_eq!(resize_output_size(7, 7, ResizeTo::ShortestEdge(3)), (3, 3));
    }

    #[test]
    fn constant_image_stays_constant_through_resample() {
        let img = RgbImage::from_pixel(37, 21, image::Rgb([200, 3, 128]));
        let out = resample(&Planar::from_rgb(&img), 16, 9, Resample::Bicubic);
        for c in 0..3 {
            for y in 0..9 {
                for x in 0..16 {
                    assert_eq!(out.at(c, y, x), [200, 3, 128][c]);
                }
            }
        }
    }

    #[test]
    fn bicubic_coefficients_sum_to_one_in_fixed_point() {
        let c = precompute_coeffs(100, 0.0, 100.0, 33, Resample::Bicubic);
        for (i, &(_, n)) in c.bounds.iter().enumerate() {
            let sum: i64 = c.kk[i * c.ksize..][..n].iter().map(|&v| i64::from(v)).sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= n as i64,
                "row {i}: {sum}"
            );
        }
    }

    #[test]
    fn pad_to_square_centres_the_image_on_the_mean_colour() {
        let img = gradient(5, 2);
        let cfg = PreprocessConfig::llava_1_5();
        assert_eq!(cfg.pad_color(), [122, 116, 104]);
        let sq = Planar::from_rgb(&img).pad_to_square(cfg.pad_color());
        assert_eq!((sq.height, sq.width), (5, 5));
        // (5 - 2) // 2 = 1 row of padding on top, 2 below.
        assert_eq!(sq.at(0, 0, 3), 122);
        assert_eq!(sq.at(2, 4, 0), 104);
        assert_eq!(sq.at(0, 1, 4), img.get_pixel(4, 0)[0]);
        assert_eq!(sq.at(1, 2, 1), img.get_pixel(1, 1)[1]);
    }

    #[test]
    fn center_crop_takes_the_floor_offset_and_zero_pads_small_images() {
        let img = Planar::from_rgb(&gradient(5, 4));
        let c = img.center_crop(2, 2);
        // top = (4 - 2) // 2 = 1, left = (5 - 2) // 2 = 1.
        assert_eq!(c.at(0, 0, 0), img.at(0, 1, 1));
        assert_eq!(c.at(2, 1, 1), img.at(2, 2, 2));
        let p = img.center_crop(6, 5);
        assert_eq!((p.height, p.width), (6, 5));
        // One zero row above (ceil(2 / 2)), one below.
        assert_eq!(p.at(1, 0, 2), 0);
        assert_eq!(p.at(1, 1, 2), img.at(1, 0, 2));
        assert_eq!(p.at(1, 5, 2), 0);
    }

    #[test]
    fn rgb_conversion_drops_alpha_like_pil_convert() {
        let rgba =
            image::RgbaImage::from_raw(2, 1, vec![10, 20, 30, 0, 40, 50, 60, 128]).expect("2 px");
        let rgb = to_rgb(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.as_raw(), &[10, 20, 30, 40, 50, 60]);
        let la = image::GrayAlphaImage::from_raw(1, 1, vec![77, 0]).expect("1 px");
        assert_eq!(
            to_rgb(DynamicImage::ImageLumaA8(la)).as_raw(),
            &[77, 77, 77]
        );
    }

    #[test]
    fn config_json_accepts_llava_hf_and_legacy_layouts() {
        let hf = r#"{"crop_size": {"height": 336, "width": 336}, "do_center_crop": true,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "resample": 3,
            "image_std": [0.26862954, 0.26130258, 0.27577711], "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 336}, "image_processor_type": "CLIPImageProcessor"}"#;
        assert_eq!(
            PreprocessConfig::from_json(hf, 224),
            Ok(PreprocessConfig::llava_1_5())
        );
        let legacy = r#"{"size": 48, "crop_size": 48, "do_pad": true}"#;
        assert_eq!(
            PreprocessConfig::from_json(legacy, 336),
            Ok(PreprocessConfig::square(48).with_pad_to_square(true))
        );
        assert_eq!(
            PreprocessConfig::from_json("{}", 48),
            Ok(PreprocessConfig::square(48))
        );
        let no_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-model-dir");
        assert_eq!(
            PreprocessConfig::from_model_dir(&no_dir, 48).expect("defaults"),
            PreprocessConfig::square(48)
        );
        let nearest = r#"{"resample": 0}"#;
        assert!(PreprocessConfig::from_json(nearest, 336)
            .unwrap_err()
            .contains("NEAREST"));
    }

    #[test]
    fn preprocess_output_has_crop_shape_and_normalised_range() {
        let cfg = PreprocessConfig::square(48);
        let px = preprocess(&gradient(90, 60), &cfg).expect("preprocess");
        assert_eq!(
            (px.height(), px.width(), px.data().len()),
            (48, 48, 3 * 48 * 48)
        );
        let lo = ((0.0 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0]) as f32;
        let hi = ((1.0 - OPENAI_CLIP_MEAN[2]) / OPENAI_CLIP_STD[2]) as f32;
        assert!(px.data().iter().all(|v| *v >= lo - 1e-5 && *v <= hi + 1e-5));
    }

    #[test]
    fn bad_image_bytes_name_the_file() {
        let name = Path::new("cat.jpg");
        let cfg = PreprocessConfig::square(48);
        let err = decode_image(&[], name, &cfg).unwrap_err().to_string();
        assert_eq!(err, "image `cat.jpg`: file is empty");
        let err = decode_image(b"definitely not an image", name, &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("image `cat.jpg`: unsupported"), "{err}");
        // A PNG signature followed by garbage.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&[0u8; 40]);
        let err = decode_image(&png, name, &cfg).unwrap_err().to_string();
        assert!(err.starts_with("image `cat.jpg`: cannot decode"), "{err}");
    }
}
