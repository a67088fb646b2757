//! Plain data the core reasons about. Validated at construction, so the rest
//! of the program (paths, labels, URLs) can trust them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An error for a value that does not have the shape sluice accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {value:?} ({why})")]
pub struct InvalidValue {
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn invalid(what: &'static str, value: &str, why: &'static str) -> InvalidValue {
    InvalidValue {
        what,
        value: value.chars().take(200).collect(),
        why,
    }
}

/// `owner/name`, as GitHub spells it. Both parts are restricted to the
/// characters GitHub allows, so a repository name is safe in a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let (owner, name) = s
            .split_once('/')
            .ok_or_else(|| invalid("repository", s, "expected owner/name"))?;
        for part in [owner, name] {
            let ok = !part.is_empty()
                && part.len() <= 100
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(invalid(
                    "repository",
                    s,
                    "owner and name may hold only letters, digits, '-', '_' and '.'",
                ));
            }
        }
        Ok(RepoName(s.to_string()))
    }
    pub fn owner(&self) -> &str {
        self.0.split_once('/').map(|(o, _)| o).unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.0.split_once('/').map(|(_, n)| n).unwrap_or_default()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RepoName {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RepoName::parse(&s)
    }
}
impl From<RepoName> for String {
    fn from(r: RepoName) -> String {
        r.0
    }
}
impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A git object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha(String);

impl Sha {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(invalid("commit sha", s, "expected 40 or 64 hex digits"));
        }
        Ok(Sha(s.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 7 digits, for people.
    pub fn short(&self) -> &str {
        &self.0[..7]
    }
    /// The all-zero id GitHub uses for "no commit" (a deleted branch).
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }
}

impl TryFrom<String> for Sha {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Sha::parse(&s)
    }
}
impl From<Sha> for String {
    fn from(s: Sha) -> String {
        s.0
    }
}
impl fmt::Display for Sha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One pull request of one repository.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PrKey {
    pub repo: RepoName,
    pub number: u64,
}

impl fmt::Display for PrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.repo, self.number)
    }
}

/// The id of one build. Made by the core from a per-process prefix and a
/// counter; lowercase letters, digits and '-', so it is safe in paths and
/// Kubernetes names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BuildId(String);

impl BuildId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if !ok {
            return Err(invalid(
                "build id",
                s,
                "expected lowercase letters, digits and '-'",
            ));
        }
        Ok(BuildId(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BuildId {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        BuildId::parse(&s)
    }
}
impl From<BuildId> for String {
    fn from(b: BuildId) -> String {
        b.0
    }
}
impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds since the Unix epoch. The core never reads a clock: time is
/// an input.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}

/// Whether a target branch's train takes PRs and lands them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchMode {
    #[default]
    Running,
    /// Nothing enters, nothing new is tested, nothing lands; running tests
    /// finish.
    Paused,
    /// Nothing new enters; what is in the train is tested and lands.
    Draining,
}

impl BranchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BranchMode::Running => "running",
            BranchMode::Paused => "paused",
            BranchMode::Draining => "draining",
        }
    }
}

/// What a test result belongs to: the PR head and the target-branch commit
/// it was merged with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pair {
    pub head: Sha,
    pub target: Sha,
}

/// One PR taking part in a candidate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CandidatePr {
    pub number: u64,
    pub head_sha: Sha,
    pub head_ref: String,
}

/// What a build tests: the target branch at `target_sha` with the PRs merged
/// into it in order. Today every candidate holds one PR; merge trains will
/// build longer ones.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub repo: RepoName,
    pub target_branch: String,
    pub target_sha: Sha,
    pub prs: Vec<CandidatePr>,
    /// A train car: the commit sluice built from `target_sha` and `prs`,
    /// which the job checks out exactly (no merging in the job). `None`: a
    /// PR's own early check (the job merges the target into the head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub car: Option<Sha>,
}

impl Candidate {
    /// The (head, target) pair of a single-PR candidate.
    pub fn pair(&self) -> Option<Pair> {
        match self.prs.as_slice() {
            [only] => Some(Pair {
                head: only.head_sha.clone(),
                target: self.target_sha.clone(),
            }),
            _ => None,
        }
    }
    /// The first (for now the only) PR of the candidate.
    pub fn first_pr(&self) -> Option<&CandidatePr> {
        self.prs.first()
    }
    /// The PR whose results path holds this build's results: a car's own
    /// PR (the last one; the cars ahead may land before it is tested, so
    /// only its own PR names it for good), or the only PR of an own check.
    pub fn results_pr(&self) -> Option<&CandidatePr> {
        self.prs.last()
    }

    /// Where the results of `build` of this candidate live: under its last
    /// PR, the one PR of an early check or the PR a car adds. A car's own PR
    /// never changes (the cars ahead of it do, as they land), so its
    /// landing status, its PRs' merge records and an ejection all link to
    /// the page its test wrote.
    pub fn results_key(&self, build: &BuildId) -> Option<ResultKey> {
        let pr = self.prs.last()?;
        Some(ResultKey {
            repo: self.repo.clone(),
            pr: pr.number,
            head: pr.head_sha.clone(),
            build: build.clone(),
        })
    }
}

/// How a build ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The test command exited 0.
    Passed,
    /// The test command failed, or the PR does not merge with its target.
    Failed,
    /// The infrastructure failed (timeout, lost pod, clone failure): says
    /// nothing about the code; retried a bounded number of times.
    Error,
}

