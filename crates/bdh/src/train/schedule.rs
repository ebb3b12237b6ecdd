//! The learning rate over a run: linear warmup, then a decay.

use serde::{Deserialize, Serialize};

use super::config::TrainingConfig;

/// How the learning rate moves after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from `lr` down to `min_lr` at `max_steps`.
    Cosine,
    /// A straight line from `lr` down to `min_lr` at `max_steps`.
    Linear,
    /// `lr` throughout.
    Constant,
}

/// Learning rate at `step` (0-based): linear warmup to `lr`, then the schedule's
/// decay to `min_lr` at `max_steps`.
pub fn learning_rate(cfg: &TrainingConfig, step: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = cfg.max_steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
    let shape = match cfg.schedule {
        Schedule::Constant => return cfg.lr,
        Schedule::Linear => 1.0 - progress,
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    cfg.min_lr + (cfg.lr - cfg.min_lr) * shape
}
