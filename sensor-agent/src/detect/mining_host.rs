//! `[detect.mining_host]`: the host view of mining. Which alarms of the per-conversation rules
//! make a host a miner, which only join the view of a host already known to mine, and how
//! long a host must stay quiet before its episode ends.
//!
//! Why it exists: a miner shows up as many conversations (reconnects, several pools, days on
//! end), each with its own alarm; an analyst wants one answer per host: which coins, which
//! pools, since when, for how long. The gathering itself is an alarm lifecycle that consumes
//! other rules' alarms, so it lives in `alarm::mining_host`; this module holds what decides
//! membership and the settings, beside the rules they name. It must never make a host a
//! miner from a long or quiet flow alone: those are not evidence of mining by themselves.

use serde::Deserialize;

use crate::units::{require_positive, HumanDuration, Invalid};

/// Rules whose alarm is a confirmed mining conversation: the first one opens a host's episode.
pub const CONFIRMING_RULES: &[&str] = &[
    "mining_protocol",
    "mining_infrastructure",
    "encrypted_mining",
    "blockchain_p2p",
];

/// Rules whose alarm joins a host's episode only when it goes to a server (address, port,
/// transport) the host already mines with.
pub const JOINING_RULES: &[&str] = &["long_flow", "quiet_long_flow"];

/// Every rule a host view gathers, in a fixed order (a member's rules are kept as a bit mask
/// over this list, in memory and in the state file).
pub const MEMBER_RULES: &[&str] = &[
    "mining_protocol",
    "mining_infrastructure",
    "encrypted_mining",
    "blockchain_p2p",
    "long_flow",
    "quiet_long_flow",
];

/// Most hosts whose episodes are tracked at once (the default of `max_hosts`).
pub const DEFAULT_MAX_HOSTS: usize = 4096;
/// The largest `max_hosts` accepted: each episode holds bounded lists (a few KiB at most).
pub const MAX_MAX_HOSTS: usize = 1_000_000;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MiningHostConfig {
    pub enabled: bool,
    /// A host's episode closes once it went this long without a member alarm's activity.
    pub quiet_for: HumanDuration,
    /// Hosts tracked at once; a new miner beyond it is not tracked, and counted.
    pub max_hosts: usize,
    /// Severity (0-10) of the host alarm; the highest member severity when that is higher.
    pub severity: u8,
}

impl Default for MiningHostConfig {
    fn default() -> Self {
        MiningHostConfig {
            enabled: true,
            quiet_for: HumanDuration::secs(3 * 86_400),
            max_hosts: DEFAULT_MAX_HOSTS,
            severity: 7,
        }
    }
}

impl MiningHostConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        require_positive(&[("quiet_for", self.quiet_for)])?;
        if self.max_hosts == 0 || self.max_hosts > MAX_MAX_HOSTS {
            return Err(Invalid::new(
                "max_hosts",
                format!(
                    "{} is out of range: 1 to {MAX_MAX_HOSTS} hosts",
                    self.max_hosts
                ),
            ));
        }
        crate::units::require_severity(&[("severity", self.severity)])
    }
}

/// Whether `rule`'s alarm is a confirmed mining conversation.
pub fn confirms(rule: &str) -> bool {
    CONFIRMING_RULES.contains(&rule)
}

/// The bit of `rule` in a member mask, if the host view gathers it.
pub fn rule_bit(rule: &str) -> Option<u8> {
    MEMBER_RULES
        .iter()
        .position(|r| *r == rule)
        .map(|i| 1u8 << i)
}

/// The rules of a member mask, in [`MEMBER_RULES`] order.
pub fn rules_of(mask: u8) -> impl Iterator<Item = &'static str> {
    MEMBER_RULES
        .iter()
        .enumerate()
        .filter(move |(i, _)| mask & (1 << i) != 0)
        .map(|(_, r)| *r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_check_themselves() {
        assert!(MiningHostConfig::default().validate().is_ok());
        let zero = MiningHostConfig {
            quiet_for: HumanDuration::secs(0),
            ..Default::default()
        };
        assert_eq!(zero.validate().expect_err("zero").key, "quiet_for");
        let none = MiningHostConfig {
            max_hosts: 0,
            ..Default::default()
        };
        assert_eq!(none.validate().expect_err("zero hosts").key, "max_hosts");
        let loud = MiningHostConfig {
            severity: 11,
            ..Default::default()
        };
        assert_eq!(loud.validate().expect_err("severity").key, "severity");
    }

    #[test]
    fn membership_masks_round_trip() {
        let mask = rule_bit("mining_protocol").unwrap() | rule_bit("quiet_long_flow").unwrap();
        assert_eq!(
            rules_of(mask).collect::<Vec<_>>(),
            ["mining_protocol", "quiet_long_flow"]
        );
        assert_eq!(rule_bit("periodic_flow"), None);
        assert!(confirms("blockchain_p2p") && !confirms("long_flow"));
        assert!(MEMBER_RULES.len() <= 8, "the mask is a u8");
    }
}
