//! The web face: the webhook endpoint, the JSON endpoints, result pages,
//! health and metrics. Handlers verify, parse and enqueue; they never wait on
//! GitHub or a job. Every error is a JSON `{"error": "..."}` with the right
//! 4xx.

mod deliveries;
mod events;
pub mod live;
pub mod pages;

use crate::core::{
    Answer, BranchMode, Event, HistoryEntry, PhaseCounts, PrKey, PrView, RepoName, RequestId,
};
use crate::forge::webhook::{self, Delivery};
use crate::results::ResultsStore;
use crate::runtime::history::HistoryFilter;
use crate::runtime::metrics::{Metrics, WebhookLabels};
use crate::runtime::store::Refused;
use crate::runtime::{Input, Shared};
use bytes::Bytes;
use deliveries::{Claim, Claimed};
pub use deliveries::{Deliveries, DeliveryLog};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{info, warn};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

/// GitHub's own cap on a webhook payload.
pub const MAX_WEBHOOK_BYTES: u64 = 25 * 1024 * 1024;
/// Requests to /retest and /try-merge are tiny.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long /retest and /try-merge wait for the core's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct HttpContext {
    pub shared: Arc<Shared>,
    pub results: Arc<dyn ResultsStore>,
    /// For the live log of a running build.
    pub executor: Arc<dyn crate::executor::Executor>,
    pub webhook_secret: Vec<u8>,
    pub api_token: Option<String>,
    pub deliveries: Deliveries,
    /// Running builds' live logs open now.
    pub live_streams: live::Streams,
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Error {
        error: String,
    }
    warp::reply::with_status(
        warp::reply::json(&Error {
            error: message.into(),
        }),
        status,
    )
    .into_response()
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// All routes. Each path is matched before its method, so a wrong method on
/// a known path is a 405 and an unknown path a 404.
pub fn routes(
    ctx: Arc<HttpContext>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with = move || {
        let ctx = ctx.clone();
        warp::any().map(move || ctx.clone())
    };

    let webhook = warp::path!("webhook")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_WEBHOOK_BYTES))
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .and(with())
        .then(|headers, body, ctx: Arc<HttpContext>| async move {
            on_webhook(&ctx, &headers, body).await
        });

    // The view's name is matched before the method, so that `POST /nope` is
    // a 404 (unknown path), not a 405.
    let views = warp::path!(String)
        .and_then(
            |view: String| async move { view_filter(&view).ok_or_else(warp::reject::not_found) },
        )
        .and(warp::get())
        .and(with())
        .map(|keep, ctx: Arc<HttpContext>| list_view(&ctx, keep));

    // By state, both ways: counts per state and the PRs in one.
    let prs = warp::path!("prs")
        .and(warp::get())
        .and(warp::query::<PrsQuery>())
        .and(with())
        .map(|query: PrsQuery, ctx: Arc<HttpContext>| prs_by_state(&ctx, query));

    let queue = warp::path!("queue")
        .and(warp::get())
        .and(with())
        .map(|ctx: Arc<HttpContext>| {
            let queue = ctx
                .shared
                .state
                .read()
                .map(|s| s.queue_view())
                .unwrap_or_default();
            json(StatusCode::OK, &TrainsJson { trains: queue })
        });

    let history = warp::path!("history")
        .and(warp::get())
        .and(warp::query::<HistoryFilter>())
        .and(with())
        .map(|filter: HistoryFilter, ctx: Arc<HttpContext>| {
            let found = match ctx.shared.history.read() {
                Ok(history) => history.search(&filter),
                Err(_) => {
                    return json_error(StatusCode::INTERNAL_SERVER_ERROR, "history unavailable");
                }
            };
            match found {
                Ok(page) => {
                    let entries: Vec<serde_json::Value> = page
                        .entries
                        .iter()
                        .map(|entry| with_link(&*ctx.results, entry))
                        .collect();
                    let more = page.page * page.per_page < page.total;
                    json(
                        StatusCode::OK,
                        &serde_json::json!({
                            "entries": entries,
                            "total": page.total,
                            "page": page.page,
                            "per_page": page.per_page,
                            "next_page": more.then_some(page.page + 1),
                            "order": page.order,
                        }),
                    )
                }
                Err(e) => json_error(
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                    e.message,
                ),
            }
        });

    let request = |name: &'static str| {
        warp::path(name)
            .and(warp::path::end())
            .and(warp::post())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::content_length_limit(MAX_REQUEST_BYTES))
            .and(warp::body::bytes())
            .and(with())
            .then(
                move |auth: Option<String>, body: Bytes, ctx: Arc<HttpContext>| async move {
                    on_request(&ctx, name, auth.as_deref(), &body).await
                },
            )
    };

    // Server-Sent Events; the id header is read raw, so a bogus one (even
    // one that is not UTF-8) starts the stream from now instead of a 400.
    let events = warp::path!("events")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with())
        .map(|headers: warp::http::HeaderMap, ctx: Arc<HttpContext>| {
            events::stream(ctx, headers.get("last-event-id").map(|v| v.as_bytes()))
        });

    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| json(StatusCode::OK, &serde_json::json!({ "status": "ok" })));

    let metrics =
        warp::path!("metrics")
            .and(warp::get())
            .and(with())
            .map(|ctx: Arc<HttpContext>| {
                warp::reply::with_header(
                    ctx.shared.metrics.encode(),
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .into_response()
            });

    let results = warp::path("results")
        .and(warp::get())
        .and(warp::path::tail())
        .and(warp::query::<LiveQuery>())
        .and(with())
        .and_then(
            |tail: warp::path::Tail, query: LiveQuery, ctx: Arc<HttpContext>| async move {
                serve_result(ctx, tail.as_str(), query).await
            },
        );

    webhook
        .or(request("retest"))
        .unify()
        .or(request("try-merge"))
        .unify()
        .or(request("branch"))
        .unify()
        .or(history)
        .unify()
        .or(queue)
        .unify()
        .or(events)
        .unify()
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(results)
        .unify()
        .or(prs)
        .unify()
        .or(pages::routes(with()))
        .unify()
        .or(views)
        .unify()
        .recover(|r| async move { Ok::<_, Infallible>(rejection(r)) })
        .unify()
}

