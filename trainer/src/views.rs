//! Crowded views: training photos shrunk into a spot of another scene.
//!
//! A user's handful of photos shows the subject large, in the middle, nearly always the
//! main object; trained on those alone, a concept learns "the main object is mine" and misses
//! its subject beside other objects of its size (two subjects in one photo, measured in
//! `docs/evaluation.md`). A crowded view shrinks a photo to 45–65 % of a pool scene's side
//! and pastes it at a random spot of that scene, so the subject stands among other objects at
//! a similar size; it is a positive. As many hard negatives get the same treatment and are
//! negatives, so that a pasted patch, its seam or its size carries no label: only what is in
//! the patch decides the answer.
//!
//! The views are drawn from the run's seed, so a resumed run rebuilds the same ones. They
//! join the recognition samples only: conversation data is generated from the photos.

use concepts_fs::sha256_hex;
use concepts_plugin_sdk::rng::SplitMix64;
use image::imageops::{self, FilterType};

use crate::images::LoadedImage;

/// Crowded views per training photo (and as many crowded hard negatives) by default.
pub const DEFAULT_CROWDED_VIEWS: u32 = 4;

/// Most crowded views per photo: each is a decoded image held for the whole run.
pub const MAX_CROWDED_VIEWS: u32 = 16;

/// The shrunk photo's side as a fraction of the scene's (a range, drawn per view).
const SCALE: (f64, f64) = (0.45, 0.65);

/// The crowded views of one run: `per_photo` of each positive, and as many of hard negatives
/// (taken in turn), each pasted into an easy negative drawn at random. Nothing when
/// `per_photo` is 0 or there is no easy negative to paste into; hard negatives are replaced by
/// easy ones when there are none.
pub fn crowded_views(
    positives: &[LoadedImage],
    hard_negatives: &[LoadedImage],
    easy_negatives: &[LoadedImage],
    per_photo: u32,
    seed: u64,
) -> (Vec<LoadedImage>, Vec<LoadedImage>) {
    if per_photo == 0 || easy_negatives.is_empty() || positives.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut rng = SplitMix64(seed ^ 0x00c0_ffee_c20d_4ded);
    let per_photo = per_photo as usize;
    let count = positives.len() * per_photo;
    let crowded_positives = views(
        count,
        |i| &positives[i / per_photo],
        easy_negatives,
        &mut rng,
    );
    let negatives = if hard_negatives.is_empty() {
        easy_negatives
    } else {
        hard_negatives
    };
    let crowded_negatives = views(
        count,
        |i| &negatives[i % negatives.len()],
        easy_negatives,
        &mut rng,
    );
    (crowded_positives, crowded_negatives)
}

/// `count` views, the `i`-th of `source(i)` in a scene drawn from `scenes`.
fn views<'a>(
    count: usize,
    source: impl Fn(usize) -> &'a LoadedImage,
    scenes: &[LoadedImage],
    rng: &mut SplitMix64,
) -> Vec<LoadedImage> {
    (0..count)
        .map(|i| {
            let scene = &scenes[rng.below(scenes.len() as u64) as usize];
            paste(source(i), scene, rng)
        })
        .collect()
}

/// `source` shrunk (aspect kept) to a drawn fraction of `scene`'s size and pasted at a
/// random spot of a copy of `scene`.
fn paste(source: &LoadedImage, scene: &LoadedImage, rng: &mut SplitMix64) -> LoadedImage {
    let (sw, sh) = scene.image.dimensions();
    let (w, h) = source.image.dimensions();
    let scale = SCALE.0 + (SCALE.1 - SCALE.0) * unit(rng);
    let fit = scale * f64::min(f64::from(sw) / f64::from(w), f64::from(sh) / f64::from(h));
    let (pw, ph) = (
        ((f64::from(w) * fit).round() as u32).clamp(1, sw),
        ((f64::from(h) * fit).round() as u32).clamp(1, sh),
    );
    let x = rng.below(u64::from(sw - pw) + 1) as u32;
    let y = rng.below(u64::from(sh - ph) + 1) as u32;
    let patch = imageops::resize(&source.image, pw, ph, FilterType::Triangle);
    let mut image = scene.image.clone();
    imageops::replace(&mut image, &patch, i64::from(x), i64::from(y));
    LoadedImage {
        path: source.path.clone(),
        // What the view is made of, so a job key that hashes the samples sees every choice.
        sha256: sha256_hex(
            format!(
                "crowded view: {} in {} at {x},{y} {pw}x{ph}",
                source.sha256, scene.sha256
            )
            .as_bytes(),
        ),
        image,
    }
}

