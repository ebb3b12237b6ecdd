//! `bdh inspect complexity`: how complex each neuron's firing is over a text.

use bdh::microscope::complexity::{complexity, ComplexityReport, NeuronComplexity, MAX_TOKENS};
use bdh::microscope::top::top;
use bdh::microscope::Scope;
use bdh::model::bdh::Site;

use super::{model_line, tokens, Output, TextArgs};
use crate::page::{Chart, Page, Series, Style};

/// The Lempel–Ziv complexity of each neuron's firing over a text, against shuffles
/// of the same firing rate.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    text: TextArgs,
    /// Tokens analysed, from the text's start (one stream, the state carried).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(2..=MAX_TOKENS as u64))]
    tokens: u64,
    /// Shuffles of each neuron's sequence to normalise by.
    #[arg(long, default_value_t = 2)]
    shuffles: usize,
    /// Seed of the shuffles.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Neurons at each end of the ranking shown with their strongest contexts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=10))]
    contexts: u64,
}

/// A listed neuron's strongest contexts, as lines.
type Shown = Vec<(NeuronComplexity, Vec<String>)>;

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
    let mut bytes = args.text.read(out, "text")?;
    bytes.truncate(args.tokens as usize);
    anyhow::ensure!(bytes.len() >= 2, "the text has {} byte; complexity needs at least 2", bytes.len());
    let r = complexity(model, &tokens(&bytes), args.shuffles, args.seed)?;
    say!("{}, {} tokens, each neuron against {} shuffles of its firing", model_line(model), r.tokens, r.shuffles);
    say!("{:<6} {:<5} {:>8}   normalised LZ complexity: min / quartiles / max", "layer", "head", "varying");
    for h in &r.heads {
        let q = h.quartiles;
        say!(
            "{:<6} {:<5} {:>8}   {:.3} / {:.3} {:.3} {:.3} / {:.3}",
            h.layer,
            h.head,
            h.varying,
            q[0],
            q[1],
            q[2],
            q[3],
            q[4]
        );
    }
    let share = 100.0 * bdh::microscope::complexity::MIN_SHARE;
    say!(
        "left out: {} neurons firing on fewer than {share}% of tokens, {} on more than {}%",
        r.constant.0,
        r.constant.1,
        100.0 - share
    );
    let k = args.contexts as usize;
    let mut shown: [Shown; 2] = [Vec::new(), Vec::new()];
    for (which, (label, list)) in [("least complex", &r.least), ("most complex", &r.most)].into_iter().enumerate() {
        say!("{label}:");
        for (i, u) in list.iter().enumerate() {
            say!(
                "  {}:{}:{}  {:.3} (LZ {} against {:.1}), fires on {:.1}%",
                u.layer,
                u.head,
                u.neuron,
                u.normalised,
                u.lz,
                u.shuffled,
                100.0 * u.rate
            );
            if i < k {
                let t = top(model, &bytes, u.layer, u.head, u.neuron, Site::X, 4, 1, 16)?;
                let lines: Vec<String> = t
                    .contexts
                    .iter()
                    .map(|c| format!("{}[{}]{}", c.before, c.token, c.after).replace('\n', "⏎"))
                    .collect();
                for line in &lines {
                    say!("      {line}");
                }
                shown[which].push((u.clone(), lines));
            }
        }
    }
    out.write(&r, || page(out.page(), &r, &shown), "bdh inspect complexity")
}

fn page(mut p: Page, r: &ComplexityReport, shown: &[Shown; 2]) -> Page {
    let share = 100.0 * bdh::microscope::complexity::MIN_SHARE;
    p.heading("Firing complexity per head");
    p.text(&format!(
        "{} tokens. Each neuron's firing (x > 0 at each token) as a binary sequence; its Lempel–Ziv (1976) \
         complexity divided by the mean of {} shuffles of the same sequence (same length and firing rate): about 1 \
         for firing as unpredictable as coin flips at its rate, well below for firing on a schedule or in runs. \
         Left out: {} neurons that fired on fewer than {share}% of the tokens and {} on more than {}% (a handful of \
         events, whose ratio is mostly the noise of small counts).",
        r.tokens,
        r.shuffles,
        r.constant.0,
        r.constant.1,
        100.0 - share
    ));
    let bins = r.heads.first().map_or(1, |h| h.histogram.len());
    p.chart(&Chart {
        title: "Normalised complexity of the neurons that fire, per head".into(),
        x_label: "LZ complexity / shuffled".into(),
        y_label: "neurons".into(),
        log_x: false,
        log_y: false,
        series: r
            .heads
            .iter()
            .map(|h| Series {
                name: format!("layer {} head {}", h.layer, h.head),
                points: h
                    .histogram
                    .iter()
                    .enumerate()
                    .map(|(b, &c)| ((b as f64 + 0.5) * 1.5 / bins as f64, c as f64))
                    .collect(),
                style: Style::Line,
                color: None,
            })
            .collect(),
    });
    let rows: Vec<Vec<String>> = r
        .heads
        .iter()
        .map(|h| {
            let mut row = vec![h.layer.to_string(), h.head.to_string(), h.varying.to_string()];
            row.extend(h.quartiles.iter().map(|q| format!("{q:.3}")));
            row
        })
        .collect();
    p.table(&["layer", "head", "neurons firing on 1–99%", "min", "25%", "median", "75%", "max"], &rows);
    for (label, list, shown) in
        [("Least complex neurons", &r.least, &shown[0]), ("Most complex neurons", &r.most, &shown[1])]
    {
        p.heading(label);
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|u| {
                vec![
                    format!("{}:{}:{}", u.layer, u.head, u.neuron),
                    format!("{:.3}", u.normalised),
                    u.lz.to_string(),
                    format!("{:.1}", u.shuffled),
                    format!("{:.1}%", 100.0 * u.rate),
                ]
            })
            .collect();
        p.table(&["neuron", "normalised", "LZ", "shuffled", "fires on"], &rows);
        for (u, lines) in shown {
            let rows: Vec<Vec<String>> = lines.iter().map(|l| vec![l.clone()]).collect();
            p.text(&format!("Neuron {}:{}:{}, its strongest contexts:", u.layer, u.head, u.neuron));
            p.table_with_text(&["context"], &rows, Some(0));
        }
    }
    p
}
