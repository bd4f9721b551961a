//! `[detect]`: which rules run, and the settings of the rules without a file of their own.
//! Each rule's own section lives in the rule's file.

use serde::Deserialize;

use super::{
    encrypted_mining::EncryptedMiningConfig, long_flow::LongFlowConfig,
    mining_host::MiningHostConfig, periodic_flow::PeriodicFlowConfig,
    quiet_long_flow::QuietLongFlowConfig, watch::WatchConfig,
};
use crate::units::{require_severity, Invalid};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Do not evaluate conversations whose server is a multicast or broadcast address
    /// (neighbour discovery, mDNS, SSDP): long-lived by design, never a session.
    pub skip_multicast: bool,
    pub long_flow: LongFlowConfig,
    pub quiet_long_flow: QuietLongFlowConfig,
    pub periodic_flow: PeriodicFlowConfig,
    pub encrypted_mining: EncryptedMiningConfig,
    pub mining_protocol: RuleConfig,
    pub blockchain_p2p: RuleConfig,
    pub mining_infrastructure: RuleConfig,
    /// The host view gathering a host's mining alarms (`alarm::mining_host`).
    pub mining_host: MiningHostConfig,
    pub watch: WatchConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            skip_multicast: true,
            long_flow: LongFlowConfig::default(),
            quiet_long_flow: QuietLongFlowConfig::default(),
            periodic_flow: PeriodicFlowConfig::default(),
            encrypted_mining: EncryptedMiningConfig::default(),
            watch: WatchConfig::default(),
            mining_host: MiningHostConfig::default(),
            mining_protocol: RuleConfig {
                enabled: true,
                severity: 8,
            },
            blockchain_p2p: RuleConfig {
                enabled: true,
                severity: 5,
            },
            mining_infrastructure: RuleConfig {
                enabled: true,
                severity: 7,
            },
        }
    }
}

/// A rule with no thresholds of its own.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub enabled: bool,
    /// Severity (0-10) of its alarms.
    pub severity: u8,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            enabled: true,
            severity: 5,
        }
    }
}

/// The rule ids an allowlist entry may name.
pub const RULE_IDS: &[&str] = &[
    "long_flow",
    "quiet_long_flow",
    "periodic_flow",
    "encrypted_mining",
    "mining_protocol",
    "blockchain_p2p",
    "mining_infrastructure",
];

impl DetectConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.watch.validate().map_err(|e| e.within("watch"))?;
        self.long_flow
            .validate()
            .map_err(|e| e.within("long_flow"))?;
        self.quiet_long_flow
            .validate()
            .map_err(|e| e.within("quiet_long_flow"))?;
        self.periodic_flow
            .validate()
            .map_err(|e| e.within("periodic_flow"))?;
        self.encrypted_mining
            .validate()
            .map_err(|e| e.within("encrypted_mining"))?;
        self.mining_host
            .validate()
            .map_err(|e| e.within("mining_host"))?;
        require_severity(&[
            ("mining_protocol.severity", self.mining_protocol.severity),
            ("blockchain_p2p.severity", self.blockchain_p2p.severity),
            (
                "mining_infrastructure.severity",
                self.mining_infrastructure.severity,
            ),
        ])
    }
}
