//! The one event loop: source -> engine -> outputs, for `run` and `replay` alike.
//!
//! ```text
//!   source ──events──▶ engine.handle ──Tick/End──▶ engine.tick ──alarms──▶ AlarmOutput
//!     ▲                                               │        ──ended flows──▶ flow output
//!     └────────── Feedback (ended flows, watch set) ──┘        ──stats──▶ status line
//! ```
//!
//! The loop owns no clock: a source's `Tick` carries the time (wall time live, capture time
//! in replay), so a replay is deterministic. The engine's decisions go back to the source as
//! data ([`Feedback`]), never as calls from the engine into the source.
//!
//! `run` also keeps its state across restarts here ([`restore`] before the loop, a
//! [`Checkpointer`] in it): the engine's snapshot and the delivery's unreported drops make
//! one [`AgentState`], written to the state file ([`crate::state`]) every
//! `state.checkpoint_interval` of tick time after the tick's alarms were handed over, and at
//! shutdown. The snapshot is taken in the loop (a copy of the tables: the engine is never
//! shared); encoding and the fsynced write run on a blocking task. `replay` never restores
//! nor writes: it stays deterministic.
//!
//! It must never drop an event or an alarm: an output that fails ends the loop with the
//! error, and everything handed over before stays handed over. A state file that cannot be
//! read or written is reported and never stops the agent.

use std::{collections::HashMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    alarm::AlarmEvent,
    engine::{Engine, EngineSnapshot, EngineStats, TickOutput},
    flow::record::FlowRecord,
    sink::{AlarmOutput, OutputError},
    source::{
        replay::{ReplayError, ReplayOutcome, ReplaySource},
        Feedback, Source, SourceEvent,
    },
    state::{self, StateConfig, StateError},
};
use sensor_common::FlowKey;

/// Writes one ended flow record.
pub type FlowWriter<'a> = dyn FnMut(&FlowRecord) -> Result<(), OutputError> + 'a;

/// Called after every tick with the engine, the tick's time and its alarm events.
pub type ViewWriter<'a> = dyn FnMut(&Engine, u64, &[AlarmEvent]) + 'a;

/// Where the loop's results go besides alarms.
#[derive(Default)]
pub struct Observers<'a> {
    /// Every flow that ended (`run --flows`).
    pub ended_flows: Option<&'a mut FlowWriter<'a>>,
    /// After every tick, with the engine's counters (the status line).
    pub ticked: Option<&'a mut dyn FnMut(&EngineStats)>,
    /// After every tick, with the engine, the tick's time and its alarm events (the
    /// `/status.json` view of `run`).
    pub viewed: Option<&'a mut ViewWriter<'a>>,
    /// Writes the state file every checkpoint interval (`run`, and `collect --state`).
    pub checkpoint: Option<&'a mut Checkpointer>,
    /// Records of long flows while they are still open (the Kafka flow stream).
    pub open_flows: Option<OpenFlows<'a>>,
}

/// Every `interval` of tick time, a record of each flow that has been open at least that
/// long: a consumer rebuilding sessions sees a long flow before it ends (the flow stream's
/// checkpoints). Ended flows go through [`Observers::ended_flows`] as always.
pub struct OpenFlows<'a> {
    interval_ns: u64,
    next_ns: Option<u64>,
    write: &'a mut FlowWriter<'a>,
}

impl<'a> OpenFlows<'a> {
    pub fn new(interval_ns: u64, write: &'a mut FlowWriter<'a>) -> Self {
        OpenFlows {
            interval_ns: interval_ns.max(1),
            next_ns: None,
            write,
        }
    }

    fn tick(&mut self, now: u64, engine: &Engine) -> Result<(), OutputError> {
        let next = *self
            .next_ns
            .get_or_insert(now.saturating_add(self.interval_ns));
        if now < next {
            return Ok(());
        }
        self.next_ns = Some(now.saturating_add(self.interval_ns));
        for f in engine.table.flows() {
            if f.start_ns
                .is_some_and(|start| now.saturating_sub(start) >= self.interval_ns)
            {
                (self.write)(&f)?;
            }
        }
        Ok(())
    }
}

/// Everything the state file holds (see [`crate::state`] for the format).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub engine: EngineSnapshot,
    /// Alarms dropped by a full spool and not yet reported by `sensor_degraded`.
    pub unreported_drops: u64,
}

