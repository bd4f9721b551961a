//! Threat-intelligence feeds: parsing, caps, provenance, reload with keep-previous, matching.
//!
//! A feed is one file of the configured directory or one configured URL. It is read whole
//! (up to its byte cap, enforced while reading), parsed line by line, and becomes a
//! [`LoadedFeed`] whose entries remember the text as written, the line and any description.
//! [`IntelStore::reload`] builds a complete new [`IntelSnapshot`] from every source and only
//! then swaps it in; a source that fails keeps the feed version of the previous snapshot.
//!
//! Lookups are hash probes: one hash map per IPv4/IPv6 prefix length that occurs in the feeds,
//! probed from the longest prefix down (longest-prefix match), and one hash table of domain
//! names probed with the name and then each parent (`a.b.pool.example`, `b.pool.example`,
//! `pool.example`, `example`). A lookup costs a few probes whatever the number of entries.

use std::{
    borrow::Cow,
    fmt, fs,
    hash::{BuildHasher, Hash},
    io::Read,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, UNIX_EPOCH},
};

use hashbrown::{DefaultHashBuilder, HashMap, HashSet, HashTable};
use serde::Deserialize;

use super::IntelConfig;

/// Malformed lines listed per feed in a report (and logged); the rest are only counted.
pub const MAX_PROBLEMS_PER_FEED: usize = 100;

/// How a feed is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedFormat {
    /// Detected from the content (a `.csv` file name also means CSV).
    #[default]
    Auto,
    /// One IP address, CIDR or domain name per line; `#` and `;` start comments.
    List,
    /// `0.0.0.0 pool.example other.example`: the names are the indicators, the address is not.
    Hosts,
    /// Comma-separated with a header row naming the indicator column(s).
    Csv,
    /// Zeek intel framework file (`#fields indicator indicator_type meta.source ...`).
    #[serde(alias = "zeek_intel", alias = "zeek-intel")]
    Zeek,
}

impl fmt::Display for FeedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FeedFormat::Auto => "auto",
            FeedFormat::List => "list",
            FeedFormat::Hosts => "hosts",
            FeedFormat::Csv => "csv",
            FeedFormat::Zeek => "zeek",
        })
    }
}

/// What one entry stands for. Networks are stored with their host bits cleared; IPv4-mapped
/// IPv6 networks (`::ffff:192.0.2.0/120`) are stored as IPv4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Indicator {
    V4 {
        net: u32,
        prefix: u8,
    },
    V6 {
        net: u128,
        prefix: u8,
    },
    /// Lower case, without a trailing dot or a leading `*.`.
    Domain(Box<str>),
}

impl Indicator {
    /// Parses an address, a CIDR or a domain name (at least two labels, letters, digits, `-`
    /// and `_`; a leading `*.` and a trailing dot are accepted and dropped).
    pub fn parse(s: &str) -> Result<Indicator, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty indicator".into());
        }
        if let Some((a, p)) = s.split_once('/') {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| format!("{s:?} is not a CIDR (address/prefix length)"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?;
            return Ok(Self::network(ip, prefix));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            let full = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Self::network(ip, full));
        }
        normalize_domain(s)
            .map(Indicator::Domain)
            .ok_or_else(|| format!("{s:?} is not an IP address, CIDR or domain name"))
    }

    fn network(ip: IpAddr, prefix: u8) -> Indicator {
        match ip {
            IpAddr::V4(a) => Indicator::V4 {
                net: u32::from(a).mask(prefix),
                prefix,
            },
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Indicator::V4 {
                    net: u32::from(v4).mask(prefix - 96),
                    prefix: prefix - 96,
                },
                _ => Indicator::V6 {
                    net: u128::from(a).mask(prefix),
                    prefix,
                },
            },
        }
    }
}

/// A domain name as stored: lower case, no trailing dot, no leading `*.`, at least two labels,
/// labels of 1-63 letters, digits, `-` or `_`, at most 253 characters, and a last label that
/// is not all digits (so `1.2.3.999` is not taken for a name). A single label is refused: it
/// would match a whole top-level domain.
pub fn normalize_domain(s: &str) -> Option<Box<str>> {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return None;
    }
    let mut labels = 0;
    let mut last = "";
    for label in s.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        labels += 1;
        last = label;
    }
    if labels < 2 || last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.to_ascii_lowercase().into_boxed_str())
}

/// One feed entry with its provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub indicator: Indicator,
    /// The indicator as written in the feed.
    pub text: Box<str>,
    /// 1-based line in the feed.
    pub line: u32,
    pub description: Option<Box<str>>,
}

/// Where a feed comes from; a reload matches sources by this key to keep previous versions.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SourceKey {
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
    key: SourceKey,
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

// ---------------------------------------------------------------------------------------
// Prefix tables

trait Bits: Copy + Eq + Hash {
    fn mask(self, prefix: u8) -> Self;
}

impl Bits for u32 {
    fn mask(self, prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            self & (u32::MAX << (32 - u32::from(prefix.min(32))))
        }
    }
}

impl Bits for u128 {
    fn mask(self, prefix: u8) -> u128 {
        if prefix == 0 {
            0
        } else {
            self & (u128::MAX << (128 - u32::from(prefix.min(128))))
        }
    }
}

/// One hash map per prefix length present, longest first.
#[derive(Debug)]
struct PrefixTable<K: Bits> {
    levels: Vec<(u8, HashMap<K, u64>)>,
}

impl<K: Bits> Default for PrefixTable<K> {
    fn default() -> Self {
        PrefixTable { levels: Vec::new() }
    }
}

impl<K: Bits> PrefixTable<K> {
    /// Inserts unless the network is already there; returns whether it was inserted.
    fn insert(&mut self, net: K, prefix: u8, value: u64) -> bool {
        let i = match self.levels.iter().position(|(p, _)| *p <= prefix) {
            Some(i) if self.levels[i].0 == prefix => i,
            Some(i) => {
                self.levels.insert(i, (prefix, HashMap::new()));
                i
            }
            None => {
                self.levels.push((prefix, HashMap::new()));
                self.levels.len() - 1
            }
        };
        match self.levels[i].1.entry(net.mask(prefix)) {
            hashbrown::hash_map::Entry::Occupied(_) => false,
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(value);
                true
            }
        }
    }

    fn lookup(&self, addr: K) -> Option<u64> {
        self.levels
            .iter()
            .find_map(|(p, map)| map.get(&addr.mask(*p)).copied())
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|(_, m)| m.len()).sum()
    }
}

fn lower_query(name: &str) -> Option<Cow<'_, str>> {
    let name = name.trim();
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// Calls `f` with the name and each parent domain, longest first, until it returns `Some`.
fn walk_labels<T>(name: &str, mut f: impl FnMut(&str) -> Option<T>) -> Option<T> {
    let mut s = name;
    loop {
        if let Some(t) = f(s) {
            return Some(t);
        }
        match s.find('.') {
            Some(i) => s = &s[i + 1..],
            None => return None,
        }
    }
}

