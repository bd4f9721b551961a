//! Known mining infrastructure: threat-intelligence feeds and DNS-answer binding.
//!
//! # Why it exists
//! The "known infrastructure" detector (docs/ARCHITECTURE.md, Detection semantics) needs two things the
//! flow table cannot give it: lists of pool addresses and pool domain names that other people
//! maintain ([`IntelStore`]), and, because a flow only carries addresses, which domain names the
//! sensor saw resolve to an address ([`dns`](crate::enrich::dns)). [`lookup_server`] puts the two together for
//! one server address.
//!
//! # What it must never do
//! - Never let a feed that failed to load take away the version that was working: a reload
//!   parses every source completely first, swaps the whole snapshot atomically afterwards,
//!   and a feed that failed (unreachable, over its cap, unreadable, deleted) keeps its previous
//!   version, with the failure reported. Readers keep the snapshot they cloned.
//! - Never trust input sizes: every feed is capped in bytes (enforced while reading, not after)
//!   and in entries; every DNS message is parsed with bounds checks, a name length limit and a
//!   compression-pointer hop limit; every table (pending queries, bindings) is bounded.
//! - Never match an allowlisted address or name, whatever a feed says.
//! - Never bind an address to a name from a DNS answer the sensor did not see asked for
//!   (unsolicited, wrong resolver, wrong transaction id or name): that would let anyone who can
//!   send one spoofed packet label any address as a mining pool.
//! - Never read the clock: every function takes the time (ns since the Unix epoch) from its
//!   caller, so a capture replays with its own timestamps.
//! - Never disable TLS peer verification for URL feeds.

// One module per concern: what an entry is and the tables that index entries, the snapshot
// readers hold, how a feed's bytes are got and parsed (one module per format), and the store
// that reloads feeds and reports on them.
mod allowlist;
mod fetch;
mod format;
mod indicator;
mod prefix;
mod report;
mod snapshot;
mod store;
#[cfg(test)]
pub(crate) mod testutil;

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use crate::units::HumanDuration;

pub use crate::enrich::dns::{
    parse_tcp, parse_udp, AnswerOutcome, BinderConfig, BinderStats, DnsBinder, DnsError,
    DnsMessage, Question, RData, Record,
};
pub use format::{FeedFormat, MAX_PROBLEMS_PER_FEED};
pub use indicator::{normalize_domain, Entry, Indicator};
pub use report::{FeedReport, FeedStatus, ReloadReport};
pub use snapshot::{IntelSnapshot, LoadedFeed, Match};
pub use store::IntelStore;

/// Default cap on one feed's size: 16 MiB.
pub const DEFAULT_MAX_FEED_BYTES: u64 = 16 * 1024 * 1024;
/// Default cap on one feed's entries.
pub const DEFAULT_MAX_ENTRIES_PER_FEED: usize = 1_000_000;

/// Default narrowest-allowed breadth of a feed network: /8 for IPv4, /32 for IPv6.
pub const DEFAULT_MIN_PREFIX_V4: u8 = 8;
pub const DEFAULT_MIN_PREFIX_V6: u8 = 32;

/// The `[intel]` section of the agent's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntelConfig {
    /// Every regular, non-hidden file in this directory (not its subdirectories) is a feed
    /// named after the file; its format is detected from its content.
    pub directory: Option<PathBuf>,
    /// Feeds fetched with HTTP(S) GET.
    pub urls: Vec<UrlFeed>,
    /// How often every feed is loaded again.
    pub refresh: HumanDuration,
    /// Time limit for fetching one URL feed (connect, request and the whole body).
    pub fetch_timeout: HumanDuration,
    /// A feed larger than this is refused whole (its previous version stays in use).
    pub max_feed_bytes: u64,
    /// A feed with more entries than this is refused whole (its previous version stays in use).
    pub max_entries_per_feed: usize,
    /// Addresses, CIDRs and domain names that never match, whatever the feeds say. A domain
    /// allows its subdomains too.
    pub allow: Vec<String>,
    /// Feed networks broader than this IPv4 prefix length are refused (counted per feed and
    /// said once per reload): a poisoned `0.0.0.0/0` would make every flow a match.
    pub min_prefix_v4: u8,
    /// The same for IPv6 networks.
    pub min_prefix_v6: u8,
    /// Read feed files that are symlinks leading out of `directory` (off: such links are
    /// refused, so a link to a system file cannot leak it into the log).
    pub follow_symlinks: bool,
}

