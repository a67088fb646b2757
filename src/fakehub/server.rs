//! The REST face of the fake: one catch-all warp route, routed by hand so
//! unknown paths and methods answer GitHub's JSON 404.

use super::apps::{self, Caller, JWT_UNDECODABLE};
use super::budget;
use super::git::Ident;
use super::refs::MergeAnswer;
use super::shapes::{self, Urls};
use super::state::StatusRec;
use super::{Fault, HttpError, Inner};
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use warp::Filter;

type Reply = Response<Vec<u8>>;

pub(crate) async fn serve(inner: Arc<Inner>, listener: tokio::net::TcpListener) {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let route = warp::any()
        .and(warp::any().map(move || inner.clone()))
        .and(warp::method())
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            |inner: Arc<Inner>,
             method: Method,
             path: warp::path::FullPath,
             query: String,
             headers: HeaderMap,
             body: Bytes| async move {
                // As on GitHub, a call is carried out to its end even if the
                // caller goes away meanwhile (killed, timed out): dropping it
                // halfway would kill its git process and leave a lock.
                let call = tokio::spawn(async move {
                    handle(&inner, &method, path.as_str(), &query, &headers, &body).await
                });
                call.await
                    .unwrap_or_else(|e| error(500, &format!("fakehub internal error: {e}"), ""))
            },
        );
    warp::serve(route).incoming(listener).run().await;
}

fn reply(status: u16, body: &Value) -> Reply {
    let mut r = Response::new(serde_json::to_vec_pretty(body).unwrap_or_default());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        "content-type",
        "application/json; charset=utf-8".parse().expect("header"),
    );
    h.insert(
        "x-github-media-type",
        "github.v3; format=json".parse().expect("header"),
    );
    // The x-ratelimit-* headers are added in `handle`, from the real counter.
    r
}

fn error(status: u16, message: &str, doc: &str) -> Reply {
    reply(status, &shapes::error(status, message, doc))
}

fn not_found() -> Reply {
    error(404, "Not Found", "")
}

fn from_http_error(e: HttpError) -> Reply {
    error(e.status, &e.message, "/pulls/pulls#merge-a-pull-request")
}

fn error_at(e: HttpError, doc: &str) -> Reply {
    error(e.status, &e.message, doc)
}

fn no_content() -> Reply {
    let mut r = Response::new(Vec::new());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// A request's JSON object body, or GitHub's 400.
pub(crate) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, HttpError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(super::http_err(400, "Problems parsing JSON")),
    }
}

/// A required string field, or GitHub's 422 for a missing one.
pub(crate) fn required_str<'a>(
    map: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a str, HttpError> {
    match map.get(key) {
        Some(Value::String(v)) => Ok(v),
        None | Some(Value::Null) => Err(super::http_err(
            422,
            &format!("Invalid request.\n\n\"{key}\" wasn't supplied."),
        )),
        Some(other) => Err(super::http_err(
            422,
            &format!("Invalid request.\n\nFor 'properties/{key}', {other} is not a string."),
        )),
    }
}

/// Decodes `%XX` escapes in one path segment.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((
                percent_decode(&k.replace('+', " "))?,
                percent_decode(&v.replace('+', " "))?,
            ))
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Takes a matching injected fault, if any.
fn take_fault(inner: &Inner, method: &Method, path: &str) -> Option<Reply> {
    let mut faults = inner.faults.lock().expect("faults");
    for f in faults.iter_mut() {
        if let Fault::Status {
            method: m,
            path_prefix,
            status,
            retry_after,
            times,
        } = f
            && *times > 0
            && m.as_deref().is_none_or(|m| m == method.as_str())
            && path.starts_with(path_prefix.as_str())
        {
            *times -= 1;
            super::chaos::Counters::bump(&inner.counters.faults_served);
            let message = match *status {
                403 | 429 => {
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
                }
                502 => "Server Error",
                503 => "Service Unavailable",
                _ => "Injected fault",
            };
            let mut r = error(*status, message, "/overview/rate-limits-for-the-rest-api");
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert("retry-after", secs.to_string().parse().expect("header"));
                r.headers_mut()
                    .insert("x-ratelimit-remaining", "0".parse().expect("header"));
            }
            return Some(r);
        }
    }
    None
}

