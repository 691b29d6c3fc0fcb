//! Integration tests of the plugin host. Every plugin here is built from its own crate by the test
//! (`support::component`, `support::native_library`); nothing is downloaded or prebuilt.
//!
//! - `defaults`: each default component loads and behaves exactly like its built-in twin, and a
//!   whole mining → linking → training run goes through the three components.
//! - `example`: the third-party centroid miner replaces the default miner and changes the result
//!   as its policy says.
//! - `hostile`: every hostile plugin is refused or stopped with its specific error, and the same host
//!   then runs a good plugin.
//! - `native`: native libraries load only with `allow_native`, answer like the components, and a
//!   panic comes back as an error.
//! - `store`: install from a folder or archive, list, remove, the compile cache, and `PluginSet`.
//! - `frozen`: released WIT files never change.

use concepts_tests::plugins as support;

use std::path::Path;
use std::time::{Duration, Instant};

use concepts_plugin_host::api::{
    ConceptMetadata, MiningParams, NegativeRole, Relation, Role, TrainParams, Turn,
};
use concepts_plugin_host::{
    HostConfig, LoadedPlugin, ManifestLimits, NegativeMiner, PluginError, PluginHost, PluginKind,
    Trainer,
};
use support::{component, package};

fn host() -> PluginHost {
    PluginHost::new(HostConfig::sandboxed())
}

fn load(
    host: &PluginHost,
    root: &Path,
    id: &str,
    role: Role,
    crate_name: &str,
    limits: ManifestLimits,
) -> Result<LoadedPlugin, PluginError> {
    let dir = package(
        root,
        id,
        role,
        PluginKind::Wasm,
        &component(crate_name),
        limits,
    );
    host.load_dir(&dir)
}

fn default_miner(host: &PluginHost, root: &Path) -> Box<dyn NegativeMiner> {
    load(
        host,
        root,
        "concepts.default-miner",
        Role::Miner,
        "concepts-default-miner",
        ManifestLimits::default(),
    )
    .unwrap()
    .into_miner()
    .unwrap()
}

const PARAMS: MiningParams = MiningParams {
    hard_per_positive: 6,
    easy_count: 20,
    seed: 42,
};

fn bo() -> ConceptMetadata {
    ConceptMetadata {
        name: "bo".into(),
        identifier: "<bo>".into(),
        display_name: "Bo".into(),
        category: "pet".into(),
        user_facts: vec!["Bo's birthday is May 3".into()],
        relations: vec![Relation {
            relation: "owner".into(),
            target: "<T>".into(),
        }],
    }
}

fn t() -> ConceptMetadata {
    ConceptMetadata {
        name: "t".into(),
        identifier: "<T>".into(),
        display_name: "T".into(),
        category: "person".into(),
        user_facts: vec![],
        relations: vec![],
    }
}

/// Asserts that a default miner's answer follows the policy on `support::mining_data`.
fn check_default_mining(mined: &[concepts_plugin_host::api::MinedNegative]) {
    let (positives, pool) = support::mining_data();
    let hard: Vec<u32> = mined
        .iter()
        .filter(|m| m.role == NegativeRole::Hard)
        .map(|m| m.pool_row)
        .collect();
    assert_eq!(hard, support::expected_hard(&positives, &pool, 6));
    let easy: Vec<u32> = mined
        .iter()
        .filter(|m| m.role == NegativeRole::Easy)
        .map(|m| m.pool_row)
        .collect();
    assert_eq!(easy.len(), 20);
    for row in [7, 100] {
        assert!(
            !hard.contains(&row) && !easy.contains(&row),
            "near-duplicate {row} chosen"
        );
    }
    assert!(easy.iter().all(|r| !hard.contains(r)));
}

mod defaults {
    use super::*;
    use concepts_plugin_host::builtin;

