//! Plain lists: one IP address, CIDR or domain name per line; `#` and `;` start comments and
//! the comment of an entry's line is its description.
//!
//! # Why it exists
//! The most common feed layout (pool lists, firewall blocklists) and the fallback when
//! nothing else is recognised.
//!
//! # What it must never do
//! - Never take a line with several fields for an entry: a hosts line or a CSV row read as a
//!   list is reported as malformed, not half-read.

use super::{lines, split_comment, Parser};
use crate::enrich::intel::indicator::Indicator;

/// Adds every entry of a plain list to `p`; `Err` only past the entry cap.
pub(super) fn parse(p: &mut Parser, data: &[u8]) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::super::{
        tests::{parse, texts},
        FeedFormat,
    };
    use crate::enrich::intel::indicator::Indicator;

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
}
