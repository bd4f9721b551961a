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

#[cfg(test)]
mod tests {
    use super::super::tests_support::{engine, S};
    use sensor_common::{ipv4_mapped, FlowKey};

    /// A session to 10.0.0.`server`:3333 from `from` to `to` s, `bytes` each way every 10 s.
    fn session(e: &mut super::Engine, server: u8, from: u64, to: u64, bytes: u64) {
        let (key, dir) = FlowKey::canonical(
            &ipv4_mapped([10, 0, 0, 1]),
            40000,
            &ipv4_mapped([10, 0, 0, server]),
            3333,
            6,
        );
        let mut t = from;
        while t <= to {
            e.add_packet(&key, dir, bytes, if t == from { 0x02 } else { 0x18 }, t * S);
            e.add_packet(&key, 1 - dir, bytes, 0x12, t * S);
            e.tick(t * S);
            t += 10;
        }
    }

    #[test]
    fn the_lists_rank_by_duration_and_rate_and_only_when_asked() {
        let mut e = engine(|_| {});
        session(&mut e, 2, 0, 300, 60);
        session(&mut e, 3, 100, 300, 600);
        let plain = e.status_view(300 * S, false);
        assert!(plain.longest.is_empty() && plain.quietest.is_empty());
        assert_eq!(plain.conversations, 2);
        let v = e.status_view(300 * S, true);
        let servers: Vec<&str> = v.longest.iter().map(|c| c.server.as_str()).collect();
        assert_eq!(servers, vec!["10.0.0.2", "10.0.0.3"], "{v:?}");
        assert_eq!(v.longest[0].duration_s, 300.0);
        assert_eq!(v.longest[0].port, 3333);
        // The quieter one (fewer bytes per second) first.
        let quiet: Vec<&str> = v.quietest.iter().map(|c| c.server.as_str()).collect();
        assert_eq!(quiet, vec!["10.0.0.2", "10.0.0.3"], "{v:?}");
        assert!(v.alarms_by_rule.contains_key("long_flow"), "{v:?}");
    }
}
