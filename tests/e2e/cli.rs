//! The `concepts` binary, run for real in a temp dir with `CONCEPTS_HOME` set.
//!
//! Covers the command-line contract (`inspect`, `pack`, `install`, `list --json`, `remove`,
//! `verify`), full round trips through the registry, error messages and exit codes, and that no
//! malformed file makes the process panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use concepts_tests::e2e::Run;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;

/// A temp dir with a registry home inside it; runs `concepts` there.
struct Env {
    dir: tempfile::TempDir,
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
        run_as(self, args, &[])
    }

    /// Packs `<name>` and installs it; returns the package file.
    fn install_new(&self, name: &str, seed: f32) -> PathBuf {
        let file = self.pack(name, seed);
        self.run(&["install", file.to_str().unwrap()]).ok();
        file
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
    concepts_fs::sha256_hex(&std::fs::read(path).unwrap())
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
    // The name a write killed mid-way leaves: `blob-<file>.<pid>.<n>.tmp`.
    let leftover = env.home().join("tmp/blob-0a1b.ycpt.4242.0.tmp");
    std::fs::write(leftover, b"partial").unwrap();
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
    let dir = concepts_tests::workspace_root().join("concept-format/tests/malformed");
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
    let golden = concepts_tests::workspace_root().join("spec/golden/bo-v1.0.ycpt");
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

fn run_as(env: &Env, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = concepts_tests::e2e::command(concepts_tests::concepts_bin!(), &env.home());
    cmd.args(args).current_dir(env.dir.path());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Run::from(cmd.output().unwrap())
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn gc_deletes_only_its_own_files_and_never_through_a_symlinked_folder() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    env.install_new("bo", 1.0);
    let home = env.home();

    // A user's files next to the registry's own leftovers.
    let own_temp = home.join("tmp/index-index.json.77.3.tmp");
    let legacy_temp = home.join("tmp/blob-Xa3k9q.tmp");
    let user_note = home.join("tmp/thesis.txt");
    let user_blob_dir_file = home.join("blobs/sha256/notes.txt");
    let fake_blob = home.join(format!("blobs/sha256/{}.ycpt", "ab".repeat(32)));
    for (path, bytes) in [
        (&own_temp, &b"half an index"[..]),
        (&legacy_temp, b"half a blob"),
        (&user_note, b"my thesis"),
        (&user_blob_dir_file, b"my notes"),
        (&fake_blob, b"not the bytes its name promises"),
    ] {
        std::fs::write(path, bytes).unwrap();
    }
    let outside = env.path("photos");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("photo.jpg"), b"jpeg").unwrap();
    symlink(outside.join("photo.jpg"), home.join("tmp/link.tmp")).unwrap();

    let verify = env.run(&["verify"]).fails();
    assert!(verify.stdout.contains("note: `"), "{verify:#?}");
    let gc = env.run(&["gc"]).ok();
    assert!(gc.stdout.contains("and 2 temp file(s)"), "{gc:#?}");
    assert!(!own_temp.exists() && !legacy_temp.exists());
    for kept in [&user_note, &user_blob_dir_file, &fake_blob] {
        assert!(kept.is_file(), "gc deleted {}", kept.display());
    }
    assert!(std::fs::symlink_metadata(home.join("tmp/link.tmp")).is_ok());
    assert!(outside.join("photo.jpg").is_file());
    // Foreign files are reported, not counted as damage.
    let verify = env.run(&["verify"]).ok();
    assert!(verify.stdout.contains("thesis.txt"), "{verify:#?}");
    assert!(verify.stdout.ends_with("0 problems found\n"), "{verify:#?}");

    // `tmp` replaced by a link to the user's folder: gc refuses to delete through it.
    std::fs::remove_dir_all(home.join("tmp")).unwrap();
    std::fs::write(outside.join("thesis.txt"), b"my thesis").unwrap();
    std::fs::write(outside.join("blob-Ab3k9q.tmp"), b"looks like ours").unwrap();
    symlink(&outside, home.join("tmp")).unwrap();
    let gc = env.run(&["gc"]).fails();
    assert!(gc.stderr.contains("symbolic link"), "{gc:#?}");
    for name in ["thesis.txt", "photo.jpg", "blob-Ab3k9q.tmp"] {
        assert!(outside.join(name).is_file(), "{name} was deleted");
    }
    env.run(&["list"]).ok();
}

#[test]
fn outputs_refuse_device_nodes_fifos_links_and_the_registry_and_keep_the_mode() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let env = Env::new();
    let bo = env.install_new("bo", 1.0);
    let fifo = env.path("out.fifo");
    mkfifo(&fifo);
    let index = env.home().join("index.json");
    let index_before = std::fs::read(&index).unwrap();
    let link = env.path("link.ycpt");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();

    let (tensors, manifest) = (env.path("bo.safetensors"), env.path("bo.toml"));
    let special: Vec<PathBuf> = vec!["/dev/null".into(), fifo.clone(), link.clone()];
    let inside = vec![index.clone(), env.home().join("blobs/sha256/new.ycpt")];
    for (dests, why) in [
        (&special, "not a regular file"),
        (&inside, "inside the registry"),
    ] {
        for dest in dests {
            let d = dest.to_str().unwrap();
            let (t, m) = (tensors.to_str().unwrap(), manifest.to_str().unwrap());
            for args in [
                vec!["export", "bo", "-o", d],
                vec!["migrate", bo.to_str().unwrap(), "-o", d],
                vec!["pack", "--tensors", t, "--manifest", m, "-o", d],
            ] {
                let run = env.run(&args).fails();
                assert!(run.stderr.contains(why), "{args:?}: {run:#?}");
            }
        }
    }
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&index).unwrap(), index_before);
    env.run(&["list"]).ok();

    // Overwriting a regular file keeps its mode.
    let out = env.path("shared.ycpt");
    std::fs::write(&out, b"old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.run(&["export", "bo", "-o", out.to_str().unwrap()]).ok();
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&bo).unwrap());
}

