//! The forge boundary: GitHub today. The adapter turns GitHub's types into
//! the core's at the edge; nothing past this module knows octocrab.

pub mod convert;
pub mod github;
pub mod webhook;

use crate::core::{
    CommitState, MergeMethod, MergeResult, PrKey, PrSnapshot, RepoName, ReviewFact, Sha, Timestamp,
};

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("{what}: timed out")]
    Timeout { what: String },
    #[error("{what}: HTTP {status}: {message}")]
    Http {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what}: {message}")]
    Transport { what: String, message: String },
    #[error("{what}: unexpected response: {message}")]
    Decode { what: String, message: String },
    /// This forge (or this adapter) cannot do what was asked.
    #[error("{what}: {message}")]
    Unsupported { what: String, message: String },
    /// The call was refused before it went out: its input is not allowed
    /// (a staging ref outside `sluice/`, say).
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

/// The prefix of every staging ref sluice builds cars on
/// (`sluice/<branch>/<car>`); sluice force-moves and deletes only these.
pub const STAGING_PREFIX: &str = "sluice/";

/// What came of one step of building a car.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CarStep {
    /// The PR head was merged in; the staging ref is now at `sha`.
    Merged { sha: Sha },
    /// The head was already in the staging ref, which stays at `sha`.
    NothingToMerge { sha: Sha },
    /// The head does not merge cleanly; the staging ref did not move.
    Conflict { message: String },
}

/// What came of closing a PR whose car landed squashed or rebased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrClose {
    /// Closed now; the comment is on it.
    Closed,
    /// It was closed already (an earlier attempt, a person); the comment
    /// is on it.
    AlreadyClosed,
    /// Its head is no longer the one that landed (a push raced the
    /// landing): left open, no comment.
    HeadMoved { head: Sha },
}

/// What came of moving a target branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefUpdate {
    /// The branch is now at the sha asked for.
    Moved,
    /// The branch moved meanwhile (the sha is not a descendant of its
    /// head): nothing changed.
    NotFastForward,
    /// The forge refused it (branch protection: a required check, say);
    /// `reason` is the forge's message.
    Refused { reason: String },
    /// Anything else (unreachable, timed out, the branch is gone); whether
    /// the branch moved is not known: read it.
    Failed { reason: String },
}

/// What one check (a commit status context or a check run) reported on a
/// commit, the latest report of its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub context: String,
    pub state: CheckState,
    pub description: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckState {
    /// A success (a check run's `neutral` and `skipped` count, as on
    /// GitHub's protected branches).
    Passed,
    /// Queued or running.
    Pending,
    Failed,
}

fn unsupported(what: &str) -> ForgeError {
    ForgeError::Unsupported {
        what: what.to_string(),
        message: "not supported by this forge".into(),
    }
}

/// A PR as the forge reports it when asked for one.
// One value per call: boxing the snapshot would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrFetch {
    Open(PrSnapshot),
    /// Closed; `merge_sha` is the merge commit if it was merged.
    Closed {
        merge_sha: Option<Sha>,
    },
}

/// A commit status to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitStatus {
    pub state: CommitState,
    pub description: String,
    pub target_url: Option<String>,
    /// In Markdown, for a check run's summary (a commit status has only
    /// its description).
    pub summary: String,
}

/// An open PR as the forge lists it, with when the forge last saw it change
/// (the reconcile re-reads reviews only of PRs that changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedPr {
    pub snapshot: PrSnapshot,
    /// The forge's `updated_at` (GitHub: whole seconds); `None` if it does
    /// not say, and then the PR counts as changed.
    pub updated_at: Option<Timestamp>,
}

/// The forge's API budget as its last replies reported it, and what this
/// process spent of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiBudget {
    /// `x-ratelimit-limit` of the last reply that carried it.
    pub limit: Option<u64>,
    /// `x-ratelimit-remaining` of the last reply that carried it.
    pub remaining: Option<u64>,
    /// `x-ratelimit-reset`: when the window starts over, in Unix seconds.
    pub reset_unix: Option<u64>,
    /// Replies that counted against the limit (all but `304 Not Modified`).
    pub counted: u64,
    /// `304 Not Modified` replies, which GitHub does not count.
    pub not_modified: u64,
}

