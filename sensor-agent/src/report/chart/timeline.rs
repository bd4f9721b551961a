//! The conversation's connections as a timeline: one bar per connection from its start to its
//! end, in start order. From the flow records of `--flows`; without them, one bar from the
//! alarm's `event.start` to `event.end` (the conversation as the alarm saw it).

use plotters::prelude::*;

use super::{offset_label, render, span, Chart};
use crate::report::input::FlowPoint;

/// Bars drawn at most; a conversation with more shows its first and last ones.
const MAX_BARS: usize = 120;

pub fn chart(flows: Option<&[FlowPoint]>, start: Option<f64>, end: Option<f64>) -> Option<Chart> {
    let (mut bars, source): (Vec<(f64, f64)>, String) = match flows.filter(|f| !f.is_empty()) {
        Some(f) => (
            f.iter()
                .filter_map(|f| {
                    let s = f.start.or(f.end)?;
                    Some((s, f.end.unwrap_or(s).max(s)))
                })
                .collect(),
            format!(
                "the {} flow record(s) of this conversation in --flows",
                f.len()
            ),
        ),
        None => (
            vec![(start?, end.or(start)?)],
            "the alarm's event.start and event.end (no flow records given)".to_string(),
        ),
    };
    bars.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = bars.len();
    let mut source = source;
    if total > MAX_BARS {
        let tail = bars.split_off(total - MAX_BARS / 2);
        bars.truncate(MAX_BARS / 2);
        bars.extend(tail);
        source.push_str(&format!(
            "; the first and last {} of {total} connections drawn",
            MAX_BARS / 2
        ));
    }
    let origin = bars.first()?.0;
    let x_max = bars.iter().map(|b| b.1 - origin).fold(0.0, f64::max);
    let rows = bars.len();
    let svg = render(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(span(0.0, x_max), 0.0..rows as f64)?;
        chart
            .configure_mesh()
            // Major grid lines only: the minor ones double the SVG and add little.
            .light_line_style(TRANSPARENT)
            .disable_y_mesh()
            .x_desc("time since the first connection")
            .y_desc("connection")
            .x_label_formatter(&|x| offset_label(*x))
            .y_label_formatter(&|y| format!("{}", *y as usize + 1))
            .y_labels(rows.min(10))
            .draw()?;
        let color = RGBColor(44, 160, 44);
        // A zero-length connection still shows: at least 0.4% of the axis wide.
        let min_w = span(0.0, x_max).end * 0.004;
        chart.draw_series(bars.iter().enumerate().map(|(i, (s, e))| {
            let (s, e) = (s - origin, e - origin);
            let row = i as f64;
            Rectangle::new(
                [(s, row + 0.15), ((e).max(s + min_w), row + 0.85)],
                color.filled(),
            )
        }))?;
        Ok(())
    });
    Some(Chart {
        title: "Connections over time",
        source,
        svg,
    })
}
