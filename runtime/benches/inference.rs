//! Inference benchmark of the runtime on a llava-hf checkpoint (by default the committed parity
//! fixture `tests/fixtures/parity/model`), the Rust half of `tools/bench/run.sh`, which runs
//! `tools/bench/bench_transformers.py` on the same checkpoint, prompt and image and prints the
//! ratios. Not a test: it asserts nothing about speed.
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo bench -p concepts-runtime --bench inference -- --out rust.json
//! ```
//!
//! Options (after `--`; each also reads an environment variable):
//!
//! * `--out PATH` / `BENCH_OUT`: write the results as JSON (the format `tools/bench/report.py`
//!   reads); the Markdown table always goes to stdout.
//! * `--model DIR` / `BENCH_MODEL`: llava-hf model directory (default: the parity fixture).
//! * `--image FILE` / `BENCH_IMAGE`: the image (default: the fixture's `logo.png`, which the
//!   runtime decodes bit-exactly like PIL, so both sides generate the same tokens).
//! * `--decode-tokens N` / `BENCH_DECODE_TOKENS` (default 32), `--scale F` / `BENCH_SCALE`
//!   (multiplies every repetition count, default 1).
//!
//! What is timed (each a warm-up, then `n` repetitions; median and minimum reported):
//!
//! * `load`: [`Engine::load`] (config, memory-mapped weights, tokenizer, preprocessor config).
//! * `preprocess`: decode the image file, resize, crop, normalise.
//! * `prefill`: the standard chat prompt (`llava_v1` template, no concept) with one image, from
//!   text and pixel values to the first generated token: tokenize, expand `<image>`, vision
//!   tower + projector, embed, decoder over every position filling a KV cache, LM head on the
//!   last position, argmax.
//! * `prefill.vision`, `prefill.decoder`: its two big parts, vision tower + projector on the
//!   pixel tensor, and the decoder over the embedded prompt (cache filled, last logits).
//! * `decode`: `N` more greedy tokens after the prefill, one decoder step each over the KV
//!   cache (embed, decoder, LM head, argmax). Reported as time per `N` tokens and tokens/s.
//! * `generate`: [`Engine::generate`] end to end: prefill plus `N` decode steps (`N + 1`
//!   tokens), with text streaming.
//! * `activate` / `deactivate`: [`Engine::activate`] and [`Engine::deactivate`] of a concept with
//!   k = 16 latent tokens (concept table update and tokenizer-copy rebuild).
//! * `activate_package`: [`ConceptPackage::parse`] of the `.ycpt` bytes plus
//!   [`Engine::activate_package`] (template and fingerprint check; the model fingerprint is
//!   computed once before timing, as a long-running engine caches it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, IndexOp, Tensor};
use concept_format::{Category, ConceptPackage, ConceptTensors, Manifest};
use concepts_runtime::generate::{GenerateConfig, Sampling};
use concepts_runtime::preprocess::preprocess_file;
use concepts_runtime::prompt::TEMPLATE_ID;
use concepts_runtime::session::Engine;
use concepts_runtime::{ConceptWeights, Kernels};
use serde_json::{json, Value};

mod common;

use common::{decode, prefill, BenchResult};

/// The allocator the `concepts` binary uses (see cli/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The question of the chat prompt (the `llava_v1` template wraps it).
const QUESTION: &str = "What is in the image?";
/// Latent tokens of the benchmark concept.
const K: usize = 16;

struct Options {
    out: Option<PathBuf>,
    model: PathBuf,
    image: PathBuf,
    decode_tokens: usize,
    scale: f64,
}

impl Options {
    fn parse() -> BenchResult<Self> {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut out = env("BENCH_OUT");
        let mut model = env("BENCH_MODEL");
        let mut image = env("BENCH_IMAGE");
        let mut decode = env("BENCH_DECODE_TOKENS");
        let mut scale = env("BENCH_SCALE");
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let slot = match arg.as_str() {
                "--out" => &mut out,
                "--model" => &mut model,
                "--image" => &mut image,
                "--decode-tokens" => &mut decode,
                "--scale" => &mut scale,
                // `cargo bench` passes `--bench`; ignore it and libtest-style filters.
                _ => continue,
            };
            *slot = Some(args.next().ok_or(format!("{arg} needs a value"))?);
        }
        Ok(Options {
            out: out.map(PathBuf::from),
            model: model.map_or_else(|| fixture.join("model"), PathBuf::from),
            image: image.map_or_else(|| fixture.join("images/logo.png"), PathBuf::from),
            decode_tokens: decode.map_or(Ok(32), |v| v.parse())?,
            scale: scale.map_or(Ok(1.0), |v| v.parse())?,
        })
    }

    /// `n` scaled, at least 3.
    fn reps(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(3)
    }
}

