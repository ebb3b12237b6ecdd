//! Reads a page's charts back from their SVG — where the plot, its marks and its
//! legend lie — so that a test can tell that every series shows, no two look
//! alike and no legend covers the data, from the geometry rather than by eye.
//! Shared by the binary's unit tests (`page`) and its end-to-end tests.

/// A shape drawn in a chart, in pixels.
#[derive(Clone, Debug)]
pub struct Shape {
    /// `polyline`, `line`, `circle` (filled), `ring` (a circle's outline),
    /// `polygon` or `rect`.
    pub kind: &'static str,
    /// Its colour (the fill's, or the stroke's when unfilled), as `#RRGGBB`.
    pub color: String,
    /// (left, top, right, bottom).
    pub bbox: (f64, f64, f64, f64),
}

impl Shape {
    fn centre(&self) -> (f64, f64) {
        ((self.bbox.0 + self.bbox.2) / 2.0, (self.bbox.1 + self.bbox.3) / 2.0)
    }

    /// Whether it covers enough pixels to be seen.
    fn visible(&self) -> bool {
        let (w, h) = (self.bbox.2 - self.bbox.0, self.bbox.3 - self.bbox.1);
        match self.kind {
            "polyline" | "line" => w + h >= 2.0,
            "rect" => w >= 1.0 && h >= 1.0,
            _ => w >= 3.0 && h >= 3.0,
        }
    }
}

/// A legend entry: its name, where its text's top lies, and its glyph's look —
/// the (kind, colour) of each shape of the glyph, sorted.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub top: f64,
    pub look: Vec<(&'static str, String)>,
}

/// A chart as drawn.
#[derive(Clone, Debug)]
pub struct Drawn {
    /// Its title (the first text).
    pub title: String,
    /// The plot's box between the axes: (left, top, right, bottom).
    pub plot: (f64, f64, f64, f64),
    /// The coloured shapes inside the plot.
    pub marks: Vec<Shape>,
    /// The legend's entries, in order.
    pub legend: Vec<Entry>,
}

/// The value of attribute `name` of an element's attributes.
fn attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    attrs.split(&format!(" {name}=\"")).nth(1)?.split('"').next()
}

fn num(attrs: &str, name: &str) -> Option<f64> {
    attr(attrs, name)?.parse().ok()
}

