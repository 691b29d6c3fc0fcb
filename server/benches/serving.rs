//! Serving benchmark on the parity fixture checkpoint (random weights, CLIP-L/14-336 image
//! geometry: 576 image tokens; tiny widths), printed as Markdown tables:
//!
//! 1. the concept scan of N = 1, 10, 50 concepts against N separate recognition calls;
//! 2. concept activation: cold (read from the registry, hashed, parsed, checked and
//!    converted) and warm (resident), each including the per-request engine build;
//! 3. sustained requests/s of non-streamed chat with two concepts over loopback HTTP, with
//!    1, 2 and 4 concurrent clients;
//! 4. continuous batching: 8 streaming clients without concepts and with a concept each, on
//!    the batched server and on one that decodes each chat alone (as before batching), with
//!    time to first token; all servers side by side, compared in paired windows;
//! 5. the same two loads on the batched runtime without HTTP (8 tasks calling `Runtime::chat`).
//!
//! Run with `cargo bench -p concepts-server --bench serving [-- SECTION]` (`scan`,
//! `activation`, `throughput`, `batching`, `runtime`; all by default). Timings are wall-clock
//! medians; note the machine's load (`uptime`) next to them. `BATCH_THREADS=N` sets the batch
//! pool's threads; `batching` takes `BATCHING_ROUNDS=N` and `BATCHING_DEFAULTS_ONLY=1`, and
//! `runtime` takes `PROFILE_LOAD=none|concepts` (one load for 20 s, to run under `perf`).

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

