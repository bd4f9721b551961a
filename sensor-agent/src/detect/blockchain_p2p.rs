//! Blockchain P2P: the conversation carries a blockchain node's peer protocol (Bitcoin message
//! framing with a network magic, Ethereum discv4/RLPx, Monero Levin), identified from its
//! payload. A node on a corporate host is a policy matter and often the first sign of a
//! solo miner. A port alone never raises it.

use super::{identified, Detector, Finding};
use crate::{enrich::classify::Kind, enrich::labels::ConvLabels, flow::table::Conversation};

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
        identified(labels, Kind::BlockchainP2p, self.severity, |_, _| 0)
    }
}
