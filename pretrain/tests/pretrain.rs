//! Pretraining on tiny models: the trainable model really trains, the data pipeline's
//! targets are exactly the answers, a resumed run continues identically, and the export
//! loads as an ordinary llava-hf checkpoint.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use concepts_pretrain::data::{encode, tokenize, Batch, SpecialIds};
use concepts_pretrain::{RunPaths, TrainConfig, Trainer};
use concepts_runtime::{Kernels, LlavaModel};
use rand::SeedableRng;
use toy_world::{build_tokenizer, ImageSize, TaskKind, TaskMix};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Tiny run whose stage 1 trains every weight (tower unfrozen from its first step).
fn everything_trains() -> TrainConfig {
    let mut cfg = TrainConfig::tiny(3);
    cfg.stage0_steps = 0;
    cfg.unfreeze_tower_at = 0;
    cfg.batch = 6;
    cfg.lr = 3e-3;
    cfg.warmup = 1;
    cfg
}

#[test]
fn one_adamw_step_lowers_the_loss_and_moves_every_weight() {
    let mut trainer = Trainer::new(everything_trains(), &Device::Cpu).unwrap();
    let before: BTreeMap<String, Tensor> = trainer.params().tensors().unwrap();
    let loss0 = trainer.loss_of_step(0).unwrap();
    let report = trainer.train_step().unwrap();
    assert_eq!(report.loss, loss0);
    assert!(report.grad_norm > 0.0);
    let loss1 = trainer.loss_of_step(0).unwrap();
    assert!(loss1 < loss0, "loss {loss0} -> {loss1}");
    let after = trainer.params().tensors().unwrap();
    assert_eq!(before.len(), after.len());
    for (name, t) in &before {
        let (a, b) = (values(t), values(&after[name]));
        assert!(a != b, "`{name}` did not change");
    }
    // Stage 0 moves the tower only.
    let mut cfg = TrainConfig::tiny(4);
    cfg.stage0_steps = 1;
    let mut trainer = Trainer::new(cfg, &Device::Cpu).unwrap();
    let before = trainer.params().tensors().unwrap();
    trainer.train_step().unwrap();
    for (name, t) in trainer.params().tensors().unwrap() {
        let moved = values(&before[&name]) != values(&t);
        assert_eq!(moved, name.starts_with("vision_tower."), "{name}");
    }
}

#[test]
fn targets_are_exactly_the_answer_and_eos() {
    let tokenizer = build_tokenizer();
    let special = SpecialIds::of(&tokenizer).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut seqs = Vec::new();
    for i in 0..120 {
        let kind = TaskKind::ALL[i % TaskKind::ALL.len()];
        let s = toy_world::sample(&mut rng, &TaskMix::only(kind), ImageSize::DEFAULT);
        let seq = tokenize(&tokenizer, special, 36, &s).unwrap();
        assert!(!seq.ids.contains(&special.unk));
        assert_eq!(seq.ids[0], special.bos);
        let mut want = encode(&tokenizer, special, &s.answer, false).unwrap();
        want.push(special.eos);
        assert_eq!(&seq.ids[seq.answer_start..], &want[..], "{}", s.question);
        match (&seq.image_span, s.image.is_some()) {
            (Some(span), true) => {
                assert_eq!(span.len(), 36);
                assert!(seq.ids[span.clone()].iter().all(|&t| t == special.image));
                assert_eq!(seq.ids.iter().filter(|&&t| t == special.image).count(), 36);
            }
            (None, false) => assert!(!seq.ids.contains(&special.image)),
            _ => panic!("image span does not match the sample"),
        }
        let prompt = &seq.ids[..seq.answer_start];
        let assistant = tokenizer.token_to_id("ASSISTANT").unwrap();
        assert_eq!(
            prompt[prompt.len() - 2..],
            [assistant, tokenizer.token_to_id(":").unwrap()]
        );
        seqs.push(seq);
    }
    let batch = Batch::new(&seqs[..7], special.pad);
    let mut n = 0;
    for (b, s) in seqs[..7].iter().enumerate() {
        let row = &batch.ids[b * batch.len..(b + 1) * batch.len];
        assert_eq!(&row[..s.ids.len()], &s.ids[..]);
        assert!(row[s.ids.len()..].iter().all(|&t| t == special.pad));
        n += s.ids.len() - s.answer_start;
    }
    assert_eq!(batch.targets.len(), n);
    for (&r, &t) in batch.target_rows.iter().zip(&batch.targets) {
        assert_eq!(batch.ids[r as usize + 1], t);
        assert_ne!(t, special.pad);
    }
}

#[test]
fn resumed_run_continues_exactly() {
    let cfg = TrainConfig::tiny(5);
    let total = cfg.total_steps();
    let mut straight = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("train-state");
    let mut losses = Vec::new();
    for step in 0..total {
        if step == 3 {
            straight.save(&state).unwrap();
        }
        losses.push(straight.train_step().unwrap().loss);
    }
    let mut resumed = Trainer::resume(cfg.clone(), &state, &Device::Cpu).unwrap();
    assert_eq!(resumed.step(), 3);
    for &want in &losses[3..] {
        let got = resumed.train_step().unwrap().loss;
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
    let (a, b) = (
        straight.params().tensors().unwrap(),
        resumed.params().tensors().unwrap(),
    );
    for (name, t) in &a {
        let d: f32 = values(t)
            .iter()
            .zip(values(&b[name]))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "{name} differs by {d}");
    }
    // Another configuration refuses the state.
    let mut other = cfg;
    other.lr *= 2.0;
    let err = Trainer::resume(other, &state, &Device::Cpu)
        .err()
        .expect("mismatch");
    assert!(
        err.to_string().contains("another run configuration"),
        "{err}"
    );
}

