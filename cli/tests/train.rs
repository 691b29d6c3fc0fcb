//! `concepts train`: the contract command line on a tiny random model and toy-world photos.

use std::path::Path;
use std::process::{Command, Output};

use rand::SeedableRng;

fn write_model(dir: &Path) {
    let json =
        concepts_runtime::testing::tiny_config_json_with_vocab(toy_world::vocabulary().len(), 4);
    concepts_runtime::testing::write_random_checkpoint(dir, &json, 1).unwrap();
    toy_world::write_tokenizer(&dir.join("tokenizer.json")).unwrap();
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

fn concepts(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concepts"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("CONCEPTS_DEFAULT_MODEL")
        .output()
        .unwrap()
}

#[test]
fn train_writes_package_and_report_and_refuses_bad_input() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write_model(&r.join("model"));
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

    // Without --model, the default model must exist.
    let no_model: Vec<&str> = common
        .iter()
        .copied()
        .filter(|a| *a != "--model" && *a != model)
        .collect();
    let err = Command::new(env!("CARGO_BIN_EXE_concepts"))
        .arg("--home")
        .arg(&home)
        .args(&no_model)
        .env("CONCEPTS_DEFAULT_MODEL", r.join("nothing-here"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("the default base model is not available")
    );
}
