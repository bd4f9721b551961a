//! The histogram of the intervals between messages (in-flow periodicity) or between
//! connection starts (periodicity across connections): a beacon is one tall bar.
//!
//! The intervals come from the alarm's evidence (`intervals_s`, which `periodic_flow` writes
//! from the samples it scored), else from the start times of the conversation's flow records.

use plotters::prelude::*;

use super::{offset_label, quantity_label, render, span, Chart};
use crate::report::input::FlowPoint;

const BINS: usize = 24;

/// Intervals between consecutive distinct flow starts, seconds.
fn from_flows(flows: &[FlowPoint]) -> Vec<f64> {
    let mut starts: Vec<f64> = flows.iter().filter_map(|f| f.start).collect();
    starts.sort_by(f64::total_cmp);
    starts.dedup();
    starts.windows(2).map(|w| w[1] - w[0]).collect()
}

pub fn chart(evidence_intervals: Option<Vec<f64>>, flows: Option<&[FlowPoint]>) -> Option<Chart> {
    let (intervals, source) = match evidence_intervals.filter(|v| !v.is_empty()) {
        Some(v) => {
            let n = v.len();
            (
                v,
                format!("the {n} intervals the rule scored (evidence intervals_s)"),
            )
        }
        None => {
            let v = from_flows(flows?);
            let n = v.len();
            (v, format!("the {n} intervals between the starts of this conversation's flow records in --flows"))
        }
    };
    let intervals: Vec<f64> = intervals
        .into_iter()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .collect();
    if intervals.is_empty() {
        return None;
    }
    let lo = intervals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = intervals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let range = span(lo, hi);
    let width = (range.end - range.start) / BINS as f64;
    let mut counts = [0u32; BINS];
    for v in &intervals {
        let i = (((v - range.start) / width) as usize).min(BINS - 1);
        counts[i] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1);
    let svg =
        render(|root| {
            let mut chart = ChartBuilder::on(root)
                .margin(10)
                .x_label_area_size(32)
                .y_label_area_size(56)
                .build_cartesian_2d(range.clone(), 0.0..(f64::from(top) * 1.1))?;
            chart
                .configure_mesh()
                // Major grid lines only: the minor ones double the SVG and add little.
                .light_line_style(TRANSPARENT)
                .disable_x_mesh()
                .x_desc("interval")
                .y_desc("count")
                .x_label_formatter(&|x| offset_label(*x).trim_start_matches('+').to_string())
                .y_label_formatter(&|y| quantity_label(*y))
                .draw()?;
            let color = RGBColor(148, 103, 189);
            chart.draw_series(counts.iter().enumerate().filter(|(_, c)| **c > 0).map(
                |(i, c)| {
                    let x0 = range.start + i as f64 * width;
                    Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.92, f64::from(*c))],
                        color.filled(),
                    )
                },
            ))?;
            Ok(())
        });
    Some(Chart {
        title: "Intervals histogram",
        source,
        svg,
    })
}
