//! The merge train of a target branch (policy `train_depth > 0`).
//!
//! Approved PRs whose own test passed enter their branch's train in queue
//! order. Car k is a commit sluice builds: the target at `base` merged with
//! the PRs of cars 0..=k in order (car k = car k-1 + PR k), on a staging ref
//! of its own. Up to `train_depth` cars are built and tested at once
//! (speculation). When a car passed and every car ahead of it passed, the
//! target is moved to it by a fast-forward (compare-and-swap): everything up
//! to it lands at once, as the exact commit that was tested. A car that
//! fails or does not build ejects its PR; the cars behind it are rebuilt
//! without it, the cars ahead go on. A PR that changes (push, approval,
//! close, base) leaves the train, and only the cars that held it are
//! rebuilt. A target that moves under the train (a person's push) rebuilds
//! every car on the new head. With `squash` or `rebase` GitHub cannot see
//! a landed PR as merged: sluice closes it (`Action::ClosePr`).
//!
//! The rule: the target only ever moves to a car's sha, the car was built
//! on exactly the target's previous sha, it and every car ahead passed, and
//! it holds only PRs that were approved when it landed.

use super::action::*;
use super::batch;
use super::planner;
use super::state::*;
use super::text;
use super::types::*;
use serde::{Deserialize, Serialize};

/// One branch's train.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Train {
    /// The target sha the first car is built on.
    pub base: Option<Sha>,
    /// In order; car k holds the PRs of cars 0..=k.
    pub cars: Vec<Car>,
    /// The landing asked for and not answered.
    pub landing: Option<Landing>,
    /// Why the last landing was refused (a required check, protection);
    /// retried at `retry_at`.
    pub blocked: Option<(String, Timestamp)>,
    /// The plan of the last settle and why (derived, not stored).
    #[serde(skip)]
    pub plan: Option<String>,
    /// Since when a car has passed with nothing landed (the watchdog).
    #[serde(default)]
    pub passed_since: Option<Timestamp>,
    /// What kind of wait `blocked` is (meaningful only while it is set).
    #[serde(default)]
    pub blocked_kind: Option<RetryKind>,
}

/// How long cars may pass with nothing landing before the watchdog says so.
pub const STALL_MS: u64 = 10 * 60 * 1000;

/// Something the watchdog reports: a train that looks stuck.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stall {
    pub repo: RepoName,
    pub branch: String,
    /// `passed_not_landing` or `car_overdue`.
    pub kind: &'static str,
    /// In words, for the log.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Car {
    pub id: u64,
    pub pr: CandidatePr,
    pub title: String,
    pub state: CarState,
    /// Infrastructure errors of this car's tests.
    pub errors: u32,
    /// When it is expected to land, in ms from the train's last settle
    /// (derived: recomputed at every settle, not stored).
    #[serde(skip)]
    pub eta_ms: Option<u64>,
    /// When its PR entered the train (the gathering wait, `gather_until`).
    #[serde(default)]
    pub entered_at: Timestamp,
}

/// The durations of a repository's recent tests (its own tests and cars
/// alike: the same command), whose mean is the train's ETA.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestDurations {
    recent: std::collections::VecDeque<u64>,
}

impl TestDurations {
    /// Long enough to smooth one odd run, short enough to follow a change.
    const WINDOW: usize = 20;

    pub fn record(&mut self, ms: u64) {
        if self.recent.len() == Self::WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(ms);
    }

    /// `None` until one test finished.
    pub fn mean_ms(&self) -> Option<u64> {
        let n = self.recent.len() as u64;
        (n > 0).then(|| self.recent.iter().sum::<u64>() / n)
    }
}

/// When each car is expected to land, in ms from `now`, if nothing fails:
/// a car lands when it and every car ahead passed; a car not yet tested
/// starts when a slot frees, that is when the car `slots` ahead of it
/// lands. `None` for every car until a test duration is known.
fn estimate(
    cars: &mut [Car],
    mean_ms: Option<u64>,
    slots: usize,
    builds: &std::collections::BTreeMap<BuildId, Build>,
    now: Timestamp,
) {
    let Some(mean) = mean_ms else {
        cars.iter_mut().for_each(|c| c.eta_ms = None);
        return;
    };
    let slots = slots.max(1);
    let mut etas: Vec<u64> = Vec::with_capacity(cars.len());
    for (k, car) in cars.iter_mut().enumerate() {
        let passed_at = match &car.state {
            CarState::Passed { .. } => 0,
            CarState::Testing { build, .. } => {
                let elapsed = builds
                    .get(build)
                    .map_or(0, |b| now.0.saturating_sub(b.started_at.0));
                mean.saturating_sub(elapsed)
            }
            _ => {
                let starts = if k >= slots { etas[k - slots] } else { 0 };
                starts + mean
            }
        };
        let ahead = etas.last().copied().unwrap_or(0);
        let eta = passed_at.max(ahead);
        etas.push(eta);
        car.eta_ms = Some(eta);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CarState {
    /// Not built: beyond the depth, or the car ahead has no commit yet.
    Waiting,
    /// Its commit is being built on `parent`.
    Building {
        parent: Sha,
    },
    /// Its commit exists; waiting for a build slot.
    Built {
        sha: Sha,
    },
    Testing {
        sha: Sha,
        build: BuildId,
    },
    Passed {
        sha: Sha,
        build: BuildId,
    },
    /// Its test failed; the culprit is found by bisection
    /// (`core/batch.rs`) before anything is ejected.
    Failed {
        sha: Sha,
        build: BuildId,
        outcome: Outcome,
        detail: String,
    },
}

impl CarState {
    pub fn sha(&self) -> Option<&Sha> {
        match self {
            CarState::Built { sha }
            | CarState::Testing { sha, .. }
            | CarState::Passed { sha, .. }
            | CarState::Failed { sha, .. } => Some(sha),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Landing {
    pub from: Sha,
    pub to: Sha,
    /// The last car landing (every car before it lands with it).
    pub through: u64,
    /// The cars landing, as they were when it was asked for: what landed
    /// if the target moves to `to`, whatever became of the train since.
    #[serde(default)]
    pub cars: Vec<Car>,
}

/// Why a PR left the train by itself; it comes back with a new head or a
/// retest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ejection {
    pub head: Sha,
    pub reason: String,
    /// The failing car's results.
    pub link: Option<ResultKey>,
    /// What went wrong, for machines (`reason` says it in words).
    #[serde(default)]
    pub kind: EjectKind,
    /// A conflict: the PRs ahead of it then. Its change may conflict with
    /// one of them only, so if one leaves the train without landing, it
    /// may enter again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<u64>,
}

/// Why a PR left the train by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EjectKind {
    /// Its car's test failed with its PR the culprit.
    #[default]
    Failed,
    /// Its car's test hit infrastructure errors past the retry limit.
    Error,
    /// It does not merge onto the car ahead.
    Conflict,
    /// A required check besides sluice's failed on its car.
    CheckFailed,
}

/// Why something is tried again (never a test failure: those eject).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryKind {
    /// The test was lost to infrastructure (an evicted pod, a deadline, an
    /// executor error): it runs again, a bounded number of times.
    Infrastructure,
    /// GitHub refused or failed the landing's ref update.
    LandRefused,
    /// The landing waits for required checks besides sluice's.
    ChecksPending,
}

impl RetryKind {
    /// Where it happened: `test` or `land`.
    pub fn stage(self) -> &'static str {
        match self {
            RetryKind::Infrastructure => "test",
            RetryKind::LandRefused | RetryKind::ChecksPending => "land",
        }
    }
}

impl EjectKind {
    /// Where in a car's life it happened: `build`, `test` or `checks`.
    pub fn stage(self) -> &'static str {
        match self {
            EjectKind::Conflict => "build",
            EjectKind::Failed | EjectKind::Error => "test",
            EjectKind::CheckFailed => "checks",
        }
    }
}

