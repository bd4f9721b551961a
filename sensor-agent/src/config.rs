//! Configuration: a TOML file, `--set key=value` overrides, and validation.
//!
//! Every tunable of the agent lives here with its documented default, so `validate` can check
//! a file before a deployment and every error names where it came from: the file and line (or
//! the `--set` argument), the key, and what would have been accepted. Unknown keys are errors,
//! never silently ignored: a misspelt threshold must not leave the default in force.

use std::path::Path;

use serde::Deserialize;

use crate::{
    alarm::settings::AlarmConfig,
    detect::DetectConfig,
    enrich::{intel::IntelConfig, labels::LabelConfig},
    flow::settings::FlowConfig,
    metrics::MetricsConfig,
    sink::{delivery::SpoolSection, ipfix::ExporterConfig, transport::SinkConfig, OutputConfig},
    source::records::settings::IngestConfig,
    source::settings::{CaptureConfig, SensorConfig},
    state::StateConfig,
    units::Invalid,
};

/// The agent's whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sensor: SensorConfig,
    pub capture: CaptureConfig,
    pub flow: FlowConfig,
    pub detect: DetectConfig,
    pub labels: LabelConfig,
    pub intel: IntelConfig,
    pub alarm: AlarmConfig,
    pub output: OutputConfig,
    /// The durable spool between the detectors and the sinks.
    pub spool: SpoolSection,
    /// How flow logs are read and stitched (`sensor-agent ingest`).
    pub ingest: IngestConfig,
    /// Where alarms are delivered (`[[sinks]]`); none: JSON lines to stdout or `output.alarms`.
    pub sinks: Vec<SinkConfig>,
    /// Where the sensor's own flow records are sent as IPFIX (`[[exporters]]`).
    pub exporters: Vec<ExporterConfig>,
    /// What `run` keeps across restarts, and where.
    pub state: StateConfig,
    /// The metrics and health endpoint of `run`.
    pub metrics: MetricsConfig,
}

/// A configuration error, already located.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {key}{sep}{message}", sep = if key.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    /// `FILE:LINE`, `FILE`, or `--set ARG`.
    pub origin: String,
    /// Dotted key, when known.
    pub key: String,
    pub message: String,
}

/// The largest configuration file read: a real one is a few KB; `--config /dev/zero` or a
/// 61 MB file must be refused before it costs gigabytes.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The text of a configuration file, read up to [`MAX_CONFIG_BYTES`] (enforced while reading,
/// so an endless device is refused too).
fn read_capped(p: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let err = |message: String| ConfigError {
        origin: p.display().to_string(),
        key: String::new(),
        message,
    };
    let f = std::fs::File::open(p).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "larger than {MAX_CONFIG_BYTES} bytes; not a configuration file"
        )));
    }
    String::from_utf8(buf).map_err(|_| err("not UTF-8 text".into()))
}

/// Loads `file` (if any), applies `--set` overrides in order, and validates the result.
pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Config, ConfigError> {
    let (text, origin) = match file {
        Some(p) => (read_capped(p)?, p.display().to_string()),
        None => (String::new(), "defaults".to_string()),
    };
    // First the file alone, from its text: errors then carry line numbers.
    let de = toml::Deserializer::new(&text);
    serde_path_to_error::deserialize::<_, Config>(de).map_err(|e| located(&origin, &text, e))?;

    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| located_toml(&origin, &text, &e, String::new()))?;
    for set in sets {
        let set_origin = format!("--set {set}");
        let (key, value) = set.split_once('=').ok_or_else(|| ConfigError {
            origin: set_origin.clone(),
            key: String::new(),
            message: "expected KEY=VALUE, for example detect.long_flow.after=1h".into(),
        })?;
        let key = key.trim();
        if value.contains(['\n', '\r']) {
            // TOML would keep only the first line; the rest would vanish silently.
            return Err(ConfigError {
                origin: format!("--set {}", crate::units::excerpt(set)),
                key: key.to_string(),
                message: "the value contains a line break; one line only".into(),
            });
        }
        let value = parse_value(value.trim()).map_err(|message| ConfigError {
            origin: set_origin.clone(),
            key: key.to_string(),
            message,
        })?;
        insert(&mut table, key, value).map_err(|message| ConfigError {
            origin: set_origin.clone(),
            key: key.to_string(),
            message,
        })?;
        let cfg = serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(table.clone()))
            .map_err(|e| ConfigError {
                origin: set_origin.clone(),
                key: e.path().to_string(),
                message: e.into_inner().message().to_string(),
            });
        cfg?;
    }
    let cfg: Config =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError {
            origin: origin.clone(),
            key: e.path().to_string(),
            message: e.into_inner().message().to_string(),
        })?;
    validate(&cfg).map_err(|Invalid { key, message }| {
        let origin = match sets.iter().rev().find(|s| {
            s.split_once('=').is_some_and(|(k, _)| {
                let k = k.trim();
                k == key
                    || key
                        .strip_prefix(k)
                        .is_some_and(|rest| rest.starts_with('['))
            })
        }) {
            Some(s) => format!("--set {s}"),
            None => match line_of(&text, &key) {
                Some(line) => format!("{origin}:{line}"),
                None => origin.clone(),
            },
        };
        ConfigError {
            origin,
            key,
            message,
        }
    })?;
    Ok(cfg)
}

