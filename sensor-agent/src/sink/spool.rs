//! A durable on-disk spool between the alarm producers (the detection loop) and each sink.
//!
//! # Why it exists
//!
//! Alarms must reach the SIEMs at least once, even when a SIEM is down for hours, the agent
//! is restarted, or the machine loses power. A sink therefore never takes alarms straight from
//! the detectors: they are appended to this spool, and every sink reads them back at its own
//! pace and acknowledges what its SIEM has taken. One spool serves several sinks, each with its
//! own persisted cursor; a record is deleted only when every sink has acknowledged it.
//!
//! # What it must never do
//!
//! * **Never lose an acknowledged record.** Once [`Spool::append`] returned
//!   [`AppendOutcome::Appended`], the record is delivered to every sink at least once: it is
//!   on disk (durable across a process crash at once, across a power loss as the
//!   [`FsyncPolicy`] says) and it is only deleted after every sink has acknowledged it.
//!   Failures turn into duplicates (re-delivery after a crash), never into loss.
//! * **Never crash on a corrupt file.** Opening scans every segment and verifies each record's
//!   length and CRC. A torn tail (a partial last record, from a crash in the middle of a
//!   write) is cut off and counted; a damaged record in the middle is skipped (the scan looks
//!   for the next valid record) and counted; damaged cursor files reset the cursor to the
//!   oldest retained record (duplicates, not loss). No byte pattern makes it panic.
//! * **Never block the detection loop unless configured to.** The spool itself never sleeps or
//!   waits. When it is full it either drops the new record and counts it
//!   (`when_full = "drop_newest"`) or returns [`AppendOutcome::WouldBlock`] (`when_full =
//!   "block"`) without storing anything; only then is it the caller's choice to hold on to
//!   the alarm and retry after the sinks have acknowledged records.
//!
//! # On-disk format
//!
//! A spool directory holds:
//!
//! * `NNNNNNNNNNNNNNNNNNNN.seg`: append-only segment files named by the 20-digit decimal
//!   sequence number of their first record. A segment is rolled (a new one started) before a
//!   record would take it past `segment_bytes`; a record larger than that gets a segment of
//!   its own. The last segment is the active one and always exists (possibly empty), so its
//!   name also remembers the next sequence number after everything was deleted. At open, a
//!   segment whose first record carries another sequence number than its name is read by the
//!   records' own numbers (and renamed back): the name is a hint, the records are the truth.
//! * Each record, little-endian, no padding:
//!
//!   | bytes | field |
//!   | --- | --- |
//!   | 0..4 | `len`: payload length (u32, at most [`MAX_PAYLOAD`]) |
//!   | 4..8 | CRC-32 (IEEE) of bytes 8..24+len, i.e. seq, appended_at and payload |
//!   | 8..16 | `seq` (u64): 1, 2, 3, ... with no gaps as written |
//!   | 16..24 | `appended_at_ns` (u64): the caller's clock at append |
//!   | 24.. | payload |
//!
//! * `SINK.cursor`: one per sink, 20 bytes: magic `SPCURS01`, the last acknowledged sequence
//!   number (u64, 0 = none) and a CRC-32 of both. Always replaced atomically: written to
//!   `SINK.cursor.tmp`, (fsynced,) renamed over, and the directory fsynced.
//! * `LOCK`: held with `flock` while a spool is open, so two agents never share a directory.
//!
//! # Durability: the fsync policy
//!
//! Every append is written to the segment file with one `write()` before `append` returns, so
//! a **process crash** (panic, SIGKILL, OOM kill) never loses a record that `append` returned
//! for: it already sits in the kernel's page cache. A **power loss** (or kernel crash) loses
//! what had not reached the disk; that depends on the policy:
//!
//! * `always`: `fdatasync` on every append (and a directory fsync when a segment is created);
//!   an ack is durable when `ack` returns. Nothing that returned is lost on power loss.
//! * `batch` (default): appends become durable at the next [`Spool::flush`] (call it once per
//!   detection tick, or every N records); acks are kept in memory and written durably by
//!   `flush`. A power loss loses at most the records appended since the last `flush`; a
//!   crash forgets the acks since the last `flush`, so those records are delivered again.
//!   A segment is also fsynced when it is rolled, and `flush` runs when the spool is dropped.
//! * `never`: no fsync at all; the OS writes back when it likes (about 30 s on Linux
//!   defaults). Acks are written (not fsynced) at once. A power loss can lose any recent
//!   record and revert cursors (re-delivery).
//!
//! Whatever is lost on power loss shows up at the next open as a torn tail or missing
//! records (counted), never as a wrong record: every record is CRC-checked. Cursors that
//! point past the recovered end are clamped down, so records appended after recovery are
//! never mistaken for acknowledged ones.
//!
//! # Capacity
//!
//! `max_bytes` caps the total size of the segment files. Space is reclaimed a segment at a
//! time, when every sink's (durable) cursor has passed the segment's last record, so up to one
//! segment of acknowledged records may still count against the cap: keep `max_bytes` several
//! times `segment_bytes`. A cursor file of a sink that is no longer configured holds nothing
//! back.
//!
//! The spool is not internally synchronised: wrap it in a `Mutex` to share it between threads.
//! Memory use is 8 bytes per stored record (an in-memory index built at open).

use std::{
    collections::VecDeque,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::{fs::FileExt, io::AsRawFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::Deserialize;

/// Bytes of framing before each payload: len, crc, seq, appended_at.
pub const HEADER_LEN: u64 = 24;
const HEADER: usize = HEADER_LEN as usize;
/// The largest payload a record may carry; larger ones are dropped ([`DropReason::TooLarge`]).
pub const MAX_PAYLOAD: u64 = 16 << 20;
/// Bounds of `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 64;
pub const MAX_SEGMENT_BYTES: u64 = 256 << 20;
/// A segment is never read past this at open (a larger file cannot have been written by us).
const MAX_SEGMENT_FILE: u64 = MAX_SEGMENT_BYTES + HEADER_LEN + MAX_PAYLOAD;
/// How many sequence numbers past the expected one a record may carry and still be accepted
/// while re-synchronising after damage (a cheap filter before the CRC is computed).
const RESYNC_SLACK: u64 = 1024;
/// Largest read of one `peek` system call.
const READ_CHUNK: u32 = 1 << 20;
const CURSOR_MAGIC: &[u8; 8] = b"SPCURS01";
const CURSOR_LEN: usize = 20;
const SEG_SUFFIX: &str = ".seg";
const CURSOR_SUFFIX: &str = ".cursor";
const TMP_SUFFIX: &str = ".tmp";
const LOCK_FILE: &str = "LOCK";

/// What to do with a new record when the spool holds `max_bytes`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Store nothing and return [`AppendOutcome::WouldBlock`]; the caller keeps the record
    /// and retries after the sinks have acknowledged some.
    #[default]
    Block,
    /// Drop the new record, count it, return [`AppendOutcome::Dropped`].
    DropNewest,
}

/// When data reaches stable storage; see the module documentation for what each guarantees.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fdatasync every append, fsync every ack.
    Always,
    /// fsync in [`Spool::flush`], which the caller runs once per tick or every N records.
    #[default]
    Batch,
    /// Leave write-back to the OS.
    Never,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Cap on the total size of the segment files, bytes.
    pub max_bytes: u64,
    /// A segment is rolled before a record would take it past this, bytes.
    pub segment_bytes: u64,
    pub when_full: WhenFull,
    pub fsync: FsyncPolicy,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            when_full: WhenFull::Block,
            fsync: FsyncPolicy::Batch,
        }
    }
}

impl SpoolConfig {
    pub fn validate(&self) -> Result<(), SpoolError> {
        self.check()
            .map_err(|(key, message)| SpoolError::Config(format!("{key} {message}")))
    }

    /// The first setting out of its bounds: its key and the problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err((
                "segment_bytes",
                format!(
                    "{} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                    self.segment_bytes
                ),
            ));
        }
        if self.max_bytes < MIN_SEGMENT_BYTES {
            return Err((
                "max_bytes",
                format!("{} is below {MIN_SEGMENT_BYTES}", self.max_bytes),
            ));
        }
        Ok(())
    }
}

/// One stored record as read back by [`Spool::peek`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub appended_at_ns: u64,
    pub payload: Vec<u8>,
}

/// Why a record was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The spool held `max_bytes` and `when_full = "drop_newest"`.
    Full,
    /// The payload is larger than [`MAX_PAYLOAD`], or the record alone exceeds `max_bytes`.
    TooLarge,
}

impl DropReason {
    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Full => "full",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// The result of [`Spool::append`].
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored with this sequence number (durable as the fsync policy says).
    Appended(u64),
    /// Not stored, and counted under its reason.
    Dropped(DropReason),
    /// `when_full = "block"` and the spool is full: nothing was stored or counted as dropped.
    /// The caller keeps the record, lets the sinks deliver and acknowledge, and calls
    /// `append` again; it succeeds once an ack has freed a whole segment.
    WouldBlock,
}

