//! Single-process behaviour of the registry: install, clashes, replace, remove, export, verify, gc,
//! pinning and the compatibility check.

mod support;

use concept_format::ModelFingerprint;
use concept_registry::{
    check_compatibility, Compatibility, Damage, Digest, InstallOutcome, MismatchKind, Registry,
    RegistryError, RegistryView,
};
use support::*;

fn open() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("home")).unwrap();
    (dir, registry)
}

#[test]
fn open_creates_layout_and_empty_registry_is_clean() {
    let (dir, registry) = open();
    assert!(dir.path().join("home/blobs/sha256").is_dir());
    assert!(dir.path().join("home/tmp").is_dir());
    assert_eq!(installed(&registry), Vec::<String>::new());
    let report = registry.verify().unwrap();
    assert_eq!((report.checked, report.damage), (0, vec![]));
}

#[test]
fn install_writes_blob_and_index() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    let report = registry.install_bytes(&bo, &KEEP).unwrap();
    assert_eq!(report.outcome, InstallOutcome::Installed);
    assert_eq!(report.replaced, vec![]);
    assert_eq!(report.compatibility, None);
    assert_eq!(report.entry.size, bo.len() as u64);
    assert_eq!(report.entry.summary.k, 2);
    assert_eq!(installed(&registry), vec![line("bo", &bo)]);
    assert_eq!(
        files(registry.root()),
        vec![blob_file(&bo), "index.json".to_owned()]
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.root().join("index.json")).unwrap())
            .unwrap();
    assert_eq!(index["format_version"], 1);
    assert_eq!(index["concepts"][0]["identifier"], "<bo>");
    assert_eq!(index["concepts"][0]["sha256"], Digest::of(&bo).as_hex());
}

#[test]
fn install_twice_is_a_noop() {
    let (dir, registry) = open();
    let bo = package("bo", 1);
    let path = write(dir.path(), "bo.ycpt", &bo);
    registry.install_file(&path, &KEEP).unwrap();
    let index_before = std::fs::read(registry.root().join("index.json")).unwrap();
    let mtime_before = std::fs::metadata(registry.root().join("index.json"))
        .unwrap()
        .modified()
        .unwrap();

    let again = registry.install_file(&path, &KEEP).unwrap();
    assert_eq!(again.outcome, InstallOutcome::AlreadyInstalled);
    let replace_again = registry.install_file(&path, &REPLACE).unwrap();
    assert_eq!(replace_again.outcome, InstallOutcome::AlreadyInstalled);

    assert_eq!(
        std::fs::read(registry.root().join("index.json")).unwrap(),
        index_before
    );
    let mtime_after = std::fs::metadata(registry.root().join("index.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime_after, mtime_before, "index must not be rewritten");
    assert_eq!(installed(&registry), vec![line("bo", &bo)]);
}

#[test]
fn reinstalling_identical_file_repairs_a_missing_blob() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    registry.install_bytes(&bo, &KEEP).unwrap();
    std::fs::remove_file(registry.root().join(blob_file(&bo))).unwrap();
    assert!(!registry.verify().unwrap().is_clean());

    let report = registry.install_bytes(&bo, &KEEP).unwrap();
    assert_eq!(report.outcome, InstallOutcome::AlreadyInstalled);
    assert!(registry.verify().unwrap().is_clean());
}

#[test]
fn name_clash_is_refused_without_replace() {
    let (_dir, registry) = open();
    let old = package("bo", 1);
    let new = package("bo", 2);
    registry.install_bytes(&old, &KEEP).unwrap();
    let err = registry.install_bytes(&new, &KEEP).unwrap_err();
    assert!(
        matches!(&err, RegistryError::NameTaken { name, existing, new: n }
            if name == "bo" && *existing == Digest::of(&old) && *n == Digest::of(&new)),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("concept `bo` is already installed as sha256:"));
    assert_eq!(installed(&registry), vec![line("bo", &old)]);
    assert_eq!(
        files(registry.root()),
        vec![blob_file(&old), "index.json".to_owned()]
    );
}

#[test]
fn identifier_clash_is_refused_without_replace() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    let impostor = package_with("other", "bo", 2, fingerprint());
    registry.install_bytes(&bo, &KEEP).unwrap();
    let err = registry.install_bytes(&impostor, &KEEP).unwrap_err();
    assert_eq!(
        err.to_string(),
        "identifier `<bo>` of concept `other` is already used by installed concept `bo` \
         (replace to overwrite)"
    );
    assert_eq!(installed(&registry), vec![line("bo", &bo)]);
}

