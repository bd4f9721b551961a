//! `sensor_degraded` for a flow table under pressure: when the table had to refuse or evict
//! flows (a flood filled it, see `flow::table`'s admission), the SIEM learns how many and
//! since when, through the same sinks and formats as every other alarm.
//!
//! One alarm per episode: `opened` at the first tick after the first refusal or eviction,
//! `updated` at most once per `alarm.suppression_window` while the counts grow, `closed` once
//! a whole window passed without a refusal or eviction. Its evidence counts from the
//! episode's start: `refused_flows`, `evicted_flows`, and `recreated_sessions` (answered
//! flows whose kernel entry was evicted and re-created meanwhile; the packets the old entry
//! counted after the agent's last read are lost with it, and the kernel does not say how
//! many). The id derives from the episode's start, so a replay gives the same ids.
//!
//! It never raises per packet or per flow: the counters are read once per tick.

use serde_json::{json, Value};

use super::{rfc3339, Action, AlarmEvent, AlarmManager};

/// What the flow table counted, as of a tick (cumulative since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub refused: u64,
    pub evicted: u64,
    pub recreated: u64,
    /// The first refusal or eviction not yet part of a closed episode, and the last one.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
}

impl Pressure {
    fn minus(&self, base: &Pressure) -> [u64; 3] {
        [
            self.refused.saturating_sub(base.refused),
            self.evicted.saturating_sub(base.evicted),
            self.recreated.saturating_sub(base.recreated),
        ]
    }
}

/// An episode of pressure being reported.
pub(super) struct Episode {
    id: String,
    since_ns: u64,
    /// The counters when it began, and the counts last sent.
    base: Pressure,
    sent: [u64; 3],
    last_sent_ns: u64,
}

pub(super) const RULE: &str = "sensor_degraded";
const RULE_NAME: &str = "Sensor Degraded";

impl AlarmManager {
    /// Evaluates the table's pressure at `now`; the event to send, if any. The flag says the
    /// episode closed (the caller forgets `first_ns`, so the next one starts afresh).
    pub fn table_pressure(&mut self, p: &Pressure, now: u64) -> (Option<AlarmEvent>, bool) {
        let window = self.cfg.suppression_window.as_nanos();
        let Some(ep) = self.degraded.as_mut() else {
            let base = self.degraded_base;
            if p.refused + p.evicted <= base.refused + base.evicted {
                return (None, false);
            }
            let since_ns = p.first_ns.or(p.last_ns).unwrap_or(now);
            let ep = Episode {
                id: format!("degraded-flows-{since_ns:x}"),
                since_ns,
                base,
                sent: p.minus(&base),
                last_sent_ns: now,
            };
            *self.opened_by_rule.entry(RULE).or_default() += 1;
            let event = self.render_degraded(&ep, p, Action::Opened, now);
            self.degraded = Some(ep);
            return (Some(event), false);
        };
        let counts = p.minus(&ep.base);
        let quiet_since = p.last_ns.unwrap_or(ep.since_ns);
        if now.saturating_sub(quiet_since) >= window {
            let Some(ep) = self.degraded.take() else {
                return (None, false);
            };
            self.degraded_base = *p;
            return (
                Some(self.render_degraded(&ep, p, Action::Closed, now)),
                true,
            );
        }
        if counts != ep.sent && now.saturating_sub(ep.last_sent_ns) >= window {
            ep.sent = counts;
            ep.last_sent_ns = now;
            let ep = self.degraded.take();
            let event = ep
                .as_ref()
                .map(|ep| self.render_degraded(ep, p, Action::Updated, now));
            self.degraded = ep;
            return (event, false);
        }
        (None, false)
    }

    fn render_degraded(&self, ep: &Episode, p: &Pressure, action: Action, now: u64) -> AlarmEvent {
        let [refused, evicted, recreated] = p.minus(&ep.base);
        let end = p.last_ns.unwrap_or(ep.since_ns).max(ep.since_ns);
        let mut event = json!({
            "kind": "alert",
            "category": ["host"],
            "type": ["info"],
            "id": ep.id,
            "action": action.as_str(),
            "start": rfc3339(ep.since_ns),
            "end": rfc3339(end),
            "duration": end - ep.since_ns,
            "severity": 6,
            "reason": "flows refused or evicted by a full flow table",
        });
        if action == Action::Closed {
            event["reason"] = json!("no flow refused or evicted for a suppression window");
        }
        let mut observer = json!({ "hostname": self.observer.hostname });
        if let Some(iface) = &self.observer.interface {
            observer["ingress"] = json!({ "interface": { "name": iface } });
        }
        let json: Value = json!({
            "@timestamp": rfc3339(now),
            "event": event,
            "rule": { "id": RULE, "name": RULE_NAME },
            "observer": observer,
            "sensor": {
                "evidence": {
                    "reason": "flow_table_full",
                    "refused_flows": refused,
                    "evicted_flows": evicted,
                    "recreated_sessions": recreated,
                    "since": rfc3339(ep.since_ns),
                },
            },
        });
        AlarmEvent {
            rule: RULE,
            action,
            id: ep.id.clone(),
            json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{alarm::settings::AlarmConfig, alarm::Observer, units::HumanDuration};

    const S: u64 = 1_000_000_000;

    fn manager() -> AlarmManager {
        AlarmManager::new(
            AlarmConfig {
                suppression_window: HumanDuration::secs(10),
                ..AlarmConfig::default()
            },
            Observer::default(),
        )
    }

    fn at(refused: u64, evicted: u64, first: u64, last: u64) -> Pressure {
        Pressure {
            refused,
            evicted,
            recreated: 0,
            first_ns: Some(first * S),
            last_ns: Some(last * S),
        }
    }

    #[test]
    fn one_episode_opens_updates_once_per_window_and_closes_after_a_quiet_window() {
        let mut m = manager();
        assert_eq!(
            m.table_pressure(&Pressure::default(), S).0.map(|e| e.id),
            None
        );
        let (e, _) = m.table_pressure(&at(3, 5, 2, 3), 4 * S);
        let e = e.expect("opened");
        assert_eq!(e.action, Action::Opened);
        let ev = &e.json["sensor"]["evidence"];
        assert_eq!(
            (ev["refused_flows"].as_u64(), ev["evicted_flows"].as_u64()),
            (Some(3), Some(5))
        );
        assert_eq!(ev["since"], e.json["event"]["start"]);
        // More pressure within the window: counted, not sent.
        assert!(m.table_pressure(&at(30, 50, 2, 8), 9 * S).0.is_none());
        let (e, _) = m.table_pressure(&at(40, 60, 2, 13), 14 * S);
        let e = e.expect("updated after a window");
        assert_eq!(e.action, Action::Updated);
        assert_eq!(e.json["sensor"]["evidence"]["evicted_flows"], 60);
        // Nothing new for a window: closed with the totals; the next episode counts afresh.
        let (e, closed) = m.table_pressure(&at(40, 60, 2, 13), 23 * S);
        assert!(closed);
        assert_eq!(e.map(|e| e.action), Some(Action::Closed));
        let (e, _) = m.table_pressure(&at(41, 60, 30, 30), 31 * S);
        let e = e.expect("a new episode");
        assert_eq!(e.action, Action::Opened);
        assert_eq!(e.json["sensor"]["evidence"]["refused_flows"], 1);
        assert_ne!(e.id, format!("degraded-flows-{:x}", 2 * S));
        assert_eq!(m.opened_by_rule.get(RULE), Some(&2));
    }
}