    #[test]
    fn default_miner_component_follows_the_policy_and_matches_the_builtin() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let (positives, pool) = support::mining_data();
        let wasm = default_miner(&host, root.path())
            .mine(&positives, &pool, PARAMS)
            .unwrap();
        check_default_mining(&wasm);
        let native = builtin::default_miner(None)
            .mine(&positives, &pool, PARAMS)
            .unwrap();
        assert_eq!(wasm, native, "component and built-in must agree");
        let reseeded = builtin::default_miner(None)
            .mine(&positives, &pool, MiningParams { seed: 43, ..PARAMS })
            .unwrap();
        assert_ne!(wasm, reseeded, "the seed must change the easy negatives");
    }

    #[test]
    fn default_linker_component_validates_links_and_renders() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let mut linker = load(
            &host,
            root.path(),
            "concepts.default-linker",
            Role::Linker,
            "concepts-default-linker",
            ManifestLimits::default(),
        )
        .unwrap()
        .into_linker()
        .unwrap();
        linker.validate(&bo()).unwrap();
        let mut bad = bo();
        bad.identifier = "bo".into();
        bad.category = "dog".into();
        match linker.validate(&bad).unwrap_err() {
            PluginError::InvalidMetadata {
                concept, problems, ..
            } => {
                assert_eq!(concept, "bo");
                assert_eq!(problems.len(), 2, "{problems:?}");
                assert!(problems[0].starts_with("identifier `bo`"));
                assert!(problems[1].starts_with("category `dog`"));
            }
            other => panic!("unexpected {other}"),
        }
        let turns = vec![
            Turn {
                question: "What is Riley doing?".into(),
                answer: "Riley's ball is under this subject.".into(),
            },
            Turn {
                question: "Is it sunny?".into(),
                answer: "Yes.".into(),
            },
        ];
        let linked = linker
            .link_conversation(&bo(), &["Riley".to_owned()], turns.clone())
            .unwrap();
        assert_eq!(linked[0].question, "What is <bo> doing?");
        assert_eq!(linked[0].answer, "<bo>'s ball is under <bo>.");
        assert_eq!(linked[1], turns[1]);
        assert_eq!(
            linker.render_context(&[bo(), t()]).unwrap(),
            "<bo>'s birthday is May 3.\n<T> is <bo>'s owner."
        );
        assert_eq!(
            linker.render_context(&[bo()]).unwrap(),
            "<bo>'s birthday is May 3.",
            "relations to inactive concepts are left out"
        );
        let builtin = builtin::default_linker(None)
            .render_context(&[bo(), t()])
            .unwrap();
        assert_eq!(builtin, linker.render_context(&[bo(), t()]).unwrap());
    }

    fn default_trainer(host: &PluginHost, root: &Path) -> Box<dyn Trainer> {
        load(
            host,
            root,
            "concepts.default-trainer",
            Role::Trainer,
            "concepts-default-trainer",
            ManifestLimits::default(),
        )
        .unwrap()
        .into_trainer()
        .unwrap()
    }

    /// Runs the default policy on a learnable task and checks what it did against what the host saw.
    pub(crate) fn check_trainer_converges(trainer: &mut dyn Trainer) -> support::LogisticHost {
        let mut task = support::separable_task(7);
        let before = task.evaluate_at_start();
        let params = TrainParams {
            epochs: Some(6),
            learning_rate: Some(0.5),
            batch_size: Some(4),
            seed: 3,
        };
        let summary = trainer.train(&mut task, params).unwrap();
        assert_eq!(summary.epochs_run, 6);
        assert!(!summary.stopped_early);
        assert_eq!(summary.best_epoch, task.best_reported_epoch());
        assert!(
            summary.best_accuracy > before + 0.2,
            "{} vs {before}",
            summary.best_accuracy
        );
        assert!(summary.best_accuracy >= 0.9, "{summary:?}");
        // The host holds the best epoch's parameters.
        assert_eq!(
            task.weights,
            task.weights_at_eval[summary.best_epoch as usize - 1]
        );
        // The learning-rate schedule: constant within an epoch, cosine-decayed across epochs.
        let per_epoch = task.step_lrs.len() / 6;
        assert_eq!(
            per_epoch, 9,
            "(8 positives × 2 to match 16 negatives + 8 + 8 + 3 conversations) / batch 4, rounded up"
        );
        for (i, lr) in task.step_lrs.iter().enumerate() {
            let epoch = (i / per_epoch) as u32 + 1;
            let expected = concepts_default_trainer::learning_rate(0.5, epoch, 6);
            assert!((lr - expected).abs() < 1e-6, "step {i}: {lr} vs {expected}");
        }
        assert_eq!(task.live_batches(), 0, "every batch is dropped");
        task
    }

    #[test]
    fn default_trainer_component_drives_a_real_optimisation() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let wasm = check_trainer_converges(&mut *default_trainer(&host, root.path()));
        let builtin = check_trainer_converges(&mut *builtin::default_trainer(None));
        assert_eq!(
            wasm.samples_seen, builtin.samples_seen,
            "same data mix and order"
        );
        for (a, b) in wasm.weights.w.iter().zip(&builtin.weights.w) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn default_trainer_stops_early_and_restores_the_best_epoch() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let mut trainer = default_trainer(&host, root.path());
        let mut task = support::misleading_task(11);
        let summary = trainer
            .train(
                &mut task,
                TrainParams {
                    epochs: Some(15),
                    learning_rate: Some(0.5),
                    batch_size: None,
                    seed: 1,
                },
            )
            .unwrap();
        assert_eq!(summary.best_epoch, 1);
        assert_eq!(task.best_reported_epoch(), 1);
        assert!(summary.stopped_early);
        assert_eq!(summary.epochs_run, 1 + concepts_default_trainer::PATIENCE);
        assert_eq!(task.restored.len(), 1, "the best snapshot is restored once");
        assert_eq!(task.weights, task.weights_at_eval[0]);
        assert_eq!(task.reports.iter().filter(|r| r.is_best).count(), 1);
    }

    #[test]
    fn a_training_run_goes_through_all_three_default_components() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let mut miner = default_miner(&host, root.path());
        let mut linker = load(
            &host,
            root.path(),
            "concepts.default-linker",
            Role::Linker,
            "concepts-default-linker",
            ManifestLimits::default(),
        )
        .unwrap()
        .into_linker()
        .unwrap();
        let mut trainer = default_trainer(&host, root.path());

        // Stage 1: mine negatives for the subject from the pool.
        let (positives, pool) = support::mining_data();
        let mined = miner.mine(&positives, &pool, PARAMS).unwrap();
        // Stage 2: check the metadata and link the generated conversations.
        linker.validate(&bo()).unwrap();
        let conversation = linker
            .link_conversation(
                &bo(),
                &["Riley".to_owned()],
                vec![Turn {
                    question: "Describe Riley.".into(),
                    answer: "This subject is a small dog.".into(),
                }],
            )
            .unwrap();
        assert_eq!(conversation[0].answer, "<bo> is a small dog.");
        // Stage 3: train a recogniser on the positives and exactly the mined negatives.
        let rows = |role| -> Vec<Vec<f32>> {
            mined
                .iter()
                .filter(|m| m.role == role)
                .map(|m| pool.row(m.pool_row as usize).to_vec())
                .collect()
        };
        let positive_rows: Vec<Vec<f32>> = (0..positives.rows())
            .map(|r| positives.row(r).to_vec())
            .collect();
        let (hard, easy) = (rows(NegativeRole::Hard), rows(NegativeRole::Easy));
        let mut validation: Vec<(Vec<f32>, f32)> =
            positive_rows.iter().map(|x| (x.clone(), 1.0)).collect();
        validation.extend(hard.iter().chain(&easy).map(|x| (x.clone(), 0.0)));
        let mut task =
            support::LogisticHost::new(positive_rows, hard.clone(), easy.clone(), validation);
        let summary = trainer
            .train(
                &mut task,
                TrainParams {
                    epochs: Some(10),
                    learning_rate: Some(1.0),
                    batch_size: Some(8),
                    seed: 5,
                },
            )
            .unwrap();
        let counts = concepts_plugin_host::TrainingHost::counts(&task);
        assert_eq!(counts.hard_negatives as usize, hard.len());
        assert_eq!(counts.easy_negatives, 20);
        assert!(summary.best_accuracy > 0.8, "{summary:?}");
        // The per-request context for the trained concept and its owner.
        assert!(linker
            .render_context(&[bo(), t()])
            .unwrap()
            .contains("<T> is <bo>'s owner."));
    }
}

