//! A running build's page, served by sluice itself under the build's own
//! URL until the results store has the finished one: the log so far, and
//! `live`, the log as it grows (Server-Sent Events, each `{"text": ...}`,
//! the last `{"end": true}`), read from the executor (local processes or
//! the Kubernetes pod's log).

use super::HttpContext;
use crate::core::{Build, BuildId};
use crate::executor::{LOG_READ_MAX, LogPart};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use warp::reply::{Reply, Response};
use warp::sse;

/// How often a live log asks the executor for more.
pub const POLL: Duration = Duration::from_millis(500);

/// A running build's page shows this much of the end of its log (the live
/// log adds what comes after).
pub const PAGE_TAIL: usize = 256 * 1024;

/// Live logs open at once, all builds together; one more is a 503.
pub const MAX_STREAMS: usize = 64;

/// Counts the live logs open now.
#[derive(Default)]
pub struct Streams(AtomicUsize);

/// One open live log; counted until dropped.
struct StreamSlot(Arc<HttpContext>);

impl StreamSlot {
    fn open(ctx: &Arc<HttpContext>) -> Option<StreamSlot> {
        ctx.live_streams
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(ctx.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.live_streams.0.fetch_sub(1, Ordering::AcqRel);
    }
}

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
    let Some(key) = build.candidate.results_key(&build.id) else {
        return super::json_error(warp::http::StatusCode::NOT_FOUND, "no such result");
    };
    let read = ctx
        .executor
        .log_part(&build.id, LogPart::Tail(PAGE_TAIL))
        .await
        .unwrap_or_default();
    // Whole characters only, at both ends of the tail.
    let skip = if read.start > 0 {
        read.bytes
            .iter()
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count()
    } else {
        0
    };
    let (_, whole) = whole_chars(&read.bytes[skip..]);
    let shown = &read.bytes[skip..skip + whole];
    let elapsed = crate::runtime::now().0.saturating_sub(build.started_at.0);
    let html =
        crate::results::fs::live_page(&key, &build.candidate, elapsed, shown, read.start + skip);
    warp::reply::with_header(
        warp::reply::with_header(html, "content-type", "text/html; charset=utf-8"),
        "cache-control",
        "no-store",
    )
    .into_response()
}

/// `live?from=N`: the log from byte N on, as it grows, until the build
/// ends (or sluice stops); the last event links the finished page. A task
/// reads the executor (only what is new, at most [`LOG_READ_MAX`] a time)
/// and hands the chunks over a small channel; it ends when the reader goes
/// away. At most [`MAX_STREAMS`] are open at once.
pub fn stream(
    ctx: Arc<HttpContext>,
    build: BuildId,
    from: usize,
    page: Option<String>,
) -> Response {
    let Some(slot) = StreamSlot::open(&ctx) else {
        return super::json_error(
            warp::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} live logs are open; try again later"),
        );
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let _slot = slot;
        let mut sent = from;
        loop {
            let running = still_running(&ctx, &build) && !ctx.shared.events.is_closed();
            let read = ctx
                .executor
                .log_part(&build, LogPart::From(sent))
                .await
                .unwrap_or_default();
            let mut more = false;
            if read.total > sent && read.start == sent {
                let (text, took) = whole_chars(&read.bytes);
                sent += took;
                more = read.bytes.len() == LOG_READ_MAX;
                if took > 0
                    && tx
                        .send(serde_json::json!({ "text": text }).to_string())
                        .await
                        .is_err()
                {
                    return;
                }
            }
            if more {
                continue;
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
