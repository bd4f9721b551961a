//! Known mining infrastructure: the server's address, or a name the client was seen to
//! resolve to it (an answer matched to its query, still within its TTL when the conversation
//! started), is on a threat-intelligence feed. The alarm names the feed, the entry and its
//! line, the domain when the match came through DNS, and the age of the feed version.

use serde_json::json;

use super::{Detector, Finding};
use crate::{enrich::labels::ConvLabels, flow::table::Conversation};

pub struct MiningInfrastructure {
    pub severity: u8,
}

impl Detector for MiningInfrastructure {
    fn rule_id(&self) -> &'static str {
        "mining_infrastructure"
    }

    fn rule_name(&self) -> &'static str {
        "Known Mining Infrastructure"
    }

    fn evaluate(
        &self,
        _conv: &Conversation,
        labels: Option<&ConvLabels>,
        now: u64,
    ) -> Option<Finding> {
        let hit = labels?.infra.as_ref()?;
        let m = &hit.matched;
        let mut evidence = serde_json::Map::new();
        evidence.insert("feed".into(), json!(m.feed));
        evidence.insert("feed_source".into(), json!(m.source));
        evidence.insert("entry".into(), json!(m.entry));
        evidence.insert("line".into(), json!(m.line));
        if let Some(d) = &m.description {
            evidence.insert("description".into(), json!(d));
        }
        evidence.insert("feed_age_s".into(), json!(m.age(now).as_secs()));
        match &hit.via_name {
            Some(name) => {
                evidence.insert("domain".into(), json!(name));
                evidence.insert("matched_by".into(), json!("dns_answer"));
                if let Some(c) = crate::enrich::classify::coin::from_pool_domain(name) {
                    evidence.insert("coin".into(), json!(c.coin));
                    evidence.insert("coin_reason".into(), json!(c.reason));
                }
            }
            None => {
                evidence.insert("matched_by".into(), json!("address"));
            }
        }
        Some(Finding {
            severity: self.severity,
            evidence,
        })
    }
}
