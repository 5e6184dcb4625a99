//! The three Linux calls the standard library does not offer, each behind a safe function:
//! an atomic exchange of two directories (`renameat2(RENAME_EXCHANGE)`), a probe for other
//! processes holding a file open (a write lease, `F_SETLEASE`), and SIGKILL of this process
//! (the test-only crash points). `rustix` has the first but not the lease, so `libc` it is.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Swaps `a` and `b` atomically (both must exist). `Unsupported` when the file system cannot
/// (the caller falls back to two renames).
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let (ca, cb) = (cstr(a)?, cstr(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call;
    // renameat2 does not keep them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Err(
            std::io::Error::new(std::io::ErrorKind::Unsupported, e.to_string()),
        ),
        _ => Err(e),
    }
}

/// Whether another open file description than `f` exists for its file, in any process or
/// container on this kernel: `Some(true)` when one does, `None` when the kernel cannot tell
/// (leases not permitted for this user, or not supported by the file system).
pub fn opened_elsewhere(f: &std::fs::File) -> Option<bool> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a file descriptor we own; F_SETLEASE takes an int argument.
    let r = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) };
    if r == 0 {
        // SAFETY: as above; drops the lease at once (an opener would otherwise wait for it)
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EBUSY) => Some(true),
        _ => None,
    }
}

/// Kills this process with SIGKILL: no destructor, no flush, as a power loss or the OOM killer.
pub fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}
