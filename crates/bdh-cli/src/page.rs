//! Self-contained HTML pages: a provenance table, headings, text, tables, and
//! charts drawn as inline SVG by `plotters`.

use std::fmt::Write;

use plotters::prelude::*;

const SIZE: (u32, u32) = (760, 340);
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// One line (or set of dots) of a chart.
pub struct Series {
    /// Legend name.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
    /// Draw dots instead of a line.
    pub dots: bool,
    /// Palette index of its colour (default: its place in the chart).
    pub color: Option<usize>,
}

/// An x–y chart. An axis whose values are all whole numbers (layers, tokens,
/// steps) gets whole-number ticks only.
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
}

/// A node-link figure: nodes at given positions, coloured by group.
pub struct Network {
    /// Title above the figure.
    pub title: String,
    /// (x, y, group, label) of each node.
    pub nodes: Vec<(f64, f64, usize, String)>,
    /// Edges as (from, to) indices into `nodes`.
    pub edges: Vec<(usize, usize)>,
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

/// One axis: the range drawn (in log10 units on a log axis), how many ticks, and
/// whether its values are whole numbers.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    whole: bool,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool) -> Self {
        let vals: Vec<f64> = values.filter(|v| v.is_finite() && (!log || *v > 0.0)).collect();
        let whole = !log && !vals.is_empty() && vals.iter().all(|v| v.fract() == 0.0);
        let (mut lo, mut hi) = vals
            .iter()
            .map(|&v| if log { v.log10() } else { v })
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        } else if !whole {
            let pad = (hi - lo) * 0.03;
            (lo, hi) = (lo - pad, hi + pad);
        }
        Axis { lo, hi, log, whole }
    }

    /// Where `v` goes (log10 on a log axis); None if it cannot be drawn.
    fn map(&self, v: f64) -> Option<f64> {
        match self.log {
            true if v > 0.0 && v.is_finite() => Some(v.log10()),
            false if v.is_finite() => Some(v),
            _ => None,
        }
    }

    /// At most as many ticks as whole units (decades on a log axis) in the range,
    /// so plotters' round steps fall on whole numbers there.
    fn ticks(&self) -> usize {
        if self.whole || self.log {
            ((self.hi - self.lo).floor() as usize + 1).clamp(2, 10)
        } else {
            8
        }
    }

    fn label(&self, v: f64) -> String {
        if !self.log && v.abs() < (self.hi - self.lo) * 1e-9 {
            "0".into()
        } else if self.log {
            fmt(10f64.powf(v))
        } else if self.whole && v.fract().abs() > 1e-9 {
            String::new()
        } else {
            fmt(v)
        }
    }
}

/// How a series is drawn: a line, or one of the markers dot series take in turn
/// (so that series drawn at the same points stay apart).
#[derive(Clone, Copy)]
enum Mark {
    Line,
    Disc,
    Cross,
    Triangle,
    Ring,
}

impl Mark {
    /// The marks of `series`, in order: dot series take disc, cross, triangle, ring.
    fn of(series: &[Series]) -> Vec<Mark> {
        let dots = [Mark::Disc, Mark::Cross, Mark::Triangle, Mark::Ring];
        let mut k = 0;
        series
            .iter()
            .map(|s| match s.dots {
                false => Mark::Line,
                true => {
                    k += 1;
                    dots[(k - 1) % dots.len()]
                }
            })
            .collect()
    }

    /// Draws the mark at pixel `at` of `area` (a legend's glyph, or a point).
    fn draw<DB: DrawingBackend>(self, area: &DrawingArea<DB, plotters::coord::Shift>, at: (i32, i32), color: RGBColor) {
        let (x, y) = at;
        let _ = match self {
            Mark::Line => area.draw(&PathElement::new(vec![(x - 6, y), (x + 6, y)], color.stroke_width(2))),
            Mark::Disc => area.draw(&Circle::new(at, 4, color.filled())),
            Mark::Cross => area.draw(&Cross::new(at, 4, color.stroke_width(2))),
            Mark::Triangle => area.draw(&TriangleMarker::new(at, 5, color.filled())),
            Mark::Ring => area.draw(&Circle::new(at, 4, color.stroke_width(2))),
        };
    }
}

/// Height of a row of the legend, which sits below the plot, never on it.
const LEGEND_ROW: u32 = 22;

/// Where each legend entry goes, in rows below the plot: (row, x) per series.
fn legend_layout(series: &[Series]) -> Vec<(u32, i32)> {
    let (mut row, mut x) = (0u32, 70i32);
    series
        .iter()
        .map(|s| {
            let width = 30 + 7 * s.name.chars().count() as i32;
            if x + width > SIZE.0 as i32 - 8 && x > 70 {
                (row, x) = (row + 1, 70);
            }
            let at = (row, x);
            x += width;
            at
        })
        .collect()
}

