//! Chaos and restarts over merge trains (`train_depth` 3, merge method
//! "merge"), sluice as a real process against the fake GitHub over HTTP,
//! real git, real test processes. The fake drops, duplicates and reorders
//! webhook deliveries and answers API calls 502; sluice is killed with
//! SIGKILL while a car is tested, right after it moved the target, and
//! between a landing's success status and its ref update; a person pushes
//! to main under the train. Whatever happens, as a user checks it after the
//! run:
//! - every approved PR whose test passes lands, once, and GitHub marks it
//!   merged; a failing PR never lands and its status says `failure` (one
//!   of two PRs that fail only together lands, the other fails);
//! - the rule: every commit main moves to is a car that had a `sluice`
//!   success status before main moved to it, linking to a result saying
//!   that car, built on exactly the previous main, passed; nothing else is
//!   ever on main but the person's push (`support::trains`);
//! - the staging refs of landed cars are deleted.
//!
//! The faults are seeded: `SLUICE_CHAOS_SEED=<n> cargo test --test
//! chaos_train -- --nocapture` replays a run (the seed is printed first).

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sluice::core::Sha;
use sluice::demo::{CHECK_SCRIPT, DEMO_REPO};
use sluice::fakehub::{Chaos, Fault, MERGER};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::trains::{TARGET, assert_the_rule, first_parent_log, staging_refs};
use support::{KeepOnPanic, World, alive, running_job};

const DEFAULT_SEED: u64 = 20_240_612;
const DEPTH: usize = 3;
/// As in tests/chaos.rs: lost deliveries are healed within a second.
const RECONCILE_SECS: u64 = 1;
const MAX_CONCURRENT: usize = 4;
/// Generous but bounded: a scenario must settle within this.
const SETTLE_SECS: u64 = 90;

/// The demo's test, and one rule more: `src/clash-a.txt` and
/// `src/clash-b.txt` each pass alone and fail together, so a PR can pass
/// its own test and still fail in a car.
fn check_script_with_clash() -> String {
    CHECK_SCRIPT.replace(
        "echo \"all good\"",
        "if [ -f src/clash-a.txt ] && [ -f src/clash-b.txt ]; then\n  \
         echo \"clash-a and clash-b do not work together\"; exit 1\nfi\necho \"all good\"",
    )
}

/// How sluice lands a car: a non-forced `PATCH` of the target's ref.
fn landing_path() -> String {
    format!("/repos/{DEMO_REPO}/git/refs/heads/{TARGET}")
}

fn status_path(sha: &str) -> String {
    format!("/repos/{DEMO_REPO}/statuses/{sha}")
}

/// One PR of a scenario, and what should become of it.
#[derive(Clone, Debug)]
struct Planned {
    number: u64,
    name: String,
    expect: Expect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Lands,
    Fails,
    /// clash-a or clash-b: the one tested second with the other fails,
    /// the other lands.
    OneOfTheClash,
}

/// A scenario's world: sluice with trains, main at `start`.
struct Scenario {
    world: World,
    start: Sha,
    prs: Vec<Planned>,
    /// Commits people pushed to main.
    pushes: Vec<Sha>,
    label: &'static str,
}

impl Scenario {
    async fn new(dir: &KeepOnPanic, label: &'static str) -> Scenario {
        let world = World::with_train(dir.path(), RECONCILE_SECS, MAX_CONCURRENT, DEPTH).await;
        let start = world
            .hub
            .commit(
                DEMO_REPO,
                TARGET,
                None,
                &[("check.sh", &check_script_with_clash())],
                "check.sh: clash-a and clash-b fail together",
            )
            .await
            .unwrap();
        Scenario {
            world,
            start,
            prs: Vec::new(),
            pushes: Vec::new(),
            label,
        }
    }

    /// Opens a PR adding `src/<name>.txt` (plus `extra` files); it should
    /// land unless it says BUG (`bug*`) or is one of the clash.
    async fn open(&mut self, name: &str, extra: &[(&str, &str)]) -> u64 {
        let file = format!("src/{name}.txt");
        let text = if name.starts_with("bug") {
            "BUG\n".to_string()
        } else {
            format!("{name}\n")
        };
        let mut files = vec![(file.as_str(), text.as_str())];
        files.extend_from_slice(extra);
        let number = self.world.open_pr(name, &files).await;
        self.prs.push(Planned {
            number,
            name: name.to_string(),
            expect: if name.starts_with("bug") {
                Expect::Fails
            } else if name.starts_with("clash-") {
                Expect::OneOfTheClash
            } else {
                Expect::Lands
            },
        });
        number
    }