/// Timings of one measurement.
struct Samples {
    name: &'static str,
    times: Vec<Duration>,
}

impl Samples {
    fn sorted(&self) -> Vec<f64> {
        let mut s: Vec<f64> = self.times.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        s
    }

    fn median(&self) -> f64 {
        let s = self.sorted();
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    }

    fn min(&self) -> f64 {
        self.sorted()[0]
    }

    fn json(&self) -> Value {
        json!({
            "median_s": self.median(),
            "min_s": self.min(),
            "n": self.times.len(),
            "samples_s": self.sorted(),
        })
    }
}

/// Runs `f` `warmup` times untimed, then `n` times timed. `f` returns the duration of the
/// part it wants timed, so that per-repetition setup stays outside.
fn measure(
    name: &'static str,
    warmup: usize,
    n: usize,
    mut f: impl FnMut() -> BenchResult<Duration>,
) -> BenchResult<Samples> {
    for _ in 0..warmup {
        f()?;
    }
    let times = (0..n).map(|_| f()).collect::<BenchResult<Vec<_>>>()?;
    Ok(Samples { name, times })
}

/// Times a closure whose whole body is the measured work.
fn timed<T>(f: impl FnOnce() -> BenchResult<T>) -> BenchResult<(T, Duration)> {
    let start = Instant::now();
    let out = f()?;
    Ok((out, start.elapsed()))
}

/// A concept of width `d` with k = [`K`] latents and fixed pseudo-random values.
fn concept_values(d: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let v = |offset: usize, len: usize| -> Vec<f32> {
        (0..len)
            .map(|i| (((i + offset) * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5)
            .collect()
    };
    (v(0, d), v(d, K * d), v((K + 1) * d, d))
}

/// The bytes of a `.ycpt` package of the concept for the loaded model.
fn package_bytes(engine: &mut Engine) -> BenchResult<Vec<u8>> {
    let d = engine.model().config().text.hidden_size;
    let (identifier, latents, head) = concept_values(d);
    let tensors =
        ConceptTensors::from_f32(concept_format::DType::F32, K, d, identifier, latents, head)?;
    let manifest = Manifest {
        name: "bench".into(),
        identifier: "<bench>".into(),
        display_name: "Bench".into(),
        category: Category::Pet,
        k: K as u32,
        d: d as u32,
        dtype: concept_format::DType::F32,
        base_model: engine.fingerprint()?.clone(),
        prompt_template: TEMPLATE_ID.into(),
        provenance: None,
        user_facts: vec![],
        relations: vec![],
        license: "CC0-1.0".into(),
        created: "2025-01-01T00:00:00Z".into(),
        body_sha256: String::new(),
        ext: Default::default(),
    };
    Ok(ConceptPackage::new(manifest, tensors)?.to_bytes())
}

fn loadavg() -> Value {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let v: Vec<f64> = s
                .split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 3).then(|| json!(v))
        })
        .unwrap_or(Value::Null)
}

fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn main() -> BenchResult<()> {
    let opts = Options::parse()?;
    let threads = candle_core::utils::get_num_threads();
    let load_before = loadavg();
    let device = Device::Cpu;
    let n_decode = opts.decode_tokens;
    eprintln!(
        "bench: model {}, image {}, {threads} thread(s), {n_decode} decode tokens",
        opts.model.display(),
        opts.image.display()
    );

    let load = measure("load", 1, opts.reps(5), || {
        Ok(timed(|| Ok(Engine::load(&opts.model, &device, DType::F32)?))?.1)
    })?;
    let mut engine = Engine::load(&opts.model, &device, DType::F32)?;
    let preprocess = measure("preprocess", 2, opts.reps(20), || {
        Ok(timed(|| Ok(preprocess_file(&opts.image, engine.preprocess_config())?))?.1)
    })?;
    let pixels = preprocess_file(&opts.image, engine.preprocess_config())?;
    let prompt = engine.chat_prompt(QUESTION, Some(pixels));
    let prompt_ids = engine.embed_prompt(&prompt)?.ids;

    let prefill_s = measure("prefill", 3, opts.reps(30), || {
        Ok(timed(|| prefill(&engine, &prompt, engine.model().kv_cache()))?.1)
    })?;
    // The two halves of the prefill.
    let model = engine.model();
    let pixel_tensor = prompt.images[0].to_tensor(&device)?;
    let vision = measure("prefill.vision", 3, opts.reps(30), || {
        Ok(timed(|| Ok(model.image_features(&pixel_tensor, Kernels::Fast)?))?.1)
    })?;
    let embedded = engine.embed_prompt(&prompt)?.embeds.unsqueeze(0)?;
    let decoder = measure("prefill.decoder", 3, opts.reps(30), || {
        let run = || -> BenchResult<Tensor> {
            let mut cache = model.kv_cache();
            let hidden = model.forward_embeds(&embedded, Some(&mut cache), Kernels::Fast)?;
            let t = hidden.dim(1)?;
            Ok(engine.concepts().logits(model, &hidden.i((0, t - 1..t))?)?)
        };
        Ok(timed(run)?.1)
    })?;

    let mut greedy_ids = Vec::new();
    let decode_s = measure("decode", 2, opts.reps(15), || {
        let (mut cache, first) = prefill(&engine, &prompt, engine.model().kv_cache())?;
        let (ids, time) = timed(|| decode(&engine, &mut cache, first, n_decode))?;
        greedy_ids = std::iter::once(first).chain(ids).collect();
        Ok(time)
    })?;

    let cfg = GenerateConfig {
        max_tokens: n_decode + 1,
        sampling: Sampling::Greedy,
        stop_ids: Vec::new(),
        prompt_logits: false,
    };
    let mut generated_ids = Vec::new();
    let generate_s = measure("generate", 1, opts.reps(10), || {
        let (out, time) = timed(|| Ok(engine.generate(&prompt, &cfg, &mut |_| {})?))?;
        generated_ids = out.generated_ids;
        Ok(time)
    })?;
    if generated_ids != greedy_ids {
        return Err(format!(
            "Engine::generate gave {generated_ids:?}, the decode loop {greedy_ids:?}"
        )
        .into());
    }

    let d = engine.model().config().text.hidden_size;
    let (identifier, latents, head) = concept_values(d);
    let weights = ConceptWeights::new(
        Tensor::from_vec(identifier, d, &device)?,
        Tensor::from_vec(latents, (K, d), &device)?,
        Tensor::from_vec(head, d, &device)?,
    )?;
    let mut deactivate_times = Vec::new();
    let activate = measure("activate", 20, opts.reps(300), || {
        let w = weights.clone();
        let ((), on) = timed(|| Ok(engine.activate("bo", "<bo>", w)?))?;
        let ((), off) = timed(|| Ok(engine.deactivate("bo")?))?;
        deactivate_times.push(off);
        Ok(on)
    })?;
    let deactivate = Samples {
        name: "deactivate",
        times: deactivate_times.split_off(20),
    };
    // The activated concept's markers tokenize to its ids (checked once, untimed).
    engine.activate("bo", "<bo>", weights.clone())?;
    let marker_ids = engine.codec().encode("<bo> is <bo:1><bo:16>.", false)?;
    let (base, ident) = (
        engine.concepts().base_vocab() as u32,
        engine.concepts().identifier_id("bo"),
    );
    if ident != Some(base)
        || !marker_ids.contains(&(base + 1))
        || !marker_ids.contains(&(base + 16))
    {
        return Err(format!("concept markers tokenized to {marker_ids:?}").into());
    }
    engine.deactivate("bo")?;

    let bytes = package_bytes(&mut engine)?;
    let activate_package = measure("activate_package", 20, opts.reps(300), || {
        let ((), on) = timed(|| {
            let package = ConceptPackage::parse(&bytes)?;
            Ok(engine.activate_package(&package)?)
        })?;
        engine.deactivate("bench")?;
        Ok(on)
    })?;

    let all = [
        &load,
        &preprocess,
        &prefill_s,
        &vision,
        &decoder,
        &decode_s,
        &generate_s,
        &activate,
        &deactivate,
        &activate_package,
    ];
    let load_after = loadavg();

    println!(
        "\n### concepts-runtime {} (candle, f32), {threads} thread(s)\n",
        env!("CARGO_PKG_VERSION")
    );
    println!("| measurement | median | min | n |\n| --- | ---: | ---: | ---: |");
    for s in all {
        println!(
            "| {} | {} | {} | {} |",
            s.name,
            fmt_time(s.median()),
            fmt_time(s.min()),
            s.times.len()
        );
    }
    println!(
        "\nprompt: {} tokens; decode: {:.1} tokens/s (median), {:.1} (best); load average {} -> {}",
        prompt_ids.len(),
        n_decode as f64 / decode_s.median(),
        n_decode as f64 / decode_s.min(),
        load_before,
        load_after
    );

    if let Some(path) = &opts.out {
        let metrics: serde_json::Map<String, Value> =
            all.iter().map(|s| (s.name.to_string(), s.json())).collect();
        let report = json!({
            "implementation": "concepts-runtime",
            "versions": {"concepts-runtime": env!("CARGO_PKG_VERSION")},
            "threads": threads,
            "dtype": "f32",
            "model": opts.model.display().to_string(),
            "image": opts.image.display().to_string(),
            "question": QUESTION,
            "prompt": prompt.text,
            "prompt_tokens": prompt_ids.len(),
            "prompt_ids": prompt_ids,
            "decode_tokens": n_decode,
            "generated_ids": greedy_ids,
            "concept_k": K,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "metrics": metrics,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}
