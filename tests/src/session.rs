//! A quiet TCP session between the two namespaces of a [`NetnsPair`]: a server in `b`, a
//! client in `a`, one side sending a short keepalive every period while the other only
//! acknowledges, the way a mining client submits shares or a pool pushes jobs. Threads, not
//! processes: they end with the session, and the namespace pair's drop cleans up the rest.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{alarms::now_ns, netns::NetnsPair};

/// Who sends the keepalives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    Client,
    Server,
}

/// A session once connected: the speaker's thread (the wall times of its sends), the
/// client's local port, and the wall times just before and after `connect`.
pub struct Session {
    pub speaker: JoinHandle<Result<Result<Vec<u64>, String>, String>>,
    pub client_port: u16,
    pub connected: (u64, u64),
}

/// Sends a keepalive every `period` for `length`; the wall time of each send.
fn keepalives(s: &mut TcpStream, period: Duration, length: Duration) -> Result<Vec<u64>, String> {
    let start = Instant::now();
    let mut sends = Vec::new();
    let mut tick = 1u32;
    while start.elapsed() < length {
        // Pacing, not synchronisation: the keepalive period is the traffic shown.
        let due = start + period * tick;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        s.write_all(b"keepalive\n").map_err(|e| e.to_string())?;
        sends.push(now_ns());
        tick += 1;
    }
    Ok(sends)
}

/// Reads until the peer closes (or two minutes of silence).
fn drain(s: &mut TcpStream) -> Result<Vec<u64>, String> {
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    while s.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
    Ok(Vec::new())
}

/// Starts the session to `pair.addr_b:port` and returns once the client connected.
pub fn start(
    pair: &NetnsPair,
    port: u16,
    speaker: Speaker,
    period: Duration,
    length: Duration,
) -> Session {
    let (bound_tx, bound_rx) = mpsc::channel();
    let server = NetnsPair::in_ns(&pair.b, move || -> Result<Vec<u64>, String> {
        let l = TcpListener::bind(("0.0.0.0", port)).map_err(|e| e.to_string())?;
        let _ = bound_tx.send(());
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        match speaker {
            Speaker::Server => keepalives(&mut s, period, length),
            Speaker::Client => drain(&mut s),
        }
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server bound its port");
    let target: SocketAddr = format!("{}:{port}", pair.addr_b_str())
        .parse()
        .expect("address");
    let (conn_tx, conn_rx) = mpsc::channel();
    let client = NetnsPair::in_ns(&pair.a, move || -> Result<Vec<u64>, String> {
        let before = now_ns();
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .map_err(|e| format!("connect {target}: {e}"))?;
        let local = s.local_addr().map_err(|e| e.to_string())?.port();
        let _ = conn_tx.send((local, (before, now_ns())));
        match speaker {
            Speaker::Client => keepalives(&mut s, period, length),
            Speaker::Server => drain(&mut s),
        }
    });
    let (client_port, connected) = conn_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the client connected");
    // The listening side ends with the session; nothing waits for it.
    let speaker = match speaker {
        Speaker::Client => {
            drop(server);
            client
        }
        Speaker::Server => {
            drop(client);
            server
        }
    };
    Session {
        speaker,
        client_port,
        connected,
    }
}
