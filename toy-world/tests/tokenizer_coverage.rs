//! Every text a generator emits tokenizes without `<unk>`, and answers decode back exactly.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use toy_world::text::{NAMES, SKS};
use toy_world::{
    build_tokenizer, choose_subjects, intrinsic_choice, photo_of, sample, visual_choice, Attribute,
    ImageSize, TaskKind, TaskMix,
};

/// Asserts `text` has no unknown token; with `roundtrip`, also that decoding gives it back.
fn check(tok: &tokenizers::Tokenizer, text: &str, roundtrip: bool) {
    let enc = tok.encode(text, false).unwrap();
    let unknown: Vec<&String> = enc
        .get_tokens()
        .iter()
        .zip(enc.get_ids())
        .filter(|(_, &id)| id == 0)
        .map(|(t, _)| t)
        .collect();
    assert!(unknown.is_empty(), "unknown {unknown:?} in {text:?}");
    if roundtrip {
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), text);
    }
}

#[test]
fn every_task_output_is_covered() {
    let tok = build_tokenizer();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for kind in TaskKind::ALL {
        let mix = TaskMix::only(kind);
        for _ in 0..250 {
            let s = sample(&mut rng, &mix, ImageSize::DEFAULT);
            check(&tok, &s.question, false);
            check(&tok, &s.answer, true);
        }
    }
}

#[test]
fn dataset_questions_are_covered_once_the_marker_is_replaced() {
    let tok = build_tokenizer();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let subjects = choose_subjects(4, 20).unwrap();
    let avoid: Vec<_> = subjects.iter().map(|s| *s.combo()).collect();
    for (i, s) in subjects.iter().enumerate() {
        let name = NAMES[i];
        for &attr in Attribute::ALL {
            if let Some(c) = intrinsic_choice(&mut rng, SKS, s.combo(), attr) {
                check(&tok, &c.prompt.replace(SKS, name), false);
            }
        }
        for _ in 0..10 {
            let scene = photo_of(&mut rng, *s.combo(), &avoid);
            if let Some(c) = visual_choice(&mut rng, SKS, &scene, 0) {
                check(&tok, &c.prompt.replace(SKS, name), false);
            }
        }
        check(&tok, &s.description(), true);
        check(&tok, &toy_world::text::capitalise(&s.description()), true);
    }
}
