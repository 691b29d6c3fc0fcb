//! `concepts demo [--dir DIR] [--model DIR] [--epochs N] [--seed S]`
//!
//! The README's first command. Builds nothing that is committed: it draws two toy subjects
//! (`<bo>` and a second one), renders their photos, a negative pool and two-subject photos
//! with `toy-world`, trains both concepts through the real pipeline, writes `bo.ycpt`,
//! installs both into the registry, asks `<bo>` questions with and without an image and
//! together with the second concept, and prints the recognition table.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use concept_format::ConceptPackage;
use concept_registry::{InstallOptions, InstallOutcome, Registry};
use concepts_eval::{read_dataset, EvalConfig, LatentInit, TrainingConfig};
use concepts_runtime::api::{ChatMessage, ChatRequest, ImageInput, Runtime, RuntimeConfig};
use concepts_server::RegistrySource;
use rand::SeedableRng;
use serde_json::json;
use toy_world::{
    choose_subjects, encode_png, generic_scene, group_photo, intrinsic_choice, lookalike,
    photo_in_tone, photo_of, render, Attribute, Combo, ImageSize, Member, Sizing, Subject,
};

use crate::cmd::eval::{cancel_on_ctrl_c, EvalBars};
use crate::ctx::Ctx;

/// The demo's main subject.
const BO: &str = "bo";
/// Photos per subject for training and for the recognition table.
const TRAIN_PHOTOS: usize = 5;
const TEST_PHOTOS: usize = 6;
const GENERIC_NEGATIVES: usize = 40;
const LOOKALIKES_PER_SUBJECT: usize = 10;
const PAIR_PHOTOS: usize = 4;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Work folder for photos, packages and reports [default: a new folder under the system
    /// temp dir]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// llava-hf base model folder [default: CONCEPTS_DEFAULT_MODEL, else the embedded toy model]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Most training epochs per concept
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub epochs: u32,
    /// Latent tokens per concept
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// Which two subjects are drawn
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Writes `png` at `path`.
fn save(path: &Path, scene: &toy_world::Scene, size: ImageSize) -> anyhow::Result<()> {
    std::fs::write(path, encode_png(&render(scene, size)))
        .with_context(|| format!("writing `{}`", path.display()))
}

/// Writes the demo dataset (toy-world layout, see `concepts-eval`) into `data`.
fn write_world(
    data: &Path,
    subjects: &[Subject],
    seed: u64,
    size: ImageSize,
) -> anyhow::Result<()> {
    let avoid: Vec<Combo> = subjects.iter().map(|s| *s.combo()).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut entries = Vec::new();
    for s in subjects {
        let mut lists = [Vec::new(), Vec::new()];
        for (k, (split, n)) in [("train", TRAIN_PHOTOS), ("test", TEST_PHOTOS)]
            .into_iter()
            .enumerate()
        {
            let dir = data.join(s.name()).join(split);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating `{}`", dir.display()))?;
            for i in 0..n {
                save(
                    &dir.join(format!("{i:03}.png")),
                    &photo_in_tone(&mut rng, *s.combo(), s.tone(), &avoid),
                    size,
                )?;
                lists[k].push(format!("{}/{split}/{i:03}.png", s.name()));
            }
        }
        let [train, test] = lists;
        entries.push(json!({
            "name": s.name(), "description": s.description(), "train": train, "test": test,
        }));
    }
    let negatives = data.join("negatives");
    std::fs::create_dir_all(&negatives)?;
    for i in 0..GENERIC_NEGATIVES {
        save(
            &negatives.join(format!("g{i:03}.png")),
            &generic_scene(&mut rng, &avoid),
            size,
        )?;
    }
    for s in subjects {
        for i in 0..LOOKALIKES_PER_SUBJECT {
            let (look, _) = lookalike(&mut rng, s.combo(), &avoid);
            let path = negatives.join(format!("{}-{i:03}.png", s.name()));
            save(&path, &photo_of(&mut rng, look, &avoid), size)?;
        }
    }
    let write_json = |path: PathBuf, value: serde_json::Value| -> anyhow::Result<()> {
        std::fs::write(&path, serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("writing `{}`", path.display()))
    };
    let qa = data.join("qa");
    std::fs::create_dir_all(&qa)?;
    for s in subjects {
        let text: Vec<toy_world::Choice> = Attribute::ALL
            .iter()
            .filter_map(|&a| intrinsic_choice(&mut rng, toy_world::text::SKS, s.combo(), a))
            .collect();
        write_json(
            qa.join(format!("{}.json", s.name())),
            json!({"subject": s.name(), "text": text, "visual": []}),
        )?;
    }
    let multi = data.join("multi");
    std::fs::create_dir_all(&multi)?;
    let mut labels = Vec::new();
    for i in 0..PAIR_PHOTOS {
        let members = [&subjects[0], &subjects[1]].map(|s| Member {
            combo: *s.combo(),
            tone: s.tone(),
        });
        // Equal and unequal sizes in turn: the subject is not always the larger object.
        let sizing = if i % 2 == 0 {
            Sizing::Equal
        } else {
            Sizing::Unequal
        };
        let scene = group_photo(&mut rng, &members, sizing, &avoid);
        save(&multi.join(format!("{i:03}.png")), &scene, size)?;
        labels.push(json!({"image": format!("{i:03}.png"), "subjects": [subjects[0].name(), subjects[1].name()]}));
    }
    write_json(multi.join("labels.json"), json!(labels))?;
    write_json(
        data.join("subjects.json"),
        json!({"format": "concepts-toy-dataset", "version": 1, "seed": seed, "subjects": entries}),
    )
}

/// Installs `package`; an installed concept of the same name is replaced only when it looks
/// like an earlier demo's (same identifier and display name), never a user's own concept.
fn install(registry: &Registry, package: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let p = ConceptPackage::read_file(package)?;
    let m = p.manifest();
    let mut replace = false;
    if let Ok(entry) = registry.get(&m.name) {
        if entry.identifier == m.identifier && entry.summary.display_name == m.display_name {
            replace = true;
        } else {
            bail!(
                "a concept called `{}` is already installed and is not the demo's; remove it \
                 (`concepts remove {}`) or run the demo with another --home",
                m.name,
                m.name
            );
        }
    }
    let report = registry
        .install_file(
            package,
            &InstallOptions {
                replace,
                force: false,
            },
        )
        .with_context(|| format!("installing `{}`", package.display()))?;
    let verb = match (report.outcome, report.replaced.is_empty()) {
        (InstallOutcome::AlreadyInstalled, _) => "already installed",
        (InstallOutcome::Installed, true) => "installed",
        (InstallOutcome::Installed, false) => "installed (replacing an earlier demo's)",
    };
    writeln!(
        out,
        "{verb} {} sha256:{}",
        m.identifier,
        report.entry.sha256.short()
    )?;
    Ok(())
}

/// Greedy answer of `engine` to `question` (optionally about `image`); for a yes/no question
/// also p(Yes) and p(No).
/// Asks through the door every command uses (`api::Runtime`, as `concepts run` does): the
/// recognition question gets the p(Yes)/p(No) read-out, any other question a greedy answer
/// with `concepts` active.
fn answer(
    runtime: &Runtime,
    tokio: &tokio::runtime::Runtime,
    concepts: &[&str],
    question: &str,
    image: Option<&Path>,
) -> anyhow::Result<String> {
    let image = image.map(|p| ImageInput::File(p.to_path_buf()));
    let recognition = runtime.config().recognition_subject(question);
    if let (Some(identifier), Some(image)) = (recognition, image.clone()) {
        let s = tokio.block_on(runtime.recognise(image, &identifier))?;
        let answer = if s.present() { "Yes" } else { "No" };
        return Ok(format!(
            "{answer}   [p(Yes) {:.2}, p(No) {:.2}]",
            s.p_yes, s.p_no
        ));
    }
    let mut message = ChatMessage::user(question);
    message.images.extend(image);
    let request = ChatRequest {
        concepts: concepts.iter().map(|c| c.to_string()).collect(),
        ..ChatRequest::new(vec![message], 24)
    };
    let summary = tokio.block_on(async { runtime.chat(request).await?.collect().await })?;
    Ok(summary.text.trim().to_string())
}

pub fn run(args: DemoArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    let model = crate::ctx::model_dir(args.model.as_deref(), ctx)?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("concepts-demo-{}", std::process::id())),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("the demo folder `{}` is not empty", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let registry = ctx.registry()?;
    let mut out = std::io::stdout().lock();

    // 1. A toy world: <bo>, a second subject, a negative pool, two-subject photos.
    let drawn = choose_subjects(args.seed, 2)?;
    let bo = Subject::new(BO, *drawn[0].combo())?;
    let other = drawn[1].clone();
    let subjects = [bo, other];
    let source = Arc::new(RegistrySource::new(registry.clone()));
    let runtime = Runtime::load(&model, source, RuntimeConfig::recommended())
        .with_context(|| format!("loading the base model `{}`", model.display()))?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let px = runtime.model_config().vision.image_size as u32;
    let size = ImageSize::new(px).unwrap_or(ImageSize::DEFAULT);
    let data = dir.join("data");
    write_world(&data, &subjects, args.seed, size)?;
    writeln!(
        out,
        "concepts demo: base model `{}`, work folder `{}`",
        model.display(),
        dir.display()
    )?;
    for s in &subjects {
        writeln!(
            out,
            "  <{}> is {} ({TRAIN_PHOTOS} training photos)",
            s.name(),
            s.description()
        )?;
    }
    writeln!(out)?;
    out.flush()?;

    // 2. Train both concepts through the real pipeline and score them (concepts-eval).
    let dataset = read_dataset(&data)?;
    let cfg = EvalConfig {
        model: model.clone(),
        compute: concepts_runtime::Compute::cpu(),
        work_dir: dir.clone(),
        pool_cache: Some(dir.join("pool-embeddings")),
        negatives: None,
        training: TrainingConfig {
            epochs: args.epochs,
            k: args.k,
            learning_rate: 1e-3,
            seed: 0,
            questions_per_image: 7,
            hard_per_positive: Some(4),
            easy_negatives: 20,
            crowded_views: concepts_trainer::views::DEFAULT_CROWDED_VIEWS,
            crowded_style: Default::default(),
            init: LatentInit::ModelDescription,
        },
        multi: true,
        forgetting_per_task: None,
        ablations: false,
        ablation_plot: None,
    };
    let cancel = cancel_on_ctrl_c()?;
    let mut bars = EvalBars::new();
    let report = concepts_eval::evaluate(&dataset, &cfg, &mut bars, &cancel)?;
    bars.clear();
    let mut packages = Vec::new();
    for (s, c) in subjects.iter().zip(&report.concepts) {
        let dest = dir.join(format!("{}.ycpt", s.name()));
        std::fs::copy(&c.package, &dest)
            .with_context(|| format!("writing `{}`", dest.display()))?;
        packages.push(dest);
    }
    writeln!(
        out,
        "wrote `{}` (trained in {:.0} s)",
        packages[0].display(),
        report.concepts[0].seconds
    )?;

    // 3. Install both.
    for p in &packages {
        install(&registry, p, &mut out)?;
    }

    // 4. Ask <bo> questions: about its photo, someone else's, text only, and with both active.
    let other_name = subjects[1].name();
    let bo_photo = &dataset.subjects[0].test[0];
    let other_photo = &dataset.subjects[1].test[0];
    writeln!(out, "\n<bo> active:")?;
    for (q, image) in [
        ("Is <bo> in this photo?", Some(bo_photo)),
        ("Is <bo> in this photo?", Some(other_photo)),
        ("What colour is <bo>?", None),
        ("What shape is <bo>?", None),
        ("Describe <bo>.", None),
    ] {
        let shown = image.map_or("no image".to_string(), |p| {
            p.strip_prefix(&data).unwrap_or(p).display().to_string()
        });
        writeln!(
            out,
            "  Q ({shown}): {q}\n  A: {}",
            answer(&runtime, &tokio, &[BO], q, image.map(|p| p.as_path()))?
        )?;
    }
    let pair = &dataset.multi[0].image;
    writeln!(
        out,
        "\n<bo> and <{other_name}> active, photo {}:",
        pair.strip_prefix(&data).unwrap_or(pair).display()
    )?;
    for q in [
        "Is <bo> in this photo?".to_string(),
        format!("Is <{other_name}> in this photo?"),
        "What is in this photo?".to_string(),
    ] {
        let both = [BO, other_name];
        let a = answer(&runtime, &tokio, &both, &q, Some(pair))?;
        writeln!(out, "  Q: {q}\n  A: {a}")?;
    }

    // 5. The recognition table.
    writeln!(out)?;
    write!(out, "{}", report.to_markdown())?;
    writeln!(
        out,
        "\ndemo finished in {:.0} s; files in `{}`",
        started.elapsed().as_secs_f64(),
        dir.display()
    )?;
    Ok(())
}
