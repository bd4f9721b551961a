//! Bytes per direction over time: the cumulative bytes the client and the server sent.
//!
//! From the flow records of the conversation when there are any (each record adds its bytes at
//! its end), else from the alarm's own history (every opened/updated/closed line carries the
//! conversation's bytes so far at its `@timestamp`).

use plotters::prelude::*;

use super::{offset_label, quantity_label, render, span, Chart};
use crate::report::input::{FlowPoint, Step};

/// One point: seconds since the origin, client bytes, server bytes (cumulative).
type Point = (f64, f64, f64);

/// Cumulative bytes at each flow's end (or start when it has no end), from zero at the first
/// flow's start.
fn from_flows(flows: &[FlowPoint]) -> Vec<(f64, f64, f64)> {
    let mut ends: Vec<(f64, u64, u64)> = flows
        .iter()
        .filter_map(|f| Some((f.end.or(f.start)?, f.client_bytes, f.server_bytes)))
        .collect();
    ends.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = flows
        .iter()
        .filter_map(|f| f.start.or(f.end))
        .min_by(f64::total_cmp);
    let mut out = Vec::with_capacity(ends.len() + 1);
    if let Some(t) = first {
        out.push((t, 0.0, 0.0));
    }
    let (mut c, mut s) = (0.0, 0.0);
    for (t, cb, sb) in ends {
        c += cb as f64;
        s += sb as f64;
        out.push((t, c, s));
    }
    out
}

fn from_history(history: &[Step], start: Option<f64>) -> Vec<(f64, f64, f64)> {
    let mut out: Vec<(f64, f64, f64)> = start.map(|t| (t, 0.0, 0.0)).into_iter().collect();
    out.extend(history.iter().filter_map(|s| {
        Some((
            s.at?,
            s.client_bytes.unwrap_or(0) as f64,
            s.server_bytes.unwrap_or(0) as f64,
        ))
    }));
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The chart, or `None` when neither source has a timed point.
pub fn chart(flows: Option<&[FlowPoint]>, history: &[Step], start: Option<f64>) -> Option<Chart> {
    let (points, source) = match flows.filter(|f| !f.is_empty()) {
        Some(f) => (
            from_flows(f),
            format!(
                "the {} flow record(s) of this conversation in --flows, each counted at its end",
                f.len()
            ),
        ),
        None => (
            from_history(history, start),
            "the alarm's own events (bytes so far at each opened/updated/closed line)".to_string(),
        ),
    };
    let origin = points.first()?.0;
    let points: Vec<Point> = points
        .into_iter()
        .map(|(t, c, s)| (t - origin, c, s))
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max);
    let y_max = points.iter().map(|p| p.1.max(p.2)).fold(0.0, f64::max);
    let svg = render(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(span(0.0, x_max), span(0.0, y_max * 1.05))?;
        chart
            .configure_mesh()
            // Major grid lines only: the minor ones double the SVG and add little.
            .light_line_style(TRANSPARENT)
            .x_desc("time since the first point")
            .y_desc("bytes (cumulative)")
            .x_label_formatter(&|x| offset_label(*x))
            .y_label_formatter(&|y| quantity_label(*y))
            .draw()?;
        let client = RGBColor(31, 119, 180);
        let server = RGBColor(214, 39, 40);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                client.stroke_width(2),
            ))?
            .label("client -> server")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], client));
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.2)),
                server.stroke_width(2),
            ))?
            .label("server -> client")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], server));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    });
    Some(Chart {
        title: "Bytes per direction over time",
        source,
        svg,
    })
}
