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
//! every car on the new head.
//!
//! The rule: the target only ever moves to a car's sha, the car was built
//! on exactly the target's previous sha, it and every car ahead passed, and
//! it holds only PRs that were approved when it landed.

use super::action::*;
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Car {
    pub id: u64,
    pub pr: CandidatePr,
    pub title: String,
    pub state: CarState,
    /// Infrastructure errors of this car's tests.
    pub errors: u32,
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
    /// Its test failed while a car ahead was not decided yet: the failure
    /// may be that car's. Its PR is ejected once every car ahead passed; a
    /// car ahead failing rebuilds it instead.
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
}

/// Why a PR left the train by itself; it comes back with a new head or a
/// retest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ejection {
    pub head: Sha,
    pub reason: String,
    /// The failing car's results.
    pub link: Option<ResultKey>,
}

/// Where sluice's staging branches live (never a target).
pub const STAGING_PREFIX: &str = "sluice/";

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
            self.eject(repo, branch, car, reason, None, now, out);
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
            }
            outcome => {
                car.state = CarState::Failed {
                    sha,
                    build: build.clone(),
                    outcome,
                    detail: report.detail.clone(),
                };
            }
        }
        self.eject_decided_failure(repo, branch, now, out);
        true
    }

    /// If the first car that has not passed failed, every car ahead of it
    /// passed: the failure is its own PR's, which is ejected.
    fn eject_decided_failure(
        &mut self,
        repo: &RepoName,
        branch: &str,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(train) = self.train_mut(repo, branch) else {
            return;
        };
        let Some(index) = train
            .cars
            .iter()
            .position(|c| !matches!(c.state, CarState::Passed { .. }))
        else {
            return;
        };
        let car = &train.cars[index];
        let CarState::Failed {
            build,
            outcome,
            detail,
            ..
        } = &car.state
        else {
            return;
        };
        let ahead: Vec<u64> = train.cars[..index].iter().map(|c| c.pr.number).collect();
        let reason = text::car_failed(*outcome, branch, &ahead, detail);
        let link = car_results(repo, car, build);
        let id = car.id;
        self.eject(repo, branch, id, reason, Some(link), now, out);
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
        let Some(train) = self.train_mut(name, branch) else {
            return;
        };
        let Some(landing) = train.landing.take().filter(|l| l.to == sha) else {
            return;
        };
        let Some(last) = train.cars.iter().position(|c| c.id == landing.through) else {
            return;
        };
        let landed: Vec<Car> = train.cars.drain(..=last).collect();
        train.base = Some(sha.clone());
        train.blocked = None;
        let base = landing.from.clone();
        for car in &landed {
            let number = car.pr.number;
            let approvers = self.repos[name]
                .prs
                .get(&number)
                .map(|p| self.repos[name].approval(p).approvers)
                .unwrap_or_default();
            let build = match &car.state {
                CarState::Passed { build, .. } => build.clone(),
                _ => continue,
            };
            out.push(Action::Record(HistoryEntry::Merged {
                pr: PrKey {
                    repo: name.clone(),
                    number,
                },
                title: car.title.clone(),
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
        for car in landed {
            let key = PrKey {
                repo: name.clone(),
                number: car.pr.number,
            };
            let same_head = self
                .pr(&key)
                .is_some_and(|p| p.snapshot.head_sha == car.pr.head_sha);
            if same_head {
                // Merged: GitHub sees its head on the target (its webhook
                // says so too; closing now keeps it out of the train).
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
        if train.landing.take().is_none() {
            return;
        }
        if moved {
            out.push(Action::FetchBranch {
                repo: name.clone(),
                branch: branch.to_string(),
            });
        } else {
            train.blocked = Some((reason, now.plus_ms(super::MERGE_RETRY_MS)));
        }
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
        reason: String,
        link: Option<ResultKey>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(train) = self.train_mut(name, branch) else {
            return;
        };
        let Some(index) = train.cars.iter().position(|c| c.id == car) else {
            return;
        };
        let removed = train.cars.remove(index);
        let repo = self.repos.get_mut(name).expect("exists");
        let train = repo.trains.get_mut(branch).expect("found above");
        let stale = reset_from(train, index, &mut repo.next_car);
        if let Some(pr) = self
            .repos
            .get_mut(name)
            .and_then(|r| r.prs.get_mut(&removed.pr.number))
        {
            pr.ejected = Some(Ejection {
                head: removed.pr.head_sha.clone(),
                reason,
                link,
            });
            pr.in_train = false;
        }
        self.mark(name, Some(removed.pr.number));
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
        }
        // 2. PRs that changed leave; the cars behind them are rebuilt.
        let mut i = 0;
        while i < train.cars.len() {
            let car = &train.cars[i];
            let still = repo.prs.get(&car.pr.number).is_some_and(|pr| {
                pr.snapshot.head_sha == car.pr.head_sha
                    && pr.snapshot.base_ref == branch
                    && !pr.snapshot.draft
                    && repo.approval(pr).approved()
            });
            let landing = train
                .landing
                .as_ref()
                .is_some_and(|l| train.cars[i..].iter().any(|c| c.id == l.through));
            if still || landing {
                i += 1;
                continue;
            }
            let gone = train.cars.remove(i);
            if let CarState::Testing { build, .. } = gone.state {
                cancel.push(build);
            }
            cancel.extend(reset_from(&mut train, i, &mut repo.next_car));
            if let Some(pr) = repo.prs.get_mut(&gone.pr.number) {
                pr.in_train = false;
                repo.index.dirty.insert(gone.pr.number);
            }
        }
        // PRs that left may be ready again at once (a push back to a head
        // that passed).
        let dirty: Vec<u64> = repo.index.dirty.iter().copied().collect();
        for number in dirty {
            repo.refile(number);
        }
        // 3. Who enters: ready PRs in queue order.
        let entering: Vec<u64> = repo
            .index
            .ready
            .get(branch)
            .map(|keys| keys.iter().map(|k| k.3).collect())
            .unwrap_or_default();
        for number in entering {
            let pr = repo.prs.get_mut(&number).expect("indexed");
            pr.in_train = true;
            repo.index.dirty.insert(number);
            repo.next_car += 1;
            train.cars.push(Car {
                id: repo.next_car,
                pr: CandidatePr {
                    number,
                    head_sha: pr.snapshot.head_sha.clone(),
                    head_ref: pr.snapshot.head_ref.clone(),
                },
                title: pr.snapshot.title.clone(),
                state: CarState::Waiting,
                errors: 0,
            });
        }
        let dirty: Vec<u64> = repo.index.dirty.iter().copied().collect();
        for number in dirty {
            repo.refile(number);
        }
        // The cars stand on the train's base: the target's head, except
        // while a landing is in flight, when sluice may already have heard
        // the target at the landing car, and the cars behind it still hold
        // that car's PRs.
        if let (Some(_), Some(base)) = (&head, train.base.clone()) {
            self.advance(name, branch, &mut train, &base, depth, now, out);
        }
        for id in cancel {
            self.cancel_build(id, text::cancelled_car_rebuilt(), now, out);
        }
        // Positions changed: the PRs in the train say so in their status.
        let repo = self.repos.get_mut(name).expect("exists");
        let order: Vec<u64> = train.cars.iter().map(|c| c.pr.number).collect();
        if repo.index.train_order.get(branch) != Some(&order) {
            repo.index.dirty.extend(order.iter().copied());
            if order.is_empty() {
                repo.index.train_order.remove(branch);
            } else {
                repo.index.train_order.insert(branch.to_string(), order);
            }
        }
        if !train.cars.is_empty() || train.landing.is_some() || train.blocked.is_some() {
            repo.trains.insert(branch.to_string(), train);
        }
    }

    /// Builds, tests and lands what the train's state allows.
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &mut self,
        name: &RepoName,
        branch: &str,
        train: &mut Train,
        base: &Sha,
        depth: usize,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        // Build the commits of the first `depth` cars, each on the one ahead.
        for k in 0..train.cars.len().min(depth) {
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
                head: car.pr.head_sha.clone(),
                message: format!("{} (#{})", car.title, car.pr.number),
            });
        }
        // Land the longest passed prefix.
        let passed = train
            .cars
            .iter()
            .take_while(|c| matches!(c.state, CarState::Passed { .. }))
            .count();
        if passed > 0
            && train.landing.is_none()
            && train.blocked.as_ref().is_none_or(|(_, at)| *at <= now)
        {
            let last = &train.cars[passed - 1];
            let CarState::Passed { sha, build } = &last.state else {
                unreachable!("counted as passed");
            };
            train.blocked = None;
            train.landing = Some(Landing {
                from: base.clone(),
                to: sha.clone(),
                through: last.id,
            });
            let prs: Vec<u64> = train.cars[..passed].iter().map(|c| c.pr.number).collect();
            out.push(Action::Land {
                repo: name.clone(),
                branch: branch.to_string(),
                from: base.clone(),
                to: sha.clone(),
                through: last.id,
                description: text::car_passed(branch, &prs),
                link: car_results(name, last, build),
            });
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
        for k in 0..train.cars.len().min(depth) {
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
                sha,
                build: id.clone(),
            };
            self.launch(id, candidate, now, out);
            free -= 1;
        }
    }

    /// A PR's place in its train (0 = first), if it is in one.
    pub fn train_position(&self, key: &PrKey) -> Option<usize> {
        let repo = self.repos.get(&key.repo)?;
        let pr = repo.prs.get(&key.number)?;
        repo.trains
            .get(&pr.snapshot.base_ref)?
            .cars
            .iter()
            .position(|c| c.pr.number == key.number)
    }
}

/// Where the driver stored the results of a car's test `build`: under the
/// PR the car adds, as `Candidate::results_key` says for the car's
/// candidate (whose last PR it is).
fn car_results(repo: &RepoName, car: &Car, build: &BuildId) -> ResultKey {
    ResultKey {
        repo: repo.clone(),
        pr: car.pr.number,
        head: car.pr.head_sha.clone(),
        build: build.clone(),
    }
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