/// What the executor reports about a finished build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReport {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    /// One line for people: "exit code 1", "timed out after 600s", ...
    pub detail: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
}

/// A reviewer's verdict, as GitHub names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReviewState {
    Approved,
    ChangesRequested,
    Commented,
    Dismissed,
    Pending,
}

/// One review, with whether its author can write to the repository (only
/// those reviews count).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewFact {
    pub reviewer: String,
    pub state: ReviewState,
    /// GitHub's review id; larger is later.
    pub id: u64,
    pub can_write: bool,
}

/// What the forge says about an open pull request right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrSnapshot {
    pub key: PrKey,
    pub head_sha: Sha,
    pub head_ref: String,
    pub base_ref: String,
    /// The base sha GitHub put in the payload; only a hint until sluice
    /// knows the branch head itself.
    pub base_sha: Option<Sha>,
    pub title: String,
    pub author: String,
    pub draft: bool,
    /// `None` while GitHub is still computing it.
    pub mergeable: Option<bool>,
    pub labels: Vec<String>,
    pub created_at: Timestamp,
    /// `Depends-On:` lines of its description (`core/deps.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<PrKey>,
}

impl PrSnapshot {
    /// The snapshot with the dependencies its description `body` names.
    pub fn with_dependencies(mut self, body: &str) -> Self {
        self.depends_on = super::deps::parse(body, &self.key);
        self
    }
}

/// A commit status state, as GitHub names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    Error,
    /// A car's build stopped before it had a result (the train was rebuilt,
    /// or a car behind it landed): no verdict on the commit. A check run
    /// says `cancelled`; a commit status, which has no such state, `error`.
    Cancelled,
}

impl CommitState {
    /// The state as a commit status names it.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Success => "success",
            CommitState::Failure => "failure",
            CommitState::Error | CommitState::Cancelled => "error",
        }
    }
}

/// Where a build's results live: built from repository, PR, head and build
/// id, never from a branch name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResultKey {
    pub repo: RepoName,
    pub pr: u64,
    pub head: Sha,
    pub build: BuildId,
}

impl ResultKey {
    /// `owner/name/pr-N/<head sha>/<build id>`: every part is validated, so
    /// this path cannot escape the results root.
    pub fn relative_path(&self) -> String {
        format!(
            "{}/{}/pr-{}/{}/{}",
            self.repo.owner(),
            self.repo.name(),
            self.pr,
            self.head,
            self.build
        )
    }
}

/// How GitHub should merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMethod {
    #[default]
    Merge,
    Squash,
    Rebase,
}

impl MergeMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            MergeMethod::Merge => "merge",
            MergeMethod::Squash => "squash",
            MergeMethod::Rebase => "rebase",
        }
    }
}

/// What came of a merge call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum MergeResult {
    Merged {
        merge_sha: Sha,
    },
    /// 409: the head is no longer the tested sha.
    HeadMoved,
    /// 405/422: GitHub will not merge this PR as it is (conflict, branch
    /// protection, closed); retried only when something changes.
    Refused {
        reason: String,
    },
    /// The call failed after its retries (timeouts, 5xx); retried later.
    Failed {
        reason: String,
    },
}

/// Whether git accepts `name` as a branch (`git check-ref-format
/// --branch`), checked without running git. Branch names come from
/// webhooks and configuration, and end up in git's argv and in ref paths.
pub fn valid_branch_name(name: &str) -> bool {
    let bad_char =
        |c: char| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\');
    !name.is_empty()
        && !name.starts_with('-')
        && !name.ends_with('.')
        && name != "@"
        && !name.contains("..")
        && !name.contains("@{")
        && !name.chars().any(bad_char)
        // Also refuses a leading or trailing '/' and "//" (empty parts).
        && name
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.') && !part.ends_with(".lock"))
}

/// Identifies a person's request (retest, try-merge) so its answer can be
/// routed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_cannot_hold_path_tricks() {
        assert!(RepoName::parse("octo/hello-world").is_ok());
        for bad in ["octo", "../x", "octo/..", "a/b/c", "a/$(x)", "/x", "a/"] {
            assert!(RepoName::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn branch_names_are_what_git_accepts() {
        for good in [
            "main",
            "release/1.2",
            "sluice/main/12",
            "feature-x",
            "a.b",
            "v1@2",
        ] {
            assert!(valid_branch_name(good), "{good} refused");
        }
        for bad in [
            "", "-x", "/x", "x/", "a//b", "a..b", ".x", "a/.b", "x.", "x.lock", "a.lock/b", "@",
            "a@{1}", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "a\tb",
        ] {
            assert!(!valid_branch_name(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn shas_are_hex_and_lowercased() {
        let s = Sha::parse(&"A".repeat(40)).unwrap();
        assert_eq!(s.as_str(), "a".repeat(40));
        assert!(Sha::parse("abc").is_err());
        assert!(Sha::parse(&"g".repeat(40)).is_err());
    }

    #[test]
    fn result_paths_are_built_from_validated_parts() {
        let key = ResultKey {
            repo: RepoName::parse("octo/demo").unwrap(),
            pr: 7,
            head: Sha::parse(&"1".repeat(40)).unwrap(),
            build: BuildId::parse("k3-12").unwrap(),
        };
        assert_eq!(
            key.relative_path(),
            format!("octo/demo/pr-7/{}/k3-12", "1".repeat(40))
        );
        assert!(BuildId::parse("../etc").is_err());
    }
}
