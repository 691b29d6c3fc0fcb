//! Test support: builds the plugin crates from source, writes packages, and provides a real
//! training host (a logistic-regression recogniser) and synthetic embeddings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use concepts_plugin_host::api::{
    EpochReport, Recognition, Role, SampleCounts, SampleKind, SampleRef, Split,
};
use concepts_plugin_host::{
    BatchId, EmbeddingMatrix, EngineError, ManifestLimits, ManifestSpec, PluginKind, SnapshotId,
    TrainingHost,
};

use crate::workspace_root;

/// `<target dir>/tmp`, where Cargo's `CARGO_TARGET_TMPDIR` points (a variable only test targets
/// see, at compile time): found from the running test's path, `<target>/<profile>/deps/<test>`.
fn target_tmpdir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("tmp"))
        .expect("a test runs from <target>/<profile>/deps")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(workspace_root());
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s");
    cmd
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running cargo for {what}: {e}"));
    assert!(
        out.status.success(),
        "building {what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The plugin guests are built for `wasm32-wasip2`; a toolchain without that target gets it
/// from rustup here, so `cargo test --workspace` works on a machine with only rustup's stable
/// toolchain (rustup's auto-install does not fetch targets).
fn ensure_wasm_target() {
    let installed = || {
        let out = Command::new("rustc")
            .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
            .output()
            .expect("running rustc");
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        out.status.success() && std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some())
    };
    if installed() {
        return;
    }
    let added = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .output();
    assert!(
        added.is_ok_and(|o| o.status.success()) && installed(),
        "the wasm32-wasip2 target is not installed and `rustup target add wasm32-wasip2` \
         failed; install it to build the plugin guests"
    );
}

/// Packages by the SDK role feature they enable; each group builds in one cargo invocation so the
/// SDK is compiled with exactly one role.
const WASM_GROUPS: [&[&str]; 4] = [
    &[
        "concepts-default-miner",
        "concepts-example-centroid-miner",
        "concepts-test-spin",
        "concepts-test-membomb",
        "concepts-test-bigcall",
        "concepts-test-fsread",
        "concepts-test-panic",
    ],
    &["concepts-default-trainer"],
    &["concepts-default-linker"],
    &["concepts-test-wrong-version"],
];

/// The wasm component of plugin crate `package`, built from source for `wasm32-wasip2`.
pub fn component(package: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        ensure_wasm_target();
        let target_dir = target_tmpdir().join("plugin-guests");
        for group in WASM_GROUPS {
            let mut cmd = cargo();
            cmd.args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
            ]);
            for p in group {
                cmd.args(["-p", p]);
            }
            cmd.arg("--target-dir").arg(&target_dir);
            run(cmd, &format!("wasm components {group:?}"));
        }
        target_dir.join("wasm32-wasip2/release")
    });
    let path = dir.join(format!("{}.wasm", package.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The native plugin library of crate `package` (built with the SDK feature `native`).
pub fn native_library(package: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(package) {
        return path.clone();
    }
    let target_dir = target_tmpdir().join("plugin-native");
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--locked", "-p", package])
        .args(["--features", "concepts-plugin-sdk/native"])
        .arg("--target-dir")
        .arg(&target_dir);
    run(cmd, package);
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let path = target_dir.join("release").join(file);
    assert!(path.is_file(), "{} was not built", path.display());
    built.insert(package.to_owned(), path.clone());
    path
}

/// Writes a package folder for `bytes` under `root/<id>` and returns it.
pub fn package(
    root: &Path,
    id: &str,
    role: Role,
    kind: PluginKind,
    bytes: &[u8],
    limits: ManifestLimits,
) -> PathBuf {
    let file = match kind {
        PluginKind::Wasm => "plugin.wasm",
        PluginKind::Native => "plugin.so",
    };
    ManifestSpec {
        id,
        version: "0.1.0",
        role,
        kind,
        file,
        bytes,
        limits,
        capabilities: &[],
    }
    .write_package(&root.join(id))
    .expect("writing package")
}

// --- synthetic embeddings

/// xorshift64*, for reproducible test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    pub fn vector(&mut self, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| self.next_f32()).collect()
    }
}

