//! `/status.json`: what a person watching the agent wants on one screen (`sensor-agent top`),
//! as one bounded JSON document: the interfaces, the engine's counters, the longest and the
//! quietest conversations, the most recent alarms, and the sinks' health.
//!
//! The same numbers as `/metrics` (Prometheus' text format is for Prometheus; a terminal view
//! wants lists, which labels cannot carry), read from copies the loop published, never from
//! the engine itself. The lists are bounded ([`TOP_N`], [`RECENT_ALARMS`]) and the
//! conversation lists are only computed while someone asked within [`WANTED_FOR`], so an
//! agent nobody watches pays nothing for them.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// Conversations listed per list.
pub const TOP_N: usize = 10;
/// Recent alarm events kept.
pub const RECENT_ALARMS: usize = 20;
/// The conversation lists are computed while `/status.json` was asked for within this long.
pub const WANTED_FOR: Duration = Duration::from_secs(30);

/// One conversation in a list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConvSummary {
    pub client: String,
    pub server: String,
    pub port: u16,
    pub transport: String,
    pub duration_s: f64,
    pub bytes: u64,
    pub bytes_per_sec: f64,
    pub flows: u32,
    pub open_flows: u32,
}

/// What the engine publishes after a tick.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineView {
    pub packets: u64,
    pub flows: u64,
    pub conversations: u64,
    pub watched: u64,
    pub open_alarms: u64,
    /// Alarms opened since the start, per rule.
    pub alarms_by_rule: BTreeMap<String, u64>,
    /// Longest conversations first.
    pub longest: Vec<ConvSummary>,
    /// Fewest bytes per second first (conversations with an open flow).
    pub quietest: Vec<ConvSummary>,
    /// Capture or wall time of the tick, RFC 3339.
    pub at: String,
}

/// One alarm event, as the outputs got it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlarmLine {
    pub at: String,
    pub id: String,
    pub rule: String,
    pub action: String,
    pub severity: u64,
    pub client: String,
    pub server: String,
    pub port: u64,
}

impl AlarmLine {
    /// From an alarm's JSON (the contract's field names).
    pub fn of(json: &serde_json::Value) -> Self {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        AlarmLine {
            at: s(&json["@timestamp"]),
            id: s(&json["event"]["id"]),
            rule: s(&json["rule"]["id"]),
            action: s(&json["event"]["action"]),
            severity: json["event"]["severity"].as_u64().unwrap_or(0),
            client: s(&json["source"]["ip"]),
            server: s(&json["destination"]["ip"]),
            port: json["destination"]["port"].as_u64().unwrap_or(0),
        }
    }
}

/// One sink's delivery state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkLine {
    pub name: String,
    pub sent: u64,
    pub errors: u64,
    pub retries: u64,
    pub pending: u64,
    pub oldest_undelivered_s: Option<f64>,
    pub last_error: Option<String>,
}

/// The whole document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub ready: bool,
    pub readiness: String,
    pub interfaces: Vec<String>,
    pub poll_interval_s: f64,
    pub kernel_flows: u64,
    pub kernel_flow_map_capacity: u64,
    /// Packets the datapath could not attribute to a flow (all reasons).
    pub unattributed: u64,
    pub engine: Option<EngineView>,
    /// Newest last.
    pub recent_alarms: Vec<AlarmLine>,
    pub sinks: Vec<SinkLine>,
}
