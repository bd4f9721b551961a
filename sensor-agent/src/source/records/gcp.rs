//! Google Cloud VPC Flow Logs, as Cloud Logging exports them: one `LogEntry` per line (JSON
//! lines, the sink export to Cloud Storage) or a JSON array of them (`gcloud logging read
//! --format=json`), the record in `jsonPayload`.
//!
//! Field definitions: <https://cloud.google.com/vpc/docs/about-flow-logs-records>.
//! `connection` holds the 5-tuple (`src_ip`, `src_port`, `dest_ip`, `dest_port`, `protocol`),
//! `bytes_sent` and `packets_sent` count what `src` sent to `dest` between `start_time` and
//! `end_time` (RFC 3339), and `reporter` (`SRC` or `DEST`) says which side's VM reported it:
//! both VMs of a flow inside a project report it, so the reporting side's address is the
//! observation point, and the second report of a flow is counted once. 64-bit integers are
//! JSON strings in Cloud Logging's export (protobuf JSON mapping); numbers are accepted too.
//!
//! Also the JSON-lines reader the DNS log parsers share ([`json_entries`]).

use serde::{de::DeserializeOwned, Deserialize};

use crate::source::records::{
    observer_id, parse_addr, parse_num, rfc3339_ns, Aggregate, FileCounts,
};

/// A JSON integer, or a string holding one (protobuf's JSON mapping of int64).
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub enum Num {
    N(u64),
    S(String),
}

impl Num {
    pub fn get<T: std::str::FromStr + TryFrom<u64>>(&self, what: &str) -> Result<T, String> {
        match self {
            Num::N(n) => T::try_from(*n).map_err(|_| format!("{what} {n} is out of range")),
            Num::S(s) => parse_num(what, s),
        }
    }
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "jsonPayload")]
    payload: Option<Payload>,
}

#[derive(Deserialize)]
struct Payload {
    connection: Option<Connection>,
    bytes_sent: Option<Num>,
    packets_sent: Option<Num>,
    start_time: Option<String>,
    end_time: Option<String>,
    reporter: Option<String>,
}

#[derive(Deserialize)]
struct Connection {
    src_ip: String,
    dest_ip: String,
    src_port: Option<Num>,
    dest_port: Option<Num>,
    protocol: Option<Num>,
}

/// Runs `each` on every entry of a JSON-lines text, or of a JSON array, with the line (for
/// JSON lines) or the entry's index in the array; entries that are not `T` are counted as
/// malformed. `None` when the text is neither.
pub fn json_entries<T: DeserializeOwned>(
    text: &str,
    counts: &mut FileCounts,
    mut each: impl FnMut(T, &mut FileCounts) -> Result<(), String>,
) -> Option<()> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let all: Vec<serde_json::Value> = serde_json::from_str(trimmed).ok()?;
        let first_line = text[..text.len() - trimmed.len()].matches('\n').count() as u64 + 1;
        for (i, v) in all.into_iter().enumerate() {
            let r = serde_json::from_value::<T>(v)
                .map_err(|e| e.to_string())
                .and_then(|t| each(t, counts));
            if let Err(why) = r {
                counts.malformed(first_line, format!("array entry {i}: {why}"));
            }
        }
        return Some(());
    }
    if !trimmed.starts_with('{') {
        return None;
    }
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str::<T>(line)
            .map_err(|e| e.to_string())
            .and_then(|t| each(t, counts));
        if let Err(why) = r {
            counts.malformed(i as u64 + 1, why);
        }
    }
    Some(())
}

/// Parses a whole file of flow log entries.
pub fn parse(text: &str, counts: &mut FileCounts, out: &mut Vec<Aggregate>) -> Option<()> {
    json_entries::<Entry>(text, counts, |e, counts| {
        let p = e.payload.ok_or("no jsonPayload")?;
        let c = p.connection.ok_or("no jsonPayload.connection")?;
        let proto: u8 = c
            .protocol
            .ok_or("no connection.protocol")?
            .get("protocol")?;
        let has_ports = proto == 6 || proto == 17 || proto == 132;
        let port = |n: Option<Num>| -> Result<u16, String> {
            match n {
                Some(n) if has_ports => n.get("port"),
                None if has_ports => Err("a port is missing".into()),
                _ => Ok(0),
            }
        };
        let start = rfc3339_ns(p.start_time.as_deref().ok_or("no start_time")?)?;
        let end = rfc3339_ns(p.end_time.as_deref().ok_or("no end_time")?)?;
        if end < start {
            return Err("end_time before start_time".into());
        }
        let reporter = p.reporter.as_deref().unwrap_or("");
        // Both VMs of a flow report it: the observation point is the reporting side.
        let observer = match reporter {
            "SRC" | "SRC_GATEWAY" => observer_id(&["gcp", &c.src_ip]),
            "DEST" | "DEST_GATEWAY" => observer_id(&["gcp", &c.dest_ip]),
            _ => observer_id(&["gcp", reporter]),
        };
        out.push(Aggregate {
            src: parse_addr(&c.src_ip)?,
            dst: parse_addr(&c.dest_ip)?,
            src_port: port(c.src_port)?,
            dst_port: port(c.dest_port)?,
            proto,
            packets: p.packets_sent.map_or(Ok(0), |n| n.get("packets_sent"))?,
            bytes: p.bytes_sent.map_or(Ok(0), |n| n.get("bytes_sent"))?,
            start_ns: start,
            end_ns: end,
            observer,
            ..Aggregate::default()
        });
        counts.records += 1;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::ipv4_mapped;

    // Shaped like the published record format (about-flow-logs-records).
    const ENTRY: &str = r#"{"insertId":"1x2y","jsonPayload":{"bytes_sent":"1064","connection":{"dest_ip":"203.0.113.7","dest_port":3333,"protocol":6,"src_ip":"10.128.0.5","src_port":50000},"end_time":"2024-03-01T10:01:00.512Z","packets_sent":"12","reporter":"SRC","rtt_msec":"42","start_time":"2024-03-01T10:00:00.120Z"},"logName":"projects/p/logs/compute.googleapis.com%2Fvpc_flows","timestamp":"2024-03-01T10:01:05Z"}"#;

    #[test]
    fn an_entry_and_its_int64_strings_parse() {
        let (mut c, mut out) = (FileCounts::default(), Vec::new());
        let text = format!("{ENTRY}\n{{\"jsonPayload\":{{}}}}\nnot json\n");
        assert!(parse(&text, &mut c, &mut out).is_some());
        assert_eq!(out.len(), 1);
        let a = out[0];
        assert_eq!(a.src, ipv4_mapped([10, 128, 0, 5]));
        assert_eq!((a.dst_port, a.packets, a.bytes), (3333, 12, 1064));
        assert_eq!(a.end_ns - a.start_ns, 60_392_000_000);
        assert_eq!(c.malformed, 2);
        assert_eq!(c.first_malformed.as_ref().map(|m| m.0), Some(2));
        let array = format!("[{ENTRY},{ENTRY}]");
        assert!(parse(&array, &mut c, &mut out).is_some());
        assert_eq!(out.len(), 3);
        assert!(parse("version srcaddr", &mut c, &mut out).is_none());
    }
}
