//! Suspect Long Flow: a conversation observed for at least `after` (default 9h, the Cisco
//! Secure Network Analytics default), evaluated while it is still open. Later rungs of the
//! ladder raise the severity of the same alarm instead of opening new ones.

use serde_json::json;

use super::{secs, Detector, Finding};
use serde::Deserialize;

use crate::{enrich::labels::ConvLabels, flow::table::Conversation, units::HumanDuration};

pub struct LongFlow {
    after_ns: u64,
    /// Rung thresholds in ns, ascending, the first being `after`.
    rungs: Vec<u64>,
    severity: u8,
}

impl LongFlow {
    pub fn new(cfg: &LongFlowConfig) -> Self {
        let after_ns = cfg.after.as_nanos();
        let mut rungs = vec![after_ns];
        let mut later: Vec<u64> = cfg
            .ladder
            .iter()
            .map(|d| d.as_nanos())
            .filter(|r| *r > after_ns)
            .collect();
        later.sort_unstable();
        later.dedup();
        rungs.extend(later);
        LongFlow {
            after_ns,
            rungs,
            severity: cfg.severity,
        }
    }
}

impl Detector for LongFlow {
    fn rule_id(&self) -> &'static str {
        "long_flow"
    }

    fn rule_name(&self) -> &'static str {
        "Suspect Long Flow"
    }

    fn evaluate(
        &self,
        conv: &Conversation,
        _labels: Option<&ConvLabels>,
        _now: u64,
    ) -> Option<Finding> {
        let duration = conv.duration_ns();
        if duration < self.after_ns {
            return None;
        }
        let rung = self.rungs.iter().filter(|r| duration >= **r).count();
        let mut evidence = serde_json::Map::new();
        evidence.insert("duration_s".into(), json!(secs(duration).round()));
        evidence.insert("threshold_s".into(), json!(secs(self.after_ns).round()));
        evidence.insert("rung".into(), json!(rung));
        evidence.insert(
            "rung_threshold_s".into(),
            json!(secs(self.rungs[rung - 1]).round()),
        );
        evidence.insert("flows".into(), json!(conv.flows_seen));
        evidence.insert("still_open".into(), json!(conv.open_flows > 0));
        Some(Finding {
            severity: (self.severity as usize + rung - 1).min(10) as u8,
            evidence,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LongFlowConfig {
    pub enabled: bool,
    /// A conversation observed this long raises the alarm (Cisco Secure Network Analytics: 9h).
    pub after: HumanDuration,
    /// Later rungs: each one reached raises the same alarm's severity by one (Zeek's
    /// long-connections ladder goes 10m, 30m, 1h, 12h, 24h, 3d). Rungs at or below `after`
    /// are ignored.
    pub ladder: Vec<HumanDuration>,
    /// Severity (0-10) at the first rung.
    pub severity: u8,
}

impl Default for LongFlowConfig {
    fn default() -> Self {
        LongFlowConfig {
            enabled: true,
            after: HumanDuration::secs(9 * 3600),
            ladder: vec![
                HumanDuration::secs(12 * 3600),
                HumanDuration::secs(24 * 3600),
                HumanDuration::secs(72 * 3600),
            ],
            severity: 3,
        }
    }
}

impl LongFlowConfig {
    pub fn validate(&self) -> Result<(), crate::units::Invalid> {
        crate::units::require_positive(&[("after", self.after)])?;
        // Rungs out of order would make a later rung unreachable or lower the severity of an
        // alarm that only ever climbs; a repeated rung is the same slip.
        for (i, pair) in self.ladder.windows(2).enumerate() {
            if pair[1] <= pair[0] {
                return Err(crate::units::Invalid::new(
                    format!("ladder[{}]", i + 1),
                    format!(
                        "{} does not come after the rung before it ({}): rungs must increase",
                        pair[1], pair[0]
                    ),
                ));
            }
        }
        crate::units::require_severity(&[("severity", self.severity)])
    }
}
