//! `syslog` transport: RFC 5424 messages over UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).
//!
//! Why: syslog is what every SIEM ingests (ArcSight and QRadar take CEF/LEEF this way), and the
//! three transports cover lossy-but-simple (UDP), ordered (TCP) and authenticated, encrypted
//! (TLS, optionally mutual) delivery.
//!
//! Each rendered message gets an RFC 5424 header (`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - -
//! MSG`; PRI from the configured facility and severity, TIMESTAMP the send time in UTC) unless
//! `header = "none"`. MSG is sent without the UTF-8 BOM (the RFC's MSG-ANY form), which is what
//! receivers expect in practice.
//!
//! Framing: UDP sends one message per datagram, cut to `max_datagram` bytes (default 2048: RFC
//! 5426 makes receivers take 480 bytes over IPv4 (1180 over IPv6) and asks them to take 2048;
//! cuts never split a UTF-8 sequence and are counted). TCP uses octet counting (`LEN SP MSG`,
//! default) or LF termination (embedded LFs escaped as `\n` and counted); TLS always octet
//! counting, as RFC 5425 requires.
//!
//! What must never happen: a send blocking past the configured `timeout` (connect, handshake and
//! every write share one deadline); a connection the receiver closed being written into (it is
//! checked, without blocking, before each batch and replaced); a message reported taken that was
//! not written and flushed; anything bound or listened on — TCP/TLS only connect out, UDP binds
//! an ephemeral port and connects it to the receiver.
//!
//! TCP has no application-level acknowledgement: a receiver that stops (rsyslog on SIGTERM)
//! resets the connection and drops what sat unread in its socket. So the last 256 frames
//! written on a connection (within 1 MiB) are kept, and written again first on the next one when the
//! one that carried them was reset, failed a write, or was closed with bytes its peer had not
//! acknowledged (`SIOCOUTQ`). An orderly close with nothing in flight means the receiver read
//! everything: nothing is repeated. What a receiver read and then lost inside itself, no
//! RFC 6587 sender can know; RELP or an HTTP sink with acknowledgements covers that.

use std::{
    collections::VecDeque,
    io::{self, Read},
    net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::{pki_types::ServerName, ClientConfig, ClientConnection};

use super::{
    config::DEFAULT_MAX_DATAGRAM, push_line, rfc3339_utc, strip_terminator, tls, truncate_utf8,
    write_all_by, Counters, Deadline, Facility, Framing, PeerState, Scheme, Severity,
    SyslogAddress, SyslogConfig, SyslogHeader, Transport, TransportError, DEFAULT_TIMEOUT,
};

/// Frames are coalesced into writes of about this size (one TLS record).
const CHUNK: usize = 16 * 1024;

/// How much of what was written on a connection is kept to be sent again if the connection
/// ends in a way that may have lost it: as many frames as the delivery worker hands over in
/// one batch (256), within 1 MiB. A receiver that reads at all has taken everything older.
const RESEND_MESSAGES: usize = 256;
const RESEND_BYTES: usize = 1 << 20;

/// Builds the UDP or TCP/TLS transport for a validated config.
pub(crate) fn build(name: String, c: &SyslogConfig) -> Result<Box<dyn Transport>, TransportError> {
    let header = Header::new(c);
    let timeout = c.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
    let config_err = |e: String| TransportError::Config(format!("{}: {e}", c.address));
    Ok(match c.address.scheme {
        Scheme::Udp => Box::new(UdpSyslog {
            name,
            addr: c.address.clone(),
            header,
            max_datagram: c.max_datagram.unwrap_or(DEFAULT_MAX_DATAGRAM),
            timeout,
            sock: None,
            counters: Counters::default(),
        }),
        Scheme::Tcp | Scheme::Tls => {
            let tls = if c.address.scheme == Scheme::Tls {
                let config = tls::client_config(
                    c.ca_file.as_deref(),
                    c.client_cert.as_deref(),
                    c.client_key.as_deref(),
                )
                .map_err(config_err)?;
                let server_name = tls::server_name(c.server_name.as_deref(), &c.address.host)
                    .map_err(config_err)?;
                Some(TlsClient {
                    config,
                    server_name,
                })
            } else {
                None
            };
            let framing = match c.address.scheme {
                Scheme::Tls => Framing::OctetCounted,
                _ => c.framing.unwrap_or(Framing::OctetCounted),
            };
            Box::new(StreamSyslog {
                name,
                addr: c.address.clone(),
                framing,
                tls,
                header,
                timeout,
                conn: None,
                written: VecDeque::new(),
                written_bytes: 0,
                resend: false,
                counters: Counters::default(),
            })
        }
    })
}

/// The RFC 5424 header, all but the timestamp computed once.
#[derive(Clone, Debug)]
struct Header {
    /// `<PRI>1 `, or `None` for `header = "none"`.
    pri: Option<String>,
    /// ` HOSTNAME APP-NAME PROCID - - `.
    rest: String,
}

impl Header {
    fn new(c: &SyslogConfig) -> Self {
        if c.header == Some(SyslogHeader::None) {
            return Header {
                pri: None,
                rest: String::new(),
            };
        }
        let facility = c.facility.unwrap_or(Facility::LOCAL0).0;
        let severity = c.severity.unwrap_or(Severity::WARNING).0;
        let pri = u32::from(facility) * 8 + u32::from(severity);
        let app = c.app_name.as_deref().unwrap_or("sensor-agent");
        Header {
            pri: Some(format!("<{pri}>1 ")),
            rest: format!(" {} {app} {} - - ", hostname(), std::process::id()),
        }
    }

    /// Appends the header for a message sent at `now`.
    fn write(&self, out: &mut Vec<u8>, now: SystemTime) {
        if let Some(pri) = &self.pri {
            out.extend_from_slice(pri.as_bytes());
            out.extend_from_slice(rfc3339_utc(now).as_bytes());
            out.extend_from_slice(self.rest.as_bytes());
        }
    }
}

/// This host's name as RFC 5424 HOSTNAME (1*255 PRINTUSASCII), or the NILVALUE `-`.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "-".into();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = &buf[..len];
    if name.is_empty() || name.len() > 255 || !name.iter().all(|b| (33..=126).contains(b)) {
        return "-".into();
    }
    String::from_utf8_lossy(name).into_owned()
}

