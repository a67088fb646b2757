//! The planner: per branch, the shape of the train's next tests (which
//! tested cars hold one PR, which hold batches) and the speculation depth,
//! from the measured failure rate of recent PRs and the free build budget.
//!
//! The rule, fitted to the simulator (`cargo bench --bench batch`, with
//! `-- --sweep` for fixed batch sizes; the tables are in design/):
//!
//! - The depth is every runner, capped by `train_depth`.
//! - When p·R ≥ 0.8 (most rounds hold a failure somewhere among the R cars
//!   in flight) and p ≥ 0.1, speculation one PR per car wins: a failure
//!   costs no bisection, the culprit is known at once. Also when one round
//!   of speculation is expected to land at least what one shaped round
//!   would ([`expected_landed`]): with few runners and a high p, where the
//!   shaped round's batches would mostly fail (R = 4, p = 0.2).
//! - Otherwise, with several runners and more PRs than runners, the tested
//!   cars are *shaped*: the first 3/8 of them hold one PR each, the rest
//!   batches just big enough that the round covers every waiting PR. The
//!   front lands soonest whatever p is (it is what speculation would test),
//!   and the back lands the whole queue in one CI cycle when nothing fails.
//!   A failed batch is bisected on every runner at once
//!   (`batch::tests_to_start`), so a large batch costs about one cycle more
//!   when it fails, not log2 b: the simulator found this shape better than
//!   batches capped by p at every p below speculation's threshold.
//! - With one runner (or no more PRs than runners), the batch is kept
//!   where a failure is the exception, b ≤ 1/(2.5·p) (p = 0.02: 20; 0.05:
//!   8; 0.1: 4), and no larger than what fills the runners.
//! - p is the share of culprits among the last [`WINDOW`] decided PRs,
//!   blended with a prior of 1 in 20 weighing [`PRIOR_PRS`] PRs, so a new
//!   repository starts shaped and a few failures move it to speculation.

use super::batch::Plan;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// PRs the failure rate is measured over.
pub const WINDOW: usize = 40;
/// The prior: as if 1 in 20 PRs had failed, weighing 10 PRs (light, so a
/// few real outcomes move it).
pub const PRIOR_FAILURES: f64 = 0.5;
pub const PRIOR_PRS: f64 = 10.0;

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

/// The largest batch that keeps a failure the exception at failure rate
/// `p`: ⌊1/(2.5·p)⌋, at least 1.
pub fn batch_cap(p: f64) -> usize {
    if p <= 0.0 {
        return usize::MAX;
    }
    ((1.0 / (2.5 * p)).floor() as usize).max(1)
}

/// The tested cars at the front of a shaped train that hold one PR each:
/// 3/8 of the runners, at least one.
pub fn front_singles(runners: usize) -> usize {
    (runners * 3 / 8).max(1)
}

/// The smallest batch b (at most `max`) such that `runners` tested cars,
/// the first `singles` of them single PRs and the rest b PRs each, cover
/// `waiting` PRs.
pub fn covering_batch(waiting: usize, runners: usize, singles: usize, max: usize) -> usize {
    let singles = singles.min(runners);
    let rest = runners - singles;
    if rest == 0 {
        return 1;
    }
    waiting
        .saturating_sub(singles)
        .div_ceil(rest)
        .clamp(1, max.max(1))
}

