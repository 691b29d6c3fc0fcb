//! One pass at real scale: load a (possibly quantized) LLaVA-1.5-7B-shaped checkpoint, encode
//! one image, prefill the chat prompt, decode `N` greedy tokens, and report each time and the
//! peak resident memory, as JSON on stdout. Each step runs once (a 7B prefill on a laptop CPU
//! takes a minute); `tools/real_scale/bench.sh` runs it per format next to transformers and
//! llama.cpp. Not a test: it asserts nothing about speed.
//!
//! ```sh
//! cargo bench -p concepts-runtime --bench real_scale -- --model /tmp/llava7b-q4k \
//!     --image photo.png --decode-tokens 16 [--dtype f16] [--kv-cache f32|f16]
//! ```
//!
//! `--kv-cache` overrides the dtype the key/value cache keeps (by default the model's choice,
//! `LlavaModel::kv_storage`: f16 for an f32 computation over quantized weights).
//! `CONCEPTS_AMX=0` keeps prefills of quantized layers off the AMX tiles, as for `concepts`.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use concepts_runtime::preprocess::preprocess_file;
use concepts_runtime::session::Engine;
use concepts_runtime::{Kernels, KvCache};
use serde_json::json;

mod common;

use common::{decode, prefill, BenchResult};

/// The allocator the `concepts` binary uses (see cli/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> BenchResult<()> {
    let mut model = None;
    let mut image = None;
    let mut dtype = DType::F32;
    let mut decode_tokens = 16usize;
    let mut kv_cache = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--image" => image = Some(PathBuf::from(value()?)),
            "--decode-tokens" => decode_tokens = value()?.parse()?,
            "--dtype" => {
                dtype = match value()?.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => return Err(format!("--dtype {other}").into()),
                }
            }
            "--kv-cache" => {
                kv_cache = Some(match value()?.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    other => return Err(format!("--kv-cache {other}").into()),
                })
            }
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if std::env::var("CONCEPTS_AMX").is_ok_and(|v| v == "0") {
        concepts_runtime::model::disable_amx_tiles();
    }
    let model_dir = model.ok_or("--model DIR is required")?;
    let image = image.ok_or("--image FILE is required")?;
    let device = Device::Cpu;

    let t = Instant::now();
    let engine = Engine::load(&model_dir, &device, dtype)?;
    let load_s = t.elapsed().as_secs_f64();
    let rss_loaded = peak_rss_bytes();

    let model = engine.model();
    let pixels = preprocess_file(&image, engine.preprocess_config())?;
    let prompt = engine.chat_prompt("What is in the image?", Some(pixels));
    let pixel_tensor = prompt.images[0].to_tensor(&device)?;
    let t = Instant::now();
    model.image_features(&pixel_tensor, Kernels::Fast)?;
    let image_s = t.elapsed().as_secs_f64();

    // The whole prefill: text and pixels to the first token (the vision tower again included).
    let t = Instant::now();
    let cache = match kv_cache {
        Some(kv) => KvCache::new(model.config()).storing((kv != dtype).then_some(kv)),
        None => model.kv_cache(),
    };
    let kv_dtype = cache.storage().unwrap_or(dtype);
    let (mut cache, first) = prefill(&engine, &prompt, cache)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let positions = cache.len();

    let t = Instant::now();
    let ids: Vec<u32> = std::iter::once(first)
        .chain(decode(&engine, &mut cache, first, decode_tokens)?)
        .collect();
    let decode_s = t.elapsed().as_secs_f64();

    let report = json!({
        "runtime": "concepts",
        "model": model_dir.display().to_string(),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "quantized": concepts_runtime::quant::folder_format(&model_dir)?.map(|f| f.to_string()),
        "kv_cache": format!("{kv_dtype:?}").to_lowercase(),
        "threads": candle_core::utils::get_num_threads(),
        "load_s": load_s,
        "image_s": image_s,
        "prompt_positions": positions,
        "prefill_s": prefill_s,
        "decode_tokens": decode_tokens,
        "decode_s": decode_s,
        "decode_tokens_per_s": decode_tokens as f64 / decode_s,
        "peak_rss_after_load_bytes": rss_loaded,
        "peak_rss_bytes": peak_rss_bytes(),
        "ids": ids,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `VmHWM` of /proc/self/status: the peak resident set, in bytes (0 where unavailable).
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
