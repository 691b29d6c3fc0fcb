//! The `concepts` binary, run for real in a temp dir with `CONCEPTS_HOME` set.
//!
//! Covers the command-line contract (`inspect`, `pack`, `install`, `list --json`, `remove`,
//! `verify`), full round trips through the registry, error messages and exit codes, and that no
//! malformed file makes the process panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;

/// A temp dir with a registry home inside it; runs `concepts` there.
struct Env {
    dir: tempfile::TempDir,
}

/// What a run of `concepts` produced.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }

    /// Asserts a clean failure: exit status 1 and a `concepts: error: ` message, never a panic (101).
    #[track_caller]
    fn fails(self) -> Run {
        assert_eq!(self.code, 1, "expected exit status 1: {self:#?}");
        assert!(
            self.stderr.starts_with("concepts: error: "),
            "stderr must start with the error prefix: {self:#?}"
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn home(&self) -> PathBuf {
        self.path("home")
    }

    fn run(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_concepts"))
            .args(args)
            .current_dir(self.dir.path())
            .env("CONCEPTS_HOME", self.home())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        Run {
            code: output
                .status
                .code()
                .expect("exited, not killed by a signal"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    /// Writes `T.safetensors` + `M.toml` for a concept and packs them into `<name>.ycpt`.
    fn pack(&self, name: &str, seed: f32) -> PathBuf {
        self.pack_with(name, seed, "1")
    }

    fn pack_with(&self, name: &str, seed: f32, embed_hash_digit: &str) -> PathBuf {
        let tensors = self.path(&format!("{name}.safetensors"));
        std::fs::write(&tensors, safetensors_bytes(2, 8, seed, None)).unwrap();
        let manifest = self.path(&format!("{name}.toml"));
        std::fs::write(&manifest, manifest_toml(name, embed_hash_digit)).unwrap();
        let out = self.path(&format!("{name}.ycpt"));
        self.run(&[
            "pack",
            "--tensors",
            tensors.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .ok();
        out
    }
}

/// A safetensors file as the reference Python trainer writes it: `identifier` [d],
/// `latents` [k, d], `head` [d], all f32. `skip` leaves one tensor out.
fn safetensors_bytes(k: usize, d: usize, seed: f32, skip: Option<&str>) -> Vec<u8> {
    let values = |n: usize, offset: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((i as f32 + offset + seed) / 16.0).to_le_bytes())
            .collect()
    };
    let identifier = values(d, 0.0);
    let latents = values(k * d, 100.0);
    let head = values(d, -50.0);
    let tensors = [
        (
            "identifier",
            TensorView::new(Dtype::F32, vec![d], &identifier).unwrap(),
        ),
        (
            "latents",
            TensorView::new(Dtype::F32, vec![k, d], &latents).unwrap(),
        ),
        ("head", TensorView::new(Dtype::F32, vec![d], &head).unwrap()),
    ];
    safetensors::serialize(tensors.into_iter().filter(|(n, _)| Some(*n) != skip), None).unwrap()
}

/// A manifest without `k`, `d`, `dtype` and `body_sha256`: `pack` fills those in.
fn manifest_toml(name: &str, embed_hash_digit: &str) -> String {
    format!(
        r#"name = "{name}"
identifier = "<{name}>"
display_name = "{name} the dog"
category = "pet"
prompt_template = "llava_v1/yollava-1"
license = "CC-BY-4.0"
created = "2025-05-03T12:00:00Z"
user_facts = ["<{name}>'s birthday is May 3"]

[base_model]
architecture = "toy/llava-tiny"
hidden_size = 8
vocab_size = 1000
tokenizer_sha256 = "{}"
embed_sha256 = "{}"
lm_head_sha256 = "{}"
"#,
        "0".repeat(64),
        embed_hash_digit.repeat(64),
        "2".repeat(64)
    )
}

fn sha256_of(path: &Path) -> String {
    concept_format::sha256_hex(&std::fs::read(path).unwrap())
}

fn blob_path(env: &Env, file: &Path) -> PathBuf {
    env.home()
        .join("blobs/sha256")
        .join(format!("{}.ycpt", sha256_of(file)))
}

#[test]
fn round_trip_pack_inspect_install_list_show_export_remove_verify_gc() {
    let env = Env::new();
    let bo = env.pack("bo", 1.0);

    let inspect = env.run(&["inspect", bo.to_str().unwrap()]).ok();
    assert!(
        inspect.stdout.contains("format:     ycpt v1.0"),
        "{inspect:#?}"
    );
    assert!(inspect.stdout.contains("name = \"bo\""), "{inspect:#?}");
    assert!(inspect.stdout.contains("latents"), "{inspect:#?}");
    let inspect = env
        .run(&["inspect", "--json", bo.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(inspect["file"]["sha256"], sha256_of(&bo));
    assert_eq!(inspect["file"]["format_version"], "1.0");
    assert_eq!(inspect["manifest"]["identifier"], "<bo>");
    assert_eq!(inspect["manifest"]["k"], 2);
    assert_eq!(inspect["manifest"]["dtype"], "f32");
    assert_eq!(inspect["tensors"][1]["name"], "latents");
    assert_eq!(inspect["tensors"][1]["shape"], serde_json::json!([2, 8]));
    // inspect does not create the registry.
    assert!(!env.home().exists());

    let install = env.run(&["install", bo.to_str().unwrap()]).ok();
    assert!(
        install.stdout.starts_with("installed bo (<bo>) sha256:"),
        "{install:#?}"
    );
    assert!(blob_path(&env, &bo).is_file());

    let list = env.run(&["list", "--json"]).ok().json();
    let items = list.as_array().expect("list --json prints an array");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], "bo");
    assert_eq!(items[0]["identifier"], "<bo>");
    assert_eq!(items[0]["display_name"], "bo the dog");
    assert_eq!(items[0]["category"], "pet");
    assert_eq!(items[0]["k"], 2);
    assert_eq!(items[0]["d"], 8);
    assert_eq!(items[0]["dtype"], "f32");
    assert_eq!(items[0]["sha256"], sha256_of(&bo));
    assert_eq!(items[0]["size"], std::fs::metadata(&bo).unwrap().len());
    assert_eq!(items[0]["base_model"]["architecture"], "toy/llava-tiny");
    let table = env.run(&["list"]).ok();
    assert!(table.stdout.starts_with("NAME "), "{table:#?}");
    assert!(
        table.stdout.lines().nth(1).unwrap().starts_with("bo "),
        "{table:#?}"
    );

    let show = env.run(&["show", "bo"]).ok();
    assert!(show.stdout.contains(&sha256_of(&bo)), "{show:#?}");
    assert!(
        show.stdout.contains("<bo>'s birthday is May 3"),
        "{show:#?}"
    );
    let show = env.run(&["show", "--json", "<bo>"]).ok().json();
    assert_eq!(show["installed"]["name"], "bo");
    assert_eq!(
        show["manifest"]["user_facts"][0],
        "<bo>'s birthday is May 3"
    );
    assert_eq!(show["tensors"].as_array().unwrap().len(), 3);

    let exported = env.path("exported/bo.ycpt");
    std::fs::create_dir(exported.parent().unwrap()).unwrap();
    env.run(&["export", "bo", "-o", exported.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read(&exported).unwrap(),
        std::fs::read(&bo).unwrap()
    );

    let again = env.run(&["install", exported.to_str().unwrap()]).ok();
    assert!(
        again.stdout.contains("already installed; nothing to do"),
        "{again:#?}"
    );

    let verify = env.run(&["verify"]).ok();
    assert_eq!(verify.stdout, "checked 1 concept: 0 problems found\n");

    let remove = env.run(&["remove", "bo"]).ok();
    assert!(
        remove.stdout.starts_with("removed bo (<bo>)"),
        "{remove:#?}"
    );
    assert_eq!(
        env.run(&["list", "--json"]).ok().json(),
        serde_json::json!([])
    );
    assert!(!blob_path(&env, &bo).exists());
    env.run(&["verify"]).ok();
    let gc = env.run(&["gc"]).ok();
    assert!(gc.stdout.ends_with("freed 0 B\n"), "{gc:#?}");
}

#[test]
fn install_clash_is_refused_and_replace_overrides_it() {
    let env = Env::new();
    let v1 = env.pack("bo", 1.0);
    let v1_copy = env.path("bo-v1.ycpt");
    std::fs::rename(&v1, &v1_copy).unwrap();
    let v2 = env.pack("bo", 2.0);
    env.run(&["install", v1_copy.to_str().unwrap()]).ok();

    let clash = env.run(&["install", v2.to_str().unwrap()]).fails();
    assert!(
        clash.stderr.contains(&format!(
            "installing `{}`: concept `bo` is already installed as sha256:{}",
            v2.display(),
            sha256_of(&v1_copy)
        )),
        "{clash:#?}"
    );
    let replaced = env
        .run(&["install", "--replace", v2.to_str().unwrap()])
        .ok();
    assert!(
        replaced.stdout.starts_with("replaced bo (<bo>)"),
        "{replaced:#?}"
    );
    let list = env.run(&["list", "--json"]).ok().json();
    assert_eq!(list[0]["sha256"], sha256_of(&v2));
    env.run(&["verify"]).ok();
}

#[test]
fn verify_fails_on_a_corrupted_blob_and_gc_cleans_leftovers() {
    let env = Env::new();
    let bo = env.pack("bo", 1.0);
    env.run(&["install", bo.to_str().unwrap()]).ok();
    let blob = blob_path(&env, &bo);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[40] ^= 0x20;
    std::fs::write(&blob, &bytes).unwrap();

    let verify = env.run(&["verify"]).fails();
    assert!(
        verify
            .stdout
            .contains("damaged: concept `bo`: blob hash mismatch, expected sha256:"),
        "{verify:#?}"
    );
    assert!(
        verify.stderr.contains("1 damaged concept(s)"),
        "{verify:#?}"
    );
    env.run(&["show", "bo"]).fails();

    // Reinstalling repairs the blob; a crash leftover makes verify fail until gc.
    env.run(&["install", bo.to_str().unwrap()]).ok();
    std::fs::write(env.home().join("tmp/blob-crash.tmp"), b"partial").unwrap();
    let verify = env.run(&["verify"]).fails();
    assert!(verify.stdout.contains("orphan temp file"), "{verify:#?}");
    assert!(
        verify.stderr.contains("`concepts gc` removes them"),
        "{verify:#?}"
    );
    let gc = env.run(&["gc"]).ok();
    assert!(
        gc.stdout
            .contains("removed 0 unreferenced blob(s) and 1 temp file(s), freed 7 B"),
        "{gc:#?}"
    );
    env.run(&["verify"]).ok();
}

#[test]
fn inspect_rejects_every_malformed_file_without_panicking() {
    let env = Env::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../concept-format/tests/malformed");
    let expected: toml::Table = std::fs::read_to_string(dir.join("EXPECTED.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let cases = expected["case"].as_array().unwrap();
    assert!(cases.len() >= 40, "corpus has {} cases", cases.len());
    for case in cases {
        let file = dir.join(case["file"].as_str().unwrap());
        let run = env.run(&["inspect", file.to_str().unwrap()]).fails();
        let contains = case["contains"].as_str().unwrap();
        assert!(
            run.stderr.contains(contains),
            "{}: expected `{contains}` in {run:#?}",
            file.display()
        );
        env.run(&["inspect", "--json", file.to_str().unwrap()])
            .fails();
        env.run(&["install", file.to_str().unwrap()]).fails();
    }
    // Nothing malformed got in.
    assert_eq!(
        env.run(&["list", "--json"]).ok().json(),
        serde_json::json!([])
    );
    env.run(&["verify"]).ok();
}

#[test]
fn inspect_rejects_truncations_and_bit_flips_of_a_valid_file() {
    let env = Env::new();
    let bo = env.pack("bo", 1.0);
    let bytes = std::fs::read(&bo).unwrap();
    let broken = env.path("broken.ycpt");
    let step = (bytes.len() / 25).max(1);
    for len in (0..bytes.len()).step_by(step) {
        std::fs::write(&broken, &bytes[..len]).unwrap();
        env.run(&["inspect", broken.to_str().unwrap()]).fails();
    }
    for at in (0..bytes.len()).step_by(step).skip(1) {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x80;
        std::fs::write(&broken, &flipped).unwrap();
        env.run(&["inspect", broken.to_str().unwrap()]).fails();
    }
    let missing = env.run(&["inspect", "does-not-exist.ycpt"]).fails();
    assert!(
        missing.stderr.contains("reading `does-not-exist.ycpt`"),
        "{missing:#?}"
    );
}

#[test]
fn golden_file_inspects_and_migrates_to_identical_bytes() {
    let env = Env::new();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/golden/bo-v1.0.ycpt");
    env.run(&["inspect", golden.to_str().unwrap()]).ok();
    let out = env.path("migrated.ycpt");
    let migrate = env
        .run(&[
            "migrate",
            golden.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .ok();
    assert!(
        migrate.stdout.contains("v1.0 -> v1.0 (unchanged)"),
        "{migrate:#?}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&golden).unwrap()
    );
    // In place.
    let copy = env.path("copy.ycpt");
    std::fs::copy(&golden, &copy).unwrap();
    env.run(&["migrate", copy.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&golden).unwrap()
    );
    // A malformed file is refused and left alone.
    std::fs::write(&copy, b"\x89YCPT\r\n\x1a\x01\x00").unwrap();
    env.run(&["migrate", copy.to_str().unwrap()]).fails();
    assert_eq!(std::fs::read(&copy).unwrap(), b"\x89YCPT\r\n\x1a\x01\x00");
}

#[test]
fn pack_reports_bad_inputs() {
    let env = Env::new();
    let manifest = env.path("m.toml");
    let tensors = env.path("t.safetensors");
    let out = env.path("out.ycpt");
    let pack = |env: &Env| {
        env.run(&[
            "pack",
            "--tensors",
            tensors.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };

    std::fs::write(&manifest, manifest_toml("bo", "1")).unwrap();
    std::fs::write(&tensors, safetensors_bytes(2, 8, 0.0, Some("head"))).unwrap();
    let run = pack(&env).fails();
    assert!(run.stderr.contains("reading tensors from"), "{run:#?}");

    // The manifest says k = 3 but the tensors have k = 2.
    std::fs::write(&tensors, safetensors_bytes(2, 8, 0.0, None)).unwrap();
    std::fs::write(&manifest, format!("k = 3\n{}", manifest_toml("bo", "1"))).unwrap();
    let run = pack(&env).fails();
    assert!(run.stderr.contains("does not fit tensors"), "{run:#?}");

    std::fs::write(&manifest, "name = \"bo\"\n[[[").unwrap();
    let run = pack(&env).fails();
    assert!(
        run.stderr.contains("manifest is not valid TOML"),
        "{run:#?}"
    );

    // Tensors of width 16 against a base model of hidden size 8.
    std::fs::write(&manifest, manifest_toml("bo", "1")).unwrap();
    std::fs::write(&tensors, safetensors_bytes(2, 16, 0.0, None)).unwrap();
    pack(&env).fails();
    assert!(!out.exists(), "no output on failure");
}

#[test]
fn pinned_base_model_needs_force_for_hash_differences() {
    let env = Env::new();
    let bo = env.pack("bo", 1.0);
    let mochi = env.pack_with("mochi", 2.0, "7");
    env.run(&["install", bo.to_str().unwrap()]).ok();
    assert_eq!(env.run(&["pin"]).ok().stdout, "not pinned\n");
    env.run(&["pin", "bo"]).ok();
    assert!(env.run(&["pin"]).ok().stdout.contains("toy/llava-tiny"));

    let refused = env.run(&["install", mochi.to_str().unwrap()]).fails();
    assert!(
        refused.stderr.contains(&format!(
            "concept `mochi` does not fit the registry's pinned base model: base model mismatch: \
             embed_sha256 expected `{}` found `{}`",
            "7".repeat(64),
            "1".repeat(64)
        )),
        "{refused:#?}"
    );
    let forced = env
        .run(&["install", "--force", mochi.to_str().unwrap()])
        .ok();
    assert!(
        forced
            .stderr
            .contains("warning: forced past base-model difference: embed_sha256"),
        "{forced:#?}"
    );
    env.run(&["pin", "--clear"]).ok();
    assert_eq!(env.run(&["pin"]).ok().stdout, "not pinned\n");
}

#[test]
fn errors_name_the_item_and_use_exit_codes() {
    let env = Env::new();
    let run = env.run(&["remove", "ghost"]).fails();
    assert_eq!(
        run.stderr,
        "concepts: error: removing concept `ghost`: concept `ghost` is not installed \
         (no name or identifier matches)\n"
    );
    env.run(&["show", "ghost"]).fails();
    env.run(&["export", "ghost", "-o", "x.ycpt"]).fails();

    // Usage errors come from clap with status 2.
    assert_eq!(env.run(&["install"]).code, 2);
    assert_eq!(env.run(&["frobnicate"]).code, 2);
    assert_eq!(env.run(&["export", "bo"]).code, 2);
    assert_eq!(env.run(&["pack", "--tensors", "t"]).code, 2);

    // A registry that cannot be opened.
    std::fs::write(env.path("file-not-dir"), b"").unwrap();
    let run = env.run(&["--home", "file-not-dir", "list"]).fails();
    assert!(
        run.stderr.contains("opening registry `file-not-dir`"),
        "{run:#?}"
    );
}

#[test]
fn help_is_available_for_every_command() {
    let env = Env::new();
    let top = env.run(&["--help"]).ok();
    let commands = [
        "install", "list", "show", "remove", "verify", "gc", "export", "inspect", "pack",
        "migrate", "pin",
    ];
    for command in commands {
        assert!(
            top.stdout.contains(command),
            "{command} missing from {top:#?}"
        );
        let help = env.run(&[command, "--help"]).ok();
        assert!(help.stdout.contains("Usage: concepts"), "{help:#?}");
    }
    assert!(env.run(&["--version"]).ok().stdout.starts_with("concepts "));
}

#[test]
fn home_flag_overrides_the_environment() {
    let env = Env::new();
    let bo = env.pack("bo", 1.0);
    let other = env.path("other-home");
    env.run(&[
        "--home",
        other.to_str().unwrap(),
        "install",
        bo.to_str().unwrap(),
    ])
    .ok();
    assert!(other.join("index.json").is_file());
    assert_eq!(
        env.run(&["list", "--json"]).ok().json(),
        serde_json::json!([])
    );
    let list = env
        .run(&["list", "--json", "--home", other.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(list[0]["name"], "bo");
}

#[test]
fn verbose_logs_go_to_stderr() {
    let env = Env::new();
    let bo = env.pack("bo", 1.0);
    let run = env.run(&["-v", "install", bo.to_str().unwrap()]).ok();
    assert!(run.stderr.contains("installed"), "{run:#?}");
    assert!(run.stdout.starts_with("installed bo"), "{run:#?}");
    let quiet = env.run(&["install", bo.to_str().unwrap()]).ok();
    assert_eq!(quiet.stderr, "");
}
