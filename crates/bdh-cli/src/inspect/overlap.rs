//! `bdh inspect overlap`: how many of two concepts' most selective neurons are the
//! same, against random sets.

use bdh::microscope::ablate::{overlap, NeuronId, Overlap};
use bdh::microscope::Scope;

use super::concept::{doubling_to, ConceptArgs};
use super::{model_line, Output};
use crate::page::{Chart, Mark, Page, Series, Style};

/// Two concepts' most selective neurons: how many they share, against random sets.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    concept: ConceptArgs,
    /// The second concept: `place`, `color` or a file (against the same background).
    #[arg(long)]
    other: String,
    /// Neurons in each set.
    #[arg(long, default_value_t = 64)]
    top: usize,
    /// Random pairs of sets for the baseline.
    #[arg(long, default_value_t = 2000)]
    draws: usize,
}

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
    anyhow::ensure!(args.concept.concept.is_some(), "overlap needs --concept and --other");
    anyhow::ensure!((1..=100_000).contains(&args.draws), "--draws must be in 1..=100000");
    // Both concepts are ranked against the same background. A built-in concept's
    // default background is the other kind, which would differ between the two, so
    // then one must be given; two file concepts default to `color`.
    let background = match (&args.concept.background, args.concept.concept.as_deref(), args.other.as_str()) {
        (Some(b), _, _) => b.clone(),
        (None, Some("place" | "color"), _) | (None, _, "place" | "color") => anyhow::bail!(
            "overlap compares both concepts against one background: give --background (a file with one text per line)"
        ),
        (None, _, _) => "color".into(),
    };
    let first = ConceptArgs { background: Some(background.clone()), ..args.concept };
    let (_, a) = first.rank(model, out)?.expect("checked above");
    let second = ConceptArgs { concept: Some(args.other.clone()), ..first };
    let (_, b) = second.rank(model, out)?.expect("a concept");
    let (ia, ib): (Vec<NeuronId>, Vec<NeuronId>) = (a.iter().map(|s| s.id).collect(), b.iter().map(|s| s.id).collect());
    // The first 1, 2, 4, … of each ranking, up to --top: how deep the sharing goes.
    let curve = doubling_to(args.top)
        .into_iter()
        .map(|k| overlap(&ia, &ib, k, ia.len(), args.draws, 0))
        .collect::<Result<Vec<Overlap>, _>>()?;
    let r = curve.last().expect("--top ≥ 1").clone();
    say!("{}", model_line(model));
    say!(
        "top {} of {} neurons: {} shared, Jaccard {:.3}; random sets: mean {:.3}, 95th percentile {:.3}; p = {:.4}",
        r.k,
        r.total,
        r.shared,
        r.jaccard,
        r.random_mean,
        r.random_p95,
        r.p_value
    );
    #[derive(serde::Serialize)]
    struct Both<'a> {
        overlap: &'a Overlap,
        /// The same for the first 1, 2, 4, … of each ranking.
        by_size: &'a [Overlap],
        concept: Vec<NeuronId>,
        other: Vec<NeuronId>,
    }
    let both = Both { overlap: &r, by_size: &curve, concept: ia[..r.k].to_vec(), other: ib[..r.k].to_vec() };
    out.write(&both, || page(out.page(), &curve), "bdh inspect overlap")
}

/// The overlap at each set size, the largest last.
fn page(mut p: Page, curve: &[Overlap]) -> Page {
    p.heading("Overlap of two concepts' most selective neurons");
    p.text(
        "The Jaccard index |A ∩ B| / |A ∪ B| of the first k neurons of each concept's ranking, against pairs of \
         random sets of k of the same neurons: their mean and 95th percentile; p is the share of random pairs \
         that overlap at least as much.",
    );
    let line = |name: &str, f: fn(&Overlap) -> f64, style, color| Series {
        name: name.into(),
        points: curve.iter().map(|r| (r.k as f64, f(r))).collect(),
        style,
        color: Some(color),
    };
    p.chart(&Chart {
        title: "Jaccard index of the two concepts' first k neurons".into(),
        x_label: "neurons per set (k)".into(),
        y_label: "Jaccard index".into(),
        log_x: true,
        log_y: false,
        series: vec![
            line("the two concepts", |r| r.jaccard, Style::Marked(Mark::Disc), 0),
            line("random sets: mean", |r| r.random_mean, Style::Line, 7),
            line("random sets: 95th percentile", |r| r.random_p95, Style::Marked(Mark::Cross), 7),
        ],
    });
    let rows: Vec<Vec<String>> = curve
        .iter()
        .map(|r| {
            vec![
                r.k.to_string(),
                r.total.to_string(),
                r.shared.to_string(),
                format!("{:.3}", r.jaccard),
                format!("{:.3}", r.random_mean),
                format!("{:.3}", r.random_p95),
                format!("{:.4}", r.p_value),
            ]
        })
        .collect();
    p.table(&["neurons per set", "of", "shared", "Jaccard", "random mean", "random 95th pct.", "p"], &rows);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::figures::assert_charts_readable;

    /// The page draws the overlap at every set size beside the random sets', and
    /// lists it.
    #[test]
    fn the_overlap_page_draws_each_set_size_against_random_sets() {
        let curve: Vec<Overlap> = [1usize, 2, 4, 8, 16]
            .iter()
            .map(|&k| Overlap {
                k,
                total: 1024,
                shared: k * 3 / 4,
                jaccard: (k * 3 / 4) as f64 / (2 * k - k * 3 / 4) as f64,
                random_mean: k as f64 / 2048.0,
                random_p95: k as f64 / 512.0,
                p_value: 0.01,
            })
            .collect();
        let html = page(Page::new(Vec::new()), &curve).html("t");
        let charts = assert_charts_readable(&html, 1);
        assert_eq!(charts[0].legend.len(), 3);
        assert_eq!(html.matches("<td>1024</td>").count(), 5, "a row per set size");
    }
}
