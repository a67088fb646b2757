//! Merge trains end to end: sluice over real HTTP against the fake GitHub
//! (real git, real merges of car commits on staging refs, a compare-and-swap
//! ref update, branch protection with the `sluice` check required), with
//! real test processes.

mod support;

use sluice::demo::{DEMO_REPO, Stack};
use std::time::Duration;
use support::trains::assert_the_rule;

async fn train_stack(dir: &std::path::Path, depth: usize) -> Stack {
    let stack = Stack::start(dir, "127.0.0.1:0".parse().unwrap(), |c| {
        c.repos[0].train_depth = depth;
        c.repos[0].max_concurrent_builds = 4;
    })
    .await
    .unwrap();
    // As the README advises: sluice is a required check on main.
    stack
        .hub
        .protect_branch(DEMO_REPO, "main", &["sluice"])
        .unwrap();
    stack
}

/// sluice's history (newest first).
async fn history(stack: &Stack) -> Vec<serde_json::Value> {
    let history = stack.get_json("/history").await.unwrap();
    history["entries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_train_lands_exactly_the_tested_cars_and_ejects_the_failing_pr() {
    let dir = tempfile::tempdir().unwrap();
    let stack = train_stack(dir.path(), 3).await;
    let start = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    let mut prs = Vec::new();
    // Six passing PRs and a failing one, with `sluice` a required check.
    for i in 0..7 {
        let content = if i == 2 { "BUG\n" } else { "ok\n" };
        let n = stack
            .open_pr(
                &format!("train-{i}"),
                &[(&format!("src/train-{i}.txt"), content)],
                &format!("Train {i}"),
            )
            .await
            .unwrap();
        stack
            .hub
            .review(DEMO_REPO, n, "alice", "APPROVED")
            .await
            .unwrap();
        prs.push(n);
    }
    let good: Vec<u64> = [0, 1, 3, 4, 5, 6].iter().map(|i| prs[*i]).collect();
    stack
        .wait_for(
            "the six passing PRs merged",
            Duration::from_secs(180),
            |s| {
                good.iter()
                    .all(|n| s.hub.pr(DEMO_REPO, *n).is_some_and(|p| p.merged))
            },
        )
        .await
        .unwrap();
    let bad = stack.hub.pr(DEMO_REPO, prs[2]).unwrap();
    assert!(!bad.merged, "the failing PR never lands");
    // No GitHub merge call: main was moved to the cars.
    assert!(stack.hub.merges().is_empty(), "{:?}", stack.hub.merges());
    // Every commit main went through is a car sluice tested and saw pass,
    // built on the main it left, holding each good PR once.
    let landed =
        assert_the_rule(&stack.hub, &stack.http, &history(&stack).await, &start, &[]).await;
    let mut heads: Vec<String> = good
        .iter()
        .map(|n| stack.head_of(*n).unwrap().as_str().to_string())
        .collect();
    heads.sort();
    let mut landed_heads = landed.heads.clone();
    landed_heads.sort();
    assert_eq!(landed_heads, heads);
    // The last one carries sluice's success (the required check).
    let head = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    assert!(
        stack
            .hub
            .statuses(DEMO_REPO, head.as_str())
            .iter()
            .any(|s| s.state == "success"),
        "main's head has no success status"
    );
    let status = stack.status_of(prs[2]);
    assert!(
        status.as_ref().is_some_and(|s| s.state == "failure"
            || s.description
                .as_deref()
                .unwrap_or("")
                .contains("left the train")),
        "{status:?}"
    );
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_push_racing_a_landing_never_puts_an_untested_commit_on_main() {
    let dir = tempfile::tempdir().unwrap();
    let stack = train_stack(dir.path(), 2).await;
    let start = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    let mut prs = Vec::new();
    for i in 0..2 {
        let n = stack
            .open_pr(
                &format!("race-{i}"),
                &[(&format!("src/race-{i}.txt"), "ok\n"), ("delay", "2")],
                &format!("Race {i}"),
            )
            .await
            .unwrap();
        stack
            .hub
            .review(DEMO_REPO, n, "alice", "APPROVED")
            .await
            .unwrap();
        prs.push(n);
    }
    // While the cars are being tested, a person pushes to main.
    stack
        .wait_for("a car under test", Duration::from_secs(60), |s| {
            s.sluice
                .shared
                .state
                .read()
                .unwrap()
                .running_builds()
                .any(|b| b.candidate.car.is_some())
        })
        .await
        .unwrap();
    // GET /queue shows the train: its cars, their PRs and states.
    let queue = stack.get_json("/queue").await.unwrap();
    let train = &queue["trains"][0];
    assert_eq!(train["branch"], "main", "{queue}");
    assert_eq!(train["base"], start.as_str(), "{queue}");
    let cars = train["cars"].as_array().unwrap();
    assert_eq!(cars[0]["pr"], prs[0], "{queue}");
    assert!(cars.iter().any(|c| c["state"] == "testing"), "{queue}");
    // Its webhook reaches sluice only after the car passed: sluice asks to
    // land on the main it knows, and GitHub's compare-and-swap refuses.
    stack.hub.set_delivery_delay(Duration::from_secs(5));
    let person = stack
        .hub
        .commit(
            DEMO_REPO,
            "main",
            None,
            &[("src/person.txt", "pushed\n")],
            "a direct push",
        )
        .await
        .unwrap();
    stack
        .wait_for("both PRs merged", Duration::from_secs(120), |s| {
            prs.iter()
                .all(|n| s.hub.pr(DEMO_REPO, *n).is_some_and(|p| p.merged))
        })
        .await
        .unwrap();
    let metrics = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("sluice_events_total{kind=\"land_refused\"}") && !l.ends_with(" 0")
        ),
        "the race did not happen: {metrics}"
    );
    let landed = assert_the_rule(
        &stack.hub,
        &stack.http,
        &history(&stack).await,
        &start,
        std::slice::from_ref(&person),
    )
    .await;
    assert_eq!(landed.heads.len(), prs.len());
    stack.sluice.stop().await;
}

