//! The state file: what the agent knows beyond the kernel (conversations, open alarms, labels,
//! periodicity samples, the watch set, unreported drops) survives a restart in one file.
//!
//! This module owns the **file format only**: framing, checksum, atomic replacement, and
//! the one-line errors a bad file gets. What goes in the payload is decided by the owners of
//! that state (each keeps its snapshot type beside itself; `pipeline` composes them), so this
//! module is generic over the payload type and knows none of them.
//!
//! # Format (version [`FORMAT_VERSION`])
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | magic `SNSTATE\0` |
//! | 8..12 | format version (u32 LE) |
//! | 12..20 | payload length (u64 LE, at most [`MAX_PAYLOAD`]) |
//! | 20..24 | CRC-32 (IEEE) of bytes 8..20 followed by the payload |
//! | 24.. | payload: the snapshot, serialized with postcard |
//!
//! Invariants:
//! - the magic and the version stay at bytes 0..12 in every version, so any agent can say
//!   "version N, this agent reads M" about a file of another version; everything after
//!   byte 12 may change with the version;
//! - the version changes whenever the framing **or any snapshot type** changes (postcard is
//!   not self-describing: a field added is a different format); the golden test in
//!   `pipeline` fails when the encoding of the snapshot changes, to remind whoever changed it;
//! - the file is exactly 24 + length bytes; shorter is truncated, longer is corrupt;
//! - the file is only ever replaced whole: written to `PATH.tmp` in the same directory,
//!   fsynced, renamed over `PATH`, and the directory fsynced. A crash leaves the old file or
//!   the new one, never a mix (a stale `PATH.tmp` is overwritten by the next checkpoint);
//! - one agent at a time uses a state file: it holds an exclusive `flock` on `PATH.lock`
//!   ([`lock`]) from before it reads the file until it has written it a last time, and a
//!   second agent given the same path stops with one line saying so.
//!
//! Why postcard: a maintained serde format with a written, stable wire specification (1.0),
//! compact varints (a million conversations' counters stay small), and no allocation beyond
//! what the input holds (sequence lengths are checked against the bytes left). It is not
//! self-describing, which the version field covers; `serde_json::Value` cannot be read by it,
//! so snapshots carry JSON as text where they need it.
//!
//! What it must never do: panic or allocate without bound on a bad file (a state file is
//! input too: truncated by a full disk, flipped by a bad sector, written by another build),
//! or stop the agent. Every problem is a [`StateError`] whose one line names the file and the
//! problem; the caller reports it and starts empty.

use std::{
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::units::{require_positive, HumanDuration, Invalid};

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"SNSTATE\0";
/// The format this agent writes and reads. Version 2 files (before mining host episodes) are
/// still read through their owner's upgrade ([`load_upgrading`]).
pub const FORMAT_VERSION: u32 = 3;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 24;
/// Largest payload read or written (a million conversations with their samples fit).
pub const MAX_PAYLOAD: u64 = 1 << 30;

/// `[state]`: where the agent keeps what it knows across restarts, and how often it writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Off: `run` starts empty and writes nothing.
    pub enabled: bool,
    /// The state file (its directory is created if missing).
    pub path: PathBuf,
    /// How often `run` writes the state file (and always at shutdown).
    pub checkpoint_interval: HumanDuration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            enabled: true,
            path: PathBuf::from("/var/lib/sensor-agent/state.bin"),
            checkpoint_interval: HumanDuration::secs(60),
        }
    }
}

impl StateConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.path.as_os_str().is_empty() || self.path.file_name().is_none() {
            return Err(Invalid::new("path", "must name a file"));
        }
        require_positive(&[("checkpoint_interval", self.checkpoint_interval)])
    }
}

/// What is wrong with a state file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("not found")]
    Missing,
    #[error("cannot {op}: {message}")]
    Io { op: &'static str, message: String },
    #[error("not a sensor state file")]
    NotStateFile,
    #[error("version {found}, this agent reads {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("truncated ({have} of {need} bytes)")]
    Truncated { have: u64, need: u64 },
    #[error("{extra} bytes after the payload")]
    TrailingBytes { extra: u64 },
    #[error("payload length {0} exceeds the limit of {MAX_PAYLOAD} bytes")]
    TooLarge(u64),
    #[error("CRC mismatch (stored {stored:08x}, computed {computed:08x})")]
    Crc { stored: u32, computed: u32 },
    #[error("payload does not decode: {0}")]
    Payload(String),
    #[error("in use by another process ({} is locked): give each agent its own [state] path", .0.display())]
    Locked(PathBuf),
}

