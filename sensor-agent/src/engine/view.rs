//! The engine's part of `/status.json` ([`crate::metrics::status`]): its counters, and, when
//! someone watches, the longest and the quietest conversations of the flow table.
//!
//! The lists cost one pass over the table with two bounded heaps (no copy of the table, no
//! sort of it), and only while a viewer asked recently.

use std::{cmp::Reverse, collections::BinaryHeap};

use crate::{
    clock::rfc3339_seconds,
    flow::{
        record::{ip_of, transport_name},
        table::Conversation,
    },
    metrics::status::{ConvSummary, EngineView, TOP_N},
};

use super::Engine;

/// A conversation this short has no meaningful rate: left out of the quiet list.
const MIN_QUIET_NS: u64 = 1_000_000_000;

fn summary(c: &Conversation) -> ConvSummary {
    let duration_s = c.duration_ns() as f64 / 1e9;
    let bytes = c.total_bytes();
    ConvSummary {
        client: ip_of(&c.key.client).to_string(),
        server: ip_of(&c.key.server).to_string(),
        port: c.key.server_port,
        transport: transport_name(c.key.proto),
        duration_s,
        bytes,
        bytes_per_sec: if duration_s > 0.0 {
            bytes as f64 / duration_s
        } else {
            0.0
        },
        flows: c.flows_seen,
        open_flows: c.open_flows,
    }
}

/// Keeps the `TOP_N` greatest `rank`s in `heap` (a min-heap through `Reverse`).
fn keep<K: Ord>(heap: &mut BinaryHeap<Reverse<(K, usize)>>, rank: K, i: usize) {
    if heap.len() < TOP_N {
        heap.push(Reverse((rank, i)));
    } else if heap.peek().is_some_and(|Reverse((low, _))| rank > *low) {
        heap.pop();
        heap.push(Reverse((rank, i)));
    }
}

impl Engine {
    /// The view after the tick at `now`; the conversation lists only when `lists`.
    pub fn status_view(&self, now: u64, lists: bool) -> EngineView {
        let stats = self.stats();
        let mut view = EngineView {
            packets: stats.packets,
            flows: stats.flows as u64,
            conversations: stats.conversations as u64,
            watched: stats.watched as u64,
            open_alarms: stats.open_alarms as u64,
            alarms_by_rule: stats
                .opened_by_rule
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect(),
            at: rfc3339_seconds(now),
            ..EngineView::default()
        };
        if !lists {
            return view;
        }
        let mut longest = BinaryHeap::new();
        // Quietest: the smallest rate ranks highest (reversed), in micro-bytes per second.
        let mut quietest = BinaryHeap::new();
        for (i, c) in self.table.conversations().enumerate() {
            let d = c.duration_ns();
            keep(&mut longest, d, i);
            if c.open_flows > 0 && d >= MIN_QUIET_NS {
                let rate = u128::from(c.total_bytes()) * 1_000_000_000_000 / u128::from(d);
                keep(&mut quietest, Reverse(rate), i);
            }
        }
        let mut l: Vec<(u64, usize)> = longest.into_iter().map(|Reverse(x)| x).collect();
        l.sort_by(|a, b| b.cmp(a));
        let mut q: Vec<(Reverse<u128>, usize)> = quietest.into_iter().map(|Reverse(x)| x).collect();
        q.sort_by(|a, b| b.cmp(a));
        // A second pass picks the few kept (the table is not modified in between).
        let wanted: std::collections::HashMap<usize, ConvSummary> = self
            .table
            .conversations()
            .enumerate()
            .filter(|(i, _)| l.iter().any(|x| x.1 == *i) || q.iter().any(|x| x.1 == *i))
            .map(|(i, c)| (i, summary(c)))
            .collect();
        view.longest = l
            .iter()
            .filter_map(|(_, i)| wanted.get(i).cloned())
            .collect();
        view.quietest = q
            .iter()
            .filter_map(|(_, i)| wanted.get(i).cloned())
            .collect();
        view
    }
}