/// The box of a `points` list.
fn points_box(points: &str) -> Option<(f64, f64, f64, f64)> {
    let pts: Vec<(f64, f64)> = points
        .split_whitespace()
        .filter_map(|p| {
            let (x, y) = p.split_once(',')?;
            Some((x.parse().ok()?, y.parse().ok()?))
        })
        .collect();
    let first = pts.first()?;
    Some(
        pts.iter().fold((first.0, first.1, first.0, first.1), |b, p| {
            (b.0.min(p.0), b.1.min(p.1), b.2.max(p.0), b.3.max(p.1))
        }),
    )
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// The shapes and texts (content, x, top) of an SVG.
fn parse(svg: &str) -> (Vec<Shape>, Vec<(String, f64, f64)>) {
    let (mut shapes, mut texts) = (Vec::new(), Vec::new());
    for element in svg.split('<').skip(1) {
        let (head, rest) = element.split_once('>').unwrap_or((element, ""));
        let (tag, attrs) = head.split_once(' ').unwrap_or((head, ""));
        let attrs = format!(" {attrs}");
        if tag == "text" {
            if let (Some(x), Some(y)) = (num(&attrs, "x"), num(&attrs, "y")) {
                texts.push((unescape(rest.trim()), x, y));
            }
            continue;
        }
        if attr(&attrs, "opacity") == Some("0") {
            continue;
        }
        let fill = attr(&attrs, "fill").filter(|f| *f != "none");
        let stroke = attr(&attrs, "stroke").filter(|s| *s != "none");
        let bbox = match tag {
            "polyline" | "polygon" => attr(&attrs, "points").and_then(points_box),
            "line" => (|| {
                let (x1, y1, x2, y2) = (num(&attrs, "x1")?, num(&attrs, "y1")?, num(&attrs, "x2")?, num(&attrs, "y2")?);
                Some((x1.min(x2), y1.min(y2), x1.max(x2), y1.max(y2)))
            })(),
            "circle" => (|| {
                let (x, y, r) = (num(&attrs, "cx")?, num(&attrs, "cy")?, num(&attrs, "r")?);
                Some((x - r, y - r, x + r, y + r))
            })(),
            "rect" => (|| {
                let (x, y, w, h) =
                    (num(&attrs, "x")?, num(&attrs, "y")?, num(&attrs, "width")?, num(&attrs, "height")?);
                Some((x, y, x + w, y + h))
            })(),
            _ => None,
        };
        let (kind, color) = match (tag, fill, stroke) {
            ("polyline" | "line", _, Some(s)) => (if tag == "line" { "line" } else { "polyline" }, s),
            ("circle", Some(f), _) => ("circle", f),
            ("circle", None, Some(s)) => ("ring", s),
            ("polygon", Some(f), _) => ("polygon", f),
            ("rect", Some(f), _) => ("rect", f),
            _ => continue,
        };
        let Some(bbox) = bbox else { continue };
        let color = color.to_uppercase();
        // Opaque black lines are the axes and their ticks, kept apart for `read`.
        let opaque = attr(&attrs, "opacity").is_none_or(|o| o == "1");
        if color == "#000000" && kind == "polyline" && opaque {
            shapes.push(Shape { kind: "axis", color, bbox });
        } else if color != "#000000" && color != "#FFFFFF" {
            shapes.push(Shape { kind, color, bbox });
        }
    }
    (shapes, texts)
}

/// Reads a chart's SVG; None if it has no axes (a figure that is not a chart).
pub fn read(svg: &str) -> Option<Drawn> {
    let (shapes, texts) = parse(svg);
    let axes: Vec<&Shape> = shapes.iter().filter(|s| s.kind == "axis").collect();
    let longest = |vertical: bool| {
        axes.iter()
            .filter(|s| if vertical { s.bbox.2 == s.bbox.0 } else { s.bbox.3 == s.bbox.1 })
            .max_by(|a, b| {
                let len = |s: &Shape| (s.bbox.2 - s.bbox.0) + (s.bbox.3 - s.bbox.1);
                len(a).total_cmp(&len(b))
            })
            .filter(|s| (s.bbox.2 - s.bbox.0) + (s.bbox.3 - s.bbox.1) > 50.0)
    };
    let (y_axis, x_axis) = (longest(true)?, longest(false)?);
    let plot = (y_axis.bbox.0, y_axis.bbox.1, x_axis.bbox.2, x_axis.bbox.1);
    let coloured: Vec<&Shape> = shapes.iter().filter(|s| s.kind != "axis").collect();
    let inside = |s: &Shape| {
        let (x, y) = s.centre();
        (plot.0 - 6.0..=plot.2 + 6.0).contains(&x) && (plot.1 - 6.0..=plot.3 + 6.0).contains(&y)
    };
    let marks: Vec<Shape> = coloured.iter().filter(|s| inside(s)).map(|s| (*s).clone()).collect();
    // A legend entry: a text below the plot with a glyph just left of it.
    let legend = texts
        .iter()
        .filter(|t| t.2 > plot.3)
        .filter_map(|(name, x, top)| {
            let mut look: Vec<(&'static str, String)> = coloured
                .iter()
                .filter(|s| s.centre().1 > plot.3 + 6.0)
                .filter(|s| {
                    (x - 24.0..x - 2.0).contains(&s.centre().0) && (top - 4.0..top + 18.0).contains(&s.centre().1)
                })
                .map(|s| (s.kind, s.color.clone()))
                .collect();
            look.sort();
            look.dedup();
            (!look.is_empty()).then(|| Entry { name: name.clone(), top: *top, look })
        })
        .collect();
    let title = texts.first().map_or(String::new(), |t| t.0.clone());
    Some(Drawn { title, plot, marks, legend })
}

/// What is wrong with a chart: nothing plotted; a legend entry with no visible
/// mark of its look in the plot; two entries that look alike; a legend entry that
/// is not below every plotted mark.
pub fn faults(d: &Drawn) -> Vec<String> {
    let mut out = Vec::new();
    if !d.marks.iter().any(Shape::visible) {
        out.push("nothing is plotted".to_string());
    }
    for e in &d.legend {
        for (kind, color) in &e.look {
            if !d.marks.iter().any(|m| m.kind == *kind && &m.color == color && m.visible()) {
                out.push(format!("{:?} is drawn as a {kind} in {color} in the legend but not in the plot", e.name));
            }
        }
    }
    for (i, a) in d.legend.iter().enumerate() {
        for b in &d.legend[i + 1..] {
            if a.look == b.look {
                out.push(format!("{:?} and {:?} look alike: {:?}", a.name, b.name, a.look));
            }
        }
    }
    let lowest = d.marks.iter().map(|m| m.bbox.3).fold(f64::MIN, f64::max);
    for e in d.legend.iter().filter(|e| e.top <= lowest.max(d.plot.3)) {
        out.push(format!(
            "the legend's {:?} (top at {}) is not below the plot's marks (lowest at {lowest})",
            e.name, e.top
        ));
    }
    out
}

/// Reads every chart of a page (there must be at least `min`) and panics with what
/// is wrong with any of them, naming it by its title; returns them as drawn.
pub fn assert_charts_readable(html: &str, min: usize) -> Vec<Drawn> {
    let charts: Vec<Drawn> = html.split("<svg").skip(1).filter_map(|s| read(s.split("</svg>").next()?)).collect();
    assert!(charts.len() >= min, "{} charts on the page, expected at least {min}", charts.len());
    let wrong: Vec<String> =
        charts.iter().flat_map(|d| faults(d).into_iter().map(move |f| format!("{:?}: {f}", d.title))).collect();
    assert!(wrong.is_empty(), "charts that do not read:\n{}", wrong.join("\n"));
    charts
}