/// Whether chaos answers this call 502.
fn chaos_error(inner: &Inner) -> bool {
    let hit = inner
        .chaos
        .lock()
        .expect("chaos lock")
        .as_mut()
        .is_some_and(|d| d.api_error());
    if hit {
        super::chaos::Counters::bump(&inner.counters.api_errors);
    }
    hit
}

/// Takes a matching [`Fault::SlowAnswer`], if any: how long to hold the
/// answer back.
fn take_slow(inner: &Inner, method: &Method, path: &str) -> Option<std::time::Duration> {
    let mut faults = inner.faults.lock().expect("faults");
    for f in faults.iter_mut() {
        if let Fault::SlowAnswer {
            method: m,
            path_prefix,
            delay,
            times,
        } = f
            && *times > 0
            && m.as_deref().is_none_or(|m| m == method.as_str())
            && path.starts_with(path_prefix.as_str())
        {
            *times -= 1;
            super::chaos::Counters::bump(&inner.counters.faults_served);
            return Some(*delay);
        }
    }
    None
}

pub(crate) async fn handle(
    inner: &Inner,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    // Clones over HTTP are git's, not the API's (no rate limit).
    if path.starts_with("/git/") {
        return super::smart_http::serve(inner, method, path, query, headers, body).await;
    }
    // Who is calling; the rate limit counts per token (per installation
    // for installation tokens, as on GitHub), and not for a call refused as
    // unauthorized (GitHub counts those elsewhere).
    let caller = apps::authenticate(inner, headers);
    let key = caller.as_ref().ok().map(Caller::rate_key);
    let exhausted = key.as_deref().is_some_and(|k| inner.budget.exhausted(k));
    let mut r = if exhausted {
        error(
            403,
            "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID.",
            "/rest/overview/rate-limits-for-the-rest-api",
        )
    } else {
        answer(inner, &caller, method, path, query, body).await
    };
    let slow = if r.status().is_success() {
        take_slow(inner, method, path)
    } else {
        None
    };
    if *method == Method::GET && r.status() == StatusCode::OK {
        let tag = budget::etag(r.body(), r.headers());
        if budget::none_match(headers, &tag) {
            r = budget::not_modified(&tag);
        } else if let Ok(v) = tag.parse() {
            r.headers_mut().insert(http::header::ETAG, v);
        }
    }
    // GitHub: a 304 is free when the call was authorized with a header.
    let free =
        r.status() == StatusCode::NOT_MODIFIED && headers.contains_key(http::header::AUTHORIZATION);
    let counted = key.is_some() && !exhausted && !free;
    if let Some(key) = &key {
        inner.budget.charge(key, counted, r.headers_mut());
    }
    inner
        .budget
        .record(method, path, query, r.status().as_u16(), counted);
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    r
}

/// An answer of the App, check-run and comment handlers as a reply, with
/// GitHub's error body (and `doc`) for an error.
fn answered(a: super::checks::Answer, doc: &str) -> Reply {
    match a {
        Ok((status, v)) => reply(status, &v),
        Err(e) => error_at(e, doc),
    }
}

/// A page of a list under `{"total_count", key: [...]}`, as the check runs
/// list is, with GitHub's `Link` header.
fn paged_object(
    inner: &Inner,
    path: &str,
    q: &[(String, String)],
    key: &str,
    items: Vec<Value>,
) -> Reply {
    let total = items.len();
    match paginate(inner, path, q, items) {
        Err(message) => error(422, message, ""),
        Ok((page, link)) => {
            let mut r = reply(200, &json!({"total_count": total, key: page}));
            if let Some(link) = link
                && let Ok(v) = link.parse()
            {
                r.headers_mut().insert("link", v);
            }
            r
        }
    }
}

