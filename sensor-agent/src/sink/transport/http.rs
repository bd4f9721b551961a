//! HTTP transports: Splunk HTTP Event Collector (HEC) and a generic JSON webhook, over ureq
//! (blocking, rustls).
//!
//! Why: HEC is how Splunk wants data from agents (and the only way to get indexer
//! acknowledgement, i.e. to know an alarm is on disk, not just received); a webhook covers
//! everything else that takes JSON over HTTP (SOAR platforms, chat bridges, custom collectors).
//!
//! HEC: one POST per batch to the configured URL with `Authorization: Splunk <token>` and a
//! body of concatenated `{"event":<alarm>,"time":<epoch.millis>,"sourcetype":"..."}` objects
//! (`time` is the send time). A message that is valid JSON is embedded as is, anything else as
//! a JSON string. Every request carries `X-Splunk-Request-Channel: <uuid>` (one random channel
//! per transport), which Splunk requires once acknowledgement is enabled on the token. With
//! `ack = true` the messages count as taken only once `/services/collector/ack` reports their
//! ackId acknowledged; polling stops after `ack_timeout` and the batch is then retried
//! (duplicates rather than losses). A token without acknowledgement enabled answers without an
//! ackId: the data was accepted, so it counts as taken and a warning is logged.
//!
//! Webhook: one POST of a JSON array of the messages.
//!
//! Both split a batch whose body would exceed `max_body_bytes` into several requests, sent in
//! order (a single message larger than that is sent alone); Ok(n) counts the messages of the
//! requests that succeeded before the first failure. A non-2xx answer is an error carrying the
//! status and a short one-line excerpt of the body; redirects are not followed.
//!
//! What must never happen: TLS verification off (the CA file, or Mozilla's roots, always
//! apply); the token, webhook URL path/query or header values in an error message or a name;
//! an environment proxy used behind the operator's back (proxies are not supported: requests go
//! straight to the configured host); a request outliving `timeout`.

use std::{
    io::Read,
    ops::Range,
    path::Path,
    sync::Arc,
    thread,
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use ureq::{
    tls::{Certificate, RootCerts, TlsConfig},
    Agent,
};

use super::{
    epoch_millis_str, one_line, strip_terminator, tls, Deadline, HecConfig, Transport,
    TransportError, WebhookConfig, DEFAULT_TIMEOUT,
};

pub const DEFAULT_MAX_BODY_BYTES: usize = 1_000_000;
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SOURCETYPE: &str = "_json";
/// Characters of a response body quoted in an error.
const EXCERPT: usize = 200;

/// The indexer-acknowledgement endpoint for a HEC URL: `.../services/collector/ack` on the same
/// origin, or `None` when the URL has no `/services/collector` path.
pub(crate) fn ack_url(url: &str) -> Option<String> {
    let u: ureq::http::Uri = url.parse().ok()?;
    let path = u.path();
    let base = "/services/collector";
    let at = path.find(base)?;
    Some(format!(
        "{}://{}{}/ack",
        u.scheme_str()?,
        u.authority()?.as_str(),
        &path[..at + base.len()]
    ))
}

fn agent(timeout: Duration, ca_file: Option<&Path>) -> Result<Agent, String> {
    let roots = match ca_file {
        Some(p) => {
            let certs: Vec<Certificate<'static>> = tls::load_certs(p, "ca_file")?
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            RootCerts::Specific(Arc::new(certs))
        }
        None => RootCerts::WebPki,
    };
    Ok(Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .user_agent(concat!("sensor-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent())
}

/// What an HTTP receiver answered.
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn rejected(&self, who: &str) -> TransportError {
        let excerpt = one_line(&self.body, EXCERPT);
        TransportError::Rejected {
            status: Some(self.status),
            msg: if excerpt.is_empty() {
                format!("{who}: HTTP {}", self.status)
            } else {
                format!("{who}: HTTP {}: {excerpt}", self.status)
            },
        }
    }
}

/// POSTs a JSON body; a transport-level failure (no HTTP answer) is `Err` with a one-line text.
fn post(agent: &Agent, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Reply, String> {
    let mut req = agent.post(url);
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("Content-Type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).map_err(|e| describe(&e))?;
    let status = resp.status().as_u16();
    let mut buf = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(64 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the response failed: {}", tls::describe(&e)))?;
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&buf).into_owned(),
    })
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Rustls(t) => tls::describe_tls(t),
        ureq::Error::Io(e) => format!("request failed: {}", tls::describe(e)),
        e => format!("request failed: {e}"),
    }
}

/// Appends `msg` as a JSON value: as is when it is JSON, else as a JSON string.
fn push_json(out: &mut Vec<u8>, msg: &[u8]) {
    let msg = strip_terminator(msg).trim_ascii();
    if !msg.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(msg).is_ok() {
        out.extend_from_slice(msg);
    } else {
        let s = String::from_utf8_lossy(msg);
        serde_json::to_writer(&mut *out, &*s).expect("writing to a Vec cannot fail");
    }
}

/// Groups consecutive encoded items into requests whose body (`overhead` bytes of wrapping,
/// items joined by `sep` bytes) stays within `max`; an item too big on its own is alone.
fn split(items: &[Vec<u8>], max: usize, overhead: usize, sep: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut size) = (0, overhead);
    for (i, item) in items.iter().enumerate() {
        let add = item.len() + if i > start { sep } else { 0 };
        if i > start && size + add > max {
            groups.push(start..i);
            start = i;
            size = overhead + item.len();
        } else {
            size += add;
        }
    }
    if start < items.len() {
        groups.push(start..items.len());
    }
    groups
}

/// A random (version 4) UUID for the HEC channel.
fn random_uuid() -> Result<String, String> {
    let mut b = [0u8; 16];
    tls::provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| "no secure random source".to_string())?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[derive(Deserialize)]
struct HecReply {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default, rename = "ackId")]
    ack_id: Option<u64>,
}

