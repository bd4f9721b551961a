//! Syslog transport tests against receivers on 127.0.0.1 that parse the framing themselves:
//! UDP (header, truncation), TCP with both framings, reconnects, TLS with a trusted, an
//! untrusted and a mutual-TLS receiver, and the send timeout.
//!
//! What must never happen: a test that talks to anything but a receiver it started, or that can
//! hang (receivers have socket timeouts; silent receivers are released on drop).

use std::{
    net::{TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use super::{
    build,
    test_util::{listener, receive, server_config, silent_receiver, TempDir, TestCa, Wire},
    SinkConfig, Transport, TransportError,
};

fn sink(toml: &str) -> Box<dyn Transport> {
    let cfg: SinkConfig = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    build(&cfg).unwrap_or_else(|e| panic!("{e}"))
}

fn msgs(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|m| m.as_bytes().to_vec()).collect()
}

/// Splits an RFC 5424 line into its header fields and MSG.
fn parse_5424(frame: &[u8]) -> (Vec<String>, Vec<u8>) {
    let mut fields = Vec::new();
    let mut rest = frame;
    for _ in 0..7 {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .expect("7 header fields");
        fields.push(String::from_utf8(rest[..sp].to_vec()).unwrap());
        rest = &rest[sp + 1..];
    }
    (fields, rest.to_vec())
}

#[test]
fn udp_one_datagram_per_message_with_header_and_truncation() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = rx.local_addr().unwrap().port();
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"udp://127.0.0.1:{port}\"\nmax_datagram = 480\n\
         facility = \"auth\"\nseverity = \"err\"\napp_name = \"nsm\"\n"
    ));
    assert_eq!(t.name(), format!("syslog:udp://127.0.0.1:{port}"));
    let long = "é".repeat(400); // 800 bytes of 2-byte sequences
    let batch = msgs(&["CEF:0|a|b|1|x|y|5|", &long]);
    assert_eq!(t.send(&batch).unwrap(), 2);
    let mut buf = [0u8; 4096];
    let n = rx.recv(&mut buf).unwrap();
    let (h, msg) = parse_5424(&buf[..n]);
    assert_eq!(h[0], "<35>1"); // auth (4) * 8 + err (3)
    assert!(
        h[1].ends_with('Z') && h[1].len() == 24,
        "timestamp {}",
        h[1]
    );
    assert_eq!(h[3], "nsm");
    assert_eq!(h[4], std::process::id().to_string());
    assert_eq!((h[5].as_str(), h[6].as_str()), ("-", "-"));
    assert_eq!(msg, b"CEF:0|a|b|1|x|y|5|");
    let n = rx.recv(&mut buf).unwrap();
    assert!((478..=480).contains(&n), "{n}");
    assert!(
        std::str::from_utf8(&buf[..n]).is_ok(),
        "cut inside a UTF-8 sequence"
    );
    assert_eq!(t.counters().truncated, 1);
}

#[test]
fn udp_without_header_sends_the_message_as_is() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = rx.local_addr().unwrap().port();
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"udp://127.0.0.1:{port}\"\nheader = \"none\"\n"
    ));
    assert_eq!(t.send(&msgs(&["one", "two\n"])).unwrap(), 2);
    let mut buf = [0u8; 4096];
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"one");
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"two");
}

#[test]
fn tcp_octet_counted_the_example_config() {
    let l = listener();
    let port = l.local_addr().unwrap().port();
    let rx = receive(l, Wire::OctetCounted, None, 3);
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tcp://127.0.0.1:{port}\"\nformat = \"cef\"\n\
         framing = \"octet-counted\"\n"
    ));
    // Octet counting carries an embedded LF unharmed.
    let batch = msgs(&["CEF:0|first", "multi\nline", "third"]);
    assert_eq!(t.send(&batch).unwrap(), 3);
    let (_, got) = rx.join().unwrap();
    let got = got.unwrap();
    assert_eq!(got.len(), 3);
    for (frame, want) in got.iter().zip(&batch) {
        let (h, msg) = parse_5424(frame);
        assert_eq!(h[0], "<132>1"); // local0 (16) * 8 + warning (4)
        assert_eq!(&msg, want);
    }
    assert_eq!(t.counters().escaped, 0);
    assert_eq!(t.counters().connects, 1);
}

