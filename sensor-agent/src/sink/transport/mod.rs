//! Sink transports: blocking delivery of alarm messages, already rendered to bytes by the
//! formats module, to where a SIEM reads them — stdout, a size-rotated file, syslog over
//! UDP/TCP/TLS, Splunk HEC, a generic JSON webhook, or a Kafka topic — behind one [`Transport`] trait.
//!
//! Why this layer exists: the sink worker (queueing, spooling, retry with backoff) must not care
//! how a receiver is reached. A transport moves one batch and says exactly how many of its
//! messages the receiver took, so the worker can drop those and retry the rest later. Delivery
//! is therefore at-least-once: a message is never reported taken before it was (written and
//! flushed, sent, or acknowledged), but a retry after a failure may repeat some.
//!
//! What must never happen, in every transport:
//! - certificate verification is never disabled: TLS peers are verified against the configured
//!   CA file, or Mozilla's roots (`webpki-roots`) when none is given; there is no "insecure" knob.
//! - nothing is bound or listened on beyond what is configured: the only sockets are outgoing
//!   connections to the configured receiver (UDP uses an ephemeral local port, connected to it).
//! - a slow or dead network receiver never blocks a `send` longer than the configured `timeout`
//!   (connect, TLS handshake and writes share one deadline per call; HTTP requests are bounded
//!   by the same timeout, indexer-acknowledgement polling by `ack_timeout`). Name resolution is
//!   the exception: the system resolver has no timeout.
//! - one message never becomes two events: LF-delimited outputs escape embedded LFs.
//! - secrets (the HEC token, webhook URL paths and queries, header values) never appear in sink
//!   names, errors or `Debug` output.
//! - [`build`] never touches the network: it validates the configuration and loads certificate
//!   files, so a receiver that is down at start-up is a retryable send error, not a fatal one.

use serde_json::Value;
use std::{
    fmt,
    io::{self, Write},
    net::TcpStream,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub mod config;
pub mod file;
pub mod http;
pub mod kafka;
pub mod stdout;
pub mod syslog;
mod tls;

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests_http;
#[cfg(test)]
mod tests_syslog;

pub use config::{
    Facility, FileConfig, Framing, HecConfig, Scheme, Secret, Severity, SinkConfig, StdoutConfig,
    SyslogAddress, SyslogConfig, SyslogHeader, WebhookConfig, WebhookHeaders, FORMATS,
};
pub use kafka::{KafkaConfig, Stream};

/// Delivers rendered alarm messages to one receiver. Blocking; one instance per sink, driven by
/// one worker thread.
pub trait Transport: Send {
    /// Delivers a batch of messages (each one rendered alarm, no framing). Ok(n) = the first n
    /// were taken by the receiver (for TCP/TLS: written and flushed; for UDP: sent; for HEC with
    /// acknowledgement: acked). Err = connection-level failure; the caller retries later with
    /// backoff.
    fn send(&mut self, batch: &[Vec<u8>]) -> Result<usize, TransportError>;

    fn name(&self) -> &str;

    /// The message key of a document (an alarm or a flow record) for transports that key
    /// messages (Kafka: by default the client address, so one host's alarms stay in order on
    /// one partition); `None` for the others.
    fn key(&self, _doc: &Value) -> Option<Vec<u8>> {
        None
    }

    /// [`Transport::send`] with a key per message (`keys[i]` for `batch[i]`, from
    /// [`Transport::key`]); transports without keys ignore them.
    fn send_keyed(
        &mut self,
        batch: &[Vec<u8>],
        _keys: &[Option<Vec<u8>>],
    ) -> Result<usize, TransportError> {
        self.send(batch)
    }

    /// How many records the worker hands over in one `send` at most (256 unless a transport
    /// gains from more: each Kafka send waits for the broker's acknowledgement once).
    fn max_batch(&self) -> usize {
        256
    }

    /// Running totals for metrics (an addition to the minimal trait; zero where not applicable).
    fn counters(&self) -> Counters {
        Counters::default()
    }
}

/// Running totals kept by a transport since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// UDP datagrams cut to `max_datagram`.
    pub truncated: u64,
    /// Messages whose embedded LFs were escaped (LF-delimited outputs only).
    pub escaped: u64,
    /// Connections established (TCP/TLS); more than one means reconnects happened.
    pub connects: u64,
    /// Messages written again on a new connection because the one that carried them ended in
    /// a way that may have lost them (a reset, a failed write, or a close with bytes in flight).
    pub resent: u64,
    /// File rotations.
    pub rotations: u64,
}

