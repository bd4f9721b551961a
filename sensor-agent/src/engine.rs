//! The detection engine: flow table, enrichment, detectors and alarm manager, driven by
//! whatever source the event loop reads ([`crate::pipeline`]).
//!
//! Sources hand it events with explicit timestamps ([`Engine::handle`]) and ticks with the
//! current time (capture time in replay, wall time live); the engine never reads a clock
//! itself, which is what makes replays deterministic.
//!
//! Every tick returns a [`TickOutput`]: the alarm events, the flows that ended, and the
//! changes of the watch set (long, low-rate flows whose payload messages are timed: see
//! [`crate::detect::watch`]). The engine never calls back into a source: the loop hands the
//! ended flows and the watch changes to the source, which mirrors them into the kernel.
//! [`Engine::stats`] is all that the status line and the summaries read.
//!
//! Across restarts of `run`, [`Engine::snapshot`] and [`Engine::restore`] compose the parts'
//! own snapshots (flow table, open alarms, labels, watch set) for the state file
//! ([`crate::state`]); a replay never restores, so it stays deterministic.
//!
//! It must never keep state a replay could not rebuild, and never block.

mod view;

use std::{collections::BTreeMap, fmt, net::IpAddr};

use sensor_common::{FlowKey, FlowStats, CLIENT_HI, CLIENT_LO, DIR_LO_TO_HI};
use serde::{Deserialize, Serialize};

use crate::{
    alarm::{
        degraded::Pressure, mining_host::HostEpisode, Action, AlarmEvent, AlarmManager,
        AlarmSnapshot, Observer,
    },
    config::Config,
    detect::{
        self,
        watch::{WatchChanges, WatchSet},
        Detector,
    },
    enrich::{
        classify::{speaker, Speaker, Transport},
        intel::IntelStore,
        labels::{LabelSnapshot, Labeler, Payload, SampleLimits},
    },
    flow::{
        record::{ip_of, FlowRecord},
        roles::CLIENT_BY_PAYLOAD,
        table::Conversation,
        table::{FlowTable, KeySnap, TableSnapshot},
    },
    source::SourceEvent,
};

pub struct Engine {
    pub table: FlowTable,
    detectors: Vec<Box<dyn Detector + Send>>,
    pub alarms: AlarmManager,
    pub labels: Labeler,
    skip_multicast: bool,
    watch: WatchSet,
    /// Alarm events handed out, by rule and action (metrics).
    alarm_events: BTreeMap<(&'static str, &'static str), u64>,
    /// Names for socket owners; made at the first host view (live sources only).
    processes: Option<crate::enrich::process::Resolver>,
}

/// What one evaluation produced.
#[derive(Debug, Default)]
pub struct TickOutput {
    pub alarms: Vec<AlarmEvent>,
    /// Flows that ended (for the source to forget, and for `--flows`).
    pub ended: Vec<FlowRecord>,
    /// Flows that started or stopped being watched (for a live source to mirror).
    pub watch: WatchChanges,
    /// Flows the table refused (for the source to forget, like ended ones).
    pub refused: Vec<FlowKey>,
}

/// Counters for the status line, the summaries and the metrics: a copy, so presenting never
/// reaches into the engine.
///
/// The metrics endpoint exports every numeric field by itself (through `Serialize`): a `usize`
/// field listed in [`EngineStats::GAUGES`] as a gauge, every other one as a counter; [`METRICS`]
/// names and explains the known ones, a new field appears as `sensor_engine_<field>_total`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EngineStats {
    pub packets: u64,
    pub flows: usize,
    pub conversations: usize,
    /// Flows refused by a full flow table, and conversations likewise.
    pub flows_dropped: u64,
    pub conversations_dropped: u64,
    /// Unanswered flows evicted from a full flow table to admit others, and conversations of
    /// failed attempts only ended early to make room.
    pub flows_evicted: u64,
    pub conversations_evicted: u64,
    /// Kernel entries of known flows evicted and re-created; of those, answered flows
    /// (established sessions), and how long those went unobserved in total (ns).
    pub kernel_entries_recreated: u64,
    pub sessions_recreated: u64,
    #[serde(skip)]
    pub sessions_unobserved_ns: u64,
    /// The first refusal or eviction of the pressure episode under way (ns), if any.
    #[serde(skip)]
    pub degraded_since_ns: Option<u64>,
    /// Alarms opened, per rule id.
    #[serde(skip)]
    pub opened_by_rule: BTreeMap<&'static str, u64>,
    /// Alarm events handed out, per (rule id, action).
    #[serde(skip)]
    pub alarm_events: BTreeMap<(&'static str, &'static str), u64>,
    /// Alarms open now.
    pub open_alarms: usize,
    /// Mining host episodes tracked now, and new miners not tracked for want of room.
    pub mining_hosts: usize,
    pub mining_hosts_dropped: u64,
    pub watched: usize,
    /// Flows that qualified for watching while `watch.max_flows` were already watched.
    pub watch_refused: u64,
    pub payloads: u64,
    pub dns_messages: u64,
    pub identified_flows: u64,
    /// Payload messages of watched flows timed.
    pub messages: u64,
}

/// The engine's part of the state file: each part's own snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub table: TableSnapshot,
    pub alarms: Vec<AlarmSnapshot>,
    pub labels: LabelSnapshot,
    pub watch: Vec<KeySnap>,
    /// Mining host episodes (`alarm::mining_host`), since state file version 3.
    pub hosts: Vec<HostEpisode>,
}

/// What [`Engine::restore`] took back, and how many entries it refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub conversations: usize,
    pub flows: usize,
    pub open_alarms: usize,
    pub labelled: usize,
    pub cached_pairs: usize,
    pub watched: usize,
    pub mining_hosts: usize,
    pub skipped: usize,
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} conversations, {} flows, {} open alarms, {} labelled conversations, {} cached host pairs, {} watched flows, {} mining hosts",
            self.conversations, self.flows, self.open_alarms, self.labelled, self.cached_pairs, self.watched, self.mining_hosts
        )?;
        if self.skipped > 0 {
            write!(
                f,
                " ({} entries skipped: invalid or beyond the limits)",
                self.skipped
            )?;
        }
        Ok(())
    }
}

