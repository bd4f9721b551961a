//! Two network namespaces joined by a veth pair, for tests and the lab: real sockets, real
//! kernel paths, no traffic anywhere else. Everything is removed on drop, even when a test
//! panics: the namespaces (which takes the veth pair with them) and any process started in
//! them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A pair of namespaces `a` and `b` with `veth_a` (in a, address `addr_a`) and `veth_b` (in b,
/// `addr_b`) on a private /30.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub veth_a: String,
    pub veth_b: String,
    pub addr_a: [u8; 4],
    pub addr_b: [u8; 4],
    /// A second pair of addresses on the same veth (a second subnet): `alt_a` in a, `alt_b`
    /// in b, so tests can talk to "another host" over the same link.
    pub alt_a: [u8; 4],
    pub alt_b: [u8; 4],
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl NetnsPair {
    /// Creates the pair; `tag` (a few letters) makes the names readable in `ip netns`.
    pub fn create(tag: &str) -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let subnet = (std::process::id() as u8).wrapping_add(n as u8 * 7);
        let pair = NetnsPair {
            a: format!("sens-{tag}-{id}-a"),
            b: format!("sens-{tag}-{id}-b"),
            // Interface names are at most 15 bytes.
            veth_a: format!("sva{id}"),
            veth_b: format!("svb{id}"),
            addr_a: [10, 213, subnet, 1],
            addr_b: [10, 213, subnet, 2],
            alt_a: [10, 214, subnet, 1],
            alt_b: [10, 214, subnet, 2],
            children: Vec::new(),
        };
        // From here on, drop cleans up whatever was made.
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        ip(&[
            "link",
            "add",
            &pair.veth_a,
            "netns",
            &pair.a,
            "type",
            "veth",
            "peer",
            "name",
            &pair.veth_b,
            "netns",
            &pair.b,
        ])?;
        for (ns, dev, addr) in [
            (&pair.a, &pair.veth_a, pair.addr_a),
            (&pair.b, &pair.veth_b, pair.addr_b),
        ] {
            let cidr = format!("{}.{}.{}.{}/30", addr[0], addr[1], addr[2], addr[3]);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (ns, dev, addr) in [
            (&pair.a, &pair.veth_a, pair.alt_a),
            (&pair.b, &pair.veth_b, pair.alt_b),
        ] {
            let cidr = format!("{}.{}.{}.{}/30", addr[0], addr[1], addr[2], addr[3]);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
        }
        Ok(pair)
    }

    pub fn addr_a_str(&self) -> String {
        let a = self.addr_a;
        format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
    }

    pub fn alt_b_str(&self) -> String {
        let b = self.alt_b;
        format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])
    }

    pub fn addr_b_str(&self) -> String {
        let b = self.addr_b;
        format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])
    }

    /// Starts `program args` inside namespace `ns`; the process is ended (by its pid) and
    /// reaped on drop if still running.
    pub fn spawn_in(
        &mut self,
        ns: &str,
        program: &str,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<u32, String> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {program} in {ns}: {e}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Starts `program args` in the network namespace `ns` only: unlike `ip netns exec`, the
    /// process keeps the host's mounts, so what it pins in /sys/fs/bpf outlives it as it
    /// would on a real host (`ip netns exec` mounts a private /sys per invocation).
    pub fn spawn_net_only(
        &mut self,
        ns: &str,
        program: &std::path::Path,
        args: &[String],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<u32, String> {
        use std::os::unix::process::CommandExt;
        let netns = File::open(format!("/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
        let fd = netns.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: setns is async-signal-safe; fd stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {} in {ns}: {e}", program.display()))?;
        drop(netns);
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Sends SIGTERM to a process started with [`Self::spawn_in`] and waits for it.
    pub fn stop(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        self.signal(pid, libc::SIGTERM)
    }

    /// Sends `signal` to a process started here and waits for it to exit.
    pub fn signal(&mut self, pid: u32, signal: i32) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|c| c.id() == pid)?;
        let mut child = self.children.remove(i);
        // SAFETY: kill on the pid of a child we started and have not reaped.
        unsafe { libc::kill(pid as i32, signal) };
        child.wait().ok()
    }

    /// Runs `f` on a new thread inside namespace `ns` (sockets it opens live there).
    pub fn in_ns<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, String>> {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: setns with a valid namespace fd moves only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SAFETY: kill on the pid of a child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        // Deleting a namespace destroys the veth pair inside it.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}