/// A problem with the state file at `path`: one line, "state file PATH: PROBLEM".
#[derive(Debug, thiserror::Error)]
#[error("state file {}: {problem}", path.display())]
pub struct StateError {
    pub path: PathBuf,
    pub problem: Problem,
}

fn crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[8..20]);
    h.update(payload);
    h.finalize()
}

/// The whole file for `value`: header and payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Problem> {
    let payload = postcard::to_stdvec(value).map_err(|e| Problem::Payload(e.to_string()))?;
    if payload.len() as u64 > MAX_PAYLOAD {
        return Err(Problem::TooLarge(payload.len() as u64));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let sum = crc(&out[..20], &payload);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks the frame of a whole file and returns its payload.
pub fn unframe(bytes: &[u8]) -> Result<&[u8], Problem> {
    unframe_versions(bytes, &[]).map(|(_, payload)| payload)
}

/// Checks the frame of a whole file written in [`FORMAT_VERSION`] or one of `older`; its
/// version and payload.
fn unframe_versions<'a>(bytes: &'a [u8], older: &[u32]) -> Result<(u32, &'a [u8]), Problem> {
    let have = bytes.len() as u64;
    let magic_seen = bytes.len().min(MAGIC.len());
    if bytes[..magic_seen] != MAGIC[..magic_seen] {
        return Err(Problem::NotStateFile);
    }
    if bytes.len() < 12 {
        return Err(Problem::Truncated {
            have,
            need: HEADER_LEN as u64,
        });
    }
    let word = |at: usize, n: usize| -> u64 {
        bytes[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |acc, b| acc << 8 | u64::from(*b))
    };
    let version = word(8, 4) as u32;
    if version != FORMAT_VERSION && !older.contains(&version) {
        return Err(Problem::Version { found: version });
    }
    if bytes.len() < HEADER_LEN {
        return Err(Problem::Truncated {
            have,
            need: HEADER_LEN as u64,
        });
    }
    let len = word(12, 8);
    if len > MAX_PAYLOAD {
        return Err(Problem::TooLarge(len));
    }
    let need = HEADER_LEN as u64 + len;
    if have < need {
        return Err(Problem::Truncated { have, need });
    }
    if have > need {
        return Err(Problem::TrailingBytes { extra: have - need });
    }
    let payload = &bytes[HEADER_LEN..];
    let stored = word(20, 4) as u32;
    let computed = crc(bytes, payload);
    if stored != computed {
        return Err(Problem::Crc { stored, computed });
    }
    Ok((version, payload))
}

/// Decodes a whole file (header and payload).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    take_all(unframe(bytes)?)
}

/// Decodes a whole file of [`FORMAT_VERSION`] as `T`, or of `old_version` as `Old` turned
/// into `T` (the payload type's owner says what an older file means).
pub fn decode_upgrading<T: DeserializeOwned, Old: DeserializeOwned + Into<T>>(
    bytes: &[u8],
    old_version: u32,
) -> Result<T, Problem> {
    match unframe_versions(bytes, &[old_version])? {
        (FORMAT_VERSION, payload) => take_all(payload),
        (_, payload) => take_all::<Old>(payload).map(Into::into),
    }
}

/// The whole payload as one `T`: nothing may be left over.
fn take_all<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Problem> {
    let (value, rest) =
        postcard::take_from_bytes(payload).map_err(|e| Problem::Payload(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Problem::Payload(format!(
            "{} bytes left after the snapshot",
            rest.len()
        )));
    }
    Ok(value)
}

fn io(op: &'static str) -> impl Fn(io::Error) -> Problem {
    move |e| Problem::Io {
        op,
        message: e.to_string(),
    }
}

/// Reads and decodes the state file at `path`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, StateError> {
    read_bounded(path).and_then(|bytes| {
        decode(&bytes).map_err(|problem| StateError {
            path: path.to_path_buf(),
            problem,
        })
    })
}

/// Reads and decodes the state file at `path`, also when written in `old_version` (see
/// [`decode_upgrading`]).
pub fn load_upgrading<T: DeserializeOwned, Old: DeserializeOwned + Into<T>>(
    path: &Path,
    old_version: u32,
) -> Result<T, StateError> {
    read_bounded(path).and_then(|bytes| {
        decode_upgrading::<T, Old>(&bytes, old_version).map_err(|problem| StateError {
            path: path.to_path_buf(),
            problem,
        })
    })
}

