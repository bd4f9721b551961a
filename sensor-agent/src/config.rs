//! Configuration: a TOML file, `--set key=value` overrides, and validation.
//!
//! Every tunable of the agent lives here with its documented default, so `validate` can check
//! a file before a deployment and every error names where it came from: the file and line (or
//! the `--set` argument), the key, and what would have been accepted. Unknown keys are errors,
//! never silently ignored: a misspelt threshold must not leave the default in force.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{de, Deserialize, Deserializer};

/// A duration written for humans: `90s`, `15m`, `9h`, `3d`, `1h 30m`, or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }

    pub fn as_nanos(self) -> u64 {
        self.0.as_nanos().min(u64::MAX as u128) as u64
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

const DURATION_HINT: &str = "a duration such as 90s, 15m, 9h or 3d";

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(DURATION_HINT)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v).map(HumanDuration::secs).map_err(|_| {
                    E::custom(format!("negative duration {v}: expected {DURATION_HINT}"))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration::secs(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(v.trim())
                    .map(HumanDuration)
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid duration {v:?} ({e}): expected {DURATION_HINT}"
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| {
            format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => (u32::from(v4) as u128, 32),
                    None => (u128::from(v6), 128),
                },
            }
        }
        let (net, width) = bits(self.addr);
        let (ip, ip_width) = bits(ip);
        if width != ip_width {
            return false;
        }
        let shift = width - self.prefix;
        shift >= width || (net >> shift) == (ip >> shift)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(de::Error::custom)
    }
}

/// The agent's whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sensor: SensorConfig,
    pub capture: CaptureConfig,
    pub flow: FlowConfig,
    pub detect: DetectConfig,
    pub labels: crate::labels::LabelConfig,
    pub intel: crate::intel::IntelConfig,
    pub alarm: AlarmConfig,
    pub output: OutputConfig,
    /// The durable spool between the detectors and the sinks.
    pub spool: crate::sink::delivery::SpoolSection,
    /// Where alarms are delivered (`[[sinks]]`); none: JSON lines to stdout or `output.alarms`.
    pub sinks: Vec<crate::sink::transport::SinkConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// Interfaces to attach to; empty means the interface of the default route.
    pub interfaces: Vec<String>,
    /// Also count traffic the host sends itself (TC egress).
    pub egress: bool,
    /// How often the kernel flow table is read and the detectors run.
    pub poll_interval: HumanDuration,
    /// Capacity of the kernel flow map.
    pub max_kernel_flows: u32,
    /// How often the status line is refreshed on a terminal.
    pub status_interval: HumanDuration,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            interfaces: Vec::new(),
            egress: false,
            poll_interval: HumanDuration::secs(10),
            max_kernel_flows: crate::datapath::DEFAULT_MAX_FLOWS,
            status_interval: HumanDuration::secs(5),
        }
    }
}

