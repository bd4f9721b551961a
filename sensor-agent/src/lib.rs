//! The sensor agent: sources of flow events, the flow table, detectors, alarms and sinks.
//!
//! Detectors never know which source fed them: every source turns what it reads (the kernel
//! maps, a capture file) into the same flow records with explicit timestamps.

pub mod alarm;
pub mod clock;
pub mod config;
pub mod detect;
pub mod engine;
pub mod enrich;
pub mod flow;
pub mod scoring;
pub mod sink;
pub mod source;
pub mod units;
