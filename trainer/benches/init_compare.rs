//! Which initialisation of the concept rows trains fastest: runs the whole pipeline with
//! `random`, `visual` and `word:<colour>` on one toy-world subject and prints the loss and
//! recognition accuracy per epoch.
//!
//! ```text
//! cargo bench -p concepts-trainer --bench init_compare -- [--model DIR] [--epochs 8]
//! ```
//!
//! Without `--model` it uses a tiny random model (a smoke test of the three paths, not a
//! meaningful comparison); pass the pretrained toy model (`models/toy-llava`) for the real one.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use concepts_trainer::{train, Init, PluginSet, Silent};

fn main() {
    let mut model: Option<PathBuf> = None;
    let mut epochs = 8;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--model" => model = it.next().map(PathBuf::from),
            "--epochs" => epochs = it.next().and_then(|v| v.parse().ok()).expect("--epochs N"),
            _ => {}
        }
    }
    let w = common::world(5, 20, 30);
    let model = model.unwrap_or_else(|| w.model.clone());
    println!("init comparison on `{}`, {epochs} epochs", model.display());
    for init in [Init::Random, Init::Visual, Init::Word("red".into())] {
        let mut cfg = w.config(&format!("{}.ycpt", init.label().replace(':', "-")), epochs);
        cfg.k = 16;
        cfg.learning_rate = 1e-3;
        cfg.init = init.clone();
        cfg.hard_per_positive = Some(4);
        cfg.easy_negatives = 20;
        let mut stages = PluginSet::builtin();
        let t0 = std::time::Instant::now();
        let out = train(
            &model,
            &Device::Cpu,
            DType::F32,
            &cfg,
            &mut stages,
            &mut Silent,
            &AtomicBool::new(false),
        )
        .unwrap();
        let losses: Vec<String> = out
            .epochs
            .iter()
            .map(|e| format!("{:.3}", e.mean_loss))
            .collect();
        let accs: Vec<String> = out
            .epochs
            .iter()
            .map(|e| format!("{:.2}", e.validation.accuracy))
            .collect();
        println!(
            "{:<10} loss {}  accuracy {}  best epoch {} ({:.1}s)",
            init.label(),
            losses.join(" "),
            accs.join(" "),
            out.summary.best_epoch,
            t0.elapsed().as_secs_f64()
        );
    }
}
