//! Fixtures: a tiny random LLaVA with the toy-world tokenizer written to a temp folder, and
//! toy-world photos of a subject, look-alikes and other scenes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use concept_format::Category;
use concepts_runtime::LlavaConfig;
use concepts_trainer::{PoolSource, Subject, TrainConfig};
use rand::SeedableRng;
use toy_world::{
    choose_subjects, encode_png, generic_scene, lookalike, photo_of, render, ImageSize,
};

/// The `config.json` of the tiny model over the toy-world vocabulary.
pub fn config_json() -> String {
    concepts_runtime::testing::tiny_config_json_with_vocab(toy_world::vocabulary().len(), 4)
}

/// Writes a tiny random model (seed `seed`) to `dir`; returns its config.
pub fn write_model(dir: &Path, seed: u64) -> LlavaConfig {
    let cfg =
        concepts_runtime::testing::write_random_checkpoint(dir, &config_json(), seed).unwrap();
    toy_world::write_tokenizer(&dir.join("tokenizer.json")).unwrap();
    cfg
}

/// A toy world on disk: photos of one subject, and a pool of look-alikes and other scenes.
pub struct World {
    pub root: tempfile::TempDir,
    pub model: PathBuf,
    pub photos: PathBuf,
    pub pool: PathBuf,
}

pub fn world(photos: usize, lookalikes: usize, others: usize) -> World {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    write_model(&model, 7);
    let subject = &choose_subjects(3, 1).unwrap()[0];
    let combo = *subject.combo();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let size = ImageSize::DEFAULT;
    let photo_dir = root.path().join("photos");
    std::fs::create_dir_all(&photo_dir).unwrap();
    for i in 0..photos {
        let img = render(&photo_of(&mut rng, combo, &[combo]), size);
        std::fs::write(photo_dir.join(format!("{i:02}.png")), encode_png(&img)).unwrap();
    }
    let pool = root.path().join("pool");
    std::fs::create_dir_all(pool.join("alike")).unwrap();
    std::fs::create_dir_all(pool.join("other")).unwrap();
    for i in 0..lookalikes {
        let (look, _) = lookalike(&mut rng, &combo, &[combo]);
        let img = render(&photo_of(&mut rng, look, &[combo]), size);
        std::fs::write(
            pool.join("alike").join(format!("{i:03}.png")),
            encode_png(&img),
        )
        .unwrap();
    }
    for i in 0..others {
        let img = render(&generic_scene(&mut rng, &[combo]), size);
        std::fs::write(
            pool.join("other").join(format!("{i:03}.png")),
            encode_png(&img),
        )
        .unwrap();
    }
    World {
        root,
        model,
        photos: photo_dir,
        pool,
    }
}

impl World {
    /// A small, fast configuration: k = 2, 2 questions per photo with short answers.
    pub fn config(&self, output: &str, epochs: u32) -> TrainConfig {
        let subject = Subject {
            name: "bo".into(),
            identifier: "<bo>".into(),
            display_name: "Bo".into(),
            category: Category::Object,
            user_facts: vec!["Bo is my lucky charm.".into()],
        };
        let mut cfg = TrainConfig::new(
            subject,
            self.photos.clone(),
            PoolSource::Dir(self.pool.clone()),
            self.root.path().join(output),
        );
        cfg.epochs = epochs;
        cfg.k = 2;
        cfg.learning_rate = 1e-2;
        cfg.batch_size = 4;
        cfg.seed = 5;
        cfg.hard_per_positive = Some(2);
        cfg.easy_negatives = 4;
        // One view per photo keeps the tests quick and still trains on crowded views.
        cfg.crowded_views = 1;
        cfg.conversation.questions_per_image = 2;
        cfg.conversation.max_answer_tokens = 6;
        cfg.cache_dir = Some(self.root.path().join("cache"));
        cfg
    }
}