impl Train {
    /// What the statuses of the PRs in the train say besides the reason:
    /// each PR in order, with whether its car passed and its landing is
    /// held. A change here is a change of their statuses.
    pub(crate) fn status_facts(&self) -> Vec<(u64, bool)> {
        let held = self.blocked.is_some();
        let passed = batch::landing_point(&self.cars).map_or(0, |k| k + 1);
        self.cars
            .iter()
            .enumerate()
            .map(|(k, c)| (c.pr.number, held && k < passed))
            .collect()
    }
}

/// Where sluice's staging branches live (never a target).
pub const STAGING_PREFIX: &str = "sluice/";

/// How much longer than the quiet time gathering may last, at most.
pub const GATHER_MAX_FACTOR: u64 = 10;

/// Until when a train waits before its first tests: while batches are on
/// (`gather_ms` > 0, a batch plan), no car of it has been tested since it
/// was last empty, it holds fewer PRs than one round can test, and a PR
/// entered less than `gather_ms` ago (and the first less than ten times
/// that ago). PRs approved in one go (a burst of `/merge`, a restart, a
/// release day) then share batches instead of the first ones taking the
/// runners as singles one by one.
pub fn gather_until(
    cars: &[Car],
    policy: &crate::core::RepoPolicy,
    now: Timestamp,
) -> Option<Timestamp> {
    let largest = match policy.batch {
        planner::BatchSize::Fixed(b) => b,
        planner::BatchSize::Adaptive { max } => max,
    };
    // What one round can test at most: waiting for more gains nothing.
    let round = policy.train_depth.min(policy.max_concurrent_builds).max(1) * largest.max(1);
    if policy.gather_ms == 0 || largest <= 1 || cars.is_empty() || cars.len() >= round {
        return None;
    }
    let untested = cars.iter().all(|c| {
        matches!(
            c.state,
            CarState::Waiting | CarState::Building { .. } | CarState::Built { .. }
        )
    });
    if !untested {
        return None;
    }
    let first = cars.iter().map(|c| c.entered_at.0).min()?;
    let last = cars.iter().map(|c| c.entered_at.0).max()?;
    let until = (last + policy.gather_ms).min(first + GATHER_MAX_FACTOR * policy.gather_ms);
    (now.0 < until).then_some(Timestamp(until))
}

/// The staging ref of a car.
pub fn staging_ref(branch: &str, car: u64) -> String {
    format!("sluice/{branch}/{car}")
}

impl State {
    /// A car's commit was built.
    pub(crate) fn on_car_built(
        &mut self,
        repo: &RepoName,
        branch: &str,
        car: u64,
        parent: &Sha,
        sha: Sha,
    ) {
        if let Some(c) = self.car_mut(repo, branch, car)
            && matches!(&c.state, CarState::Building { parent: p } if p == parent)
        {
            c.state = CarState::Built { sha };
        }
    }

    /// The forge could not build a car (not a conflict): it is built again.
    pub(crate) fn on_car_build_failed(&mut self, repo: &RepoName, branch: &str, car: u64) {
        let Some(r) = self.repos.get_mut(repo) else {
            return;
        };
        let Some(train) = r.trains.get_mut(branch) else {
            return;
        };
        if let Some(index) = train
            .cars
            .iter()
            .position(|c| c.id == car && matches!(c.state, CarState::Building { .. }))
        {
            // Nothing behind it was built on it (it has no commit).
            reset_from(train, index, &mut r.next_car);
        }
    }

    /// After a restart: a car whose test the executor lost is tested again.
    pub(crate) fn car_build_lost(&mut self, repo: &RepoName, branch: &str, build: &BuildId) {
        if let Some(car) = self
            .repos
            .get_mut(repo)
            .and_then(|r| r.trains.get_mut(branch))
            .and_then(|t| {
                t.cars
                    .iter_mut()
                    .find(|c| matches!(&c.state, CarState::Testing { build: b, .. } if b == build))
            })
        {
            let sha = car.state.sha().cloned().expect("testing has a sha");
            car.state = CarState::Built { sha };
        }
    }

    /// The landings and car builds asked for before a restart, whose
    /// answers were lost with the process: (repo, branch, landing, cars
    /// building).
    pub fn train_work_in_flight(&self) -> Vec<(RepoName, String, Option<Landing>, Vec<u64>)> {
        let mut all = Vec::new();
        for (name, repo) in &self.repos {
            for (branch, train) in &repo.trains {
                let building: Vec<u64> = train
                    .cars
                    .iter()
                    .filter(|c| matches!(c.state, CarState::Building { .. }))
                    .map(|c| c.id)
                    .collect();
                if train.landing.is_some() || !building.is_empty() {
                    all.push((
                        name.clone(),
                        branch.clone(),
                        train.landing.clone(),
                        building,
                    ));
                }
            }
        }
        all
    }

    /// A car's PR does not merge onto the car ahead: it is ejected.
    pub(crate) fn on_car_conflict(
        &mut self,
        repo: &RepoName,
        branch: &str,
        car: u64,
        message: String,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let building = self
            .car_mut(repo, branch, car)
            .is_some_and(|c| matches!(c.state, CarState::Building { .. }));
        if building {
            let reason = text::car_conflict(branch, &message);
            self.eject(
                repo,
                branch,
                car,
                EjectKind::Conflict,
                reason,
                None,
                now,
                out,
            );
        }
    }

