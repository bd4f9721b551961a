//! Alarms: turning detector findings into a lifecycle the SIEM can follow.
//!
//! One alarm per (rule, conversation): `opened` when the rule first holds, `updated` when its
//! severity rises or, at most once per suppression window, while it keeps holding (with a hit
//! count), `closed` when the rule stops holding or the conversation ends. The id is stable
//! (derived from the rule, the endpoints and the conversation's start), so a replay of the
//! same capture yields the same ids. Allowlisted conversations never raise alarms.
//!
//! Besides the per-conversation alarms, two episode alarms are kept here: `sensor_degraded`
//! ([`degraded`], a flow table under pressure) and `mining_host` ([`mining_host`], a host's
//! mining gathered from the other rules' alarms across conversations and days).
//!
//! Rendering follows the alarm contract in docs/ARCHITECTURE.md (ECS field names). Strings taken from
//! traffic are escaped by serde_json; nothing is formatted into JSON by hand.

pub mod degraded;
pub mod mining_host;
pub mod settings;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use crate::{
    alarm::settings::AlarmConfig,
    detect::Finding,
    flow::{
        record::{ip_of, transport_name, FlowRecord},
        roles::client_from,
        table::{ConvKey, Conversation},
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Opened,
    Updated,
    Closed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Opened => "opened",
            Action::Updated => "updated",
            Action::Closed => "closed",
        }
    }
}

/// Who observed: goes to `observer.*`.
#[derive(Clone, Debug, Default)]
pub struct Observer {
    pub hostname: String,
    /// Set when the sensor watches exactly one interface.
    pub interface: Option<String>,
    /// Set when the flows came from someone else's telemetry (flow logs, NetFlow/IPFIX)
    /// rather than the sensor's own packets: `sensor.telemetry` and its time resolution.
    pub telemetry: Option<Telemetry>,
}

/// Where flows came from when not from packets, and how finely that source sees time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Telemetry {
    /// `aws-vpc`, `azure-vnet`, `azure-nsg`, `gcp-vpc` (later `netflow-v9`, `ipfix`).
    pub name: &'static str,
    /// The records' aggregation interval in seconds: durations and times of the alarm are
    /// known to within it.
    pub resolution_s: u64,
    /// 1-in-N packet sampling of the records (1: none): counts were scaled by it.
    pub sampling: u32,
}

impl Observer {
    pub fn local(interface: Option<String>) -> Self {
        let mut buf = [0u8; 256];
        // SAFETY: buf is writable for its length; gethostname NUL-terminates on success.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let hostname = if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            String::new()
        };
        Observer {
            hostname,
            interface,
            telemetry: None,
        }
    }
}

struct OpenAlarm {
    id: String,
    rule_name: &'static str,
    severity: u8,
    hits: u64,
    last_sent_ns: u64,
    finding: Finding,
}

/// One alarm event, rendered.
#[derive(Clone, Debug)]
pub struct AlarmEvent {
    pub rule: &'static str,
    pub action: Action,
    pub id: String,
    pub json: Value,
    /// The conversation of a per-conversation rule's alarm, as rendered (for the host view,
    /// which gathers alarms without reading their JSON back).
    pub conv: Option<ConvFacts>,
}

/// What an alarm said about its conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvFacts {
    pub key: ConvKey,
    pub start_ns: u64,
    pub last_ns: u64,
    /// Sent by the client, by the server.
    pub bytes: [u64; 2],
}

pub struct AlarmManager {
    cfg: AlarmConfig,
    observer: Observer,
    open: HashMap<(&'static str, ConvKey), OpenAlarm>,
    /// Open alarms per conversation, so conversations without any are skipped cheaply.
    open_per_conv: HashMap<ConvKey, u32>,
    /// Alarms opened, by rule.
    pub opened_by_rule: BTreeMap<&'static str, u64>,
    /// Findings dropped by the allowlist.
    pub allowlisted: u64,
    /// The flow table's pressure episode being reported (`sensor_degraded`), and the
    /// counters when the last one closed.
    degraded: Option<degraded::Episode>,
    degraded_base: degraded::Pressure,
    /// Mining hosts gathered from the other rules' alarms (`mining_host`).
    hosts: mining_host::HostView,
}

impl AlarmManager {
    pub fn new(cfg: AlarmConfig, observer: Observer) -> Self {
        AlarmManager {
            cfg,
            observer,
            open: HashMap::new(),
            open_per_conv: HashMap::new(),
            opened_by_rule: BTreeMap::new(),
            allowlisted: 0,
            degraded: None,
            degraded_base: degraded::Pressure::default(),
            hosts: mining_host::HostView::new(Default::default()),
        }
    }

