//! The embedded API (`concepts_runtime::api`) on the parity fixture model (random weights):
//! the concept scan against one-by-one recognition, concept resolution and snapshots,
//! cancellation and the resident-concept budget.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use concept_format::{ConceptPackage, ModelFingerprint};
use concepts_runtime::api::{
    ChatEvent, ChatMessage, ChatRequest, FinishReason, ImageInput, MemorySource, PersonalPrompts,
    Runtime, RuntimeConfig, Selection,
};
use concepts_runtime::generate::{GenerateConfig, Sampling};
use concepts_runtime::session::Engine;
use concepts_runtime::RuntimeError;

const K: usize = 4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn model_dir() -> PathBuf {
    fixture().join("model")
}

fn image() -> ImageInput {
    ImageInput::File(fixture().join("images/logo.png"))
}

/// A concept package for the fixture model with seeded random tensors (`scale` sets their
/// size, so different concepts move the logits differently).
fn package(name: &str, fp: &ModelFingerprint, seed: u64, scale: f32) -> ConceptPackage {
    concepts_runtime::testing::random_concept_package(name, fp, K, seed, scale).unwrap()
}

fn runtime_with(names: &[&str], config: RuntimeConfig) -> (Runtime, Arc<MemorySource>) {
    let fp = concepts_runtime::fingerprint(&model_dir()).unwrap();
    let source = Arc::new(MemorySource::new());
    for (i, name) in names.iter().enumerate() {
        source.insert(package(name, &fp, i as u64 + 1, 0.5 + i as f32));
    }
    let runtime = Runtime::load(&model_dir(), source.clone(), config).unwrap();
    (runtime, source)
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn chat(text: &str, concepts: &[&str], max_tokens: usize) -> ChatRequest {
    ChatRequest {
        concepts: concepts.iter().map(|s| s.to_string()).collect(),
        ..ChatRequest::new(vec![ChatMessage::user(text)], max_tokens)
    }
}

#[test]
fn runtime_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Runtime>();
    assert_send_sync::<concepts_runtime::api::ChatStream>();
}

#[test]
fn scan_gives_the_answers_of_one_by_one_recognition() {
    let names = ["ava", "bo", "cleo", "dot", "kiki"];
    let (runtime, _) = runtime_with(&names, RuntimeConfig::recommended());
    let rt = tokio();
    let scan = rt
        .block_on(runtime.recognise_all(image(), Selection::All))
        .unwrap();
    assert_eq!(
        scan.iter().map(|s| &s.concept.name[..]).collect::<Vec<_>>(),
        names
    );
    let mut decisions = Vec::new();
    for s in &scan {
        let one = rt
            .block_on(runtime.recognise(image(), &s.concept.name))
            .unwrap();
        assert_eq!(one.concept, s.concept);
        let (dy, dn) = ((one.p_yes - s.p_yes).abs(), (one.p_no - s.p_no).abs());
        println!(
            "{}: p_yes {:e} vs {:e} (diff {dy:e}), p_no {:e} (diff {dn:e}), present {}",
            s.concept.name,
            s.p_yes,
            one.p_yes,
            s.p_no,
            s.present()
        );
        assert!(dy <= 1e-5 && dn <= 1e-5, "{}: {dy} {dn}", s.concept.name);
        // The probabilities here are small, so also compare them relatively.
        let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(b.abs()).max(1e-30);
        assert!(
            rel(one.p_yes, s.p_yes) <= 1e-4 && rel(one.p_no, s.p_no) <= 1e-4,
            "{}: relative {} {}",
            s.concept.name,
            rel(one.p_yes, s.p_yes),
            rel(one.p_no, s.p_no)
        );
        assert_eq!(one.present(), s.present(), "{}", s.concept.name);
        assert!(s.p_yes > 0.0 && s.p_no > 0.0 && s.p_yes + s.p_no <= 1.0);
        decisions.push(s.p_yes);
    }
    // The concepts do change the answer: the read-outs are not all equal.
    assert!(decisions.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-6));

    let named = rt
        .block_on(runtime.recognise_all(
            image(),
            Selection::Named(vec!["<kiki>".into(), "bo".into()]),
        ))
        .unwrap();
    assert_eq!(named[0], scan[4]);
    assert_eq!(named[1], scan[1]);
}

