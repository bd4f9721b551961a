//! TLS client side of the syslog transport (RFC 5425) with rustls: loading the trust anchors and
//! the optional client identity, a deadline-bounded handshake, and one-line error texts.
//!
//! Why a module of its own: these are the parts where a mistake silently turns encryption into
//! theatre, so they are kept small and in one place.
//!
//! What must never happen: certificate verification disabled or bypassed (there is no code path
//! that installs a custom verifier; the server is always checked against the configured CA file
//! or Mozilla's roots, for the configured `server_name` or the address host); a handshake that
//! outlives the send deadline; a server's rejection of our client certificate going unnoticed
//! (after a TLS 1.3 handshake the server's verdict arrives after ours, so it is waited for
//! briefly before data is written).

use std::{
    io::{self, Read},
    net::TcpStream,
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::{
    crypto::ring, pki_types::ServerName, AlertDescription, ClientConfig, ClientConnection,
    ProtocolVersion, RootCertStore,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::{is_timeout, Deadline, PeerState};

/// The provider ureq is built with too (ring), named explicitly so that no process-wide default
/// is needed.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Certificates of a PEM file; an error when it holds none.
pub(crate) fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {what} {}: {}", path.display(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// A PEM error as text; an I/O error without the "I/O error: " prefix ("No such file or
/// directory" reads better after "cannot read ca_file <path>: ").
fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        e => e.to_string(),
    }
}

/// The trust anchors: the CA file's certificates, or Mozilla's roots without one.
pub(crate) fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(p) => {
            for c in load_certs(p, "ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("ca_file {}: unusable certificate: {e}", p.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// The client configuration: verified server, optional client certificate for mutual TLS.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<Arc<ClientConfig>, String> {
    let roots = root_store(ca_file)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let cfg = match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert, "client_cert")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "cannot read client_key {}: {}",
                    key.display(),
                    match e {
                        rustls_pki_types::pem::Error::NoItemsFound => "no PEM private key".into(),
                        e => pem_error(e),
                    }
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client_cert/client_key unusable: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("client_cert and client_key must be given together".into()),
    };
    Ok(Arc::new(cfg))
}

/// Converts a failure into the text after `<address>: ` in an error message.
pub(crate) fn describe(e: &io::Error) -> String {
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return describe_tls(t);
    }
    e.to_string()
}

pub(crate) fn describe_tls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => format!("certificate verify failed: {c}"),
        rustls::Error::AlertReceived(a) => {
            let hint = match a {
                AlertDescription::CertificateRequired => {
                    " (the server requires a client certificate)"
                }
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied => {
                    " (the server rejected the client certificate?)"
                }
                _ => "",
            };
            format!("TLS alert from server: {a:?}{hint}")
        }
        e => format!("TLS error: {e}"),
    }
}

fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads what the server sent into `conn` and processes it. `Ok(false)` = the server closed.
fn read_some(conn: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<bool> {
    match conn.read_tls(sock)? {
        0 => Ok(false),
        _ => {
            let state = conn.process_new_packets().map_err(|e| {
                // Let the server know why (best effort).
                let _ = conn.write_tls(sock);
                tls_io(e)
            })?;
            Ok(!state.peer_has_closed())
        }
    }
}

/// Runs the handshake to completion within `deadline`; then, under TLS 1.3, waits briefly for
/// the server's first post-handshake record so that a rejected client certificate is an error
/// here instead of lost data later.
pub(crate) fn handshake(
    conn: &mut ClientConnection,
    sock: &mut TcpStream,
    deadline: &Deadline,
) -> io::Result<()> {
    let closed = || io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by server");
    while conn.is_handshaking() {
        while conn.wants_write() {
            sock.set_write_timeout(Some(deadline.remaining()?))?;
            conn.write_tls(sock).map_err(|e| timeout_or(e, deadline))?;
        }
        if conn.is_handshaking() && conn.wants_read() {
            sock.set_read_timeout(Some(deadline.remaining()?))?;
            if !read_some(conn, sock).map_err(|e| timeout_or(e, deadline))? {
                return Err(closed());
            }
        }
    }
    while conn.wants_write() {
        sock.set_write_timeout(Some(deadline.remaining()?))?;
        conn.write_tls(sock).map_err(|e| timeout_or(e, deadline))?;
    }
    if conn.protocol_version() == Some(ProtocolVersion::TLSv1_3) {
        // A server that sends nothing (no session tickets) costs this wait once per connection.
        let wait = deadline.remaining()?.min(Duration::from_millis(250));
        sock.set_read_timeout(Some(wait))?;
        match read_some(conn, sock) {
            Ok(true) => {}
            Ok(false) => return Err(closed()),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn timeout_or(e: io::Error, deadline: &Deadline) -> io::Error {
    if is_timeout(&e) {
        deadline.timed_out()
    } else {
        e
    }
}

/// Whether the connection is still usable before a write, and how it ended if not: processes
/// whatever the server sent (session tickets, an alert, close_notify) without blocking. Syslog
/// receivers send no data, so application data is read and dropped.
pub(crate) fn peer_state(conn: &mut ClientConnection, sock: &mut TcpStream) -> PeerState {
    if sock.set_nonblocking(true).is_err() {
        return PeerState::Reset;
    }
    let state = loop {
        match read_some(conn, sock) {
            Ok(true) => {
                let mut sink = [0u8; 4096];
                match conn.reader().read(&mut sink) {
                    Ok(0) => break PeerState::Closed, // close_notify
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // EOF without close_notify: the TCP stream ended, in order.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break PeerState::Closed,
                    Err(_) => break PeerState::Reset,
                }
            }
            Ok(false) => break PeerState::Closed,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break PeerState::Open,
            Err(_) => break PeerState::Reset,
        }
    };
    if sock.set_nonblocking(false).is_err() {
        return PeerState::Reset;
    }
    state
}

/// The server name to verify: `server_name`, or the address host (a DNS name or an IP).
pub(crate) fn server_name(
    override_name: Option<&str>,
    host: &str,
) -> Result<ServerName<'static>, String> {
    let n = override_name.unwrap_or(host);
    ServerName::try_from(n.to_string())
        .map_err(|_| format!("{n:?} is not a valid TLS server name (DNS name or IP address)"))
}
