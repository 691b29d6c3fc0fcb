//! `concepts scan` and `concepts serve` on the parity fixture model (random weights): the
//! command-line contracts, run as a user would in a temp registry.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use concepts_tests::e2e::{
    http, parity_fixture as fixture, parity_model as model_dir, served_address,
};

fn concepts(home: &Path) -> Command {
    concepts_tests::e2e::command(concepts_tests::concepts_bin!(), home)
}

/// Packs `<name>` for the fixture model (tensors from `seed`) and installs it.
fn install(home: &Path, dir: &Path, name: &str, seed: u32) {
    let fp = concepts_runtime::fingerprint(&model_dir()).unwrap();
    let package =
        concepts_runtime::testing::random_concept_package(name, &fp, 3, u64::from(seed), 1.0)
            .unwrap();
    let path = dir.join(format!("{name}.ycpt"));
    std::fs::write(&path, package.to_bytes()).unwrap();
    let out = concepts(home).arg("install").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn scan_asks_every_installed_concept_or_the_named_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    for (i, name) in ["bo", "kiki", "tom"].iter().enumerate() {
        install(&home, tmp.path(), name, i as u32);
    }
    let image = fixture().join("images/photo.jpg");
    let model = model_dir();
    let scan = |extra: &[&str]| {
        let out = concepts(&home)
            .arg("scan")
            .arg(&image)
            .args(extra)
            .arg("--model")
            .arg(&model)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let all: Value = serde_json::from_str(&scan(&["--json"])).unwrap();
    let rows = all["concepts"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bo", "kiki", "tom"]);
    for r in rows {
        let (y, n) = (r["p_yes"].as_f64().unwrap(), r["p_no"].as_f64().unwrap());
        assert_eq!(r["present"].as_bool().unwrap(), y > n);
    }
    assert_eq!(all["model"], "model");

    let one: Value = serde_json::from_str(&scan(&["--concept", "<kiki>", "--json"])).unwrap();
    assert_eq!(one["concepts"].as_array().unwrap().len(), 1);
    // Asked alone or among all, a concept gets the same answer.
    let diff =
        (one["concepts"][0]["p_yes"].as_f64().unwrap() - rows[1]["p_yes"].as_f64().unwrap()).abs();
    assert!(diff <= 1e-5, "{diff}");

    let table = scan(&["--concept", "tom"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("PRESENT"));
    assert!(
        lines[1].contains("tom") && lines[1].contains("<tom>"),
        "{table}"
    );

    let out = concepts(&home)
        .args(["scan", "missing.jpg", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.jpg"), "{stderr}");
    let out = concepts(&home)
        .arg("scan")
        .arg(&image)
        .args(["--concept", "nobody", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`nobody`"));
}

#[test]
fn serve_answers_on_loopback_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    install(&home, tmp.path(), "bo", 1);
    let mut child = concepts(&home)
        .args(["serve", "--model"])
        .arg(model_dir())
        .args(["--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, mut stderr) = served_address(&mut child);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let (status, body) = http(&addr, "GET", "/health", "");
    assert_eq!(status, 200, "{body}");
    let chat = r#"{"messages":[{"role":"user","content":"Is <bo> here?"}],"max_tokens":3}"#;
    let (status, body) = http(&addr, "POST", "/v1/chat/completions", chat);
    assert_eq!(status, 200, "{body}");
    // Chunked or not, the JSON object is in there.
    assert!(body.contains(r#""concepts":["bo"]"#), "{body}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
}

#[test]
fn serve_without_a_default_model_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out = concepts(&tmp.path().join("home"))
        .arg("serve")
        .env("CONCEPTS_DEFAULT_MODEL", tmp.path().join("no-model"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("default base model") && stderr.contains("no-model"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_an_empty_token_and_an_open_bind_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let serve = |args: &[&str], token_env: Option<&str>| {
        let mut cmd = concepts(&home);
        cmd.arg("serve")
            .arg("--model")
            .arg(model_dir())
            .args(["--port", "0"])
            .args(args);
        match token_env {
            Some(v) => cmd.env("CONCEPTS_API_TOKEN", v),
            None => cmd.env_remove("CONCEPTS_API_TOKEN"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, env) in [
        (&["--token", ""][..], None),
        (&[][..], Some("")),
        (&["--token", "  "][..], None),
    ] {
        let (code, stderr) = serve(args, env);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("token is empty"), "{stderr}");
    }
    let (code, stderr) = serve(&["--host", "0.0.0.0"], None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
}
