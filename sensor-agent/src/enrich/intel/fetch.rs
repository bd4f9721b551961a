//! Getting a feed's bytes: files of the intel directory and URLs fetched with `ureq`, each
//! capped in bytes while it is read.
//!
//! # Why it exists
//! Feeds are input the sensor does not control; how they are read decides whether a huge or
//! endless one can exhaust memory. Keeping every read here keeps the cap in one place.
//!
//! # What it must never do
//! - Never read more than `cap + 1` bytes of a source: the cap is enforced while reading,
//!   not after, whatever a `Content-Length` or a file size says.
//! - Never disable TLS peer verification (the agent has no option to).
//! - Never follow a directory into its subdirectories or list hidden files.
//! - Never block on opening a feed: a FIFO (or a device) dropped into the directory is opened
//!   non-blocking and refused after `fstat` says it is no regular file, so no writer that never
//!   comes can hang a reload.
//! - Never follow a symlink out of the feed directory unless `intel.follow_symlinks = true`: a
//!   link to `/etc/shadow` must not put that file's lines into the log as "malformed".

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

/// The HTTP(S) client for URL feeds: `timeout` bounds each fetch whole (connect, request and
/// body); connecting alone gets at most 10 s of it. HTTP errors are answers, not transport
/// failures, so that the report can name the status.
pub(super) fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
        .http_status_as_error(false)
        .max_redirects(5)
        .user_agent(concat!("sensor-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// The error of a source over its byte cap.
fn too_big(origin: &str, cap: u64) -> String {
    format!("{origin} is larger than max_feed_bytes = {cap} bytes; the whole feed is refused")
}

/// A regular file, whole, refused when over `cap` bytes.
pub(super) fn read_file_capped(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let origin = path.display().to_string();
    // O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below refuses it. On a
    // regular file the flag changes nothing.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {origin}: {e}"))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read {origin}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "cannot read {origin}: {}, not a regular file",
            file_kind(&meta.file_type())
        ));
    }
    if meta.len() > cap {
        return Err(too_big(&origin, cap));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {origin}: {e}"))?;
    if buf.len() as u64 > cap {
        return Err(too_big(&origin, cap));
    }
    Ok(buf)
}

/// GET with the agent's timeouts; the cap is checked against `Content-Length` first and then
/// enforced while the body streams in (a body without a length cannot exhaust memory).
pub(super) fn fetch_capped(agent: &ureq::Agent, url: &str, cap: u64) -> Result<Vec<u8>, String> {
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("cannot fetch {url}: HTTP {status}"));
    }
    if resp.body().content_length().is_some_and(|l| l > cap) {
        return Err(too_big(url, cap));
    }
    let mut buf = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if buf.len() as u64 > cap {
        return Err(too_big(url, cap));
    }
    Ok(buf)
}

/// Regular (or unreadable) non-hidden entries of `dir`, sorted by name; subdirectories are
/// skipped. An entry whose type cannot be read (a dangling link) is listed so that its failure
/// is reported.
pub(super) fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