/// Counters for metrics. `bytes` and `segments` are gauges (the current state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolCounters {
    /// Records stored since open.
    pub appended: u64,
    /// Records dropped because the spool was full (`drop_newest`).
    pub dropped_full: u64,
    /// Records dropped because they can never fit.
    pub dropped_too_large: u64,
    /// Appends refused with [`AppendOutcome::WouldBlock`] (each retry counts).
    pub would_block: u64,
    /// Torn tails (a partial last record) cut off at open.
    pub torn_records_skipped: u64,
    /// Records lost to damage in the middle of a segment (or at the end of a segment that is
    /// not the last), skipped at open; estimated from the sequence-number gap, at least 1
    /// per damaged region.
    pub corrupt_records_skipped: u64,
    /// Records found missing at open without damaged bytes (a segment deleted or cut short
    /// at a record boundary), from the sequence-number gap between segments.
    pub missing_records: u64,
    /// Records that failed their CRC when read back after open (each failed read counts);
    /// they are skipped.
    pub corrupt_on_read: u64,
    /// Cursors moved at open because they pointed past the end or before the oldest record.
    pub cursors_clamped: u64,
    /// Segments found at open under a name other than their first record's sequence number
    /// (renamed by hand, restored from a backup); read by their records' own numbers and
    /// renamed back.
    pub renamed_segments: u64,
    /// Cursor files that were unreadable at open; the cursor restarts at the oldest record.
    pub cursors_reset: u64,
    /// Current size of the segment files, bytes.
    pub bytes: u64,
    /// Current number of segment files.
    pub segments: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {}: {op}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("spool {} is in use by another process", .0.display())]
    Locked(PathBuf),
    #[error("spool: {0}")]
    Config(String),
    #[error("spool: invalid sink name {0:?} (1-64 of A-Z a-z 0-9 . _ -, not starting with '.')")]
    InvalidSinkName(String),
    #[error("spool: sink {0:?} is listed twice")]
    DuplicateSink(String),
    #[error("spool: unknown sink {0:?}")]
    UnknownSink(String),
    #[error("spool: sink {sink:?} acknowledged seq {seq} but the last appended is {last}")]
    AckBeyondEnd { sink: String, seq: u64, last: u64 },
    #[error("spool: sequence numbers exhausted")]
    SeqExhausted,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One record in a segment's in-memory index.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// seq - segment base.
    seq_delta: u32,
    offset: u32,
}

struct Segment {
    base: u64,
    path: PathBuf,
    /// Bytes of valid records (the file's size).
    len: u64,
    index: Vec<Entry>,
}

impl Segment {
    fn seq(&self, e: Entry) -> u64 {
        self.base + u64::from(e.seq_delta)
    }

    /// The last record's seq, or base - 1 when empty.
    fn last_seq(&self) -> u64 {
        match self.index.last() {
            Some(&e) => self.seq(e),
            None => self.base.saturating_sub(1),
        }
    }

    /// Index of the first entry with seq > cursor.
    fn first_after(&self, cursor: u64) -> usize {
        self.index.partition_point(|&e| self.seq(e) <= cursor)
    }
}

struct SinkState {
    name: String,
    path: PathBuf,
    /// Last acknowledged seq.
    cursor: u64,
    /// Last seq written to the cursor file; segments are reclaimed by this one.
    persisted: u64,
    /// appended_at of the first record after the cursor.
    oldest_at: Option<u64>,
}

