//! `bdh inspect patch`: where a recalled fact lives.

use std::path::PathBuf;

use anyhow::Context;
use bdh::data::{SyntheticConfig, SyntheticLanguage};
use bdh::microscope::patch::{patch, PairTokens, PatchReport, Restored, MAX_PAIRS};
use bdh::microscope::Scope;
use bdh::model::bdh::Site;

use super::{model_line, read_file, Output};
use crate::page::{Chart, Page, Series, Style};
use crate::progress::Job;

/// Patch activations from clean texts into texts that differ in one stated fact.
#[derive(clap::Args)]
pub struct Args {
    /// Pairs drawn from the built-in language (lists and stories of the default
    /// corpus that differ in one stated value).
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    /// Instead: a JSON-lines file of pairs, each
    /// `{"clean": …, "corrupted": …, "clean_answer": …, "corrupt_answer": …}`; the two
    /// texts of a pair must have the same length, the answers different first bytes.
    #[arg(long)]
    pair_file: Option<PathBuf>,
    /// Seed of the built-in pairs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PairLine {
    clean: String,
    corrupted: String,
    clean_answer: String,
    corrupt_answer: String,
}

fn read_pairs(path: &std::path::Path, out: &mut Output) -> anyhow::Result<Vec<PairTokens>> {
    let bytes = read_file(path)?;
    out.provenance.file("pairs", path, &bytes);
    let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        anyhow::ensure!(pairs.len() < MAX_PAIRS, "{} has more than {MAX_PAIRS} pairs", path.display());
        let p: PairLine = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a pair object", path.display(), i + 1))?;
        let pair = PairTokens::new(
            p.clean.as_bytes(),
            p.corrupted.as_bytes(),
            p.clean_answer.as_bytes(),
            p.corrupt_answer.as_bytes(),
        )
        .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        pairs.push(pair);
    }
    anyhow::ensure!(!pairs.is_empty(), "{} has no pairs", path.display());
    Ok(pairs)
}

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
    if model.on_device() {
        eprintln!("note: the synapse patches (ρ) take the recurrent step, which runs on the CPU");
    }
    let pairs = match &args.pair_file {
        Some(path) => read_pairs(path, out)?,
        None => {
            anyhow::ensure!((1..=MAX_PAIRS).contains(&args.pairs), "--pairs must be in 1..={MAX_PAIRS}");
            let lang = SyntheticLanguage::new(SyntheticConfig::default());
            let drawn = lang.pairs(args.pairs, args.seed);
            if let Some(p) = drawn.first() {
                say!("e.g. clean …{:?} → {:?}; corrupted → {:?}", tail(&p.clean), p.clean_value, p.corrupt_value);
            }
            drawn.iter().map(PairTokens::from_pair).collect::<Result<_, _>>()?
        }
    };
    let job = Job::new("inspect patch", 0);
    let r = patch(model, &pairs, &|done, total| job.update(done, total))?;
    job.finish();
    say!("{}; {} pair{}", model_line(model), r.pairs, if r.pairs == 1 { "" } else { "s" });
    say!(
        "logit difference clean − corrupted answer: {:.3} on clean texts, {:.3} on corrupted; restored by patching:",
        r.clean_diff,
        r.corrupt_diff
    );
    let heads = model.config.n_head;
    let head_names: Vec<String> = (0..heads).map(|h| format!("head {h}")).chain(["all".into()]).collect();
    say!("{:<6} {:<5} {}", "layer", "site", head_names.iter().map(|h| format!("{h:>8}")).collect::<String>());
    for row in site_rows(&r) {
        say!(
            "{:<6} {:<5} {}",
            row.0,
            row.1,
            row.2.iter().map(|v| v.map_or("       -".into(), |v| format!("{:>7.1}%", 100.0 * v))).collect::<String>()
        );
    }
    let best = |b: &Restored| format!("{} of layer {} head {}", name(b.site), b.layer, b.head.unwrap_or(0));
    let curve = |g: &[bdh::microscope::patch::GroupPoint]| {
        g.iter()
            .map(|g| format!("{}: {:.0}% ({:.0}%)", g.k, 100.0 * g.restored, 100.0 * g.random))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let first = |ids: &[usize]| ids.iter().take(8).map(usize::to_string).collect::<Vec<_>>().join(",");
    say!("neurons of the best site ({}), patched k at a time (k random ones):", best(&r.best));
    say!("  {}\n  first: {}", curve(&r.neurons), first(&r.top_neurons));
    say!("rows of ρ of the best synapse head ({}), patched k at a time (k random ones):", best(&r.best_rho));
    say!("  {}\n  first: {}", curve(&r.rho_rows), first(&r.top_rho_rows));
    out.write(&r, || page(out.page(), &r, &head_names), "bdh inspect patch")
}

