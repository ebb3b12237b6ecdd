//! `bdh inspect geometry`: concept codes as sets of neurons.

use bdh::microscope::geometry::{geometry, GeometryReport, COLLISION_RATE, MAX_STATEMENTS};
use bdh::microscope::Scope;
use bdh::model::bdh::Site;

use super::{model_line, Output};
use crate::page::{Chart, Page, Series, Style};

/// The codes of the built-in language's concepts (places, colours): their overlap,
/// how many superpose before they collide, against random codes of the same sizes,
/// and a t-SNE map of their activations.
#[derive(clap::Args)]
pub struct Args {
    /// The activation a code is read from: x or xy (x ⊙ y, what the decoder reads).
    #[arg(long, default_value = "xy", value_parser = super::parse_site)]
    site: Site,
    /// Statements read per kind.
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u64).range(8..=MAX_STATEMENTS as u64))]
    statements: u64,
    /// Seed of the statements, the draws and the map.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
    let r = geometry(model, args.site, args.statements as usize, args.seed)?;
    let site = if r.site == Site::X { "x" } else { "x ⊙ y" };
    say!("{}; codes on {site} of every layer ({} neurons), {} concepts", model_line(model), r.pool, r.codes.len());
    let sizes: Vec<usize> = r.codes.iter().map(|c| c.neurons.len()).collect();
    say!(
        "code sizes: {} to {} neurons (mean {:.1})",
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
        sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64
    );
    for (label, s) in [("model", &r.model), ("random codes of the same sizes", &r.random)] {
        let held = if s.capacity == s.collisions.len() {
            format!("all {} codes superpose", s.capacity)
        } else {
            format!("up to {} codes superpose", s.capacity)
        };
        say!(
            "{label}: mean overlap (Jaccard) {:.3}; {held} with collisions in at most {:.0}% of draws",
            s.overlap,
            100.0 * COLLISION_RATE
        );
    }
    out.write(&r, || page(out.page(), &r), "bdh inspect geometry")
}

fn page(mut p: Page, r: &GeometryReport) -> Page {
    let site = if r.site == Site::X { "x" } else { "x ⊙ y" };
    p.heading("Concept codes");
    p.text(&format!(
        "Each concept of the built-in language (places, colours) read at its last byte in statements such as \"ada \
         lives in oslo.\"; its code is the set of neurons ({site}, every layer, {} in all) active at at least half of \
         its occurrences. Overlap: the mean Jaccard index over pairs of codes. Superposition: the union of k codes \
         drawn at random collides when it also holds every neuron of a code not drawn; capacity is the largest k \
         whose draws collide at most {:.0}% of the time. Random codes have the same sizes, their neurons drawn at \
         random.",
        r.pool,
        100.0 * COLLISION_RATE
    ));
    let collisions = |name: &str, rates: &[f64]| Series {
        name: name.into(),
        points: rates.iter().enumerate().map(|(k, &v)| ((k + 1) as f64, v)).collect(),
        style: Style::Line,
        color: None,
    };
    p.chart(&Chart {
        title: "Collisions of superposed codes".into(),
        x_label: "codes superposed (k)".into(),
        y_label: "share of draws with a collision".into(),
        log_x: false,
        log_y: false,
        series: vec![
            collisions("the model's codes", &r.model.collisions),
            collisions("random codes", &r.random.collisions),
        ],
    });
    p.table(
        &["codes", "mean overlap", "capacity"],
        &[
            vec!["the model's".into(), format!("{:.3}", r.model.overlap), r.model.capacity.to_string()],
            vec!["random, same sizes".into(), format!("{:.3}", r.random.overlap), r.random.capacity.to_string()],
        ],
    );
    for kind in [bdh::data::Kind::Place, bdh::data::Kind::Color] {
        let series: Vec<Series> = r
            .codes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == kind && c.occurrences > 0)
            .map(|(i, c)| Series {
                name: c.concept.clone(),
                points: r.map.iter().filter(|p| p.concept == i).map(|p| (p.x, p.y)).collect(),
                style: Style::Dots,
                color: None,
            })
            .collect();
        p.chart(&Chart {
            title: format!(
                "t-SNE map of the last layer's {site} at each occurrence: {} concepts",
                format!("{kind:?}").to_lowercase()
            ),
            x_label: "t-SNE 1".into(),
            y_label: "t-SNE 2".into(),
            log_x: false,
            log_y: false,
            series,
        });
    }
    let rows: Vec<Vec<String>> = r
        .codes
        .iter()
        .map(|c| {
            vec![
                c.concept.clone(),
                format!("{:?}", c.kind).to_lowercase(),
                c.occurrences.to_string(),
                c.neurons.len().to_string(),
            ]
        })
        .collect();
    p.table(&["concept", "kind", "occurrences", "code size"], &rows);
    p
}
