//! Blockchain P2P: the conversation carries a blockchain node's peer protocol (Bitcoin message
//! framing with a network magic, Ethereum discv4/RLPx, Monero Levin), identified from its
//! payload. A node on a corporate host is a policy matter and often the first sign of a
//! solo miner. A port alone never raises it.

use super::{identification_evidence, Detector, Finding};
use crate::{classify::Kind, flow::table::Conversation, labels::ConvLabels};

pub struct BlockchainP2p {
    pub severity: u8,
}

impl Detector for BlockchainP2p {
    fn rule_id(&self) -> &'static str {
        "blockchain_p2p"
    }

    fn rule_name(&self) -> &'static str {
        "Blockchain Peer-to-Peer Traffic"
    }

    fn evaluate(
        &self,
        _conv: &Conversation,
        labels: Option<&ConvLabels>,
        _now: u64,
    ) -> Option<Finding> {
        let labels = labels?;
        let (id, confidence) = labels.identification.as_ref()?;
        if id.kind != Kind::BlockchainP2p {
            return None;
        }
        let mut evidence = serde_json::Map::new();
        identification_evidence(&mut evidence, id, *confidence, labels);
        Some(Finding {
            severity: self.severity,
            evidence,
        })
    }
}
