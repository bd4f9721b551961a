//! `mining_host`: one alarm per mining host and episode, gathered from the alarms of the
//! per-conversation rules, so the SIEM gets one answer per host (coins, pools, since when,
//! for how long, how much) instead of one alarm per reconnect.
//!
//! Lifecycle (modelled on `sensor_degraded`, see [`super::degraded`]):
//! - `opened` at the tick of a host's first confirmed mining conversation: an alarm of a rule
//!   in [`CONFIRMING_RULES`] whose client (the miner) is the host;
//! - `updated` when a new pool, a new coin or a new day (UTC) of activity appears, at most once
//!   per `alarm.suppression_window`, and once at the end of an input (a replay's last word)
//!   when anything changed since it was last sent;
//! - `closed` once the host went `detect.mining_host.quiet_for` without member activity (a
//!   member alarm's conversation last seen that long ago). A member whose conversation is
//!   active again after such a gap starts a new episode (a new id).
//!
//! Members: the alarms (every action) of the confirming rules, and of [`JOINING_RULES`] (long
//! and quiet long flows) only when they go to a server (address, port, transport) the host
//! already mines with; a long flow alone never makes a host a miner. Totals count each member
//! conversation once, from its latest counts (several rules and updates of one conversation
//! are one conversation): time connected is the sum of the conversations' durations, bytes
//! are each side's total.
//!
//! Bounds (an attacker controls how many pools and names a host reaches): at most
//! `max_hosts` episodes (a new miner beyond is counted in `hosts_dropped`, not tracked),
//! [`MAX_POOLS`] pools per host (conversations to further pools count in the totals and in
//! `unlisted_pool_conversations`), [`MAX_DOMAINS`] names and [`MAX_COINS`] coins per pool,
//! strings cut to [`MAX_NAME`] bytes, [`MAX_CONVS`] conversations kept apart per host (the
//! oldest, preferring those whose alarms all closed, are folded into the totals; an alarm
//! of a folded conversation arriving later counts that conversation again), and the last
//! [`MAX_MEMBER_IDS`] member alarm ids with a count of all.
//!
//! The id derives from the rule, the host address and the episode's start (its first member
//! conversation's start), so a replay gives the same id and a restart (the episode is in the
//! state file) continues it. It never reads traffic itself and never raises an alarm without
//! a confirmed member.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};

use super::{rfc3339, Action, AlarmEvent, AlarmManager, ConvFacts};
use crate::{
    detect::{
        mining_host::{confirms, rule_bit, rules_of, MiningHostConfig, MEMBER_RULES},
        secs,
    },
    flow::{
        record::{ip_of, transport_name},
        table::ConvKey,
    },
};

pub const RULE: &str = "mining_host";
const RULE_NAME: &str = "Cryptomining Host";
/// Pools listed per host.
pub const MAX_POOLS: usize = 32;
/// Names (SNI, DNS) kept per pool.
pub const MAX_DOMAINS: usize = 4;
/// Coins kept per pool.
pub const MAX_COINS: usize = 4;
/// Longest name, coin or reason kept (a DNS name is at most 253 bytes).
pub const MAX_NAME: usize = 253;
/// Conversations kept apart per host (for counting each once).
pub const MAX_CONVS: usize = 256;
/// Member alarm ids listed per host (the last ones; `member_alarms` counts all).
pub const MAX_MEMBER_IDS: usize = 64;
const DAY_NS: u64 = 86_400 * 1_000_000_000;

/// Time and bytes of conversations no longer kept apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Totals {
    conversations: u64,
    duration_ns: u64,
    /// Sent by the host, received from the servers.
    bytes: [u64; 2],
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.conversations += o.conversations;
        self.duration_ns = self.duration_ns.saturating_add(o.duration_ns);
        self.bytes[0] = self.bytes[0].saturating_add(o.bytes[0]);
        self.bytes[1] = self.bytes[1].saturating_add(o.bytes[1]);
    }
}

/// One server the host mines with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pool {
    ip: IpAddr,
    port: u16,
    proto: u8,
    domains: Vec<String>,
    /// (coin, why) as the member alarm said.
    coins: Vec<(String, Option<String>)>,
    first_ns: u64,
    last_ns: u64,
    /// Member rules seen on it (bits over `MEMBER_RULES`).
    rules: u8,
    /// Conversations folded out of the episode's list.
    settled: Totals,
}

/// One member conversation, from its latest alarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Conv {
    key: ConvKey,
    start_ns: u64,
    last_ns: u64,
    bytes: [u64; 2],
    /// Rules that joined with it, and those whose alarm is still open.
    rules: u8,
    open: u8,
}

