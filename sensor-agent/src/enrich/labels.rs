//! Labels: what the payload classifiers, the label cache and threat intelligence say about a
//! conversation, for the `mining_protocol`, `blockchain_p2p` and `mining_infrastructure` rules.
//!
//! Payload copies come from either source (the kernel's ring buffer live, the capture in
//! replay) through [`Labeler::payload`], which applies the same limits as the datapath (the
//! first payload packets of each sender, the first bytes of each), so both sources label the
//! same flows. Identifications go to the conversation and to a cache keyed by the two hosts:
//! later conversations between them (reconnects, a TLS session to the same pool) carry the
//! label as "cached" until it expires. DNS messages feed the binder, so a server address can
//! be matched to a pool domain the client looked up.
//!
//! It never raises alarms itself (detectors read [`ConvLabels`]), never trusts an answer it did
//! not see asked for, and bounds everything it keeps per flow.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use sensor_common::{Addr, FlowKey};
use serde::{Deserialize, Serialize};

use crate::{
    enrich::classify::{
        parse_client_hello, Direction, FlowClassifier, Identification, IdentificationSnapshot,
        Transport,
    },
    enrich::dns::{name_from_text, RData, Record},
    enrich::intel::{self, BinderConfig, DnsBinder, InfraMatch, IntelConfig, IntelStore},
    flow::{
        record::ip_of,
        table::{ConvKey, KeySnap},
    },
    scoring::periodicity::SampleRing,
    source::{AnswerData, Resolution},
    units::HumanDuration,
};

/// Messages remembered per direction of a watched flow, for periodicity inside it (16 bytes
/// each).
pub const MESSAGE_SAMPLES: usize = 64;
/// Conversations whose messages are timed at once, at most (about 1 KiB each: 20 MiB).
pub const MAX_MESSAGE_SERIES: usize = 20_000;

/// How a conversation came by its identification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confidence {
    /// Its own payload said so.
    Observed,
    /// An earlier conversation between the same two hosts was identified.
    Cached,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Observed => "observed",
            Confidence::Cached => "cached",
        }
    }
}

/// TLS details of a conversation's most recent ClientHello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub ja4: String,
    pub alpn: Vec<String>,
}

/// Everything known about one conversation beyond its counters.
#[derive(Clone, Debug, Default)]
pub struct ConvLabels {
    pub identification: Option<(Identification, Confidence)>,
    pub tls: Option<TlsInfo>,
    /// Known-infrastructure match of the server, looked up once per conversation start.
    pub infra: Option<InfraMatch>,
    /// Time and size of each direction's payload messages in the conversation's watched flow,
    /// for periodicity and size regularity inside one flow; bounded. Fed by the kernel's
    /// message trace live, by the capture in replay.
    pub messages: Option<Box<MessageSeries>>,
    infra_checked_for: Option<u64>,
}

/// The payload messages of one watched flow, per direction.
#[derive(Clone, Debug)]
pub struct MessageSeries {
    pub flow: FlowKey,
    /// First message timed (the flow was watched from about then).
    pub since_ns: u64,
    pub client: SampleRing,
    pub server: SampleRing,
}

