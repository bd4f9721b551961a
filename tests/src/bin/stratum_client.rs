//! A stratum v1 miner's opening, as its own process: the process-attribution test needs a
//! client whose pid, name and cgroup are its own (a thread of the test would share the test's).
//!
//! `stratum-client ADDR:PORT SECONDS`: connects, subscribes and authorizes, reads the pool's
//! answers, then submits a share every second for SECONDS and exits. A failure is one line on
//! stderr and exit status 1.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

fn main() {
    if let Err(e) = run() {
        eprintln!("stratum-client: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: stratum-client ADDR:PORT SECONDS";
    let target = args.next().ok_or(usage)?;
    let seconds: u64 = args
        .next()
        .ok_or(usage)?
        .parse()
        .map_err(|e| format!("SECONDS: {e}"))?;
    let mut s = TcpStream::connect(&target).map_err(|e| format!("connect {target}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut send = |line: &str| -> Result<(), String> {
        s.write_all(line.as_bytes())
            .and_then(|()| s.write_all(b"\n"))
            .map_err(|e| format!("send: {e}"))
    };
    send(r#"{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}"#)?;
    send(r#"{"id":2,"method":"mining.authorize","params":["worker1","x"]}"#)?;
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read the pool's answer: {e}"))?;
    }
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut id = 3;
    while Instant::now() < end {
        // The share cadence of a slow miner: the session's shape, not synchronisation.
        std::thread::sleep(Duration::from_secs(1));
        send(&format!(
            r#"{{"id":{id},"method":"mining.submit","params":["worker1","job1","00000000","5f5e1000","1a2b3c4d"]}}"#
        ))?;
        id += 1;
    }
    Ok(())
}