impl Default for IntelConfig {
    fn default() -> Self {
        IntelConfig {
            directory: None,
            urls: Vec::new(),
            refresh: HumanDuration::secs(3600),
            fetch_timeout: HumanDuration::secs(30),
            max_feed_bytes: DEFAULT_MAX_FEED_BYTES,
            max_entries_per_feed: DEFAULT_MAX_ENTRIES_PER_FEED,
            allow: Vec::new(),
            min_prefix_v4: DEFAULT_MIN_PREFIX_V4,
            min_prefix_v6: DEFAULT_MIN_PREFIX_V6,
            follow_symlinks: false,
        }
    }
}

/// One feed fetched from a URL.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlFeed {
    /// Name used in matches, reports and alarms (must be unique among the URL feeds).
    pub name: String,
    /// `http://` or `https://` URL.
    pub url: String,
    /// Format of the body; detected from the content when absent.
    #[serde(default)]
    pub format: FeedFormat,
}

impl IntelConfig {
    /// Checks what can be checked without loading anything: allowlist entries parse, URL
    /// feeds have unique non-empty names and an http(s) URL, caps are not zero.
    /// Every problem is one line naming the key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if let Err(mut e) = allowlist::Allowlist::parse(&self.allow) {
            errors.append(&mut e);
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.urls.iter().enumerate() {
            if u.name.trim().is_empty() {
                errors.push(format!("intel.urls[{i}].name: must not be empty"));
            } else if !names.insert(u.name.as_str()) {
                errors.push(format!(
                    "intel.urls[{i}].name: {:?} is used by another URL feed",
                    u.name
                ));
            }
            let lower = u.url.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                errors.push(format!(
                    "intel.urls[{i}].url: {:?} must start with http:// or https://",
                    u.url
                ));
            }
        }
        if self.max_feed_bytes == 0 {
            errors.push("intel.max_feed_bytes: must be at least 1".into());
        }
        if self.max_entries_per_feed == 0 {
            errors.push("intel.max_entries_per_feed: must be at least 1".into());
        }
        if self.refresh.0.is_zero() {
            errors.push("intel.refresh: must be longer than 0s".into());
        }
        if let Some(dir) = &self.directory {
            // What a reload would refuse (a FIFO, a device, a link out of the directory) is
            // said here too, so that `validate` reports it.
            if let Ok(files) = fetch::list_dir(dir) {
                for (_, path) in files {
                    if let Some(why) = fetch::refuse_entry(dir, &path, self.follow_symlinks) {
                        errors.push(format!("intel.directory: {why}"));
                    }
                }
            }
        }
        if self.min_prefix_v4 > 32 {
            errors.push("intel.min_prefix_v4: must be 0..=32".into());
        }
        if self.min_prefix_v6 > 128 {
            errors.push("intel.min_prefix_v6: must be 0..=128".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A known-infrastructure match for a server address, directly or through a name it was
/// seen to resolve from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfraMatch {
    pub matched: Match,
    /// The DNS name (bound to the address by an observed answer) that matched a domain entry;
    /// `None` when the address itself matched.
    pub via_name: Option<String>,
}

/// Looks `ip` up in the feeds, then every live name bound to it at `at_ns` (pass the flow's
/// first-seen time). An allowlisted address never matches, even through a name.
pub fn lookup_server(
    snapshot: &IntelSnapshot,
    binder: &DnsBinder,
    ip: IpAddr,
    at_ns: u64,
) -> Option<InfraMatch> {
    if snapshot.is_allowed_ip(ip) {
        return None;
    }
    if let Some(m) = snapshot.match_ip(ip) {
        return Some(InfraMatch {
            matched: m,
            via_name: None,
        });
    }
    binder
        .names_for(ip, at_ns)
        .into_iter()
        .find_map(|(name, _)| {
            snapshot.match_domain(&name).map(|m| InfraMatch {
                matched: m,
                via_name: Some(name),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn intel_config_deserializes_with_defaults_and_rejects_unknown_keys() {
        let c: IntelConfig = toml::from_str(
            r#"
            directory = "/etc/sensor/intel"
            refresh = "15m"
            allow = ["10.0.0.0/8", "good.example"]
            [[urls]]
            name = "pools"
            url = "https://intel.example/pools.txt"
            format = "hosts"
            "#,
        )
        .unwrap();
        assert_eq!(c.refresh, HumanDuration::secs(900));
        assert_eq!(c.max_feed_bytes, DEFAULT_MAX_FEED_BYTES);
        assert_eq!(c.urls[0].format, FeedFormat::Hosts);
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<IntelConfig>("refrsh = \"1h\"").is_err());
        let bad = IntelConfig {
            allow: vec!["not a thing".into()],
            urls: vec![
                UrlFeed {
                    name: "a".into(),
                    url: "ftp://x".into(),
                    format: FeedFormat::Auto,
                },
                UrlFeed {
                    name: "a".into(),
                    url: "http://x".into(),
                    format: FeedFormat::Auto,
                },
            ],
            ..IntelConfig::default()
        };
        let errs = bad.validate().unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn intel_lookup_server_through_dns_binding() {
        let dir = testutil::TempDir::new("lookup");
        dir.write("pools.txt", "pool.example\n192.0.2.0/24\n");
        let store = IntelStore::new(IntelConfig {
            directory: Some(dir.path().to_path_buf()),
            allow: vec!["198.51.100.9".into()],
            ..IntelConfig::default()
        })
        .unwrap();
        store.reload(1_000);
        let snap = store.snapshot();
        let mut binder = DnsBinder::new(BinderConfig::default());
        let client: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let resolver: SocketAddr = "10.0.0.1:53".parse().unwrap();
        let q = crate::enrich::dns::tests::query(7, "EU.pool.example");
        let a = crate::enrich::dns::tests::answer_a(7, "eu.pool.example", [198, 51, 100, 7], 300);
        binder.observe_payload(client, resolver, &q, false, 5_000_000_000);
        binder.observe_payload(resolver, client, &a, false, 5_000_000_100);
        let now = 6_000_000_000;
        let m = lookup_server(&snap, &binder, "198.51.100.7".parse().unwrap(), now).unwrap();
        assert_eq!(m.via_name.as_deref(), Some("eu.pool.example"));
        assert_eq!(m.matched.entry, "pool.example");
        let m = lookup_server(&snap, &binder, "192.0.2.3".parse().unwrap(), now).unwrap();
        assert_eq!(m.via_name, None);
        assert!(lookup_server(&snap, &binder, "198.51.100.8".parse().unwrap(), now).is_none());
        // Allowlisted address: no match even through a bound name.
        let a = crate::enrich::dns::tests::answer_a(8, "eu.pool.example", [198, 51, 100, 9], 300);
        let q = crate::enrich::dns::tests::query(8, "eu.pool.example");
        binder.observe_payload(client, resolver, &q, false, 5_000_000_000);
        binder.observe_payload(resolver, client, &a, false, 5_000_000_100);
        assert!(!binder
            .names_for("198.51.100.9".parse().unwrap(), now)
            .is_empty());
        assert!(lookup_server(&snap, &binder, "198.51.100.9".parse().unwrap(), now).is_none());
    }
}
