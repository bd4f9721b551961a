//! The detection engine: flow table, detectors and alarm manager, driven by any source.
//!
//! Sources call [`Engine::add_packet`] or [`Engine::update_flow`] with explicit timestamps and
//! [`Engine::tick`] with the current time (capture time in replay, wall time live); the engine
//! never reads a clock itself, which is what makes replays deterministic.

use crate::{
    alarm::{AlarmEvent, AlarmManager, Observer},
    config::Config,
    detect::{self, Detector},
    flow::{
        record::{ip_of, FlowRecord},
        table::{Conversation, FlowTable},
    },
};
use sensor_common::{FlowKey, FlowStats};
use std::net::IpAddr;

pub struct Engine {
    pub table: FlowTable,
    detectors: Vec<Box<dyn Detector + Send>>,
    pub alarms: AlarmManager,
    skip_multicast: bool,
}

/// Multicast (224.0.0.0/4, ff00::/8) or limited broadcast.
fn is_group_address(conv: &Conversation) -> bool {
    match ip_of(&conv.key.server) {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_multicast(),
    }
}

impl Engine {
    pub fn new(cfg: &Config, observer: Observer) -> Self {
        Engine {
            table: FlowTable::new(cfg.flow.clone()),
            detectors: detect::from_config(&cfg.detect),
            alarms: AlarmManager::new(cfg.alarm.clone(), observer),
            skip_multicast: cfg.detect.skip_multicast,
        }
    }

    pub fn add_packet(&mut self, key: &FlowKey, dir: usize, len: u64, tcp_flags: u8, ts: u64) {
        self.table.add_packet(key, dir, len, tcp_flags, ts);
    }

    pub fn update_flow(&mut self, key: &FlowKey, stats: &FlowStats, first_ns: u64, last_ns: u64) {
        self.table.update(key, stats, first_ns, last_ns);
    }

    /// Evaluates every conversation at `now`, then ages the table. Returns the alarm events
    /// and the flows that ended (for the source to forget, and for `--flows`).
    pub fn tick(&mut self, now: u64) -> (Vec<AlarmEvent>, Vec<FlowRecord>) {
        let mut events = Vec::new();
        for conv in self.table.conversations() {
            // Only what changed can newly satisfy a rule; open alarms are re-evaluated every
            // tick for their suppression window and to notice a rule that stopped holding.
            if !conv.dirty && !self.alarms.has_open(&conv.key) {
                continue;
            }
            if self.skip_multicast && is_group_address(conv) {
                continue;
            }
            for d in &self.detectors {
                let finding = d.evaluate(conv, now);
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
        }
        (events, ended.flows)
    }

    /// End of input (a replay's last frame): evaluates once more at `now` and sends the last
    /// state of every alarm still open, so the SIEM sees each one's final duration and counts.
    /// Alarms stay open: the conversations did not end, the input did.
    pub fn finish(&mut self, now: u64) -> Vec<AlarmEvent> {
        let mut events = Vec::new();
        for conv in self.table.conversations() {
            for d in &self.detectors {
                if self.alarms.is_open(d.rule_id(), &conv.key) {
                    let finding = d.evaluate(conv, now);
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
        events
    }
}