/// `/app…`: JWT only (anything else is answered as GitHub does, 401 "A
/// JSON web token could not be decoded").
fn app_routes(
    inner: &Inner,
    caller: &Caller,
    method: &str,
    rest: &[&str],
    path: &str,
    q: &[(String, String)],
    body: &[u8],
) -> Reply {
    let Caller::App { app_id } = caller else {
        return error(401, JWT_UNDECODABLE, "");
    };
    let app_id = *app_id;
    let doc = "/apps/apps";
    let app_answer = |a: apps::AppAnswer, doc: &str| match a {
        Ok((status, v)) => reply(status, &v),
        Err((status, message)) => error(status, &message, doc),
    };
    match (method, rest) {
        ("GET", []) => app_answer(
            inner.get_app(app_id),
            "/apps/apps#get-the-authenticated-app",
        ),
        ("GET", ["installations"]) => paged_reply(inner, path, q, inner.list_installations(app_id)),
        ("GET", ["installations", id]) => match id.parse() {
            Ok(id) => app_answer(inner.get_installation(app_id, id), doc),
            Err(_) => not_found(),
        },
        ("POST", ["installations", id, "access_tokens"]) => match id.parse() {
            Ok(id) => app_answer(
                inner.create_installation_token(app_id, id, body),
                "/apps/apps#create-an-installation-access-token-for-an-app",
            ),
            Err(_) => not_found(),
        },
        _ => not_found(),
    }
}

