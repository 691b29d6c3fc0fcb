//! Concepts through a real OCI registry (CNCF Distribution on loopback), as a user runs them:
//! `concepts push NAME REF`, `concepts pull REF`, `concepts install oci://REF`, and two
//! `concepts serve --concepts-from oci://REPO` replicas sharing one repository.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use concepts_tests::e2e::{
    http, parity_fixture as fixture, parity_model as model_dir, served_address, Run,
};
use concepts_tests::oci_registry::{free_port, TestRegistry};

fn concepts(home: &Path) -> Command {
    concepts_tests::e2e::command(concepts_tests::concepts_bin!(), home)
}

fn run(home: &Path, args: &[&str]) -> Run {
    concepts_tests::e2e::run(concepts_tests::concepts_bin!(), home, args)
}

/// Writes `<name>` for the fixture model (tensors from `seed`) to `dir/<name>.ycpt`.
fn package_file(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let fp = concepts_runtime::fingerprint(&model_dir()).unwrap();
    let package =
        concepts_runtime::testing::random_concept_package(name, &fp, 3, seed, 1.0).unwrap();
    let path = dir.join(format!("{name}.ycpt"));
    std::fs::write(&path, package.to_bytes()).unwrap();
    path
}

/// `concepts scan --json` of the fixture photo on `home`'s concepts.
fn scan(home: &Path) -> Value {
    let out = run(
        home,
        &[
            "scan",
            fixture().join("images/photo.jpg").to_str().unwrap(),
            "--model",
            model_dir().to_str().unwrap(),
            "--json",
        ],
    )
    .ok();
    out.json()
}

