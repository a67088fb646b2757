//! Check runs through the API (`checks/create`, `checks/update`,
//! `checks/get`, `checks/list-for-ref`), validated as GitHub's description
//! says, their `check_run` webhooks, and what a test reads of them.
//!
//! Only an App's installation token may create or update a check run
//! (GitHub: "To create a check run, you must use a GitHub App"), and only
//! the App that created a run may update it.

use super::apps::{Caller, NOT_ACCESSIBLE};
use super::server::{json_object, required_str};
use super::state::{CheckOutput, CheckRunRec};
use super::{FakeHub, HttpError, Inner, http_err, shapes};
use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

/// What an answer of these endpoints is: status and body, or an error.
pub(crate) type Answer = Result<(u16, Value), HttpError>;

const STATUSES: &[&str] = &[
    "queued",
    "in_progress",
    "completed",
    "waiting",
    "requested",
    "pending",
];
const ACTIONS_ONLY: &[&str] = &["waiting", "requested", "pending"];
const CONCLUSIONS: &[&str] = &[
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
];
/// The most characters an output's `summary` or `text` may have.
pub const OUTPUT_MAX_CHARS: usize = 65535;

/// GitHub's 403 for a check run written with anything but an App's
/// installation token.
pub const APPS_ONLY: &str = "You must authenticate via a GitHub App.";

/// A check run as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRunView {
    pub id: u64,
    pub name: String,
    pub head_sha: String,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    pub conclusion: Option<String>,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub text: Option<String>,
    pub details_url: Option<String>,
    pub external_id: Option<String>,
    /// The App that created it; None for one [`FakeHub::report_check_run`]
    /// reported.
    pub app_id: Option<u64>,
    /// The run after its creation and after each update, oldest first.
    pub history: Vec<CheckRunState>,
}

/// What a check run said after one create or update call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRunState {
    pub name: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub text: Option<String>,
    pub details_url: Option<String>,
}

fn view(c: &CheckRunRec) -> CheckRunView {
    CheckRunView {
        id: c.id,
        name: c.name.clone(),
        head_sha: c.head_sha.clone(),
        status: c.status.clone(),
        conclusion: c.conclusion.clone(),
        title: c.output.title.clone(),
        summary: c.output.summary.clone(),
        text: c.output.text.clone(),
        details_url: c.details_url.clone(),
        external_id: c.external_id.clone(),
        app_id: c.app_id,
        history: c
            .history
            .iter()
            .map(|s| CheckRunState {
                name: s.name.clone(),
                status: s.status.clone(),
                conclusion: s.conclusion.clone(),
                title: s.output.title.clone(),
                summary: s.output.summary.clone(),
                text: s.output.text.clone(),
                details_url: s.details_url.clone(),
            })
            .collect(),
    }
}

fn invalid(detail: &str) -> HttpError {
    http_err(422, &format!("Invalid request.\n\n{detail}"))
}

fn opt_str(map: &Map<String, Value>, key: &str) -> Result<Option<String>, HttpError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(&format!(
            "For 'properties/{key}', {other} is not a string."
        ))),
    }
}

fn member(key: &str, value: Option<String>, of: &[&str]) -> Result<Option<String>, HttpError> {
    match value {
        Some(v) if !of.contains(&v.as_str()) => {
            let list: Vec<String> = of.iter().map(|s| format!("{s:?}")).collect();
            Err(invalid(&format!(
                "For 'properties/{key}', {v:?} is not a member of [{}].",
                list.join(", ")
            )))
        }
        v => Ok(v),
    }
}

/// An optional ISO 8601 time, as `YYYY-MM-DDTHH:MM:SSZ`.
fn opt_time(map: &Map<String, Value>, key: &str) -> Result<Option<String>, HttpError> {
    let Some(s) = opt_str(map, key)? else {
        return Ok(None);
    };
    match chrono::DateTime::parse_from_rfc3339(&s) {
        Ok(t) => Ok(Some(
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        )),
        Err(_) => Err(invalid(&format!(
            "For 'properties/{key}', {s:?} is not a valid date-time."
        ))),
    }
}