/// The bytes of the file at `path`, never more than a valid file can hold.
fn read_bounded(path: &Path) -> Result<Vec<u8>, StateError> {
    let err = |problem| StateError {
        path: path.to_path_buf(),
        problem,
    };
    let f = File::open(path).map_err(|e| {
        err(if e.kind() == io::ErrorKind::NotFound {
            Problem::Missing
        } else {
            io("open")(e)
        })
    })?;
    // Never read more than a valid file can hold: a huge file is refused by its header.
    let mut bytes = Vec::new();
    f.take(HEADER_LEN as u64 + MAX_PAYLOAD + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(io("read")(e)))?;
    Ok(bytes)
}

/// Held while an agent uses a state file: an exclusive `flock` on `PATH.lock` beside it.
///
/// Two agents given the same state file would each overwrite the other's checkpoints, and the
/// next start would restore whichever wrote last: the second one is refused instead. The lock
/// is a separate file because the state file itself is replaced by a rename at every
/// checkpoint; the kernel releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Takes the lock of the state file at `path` (creating its directory and `PATH.lock`), or
/// says that another process holds it ([`Problem::Locked`]).
pub fn lock(path: &Path) -> Result<StateLock, StateError> {
    use std::os::fd::AsRawFd;
    let err = |problem| StateError {
        path: path.to_path_buf(),
        problem,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| err(io("create its directory")(e)))?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| err(io("open its lock file")(e)))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(err(Problem::Locked(lock_path)));
        }
        return Err(err(io("lock its lock file")(e)));
    }
    Ok(StateLock { _file: file })
}

