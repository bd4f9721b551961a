//! The feed versions in force at one time, indexed for lookups, and what a match reports.
//!
//! # Why it exists
//! Lookups run for every flow and must cost a few hash probes whatever the number of entries:
//! one hash map per IPv4/IPv6 prefix length that occurs in the feeds, probed from the longest
//! prefix down (longest-prefix match), and one hash table of domain names probed with the name
//! and then each parent (`a.b.pool.example`, `b.pool.example`, `pool.example`, `example`).
//! A snapshot is immutable so that a reload can build the next one beside it and readers keep
//! the one they hold.
//!
//! # What it must never do
//! - Never change once built: readers hold it through an `Arc` while a reload runs.
//! - Never match an allowlisted address or name, or a name through a listed parent of an
//!   allowlisted one.
//! - Never copy an entry's text into the index: the index holds entry references, so a
//!   million-entry feed is stored once.

use std::{fmt, hash::BuildHasher, net::IpAddr, sync::Arc, time::Duration};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{
    allowlist::Allowlist,
    format::FeedFormat,
    indicator::{lower_query, walk_labels, Entry, Indicator},
    prefix::PrefixTable,
};

/// Where a feed comes from; a reload matches sources by this key to keep previous versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SourceKey {
    /// A file of the directory, by file name.
    File(String),
    /// A configured URL feed, by name.
    Url(String),
}

/// One parsed version of one feed.
#[derive(Debug)]
pub struct LoadedFeed {
    /// File name (directory feeds) or configured name (URL feeds).
    pub name: String,
    /// Path or URL.
    pub source: String,
    /// The format the feed was parsed as (never `Auto`).
    pub format: FeedFormat,
    /// When this version was loaded (ns since the Unix epoch, as passed to `reload`).
    pub loaded_at_ns: u64,
    pub entries: Vec<Entry>,
    /// Lines that could not be parsed (skipped).
    pub malformed: usize,
    /// Lines or fields skipped on purpose: Zeek indicator types other than addresses, subnets
    /// and domains; `localhost`-style names of hosts files; CSV rows without an indicator.
    pub skipped: usize,
    pub(super) key: SourceKey,
}

/// A feed match with its provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// Feed name.
    pub feed: String,
    /// Path or URL of the feed.
    pub source: String,
    /// The entry as written in the feed.
    pub entry: String,
    pub line: u32,
    pub description: Option<String>,
    /// When the feed version that matched was loaded (ns since the Unix epoch).
    pub loaded_at_ns: u64,
}

impl Match {
    /// Age of the feed version that matched at `now_ns`.
    pub fn age(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.loaded_at_ns))
    }
}

/// Every feed version in force at one time, indexed for lookups. Immutable: a reload builds a
/// new one, and readers holding an `Arc` of this one keep seeing it.
pub struct IntelSnapshot {
    built_at_ns: u64,
    feeds: Vec<Arc<LoadedFeed>>,
    allow: Arc<Allowlist>,
    v4: PrefixTable<u32>,
    v6: PrefixTable<u128>,
    /// Entry references (`feed << 32 | entry`) hashed by their domain.
    domains: HashTable<u64>,
    hasher: DefaultHashBuilder,
    duplicates: usize,
}

impl fmt::Debug for IntelSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntelSnapshot")
            .field("built_at_ns", &self.built_at_ns)
            .field(
                "feeds",
                &self.feeds.iter().map(|f| &f.name).collect::<Vec<_>>(),
            )
            .field("networks", &(self.v4.len() + self.v6.len()))
            .field("domains", &self.domains.len())
            .field("duplicates", &self.duplicates)
            .finish()
    }
}

