//! GitHub's types (octocrab's models) to the core's, at the edge.

use crate::core::{InvalidValue, PrKey, PrSnapshot, RepoName, Sha, Timestamp};
use octocrab::models::pulls::PullRequest;

/// Why a GitHub pull request could not become a [`PrSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("pull_request.{0}: {1}")]
    Invalid(&'static str, InvalidValue),
    #[error("pull_request.{0} is missing")]
    Missing(&'static str),
}

/// Converts a pull request of `repo` into the core's snapshot. Shas are
/// validated; a PR without `created_at` is rejected (the queue orders by it).
pub fn pr_snapshot(repo: &RepoName, pr: &PullRequest) -> Result<PrSnapshot, SnapshotError> {
    let head_sha = Sha::parse(&pr.head.sha).map_err(|e| SnapshotError::Invalid("head.sha", e))?;
    let base_sha = if pr.base.sha.is_empty() {
        None
    } else {
        Some(Sha::parse(&pr.base.sha).map_err(|e| SnapshotError::Invalid("base.sha", e))?)
    };
    let created_at = pr.created_at.ok_or(SnapshotError::Missing("created_at"))?;
    Ok(PrSnapshot {
        key: PrKey {
            repo: repo.clone(),
            number: pr.number,
        },
        head_sha,
        head_ref: pr.head.ref_field.clone(),
        base_ref: pr.base.ref_field.clone(),
        base_sha,
        title: pr.title.clone().unwrap_or_default(),
        author: pr
            .user
            .as_ref()
            .map(|u| u.login.clone())
            .unwrap_or_default(),
        draft: pr.draft.unwrap_or(false),
        mergeable: pr.mergeable,
        labels: pr.labels.iter().flatten().map(|l| l.name.clone()).collect(),
        created_at: Timestamp(u64::try_from(created_at.timestamp_millis()).unwrap_or(0)),
        depends_on: Vec::new(),
    }
    .with_dependencies(pr.body.as_deref().unwrap_or_default()))
}
