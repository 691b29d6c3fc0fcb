//! The guarantees of the shared primitives, on real files, FIFOs and devices.

use std::fs;
use std::path::Path;

use concepts_fs::{is_temp_name, read_bounded, write_atomic, AtomicWrite, FsError};

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn write_atomic_replaces_a_file_and_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.ycpt");
    fs::write(&path, b"old").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    write_atomic(&path, b"new bytes").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new bytes");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn write_atomic_creates_new_files_with_the_umask_mode_not_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.bin");
    write_atomic(&path, b"x").unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    // Whatever the umask, a new file is created as 0666 less it: readable by its group
    // unless the umask says otherwise, never the 0600 of a temp-file library.
    let umask_free = fs::File::create(dir.path().join("probe")).unwrap();
    let want = umask_free.metadata().unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, want);
}

#[test]
fn write_atomic_refuses_device_nodes_fifos_folders_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let folder = dir.path().join("folder");
    fs::create_dir(&folder).unwrap();
    for (path, kind) in [
        (Path::new("/dev/null"), "a device"),
        (fifo.as_path(), "a FIFO"),
        (link.as_path(), "a symbolic link"),
        (folder.as_path(), "a folder"),
    ] {
        let err = write_atomic(path, b"x").unwrap_err();
        assert!(
            matches!(&err, FsError::NotRegular { kind: k, .. } if *k == kind),
            "{}: {err}",
            path.display()
        );
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    // /dev/null is still the device, the FIFO still a FIFO, and nothing was left behind.
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn temp_names_are_recognised_by_their_pattern_only() {
    let dir = tempfile::tempdir().unwrap();
    let tmp_dir = dir.path().join("tmp");
    fs::create_dir(&tmp_dir).unwrap();
    let dest = dir.path().join("blob");
    // A failed write leaves nothing; check the name a write would use by failing the rename.
    fs::create_dir(&dest).unwrap();
    assert!(AtomicWrite::new(&dest)
        .temp_in(&tmp_dir, "blob-")
        .write(b"x")
        .is_err());
    assert!(leftovers(&tmp_dir).is_empty());
    assert!(is_temp_name("blob-abc.1234.0.tmp", "blob-"));
    assert!(is_temp_name(".out.ycpt.77.12.tmp", "."));
    assert!(!is_temp_name("thesis.txt", "blob-"));
    assert!(!is_temp_name("blob-notes.tmp", "blob-"));
    assert!(!is_temp_name("blob-x.12.tmp", "blob-"));
    assert!(!is_temp_name("blob-x.a1.2.tmp", "blob-"));
}

#[test]
fn read_bounded_refuses_endless_and_oversized_sources() {
    let err = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
    assert!(
        matches!(
            err,
            FsError::NotRegular {
                kind: "a device",
                ..
            }
        ),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    fs::write(&path, vec![7u8; 100]).unwrap();
    assert!(matches!(
        read_bounded(&path, 99).unwrap_err(),
        FsError::TooLarge { limit: 99, .. }
    ));
    assert_eq!(read_bounded(&path, 100).unwrap().len(), 100);
    let err = read_bounded(&dir.path().join("missing"), 10).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
