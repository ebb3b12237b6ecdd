//! `bdh inspect graph`.

use std::time::Instant;

use bdh::microscope::graph::{analyse, GraphOptions, GraphStats, HeadGraph, Sketch, Threshold};
use bdh::model::bdh::Bdh;

use super::{model_line, Output};
use crate::page::{Chart, Network, Page, Series, Style};
use crate::progress::Job;

/// The neuron interaction graph of the weights, per head.
#[derive(clap::Args)]
pub struct Args {
    /// Heads to analyse (repeatable; default all).
    #[arg(long = "head")]
    heads: Vec<usize>,
    /// Thresholds, as quantiles of G's values (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.99,0.995,0.999")]
    quantiles: Vec<f64>,
    /// Louvain runs per graph (the best modularity is kept).
    #[arg(long, default_value_t = 4)]
    seeds: u64,
    /// Seed of the random baselines.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args, model: &Bdh, out: &mut Output) -> anyhow::Result<()> {
    let h = model.config.n_head;
    if let Some(bad) = args.heads.iter().find(|&&x| x >= h) {
        anyhow::bail!("head {bad} ≥ n_head {h}");
    }
    if let Some(q) = args.quantiles.iter().find(|q| !(0.0..1.0).contains(*q)) {
        anyhow::bail!("quantile {q} is not in [0, 1)");
    }
    let t0 = Instant::now();
    let opts =
        GraphOptions { heads: args.heads, quantiles: args.quantiles, louvain_seeds: args.seeds, seed: args.seed };
    let job = Job::new("inspect graph", 0);
    let heads = analyse(model, &opts, &|done, total| job.update(done, total));
    job.finish();
    say!(
        "{}; G_h[j, i] = decoder_h[j]·encoder_h[:, i] (edge j → i), {:.1} s",
        model_line(model),
        t0.elapsed().as_secs_f64()
    );
    say!(
        "{:<5} {:>9} {:>9} {:>9}  {:>10} {:>10} {:>10}  {:>12} {:>12}",
        "head",
        "quantile",
        "edges",
        "⟨k⟩",
        "Q model",
        "Q G(n,m)",
        "Q low-rank",
        "α out (xmin)",
        "α in (xmin)"
    );
    let fit = |s: &GraphStats, out: bool| {
        let f = if out { &s.out_fit } else { &s.in_fit };
        f.as_ref().map_or("-".into(), |f| format!("{:.2} ({})", f.alpha, f.x_min))
    };
    for hg in &heads {
        for t in &hg.sweep {
            say!(
                "{:<5} {:>9} {:>9} {:>9.2}  {:>10.3} {:>10.3} {:>10.3}  {:>12} {:>12}",
                hg.head,
                t.quantile,
                t.model.edges,
                t.model.mean_degree,
                t.model.modularity,
                t.random.modularity,
                t.low_rank.modularity,
                fit(&t.model, true),
                fit(&t.model, false)
            );
        }
    }
    out.write(&serde_json::json!({ "heads": heads }), || page(out.page(), &heads), "bdh inspect graph")
}

fn ccdf(hist: &[(u64, usize)]) -> Vec<(f64, f64)> {
    let total: usize = hist.iter().map(|h| h.1).sum();
    let mut above = total;
    hist.iter()
        .filter_map(|&(k, c)| {
            let p = above as f64 / total as f64;
            above -= c;
            (k > 0).then_some((k as f64, p))
        })
        .collect()
}

fn page(mut p: Page, heads: &[HeadGraph]) -> Page {
    p.text("G_h[j, i] = decoder_h[j, :] · encoder_h[:, i]: how strongly neuron j's output drives neuron i's input. An edge j → i where G exceeds the threshold. Baselines: G(n, m) random graphs with the same edge count, and the same threshold rule on a product of random Gaussian factors of the same rank.");
    for hg in heads {
        p.heading(&format!("Head {} ({} neurons)", hg.head, hg.n));
        let (edges, counts) = &hg.histogram;
        p.chart(&Chart {
            title: "Distribution of G's values (from a strided sample)".into(),
            x_label: "G value".into(),
            y_label: "entries".into(),
            log_x: false,
            log_y: true,
            series: vec![Series {
                name: "G".into(),
                points: edges.iter().zip(counts).map(|(&e, &c)| (e as f64, c as f64)).collect(),
                style: Style::Line,
                color: None,
            }],
        });
        if let Some(t) = hg.sweep.last() {
            p.chart(&degrees(hg, t));
        }
        if let Some(sk) = &hg.sketch {
            p.network(&network(sk, hg.head));
            let rows: Vec<Vec<String>> = sk
                .communities
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    let names: Vec<String> = c.iter().map(|i| i.to_string()).collect();
                    vec![k.to_string(), c.len().to_string(), names.join(" ")]
                })
                .collect();
            p.table(&["community", "neurons drawn", "neurons (best-connected first)"], &rows);
        }
        let by = |name: &str, f: &dyn Fn(&Threshold) -> f64| Series {
            name: name.into(),
            points: hg.sweep.iter().map(|t| (t.model.edges as f64, f(t))).collect(),
            style: Style::Line,
            color: None,
        };
        p.chart(&Chart {
            title: "Modularity against edge count (threshold sweep)".into(),
            x_label: "edges".into(),
            y_label: "Newman modularity (Louvain)".into(),
            log_x: true,
            log_y: false,
            series: vec![
                by("model", &|t| t.model.modularity),
                by("G(n,m)", &|t| t.random.modularity),
                by("low-rank", &|t| t.low_rank.modularity),
            ],
        });
        p.table(
            &["quantile", "threshold", "edges", "Q model", "Q G(n,m)", "Q low-rank", "α out model", "α out low-rank"],
            &sweep_rows(hg),
        );
    }
    p
}

