//! The training pipeline end to end on a tiny random model and toy-world photos.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device};
use concept_format::ConceptPackage;
use concepts_plugin_api::EpochReport;
use concepts_trainer::{train, Init, PluginSet, Progress, TrainConfig, TrainError, TrainOutcome};

fn run(
    cfg: &TrainConfig,
    model: &Path,
    progress: &mut dyn Progress,
    cancel: &AtomicBool,
) -> Result<TrainOutcome, TrainError> {
    let mut stages = PluginSet::builtin();
    train(
        model,
        &Device::Cpu,
        DType::F32,
        cfg,
        &mut stages,
        progress,
        cancel,
    )
}

/// Records epochs; sets the cancel flag after `stop_after` epochs; reads the package written
/// after each epoch.
struct Recorder<'a> {
    cancel: &'a AtomicBool,
    stop_after: Option<u32>,
    output: std::path::PathBuf,
    epochs: Vec<(EpochReport, bool)>,
    packages: Vec<Option<Vec<u8>>>,
}

impl<'a> Recorder<'a> {
    fn new(cancel: &'a AtomicBool, output: &Path, stop_after: Option<u32>) -> Self {
        Recorder {
            cancel,
            stop_after,
            output: output.to_path_buf(),
            epochs: Vec::new(),
            packages: Vec::new(),
        }
    }
}

impl Progress for Recorder<'_> {
    fn epoch(&mut self, report: &EpochReport, replayed: bool) {
        self.epochs.push((*report, replayed));
        self.packages.push(std::fs::read(&self.output).ok());
        if Some(report.epoch) == self.stop_after {
            self.cancel.store(true, Ordering::SeqCst);
        }
    }
}

fn tensors(path: &Path) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let p = ConceptPackage::read_file(path).unwrap();
    let t = p.tensors();
    (
        t.identifier().to_vec(),
        t.latents().to_vec(),
        t.head().to_vec(),
    )
}

#[test]
fn training_decreases_the_loss_and_writes_a_valid_package_and_report() {
    let w = common::world(4, 6, 8);
    let mut cfg = w.config("bo.ycpt", 6);
    cfg.learning_rate = 0.05;
    let cancel = AtomicBool::new(false);
    let mut rec = Recorder::new(&cancel, &cfg.output, None);
    let out = run(&cfg, &w.model, &mut rec, &cancel).unwrap();

    let first = out.epochs.first().unwrap().mean_loss;
    let last = out.epochs.last().unwrap().mean_loss;
    let losses: Vec<f32> = out.epochs.iter().map(|e| e.mean_loss).collect();
    assert!(last < first - 0.1, "loss did not decrease: {losses:?}");
    // Epochs mix a shuffled, repeated sample set, so single epochs may tick up; the trend
    // may not: every later epoch stays below the first.
    assert!(
        losses[1..].iter().all(|&l| l < first),
        "loss went back up: {losses:?}"
    );
    assert_eq!(out.counts.positives, 4);
    assert!(
        out.counts.hard_negatives >= 2 && out.counts.easy_negatives == 4,
        "{:?}",
        out.counts
    );
    assert!(out.counts.conversations >= 1, "{:?}", out.counts);

    let package = ConceptPackage::read_file(&out.package).unwrap();
    let m = package.manifest();
    assert_eq!(
        (m.name.as_str(), m.identifier.as_str(), m.k, m.d),
        ("bo", "<bo>", 2, 16)
    );
    assert_eq!(m.prompt_template, "llava_v1/yollava-1");
    assert_eq!(m.base_model, out.fingerprint);
    let prov = m.provenance.as_ref().unwrap();
    assert_eq!(prov.trainer, concepts_trainer::TRAINER_NAME);
    assert_eq!(prov.seed, 5);
    assert_eq!(prov.epochs, out.summary.epochs_run);
    assert_eq!(prov.images.positives, 4);
    let best = out
        .epochs
        .iter()
        .find(|e| e.epoch == out.summary.best_epoch)
        .unwrap();
    // The package, the report and the CLI show the weighted figure.
    assert_eq!(prov.train_accuracy, f64::from(best.validation.weighted()));
    assert_eq!(out.best_accuracy, best.validation.weighted());
    let training = m.ext["training"].as_table().unwrap();
    assert_eq!(
        training["best_epoch"].as_integer(),
        Some(i64::from(out.summary.best_epoch))
    );
    assert_eq!(
        training["recognition_templates"].as_str(),
        Some(concepts_trainer::templates::TEMPLATE_SET_ID)
    );
    assert_eq!(m.user_facts, ["Bo is my lucky charm."]);

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out.report_json).unwrap()).unwrap();
    assert_eq!(report["status"], "complete");
    assert_eq!(report["epochs"].as_array().unwrap().len(), out.epochs.len());
    let png = image::open(&out.report_png).unwrap();
    assert_eq!(png.width(), 960);
    assert!(
        !concepts_trainer::state_path(&cfg.output).exists(),
        "the state file is removed when done"
    );
    assert_eq!(rec.epochs.len(), out.epochs.len());
}

