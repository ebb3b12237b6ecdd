//! The microscope's statistics on inputs with known answers.

use bdh::microscope::graph::stats;
use bdh::microscope::louvain::{louvain, modularity};
use bdh::microscope::sparsity::sparsity;
use bdh::microscope::stats::{benjamini_hochberg, fit_power_law, mann_whitney};
use bdh::microscope::synapses::{concept_search, sigma, synapses, FDR};
use bdh::microscope::Scope;
use bdh::model::bdh::{forward, Activations, Bdh, Pass};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{tiny_config, tokens};

#[test]
fn modularity_of_two_triangles_is_five_fourteenths() {
    let edges = [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (2, 3)];
    let q = modularity(6, &edges, &[0, 0, 0, 1, 1, 1]);
    assert!((q - 5.0 / 14.0).abs() < 1e-12, "{q}");
    assert!(modularity(6, &edges, &[0; 6]).abs() < 1e-12, "one community has Q = 0");
    let (parts, best) = louvain(6, &edges, 3);
    assert!((best - 5.0 / 14.0).abs() < 1e-12, "{best}");
    assert_eq!(parts[0], parts[2]);
    assert_ne!(parts[0], parts[3]);
}

#[test]
fn louvain_recovers_a_planted_partition() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (groups, size) = (4usize, 40usize);
    let n = groups * size;
    let mut edges = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            let p = if a / size == b / size { 0.4 } else { 0.01 };
            if rng.random_bool(p) {
                edges.push((a as u32, b as u32));
            }
        }
    }
    let planted: Vec<u32> = (0..n).map(|i| (i / size) as u32).collect();
    let q_planted = modularity(n, &edges, &planted);
    let (found, q) = louvain(n, &edges, 4);
    println!("planted Q {q_planted:.4}, Louvain Q {q:.4}");
    assert!(q_planted > 0.6);
    assert!(q >= q_planted - 1e-9, "Louvain {q} below the planted partition's {q_planted}");
    // Every planted group lands in one community.
    for g in 0..groups {
        assert!(found[g * size..(g + 1) * size].iter().all(|&c| c == found[g * size]));
    }
}

#[test]
fn power_law_fit_recovers_a_known_exponent() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (alpha, x_min) = (2.5f64, 3u64);
    let xs: Vec<u64> = (0..20_000)
        .map(|_| {
            let u: f64 = rng.random();
            ((x_min as f64 - 0.5) * (1.0 - u).powf(-1.0 / (alpha - 1.0)) + 0.5).floor() as u64
        })
        .collect();
    let fit = fit_power_law(&xs, 50).unwrap();
    println!("{fit:?}");
    assert!((fit.alpha - alpha).abs() < 0.1, "{fit:?}");
    assert!(fit.x_min <= 6 && fit.ks < 0.03, "{fit:?}");
    assert!(fit_power_law(&[1, 2, 3], 50).is_none());
}

#[test]
fn graph_stats_count_degrees_and_edges() {
    // A star: node 0 drives nodes 1..=9.
    let edges: Vec<(u32, u32)> = (1..10).map(|i| (0, i)).collect();
    let s = stats(10, &edges, 1);
    assert_eq!((s.edges, s.max_out_degree, s.max_in_degree), (9, 9, 1));
    assert_eq!(s.out_degrees, vec![(0, 9), (9, 1)]);
    assert_eq!(s.in_degrees, vec![(0, 1), (1, 9)]);
}

#[test]
fn mann_whitney_matches_worked_examples() {
    // A = [1, 3, 5], B = [2, 4, 6, 8]: ranks of A are 1, 3, 5, so U = 9 − 6 = 3;
    // mean 6, σ = √(3·4·8/12) = √8; z = (3 − 0.5)/√8; p = erfc(z/√2).
    let t = mann_whitney(&[1.0, 3.0, 5.0], &[2.0, 4.0, 6.0, 8.0]);
    assert_eq!(t.u, 3.0);
    assert!((t.r - -0.5).abs() < 1e-12);
    assert!((t.p - 0.376_759_117_811_582_1).abs() < 1e-12, "{t:?}");
    // Ties: A = [1, 2, 2], B = [2, 3]: the three 2s share rank 3, U = 7 − 6 = 1;
    // σ² = 6/12 · (6 − (3³ − 3)/(5·4)) = 2.4; z = (2 − 0.5)/√2.4.
    let t = mann_whitney(&[1.0, 2.0, 2.0], &[2.0, 3.0]);
    assert_eq!(t.u, 1.0);
    assert!((t.p - 0.332_921_608_065_566).abs() < 1e-12, "{t:?}");
    // Complete separation gives r = ±1.
    assert_eq!(mann_whitney(&[5.0, 6.0], &[1.0, 2.0]).r, 1.0);
}

