//! The `[[sinks]]` configuration of the transports: one table per sink, tagged by `kind`.
//!
//! Why: a sink entry is the only place an operator says where alarms go, so every mistake must
//! be caught when the file is loaded, with the key and the accepted values in the message —
//! unknown keys are errors (a misspelt `ca_file` must not silently fall back to the public
//! roots), addresses are parsed here, and cross-field rules are checked by
//! [`SinkConfig::validate`], which [`super::build`] also calls.
//!
//! What must never happen: a secret (HEC token, webhook URL path or query, header value) in
//! `Debug` output or in the derived sink name; a TLS option silently ignored (TLS options on a
//! `tcp://` or `udp://` address are errors, not no-ops).
//!
//! Not here: spool/queue settings (size, directory, backoff) belong to the integrator's sink
//! worker; it adds them to these tables (or next to them) itself. `format` deserialises
//! straight into [`Format`]: an unknown name fails the load with the accepted names, it never
//! falls back to JSON.
//!
//! ```toml
//! [[sinks]]
//! kind = "syslog"
//! address = "tcp://127.0.0.1:6514"
//! format = "cef"
//! framing = "octet-counted"
//! ```

use std::{collections::BTreeMap, fmt, net::Ipv6Addr, path::PathBuf, str::FromStr};

use serde::{de, Deserialize, Deserializer};

use crate::{sink::format::Format, units::HumanDuration};

/// The alarm formats a sink may name, derived from [`Format::ALL`] so the list shown to users
/// can never drift from what the loader accepts.
pub const FORMATS: &[&str] = &{
    let mut names = [""; Format::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Format::ALL[i].as_str();
        i += 1;
    }
    names
};

/// One `[[sinks]]` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    Stdout(StdoutConfig),
    File(FileConfig),
    Syslog(SyslogConfig),
    Hec(HecConfig),
    Webhook(WebhookConfig),
    Kafka(super::kafka::KafkaConfig),
}

/// `kind = "stdout"`: LF-delimited messages on standard output.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Sink name in logs and metrics; default `stdout`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub format: Option<Format>,
}

/// `kind = "file"`: LF-delimited messages appended to `path`, rotated by size to `path.1` ...
/// `path.<keep>`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Default `file:<path>`.
    #[serde(default)]
    pub name: Option<String>,
    pub path: PathBuf,
    #[serde(default)]
    pub format: Option<Format>,
    /// Rotate before a message would take the file past this size; no rotation when absent.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Rotated files kept (`path.1` is the newest); 0 = the file is just truncated.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_keep() -> u32 {
    5
}

/// `kind = "syslog"`: RFC 5424 syslog over UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// Default `syslog:<address>`.
    #[serde(default)]
    pub name: Option<String>,
    /// `udp://host:port`, `tcp://host:port` or `tls://host:port`; IPv6 in brackets.
    pub address: SyslogAddress,
    #[serde(default)]
    pub format: Option<Format>,
    /// TCP only (`octet-counted`, the default, or `lf`); TLS is always octet-counted.
    #[serde(default)]
    pub framing: Option<Framing>,
    /// TLS: PEM file of the CA certificates the receiver's certificate must chain to; Mozilla's
    /// roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS: PEM client certificate chain for mutual TLS (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// TLS: PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// TLS: the name the receiver's certificate must carry; default the address host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Syslog facility (name such as `local0`, or 0..=23); default `local0`.
    #[serde(default)]
    pub facility: Option<Facility>,
    /// Syslog severity of every message (name such as `warning`, or 0..=7); default `warning`.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// RFC 5424 APP-NAME; default `sensor-agent`.
    #[serde(default)]
    pub app_name: Option<String>,
    /// `rfc5424` (default) prefixes each message with a syslog header; `none` sends the
    /// rendered message as is (when the format already carries a header).
    #[serde(default)]
    pub header: Option<SyslogHeader>,
    /// UDP: datagrams are cut to this many bytes (default 2048; 480..=65507).
    #[serde(default)]
    pub max_datagram: Option<usize>,
    /// Bound on one send: connect, TLS handshake and writes; default 10s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// `kind = "hec"`: Splunk HTTP Event Collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecConfig {
    /// Default `hec:<scheme>://<host>:<port>`.
    #[serde(default)]
    pub name: Option<String>,
    /// E.g. `https://splunk.example:8088/services/collector/event`.
    pub url: String,
    /// HEC token, sent as `Authorization: Splunk <token>`.
    pub token: Secret,
    /// Only `json`: HEC events are JSON.
    #[serde(default, deserialize_with = "de_json_format")]
    pub format: Option<Format>,
    /// Wait for indexer acknowledgement before reporting messages taken.
    #[serde(default)]
    pub ack: bool,
    /// How long to poll for an acknowledgement; default 60s.
    #[serde(default)]
    pub ack_timeout: Option<HumanDuration>,
    /// PEM CA file for an `https` URL; Mozilla's roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Default `_json`.
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// Largest request body; a bigger batch is split (default 1000000).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Bound on each HTTP request; default 10s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// `kind = "webhook"`: POST of a JSON array of the batch.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Default `webhook:<scheme>://<host>:<port>` (the path may hold a secret and is left out).
    #[serde(default)]
    pub name: Option<String>,
    pub url: String,
    /// Only `json`.
    #[serde(default, deserialize_with = "de_json_format")]
    pub format: Option<Format>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Extra request headers (e.g. `Authorization`); values are secrets.
    #[serde(default)]
    pub headers: WebhookHeaders,
    /// Largest request body; a bigger batch is split (default 1000000).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Bound on each HTTP request; default 10s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