async fn answer(
    inner: &Inner,
    caller: &Result<Caller, apps::Refusal>,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> Reply {
    if let Some(r) = take_fault(inner, method, path) {
        return r;
    }
    if chaos_error(inner) {
        return error(502, "Server Error", "/overview/troubleshooting");
    }
    let caller = match caller {
        Ok(c) => c,
        Err(refusal) => return error(refusal.status, refusal.message, ""),
    };
    let Some(segs) = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<String>>>()
    else {
        return not_found();
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let q = query_pairs(query);
    let m = method.as_str();
    if let ["app", rest @ ..] = segs.as_slice() {
        return app_routes(inner, caller, m, rest, path, &q, body);
    }
    let ["repos", owner, name, rest @ ..] = segs.as_slice() else {
        return not_found();
    };
    let repo = format!("{owner}/{name}");
    if let ("GET", ["installation"]) = (m, rest) {
        let doc = "/apps/apps#get-a-repository-installation-for-the-authenticated-app";
        return match caller {
            Caller::App { app_id } => match inner.repo_installation(*app_id, &repo) {
                Ok((status, v)) => reply(status, &v),
                Err((status, message)) => error(status, &message, doc),
            },
            _ => error(401, JWT_UNDECODABLE, ""),
        };
    }
    if !inner.state.lock().expect("state").repos.contains_key(&repo) {
        return not_found();
    }
    if let Err(refusal) = inner.repo_access(caller, &repo, m, rest) {
        return error(refusal.status, refusal.message, "");
    }
    match (m, rest) {
        ("GET", ["pulls"]) => list_pulls(inner, &repo, path, &q),
        ("GET", ["pulls", n]) => match n.parse() {
            Ok(n) => get_pull(inner, &repo, n).await,
            Err(_) => not_found(),
        },
        ("PATCH", ["pulls", n]) => match n.parse() {
            Ok(n) => update_pull(inner, &repo, n, body).await,
            Err(_) => not_found(),
        },
        ("GET", ["pulls", n, "commits"]) => match n.parse() {
            Ok(n) => match inner.pr_commits(&repo, n).await {
                Ok(commits) => {
                    let st = inner.state.lock().expect("state");
                    let Some(r) = st.repos.get(&repo) else {
                        return not_found();
                    };
                    let u = inner.urls();
                    paged_reply_with(inner, path, &q, commits, |c| shapes::pr_commit(&u, r, &c))
                }
                Err(e) => error_at(e, "/pulls/pulls#list-commits-on-a-pull-request"),
            },
            Err(_) => not_found(),
        },
        ("GET", ["issues", n, "comments"]) => match n.parse::<u64>() {
            Ok(n) => {
                let st = inner.state.lock().expect("state");
                let Some(r) = st.repos.get(&repo) else {
                    return not_found();
                };
                if !r.prs.contains_key(&n) {
                    return error(404, "Not Found", "/issues/comments#list-issue-comments");
                }
                let u = inner.urls();
                let comments = r.comments.get(&n).cloned().unwrap_or_default();
                paged_reply_with(inner, path, &q, comments, |c| {
                    let app = c.app_id.and_then(|a| st.apps.get(&a));
                    shapes::issue_comment(&u, r, n, &c, app)
                })
            }
            Err(_) => not_found(),
        },
        ("POST", ["issues", n, "comments"]) => match n.parse() {
            Ok(n) => answered(
                inner.create_comment(caller, &repo, n, body),
                "/issues/comments#create-an-issue-comment",
            ),
            Err(_) => not_found(),
        },
        ("GET", ["issues", "comments", id]) => match id.parse() {
            Ok(id) => answered(
                inner.get_comment(&repo, id),
                "/issues/comments#get-an-issue-comment",
            ),
            Err(_) => not_found(),
        },
        ("PATCH", ["issues", "comments", id]) => match id.parse() {
            Ok(id) => answered(
                inner.update_comment(caller, &repo, id, body),
                "/issues/comments#update-an-issue-comment",
            ),
            Err(_) => not_found(),
        },
        ("DELETE", ["issues", "comments", id]) => match id.parse() {
            Ok(id) => match inner.delete_comment(caller, &repo, id) {
                Ok(()) => no_content(),
                Err(e) => error_at(e, "/issues/comments#delete-an-issue-comment"),
            },
            Err(_) => not_found(),
        },
        ("POST", ["issues", "comments", id, "reactions"]) => match id.parse() {
            Ok(id) => answered(
                inner.react(caller, &repo, id, body),
                "/reactions/reactions#create-reaction-for-an-issue-comment",
            ),
            Err(_) => not_found(),
        },
        ("GET", ["issues", "comments", id, "reactions"]) => match id.parse() {
            Ok(id) => match inner.list_reactions(&repo, id, param(&q, "content")) {
                Ok(items) => paged_reply(inner, path, &q, items),
                Err(e) => error_at(
                    e,
                    "/reactions/reactions#list-reactions-for-an-issue-comment",
                ),
            },
            Err(_) => not_found(),
        },
        ("POST", ["check-runs"]) => answered(
            inner.create_check_run(caller, &repo, body).await,
            "/checks/runs#create-a-check-run",
        ),
        ("PATCH", ["check-runs", id]) => match id.parse() {
            Ok(id) => answered(
                inner.update_check_run(caller, &repo, id, body),
                "/checks/runs#update-a-check-run",
            ),
            Err(_) => not_found(),
        },
        ("GET", ["check-runs", id]) => match id.parse() {
            Ok(id) => answered(
                inner.get_check_run(&repo, id),
                "/checks/runs#get-a-check-run",
            ),
            Err(_) => not_found(),
        },
        ("GET", ["pulls", n, "reviews"]) => match n.parse() {
            Ok(n) => list_reviews(inner, &repo, n, path, &q),
            Err(_) => not_found(),
        },
        ("PUT", ["pulls", n, "merge"]) => match n.parse() {
            Ok(n) => merge(inner, caller, &repo, n, body).await,
            Err(_) => not_found(),
        },
        ("GET", ["pulls", n, "merge"]) => {
            let merged = n.parse::<u64>().ok().and_then(|n| {
                let st = inner.state.lock().expect("state");
                st.repos.get(&repo)?.prs.get(&n).map(|p| p.merged)
            });
            match merged {
                Some(true) => no_content(),
                _ => not_found(),
            }
        }
        ("GET", ["collaborators", user, "permission"]) => {
            let st = inner.state.lock().expect("state");
            let Some(r) = st.repos.get(&repo) else {
                return not_found();
            };
            reply(
                200,
                &shapes::permission(&inner.urls(), user, &r.permission(user)),
            )
        }
        (
            "GET",
            [
                "branches",
                branch @ ..,
                "protection",
                "required_status_checks",
            ],
        ) if !branch.is_empty() => {
            let branch = branch.join("/");
            required_status_checks(inner, &repo, &branch).await
        }
        ("POST", ["git", "refs"]) => create_ref(inner, caller, &repo, body).await,
        ("GET", ["git", "matching-refs", prefix @ ..]) => {
            let mut prefix = prefix.join("/");
            if path.ends_with('/') && !prefix.is_empty() {
                prefix.push('/');
            }
            match inner.matching_refs(&repo, &prefix).await {
                Ok(refs) => with_repo(inner, &repo, |u, r| {
                    Value::Array(
                        refs.iter()
                            .map(|a| shapes::git_ref(u, r, &a.branch, &a.sha))
                            .collect(),
                    )
                }),
                Err(e) => error_at(e, "/git/refs#list-matching-references"),
            }
        }
        ("PATCH", ["git", "refs", "heads", branch @ ..]) if !branch.is_empty() => {
            update_ref(inner, caller, &repo, &branch.join("/"), body).await
        }
        ("DELETE", ["git", "refs", "heads", branch @ ..]) if !branch.is_empty() => {
            let actor = inner.actor(caller).0;
            match inner.delete_ref(&actor, &repo, &branch.join("/")).await {
                Ok(()) => no_content(),
                Err(e) => error_at(e, "/git/refs#delete-a-reference"),
            }
        }
        ("POST", ["merges"]) => merge_branches(inner, caller, &repo, body).await,
        ("GET", ["compare", spec @ ..]) if !spec.is_empty() => {
            let doc = "/commits/commits#compare-two-commits";
            let spec = spec.join("/");
            let Some((base, head)) = spec.split_once("...") else {
                return error(404, "Not Found", doc);
            };
            match inner.compare(&repo, base, head).await {
                Ok(c) => with_repo(inner, &repo, |u, r| shapes::comparison(u, r, &c)),
                Err(e) => error_at(e, doc),
            }
        }
        ("POST", ["git", "commits"]) => create_commit(inner, &repo, body).await,
        ("GET", ["git", "commits", sha]) => match inner.get_commit(&repo, sha).await {
            Ok(info) => with_repo(inner, &repo, |u, r| shapes::git_commit(u, r, &info)),
            Err(e) => error_at(e, "/git/commits#get-a-commit-object"),
        },
        ("GET", ["branches", branch @ ..]) if !branch.is_empty() => {
            let branch = branch.join("/");
            match head_of(inner, &repo, &branch).await {
                Some(sha) => with_repo(inner, &repo, |u, r| shapes::branch(u, r, &branch, &sha)),
                None => error(404, "Branch not found", "/branches/branches#get-a-branch"),
            }
        }
        ("GET", ["git", "ref", "heads", branch @ ..]) if !branch.is_empty() => {
            let branch = branch.join("/");
            match head_of(inner, &repo, &branch).await {
                Some(sha) => with_repo(inner, &repo, |u, r| shapes::git_ref(u, r, &branch, &sha)),
                None => error(404, "Not Found", "/git/refs#get-a-reference"),
            }
        }
        ("POST", ["statuses", sha]) => create_status(inner, caller, &repo, sha, body).await,
        ("GET", ["commits", reference, "check-runs"]) => {
            match inner.list_check_runs(&repo, reference, &q).await {
                Ok(runs) => paged_object(inner, path, &q, "check_runs", runs),
                Err(e) => error_at(e, "/checks/runs#list-check-runs-for-a-git-reference"),
            }
        }
        ("GET", ["commits", reference @ .., "status"]) if !reference.is_empty() => {
            let reference = reference.join("/");
            let Ok(g) = inner.git(&repo) else {
                return not_found();
            };
            let sha = match g.branch(&reference).await {
                Ok(Some(sha)) => Some(sha),
                _ => g.rev_parse(&reference).await.ok().flatten(),
            };
            match sha {
                Some(sha) => with_repo(inner, &repo, |u, r| shapes::combined_status(u, r, &sha)),
                None => error(
                    422,
                    &format!("No commit found for SHA: {reference}"),
                    "/commits/statuses#get-the-combined-status-for-a-specific-reference",
                ),
            }
        }
        _ => not_found(),
    }
}

fn with_repo(
    inner: &Inner,
    repo: &str,
    f: impl FnOnce(&Urls, &super::state::RepoState) -> Value,
) -> Reply {
    let st = inner.state.lock().expect("state");
    match st.repos.get(repo) {
        Some(r) => reply(200, &f(&inner.urls(), r)),
        None => not_found(),
    }
}

async fn head_of(inner: &Inner, repo: &str, branch: &str) -> Option<String> {
    inner.git(repo).ok()?.branch(branch).await.ok()?
}

/// One page of `items` and GitHub's `Link` header for the others.
fn paginate<T>(
    inner: &Inner,
    path: &str,
    q: &[(String, String)],
    items: Vec<T>,
) -> Result<(Vec<T>, Option<String>), &'static str> {
    let per_page: usize = match param(q, "per_page").map(str::parse).transpose() {
        Ok(p) => p.unwrap_or(30).clamp(1, 100),
        Err(_) => return Err("Invalid per_page"),
    };
    let page: usize = match param(q, "page").map(str::parse).transpose() {
        Ok(p) => p.unwrap_or(1).max(1),
        Err(_) => return Err("Invalid page"),
    };
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let url = |p: usize| {
        let mut parts: Vec<String> = q
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.push(format!("page={p}"));
        format!("<{}{}?{}>", inner.api_url, path, parts.join("&"))
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", url((page - 1).min(last))));
    }
    if page < last {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", url(1)));
    }
    let items = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    Ok((items, (!links.is_empty()).then(|| links.join(", "))))
}

fn paged_reply(inner: &Inner, path: &str, q: &[(String, String)], items: Vec<Value>) -> Reply {
    paged_reply_with(inner, path, q, items, |v| v)
}

/// A page of `items`, each shaped by `shape` (only the page's are shaped).
fn paged_reply_with<T>(
    inner: &Inner,
    path: &str,
    q: &[(String, String)],
    items: Vec<T>,
    shape: impl FnMut(T) -> Value,
) -> Reply {
    match paginate(inner, path, q, items) {
        Err(message) => error(422, message, ""),
        Ok((page, link)) => {
            let page = page.into_iter().map(shape).collect();
            let mut r = reply(200, &Value::Array(page));
            if let Some(link) = link
                && let Ok(v) = link.parse()
            {
                r.headers_mut().insert("link", v);
            }
            r
        }
    }
}

fn list_pulls(inner: &Inner, repo: &str, path: &str, q: &[(String, String)]) -> Reply {
    let state = param(q, "state").unwrap_or("open");
    if !matches!(state, "open" | "closed" | "all") {
        return error(422, "Validation Failed", "/pulls/pulls#list-pull-requests");
    }
    let st = inner.state.lock().expect("state");
    let Some(r) = st.repos.get(repo) else {
        return not_found();
    };
    let u = inner.urls();
    let mut prs: Vec<_> = r
        .prs
        .values()
        .filter(|p| match state {
            "open" => p.open,
            "closed" => !p.open,
            _ => true,
        })
        .filter(|p| param(q, "base").is_none_or(|b| b == p.base_ref))
        .collect();
    // GitHub's default: sort=created, direction=desc.
    if param(q, "direction") != Some("asc") {
        prs.reverse();
    }
    paged_reply_with(inner, path, q, prs, |p| {
        shapes::pull_request(&u, r, p, false, shapes::Mergeable::Unknown)
    })
}

async fn get_pull(inner: &Inner, repo: &str, number: u64) -> Reply {
    let mergeable = match inner.mergeable(repo, number).await {
        Ok(m) => m,
        Err(_) => return not_found(),
    };
    let st = inner.state.lock().expect("state");
    let Some(r) = st.repos.get(repo) else {
        return not_found();
    };
    match r.prs.get(&number) {
        Some(pr) => reply(
            200,
            &shapes::pull_request(&inner.urls(), r, pr, true, mergeable),
        ),
        None => not_found(),
    }
}

fn list_reviews(
    inner: &Inner,
    repo: &str,
    number: u64,
    path: &str,
    q: &[(String, String)],
) -> Reply {
    let items = {
        let st = inner.state.lock().expect("state");
        let Some(r) = st.repos.get(repo) else {
            return not_found();
        };
        let Some(pr) = r.prs.get(&number) else {
            return not_found();
        };
        let u = inner.urls();
        pr.reviews
            .iter()
            .map(|rv| shapes::review(&u, r, number, rv, false))
            .collect()
    };
    paged_reply(inner, path, q, items)
}

async fn merge(inner: &Inner, caller: &Caller, repo: &str, number: u64, body: &[u8]) -> Reply {
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return error(400, "Problems parsing JSON", ""),
        }
    };
    let s = |k: &str| req.get(k).and_then(Value::as_str);
    let method = s("merge_method").unwrap_or("merge");
    let actor = inner.actor(caller).0;
    match inner
        .merge(
            &actor,
            repo,
            number,
            s("sha"),
            method,
            s("commit_title"),
            s("commit_message"),
        )
        .await
    {
        Ok(sha) => reply(
            200,
            &json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"}),
        ),
        Err(e) => from_http_error(e),
    }
}

