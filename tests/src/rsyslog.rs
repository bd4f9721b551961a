//! A real rsyslog (Debian's package) as the receiver in sink tests: UDP, plain TCP and TLS
//! (gnutls, with a CA and server certificate the test makes with openssl) inputs on loopback
//! ports, every message written raw, one per line, to a file the test reads.
//!
//! It runs as a child process with its own configuration and work directory (never the
//! system's), can be stopped and started again on the same ports, and is killed on drop.

use std::{
    fs,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::wait::wait_until;

/// CA, server certificate and key for the TLS input, and a second CA nobody trusts.
pub struct TestPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A CA that did not sign the server certificate.
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

impl TestPki {
    /// Makes a CA and a certificate for `127.0.0.1` / `localhost` signed by it, in `dir`.
    pub fn create(dir: &Path) -> Result<Self, String> {
        for ca in ["ca", "other-ca"] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=sensor test {ca}"),
                ],
            )?;
        }
        fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").map_err(|e| e.to_string())?;
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        )?;
        Ok(TestPki {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            other_ca: dir.join("other-ca.pem"),
        })
    }
}

/// A running (or stopped) rsyslogd with UDP, TCP and TLS inputs.
pub struct Rsyslog {
    dir: PathBuf,
    pub udp_port: u16,
    pub tcp_port: u16,
    pub tls_port: u16,
    /// Network namespace to run in (`None`: this process's).
    netns: Option<String>,
    child: Option<Child>,
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Rsyslog {
    /// Writes the configuration into `dir` and starts rsyslogd.
    pub fn start(dir: &Path, pki: &TestPki) -> Result<Self, String> {
        let mut r = Self::configure(dir, pki)?;
        r.resume()?;
        Ok(r)
    }

    /// Writes the configuration (choosing the ports) without starting rsyslogd: a test can
    /// point a sender at a receiver that is not there yet, then [`Self::resume`].
    pub fn configure(dir: &Path, pki: &TestPki) -> Result<Self, String> {
        assert!(Path::new("/usr/sbin/rsyslogd").exists(), "sink test cannot run: rsyslogd is missing (cargo xtask setup installs Debian's rsyslog and rsyslog-gnutls)");
        let r = Rsyslog {
            netns: None,
            dir: dir.to_path_buf(),
            udp_port: free_udp_port(),
            tcp_port: free_tcp_port(),
            tls_port: free_tcp_port(),
            child: None,
        };
        let work = dir.join("work");
        fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off"
       defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}" defaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imtcp" maxSessions="100")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="sink") {{ action(type="omfile" file="{out}" template="raw" flushOnTXEnd="on" asyncWriting="off") }}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="sink")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="sink" supportOctetCountedFraming="on")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="sink" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
"#,
            work = work.display(),
            ca = pki.ca.display(),
            cert = pki.cert.display(),
            key = pki.key.display(),
            out = r.output().display(),
            udp = r.udp_port,
            tcp = r.tcp_port,
            tls = r.tls_port,
        );
        fs::write(dir.join("rsyslog.conf"), conf).map_err(|e| e.to_string())?;
        Ok(r)
    }

    /// The file every received message is appended to (raw, one per line).
    pub fn output(&self) -> PathBuf {
        self.dir.join("received.log")
    }

    /// Runs rsyslogd inside network namespace `ns` from now on (its ports are then that
    /// namespace's; loopback there is private to the test).
    pub fn in_netns(&mut self, ns: &str) {
        self.netns = Some(ns.to_string());
    }

    /// Starts rsyslogd again on the same ports and waits until the TCP input accepts.
    pub fn resume(&mut self) -> Result<(), String> {
        let log = fs::File::create(self.dir.join("rsyslogd.stderr")).map_err(|e| e.to_string())?;
        let mut cmd = match &self.netns {
            // `ip netns exec` execs rsyslogd, so the child's pid is rsyslogd's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/sbin/rsyslogd"]);
                c
            }
            None => Command::new("/usr/sbin/rsyslogd"),
        };
        let child = cmd
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start rsyslogd: {e}"))?;
        self.child = Some(child);
        let (tls, tcp) = (self.tls_port, self.tcp_port);
        let netns = self.netns.clone();
        wait_until(
            Duration::from_secs(10),
            "rsyslogd's TCP and TLS inputs",
            || {
                let probe = move || {
                    std::net::TcpStream::connect(("127.0.0.1", tls)).is_ok()
                        && std::net::TcpStream::connect(("127.0.0.1", tcp)).is_ok()
                };
                match &netns {
                    Some(ns) => crate::netns::NetnsPair::in_ns(ns, probe)
                        .join()
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(false),
                    None => probe(),
                }
            },
        )
        .map_err(|e| {
            format!(
                "rsyslogd did not open its inputs ({e}): {}",
                fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
            )
        })
    }

    /// Stops rsyslogd (SIGTERM to the process we started, then wait).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on the pid of our own unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Received messages so far.
    pub fn messages(&self) -> Vec<String> {
        fs::read_to_string(self.output())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until at least `n` messages arrived (or the timeout passed); returns them.
    /// A timeout is not an error here: the caller's assertion on what arrived says what is
    /// missing.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        let what = format!("{n} messages at rsyslog");
        let _ = wait_until(timeout, &what, || self.messages().len() >= n);
        self.messages()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}
