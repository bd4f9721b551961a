//! Detectors: one file per rule. Each looks at one conversation at a time and says whether
//! its rule holds now, how severe, and the evidence; the alarm manager turns that into an
//! alarm lifecycle. Detectors never know which source fed the flow table, and keep no state
//! that a replay could not rebuild.

pub mod blockchain_p2p;
pub mod encrypted_mining;
pub mod long_flow;
pub mod mining_infrastructure;
pub mod mining_protocol;
pub mod periodic_flow;
pub mod quiet_long_flow;
pub mod settings;
pub mod watch;

use serde_json::{Map, Value};

use crate::{enrich::labels::ConvLabels, flow::table::Conversation};
pub use settings::{DetectConfig, RuleConfig, RULE_IDS};

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
    /// Evaluates one conversation, with what is known about it beyond its counters, at `now`
    /// (ns since the epoch, capture time in replay).
    fn evaluate(
        &self,
        conv: &Conversation,
        labels: Option<&ConvLabels>,
        now: u64,
    ) -> Option<Finding>;
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
    if cfg.periodic_flow.enabled {
        out.push(Box::new(periodic_flow::PeriodicFlow::new(
            &cfg.periodic_flow,
        )));
    }
    if cfg.encrypted_mining.enabled {
        out.push(Box::new(encrypted_mining::EncryptedMining::new(
            &cfg.encrypted_mining,
        )));
    }
    if cfg.mining_protocol.enabled {
        out.push(Box::new(mining_protocol::MiningProtocol {
            severity: cfg.mining_protocol.severity,
        }));
    }
    if cfg.blockchain_p2p.enabled {
        out.push(Box::new(blockchain_p2p::BlockchainP2p {
            severity: cfg.blockchain_p2p.severity,
        }));
    }
    if cfg.mining_infrastructure.enabled {
        out.push(Box::new(mining_infrastructure::MiningInfrastructure {
            severity: cfg.mining_infrastructure.severity,
        }));
    }
    out
}

pub(crate) fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The evidence every payload-based rule shows: the identification and what it came from.
pub(crate) fn identification_evidence(
    evidence: &mut Map<String, Value>,
    id: &crate::enrich::classify::Identification,
    confidence: crate::enrich::labels::Confidence,
    labels: &ConvLabels,
) {
    use serde_json::json;
    evidence.insert("protocol".into(), json!(id.protocol));
    evidence.insert("signature".into(), json!(id.signature));
    evidence.insert(
        "sent_by".into(),
        json!(
            if id.role == crate::enrich::classify::Direction::ClientToServer {
                "client"
            } else {
                "server"
            }
        ),
    );
    evidence.insert("confirmed_by_server".into(), json!(id.confirmed_by_server));
    evidence.insert("confidence".into(), json!(confidence.as_str()));
    if let Some(coin) = id.coin {
        evidence.insert("coin".into(), json!(coin));
        if let Some(reason) = &id.coin_reason {
            evidence.insert("coin_reason".into(), json!(reason));
        }
    }
    if let Some(agent) = &id.agent {
        evidence.insert("agent".into(), json!(agent));
    }
    if let Some(login) = &id.login_sha256 {
        evidence.insert("login_sha256".into(), json!(login));
    }
    if let Some(tls) = &labels.tls {
        if let Some(sni) = &tls.sni {
            evidence.insert("sni".into(), json!(sni));
        }
        evidence.insert("ja4".into(), json!(tls.ja4));
    }
}

/// The finding of a rule that fires on a payload identification of `kind`: the evidence, and
/// `severity` lowered by `minus(confidence, identification)`.
pub(crate) fn identified(
    labels: Option<&ConvLabels>,
    kind: crate::enrich::classify::Kind,
    severity: u8,
    minus: impl Fn(crate::enrich::labels::Confidence, &crate::enrich::classify::Identification) -> u8,
) -> Option<Finding> {
    let labels = labels?;
    let (id, confidence) = labels.identification.as_ref()?;
    if id.kind != kind {
        return None;
    }
    let mut evidence = Map::new();
    identification_evidence(&mut evidence, id, *confidence, labels);
    Some(Finding {
        severity: severity.saturating_sub(minus(*confidence, id)),
        evidence,
    })
}