/// The first address `addr` resolves to, or an error naming it.
fn resolve(addr: &SyslogAddress) -> Result<Vec<SocketAddr>, String> {
    let all: Vec<SocketAddr> = (addr.host.as_str(), addr.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", addr.host))?
        .collect();
    if all.is_empty() {
        return Err(format!("{} resolves to no address", addr.host));
    }
    Ok(all)
}

pub struct UdpSyslog {
    name: String,
    addr: SyslogAddress,
    header: Header,
    max_datagram: usize,
    timeout: Duration,
    sock: Option<UdpSocket>,
    counters: Counters,
}

impl UdpSyslog {
    fn open_socket(&mut self) -> Result<(), TransportError> {
        if self.sock.is_none() {
            let err = |e: String| TransportError::Connect(format!("{}: {e}", self.addr));
            let target = resolve(&self.addr).map_err(err)?[0];
            let local: SocketAddr = if target.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let s = UdpSocket::bind(local)
                .and_then(|s| s.connect(target).map(|()| s))
                .and_then(|s| s.set_write_timeout(Some(self.timeout)).map(|()| s))
                .map_err(|e| err(format!("cannot open UDP socket: {e}")))?;
            self.sock = Some(s);
        }
        Ok(())
    }
}

impl Transport for UdpSyslog {
    fn send(&mut self, batch: &[Vec<u8>]) -> Result<usize, TransportError> {
        if batch.is_empty() {
            return Ok(0);
        }
        self.open_socket()?;
        let (header, max) = (&self.header, self.max_datagram);
        let sock = self.sock.as_ref().expect("opened above");
        let mut truncated = 0;
        let mut dgram = Vec::with_capacity(max);
        let mut result = Ok(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            dgram.clear();
            header.write(&mut dgram, SystemTime::now());
            dgram.extend_from_slice(strip_terminator(msg));
            if dgram.len() > max {
                truncate_utf8(&mut dgram, max);
                truncated += 1;
            }
            if let Err(e) = sock.send(&dgram) {
                // E.g. ECONNREFUSED: an earlier datagram drew ICMP port-unreachable.
                result = if i > 0 {
                    Ok(i)
                } else {
                    Err(TransportError::Io(format!(
                        "{}: send failed: {e}",
                        self.addr
                    )))
                };
                break;
            }
        }
        self.counters.truncated += truncated;
        if result.is_err() || result.as_ref().is_ok_and(|n| *n < batch.len()) {
            self.sock = None;
        }
        result
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<ClientConnection>, TcpStream),
}

impl Conn {
    /// Non-blocking look at whether the receiver closed (or reset) the connection.
    fn peer_state(&mut self) -> PeerState {
        match self {
            Conn::Tcp(sock) => {
                if sock.set_nonblocking(true).is_err() {
                    return PeerState::Reset;
                }
                let mut buf = [0u8; 4096];
                let state = loop {
                    match sock.read(&mut buf) {
                        Ok(0) => break PeerState::Closed,
                        Ok(_) => {} // a syslog receiver has nothing to say: drop it
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break PeerState::Open,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break PeerState::Reset,
                    }
                };
                if sock.set_nonblocking(false).is_err() {
                    return PeerState::Reset;
                }
                state
            }
            Conn::Tls(conn, sock) => tls::peer_state(conn, sock),
        }
    }

    /// Bytes written that the receiver's kernel has not acknowledged yet (`SIOCOUTQ`); after
    /// the receiver closed, those can only be refused.
    fn unacknowledged(&self) -> usize {
        let sock = match self {
            Conn::Tcp(sock) | Conn::Tls(_, sock) => sock,
        };
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int for a TCP socket we own.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if rc == 0 {
            usize::try_from(n).unwrap_or(0)
        } else {
            // Unknown: assume the worst, which costs duplicates and never an alarm.
            usize::MAX
        }
    }

    /// Writes `data` completely (through TLS when in use) before `deadline`.
    fn write_all(&mut self, data: &[u8], deadline: &Deadline) -> io::Result<()> {
        match self {
            Conn::Tcp(sock) => write_all_by(sock, data, deadline),
            Conn::Tls(conn, sock) => {
                io::Write::write_all(&mut conn.writer(), data)?;
                while conn.wants_write() {
                    sock.set_write_timeout(Some(deadline.remaining()?))?;
                    match conn.write_tls(sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if super::is_timeout(&e) => return Err(deadline.timed_out()),
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Conn::Tls(conn, sock) = self {
            // Tell the receiver we are done, without waiting on it.
            conn.send_close_notify();
            let _ = sock.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = conn.write_tls(sock);
        }
    }
}

pub struct StreamSyslog {
    name: String,
    addr: SyslogAddress,
    framing: Framing,
    tls: Option<TlsClient>,
    header: Header,
    timeout: Duration,
    conn: Option<Conn>,
    /// Frames written on the current connection, oldest first, bounded by `RESEND_MESSAGES`
    /// and `RESEND_BYTES`.
    written: VecDeque<Vec<u8>>,
    written_bytes: usize,
    /// The last connection ended in a way that may have lost some of `written`: they go out
    /// again, first, on the next one.
    resend: bool,
    counters: Counters,
}

impl StreamSyslog {
    fn connect(&self, deadline: &Deadline) -> Result<Conn, TransportError> {
        let err = |e: String| TransportError::Connect(format!("{}: {e}", self.addr));
        let targets = resolve(&self.addr).map_err(err)?;
        let mut last = None;
        let mut sock = None;
        for t in targets {
            let left = deadline
                .remaining()
                .map_err(|e| err(format!("connect {e}")))?;
            match TcpStream::connect_timeout(&t, left) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(mut sock) = sock else {
            let e = last.map_or_else(|| "no address".to_string(), |e| e.to_string());
            return Err(err(format!("connect failed: {e}")));
        };
        let _ = sock.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Conn::Tcp(sock));
        };
        let mut conn = ClientConnection::new(tls.config.clone(), tls.server_name.clone())
            .map_err(|e| err(tls::describe_tls(&e)))?;
        conn.set_buffer_limit(None); // bounded by our chunk size; see write_all
        tls::handshake(&mut conn, &mut sock, deadline).map_err(|e| {
            let what = tls::describe(&e);
            err(
                if what.starts_with("certificate") || what.starts_with("TLS") {
                    what
                } else {
                    format!("TLS handshake failed: {what}")
                },
            )
        })?;
        Ok(Conn::Tls(Box::new(conn), sock))
    }

    fn frame(&self, out: &mut Vec<u8>, msg: &[u8], now: SystemTime) -> bool {
        let mut line = Vec::with_capacity(msg.len() + 64);
        self.header.write(&mut line, now);
        match self.framing {
            Framing::OctetCounted => {
                line.extend_from_slice(strip_terminator(msg));
                out.extend_from_slice(line.len().to_string().as_bytes());
                out.push(b' ');
                out.extend_from_slice(&line);
                false
            }
            Framing::Lf => {
                let escaped = push_line(&mut line, msg);
                out.extend_from_slice(&line);
                escaped
            }
        }
    }

    /// Keeps a frame written on the current connection, dropping the oldest beyond the bounds.
    fn remember(&mut self, frame: Vec<u8>) {
        self.written_bytes += frame.len();
        self.written.push_back(frame);
        while self.written.len() > RESEND_MESSAGES || self.written_bytes > RESEND_BYTES {
            match self.written.pop_front() {
                Some(f) => self.written_bytes -= f.len(),
                None => break,
            }
        }
    }

    /// Writes frames in chunks, remembering each one written; on failure returns how many
    /// frames were completely written before it.
    fn write_frames(
        &mut self,
        frames: Vec<Vec<u8>>,
        deadline: &Deadline,
    ) -> Result<(), (usize, io::Error)> {
        let total = frames.len();
        let mut chunk = Vec::with_capacity(CHUNK + 1024);
        let mut in_chunk = Vec::new();
        let mut done = 0;
        for (i, frame) in frames.into_iter().enumerate() {
            chunk.extend_from_slice(&frame);
            in_chunk.push(frame);
            if chunk.len() >= CHUNK || i + 1 == total {
                let conn = self
                    .conn
                    .as_mut()
                    .ok_or((done, io::ErrorKind::NotConnected.into()))?;
                conn.write_all(&chunk, deadline).map_err(|e| (done, e))?;
                done += in_chunk.len();
                for f in in_chunk.drain(..) {
                    self.remember(f);
                }
                chunk.clear();
            }
        }
        Ok(())
    }

    /// Looks at the current connection before writing: one the receiver closed is dropped, and
    /// whether that may have lost what was written on it decides `resend`.
    fn check_connection(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let lost = match conn.peer_state() {
            PeerState::Open => return,
            // An orderly close means the receiver read what had reached it; bytes its kernel
            // had not acknowledged yet will be refused.
            PeerState::Closed => conn.unacknowledged() > 0,
            PeerState::Reset => true,
        };
        self.conn = None;
        if lost {
            self.resend = true;
        } else if !self.resend {
            self.written.clear();
            self.written_bytes = 0;
        }
    }

    /// Sends what the last connection may have lost, first, on the new one.
    fn resend_written(&mut self, deadline: &Deadline) -> Result<(), TransportError> {
        if !self.resend {
            return Ok(());
        }
        let again: Vec<Vec<u8>> = self.written.drain(..).collect();
        self.written_bytes = 0;
        let n = again.len() as u64;
        match self.write_frames(again.clone(), deadline) {
            Ok(()) => {
                self.resend = false;
                self.counters.resent += n;
                Ok(())
            }
            Err((_, e)) => {
                // Still owed: keep all of it for the next connection.
                self.conn = None;
                self.written = again.into();
                self.written_bytes = self.written.iter().map(Vec::len).sum();
                Err(TransportError::Io(format!(
                    "{}: write failed: {}",
                    self.addr,
                    tls::describe(&e)
                )))
            }
        }
    }
}

impl Transport for StreamSyslog {
    /// TCP has no acknowledgement a receiver's application sends back, so the last frames
    /// written are kept and written again on the next connection when the one that carried
    /// them was reset, failed, or closed with bytes still unacknowledged: duplicates (of
    /// alarms that carry their `event.id`) only then, and never a loss that the kernel reports.
    fn send(&mut self, batch: &[Vec<u8>]) -> Result<usize, TransportError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let deadline = Deadline::after(self.timeout);
        self.check_connection();
        if self.conn.is_none() {
            self.conn = Some(self.connect(&deadline)?);
            self.counters.connects += 1;
        }
        self.resend_written(&deadline)?;
        let now = SystemTime::now();
        let mut frames = Vec::with_capacity(batch.len());
        for msg in batch {
            let mut frame = Vec::with_capacity(msg.len() + 80);
            if self.frame(&mut frame, msg, now) {
                self.counters.escaped += 1;
            }
            frames.push(frame);
        }
        match self.write_frames(frames, &deadline) {
            Ok(()) => Ok(batch.len()),
            Err((done, e)) => {
                self.conn = None;
                self.resend = true;
                if done > 0 {
                    Ok(done)
                } else {
                    Err(TransportError::Io(format!(
                        "{}: write failed: {}",
                        self.addr,
                        tls::describe(&e)
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
