//! Seconds per training step — a batch of recognition samples, one image each — for the Rust
//! trainer and for the PyTorch reimplementation of the reference recipe
//! (`tools/train_bench/bench.py`), on the same llava-hf checkpoint, batch and thread count.
//!
//! ```text
//! RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE \
//!     cargo bench -p concepts-trainer --bench train_step -- [--model DIR] [--wide] \
//!     [--batch 4] [--steps 10] [--warmup 2] [--k 16] [--python /work/pyenv/bin/python] \
//!     [--only whole|recomputed|kept|cold]
//! ```
//!
//! Default checkpoint: the parity fixture (LLaVA-1.5 topology, 336 px, 576 image tokens, tiny
//! widths). `--wide` writes a random checkpoint with the same topology and tokenizer but wider
//! layers (vision 256 × 4 layers, text 512 × 4 layers) to a temp folder, closer to the
//! compute-bound regime of a real model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use concepts_plugin_api::{SampleKind, SampleRef};
use concepts_plugin_host::TrainingHost;
use concepts_runtime::session::Engine;
use concepts_runtime::ConceptWeights;
use concepts_trainer::engine::{EngineObserver, EpochEvent};
use concepts_trainer::images::{self, LoadedImage};
use concepts_trainer::{AdamW, Dataset, EngineConfig, Init, PrefixReuse, TrainingEngine};
use rand::SeedableRng;

/// The allocator the `concepts` binary uses (see cli/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Quiet;

impl EngineObserver for Quiet {
    fn epoch(&mut self, _event: EpochEvent<'_>) -> concepts_trainer::Result<()> {
        Ok(())
    }
}

struct Args {
    model: Option<PathBuf>,
    wide: bool,
    batch: usize,
    steps: usize,
    warmup: usize,
    k: usize,
    python: PathBuf,
    /// Time only this Rust setting (`whole`, `recomputed`, `kept`, `cold`), e.g. under a profiler.
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        model: None,
        wide: false,
        batch: 4,
        steps: 10,
        warmup: 2,
        k: 16,
        python: PathBuf::from("/work/pyenv/bin/python"),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("flag value");
        match arg.as_str() {
            "--model" => a.model = Some(PathBuf::from(value())),
            "--wide" => a.wide = true,
            "--batch" => a.batch = value().parse().expect("--batch N"),
            "--steps" => a.steps = value().parse().expect("--steps N"),
            "--warmup" => a.warmup = value().parse().expect("--warmup N"),
            "--k" => a.k = value().parse().expect("--k N"),
            "--python" => a.python = PathBuf::from(value()),
            "--only" => a.only = Some(value()),
            _ => {} // cargo bench passes `--bench`
        }
    }
    a
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The parity fixture's topology and tokenizer with wider random layers.
fn write_wide(dir: &Path) -> PathBuf {
    let fixture = workspace().join("runtime/tests/fixtures/parity/model");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["tokenizer.json", "preprocessor_config.json"] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    v["text_config"]["hidden_size"] = 512.into();
    v["text_config"]["intermediate_size"] = 1376.into();
    v["text_config"]["num_hidden_layers"] = 4.into();
    v["text_config"]["num_attention_heads"] = 8.into();
    v["text_config"]["num_key_value_heads"] = 8.into();
    v["vision_config"]["hidden_size"] = 256.into();
    v["vision_config"]["intermediate_size"] = 1024.into();
    v["vision_config"]["num_hidden_layers"] = 4.into();
    v["vision_config"]["num_attention_heads"] = 4.into();
    v["vision_config"]["projection_dim"] = 256.into();
    let json = serde_json::to_string_pretty(&v).unwrap();
    concepts_runtime::testing::write_random_checkpoint(dir, &json, 3).unwrap();
    dir.to_path_buf()
}

