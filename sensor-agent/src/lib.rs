//! The sensor agent: sources of flow events, the flow table, detectors, alarms and sinks.
//!
//! Detectors never know which source fed them: every source turns what it reads (the kernel
//! maps, a capture file) into the same flow records with explicit timestamps.

pub mod datapath;
pub mod flow;
pub mod replay;
pub mod source;