impl Chart {
    /// The chart as an inline SVG element, its legend (if any) in rows below the plot.
    pub fn svg(&self) -> Result<String, String> {
        let xs = Axis::new(self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), self.log_x);
        let ys = Axis::new(self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), self.log_y);
        let labelled = self.series.len() > 1 || self.series.iter().any(|s| !s.name.is_empty());
        let layout = if labelled { legend_layout(&self.series) } else { Vec::new() };
        let rows = layout.iter().map(|&(r, _)| r + 1).max().unwrap_or(0);
        let marks = Mark::of(&self.series);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (SIZE.0, SIZE.1 + rows * LEGEND_ROW)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let (plot, legend) = root.split_vertically(SIZE.1);
            let mut chart = ChartBuilder::on(&plot)
                .caption(&self.title, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(42)
                .y_label_area_size(64)
                .build_cartesian_2d(xs.lo..xs.hi, ys.lo..ys.hi)
                .map_err(|e| e.to_string())?;
            let (xl, yl) = (|v: &f64| xs.label(*v), |v: &f64| ys.label(*v));
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .x_labels(xs.ticks())
                .y_labels(ys.ticks())
                .x_label_formatter(&xl)
                .y_label_formatter(&yl)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| e.to_string())?;
            for ((k, s), &mark) in self.series.iter().enumerate().zip(&marks) {
                let color = PALETTE[s.color.unwrap_or(k) % PALETTE.len()];
                let pts: Vec<(f64, f64)> =
                    s.points.iter().filter_map(|&(x, y)| Some((xs.map(x)?, ys.map(y)?))).collect();
                match mark {
                    Mark::Line => {
                        chart.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(|e| e.to_string())?;
                    }
                    _ => {
                        let area = chart.plotting_area();
                        let strip = area.strip_coord_spec();
                        for p in pts {
                            let (x, y) = area.map_coordinate(&p);
                            let (x0, y0) = strip.get_base_pixel();
                            mark.draw(&strip, (x - x0, y - y0), color);
                        }
                    }
                }
            }
            for ((k, s), (&(row, x), &mark)) in self.series.iter().enumerate().zip(layout.iter().zip(&marks)) {
                let color = PALETTE[s.color.unwrap_or(k) % PALETTE.len()];
                let y = (row * LEGEND_ROW + LEGEND_ROW / 2) as i32;
                mark.draw(&legend, (x + 6, y), color);
                let text = Text::new(s.name.clone(), (x + 18, y - 7), ("sans-serif", 13).into_font().color(&BLACK));
                legend.draw(&text).map_err(|e| e.to_string())?;
            }
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(svg)
    }
}

impl Network {
    /// The figure as an inline SVG element: edges as thin grey lines, nodes as
    /// discs coloured by group.
    pub fn svg(&self) -> Result<String, String> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (SIZE.0, SIZE.0)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, ("sans-serif", 16))
                .margin(16)
                .build_cartesian_2d(-1.15f64..1.15, -1.15f64..1.15)
                .map_err(|e| e.to_string())?;
            let at = |i: usize| (self.nodes[i].0, self.nodes[i].1);
            chart
                .draw_series(
                    self.edges
                        .iter()
                        .map(|&(a, b)| PathElement::new(vec![at(a), at(b)], BLACK.mix(0.12).stroke_width(1))),
                )
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(
                    self.nodes.iter().map(|&(x, y, g, _)| Circle::new((x, y), 4, PALETTE[g % PALETTE.len()].filled())),
                )
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(svg)
    }
}

/// `values` (one per token) as at most `max_points` points: each bucket of
/// consecutive tokens becomes one point at its last token, valued by `reduce`.
pub fn thin(values: &[f64], max_points: usize, reduce: fn(&[f64]) -> f64) -> Thinned {
    let width = values.len().div_ceil(max_points.max(1)).max(1);
    let points = values.chunks(width).enumerate().map(|(k, c)| ((k * width + c.len() - 1) as f64, reduce(c))).collect();
    Thinned { points, width }
}

/// Points of a thinned series.
pub struct Thinned {
    /// (position, value).
    pub points: Vec<(f64, f64)>,
    /// Tokens per point (1: every token).
    pub width: usize,
}

/// The mean of a bucket.
pub fn mean(c: &[f64]) -> f64 {
    c.iter().sum::<f64>() / c.len().max(1) as f64
}

