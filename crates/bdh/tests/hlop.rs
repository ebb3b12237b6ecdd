//! Continual learning by Hebbian orthogonal projection (`training.continual`): Sanger's
//! rule finds a planted subspace; gradients and steps leave it alone; a run from an
//! earlier run's model learns, saves and resumes with its subspaces; bad uses are
//! refused by name.

use std::sync::atomic::AtomicBool;

use bdh::train::hlop::{Continual, Hebbian, Subspaces, SUBSPACES_FILE};
use bdh::train::run::train;
use bdh::train::setup::NewRun;
use bdh::{Model, RunConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{bdh_model, temp_dir, tiny_config};

/// P's rows (k, dim) applied to `v` (dim): their coordinates.
fn coords(p: &[f32], dim: usize, v: &[f32]) -> Vec<f32> {
    p.chunks_exact(dim).map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum()).collect()
}

#[test]
fn sanger_units_find_a_planted_subspace() {
    // inputs in the span of three orthonormal directions of R^12, plus a little noise
    let dim = 12;
    let basis: [Vec<f32>; 3] = [0, 4, 8].map(|i| (0..dim).map(|j| if j / 4 == i / 4 { 0.5 } else { 0.0 }).collect());
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let mut units = Hebbian::new(3, dim, 2);
    for _ in 0..20_000 {
        let c: [f32; 3] = [r.random_range(-3.0..3.0), r.random_range(-2.0..2.0), r.random_range(-1.0..1.0)];
        let x: Vec<f32> =
            (0..dim).map(|j| (0..3).map(|i| c[i] * basis[i][j]).sum::<f32>() + r.random_range(-0.01..0.01)).collect();
        units.learn(&x);
    }
    let p = units.basis();
    assert_eq!(p.len(), 3 * dim);
    // every planted direction lies in the learnt span: its projection keeps its length
    for b in &basis {
        let kept: f32 = coords(&p, dim, b).iter().map(|c| c * c).sum::<f32>().sqrt();
        assert!(kept > 0.99, "a planted direction keeps {kept} of its length");
    }
    // and the rows are orthonormal
    for (i, a) in p.chunks_exact(dim).enumerate() {
        for (j, b) in p.chunks_exact(dim).enumerate() {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
        }
    }
}

#[test]
fn projected_gradients_and_steps_leave_the_subspaces_alone() {
    let Model::Bdh(m) = bdh_model(tiny_config(2, 16, 2, 4), 3) else { unreachable!("a BDH") };
    let c = &m.config;
    let (d, hn) = (c.n_embd, c.total_neurons());
    let mut r = ChaCha8Rng::seed_from_u64(4);
    let mut unit = |dim: usize, k: usize| {
        let mut u = Hebbian::new(k, dim, r.random());
        (0..500).for_each(|_| u.learn(&(0..dim).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<_>>()));
        u.basis()
    };
    let spaces = Subspaces {
        spaces: vec![
            (
                "embed.weight".into(),
                256,
                (0..256 * 2).map(|i| if i == 7 || i == 256 + 40 { 1.0 } else { 0.0 }).collect(),
            ),
            ("encoder".into(), d, unit(d, 4)),
            ("encoder_v".into(), d, unit(d, 4)),
            ("decoder".into(), hn, unit(hn, 4)),
            ("lm_head".into(), d, unit(d, 4)),
        ],
    };
    let mut g = m.params.zeros_like();
    g.data_mut().iter_mut().for_each(|x| *x = r.random_range(-1.0..1.0));
    let before = m.params.clone();
    let mut after = m.params.clone();
    after.data_mut().iter_mut().zip(g.data()).for_each(|(p, &x)| *p += 0.1 * x);
    spaces.project(&mut g);
    spaces.project_step(&mut after, &spaces.weights_of(&before));
    // P G = 0 column by column, for every head of every projected weight
    for (name, dim, p) in &spaces.spaces {
        let shape = g.slot(name).unwrap().shape.clone();
        let block = if shape.len() == 3 { shape[1] * shape[2] } else { shape.iter().product() };
        let step: Vec<f32> =
            after.get(name).unwrap().iter().zip(before.get(name).unwrap()).map(|(a, b)| a - b).collect();
        for grad in [g.get(name).unwrap(), &step[..]] {
            for m in grad.chunks_exact(block) {
                let cols = m.len() / dim;
                for col in 0..cols {
                    let v: Vec<f32> = (0..*dim).map(|i| m[i * cols + col]).collect();
                    let left = coords(p, *dim, &v).iter().fold(0.0f32, |a, c| a.max(c.abs()));
                    assert!(left < 1e-5, "{name}: {left} left in the subspace");
                }
            }
        }
    }
    // saved and read back whole; refused for a model of other widths, or when cut short
    let dir = temp_dir("hlop-file");
    let file = dir.path().join(SUBSPACES_FILE);
    spaces.save(&file).unwrap();
    assert_eq!(Subspaces::load(&file, &m).unwrap(), spaces);
    let Model::Bdh(wider) = bdh_model(tiny_config(2, 32, 2, 4), 3) else { unreachable!("a BDH") };
    let err = Subspaces::load(&file, &wider).unwrap_err().to_string();
    assert!(err.contains("is not finite rows of"), "{err}");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    assert!(Subspaces::load(&file, &m).is_err());
    // the embedding's protected tokens keep their rows; the others move
    assert!(g.get("embed.weight").unwrap()[7 * d..8 * d].iter().all(|&x| x == 0.0));
    assert!(g.get("embed.weight").unwrap()[8 * d..9 * d].iter().any(|&x| x != 0.0));
    assert!(g.get("attn.freqs").is_none() && g.get("decoder").unwrap().iter().any(|&x| x != 0.0));
}

