//! Serving benchmark on the parity fixture checkpoint (random weights, CLIP-L/14-336 image
//! geometry: 576 image tokens; tiny widths), printed as Markdown tables:
//!
//! 1. the concept scan of N = 1, 10, 50 concepts against N separate recognition calls;
//! 2. concept activation: cold (read from the registry, hashed, parsed, checked and
//!    converted) and warm (resident), each including the per-request engine build;
//! 3. sustained requests/s of non-streamed chat with two concepts over loopback HTTP, with
//!    1, 2 and 4 concurrent clients.
//!
//! Run with `cargo bench -p concepts-server --bench serving`. Timings are wall-clock
//! medians; note the machine's load (`uptime`) next to them.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fingerprint, package_bytes, TestServer};
use concept_format::ConceptPackage;
use concept_registry::{InstallOptions, Registry};
use concepts_runtime::api::{ImageInput, MemorySource, Runtime, RuntimeConfig, Selection};
use concepts_server::{RegistrySource, ServerConfig};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn image() -> ImageInput {
    let bytes = std::fs::read(common::fixture().join("images/photo.jpg")).unwrap();
    ImageInput::Encoded {
        name: "photo.jpg".into(),
        bytes: Arc::from(bytes),
    }
}

async fn scan_vs_separate() {
    let fp = fingerprint();
    let source = Arc::new(MemorySource::new());
    let names: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        let bytes = package_bytes(name, &fp, i as u64, 1.0);
        source.insert(ConceptPackage::parse(&bytes).unwrap());
    }
    let runtime =
        Runtime::load(&common::model_dir(), source, RuntimeConfig::recommended()).unwrap();
    // Make every concept resident first, so both sides measure inference only.
    runtime
        .recognise_all(image(), Selection::All)
        .await
        .unwrap();

    println!("### Concept scan vs separate recognition calls\n");
    println!("| N | scan (ms) | N separate calls (ms) | speed-up | max abs p(yes) diff |");
    println!("|---:|---:|---:|---:|---:|");
    for n in [1usize, 10, 50] {
        let selection = Selection::Named(names[..n].to_vec());
        let reps = if n == 50 { 3 } else { 5 };
        let mut scan_times = Vec::new();
        let mut scan = Vec::new();
        for _ in 0..reps {
            let start = Instant::now();
            scan = runtime
                .recognise_all(image(), selection.clone())
                .await
                .unwrap();
            scan_times.push(ms(start.elapsed()));
        }
        let mut separate_times = Vec::new();
        let mut max_diff = 0.0f64;
        for _ in 0..reps.min(3) {
            let start = Instant::now();
            for (name, s) in names[..n].iter().zip(&scan) {
                let one = runtime.recognise(image(), name).await.unwrap();
                max_diff = max_diff.max((one.p_yes - s.p_yes).abs());
                assert_eq!(one.present(), s.present());
            }
            separate_times.push(ms(start.elapsed()));
        }
        let (a, b) = (median(scan_times), median(separate_times));
        println!("| {n} | {a:.1} | {b:.1} | {:.1}× | {max_diff:.1e} |", b / a);
    }
    println!();
}

async fn activation() {
    let home = tempfile::tempdir().unwrap();
    let registry = Registry::open(home.path()).unwrap();
    let fp = fingerprint();
    let count = 30;
    for i in 0..count {
        let bytes = package_bytes(&format!("a{i:02}"), &fp, 500 + i, 1.0);
        registry
            .install_bytes(
                &bytes,
                &InstallOptions {
                    replace: false,
                    force: false,
                },
            )
            .unwrap();
    }
    let source = Arc::new(RegistrySource::new(registry));
    let runtime =
        Runtime::load(&common::model_dir(), source, RuntimeConfig::recommended()).unwrap();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..count {
        let name = vec![format!("a{i:02}")];
        let start = Instant::now();
        runtime.warm(name.clone()).await.unwrap();
        cold.push(ms(start.elapsed()));
        let start = Instant::now();
        runtime.warm(name).await.unwrap();
        warm.push(ms(start.elapsed()));
    }
    let pair: Vec<String> = vec!["a00".into(), "a01".into()];
    let mut warm_pair = Vec::new();
    for _ in 0..count {
        let start = Instant::now();
        runtime.warm(pair.clone()).await.unwrap();
        warm_pair.push(ms(start.elapsed()));
    }
    println!(
        "### Concept activation (median of {count}; k = {}, d = {})\n",
        common::K,
        fp.hidden_size
    );
    println!("| case | ms |");
    println!("|---|---:|");
    println!(
        "| cold: registry read + sha256 + parse + check + convert + engine build | {:.3} |",
        median(cold)
    );
    println!(
        "| warm: resident, engine build only (1 concept) | {:.3} |",
        median(warm)
    );
    println!(
        "| warm: resident, engine build only (2 concepts) | {:.3} |",
        median(warm_pair)
    );
    println!();
}

async fn throughput() {
    println!("### Sustained chat throughput over loopback HTTP\n");
    println!("Non-streamed `/v1/chat/completions`, text only, two concepts, `max_tokens` 16 with");
    println!("`ignore_eos` (16 tokens every request), server with 2 workers.\n");
    println!(
        "| clients | requests | seconds | requests/s | generated tokens/s | p50 latency (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut cfg = ServerConfig::local(0);
    cfg.workers = 2;
    cfg.queue_capacity = 64;
    let server = Arc::new(TestServer::start(cfg).await);
    let fp = fingerprint();
    for (i, name) in ["bo", "kiki"].iter().enumerate() {
        let (status, body) = server
            .upload(package_bytes(name, &fp, i as u64, 1.0), false)
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let body = json!({
        "messages": [{"role": "user", "content": "Are <bo> and <kiki> friends?"}],
        "max_tokens": 16,
        "ignore_eos": true,
    });
    for clients in [1usize, 2, 4] {
        let window = Duration::from_secs(8);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let server = server.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut tokens = 0u64;
                // Bounded: stop after the window or 10 000 requests.
                while start.elapsed() < window && latencies.len() < 10_000 {
                    let t = Instant::now();
                    let (status, resp) = server.post_json("/v1/chat/completions", &body).await;
                    assert_eq!(status, 200, "{resp}");
                    tokens += resp["usage"]["completion_tokens"].as_u64().unwrap();
                    latencies.push(ms(t.elapsed()));
                }
                (latencies, tokens)
            }));
        }
        let mut latencies = Vec::new();
        let mut tokens = 0;
        for t in tasks {
            let (l, n) = t.await.unwrap();
            latencies.extend(l);
            tokens += n;
        }
        let secs = start.elapsed().as_secs_f64();
        let n = latencies.len();
        println!(
            "| {clients} | {n} | {secs:.1} | {:.1} | {:.0} | {:.1} |",
            n as f64 / secs,
            tokens as f64 / secs,
            median(latencies)
        );
    }
    println!();
}

fn main() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "## concepts-server serving benchmark\n\nload average before: {}\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        scan_vs_separate().await;
        activation().await;
        throughput().await;
    });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average after: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
