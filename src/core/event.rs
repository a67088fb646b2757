//! Everything that can happen to sluice, as plain data. Webhooks, the
//! reconcile loop, the executor, the forge's answers and people all speak to
//! the core only through these.

use super::types::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A PR was opened, got new commits, had its base changed, was relabelled
    /// or marked ready; or a re-read of the forge says this is how it is.
    PrUpdated(PrSnapshot),
    /// A PR was just opened (a webhook said so): it has no reviews yet, so
    /// none are read. Otherwise the same as `PrUpdated`.
    PrOpened(PrSnapshot),
    /// A closed PR was reopened (a webhook said so explicitly).
    PrReopened(PrSnapshot),
    /// A PR was merged (by anyone), or closed and sluice cannot tell how.
    PrClosed(PrKey),
    /// A PR was closed without being merged: a PR depending on it says so.
    PrClosedUnmerged(PrKey),
    /// Something about a PR's reviews changed; sluice re-reads them.
    ReviewActivity(PrKey),
    /// Every review of a PR, as the forge reports them now.
    Reviews { pr: PrKey, reviews: Vec<ReviewFact> },
    /// A push moved a branch from `before` to `sha`. Pushes can arrive late
    /// and out of order: one whose `before` is not the head sluice knows is
    /// not applied; the branch is read again instead. `before: None` applies
    /// unconditionally.
    BranchMoved {
        repo: RepoName,
        branch: String,
        sha: Sha,
        before: Option<Sha>,
    },
    /// The forge said, in a read that began at `as_of`, where a branch
    /// points (`None`: no such branch). Facts learnt since `as_of` win.
    BranchRead {
        repo: RepoName,
        branch: String,
        sha: Option<Sha>,
        as_of: Timestamp,
    },
    /// A branch was deleted.
    BranchDeleted { repo: RepoName, branch: String },
    /// A re-read of the forge, started at `started_at`: the open PRs and the
    /// heads of their target branches. Facts that changed after
    /// `started_at` are newer than this snapshot and are kept.
    Reconciled {
        repo: RepoName,
        started_at: Timestamp,
        prs: Vec<PrSnapshot>,
        branches: Vec<(String, Sha)>,
    },
    /// The executor finished a build (not sent for cancelled builds).
    JobFinished {
        build: BuildId,
        candidate: Candidate,
        report: JobReport,
    },
    /// What came of a merge call.
    MergeFinished {
        pr: PrKey,
        pair: Pair,
        result: MergeResult,
    },
    /// Someone asked for a PR to be tested again.
    Retest { pr: PrKey, request: RequestId },
    /// Someone asked for a PR to be merged now.
    TryMerge { pr: PrKey, request: RequestId },
    /// A new comment on a PR (the webhook adapter passes only `created`
    /// comments by people, not bots). The core parses `body`
    /// (`core/commands.rs`), asks whether the author may write to the
    /// repository when a command needs it (`Action::CheckWriteAccess`),
    /// and answers once per `comment` id.
    Commented {
        pr: PrKey,
        comment: u64,
        author: String,
        body: String,
    },
    /// Whether the author of `comment` may write to the repository
    /// (answers `CheckWriteAccess`; `None`: GitHub could not say).
    WriteAccess {
        repo: RepoName,
        comment: u64,
        can_write: Option<bool>,
    },
    /// Someone asked GitHub to run sluice's check on `head` again (the
    /// check run's "Re-run"): a retest, if `head` is still the PR's head.
    Rerun { pr: PrKey, head: Sha },
    /// A train car's commit was built on `parent` (answers `BuildCar`).
    CarBuilt {
        repo: RepoName,
        branch: String,
        car: u64,
        parent: Sha,
        sha: Sha,
    },
    /// A train car's PR does not merge onto the car ahead of it.
    CarConflict {
        repo: RepoName,
        branch: String,
        car: u64,
        message: String,
    },
    /// The forge could not build a car (an error, not a conflict): it is
    /// built again.
    CarBuildFailed {
        repo: RepoName,
        branch: String,
        car: u64,
    },
    /// The target branch moved to `sha` by our fast-forward (answers `Land`).
    Landed {
        repo: RepoName,
        branch: String,
        sha: Sha,
    },
    /// GitHub did not move the target. `moved`: it is not at the sha the
    /// car was built on any more (a push raced the landing).
    LandRefused {
        repo: RepoName,
        branch: String,
        moved: bool,
        reason: String,
    },
    /// Required checks other than sluice's have not all succeeded on the
    /// landing car yet (`pending`: their contexts): nothing was asked of
    /// GitHub; the landing is tried again after a while.
    LandWaiting {
        repo: RepoName,
        branch: String,
        pending: Vec<String>,
    },
    /// A required check other than sluice's failed on car `car` of the
    /// landing, and passed on every car ahead of it: the car failed.
    CarCheckFailed {
        repo: RepoName,
        branch: String,
        car: u64,
        context: String,
        description: String,
    },
    /// A person sets a target branch's train running, paused (nothing
    /// enters, nothing new is tested, nothing lands; running tests finish)
    /// or draining (nothing enters; what is in the train lands).
    SetBranchMode {
        repo: RepoName,
        branch: String,
        mode: BranchMode,
        request: RequestId,
    },
    /// After a restart: the landing asked for before it was never carried
    /// out (the target is still at the sha the car was built on). Nothing
    /// refused it, so it is asked for again at once.
    LandingLost { repo: RepoName, branch: String },
    /// After a restart: builds the state believed running that the executor
    /// no longer has. They are re-queued; a lost build is not a result.
    BuildsLost { builds: Vec<BuildId> },
    /// sluice started again from its journal (before anything else).
    Restarted,
    /// Time passes: retry what waits on a timer.
    Tick,
}

impl Event {
    /// The repository this event is about.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Event::PrUpdated(s) | Event::PrOpened(s) | Event::PrReopened(s) => Some(&s.key.repo),
            Event::PrClosed(pr)
            | Event::PrClosedUnmerged(pr)
            | Event::ReviewActivity(pr)
            | Event::Reviews { pr, .. }
            | Event::MergeFinished { pr, .. }
            | Event::Retest { pr, .. }
            | Event::TryMerge { pr, .. }
            | Event::Commented { pr, .. }
            | Event::Rerun { pr, .. } => Some(&pr.repo),
            Event::WriteAccess { repo, .. } => Some(repo),
            Event::BranchMoved { repo, .. }
            | Event::BranchRead { repo, .. }
            | Event::BranchDeleted { repo, .. }
            | Event::Reconciled { repo, .. }
            | Event::CarBuilt { repo, .. }
            | Event::CarConflict { repo, .. }
            | Event::CarBuildFailed { repo, .. }
            | Event::Landed { repo, .. }
            | Event::LandRefused { repo, .. }
            | Event::LandWaiting { repo, .. }
            | Event::CarCheckFailed { repo, .. }
            | Event::SetBranchMode { repo, .. }
            | Event::LandingLost { repo, .. } => Some(repo),
            Event::JobFinished { candidate, .. } => Some(&candidate.repo),
            Event::Tick | Event::BuildsLost { .. } | Event::Restarted => None,
        }
    }
}
