//! The core alone: events applied per second with many PRs tracked.
//!
//!     cargo bench --bench core [-- --prs 10000 --events 200000]
//!
//! Opens N PRs on one repository, then applies a mix of the events a busy
//! repository sees (new heads, reviews, job results) and prints events/s
//! next to the goal (>= 50,000 events/s with 10,000 PRs tracked). Also the
//! cost of a push to the target branch, which touches every PR on it.
//! Deterministic: a fixed-seed generator, no clock inside the core.

use sluice::core::*;
use std::collections::BTreeMap;
use std::time::Instant;

fn sha(n: u64) -> Sha {
    Sha::parse(&format!("{n:040x}")).unwrap()
}

/// A small fixed-seed generator (xorshift), so runs compare.
struct Dice(u64);
impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

mod common;
use common::arg;

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this is a smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let prs = arg("--prs", if full { 10_000 } else { 500 });
    let events = arg("--events", if full { 200_000 } else { 5_000 });
    let repo = RepoName::parse("bench/monorepo").unwrap();
    let policy = RepoPolicy {
        max_concurrent_builds: 8,
        ..RepoPolicy::default()
    };
    let mut state = State::new([(repo.clone(), policy)], "bench");
    let mut now = 1_000_000u64;
    let mut running: BTreeMap<BuildId, Candidate> = BTreeMap::new();
    let mut heads: Vec<u64> = vec![0; prs as usize + 1];
    let apply =
        |state: &mut State, running: &mut BTreeMap<BuildId, Candidate>, event: Event, now: u64| {
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
        };
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
    let snapshot = |n: u64, head: u64| PrSnapshot {
        key: PrKey {
            repo: RepoName::parse("bench/monorepo").unwrap(),
            number: n,
        },
        head_sha: sha(0x1_0000_0000 + n * 1_000 + head),
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
    };
    let t = Instant::now();
    for n in 1..=prs {
        now += 1;
        apply(
            &mut state,
            &mut running,
            Event::PrUpdated(snapshot(n, 0)),
            now,
        );
    }
    let open_secs = t.elapsed().as_secs_f64();
    println!(
        "open {prs} PRs: {:.0} events/s ({:.2} s)",
        prs as f64 / open_secs,
        open_secs
    );

    let mut dice = Dice(0x5eed);
    let mut review_id = 0u64;
    let mut kinds = [0u64; 3];
    let t = Instant::now();
    for _ in 0..events {
        now += 1;
        let n = 1 + dice.next() % prs;
        let roll = dice.next() % 10;
        let event = if roll < 4 {
            kinds[0] += 1;
            heads[n as usize] += 1;
            Event::PrUpdated(snapshot(n, heads[n as usize]))
        } else if roll < 7 || running.is_empty() {
            kinds[1] += 1;
            review_id += 1;
            let state = if dice.next().is_multiple_of(4) {
                ReviewState::Approved
            } else {
                ReviewState::Commented
            };
            Event::Reviews {
                pr: PrKey {
                    repo: repo.clone(),
                    number: n,
                },
                reviews: vec![ReviewFact {
                    reviewer: format!("rev{}", review_id % 7),
                    state,
                    id: review_id,
                    can_write: true,
                }],
            }
        } else {
            kinds[2] += 1;
            let pick = (dice.next() % running.len() as u64) as usize;
            let build = running.keys().nth(pick).unwrap().clone();
            let candidate = running.remove(&build).unwrap();
            let outcome = if dice.next().is_multiple_of(10) {
                Outcome::Failed
            } else {
                Outcome::Passed
            };
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
            }
        };
        apply(&mut state, &mut running, event, now);
    }
    let mixed = t.elapsed().as_secs_f64();
    let rate = events as f64 / mixed;
    println!(
        "mixed events with {prs} PRs tracked ({} new heads, {} reviews, {} job results): \
         {rate:.0} events/s, {:.1} us/event (goal >= 50000 events/s): {}",
        kinds[0],
        kinds[1],
        kinds[2],
        mixed * 1e6 / events as f64,
        if rate >= 50_000.0 { "met" } else { "MISSED" }
    );

    // A push to the target: every PR on it is stale (inherent O(PRs on it)).
    let t = Instant::now();
    apply(
        &mut state,
        &mut running,
        Event::BranchMoved {
            repo: repo.clone(),
            branch: "main".into(),
            sha: sha(2),
            before: Some(sha(1)),
        },
        now + 1,
    );
    println!(
        "a push to main with {prs} PRs on it: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let views = state.pr_views();
    println!(
        "all {} PR views (GET /status): {:.1} ms",
        views.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let json = serde_json::to_vec(&state).unwrap();
    println!(
        "state as JSON (a snapshot): {:.1} MB in {:.1} ms",
        json.len() as f64 / 1e6,
        t.elapsed().as_secs_f64() * 1e3
    );
}
