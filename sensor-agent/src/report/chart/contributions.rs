//! The encrypted-mining score as bars: the points each contribution gave (weight x strength)
//! beside the weight it could have given, from `sensor.evidence.contributions`.

use plotters::prelude::*;
use serde_json::Value;

use super::{render, Chart};

/// Contribution names are evidence text: drawn at most this long (plotters escapes them).
const MAX_NAME: usize = 28;

pub fn chart(contributions: &[Value]) -> Option<Chart> {
    let rows: Vec<(String, f64, f64)> = contributions
        .iter()
        .take(32)
        .filter_map(|c| {
            let name: String = c["name"].as_str()?.chars().take(MAX_NAME).collect();
            let points = c["points"].as_f64().filter(|v| v.is_finite())?.max(0.0);
            let weight = c["weight"]
                .as_f64()
                .filter(|v| v.is_finite())
                .unwrap_or(points);
            Some((name, points, weight.max(points)))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let x_max = rows.iter().map(|r| r.2).fold(0.0, f64::max).max(0.05) * 1.1;
    let n = rows.len();
    let svg = render(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(170)
            .build_cartesian_2d(0.0..x_max, (0..n).into_segmented())?;
        chart
            .configure_mesh()
            // Major grid lines only: the minor ones double the SVG and add little.
            .light_line_style(TRANSPARENT)
            .disable_y_mesh()
            .x_desc("points (bar) of the weight (outline)")
            .y_labels(n)
            .y_label_formatter(&|seg| match seg {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    rows.get(*i).map(|r| r.0.clone()).unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .x_label_formatter(&|x| format!("{x:.2}"))
            .draw()?;
        let fill = RGBColor(255, 127, 14);
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (r.2, SegmentValue::Exact(i + 1)),
                ],
                fill.mix(0.5).stroke_width(1),
            )
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (r.1, SegmentValue::Exact(i + 1)),
                ],
                fill.filled(),
            )
        }))?;
        Ok(())
    });
    Some(Chart {
        title: "Encrypted-mining contributions",
        source: format!("the {n} contributions in the alarm's evidence"),
        svg,
    })
}