/// Multicast (224.0.0.0/4, ff00::/8) or limited broadcast.
fn is_group_address(conv: &Conversation) -> bool {
    match ip_of(&conv.key.server) {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_multicast(),
    }
}

impl Engine {
    /// An engine without threat-intelligence feeds.
    pub fn new(cfg: &Config, observer: Observer) -> Self {
        Self::with_intel(cfg, observer, None)
    }

    /// An engine matching servers against `intel` (see [`crate::enrich::labels::intel_store`]).
    pub fn with_intel(
        cfg: &Config,
        observer: Observer,
        intel: Option<std::sync::Arc<IntelStore>>,
    ) -> Self {
        let limits = SampleLimits {
            packets: cfg.capture.payload_packets,
            bytes: cfg.capture.payload_bytes,
            dns_bytes: cfg.capture.dns_bytes,
        };
        let mut alarms = AlarmManager::new(cfg.alarm.clone(), observer);
        alarms.set_mining_host(cfg.detect.mining_host.clone());
        Engine {
            table: FlowTable::new(cfg.flow.clone()),
            detectors: detect::from_config(&cfg.detect),
            alarms,
            labels: Labeler::new(cfg.labels.clone(), limits, intel),
            skip_multicast: cfg.detect.skip_multicast,
            watch: WatchSet::new(cfg.detect.watch.clone()),
            alarm_events: BTreeMap::new(),
            processes: None,
        }
    }

