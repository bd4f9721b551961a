//! Suspect Quiet Long Flow: a conversation observed for at least `after` that carried at most
//! `max_bytes_per_sec` on average over its whole duration, both directions (real pool
//! sessions: 5-140 B/s). Independent of the long-flow rule: either may fire alone.

use serde_json::json;

use super::{secs, Detector, Finding};
use serde::Deserialize;

use crate::{enrich::labels::ConvLabels, flow::table::Conversation, units::HumanDuration};

pub struct QuietLongFlow {
    after_ns: u64,
    max_bytes_per_sec: f64,
    severity: u8,
}

impl QuietLongFlow {
    pub fn new(cfg: &QuietLongFlowConfig) -> Self {
        QuietLongFlow {
            after_ns: cfg.after.as_nanos(),
            max_bytes_per_sec: cfg.max_bytes_per_sec,
            severity: cfg.severity,
        }
    }
}

impl Detector for QuietLongFlow {
    fn rule_id(&self) -> &'static str {
        "quiet_long_flow"
    }

    fn rule_name(&self) -> &'static str {
        "Suspect Quiet Long Flow"
    }

    fn evaluate(
        &self,
        conv: &Conversation,
        _labels: Option<&ConvLabels>,
        _now: u64,
    ) -> Option<Finding> {
        let duration = conv.duration_ns();
        if duration < self.after_ns || duration == 0 {
            return None;
        }
        let rate = conv.total_bytes() as f64 / secs(duration);
        if rate > self.max_bytes_per_sec {
            return None;
        }
        let mut evidence = serde_json::Map::new();
        evidence.insert("duration_s".into(), json!(secs(duration).round()));
        evidence.insert("threshold_s".into(), json!(secs(self.after_ns).round()));
        evidence.insert(
            "bytes_per_sec".into(),
            json!((rate * 100.0).round() / 100.0),
        );
        evidence.insert("max_bytes_per_sec".into(), json!(self.max_bytes_per_sec));
        evidence.insert("bytes".into(), json!(conv.total_bytes()));
        evidence.insert("flows".into(), json!(conv.flows_seen));
        Some(Finding {
            severity: self.severity,
            evidence,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuietLongFlowConfig {
    pub enabled: bool,
    pub after: HumanDuration,
    /// Average over the conversation, both directions (real pool sessions: 5-140 B/s).
    pub max_bytes_per_sec: f64,
    pub severity: u8,
}

impl Default for QuietLongFlowConfig {
    fn default() -> Self {
        QuietLongFlowConfig {
            enabled: true,
            after: HumanDuration::secs(9 * 3600),
            max_bytes_per_sec: 200.0,
            severity: 5,
        }
    }
}

impl QuietLongFlowConfig {
    pub fn validate(&self) -> Result<(), crate::units::Invalid> {
        crate::units::require_positive(&[("after", self.after)])?;
        crate::units::require_rate(&[("max_bytes_per_sec", self.max_bytes_per_sec)])?;
        crate::units::require_severity(&[("severity", self.severity)])
    }
}