/// The last value of a bucket (exact for a running total).
pub fn last(c: &[f64]) -> f64 {
    c.last().copied().unwrap_or(0.0)
}

/// An HTML page: where it came from, then sections.
#[derive(Default)]
pub struct Page {
    provenance: Vec<(String, String)>,
    body: String,
}

impl Page {
    /// A page whose header lists what produced it (model, text, command, version).
    pub fn new(provenance: Vec<(String, String)>) -> Self {
        Page { provenance, body: String::new() }
    }
    /// Adds a heading.
    pub fn heading(&mut self, text: &str) {
        let _ = write!(self.body, "<h2>{}</h2>", esc(text));
    }
    /// Adds a paragraph of text.
    pub fn text(&mut self, text: &str) {
        let _ = write!(self.body, "<p>{}</p>", esc(text));
    }
    /// Adds a chart (or, if it cannot be drawn, says why).
    pub fn chart(&mut self, chart: &Chart) {
        self.figure(chart.svg());
    }
    /// Adds a node-link figure.
    pub fn network(&mut self, network: &Network) {
        self.figure(network.svg());
    }
    fn figure(&mut self, svg: Result<String, String>) {
        match svg {
            Ok(svg) => {
                let _ = write!(self.body, "<figure>{svg}</figure>");
            }
            Err(e) => self.text(&format!("(this figure could not be drawn: {e})")),
        }
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
    /// Adds a sample headed `label`: its prompt, a bar, what the model wrote, as
    /// written (line breaks kept, left-aligned, in a fixed-width font).
    pub fn sample(&mut self, label: &str, prompt: &str, text: &str) {
        let _ = write!(
            self.body,
            "<p class=\"sample\">{}</p><pre class=\"sample\"><span class=\"prompt\">{}</span>│{}</pre>",
            esc(label),
            esc(prompt),
            esc(text)
        );
    }
    /// Adds a text as lines of `per_line` tokens, each led by its first token's
    /// position, so positions on a chart's axis can be found in it; at most
    /// `max_tokens` tokens, saying so when the text is longer.
    pub fn positions(&mut self, text: &[u8], per_line: usize, max_tokens: usize) {
        let shown = text.len().min(max_tokens);
        if shown < text.len() {
            self.text(&format!("The text's first {shown} of {} tokens, by position:", text.len()));
        } else {
            self.text("The text, by position:");
        }
        self.body.push_str("<pre class=\"positions\">");
        for (k, line) in text[..shown].chunks(per_line.max(1)).enumerate() {
            let shown: String = line
                .iter()
                .map(|&b| match b {
                    b'\n' => '⏎',
                    b'\t' => '⇥',
                    0x20..=0x7e => b as char,
                    _ => '·',
                })
                .collect();
            let _ = writeln!(self.body, "{:>7} │ {}", k * per_line, esc(&shown));
        }
        self.body.push_str("</pre>");
    }
    /// The whole page.
    pub fn html(&self, title: &str) -> String {
        let mut head = String::from("<table class=\"provenance\">");
        for (k, v) in &self.provenance {
            let _ = write!(head, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
        }
        head.push_str("</table>");
        format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
             body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
             table.provenance td,table.provenance th{{text-align:left;font-size:90%;vertical-align:top}}\
             table.provenance td{{font-family:monospace;white-space:pre-wrap;word-break:break-all}}\
             pre.positions{{font-size:85%;overflow-x:auto}}\
             p.sample{{margin:1em 0 0.2em;font-weight:bold}}\
             pre.sample{{white-space:pre-wrap;text-align:left;background:#f6f6f6;padding:6px;margin:0}}\
             pre.sample span.prompt{{color:#777}}\
             figure{{margin:1em 0}}</style></head><body><h1>{t}</h1>{head}{}</body></html>",
            self.body,
            t = esc(title)
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn chart(points: Vec<(f64, f64)>, log_x: bool) -> Chart {
        let series = vec![Series { name: "s".into(), points, dots: false, color: None }];
        Chart { title: "t".into(), x_label: "x".into(), y_label: "y".into(), log_x, log_y: false, series }
    }

    /// The x axis's tick labels of an SVG chart: the numeric `<text>` elements on
    /// the lowest row that holds two or more of them.
    pub(crate) fn x_ticks(svg: &str) -> Vec<String> {
        let mut rows: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
        for t in svg.split("<text").skip(1) {
            let (attrs, rest) = t.split_once('>').unwrap_or_default();
            let label = rest.split_once('<').map_or("", |r| r.0).trim().to_string();
            let y = attrs.split("y=\"").nth(1).and_then(|r| r.split('"').next()).and_then(|v| v.parse::<f64>().ok());
            if let (Some(y), true) = (y, label.parse::<f64>().is_ok()) {
                rows.entry(y.round() as i64).or_default().push(label);
            }
        }
        rows.into_values().rev().find(|r| r.len() >= 2).unwrap_or_default()
    }

    #[test]
    fn whole_number_axes_get_whole_number_ticks_only() {
        for n in [2usize, 3, 4, 7, 31, 100, 399, 1890] {
            let svg = chart((0..n).map(|i| (i as f64, (i * i) as f64 * 0.1 + 0.05)).collect(), false).svg().unwrap();
            let ticks = x_ticks(&svg);
            assert!(ticks.len() >= 2, "{n}: {ticks:?}");
            assert!(ticks.iter().all(|t| t.parse::<u64>().is_ok()), "{n} points: x ticks {ticks:?}");
        }
        let axis = Axis::new([0.0, 1.0, 2.0, 3.0].into_iter(), false);
        assert!(axis.whole);
        assert_eq!(axis.label(0.75), "");
        assert_eq!(axis.label(2.0), "2");
        assert!(!Axis::new([0.0, 0.5].into_iter(), false).whole);
    }

    /// The (x, y) of every `<circle>` of an SVG.
    pub(crate) fn circles(svg: &str) -> Vec<(f64, f64)> {
        let attr = |t: &str, name: &str| -> Option<f64> {
            t.split(&format!(" {name}=\"")).nth(1)?.split('"').next()?.parse().ok()
        };
        svg.split("<circle").skip(1).filter_map(|t| Some((attr(t, "cx")?, attr(t, "cy")?))).collect()
    }

    /// The y of the `<text>` elements that say `label`.
    fn text_y(svg: &str, label: &str) -> Vec<f64> {
        svg.split("<text")
            .skip(1)
            .filter(|t| t.split_once('>').is_some_and(|(_, rest)| rest.trim_start().starts_with(label)))
            .filter_map(|t| t.split(" y=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect()
    }

    /// A legend never lies on the data: with points in every corner of the plot and
    /// several series, each legend label is below every plotted point.
    #[test]
    fn a_legend_lies_below_the_plotted_points() {
        let corners = vec![(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.5, 0.5)];
        let series = ["validation", "train (mean of the last 20 steps)", "copying a stated value at random", "a line"]
            .iter()
            .enumerate()
            .map(|(k, name)| Series { name: name.to_string(), points: corners.clone(), dots: k < 3, color: None })
            .collect();
        let chart =
            Chart { title: "t".into(), x_label: "x".into(), y_label: "y".into(), log_x: false, log_y: false, series };
        let svg = chart.svg().unwrap();
        let points: Vec<(f64, f64)> = circles(&svg).into_iter().filter(|p| p.1 < SIZE.1 as f64).collect();
        assert!(points.len() >= 5, "{points:?}");
        let lowest = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        for label in ["validation", "train (mean", "copying a stated", "a line"] {
            let ys = text_y(&svg, label);
            assert!(!ys.is_empty(), "no legend label {label:?}");
            assert!(ys.iter().all(|&y| y > lowest + 10.0), "{label:?} at {ys:?}, a point at {lowest}");
        }
    }

    #[test]
    fn log_axes_label_powers_of_ten() {
        let axis = Axis::new([1.0, 10.0, 1000.0].into_iter(), true);
        assert_eq!(axis.label(2.0), "100");
        assert_eq!(axis.ticks(), 4);
        let svg = chart(vec![(1.0, 1.0), (1000.0, 2.0)], true).svg().unwrap();
        assert_eq!(x_ticks(&svg), ["1", "10", "100", "1000"]);
    }

    #[test]
    fn thinning_keeps_the_last_value_and_the_positions() {
        let v: Vec<f64> = (0..10).map(f64::from).collect();
        let t = thin(&v, 4, last);
        assert_eq!(t.width, 3);
        assert_eq!(t.points, vec![(2.0, 2.0), (5.0, 5.0), (8.0, 8.0), (9.0, 9.0)]);
        let t = thin(&v, 100, mean);
        assert_eq!((t.points.len(), t.width), (10, 1));
        assert_eq!(thin(&v, 5, mean).points[0], (1.0, 0.5));
    }

    #[test]
    fn a_page_escapes_and_lists_its_provenance() {
        let mut p = Page::new(vec![("command".into(), "bdh <x>".into())]);
        p.positions(b"ab\ncd", 2, 4);
        let html = p.html("t");
        assert!(html.contains("bdh &lt;x&gt;"));
        assert!(html.contains("first 4 of 5 tokens"));
        assert!(html.contains("      2 │ ⏎c"));
    }
}