/// The throughput figure (a benchmark, run by `scripts/bench`): 12
/// approved PRs with a 3 s test, 2 of them failing, depth 4 and 4 runners.
/// Prints the time until the 10 passing PRs landed, in CI cycles.
#[tokio::test]
#[ignore = "a benchmark: scripts/bench runs it"]
async fn train_drain_figures() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.repos[0].train_depth = 4;
        c.repos[0].max_concurrent_builds = 4;
    })
    .await
    .unwrap();
    let mut prs = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..12 {
        let content = if i == 3 || i == 8 { "BUG\n" } else { "ok\n" };
        let n = stack
            .open_pr(
                &format!("drain-{i}"),
                &[(&format!("src/drain-{i}.txt"), content), ("delay", "3")],
                &format!("Drain {i}"),
            )
            .await
            .unwrap();
        stack
            .hub
            .review(DEMO_REPO, n, "alice", "APPROVED")
            .await
            .unwrap();
        prs.push((n, i != 3 && i != 8));
    }
    let opened = started.elapsed();
    stack
        .wait_for("the 10 passing PRs merged", Duration::from_secs(300), |s| {
            prs.iter()
                .filter(|(_, good)| *good)
                .all(|(n, _)| s.hub.pr(DEMO_REPO, *n).is_some_and(|p| p.merged))
        })
        .await
        .unwrap();
    let took = started.elapsed();
    let failing_merged = prs
        .iter()
        .filter(|(n, good)| !good && stack.hub.pr(DEMO_REPO, *n).is_some_and(|p| p.merged))
        .count();
    let history = stack.get_json("/history").await.unwrap();
    let builds = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "build_finished")
        .count();
    println!(
        "train drain: 12 approved PRs (2 failing), 3 s test, depth 4, 4 runners: \
         10 landed {:.1} s after the first was opened ({:.1} CI cycles; opening took {:.1} s); \
         {failing_merged} failing landed; {builds} builds finished \
         (goal: within 6 cycles, 18 s, plus overhead; the early test of each PR is one of them)",
        took.as_secs_f64(),
        took.as_secs_f64() / 3.0,
        opened.as_secs_f64()
    );
    assert_eq!(failing_merged, 0);
    stack.sluice.stop().await;
}