#[test]
fn run_exports_a_loadable_llava_checkpoint_and_logs_evals() {
    let mut cfg = TrainConfig::tiny(6);
    cfg.eval_every = 3;
    let dir = tempfile::tempdir().unwrap();
    let paths = RunPaths {
        out: dir.path().join("toy"),
    };
    std::fs::create_dir_all(&paths.out).unwrap();
    let mut trainer = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
    let stop = AtomicBool::new(false);
    let mut evals = Vec::new();
    trainer
        .run(&paths, Duration::from_secs(3600), &stop, |e| {
            if let concepts_pretrain::Event::Eval(r) = e {
                evals.push(r);
            }
        })
        .unwrap();
    assert_eq!(trainer.step(), cfg.total_steps());
    // Evaluations at the end of stage 0 (step 2), at step 3 and at the end (step 6).
    let steps: Vec<u64> = evals.iter().map(|r| r.step).collect();
    assert_eq!(steps, [2, 3, 6]);
    let last = evals.last().unwrap();
    assert_eq!(last.tasks.len(), TaskKind::ALL.len());
    let gate = last.gate.unwrap();
    assert!((0.0..=1.0).contains(&gate.weighted));
    assert_eq!(last.probe.len(), 5);
    let log = std::fs::read_to_string(paths.eval_log()).unwrap();
    assert_eq!(log.lines().count(), 3);

    let loaded = LlavaModel::load(&paths.out, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(loaded.config().architecture_id(), "llava-1.5/conv");
    assert_eq!(loaded.config(), trainer.llava_config());
    let tok = tokenizers::Tokenizer::from_file(paths.out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.get_vocab_size(true), loaded.config().text.vocab_size);
    let mine = trainer.model().unwrap();
    let px =
        concepts_runtime::testing::randn(&[1, 3, 16, 16], 1, DType::F32, &Device::Cpu).unwrap();
    let a = values(&loaded.image_features(&px, Kernels::Fast).unwrap());
    let b = values(&mine.image_features(&px, Kernels::Fast).unwrap());
    assert_eq!(a, b);
    assert!(loaded.pooled_image_embedding(&px).is_ok());
    // The run resumes from its saved state at the end.
    let again = Trainer::resume_or_new(cfg, &paths.state(), &Device::Cpu).unwrap();
    assert_eq!(again.step(), 6);
}

/// The corpus an external trainer reads carries the run's own tokenization, initial weights
/// and reference outputs, and weights come back only whole.
#[test]
fn corpus_round_trips_weights_and_matches_the_trainers_sequences() {
    use concepts_pretrain::corpus::{write_corpus, CorpusSize};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TrainConfig::standard(3);
    cfg.eval.gate_subjects = 2;
    cfg.eval.gate_photos = 1;
    let trainer = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
    let meta = write_corpus(
        &trainer,
        CorpusSize {
            stage0: 3,
            stage1: 5,
            threads: 2,
        },
        dir.path(),
    )
    .unwrap();
    // 2 subjects × 1 photo: a positive and a negative each, and the same beside another subject.
    assert_eq!((meta.stage0, meta.stage1, meta.gate), (3, 5, 8));
    let s1 = candle_core::safetensors::load(dir.path().join("stage1.safetensors"), &Device::Cpu)
        .unwrap();
    let ids = s1["ids"].to_vec2::<i64>().unwrap();
    let lens = s1["lens"].to_vec1::<i64>().unwrap();
    let starts = s1["answer_start"].to_vec1::<i64>().unwrap();
    for (row, (len, start)) in ids.iter().zip(lens.iter().zip(&starts)) {
        assert!(start < len && *len as usize <= row.len());
        assert!(row[*len as usize..]
            .iter()
            .all(|&t| t == i64::from(meta.pad_id)));
    }
    let reference =
        candle_core::safetensors::load(dir.path().join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(reference["lm_logits"].dims()[0], 4);
    assert_eq!(reference["head_logits"].dims()[..2], [2, 3]);

    // The initial weights load back bit for bit; a file missing one is refused whole.
    let mut other = Trainer::new(TrainConfig::standard(4), &Device::Cpu).unwrap();
    let before = other.weights().unwrap();
    other
        .load_weights(&dir.path().join("init.safetensors"))
        .unwrap();
    let after = other.weights().unwrap();
    let want = trainer.weights().unwrap();
    for (name, t) in &want {
        assert!(
            values(t) == values(&after[name]),
            "{name} did not round-trip"
        );
    }
    let mut partial: BTreeMap<String, Tensor> = want.clone();
    let (dropped, _) = partial.pop_first().unwrap();
    let path = dir.path().join("partial.safetensors");
    candle_core::safetensors::save(&partial.into_iter().collect(), &path).unwrap();
    let mut fresh = Trainer::new(TrainConfig::standard(4), &Device::Cpu).unwrap();
    let err = fresh.load_weights(&path).unwrap_err().to_string();
    assert!(err.contains(&dropped), "{err}");
    let kept = fresh.weights().unwrap();
    for (name, t) in &before {
        assert!(
            values(t) == values(&kept[name]),
            "{name} changed by a refused load"
        );
    }
}

#[test]
fn the_committed_template_set_is_the_one_the_trainer_writes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/toy-llava/concepts_templates.json"
    );
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        committed,
        concepts_pretrain::train::recognition_templates_json(),
        "regenerate models/toy-llava/concepts_templates.json from recognition_templates_json()"
    );
}