impl Conv {
    fn totals(&self) -> Totals {
        Totals {
            conversations: 1,
            duration_ns: self.last_ns.saturating_sub(self.start_ns),
            bytes: self.bytes,
        }
    }

    fn to(&self, pool: &Pool) -> bool {
        ip_of(&self.key.server) == pool.ip
            && self.key.server_port == pool.port
            && self.key.proto == pool.proto
    }
}

/// A host's mining episode; also its form in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEpisode {
    id: String,
    host: IpAddr,
    first_ns: u64,
    last_ns: u64,
    last_sent_ns: u64,
    /// A new pool, coin or day since it was last sent (an update is due), and any change.
    pending: bool,
    changed: bool,
    severity: u8,
    pools: Vec<Pool>,
    unlisted: Totals,
    convs: Vec<Conv>,
    members: VecDeque<String>,
    member_alarms: u64,
    hits: u64,
    days: u32,
    last_day: u64,
}

/// The host episodes and what did not fit.
#[derive(Default)]
pub(super) struct HostView {
    cfg: MiningHostConfig,
    episodes: BTreeMap<IpAddr, HostEpisode>,
    /// New miners not tracked because `max_hosts` episodes were open.
    pub hosts_dropped: u64,
    /// Episodes opened in this batch, to send `opened` for.
    fresh: Vec<IpAddr>,
}

impl HostView {
    pub fn new(cfg: MiningHostConfig) -> Self {
        HostView {
            cfg,
            ..HostView::default()
        }
    }

    /// Moves `old`'s episodes and counts into this view (settings changed, state kept).
    pub fn take_episodes(&mut self, old: &mut HostView) {
        self.episodes = std::mem::take(&mut old.episodes);
        self.hosts_dropped = old.hosts_dropped;
    }
}

