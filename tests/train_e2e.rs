//! Merge trains end to end: sluice over real HTTP against the fake GitHub
//! (real git, real merges of car commits on staging refs, a compare-and-swap
//! ref update, branch protection with the `sluice` check required), with
//! real test processes.

mod support;

use sluice::config::BatchSetting;
use sluice::core::MergeMethod;
use sluice::core::PrTests;
use sluice::demo::{DEMO_REPO, Stack};
use std::collections::BTreeSet;
use std::time::Duration;
use support::trains::assert_the_rule;

async fn train_stack(dir: &std::path::Path, depth: usize) -> Stack {
    train_stack_with(dir, depth, MergeMethod::Merge).await
}

async fn train_stack_with(dir: &std::path::Path, depth: usize, method: MergeMethod) -> Stack {
    let stack = Stack::start(dir, "127.0.0.1:0".parse().unwrap(), |c| {
        c.repos[0].train_depth = depth;
        c.repos[0].max_concurrent_builds = 4;
        c.repos[0].merge_method = method;
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

/// The car commits sluice tested and saw pass.
async fn passing_cars(stack: &Stack) -> BTreeSet<String> {
    support::trains::passed_cars(&history(stack).await)
        .into_keys()
        .collect()
}

/// Every commit main's first parents went through since `since`.
fn first_parents(stack: &Stack, since: &str) -> Vec<String> {
    support::trains::first_parent_log(&stack.hub, &format!("{since}..main"))
        .into_iter()
        .map(|(commit, _)| commit)
        .collect()
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

#[tokio::test]
async fn a_squash_train_lands_one_commit_per_pr_and_closes_each_with_a_comment() {
    let dir = tempfile::tempdir().unwrap();
    let stack = train_stack_with(dir.path(), 3, MergeMethod::Squash).await;
    let start = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    let mut prs = Vec::new();
    for i in 0..3 {
        let branch = format!("squash-{i}");
        let title = format!("Squash {i}");
        stack
            .hub
            .commit(
                DEMO_REPO,
                &branch,
                Some("main"),
                &[(&format!("src/squash-{i}.txt"), "ok\n")],
                "first",
            )
            .await
            .unwrap();
        // A second commit by someone else: credited in the squash commit.
        stack
            .hub
            .commit_as(
                DEMO_REPO,
                &branch,
                None,
                &[(&format!("src/squash-{i}-more.txt"), "ok\n")],
                "second",
                ("Bob Builder", Some("bob@example.invalid")),
            )
            .await
            .unwrap();
        let n = stack
            .hub
            .open_pr(DEMO_REPO, &branch, "main", &title, "carol")
            .await
            .unwrap();
        stack
            .hub
            .review(DEMO_REPO, n, "alice", "APPROVED")
            .await
            .unwrap();
        prs.push((n, title));
    }
    stack
        .wait_for(
            "the three PRs closed with a comment",
            Duration::from_secs(180),
            |s| {
                prs.iter().all(|(n, _)| {
                    s.hub.pr(DEMO_REPO, *n).is_some_and(|p| p.state == "closed")
                        && !s.hub.comments(DEMO_REPO, *n).is_empty()
                })
            },
        )
        .await
        .unwrap();
    assert!(stack.hub.merges().is_empty(), "no GitHub merge call");
    // main went through exactly one new commit per PR, none a merge, each
    // a car sluice tested and saw pass.
    let landed = first_parents(&stack, start.as_str());
    assert_eq!(landed.len(), 3, "{landed:?}");
    let tested = passing_cars(&stack).await;
    let url = stack.hub.clone_url(DEMO_REPO);
    let git_dir = url.trim_start_matches("file://");
    let show = |format: &str, sha: &str| {
        let out = std::process::Command::new("git")
            .args(["--git-dir", git_dir, "log", "-1"])
            .arg(format!("--format={format}"))
            .arg(sha)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mut subjects = BTreeSet::new();
    for sha in &landed {
        assert!(tested.contains(sha), "{sha} on main was not a passing car");
        assert_eq!(
            show("%P", sha).split_whitespace().count(),
            1,
            "{sha} is not a merge"
        );
        assert!(
            show("%B", sha).contains("Co-authored-by: Bob Builder <bob@example.invalid>"),
            "{}",
            show("%B", sha)
        );
        subjects.insert(show("%s", sha));
    }
    let expected: BTreeSet<String> = prs.iter().map(|(n, t)| format!("{t} (#{n})")).collect();
    assert_eq!(subjects, expected);
    for (n, title) in &prs {
        let view = stack.hub.pr(DEMO_REPO, *n).unwrap();
        assert!(!view.merged, "closed by sluice, not merged by GitHub");
        let commit = landed
            .iter()
            .find(|sha| show("%s", sha) == format!("{title} (#{n})"))
            .unwrap();
        let comments = stack.hub.comments(DEMO_REPO, *n);
        assert_eq!(comments.len(), 1, "{comments:?}");
        let body = &comments[0].body;
        assert!(
            body.starts_with(&format!(
                "Landed on `main` as {commit} by sluice (squash, car `sluice/main/"
            )),
            "{body}"
        );
        // The link goes to the car's test results, which exist.
        let link = body
            .split("[tested build](")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap();
        let page = stack.http.get(link).send().await.unwrap();
        assert_eq!(page.status(), 200, "{link}");
    }
    stack.sluice.stop().await;
}

/// The issue's throughput figure (a benchmark, run by `scripts/bench`): 12
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
    let (prs, opened, took) = drain(&stack, 12, &[3, 8]).await;
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

/// `git` on the fake's bare repository, its output lines.
fn hub_git(stack: &Stack, args: &[&str]) -> Vec<String> {
    let url = stack.hub.clone_url(DEMO_REPO);
    let dir = url.trim_start_matches("file://");
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether any status sluice posted on `head` says `text`.
fn said(stack: &Stack, head: &str, text: &str) -> bool {
    stack
        .hub
        .statuses(DEMO_REPO, head)
        .iter()
        .any(|s| s.description.as_deref().unwrap_or("").contains(text))
}

#[tokio::test]
async fn a_landing_waits_for_another_required_check_and_a_car_it_fails_is_ejected() {
    let dir = tempfile::tempdir().unwrap();
    let stack = train_stack(dir.path(), 3).await;
    // main also requires "ci/build", a CI that runs on pushes to sluice/**.
    stack
        .hub
        .protect_branch(DEMO_REPO, "main", &["sluice", "ci/build"])
        .unwrap();
    let start = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    let mut prs = Vec::new();
    for i in 0..3 {
        // The CI (not sluice's test) fails whatever holds src/ci-fails.txt.
        let file = if i == 1 {
            "src/ci-fails.txt"
        } else {
            "src/fine.txt"
        };
        let n = stack
            .open_pr(
                &format!("checks-{i}"),
                &[(&format!("{file}.{i}"), "ok\n")],
                &format!("Checks {i}"),
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
    let heads: Vec<String> = prs
        .iter()
        .map(|n| stack.hub.pr(DEMO_REPO, *n).unwrap().head_sha.to_string())
        .collect();
    // The CI reports on no car until sluice said what it waits for: a
    // check that never reports is a visible reason, not a silent stall.
    stack
        .wait_for(
            "a status naming the missing required check",
            Duration::from_secs(90),
            |s| {
                heads
                    .iter()
                    .any(|h| said(s, h, "waiting for required check \"ci/build\""))
            },
        )
        .await
        .unwrap();
    assert!(
        stack.hub.pr(DEMO_REPO, prs[0]).is_some_and(|p| !p.merged),
        "nothing lands without ci/build"
    );
    // From now on the CI reports on every car.
    let mut reported = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let good = [prs[0], prs[2]];
    while !good
        .iter()
        .all(|n| stack.hub.pr(DEMO_REPO, *n).is_some_and(|p| p.merged))
    {
        if tokio::time::Instant::now() > deadline {
            let queue = stack.get_json("/queue").await.unwrap();
            let st: Vec<_> = heads
                .iter()
                .map(|h| stack.hub.statuses(DEMO_REPO, h))
                .collect();
            panic!("timed out landing: {queue:#}\n{st:#?}\n{reported:?}");
        }
        let cars = hub_git(
            &stack,
            &[
                "for-each-ref",
                "--format=%(objectname)",
                "refs/heads/sluice/",
            ],
        );
        for car in cars {
            if reported.insert(car.clone()) {
                let files = hub_git(&stack, &["ls-tree", "-r", "--name-only", &car]);
                let fails = files.iter().any(|f| f.starts_with("src/ci-fails.txt"));
                let conclusion = if fails { "failure" } else { "success" };
                stack
                    .hub
                    .report_check_run(DEMO_REPO, &car, "ci/build", "completed", Some(conclusion))
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The PR whose car the CI failed left the train, saying why.
    let bad = stack.hub.pr(DEMO_REPO, prs[1]).unwrap();
    assert!(!bad.merged);
    let status = stack.status_of(prs[1]).unwrap();
    assert_eq!(status.state, "failure", "{status:?}");
    assert!(
        status
            .description
            .as_deref()
            .unwrap_or("")
            .contains("required check \"ci/build\" failed"),
        "{status:?}"
    );
    // main moved only to cars sluice tested, each passed by the CI.
    let tested = passing_cars(&stack).await;
    let landed = first_parents(&stack, start.as_str());
    assert!(!landed.is_empty());
    for sha in &landed {
        assert!(tested.contains(sha), "{sha} was not a passing car");
        assert!(reported.contains(sha), "{sha} landed without ci/build");
    }
    // No staging ref is left behind: neither the landed cars' (deleted by
    // name) nor those of the ejected car and of the cars rebuilt after it
    // (older car ids: found by a listing at the next landing).
    let left = |s: &Stack| {
        hub_git(
            s,
            &["for-each-ref", "--format=%(refname)", "refs/heads/sluice/"],
        )
    };
    for _ in 0..100 {
        if left(&stack).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left(&stack),
        Vec::<String>::new(),
        "staging refs left behind"
    );
    stack.sluice.stop().await;
}

/// Opens `count` approved PRs with a 3 s test, those at `failing` with a
/// BUG; waits until every other one landed. Returns (PR, passes) and how
/// long opening them and landing them took from the first opening.
async fn drain(
    stack: &Stack,
    count: usize,
    failing: &[usize],
) -> (Vec<(u64, bool)>, Duration, Duration) {
    let mut prs = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..count {
        let bad = failing.contains(&i);
        let content = if bad { "BUG\n" } else { "ok\n" };
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
        prs.push((n, !bad));
    }
    let opened = started.elapsed();
    stack
        .wait_for("the passing PRs merged", Duration::from_secs(300), |s| {
            prs.iter()
                .filter(|(_, good)| *good)
                .all(|(n, _)| s.hub.pr(DEMO_REPO, *n).is_some_and(|p| p.merged))
        })
        .await
        .unwrap();
    (prs, opened, started.elapsed())
}

async fn batch_stack(dir: &std::path::Path, batch: BatchSetting) -> Stack {
    Stack::start(dir, "127.0.0.1:0".parse().unwrap(), |c| {
        let repo = &mut c.repos[0];
        repo.train_depth = 4;
        repo.max_concurrent_builds = 4;
        repo.pr_tests = PrTests::TrainOnly;
        repo.batch = batch;
        repo.max_batch = 8;
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_failed_batch_is_bisected_and_only_its_culprit_leaves_the_train() {
    let dir = tempfile::tempdir().unwrap();
    let stack = batch_stack(dir.path(), BatchSetting::Size(4)).await;
    let start = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    let (prs, _, _) = drain(&stack, 8, &[2]).await;
    let culprit = prs[2].0;
    assert!(!stack.hub.pr(DEMO_REPO, culprit).unwrap().merged);
    // The culprit is named as such: its own car failed on a passing one.
    let status = stack.status_of(culprit).unwrap();
    assert_eq!(status.state, "failure", "{status:?}");
    let said = status.description.clone().unwrap_or_default();
    assert!(said.starts_with("left the train: the car failed"), "{said}");
    assert!(said.contains(&format!("#{}", prs[1].0)), "{said}");
    assert!(status.target_url.is_some(), "links the failing build");
    let view = stack
        .get_json(&format!("/status?pr={culprit}"))
        .await
        .unwrap();
    assert!(view.to_string().contains("\"stage\":\"test\""), "{view}");
    let history = stack
        .get_json(&format!("/history?pr={culprit}"))
        .await
        .unwrap();
    let ejected: Vec<&serde_json::Value> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "ejected")
        .collect();
    assert_eq!(ejected.len(), 1, "{history}");
    assert_eq!(ejected[0]["cause"], "failed");
    assert!(ejected[0]["link"].is_string(), "{history}");
    // main moved only to cars that passed (the cars inside a batch are in
    // its history, but it never pointed at one of them).
    // GitHub shows a PR merged as soon as main moves; sluice records the
    // landing when it hears the answer.
    // Under load the answer to the last landing may be lost to the request
    // timeout (10 s); sluice then reads the branch: allow for both.
    // (The car's sha is in the history before it lands, as a build: wait
    // for the merged entry itself.)
    let head = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    let merged_shas = |history: &serde_json::Value| -> BTreeSet<String> {
        history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "merged")
            .map(|e| e["merge_sha"].as_str().unwrap().to_string())
            .collect()
    };
    for _ in 0..300 {
        let history = stack.get_json("/history").await.unwrap();
        if merged_shas(&history).contains(head.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tested = passing_cars(&stack).await;
    let landed = merged_shas(&stack.get_json("/history").await.unwrap());
    assert!(!landed.is_empty());
    for sha in &landed {
        assert!(tested.contains(sha), "{sha} was not a passing car");
    }
    let moves: Vec<_> = stack
        .hub
        .branch_moves(DEMO_REPO)
        .into_iter()
        .filter(|m| m.branch == "main")
        .map(|m| (m.after, m.pusher))
        .collect();
    assert!(
        landed.contains(head.as_str()),
        "{head} not in {landed:?}; moves: {moves:?}; queue: {}",
        stack.get_json("/queue").await.unwrap()
    );
    // Every commit on main since is one of the cars (nothing else landed).
    assert_eq!(first_parents(&stack, start.as_str()).len(), 7);
    let queue = stack.get_json("/queue").await.unwrap();
    assert!(queue["trains"].as_array().unwrap().is_empty(), "{queue}");
    stack.sluice.stop().await;
}

/// The figures of issue 9's end-to-end goal: `cargo test --test train_e2e
/// -- --ignored --nocapture batch_drain_figures` (scripts/bench runs it).
#[tokio::test]
#[ignore]
async fn batch_drain_figures() {
    let dir = tempfile::tempdir().unwrap();
    let stack = batch_stack(dir.path(), BatchSetting::Word("adaptive".into())).await;
    // Two failing PRs at positions drawn once (seeded), 16 in all.
    let failing = [5, 12];
    let (prs, opened, took) = drain(&stack, 16, &failing).await;
    let failing_merged = prs
        .iter()
        .filter(|(n, good)| !good && stack.hub.pr(DEMO_REPO, *n).is_some_and(|p| p.merged))
        .count();
    let named = prs.iter().filter(|(_, good)| !good).all(|(n, _)| {
        stack.status_of(*n).is_some_and(|s| {
            s.state == "failure"
                && s.description
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("left the train: the car failed")
        })
    });
    let history = stack.get_json("/history").await.unwrap();
    let builds = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "build_finished")
        .count();
    println!(
        "batch drain: 16 approved PRs (2 failing, at 6th and 13th), 3 s test, adaptive batches (max 8), depth 4, 4 runners, PRs tested only in the train: \
         14 landed {:.1} s after the first was opened ({:.1} s opening and approving them) and {:.1} s after the last approval ({:.1} CI cycles); {failing_merged} failing landed; \
         each failing one named as the culprit: {named}; {builds} builds finished (goal: within 5 cycles, 15 s, plus overhead)",
        took.as_secs_f64(),
        opened.as_secs_f64(),
        (took - opened).as_secs_f64(),
        (took - opened).as_secs_f64() / 3.0,
    );
    assert_eq!(failing_merged, 0);
    assert!(named);
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_paused_branch_lands_nothing_until_it_runs_again_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stack = train_stack(dir.path(), 2).await;
    let body =
        |state: &str| serde_json::json!({"repo": DEMO_REPO, "branch": "main", "state": state});
    // Authenticated, well-formed, about a repository sluice gates.
    let (code, answer) = stack
        .post_json("/branch", &body("paused"), false)
        .await
        .unwrap();
    assert_eq!(code, 401, "{answer}");
    let (code, answer) = stack
        .post_json(
            "/branch",
            &serde_json::json!({"repo": DEMO_REPO, "branch": "main", "state": "stopped"}),
            true,
        )
        .await
        .unwrap();
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("paused"),
        "{answer}"
    );
    let (code, _) = stack
        .post_json(
            "/branch",
            &serde_json::json!({"repo": "octo/other", "branch": "main", "state": "paused"}),
            true,
        )
        .await
        .unwrap();
    assert_eq!(code, 404);
    let (code, answer) = stack
        .post_json("/branch", &body("paused"), true)
        .await
        .unwrap();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["mode"], "paused");
    assert_eq!(answer["was"], "running");
    // An approved, passing PR does not land while paused, and says why.
    let n = stack
        .open_pr("paused-1", &[("src/paused.txt", "ok\n")], "Paused 1")
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, n, "alice", "APPROVED")
        .await
        .unwrap();
    stack
        .wait_for("its own test passed", Duration::from_secs(60), |s| {
            s.status_of(n).is_some_and(|st| st.state == "success")
        })
        .await
        .unwrap();
    let queue = stack.get_json("/queue").await.unwrap();
    assert_eq!(queue["trains"][0]["state"], "paused", "{queue}");
    let view = stack.get_json(&format!("/status?pr={n}")).await.unwrap();
    assert!(view.to_string().contains("is paused"), "{view}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!stack.hub.pr(DEMO_REPO, n).unwrap().merged);
    // The watchdog's gauge is there (nothing stuck for 10 minutes yet).
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
        metrics.contains("sluice_train_stalls{kind=\"passed_not_landing\"} 0"),
        "{metrics}"
    );
    // Running again: it lands; the history has both transitions.
    let (code, _) = stack
        .post_json("/branch", &body("running"), true)
        .await
        .unwrap();
    assert_eq!(code, 200);
    stack
        .wait_for("it landed", Duration::from_secs(60), |s| {
            s.hub.pr(DEMO_REPO, n).is_some_and(|p| p.merged)
        })
        .await
        .unwrap();
    let history = stack.get_json("/history").await.unwrap();
    let modes: Vec<(String, String)> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "branch_mode")
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    // Newest first.
    assert_eq!(
        modes,
        vec![
            ("paused".into(), "running".into()),
            ("running".into(), "paused".into())
        ]
    );
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_landing_whose_answer_is_lost_is_read_from_the_branch_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.repos[0].train_depth = 2;
        c.github.request_timeout_secs = 1;
    })
    .await
    .unwrap();
    // Every answer to the target's update is held back past the timeout:
    // the update takes effect, sluice never hears so.
    stack.hub.inject_fault(sluice::fakehub::Fault::SlowAnswer {
        method: Some("PATCH".into()),
        path_prefix: format!("/repos/{DEMO_REPO}/git/refs/heads/main"),
        delay: Duration::from_secs(2),
        times: 100,
    });
    let n = stack
        .open_pr("lost-1", &[("src/lost.txt", "ok\n")], "Lost 1")
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, n, "alice", "APPROVED")
        .await
        .unwrap();
    stack
        .wait_for("the landing recorded", Duration::from_secs(90), |s| {
            s.hub.pr(DEMO_REPO, n).is_some_and(|p| p.merged)
        })
        .await
        .unwrap();
    let head = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    let mut recorded = false;
    for _ in 0..100 {
        let history = stack
            .get_json(&format!("/history?sha={head}"))
            .await
            .unwrap();
        if history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "merged" && e["merge_sha"] == head.as_str())
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recorded, "the landing of {head} is in the history");
    stack.sluice.stop().await;
}

/// Four approved PRs, the second with a flaky test (fails on its first run,
/// passes after), tested only in the train with one PR per car, depth 4.
/// Returns the PRs, once the three (or four) it should land are merged.
async fn flaky_drain(dir: &std::path::Path, optimistic: bool) -> (Stack, Vec<u64>) {
    let stack = Stack::start(dir, "127.0.0.1:0".parse().unwrap(), |c| {
        let repo = &mut c.repos[0];
        repo.train_depth = 4;
        repo.max_concurrent_builds = 4;
        repo.pr_tests = PrTests::TrainOnly;
        repo.optimistic = optimistic;
    })
    .await
    .unwrap();
    let marker = dir.join("flaked");
    let mut prs = Vec::new();
    for i in 0..4 {
        let flaky = marker.display().to_string();
        let mut files = vec![(format!("src/flaky-{i}.txt"), "ok\n".to_string())];
        files.push(("delay".into(), "2".into()));
        if i == 1 {
            files.push(("flaky".into(), flaky));
        }
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let n = stack
            .open_pr(&format!("flaky-{i}"), &files, &format!("Flaky {i}"))
            .await
            .unwrap();
        stack
            .hub
            .review(DEMO_REPO, n, "alice", "APPROVED")
            .await
            .unwrap();
        prs.push(n);
    }
    let landing: Vec<u64> = match optimistic {
        true => prs.clone(),
        false => vec![prs[0], prs[2], prs[3]],
    };
    stack
        .wait_for("the PRs merged", Duration::from_secs(120), |s| {
            landing
                .iter()
                .all(|n| s.hub.pr(DEMO_REPO, *n).is_some_and(|p| p.merged))
        })
        .await
        .unwrap();
    assert!(marker.exists(), "the flaky test ran and failed once");
    (stack, prs)
}

/// `optimistic`: a test that fails once and passes on the next try ejects
/// nobody (the car behind, holding the same PRs, passed on the same base);
/// the failure is recorded as a suspected flake. Without it, the PR whose
/// car the flake hit is taken for the culprit.
#[tokio::test]
async fn with_optimistic_a_flaky_test_ejects_no_innocent_pr() {
    let (strict_dir, optimistic_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ((strict, strict_prs), (stack, prs)) = tokio::join!(
        flaky_drain(strict_dir.path(), false),
        flaky_drain(optimistic_dir.path(), true)
    );
    // Optimistic: all four landed, nobody was ejected, one flake suspected.
    let entries = history(&stack).await;
    let kinds = |entries: &[serde_json::Value], kind: &str| -> Vec<serde_json::Value> {
        entries
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    };
    assert!(kinds(&entries, "ejected").is_empty(), "{entries:?}");
    let flakes = kinds(&entries, "suspected_flake");
    assert_eq!(flakes.len(), 1, "{entries:?}");
    assert!(
        flakes[0]["pr"]["number"] == prs[1] || flakes[0]["pr"]["number"] == prs[2],
        "the flake hit a car holding the flaky PR: {}",
        flakes[0]
    );
    assert!(
        flakes[0]["link"]
            .as_str()
            .is_some_and(|l| l.contains("/results/")),
        "{}",
        flakes[0]
    );
    for n in &prs {
        assert!(stack.hub.pr(DEMO_REPO, *n).unwrap().merged, "#{n} landed");
    }
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
        metrics.contains("sluice_train_decisions_total{kind=\"suspected_flake\"} 1"),
        "{metrics}"
    );
    // Strict: the flaky PR was taken for the culprit, the others landed.
    let innocent = strict_prs[1];
    assert!(!strict.hub.pr(DEMO_REPO, innocent).unwrap().merged);
    let status = strict.status_of(innocent).unwrap();
    assert_eq!(status.state, "failure", "{status:?}");
    assert!(
        status
            .description
            .as_deref()
            .unwrap_or("")
            .starts_with("left the train: the car failed"),
        "{status:?}"
    );
    let ejected = kinds(&history(&strict).await, "ejected");
    assert_eq!(ejected.len(), 1, "{ejected:?}");
    stack.sluice.stop().await;
    strict.sluice.stop().await;
}