#[test]
fn resume_after_an_interrupt_gives_the_uninterrupted_result() {
    let w = common::world(3, 4, 6);
    let cancel = AtomicBool::new(false);

    let full_cfg = w.config("full.ycpt", 3);
    let mut rec = Recorder::new(&cancel, &full_cfg.output, None);
    let full = run(&full_cfg, &w.model, &mut rec, &cancel).unwrap();

    let cfg = w.config("part.ycpt", 3);
    let mut rec = Recorder::new(&cancel, &cfg.output, Some(1));
    match run(&cfg, &w.model, &mut rec, &cancel) {
        Err(TrainError::Interrupted { best: Some(p) }) => assert_eq!(p, cfg.output),
        other => panic!("expected an interrupt, got {other:?}"),
    }
    // Ctrl-C leaves a valid package (epoch 1 is the best so far) and the state file.
    let interrupted = ConceptPackage::read_file(&cfg.output).unwrap();
    assert_eq!(
        interrupted.manifest().ext["training"]["best_epoch"].as_integer(),
        Some(1)
    );
    assert!(concepts_trainer::state_path(&cfg.output).exists());
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cfg.output.with_file_name("part.training.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["status"], "interrupted");

    cancel.store(false, Ordering::SeqCst);
    let mut resumed_cfg = cfg.clone();
    resumed_cfg.resume = true;
    let mut rec = Recorder::new(&cancel, &cfg.output, None);
    let resumed = run(&resumed_cfg, &w.model, &mut rec, &cancel).unwrap();
    assert_eq!(
        rec.epochs.iter().filter(|(_, replayed)| *replayed).count(),
        1
    );
    assert_eq!(resumed.epochs, full.epochs);
    assert_eq!(resumed.step_losses, full.step_losses);
    assert_eq!(resumed.summary, full.summary);
    assert_eq!(tensors(&resumed.package), tensors(&full.package));

    // A state file only resumes its own job.
    let mut other = w.config("part.ycpt", 3);
    other.resume = true;
    match run(
        &other,
        &w.model,
        &mut Recorder::new(&cancel, &cfg.output, None),
        &cancel,
    ) {
        Err(TrainError::Resume { .. }) => {}
        other => panic!("expected a resume error, got {other:?}"),
    }
}

#[test]
fn the_package_holds_the_best_epoch_not_the_last() {
    let w = common::world(3, 4, 6);
    let cancel = AtomicBool::new(false);
    let mut cfg = w.config("best.ycpt", 5);
    // A learning rate this large makes later epochs worse than the first.
    cfg.learning_rate = 3.0;
    let mut rec = Recorder::new(&cancel, &cfg.output, None);
    let out = run(&cfg, &w.model, &mut rec, &cancel).unwrap();
    let best = out.summary.best_epoch;
    let best_report = out.epochs.iter().find(|e| e.epoch == best).unwrap();
    for e in &out.epochs {
        let better = e.validation.accuracy > best_report.validation.accuracy
            || (e.validation.accuracy == best_report.validation.accuracy
                && e.validation.loss < best_report.validation.loss);
        assert!(!better, "epoch {} beats the kept epoch {best}", e.epoch);
    }
    // The package after the best epoch is what training ends with.
    let at_best = rec.packages[best as usize - 1].clone().unwrap();
    let at_best = ConceptPackage::parse(&at_best).unwrap();
    let final_pkg = ConceptPackage::read_file(&out.package).unwrap();
    assert_eq!(
        at_best.tensors().identifier(),
        final_pkg.tensors().identifier()
    );
    assert_eq!(at_best.tensors().head(), final_pkg.tensors().head());
    if (best as usize) < out.epochs.len() {
        let last = ConceptPackage::parse(rec.packages.last().unwrap().as_ref().unwrap()).unwrap();
        // Packages are only rewritten for a new best: the last one is still the best epoch's.
        assert_eq!(
            last.tensors().identifier(),
            final_pkg.tensors().identifier()
        );
    }
}

#[test]
fn every_initialisation_trains() {
    let w = common::world(3, 3, 4);
    let cancel = AtomicBool::new(false);
    let mut firsts = Vec::new();
    let inits = [
        Init::Random,
        Init::Visual,
        Init::Word("red".into()),
        Init::Text("a red star with blue dots".into()),
        Init::TextVisual("a red star".into()),
    ];
    for init in inits {
        let name = init.label().replace([':', ' '], "-");
        let mut cfg = w.config(&format!("{name}.ycpt"), 2);
        cfg.init = init.clone();
        let out = run(&cfg, &w.model, &mut concepts_trainer::Silent, &cancel).unwrap();
        assert!(out.step_losses.iter().all(|l| l.is_finite()), "{init:?}");
        firsts.push(out.step_losses[0]);
    }
    for (i, a) in firsts.iter().enumerate() {
        assert!(firsts[i + 1..].iter().all(|b| b != a), "{firsts:?}");
    }
}

#[test]
fn a_text_initialisation_with_words_the_tokenizer_lacks_is_refused() {
    let w = common::world(3, 3, 4);
    let mut cfg = w.config("unknown.ycpt", 1);
    cfg.init = Init::Text("a red zeppelin".into());
    let err = run(
        &cfg,
        &w.model,
        &mut concepts_trainer::Silent,
        &AtomicBool::new(false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("a red zeppelin") && err.contains("lacks"),
        "{err}"
    );
    assert!(!cfg.output.exists(), "nothing is written");
    assert_eq!(
        Init::parse("text:a red star"),
        Some(Init::Text("a red star".into()))
    );
    assert_eq!(Init::parse("text: "), None);
    let both = Init::parse("text-visual:a red star");
    assert_eq!(both, Some(Init::TextVisual("a red star".into())));
    assert_eq!(
        Init::parse(&both.unwrap().label()),
        Init::parse("text-visual:a red star")
    );
    assert_eq!(Init::parse("text-visual:"), None);
}
