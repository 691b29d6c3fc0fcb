//! `concepts run [--model DIR] [--image FILE] [--concept NAME]... [--raw-prompt] --prompt TEXT
//! [--max-tokens N] [--temperature T] [--top-p P] [--seed S] [--logits-out OUT.safetensors]
//! [--json]`
//!
//! Every `--concept` is introduced with its personal prompt, mentioned or not; a concept whose
//! identifier the prompt mentions is activated too. The model is reached through the same
//! front door as `scan`, `serve` and the bindings (`api::Runtime`, with its limits). The
//! recognition question about one concept ("Is <bo> in this photo?", with `--image`) is
//! answered by the p(Yes)/p(No) read-out that `scan` and the server use, not by generation.
//!
//! This command line is a contract: outside parity checks run it. The answer is streamed to
//! stdout; `--logits-out` writes `logits` (f32 `[T, V + n]`, every prompt position),
//! `input_ids` (i64 `[T]`, each `<image>` expanded to one id per image feature) and, when
//! tokens were generated, `generated_ids` (i64 `[N]`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use concepts_runtime::api::{
    ChatEvent, ChatMessage, ChatRequest, ChatSummary, FinishReason, ImageInput, PersonalPrompts,
    PromptFormat, Runtime, RuntimeConfig,
};
use concepts_runtime::generate::Sampling;
use concepts_server::RegistrySource;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

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
    /// Print the answer as JSON (with p(Yes) / p(No) for a recognition question)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: crate::ctx::ComputeArgs,
}

pub fn run(args: RunArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let sampling = Sampling::from_temperature(args.temperature, args.top_p, args.seed)?;
    if let Some(path) = &args.logits_out {
        crate::files::check_output(path, ctx)?;
    }
    let model = crate::ctx::model_dir(args.model.as_deref(), ctx)?;
    let source = Arc::new(RegistrySource::new(ctx.registry()?));
    let config = RuntimeConfig {
        pad_to_square: args.pad_to_square,
        compute: args.compute.resolve()?,
        ..RuntimeConfig::recommended()
    };
    let runtime = Runtime::load(&model, source, config)
        .with_context(|| format!("loading model `{}`", model.display()))?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let image = args.image.clone().map(ImageInput::File);
    // The recognition question gets the read-out every other door gives it. The trace of
    // `--logits-out` and a raw prompt are about the prompt as written, so they generate.
    let recognition = match (&image, args.raw_prompt, &args.logits_out) {
        (Some(_), false, None) => runtime.config().recognition_subject(&args.prompt),
        _ => None,
    };
    if let (Some(identifier), Some(image)) = (recognition, image.clone()) {
        let score = tokio
            .block_on(runtime.recognise(image, &identifier))
            .with_context(|| format!("asking whether `{identifier}` is in the photo"))?;
        let answer = if score.present() { "Yes" } else { "No" };
        let mut out = std::io::stdout().lock();
        if args.json {
            let doc = json!({
                "model": runtime.model_id(),
                "answer": answer,
                "recognition": concepts_server::score_json(&score),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        } else {
            writeln!(
                out,
                "{answer} (p(Yes) = {:.4}, p(No) = {:.4})",
                score.p_yes, score.p_no
            )?;
        }
        return Ok(());
    }
    let mut message = ChatMessage::user(args.prompt.clone());
    message.images.extend(image);
    let request = ChatRequest {
        concepts: args.concepts.clone(),
        // `--concept` names the concepts this prompt is about: every one is introduced, as in
        // the reference layout that the parity checks compare against.
        personal_prompts: PersonalPrompts::All,
        sampling,
        format: if args.raw_prompt {
            PromptFormat::Raw
        } else {
            PromptFormat::Chat
        },
        prompt_logits: args.logits_out.is_some(),
        ..ChatRequest::new(vec![message], args.max_tokens)
    };
    let summary = tokio.block_on(async {
        let mut stream = runtime.chat(request).await?;
        let mut out = std::io::stdout().lock();
        while let Some(event) = stream.next().await {
            match event? {
                // With --json the answer is printed whole at the end.
                ChatEvent::Text(piece) if !args.json => {
                    out.write_all(piece.as_bytes())?;
                    out.flush()?;
                }
                ChatEvent::Text(_) => {}
                ChatEvent::Done(summary) => return anyhow::Ok(summary),
            }
        }
        bail!("the generation ended without an answer")
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = json!({
            "model": runtime.model_id(),
            "answer": summary.text,
            "finish": match summary.finish {
                FinishReason::Stop => "stop",
                FinishReason::Length => "length",
                FinishReason::Cancelled => "cancelled",
            },
            "prompt_tokens": summary.prompt_tokens,
            "completion_tokens": summary.completion_tokens,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(out)?;
    }
    if let Some(path) = &args.logits_out {
        write_logits(path, &summary).with_context(|| format!("writing `{}`", path.display()))?;
    }
    Ok(())
}

fn write_logits(path: &Path, generation: &ChatSummary) -> anyhow::Result<()> {
    let Some((logits, shape)) = &generation.prompt_logits else {
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
