//! Charts as inline SVG drawn by `plotters`: x–y charts of lines and markers, and
//! bars at named places; each with its legend in rows below the plot, never on it.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::{Axis, Coord};

pub(super) const SIZE: (u32, u32) = (760, 340);
pub(super) const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Style {
    /// A line through the points. A lone point gets a disc, so that it shows; long
    /// lines, two or more in a chart, each carry a marker of their own at a few
    /// places, so that one drawn over another still shows.
    Line,
    /// A marker at each point; dot series take disc, cross, triangle and ring in
    /// turn, so that series drawn at the same points stay apart.
    Dots,
    /// A line through the points with this marker at each: series of one colour
    /// are told apart by their markers.
    Marked(Mark),
}

/// A marker at a point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mark {
    /// A filled disc.
    Disc,
    /// An ×.
    Cross,
    /// A filled triangle.
    Triangle,
    /// A circle's outline.
    Ring,
}

/// One line (or set of markers) of a chart.
pub struct Series {
    /// Legend name.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
    /// How it is drawn.
    pub style: Style,
    /// Palette index of its colour (default: its place in the chart).
    pub color: Option<usize>,
}

/// An x–y chart. An axis whose values are all whole numbers (layers, tokens,
/// steps) gets whole-number ticks only; a log axis ticks 1, 2 and 5 of each decade.
/// A series with no point that can be drawn is left out, legend and all.
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

/// Bars at named places of the x axis (heads, the steps of a path): at each place
/// a group of one bar per series, from zero to its value.
pub struct Bars {
    /// Title above the plot.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
    /// The places' names, left to right.
    pub places: Vec<String>,
    /// (legend name, one value per place) of each series of bars.
    pub series: Vec<(String, Vec<f64>)>,
    /// (legend name, value) of each reference line drawn across the chart, in grey
    /// and the palette's other colours from its end.
    pub lines: Vec<(String, f64)>,
}

/// The markers dot series take in turn.
const MARKS: [Mark; 4] = [Mark::Disc, Mark::Cross, Mark::Triangle, Mark::Ring];
/// A line of more points than this, beside another, is marked at a few places only.
const LONG_LINE: usize = 20;
/// The places a long line is marked at.
const MARKED_PLACES: usize = 10;

/// What a legend shows for a series, and how its points are drawn.
#[derive(Clone, Copy)]
enum Glyph {
    /// A line, with markers (at each point, or at a few places of a long line) or
    /// without.
    Line(Option<Mark>),
    /// A marker at each point.
    Dots(Mark),
    /// A filled bar.
    Bar,
}

/// A series' look: its glyph in its colour.
#[derive(Clone, Copy)]
struct Look {
    glyph: Glyph,
    color: RGBColor,
}

impl Mark {
    /// Draws the mark at pixel `at` of `area`.
    fn draw<DB: DrawingBackend>(self, area: &DrawingArea<DB, Shift>, at: (i32, i32), color: RGBColor) {
        let _ = match self {
            Mark::Disc => area.draw(&Circle::new(at, 4, color.filled())),
            Mark::Cross => area.draw(&Cross::new(at, 4, color.stroke_width(2))),
            Mark::Triangle => area.draw(&TriangleMarker::new(at, 5, color.filled())),
            Mark::Ring => area.draw(&Circle::new(at, 4, color.stroke_width(2))),
        };
    }
}

impl Look {
    /// Draws the legend's glyph centred at pixel `at` of `area`.
    fn draw_glyph<DB: DrawingBackend>(self, area: &DrawingArea<DB, Shift>, at: (i32, i32)) {
        let (x, y) = at;
        match self.glyph {
            Glyph::Line(mark) => {
                let _ = area.draw(&PathElement::new(vec![(x - 8, y), (x + 8, y)], self.color.stroke_width(2)));
                if let Some(m) = mark {
                    m.draw(area, at, self.color);
                }
            }
            Glyph::Dots(m) => m.draw(area, at, self.color),
            Glyph::Bar => {
                let _ = area.draw(&Rectangle::new([(x - 5, y - 5), (x + 5, y + 5)], self.color.filled()));
            }
        }
    }
}

/// Height of a row of the legend, which sits below the plot, never on it.
const LEGEND_ROW: u32 = 22;

/// Where each legend entry goes, in rows below the plot: (row, x) per name.
fn legend_layout(names: &[&str]) -> Vec<(u32, i32)> {
    let (mut row, mut x) = (0u32, 70i32);
    names
        .iter()
        .map(|name| {
            let width = 34 + 7 * name.chars().count() as i32;
            if x + width > SIZE.0 as i32 - 8 && x > 70 {
                (row, x) = (row + 1, 70);
            }
            let at = (row, x);
            x += width;
            at
        })
        .collect()
}

