//! Stage 1: pool embeddings, their cache, precomputed embedding files and the miner.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use concepts_plugin_api::MiningParams;
use concepts_runtime::preprocess::PreprocessConfig;
use concepts_runtime::session::Engine;
use concepts_trainer::mining::{self, Embedder, EmbeddingCache, PoolSource};
use concepts_trainer::{images, PluginSet, Silent};

#[test]
fn the_second_run_on_a_pool_hits_the_cache() {
    let w = common::world(3, 4, 5);
    let mut session = Engine::load(&w.model, &Device::Cpu, DType::F32).unwrap();
    let fp = session.fingerprint().unwrap().clone();
    let key = mining::model_key(session.model(), &fp, session.preprocess_config()).unwrap();
    let cache_dir = w.root.path().join("cache");
    let embedder = Embedder {
        model: session.model(),
        preprocess: session.preprocess_config(),
        model_key: &key,
        min_side: 8,
    };
    let source = PoolSource::Dir(w.pool.clone());
    let cancel = AtomicBool::new(false);

    let mut cache = EmbeddingCache::open(Some(&cache_dir), &key, 12);
    let (first, report) =
        mining::embed_pool(&embedder, &source, &mut cache, &[], &mut Silent, &cancel).unwrap();
    assert_eq!(
        (report.listed, report.embedded, report.cache_hits),
        (9, 9, 0)
    );
    assert!(cache.path().unwrap().exists());

    let mut cache = EmbeddingCache::open(Some(&cache_dir), &key, 12);
    let (second, report) =
        mining::embed_pool(&embedder, &source, &mut cache, &[], &mut Silent, &cancel).unwrap();
    assert_eq!((report.embedded, report.cache_hits), (0, 9));
    assert_eq!(first.embeddings, second.embeddings);
    assert_eq!(first.entries, second.entries);

    // A new file is embedded, the rest still come from the cache.
    std::fs::copy(
        w.photos.join("00.png"),
        w.pool.join("copy-of-a-positive.png"),
    )
    .unwrap();
    let positive =
        images::load_checked(&w.photos.join("00.png"), &PreprocessConfig::square(48), 8).unwrap();
    let mut cache = EmbeddingCache::open(Some(&cache_dir), &key, 12);
    let (_, report) = mining::embed_pool(
        &embedder,
        &source,
        &mut cache,
        std::slice::from_ref(&positive.sha256),
        &mut Silent,
        &cancel,
    )
    .unwrap();
    assert_eq!((report.embedded, report.cache_hits), (0, 9));
    assert_eq!(
        report.skipped.len(),
        1,
        "a copy of a positive is never a negative"
    );

    // Another model (another key) does not reuse these rows.
    let mut cache = EmbeddingCache::open(Some(&cache_dir), "another-model", 12);
    let (_, report) =
        mining::embed_pool(&embedder, &source, &mut cache, &[], &mut Silent, &cancel).unwrap();
    assert_eq!(report.cache_hits, 0);
}

