//! Detectors: one file per rule. Each looks at one conversation at a time and says whether
//! its rule holds now, how severe, and the evidence; the alarm manager turns that into an
//! alarm lifecycle. Detectors never know which source fed the flow table, and keep no state
//! that a replay could not rebuild.

pub mod long_flow;
pub mod quiet_long_flow;

use serde_json::{Map, Value};

use crate::{config::DetectConfig, flow::table::Conversation};

/// A rule holding for a conversation at one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// 0-10.
    pub severity: u8,
    /// Why it fired: thresholds and measured values, for `sensor.evidence`.
    pub evidence: Map<String, Value>,
}

pub trait Detector {
    /// Stable rule id of the alarm contract (`long_flow`, ...).
    fn rule_id(&self) -> &'static str;
    /// Human name (`rule.name`).
    fn rule_name(&self) -> &'static str;
    /// Evaluates one conversation at `now` (ns since the epoch, capture time in replay).
    fn evaluate(&self, conv: &Conversation, now: u64) -> Option<Finding>;
}

/// The detectors enabled by the configuration.
pub fn from_config(cfg: &DetectConfig) -> Vec<Box<dyn Detector + Send>> {
    let mut out: Vec<Box<dyn Detector + Send>> = Vec::new();
    if cfg.long_flow.enabled {
        out.push(Box::new(long_flow::LongFlow::new(&cfg.long_flow)));
    }
    if cfg.quiet_long_flow.enabled {
        out.push(Box::new(quiet_long_flow::QuietLongFlow::new(
            &cfg.quiet_long_flow,
        )));
    }
    out
}

pub(crate) fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}
