//! `concepts eval`: the contract command line on a tiny random model and a toy dataset written
//! by `concepts toy dataset`.

use std::path::Path;

use concepts_tests::e2e::write_model;

fn concepts(home: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = concepts_tests::e2e::command(concepts_tests::concepts_bin!(), home);
    cmd.args(args).output().unwrap()
}

#[test]
fn eval_prints_json_per_condition_and_rejects_bad_datasets() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let model = root.path().join("model");
    write_model(&model, 5);
    let data = root.path().join("data");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = concepts(
        &home,
        &[
            "toy",
            "dataset",
            "--seed",
            "4",
            "--subjects",
            "2",
            "--train",
            "3",
            "--test",
            "2",
            "-o",
            &s(&data),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let args = [
        "eval",
        "--data",
        &s(&data),
        "--base-model",
        &s(&model),
        "--json",
        "--epochs",
        "1",
        "--k",
        "2",
        "--questions",
        "1",
        "--hard-per-positive",
        "1",
        "--easy",
        "2",
        "--test-photos",
        "1",
        "--no-multi",
    ];
    let out = concepts(&home, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for condition in ["vanilla", "description", "learned"] {
        for field in ["positive", "negative", "weighted", "text_qa"] {
            let x = json[condition][field].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{condition}.{field} = {x}");
        }
    }
    assert_eq!(json["subjects"].as_array().unwrap().len(), 2);
    // The concepts are cached under the registry home; a rerun trains nothing.
    let again = concepts(&home, &args);
    let json: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(json["concepts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["cached"] == true));

    // Without --json: Markdown tables.
    let mut text_args = args.to_vec();
    text_args.retain(|a| *a != "--json");
    let out = concepts(&home, &text_args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("| learned |") && text.contains("| vanilla |"),
        "{text}"
    );

    // A folder in neither layout.
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = concepts(
        &home,
        &[
            "eval",
            "--data",
            &s(&empty),
            "--base-model",
            &s(&model),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not an evaluation dataset") && err.contains("empty"),
        "{err}"
    );
}