/// Why a send (or a build) failed. Every variant carries a one-line message that starts with
/// the endpoint (`tls://127.0.0.1:6514: certificate verify failed: UnknownIssuer`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The configuration cannot work (bad address, unreadable CA file, ...): fix and restart.
    #[error("{0}")]
    Config(String),
    /// No usable connection: resolve, connect or TLS handshake failed, or timed out.
    #[error("{0}")]
    Connect(String),
    /// An established connection (or the file) failed while writing or reading.
    #[error("{0}")]
    Io(String),
    /// The receiver answered but refused the data (HTTP non-2xx, HEC error code, ack timeout).
    /// `status` is the HTTP status when there was one.
    #[error("{msg}")]
    Rejected { status: Option<u16>, msg: String },
}

/// Builds the transport for one `[[sinks]]` entry. Validates the entry (cross-field rules the
/// deserializer cannot check) and loads certificate files; never opens a network connection.
pub fn build(cfg: &SinkConfig) -> Result<Box<dyn Transport>, TransportError> {
    cfg.validate().map_err(TransportError::Config)?;
    let name = cfg.name();
    Ok(match cfg {
        SinkConfig::Stdout(_) => Box::new(stdout::StdoutTransport::new(name)),
        SinkConfig::File(c) => Box::new(file::FileTransport::new(name, c)?),
        SinkConfig::Syslog(c) => syslog::build(name, c)?,
        SinkConfig::Hec(c) => Box::new(http::HecTransport::new(name, c)?),
        SinkConfig::Webhook(c) => Box::new(http::WebhookTransport::new(name, c)?),
        SinkConfig::Kafka(c) => Box::new(kafka::KafkaTransport::new(name, c)?),
    })
}

/// Default bound on one `send` to a network receiver.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A point in time a whole operation must finish by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    pub(crate) fn after(budget: Duration) -> Self {
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// Time left, or a `TimedOut` error once less than a millisecond remains (a zero socket
    /// timeout would mean "wait forever").
    pub(crate) fn remaining(&self) -> io::Result<Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            Err(self.timed_out())
        } else {
            Ok(left)
        }
    }

    pub(crate) fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "timed out after {}",
                humantime::format_duration(self.budget)
            ),
        )
    }
}