/// The `output` object: on create `title` and `summary` are required, on
/// update `summary` (as the description's schemas say).
fn opt_output(map: &Map<String, Value>, create: bool) -> Result<Option<CheckOutput>, HttpError> {
    let o = match map.get("output") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(invalid(&format!(
                "For 'properties/output', {other} is not an object."
            )));
        }
    };
    let out = CheckOutput {
        title: opt_str(o, "title")?,
        summary: opt_str(o, "summary")?,
        text: opt_str(o, "text")?,
    };
    let missing: Vec<&str> = [
        ("title", create && out.title.is_none()),
        ("summary", out.summary.is_none()),
    ]
    .iter()
    .filter(|(_, m)| *m)
    .map(|(k, _)| *k)
    .collect();
    match missing.as_slice() {
        [] => {}
        [one] => return Err(invalid(&format!("\"{one}\" wasn't supplied."))),
        _ => return Err(invalid("\"title\", \"summary\" weren't supplied.")),
    }
    for s in [&out.summary, &out.text].into_iter().flatten() {
        let n = s.chars().count();
        if n > OUTPUT_MAX_CHARS {
            return Err(invalid(&format!(
                "Only {OUTPUT_MAX_CHARS} characters are allowed; {n} were supplied."
            )));
        }
    }
    Ok(Some(out))
}

/// The status and conclusion a request asks for, checked: a conclusion
/// makes the run `completed`; `completed` (or a `completed_at`) needs a
/// conclusion; only GitHub Actions sets `waiting`, `requested` or
/// `pending`, only GitHub `stale`.
fn status_and_conclusion(
    map: &Map<String, Value>,
) -> Result<(Option<String>, Option<String>), HttpError> {
    let status = member("status", opt_str(map, "status")?, STATUSES)?;
    let conclusion = member("conclusion", opt_str(map, "conclusion")?, CONCLUSIONS)?;
    if let Some(s) = status.as_deref()
        && ACTIONS_ONLY.contains(&s)
    {
        return Err(invalid(&format!(
            "Only GitHub Actions can set a status of waiting, pending, or requested ({s:?} was given)."
        )));
    }
    if conclusion.as_deref() == Some("stale") {
        return Err(invalid(
            "You cannot set a conclusion of \"stale\": only GitHub can.",
        ));
    }
    let completing = status.as_deref() == Some("completed") || map.contains_key("completed_at");
    if completing && conclusion.is_none() {
        return Err(invalid("\"conclusion\" wasn't supplied."));
    }
    let status = if conclusion.is_some() {
        Some("completed".to_string())
    } else {
        status
    };
    Ok((status, conclusion))
}

impl Inner {
    /// The App of an installation token, or GitHub's 403 for anyone else.
    fn writing_app(&self, caller: &Caller) -> Result<u64, HttpError> {
        match self.actor(caller) {
            (_, Some(app_id)) => Ok(app_id),
            _ => Err(http_err(403, APPS_ONLY)),
        }
    }

    /// A `check_run` event body for run `id` of `repo`.
    fn check_run_event(&self, repo: &str, id: u64, action: &str, sender: &str) -> Option<Value> {
        let st = self.state.lock().expect("state");
        let r = st.repos.get(repo)?;
        let c = r.check_runs.iter().find(|c| c.id == id)?;
        let app = c.app_id.and_then(|a| st.apps.get(&a));
        let u = self.urls();
        Some(json!({
            "action": action,
            "check_run": shapes::check_run(&u, r, c, app, true),
            "repository": shapes::repository(&u, r),
            "sender": shapes::user(&u, sender),
        }))
    }

    fn check_run_answer(&self, repo: &str, id: u64, status: u16) -> Answer {
        let st = self.state.lock().expect("state");
        let r = st.repos.get(repo).ok_or(http_err(404, "Not Found"))?;
        let c = r
            .check_runs
            .iter()
            .find(|c| c.id == id)
            .ok_or(http_err(404, "Not Found"))?;
        let app = c.app_id.and_then(|a| st.apps.get(&a));
        Ok((status, shapes::check_run(&self.urls(), r, c, app, false)))
    }

