//! sluice's check run (`github.check_runs = true`, which needs App
//! authentication: GitHub lets only Apps write check runs). One run per
//! commit, named like the status context, created once and then updated:
//!
//! - `POST /repos/{o}/{r}/check-runs` (201): `name`, `head_sha`, `status`,
//!   `conclusion`, `details_url`, `output {title, summary}`.
//! - `PATCH /repos/{o}/{r}/check-runs/{id}` (200): the same fields.
//! - `GET /repos/{o}/{r}/commits/{sha}/check-runs?check_name=...`: after a
//!   restart, the run of a commit is found again rather than duplicated.
//!
//! A commit status's pending becomes `queued` (or `in_progress` when it
//! links a running build), success and failure become `completed` with
//! that conclusion, and an error (an infrastructure error past its
//! retries) a `failure`: a `neutral` conclusion would satisfy a required
//! check. A car whose build was stopped (the train was rebuilt) is
//! `completed` as `cancelled` rather than left `in_progress`.

use super::{GitHub, repo_path};
use crate::core::{CommitState, RepoName, Sha};
use crate::forge::{CommitStatus, ForgeError};
use http::{Method, StatusCode};
use serde_json::json;

/// GitHub's limit on a check run's output text fields, in characters.
pub const OUTPUT_MAX_CHARS: usize = 65_535;
/// How many commits' check run ids are remembered (forgetting one costs a
/// lookup).
pub const RUN_IDS: usize = 10_000;

#[derive(serde::Deserialize)]
struct Run {
    id: u64,
}

#[derive(serde::Deserialize)]
struct Runs {
    #[serde(default)]
    check_runs: Vec<Run>,
}

/// The check run fields for `status`.
pub(super) fn run_body(name: &str, sha: &Sha, status: &CommitStatus) -> serde_json::Value {
    let (state, conclusion) = match status.state {
        CommitState::Pending if status.target_url.is_some() => ("in_progress", None),
        CommitState::Pending => ("queued", None),
        CommitState::Success => ("completed", Some("success")),
        CommitState::Failure | CommitState::Error => ("completed", Some("failure")),
        CommitState::Cancelled => ("completed", Some("cancelled")),
    };
    let summary = if status.summary.is_empty() {
        status.description.clone()
    } else {
        status.summary.clone()
    };
    let mut body = json!({
        "name": name,
        "head_sha": sha.as_str(),
        "status": state,
        "output": {
            "title": bounded(&status.description, 1000),
            "summary": bounded(&summary, OUTPUT_MAX_CHARS),
        },
    });
    if let Some(conclusion) = conclusion {
        body["conclusion"] = json!(conclusion);
    }
    if let Some(url) = &status.target_url {
        body["details_url"] = json!(url);
    }
    body
}

fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_string(),
        None => s.to_string(),
    }
}

impl GitHub {
    /// Creates or updates sluice's check run on `sha`.
    pub(super) async fn write_check_run(
        &self,
        repo: &RepoName,
        sha: &Sha,
        status: &CommitStatus,
    ) -> Result<(), ForgeError> {
        let body = run_body(&self.status_context, sha, status);
        let key = (repo.clone(), sha.clone());
        let known = self.run_ids().get(&key).copied();
        let id = match known {
            Some(id) => Some(id),
            None => self.find_check_run(repo, sha).await?,
        };
        if let Some(id) = id {
            let path = format!("{}/check-runs/{id}", repo_path(repo));
            let what = format!("PATCH {path}");
            let reply = self.call(Method::PATCH, &path, Some(&body)).await?;
            // A run deleted meanwhile (or forgotten by GitHub): make a new one.
            if reply.status != StatusCode::NOT_FOUND {
                reply.expect_success(&what)?;
                self.remember_run(key, id);
                return Ok(());
            }
        }
        let path = format!("{}/check-runs", repo_path(repo));
        let what = format!("POST {path}");
        let run: Run = self
            .call(Method::POST, &path, Some(&body))
            .await?
            .expect_success(&what)?
            .decode(&what)?;
        self.remember_run(key, run.id);
        Ok(())
    }

    /// The id of sluice's newest check run on `sha`, if it has one.
    async fn find_check_run(&self, repo: &RepoName, sha: &Sha) -> Result<Option<u64>, ForgeError> {
        let path = format!(
            "{}/commits/{sha}/check-runs?check_name={}&filter=latest&per_page=1",
            repo_path(repo),
            super::enc(&self.status_context)
        );
        let what = format!("GET {path}");
        let reply = self.call(Method::GET, &path, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let runs: Runs = reply.expect_success(&what)?.decode(&what)?;
        Ok(runs.check_runs.first().map(|r| r.id))
    }

    fn run_ids(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(RepoName, Sha), u64>> {
        self.check_run_ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_run(&self, key: (RepoName, Sha), id: u64) {
        let mut ids = self.run_ids();
        if ids.len() >= RUN_IDS && !ids.contains_key(&key) {
            // Forgetting costs one lookup; no order is kept for this.
            if let Some(any) = ids.keys().next().cloned() {
                ids.remove(&any);
            }
        }
        ids.insert(key, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: CommitState, url: Option<&str>) -> CommitStatus {
        CommitStatus {
            state,
            description: "2nd in the train for main".into(),
            target_url: url.map(str::to_string),
            summary: "What stands between this PR and landing:\n\n- 2nd".into(),
        }
    }

    #[test]
    fn statuses_map_to_check_run_states_and_an_error_never_passes() {
        let sha = Sha::parse(&"a".repeat(40)).unwrap();
        let body = |s| run_body("sluice", &sha, &s);
        let queued = body(status(CommitState::Pending, None));
        assert_eq!(queued["status"], "queued");
        assert!(queued.get("conclusion").is_none());
        let running = body(status(CommitState::Pending, Some("http://x/b/")));
        assert_eq!(running["status"], "in_progress");
        assert_eq!(running["details_url"], "http://x/b/");
        let passed = body(status(CommitState::Success, Some("http://x/b/")));
        assert_eq!(
            (passed["status"].as_str(), passed["conclusion"].as_str()),
            (Some("completed"), Some("success"))
        );
        for state in [CommitState::Failure, CommitState::Error] {
            assert_eq!(body(status(state, None))["conclusion"], "failure");
        }
        let stopped = body(status(CommitState::Cancelled, Some("http://x/b/")));
        assert_eq!(
            (stopped["status"].as_str(), stopped["conclusion"].as_str()),
            (Some("completed"), Some("cancelled"))
        );
        assert_eq!(queued["output"]["title"], "2nd in the train for main");
        assert!(
            queued["output"]["summary"]
                .as_str()
                .unwrap()
                .starts_with("What stands")
        );
        let huge = CommitStatus {
            summary: "é".repeat(70_000),
            ..status(CommitState::Failure, None)
        };
        let cut = body(huge)["output"]["summary"]
            .as_str()
            .unwrap()
            .chars()
            .count();
        assert_eq!(cut, OUTPUT_MAX_CHARS);
    }
}
