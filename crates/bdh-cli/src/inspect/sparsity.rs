//! `bdh inspect sparsity`.

use bdh::microscope::sparsity::sparsity;
use bdh::microscope::Scope;

use super::{model_line, tokens, Output, TextArgs};
use crate::page::{mean, thin, Chart, Page, Series, Style, Thinned};

/// Fractions of non-zero x, y and x⊙y over a text.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    text: TextArgs,
    /// Tokens per window (each window starts from an empty state).
    #[arg(long, default_value_t = 256)]
    window: usize,
}

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
    let bytes = args.text.read(out, "text")?;
    let r = sparsity(model, &tokens(&bytes), args.window)?;
    say!("{}, {} tokens in windows of {}", model_line(model), r.tokens, r.window);
    say!("{:<6} {:>8} {:>8} {:>8} {:>8}   per-token x: min / median / max", "layer", "x", "y", "x⊙y", "pairs");
    for l in &r.layers {
        let q = l.per_token_x_quartiles;
        say!(
            "{:<6} {:>7.2}% {:>7.2}% {:>7.2}% {:>7.2}%   {:.1}% / {:.1}% / {:.1}%",
            l.layer,
            100.0 * l.all.x,
            100.0 * l.all.y,
            100.0 * l.all.xy,
            100.0 * l.all.pairs,
            100.0 * q[0],
            100.0 * q[2],
            100.0 * q[4]
        );
    }
    let top = &r.most_active[0];
    say!(
        "most active: layer {} head {} neuron {} fires on {:.1}% of tokens; {} neurons never fired",
        top.layer,
        top.head,
        top.neuron,
        100.0 * top.rate,
        r.silent
    );
    out.write(&r, || page(out.page(), &r, &bytes), "bdh inspect sparsity")
}

fn page(mut p: Page, r: &bdh::microscope::sparsity::SparsityReport, text: &[u8]) -> Page {
    p.heading("Sparsity per layer");
    p.text(&format!(
        "{} tokens, windows of {}. Fractions of non-zero activations over all heads and tokens.",
        r.tokens, r.window
    ));
    let per_layer = |name: &str, f: &dyn Fn(&bdh::microscope::sparsity::Fractions) -> f64| Series {
        name: name.into(),
        points: r.layers.iter().map(|l| (l.layer as f64, f(&l.all))).collect(),
        style: Style::Line,
        color: None,
    };
    p.chart(&Chart {
        title: "Fraction of non-zero activations by layer".into(),
        x_label: "layer".into(),
        y_label: "fraction non-zero".into(),
        log_x: false,
        log_y: false,
        series: vec![
            per_layer("x", &|f| f.x),
            per_layer("y", &|f| f.y),
            per_layer("x⊙y", &|f| f.xy),
            per_layer("RoPE pairs", &|f| f.pairs),
        ],
    });
    let per_token: Vec<(String, Thinned)> =
        r.layers.iter().map(|l| (format!("layer {}", l.layer), thin(&l.per_token_x, 1500, mean))).collect();
    let width = per_token.first().map_or(1, |(_, t)| t.width);
    p.chart(&Chart {
        title: if width == 1 {
            format!("Fraction of x > 0 at each of the {} tokens", r.tokens)
        } else {
            format!("Fraction of x > 0 over the {} tokens (means over {width} tokens)", r.tokens)
        },
        x_label: "token position".into(),
        y_label: "fraction of neurons firing".into(),
        log_x: false,
        log_y: false,
        series: per_token
            .into_iter()
            .map(|(name, t)| Series { name, points: t.points, style: Style::Line, color: None })
            .collect(),
    });
    p.positions(text, 64, 8192);
    p.chart(&Chart {
        title: "x firing rate by RoPE frequency".into(),
        x_label: "frequency (cycles per token)".into(),
        y_label: "firing rate".into(),
        log_x: true,
        log_y: false,
        series: r
            .layers
            .iter()
            .map(|l| Series {
                name: format!("layer {}", l.layer),
                points: l.by_frequency.clone(),
                style: Style::Line,
                color: None,
            })
            .collect(),
    });
    p.heading("Most and least active neurons");
    let rows: Vec<Vec<String>> = r
        .most_active
        .iter()
        .chain(&r.least_active)
        .map(|a| vec![a.layer.to_string(), a.head.to_string(), a.neuron.to_string(), format!("{:.2}%", 100.0 * a.rate)])
        .collect();
    p.table(&["layer", "head", "neuron", "fires on"], &rows);
    p
}
