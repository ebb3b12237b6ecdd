//! `bdh graph prune`: how the loss grows as each node keeps fewer in-edges.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bdh::model::graph;

use super::Synapses;
use crate::model_args::ModelArgs;
use crate::page::{Chart, Series, Style};

/// Loss against edges kept.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text scored, read as bytes.
    #[arg(long)]
    text: PathBuf,
    /// Read at most this many bytes of the text.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..=1 << 20))]
    max_tokens: u64,
    /// The in-edges kept per node, sign and graph (comma-separated); the exact
    /// graphs are always scored too. Default: 1, 2, 4, … up to n.
    #[arg(long, value_name = "K", value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    keep: Vec<u64>,
    /// Which synapses of a pruned graph are plastic: the kept wires' edges (Gs ⊆ Gx,
    /// the default here: σ shrinks with the wires), or every pair. The exact graphs
    /// always have every pair.
    #[arg(long, value_enum, default_value = "wires")]
    synapses: Synapses,
    /// Draw loss against edges into this SVG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Write the table as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let model = super::bdh_model(&args.model)?;
    graph::check_model(&model).with_context(|| format!("model {}", args.model.model.display()))?;
    let (tokens, _) = super::read_bytes(&args.text, args.max_tokens, model.config.vocab_size)?;
    let n = model.config.total_neurons();
    let mut keeps: Vec<usize> = if args.keep.is_empty() {
        std::iter::successors(Some(1usize), |k| (k * 2 < n).then_some(k * 2)).collect()
    } else {
        args.keep.iter().map(|&k| usize::try_from(k).unwrap_or(usize::MAX)).collect()
    };
    keeps.sort_unstable();
    keeps.dedup();
    let wires = args.synapses == Synapses::Wires;
    println!(
        "BDH-Normfree n = {n}: loss on {} bytes of {} with each node's K strongest in-edges",
        tokens.len(),
        args.text.display()
    );
    println!("{:>8} {:>12} {:>12} {:>12} {:>10} {:>12}", "K", "Gx edges", "Gy edges", "Gs edges", "loss", "bits/byte");
    let mut rows = Vec::new();
    for keep in keeps.into_iter().map(Some).chain([None]) {
        let g = graph::build(&model, keep, wires && keep.is_some())
            .with_context(|| format!("model {}", args.model.model.display()))?;
        let (_, loss) = graph::score(&g, &tokens)?;
        let (gx, gy, gs) = (g.gx.e.edges() + g.gx.i.edges(), g.gy.e.edges() + g.gy.i.edges(), g.gs.edges());
        let k = keep.map_or_else(|| "all".to_string(), |k| k.to_string());
        println!("{k:>8} {gx:>12} {gy:>12} {gs:>12} {loss:>10.4} {:>12.4}", loss / std::f64::consts::LN_2);
        rows.push(serde_json::json!({ "keep": keep, "gx_edges": gx, "gy_edges": gy, "gs_edges": gs, "loss": loss }));
    }
    if let Some(path) = &args.plot {
        let point = |r: &serde_json::Value| (r["gx_edges"].as_f64().unwrap_or(0.0), r["loss"].as_f64().unwrap_or(0.0));
        let chart = Chart {
            title: format!("Loss against the edges kept (n = {n} neurons, n² = {})", n * n),
            x_label: "edges of Gx (log scale)".into(),
            y_label: "loss (nats per byte)".into(),
            log_x: true,
            log_y: false,
            series: vec![Series {
                name: "pruned graphs".into(),
                points: rows.iter().map(point).collect(),
                style: Style::Line,
                color: None,
            }],
        };
        let svg = chart.svg().map_err(|e| anyhow::anyhow!("drawing the chart: {e}"))?;
        super::write(path, svg.as_bytes())?;
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "model": args.model.model.display().to_string(), "text": args.text.display().to_string(), "tokens": tokens.len(), "synapses": format!("{:?}", args.synapses).to_lowercase(), "rows": rows });
        super::write(path, serde_json::to_string_pretty(&doc).expect("JSON").as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