    /// A car's test ended (the build was the car's current one).
    pub(crate) fn on_car_finished(
        &mut self,
        repo: &RepoName,
        branch: &str,
        build: &BuildId,
        report: &JobReport,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        let max_retries = self.repos[repo].policy.max_infra_retries;
        let Some(train) = self
            .repos
            .get_mut(repo)
            .and_then(|r| r.trains.get_mut(branch))
        else {
            return false;
        };
        let Some(index) = train
            .cars
            .iter()
            .position(|c| matches!(&c.state, CarState::Testing { build: b, .. } if b == build))
        else {
            return false;
        };
        let car = &mut train.cars[index];
        let sha = car.state.sha().cloned().expect("testing has a sha");
        match report.outcome {
            Outcome::Passed => {
                car.state = CarState::Passed {
                    sha,
                    build: build.clone(),
                };
            }
            Outcome::Error if car.errors < max_retries => {
                car.errors += 1;
                car.state = CarState::Built { sha };
                let (attempt, of) = (car.errors + 1, max_retries + 1);
                out.push(Action::Record(HistoryEntry::Retried {
                    pr: PrKey {
                        repo: repo.clone(),
                        number: car.pr.number,
                    },
                    head: car.pr.head_sha.clone(),
                    stage: RetryKind::Infrastructure.stage().to_string(),
                    cause: RetryKind::Infrastructure,
                    message: text::retrying_car(attempt, of, &report.detail),
                    build: Some(build.clone()),
                    attempt: Some(attempt),
                    of: Some(of),
                    at: now,
                }));
            }
            outcome => {
                // Blamed once bisection found the culprit (`settle_train`).
                car.state = CarState::Failed {
                    sha: sha.clone(),
                    build: build.clone(),
                    outcome,
                    detail: report.detail.clone(),
                };
                let car_pr = car.pr.clone();
                let prs: Vec<u64> = train.cars[..=index].iter().map(|c| c.pr.number).collect();
                if self.repos[repo].policy.car_statuses {
                    let description = text::car_test_failed(outcome, &report.detail);
                    let state = match outcome {
                        Outcome::Error => CommitState::Error,
                        _ => CommitState::Failure,
                    };
                    out.push(Action::SetStatus {
                        repo: repo.clone(),
                        sha,
                        state,
                        summary: text::car_summary(&description, &prs),
                        description,
                        link: Some(car_results(repo, &car_pr, build)),
                    });
                }
            }
        }
        true
    }

    /// The target moved to a landing car: every PR up to it landed.
    pub(crate) fn on_landed(
        &mut self,
        name: &RepoName,
        branch: &str,
        sha: Sha,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(repo) = self.repos.get_mut(name) else {
            return;
        };
        let Some(train) = repo.trains.get_mut(branch) else {
            return;
        };
        let Some(landing) = train.landing.take().filter(|l| l.to == sha) else {
            return;
        };
        let mut stale = Vec::new();
        let landed: Vec<Car> = match train.cars.iter().position(|c| c.id == landing.through) {
            Some(last) => train.cars.drain(..=last).collect(),
            // Asked for before sluice remembered a landing's cars.
            None if landing.cars.is_empty() => return,
            None => {
                // The train changed under the landing (it must not): the
                // target is at the landing car all the same, so its PRs are
                // merged; what is left of the train is rebuilt on it.
                let landed = landing.cars.clone();
                let numbers: Vec<u64> = landed.iter().map(|c| c.pr.number).collect();
                let (gone, kept): (Vec<Car>, Vec<Car>) = std::mem::take(&mut train.cars)
                    .into_iter()
                    .partition(|c| numbers.contains(&c.pr.number));
                train.cars = kept;
                stale.extend(gone.iter().filter_map(|c| match &c.state {
                    CarState::Testing { build, .. } => Some(build.clone()),
                    _ => None,
                }));
                stale.extend(reset_from(train, 0, &mut repo.next_car));
                landed
            }
        };
        let Some(last) = landed.len().checked_sub(1) else {
            return;
        };
        train.base = Some(sha.clone());
        train.blocked = None;
        let base = landing.from.clone();
        // The test that landed them: the last car's (the cars before it in
        // its batch were covered by it, not tested on their own).
        let CarState::Passed { build: tested, .. } = landed[last].state.clone() else {
            return;
        };
        for car in &landed {
            if let CarState::Testing { build, .. } = &car.state {
                stale.push(build.clone());
            }
        }
        for id in stale {
            self.cancel_build(id, text::cancelled_car_landed(), now, out);
        }
        self.repos
            .get_mut(name)
            .expect("exists")
            .outcomes
            .extend_landed(landed.len());
        for car in &landed {
            let number = car.pr.number;
            let approvers = self.repos[name]
                .prs
                .get(&number)
                .map(|p| self.repos[name].approval(p).approvers)
                .unwrap_or_default();
            let build = match &car.state {
                CarState::Passed { build, .. } => build.clone(),
                _ => tested.clone(),
            };
            out.push(Action::Record(HistoryEntry::Merged {
                pr: PrKey {
                    repo: name.clone(),
                    number,
                },
                title: car.title.clone(),
                branch: branch.to_string(),
                pair: Pair {
                    head: car.pr.head_sha.clone(),
                    target: base.clone(),
                },
                build,
                approvers,
                merge_sha: sha.clone(),
                at: now,
            }));
        }
        // Our own landing moved the target: the cars behind were built on
        // it, so they stay as they are.
        let known = self.repos[name].branch_head(branch).cloned();
        if known.as_ref().is_none_or(|k| *k == base) {
            self.set_branch(name, branch.to_string(), sha.clone(), now);
        }
        let method = self.repos[name].policy.merge_method;
        let through_pr = landed[last].pr.clone();
        for car in landed {
            let key = PrKey {
                repo: name.clone(),
                number: car.pr.number,
            };
            let Some(same_head) = self
                .pr(&key)
                .map(|p| p.snapshot.head_sha == car.pr.head_sha)
            else {
                // Closed while its landing was in flight: its change landed
                // all the same, so what depends on it may land too.
                if let Some(repo) = self.repos.get_mut(name) {
                    repo.remember_merged(key.number);
                }
                continue;
            };
            if same_head {
                // Merged. With `merge` GitHub sees its head on the target
                // (its webhook says so too; closing now keeps it out of
                // the train); squashed or rebased, its head is not there,
                // so sluice closes it on GitHub.
                if method != MergeMethod::Merge
                    && let Some(landed) = car.state.sha()
                {
                    let link = match &car.state {
                        CarState::Passed { build, .. } => car_results(name, &car.pr, build),
                        _ => car_results(name, &through_pr, &tested),
                    };
                    out.push(Action::ClosePr {
                        pr: key.clone(),
                        head: car.pr.head_sha.clone(),
                        landed: landed.clone(),
                        branch: branch.to_string(),
                        method,
                        car: staging_ref(branch, car.id),
                        link,
                    });
                }
                if let Some(repo) = self.repos.get_mut(name) {
                    repo.remember_merged(key.number);
                }
                self.close_pr(&key, now, out);
            } else if let Some(pr) = self.pr_mut(&key) {
                // Pushed to while landing: what landed was tested; the new
                // head is tested and enters again.
                pr.in_train = false;
                self.mark(&key.repo, Some(key.number));
            }
        }
    }

    /// GitHub did not move the target. `moved`: it is no longer the sha the
    /// car was built on (a push raced the landing): nothing landed, the
    /// train is rebuilt when sluice learns the new head.
    pub(crate) fn on_land_refused(
        &mut self,
        name: &RepoName,
        branch: &str,
        moved: bool,
        reason: String,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(train) = self
            .repos
            .get_mut(name)
            .and_then(|r| r.trains.get_mut(branch))
        else {
            return;
        };
        let Some(landing) = train.landing.take() else {
            return;
        };
        if moved {
            out.push(Action::FetchBranch {
                repo: name.clone(),
                branch: branch.to_string(),
            });
            // Not asked for again from the same base until sluice learns
            // the new head (which rebuilds the train) or a while passed:
            // otherwise it would be refused again at once, a call each time.
            if self.repos[name].branch_head(branch) == Some(&landing.from) {
                let retry = (
                    RetryKind::LandRefused,
                    text::target_moved_under_landing(branch),
                    now.plus_ms(super::LAND_MOVED_RETRY_MS),
                );
                self.hold_landing(name, branch, retry, now, out);
            }
        } else {
            let why = text::merge_refused(&reason);
            let retry = (
                RetryKind::LandRefused,
                why,
                now.plus_ms(super::MERGE_RETRY_MS),
            );
            self.hold_landing(name, branch, retry, now, out);
        }
    }

