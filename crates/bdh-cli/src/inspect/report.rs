//! Self-contained HTML reports with SVG charts, written by hand-sized helpers.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 320.0;
/// Margins: left, right (legend), top, bottom (axis labels).
const L: f64 = 70.0;
const R: f64 = 150.0;
const T: f64 = 34.0;
const B: f64 = 56.0;
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/// One line (or set of dots) of a chart.
pub struct Series {
    /// Legend name.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
    /// Draw dots instead of a line.
    pub dots: bool,
}

/// An x–y chart.
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The series.
    pub series: Vec<Series>,
    /// Labels under the x axis at given x (e.g. the tokens of a text).
    pub x_labels: Vec<(f64, String)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A tick label with three significant digits.
fn fmt(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// Axis mapping from data to pixels.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    from: f64,
    to: f64,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool, from: f64, to: f64) -> Self {
        let vals: Vec<f64> =
            values.filter(|v| v.is_finite() && (!log || *v > 0.0)).map(|v| if log { v.log10() } else { v }).collect();
        let (mut lo, mut hi) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        }
        Axis { lo, hi, log, from, to }
    }
    fn px(&self, v: f64) -> Option<f64> {
        if self.log && v <= 0.0 || !v.is_finite() {
            return None;
        }
        let v = if self.log { v.log10() } else { v };
        Some(self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from))
    }
    /// Decades on a log axis that spans two or more; otherwise five even steps.
    fn ticks(&self) -> Vec<f64> {
        let (first, last) = (self.lo.ceil() as i32, self.hi.floor() as i32);
        if self.log && last - first >= 1 {
            return (first..=last).map(|k| 10f64.powi(k)).collect();
        }
        (0..=4)
            .map(|i| self.lo + (self.hi - self.lo) * i as f64 / 4.0)
            .map(|v| if self.log { 10f64.powf(v) } else { v })
            .collect()
    }
}

impl Chart {
    /// The chart as an inline SVG element.
    pub fn svg(&self) -> String {
        let xs = Axis::new(self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), self.log_x, L, W - R);
        let ys = Axis::new(self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), self.log_y, H - B, T);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
        );
        let _ = write!(s, r#"<text x="{}" y="18" font-size="14" font-weight="bold">{}</text>"#, L, esc(&self.title));
        let _ = write!(
            s,
            r##"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            W - R - L,
            H - B - T
        );
        for v in xs.ticks() {
            if let Some(x) = xs.px(v) {
                let _ = write!(
                    s,
                    r##"<line x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#999"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
                    H - B,
                    H - B + 4.0,
                    H - B + 16.0,
                    fmt(v)
                );
            }
        }
        for v in ys.ticks() {
            if let Some(y) = ys.px(v) {
                let _ = write!(
                    s,
                    r##"<line x1="{}" x2="{L}" y1="{y}" y2="{y}" stroke="#999"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                    L - 4.0,
                    L - 6.0,
                    y + 4.0,
                    fmt(v)
                );
            }
        }
        for (x, label) in &self.x_labels {
            if let Some(px) = xs.px(*x) {
                let _ = write!(
                    s,
                    r#"<text x="{px}" y="{}" text-anchor="middle" font-family="monospace" font-size="9">{}</text>"#,
                    H - B + 28.0,
                    esc(label)
                );
            }
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (L + W - R) / 2.0,
            H - 8.0,
            esc(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text transform="translate(14,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (T + H - B) / 2.0,
            esc(&self.y_label)
        );
        for (k, series) in self.series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let pts: Vec<(f64, f64)> =
                series.points.iter().filter_map(|&(x, y)| Some((xs.px(x)?, ys.px(y)?))).collect();
            if series.dots {
                for (x, y) in &pts {
                    let _ = write!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{color}"/>"#);
                }
            } else if !pts.is_empty() {
                let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = write!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#,
                    path.join(" ")
                );
            }
            let ly = T + 14.0 + 16.0 * k as f64;
            let _ = write!(
                s,
                r#"<rect x="{}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
                W - R + 10.0,
                ly - 9.0,
                W - R + 24.0,
                ly,
                esc(&series.name)
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// An HTML page of sections.
#[derive(Default)]
pub struct Page {
    body: String,
}

impl Page {
    /// Adds a heading.
    pub fn heading(&mut self, text: &str) {
        let _ = write!(self.body, "<h2>{}</h2>", esc(text));
    }
    /// Adds a paragraph of text.
    pub fn text(&mut self, text: &str) {
        let _ = write!(self.body, "<p>{}</p>", esc(text));
    }
    /// Adds a chart.
    pub fn chart(&mut self, chart: &Chart) {
        self.body.push_str("<figure>");
        self.body.push_str(&chart.svg());
        self.body.push_str("</figure>");
    }
    /// Adds a table.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        self.body.push_str("<table><tr>");
        for h in header {
            let _ = write!(self.body, "<th>{}</th>", esc(h));
        }
        self.body.push_str("</tr>");
        for r in rows {
            self.body.push_str("<tr>");
            for c in r {
                let _ = write!(self.body, "<td>{}</td>", esc(c));
            }
            self.body.push_str("</tr>");
        }
        self.body.push_str("</table>");
    }
    /// The whole page.
    pub fn html(&self, title: &str) -> String {
        format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
             body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
             figure{{margin:1em 0}}</style></head><body><h1>{t}</h1>{}</body></html>",
            self.body,
            t = esc(title)
        )
    }
}

/// Labels for the tokens of a text under a chart's x axis (every k-th when long).
pub fn token_labels(text: &[u8], max_labels: usize) -> Vec<(f64, String)> {
    let step = text.len().div_ceil(max_labels.max(1)).max(1);
    text.iter()
        .enumerate()
        .step_by(step)
        .map(|(i, &b)| {
            let label = match b {
                b'\n' => "⏎".to_string(),
                b' ' => "·".to_string(),
                0x21..=0x7e => (b as char).to_string(),
                _ => format!("{b:02x}"),
            };
            (i as f64, label)
        })
        .collect()
}