/// What the datapath copies to the agent for the payload classifiers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Payload packets copied per sender of each new TCP/UDP flow (0: none; at most 255).
    pub payload_packets: u32,
    /// Bytes copied of each (at most 512).
    pub payload_bytes: u32,
    /// Bytes copied of every DNS message, UDP and TCP port 53 (0: off; at most 512).
    pub dns_bytes: u32,
    /// Ring buffer between the datapath and the agent, bytes (a power of two).
    pub ring_bytes: u32,
    /// Payload messages traced per watched flow between two polls (0: no message tracing).
    pub trace_messages: u32,
    /// Ring buffer for traced messages, bytes (a power of two; 64 bytes per message).
    pub trace_ring_bytes: u32,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            payload_packets: 4,
            payload_bytes: 256,
            dns_bytes: 512,
            ring_bytes: crate::datapath::DEFAULT_RING_BYTES,
            trace_messages: 64,
            trace_ring_bytes: crate::datapath::DEFAULT_TRACE_RING_BYTES,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Idle time after which an established TCP flow ends (Zeek uses 5 min, Suricata 10 min;
    /// real pool sessions go quiet for 195 s).
    pub tcp_idle_timeout: HumanDuration,
    /// Time a TCP flow is kept after FIN from both sides or RST, for late packets.
    pub tcp_closed_grace: HumanDuration,
    /// Idle time after which a TCP flow that never completed its handshake ends.
    pub tcp_unestablished_timeout: HumanDuration,
    pub udp_idle_timeout: HumanDuration,
    /// Idle timeout for ICMP and every other protocol.
    pub other_idle_timeout: HumanDuration,
    /// A new flow continues a conversation (same client, server, server port, transport)
    /// that ended at most this long ago: reconnects do not restart the clock.
    pub conversation_gap: HumanDuration,
    /// Flows tracked at most; new flows beyond it are dropped and counted.
    pub max_flows: usize,
    /// Conversations tracked at most; flows of new conversations beyond it are dropped and
    /// counted.
    pub max_conversations: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            tcp_idle_timeout: HumanDuration::secs(15 * 60),
            tcp_closed_grace: HumanDuration::secs(30),
            tcp_unestablished_timeout: HumanDuration::secs(60),
            udp_idle_timeout: HumanDuration::secs(180),
            other_idle_timeout: HumanDuration::secs(180),
            conversation_gap: HumanDuration::secs(10 * 60),
            max_flows: 1_000_000,
            max_conversations: 1_000_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Do not evaluate conversations whose server is a multicast or broadcast address
    /// (neighbour discovery, mDNS, SSDP): long-lived by design, never a session.
    pub skip_multicast: bool,
    pub long_flow: LongFlowConfig,
    pub quiet_long_flow: QuietLongFlowConfig,
    pub periodic_flow: PeriodicFlowConfig,
    pub encrypted_mining: EncryptedMiningConfig,
    pub mining_protocol: RuleConfig,
    pub blockchain_p2p: RuleConfig,
    pub mining_infrastructure: RuleConfig,
    pub watch: WatchConfig,
}

/// Which flows have their payload messages timed (time, direction, size) for periodicity and
/// size regularity inside one flow: long, low-rate ones, as a miner's pool session is. Live,
/// the kernel traces watched flows only; replay applies the same choice to the capture.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// A flow is watched once its conversation has lasted this long...
    pub after: HumanDuration,
    /// ...while averaging at most this many bytes per second (both directions).
    pub max_bytes_per_sec: f64,
    /// Flows watched at once, at most (also the kernel watch map's capacity).
    pub max_flows: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            after: HumanDuration::secs(5 * 60),
            max_bytes_per_sec: 2000.0,
            max_flows: 4096,
        }
    }
}

/// Encrypted (or unrecognised) pool sessions: TLS or unknown payload, long or quiet, regular
/// message sizes, SNI keywords or a miner's JA4, fused into one score with every contribution
/// in the evidence (`detect/encrypted_mining.rs` explains the score).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptedMiningConfig {
    pub enabled: bool,
    pub severity: u8,
    /// Fused score (0-1) from which the rule fires.
    pub min_score: f64,
    /// A conversation counts as long from this duration (pool sessions last hours; web
    /// sessions seldom last 30 minutes at a low rate).
    pub min_duration: HumanDuration,
    /// A conversation that is quiet (see `quiet_max_bytes_per_sec`) is looked at from this
    /// duration, before it is long: a rate measured over less says nothing.
    pub quiet_min_duration: HumanDuration,
    /// Average rate (bytes/s, both directions) up to which a conversation counts as quiet (real
    /// pool sessions: 5-140 B/s).
    pub quiet_max_bytes_per_sec: f64,
    /// Messages per direction needed before size regularity and cadence count (4-64).
    pub min_messages: usize,
    /// SNI labels containing one of these count as a pool name (case-insensitive).
    pub sni_keywords: Vec<String>,
    /// JA4 fingerprints of known mining clients (whole `a_b_c`, or an `a_b` prefix); none by
    /// default: no verified public list exists, add the ones of your own captures.
    pub miner_ja4: Vec<String>,
    /// Server ports where TLS is ordinary web traffic; TLS on any other port contributes.
    pub web_ports: Vec<u16>,
    /// Minimum evidence: the rule fires only when at least one of these contributions reached
    /// `min_evidence_strength`. Identity evidence by default: long, quiet, size-regular TLS with
    /// a 60 s beat is also every MQTT-over-TLS device and push channel.
    pub min_evidence: Vec<String>,
    /// Strength (0-1) from which a contribution listed in `min_evidence` counts as present.
    pub min_evidence_strength: f64,
    /// Weight (0-1) of each contribution in the fused score.
    pub weights: EncryptedMiningWeights,
}

