//! The pages at scale: the dashboard and a PR page rendered with 10,000
//! tracked PRs and a full history.
//!
//!     cargo bench --bench pages [-- --prs 10000 --runs 30 --history 10000]
//!
//! Builds the state through the core's own events (PRs opened, builds
//! started and finished, a merge train of 200 cars on a second
//! repository), fills the history (`--history` entries), then renders the
//! dashboard (its first page and a later one) and one PR page, each
//! `--runs` times, and prints the median and p99 next to the goal
//! (dashboard <= 200 ms with 10,000 PRs tracked). The figure covers what a
//! request does under the locks (the model) and the rendering after.

use sluice::core::*;
use sluice::http::pages::{Dashboard, PrPage};
use sluice::results::fs::FsResults;
use sluice::runtime::history::History;
use std::collections::BTreeMap;
use std::time::Instant;

mod common;
use common::arg;

fn sha(n: u64) -> Sha {
    Sha::parse(&format!("{n:040x}")).unwrap()
}

fn snapshot(repo: &RepoName, n: u64) -> PrSnapshot {
    PrSnapshot {
        key: PrKey {
            repo: repo.clone(),
            number: n,
        },
        head_sha: sha(0x1_0000_0000 + n),
        head_ref: format!("feature-{n}"),
        base_ref: "main".into(),
        base_sha: None,
        title: format!("Change {n}: a title of realistic length for a pull request"),
        author: format!("dev{}", n % 50),
        draft: false,
        mergeable: None,
        labels: vec![],
        created_at: Timestamp(n),
        depends_on: Vec::new(),
    }
}

/// Applies `event`, keeping the builds it starts (and forgetting those it
/// cancels) in `running`.
fn apply(state: &mut State, running: &mut BTreeMap<BuildId, Candidate>, event: Event, now: u64) {
    for action in state.handle(event, Timestamp(now)) {
        match action {
            Action::StartBuild { build, candidate } => {
                running.insert(build, candidate);
            }
            Action::CancelBuild { build } => {
                running.remove(&build);
            }
            _ => {}
        }
    }
}