#[test]
fn sigma_is_the_sum_of_presynaptic_z_times_postsynaptic_x() {
    let model = Bdh::new(tiny_config(2, 16, 2, 4), 3).unwrap();
    let (n, toks) = (model.config.n_neurons(), [72u32, 105]);
    let mut acts = Activations::new(&model, 1, 2).unwrap();
    forward(&model, &toks, &mut acts, Pass::default()).unwrap();
    let head = 1;
    let block = head * 2 * n..(head + 1) * 2 * n;
    let (x0, y0, x1) = (&acts.x(0)[block.clone()], &acts.y(0)[block.clone()], &acts.x(1)[block]);
    let s = sigma(&Scope::cpu(&model), &toks, 1, head).unwrap();
    for i in 0..n {
        for j in 0..n {
            // Two tokens, written out: σ(i, j) = z₀(i)x₀(j) + z₁(i)x₁(j), z = x ⊙ y of layer 0.
            let want = x0[i] * y0[i] * x1[j] + x0[n + i] * y0[n + i] * x1[n + j];
            assert!((s[i * n + j] - want).abs() <= 1e-6 * want.abs().max(1e-3), "σ({i},{j})");
            assert!(s[i * n + j] >= 0.0);
        }
    }
    let r = synapses(&Scope::cpu(&model), &toks, 1, head, 5, &[], None, &|_, _| {}).unwrap();
    assert_eq!(r.traces.len(), r.strongest.len().min(5));
    for (syn, series) in &r.traces {
        assert_eq!(series.len(), 2);
        assert!((series[1] - s[syn.from * n + syn.to]).abs() < 1e-6);
    }
    assert!(sigma(&Scope::cpu(&model), &toks, 0, 0).is_err(), "layer 0 has no presynaptic layer");
}

#[test]
fn sigma_streams_in_chunks_and_sums_over_a_window() {
    // 600 tokens: three chunks with ρ carried between them, against one forward.
    let model = Bdh::new(tiny_config(2, 16, 2, 4), 6).unwrap();
    let (n, toks) = (model.config.n_neurons(), tokens(600, 7));
    let mut acts = Activations::new(&model, 1, 600).unwrap();
    forward(&model, &toks, &mut acts, Pass::default()).unwrap();
    let head = 0;
    let block = head * 600 * n..(head + 1) * 600 * n;
    let (x0, y0, x1) = (&acts.x(0)[block.clone()], &acts.y(0)[block.clone()], &acts.x(1)[block]);
    let direct = |from: usize, to: usize| {
        let mut s = vec![0.0f64; n * n];
        for t in from..to {
            for i in 0..n {
                let z = (x0[t * n + i] * y0[t * n + i]) as f64;
                for j in 0..n {
                    s[i * n + j] += z * x1[t * n + j] as f64;
                }
            }
        }
        s
    };
    let worst = |got: &[f32], want: &[f64]| {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max) / scale
    };
    let whole = sigma(&Scope::cpu(&model), &toks, 1, head).unwrap();
    let rel = worst(&whole, &direct(0, 600));
    println!("σ streamed in chunks vs one forward: max rel diff {rel:.2e}");
    assert!(rel < 1e-5);
    // Progress counts the chunks read: up to the window's end (550: three chunks),
    // once with a named trace, twice when the strongest are traced instead.
    let told = std::sync::Mutex::new(Vec::new());
    let tell = |done, total| told.lock().unwrap().push((done, total));
    let r = synapses(&Scope::cpu(&model), &toks, 1, head, 3, &[(1, 2)], Some(300..550), &tell).unwrap();
    assert_eq!(told.lock().unwrap().split_off(0), [(0, 3), (1, 3), (2, 3), (3, 3)]);
    synapses(&Scope::cpu(&model), &toks, 1, head, 3, &[], Some(300..550), &tell).unwrap();
    assert_eq!(told.lock().unwrap().last(), Some(&(6, 6)));
    assert_eq!((r.tokens, r.window.clone()), (600, 300..550));
    let want = direct(300, 550);
    let (syn, series) = &r.traces[0];
    assert_eq!(series.len(), 250);
    let w = want[n + 2];
    println!("σ(1, 2) over 300..550: {} (trace end {}) vs {w}", syn.value, series[249]);
    assert!((syn.value as f64 - w).abs() <= 1e-5 * w.abs().max(1e-3));
    assert!((series[249] as f64 - w).abs() <= 1e-5 * w.abs().max(1e-3));
    assert!(r.strongest[0].value as f64 >= want.iter().fold(0.0f64, |m, v| m.max(*v)) * (1.0 - 1e-5));
    assert!(
        synapses(&Scope::cpu(&model), &toks, 1, head, 3, &[], Some(500..700), &tell).is_err(),
        "window past the text"
    );
    assert!(synapses(&Scope::cpu(&model), &toks, 1, head, 3, &[], Some(5..5), &tell).is_err(), "empty window");
}