async fn update_pull(inner: &Inner, repo: &str, number: u64, body: &[u8]) -> Reply {
    let doc = "/pulls/pulls#update-a-pull-request";
    let req = match json_object(body) {
        Ok(req) => req,
        Err(e) => return error_at(e, doc),
    };
    let field = |k: &str| -> Result<Option<&str>, HttpError> {
        match req.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => Ok(Some(v)),
            Some(other) => Err(super::http_err(
                422,
                &format!("Invalid request.\n\nFor 'properties/{k}', {other} is not a string."),
            )),
        }
    };
    let (state, title, text) = match (field("state"), field("title"), field("body")) {
        (Ok(s), Ok(t), Ok(b)) => (s, t, b),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return error_at(e, doc),
    };
    if let Err(e) = inner.update_pull(repo, number, state, title, text) {
        return error_at(e, doc);
    }
    let mergeable = inner
        .mergeable(repo, number)
        .await
        .unwrap_or(shapes::Mergeable::Unknown);
    let st = inner.state.lock().expect("state");
    match st
        .repos
        .get(repo)
        .and_then(|r| Some((r, r.prs.get(&number)?)))
    {
        Some((r, pr)) => reply(
            200,
            &shapes::pull_request(&inner.urls(), r, pr, true, mergeable),
        ),
        None => not_found(),
    }
}

