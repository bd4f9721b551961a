//! Reading the report's inputs: alarm JSON lines (`--alarms`) and flow record JSON lines
//! (`--flows`), as `replay`, `run`, `ingest` and `collect` write them.
//!
//! Every line is bounded ([`Limits::max_line_bytes`]) and parsed on its own: a line that is
//! not JSON, or not an alarm (a flow record), is one [`Skipped`] note naming the file and the
//! line, and the lines around it are kept. Alarm lines of one `event.id` (opened, updated,
//! closed) become one [`Alarm`] with its latest line and a bounded history. Flow records are
//! kept only for conversations an alarm names, at most [`Limits::max_flows_per_conversation`]
//! each, so a million-flow file costs one pass and little memory.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use serde_json::Value;

/// Bounds on what one report reads.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest line read; a longer one is skipped (alarms are a few KiB).
    pub max_line_bytes: usize,
    /// Distinct alarm ids kept; later ids are counted as left out.
    pub max_alarms: usize,
    /// Alarms shown in full with their charts, most severe first; the others are listed in
    /// the index only (a page of thousands of charts helps nobody and renders slowly).
    pub max_detailed: usize,
    /// History entries kept per alarm: the first, then the most recent.
    pub max_history: usize,
    /// Flow records kept per alarmed conversation: the first ones, then the rest counted.
    pub max_flows_per_conversation: usize,
    /// Skipped-line notes kept (the count goes on).
    pub max_notes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 1 << 20,
            max_alarms: 20_000,
            max_detailed: 100,
            max_history: 32,
            max_flows_per_conversation: 2_000,
            max_notes: 100,
        }
    }
}

/// Why the report cannot be made at all (a bad line is a [`Skipped`] note instead).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {} at line {line}: {source}", path.display())]
    Read {
        path: PathBuf,
        line: usize,
        source: std::io::Error,
    },
}

/// A line left out, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub file: String,
    pub line: usize,
    pub problem: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}; line skipped",
            self.file, self.line, self.problem
        )
    }
}

/// The conversation an alarm or a flow belongs to: client, server, server port, transport.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvKey {
    pub client: String,
    pub server: String,
    pub port: u64,
    pub transport: String,
}

impl ConvKey {
    fn of(v: &Value) -> Option<ConvKey> {
        Some(ConvKey {
            client: v["source"]["ip"].as_str()?.to_string(),
            server: v["destination"]["ip"].as_str()?.to_string(),
            port: v["destination"]["port"].as_u64()?,
            transport: v["network"]["transport"].as_str().unwrap_or("").to_string(),
        })
    }
}

/// One event of an alarm's life.
#[derive(Clone, Debug)]
pub struct Step {
    pub action: String,
    /// `@timestamp`, as written and in Unix seconds.
    pub at_text: String,
    pub at: Option<f64>,
    pub severity: Option<u64>,
    pub client_bytes: Option<u64>,
    pub server_bytes: Option<u64>,
    pub reason: Option<String>,
}

/// Every line of one alarm id.
#[derive(Clone, Debug)]
pub struct Alarm {
    pub id: String,
    pub rule: String,
    /// The latest line as read.
    pub latest: Value,
    pub conv: Option<ConvKey>,
    /// Line of the file where the alarm first appeared.
    pub first_line: usize,
    pub history: Vec<Step>,
    /// History entries beyond [`Limits::max_history`] that were dropped.
    pub history_dropped: usize,
}

impl Alarm {
    pub fn evidence(&self) -> Option<&serde_json::Map<String, Value>> {
        self.latest["sensor"]["evidence"].as_object()
    }

    pub fn severity(&self) -> u64 {
        self.latest["event"]["severity"].as_u64().unwrap_or(0)
    }

    pub fn action(&self) -> &str {
        self.latest["event"]["action"].as_str().unwrap_or("")
    }
}

