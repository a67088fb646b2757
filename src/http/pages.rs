//! The pages people read: the dashboard (`/`), a page per PR
//! (`/pr/<owner>/<name>/<number>`) and history search (`/search`).
//!
//! Server-rendered with askama (`templates/`; everything is escaped unless a
//! template says `|safe`, which only the dashboard's own script does), one
//! inline stylesheet and, on the dashboard, one small inline script that
//! follows `/events` and swaps the page's `<main>` in place. Every page works
//! without JavaScript (reload it). A Content-Security-Policy lets only that
//! script run, so even a title that slipped through escaping could not.
//!
//! Each page is built from the state in two steps: a model taken under the
//! read locks (cheap: at 10,000 PRs it counts them and keeps one page), then
//! rendered after the locks are let go.

use super::HttpContext;
use crate::core::{
    BuildId, Candidate, HistoryEntry, PhaseCounts, PrKey, RepoName, ResultKey, State, Timestamp,
};
use crate::results::ResultsStore;
use crate::runtime::history::{History, HistoryFilter, kind_of};
use askama::Template;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

/// Waiting PRs per dashboard page.
pub const WAITING_PER_PAGE: usize = 100;
/// Landed and ejected PRs the dashboard shows (newest first).
pub const RECENT: usize = 20;
/// History entries a search page shows.
pub const SEARCH_PER_PAGE: usize = 100;
/// Cars shown per train (the first ones: they land next).
pub const CARS_SHOWN: usize = 100;

/// The dashboard's script: on any event of `/events`, debounced, fetch the
/// page again and swap its `<main id="dashboard">`. Without `/events` (an
/// older sluice, a proxy that drops it) it looks again every 10 s.
pub const SCRIPT: &str = r#"
(function () {
  "use strict";
  if (!window.fetch || !window.DOMParser) { return; }
  var timer = null, busy = false, again = false;
  function refresh() {
    timer = null;
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { cache: "no-store", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("dashboard");
        var main = document.getElementById("dashboard");
        if (fresh && main) { main.innerHTML = fresh.innerHTML; }
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; soon(); } });
  }
  function soon() { if (!timer) { timer = setTimeout(refresh, 300); } }
  function poll() { setTimeout(function () { refresh(); follow(); }, 10000); }
  function follow() {
    if (!window.EventSource) { poll(); return; }
    var source = new EventSource("/events");
    source.onmessage = soon;
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) { poll(); }
    };
  }
  window.__sluiceRefresh = soon;
  follow();
})();
"#;

/// `script-src` allows exactly [`SCRIPT`], by its hash.
static CSP: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(SCRIPT));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
         frame-ancestors 'none'"
    )
});

/// Why a page cannot be shown: a 400, 404 or 500 page with the words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageError {
    BadRequest(String),
    NotFound(String),
    /// A template failed to render (a bug).
    Internal(String),
}

/// The routes of the pages; `with` gives each the context. A wrong method
/// is rejected as 405 (the JSON answer of the other endpoints).
pub fn routes<F>(with: F) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone
where
    F: Filter<Extract = (Arc<HttpContext>,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let dashboard = warp::path::end()
        .and(warp::get())
        .and(query())
        .and(with.clone())
        .map(|query: Query, ctx: Arc<HttpContext>| {
            respond(query.and_then(|q| dashboard_of(&ctx, &q)))
        });
    let pr = warp::path!("pr" / String / String / String)
        .and(warp::get())
        .and(with.clone())
        .map(
            |owner: String, name: String, number: String, ctx: Arc<HttpContext>| {
                respond(pr_of(&ctx, &owner, &name, &number))
            },
        );
    let search = warp::path!("search")
        .and(warp::get())
        .and(query())
        .and(with)
        .map(|query: Query, ctx: Arc<HttpContext>| search_of(&ctx, query));
    dashboard.or(pr).unify().or(search).unify()
}

/// The query's parameters in order, or why it cannot be read.
type Query = Result<Vec<(String, String)>, PageError>;

fn query() -> impl Filter<Extract = (Query,), Error = Infallible> + Clone {
    warp::query::<Vec<(String, String)>>()
        .map(Ok)
        .or(warp::any().map(|| Err(PageError::BadRequest("malformed query string".into()))))
        .unify()
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = warp::reply::with_status(warp::reply::html(body), status).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("content-security-policy", CSP.as_str()),
    ] {
        if let Ok(value) = warp::http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    response
}