    /// `POST /repos/{repo}/check-runs`; sends `check_run` `created`.
    pub(crate) async fn create_check_run(
        &self,
        caller: &Caller,
        repo: &str,
        body: &[u8],
    ) -> Answer {
        let app_id = self.writing_app(caller)?;
        let (bot, _) = self.actor(caller);
        let req = json_object(body)?;
        let name = required_str(&req, "name")?.to_string();
        let head_sha = required_str(&req, "head_sha")?.to_string();
        let (status, conclusion) = status_and_conclusion(&req)?;
        let details_url = opt_str(&req, "details_url")?;
        let external_id = opt_str(&req, "external_id")?;
        let started_at = opt_time(&req, "started_at")?;
        let completed_at = opt_time(&req, "completed_at")?;
        let output = opt_output(&req, true)?.unwrap_or_default();
        let no_commit = || http_err(422, &format!("No commit found for SHA: {head_sha}"));
        let hex = !head_sha.is_empty() && head_sha.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            return Err(no_commit());
        }
        let g = self.git(repo).map_err(|_| http_err(404, "Not Found"))?;
        let sha = g
            .rev_parse(&head_sha)
            .await
            .ok()
            .flatten()
            .ok_or_else(no_commit)?;
        let id = {
            let mut st = self.state.lock().expect("state");
            let id = st.fresh_id() + 4_000_000_000;
            let r = st.repos.get_mut(repo).ok_or(http_err(404, "Not Found"))?;
            let now = shapes::now_iso();
            let status = status.unwrap_or_else(|| "queued".into());
            let completed_at = (status == "completed").then(|| completed_at.unwrap_or(now.clone()));
            let mut rec = CheckRunRec {
                id,
                head_sha: sha.to_ascii_lowercase(),
                name,
                status,
                conclusion,
                started_at: started_at.unwrap_or(now),
                completed_at,
                app_id: Some(app_id),
                details_url,
                external_id,
                output,
                history: Vec::new(),
            };
            rec.history.push(rec.snapshot());
            r.check_runs.push(rec);
            id
        };
        if let Some(event) = self.check_run_event(repo, id, "created", &bot) {
            self.enqueue("check_run", event);
        }
        self.check_run_answer(repo, id, 201)
    }

    /// `PATCH /repos/{repo}/check-runs/{id}`; sends `check_run` `completed`
    /// when the run becomes completed.
    pub(crate) fn update_check_run(
        &self,
        caller: &Caller,
        repo: &str,
        id: u64,
        body: &[u8],
    ) -> Answer {
        let app_id = self.writing_app(caller)?;
        let (bot, _) = self.actor(caller);
        let req = json_object(body)?;
        let name = opt_str(&req, "name")?;
        let (status, conclusion) = status_and_conclusion(&req)?;
        let details_url = opt_str(&req, "details_url")?;
        let external_id = opt_str(&req, "external_id")?;
        let started_at = opt_time(&req, "started_at")?;
        let completed_at = opt_time(&req, "completed_at")?;
        let output = opt_output(&req, false)?;
        let completed = {
            let mut st = self.state.lock().expect("state");
            let r = st.repos.get_mut(repo).ok_or(http_err(404, "Not Found"))?;
            let c = r
                .check_runs
                .iter_mut()
                .find(|c| c.id == id)
                .ok_or(http_err(404, "Not Found"))?;
            if c.app_id != Some(app_id) {
                return Err(http_err(403, NOT_ACCESSIBLE));
            }
            let was_completed = c.status == "completed";
            if let Some(name) = name {
                c.name = name;
            }
            if details_url.is_some() {
                c.details_url = details_url;
            }
            if external_id.is_some() {
                c.external_id = external_id;
            }
            if let Some(t) = started_at {
                c.started_at = t;
            }
            if let Some(status) = status {
                if status != "completed" {
                    c.conclusion = None;
                    c.completed_at = None;
                }
                c.status = status;
            }
            if conclusion.is_some() {
                c.conclusion = conclusion;
                c.completed_at = Some(completed_at.unwrap_or_else(shapes::now_iso));
            }
            if let Some(o) = output {
                if o.title.is_some() {
                    c.output.title = o.title;
                }
                c.output.summary = o.summary;
                if o.text.is_some() {
                    c.output.text = o.text;
                }
            }
            let snapshot = c.snapshot();
            c.history.push(snapshot);
            !was_completed && c.status == "completed"
        };
        if completed && let Some(event) = self.check_run_event(repo, id, "completed", &bot) {
            self.enqueue("check_run", event);
        }
        self.check_run_answer(repo, id, 200)
    }

    /// `GET /repos/{repo}/check-runs/{id}`.
    pub(crate) fn get_check_run(&self, repo: &str, id: u64) -> Answer {
        self.check_run_answer(repo, id, 200)
    }

    /// `GET /repos/{repo}/commits/{ref}/check-runs`: the runs on the
    /// commit `reference` names (a sha or a branch), newest first, after
    /// the `check_name`, `status`, `app_id` and `filter` (`latest`, the
    /// default: the newest run of each name; `all`) parameters.
    pub(crate) async fn list_check_runs(
        &self,
        repo: &str,
        reference: &str,
        q: &[(String, String)],
    ) -> Result<Vec<Value>, HttpError> {
        let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let filter = param("filter").unwrap_or("latest");
        if !matches!(filter, "latest" | "all") {
            return Err(invalid(&format!(
                "For 'filter', {filter:?} is not a member of [\"latest\", \"all\"]."
            )));
        }
        let status = param("status");
        if let Some(s) = status
            && !matches!(s, "queued" | "in_progress" | "completed")
        {
            return Err(invalid(&format!(
                "For 'status', {s:?} is not a member of [\"queued\", \"in_progress\", \"completed\"]."
            )));
        }
        let app_id = match param("app_id").map(str::parse::<u64>).transpose() {
            Ok(a) => a,
            Err(_) => return Err(invalid("For 'app_id', it is not an integer.")),
        };
        let g = self.git(repo).map_err(|_| http_err(404, "Not Found"))?;
        let sha = match g.branch(reference).await {
            Ok(Some(sha)) => Some(sha),
            _ => g.rev_parse(reference).await.ok().flatten(),
        }
        .ok_or_else(|| http_err(422, &format!("No commit found for SHA: {reference}")))?;
        let st = self.state.lock().expect("state");
        let r = st.repos.get(repo).ok_or(http_err(404, "Not Found"))?;
        let mut seen: Vec<&str> = Vec::new();
        let u = self.urls();
        let mut out = Vec::new();
        for c in r
            .check_runs
            .iter()
            .rev()
            .filter(|c| c.head_sha.eq_ignore_ascii_case(&sha))
        {
            if filter == "latest" {
                if seen.contains(&c.name.as_str()) {
                    continue;
                }
                seen.push(&c.name);
            }
            if param("check_name").is_some_and(|n| n != c.name)
                || status.is_some_and(|s| s != c.status)
                || app_id.is_some_and(|a| Some(a) != c.app_id)
            {
                continue;
            }
            let app = c.app_id.and_then(|a| st.apps.get(&a));
            out.push(shapes::check_run(&u, r, c, app, false));
        }
        Ok(out)
    }
}

