//! The pure core: the queue logic as a function of (state, event, now)
//! returning actions. No I/O, no async runtime, no clock, no randomness:
//! everything here can be tested in microseconds and replayed from a log.

mod action;
mod event;
mod types;

pub use action::*;
pub use event::*;
pub use types::*;

use serde::{Deserialize, Serialize};

/// How one repository is gated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoPolicy {
    /// Approvals needed from reviewers with write access.
    pub required_approvals: u32,
    /// Builds running at once for this repository.
    pub max_concurrent_builds: usize,
    /// Times an infrastructure error is retried before it is reported.
    pub max_infra_retries: u32,
    /// PRs carrying one of these labels are tested first.
    pub priority_labels: Vec<String>,
    /// 0: serial mode (each PR merged by GitHub after its own test). More:
    /// a merge train of this speculation depth (`core/train.rs`).
    #[serde(default)]
    pub train_depth: usize,
    /// When a PR gets a test of its own (its head merged with the target).
    #[serde(default)]
    pub pr_tests: PrTests,
    /// How PRs land. Train mode: with `squash` or `rebase` GitHub cannot
    /// see a landed PR as merged, so sluice closes it
    /// (`Action::ClosePr`).
    #[serde(default)]
    pub merge_method: MergeMethod,
    /// Train mode: PRs per tested car, fixed or chosen by the planner
    /// (`core/planner.rs`); `Fixed(1)` tests every car (no batching).
    #[serde(default)]
    pub batch: planner::BatchSize,
    /// Cars of a failed batch tested at once while bisecting.
    #[serde(default = "one")]
    pub bisect_parallel: usize,
    /// A passing car behind a failed one lands, and the failure is recorded
    /// as a suspected flake (`core/batch.rs`).
    #[serde(default)]
    pub optimistic: bool,
    /// Train mode: a PR with this label goes to the front of its train (the
    /// cars behind are rebuilt on it).
    #[serde(default)]
    pub urgent_label: Option<String>,
    /// What lets an approved, passing PR land: its approval alone, or
    /// also a `/merge` comment from someone with write access.
    #[serde(default)]
    pub land_on: LandOn,
    /// The PR's author may `/retest` it without write access.
    #[serde(default = "yes")]
    pub author_may_retest: bool,
    /// Train mode: car commits get sluice's status (check run) while they
    /// are tested and when they fail, not only when they land (on with
    /// `github.check_runs`; each costs a GitHub call per car).
    #[serde(default)]
    pub car_statuses: bool,
    /// Train mode with batches: a train with nothing tested waits until no
    /// PR entered for this long (and at most ten times as long from the
    /// first) before it starts testing, so PRs approved together share
    /// batches (`train::gather_until`). 0: never waits.
    #[serde(default)]
    pub gather_ms: u64,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

/// What lets an approved, passing PR land.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandOn {
    /// Its approvals (a `/merge` changes nothing).
    #[default]
    Approval,
    /// Its approvals and a `/merge` from someone with write access.
    Command,
}

/// When a PR is tested on its own, apart from the train's cars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrTests {
    /// Every open PR, approved or not (early feedback for its author). In
    /// train mode a PR enters the train once its own test passed.
    #[default]
    BeforeApproval,
    /// Only approved PRs (saves the builds of PRs nobody approved yet). In
    /// train mode still the gate into the train.
    AfterApproval,
    /// Train mode only: no test of its own; approved PRs enter the train
    /// untested and are tested only in their cars.
    TrainOnly,
}

impl Default for RepoPolicy {
    fn default() -> Self {
        RepoPolicy {
            required_approvals: 1,
            max_concurrent_builds: 2,
            max_infra_retries: 2,
            priority_labels: Vec::new(),
            train_depth: 0,
            pr_tests: PrTests::BeforeApproval,
            merge_method: MergeMethod::Merge,
            batch: planner::BatchSize::Fixed(1),
            bisect_parallel: 1,
            optimistic: false,
            urgent_label: None,
            land_on: LandOn::Approval,
            author_may_retest: true,
            car_statuses: false,
            gather_ms: 0,
        }
    }
}

mod approval;
pub mod batch;
pub mod commands;
mod comments;
pub mod deps;
mod machine;
pub mod planner;
mod state;
pub mod text;
mod train;
mod views;

pub use approval::{Approval, approval, latest_per_reviewer};
pub use machine::{CHECKS_POLL_MS, CLOSED_MEMORY_MS, LAND_MOVED_RETRY_MS, MERGE_RETRY_MS};
pub use state::*;
pub use train::{
    Car, CarState, EjectKind, Ejection, GATHER_MAX_FACTOR, Landing, RetryKind, STAGING_PREFIX,
    STALL_MS, Stall, Train, gather_until, staging_ref,
};
pub use views::*;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
