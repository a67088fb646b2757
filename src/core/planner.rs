//! The planner: per branch, the batch size and speculation depth of the
//! train, from the measured failure rate of recent PRs and the free build
//! budget.
//!
//! The rule, fitted to the simulator's sweep over fixed batch sizes
//! (`cargo bench --bench batch -- --sweep`; the table is in design/):
//!
//! - A batch of b PRs passes with probability q^b (q = 1 − p). Bisecting a
//!   failed one costs about log2 b more cycles, during which the PRs behind
//!   it wait; so the batch is kept where a failure is the exception:
//!   b ≤ 1/(2.5·p) (p = 0.02: 20; 0.05: 8; 0.1: 4; 0.2: 2).
//! - There is no point in a batch larger than what fills the runners: with
//!   n PRs in the train and R runners, b ≤ ⌈n/R⌉, so a short queue is
//!   tested one PR per car (which lands soonest) and a long one in batches
//!   (which lands most per CI cycle).
//! - When p·R ≥ 0.8 (most rounds hold a failure somewhere among the R cars
//!   in flight) and p ≥ 0.1, speculation one PR per car wins: a failure
//!   costs no bisection, the culprit is known at once.
//! - The depth is every runner, capped by `train_depth`.
//! - While the history is shorter than the prior's weight ([`PRIOR_PRS`]
//!   decided PRs), p is a guess, and a guess of "few failures" that is
//!   wrong costs a whole round: batches of 8 at a real p = 0.2 fail 83% of
//!   the time. So a new repository's first rounds *hedge*: the tested cars
//!   at the front (3/8 of the runners) hold one PR each, as speculation
//!   would test them, and the rest batches big enough that the runners
//!   still cover every waiting PR, as batching would.
//! - Once the history outweighs the prior, speculation is chosen on a
//!   pessimistic p (the estimate plus one standard error).
//! - A failed batch is bisected at as many points as there are runners
//!   (`batch::tests_to_start`: its first cars singly when that leaves at
//!   most one more round).