#[test]
fn replace_swaps_the_package_and_drops_the_old_blob() {
    let (_dir, registry) = open();
    let old = package("bo", 1);
    let new = package("bo", 2);
    registry.install_bytes(&old, &KEEP).unwrap();
    let report = registry.install_bytes(&new, &REPLACE).unwrap();
    assert_eq!(report.outcome, InstallOutcome::Installed);
    assert_eq!(
        report
            .replaced
            .iter()
            .map(|e| &e.sha256)
            .collect::<Vec<_>>(),
        vec![&Digest::of(&old)]
    );
    assert_eq!(installed(&registry), vec![line("bo", &new)]);
    assert_eq!(
        files(registry.root()),
        vec![blob_file(&new), "index.json".to_owned()]
    );
    assert!(registry.verify().unwrap().is_clean());
}

#[test]
fn replace_removes_both_the_name_holder_and_the_identifier_holder() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    let mochi = package("mochi", 2);
    // Takes the name `bo` and the identifier `<mochi>`.
    let mixed = package_with("bo", "mochi", 3, fingerprint());
    registry.install_bytes(&bo, &KEEP).unwrap();
    registry.install_bytes(&mochi, &KEEP).unwrap();
    let report = registry.install_bytes(&mixed, &REPLACE).unwrap();
    let mut replaced: Vec<&str> = report.replaced.iter().map(|e| e.name.as_str()).collect();
    replaced.sort();
    assert_eq!(replaced, vec!["bo", "mochi"]);
    assert_eq!(
        installed(&registry),
        vec![format!("bo <mochi> {}", Digest::of(&mixed).short())]
    );
    assert!(registry.verify().unwrap().is_clean());
}

#[test]
fn remove_by_name_and_by_identifier() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    let mochi = package("mochi", 2);
    registry.install_bytes(&bo, &KEEP).unwrap();
    registry.install_bytes(&mochi, &KEEP).unwrap();

    assert_eq!(registry.remove("bo").unwrap().name, "bo");
    assert_eq!(installed(&registry), vec![line("mochi", &mochi)]);
    assert_eq!(registry.remove("<mochi>").unwrap().name, "mochi");
    assert_eq!(installed(&registry), Vec::<String>::new());
    assert_eq!(files(registry.root()), vec!["index.json".to_owned()]);

    let err = registry.remove("bo").unwrap_err();
    assert_eq!(
        err.to_string(),
        "concept `bo` is not installed (no name or identifier matches)"
    );
}

#[test]
fn invalid_bytes_are_rejected_and_leave_nothing_behind() {
    let (dir, registry) = open();
    let mut bytes = package("bo", 1);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // body no longer matches body_sha256
    let path = write(dir.path(), "bad.ycpt", &bytes);
    let err = registry.install_file(&path, &KEEP).unwrap_err();
    assert!(
        matches!(err, RegistryError::InvalidPackage { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("bad.ycpt"), "{err}");
    assert_eq!(files(registry.root()), Vec::<String>::new());

    let err = registry.install_bytes(b"not a package", &KEEP).unwrap_err();
    assert!(
        matches!(err, RegistryError::InvalidPackage { .. }),
        "{err:?}"
    );
}

#[test]
fn load_get_and_export_return_the_installed_package() {
    let (dir, registry) = open();
    let bo = package("bo", 1);
    registry.install_bytes(&bo, &KEEP).unwrap();

    let (entry, pkg) = registry.load("<bo>").unwrap();
    assert_eq!(entry.name, "bo");
    assert_eq!(pkg.to_bytes(), bo);
    assert_eq!(registry.get("bo").unwrap(), entry);

    let dest = dir.path().join("out/bo-export.ycpt");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, b"old contents").unwrap();
    registry.export("bo", &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bo);
    // No temp file is left next to the destination.
    assert_eq!(
        std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
        1
    );

    let err = registry.export("nope", &dest).unwrap_err();
    assert!(matches!(err, RegistryError::NotInstalled { .. }));
}

#[test]
fn verify_detects_a_flipped_byte() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    let mochi = package("mochi", 2);
    registry.install_bytes(&bo, &KEEP).unwrap();
    registry.install_bytes(&mochi, &KEEP).unwrap();
    let blob = registry.root().join(blob_file(&bo));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();

    let report = registry.verify().unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(
        report.damage,
        vec![Damage::HashMismatch {
            name: "bo".into(),
            expected: Digest::of(&bo),
            found: Digest::of(&bytes),
        }]
    );
    assert!(!report.damage[0].is_leftover());
    // Loading refuses the damaged blob; the other concept still loads.
    assert!(matches!(
        registry.load("bo").unwrap_err(),
        RegistryError::HashMismatch { .. }
    ));
    registry.load("mochi").unwrap();
    // Reinstalling with replace repairs it.
    registry.install_bytes(&bo, &REPLACE).unwrap();
    assert!(registry.verify().unwrap().is_clean());
}

