//! Least privilege: after the datapath is attached, `run` needs almost nothing.
//!
//! Loading programs, creating maps, attaching to interfaces and pinning need CAP_BPF,
//! CAP_NET_ADMIN, CAP_PERFMON and CAP_SYS_ADMIN (or root). Once they are done, the agent only
//! reads and updates maps through file descriptors it already holds, reads the ring buffers
//! it already mapped, and writes its own files. [`drop_to`] switches to an unprivileged user
//! (`run --user NAME`) and keeps only the capabilities asked for, in every set (effective,
//! permitted, inheritable, ambient and bounding), so neither the process nor anything it could
//! start can get them back.
//!
//! Which capabilities polling still needs depends on the kernel: before Linux 6.5, every
//! `bpf()` command needs CAP_BPF while `kernel.unprivileged_bpf_disabled` is set (Debian's
//! default); from 6.5 on, commands on a descriptor already held need none. The caller finds
//! out by trying ([`unprivileged`]), not by reading version numbers.
//!
//! Capabilities and user ids belong to each thread in Linux: it must run while the process
//! has one thread, before the async runtime starts, or the other threads would keep what
//! this one gave up; [`drop_to`] refuses otherwise.

use std::ffi::CString;

pub use caps::Capability;
use caps::{CapSet, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("cannot look up user {name:?}: {reason}")]
    Lookup { name: String, reason: String },
    #[error(
        "cannot drop privileges while {0} threads run (it must happen before the runtime starts)"
    )]
    Threads(usize),
    #[error("cannot {what}: {reason}")]
    Call { what: String, reason: String },
}

fn call(what: &str, reason: impl std::fmt::Display) -> PrivilegeError {
    PrivilegeError::Call {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// An account to run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks `name` up in the password database (files, LDAP, whatever NSS says).
pub fn lookup_user(name: &str) -> Result<User, PrivilegeError> {
    let c = CString::new(name).map_err(|_| PrivilegeError::NoSuchUser(name.to_string()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwnam_r writes it and points its
    // strings into `buf`, which outlives every read below.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(PrivilegeError::Lookup {
            name: name.to_string(),
            reason: std::io::Error::from_raw_os_error(rc).to_string(),
        });
    }
    if found.is_null() {
        return Err(PrivilegeError::NoSuchUser(name.to_string()));
    }
    Ok(User {
        name: name.to_string(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Threads of this process, from /proc.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

/// Switches to `user` (when given) and keeps only `keep`, in every capability set.
pub fn drop_to(user: Option<&User>, keep: &[Capability]) -> Result<(), PrivilegeError> {
    let n = threads();
    if n > 1 {
        return Err(PrivilegeError::Threads(n));
    }
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first: shrinking it needs CAP_SETPCAP, which goes with the rest below.
    // Without CAP_SETPCAP (already unprivileged) there is nothing to take from it.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::runtime::thread_all_supported() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(|e| call(&format!("drop {cap} from the bounding set"), e))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| call("clear the ambient set", e))?;
    if let Some(u) = user {
        // Keep the permitted set across the uid change; it is cut to `keep` right after.
        // SAFETY: plain syscalls on this (only) thread's credentials.
        unsafe {
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                return Err(call("keep capabilities", std::io::Error::last_os_error()));
            }
            if libc::setgroups(1, &u.gid) != 0 {
                return Err(call(
                    &format!("set the groups of {}", u.name),
                    std::io::Error::last_os_error(),
                ));
            }
            if libc::setresgid(u.gid, u.gid, u.gid) != 0 {
                return Err(call(
                    &format!("switch to group {}", u.gid),
                    std::io::Error::last_os_error(),
                ));
            }
            if libc::setresuid(u.uid, u.uid, u.uid) != 0 {
                return Err(call(
                    &format!("switch to user {}", u.name),
                    std::io::Error::last_os_error(),
                ));
            }
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        }
    }
    // Effective before permitted: the effective set must stay within the permitted one.
    caps::set(None, CapSet::Effective, &keep).map_err(|e| call("set the effective set", e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| call("set the permitted set", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| call("clear the inheritable set", e))?;
    // Nothing this process starts gains privileges (no setuid binaries, no file capabilities).
    // SAFETY: a plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(call("set no_new_privs", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `probe` with an empty effective set (everything still permitted), then restores the
/// set; returns what `probe` returned. Whether polling works this way tells whether it needs a
/// capability at all (CAP_SYS_ADMIN would stand in for CAP_BPF, so all of them go).
pub fn unprivileged<T>(probe: impl FnOnce() -> T) -> Result<T, PrivilegeError> {
    let saved = caps::read(None, CapSet::Effective).map_err(|e| call("read capabilities", e))?;
    caps::clear(None, CapSet::Effective).map_err(|e| call("lower capabilities", e))?;
    let out = probe();
    caps::set(None, CapSet::Effective, &saved).map_err(|e| call("raise capabilities", e))?;
    Ok(out)
}

/// The real user id of this process.
/// Whether `cap` is in this thread's permitted set (so it can be kept through [`drop_to`]).
pub fn permitted(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Permitted, cap).unwrap_or(false)
}

pub fn uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The effective capabilities now, by name (for the log line that says what was kept).
pub fn effective() -> Vec<String> {
    let mut v: Vec<String> = caps::read(None, CapSet::Effective)
        .map(|s| s.into_iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_and_unknown_ones_named() {
        let root = lookup_user("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        let e = lookup_user("no-such-user-sensor").unwrap_err();
        assert_eq!(e.to_string(), "user \"no-such-user-sensor\" does not exist");
        assert!(lookup_user("a\0b").is_err());
    }

    #[test]
    fn refuses_to_drop_with_other_threads_running() {
        // The test harness runs this test on a thread of its own: more than one thread.
        let e = drop_to(None, &[]).unwrap_err();
        assert!(matches!(e, PrivilegeError::Threads(_)), "{e}");
    }
}