impl MessageSeries {
    fn new(flow: FlowKey, since_ns: u64) -> Self {
        MessageSeries {
            flow,
            since_ns,
            client: SampleRing::new(MESSAGE_SAMPLES),
            server: SampleRing::new(MESSAGE_SAMPLES),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelConfig {
    /// How long an identification labels later conversations between the same two hosts.
    pub cache_ttl: HumanDuration,
    /// Flows whose payload is being classified at once, at most (more are counted, skipped).
    pub max_classified_flows: usize,
    /// Hosts pairs in the label cache, at most (the oldest entries go first).
    pub max_cached_pairs: usize,
}

impl Default for LabelConfig {
    fn default() -> Self {
        LabelConfig {
            cache_ttl: HumanDuration::secs(24 * 3600),
            max_classified_flows: 200_000,
            max_cached_pairs: 100_000,
        }
    }
}

/// Limits of the payload sampling, the same as the datapath's.
#[derive(Clone, Copy, Debug)]
pub struct SampleLimits {
    pub packets: u32,
    pub bytes: u32,
    pub dns_bytes: u32,
}

struct FlowState {
    classifier: FlowClassifier,
    samples_left: [u32; 2],
    tls_seen: bool,
}

#[derive(Clone, Debug, Default)]
pub struct LabelCounters {
    /// Payload packets sampled for the classifiers (at most `capture.payload_packets` per
    /// sender of each flow, whichever source fed them).
    pub payloads: u64,
    pub dns_messages: u64,
    pub identified_flows: u64,
    /// Flows not classified because `max_classified_flows` were already being classified.
    pub flows_skipped: u64,
    pub cache_hits: u64,
    /// Payload messages of watched flows timed.
    pub messages: u64,
    /// Messages not timed because [`MAX_MESSAGE_SERIES`] conversations were already timed.
    pub messages_skipped: u64,
}

pub struct Labeler {
    cfg: LabelConfig,
    limits: SampleLimits,
    flows: HashMap<FlowKey, FlowState>,
    convs: HashMap<ConvKey, ConvLabels>,
    cache: HashMap<(Addr, Addr), (Identification, u64)>,
    dns: DnsBinder,
    intel: Option<Arc<IntelStore>>,
    /// Conversations with a message series (bounded by [`MAX_MESSAGE_SERIES`]).
    message_series: usize,
    pub counters: LabelCounters,
}

/// One payload copy, with the flow's orientation already resolved by the caller.
pub struct Payload<'a> {
    pub key: FlowKey,
    pub conv: ConvKey,
    /// Whether the client sent it.
    pub from_client: bool,
    pub dns: bool,
    pub data: &'a [u8],
    pub ts_ns: u64,
}

impl Labeler {
    pub fn new(cfg: LabelConfig, limits: SampleLimits, intel: Option<Arc<IntelStore>>) -> Self {
        Labeler {
            cfg,
            limits,
            flows: HashMap::new(),
            convs: HashMap::new(),
            cache: HashMap::new(),
            dns: DnsBinder::new(BinderConfig::default()),
            intel,
            message_series: 0,
            counters: LabelCounters::default(),
        }
    }

    /// The payload sampling limits (the same as the datapath's).
    pub fn limits(&self) -> SampleLimits {
        self.limits
    }

    pub fn intel(&self) -> Option<&IntelStore> {
        self.intel.as_deref()
    }

    pub fn dns(&self) -> &DnsBinder {
        &self.dns
    }

    pub fn get(&self, conv: &ConvKey) -> Option<&ConvLabels> {
        self.convs.get(conv)
    }

    /// Takes one payload copy; returns whether the conversation's labels changed.
    pub fn payload(&mut self, p: &Payload) -> bool {
        if p.dns {
            self.counters.dns_messages += 1;
            let (client, server) = (ip_of(&p.conv.client), ip_of(&p.conv.server));
            let client_port =
                if p.key.addr_lo == p.conv.client && p.key.port_hi == p.conv.server_port {
                    p.key.port_lo
                } else {
                    p.key.port_hi
                };
            let (cs, ss) = (
                SocketAddr::new(client, client_port),
                SocketAddr::new(server, p.conv.server_port),
            );
            let (src, dst) = if p.from_client { (cs, ss) } else { (ss, cs) };
            let n = p.data.len().min(self.limits.dns_bytes as usize);
            self.dns
                .observe_payload(src, dst, &p.data[..n], p.conv.proto == 6, p.ts_ns);
            return false;
        }
        let transport = match p.conv.proto {
            6 => Transport::Tcp,
            17 => Transport::Udp,
            _ => return false,
        };
        if !self.flows.contains_key(&p.key) {
            if self.flows.len() >= self.cfg.max_classified_flows {
                self.counters.flows_skipped += 1;
                return false;
            }
            let n = self.limits.packets;
            self.flows.insert(
                p.key,
                FlowState {
                    classifier: FlowClassifier::new(transport),
                    samples_left: [n, n],
                    tls_seen: false,
                },
            );
        }
        let Some(state) = self.flows.get_mut(&p.key) else {
            return false;
        };
        let side = usize::from(!p.from_client);
        if state.samples_left[side] == 0 {
            return false;
        }
        state.samples_left[side] -= 1;
        self.counters.payloads += 1;
        let data = &p.data[..p.data.len().min(self.limits.bytes as usize)];
        let dir = if p.from_client {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let mut changed = false;
        if p.from_client && !state.tls_seen {
            if let Some(hello) = parse_client_hello(data) {
                state.tls_seen = true;
                let labels = self.convs.entry(p.conv).or_default();
                labels.tls = Some(TlsInfo {
                    sni: hello.sni,
                    ja4: hello.ja4,
                    alpn: hello.alpn,
                });
                changed = true;
            }
        }
        if let Some(found) = state.classifier.feed(data, dir) {
            if !self
                .convs
                .get(&p.conv)
                .is_some_and(|l| matches!(l.identification, Some((_, Confidence::Observed))))
            {
                self.counters.identified_flows += 1;
            }
            let expiry = p.ts_ns.saturating_add(self.cfg.cache_ttl.as_nanos());
            if self.cache.len() >= self.cfg.max_cached_pairs {
                // Bounded: drop the entry closest to expiry.
                if let Some(oldest) = self
                    .cache
                    .iter()
                    .min_by_key(|(_, (_, e))| *e)
                    .map(|(k, _)| *k)
                {
                    self.cache.remove(&oldest);
                }
            }
            self.cache
                .insert((p.conv.client, p.conv.server), (found.clone(), expiry));
            self.convs.entry(p.conv).or_default().identification =
                Some((found, Confidence::Observed));
            changed = true;
        }
        changed
    }

    /// A resolution a resolver logged (cloud DNS query logs): its answers bind names to
    /// addresses through the same binder as answers seen on the wire. Answers without an
    /// owner take the next name on the CNAME chain from the question, as logged in order.
    pub fn resolved(&mut self, r: &Resolution) {
        self.counters.dns_messages += 1;
        let Some(qname) = name_from_text(&r.name) else {
            return;
        };
        let mut chain = qname.clone();
        let mut records = Vec::with_capacity(r.answers.len());
        for a in &r.answers {
            let owner = match &a.owner {
                Some(o) => match name_from_text(o) {
                    Some(o) => o,
                    None => continue,
                },
                None => chain.clone(),
            };
            let data = match &a.data {
                AnswerData::Addr(std::net::IpAddr::V4(v4)) => RData::A(*v4),
                AnswerData::Addr(std::net::IpAddr::V6(v6)) => RData::Aaaa(*v6),
                AnswerData::Alias(target) => match name_from_text(target) {
                    Some(t) => {
                        if a.owner.is_none() {
                            chain = t.clone();
                        }
                        RData::Cname(t)
                    }
                    None => continue,
                },
            };
            records.push(Record {
                name: owner,
                ttl: a.ttl,
                data,
            });
        }
        self.dns.observe_logged(&qname, &records, r.ts_ns);
    }

    /// Times one payload message (`size` payload bytes on the wire) of a watched flow.
    /// Messages of one flow only: a reconnect starts a new series, so regular reconnects are
    /// judged across connections, not here. Returns whether it was kept.
    pub fn message(
        &mut self,
        key: &FlowKey,
        conv: &ConvKey,
        from_client: bool,
        size: u64,
        ts_ns: u64,
    ) -> bool {
        if size == 0 {
            return false;
        }
        let has_series = self.convs.get(conv).is_some_and(|l| l.messages.is_some());
        if !has_series && self.message_series >= MAX_MESSAGE_SERIES {
            self.counters.messages_skipped += 1;
            return false;
        }
        let labels = self.convs.entry(*conv).or_default();
        let series = match labels.messages.as_mut() {
            Some(series) => series,
            None => {
                self.message_series += 1;
                labels
                    .messages
                    .insert(Box::new(MessageSeries::new(*key, ts_ns)))
            }
        };
        if series.flow != *key {
            **series = MessageSeries::new(*key, ts_ns);
        }
        let ring = if from_client {
            &mut series.client
        } else {
            &mut series.server
        };
        ring.push(ts_ns, size);
        self.counters.messages += 1;
        true
    }

    /// Brings a conversation's labels up to date before the detectors look at it: the cached
    /// identification of its two hosts, and the known-infrastructure match of its server at
    /// the time it started.
    pub fn refresh(&mut self, conv: &ConvKey, start_ns: u64, now_ns: u64) {
        let cached = match self.convs.get(conv) {
            Some(l) if l.identification.is_some() => None,
            _ => self
                .cache
                .get(&(conv.client, conv.server))
                .filter(|(_, expiry)| *expiry >= now_ns)
                .map(|(i, _)| i.clone()),
        };
        let needs_infra = self.intel.is_some()
            && self
                .convs
                .get(conv)
                .is_none_or(|l| l.infra_checked_for != Some(start_ns));
        if cached.is_none() && !needs_infra {
            return;
        }
        let labels = self.convs.entry(*conv).or_default();
        if let Some(i) = cached {
            self.counters.cache_hits += 1;
            labels.identification = Some((i, Confidence::Cached));
        }
        if needs_infra {
            if let Some(store) = &self.intel {
                labels.infra = intel::lookup_server(
                    &store.snapshot(),
                    &self.dns,
                    ip_of(&conv.server),
                    start_ns,
                );
            }
            labels.infra_checked_for = Some(start_ns);
        }
    }

    /// Forgets a flow's classifier state (the flow ended).
    pub fn flow_ended(&mut self, key: &FlowKey) {
        self.flows.remove(key);
    }

    /// Forgets a conversation's labels (it ended) and prunes expired state.
    pub fn conversation_ended(&mut self, conv: &ConvKey) {
        if self
            .convs
            .remove(conv)
            .is_some_and(|l| l.messages.is_some())
        {
            self.message_series -= 1;
        }
    }

    /// Periodic upkeep at `now`: expired cache entries and DNS bindings go. Feeds are
    /// refreshed by a task of their own ([`refresh_intel`]), never here: a slow feed server
    /// must not hold up detection.
    pub fn tick(&mut self, now_ns: u64) {
        self.cache.retain(|_, (_, expiry)| *expiry >= now_ns);
        self.dns.prune(now_ns);
    }
}

/// The labeler's part of the state file: per conversation its identification, TLS details
/// and message series (periodicity inside one flow), and the label cache of host pairs.
/// Classifier state of open flows and DNS bindings are not kept: the first are rebuilt from
/// the next payloads, the second from the next answers; infrastructure matches are looked up
/// again at the first evaluation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSnapshot {
    pub conversations: Vec<ConvLabelSnapshot>,
    /// (client, server, identification, expiry).
    pub cache: Vec<(Addr, Addr, IdentificationSnapshot, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvLabelSnapshot {
    pub conv: ConvKey,
    /// The identification, and whether its own payload said so (else cached).
    pub identification: Option<(IdentificationSnapshot, bool)>,
    pub tls: Option<TlsInfo>,
    pub messages: Option<SeriesSnapshot>,
}

/// A [`MessageSeries`] in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesSnapshot {
    pub flow: KeySnap,
    pub since_ns: u64,
    pub client: Vec<(u64, u64)>,
    pub server: Vec<(u64, u64)>,
}

/// What a restore of labels took and refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelsRestored {
    pub conversations: usize,
    pub cached_pairs: usize,
    pub skipped: usize,
}

/// Bounds of TLS details read back from a state file (an SNI is a DNS name; ALPN ids are
/// at most 255 bytes and a ClientHello carries a handful).
fn tls_bounded(t: &TlsInfo) -> bool {
    t.sni.as_ref().is_none_or(|s| s.len() <= 255)
        && t.ja4.len() <= 128
        && t.alpn.len() <= 32
        && t.alpn.iter().all(|a| a.len() <= 255)
}

fn ring_from(samples: &[(u64, u64)]) -> SampleRing {
    let mut ring = SampleRing::new(MESSAGE_SAMPLES);
    for &(t, size) in &samples[samples.len().saturating_sub(MESSAGE_SAMPLES)..] {
        ring.push(t, size);
    }
    ring
}

impl Labeler {
    /// The labels worth keeping across a restart.
    pub fn snapshot(&self) -> LabelSnapshot {
        let conversations = self
            .convs
            .iter()
            .filter(|(_, l)| l.identification.is_some() || l.tls.is_some() || l.messages.is_some())
            .map(|(conv, l)| ConvLabelSnapshot {
                conv: *conv,
                identification: l
                    .identification
                    .as_ref()
                    .map(|(i, c)| (IdentificationSnapshot::from(i), *c == Confidence::Observed)),
                tls: l.tls.clone(),
                messages: l.messages.as_ref().map(|m| SeriesSnapshot {
                    flow: KeySnap::from(&m.flow),
                    since_ns: m.since_ns,
                    client: m.client.iter().collect(),
                    server: m.server.iter().collect(),
                }),
            })
            .collect();
        let cache = self
            .cache
            .iter()
            .map(|((c, s), (i, expiry))| (*c, *s, IdentificationSnapshot::from(i), *expiry))
            .collect();
        LabelSnapshot {
            conversations,
            cache,
        }
    }

    /// Takes a snapshot into this (new) labeler: labels of the conversations `known` says
    /// exist, within every bound the labeler keeps; anything else is skipped and counted.
    pub fn restore(
        &mut self,
        snap: LabelSnapshot,
        known: impl Fn(&ConvKey) -> bool,
    ) -> LabelsRestored {
        let mut r = LabelsRestored::default();
        for c in snap.conversations {
            if !known(&c.conv) || self.convs.contains_key(&c.conv) {
                r.skipped += 1;
                continue;
            }
            let mut labels = ConvLabels::default();
            if let Some((i, observed)) = &c.identification {
                match i.identification() {
                    Some(i) => {
                        let confidence = if *observed {
                            Confidence::Observed
                        } else {
                            Confidence::Cached
                        };
                        labels.identification = Some((i, confidence));
                    }
                    None => r.skipped += 1,
                }
            }
            labels.tls = c.tls.filter(tls_bounded);
            if let Some(m) = c.messages {
                match m.flow.key() {
                    Some(flow) if self.message_series < MAX_MESSAGE_SERIES => {
                        self.message_series += 1;
                        labels.messages = Some(Box::new(MessageSeries {
                            flow,
                            since_ns: m.since_ns,
                            client: ring_from(&m.client),
                            server: ring_from(&m.server),
                        }));
                    }
                    _ => r.skipped += 1,
                }
            }
            self.convs.insert(c.conv, labels);
            r.conversations += 1;
        }
        for (client, server, i, expiry) in snap.cache {
            match i.identification() {
                Some(i) if self.cache.len() < self.cfg.max_cached_pairs => {
                    self.cache.insert((client, server), (i, expiry));
                    r.cached_pairs += 1;
                }
                _ => r.skipped += 1,
            }
        }
        r
    }
}

/// Reloads `store` whenever its refresh interval has passed, on wall-clock time, until the
/// runtime shuts down: the intel refresh task. Each reload runs on a blocking thread (URL
/// feeds are fetched with a blocking client, each bounded by `fetch_timeout`); a failed
/// refresh keeps the previous feeds and is logged.
pub async fn refresh_intel(store: Arc<IntelStore>, every: Duration) {
    // Checked at least once a minute, so a refresh interval change of the feeds' own takes
    // effect; the store itself decides whether a reload is due.
    let mut ticks =
        tokio::time::interval(every.clamp(Duration::from_secs(1), Duration::from_secs(60)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let s = store.clone();
        let report =
            tokio::task::spawn_blocking(move || s.maybe_refresh(crate::clock::wall_ns())).await;
        // The feed module logs each problem itself; only the summary line here.
        if let Ok(Some(report)) = report {
            let text = report.to_string();
            log::info!(
                "threat intelligence: {}",
                text.lines().last().unwrap_or_default()
            );
        }
    }
}

/// The intel section of the configuration as a store, when any feed is configured.
pub fn intel_store(cfg: &IntelConfig) -> Result<Option<IntelStore>, String> {
    if cfg.directory.is_none() && cfg.urls.is_empty() {
        return Ok(None);
    }
    IntelStore::new(cfg.clone()).map(Some)
}