/// A `--set` value: TOML if it parses as one (numbers, booleans, arrays, quoted strings),
/// otherwise the bare text as a string (`1h`, `eth0`). A number too large for TOML is an
/// error of its own, not a string that a numeric key then calls the wrong type.
fn parse_value(raw: &str) -> Result<toml::Value, String> {
    if let Some(v) = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
    {
        return Ok(v);
    }
    let digits = raw.strip_prefix(['-', '+']).unwrap_or(raw).replace('_', "");
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{} is too large for a number (at most {})",
            crate::units::excerpt(raw),
            i64::MAX
        ));
    }
    Ok(toml::Value::String(raw.to_string()))
}

fn insert(table: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = dotted.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty key segment".into());
    }
    let mut t = table;
    for part in &parts[..parts.len() - 1] {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table"))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn located(
    origin: &str,
    text: &str,
    e: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let key = e.path().to_string();
    let key = if key == "." { String::new() } else { key };
    located_toml(origin, text, e.inner(), key)
}

fn located_toml(origin: &str, text: &str, e: &toml::de::Error, key: String) -> ConfigError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    // Errors of the TOML text itself (a number too large, a bad string) come without a key:
    // the key written on that line names it.
    let key = match (key.is_empty(), line) {
        (true, Some(line)) => key_at_line(text, line).unwrap_or_default(),
        _ => key,
    };
    let origin = match line {
        Some(line) => format!("{origin}:{line}"),
        None => origin.to_string(),
    };
    ConfigError {
        origin,
        key,
        message: e.message().replace('\n', " "),
    }
}

/// A TOML line's table header, normalised as keys are reported: `[a.b]` is `a.b`, the n-th
/// `[[sinks]]` (from 0) is `sinks[n]`. `seen` counts the arrays of tables met so far.
fn header_of(line: &str, seen: &mut Vec<(String, usize)>) -> Option<String> {
    let l = line.trim();
    if let Some(h) = l.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
        let name = h.trim().to_string();
        let n = match seen.iter_mut().find(|(k, _)| *k == name) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                seen.push((name.clone(), 0));
                0
            }
        };
        return Some(format!("{name}[{n}]"));
    }
    l.strip_prefix('[')
        .and_then(|l| l.split(']').next())
        .map(|h| h.trim().to_string())
}

/// The key a `key = value` line defines, without quotes.
fn key_of(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim().trim_matches(['"', '\'']);
    (!k.is_empty() && !k.starts_with('#')).then_some(k)
}

/// The line defining a reported key (`section.key`, `sinks[1].name`, `intel.allow[0]`) in a
/// TOML text, by scanning its table headers; the section's header line when the key itself
/// is not written (a problem of the whole section).
fn line_of(text: &str, reported: &str) -> Option<usize> {
    // An index on the last part is an element of an array written on the key's own line.
    let base = match (reported.ends_with(']'), reported.rfind('[')) {
        (true, Some(i)) => &reported[..i],
        _ => reported,
    };
    let (section, key) = base.rsplit_once('.').unwrap_or(("", base));
    let mut current = String::new();
    let mut seen = Vec::new();
    let mut header_line = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(h) = header_of(line, &mut seen) {
            current = h;
            if header_line.is_none() && (current == reported || current == section) {
                header_line = Some(i + 1);
            }
            continue;
        }
        if current == section && key_of(line) == Some(key) {
            return Some(i + 1);
        }
    }
    header_line
}

/// The dotted key written on line `line` (1-based) of a TOML text.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut current = String::new();
    let mut seen = Vec::new();
    for (i, l) in text.lines().enumerate().take(line) {
        if let Some(h) = header_of(l, &mut seen) {
            current = h;
            continue;
        }
        if i + 1 == line {
            let key = key_of(l)?;
            return Some(if current.is_empty() {
                key.to_string()
            } else {
                format!("{current}.{key}")
            });
        }
    }
    None
}