/// Version 2 of the state file (before mining host episodes): read, never written.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub struct AgentStateV2 {
    engine: EngineSnapshotV2,
    unreported_drops: u64,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct EngineSnapshotV2 {
    table: crate::flow::table::TableSnapshot,
    alarms: Vec<crate::alarm::AlarmSnapshot>,
    labels: crate::enrich::labels::LabelSnapshot,
    watch: Vec<crate::flow::table::KeySnap>,
}

impl From<AgentStateV2> for AgentState {
    fn from(v2: AgentStateV2) -> Self {
        let e = v2.engine;
        AgentState {
            engine: EngineSnapshot {
                table: e.table,
                alarms: e.alarms,
                labels: e.labels,
                watch: e.watch,
                hosts: Vec::new(),
            },
            unreported_drops: v2.unreported_drops,
        }
    }
}

impl AgentState {
    pub fn capture(engine: &Engine, alarms: &AlarmOutput) -> Self {
        AgentState {
            engine: engine.snapshot(),
            unreported_drops: alarms.unreported_drops(),
        }
    }
}

/// Loads the state file into a new `engine` and `alarms` before the loop starts. The line to
/// report either way: what was restored, or the error (the caller starts empty then).
pub fn restore(
    cfg: &StateConfig,
    engine: &mut Engine,
    alarms: &AlarmOutput,
) -> Result<String, StateError> {
    let saved: AgentState = state::load_upgrading::<AgentState, AgentStateV2>(&cfg.path, 2)?;
    let restored = engine.restore(saved.engine);
    alarms.restore_drops(saved.unreported_drops);
    let mut line = format!("state file {}: restored {restored}", cfg.path.display());
    if saved.unreported_drops > 0 {
        line.push_str(&format!(
            "; {} alarms dropped before the restart to report",
            saved.unreported_drops
        ));
    }
    Ok(line)
}

/// Writes the state file every `state.checkpoint_interval` of tick time (wall time live), at
/// most one write at a time, and a last time when the loop is over ([`Checkpointer::finish`]).
pub struct Checkpointer {
    path: PathBuf,
    /// The state file's lock, held as long as this agent may write it.
    _lock: Option<state::StateLock>,
    interval_ns: u64,
    next_ns: Option<u64>,
    writing: Option<tokio::task::JoinHandle<()>>,
}

fn write_checkpoint(path: &std::path::Path, saved: &AgentState) -> Result<u64, StateError> {
    let n = state::save(path, saved)?;
    log::debug!(
        "state file {}: checkpoint written ({n} bytes, {} conversations, {} open alarms)",
        path.display(),
        saved.engine.table.conversations.len(),
        saved.engine.alarms.len()
    );
    Ok(n)
}

impl Checkpointer {
    /// `lock`: the state file's lock ([`state::lock`]), held until the checkpointer is dropped.
    pub fn new(cfg: &StateConfig, lock: Option<state::StateLock>) -> Self {
        Checkpointer {
            path: cfg.path.clone(),
            _lock: lock,
            interval_ns: cfg.checkpoint_interval.as_nanos(),
            next_ns: None,
            writing: None,
        }
    }

