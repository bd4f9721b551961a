//! `[ingest]`: how aggregate flow records are read and stitched back into flows.

use serde::Deserialize;

use crate::units::{HumanDuration, Invalid};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// The exporter's aggregation interval; unset: measured from the records (the longest
    /// record span for AWS and GCP, the median gap between a connection's updates for Azure).
    pub interval: Option<HumanDuration>,
    /// Records of one 5-tuple join one flow while the gap between them is at most this;
    /// unset: twice the aggregation interval.
    pub stitch_gap: Option<HumanDuration>,
    /// TTL given to DNS log answers that carry none (Route 53 Resolver logs).
    pub dns_ttl: HumanDuration,
    /// Largest file read (after decompression); a larger file is an error for that file.
    pub max_file_bytes: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            interval: None,
            stitch_gap: None,
            dns_ttl: HumanDuration::secs(300),
            max_file_bytes: 4 << 30,
        }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        for (key, v) in [("interval", self.interval), ("stitch_gap", self.stitch_gap)] {
            if v.is_some_and(|d| d.as_nanos() == 0) {
                return Err(Invalid::new(key, "must be positive"));
            }
        }
        if self.dns_ttl.as_nanos() / 1_000_000_000 > u64::from(u32::MAX) {
            return Err(Invalid::new("dns_ttl", "at most 136 years"));
        }
        if self.max_file_bytes == 0 {
            return Err(Invalid::new("max_file_bytes", "must be positive"));
        }
        Ok(())
    }
}