mod example {
    use super::*;

    /// The centroid policy, computed natively.
    fn expected(params: MiningParams) -> (Vec<u32>, Vec<u32>) {
        let (positives, pool) = support::mining_data();
        let dim = positives.dim();
        let mut centroid = vec![0.0f32; dim];
        for r in 0..positives.rows() {
            let row = positives.row(r);
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            for (c, v) in centroid.iter_mut().zip(row) {
                *c += v / n;
            }
        }
        let c = concepts_plugin_host::EmbeddingMatrix::from_rows(&[centroid]).unwrap();
        let mut scored: Vec<(u32, f32)> = (0..pool.rows())
            .filter(|&p| (0..positives.rows()).all(|q| positives.cosine(q, &pool, p) < 0.98))
            .map(|p| (p as u32, c.cosine(0, &pool, p)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let hard_n = params.hard_per_positive as usize * positives.rows();
        let hard = scored[..hard_n].iter().map(|s| s.0).collect();
        let easy = scored[scored.len() - params.easy_count as usize..]
            .iter()
            .rev()
            .map(|s| s.0)
            .collect();
        (hard, easy)
    }

    #[test]
    fn centroid_miner_replaces_the_default_and_changes_the_result_as_expected() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let (positives, pool) = support::mining_data();
        let mut example = load(
            &host,
            root.path(),
            "acme.centroid-miner",
            Role::Miner,
            "concepts-example-centroid-miner",
            ManifestLimits {
                host_call_kib: Some(64),
                ..ManifestLimits::default()
            },
        )
        .unwrap()
        .into_miner()
        .unwrap();
        let mined = example.mine(&positives, &pool, PARAMS).unwrap();
        let role_rows = |role| -> Vec<u32> {
            mined
                .iter()
                .filter(|m| m.role == role)
                .map(|m| m.pool_row)
                .collect()
        };
        let (hard, easy) = expected(PARAMS);
        assert_eq!(role_rows(NegativeRole::Hard), hard);
        assert_eq!(role_rows(NegativeRole::Easy), easy);

        let default = default_miner(&host, root.path())
            .mine(&positives, &pool, PARAMS)
            .unwrap();
        let default_hard: Vec<u32> = default
            .iter()
            .filter(|m| m.role == NegativeRole::Hard)
            .map(|m| m.pool_row)
            .collect();
        assert_ne!(
            role_rows(NegativeRole::Hard),
            default_hard,
            "a different policy gives a different answer"
        );
        // Both policies agree on what must never be chosen.
        assert!(mined.iter().all(|m| m.pool_row != 7 && m.pool_row != 100));
    }
}

mod hostile {
    use super::*;