/// Addresses, networks and domains (with their subdomains) that never match.
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

    fn allows_ip(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)).is_some(),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)).is_some(),
        }
    }

    /// `name` must already be lower case without a trailing dot.
    fn allows_domain(&self, name: &str) -> bool {
        !self.domains.is_empty() && walk_labels(name, |s| self.domains.get(s).map(|_| ())).is_some()
    }
}

// ---------------------------------------------------------------------------------------
// Snapshot

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
    fn build(feeds: Vec<Arc<LoadedFeed>>, allow: Arc<Allowlist>, built_at_ns: u64) -> Self {
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

    fn feed_by_key(&self, key: &SourceKey) -> Option<&Arc<LoadedFeed>> {
        self.feeds.iter().find(|f| &f.key == key)
    }
}

fn domain_of(feeds: &[Arc<LoadedFeed>], r: u64) -> &str {
    match &feeds[(r >> 32) as usize].entries[(r & 0xffff_ffff) as usize].indicator {
        Indicator::Domain(d) => d,
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

struct Parsed {
    format: FeedFormat,
    entries: Vec<Entry>,
    malformed: usize,
    skipped: usize,
    problems: Vec<String>,
}

struct Parser<'a> {
    origin: &'a str,
    max_entries: usize,
    entries: Vec<Entry>,
    malformed: usize,
    skipped: usize,
    problems: Vec<String>,
}

impl<'a> Parser<'a> {
    fn new(origin: &'a str, max_entries: usize) -> Self {
        Parser {
            origin,
            max_entries,
            entries: Vec::new(),
            malformed: 0,
            skipped: 0,
            problems: Vec::new(),
        }
    }

    fn bad(&mut self, line: u32, msg: impl fmt::Display) {
        self.malformed += 1;
        if self.problems.len() < MAX_PROBLEMS_PER_FEED {
            let p = format!("{}:{}: {}", self.origin, line, msg);
            log::warn!("{p}");
            self.problems.push(p);
        }
    }

    fn push(
        &mut self,
        indicator: Indicator,
        text: &str,
        line: u32,
        description: Option<&str>,
    ) -> Result<(), String> {
        if self.entries.len() >= self.max_entries {
            return Err(format!(
                "{} has more than max_entries_per_feed = {} entries; the whole feed is refused",
                self.origin, self.max_entries
            ));
        }
        self.entries.push(Entry {
            indicator,
            text: text.into(),
            line,
            description: description
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(Into::into),
        });
        Ok(())
    }

    fn finish(mut self, format: FeedFormat) -> Parsed {
        if self.malformed > self.problems.len() {
            let p = format!(
                "{}: {} more malformed lines not listed",
                self.origin,
                self.malformed - self.problems.len()
            );
            log::warn!("{p}");
            self.problems.push(p);
        }
        Parsed {
            format,
            entries: self.entries,
            malformed: self.malformed,
            skipped: self.skipped,
            problems: self.problems,
        }
    }
}

/// Lines with 1-based numbers; a UTF-8 BOM and `\r` line ends are dropped; `Err` for a line
/// that is not UTF-8.
fn lines(data: &[u8]) -> impl Iterator<Item = (u32, Result<&str, ()>)> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    data.split(|&b| b == b'\n').enumerate().map(|(i, l)| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        (
            u32::try_from(i + 1).unwrap_or(u32::MAX),
            std::str::from_utf8(l).map_err(|_| ()),
        )
    })
}

/// Splits off a `#` or `;` comment: (content, comment text if any).
fn split_comment(line: &str) -> (&str, Option<&str>) {
    match line.find(['#', ';']) {
        Some(i) => (&line[..i], Some(line[i + 1..].trim())),
        None => (line, None),
    }
}

/// Header names of columns that hold indicators, in groups of preference: the first group
/// with a column in the header is used, with every column of that group.
const INDICATOR_COLUMNS: &[&[&str]] = &[
    &["indicator", "ioc"],
    &[
        "ip",
        "ip_address",
        "ipaddress",
        "ip address",
        "dst_ip",
        "cidr",
        "network",
        "subnet",
        "domain",
        "domain_name",
        "domainname",
        "hostname",
        "host",
        "fqdn",
    ],
    &["value", "address", "addr"],
];

const DESCRIPTION_COLUMNS: &[&str] = &[
    "description",
    "desc",
    "comment",
    "comments",
    "note",
    "notes",
    "reason",
];

/// Splits one CSV line (RFC 4180 quoting on one line); cells are trimmed.
fn split_csv(line: &str) -> Result<Vec<String>, &'static str> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == ',' {
            cells.push(cur.trim().to_string());
            cur.clear();
        } else if c == '"' && cur.trim().is_empty() {
            cur.clear();
            in_quotes = true;
        } else {
            cur.push(c);
        }
    }
    if in_quotes {
        return Err("unterminated quoted field");
    }
    cells.push(cur.trim().to_string());
    Ok(cells)
}

/// The indicator columns and the description column of a CSV header, if it has an
/// indicator column.
fn csv_header(cells: &[String]) -> Option<(Vec<usize>, Option<usize>)> {
    let names: Vec<String> = cells.iter().map(|c| c.to_ascii_lowercase()).collect();
    let ind = INDICATOR_COLUMNS.iter().find_map(|group| {
        let cols: Vec<usize> = names
            .iter()
            .enumerate()
            .filter(|(_, n)| group.contains(&n.as_str()))
            .map(|(i, _)| i)
            .collect();
        (!cols.is_empty()).then_some(cols)
    })?;
    let desc = DESCRIPTION_COLUMNS
        .iter()
        .find_map(|d| names.iter().position(|n| n == d));
    Some((ind, desc))
}

fn looks_like_csv_header(s: &str) -> bool {
    s.contains(',') && split_csv(s).is_ok_and(|c| csv_header(&c).is_some())
}

fn is_zeek_fields(t: &str) -> bool {
    t.strip_prefix("#fields")
        .is_some_and(|r| r.starts_with(['\t', ' ']))
}

/// Guesses the format from the comments before the first data line and that line.
fn detect(data: &[u8], csv_name: bool) -> FeedFormat {
    for (_, line) in lines(data) {
        let Ok(line) = line else { continue };
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if is_zeek_fields(t) {
            return FeedFormat::Zeek;
        }
        if let Some(c) = t.strip_prefix('#').or_else(|| t.strip_prefix(';')) {
            if looks_like_csv_header(c.trim()) {
                return FeedFormat::Csv;
            }
            continue;
        }
        if csv_name || looks_like_csv_header(t) {
            return FeedFormat::Csv;
        }
        let mut tokens = split_comment(t).0.split_whitespace();
        if let (Some(first), Some(_)) = (tokens.next(), tokens.next()) {
            if first.parse::<IpAddr>().is_ok() {
                return FeedFormat::Hosts;
            }
        }
        return FeedFormat::List;
    }
    if csv_name {
        FeedFormat::Csv
    } else {
        FeedFormat::List
    }
}

