//! Zeek intel framework files: tab-separated (or the `#separator` declared), with a `#fields`
//! header naming at least `indicator` and `indicator_type`.
//!
//! # Why it exists
//! Sites that run Zeek keep their intelligence in its intel format; the sensor reads the same
//! files so one list serves both.
//!
//! # What it must never do
//! - Never take an indicator of a type other than `Intel::ADDR`, `Intel::SUBNET` and
//!   `Intel::DOMAIN` (URLs, hashes, ...): they are skipped and counted, not parsed as names.
//! - Never take an address for a subnet entry or the reverse: the declared type must agree
//!   with the text.

use crate::units::excerpt;
use std::net::IpAddr;

use super::{lines, Parser};
use crate::enrich::intel::indicator::{normalize_domain, Indicator};

/// Whether `t` is Zeek's `#fields` header line.
pub(super) fn is_fields_line(t: &str) -> bool {
    t.strip_prefix("#fields")
        .is_some_and(|r| r.starts_with(['\t', ' ']))
}

/// Zeek's `\xHH` escapes in `#separator` lines.
fn unescape(s: &str) -> String {
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

/// Adds every address, subnet and domain of a Zeek intel file to `p`; `Err` when the `#fields`
/// header lacks the indicator columns, or past the entry cap.
pub(super) fn parse(p: &mut Parser, data: &[u8]) -> Result<(), String> {
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
                let s = unescape(s.trim());
                if !s.is_empty() {
                    sep = s;
                }
            } else if is_fields_line(line) {
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
                Err(_) => Err(format!(
                    "{} is not an IP address (Intel::ADDR)",
                    excerpt(ind)
                )),
            },
            "Intel::SUBNET" => Indicator::parse(ind).and_then(|i| match i {
                Indicator::Domain(_) => {
                    Err(format!("{} is not a subnet (Intel::SUBNET)", excerpt(ind)))
                }
                i => Ok(i),
            }),
            "Intel::DOMAIN" => normalize_domain(ind)
                .map(Indicator::Domain)
                .ok_or_else(|| format!("{} is not a domain name (Intel::DOMAIN)", excerpt(ind))),
            t if t.starts_with("Intel::") => {
                p.skipped += 1;
                continue;
            }
            t => Err(format!("unknown indicator_type {}", excerpt(t))),
        };
        match parsed {
            Ok(i) => p.push(i, ind, n, description)?,
            Err(e) => p.bad(n, e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{
        parse_feed,
        tests::{parse, texts},
        FeedFormat,
    };

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
}
