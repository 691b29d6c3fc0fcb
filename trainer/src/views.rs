//! Crowded views: training photos, or their main objects cut out, shrunk into a spot of another
//! scene.
//!
//! A user's handful of photos shows the subject large, in the middle, nearly always the
//! main object; trained on those alone, a concept learns "the main object is mine" and misses
//! its subject beside other objects of its size (two subjects in one photo, measured in
//! `docs/evaluation.md`). A crowded view puts the subject among other objects at a similar
//! size: the photo's main object is cut from its backdrop ([`crate::cutout`]), shrunk as the
//! whole photo would be to 45–65 % of a pool scene's side, and blended into that scene where
//! it hides the fewest of the scene's own objects, so the view looks like one scene with
//! several objects (the way a photo of two subjects does) rather than a picture in a picture;
//! a photo without a clear main object is pasted whole instead. It is a positive. As many hard
//! negatives get the same treatment and are negatives, so that pasting, its outline or its size
//! carries no label: only what was pasted decides the answer.
//!
//! The views are drawn from the run's seed, so a resumed run rebuilds the same ones. They
//! join the recognition samples only: conversation data is generated from the photos.

use concepts_fs::sha256_hex;
use concepts_plugin_sdk::rng::SplitMix64;
use image::imageops::{self, FilterType};
use image::{RgbImage, Rgba, Rgba32FImage};
use serde::{Deserialize, Serialize};

use crate::cutout::{self, CutOut};
use crate::images::LoadedImage;

/// Crowded views per training photo (and as many crowded hard negatives) by default.
pub const DEFAULT_CROWDED_VIEWS: u32 = 4;

/// Most crowded views per photo: each is a decoded image held for the whole run.
pub const MAX_CROWDED_VIEWS: u32 = 16;

/// What a crowded view pastes into its scene.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrowdedStyle {
    /// The whole photo, backdrop included: a picture in the picture.
    #[default]
    Photo,
    /// The photo's main object cut from its backdrop ([`crate::cutout`]), so that the view looks
    /// like one scene of several objects; a photo without a clear main object is pasted whole.
    /// Measured against `Photo` in `docs/evaluation.md` (session 33): subjects found beside
    /// others far more often, look-alikes and twins rejected less often.
    Object,
}

/// `photo` or `object`, as on the command line.
impl std::str::FromStr for CrowdedStyle {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "photo" => Ok(CrowdedStyle::Photo),
            "object" => Ok(CrowdedStyle::Object),
            other => Err(format!(
                "crowded view style `{other}`: expected `photo` or `object`"
            )),
        }
    }
}

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
    style: CrowdedStyle,
    seed: u64,
) -> (Vec<LoadedImage>, Vec<LoadedImage>) {
    if per_photo == 0 || easy_negatives.is_empty() || positives.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut rng = SplitMix64(seed ^ 0x00c0_ffee_c20d_4ded);
    let per_photo = per_photo as usize;
    let count = positives.len() * per_photo;
    let mut view = |source: &LoadedImage| {
        let scene = &easy_negatives[rng.below(easy_negatives.len() as u64) as usize];
        paste(source, scene, style, &mut rng)
    };
    let crowded_positives: Vec<_> = (0..count)
        .map(|i| view(&positives[i / per_photo]))
        .collect();
    let negatives = if hard_negatives.is_empty() {
        easy_negatives
    } else {
        hard_negatives
    };
    let crowded_negatives = (0..count)
        .map(|i| view(&negatives[i % negatives.len()]))
        .collect();
    (crowded_positives, crowded_negatives)
}

/// `source` shrunk by a drawn fraction of the largest fit into `scene` and put at a random
/// spot of a copy of `scene`: in [`CrowdedStyle::Object`] its main object alone where one can
/// be cut out ([`cutout::main_object`]), at the one of [`SPOTS`] random spots where it hides
/// the fewest of the scene's own objects; otherwise the whole photo, aspect kept.
fn paste(
    source: &LoadedImage,
    scene: &LoadedImage,
    style: CrowdedStyle,
    rng: &mut SplitMix64,
) -> LoadedImage {
    let (sw, sh) = scene.image.dimensions();
    let (w, h) = source.image.dimensions();
    let scale = SCALE.0 + (SCALE.1 - SCALE.0) * unit(rng);
    let fit = scale * f64::min(f64::from(sw) / f64::from(w), f64::from(sh) / f64::from(h));
    let cut = match style {
        CrowdedStyle::Photo => None,
        CrowdedStyle::Object => cutout::main_object(&source.image),
    };
    let ((image, at), what) = match cut {
        Some(cut) => (place_cut_out(&cut, fit, scene, rng), "the object of "),
        None => (paste_photo(&source.image, fit, scene, rng), ""),
    };
    LoadedImage {
        path: source.path.clone(),
        // What the view is made of, so a job key that hashes the samples sees every choice.
        sha256: sha256_hex(
            format!(
                "crowded view: {what}{} in {} at {at}",
                source.sha256, scene.sha256
            )
            .as_bytes(),
        ),
        image,
    }
}

