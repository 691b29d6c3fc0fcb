//! The C example (`examples/recognise.c`) compiled with the system C compiler against
//! `libconcepts.so` and the committed header, run on the embedded toy model; and the error
//! contract of the ABI, called through the same exported functions a C program calls.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

use concepts::{
    concepts_chat, concepts_install, concepts_last_error, concepts_recognise, concepts_remove,
    concepts_runtime_free, concepts_runtime_open, concepts_status_name, ConceptsRuntime,
    ConceptsScore, ConceptsStatus,
};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn toy_model() -> PathBuf {
    crate_dir().join("../../models/toy-llava")
}

/// The folder holding `libconcepts.so`: the test binary lives in `<target>/<profile>/deps`,
/// the library in `<target>/<profile>` (and in `deps`).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps.parent().unwrap(), deps] {
        if dir.join("libconcepts.so").is_file() {
            return dir.to_path_buf();
        }
    }
    panic!("libconcepts.so not found beside `{}`", deps.display());
}

/// A concept package for the toy model (random tensors, the model's real fingerprint) and a
/// toy photo.
fn package_and_photo(dir: &Path) -> (PathBuf, PathBuf) {
    let fp = concepts_runtime::fingerprint(&toy_model()).unwrap();
    let package = concepts_runtime::testing::random_concept_package("bo", &fp, 4, 7, 0.05).unwrap();
    let package_path = dir.join("bo.ycpt");
    std::fs::write(&package_path, package.to_bytes()).unwrap();
    let data = dir.join("toy");
    let cfg = toy_world::DatasetConfig {
        train_per_subject: 1,
        test_per_subject: 1,
        generic_negatives: 0,
        lookalikes_per_subject: 0,
        twins_per_subject: 0,
        multi_photos: 0,
        ..toy_world::DatasetConfig::standard()
    };
    let summary = toy_world::write_dataset(&data, 1, 1, &cfg).unwrap();
    let subject = summary.subjects[0].name().to_string();
    let photo = std::fs::read_dir(data.join(subject).join("test"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    (package_path, photo)
}

#[test]
fn the_c_example_installs_a_package_and_recognises_it_in_a_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library_dir();
    let exe = tmp.path().join("recognise");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let built = Command::new(&cc)
        .arg("-std=c99")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("examples/recognise.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lconcepts")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running `{cc}`: {e}"));
    assert!(
        built.status.success(),
        "compiling the C example failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let (package, photo) = package_and_photo(tmp.path());
    let home = tmp.path().join("home");
    let out = Command::new(&exe)
        .arg(&package)
        .arg(&photo)
        .arg(&home)
        .env("CONCEPTS_DEFAULT_MODEL", toy_model())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    println!("{stdout}");
    assert!(stdout.contains("installed bo"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("bo <bo> p_yes="))
        .unwrap_or_else(|| panic!("no recognition line:\n{stdout}"));
    let p_yes: f64 = line
        .split("p_yes=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!((0.0..=1.0).contains(&p_yes), "{line}");
    assert!(stdout.contains("streamed "), "{stdout}");
    // The package really is in the registry the example opened.
    assert!(home.join("index.json").is_file());
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(concepts_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn status_name(status: ConceptsStatus) -> String {
    unsafe { CStr::from_ptr(concepts_status_name(status)) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn errors_are_codes_and_messages_never_aborts() {
    let tmp = tempfile::tempdir().unwrap();
    let home = CString::new(tmp.path().join("home").to_str().unwrap()).unwrap();

    // A missing model folder.
    let missing = CString::new(tmp.path().join("no-such-model").to_str().unwrap()).unwrap();
    let mut rt: *mut ConceptsRuntime = ptr::null_mut();
    let status = unsafe { concepts_runtime_open(missing.as_ptr(), home.as_ptr(), &mut rt) };
    assert_eq!(status, ConceptsStatus::Model);
    assert_eq!(status_name(status), "model");
    assert!(rt.is_null(), "no handle on failure");
    let message = last_error();
    assert!(message.contains("no-such-model"), "{message}");

    // NULL where a pointer is required.
    let status = unsafe { concepts_runtime_open(ptr::null(), home.as_ptr(), ptr::null_mut()) };
    assert_eq!(status, ConceptsStatus::InvalidInput);
    assert!(last_error().contains("out is NULL"), "{}", last_error());

    let model = CString::new(toy_model().to_str().unwrap()).unwrap();
    let status = unsafe { concepts_runtime_open(model.as_ptr(), home.as_ptr(), &mut rt) };
    assert_eq!(status, ConceptsStatus::Ok, "{}", last_error());
    assert_eq!(last_error(), "");

    // A malformed package: nothing is installed.
    let bad = tmp.path().join("bad.ycpt");
    std::fs::write(&bad, b"YCPT this is not a concept package").unwrap();
    let bad = CString::new(bad.to_str().unwrap()).unwrap();
    let mut name: *mut c_char = ptr::null_mut();
    let status = unsafe { concepts_install(rt, bad.as_ptr(), false, &mut name) };
    assert_eq!(status, ConceptsStatus::Package, "{}", last_error());
    assert!(name.is_null());
    assert!(last_error().contains("bad.ycpt"), "{}", last_error());

    // Removing and recognising concepts that are not installed.
    let ghost = CString::new("ghost").unwrap();
    let status = unsafe { concepts_remove(rt, ghost.as_ptr()) };
    assert_eq!(status, ConceptsStatus::NotFound, "{}", last_error());
    let (_, photo) = package_and_photo(tmp.path());
    let photo = CString::new(photo.to_str().unwrap()).unwrap();
    let names = [ghost.as_ptr()];
    let mut scores: *mut ConceptsScore = ptr::null_mut();
    let mut len = 0usize;
    let status =
        unsafe { concepts_recognise(rt, photo.as_ptr(), names.as_ptr(), 1, &mut scores, &mut len) };
    assert_eq!(status, ConceptsStatus::NotFound, "{}", last_error());
    assert!(last_error().contains("ghost"), "{}", last_error());

    // A file that is not an image.
    let prompt = CString::new("Describe the image.").unwrap();
    let mut answer: *mut c_char = ptr::null_mut();
    let status = unsafe {
        concepts_chat(
            rt,
            prompt.as_ptr(),
            bad.as_ptr(),
            ptr::null(),
            0,
            4,
            None,
            ptr::null_mut(),
            &mut answer,
        )
    };
    assert_eq!(status, ConceptsStatus::InvalidInput, "{}", last_error());
    assert!(answer.is_null());

    // Invalid UTF-8 and a NULL handle.
    let latin1 = CString::new(vec![b'b', 0xe9]).unwrap();
    let status = unsafe { concepts_remove(rt, latin1.as_ptr()) };
    assert_eq!(status, ConceptsStatus::InvalidInput);
    assert!(last_error().contains("UTF-8"), "{}", last_error());
    let status = unsafe { concepts_remove(ptr::null(), ghost.as_ptr()) };
    assert_eq!(status, ConceptsStatus::InvalidInput);

    unsafe { concepts_runtime_free(rt) };
}
