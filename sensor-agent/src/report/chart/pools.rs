//! A mining host's pools as bars: bytes the host sent to each pool and received from it, from
//! `sensor.evidence.pools` of a `mining_host` alarm, labelled with the pool and its coins.

use plotters::prelude::*;
use serde_json::Value;

use super::{quantity_label, render, Chart};

/// Pool labels are evidence text: drawn at most this long (plotters escapes them).
const MAX_LABEL: usize = 40;
/// Pools drawn (the evidence holds at most 32).
const MAX_POOLS: usize = 32;

fn label(pool: &Value) -> Option<String> {
    let ip = pool["ip"].as_str()?;
    let port = pool["port"]
        .as_u64()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let coins: Vec<&str> = pool["coins"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["coin"].as_str())
                .take(4)
                .collect()
        })
        .unwrap_or_default();
    let coin = if coins.is_empty() {
        String::new()
    } else {
        format!(" ({})", coins.join(", "))
    };
    Some(
        format!("{ip}{port}{coin}")
            .chars()
            .take(MAX_LABEL)
            .collect(),
    )
}

pub fn chart(pools: &[Value]) -> Option<Chart> {
    let bytes = |p: &Value, k: &str| {
        p[k].as_f64()
            .filter(|v| v.is_finite())
            .unwrap_or(0.0)
            .max(0.0)
    };
    let rows: Vec<(String, f64, f64)> = pools
        .iter()
        .take(MAX_POOLS)
        .filter_map(|p| Some((label(p)?, bytes(p, "bytes_out"), bytes(p, "bytes_in"))))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let x_max = rows.iter().map(|r| r.1 + r.2).fold(0.0, f64::max).max(1.0) * 1.1;
    let n = rows.len();
    let svg = render(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(230)
            .build_cartesian_2d(0.0..x_max, (0..n).into_segmented())?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .disable_y_mesh()
            .x_desc("bytes: sent by the host (dark), received (light)")
            .y_labels(n)
            .y_label_formatter(&|seg| match seg {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    rows.get(*i).map(|r| r.0.clone()).unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .x_label_formatter(&|x| quantity_label(*x))
            .draw()?;
        let color = RGBColor(31, 119, 180);
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (r.1, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            )
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [
                    (r.1, SegmentValue::Exact(i)),
                    (r.1 + r.2, SegmentValue::Exact(i + 1)),
                ],
                color.mix(0.35).filled(),
            )
        }))?;
        Ok(())
    });
    Some(Chart {
        title: "Pools of this host",
        source: format!("the {n} pool(s) in the alarm's evidence"),
        svg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_bar_per_pool_with_its_coin_and_escaped_text() {
        let pools = [
            json!({"ip": "192.0.2.7", "port": 3333, "bytes_out": 1200, "bytes_in": 5400,
                   "coins": [{"coin": "monero"}]}),
            json!({"ip": "<script>", "port": 1, "bytes_out": 1, "bytes_in": 2, "coins": []}),
            json!({"port": 9}),
        ];
        let c = chart(&pools).expect("a chart");
        let svg = c.svg.expect("drawn");
        assert!(svg.contains("192.0.2.7:3333 (monero)"), "{svg}");
        assert!(!svg.contains("<script>"), "plotters escapes labels");
        assert_eq!(c.source, "the 2 pool(s) in the alarm's evidence");
        assert!(chart(&[]).is_none());
    }
}
