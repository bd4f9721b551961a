//! Metrics and health: what `run` is doing, for Prometheus and for a service manager.
//!
//! An HTTP endpoint (`[metrics] listen`, loopback by default) answers four paths:
//! - `/metrics`: the Prometheus text format (0.0.4), encoded by the `prometheus` crate;
//! - `/healthz`: 200 while the process serves requests (alive);
//! - `/readyz`: 200 once the datapath is attached and the last poll finished within two poll
//!   intervals, else 503 saying why;
//! - `/status.json`: the bounded view `sensor-agent top` draws ([`status`]).
//!
//! Every value is read at scrape time from the same counters the status line and the summary
//! print, never recomputed: the engine's [`Export`] (published by the loop after every tick,
//! a copy, so a scrape never reaches into the engine), the live source's `LiveStats` (a
//! copy as of its last poll), and the sinks' delivery state through a status handle. Families
//! the datapath or the engine grow (a new `sensor_common::counter` name, a new engine counter)
//! appear without a change here.
//!
//! It must never block the detection loop (the loop only swaps a copy in under a short lock),
//! never listen beyond loopback unless the operator said so (`allow_remote`), and never
//! serve more than a handful of connections at once or wait long for a slow client.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use prometheus::{
    core::{MetricVec, MetricVecBuilder},
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, Opts, Registry,
};
use sensor_common::counter;
use serde::Deserialize;

use crate::{sink::delivery::StatusHandle, source::live::LiveStats, units::Invalid};

pub mod status;

/// The default listen address: Prometheus's registered port for exporters of this kind, on
/// loopback (a scraper on the same host, or a local proxy).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// `[metrics]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `HOST:PORT` to serve `/metrics`, `/healthz` and `/readyz` on; empty switches it off.
    pub listen: String,
    /// Allow a `listen` address other than loopback (the metrics name interfaces and sinks,
    /// and the endpoint has no authentication: exposing it is the operator's explicit choice).
    pub allow_remote: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: DEFAULT_LISTEN.to_string(),
            allow_remote: false,
        }
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let Some(addr) = self.address()? else {
            return Ok(());
        };
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(Invalid::new(
                "listen",
                format!(
                    "{addr} is not a loopback address; the endpoint has no authentication, so set metrics.allow_remote = true to expose it deliberately"
                ),
            ));
        }
        Ok(())
    }

    /// The address to listen on; `None` when switched off.
    pub fn address(&self) -> Result<Option<SocketAddr>, Invalid> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            Invalid::new(
                "listen",
                format!(
                    "{:?} is not HOST:PORT with a numeric address (e.g. {DEFAULT_LISTEN}), or empty to switch metrics off",
                    self.listen
                ),
            )
        })
    }
}

/// What a part of the agent exports at scrape time (the engine implements it for its stats).
pub trait Export: Send {
    fn export(&self, out: &mut Exposition);
}

/// One scrape's families, built on a fresh registry and encoded once.
pub struct Exposition {
    registry: Registry,
    counters: HashMap<String, CounterVec>,
    gauges: HashMap<String, GaugeVec>,
    errors: Vec<String>,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    pub fn new() -> Self {
        Exposition {
            registry: Registry::new(),
            counters: HashMap::new(),
            gauges: HashMap::new(),
            errors: Vec::new(),
        }
    }

    /// Adds `value` to counter family `name` (which must end in `_total`) for `labels`.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let made = family(
            &self.registry,
            &mut self.counters,
            name,
            help,
            labels,
            CounterVec::new,
        );
        match made.and_then(|f| f.get_metric_with_label_values(&values(labels))) {
            Ok(c) => c.inc_by(value.max(0.0)),
            Err(e) => self.errors.push(format!("{name}: {e}")),
        }
    }

    /// Sets gauge `name` for `labels` to `value`.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let made = family(
            &self.registry,
            &mut self.gauges,
            name,
            help,
            labels,
            GaugeVec::new,
        );
        match made.and_then(|f| f.get_metric_with_label_values(&values(labels))) {
            Ok(g) => g.set(value),
            Err(e) => self.errors.push(format!("{name}: {e}")),
        }
    }

    fn histogram(&mut self, h: &Histogram) {
        if let Err(e) = self.registry.register(Box::new(h.clone())) {
            self.errors.push(format!("histogram: {e}"));
        }
    }

    /// The text format; a family that could not be built is logged, never served half-made.
    pub fn encode(self) -> Vec<u8> {
        for e in &self.errors {
            log::warn!("metrics: {e}");
        }
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("metrics: cannot encode: {e}");
        }
        out
    }
}