/// Names of hosts files that are not indicators.
const LOCAL_HOST_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "localhost4",
    "localhost4.localdomain4",
    "localhost6",
    "localhost6.localdomain6",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

fn parse_list(p: &mut Parser, data: &[u8]) -> Result<(), String> {
    for (n, line) in lines(data) {
        let Ok(line) = line else {
            p.bad(n, "not valid UTF-8");
            continue;
        };
        let (body, comment) = split_comment(line);
        let mut tokens = body.split_whitespace();
        let Some(first) = tokens.next() else { continue };
        if tokens.next().is_some() {
            p.bad(
                n,
                format!(
                    "expected one IP address, CIDR or domain name, found {} fields",
                    body.split_whitespace().count()
                ),
            );
            continue;
        }
        match Indicator::parse(first) {
            Ok(i) => p.push(i, first, n, comment)?,
            Err(e) => p.bad(n, e),
        }
    }
    Ok(())
}

fn parse_hosts(p: &mut Parser, data: &[u8]) -> Result<(), String> {
    for (n, line) in lines(data) {
        let Ok(line) = line else {
            p.bad(n, "not valid UTF-8");
            continue;
        };
        let (body, comment) = split_comment(line);
        let tokens: Vec<&str> = body.split_whitespace().collect();
        let Some(addr) = tokens.first() else { continue };
        if addr.parse::<IpAddr>().is_err() {
            p.bad(
                n,
                format!("expected an address followed by host names, found {addr:?}"),
            );
            continue;
        }
        if tokens.len() == 1 {
            p.bad(n, "address without host names");
            continue;
        }
        for h in &tokens[1..] {
            if LOCAL_HOST_NAMES.contains(&h.to_ascii_lowercase().as_str()) {
                p.skipped += 1;
                continue;
            }
            match normalize_domain(h) {
                Some(d) => p.push(Indicator::Domain(d), h, n, comment)?,
                None => p.bad(n, format!("{h:?} is not a domain name")),
            }
        }
    }
    Ok(())
}

fn parse_csv(p: &mut Parser, data: &[u8]) -> Result<(), String> {
    // (indicator columns, description column, number of columns)
    let mut header: Option<(Vec<usize>, Option<usize>, usize)> = None;
    for (n, line) in lines(data) {
        let Ok(line) = line else {
            p.bad(n, "not valid UTF-8");
            continue;
        };
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let Some((ind, desc, ncols)) = &header else {
            let body = match t.strip_prefix('#') {
                Some(c) if looks_like_csv_header(c.trim()) => c.trim(),
                Some(_) => continue,
                None => t,
            };
            let cells =
                split_csv(body).map_err(|e| format!("{}:{n}: header row: {e}", p.origin))?;
            let Some((ind, desc)) = csv_header(&cells) else {
                let expected: Vec<&str> = INDICATOR_COLUMNS
                    .iter()
                    .flat_map(|g| g.iter().copied())
                    .collect();
                return Err(format!(
                    "{}:{n}: the CSV header row {cells:?} has no indicator column (expected one of {})",
                    p.origin,
                    expected.join(", ")
                ));
            };
            header = Some((ind, desc, cells.len()));
            continue;
        };
        if t.starts_with('#') {
            continue;
        }
        let cells = match split_csv(line) {
            Ok(c) => c,
            Err(e) => {
                p.bad(n, e);
                continue;
            }
        };
        if ind.iter().any(|&c| c >= cells.len()) {
            p.bad(
                n,
                format!("expected {ncols} columns, found {}", cells.len()),
            );
            continue;
        }
        let description = desc.and_then(|d| cells.get(d)).map(String::as_str);
        let mut any = false;
        for &c in ind {
            let cell = cells[c].as_str();
            if cell.is_empty() || cell == "-" {
                continue;
            }
            any = true;
            match Indicator::parse(cell) {
                Ok(i) => p.push(i, cell, n, description)?,
                Err(e) => p.bad(n, e),
            }
        }
        if !any {
            p.skipped += 1;
        }
    }
    Ok(())
}

