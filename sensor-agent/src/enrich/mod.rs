//! Enrichment: what the sensor learns about a conversation beyond its counters, for the rules
//! to read. Payload classifiers ([`classify`]) say what a flow speaks, DNS answers ([`dns`])
//! say which names resolved to a server, threat intelligence ([`intel`]) says whose server it
//! is, and [`labels`] keeps all of it per conversation with the limits the datapath applies.
//!
//! Nothing here raises an alarm or reads a clock: times come from the caller, verdicts from
//! the detectors.

pub mod classify;
pub mod dns;
pub mod intel;
pub mod labels;
pub mod process;
