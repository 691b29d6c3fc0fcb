//! Two `concepts serve --concepts-from oci://REPO` replicas on loopback sharing one registry
//! (CNCF Distribution): what a concept costs on first use at a replica that never saw it
//! (pull, verify, install, make resident), what it costs afterwards, and throughput with the
//! load spread over both replicas or sent to one (docs/scaling.md).
//!
//! `cargo bench -p concepts-cli --bench replicas [-- --seconds S --clients N]`. Runs on the
//! parity fixture checkpoint (random weights), as docs/serving.md's numbers do. On a machine
//! with two cores, both replicas share those cores: the throughput row says what spreading
//! costs, not what a second machine would add.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concepts_tests::e2e::{http, parity_fixture, parity_model, served_address};
use concepts_tests::oci_registry::TestRegistry;

const CONCEPTS: usize = 8;

fn concepts(home: &Path) -> Command {
    concepts_tests::e2e::command(Path::new(env!("CARGO_BIN_EXE_concepts")), home)
}

fn must(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Replica {
    child: Child,
    addr: String,
}

impl Replica {
    fn start(home: &Path, repo: &str, workers: usize) -> Replica {
        let mut child = concepts(home)
            .args(["serve", "--model"])
            .arg(parity_model())
            .args([
                "--port",
                "0",
                "--workers",
                &workers.to_string(),
                "--image-dir",
            ])
            .arg(parity_fixture().join("images"))
            .args(["--concepts-from", repo])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (addr, _) = served_address(&mut child);
        Replica { child, addr }
    }

    /// One recognition of `concept`; its latency.
    fn recognise(&self, concept: &str) -> Duration {
        let body = format!(r#"{{"image":"logo.png","concepts":["{concept}"]}}"#);
        let start = Instant::now();
        let (status, response) = http(&self.addr, "POST", "/v1/recognise", &body);
        let elapsed = start.elapsed();
        assert_eq!(status, 200, "{response}");
        elapsed
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Requests per second with `clients` threads for `seconds`, client `i` sending to
/// `replicas[i % len]`, each request naming one of the concepts.
fn throughput(replicas: &[&Replica], clients: usize, seconds: f64) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    std::thread::scope(|s| {
        for i in 0..clients {
            let replica = replicas[i % replicas.len()];
            let done = done.clone();
            s.spawn(move || {
                let mut n = i;
                while Instant::now() < deadline {
                    replica.recognise(&format!("c{}", n % CONCEPTS));
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / seconds
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap())
        .unwrap_or(default)
}

fn main() {
    let seconds = arg("--seconds", 10.0);
    let clients = arg("--clients", 4.0) as usize;
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let publisher = tmp.path().join("publisher");
    let repo = format!("{}/household/concepts", registry.host());
    let fp = concepts_runtime::fingerprint(&parity_model()).unwrap();

    let mut push_ms = Vec::new();
    for i in 0..CONCEPTS {
        let name = format!("c{i}");
        let package =
            concepts_runtime::testing::random_concept_package(&name, &fp, 16, i as u64, 1.0)
                .unwrap();
        let file: PathBuf = tmp.path().join(format!("{name}.ycpt"));
        std::fs::write(&file, package.to_bytes()).unwrap();
        must(concepts(&publisher).arg("install").arg(&file));
        let start = Instant::now();
        must(concepts(&publisher).args(["push", &name, &repo]));
        push_ms.push(ms(start.elapsed()));
    }
    let package_bytes = std::fs::metadata(tmp.path().join("c0.ycpt")).unwrap().len();
    let start = Instant::now();
    must(concepts(&tmp.path().join("puller")).args(["install", &format!("oci://{repo}:c0")]));
    let install_ms = ms(start.elapsed());

    let oci_repo = format!("oci://{repo}");
    let a = Replica::start(&tmp.path().join("a"), &oci_repo, 1);
    let b = Replica::start(&tmp.path().join("b"), &oci_repo, 1);
    // Warm the model (first forward) on a concept, then time first uses of the others.
    a.recognise("c0");
    b.recognise("c0");
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 1..CONCEPTS {
        for replica in [&a, &b] {
            cold.push(ms(replica.recognise(&format!("c{i}"))));
        }
    }
    for _ in 0..3 {
        for i in 0..CONCEPTS {
            for replica in [&a, &b] {
                warm.push(ms(replica.recognise(&format!("c{i}"))));
            }
        }
    }
    cold.sort_by(f64::total_cmp);
    warm.sort_by(f64::total_cmp);
    push_ms.sort_by(f64::total_cmp);

    let both = throughput(&[&a, &b], clients, seconds);
    let one = throughput(&[&a], clients, seconds);

    println!("| measure (parity checkpoint, {package_bytes}-byte packages, k=16) | value |");
    println!("|---|---:|");
    println!(
        "| `concepts push` (process start to exit), p50 | {:.0} ms |",
        percentile(&push_ms, 0.5)
    );
    println!("| `concepts install oci://…` (process start to exit) | {install_ms:.0} ms |");
    println!(
        "| first request naming a concept at a replica (pull + verify + install + recognise), p50 / max | {:.1} / {:.1} ms |",
        percentile(&cold, 0.5),
        cold[cold.len() - 1]
    );
    println!(
        "| later requests (recognise only), p50 / p99 | {:.1} / {:.1} ms |",
        percentile(&warm, 0.5),
        percentile(&warm, 0.99)
    );
    println!("| {clients} clients spread over both replicas (1 worker each) | {both:.1} req/s |");
    println!("| {clients} clients on one replica (1 worker) | {one:.1} req/s |");
}
