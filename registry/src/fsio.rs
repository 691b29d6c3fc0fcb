//! File-system primitives: the registry lock and atomic writes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use fs4::fs_std::FileExt;

use crate::error::{IoContext, Result};

/// A held lock on `registry.lock`; released when dropped (or when the process dies).
pub(crate) struct LockGuard {
    file: File,
}

impl LockGuard {
    /// Blocks until the lock is held, shared (readers) or exclusive (read-modify-write).
    pub(crate) fn acquire(path: &Path, exclusive: bool) -> Result<LockGuard> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .io("open lock file", path)?;
        // Fully qualified: std's inherent `File::lock_shared` needs a newer toolchain than our MSRV.
        if exclusive {
            FileExt::lock_exclusive(&file).io("lock (exclusive)", path)?;
        } else {
            FileExt::lock_shared(&file).io("lock (shared)", path)?;
        }
        Ok(LockGuard { file })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first just makes the release immediate.
        let _ = FileExt::unlock(&self.file);
    }
}

/// Writes `bytes` to `dest` atomically: a temp file in `tmp_dir` (which must be on the same file
/// system as `dest`), fsync, rename over `dest`, fsync `dest`'s directory.
///
/// Readers see either the old file or the complete new one, never a prefix. A crash leaves at most a
/// temp file in `tmp_dir`.
pub(crate) fn write_atomic(tmp_dir: &Path, prefix: &str, dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".tmp")
        .tempfile_in(tmp_dir)
        .io("create temp file in", tmp_dir)?;
    tmp.write_all(bytes).io("write", tmp.path())?;
    tmp.as_file().sync_all().io("fsync", tmp.path())?;
    tmp.persist(dest)
        .map_err(|e| e.error)
        .io("rename temp file to", dest)?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Makes a rename or unlink in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .io("fsync directory", dir)?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