#[async_trait::async_trait]
pub trait Forge: Send + Sync {
    /// Every open PR of the repository (all pages).
    async fn list_open_prs(&self, repo: &RepoName) -> Result<Vec<PrSnapshot>, ForgeError>;
    /// Like [`Forge::list_open_prs`], with each PR's `updated_at` where the
    /// forge gives it.
    async fn list_open_pr_listings(&self, repo: &RepoName) -> Result<Vec<ListedPr>, ForgeError> {
        Ok(self
            .list_open_prs(repo)
            .await?
            .into_iter()
            .map(|snapshot| ListedPr {
                snapshot,
                updated_at: None,
            })
            .collect())
    }
    /// One PR, open or closed. `None` if it does not exist.
    async fn get_pr(&self, pr: &PrKey) -> Result<Option<PrFetch>, ForgeError>;
    /// Every review of the PR (all pages), each with whether its author can
    /// write to the repository.
    async fn reviews(&self, pr: &PrKey) -> Result<Vec<ReviewFact>, ForgeError>;
    /// The head of a branch; `None` if there is no such branch.
    async fn branch_head(&self, repo: &RepoName, branch: &str) -> Result<Option<Sha>, ForgeError>;
    /// Sets a commit status.
    async fn set_status(
        &self,
        repo: &RepoName,
        sha: &Sha,
        status: &CommitStatus,
    ) -> Result<(), ForgeError>;
    /// Merges the PR only if its head is still `head` (GitHub's `sha` guard).
    /// 409/405/422 come back as `MergeResult`s, not errors.
    async fn merge(&self, pr: &PrKey, head: &Sha, method: MergeMethod, title: &str) -> MergeResult;
    /// The API budget, if this forge has one and reports it.
    fn api_budget(&self) -> Option<ApiBudget> {
        None
    }
    /// The App's access to `repo` changed: whatever is remembered of its
    /// installation is stale (the next call looks it up again).
    fn forget_installation(&self, _repo: &RepoName) {}
    /// A short-lived credential a job may fetch `repo`'s commits with (a
    /// GitHub App's installation token scoped to that one repository and
    /// `contents: read`); `None` when this forge has none to give (a
    /// personal token is never handed to a job).
    async fn clone_token(&self, _repo: &RepoName) -> Result<Option<String>, ForgeError> {
        Ok(None)
    }

    // ---- the merge train: cars on staging refs, landed by fast-forward