impl Default for EncryptedMiningConfig {
    fn default() -> Self {
        EncryptedMiningConfig {
            enabled: true,
            severity: 7,
            min_score: 0.6,
            min_duration: HumanDuration::secs(30 * 60),
            quiet_min_duration: HumanDuration::secs(10 * 60),
            quiet_max_bytes_per_sec: 200.0,
            min_messages: 8,
            sni_keywords: [
                "pool",
                "mine",
                "mining",
                "miner",
                "stratum",
                "xmr",
                "monero",
                "nicehash",
                "hashvault",
                "nanopool",
                "2miners",
                "f2pool",
                "ethermine",
                "herominers",
                "supportxmr",
                "moneroocean",
                "minexmr",
                "c3pool",
                "unmineable",
                "zpool",
            ]
            .map(String::from)
            .to_vec(),
            miner_ja4: Vec::new(),
            web_ports: vec![443, 8443],
            min_evidence: vec!["sni_keyword".into(), "miner_ja4".into()],
            min_evidence_strength: 0.5,
            weights: EncryptedMiningWeights::default(),
        }
    }
}

/// Weights of the `encrypted_mining` contributions. Identity evidence weighs most; behaviour
/// alone (everything but `sni_keyword` and `miner_ja4`) adds up to at most 0.70.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptedMiningWeights {
    /// A pool keyword in an SNI label.
    pub sni_keyword: f64,
    /// The client's JA4 is on `miner_ja4`.
    pub miner_ja4: f64,
    /// The ClientHello offered no ALPN (miners' TLS clients; browsers always send one): weak.
    pub no_alpn: f64,
    /// TLS to a port not on `web_ports`.
    pub tls_on_non_web_port: f64,
    /// Duration relative to `min_duration`.
    pub long: f64,
    /// Average rate at or under `quiet_max_bytes_per_sec`.
    pub quiet: f64,
    /// The client's messages have (nearly) constant sizes.
    pub client_size_regularity: f64,
    /// The server's messages have (nearly) constant sizes.
    pub server_size_regularity: f64,
    /// XMRig habits: 60 s client keepalive, ~55 s server job rebroadcast, ~100 min donation.
    pub miner_cadence: f64,
}

impl Default for EncryptedMiningWeights {
    fn default() -> Self {
        EncryptedMiningWeights {
            sni_keyword: 0.30,
            miner_ja4: 0.30,
            no_alpn: 0.05,
            tls_on_non_web_port: 0.10,
            long: 0.10,
            quiet: 0.10,
            client_size_regularity: 0.10,
            server_size_regularity: 0.10,
            miner_cadence: 0.15,
        }
    }
}

/// Periodicity across connections (RITA-style) and inside one flow.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeriodicFlowConfig {
    pub enabled: bool,
    /// Timestamps needed before scoring (RITA needs at least 4).
    pub min_samples: usize,
    /// Overall score (0-1) from which the rule fires.
    pub min_score: f64,
    pub severity: u8,
}

impl Default for PeriodicFlowConfig {
    fn default() -> Self {
        PeriodicFlowConfig {
            enabled: true,
            min_samples: 8,
            min_score: 0.8,
            severity: 4,
        }
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            skip_multicast: true,
            long_flow: LongFlowConfig::default(),
            quiet_long_flow: QuietLongFlowConfig::default(),
            periodic_flow: PeriodicFlowConfig::default(),
            encrypted_mining: EncryptedMiningConfig::default(),
            watch: WatchConfig::default(),
            mining_protocol: RuleConfig {
                enabled: true,
                severity: 8,
            },
            blockchain_p2p: RuleConfig {
                enabled: true,
                severity: 5,
            },
            mining_infrastructure: RuleConfig {
                enabled: true,
                severity: 7,
            },
        }
    }
}