/// `s` cut to at most [`MAX_NAME`] bytes on a character boundary.
fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn episode_id(host: IpAddr, start_ns: u64) -> String {
    let mut h = Sha1::new();
    h.update(RULE.as_bytes());
    match host {
        IpAddr::V4(a) => h.update(a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(start_ns.to_be_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl HostEpisode {
    fn new(host: IpAddr, start_ns: u64, now: u64) -> Self {
        HostEpisode {
            id: episode_id(host, start_ns),
            host,
            first_ns: start_ns,
            last_ns: start_ns,
            last_sent_ns: now,
            pending: false,
            changed: false,
            severity: 0,
            pools: Vec::new(),
            unlisted: Totals::default(),
            convs: Vec::new(),
            members: VecDeque::new(),
            member_alarms: 0,
            hits: 0,
            days: 0,
            last_day: 0,
        }
    }

    /// Takes one member alarm in. `confirmed`: its rule confirms mining (else it joins only
    /// a pool already listed). Returns false when it was not taken.
    fn take(&mut self, e: &AlarmEvent, f: &ConvFacts, bit: u8, confirmed: bool) -> bool {
        let server = ip_of(&f.key.server);
        let listed = self
            .pools
            .iter()
            .position(|p| p.ip == server && p.port == f.key.server_port && p.proto == f.key.proto);
        if !confirmed && listed.is_none() {
            return false;
        }
        let evidence = e.json["sensor"]["evidence"].as_object();
        let ev = |k: &str| evidence.and_then(|m| m.get(k)).and_then(Value::as_str);
        let pool = match listed {
            Some(i) => Some(i),
            None if self.pools.len() < MAX_POOLS => {
                self.pools.push(Pool {
                    ip: server,
                    port: f.key.server_port,
                    proto: f.key.proto,
                    domains: Vec::new(),
                    coins: Vec::new(),
                    first_ns: f.start_ns,
                    last_ns: f.last_ns,
                    rules: 0,
                    settled: Totals::default(),
                });
                self.pending = true;
                Some(self.pools.len() - 1)
            }
            None => None,
        };
        if let Some(p) = pool.map(|i| &mut self.pools[i]) {
            p.rules |= bit;
            p.first_ns = p.first_ns.min(f.start_ns);
            p.last_ns = p.last_ns.max(f.last_ns);
            for name in [ev("sni"), ev("domain")].into_iter().flatten() {
                let name = bounded(name);
                if p.domains.len() < MAX_DOMAINS && !p.domains.contains(&name) {
                    p.domains.push(name);
                }
            }
            if let Some(coin) = ev("coin").map(bounded) {
                if p.coins.len() < MAX_COINS && !p.coins.iter().any(|(c, _)| *c == coin) {
                    p.coins.push((coin, ev("coin_reason").map(bounded)));
                    self.pending = true;
                }
            }
        }
        self.merge_conv(e, f, bit);
        self.first_ns = self.first_ns.min(f.start_ns);
        let day = f.last_ns / DAY_NS;
        if self.days == 0 || day > self.last_day {
            self.pending |= self.days > 0;
            self.days += 1;
            self.last_day = day;
        }
        self.last_ns = self.last_ns.max(f.last_ns);
        let sev = e.json["event"]["severity"].as_u64().unwrap_or(0).min(10) as u8;
        self.severity = self.severity.max(sev);
        self.hits += 1;
        self.changed = true;
        true
    }

    /// The member's conversation, counted once with its latest counts.
    fn merge_conv(&mut self, e: &AlarmEvent, f: &ConvFacts, bit: u8) {
        let at = self
            .convs
            .iter()
            .position(|c| c.key == f.key && c.start_ns == f.start_ns);
        let i = match at {
            Some(i) => i,
            None => {
                if self.convs.len() >= MAX_CONVS {
                    self.fold_one();
                }
                self.convs.push(Conv {
                    key: f.key,
                    start_ns: f.start_ns,
                    last_ns: f.last_ns,
                    bytes: f.bytes,
                    rules: 0,
                    open: 0,
                });
                self.convs.len() - 1
            }
        };
        let c = &mut self.convs[i];
        c.last_ns = c.last_ns.max(f.last_ns);
        c.bytes = [c.bytes[0].max(f.bytes[0]), c.bytes[1].max(f.bytes[1])];
        if e.action == Action::Closed {
            c.open &= !bit;
        } else {
            c.open |= bit;
        }
        if c.rules & bit == 0 {
            c.rules |= bit;
            self.member_alarms += 1;
            if self.members.len() >= MAX_MEMBER_IDS {
                self.members.pop_front();
            }
            self.members.push_back(e.id.clone());
        }
    }

    /// Folds the oldest conversation (preferring one whose alarms all closed) into the totals.
    fn fold_one(&mut self) {
        let Some(i) = (0..self.convs.len()).min_by_key(|&i| {
            let c = &self.convs[i];
            (c.open != 0, c.last_ns)
        }) else {
            return;
        };
        let c = self.convs.swap_remove(i);
        match self.pools.iter_mut().find(|p| c.to(p)) {
            Some(p) => p.settled.add(&c.totals()),
            None => self.unlisted.add(&c.totals()),
        }
    }

    fn pool_totals(&self, p: &Pool) -> Totals {
        let mut t = p.settled;
        for c in self.convs.iter().filter(|c| c.to(p)) {
            t.add(&c.totals());
        }
        t
    }

    fn totals(&self) -> (Totals, u64) {
        let mut t = self.unlisted;
        let mut unlisted = self.unlisted.conversations;
        for p in &self.pools {
            t.add(&p.settled);
        }
        for c in &self.convs {
            t.add(&c.totals());
            if !self.pools.iter().any(|p| c.to(p)) {
                unlisted += 1;
            }
        }
        (t, unlisted)
    }

    fn coins(&self) -> Vec<&str> {
        let mut coins: Vec<&str> = self
            .pools
            .iter()
            .flat_map(|p| p.coins.iter().map(|(c, _)| c.as_str()))
            .collect();
        coins.sort_unstable();
        coins.dedup();
        coins
    }

    /// Whether a restored episode keeps to the bounds and its own shape.
    fn well_formed(&self) -> bool {
        let rules_ok = |m: u8| u32::from(m) < (1 << MEMBER_RULES.len());
        let name_ok = |s: &String| s.len() <= MAX_NAME;
        let host_of = |k: &ConvKey| ip_of(&k.client) == self.host;
        !self.id.is_empty()
            && self.id.len() <= 64
            && self.id.bytes().all(|b| b.is_ascii_hexdigit())
            && self.severity <= 10
            && self.pools.len() <= MAX_POOLS
            && self.convs.len() <= MAX_CONVS
            && self.members.len() <= MAX_MEMBER_IDS
            && self.members.iter().all(|m| m.len() <= 64)
            && self.pools.iter().all(|p| {
                rules_ok(p.rules)
                    && p.domains.len() <= MAX_DOMAINS
                    && p.domains.iter().all(name_ok)
                    && p.coins.len() <= MAX_COINS
                    && p.coins
                        .iter()
                        .all(|(c, r)| name_ok(c) && r.as_ref().is_none_or(name_ok))
            })
            && self
                .convs
                .iter()
                .all(|c| rules_ok(c.rules) && rules_ok(c.open) && host_of(&c.key))
    }
}

impl AlarmManager {
    /// Gathers this tick's `members` (the other rules' alarm events) into host episodes and
    /// evaluates every episode at `now`: the `mining_host` events to send. `final_word` (end
    /// of input) sends every episode that changed since it was last sent.
    pub fn mining_hosts(
        &mut self,
        members: &[AlarmEvent],
        now: u64,
        final_word: bool,
    ) -> Vec<AlarmEvent> {
        let mut out = Vec::new();
        if !self.hosts.cfg.enabled {
            return out;
        }
        let quiet = self.hosts.cfg.quiet_for.as_nanos();
        for e in members {
            let (Some(f), Some(bit)) = (e.conv.as_ref(), rule_bit(e.rule)) else {
                continue;
            };
            let host = ip_of(&f.key.client);
            let confirmed = confirms(e.rule);
            // The last word on a conversation of the host's open episode (no quiet gap between
            // them) still counts there, however late it comes: its final counts are the
            // episode's, which closes after it if `now` is a quiet gap past both.
            let of_open_episode = self.hosts.episodes.get(&host).is_some_and(|ep| {
                f.last_ns.saturating_sub(ep.last_ns) < quiet
                    && ep.first_ns.saturating_sub(f.last_ns) < quiet
            });
            // Any other conversation last active a quiet gap ago (the last word on one from
            // before a restart) belongs to an episode that ended, never to a new one.
            if !of_open_episode
                && (now.saturating_sub(f.last_ns) >= quiet
                    || self
                        .hosts
                        .episodes
                        .get(&host)
                        .is_some_and(|ep| ep.first_ns.saturating_sub(f.last_ns) >= quiet))
            {
                continue;
            }
            // A member active again after a quiet gap: the old episode ended before it.
            if self
                .hosts
                .episodes
                .get(&host)
                .is_some_and(|ep| f.last_ns.saturating_sub(ep.last_ns) >= quiet && confirmed)
            {
                if let Some(ep) = self.hosts.episodes.remove(&host) {
                    self.hosts.fresh.retain(|h| *h != host);
                    out.push(self.render_host(&ep, Action::Closed, now));
                }
            }
            if !self.hosts.episodes.contains_key(&host) {
                if !confirmed {
                    continue;
                }
                if self.hosts.episodes.len() >= self.hosts.cfg.max_hosts {
                    self.hosts.hosts_dropped += 1;
                    continue;
                }
                self.hosts
                    .episodes
                    .insert(host, HostEpisode::new(host, f.start_ns, now));
                self.hosts.fresh.push(host);
            }
            if let Some(ep) = self.hosts.episodes.get_mut(&host) {
                ep.take(e, f, bit, confirmed);
            }
        }
        let window = self.cfg.suppression_window.as_nanos();
        let fresh = std::mem::take(&mut self.hosts.fresh);
        let hosts: Vec<IpAddr> = self.hosts.episodes.keys().copied().collect();
        for host in hosts {
            let Some(ep) = self.hosts.episodes.get(&host) else {
                continue;
            };
            let action = if fresh.contains(&host) {
                *self.opened_by_rule.entry(RULE).or_default() += 1;
                Action::Opened
            } else if now.saturating_sub(ep.last_ns) >= quiet {
                Action::Closed
            } else if (ep.pending && now.saturating_sub(ep.last_sent_ns) >= window)
                || (final_word && ep.changed)
            {
                Action::Updated
            } else {
                continue;
            };
            let mut event = self.render_host(ep, action, now);
            if action == Action::Updated && final_word && !ep.pending {
                event.json["event"]["reason"] = json!("end of input");
            }
            out.push(event);
            if action == Action::Closed {
                self.hosts.episodes.remove(&host);
            } else if let Some(ep) = self.hosts.episodes.get_mut(&host) {
                ep.last_sent_ns = now;
                ep.pending = false;
                ep.changed = false;
            }
        }
        out
    }

    /// Whether `mining_host` alarms are raised.
    pub fn mining_host_enabled(&self) -> bool {
        self.hosts.cfg.enabled
    }

    /// Host episodes being tracked, and new miners not tracked for want of room.
    pub fn mining_host_counts(&self) -> (usize, u64) {
        (self.hosts.episodes.len(), self.hosts.hosts_dropped)
    }

    /// The host episodes, for the state file.
    pub fn host_snapshot(&self) -> Vec<HostEpisode> {
        self.hosts.episodes.values().cloned().collect()
    }

    /// Takes host episodes from a snapshot; those out of bounds or malformed, duplicates and
    /// those beyond `max_hosts` are skipped, and all of them when the host view is off (they
    /// would never be evaluated, only carried from file to file). Returns (restored, skipped).
    pub fn restore_hosts(&mut self, episodes: Vec<HostEpisode>) -> (usize, usize) {
        let (mut restored, mut skipped) = (0, 0);
        for ep in episodes {
            if !self.hosts.cfg.enabled
                || !ep.well_formed()
                || self.hosts.episodes.contains_key(&ep.host)
                || self.hosts.episodes.len() >= self.hosts.cfg.max_hosts
            {
                skipped += 1;
                continue;
            }
            self.hosts.episodes.insert(ep.host, ep);
            restored += 1;
        }
        (restored, skipped)
    }

    fn render_host(&self, ep: &HostEpisode, action: Action, now: u64) -> AlarmEvent {
        let (t, unlisted) = ep.totals();
        let end = ep.last_ns.max(ep.first_ns);
        let mut event = json!({
            "kind": "alert",
            "category": ["host", "intrusion_detection"],
            "type": ["indicator"],
            "id": ep.id,
            "action": action.as_str(),
            "start": rfc3339(ep.first_ns),
            "end": rfc3339(end),
            "duration": end - ep.first_ns,
            "severity": ep.severity.max(self.hosts.cfg.severity),
        });
        if action == Action::Closed {
            event["reason"] = json!("no mining activity for detect.mining_host.quiet_for");
        }
        let pools: Vec<Value> = ep
            .pools
            .iter()
            .map(|p| {
                let pt = ep.pool_totals(p);
                let coins: Vec<Value> = p
                    .coins
                    .iter()
                    .map(|(c, r)| match r {
                        Some(r) => json!({ "coin": c, "reason": r }),
                        None => json!({ "coin": c }),
                    })
                    .collect();
                json!({
                    "ip": p.ip.to_string(),
                    "port": p.port,
                    "transport": transport_name(p.proto),
                    "domains": p.domains,
                    "coins": coins,
                    "rules": rules_of(p.rules).collect::<Vec<_>>(),
                    "first_seen": rfc3339(p.first_ns),
                    "last_seen": rfc3339(p.last_ns),
                    "conversations": pt.conversations,
                    "connected_s": secs(pt.duration_ns),
                    "bytes_out": pt.bytes[0],
                    "bytes_in": pt.bytes[1],
                })
            })
            .collect();
        let mut evidence = Map::new();
        evidence.insert("coins".into(), json!(ep.coins()));
        evidence.insert("pools".into(), Value::Array(pools));
        evidence.insert("unlisted_pool_conversations".into(), json!(unlisted));
        evidence.insert("first_seen".into(), json!(rfc3339(ep.first_ns)));
        evidence.insert("last_seen".into(), json!(rfc3339(end)));
        evidence.insert("days".into(), json!(ep.days));
        evidence.insert("conversations".into(), json!(t.conversations));
        evidence.insert("connected_s".into(), json!(secs(t.duration_ns)));
        evidence.insert("bytes_out".into(), json!(t.bytes[0]));
        evidence.insert("bytes_in".into(), json!(t.bytes[1]));
        evidence.insert("member_alarms".into(), json!(ep.member_alarms));
        evidence.insert("member_alarm_ids".into(), json!(ep.members));
        evidence.insert(
            "quiet_for_s".into(),
            json!(self.hosts.cfg.quiet_for.0.as_secs()),
        );
        let host = ep.host.to_string();
        let mut json = json!({
            "@timestamp": rfc3339(now),
            "event": event,
            "rule": { "id": RULE, "name": RULE_NAME },
            "host": { "ip": [host] },
            "source": { "ip": host, "bytes": t.bytes[0] },
            "destination": { "bytes": t.bytes[1] },
            "network": { "bytes": t.bytes[0].saturating_add(t.bytes[1]) },
            "observer": self.observer_json(),
            "threat": super::threat_json(),
            "sensor": { "evidence": Value::Object(evidence), "hits": ep.hits },
        });
        self.telemetry_json(&mut json);
        AlarmEvent {
            rule: RULE,
            action,
            id: ep.id.clone(),
            json,
            conv: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::ipv4_mapped;

    const S: u64 = 1_000_000_000;
    const H: u64 = 3600 * S;

    fn manager() -> AlarmManager {
        let mut m = super::super::test_manager(3600);
        m.set_mining_host(MiningHostConfig::default());
        m
    }

    /// A member alarm of `rule` from 10.0.0.5 to `pool`:`port`, conversation from `start` to
    /// `last` (ns), with `evidence`.
    fn member(
        rule: &'static str,
        action: Action,
        pool: [u8; 4],
        port: u16,
        (start, last): (u64, u64),
        evidence: Value,
    ) -> AlarmEvent {
        let key = ConvKey {
            client: ipv4_mapped([10, 0, 0, 5]),
            server: ipv4_mapped(pool),
            server_port: port,
            proto: 6,
        };
        AlarmEvent {
            rule,
            action,
            id: format!("{rule}-{port}-{start:x}"),
            json: json!({
                "event": { "severity": 8 },
                "sensor": { "evidence": evidence },
            }),
            conv: Some(ConvFacts {
                key,
                start_ns: start,
                last_ns: last,
                bytes: [100, 1000],
            }),
        }
    }

    fn ev(e: &AlarmEvent) -> &Value {
        &e.json["sensor"]["evidence"]
    }

    #[test]
    fn opens_on_a_confirmed_member_updates_once_per_window_and_closes_after_quiet_for() {
        let mut m = manager();
        let a = [192, 0, 2, 1];
        // A long flow alone never makes a host a miner.
        let long = member("long_flow", Action::Opened, a, 3333, (0, H), json!({}));
        assert!(m.mining_hosts(&[long], H, false).is_empty());
        let btc = json!({ "coin": "bitcoin", "coin_reason": "P2PKH address" });
        let first = member(
            "mining_protocol",
            Action::Opened,
            a,
            3333,
            (0, H),
            btc.clone(),
        );
        let out = m.mining_hosts(&[first], H, false);
        assert_eq!(out.len(), 1);
        let opened = &out[0];
        assert_eq!(opened.action, Action::Opened);
        assert_eq!(opened.json["host"]["ip"][0], "10.0.0.5");
        assert_eq!(opened.json["source"]["ip"], "10.0.0.5");
        assert_eq!(ev(opened)["coins"], json!(["bitcoin"]));
        assert_eq!(ev(opened)["pools"][0]["ip"], "192.0.2.1");
        assert_eq!(
            ev(opened)["pools"][0]["coins"][0]["reason"],
            "P2PKH address"
        );
        assert_eq!(opened.id, episode_id("10.0.0.5".parse().unwrap(), 0));
        // Now a long flow to the same pool joins, and its update counts the conversation once.
        let joined = member("long_flow", Action::Opened, a, 3333, (0, 2 * H), json!({}));
        assert!(m.mining_hosts(&[joined], 2 * H, false).is_empty());
        // A second pool within the window: due, but not sent until the window passed.
        let xmr = json!({ "coin": "monero", "sni": "xmr.pool.example" });
        let second = member(
            "encrypted_mining",
            Action::Opened,
            [198, 51, 100, 7],
            443,
            (H + H / 2, 2 * H),
            xmr,
        );
        assert!(m.mining_hosts(&[second], 2 * H - S, false).is_empty());
        let out = m.mining_hosts(&[], 2 * H, false);
        assert_eq!(out.len(), 1, "updated once the window passed");
        let up = &out[0];
        assert_eq!(
            (up.action, up.id.as_str()),
            (Action::Updated, opened.id.as_str())
        );
        assert_eq!(ev(up)["coins"], json!(["bitcoin", "monero"]));
        assert_eq!(ev(up)["pools"][1]["domains"], json!(["xmr.pool.example"]));
        assert_eq!(ev(up)["conversations"], 2);
        assert_eq!(ev(up)["connected_s"], 2.0 * 3600.0 + 1800.0);
        assert_eq!(ev(up)["bytes_out"], 200);
        assert_eq!(ev(up)["member_alarms"], 3);
        assert_eq!(
            ev(up)["pools"][0]["rules"],
            json!(["mining_protocol", "long_flow"])
        );
        // Nothing new: no update, however long the window; the same pool again is not new.
        let again = member("mining_protocol", Action::Updated, a, 3333, (0, 5 * H), btc);
        assert!(m.mining_hosts(&[again], 5 * H, false).is_empty());
        // A new day of activity is news.
        let next_day = member(
            "mining_protocol",
            Action::Opened,
            a,
            3333,
            (30 * H, 31 * H),
            json!({}),
        );
        let out = m.mining_hosts(&[next_day], 31 * H, false);
        assert_eq!(
            out.iter().map(|e| e.action).collect::<Vec<_>>(),
            [Action::Updated]
        );
        assert_eq!(ev(&out[0])["days"], 2);
        // Quiet for 3 days after the last activity: closed, same id.
        assert!(m.mining_hosts(&[], 31 * H + 72 * H - S, false).is_empty());
        let out = m.mining_hosts(&[], 31 * H + 72 * H, false);
        assert_eq!(
            out.iter()
                .map(|e| (e.action, e.id.as_str()))
                .collect::<Vec<_>>(),
            [(Action::Closed, opened.id.as_str())]
        );
        // Mining again later is a new episode with a new id.
        let later = member(
            "mining_protocol",
            Action::Opened,
            a,
            3333,
            (200 * H, 201 * H),
            json!({}),
        );
        let out = m.mining_hosts(&[later], 201 * H, false);
        assert_eq!(out[0].action, Action::Opened);
        assert_ne!(out[0].id, opened.id);
        assert_eq!(m.opened_by_rule.get(RULE), Some(&2));
    }

    /// After a restart, the last word on conversations of an ended episode (their alarms
    /// closing) arrives with the new episode's members: it neither joins the new episode nor
    /// opens one of its own.
    #[test]
    fn members_from_before_a_quiet_gap_join_no_later_episode() {
        let mut m = manager();
        let (a, b) = ([192, 0, 2, 1], [192, 0, 2, 2]);
        let old = member(
            "mining_protocol",
            Action::Opened,
            a,
            3333,
            (0, H),
            json!({}),
        );
        let first = m.mining_hosts(&[old], H, false).remove(0);
        let later = 1000 * H;
        let new = member(
            "mining_protocol",
            Action::Opened,
            b,
            3333,
            (later - S, later),
            json!({}),
        );
        let old_closed = member(
            "mining_protocol",
            Action::Closed,
            a,
            3333,
            (0, H),
            json!({}),
        );
        let out = m.mining_hosts(&[new, old_closed], later, false);
        let actions: Vec<(Action, bool)> =
            out.iter().map(|e| (e.action, e.id == first.id)).collect();
        assert_eq!(actions, [(Action::Closed, true), (Action::Opened, false)]);
        assert_eq!(ev(&out[1])["pools"].as_array().map(Vec::len), Some(1));
        assert_eq!(ev(&out[1])["pools"][0]["ip"], "192.0.2.2");
        // Alone, a stale member opens nothing.
        let mut m = manager();
        let stale = member(
            "mining_protocol",
            Action::Closed,
            a,
            3333,
            (0, H),
            json!({}),
        );
        assert!(m.mining_hosts(&[stale], later, false).is_empty());
    }

    #[test]
    fn a_late_last_word_on_an_open_episode_counts_before_it_closes() {
        let mut m = manager();
        let a = [192, 0, 2, 1];
        let opened = member(
            "mining_protocol",
            Action::Opened,
            a,
            3333,
            (0, H),
            json!({}),
        );
        let first = m.mining_hosts(&[opened], H, false).remove(0);
        // The conversation's last word arrives with the tick that comes long after it (a
        // replay whose next capture is years later): it ran until 2H, and the episode closes
        // with that, under its id.
        let later = 1000 * H;
        let last_word = member(
            "mining_protocol",
            Action::Closed,
            a,
            3333,
            (0, 2 * H),
            json!({}),
        );
        let out = m.mining_hosts(&[last_word], later, false);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].action, &out[0].id), (Action::Closed, &first.id));
        let last_seen = ev(&out[0])["pools"][0]["last_seen"].clone();
        assert_eq!(
            last_seen,
            ev(&out[0])["last_seen"],
            "the pool and the episode end with the last word"
        );
        assert_ne!(
            last_seen,
            ev(&first)["last_seen"],
            "the last word moved the end"
        );
    }

    #[test]
    fn the_final_word_sends_what_changed_and_collections_are_bounded() {
        let mut m = manager();
        let first = member(
            "mining_protocol",
            Action::Opened,
            [192, 0, 2, 1],
            3333,
            (0, S),
            json!({}),
        );
        assert_eq!(m.mining_hosts(&[first], S, false).len(), 1);
        assert!(
            m.mining_hosts(&[], 2 * S, true).is_empty(),
            "nothing changed"
        );
        let mut burst = Vec::new();
        for i in 0..(MAX_POOLS as u16 + 10) {
            let long = "x".repeat(1000);
            let ev = json!({ "domain": long, "coin": format!("c{i}") });
            burst.push(member(
                "mining_infrastructure",
                Action::Opened,
                [198, 51, 100, (i % 200) as u8],
                4000 + i,
                (2 * S, 3 * S),
                ev,
            ));
        }
        let out = m.mining_hosts(&burst, 3 * S, true);
        assert_eq!(out.len(), 1);
        let e = ev(&out[0]);
        assert_eq!(e["pools"].as_array().map(Vec::len), Some(MAX_POOLS));
        assert_eq!(e["unlisted_pool_conversations"], 11);
        assert_eq!(e["conversations"], MAX_POOLS as u64 + 11);
        assert_eq!(
            e["pools"][1]["domains"][0].as_str().map(str::len),
            Some(MAX_NAME)
        );
        assert_eq!(e["member_alarms"], MAX_POOLS as u64 + 11);
        assert_eq!(
            e["member_alarm_ids"].as_array().map(Vec::len),
            Some(MAX_MEMBER_IDS.min(MAX_POOLS + 11))
        );
        // Beyond max_hosts, a new miner is counted, not tracked.
        let mut m = manager();
        m.set_mining_host(MiningHostConfig {
            max_hosts: 1,
            ..MiningHostConfig::default()
        });
        let mut other = member(
            "blockchain_p2p",
            Action::Opened,
            [203, 0, 113, 9],
            8333,
            (0, S),
            json!({}),
        );
        let f = other.conv.as_mut().expect("conv");
        f.key.client = ipv4_mapped([10, 0, 0, 6]);
        let first = member(
            "blockchain_p2p",
            Action::Opened,
            [203, 0, 113, 9],
            8333,
            (0, S),
            json!({}),
        );
        assert_eq!(m.mining_hosts(&[first, other], S, false).len(), 1);
        assert_eq!(m.mining_host_counts(), (1, 1));
    }

    #[test]
    fn conversations_beyond_the_bound_are_folded_into_the_totals() {
        let mut m = manager();
        let mut events = Vec::new();
        for i in 0..(MAX_CONVS as u64 + 5) {
            events.push(member(
                "mining_protocol",
                Action::Closed,
                [192, 0, 2, 1],
                3333,
                (i * 10 * S, i * 10 * S + S),
                json!({}),
            ));
        }
        let out = m.mining_hosts(&events, 10_000 * S, false);
        let e = ev(&out[0]);
        assert_eq!(e["conversations"], MAX_CONVS as u64 + 5);
        assert_eq!(e["pools"][0]["conversations"], MAX_CONVS as u64 + 5);
        assert_eq!(e["connected_s"], (MAX_CONVS + 5) as f64);
        assert_eq!(e["bytes_in"], 1000 * (MAX_CONVS as u64 + 5));
    }

    #[test]
    fn episodes_round_trip_through_the_snapshot_and_bad_ones_are_skipped() {
        let mut m = manager();
        let first = member(
            "mining_protocol",
            Action::Opened,
            [192, 0, 2, 1],
            3333,
            (0, S),
            json!({ "coin": "monero" }),
        );
        let opened = m.mining_hosts(&[first], S, false).remove(0);
        let snap = m.host_snapshot();
        let bytes = postcard::to_stdvec(&snap).expect("encode");
        let back: Vec<HostEpisode> = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, snap);
        let mut bad = back[0].clone();
        bad.id = "not hex!".into();
        let mut foreign = back[0].clone();
        foreign.host = "10.9.9.9".parse().unwrap();
        let mut off = manager();
        off.set_mining_host(MiningHostConfig {
            enabled: false,
            ..MiningHostConfig::default()
        });
        assert_eq!(off.restore_hosts(back.clone()), (0, 1), "off: nothing kept");
        let mut after = manager();
        assert_eq!(
            after.restore_hosts(vec![bad, foreign, back[0].clone()]),
            (1, 2)
        );
        // The restored episode goes on under its id: a new pool updates it.
        let second = member(
            "mining_protocol",
            Action::Opened,
            [192, 0, 2, 2],
            3333,
            (2 * H, 3 * H),
            json!({}),
        );
        let out = after.mining_hosts(&[second], 3 * H, false);
        assert_eq!(
            out.iter()
                .map(|e| (e.action, e.id.as_str()))
                .collect::<Vec<_>>(),
            [(Action::Updated, opened.id.as_str())]
        );
        assert_eq!(ev(&out[0])["coins"], json!(["monero"]));
    }
}
