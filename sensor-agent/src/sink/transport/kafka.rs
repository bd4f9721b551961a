//! The `kafka` transport: alarms (or flow records) produced to a Kafka topic with librdkafka
//! (`rdkafka`), the reference client: an idempotent producer with `acks = all`, compression,
//! TLS and SASL (PLAIN, SCRAM-SHA-256/512).
//!
//! Why librdkafka rather than a pure-Rust client: the delivery contract needs an idempotent
//! producer (no duplicates or reordering from the client's own retries within a session) and
//! SCRAM, which librdkafka has had for years and the pure-Rust clients lack or keep
//! experimental. It runs its own I/O threads; this transport stays blocking like the others.
//!
//! Delivery: [`Transport::send_keyed`] enqueues the batch, each message keyed (by default the
//! alarm's client address, so one host's alarms land on one partition, in order) and waits
//! until librdkafka reported every message of the batch: delivered (the broker acknowledged
//! it with `acks = all`) or failed. `Ok(n)` counts the leading delivered messages only, so
//! the spool never lets go of a message the broker did not take. Every message of a batch is
//! resolved before `send` returns (librdkafka's `message.timeout.ms` is the send timeout,
//! and what is still queued past it is purged), so a retry never leaves an older copy queued
//! behind it.
//!
//! What must never happen: the SASL password in a name, an error or `Debug` output; TLS
//! without verification (librdkafka verifies the broker's certificate and name; there is no
//! knob to turn that off); a password sent over plaintext (SASL requires `tls = true`);
//! [`KafkaTransport::new`] touching the network (the producer is created at the first send).

use std::{
    fmt,
    path::PathBuf,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use rdkafka::{
    config::ClientConfig,
    error::KafkaError,
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig},
    types::RDKafkaErrorCode,
    ClientContext, Message,
};
use serde::Deserialize;
use serde_json::Value;

use super::{Counters, Secret, Transport, TransportError, DEFAULT_TIMEOUT};
use crate::{sink::format::Format, units::HumanDuration};

/// `kind = "kafka"`: produce to a Kafka topic.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Default `kafka:<topic>@<first broker>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Bootstrap brokers, `host:port,host:port`.
    pub brokers: String,
    pub topic: String,
    /// What is published: `alarms` (default) or `flows` (the flow table's records).
    #[serde(default)]
    pub stream: Stream,
    #[serde(default)]
    pub format: Option<Format>,
    /// The alarm (or flow record) field whose value keys each message, as a dotted path;
    /// default `source.ip`, the client address. Messages without it have no key.
    #[serde(default)]
    pub key: Option<String>,
    /// `none`, `gzip`, `snappy`, `lz4` (default) or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// The idempotent producer (default on): the broker drops the client's own retries, so
    /// they neither duplicate nor reorder a partition. Off only for brokers without it.
    #[serde(default = "yes")]
    pub idempotence: bool,
    /// TLS to the brokers (certificates always verified).
    #[serde(default)]
    pub tls: bool,
    /// TLS: PEM CA certificates the brokers' certificates must chain to; the system's CA
    /// store when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS: PEM client certificate (with `client_key`) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// `plain`, `scram-sha-256` or `scram-sha-512`; needs `tls = true`.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// Bound on one send (every message of the batch delivered or failed); default 10s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// `stream = "flows"` with `run`: every this often, a record of each flow open at least
    /// this long (`event.action = "flow_checkpoint"`); default 5m.
    #[serde(default)]
    pub checkpoint: Option<HumanDuration>,
}

/// Default interval of the flow stream's checkpoints of long flows.
pub const DEFAULT_CHECKPOINT: Duration = Duration::from_secs(300);

fn yes() -> bool {
    true
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `sasl_password` is a `Secret`: its Debug is `<redacted>`.
        f.debug_struct("KafkaConfig")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("stream", &self.stream)
            .field("format", &self.format)
            .field("key", &self.key)
            .field("compression", &self.compression)
            .field("idempotence", &self.idempotence)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("timeout", &self.timeout)
            .field("checkpoint", &self.checkpoint)
            .finish()
    }
}