/// A rule with no thresholds of its own.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub enabled: bool,
    /// Severity (0-10) of its alarms.
    pub severity: u8,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            enabled: true,
            severity: 5,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LongFlowConfig {
    pub enabled: bool,
    /// A conversation observed this long raises the alarm (Cisco Secure Network Analytics: 9h).
    pub after: HumanDuration,
    /// Later rungs: each one reached raises the same alarm's severity by one (Zeek's
    /// long-connections ladder goes 10m, 30m, 1h, 12h, 24h, 3d). Rungs at or below `after`
    /// are ignored.
    pub ladder: Vec<HumanDuration>,
    /// Severity (0-10) at the first rung.
    pub severity: u8,
}

impl Default for LongFlowConfig {
    fn default() -> Self {
        LongFlowConfig {
            enabled: true,
            after: HumanDuration::secs(9 * 3600),
            ladder: vec![
                HumanDuration::secs(12 * 3600),
                HumanDuration::secs(24 * 3600),
                HumanDuration::secs(72 * 3600),
            ],
            severity: 3,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuietLongFlowConfig {
    pub enabled: bool,
    pub after: HumanDuration,
    /// Average over the conversation, both directions (real pool sessions: 5-140 B/s).
    pub max_bytes_per_sec: f64,
    pub severity: u8,
}

impl Default for QuietLongFlowConfig {
    fn default() -> Self {
        QuietLongFlowConfig {
            enabled: true,
            after: HumanDuration::secs(9 * 3600),
            max_bytes_per_sec: 200.0,
            severity: 5,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmConfig {
    /// An open alarm whose severity did not change is re-sent (`updated`) at most this often.
    pub suppression_window: HumanDuration,
    /// Conversations that never raise alarms.
    pub allow: Vec<AllowRule>,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            suppression_window: HumanDuration::secs(3600),
            allow: Vec::new(),
        }
    }
}

/// An allowlist entry: matches when either endpoint is in `cidr` (if given) and the server
/// port is `port` (if given), for `rules` (all rules if empty).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub cidr: Option<Cidr>,
    pub port: Option<u16>,
    #[serde(default)]
    pub rules: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Where alarms go as JSON lines: a file path, or stdout when unset or "-".
    pub alarms: Option<PathBuf>,
}

/// The rule ids an allowlist entry may name.
pub const RULE_IDS: &[&str] = &[
    "long_flow",
    "quiet_long_flow",
    "periodic_flow",
    "encrypted_mining",
    "mining_protocol",
    "blockchain_p2p",
    "mining_infrastructure",
];

impl Config {
    /// How to load the datapath for this configuration.
    pub fn load_options(&self) -> crate::datapath::LoadOptions {
        crate::datapath::LoadOptions {
            max_flows: self.sensor.max_kernel_flows,
            settings: sensor_common::DatapathSettings {
                payload_packets: self.capture.payload_packets,
                payload_bytes: self.capture.payload_bytes,
                dns_bytes: self.capture.dns_bytes,
                watch_gen: 0,
            },
            ring_bytes: self.capture.ring_bytes,
            max_watched_flows: u32::try_from(self.detect.watch.max_flows).unwrap_or(u32::MAX),
            trace_ring_bytes: self.capture.trace_ring_bytes,
        }
    }
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

/// Loads `file` (if any), applies `--set` overrides in order, and validates the result.
pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Config, ConfigError> {
    let (text, origin) = match file {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| ConfigError {
                origin: p.display().to_string(),
                key: String::new(),
                message: e.to_string(),
            })?,
            p.display().to_string(),
        ),
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
        insert(&mut table, key, parse_value(value.trim())).map_err(|message| ConfigError {
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
    validate(&cfg).map_err(|(key, message)| {
        let origin = match sets
            .iter()
            .rev()
            .find(|s| s.split_once('=').is_some_and(|(k, _)| k.trim() == key))
        {
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
/// otherwise the bare text as a string (`1h`, `eth0`).
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
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
    let origin = match e.span() {
        Some(span) => format!(
            "{origin}:{}",
            text[..span.start.min(text.len())].matches('\n').count() + 1
        ),
        None => origin.to_string(),
    };
    ConfigError {
        origin,
        key,
        message: e.message().replace('\n', " "),
    }
}

/// The line defining `section.key` in a TOML text, by scanning `[section]` headers.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = h.trim_matches(['[', ']']).trim().to_string();
            continue;
        }
        if current == section && l.split('=').next().is_some_and(|k| k.trim() == key) {
            return Some(i + 1);
        }
    }
    None
}

/// Checks what types alone cannot; returns (key, problem).
fn validate(c: &Config) -> Result<(), (String, String)> {
    let positive = [
        ("sensor.poll_interval", c.sensor.poll_interval),
        ("sensor.status_interval", c.sensor.status_interval),
        ("flow.tcp_idle_timeout", c.flow.tcp_idle_timeout),
        ("flow.udp_idle_timeout", c.flow.udp_idle_timeout),
        ("flow.other_idle_timeout", c.flow.other_idle_timeout),
        (
            "flow.tcp_unestablished_timeout",
            c.flow.tcp_unestablished_timeout,
        ),
        ("detect.long_flow.after", c.detect.long_flow.after),
        (
            "detect.quiet_long_flow.after",
            c.detect.quiet_long_flow.after,
        ),
    ];
    for (key, d) in positive {
        if d.0.is_zero() {
            return Err((
                key.into(),
                format!("must be longer than 0 ({DURATION_HINT})"),
            ));
        }
    }
    for (key, v, max) in [
        ("capture.payload_packets", c.capture.payload_packets, 255),
        (
            "capture.payload_bytes",
            c.capture.payload_bytes,
            sensor_common::PAYLOAD_MAX as u32,
        ),
        (
            "capture.dns_bytes",
            c.capture.dns_bytes,
            sensor_common::PAYLOAD_MAX as u32,
        ),
    ] {
        if v > max {
            return Err((key.into(), format!("{v} is out of range: 0-{max}")));
        }
    }
    for (key, v) in [
        ("capture.ring_bytes", c.capture.ring_bytes),
        ("capture.trace_ring_bytes", c.capture.trace_ring_bytes),
    ] {
        if !v.is_power_of_two() || v < 4096 {
            return Err((
                key.into(),
                format!("{v} must be a power of two of at least 4096"),
            ));
        }
    }
    if c.detect.watch.max_flows == 0 || c.detect.watch.max_flows > 1 << 20 {
        return Err((
            "detect.watch.max_flows".into(),
            format!("{} is out of range: 1-1048576", c.detect.watch.max_flows),
        ));
    }
    for (key, v) in [
        (
            "detect.watch.max_bytes_per_sec",
            c.detect.watch.max_bytes_per_sec,
        ),
        (
            "detect.encrypted_mining.quiet_max_bytes_per_sec",
            c.detect.encrypted_mining.quiet_max_bytes_per_sec,
        ),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err((
                key.into(),
                "must be a number of bytes per second >= 0".into(),
            ));
        }
    }
    for (key, v) in [
        (
            "detect.periodic_flow.min_score",
            c.detect.periodic_flow.min_score,
        ),
        (
            "detect.encrypted_mining.min_score",
            c.detect.encrypted_mining.min_score,
        ),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err((key.into(), format!("{v} is out of range: 0-1")));
        }
    }
    validate_encrypted_mining(&c.detect.encrypted_mining)?;
    if !(c.detect.quiet_long_flow.max_bytes_per_sec.is_finite()
        && c.detect.quiet_long_flow.max_bytes_per_sec >= 0.0)
    {
        return Err((
            "detect.quiet_long_flow.max_bytes_per_sec".into(),
            "must be a number of bytes per second >= 0".into(),
        ));
    }
    for (i, sink) in c.sinks.iter().enumerate() {
        if let Err(e) = sink.validate() {
            return Err((format!("sinks[{i}]"), e.to_string()));
        }
    }
    if let Err(e) = c.spool.spool_config().validate() {
        return Err(("spool".into(), e.to_string()));
    }
    if let Err(errors) = c.intel.validate() {
        let first = errors.into_iter().next().unwrap_or_default();
        let (key, message) = first.split_once(": ").unwrap_or(("intel", first.as_str()));
        return Err((key.to_string(), message.to_string()));
    }
    for (key, sev) in [
        ("detect.long_flow.severity", c.detect.long_flow.severity),
        (
            "detect.quiet_long_flow.severity",
            c.detect.quiet_long_flow.severity,
        ),
        (
            "detect.mining_protocol.severity",
            c.detect.mining_protocol.severity,
        ),
        (
            "detect.blockchain_p2p.severity",
            c.detect.blockchain_p2p.severity,
        ),
        (
            "detect.mining_infrastructure.severity",
            c.detect.mining_infrastructure.severity,
        ),
    ] {
        if sev > 10 {
            return Err((
                key.into(),
                format!("{sev} is out of range: severity is 0-10"),
            ));
        }
    }
    if c.sensor.max_kernel_flows == 0 || c.flow.max_flows == 0 || c.flow.max_conversations == 0 {
        return Err((
            "flow.max_flows".into(),
            "flow capacities must be at least 1".into(),
        ));
    }
    for rule in &c.alarm.allow {
        if rule.cidr.is_none() && rule.port.is_none() {
            return Err((
                "alarm.allow".into(),
                "an allow entry needs a cidr, a port, or both".into(),
            ));
        }
        for r in &rule.rules {
            if !RULE_IDS.contains(&r.as_str()) {
                return Err((
                    "alarm.allow.rules".into(),
                    format!("unknown rule {r:?}; accepted: {}", RULE_IDS.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// The `detect.encrypted_mining` keys that types alone cannot check.
fn validate_encrypted_mining(e: &EncryptedMiningConfig) -> Result<(), (String, String)> {
    const KEY: &str = "detect.encrypted_mining";
    if e.severity > 10 {
        return Err((
            format!("{KEY}.severity"),
            format!("{} is out of range: severity is 0-10", e.severity),
        ));
    }
    for (key, d) in [
        ("min_duration", e.min_duration),
        ("quiet_min_duration", e.quiet_min_duration),
    ] {
        if d.0.is_zero() {
            return Err((
                format!("{KEY}.{key}"),
                format!("must be longer than 0 ({DURATION_HINT})"),
            ));
        }
    }
    let max = crate::labels::MESSAGE_SAMPLES;
    if !(4..=max).contains(&e.min_messages) {
        return Err((
            format!("{KEY}.min_messages"),
            format!(
                "{} is out of range: 4-{max} (messages kept per direction)",
                e.min_messages
            ),
        ));
    }
    let w = &e.weights;
    for (key, v) in [
        ("min_evidence_strength", e.min_evidence_strength),
        ("weights.sni_keyword", w.sni_keyword),
        ("weights.miner_ja4", w.miner_ja4),
        ("weights.no_alpn", w.no_alpn),
        ("weights.tls_on_non_web_port", w.tls_on_non_web_port),
        ("weights.long", w.long),
        ("weights.quiet", w.quiet),
        ("weights.client_size_regularity", w.client_size_regularity),
        ("weights.server_size_regularity", w.server_size_regularity),
        ("weights.miner_cadence", w.miner_cadence),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err((format!("{KEY}.{key}"), format!("{v} is out of range: 0-1")));
        }
    }
    let names = crate::detect::encrypted_mining::CONTRIBUTIONS;
    for n in &e.min_evidence {
        if !names.contains(&n.as_str()) {
            return Err((
                format!("{KEY}.min_evidence"),
                format!("unknown contribution {n:?}; accepted: {}", names.join(", ")),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("192.168.2.0/24").expect("cidr");
        assert!(c.contains("192.168.2.21".parse().expect("ip")));
        assert!(!c.contains("192.168.3.1".parse().expect("ip")));
        assert!(c.contains("::ffff:192.168.2.9".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("any")
            .contains("8.8.8.8".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
    }
}
