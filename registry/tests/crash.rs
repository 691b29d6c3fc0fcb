//! A crash at any point of an install leaves the registry usable: the on-disk states a crash can
//! leave are built by hand, then open, install, list, verify and gc must all work, and gc must
//! clean up.

mod support;

use concept_registry::{Damage, Registry};
use support::*;

/// Crash after the temp file was partly written, before the rename: a partial temp file.
#[test]
fn crash_before_rename_leaves_a_temp_file_that_gc_removes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let bo = package("bo", 1);
    {
        let registry = Registry::open(&root).unwrap();
        registry.install_bytes(&bo, &KEEP).unwrap();
    }
    let mochi = package("mochi", 2);
    let partial = root.join("tmp/blob-XyZ123.tmp");
    std::fs::write(&partial, &mochi[..mochi.len() / 2]).unwrap();
    // A crash while rewriting the index leaves a partial index temp file too.
    let partial_index = root.join("tmp/index-AbC456.tmp");
    std::fs::write(&partial_index, b"{\"format_version\": 1, \"conc").unwrap();

    let registry = Registry::open(&root).unwrap();
    assert_eq!(installed(&registry), vec![line("bo", &bo)]);
    let report = registry.verify().unwrap();
    assert_eq!(
        report.damage,
        vec![
            Damage::OrphanTempFile {
                path: partial.clone(),
                size: (mochi.len() / 2) as u64,
            },
            Damage::OrphanTempFile {
                path: partial_index.clone(),
                size: 27,
            },
        ]
    );
    assert!(report.damage.iter().all(Damage::is_leftover));

    // The interrupted install can simply be repeated.
    registry.install_bytes(&mochi, &KEEP).unwrap();
    assert_eq!(
        installed(&registry),
        vec![line("bo", &bo), line("mochi", &mochi)]
    );

    let gc = registry.gc().unwrap();
    assert_eq!(gc.removed_temp_files, vec![partial, partial_index]);
    assert_eq!(gc.removed_blobs, Vec::<std::path::PathBuf>::new());
    assert_eq!(gc.bytes_freed, (mochi.len() / 2) as u64 + 27);
    assert!(registry.verify().unwrap().is_clean());
    assert_eq!(
        files(&root),
        vec![blob_file(&bo), blob_file(&mochi), "index.json".to_owned()]
    );
}

/// Crash after the blob was renamed into place, before the index was rewritten: an unreferenced
/// blob and an index that does not mention it.
#[test]
fn crash_between_blob_and_index_leaves_an_unreferenced_blob() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let bo = package("bo", 1);
    let mochi = package("mochi", 2);
    let rex = package("rex", 3);
    {
        let registry = Registry::open(&root).unwrap();
        registry.install_bytes(&bo, &KEEP).unwrap();
    }
    std::fs::write(root.join(blob_file(&mochi)), &mochi).unwrap();
    std::fs::write(root.join(blob_file(&rex)), &rex).unwrap();

    let registry = Registry::open(&root).unwrap();
    assert_eq!(installed(&registry), vec![line("bo", &bo)]);
    let mut leftovers: Vec<Damage> = registry.verify().unwrap().damage;
    leftovers.sort_by_key(|d| d.to_string());
    let mut expected = vec![
        Damage::UnreferencedBlob {
            path: root.join(blob_file(&mochi)),
            size: mochi.len() as u64,
        },
        Damage::UnreferencedBlob {
            path: root.join(blob_file(&rex)),
            size: rex.len() as u64,
        },
    ];
    expected.sort_by_key(|d| d.to_string());
    assert_eq!(leftovers, expected);

    // Retrying the interrupted install adopts the blob already in place.
    registry.install_bytes(&mochi, &KEEP).unwrap();
    assert_eq!(
        installed(&registry),
        vec![line("bo", &bo), line("mochi", &mochi)]
    );
    registry.load("mochi").unwrap();

    let gc = registry.gc().unwrap();
    assert_eq!(gc.removed_blobs, vec![root.join(blob_file(&rex))]);
    assert_eq!(gc.bytes_freed, rex.len() as u64);
    assert!(registry.verify().unwrap().is_clean());
}

/// Crash after the blob temp file was fully written and renamed but with a torn (truncated) blob,
/// as on a file system that lost the unsynced tail: verify reports it, replace repairs it.
#[test]
fn torn_blob_is_reported_and_reinstall_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let bo = package("bo", 1);
    let registry = Registry::open(&root).unwrap();
    registry.install_bytes(&bo, &KEEP).unwrap();
    std::fs::write(root.join(blob_file(&bo)), &bo[..bo.len() - 10]).unwrap();

    let report = registry.verify().unwrap();
    assert!(
        matches!(&report.damage[..], [Damage::HashMismatch { name, .. }] if name == "bo"),
        "{:?}",
        report.damage
    );
    registry.install_bytes(&bo, &KEEP).unwrap();
    assert!(registry.verify().unwrap().is_clean());
    assert_eq!(std::fs::read(root.join(blob_file(&bo))).unwrap(), bo);
}