/// The spool; see the module documentation.
pub struct Spool {
    dir: PathBuf,
    cfg: SpoolConfig,
    _lock: File,
    /// Sorted by base; never empty; the last one is active.
    segments: VecDeque<Segment>,
    /// The active segment, opened for append and read.
    active: File,
    next_seq: u64,
    sinks: Vec<SinkState>,
    counters: SpoolCounters,
    corrupt_on_read: AtomicU64,
    bytes: u64,
    /// `batch`: appends written since the last fdatasync of the active segment.
    unsynced: bool,
    /// `batch`: a segment was created since the last directory fsync.
    dir_dirty: bool,
    /// A failed write could not be undone: start a new segment before the next append.
    active_broken: bool,
    buf: Vec<u8>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("cfg", &self.cfg)
            .field("next_seq", &self.next_seq)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` for these sinks, recovering from whatever
    /// a crash or damage left behind. Sink names are stable identifiers: a sink keeps its
    /// cursor across restarts under the same name. A sink without a cursor file (new, or the
    /// file was lost) starts at the oldest retained record.
    pub fn open(dir: &Path, cfg: SpoolConfig, sinks: &[&str]) -> Result<Spool, SpoolError> {
        cfg.validate()?;
        if sinks.is_empty() {
            return Err(SpoolError::Config("a spool needs at least one sink".into()));
        }
        for (i, name) in sinks.iter().enumerate() {
            if !valid_sink_name(name) {
                return Err(SpoolError::InvalidSinkName(name.to_string()));
            }
            if sinks[..i].contains(name) {
                return Err(SpoolError::DuplicateSink(name.to_string()));
            }
        }
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let lock = lock_dir(dir)?;
        let sync = cfg.fsync != FsyncPolicy::Never;
        let mut counters = SpoolCounters::default();

        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list directory", dir))? {
            let entry = entry.map_err(io_err("list directory", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                // An interrupted cursor write; the previous cursor file is intact.
                let _ = fs::remove_file(entry.path());
            } else if let Some(base) = parse_segment_name(name) {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    found.push((base, entry.path()));
                } else {
                    log::warn!("spool {}: {name} is not a file; ignored", dir.display());
                }
            }
        }
        // A segment's name is only a hint: its records carry their own sequence numbers. A
        // segment renamed by hand (or restored from a backup under another name) would
        // otherwise have every record fall outside its name's range and be cut as damage.
        for (base, path) in found.iter_mut() {
            if let Some(first) = first_record_seq(path)? {
                if first != *base {
                    log::warn!(
                        "spool {}: {} is named for record {} but starts with record {first}; \
                         its records' own sequence numbers are used",
                        dir.display(),
                        path.file_name().map_or_else(
                            || path.display().to_string(),
                            |n| n.to_string_lossy().into_owned()
                        ),
                        *base
                    );
                    *base = first;
                    counters.renamed_segments += 1;
                    let proper = dir.join(format!("{first:020}{SEG_SUFFIX}"));
                    if !proper.exists() && fs::rename(&*path, &proper).is_ok() {
                        *path = proper;
                        if sync {
                            sync_dir(dir)?;
                        }
                    }
                }
            }
        }
        found.sort_unstable_by_key(|&(base, _)| base);

        let mut segments = VecDeque::with_capacity(found.len() + 1);
        let mut bytes = 0;
        for (i, (base, path)) in found.iter().enumerate() {
            let upper = found.get(i + 1).map(|&(b, _)| b);
            let (data, file_len) = read_segment(path)?;
            let scan = scan_segment(&data, *base, upper);
            counters.torn_records_skipped += scan.torn;
            counters.corrupt_records_skipped += scan.corrupt;
            counters.missing_records += scan.missing;
            if scan.torn + scan.corrupt + scan.missing > 0 {
                log::warn!(
                    "spool {}: {} torn, {} damaged and {} missing records skipped",
                    path.display(),
                    scan.torn,
                    scan.corrupt,
                    scan.missing
                );
            }
            let len = scan.valid_len as u64;
            if len < file_len {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err("open segment", path))?;
                f.set_len(len).map_err(io_err("truncate segment", path))?;
                if sync {
                    f.sync_all().map_err(io_err("fsync segment", path))?;
                }
                log::warn!(
                    "spool {}: cut {} damaged bytes at the end",
                    path.display(),
                    file_len - len
                );
            }
            bytes += len;
            segments.push_back(Segment {
                base: *base,
                path: path.clone(),
                len,
                index: scan.entries,
            });
        }

        let active = match segments.back() {
            Some(seg) => OpenOptions::new()
                .read(true)
                .append(true)
                .open(&seg.path)
                .map_err(io_err("open segment", &seg.path))?,
            None => {
                let seg = new_segment(dir, 1);
                let f = create_segment_file(&seg.path)?;
                if sync {
                    sync_dir(dir)?;
                }
                segments.push_back(seg);
                f
            }
        };
        let last = segments.back().map_or(0, Segment::last_seq);
        let next_seq = last.saturating_add(1);
        let first_record = segments
            .iter()
            .find_map(|s| s.index.first().map(|&e| s.seq(e)));
        // A cursor below this points into records that are gone.
        let floor = first_record.map_or(last, |s| s - 1);

        let mut sink_states = Vec::with_capacity(sinks.len());
        let mut rewrite = false;
        for name in sinks {
            let path = dir.join(format!("{name}{CURSOR_SUFFIX}"));
            let (cursor, write) = match read_cursor(&path)? {
                None => {
                    log::info!(
                        "spool {}: new sink {name} starts at seq {}",
                        dir.display(),
                        floor + 1
                    );
                    (floor, true)
                }
                Some(None) => {
                    counters.cursors_reset += 1;
                    log::warn!(
                        "spool {}: cursor of sink {name} is damaged; re-delivering from seq {}",
                        dir.display(),
                        floor + 1
                    );
                    (floor, true)
                }
                Some(Some(c)) if c > last => {
                    counters.cursors_clamped += 1;
                    log::warn!(
                        "spool {}: cursor of sink {name} ({c}) is past the last record ({last}); clamped",
                        dir.display()
                    );
                    (last, true)
                }
                Some(Some(c)) if c < floor => {
                    counters.cursors_clamped += 1;
                    log::warn!(
                        "spool {}: records {}..={floor} for sink {name} are gone; its cursor moves to {floor}",
                        dir.display(),
                        c + 1
                    );
                    (floor, true)
                }
                Some(Some(c)) => (c, false),
            };
            if write {
                write_cursor(&path, cursor, sync)?;
                rewrite = true;
            }
            sink_states.push(SinkState {
                name: name.to_string(),
                path,
                cursor,
                persisted: cursor,
                oldest_at: None,
            });
        }
        if rewrite && sync {
            sync_dir(dir)?;
        }

        let mut spool = Spool {
            dir: dir.to_path_buf(),
            cfg,
            _lock: lock,
            segments,
            active,
            next_seq,
            sinks: sink_states,
            counters,
            corrupt_on_read: AtomicU64::new(0),
            bytes,
            unsynced: false,
            dir_dirty: false,
            active_broken: false,
            buf: Vec::new(),
        };
        for i in 0..spool.sinks.len() {
            spool.refresh_oldest(i);
        }
        spool.reclaim()?;
        Ok(spool)
    }

    /// Appends one record. Never waits: when the spool is full it returns
    /// [`AppendOutcome::Dropped`] (`drop_newest`) or [`AppendOutcome::WouldBlock`] (`block`).
    /// An `Err` means the record was not stored (an I/O error); retrying may store it twice
    /// only if the error came after the data reached the file.
    pub fn append(&mut self, payload: &[u8], now_ns: u64) -> Result<AppendOutcome, SpoolError> {
        let size = HEADER_LEN + payload.len() as u64;
        if payload.len() as u64 > MAX_PAYLOAD || size > self.cfg.max_bytes {
            self.counters.dropped_too_large += 1;
            return Ok(AppendOutcome::Dropped(DropReason::TooLarge));
        }
        if self.bytes + size > self.cfg.max_bytes {
            self.make_room()?;
            if self.bytes + size > self.cfg.max_bytes {
                return Ok(match self.cfg.when_full {
                    WhenFull::Block => {
                        self.counters.would_block += 1;
                        AppendOutcome::WouldBlock
                    }
                    WhenFull::DropNewest => {
                        self.counters.dropped_full += 1;
                        AppendOutcome::Dropped(DropReason::Full)
                    }
                });
            }
        }
        let seq = self.next_seq;
        if seq == u64::MAX {
            return Err(SpoolError::SeqExhausted);
        }
        let active_len = self.segments.back().map_or(0, |s| s.len);
        let needs_roll = self.active_broken
            || (active_len > 0 && active_len + size > self.cfg.segment_bytes)
            || seq - self.segments.back().map_or(seq, |s| s.base) > u64::from(u32::MAX);
        if needs_roll {
            self.roll()?;
        }
        let seg = self
            .segments
            .back_mut()
            .expect("a spool always has an active segment");
        let offset = seg.len;
        encode_record(&mut self.buf, seq, now_ns, payload);
        let written = (&self.active).write_all(&self.buf).and_then(|()| {
            if self.cfg.fsync == FsyncPolicy::Always {
                self.active.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Take the partial record back out so the file stays a sequence of valid records;
            // if that fails too, never append after it.
            if self.active.set_len(offset).is_err() {
                self.active_broken = true;
            }
            return Err(SpoolError::Io {
                op: "append",
                path: seg.path.clone(),
                source: e,
            });
        }
        seg.index.push(Entry {
            seq_delta: (seq - seg.base) as u32,
            offset: offset as u32,
        });
        seg.len += size;
        self.bytes += size;
        self.next_seq = seq + 1;
        self.counters.appended += 1;
        if self.cfg.fsync == FsyncPolicy::Batch {
            self.unsynced = true;
        }
        for s in &mut self.sinks {
            if s.oldest_at.is_none() {
                s.oldest_at = Some(now_ns);
            }
        }
        Ok(AppendOutcome::Appended(seq))
    }

    /// Makes everything so far durable (`batch`: fdatasync of the active segment, directory
    /// fsync, acknowledged cursors written and fsynced) and deletes segments every sink has
    /// passed. Cheap when there is nothing to do; a no-op for data under `always`/`never`.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if self.unsynced {
            let path = &self.segments.back().expect("active segment").path;
            self.active
                .sync_data()
                .map_err(io_err("fsync segment", path))?;
            self.unsynced = false;
        }
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        self.persist_cursors()?;
        self.reclaim()
    }

    /// Up to `max` records after the sink's cursor, in order, across segments. Does not move
    /// the cursor: the same records come back until they are acknowledged.
    pub fn peek(&self, sink: &str, max: usize) -> Result<Vec<Record>, SpoolError> {
        let cursor = self.sink(sink)?.cursor;
        let mut out = Vec::new();
        let start = self.segments.partition_point(|s| s.last_seq() <= cursor);
        let last_idx = self.segments.len() - 1;
        for (si, seg) in self.segments.iter().enumerate().skip(start) {
            if out.len() >= max {
                break;
            }
            let mut i = seg.first_after(cursor);
            if i >= seg.index.len() {
                continue;
            }
            let opened;
            let file = if si == last_idx {
                &self.active
            } else {
                opened = File::open(&seg.path).map_err(io_err("open segment", &seg.path))?;
                &opened
            };
            while i < seg.index.len() && out.len() < max {
                // Read a run of records with one system call.
                let from = seg.index[i].offset;
                let mut j = i + 1;
                while j < seg.index.len()
                    && out.len() + (j - i) < max
                    && seg.index[j].offset - from < READ_CHUNK
                {
                    j += 1;
                }
                let to = seg.index.get(j).map_or(seg.len, |e| u64::from(e.offset));
                let mut buf = vec![0u8; (to - u64::from(from)) as usize];
                file.read_exact_at(&mut buf, u64::from(from))
                    .map_err(io_err("read segment", &seg.path))?;
                for &e in &seg.index[i..j] {
                    let seq = seg.seq(e);
                    let at = (e.offset - from) as usize;
                    match check_record(&buf, at, seq - 1, seq) {
                        Some(r) => out.push(Record {
                            seq,
                            appended_at_ns: r.appended_at,
                            payload: buf[at + HEADER..at + r.size].to_vec(),
                        }),
                        None => {
                            self.corrupt_on_read.fetch_add(1, Ordering::Relaxed);
                            log::error!(
                                "spool {}: record {seq} at offset {} failed its check on read; skipped",
                                seg.path.display(),
                                e.offset
                            );
                        }
                    }
                }
                i = j;
            }
        }
        Ok(out)
    }

    /// Records that `sink` has taken everything up to and including `up_to_seq`. Moving a
    /// cursor backwards is ignored. Persisted at once under `always` (fsync) and `never` (no
    /// fsync), at the next [`Spool::flush`] under `batch`; segments every sink has passed are
    /// deleted once the cursors that allow it are persisted.
    pub fn ack(&mut self, sink: &str, up_to_seq: u64) -> Result<(), SpoolError> {
        let i = self.sink_index(sink)?;
        let last = self.next_seq - 1;
        if up_to_seq > last {
            return Err(SpoolError::AckBeyondEnd {
                sink: sink.to_string(),
                seq: up_to_seq,
                last,
            });
        }
        if up_to_seq <= self.sinks[i].cursor {
            return Ok(());
        }
        self.sinks[i].cursor = up_to_seq;
        self.refresh_oldest(i);
        if self.cfg.fsync != FsyncPolicy::Batch {
            self.persist_cursors()?;
            self.reclaim()?;
        }
        Ok(())
    }

    /// Records after the sink's cursor (0 for an unknown sink).
    pub fn pending(&self, sink: &str) -> u64 {
        let Ok(s) = self.sink(sink) else { return 0 };
        let start = self
            .segments
            .partition_point(|seg| seg.last_seq() <= s.cursor);
        self.segments
            .iter()
            .skip(start)
            .map(|seg| (seg.index.len() - seg.first_after(s.cursor)) as u64)
            .sum()
    }

    /// Age of the oldest record the sink has not acknowledged, against the same clock as the
    /// `now_ns` given to `append`; `None` when nothing is pending (or the sink is unknown).
    pub fn oldest_unacked_age(&self, sink: &str, now_ns: u64) -> Option<Duration> {
        let at = self.sink(sink).ok()?.oldest_at?;
        Some(Duration::from_nanos(now_ns.saturating_sub(at)))
    }

    /// Current size of the segment files, bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The sink's last acknowledged seq (0: none), or `None` for an unknown sink.
    pub fn cursor(&self, sink: &str) -> Option<u64> {
        self.sink(sink).ok().map(|s| s.cursor)
    }

    /// The last seq handed out (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn counters(&self) -> SpoolCounters {
        let mut c = self.counters;
        c.bytes = self.bytes;
        c.segments = self.segments.len() as u64;
        c.corrupt_on_read = self.corrupt_on_read.load(Ordering::Relaxed);
        c
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.cfg
    }

    fn sink_index(&self, sink: &str) -> Result<usize, SpoolError> {
        self.sinks
            .iter()
            .position(|s| s.name == sink)
            .ok_or_else(|| SpoolError::UnknownSink(sink.to_string()))
    }

    fn sink(&self, sink: &str) -> Result<&SinkState, SpoolError> {
        self.sink_index(sink).map(|i| &self.sinks[i])
    }

    /// When full: make pending state durable, reclaim, and if the active segment alone is
    /// fully acknowledged, roll so it can go too.
    fn make_room(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        let min = self.sinks.iter().map(|s| s.persisted).min().unwrap_or(0);
        let active = self.segments.back().expect("active segment");
        if active.len > 0 && active.last_seq() <= min {
            self.roll()?;
            self.reclaim()?;
        }
        Ok(())
    }

    /// Starts a new active segment at `next_seq`.
    fn roll(&mut self) -> Result<(), SpoolError> {
        if self.unsynced {
            let path = &self.segments.back().expect("active segment").path;
            self.active
                .sync_data()
                .map_err(io_err("fsync segment", path))?;
            self.unsynced = false;
        }
        // An active segment without records (only after a failed write that could not be
        // undone) would share the new one's name: replace it.
        let replaced = if self.segments.back().is_some_and(|s| s.index.is_empty()) {
            let seg = self.segments.pop_back().expect("checked");
            match fs::remove_file(&seg.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    let path = seg.path.clone();
                    self.segments.push_back(seg);
                    return Err(io_err("delete segment", &path)(e));
                }
                _ => Some(seg),
            }
        } else {
            None
        };
        let seg = new_segment(&self.dir, self.next_seq);
        let file = match create_segment_file(&seg.path) {
            Ok(f) => f,
            Err(e) => {
                // Keep the invariant that an active segment exists; the next append retries.
                self.segments.extend(replaced);
                return Err(e);
            }
        };
        if let Some(old) = replaced {
            self.bytes -= old.len;
        }
        match self.cfg.fsync {
            FsyncPolicy::Always => sync_dir(&self.dir)?,
            FsyncPolicy::Batch => self.dir_dirty = true,
            FsyncPolicy::Never => {}
        }
        self.active = file;
        self.active_broken = false;
        self.segments.push_back(seg);
        Ok(())
    }

    /// Writes every cursor that moved since it was last written.
    fn persist_cursors(&mut self) -> Result<(), SpoolError> {
        let sync = self.cfg.fsync != FsyncPolicy::Never;
        let mut wrote = false;
        for s in &mut self.sinks {
            if s.cursor != s.persisted {
                write_cursor(&s.path, s.cursor, sync)?;
                s.persisted = s.cursor;
                wrote = true;
            }
        }
        if wrote && sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes the leading segments that every sink's persisted cursor has passed. Deletion
    /// needs no fsync: a segment that comes back after a power loss is deleted again.
    fn reclaim(&mut self) -> Result<(), SpoolError> {
        let min = self.sinks.iter().map(|s| s.persisted).min().unwrap_or(0);
        while self.segments.len() > 1 && self.segments[0].last_seq() <= min {
            let seg = self.segments.pop_front().expect("checked length");
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let path = seg.path.clone();
                    self.segments.push_front(seg);
                    return Err(io_err("delete segment", &path)(e));
                }
            }
            self.bytes -= seg.len;
        }
        Ok(())
    }

    /// Re-reads appended_at of the first record after sink `i`'s cursor.
    fn refresh_oldest(&mut self, i: usize) {
        let cursor = self.sinks[i].cursor;
        let start = self.segments.partition_point(|s| s.last_seq() <= cursor);
        let last_idx = self.segments.len() - 1;
        let found = self
            .segments
            .iter()
            .enumerate()
            .skip(start)
            .find_map(|(si, seg)| seg.index.get(seg.first_after(cursor)).map(|&e| (si, e)));
        let Some((si, e)) = found else {
            self.sinks[i].oldest_at = None;
            return;
        };
        let seg = &self.segments[si];
        let mut header = [0u8; HEADER];
        let read = if si == last_idx {
            self.active.read_exact_at(&mut header, u64::from(e.offset))
        } else {
            File::open(&seg.path).and_then(|f| f.read_exact_at(&mut header, u64::from(e.offset)))
        };
        match read {
            Ok(()) if read_u64(&header, 8) == Some(seg.seq(e)) => {
                self.sinks[i].oldest_at = read_u64(&header, 16);
            }
            // Keep the previous (older, so conservative) value; peek reports the damage.
            Ok(()) => log::warn!(
                "spool {}: record {} is damaged",
                seg.path.display(),
                seg.seq(e)
            ),
            Err(e) => log::warn!("spool {}: {e}", seg.path.display()),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let dirty =
            self.unsynced || self.dir_dirty || self.sinks.iter().any(|s| s.cursor != s.persisted);
        if dirty {
            if let Err(e) = self.flush() {
                log::warn!("{e}");
            }
        }
    }
}

fn valid_sink_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEG_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn new_segment(dir: &Path, base: u64) -> Segment {
    Segment {
        base,
        path: dir.join(format!("{base:020}{SEG_SUFFIX}")),
        len: 0,
        index: Vec::new(),
    }
}

fn create_segment_file(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(path)
        .map_err(io_err("create segment", path))
}

fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(SpoolError::Locked(dir.to_path_buf()));
        }
        return Err(io_err("lock", &path)(e));
    }
    Ok(f)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// The sequence number of a segment file's first record when that record is whole and its
/// CRC matches; `None` for an empty file or a damaged first record (the name is used then).
fn first_record_seq(path: &Path) -> Result<Option<u64>, SpoolError> {
    let f = File::open(path).map_err(io_err("open segment", path))?;
    let mut header = [0u8; HEADER];
    let mut got = 0;
    let mut reader = f.take(HEADER_LEN);
    while got < HEADER {
        match reader.read(&mut header[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read segment", path)(e)),
        }
    }
    let len = u64::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    if len > MAX_PAYLOAD {
        return Ok(None);
    }
    let mut record = header.to_vec();
    reader
        .into_inner()
        .take(len)
        .read_to_end(&mut record)
        .map_err(io_err("read segment", path))?;
    Ok(check_record(&record, 0, 0, u64::MAX).map(|r| r.seq))
}

/// Reads at most [`MAX_SEGMENT_FILE`] bytes; returns them and the file's full length.
fn read_segment(path: &Path) -> Result<(Vec<u8>, u64), SpoolError> {
    let f = File::open(path).map_err(io_err("open segment", path))?;
    let len = f.metadata().map_err(io_err("stat segment", path))?.len();
    let mut data = Vec::with_capacity(len.min(MAX_SEGMENT_FILE) as usize);
    f.take(MAX_SEGMENT_FILE)
        .read_to_end(&mut data)
        .map_err(io_err("read segment", path))?;
    let len = len.max(data.len() as u64);
    Ok((data, len))
}

fn encode_cursor(seq: u64) -> [u8; CURSOR_LEN] {
    let mut b = [0u8; CURSOR_LEN];
    b[..8].copy_from_slice(CURSOR_MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `None`: no file; `Some(None)`: damaged; `Some(Some(seq))`: valid.
fn read_cursor(path: &Path) -> Result<Option<Option<u64>>, SpoolError> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(f) => f
            .take(CURSOR_LEN as u64 + 1)
            .read_to_end(&mut data)
            .map_err(io_err("read cursor", path))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open cursor", path)(e)),
    };
    let valid = data.len() == CURSOR_LEN
        && &data[..8] == CURSOR_MAGIC
        && read_u32(&data, 16) == Some(crc32fast::hash(&data[..16]));
    Ok(Some(if valid { read_u64(&data, 8) } else { None }))
}

/// Replaces the cursor file atomically: temp file, (fsync,) rename. The caller fsyncs the
/// directory.
fn write_cursor(path: &Path, seq: u64, sync: bool) -> Result<(), SpoolError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io_err("create cursor", &tmp))?;
    f.write_all(&encode_cursor(seq))
        .map_err(io_err("write cursor", &tmp))?;
    if sync {
        f.sync_all().map_err(io_err("fsync cursor", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("rename cursor", path))
}

fn encode_record(buf: &mut Vec<u8>, seq: u64, appended_at: u64, payload: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&appended_at.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

struct Checked {
    appended_at: u64,
    seq: u64,
    /// Header plus payload.
    size: usize,
}

/// The record at `pos` if it is whole, its seq is in `lo+1..=hi` and its CRC matches.
fn check_record(data: &[u8], pos: usize, lo: u64, hi: u64) -> Option<Checked> {
    let rest = data.get(pos..)?;
    let len = u64::from(read_u32(rest, 0)?);
    if len > MAX_PAYLOAD || rest.len() < HEADER + len as usize {
        return None;
    }
    let size = HEADER + len as usize;
    let seq = read_u64(rest, 8)?;
    if seq <= lo || seq > hi {
        return None;
    }
    if crc32fast::hash(&rest[8..size]) != read_u32(rest, 4)? {
        return None;
    }
    Some(Checked {
        appended_at: read_u64(rest, 16)?,
        seq,
        size,
    })
}

#[derive(Debug, Default)]
struct Scan {
    entries: Vec<Entry>,
    /// End of the last valid record.
    valid_len: usize,
    torn: u64,
    corrupt: u64,
    missing: u64,
}

/// Recovers the valid records of one segment. `upper` is the next segment's base (its
/// records must stay below it); `None` for the last segment, whose damaged tail is "torn".
fn scan_segment(data: &[u8], base: u64, upper: Option<u64>) -> Scan {
    let mut scan = Scan::default();
    // The highest seq acceptable after `prev` once `gap` bytes were skipped: every record
    // takes at least HEADER bytes, so k skipped records mean seq <= prev + 1 + gap / HEADER.
    let hi = |prev: u64, gap: usize| -> u64 {
        let mut hi = prev
            .saturating_add(1)
            .saturating_add((gap / HEADER) as u64)
            .saturating_add(RESYNC_SLACK)
            .min(base.saturating_add(u64::from(u32::MAX)));
        if let Some(u) = upper {
            hi = hi.min(u.saturating_sub(1));
        }
        hi
    };
    let mut prev = base.saturating_sub(1);
    let mut pos = 0;
    let mut tail_damage = false;
    while pos < data.len() {
        let (at, rec) = match check_record(data, pos, prev, hi(prev, 0)) {
            Some(r) => {
                scan.missing += r.seq - prev - 1;
                (pos, r)
            }
            None => {
                let resync = (pos + 1..data.len().saturating_sub(HEADER - 1))
                    .find_map(|c| check_record(data, c, prev, hi(prev, c - pos)).map(|r| (c, r)));
                match resync {
                    Some((c, r)) => {
                        scan.corrupt += (r.seq - prev - 1).max(1);
                        (c, r)
                    }
                    None => {
                        tail_damage = true;
                        break;
                    }
                }
            }
        };
        scan.entries.push(Entry {
            seq_delta: (rec.seq - base) as u32,
            offset: at as u32,
        });
        prev = rec.seq;
        pos = at + rec.size;
        scan.valid_len = pos;
    }
    let lost_before_next = upper.map(|u| u.saturating_sub(prev).saturating_sub(1));
    match (tail_damage, lost_before_next) {
        (true, None) => scan.torn += 1,
        (true, Some(lost)) => scan.corrupt += lost.max(1),
        (false, Some(lost)) => scan.missing += lost,
        (false, None) => {}
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastrand::Rng;
    use std::{
        collections::BTreeMap,
        env,
        panic::{self, AssertUnwindSafe},
        process::{Command, Stdio},
        thread,
        time::Instant,
    };

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            TempDir::new_in(env::temp_dir(), tag)
        }

        /// On tmpfs when there is one: for tests of recovery logic that churn through
        /// thousands of small files, where a disk's metadata costs only add time.
        fn new_in_memory(tag: &str) -> TempDir {
            let shm = Path::new("/dev/shm");
            TempDir::new_in(
                if shm.is_dir() {
                    shm.to_path_buf()
                } else {
                    env::temp_dir()
                },
                tag,
            )
        }

        fn new_in(parent: PathBuf, tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!("sensor-spool-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A payload determined by its seq, 0..max_len bytes (plus 8 for the seq itself).
    fn payload(seq: u64, max_len: u64) -> Vec<u8> {
        let mut r = Rng::with_seed(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let len = r.u64(..max_len);
        let mut p = seq.to_le_bytes().to_vec();
        p.extend((0..len).map(|_| r.u8(..)));
        p
    }

    fn cfg(
        max_bytes: u64,
        segment_bytes: u64,
        when_full: WhenFull,
        fsync: FsyncPolicy,
    ) -> SpoolConfig {
        SpoolConfig {
            max_bytes,
            segment_bytes,
            when_full,
            fsync,
        }
    }

    fn append_ok(sp: &mut Spool, p: &[u8], now: u64) -> u64 {
        match sp.append(p, now).unwrap() {
            AppendOutcome::Appended(seq) => seq,
            other => panic!("append: {other:?}"),
        }
    }

    fn seg_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(SEG_SUFFIX))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn spool_config_from_toml() {
        let c: SpoolConfig = toml::from_str(
            "max_bytes = 1048576\nsegment_bytes = 65536\nwhen_full = \"drop_newest\"\nfsync = \"always\"\n",
        )
        .unwrap();
        assert_eq!(
            c,
            cfg(1 << 20, 1 << 16, WhenFull::DropNewest, FsyncPolicy::Always)
        );
        let d: SpoolConfig = toml::from_str("").unwrap();
        assert_eq!(d, SpoolConfig::default());
        assert_eq!(d.max_bytes, 256 << 20);
        assert_eq!(d.segment_bytes, 8 << 20);
        assert_eq!(
            (d.when_full, d.fsync),
            (WhenFull::Block, FsyncPolicy::Batch)
        );
        let n: SpoolConfig = toml::from_str("fsync = \"never\"\nwhen_full = \"block\"").unwrap();
        assert_eq!(
            (n.when_full, n.fsync),
            (WhenFull::Block, FsyncPolicy::Never)
        );
        assert!(toml::from_str::<SpoolConfig>("max_byte = 1").is_err());
        assert!(toml::from_str::<SpoolConfig>("when_full = \"drop_oldest\"").is_err());
        assert!(toml::from_str::<SpoolConfig>("fsync = \"Batch\"").is_err());
    }

    #[test]
    fn spool_rejects_bad_setup_and_locks_its_directory() {
        let t = TempDir::new("setup");
        let c = SpoolConfig::default();
        for bad in [&[][..], &["a", "a"], &[""], &[".x"], &["a/b"], &["a b"]] {
            assert!(Spool::open(&t.0, c.clone(), bad).is_err(), "{bad:?}");
        }
        let tiny = cfg(1 << 20, 10, WhenFull::Block, FsyncPolicy::Batch);
        assert!(matches!(
            Spool::open(&t.0, tiny, &["a"]),
            Err(SpoolError::Config(_))
        ));
        let sp = Spool::open(&t.0, c.clone(), &["a"]).unwrap();
        assert!(matches!(
            Spool::open(&t.0, c.clone(), &["a"]),
            Err(SpoolError::Locked(_))
        ));
        drop(sp);
        let mut sp = Spool::open(&t.0, c, &["a"]).unwrap();
        assert!(matches!(sp.ack("b", 0), Err(SpoolError::UnknownSink(_))));
        assert!(matches!(
            sp.ack("a", 1),
            Err(SpoolError::AckBeyondEnd { .. })
        ));
        assert!(matches!(sp.peek("b", 1), Err(SpoolError::UnknownSink(_))));
        assert_eq!((sp.pending("b"), sp.cursor("b")), (0, None));
    }

    #[test]
    fn spool_two_sinks_across_segment_rolls_and_reopen() {
        let t = TempDir::new("roll");
        let c = cfg(1 << 20, 256, WhenFull::Block, FsyncPolicy::Batch);
        let mut sp = Spool::open(&t.0, c.clone(), &["fast", "slow"]).unwrap();
        assert_eq!(sp.last_seq(), 0);
        for seq in 1..=60 {
            assert_eq!(append_ok(&mut sp, &payload(seq, 60), 1000 + seq), seq);
        }
        sp.flush().unwrap();
        let segs = sp.counters().segments;
        assert!(segs >= 10, "{segs} segments");
        assert_eq!(seg_files(&t.0).len() as u64, segs);
        assert_eq!(sp.pending("fast"), 60);
        assert_eq!(
            sp.oldest_unacked_age("slow", 1500),
            Some(Duration::from_nanos(499))
        );

        // fast takes 7 at a time, slow 3 at a time every other round.
        let (mut fast, mut slow) = (0u64, 0u64);
        let mut round = 0;
        while fast < 60 {
            let recs = sp.peek("fast", 7).unwrap();
            let want: Vec<u64> = (fast + 1..=(fast + 7).min(60)).collect();
            assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), want);
            for r in &recs {
                assert_eq!(r.payload, payload(r.seq, 60));
                assert_eq!(r.appended_at_ns, 1000 + r.seq);
            }
            fast = recs.last().unwrap().seq;
            sp.ack("fast", fast).unwrap();
            if round % 2 == 0 {
                let recs = sp.peek("slow", 3).unwrap();
                assert_eq!(recs.first().unwrap().seq, slow + 1);
                slow = recs.last().unwrap().seq;
                sp.ack("slow", slow).unwrap();
            }
            round += 1;
            sp.flush().unwrap();
            // A segment goes only when both sinks passed it: the oldest left still holds
            // the first record the slow sink has not taken.
            let first_seg = seg_files(&t.0)[0].clone();
            let base: u64 = first_seg.trim_end_matches(SEG_SUFFIX).parse().unwrap();
            assert!(
                base <= slow + 1,
                "segment {first_seg} deleted before slow reached {}",
                slow + 1
            );
            assert_eq!(sp.counters().segments as usize, seg_files(&t.0).len());
            assert_eq!(sp.pending("fast"), 60 - fast);
            assert_eq!(sp.pending("slow"), 60 - slow);
        }
        assert_eq!(sp.oldest_unacked_age("fast", 5000), None);
        assert_eq!(
            sp.oldest_unacked_age("slow", 5000),
            Some(Duration::from_nanos(5000 - 1000 - slow - 1))
        );
        let segs_before = sp.counters().segments;
        let bytes_before = sp.bytes();
        drop(sp);

        let mut sp = Spool::open(&t.0, c.clone(), &["fast", "slow"]).unwrap();
        assert_eq!(
            (sp.cursor("fast"), sp.cursor("slow")),
            (Some(60), Some(slow))
        );
        assert_eq!(
            (sp.counters().segments, sp.bytes()),
            (segs_before, bytes_before)
        );
        assert_eq!(sp.last_seq(), 60);
        let rest = sp.peek("slow", usize::MAX).unwrap();
        assert_eq!(
            rest.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (slow + 1..=60).collect::<Vec<_>>()
        );
        assert_eq!(append_ok(&mut sp, b"after reopen", 9999), 61);
        sp.ack("slow", 61).unwrap();
        sp.ack("fast", 61).unwrap();
        sp.flush().unwrap();
        assert_eq!(sp.counters().segments, 1);
        assert_eq!(seg_files(&t.0).len(), 1);
        let c0 = sp.counters();
        assert_eq!(
            (
                c0.torn_records_skipped,
                c0.corrupt_records_skipped,
                c0.missing_records
            ),
            (0, 0, 0)
        );
        drop(sp);

        // Everything acknowledged: the one segment left keeps the sequence going.
        let mut sp = Spool::open(&t.0, c, &["fast", "slow", "new"]).unwrap();
        // A new sink starts at the oldest record still stored.
        let oldest = sp
            .peek("fast", 0)
            .map(|_| ())
            .and(sp.peek("new", 1))
            .unwrap()[0]
            .seq;
        assert_eq!(sp.cursor("new"), Some(oldest - 1));
        assert_eq!(sp.pending("new"), 61 - oldest + 1);
        assert_eq!((sp.pending("fast"), sp.pending("slow")), (0, 0));
        assert_eq!(append_ok(&mut sp, b"x", 1), 62);
        assert_eq!(
            sp.counters().cursors_clamped + sp.counters().cursors_reset,
            0
        );
    }

    #[test]
    fn spool_cap_drop_newest_keeps_what_is_stored() {
        let t = TempDir::new("drop");
        let c = cfg(1000, 300, WhenFull::DropNewest, FsyncPolicy::Never);
        let mut sp = Spool::open(&t.0, c.clone(), &["a", "b"]).unwrap();
        let p = [7u8; 76]; // 100-byte records, 3 per segment
        let mut stored = Vec::new();
        let mut dropped = 0;
        for i in 0..20 {
            match sp.append(&p, i).unwrap() {
                AppendOutcome::Appended(seq) => stored.push(seq),
                AppendOutcome::Dropped(DropReason::Full) => dropped += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(stored, (1..=10).collect::<Vec<_>>());
        assert_eq!(sp.counters().dropped_full, dropped);
        assert_eq!(dropped, 10);
        assert_eq!(sp.bytes(), 1000);
        assert_eq!(
            sp.append(&[0; 2000], 0).unwrap(),
            AppendOutcome::Dropped(DropReason::TooLarge)
        );
        assert_eq!(sp.counters().dropped_too_large, 1);
        drop(sp);
        let mut sp = Spool::open(&t.0, c, &["a", "b"]).unwrap();
        let recs = sp.peek("b", usize::MAX).unwrap();
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), stored);
        // One sink alone frees nothing; both past the first segment free it.
        sp.ack("a", 10).unwrap();
        assert_eq!(
            sp.append(&p, 0).unwrap(),
            AppendOutcome::Dropped(DropReason::Full)
        );
        sp.ack("b", 3).unwrap();
        assert_eq!(sp.append(&p, 0).unwrap(), AppendOutcome::Appended(11));
    }

    #[test]
    fn spool_cap_block_reports_until_an_ack_frees_space() {
        for fsync in [FsyncPolicy::Batch, FsyncPolicy::Always, FsyncPolicy::Never] {
            let t = TempDir::new("block");
            let c = cfg(1000, 300, WhenFull::Block, fsync);
            let mut sp = Spool::open(&t.0, c, &["a", "b"]).unwrap();
            let p = [1u8; 76];
            for seq in 1..=10 {
                assert_eq!(append_ok(&mut sp, &p, seq), seq);
            }
            for _ in 0..3 {
                assert_eq!(sp.append(&p, 11).unwrap(), AppendOutcome::WouldBlock);
            }
            assert_eq!(sp.counters().would_block, 3);
            assert_eq!(sp.counters().dropped_full, 0);
            assert_eq!(sp.last_seq(), 10);
            sp.ack("a", 10).unwrap();
            assert_eq!(sp.append(&p, 11).unwrap(), AppendOutcome::WouldBlock);
            sp.ack("b", 2).unwrap(); // not a whole segment yet
            assert_eq!(sp.append(&p, 11).unwrap(), AppendOutcome::WouldBlock);
            sp.ack("b", 3).unwrap(); // no flush needed, even under batch
            assert_eq!(
                sp.append(&p, 11).unwrap(),
                AppendOutcome::Appended(11),
                "{fsync:?}"
            );
            let recs = sp.peek("b", usize::MAX).unwrap();
            assert_eq!(
                recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
                (4..=11).collect::<Vec<_>>()
            );
        }
        // A cap below one segment: a fully acknowledged active segment is rolled away.
        let t = TempDir::new("block-small");
        let c = cfg(300, 1 << 20, WhenFull::Block, FsyncPolicy::Batch);
        let mut sp = Spool::open(&t.0, c, &["a"]).unwrap();
        for seq in 1..=3 {
            assert_eq!(append_ok(&mut sp, &[2u8; 76], seq), seq);
        }
        assert_eq!(sp.append(&[2u8; 76], 4).unwrap(), AppendOutcome::WouldBlock);
        sp.ack("a", 3).unwrap();
        assert_eq!(
            sp.append(&[2u8; 76], 4).unwrap(),
            AppendOutcome::Appended(4)
        );
        assert_eq!((sp.bytes(), sp.counters().segments), (100, 1));
    }

    #[test]
    fn spool_reads_misnamed_segments_by_their_records_sequence_numbers() {
        let t = TempDir::new("misnamed");
        // Small segments: records 1..=30 spread over several files.
        let c = cfg(1 << 20, 200, WhenFull::Block, FsyncPolicy::Never);
        let mut sp = Spool::open(&t.0, c.clone(), &["a"]).unwrap();
        for seq in 1..=30 {
            assert_eq!(append_ok(&mut sp, &payload(seq, 40), seq), seq);
        }
        drop(sp);
        let before = seg_files(&t.0);
        assert!(before.len() >= 3, "{before:?}");
        // The second segment renamed to a base far from its records (past the active one),
        // the first renamed a little off: both would be cut as damage if names were trusted.
        let second = before[1].clone();
        fs::rename(t.0.join(&second), t.0.join(format!("{:020}.seg", 5000))).unwrap();
        fs::rename(t.0.join(&before[0]), t.0.join(format!("{:020}.seg", 2))).unwrap();
        let sp = Spool::open(&t.0, c, &["a"]).unwrap();
        let counters = sp.counters();
        assert_eq!(counters.renamed_segments, 2);
        assert_eq!(
            (
                counters.corrupt_records_skipped,
                counters.torn_records_skipped,
                counters.missing_records
            ),
            (0, 0, 0)
        );
        let recs = sp.peek("a", 100).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=30).collect::<Vec<_>>()
        );
        for r in &recs {
            assert_eq!(r.payload, payload(r.seq, 40));
        }
        // Renamed back: the directory again names every segment by its first record.
        assert_eq!(seg_files(&t.0), before);
    }

    #[test]
    fn spool_torn_tail_and_corrupt_middle_record() {
        let t = TempDir::new("torn");
        let c = cfg(1 << 20, 1 << 20, WhenFull::Block, FsyncPolicy::Never);
        let mut sp = Spool::open(&t.0, c.clone(), &["a"]).unwrap();
        for seq in 1..=10 {
            append_ok(&mut sp, &payload(seq, 50), seq);
        }
        drop(sp);
        let seg = t.0.join(&seg_files(&t.0)[0]);
        let data = fs::read(&seg).unwrap();
        let scan = scan_segment(&data, 1, None);
        let offs: Vec<usize> = scan.entries.iter().map(|e| e.offset as usize).collect();
        // Damage record 4's payload, and tear record 10 in half.
        let mut bad = data.clone();
        bad[offs[3] + HEADER + 2] ^= 0x40;
        bad.truncate(offs[9] + (data.len() - offs[9]) / 2);
        fs::write(&seg, &bad).unwrap();

        let mut sp = Spool::open(&t.0, c.clone(), &["a"]).unwrap();
        let cnt = sp.counters();
        assert_eq!(
            (cnt.torn_records_skipped, cnt.corrupt_records_skipped),
            (1, 1)
        );
        assert_eq!(fs::metadata(&seg).unwrap().len() as usize, offs[9]);
        let seqs: Vec<u64> = sp.peek("a", 100).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 5, 6, 7, 8, 9]);
        assert_eq!(sp.last_seq(), 9);
        assert_eq!(append_ok(&mut sp, b"ten again", 10), 10);
        drop(sp);
        // The torn tail is gone for good; the damaged record is skipped again.
        let sp = Spool::open(&t.0, c, &["a"]).unwrap();
        let cnt = sp.counters();
        assert_eq!(
            (cnt.torn_records_skipped, cnt.corrupt_records_skipped),
            (0, 1)
        );
        assert_eq!(sp.peek("a", 100).unwrap().len(), 9);
    }

    #[test]
    fn spool_cursors_clamped_past_end_and_into_missing_segments() {
        let t = TempDir::new("clamp");
        let c = cfg(1 << 20, 200, WhenFull::Block, FsyncPolicy::Always);
        let mut sp = Spool::open(&t.0, c.clone(), &["a", "b"]).unwrap();
        for seq in 1..=20 {
            append_ok(&mut sp, &[seq as u8; 40], seq);
        }
        sp.ack("a", 20).unwrap();
        drop(sp);
        let files = seg_files(&t.0);
        // Lose the first segment (b's cursor now points into it) and the last one (a's
        // cursor is past the end).
        fs::remove_file(t.0.join(&files[0])).unwrap();
        fs::remove_file(t.0.join(files.last().unwrap())).unwrap();
        let second: u64 = files[1].trim_end_matches(SEG_SUFFIX).parse().unwrap();
        let last_base: u64 = files
            .last()
            .unwrap()
            .trim_end_matches(SEG_SUFFIX)
            .parse()
            .unwrap();
        let mut sp = Spool::open(&t.0, c.clone(), &["a", "b"]).unwrap();
        assert_eq!(sp.counters().cursors_clamped, 2);
        assert_eq!(sp.last_seq(), last_base - 1);
        assert_eq!(sp.cursor("a"), Some(last_base - 1));
        assert_eq!(sp.cursor("b"), Some(second - 1));
        assert_eq!(sp.peek("b", 1).unwrap()[0].seq, second);
        // New records are delivered to a, never mistaken for acknowledged ones.
        let seq = append_ok(&mut sp, b"new", 0);
        assert_eq!(
            sp.peek("a", 10)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![seq]
        );
        drop(sp);
        // A damaged cursor file restarts that sink at the oldest record.
        fs::write(t.0.join("a.cursor"), b"garbage").unwrap();
        let sp = Spool::open(&t.0, c, &["a", "b"]).unwrap();
        assert_eq!(sp.counters().cursors_reset, 1);
        assert_eq!(sp.cursor("a"), Some(second - 1));
    }

    const CHILD_ENV: &str = "SENSOR_SPOOL_CRASH_CHILD";
    const CHILD_FSYNC_ENV: &str = "SENSOR_SPOOL_CRASH_FSYNC";
    const POLICIES: [(FsyncPolicy, &str); 3] = [
        (FsyncPolicy::Always, "always"),
        (FsyncPolicy::Batch, "batch"),
        (FsyncPolicy::Never, "never"),
    ];

    fn crash_cfg(fsync: FsyncPolicy) -> SpoolConfig {
        cfg(256 << 20, 16 << 10, WhenFull::Block, fsync)
    }

    fn crash_payload(seq: u64) -> Vec<u8> {
        // Mostly small records; every 13th is 1 MiB (cheap to build, so that much of the
        // child's time goes into writing it), which a kill can tear in the middle.
        if seq.is_multiple_of(13) {
            seq.wrapping_mul(0x2545_F491_4F6C_DD1D)
                .to_le_bytes()
                .repeat(1 << 17)
        } else {
            payload(seq, 300)
        }
    }

    /// Not a test on its own: the crash test runs the test binary again with CHILD_ENV set,
    /// selecting this function, which appends (and logs each append that returned) until it
    /// is killed.
    #[test]
    fn spool_crash_child() {
        let Some(base) = env::var_os(CHILD_ENV) else {
            return;
        };
        let base = PathBuf::from(base);
        let fsync = env::var(CHILD_FSYNC_ENV)
            .ok()
            .and_then(|name| POLICIES.iter().find(|p| p.1 == name))
            .map_or(FsyncPolicy::Always, |p| p.0);
        let mut sp = Spool::open(&base.join("spool"), crash_cfg(fsync), &["a", "b"]).unwrap();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(base.join("log"))
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let seq = sp.last_seq() + 1;
            match sp.append(&crash_payload(seq), seq).unwrap() {
                AppendOutcome::Appended(s) => assert_eq!(s, seq),
                AppendOutcome::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
                other => panic!("{other:?}"),
            }
            // One write() per line, after append returned.
            log.write_all(format!("A {seq}\n").as_bytes()).unwrap();
            if fsync == FsyncPolicy::Batch && seq.is_multiple_of(8) {
                sp.flush().unwrap();
            }
            if seq.is_multiple_of(16) {
                sp.ack("a", seq - 8).unwrap();
                if fsync == FsyncPolicy::Batch {
                    sp.flush().unwrap(); // under batch, acks are written by flush
                }
                let line = format!("K {}\n", seq - 8);
                log.write_all(line.as_bytes()).unwrap();
            }
        }
    }

    fn check_contiguous(sp: &Spool, sink: &str) {
        let from = sp.cursor(sink).unwrap() + 1;
        let recs = sp.peek(sink, usize::MAX).unwrap();
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        let want: Vec<u64> = (from..=sp.last_seq()).collect();
        assert_eq!(seqs, want, "sink {sink}");
        for r in recs {
            assert_eq!(r.payload, crash_payload(r.seq));
            assert_eq!(r.appended_at_ns, r.seq);
        }
    }

    /// SIGKILL at random moments under each fsync policy: every append that returned is
    /// there after reopening, in order, without duplicates, and the torn tail (if the kill
    /// landed inside a write) is cut and counted.
    #[test]
    fn spool_crash_kill9_keeps_every_returned_append() {
        let t = TempDir::new("crash");
        let spool_dir = t.0.join("spool");
        let log_path = t.0.join("log");
        let exe = env::current_exe().unwrap();
        let mut rng = Rng::with_seed(0x5EED_0FC0_FFEE);
        let mut torn = 0;
        let mut new_per_policy = [0u64; 3];
        for round in 0..9 {
            let (fsync, fsync_name) = POLICIES[round % 3];
            let _ = fs::remove_file(&log_path);
            let mut child = Command::new(&exe)
                .args(["--exact", "sink::spool::tests::spool_crash_child"])
                .arg("--nocapture")
                .env(CHILD_ENV, &t.0)
                .env(CHILD_FSYNC_ENV, fsync_name)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            while fs::metadata(&log_path).map_or(0, |m| m.len()) == 0 {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("round {round}: the child exited early: {status}");
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "child never appended"
                );
                thread::sleep(Duration::from_millis(1));
            }
            // The test's subject, not synchronisation: a random moment of the child's appends
            // at which to SIGKILL it.
            thread::sleep(Duration::from_micros(rng.u64(..120_000)));
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: child exited"
            );
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();

            let log = fs::read_to_string(&log_path).unwrap();
            let (mut max_a, mut max_k) = (0, 0);
            for line in log.lines() {
                match line.split_once(' ') {
                    Some(("A", n)) => max_a = max_a.max(n.parse().unwrap()),
                    Some(("K", n)) => max_k = max_k.max(n.parse().unwrap()),
                    _ => {} // a line cut by the kill
                }
            }
            let first_a: u64 = log
                .lines()
                .find_map(|l| l.strip_prefix("A ")?.parse().ok())
                .unwrap_or(max_a);
            new_per_policy[round % 3] += max_a + 1 - first_a;

            let mut sp = Spool::open(&spool_dir, crash_cfg(fsync), &["a", "b"]).unwrap();
            let c = sp.counters();
            torn += c.torn_records_skipped;
            assert!(c.torn_records_skipped <= 1);
            let damage = (c.corrupt_records_skipped, c.missing_records);
            assert_eq!(damage, (0, 0), "round {round}");
            assert_eq!(c.cursors_clamped + c.cursors_reset, 0);
            let last = sp.last_seq();
            assert!(
                last >= max_a,
                "round {round}: append {max_a} returned, spool ends at {last}"
            );
            assert!(sp.cursor("a").unwrap() >= max_k, "round {round}: ack lost");
            check_contiguous(&sp, "a");
            check_contiguous(&sp, "b");
            // Let b make progress too, so segments get deleted across rounds.
            let upto = last.saturating_sub(rng.u64(..30));
            sp.ack("b", upto.max(sp.cursor("b").unwrap())).unwrap();
            drop(sp);
            // Recovery is idempotent: nothing left to repair.
            let sp = Spool::open(&spool_dir, crash_cfg(fsync), &["a", "b"]).unwrap();
            let c = sp.counters();
            assert_eq!((c.torn_records_skipped, c.corrupt_records_skipped), (0, 0));
            check_contiguous(&sp, "b");
        }
        eprintln!(
            "crash test: 9 kills; appends that returned before the kill, \
             always/batch/never: {new_per_policy:?}; torn tails cut: {torn}"
        );
        assert!(new_per_policy.iter().all(|&n| n > 0));
    }

    /// Every (seq, byte range) of the records of a spool directory's segments.
    fn layout(dir: &Path) -> BTreeMap<String, Vec<(u64, usize, usize)>> {
        let mut m = BTreeMap::new();
        let files = seg_files(dir);
        for (i, name) in files.iter().enumerate() {
            let base = parse_segment_name(name).unwrap();
            let upper = files.get(i + 1).and_then(|n| parse_segment_name(n));
            let data = fs::read(dir.join(name)).unwrap();
            let scan = scan_segment(&data, base, upper);
            assert_eq!(scan.valid_len, data.len());
            let mut recs = Vec::new();
            for (k, e) in scan.entries.iter().enumerate() {
                let end = scan
                    .entries
                    .get(k + 1)
                    .map_or(data.len(), |n| n.offset as usize);
                recs.push((base + u64::from(e.seq_delta), e.offset as usize, end));
            }
            m.insert(name.clone(), recs);
        }
        m
    }

    #[test]
    fn spool_survives_random_corruption() {
        let t = TempDir::new_in_memory("fuzz");
        let pristine_dir = t.0.join("pristine");
        let c = cfg(1 << 20, 256, WhenFull::Block, FsyncPolicy::Never);
        let sinks = ["a", "b"];
        let mut sp = Spool::open(&pristine_dir, c.clone(), &sinks).unwrap();
        for seq in 1..=50 {
            append_ok(&mut sp, &payload(seq, 40), seq);
        }
        sp.ack("a", 30).unwrap();
        sp.ack("b", 4).unwrap();
        let cursors = [30u64, 4];
        drop(sp);
        let layout = layout(&pristine_dir);
        assert!(layout.len() >= 6);
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for e in fs::read_dir(&pristine_dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name != LOCK_FILE {
                files.push((name.clone(), fs::read(pristine_dir.join(&name)).unwrap()));
            }
        }
        files.sort();

        let work = t.0.join("work");
        let mut rng = Rng::with_seed(0xC0DE_FEED_1234_5678);
        let mut stats = [0u64; 4]; // torn, corrupt, missing, cursor resets
        for case in 0..2500 {
            let _ = fs::remove_dir_all(&work);
            fs::create_dir_all(&work).unwrap();
            let mut cur = files.clone();
            let mut deleted = vec![false; cur.len()];
            let mut what = Vec::new();
            for _ in 0..1 + rng.u64(..2) {
                let fi = rng.usize(..cur.len());
                let (name, data) = &mut cur[fi];
                let before = data.len();
                let kind = rng.u64(..7);
                match kind {
                    0 => {
                        for _ in 0..1 + rng.u64(..4) {
                            if !data.is_empty() {
                                let i = rng.usize(..data.len());
                                data[i] ^= rng.u8(1..);
                            }
                        }
                    }
                    1 => data.truncate(rng.usize(..=data.len())),
                    2 | 3 => {
                        let i = rng.usize(..=data.len());
                        let n = (1 + rng.usize(..64)).min(data.len() - i);
                        for b in &mut data[i..i + n] {
                            *b = if kind == 2 { rng.u8(..) } else { 0 };
                        }
                    }
                    4 => data.extend((0..1 + rng.u64(..100)).map(|_| rng.u8(..))),
                    5 => *data = (0..rng.u64(..600)).map(|_| rng.u8(..)).collect(),
                    _ => {
                        data.clear();
                        deleted[fi] = true;
                    }
                }
                what.push(format!(
                    "{name}: kind {kind}, {before} -> {} bytes",
                    data.len()
                ));
            }
            // Which records the damage touched, and whether the spool can tell.
            let surviving: Vec<&str> = cur
                .iter()
                .zip(&deleted)
                .filter(|((n, _), &d)| !d && layout.contains_key(n.as_str()))
                .map(|((n, _), _)| n.as_str())
                .collect();
            let mut lost: Vec<u64> = Vec::new();
            let mut must_count = false;
            for (fi, (name, data)) in cur.iter().enumerate() {
                let Some(recs) = layout.get(name.as_str()) else {
                    continue;
                };
                let old = &files[fi].1;
                let mut hit = false;
                for &(seq, from, to) in recs {
                    if deleted[fi] || data.len() < to || data[from..to] != old[from..to] {
                        lost.push(seq);
                        hit = true;
                    }
                }
                if !hit {
                    continue;
                }
                let undetectable = if deleted[fi] {
                    // Nothing before it to see a gap from, or nothing after it at all.
                    surviving.iter().all(|s| *s > name.as_str())
                        || surviving.iter().all(|s| *s < name.as_str())
                } else {
                    // Cut exactly at a record boundary of the last segment: looks like
                    // records that were never written.
                    surviving.last() == Some(&name.as_str())
                        && old.starts_with(data)
                        && (data.is_empty() || recs.iter().any(|r| r.1 == data.len()))
                };
                must_count |= !undetectable;
            }
            for ((name, data), &d) in cur.iter().zip(&deleted) {
                if !d {
                    fs::write(work.join(name), data).unwrap();
                }
            }
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                let mut sp = Spool::open(&work, c.clone(), &sinks).unwrap();
                let cnt = sp.counters();
                if must_count {
                    assert!(
                        cnt.torn_records_skipped
                            + cnt.corrupt_records_skipped
                            + cnt.missing_records
                            > 0,
                        "damage not counted: {cnt:?}"
                    );
                }
                for (si, sink) in sinks.iter().enumerate() {
                    let recs = sp.peek(sink, usize::MAX).unwrap();
                    for w in recs.windows(2) {
                        assert!(w[0].seq < w[1].seq, "out of order");
                    }
                    for r in &recs {
                        assert_eq!(r.payload, payload(r.seq, 40), "a wrong record came back");
                        assert_eq!(r.appended_at_ns, r.seq);
                    }
                    let got: Vec<u64> = recs.iter().map(|r| r.seq).collect();
                    for seq in cursors[si] + 1..=50 {
                        if !lost.contains(&seq) {
                            assert!(got.contains(&seq), "sink {sink} lost intact record {seq}");
                        }
                    }
                    assert_eq!(sp.pending(sink), got.len() as u64);
                }
                // The spool keeps working after any damage.
                let seq = append_ok(&mut sp, b"after damage", 7);
                assert_eq!(sp.peek("a", usize::MAX).unwrap().last().unwrap().seq, seq);
                cnt
            }));
            match result {
                Ok(cnt) => {
                    stats[0] += cnt.torn_records_skipped;
                    stats[1] += cnt.corrupt_records_skipped;
                    stats[2] += cnt.missing_records;
                    stats[3] += cnt.cursors_reset;
                }
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    panic!("case {case} ({}): lost {lost:?}: {msg}", what.join("; "));
                }
            }
        }
        eprintln!(
            "corruption: torn {}, corrupt {}, missing {}, cursor resets {}",
            stats[0], stats[1], stats[2], stats[3]
        );
        assert!(stats.iter().all(|&n| n > 0), "{stats:?}");
    }

    #[test]
    fn spool_scan_never_panics_on_random_bytes() {
        let mut rng = Rng::with_seed(0x1234_5678_9ABC_DEF1);
        let mut buf = Vec::new();
        for case in 0..20_000u64 {
            let mut data = Vec::new();
            // Some valid records, some garbage, some records with wild headers.
            for _ in 0..rng.u64(..6) {
                match rng.u64(..3) {
                    0 => {
                        let seq = 1 + case % 7 + rng.u64(..3);
                        encode_record(&mut buf, seq, rng.u64(..), &payload(seq, 30));
                        data.extend_from_slice(&buf);
                    }
                    1 => data.extend((0..rng.u64(..50)).map(|_| rng.u8(..))),
                    _ => {
                        data.extend_from_slice(&rng.u32(..).to_le_bytes());
                        data.extend((0..rng.u64(..40)).map(|_| rng.u8(..)));
                    }
                }
            }
            let base = [0, 1, 5, u64::MAX - 1, u64::MAX][rng.usize(..5)];
            let upper = [None, Some(0), Some(3), Some(u64::MAX)][rng.usize(..4)];
            let s = scan_segment(&data, base, upper);
            assert!(s.valid_len <= data.len());
            let mut prev = None;
            for e in &s.entries {
                let seq = base + u64::from(e.seq_delta);
                assert!(prev.is_none_or(|p| p < seq));
                assert!(upper.is_none_or(|u| seq < u));
                prev = Some(seq);
                assert!((e.offset as usize) < s.valid_len);
            }
        }
    }
}