pub type WebhookHeaders = BTreeMap<String, Secret>;

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &redacted_origin(&self.url))
            .field("format", &self.format)
            .field("ca_file", &self.ca_file)
            .field("headers", &self.headers)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A string that must not be logged: `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// TCP syslog framing (RFC 6587).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// `LEN SP MSG` (RFC 6587 section 3.4.1); the only framing RFC 5425 allows over TLS.
    OctetCounted,
    /// `MSG LF` (RFC 6587 section 3.4.2, "non-transparent framing").
    Lf,
}

/// Whether the syslog transport writes a header in front of each rendered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogHeader {
    /// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - - MSG`.
    Rfc5424,
    /// The rendered message is sent as is.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Udp,
    Tcp,
    Tls,
}

/// A parsed syslog address: scheme, host (a name, an IPv4 address, or an IPv6 address kept
/// without its brackets) and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogAddress {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

const ADDRESS_HINT: &str =
    "expected udp://host:port, tcp://host:port or tls://host:port, IPv6 in brackets";

impl FromStr for SyslogAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid syslog address {s:?}: {why} ({ADDRESS_HINT})");
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "udp" => Scheme::Udp,
            "tcp" => Scheme::Tcp,
            "tls" => Scheme::Tls,
            _ => return Err(bad(&format!("unsupported scheme {scheme:?}"))),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("only host:port may follow the scheme"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            ip.parse::<Ipv6Addr>()
                .map_err(|_| bad(&format!("{ip:?} is not an IPv6 address")))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("missing :port"))?;
            (ip, port)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
            if host.contains(':') {
                return Err(bad(
                    "IPv6 addresses must be in brackets, e.g. tcp://[::1]:6514",
                ));
            }
            let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
            if host.is_empty() || !host.chars().all(valid) {
                return Err(bad(&format!("invalid host {host:?}")));
            }
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad(&format!("invalid port {port:?}"))),
        };
        Ok(SyslogAddress {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for SyslogAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Udp => "udp",
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for SyslogAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

const FACILITIES: &[&str] = &[
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

const SEVERITIES: &[&str] = &[
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// A syslog facility code, 0..=23 (written as a name or the number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facility(pub u8);

/// A syslog severity code, 0..=7 (written as a name or the number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Severity(pub u8);

impl Facility {
    pub const LOCAL0: Facility = Facility(16);
}

impl Severity {
    pub const WARNING: Severity = Severity(4);
}

/// Deserializes a syslog code from one of `names` (index = code) or the number itself.
fn de_code<'de, D: Deserializer<'de>>(
    d: D,
    what: &'static str,
    names: &'static [&'static str],
) -> Result<u8, D::Error> {
    struct V(&'static str, &'static [&'static str]);
    impl de::Visitor<'_> for V {
        type Value = u8;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a syslog {} name or 0..={}", self.0, self.1.len() - 1)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u8, E> {
            match u8::try_from(v) {
                Ok(c) if usize::from(c) < self.1.len() => Ok(c),
                _ => Err(E::custom(format!(
                    "invalid syslog {} {v}: expected 0..={} or one of {}",
                    self.0,
                    self.1.len() - 1,
                    self.1.join(", ")
                ))),
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u8, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u8, E> {
            let want = v.trim().to_ascii_lowercase();
            let alias = match want.as_str() {
                "warn" => "warning",
                "error" => "err",
                "emergency" => "emerg",
                "critical" => "crit",
                "informational" => "info",
                other => other,
            };
            self.1
                .iter()
                .position(|n| *n == alias)
                .map(|i| i as u8)
                .ok_or_else(|| {
                    E::custom(format!(
                        "unknown syslog {} {v:?}: expected one of {} (or 0..={})",
                        self.0,
                        self.1.join(", "),
                        self.1.len() - 1
                    ))
                })
        }
    }
    d.deserialize_any(V(what, names))
}

impl<'de> Deserialize<'de> for Facility {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_code(d, "facility", FACILITIES).map(Facility)
    }
}

impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_code(d, "severity", SEVERITIES).map(Severity)
    }
}

/// HEC and webhook bodies are JSON: any other (known) format is refused by name. An unknown
/// name fails inside `Format::deserialize` with serde's list of the accepted ones.
fn de_json_format<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Format>, D::Error> {
    let f = Format::deserialize(d)?;
    if f != Format::Json {
        return Err(de::Error::custom(format!(
            "format {:?} is not supported by hec and webhook sinks: expected \"json\"",
            f.as_str()
        )));
    }
    Ok(Some(f))
}

/// `scheme://host[:port]` of a URL, without user info, path or query (which may hold
/// secrets); the input itself when it does not parse.
pub(crate) fn redacted_origin(url: &str) -> String {
    match url.parse::<ureq::http::Uri>() {
        Ok(u) => match (u.scheme_str(), u.host()) {
            (Some(s), Some(h)) => match u.port_u16() {
                Some(p) => format!("{s}://{h}:{p}"),
                None => format!("{s}://{h}"),
            },
            _ => "<invalid url>".to_string(),
        },
        Err(_) => "<invalid url>".to_string(),
    }
}

/// Checks an HTTP sink URL: http or https, a host, no user info.
fn check_url(kind: &str, url: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!(
            "{kind} url {}: {why} (expected http(s)://host[:port]/path)",
            redacted_origin(url)
        )
    };
    let u: ureq::http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    match u.scheme_str() {
        Some("https") | Some("http") => {}
        _ => return Err(bad("scheme must be http or https")),
    }
    let auth = u.authority().ok_or_else(|| bad("missing host"))?;
    if auth.as_str().contains('@') {
        return Err(bad("user info in the URL is not supported"));
    }
    if u.host().is_none_or(str::is_empty) {
        return Err(bad("missing host"));
    }
    Ok(())
}

impl SinkConfig {
    /// `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::File(_) => "file",
            SinkConfig::Syslog(_) => "syslog",
            SinkConfig::Hec(_) => "hec",
            SinkConfig::Webhook(_) => "webhook",
            SinkConfig::Kafka(_) => "kafka",
        }
    }

    /// The configured name, or one derived from the kind and the destination (never holding a
    /// secret).
    pub fn name(&self) -> String {
        let (given, derived) = match self {
            SinkConfig::Stdout(c) => (&c.name, "stdout".to_string()),
            SinkConfig::File(c) => (&c.name, format!("file:{}", c.path.display())),
            SinkConfig::Syslog(c) => (&c.name, format!("syslog:{}", c.address)),
            SinkConfig::Hec(c) => (&c.name, format!("hec:{}", redacted_origin(&c.url))),
            SinkConfig::Webhook(c) => (&c.name, format!("webhook:{}", redacted_origin(&c.url))),
            SinkConfig::Kafka(c) => (&c.name, c.derived_name()),
        };
        given.clone().unwrap_or(derived)
    }

    /// What the sink publishes: alarms, or (Kafka only) flow records.
    pub fn stream(&self) -> super::kafka::Stream {
        match self {
            SinkConfig::Kafka(c) => c.stream,
            _ => super::kafka::Stream::Alarms,
        }
    }

    /// The configured format, if any (absent means JSON).
    pub fn format_kind(&self) -> Option<Format> {
        match self {
            SinkConfig::Stdout(c) => c.format,
            SinkConfig::File(c) => c.format,
            SinkConfig::Syslog(c) => c.format,
            SinkConfig::Hec(c) => c.format,
            SinkConfig::Webhook(c) => c.format,
            SinkConfig::Kafka(c) => c.format,
        }
    }

    /// The rules one field at a time cannot express. The message starts with the sink name.
    pub fn validate(&self) -> Result<(), String> {
        let name = self.name();
        let r = match self {
            SinkConfig::Stdout(_) => Ok(()),
            SinkConfig::File(c) => validate_file(c),
            SinkConfig::Syslog(c) => validate_syslog(c),
            SinkConfig::Hec(c) => validate_hec(c),
            SinkConfig::Webhook(c) => validate_webhook(c),
            SinkConfig::Kafka(c) => c.validate(),
        };
        if let Some(n) = match self {
            SinkConfig::Stdout(c) => &c.name,
            SinkConfig::File(c) => &c.name,
            SinkConfig::Syslog(c) => &c.name,
            SinkConfig::Hec(c) => &c.name,
            SinkConfig::Webhook(c) => &c.name,
            SinkConfig::Kafka(c) => &c.name,
        } {
            if n.trim().is_empty() || n.chars().any(char::is_control) {
                return Err(format!("sink name {n:?}: must be non-empty printable text"));
            }
        }
        r.map_err(|e| format!("sink {name}: {e}"))
    }
}