    /// Sets up the host view (`detect.mining_host`); episodes already tracked are kept.
    pub fn set_mining_host(&mut self, cfg: crate::detect::mining_host::MiningHostConfig) {
        let mut view = mining_host::HostView::new(cfg);
        view.take_episodes(&mut self.hosts);
        self.hosts = view;
    }

    /// `observer.*` of every alarm.
    fn observer_json(&self) -> Value {
        let mut observer = json!({ "hostname": self.observer.hostname });
        if let Some(iface) = &self.observer.interface {
            observer["ingress"] = json!({ "interface": { "name": iface } });
        }
        observer
    }

    /// `sensor.telemetry*` when the flows came from someone else's records.
    fn telemetry_json(&self, json: &mut Value) {
        if let Some(t) = &self.observer.telemetry {
            json["sensor"]["telemetry"] = json!(t.name);
            json["sensor"]["telemetry_resolution_s"] = json!(t.resolution_s);
            if t.sampling > 1 {
                // Counts are estimates: the exporter saw 1 in N packets.
                json["sensor"]["telemetry_sampling"] = json!(t.sampling);
            }
        }
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Whether any rule has an open alarm on `conv`.
    pub fn has_open(&self, conv: &ConvKey) -> bool {
        !self.open_per_conv.is_empty() && self.open_per_conv.contains_key(conv)
    }

    fn opened(&mut self, conv: ConvKey) {
        *self.open_per_conv.entry(conv).or_default() += 1;
    }

    fn closed(&mut self, conv: ConvKey) {
        if let Some(n) = self.open_per_conv.get_mut(&conv) {
            *n -= 1;
            if *n == 0 {
                self.open_per_conv.remove(&conv);
            }
        }
    }

    /// Whether `rule` has an open alarm on `conv`.
    pub fn is_open(&self, rule: &'static str, conv: &ConvKey) -> bool {
        self.open.contains_key(&(rule, *conv))
    }

    fn allowlisted_conv(&self, rule: &str, conv: &Conversation) -> bool {
        let (client, server) = (ip_of(&conv.key.client), ip_of(&conv.key.server));
        self.cfg.allow.iter().any(|a| {
            (a.rules.is_empty() || a.rules.iter().any(|r| r == rule))
                && a.port.is_none_or(|p| p == conv.key.server_port)
                && a.cidr
                    .is_none_or(|c| c.contains(client) || c.contains(server))
        })
    }

    /// Applies one detector's verdict on one conversation at `now`. `final_word` forces an
    /// `updated` event for an open alarm (end of input: the SIEM gets the last state).
    pub fn observe(
        &mut self,
        rule: &'static str,
        rule_name: &'static str,
        conv: &Conversation,
        finding: Option<Finding>,
        now: u64,
        final_word: bool,
    ) -> Option<AlarmEvent> {
        let slot = (rule, conv.key);
        let Some(finding) = finding else {
            // The rule no longer holds (a quiet conversation got loud): close.
            if !self.has_open(&conv.key) {
                return None;
            }
            let alarm = self.open.remove(&slot)?;
            self.closed(conv.key);
            return Some(self.render(
                rule,
                Action::Closed,
                &alarm,
                conv,
                now,
                Some("rule no longer holds"),
            ));
        };
        if !self.open.contains_key(&slot) && self.allowlisted_conv(rule, conv) {
            self.allowlisted += 1;
            return None;
        }
        let window = self.cfg.suppression_window.as_nanos();
        match self.open.get_mut(&slot) {
            None => {
                let alarm = OpenAlarm {
                    id: alarm_id(rule, conv),
                    rule_name,
                    severity: finding.severity,
                    hits: 1,
                    last_sent_ns: now,
                    finding,
                };
                *self.opened_by_rule.entry(rule).or_default() += 1;
                let event = self.render(rule, Action::Opened, &alarm, conv, now, None);
                self.open.insert(slot, alarm);
                self.opened(conv.key);
                Some(event)
            }
            Some(alarm) => {
                alarm.hits += 1;
                let rose = finding.severity > alarm.severity;
                alarm.finding = finding;
                alarm.severity = alarm.severity.max(alarm.finding.severity);
                if rose
                    || (final_word && now > alarm.last_sent_ns)
                    || now.saturating_sub(alarm.last_sent_ns) >= window
                {
                    alarm.last_sent_ns = now;
                    let alarm = &self.open[&slot];
                    Some(self.render(
                        rule,
                        Action::Updated,
                        alarm,
                        conv,
                        now,
                        final_word.then_some("end of input"),
                    ))
                } else {
                    None
                }
            }
        }
    }

    /// Closes every alarm of a conversation that ended.
    pub fn conversation_ended(&mut self, conv: &Conversation, now: u64) -> Vec<AlarmEvent> {
        let rules: Vec<&'static str> = self
            .open
            .keys()
            .filter(|(_, k)| *k == conv.key)
            .map(|(r, _)| *r)
            .collect();
        let mut out = Vec::new();
        for rule in rules {
            if let Some(alarm) = self.open.remove(&(rule, conv.key)) {
                self.closed(conv.key);
                out.push(self.render(
                    rule,
                    Action::Closed,
                    &alarm,
                    conv,
                    now,
                    Some("conversation ended"),
                ));
            }
        }
        out
    }

    fn render(
        &self,
        rule: &'static str,
        action: Action,
        alarm: &OpenAlarm,
        conv: &Conversation,
        now: u64,
        reason: Option<&str>,
    ) -> AlarmEvent {
        let mut event = json!({
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["connection", "indicator"],
            "id": alarm.id,
            "action": action.as_str(),
            "start": rfc3339(conv.start_ns),
            "end": rfc3339(conv.last_ns),
            "duration": conv.duration_ns(),
            "severity": alarm.severity,
        });
        if let Some(r) = reason {
            event["reason"] = json!(r);
        }
        let flow = FlowRecord {
            key: conv.last_flow_key(),
            stats: Default::default(),
            start_ns: None,
            end_ns: None,
            tunnel: None,
            host: None,
        };
        let mut network = json!({
            "transport": transport_name(conv.key.proto),
            "iana_number": conv.key.proto.to_string(),
            "bytes": conv.total_bytes(),
            "packets": conv.client_packets + conv.server_packets,
        });
        if let Some(id) = flow.community_id() {
            network["community_id"] = json!(id);
        }
        let observer = self.observer_json();
        let json = json!({
            "@timestamp": rfc3339(now),
            "event": event,
            "rule": { "id": rule, "name": alarm.rule_name },
            "source": {
                "ip": ip_of(&conv.key.client).to_string(),
                "port": conv.client_port,
                "bytes": conv.client_bytes,
                "packets": conv.client_packets,
            },
            "destination": {
                "ip": ip_of(&conv.key.server).to_string(),
                "port": conv.key.server_port,
                "bytes": conv.server_bytes,
                "packets": conv.server_packets,
            },
            "network": network,
            "observer": observer,
            "threat": threat_json(),
            "sensor": {
                "evidence": Value::Object(alarm.finding.evidence.clone()),
                "hits": alarm.hits,
                "conversation": { "flows": conv.flows_seen, "open_flows": conv.open_flows },
                "client_from": client_from(conv.client_from),
            },
        });
        let mut json = json;
        if let Some(t) = &conv.tunnel {
            let (key, info) = &**t;
            json["tunnel"] = crate::flow::record::tunnel_json(info, key.addr_lo == conv.key.client);
        }
        if let Some(h) = &conv.host {
            crate::flow::host::render(&mut json, h);
        }
        self.telemetry_json(&mut json);
        AlarmEvent {
            rule,
            action,
            id: alarm.id.clone(),
            json,
            conv: Some(ConvFacts {
                key: conv.key,
                start_ns: conv.start_ns,
                last_ns: conv.last_ns,
                bytes: [conv.client_bytes, conv.server_bytes],
            }),
        }
    }
}

/// An open alarm in the state file: after a restart it is updated or closed under the same
/// id, never opened again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmSnapshot {
    pub rule: String,
    pub conv: ConvKey,
    pub id: String,
    pub severity: u8,
    pub hits: u64,
    /// When it was last sent: the suppression window runs on across the restart.
    pub last_sent_ns: u64,
    /// `sensor.evidence` of the last finding, as JSON text (the state file's format is not
    /// self-describing; the evidence is).
    pub evidence: String,
}

/// Longest evidence text read back from a state file.
const MAX_EVIDENCE_BYTES: usize = 64 * 1024;

impl AlarmManager {
    /// The open alarms, for the state file.
    pub fn snapshot(&self) -> Vec<AlarmSnapshot> {
        self.open
            .iter()
            .map(|((rule, conv), a)| AlarmSnapshot {
                rule: rule.to_string(),
                conv: *conv,
                id: a.id.clone(),
                severity: a.severity,
                hits: a.hits,
                last_sent_ns: a.last_sent_ns,
                evidence: Value::Object(a.finding.evidence.clone()).to_string(),
            })
            .collect()
    }

