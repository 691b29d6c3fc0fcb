//! The cost of the facade on a recognition call: `api::Runtime::recognise_all` called from
//! async Rust against `Host::recognise` (what the Python package and the C ABI call), same
//! photo, same concept, same model, alternating, median of each.
//!
//! `cargo bench -p concepts-embed --bench recognise_overhead -- [DIR] [ROUNDS]` writes its
//! fixture (the embedded toy model's registry with one concept `bo`, and `photo.png`) into DIR
//! (default: a temp folder) so that `tools/bench/bindings.sh` can time the Python package on
//! the very same call; see docs/bindings.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use concepts_embed::{Host, Image};
use concepts_runtime::api::{ImageInput, Selection};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; everything else positional is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(200);
    std::fs::create_dir_all(&dir).unwrap();

    let model = concepts_runtime::default_model::checkout_model_dir();
    let home = dir.join("home");
    let fp = concepts_runtime::fingerprint(&model).unwrap();
    let package =
        concepts_runtime::testing::random_concept_package("bo", &fp, 16, 7, 0.05).unwrap();
    let package_path = dir.join("bo.ycpt");
    std::fs::write(&package_path, package.to_bytes()).unwrap();
    let data = dir.join("toy");
    if !data.exists() {
        concepts_embed::toy_dataset(&data, 1, 1).unwrap();
    }
    let subject = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("test").is_dir())
        .unwrap();
    let photo = dir.join("photo.png");
    std::fs::copy(
        subject
            .join("test")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
        &photo,
    )
    .unwrap();

    let host = Host::open(Some(&model), Some(&home)).unwrap();
    host.install(&package_path, true).unwrap();
    // The same loaded model for both paths: the comparison is of the calls, not of two copies
    // of the weights competing for the cache.
    let runtime = host.runtime().clone();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let names = vec!["bo".to_string()];

    let direct = || {
        let t = Instant::now();
        let scores = tokio
            .block_on(runtime.recognise_all(
                ImageInput::File(photo.clone()),
                Selection::Named(names.clone()),
            ))
            .unwrap();
        assert_eq!(scores.len(), 1);
        t.elapsed()
    };
    let facade = || {
        let t = Instant::now();
        let scores = host
            .recognise(Image::Path(photo.clone()), &names, &mut || false)
            .unwrap();
        assert_eq!(scores.len(), 1);
        t.elapsed()
    };
    // Alternating blocks of 20 calls, so that drift in the machine's speed hits both alike.
    for _ in 0..10 {
        direct();
        facade();
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds.div_ceil(20) {
        a.extend((0..20).map(|_| direct()));
        b.extend((0..20).map(|_| facade()));
    }
    let (a, b) = (median(a), median(b));
    println!("fixture: {}", dir.display());
    println!(
        "rust api::Runtime::recognise_all  median {:.3} ms",
        a.as_secs_f64() * 1e3
    );
    println!(
        "rust Host::recognise (C ABI path) median {:.3} ms",
        b.as_secs_f64() * 1e3
    );
}