    /// Required checks other than sluice's have not passed on the landing
    /// car yet: it is tried again in `CHECKS_POLL_MS`, and the PRs whose
    /// cars passed say what they wait for.
    pub(crate) fn on_land_waiting(
        &mut self,
        name: &RepoName,
        branch: &str,
        pending: &[String],
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(train) = self.train_mut(name, branch) else {
            return;
        };
        let Some(landing) = train.landing.take() else {
            return;
        };
        let car = staging_ref(branch, landing.through);
        let why = text::waiting_for_checks(pending, &car);
        let retry = (
            RetryKind::ChecksPending,
            why,
            now.plus_ms(super::CHECKS_POLL_MS),
        );
        self.hold_landing(name, branch, retry, now, out);
    }

    /// A required check other than sluice's failed on car `car` of the
    /// landing, and passed on every car ahead of it: that car failed, its
    /// PR is ejected; the cars ahead may still land.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_car_check_failed(
        &mut self,
        name: &RepoName,
        branch: &str,
        car: u64,
        context: &str,
        description: &str,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(train) = self.train_mut(name, branch) else {
            return;
        };
        // Any car of the landing: the first one the check fails on.
        let landing_holds = train.landing.as_ref().is_some_and(|l| {
            let through = train.cars.iter().position(|c| c.id == l.through);
            through.is_some_and(|last| train.cars[..=last].iter().any(|c| c.id == car))
        });
        if !landing_holds {
            return;
        }
        train.landing = None;
        // What held the landing was about this car: the cars ahead may land
        // at once.
        train.blocked = None;
        let reason =
            text::car_check_failed(branch, context, &staging_ref(branch, car), description);
        self.eject(
            name,
            branch,
            car,
            EjectKind::CheckFailed,
            reason,
            None,
            now,
            out,
        );
    }

    /// Records why the train's landing waits until `retry_at`; when the
    /// reason changes (not at every retry), the PRs in it say so in their
    /// status and the history records the retry, under the landing car's PR.
    fn hold_landing(
        &mut self,
        name: &RepoName,
        branch: &str,
        (kind, why, retry_at): (RetryKind, String, Timestamp),
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(repo) = self.repos.get_mut(name) else {
            return;
        };
        let Some(train) = repo.trains.get_mut(branch) else {
            return;
        };
        if train.blocked.as_ref().is_none_or(|(old, _)| *old != why) {
            repo.index
                .dirty
                .extend(train.cars.iter().map(|c| c.pr.number));
            let passed = batch::landing_point(&train.cars);
            if let Some(car) = passed.map(|k| &train.cars[k]) {
                out.push(Action::Record(HistoryEntry::Retried {
                    pr: PrKey {
                        repo: name.clone(),
                        number: car.pr.number,
                    },
                    head: car.pr.head_sha.clone(),
                    stage: kind.stage().to_string(),
                    cause: kind,
                    message: why.clone(),
                    build: None,
                    attempt: None,
                    of: None,
                    at: now,
                }));
            }
        }
        train.blocked = Some((why, retry_at));
        train.blocked_kind = Some(kind);
    }

    /// A person sets a branch's train running, paused or draining; the PRs
    /// on it say so in their status.
    pub(crate) fn on_set_branch_mode(
        &mut self,
        name: &RepoName,
        branch: String,
        mode: BranchMode,
        request: RequestId,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let repo = self.repos.get_mut(name).expect("known repository");
        let was = repo.branch_mode(&branch);
        if mode == BranchMode::Running {
            repo.branch_modes.remove(&branch);
        } else {
            repo.branch_modes.insert(branch.clone(), mode);
        }
        if was != mode {
            repo.touch_branch(&branch);
            out.push(Action::Record(HistoryEntry::BranchMode {
                repo: name.clone(),
                branch: branch.clone(),
                from: was,
                to: mode,
                at: now,
            }));
        }
        out.push(Action::Reply {
            request,
            answer: Answer::BranchMode {
                repo: name.clone(),
                branch,
                mode,
                was,
            },
        });
    }

    /// After a restart: the landing was never carried out; settle asks for
    /// it again (its cars passed and the target is still their base).
    pub(crate) fn on_landing_lost(&mut self, name: &RepoName, branch: &str) {
        if let Some(train) = self.train_mut(name, branch) {
            train.landing = None;
        }
    }

    fn train_mut(&mut self, repo: &RepoName, branch: &str) -> Option<&mut Train> {
        self.repos.get_mut(repo)?.trains.get_mut(branch)
    }

    fn car_mut(&mut self, repo: &RepoName, branch: &str, car: u64) -> Option<&mut Car> {
        self.repos
            .get_mut(repo)?
            .trains
            .get_mut(branch)?
            .cars
            .iter_mut()
            .find(|c| c.id == car)
    }

    /// Takes car `car`'s PR out of the train with `reason`; the cars behind
    /// it are rebuilt.
    #[allow(clippy::too_many_arguments)]
    fn eject(
        &mut self,
        name: &RepoName,
        branch: &str,
        car: u64,
        kind: EjectKind,
        reason: String,
        link: Option<ResultKey>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(repo) = self.repos.get_mut(name) else {
            return;
        };
        let ejected = Ejected { kind, reason, link };
        let Some(mut train) = repo.trains.remove(branch) else {
            return;
        };
        let stale = train
            .cars
            .iter()
            .position(|c| c.id == car)
            .map(|index| eject_car(name, repo, &mut train, index, ejected, now, out))
            .unwrap_or_default();
        repo.trains.insert(branch.to_string(), train);
        for id in stale {
            self.cancel_build(id, text::cancelled_car_rebuilt(), now, out);
        }
    }

    /// The train of every branch of `name`: PRs leave and enter, cars are
    /// built, tested and landed. Runs in `settle` before the PRs' own
    /// builds, which get the slots left.
    pub(crate) fn settle_trains(&mut self, name: &RepoName, now: Timestamp, out: &mut Vec<Action>) {
        let repo = &self.repos[name];
        let mut branches: std::collections::BTreeSet<String> =
            repo.trains.keys().cloned().collect();
        branches.extend(repo.index.ready.keys().cloned());
        for branch in branches {
            self.settle_train(name, &branch, now, out);
        }
    }

    fn settle_train(
        &mut self,
        name: &RepoName,
        branch: &str,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let head = self.repos[name].branch_head(branch).cloned();
        let depth = self.repos[name].policy.train_depth;
        let mut cancel: Vec<BuildId> = Vec::new();
        let repo = self.repos.get_mut(name).expect("exists");
        // Out of the map while it is worked on; put back at the end.
        let mut train = repo.trains.remove(branch).unwrap_or_default();
        // 1. The target moved under the train: every car is rebuilt on it.
        if train.landing.is_none() && train.base != head {
            cancel.extend(reset_from(&mut train, 0, &mut repo.next_car));
            train.base = head.clone();
            train.blocked = None;
        }
        // 2. PRs that changed leave; the cars behind them are rebuilt. An
        // urgent PR behind a car that is not urgent leaves too, to enter
        // again at the front, if the branch runs (else it could not).
        let landing_end = train
            .landing
            .as_ref()
            .and_then(|l| train.cars.iter().position(|c| c.id == l.through))
            .map_or(0, |k| k + 1);
        let mode = repo.branch_mode(branch);
        let mut i = 0;
        while i < train.cars.len() {
            let car = &train.cars[i];
            let misplaced = mode == BranchMode::Running
                && is_urgent(repo, car.pr.number)
                && urgent_place(repo, &train, held_end(&train, landing_end), car.pr.number) < i;
            let still = !misplaced
                && repo.prs.get(&car.pr.number).is_some_and(|pr| {
                    pr.snapshot.head_sha == car.pr.head_sha
                        && pr.snapshot.base_ref == branch
                        && !pr.snapshot.draft
                        && pr.asked.blocker(&repo.policy).is_none()
                        && repo.approval(pr).approved()
                });
            if still || i < landing_end {
                i += 1;
                continue;
            }
            leave_train(repo, &mut train, i, &mut cancel);
        }
        // Until no culprit leaves: a PR ejected below may be what a PR
        // behind it depends on, which must then leave and wait too.
        let mut planned;
        // Dependencies neither open nor known merged or not: asked about.
        let mut unheard: Vec<PrKey> = Vec::new();
        loop {
            // A PR whose dependency is no longer ahead of it (ejected, pushed
            // to, closed unmerged) leaves too: it never lands before it.
            loop {
                let unmet = (landing_end..train.cars.len()).find(|&k| {
                    dependency_blocker(
                        &self.repos,
                        name,
                        branch,
                        &train.cars[..k],
                        train.cars[k].pr.number,
                    )
                    .is_some()
                });
                let Some(k) = unmet else { break };
                let repo = self.repos.get_mut(name).expect("exists");
                leave_train(repo, &mut train, k, &mut cancel);
            }
            // PRs that left may be ready again at once (a push back to a head
            // that passed).
            let repo = self.repos.get_mut(name).expect("exists");
            let dirty: Vec<u64> = repo.index.dirty.iter().copied().collect();
            for number in dirty {
                repo.refile(number);
            }
            // 3. Who enters.
            let held_end = held_end(&train, landing_end);
            self.enter_ready(
                name,
                branch,
                &mut train,
                mode,
                held_end,
                now,
                &mut cancel,
                &mut unheard,
            );
            let repo = self.repos.get_mut(name).expect("exists");
            let dirty: Vec<u64> = repo.index.dirty.iter().copied().collect();
            for number in dirty {
                repo.refile(number);
            }
            // 4. Failures: suspected flakes (optimistic), culprits out, and the
            // tests behind a failure stopped.
            let ejected;
            (planned, ejected) =
                self.eject_culprits(name, branch, &mut train, landing_end, now, out, &mut cancel);
            if !ejected {
                break;
            }
        }
        // A failure inside a landing in flight dooms nothing: the landing
        // car passed, and it holds that car's PRs.
        if !planned.plan.optimistic {
            for k in batch::doomed(&train.cars[landing_end.min(train.cars.len())..]) {
                let k = landing_end + k;
                let car = &mut train.cars[k];
                if let CarState::Testing { sha, build } = car.state.clone() {
                    cancel.push(build);
                    car.state = CarState::Built { sha };
                }
            }
        }
        train.plan = Some(planned.reason.clone());
        self.ask_about_dependencies(name, unheard, now, out);
        // The cars stand on the train's base: the target's head, except
        // while a landing is in flight, when sluice may already have heard
        // the target at the landing car, and the cars behind it still hold
        // that car's PRs. Paused: nothing is built, tested or landed.
        // Stopped tests first: their runners are free for what starts now.
        for id in cancel {
            self.cancel_build(id, text::cancelled_car_rebuilt(), now, out);
        }
        if let (Some(_), Some(base), false) =
            (&head, train.base.clone(), mode == BranchMode::Paused)
        {
            self.advance(name, branch, &mut train, &base, &planned.plan, now, out);
        }
        // Positions changed: the PRs in the train say so in their status.
        let repo = self.repos.get_mut(name).expect("exists");
        let order = train.status_facts();
        if repo.index.train_order.get(branch) != Some(&order) {
            repo.index.dirty.extend(order.iter().map(|(n, _)| *n));
            if order.is_empty() {
                repo.index.train_order.remove(branch);
            } else {
                repo.index.train_order.insert(branch.to_string(), order);
            }
        }
        let slots = depth.min(repo.policy.max_concurrent_builds);
        estimate(
            &mut train.cars,
            repo.test_durations.mean_ms(),
            slots,
            &self.builds,
            now,
        );
        // The watchdog's clock: since when a passed car waits to land.
        match batch::landing_point(&train.cars) {
            Some(_) => {
                train.passed_since.get_or_insert(now);
            }
            None => train.passed_since = None,
        }
        if !train.cars.is_empty() || train.landing.is_some() || train.blocked.is_some() {
            repo.trains.insert(branch.to_string(), train);
        }
    }

    /// Ready PRs enter `train` in queue order (none unless `mode` is
    /// running), each behind what it depends on; one whose dependency
    /// enters later in the same pass enters on the next pass.
    #[allow(clippy::too_many_arguments)]
    fn enter_ready(
        &mut self,
        name: &RepoName,
        branch: &str,
        train: &mut Train,
        mode: BranchMode,
        landing_end: usize,
        now: Timestamp,
        cancel: &mut Vec<BuildId>,
        unheard: &mut Vec<PrKey>,
    ) {
        let repo = &self.repos[name];
        let mut entering: Vec<u64> = match mode {
            BranchMode::Running => repo
                .index
                .ready
                .get(branch)
                .map(|keys| keys.iter().map(|k| k.3).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        loop {
            let before = entering.len();
            let mut waiting = Vec::new();
            for number in std::mem::take(&mut entering) {
                let repo = &self.repos[name];
                // Urgent: in front of every car that is neither urgent nor
                // landing; the cars behind it are rebuilt on it.
                let at = if is_urgent(repo, number) {
                    urgent_place(repo, train, landing_end, number)
                } else {
                    train.cars.len()
                };
                let blocked =
                    dependency_blocker(&self.repos, name, branch, &train.cars[..at], number);
                let repo = self.repos.get_mut(name).expect("exists");
                let pr = repo.prs.get_mut(&number).expect("indexed");
                if pr.waits_on_dependency != blocked {
                    pr.waits_on_dependency = blocked.clone();
                    repo.index.dirty.insert(number);
                }
                if blocked.is_some() {
                    unheard.extend(unheard_dependencies(&self.repos, name, number));
                    waiting.push(number);
                    continue;
                }
                pr.in_train = true;
                repo.index.dirty.insert(number);
                repo.next_car += 1;
                train.cars.insert(
                    at,
                    Car {
                        id: repo.next_car,
                        pr: CandidatePr {
                            number,
                            head_sha: pr.snapshot.head_sha.clone(),
                            head_ref: pr.snapshot.head_ref.clone(),
                        },
                        title: pr.snapshot.title.clone(),
                        state: CarState::Waiting,
                        errors: 0,
                        eta_ms: None,
                        entered_at: now,
                    },
                );
                // The cars behind it are rebuilt on it, with ids after its
                // own (ids grow along a train).
                cancel.extend(reset_from(train, at + 1, &mut repo.next_car));
            }
            if waiting.is_empty() || waiting.len() == before {
                break;
            }
            entering = waiting;
        }
    }

    /// Asks GitHub what became of dependencies whose fate sluice does not
    /// know, each at most once per `MERGE_RETRY_MS` (the answer is a
    /// `PrClosed`, `PrClosedUnmerged` or `PrUpdated`).
    fn ask_about_dependencies(
        &mut self,
        name: &RepoName,
        unheard: Vec<PrKey>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let reads = &mut self.repos.get_mut(name).expect("exists").dependency_reads;
        let due = |at: &Timestamp| now.0 >= at.0.saturating_add(super::MERGE_RETRY_MS);
        reads.retain(|_, at| !due(at));
        for dep in unheard {
            if !reads.contains_key(&dep) {
                reads.insert(dep.clone(), now);
                out.push(Action::FetchPr { pr: dep });
            }
        }
    }

    /// Suspected flakes (optimistic) are covered and every culprit behind
    /// the landing in flight (its first `landing_end` cars, which passed
    /// with the car they land through) is ejected; returns the plan and
    /// whether any PR was ejected.
    #[allow(clippy::too_many_arguments)]
    fn eject_culprits(
        &mut self,
        name: &RepoName,
        branch: &str,
        train: &mut Train,
        landing_end: usize,
        now: Timestamp,
        out: &mut Vec<Action>,
        cancel: &mut Vec<BuildId>,
    ) -> (planner::Planned, bool) {
        let mut ejected_any = false;
        let planned = self.plan_for(name, train);
        let repo = self.repos.get_mut(name).expect("exists");
        if planned.plan.optimistic {
            for k in batch::suspected_flakes(&train.cars) {
                let car = &mut train.cars[k];
                let CarState::Failed { sha, build, .. } = car.state.clone() else {
                    continue;
                };
                out.push(Action::Record(HistoryEntry::SuspectedFlake {
                    pr: PrKey {
                        repo: name.clone(),
                        number: car.pr.number,
                    },
                    head: car.pr.head_sha.clone(),
                    build,
                    car: sha.clone(),
                    at: now,
                }));
                // Covered by the passing car behind it.
                car.state = CarState::Built { sha };
            }
        }
        while let Some(k) = batch::culprit(&train.cars[landing_end..], planned.plan.optimistic)
            .map(|k| landing_end + k)
        {
            let CarState::Failed {
                build,
                outcome,
                detail,
                ..
            } = train.cars[k].state.clone()
            else {
                unreachable!("a culprit failed");
            };
            let ahead: Vec<u64> = train.cars[..k].iter().map(|c| c.pr.number).collect();
            let reason = text::car_failed(outcome, branch, &ahead, &detail);
            let link = car_results(name, &train.cars[k].pr, &build);
            repo.outcomes.record(true);
            let kind = match outcome {
                Outcome::Error => EjectKind::Error,
                _ => EjectKind::Failed,
            };
            let ejected = Ejected {
                kind,
                reason,
                link: Some(link),
            };
            ejected_any = true;
            cancel.extend(eject_car(name, repo, train, k, ejected, now, out));
        }
        (planned, ejected_any)
    }

    /// Builds, tests and lands what the train's state allows.
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &mut self,
        name: &RepoName,
        branch: &str,
        train: &mut Train,
        base: &Sha,
        plan: &batch::Plan,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        // Build the commits of every car a planned test may cover, each on
        // the one ahead.
        for k in 0..train.cars.len().min(plan.built_window()) {
            if train.cars[k].state != CarState::Waiting {
                continue;
            }
            let parent = match k {
                0 => base.clone(),
                _ => match train.cars[k - 1].state.sha() {
                    Some(sha) => sha.clone(),
                    None => break,
                },
            };
            let car = &mut train.cars[k];
            car.state = CarState::Building {
                parent: parent.clone(),
            };
            out.push(Action::BuildCar {
                repo: name.clone(),
                branch: branch.to_string(),
                car: car.id,
                staging_ref: staging_ref(branch, car.id),
                parent,
                pr: car.pr.number,
                head: car.pr.head_sha.clone(),
                message: format!("{} (#{})", car.title, car.pr.number),
            });
        }
        // Land through the deepest passed car with no failure ahead of it
        // (it holds every PR ahead of it; it is what was tested).
        let passed = batch::landing_point(&train.cars).map_or(0, |k| k + 1);
        if passed > 0
            && train.landing.is_none()
            && train.blocked.as_ref().is_none_or(|(_, at)| *at <= now)
        {
            let last = &train.cars[passed - 1];
            let CarState::Passed { sha, build } = &last.state else {
                unreachable!("the landing point passed");
            };
            // `blocked` stays until an answer replaces it, so a retry that
            // meets the same reason changes no status.
            train.landing = Some(Landing {
                from: base.clone(),
                to: sha.clone(),
                through: last.id,
                cars: train.cars[..passed].to_vec(),
            });
            let prs: Vec<u64> = train.cars[..passed].iter().map(|c| c.pr.number).collect();
            let cars = train.cars[..passed]
                .iter()
                .filter_map(|c| Some((c.id, c.state.sha()?.clone())))
                .collect();
            out.push(Action::Land {
                repo: name.clone(),
                branch: branch.to_string(),
                from: base.clone(),
                to: sha.clone(),
                through: last.id,
                cars,
                description: text::car_passed(branch, &prs),
                link: car_results(name, &last.pr, build),
            });
        }
        // A train with nothing tested yet gathers the PRs entering together
        // first, so that they share batches.
        if let Some(until) = gather_until(&train.cars, &self.repos[name].policy, now) {
            out.push(Action::WakeAt { at: until });
            return;
        }
        // Test built cars, first in line first, within the build budget.
        let running = self
            .builds
            .values()
            .filter(|b| &b.candidate.repo == name)
            .count();
        let mut free = self.repos[name]
            .policy
            .max_concurrent_builds
            .saturating_sub(running);
        for k in batch::tests_to_start(&train.cars, plan) {
            if free == 0 {
                break;
            }
            let CarState::Built { sha } = &train.cars[k].state else {
                continue;
            };
            let sha = sha.clone();
            let candidate = Candidate {
                repo: name.clone(),
                target_branch: branch.to_string(),
                target_sha: base.clone(),
                prs: train.cars[..=k].iter().map(|c| c.pr.clone()).collect(),
                car: Some(sha.clone()),
            };
            let id = self.new_build_id();
            train.cars[k].state = CarState::Testing {
                sha: sha.clone(),
                build: id.clone(),
            };
            if self.repos[name].policy.car_statuses {
                let prs: Vec<u64> = candidate.prs.iter().map(|p| p.number).collect();
                let description = text::car_testing(branch, &prs);
                out.push(Action::SetStatus {
                    repo: name.clone(),
                    sha,
                    state: CommitState::Pending,
                    summary: text::car_summary(&description, &prs),
                    description,
                    link: Some(car_results(name, &train.cars[k].pr, &id)),
                });
            }
            self.launch(id, candidate, now, out);
            free -= 1;
        }
    }

    /// The plan of `train` now: the configuration's, or the planner's from
    /// the repository's recent outcomes and build budget (the whole budget:
    /// PRs' own tests come and go, and `advance` starts only what is free).
    fn plan_for(&self, name: &RepoName, train: &Train) -> planner::Planned {
        let repo = &self.repos[name];
        let policy = &repo.policy;
        planner::plan(
            policy.batch,
            policy.train_depth,
            policy.bisect_parallel,
            policy.optimistic,
            &repo.outcomes,
            train.cars.len(),
            policy.max_concurrent_builds,
        )
    }

    /// What looks stuck at `now`: cars passed for more than [`STALL_MS`]
    /// with nothing landed, and car tests running for more than three times
    /// the repository's mean test duration (at least [`STALL_MS`]).
    pub fn stalls(&self, now: Timestamp) -> Vec<Stall> {
        let mut all = Vec::new();
        for (name, repo) in &self.repos {
            let overdue_ms = repo
                .test_durations
                .mean_ms()
                .map_or(STALL_MS, |m| (3 * m).max(STALL_MS));
            for (branch, train) in &repo.trains {
                if let Some(since) = train.passed_since
                    && now.0.saturating_sub(since.0) > STALL_MS
                {
                    let why = train.blocked.as_ref().map_or("no reason known", |(w, _)| w);
                    all.push(Stall {
                        repo: name.clone(),
                        branch: branch.clone(),
                        kind: "passed_not_landing",
                        message: format!(
                            "cars have passed for {} min and nothing landed: {why}",
                            now.0.saturating_sub(since.0) / 60_000
                        ),
                    });
                }
                for car in &train.cars {
                    if let CarState::Testing { build, .. } = &car.state
                        && let Some(b) = self.builds.get(build)
                        && now.0.saturating_sub(b.started_at.0) > overdue_ms
                    {
                        all.push(Stall {
                            repo: name.clone(),
                            branch: branch.clone(),
                            kind: "car_overdue",
                            message: format!(
                                "car {} (#{}) has tested for {} min with no result",
                                staging_ref(branch, car.id),
                                car.pr.number,
                                now.0.saturating_sub(b.started_at.0) / 60_000
                            ),
                        });
                    }
                }
            }
        }
        all
    }

    /// A PR's place in its train (0 = first), if it is in one.
    pub fn train_position(&self, key: &PrKey) -> Option<usize> {
        let repo = self.repos.get(&key.repo)?;
        repo.train_spot(repo.prs.get(&key.number)?)
            .map(|(at, _)| at)
    }
}

