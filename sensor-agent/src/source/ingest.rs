//! Flow logs as a source for the event loop: `sensor-agent ingest`.
//!
//! The files are read and parsed first ([`records::files::read_inputs`], on a blocking
//! thread by the caller): exporters write records per interface and per window, so only the
//! whole input can be put in time order, and the aggregation interval (the alarms' time
//! resolution) is known before the engine starts. The source then hands the items to the
//! loop in time order through the [`Stitcher`]: flow records as cumulative
//! [`SourceEvent::Flows`] updates, DNS log entries as [`SourceEvent::Resolved`], a
//! [`SourceEvent::Tick`] every tick interval of record time and [`SourceEvent::End`] at the
//! latest record's end. A batch ends at each tick, so the engine's feedback (flows it ended)
//! reaches the stitcher before the next record is stitched.
//!
//! It holds the parsed records in memory (about 100 bytes each) and never blocks the loop.

use std::{convert::Infallible, sync::Arc};

use crate::source::{
    records::{
        files::Input,
        stitch::{StitchConfig, Stitcher},
        Item,
    },
    Feedback, FlowUpdate, Source, SourceEvent,
};

/// Flow updates per event at most, so a burst is handed over in pieces.
const BATCH_FLOWS: usize = 1024;

pub struct IngestSource {
    items: std::iter::Peekable<std::vec::IntoIter<Item>>,
    pub stitcher: Stitcher,
    ended: bool,
}

impl IngestSource {
    /// A source over `input`'s items, stitched with `cfg`.
    pub fn new(input: Vec<Item>, cfg: StitchConfig) -> Self {
        IngestSource {
            items: input.into_iter().peekable(),
            stitcher: Stitcher::new(cfg),
            ended: false,
        }
    }

    /// A source over everything `input` read, the stitch gap and tick interval chosen from
    /// its aggregation interval unless given.
    pub fn from_input(input: &mut Input, stitch_gap_ns: Option<u64>, poll_ns: u64) -> Self {
        let interval = input.interval_ns;
        let cfg = StitchConfig {
            gap_ns: stitch_gap_ns.unwrap_or(interval.saturating_mul(2)),
            // Evaluating more often than records arrive finds nothing new.
            tick_ns: poll_ns.max(interval),
        };
        IngestSource::new(std::mem::take(&mut input.items), cfg)
    }

    /// The next events, up to and including a tick (or the end); `None` after the end.
    pub fn next_events(&mut self) -> Option<Vec<SourceEvent>> {
        if self.ended {
            return None;
        }
        let mut events = Vec::new();
        let mut flows: Vec<FlowUpdate> = Vec::new();
        while let Some(item) = self.items.peek() {
            if let Some(now) = self.stitcher.advance(item.time()) {
                if !flows.is_empty() {
                    events.push(SourceEvent::Flows(flows));
                }
                events.push(SourceEvent::Tick(now));
                return Some(events);
            }
            match self.items.next() {
                Some(Item::Flow(a)) => {
                    if let Some(u) = self.stitcher.push(&a) {
                        flows.push(u);
                    }
                    if flows.len() >= BATCH_FLOWS {
                        events.push(SourceEvent::Flows(std::mem::take(&mut flows)));
                        return Some(events);
                    }
                }
                Some(Item::Dns(r)) => {
                    if !flows.is_empty() {
                        events.push(SourceEvent::Flows(std::mem::take(&mut flows)));
                    }
                    events.push(SourceEvent::Resolved(Arc::new(r)));
                }
                None => break,
            }
        }
        if !flows.is_empty() {
            events.push(SourceEvent::Flows(flows));
        }
        self.ended = true;
        if self.stitcher.counters.records > 0 || self.stitcher.latest() > 0 {
            events.push(SourceEvent::End(self.stitcher.latest()));
        }
        Some(events)
    }
}

impl Source for IngestSource {
    type Error = Infallible;

    async fn next_batch(&mut self) -> Result<Option<Vec<SourceEvent>>, Infallible> {
        Ok(self.next_events())
    }

    /// Flows the engine ended are forgotten, as the live source deletes kernel entries.
    fn feedback(&mut self, fb: Feedback<'_>) -> Result<(), Infallible> {
        self.stitcher.ended(fb.ended);
        Ok(())
    }
}