#[test]
fn recognise_equals_the_engine_with_that_concept_active() {
    let (runtime, source) = runtime_with(&["bo"], RuntimeConfig::recommended());
    let score = tokio().block_on(runtime.recognise(image(), "bo")).unwrap();
    let mut engine = Engine::load(&model_dir(), &Device::Cpu, DType::F32).unwrap();
    let snapshot = concepts_runtime::api::ConceptSource::snapshot(&*source).unwrap();
    let package = snapshot.load(&snapshot.entries()[0]).unwrap();
    engine.activate_package(&package).unwrap();
    let pixels = concepts_runtime::preprocess::preprocess_file(
        &fixture().join("images/logo.png"),
        engine.preprocess_config(),
    )
    .unwrap();
    let prompt = engine.chat_prompt(
        "Is <bo> in this photo? Answer with a single word or phrase.",
        Some(pixels),
    );
    let r = engine.recognize(&prompt).unwrap();
    assert_eq!((score.p_yes, score.p_no), (r.p_yes, r.p_no));
}

/// A source backed by a "remote" (`remote`): a named concept it lacks is fetched once.
struct FetchingSource {
    local: MemorySource,
    remote: Vec<ConceptPackage>,
    asked: std::sync::Mutex<Vec<String>>,
}

impl concepts_runtime::api::ConceptSource for FetchingSource {
    fn snapshot(
        &self,
    ) -> concepts_runtime::Result<Box<dyn concepts_runtime::api::ConceptSnapshot + '_>> {
        self.local.snapshot()
    }

    fn fetch(&self, query: &str) -> concepts_runtime::Result<bool> {
        self.asked.lock().unwrap().push(query.to_string());
        match self.remote.iter().find(|p| p.manifest().name == query) {
            Some(p) => {
                self.local.insert(p.clone());
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[test]
fn a_named_concept_missing_locally_is_fetched_once_from_the_source() {
    let fp = concepts_runtime::fingerprint(&model_dir()).unwrap();
    let source = Arc::new(FetchingSource {
        local: MemorySource::new(),
        remote: vec![package("bo", &fp, 1, 0.5)],
        asked: Default::default(),
    });
    let runtime =
        Runtime::load(&model_dir(), source.clone(), RuntimeConfig::recommended()).unwrap();
    let rt = tokio();
    let first = rt.block_on(runtime.recognise(image(), "bo")).unwrap();
    let again = rt.block_on(runtime.recognise(image(), "bo")).unwrap();
    assert_eq!((first.p_yes, first.p_no), (again.p_yes, again.p_no));
    let err = rt.block_on(runtime.recognise(image(), "tom")).unwrap_err();
    assert!(
        matches!(err, RuntimeError::ConceptNotFound { ref query } if query == "tom"),
        "{err:?}"
    );
    // Fetched once; present afterwards. Mentions in text alone fetch nothing.
    let reply = rt.block_on(async {
        runtime
            .chat(chat("Who is <kiki>?", &[], 2))
            .await?
            .collect()
            .await
    });
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(*source.asked.lock().unwrap(), ["bo", "tom"]);
}

#[test]
fn only_mentioned_concepts_are_introduced_unless_all_are_asked_for() {
    let (runtime, _) = runtime_with(&["bo", "kiki"], RuntimeConfig::recommended());
    let rt = tokio();
    let tokens = |text: &str, concepts: &[&str], personal_prompts| {
        let request = ChatRequest {
            personal_prompts,
            ..chat(text, concepts, 1)
        };
        let stream = rt.block_on(runtime.chat(request)).unwrap();
        let names: Vec<String> = stream.concepts().iter().map(|c| c.name.clone()).collect();
        (stream.prompt_tokens(), names)
    };
    let (plain, _) = tokens("What is here?", &[], PersonalPrompts::Mentioned);
    // Named but not mentioned: active (its token exists), yet the prompt is the plain one.
    let (named, names) = tokens("What is here?", &["bo", "kiki"], PersonalPrompts::Mentioned);
    assert_eq!(names, ["bo", "kiki"]);
    assert_eq!(named, plain);
    // A personal prompt `<bo> is <bo:1>…<bo:K>. ` is at least K + 3 tokens.
    let (all, _) = tokens("What is here?", &["bo", "kiki"], PersonalPrompts::All);
    assert!(all >= plain + 2 * (K + 3), "{all} vs {plain}");
    let (mentioned, _) = tokens("Is <bo> here?", &["bo", "kiki"], PersonalPrompts::Mentioned);
    let (both, _) = tokens("Is <bo> here?", &["bo", "kiki"], PersonalPrompts::All);
    assert!(both >= mentioned + K + 3, "{both} vs {mentioned}");
    assert!(mentioned >= plain + K + 3, "{mentioned} vs {plain}");
}

#[test]
fn chat_activates_named_and_mentioned_concepts_like_the_engine() {
    let (runtime, source) = runtime_with(&["bo", "kiki", "tom"], RuntimeConfig::recommended());
    let rt = tokio();
    let request = chat("Is <kiki> next to it?", &["bo"], 8);
    let mut stream = rt.block_on(runtime.chat(request)).unwrap();
    let names: Vec<&str> = stream.concepts().iter().map(|c| &c.name[..]).collect();
    assert_eq!(names, ["bo", "kiki"]);
    let prompt_tokens = stream.prompt_tokens();
    let (text, summary) = rt.block_on(async {
        let mut text = String::new();
        loop {
            match stream.next().await.unwrap().unwrap() {
                ChatEvent::Text(t) => text.push_str(&t),
                ChatEvent::Done(s) => return (text, s),
            }
        }
    });
    assert_eq!(summary.text, text);
    assert_eq!(summary.prompt_tokens, prompt_tokens);

    // The same prompt through a plain engine with both concepts activated.
    let mut engine = Engine::load(&model_dir(), &Device::Cpu, DType::F32).unwrap();
    let snapshot = concepts_runtime::api::ConceptSource::snapshot(&*source).unwrap();
    for name in ["bo", "kiki"] {
        let entry = snapshot.entries().iter().find(|e| e.name == name).unwrap();
        engine
            .activate_package(&snapshot.load(entry).unwrap())
            .unwrap();
    }
    let prompt = engine.chat_prompt("Is <kiki> next to it?", None);
    let cfg = GenerateConfig {
        max_tokens: 8,
        sampling: Sampling::Greedy,
        stop_ids: engine.stop_ids(),
        prompt_logits: false,
    };
    let g = engine.generate(&prompt, &cfg, &mut |_| {}).unwrap();
    assert_eq!(g.text, summary.text);
    assert_eq!(g.prompt_ids.len(), prompt_tokens);
    assert_eq!(g.generated_ids.len(), summary.completion_tokens);
}

#[test]
fn bad_requests_fail_before_generation_with_errors_naming_them() {
    let fp = concepts_runtime::fingerprint(&model_dir()).unwrap();
    let mut other = fp.clone();
    other.embed_sha256 = "f".repeat(64);
    let source = Arc::new(MemorySource::new());
    source.insert(package("bo", &fp, 1, 1.0));
    source.insert(package("alien", &other, 2, 1.0));
    let mut config = RuntimeConfig::recommended();
    config.max_prompt_tokens = 200;
    config.image_limits.max_pixels = 100;
    let runtime = Runtime::load(&model_dir(), source, config).unwrap();
    let rt = tokio();
    let err = |r: ChatRequest| rt.block_on(runtime.chat(r)).unwrap_err();

    match err(chat("Hi", &["nobody"], 4)) {
        RuntimeError::ConceptNotFound { query } => assert_eq!(query, "nobody"),
        other => panic!("{other}"),
    }
    let e = err(chat("Who is <alien>?", &[], 4)).to_string();
    assert!(
        e.contains("concept `alien`") && e.contains("base model"),
        "{e}"
    );
    match err(chat(&"word ".repeat(300), &[], 4)) {
        RuntimeError::Limit { what, limit, .. } => {
            assert_eq!((what, limit), ("prompt tokens", 200))
        }
        other => panic!("{other}"),
    }
    let mut with_image = chat("What is this?", &[], 4);
    with_image.messages[0].images.push(image());
    match err(with_image) {
        RuntimeError::Image(concepts_runtime::preprocess::PreprocessError::TooLarge {
            what,
            limit,
            ..
        }) => assert_eq!((what, limit), ("pixels", 100)),
        other => panic!("{other}"),
    }
    let mut garbage = chat("What is this?", &[], 4);
    garbage.messages[0].images.push(ImageInput::Encoded {
        name: "upload.png".into(),
        bytes: Arc::from(&b"not an image"[..]),
    });
    let e = err(garbage).to_string();
    assert!(e.contains("upload.png"), "{e}");
    // Unknown identifiers in the text are just text.
    let ok = rt
        .block_on(runtime.chat(chat("Is <nobody> here?", &[], 2)))
        .unwrap();
    assert!(ok.concepts().is_empty());
}

#[test]
fn cancelling_a_chat_stops_its_generation() {
    let (runtime, _) = runtime_with(&[], RuntimeConfig::recommended());
    let rt = tokio();
    let mut request = chat("Tell me everything.", &[], 1500);
    request.stop_at_eos = false;
    let summary = rt.block_on(async {
        let mut stream = runtime.chat(request.clone()).await.unwrap();
        // Wait for the first text, then cancel.
        loop {
            if let ChatEvent::Text(_) = stream.next().await.unwrap().unwrap() {
                break;
            }
        }
        stream.cancel();
        stream.collect().await.unwrap()
    });
    assert_eq!(summary.finish, FinishReason::Cancelled);
    assert!(
        summary.completion_tokens < 1500,
        "{}",
        summary.completion_tokens
    );

    // Dropping the stream stops the generation thread too.
    rt.block_on(async {
        let mut stream = runtime.chat(request).await.unwrap();
        stream.next().await.unwrap().unwrap();
        assert_eq!(runtime.stats().running_generations, 1);
        drop(stream);
        let start = Instant::now();
        while runtime.stats().running_generations > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "still generating"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

#[test]
fn requests_see_whole_concept_sets_while_concepts_change() {
    let fp = concepts_runtime::fingerprint(&model_dir()).unwrap();
    let (runtime, source) = runtime_with(&["bo"], RuntimeConfig::recommended());
    let versions = [package("tmp", &fp, 10, 1.0), package("tmp", &fp, 11, 2.0)];
    let digests: Vec<String> = versions
        .iter()
        .map(concepts_runtime::api::package_digest)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (source, stop) = (source.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut changes = 0;
            while !stop.load(Ordering::SeqCst) && changes < 10_000 {
                source.insert(versions[changes % 2].clone());
                if changes % 3 == 0 {
                    source.remove("tmp");
                }
                changes += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            changes
        })
    };
    let rt = tokio();
    let mut seen_with = 0;
    for _ in 0..12 {
        let stream = rt
            .block_on(runtime.chat(chat("Are <bo> and <tmp> friends?", &[], 2)))
            .unwrap();
        let concepts = stream.concepts().to_vec();
        rt.block_on(stream.collect()).unwrap();
        assert_eq!(concepts[0].name, "bo");
        match &concepts[1..] {
            [] => {}
            [tmp] => {
                assert_eq!(tmp.name, "tmp");
                assert!(digests.contains(&tmp.digest));
                seen_with += 1;
            }
            more => panic!("{more:?}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let changes = churn.join().unwrap();
    println!("{changes} changes, {seen_with}/12 requests saw `tmp`");
    assert!(changes > 0);
}

#[test]
fn resident_concepts_stay_within_the_budget() {
    // One concept of the fixture: (k + 2) * d f32 values.
    let one = (K + 2) * 64 * 4;
    let mut config = RuntimeConfig::recommended();
    config.max_resident_bytes = 2 * one;
    let (runtime, _) = runtime_with(&["a", "b", "c"], config);
    let rt = tokio();
    rt.block_on(runtime.warm(vec!["a".into(), "b".into()]))
        .unwrap();
    assert_eq!(runtime.stats().resident_concepts, 2);
    assert_eq!(runtime.stats().resident_bytes, 2 * one);
    let active = rt.block_on(runtime.warm(vec!["c".into()])).unwrap();
    assert_eq!(active[0].identifier, "<c>");
    assert_eq!(runtime.stats().resident_concepts, 2);
    // A scan over all three still works; it holds them while it runs.
    let scores = rt
        .block_on(runtime.recognise_all(image(), Selection::All))
        .unwrap();
    assert_eq!(scores.len(), 3);
    assert!(runtime.stats().resident_bytes <= 2 * one);
}

#[test]
fn describe_answers_with_the_concept_active() {
    let (runtime, _) = runtime_with(&["bo"], RuntimeConfig::recommended());
    let summary = tokio().block_on(runtime.describe("bo", 3)).unwrap();
    assert!(summary.completion_tokens <= 3);
    assert!(summary.prompt_tokens > 30);
}

/// Continuous batching: chats with different concept sets, more of them than the batch has
/// rows, joining and leaving at different steps (different lengths, one cancelled half-way,
/// one dropped at once) answer with exactly the tokens each gives alone.
#[test]
fn batched_chats_answer_exactly_as_each_alone() {
    let names = ["bo", "kiki", "tom", "mia"];
    let (alone, _) = runtime_with(
        &names,
        RuntimeConfig {
            decode_batch: 0,
            ..RuntimeConfig::recommended()
        },
    );
    let (batched, _) = runtime_with(
        &names,
        RuntimeConfig {
            decode_batch: 3,
            ..RuntimeConfig::recommended()
        },
    );
    let endless = |mut r: ChatRequest| {
        r.stop_at_eos = false;
        r
    };
    let requests = [
        chat("Hello there.", &[], 12),
        endless(chat("Is <bo> here?", &["bo"], 20)),
        chat("Tell me about <kiki> and <tom>.", &[], 7),
        endless(chat("Write a poem for <mia>.", &["mia", "bo"], 30)),
        chat("<tom> <tom> <tom>", &["tom"], 16),
        endless(chat("What is <kiki> doing?", &["kiki", "mia", "tom"], 25)),
        chat("Describe the weather.", &["bo"], 3),
        endless(chat("Once upon a time", &[], 40)),
        // Asked before: its whole prompt but the last position comes from the prefix cache.
        endless(chat("Is <bo> here?", &["bo"], 20)),
    ];
    let rt = tokio();
    let want: Vec<_> = requests
        .iter()
        .map(|r| {
            rt.block_on(async { alone.chat(r.clone()).await.unwrap().collect().await })
                .unwrap()
        })
        .collect();
    let long = endless(chat("Tell me everything.", &["kiki"], 1500));
    let (got, cancelled) = rt.block_on(async {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| {
                let (runtime, r) = (batched.clone(), r.clone());
                tokio::spawn(async move { runtime.chat(r).await.unwrap().collect().await })
            })
            .collect();
        drop(batched.chat(long.clone()).await.unwrap());
        let mut stream = batched.chat(long).await.unwrap();
        while !matches!(stream.next().await.unwrap().unwrap(), ChatEvent::Text(_)) {}
        stream.cancel();
        let cancelled = stream.collect().await.unwrap();
        let mut got = Vec::new();
        for h in handles {
            got.push(h.await.unwrap().unwrap());
        }
        (got, cancelled)
    });
    assert_eq!(cancelled.finish, FinishReason::Cancelled);
    assert!(cancelled.completion_tokens < 1500);
    let base_vocab = batched.model_config().text.vocab_size as u32;
    let mut identifiers = 0;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.generated_ids, w.generated_ids, "chat {i}");
        assert_eq!((&g.text, g.finish), (&w.text, w.finish), "chat {i}");
        identifiers += g
            .generated_ids
            .iter()
            .filter(|&&id| id >= base_vocab)
            .count();
    }
    // The answers do use concept columns, so each row's own identifiers were in play.
    assert!(identifiers > 0, "no chat emitted a concept identifier");
    let start = Instant::now();
    while batched.stats().running_generations > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still generating"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
