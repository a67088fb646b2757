//! What the core asks the world to do. The driver carries these out and
//! feeds what comes of them back as events.

use super::types::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Set the commit status of `sha` (sluice's context).
    SetStatus {
        repo: RepoName,
        sha: Sha,
        state: CommitState,
        description: String,
        /// The build whose results page the status links to.
        link: Option<ResultKey>,
        /// Everything that stands between the PR and landing, in Markdown
        /// (a check run's summary; the same words as the JSON `waiting_on`).
        summary: String,
    },
    /// Start testing `candidate`.
    StartBuild {
        build: BuildId,
        candidate: Candidate,
    },
    /// Stop a build; no result will be used from it.
    CancelBuild { build: BuildId },
    /// Merge the PR, guarded by the tested head sha.
    Merge {
        pr: PrKey,
        pair: Pair,
        build: BuildId,
    },
    /// Ask GitHub whether `user` may write to the repository (answered by
    /// `Event::WriteAccess`).
    CheckWriteAccess {
        repo: RepoName,
        user: String,
        comment: u64,
    },
    /// React to a comment (its commands were all done).
    React {
        repo: RepoName,
        comment: u64,
        /// GitHub's reaction content: `+1`.
        content: String,
    },
    /// Answer comment `comment` on a PR with a comment of sluice's own
    /// (commands refused, unknown, or `/sluice help`), once.
    Answer {
        pr: PrKey,
        comment: u64,
        body: String,
    },
    /// Build a train car: point the staging ref at `parent`, merge `head`
    /// into it (answered by `Event::CarBuilt` or `Event::CarConflict`).
    BuildCar {
        repo: RepoName,
        branch: String,
        car: u64,
        staging_ref: String,
        parent: Sha,
        /// The car's PR (the forge reads its commits for `squash` and
        /// `rebase`).
        pr: u64,
        head: Sha,
        message: String,
    },
    /// Land a passing car: set its `success` status (so a required check
    /// accepts it), then move `branch` from `from` to `to` by a non-forced
    /// update (answered by `Event::Landed` or `Event::LandRefused`).
    Land {
        repo: RepoName,
        branch: String,
        from: Sha,
        to: Sha,
        /// The last car landing; staging refs of cars up to it can go.
        through: u64,
        /// Every car landing, in order, id and sha (the last is `to`): a
        /// required check besides sluice's that fails is blamed on the
        /// first car it fails on.
        cars: Vec<(u64, Sha)>,
        description: String,
        link: ResultKey,
    },
    /// After a `squash` or `rebase` landing, GitHub cannot see the PR as
    /// merged (its head is not on the target): close it, if `head` is
    /// still its head, and comment once naming where it landed. No answer
    /// comes back (the core forgot the PR when it landed).
    ClosePr {
        pr: PrKey,
        /// The head that landed.
        head: Sha,
        /// The PR's commit on the target (squash), or the last of its
        /// replayed commits (rebase): its car's sha.
        landed: Sha,
        branch: String,
        method: MergeMethod,
        /// The car's staging ref.
        car: String,
        /// The car's test, which tested `landed` on exactly what was
        /// ahead of it.
        link: ResultKey,
    },
    /// Re-read a PR's reviews (answered by `Event::Reviews`).
    FetchReviews { pr: PrKey },
    /// Re-read a branch head (answered by `Event::BranchMoved`).
    FetchBranch { repo: RepoName, branch: String },
    /// Re-read a PR (answered by `Event::PrUpdated` or `Event::PrClosed`).
    FetchPr { pr: PrKey },
    /// Answer a person's request.
    Reply { request: RequestId, answer: Answer },
    /// Something worth keeping in the history.
    Record(HistoryEntry),
    /// A re-read of the forge found facts no webhook had reported.
    Drift { repo: RepoName, differences: u32 },
    /// Handle a `Tick` at (or soon after) this time: a wait ends then
    /// (a train's gathering).
    WakeAt { at: Timestamp },
}

/// The answer to `retest` or `try-merge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// sluice does not track this PR (unknown repository, closed, never seen).
    UnknownPr,
    /// The PR will be tested again.
    RetestQueued { pr: PrKey },
    /// The PR cannot be tested now; `reason` says why.
    CannotTest { pr: PrKey, reason: String },
    /// The merge call is on its way.
    Merging {
        pr: PrKey,
        pair: Pair,
        build: BuildId,
    },
    /// The PR cannot merge now; each reason is one sentence.
    NotReady { pr: PrKey, reasons: Vec<String> },
    /// sluice does not gate this repository.
    UnknownRepo { repo: RepoName },
    /// The branch's train is now in `mode` (it was in `was`).
    BranchMode {
        repo: RepoName,
        branch: String,
        mode: BranchMode,
        was: BranchMode,
    },
}

/// A fact for the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryEntry {
    /// A build ended. `current` says whether its pair was still current (and
    /// so its result was used).
    BuildFinished {
        build: BuildId,
        candidate: Candidate,
        report: JobReport,
        current: bool,
    },
    /// A build was cancelled because its pair went stale or on request.
    BuildCancelled {
        build: BuildId,
        candidate: Candidate,
        at: Timestamp,
        why: String,
    },
    /// A PR landed.
    Merged {
        pr: PrKey,
        title: String,
        /// The branch it landed on (empty in entries written before this
        /// was recorded).
        #[serde(default)]
        branch: String,
        pair: Pair,
        build: BuildId,
        approvers: Vec<String>,
        merge_sha: Sha,
        at: Timestamp,
    },
    /// A PR left the train by itself: where (`stage`: build, test,
    /// checks), what (`kind`) and in words (`message`, its status).
    Ejected {
        pr: PrKey,
        head: Sha,
        stage: String,
        /// What went wrong (`kind` is the entry's tag).
        cause: super::train::EjectKind,
        message: String,
        /// The failing build, if a test failed.
        build: Option<BuildId>,
        at: Timestamp,
    },
    /// A person set a branch's train running, paused or draining.
    BranchMode {
        repo: RepoName,
        branch: String,
        from: BranchMode,
        to: BranchMode,
        at: Timestamp,
    },
    /// A car failed, and a car behind it holding its PRs passed on the same
    /// base (`optimistic`): the failure is taken for a flake.
    SuspectedFlake {
        pr: PrKey,
        /// The PR's head in the car (the failing build's results are
        /// under it).
        head: Sha,
        build: BuildId,
        car: Sha,
        at: Timestamp,
    },
    /// Something is tried again: where (`stage`: test, land), what (`kind`
    /// is the entry's tag) and in words (`message`, what the status says).
    /// A test is retried after an infrastructure error (`attempt` of
    /// `of`); a landing when GitHub refused it or other required checks
    /// are pending (recorded when the reason changes, not at every poll).
    Retried {
        pr: PrKey,
        head: Sha,
        stage: String,
        cause: super::train::RetryKind,
        message: String,
        /// The build that hit the error, for a test.
        build: Option<BuildId>,
        attempt: Option<u32>,
        of: Option<u32>,
        at: Timestamp,
    },
}
