//! Log files as users have them: single files or directory trees (the S3 export layout
//! `AWSLogs/<account>/vpcflowlogs/<region>/YYYY/MM/DD/*.log.gz`, Azure's `.../PT1H.json`
//! blobs, Cloud Storage exports of Cloud Logging), plain or gzip, each one's format detected
//! from its content (or named by `--format`).
//!
//! Every file is reported once: how many records it held, how many were malformed and where
//! the first of them is. A file named on the command line that is not a flow log or DNS query
//! log at all is an error that stops the run before anything is evaluated; in a directory,
//! files whose names are not those of log exports are skipped and counted.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use crate::flow::roles::EPHEMERAL_FROM;
use crate::source::{
    records::{
        aws, azure,
        dnslog::{self, DnsLog},
        gcp,
        settings::IngestConfig,
        shown, Aggregate, FileCounts, Item, Telemetry,
    },
    Resolution,
};

/// Directory levels walked at most (the S3 layout has 7).
const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: not a flow log or DNS query log ({what})")]
    NotALog { path: String, what: String },
    #[error("{path}: is {found}, not {wanted} as --format says")]
    WrongFormat {
        path: String,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("{path}: is {found} but {first} is {earlier}: one flow log format per run")]
    Mixed {
        path: String,
        found: &'static str,
        first: String,
        earlier: &'static str,
    },
    #[error("no log files found in {0}")]
    Empty(String),
}

/// What kind of log a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Flow(Telemetry),
    Dns(DnsLog),
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Flow(t) => t.name(),
            Kind::Dns(d) => d.name(),
        }
    }
}

/// One file, as read.
#[derive(Clone, Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub kind: Kind,
    pub counts: FileCounts,
}

impl FileReport {
    /// The one line reporting its malformed records, if any.
    pub fn malformed_line(&self) -> Option<String> {
        let (line, why) = self.counts.first_malformed.as_ref()?;
        Some(format!(
            "{}:{line}: {why} ({} malformed {} record{} in this file, skipped)",
            self.path.display(),
            self.counts.malformed,
            self.kind.name(),
            if self.counts.malformed == 1 { "" } else { "s" }
        ))
    }
}

/// Everything read from the inputs.
#[derive(Debug, Default)]
pub struct Input {
    /// Flow records and resolutions, in time order.
    pub items: Vec<Item>,
    /// The flow log format (none when only DNS logs were given).
    pub telemetry: Option<Telemetry>,
    pub files: Vec<FileReport>,
    /// Files in directories skipped for their names.
    pub skipped_files: u64,
    /// The aggregation interval, measured from the records or configured, ns.
    pub interval_ns: u64,
    pub totals: FileCounts,
}

/// Whether a file in a directory is taken for a log export, by its name.
fn looks_like_log(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    [
        ".log", ".log.gz", ".gz", ".json", ".json.gz", ".jsonl", ".txt",
    ]
    .iter()
    .any(|e| name.ends_with(e))
}

/// The files to read: each file as given, each directory's log files (recursively, sorted,
/// symbolic links to directories not followed).
fn expand(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, u64), IngestError> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| IngestError::Read {
            path: p.display().to_string(),
            message: e.to_string(),
        })?;
        if !meta.is_dir() {
            out.push(p.clone());
            continue;
        }
        let before = out.len();
        let mut stack = vec![(p.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| IngestError::Read {
                    path: dir.display().to_string(),
                    message: e.to_string(),
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries.into_iter().rev() {
                let Ok(m) = std::fs::symlink_metadata(&e) else {
                    continue;
                };
                if m.is_dir() {
                    if depth < MAX_DEPTH {
                        stack.push((e, depth + 1));
                    }
                } else if looks_like_log(&e) {
                    out.push(e);
                } else {
                    skipped += 1;
                }
            }
        }
        out[before..].sort();
        if out.len() == before {
            return Err(IngestError::Empty(p.display().to_string()));
        }
    }
    Ok((out, skipped))
}

/// A file's text, inflated when it is gzip (by its magic, whatever its name), at most
/// `max` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String, IngestError> {
    let err = |message: String| IngestError::Read {
        path: path.display().to_string(),
        message,
    };
    let mut f = File::open(path).map_err(|e| err(e.to_string()))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| err(e.to_string()))?;
    let f = File::open(path).map_err(|e| err(e.to_string()))?;
    let mut reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        // Concatenated gzip members (appended exports) are read as one stream.
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(err(format!(
            "larger than ingest.max_file_bytes ({max} bytes)"
        )));
    }
    String::from_utf8(bytes).map_err(|_| IngestError::NotALog {
        path: path.display().to_string(),
        what: "not text".into(),
    })
}