#[test]
fn verify_repair_rebuilds_a_lost_or_damaged_index_from_the_blobs() {
    let env = Env::new();
    let bo = env.install_new("bo", 1.0);
    let kiki = env.install_new("kiki", 2.0);
    env.run(&["pin", "bo"]).ok();
    let index = env.home().join("index.json");

    // Lost: gc must not take the missing index for "nothing installed".
    std::fs::remove_file(&index).unwrap();
    let gc = env.run(&["gc"]).fails();
    assert!(gc.stderr.contains("verify --repair"), "{gc:#?}");
    assert!(blob_path(&env, &bo).is_file() && blob_path(&env, &kiki).is_file());
    let verify = env.run(&["verify"]).fails();
    assert!(verify.stderr.contains("verify --repair"), "{verify:#?}");
    let repair = env.run(&["verify", "--repair"]).ok();
    assert!(
        repair.stdout.contains("rebuilt the index: 2 concept(s)"),
        "{repair:#?}"
    );
    let names: Vec<Value> = env
        .run(&["list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, ["bo", "kiki"]);

    // Damaged (an export once wrote a package over it): the pin is lost with the old index.
    std::fs::copy(&bo, &index).unwrap();
    env.run(&["list"]).fails();
    let repair = env.run(&["verify", "--repair"]).ok();
    assert!(
        repair.stdout.contains("the old index was unreadable"),
        "{repair:#?}"
    );
    assert_eq!(
        env.run(&["list", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    env.run(&["verify"]).ok();
}

#[test]
fn an_empty_concepts_home_is_a_clear_error_naming_the_variable() {
    let env = Env::new();
    let bo = env.pack("bo", 1.0);
    let list = run_as(&env, &["list"], &[("CONCEPTS_HOME", "")]).fails();
    assert!(
        list.stderr.contains("CONCEPTS_HOME is set but empty"),
        "{list:#?}"
    );
    // Commands that do not use the registry still work, and --home wins over the variable.
    run_as(
        &env,
        &["inspect", bo.to_str().unwrap()],
        &[("CONCEPTS_HOME", "")],
    )
    .ok();
    let home = env.home();
    let args = ["--home", home.to_str().unwrap(), "list"];
    run_as(&env, &args, &[("CONCEPTS_HOME", "")]).ok();
    // An empty flag value is clap's usage error (status 2), naming the flag.
    let empty = env.run(&["--home", "", "list"]);
    assert_eq!(empty.code, 2, "{empty:#?}");
    assert!(empty.stderr.contains("'--home <DIR>'"), "{empty:#?}");
}

#[test]
fn install_sha256_checks_every_byte_before_installing() {
    let env = Env::new();
    let bo = env.pack("bo", 1.0);
    let digest = sha256_of(&bo);
    let wrong = format!("{}0", &digest[..63]);
    let wrong = if wrong == digest {
        format!("{}1", &digest[..63])
    } else {
        wrong
    };
    let run = env
        .run(&["install", bo.to_str().unwrap(), "--sha256", &wrong])
        .fails();
    assert!(run.stderr.contains("not the expected sha256"), "{run:#?}");
    assert_eq!(
        env.run(&["list", "--json"]).ok().json(),
        serde_json::json!([])
    );
    env.run(&["install", bo.to_str().unwrap(), "--sha256", "xyz"])
        .fails();
    let upper = digest.to_ascii_uppercase();
    env.run(&["install", bo.to_str().unwrap(), "--sha256", &upper])
        .ok();
    assert_eq!(
        env.run(&["list", "--json"]).ok().json()[0]["sha256"],
        digest
    );
}

/// Runs `concepts ARGS` as an unprivileged user: as root, through `setpriv` as `nobody`
/// (permission bits do not stop root), from a hard link of the binary that user can reach.
fn run_unprivileged(env: &Env, args: &[&str]) -> Run {
    use std::os::unix::fs::PermissionsExt;
    let bin = env.path("concepts-bin");
    if !bin.exists() {
        std::fs::hard_link(concepts_tests::concepts_bin!(), &bin)
            .or_else(|_| std::fs::copy(concepts_tests::concepts_bin!(), &bin).map(|_| ()))
            .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let root = running_as_root();
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let output = cmd
        .args(args)
        .current_dir("/")
        .env("CONCEPTS_HOME", env.home())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    Run::from(output)
}

fn running_as_root() -> bool {
    // `id -u` rather than libc: this crate has no libc dependency.
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

#[test]
fn a_read_only_registry_can_be_listed_and_verified() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.install_new("bo", 1.0);
    // Everything readable, nothing writable by the user who runs the command.
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(env.dir.path(), 0o755);
    for entry in walk(&env.home()) {
        chmod(&entry, if entry.is_dir() { 0o555 } else { 0o444 });
    }
    let list = run_unprivileged(&env, &["list", "--json"]).ok();
    assert_eq!(list.json()[0]["name"], "bo");
    run_unprivileged(&env, &["verify"]).ok();
    run_unprivileged(&env, &["show", "bo"]).ok();
    // Writing still fails, cleanly.
    let remove = run_unprivileged(&env, &["remove", "bo"]).fails();
    assert!(remove.stderr.contains("lock"), "{remove:#?}");
    for entry in walk(&env.home()) {
        chmod(&entry, if entry.is_dir() { 0o755 } else { 0o644 });
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