/// The plot of a chart: axes of f64 with the ticks placed by [`Axis::ticks`].
type Plot<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<Coord, Coord>>;

/// Draws a chart as SVG: title, axes and ticks, then `data` in the plot, then a
/// legend entry for each of `legend` in rows below.
fn draw(
    labels: [&str; 3],
    xs: &Axis,
    ys: &Axis,
    legend: &[(&str, Look)],
    data: impl FnOnce(&mut Plot) -> Result<(), String>,
) -> Result<String, String> {
    let [title, x_label, y_label] = labels;
    let names: Vec<&str> = legend.iter().map(|(name, _)| *name).collect();
    let layout = legend_layout(&names);
    let rows = layout.iter().map(|&(r, _)| r + 1).max().unwrap_or(0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, SIZE.1 + rows * LEGEND_ROW)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot, below) = root.split_vertically(SIZE.1);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(xs.coord(), ys.coord())
            .map_err(|e| e.to_string())?;
        let (xl, yl) = (|v: &f64| xs.label(*v), |v: &f64| ys.label(*v));
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&xl)
            .y_label_formatter(&yl)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        data(&mut chart)?;
        for (&(name, look), &(row, x)) in legend.iter().zip(&layout) {
            let y = (row * LEGEND_ROW + LEGEND_ROW / 2) as i32;
            look.draw_glyph(&below, (x + 8, y));
            let text = Text::new(name.to_string(), (x + 22, y - 7), ("sans-serif", 13).into_font().color(&BLACK));
            below.draw(&text).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Draws `mark` at each of `points` (drawn units) of the plot.
fn marks(chart: &Plot, points: &[(f64, f64)], mark: Mark, color: RGBColor) {
    let area = chart.plotting_area();
    let strip = area.strip_coord_spec();
    let (x0, y0) = strip.get_base_pixel();
    for p in points {
        let (x, y) = area.map_coordinate(p);
        mark.draw(&strip, (x - x0, y - y0), color);
    }
}

impl Chart {
    /// The chart as an inline SVG element, its legend in rows below the plot.
    pub fn svg(&self) -> Result<String, String> {
        let xs = Axis::new(self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), self.log_x);
        let ys = Axis::new(self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), self.log_y);
        let mapped: Vec<Vec<(f64, f64)>> = self
            .series
            .iter()
            .map(|s| s.points.iter().filter_map(|&(x, y)| Some((xs.map(x)?, ys.map(y)?))).collect())
            .collect();
        // Long lines, where two or more may run over one another, each carry a marker
        // of their own at a few places, staggered, so that a line under another shows.
        let is_long = |k: usize| self.series[k].style == Style::Line && mapped[k].len() > LONG_LINE;
        let long = (0..self.series.len()).filter(|&k| is_long(k)).count();
        let (mut dots, mut longs) = (0, 0);
        let mut drawn = Vec::new();
        for (k, (s, points)) in self.series.iter().zip(&mapped).enumerate() {
            let in_turn = |n: &mut usize| {
                // Past the palette's end colours repeat; the markers then shift by one.
                let m = MARKS[(*n + *n / PALETTE.len()) % MARKS.len()];
                *n += 1;
                m
            };
            let (glyph, marked) = match s.style {
                Style::Line if long > 1 && is_long(k) => {
                    let j = longs as f64 + 0.5;
                    let at =
                        |m: usize| ((m as f64 + j / long as f64) / MARKED_PLACES as f64 * points.len() as f64) as usize;
                    let marked = (0..MARKED_PLACES).map(|m| points[at(m).min(points.len() - 1)]).collect();
                    (Glyph::Line(Some(in_turn(&mut longs))), marked)
                }
                Style::Line => (Glyph::Line(None), Vec::new()),
                Style::Marked(m) => (Glyph::Line(Some(m)), points.clone()),
                Style::Dots => (Glyph::Dots(in_turn(&mut dots)), points.clone()),
            };
            // A lone point has no line to draw: its marker (a disc if none) shows it.
            let (glyph, marked) = match glyph {
                Glyph::Line(m) if points.len() == 1 => (Glyph::Dots(m.unwrap_or(Mark::Disc)), points.clone()),
                g => (g, marked),
            };
            if !points.is_empty() {
                let color = PALETTE[s.color.unwrap_or(k) % PALETTE.len()];
                drawn.push((s.name.as_str(), Look { glyph, color }, points.clone(), marked));
            }
        }
        let labelled = drawn.len() > 1 || drawn.iter().any(|(name, ..)| !name.is_empty());
        let legend: Vec<(&str, Look)> =
            if labelled { drawn.iter().map(|&(name, look, ..)| (name, look)).collect() } else { Vec::new() };
        draw([&self.title, &self.x_label, &self.y_label], &xs, &ys, &legend, |chart| {
            // Every line first, then the markers over them all.
            for (_, look, points, _) in &drawn {
                if let Glyph::Line(_) = look.glyph {
                    let style = look.color.stroke_width(2);
                    chart.draw_series(LineSeries::new(points.clone(), style)).map_err(|e| e.to_string())?;
                }
            }
            for (_, look, _, marked) in &drawn {
                if let Glyph::Line(Some(m)) | Glyph::Dots(m) = look.glyph {
                    marks(chart, marked, m, look.color);
                }
            }
            Ok(())
        })
    }
}