#[test]
fn tcp_lf_framing_escapes_embedded_lf() {
    let l = listener();
    let port = l.local_addr().unwrap().port();
    let rx = receive(l, Wire::Lf, None, 10);
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tcp://127.0.0.1:{port}\"\nframing = \"lf\"\n\
         header = \"none\"\n"
    ));
    assert_eq!(t.send(&msgs(&["a", "b\nc", "d\n", "e\r\n"])).unwrap(), 4);
    drop(t); // closes the connection: the receiver sees the end
    let (_, got) = rx.join().unwrap();
    assert_eq!(got.unwrap(), msgs(&["a", "b\\nc", "d", "e"]));
}

#[test]
fn tcp_large_batch_is_chunked_and_complete() {
    let l = listener();
    let port = l.local_addr().unwrap().port();
    let rx = receive(l, Wire::OctetCounted, None, 500);
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tcp://127.0.0.1:{port}\"\nheader = \"none\"\n"
    ));
    let batch: Vec<Vec<u8>> = (0..500)
        .map(|i| format!("{i:0>300}").into_bytes())
        .collect();
    assert_eq!(t.send(&batch).unwrap(), 500);
    let (_, got) = rx.join().unwrap();
    assert_eq!(got.unwrap(), batch);
}

#[test]
fn tcp_reconnects_after_the_receiver_closes_and_comes_back() {
    let l = listener();
    let addr = l.local_addr().unwrap();
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tcp://{addr}\"\nheader = \"none\"\ntimeout = \"2s\"\n"
    ));
    // 1. The receiver takes two messages and hangs up.
    let rx = receive(l, Wire::OctetCounted, None, 2);
    assert_eq!(t.send(&msgs(&["m1", "m2"])).unwrap(), 2);
    let (l, got) = rx.join().unwrap();
    assert_eq!(got.unwrap(), msgs(&["m1", "m2"]));
    // 2. The closed connection is noticed before writing: a new one carries the next batch.
    let rx = receive(l, Wire::OctetCounted, None, 1);
    assert_eq!(t.send(&msgs(&["m3"])).unwrap(), 1);
    let (l, got) = rx.join().unwrap();
    assert_eq!(got.unwrap(), msgs(&["m3"]));
    assert_eq!(t.counters().connects, 2);
    // 3. The receiver goes away entirely: a clear, retryable error.
    drop(l);
    let e = t.send(&msgs(&["m4"])).unwrap_err();
    assert!(matches!(e, TransportError::Connect(_)), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("tcp://{addr}: connect failed: ")),
        "{e}"
    );
    // 4. It comes back on the same port: the retry goes through.
    let l = TcpListener::bind(addr).unwrap();
    let rx = receive(l, Wire::OctetCounted, None, 1);
    assert_eq!(t.send(&msgs(&["m4"])).unwrap(), 1);
    let (_, got) = rx.join().unwrap();
    assert_eq!(got.unwrap(), msgs(&["m4"]));
    assert_eq!(t.counters().connects, 3);
}

