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
}
