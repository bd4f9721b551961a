//! Sources: where frames and flows come from. Each source turns what it reads (the kernel's
//! maps and rings, a capture file) into [`SourceEvent`]s with explicit timestamps and never
//! decides anything about them: the engine does, and the event loop
//! ([`crate::pipeline::run`]) carries events from a source to the engine and the engine's
//! decisions back ([`Feedback`]).
//!
//! - [`live`]: the datapath attached to interfaces; flows read on the poll interval, the
//!   payload and trace rings read as soon as the kernel writes them.
//! - [`replay`]: capture files, read on a blocking thread, parsed by [`packet`] (or pushed
//!   through the kernel program by [`datapath`]'s test runs), on the capture's own clock.
//! - [`ingest`]: cloud flow logs and DNS query logs, parsed by [`records`] and stitched from
//!   aggregate records back into flows, on the records' own clock.
//! - [`collect`]: NetFlow v5/v9 and IPFIX received over UDP, decoded by [`records::netflow`]
//!   and stitched the same way.

pub mod capture;
pub mod collect;
pub mod datapath;
pub mod ingest;
pub mod live;
pub mod packet;
pub mod pins;
pub mod process;
pub mod records;
pub mod replay;
pub mod settings;
pub mod sockets;

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use sensor_common::{FlowKey, FlowStats, PayloadEvent, TunnelInfo, PAYLOAD_DNS};

/// Something the event loop can read events from.
///
/// `next_batch` yields the next events in order (ending with a [`SourceEvent::Tick`] or
/// [`SourceEvent::End`] when the engine should evaluate), `None` when the input ended or the
/// source was stopped. `feedback` receives what the engine decided at each tick.
pub trait Source {
    type Error: std::error::Error + Send + Sync + 'static;

    fn next_batch(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<Vec<SourceEvent>>, Self::Error>>;

    fn feedback(&mut self, fb: Feedback<'_>) -> Result<(), Self::Error>;
}

/// One thing a source saw, in the order the engine must see it.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// A frame parsed in user space (replay with the user engine).
    Packet(PacketEvent),
    /// Kernel flow counters read at a poll, with their first and last times.
    Flows(Vec<FlowUpdate>),
    /// A payload copy: the first bytes of a flow's first payload packets, or a DNS message.
    Payload(PayloadCopy),
    /// One payload message of a watched flow (kernel trace).
    Message(MessageEvent),
    /// A DNS resolution as a resolver logged it (cloud DNS query logs): the question and its
    /// answers, which bind names to addresses as answers seen on the wire do.
    Resolved(Arc<Resolution>),
    /// What this host knows of flows of the poll (live only): forwarded or its own, and
    /// which process owns the socket ([`process`]). Follows the `Flows` it is about.
    Host(Vec<process::HostFlow>),
    /// Evaluate at this time (ns since the epoch): every poll interval, of wall time live or
    /// of capture time in replay.
    Tick(u64),
    /// The input ended at this time (a replay's last frame): evaluate once more and send the
    /// last state of every open alarm.
    End(u64),
}

/// A frame attributed to a flow by the user-space parser.
#[derive(Clone, Debug)]
pub struct PacketEvent {
    pub key: FlowKey,
    /// Direction index of the sender (`DIR_LO_TO_HI` or `DIR_HI_TO_LO`).
    pub dir: usize,
    /// Bytes on the wire.
    pub wire_len: u64,
    pub tcp_flags: u8,
    pub ts_ns: u64,
    /// Transport payload as captured (empty: none).
    pub payload: Bytes,
    /// UDP or TCP port 53.
    pub dns: bool,
    /// Transport payload length on the wire, for timing a watched flow's messages (0: none).
    pub message_size: u64,
    /// The tunnel the frame came out of (the flow records it if this packet creates it).
    pub tunnel: Option<TunnelInfo>,
}

/// A flow as the kernel counted it.
#[derive(Clone, Debug)]
pub struct FlowUpdate {
    pub key: FlowKey,
    pub stats: FlowStats,
    pub first_ns: u64,
    pub last_ns: u64,
    /// The flow's `TUNNELS` entry, for a flow created from a decapsulated packet (sent once
    /// per flow by the live source; every time by replay). Boxed: every poll carries an
    /// update for each kernel flow, and almost none has a tunnel (inline it made each
    /// update 40 bytes larger).
    pub tunnel: Option<Box<TunnelInfo>>,
}

#[derive(Clone, Debug)]
pub struct PayloadCopy {
    pub key: FlowKey,
    pub dir: usize,
    pub dns: bool,
    pub data: Bytes,
    pub ts_ns: u64,
}

impl PayloadCopy {
    /// A record of the kernel's payload ring, seen at `ts_ns`.
    pub fn from_ring(e: &PayloadEvent, ts_ns: u64) -> Self {
        let len = (e.len as usize).min(e.data.len());
        PayloadCopy {
            key: e.key,
            dir: e.dir as usize,
            dns: e.kind == PAYLOAD_DNS,
            data: Bytes::copy_from_slice(&e.data[..len]),
            ts_ns,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct MessageEvent {
    pub key: FlowKey,
    pub dir: usize,
    /// Transport payload bytes.
    pub size: u64,
    pub ts_ns: u64,
}

/// A query and its answers as a resolver logged them (Route 53 Resolver, Cloud DNS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// When the query was answered, ns since the Unix epoch.
    pub ts_ns: u64,
    /// Who asked, when the log says.
    pub client: Option<IpAddr>,
    /// The name asked for, as logged (any case, trailing dot or not).
    pub name: String,
    /// Answer records in the order logged.
    pub answers: Vec<Answer>,
}

/// One answer record of a logged resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Owner name when the log gives it; `None`: the next name on the chain from the question
    /// (Route 53 logs answers in order without owners).
    pub owner: Option<String>,
    /// Seconds; the log's TTL, or `ingest.dns_ttl` for logs that carry none.
    pub ttl: u32,
    pub data: AnswerData,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerData {
    /// An A or AAAA record.
    Addr(IpAddr),
    /// A CNAME record's target.
    Alias(String),
}

/// What the engine decided at a tick that a source must act on: flows to forget (the kernel
/// deletes them from its map) and the watch set to mirror (the kernel traces watched flows).
/// Sources that keep no kernel state ignore it.
#[derive(Clone, Copy, Debug)]
pub struct Feedback<'a> {
    pub ended: &'a [FlowKey],
    pub watch_added: &'a [FlowKey],
    /// Flows still watched, whose trace budget is renewed.
    pub watch_kept: &'a [FlowKey],
    pub watch_removed: &'a [FlowKey],
}
