//! `file` transport: LF-delimited messages appended to a file, rotated by size.
//!
//! Why: the simplest hand-off to a log shipper (Filebeat, Splunk UF, fluent-bit) that tails a
//! file, with a bound on the disk it may take: `path` plus `keep` rotated files `path.1`
//! (newest) ... `path.<keep>` (oldest), each at most `max_bytes` unless a single message is
//! larger (it then gets a file of its own).
//!
//! What must never happen: a message split over two lines or across two files; a batch reported
//! written before it was flushed; the file created readable by everyone (mode 0640, before
//! umask). A failed write drops the handle and the next send reopens the file (so a file moved
//! away by an outside tool is recreated).

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use super::{push_line, Counters, FileConfig, Transport, TransportError};

pub struct FileTransport {
    name: String,
    path: PathBuf,
    max_bytes: Option<u64>,
    keep: u32,
    out: Option<BufWriter<File>>,
    /// Bytes in the current file, flushed or buffered.
    size: u64,
    counters: Counters,
}

impl FileTransport {
    /// Opens (creates) the file now, so that a wrong path is reported at start-up.
    pub fn new(name: String, cfg: &FileConfig) -> Result<Self, TransportError> {
        let mut t = FileTransport {
            name,
            path: cfg.path.clone(),
            max_bytes: cfg.max_bytes,
            keep: cfg.keep,
            out: None,
            size: 0,
            counters: Counters::default(),
        };
        t.open().map_err(|e| {
            TransportError::Config(format!("{}: cannot open {}: {e}", t.name, t.path.display()))
        })?;
        Ok(t)
    }

    fn open(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.out = Some(BufWriter::with_capacity(64 * 1024, f));
        Ok(())
    }

    /// `path.i`.
    fn numbered(&self, i: u32) -> PathBuf {
        let mut s = OsString::from(self.path.as_os_str());
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }

