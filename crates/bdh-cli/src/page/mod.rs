//! Self-contained HTML pages: a provenance table, headings, text, tables, and
//! charts drawn as inline SVG by `plotters`.

use std::fmt::Write;

use plotters::prelude::*;

mod axis;
mod chart;

pub use chart::{Bars, Chart, Mark, Series, Style};
use chart::{PALETTE, SIZE};

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
    /// Adds a bar chart.
    pub fn bars(&mut self, bars: &Bars) {
        self.figure(bars.svg());
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
    /// Adds a table of numbers (right-aligned).
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        self.table_with_text(header, rows, None);
    }
    /// Adds a table whose column `text` (if any) holds text to read, not numbers:
    /// left-aligned in a fixed-width font, its spaces kept, so that texts padded to
    /// one width line up.
    pub fn table_with_text(&mut self, header: &[&str], rows: &[Vec<String>], text: Option<usize>) {
        let class = |k: usize| if Some(k) == text { " class=\"text\"" } else { "" };
        self.body.push_str("<table><tr>");
        for (k, h) in header.iter().enumerate() {
            let _ = write!(self.body, "<th{}>{}</th>", class(k), esc(h));
        }
        self.body.push_str("</tr>");
        for r in rows {
            self.body.push_str("<tr>");
            for (k, c) in r.iter().enumerate() {
                let _ = write!(self.body, "<td{}>{}</td>", class(k), esc(c));
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
             td.text{{font-family:monospace;text-align:left;white-space:pre}}th.text{{text-align:left}}\
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

/// Reads charts back from their SVG (shared with the end-to-end tests).
#[cfg(test)]
#[path = "../../tests/common/figures.rs"]
pub(crate) mod figures;

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A table's text column is marked as text (fixed-width, left-aligned, spaces
    /// kept); its other columns stay numbers.
    #[test]
    fn a_text_column_reads_as_text() {
        let mut p = Page::new(Vec::new());
        p.table_with_text(&["n", "context"], &[vec!["7".into(), "  a [b] c".into()]], Some(1));
        let html = p.html("t");
        assert!(html.contains("<th>n</th><th class=\"text\">context</th>"), "{html}");
        assert!(html.contains("<td>7</td><td class=\"text\">  a [b] c</td>"), "{html}");
        assert!(html.contains("td.text{font-family:monospace;text-align:left;white-space:pre}"), "{html}");
    }
}