/// PRs expected to land in one round when `runners` tested cars, the first
/// `singles` of them single PRs and the rest `batch` PRs each, cover at most
/// `waiting` PRs, each failing with probability `p`: a tested car lands
/// everything up to it when none of its PRs nor any ahead fails.
pub fn expected_landed(
    p: f64,
    runners: usize,
    singles: usize,
    batch: usize,
    waiting: usize,
) -> f64 {
    let q = 1.0 - p.clamp(0.0, 1.0);
    let mut covered = 0;
    let mut expected = 0.0;
    for k in 0..runners {
        if covered >= waiting {
            break;
        }
        let size = if k < singles { 1 } else { batch.max(1) };
        let end = (covered + size).min(waiting);
        expected += (end - covered) as f64 * q.powi(end as i32);
        covered = end;
    }
    expected
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
    let mut singles = 0;
    let (batch, why) = match size {
        BatchSize::Fixed(b) => (b.max(1), "fixed by the configuration".to_string()),
        BatchSize::Adaptive { max } => {
            let fill = waiting.div_ceil(runners).max(1);
            let max = max.max(1);
            // Speculation when failures are frequent among the cars in
            // flight, or when one round of it is expected to land at least
            // what one shaped round would (few runners, high p).
            let shape = (runners > 1 && fill > 1).then(|| {
                let singles = front_singles(runners);
                (singles, covering_batch(waiting, runners, singles, max))
            });
            let speculate = speculation_wins(p, runners)
                || shape.is_some_and(|(singles, batch)| {
                    expected_landed(p, runners, 0, 1, waiting)
                        >= expected_landed(p, runners, singles, batch, waiting)
                });
            if speculate {
                (
                    1,
                    "p·R ≥ 0.8 or one round of it lands more: one PR per car, no bisection"
                        .to_string(),
                )
            } else if let Some((front, batch)) = shape {
                singles = front;
                let limit = if batch == max {
                    "max_batch".to_string()
                } else {
                    format!("{waiting} PRs over {runners} runners")
                };
                (batch, limit)
            } else {
                let cap = batch_cap(p);
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
            singles,
        },
        failure_rate: p,
        reason: format!(
            "{}, depth {runners}: p ≈ {p:.2} over {window}, {free} runners free (batch from {why})",
            if singles > 0 {
                let s = if singles == 1 { "" } else { "s" };
                format!("{singles} single PR{s}, then batch {batch}")
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
    fn the_shape_follows_the_failure_rate_and_the_queue() {
        let adaptive = BatchSize::Adaptive { max: 16 };
        // Few failures, a long queue, 8 runners: 3 single PRs at the front,
        // then batches covering the 64 (3 + 5 x 13 would, but max is 16
        // and 61/5 rounds up to 13).
        let p = plan(adaptive, 8, 1, false, &outcomes(0, 40), 64, 8);
        assert_eq!((p.plan.singles, p.plan.batch), (3, 13), "{}", p.reason);
        assert!(
            p.reason.starts_with("3 single PRs, then batch 13, depth 8"),
            "{}",
            p.reason
        );
        // A longer queue than the runners and max_batch can cover.
        let p = plan(adaptive, 8, 1, false, &outcomes(0, 40), 500, 8);
        assert_eq!(p.plan.batch, 16, "{}", p.reason);
        assert!(p.reason.contains("max_batch"), "{}", p.reason);
        // Many failures and many runners: one PR per car.
        let p = plan(adaptive, 8, 1, false, &outcomes(12, 40), 64, 8);
        assert_eq!((p.plan.singles, p.plan.batch), (0, 1), "{}", p.reason);
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
            (
                p.plan.batch,
                p.plan.depth,
                p.plan.bisect_parallel,
                p.plan.singles
            ),
            (3, 2, 1, 0)
        );
        assert!(p.reason.contains("fixed"), "{}", p.reason);
    }

    #[test]
    fn a_new_repository_starts_shaped_and_a_few_failures_move_it_to_speculation() {
        let adaptive = BatchSize::Adaptive { max: 32 };
        // No history: the prior (1 in 20) shapes the train.
        let p = plan(adaptive, 8, 1, false, &Outcomes::default(), 64, 8);
        assert_eq!((p.plan.singles, p.plan.batch), (3, 13), "{}", p.reason);
        assert!(p.reason.contains("the prior"), "{}", p.reason);
        // 2 failures in the first 10 decided: p = 2.5/20 = 0.125.
        let p = plan(adaptive, 8, 1, false, &outcomes(2, 10), 64, 8);
        assert_eq!((p.plan.singles, p.plan.batch), (0, 1), "{}", p.reason);
        // One runner has nothing to shape.
        let p = plan(adaptive, 1, 1, false, &Outcomes::default(), 64, 1);
        assert_eq!((p.plan.singles, p.plan.batch), (0, 8), "{}", p.reason);
    }

    #[test]
    fn with_few_runners_and_many_failures_speculation_lands_more() {
        // p·R = 0.72 < 0.8 at R = 4, but one round of 4 single PRs
        // (0.82 + 0.67 + 0.55 + 0.45 ≈ 2.5 expected to land) beats 1 single
        // and 3 batches of 21 that almost surely fail (≈ 1.1).
        assert!(!speculation_wins(0.18, 4));
        let spec = expected_landed(0.18, 4, 0, 1, 64);
        let shaped = expected_landed(0.18, 4, 1, 21, 64);
        assert!((spec - 2.49).abs() < 0.01, "{spec}");
        assert!((shaped - 1.09).abs() < 0.01, "{shaped}");
        let adaptive = BatchSize::Adaptive { max: 32 };
        let p = plan(adaptive, 4, 1, false, &outcomes(9, 40), 64, 4);
        assert_eq!((p.plan.singles, p.plan.batch), (0, 1), "{}", p.reason);
        // At p ≈ 0.05 the shaped round lands far more (the queue is long).
        assert!(expected_landed(0.05, 4, 1, 21, 64) > expected_landed(0.05, 4, 0, 1, 64));
        let p = plan(adaptive, 4, 1, false, &outcomes(2, 40), 64, 4);
        assert_eq!((p.plan.singles, p.plan.batch), (1, 21), "{}", p.reason);
        // Nothing counts past the queue.
        assert!((expected_landed(0.0, 8, 3, 13, 5) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn the_covering_batch_is_the_smallest_that_covers_the_queue() {
        assert_eq!(covering_batch(16, 4, 1, 32), 5, "1 + 5 + 5 + 5");
        assert_eq!(covering_batch(3, 4, 1, 8), 1);
        assert_eq!(covering_batch(1000, 4, 1, 8), 8, "at most max");
        assert_eq!(covering_batch(10, 2, 2, 8), 1, "no batch cars");
        assert_eq!(
            (front_singles(1), front_singles(8), front_singles(16)),
            (1, 3, 6)
        );
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
            p.reason.starts_with(
                "1 single PR, then batch 8, depth 3: p ≈ 0.05 over the last 40 PRs, 6 runners free"
            ),
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