impl IntelSnapshot {
    pub(super) fn build(
        feeds: Vec<Arc<LoadedFeed>>,
        allow: Arc<Allowlist>,
        built_at_ns: u64,
    ) -> Self {
        let mut s = IntelSnapshot {
            built_at_ns,
            feeds,
            allow,
            v4: PrefixTable::default(),
            v6: PrefixTable::default(),
            domains: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            duplicates: 0,
        };
        let mut domains = HashTable::new();
        for (fi, feed) in s.feeds.iter().enumerate() {
            for (ei, e) in feed.entries.iter().enumerate() {
                let r = ((fi as u64) << 32) | ei as u64;
                let inserted = match &e.indicator {
                    Indicator::V4 { net, prefix } => s.v4.insert(*net, *prefix, r),
                    Indicator::V6 { net, prefix } => s.v6.insert(*net, *prefix, r),
                    Indicator::Domain(d) => {
                        let feeds = &s.feeds;
                        let hasher = &s.hasher;
                        let h = hasher.hash_one(&**d);
                        if domains.find(h, |&o| domain_of(feeds, o) == &**d).is_some() {
                            false
                        } else {
                            domains.insert_unique(h, r, |&o| hasher.hash_one(domain_of(feeds, o)));
                            true
                        }
                    }
                };
                if !inserted {
                    s.duplicates += 1;
                }
            }
        }
        s.domains = domains;
        s
    }

    /// The feed versions in force, in source order (directory files by name, then URLs).
    pub fn feeds(&self) -> &[Arc<LoadedFeed>] {
        &self.feeds
    }

    /// Distinct indicators indexed (entries minus duplicates).
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries that repeat an indicator of an earlier entry (the earlier one is reported).
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// When this snapshot was built (ns since the Unix epoch).
    pub fn built_at_ns(&self) -> u64 {
        self.built_at_ns
    }

    pub fn is_allowed_ip(&self, ip: IpAddr) -> bool {
        self.allow.allows_ip(ip)
    }

    pub fn is_allowed_domain(&self, name: &str) -> bool {
        lower_query(name).is_some_and(|n| self.allow.allows_domain(&n))
    }

    /// Longest-prefix match over every address and network of every feed. IPv4-mapped IPv6
    /// addresses are looked up as IPv4. Allowlisted addresses never match.
    pub fn match_ip(&self, ip: IpAddr) -> Option<Match> {
        let ip = ip.to_canonical();
        if self.allow.allows_ip(ip) {
            return None;
        }
        let r = match ip {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }?;
        Some(self.make_match(r))
    }

    /// Exact or parent-domain match (`pool.example` matches `eu.pool.example`), ignoring
    /// case and a trailing dot; the most specific entry wins. Allowlisted names (and their
    /// subdomains) never match.
    pub fn match_domain(&self, name: &str) -> Option<Match> {
        let name = lower_query(name)?;
        if self.allow.allows_domain(&name) {
            return None;
        }
        if self.domains.is_empty() {
            return None;
        }
        let r = walk_labels(&name, |s| {
            self.domains
                .find(self.hasher.hash_one(s), |&o| domain_of(&self.feeds, o) == s)
                .copied()
        })?;
        Some(self.make_match(r))
    }

    fn make_match(&self, r: u64) -> Match {
        let feed = &self.feeds[(r >> 32) as usize];
        let e = &feed.entries[(r & 0xffff_ffff) as usize];
        Match {
            feed: feed.name.clone(),
            source: feed.source.clone(),
            entry: e.text.to_string(),
            line: e.line,
            description: e.description.as_deref().map(str::to_string),
            loaded_at_ns: feed.loaded_at_ns,
        }
    }

    pub(super) fn feed_by_key(&self, key: &SourceKey) -> Option<&Arc<LoadedFeed>> {
        self.feeds.iter().find(|f| &f.key == key)
    }
}