#[test]
fn tcp_resends_what_a_receiver_that_reset_left_unread_and_nothing_after_an_orderly_close() {
    use std::io::Read;
    let l = listener();
    let addr = l.local_addr().unwrap();
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tcp://{addr}\"\nheader = \"none\"\ntimeout = \"2s\"\n"
    ));
    // 1. The receiver reads the first batch, lets the second arrive unread and closes: the
    //    kernel resets the connection, and the second batch is gone with the socket.
    let (got_first, unread_arrived) = (
        std::sync::mpsc::channel::<()>(),
        std::sync::mpsc::channel::<()>(),
    );
    let (first_tx, first_rx) = got_first;
    let (arrived_tx, arrived_rx) = unread_arrived;
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let rx = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let first = b"2 m12 m2";
        let mut buf = vec![0u8; first.len()];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, first);
        first_tx.send(()).unwrap();
        let mut peek = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.peek(&mut peek).unwrap_or(0) < b"2 m32 m4".len() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        arrived_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(Duration::from_secs(5));
        drop(s); // unread bytes: a reset, not an orderly close
        l
    });
    assert_eq!(t.send(&msgs(&["m1", "m2"])).unwrap(), 2);
    first_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(t.send(&msgs(&["m3", "m4"])).unwrap(), 2);
    arrived_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    release_tx.send(()).unwrap();
    let l = rx.join().unwrap();
    // 2. The next send finds the reset, reconnects and writes what the lost connection carried
    //    (its last 256 frames: here all four) again before m5.
    let rx = receive(l, Wire::OctetCounted, None, 5);
    assert_eq!(t.send(&msgs(&["m5"])).unwrap(), 1);
    let (l, got) = rx.join().unwrap();
    assert_eq!(got.unwrap(), msgs(&["m1", "m2", "m3", "m4", "m5"]));
    assert_eq!(t.counters().resent, 4);
    assert_eq!(t.counters().connects, 2);
    // 3. That receiver read everything and closed in order: nothing is repeated.
    let rx = receive(l, Wire::OctetCounted, None, 1);
    assert_eq!(t.send(&msgs(&["m6"])).unwrap(), 1);
    let (_, got) = rx.join().unwrap();
    assert_eq!(got.unwrap(), msgs(&["m6"]));
    assert_eq!(t.counters().resent, 4);
    assert_eq!(t.counters().connects, 3);
}

#[test]
fn slow_receiver_never_blocks_past_the_timeout() {
    // A receiver that accepts and never reads: the socket buffers fill up.
    let (addr, _hold) = silent_receiver();
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tcp://{addr}\"\nheader = \"none\"\ntimeout = \"300ms\"\n"
    ));
    let batch: Vec<Vec<u8>> = (0..4000).map(|_| vec![b'x'; 8192]).collect(); // 32 MiB
    let start = Instant::now();
    let r = t.send(&batch);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "send took {took:?}");
    match r {
        Ok(n) => assert!(
            n < batch.len(),
            "all of 32 MiB cannot fit in socket buffers"
        ),
        Err(e) => assert!(e.to_string().contains("timed out after 300ms"), "{e}"),
    }

    // Same for a TLS handshake the server never answers.
    let (addr, _hold2) = silent_receiver();
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tls://{addr}\"\ntimeout = \"300ms\"\n"
    ));
    let start = Instant::now();
    let e = t.send(&msgs(&["x"])).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        e.to_string(),
        format!("tls://{addr}: TLS handshake failed: timed out after 300ms")
    );
}

/// A TLS receiver presenting a certificate for 127.0.0.1 signed by `server_ca`.
struct TlsSetup {
    dir: TempDir,
    server_ca: TestCa,
}

impl TlsSetup {
    fn new() -> Self {
        TlsSetup {
            dir: TempDir::new("tls"),
            server_ca: TestCa::new("Test Syslog CA"),
        }
    }

    fn ca_file(&self) -> String {
        self.dir
            .write("ca.pem", &self.server_ca.pem)
            .display()
            .to_string()
    }
}

#[test]
fn tls_delivers_octet_counted_to_a_verified_receiver() {
    let s = TlsSetup::new();
    let leaf = s.server_ca.leaf(&["127.0.0.1", "syslog.test"], false);
    let l = listener();
    let port = l.local_addr().unwrap().port();
    let rx = receive(l, Wire::OctetCounted, Some(server_config(&leaf, None)), 2);
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tls://127.0.0.1:{port}\"\nca_file = {:?}\n\
         header = \"none\"\n",
        s.ca_file()
    ));
    assert_eq!(t.send(&msgs(&["secure one", "two\nlines"])).unwrap(), 2);
    let (_, got) = rx.join().unwrap();
    assert_eq!(got.unwrap(), msgs(&["secure one", "two\nlines"]));

    // The certificate is checked against server_name when one is given.
    let l = listener();
    let port = l.local_addr().unwrap().port();
    let rx = receive(l, Wire::OctetCounted, Some(server_config(&leaf, None)), 1);
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tls://127.0.0.1:{port}\"\nca_file = {:?}\n\
         server_name = \"other.test\"\n",
        s.ca_file()
    ));
    let e = t.send(&msgs(&["x"])).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "tls://127.0.0.1:{port}: certificate verify failed: certificate not valid for name \
             \"other.test\""
        )),
        "{e}"
    );
    let _ = rx.join();
}