    /// Points sluice's staging branch `name` (e.g. `sluice/main/7`) at
    /// `sha`, creating it or moving it with force. Only ever for sluice's
    /// own refs: a name outside [`STAGING_PREFIX`] is refused.
    async fn put_staging_ref(
        &self,
        repo: &RepoName,
        name: &str,
        sha: &Sha,
    ) -> Result<(), ForgeError> {
        let _ = (repo, name, sha);
        Err(unsupported("put_staging_ref"))
    }
    /// Adds PR `pr` at `head` to staging branch `name`, as `method` says:
    /// - [`MergeMethod::Merge`]: one merge commit with `message`;
    /// - [`MergeMethod::Squash`]: one commit with the merged tree, the
    ///   previous tip as its only parent, `message` as its subject and a
    ///   `Co-authored-by` trailer for each author of the PR's commits but
    ///   the one it is attributed to;
    /// - [`MergeMethod::Rebase`]: each of the PR's commits replayed on the
    ///   previous tip, in order, with its own message and author
    ///   (`message` is not used); a conflict names the commit.
    ///
    /// A conflict leaves the staging ref where it was.
    async fn merge_into_staging(
        &self,
        repo: &RepoName,
        name: &str,
        pr: u64,
        head: &Sha,
        method: MergeMethod,
        message: &str,
    ) -> Result<CarStep, ForgeError> {
        let _ = (repo, name, pr, head, method, message);
        Err(unsupported("merge_into_staging"))
    }
    /// Closes a PR whose car landed squashed or rebased (GitHub cannot see
    /// it merged), only if `head` is still its head, and comments
    /// `comment` on it once: a comment about the same `landed` sha is
    /// never posted twice, whatever is retried.
    async fn close_landed_pr(
        &self,
        pr: &PrKey,
        head: &Sha,
        landed: &Sha,
        comment: &str,
    ) -> Result<PrClose, ForgeError> {
        let _ = (pr, head, landed, comment);
        Err(unsupported("close_landed_pr"))
    }
    /// Moves `branch` to `sha` only if that is a fast-forward (a
    /// compare-and-swap: if the branch moved, nothing lands).
    async fn fast_forward(&self, repo: &RepoName, branch: &str, sha: &Sha) -> RefUpdate {
        let _ = (repo, branch, sha);
        RefUpdate::Failed {
            reason: unsupported("fast_forward").to_string(),
        }
    }
    /// Deletes staging branch `name` (gone already is fine).
    async fn delete_staging_ref(&self, repo: &RepoName, name: &str) -> Result<(), ForgeError> {
        let _ = (repo, name);
        Err(unsupported("delete_staging_ref"))
    }
    /// The status contexts branch protection requires on `branch`; empty
    /// if it is not protected, requires none, or its protection cannot be
    /// read with sluice's token.
    async fn required_checks(
        &self,
        repo: &RepoName,
        branch: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let _ = (repo, branch);
        Err(unsupported("required_checks"))
    }
    /// The context of sluice's own commit statuses (`github.status_context`).
    fn status_context(&self) -> &str {
        "sluice"
    }
    /// What the checks reported on `sha`: its commit statuses and check
    /// runs, the latest of each name.
    async fn commit_checks(
        &self,
        repo: &RepoName,
        sha: &Sha,
    ) -> Result<Vec<CheckReport>, ForgeError> {
        let _ = (repo, sha);
        Err(unsupported("commit_checks"))
    }
    /// sluice's staging refs of the repository, name and sha, sorted by
    /// name (for recovery after a restart).
    async fn staging_refs(&self, repo: &RepoName) -> Result<Vec<(String, Sha)>, ForgeError> {
        let _ = repo;
        Err(unsupported("staging_refs"))
    }
    /// Whether `descendant` is `ancestor` or has it in its history (after a
    /// restart: a landing happened even if the target moved on since).
    async fn is_ancestor(
        &self,
        repo: &RepoName,
        ancestor: &Sha,
        descendant: &Sha,
    ) -> Result<bool, ForgeError> {
        let _ = (repo, ancestor, descendant);
        Err(unsupported("is_ancestor"))
    }
    /// Whether `set_status` writes a check run (with its summary) instead
    /// of a commit status.
    fn writes_check_runs(&self) -> bool {
        false
    }
    /// Whether `user` has write access (write, maintain or admin) to the
    /// repository (comment commands).
    async fn user_can_write(&self, repo: &RepoName, user: &str) -> Result<bool, ForgeError> {
        let _ = (repo, user);
        Err(unsupported("user_can_write"))
    }
    /// Reacts to a PR comment (`content`: GitHub's reaction, e.g. `+1`).
    async fn react(&self, repo: &RepoName, comment: u64, content: &str) -> Result<(), ForgeError> {
        let _ = (repo, comment, content);
        Err(unsupported("react"))
    }
    /// Answers comment `comment` on the PR with a comment of sluice's own,
    /// once (a retry after a lost answer finds the first).
    async fn answer(&self, pr: &PrKey, comment: u64, body: &str) -> Result<(), ForgeError> {
        let _ = (pr, comment, body);
        Err(unsupported("answer"))
    }
}