/// `write_all` on a socket where every `write` is bounded by what is left of `deadline`, so a
/// receiver that reads slowly cannot stretch a send past it.
pub(crate) fn write_all_by(
    sock: &mut TcpStream,
    mut buf: &[u8],
    deadline: &Deadline,
) -> io::Result<()> {
    while !buf.is_empty() {
        sock.set_write_timeout(Some(deadline.remaining()?))?;
        match sock.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(deadline.timed_out()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a non-blocking look at a stream connection found, before writing into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// Nothing from the receiver: the connection is usable.
    Open,
    /// The receiver closed in order (FIN, or TLS close_notify): it read everything that had
    /// arrived, so only bytes still unacknowledged by its kernel can be lost.
    Closed,
    /// The connection was reset or failed: the receiver may have dropped bytes it had not read.
    Reset,
}

/// A socket timeout surfaces as `WouldBlock` (EAGAIN) on Linux and `TimedOut` elsewhere.
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Appends `msg` and a terminating LF to `out`. One trailing LF (or CRLF) already on the message
/// is taken as its terminator; any other LF is written as the two characters `\n` so that the
/// message stays one line. Returns whether anything was escaped. (The formats module promises
/// messages without LF; this is the safety net.)
pub(crate) fn push_line(out: &mut Vec<u8>, msg: &[u8]) -> bool {
    let msg = strip_terminator(msg);
    let escaped = msg.contains(&b'\n');
    if escaped {
        for &b in msg {
            if b == b'\n' {
                out.extend_from_slice(b"\\n");
            } else {
                out.push(b);
            }
        }
    } else {
        out.extend_from_slice(msg);
    }
    out.push(b'\n');
    escaped
}

pub(crate) fn strip_terminator(msg: &[u8]) -> &[u8] {
    let msg = msg.strip_suffix(b"\n").unwrap_or(msg);
    msg.strip_suffix(b"\r").unwrap_or(msg)
}

/// Seconds since the epoch of `t` (0 before the epoch).
pub(crate) fn epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// `t` as an RFC 3339 UTC timestamp with milliseconds (`2024-05-01T12:34:56.789Z`), the form
/// RFC 5424 asks for.
pub(crate) fn rfc3339_utc(t: SystemTime) -> String {
    crate::clock::rfc3339_millis(epoch(t))
}

/// Decimal epoch seconds with milliseconds, the `time` HEC expects.
pub(crate) fn epoch_millis_str(t: SystemTime) -> String {
    let d = epoch(t);
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// Cuts `buf` to at most `max` bytes without splitting a UTF-8 sequence when the cut falls
/// inside one (bytes that are not UTF-8 are cut exactly at `max`).
pub(crate) fn truncate_utf8(buf: &mut Vec<u8>, max: usize) {
    if buf.len() <= max {
        return;
    }
    let mut cut = max;
    // Step back over continuation bytes (10xxxxxx) to the start of the sequence at `cut`, at
    // most 3: a longer run is not UTF-8 and is cut where asked.
    let mut back = 0;
    while cut > 0 && back < 3 && buf[cut] & 0xC0 == 0x80 {
        cut -= 1;
        back += 1;
    }
    if buf[cut] & 0xC0 == 0x80 {
        cut = max;
    }
    buf.truncate(cut);
}

/// One printable line out of an arbitrary (remote) text: control characters and runs of
/// whitespace become one space, and it is cut to `max` characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut space = false;
    for c in text.trim().chars() {
        if c.is_whitespace() || c.is_control() {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
            n += 1;
        }
        space = false;
        if n >= max {
            out.push('…');
            break;
        }
        out.push(c);
        n += 1;
    }
    out
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "truncated={} escaped={} connects={} resent={} rotations={}",
            self.truncated, self.escaped, self.connects, self.resent, self.rotations
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_line_escapes_inner_lf_and_keeps_one_terminator() {
        let mut out = Vec::new();
        assert!(!push_line(&mut out, b"a b"));
        assert!(!push_line(&mut out, b"c\r\n"));
        assert!(push_line(&mut out, b"d\ne\n"));
        assert_eq!(out, b"a b\nc\nd\\ne\n");
    }

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64, ms: u64| {
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(1_735_689_600, 0), "2025-01-01T00:00:00.000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn truncation_respects_utf8() {
        let mut b = "aé".as_bytes().to_vec(); // 61 c3 a9
        truncate_utf8(&mut b, 2);
        assert_eq!(b, b"a");
        let mut b = vec![b'x'; 10];
        truncate_utf8(&mut b, 4);
        assert_eq!(b.len(), 4);
        let mut b = vec![0x80; 10]; // not UTF-8: cut exactly
        truncate_utf8(&mut b, 6);
        assert_eq!(b.len(), 6);
    }

    #[test]
    fn one_line_collapses_and_cuts() {
        assert_eq!(one_line("  a\r\n\tb  c ", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
