//! Newman modularity and its maximisation by the Louvain method
//! (Blondel et al. 2008), on undirected, unweighted graphs given as edge lists.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A weighted undirected graph in adjacency lists (self-loops carry their weight once).
struct Graph {
    adj: Vec<Vec<(u32, f64)>>,
    degree: Vec<f64>,
    total: f64, // 2m
}

impl Graph {
    /// From undirected edges; duplicates and both directions of a pair merge into one edge.
    fn from_edges(n: usize, edges: &[(u32, u32)]) -> Self {
        let mut pairs: Vec<(u32, u32)> =
            edges.iter().filter(|(a, b)| a != b).map(|&(a, b)| (a.min(b), a.max(b))).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut adj = vec![Vec::new(); n];
        for &(a, b) in &pairs {
            adj[a as usize].push((b, 1.0));
            adj[b as usize].push((a, 1.0));
        }
        Graph::from_adj(adj)
    }

    fn from_adj(adj: Vec<Vec<(u32, f64)>>) -> Self {
        let degree: Vec<f64> = adj
            .iter()
            .enumerate()
            .map(|(i, l)| l.iter().map(|&(j, w)| if j as usize == i { 2.0 * w } else { w }).sum())
            .collect();
        let total = degree.iter().sum();
        Graph { adj, degree, total }
    }
}

/// Modularity `Q = Σ_c [in_c/2m − (tot_c/2m)²]` of `communities` (one label per node)
/// on the undirected graph of `edges`.
pub fn modularity(n: usize, edges: &[(u32, u32)], communities: &[u32]) -> f64 {
    modularity_of(&Graph::from_edges(n, edges), communities)
}

fn modularity_of(g: &Graph, comm: &[u32]) -> f64 {
    if g.total == 0.0 {
        return 0.0;
    }
    let k = comm.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    let (mut inside, mut tot) = (vec![0.0f64; k], vec![0.0f64; k]);
    for (i, l) in g.adj.iter().enumerate() {
        tot[comm[i] as usize] += g.degree[i];
        for &(j, w) in l {
            if comm[j as usize] == comm[i] {
                inside[comm[i] as usize] += if j as usize == i { 2.0 * w } else { w };
            }
        }
    }
    inside.iter().zip(&tot).map(|(&a, &t)| a / g.total - (t / g.total).powi(2)).sum()
}

/// The best partition the Louvain method finds over `seeds` node orders, and its
/// modularity.
pub fn louvain(n: usize, edges: &[(u32, u32)], seeds: u64) -> (Vec<u32>, f64) {
    let g = Graph::from_edges(n, edges);
    let mut best = ((0..n as u32).collect::<Vec<u32>>(), modularity_of(&g, &(0..n as u32).collect::<Vec<_>>()));
    for seed in 0..seeds.max(1) {
        let comm = louvain_once(&g, seed);
        let q = modularity_of(&g, &comm);
        if q > best.1 {
            best = (comm, q);
        }
    }
    best
}

/// One run: local moves, then aggregation, until nothing moves.
fn louvain_once(g: &Graph, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = g.adj.len();
    let mut membership: Vec<u32> = (0..n as u32).collect();
    let mut level = Graph::from_adj(g.adj.clone());
    loop {
        let (comm, moved) = local_moves(&level, &mut rng);
        if !moved {
            return renumber(membership);
        }
        let comm = renumber(comm);
        for m in membership.iter_mut() {
            *m = comm[*m as usize];
        }
        level = aggregate(&level, &comm);
    }
}

/// Moves single nodes to the neighbouring community with the best modularity
/// gain until a full pass moves none. Returns the labels and whether any moved.
fn local_moves(g: &Graph, rng: &mut ChaCha8Rng) -> (Vec<u32>, bool) {
    let n = g.adj.len();
    let m2 = g.total;
    let mut comm: Vec<u32> = (0..n as u32).collect();
    let mut tot: Vec<f64> = g.degree.clone();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut weight_to = vec![0.0f64; n];
    let mut touched: Vec<u32> = Vec::new();
    let mut any = false;
    loop {
        let mut moved = false;
        for &i in &order {
            let ci = comm[i] as usize;
            let ki = g.degree[i];
            touched.clear();
            for &(j, w) in &g.adj[i] {
                if j as usize != i {
                    let cj = comm[j as usize];
                    if weight_to[cj as usize] == 0.0 {
                        touched.push(cj);
                    }
                    weight_to[cj as usize] += w;
                }
            }
            tot[ci] -= ki;
            // Gain of joining community c: w_i→c − tot_c·k_i/2m (constant terms dropped).
            let mut best = (ci, weight_to[ci] - tot[ci] * ki / m2);
            for &c in &touched {
                let gain = weight_to[c as usize] - tot[c as usize] * ki / m2;
                if gain > best.1 + 1e-12 {
                    best = (c as usize, gain);
                }
            }
            tot[best.0] += ki;
            if best.0 != ci {
                comm[i] = best.0 as u32;
                moved = true;
                any = true;
            }
            for &c in &touched {
                weight_to[c as usize] = 0.0;
            }
        }
        if !moved {
            return (comm, any);
        }
    }
}

fn renumber(labels: Vec<u32>) -> Vec<u32> {
    let mut map = std::collections::HashMap::new();
    labels
        .into_iter()
        .map(|l| {
            let next = map.len() as u32;
            *map.entry(l).or_insert(next)
        })
        .collect()
}

/// The graph of communities: one node each, edge weights summed.
fn aggregate(g: &Graph, comm: &[u32]) -> Graph {
    let k = comm.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    let mut maps: Vec<std::collections::HashMap<u32, f64>> = vec![Default::default(); k];
    for (i, l) in g.adj.iter().enumerate() {
        for &(j, w) in l {
            // Each undirected edge appears from both ends; a self-loop once.
            let (a, b) = (comm[i], comm[j as usize]);
            let w = if j as usize == i { 2.0 * w } else { w };
            *maps[a as usize].entry(b).or_insert(0.0) += if a == b { w / 2.0 } else { w };
        }
    }
    let adj = maps
        .into_iter()
        .map(|m| {
            let mut l: Vec<(u32, f64)> = m.into_iter().collect();
            l.sort_by_key(|e| e.0);
            l
        })
        .collect();
    Graph::from_adj(adj)
}