    /// What the engine knows beyond the kernel, for the state file.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            table: self.table.snapshot(),
            alarms: self.alarms.snapshot(),
            labels: self.labels.snapshot(),
            watch: self.watch.snapshot(),
            hosts: self.alarms.host_snapshot(),
        }
    }

    /// Takes a snapshot into this new engine. Restored conversations are evaluated at the
    /// next tick: their open alarms are updated or closed there under their ids, never opened
    /// again; restored watched flows are reported as added, so a live source mirrors them.
    /// Alarms, labels and watched flows of conversations or flows not restored are skipped.
    pub fn restore(&mut self, snap: EngineSnapshot) -> Restored {
        let t = self.table.restore(snap.table);
        let rules: Vec<(&'static str, &'static str)> = self
            .detectors
            .iter()
            .map(|d| (d.rule_id(), d.rule_name()))
            .collect();
        let table = &self.table;
        let (open_alarms, alarms_skipped) = self
            .alarms
            .restore(snap.alarms, &rules, |k| table.conversation(k).is_some());
        let l = self
            .labels
            .restore(snap.labels, |k| table.conversation(k).is_some());
        let (watched, watch_skipped) = self
            .watch
            .restore(&snap.watch, |k| table.orientation(k).is_some());
        let (mining_hosts, hosts_skipped) = self.alarms.restore_hosts(snap.hosts);
        Restored {
            conversations: t.conversations,
            flows: t.flows,
            open_alarms,
            labelled: l.conversations,
            cached_pairs: l.cached_pairs,
            watched,
            mining_hosts,
            skipped: t.skipped + alarms_skipped + l.skipped + watch_skipped + hosts_skipped,
        }
    }

    /// Counters for presenting.
    pub fn stats(&self) -> EngineStats {
        let lc = &self.labels.counters;
        EngineStats {
            packets: self.table.counters.packets,
            flows: self.table.flow_count(),
            conversations: self.table.conversation_count(),
            flows_dropped: self.table.counters.flows_dropped,
            conversations_dropped: self.table.counters.conversations_dropped,
            flows_evicted: self.table.counters.flows_evicted,
            conversations_evicted: self.table.counters.conversations_evicted,
            kernel_entries_recreated: self.table.counters.counter_resets,
            sessions_recreated: self.table.counters.answered_recreated,
            sessions_unobserved_ns: self.table.counters.unobserved_ns,
            degraded_since_ns: self.table.counters.first_pressure_ns,
            opened_by_rule: self
                .alarms
                .opened_by_rule
                .iter()
                .map(|(r, n)| (*r, *n))
                .collect(),
            alarm_events: self.alarm_events_by_rule(),
            open_alarms: self.alarms.open_count(),
            mining_hosts: self.alarms.mining_host_counts().0,
            mining_hosts_dropped: self.alarms.mining_host_counts().1,
            watched: self.watch.len(),
            watch_refused: self.watch.refused,
            payloads: lc.payloads,
            dns_messages: lc.dns_messages,
            identified_flows: lc.identified_flows,
            messages: lc.messages,
        }
    }

    /// One event from a source other than a tick (the loop handles ticks: they produce
    /// output).
    pub fn handle(&mut self, event: &SourceEvent) {
        match event {
            SourceEvent::Packet(p) => {
                self.add_packet(&p.key, p.dir, p.wire_len, p.tcp_flags, p.ts_ns);
                // As the datapath: a flow's tunnel is the one of the packet that created it.
                if let Some(t) = p.tunnel {
                    if self.table.flow_packets(&p.key) == 1 {
                        self.table.set_tunnel(&p.key, t);
                    }
                }
                if !p.payload.is_empty() {
                    self.payload(&p.key, p.dir, p.dns, &p.payload, p.ts_ns);
                }
                if p.message_size > 0 {
                    self.message(&p.key, p.dir, p.message_size, p.ts_ns);
                }
            }
            SourceEvent::Flows(flows) => {
                for f in flows {
                    self.update_flow(&f.key, &f.stats, f.first_ns, f.last_ns);
                    if let Some(t) = &f.tunnel {
                        self.table.set_tunnel(&f.key, **t);
                    }
                }
            }
            SourceEvent::Payload(p) => self.payload(&p.key, p.dir, p.dns, &p.data, p.ts_ns),
            SourceEvent::Message(m) => self.message(&m.key, m.dir, m.size, m.ts_ns),
            SourceEvent::Resolved(r) => self.labels.resolved(r),
            SourceEvent::Host(flows) => {
                let resolver = self.processes.get_or_insert_with(|| {
                    crate::enrich::process::Resolver::new(crate::source::process::cgroup2_mount())
                });
                for f in flows {
                    let side = resolver.host_side(f.forwarded, f.owner.as_ref());
                    self.table.set_host(&f.key, side);
                }
            }
            SourceEvent::Tick(_) | SourceEvent::End(_) => {}
        }
    }

    /// Whether the engine watches flow `key` (times its payload messages).
    pub fn is_watched(&self, key: &FlowKey) -> bool {
        self.watch.contains(key)
    }

    /// Flows watched now.
    pub fn watched(&self) -> impl Iterator<Item = &FlowKey> {
        self.watch.iter()
    }

    /// One payload message of a watched flow: `size` transport payload bytes sent by the
    /// sender with direction index `dir`, at `ts_ns`. Messages of flows not watched are
    /// ignored (a kernel trace may still hold a few after the agent stopped watching).
    pub fn message(&mut self, key: &FlowKey, dir: usize, size: u64, ts_ns: u64) {
        if !self.watch.contains(key) {
            return;
        }
        let Some((conv, lo_is_client)) = self.table.orientation(key) else {
            return;
        };
        let from_client = (dir == DIR_LO_TO_HI) == lo_is_client;
        if self.labels.message(key, &conv, from_client, size, ts_ns) {
            self.table.mark_dirty(&conv);
        }
    }

    /// A payload copy (the kernel's ring buffer, or a replayed frame's payload) from the
    /// sender with direction index `dir` of flow `key`. The flow must already be in the table.
    ///
    /// While the flow's client is not known from a SYN or an earlier payload, the payload is
    /// first asked who sent it ([`speaker`]); a message only a server sends (or only a client)
    /// decides the client, and the flow moves to that conversation before it is classified,
    /// so the classifiers always see the right direction.
    pub fn payload(&mut self, key: &FlowKey, dir: usize, dns: bool, data: &[u8], ts_ns: u64) {
        let Some((mut conv, mut lo_is_client, wanted)) = self.table.payload_orientation(key) else {
            return;
        };
        if wanted {
            let transport = match key.proto {
                6 => Some(Transport::Tcp),
                17 => Some(Transport::Udp),
                _ => None,
            };
            let n = data.len().min(self.labels.limits().bytes as usize);
            if let Some(who) = transport.and_then(|t| speaker(&data[..n], t, dns)) {
                let sender = if dir == DIR_LO_TO_HI {
                    CLIENT_LO
                } else {
                    CLIENT_HI
                };
                let client = match who {
                    Speaker::Client => sender,
                    Speaker::Server => sender ^ 1,
                };
                if self.table.set_client(key, client, CLIENT_BY_PAYLOAD) {
                    // What the classifier saw of this flow, it saw with the roles reversed.
                    self.labels.flow_ended(key);
                }
                if let Some((c, l)) = self.table.orientation(key) {
                    (conv, lo_is_client) = (c, l);
                }
            }
        }
        let from_client = (dir == DIR_LO_TO_HI) == lo_is_client;
        let p = Payload {
            key: *key,
            conv,
            from_client,
            dns,
            data,
            ts_ns,
        };
        if self.labels.payload(&p) {
            self.table.mark_dirty(&conv);
        }
    }

    pub fn add_packet(&mut self, key: &FlowKey, dir: usize, len: u64, tcp_flags: u8, ts: u64) {
        self.table.add_packet(key, dir, len, tcp_flags, ts);
    }

    pub fn update_flow(&mut self, key: &FlowKey, stats: &FlowStats, first_ns: u64, last_ns: u64) {
        self.table.update(key, stats, first_ns, last_ns);
    }

    /// Evaluates every conversation that changed (or has an alarm open) at `now`, then ages
    /// the table.
    pub fn tick(&mut self, now: u64) -> TickOutput {
        let mut events = Vec::new();
        // Conversations that only existed because a flow's roles were first guessed wrong.
        for ghost in self.table.take_abandoned() {
            events.extend(self.alarms.conversation_ended(&ghost, now));
            self.labels.conversation_ended(&ghost.key);
        }
        for conv in self.table.conversations() {
            // Only what changed can newly satisfy a rule; open alarms are re-evaluated every
            // tick for their suppression window and to notice a rule that stopped holding.
            if !conv.dirty && !self.alarms.has_open(&conv.key) {
                continue;
            }
            if self.skip_multicast && is_group_address(conv) {
                continue;
            }
            self.watch.consider(conv, now);
            self.labels.refresh(&conv.key, conv.start_ns, now);
            let labels = self.labels.get(&conv.key);
            for d in &self.detectors {
                let finding = d.evaluate(conv, labels, now);
                if let Some(e) =
                    self.alarms
                        .observe(d.rule_id(), d.rule_name(), conv, finding, now, false)
                {
                    events.push(e);
                }
            }
        }
        self.table.clear_dirty();
        let ended = self.table.expire(now);
        for conv in &ended.conversations {
            events.extend(self.alarms.conversation_ended(conv, now));
            self.labels.conversation_ended(&conv.key);
        }
        // The host view gathers this tick's alarms of the other rules.
        let hosts = self.alarms.mining_hosts(&events, now, false);
        events.extend(hosts);
        for f in &ended.flows {
            self.labels.flow_ended(&f.key);
            self.watch.flow_ended(&f.key);
        }
        self.labels.tick(now);
        let c = &self.table.counters;
        let pressure = Pressure {
            refused: c.flows_dropped + c.conversations_dropped,
            evicted: c.flows_evicted,
            recreated: c.answered_recreated,
            first_ns: c.first_pressure_ns,
            last_ns: c.last_pressure_ns,
        };
        let (degraded, closed) = self.alarms.table_pressure(&pressure, now);
        events.extend(degraded);
        if closed {
            self.table.counters.first_pressure_ns = None;
        }
        self.count_events(&events);
        TickOutput {
            alarms: events,
            ended: ended.flows,
            watch: self.watch.take_changes(),
            refused: self.table.take_refused(),
        }
    }

    /// End of input (a replay's last frame): evaluates once more at `now` and sends the last
    /// state of every alarm still open, so the SIEM sees each one's final duration and counts.
    /// Alarms stay open: the conversations did not end, the input did.
    pub fn finish(&mut self, now: u64) -> Vec<AlarmEvent> {
        let mut events = Vec::new();
        for conv in self.table.conversations() {
            for d in &self.detectors {
                if self.alarms.is_open(d.rule_id(), &conv.key) {
                    let finding = d.evaluate(conv, self.labels.get(&conv.key), now);
                    events.extend(self.alarms.observe(
                        d.rule_id(),
                        d.rule_name(),
                        conv,
                        finding,
                        now,
                        true,
                    ));
                }
            }
        }
        let hosts = self.alarms.mining_hosts(&events, now, true);
        events.extend(hosts);
        self.count_events(&events);
        events
    }

    /// Alarm events by rule and action, zero for every rule and action not seen yet (so each
    /// series exists from the start, as Prometheus wants counters to).
    fn alarm_events_by_rule(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        let host_rule = self
            .alarms
            .mining_host_enabled()
            .then_some(crate::alarm::mining_host::RULE);
        let mut out: BTreeMap<(&'static str, &'static str), u64> = self
            .detectors
            .iter()
            .map(|d| d.rule_id())
            .chain(host_rule)
            .flat_map(|rule| {
                [Action::Opened, Action::Updated, Action::Closed].map(|a| ((rule, a.as_str()), 0))
            })
            .collect();
        for (k, n) in &self.alarm_events {
            *out.entry(*k).or_default() += n;
        }
        out
    }

    fn count_events(&mut self, events: &[AlarmEvent]) {
        for e in events {
            *self
                .alarm_events
                .entry((e.rule, e.action.as_str()))
                .or_default() += 1;
        }
    }
}