/// What a sink publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    #[default]
    Alarms,
    /// Flow records (ECS, `event.kind = "event"`), as `--flows` writes them.
    Flows,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaslMechanism {
    Plain,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The default message key: the client address of the alarm (and of the flow record).
pub const DEFAULT_KEY: &str = "source.ip";

impl KafkaConfig {
    /// `kafka:<topic>@<first broker>`: no credentials are ever part of it.
    pub fn derived_name(&self) -> String {
        let first = self.brokers.split(',').next().unwrap_or("").trim();
        format!("kafka:{}@{first}", self.topic)
    }

    /// The rules one field at a time cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let brokers: Vec<&str> = self.brokers.split(',').map(str::trim).collect();
        if brokers.iter().all(|b| b.is_empty()) {
            return Err("brokers is empty (expected host:port,host:port)".into());
        }
        for b in &brokers {
            check_broker(b)?;
        }
        // Kafka's own rule for topic names (kafka.common.Topic).
        let t = &self.topic;
        if t.is_empty()
            || t.len() > 249
            || t == "."
            || t == ".."
            || !t
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "topic {t:?}: expected 1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-' (not \".\" or \"..\")"
            ));
        }
        if let Some(k) = &self.key {
            if k.is_empty() || k.split('.').any(str::is_empty) {
                return Err(format!(
                    "key {k:?}: expected a dotted field path such as \"source.ip\""
                ));
            }
        }
        if self.stream == Stream::Flows && self.format.is_some_and(|f| f != Format::Json) {
            return Err(
                "stream = \"flows\" publishes the ECS flow records: only format = \"json\"".into(),
            );
        }
        if !self.tls {
            for (k, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("client_cert", self.client_cert.is_some()),
                ("client_key", self.client_key.is_some()),
            ] {
                if set {
                    return Err(format!("{k} only applies with tls = true"));
                }
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("client_cert and client_key must be given together".into());
        }
        match (
            self.sasl_mechanism,
            &self.sasl_username,
            &self.sasl_password,
        ) {
            (None, None, None) => {}
            (Some(_), Some(u), Some(p)) => {
                if !self.tls {
                    return Err(
                        "sasl_mechanism needs tls = true (the password must not cross the network in clear)"
                            .into(),
                    );
                }
                if u.is_empty() || u.chars().any(char::is_control) {
                    return Err("sasl_username must be non-empty printable text".into());
                }
                if p.0.is_empty() || p.0.chars().any(char::is_control) {
                    return Err("sasl_password must be non-empty printable text".into());
                }
            }
            _ => {
                return Err(
                    "sasl_mechanism, sasl_username and sasl_password must be given together".into(),
                )
            }
        }
        if self.checkpoint.is_some() && self.stream != Stream::Flows {
            return Err("checkpoint only applies with stream = \"flows\"".into());
        }
        if self
            .checkpoint
            .is_some_and(|c| c.0 < Duration::from_secs(1))
        {
            return Err("checkpoint is too short (at least 1s)".into());
        }
        match self.timeout {
            Some(t) if t.0 < Duration::from_millis(100) => {
                Err(format!("timeout {t} is too short (at least 100ms)"))
            }
            _ => Ok(()),
        }
    }
}

fn check_broker(b: &str) -> Result<(), String> {
    let bad = |why: &str| format!("broker {b:?}: {why} (expected host:port, IPv6 in brackets)");
    let (host, port) = if let Some(v6) = b.strip_prefix('[') {
        let (ip, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address"))?;
        (
            ip,
            after
                .strip_prefix(':')
                .ok_or_else(|| bad("missing :port"))?,
        )
    } else {
        b.rsplit_once(':').ok_or_else(|| bad("missing :port"))?
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if host.is_empty() || !host.chars().all(valid) {
        return Err(bad("invalid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(bad("invalid port")),
    }
}

/// The value of a dotted field path in a JSON document, as the message key: strings as they
/// are, other scalars as JSON text; objects, arrays, null and missing fields give no key.
pub fn key_of(doc: &Value, path: &str) -> Option<Vec<u8>> {
    let v = path.split('.').try_fold(doc, |v, part| v.get(part))?;
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string().into_bytes()),
        _ => None,
    }
}

/// One batch's delivery reports, filled by librdkafka's callback (on the thread that polls).
#[derive(Default)]
struct Reports {
    /// Which batch the reports belong to: a late report of an older batch is ignored.
    generation: usize,
    results: Vec<Option<Result<(), String>>>,
}

#[derive(Default)]
struct Context {
    reports: Mutex<Reports>,
    /// What librdkafka last said went wrong with a broker (connect refused, TLS handshake,
    /// authentication): a failed send names it, since a delivery report only says "timed out".
    broker_error: Mutex<Option<String>>,
}

/// Records per send: one wait for the broker's acknowledgements covers this many (and a
/// broker lost in the middle of a send repeats at most this many).
pub const MAX_BATCH: usize = 1024;

/// Opaques carry the batch generation above the message's index in it.
const INDEX_BITS: u32 = 16;

impl ClientContext for Context {
    /// librdkafka's log goes to debug: while a broker is down it logs every reconnect, and the
    /// worker already reports each distinct send error once.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log::debug!(target: "librdkafka", "{level:?} {fac} {message}");
        // Connect, TLS and authentication failures are logged at error level with the cause
        // ("Connection refused", "certificate verify failed", "Authentication failed").
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error) {
            *self
                .broker_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(super::one_line(message, 300));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log::debug!(target: "librdkafka", "{error}: {reason}");
        // "1/1 brokers are down" says less than the log line before it: kept only alone.
        self.broker_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| super::one_line(reason, 300));
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let mut r = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        if opaque >> INDEX_BITS != r.generation {
            return;
        }
        let i = opaque & ((1 << INDEX_BITS) - 1);
        if let Some(slot) = r.results.get_mut(i) {
            *slot = Some(match result {
                Ok(_) => Ok(()),
                Err((e, m)) => Err(format!("{e} (topic {})", m.topic())),
            });
        }
    }
}