/// One flow record of an alarmed conversation.
#[derive(Clone, Copy, Debug)]
pub struct FlowPoint {
    pub start: Option<f64>,
    pub end: Option<f64>,
    pub client_bytes: u64,
    pub server_bytes: u64,
    pub packets: u64,
}

/// What was read.
#[derive(Debug, Default)]
pub struct Inputs {
    /// In the order of their first line.
    pub alarms: Vec<Alarm>,
    /// Alarm ids left out by [`Limits::max_alarms`].
    pub alarms_left_out: usize,
    pub alarm_lines: usize,
    /// Flow records per alarmed conversation, in file order.
    pub flows: HashMap<ConvKey, Vec<FlowPoint>>,
    /// Flow records beyond the per-conversation bound, per conversation.
    pub flows_left_out: HashMap<ConvKey, usize>,
    pub flow_lines: usize,
    pub flows_file: Option<String>,
    pub alarms_file: String,
    /// Lines skipped (count) and the first notes.
    pub skipped: usize,
    pub notes: Vec<Skipped>,
    max_notes: usize,
}

/// RFC 3339 text to Unix seconds.
pub fn parse_time(text: &str) -> Option<f64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// Reads `path` line by line (each at most `max` bytes), calling `each(line_no, text)`.
fn for_each_line(
    path: &Path,
    max: usize,
    mut each: impl FnMut(usize, Result<&str, String>),
) -> Result<(), InputError> {
    let file = File::open(path).map_err(|source| InputError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        line_no += 1;
        buf.clear();
        let read = (&mut reader)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| InputError::Read {
                path: path.to_path_buf(),
                line: line_no,
                source,
            })?;
        if read == 0 {
            return Ok(());
        }
        if buf.len() > max && buf.last() != Some(&b'\n') {
            // Skip the rest of the oversized line without holding it.
            let mut rest = 0usize;
            loop {
                let chunk = reader.fill_buf().map_err(|source| InputError::Read {
                    path: path.to_path_buf(),
                    line: line_no,
                    source,
                })?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        reader.consume(i + 1);
                        break;
                    }
                    None => {
                        rest += chunk.len();
                        let n = chunk.len();
                        reader.consume(n);
                    }
                }
            }
            each(
                line_no,
                Err(format!(
                    "line longer than {max} bytes ({} or more)",
                    buf.len() + rest
                )),
            );
            continue;
        }
        match std::str::from_utf8(&buf) {
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => each(line_no, Ok(text.trim_end())),
            Err(e) => each(line_no, Err(format!("not UTF-8 ({e})"))),
        }
    }
}

impl Inputs {
    fn skip(&mut self, file: &str, line: usize, problem: String) {
        self.skipped += 1;
        if self.notes.len() < self.max_notes {
            self.notes.push(Skipped {
                file: file.to_string(),
                line,
                problem,
            });
        }
    }
}