/// What a file's text is, by its content.
fn detect(text: &str) -> Result<Kind, String> {
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or("empty")?
        .trim();
    if first.starts_with('{') || first.starts_with('[') {
        let value: Option<serde_json::Value> = serde_json::from_str(first).ok();
        if let Some(v) = &value {
            let entry = if first.starts_with('[') {
                v.get(0).cloned().unwrap_or_default()
            } else {
                v.clone()
            };
            if entry.get("records").is_none() {
                if let Some(d) = dnslog::detect(&entry) {
                    return Ok(Kind::Dns(d));
                }
                if entry
                    .get("jsonPayload")
                    .is_some_and(|p| p.get("connection").is_some())
                {
                    return Ok(Kind::Flow(Telemetry::GcpVpc));
                }
                return Err(format!(
                    "JSON without flow or query fields: {}",
                    shown(first)
                ));
            }
        }
        return azure::detect(text)
            .map(Kind::Flow)
            .ok_or_else(|| format!("JSON that is no known log: {}", shown(first)));
    }
    if aws::Layout::from_header(first).is_some() || aws::Layout::looks_like_default_record(first) {
        return Ok(Kind::Flow(Telemetry::AwsVpc));
    }
    Err(format!("first line {}", shown(first)))
}

/// Parses one file of `kind` into `flows` and `dns`.
fn parse_file(
    kind: Kind,
    text: &str,
    cfg: &IngestConfig,
    counts: &mut FileCounts,
    flows: &mut Vec<Aggregate>,
    dns: &mut Vec<Resolution>,
) -> Result<(), String> {
    let ttl = u32::try_from(cfg.dns_ttl.0.as_secs()).unwrap_or(u32::MAX);
    let parsed = match kind {
        Kind::Flow(Telemetry::AwsVpc) => aws::parse(text, counts, flows),
        Kind::Flow(Telemetry::GcpVpc) => gcp::parse(text, counts, flows),
        Kind::Flow(t) => return azure::parse(t, text, counts, flows),
        Kind::Dns(d) => dnslog::parse(d, text, ttl, counts, dns),
    };
    parsed.ok_or_else(|| format!("not {}", kind.name()))
}

/// The aggregation interval the records show: the longest record span rounded up to an
/// interval the cloud offers (AWS: 1 or 10 minutes; GCP: 5 s to 15 min), or the median gap
/// between consecutive updates of one connection (Azure, whose tuples carry one time each).
/// At least one second.
pub fn measure_interval(telemetry: Telemetry, flows: &[Aggregate]) -> u64 {
    const S: u64 = 1_000_000_000;
    let ns = match telemetry {
        Telemetry::AzureVnet | Telemetry::AzureNsg => {
            let mut by_tuple: Vec<(_, u64)> = flows
                .iter()
                .map(|a| ((a.src, a.dst, a.src_port, a.dst_port, a.proto), a.start_ns))
                .collect();
            by_tuple.sort_unstable();
            let mut gaps: Vec<u64> = by_tuple
                .windows(2)
                .filter(|w| w[0].0 == w[1].0 && w[1].1 > w[0].1)
                .map(|w| w[1].1 - w[0].1)
                .collect();
            gaps.sort_unstable();
            gaps.get(gaps.len() / 2).copied().unwrap_or(S)
        }
        // A record spans its first to its last packet, so less than the interval when the
        // flow is sparse: the longest span, rounded up to the intervals the cloud offers.
        t => {
            let span = flows
                .iter()
                .map(|a| a.end_ns - a.start_ns)
                .max()
                .unwrap_or(S);
            let offered: &[u64] = if t == Telemetry::AwsVpc {
                &[60, 600]
            } else {
                &[5, 30, 60, 300, 600, 900]
            };
            offered
                .iter()
                .map(|s| s * S)
                .find(|&o| o >= span)
                .unwrap_or(span)
        }
    };
    ns.div_ceil(S).max(1) * S
}

