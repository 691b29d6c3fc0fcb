//! Advice to the kernel on how to back a byte range of this process's memory (`madvise`),
//! applied to the whole pages inside the range (a page shared with a neighbour is left as
//! it is). Advice never changes what the memory holds; where it is not supported (other
//! systems, a kernel that refuses it) nothing happens.

/// What to tell the kernel about a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Advice {
    /// Back it with transparent huge pages where possible (`MADV_HUGEPAGE`, whole 2 MiB
    /// pages): fewer TLB misses for weights that every product streams through.
    HugePages,
    /// Never back it with transparent huge pages (`MADV_NOHUGEPAGE`). The allocator asks for
    /// huge pages on its whole arena; for a large buffer that is written once and kept,
    /// each huge page it only partly fills is resident in full (0.35 GB over the 370
    /// quantized matrices of a LLaVA-7B, measured).
    NoHugePages,
    /// Drop its resident pages (`MADV_DONTNEED`); only for a read-only file mapping, whose
    /// pages a later read faults back in from the file unchanged.
    DontNeed,
}

/// Gives `advice` for the whole pages within `len` bytes from `ptr`.
///
/// # Safety
/// The range must lie within one live mapping of this process, and with
/// [`Advice::DontNeed`] that mapping must be a read-only file mapping.
pub(crate) unsafe fn advise(ptr: *const u8, len: usize, advice: Advice) {
    #[cfg(unix)]
    {
        let flag = match advice {
            #[cfg(target_os = "linux")]
            Advice::HugePages => libc::MADV_HUGEPAGE,
            #[cfg(target_os = "linux")]
            Advice::NoHugePages => libc::MADV_NOHUGEPAGE,
            Advice::DontNeed => libc::MADV_DONTNEED,
            // Huge-page advice exists on Linux only.
            #[cfg(not(target_os = "linux"))]
            _ => return,
        };
        let page = match advice {
            Advice::HugePages => 2 << 20,
            // SAFETY: sysconf has no preconditions.
            _ => match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
                p if p > 0 => p as usize,
                _ => return,
            },
        };
        let start = (ptr as usize).div_ceil(page) * page;
        let end = (ptr as usize + len) / page * page;
        if end <= start {
            return;
        }
        // SAFETY: [start, end) lies within the caller's range, inside one live mapping; the
        // advice given changes how pages are backed, or (DONTNEED, on a read-only file
        // mapping as the caller guarantees) drops pages that reads fault back in unchanged.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, flag);
        }
    }
    #[cfg(not(unix))]
    let _ = (ptr, len, advice);
}
