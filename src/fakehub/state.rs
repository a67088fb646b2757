//! What the fake GitHub knows besides the git repositories themselves.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub(crate) struct State {
    pub repos: BTreeMap<String, RepoState>,
    pub next_id: u64,
}

impl State {
    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[derive(Debug)]
pub(crate) struct RepoState {
    pub full_name: String,
    pub id: u64,
    pub default_branch: String,
    pub created_at: String,
    pub created_unix: u64,
    pub prs: BTreeMap<u64, PrState>,
    pub permissions: HashMap<String, String>,
    pub statuses: Vec<StatusRec>,
    /// PR and issue numbers share one sequence, as on GitHub.
    pub next_number: u64,
    /// Branch protection rules, by exact branch name.
    pub protections: BTreeMap<String, Protection>,
    /// Check runs other apps reported (a CI), oldest first.
    pub check_runs: Vec<CheckRunRec>,
    /// Issue comments, by PR number, oldest first.
    pub comments: BTreeMap<u64, Vec<CommentRec>>,
}

/// A check run as an app reported it on a commit.
#[derive(Debug, Clone)]
pub(crate) struct CheckRunRec {
    pub id: u64,
    pub head_sha: String,
    pub name: String,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    /// Set when `completed`: `success`, `failure`, `neutral`, ...
    pub conclusion: Option<String>,
    pub started_at: String,
}

/// A comment on a PR's conversation (an issue comment).
#[derive(Debug, Clone)]
pub(crate) struct CommentRec {
    pub id: u64,
    pub user: String,
    pub body: String,
    pub created_at: String,
}

/// A protected branch's rule: the status checks it requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Protection {
    /// "Require branches to be up to date before merging".
    pub strict: bool,
    /// Required status contexts.
    pub contexts: Vec<String>,
}

impl RepoState {
    /// A user's permission; the owner is an admin, everyone else reads
    /// unless told otherwise.
    pub fn permission(&self, login: &str) -> String {
        if let Some(p) = self.permissions.get(login) {
            return p.clone();
        }
        if self.full_name.split('/').next() == Some(login) {
            "admin".into()
        } else {
            "read".into()
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PrState {
    pub number: u64,
    pub id: u64,
    pub title: String,
    pub body: Option<String>,
    pub author: String,
    pub head_ref: String,
    pub head_sha: String,
    pub base_ref: String,
    /// The base branch head when the PR was last updated (as GitHub shows).
    pub base_sha: String,
    pub open: bool,
    pub merged: bool,
    pub merged_by: Option<String>,
    pub merge_commit_sha: Option<String>,
    pub merged_at: Option<String>,
    pub closed_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub labels: Vec<String>,
    pub draft: bool,
    pub commits: u64,
    pub reviews: Vec<ReviewRec>,
}

impl PrState {
    pub fn is_open(&self) -> bool {
        self.open
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ReviewRec {
    pub id: u64,
    pub user: String,
    /// APPROVED, CHANGES_REQUESTED, COMMENTED or DISMISSED.
    pub state: String,
    pub body: String,
    pub commit_id: String,
    pub submitted_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct StatusRec {
    pub id: u64,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: Option<String>,
    pub target_url: Option<String>,
    pub creator: String,
    pub created_at: String,
}