use super::batch::Plan;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// PRs the failure rate is measured over.
pub const WINDOW: usize = 40;
/// The prior: as if 1 in 20 PRs had failed, weighing 10 PRs (light, so a
/// few real outcomes move it).
pub const PRIOR_FAILURES: f64 = 0.5;
pub const PRIOR_PRS: f64 = 10.0;
/// Decided PRs below which the planner hedges (the prior weighs more than
/// what was measured).
pub const HEDGE_UNTIL: usize = PRIOR_PRS as usize;

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

    /// A pessimistic failure rate: the estimate plus one standard error.
    pub fn failure_rate_high(&self) -> f64 {
        let p = self.failure_rate();
        let n = self.recent.len() as f64 + PRIOR_PRS;
        p + (p * (1.0 - p) / n).sqrt()
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

/// The largest batch that keeps a failure the exception at failure rate
/// `p`: ⌊1/(2.5·p)⌋, at least 1.
pub fn batch_cap(p: f64) -> usize {
    if p <= 0.0 {
        return usize::MAX;
    }
    ((1.0 / (2.5 * p)).floor() as usize).max(1)
}

/// The smallest batch b (at most `max`) such that a hedge on `runners`
/// runners (single PRs, then batches of b: `batch::hedge_size`) covers
/// `waiting` PRs.
pub fn hedge_batch(waiting: usize, runners: usize, max: usize) -> usize {
    let covers = |b: usize| -> usize {
        (0..runners)
            .map(|i| super::batch::hedge_size(b, runners, i))
            .sum()
    };
    (1..=max.max(1))
        .find(|&b| covers(b) >= waiting)
        .unwrap_or(max.max(1))
}

/// Whether failures are frequent enough among `runners` cars in flight
/// that one PR per car (no bisection) lands more.
pub fn speculation_wins(p: f64, runners: usize) -> bool {
    p >= 0.1 && p * runners as f64 >= 0.8
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
    // Adaptive: a failed batch is bisected at as many points as there are
    // runners (the cars behind it wait anyway), so its culprit is found in
    // one cycle when the runners allow; a fixed plan keeps the setting.
    let bisect_parallel = match size {
        BatchSize::Adaptive { .. } => bisect_parallel.max(runners),
        BatchSize::Fixed(_) => bisect_parallel.max(1),
    };
    let mut hedge = false;
    let (batch, why) = match size {
        BatchSize::Fixed(b) => (b.max(1), "fixed by the configuration".to_string()),
        BatchSize::Adaptive { max } => {
            let fill = waiting.div_ceil(runners).max(1);
            let cap = batch_cap(p);
            let max = max.max(1);
            let short = outcomes.len() < HEDGE_UNTIL;
            // Once the history outweighs the prior, speculation is chosen
            // on a pessimistic p (one standard error up): a wrong bet on
            // batches costs a bisection round, a wrong bet on speculation
            // only some batching's gain. Before, p is mostly the prior,
            // whose standard error would choose speculation everywhere.
            let cautious = if short {
                p
            } else {
                outcomes.failure_rate_high()
            };
            if speculation_wins(cautious, runners) {
                (1, "p·R ≥ 0.8: one PR per car, no bisection".to_string())
            } else if short && runners > 1 && fill > 1 {
                hedge = true;
                let batch = hedge_batch(waiting, runners, max);
                (
                    batch,
                    format!("a hedge while fewer than {HEDGE_UNTIL} PRs were decided"),
                )
            } else {
                let batch = cap.min(fill).min(max);
                let limit = if batch == max && cap > max {
                    "max_batch".to_string()
                } else if batch == fill && cap > fill {
                    format!("{waiting} PRs over {runners} runners")
                } else {
                    "1/(2.5·p)".to_string()
                };
                (batch, limit)
            }
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
            bisect_parallel,
            optimistic,
            hedge,
        },
        failure_rate: p,
        reason: format!(
            "{}, depth {runners}: p ≈ {p:.2} over {window}, {free} runners free (batch from {why})",
            if hedge {
                format!("single PRs, then batch {batch}")
            } else {
                format!("batch {batch}")
            }
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
        // Many failures and many runners: one PR per car.
        let p = plan(adaptive, 8, 1, false, &outcomes(12, 40), 64, 8);
        assert_eq!(p.plan.batch, 1, "{}", p.reason);
        // Many failures, one runner: small batches.
        let p = plan(adaptive, 8, 1, false, &outcomes(8, 40), 64, 1);
        assert_eq!(p.plan.batch, 2, "{}", p.reason);
        // A short queue: one PR per car, every runner busy.
        let p = plan(adaptive, 8, 1, false, &outcomes(0, 40), 5, 8);
        assert_eq!((p.plan.batch, p.plan.depth), (1, 8), "{}", p.reason);
        // Adaptive bisection uses every runner; a fixed plan the setting.
        let p = plan(adaptive, 8, 1, false, &outcomes(0, 40), 64, 6);
        assert_eq!(p.plan.bisect_parallel, 6, "{}", p.reason);
        // The configuration wins.
        let p = plan(BatchSize::Fixed(3), 8, 1, false, &outcomes(12, 40), 64, 2);
        assert_eq!(
            (p.plan.batch, p.plan.depth, p.plan.bisect_parallel),
            (3, 2, 1)
        );
        assert!(p.reason.contains("fixed"), "{}", p.reason);
    }

    #[test]
    fn a_new_repository_hedges_until_enough_prs_were_decided() {
        let adaptive = BatchSize::Adaptive { max: 32 };
        // No history, 64 PRs, 8 runners: 3 singles and 5 batches of 13.
        let p = plan(adaptive, 8, 1, false, &Outcomes::default(), 64, 8);
        assert!(p.plan.hedge, "{}", p.reason);
        assert_eq!(p.plan.batch, 13, "{}", p.reason);
        assert!(
            p.reason.starts_with("single PRs, then batch 13, depth 8"),
            "{}",
            p.reason
        );
        // Enough history: the rule, no hedge.
        let p = plan(adaptive, 8, 1, false, &outcomes(0, HEDGE_UNTIL), 64, 8);
        assert!(!p.plan.hedge, "{}", p.reason);
        assert_eq!(p.plan.batch, 8, "{}", p.reason);
        // One runner has nothing to hedge across.
        let p = plan(adaptive, 1, 1, false, &Outcomes::default(), 64, 1);
        assert!(!p.plan.hedge, "{}", p.reason);
        assert_eq!(hedge_batch(16, 4, 32), 5, "1 + 5 + 5 + 5");
        assert_eq!(hedge_batch(3, 4, 8), 1);
        assert_eq!(hedge_batch(1000, 4, 8), 8, "at most max");
    }

    #[test]
    fn with_enough_history_a_pessimistic_p_chooses_speculation() {
        let adaptive = BatchSize::Adaptive { max: 32 };
        // 2 failures in 20: p ≈ 0.083, one standard error up ≈ 0.13.
        let p = plan(adaptive, 8, 1, false, &outcomes(2, 20), 64, 8);
        assert_eq!(p.plan.batch, 1, "{}", p.reason);
        // None in 40: batches.
        let p = plan(adaptive, 8, 1, false, &outcomes(0, 40), 64, 8);
        assert_eq!(p.plan.batch, 8, "{}", p.reason);
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
                .starts_with("batch 8, depth 3: p ≈ 0.05 over the last 40 PRs, 6 runners free"),
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
        assert!((o.failure_rate() - 0.5 / 50.0).abs() < 1e-9);
        assert_eq!(batch_cap(0.05), 8);
        assert_eq!(batch_cap(0.02), 20);
        assert_eq!(batch_cap(0.2), 2);
        assert!(speculation_wins(0.1, 8) && !speculation_wins(0.05, 16));
    }
}
