//! The report's charts: SVG drawn by `plotters` (its SVG backend writes escaped text and no
//! reference to anything outside the document), one file per kind of chart. Each chart says
//! where its data came from ([`Chart::source`]): the flow records of `--flows`, the alarm's
//! own history, or its evidence.
//!
//! A chart never fails the report: a drawing error becomes a note in place of the chart.

pub mod bytes;
pub mod contributions;
pub mod intervals;
pub mod pools;
pub mod timeline;

use plotters::{coord::Shift, prelude::*};

/// Width and height of every chart, in pixels.
pub const SIZE: (u32, u32) = (720, 260);

/// One drawn chart.
#[derive(Clone, Debug)]
pub struct Chart {
    pub title: &'static str,
    /// Where the data came from, in words.
    pub source: String,
    /// The SVG document (`<svg ...>...</svg>`), or why it could not be drawn.
    pub svg: Result<String, String>,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Runs `draw` on a fresh SVG canvas and returns the document.
fn render(draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Seconds from the chart's origin as a short label (`90` -> `1m30s`).
pub fn offset_label(secs: f64) -> String {
    if !secs.is_finite() {
        return String::new();
    }
    let neg = secs < 0.0;
    let s = secs.abs();
    let text = if s < 60.0 {
        format!("{s:.0}s")
    } else if s < 3600.0 {
        format!("{}m{:02.0}s", (s / 60.0).floor(), s % 60.0)
    } else if s < 86_400.0 {
        format!(
            "{}h{:02.0}m",
            (s / 3600.0).floor(),
            (s % 3600.0 / 60.0).floor()
        )
    } else {
        format!(
            "{}d{:02.0}h",
            (s / 86_400.0).floor(),
            (s % 86_400.0 / 3600.0).floor()
        )
    };
    if neg {
        format!("-{text}")
    } else {
        format!("+{text}")
    }
}

/// A short quantity label: 1.2k, 3.4M.
pub fn quantity_label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A non-empty range around `lo..hi` (plotters needs a span to scale).
fn span(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    if hi - lo > f64::EPSILON {
        lo..hi
    } else {
        (lo - 1.0)..(hi + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_and_ranges_never_empty() {
        assert_eq!(offset_label(90.0), "+1m30s");
        assert_eq!(offset_label(7260.0), "+2h01m");
        assert_eq!(quantity_label(1500.0), "1.5k");
        assert_eq!(span(5.0, 5.0), 4.0..6.0);
        assert_eq!(span(f64::NAN, 1.0), 0.0..1.0);
    }
}
