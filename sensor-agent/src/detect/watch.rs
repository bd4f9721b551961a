//! Which flows are watched: long, low-rate ones, as a miner's pool session is. Their payload
//! messages (time, direction, size) are timed for periodicity and size regularity inside one
//! flow. The choice is the engine's output: live, the loop mirrors it into the kernel's watch
//! map (the kernel traces watched flows only); replay applies it to the capture's own packets,
//! so both sources time the same flows from about the same moment.
//!
//! It never watches more than `max_flows` flows (the kernel map's capacity too): a flow that
//! qualifies past that is refused and counted.

use std::collections::HashSet;

use sensor_common::FlowKey;
use serde::Deserialize;

use crate::{
    flow::table::{Conversation, KeySnap},
    units::{require_rate, HumanDuration, Invalid},
};

/// Which flows have their payload messages timed (time, direction, size) for periodicity and
/// size regularity inside one flow: long, low-rate ones, as a miner's pool session is. Live,
/// the kernel traces watched flows only; replay applies the same choice to the capture.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// A flow is watched once its conversation has lasted this long...
    pub after: HumanDuration,
    /// ...while averaging at most this many bytes per second (both directions).
    pub max_bytes_per_sec: f64,
    /// Flows watched at once, at most (also the kernel watch map's capacity).
    pub max_flows: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            after: HumanDuration::secs(5 * 60),
            max_bytes_per_sec: 2000.0,
            max_flows: 4096,
        }
    }
}

impl WatchConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_flows == 0 || self.max_flows > 1 << 20 {
            return Err(Invalid::new(
                "max_flows",
                format!("{} is out of range: 1-1048576", self.max_flows),
            ));
        }
        require_rate(&[("max_bytes_per_sec", self.max_bytes_per_sec)])
    }

    /// Whether a conversation's current flow should be watched at `now`: it has a flow open
    /// with traffic both ways, has lasted `after`, and averages at most `max_bytes_per_sec`.
    pub fn wants(&self, conv: &Conversation, now: u64) -> bool {
        let lasted = now.saturating_sub(conv.start_ns);
        (conv.key.proto == 6 || conv.key.proto == 17)
            && conv.open_flows > 0
            && conv.client_packets > 0
            && conv.server_packets > 0
            && lasted >= self.after.as_nanos()
            && lasted > 0
            && conv.total_bytes() as f64 * 1e9 / lasted as f64 <= self.max_bytes_per_sec
    }
}

/// What changed in the watch set since the last [`WatchSet::take_changes`]: for a live source
/// to mirror into the kernel (new budgets for `added`, fresh budgets for `kept`, entries
/// removed for `removed`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchChanges {
    pub added: Vec<FlowKey>,
    pub kept: Vec<FlowKey>,
    pub removed: Vec<FlowKey>,
}

/// The watched flows, bounded by `max_flows`.
#[derive(Debug)]
pub struct WatchSet {
    cfg: WatchConfig,
    watched: HashSet<FlowKey>,
    added: Vec<FlowKey>,
    removed: Vec<FlowKey>,
    /// Flows that qualified while `max_flows` were already watched.
    pub refused: u64,
}

impl WatchSet {
    pub fn new(cfg: WatchConfig) -> Self {
        WatchSet {
            cfg,
            watched: HashSet::new(),
            added: Vec::new(),
            removed: Vec::new(),
            refused: 0,
        }
    }

    /// Watches the conversation's current flow if it qualifies at `now` and there is room.
    pub fn consider(&mut self, conv: &Conversation, now: u64) {
        if !self.cfg.wants(conv, now) {
            return;
        }
        let flow = conv.last_flow_key();
        if self.watched.contains(&flow) {
            return;
        }
        if self.watched.len() < self.cfg.max_flows {
            self.watched.insert(flow);
            self.added.push(flow);
        } else {
            self.refused += 1;
        }
    }

    /// A flow ended: it is no longer watched.
    pub fn flow_ended(&mut self, key: &FlowKey) {
        if self.watched.remove(key) {
            self.removed.push(*key);
        }
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.watched.contains(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &FlowKey> {
        self.watched.iter()
    }

    pub fn len(&self) -> usize {
        self.watched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Watches again the flows of a snapshot (the state file) that `known` says are in the
    /// flow table, up to `max_flows`; they are reported as added at the next
    /// [`WatchSet::take_changes`], so a live source mirrors them into the kernel. Returns
    /// (restored, skipped).
    pub fn restore(
        &mut self,
        keys: &[KeySnap],
        known: impl Fn(&FlowKey) -> bool,
    ) -> (usize, usize) {
        let mut restored = 0;
        for k in keys {
            let Some(key) = k.key() else { continue };
            if known(&key) && self.watched.len() < self.cfg.max_flows && self.watched.insert(key) {
                self.added.push(key);
                restored += 1;
            }
        }
        (restored, keys.len() - restored)
    }

    /// The watched flows, for the state file.
    pub fn snapshot(&self) -> Vec<KeySnap> {
        self.watched.iter().map(KeySnap::from).collect()
    }

    /// The changes since the last call, with every flow still watched that was not just added.
    pub fn take_changes(&mut self) -> WatchChanges {
        let added = std::mem::take(&mut self.added);
        let removed = std::mem::take(&mut self.removed);
        let new: HashSet<&FlowKey> = added.iter().collect();
        let kept = self
            .watched
            .iter()
            .filter(|k| !new.contains(k))
            .copied()
            .collect();
        WatchChanges {
            added,
            kept,
            removed,
        }
    }
}
