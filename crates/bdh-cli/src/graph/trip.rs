//! A traced token's trip through the graph's rounds: printed, as JSON, as a page.

use bdh::model::graph::{Graph, Kind, Round, Top};

use crate::page::Page;
use crate::provenance::Provenance;

/// Prints each traced position's rounds in brief.
pub fn print(tokens: &[u32], traces: &[(usize, Vec<Round>)]) {
    for (pos, rounds) in traces {
        println!("position {pos} ({}): active nodes per round", byte(tokens[*pos]));
        for r in rounds {
            println!("  {:<8} {:<8} {:>2}: {:>6} of {}", layer(r), r.round, r.values, r.active, r.out_of);
        }
    }
}

/// The traced positions as JSON values.
pub fn json(tokens: &[u32], traces: &[(usize, Vec<Round>)]) -> Vec<serde_json::Value> {
    traces
        .iter()
        .map(|(pos, rounds)| serde_json::json!({ "position": pos, "token": tokens[*pos], "rounds": rounds }))
        .collect()
}

/// The page of one token's trip.
pub fn page(provenance: &Provenance, g: &Graph, tokens: &[u32], pos: usize, rounds: &[Round]) -> String {
    let mut p = Page::new(provenance.rows());
    let text = |r: std::ops::Range<usize>| {
        String::from_utf8_lossy(&tokens[r].iter().map(|&t| t as u8).collect::<Vec<_>>()).into_owned()
    };
    p.heading(&format!("The trip of byte {} at position {pos}", byte(tokens[pos])));
    let next =
        tokens.get(pos + 1).map_or_else(|| "the text ends".to_string(), |&t| format!("the next byte is {}", byte(t)));
    p.text(&format!("Read after “{}”; {next}.", text(pos.saturating_sub(60)..pos)));
    p.text(
        "Each row is one round of the synchronous scheduler: the token's input node drives the neurons' X; then each \
         layer reads its synapses σ into A (per source node and head of the reading neuron), writes σ by the Hebbian \
         rule, fires Y through the prods, and drives the next layer's X through the wires; the readout sends the last \
         Y to the output nodes, whose values are the logits of the next byte (the largest first). “active” counts \
         the non-zero values the round leaves (for the write: the synapses that grew). Layers count from 0; neurons \
         are written h<head>:<index in the head>. At the first position σ is empty, so nothing is read and every \
         logit is 0.",
    );
    let per = g.info.n_neurons;
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            let sources_are_tokens = r.layer == Some(0);
            let source = |i: u32| if sources_are_tokens { format!("token {}", byte(i)) } else { neuron(i, per) };
            let node = |t: &Top| match r.round {
                Kind::Read => format!("{} in h{}", source(t.node), t.head.unwrap_or(0)),
                Kind::Readout => format!("next {}", byte(t.node)),
                _ => neuron(t.node, per),
            };
            let top: Vec<String> = r.top.iter().take(6).map(|t| format!("{} {:.3}", node(t), t.value)).collect();
            let syn: Vec<String> = r
                .synapses
                .iter()
                .take(4)
                .map(|&(i, j, v)| format!("{} → {} {v:.3}", source(i), neuron(j, per)))
                .collect();
            vec![
                layer(r),
                r.round.to_string(),
                r.values.to_string(),
                format!("{} of {}", r.active, r.out_of),
                top.join(", "),
                syn.join(", "),
            ]
        })
        .collect();
    p.table_with_text(&["layer", "round", "values", "active", "largest", "strongest synapses"], &rows, Some(4));
    p.html("bdh graph: one token's trip")
}

fn layer(r: &Round) -> String {
    r.layer.map_or_else(|| "-".to_string(), |l| format!("layer {l}"))
}

/// Neuron `i` as head and index in its head.
fn neuron(i: u32, per_head: usize) -> String {
    format!("h{}:{}", i as usize / per_head, i as usize % per_head)
}

/// A byte as it reads: printable ASCII as itself, else its escape (`\n`, `\xc3`).
pub fn byte(t: u32) -> String {
    format!("'{}'", std::ascii::escape_default(t as u8))
}