impl RepoState {
    /// Whether `branch`'s train runs, is paused or drains.
    pub fn branch_mode(&self, branch: &str) -> BranchMode {
        self.branch_modes.get(branch).copied().unwrap_or_default()
    }

    /// Why the PR's car passed but does not land yet, if so: the train's
    /// landing is held and the PR is in its passed prefix.
    pub(crate) fn landing_held(&self, pr: &Pr) -> Option<&str> {
        let train = self.trains.get(&pr.snapshot.base_ref)?;
        let (why, _) = train.blocked.as_ref()?;
        train
            .status_facts()
            .contains(&(pr.snapshot.key.number, true))
            .then_some(why.as_str())
    }

    /// A PR's place in its branch's train (0 = first) and when it is
    /// expected to land (ms from the train's last settle), if it is in one.
    /// What is being tried again for `pr` in its train, if anything: its
    /// car's test after an infrastructure error, or the landing that holds
    /// its car.
    pub(crate) fn train_retry(&self, pr: &Pr) -> Option<(RetryKind, String)> {
        let train = self.trains.get(&pr.snapshot.base_ref)?;
        let at = train
            .cars
            .iter()
            .position(|c| c.pr.number == pr.snapshot.key.number)?;
        let held = batch::landing_point(&train.cars).is_some_and(|last| at <= last);
        if let (true, Some((why, _))) = (held, &train.blocked) {
            let kind = train.blocked_kind.unwrap_or(RetryKind::LandRefused);
            return Some((kind, why.clone()));
        }
        let car = &train.cars[at];
        let unfinished = matches!(car.state, CarState::Built { .. } | CarState::Testing { .. });
        (car.errors > 0 && unfinished).then(|| {
            let of = self.policy.max_infra_retries + 1;
            (
                RetryKind::Infrastructure,
                text::retrying(car.errors + 1, of),
            )
        })
    }