async fn create_status(
    inner: &Inner,
    caller: &Caller,
    repo: &str,
    sha: &str,
    body: &[u8],
) -> Reply {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error(400, "Problems parsing JSON", "");
    };
    let s = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_string);
    let state = s("state").unwrap_or_default();
    if !matches!(state.as_str(), "error" | "failure" | "pending" | "success") {
        return error(
            422,
            "Validation Failed",
            "/commits/statuses#create-a-commit-status",
        );
    }
    let description = s("description");
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 140)
    {
        return error(
            422,
            "Validation Failed: description is too long (maximum is 140 characters)",
            "/commits/statuses#create-a-commit-status",
        );
    }
    let resolved = match inner.git(repo) {
        Ok(g) => g.rev_parse(sha).await.ok().flatten(),
        Err(_) => None,
    };
    let Some(full_sha) = resolved else {
        return error(
            422,
            &format!("No commit found for SHA: {sha}"),
            "/commits/statuses#create-a-commit-status",
        );
    };
    let creator = inner.actor(caller).0;
    let mut st = inner.state.lock().expect("state");
    let id = st.fresh_id() + 1_000_000_000;
    let Some(r) = st.repos.get_mut(repo) else {
        return not_found();
    };
    let rec = StatusRec {
        id,
        sha: full_sha,
        state,
        context: s("context").unwrap_or_else(|| "default".into()),
        description,
        target_url: s("target_url"),
        creator,
        created_at: shapes::now_iso(),
    };
    let v = shapes::status(&inner.urls(), r, &rec, true);
    r.statuses.push(rec);
    reply(201, &v)
}

