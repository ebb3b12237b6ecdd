//! The concept sets `bdh inspect ablate` and `bdh inspect overlap` rank neurons
//! by: statements of the built-in language, or texts of a file.

use anyhow::Context;
use bdh::data::{Kind, SyntheticLanguage};
use bdh::microscope::ablate::{selectivity, Selective};
use bdh::microscope::Scope;
use bdh::model::bdh::Site;

use super::{parse_site, read_file, tokens, Output};

/// Most texts read from a concept or background file.
const MAX_TEXTS: usize = 100_000;
/// Built-in statements per concept set.
const BUILT_IN_TEXTS: usize = 200;

/// Where a concept's texts come from and what they mean for the built-in answers.
#[derive(clap::Args)]
pub struct ConceptArgs {
    /// Concept texts: `place` or `color` (statements of the built-in language about
    /// where someone lives or which color they like), or a file with one text per line.
    #[arg(long)]
    pub concept: Option<String>,
    /// Background texts to contrast the concept with: `place`, `color` or a file
    /// (ablate's default: the other built-in kind, or `color` for a file concept;
    /// overlap needs one given when a concept is built in).
    #[arg(long)]
    pub background: Option<String>,
    /// The site whose activity is ranked (and, for ablate, removed): x, y or xy.
    #[arg(long, default_value = "x", value_parser = parse_site)]
    pub site: Site,
}

/// Texts of a concept set and, for the built-in ones, their kind.
fn concept_set(spec: &str, seed: u64, out: &mut Output, key: &str) -> anyhow::Result<(Vec<Vec<u32>>, Option<Kind>)> {
    let kind = match spec {
        "place" => Some(Kind::Place),
        "color" => Some(Kind::Color),
        _ => None,
    };
    if let Some(kind) = kind {
        let texts = SyntheticLanguage::statements(kind, BUILT_IN_TEXTS, seed);
        out.provenance.text(key, &format!("built-in {spec} statements"), texts.join("\n").as_bytes());
        return Ok((texts.iter().map(|t| tokens(t.as_bytes())).collect(), Some(kind)));
    }
    let path = std::path::Path::new(spec);
    let bytes =
        read_file(path).with_context(|| format!("a concept set is `place`, `color` or a file; {spec} is neither"))?;
    out.provenance.file(key, path, &bytes);
    let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let texts: Vec<Vec<u32>> = text.lines().filter(|l| !l.trim().is_empty()).map(|l| tokens(l.as_bytes())).collect();
    anyhow::ensure!(!texts.is_empty(), "{} has no texts (one per line expected)", path.display());
    anyhow::ensure!(texts.len() <= MAX_TEXTS, "{} has {} texts; at most {MAX_TEXTS}", path.display(), texts.len());
    Ok((texts, None))
}

impl ConceptArgs {
    /// The concept's and background's texts, the concept's kind, and the neurons
    /// ranked by selectivity.
    pub fn rank(&self, model: &Scope, out: &mut Output) -> anyhow::Result<Option<(Option<Kind>, Vec<Selective>)>> {
        let Some(spec) = &self.concept else { return Ok(None) };
        let (concept, kind) = concept_set(spec, 1, out, "concept")?;
        let background_spec = self.background.clone().unwrap_or_else(|| match kind {
            Some(k) => kind_name(k.other()).into(),
            None => "color".into(),
        });
        let (background, _) = concept_set(&background_spec, 2, out, "background")?;
        Ok(Some((kind, selectivity(model, &concept, &background, self.site)?)))
    }
}

/// The sizes 1, 2, 4, … and `top` at which the first neurons of a ranking are
/// taken: removed by ablate, compared by overlap.
pub fn doubling_to(top: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |k| Some(k * 2)).take_while(|&k| k < top).chain([top]).collect()
}

/// A built-in kind as its concept set is named.
pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Place => "place",
        Kind::Color => "color",
    }
}