    pub(crate) fn train_spot(&self, pr: &Pr) -> Option<(usize, Option<u64>)> {
        let cars = &self.trains.get(&pr.snapshot.base_ref)?.cars;
        let at = cars
            .iter()
            .position(|c| c.pr.number == pr.snapshot.key.number)?;
        Some((at, cars[at].eta_ms))
    }
}

/// Where the driver stores a car's test results: under the car's own PR
/// (`Candidate::results_pr`).
fn car_results(repo: &RepoName, pr: &CandidatePr, build: &BuildId) -> ResultKey {
    ResultKey {
        repo: repo.clone(),
        pr: pr.number,
        head: pr.head_sha.clone(),
        build: build.clone(),
    }
}

/// Takes car `index` out of `train` (its PR changed, or must re-enter
/// elsewhere); the cars behind it are rebuilt.
fn leave_train(repo: &mut RepoState, train: &mut Train, index: usize, cancel: &mut Vec<BuildId>) {
    let gone = train.cars.remove(index);
    if let CarState::Testing { build, .. } = gone.state {
        cancel.push(build);
    }
    cancel.extend(reset_from(train, index, &mut repo.next_car));
    if let Some(pr) = repo.prs.get_mut(&gone.pr.number) {
        pr.in_train = false;
        repo.index.dirty.insert(gone.pr.number);
    }
    forgive_conflicts_with(repo, gone.pr.number);
}