/// A subject and a pool: 5 positives around one direction; a pool of 240 images of which 40 are
/// similar to the subject, 2 are near-duplicates of positives (the same photo, re-encoded), and the
/// rest random.
pub fn mining_data() -> (EmbeddingMatrix, EmbeddingMatrix) {
    let dim = 24;
    let mut rng = Rng(0x5EED);
    let subject = rng.vector(dim);
    let around = |rng: &mut Rng, center: &[f32], spread: f32| -> Vec<f32> {
        center.iter().map(|c| c + spread * rng.next_f32()).collect()
    };
    let positives: Vec<Vec<f32>> = (0..5).map(|_| around(&mut rng, &subject, 0.35)).collect();
    let mut pool: Vec<Vec<f32>> = Vec::new();
    for i in 0..240 {
        pool.push(match i {
            7 => around(&mut rng, &positives[0], 0.01),
            100 => around(&mut rng, &positives[3], 0.01),
            i if i % 6 == 0 => around(&mut rng, &subject, 0.9),
            _ => rng.vector(dim),
        });
    }
    (
        EmbeddingMatrix::from_rows(&positives).unwrap(),
        EmbeddingMatrix::from_rows(&pool).unwrap(),
    )
}

/// The default policy's hard negatives, computed by brute force: per positive the `m` most similar
/// pool rows that are not near-duplicates of any positive, deduplicated.
pub fn expected_hard(positives: &EmbeddingMatrix, pool: &EmbeddingMatrix, m: usize) -> Vec<u32> {
    let near_dup = |p: usize| (0..positives.rows()).any(|q| positives.cosine(q, pool, p) >= 0.98);
    let mut chosen = Vec::new();
    for q in 0..positives.rows() {
        let mut rows: Vec<usize> = (0..pool.rows()).filter(|&p| !near_dup(p)).collect();
        rows.sort_by(|&a, &b| {
            positives
                .cosine(q, pool, b)
                .total_cmp(&positives.cosine(q, pool, a))
                .then(a.cmp(&b))
        });
        for &r in rows.iter().take(m) {
            if !chosen.contains(&(r as u32)) {
                chosen.push(r as u32);
            }
        }
    }
    chosen
}

// --- a real training host: logistic regression on fixed feature vectors

#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub w: Vec<f32>,
    pub b: f32,
}

/// Trains `sigmoid(w·x + b)` to answer "is the subject in this image?" with real gradient steps.
pub struct LogisticHost {
    pub positives: Vec<Vec<f32>>,
    pub hard: Vec<Vec<f32>>,
    pub easy: Vec<Vec<f32>>,
    pub conversations: u32,
    pub templates: u32,
    pub validation: Vec<(Vec<f32>, f32)>,
    pub weights: Weights,
    batches: HashMap<u32, Vec<(Vec<f32>, f32)>>,
    next_batch: u32,
    snapshots: Vec<Weights>,
    /// Learning rate of every step, in order.
    pub step_lrs: Vec<f32>,
    /// Weights right after each validation evaluation, by epoch (1-based index - 1).
    pub weights_at_eval: Vec<Weights>,
    pub reports: Vec<EpochReport>,
    pub restored: Vec<u32>,
    pub samples_seen: Vec<SampleRef>,
}

impl LogisticHost {
    pub fn new(
        positives: Vec<Vec<f32>>,
        hard: Vec<Vec<f32>>,
        easy: Vec<Vec<f32>>,
        validation: Vec<(Vec<f32>, f32)>,
    ) -> LogisticHost {
        let dim = positives[0].len();
        LogisticHost {
            positives,
            hard,
            easy,
            conversations: 3,
            templates: 4,
            validation,
            weights: Weights {
                w: vec![0.0; dim],
                b: 0.0,
            },
            batches: HashMap::new(),
            next_batch: 0,
            snapshots: Vec::new(),
            step_lrs: Vec::new(),
            weights_at_eval: Vec::new(),
            reports: Vec::new(),
            restored: Vec::new(),
            samples_seen: Vec::new(),
        }
    }

