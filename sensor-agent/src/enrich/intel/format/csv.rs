//! CSV feeds: a header row names the indicator column(s), and a description column if any;
//! every following row adds the indicators of its row. The header may be a `#` comment (as in
//! abuse.ch exports). Cells are read by the `csv` crate (RFC 4180 quoting) and trimmed.
//!
//! # Why it exists
//! Threat-intelligence platforms and spreadsheets export CSV with headers of their own
//! choosing; the indicator column is found by name so those exports load unchanged.
//!
//! # What it must never do
//! - Never guess an indicator column: a header that names none refuses the whole feed, with
//!   the accepted names in the error, rather than reading the wrong column.
//! - Never let a row run on into the next line: a row is one line, so a quote left open is
//!   that line's problem only, and every problem names its line.

use crate::units::excerpt;
use std::io::Read as _;

use ::csv::{ReaderBuilder, StringRecord, Terminator};

use super::{lines, Parser};
use crate::enrich::intel::indicator::Indicator;

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

/// Splits one line into its cells (RFC 4180 quoting within the line), trimmed.
fn split(line: &str) -> Result<Vec<String>, &'static str> {
    // The csv crate, like most CSV readers, lets a quote that is never closed run to the end
    // of the input. The line is given a `\n` and only `\n` ends a record (a stray `\r` stays
    // in its cell): a field that swallowed the `\n` is a quote left open.
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .terminator(Terminator::Any(b'\n'))
        .buffer_capacity(line.len() + 1)
        .from_reader(line.as_bytes().chain(&b"\n"[..]));
    let mut record = StringRecord::new();
    // The reader skips an empty line; it is one empty cell.
    if !reader
        .read_record(&mut record)
        .map_err(|_| "not a CSV row")?
    {
        return Ok(vec![String::new()]);
    }
    if record.iter().any(|cell| cell.contains('\n')) {
        return Err("unterminated quoted field");
    }
    Ok(record.iter().map(|cell| cell.trim().to_string()).collect())
}

/// The indicator columns and the description column of a CSV header, if it has an
/// indicator column.
fn header_columns(cells: &[String]) -> Option<(Vec<usize>, Option<usize>)> {
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

/// Whether `s` is a CSV header row naming an indicator column (format detection).
pub(super) fn looks_like_header(s: &str) -> bool {
    s.contains(',') && split(s).is_ok_and(|c| header_columns(&c).is_some())
}

/// Adds the indicators of every row of a CSV feed to `p`; `Err` when the header row names no
/// indicator column or cannot be read, or past the entry cap.
pub(super) fn parse(p: &mut Parser, data: &[u8]) -> Result<(), String> {
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
                Some(c) if looks_like_header(c.trim()) => c.trim(),
                Some(_) => continue,
                None => t,
            };
            let cells = split(body).map_err(|e| format!("{}:{n}: header row: {e}", p.origin))?;
            let Some((ind, desc)) = header_columns(&cells) else {
                let expected: Vec<&str> = INDICATOR_COLUMNS
                    .iter()
                    .flat_map(|g| g.iter().copied())
                    .collect();
                return Err(format!(
                    "{}:{n}: the CSV header row {} has no indicator column (expected one of {})",
                    p.origin,
                    excerpt(&cells.join(",")),
                    expected.join(", ")
                ));
            };
            header = Some((ind, desc, cells.len()));
            continue;
        };
        if t.starts_with('#') {
            continue;
        }
        let cells = match split(line) {
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

#[cfg(test)]
mod tests {
    use super::super::{
        detect, parse_feed,
        tests::{parse, texts},
        FeedFormat,
    };
    use super::split;

    /// What the hand-written splitter this replaced did with each kind of cell.
    #[test]
    fn intel_csv_split_cells_as_before() {
        let cells = |l: &str| split(l).map(|c| c.join("|"));
        assert_eq!(cells(" a , b ,c").as_deref(), Ok("a|b|c"));
        assert_eq!(
            cells("\"x, y\",\"q \"\"z\"\"\"").as_deref(),
            Ok("x, y|q \"z\"")
        );
        assert_eq!(cells("\"ab\" ,cd\"e").as_deref(), Ok("ab|cd\"e"));
        assert_eq!(cells("a\rb,,").as_deref(), Ok("a\rb||"));
        assert_eq!(cells("").as_deref(), Ok(""));
        assert_eq!(split("a,\"open"), Err("unterminated quoted field"));
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
}