    /// After a hostile plugin, the same host still loads and runs a good one.
    fn host_still_works(host: &PluginHost, root: &Path) {
        let (positives, pool) = support::mining_data();
        let mined = default_miner(host, root)
            .mine(&positives, &pool, PARAMS)
            .unwrap();
        check_default_mining(&mined);
    }

    fn hostile_miner(
        host: &PluginHost,
        root: &Path,
        crate_name: &str,
        limits: ManifestLimits,
    ) -> Box<dyn NegativeMiner> {
        load(host, root, crate_name, Role::Miner, crate_name, limits)
            .unwrap()
            .into_miner()
            .unwrap()
    }

    #[test]
    fn infinite_loop_is_stopped_by_the_guest_time_limit() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let mut spin = hostile_miner(
            &host,
            root.path(),
            "concepts-test-spin",
            ManifestLimits {
                guest_time_ms: Some(300),
                ..ManifestLimits::default()
            },
        );
        let (positives, pool) = support::mining_data();
        let started = Instant::now();
        let err = spin.mine(&positives, &pool, PARAMS).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                err,
                PluginError::DeadlineExceeded {
                    limit_ms: 300,
                    call: "mine",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.to_string(), "plugin `concepts-test-spin`: call `mine` exceeded its guest-time limit of 300 ms and was stopped");
        // The plugin itself is usable again: the next call gets a fresh instance (and spins again).
        assert!(matches!(
            spin.mine(&positives, &pool, PARAMS).unwrap_err(),
            PluginError::DeadlineExceeded { .. }
        ));
        host_still_works(&host, root.path());
    }

    /// A slow host (the training engine) must not use up the plugin's guest time.
    #[test]
    fn time_in_host_calls_does_not_count_against_the_guest() {
        struct SlowHost(support::LogisticHost);
        impl concepts_plugin_host::TrainingHost for SlowHost {
            fn counts(&self) -> concepts_plugin_host::api::SampleCounts {
                self.0.counts()
            }
            fn build_batch(
                &mut self,
                s: &[concepts_plugin_host::api::SampleRef],
            ) -> Result<concepts_plugin_host::BatchId, concepts_plugin_host::EngineError>
            {
                self.0.build_batch(s)
            }
            fn batch_len(&self, b: concepts_plugin_host::BatchId) -> u32 {
                self.0.batch_len(b)
            }
            fn drop_batch(&mut self, b: concepts_plugin_host::BatchId) {
                self.0.drop_batch(b)
            }
            fn train_step(
                &mut self,
                b: concepts_plugin_host::BatchId,
                lr: f32,
            ) -> Result<f32, concepts_plugin_host::EngineError> {
                std::thread::sleep(Duration::from_millis(40));
                self.0.train_step(b, lr)
            }
            fn evaluate_recognition(
                &mut self,
                s: concepts_plugin_host::api::Split,
            ) -> Result<concepts_plugin_host::api::Recognition, concepts_plugin_host::EngineError>
            {
                self.0.evaluate_recognition(s)
            }
            fn snapshot(
                &mut self,
            ) -> Result<concepts_plugin_host::SnapshotId, concepts_plugin_host::EngineError>
            {
                self.0.snapshot()
            }
            fn restore(
                &mut self,
                s: concepts_plugin_host::SnapshotId,
            ) -> Result<(), concepts_plugin_host::EngineError> {
                self.0.restore(s)
            }
            fn report_epoch(&mut self, r: &concepts_plugin_host::api::EpochReport) {
                self.0.report_epoch(r)
            }
        }
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let mut trainer = load(
            &host,
            root.path(),
            "concepts.default-trainer",
            Role::Trainer,
            "concepts-default-trainer",
            ManifestLimits {
                guest_time_ms: Some(150),
                ..ManifestLimits::default()
            },
        )
        .unwrap()
        .into_trainer()
        .unwrap();
        let mut slow = SlowHost(support::separable_task(7));
        let started = Instant::now();
        let params = TrainParams {
            epochs: Some(2),
            learning_rate: Some(0.5),
            batch_size: Some(4),
            seed: 3,
        };
        trainer.train(&mut slow, params).unwrap();
        assert!(
            started.elapsed() > Duration::from_millis(500),
            "16 steps × 40 ms of host time"
        );
    }