    /// Weighted validation accuracy ((positive + negative) / 2, what the default trainer
    /// reports as its best) of the current weights, without recording anything.
    pub fn evaluate_at_start(&self) -> f32 {
        let rate = |label: f32| {
            let of: Vec<_> = self
                .validation
                .iter()
                .filter(|(_, y)| *y == label)
                .collect();
            let ok = of
                .iter()
                .filter(|(x, _)| (self.predict(x) >= 0.5) == (label == 1.0))
                .count();
            ok as f32 / of.len().max(1) as f32
        };
        (rate(1.0) + rate(0.0)) / 2.0
    }

    pub fn live_batches(&self) -> usize {
        self.batches.len()
    }

    fn predict(&self, x: &[f32]) -> f32 {
        let z: f32 = self
            .weights
            .w
            .iter()
            .zip(x)
            .map(|(w, x)| w * x)
            .sum::<f32>()
            + self.weights.b;
        1.0 / (1.0 + (-z).exp())
    }

    fn example(&self, s: &SampleRef) -> Result<(Vec<f32>, f32), EngineError> {
        let get = |list: &Vec<Vec<f32>>, label: f32| {
            list.get(s.index as usize)
                .map(|x| (x.clone(), label))
                .ok_or_else(|| EngineError(format!("no {:?} sample {}", s.kind, s.index)))
        };
        if s.kind != SampleKind::Conversation && s.template >= self.templates {
            return Err(EngineError(format!("no template {}", s.template)));
        }
        match s.kind {
            SampleKind::Positive => get(&self.positives, 1.0),
            SampleKind::HardNegative => get(&self.hard, 0.0),
            SampleKind::EasyNegative => get(&self.easy, 0.0),
            SampleKind::Conversation if s.index < self.conversations => Ok((
                self.positives[s.index as usize % self.positives.len()].clone(),
                1.0,
            )),
            SampleKind::Conversation => Err(EngineError(format!("no conversation {}", s.index))),
        }
    }

    /// The epoch a correct policy keeps: highest validation accuracy, ties by lower loss, earliest.
    pub fn best_reported_epoch(&self) -> u32 {
        let mut best = &self.reports[0];
        for r in &self.reports[1..] {
            let (a, b) = (r.validation, best.validation);
            if a.accuracy > b.accuracy || (a.accuracy == b.accuracy && a.loss < b.loss) {
                best = r;
            }
        }
        best.epoch
    }
}

impl TrainingHost for LogisticHost {
    fn counts(&self) -> SampleCounts {
        SampleCounts {
            positives: self.positives.len() as u32,
            hard_negatives: self.hard.len() as u32,
            easy_negatives: self.easy.len() as u32,
            conversations: self.conversations,
            recognition_templates: self.templates,
        }
    }

    fn build_batch(&mut self, samples: &[SampleRef]) -> Result<BatchId, EngineError> {
        let examples = samples
            .iter()
            .map(|s| self.example(s))
            .collect::<Result<Vec<_>, _>>()?;
        self.samples_seen.extend_from_slice(samples);
        let id = self.next_batch;
        self.next_batch += 1;
        self.batches.insert(id, examples);
        Ok(BatchId(id))
    }

    fn batch_len(&self, batch: BatchId) -> u32 {
        self.batches.get(&batch.0).map_or(0, |b| b.len() as u32)
    }

    fn drop_batch(&mut self, batch: BatchId) {
        assert!(
            self.batches.remove(&batch.0).is_some(),
            "batch {batch:?} dropped twice"
        );
    }