/// PR `gone` left the train without landing: the PRs that left because
/// they conflicted with a car holding it may enter again (each comes back
/// only when a PR ahead of it leaves, so there is no loop).
fn forgive_conflicts_with(repo: &mut RepoState, gone: u64) {
    for (number, pr) in repo.prs.iter_mut() {
        let forgiven = pr.ejected.as_ref().is_some_and(|e| {
            e.kind == EjectKind::Conflict
                && e.head == pr.snapshot.head_sha
                && e.ahead.contains(&gone)
        });
        if forgiven {
            pr.ejected = None;
            repo.index.dirty.insert(*number);
        }
    }
}

/// Where the cars an urgent PR may not pass end: those of the landing in
/// flight (`landing_end`), or, while a landing is held (a required check
/// pending, a refusal), the passed cars it waits to land.
fn held_end(train: &Train, landing_end: usize) -> usize {
    match (&train.landing, &train.blocked) {
        (None, Some(_)) => batch::landing_point(&train.cars).map_or(0, |k| k + 1),
        _ => landing_end,
    }
}

/// Where urgent PR `number` belongs: in front of the first car that is not
/// urgent, from `landing_end` on and behind every car holding a PR it
/// depends on (so urgent PRs behind a shared dependency keep their order
/// instead of passing each other on every settle).
fn urgent_place(repo: &RepoState, train: &Train, landing_end: usize, number: u64) -> usize {
    let behind_deps = repo.prs.get(&number).map_or(0, |pr| {
        let own = &pr.snapshot.key.repo;
        train
            .cars
            .iter()
            .rposition(|c| {
                pr.snapshot
                    .depends_on
                    .iter()
                    .any(|d| d.repo == *own && d.number == c.pr.number)
            })
            .map_or(0, |k| k + 1)
    });
    (landing_end.max(behind_deps)..train.cars.len())
        .find(|&k| train.cars[k].pr.number != number && !is_urgent(repo, train.cars[k].pr.number))
        .unwrap_or(train.cars.len())
}

