//! `concepts run [--model DIR] [--image FILE] [--concept NAME]... [--raw-prompt] --prompt TEXT
//! [--max-tokens N] [--temperature T] [--top-p P] [--seed S] [--logits-out OUT.safetensors]`
//!
//! Every `--concept` is introduced with its personal prompt, mentioned or not.
//!
//! This command line is a contract: outside parity checks run it. The answer is streamed to
//! stdout; `--logits-out` writes `logits` (f32 `[T, V + n]`, every prompt position),
//! `input_ids` (i64 `[T]`, each `<image>` expanded to one id per image feature) and, when
//! tokens were generated, `generated_ids` (i64 `[N]`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use concepts_runtime::generate::{GenerateConfig, Generation, Sampling};
use concepts_runtime::preprocess::preprocess_file;
use concepts_runtime::prompt::PersonalPrompts;
use concepts_runtime::session::{Engine, PromptInput};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// llava-hf model directory (config.json, *.safetensors, tokenizer.json,
    /// preprocessor_config.json) [default: $CONCEPTS_DEFAULT_MODEL, else the embedded toy model]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Image to ask about (JPEG, PNG or WebP)
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Activate an installed concept (name or identifier); repeatable
    #[arg(long = "concept", value_name = "NAME")]
    pub concepts: Vec<String>,
    /// Use --prompt verbatim: no system text or chat template, `<image>` marks the image
    #[arg(long)]
    pub raw_prompt: bool,
    /// The question (or, with --raw-prompt, the whole prompt)
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// Most tokens to generate
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass (with a temperature above 0)
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampling seed
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Pad the image to a square with the mean colour first (original LLaVA-1.5 `pad` mode)
    #[arg(long)]
    pub pad_to_square: bool,
    /// Write prompt logits, input ids and generated ids to this safetensors file
    #[arg(long, value_name = "OUT.safetensors")]
    pub logits_out: Option<PathBuf>,
}

pub fn run(args: RunArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let sampling = Sampling::from_temperature(args.temperature, args.top_p, args.seed)?;
    if let Some(path) = &args.logits_out {
        crate::files::check_output(path, ctx)?;
    }
    let model = crate::ctx::model_dir(args.model.as_deref())?;
    let mut engine = Engine::load(&model, &Device::Cpu, DType::F32)
        .with_context(|| format!("loading model `{}`", model.display()))?;
    if !args.concepts.is_empty() {
        let registry = ctx.registry()?;
        for name in &args.concepts {
            let (_, package) = registry
                .load(name)
                .with_context(|| format!("loading concept `{name}`"))?;
            engine
                .activate_package(&package)
                .with_context(|| format!("activating concept `{name}`"))?;
        }
    }
    // `--concept` names the concepts this prompt is about: every one is introduced, as in
    // the reference layout that the parity checks compare against.
    engine.set_personal_prompts(PersonalPrompts::All);
    let image = match &args.image {
        Some(path) => {
            let config = engine
                .preprocess_config()
                .clone()
                .with_pad_to_square(args.pad_to_square || engine.preprocess_config().pad_to_square);
            Some(preprocess_file(path, &config)?)
        }
        None => None,
    };
    let prompt = if args.raw_prompt {
        PromptInput {
            text: args.prompt.clone(),
            images: image.into_iter().collect(),
        }
    } else {
        engine.chat_prompt(&args.prompt, image)
    };
    let cfg = GenerateConfig {
        max_tokens: args.max_tokens,
        sampling,
        stop_ids: engine.stop_ids(),
        prompt_logits: args.logits_out.is_some(),
    };
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    let generation = engine.generate(&prompt, &cfg, &mut |text| {
        if write_error.is_none() {
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                write_error = Some(e);
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    writeln!(out)?;
    if let Some(path) = &args.logits_out {
        write_logits(path, &generation).with_context(|| format!("writing `{}`", path.display()))?;
    }
    Ok(())
}

fn write_logits(path: &Path, generation: &Generation) -> anyhow::Result<()> {
    let Some((logits, shape)) = generation.prompt_logits_f32()? else {
        bail!("the prompt logits were not computed");
    };
    let logits: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let ids = |ids: &[u32]| -> Vec<u8> {
        ids.iter()
            .flat_map(|&i| i64::from(i).to_le_bytes())
            .collect()
    };
    let input_ids = ids(&generation.prompt_ids);
    let generated_ids = ids(&generation.generated_ids);
    let mut tensors = vec![
        (
            "logits",
            TensorView::new(Dtype::F32, shape.to_vec(), &logits)?,
        ),
        (
            "input_ids",
            TensorView::new(Dtype::I64, vec![generation.prompt_ids.len()], &input_ids)?,
        ),
    ];
    if !generation.generated_ids.is_empty() {
        tensors.push((
            "generated_ids",
            TensorView::new(
                Dtype::I64,
                vec![generation.generated_ids.len()],
                &generated_ids,
            )?,
        ));
    }
    let bytes = safetensors::serialize(tensors, None)?;
    concepts_fs::write_atomic(path, &bytes)?;
    Ok(())
}