fn rejection(r: Rejection) -> Response {
    if r.is_not_found() {
        json_error(StatusCode::NOT_FOUND, "no such endpoint")
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        json_error(
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required",
        )
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint",
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        json_error(StatusCode::BAD_REQUEST, format!("invalid query: {e}"))
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        json_error(StatusCode::BAD_REQUEST, e.to_string())
    } else {
        json_error(StatusCode::BAD_REQUEST, format!("bad request: {r:?}"))
    }
}

/// Bodies larger than this are verified and parsed on a blocking thread, so
/// a big delivery never stalls the async workers.
pub const PARSE_INLINE_BYTES: usize = 64 * 1024;
/// How long a delivery waits for the journal before it is answered 503.
pub const JOURNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Verifies and parses a delivery (pure CPU work: HMAC over the body, one
/// pass of the JSON parser).
fn verify_and_parse(
    secret: &[u8],
    event: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Result<Delivery, webhook::WebhookError>, webhook::SignatureError> {
    webhook::verify_signature(secret, body, signature)?;
    if event.is_empty() {
        return Ok(Err(webhook::WebhookError::BadPayload {
            event: String::new(),
            message: "missing X-GitHub-Event header".into(),
        }));
    }
    Ok(webhook::parse_delivery(event, body))
}

/// An event name as a metric label: GitHub's names are short lower-case
/// words; anything else is `other`.
fn metric_event_name(event: &str) -> String {
    let plain = !event.is_empty()
        && event.len() <= 40
        && event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if plain { event } else { "other" }.to_string()
}

async fn on_webhook(ctx: &HttpContext, headers: &warp::http::HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let event = header(webhook::EVENT_HEADER).unwrap_or("").to_string();
    let count = |result: &str| {
        // The event header is the sender's text: only a signed delivery's
        // names a series (an unsigned one could write anything into the
        // metrics, and a new series each time).
        let event = match result {
            "unauthorized" => "unverified".to_string(),
            _ => metric_event_name(&event),
        };
        ctx.shared
            .metrics
            .webhooks
            .get_or_create(&WebhookLabels {
                event,
                result: result.to_string(),
            })
            .inc();
    };
    let signature = header(webhook::SIGNATURE_HEADER).map(str::to_string);
    // The signature comes first: nothing unauthenticated is even parsed.
    let checked = if body.len() <= PARSE_INLINE_BYTES {
        verify_and_parse(&ctx.webhook_secret, &event, signature.as_deref(), &body)
    } else {
        let (secret, event, body) = (ctx.webhook_secret.clone(), event.clone(), body.clone());
        match tokio::task::spawn_blocking(move || {
            verify_and_parse(&secret, &event, signature.as_deref(), &body)
        })
        .await
        {
            Ok(checked) => checked,
            Err(e) => {
                warn!(error = %e, "webhook parser task failed");
                return json_error(StatusCode::SERVICE_UNAVAILABLE, "try again");
            }
        }
    };
    let parsed = match checked {
        Err(e) => {
            count("unauthorized");
            warn!(error = %e, "webhook with a bad signature");
            return json_error(StatusCode::UNAUTHORIZED, e.to_string());
        }
        Ok(Err(_)) if event.is_empty() => {
            count("bad_request");
            return json_error(StatusCode::BAD_REQUEST, "missing X-GitHub-Event header");
        }
        Ok(parsed) => parsed,
    };
    let delivery_id = header("x-github-delivery").unwrap_or("").to_string();
    let claim = match ctx.deliveries.claim(&delivery_id, ANSWER_TIMEOUT).await {
        Ok(claim) => claim,
        Err(Claimed::InFlight) => {
            count("busy");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "a copy of this delivery is still being handled; send it again",
            );
        }
        Err(_) => {
            count("duplicate");
            return json(
                StatusCode::OK,
                &serde_json::json!({ "status": "duplicate", "delivery": delivery_id }),
            );
        }
    };
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            count("bad_request");
            warn!(error = %e, "malformed webhook");
            return json_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let events = match parsed {
        Delivery::Ping => {
            count("ping");
            claim.applied();
            return json(StatusCode::OK, &serde_json::json!({ "status": "pong" }));
        }
        Delivery::Ignored { reason } => {
            count("ignored");
            claim.applied();
            return json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "status": "ignored", "reason": reason }),
            );
        }
        Delivery::Events(events) => events,
        Delivery::Access(change) => {
            return on_access(ctx, change, &delivery_id, claim, count).await;
        }
    };
    let unknown = events
        .iter()
        .find_map(|e| e.repo().filter(|r| !ctx.shared.repos.contains(*r)));
    if let Some(repo) = unknown {
        count("unknown_repository");
        info!(%repo, "webhook for a repository sluice does not gate; ignored");
        let reason = format!("repository {repo} is not configured");
        claim.applied();
        return json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "status": "ignored", "reason": reason }),
        );
    }
    let answer = serde_json::json!({ "status": "accepted", "events": events.len() });
    let inputs = events.into_iter().map(Input::Event).collect();
    accept_durably(ctx, inputs, &delivery_id, claim, count, answer).await
}

