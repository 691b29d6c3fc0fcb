//! `concepts train`: the contract command line on a tiny random model and toy-world photos.

use std::path::Path;

use concepts_tests::e2e::write_model;

use concepts_plugin_host::api::Role;
use concepts_plugin_host::{ManifestLimits, PluginKind};
use rand::SeedableRng;

// Builds the plugin crates from source and writes packages, as the plugin host's own tests do.
use concepts_tests::plugins as support;

fn concepts(home: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = concepts_tests::e2e::command(concepts_tests::concepts_bin!(), home);
    cmd.args(args).output().unwrap()
}

fn write_images(dir: &Path, n: usize, subject: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let combo = *toy_world::choose_subjects(2, 1).unwrap()[0].combo();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64 + u64::from(subject));
    for i in 0..n {
        let scene = if subject {
            toy_world::photo_of(&mut rng, combo, &[combo])
        } else {
            toy_world::generic_scene(&mut rng, &[combo])
        };
        let img = toy_world::render(&scene, toy_world::ImageSize::DEFAULT);
        std::fs::write(dir.join(format!("{i}.png")), toy_world::encode_png(&img)).unwrap();
    }
}

#[test]
fn train_writes_package_and_report_and_refuses_bad_input() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write_model(&r.join("model"), 1);
    write_images(&r.join("photos"), 3, true);
    write_images(&r.join("pool"), 8, false);
    let s = |p: &str| r.join(p).display().to_string();
    let (home, model, photos, pool, out) =
        (s("home"), s("model"), s("photos"), s("pool"), s("bo.ycpt"));
    let common = [
        "train",
        "bo",
        "--images",
        &photos,
        "--negatives",
        &pool,
        "--model",
        &model,
        "--epochs",
        "2",
        "--k",
        "2",
        "--questions",
        "1",
        "--easy",
        "3",
        "-o",
        &out,
    ];

    let ok = concepts(Path::new(&home), &common);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("wrote `") && stdout.contains("bo.training.json"),
        "{stdout}"
    );
    assert!(r.join("bo.training.png").is_file() && r.join("bo.training.json").is_file());
    let package = concept_format::ConceptPackage::read_file(&r.join("bo.ycpt")).unwrap();
    assert_eq!(package.manifest().identifier, "<bo>");

    // The package installs, and its identifier is then taken.
    let install = concepts(Path::new(&home), &["install", &out]);
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let again = concepts(Path::new(&home), &common);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("an installed concept is already called")
    );

    let mut unknown = common.to_vec();
    unknown.extend(["--miner", "acme.nope"]);
    unknown[1] = "mo";
    let err = concepts(Path::new(&home), &unknown);
    assert_eq!(err.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("acme.nope"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );

    std::fs::remove_file(r.join("photos/0.png")).unwrap();
    let mut few = common.to_vec();
    few[1] = "mo";
    let err = concepts(Path::new(&home), &few);
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("at least 3 are needed"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );

    // Without --model, a CONCEPTS_DEFAULT_MODEL must be a model folder.
    let no_model: Vec<&str> = common
        .iter()
        .copied()
        .filter(|a| *a != "--model" && *a != model)
        .collect();
    let err = concepts_tests::e2e::command(concepts_tests::concepts_bin!(), Path::new(&home))
        .args(&no_model)
        .env("CONCEPTS_DEFAULT_MODEL", r.join("nothing-here"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains("CONCEPTS_DEFAULT_MODEL") && stderr.contains("has no config.json"),
        "{stderr}"
    );
}

/// The shipped default stages, built as wasm components and installed under ids of their own (so no
/// built-in can stand in for them), carry a whole `concepts train` run.
#[test]
fn train_runs_through_the_default_stages_as_installed_wasm_components() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write_model(&r.join("model"), 1);
    write_images(&r.join("photos"), 3, true);
    write_images(&r.join("pool"), 8, false);
    let home = r.join("home");
    let stages = [
        ("test.wasm-miner", Role::Miner, "concepts-default-miner"),
        (
            "test.wasm-trainer",
            Role::Trainer,
            "concepts-default-trainer",
        ),
        ("test.wasm-linker", Role::Linker, "concepts-default-linker"),
    ];
    for (id, role, krate) in stages {
        let dir = support::package(
            &r.join("packages"),
            id,
            role,
            PluginKind::Wasm,
            &support::component(krate),
            ManifestLimits::default(),
        );
        let out = concepts(&home, &["plugin", "install", &dir.display().to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = concepts(&home, &["plugin", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    for (id, role, _) in stages {
        let line = listed
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("`{id}` not listed: {listed}"));
        let role = match role {
            Role::Miner => "miner",
            Role::Trainer => "trainer",
            Role::Linker => "linker",
        };
        assert!(line.contains(role) && line.contains("wasm"), "{line}");
    }
    // The built-in stages are listed with their version, in use or not.
    for id in [
        "concepts.default-miner",
        "concepts.default-trainer",
        "concepts.default-linker",
    ] {
        let line = format!("{id}\t{}\t", env!("CARGO_PKG_VERSION"));
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&line) && l.contains("built-in")),
            "`{id}` not listed as built-in: {listed}"
        );
    }

    let s = |p: &str| r.join(p).display().to_string();
    let out = concepts(
        &home,
        &[
            "train",
            "bo",
            "--images",
            &s("photos"),
            "--negatives",
            &s("pool"),
            "--model",
            &s("model"),
            "--epochs",
            "2",
            "--k",
            "2",
            "--questions",
            "1",
            "--easy",
            "3",
            "--miner",
            "test.wasm-miner",
            "--trainer",
            "test.wasm-trainer",
            "--linker",
            "test.wasm-linker",
            "-o",
            &s("bo.ycpt"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let package = concept_format::ConceptPackage::read_file(&r.join("bo.ycpt")).unwrap();
    let provenance = format!("{:?}", package.manifest());
    for (id, _, _) in stages {
        assert!(
            provenance.contains(id),
            "`{id}` not in the provenance: {provenance}"
        );
    }
}