fn values<'a>(labels: &[(&str, &'a str)]) -> Vec<&'a str> {
    labels.iter().map(|(_, v)| *v).collect()
}

/// The family `name` of `kind`, made and registered the first time (with `labels`' names).
fn family<'m, T: MetricVecBuilder + 'static>(
    registry: &Registry,
    families: &'m mut HashMap<String, MetricVec<T>>,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    make: fn(Opts, &[&str]) -> prometheus::Result<MetricVec<T>>,
) -> prometheus::Result<&'m MetricVec<T>> {
    if !families.contains_key(name) {
        let names: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
        let made = make(Opts::new(name, help), &names)?;
        registry.register(Box::new(made.clone()))?;
        families.insert(name.to_string(), made);
    }
    families
        .get(name)
        .ok_or_else(|| prometheus::Error::Msg(format!("{name} was not registered")))
}

/// What the loop publishes after each tick.
struct Published {
    engine: Option<Box<dyn Export>>,
    last_poll: Option<Instant>,
    view: Option<status::EngineView>,
    recent: std::collections::VecDeque<status::AlarmLine>,
    /// When `/status.json` was last asked for.
    wanted: Option<Instant>,
    interfaces: Vec<String>,
}

/// The state every scrape reads: shared between the loop (which publishes) and the server.
pub struct Hub {
    poll_interval: Duration,
    kernel_capacity: u32,
    attached: AtomicBool,
    published: Mutex<Published>,
    live: Mutex<Option<Arc<Mutex<LiveStats>>>>,
    sinks: Mutex<Option<StatusHandle>>,
    poll_duration: Option<Histogram>,
}

impl Hub {
    /// `kernel_capacity`: the flow map's size (`sensor.max_kernel_flows`), for the fill ratio.
    pub fn new(poll_interval: Duration, kernel_capacity: u32) -> Arc<Self> {
        // 1 ms to ~33 s: a poll of a few flows to one of a full million-entry map.
        let buckets = prometheus::exponential_buckets(0.001, 2.0, 16).unwrap_or_default();
        let opts = HistogramOpts::new(
            "sensor_poll_duration_seconds",
            "Time from the start of a poll of the kernel flow map to the end of its evaluation (alarms handed over).",
        )
        .buckets(buckets);
        // Only invalid buckets fail, and these are valid; without it the family is missing.
        let poll_duration = Histogram::with_opts(opts).ok();
        Arc::new(Hub {
            poll_interval,
            kernel_capacity,
            attached: AtomicBool::new(false),
            published: Mutex::new(Published {
                engine: None,
                last_poll: None,
                view: None,
                recent: std::collections::VecDeque::new(),
                wanted: None,
                interfaces: Vec::new(),
            }),
            live: Mutex::new(None),
            sinks: Mutex::new(None),
            poll_duration,
        })
    }

    /// The datapath is attached; `live` is the live source's stats as of its last poll.
    pub fn attached(&self, live: Arc<Mutex<LiveStats>>) {
        *lock(&self.live) = Some(live);
        self.attached.store(true, Ordering::SeqCst);
    }

    /// The sinks' delivery state, read at each scrape.
    pub fn sinks(&self, status: StatusHandle) {
        *lock(&self.sinks) = Some(status);
    }