/// The App's access changed: the gated repositories in `change` go to the
/// driver (which forgets their installations and re-reads the granted
/// ones), with the delivery id, durably.
async fn on_access(
    ctx: &HttpContext,
    change: webhook::AccessChange,
    delivery_id: &str,
    claim: Claim<'_>,
    count: impl Fn(&str),
) -> Response {
    let gated = |repos: Vec<RepoName>| -> Vec<RepoName> {
        repos
            .into_iter()
            .filter(|r| ctx.shared.repos.contains(r))
            .collect()
    };
    let (granted, revoked) = (gated(change.granted), gated(change.revoked));
    info!(
        what = %change.what,
        installation = change.installation,
        granted = ?granted.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        revoked = ?revoked.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "the GitHub App's access changed"
    );
    if granted.is_empty() && revoked.is_empty() {
        count("ignored");
        claim.applied();
        return json(
            StatusCode::ACCEPTED,
            &serde_json::json!({
                "status": "ignored",
                "reason": format!("{}: no repository sluice gates", change.what),
            }),
        );
    }
    let answer = serde_json::json!({
        "status": "accepted",
        "repositories": granted.len() + revoked.len(),
        "what": change.what,
    });
    let inputs = vec![Input::Access { granted, revoked }];
    accept_durably(ctx, inputs, delivery_id, claim, count, answer).await
}