#[test]
fn precomputed_embedding_files_round_trip_and_check_the_model() {
    let w = common::world(3, 3, 3);
    let mut session = Engine::load(&w.model, &Device::Cpu, DType::F32).unwrap();
    let fp = session.fingerprint().unwrap().clone();
    let key = mining::model_key(session.model(), &fp, session.preprocess_config()).unwrap();
    let embedder = Embedder {
        model: session.model(),
        preprocess: session.preprocess_config(),
        model_key: &key,
        min_side: 8,
    };
    let cancel = AtomicBool::new(false);
    let file = w.root.path().join("pool.safetensors");
    let mut cache = EmbeddingCache::open(None, &key, 12);
    mining::write_pool_file(&embedder, &w.pool, &file, &mut cache, &mut Silent, &cancel).unwrap();
    let mut cache = EmbeddingCache::open(None, &key, 12);
    let (from_dir, _) = mining::embed_pool(
        &embedder,
        &PoolSource::Dir(w.pool.clone()),
        &mut cache,
        &[],
        &mut Silent,
        &cancel,
    )
    .unwrap();
    let (from_file, report) = mining::embed_pool(
        &embedder,
        &PoolSource::EmbeddingFile(file.clone()),
        &mut cache,
        &[],
        &mut Silent,
        &cancel,
    )
    .unwrap();
    assert_eq!(report.cache_hits, 6);
    assert_eq!(from_file.embeddings, from_dir.embeddings);
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap();
    assert_eq!(
        from_file
            .entries
            .iter()
            .map(|e| canon(&e.path))
            .collect::<Vec<_>>(),
        from_dir
            .entries
            .iter()
            .map(|e| canon(&e.path))
            .collect::<Vec<_>>()
    );

    let other = Embedder {
        model_key: "another-model",
        ..embedder
    };
    let err = mining::embed_pool(
        &other,
        &PoolSource::EmbeddingFile(file),
        &mut cache,
        &[],
        &mut Silent,
        &cancel,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("computed with another base model"),
        "{err}"
    );
}

#[test]
fn the_miner_prefers_look_alikes_and_never_returns_a_positive() {
    let w = common::world(3, 6, 12);
    let session = Engine::load(&w.model, &Device::Cpu, DType::F32).unwrap();
    let positives: Vec<_> = images::list_images(&w.photos, false)
        .unwrap()
        .iter()
        .map(|p| {
            images::load_checked(p, &PreprocessConfig::square(48), 8)
                .unwrap()
                .image
        })
        .collect();
    let rows =
        mining::embed_images(session.model(), session.preprocess_config(), &positives).unwrap();
    let pos = concepts_plugin_host::EmbeddingMatrix::new(12, rows.concat()).unwrap();
    let embedder = Embedder {
        model: session.model(),
        preprocess: session.preprocess_config(),
        model_key: "k",
        min_side: 8,
    };
    let mut cache = EmbeddingCache::open(None, "k", 12);
    let (pool, _) = mining::embed_pool(
        &embedder,
        &PoolSource::Dir(w.pool.clone()),
        &mut cache,
        &[],
        &mut Silent,
        &AtomicBool::new(false),
    )
    .unwrap();
    let mut stages = PluginSet::builtin();
    let params = MiningParams {
        hard_per_positive: 2,
        easy_count: 5,
        seed: 1,
    };
    let mined = mining::mine(stages.miner.as_mut(), &pos, &pool, params).unwrap();
    assert!(!mined.hard.is_empty() && mined.hard.len() <= 6);
    assert_eq!(mined.easy.len(), 5);
    let mut all: Vec<usize> = mined.hard.iter().chain(&mined.easy).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), mined.hard.len() + 5, "negatives are distinct");
    // The hard negatives are exactly the union of each positive's 2 nearest pool images
    // that are not near-duplicates of any positive (the default miner's documented rule; the
    // tiny random tower maps some pool photos within 0.98 of a positive).
    let nearest = concepts_plugin_host::matrix::max_similarity(&pos, &pool.embeddings).unwrap();
    let near_duplicate = |row: u32| nearest[row as usize] >= concepts_default_miner::NEAR_DUPLICATE;
    let mut want: Vec<usize> =
        concepts_plugin_host::matrix::top_k(&pos, &pool.embeddings, pool.embeddings.rows())
            .unwrap()
            .into_iter()
            .flat_map(|list| {
                list.into_iter()
                    .filter(|s| !near_duplicate(s.row))
                    .take(2)
                    .map(|s| s.row as usize)
            })
            .collect();
    want.sort_unstable();
    want.dedup();
    let mut hard = mined.hard.clone();
    hard.sort_unstable();
    assert_eq!(hard, want);
    assert_eq!(
        mined,
        mining::mine(stages.miner.as_mut(), &pos, &pool, params).unwrap()
    );
}
