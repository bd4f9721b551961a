//! Mining protocol: the conversation's payload (or, cached, an earlier conversation between
//! the same two hosts) spoke a miner's protocol: stratum, CryptoNote, getwork,
//! getblocktemplate, ethproxy, HTTP stratum headers. Never from a port alone.

use super::{identified, Detector, Finding};
use crate::{
    enrich::classify::Kind,
    enrich::labels::{Confidence, ConvLabels},
    flow::table::Conversation,
};

pub struct MiningProtocol {
    /// Severity when observed and confirmed by the pool's answer; one less when only the client
    /// spoke, two less when cached.
    pub severity: u8,
}

impl Detector for MiningProtocol {
    fn rule_id(&self) -> &'static str {
        "mining_protocol"
    }

    fn rule_name(&self) -> &'static str {
        "Cryptomining Protocol"
    }

    fn evaluate(
        &self,
        _conv: &Conversation,
        labels: Option<&ConvLabels>,
        _now: u64,
    ) -> Option<Finding> {
        identified(
            labels,
            Kind::MiningProtocol,
            self.severity,
            |confidence, id| match confidence {
                Confidence::Cached => 2,
                Confidence::Observed if !id.confirmed_by_server => 1,
                Confidence::Observed => 0,
            },
        )
    }
}
