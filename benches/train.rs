//! The queue simulator's table: the real core on a virtual clock.
//!
//!     cargo bench --bench train [-- --prs 200 --seeds 5]
//!
//! For failure probabilities p and runners R: PRs merged per test time T in
//! serial mode and with a train of depth R (PRs entering untested, the
//! steady state the closed form describes), next to the ceiling of
//! speculation along one predicted order, q(1 − q^R)/p; builds per merged
//! PR; and the goal at p = 0.05, R = 8 (>= 5x serial, within 20% of the
//! ceiling).

use sluice::core::{PrTests, planner};
use sluice::sim::{Scenario, ceiling, failing, run};

mod common;
use common::arg;

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this is a smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let prs = arg("--prs", if full { 200 } else { 40 });
    let seeds = arg("--seeds", if full { 5 } else { 1 });
    println!(
        "{prs} approved PRs, {seeds} seeds each; merged per T (test time), builds per merged PR"
    );
    println!(
        "{:>5} {:>3} | {:>8} {:>8} {:>8} {:>7} | {:>7} {:>7} | {:>8}",
        "p", "R", "serial", "train", "ceiling", "of ceil", "b/m ser", "b/m trn", "x serial"
    );
    let mut goal = None;
    for p in [0.02, 0.05, 0.1, 0.2] {
        for runners in [1usize, 4, 8] {
            let (mut serial, mut train, mut bs, mut bt) = (0.0, 0.0, 0.0, 0.0);
            for seed in 1..=seeds {
                let failing = failing(prs, p, seed * 7919);
                let base = Scenario {
                    prs,
                    failing,
                    runners,
                    depth: 0,
                    test_ms: 1000,
                    pr_tests: PrTests::BeforeApproval,
                    batch: planner::BatchSize::Fixed(1),
                    optimistic: false,
                    flaky: vec![],
                    warmup: 0,
                    warmup_failing: vec![],
                };
                let s = run(&base);
                let t = run(&Scenario {
                    depth: runners,
                    pr_tests: PrTests::TrainOnly,
                    batch: planner::BatchSize::Fixed(1),
                    optimistic: false,
                    flaky: vec![],
                    warmup: 0,
                    warmup_failing: vec![],
                    ..base
                });
                assert!(
                    !s.failing_landed && !t.failing_landed,
                    "a failing PR landed"
                );
                serial += s.merged_per_t;
                train += t.merged_per_t;
                bs += s.builds_per_merged;
                bt += t.builds_per_merged;
            }
            let n = seeds as f64;
            let (serial, train, bs, bt) = (serial / n, train / n, bs / n, bt / n);
            let ceil = ceiling(p, runners);
            println!(
                "{p:>5} {runners:>3} | {serial:>8.2} {train:>8.2} {ceil:>8.2} {:>6.0}% | {bs:>7.2} {bt:>7.2} | {:>7.1}x",
                100.0 * train / ceil,
                train / serial
            );
            if p == 0.05 && runners == 8 {
                goal = Some((train / serial, train / ceil));
            }
        }
    }
    if let Some((x, of)) = goal {
        println!(
            "goal at p = 0.05, R = 8: {x:.1}x serial (>= 5x), {:.0}% of the ceiling (>= 80%): {}",
            100.0 * of,
            if x >= 5.0 && of >= 0.8 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}