    /// After a tick: the engine's counters and how long the poll took.
    pub fn polled(&self, engine: Box<dyn Export>, took: Option<Duration>) {
        if let (Some(d), Some(h)) = (took, &self.poll_duration) {
            h.observe(d.as_secs_f64());
        }
        let mut p = lock(&self.published);
        p.engine = Some(engine);
        p.last_poll = Some(Instant::now());
    }

    /// The interfaces the datapath is attached to, as `/status.json` names them.
    pub fn interfaces(&self, names: Vec<String>) {
        lock(&self.published).interfaces = names;
    }

    /// Whether someone asked for `/status.json` lately: the loop computes the conversation
    /// lists only then.
    pub fn view_wanted(&self) -> bool {
        lock(&self.published)
            .wanted
            .is_some_and(|t| t.elapsed() < status::WANTED_FOR)
    }

    /// After a tick: the engine's view (its conversation lists empty unless
    /// [`Hub::view_wanted`]) and the alarm events it handed out.
    pub fn viewed<'a>(
        &self,
        view: status::EngineView,
        alarms: impl IntoIterator<Item = &'a serde_json::Value>,
    ) {
        let mut p = lock(&self.published);
        p.view = Some(view);
        for a in alarms {
            if p.recent.len() >= status::RECENT_ALARMS {
                p.recent.pop_front();
            }
            p.recent.push_back(status::AlarmLine::of(a));
        }
    }

    /// `/status.json`'s document.
    pub fn status(&self) -> status::Status {
        let readiness = self.readiness();
        let live = lock(&self.live).as_ref().map(|l| lock(l).clone());
        let sinks = lock(&self.sinks).as_ref().map(StatusHandle::status);
        let mut p = lock(&self.published);
        p.wanted = Some(Instant::now());
        status::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ready: readiness.is_ok(),
            readiness: readiness.unwrap_or_else(|e| e),
            interfaces: p.interfaces.clone(),
            poll_interval_s: self.poll_interval.as_secs_f64(),
            kernel_flows: live.as_ref().map_or(0, |l| l.kernel_flows as u64),
            kernel_flow_map_capacity: u64::from(self.kernel_capacity),
            unattributed: live.as_ref().map_or(0, |l| {
                l.counters[..counter::UNATTRIBUTED_REASONS as usize]
                    .iter()
                    .sum()
            }),
            engine: p.view.clone(),
            recent_alarms: p.recent.iter().cloned().collect(),
            sinks: sinks
                .unwrap_or_default()
                .into_iter()
                .map(|s| status::SinkLine {
                    name: s.name,
                    sent: s.sent,
                    errors: s.errors,
                    retries: s.retries,
                    pending: s.pending,
                    oldest_undelivered_s: s.oldest_undelivered.map(|d| d.as_secs_f64()),
                    last_error: s.last_error,
                })
                .collect(),
        }
    }

    /// `Ok` when ready (`/readyz`), else why not.
    pub fn readiness(&self) -> Result<String, String> {
        if !self.attached.load(Ordering::SeqCst) {
            return Err("not ready: the datapath is not attached yet".into());
        }
        let Some(last) = lock(&self.published).last_poll else {
            return Err("not ready: attached, no poll finished yet".into());
        };
        let age = last.elapsed();
        if age > self.poll_interval * 2 {
            return Err(format!(
                "not ready: the last poll finished {:.1} s ago, more than two poll intervals ({:?})",
                age.as_secs_f64(),
                self.poll_interval
            ));
        }
        Ok(format!("ready: last poll {:.1} s ago", age.as_secs_f64()))
    }

    /// Every family, in the text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Exposition::new();
        out.gauge(
            "sensor_up",
            "1 once the datapath is attached and polled within two poll intervals (as /readyz).",
            &[],
            if self.readiness().is_ok() { 1.0 } else { 0.0 },
        );
        if let Some(engine) = lock(&self.published).engine.as_ref() {
            engine.export(&mut out);
        }
        let live = lock(&self.live).as_ref().map(|l| lock(l).clone());
        if let Some(l) = live {
            self.export_live(&l, &mut out);
        }
        if let Some(h) = &self.poll_duration {
            out.histogram(h);
        }
        if let Some(s) = lock(&self.sinks).as_ref() {
            export_sinks(s, &mut out);
        }
        out.encode()
    }

    fn export_live(&self, l: &LiveStats, out: &mut Exposition) {
        out.gauge(
            "sensor_kernel_flows",
            "Flows in the kernel flow map at the last poll.",
            &[],
            l.kernel_flows as f64,
        );
        out.gauge(
            "sensor_kernel_flow_map_capacity",
            "Capacity of the kernel flow map (sensor.max_kernel_flows).",
            &[],
            f64::from(self.kernel_capacity),
        );
        out.gauge(
            "sensor_kernel_flow_map_fill_ratio",
            "Flows in the kernel flow map over its capacity, at the last poll (an LRU map evicts its oldest flows when full).",
            &[],
            l.kernel_flows as f64 / f64::from(self.kernel_capacity.max(1)),
        );
        let unattributed = counter::UNATTRIBUTED_REASONS as usize;
        for (i, name) in counter::NAMES.iter().enumerate() {
            let v = l.counters.get(i).copied().unwrap_or(0) as f64;
            if i < unattributed {
                out.counter(
                    "sensor_packets_unattributed_total",
                    "Packets the datapath could not attribute to a flow, by reason.",
                    &[("reason", name)],
                    v,
                );
            } else {
                out.counter(
                    "sensor_datapath_events_total",
                    "Events the datapath counted, by name (sensor_common::counter).",
                    &[("event", name)],
                    v,
                );
            }
        }
        for (ring, events, drops) in [
            ("payloads", counter::PAYLOAD_EVENTS, counter::PAYLOAD_DROPS),
            ("traces", counter::TRACE_EVENTS, counter::TRACE_DROPS),
        ] {
            let get = |i: u32| l.counters.get(i as usize).copied().unwrap_or(0) as f64;
            out.counter(
                "sensor_ring_events_total",
                "Records the datapath wrote into a ring buffer.",
                &[("ring", ring)],
                get(events),
            );
            out.counter(
                "sensor_ring_drops_total",
                "Records lost because the ring buffer was full.",
                &[("ring", ring)],
                get(drops),
            );
        }
        out.counter(
            "sensor_ring_backlog_drops_total",
            "Ring records read but dropped because too many waited for the next poll (the agent fell behind).",
            &[],
            l.ring_records_dropped as f64,
        );
        out.counter(
            "sensor_kernel_watch_refused_total",
            "Watched flows the kernel's watch map refused (full).",
            &[],
            l.watch_refused as f64,
        );
    }
}