/// The degree distributions at threshold `t`, the model's against both baselines,
/// with the power-law fit of its out-degrees.
fn degrees(hg: &HeadGraph, t: &Threshold) -> Chart {
    let mut series = Vec::new();
    for (name, s) in [
        ("model out", &t.model.out_degrees),
        ("model in", &t.model.in_degrees),
        ("G(n,m) out", &t.random.out_degrees),
        ("low-rank out", &t.low_rank.out_degrees),
    ] {
        series.push(Series { name: name.into(), points: ccdf(s), style: Style::Dots, color: None });
    }
    if let Some(f) = &t.model.out_fit {
        let kmax = t.model.max_out_degree.max(f.x_min + 1) as f64;
        let share = f.tail as f64 / hg.n as f64;
        let line = (0..40)
            .map(|i| f.x_min as f64 * (kmax / f.x_min as f64).powf(i as f64 / 39.0))
            .map(|k| (k, share * ((k - 0.5) / (f.x_min as f64 - 0.5)).powf(1.0 - f.alpha)))
            .collect();
        series.push(Series { name: format!("fit α={:.2}", f.alpha), points: line, style: Style::Line, color: None });
    }
    Chart {
        title: format!("Degree distributions at quantile {} ({} edges)", t.quantile, t.model.edges),
        x_label: "degree k".into(),
        y_label: "P(degree ≥ k)".into(),
        log_x: true,
        log_y: true,
        series,
    }
}

/// The threshold sweep's rows: edges, modularities and out-degree fits.
fn sweep_rows(hg: &HeadGraph) -> Vec<Vec<String>> {
    hg.sweep
        .iter()
        .map(|t| {
            let f = |s: &GraphStats| {
                s.out_fit.as_ref().map_or("-".into(), |f| format!("{:.2} (x_min {}, KS {:.3})", f.alpha, f.x_min, f.ks))
            };
            vec![
                t.quantile.to_string(),
                format!("{:.4}", t.value),
                t.model.edges.to_string(),
                format!("{:.3}", t.model.modularity),
                format!("{:.3}", t.random.modularity),
                format!("{:.3}", t.low_rank.modularity),
                f(&t.model),
                f(&t.low_rank),
            ]
        })
        .collect()
}

/// The sketch laid out: each community on a small circle, the communities around
/// a large one; node colour is the community.
fn network(sk: &Sketch, head: usize) -> Network {
    let groups = sk.communities.len();
    let mut nodes = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (g, members) in sk.communities.iter().enumerate() {
        let turn = std::f64::consts::TAU * g as f64 / groups.max(1) as f64;
        let (cx, cy) = if groups > 1 { (0.78 * turn.cos(), 0.78 * turn.sin()) } else { (0.0, 0.0) };
        let r = if groups > 1 { 0.26 * (std::f64::consts::PI / groups as f64).sin().min(0.75) / 0.38 } else { 0.8 };
        for (k, &i) in members.iter().enumerate() {
            let a = std::f64::consts::TAU * k as f64 / members.len() as f64;
            index.insert(i, nodes.len());
            nodes.push((cx + r * a.cos(), cy + r * a.sin(), g, i.to_string()));
        }
    }
    let edges = sk.edges.iter().filter_map(|(a, b)| Some((*index.get(a)?, *index.get(b)?))).collect();
    Network {
        title: format!(
            "Head {head}: the {groups} strongest communities at quantile {} (best-connected neurons)",
            sk.quantile
        ),
        nodes,
        edges,
    }
}