async fn required_status_checks(inner: &Inner, repo: &str, branch: &str) -> Reply {
    let doc = "/branches/branch-protection#get-status-checks-protection";
    if head_of(inner, repo, branch).await.is_none() {
        return error(404, "Branch not found", doc);
    }
    let st = inner.state.lock().expect("state");
    let Some(r) = st.repos.get(repo) else {
        return not_found();
    };
    match r.protections.get(branch) {
        None => error(404, "Branch not protected", doc),
        Some(p) if p.contexts.is_empty() => error(404, "Required status checks not enabled", doc),
        Some(p) => reply(
            200,
            &shapes::required_status_checks(&inner.urls(), r, branch, &p.contexts, p.strict),
        ),
    }
}

async fn create_ref(inner: &Inner, caller: &Caller, repo: &str, body: &[u8]) -> Reply {
    let doc = "/git/refs#create-a-reference";
    let req = match json_object(body) {
        Ok(req) => req,
        Err(e) => return error_at(e, doc),
    };
    let (refname, sha) = match (required_str(&req, "ref"), required_str(&req, "sha")) {
        (Ok(refname), Ok(sha)) => (refname, sha),
        (Err(e), _) | (_, Err(e)) => return error_at(e, doc),
    };
    let actor = inner.actor(caller).0;
    match inner.create_ref(&actor, repo, refname, sha).await {
        Ok(a) => {
            with_repo(inner, repo, |u, r| shapes::git_ref(u, r, &a.branch, &a.sha)).map_status(201)
        }
        Err(e) => error_at(e, doc),
    }
}

