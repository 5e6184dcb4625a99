//! The Linux calls the standard library does not offer, each behind a safe function:
//! an atomic exchange of two directories (`renameat2(RENAME_EXCHANGE)`), a probe for other
//! processes holding a file open (a write lease, `F_SETLEASE`), and SIGKILL of this process
//! (the test-only crash points). `rustix` has the first but not the lease, so `libc` it is.
//! Also [`create_private`], the one way temporary files are created, and [`free_bytes`]
//! (`statvfs`).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Creates a new file only this user can read (0600), never through a symlink and never over an
/// existing file (`O_CREAT|O_EXCL|O_NOFOLLOW`): temporary files (downloads, logs of temporary
/// etcds) live in directories with unpredictable names, and must not be redirected by a link
/// planted there.
pub(crate) fn create_private(p: &Path) -> std::io::Result<std::fs::File> {
    private_options().write(true).create_new(true).open(p)
}

/// 0600 when created, never through a symlink.
fn private_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

/// Opens a log for appending, created 0600 if missing, never through a symlink (a temporary
/// etcd started several times on one restore appends to one log).
pub(crate) fn append_private(p: &Path) -> std::io::Result<std::fs::File> {
    private_options().append(true).create(true).open(p)
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Swaps `a` and `b` atomically (both must exist). `Unsupported` when the file system cannot
/// (the caller falls back to two renames).
pub(crate) fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
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
pub(crate) fn opened_elsewhere(f: &std::fs::File) -> Option<bool> {
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
pub(crate) fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// Bytes free for an unprivileged writer on the file system holding `p` (`statvfs`).
pub(crate) fn free_bytes(p: &Path) -> std::io::Result<u64> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs buffer
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_bytes_of_a_real_directory() {
        let d = tempfile::tempdir().expect("tmp");
        assert!(free_bytes(d.path()).expect("statvfs") > 0);
        assert!(free_bytes(&d.path().join("missing")).is_err());
    }

    #[test]
    fn private_files_are_0600_and_refuse_links_and_existing_files() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("tmp: {e}"));
        let f = d.path().join("etcd.log");
        create_private(&f).unwrap_or_else(|e| panic!("create: {e}"));
        let mode = std::fs::metadata(&f)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        assert!(
            create_private(&f).is_err(),
            "an existing file is not reused"
        );
        let target = d.path().join("elsewhere");
        let link = d.path().join("planted");
        std::os::unix::fs::symlink(&target, &link).unwrap_or_else(|e| panic!("link: {e}"));
        assert!(
            create_private(&link).is_err(),
            "a planted link is not followed"
        );
        assert!(
            append_private(&link).is_err(),
            "a planted link is not followed"
        );
        assert!(append_private(&f).is_ok(), "a log is appended to");
        assert!(!target.exists());
    }
}
