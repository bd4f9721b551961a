//! Delivery: every alarm goes to the durable spool first, and each configured sink takes it
//! from there at its own pace, in its own format, over its own transport.
//!
//! The detection loop only appends (and, with `when_full = "block"`, waits for room); one
//! worker per sink, a task of the agent's tokio runtime, peeks records after its cursor, renders them, sends the batch and
//! acknowledges what the receiver took, so a slow or dead receiver delays only itself and
//! loses nothing: records stay in the spool until every sink has them, across restarts and
//! crashes of the agent. Failures retry forever with capped exponential backoff and jitter.
//! A record dropped because the spool was full (`when_full = "drop_newest"`) is counted, and
//! once records are accepted again a `sensor_degraded` alarm says how many were lost.
//!
//! It never renders or sends on the detection thread, and never acknowledges a record the
//! transport did not report as taken.
//!
//! The workers are blocking tasks (`spawn_blocking`): the transports are blocking clients
//! (rustls streams for syslog, ureq for HEC and webhooks) and the spool is a file that is
//! fsynced. An async client would bring a second TLS and HTTP stack and nothing else: each
//! sink already has a worker of its own, so a slow receiver never delays another sink or the
//! detection loop. Outside a runtime (benchmarks, unit tests) they are plain threads.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    format::{Format, Renderer, SyslogOptions},
    spool::{AppendOutcome, FsyncPolicy, Spool, SpoolConfig, SpoolError, WhenFull},
    transport::{self, SinkConfig, SyslogHeader, Transport},
};

/// The `[spool]` section: where the spool lives and how it behaves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Directory of the segment and cursor files (created if missing).
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub when_full: WhenFull,
    pub fsync: FsyncPolicy,
    /// At the end of a replay, how long to wait for the sinks to deliver what is spooled.
    pub drain_timeout: crate::units::HumanDuration,
}

impl Default for SpoolSection {
    fn default() -> Self {
        let d = SpoolConfig::default();
        SpoolSection {
            dir: PathBuf::from("/var/lib/sensor-agent/spool"),
            max_bytes: d.max_bytes,
            segment_bytes: d.segment_bytes,
            when_full: d.when_full,
            fsync: d.fsync,
            drain_timeout: crate::units::HumanDuration::secs(60),
        }
    }
}

impl SpoolSection {
    /// What the spool would refuse at open, refused when the configuration is loaded.
    pub fn validate(&self) -> Result<(), crate::units::Invalid> {
        self.spool_config()
            .check()
            .map_err(|(key, message)| crate::units::Invalid::new(key, message))
    }

    pub fn spool_config(&self) -> SpoolConfig {
        SpoolConfig {
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes,
            when_full: self.when_full,
            fsync: self.fsync,
        }
    }
}