pub struct KafkaTransport {
    name: String,
    /// Everything librdkafka is configured with (the password inside; never printed).
    client: ClientConfig,
    topic: String,
    key: String,
    timeout: Duration,
    producer: Option<BaseProducer<Context>>,
    generation: usize,
    counters: Counters,
}

impl KafkaTransport {
    /// Validates `c` and prepares the client's configuration; never connects.
    pub fn new(name: String, c: &KafkaConfig) -> Result<Self, TransportError> {
        let timeout = c.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", c.brokers.replace(' ', ""))
            .set("client.id", "sensor-agent")
            .set("acks", "all")
            .set("enable.idempotence", c.idempotence.to_string())
            .set("compression.type", c.compression.as_str())
            .set("message.timeout.ms", timeout.as_millis().to_string())
            // The worker hands over a whole batch at once and waits for it: waiting longer
            // for more messages to fill a request would only add to every send.
            .set("linger.ms", "1")
            // A broker restart is expected now and then; librdkafka reconnects on its own and
            // the send error says what failed.
            .set("log.connection.close", "false");
        for (k, f) in [("ca_file", &c.ca_file), ("client_cert", &c.client_cert)] {
            if let Some(p) = f {
                if let Err(e) = std::fs::metadata(p) {
                    return Err(TransportError::Config(format!(
                        "{name}: {k} {}: {e}",
                        p.display()
                    )));
                }
            }
        }
        if let Some(p) = &c.ca_file {
            client.set("ssl.ca.location", p.display().to_string());
        }
        if let (Some(cert), Some(key)) = (&c.client_cert, &c.client_key) {
            client
                .set("ssl.certificate.location", cert.display().to_string())
                .set("ssl.key.location", key.display().to_string());
        }
        let protocol = match (c.tls, c.sasl_mechanism.is_some()) {
            (false, _) => "plaintext",
            (true, false) => "ssl",
            (true, true) => "sasl_ssl",
        };
        client.set("security.protocol", protocol);
        if c.tls {
            // librdkafka's defaults, stated: the broker's chain and its name are verified.
            client
                .set("enable.ssl.certificate.verification", "true")
                .set("ssl.endpoint.identification.algorithm", "https");
        }
        if let (Some(m), Some(u), Some(p)) = (c.sasl_mechanism, &c.sasl_username, &c.sasl_password)
        {
            client
                .set("sasl.mechanism", m.as_str())
                .set("sasl.username", u)
                .set("sasl.password", &p.0);
        }
        Ok(KafkaTransport {
            name,
            client,
            topic: c.topic.clone(),
            key: c.key.clone().unwrap_or_else(|| DEFAULT_KEY.to_string()),
            timeout,
            producer: None,
            generation: 0,
            counters: Counters::default(),
        })
    }

    fn error(&self, what: &str, e: impl fmt::Display) -> String {
        format!("{}: {what}: {e}", self.name)
    }