/// Metric names and help of the known [`EngineStats`] fields: (field, metric, help).
const METRICS: &[(&str, &str, &str)] = &[
    (
        "packets",
        "sensor_packets_attributed_total",
        "Packets counted into flows of the agent's table.",
    ),
    (
        "flows",
        "sensor_flows",
        "Flows in the agent's flow table (active).",
    ),
    (
        "conversations",
        "sensor_conversations",
        "Conversations in the agent's flow table (active).",
    ),
    (
        "flows_dropped",
        "sensor_flows_refused_total",
        "Flows refused by a full flow table (flow.max_flows).",
    ),
    (
        "conversations_dropped",
        "sensor_conversations_refused_total",
        "Conversations refused by a full flow table.",
    ),
    (
        "flows_evicted",
        "sensor_flows_evicted_total",
        "Unanswered flows evicted from a full flow table to admit others.",
    ),
    (
        "conversations_evicted",
        "sensor_conversations_evicted_total",
        "Conversations of failed attempts only, ended early to make room.",
    ),
    (
        "kernel_entries_recreated",
        "sensor_kernel_entries_recreated_total",
        "Kernel flow entries of known flows evicted and re-created.",
    ),
    (
        "sessions_recreated",
        "sensor_sessions_recreated_total",
        "Answered flows (sessions) whose kernel entry was evicted and re-created.",
    ),
    ("open_alarms", "sensor_alarms_open", "Alarms open now."),
    (
        "mining_hosts",
        "sensor_mining_hosts",
        "Mining host episodes tracked now (mining_host alarms open).",
    ),
    (
        "mining_hosts_dropped",
        "sensor_mining_hosts_dropped_total",
        "New mining hosts not tracked because detect.mining_host.max_hosts were.",
    ),
    (
        "watched",
        "sensor_watched_flows",
        "Flows whose payload messages are timed (watched) now.",
    ),
    (
        "watch_refused",
        "sensor_watch_refused_total",
        "Flows that qualified for watching while detect.watch.max_flows were watched.",
    ),
    (
        "payloads",
        "sensor_payload_copies_total",
        "Payload copies classified.",
    ),
    (
        "dns_messages",
        "sensor_dns_messages_total",
        "DNS messages read.",
    ),
    (
        "identified_flows",
        "sensor_identified_flows_total",
        "Flows a payload classifier identified.",
    ),
    (
        "messages",
        "sensor_watched_messages_total",
        "Payload messages of watched flows timed.",
    ),
];

impl EngineStats {
    /// Fields that are sizes now (gauges); every other numeric field counts since the start.
    pub const GAUGES: &'static [&'static str] = &[
        "flows",
        "conversations",
        "open_alarms",
        "watched",
        "mining_hosts",
    ];
}