fn spool_message(dir: &str, source: &SpoolError) -> String {
    let text = source.to_string();
    if text.starts_with(&format!("spool {dir}")) {
        text
    } else {
        format!("spool {dir}: {text}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    // The source is in the message (not chained), so one-line error output shows it once;
    // the directory too, unless the spool's own message already names it.
    #[error("{}", spool_message(dir, source))]
    Spool { dir: String, source: SpoolError },
    #[error("sink {name}: {message}")]
    Sink { name: String, message: String },
    #[error("sink names must be unique: {0} is used twice (give one a `name`)")]
    DuplicateName(String),
    #[error("delivery stopped while the spool was full")]
    Stopped,
    #[error("the spool stayed full for {0:?} (when_full = \"block\", spool.drain_timeout) while no sink took anything; what is spooled stays for the next run")]
    StayedFull(Duration),
    #[error("interrupted while waiting for room in a full spool (when_full = \"block\"); what is spooled stays for the next run")]
    Interrupted,
}

/// Per-sink counters (metrics).
#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
    /// Messages the transport cut to fit (UDP syslog `max_datagram`): sent, but not whole.
    pub truncated: AtomicU64,
    /// Messages written again because the connection that carried them was reset (syslog
    /// TCP/TLS): possible duplicates at the receiver, never losses.
    pub resent: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A snapshot of one sink's delivery state.
#[derive(Clone, Debug)]
pub struct SinkStatus {
    pub name: String,
    pub sent: u64,
    pub errors: u64,
    pub retries: u64,
    /// Records not yet taken by this sink.
    pub pending: u64,
    pub oldest_undelivered: Option<Duration>,
    pub last_error: Option<String>,
    /// Messages sent cut (UDP syslog over `max_datagram`).
    pub truncated: u64,
    /// Messages written again after a connection reset (syslog TCP/TLS).
    pub resent: u64,
}

struct Shared {
    spool: Mutex<Spool>,
    /// Signalled when records are appended (workers) or acknowledged (a blocked producer).
    changed: Condvar,
    stop: AtomicBool,
    metrics: Vec<SinkMetrics>,
    /// Display names (from the configuration) and the spool's cursor ids, index-aligned.
    names: Vec<String>,
    ids: Vec<String>,
    /// Records dropped since the last `sensor_degraded` alarm.
    unreported_drops: AtomicU64,
    /// A stop signal arrived: a producer waiting for room gives up instead of waiting on.
    interrupted: AtomicBool,
    /// A producer is waiting for room (said once per episode).
    blocked: AtomicBool,
}

/// Ends a producer's wait for room in a full `block` spool, from another task (the signal
/// watcher): Ctrl-C or SIGTERM must end a blocked agent with its counters, not leave it
/// waiting for a receiver that may never come back.
#[derive(Clone)]
pub struct Interrupter(Arc<Shared>);

impl Interrupter {
    pub fn interrupt(&self) {
        self.0.interrupted.store(true, Ordering::SeqCst);
        self.0.changed.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct Delivery {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    dir: String,
    /// With `when_full = "block"`: how long one alarm may wait for room before the producer
    /// gives up (bounded inputs: `spool.drain_timeout`); `None` waits as long as it takes
    /// (`run`, where back-pressure is the point).
    block_limit: Option<Duration>,
}

/// One sink's worker: a blocking task of the runtime, or a thread outside one.
enum Worker {
    Task(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

impl Worker {
    fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<Worker> {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => Ok(Worker::Task(rt.spawn_blocking(f))),
            Err(_) => std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map(Worker::Thread),
        }
    }
}

fn wall_ns() -> u64 {
    crate::clock::wall_ns()
}

fn renderer_for(name: &str, sinks: &[SinkConfig]) -> Renderer {
    sinks
        .iter()
        .find(|c| c.name() == name)
        .map_or_else(|| Renderer::new(Format::Json, None), renderer)
}

/// The renderer of a sink: its format, inside an RFC 5424 header for syslog sinks.
fn renderer(cfg: &SinkConfig) -> Renderer {
    // JSON (ECS) is the documented default when a sink names no format; an unknown name
    // never gets here (the configuration refuses it).
    let format = cfg.format_kind().unwrap_or(Format::Json);
    let syslog = match cfg {
        SinkConfig::Syslog(s) if s.header != Some(SyslogHeader::None) => Some(SyslogOptions {
            facility: s
                .facility
                .map_or(SyslogOptions::default().facility, |f| f.0),
            app_name: s.app_name.clone().unwrap_or_else(|| "sensor-agent".into()),
            hostname: None,
            msgid_from_rule: true,
        }),
        _ => None,
    };
    Renderer::new(format, syslog)
}

impl Delivery {
    /// Opens the spool and starts one worker per sink. `None` when no sink is configured.
    pub fn start(
        sinks: &[SinkConfig],
        spool: &SpoolSection,
    ) -> Result<Option<Delivery>, DeliveryError> {
        if sinks.is_empty() {
            return Ok(None);
        }
        let mut names: Vec<String> = Vec::new();
        let mut transports: Vec<(Box<dyn Transport>, Renderer)> = Vec::new();
        for cfg in sinks {
            let name = cfg.name();
            if names.contains(&name) {
                return Err(DeliveryError::DuplicateName(name));
            }
            // The renderer writes the syslog header (from the alarm's own time and severity);
            // the transport only frames.
            let mut cfg = cfg.clone();
            if let SinkConfig::Syslog(s) = &mut cfg {
                s.header = Some(SyslogHeader::None);
            }
            let t = transport::build(&cfg).map_err(|e| DeliveryError::Sink {
                name: name.clone(),
                message: e.to_string(),
            })?;
            transports.push((t, renderer_for(&name, sinks)));
            names.push(name);
        }
        let dir = spool.dir.display().to_string();
        std::fs::create_dir_all(&spool.dir).map_err(|e| DeliveryError::Sink {
            name: "spool".into(),
            message: format!("cannot create {dir}: {e}"),
        })?;
        let ids: Vec<String> = names.iter().map(|n| spool_id(n)).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let opened = Spool::open(&spool.dir, spool.spool_config(), &refs).map_err(|source| {
            DeliveryError::Spool {
                dir: dir.clone(),
                source,
            }
        })?;
        let shared = Arc::new(Shared {
            spool: Mutex::new(opened),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            metrics: names.iter().map(|_| SinkMetrics::default()).collect(),
            names: names.clone(),
            ids,
            unreported_drops: AtomicU64::new(0),
            interrupted: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        });
        let mut workers = Vec::new();
        for (i, (t, r)) in transports.into_iter().enumerate() {
            let shared = shared.clone();
            workers.push(
                Worker::spawn(format!("sink-{i}"), move || worker(shared, i, t, r)).map_err(
                    |e| DeliveryError::Sink {
                        name: names[i].clone(),
                        message: e.to_string(),
                    },
                )?,
            );
        }
        Ok(Some(Delivery {
            shared,
            workers,
            dir,
            block_limit: None,
        }))
    }

    /// Spools one alarm. With `when_full = "block"` it waits for the sinks to make room (never
    /// losing the alarm); with `drop_newest` a full spool drops it, counted.
    pub fn submit(&self, alarm: &Value) -> Result<(), DeliveryError> {
        let bytes = serde_json::to_vec(alarm).map_err(|e| DeliveryError::Sink {
            name: "spool".into(),
            message: e.to_string(),
        })?;
        let mut spool = self.shared.lock();
        let mut blocked_since: Option<Instant> = None;
        loop {
            match spool
                .append(&bytes, wall_ns())
                .map_err(|source| DeliveryError::Spool {
                    dir: self.dir.clone(),
                    source,
                })? {
                AppendOutcome::Appended(_) => {
                    if blocked_since.is_some() && self.shared.blocked.swap(false, Ordering::Relaxed)
                    {
                        log::warn!("spool {} has room again", self.dir);
                    }
                    break;
                }
                AppendOutcome::Dropped(reason) => {
                    self.shared.unreported_drops.fetch_add(1, Ordering::Relaxed);
                    log::warn!("alarm dropped: {}", reason.as_str());
                    return Ok(());
                }
                AppendOutcome::WouldBlock => {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        return Err(DeliveryError::Stopped);
                    }
                    if self.shared.interrupted.load(Ordering::SeqCst) {
                        return Err(DeliveryError::Interrupted);
                    }
                    if !self.shared.blocked.swap(true, Ordering::Relaxed) {
                        // Once per episode: the operator learns why the agent is not moving on.
                        log::warn!(
                            "spool {} is full (when_full = \"block\"): waiting for the sinks to make room",
                            self.dir
                        );
                    }
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    if let Some(limit) = self.block_limit {
                        if since.elapsed() >= limit {
                            return Err(DeliveryError::StayedFull(limit));
                        }
                    }
                    spool = self
                        .shared
                        .changed
                        .wait_timeout(spool, Duration::from_millis(200))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        drop(spool);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// A handle that ends a wait for room in a full spool from another task.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(Arc::clone(&self.shared))
    }

    /// Bounds how long one alarm waits for room in a full `block` spool (see `block_limit`).
    pub fn limit_blocking(&mut self, limit: Duration) {
        self.block_limit = Some(limit);
    }

    /// Makes spooled records durable per the fsync policy (once per detection tick).
    pub fn flush(&self) -> Result<(), DeliveryError> {
        self.shared
            .lock()
            .flush()
            .map_err(|source| DeliveryError::Spool {
                dir: self.dir.clone(),
                source,
            })
    }

    /// Waits until every sink has taken every record, or `timeout`; whether all were taken.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.status().iter().all(|s| s.pending == 0) {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the workers once they finish what they are sending, and waits for them.
    pub async fn shutdown(mut self) {
        self.stop();
        for w in self.workers.drain(..) {
            match w {
                Worker::Task(t) => {
                    let _ = t.await;
                }
                Worker::Thread(t) => {
                    let _ = tokio::task::spawn_blocking(move || t.join()).await;
                }
            }
        }
    }

    fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let _ = self.shared.lock().flush();
    }

    /// Per-sink counters, pending records and the age of the oldest undelivered one.
    pub fn status(&self) -> Vec<SinkStatus> {
        self.status_handle().status()
    }

    /// A handle that reads [`Delivery::status`] and [`Delivery::spool_counters`] from another
    /// task (the status line, the metrics endpoint) while the loop owns the delivery.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.shared.clone())
    }

    /// Alarms dropped by a full spool and not yet reported by a `sensor_degraded` alarm (for
    /// the state file).
    pub fn unreported_drops(&self) -> u64 {
        self.shared.unreported_drops.load(Ordering::Relaxed)
    }

    /// Drops counted before a restart: reported like new ones, by a `sensor_degraded` alarm
    /// spooled at once when there is room, else once delivery resumes.
    pub fn restore_drops(&self, dropped: u64) {
        if dropped == 0 {
            return;
        }
        self.shared
            .unreported_drops
            .fetch_add(dropped, Ordering::Relaxed);
        report_drops(&self.shared);
    }

    /// Spool counters (bytes, drops, torn or corrupt records skipped at startup).
    pub fn spool_counters(&self) -> super::spool::SpoolCounters {
        self.shared.lock().counters()
    }
}

/// Reads the delivery state from anywhere; holds the shared state, never a worker.
#[derive(Clone)]
pub struct StatusHandle(Arc<Shared>);

impl StatusHandle {
    /// Per-sink counters, pending records and the age of the oldest undelivered one.
    pub fn status(&self) -> Vec<SinkStatus> {
        let shared = &self.0;
        let spool = shared.lock();
        let now = wall_ns();
        shared
            .names
            .iter()
            .zip(&shared.ids)
            .zip(&shared.metrics)
            .map(|((name, id), m)| SinkStatus {
                name: name.clone(),
                sent: m.sent.load(Ordering::Relaxed),
                errors: m.errors.load(Ordering::Relaxed),
                retries: m.retries.load(Ordering::Relaxed),
                truncated: m.truncated.load(Ordering::Relaxed),
                resent: m.resent.load(Ordering::Relaxed),
                pending: spool.pending(id),
                oldest_undelivered: spool.oldest_unacked_age(id, now),
                last_error: m
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            })
            .collect()
    }

    /// Spool counters (bytes, drops, torn or corrupt records skipped at startup).
    pub fn spool_counters(&self) -> super::spool::SpoolCounters {
        self.0.lock().counters()
    }
}

impl Drop for Delivery {
    /// Without [`Delivery::shutdown`]: threads are joined; tasks are told to stop and finish
    /// on their own (a runtime thread must not block on them), their records safe in the spool.
    fn drop(&mut self) {
        self.stop();
        for w in self.workers.drain(..) {
            if let Worker::Thread(t) = w {
                let _ = t.join();
            }
        }
    }
}

/// A sink's cursor id in the spool: its name made file-name safe, plus a hash of the name so
/// two names that sanitise alike stay apart. Stable across restarts for the same name.
fn spool_id(name: &str) -> String {
    use sha1::{Digest, Sha1};
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let h = Sha1::digest(name.as_bytes());
    format!("{safe}-{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
}

/// Delivery resumed: if alarms were dropped meanwhile, spool a `sensor_degraded` alarm saying
/// how many (once; if even that cannot be stored, the count waits for the next success).
fn report_drops(shared: &Shared) {
    let dropped = shared.unreported_drops.swap(0, Ordering::Relaxed);
    if dropped == 0 {
        return;
    }
    let stored = serde_json::to_vec(&degraded_alarm(dropped))
        .ok()
        .is_some_and(|bytes| {
            matches!(
                shared.lock().append(&bytes, wall_ns()),
                Ok(AppendOutcome::Appended(_))
            )
        });
    if stored {
        log::warn!("{dropped} alarms were dropped by a full spool; raised sensor_degraded");
        shared.changed.notify_all();
    } else {
        shared
            .unreported_drops
            .fetch_add(dropped, Ordering::Relaxed);
    }
}

/// The `sensor_degraded` alarm for alarms the spool had to drop.
fn degraded_alarm(dropped: u64) -> Value {
    let now = wall_ns();
    let ts = crate::clock::rfc3339_micros(now);
    json!({
        "@timestamp": ts,
        "event": {
            "kind": "alert",
            "category": ["host"],
            "type": ["info"],
            "id": format!("degraded-{now:x}"),
            "action": "opened",
            "start": ts,
            "end": ts,
            "duration": 0,
            "severity": 6,
            "reason": "alarms dropped by a full spool",
        },
        "rule": { "id": "sensor_degraded", "name": "Sensor Degraded" },
        "observer": { "hostname": crate::alarm::Observer::local(None).hostname },
        "sensor": { "evidence": { "dropped_alarms": dropped, "reason": "spool_full" } },
    })
}

/// Capped exponential backoff with jitter: 200 ms doubling to 30 s, +-25 %.
fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(8)).min(30_000);
    let jitter = (wall_ns() % 500) as i64 - 250;
    Duration::from_millis((base as i64 + base as i64 * jitter / 1000).max(50) as u64)
}

fn worker(shared: Arc<Shared>, i: usize, mut transport: Box<dyn Transport>, renderer: Renderer) {
    let name = shared.names[i].clone();
    let id = shared.ids[i].clone();
    let metrics = &shared.metrics[i];
    let mut attempt = 0u32;
    loop {
        let batch = {
            let spool = shared.lock();
            match spool.peek(&id, transport.max_batch()) {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let _ = shared
                        .changed
                        .wait_timeout(spool, Duration::from_millis(200));
                    continue;
                }
                Err(e) => {
                    log::error!("sink {name}: cannot read the spool: {e}");
                    drop(spool);
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        };
        let mut keys: Vec<Option<Vec<u8>>> = Vec::with_capacity(batch.len());
        let rendered: Vec<Vec<u8>> = batch
            .iter()
            .map(|r| match serde_json::from_slice::<Value>(&r.payload) {
                Ok(v) => {
                    keys.push(transport.key(&v));
                    renderer.render(&v)
                }
                Err(_) => {
                    keys.push(None);
                    r.payload.clone()
                }
            })
            .collect();
        match transport.send_keyed(&rendered, &keys) {
            Ok(n) if n > 0 => {
                let n = n.min(batch.len());
                if let Err(e) = shared.lock().ack(&id, batch[n - 1].seq) {
                    log::error!("sink {name}: cannot record delivery: {e}");
                }
                metrics.sent.fetch_add(n as u64, Ordering::Relaxed);
                let counters = transport.counters();
                metrics.resent.store(counters.resent, Ordering::Relaxed);
                let cut = counters.truncated;
                if metrics.truncated.swap(cut, Ordering::Relaxed) == 0 && cut > 0 {
                    // Once: every later cut is only counted (the summary and status say how many).
                    log::warn!(
                        "sink {name}: an alarm was longer than the datagram limit and was sent cut; raise max_datagram if the receiver takes more"
                    );
                }
                report_drops(&shared);
                if attempt > 0 {
                    log::info!("sink {name}: delivering again");
                }
                attempt = 0;
                shared.changed.notify_all();
            }
            result => {
                let message = match result {
                    Err(e) => e.to_string(),
                    Ok(_) => "the receiver took nothing".to_string(),
                };
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                metrics.retries.fetch_add(1, Ordering::Relaxed);
                let mut last = metrics
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last.as_deref() != Some(message.as_str()) {
                    log::warn!("sink {name}: {message} (retrying)");
                }
                *last = Some(message);
                drop(last);
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let wait = backoff(attempt);
                attempt = attempt.saturating_add(1);
                let until = Instant::now() + wait;
                while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
                }
            }
        }
    }
}