/// Checks what types alone cannot, section by section (each section validates itself where
/// it is defined); returns the first problem with its full dotted key.
fn validate(c: &Config) -> Result<(), Invalid> {
    c.sensor.validate().map_err(|e| e.within("sensor"))?;
    c.capture.validate().map_err(|e| e.within("capture"))?;
    c.flow.validate().map_err(|e| e.within("flow"))?;
    c.ingest.validate().map_err(|e| e.within("ingest"))?;
    c.detect.validate().map_err(|e| e.within("detect"))?;
    c.metrics.validate().map_err(|e| e.within("metrics"))?;
    for (i, sink) in c.sinks.iter().enumerate() {
        if let Err(e) = sink.validate() {
            return Err(Invalid::new(format!("sinks[{i}]"), e.to_string()));
        }
    }
    for (i, ex) in c.exporters.iter().enumerate() {
        ex.validate()
            .map_err(|e| e.within(&format!("exporters[{i}]")))?;
    }
    // What `run`/`replay` would refuse when starting the outputs, refused here already, so
    // that what `validate` accepts every command accepts.
    let mut names = Vec::new();
    for (i, sink) in c.sinks.iter().enumerate() {
        let name = sink.name();
        if names.contains(&name) {
            return Err(Invalid::new(
                format!("sinks[{i}].name"),
                format!("{name} is used by another sink (give one a `name`)"),
            ));
        }
        names.push(name);
    }
    if c.output
        .alarms
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(Invalid::new(
            "output.alarms",
            "must not be empty (leave it out, or \"-\", for stdout)",
        ));
    }
    if !c.sinks.is_empty() && c.spool.dir.as_os_str().is_empty() {
        return Err(Invalid::new("spool.dir", "must not be empty"));
    }
    c.spool.validate().map_err(|e| e.within("spool"))?;
    if let Err(errors) = c.intel.validate() {
        let first = errors.into_iter().next().unwrap_or_default();
        let (key, message) = first.split_once(": ").unwrap_or(("intel", first.as_str()));
        return Err(Invalid::new(key, message));
    }
    for (key, n) in [
        (
            "sensor.max_kernel_flows",
            u64::from(c.sensor.max_kernel_flows),
        ),
        ("flow.max_flows", c.flow.max_flows as u64),
        ("flow.max_conversations", c.flow.max_conversations as u64),
    ] {
        if n == 0 {
            return Err(Invalid::new(key, "must be at least 1"));
        }
    }
    c.state.validate().map_err(|e| e.within("state"))?;
    c.alarm.validate().map_err(|e| e.within("alarm"))
}

impl Config {
    /// How to load the datapath for this configuration.
    pub fn load_options(&self) -> crate::source::datapath::LoadOptions {
        crate::source::settings::load_options(
            &self.sensor,
            &self.capture,
            self.detect.watch.max_flows,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::HumanDuration;
    use std::path::PathBuf;

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cfg-unit-{}-{name}.toml", std::process::id()));
        std::fs::write(&p, text).expect("write config");
        p
    }

    #[test]
    fn defaults_match_the_design() {
        let c = load(None, &[]).expect("defaults");
        assert_eq!(c.detect.long_flow.after, HumanDuration::secs(9 * 3600));
        assert_eq!(
            c.detect.quiet_long_flow.after,
            HumanDuration::secs(9 * 3600)
        );
        assert_eq!(c.detect.quiet_long_flow.max_bytes_per_sec, 200.0);
        assert_eq!(c.flow.tcp_idle_timeout, HumanDuration::secs(900));
    }

    #[test]
    fn set_overrides_take_human_durations() {
        let c = load(
            None,
            &[
                "detect.long_flow.after=90s".into(),
                "flow.udp_idle_timeout=15m".into(),
                "detect.quiet_long_flow.max_bytes_per_sec=50".into(),
            ],
        )
        .expect("overrides");
        assert_eq!(c.detect.long_flow.after, HumanDuration::secs(90));
        assert_eq!(c.flow.udp_idle_timeout, HumanDuration::secs(900));
        assert_eq!(c.detect.quiet_long_flow.max_bytes_per_sec, 50.0);
    }

    #[test]
    fn bad_file_names_file_line_key_and_accepted_values() {
        let p = write(
            "bad-key",
            "[detect.long_flow]\nenabled = true\naftr = \"1h\"\n",
        );
        let e = load(Some(&p), &[]).expect_err("unknown key").to_string();
        assert!(e.contains(&format!("{}:3", p.display())), "{e}");
        assert!(e.contains("aftr") && e.contains("after"), "{e}");
        let p = write("bad-duration", "[flow]\ntcp_idle_timeout = \"15x\"\n");
        let e = load(Some(&p), &[]).expect_err("bad duration").to_string();
        assert!(
            e.contains(":2") && e.contains("flow.tcp_idle_timeout") && e.contains("90s"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn bad_set_names_the_argument() {
        let e = load(None, &["detect.long_flow.after=soon".into()])
            .expect_err("bad")
            .to_string();
        assert!(
            e.starts_with("--set detect.long_flow.after=soon: detect.long_flow.after"),
            "{e}"
        );
        let e = load(None, &["detect.nope=1".into()])
            .expect_err("bad")
            .to_string();
        assert!(e.contains("nope") && e.contains("long_flow"), "{e}");
    }

    #[test]
    fn the_example_file_is_valid_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sensor.example.toml");
        let c = load(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
        let d = Config::default();
        assert_eq!(c.detect.long_flow.after, d.detect.long_flow.after);
        assert_eq!(c.detect.long_flow.ladder, d.detect.long_flow.ladder);
        assert_eq!(c.flow.conversation_gap, d.flow.conversation_gap);
        assert_eq!(c.sensor.poll_interval, d.sensor.poll_interval);
        assert_eq!(c.alarm.suppression_window, d.alarm.suppression_window);
    }
}