/// Zeek's `\xHH` escapes in `#separator` lines.
fn unescape_zeek(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(hex) = rest.strip_prefix("\\x").and_then(|r| r.get(..2)) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(char::from(b));
                rest = &rest[4..];
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn parse_zeek(p: &mut Parser, data: &[u8]) -> Result<(), String> {
    let mut sep = String::from("\t");
    // (indicator, indicator_type, meta.desc, meta.source)
    let mut cols: Option<(usize, usize, Option<usize>, Option<usize>)> = None;
    let unset = |s: &str| s.is_empty() || s == "-" || s == "(empty)";
    for (n, line) in lines(data) {
        let Ok(line) = line else {
            p.bad(n, "not valid UTF-8");
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('#') {
            if let Some(s) = line.strip_prefix("#separator") {
                let s = unescape_zeek(s.trim());
                if !s.is_empty() {
                    sep = s;
                }
            } else if is_zeek_fields(line) {
                let mut names: Vec<&str> = line.split(sep.as_str()).skip(1).collect();
                if names.len() < 2 {
                    names = line.split_whitespace().skip(1).collect();
                }
                let pos = |c: &str| names.iter().position(|n| *n == c);
                let (Some(i), Some(t)) = (pos("indicator"), pos("indicator_type")) else {
                    return Err(format!(
                        "{}:{n}: the #fields header needs the columns indicator and indicator_type",
                        p.origin
                    ));
                };
                cols = Some((i, t, pos("meta.desc"), pos("meta.source")));
            }
            continue;
        }
        let Some((ic, tc, dc, sc)) = cols else {
            p.bad(n, "data line before the #fields header");
            continue;
        };
        let cells: Vec<&str> = line.split(sep.as_str()).collect();
        let (Some(ind), Some(ty)) = (cells.get(ic), cells.get(tc)) else {
            p.bad(
                n,
                format!(
                    "expected the indicator and indicator_type fields, found {} fields",
                    cells.len()
                ),
            );
            continue;
        };
        let (ind, ty) = (ind.trim(), ty.trim());
        let description = [dc, sc]
            .into_iter()
            .flatten()
            .filter_map(|c| cells.get(c).map(|s| s.trim()))
            .find(|s| !unset(s));
        let parsed = match ty {
            "Intel::ADDR" => match ind.parse::<IpAddr>() {
                Ok(_) => Indicator::parse(ind),
                Err(_) => Err(format!("{ind:?} is not an IP address (Intel::ADDR)")),
            },
            "Intel::SUBNET" => Indicator::parse(ind).and_then(|i| match i {
                Indicator::Domain(_) => Err(format!("{ind:?} is not a subnet (Intel::SUBNET)")),
                i => Ok(i),
            }),
            "Intel::DOMAIN" => normalize_domain(ind)
                .map(Indicator::Domain)
                .ok_or_else(|| format!("{ind:?} is not a domain name (Intel::DOMAIN)")),
            t if t.starts_with("Intel::") => {
                p.skipped += 1;
                continue;
            }
            t => Err(format!("unknown indicator_type {t:?}")),
        };
        match parsed {
            Ok(i) => p.push(i, ind, n, description)?,
            Err(e) => p.bad(n, e),
        }
    }
    Ok(())
}

/// Parses a whole feed. `Err` refuses the whole feed (over the entry cap, or a header that
/// names no indicator column); malformed lines are only counted and reported.
fn parse_feed(
    origin: &str,
    data: &[u8],
    format: FeedFormat,
    csv_name: bool,
    max_entries: usize,
) -> Result<Parsed, String> {
    let format = match format {
        FeedFormat::Auto => detect(data, csv_name),
        f => f,
    };
    let mut p = Parser::new(origin, max_entries);
    match format {
        FeedFormat::Auto | FeedFormat::List => parse_list(&mut p, data)?,
        FeedFormat::Hosts => parse_hosts(&mut p, data)?,
        FeedFormat::Csv => parse_csv(&mut p, data)?,
        FeedFormat::Zeek => parse_zeek(&mut p, data)?,
    }
    Ok(p.finish(format))
}

// ---------------------------------------------------------------------------------------
// Sources

fn too_big(origin: &str, cap: u64) -> String {
    format!("{origin} is larger than max_feed_bytes = {cap} bytes; the whole feed is refused")
}

fn read_file_capped(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    let origin = path.display().to_string();
    let f = fs::File::open(path).map_err(|e| format!("cannot read {origin}: {e}"))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read {origin}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("cannot read {origin}: not a regular file"));
    }
    if meta.len() > cap {
        return Err(too_big(&origin, cap));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {origin}: {e}"))?;
    if buf.len() as u64 > cap {
        return Err(too_big(&origin, cap));
    }
    Ok(buf)
}

/// GET with the agent's timeouts; the cap is checked against `Content-Length` first and then
/// enforced while the body streams in (a body without a length cannot exhaust memory).
fn fetch_capped(agent: &ureq::Agent, url: &str, cap: u64) -> Result<Vec<u8>, String> {
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("cannot fetch {url}: HTTP {status}"));
    }
    if resp.body().content_length().is_some_and(|l| l > cap) {
        return Err(too_big(url, cap));
    }
    let mut buf = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if buf.len() as u64 > cap {
        return Err(too_big(url, cap));
    }
    Ok(buf)
}

/// Regular (or unreadable) non-hidden entries of `dir`, sorted by name; subdirectories are
/// skipped. An entry whose type cannot be read (a dangling link) is listed so that its failure
/// is reported.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

fn format_time(ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

// ---------------------------------------------------------------------------------------
// Reports

/// What became of one feed in a reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedStatus {
    /// A new version was loaded.
    Loaded,
    /// Loading failed; the version loaded at `loaded_at_ns` stays in force.
    Kept { loaded_at_ns: u64, error: String },
    /// Loading failed and there was no previous version.
    Failed { error: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedReport {
    pub name: String,
    pub source: String,
    /// Format parsed (or of the kept version); `Auto` when nothing was parsed.
    pub format: FeedFormat,
    pub status: FeedStatus,
    /// Entries of the version in force (0 when failed).
    pub entries: usize,
    pub malformed: usize,
    pub skipped: usize,
}

/// The outcome of one reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub at_ns: u64,
    pub feeds: Vec<FeedReport>,
    /// `FILE:LINE: problem`, one per malformed line (at most [`MAX_PROBLEMS_PER_FEED`] per
    /// feed, then one line with the count of the others).
    pub problems: Vec<String>,
    /// One line per failure: `feed X: kept the version loaded at T: <error>`,
    /// `feed X: not loaded: <error>`, or a directory that cannot be listed.
    pub failures: Vec<String>,
    /// Distinct indicators in the new snapshot.
    pub indicators: usize,
    pub duplicates: usize,
}

impl ReloadReport {
    /// No failures and no malformed lines.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty() && self.problems.is_empty()
    }
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in self.failures.iter().chain(&self.problems) {
            writeln!(f, "{l}")?;
        }
        let loaded = self
            .feeds
            .iter()
            .filter(|r| r.status == FeedStatus::Loaded)
            .count();
        write!(
            f,
            "intel: {} feeds ({} loaded, {} failed), {} indicators, {} duplicates, {} malformed lines",
            self.feeds.len(),
            loaded,
            self.feeds.len() - loaded,
            self.indicators,
            self.duplicates,
            self.feeds.iter().map(|r| r.malformed).sum::<usize>()
        )
    }
}

// ---------------------------------------------------------------------------------------
// Store

/// The feeds in force and how to reload them. Shareable between threads: readers take
/// [`IntelStore::snapshot`] (an `Arc` clone) and keep using it while a reload runs.
pub struct IntelStore {
    config: IntelConfig,
    allow: Arc<Allowlist>,
    http: ureq::Agent,
    current: Mutex<Arc<IntelSnapshot>>,
    /// Time of the last reload attempt; also serialises reloads.
    last_reload: Mutex<Option<u64>>,
}

impl fmt::Debug for IntelStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntelStore")
            .field("config", &self.config)
            .field(
                "current",
                &*self.current.lock().unwrap_or_else(PoisonError::into_inner),
            )
            .finish()
    }
}

struct Outcome<'a> {
    key: SourceKey,
    name: String,
    source: String,
    result: Result<Parsed, String>,
    prev: &'a IntelSnapshot,
}