    /// Takes open alarms from a snapshot into this (new) manager: those of a rule in `rules`
    /// (id, name: the rules evaluated now) on a conversation `known` says exists, with a
    /// well-formed id, severity and evidence. Returns (restored, skipped).
    pub fn restore(
        &mut self,
        alarms: Vec<AlarmSnapshot>,
        rules: &[(&'static str, &'static str)],
        known: impl Fn(&ConvKey) -> bool,
    ) -> (usize, usize) {
        let (mut restored, mut skipped) = (0, 0);
        for a in alarms {
            let rule = rules.iter().find(|(id, _)| *id == a.rule);
            let evidence = (a.evidence.len() <= MAX_EVIDENCE_BYTES)
                .then(|| serde_json::from_str::<Value>(&a.evidence).ok())
                .flatten();
            let well_formed = !a.id.is_empty()
                && a.id.len() <= 64
                && a.id.bytes().all(|b| b.is_ascii_hexdigit())
                && a.severity <= 10;
            let (Some(&(rule, rule_name)), Some(Value::Object(evidence)), true, true) =
                (rule, evidence, well_formed, known(&a.conv))
            else {
                skipped += 1;
                continue;
            };
            if self.open.contains_key(&(rule, a.conv)) {
                skipped += 1;
                continue;
            }
            self.open.insert(
                (rule, a.conv),
                OpenAlarm {
                    id: a.id,
                    rule_name,
                    severity: a.severity,
                    hits: a.hits,
                    last_sent_ns: a.last_sent_ns,
                    finding: Finding {
                        severity: a.severity,
                        evidence,
                    },
                },
            );
            self.opened(a.conv);
            restored += 1;
        }
        (restored, skipped)
    }
}

/// `threat.*` of the mining alarms: ATT&CK T1496.
fn threat_json() -> Value {
    json!({
        "framework": "MITRE ATT&CK",
        "technique": { "id": ["T1496"], "name": ["Resource Hijacking"] },
    })
}

/// An alarm manager re-sending at most every `window_s` seconds, for tests.
#[cfg(test)]
fn test_manager(window_s: u64) -> AlarmManager {
    AlarmManager::new(
        settings::AlarmConfig {
            suppression_window: crate::units::HumanDuration::secs(window_s),
            ..settings::AlarmConfig::default()
        },
        Observer::default(),
    )
}

fn rfc3339(ns: u64) -> String {
    crate::clock::rfc3339_micros(ns)
}

/// Stable id: the same rule on the same conversation (endpoints, server port, transport,
/// start) always gets the same id.
fn alarm_id(rule: &str, conv: &Conversation) -> String {
    let mut h = Sha1::new();
    h.update(rule.as_bytes());
    for w in conv.key.client.iter().chain(conv.key.server.iter()) {
        h.update(w.to_ne_bytes());
    }
    h.update(conv.key.server_port.to_be_bytes());
    h.update([conv.key.proto]);
    h.update(conv.start_ns.to_be_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