#[test]
fn push_pull_install_and_recognise_round_trip() {
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (publisher, user) = (tmp.path().join("publisher"), tmp.path().join("user"));
    let file = package_file(tmp.path(), "bo", 1);
    run(&publisher, &["install", file.to_str().unwrap()]).ok();

    // Without a tag, the concept's name is the tag.
    let repo = format!("{}/household/concepts", registry.host());
    let pushed = run(&publisher, &["push", "bo", &repo]).ok();
    assert!(
        pushed
            .stdout
            .contains(&format!("pushed bo (<bo>) to {repo}:bo")),
        "{}",
        pushed.stdout
    );
    let pinned = pushed
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("pinned: "))
        .expect("a pinned reference")
        .to_string();
    assert!(pinned.starts_with(&format!("{repo}@sha256:")), "{pinned}");

    // pull writes the verified bytes, unchanged, to a file.
    let pulled = tmp.path().join("pulled.ycpt");
    run(
        &user,
        &[
            "pull",
            &format!("oci://{repo}:bo"),
            "-o",
            pulled.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // install oci:// pulls and installs; the concept answers as on the publisher's machine.
    let installed = run(&user, &["install", &format!("oci://{pinned}")]).ok();
    assert!(
        installed.stdout.contains("installed bo (<bo>)"),
        "{}",
        installed.stdout
    );
    let (mine, theirs) = (scan(&publisher), scan(&user));
    assert_eq!(mine["concepts"][0]["name"], "bo");
    assert_eq!(mine["concepts"], theirs["concepts"]);
    let again = run(&user, &["install", &format!("oci://{repo}:bo")]).ok();
    assert!(
        again.stdout.contains("already installed"),
        "{}",
        again.stdout
    );

    // --sha256 pins the package bytes of a pulled package too.
    let wrong = "0".repeat(64);
    let refused = run(
        &tmp.path().join("other"),
        &["install", &format!("oci://{repo}:bo"), "--sha256", &wrong],
    )
    .fails();
    assert!(
        refused.stderr.contains("not the expected"),
        "{}",
        refused.stderr
    );
}

#[test]
fn tampered_missing_and_unreachable_packages_are_refused_with_clear_errors() {
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (publisher, user) = (tmp.path().join("publisher"), tmp.path().join("user"));
    let file = package_file(tmp.path(), "bo", 2);
    run(&publisher, &["install", file.to_str().unwrap()]).ok();
    let reference = format!("{}/household/concepts:bo", registry.host());
    run(&publisher, &["push", "bo", &reference]).ok();

    // The stored blob altered in place: refused, nothing installed or written.
    let digest = format!(
        "sha256:{}",
        concepts_fs::sha256_hex(&std::fs::read(&file).unwrap())
    );
    let blob = registry.blob_file(&digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    let err = run(&user, &["install", &format!("oci://{reference}")]).fails();
    assert!(
        err.stderr.contains(&digest) && err.stderr.contains("refused"),
        "{}",
        err.stderr
    );
    let out = tmp.path().join("bo-pulled.ycpt");
    run(&user, &["pull", &reference, "-o", out.to_str().unwrap()]).fails();
    assert!(!out.exists());
    assert_eq!(
        run(&user, &["list", "--json"])
            .ok()
            .json()
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    // A digest nobody pushed.
    let unknown = format!(
        "{}/household/concepts@sha256:{}",
        registry.host(),
        "e".repeat(64)
    );
    let err = run(&user, &["pull", &unknown]).fails();
    assert!(err.stderr.contains("not found"), "{}", err.stderr);

    // A registry that is not there: fails at once, naming its address.
    let host = format!("127.0.0.1:{}", free_port());
    let err = run(
        &user,
        &["install", &format!("oci://{host}/household/concepts:bo")],
    )
    .fails();
    assert!(
        err.stderr.contains(&host) && err.stderr.contains("unreachable"),
        "{}",
        err.stderr
    );
    // A reference that names no concept.
    let err = run(
        &user,
        &["pull", &format!("{}/household/concepts", registry.host())],
    )
    .fails();
    assert!(
        err.stderr.contains("names a repository but no concept"),
        "{}",
        err.stderr
    );
}

/// A `concepts serve --concepts-from` replica on a free port, with an empty registry of its own.
struct Replica {
    child: Child,
    addr: String,
    home: PathBuf,
}

impl Replica {
    fn start(home: PathBuf, repo: &str) -> Replica {
        let mut child = concepts(&home)
            .args(["serve", "--model"])
            .arg(model_dir())
            .args(["--port", "0", "--image-dir"])
            .arg(fixture().join("images"))
            .args(["--concepts-from", repo])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (addr, _) = served_address(&mut child);
        Replica { child, addr, home }
    }

    fn recognise(&self, concepts: &[&str]) -> (u16, Value) {
        let body = serde_json::json!({"image": "photo.jpg", "concepts": concepts}).to_string();
        let (status, body) = http(&self.addr, "POST", "/v1/recognise", &body);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_replicas_serve_a_concept_pushed_once() {
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let publisher = tmp.path().join("publisher");
    for (seed, name) in [(3, "bo"), (4, "kiki")] {
        let file = package_file(tmp.path(), name, seed);
        run(&publisher, &["install", file.to_str().unwrap()]).ok();
        run(
            &publisher,
            &[
                "push",
                name,
                &format!("{}/household/concepts", registry.host()),
            ],
        )
        .ok();
    }
    let repo = format!("oci://{}/household/concepts", registry.host());
    let a = Replica::start(tmp.path().join("a"), &repo);
    let b = Replica::start(tmp.path().join("b"), &repo);

    let (status, from_a) = a.recognise(&["bo", "kiki"]);
    assert_eq!(status, 200, "{from_a}");
    let (status, from_b) = b.recognise(&["bo", "kiki"]);
    assert_eq!(status, 200, "{from_b}");
    assert_eq!(from_a["data"], from_b["data"]);
    let names: Vec<&str> = from_a["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bo", "kiki"]);
    // The same scores as the publisher's own installation.
    let local = scan(&publisher);
    for (served, scanned) in from_a["data"]
        .as_array()
        .unwrap()
        .iter()
        .zip(local["concepts"].as_array().unwrap())
    {
        assert_eq!(served["p_yes"], scanned["p_yes"]);
    }
    // Each replica now holds both in its own registry, verified like any install.
    for replica in [&a, &b] {
        let listed = run(&replica.home, &["list", "--json"]).ok().json();
        assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    }
    // A name the repository lacks is an unknown concept, not a server error.
    let (status, body) = a.recognise(&["tom"]);
    assert_eq!(status, 404, "{body}");

    // A replica pointed at a registry that is not there refuses to start, naming it.
    let host = format!("127.0.0.1:{}", free_port());
    let err = Run::from(
        concepts(&tmp.path().join("c"))
            .args(["serve", "--model"])
            .arg(model_dir())
            .args([
                "--port",
                "0",
                "--concepts-from",
                &format!("oci://{host}/household/concepts"),
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(err.code, 1, "{}", err.stderr);
    assert!(
        err.stderr.contains(&host) && err.stderr.contains("unreachable"),
        "{}",
        err.stderr
    );
}

#[test]
fn credentials_come_from_the_environment_or_the_docker_config() {
    use concepts_tests::oci_registry::{PASSWORD, USER};
    let registry = TestRegistry::start_with_login();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let file = package_file(tmp.path(), "bo", 7);
    run(&home, &["install", file.to_str().unwrap()]).ok();
    let reference = format!("{}/household/concepts:bo", registry.host());
    let push = |envs: &[(&str, &str)]| {
        let mut cmd = concepts(&home);
        cmd.args(["push", "bo", &reference])
            .env_remove("CONCEPTS_REGISTRY_USERNAME")
            .env_remove("CONCEPTS_REGISTRY_PASSWORD")
            .env("DOCKER_CONFIG", tmp.path().join("no-docker-config"));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Run::from(cmd.output().unwrap())
    };

    let denied = push(&[]).fails();
    assert!(
        denied.stderr.contains("refused access") && denied.stderr.contains("docker config"),
        "{}",
        denied.stderr
    );
    push(&[
        ("CONCEPTS_REGISTRY_USERNAME", USER),
        ("CONCEPTS_REGISTRY_PASSWORD", PASSWORD),
    ])
    .ok();
    let half = push(&[("CONCEPTS_REGISTRY_USERNAME", USER)]).fails();
    assert!(
        half.stderr.contains("CONCEPTS_REGISTRY_PASSWORD"),
        "{}",
        half.stderr
    );

    // What `docker login registry:port` leaves behind.
    let docker = tmp.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    push(&[("DOCKER_CONFIG", docker.to_str().unwrap())]).ok();
}
