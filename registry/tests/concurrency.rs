//! Eight OS processes (the `registry-stress` helper binary) installing, replacing and removing
//! packages in one registry at the same time must leave exactly the expected index, with every
//! blob intact and nothing left over.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use concept_registry::{Digest, Registry};
use support::*;

const PROCESSES: usize = 8;
const PER_PROCESS: usize = 6;

fn own(i: usize, j: usize) -> String {
    format!("p{i}-{j}")
}

#[test]
fn eight_processes_leave_a_consistent_index() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let files_dir = dir.path().join("packages");
    std::fs::create_dir(&files_dir).unwrap();

    // Every process installs the identical `shared` package (all but one are no-ops), replaces the
    // contended `hot` concept with its own version, and installs and removes its own concepts.
    let shared = write(&files_dir, "shared.ycpt", &package("shared", 1000));
    let mut hot_digests = BTreeSet::new();
    let mut expected: BTreeSet<(String, Digest)> = BTreeSet::new();
    let mut children = Vec::new();
    for i in 0..PROCESSES {
        let hot_bytes = package_with("hot", "hot", 2000 + i as u32, fingerprint());
        hot_digests.insert(Digest::of(&hot_bytes));
        let hot = write(&files_dir, &format!("hot-{i}.ycpt"), &hot_bytes);
        let mut ops = Vec::new();
        let mut own_paths = Vec::new();
        for j in 0..PER_PROCESS {
            let bytes = package(&own(i, j), (i * 100 + j) as u32);
            let path = write(&files_dir, &format!("{}.ycpt", own(i, j)), &bytes);
            ops.push(format!("install={}", path.display()));
            own_paths.push((path, bytes));
        }
        ops.push(format!("install={}", shared.display()));
        ops.push(format!("replace={}", hot.display()));
        ops.push(format!("remove={}", own(i, 1)));
        ops.push(format!("remove=<{}>", own(i, 3)));
        ops.push(format!("install={}", own_paths[1].0.display()));
        ops.push(format!("remove={}", own(i, 5)));
        for j in [0, 1, 2, 4] {
            expected.insert((own(i, j), Digest::of(&own_paths[j].1)));
        }
        children.push(spawn(&root, &ops));
    }
    for (i, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "process {i} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let registry = Registry::open(&root).unwrap();
    let entries = registry.list().unwrap();
    let hot = entries
        .iter()
        .find(|e| e.name == "hot")
        .expect("hot installed");
    assert!(
        hot_digests.contains(&hot.sha256),
        "hot is one of the versions"
    );
    expected.insert((
        "shared".to_owned(),
        Digest::of(&std::fs::read(&shared).unwrap()),
    ));
    expected.insert(("hot".to_owned(), hot.sha256.clone()));
    let found: BTreeSet<(String, Digest)> = entries
        .iter()
        .map(|e| (e.name.clone(), e.sha256.clone()))
        .collect();
    assert_eq!(found, expected);
    assert_eq!(entries.len(), expected.len(), "no duplicate entries");

    let report = registry.verify().unwrap();
    assert_eq!(report.checked, expected.len());
    assert_eq!(
        report.damage,
        vec![],
        "every blob verifies, nothing left over"
    );
    // Exactly one blob per entry: replaced `hot` versions and removed concepts were deleted.
    let blobs = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, expected.len());
    for entry in &entries {
        registry.load(&entry.identifier).unwrap();
    }
}

fn spawn(root: &Path, ops: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_registry-stress"))
        .arg(root)
        .args(ops)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