impl IntelStore {
    /// A store with an empty snapshot; nothing is loaded until [`reload`](Self::reload) or
    /// [`maybe_refresh`](Self::maybe_refresh). Fails when the configuration does not validate.
    pub fn new(config: IntelConfig) -> Result<IntelStore, String> {
        config.validate().map_err(|e| e.join("\n"))?;
        let allow = Arc::new(Allowlist::parse(&config.allow).map_err(|e| e.join("\n"))?);
        let timeout = config.fetch_timeout.0;
        let http: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .http_status_as_error(false)
            .max_redirects(5)
            .user_agent(concat!("sensor-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let empty = IntelSnapshot::build(Vec::new(), allow.clone(), 0);
        Ok(IntelStore {
            config,
            allow,
            http,
            current: Mutex::new(Arc::new(empty)),
            last_reload: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &IntelConfig {
        &self.config
    }

    /// The snapshot in force (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<IntelSnapshot> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn match_ip(&self, ip: IpAddr) -> Option<Match> {
        self.snapshot().match_ip(ip)
    }

    pub fn match_domain(&self, name: &str) -> Option<Match> {
        self.snapshot().match_domain(name)
    }

    /// Reloads when `refresh` has passed since the last attempt (or nothing was ever loaded).
    /// Call it from the poll loop; it blocks for as long as the reload takes (URL feeds are
    /// bounded by `fetch_timeout` each).
    pub fn maybe_refresh(&self, now_ns: u64) -> Option<ReloadReport> {
        let guard = self
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = match *guard {
            None => true,
            Some(last) => now_ns.saturating_sub(last) >= self.config.refresh.as_nanos(),
        };
        due.then(|| self.reload_locked(guard, now_ns))
    }

    /// Loads every source, builds a new snapshot and swaps it in. Sources that fail keep their
    /// previous version; every failure and malformed line is in the report (and logged).
    pub fn reload(&self, now_ns: u64) -> ReloadReport {
        let guard = self
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.reload_locked(guard, now_ns)
    }

    fn reload_locked(&self, mut guard: MutexGuard<'_, Option<u64>>, now_ns: u64) -> ReloadReport {
        *guard = Some(now_ns);
        let prev = self.snapshot();
        let cap = self.config.max_feed_bytes;
        let max_entries = self.config.max_entries_per_feed;
        let mut report = ReloadReport {
            at_ns: now_ns,
            ..ReloadReport::default()
        };
        let mut feeds: Vec<Arc<LoadedFeed>> = Vec::new();

        if let Some(dir) = &self.config.directory {
            let listed = list_dir(dir);
            let names: Vec<String> = match &listed {
                Ok(files) => files.iter().map(|(n, _)| n.clone()).collect(),
                Err(_) => Vec::new(),
            };
            for (name, path) in listed.as_ref().map(|v| v.as_slice()).unwrap_or(&[]) {
                let source = path.display().to_string();
                let csv_name = name.to_ascii_lowercase().ends_with(".csv");
                let result = read_file_capped(path, cap).and_then(|data| {
                    parse_feed(&source, &data, FeedFormat::Auto, csv_name, max_entries)
                });
                self.settle(
                    Outcome {
                        key: SourceKey::File(name.clone()),
                        name: name.clone(),
                        source,
                        result,
                        prev: &prev,
                    },
                    now_ns,
                    &mut feeds,
                    &mut report,
                );
            }
            // Files of the previous snapshot that are gone (deleted, or the directory cannot
            // be listed) keep their previous version.
            let dir_error = listed.as_ref().err();
            for old in prev.feeds.iter() {
                let SourceKey::File(n) = &old.key else {
                    continue;
                };
                if names.contains(n) {
                    continue;
                }
                let error = match dir_error {
                    Some(e) => e.clone(),
                    None => format!("{} is no longer in {}", old.source, dir.display()),
                };
                self.settle(
                    Outcome {
                        key: old.key.clone(),
                        name: n.clone(),
                        source: old.source.clone(),
                        result: Err(error),
                        prev: &prev,
                    },
                    now_ns,
                    &mut feeds,
                    &mut report,
                );
            }
            if let Err(e) = &listed {
                if !prev
                    .feeds
                    .iter()
                    .any(|f| matches!(f.key, SourceKey::File(_)))
                {
                    let line = format!("intel directory: {e}");
                    log::warn!("{line}");
                    report.failures.push(line);
                }
            }
            // Only file feeds so far: kept ones go back to file-name order, which decides
            // which feed reports an indicator listed by several.
            feeds.sort_by(|a, b| a.name.cmp(&b.name));
            report.feeds.sort_by(|a, b| a.name.cmp(&b.name));
        }

        for u in &self.config.urls {
            let result = fetch_capped(&self.http, &u.url, cap)
                .and_then(|data| parse_feed(&u.url, &data, u.format, false, max_entries));
            self.settle(
                Outcome {
                    key: SourceKey::Url(u.name.clone()),
                    name: u.name.clone(),
                    source: u.url.clone(),
                    result,
                    prev: &prev,
                },
                now_ns,
                &mut feeds,
                &mut report,
            );
        }

        let snap = IntelSnapshot::build(feeds, self.allow.clone(), now_ns);
        report.indicators = snap.len();
        report.duplicates = snap.duplicates;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(snap);
        log::info!("{}", report.to_string().lines().last().unwrap_or_default());
        report
    }

    fn settle(
        &self,
        o: Outcome<'_>,
        now_ns: u64,
        feeds: &mut Vec<Arc<LoadedFeed>>,
        report: &mut ReloadReport,
    ) {
        match o.result {
            Ok(p) => {
                report.problems.extend(p.problems);
                report.feeds.push(FeedReport {
                    name: o.name.clone(),
                    source: o.source.clone(),
                    format: p.format,
                    status: FeedStatus::Loaded,
                    entries: p.entries.len(),
                    malformed: p.malformed,
                    skipped: p.skipped,
                });
                feeds.push(Arc::new(LoadedFeed {
                    name: o.name,
                    source: o.source,
                    format: p.format,
                    loaded_at_ns: now_ns,
                    entries: p.entries,
                    malformed: p.malformed,
                    skipped: p.skipped,
                    key: o.key,
                }));
            }
            Err(error) => match o.prev.feed_by_key(&o.key) {
                Some(old) => {
                    let line = format!(
                        "feed {}: kept the version loaded at {}: {error}",
                        o.name,
                        format_time(old.loaded_at_ns)
                    );
                    log::warn!("{line}");
                    report.failures.push(line);
                    report.feeds.push(FeedReport {
                        name: o.name,
                        source: o.source,
                        format: old.format,
                        status: FeedStatus::Kept {
                            loaded_at_ns: old.loaded_at_ns,
                            error,
                        },
                        entries: old.entries.len(),
                        malformed: old.malformed,
                        skipped: old.skipped,
                    });
                    feeds.push(old.clone());
                }
                None => {
                    let line = format!("feed {}: not loaded: {error}", o.name);
                    log::warn!("{line}");
                    report.failures.push(line);
                    report.feeds.push(FeedReport {
                        name: o.name,
                        source: o.source,
                        format: FeedFormat::Auto,
                        status: FeedStatus::Failed { error },
                        entries: 0,
                        malformed: 0,
                        skipped: 0,
                    });
                }
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::enrich::intel::UrlFeed;
    use crate::units::HumanDuration;
    use std::{
        io::Write,
        net::{SocketAddr, TcpListener},
        sync::atomic::{AtomicUsize, Ordering},
        thread,
        time::Instant,
    };

    /// A directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "sensor-intel-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }

        pub(crate) fn write(&self, name: &str, content: &str) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, content).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const T1: u64 = 1_700_000_000_000_000_000;
    const T2: u64 = T1 + 3_600_000_000_000;

    fn parse(data: &str, format: FeedFormat) -> Parsed {
        parse_feed("feed.txt", data.as_bytes(), format, false, 1000).unwrap()
    }

    fn texts(p: &Parsed) -> Vec<(&str, u32, Option<&str>)> {
        p.entries
            .iter()
            .map(|e| (&*e.text, e.line, e.description.as_deref()))
            .collect()
    }

    fn store_for(dir: &TempDir, tweak: impl FnOnce(&mut IntelConfig)) -> IntelStore {
        let mut c = IntelConfig {
            directory: Some(dir.path().to_path_buf()),
            ..IntelConfig::default()
        };
        tweak(&mut c);
        IntelStore::new(c).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn intel_feed_plain_list_with_comments() {
        let p = parse(
            "# pools\n; also a comment\n\npool.example.com\n192.0.2.1\n198.51.100.0/24   # pool subnet\r\n\
             2001:db8::/32\n*.wild.example.\nMiXeD.Example.ORG ; eu pool\n   \n",
            FeedFormat::Auto,
        );
        assert_eq!(p.format, FeedFormat::List);
        assert_eq!(p.malformed, 0, "{:?}", p.problems);
        assert_eq!(
            texts(&p),
            vec![
                ("pool.example.com", 4, None),
                ("192.0.2.1", 5, None),
                ("198.51.100.0/24", 6, Some("pool subnet")),
                ("2001:db8::/32", 7, None),
                ("*.wild.example.", 8, None),
                ("MiXeD.Example.ORG", 9, Some("eu pool")),
            ]
        );
        assert_eq!(
            p.entries[5].indicator,
            Indicator::Domain("mixed.example.org".into())
        );
        assert_eq!(
            p.entries[4].indicator,
            Indicator::Domain("wild.example".into())
        );
        assert_eq!(
            p.entries[2].indicator,
            Indicator::V4 {
                net: 0xc633_6400,
                prefix: 24
            }
        );
    }

    #[test]
    fn intel_feed_hosts_file() {
        let p = parse(
            "# blocklist\n127.0.0.1 localhost\n0.0.0.0 pool.example.com\n\
             127.0.0.1 a.example B.example c.example # miners\n::1 ip6-localhost\n0.0.0.0\n",
            FeedFormat::Auto,
        );
        assert_eq!(p.format, FeedFormat::Hosts);
        assert_eq!(
            texts(&p),
            vec![
                ("pool.example.com", 3, None),
                ("a.example", 4, Some("miners")),
                ("B.example", 4, Some("miners")),
                ("c.example", 4, Some("miners")),
            ]
        );
        assert_eq!(p.skipped, 2);
        assert_eq!(p.malformed, 1);
        assert_eq!(p.problems, vec!["feed.txt:6: address without host names"]);
    }

    #[test]
    fn intel_feed_csv_with_header() {
        let p = parse(
            "# exported\nindicator,type,Description\npool.example,domain,\"XMR pool, EU\"\n\
             203.0.113.5,ip,\"quoted \"\"x\"\"\"\n,ip,empty\nbad value,ip,x\n\n\"unterminated,ip,x\n",
            FeedFormat::Auto,
        );
        assert_eq!(p.format, FeedFormat::Csv);
        assert_eq!(
            texts(&p),
            vec![
                ("pool.example", 3, Some("XMR pool, EU")),
                ("203.0.113.5", 4, Some("quoted \"x\"")),
            ]
        );
        assert_eq!(p.skipped, 1);
        assert_eq!(p.malformed, 2, "{:?}", p.problems);
        assert!(
            p.problems[0].starts_with("feed.txt:6: "),
            "{:?}",
            p.problems
        );
        assert!(
            p.problems[1].starts_with("feed.txt:8: unterminated"),
            "{:?}",
            p.problems
        );

        // abuse.ch style: the header is a comment; two indicator columns.
        let p = parse(
            "# \"first_seen\",\"dst_ip\",\"hostname\",\"comment\"\n\"2024-01-01\",\"192.0.2.7\",\"pool.x.example\",\"c2\"\n",
            FeedFormat::Auto,
        );
        assert_eq!(p.format, FeedFormat::Csv);
        assert_eq!(
            texts(&p),
            vec![
                ("192.0.2.7", 2, Some("c2")),
                ("pool.x.example", 2, Some("c2"))
            ]
        );

        // Declared CSV without an indicator column: the whole feed is refused.
        let e = parse_feed("f.csv", b"a,b\n1,2\n", FeedFormat::Csv, false, 10)
            .err()
            .unwrap();
        assert!(e.starts_with("f.csv:1: the CSV header row"), "{e}");
        // A .csv name means CSV.
        assert_eq!(detect(b"foo\n", true), FeedFormat::Csv);
    }

    #[test]
    fn intel_feed_zeek_intel() {
        let data = "#separator \\x09\n#path\tintel\n\
            #fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\n\
            192.0.2.10\tIntel::ADDR\tsrcA\tpool node\n\
            198.51.100.0/25\tIntel::SUBNET\tsrcA\t-\n\
            Pool.Zeek.Example\tIntel::DOMAIN\tsrcB\tstratum\n\
            http://x.example/y\tIntel::URL\tsrcA\t-\n\
            abc\tIntel::FILE_HASH\tsrcA\t-\n\
            1.2.3\tIntel::ADDR\tsrcA\t-\n\
            x\tBogus\tsrcA\t-\n\
            short\n";
        let p = parse(data, FeedFormat::Auto);
        assert_eq!(p.format, FeedFormat::Zeek);
        assert_eq!(
            texts(&p),
            vec![
                ("192.0.2.10", 4, Some("pool node")),
                ("198.51.100.0/25", 5, Some("srcA")),
                ("Pool.Zeek.Example", 6, Some("stratum")),
            ]
        );
        assert_eq!(p.skipped, 2);
        assert_eq!(p.malformed, 3, "{:?}", p.problems);
        assert!(p.problems[0].starts_with("feed.txt:9: "));
        assert!(p.problems[1].starts_with("feed.txt:10: unknown indicator_type"));
        assert!(p.problems[2].starts_with("feed.txt:11: "));
        let e = parse_feed("z", b"#fields\tfoo\tbar\n", FeedFormat::Zeek, false, 10)
            .err()
            .unwrap();
        assert!(e.contains("indicator and indicator_type"), "{e}");
    }

    #[test]
    fn intel_malformed_lines_reported_with_file_and_line_and_skipped() {
        let dir = TempDir::new("malformed");
        let path = dir.write(
            "pools.txt",
            "pool.example\nnot a domain at all\n300.1.2.3/8\n10.0.0.0/33\nsingle\n192.0.2.5\n",
        );
        let store = store_for(&dir, |_| {});
        let r = store.reload(T1);
        let p = path.display();
        assert_eq!(
            r.problems,
            vec![
                format!("{p}:2: expected one IP address, CIDR or domain name, found 5 fields"),
                format!("{p}:3: \"300.1.2.3/8\" is not a CIDR (address/prefix length)"),
                format!("{p}:4: \"10.0.0.0/33\": prefix length must be 0..=32"),
                format!("{p}:5: \"single\" is not an IP address, CIDR or domain name"),
            ]
        );
        assert!(r.failures.is_empty());
        assert_eq!(r.feeds[0].malformed, 4);
        assert_eq!(r.feeds[0].entries, 2);
        assert!(store.match_ip(ip("192.0.2.5")).is_some());
        assert!(store.match_domain("pool.example").is_some());

        // Listing stops after MAX_PROBLEMS_PER_FEED; the rest is counted.
        let many = "bad line here\n".repeat(MAX_PROBLEMS_PER_FEED + 5);
        dir.write("pools.txt", &many);
        let r = store.reload(T2);
        assert_eq!(r.feeds[0].malformed, MAX_PROBLEMS_PER_FEED + 5);
        assert_eq!(r.problems.len(), MAX_PROBLEMS_PER_FEED + 1);
        assert_eq!(
            r.problems.last().unwrap(),
            &format!("{p}: 5 more malformed lines not listed")
        );
    }

    #[test]
    fn intel_oversize_feed_refused_naming_the_cap() {
        let dir = TempDir::new("oversize");
        dir.write("big.txt", &"pool.example\n".repeat(10));
        dir.write("small.txt", "192.0.2.1\n");
        let store = store_for(&dir, |c| c.max_feed_bytes = 64);
        let r = store.reload(T1);
        assert_eq!(r.failures.len(), 1, "{r}");
        let f = &r.failures[0];
        assert!(f.starts_with("feed big.txt: not loaded: "), "{f}");
        assert!(f.contains("max_feed_bytes = 64 bytes"), "{f}");
        assert!(matches!(r.feeds[0].status, FeedStatus::Failed { .. }));
        assert_eq!(r.feeds[1].status, FeedStatus::Loaded);
        assert!(store.match_domain("pool.example").is_none());
        assert!(store.match_ip(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn intel_entry_cap_refuses_feed() {
        let dir = TempDir::new("entrycap");
        dir.write("a.txt", "192.0.2.1\n192.0.2.2\n192.0.2.3\n192.0.2.4\n");
        let store = store_for(&dir, |c| c.max_entries_per_feed = 3);
        let r = store.reload(T1);
        assert!(
            r.failures[0].contains("more than max_entries_per_feed = 3 entries"),
            "{r}"
        );
        assert!(store.snapshot().is_empty());
    }

    #[test]
    fn intel_failed_feed_keeps_previous_version() {
        let dir = TempDir::new("keep");
        dir.write("a.txt", "pool-a.example\n");
        let b = dir.write("b.txt", "192.0.2.0/24\n");
        let c = dir.write("c.txt", "198.51.100.1\n");
        let store = store_for(&dir, |c| c.max_feed_bytes = 1000);
        let r = store.reload(T1);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.indicators, 3);

        // a deleted, b a dangling link (unreadable), c over the cap; d new.
        fs::remove_file(dir.path().join("a.txt")).unwrap();
        fs::remove_file(&b).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &b).unwrap();
        fs::write(&c, "198.51.100.2\n".repeat(200)).unwrap();
        dir.write("d.txt", "203.0.113.9\n");
        let r = store.reload(T2);
        let t1 = "2023-11-14T22:13:20Z";
        assert_eq!(r.failures.len(), 3, "{r}");
        assert!(r.failures.iter().any(|f| f
            .starts_with(&format!("feed a.txt: kept the version loaded at {t1}: "))
            && f.contains("no longer in")));
        assert!(r.failures.iter().any(|f| f.starts_with(&format!(
            "feed b.txt: kept the version loaded at {t1}: cannot read"
        ))));
        assert!(r.failures.iter().any(|f| f
            .starts_with(&format!("feed c.txt: kept the version loaded at {t1}: "))
            && f.contains("max_feed_bytes = 1000")));
        let names: Vec<&str> = r.feeds.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt", "c.txt", "d.txt"]);
        assert_eq!(
            r.feeds[0].status,
            FeedStatus::Kept {
                loaded_at_ns: T1,
                error: format!(
                    "{} is no longer in {}",
                    dir.path().join("a.txt").display(),
                    dir.path().display()
                )
            }
        );
        let m = store.match_domain("x.pool-a.example").unwrap();
        assert_eq!(m.loaded_at_ns, T1);
        assert_eq!(m.age(T2), Duration::from_secs(3600));
        assert!(store.match_ip(ip("192.0.2.77")).is_some());
        assert!(store.match_ip(ip("198.51.100.1")).is_some());
        assert!(store.match_ip(ip("198.51.100.2")).is_none());
        assert_eq!(store.match_ip(ip("203.0.113.9")).unwrap().loaded_at_ns, T2);

        // Fixed: new versions replace the kept ones.
        dir.write("a.txt", "pool-a2.example\n");
        fs::write(&c, "198.51.100.2\n").unwrap();
        let r = store.reload(T2 + 1);
        assert_eq!(r.failures.len(), 1, "{r}");
        assert!(store.match_domain("pool-a.example").is_none());
        assert!(store.match_domain("pool-a2.example").is_some());
        assert!(store.match_ip(ip("198.51.100.2")).is_some());

        // A directory that cannot be listed keeps every file feed.
        let store2 = IntelStore::new(IntelConfig {
            directory: Some(dir.path().join("missing")),
            ..IntelConfig::default()
        })
        .unwrap();
        let r = store2.reload(T1);
        assert_eq!(r.failures.len(), 1);
        assert!(
            r.failures[0].starts_with("intel directory: cannot list"),
            "{r}"
        );
    }

    #[test]
    fn intel_atomic_swap_readers_keep_old_snapshot() {
        let dir = TempDir::new("swap");
        dir.write("a.txt", "192.0.2.1\n");
        let store = store_for(&dir, |_| {});
        store.reload(T1);
        let old = store.snapshot();
        dir.write("a.txt", "192.0.2.2\n");
        store.reload(T2);
        let new = store.snapshot();
        assert!(old.match_ip(ip("192.0.2.1")).is_some());
        assert!(old.match_ip(ip("192.0.2.2")).is_none());
        assert!(new.match_ip(ip("192.0.2.1")).is_none());
        assert!(new.match_ip(ip("192.0.2.2")).is_some());
        assert!(!Arc::ptr_eq(&old, &new));
        // Readers on other threads clone cheaply while a reload runs.
        let store = Arc::new(store);
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let s = store.clone();
                thread::spawn(move || {
                    (0..2000)
                        .filter(|_| {
                            s.snapshot()
                                .match_ip("192.0.2.2".parse().unwrap())
                                .is_some()
                        })
                        .count()
                })
            })
            .collect();
        for t in 0..20 {
            store.reload(T2 + t);
        }
        for r in readers {
            assert_eq!(r.join().unwrap(), 2000);
        }
    }

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
        let store = store_for(&dir, |_| {});
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
    fn intel_directory_sorted_non_recursive_hidden_skipped() {
        let dir = TempDir::new("listing");
        dir.write("b.list", "pool.example # from b\n");
        dir.write("a.list", "pool.example # from a\n");
        dir.write(".hidden", "hidden.example\n");
        fs::create_dir(dir.path().join("sub")).unwrap();
        dir.write("sub/x.txt", "sub.example\n");
        let store = store_for(&dir, |_| {});
        let r = store.reload(T1);
        let names: Vec<&str> = r.feeds.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.list", "b.list"]);
        assert_eq!(
            store
                .match_domain("pool.example")
                .unwrap()
                .description
                .as_deref(),
            Some("from a")
        );
        assert!(store.match_domain("hidden.example").is_none());
        assert!(store.match_domain("sub.example").is_none());
    }

    #[test]
    fn intel_maybe_refresh_follows_interval() {
        let dir = TempDir::new("refresh");
        dir.write("a.txt", "192.0.2.1\n");
        let store = store_for(&dir, |c| c.refresh = HumanDuration::secs(60));
        assert!(store.maybe_refresh(T1).is_some());
        dir.write("a.txt", "192.0.2.2\n");
        assert!(store.maybe_refresh(T1 + 30_000_000_000).is_none());
        assert!(store.match_ip(ip("192.0.2.1")).is_some());
        assert!(store.maybe_refresh(T1 + 60_000_000_000).is_some());
        assert!(store.match_ip(ip("192.0.2.2")).is_some());
        // Time going backwards (a replay) does not reload.
        assert!(store.maybe_refresh(T1).is_none());
    }

    // -----------------------------------------------------------------------------------
    // URL feeds against a tiny loopback server

    enum Reply {
        Fixed {
            status: &'static str,
            body: Vec<u8>,
        },
        /// 200 without a length, body written until the client goes away (bounded).
        Endless,
    }

    const ENDLESS_MAX: u64 = 512 * 1024 * 1024;

    /// Serves `replies` in order, one connection each; returns the bytes of body written.
    fn serve(replies: Vec<Reply>) -> (SocketAddr, thread::JoinHandle<Vec<u64>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let h = thread::spawn(move || {
            let mut written = Vec::new();
            for reply in replies {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut stream = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(_) if Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => return written,
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                match reply {
                    Reply::Fixed { status, body } => {
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(&body);
                        written.push(body.len() as u64);
                    }
                    Reply::Endless => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                        );
                        let chunk = "192.0.2.1\n".repeat(6554).into_bytes();
                        let mut n = 0u64;
                        while n < ENDLESS_MAX {
                            match stream.write_all(&chunk) {
                                Ok(()) => n += chunk.len() as u64,
                                Err(_) => break,
                            }
                        }
                        written.push(n);
                    }
                }
            }
            written
        });
        (addr, h)
    }

    fn url_store(url: String, tweak: impl FnOnce(&mut IntelConfig)) -> IntelStore {
        let mut c = IntelConfig {
            urls: vec![UrlFeed {
                name: "remote".into(),
                url,
                format: FeedFormat::Auto,
            }],
            fetch_timeout: HumanDuration::secs(10),
            ..IntelConfig::default()
        };
        tweak(&mut c);
        IntelStore::new(c).unwrap()
    }

    #[test]
    fn intel_url_feed_loads_then_keeps_version_on_http_500() {
        let (addr, server) = serve(vec![
            Reply::Fixed {
                status: "200 OK",
                body: b"0.0.0.0 pool.remote.example\n0.0.0.0 xmr.remote.example # nanopool\n"
                    .to_vec(),
            },
            Reply::Fixed {
                status: "500 Internal Server Error",
                body: b"oops".to_vec(),
            },
        ]);
        let url = format!("http://{addr}/feed.txt");
        let store = url_store(url.clone(), |_| {});
        let r = store.reload(T1);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.feeds[0].format, FeedFormat::Hosts);
        let m = store.match_domain("eu.xmr.remote.example").unwrap();
        assert_eq!(m.feed, "remote");
        assert_eq!(m.source, url);
        assert_eq!(m.line, 2);
        assert_eq!(m.description.as_deref(), Some("nanopool"));

        let r = store.reload(T2);
        assert_eq!(
            r.failures,
            vec![format!(
                "feed remote: kept the version loaded at 2023-11-14T22:13:20Z: cannot fetch {url}: HTTP 500 Internal Server Error"
            )]
        );
        assert!(store.match_domain("pool.remote.example").is_some());
        server.join().unwrap();
    }

    #[test]
    fn intel_url_body_over_cap_refused_while_streaming() {
        let (addr, server) = serve(vec![Reply::Endless]);
        let url = format!("http://{addr}/endless");
        let store = url_store(url.clone(), |c| c.max_feed_bytes = 100_000);
        let started = Instant::now();
        let r = store.reload(T1);
        assert_eq!(
            r.failures,
            vec![format!(
                "feed remote: not loaded: {url} is larger than max_feed_bytes = 100000 bytes; the whole feed is refused"
            )]
        );
        assert!(store.snapshot().is_empty());
        let written = server.join().unwrap();
        // The client stopped reading at the cap: the server never got near its own limit.
        assert!(written[0] < ENDLESS_MAX, "{written:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn intel_url_content_length_over_cap_and_unreachable() {
        let (addr, server) = serve(vec![Reply::Fixed {
            status: "200 OK",
            body: vec![b'x'; 5000],
        }]);
        let store = url_store(format!("http://{addr}/big"), |c| c.max_feed_bytes = 1000);
        let r = store.reload(T1);
        assert!(
            r.failures[0].contains("larger than max_feed_bytes = 1000 bytes"),
            "{r}"
        );
        server.join().unwrap();

        // Nothing listens on a port that was just released.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = url_store(format!("http://127.0.0.1:{port}/"), |_| {});
        let r = store.reload(T1);
        assert!(
            r.failures[0].starts_with("feed remote: not loaded: cannot fetch"),
            "{r}"
        );
    }

    // -----------------------------------------------------------------------------------
    // Performance with 1M entries

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn intel_match_performance_with_1m_entries() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut text = String::with_capacity(24 << 20);
        let mut probes_ip = Vec::new();
        let mut probes_dom = Vec::new();
        for i in 0..1_000_000u32 {
            let r = rng.next();
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
                IpAddr::V4(std::net::Ipv4Addr::from(rng.next() as u32))
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
            snap.v4.levels.len()
        );
    }
}
