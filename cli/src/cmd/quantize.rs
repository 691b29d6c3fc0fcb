//! `concepts quantize`: a copy of a base model folder with its linear layers quantized.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use concepts_runtime::quant::{quantize_model, QuantFormat};
use indicatif::{ProgressBar, ProgressStyle};

use crate::ctx::Ctx;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// llava-hf model folder to quantize (f32, f16 or bf16 safetensors) [default:
    /// $CONCEPTS_DEFAULT_MODEL, else the embedded toy model]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// q8_0 (8.5 bits per weight) or q4k (llama.cpp's Q4_K_M: Q4_K, 4.5 bits per weight, with
    /// Q6_K for the value and down projections of half the decoder layers)
    #[arg(long, value_name = "FORMAT", value_parser = ["q8_0", "q4k"])]
    pub format: String,
    /// The new model folder (must not exist); every command loads it with `--model OUT`
    #[arg(short = 'o', long = "out", value_name = "OUT")]
    pub out: PathBuf,
}

pub fn run(args: QuantizeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let format: QuantFormat = args.format.parse()?;
    let model = crate::ctx::model_dir(args.model.as_deref(), ctx)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("quantizing {bar:30} {pos}/{len} tensors")
            .expect("a valid template"),
    );
    let report = quantize_model(&model, format, &args.out, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("quantizing `{}` to {format}", model.display()))?;
    bar.finish_and_clear();
    let gb = |b: u64| b as f64 / 1e9;
    println!(
        "wrote `{}`: {} linear matrices in {format}{}{}{}, {} tensors kept as stored; \
         {:.3} GB of weights -> {:.3} GB",
        args.out.display(),
        report.quantized,
        match report.six_bit {
            0 => String::new(),
            n => format!(" ({n} of them in q6_k)"),
        },
        match report.padded {
            0 => String::new(),
            n => format!(" ({n} padded to whole blocks)"),
        },
        if report.lm_head_q8_0 {
            ", the LM head in q8_0 too"
        } else {
            ""
        },
        report.kept,
        gb(report.source_bytes),
        gb(report.output_bytes),
    );
    Ok(())
}