#[test]
fn verify_detects_missing_and_unparsable_blobs_and_index_mismatches() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    let mochi = package("mochi", 2);
    let rex = package("rex", 3);
    for p in [&bo, &mochi, &rex] {
        registry.install_bytes(p, &KEEP).unwrap();
    }
    // bo: blob deleted.
    std::fs::remove_file(registry.root().join(blob_file(&bo))).unwrap();
    // mochi: the index points at a blob that hashes correctly but is not a package.
    let garbage = b"garbage that is not a package".to_vec();
    std::fs::write(registry.root().join(blob_file(&garbage)), &garbage).unwrap();
    // rex: the index's cached identifier disagrees with the blob.
    let index_path = registry.root().join("index.json");
    let index = std::fs::read_to_string(&index_path).unwrap();
    let index = index
        .replace(Digest::of(&mochi).as_hex(), Digest::of(&garbage).as_hex())
        .replace("\"<rex>\"", "\"<rexx>\"");
    std::fs::write(&index_path, index).unwrap();

    let report = registry.verify().unwrap();
    assert_eq!(report.checked, 3);
    let rendered: Vec<String> = report.damage.iter().map(|d| d.to_string()).collect();
    assert_eq!(rendered.len(), 4, "{rendered:#?}");
    assert_eq!(
        rendered[0],
        format!(
            "concept `bo`: blob `{}` is missing",
            registry.root().join(blob_file(&bo)).display()
        )
    );
    assert!(rendered[1].starts_with("concept `mochi`: blob does not parse: "));
    assert_eq!(
        rendered[2],
        "concept `rex`: index says identifier `<rexx>`, blob manifest says `<rex>`"
    );
    // mochi's real blob is no longer referenced.
    assert_eq!(
        report.damage[3],
        Damage::UnreferencedBlob {
            path: registry.root().join(blob_file(&mochi)),
            size: mochi.len() as u64,
        }
    );
}

#[test]
fn gc_removes_unreferenced_blobs_and_temp_files_and_reports_bytes() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    let stray = package("stray", 2);
    registry.install_bytes(&bo, &KEEP).unwrap();
    std::fs::write(registry.root().join(blob_file(&stray)), &stray).unwrap();
    // The name an interrupted blob write leaves (`blob-<file>.<pid>.<n>.tmp`).
    let leftover = "tmp/blob-abc.ycpt.4242.0.tmp";
    std::fs::write(registry.root().join(leftover), b"12345").unwrap();

    let report = registry.gc().unwrap();
    assert_eq!(
        report.removed_blobs,
        vec![registry.root().join(blob_file(&stray))]
    );
    assert_eq!(
        report.removed_temp_files,
        vec![registry.root().join(leftover)]
    );
    assert_eq!(report.bytes_freed, stray.len() as u64 + 5);
    assert_eq!(
        files(registry.root()),
        vec![blob_file(&bo), "index.json".to_owned()]
    );
    assert!(registry.verify().unwrap().is_clean());
    // A second gc has nothing to do.
    assert_eq!(registry.gc().unwrap().bytes_freed, 0);
}

#[test]
fn view_loads_packages_on_demand_and_shares_them() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    let mochi = package("mochi", 2);
    registry.install_bytes(&bo, &KEEP).unwrap();
    registry.install_bytes(&mochi, &KEEP).unwrap();
    let view: RegistryView = registry.view().unwrap();
    assert_eq!(view.entries().len(), 2);
    assert_eq!(view.loaded_count(), 0);

    let a = view.get("<bo>").unwrap();
    let b = view.get("bo").unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(view.loaded_count(), 1);
    assert_eq!(a.to_bytes(), bo);

    // The snapshot does not see later changes; a removed, not yet loaded package fails to load.
    registry.remove("mochi").unwrap();
    assert!(view.entry("mochi").is_some());
    assert!(matches!(
        view.get("mochi").unwrap_err(),
        RegistryError::MissingBlob { .. }
    ));
    assert!(matches!(
        view.get("nope").unwrap_err(),
        RegistryError::NotInstalled { .. }
    ));
}

/// Views share the entries of an unchanged index, yet every view follows what was installed or
/// removed since (through any handle on the registry), and a damaged index is refused.
#[test]
fn each_view_sees_the_index_as_it_is_now() {
    let (_dir, registry) = open();
    let names = |r: &Registry| -> Vec<String> {
        r.view()
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.name.clone())
            .collect()
    };
    assert!(names(&registry).is_empty());
    registry.install_bytes(&package("bo", 1), &KEEP).unwrap();
    assert_eq!(names(&registry), ["bo"]);
    // Another handle on the same folder (another process, say) installs: the next view sees it.
    let other = Registry::open(registry.root()).unwrap();
    other.install_bytes(&package("mochi", 2), &KEEP).unwrap();
    assert_eq!(names(&registry), ["bo", "mochi"]);
    let (a, b) = (registry.view().unwrap(), registry.view().unwrap());
    assert!(
        std::ptr::eq(a.entries(), b.entries()),
        "unchanged index, shared entries"
    );
    other.remove("bo").unwrap();
    assert_eq!(names(&registry), ["mochi"]);
    let index = registry.root().join("index.json");
    std::fs::write(&index, "{ not json").unwrap();
    assert!(matches!(
        registry.view().unwrap_err(),
        RegistryError::IndexCorrupt { .. }
    ));
    std::fs::remove_file(&index).unwrap();
    assert!(names(&registry).is_empty());
}