impl crate::metrics::Export for EngineStats {
    fn export(&self, out: &mut crate::metrics::Exposition) {
        for ((rule, action), n) in &self.alarm_events {
            out.counter(
                "sensor_alarms_total",
                "Alarm events handed to the outputs, by rule and action.",
                &[("rule", rule), ("action", action)],
                *n as f64,
            );
        }
        // Prometheus' base unit is the second.
        out.counter(
            "sensor_sessions_unobserved_seconds_total",
            "Time re-created sessions went unobserved while their kernel entry was gone.",
            &[],
            self.sessions_unobserved_ns as f64 / 1e9,
        );
        if let Some(since) = self.degraded_since_ns {
            out.gauge(
                "sensor_degraded_since_timestamp_seconds",
                "Start of the flow-table pressure episode under way (refusals or evictions).",
                &[],
                since as f64 / 1e9,
            );
        }
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else {
            return;
        };
        for (field, value) in fields {
            let Some(v) = value.as_f64() else { continue };
            let known = METRICS.iter().find(|(f, _, _)| *f == field);
            let gauge = Self::GAUGES.contains(&field.as_str());
            let (name, help) = match known {
                Some((_, name, help)) => (name.to_string(), help.to_string()),
                None if gauge => (
                    format!("sensor_engine_{field}"),
                    format!("EngineStats.{field}"),
                ),
                None => (
                    format!("sensor_engine_{field}_total"),
                    format!("EngineStats.{field}"),
                ),
            };
            if gauge {
                out.gauge(&name, &help, &[], v);
            } else {
                out.counter(&name, &help, &[], v);
            }
        }
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::units::HumanDuration;
    use sensor_common::ipv4_mapped;

    pub const S: u64 = 1_000_000_000;

    pub fn engine(tweak: impl FnOnce(&mut Config)) -> Engine {
        let mut cfg = Config::default();
        cfg.detect.long_flow.after = HumanDuration::secs(100);
        cfg.detect.long_flow.ladder = vec![HumanDuration::secs(200), HumanDuration::secs(400)];
        cfg.detect.quiet_long_flow.after = HumanDuration::secs(100);
        cfg.alarm.suppression_window = HumanDuration::secs(1000);
        tweak(&mut cfg);
        Engine::new(&cfg, Observer::default())
    }

    /// A TCP session 10.0.0.1:40000 -> 10.0.0.2:3333 with a 60-byte keepalive every 10 s from
    /// `from` to `to` seconds, ticking after each.
    pub fn session(e: &mut Engine, port: u16, from: u64, to: u64, bytes: u64) -> Vec<AlarmEvent> {
        let (key, dir) = FlowKey::canonical(
            &ipv4_mapped([10, 0, 0, 1]),
            port,
            &ipv4_mapped([10, 0, 0, 2]),
            3333,
            6,
        );
        let mut events = Vec::new();
        let mut t = from;
        while t <= to {
            let flags = if t == from { 0x02 } else { 0x18 };
            e.add_packet(&key, dir, bytes, flags, t * S);
            e.add_packet(&key, 1 - dir, bytes, 0x12, t * S);
            events.extend(e.tick(t * S).alarms);
            t += 10;
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use crate::{
        alarm::settings::AllowRule,
        alarm::Action,
        units::{Cidr, HumanDuration},
    };

    fn actions(events: &[AlarmEvent], rule: &str) -> Vec<(Action, u64)> {
        events
            .iter()
            .filter(|e| e.rule == rule)
            .map(|e| (e.action, e.json["event"]["severity"].as_u64().unwrap_or(99)))
            .collect()
    }

    #[test]
    fn long_flow_opens_once_and_escalates_on_the_ladder_with_one_id() {
        let mut e = engine(|_| {});
        let events = session(&mut e, 40000, 0, 450, 60);
        let long: Vec<&AlarmEvent> = events.iter().filter(|x| x.rule == "long_flow").collect();
        assert_eq!(
            actions(&events, "long_flow"),
            vec![
                (Action::Opened, 3),
                (Action::Updated, 4),
                (Action::Updated, 5)
            ]
        );
        assert!(
            long.iter().all(|x| x.id == long[0].id),
            "one alarm id across the ladder"
        );
        assert_eq!(long[0].json["sensor"]["evidence"]["duration_s"], 100.0);
        assert_eq!(long[1].json["sensor"]["evidence"]["rung"], 2);
    }

    #[test]
    fn quiet_long_flow_needs_both_duration_and_a_low_rate_and_closes_when_it_gets_loud() {
        let mut e = engine(|_| {});
        let events = session(&mut e, 40000, 0, 150, 60);
        assert_eq!(
            actions(&events, "quiet_long_flow"),
            vec![(Action::Opened, 5)]
        );
        // Loud: 100 kB every 10 s pushes the average far above 200 B/s.
        let events = session(&mut e, 40000, 160, 300, 100_000);
        assert_eq!(
            actions(&events, "quiet_long_flow").first().map(|a| a.0),
            Some(Action::Closed)
        );
        let mut loud = engine(|_| {});
        let events = session(&mut loud, 40000, 0, 300, 100_000);
        assert!(
            actions(&events, "quiet_long_flow").is_empty(),
            "a busy long flow is not quiet"
        );
        assert!(!actions(&events, "long_flow").is_empty(), "but it is long");
    }

    #[test]
    fn reconnects_keep_the_clock_and_the_end_closes_the_alarm() {
        let mut e = engine(|c| {
            c.flow.tcp_idle_timeout = HumanDuration::secs(30);
            c.flow.conversation_gap = HumanDuration::secs(60);
        });
        let mut events = session(&mut e, 40000, 0, 60, 60);
        // The first connection goes idle and ends; the client reconnects from another port.
        events.extend(session(&mut e, 40001, 100, 160, 60));
        let opened: Vec<&AlarmEvent> = events
            .iter()
            .filter(|x| x.rule == "long_flow" && x.action == Action::Opened)
            .collect();
        assert_eq!(opened.len(), 1, "the conversation spans both connections");
        assert_eq!(opened[0].json["sensor"]["conversation"]["flows"], 2);
        assert_eq!(opened[0].json["source"]["port"], 40001);
        // Silence past idle timeout + gap: the conversation ends and its alarms close.
        let closing = e.tick(400 * S).alarms;
        assert!(closing
            .iter()
            .any(|x| x.rule == "long_flow" && x.action == Action::Closed && x.id == opened[0].id));
        assert_eq!(e.alarms.open_count(), 0);
    }

    #[test]
    fn suppression_window_limits_updates_and_allowlist_silences() {
        let mut e = engine(|c| {
            c.detect.long_flow.ladder = vec![];
            c.alarm.suppression_window = HumanDuration::secs(50);
        });
        let events = session(&mut e, 40000, 0, 260, 60);
        let updates = actions(&events, "long_flow")
            .iter()
            .filter(|a| a.0 == Action::Updated)
            .count();
        assert_eq!(
            updates, 3,
            "open at 100 s, then one update per 50 s window up to 260 s"
        );
        let hits = events
            .iter()
            .rev()
            .find(|x| x.rule == "long_flow")
            .map(|x| x.json["sensor"]["hits"].as_u64());
        assert_eq!(
            hits,
            Some(Some(16)),
            "every evaluation that held counts as a hit"
        );

        let mut allowed = engine(|c| {
            c.alarm.allow = vec![AllowRule {
                cidr: Some(Cidr::parse("10.0.0.0/30").expect("cidr")),
                port: Some(3333),
                rules: vec![],
            }]
        });
        assert!(session(&mut allowed, 40000, 0, 300, 60).is_empty());
        assert!(allowed.alarms.allowlisted > 0);
        let mut other_port = engine(|c| {
            c.alarm.allow = vec![AllowRule {
                cidr: None,
                port: Some(22),
                rules: vec![],
            }]
        });
        assert!(
            !session(&mut other_port, 40000, 0, 300, 60).is_empty(),
            "an allow entry for another port does not apply"
        );
    }
}

#[cfg(test)]
mod restart_tests {
    use super::tests_support::*;
    use super::*;
    use crate::{alarm::Action, state};

    /// Through the state file's own encoding, into a new engine.
    fn restart(e: &Engine, tweak: impl FnOnce(&mut Config)) -> (Engine, Restored) {
        let bytes = state::encode(&e.snapshot()).expect("encode");
        let snap: EngineSnapshot = state::decode(&bytes).expect("decode");
        assert_eq!(
            snap,
            e.snapshot(),
            "the state file holds the snapshot exactly"
        );
        let mut back = engine(tweak);
        let r = back.restore(snap);
        (back, r)
    }

    #[test]
    fn an_alarm_opened_before_a_restart_is_updated_and_closed_after_it_never_opened_again() {
        let mut e = engine(|_| {});
        let before = session(&mut e, 40000, 0, 150, 60);
        let opened: Vec<&AlarmEvent> = before
            .iter()
            .filter(|x| x.action == Action::Opened)
            .collect();
        assert!(opened.iter().any(|x| x.rule == "long_flow"));
        assert!(opened.iter().any(|x| x.rule == "quiet_long_flow"));
        let (mut back, r) = restart(&e, |_| {});
        assert_eq!((r.conversations, r.flows, r.skipped), (1, 1, 0));
        assert_eq!(r.open_alarms, e.alarms.open_count());
        // The session goes on (the same 5-tuple), then gets loud, then ends.
        let mut after = session(&mut back, 40000, 160, 450, 60);
        after.extend(session(&mut back, 40000, 460, 600, 100_000));
        after.extend(back.tick(100_000 * S).alarms);
        assert!(
            after.iter().all(|x| x.action != Action::Opened),
            "{:?}",
            after.iter().map(|x| (x.rule, x.action)).collect::<Vec<_>>()
        );
        for o in &opened {
            let same: Vec<Action> = after
                .iter()
                .filter(|x| x.id == o.id)
                .map(|x| x.action)
                .collect();
            assert_eq!(same.last(), Some(&Action::Closed), "{} closes", o.rule);
        }
        let rung = after
            .iter()
            .find(|x| x.rule == "long_flow" && x.action == Action::Updated)
            .expect("the ladder goes on after the restart");
        assert_eq!(
            rung.id,
            opened
                .iter()
                .find(|x| x.rule == "long_flow")
                .expect("opened")
                .id
        );
        assert_eq!(
            rung.json["event"]["start"],
            opened[0].json["event"]["start"]
        );
    }

    #[test]
    fn alarms_of_a_rule_no_longer_evaluated_are_not_restored() {
        let mut e = engine(|_| {});
        session(&mut e, 40000, 0, 150, 60);
        let open = e.alarms.open_count();
        let (back, r) = restart(&e, |c| c.detect.long_flow.enabled = false);
        assert_eq!(r.open_alarms, open - 1);
        assert_eq!(r.skipped, 1);
        assert_eq!(back.alarms.open_count(), open - 1);
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;
    use crate::units::HumanDuration;
    use sensor_common::ipv4_mapped;

    const S: u64 = 1_000_000_000;

    /// A flow to server port `port`: each its own conversation.
    fn key(port: u16) -> (FlowKey, usize) {
        FlowKey::canonical(
            &ipv4_mapped([10, 0, 0, 1]),
            50000,
            &ipv4_mapped([10, 0, 0, 2]),
            port,
            6,
        )
    }

    /// A session on `port` with `bytes` each way every 10 s from 0 to `to` s, ticking after
    /// each exchange and timing each payload as a message.
    fn session(e: &mut Engine, port: u16, to: u64, bytes: u64) -> (Vec<FlowKey>, Vec<FlowKey>) {
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        let (k, dir) = key(port);
        e.add_packet(&k, dir, 60, 0x02, 0);
        e.add_packet(&k, 1 - dir, 60, 0x12, 0);
        let mut t = 10;
        while t <= to {
            e.add_packet(&k, dir, bytes, 0x18, t * S);
            e.message(&k, dir, bytes, t * S);
            e.add_packet(&k, 1 - dir, bytes, 0x18, t * S);
            e.message(&k, 1 - dir, bytes, t * S);
            let out = e.tick(t * S);
            added.extend(out.watch.added);
            removed.extend(out.watch.removed);
            t += 10;
        }
        (added, removed)
    }

    fn engine(max_flows: usize) -> Engine {
        let mut cfg = Config::default();
        cfg.detect.watch.after = HumanDuration::secs(60);
        cfg.detect.watch.max_flows = max_flows;
        Engine::new(&cfg, Observer::default())
    }

    #[test]
    fn long_low_rate_flows_are_watched_and_timed_busy_ones_are_not() {
        let mut e = engine(10);
        let quiet_changes = session(&mut e, 40000, 200, 100);
        let busy_changes = session(&mut e, 40001, 200, 1_000_000);
        let (quiet, _) = key(40000);
        let (busy, _) = key(40001);
        assert!(e.is_watched(&quiet));
        assert!(
            !e.is_watched(&busy),
            "1 MB every 10 s is far above 2000 B/s"
        );
        assert_eq!(quiet_changes, (vec![quiet], vec![]));
        assert_eq!(busy_changes, (vec![], vec![]));
        let conv = e.table.orientation(&quiet).expect("flow").0;
        let series = e
            .labels
            .get(&conv)
            .and_then(|l| l.messages.as_deref())
            .expect("messages timed");
        // Watched at the tick at 60 s: the messages from 70 s on are timed.
        assert_eq!((series.client.len(), series.server.len()), (14, 14));
        assert_eq!(series.since_ns, 70 * S);
        let busy_conv = e.table.orientation(&busy).expect("flow").0;
        assert!(e
            .labels
            .get(&busy_conv)
            .is_none_or(|l| l.messages.is_none()));
        // The flow ends (idle past the timeout): it is unwatched and the change reported.
        let out = e.tick(10_000 * S);
        assert!(!e.is_watched(&quiet));
        assert!(out.watch.added.is_empty());
        assert!(out.watch.removed.contains(&quiet));
        assert!(out.watch.kept.is_empty(), "nothing is left to re-arm");
    }

    #[test]
    fn watching_is_bounded_and_refusals_counted() {
        let mut e = engine(2);
        for port in 40000..40005 {
            session(&mut e, port, 100, 100);
        }
        assert_eq!(e.watched().count(), 2);
        assert!(e.stats().watch_refused >= 3, "{}", e.stats().watch_refused);
        // Flows watched before are re-armed at every tick, not added again.
        let out = e.tick(101 * S);
        assert!(out.watch.added.is_empty());
        assert_eq!(out.watch.kept.len(), 2);
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;
    use sensor_common::ipv4_mapped;

    #[test]
    fn a_stratum_subscribe_raises_mining_protocol() {
        let mut e = Engine::new(&Config::default(), Observer::default());
        let (key, dir) = FlowKey::canonical(
            &ipv4_mapped([10, 0, 0, 1]),
            40000,
            &ipv4_mapped([10, 0, 0, 2]),
            3333,
            6,
        );
        e.add_packet(&key, dir, 60, 0x02, 1_000);
        e.add_packet(&key, 1 - dir, 60, 0x12, 2_000);
        let msg = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"bfgminer/5.2.0\"]}\n";
        e.add_packet(&key, dir, 120, 0x18, 3_000);
        e.payload(&key, dir, false, msg, 3_000);
        let conv = e.table.orientation(&key).expect("flow").0;
        assert!(
            e.labels
                .get(&conv)
                .is_some_and(|l| l.identification.is_some()),
            "labelled: {:?}",
            e.labels.get(&conv)
        );
        assert!(
            e.table.conversation(&conv).is_some_and(|c| c.dirty),
            "dirty"
        );
        let events = e.tick(4_000).alarms;
        assert!(
            events.iter().any(|x| x.rule == "mining_protocol"),
            "{:?}",
            events.iter().map(|x| x.rule).collect::<Vec<_>>()
        );
    }
    /// A session joined mid-stream on ports that say nothing (both ephemeral): the pool's
    /// `mining.notify` comes first, so the first-packet rule would make the pool the client.
    #[test]
    fn a_pool_speaking_first_is_the_server_by_payload() {
        let mut e = Engine::new(&Config::default(), Observer::default());
        let (miner, pool) = (ipv4_mapped([10, 0, 2, 15]), ipv4_mapped([74, 84, 128, 158]));
        let (key, dir) = FlowKey::canonical(&miner, 53310, &pool, 40333, 6);
        let notify = b"{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"2751-3\",\"fb\",\"01\",\"ff\",[],\"20000000\",\"172f4f7b\",\"5b646476\",true]}\n";
        e.add_packet(&key, 1 - dir, 1307, 0x18, 1_000);
        e.payload(&key, 1 - dir, false, notify, 1_000);
        let get = b"{\"params\": [\"2751-3\"], \"id\": \"txlist2751-3\", \"method\": \"mining.get_transactions\"}\n";
        e.add_packet(&key, dir, 82, 0x18, 2_000);
        e.payload(&key, dir, false, get, 2_000);
        let (conv, _) = e.table.orientation(&key).expect("flow");
        assert_eq!(
            (conv.client, conv.server, conv.server_port),
            (miner, pool, 40333)
        );
        let c = e.table.conversation(&conv).expect("conversation");
        assert_eq!(
            (c.start_ns, c.client_bytes, c.server_bytes),
            (1_000, 82, 1307)
        );
        let events = e.tick(4_000).alarms;
        let alarm = events
            .iter()
            .find(|x| x.rule == "mining_protocol")
            .expect("mining_protocol");
        let j = &alarm.json;
        assert_eq!(j["source"]["ip"], "10.0.2.15");
        assert_eq!(j["source"]["port"], 53310);
        assert_eq!(j["sensor"]["client_from"], "payload");
        assert_eq!(j["sensor"]["evidence"]["sent_by"], "server", "{j}");
        assert_eq!(e.table.conversation_count(), 1, "no ghost conversation");
        let rec = e.table.flows().next().expect("flow").to_json("user");
        assert_eq!(rec["source"]["ip"], "10.0.2.15");
        assert_eq!(rec["sensor"]["client_from"], "payload");
    }
}

#[cfg(test)]
mod flood_tests {
    use super::*;
    use crate::{alarm::Action, units::HumanDuration};
    use sensor_common::{ipv4_mapped, CLIENT_BY_FIRST_PACKET, CLIENT_BY_SYN};

    const S: u64 = 1_000_000_000;

    /// A quiet session 10.0.0.1:40000 -> 10.0.0.2:50000 (ports that name no side) read as
    /// kernel snapshots every second, with one keepalive and its answer every 10 s, under a
    /// flood of spoofed SYNs (500 new sources a second, from 12 s to 70 s: longer than both
    /// TCP timeouts) into a table of 64 flows. The flood evicts the session's kernel entry at
    /// 15 s, and every re-created one before the agent reads it until the server's keepalive
    /// at 50 s: the session goes unseen for longer than `tcp_idle_timeout`, which must not end
    /// it. `long_flow` must still fire at 100 s of the session's age with its first packet as
    /// start and its client kept, and `sensor_degraded` say how many flows were refused and
    /// evicted since when.
    #[test]
    fn a_session_outlives_a_flood_that_fills_the_table_and_its_kernel_entry_coming_back_server_first(
    ) {
        let mut cfg = Config::default();
        cfg.detect.long_flow.after = HumanDuration::secs(100);
        cfg.detect.long_flow.ladder = vec![];
        cfg.alarm.suppression_window = HumanDuration::secs(20);
        cfg.flow.max_flows = 64;
        cfg.flow.tcp_unestablished_timeout = HumanDuration::secs(5);
        cfg.flow.tcp_idle_timeout = HumanDuration::secs(30);
        let mut e = Engine::new(&cfg, Observer::default());
        let (client, server) = (ipv4_mapped([10, 0, 0, 1]), ipv4_mapped([10, 0, 0, 2]));
        let (key, d) = FlowKey::canonical(&client, 40000, &server, 50000, 6);
        let client_code = if d == 0 { CLIENT_LO } else { CLIENT_HI };
        // The kernel entry: (counters, first time, last time).
        let mut entry = FlowStats {
            client: client_code,
            client_source: CLIENT_BY_SYN,
            tcp_flags: 0x12 | 0x12 << 8,
            ..FlowStats::default()
        };
        entry.packets = [2, 2];
        let (mut first, mut last) = (0, 0);
        let mut events = Vec::new();
        let mut n = 0u32;
        for t in 1..=110u64 {
            if t == 15 {
                // Evicted by the flood; the server's keepalive at 20 s creates it anew.
                entry = FlowStats {
                    client: client_code ^ 1,
                    client_source: CLIENT_BY_FIRST_PACKET,
                    tcp_flags: 0x10 << (8 * (1 - d)),
                    ..FlowStats::default()
                };
                entry.packets = [0, 0];
                first = 50 * S;
            }
            if t % 10 == 0 && !(15..50).contains(&t) {
                entry.packets[1 - d] += 1;
                entry.packets[d] += 1;
                entry.bytes[1 - d] += 60;
                entry.bytes[d] += 52;
                last = t * S;
            }
            if entry.packets != [0, 0] {
                e.update_flow(&key, &entry, first, last);
            }
            if (12..70).contains(&t) {
                for _ in 0..500 {
                    n += 1;
                    let src = ipv4_mapped([172, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
                    let (k, kd) = FlowKey::canonical(&src, 40000, &server, 80, 6);
                    e.add_packet(&k, kd, 40, 0x02, t * S);
                }
            }
            let out = e.tick(t * S);
            assert!(
                !out.ended.iter().any(|f| f.key == key),
                "the session never ends"
            );
            assert!(e.table.flow_count() <= 64);
            events.extend(out.alarms);
        }
        let long = events
            .iter()
            .find(|a| a.rule == "long_flow")
            .expect("long_flow");
        let j = &long.json;
        assert_eq!(long.action, Action::Opened);
        assert_eq!(j["@timestamp"], crate::clock::rfc3339_micros(100 * S));
        assert_eq!(j["event"]["start"], crate::clock::rfc3339_micros(0));
        assert_eq!(
            (j["source"]["ip"].as_str(), j["source"]["port"].as_u64()),
            (Some("10.0.0.1"), Some(40000))
        );
        assert_eq!(j["sensor"]["client_from"], "syn");
        assert!(
            e.table.conversation_count() <= 65,
            "{}",
            e.table.conversation_count()
        );

        let degraded: Vec<&AlarmEvent> = events
            .iter()
            .filter(|a| a.rule == "sensor_degraded")
            .collect();
        let actions: Vec<Action> = degraded.iter().map(|a| a.action).collect();
        // Opened at the first tick of the flood, updated once per 20 s window while it
        // lasts, closed a window after its last eviction.
        assert_eq!(
            actions,
            [
                Action::Opened,
                Action::Updated,
                Action::Updated,
                Action::Updated,
                Action::Closed
            ]
        );
        let first_ev = &degraded[0].json["sensor"]["evidence"];
        assert_eq!(first_ev["since"], crate::clock::rfc3339_micros(12 * S));
        let ev = &degraded[4].json["sensor"]["evidence"];
        let s = e.stats();
        assert_eq!(ev["evicted_flows"].as_u64(), Some(s.flows_evicted));
        assert_eq!(
            s.flows_evicted,
            u64::from(n) - 63,
            "every flood flow beyond the room"
        );
        assert_eq!(ev["refused_flows"], 0);
        assert_eq!(ev["recreated_sessions"], 1);
        assert_eq!(s.sessions_recreated, 1);
        assert_eq!(s.sessions_unobserved_ns, 40 * S);
        assert!(degraded.iter().all(|a| a.id == degraded[0].id));
    }
}
