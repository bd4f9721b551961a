//! Blockchain P2P: the conversation carries a blockchain node's peer protocol (Bitcoin message
//! framing with a network magic, Ethereum discv4/RLPx, Monero Levin), identified from its
//! payload. A node on a corporate host is a policy matter and often the first sign of a
//! solo miner.
//!
//! Where there is no payload to identify (cloud flow logs, NetFlow/IPFIX), a node's own peer
//! port together with a threat-intelligence listing of the server raises it, one severity
//! lower and saying so (`matched_by: "port_and_intel"`). A port alone never raises it: these
//! ports are free for anything else to use.

use serde_json::json;

use super::{identified, Detector, Finding};
use crate::{enrich::classify::Kind, enrich::labels::ConvLabels, flow::table::Conversation};

/// The default mainnet peer ports of the node software, with the network each one serves
/// (from each project's own defaults: bitcoind 8333, litecoind 9333, dogecoind 22556,
/// zcashd 8233, ravend 8767, monerod 18080, geth and other Ethereum clients 30303).
const NODE_PORTS: &[(u16, &str)] = &[
    (8333, "bitcoin"),
    (9333, "litecoin"),
    (22556, "dogecoin"),
    (8233, "zcash"),
    (8767, "ravencoin"),
    (18080, "monero"),
    (30303, "ethereum"),
];

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
        conv: &Conversation,
        labels: Option<&ConvLabels>,
        _now: u64,
    ) -> Option<Finding> {
        let labels = labels?;
        if labels.identification.is_some() {
            return identified(Some(labels), Kind::BlockchainP2p, self.severity, |_, _| 0);
        }
        let hit = labels.infra.as_ref()?;
        let &(port, network) = NODE_PORTS
            .iter()
            .find(|(port, _)| *port == conv.key.server_port)?;
        let mut evidence = serde_json::Map::new();
        evidence.insert("matched_by".into(), json!("port_and_intel"));
        evidence.insert("port".into(), json!(port));
        evidence.insert("network".into(), json!(network));
        evidence.insert("feed".into(), json!(hit.matched.feed));
        evidence.insert("entry".into(), json!(hit.matched.entry));
        evidence.insert(
            "note".into(),
            json!("no payload was seen: the node's peer port and an intel listing of the server"),
        );
        Some(Finding {
            severity: self.severity.saturating_sub(1),
            evidence,
        })
    }
}