    fn producer(&mut self) -> Result<&BaseProducer<Context>, TransportError> {
        if let Some(p) = &self.producer {
            // An idempotent producer that hit a fatal error (the broker lost its state, a
            // sequence gap) cannot go on: a new one starts a new producer id.
            if let Some((code, why)) = p.client().fatal_error() {
                log::warn!(
                    "{}: producer failed ({code:?}: {why}); starting a new one",
                    self.name
                );
                self.producer = None;
            }
        }
        if self.producer.is_none() {
            let p: BaseProducer<Context> = self
                .client
                .create_with_context(Context::default())
                .map_err(|e| TransportError::Config(self.error("cannot create the producer", e)))?;
            self.counters.connects += 1;
            self.producer = Some(p);
        }
        self.producer
            .as_ref()
            .ok_or_else(|| TransportError::Config(format!("{}: no producer", self.name)))
    }
}

impl Transport for KafkaTransport {
    fn send(&mut self, batch: &[Vec<u8>]) -> Result<usize, TransportError> {
        self.send_keyed(batch, &[])
    }

    fn key(&self, doc: &Value) -> Option<Vec<u8>> {
        key_of(doc, &self.key)
    }

    fn send_keyed(
        &mut self,
        batch: &[Vec<u8>],
        keys: &[Option<Vec<u8>>],
    ) -> Result<usize, TransportError> {
        let batch = &batch[..batch.len().min((1 << INDEX_BITS) - 1)];
        if batch.is_empty() {
            return Ok(0);
        }
        self.generation = (self.generation + 1) % (usize::MAX >> INDEX_BITS);
        let generation = self.generation;
        // librdkafka times each message out itself after `timeout` (message.timeout.ms);
        // a second more for its reports to arrive before what is left is purged.
        let deadline = Instant::now() + self.timeout + Duration::from_secs(1);
        let (name, topic) = (self.name.clone(), self.topic.clone());
        let producer = self.producer()?;
        {
            let mut r = producer
                .context()
                .reports
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            r.generation = generation;
            r.results = vec![None; batch.len()];
        }
        *producer
            .context()
            .broker_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let mut enqueued = 0;
        let mut refused = None;
        'produce: for (i, msg) in batch.iter().enumerate() {
            let mut record = BaseRecord::with_opaque_to(&topic, (generation << INDEX_BITS) | i)
                .payload(msg.as_slice());
            if let Some(Some(k)) = keys.get(i) {
                record = record.key(k.as_slice());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => {
                        enqueued += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if Instant::now() < deadline =>
                    {
                        // librdkafka's queue is full: serve delivery reports to make room.
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        refused = Some(format!("{name}: cannot produce to {topic}: {e}"));
                        break 'produce;
                    }
                }
            }
        }
        // Wait for every enqueued message's report; past the deadline, purge what is left so
        // nothing of this batch stays queued behind the retry.
        let pending = |p: &BaseProducer<Context>| {
            let r = p
                .context()
                .reports
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            r.results[..enqueued].iter().any(Option::is_none)
        };
        let mut purged = false;
        while pending(producer) {
            let now = Instant::now();
            if now >= deadline {
                if purged {
                    if now >= deadline + Duration::from_secs(5) {
                        break;
                    }
                } else {
                    producer.purge(PurgeConfig::default().queue().inflight());
                    purged = true;
                }
            }
            producer.poll(Duration::from_millis(5));
        }
        let results = std::mem::take(
            &mut producer
                .context()
                .reports
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .results,
        );
        let taken = results
            .iter()
            .take_while(|r| matches!(r, Some(Ok(()))))
            .count();
        if taken > 0 {
            return Ok(taken);
        }
        if let Some(e) = refused {
            return Err(TransportError::Io(e));
        }
        let first = results
            .iter()
            .find_map(|r| match r {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "no delivery report in time".to_string());
        let broker = producer
            .context()
            .broker_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        Err(TransportError::Connect(format!(
            "{name}: not delivered: {first}{broker}"
        )))
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::transport::SinkConfig;

    #[derive(Debug, Deserialize)]
    struct File {
        sinks: Vec<SinkConfig>,
    }

    fn parse(extra: &str) -> Result<SinkConfig, String> {
        toml::from_str::<File>(&format!(
            "[[sinks]]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"alarms\"\n{extra}"
        ))
        .map(|mut f| f.sinks.remove(0))
        .map_err(|e| e.message().to_string())
    }

    #[test]
    fn every_option_parses_and_the_password_stays_out_of_names_and_debug() {
        let c = parse(
            "name = \"fleet\"\nformat = \"ocsf\"\nkey = \"observer.hostname\"\ncompression = \"zstd\"\n\
             tls = true\nca_file = \"/etc/ca.pem\"\nsasl_mechanism = \"scram-sha-512\"\n\
             sasl_username = \"sensor\"\nsasl_password = \"hunter2-secret\"\ntimeout = \"5s\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.name(), "fleet");
        let SinkConfig::Kafka(k) = &c else { panic!() };
        assert_eq!(k.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        assert_eq!(k.compression, Compression::Zstd);
        assert!(k.idempotence, "idempotent by default");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        let plain = parse("").unwrap();
        assert_eq!(plain.name(), "kafka:alarms@127.0.0.1:9092");
        plain.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_explained() {
        for (extra, want) in [
            (
                "sasl_mechanism = \"plain\"\nsasl_username = \"u\"\nsasl_password = \"p\"\n",
                "needs tls = true",
            ),
            (
                "tls = true\nsasl_mechanism = \"plain\"\n",
                "must be given together",
            ),
            (
                "ca_file = \"/ca.pem\"\n",
                "ca_file only applies with tls = true",
            ),
            (
                "tls = true\nclient_cert = \"/c.pem\"\n",
                "client_cert and client_key",
            ),
            ("key = \"source..ip\"\n", "dotted field path"),
            (
                "stream = \"flows\"\nformat = \"cef\"\n",
                "only format = \"json\"",
            ),
            (
                "checkpoint = \"1m\"\n",
                "only applies with stream = \"flows\"",
            ),
            ("timeout = \"1ms\"\n", "too short"),
        ] {
            let e = parse(extra).unwrap().validate().unwrap_err();
            assert!(e.starts_with("sink kafka:alarms@"), "{e}");
            assert!(e.contains(want), "{extra}: {e}");
        }
        let topic = |t: &str| {
            toml::from_str::<File>(&format!(
                "[[sinks]]\nkind = \"kafka\"\nbrokers = \"h:1\"\ntopic = \"{t}\"\n"
            ))
            .unwrap()
            .sinks
            .remove(0)
            .validate()
        };
        assert!(topic("a/b").unwrap_err().contains("topic \"a/b\""));
        assert!(topic("..").is_err());
        topic("sensor.alarms_v1-x").unwrap();
        for (brokers, want) in [
            ("", "brokers is empty"),
            ("h", "missing :port"),
            ("h:0", "invalid port"),
            ("h:1,:2", "invalid host"),
            ("[::1:9092", "unclosed"),
        ] {
            let e = toml::from_str::<File>(&format!(
                "[[sinks]]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"t\"\n"
            ))
            .unwrap()
            .sinks
            .remove(0)
            .validate()
            .unwrap_err();
            assert!(e.contains(want), "{brokers}: {e}");
        }
        let e = parse("compression = \"brotli\"\n").unwrap_err();
        assert!(e.contains("unknown variant `brotli`"), "{e}");
        let e = parse("sasl_mechanism = \"gssapi\"\n").unwrap_err();
        assert!(e.contains("unknown variant `gssapi`"), "{e}");
    }

    #[test]
    fn keys_come_from_the_record() {
        let alarm = serde_json::json!({
            "source": {"ip": "192.0.2.10", "port": 40000},
            "rule": {"id": "long_flow"},
            "event": {"severity": 3, "tags": ["x"]},
        });
        assert_eq!(key_of(&alarm, "source.ip"), Some(b"192.0.2.10".to_vec()));
        assert_eq!(key_of(&alarm, "source.port"), Some(b"40000".to_vec()));
        assert_eq!(key_of(&alarm, "event.tags"), None);
        assert_eq!(key_of(&alarm, "destination.ip"), None);
    }

    /// A producer to a port nothing listens on: the send fails within its timeout, takes
    /// nothing, and says which sink and topic.
    #[test]
    fn a_broker_that_is_not_there_takes_nothing_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let SinkConfig::Kafka(c) = parse("timeout = \"500ms\"\n").unwrap() else {
            panic!()
        };
        let c = KafkaConfig {
            brokers: format!("127.0.0.1:{port}"),
            ..c
        };
        let mut t = KafkaTransport::new("kafka:test".into(), &c).unwrap();
        let start = Instant::now();
        let e = t.send(&[b"{}".to_vec(), b"{}".to_vec()]).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "bounded by the timeout"
        );
        assert!(
            e.to_string().starts_with("kafka:test: not delivered"),
            "{e}"
        );
        // What went wrong with the broker, not only librdkafka's "timed out".
        assert!(e.to_string().contains("Connection refused"), "{e}");
    }
}
