//! Hosts files: `0.0.0.0 pool.example other.example`. The names are the indicators; the
//! address (a sinkhole such as `0.0.0.0` or `127.0.0.1`) is not.
//!
//! # Why it exists
//! DNS blocklists of mining pools are published in the hosts-file layout so that they can be
//! dropped into `/etc/hosts`; reading them as they are saves operators a conversion.
//!
//! # What it must never do
//! - Never take the address of a hosts line for an indicator: it is the sinkhole, and
//!   listing it would flag every flow to `127.0.0.1`.
//! - Never take `localhost` and the other names of the local host for indicators.

use crate::units::excerpt;
use std::net::IpAddr;

use super::{lines, split_comment, Parser};
use crate::enrich::intel::indicator::{normalize_domain, Indicator};

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

/// Adds every host name of a hosts file to `p`; `Err` only past the entry cap.
pub(super) fn parse(p: &mut Parser, data: &[u8]) -> Result<(), String> {
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
                format!(
                    "expected an address followed by host names, found {}",
                    excerpt(addr)
                ),
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
                None => p.bad(n, format!("{} is not a domain name", excerpt(h))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{
        tests::{parse, texts},
        FeedFormat,
    };

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
}
