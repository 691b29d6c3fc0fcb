//! File-system primitives: the registry lock and atomic writes.

use std::fs::{File, OpenOptions};
use std::path::Path;

use fs4::fs_std::FileExt;

use crate::error::{IoContext, Result};

/// A held lock on `registry.lock`; released when dropped (or when the process dies).
pub(crate) struct LockGuard {
    file: File,
}

impl LockGuard {
    /// Blocks until the lock is held, shared (readers) or exclusive (read-modify-write).
    ///
    /// A registry on a read-only file system (or one this user may only read) can still be
    /// read: a shared lock opens the lock file read-only, and without a lock file (none can be
    /// created there) reads go ahead unlocked, since nothing can write such a registry either.
    pub(crate) fn acquire(path: &Path, exclusive: bool) -> Result<Option<LockGuard>> {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if !exclusive && read_only(&e) => match File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).io("open lock file", path),
            },
            Err(e) => return Err(e).io("open lock file", path),
        };
        // Fully qualified: std's inherent `File::lock_shared` needs a newer toolchain than our MSRV.
        if exclusive {
            FileExt::lock_exclusive(&file).io("lock (exclusive)", path)?;
        } else {
            FileExt::lock_shared(&file).io("lock (shared)", path)?;
        }
        Ok(Some(LockGuard { file }))
    }
}

/// Whether `e` says the file system or the folder's permissions forbid writing.
fn read_only(e: &std::io::Error) -> bool {
    const EROFS: i32 = 30;
    e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(EROFS)
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first just makes the release immediate.
        let _ = FileExt::unlock(&self.file);
    }
}

/// Writes `bytes` to `dest` atomically through a temp file in `tmp_dir` (on the same file
/// system as `dest`) named `<prefix>…<pid>.<n>.tmp`, which `gc` recognises as its own.
///
/// Readers see either the old file or the complete new one, never a prefix. A crash leaves at most a
/// temp file in `tmp_dir`.
pub(crate) fn write_atomic(tmp_dir: &Path, prefix: &str, dest: &Path, bytes: &[u8]) -> Result<()> {
    Ok(concepts_fs::AtomicWrite::new(dest)
        .temp_in(tmp_dir, prefix)
        .write(bytes)?)
}

/// Makes a rename or unlink in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    Ok(concepts_fs::sync_dir(dir)?)
}
