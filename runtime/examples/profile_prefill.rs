//! One half of a prefill in a loop, to run under a profiler: the vision tower + projector
//! (default) or the decoder over the chat prompt with one image + the last position's logits
//! (`--decoder`), on a llava-hf model folder, f32, the thread count from `RAYON_NUM_THREADS`.
//!
//! ```sh
//! cargo build --release -p concepts-runtime --example profile_prefill
//! P=runtime/tests/fixtures/parity
//! RAYON_NUM_THREADS=2 perf record -o vision.perf \
//!     target/release/examples/profile_prefill $P/model $P/images/logo.png 2000
//! perf report -i vision.perf --no-children --stdio | head -40
//! ```
//!
//! It prints the time of the first call (fresh buffers, the kernels' first use) and the
//! median and minimum of the iterations after it; the side-by-side comparison with
//! transformers is `tools/bench/run.sh` (`docs/benchmarks.md`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp};
use concepts_runtime::preprocess::preprocess_file;
use concepts_runtime::session::Engine;
use concepts_runtime::Kernels;

// As the CLI and the benches: the allocator changes small-op timings.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let decoder = args.iter().any(|a| a == "--decoder");
    args.retain(|a| a != "--decoder");
    let [model, image, iterations] = args.as_slice() else {
        bail!("usage: profile_prefill MODEL_DIR IMAGE ITERATIONS [--decoder]");
    };
    let iterations: usize = iterations.parse().context("ITERATIONS must be a number")?;
    let device = Device::Cpu;
    let engine = Engine::load(&PathBuf::from(model), &device, DType::F32)?;
    let pixels = preprocess_file(&PathBuf::from(image), engine.preprocess_config())?;
    let (engine, model) = (&engine, engine.model());
    let mut run: Box<dyn FnMut() -> Result<()>> = if decoder {
        let prompt = engine.chat_prompt("What is in the image?", Some(pixels));
        let embedded = engine.embed_prompt(&prompt)?.embeds.unsqueeze(0)?;
        Box::new(move || {
            let mut cache = model.kv_cache();
            let hidden = model.forward_embeds(&embedded, Some(&mut cache), Kernels::Fast)?;
            let t = hidden.dim(1)?;
            engine.concepts().logits(model, &hidden.i((0, t - 1..t))?)?;
            Ok(())
        })
    } else {
        let pixels = pixels.to_tensor(&device)?;
        Box::new(move || {
            model.image_features(&pixels, Kernels::Fast)?;
            Ok(())
        })
    };
    let start = Instant::now();
    run()?;
    let first = start.elapsed().as_secs_f64();
    let mut seconds = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let start = Instant::now();
        run()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    let part = if decoder { "decoder" } else { "vision tower" };
    println!(
        "{part}: first call {:.3} ms, then median {:.3} ms, min {:.3} ms over {} iterations",
        first * 1e3,
        seconds[seconds.len() / 2] * 1e3,
        seconds[0] * 1e3,
        seconds.len()
    );
    Ok(())
}
