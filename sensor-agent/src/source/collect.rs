//! NetFlow/IPFIX over UDP as a source for the event loop: `sensor-agent collect`.
//!
//! Why: routers and probes already export flow records; the collector receives them on the
//! address the user names, decodes them ([`records::netflow::Decoder`]) and hands them to the
//! same [`Stitcher`] and engine as cloud flow logs. The engine runs on the records' clock:
//! the stitcher ticks on each record's end (its export time, in the order records arrive), so
//! an exporter that replays a two-hour capture in a second raises the capture's alarms.
//!
//! It never binds an address the user did not give (loopback is the safe choice for a probe
//! on the same host), never blocks the loop (the socket is tokio's), and never trusts a
//! datagram: each is at most 64 KiB and decoded with bounds; one that does not decode is
//! counted. It stops at the stop signal (Ctrl-C, SIGTERM, `--duration`) with an `End` at
//! the latest record time.

use std::{collections::VecDeque, convert::Infallible, net::SocketAddr};

use tokio::{net::UdpSocket, sync::watch};

use crate::source::{
    records::{
        netflow::Decoder,
        stitch::{StitchConfig, Stitcher},
        Aggregate, Telemetry,
    },
    Feedback, FlowUpdate, Source, SourceEvent,
};

/// Flow updates per event at most.
const BATCH_FLOWS: usize = 1024;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

pub struct CollectSource {
    socket: UdpSocket,
    pub decoder: Decoder,
    pub stitcher: Stitcher,
    stop: watch::Receiver<bool>,
    buf: Vec<u8>,
    pending: VecDeque<Aggregate>,
    /// Datagrams of each version: the first decoded one names the telemetry.
    pub first: Option<Telemetry>,
    /// Datagrams of a version other than the first (still used; alarms name the first).
    pub other_versions: u64,
    ended: bool,
}

impl CollectSource {
    /// Binds `listen` (UDP).
    pub async fn bind(
        listen: SocketAddr,
        cfg: StitchConfig,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(listen).await?;
        Ok(CollectSource {
            socket,
            decoder: Decoder::new(),
            stitcher: Stitcher::new(cfg),
            stop,
            buf: vec![0; MAX_DATAGRAM],
            pending: VecDeque::new(),
            first: None,
            other_versions: 0,
            ended: false,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives one datagram (or the stop signal: `false`) and decodes it into `pending`.
    async fn receive(&mut self) -> bool {
        let (n, from) = tokio::select! {
            // Datagrams already queued are read before a stop is honoured.
            biased;
            r = self.socket.recv_from(&mut self.buf) => match r {
                Ok(x) => x,
                // An ICMP error for an earlier send or a truncated read: nothing to decode.
                Err(_) => return true,
            },
            _ = self.stop.changed() => return false,
        };
        let mut out = Vec::new();
        let version = self.decoder.decode(from, &self.buf[..n], &mut out);
        match (version, self.first) {
            (Some(v), None) => self.first = Some(v),
            (Some(v), Some(f)) if v != f => self.other_versions += 1,
            _ => {}
        }
        self.pending.extend(out);
        true
    }

    /// Waits until a datagram decodes, so the telemetry the alarms name is known before the
    /// engine starts; `None` when stopped first.
    pub async fn first_version(&mut self) -> Option<Telemetry> {
        while self.first.is_none() {
            if !self.receive().await {
                return None;
            }
        }
        self.first
    }

    /// The next events: the records received so far up to a tick boundary.
    pub async fn next_events(&mut self) -> Option<Vec<SourceEvent>> {
        if self.ended {
            return None;
        }
        let mut flows: Vec<FlowUpdate> = Vec::new();
        loop {
            while let Some(a) = self.pending.front() {
                if let Some(now) = self.stitcher.advance(a.end_ns) {
                    let mut events = Vec::new();
                    if !flows.is_empty() {
                        events.push(SourceEvent::Flows(flows));
                    }
                    events.push(SourceEvent::Tick(now));
                    return Some(events);
                }
                if let Some(a) = self.pending.pop_front() {
                    if let Some(u) = self.stitcher.push(&a) {
                        flows.push(u);
                    }
                }
                if flows.len() >= BATCH_FLOWS {
                    return Some(vec![SourceEvent::Flows(flows)]);
                }
            }
            if !flows.is_empty() {
                return Some(vec![SourceEvent::Flows(flows)]);
            }
            if !self.receive().await {
                self.ended = true;
                let mut events = Vec::new();
                if self.stitcher.counters.records > 0 {
                    events.push(SourceEvent::End(self.stitcher.latest()));
                }
                return Some(events);
            }
        }
    }
}

impl Source for CollectSource {
    type Error = Infallible;

    async fn next_batch(&mut self) -> Result<Option<Vec<SourceEvent>>, Infallible> {
        Ok(self.next_events().await)
    }

    /// Flows the engine ended are forgotten: their next records start new flows.
    fn feedback(&mut self, fb: Feedback<'_>) -> Result<(), Infallible> {
        self.stitcher.ended(fb.ended);
        Ok(())
    }
}