fn photos(n: usize) -> Vec<LoadedImage> {
    let subject = &toy_world::choose_subjects(3, 1).unwrap()[0];
    let combo = *subject.combo();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    (0..n)
        .map(|i| {
            let img = toy_world::render(
                &toy_world::photo_of(&mut rng, combo, &[combo]),
                toy_world::ImageSize::new(64).unwrap(),
            );
            let png = toy_world::encode_png(&img);
            images::decode_checked(
                Path::new(&format!("photo-{i}.png")),
                &png,
                &concepts_runtime::preprocess::PreprocessConfig::square(48),
                8,
            )
            .unwrap()
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = args();
    let tmp = std::env::temp_dir().join(format!("concepts-train-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let model_dir = match (&a.model, a.wide) {
        (Some(dir), _) => dir.clone(),
        (None, true) => write_wide(&tmp.join("wide")),
        (None, false) => workspace().join("runtime/tests/fixtures/parity/model"),
    };
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut session = Engine::load(&model_dir, &Device::Cpu, DType::F32).unwrap();
    let d = session.model().config().text.hidden_size;
    let zeros = Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap();
    let w = ConceptWeights::new(
        zeros.clone(),
        Tensor::zeros((a.k, d), DType::F32, &Device::Cpu).unwrap(),
        zeros,
    )
    .unwrap();
    session.activate("bo", "<bo>", w).unwrap();
    let data = Dataset {
        positives: photos(a.batch),
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let samples: Vec<SampleRef> = (0..a.batch as u32)
        .map(|index| SampleRef {
            kind: SampleKind::Positive,
            index,
            template: 0,
        })
        .collect();
    // Median seconds per step of an engine with `prefix`; `every_step` clears the image
    // features and prefixes before each step, so the vision tower and the prefix run again.
    let time_steps = |name: &str, prefix: PrefixReuse, every_step: bool| {
        let mut quiet = Quiet;
        let cfg = EngineConfig {
            k: a.k,
            init: Init::Random,
            seed: 0,
            adamw: AdamW::REFERENCE,
            templates: concepts_trainer::templates::TemplateSet::yollava(),
            prefix,
        };
        let mut engine =
            TrainingEngine::new(&session, "bo", &data, cfg, None, &cancel, &mut quiet).unwrap();
        let batch = engine.build_batch(&samples).unwrap();
        let mut times = Vec::new();
        let skip = a.only.as_deref().is_some_and(|only| only != name);
        for i in 0..if skip { 0 } else { a.warmup + a.steps } {
            if every_step {
                engine.clear_caches();
            }
            let t0 = Instant::now();
            let loss = engine.train_step(batch, 1e-3).unwrap();
            assert!(loss.is_finite());
            if i >= a.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        let tokens = engine.sample_tokens(&samples[0]).unwrap();
        (if skip { f64::NAN } else { median(times) }, tokens)
    };
    let kept = PrefixReuse::default();
    let (rust_whole, (ids, targets)) = time_steps("whole", PrefixReuse::Off, false);
    let recomputed = PrefixReuse::Cached { budget_bytes: 0 };
    let (rust_recomputed, _) = time_steps("recomputed", recomputed, false);
    let (rust_kept, _) = time_steps("kept", kept, false);
    let (rust_cold, _) = time_steps("cold", kept, true);

    // The same batch for PyTorch.
    let t = ids.len();
    let b = a.batch;
    let input_ids: Vec<i64> = (0..b)
        .flat_map(|_| ids.iter().map(|&i| i64::from(i)))
        .collect();
    let mut labels = vec![-100i64; t];
    for &p in &targets {
        labels[p] = i64::from(ids[p]);
    }
    let labels: Vec<i64> = (0..b).flat_map(|_| labels.iter().copied()).collect();
    let px: Vec<Tensor> = data
        .positives
        .iter()
        .map(|p| {
            images::pixels(&p.image, false, session.preprocess_config())
                .unwrap()
                .to_tensor(&Device::Cpu)
                .unwrap()
        })
        .collect();
    let inputs = HashMap::from([
        (
            "input_ids".to_string(),
            Tensor::from_vec(input_ids, (b, t), &Device::Cpu).unwrap(),
        ),
        (
            "labels".to_string(),
            Tensor::from_vec(labels, (b, t), &Device::Cpu).unwrap(),
        ),
        ("pixel_values".to_string(), Tensor::cat(&px, 0).unwrap()),
    ]);
    let inputs_path = tmp.join("inputs.safetensors");
    candle_core::safetensors::save(&inputs, &inputs_path).unwrap();
    let script = workspace().join("tools/train_bench/bench.py");
    let py_threads = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| "2".into());
    let python = std::process::Command::new(&a.python)
        .arg(&script)
        .args(["--model".as_ref(), model_dir.as_os_str()])
        .args(["--inputs".as_ref(), inputs_path.as_os_str()])
        .args([
            "--k",
            &a.k.to_string(),
            "--steps",
            &a.steps.to_string(),
            "--warmup",
            &a.warmup.to_string(),
            "--threads",
            &py_threads,
        ])
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output();
    let torch: Option<serde_json::Value> = match python {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok()),
        Ok(out) => {
            eprintln!("python failed: {}", String::from_utf8_lossy(&out.stderr));
            None
        }
        Err(e) => {
            eprintln!("python not run ({}): {e}", a.python.display());
            None
        }
    };
    let torch_s = torch
        .as_ref()
        .and_then(|v| v["seconds_per_step_median"].as_f64());
    println!("train_step bench: model `{}`, batch {b} x {t} tokens, k {}, threads {threads}, load before: {}", model_dir.display(), a.k, load.trim());
    let rows = [
        (
            "rust, whole sequence with gradients (reference layout)",
            rust_whole,
        ),
        ("rust, prefix recomputed without gradients", rust_recomputed),
        ("rust, prefix kept (default)", rust_kept),
        ("rust, vision tower and prefix every step", rust_cold),
    ];
    for (label, secs) in rows {
        match torch_s {
            Some(p) => println!("  {label:<56} {secs:.4} s/step  ({:.2}x pytorch)", p / secs),
            None => println!("  {label:<56} {secs:.4} s/step"),
        }
    }
    match torch_s {
        Some(s) => println!("  {:<56} {s:.4} s/step", "pytorch reference"),
        None => println!("  pytorch reference: not measured"),
    }
    println!(
        "{}",
        serde_json::json!({
            "model": model_dir.display().to_string(), "batch": b, "seq_len": t, "k": a.k,
            "rust_whole": rust_whole, "rust_prefix_recomputed": rust_recomputed,
            "rust_prefix_kept": rust_kept, "rust_cold": rust_cold, "pytorch": torch_s,
            "load": load.trim(),
        })
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
