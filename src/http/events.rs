//! `GET /events`: the event stream as Server-Sent Events. Each event is
//! `id: <seq>` and `data: <one JSON object>`; `Last-Event-ID` resumes from
//! the ring, and an id that cannot be resumed from starts from now with a
//! `missed` event first. A subscriber that stops reading is dropped.

use super::{HttpContext, json_error};
use crate::runtime::events::{Published, Resume};
use futures::StreamExt as _;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::sse;

/// More open streams than this are refused (503): each holds a socket and
/// a buffer.
pub const MAX_SUBSCRIBERS: usize = 1000;
/// A comment line this often keeps proxies from closing an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn message(published: &Published) -> sse::Event {
    sse::Event::default()
        .id(published.seq.to_string())
        .data(published.json.clone())
}

/// Counts an open stream in the gauge for as long as it lives.
struct Open(Arc<HttpContext>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.shared.metrics.event_subscribers.dec();
    }
}

pub fn stream(ctx: Arc<HttpContext>, last_event_id: Option<&[u8]>) -> Response {
    let bus = &ctx.shared.events;
    if bus.subscribers() >= MAX_SUBSCRIBERS {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many event-stream subscribers (at most {MAX_SUBSCRIBERS})"),
        );
    }
    // A header that is not UTF-8 is as bogus as one that is not a number.
    let id = last_event_id.map(|v| std::str::from_utf8(v).unwrap_or("?"));
    let resume = bus.resume_from(id);
    let after = match resume {
        Resume::After(seq) => Some(seq),
        Resume::Now | Resume::Lost => None,
    };
    let Some((backlog, rx)) = bus.subscribe(after) else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "sluice is shutting down");
    };
    // Told before anything else, so a page knows to reload what it shows.
    let missed = (resume == Resume::Lost).then(|| {
        let next = bus.next_seq();
        sse::Event::default()
            .id(next.saturating_sub(1).to_string())
            .data(
                serde_json::json!({
                    "kind": "missed",
                    "message": "Last-Event-ID cannot be resumed from (unknown, or older than the events kept); the stream starts from now",
                    "next_seq": next,
                })
                .to_string(),
            )
    });
    ctx.shared.metrics.event_subscribers.inc();
    let open = Open(ctx.clone());
    let live = futures::stream::unfold((rx, open), |(mut rx, open)| async move {
        match rx.recv().await {
            Ok(published) => Some((message(&published), (rx, open))),
            Err(RecvError::Lagged(missed)) => {
                open.0.shared.metrics.event_subscribers_dropped.inc();
                tracing::info!(
                    missed,
                    "an event-stream subscriber fell behind and was dropped"
                );
                None
            }
            Err(RecvError::Closed) => None,
        }
    });
    let events = futures::stream::iter(missed)
        .chain(futures::stream::iter(
            backlog.iter().map(|p| message(p)).collect::<Vec<_>>(),
        ))
        .chain(live)
        .map(Ok::<_, Infallible>);
    sse::reply(sse::keep_alive().interval(KEEP_ALIVE).stream(events)).into_response()
}