#[test]
fn tls_refuses_a_receiver_signed_by_an_untrusted_ca() {
    let s = TlsSetup::new();
    let rogue = TestCa::new("Rogue CA");
    let leaf = rogue.leaf(&["127.0.0.1"], false);
    let l = listener();
    let port = l.local_addr().unwrap().port();
    let rx = receive(l, Wire::OctetCounted, Some(server_config(&leaf, None)), 1);
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tls://127.0.0.1:{port}\"\nca_file = {:?}\n",
        s.ca_file()
    ));
    let e = t.send(&msgs(&["must not leave"])).unwrap_err();
    assert!(matches!(e, TransportError::Connect(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("tls://127.0.0.1:{port}: certificate verify failed: UnknownIssuer")
    );
    let (_, got) = rx.join().unwrap();
    assert!(got.is_err(), "the receiver must not get data: {got:?}");

    // Without a ca_file the public roots apply, which do not know the test CA either.
    let l = listener();
    let port = l.local_addr().unwrap().port();
    let rx = receive(l, Wire::OctetCounted, Some(server_config(&leaf, None)), 1);
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tls://127.0.0.1:{port}\"\n"
    ));
    let e = t.send(&msgs(&["x"])).unwrap_err();
    assert!(e.to_string().ends_with("UnknownIssuer"), "{e}");
    let _ = rx.join();
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    let s = TlsSetup::new();
    let client_ca = TestCa::new("Test Client CA");
    let server_leaf = s.server_ca.leaf(&["127.0.0.1"], false);
    let client_leaf = client_ca.leaf(&["sensor-1.test"], true);
    let cert = s.dir.write("client.pem", &client_leaf.cert_pem);
    let key = s.dir.write("client.key", &client_leaf.key_pem);
    let server = server_config(&server_leaf, Some(&client_ca));

    let l = listener();
    let port = l.local_addr().unwrap().port();
    let rx = receive(l, Wire::OctetCounted, Some(server.clone()), 1);
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tls://127.0.0.1:{port}\"\nca_file = {:?}\n\
         client_cert = {:?}\nclient_key = {:?}\nheader = \"none\"\n",
        s.ca_file(),
        cert.display().to_string(),
        key.display().to_string()
    ));
    assert_eq!(t.send(&msgs(&["mutual"])).unwrap(), 1);
    let (_, got) = rx.join().unwrap();
    assert_eq!(got.unwrap(), msgs(&["mutual"]));

    // Without a client certificate the server's refusal is reported, not lost data.
    let l = listener();
    let port = l.local_addr().unwrap().port();
    let rx = receive(l, Wire::OctetCounted, Some(server), 1);
    let mut t = sink(&format!(
        "kind = \"syslog\"\naddress = \"tls://127.0.0.1:{port}\"\nca_file = {:?}\n",
        s.ca_file()
    ));
    let e = t.send(&msgs(&["x"])).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "tls://127.0.0.1:{port}: TLS alert from server: CertificateRequired"
        )),
        "{e}"
    );
    let (_, got) = rx.join().unwrap();
    assert!(got.is_err(), "{got:?}");
}

#[test]
fn bad_tls_files_fail_the_build() {
    let s = TlsSetup::new();
    let empty = s.dir.write("empty.pem", "not a certificate\n");
    for (extra, want) in [
        (
            format!("ca_file = {:?}", s.dir.path().join("missing.pem")),
            "cannot read ca_file",
        ),
        (
            format!("ca_file = {:?}", empty.display().to_string()),
            "holds no PEM certificate",
        ),
        (
            format!(
                "ca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}",
                s.ca_file(),
                s.ca_file(),
                empty.display().to_string()
            ),
            "cannot read client_key",
        ),
    ] {
        let cfg: SinkConfig = toml::from_str(&format!(
            "kind = \"syslog\"\naddress = \"tls://h:6514\"\n{extra}\n"
        ))
        .unwrap();
        let e = build(&cfg).err().unwrap();
        assert!(matches!(e, TransportError::Config(_)), "{e:?}");
        assert!(e.to_string().starts_with("tls://h:6514: "), "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
}
