//! What the fake GitHub knows besides the git repositories themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

#[derive(Debug, Default)]
pub(crate) struct State {
    pub repos: BTreeMap<String, RepoState>,
    pub next_id: u64,
    /// GitHub Apps registered in the fake, by app id.
    pub apps: BTreeMap<u64, AppRec>,
    /// Installations of those Apps, by installation id.
    pub installations: BTreeMap<u64, InstallationRec>,
    /// Installation access tokens ever issued, by token.
    pub tokens: HashMap<String, TokenRec>,
    /// How long a new installation token lives (None: GitHub's hour).
    pub token_lifetime: Option<Duration>,
    /// Repositories cloned over HTTP only with credentials.
    pub private: BTreeSet<String>,
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

/// A check run on a commit: reported by another app (a CI, through
/// `report_check_run`, `app_id` None) or created through the API by an
/// App of the fake.
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
    pub completed_at: Option<String>,
    /// The App that created it (None: another app, reported by a test).
    pub app_id: Option<u64>,
    pub details_url: Option<String>,
    pub external_id: Option<String>,
    pub output: CheckOutput,
    /// The run as it was after its creation and after each update, oldest
    /// first.
    pub history: Vec<CheckRunSnapshot>,
}

/// A check run's `output` (annotations and images are accepted, not kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CheckOutput {
    pub title: Option<String>,
    pub summary: Option<String>,
    pub text: Option<String>,
}

/// What a check run said at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckRunSnapshot {
    pub name: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub details_url: Option<String>,
    pub output: CheckOutput,
}

impl CheckRunRec {
    pub fn snapshot(&self) -> CheckRunSnapshot {
        CheckRunSnapshot {
            name: self.name.clone(),
            status: self.status.clone(),
            conclusion: self.conclusion.clone(),
            details_url: self.details_url.clone(),
            output: self.output.clone(),
        }
    }
}

/// A comment on a PR's conversation (an issue comment).
#[derive(Debug, Clone)]
pub(crate) struct CommentRec {
    pub id: u64,
    pub user: String,
    pub body: String,
    pub created_at: String,
    pub updated_at: String,
    /// The App whose installation token wrote it, if any.
    pub app_id: Option<u64>,
    pub reactions: Vec<ReactionRec>,
}

/// A reaction to an issue comment.
#[derive(Debug, Clone)]
pub(crate) struct ReactionRec {
    pub id: u64,
    pub user: String,
    pub content: String,
    pub created_at: String,
}

/// A GitHub App registered in the fake.
#[derive(Debug, Clone)]
pub(crate) struct AppRec {
    pub id: u64,
    pub slug: String,
    pub name: String,
    pub owner: String,
    /// The RSA public key, DER `RSAPublicKey` (PKCS#1), to check JWTs with.
    pub public_key_der: Vec<u8>,
    /// Permission name to "read" or "write".
    pub permissions: BTreeMap<String, String>,
    pub events: Vec<String>,
    pub created_at: String,
}

/// Which repositories an installation can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every repository of the account, now and later.
    All,
    /// These repositories (full names).
    Selected(BTreeSet<String>),
}

/// An App installed on an account.
#[derive(Debug, Clone)]
pub(crate) struct InstallationRec {
    pub id: u64,
    pub app_id: u64,
    pub account: String,
    pub selection: Selection,
    pub created_unix: u64,
}

impl InstallationRec {
    /// Whether the installation reaches `repo` (a full name).
    pub fn covers(&self, repo: &str) -> bool {
        match &self.selection {
            Selection::All => repo.split('/').next() == Some(self.account.as_str()),
            Selection::Selected(repos) => repos.contains(repo),
        }
    }
}

/// An installation access token.
#[derive(Debug, Clone)]
pub(crate) struct TokenRec {
    pub installation_id: u64,
    pub expires: SystemTime,
    /// The repositories (full names) the token was narrowed to, if it was.
    pub repos: Option<BTreeSet<String>>,
    /// The permissions it was narrowed to, if it was.
    pub permissions: Option<BTreeMap<String, String>>,
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