#[derive(Deserialize)]
struct AckReply {
    acks: std::collections::HashMap<String, bool>,
}

pub struct HecTransport {
    name: String,
    url: String,
    ack_url: Option<String>,
    auth: String,
    channel: String,
    sourcetype: String,
    max_body: usize,
    ack_timeout: Duration,
    agent: Agent,
    warned_no_ack: bool,
}

impl HecTransport {
    pub fn new(name: String, c: &HecConfig) -> Result<Self, TransportError> {
        let config_err = |e: String| TransportError::Config(format!("{name}: {e}"));
        let timeout = c.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        Ok(HecTransport {
            url: c.url.clone(),
            ack_url: if c.ack { ack_url(&c.url) } else { None },
            auth: format!("Splunk {}", c.token.0.trim()),
            channel: random_uuid().map_err(config_err)?,
            sourcetype: c
                .sourcetype
                .clone()
                .unwrap_or_else(|| DEFAULT_SOURCETYPE.into()),
            max_body: c.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            ack_timeout: c.ack_timeout.map_or(DEFAULT_ACK_TIMEOUT, |t| t.0),
            agent: agent(timeout, c.ca_file.as_deref()).map_err(config_err)?,
            warned_no_ack: false,
            name,
        })
    }

    /// The channel this transport sends on (`X-Splunk-Request-Channel`).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    fn event(&self, msg: &[u8], time: &str) -> Vec<u8> {
        let mut e = Vec::with_capacity(msg.len() + 80);
        e.extend_from_slice(b"{\"event\":");
        push_json(&mut e, msg);
        e.extend_from_slice(b",\"time\":");
        e.extend_from_slice(time.as_bytes());
        e.extend_from_slice(b",\"sourcetype\":");
        serde_json::to_writer(&mut e, &self.sourcetype).expect("writing to a Vec cannot fail");
        e.push(b'}');
        e
    }

    fn post(&self, url: &str, body: &[u8]) -> Result<Reply, TransportError> {
        let headers = [
            ("Authorization", self.auth.as_str()),
            ("X-Splunk-Request-Channel", self.channel.as_str()),
        ];
        post(&self.agent, url, &headers, body)
            .map_err(|e| TransportError::Connect(format!("{}: {e}", self.name)))
    }

    /// Posts one group of events; returns its ackId when acknowledgement is in use.
    fn post_events(&mut self, body: &[u8]) -> Result<Option<u64>, TransportError> {
        let reply = self.post(&self.url, body)?;
        if !reply.ok() {
            return Err(reply.rejected(&self.name));
        }
        let parsed: Option<HecReply> = serde_json::from_str(&reply.body).ok();
        if let Some(HecReply {
            code: Some(code),
            text,
            ..
        }) = &parsed
        {
            if *code != 0 {
                return Err(TransportError::Rejected {
                    status: Some(reply.status),
                    msg: format!(
                        "{}: HEC code {code}: {}",
                        self.name,
                        one_line(text.as_deref().unwrap_or(""), EXCERPT)
                    ),
                });
            }
        }
        if self.ack_url.is_none() {
            return Ok(None);
        }
        match parsed.and_then(|p| p.ack_id) {
            Some(id) => Ok(Some(id)),
            None => {
                if !self.warned_no_ack {
                    log::warn!(
                        "{}: ack = true but the reply has no ackId (indexer acknowledgement is \
                         not enabled for this token): counting accepted events as delivered",
                        self.name
                    );
                    self.warned_no_ack = true;
                }
                Ok(None)
            }
        }
    }

    /// Polls until every ackId in `sent` is acknowledged or `ack_timeout` passes. Returns the
    /// number of messages in the acknowledged prefix, and the error that stopped it short.
    fn await_acks(&self, sent: &[(Range<usize>, Option<u64>)]) -> (usize, Option<TransportError>) {
        let ack_url = self.ack_url.as_deref().expect("acks only with an ack URL");
        let mut acked: Vec<bool> = sent.iter().map(|(_, id)| id.is_none()).collect();
        let prefix = |acked: &[bool]| {
            sent.iter()
                .zip(acked)
                .take_while(|(_, a)| **a)
                .last()
                .map_or(0, |((r, _), _)| r.end)
        };
        let deadline = Deadline::after(self.ack_timeout);
        let mut pause = Duration::from_millis(50);
        let mut last_err = None;
        loop {
            let waiting: Vec<u64> = sent
                .iter()
                .zip(&acked)
                .filter(|(_, a)| !**a)
                .filter_map(|((_, id), _)| *id)
                .collect();
            if waiting.is_empty() {
                return (prefix(&acked), None);
            }
            let body = serde_json::json!({ "acks": waiting }).to_string();
            match self.post(ack_url, body.as_bytes()) {
                Ok(reply) if reply.ok() => match serde_json::from_str::<AckReply>(&reply.body) {
                    Ok(r) => {
                        for ((_, id), a) in sent.iter().zip(acked.iter_mut()) {
                            if let Some(id) = id {
                                *a |= r.acks.get(&id.to_string()).copied().unwrap_or(false);
                            }
                        }
                    }
                    Err(_) => {
                        let e = TransportError::Rejected {
                            status: Some(reply.status),
                            msg: format!(
                                "{}: unexpected ack reply: {}",
                                self.name,
                                one_line(&reply.body, EXCERPT)
                            ),
                        };
                        return (prefix(&acked), Some(e));
                    }
                },
                // The endpoint refused (ack disabled, bad channel...): waiting will not help.
                Ok(reply) => return (prefix(&acked), Some(reply.rejected(&self.name))),
                // No answer: the events are posted, keep trying until the deadline.
                Err(e) => last_err = Some(e),
            }
            if acked.iter().all(|a| *a) {
                return (prefix(&acked), None);
            }
            let Ok(left) = deadline.remaining() else {
                let first = sent
                    .iter()
                    .zip(&acked)
                    .find(|(_, a)| !**a)
                    .and_then(|((_, id), _)| *id)
                    .unwrap_or_default();
                let e = last_err.unwrap_or_else(|| TransportError::Rejected {
                    status: None,
                    msg: format!(
                        "{}: ackId {first} not acknowledged within {}",
                        self.name,
                        humantime::format_duration(self.ack_timeout)
                    ),
                });
                return (prefix(&acked), Some(e));
            };
            thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

impl Transport for HecTransport {
    fn send(&mut self, batch: &[Vec<u8>]) -> Result<usize, TransportError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let time = epoch_millis_str(SystemTime::now());
        let events: Vec<Vec<u8>> = batch.iter().map(|m| self.event(m, &time)).collect();
        let mut sent = Vec::new();
        let mut failure = None;
        for r in split(&events, self.max_body, 0, 0) {
            match self.post_events(&events[r.clone()].concat()) {
                Ok(id) => sent.push((r, id)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let taken = if self.ack_url.is_some() && !sent.is_empty() {
            let (taken, e) = self.await_acks(&sent);
            if e.is_some() {
                failure = e;
            }
            taken
        } else {
            sent.last().map_or(0, |(r, _)| r.end)
        };
        match failure {
            Some(e) if taken == 0 => Err(e),
            _ => Ok(taken),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

pub struct WebhookTransport {
    name: String,
    url: String,
    headers: Vec<(String, String)>,
    max_body: usize,
    agent: Agent,
}

impl WebhookTransport {
    pub fn new(name: String, c: &WebhookConfig) -> Result<Self, TransportError> {
        let timeout = c.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        Ok(WebhookTransport {
            url: c.url.clone(),
            headers: c
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            max_body: c.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            agent: agent(timeout, c.ca_file.as_deref())
                .map_err(|e| TransportError::Config(format!("{name}: {e}")))?,
            name,
        })
    }
}

impl Transport for WebhookTransport {
    fn send(&mut self, batch: &[Vec<u8>]) -> Result<usize, TransportError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let items: Vec<Vec<u8>> = batch
            .iter()
            .map(|m| {
                let mut v = Vec::with_capacity(m.len() + 2);
                push_json(&mut v, m);
                v
            })
            .collect();
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut taken = 0;
        for r in split(&items, self.max_body, 2, 1) {
            let mut body = Vec::with_capacity(self.max_body.min(1 << 20));
            body.push(b'[');
            for (i, item) in items[r.clone()].iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(item);
            }
            body.push(b']');
            let result = post(&self.agent, &self.url, &headers, &body)
                .map_err(|e| TransportError::Connect(format!("{}: {e}", self.name)))
                .and_then(|reply| {
                    if reply.ok() {
                        Ok(())
                    } else {
                        Err(reply.rejected(&self.name))
                    }
                });
            match result {
                Ok(()) => taken = r.end,
                Err(e) if taken == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(taken)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_respects_max() {
        let items: Vec<Vec<u8>> = [3, 3, 3, 10, 1].iter().map(|n| vec![b'x'; *n]).collect();
        // overhead 2, sep 1: [3,3] = 2+3+1+3 = 9 <= 10; adding 3 more would be 13.
        assert_eq!(split(&items, 10, 2, 1), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(split(&items, 100, 0, 0), vec![0..5]);
        assert_eq!(split(&[], 10, 0, 0), Vec::<Range<usize>>::new());
    }

    #[test]
    fn json_embedding() {
        let mut v = Vec::new();
        push_json(&mut v, b"{\"a\": 1}\n");
        v.push(b' ');
        push_json(&mut v, b"CEF:0|x|\"y\"");
        assert_eq!(v, b"{\"a\": 1} \"CEF:0|x|\\\"y\\\"\"");
    }

    #[test]
    fn ack_urls_and_uuid() {
        assert_eq!(
            ack_url("https://h:8088/services/collector/event?index=x").as_deref(),
            Some("https://h:8088/services/collector/ack")
        );
        assert_eq!(
            ack_url("http://h/splunk/services/collector").as_deref(),
            Some("http://h/splunk/services/collector/ack")
        );
        assert_eq!(ack_url("https://h/other"), None);
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, random_uuid().unwrap());
    }
}
