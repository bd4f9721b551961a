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
//! It must never drop an event or an alarm: an output that fails ends the loop with the
//! error, and everything handed over before stays handed over.

use std::collections::HashMap;

use crate::{
    engine::{Engine, EngineStats, TickOutput},
    flow::record::FlowRecord,
    sink::{AlarmOutput, OutputError},
    source::{
        replay::{ReplayError, ReplayOutcome, ReplaySource},
        Feedback, Source, SourceEvent,
    },
};
use sensor_common::FlowKey;

/// Writes one ended flow record.
pub type FlowWriter<'a> = dyn FnMut(&FlowRecord) -> Result<(), OutputError> + 'a;

/// Where the loop's results go besides alarms.
#[derive(Default)]
pub struct Observers<'a> {
    /// Every flow that ended (`run --flows`).
    pub ended_flows: Option<&'a mut FlowWriter<'a>>,
    /// After every tick, with the engine's counters (the status line).
    pub ticked: Option<&'a mut dyn FnMut(&EngineStats)>,
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
    let ended: Vec<FlowKey> = out.ended.iter().map(|f| f.key).collect();
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