    #[test]
    fn memory_bomb_is_stopped_by_the_memory_limit() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let mut bomb = hostile_miner(
            &host,
            root.path(),
            "concepts-test-membomb",
            ManifestLimits {
                memory_mib: Some(64),
                ..ManifestLimits::default()
            },
        );
        let (positives, pool) = support::mining_data();
        let err = bomb.mine(&positives, &pool, PARAMS).unwrap_err();
        match &err {
            PluginError::MemoryLimitExceeded {
                limit, requested, ..
            } => {
                assert_eq!(*limit, 64 << 20);
                assert!(requested > limit);
            }
            other => panic!("expected a memory limit error, got {other}"),
        }
        host_still_works(&host, root.path());
    }

    #[test]
    fn oversized_host_call_is_stopped_by_the_data_cap() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let mut big = hostile_miner(
            &host,
            root.path(),
            "concepts-test-bigcall",
            ManifestLimits {
                host_call_kib: Some(16),
                ..ManifestLimits::default()
            },
        );
        let (positives, pool) = support::mining_data();
        let err = big.mine(&positives, &pool, PARAMS).unwrap_err();
        assert!(
            matches!(err, PluginError::HostCallTooLarge { function: "embeddings.read-rows", bytes, cap: 16384, .. } if bytes == 240 * 24 * 4),
            "{err}"
        );
        host_still_works(&host, root.path());
    }

    #[test]
    fn filesystem_access_is_refused_at_load_and_confined_when_granted() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let err = load(
            &host,
            root.path(),
            "fsread",
            Role::Miner,
            "concepts-test-fsread",
            ManifestLimits::default(),
        )
        .unwrap_err();
        match &err {
            PluginError::ImportNotAllowed { import, reason, .. } => {
                // `std::fs` imports `wasi:filesystem/*` and the wall clock its types use.
                assert!(
                    import.starts_with("wasi:filesystem/") || import.starts_with("wasi:clocks/"),
                    "{import}"
                );
                assert!(reason.starts_with("which needs capability `"), "{reason}");
                assert!(
                    reason.ends_with("`; its manifest does not request it"),
                    "{reason}"
                );
            }
            other => panic!("expected an import refusal, got {other}"),
        }

        // Requested but not granted: refused.
        let bytes = component("concepts-test-fsread");
        let spec = |dir: &Path| {
            concepts_plugin_host::ManifestSpec {
                id: "fsread",
                version: "0.1.0",
                role: Role::Miner,
                kind: PluginKind::Wasm,
                file: "plugin.wasm",
                bytes: &bytes,
                limits: ManifestLimits::default(),
                capabilities: &[concepts_plugin_host::Capability::Filesystem],
            }
            .write_package(dir)
            .unwrap()
        };
        let dir = spec(&root.path().join("fs-requested"));
        let err = host.load_dir(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin `fsread`: requests capability `filesystem`, which was not granted"
        );

        // Granted: the plugin sees only its own data folder, not the host's files.
        let mut config = HostConfig::sandboxed();
        config.grants.granted.insert((
            "fsread".to_owned(),
            concepts_plugin_host::Capability::Filesystem,
        ));
        config.data_dir = Some(root.path().join("data"));
        let granted = PluginHost::new(config);
        let mut miner = granted.load_dir(&dir).unwrap().into_miner().unwrap();
        let (positives, pool) = support::mining_data();
        match miner.mine(&positives, &pool, PARAMS).unwrap_err() {
            PluginError::Failed { message, .. } => {
                assert!(message.starts_with("denied: "), "{message}");
                assert!(!message.contains("root:"), "{message}");
            }
            other => panic!("expected the plugin's own failure, got {other}"),
        }
        host_still_works(&host, root.path());
    }

    #[test]
    fn wrong_wit_version_is_refused_naming_both_versions() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let err = load(
            &host,
            root.path(),
            "future",
            Role::Miner,
            "concepts-test-wrong-version",
            ManifestLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, PluginError::UnsupportedApiVersion { .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "plugin `future`: targets plugin API concepts:plugin@9.0.0, but this host supports concepts:plugin@0.1.0 (line 0.1)");
        host_still_works(&host, root.path());
    }

    #[test]
    fn corrupted_component_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let mut bytes = component("concepts-default-miner");
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0xA5;
        }
        let dir = package(
            root.path(),
            "corrupt",
            Role::Miner,
            PluginKind::Wasm,
            &bytes,
            ManifestLimits::default(),
        );
        let err = host.load_dir(&dir).unwrap_err();
        assert!(matches!(err, PluginError::InvalidComponent { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("plugin `corrupt`: invalid component: "),
            "{err}"
        );
        // Not a component at all.
        let dir = package(
            root.path(),
            "garbage",
            Role::Miner,
            PluginKind::Wasm,
            b"\0asm garbage",
            ManifestLimits::default(),
        );
        assert!(matches!(
            host.load_dir(&dir).unwrap_err(),
            PluginError::InvalidComponent { .. }
        ));
        host_still_works(&host, root.path());
    }

    #[test]
    fn hash_mismatch_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let dir = package(
            root.path(),
            "tampered",
            Role::Miner,
            PluginKind::Wasm,
            &component("concepts-default-miner"),
            ManifestLimits::default(),
        );
        // Swap in another component after the manifest was written.
        std::fs::write(dir.join("plugin.wasm"), component("concepts-test-spin")).unwrap();
        let err = host.load_dir(&dir).unwrap_err();
        match &err {
            PluginError::HashMismatch {
                id,
                expected,
                found,
                ..
            } => {
                assert_eq!(id, "tampered");
                assert_eq!(
                    *found,
                    concepts_fs::sha256_hex(&component("concepts-test-spin"))
                );
                assert_ne!(expected, found);
            }
            other => panic!("expected a hash mismatch, got {other}"),
        }
        host_still_works(&host, root.path());
    }

    #[test]
    fn a_panic_traps_with_the_panic_message() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let mut panicky = hostile_miner(
            &host,
            root.path(),
            "concepts-test-panic",
            ManifestLimits::default(),
        );
        let (positives, pool) = support::mining_data();
        let err = panicky.mine(&positives, &pool, PARAMS).unwrap_err();
        match &err {
            PluginError::Trapped { stderr, .. } => assert!(
                stderr.contains("deliberate panic in the test miner"),
                "{err}"
            ),
            other => panic!("expected a trap, got {other}"),
        }
        host_still_works(&host, root.path());
    }

    #[test]
    fn manifest_limits_above_the_host_defaults_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let err = load(
            &host,
            root.path(),
            "greedy",
            Role::Miner,
            "concepts-default-miner",
            ManifestLimits {
                memory_mib: Some(4096),
                ..ManifestLimits::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                PluginError::LimitAboveDefault {
                    limit: "memory_mib",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_component_in_the_wrong_role_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let host = host();
        let err = load(
            &host,
            root.path(),
            "liar",
            Role::Trainer,
            "concepts-default-miner",
            ManifestLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                PluginError::ImportNotAllowed { .. } | PluginError::MissingExport { .. }
            ),
            "{err}"
        );
    }
}

