//! `intel.allow`: addresses, networks and domains that never match, whatever a feed says.
//!
//! # Why it exists
//! Feeds list shared infrastructure by mistake (a CDN, a resolver, the operator's own pool
//! proxy); the operator needs a way to overrule every feed at once without editing any.
//!
//! # What it must never do
//! - Never be overruled by a feed: the snapshot asks the allowlist before any feed table.
//! - Never accept an entry it cannot parse: the configuration is refused with the index of
//!   every bad entry instead of silently allowing less than the operator wrote.

use std::net::IpAddr;

use hashbrown::HashSet;

use super::{
    indicator::{walk_labels, Indicator},
    prefix::PrefixTable,
};

#[derive(Debug, Default)]
pub(crate) struct Allowlist {
    v4: PrefixTable<u32>,
    v6: PrefixTable<u128>,
    domains: HashSet<Box<str>>,
}

impl Allowlist {
    /// Parses `intel.allow`; every bad entry is one error naming its index.
    pub(crate) fn parse(items: &[String]) -> Result<Allowlist, Vec<String>> {
        let mut a = Allowlist::default();
        let mut errors = Vec::new();
        for (i, s) in items.iter().enumerate() {
            match Indicator::parse(s) {
                Ok(Indicator::V4 { net, prefix }) => {
                    a.v4.insert(net, prefix, 0);
                }
                Ok(Indicator::V6 { net, prefix }) => {
                    a.v6.insert(net, prefix, 0);
                }
                Ok(Indicator::Domain(d)) => {
                    a.domains.insert(d);
                }
                Err(e) => errors.push(format!("intel.allow[{i}]: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(a)
        } else {
            Err(errors)
        }
    }

    pub(super) fn allows_ip(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)).is_some(),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)).is_some(),
        }
    }

    /// `name` must already be lower case without a trailing dot.
    pub(super) fn allows_domain(&self, name: &str) -> bool {
        !self.domains.is_empty() && walk_labels(name, |s| self.domains.get(s).map(|_| ())).is_some()
    }
}
