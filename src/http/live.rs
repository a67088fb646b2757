//! A running build's page, served by sluice itself under the build's own
//! URL until the results store has the finished one: the log so far, and
//! `live`, the log as it grows (Server-Sent Events, each `{"text": ...}`,
//! the last `{"end": true}`), read from the executor (local processes or
//! the Kubernetes pod's log).

use super::HttpContext;
use crate::core::{Build, BuildId};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use warp::reply::{Reply, Response};
use warp::sse;

/// How often a live log asks the executor for more.
pub const POLL: Duration = Duration::from_millis(500);

/// The running build whose results live at `tail` (`<owner>/<name>/pr-N/
/// <sha>/<build>/[file]`), and the file asked for.
pub fn running_build(ctx: &HttpContext, tail: &str) -> Option<(Build, String)> {
    let parts: Vec<&str> = tail.splitn(6, '/').collect();
    if parts.len() < 5 {
        return None;
    }
    let prefix = parts[..5].join("/");
    let file = parts.get(5).copied().unwrap_or("").to_string();
    let build = BuildId::parse(parts[4]).ok()?;
    let state = ctx.shared.state.read().ok()?;
    let running = state.running_builds().find(|b| {
        b.id == build
            && b.candidate
                .results_key(&b.id)
                .is_some_and(|k| k.relative_path() == prefix)
    })?;
    Some((running.clone(), file))
}

fn still_running(ctx: &HttpContext, build: &BuildId) -> bool {
    ctx.shared
        .state
        .read()
        .map(|s| s.running_builds().any(|b| b.id == *build))
        .unwrap_or(false)
}

/// The valid UTF-8 part of `bytes`, leaving a character cut in half at the
/// end for the next read.
fn whole_chars(bytes: &[u8]) -> (String, usize) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), bytes.len()),
        Err(e) if e.error_len().is_none() => {
            let upto = e.valid_up_to();
            (String::from_utf8_lossy(&bytes[..upto]).into_owned(), upto)
        }
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), bytes.len()),
    }
}

pub async fn page(ctx: &HttpContext, build: &Build) -> Response {
    let log = ctx.executor.log_so_far(&build.id).await.unwrap_or_default();
    let Some(key) = build.candidate.results_key(&build.id) else {
        return super::json_error(warp::http::StatusCode::NOT_FOUND, "no such result");
    };
    let elapsed = crate::runtime::now().0.saturating_sub(build.started_at.0);
    let (_, whole) = whole_chars(&log);
    let html = crate::results::fs::live_page(&key, &build.candidate, elapsed, &log[..whole]);
    warp::reply::with_header(
        warp::reply::with_header(html, "content-type", "text/html; charset=utf-8"),
        "cache-control",
        "no-store",
    )
    .into_response()
}

/// `live?from=N`: the log from byte N on, as it grows, until the build
/// ends (or sluice stops); the last event links the finished page. A task reads the executor and hands the chunks
/// over a small channel; it ends when the reader goes away.
pub fn stream(
    ctx: Arc<HttpContext>,
    build: BuildId,
    from: usize,
    page: Option<String>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let mut sent = from;
        loop {
            let running = still_running(&ctx, &build) && !ctx.shared.events.is_closed();
            let log = ctx.executor.log_so_far(&build).await.unwrap_or_default();
            if log.len() > sent {
                let (text, took) = whole_chars(&log[sent..]);
                sent += took;
                if took > 0
                    && tx
                        .send(serde_json::json!({ "text": text }).to_string())
                        .await
                        .is_err()
                {
                    return;
                }
            }
            if !running {
                // The last lines may come after the last read: the whole
                // log is on the finished page.
                let end = serde_json::json!({ "end": true, "page": page });
                let _ = tx.send(end.to_string()).await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok::<_, Infallible>(sse::Event::default().data(data)), rx))
    });
    sse::reply(sse::keep_alive().stream(events)).into_response()
}