mod native {
    use super::*;

    fn native_config() -> HostConfig {
        let mut config = HostConfig::sandboxed();
        config.allow_native = true;
        config
    }

    fn native_package(root: &Path, id: &str, role: Role, crate_name: &str) -> std::path::PathBuf {
        let bytes = std::fs::read(support::native_library(crate_name)).unwrap();
        package(
            root,
            id,
            role,
            PluginKind::Native,
            &bytes,
            ManifestLimits::default(),
        )
    }

    #[test]
    fn native_plugins_need_allow_native_and_answer_like_the_component() {
        let root = tempfile::tempdir().unwrap();
        let dir = native_package(
            root.path(),
            "acme.centroid-native",
            Role::Miner,
            "concepts-example-centroid-miner",
        );
        let err = host().load_dir(&dir).unwrap_err();
        assert!(matches!(err, PluginError::NativeNotAllowed { .. }), "{err}");

        let native_host = PluginHost::new(native_config());
        let mut native = native_host.load_dir(&dir).unwrap().into_miner().unwrap();
        let (positives, pool) = support::mining_data();
        let from_native = native.mine(&positives, &pool, PARAMS).unwrap();
        let mut wasm = load(
            &native_host,
            root.path(),
            "acme.centroid-miner",
            Role::Miner,
            "concepts-example-centroid-miner",
            ManifestLimits::default(),
        )
        .unwrap()
        .into_miner()
        .unwrap();
        let from_wasm = wasm.mine(&positives, &pool, PARAMS).unwrap();
        assert_eq!(from_native.len(), from_wasm.len());
        for (a, b) in from_native.iter().zip(&from_wasm) {
            assert_eq!((a.pool_row, a.role), (b.pool_row, b.role));
            assert!((a.score - b.score).abs() < 1e-5);
        }
    }