/// A uniform draw in [0, 1).
fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};
    use std::path::PathBuf;

    fn flat(name: &str, size: (u32, u32), colour: [u8; 3]) -> LoadedImage {
        LoadedImage {
            path: PathBuf::from(name),
            sha256: name.to_string(),
            image: RgbImage::from_pixel(size.0, size.1, Rgb(colour)),
        }
    }

    fn count(image: &RgbImage, colour: [u8; 3]) -> usize {
        image.pixels().filter(|p| p.0 == colour).count()
    }

    #[test]
    fn each_view_is_a_shrunk_source_inside_a_scene() {
        let red = [200, 0, 0];
        let (blue, green) = ([0, 0, 200], [0, 200, 0]);
        let positives = vec![flat("pos", (60, 40), red)];
        let hard = vec![flat("hard", (48, 48), green)];
        let easy = vec![flat("scene", (100, 80), blue)];
        let (pos, neg) = crowded_views(&positives, &hard, &easy, 3, 7);
        assert_eq!((pos.len(), neg.len()), (3, 3));
        for (view, colour) in pos
            .iter()
            .map(|v| (v, red))
            .chain(neg.iter().map(|v| (v, green)))
        {
            assert_eq!(view.image.dimensions(), (100, 80), "the scene's size");
            let pasted = count(&view.image, colour) as f64;
            let scene = count(&view.image, blue) as f64;
            let area = 100.0 * 80.0;
            assert_eq!(pasted + scene, area, "only the two colours");
            // A 45-65 % fit of a 60x40 photo into 100x80: 45x30 to 65x43 pixels.
            assert!(
                (0.15..=0.37).contains(&(pasted / area)),
                "pasted area {pasted} of {area}"
            );
        }
        let keys: std::collections::HashSet<_> = pos.iter().map(|v| &v.sha256).collect();
        assert_eq!(keys.len(), 3, "views differ and say so in their keys");
    }

    #[test]
    fn views_follow_the_seed_and_need_a_scene() {
        let positives = vec![
            flat("a", (48, 48), [1, 2, 3]),
            flat("b", (48, 48), [4, 5, 6]),
        ];
        let easy = vec![
            flat("e1", (48, 48), [9, 9, 9]),
            flat("e2", (64, 48), [8, 8, 8]),
        ];
        let run = |seed| crowded_views(&positives, &[], &easy, 2, seed);
        let (a, b) = (run(1), run(1));
        assert_eq!(
            a.0.iter().map(|v| &v.sha256).collect::<Vec<_>>(),
            b.0.iter().map(|v| &v.sha256).collect::<Vec<_>>()
        );
        assert_eq!(
            (a.0.len(), a.1.len()),
            (4, 4),
            "easy negatives stand in for hard ones"
        );
        assert_ne!(
            run(2).0.iter().map(|v| &v.sha256).collect::<Vec<_>>(),
            a.0.iter().map(|v| &v.sha256).collect::<Vec<_>>()
        );
        assert_eq!(crowded_views(&positives, &[], &[], 2, 1).0.len(), 0);
        assert_eq!(crowded_views(&positives, &[], &easy, 0, 1).0.len(), 0);
    }
}