/// Milliseconds of each of `runs` calls of `f`, sorted.
fn time(runs: u64, mut f: impl FnMut() -> usize) -> (Vec<f64>, usize) {
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..runs {
        let t = Instant::now();
        bytes = f();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms, bytes)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this is a smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let prs = arg("--prs", if full { 10_000 } else { 300 });
    let runs = arg("--runs", if full { 30 } else { 3 });
    let entries = arg("--history", if full { 10_000 } else { 1_000 });
    let mono = RepoName::parse("bench/monorepo").unwrap();
    let trains = RepoName::parse("bench/trains").unwrap();
    let train_policy = RepoPolicy {
        train_depth: 4,
        max_concurrent_builds: 4,
        required_approvals: 0,
        pr_tests: PrTests::TrainOnly,
        ..RepoPolicy::default()
    };
    let mut state = State::new(
        [
            (
                mono.clone(),
                RepoPolicy {
                    max_concurrent_builds: 8,
                    ..RepoPolicy::default()
                },
            ),
            (trains.clone(), train_policy),
        ],
        "bench",
    );
    let mut running = BTreeMap::new();
    let mut now = 1_000_000u64;
    for repo in [&mono, &trains] {
        apply(
            &mut state,
            &mut running,
            Event::BranchMoved {
                repo: repo.clone(),
                branch: "main".into(),
                sha: sha(1),
                before: None,
            },
            now,
        );
    }
    let t = Instant::now();
    for n in 1..=prs {
        now += 1;
        apply(
            &mut state,
            &mut running,
            Event::PrUpdated(snapshot(&mono, n)),
            now,
        );
    }
    let train_prs = 200.min(prs);
    for n in 1..=train_prs {
        now += 1;
        apply(
            &mut state,
            &mut running,
            Event::PrUpdated(snapshot(&trains, n)),
            now,
        );
    }
    // Some builds finish (a tenth of them fail), so phases and reasons vary.
    for round in 0..4 {
        let done: Vec<(BuildId, Candidate)> = running
            .iter()
            .filter(|(_, c)| c.repo == mono)
            .map(|(b, c)| (b.clone(), c.clone()))
            .collect();
        for (i, (build, candidate)) in done.into_iter().enumerate() {
            now += 1;
            let outcome = if (i + round).is_multiple_of(10) {
                Outcome::Failed
            } else {
                Outcome::Passed
            };
            apply(
                &mut state,
                &mut running,
                Event::JobFinished {
                    build,
                    candidate,
                    report: JobReport {
                        outcome,
                        exit_code: Some(0),
                        detail: "exit code 0".into(),
                        started_at: Timestamp(now - 1),
                        finished_at: Timestamp(now),
                    },
                },
                now,
            );
        }
    }
    println!(
        "state: {} PRs tracked, {} trains of {} cars, {} builds running ({:.2} s to build)",
        state.pr_views().len(),
        state.queue_view().len(),
        state
            .queue_view()
            .iter()
            .map(|t| t.cars.len())
            .sum::<usize>(),
        running.len(),
        t.elapsed().as_secs_f64()
    );

    // A full history: builds, landings, ejections.
    let mut history = History::default();
    for i in 0..entries {
        let n = 1 + i % prs;
        let pr = PrKey {
            repo: mono.clone(),
            number: n,
        };
        let build = BuildId::parse(&format!("bench-h{i}")).unwrap();
        let at = Timestamp(now + i);
        history.push(match i % 10 {
            0 => HistoryEntry::Merged {
                pr,
                title: format!("Change {n}"),
                branch: "main".into(),
                pair: Pair {
                    head: sha(0x1_0000_0000 + n),
                    target: sha(1),
                },
                build,
                approvers: vec!["alice".into()],
                merge_sha: sha(0x2_0000_0000 + i),
                at,
            },
            1 => HistoryEntry::Ejected {
                pr,
                head: sha(0x1_0000_0000 + n),
                stage: "test".into(),
                cause: EjectKind::Failed,
                message: "left the train: the car failed on the head of main: exit code 1".into(),
                build: Some(build),
                at,
            },
            _ => HistoryEntry::BuildFinished {
                build,
                candidate: Candidate {
                    repo: mono.clone(),
                    target_branch: "main".into(),
                    target_sha: sha(1),
                    prs: vec![CandidatePr {
                        number: n,
                        head_sha: sha(0x1_0000_0000 + n),
                        head_ref: format!("feature-{n}"),
                    }],
                    car: None,
                },
                report: JobReport {
                    outcome: Outcome::Passed,
                    exit_code: Some(0),
                    detail: "exit code 0".into(),
                    started_at: at,
                    finished_at: at,
                },
                current: true,
            },
        });
    }
    let results = FsResults::new("bench-results".into(), "https://sluice.example.com");
    let at = Timestamp(now + entries);

    let mut failed = false;
    let waiting_pages = (prs as usize).div_ceil(sluice::http::pages::WAITING_PER_PAGE);
    for (what, page) in [
        ("first page", 1),
        ("a later page", waiting_pages.max(2) / 2),
    ] {
        let (ms, bytes) = time(runs, || {
            Dashboard::build(&state, &history, &results, page, at)
                .html()
                .unwrap()
                .len()
        });
        let (median, p99) = (pct(&ms, 0.5), pct(&ms, 0.99));
        let met = p99 <= 200.0;
        failed |= !met;
        println!(
            "dashboard, {what} (page {page}), {prs} PRs tracked: median {median:.1} ms, p99 {p99:.1} ms, \
             {} KiB (goal <= 200 ms): {}",
            bytes / 1024,
            if met { "met" } else { "MISSED" }
        );
    }
    let key = PrKey {
        repo: mono.clone(),
        number: 1,
    };
    let (ms, bytes) = time(runs, || {
        PrPage::build(&state, &history, &results, &key, at)
            .unwrap()
            .html()
            .unwrap()
            .len()
    });
    println!(
        "PR page ({} history entries of it): median {:.1} ms, p99 {:.1} ms, {} KiB",
        entries / prs.max(1),
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        bytes / 1024
    );
    if failed && full {
        println!("pages: goal MISSED");
    }
}
