//! concepts-fs: the file-system primitives every crate of the house shares, written once.
//!
//! - [`write_atomic`] replaces a file so that readers see the old bytes or the whole new
//!   ones, never a prefix, and only ever writes a *regular* file: a device node, FIFO,
//!   socket, directory or symbolic link at the destination is refused before anything is
//!   written (so `-o /dev/null` cannot replace the system's), and an existing file keeps
//!   its permission bits.
//! - [`read_bounded`] reads a regular file of at most a given size; an endless or growing
//!   source (`/dev/zero`, a FIFO) is refused instead of filling memory.
//! - [`sha256_hex`] is the content digest that names blobs, caches and plugin files.
//!
//! Temporary files are named `.<file name>.<pid>.<n>.tmp` beside the destination (or in a
//! caller-given folder with a caller-given prefix, [`AtomicWrite::temp_in`]), so a clean-up
//! pass can tell its own leftovers from a user's files: see [`is_temp_name`].
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("out.bin");
//! concepts_fs::write_atomic(&path, b"hello")?;
//! assert_eq!(concepts_fs::read_bounded(&path, 16)?, b"hello");
//! assert!(concepts_fs::read_bounded(&path, 4).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What went wrong, always naming the path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// An operating-system error.
    #[error("{what} `{}`: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path exists and is not a regular file (a device, FIFO, socket, folder or link).
    #[error("`{}` is {kind}, not a regular file; refusing to {action} it", path.display())]
    NotRegular {
        path: PathBuf,
        kind: &'static str,
        action: &'static str,
    },
    /// The file is larger than the caller accepts.
    #[error("`{}` is over the limit of {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    /// The path names no file (it ends in `..` or is empty).
    #[error("`{}` names no file", path.display())]
    NoFileName { path: PathBuf },
}

type Result<T> = std::result::Result<T, FsError>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What `meta` is, in words, when it is not a regular file.
fn non_regular_kind(meta: &fs::Metadata) -> Option<&'static str> {
    let ft = meta.file_type();
    if ft.is_file() {
        return None;
    }
    if ft.is_dir() {
        return Some("a folder");
    }
    if ft.is_symlink() {
        return Some("a symbolic link");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return Some("a FIFO");
        }
        if ft.is_char_device() || ft.is_block_device() {
            return Some("a device");
        }
        if ft.is_socket() {
            return Some("a socket");
        }
    }
    Some("a special file")
}

/// Whether `name` is a temporary name that [`write_atomic`] (or an [`AtomicWrite`] with
/// `prefix`) creates: `<prefix><anything>.<pid>.<n>.tmp`. Clean-up passes delete only such
/// names.
pub fn is_temp_name(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let Some(rest) = rest.strip_suffix(".tmp") else {
        return false;
    };
    let mut parts = rest.rsplitn(3, '.');
    let counter = parts.next().unwrap_or_default();
    let pid = parts.next().unwrap_or_default();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(counter) && digits(pid) && parts.next().is_some()
}

/// An atomic replacement of one regular file; [`write_atomic`] is the common case.
#[derive(Debug, Clone)]
pub struct AtomicWrite<'a> {
    dest: &'a Path,
    temp_dir: Option<&'a Path>,
    prefix: Option<&'a str>,
}

impl<'a> AtomicWrite<'a> {
    /// A write of `dest`, with its temporary file beside it.
    pub fn new(dest: &'a Path) -> Self {
        AtomicWrite {
            dest,
            temp_dir: None,
            prefix: None,
        }
    }

    /// Puts the temporary file in `dir` (on the same file system as the destination) and
    /// names it `<prefix><file name>.<pid>.<n>.tmp`.
    pub fn temp_in(mut self, dir: &'a Path, prefix: &'a str) -> Self {
        self.temp_dir = Some(dir);
        self.prefix = Some(prefix);
        self
    }

    /// Writes `bytes`: a temporary file (mode 0666 less the umask, or the existing file's
    /// mode), fsync, rename over the destination, fsync of the destination's folder. A
    /// destination that exists and is not a regular file is refused before anything is
    /// written; on failure the temporary file is removed.
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dest = self.dest;
        let name = dest
            .file_name()
            .ok_or_else(|| FsError::NoFileName {
                path: dest.to_path_buf(),
            })?
            .to_string_lossy();
        let existing = match fs::symlink_metadata(dest) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("inspect", dest)(e)),
        };
        if let Some(kind) = existing.as_ref().and_then(non_regular_kind) {
            return Err(FsError::NotRegular {
                path: dest.to_path_buf(),
                kind,
                action: "replace",
            });
        }
        let dest_dir = parent_or_dot(dest);
        let tmp_dir = self.temp_dir.unwrap_or(&dest_dir);
        let tmp = tmp_dir.join(format!(
            "{}{name}.{}.{}.tmp",
            self.prefix.unwrap_or("."),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            if let Some(meta) = &existing {
                file.set_permissions(meta.permissions())
                    .map_err(io("set the mode of", &tmp))?;
            }
            file.write_all(bytes).map_err(io("write", &tmp))?;
            file.sync_all().map_err(io("fsync", &tmp))?;
            drop(file);
            fs::rename(&tmp, dest).map_err(io("rename a temporary file onto", dest))
        })();
        if result.is_err() {
            // Best effort: the error being returned matters more than this one.
            let _ = fs::remove_file(&tmp);
            return result;
        }
        sync_dir(&dest_dir)
    }
}

/// Lowercase hex SHA-256 of `bytes`: the content digest that names registry blobs, cache
/// entries and plugin files.
///
/// ```
/// assert_eq!(
///     concepts_fs::sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of the file at `path`, read in pieces (for files too large to hold,
/// e.g. a model's weights); equal to [`sha256_hex`] of its bytes.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hex::encode(hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Replaces `dest` with `bytes` atomically, as a regular file; see [`AtomicWrite::write`].
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    AtomicWrite::new(dest).write(bytes)
}

fn parent_or_dot(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename or unlink in `dir` durable (a no-op off Unix).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync folder", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Reads the regular file `path` (symbolic links followed) of at most `limit` bytes.
/// Devices, FIFOs and folders are refused before a byte is read, and a file that grows past
/// `limit` while it is read is refused too: memory use is bounded by `limit`.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(io("open", path))?;
    let meta = file.metadata().map_err(io("inspect", path))?;
    if let Some(kind) = non_regular_kind(&meta) {
        return Err(FsError::NotRegular {
            path: path.to_path_buf(),
            kind,
            action: "read",
        });
    }
    if meta.len() > limit {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io("read", path))?;
    if bytes.len() as u64 > limit {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}
