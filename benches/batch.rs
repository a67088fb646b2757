//! Merge trains part 2: batching with bisection and the adaptive planner,
//! against speculation and the serial mode, on the real core (the
//! simulator, `src/sim.rs`).
//!
//!     cargo bench --bench batch [-- --prs 64 --seeds 10]
//!
//! For p ∈ {0.02, 0.05, 0.1, 0.2} and R ∈ {1, 4, 8, 16}, N approved PRs at
//! once (PRs entering untested): each strategy's PRs merged per test time T
//! and builds per merged PR, next to the ceiling of speculation along one
//! predicted order, q(1 − q^R)/p, and the H(p) floor on runs per PR of any
//! adaptive group-testing scheme. The adaptive planner runs twice: on a new
//! repository (`adapt`: its first PRs are planned on the prior) and on one
//! with a history (`warm`: the same queue after another 64 PRs with the same
//! failure rate were decided). Then the goals, checked without a margin:
//! adaptive ≥ the better of speculation and batching at R = 8, ≥ 5× serial
//! at p ≤ 0.05, and builds per merged PR ≤ 1.5·H(p) + 0.1 at R = 1 for
//! p ≤ 0.1.

use sluice::core::{PrTests, planner::BatchSize};
use sluice::sim::{Scenario, ceiling, entropy, failing, run};

mod common;
use common::arg;

/// PRs per tested car of the fixed batching strategy.
const FIXED_BATCH: usize = 8;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let prs = arg("--prs", 64);
    let seeds = arg("--seeds", if full { 10 } else { 2 });
    println!(
        "{prs} approved PRs at once, {seeds} seeds; merged per T (test time) | builds per merged PR"
    );
    println!(
        "{:>5} {:>3} | {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} | {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "p",
        "R",
        "serial",
        "spec",
        "batch",
        "adapt",
        "warm",
        "ceiling",
        "serial",
        "spec",
        "batch",
        "adapt",
        "warm",
        "H(p)"
    );
    if std::env::args().any(|a| a == "--sweep") {
        // Which fixed batch size is best where (to check the planner's rule).
        for p in [0.02, 0.05, 0.1, 0.2] {
            for runners in [1usize, 4, 8, 16] {
                let mut row = Vec::new();
                for b in [1usize, 2, 3, 4, 6, 8, 12, 16, 32] {
                    let mut t = 0.0;
                    for seed in 1..=seeds {
                        let o = run(&Scenario {
                            prs,
                            failing: failing(prs, p, seed * 7919),
                            runners,
                            depth: runners,
                            test_ms: 1000,
                            pr_tests: PrTests::TrainOnly,
                            batch: BatchSize::Fixed(b),
                            optimistic: false,
                            flaky: vec![],
                            warmup: 0,
                            warmup_failing: vec![],
                        });
                        t += o.merged_per_t / seeds as f64;
                    }
                    row.push(format!("b{b}={t:.1}"));
                }
                println!("p={p} R={runners}: {}", row.join(" "));
            }
        }
        return;
    }
    let mut missed: Vec<String> = Vec::new();
    for p in [0.02, 0.05, 0.1, 0.2] {
        for runners in [1usize, 4, 8, 16] {
            let strategies = [
                (0, BatchSize::Fixed(1), PrTests::BeforeApproval),
                (runners, BatchSize::Fixed(1), PrTests::TrainOnly),
                (runners, BatchSize::Fixed(FIXED_BATCH), PrTests::TrainOnly),
                (runners, BatchSize::Adaptive { max: 32 }, PrTests::TrainOnly),
                (runners, BatchSize::Adaptive { max: 32 }, PrTests::TrainOnly),
            ];
            let mut per_t = [0.0f64; 5];
            let mut per_pr = [0.0f64; 5];
            for seed in 1..=seeds {
                let failing = failing(prs, p, seed * 7919);
                for (i, (depth, batch, pr_tests)) in strategies.iter().enumerate() {
                    let warm = i == 4;
                    let o = run(&Scenario {
                        prs,
                        failing: failing.clone(),
                        runners,
                        depth: *depth,
                        test_ms: 1000,
                        pr_tests: *pr_tests,
                        batch: *batch,
                        optimistic: false,
                        flaky: vec![],
                        warmup: if warm { prs } else { 0 },
                        warmup_failing: if warm {
                            sluice::sim::failing(prs, p, seed * 7919 + 1)
                        } else {
                            vec![]
                        },
                    });
                    assert!(!o.failing_landed, "a failing PR landed");
                    per_t[i] += o.merged_per_t / seeds as f64;
                    per_pr[i] += o.builds_per_merged / seeds as f64;
                }
            }
            let h = entropy(p);
            println!(
                "{p:>5} {runners:>3} | {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>7.2} | {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {h:>6.2}",
                per_t[0],
                per_t[1],
                per_t[2],
                per_t[3],
                per_t[4],
                ceiling(p, runners),
                per_pr[0],
                per_pr[1],
                per_pr[2],
                per_pr[3],
                per_pr[4],
            );
            for (i, which) in [(3, "adaptive"), (4, "adaptive with a history")] {
                let best = per_t[1].max(per_t[2]);
                if runners == 8 && per_t[i] < best {
                    missed.push(format!(
                        "p = {p}, R = 8: {which} {:.2} < the better of speculation and batching {best:.2} ({:.1}% short)",
                        per_t[i],
                        100.0 * (1.0 - per_t[i] / best)
                    ));
                }
                if runners == 8 && p <= 0.05 && per_t[i] < 5.0 * per_t[0] {
                    missed.push(format!(
                        "p = {p}, R = 8: {which} {:.2} < 5x serial {:.2}",
                        per_t[i], per_t[0]
                    ));
                }
                if runners == 1 && p <= 0.1 && per_pr[i] > 1.5 * h + 0.1 {
                    missed.push(format!(
                        "p = {p}, R = 1: {which} {:.2} builds per PR > 1.5 H(p) + 0.1 = {:.2}",
                        per_pr[i],
                        1.5 * h + 0.1
                    ));
                }
            }
        }
    }
    if missed.is_empty() {
        println!(
            "goals (adaptive >= spec and batch at R = 8; >= 5x serial at p <= 0.05; <= 1.5 H(p) + 0.1 builds per PR at R = 1, p <= 0.1): met"
        );
    } else {
        for m in missed {
            println!("MISSED: {m}");
        }
    }
}
