//! Same seed, same bytes; different seed, different bytes; and golden hashes that catch
//! any change in sampling or rasterising (including one that only shows on another machine).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use toy_world::{build_tokenizer, encode_png, sample, ImageSize, TaskMix};

fn fnv1a(bytes: &[u8], h: u64) -> u64 {
    toy_world::fnv1a64(h, bytes)
}

/// FNV-1a over the text and raw pixels of the first `n` samples for `seed` at `px`.
fn fingerprint(seed: u64, n: usize, px: u32) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let size = ImageSize::new(px).unwrap();
    let mut h = 0xcbf2_9ce4_8422_2325;
    for _ in 0..n {
        let s = sample(&mut rng, &TaskMix::balanced(), size);
        h = fnv1a(s.question.as_bytes(), h);
        h = fnv1a(s.answer.as_bytes(), h);
        if let Some(img) = &s.image {
            h = fnv1a(img.as_raw(), h);
        }
    }
    h
}

#[test]
fn same_seed_gives_identical_samples_and_pngs() {
    let draw = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..30)
            .map(|_| {
                let s = sample(&mut rng, &TaskMix::balanced(), ImageSize::DEFAULT);
                (s.question, s.answer, s.image.as_ref().map(encode_png))
            })
            .collect::<Vec<_>>()
    };
    let a = draw(1);
    assert_eq!(a, draw(1));
    let b = draw(2);
    assert_ne!(a, b);
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(differing > 25, "only {differing} of 30 samples differ");
}

#[test]
fn golden_fingerprints() {
    // Update these only for an intended change to sampling or rendering, and say so in the
    // change log: base models pretrained on the old stream see different data. Last changed:
    // session 11, crowded name recognition joined the balanced mix.
    assert_eq!(fingerprint(1, 40, 48), GOLDEN_48);
    assert_eq!(fingerprint(1, 10, 64), GOLDEN_64);
}

const GOLDEN_48: u64 = 5_468_006_827_837_173_563;
const GOLDEN_64: u64 = 12_588_192_389_495_194_615;

#[test]
fn tokenizer_json_is_pinned() {
    let json = build_tokenizer().to_string(false).unwrap();
    assert_eq!(
        fnv1a(json.as_bytes(), 0xcbf2_9ce4_8422_2325),
        GOLDEN_TOKENIZER
    );
}

const GOLDEN_TOKENIZER: u64 = 6_697_915_780_404_121_501;
