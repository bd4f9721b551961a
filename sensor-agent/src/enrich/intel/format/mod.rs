//! Feed formats: which one a feed is written in, and the line reader and entry collector the
//! parsers of every format share. One module per format: [`list`], [`hosts`], [`csv`],
//! [`zeek`].
//!
//! # Why it exists
//! Feeds come from many publishers in a handful of layouts; each layout's rules live in its
//! own module, while what every feed must obey (line numbers, UTF-8 per line, the entry cap,
//! the problem list, format detection) is written once here so the formats cannot differ on it.
//!
//! # What it must never do
//! - Never stop at a malformed line: it is counted, listed (up to [`MAX_PROBLEMS_PER_FEED`])
//!   and skipped, so one bad line cannot take a feed away.
//! - Never keep more than `max_entries_per_feed` entries: the whole feed is refused instead,
//!   so a truncated feed is never taken for a complete one.
//! - Never read past the bytes given: the byte cap was enforced by whoever read them.

mod csv;
mod hosts;
mod list;
mod zeek;

use std::{fmt, net::IpAddr};

use serde::Deserialize;

use super::indicator::{Entry, Indicator};

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

/// One feed, parsed.
pub(super) struct Parsed {
    /// The format it was parsed as (never `Auto`).
    pub(super) format: FeedFormat,
    pub(super) entries: Vec<Entry>,
    pub(super) malformed: usize,
    pub(super) skipped: usize,
    /// Networks refused as broader than `intel.min_prefix_v4` / `_v6`.
    pub(super) too_broad: usize,
    /// `ORIGIN:LINE: problem` per listed malformed line, then the count of the others.
    pub(super) problems: Vec<String>,
}

/// Collects the entries of one feed for a format's parser, enforcing the entry cap and keeping
/// the problem list.
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

    /// Counts a malformed line and lists it while the list is short.
    fn bad(&mut self, line: u32, msg: impl fmt::Display) {
        self.malformed += 1;
        if self.problems.len() < MAX_PROBLEMS_PER_FEED {
            let p = format!("{}:{}: {}", self.origin, line, msg);
            log::warn!("{p}");
            self.problems.push(p);
        }
    }

    /// Adds an entry; `Err` (the whole feed refused) past the entry cap.
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

    /// The parsed feed, with one closing line for the problems that were not listed.
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
            too_broad: 0,
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

/// Guesses the format from the comments before the first data line and that line.
fn detect(data: &[u8], csv_name: bool) -> FeedFormat {
    for (_, line) in lines(data) {
        let Ok(line) = line else { continue };
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if zeek::is_fields_line(t) {
            return FeedFormat::Zeek;
        }
        if let Some(c) = t.strip_prefix('#').or_else(|| t.strip_prefix(';')) {
            if csv::looks_like_header(c.trim()) {
                return FeedFormat::Csv;
            }
            continue;
        }
        if csv_name || csv::looks_like_header(t) {
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

/// Parses a whole feed. `Err` refuses the whole feed (over the entry cap, or a header that
/// names no indicator column); malformed lines are only counted and reported.
pub(super) fn parse_feed(
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
        FeedFormat::Auto | FeedFormat::List => list::parse(&mut p, data)?,
        FeedFormat::Hosts => hosts::parse(&mut p, data)?,
        FeedFormat::Csv => csv::parse(&mut p, data)?,
        FeedFormat::Zeek => zeek::parse(&mut p, data)?,
    }
    Ok(p.finish(format))
}

impl Parsed {
    /// Drops the networks broader than the minimum prefix lengths, counts them, and says so
    /// in one line (with the first one) rather than one line per entry.
    pub(super) fn refuse_broad(&mut self, origin: &str, min_v4: u8, min_v6: u8) {
        let before = self.entries.len();
        let mut first = None;
        self.entries.retain(|e| {
            let broad = match e.indicator {
                Indicator::V4 { prefix, .. } => prefix < min_v4,
                Indicator::V6 { prefix, .. } => prefix < min_v6,
                Indicator::Domain(_) => false,
            };
            if broad && first.is_none() {
                first = Some((e.line, e.text.clone()));
            }
            !broad
        });
        self.too_broad = before - self.entries.len();
        if let Some((line, text)) = first {
            let p = format!(
                "{origin}: {} networks broader than intel.min_prefix_v4 = {min_v4} / min_prefix_v6 = {min_v6} refused (the first at line {line}: {})",
                self.too_broad,
                crate::units::excerpt(&text)
            );
            log::warn!("{p}");
            self.problems.push(p);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `data` parsed as `format` from a feed named `feed.txt`, with a cap of 1000 entries.
    pub(in crate::enrich::intel) fn parse(data: &str, format: FeedFormat) -> Parsed {
        parse_feed("feed.txt", data.as_bytes(), format, false, 1000).unwrap()
    }

    /// (text as written, line, description) of every entry.
    pub(in crate::enrich::intel) fn texts(p: &Parsed) -> Vec<(&str, u32, Option<&str>)> {
        p.entries
            .iter()
            .map(|e| (&*e.text, e.line, e.description.as_deref()))
            .collect()
    }
}