fn validate_file(c: &FileConfig) -> Result<(), String> {
    if c.path.as_os_str().is_empty() {
        return Err("path is empty".into());
    }
    if c.max_bytes == Some(0) {
        return Err("max_bytes must be at least 1".into());
    }
    if c.keep > 1000 {
        return Err(format!("keep = {} is too many (at most 1000)", c.keep));
    }
    Ok(())
}

/// RFC 5426 section 3.2: receivers must take 480-byte IPv4 datagrams (1180 over IPv6) and should
/// take 2048; 65507 is the largest UDP payload over IPv4.
pub const DEFAULT_MAX_DATAGRAM: usize = 2048;
pub const MIN_MAX_DATAGRAM: usize = 480;
pub const MAX_MAX_DATAGRAM: usize = 65_507;

fn validate_syslog(c: &SyslogConfig) -> Result<(), String> {
    let tls_only = [
        ("ca_file", c.ca_file.is_some()),
        ("client_cert", c.client_cert.is_some()),
        ("client_key", c.client_key.is_some()),
        ("server_name", c.server_name.is_some()),
    ];
    match c.address.scheme {
        Scheme::Tls => {
            if c.framing == Some(Framing::Lf) {
                return Err(
                    "framing = \"lf\" is not allowed over tls:// (RFC 5425 requires \
                            octet-counting)"
                        .into(),
                );
            }
            if c.client_cert.is_some() != c.client_key.is_some() {
                return Err("client_cert and client_key must be given together".into());
            }
        }
        Scheme::Tcp | Scheme::Udp => {
            if let Some((k, _)) = tls_only.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{k} only applies to tls:// addresses, not {}",
                    c.address
                ));
            }
        }
    }
    if c.address.scheme == Scheme::Udp && c.framing.is_some() {
        return Err("framing only applies to tcp:// and tls:// addresses".into());
    }
    if c.address.scheme != Scheme::Udp && c.max_datagram.is_some() {
        return Err("max_datagram only applies to udp:// addresses".into());
    }
    if let Some(m) = c.max_datagram {
        if !(MIN_MAX_DATAGRAM..=MAX_MAX_DATAGRAM).contains(&m) {
            return Err(format!(
                "max_datagram = {m}: expected {MIN_MAX_DATAGRAM}..={MAX_MAX_DATAGRAM}"
            ));
        }
    }
    if let Some(a) = &c.app_name {
        // RFC 5424 APP-NAME: 1*48 PRINTUSASCII (33..=126).
        if a.is_empty() || a.len() > 48 || !a.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(format!(
                "app_name {a:?}: expected 1 to 48 printable ASCII characters without spaces"
            ));
        }
    }
    if let Some(n) = &c.server_name {
        rustls_pki_types::ServerName::try_from(n.as_str())
            .map_err(|_| format!("server_name {n:?} is not a DNS name or IP address"))?;
    }
    check_timeout(c.timeout)?;
    Ok(())
}