/// Writes `value` to `path` atomically (see the module docs); returns the bytes written.
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<u64, StateError> {
    let err = |problem| StateError {
        path: path.to_path_buf(),
        problem,
    };
    let bytes = encode(value).map_err(err)?;
    write_atomic(path, &bytes).map_err(err)?;
    Ok(bytes.len() as u64)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Problem> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(io("create its directory"))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io("create the temporary file"))?;
    f.write_all(bytes).map_err(io("write the temporary file"))?;
    f.sync_all().map_err(io("fsync the temporary file"))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("rename the temporary file"))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync its directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_holder_until_released() {
        let dir = std::env::temp_dir().join(format!("state-lock-{}", std::process::id()));
        let path = dir.join("sub").join("state.bin");
        let first = lock(&path).expect("first lock (creates the directory)");
        let second = lock(&path).expect_err("a second open file description is refused");
        assert!(
            matches!(&second.problem, Problem::Locked(p) if p.ends_with("state.bin.lock")),
            "{second}"
        );
        assert!(second
            .to_string()
            .starts_with(&format!("state file {}: in use", path.display())));
        drop(first);
        let _again = lock(&path).expect("free again once the first holder is gone");
        let _ = fs::remove_dir_all(&dir);
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        values: Vec<(u64, u64)>,
        flag: Option<bool>,
    }

    fn sample() -> Sample {
        Sample {
            name: "conversation".into(),
            values: vec![(1, 2), (u64::MAX, 0), (300, 70_000)],
            flag: Some(true),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("state-unit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_saved_file_loads_back_and_is_replaced_whole() {
        let d = dir("roundtrip");
        let path = d.join("sub/state.bin");
        let n = save(&path, &sample()).expect("save");
        assert_eq!(fs::metadata(&path).expect("file").len(), n);
        assert_eq!(load::<Sample>(&path).expect("load"), sample());
        let other = Sample {
            name: "x".into(),
            values: vec![],
            flag: None,
        };
        save(&path, &other).expect("save again");
        assert_eq!(load::<Sample>(&path).expect("load"), other);
        assert!(!d.join("sub/state.bin.tmp").exists(), "renamed over");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn every_truncation_is_a_clean_error() {
        let full = encode(&sample()).expect("encode");
        for n in 0..full.len() {
            let e = decode::<Sample>(&full[..n]).expect_err("truncated");
            match e {
                Problem::Truncated { have, need } => {
                    assert_eq!(have, n as u64);
                    assert!(need > have);
                }
                Problem::NotStateFile if n == 0 => {}
                other => panic!("{n} bytes: {other}"),
            }
        }
        let mut longer = full.clone();
        longer.push(0);
        assert_eq!(
            decode::<Sample>(&longer),
            Err(Problem::TrailingBytes { extra: 1 })
        );
    }

    /// Every bit of every byte flipped: always an error, never a panic or a wrong value.
    #[test]
    fn every_flipped_bit_is_a_clean_error() {
        let full = encode(&sample()).expect("encode");
        for i in 0..full.len() {
            for bit in 0..8 {
                let mut b = full.clone();
                b[i] ^= 1 << bit;
                let e = decode::<Sample>(&b).expect_err("flipped");
                let expected = match i {
                    0..=7 => matches!(e, Problem::NotStateFile),
                    8..=11 => matches!(e, Problem::Version { .. }),
                    12..=19 => matches!(
                        e,
                        Problem::Truncated { .. }
                            | Problem::TrailingBytes { .. }
                            | Problem::TooLarge(_)
                    ),
                    _ => matches!(e, Problem::Crc { .. }),
                };
                assert!(expected, "byte {i} bit {bit}: {e}");
            }
        }
    }

    /// Random bytes behind a valid frame (a CRC-valid file another build wrote): a clean
    /// error or a value, never a panic.
    #[test]
    fn random_payloads_behind_a_valid_frame_never_panic() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let len = rng.usize(0..64);
            let payload: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let mut file = Vec::new();
            file.extend_from_slice(&MAGIC);
            file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            file.extend_from_slice(&(len as u64).to_le_bytes());
            let sum = crc(&file[..20], &payload);
            file.extend_from_slice(&sum.to_le_bytes());
            file.extend_from_slice(&payload);
            let _ = decode::<Sample>(&file);
        }
    }

    #[test]
    fn errors_are_one_line_naming_the_file_and_the_problem() {
        let d = dir("errors");
        fs::create_dir_all(&d).expect("dir");
        let path = d.join("state.bin");
        let e = load::<Sample>(&path).expect_err("missing").to_string();
        assert_eq!(e, format!("state file {}: not found", path.display()));
        fs::write(&path, b"hello, world, this is text").expect("write");
        let e = load::<Sample>(&path).expect_err("text").to_string();
        assert!(e.ends_with(": not a sensor state file"), "{e}");
        let mut old = encode(&sample()).expect("encode");
        old[8..12].copy_from_slice(&7u32.to_le_bytes());
        fs::write(&path, &old).expect("write");
        let e = load::<Sample>(&path).expect_err("version").to_string();
        assert!(
            e.ends_with(&format!(": version 7, this agent reads {FORMAT_VERSION}")),
            "{e}"
        );
        let full = encode(&sample()).expect("encode");
        fs::write(&path, &full[..30]).expect("write");
        let e = load::<Sample>(&path).expect_err("short").to_string();
        assert!(
            e.ends_with(&format!(": truncated (30 of {} bytes)", full.len())),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let _ = fs::remove_dir_all(&d);
    }

    /// A file of the older version named is read as the old type and upgraded; the current
    /// version as the current type; any other version is refused as before.
    #[test]
    fn an_older_version_is_read_through_its_upgrade() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Old {
            name: String,
        }
        impl From<Old> for Sample {
            fn from(o: Old) -> Sample {
                Sample {
                    name: o.name,
                    values: vec![],
                    flag: None,
                }
            }
        }
        let mut old = encode(&Old { name: "v".into() }).expect("encode");
        old[8..12].copy_from_slice(&(FORMAT_VERSION - 1).to_le_bytes());
        let sum = crc(&old[..20], &old[HEADER_LEN..]);
        old[20..24].copy_from_slice(&sum.to_le_bytes());
        let up = decode_upgrading::<Sample, Old>(&old, FORMAT_VERSION - 1).expect("upgraded");
        assert_eq!(up.name, "v");
        assert_eq!(
            decode::<Sample>(&old),
            Err(Problem::Version {
                found: FORMAT_VERSION - 1
            })
        );
        let now = encode(&sample()).expect("encode");
        assert_eq!(
            decode_upgrading::<Sample, Old>(&now, FORMAT_VERSION - 1).expect("current"),
            sample()
        );
        assert!(matches!(
            decode_upgrading::<Sample, Old>(&old, FORMAT_VERSION - 2),
            Err(Problem::Version { .. })
        ));
        // A damaged old file is as clean an error as a damaged new one.
        assert!(matches!(
            decode_upgrading::<Sample, Old>(&old[..old.len() - 1], FORMAT_VERSION - 1),
            Err(Problem::Truncated { .. })
        ));
    }

    #[test]
    fn the_settings_check_themselves() {
        assert!(StateConfig::default().validate().is_ok());
        let bad = StateConfig {
            checkpoint_interval: HumanDuration::secs(0),
            ..StateConfig::default()
        };
        assert_eq!(bad.validate().expect_err("zero").key, "checkpoint_interval");
    }
}
