//! `bdh inspect overlap`: how many of two concepts' most selective neurons are the
//! same, against random sets.

use bdh::microscope::ablate::{overlap, NeuronId, Overlap};
use bdh::model::bdh::Bdh;

use super::concept::ConceptArgs;
use super::{model_line, Output};
use crate::page::Page;

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

pub fn run(args: Args, model: &Bdh, out: &mut Output) -> anyhow::Result<()> {
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
    let r: Overlap = overlap(&ia, &ib, args.top, ia.len(), args.draws, 0)?;
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
        concept: Vec<NeuronId>,
        other: Vec<NeuronId>,
    }
    let both = Both { overlap: &r, concept: ia[..r.k].to_vec(), other: ib[..r.k].to_vec() };
    out.write(&both, || page(out.page(), &r), "bdh inspect overlap")
}

fn page(mut p: Page, r: &Overlap) -> Page {
    p.heading("Overlap of two concepts' most selective neurons");
    p.table(
        &["neurons per set", "of", "shared", "Jaccard", "random mean", "random 95th pct.", "p"],
        &[vec![
            r.k.to_string(),
            r.total.to_string(),
            r.shared.to_string(),
            format!("{:.3}", r.jaccard),
            format!("{:.3}", r.random_mean),
            format!("{:.3}", r.random_p95),
            format!("{:.4}", r.p_value),
        ]],
    );
    p
}