/// The last 60 bytes of a text.
fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(60);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn name(site: Site) -> &'static str {
    match site {
        Site::X => "x",
        Site::Y => "y",
        Site::Xy => "xy",
        Site::Rho => "rho",
        Site::Out => "out",
    }
}

/// (layer, site, restored per head and for all heads) in print order.
fn site_rows(r: &PatchReport) -> Vec<(usize, &'static str, Vec<Option<f64>>)> {
    let layers = r.sites.iter().map(|s| s.layer + 1).max().unwrap_or(0);
    let heads = r.sites.iter().filter_map(|s| s.head).max().map_or(0, |h| h + 1);
    let mut rows = Vec::new();
    for l in 0..layers {
        for site in [Site::X, Site::Y, Site::Xy, Site::Rho, Site::Out] {
            let at = |h: Option<usize>| {
                r.sites.iter().find(|s| s.layer == l && s.site == site && s.head == h).map(|s| s.restored)
            };
            rows.push((l, name(site), (0..heads).map(|h| at(Some(h))).chain([at(None)]).collect()));
        }
    }
    rows
}

fn page(mut p: Page, r: &PatchReport, head_names: &[String]) -> Page {
    p.heading("Activation and synapse patching");
    p.text(&format!(
        "{} pairs of texts that differ in one stated value. Each row patches one site of one layer (every position) from the clean run into the corrupted one; the number is the fraction of the answer's logit difference restored: (LD patched − LD corrupted) / (LD clean − LD corrupted), summed over pairs. Mean LD: {:.3} clean, {:.3} corrupted. rho patches the synapse state ρ read by the last token; out is the layer's output (the residual stream).",
        r.pairs, r.clean_diff, r.corrupt_diff
    ));
    let mut header = vec!["layer", "site"];
    header.extend(head_names.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = site_rows(r)
        .into_iter()
        .map(|(l, s, v)| {
            [l.to_string(), s.to_string()]
                .into_iter()
                .chain(v.into_iter().map(|v| v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))))
                .collect()
        })
        .collect();
    p.table(&header, &rows);
    let curve = |name: String, g: &[bdh::microscope::patch::GroupPoint], random: bool, color| Series {
        name,
        points: g.iter().map(|g| (g.k as f64, if random { g.random } else { g.restored })).collect(),
        style: Style::Dots,
        color: Some(color),
    };
    p.chart(&Chart {
        title: "How few neurons or synapse rows carry the fact".into(),
        x_label: "neurons or rows of ρ patched (largest clean–corrupted difference first)".into(),
        y_label: "fraction of logit difference restored".into(),
        log_x: true,
        log_y: false,
        series: {
            let n = format!("{} neurons, layer {} head {}", name(r.best.site), r.best.layer, r.best.head.unwrap_or(0));
            let rho = format!("ρ rows, layer {} head {}", r.best_rho.layer, r.best_rho.head.unwrap_or(0));
            vec![
                curve(n.clone(), &r.neurons, false, 0),
                curve(format!("{n}: random ones"), &r.neurons, true, 7),
                curve(rho.clone(), &r.rho_rows, false, 1),
                curve(format!("{rho}: random ones"), &r.rho_rows, true, 5),
            ]
        },
    });
    p
}