impl FakeHub {
    /// Every check run on `sha` (full, any case), oldest first: those
    /// created through the API and those [`FakeHub::report_check_run`]
    /// reported, each with its history of updates.
    pub fn check_runs(&self, repo: &str, sha: &str) -> Vec<CheckRunView> {
        let st = self.inner.state.lock().expect("state");
        st.repos
            .get(repo)
            .map(|r| {
                r.check_runs
                    .iter()
                    .filter(|c| c.head_sha.eq_ignore_ascii_case(sha))
                    .map(view)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One check run by id.
    pub fn check_run(&self, repo: &str, id: u64) -> Option<CheckRunView> {
        let st = self.inner.state.lock().expect("state");
        st.repos
            .get(repo)?
            .check_runs
            .iter()
            .find(|c| c.id == id)
            .map(view)
    }

    /// `sender` clicks "Re-run" on a check run of an App: sends `check_run`
    /// `rerequested` (GitHub sends it only to the App that created the
    /// run, so a run [`FakeHub::report_check_run`] reported is refused).
    pub fn rerequest_check_run(&self, repo: &str, id: u64, sender: &str) -> anyhow::Result<()> {
        let app_id = self
            .check_run(repo, id)
            .with_context(|| format!("no check run {id} in {repo}"))?
            .app_id;
        if app_id.is_none() {
            bail!(
                "check run {id} was reported by another app: GitHub sends `rerequested` only to the app that created it"
            );
        }
        let event = self
            .inner
            .check_run_event(repo, id, "rerequested", sender)
            .context("the check run is gone")?;
        self.inner.enqueue("check_run", event);
        Ok(())
    }
}