fn tiny(extra: &[&str]) -> Vec<String> {
    let mut sets = vec!["training.block_size=48", "training.batch_size=2", "training.eval_batches=1"];
    sets.extend_from_slice(extra);
    sets.iter().map(|s| s.to_string()).collect()
}

/// A new run of the tiny preset from `init_from`, with `extra` settings.
fn new_run(init_from: Option<std::path::PathBuf>, extra: &[&str]) -> NewRun {
    NewRun { preset: "tiny".into(), overrides: tiny(extra), data: None, val_data: None, tokenizer: None, init_from }
}

#[test]
fn a_continual_run_learns_saves_and_resumes_its_subspaces() {
    let earlier = temp_dir("hlop-a");
    let a = RunConfig::resolve("tiny", &tiny(&["model.n_embd=32", "training.max_steps=4", "training.eval_interval=4"]))
        .unwrap();
    train(&a, &a.data.corpus(48).unwrap(), earlier.path(), false, &AtomicBool::new(false), |_| {}).unwrap();
    let from = Some(earlier.path().to_path_buf());
    let setup = |continual: &str| {
        new_run(from.clone(), &["training.max_steps=6", "training.eval_interval=3", "data.facts=3", continual]).setup()
    };
    let b = setup("training.continual=hlop:4").unwrap().run;
    assert_eq!(b.training.continual, Continual::Hlop { components: 4 });
    let corpus = b.data.corpus(48).unwrap();
    let straight = temp_dir("hlop-b");
    let whole = train(&b, &corpus, straight.path(), false, &AtomicBool::new(false), |_| {}).unwrap();
    assert!(straight.path().join(SUBSPACES_FILE).exists());
    // stopped after step 3 and resumed (the subspaces read back): the same steps
    let resumed = temp_dir("hlop-b-resumed");
    let losses = crate::common::stopped_and_resumed(&b, &corpus, resumed.path(), 3);
    assert_eq!(losses, whole.losses);
    // a plain fine-tune takes other steps
    let plain = setup("training.continual=none").unwrap().run;
    let other = train(&plain, &corpus, temp_dir("hlop-plain").path(), false, &AtomicBool::new(false), |_| {}).unwrap();
    assert_ne!(other.losses[1..], whole.losses[1..]);
    // refused: no earlier model, too many components, a model outside a run directory
    let err = new_run(None, &["training.continual=hlop"]).setup().unwrap_err().to_string();
    assert!(err.contains("give that model with --init-from"), "{err}");
    let err = setup("training.continual=hlop:33").unwrap_err().to_string();
    assert!(err.contains("more components than the inputs' n_embd = 32"), "{err}");
    let err = RunConfig::resolve("tiny", &["training.continual=hlop:0".to_string()]).unwrap_err().to_string();
    assert!(err.contains("expected \"none\", \"hlop\" or \"hlop:k\""), "{err}");
    let loose = temp_dir("hlop-loose");
    let model = loose.path().join("model");
    bdh::io::checkpoint::save(&bdh::io::checkpoint::load(&earlier.path().join("last"), None).unwrap(), &model).unwrap();
    let c = new_run(Some(model), &["training.continual=hlop:4", "training.max_steps=2"]).setup().unwrap().run;
    let err = train(&c, &corpus, temp_dir("hlop-c").path(), false, &AtomicBool::new(false), |_| {}).unwrap_err();
    assert!(err.to_string().contains("not a run directory or one of its checkpoints"), "{err}");
}