    /// After the tick at `now` was delivered: a checkpoint when one is due.
    fn tick(&mut self, now: u64, engine: &Engine, alarms: &AlarmOutput) {
        let next = *self
            .next_ns
            .get_or_insert(now.saturating_add(self.interval_ns));
        if now < next || self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        self.next_ns = Some(now.saturating_add(self.interval_ns));
        let saved = AgentState::capture(engine, alarms);
        let path = self.path.clone();
        let write = move || {
            if let Err(e) = write_checkpoint(&path, &saved) {
                log::warn!("{e}; the checkpoint is not written, the agent runs on");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => self.writing = Some(rt.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// The last checkpoint, after the loop ended: waits for a write in progress, then writes
    /// the final state. The line to report.
    pub async fn finish(&mut self, engine: &Engine, alarms: &AlarmOutput) -> String {
        if let Some(w) = self.writing.take() {
            let _ = w.await;
        }
        let saved = AgentState::capture(engine, alarms);
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || {
            write_checkpoint(&path, &saved).map(|n| (n, saved))
        })
        .await;
        match written {
            Ok(Ok((n, saved))) => format!(
                "state file {}: saved ({n} bytes: {} conversations, {} open alarms)",
                self.path.display(),
                saved.engine.table.conversations.len(),
                saved.engine.alarms.len()
            ),
            Ok(Err(e)) => format!("{e}; the state is not saved"),
            Err(e) => format!("state file {}: the write stopped: {e}", self.path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Source(E),
    #[error("cannot hand over an alarm: {0}")]
    Alarm(#[source] OutputError),
    #[error("cannot write a flow record: {0}")]
    Flow(#[source] OutputError),
}

/// Reads `source` to its end (or until it is stopped), feeding `engine` and handing every
/// alarm to `alarms`. Returns the time of the last tick, if any.
pub async fn run<S: Source>(
    source: &mut S,
    engine: &mut Engine,
    alarms: &mut AlarmOutput,
    observers: &mut Observers<'_>,
) -> Result<Option<u64>, RunError<S::Error>> {
    let mut last_tick = None;
    while let Some(batch) = source.next_batch().await.map_err(RunError::Source)? {
        for event in &batch {
            if let Some(now) = process(source, engine, event, alarms, observers)? {
                last_tick = Some(now);
            }
        }
    }
    Ok(last_tick)
}

/// [`run`] over capture files to their end, then what the reader counted. With
/// `flow_records`, the reader's per-5-tuple totals (`replay --flows`) take their roles from
/// the engine's flow table, which alone saw the payload evidence (see `flow::roles`): each
/// flow's last decision, whether it ended during the replay or was still open at its end.
pub async fn replay(
    mut source: ReplaySource,
    engine: &mut Engine,
    alarms: &mut AlarmOutput,
    flow_records: bool,
) -> (
    Result<Option<u64>, RunError<ReplayError>>,
    Result<ReplayOutcome, ReplayError>,
) {
    let mut roles: HashMap<FlowKey, (u8, u8)> = HashMap::new();
    let looped = {
        let mut note = |f: &FlowRecord| {
            roles.insert(f.key, (f.stats.client, f.stats.client_source));
            Ok(())
        };
        let mut observers = Observers::default();
        if flow_records {
            observers.ended_flows = Some(&mut note);
        }
        run(&mut source, engine, alarms, &mut observers).await
    };
    let mut outcome = source.finish().await;
    if flow_records {
        for f in engine.table.flows() {
            roles.insert(f.key, (f.stats.client, f.stats.client_source));
        }
        if let Ok(o) = outcome.as_mut() {
            for f in o.flows.iter_mut() {
                if let Some(&(client, client_source)) = roles.get(&f.key) {
                    f.stats.client = client;
                    f.stats.client_source = client_source;
                }
            }
        }
    }
    (looped, outcome)
}

/// One event: handed to the engine, or, for a tick, evaluated with its output delivered and
/// fed back to the source. Public so benchmarks time exactly what `run` does per poll.
pub fn process<S: Source>(
    source: &mut S,
    engine: &mut Engine,
    event: &SourceEvent,
    alarms: &mut AlarmOutput,
    observers: &mut Observers<'_>,
) -> Result<Option<u64>, RunError<S::Error>> {
    let (now, end) = match event {
        SourceEvent::Tick(now) => (*now, false),
        SourceEvent::End(now) => (*now, true),
        other => {
            engine.handle(other);
            return Ok(None);
        }
    };
    let out = engine.tick(now);
    deliver(&out, alarms, observers)?;
    if let Some(viewed) = observers.viewed.as_mut() {
        viewed(engine, now, &out.alarms);
    }
    if let Some(open) = observers.open_flows.as_mut() {
        open.tick(now, engine).map_err(RunError::Flow)?;
    }
    // Flows the table refused are forgotten by the source like ended ones (live: their kernel
    // entries are deleted, so a refused entry is not offered again at every poll).
    let ended: Vec<FlowKey> = out
        .ended
        .iter()
        .map(|f| f.key)
        .chain(out.refused.iter().copied())
        .collect();
    source
        .feedback(Feedback {
            ended: &ended,
            watch_added: &out.watch.added,
            watch_kept: &out.watch.kept,
            watch_removed: &out.watch.removed,
        })
        .map_err(RunError::Source)?;
    if end {
        for e in &engine.finish(now) {
            alarms.emit(&e.json).map_err(RunError::Alarm)?;
        }
    }
    if end || !out.alarms.is_empty() {
        // Durable per the spool's fsync policy before the next poll; nothing new, nothing to do.
        alarms.flush().map_err(RunError::Alarm)?;
    }
    if let Some(ticked) = observers.ticked.as_mut() {
        ticked(&engine.stats());
    }
    if let Some(checkpoint) = observers.checkpoint.as_mut() {
        checkpoint.tick(now, engine, alarms);
    }
    Ok(Some(now))
}

fn deliver<E: std::error::Error + 'static>(
    out: &TickOutput,
    alarms: &mut AlarmOutput,
    observers: &mut Observers<'_>,
) -> Result<(), RunError<E>> {
    for e in &out.alarms {
        alarms.emit(&e.json).map_err(RunError::Alarm)?;
    }
    if let Some(write) = observers.ended_flows.as_mut() {
        for f in &out.ended {
            write(f).map_err(RunError::Flow)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{alarm::Observer, config::Config, units::HumanDuration};
    use sensor_common::ipv4_mapped;

    const S: u64 = 1_000_000_000;

    /// An engine with one conversation, open alarms, a watched flow and a labelled pair.
    fn busy_engine() -> Engine {
        let mut cfg = Config::default();
        cfg.detect.long_flow.after = HumanDuration::secs(100);
        cfg.detect.quiet_long_flow.after = HumanDuration::secs(100);
        cfg.detect.watch.after = HumanDuration::secs(60);
        let mut e = Engine::new(&cfg, Observer::default());
        let (key, dir) = FlowKey::canonical(
            &ipv4_mapped([10, 0, 0, 1]),
            40000,
            &ipv4_mapped([10, 0, 0, 2]),
            3333,
            6,
        );
        e.add_packet(&key, dir, 60, 0x02, 0);
        e.add_packet(&key, 1 - dir, 60, 0x12, 0);
        let subscribe =
            b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"cgminer/4.10.0\"]}\n";
        e.add_packet(&key, dir, 120, 0x18, S);
        e.payload(&key, dir, false, subscribe, S);
        for t in (10..=150).step_by(10) {
            e.add_packet(&key, dir, 60, 0x18, t * S);
            e.message(&key, dir, 60, t * S);
            e.add_packet(&key, 1 - dir, 60, 0x18, t * S);
            e.message(&key, 1 - dir, 60, t * S);
            e.tick(t * S);
        }
        e
    }

    #[test]
    fn the_state_round_trips_through_the_file_format() {
        let e = busy_engine();
        let saved = AgentState {
            engine: e.snapshot(),
            unreported_drops: 3,
        };
        assert!(saved.engine.alarms.len() >= 3, "{:?}", saved.engine.alarms);
        assert_eq!(saved.engine.watch.len(), 1);
        assert_eq!(saved.engine.labels.cache.len(), 1);
        assert_eq!(saved.engine.hosts.len(), 1, "the miner's host episode");
        let m = &saved.engine.labels.conversations[0].messages;
        assert!(m.as_ref().is_some_and(|m| !m.client.is_empty()));
        let bytes = state::encode(&saved).expect("encode");
        assert_eq!(state::decode::<AgentState>(&bytes).expect("decode"), saved);
        let mut back = Engine::new(&Config::default(), Observer::default());
        let r = back.restore(saved.engine.clone());
        assert_eq!(
            (
                r.conversations,
                r.flows,
                r.open_alarms,
                r.watched,
                r.skipped
            ),
            (1, 1, saved.engine.alarms.len(), 1, 0),
            "{r}"
        );
        assert_eq!(r.labelled, 1);
        assert_eq!(r.cached_pairs, 1);
        assert_eq!(r.mining_hosts, 1);
        assert_eq!(back.snapshot().hosts, saved.engine.hosts);
        // The restored watch set is mirrored to the source at the first tick.
        let out = back.tick(151 * S);
        assert_eq!(out.watch.added.len(), 1);
    }

    /// A version 2 file (written before host episodes existed) loads, with no host episodes;
    /// the conversations and alarms in it are all there.
    #[test]
    fn a_version_2_file_still_loads() {
        let e = busy_engine();
        let now = AgentState {
            engine: e.snapshot(),
            unreported_drops: 3,
        };
        let s = now.engine.clone();
        let v2 = AgentStateV2 {
            engine: EngineSnapshotV2 {
                table: s.table,
                alarms: s.alarms,
                labels: s.labels,
                watch: s.watch,
            },
            unreported_drops: 3,
        };
        let mut bytes = state::encode(&v2).expect("encode");
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&bytes[8..20]);
        h.update(&bytes[state::HEADER_LEN..]);
        let sum = h.finalize();
        bytes[20..24].copy_from_slice(&sum.to_le_bytes());
        let dir = std::env::temp_dir().join(format!("pipeline-v2-{}", std::process::id()));
        let path = dir.join("state.bin");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(&path, &bytes).expect("write");
        let back: AgentState =
            state::load_upgrading::<AgentState, AgentStateV2>(&path, 2).expect("a v2 file loads");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(back.engine.hosts.is_empty());
        assert_eq!(back.engine.table, now.engine.table);
        assert_eq!(back.engine.alarms, now.engine.alarms);
        assert_eq!(back.unreported_drops, 3);
        // Another version is the same one-line refusal as before.
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            state::decode_upgrading::<AgentState, AgentStateV2>(&bytes, 2),
            Err(state::Problem::Version { found: 1 })
        ));
    }

    /// postcard is not self-describing: a snapshot type that changes changes the format. This
    /// pins the encoding of one fixed state; when it fails, bump `state::FORMAT_VERSION` (an
    /// old file is then reported and ignored instead of misread) and update the sum here.
    #[test]
    fn the_encoding_of_the_snapshot_is_pinned_to_the_format_version() {
        use crate::{
            alarm::AlarmSnapshot,
            enrich::{
                classify::{Direction, IdentificationSnapshot, Kind},
                labels::{ConvLabelSnapshot, LabelSnapshot, SeriesSnapshot, TlsInfo},
            },
            flow::table::{ConvKey, ConvSnapshot, FlowSnapshot, KeySnap, TableSnapshot},
        };
        let (a, b) = (ipv4_mapped([10, 0, 0, 1]), ipv4_mapped([10, 0, 0, 2]));
        let conv = ConvKey {
            client: a,
            server: b,
            server_port: 3333,
            proto: 6,
        };
        let key = KeySnap {
            lo: a,
            hi: b,
            port_lo: 40000,
            port_hi: 3333,
            proto: 6,
        };
        let ident = IdentificationSnapshot {
            kind: Kind::MiningProtocol,
            protocol: "stratum".into(),
            signature: "mining.subscribe".into(),
            role: Direction::ClientToServer,
            coin: None,
            coin_reason: None,
            agent: Some("cgminer/4.10.0".into()),
            login_sha256: None,
            confirmed_by_server: true,
        };
        let fixed = AgentState {
            engine: EngineSnapshot {
                table: TableSnapshot {
                    conversations: vec![ConvSnapshot {
                        key: conv,
                        start_ns: 1,
                        last_ns: 2,
                        counts: [3, 4, 5, 6],
                        idle_since_ns: None,
                        flows_seen: 1,
                        client_port: 40000,
                        client_from: 1,
                        fan_counted: true,
                        connections: vec![(7, 8)],
                    }],
                    flows: vec![FlowSnapshot {
                        key,
                        packets: [1, 2],
                        bytes: [3, 4],
                        first_ns: 1,
                        last_ns: 2,
                        tcp_flags: 0x1212,
                        client: 0,
                        client_source: 1,
                        role_tries: 0,
                    }],
                },
                alarms: vec![AlarmSnapshot {
                    rule: "long_flow".into(),
                    conv,
                    id: "00ff".into(),
                    severity: 3,
                    hits: 9,
                    last_sent_ns: 2,
                    evidence: "{\"rung\":1}".into(),
                }],
                labels: LabelSnapshot {
                    conversations: vec![ConvLabelSnapshot {
                        conv,
                        identification: Some((ident.clone(), true)),
                        tls: Some(TlsInfo {
                            sni: Some("pool.example".into()),
                            ja4: "t13d".into(),
                            alpn: vec![],
                        }),
                        messages: Some(SeriesSnapshot {
                            flow: key,
                            since_ns: 1,
                            client: vec![(1, 60)],
                            server: vec![],
                        }),
                    }],
                    cache: vec![(a, b, ident, 99)],
                },
                watch: vec![key],
                hosts: {
                    let mut m = crate::alarm::AlarmManager::new(
                        Default::default(),
                        crate::alarm::Observer::default(),
                    );
                    let member = crate::alarm::AlarmEvent {
                        rule: "mining_protocol",
                        action: crate::alarm::Action::Opened,
                        id: "00ff".into(),
                        json: serde_json::json!({
                            "event": { "severity": 8 },
                            "sensor": { "evidence": { "coin": "monero", "sni": "pool.example" } },
                        }),
                        conv: Some(crate::alarm::ConvFacts {
                            key: conv,
                            start_ns: 1,
                            last_ns: 2,
                            bytes: [3, 4],
                        }),
                    };
                    m.mining_hosts(&[member], 2, false);
                    m.host_snapshot()
                },
            },
            unreported_drops: 5,
        };
        let bytes = state::encode(&fixed).expect("encode");
        assert_eq!(
            (bytes.len(), crc32fast::hash(&bytes)),
            (522, 1_280_227_887),
            "the snapshot's encoding changed: bump state::FORMAT_VERSION and update this pin"
        );
    }
}