/// Journals a delivery's inputs with its id (so that a redelivery after a
/// restart is still recognised) and answers 202 with `answer` only once
/// they are on disk (group commit): a 202 means durable.
async fn accept_durably(
    ctx: &HttpContext,
    mut inputs: Vec<Input>,
    delivery_id: &str,
    claim: Claim<'_>,
    count: impl Fn(&str),
    answer: serde_json::Value,
) -> Response {
    if !delivery_id.is_empty() {
        inputs.push(Input::Delivery(delivery_id.to_string()));
    }
    if let Err(refused) = journal(ctx, inputs, &count).await {
        return refused;
    }
    claim.applied();
    count("accepted");
    json(StatusCode::ACCEPTED, &answer)
}

/// Submits a delivery's inputs and waits until they are on disk; otherwise
/// the 503 to answer, asking for a redelivery.
async fn journal(
    ctx: &HttpContext,
    inputs: Vec<Input>,
    count: &impl Fn(&str),
) -> Result<(), Response> {
    let durable = match ctx.shared.inputs.submit_durable(inputs) {
        Ok(durable) => durable,
        Err(Refused::Full) => {
            count("overloaded");
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "event queue full; redeliver later",
            ));
        }
        Err(Refused::Closed) => {
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "sluice is shutting down",
            ));
        }
    };
    match tokio::time::timeout(JOURNAL_TIMEOUT, durable).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(error))) => {
            count("not_journaled");
            Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot write the journal ({error}); redeliver later"),
            ))
        }
        Ok(Err(_)) | Err(_) => {
            count("not_journaled");
            Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the journal did not answer in time; redeliver later",
            ))
        }
    }
}

/// The body of /retest and /try-merge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrRequest {
    pub repo: String,
    pub pr: u64,
}

async fn on_request(ctx: &HttpContext, name: &str, auth: Option<&str>, body: &[u8]) -> Response {
    let Some(expected) = &ctx.api_token else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "no API token is configured (SLUICE_API_TOKEN)",
        );
    };
    let given = auth.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let id = ctx.shared.request_id();
    let event = if name == "branch" {
        match branch_request(body, id) {
            Ok(event) => event,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
        }
    } else {
        match pr_request(name, body, id) {
            Ok(event) => event,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
        }
    };
    let (reply, answer) = oneshot::channel();
    let submitted = ctx.shared.inputs.send(Input::Request {
        event: event.clone(),
        request: id,
        reply,
    });
    if !matches!(
        tokio::time::timeout(ANSWER_TIMEOUT, submitted).await,
        Ok(Ok(()))
    ) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "sluice is busy; try again");
    }
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(answer)) => answer,
        _ => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no answer from the queue in time",
            );
        }
    };
    let status = match &answer {
        Answer::UnknownPr => {
            let pr = match &event {
                Event::Retest { pr, .. } | Event::TryMerge { pr, .. } => pr.to_string(),
                _ => String::new(),
            };
            return json_error(StatusCode::NOT_FOUND, format!("sluice does not track {pr}"));
        }
        Answer::UnknownRepo { repo } => {
            return json_error(
                StatusCode::NOT_FOUND,
                format!("sluice does not gate {repo}"),
            );
        }
        Answer::RetestQueued { .. } | Answer::Merging { .. } => StatusCode::ACCEPTED,
        Answer::BranchMode { .. } => StatusCode::OK,
        Answer::CannotTest { .. } | Answer::NotReady { .. } => StatusCode::CONFLICT,
    };
    json(status, &answer)
}

/// The body of /branch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    pub repo: String,
    pub branch: String,
    pub state: BranchMode,
}

