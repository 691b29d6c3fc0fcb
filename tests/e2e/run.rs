//! `concepts run` on the parity fixture (`runtime/tests/fixtures/parity`): the command-line
//! contract used by outside parity checks, compared with what transformers computed.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use concepts_tests::e2e::{parity_fixture as fixture, parity_model as model_dir, Run};

fn reference_json() -> Value {
    let text = std::fs::read_to_string(fixture().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `name` of a safetensors file as f32 or i64 values (i64 widened to f64 exactly).
fn read_tensor(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f64>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("tensor `{name}`: {e}"));
    let values = match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        Dtype::I64 => t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("tensor `{name}` has dtype {other:?}"),
    };
    (t.shape().to_vec(), values)
}

fn ids(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as f64)
        .collect()
}

fn concepts(home: &Path, args: &[&str]) -> Run {
    concepts_tests::e2e::run(concepts_tests::concepts_bin!(), home, args)
}

#[track_caller]
fn ok(run: Run) -> Run {
    run.ok()
}

/// Max |a - b|; the shapes must agree.
fn max_abs_diff(a: &(Vec<usize>, Vec<f64>), b: &(Vec<usize>, Vec<f64>)) -> f64 {
    assert_eq!(a.0, b.0, "shapes differ");
    a.1.iter()
        .zip(&b.1)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn raw_prompt_with_image_matches_transformers_logits_and_greedy_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let json = reference_json();
    let raw = &json["raw"];
    let image = fixture().join(
        json["images"][raw["image"].as_str().unwrap()]
            .as_str()
            .unwrap(),
    );
    let logits_out = tmp.path().join("out.safetensors");
    let max_tokens = raw["generated_ids"].as_array().unwrap().len().to_string();
    let out = ok(concepts(
        &tmp.path().join("home"),
        &[
            "run",
            "--model",
            model_dir().to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--raw-prompt",
            "--prompt",
            raw["prompt"].as_str().unwrap(),
            "--max-tokens",
            &max_tokens,
            "--logits-out",
            logits_out.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        out.stdout,
        format!("{}\n", raw["generated_text"].as_str().unwrap())
    );

    let written = std::fs::read(&logits_out).unwrap();
    let reference = std::fs::read(fixture().join("reference.safetensors")).unwrap();
    let diff = max_abs_diff(
        &read_tensor(&written, "logits"),
        &read_tensor(&reference, "raw.logits"),
    );
    println!("cli raw.logits: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "logits differ by {diff}");
    let input_ids = read_tensor(&written, "input_ids");
    assert_eq!(input_ids.1, ids(&raw["input_ids"]));
    assert_eq!(
        read_tensor(&written, "generated_ids").1,
        ids(&raw["generated_ids"])
    );
}

/// The fixture concept, packed for the fixture model and installed in a fresh registry.
fn install_fixture_concept(home: &Path, dir: &Path) {
    let reference = std::fs::read(fixture().join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&reference).unwrap();
    let views: HashMap<&str, TensorView> = ["identifier", "latents", "head"]
        .into_iter()
        .map(|n| (n, st.tensor(&format!("concept.{n}")).unwrap()))
        .collect();
    let tensors = dir.join("bo.safetensors");
    safetensors::serialize_to_file(views, None, &tensors).unwrap();

    let fp = concepts_runtime::fingerprint(&model_dir()).unwrap();
    let manifest = dir.join("bo.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"name = "bo"
identifier = "<bo>"
display_name = "Bo"
category = "pet"
prompt_template = "llava_v1/yollava-1"
license = "CC0-1.0"
created = "2025-05-03T12:00:00Z"

[base_model]
architecture = "{}"
hidden_size = {}
vocab_size = {}
tokenizer_sha256 = "{}"
embed_sha256 = "{}"
lm_head_sha256 = "{}"
"#,
            fp.architecture,
            fp.hidden_size,
            fp.vocab_size,
            fp.tokenizer_sha256,
            fp.embed_sha256,
            fp.lm_head_sha256
        ),
    )
    .unwrap();
    let package = dir.join("bo.ycpt");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    ok(concepts(
        home,
        &[
            "pack",
            "--tensors",
            &p(&tensors),
            "--manifest",
            &p(&manifest),
            "-o",
            &p(&package),
        ],
    ));
    ok(concepts(home, &["install", &p(&package)]));
}

#[test]
fn installed_concept_is_activated_with_the_personal_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    install_fixture_concept(&home, tmp.path());
    let json = reference_json();
    let case = &json["concept_text"];
    let logits_out = tmp.path().join("concept.safetensors");
    let out = ok(concepts(
        &home,
        &[
            "run",
            "--model",
            model_dir().to_str().unwrap(),
            "--concept",
            "bo",
            "--prompt",
            case["question"].as_str().unwrap(),
            "--max-tokens",
            "0",
            "--logits-out",
            logits_out.to_str().unwrap(),
        ],
    ));
    assert_eq!(out.stdout, "\n");
    let written = std::fs::read(&logits_out).unwrap();
    let reference = std::fs::read(fixture().join("reference.safetensors")).unwrap();
    assert_eq!(
        read_tensor(&written, "input_ids").1,
        ids(&case["input_ids"])
    );
    let diff = max_abs_diff(
        &read_tensor(&written, "logits"),
        &read_tensor(&reference, "concept_text.logits"),
    );
    println!("cli concept_text.logits: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "logits differ by {diff}");
    let st = SafeTensors::deserialize(&written).unwrap();
    assert!(
        st.tensor("generated_ids").is_err(),
        "no tokens, no generated_ids"
    );
}

#[test]
fn bad_inputs_fail_with_messages_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model = model_dir();
    let model = model.to_str().unwrap();
    let missing = tmp.path().join("missing.png");
    let out = concepts(
        &home,
        &[
            "run",
            "--model",
            model,
            "--image",
            missing.to_str().unwrap(),
            "--prompt",
            "Hi",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("concepts: error: "),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("missing.png"), "{}", out.stderr);

    let not_image = tmp.path().join("notes.jpg");
    std::fs::write(&not_image, "hello").unwrap();
    let out = concepts(
        &home,
        &[
            "run",
            "--model",
            model,
            "--image",
            not_image.to_str().unwrap(),
            "--prompt",
            "Hi",
        ],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("notes.jpg") && out.stderr.contains("unsupported"),
        "{}",
        out.stderr
    );

    let image = fixture().join("images/logo.png");
    let out = concepts(
        &home,
        &[
            "run",
            "--model",
            model,
            "--image",
            image.to_str().unwrap(),
            "--raw-prompt",
            "--prompt",
            "no marker",
        ],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("0 `<image>` markers for 1 image(s)"),
        "{}",
        out.stderr
    );

    let out = concepts(
        &home,
        &[
            "run",
            "--model",
            model,
            "--concept",
            "nobody",
            "--prompt",
            "Hi",
        ],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("`nobody`"), "{}", out.stderr);

    let out = concepts(
        &home,
        &[
            "run",
            "--model",
            model,
            "--prompt",
            "Hi",
            "--temperature=-1",
        ],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("temperature"), "{}", out.stderr);
}

#[test]
fn hostile_images_are_refused_before_they_are_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model = model_dir();
    let model = model.to_str().unwrap();
    let run = |image: &Path, pad: bool| {
        let mut args = vec!["run", "--model", model, "--image", image.to_str().unwrap()];
        if pad {
            args.push("--pad-to-square");
        }
        args.extend(["--prompt", "Hi", "--max-tokens", "1"]);
        concepts(&home, &args)
    };
    // 1 × 1,000,000 pixels (4 KB), 60000 × 1 padded to a square, and a 100000² header.
    let write_png = |name: &str, w: u32, h: u32| {
        let path = tmp.path().join(name);
        image::RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]))
            .save(&path)
            .unwrap();
        path
    };
    let thin = write_png("thin.png", 1, 1_000_000);
    let wide = write_png("wide.png", 60_000, 1);
    for (path, pad, what) in [
        (&thin, false, "side after resizing"),
        (&wide, true, "pixels padded to a square"),
    ] {
        let out = run(path, pad);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains(what), "{}", out.stderr);
    }
    let out = run(Path::new("/dev/zero"), false);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
}

