//! Hostile images: each case a user found that once aborted the process or filled memory,
//! now refused from the header, before anything is allocated for it. Every case also runs
//! through the runtime API (`Runtime::recognise_all` → the server and `scan`), which uses
//! the same path.

use std::path::Path;

use concepts_runtime::preprocess::{
    decode_image, load_image, preprocess, ImageLimits, PreprocessConfig, PreprocessError,
};
use image::RgbImage;

/// A flat-colour PNG at the best compression (a thin one is a few KB, as an attacker's is).
fn png(width: u32, height: u32) -> Vec<u8> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let img = RgbImage::from_pixel(width, height, image::Rgb([90, 120, 200]));
    let mut out = Vec::new();
    let encoder =
        PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::NoFilter);
    img.write_with_encoder(encoder).unwrap();
    out
}

/// A PNG whose header claims `width` × `height` with a few bytes of (invalid) data: a file
/// of under 100 bytes that a decoder trusting the header would allocate gigabytes for.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn too_large(err: PreprocessError) -> &'static str {
    match err {
        PreprocessError::TooLarge { what, .. } => what,
        other => panic!("expected a size refusal, got: {other}"),
    }
}

#[test]
fn a_thin_png_is_refused_before_its_resize_buffer_is_allocated() {
    // 1 × 1,000,000 pixels in under 4 KB: resizing the short edge to 48 would make a
    // 48 × 48,000,000 buffer (6.9 GB), which used to abort the server.
    let bytes = png(1, 1_000_000);
    assert!(bytes.len() < 8 << 10, "{} bytes", bytes.len());
    let cfg = PreprocessConfig::square(48);
    let err = decode_image(&bytes, Path::new("thin.png"), &cfg).unwrap_err();
    let message = err.to_string();
    assert_eq!(too_large(err), "side after resizing");
    assert!(
        message.contains("thin.png") && message.contains("4096"),
        "{message}"
    );
    // 1 × 120,000 cost 1.1 GB and 4 s: refused the same way.
    let err = decode_image(&png(1, 120_000), Path::new("t.png"), &cfg).unwrap_err();
    assert_eq!(too_large(err), "side after resizing");
}

#[test]
fn a_wide_png_padded_to_a_square_is_refused_before_the_square_exists() {
    // 60000 × 1 padded to a square would be 3.6 gigapixels.
    let bytes = png(60_000, 1);
    let cfg = PreprocessConfig::square(48).with_pad_to_square(true);
    let err = decode_image(&bytes, Path::new("wide.png"), &cfg).unwrap_err();
    assert_eq!(too_large(err), "pixels padded to a square");
}

#[test]
fn a_header_claiming_100000_squared_pixels_is_refused_unread() {
    let bytes = png_claiming(100_000, 100_000);
    assert!(bytes.len() < 100);
    let cfg = PreprocessConfig::square(48);
    let err = decode_image(&bytes, Path::new("claim.png"), &cfg).unwrap_err();
    assert_eq!(too_large(err), "pixels");
}

#[test]
fn an_already_decoded_image_is_checked_before_it_is_padded_or_resized() {
    let thin = RgbImage::new(1, 20_000);
    let err = preprocess(&thin, &PreprocessConfig::square(48)).unwrap_err();
    assert_eq!(too_large(err), "side after resizing");
}

#[test]
fn encoded_bytes_over_the_limit_are_refused_before_decoding() {
    let limits = ImageLimits {
        max_encoded_bytes: 100,
        ..ImageLimits::DEFAULT
    };
    let cfg = PreprocessConfig::square(48).with_limits(limits);
    let err = decode_image(&png(64, 64), Path::new("a.png"), &cfg).unwrap_err();
    assert_eq!(too_large(err), "encoded bytes");
}

#[test]
fn reading_dev_zero_or_a_fifo_as_an_image_is_refused_not_drained() {
    let cfg = PreprocessConfig::square(48);
    let err = load_image(Path::new("/dev/zero"), &cfg).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("photo.png");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Opening a FIFO for reading blocks until a writer appears; give it one that writes
    // nothing, so the test checks the refusal rather than hanging on the open.
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || drop(std::fs::OpenOptions::new().write(true).open(fifo)))
    };
    let err = load_image(&fifo, &cfg).unwrap_err();
    writer.join().unwrap();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn ordinary_photos_still_pass_at_every_aspect_the_bounds_allow() {
    let cfg = PreprocessConfig::square(48);
    // Up to 4096 / 48 ≈ 85 : 1 survives the resize bound.
    for (w, h) in [(64, 64), (640, 480), (85, 1), (1, 85), (3000, 2000)] {
        let img = decode_image(&png(w, h), Path::new("ok.png"), &cfg).unwrap();
        let px = preprocess(&img, &cfg).unwrap();
        assert_eq!((px.height(), px.width()), (48, 48), "{w}x{h}");
    }
}

/// Random corruptions of a valid PNG and of a huge-claiming header: never a panic or an
/// abort, only a decoded image within bounds or an error (a CI-sized stand-in for
/// `fuzz/fuzz_targets/decode_image.rs`).
#[test]
fn corrupted_images_give_errors_or_bounded_images_never_a_crash() {
    let cfg = PreprocessConfig::square(48);
    let seeds = [png(37, 21), png_claiming(70_000, 3)];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..1500 {
        let mut bytes = seeds[round % 2].clone();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        if let Ok(img) = decode_image(&bytes, Path::new("fuzz.png"), &cfg) {
            assert!(u64::from(img.width()) * u64::from(img.height()) <= cfg.limits.max_pixels);
            let _ = preprocess(&img, &cfg);
        }
    }
}