/// A JSON object body as `T` (serde would also read a struct from an
/// array; only the documented object is accepted).
fn object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.is_object() => serde_json::from_value::<T>(v).map_err(|e| e.to_string()),
        Ok(_) => Err("not a JSON object".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn branch_request(body: &[u8], request: RequestId) -> Result<Event, String> {
    let r: BranchRequest = object(body).map_err(|e| {
        format!(
            "expected {{\"repo\": \"owner/name\", \"branch\": \"main\", \"state\": \"running\" | \"paused\" | \"draining\"}}: {e}"
        )
    })?;
    let repo = RepoName::parse(&r.repo).map_err(|e| e.to_string())?;
    if r.branch.is_empty()
        || r.branch.len() > 255
        || r.branch.starts_with(crate::core::STAGING_PREFIX)
    {
        return Err(format!("{:?} is not a target branch", r.branch));
    }
    Ok(Event::SetBranchMode {
        repo,
        branch: r.branch,
        mode: r.state,
        request,
    })
}

fn pr_request(name: &str, body: &[u8], request: RequestId) -> Result<Event, String> {
    let r: PrRequest = object(body)
        .map_err(|e| format!("expected {{\"repo\": \"owner/name\", \"pr\": <number>}}: {e}"))?;
    let repo = RepoName::parse(&r.repo).map_err(|e| e.to_string())?;
    let pr = PrKey { repo, number: r.pr };
    Ok(if name == "retest" {
        Event::Retest { pr, request }
    } else {
        Event::TryMerge { pr, request }
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    // Comparing digests keeps the time independent of where they differ and
    // of the token's length.
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// A PR as the JSON endpoints show it: the core's view plus its result link.
#[derive(Serialize)]
pub struct PrJson {
    #[serde(flatten)]
    pub view: PrView,
    pub link: Option<String>,
}

impl PrJson {
    /// `view` with the link to its build's results.
    fn of(ctx: &HttpContext, view: PrView) -> PrJson {
        PrJson {
            link: view.build.as_ref().map(|b| ctx.results.link(&b.result_key)),
            view,
        }
    }
}

// The list bodies are serialized straight from these types: going through
// `serde_json::json!` would first build a `Value` tree of every PR, which
// for 10,000 PRs costs about ten times the memory of the answer itself.
#[derive(Serialize)]
#[serde(bound = "")]
struct PrsJson<'a, F: Fn(&PrView) -> bool> {
    prs: PrList<'a, F>,
}

#[derive(Serialize)]
#[serde(bound = "")]
struct PrsByStateJson<'a, F: Fn(&PrView) -> bool> {
    counts: BTreeMap<&'static str, usize>,
    prs: PrList<'a, F>,
}

#[derive(Serialize)]
struct TrainsJson {
    trains: Vec<crate::core::TrainView>,
}

/// A history entry as JSON, with the link to the results of its build.
fn with_link(results: &dyn ResultsStore, entry: &HistoryEntry) -> serde_json::Value {
    crate::runtime::history::with_link(results, entry)
}

/// Which PRs the list endpoint `view` shows; None if there is no such view.
fn view_filter(view: &str) -> Option<fn(&PrView) -> bool> {
    let keep: fn(&PrView) -> bool = match view {
        "status" => |_| true,
        "ready-for-merge" => PrView::ready_for_merge,
        "review-status" => |v| v.approved,
        "passing" => PrView::passing,
        _ => return None,
    };
    Some(keep)
}

/// `GET /prs?state=testing&repo=octo/demo`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PrsQuery {
    state: Option<String>,
    repo: Option<String>,
}

fn prs_by_state(ctx: &HttpContext, query: PrsQuery) -> Response {
    let state = match query
        .state
        .as_deref()
        .map(|s| (s, crate::core::Phase::parse(s)))
    {
        None => None,
        Some((_, Some(phase))) => Some(phase),
        Some((asked, None)) => {
            let names: Vec<&str> = crate::core::Phase::ALL.iter().map(|p| p.name()).collect();
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown state {:?}; the states are {}",
                    asked.chars().take(64).collect::<String>(),
                    names.join(", ")
                ),
            );
        }
    };
    let repo = query.repo.as_deref();
    let in_repo = move |r: &RepoName| repo.is_none_or(|asked| r.as_str() == asked);
    // Counted, then written one view at a time under the read lock, as the
    // list views are (see `list_view`).
    let state_now = ctx.shared.state.read().unwrap_or_else(|e| e.into_inner());
    let counts: PhaseCounts = state_now
        .pr_phases_iter()
        .filter(|(r, _)| in_repo(r))
        .map(|(_, phase)| phase)
        .collect();
    let body = PrsByStateJson {
        counts: counts.iter().map(|(phase, n)| (phase.name(), n)).collect(),
        prs: PrList {
            ctx,
            state: &state_now,
            keep: move |v: &PrView| in_repo(&v.repo) && state.is_none_or(|s| v.phase == s),
        },
    };
    json(StatusCode::OK, &body)
}