async fn update_ref(
    inner: &Inner,
    caller: &Caller,
    repo: &str,
    branch: &str,
    body: &[u8],
) -> Reply {
    let doc = "/git/refs#update-a-reference";
    let req = match json_object(body) {
        Ok(req) => req,
        Err(e) => return error_at(e, doc),
    };
    let sha = match required_str(&req, "sha") {
        Ok(sha) => sha,
        Err(e) => return error_at(e, doc),
    };
    let force = match req.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return error(
                422,
                &format!("Invalid request.\n\nFor 'properties/force', {other} is not a boolean."),
                doc,
            );
        }
    };
    let actor = inner.actor(caller).0;
    match inner.update_ref(&actor, repo, branch, sha, force).await {
        Ok(a) => with_repo(inner, repo, |u, r| shapes::git_ref(u, r, &a.branch, &a.sha)),
        Err(e) => error_at(e, doc),
    }
}

async fn merge_branches(inner: &Inner, caller: &Caller, repo: &str, body: &[u8]) -> Reply {
    let doc = "/branches/branches#merge-a-branch";
    let req = match json_object(body) {
        Ok(req) => req,
        Err(e) => return error_at(e, doc),
    };
    let (base, head) = match (required_str(&req, "base"), required_str(&req, "head")) {
        (Ok(base), Ok(head)) => (base, head),
        (Err(e), _) | (_, Err(e)) => return error_at(e, doc),
    };
    let message = req.get("commit_message").and_then(Value::as_str);
    let actor = inner.actor(caller).0;
    match inner
        .merge_branches(&actor, repo, base, head, message)
        .await
    {
        Ok(MergeAnswer::Created(info)) => {
            with_repo(inner, repo, |u, r| shapes::repo_commit(u, r, &info, &actor)).map_status(201)
        }
        Ok(MergeAnswer::NothingToMerge) => no_content(),
        Err(e) => error_at(e, doc),
    }
}

async fn create_commit(inner: &Inner, repo: &str, body: &[u8]) -> Reply {
    let doc = "/git/commits#create-a-commit";
    let req = match json_object(body) {
        Ok(req) => req,
        Err(e) => return error_at(e, doc),
    };
    let (message, tree) = match (required_str(&req, "message"), required_str(&req, "tree")) {
        (Ok(message), Ok(tree)) => (message, tree),
        (Err(e), _) | (_, Err(e)) => return error_at(e, doc),
    };
    let parents: Vec<String> = match req.get("parents") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(other) => {
            return error(
                422,
                &format!(
                    "Invalid request.\n\nFor 'properties/parents', {other} is not an array of strings."
                ),
                doc,
            );
        }
    };
    let author = match req.get("author") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => {
            let field = |k: &str| a.get(k).and_then(Value::as_str).map(str::to_string);
            match (field("name"), field("email")) {
                (Some(name), Some(email)) => Some(Ident {
                    name,
                    email,
                    date: field("date"),
                }),
                _ => {
                    return error(
                        422,
                        "Invalid request.\n\n\"name\", \"email\" weren't supplied.",
                        doc,
                    );
                }
            }
        }
        Some(_) => {
            return error(
                422,
                "Invalid request.\n\nFor 'properties/author', it is not an object.",
                doc,
            );
        }
    };
    match inner
        .create_commit(repo, message, tree, &parents, author)
        .await
    {
        Ok(info) => with_repo(inner, repo, |u, r| shapes::git_commit(u, r, &info)).map_status(201),
        Err(e) => error_at(e, doc),
    }
}

/// Sets the status of a reply that succeeded (an error stays as it is).
trait MapStatus {
    fn map_status(self, status: u16) -> Self;
}

impl MapStatus for Reply {
    fn map_status(mut self, status: u16) -> Reply {
        if self.status().is_success()
            && let Ok(s) = StatusCode::from_u16(status)
        {
            *self.status_mut() = s;
        }
        self
    }
}
