//! Plugin overhead: loading, instantiation and per-call cost of the default miner and linker as wasm
//! components, next to the same Rust logic called in-process (the built-ins) and through the native
//! C ABI.
//!
//! Run with `cargo bench -p concepts-plugin-host --bench overhead` (needs the wasm32-wasip2 target;
//! the plugins are built from source into the bench's temporary folder). Prints a table; the numbers
//! in `spec/plugins/README.md` come from it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use concepts_plugin_host::api::{ConceptMetadata, MiningParams, Role};
use concepts_plugin_host::{
    builtin, EmbeddingMatrix, HostConfig, ManifestLimits, ManifestSpec, PluginHost, PluginKind,
};

fn cargo_build(args: &[&str], target_dir: &Path) {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env_remove("CARGO_TARGET_DIR")
        .args(["build", "--release", "--locked"])
        .args(args)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("running cargo");
    assert!(status.success(), "building {args:?}");
}

fn package(root: &Path, id: &str, role: Role, kind: PluginKind, file: &Path) -> PathBuf {
    let bytes = std::fs::read(file).unwrap();
    ManifestSpec {
        id,
        version: "0.1.0",
        role,
        kind,
        file: "plugin.bin",
        bytes: &bytes,
        limits: ManifestLimits::default(),
        capabilities: &[],
    }
    .write_package(&root.join(id))
    .unwrap()
}

/// Median of `runs` timings of `f`, after one warm-up call.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn data(rows: usize, dim: usize, seed: u64) -> EmbeddingMatrix {
    let mut x = seed;
    let values = (0..rows * dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    EmbeddingMatrix::new(dim, values).unwrap()
}

fn main() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let wasm_dir = tmp.join("bench-guests");
    cargo_build(
        &["--target", "wasm32-wasip2", "-p", "concepts-default-miner"],
        &wasm_dir,
    );
    cargo_build(
        &["--target", "wasm32-wasip2", "-p", "concepts-default-linker"],
        &wasm_dir,
    );
    let native_dir = tmp.join("bench-native");
    cargo_build(
        &[
            "-p",
            "concepts-default-miner",
            "--features",
            "concepts-plugin-sdk/native",
        ],
        &native_dir,
    );
    let wasm = |name: &str| wasm_dir.join(format!("wasm32-wasip2/release/{name}.wasm"));
    let lib = native_dir.join(format!(
        "release/{}concepts_default_miner{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));

    let root = tempfile::tempdir().unwrap();
    let miner_pkg = package(
        root.path(),
        "miner",
        Role::Miner,
        PluginKind::Wasm,
        &wasm("concepts_default_miner"),
    );
    let linker_pkg = package(
        root.path(),
        "linker",
        Role::Linker,
        PluginKind::Wasm,
        &wasm("concepts_default_linker"),
    );
    let native_pkg = package(
        root.path(),
        "native-miner",
        Role::Miner,
        PluginKind::Native,
        &lib,
    );

    let cache = tempfile::tempdir().unwrap();
    let mut config = HostConfig::sandboxed();
    config.cache_dir = Some(cache.path().to_owned());
    config.allow_native = true;

    // Loading: compile (cold cache) vs deserialize (warm cache), each in a fresh host.
    let cold = median(5, || {
        let mut c = config.clone();
        c.cache_dir = None;
        PluginHost::new(c).load_dir(&miner_pkg).unwrap();
    });
    PluginHost::new(config.clone())
        .load_dir(&miner_pkg)
        .unwrap();
    let warm = median(21, || {
        PluginHost::new(config.clone())
            .load_dir(&miner_pkg)
            .unwrap();
    });

    let host = PluginHost::new(config.clone());
    let mut wasm_miner = host.load_dir(&miner_pkg).unwrap().into_miner().unwrap();
    let mut native_miner = host.load_dir(&native_pkg).unwrap().into_miner().unwrap();
    let mut builtin_miner = builtin::default_miner(None);
    let mut wasm_linker = host.load_dir(&linker_pkg).unwrap().into_linker().unwrap();
    let mut builtin_linker = builtin::default_linker(None);

    let metadata = ConceptMetadata {
        name: "bo".into(),
        identifier: "<bo>".into(),
        display_name: "Bo".into(),
        category: "pet".into(),
        user_facts: vec![],
        relations: vec![],
    };
    let params = MiningParams {
        hard_per_positive: 20,
        easy_count: 100,
        seed: 1,
    };
    println!("plugin overhead (median; each wasm call instantiates a fresh instance)");
    println!(
        "  load default miner, compile (no cache)     {:>10.2?}",
        cold
    );
    println!(
        "  load default miner, from compile cache      {:>10.2?}",
        warm
    );
    let wasm_validate = median(201, || wasm_linker.validate(&metadata).unwrap());
    let builtin_validate = median(201, || builtin_linker.validate(&metadata).unwrap());
    println!(
        "  trivial call (linker.validate): wasm        {:>10.2?}",
        wasm_validate
    );
    println!(
        "  trivial call (linker.validate): in-process  {:>10.2?}",
        builtin_validate
    );
    for (positives, pool) in [(5, 200), (5, 2000), (20, 10000)] {
        let p = data(positives, 64, 1);
        let q = data(pool, 64, 2);
        let runs = if pool > 5000 { 11 } else { 51 };
        let w = median(runs, || {
            wasm_miner.mine(&p, &q, params).unwrap();
        });
        let n = median(runs, || {
            native_miner.mine(&p, &q, params).unwrap();
        });
        let b = median(runs, || {
            builtin_miner.mine(&p, &q, params).unwrap();
        });
        println!(
            "  default miner {positives:>2} × {pool:>5} × 64: wasm {w:>10.2?}   native C ABI {n:>10.2?}   in-process {b:>10.2?}"
        );
    }
}