    async fn push_to_main(&mut self, name: &str) {
        let file = format!("src/{name}.txt");
        let sha = self
            .world
            .hub
            .commit(DEMO_REPO, TARGET, None, &[(&file, "pushed\n")], name)
            .await
            .unwrap();
        eprintln!("[{}] a person pushed {sha} to {TARGET}", self.label);
        self.pushes.push(sha);
    }

    /// Whether the PR should land (one of the clash: whether it did).
    fn lands(&self, p: &Planned) -> bool {
        match p.expect {
            Expect::Lands => true,
            Expect::Fails => false,
            Expect::OneOfTheClash => self.world.merged(p.number),
        }
    }

    /// Merged if it should land, else its status says `failure`.
    fn finished(&self, p: &Planned) -> bool {
        let failed = || {
            self.world
                .status_of(p.number)
                .is_some_and(|s| s.state == "failure")
        };
        match p.expect {
            Expect::Lands => self.world.merged(p.number),
            Expect::Fails => failed(),
            Expect::OneOfTheClash => self.world.merged(p.number) || failed(),
        }
    }

    fn done(&self) -> bool {
        self.prs.iter().all(|p| self.finished(p))
    }

    /// What is not done yet, for a failure message.
    fn stuck(&self) -> String {
        self.prs
            .iter()
            .filter(|p| !self.finished(p))
            .map(|p| {
                format!(
                    "#{} {}: {:?}",
                    p.number,
                    p.name,
                    self.world.status_of(p.number)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn train_is_empty(&self) -> bool {
        let queue = self.world.get("/queue").await;
        queue["trains"].as_array().is_some_and(|t| t.is_empty())
    }

    /// Waits until done and the train is empty.
    async fn settle(&self, started: Instant) {
        let deadline = started + Duration::from_secs(SETTLE_SECS);
        loop {
            if self.done() && self.train_is_empty().await {
                eprintln!(
                    "[{}] settled in {:.1} s",
                    self.label,
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] not settled after {SETTLE_SECS} s; logs in {}; queue {}; stuck:\n{}",
                self.label,
                self.world.dir.display(),
                self.world.get("/queue").await,
                self.stuck()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// sluice's history, once it records a merge of every PR that landed.
    async fn history(&self) -> Vec<Value> {
        let landing: BTreeSet<u64> = self
            .prs
            .iter()
            .filter(|p| self.lands(p))
            .map(|p| p.number)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let history = self.world.get("/history").await;
            let entries = history["entries"].as_array().cloned().unwrap_or_default();
            let recorded: BTreeSet<u64> = merged_entries(&entries).into_iter().collect();
            if landing.is_subset(&recorded) {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] PRs landed that sluice's history never recorded: {:?}",
                self.label,
                landing.difference(&recorded).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The assertions every scenario ends with.
    async fn assert_outcome(&self) {
        let label = self.label;
        let hub = &self.world.hub;
        let history = self.history().await;
        let landed =
            assert_the_rule(hub, &self.world.http, &history, &self.start, &self.pushes).await;
        assert!(
            hub.merges().is_empty(),
            "[{label}] a PR was merged through the merge API"
        );
        for p in &self.prs {
            let view = hub.pr(DEMO_REPO, p.number).unwrap();
            let times = landed
                .heads
                .iter()
                .filter(|h| h.as_str() == view.head_sha.as_str())
                .count();
            if self.lands(p) {
                assert_eq!(
                    times, 1,
                    "[{label}] #{} {} landed {times} times",
                    p.number, p.name
                );
                assert!(
                    view.merged,
                    "[{label}] #{} landed but GitHub has it unmerged",
                    p.number
                );
            } else {
                assert_eq!(
                    times, 0,
                    "[{label}] failing #{} {} landed",
                    p.number, p.name
                );
                assert!(!view.merged, "[{label}] failing #{} is merged", p.number);
                let status = self.world.status_of(p.number).unwrap();
                assert_eq!(
                    status.state, "failure",
                    "[{label}] #{}: {status:?}",
                    p.number
                );
            }
        }
        let clash: Vec<&Planned> = self
            .prs
            .iter()
            .filter(|p| p.expect == Expect::OneOfTheClash)
            .collect();
        if !clash.is_empty() {
            let landed = clash.iter().filter(|p| self.lands(p)).count();
            assert_eq!(
                landed, 1,
                "[{label}] exactly one of the clash lands: {clash:?}"
            );
        }
        assert_eq!(
            landed.heads.len(),
            self.prs.iter().filter(|p| self.lands(p)).count(),
            "[{label}] main holds PRs of no scenario: {:?}",
            landed.heads
        );
        // sluice recorded each landing once, restarts or not.
        let mut merged = merged_entries(&history);
        merged.sort();
        let expected: Vec<u64> = self
            .prs
            .iter()
            .filter(|p| self.lands(p))
            .map(|p| p.number)
            .collect();
        assert_eq!(merged, expected, "[{label}] sluice's merge records");
        self.assert_staging_refs_of_landed_cars_deleted().await;
        eprintln!(
            "[{label}] {} PRs landed in {} landings; {} person's push(es)",
            landed.heads.len(),
            landed.landings,
            self.pushes.len()
        );
    }

    /// Eventually no staging ref holds a commit that is on main.
    async fn assert_staging_refs_of_landed_cars_deleted(&self) {
        let on_main: BTreeSet<String> =
            first_parent_log(&self.world.hub, &format!("{}..{TARGET}", self.start))
                .into_iter()
                .map(|(commit, _)| commit)
                .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left: Vec<(String, String)> = staging_refs(&self.world.hub)
                .into_iter()
                .filter(|(_, sha)| on_main.contains(sha))
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] staging refs of landed cars are never deleted: {left:?}",
                self.label
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The cars of the train now, from `GET /queue`.
    async fn cars(&self) -> Vec<Value> {
        let queue = self.world.get("/queue").await;
        queue["trains"]
            .as_array()
            .and_then(|t| t.first())
            .and_then(|t| t["cars"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The shas of the cars under test now.
    async fn tested_cars(&self) -> Vec<String> {
        self.cars()
            .await
            .iter()
            .filter(|c| c["state"] == "testing")
            .filter_map(|c| c["sha"].as_str().map(str::to_string))
            .collect()
    }

    async fn a_car_is_tested(&self) -> bool {
        !self.tested_cars().await.is_empty()
    }

    /// Waits until `count` cars are tested at once; their shas.
    async fn wait_for_tested_cars(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(SETTLE_SECS);
        loop {
            let cars = self.tested_cars().await;
            if cars.len() == count {
                return cars;
            }
            assert!(
                Instant::now() < deadline,
                "{count} cars never tested at once"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn landings(&self) -> usize {
        landings(&self.world)
    }

    async fn restart(&mut self, down: Duration) {
        self.world.kill();
        tokio::time::sleep(down).await;
        self.world.start().await;
    }
}

/// How many times sluice has moved main.
fn landings(world: &World) -> usize {
    world
        .hub
        .branch_moves(DEMO_REPO)
        .iter()
        .filter(|m| m.branch == TARGET && m.pusher == MERGER)
        .count()
}

/// The PRs sluice's history says landed (one entry per landing of a PR).
fn merged_entries(history: &[Value]) -> Vec<u64> {
    history
        .iter()
        .filter(|e| e["kind"] == "merged")
        .filter_map(|e| e["pr"]["number"].as_u64())
        .collect()
}

/// What the chaos run does to sluice besides the fake's own chaos, in order.
#[derive(Debug)]
enum Next {
    /// SIGKILL once a car's test runs.
    KillWhileACarIsTested,
    /// SIGKILL right after sluice moved main (the answer to its PATCH held).
    KillAfterTheTargetMoved {
        landings: usize,
    },
    /// A person pushes to main while cars are tested.
    PushUnderTheTrain,
    /// A last SIGKILL at a seeded moment.
    KillAt(Duration),
    Done,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_chaos_a_train_lands_only_tested_cars_and_every_passing_pr_once() {
    let seed = support::chaos_seed(DEFAULT_SEED);
    eprintln!(
        "chaos seed: {seed} (replay: SLUICE_CHAOS_SEED={seed} cargo test --test chaos_train)"
    );
    let dir = KeepOnPanic::new();
    let mut s = Scenario::new(&dir, "train chaos").await;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7a41_15ee);
    s.world.start().await;
    s.world.hub.set_chaos(support::bad_day(seed));
    let started = Instant::now();
    // Approved at once: 12 PRs, one failing its own test, and two that
    // fail only together. Some tests take a second.
    let names = [
        "one", "clash-a", "two", "bug-1", "three", "clash-b", "four", "five", "nine", "ten",
        "eleven", "twelve",
    ];
    for (i, name) in names.iter().enumerate() {
        let extra: &[(&str, &str)] = if i % 3 == 0 { &[("delay", "1")] } else { &[] };
        let n = s.open(name, extra).await;
        s.world
            .approve(n, if i % 2 == 0 { "alice" } else { "bob" })
            .await;
    }
    // Approved after the second kill, so the train still runs when the
    // person pushes...
    let mut later = Vec::new();
    for name in ["six", "seven", "thirteen"] {
        later.push(s.open(name, &[("delay", "1")]).await);
    }
    // ...and after the push, so cars are built on it.
    let mut last = Vec::new();
    for name in ["eight", "bug-2", "fourteen"] {
        last.push(s.open(name, &[]).await);
    }

    let mut next = Next::KillWhileACarIsTested;
    let mut lost_job = None;
    let deadline = started + Duration::from_secs(SETTLE_SECS);
    loop {
        let now = started.elapsed();
        next = match next {
            Next::KillWhileACarIsTested if s.a_car_is_tested().await => {
                lost_job = running_job(&s.world.dir);
                eprintln!(
                    "[chaos] {:>5.1}s SIGKILL while a car is tested",
                    now.as_secs_f64()
                );
                s.restart(Duration::from_millis(300)).await;
                // Its next landing's answer is held back: it is killed
                // while the answer is on its way.
                s.world.hub.inject_fault(Fault::SlowAnswer {
                    method: Some("PATCH".into()),
                    path_prefix: landing_path(),
                    delay: Duration::from_secs(3),
                    times: 1,
                });
                Next::KillAfterTheTargetMoved {
                    landings: s.landings(),
                }
            }
            Next::KillAfterTheTargetMoved { landings } if s.landings() > landings => {
                eprintln!(
                    "[chaos] {:>5.1}s SIGKILL after main moved",
                    now.as_secs_f64()
                );
                s.restart(Duration::from_millis(300)).await;
                for n in &later {
                    s.world.approve(*n, "alice").await;
                }
                Next::PushUnderTheTrain
            }
            Next::PushUnderTheTrain if s.a_car_is_tested().await => {
                s.push_to_main("person").await;
                for n in &last {
                    s.world.approve(*n, "bob").await;
                }
                Next::KillAt(now + Duration::from_millis(rng.gen_range(500..3000)))
            }
            Next::KillAt(at) if now >= at => {
                let down = Duration::from_millis(rng.gen_range(100..1500));
                eprintln!(
                    "[chaos] {:>5.1}s SIGKILL, down for {} ms",
                    now.as_secs_f64(),
                    down.as_millis()
                );
                s.restart(down).await;
                Next::Done
            }
            other => other,
        };
        if matches!(next, Next::Done) && s.done() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "[chaos] not settled after {SETTLE_SECS} s (seed {seed}), next fault {next:?}; \
                 logs in {}; queue {}; sluice's view {}; stuck:\n{}",
                s.world.dir.display(),
                s.world.get("/queue").await,
                s.world.get("/status").await,
                s.stuck()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.world.hub.clear_chaos();
    s.settle(started).await;
    s.assert_outcome().await;
    assert_eq!(s.world.starts, 4, "killed and started again three times");
    if let Some((workspace, pgid)) = lost_job {
        assert!(
            !alive(pgid),
            "the job running at the kill ({}) still runs",
            workspace.display()
        );
    }
    let stats = s.world.hub.chaos_stats();
    eprintln!("[chaos] {stats:?}");
    assert!(stats.deliveries_dropped > 0, "{stats:?}");
    assert!(stats.deliveries_duplicated > 0, "{stats:?}");
    assert!(stats.deliveries_reordered > 0, "{stats:?}");
    assert!(stats.api_errors > 0, "{stats:?}");
}

/// sluice killed right after GitHub moved main to its car, before it heard
/// the answer: the restarted sluice reads main, sees the car there (or
/// under a person's push made while sluice was down), records the landing
/// once, deletes its staging refs, and the train goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landing_killed_after_the_target_moved_is_settled_from_the_target() {
    let dir = KeepOnPanic::new();
    let mut s = Scenario::new(&dir, "killed after the move").await;
    s.world.start().await;
    let started = Instant::now();
    for (round, name) in ["one", "two"].into_iter().enumerate() {
        s.world.hub.inject_fault(Fault::SlowAnswer {
            method: Some("PATCH".into()),
            path_prefix: landing_path(),
            delay: Duration::from_secs(5),
            times: 1,
        });
        let n = s.open(name, &[]).await;
        s.world.approve(n, "alice").await;
        s.world
            .wait("main to move", SETTLE_SECS, |w| landings(w) > round)
            .await;
        s.world.kill();
        if round == 1 {
            s.push_to_main("person").await;
        }
        s.world.start().await;
        s.settle(started).await;
        // No later landing cleans up for it.
        s.assert_staging_refs_of_landed_cars_deleted().await;
    }
    for name in ["three", "four"] {
        let n = s.open(name, &[]).await;
        s.world.approve(n, "alice").await;
    }
    s.settle(started).await;
    s.assert_outcome().await;
}

/// sluice killed after it set a car's success status and before it moved
/// main: the restarted sluice finds main where the car was built and lands
/// it (once, at once: nothing was refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landing_killed_before_the_target_moved_lands_once_after_the_restart() {
    let dir = KeepOnPanic::new();
    let mut s = Scenario::new(&dir, "killed before the move").await;
    s.world.start().await;
    let started = Instant::now();
    for name in ["one", "two", "three"] {
        let n = s.open(name, &[("delay", "2")]).await;
        s.world.approve(n, "alice").await;
    }
    // Every car under test: whichever lands first has its status answer
    // held back (the status is set, the PATCH not sent yet).
    let cars = s.wait_for_tested_cars(3).await;
    for car in &cars {
        s.world.hub.inject_fault(Fault::SlowAnswer {
            method: Some("POST".into()),
            path_prefix: status_path(car),
            delay: Duration::from_secs(5),
            times: 1,
        });
    }
    s.world
        .wait("a car's success status", SETTLE_SECS, |w| {
            cars.iter().any(|car| {
                w.hub
                    .statuses(DEMO_REPO, car)
                    .iter()
                    .any(|st| st.state == "success")
            })
        })
        .await;
    s.world.kill();
    assert_eq!(s.landings(), 0, "main moved before the kill");
    s.world.start().await;
    s.settle(started).await;
    s.assert_outcome().await;
}

/// GitHub will not take a car's success status (502 through every retry):
/// sluice does not move main to a commit without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_car_whose_success_status_cannot_be_set_does_not_land() {
    let dir = KeepOnPanic::new();
    let mut s = Scenario::new(&dir, "status refused").await;
    s.world.start().await;
    let n = s.open("one", &[("delay", "2")]).await;
    s.world.approve(n, "alice").await;
    let car = s.wait_for_tested_cars(1).await.remove(0);
    // The first attempt and every retry of sluice's GitHub client.
    let attempts = sluice::config::Config::parse(
        &std::fs::read_to_string(&s.world.config).unwrap(),
        &s.world.config,
    )
    .unwrap()
    .github
    .max_retries
        + 1;
    s.world
        .hub
        .inject_fault(Fault::status("POST", &status_path(&car), 502, attempts));
    s.world
        .wait("the status writes to fail", SETTLE_SECS, |w| {
            w.hub.chaos_stats().faults_served >= u64::from(attempts)
        })
        .await;
    // sluice heard the last 502; what it does next is decided by now.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queue = s.world.get("/queue").await;
        if queue["trains"][0]["landing"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the landing never ended: {queue}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moves: Vec<_> = s
        .world
        .hub
        .branch_moves(DEMO_REPO)
        .into_iter()
        .filter(|m| m.branch == TARGET && m.pusher == MERGER)
        .collect();
    for m in &moves {
        assert!(
            m.successful_checks.iter().any(|c| c == "sluice"),
            "main moved to a car without its success status: {m:?}"
        );
    }
}

/// Every webhook delivery is lost: the re-read (every second) still finds
/// the PRs, their approvals and a person's push, and drains the train.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_webhook_lost_the_reconcile_still_drains_the_train() {
    let dir = KeepOnPanic::new();
    let mut s = Scenario::new(&dir, "no webhooks").await;
    s.world.start().await;
    s.world.hub.set_chaos(Chaos {
        drop: 1.0,
        ..Chaos::none(7)
    });
    let started = Instant::now();
    for name in ["one", "bug", "two", "three"] {
        let n = s.open(name, &[("delay", "1")]).await;
        s.world.approve(n, "bob").await;
    }
    s.world
        .wait("the first landing", SETTLE_SECS, |w| landings(w) > 0)
        .await;
    s.push_to_main("person").await;
    let n = s.open("four", &[]).await;
    s.world.approve(n, "alice").await;
    s.settle(started).await;
    s.assert_outcome().await;
    let stats = s.world.hub.chaos_stats();
    assert!(stats.deliveries_dropped > 0, "{stats:?}");
}
