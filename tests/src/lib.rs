//! Shared helpers for the integration tests: frame builders, capture writers and access to
//! the real kernel datapath.

pub mod agent;
pub mod captures;
pub mod frames;
pub mod kernel;
pub mod lab;
pub mod netns;
pub mod pcap;
pub mod rng;
pub mod rsyslog;