fn list_view(ctx: &HttpContext, keep: fn(&PrView) -> bool) -> Response {
    // Serialized under the read lock, one view at a time: for 10,000 PRs
    // this holds the lock some 30 ms longer than collecting the views
    // first, and spares the ~10 MB that list of views would take.
    let state = ctx.shared.state.read().unwrap_or_else(|e| e.into_inner());
    let prs = PrList {
        ctx,
        state: &state,
        keep,
    };
    json(StatusCode::OK, &PrsJson { prs })
}

/// The PRs `keep` selects as a JSON array, each view made as it is written.
struct PrList<'a, F: Fn(&PrView) -> bool> {
    ctx: &'a HttpContext,
    state: &'a crate::core::State,
    keep: F,
}

impl<F: Fn(&PrView) -> bool> Serialize for PrList<'_, F> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.state
                .pr_views_iter()
                .filter(|v| (self.keep)(v))
                .map(|view| PrJson::of(self.ctx, view)),
        )
    }
}

/// `?from=N` of a running build's `live` log.
#[derive(Debug, Default, serde::Deserialize)]
struct LiveQuery {
    from: Option<usize>,
}

async fn serve_result(
    ctx: Arc<HttpContext>,
    tail: &str,
    query: LiveQuery,
) -> Result<Response, Rejection> {
    // A running build's page and live log come from sluice itself (the
    // store holds only a placeholder until the build ends).
    if let Some((build, file)) = live::running_build(&ctx, tail) {
        match file.as_str() {
            "" | "index.html" => return Ok(live::page(&ctx, &build).await),
            "live" => {
                let page = build
                    .candidate
                    .results_key(&build.id)
                    .map(|k| ctx.results.link(&k));
                return Ok(live::stream(ctx, build.id, query.from.unwrap_or(0), page));
            }
            _ => {}
        }
    } else if tail.ends_with("/live") {
        // Finished (or never started here): the stream says so at once.
        if let Some(build) = tail
            .rsplit('/')
            .nth(1)
            .and_then(|b| crate::core::BuildId::parse(b).ok())
        {
            return Ok(live::stream(ctx, build, usize::MAX, None));
        }
    }
    match ctx.results.read(tail).await {
        Ok(Some(file)) => {
            Ok(
                warp::reply::with_header(file.bytes.to_vec(), "content-type", file.content_type)
                    .into_response(),
            )
        }
        Ok(None) => Ok(json_error(StatusCode::NOT_FOUND, "no such result")),
        Err(e) => {
            warn!(error = %e, "cannot read a result");
            Ok(json_error(StatusCode::NOT_FOUND, "no such result"))
        }
    }
}

/// A request's headers must arrive within this, or the connection is
/// closed (a client that opens connections and sends nothing, or a byte a
/// minute, would otherwise hold them for ever).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once; the next waits in the listen backlog until
/// one closes.
pub const MAX_CONNECTIONS: usize = 4096;

/// Serves `listener` until `shutdown` resolves, then lets open requests
/// finish; returns the bound address and the server task. warp's own
/// server sets no timer, so hyper would wait for a request's headers for
/// ever: this one reads them under [`HEADER_READ_TIMEOUT`] and serves at
/// most [`MAX_CONNECTIONS`] at once.
pub fn serve(
    ctx: Arc<HttpContext>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    let bound = listener.local_addr()?;
    let service = warp::service(routes(ctx));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => tokio::select! {
                        () = &mut shutdown => break,
                        accepted = listener.accept() => accepted.map(|(io, _)| (io, slot)),
                    },
                    Err(_) => break,
                },
            };
            let (io, slot) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some
                    // to close rather than spin.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = graceful.watch(
                builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned(),
            );
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
    });
    Ok((bound, task))
}

#[allow(dead_code)]
fn _assert_metrics_type(_: &Metrics) {}
