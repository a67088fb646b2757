//! The planner: per branch, the batch size and speculation depth of the
//! train, from the measured failure rate of recent PRs and the free build
//! budget.
//!
//! The rule. With a PR failure rate p (q = 1 − p), a batch of b PRs passes
//! with probability q^b; testing in batches costs about 1/b builds per PR
//! when they pass plus a bisection (≈ log2 b builds) when one fails.
//! Dorfman's group-testing optimum for that trade is b ≈ 1/√p (p = 0.02: 7;
//! 0.05: 4; 0.1: 3; 0.2: 2), which keeps a batch's pass probability near
//! e^(−√p) and the cost per PR near 2√p. There is no point in a batch
//! larger than what fills the free runners: with n PRs waiting and R free
//! runners, b ≤ ⌈n / R⌉, so a short queue is tested one PR per car
//! (speculation, which lands soonest) and a long one in batches (which
//! lands most per CI cycle). The depth is every free runner, capped by
//! `train_depth`.
//!
//! p is measured over the last [`WINDOW`] PRs the train decided on (landed
//! or ejected as the culprit), with a prior of [`PRIOR_FAILURES`] in
//! [`PRIOR_PRS`] for a repository with no history, so one early failure does
//! not swing the plan.

use super::batch::Plan;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// PRs the failure rate is measured over.
pub const WINDOW: usize = 40;
/// The prior: as if 1 in 20 PRs had failed.
pub const PRIOR_FAILURES: f64 = 1.0;
pub const PRIOR_PRS: f64 = 20.0;

/// The recent decisions of a repository's trains: `true` for a PR ejected
/// as a culprit, `false` for one landed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    recent: VecDeque<bool>,
}

impl Outcomes {
    pub fn record(&mut self, failed: bool) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(failed);
    }

    /// `n` PRs landed.
    pub fn extend_landed(&mut self, n: usize) {
        for _ in 0..n {
            self.record(false);
        }
    }

    pub fn len(&self) -> usize {
        self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// The estimated failure rate, the prior blended in.
    pub fn failure_rate(&self) -> f64 {
        let failures = self.recent.iter().filter(|f| **f).count() as f64;
        (failures + PRIOR_FAILURES) / (self.recent.len() as f64 + PRIOR_PRS)
    }
}

/// How a repository's batches are sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    /// This many PRs per tested car (1: no batching).
    Fixed(usize),
    /// Chosen by the planner, at most this many.
    Adaptive { max: usize },
}

impl Default for BatchSize {
    fn default() -> Self {
        BatchSize::Fixed(1)
    }
}

/// The plan and why, as `GET /queue` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub plan: Plan,
    pub failure_rate: f64,
    pub reason: String,
}

/// The Dorfman batch size for failure rate `p`: ⌊1/√p⌉, at least 1.
pub fn dorfman_batch(p: f64) -> usize {
    if p <= 0.0 {
        return usize::MAX;
    }
    ((1.0 / p.sqrt()).round() as usize).max(1)
}

/// The plan for a train with `waiting` PRs in it, `free` build slots (the
/// repository's build budget) and at most `depth` batches at once.
pub fn plan(
    size: BatchSize,
    depth: usize,
    bisect_parallel: usize,
    optimistic: bool,
    outcomes: &Outcomes,
    waiting: usize,
    free: usize,
) -> Planned {
    let p = outcomes.failure_rate();
    let runners = depth.min(free).max(1);
    let (batch, why) = match size {
        BatchSize::Fixed(b) => (b.max(1), "fixed by the configuration".to_string()),
        BatchSize::Adaptive { max } => {
            let fill = waiting.div_ceil(runners).max(1);
            let best = dorfman_batch(p);
            let batch = best.min(fill).min(max.max(1));
            let limit = if batch == max.max(1) && best > batch {
                "max_batch".to_string()
            } else if batch == fill && best > fill {
                format!("{waiting} PRs over {runners} runners")
            } else {
                "1/√p".to_string()
            };
            (batch, limit)
        }
    };
    let window = if outcomes.is_empty() {
        "the prior, no history yet".to_string()
    } else {
        format!("the last {} PRs", outcomes.len())
    };
    Planned {
        plan: Plan {
            batch,
            depth: runners,
            bisect_parallel: bisect_parallel.max(1),
            optimistic,
        },
        failure_rate: p,
        reason: format!(
            "batch {batch}, depth {runners}: p ≈ {p:.2} over {window}, {free} runners free (batch from {why})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(failed: usize, of: usize) -> Outcomes {
        let mut o = Outcomes::default();
        for k in 0..of {
            o.record(k < failed);
        }
        o
    }

    #[test]
    fn the_batch_follows_the_failure_rate_and_the_queue() {
        let adaptive = BatchSize::Adaptive { max: 16 };
        // Few failures, a long queue: big batches.
        let p = plan(adaptive, 8, 1, false, &outcomes(0, 40), 64, 8);
        assert_eq!(p.plan.batch, 8, "{}", p.reason);
        // Many failures: small ones.
        let p = plan(adaptive, 8, 1, false, &outcomes(12, 40), 64, 8);
        assert_eq!(p.plan.batch, 2, "{}", p.reason);
        // A short queue: one PR per car, every runner busy.
        let p = plan(adaptive, 8, 1, false, &outcomes(0, 40), 5, 8);
        assert_eq!((p.plan.batch, p.plan.depth), (1, 8), "{}", p.reason);
        // The configuration wins.
        let p = plan(BatchSize::Fixed(3), 8, 1, false, &outcomes(12, 40), 64, 2);
        assert_eq!((p.plan.batch, p.plan.depth), (3, 2));
        assert!(p.reason.contains("fixed"), "{}", p.reason);
    }

    #[test]
    fn the_reason_names_the_rate_the_window_and_the_runners() {
        let p = plan(
            BatchSize::Adaptive { max: 8 },
            3,
            1,
            false,
            &outcomes(2, 40),
            40,
            6,
        );
        assert!(
            p.reason
                .starts_with("batch 4, depth 3: p ≈ 0.05 over the last 40 PRs, 6 runners free"),
            "{}",
            p.reason
        );
        let p = plan(
            BatchSize::Adaptive { max: 8 },
            3,
            1,
            false,
            &Outcomes::default(),
            1,
            6,
        );
        assert!(p.reason.contains("the prior"), "{}", p.reason);
    }

    #[test]
    fn the_window_forgets_old_prs() {
        let mut o = outcomes(WINDOW, WINDOW);
        for _ in 0..WINDOW {
            o.record(false);
        }
        assert!((o.failure_rate() - 1.0 / 60.0).abs() < 1e-9);
        assert_eq!(dorfman_batch(0.05), 4);
        assert_eq!(dorfman_batch(0.02), 7);
        assert_eq!(dorfman_batch(0.2), 2);
    }
}
