//! `stdout` transport: each message on its own line on standard output, flushed per batch.
//!
//! Why: for containers and for piping the agent into another tool (`sensor-agent | jq`), where
//! the supervisor collects standard output.
//!
//! What must never happen: a message split over two lines (embedded LFs are escaped, see
//! `push_line`), or a batch reported written before it was flushed. There is no timeout: a
//! stalled reader of the pipe stalls the sink (only that sink's worker). A reader that closed
//! the pipe (`sensor-agent replay ... | head`) is a normal end, not an error: what follows is
//! discarded (said once in the log) and the command finishes with its summary.

use std::io::{self, Write};

use super::{push_line, Counters, Transport, TransportError};

pub struct StdoutTransport {
    name: String,
    out: Box<dyn Write + Send>,
    counters: Counters,
    /// The reader closed the pipe: nobody is left to read what follows.
    closed: bool,
}

impl StdoutTransport {
    pub fn new(name: String) -> Self {
        Self::with_writer(name, Box::new(io::stdout()))
    }

    /// Writes to `out` instead of standard output (tests, or a caller-provided pipe).
    pub fn with_writer(name: String, out: Box<dyn Write + Send>) -> Self {
        StdoutTransport {
            name,
            out,
            counters: Counters::default(),
            closed: false,
        }
    }
}

impl Transport for StdoutTransport {
    fn send(&mut self, batch: &[Vec<u8>]) -> Result<usize, TransportError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|m| m.len() + 1).sum());
        for m in batch {
            if push_line(&mut buf, m) {
                self.counters.escaped += 1;
            }
        }
        if self.closed {
            return Ok(batch.len());
        }
        match self.out.write_all(&buf).and_then(|()| self.out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                log::info!(
                    "{}: the reader closed standard output; further output is discarded",
                    self.name
                );
            }
            r => r.map_err(|e| TransportError::Io(format!("{}: write failed: {e}", self.name)))?,
        }
        Ok(batch.len())
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
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_one_line_per_message() {
        let buf = Shared::default();
        let mut t = StdoutTransport::with_writer("stdout".into(), Box::new(buf.clone()));
        let n = t
            .send(&[b"{\"a\":1}".to_vec(), b"two\nlines".to_vec()])
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(&*buf.0.lock().unwrap(), b"{\"a\":1}\ntwo\\nlines\n");
        assert_eq!(t.counters().escaped, 1);
        assert_eq!(t.send(&[]).unwrap(), 0);
    }

    #[test]
    fn real_stdout_smoke() {
        let mut t = StdoutTransport::new("stdout".into());
        assert_eq!(t.name(), "stdout");
        assert_eq!(
            t.send(&[b"transport stdout smoke test".to_vec()]).unwrap(),
            1
        );
    }
}