/// The domain of the entry reference `r` (`feed << 32 | entry`); empty for a network entry,
/// which is never in the domain table.
fn domain_of(feeds: &[Arc<LoadedFeed>], r: u64) -> &str {
    match &feeds[(r >> 32) as usize].entries[(r & 0xffff_ffff) as usize].indicator {
        Indicator::Domain(d) => d,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::intel::{
        format::parse_feed,
        testutil::{ip, store_for, TempDir, T1},
        IntelConfig, IntelStore,
    };
    use std::time::Instant;

    #[test]
    fn intel_allowlist_beats_match() {
        let dir = TempDir::new("allow");
        dir.write("a.txt", "192.0.2.0/24\npool.example\n2001:db8::/32\n");
        let store = store_for(&dir, |c| {
            c.allow = vec![
                "192.0.2.7".into(),
                "safe.pool.example.".into(),
                "2001:db8:1::/48".into(),
            ]
        });
        store.reload(T1);
        let s = store.snapshot();
        assert!(s.match_ip(ip("192.0.2.7")).is_none());
        assert!(s.match_ip(ip("::ffff:192.0.2.7")).is_none());
        assert!(s.match_ip(ip("192.0.2.8")).is_some());
        assert!(s.match_ip(ip("2001:db8:1::5")).is_none());
        assert!(s.match_ip(ip("2001:db8:2::5")).is_some());
        assert!(s.match_domain("Safe.Pool.Example").is_none());
        assert!(s.match_domain("x.safe.pool.example").is_none());
        assert!(s.match_domain("eu.pool.example").is_some());
        assert!(s.is_allowed_domain("a.safe.pool.example."));
        assert!(IntelStore::new(IntelConfig {
            allow: vec!["10.0.0.0/40".into()],
            ..IntelConfig::default()
        })
        .unwrap_err()
        .contains("intel.allow[0]"));
    }

    #[test]
    fn intel_longest_prefix_match() {
        let dir = TempDir::new("lpm");
        dir.write(
            "a.txt",
            "10.0.0.0/8\n10.1.0.0/16\n10.1.2.0/24\n10.1.2.3\n10.9.9.9/8\n0.0.0.0/1\n2001:db8::/32\n2001:db8:aa::/48\n2001:db8:aa::1\n",
        );
        dir.write("b.txt", "10.1.2.3\n172.16.0.0/12 # other feed\n");
        // The /1 is below the default minimum prefix on purpose: matching, not policy, here.
        let store = store_for(&dir, |c| c.min_prefix_v4 = 0);
        let r = store.reload(T1);
        assert_eq!(r.duplicates, 2, "{r}");
        let line = |a: &str| store.match_ip(ip(a)).map(|m| (m.feed, m.line));
        assert_eq!(line("10.1.2.3"), Some(("a.txt".into(), 4)));
        assert_eq!(line("10.1.2.4"), Some(("a.txt".into(), 3)));
        assert_eq!(line("10.1.3.4"), Some(("a.txt".into(), 2)));
        assert_eq!(line("10.200.3.4"), Some(("a.txt".into(), 1)));
        assert_eq!(line("99.1.1.1"), Some(("a.txt".into(), 6)));
        assert_eq!(line("172.20.1.1"), Some(("b.txt".into(), 2)));
        assert_eq!(line("200.1.1.1"), None);
        assert_eq!(line("2001:db8:aa::1"), Some(("a.txt".into(), 9)));
        assert_eq!(line("2001:db8:aa::2"), Some(("a.txt".into(), 8)));
        assert_eq!(line("2001:db8:bb::2"), Some(("a.txt".into(), 7)));
        assert_eq!(line("2001:db9::1"), None);
        let m = store.match_ip(ip("172.20.1.1")).unwrap();
        assert_eq!(m.entry, "172.16.0.0/12");
        assert_eq!(m.description.as_deref(), Some("other feed"));
        assert_eq!(m.source, dir.path().join("b.txt").display().to_string());
    }

    #[test]
    fn intel_parent_domain_match() {
        let dir = TempDir::new("domains");
        dir.write("a.txt", "pool.example\neu.pool.example\nxmr.example.org.\n");
        let store = store_for(&dir, |_| {});
        store.reload(T1);
        let entry = |d: &str| store.match_domain(d).map(|m| m.entry);
        assert_eq!(entry("pool.example").as_deref(), Some("pool.example"));
        assert_eq!(entry("POOL.Example.").as_deref(), Some("pool.example"));
        assert_eq!(entry("a.b.pool.example").as_deref(), Some("pool.example"));
        assert_eq!(
            entry("a.EU.pool.example").as_deref(),
            Some("eu.pool.example")
        );
        assert_eq!(
            entry("xmr.example.org").as_deref(),
            Some("xmr.example.org.")
        );
        assert_eq!(entry("notpool.example"), None);
        assert_eq!(entry("example"), None);
        assert_eq!(entry("example.org"), None);
        assert_eq!(entry(""), None);
        assert_eq!(entry("."), None);
    }

    #[test]
    fn intel_ipv4_mapped_addresses_are_ipv4() {
        let dir = TempDir::new("mapped");
        dir.write("a.txt", "192.0.2.1\n::ffff:198.51.100.0/120\n");
        let store = store_for(&dir, |_| {});
        store.reload(T1);
        assert_eq!(store.match_ip(ip("::ffff:192.0.2.1")).unwrap().line, 1);
        assert_eq!(store.match_ip(ip("198.51.100.77")).unwrap().line, 2);
        assert_eq!(store.match_ip(ip("::ffff:198.51.100.77")).unwrap().line, 2);
        assert!(store.match_ip(ip("::ffff:192.0.2.2")).is_none());
    }

    #[test]
    fn intel_match_performance_with_1m_entries() {
        let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        let mut text = String::with_capacity(24 << 20);
        let mut probes_ip = Vec::new();
        let mut probes_dom = Vec::new();
        for i in 0..1_000_000u32 {
            let r = rng.u64(..);
            match i % 10 {
                0..=3 => {
                    let a = std::net::Ipv4Addr::from(r as u32);
                    text.push_str(&format!("{a}\n"));
                    if i % 1000 == 0 {
                        probes_ip.push(IpAddr::V4(a));
                    }
                }
                4 => text.push_str(&format!(
                    "{}/{}\n",
                    std::net::Ipv4Addr::from(r as u32),
                    16 + (r >> 40) % 9
                )),
                5 => text.push_str(&format!(
                    "{}/{}\n",
                    std::net::Ipv6Addr::from(u128::from(r) << 64 | 0x2001_0db8u128 << 96),
                    48 + (r >> 40) % 17
                )),
                _ => {
                    let d = format!("p{:x}.pool{}.example", r, i % 97);
                    if i % 1000 == 6 {
                        probes_dom.push(format!("eu.{d}"));
                    }
                    text.push_str(&d);
                    text.push('\n');
                }
            }
        }
        let t = Instant::now();
        let parsed = parse_feed(
            "big.txt",
            text.as_bytes(),
            FeedFormat::Auto,
            false,
            1_000_000,
        )
        .unwrap();
        let parse_time = t.elapsed();
        assert_eq!(parsed.entries.len(), 1_000_000);
        let t = Instant::now();
        let feed = Arc::new(LoadedFeed {
            name: "big".into(),
            source: "big.txt".into(),
            format: parsed.format,
            loaded_at_ns: T1,
            entries: parsed.entries,
            malformed: 0,
            skipped: 0,
            key: SourceKey::File("big.txt".into()),
        });
        let snap = IntelSnapshot::build(vec![feed], Arc::new(Allowlist::default()), T1);
        let build_time = t.elapsed();

        const N: usize = 200_000;
        let mut hits = 0usize;
        let t = Instant::now();
        for i in 0..N {
            let a = if i % 4 == 0 {
                probes_ip[i % probes_ip.len()]
            } else {
                IpAddr::V4(std::net::Ipv4Addr::from(rng.u64(..) as u32))
            };
            hits += usize::from(snap.match_ip(a).is_some());
        }
        let ip_ns = t.elapsed().as_nanos() as f64 / N as f64;
        assert!(hits >= N / 4);
        let misses: Vec<String> = (0..1000)
            .map(|i| format!("www.site{i}.example.net"))
            .collect();
        let mut hits = 0usize;
        let t = Instant::now();
        for i in 0..N {
            let d = if i % 4 == 0 {
                &probes_dom[i % probes_dom.len()]
            } else {
                &misses[i % misses.len()]
            };
            hits += usize::from(snap.match_domain(d).is_some());
        }
        let dom_ns = t.elapsed().as_nanos() as f64 / N as f64;
        assert_eq!(hits, N / 4);
        println!(
            "intel perf: 1M entries ({} distinct), parse {:?}, index {:?}, match_ip {ip_ns:.0} ns/lookup \
             ({} IPv4 prefix lengths), match_domain {dom_ns:.0} ns/lookup",
            snap.len(),
            parse_time,
            build_time,
            snap.v4.prefix_lengths()
        );
    }
}