#[test]
fn unknown_index_version_is_refused() {
    let (_dir, registry) = open();
    let index = registry.root().join("index.json");
    std::fs::write(&index, r#"{"format_version": 2, "concepts": []}"#).unwrap();
    let err = Registry::open(registry.root()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "index `{}` has format version 2, expected 1",
            index.display()
        )
    );
    std::fs::write(&index, "{ not json").unwrap();
    assert!(matches!(
        registry.list().unwrap_err(),
        RegistryError::IndexCorrupt { .. }
    ));
}

#[test]
fn pinned_base_model_is_checked_on_install() {
    let (_dir, registry) = open();
    let bo = package("bo", 1);
    registry.install_bytes(&bo, &KEEP).unwrap();
    registry
        .pin_base_model(Some(&fingerprint()), false)
        .unwrap();
    assert_eq!(registry.pinned_base_model().unwrap(), Some(fingerprint()));

    let mut other_hash = fingerprint();
    other_hash.embed_sha256 = "3".repeat(64);
    let mochi = package_with("mochi", "mochi", 2, other_hash);
    let err = registry.install_bytes(&mochi, &KEEP).unwrap_err();
    assert!(
        matches!(err, RegistryError::PinnedBaseModel { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "concept `mochi` does not fit the registry's pinned base model"
    );
    let forced = registry
        .install_bytes(
            &mochi,
            &concept_registry::InstallOptions {
                replace: false,
                force: true,
            },
        )
        .unwrap();
    let Some(Compatibility::Forced(overridden)) = forced.compatibility else {
        panic!("expected a forced install, got {:?}", forced.compatibility);
    };
    assert_eq!(overridden.len(), 1);
    assert_eq!(overridden[0].field, "embed_sha256");

    // Re-pinning to a model the installed concepts do not fit is refused unless forced.
    let mut new_pin = fingerprint();
    new_pin.tokenizer_sha256 = "4".repeat(64);
    assert!(registry.pin_base_model(Some(&new_pin), false).is_err());
    registry.pin_base_model(Some(&new_pin), true).unwrap();
    registry.pin_base_model(None, false).unwrap();
    assert_eq!(registry.pinned_base_model().unwrap(), None);
}

#[test]
fn compatibility_exact_hash_and_dimension_mismatches() {
    let expected = fingerprint();
    assert_eq!(
        check_compatibility(&expected, &fingerprint(), false).unwrap(),
        Compatibility::Exact
    );

    let mut hashes = fingerprint();
    hashes.tokenizer_sha256 = "a".repeat(64);
    hashes.lm_head_sha256 = "b".repeat(64);
    let err = check_compatibility(&expected, &hashes, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "base model mismatch: tokenizer_sha256 expected `{}` found `{}`; lm_head_sha256 \
             expected `{}` found `{}` (only hashes differ; force overrides this)",
            "0".repeat(64),
            "a".repeat(64),
            "2".repeat(64),
            "b".repeat(64)
        )
    );
    let Compatibility::Forced(overridden) = check_compatibility(&expected, &hashes, true).unwrap()
    else {
        panic!("force must override hash-only differences");
    };
    assert_eq!(
        overridden
            .iter()
            .map(|m| (m.field, m.kind))
            .collect::<Vec<_>>(),
        vec![
            ("tokenizer_sha256", MismatchKind::Hash),
            ("lm_head_sha256", MismatchKind::Hash)
        ]
    );

    for (field, change) in [
        (
            "architecture",
            (|f| f.architecture = "other".into()) as fn(&mut ModelFingerprint),
        ),
        ("hidden_size", |f| f.hidden_size = 16),
        ("vocab_size", |f| f.vocab_size = 2000),
    ] {
        let mut actual = hashes.clone();
        change(&mut actual);
        let err = check_compatibility(&expected, &actual, true).unwrap_err();
        let RegistryError::BaseModel(mismatch) = &err else {
            panic!("{err:?}");
        };
        assert!(mismatch.is_dimension_mismatch());
        assert_eq!(mismatch.mismatches()[0].field, field);
        assert!(
            err.to_string()
                .ends_with("(dimensions differ; force cannot override this)"),
            "{err}"
        );
    }
}