impl Bars {
    /// The chart as an inline SVG element, its legend in rows below the plot.
    pub fn svg(&self) -> Result<String, String> {
        let xs = Axis::places(&self.places);
        let values = self.series.iter().flat_map(|(_, v)| v.iter().copied());
        let ys = Axis::new(values.chain(self.lines.iter().map(|l| l.1)).chain([0.0]), false);
        let bar = |k: usize| Look { glyph: Glyph::Bar, color: PALETTE[k % PALETTE.len()] };
        let line = |k: usize| Look { glyph: Glyph::Line(None), color: PALETTE[PALETTE.len() - 1 - k % PALETTE.len()] };
        let mut legend: Vec<(&str, Look)> =
            self.series.iter().enumerate().map(|(k, s)| (s.0.as_str(), bar(k))).collect();
        legend.extend(self.lines.iter().enumerate().map(|(k, l)| (l.0.as_str(), line(k))));
        let groups = self.series.len().max(1) as f64;
        draw([&self.title, &self.x_label, &self.y_label], &xs, &ys, &legend, |chart| {
            for (k, (_, values)) in self.series.iter().enumerate() {
                let color = bar(k).color;
                // Each place's group takes 80% of its width, bars side by side.
                let rects = values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| {
                    let left = i as f64 - 0.4 + 0.8 * k as f64 / groups;
                    Rectangle::new([(left, 0.0), (left + 0.75 / groups, v)], color.filled())
                });
                chart.draw_series(rects).map_err(|e| e.to_string())?;
            }
            for (k, &(_, v)) in self.lines.iter().enumerate() {
                let across = vec![(xs.lo, v), (xs.hi, v)];
                chart.draw_series(LineSeries::new(across, line(k).color.stroke_width(2))).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::figures::{assert_charts_readable, faults, read};

    fn series(name: &str, points: Vec<(f64, f64)>, style: Style, color: Option<usize>) -> Series {
        Series { name: name.into(), points, style, color }
    }

    fn chart(series: Vec<Series>, log_x: bool) -> Chart {
        Chart { title: "t".into(), x_label: "x".into(), y_label: "y".into(), log_x, log_y: false, series }
    }

    /// The x axis's tick labels of an SVG chart: the numeric `<text>` elements on
    /// the lowest row that holds two or more of them.
    fn x_ticks(svg: &str) -> Vec<String> {
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
            let points = (0..n).map(|i| (i as f64, (i * i) as f64 * 0.1 + 0.05)).collect();
            let svg = chart(vec![series("s", points, Style::Line, None)], false).svg().unwrap();
            let ticks = x_ticks(&svg);
            assert!(ticks.len() >= 2, "{n}: {ticks:?}");
            assert!(ticks.iter().all(|t| t.parse::<u64>().is_ok()), "{n} points: x ticks {ticks:?}");
        }
    }

    #[test]
    fn log_axes_label_powers_of_ten() {
        let svg = chart(vec![series("s", vec![(1.0, 1.0), (1000.0, 2.0)], Style::Line, None)], true).svg().unwrap();
        assert_eq!(x_ticks(&svg), ["1", "10", "100", "1000"]);
    }

    /// A legend never lies on the data: with points in every corner of the plot and
    /// several series, each legend entry is below every plotted point.
    #[test]
    fn a_legend_lies_below_the_plotted_points() {
        let corners = vec![(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.5, 0.5)];
        let names = ["validation", "train (mean of the last 20 steps)", "copying a stated value at random", "a line"];
        let all = names
            .iter()
            .enumerate()
            .map(|(k, name)| series(name, corners.clone(), if k < 3 { Style::Dots } else { Style::Line }, None))
            .collect();
        let svg = chart(all, false).svg().unwrap();
        let [drawn] = &assert_charts_readable(&svg, 1)[..] else { panic!("one chart") };
        assert_eq!(drawn.legend.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), names);
        let lowest = drawn.marks.iter().map(|m| m.bbox.3).fold(f64::MIN, f64::max);
        assert!(drawn.legend.iter().all(|e| e.top > lowest + 10.0), "{drawn:?}");
    }

    /// Every kind of series shows and no two look alike: a line's lone point gets a
    /// disc, dot series past the palette's end change marker as their colour comes
    /// round again, lines of one colour differ by marker, and a series with nothing
    /// to draw (here on a log axis) is left out of the legend.
    #[test]
    fn every_series_shows_and_no_two_look_alike() {
        let mut all = vec![
            series("lone", vec![(2.0, 3.0)], Style::Line, Some(7)),
            series("lone marked", vec![(2.5, 3.0)], Style::Marked(Mark::Cross), Some(7)),
            series("nothing", vec![(1.0, -1.0), (2.0, f64::NAN)], Style::Line, None),
            series("bdh xs", vec![(1.0, 2.0), (3.0, 1.5)], Style::Marked(Mark::Disc), Some(0)),
            series("bdh s", vec![(1.0, 1.9), (3.0, 1.4)], Style::Marked(Mark::Triangle), Some(0)),
        ];
        all.extend(
            (0..12).map(|k| series(&format!("dots {k}"), vec![(k as f64 + 1.0, 1.0 + k as f64)], Style::Dots, None)),
        );
        let c = Chart { log_y: true, ..chart(all, false) };
        let bars = Bars {
            title: "b".into(),
            x_label: "layer:head".into(),
            y_label: "share".into(),
            places: vec!["0:0".into(), "0:1".into(), "1:0".into()],
            series: vec![("induction".into(), vec![0.1, 0.0, 0.3]), ("previous token".into(), vec![0.2, 0.25, -0.1])],
            lines: vec![("even spread".into(), 0.05)],
        };
        let page = format!("{}{}", c.svg().unwrap(), bars.svg().unwrap());
        let drawn = assert_charts_readable(&page, 2);
        let names: Vec<&str> = drawn[0].legend.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), 16, "{names:?}");
        assert!(!names.contains(&"nothing"), "{names:?}");
        assert_eq!(drawn[1].legend.len(), 3);
        assert_eq!(drawn[1].marks.iter().filter(|m| m.kind == "rect").count(), 6);
    }

    /// Two long lines drawn one over the other: each carries its own markers at
    /// places of its own, so the one underneath still shows.
    #[test]
    fn a_line_drawn_over_another_still_shows() {
        let trace: Vec<(f64, f64)> = (0..500).map(|t| (t as f64, (t as f64).sqrt())).collect();
        let both = vec![series("a", trace.clone(), Style::Line, None), series("b", trace, Style::Line, None)];
        let [drawn] = &assert_charts_readable(&chart(both, false).svg().unwrap(), 1)[..] else { panic!("one chart") };
        let at = |color: &str| -> Vec<i64> {
            drawn.marks.iter().filter(|m| m.kind != "polyline" && m.color == color).map(|m| m.bbox.0 as i64).collect()
        };
        let (a, b) = (at(&drawn.legend[0].look[0].1), at(&drawn.legend[1].look[0].1));
        assert!(a.len() >= MARKED_PLACES && b.len() >= MARKED_PLACES, "{drawn:?}");
        assert!(a.iter().all(|x| !b.contains(x)), "markers at the same places: {a:?} {b:?}");
    }

    /// The check fails a chart whose series look alike, whose legend lies on the
    /// data, or whose legend names a series the plot does not show.
    #[test]
    fn the_check_finds_what_would_not_read() {
        let twins = vec![
            series("a", vec![(0.0, 0.0), (1.0, 1.0)], Style::Line, Some(2)),
            series("b", vec![(0.0, 1.0), (1.0, 0.0)], Style::Line, Some(2)),
        ];
        let drawn = read(&chart(twins, false).svg().unwrap()).unwrap();
        assert!(faults(&drawn).iter().any(|f| f.contains("look alike")), "{:?}", faults(&drawn));
        let pair = vec![
            series("a", vec![(0.0, 0.0), (1.0, 1.0)], Style::Line, None),
            series("b", vec![(0.0, 1.0), (1.0, 0.0)], Style::Dots, None),
        ];
        let good = read(&chart(pair, false).svg().unwrap()).unwrap();
        assert!(faults(&good).is_empty(), "{:?}", faults(&good));
        let mut on_the_data = good.clone();
        on_the_data.legend[1].top = good.plot.1 + 10.0;
        assert!(faults(&on_the_data).iter().any(|f| f.contains("\"b\"") && f.contains("not below")));
        let mut unseen = good.clone();
        unseen.marks.retain(|m| m.kind != "polyline");
        assert!(faults(&unseen).iter().any(|f| f.contains("\"a\" is drawn as a polyline")));
    }
}