/// Reads the alarms, then the flows of the conversations they name.
pub fn read(alarms: &Path, flows: Option<&Path>, limits: &Limits) -> Result<Inputs, InputError> {
    let mut inputs = Inputs {
        alarms_file: alarms.display().to_string(),
        flows_file: flows.map(|p| p.display().to_string()),
        max_notes: limits.max_notes,
        ..Inputs::default()
    };
    let mut index: HashMap<String, usize> = HashMap::new();
    let name = inputs.alarms_file.clone();
    for_each_line(alarms, limits.max_line_bytes, |line, text| {
        inputs.alarm_lines += 1;
        let value = match text
            .and_then(|t| serde_json::from_str::<Value>(t).map_err(|e| format!("not JSON ({e})")))
        {
            Ok(v) => v,
            Err(problem) => return inputs.skip(&name, line, problem),
        };
        let (Some(id), Some(rule)) = (
            value["event"]["id"].as_str().map(str::to_string),
            value["rule"]["id"].as_str().map(str::to_string),
        ) else {
            let problem = if value["event"]["kind"] == "event" {
                "a flow record, not an alarm (give flow records with --flows)".to_string()
            } else {
                "not an alarm: event.id or rule.id is missing".to_string()
            };
            return inputs.skip(&name, line, problem);
        };
        let step = Step {
            action: value["event"]["action"].as_str().unwrap_or("").to_string(),
            at_text: value["@timestamp"].as_str().unwrap_or("").to_string(),
            at: value["@timestamp"].as_str().and_then(parse_time),
            severity: value["event"]["severity"].as_u64(),
            client_bytes: value["source"]["bytes"].as_u64(),
            server_bytes: value["destination"]["bytes"].as_u64(),
            reason: value["event"]["reason"].as_str().map(str::to_string),
        };
        let at = match index.get(&id) {
            Some(&i) => i,
            None => {
                if inputs.alarms.len() >= limits.max_alarms {
                    inputs.alarms_left_out += 1;
                    // Its id is remembered so its later lines are not counted again.
                    index.insert(id, usize::MAX);
                    return;
                }
                index.insert(id.clone(), inputs.alarms.len());
                inputs.alarms.push(Alarm {
                    id,
                    rule,
                    conv: ConvKey::of(&value),
                    latest: Value::Null,
                    first_line: line,
                    history: Vec::new(),
                    history_dropped: 0,
                });
                inputs.alarms.len() - 1
            }
        };
        let Some(alarm) = inputs.alarms.get_mut(at) else {
            return;
        };
        if alarm.history.len() >= limits.max_history.max(2) {
            // Keep the first event (when it opened) and the most recent ones.
            alarm.history.remove(1);
            alarm.history_dropped += 1;
        }
        alarm.history.push(step);
        if alarm.conv.is_none() {
            alarm.conv = ConvKey::of(&value);
        }
        alarm.latest = value;
    })?;
    if let Some(path) = flows {
        read_flows(&mut inputs, path, limits)?;
    }
    Ok(inputs)
}

