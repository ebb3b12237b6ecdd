//! `bdh inspect connectome`: which groups of neurons work together when.

use bdh::microscope::connectome::{connectome, ConnectomeReport, MAX_NEURONS, MAX_RANK};
use bdh::microscope::Scope;

use super::{model_line, tokens, Output, TextArgs};
use crate::page::{Chart, Page, Series, Style};

/// Co-activation affinities of the most active neurons in windows of a text,
/// factorised into communities and their time courses.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    text: TextArgs,
    /// Tokens per window.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Tokens read, from the text's start (one stream, the state carried).
    #[arg(long, default_value_t = 8192)]
    tokens: usize,
    /// The most active neurons the tensor holds.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..=MAX_NEURONS as u64))]
    neurons: u64,
    /// Components kept (default: the smallest rank past which one more lowers the
    /// error by less than 0.01).
    #[arg(long)]
    rank: Option<usize>,
    /// The largest rank factorised.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=MAX_RANK as u64))]
    max_rank: u64,
    /// Seed of the factorisations' starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The bytes of window `w`, on one line.
fn window_text(bytes: &[u8], window: usize, w: usize) -> String {
    String::from_utf8_lossy(&bytes[w * window..(w + 1) * window]).replace('\n', "⏎")
}

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
    let mut bytes = args.text.read(out, "text")?;
    bytes.truncate(args.tokens);
    let r = connectome(
        model,
        &tokens(&bytes),
        args.window,
        args.neurons as usize,
        (args.rank, args.max_rank as usize),
        args.seed,
    )?;
    say!(
        "{}, {} windows of {} tokens, the {} most active neurons",
        model_line(model),
        r.windows,
        r.window,
        r.units.len()
    );
    let errors: Vec<String> = r.errors.iter().enumerate().map(|(k, e)| format!("R{} {e:.3}", k + 1)).collect();
    say!("relative error by rank: {}; rank {}", errors.join(", "), r.rank);
    for (k, c) in r.components.iter().enumerate() {
        let members: Vec<String> = c
            .community
            .iter()
            .take(6)
            .map(|&(i, w)| format!("{}:{}:{} {w:.2}", r.units[i].layer, r.units[i].head, r.units[i].neuron))
            .collect();
        say!("component {k} (λ {:.3}): {}", c.weight, members.join(", "));
        say!("  peaks in window {}: {}", c.peak, window_text(&bytes, r.window, c.peak));
    }
    out.write(&r, || page(out.page(), &r, &bytes), "bdh inspect connectome")
}

fn page(mut p: Page, r: &ConnectomeReport, bytes: &[u8]) -> Page {
    p.heading("Dynamic functional connectome");
    p.text(&format!(
        "The text in {} windows of {} tokens; in each, the co-activation affinity mean_t x_i x_j of every pair of the \
         {} most active neurons, stacked into a tensor (neurons × neurons × windows) and factorised into \
         non-negative components (CP by multiplicative updates): a community of neurons that co-activate, and its \
         time course over the windows. The error per rank tells how many components the data hold; rank {} is \
         shown.",
        r.windows,
        r.window,
        r.units.len(),
        r.rank
    ));
    p.chart(&Chart {
        title: "Fit by rank".into(),
        x_label: "rank R".into(),
        y_label: "‖X − X̂‖ / ‖X‖".into(),
        log_x: false,
        log_y: false,
        series: vec![Series {
            name: "relative error".into(),
            points: r.errors.iter().enumerate().map(|(k, &e)| ((k + 1) as f64, e)).collect(),
            style: Style::Line,
            color: None,
        }],
    });
    p.chart(&Chart {
        title: "Time courses of the components".into(),
        x_label: "window".into(),
        y_label: "activity (unit maximum)".into(),
        log_x: false,
        log_y: false,
        series: r
            .components
            .iter()
            .enumerate()
            .map(|(k, c)| Series {
                name: format!("component {k}"),
                points: c.course.iter().enumerate().map(|(w, &v)| (w as f64, v)).collect(),
                style: Style::Line,
                color: None,
            })
            .collect(),
    });
    for (k, c) in r.components.iter().enumerate() {
        p.heading(&format!("Component {k}: λ {:.3}, peaks in window {}", c.weight, c.peak));
        p.table_with_text(
            &["window", "text"],
            &[vec![c.peak.to_string(), window_text(bytes, r.window, c.peak)]],
            Some(1),
        );
        let rows: Vec<Vec<String>> = c
            .community
            .iter()
            .map(|&(i, w)| {
                let u = r.units[i];
                vec![u.layer.to_string(), u.head.to_string(), u.neuron.to_string(), format!("{w:.3}")]
            })
            .collect();
        p.table(&["layer", "head", "neuron", "loading"], &rows);
    }
    p
}
