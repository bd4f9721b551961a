//! Shared helpers for the integration tests: frame builders, capture writers and access to
//! the real kernel datapath.

pub mod agent;
pub mod alarms;
pub mod browser;
pub mod captures;
pub mod flowlogs;
pub mod frames;
pub mod kafka;
pub mod kernel;
pub mod lab;
pub mod netns;
pub mod pcap;
pub mod rsyslog;
pub mod session;
pub mod showcase;
pub mod tls;
pub mod tmux;
pub mod tunnels;
pub mod wait;

/// A count written `500`, `100k` or `10M` (k = 1,000, M = 1,000,000), for benchmark flags.
pub fn parse_count(s: &str) -> anyhow::Result<usize> {
    use anyhow::Context;
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('k') | Some('K') => (&s[..s.len() - 1], 1_000),
        Some('M') | Some('m') => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    let n = num
        .parse::<usize>()
        .with_context(|| format!("count {s:?}: expected a number such as 500, 100k or 10M"))?;
    n.checked_mul(mul)
        .with_context(|| format!("count {s:?} is too large"))
}
