//! What other checks reported on a car before it lands: a protected branch
//! may require checks besides sluice's (a CI that runs on pushes to
//! `sluice/**`), and GitHub refuses the fast-forward until each succeeded.
//!
//! - `GET /repos/{o}/{r}/commits/{sha}/status`: the combined status, whose
//!   `statuses` hold the latest status of each context.
//! - `GET /repos/{o}/{r}/commits/{sha}/check-runs`: `{total_count,
//!   check_runs}`, the latest run of each name; `status` is `queued`,
//!   `in_progress`, `completed`, ...; `conclusion` is `null` until
//!   completed. A 404 (no Checks API, as on old GitHub Enterprise) is none.
//!
//! Both are conditional GETs: sluice polls them while a landing waits, and
//! GitHub does not count a `304`.

use super::{GitHub, repo_path};
use crate::core::{RepoName, Sha};
use crate::forge::{CheckReport, CheckState, ForgeError};

#[derive(serde::Deserialize)]
struct CombinedStatus {
    #[serde(default)]
    statuses: Vec<StatusBody>,
}

#[derive(serde::Deserialize)]
struct StatusBody {
    context: String,
    state: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(serde::Deserialize)]
struct CheckRuns {
    #[serde(default)]
    check_runs: Vec<CheckRunBody>,
}

#[derive(serde::Deserialize)]
struct CheckRunBody {
    name: String,
    status: String,
    conclusion: Option<String>,
    #[serde(default)]
    output: Option<CheckOutput>,
}

#[derive(serde::Deserialize)]
struct CheckOutput {
    #[serde(default)]
    title: Option<String>,
}

fn status_state(state: &str) -> CheckState {
    match state {
        "success" => CheckState::Passed,
        "pending" => CheckState::Pending,
        // "failure", "error"
        _ => CheckState::Failed,
    }
}

fn run_state(status: &str, conclusion: Option<&str>) -> CheckState {
    match (status, conclusion) {
        ("completed", Some("success" | "neutral" | "skipped")) => CheckState::Passed,
        ("completed", _) => CheckState::Failed,
        _ => CheckState::Pending,
    }
}

impl GitHub {
    pub(super) async fn checks_of(
        &self,
        repo: &RepoName,
        sha: &Sha,
    ) -> Result<Vec<CheckReport>, ForgeError> {
        let path = format!("{}/commits/{}/status?per_page=100", repo_path(repo), sha);
        let what = format!("GET {}/commits/{}/status", repo_path(repo), sha);
        let mut reports: Vec<CheckReport> = self
            .get_cached(&path, |reply| {
                if !reply.status.is_success() {
                    return Err(reply.error(&what));
                }
                let body: CombinedStatus = reply.decode(&what)?;
                Ok(body
                    .statuses
                    .into_iter()
                    .map(|s| CheckReport {
                        state: status_state(&s.state),
                        context: s.context,
                        description: s.description.unwrap_or_default(),
                    })
                    .collect::<Vec<_>>())
            })
            .await?
            .value;
        let path = format!(
            "{}/commits/{}/check-runs?per_page=100",
            repo_path(repo),
            sha
        );
        let what = format!("GET {}/commits/{}/check-runs", repo_path(repo), sha);
        let runs: Vec<CheckReport> = self
            .get_cached(&path, |reply| {
                if reply.status.as_u16() == 404 {
                    return Ok(Vec::new());
                }
                if !reply.status.is_success() {
                    return Err(reply.error(&what));
                }
                let body: CheckRuns = reply.decode(&what)?;
                Ok(body
                    .check_runs
                    .into_iter()
                    .map(|r| CheckReport {
                        state: run_state(&r.status, r.conclusion.as_deref()),
                        description: r.output.and_then(|o| o.title).unwrap_or_default(),
                        context: r.name,
                    })
                    .collect::<Vec<_>>())
            })
            .await?
            .value;
        // A status and a check run of one name: the status wins only if the
        // run has not reported (GitHub requires the name to pass either way).
        for run in runs {
            match reports.iter_mut().find(|r| r.context == run.context) {
                Some(r) if r.state != CheckState::Passed => *r = run,
                Some(_) => {}
                None => reports.push(run),
            }
        }
        Ok(reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_runs_pass_as_protected_branches_count_them() {
        assert_eq!(run_state("completed", Some("success")), CheckState::Passed);
        assert_eq!(run_state("completed", Some("skipped")), CheckState::Passed);
        assert_eq!(run_state("completed", Some("neutral")), CheckState::Passed);
        assert_eq!(
            run_state("completed", Some("timed_out")),
            CheckState::Failed
        );
        assert_eq!(run_state("completed", None), CheckState::Failed);
        assert_eq!(run_state("in_progress", None), CheckState::Pending);
        assert_eq!(run_state("queued", None), CheckState::Pending);
        assert_eq!(status_state("error"), CheckState::Failed);
        assert_eq!(status_state("pending"), CheckState::Pending);
    }

    #[test]
    fn the_documented_combined_status_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/github-api/repos__get-combined-status-for-ref.response.200.default.json"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            panic!("{path} is missing");
        };
        let body: CombinedStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(body.statuses.len(), 2);
        assert_eq!(body.statuses[0].context, "continuous-integration/jenkins");
        assert_eq!(status_state(&body.statuses[0].state), CheckState::Passed);
    }
}
