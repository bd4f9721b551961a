//! What a feed entry stands for: an IPv4 or IPv6 network, or a domain name, parsed from the
//! text of a feed or of `intel.allow`, with the provenance that a match reports.
//!
//! # Why it exists
//! Every feed format and the allowlist accept the same indicators, and a lookup must normalise
//! a queried name exactly as an entry was normalised; one module keeps both sides of that rule.
//!
//! # What it must never do
//! - Never accept a single-label name (it would match a whole top-level domain) or a
//!   dotted-decimal look-alike as a domain (`1.2.3.999`).
//! - Never keep host bits in a network or store an IPv4-mapped IPv6 network as IPv6: lookups
//!   probe masked IPv4 keys.

use crate::units::excerpt;
use std::{borrow::Cow, net::IpAddr};

use super::prefix::Bits;

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
                .map_err(|_| format!("{} is not a CIDR (address/prefix length)", excerpt(s)))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{}: prefix length must be 0..={max}", excerpt(s)))?;
            return Ok(Self::network(ip, prefix));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            let full = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Self::network(ip, full));
        }
        normalize_domain(s)
            .map(Indicator::Domain)
            .ok_or_else(|| format!("{} is not an IP address, CIDR or domain name", excerpt(s)))
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

/// A queried name in the form entries are stored in (trimmed, no trailing dot, lower case),
/// borrowed when it already is: lookups run per flow and must not allocate for every name.
pub(super) fn lower_query(name: &str) -> Option<Cow<'_, str>> {
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
pub(super) fn walk_labels<T>(name: &str, mut f: impl FnMut(&str) -> Option<T>) -> Option<T> {
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