fn read_flows(inputs: &mut Inputs, path: &Path, limits: &Limits) -> Result<(), InputError> {
    let wanted: std::collections::HashSet<ConvKey> = inputs
        .alarms
        .iter()
        .filter_map(|a| a.conv.clone())
        .collect();
    let name = path.display().to_string();
    let mut flows: HashMap<ConvKey, Vec<FlowPoint>> = HashMap::new();
    let mut left_out: HashMap<ConvKey, usize> = HashMap::new();
    let mut skipped = Vec::new();
    let mut lines = 0;
    for_each_line(path, limits.max_line_bytes, |line, text| {
        lines += 1;
        let value = match text
            .and_then(|t| serde_json::from_str::<Value>(t).map_err(|e| format!("not JSON ({e})")))
        {
            Ok(v) => v,
            Err(problem) => return skipped.push((line, problem)),
        };
        if value["event"]["kind"] == "alert" {
            // `--flows -` and alarms on one stdout: alarms are read from --alarms.
            return;
        }
        let Some(key) = ConvKey::of(&value) else {
            return skipped.push((
                line,
                "not a flow record: source.ip, destination.ip or destination.port is missing"
                    .to_string(),
            ));
        };
        if !wanted.contains(&key) {
            return;
        }
        let list = flows.entry(key.clone()).or_default();
        if list.len() >= limits.max_flows_per_conversation {
            *left_out.entry(key).or_default() += 1;
            return;
        }
        list.push(FlowPoint {
            start: value["event"]["start"].as_str().and_then(parse_time),
            end: value["event"]["end"].as_str().and_then(parse_time),
            client_bytes: value["source"]["bytes"].as_u64().unwrap_or(0),
            server_bytes: value["destination"]["bytes"].as_u64().unwrap_or(0),
            packets: value["network"]["packets"].as_u64().unwrap_or(0),
        });
    })?;
    for (line, problem) in skipped {
        inputs.skip(&name, line, problem);
    }
    inputs.flows = flows;
    inputs.flows_left_out = left_out;
    inputs.flow_lines = lines;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("report-input-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn events_of_one_id_merge_and_bad_lines_are_skipped_with_their_line_numbers() {
        let alarm = |action: &str, t: &str, bytes: u64| {
            format!(
                r#"{{"@timestamp":"{t}","event":{{"kind":"alert","id":"a1","action":"{action}","severity":3}},"rule":{{"id":"long_flow"}},"source":{{"ip":"10.0.0.1","port":4000,"bytes":{bytes}}},"destination":{{"ip":"10.0.0.2","port":3333,"bytes":5}},"network":{{"transport":"tcp"}}}}"#
            )
        };
        let long = format!("{{\"x\":\"{}\"}}", "y".repeat(500));
        let text = [
            alarm("opened", "2024-01-01T00:00:00Z", 10),
            "{not json".to_string(),
            long,
            r#"{"event":{"kind":"event"},"source":{"ip":"10.0.0.1"}}"#.to_string(),
            alarm("updated", "2024-01-01T00:01:00Z", 20),
            alarm("closed", "2024-01-01T00:02:00Z", 30),
        ]
        .join("\n");
        let path = file("alarms", &text);
        let limits = Limits {
            max_line_bytes: 400,
            max_history: 2,
            ..Limits::default()
        };
        let got = read(&path, None, &limits).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got.alarms.len(), 1);
        let a = &got.alarms[0];
        assert_eq!(a.action(), "closed");
        // The first event and the latest are kept; the one between is counted.
        let actions: Vec<&str> = a.history.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(actions, ["opened", "closed"]);
        assert_eq!(a.history_dropped, 1);
        assert_eq!(a.history[1].client_bytes, Some(30));
        assert_eq!(a.history[1].at, Some(1_704_067_320.0));
        assert_eq!(got.skipped, 3);
        let lines: Vec<usize> = got.notes.iter().map(|n| n.line).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert!(
            got.notes[1].problem.contains("longer than 400"),
            "{:?}",
            got.notes
        );
        assert!(
            got.notes[2].problem.contains("flow record"),
            "{:?}",
            got.notes
        );
        assert!(
            got.notes[0].to_string().contains(":2: not JSON"),
            "{}",
            got.notes[0]
        );
    }

    #[test]
    fn flows_are_kept_only_for_alarmed_conversations_and_bounded() {
        let alarms = file(
            "a2",
            r#"{"event":{"kind":"alert","id":"a","action":"opened"},"rule":{"id":"long_flow"},"source":{"ip":"10.0.0.1"},"destination":{"ip":"10.0.0.2","port":3333},"network":{"transport":"tcp"}}"#,
        );
        let flow = |server: &str| {
            format!(
                r#"{{"event":{{"kind":"event","start":"2024-01-01T00:00:00Z","end":"2024-01-01T00:00:09Z"}},"source":{{"ip":"10.0.0.1","bytes":7}},"destination":{{"ip":"{server}","port":3333,"bytes":9}},"network":{{"transport":"tcp","packets":4}}}}"#
            )
        };
        let flows = file(
            "f2",
            &[
                flow("10.0.0.2"),
                flow("10.0.0.9"),
                flow("10.0.0.2"),
                flow("10.0.0.2"),
            ]
            .join("\n"),
        );
        let limits = Limits {
            max_flows_per_conversation: 2,
            ..Limits::default()
        };
        let got = read(&alarms, Some(&flows), &limits).unwrap();
        std::fs::remove_file(&alarms).unwrap();
        std::fs::remove_file(&flows).unwrap();
        let key = got.alarms[0].conv.clone().unwrap();
        assert_eq!(got.flows.len(), 1);
        assert_eq!(got.flows[&key].len(), 2);
        assert_eq!(got.flows_left_out[&key], 1);
        assert_eq!(got.flows[&key][0].server_bytes, 9);
        assert_eq!(got.flow_lines, 4);
    }
}
