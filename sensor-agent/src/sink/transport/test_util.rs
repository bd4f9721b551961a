//! Test helpers for the transports: temporary directories, throw-away CAs (rcgen), and tiny
//! receivers on 127.0.0.1 (syslog over TCP/TLS with independent frame parsing, and an HTTP/1.1
//! server) that report what they got.
//!
//! Why independent parsers: a receiver that reused the sender's framing code would agree with
//! any bug in it. What must never happen here: listening on anything but 127.0.0.1 with an
//! ephemeral port, or a helper that can block a test forever (every socket has a timeout).

use std::{
    env, fs,
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    server::WebPkiClientVerifier, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::tls::provider;

/// Socket timeout of the test receivers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = env::temp_dir().join(format!(
            "sensor-transport-{tag}-{}-{}",
            process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    pub der: CertificateDer<'static>,
}

/// A certificate signed by a [`TestCa`], with its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A server (`client = false`) or client certificate for `names` (DNS names or IPs).
    pub fn leaf(&self, names: &[&str], client: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// A TLS server configuration presenting `leaf`; with `client_ca`, client certificates signed
/// by it are required.
pub fn server_config(leaf: &Leaf, client_ca: Option<&TestCa>) -> Arc<ServerConfig> {
    let b = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(
        b.with_single_cert(vec![leaf.cert_der.clone()], leaf.key())
            .unwrap(),
    )
}

pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// A byte stream, plain or TLS.
pub trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// Accepts one connection (TLS with `tls`), with timeouts set.
pub fn accept(l: &TcpListener, tls: Option<&Arc<ServerConfig>>) -> io::Result<Box<dyn Duplex>> {
    let (s, _) = l.accept()?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(match tls {
        Some(cfg) => {
            let conn = ServerConnection::new(cfg.clone()).map_err(io::Error::other)?;
            Box::new(StreamOwned::new(conn, s))
        }
        None => Box::new(s),
    })
}

/// Syslog framing as a receiver sees it.
#[derive(Clone, Copy, Debug)]
pub enum Wire {
    OctetCounted,
    Lf,
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame(r: &mut impl BufRead, wire: Wire) -> io::Result<Option<Vec<u8>>> {
    match wire {
        Wire::Lf => {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Ok(None);
            }
            if line.pop() != Some(b'\n') {
                return Err(io::Error::other("frame without LF at end of stream"));
            }
            Ok(Some(line))
        }
        Wire::OctetCounted => {
            let mut len = Vec::new();
            if r.read_until(b' ', &mut len)? == 0 {
                return Ok(None);
            }
            if len.pop() != Some(b' ') || len.is_empty() || !len.iter().all(u8::is_ascii_digit) {
                return Err(io::Error::other(format!("bad octet count {len:?}")));
            }
            let n: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
            let mut msg = vec![0; n];
            r.read_exact(&mut msg)?;
            Ok(Some(msg))
        }
    }
}

/// What [`receive`] gives back: the listener, and the frames read (or why reading failed).
pub type Received = (TcpListener, Result<Vec<Vec<u8>>, String>);

/// Accepts one connection on `l` and reads `want` frames (or until the sender closes), then
/// closes it; gives back the listener with what it read.
pub fn receive(
    l: TcpListener,
    wire: Wire,
    tls: Option<Arc<ServerConfig>>,
    want: usize,
) -> JoinHandle<Received> {
    thread::spawn(move || {
        let got = (|| {
            let s = accept(&l, tls.as_ref()).map_err(|e| e.to_string())?;
            let mut r = BufReader::new(s);
            let mut got = Vec::new();
            while got.len() < want {
                match read_frame(&mut r, wire).map_err(|e| e.to_string())? {
                    Some(m) => got.push(m),
                    None => break,
                }
            }
            Ok(got)
        })();
        (l, got)
    })
}

/// A request as the test HTTP server read it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut impl BufRead) -> io::Result<Req> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| io::Error::other("bad header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Req {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    req.body = vec![0; len];
    r.read_exact(&mut req.body)?;
    Ok(req)
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with `handler` (status, JSON body)
/// and `Connection: close`; the requests come out of the channel. The thread lives until the
/// test process ends.
pub fn http_server<F>(
    tls: Option<Arc<ServerConfig>>,
    handler: F,
) -> (SocketAddr, mpsc::Receiver<Req>)
where
    F: Fn(&Req) -> (u16, String) + Send + 'static,
{
    let l = listener();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || loop {
        let Ok(s) = accept(&l, tls.as_ref()) else {
            continue;
        };
        let mut r = BufReader::new(s);
        let Ok(req) = read_request(&mut r) else {
            continue;
        };
        let (status, body) = handler(&req);
        let _ = tx.send(req);
        let mut s = r.into_inner();
        let _ = write!(
            s,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.flush();
    });
    (addr, rx)
}

/// A TCP connection that accepts, then neither reads nor answers (for timeout tests); kept
/// open until the returned sender is dropped.
pub fn silent_receiver() -> (SocketAddr, mpsc::Sender<()>) {
    let l = listener();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let s: Option<TcpStream> = l.accept().ok().map(|(s, _)| s);
        let _ = rx.recv_timeout(Duration::from_secs(30));
        drop(s);
    });
    (addr, tx)
}
