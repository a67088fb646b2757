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
    /// Train mode: each PR is tested on its own first (early feedback, and
    /// the gate into the train). Off: PRs enter the train untested.
    #[serde(default = "yes")]
    pub early_test: bool,
    /// How PRs land. Train mode: with `squash` or `rebase` GitHub cannot
    /// see a landed PR as merged, so sluice closes it
    /// (`Action::ClosePr`).
    #[serde(default)]
    pub merge_method: MergeMethod,
}

fn yes() -> bool {
    true
}

impl Default for RepoPolicy {
    fn default() -> Self {
        RepoPolicy {
            required_approvals: 1,
            max_concurrent_builds: 2,
            max_infra_retries: 2,
            priority_labels: Vec::new(),
            train_depth: 0,
            early_test: true,
            merge_method: MergeMethod::Merge,
        }
    }
}

mod approval;
mod machine;
mod state;
pub mod text;
mod train;
mod views;

pub use approval::{Approval, approval, latest_per_reviewer};
pub use machine::{CLOSED_MEMORY_MS, MERGE_RETRY_MS};
pub use state::*;
pub use train::{Car, CarState, Ejection, Landing, STAGING_PREFIX, Train, staging_ref};
pub use views::*;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