#[test]
fn benjamini_hochberg_matches_hand_computed_q_values() {
    // Sorted p: 0.005, 0.01, 0.03, 0.04 (m = 4) → p·m/rank: 0.02, 0.02, 0.04, 0.04.
    let q = benjamini_hochberg(&[0.01, 0.04, 0.03, 0.005]);
    let want = [0.02, 0.04, 0.04, 0.02];
    for (a, b) in q.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{q:?}");
    }
    // Monotone in p and capped at 1.
    assert_eq!(benjamini_hochberg(&[0.9, 0.8]), vec![0.9, 0.9]);
    assert_eq!(benjamini_hochberg(&[1.0]), vec![1.0]);
    assert!(benjamini_hochberg(&[]).is_empty());
}

#[test]
fn concept_search_finds_a_planted_difference() {
    let model = Bdh::new(tiny_config(2, 16, 2, 4), 4).unwrap();
    // Concept sentences all contain byte 200 many times; contrast sentences never do.
    let concept: Vec<Vec<u32>> =
        (0..8).map(|s| tokens(12, s).into_iter().map(|t| if t % 2 == 0 { 200 } else { t % 100 }).collect()).collect();
    let contrast: Vec<Vec<u32>> = (0..8).map(|s| tokens(12, 100 + s).into_iter().map(|t| t % 100).collect()).collect();
    let told = std::sync::Mutex::new(Vec::new());
    let r = concept_search(&Scope::cpu(&model), &concept, &contrast, 1, 0, 5, &|done, total| {
        told.lock().unwrap().push((done, total))
    })
    .unwrap();
    // Progress counts the sentences of both passes: the concept's, then all of them.
    let told = told.into_inner().unwrap();
    assert_eq!((told.first(), told.last(), told.len()), (Some(&(0, 24)), Some(&(24, 24)), 25));
    assert!(!r.synapses.is_empty() && !r.neurons.is_empty());
    // The counts of selective ones are over every one tested. The list is sorted by
    // p and q grows with p, so it starts with them.
    println!("selective at q < {FDR}: {} synapses, {} neurons", r.synapses_selective, r.neurons_selective);
    assert!(r.neurons_selective > 0);
    for (selective, listed) in [(r.synapses_selective, &r.synapses), (r.neurons_selective, &r.neurons)] {
        let below = listed.iter().filter(|s| s.q < FDR).count();
        assert!(listed[..below].iter().all(|s| s.q < FDR), "the selective ones come first");
        assert!(selective == below || (below == listed.len() && selective > below), "{selective} vs {below} listed");
    }
    let best = &r.synapses[0];
    println!("{best:?}");
    assert!(best.test.r > 0.5 && best.test.p < 0.01 && best.concept_mean > best.contrast_mean);
    assert!(best.q >= best.test.p && best.q <= 1.0, "q adjusts p upwards");
}

#[test]
fn sparsity_fractions_are_consistent() {
    let model = Bdh::new(tiny_config(2, 16, 2, 4), 5).unwrap();
    let r = sparsity(&Scope::cpu(&model), &tokens(50, 1), 16).unwrap();
    assert_eq!(r.tokens, 50);
    for l in &r.layers {
        let a = &l.all;
        assert!(a.xy <= a.x.min(a.y) && a.x <= a.pairs && a.pairs <= 1.0 && a.x > 0.0, "{a:?}");
        assert_eq!(l.per_token_x.len(), 50);
        let mean = l.per_token_x.iter().sum::<f64>() / 50.0;
        assert!((mean - a.x).abs() < 1e-9);
        let head_mean = l.heads.iter().map(|h| h.x).sum::<f64>() / l.heads.len() as f64;
        assert!((head_mean - a.x).abs() < 1e-9);
    }
    assert!(r.most_active[0].rate >= r.least_active[0].rate);
}
