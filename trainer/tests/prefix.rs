//! Running the constant prompt prefix once, without gradients, changes nothing but the time:
//! the loss, the gradients, the trained parameters and the recognition read-out equal those of
//! the whole sequence run with gradients (the reference layout), kept prefixes or not.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use concepts_plugin_api::{SampleKind, SampleRef, Split, Turn};
use concepts_plugin_host::TrainingHost;
use concepts_runtime::session::Engine;
use concepts_runtime::ConceptWeights;
use concepts_trainer::engine::{EngineObserver, EpochEvent};
use concepts_trainer::images;
use concepts_trainer::{AdamW, Dataset, EngineConfig, Init, PrefixReuse, TrainingEngine};

const K: usize = 4;

struct Quiet;

impl EngineObserver for Quiet {
    fn epoch(&mut self, _event: EpochEvent<'_>) -> concepts_trainer::Result<()> {
        Ok(())
    }
}

fn session(world: &common::World) -> Engine {
    let mut session = Engine::load(&world.model, &Device::Cpu, DType::F32).unwrap();
    let d = session.model().config().text.hidden_size;
    let zeros = Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap();
    let w = ConceptWeights::new(
        zeros.clone(),
        Tensor::zeros((K, d), DType::F32, &Device::Cpu).unwrap(),
        zeros,
    )
    .unwrap();
    session.activate("bo", "<bo>", w).unwrap();
    session
}

fn dataset(world: &common::World, session: &Engine) -> Dataset {
    let load = |dir: &std::path::Path, recursive: bool| -> Vec<images::LoadedImage> {
        images::list_images(dir, recursive)
            .unwrap()
            .iter()
            .map(|p| images::load_checked(p, session.preprocess_config(), 8).unwrap())
            .collect()
    };
    let mut pool = load(&world.pool, true);
    let easy = pool.split_off(pool.len() / 2);
    Dataset {
        positives: load(&world.photos, false),
        hard_negatives: pool,
        easy_negatives: easy,
        crowded_views: 0,
        conversations: vec![
            Turn {
                question: "What does <bo> look like?".into(),
                answer: "<bo> is a red star with blue dots.".into(),
            },
            Turn {
                question: "Is <bo> blue?".into(),
                answer: "No.".into(),
            },
        ],
    }
}

/// A tiny random model with `<bo>` active, and a dataset of every sample kind.
struct Fixture {
    _world: common::World,
    session: Engine,
    data: Dataset,
    cancel: AtomicBool,
}

impl Fixture {
    fn new() -> Fixture {
        let world = common::world(3, 2, 2);
        let session = session(&world);
        let data = dataset(&world, &session);
        Fixture {
            _world: world,
            session,
            data,
            cancel: AtomicBool::new(false),
        }
    }

    fn engine<'a>(&'a self, prefix: PrefixReuse, quiet: &'a mut Quiet) -> TrainingEngine<'a> {
        let cfg = EngineConfig {
            k: K,
            init: Init::Random,
            seed: 3,
            adamw: AdamW::REFERENCE,
            templates: concepts_trainer::templates::TemplateSet::yollava(),
            prefix,
        };
        TrainingEngine::new(
            &self.session,
            "bo",
            &self.data,
            cfg,
            None,
            &self.cancel,
            quiet,
        )
        .unwrap()
    }
}

/// Samples of every kind, with several templates (so prefixes repeat and differ).
fn samples() -> Vec<SampleRef> {
    let s = |kind, index, template| SampleRef {
        kind,
        index,
        template,
    };
    vec![
        s(SampleKind::Positive, 0, 0),
        s(SampleKind::Positive, 1, 3),
        s(SampleKind::Positive, 0, 5),
        s(SampleKind::HardNegative, 0, 1),
        s(SampleKind::EasyNegative, 1, 2),
        s(SampleKind::Conversation, 0, 0),
        s(SampleKind::Conversation, 1, 0),
    ]
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest difference between `a` and `b` relative to the largest magnitude in `a` (at least 1).
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (values(a), values(b));
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn loss_gradients_and_steps_equal_those_of_the_whole_sequence() {
    let fixture = Fixture::new();
    let settings = [
        PrefixReuse::Off,
        PrefixReuse::Cached { budget_bytes: 0 },
        PrefixReuse::default(),
    ];
    let mut results = Vec::new();
    for prefix in settings {
        let mut quiet = Quiet;
        let mut engine = fixture.engine(prefix, &mut quiet);
        let batch = engine.build_batch(&samples()).unwrap();
        let (loss, g_rows, g_head) = engine.loss_and_gradients(batch).unwrap();
        // Again: with kept prefixes, nothing is run twice.
        let before = engine.timings();
        let (computed, kept) = (before.prefixes_run, before.prefixes_kept_bytes);
        let again = engine.loss_and_gradients(batch).unwrap();
        let computed_again = engine.timings().prefixes_run;
        match prefix {
            PrefixReuse::Off => assert_eq!((computed, computed_again), (0, 0)),
            PrefixReuse::Cached { budget_bytes: 0 } => {
                assert_eq!(kept, 0);
                assert!(computed_again > computed, "an unkept prefix is run again");
            }
            PrefixReuse::Cached { .. } => {
                assert!(kept > 0);
                assert_eq!(computed_again, computed, "kept prefixes are reused");
            }
        }
        assert_eq!(again.0.to_bits(), loss.to_bits());
        for _ in 0..3 {
            engine.train_step(batch, 1e-2).unwrap();
        }
        let after = engine.params().clone();
        results.push((prefix, loss, g_rows, g_head, after));
    }
    let (_, loss, g_rows, g_head, after) = &results[0];
    assert!(
        values(g_rows).iter().any(|v| v.abs() > 1e-4)
            && values(g_head).iter().any(|v| v.abs() > 1e-4),
        "the gradients are not trivially zero"
    );
    for (prefix, l, gr, gh, a) in &results[1..] {
        assert!(
            (l - loss).abs() <= 1e-5 * loss.abs().max(1.0),
            "{prefix:?}: loss {l} vs {loss}"
        );
        let d_rows = max_diff(g_rows, gr);
        let d_head = max_diff(g_head, gh);
        assert!(
            d_rows <= 1e-5,
            "{prefix:?}: row gradients differ by {d_rows}"
        );
        assert!(
            d_head <= 1e-5,
            "{prefix:?}: head gradient differs by {d_head}"
        );
        let d_params = max_diff(&after.rows, &a.rows).max(max_diff(&after.head, &a.head));
        assert!(
            d_params <= 1e-5,
            "{prefix:?}: after 3 steps the parameters differ by {d_params}"
        );
    }
}

#[test]
fn recognition_equals_that_of_the_whole_sequence() {
    let fixture = Fixture::new();
    let read = |prefix| {
        let mut quiet = Quiet;
        let mut engine = fixture.engine(prefix, &mut quiet);
        engine.evaluate_recognition(Split::Validation).unwrap()
    };
    let whole = read(PrefixReuse::Off);
    let kept = read(PrefixReuse::default());
    assert_eq!(whole.examples, kept.examples);
    assert_eq!(whole.positive_accuracy, kept.positive_accuracy);
    assert_eq!(whole.negative_accuracy, kept.negative_accuracy);
    assert!(
        (whole.loss - kept.loss).abs() <= 1e-5,
        "recognition loss {} vs {}",
        whole.loss,
        kept.loss
    );
}