fn check_timeout(t: Option<HumanDuration>) -> Result<(), String> {
    match t {
        Some(t) if t.0.as_millis() < 10 => Err(format!("timeout {t} is too short (at least 10ms)")),
        _ => Ok(()),
    }
}

fn check_body(m: Option<usize>) -> Result<(), String> {
    match m {
        Some(m) if m < 1024 => Err(format!("max_body_bytes = {m} is too small (at least 1024)")),
        _ => Ok(()),
    }
}

fn validate_hec(c: &HecConfig) -> Result<(), String> {
    check_url("hec", &c.url)?;
    if c.token.0.trim().is_empty() || c.token.0.chars().any(|ch| ch.is_control()) {
        return Err("token must be non-empty printable text".into());
    }
    if c.ack && super::http::ack_url(&c.url).is_none() {
        return Err(format!(
            "url {}: ack = true needs a .../services/collector... URL to derive the ack endpoint",
            redacted_origin(&c.url)
        ));
    }
    if let Some(s) = &c.sourcetype {
        if s.is_empty() {
            return Err("sourcetype is empty".into());
        }
    }
    check_timeout(c.timeout)?;
    check_timeout(c.ack_timeout)?;
    check_body(c.max_body_bytes)
}

fn validate_webhook(c: &WebhookConfig) -> Result<(), String> {
    check_url("webhook", &c.url)?;
    for (k, v) in &c.headers {
        ureq::http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("headers: {k:?} is not a valid header name"))?;
        ureq::http::HeaderValue::from_str(&v.0)
            .map_err(|_| format!("headers: the value of {k:?} is not a valid header value"))?;
    }
    check_timeout(c.timeout)?;
    check_body(c.max_body_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        sinks: Vec<SinkConfig>,
    }

    fn parse(s: &str) -> Result<Vec<SinkConfig>, String> {
        toml::from_str::<File>(s)
            .map(|f| f.sinks)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn the_example_parses() {
        let sinks = parse(
            r#"
[[sinks]]
kind = "syslog"
address = "tcp://127.0.0.1:6514"
format = "cef"
framing = "octet-counted"
"#,
        )
        .unwrap();
        let [SinkConfig::Syslog(c)] = &sinks[..] else {
            panic!("{sinks:?}")
        };
        assert_eq!(
            c.address,
            SyslogAddress {
                scheme: Scheme::Tcp,
                host: "127.0.0.1".into(),
                port: 6514
            }
        );
        assert_eq!(c.format, Some(Format::Cef));
        assert_eq!(c.framing, Some(Framing::OctetCounted));
        assert_eq!(sinks[0].name(), "syslog:tcp://127.0.0.1:6514");
        sinks[0].validate().unwrap();
    }

    #[test]
    fn every_kind_parses() {
        let sinks = parse(
            r#"
[[sinks]]
kind = "stdout"
format = "json"

[[sinks]]
kind = "file"
name = "alarms-file"
path = "/var/log/sensor/alarms.log"
format = "ocsf"
max_bytes = 10000000
keep = 3

[[sinks]]
kind = "syslog"
address = "tls://[2001:db8::1]:6514"
format = "leef"
ca_file = "/etc/sensor/ca.pem"
client_cert = "/etc/sensor/client.pem"
client_key = "/etc/sensor/client.key"
server_name = "siem.example"
facility = "local4"
severity = 5
app_name = "nsm"
timeout = "5s"

[[sinks]]
kind = "syslog"
address = "udp://siem.example:514"
max_datagram = 1180
header = "none"

[[sinks]]
kind = "hec"
url = "https://splunk.example:8088/services/collector/event"
token = "00000000-1111-2222-3333-444444444444"
ack = true
sourcetype = "sensor:alarm"

[[sinks]]
kind = "webhook"
url = "https://hooks.example/T0/B0/secretpath?key=abc"
headers = { Authorization = "Bearer xyz" }
"#,
        )
        .unwrap();
        assert_eq!(sinks.len(), 6);
        for s in &sinks {
            s.validate().unwrap_or_else(|e| panic!("{e}"));
        }
        let names: Vec<String> = sinks.iter().map(SinkConfig::name).collect();
        assert_eq!(
            names,
            [
                "stdout",
                "alarms-file",
                "syslog:tls://[2001:db8::1]:6514",
                "syslog:udp://siem.example:514",
                "hec:https://splunk.example:8088",
                "webhook:https://hooks.example",
            ]
        );
        let SinkConfig::Syslog(tls) = &sinks[2] else {
            panic!()
        };
        assert_eq!(tls.facility, Some(Facility(20)));
        assert_eq!(tls.severity, Some(Severity(5)));
        assert_eq!(tls.timeout, Some(HumanDuration::secs(5)));
        let SinkConfig::File(f) = &sinks[1] else {
            panic!()
        };
        assert_eq!((f.max_bytes, f.keep), (Some(10_000_000), 3));
        // Secrets stay out of Debug.
        let dbg = format!("{sinks:?}");
        for secret in ["00000000-1111", "secretpath", "key=abc", "Bearer"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
    }

    #[test]
    fn bad_addresses_are_explained() {
        for (addr, why) in [
            ("127.0.0.1:514", "no scheme"),
            ("http://127.0.0.1:514", "unsupported scheme \"http\""),
            ("tcp://127.0.0.1", "missing :port"),
            ("tcp://127.0.0.1:0", "invalid port \"0\""),
            ("tcp://127.0.0.1:70000", "invalid port \"70000\""),
            ("tcp://::1:514", "IPv6 addresses must be in brackets"),
            ("tcp://[::1]", "missing :port"),
            ("tcp://[zz]:514", "is not an IPv6 address"),
            ("tcp://host:514/x", "only host:port"),
            ("tcp://:514", "invalid host \"\""),
        ] {
            let toml = format!("[[sinks]]\nkind = \"syslog\"\naddress = \"{addr}\"\n");
            let e = parse(&toml).unwrap_err();
            assert!(
                e.contains(&format!("invalid syslog address {addr:?}")) && e.contains(why),
                "{addr}: {e}"
            );
            assert!(e.contains("expected udp://host:port"), "{e}");
        }
        let a: SyslogAddress = "TLS://[::1]:6514".parse().unwrap();
        assert_eq!(
            (a.scheme, a.host.as_str(), a.port),
            (Scheme::Tls, "::1", 6514)
        );
        assert_eq!(a.to_string(), "tls://[::1]:6514");
    }

    #[test]
    fn bad_format_lists_the_accepted_ones() {
        let e = parse("[[sinks]]\nkind = \"stdout\"\nformat = \"xml\"\n").unwrap_err();
        assert!(
            e.contains("unknown variant `xml`, expected one of `json`, `cef`, `leef`, `ocsf`"),
            "{e}"
        );
        let e = parse(
            "[[sinks]]\nkind = \"hec\"\nurl = \"https://h:8088/services/collector\"\n\
             token = \"t\"\nformat = \"cef\"\n",
        )
        .unwrap_err();
        assert!(e.contains("not supported by hec and webhook sinks"), "{e}");
    }

    /// An unknown format fails the load, for every kind of sink, naming the value and every
    /// accepted format; through the configuration loader the error also carries the file, line
    /// and key. Every accepted name still parses.
    #[test]
    fn unknown_format_is_a_config_error_listing_the_accepted_formats() {
        let expected = "unknown variant `xml`, expected one of `json`, `cef`, `leef`, `ocsf`";
        for kind in [
            "kind = \"stdout\"",
            "kind = \"file\"\npath = \"/tmp/x\"",
            "kind = \"syslog\"\naddress = \"tcp://h:1\"",
            "kind = \"hec\"\nurl = \"https://h:8088/services/collector\"\ntoken = \"t\"",
            "kind = \"webhook\"\nurl = \"https://h/hook\"",
        ] {
            let e = parse(&format!("[[sinks]]\n{kind}\nformat = \"xml\"\n")).unwrap_err();
            assert!(e.contains(expected), "{kind}: {e}");
            // The accepted names, from the enum, are exactly the ones FORMATS lists.
            for name in FORMATS {
                assert!(e.contains(&format!("`{name}`")), "{kind}: {e}");
            }
        }
        for (i, name) in FORMATS.iter().enumerate() {
            let sinks = parse(&format!(
                "[[sinks]]\nkind = \"stdout\"\nformat = \"{name}\"\n"
            ))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(sinks[0].format_kind(), Some(Format::ALL[i]));
            assert_eq!(sinks[0].format_kind().map(Format::as_str), Some(*name));
        }
        assert_eq!(
            parse("[[sinks]]\nkind = \"stdout\"\n").unwrap()[0]
                .format_kind()
                .map(Format::as_str),
            None
        );

        let path =
            std::env::temp_dir().join(format!("sink-format-unit-{}-xml.toml", std::process::id()));
        std::fs::write(
            &path,
            "[[sinks]]\nkind = \"syslog\"\naddress = \"tcp://h:1\"\nformat = \"xml\"\n",
        )
        .unwrap();
        let e = crate::config::load(Some(&path), &[])
            .map(|_| ())
            .unwrap_err();
        let _ = std::fs::remove_file(&path);
        let text = e.to_string();
        assert!(text.contains(expected), "{text}");
        assert!(
            e.origin.starts_with(&path.display().to_string()),
            "the file is named: {text}"
        );
        // `kind`-tagged tables are buffered by serde, so the key (and line) found is the
        // sink's table, not its `format` line.
        assert!(e.key.starts_with("sinks[0]"), "the sink is named: {text}");
        println!("{text}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_errors() {
        let e = parse("[[sinks]]\nkind = \"syslog\"\naddress = \"tcp://h:1\"\nca_fiel = \"/x\"\n")
            .unwrap_err();
        assert!(e.contains("unknown field `ca_fiel`"), "{e}");
        let e = parse("[[sinks]]\nkind = \"mqtt\"\n").unwrap_err();
        assert!(e.contains("unknown variant `mqtt`"), "{e}");
        let e = parse("[[sinks]]\naddress = \"tcp://h:1\"\n").unwrap_err();
        assert!(e.contains("missing field `kind`"), "{e}");
        let e = parse("[[sinks]]\nkind = \"syslog\"\nframing = \"lf\"\n").unwrap_err();
        assert!(e.contains("missing field `address`"), "{e}");
        let e =
            parse("[[sinks]]\nkind = \"syslog\"\naddress = \"tcp://h:1\"\nframing = \"newline\"\n")
                .unwrap_err();
        assert!(e.contains("unknown variant `newline`"), "{e}");
        let e =
            parse("[[sinks]]\nkind = \"syslog\"\naddress = \"tcp://h:1\"\nfacility = \"local9\"\n")
                .unwrap_err();
        assert!(e.contains("unknown syslog facility \"local9\""), "{e}");
    }

    fn syslog(extra: &str) -> SinkConfig {
        parse(&format!("[[sinks]]\nkind = \"syslog\"\n{extra}"))
            .unwrap()
            .remove(0)
    }

    #[test]
    fn cross_field_rules() {
        let cases = [
            (
                "address = \"tcp://h:1\"\nca_file = \"/ca.pem\"\n",
                "ca_file only applies to tls:// addresses",
            ),
            (
                "address = \"tls://h:1\"\nframing = \"lf\"\n",
                "not allowed over tls://",
            ),
            (
                "address = \"tls://h:1\"\nclient_cert = \"/c.pem\"\n",
                "client_cert and client_key must be given together",
            ),
            (
                "address = \"udp://h:1\"\nframing = \"lf\"\n",
                "framing only applies to tcp:// and tls://",
            ),
            (
                "address = \"udp://h:1\"\nmax_datagram = 100\n",
                "max_datagram = 100: expected 480..=65507",
            ),
            (
                "address = \"tcp://h:1\"\napp_name = \"a b\"\n",
                "app_name \"a b\"",
            ),
        ];
        for (extra, want) in cases {
            let e = syslog(extra).validate().unwrap_err();
            assert!(e.starts_with("sink syslog:"), "{e}");
            assert!(e.contains(want), "{extra}: {e}");
        }
        let hec = |url: &str, ack: bool| {
            parse(&format!(
                "[[sinks]]\nkind = \"hec\"\nurl = \"{url}\"\ntoken = \"t\"\nack = {ack}\n"
            ))
            .unwrap()
            .remove(0)
        };
        let e = hec("ftp://h/services/collector", false)
            .validate()
            .unwrap_err();
        assert!(e.contains("scheme must be http or https"), "{e}");
        let e = hec("https://h:8088/other", true).validate().unwrap_err();
        assert!(e.contains("ack = true needs"), "{e}");
        hec("https://h:8088/services/collector/event", true)
            .validate()
            .unwrap();
    }
}