    #[test]
    fn native_trainer_drives_the_same_training() {
        let root = tempfile::tempdir().unwrap();
        let dir = native_package(
            root.path(),
            "native-trainer",
            Role::Trainer,
            "concepts-default-trainer",
        );
        let host = PluginHost::new(native_config());
        let mut trainer = host.load_dir(&dir).unwrap().into_trainer().unwrap();
        super::defaults::check_trainer_converges(&mut *trainer);
    }

    #[test]
    fn a_native_panic_is_caught_at_the_boundary() {
        let root = tempfile::tempdir().unwrap();
        let dir = native_package(
            root.path(),
            "native-panic",
            Role::Miner,
            "concepts-test-panic",
        );
        let host = PluginHost::new(native_config());
        let mut miner = host.load_dir(&dir).unwrap().into_miner().unwrap();
        let (positives, pool) = support::mining_data();
        let err = miner.mine(&positives, &pool, PARAMS).unwrap_err();
        assert_eq!(err.to_string(), "plugin `native-panic`: call `mine` panicked: plugin panicked: deliberate panic in the test miner");
        // The process and the library are still fine.
        assert!(matches!(
            miner.mine(&positives, &pool, PARAMS).unwrap_err(),
            PluginError::NativePanic { .. }
        ));
    }

    #[test]
    fn a_native_library_declared_in_the_wrong_role_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = native_package(
            root.path(),
            "native-liar",
            Role::Linker,
            "concepts-test-panic",
        );
        let err = PluginHost::new(native_config()).load_dir(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin `native-liar` is a miner plugin, not a linker"
        );
    }
}

mod store {
    use super::*;
    use concepts_plugin_host::{PluginSelection, PluginSet, PluginStore};

