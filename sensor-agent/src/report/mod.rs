//! `sensor-agent report`: one self-contained HTML page from the alarms (and optionally the
//! flow records) that `replay`, `run`, `ingest` and `collect` wrote, to read an incident
//! offline or attach it to a ticket.
//!
//! Hosts come first (`mining_host` alarms, rendered from whatever fields they carry, their
//! member alarm ids linked), then every alarm once with its latest state and history, its
//! evidence in words, and charts (`chart/`, one file per kind) that say where their data came
//! from.
//!
//! Why it exists apart from the sinks: a SIEM shows fields; a person deciding whether a host
//! mines wants the conversation drawn. It reads files only, after the fact; it never touches
//! the datapath or the network.
//!
//! What it must never do: put an input string into the page unescaped (every alarm field is
//! attacker-controlled: the template escapes, see `page`), reference anything outside the page
//! (no scripts, fonts, styles or images fetched), stop at a malformed line (it is skipped and
//! counted, the rest is shown), or read without bounds (`input::Limits`).

pub mod chart;
pub mod input;
pub mod page;
pub mod words;

use std::path::Path;

use serde_json::Value;

use chart::Chart;
use input::{parse_time, Alarm, FlowPoint, Inputs};
pub use input::{InputError, Limits, Skipped};

/// One alarm with its charts.
#[derive(Debug)]
pub struct Entry {
    pub alarm: Alarm,
    pub charts: Vec<Chart>,
    /// Shown in full (evidence, charts, history); the others are rows of the index only.
    pub detailed: bool,
}

/// A made report.
#[derive(Debug)]
pub struct Report {
    pub html: String,
    /// Alarm ids shown (hosts included) and charts drawn.
    pub alarms: usize,
    pub charts: usize,
    /// Lines skipped, and the first notes saying why.
    pub skipped: usize,
    pub notes: Vec<Skipped>,
    pub alarms_left_out: usize,
}

/// The charts of one alarm: the one its rule is best read with, then bytes per direction.
fn charts(a: &Alarm, flows: Option<&[FlowPoint]>) -> Vec<Chart> {
    if a.rule == "mining_host" {
        return a
            .evidence()
            .and_then(|e| e.get("pools"))
            .and_then(Value::as_array)
            .and_then(|p| chart::pools::chart(p))
            .into_iter()
            .collect();
    }
    let v = &a.latest;
    let start = v["event"]["start"].as_str().and_then(parse_time);
    let end = v["event"]["end"].as_str().and_then(parse_time);
    let evidence = a.evidence();
    let first = match a.rule.as_str() {
        "periodic_flow" => {
            let from_evidence = evidence
                .and_then(|e| e.get("intervals_s"))
                .and_then(Value::as_array)
                .map(|v| v.iter().take(4096).filter_map(Value::as_f64).collect());
            chart::intervals::chart(from_evidence, flows)
        }
        "encrypted_mining" => evidence
            .and_then(|e| e.get("contributions"))
            .and_then(Value::as_array)
            .and_then(|c| chart::contributions::chart(c)),
        _ => None,
    };
    let mut out: Vec<Chart> = first.into_iter().collect();
    if out.is_empty() || flows.is_some_and(|f| f.len() > 1) {
        out.extend(chart::timeline::chart(flows, start, end));
    }
    out.extend(chart::bytes::chart(flows, &a.history, start));
    out
}

/// Reads the inputs and renders the page.
pub fn build(
    alarms: &Path,
    flows: Option<&Path>,
    limits: &Limits,
    generated: &str,
) -> Result<Report, InputError> {
    let mut inputs: Inputs = input::read(alarms, flows, limits)?;
    let mut list = std::mem::take(&mut inputs.alarms);
    // Most severe first; among equals, in the order they appeared.
    list.sort_by(|a, b| {
        b.severity()
            .cmp(&a.severity())
            .then(a.first_line.cmp(&b.first_line))
    });
    let mut detailed = 0;
    let entries: Vec<Entry> = list
        .into_iter()
        .map(|alarm| {
            let flows = alarm
                .conv
                .as_ref()
                .and_then(|k| inputs.flows.get(k))
                .map(Vec::as_slice);
            // Host alarms are always shown in full; the rest up to the bound.
            let full = alarm.rule == "mining_host" || detailed < limits.max_detailed;
            if full && alarm.rule != "mining_host" {
                detailed += 1;
            }
            let charts = if full {
                charts(&alarm, flows)
            } else {
                Vec::new()
            };
            Entry {
                alarm,
                charts,
                detailed: full,
            }
        })
        .collect();
    let html = page::render(&inputs, &entries, generated);
    Ok(Report {
        html,
        alarms: entries.len(),
        charts: entries.iter().map(|e| e.charts.len()).sum(),
        skipped: inputs.skipped,
        notes: inputs.notes,
        alarms_left_out: inputs.alarms_left_out,
    })
}