fn respond(page: Result<String, PageError>) -> Response {
    match page {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => error_response(&e),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: &'a str,
    message: &'a str,
}

/// The 400 or 404 page for `error`.
pub fn error_response(error: &PageError) -> Response {
    let (status, message) = match error {
        PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
        PageError::NotFound(m) => (StatusCode::NOT_FOUND, m),
        PageError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
    };
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let body = ErrorPage {
        status: &title,
        message,
    }
    .render()
    .unwrap_or_else(|_| title.clone());
    html(status, body)
}

fn rendered(page: impl Template) -> Result<String, PageError> {
    // Rendering writes into a String: it fails only if a value's Display
    // does, which none of these do.
    page.render()
        .map_err(|e| PageError::Internal(format!("cannot render the page: {e}")))
}

// ---------------------------------------------------------------- words

/// A UTC time for people: `2026-12-02 18:14:49 UTC`.
pub fn when(at: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(at.0 as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// A duration for people: `45 s`, `3 min 20 s`, `2 h 5 min`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 if secs.is_multiple_of(60) => format!("{} min", secs / 60),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// Where the page of a PR is.
pub fn pr_href(repo: &RepoName, number: u64) -> String {
    format!("/pr/{}/{}/{number}", repo.owner(), repo.name())
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// The link of an entry's build, if it has one.
fn entry_link(results: &dyn ResultsStore, entry: &HistoryEntry) -> Option<String> {
    crate::runtime::history::with_link(results, entry)
        .get("link")
        .and_then(|l| l.as_str())
        .map(str::to_string)
}

fn entry_at(entry: &HistoryEntry) -> Timestamp {
    match entry {
        HistoryEntry::BuildFinished { report, .. } => report.finished_at,
        HistoryEntry::BuildCancelled { at, .. }
        | HistoryEntry::Merged { at, .. }
        | HistoryEntry::Ejected { at, .. }
        | HistoryEntry::BranchMode { at, .. }
        | HistoryEntry::SuspectedFlake { at, .. }
        | HistoryEntry::Retried { at, .. } => *at,
    }
}

/// The commit an entry is about: the landed commit, the car, the PR's head.
fn entry_sha(entry: &HistoryEntry) -> String {
    match entry {
        HistoryEntry::BuildFinished { candidate, .. }
        | HistoryEntry::BuildCancelled { candidate, .. } => candidate
            .car
            .as_ref()
            .or(candidate.prs.last().map(|p| &p.head_sha))
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        HistoryEntry::Merged { merge_sha, .. } => merge_sha.as_str().to_string(),
        HistoryEntry::Ejected { head, .. } | HistoryEntry::Retried { head, .. } => {
            head.as_str().to_string()
        }
        HistoryEntry::SuspectedFlake { car, .. } => car.as_str().to_string(),
        HistoryEntry::BranchMode { .. } => String::new(),
    }
}

/// The PR an entry is about (a build's: the PR whose results hold it).
fn entry_pr(entry: &HistoryEntry) -> Option<PrKey> {
    match entry {
        HistoryEntry::BuildFinished { candidate, .. }
        | HistoryEntry::BuildCancelled { candidate, .. } => candidate.results_pr().map(|p| PrKey {
            repo: candidate.repo.clone(),
            number: p.number,
        }),
        HistoryEntry::Merged { pr, .. }
        | HistoryEntry::Ejected { pr, .. }
        | HistoryEntry::SuspectedFlake { pr, .. }
        | HistoryEntry::Retried { pr, .. } => Some(pr.clone()),
        HistoryEntry::BranchMode { .. } => None,
    }
}

/// What a build tested, in words.
fn tested(candidate: &Candidate) -> String {
    let prs: Vec<String> = candidate
        .prs
        .iter()
        .map(|p| format!("#{}", p.number))
        .collect();
    match &candidate.car {
        Some(car) => format!(
            "car {} ({} on {}@{})",
            short(car.as_str()),
            prs.join(", "),
            candidate.target_branch,
            short(candidate.target_sha.as_str())
        ),
        None => format!(
            "{} head {} merged with {}@{}",
            prs.join(", "),
            candidate
                .prs
                .last()
                .map(|p| short(p.head_sha.as_str()))
                .unwrap_or(""),
            candidate.target_branch,
            short(candidate.target_sha.as_str())
        ),
    }
}

/// An entry in words, as the PR page and the search list say it.
fn entry_text(entry: &HistoryEntry) -> String {
    match entry {
        HistoryEntry::BuildFinished {
            build,
            candidate,
            report,
            current,
        } => {
            let train = if candidate.car.is_some() {
                "in the train: "
            } else {
                ""
            };
            let stale = if *current {
                ""
            } else {
                " (stale: no longer what would land; recorded only)"
            };
            let outcome = serde_json::to_value(report.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!(
                "{train}build {build} of {} {outcome}: {}{stale}",
                tested(candidate),
                report.detail
            )
        }
        HistoryEntry::BuildCancelled {
            build,
            candidate,
            why,
            ..
        } => format!("build {build} of {} cancelled: {why}", tested(candidate)),
        HistoryEntry::Merged {
            title,
            pair,
            merge_sha,
            approvers,
            ..
        } => format!(
            "landed as {} (\u{2068}{title}\u{2069}; tested head {} on {}; approved by {})",
            merge_sha.as_str(),
            short(pair.head.as_str()),
            short(pair.target.as_str()),
            if approvers.is_empty() {
                "nobody (none required)".to_string()
            } else {
                approvers.join(", ")
            }
        ),
        HistoryEntry::Ejected { stage, message, .. } => {
            format!("left the train ({stage}): {message}")
        }
        HistoryEntry::BranchMode {
            repo,
            branch,
            from,
            to,
            ..
        } => format!("{repo} {branch}: {} → {}", from.as_str(), to.as_str()),
        HistoryEntry::SuspectedFlake { build, car, .. } => format!(
            "build {build} failed on car {}, and a car behind it with the same PRs passed: taken for a flake",
            short(car.as_str())
        ),
        HistoryEntry::Retried { message, .. } => format!("tried again: {message}"),
    }
}

// ------------------------------------------------------------ dashboard

struct BuildLink {
    label: String,
    href: String,
}

struct TrainRow {
    repo: String,
    branch: String,
    state: &'static str,
    failure_rate: String,
    mean_test: Option<String>,
    base: Option<String>,
    plan: Option<String>,
    landing: Option<String>,
    blocked: Option<String>,
    cars: Vec<CarRow>,
    /// Cars behind the ones shown.
    more_cars: usize,
}

struct CarRow {
    id: u64,
    pr: u64,
    pr_href: String,
    title: String,
    state: &'static str,
    sha: Option<String>,
    holds: String,
    build: Option<BuildLink>,
    elapsed: Option<String>,
    eta: Option<String>,
}

struct WaitingRow {
    repo: String,
    number: u64,
    pr_href: String,
    title: String,
    author: String,
    phase: &'static str,
    reason: String,
    build: Option<BuildLink>,
}

struct LandedRow {
    repo: String,
    number: u64,
    pr_href: String,
    title: String,
    sha: String,
    sha_short: String,
    build_href: String,
    when: String,
}

struct EjectedRow {
    repo: String,
    number: u64,
    pr_href: String,
    message: String,
    build_href: Option<String>,
    when: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct Dashboard {
    script: &'static str,
    now: String,
    trains: Vec<TrainRow>,
    tracked: usize,
    counts: Vec<(&'static str, usize)>,
    total_waiting: usize,
    waiting: Vec<WaitingRow>,
    page: usize,
    pages: usize,
    prev: Option<usize>,
    next: Option<usize>,
    landed: Vec<LandedRow>,
    ejected: Vec<EjectedRow>,
}

/// The page number of `?page=N` (1 when absent).
pub fn page_param(query: &[(String, String)]) -> Result<usize, PageError> {
    let mut page = 1;
    for (key, value) in query {
        match key.as_str() {
            "page" => {
                page = value
                    .parse::<usize>()
                    .ok()
                    .filter(|p| (1..=crate::runtime::history::MAX_PAGE).contains(p))
                    .ok_or_else(|| {
                        PageError::BadRequest(format!(
                            "page must be a number from 1, not {:?}",
                            value.chars().take(40).collect::<String>()
                        ))
                    })?;
            }
            other => {
                return Err(PageError::BadRequest(format!(
                    "unknown parameter {:?}; the dashboard takes page=N",
                    other.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    Ok(page)
}

impl Dashboard {
    /// The dashboard's model: the trains, the PRs counted by state and page
    /// `page` (from 1) of those waiting outside a train, and the latest
    /// landings and ejections. A page past the last shows none.
    pub fn build(
        state: &State,
        history: &History,
        results: &dyn ResultsStore,
        page: usize,
        now: Timestamp,
    ) -> Dashboard {
        let trains = state
            .queue_view()
            .into_iter()
            .map(|t| {
                let first = t.cars.first().map(|c| c.pr).unwrap_or_default();
                let cars = t
                    .cars
                    .iter()
                    .take(CARS_SHOWN)
                    .enumerate()
                    .map(|(at, c)| {
                        let holds = match at {
                            0 => format!("#{}", c.pr),
                            1 => format!("#{first}, #{}", c.pr),
                            _ => format!("#{first} … #{}, {} PRs", c.pr, at + 1),
                        };
                        let key = |build: &BuildId| ResultKey {
                            repo: t.repo.clone(),
                            pr: c.pr,
                            head: c.head_sha.clone(),
                            build: build.clone(),
                        };
                        CarRow {
                            id: c.id,
                            pr: c.pr,
                            pr_href: pr_href(&t.repo, c.pr),
                            title: c.title.clone(),
                            state: c.state,
                            sha: c.sha.as_ref().map(|s| short(s.as_str()).to_string()),
                            holds,
                            build: c.build.as_ref().map(|b| BuildLink {
                                label: b.to_string(),
                                href: results.link(&key(b)),
                            }),
                            elapsed: c
                                .build
                                .as_ref()
                                .filter(|_| c.state == "testing")
                                .and_then(|b| state.build_started_at(b))
                                .map(|at| duration(now.0.saturating_sub(at.0) / 1000)),
                            eta: c.eta_secs.map(duration),
                        }
                    })
                    .collect();
                TrainRow {
                    repo: t.repo.to_string(),
                    branch: t.branch.clone(),
                    state: t.state,
                    failure_rate: format!("{:.1}%", t.failure_rate * 100.0),
                    mean_test: t.mean_test_secs.map(duration),
                    base: t.base.as_ref().map(|s| short(s.as_str()).to_string()),
                    plan: t.plan.clone(),
                    landing: t.landing.as_ref().map(|s| short(s.as_str()).to_string()),
                    blocked: t.blocked.clone(),
                    more_cars: t.cars.len().saturating_sub(CARS_SHOWN),
                    cars,
                }
            })
            .collect();
        // One pass over the PRs, keeping only the waiting page's views.
        let mut counts = PhaseCounts::default();
        let mut tracked = 0;
        let mut total_waiting = 0usize;
        let first = (page - 1).saturating_mul(WAITING_PER_PAGE);
        let mut waiting = Vec::new();
        for view in state.pr_views_iter() {
            tracked += 1;
            counts.add(view.phase);
            if view.train_position.is_none() {
                if (first..first.saturating_add(WAITING_PER_PAGE)).contains(&total_waiting) {
                    waiting.push(view);
                }
                total_waiting += 1;
            }
        }
        let pages = total_waiting.div_ceil(WAITING_PER_PAGE).max(1);
        let waiting = waiting
            .into_iter()
            .map(|v| WaitingRow {
                pr_href: pr_href(&v.repo, v.number),
                repo: v.repo.to_string(),
                number: v.number,
                author: v.author,
                phase: v.phase.name(),
                reason: v.waiting_on.join("; "),
                build: v.build.map(|b| BuildLink {
                    label: format!("{} {}", b.id, b.state),
                    href: results.link(&b.result_key),
                }),
                title: v.title,
            })
            .collect();
        // The newest of each kind: a search clones only the page it keeps.
        let recent = |kind: &str| {
            history
                .search(&HistoryFilter {
                    kind: Some(kind.to_string()),
                    per_page: Some(RECENT),
                    ..HistoryFilter::default()
                })
                .map(|page| page.entries)
                .unwrap_or_default()
        };
        let landed = recent("merged")
            .iter()
            .filter_map(|entry| match entry {
                HistoryEntry::Merged {
                    pr,
                    title,
                    merge_sha,
                    at,
                    ..
                } => Some(LandedRow {
                    repo: pr.repo.to_string(),
                    number: pr.number,
                    pr_href: pr_href(&pr.repo, pr.number),
                    title: title.clone(),
                    sha: merge_sha.as_str().to_string(),
                    sha_short: short(merge_sha.as_str()).to_string(),
                    build_href: entry_link(results, entry).unwrap_or_default(),
                    when: when(*at),
                }),
                _ => None,
            })
            .collect();
        let ejected = recent("ejected")
            .iter()
            .filter_map(|entry| match entry {
                HistoryEntry::Ejected {
                    pr, message, at, ..
                } => Some(EjectedRow {
                    repo: pr.repo.to_string(),
                    number: pr.number,
                    pr_href: pr_href(&pr.repo, pr.number),
                    message: message.clone(),
                    build_href: entry_link(results, entry),
                    when: when(*at),
                }),
                _ => None,
            })
            .collect();
        Dashboard {
            script: SCRIPT,
            now: when(now),
            trains,
            tracked,
            counts: counts.iter().map(|(p, n)| (p.name(), n)).collect(),
            total_waiting,
            waiting,
            page,
            pages,
            prev: (page > 1).then(|| (page - 1).min(pages)),
            next: (page < pages).then_some(page + 1),
            landed,
            ejected,
        }
    }

    pub fn html(&self) -> Result<String, PageError> {
        rendered(self)
    }
}

fn dashboard_of(ctx: &HttpContext, query: &[(String, String)]) -> Result<String, PageError> {
    let page = page_param(query)?;
    let model = {
        let state = ctx.shared.state.read().unwrap_or_else(|e| e.into_inner());
        let history = ctx.shared.history.read().unwrap_or_else(|e| e.into_inner());
        Dashboard::build(&state, &history, &*ctx.results, page, crate::runtime::now())
    };
    model.html()
}

// -------------------------------------------------------------- PR page

struct BuildRow {
    id: String,
    href: String,
    what: String,
    outcome: String,
    detail: String,
    when: String,
}

struct HistoryRow {
    kind: &'static str,
    text: String,
    href: Option<String>,
    when: String,
}

#[derive(Template)]
#[template(path = "pr.html")]
pub struct PrPage {
    repo: String,
    number: u64,
    title: String,
    author: Option<String>,
    head_ref: Option<String>,
    head: Option<String>,
    target: String,
    phase: Option<&'static str>,
    explanation: String,
    builds: Vec<BuildRow>,
    history: Vec<HistoryRow>,
    approval: String,
    reviews: Vec<crate::core::ReviewView>,
}

impl PrPage {
    /// The page of `key`: what sluice tracks of it and what the history
    /// holds. A PR sluice no longer tracks (landed, closed) is shown from
    /// its history; one it never saw is not found.
    pub fn build(
        state: &State,
        history: &History,
        results: &dyn ResultsStore,
        key: &PrKey,
        now: Timestamp,
    ) -> Result<PrPage, PageError> {
        let entries = history.query(&HistoryFilter {
            repo: Some(key.repo.to_string()),
            pr: Some(key.number),
            ..HistoryFilter::default()
        });
        let view = state.pr_view_of(key);
        if view.is_none() && entries.is_empty() {
            return Err(PageError::NotFound(format!(
                "sluice does not track {key} and has no history of it"
            )));
        }
        let mut builds: Vec<BuildRow> = Vec::new();
        let mut seen: Vec<BuildId> = Vec::new();
        // Running builds first: its own check and its car's.
        let running = state.running_builds().filter(|b| {
            b.candidate.repo == key.repo && b.candidate.prs.iter().any(|p| p.number == key.number)
        });
        for build in running {
            if let Some(result_key) = build.candidate.results_key(&build.id) {
                seen.push(build.id.clone());
                builds.push(BuildRow {
                    id: build.id.to_string(),
                    href: results.link(&result_key),
                    what: tested(&build.candidate),
                    outcome: "running".into(),
                    detail: format!(
                        "for {}",
                        duration(now.0.saturating_sub(build.started_at.0) / 1000)
                    ),
                    when: when(build.started_at),
                });
            }
        }
        for entry in &entries {
            let (build, candidate, outcome, detail) = match entry {
                HistoryEntry::BuildFinished {
                    build,
                    candidate,
                    report,
                    current,
                } => (
                    build,
                    candidate,
                    serde_json::to_value(report.outcome)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    if *current {
                        report.detail.clone()
                    } else {
                        format!("{} (stale: recorded only)", report.detail)
                    },
                ),
                HistoryEntry::BuildCancelled {
                    build,
                    candidate,
                    why,
                    ..
                } => (build, candidate, "cancelled".to_string(), why.clone()),
                _ => continue,
            };
            if seen.contains(build) {
                continue;
            }
            seen.push(build.clone());
            builds.push(BuildRow {
                id: build.to_string(),
                href: entry_link(results, entry).unwrap_or_default(),
                what: tested(candidate),
                outcome,
                detail,
                when: when(entry_at(entry)),
            });
        }
        let history_rows = entries
            .iter()
            .map(|entry| HistoryRow {
                kind: kind_of(entry),
                text: entry_text(entry),
                href: entry_link(results, entry),
                when: when(entry_at(entry)),
            })
            .collect();
        let landed = entries.iter().find_map(|e| match e {
            HistoryEntry::Merged {
                merge_sha, title, ..
            } => Some((merge_sha.as_str().to_string(), title.clone())),
            _ => None,
        });
        let reviews = state.review_views(key).unwrap_or_default();
        Ok(match view {
            Some(v) => PrPage {
                repo: key.repo.to_string(),
                number: key.number,
                explanation: if v.waiting_on.is_empty() {
                    "nothing holds it back: it is approved and passing".to_string()
                } else {
                    v.waiting_on.join("; ")
                },
                approval: format!(
                    "{}: {} of {} required approval{} counted{}",
                    if v.approved {
                        "approved"
                    } else {
                        "not approved"
                    },
                    v.approvers.len(),
                    v.required_approvals,
                    if v.required_approvals == 1 { "" } else { "s" },
                    if v.changes_requested_by.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; changes requested by {}",
                            v.changes_requested_by.join(", ")
                        )
                    }
                ),
                title: v.title,
                author: Some(v.author),
                head_ref: Some(v.head_ref),
                head: Some(v.head_sha.as_str().to_string()),
                target: v.target_branch,
                phase: Some(v.phase.name()),
                builds,
                history: history_rows,
                reviews,
            },
            None => PrPage {
                repo: key.repo.to_string(),
                number: key.number,
                title: landed.as_ref().map(|l| l.1.clone()).unwrap_or_default(),
                author: None,
                head_ref: None,
                head: None,
                target: entries
                    .iter()
                    .find_map(|e| match e {
                        HistoryEntry::BuildFinished { candidate, .. }
                        | HistoryEntry::BuildCancelled { candidate, .. } => {
                            Some(candidate.target_branch.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_default(),
                phase: None,
                explanation: match &landed {
                    Some((sha, _)) => format!("landed as {sha}; sluice no longer tracks it"),
                    None => "sluice no longer tracks it (closed)".to_string(),
                },
                builds,
                history: history_rows,
                approval: "no longer tracked: its reviews are not kept".to_string(),
                reviews,
            },
        })
    }

    pub fn html(&self) -> Result<String, PageError> {
        rendered(self)
    }
}

/// The PR of `/pr/<owner>/<name>/<number>`, if the path names one.
pub fn pr_key(
    repos: &std::collections::BTreeSet<RepoName>,
    owner: &str,
    name: &str,
    number: &str,
) -> Result<PrKey, PageError> {
    let repo = RepoName::parse(&format!("{owner}/{name}"))
        .ok()
        .filter(|r| repos.contains(r))
        .ok_or_else(|| {
            PageError::NotFound(format!(
                "sluice does not gate {:?}",
                format!("{owner}/{name}")
                    .chars()
                    .take(100)
                    .collect::<String>()
            ))
        })?;
    let number = number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            PageError::BadRequest(format!(
                "{:?} is not a PR number",
                number.chars().take(40).collect::<String>()
            ))
        })?;
    Ok(PrKey { repo, number })
}

fn pr_of(ctx: &HttpContext, owner: &str, name: &str, number: &str) -> Result<String, PageError> {
    let key = pr_key(&ctx.shared.repos, owner, name, number)?;
    let model = {
        let state = ctx.shared.state.read().unwrap_or_else(|e| e.into_inner());
        let history = ctx.shared.history.read().unwrap_or_else(|e| e.into_inner());
        PrPage::build(&state, &history, &*ctx.results, &key, crate::runtime::now())?
    };
    model.html()
}

// --------------------------------------------------------------- search

struct EntryRow {
    kind: &'static str,
    sha: String,
    pr_href: Option<String>,
    pr_label: String,
    text: String,
    href: Option<String>,
    when: String,
}

/// The search form's fields (name, label), in the order the form shows
/// them.
pub const SEARCH_FIELDS: [(&str, &str); 7] = [
    (
        "sha",
        "commit (7+ hex digits: a PR head, a car, a landed commit)",
    ),
    ("repo", "repository (owner/name)"),
    ("pr", "PR"),
    ("kind", "kind (merged, ejected, build_finished, ...)"),
    ("branch", "landed on branch"),
    ("from", "after commit (with branch)"),
    ("to", "up to commit (with branch)"),
];

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    /// Each field's name, label and what was asked (to fill the form
    /// again).
    fields: Vec<(&'static str, &'static str, String)>,
    error: Option<String>,
    summary: String,
    entries: Vec<EntryRow>,
    prev: Option<String>,
    next: Option<String>,
}

/// The filter of a search form; empty fields are not filters. Shas are
/// checked by [`History::search`], which says which field is wrong.
pub fn search_filter(query: &[(String, String)]) -> Result<HistoryFilter, String> {
    let mut filter = HistoryFilter {
        per_page: Some(SEARCH_PER_PAGE),
        ..HistoryFilter::default()
    };
    let number = |name: &str, value: &str| {
        value
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                format!(
                    "{name} must be a number from 1, not {:?}",
                    value.chars().take(40).collect::<String>()
                )
            })
    };
    for (key, value) in query {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let text = Some(value.to_string());
        match key.as_str() {
            "sha" => filter.sha = text,
            "from" => filter.from = text,
            "to" => filter.to = text,
            "kind" => filter.kind = text,
            "branch" => filter.branch = text,
            "repo" => {
                RepoName::parse(value).map_err(|e| e.to_string())?;
                filter.repo = text;
            }
            "pr" => filter.pr = Some(number("pr", value)? as u64),
            "page" => filter.page = Some(number("page", value)?),
            other => {
                return Err(format!(
                    "unknown parameter {:?}; the search takes {} and page",
                    other.chars().take(40).collect::<String>(),
                    SEARCH_FIELDS.map(|(name, _)| name).join(", ")
                ));
            }
        }
    }
    Ok(filter)
}

/// `/search?...` with the form's fields and `page`.
fn search_href(fields: &[(&str, &str, String)], page: usize) -> String {
    let mut href = String::from("/search?");
    for (name, _, value) in fields.iter().filter(|(_, _, v)| !v.is_empty()) {
        href.push_str(&format!("{name}={}&", encode(value)));
    }
    href.push_str(&format!("page={page}"));
    href
}

/// Percent-encodes all but the unreserved characters of a URL.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The search page for `query`: its status (400 for a bad query, 404 for a
/// commit that never landed, each with the form to correct it) and body.
/// It searches under the history's lock and renders one page of entries.
pub fn search(
    history: &History,
    results: &dyn ResultsStore,
    query: &[(String, String)],
) -> Result<(StatusCode, String), PageError> {
    let fields: Vec<(&'static str, &'static str, String)> = SEARCH_FIELDS
        .iter()
        .map(|(name, label)| {
            let value = query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().chars().take(200).collect::<String>())
                .unwrap_or_default();
            (*name, *label, value)
        })
        .collect();
    let mut page = SearchPage {
        fields,
        error: None,
        summary: String::new(),
        entries: Vec::new(),
        prev: None,
        next: None,
    };
    let found = search_filter(query)
        .map_err(|message| (StatusCode::BAD_REQUEST, message))
        .and_then(|filter| {
            history.search(&filter).map_err(|e| {
                (
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                    e.message,
                )
            })
        });
    let status = match found {
        Err((status, error)) => {
            page.error = Some(error);
            status
        }
        Ok(found) => {
            let order = if found.order == "oldest_first" {
                "oldest first"
            } else {
                "newest first"
            };
            let first = (found.page - 1) * found.per_page;
            page.summary = match found.total {
                0 => "Nothing in the history matches.".to_string(),
                n if first >= n => format!("{n} entries; page {} is past the last.", found.page),
                n => format!(
                    "{n} entries, {order}; {} to {} shown.",
                    first + 1,
                    (first + found.entries.len()).min(n)
                ),
            };
            page.entries = found
                .entries
                .iter()
                .map(|entry| {
                    let pr = entry_pr(entry);
                    EntryRow {
                        kind: kind_of(entry),
                        sha: entry_sha(entry),
                        pr_href: pr.as_ref().map(|p| pr_href(&p.repo, p.number)),
                        pr_label: pr.map(|p| p.to_string()).unwrap_or_default(),
                        text: entry_text(entry),
                        href: entry_link(results, entry),
                        when: when(entry_at(entry)),
                    }
                })
                .collect();
            page.prev = (found.page > 1).then(|| search_href(&page.fields, found.page - 1));
            page.next = (found.page * found.per_page < found.total)
                .then(|| search_href(&page.fields, found.page + 1));
            StatusCode::OK
        }
    };
    Ok((status, rendered(page)?))
}

fn search_of(ctx: &HttpContext, query: Query) -> Response {
    let query = match query {
        Ok(query) => query,
        Err(e) => return error_response(&e),
    };
    let page = {
        let history = ctx.shared.history.read().unwrap_or_else(|e| e.into_inner());
        search(&history, &*ctx.results, &query)
    };
    match page {
        Ok((status, body)) => html(status, body),
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(120), "2 min");
        assert_eq!(duration(200), "3 min 20 s");
        assert_eq!(duration(7500), "2 h 5 min");
    }

    #[test]
    fn the_page_parameter_is_checked() {
        let q = |s: &str| {
            vec![(
                s.split('=').next().unwrap().to_string(),
                s.split('=').nth(1).unwrap().to_string(),
            )]
        };
        assert_eq!(page_param(&[]), Ok(1));
        assert_eq!(page_param(&q("page=3")), Ok(3));
        assert!(page_param(&q("page=0")).is_err());
        assert!(page_param(&q("page=x")).is_err());
        assert!(page_param(&q("pag=1")).is_err());
    }

    #[test]
    fn search_filters_skip_empty_fields_and_refuse_bad_ones() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let f = search_filter(&q(&[("sha", " abcdef0 "), ("repo", ""), ("pr", "")])).unwrap();
        assert_eq!(f.sha.as_deref(), Some("abcdef0"));
        assert!(f.repo.is_none() && f.pr.is_none());
        assert_eq!(f.per_page, Some(SEARCH_PER_PAGE));
        let f = search_filter(&q(&[("branch", "main"), ("page", "2")])).unwrap();
        assert_eq!((f.branch.as_deref(), f.page), (Some("main"), Some(2)));
        assert!(search_filter(&q(&[("pr", "one")])).is_err());
        assert!(search_filter(&q(&[("page", "0")])).is_err());
        assert!(search_filter(&q(&[("repo", "no-slash")])).is_err());
        assert!(search_filter(&q(&[("what", "1")])).is_err());
    }

    #[test]
    fn pager_links_keep_the_fields_encoded() {
        let fields = [
            ("sha", "", String::new()),
            ("branch", "", "feat/$(x) y".to_string()),
        ];
        assert_eq!(
            search_href(&fields, 3),
            "/search?branch=feat%2F%24%28x%29%20y&page=3"
        );
    }

    #[test]
    fn the_policy_allows_exactly_the_script() {
        let script_src = CSP
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap();
        assert!(script_src.contains("'sha256-"), "{script_src}");
        assert!(!script_src.contains("unsafe"), "{script_src}");
    }
}