/// What a non-regular file is, for a message.
fn file_kind(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// Why a listed entry of the feed directory must not be read, if it must not: a symlink
/// that leads out of the directory (unless `follow_symlinks`), or anything that is not a
/// regular file. Checked from metadata only, nothing is opened.
pub(super) fn refuse_entry(dir: &Path, path: &Path, follow_symlinks: bool) -> Option<String> {
    let origin = path.display();
    let link = fs::symlink_metadata(path).ok()?;
    if link.file_type().is_symlink() && !follow_symlinks {
        let inside = match (fs::canonicalize(dir), fs::canonicalize(path)) {
            (Ok(d), Ok(t)) => t.starts_with(&d),
            // A dangling link is reported by the read.
            _ => true,
        };
        if !inside {
            return Some(format!(
                "{origin} is a symlink out of the feed directory; not read (set intel.follow_symlinks = true to allow it)"
            ));
        }
    }
    let meta = fs::metadata(path).ok()?;
    (!meta.is_file()).then(|| {
        format!(
            "{origin} is {}, not a regular file; feeds are read only from regular files",
            file_kind(&meta.file_type())
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::enrich::intel::{
        testutil::{T1, T2},
        FeedFormat, IntelConfig, IntelStore, UrlFeed,
    };
    use crate::units::HumanDuration;
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpListener},
        thread,
        time::{Duration, Instant},
    };

    enum Reply {
        Fixed {
            status: &'static str,
            body: Vec<u8>,
        },
        /// 200 without a length, body written until the client goes away (bounded).
        Endless,
    }

    const ENDLESS_MAX: u64 = 512 * 1024 * 1024;

    /// Serves `replies` in order, one connection each; returns the bytes of body written.
    fn serve(replies: Vec<Reply>) -> (SocketAddr, thread::JoinHandle<Vec<u64>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let h = thread::spawn(move || {
            let mut written = Vec::new();
            for reply in replies {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut stream = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(_) if Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => return written,
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                match reply {
                    Reply::Fixed { status, body } => {
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(&body);
                        written.push(body.len() as u64);
                    }
                    Reply::Endless => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                        );
                        let chunk = "192.0.2.1\n".repeat(6554).into_bytes();
                        let mut n = 0u64;
                        while n < ENDLESS_MAX {
                            match stream.write_all(&chunk) {
                                Ok(()) => n += chunk.len() as u64,
                                Err(_) => break,
                            }
                        }
                        written.push(n);
                    }
                }
            }
            written
        });
        (addr, h)
    }

    fn url_store(url: String, tweak: impl FnOnce(&mut IntelConfig)) -> IntelStore {
        let mut c = IntelConfig {
            urls: vec![UrlFeed {
                name: "remote".into(),
                url,
                format: FeedFormat::Auto,
            }],
            fetch_timeout: HumanDuration::secs(10),
            ..IntelConfig::default()
        };
        tweak(&mut c);
        IntelStore::new(c).unwrap()
    }

    #[test]
    fn intel_url_feed_loads_then_keeps_version_on_http_500() {
        let (addr, server) = serve(vec![
            Reply::Fixed {
                status: "200 OK",
                body: b"0.0.0.0 pool.remote.example\n0.0.0.0 xmr.remote.example # nanopool\n"
                    .to_vec(),
            },
            Reply::Fixed {
                status: "500 Internal Server Error",
                body: b"oops".to_vec(),
            },
        ]);
        let url = format!("http://{addr}/feed.txt");
        let store = url_store(url.clone(), |_| {});
        let r = store.reload(T1);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.feeds[0].format, FeedFormat::Hosts);
        let m = store.match_domain("eu.xmr.remote.example").unwrap();
        assert_eq!(m.feed, "remote");
        assert_eq!(m.source, url);
        assert_eq!(m.line, 2);
        assert_eq!(m.description.as_deref(), Some("nanopool"));

        let r = store.reload(T2);
        assert_eq!(
            r.failures,
            vec![format!(
                "feed remote: kept the version loaded at 2023-11-14T22:13:20Z: cannot fetch {url}: HTTP 500 Internal Server Error"
            )]
        );
        assert!(store.match_domain("pool.remote.example").is_some());
        server.join().unwrap();
    }

    #[test]
    fn intel_url_body_over_cap_refused_while_streaming() {
        let (addr, server) = serve(vec![Reply::Endless]);
        let url = format!("http://{addr}/endless");
        let store = url_store(url.clone(), |c| c.max_feed_bytes = 100_000);
        let started = Instant::now();
        let r = store.reload(T1);
        assert_eq!(
            r.failures,
            vec![format!(
                "feed remote: not loaded: {url} is larger than max_feed_bytes = 100000 bytes; the whole feed is refused"
            )]
        );
        assert!(store.snapshot().is_empty());
        let written = server.join().unwrap();
        // The client stopped reading at the cap: the server never got near its own limit.
        assert!(written[0] < ENDLESS_MAX, "{written:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn intel_url_content_length_over_cap_and_unreachable() {
        let (addr, server) = serve(vec![Reply::Fixed {
            status: "200 OK",
            body: vec![b'x'; 5000],
        }]);
        let store = url_store(format!("http://{addr}/big"), |c| c.max_feed_bytes = 1000);
        let r = store.reload(T1);
        assert!(
            r.failures[0].contains("larger than max_feed_bytes = 1000 bytes"),
            "{r}"
        );
        server.join().unwrap();

        // Nothing listens on a port that was just released.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = url_store(format!("http://127.0.0.1:{port}/"), |_| {});
        let r = store.reload(T1);
        assert!(
            r.failures[0].starts_with("feed remote: not loaded: cannot fetch"),
            "{r}"
        );
    }
}
