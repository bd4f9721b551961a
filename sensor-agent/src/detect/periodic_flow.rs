//! Periodic flows: a conversation whose connections start on a regular beat (across
//! connections, as RITA scores beacons: at least `min_samples` answered connections), or one
//! side of whose watched flow sends regular messages inside one long session (what a polling
//! miner does: a fixed-size `eth_getWork` every 10 s; a pool's 60 s keepalive answers). Every
//! subscore is in the evidence, with the period and jitter in seconds, which kind fired and,
//! inside a flow, which direction.

use std::cell::RefCell;

use serde_json::json;

use super::{Detector, Finding};
use serde::Deserialize;

use crate::{
    enrich::labels::{ConvLabels, MESSAGE_SAMPLES},
    flow::table::Conversation,
    scoring::periodicity::{Periodicity, SampleRing, ScoreScratch, MIN_SAMPLES},
};

/// The largest `min_samples`: a watched flow's message rings keep this many timestamps, so a
/// larger minimum would switch the inside-one-flow check off without saying so.
const MAX_SAMPLES: usize = MESSAGE_SAMPLES;

pub struct PeriodicFlow {
    min_samples: usize,
    min_score: f64,
    severity: u8,
    /// Reused by every evaluation: scoring then allocates nothing.
    scratch: RefCell<ScoreScratch>,
}

impl PeriodicFlow {
    pub fn new(cfg: &PeriodicFlowConfig) -> Self {
        PeriodicFlow {
            min_samples: cfg.min_samples.max(MIN_SAMPLES),
            min_score: cfg.min_score,
            severity: cfg.severity,
            scratch: RefCell::new(ScoreScratch::new()),
        }
    }

    fn judge(&self, ring: Option<&SampleRing>, window_ns: u64) -> Option<Periodicity> {
        let p = ring?.score_with(&mut self.scratch.borrow_mut(), window_ns, self.min_samples)?;
        (p.score >= self.min_score).then_some(p)
    }
}

fn evidence(kind: &str, p: &Periodicity) -> serde_json::Map<String, serde_json::Value> {
    let mut e = serde_json::Map::new();
    e.insert("kind".into(), json!(kind));
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(p) {
        e.extend(fields);
    }
    e
}

impl Detector for PeriodicFlow {
    fn rule_id(&self) -> &'static str {
        "periodic_flow"
    }

    fn rule_name(&self) -> &'static str {
        "Anomalous Periodic Flow"
    }

    fn evaluate(
        &self,
        conv: &Conversation,
        labels: Option<&ConvLabels>,
        now: u64,
    ) -> Option<Finding> {
        let window = now.saturating_sub(conv.start_ns);
        if let Some(p) = self.judge(conv.connections.as_deref(), window) {
            return Some(Finding {
                severity: self.severity,
                evidence: evidence("across_connections", &p),
            });
        }
        let series = labels.and_then(|l| l.messages.as_deref())?;
        // Timing started when the flow was first watched: that is the observation window.
        let window = now.saturating_sub(series.since_ns);
        // `max_by` keeps the last of equals: the client's beat wins a tie (it is the one a
        // polling miner or beacon controls).
        let (direction, p) = [("server", &series.server), ("client", &series.client)]
            .into_iter()
            .filter_map(|(d, ring)| Some((d, self.judge(Some(ring), window)?)))
            .max_by(|a, b| a.1.score.total_cmp(&b.1.score))?;
        let mut e = evidence("in_flow", &p);
        e.insert("direction".into(), json!(direction));
        Some(Finding {
            severity: self.severity,
            evidence: e,
        })
    }
}

/// Periodicity across connections (RITA-style) and inside one flow.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeriodicFlowConfig {
    pub enabled: bool,
    /// Timestamps needed before scoring (RITA needs at least 4).
    pub min_samples: usize,
    /// Overall score (0-1) from which the rule fires.
    pub min_score: f64,
    pub severity: u8,
}

impl Default for PeriodicFlowConfig {
    fn default() -> Self {
        PeriodicFlowConfig {
            enabled: true,
            min_samples: 8,
            min_score: 0.8,
            severity: 4,
        }
    }
}

impl PeriodicFlowConfig {
    pub fn validate(&self) -> Result<(), crate::units::Invalid> {
        // Fewer than 4 timestamps give fewer than 3 intervals: any spacing looks regular.
        if !(MIN_SAMPLES..=MAX_SAMPLES).contains(&self.min_samples) {
            return Err(crate::units::Invalid::new(
                "min_samples",
                format!(
                    "{} is out of range: {MIN_SAMPLES}-{MAX_SAMPLES} (fewer than {MIN_SAMPLES} timestamps cannot show a period)",
                    self.min_samples
                ),
            ));
        }
        crate::units::require_unit(&[("min_score", self.min_score)])?;
        crate::units::require_severity(&[("severity", self.severity)])
    }
}
