//! Bad input is refused with a clear error before any long work starts.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use concepts_trainer::{train, PluginSet, PoolSource, Silent, TrainConfig, TrainError};

fn check(cfg: &TrainConfig, model: &Path) -> TrainError {
    let mut stages = PluginSet::builtin();
    let err = train(
        model,
        &Device::Cpu,
        DType::F32,
        cfg,
        &mut stages,
        &mut Silent,
        &AtomicBool::new(false),
    )
    .unwrap_err();
    // Nothing long started: the pool was never embedded and nothing was written.
    assert!(!cfg.cache_dir.as_ref().unwrap().exists(), "{err}");
    assert!(!cfg.output.exists(), "{err}");
    err
}

#[test]
fn too_few_photos() {
    let w = common::world(2, 2, 2);
    let err = check(&w.config("a.ycpt", 1), &w.model);
    assert!(
        matches!(
            err,
            TrainError::TooFewPositives {
                found: 2,
                min: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("at least 3 are needed"), "{err}");
}

#[test]
fn unreadable_and_tiny_photos() {
    let w = common::world(3, 2, 2);
    std::fs::write(w.photos.join("99-broken.png"), b"not a png").unwrap();
    let err = check(&w.config("a.ycpt", 1), &w.model);
    assert!(
        matches!(&err, TrainError::Image { path, .. } if path.ends_with("99-broken.png")),
        "{err}"
    );
    assert!(err.to_string().contains("cannot be decoded"), "{err}");

    std::fs::remove_file(w.photos.join("99-broken.png")).unwrap();
    let tiny = image::RgbImage::from_pixel(6, 40, image::Rgb([1, 2, 3]));
    tiny.save(w.photos.join("98-tiny.png")).unwrap();
    let err = check(&w.config("a.ycpt", 1), &w.model);
    assert!(
        err.to_string().contains("is 6x40 pixels, too small"),
        "{err}"
    );
}

#[test]
fn empty_pool() {
    let w = common::world(3, 0, 0);
    std::fs::write(w.pool.join("notes.txt"), "no images here").unwrap();
    let err = check(&w.config("a.ycpt", 1), &w.model);
    assert!(matches!(err, TrainError::EmptyPool { .. }), "{err}");
    assert!(err.to_string().contains("holds no usable image"), "{err}");

    let mut cfg = w.config("a.ycpt", 1);
    cfg.negatives = PoolSource::EmbeddingFile(w.root.path().join("missing.safetensors"));
    assert!(check(&cfg, &w.model).to_string().contains("does not exist"));
}

#[test]
fn identifier_clashes() {
    let w = common::world(3, 2, 2);
    let mut cfg = w.config("a.ycpt", 1);
    cfg.subject.identifier = "<s>".into();
    let err = check(&cfg, &w.model);
    assert!(matches!(&err, TrainError::Identifier { .. }), "{err}");
    assert!(
        err.to_string().contains("clashes with the base vocabulary"),
        "{err}"
    );

    let mut cfg = w.config("a.ycpt", 1);
    cfg.installed = vec!["mam".into(), "<bo>".into()];
    let err = check(&cfg, &w.model);
    assert!(
        err.to_string()
            .contains("an installed concept is already called `<bo>`"),
        "{err}"
    );

    let mut cfg = w.config("a.ycpt", 1);
    cfg.subject.identifier = "bo".into();
    assert!(matches!(
        check(&cfg, &w.model),
        TrainError::Identifier { .. }
    ));
}

#[test]
fn resume_without_state_and_bad_options() {
    let w = common::world(3, 2, 2);
    let mut cfg = w.config("a.ycpt", 1);
    cfg.resume = true;
    let err = check(&cfg, &w.model);
    assert!(matches!(err, TrainError::Resume { .. }), "{err}");

    let mut cfg = w.config("a.ycpt", 1);
    cfg.epochs = 0;
    assert!(check(&cfg, &w.model)
        .to_string()
        .contains("epochs must be at least 1"));
    let mut cfg = w.config("a.ycpt", 1);
    cfg.crowded_views = 17;
    assert!(check(&cfg, &w.model)
        .to_string()
        .contains("17 crowded views per photo, at most 16"));
    let mut cfg = w.config("a.ycpt", 1);
    cfg.subject.name = "Bo".into();
    assert!(check(&cfg, &w.model)
        .to_string()
        .contains("concept name `Bo`"));
}