fn export_sinks(s: &StatusHandle, out: &mut Exposition) {
    for st in s.status() {
        let l = [("sink", st.name.as_str())];
        out.counter(
            "sensor_sink_sent_total",
            "Alarms the sink's receiver took.",
            &l,
            st.sent as f64,
        );
        out.counter(
            "sensor_sink_errors_total",
            "Failed sends to the sink.",
            &l,
            st.errors as f64,
        );
        out.counter(
            "sensor_sink_retries_total",
            "Sends to the sink retried after a failure.",
            &l,
            st.retries as f64,
        );
        out.counter(
            "sensor_sink_resent_total",
            "Alarms written to the sink again because the connection that carried them was reset (possible duplicates, never losses).",
            &l,
            st.resent as f64,
        );
        out.gauge(
            "sensor_sink_pending",
            "Alarms in the spool the sink has not taken yet.",
            &l,
            st.pending as f64,
        );
        out.gauge(
            "sensor_sink_oldest_undelivered_age_seconds",
            "Age of the oldest alarm the sink has not taken (0 when none waits).",
            &l,
            st.oldest_undelivered.map_or(0.0, |d| d.as_secs_f64()),
        );
    }
    let c = s.spool_counters();
    out.gauge(
        "sensor_spool_bytes",
        "Bytes held by the durable alarm spool.",
        &[],
        c.bytes as f64,
    );
    for (reason, n) in [
        ("spool_full", c.dropped_full),
        ("too_large", c.dropped_too_large),
    ] {
        out.counter(
            "sensor_spool_dropped_total",
            "Alarms the spool dropped, by reason.",
            &[("reason", reason)],
            n as f64,
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` (bound by the caller, before
/// privileges are dropped) until the runtime ends. Must run inside the runtime.
pub fn serve(listener: std::net::TcpListener, hub: Arc<Hub>) -> std::io::Result<()> {
    use hyper::{server::conn::http1, service::service_fn};
    use hyper_util::rt::{TokioIo, TokioTimer};

    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let hub = hub.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let hub = hub.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&hub, &req)) }
                });
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    log::debug!("metrics: connection: {e}");
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

type Body = http_body_util::Full<bytes::Bytes>;

fn respond<B>(hub: &Hub, req: &hyper::Request<B>) -> hyper::Response<Body> {
    use hyper::{Method, StatusCode};
    let text =
        |status: StatusCode, body: String| (status, "text/plain; charset=utf-8", body.into_bytes());
    let (status, content_type, body) =
        if req.method() != Method::GET && req.method() != Method::HEAD {
            text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into())
        } else {
            match req.uri().path() {
                "/metrics" => (StatusCode::OK, prometheus::TEXT_FORMAT, hub.render()),
                "/healthz" => text(StatusCode::OK, "alive\n".into()),
                "/status.json" => match serde_json::to_vec(&hub.status()) {
                    Ok(body) => (StatusCode::OK, "application/json", body),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                },
                "/readyz" => match hub.readiness() {
                    Ok(why) => text(StatusCode::OK, format!("{why}\n")),
                    Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                },
                _ => text(
                    StatusCode::NOT_FOUND,
                    "not found: /metrics, /healthz, /readyz or /status.json\n".into(),
                ),
            }
        };
    let mut resp = hyper::Response::new(Body::new(bytes::Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_by_default_and_elsewhere_only_when_allowed() {
        let mut c = MetricsConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.address().unwrap(), Some(DEFAULT_LISTEN.parse().unwrap()));
        c.listen = "0.0.0.0:9464".into();
        let e = c.validate().unwrap_err();
        assert!(e.message.contains("allow_remote"), "{}", e.message);
        c.allow_remote = true;
        assert!(c.validate().is_ok());
        c.listen = "[::1]:9464".into();
        c.allow_remote = false;
        assert!(c.validate().is_ok());
        c.listen = "localhost:9464".into();
        assert!(c.validate().unwrap_err().message.contains("numeric"));
        c.listen = String::new();
        assert_eq!(c.address().unwrap(), None);
    }

    #[test]
    fn readiness_needs_an_attachment_and_a_recent_poll() {
        struct Nothing;
        impl Export for Nothing {
            fn export(&self, _: &mut Exposition) {}
        }
        let hub = Hub::new(Duration::from_secs(10), 1024);
        assert!(hub.readiness().unwrap_err().contains("not attached"));
        hub.attached(Arc::default());
        assert!(hub.readiness().unwrap_err().contains("no poll"));
        hub.polled(Box::new(Nothing), Some(Duration::from_millis(3)));
        assert!(hub.readiness().is_ok());
        let text = String::from_utf8(hub.render()).unwrap();
        assert!(text.contains("sensor_up 1"), "{text}");
        assert!(
            text.contains("sensor_poll_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("sensor_packets_unattributed_total{reason=\"not_ip\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sensor_kernel_flow_map_fill_ratio 0"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::new();
        e.counter("x_total", "help", &[("sink", "a\"b\\c\nd")], 2.0);
        let text = String::from_utf8(e.encode()).unwrap();
        assert!(text.contains(r#"x_total{sink="a\"b\\c\nd"} 2"#), "{text}");
    }
}