#[test]
fn logits_out_refuses_special_files_and_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let model = model_dir();
    let fifo = tmp.path().join("logits.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let inside = home.join("index.json");
    for (dest, what) in [
        (Path::new("/dev/null"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (inside.as_path(), "inside the registry"),
    ] {
        let args = [
            "run",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Hi",
            "--max-tokens",
            "1",
            "--logits-out",
            dest.to_str().unwrap(),
        ];
        let out = concepts(&home, &args);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(
            out.stderr.contains(what),
            "{}: {}",
            dest.display(),
            out.stderr
        );
    }
    assert!(!inside.exists());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn a_recognition_question_gets_the_same_read_out_as_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    install_fixture_concept(&home, tmp.path());
    let json = reference_json();
    let image = fixture().join(json["images"]["photo"].as_str().unwrap());
    let (model, image) = (
        model_dir().to_str().unwrap().to_string(),
        image.to_str().unwrap().to_string(),
    );
    let ask = |question: &str| {
        let args = [
            "run", "--model", &model, "--image", &image, "--prompt", question, "--json",
        ];
        let out = ok(concepts(&home, &args));
        serde_json::from_str::<Value>(&out.stdout).unwrap()
    };
    let scan = ok(concepts(
        &home,
        &[
            "scan",
            &image,
            "--concept",
            "bo",
            "--model",
            &model,
            "--json",
        ],
    ));
    let scan: Value = serde_json::from_str(&scan.stdout).unwrap();
    let want = &scan["concepts"][0];
    // The short question and the whole one are the same question; the concept is found by
    // its identifier without --concept.
    for question in [
        "Is <bo> in this photo?",
        "is <bo> in this photo?  Answer with a single word or phrase.",
    ] {
        let got = ask(question);
        let r = &got["recognition"];
        for key in ["name", "identifier", "present"] {
            assert_eq!(r[key], want[key], "{question}: {got}");
        }
        // The scan shares the prompt prefix through a KV cache; the sums differ in rounding.
        for key in ["p_yes", "p_no"] {
            let (a, b) = (r[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1e-6),
                "{key}: {a} vs {b}"
            );
        }
        let answer = if want["present"] == Value::Bool(true) {
            "Yes"
        } else {
            "No"
        };
        assert_eq!(got["answer"], answer);
    }
    // Other questions are answered by generation.
    let other = ask("What is <bo> doing in this photo?");
    assert!(other.get("recognition").is_none(), "{other}");
    assert!(other["answer"].is_string() && other["completion_tokens"].is_u64());
}

#[test]
fn the_binary_carries_its_default_model() {
    // A copy of the binary, run from another folder with no CONCEPTS_DEFAULT_MODEL: the model
    // comes out of the binary, not from the source tree it was built in.
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("concepts");
    std::fs::copy(concepts_tests::concepts_bin!(), &bin).unwrap();
    let home = tmp.path().join("home");
    let output = Command::new(&bin)
        .args(["run", "--prompt", "What is this?", "--max-tokens", "2"])
        .current_dir(tmp.path())
        .env("CONCEPTS_HOME", &home)
        .env_remove("CONCEPTS_DEFAULT_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let models: Vec<String> = std::fs::read_dir(home.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        models.len() == 1 && models[0].starts_with("toy-llava-"),
        "{models:?}"
    );
}

/// `concepts quantize` and `--dtype` (issue #18's contract): a concept of the toy base runs on
/// the base's q4k and q8_0 copies and in f16 and bf16; a concept of another base (the parity
/// fixture's) is refused by the copy, both fingerprints named.
#[test]
fn concepts_carry_over_to_quantized_copies_and_other_precisions() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let toy = concepts_runtime::default_model::checkout_model_dir();
    let toy_s = toy.to_str().unwrap();
    let fp = concepts_runtime::fingerprint(&toy).unwrap();
    let package =
        concepts_runtime::testing::random_concept_package("mine", &fp, 16, 7, 0.1).unwrap();
    let file = tmp.path().join("mine.ycpt");
    package.write_file_atomic(&file).unwrap();
    ok(concepts(&home, &["install", file.to_str().unwrap()]));

    let mut models = vec![(toy.clone(), "f16"), (toy.clone(), "bf16")];
    for format in ["q8_0", "q4k"] {
        let out_dir = tmp.path().join(format!("toy-{format}"));
        let out = ok(concepts(
            &home,
            &[
                "quantize",
                "--model",
                toy_s,
                "--format",
                format,
                "-o",
                out_dir.to_str().unwrap(),
            ],
        ));
        assert!(
            out.stdout
                .contains(&format!("48 linear matrices in {format}")),
            "{}",
            out.stdout
        );
        assert_eq!(concepts_runtime::fingerprint(&out_dir).unwrap(), fp);
        models.push((out_dir, "f32"));
    }
    for (model, dtype) in &models {
        let out = ok(concepts(
            &home,
            &[
                "run",
                "--model",
                model.to_str().unwrap(),
                "--dtype",
                dtype,
                "--concept",
                "mine",
                "--prompt",
                "Describe <mine>.",
                "--max-tokens",
                "4",
            ],
        ));
        assert!(
            !out.stdout.trim().is_empty(),
            "{model:?} {dtype}: no answer"
        );
    }

    // Another base's concept, and an existing output folder.
    install_fixture_concept(&home, tmp.path());
    let q4k = tmp.path().join("toy-q4k");
    let run = concepts(
        &home,
        &[
            "run",
            "--model",
            q4k.to_str().unwrap(),
            "--concept",
            "bo",
            "--prompt",
            "hi",
        ],
    )
    .fails();
    assert!(
        run.stderr.contains("was trained for base model"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&fp.embed_sha256), "{}", run.stderr);
    let run = concepts(
        &home,
        &[
            "quantize",
            "--model",
            toy_s,
            "--format",
            "q8_0",
            "-o",
            q4k.to_str().unwrap(),
        ],
    )
    .fails();
    assert!(run.stderr.contains("exists"), "{}", run.stderr);
    let run = concepts(
        &home,
        &["run", "--model", toy_s, "--dtype", "f8", "--prompt", "hi"],
    )
    .fails();
    assert!(run.stderr.contains("dtype `f8`"), "{}", run.stderr);
}