/// `source` shrunk by `fit` and pasted whole at a random spot of a copy of `scene`; with
/// where it went (`x,y wxh`).
fn paste_photo(
    source: &RgbImage,
    fit: f64,
    scene: &LoadedImage,
    rng: &mut SplitMix64,
) -> (RgbImage, String) {
    let (sw, sh) = scene.image.dimensions();
    let (pw, ph) = shrunk(source.dimensions(), fit, (sw, sh));
    let (x, y) = random_spot(rng, (sw, sh), (pw, ph));
    let patch = imageops::resize(source, pw, ph, FilterType::Triangle);
    let mut image = scene.image.clone();
    imageops::replace(&mut image, &patch, i64::from(x), i64::from(y));
    (image, format!("{x},{y} {pw}x{ph}"))
}

/// Random spots tried for a cut-out object; it goes where it hides the fewest foreground
/// pixels of the scene.
const SPOTS: usize = 8;

/// `cut` shrunk by `fit` and blended through its mask into a copy of `scene`; with where it
/// went (`x,y wxh`).
fn place_cut_out(
    cut: &CutOut,
    fit: f64,
    scene: &LoadedImage,
    rng: &mut SplitMix64,
) -> (RgbImage, String) {
    let (sw, sh) = scene.image.dimensions();
    let (pw, ph) = shrunk(cut.pixels.dimensions(), fit, (sw, sh));
    // Shrunk premultiplied by the mask, so that no backdrop pixel of the source's box bleeds
    // into the object's outline.
    let (cw, ch) = cut.pixels.dimensions();
    let premultiplied = Rgba32FImage::from_fn(cw, ch, |x, y| {
        let a = f32::from(cut.mask.get_pixel(x, y).0[0]) / 255.0;
        let [r, g, b] = cut
            .pixels
            .get_pixel(x, y)
            .0
            .map(|v| a * f32::from(v) / 255.0);
        Rgba([r, g, b, a])
    });
    let patch = imageops::resize(&premultiplied, pw, ph, FilterType::Triangle);
    let scene_bg = cutout::background(&scene.image);
    let hidden = |&(x, y): &(u32, u32)| {
        patch
            .enumerate_pixels()
            .filter(|(px, py, p)| p.0[3] > 0.0 && !scene_bg[((y + py) * sw + x + px) as usize])
            .count()
    };
    let spots: Vec<(u32, u32)> = (0..SPOTS)
        .map(|_| random_spot(rng, (sw, sh), (pw, ph)))
        .collect();
    let (x, y) = *spots
        .iter()
        .min_by_key(|&spot| hidden(spot))
        .expect("SPOTS > 0");
    let mut image = scene.image.clone();
    for (px, py, p) in patch.enumerate_pixels() {
        let a = p.0[3].clamp(0.0, 1.0);
        if a == 0.0 {
            continue;
        }
        let dst = image.get_pixel_mut(x + px, y + py);
        for c in 0..3 {
            let v = 255.0 * p.0[c] + (1.0 - a) * f32::from(dst.0[c]);
            dst.0[c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    (image, format!("{x},{y} {pw}x{ph}"))
}

/// The top-left corner of a `w`×`h` patch drawn uniformly inside a `sw`×`sh` scene.
fn random_spot(rng: &mut SplitMix64, (sw, sh): (u32, u32), (w, h): (u32, u32)) -> (u32, u32) {
    let x = rng.below(u64::from(sw - w) + 1) as u32;
    let y = rng.below(u64::from(sh - h) + 1) as u32;
    (x, y)
}

/// `(w, h)` scaled by `fit`, at least a pixel and at most `bound`.
fn shrunk((w, h): (u32, u32), fit: f64, bound: (u32, u32)) -> (u32, u32) {
    (
        ((f64::from(w) * fit).round() as u32).clamp(1, bound.0),
        ((f64::from(h) * fit).round() as u32).clamp(1, bound.1),
    )
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
        let (pos, neg) = crowded_views(&positives, &hard, &easy, 3, CrowdedStyle::Photo, 7);
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
    fn a_photo_with_a_clear_main_object_gives_the_object_alone() {
        // A red disc on a green gradient, pasted into flat blue scenes.
        let disc = RgbImage::from_fn(48, 48, |x, y| {
            if (f64::from(x) - 22.0).hypot(f64::from(y) - 25.0) <= 10.0 {
                Rgb([220, 30, 30])
            } else {
                Rgb([90 + (x * 2) as u8, 140, 90])
            }
        });
        let positives = vec![LoadedImage {
            path: PathBuf::from("disc"),
            sha256: "disc".into(),
            image: disc,
        }];
        let blue = [0, 0, 200];
        let easy = vec![flat("scene", (48, 48), blue)];
        let (pos, _) = crowded_views(&positives, &[], &easy, 6, CrowdedStyle::Object, 3);
        for view in &pos {
            // Only the disc's red, the scene's blue and blends of the two at the outline: no
            // pixel of the gradient the disc was cut from.
            assert!(
                view.image.pixels().all(|p| p.0[1] <= 30),
                "backdrop pasted too"
            );
            let red = view.image.pixels().filter(|p| p.0[0] > 110).count() as f64;
            // The disc (314 px) shrunk by 0.45-0.65 in each direction: 64-133 px.
            assert!((50.0..=150.0).contains(&red), "{red} red pixels");
        }
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
        let run = |seed| crowded_views(&positives, &[], &easy, 2, CrowdedStyle::Object, seed);
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
        assert_eq!(
            crowded_views(&positives, &[], &[], 2, CrowdedStyle::Photo, 1)
                .0
                .len(),
            0
        );
        assert_eq!(
            crowded_views(&positives, &[], &easy, 0, CrowdedStyle::Photo, 1)
                .0
                .len(),
            0
        );
    }
}