/// Reads every input. `format` names the flow log format (`None`: detected per file); DNS
/// query logs are always detected. Errors stop the run: unreadable files, files that are no
/// log, and flow logs of two formats.
pub fn read_inputs(
    paths: &[PathBuf],
    format: Option<Telemetry>,
    cfg: &IngestConfig,
) -> Result<Input, IngestError> {
    let (files, skipped) = expand(paths)?;
    let mut input = Input {
        skipped_files: skipped,
        ..Input::default()
    };
    let mut flows = Vec::new();
    let mut dns = Vec::new();
    let mut first_flow_file: Option<PathBuf> = None;
    for path in files {
        let text = read_text(&path, cfg.max_file_bytes)?;
        let shown_path = path.display().to_string();
        let mut kind = detect(&text).map_err(|what| IngestError::NotALog {
            path: shown_path.clone(),
            what,
        })?;
        if let (Kind::Flow(found), Some(wanted)) = (kind, format) {
            // Azure's two documents look alike; the user's word decides between them.
            let azure = |t| matches!(t, Telemetry::AzureVnet | Telemetry::AzureNsg);
            if found != wanted && !(azure(found) && azure(wanted)) {
                return Err(IngestError::WrongFormat {
                    path: shown_path,
                    found: found.name(),
                    wanted: wanted.name(),
                });
            }
            kind = Kind::Flow(wanted);
        }
        if let Kind::Flow(t) = kind {
            match (input.telemetry, &first_flow_file) {
                (Some(earlier), Some(first)) if earlier != t => {
                    return Err(IngestError::Mixed {
                        path: shown_path,
                        found: t.name(),
                        first: first.display().to_string(),
                        earlier: earlier.name(),
                    })
                }
                _ => {
                    input.telemetry = Some(t);
                    first_flow_file.get_or_insert(path.clone());
                }
            }
        }
        let mut counts = FileCounts::default();
        parse_file(kind, &text, cfg, &mut counts, &mut flows, &mut dns).map_err(|what| {
            IngestError::NotALog {
                path: shown_path.clone(),
                what,
            }
        })?;
        input.totals.add(&counts);
        input.files.push(FileReport { path, kind, counts });
    }
    input.interval_ns = match (cfg.interval, input.telemetry) {
        (Some(d), _) => d.as_nanos(),
        (None, Some(t)) => measure_interval(t, &flows),
        (None, None) => 1_000_000_000,
    };
    input.items = Vec::with_capacity(flows.len() + dns.len());
    input.items.extend(dns.into_iter().map(Item::Dns));
    input.items.extend(flows.into_iter().map(Item::Flow));
    // A lookup answered in the same second as the connection comes first, as on the wire.
    // Records of one second whose order the exporter's clock cannot tell (AWS writes whole
    // seconds): a sender from an ephemeral port to a lower one first, as initiators mostly
    // are; the first record's sender is the flow's client until stronger evidence comes.
    input.items.sort_by_key(|i| {
        let answering = match i {
            Item::Flow(a) => !(a.src_port >= EPHEMERAL_FROM && a.dst_port < a.src_port),
            Item::Dns(_) => false,
        };
        (i.time(), matches!(i, Item::Flow(_)), answering)
    });
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_decides_the_format() {
        let aws = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status\n";
        assert_eq!(detect(aws), Ok(Kind::Flow(Telemetry::AwsVpc)));
        assert_eq!(
            detect("{\"jsonPayload\":{\"connection\":{}}}\n"),
            Ok(Kind::Flow(Telemetry::GcpVpc))
        );
        assert_eq!(
            detect("{\"query_name\":\"a.\",\"query_timestamp\":\"x\"}"),
            Ok(Kind::Dns(DnsLog::Route53))
        );
        assert_eq!(
            detect("{\"records\":[{\"flowLogVersion\":4}]}"),
            Ok(Kind::Flow(Telemetry::AzureVnet))
        );
        assert_eq!(
            detect("{\n \"records\": [{\"properties\": {\"Version\": 2}}]\n}"),
            Ok(Kind::Flow(Telemetry::AzureNsg))
        );
        assert!(detect("%PDF-1.4\n").unwrap_err().contains("PDF"));
        assert!(detect("{\"hello\":1}").is_err());
        assert!(detect("\n\n").is_err());
    }

    #[test]
    fn azure_intervals_are_the_median_update_gap() {
        const S: u64 = 1_000_000_000;
        let at = |port: u16, t: u64| Aggregate {
            src_port: port,
            start_ns: t * S,
            end_ns: t * S,
            ..Aggregate::default()
        };
        let flows = [
            at(1, 0),
            at(1, 60),
            at(1, 120),
            at(1, 600),
            at(2, 5),
            at(2, 65),
        ];
        assert_eq!(measure_interval(Telemetry::AzureVnet, &flows), 60 * S);
        let spans = [Aggregate {
            start_ns: 0,
            end_ns: 32 * S,
            ..Aggregate::default()
        }];
        assert_eq!(measure_interval(Telemetry::AwsVpc, &spans), 60 * S);
        assert_eq!(measure_interval(Telemetry::GcpVpc, &spans), 60 * S);
        let long = [Aggregate {
            start_ns: 0,
            end_ns: 61 * S,
            ..Aggregate::default()
        }];
        assert_eq!(measure_interval(Telemetry::AwsVpc, &long), 600 * S);
    }
}
