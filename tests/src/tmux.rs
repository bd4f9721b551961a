//! A private tmux server for driving terminal programs in tests: its own socket (`-L`), so
//! parallel tests and a user's tmux never meet; killed (that server only) on drop, also when
//! the test fails.

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU64, Ordering},
};

static NEXT: AtomicU64 = AtomicU64::new(0);

pub struct Tmux {
    socket: String,
    pub session: String,
}

fn tmux(socket: &str, args: &[&str]) -> Result<Output, String> {
    Command::new("tmux")
        .arg("-L")
        .arg(socket)
        .args(args)
        .output()
        .map_err(|e| {
            format!("cannot run tmux (Debian package tmux; `cargo xtask setup` installs it): {e}")
        })
}

impl Tmux {
    /// Starts `command` (a shell command line) in a new detached session of `width` x
    /// `height` cells.
    pub fn start(tag: &str, width: u16, height: u16, command: &str) -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let socket = format!("sensor-tests-{tag}-{}-{n}", std::process::id());
        let t = Tmux {
            socket,
            session: tag.to_string(),
        };
        let out = tmux(
            &t.socket,
            &[
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                &t.session,
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
                command,
            ],
        )?;
        if !out.status.success() {
            return Err(format!(
                "tmux new-session failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(t)
    }

    /// The visible screen as text.
    pub fn capture(&self) -> Result<String, String> {
        let out = tmux(&self.socket, &["capture-pane", "-p", "-t", &self.session])?;
        if !out.status.success() {
            return Err(format!(
                "tmux capture-pane: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Types `keys` (tmux key names, e.g. `q`, `C-c`).
    pub fn send_keys(&self, keys: &str) -> Result<(), String> {
        let out = tmux(&self.socket, &["send-keys", "-t", &self.session, keys])?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tmux send-keys: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = tmux(&self.socket, &["kill-server"]);
    }
}