    #[test]
    fn install_list_remove_and_resolve_by_id() {
        let home = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let store = PluginStore::new(&home.path().join("plugins"));
        let mut config = HostConfig::sandboxed();
        config.cache_dir = Some(store.cache_dir());
        let host = PluginHost::new(config);

        let dir = package(
            src.path(),
            "acme.centroid-miner",
            Role::Miner,
            PluginKind::Wasm,
            &component("concepts-example-centroid-miner"),
            ManifestLimits::default(),
        );
        let installed = store.install(&host, &dir).unwrap();
        assert_eq!(installed.manifest().id(), "acme.centroid-miner");
        // A tampered package is not installed.
        let bad = package(
            src.path(),
            "tampered",
            Role::Miner,
            PluginKind::Wasm,
            &component("concepts-default-miner"),
            ManifestLimits::default(),
        );
        std::fs::write(bad.join("plugin.wasm"), b"\0asm").unwrap();
        assert!(matches!(
            store.install(&host, &bad).unwrap_err(),
            PluginError::HashMismatch { .. }
        ));

        // An archive whose files sit in one folder.
        let linker_dir = package(
            src.path(),
            "acme.linker",
            Role::Linker,
            PluginKind::Wasm,
            &component("concepts-default-linker"),
            ManifestLimits::default(),
        );
        let archive = src.path().join("linker.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        tar.append_dir_all("acme-linker", &linker_dir).unwrap();
        tar.finish().unwrap();
        drop(tar);
        store.install(&host, &archive).unwrap();

        let ids: Vec<String> = store
            .list()
            .unwrap()
            .iter()
            .map(|p| p.manifest().id().to_owned())
            .collect();
        assert_eq!(ids, ["acme.centroid-miner", "acme.linker"]);
        assert_eq!(
            std::fs::read_dir(store.cache_dir()).unwrap().count(),
            2,
            "one compiled artefact per component"
        );

        // `--miner acme.centroid-miner`, default trainer, installed linker.
        let selection = PluginSelection {
            miner: Some("acme.centroid-miner".into()),
            trainer: None,
            linker: Some("acme.linker".into()),
        };
        let mut set = PluginSet::resolve(&host, Some(&store), &selection).unwrap();
        assert_eq!(set.miner.id(), "acme.centroid-miner");
        assert_eq!(set.trainer.id(), "concepts.default-trainer");
        assert_eq!(set.linker.id(), "acme.linker");
        let (positives, pool) = support::mining_data();
        assert!(!set
            .miner
            .mine(&positives, &pool, PARAMS)
            .unwrap()
            .is_empty());

        let wrong = PluginSelection {
            miner: Some("acme.linker".into()),
            trainer: None,
            linker: None,
        };
        let err = PluginSet::resolve(&host, Some(&store), &wrong)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "plugin `acme.linker` is a linker plugin, not a miner"
        );
        let missing = PluginSelection {
            miner: Some("nobody.miner".into()),
            trainer: None,
            linker: None,
        };
        assert_eq!(
            PluginSet::resolve(&host, Some(&store), &missing)
                .err()
                .unwrap()
                .to_string(),
            "no plugin `nobody.miner` is installed or built in"
        );

        store.remove("acme.centroid-miner").unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(matches!(
            store.remove("acme.centroid-miner").unwrap_err(),
            PluginError::NotFound { .. }
        ));
    }

    #[test]
    fn the_compile_cache_is_used_and_a_damaged_entry_is_recompiled() {
        let cache = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let mut config = HostConfig::sandboxed();
        config.cache_dir = Some(cache.path().to_owned());
        let dir = package(
            src.path(),
            "concepts.default-miner",
            Role::Miner,
            PluginKind::Wasm,
            &component("concepts-default-miner"),
            ManifestLimits::default(),
        );
        PluginHost::new(config.clone()).load_dir(&dir).unwrap();
        let entries: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1);
        // A fresh host (a new process, say) deserializes instead of compiling.
        let started = Instant::now();
        let mut miner = PluginHost::new(config.clone())
            .load_dir(&dir)
            .unwrap()
            .into_miner()
            .unwrap();
        let cached_load = started.elapsed();
        let (positives, pool) = support::mining_data();
        check_default_mining(&miner.mine(&positives, &pool, PARAMS).unwrap());
        // A damaged artefact is ignored and replaced.
        std::fs::write(&entries[0], b"not an artefact").unwrap();
        let mut miner = PluginHost::new(config)
            .load_dir(&dir)
            .unwrap()
            .into_miner()
            .unwrap();
        check_default_mining(&miner.mine(&positives, &pool, PARAMS).unwrap());
        assert_ne!(std::fs::read(&entries[0]).unwrap(), b"not an artefact");
        assert!(cached_load < Duration::from_secs(5));
    }
}

mod frozen {
    /// Released WIT files are frozen: a change needs a new `since_vX.Y.Z` folder, not an edit.
    #[test]
    fn released_wit_files_are_unchanged() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/wit/since_v0.1.0");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let digests: Vec<String> = names
            .iter()
            .map(|n| {
                format!(
                    "{n} {}",
                    concepts_fs::sha256_hex(&std::fs::read(dir.join(n)).unwrap())
                )
            })
            .collect();
        assert_eq!(digests, FROZEN_V0_1_0, "a released WIT file changed");
    }

    const FROZEN_V0_1_0: [&str; 5] = [
        "host.wit 51a4179295b2d1f53bb9f6472f89c743cfe8b716ea451670268478bc817de532",
        "linker.wit e092c967b86798d32452646542c6ead5d1250e7c71c905e296980f9e257619e7",
        "miner.wit 325a4847ff6321bc2f8d649261446231f2173ddf8ed2ed0004265bc3bd15e697",
        "trainer.wit 3cace870611d518182752e8ecaf37ebc9a4f93069374a688ec305253b179e88e",
        "worlds.wit 0279d8f8a39fb2e5babad97c3410cc642603f979fd0de4c8a71251a00af34617",
    ];
}