    /// Shifts `path.i` to `path.i+1` (dropping `path.keep`), `path` to `path.1`, and opens a
    /// fresh `path`. The current file must already be flushed.
    fn rotate(&mut self) -> io::Result<()> {
        self.out = None;
        if self.keep == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&self.numbered(self.keep))?;
            for i in (1..self.keep).rev() {
                rename_if_exists(&self.numbered(i), &self.numbered(i + 1))?;
            }
            rename_if_exists(&self.path, &self.numbered(1))?;
        }
        self.counters.rotations += 1;
        self.open()
    }

    /// Writes the batch; returns how many messages are known flushed when an error stops it.
    fn write_batch(&mut self, batch: &[Vec<u8>]) -> Result<(), (usize, io::Error)> {
        if self.out.is_none() {
            self.open().map_err(|e| (0, e))?;
        }
        let mut line = Vec::new();
        let mut flushed = 0;
        for (i, msg) in batch.iter().enumerate() {
            line.clear();
            if push_line(&mut line, msg) {
                self.counters.escaped += 1;
            }
            let len = line.len() as u64;
            if let Some(max) = self.max_bytes {
                if self.size > 0 && self.size.saturating_add(len) > max {
                    if let Some(out) = self.out.as_mut() {
                        out.flush().map_err(|e| (flushed, e))?;
                    }
                    flushed = i;
                    self.rotate().map_err(|e| (flushed, e))?;
                }
            }
            let out = self
                .out
                .as_mut()
                .ok_or_else(|| (flushed, io::Error::other("file handle lost after rotation")))?;
            out.write_all(&line).map_err(|e| (flushed, e))?;
            self.size += len;
        }
        if let Some(out) = self.out.as_mut() {
            out.flush().map_err(|e| (flushed, e))?;
        }
        Ok(())
    }
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Transport for FileTransport {
    fn send(&mut self, batch: &[Vec<u8>]) -> Result<usize, TransportError> {
        match self.write_batch(batch) {
            Ok(()) => Ok(batch.len()),
            Err((done, e)) => {
                // Whatever is buffered is in doubt: drop it with the handle and reopen next time.
                self.out = None;
                if done > 0 {
                    Ok(done)
                } else {
                    Err(TransportError::Io(format!(
                        "{}: cannot write {}: {e}",
                        self.name,
                        self.path.display()
                    )))
                }
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::transport::{build, test_util::TempDir, SinkConfig};

    fn cfg(path: &Path, max_bytes: Option<u64>, keep: u32) -> FileConfig {
        FileConfig {
            name: None,
            path: path.to_path_buf(),
            format: None,
            max_bytes,
            keep,
        }
    }

    fn msg(c: u8, len: usize) -> Vec<u8> {
        vec![c; len]
    }

    fn size(p: &Path) -> Option<u64> {
        fs::metadata(p).ok().map(|m| m.len())
    }

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = TempDir::new("file-rotate");
        let path = dir.path().join("alarms.log");
        let mut t = FileTransport::new("f".into(), &cfg(&path, Some(100), 2)).unwrap();
        // 9 + LF = 10 bytes per message: 10 fit exactly in one 100-byte file.
        let batch: Vec<Vec<u8>> = (0..10).map(|_| msg(b'a', 9)).collect();
        assert_eq!(t.send(&batch).unwrap(), 10);
        assert_eq!(size(&path), Some(100));
        assert_eq!(t.counters().rotations, 0);
        // The next message would exceed 100: rotate first.
        assert_eq!(t.send(&[msg(b'b', 9)]).unwrap(), 1);
        assert_eq!(size(&path), Some(10));
        assert_eq!(size(&t.numbered(1)), Some(100));
        // Two more rotations within one batch: 'c' fills the rest, 'd' and 'e' rotate.
        let batch: Vec<Vec<u8>> = [msg(b'c', 89), msg(b'd', 99), msg(b'e', 49)].into();
        assert_eq!(t.send(&batch).unwrap(), 3);
        assert_eq!(t.counters().rotations, 3);
        assert_eq!(
            fs::read(&path).unwrap(),
            [msg(b'e', 49), vec![b'\n']].concat()
        );
        assert_eq!(
            fs::read(t.numbered(1)).unwrap(),
            [msg(b'd', 99), vec![b'\n']].concat()
        );
        let second = fs::read(t.numbered(2)).unwrap();
        assert_eq!(second.len(), 100);
        assert!(second.starts_with(b"bbbbbbbbb\nccc"));
        // keep = 2: the oldest (all 'a') is gone.
        assert!(!t.numbered(3).exists());
        // A message larger than max_bytes gets a file of its own.
        assert_eq!(t.send(&[msg(b'f', 300), msg(b'g', 9)]).unwrap(), 2);
        assert_eq!(size(&t.numbered(1)), Some(301));
        assert_eq!(size(&path), Some(10));
    }

    #[test]
    fn keep_zero_truncates_and_existing_file_is_appended() {
        let dir = TempDir::new("file-keep0");
        let path = dir.path().join("a.log");
        fs::write(&path, b"old line\n").unwrap();
        let mut t = FileTransport::new("f".into(), &cfg(&path, Some(20), 0)).unwrap();
        assert_eq!(t.send(&[b"x".to_vec()]).unwrap(), 1);
        assert_eq!(fs::read(&path).unwrap(), b"old line\nx\n");
        assert_eq!(t.send(&[msg(b'y', 15)]).unwrap(), 1);
        assert_eq!(
            fs::read(&path).unwrap(),
            [msg(b'y', 15), vec![b'\n']].concat()
        );
        assert!(!t.numbered(1).exists());
    }

    #[test]
    fn recreated_after_removal_and_built_from_config() {
        let dir = TempDir::new("file-reopen");
        let path = dir.path().join("b.log");
        let sink: SinkConfig = toml::from_str(&format!(
            "kind = \"file\"\npath = {:?}\nformat = \"json\"\n",
            path.display().to_string()
        ))
        .unwrap();
        let mut t = build(&sink).unwrap();
        assert_eq!(t.name(), format!("file:{}", path.display()));
        assert_eq!(t.send(&[b"1".to_vec(), b"2".to_vec()]).unwrap(), 2);
        assert_eq!(fs::read(&path).unwrap(), b"1\n2\n");
        let meta = fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o007, 0, "not world-accessible");

        let bad = cfg(&dir.path().join("missing-dir/c.log"), None, 1);
        let e = FileTransport::new("f".into(), &bad).err().unwrap();
        assert!(e.to_string().contains("cannot open"), "{e}");
    }
}