    fn train_step(&mut self, batch: BatchId, learning_rate: f32) -> Result<f32, EngineError> {
        let examples = self
            .batches
            .get(&batch.0)
            .ok_or_else(|| EngineError(format!("no batch {}", batch.0)))?
            .clone();
        let n = examples.len() as f32;
        let mut grad_w = vec![0.0f32; self.weights.w.len()];
        let mut grad_b = 0.0f32;
        let mut loss = 0.0f32;
        for (x, y) in &examples {
            let p = self.predict(x).clamp(1e-6, 1.0 - 1e-6);
            loss -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
            for (g, xi) in grad_w.iter_mut().zip(x) {
                *g += (p - y) * xi / n;
            }
            grad_b += (p - y) / n;
        }
        for (w, g) in self.weights.w.iter_mut().zip(&grad_w) {
            *w -= learning_rate * g;
        }
        self.weights.b -= learning_rate * grad_b;
        self.step_lrs.push(learning_rate);
        Ok(loss / n)
    }

    fn evaluate_recognition(&mut self, split: Split) -> Result<Recognition, EngineError> {
        assert_eq!(
            split,
            Split::Validation,
            "the default trainer validates on validation"
        );
        let (mut correct, mut pos, mut pos_ok, mut neg_ok, mut loss) = (0, 0, 0, 0, 0.0f32);
        for (x, y) in &self.validation {
            let p = self.predict(x).clamp(1e-6, 1.0 - 1e-6);
            loss -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
            let ok = (p >= 0.5) == (*y == 1.0);
            correct += usize::from(ok);
            if *y == 1.0 {
                pos += 1;
                pos_ok += usize::from(ok);
            } else {
                neg_ok += usize::from(ok);
            }
        }
        let n = self.validation.len();
        self.weights_at_eval.push(self.weights.clone());
        Ok(Recognition {
            accuracy: correct as f32 / n as f32,
            positive_accuracy: pos_ok as f32 / pos.max(1) as f32,
            negative_accuracy: neg_ok as f32 / (n - pos).max(1) as f32,
            loss: loss / n as f32,
            examples: n as u32,
        })
    }

    fn snapshot(&mut self) -> Result<SnapshotId, EngineError> {
        self.snapshots.push(self.weights.clone());
        Ok(SnapshotId(self.snapshots.len() as u32 - 1))
    }

    fn restore(&mut self, snapshot: SnapshotId) -> Result<(), EngineError> {
        self.weights = self
            .snapshots
            .get(snapshot.0 as usize)
            .ok_or_else(|| EngineError(format!("no snapshot {}", snapshot.0)))?
            .clone();
        self.restored.push(snapshot.0);
        Ok(())
    }

    fn report_epoch(&mut self, report: &EpochReport) {
        self.reports.push(*report);
    }
}

/// A learnable recognition task: positives around `+d`, hard negatives around a nearby point, easy
/// negatives around `-d`; validation drawn from the same distributions.
pub fn separable_task(seed: u64) -> LogisticHost {
    let dim = 6;
    let mut rng = Rng(seed);
    let center = rng.vector(dim);
    let near: Vec<f32> = center.iter().map(|c| c * 0.2 + 0.3).collect();
    let far: Vec<f32> = center.iter().map(|c| -c).collect();
    let mut draw = |c: &[f32], n: usize, spread: f32| -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| c.iter().map(|v| v + spread * rng.next_f32()).collect())
            .collect()
    };
    let positives = draw(&center, 8, 0.3);
    let hard = draw(&near, 8, 0.3);
    let easy = draw(&far, 8, 0.3);
    let mut validation: Vec<(Vec<f32>, f32)> = Vec::new();
    validation.extend(draw(&center, 10, 0.3).into_iter().map(|x| (x, 1.0)));
    validation.extend(draw(&near, 10, 0.3).into_iter().map(|x| (x, 0.0)));
    validation.extend(draw(&far, 10, 0.3).into_iter().map(|x| (x, 0.0)));
    LogisticHost::new(positives, hard, easy, validation)
}

/// A task whose validation labels contradict training: every epoch makes validation worse after
/// the first, so a correct policy keeps epoch 1 and stops after its patience runs out.
pub fn misleading_task(seed: u64) -> LogisticHost {
    let mut host = separable_task(seed);
    for (_, y) in &mut host.validation {
        *y = 1.0 - *y;
    }
    host
}