/// Why PR `number` of `name` may not stand behind the cars `ahead` of the
/// train for `branch` (its Depends-On lines), or `None`.
fn dependency_blocker(
    repos: &std::collections::BTreeMap<RepoName, RepoState>,
    name: &RepoName,
    branch: &str,
    ahead: &[Car],
    number: u64,
) -> Option<String> {
    use super::deps::{self, Standing};
    let repo = repos.get(name)?;
    let pr = repo.prs.get(&number)?;
    let depends_on = &pr.snapshot.depends_on;
    if depends_on.is_empty() {
        return None;
    }
    // Open PRs of this repository only: a closed one ends every cycle.
    let own_deps = |n: u64| -> Vec<u64> {
        repo.prs
            .get(&n)
            .map(|p| {
                p.snapshot
                    .depends_on
                    .iter()
                    .filter(|d| d.repo == *name && repo.prs.contains_key(&d.number))
                    .map(|d| d.number)
                    .collect()
            })
            .unwrap_or_default()
    };
    let cycle = deps::find_cycle(number, own_deps);
    // In a car ahead is ahead, whatever its base says now: a PR retargeted
    // while its landing is in flight still lands here with it (if the
    // landing fails, it leaves, and so does what depends on it).
    let in_car_ahead =
        |dep: &PrKey| dep.repo == *name && ahead.iter().any(|c| c.pr.number == dep.number);
    let standing = |dep: &PrKey| match repos.get(&dep.repo) {
        None => Standing::Unknown,
        Some(_) if in_car_ahead(dep) => Standing::Ahead,
        Some(r) => match r.prs.get(&dep.number) {
            Some(p) if dep.repo == *name && p.snapshot.base_ref == branch => Standing::NotAhead,
            Some(_) => Standing::OpenElsewhere,
            None if r.closed_unmerged.contains(&dep.number) => Standing::ClosedUnmerged,
            None if r.closed_merged.contains(&dep.number) => Standing::Done,
            None => Standing::Unheard,
        },
    };
    deps::blocker(&pr.snapshot.key, depends_on, standing, cycle.as_deref())
}

/// The dependencies of PR `number` of `name` that are in a repository
/// sluice gates but neither open nor known merged or closed unmerged.
fn unheard_dependencies(
    repos: &std::collections::BTreeMap<RepoName, RepoState>,
    name: &RepoName,
    number: u64,
) -> Vec<PrKey> {
    let Some(pr) = repos.get(name).and_then(|r| r.prs.get(&number)) else {
        return Vec::new();
    };
    pr.snapshot
        .depends_on
        .iter()
        .filter(|dep| {
            repos.get(&dep.repo).is_some_and(|r| {
                !r.prs.contains_key(&dep.number)
                    && !r.closed_merged.contains(&dep.number)
                    && !r.closed_unmerged.contains(&dep.number)
            })
        })
        .cloned()
        .collect()
}

/// Whether PR `number` carries the repository's urgent label.
fn is_urgent(repo: &RepoState, number: u64) -> bool {
    let Some(label) = &repo.policy.urgent_label else {
        return false;
    };
    repo.prs.get(&number).is_some_and(|pr| pr.has_label(label))
}

/// Takes car `index`'s PR out of `train` with `reason` (it does not come
/// back by itself with this head); the cars behind it are rebuilt. Returns
/// the builds to cancel.
/// What an ejection says: its kind, in words, and the failing build.
struct Ejected {
    kind: EjectKind,
    reason: String,
    link: Option<ResultKey>,
}

fn eject_car(
    name: &RepoName,
    repo: &mut RepoState,
    train: &mut Train,
    index: usize,
    ejected: Ejected,
    now: Timestamp,
    out: &mut Vec<Action>,
) -> Vec<BuildId> {
    let ahead: Vec<u64> = match ejected.kind {
        EjectKind::Conflict => train.cars[..index].iter().map(|c| c.pr.number).collect(),
        _ => Vec::new(),
    };
    let removed = train.cars.remove(index);
    let mut stale = Vec::new();
    if let CarState::Testing { build, .. } = &removed.state {
        stale.push(build.clone());
    }
    stale.extend(reset_from(train, index, &mut repo.next_car));
    out.push(Action::Record(HistoryEntry::Ejected {
        pr: PrKey {
            repo: name.clone(),
            number: removed.pr.number,
        },
        head: removed.pr.head_sha.clone(),
        stage: ejected.kind.stage().to_string(),
        cause: ejected.kind,
        message: ejected.reason.clone(),
        build: ejected.link.as_ref().map(|l| l.build.clone()),
        at: now,
    }));
    if let Some(pr) = repo.prs.get_mut(&removed.pr.number) {
        pr.ejected = Some(Ejection {
            head: removed.pr.head_sha.clone(),
            reason: ejected.reason,
            link: ejected.link,
            kind: ejected.kind,
            ahead,
        });
        pr.in_train = false;
    }
    repo.index.dirty.insert(removed.pr.number);
    forgive_conflicts_with(repo, removed.pr.number);
    stale
}

/// Cars from `index` on go back to waiting (their commits held what is
/// gone); returns the builds to cancel.
///
/// Each gets a new id (so a new staging ref): an answer about its old
/// commit, arriving late, matches no car. Waiting ones too, so ids keep
/// growing along the train (the staging refs of a landing are deleted as
/// every id up to its last car).
fn reset_from(train: &mut Train, index: usize, next_car: &mut u64) -> Vec<BuildId> {
    let mut cancel = Vec::new();
    for car in train.cars.iter_mut().skip(index) {
        if let CarState::Testing { build, .. } = &car.state {
            cancel.push(build.clone());
        }
        *next_car += 1;
        car.id = *next_car;
        car.state = CarState::Waiting;
        car.errors = 0;
    }
    cancel
}