/// The allocator the `concepts` binary (`concepts serve`) uses (see cli/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// One measured load of `batching`: requests answered, tokens, TTFT and latency samples.
struct Load {
    requests: usize,
    tokens: u64,
    secs: f64,
    ttft: Vec<f64>,
    latency: Vec<f64>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

/// `BATCH_THREADS=N` overrides [`RuntimeConfig::batch_threads`] (0, the default, chooses).
fn batch_threads() -> usize {
    std::env::var("BATCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `clients` clients streaming chats for `window`; client `i` sends `bodies[i % len]`, its
/// question followed by "Make it about day N." (N counting its requests).
async fn streamed_load(
    server: &Arc<TestServer>,
    bodies: &[serde_json::Value],
    clients: usize,
    window: Duration,
) -> Load {
    use futures_util::StreamExt;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let server = server.clone();
        let body = bodies[i % bodies.len()].clone();
        tasks.push(tokio::spawn(async move {
            let (mut ttft, mut latency, mut tokens) = (Vec::new(), Vec::new(), 0u64);
            while start.elapsed() < window && latency.len() < 10_000 {
                // Every request a new question: the same start, another day at the end.
                let mut request = body.clone();
                let question = request["messages"][0]["content"]
                    .as_str()
                    .unwrap_or_default();
                request["messages"][0]["content"] =
                    json!(format!("{question} Make it about day {}.", latency.len()));
                let t = Instant::now();
                let resp = server
                    .client
                    .post(server.at("/v1/chat/completions"))
                    .json(&request)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                let mut events = Box::pin(resp.bytes_stream());
                let mut text = String::new();
                let mut first = None;
                // Complete lines before this offset have been looked at.
                let mut scanned = 0;
                while let Some(chunk) = events.next().await {
                    text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                    let Some(end) = text.rfind('\n').filter(|_| first.is_none()) else {
                        continue;
                    };
                    // The first chunk with text (the opening chunk's content is empty).
                    let has_text = common::sse_data(&text[scanned..end]).iter().any(|d| {
                        serde_json::from_str::<serde_json::Value>(d).is_ok_and(|v| {
                            v["choices"][0]["delta"]["content"]
                                .as_str()
                                .is_some_and(|c| !c.is_empty())
                        })
                    });
                    if has_text {
                        first = Some(ms(t.elapsed()));
                    }
                    scanned = end;
                }
                let done = ms(t.elapsed());
                ttft.push(first.unwrap_or(done));
                latency.push(done);
                let usage = common::sse_data(&text)
                    .iter()
                    .rev()
                    .filter(|d| d.contains("\"usage\""))
                    .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                    .find_map(|v| v["usage"]["completion_tokens"].as_u64());
                tokens += usage.expect("the stream ends with its usage");
            }
            (ttft, latency, tokens)
        }));
    }
    let mut load = Load {
        requests: 0,
        tokens: 0,
        secs: 0.0,
        ttft: Vec::new(),
        latency: Vec::new(),
    };
    for t in tasks {
        let (ttft, latency, tokens) = t.await.unwrap();
        load.requests += latency.len();
        load.ttft.extend(ttft);
        load.latency.extend(latency);
        load.tokens += tokens;
    }
    load.secs = start.elapsed().as_secs_f64();
    load
}

/// `with[i] / none[i]` over rounds of adjacent windows: the median, then the lowest and the
/// highest.
fn paired_ratio(with: &[f64], none: &[f64]) -> (f64, (f64, f64)) {
    let ratios: Vec<f64> = with.iter().zip(none).map(|(w, n)| w / n).collect();
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(0.0, f64::max);
    (median(ratios), (low, high))
}

/// How many rounds of two adjacent windows (`BATCHING_ROUNDS`, 40) and how long each window is
/// (`BATCHING_WINDOW_MS`, 500): short windows, because this machine's speed drifts by tens of
/// percent over seconds and only adjacent windows see the same machine.
fn rounds_and_window() -> (usize, Duration) {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        var("BATCHING_ROUNDS", 40) as usize,
        Duration::from_millis(var("BATCHING_WINDOW_MS", 500)),
    )
}

/// Continuous batching against one chat per worker: 8 streaming clients, without concepts
/// and each with a concept of its own (each request a new question), on the batched
/// server (with and without the prefix cache) and on the server as it was before batching
/// (2 workers, each decoding one chat alone; and with 8 workers).
async fn batching() {
    const CLIENTS: usize = 8;
    // `BATCHING_ROUNDS=N` alternates more windows; `BATCHING_DEFAULTS_ONLY=1` measures only
    // the batched server with the default settings (for quick comparisons).
    let (rounds, window) = rounds_and_window();
    let defaults_only = std::env::var_os("BATCHING_DEFAULTS_ONLY").is_some();
    println!("### Continuous batching: 8 clients, each with its own concept\n");
    println!(
        "Streamed `/v1/chat/completions`, text only, `max_tokens` 16 with `ignore_eos`; all servers \
         run side by side, and each of {rounds} rounds measures every server under both loads in \
         adjacent {:.1}-s windows (after a 1 s warm-up each; which server goes first rotates, which \
         load goes first alternates); the table shows the median window. TTFT: request sent to \
         the first text chunk. Ratios (concepts vs none, batched vs not) are medians over rounds \
         of the ratio of a round's windows: the machine's speed drifts over seconds, and windows \
         of one round see the same machine.\n",
        window.as_secs_f64()
    );
    println!(
        "| server | concepts | requests/s | generated tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | latency p50 (ms) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let fp = fingerprint();
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    let body = |name: &str| {
        json!({
            "messages": [{"role": "user", "content": format!("Write a short poem for <{name}>.")}],
            "max_tokens": 16, "ignore_eos": true, "stream": true,
            "stream_options": {"include_usage": true},
        })
    };
    // Each client its own concept, mentioned (so introduced by its personal prompt)…
    let with_concepts: Vec<serde_json::Value> = names.iter().map(|n| body(n)).collect();
    // …or the same questions about names no concept has (plain text, nothing activated).
    let without: Vec<serde_json::Value> = (0..CLIENTS).map(|i| body(&format!("n{i}"))).collect();
    let prefixes = RuntimeConfig::recommended().prefix_cache_bytes;
    let servers = [
        ("one chat per worker (2 workers, before batching)", 2, 0, 0),
        ("one chat per worker (8 workers)", 8, 0, 0),
        ("continuous batching (8 rows, 2 workers)", 2, 8, prefixes),
        (
            "continuous batching, no prefix cache (8 rows, 8 workers)",
            8,
            8,
            0,
        ),
        ("continuous batching (8 rows, 8 workers)", 8, 8, prefixes),
    ];
    let skip = if defaults_only { servers.len() - 1 } else { 0 };
    let mut started = Vec::new();
    for (label, workers, batch, prefix_cache_bytes) in servers.into_iter().skip(skip) {
        let mut cfg = ServerConfig::local(0);
        cfg.workers = workers;
        cfg.queue_capacity = 64;
        let runtime_config = RuntimeConfig {
            decode_batch: batch,
            prefix_cache_bytes,
            batch_threads: batch_threads(),
            ..RuntimeConfig::recommended()
        };
        let server = Arc::new(TestServer::start_with(cfg, runtime_config).await);
        for (i, name) in names.iter().enumerate() {
            let (status, body) = server
                .upload(package_bytes(name, &fp, i as u64, 1.0), false)
                .await;
            assert_eq!(status, 201, "{body}");
        }
        started.push((label, server));
    }
    let loads = [("none", &without), ("8 different", &with_concepts)];
    if let Ok(which) = std::env::var("PROFILE_LOAD") {
        let bodies = if which == "none" {
            loads[0].1
        } else {
            loads[1].1
        };
        let server = &started.last().expect("a server").1;
        streamed_load(server, bodies, CLIENTS, Duration::from_secs(1)).await;
        let load = streamed_load(server, bodies, CLIENTS, Duration::from_secs(20)).await;
        println!("{which}: {:.1} req/s", load.rps());
        return;
    }
    for (_, server) in &started {
        for (_, bodies) in loads {
            streamed_load(server, bodies, CLIENTS, Duration::from_secs(1)).await;
        }
    }
    // Every round measures every server under both loads, in adjacent windows (which server
    // goes first rotates, which load goes first alternates), so that ratios between servers as
    // well as between loads compare windows seconds apart on the same machine.
    let n = started.len();
    let mut windows: Vec<[Vec<Load>; 2]> = (0..n).map(|_| [Vec::new(), Vec::new()]).collect();
    for round in 0..rounds {
        for i in 0..n {
            let si = (round + i) % n;
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for w in order {
                let load = streamed_load(&started[si].1, loads[w].1, CLIENTS, window).await;
                windows[si][w].push(load);
            }
        }
    }
    let rps = |w: &[Load]| w.iter().map(Load::rps).collect::<Vec<_>>();
    for ((label, _), server_windows) in started.iter().zip(&windows) {
        for (w, (what, _)) in server_windows.iter().zip(loads) {
            let mut w: Vec<&Load> = w.iter().collect();
            w.sort_by(|a, b| a.rps().total_cmp(&b.rps()));
            let load = w[rounds / 2];
            println!(
                "| {label} | {what} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} |",
                load.rps(),
                load.tokens as f64 / load.secs,
                percentile(load.ttft.clone(), 0.5),
                percentile(load.ttft.clone(), 0.99),
                percentile(load.latency.clone(), 0.5),
            );
        }
    }
    let defaults = &windows[n - 1];
    let (ratio, (low, high)) = paired_ratio(&rps(&defaults[1]), &rps(&defaults[0]));
    println!(
        "\nBatched (8 rows, 8 workers), 8 different concepts vs no concept: {ratio:.2}× (median of \
         {rounds} paired rounds; lowest {low:.2}×, highest {high:.2}×)."
    );
    if defaults_only {
        return;
    }
    // [before (2 workers), before (8 workers), …, defaults], each [none, 8 different].
    let vs = |other: usize| paired_ratio(&rps(&defaults[1]), &rps(&windows[other][1]));
    let ((two, (two_low, two_high)), (eight, _)) = (vs(0), vs(1));
    println!(
        "Batched (8 rows, 8 workers) with 8 concepts vs the server before batching (2 workers) with \
         the same 8 concepts: {two:.2}× (median of {rounds} rounds; lowest {two_low:.2}×, highest \
         {two_high:.2}×); vs one chat per worker with 8 workers: {eight:.2}×.\n",
    );
}

/// The batched runtime without HTTP: 8 tasks calling [`Runtime::chat`], none vs a concept
/// each (as `batching`'s bodies). `PROFILE_LOAD=none|concepts` runs only that load for 20 s.
async fn runtime_batching() {
    use concepts_runtime::api::{ChatMessage, ChatRequest};
    const CLIENTS: usize = 8;
    let fp = fingerprint();
    let config = RuntimeConfig {
        batch_threads: batch_threads(),
        ..RuntimeConfig::recommended()
    };
    let server = Arc::new(TestServer::start_with(ServerConfig::local(0), config).await);
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let (status, body) = server
            .upload(package_bytes(name, &fp, i as u64, 1.0), false)
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let load = |prefix: &'static str, window: Duration| {
        let server = server.clone();
        async move {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..CLIENTS {
                let server = server.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0usize;
                    while start.elapsed() < window {
                        let text =
                            format!("Write a short poem for <{prefix}{i}>. Make it about day {n}.");
                        let request = ChatRequest {
                            stop_at_eos: false,
                            ..ChatRequest::new(vec![ChatMessage::user(text)], 16)
                        };
                        let s = server
                            .runtime
                            .chat(request)
                            .await
                            .unwrap()
                            .collect()
                            .await
                            .unwrap();
                        assert_eq!(s.completion_tokens, 16);
                        n += 1;
                    }
                    n
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total as f64 / start.elapsed().as_secs_f64()
        }
    };
    if let Ok(which) = std::env::var("PROFILE_LOAD") {
        let prefix = if which == "none" { "n" } else { "c" };
        load(prefix, Duration::from_secs(1)).await;
        println!(
            "{which}: {:.1} req/s",
            load(prefix, Duration::from_secs(20)).await
        );
        return;
    }
    load("n", Duration::from_secs(1)).await;
    load("c", Duration::from_secs(1)).await;
    let (rounds, window) = rounds_and_window();
    let (mut none, mut with) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (n, c) = if round % 2 == 0 {
            let n = load("n", window).await;
            (n, load("c", window).await)
        } else {
            let c = load("c", window).await;
            (load("n", window).await, c)
        };
        none.push(n);
        with.push(c);
    }
    let (ratio, (low, high)) = paired_ratio(&with, &none);
    let (none, with) = (median(none), median(with));
    println!("### Continuous batching without HTTP: 8 tasks calling `Runtime::chat`\n");
    println!(
        "The `batching` loads (16 tokens, each request a new question), {rounds} rounds of two \
         adjacent {:.1}-s windows (which goes first alternates), median window; the ratio is the \
         median of the rounds' ratios.\n",
        window.as_secs_f64()
    );
    println!("| concepts | requests/s |\n|---|---:|");
    println!("| none | {none:.1} |\n| 8 different | {with:.1} |\n");
    println!(
        "8 different concepts vs no concept: {ratio:.2}× (lowest round {low:.2}×, highest \
         {high:.2}×)\n"
    );
}

fn main() {
    // As `concepts serve` does (cli/src/main.rs): otherwise candle reads /proc/cpuinfo on
    // every matrix product.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
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
    // `cargo bench … -- NAME` runs the sections whose name contains NAME.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let run = |name: &str| name.contains(&filter);
    tokio.block_on(async {
        if run("scan") {
            scan_vs_separate().await;
        }
        if run("activation") {
            activation().await;
        }
        if run("throughput") {
            throughput().await;
        }
        if run("batching") {
            batching().await;
        }
        if run("runtime") {
            runtime_batching().await;
        }
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
