//! `[alarm]`: how often an open alarm is re-sent, and which conversations never raise one.

use serde::Deserialize;

use crate::{
    detect::settings::RULE_IDS,
    units::{Cidr, HumanDuration, Invalid},
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmConfig {
    /// An open alarm whose severity did not change is re-sent (`updated`) at most this often.
    pub suppression_window: HumanDuration,
    /// Conversations that never raise alarms.
    pub allow: Vec<AllowRule>,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            suppression_window: HumanDuration::secs(3600),
            allow: Vec::new(),
        }
    }
}

/// An allowlist entry: matches when either endpoint is in `cidr` (if given) and the server
/// port is `port` (if given), for `rules` (all rules if empty).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub cidr: Option<Cidr>,
    pub port: Option<u16>,
    #[serde(default)]
    pub rules: Vec<String>,
}

impl AlarmConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        for (i, rule) in self.allow.iter().enumerate() {
            if rule.cidr.is_none() && rule.port.is_none() {
                return Err(Invalid::new(
                    format!("allow[{i}]"),
                    "an allow entry needs a cidr, a port, or both",
                ));
            }
            for r in &rule.rules {
                if !RULE_IDS.contains(&r.as_str()) {
                    return Err(Invalid::new(
                        format!("allow[{i}].rules"),
                        format!("unknown rule {r:?}; accepted: {}", RULE_IDS.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }
}
