//! Fuzzes the one bounded image path: `decode_image` then `preprocess`, with the toy model's
//! pipeline and with pad-to-square.
//!
//! Seed with `fuzz/seed.sh` (the parity fixtures' PNG and JPEG). Any input must give an
//! error or an image within the limits, and preprocessing it must stay within them: no
//! panic, no abort, no allocation beyond the documented bound (run with `-rss_limit_mb=1024`
//! and `-malloc_limit_mb=700`, above `ImageLimits::DEFAULT`'s bound of about 0.6 GB).

#![no_main]

use std::path::Path;

use concepts_runtime::preprocess::{decode_image, preprocess, PreprocessConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for config in [
        PreprocessConfig::square(48),
        PreprocessConfig::llava_1_5().with_pad_to_square(true),
    ] {
        if let Ok(img) = decode_image(data, Path::new("fuzz"), &config) {
            let pixels = u64::from(img.width()) * u64::from(img.height());
            assert!(pixels <= config.limits.max_pixels);
            let _ = preprocess(&img, &config);
        }
    }
});
