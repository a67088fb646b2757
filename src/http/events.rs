//! `GET /events`: the event stream as Server-Sent Events. Each event is
//! `id: <seq>` and `data: <one JSON object>`; `Last-Event-ID` resumes from
//! the ring, and an id that cannot be resumed from starts from now with a
//! `missed` event first. A subscriber that stops reading is dropped.

use super::{HttpContext, json_error};
use crate::runtime::events::Resume;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::error::TrySendError;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// More open streams than this are refused (503): each holds a socket and
/// a buffer.
pub const MAX_SUBSCRIBERS: usize = 1000;
/// A comment line this often keeps proxies from closing an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// At most this many waiting events go out in one write.
const COALESCE: usize = 64;
/// Events queued for one subscriber's connection; one more and it is
/// dropped as not reading.
pub const SUBSCRIBER_QUEUE: usize = 256;

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
    let Some(mut rx) = bus.subscribe(after) else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "sluice is shutting down");
    };
    let backlog: Vec<Bytes> = std::mem::take(&mut rx.backlog)
        .iter()
        .map(|p| p.frame.clone())
        .collect();
    // Told before anything else, so a page knows to reload what it shows.
    let missed = (resume == Resume::Lost).then(|| {
        let next = bus.next_seq();
        let data = serde_json::json!({
            "kind": "missed",
            "message": "Last-Event-ID cannot be resumed from (unknown, or older than the events kept); the stream starts from now",
            "next_seq": next,
        });
        crate::runtime::events::frame(next.saturating_sub(1), &data.to_string())
    });
    ctx.shared.metrics.event_subscribers.inc();
    let open = Open(ctx.clone());
    // A task per subscriber moves frames (built once at publish) from the
    // bus to a small queue the response reads. The task is always polled,
    // so a subscriber that stops reading is noticed (its queue is full, or
    // it fell a bus buffer behind) and dropped: no more events, nothing
    // held but what is queued, the driver never waits.
    let (queue, mut body_rx) = tokio::sync::mpsc::channel::<Bytes>(SUBSCRIBER_QUEUE);
    tokio::spawn(async move {
        let open = open;
        let dropped = |missed: u64| {
            open.0.shared.metrics.event_subscribers_dropped.inc();
            tracing::info!(
                missed,
                "an event-stream subscriber stopped reading and was dropped"
            );
        };
        loop {
            let next = tokio::select! {
                _ = queue.closed() => return,
                next = tokio::time::timeout(KEEP_ALIVE, rx.recv()) => next,
            };
            let chunk = match next {
                Err(_) => Bytes::from_static(b":\n\n"),
                Ok(Ok(published)) => published.frame.clone(),
                Ok(Err(RecvError::Lagged(missed))) => return dropped(missed),
                Ok(Err(RecvError::Closed)) => return,
            };
            match queue.try_send(chunk) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return dropped(SUBSCRIBER_QUEUE as u64),
                Err(TrySendError::Closed(_)) => return,
            }
        }
    });
    // What is waiting goes out in one write.
    let live = futures::stream::poll_fn(move |cx| {
        let first = match body_rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(first)) => first,
            std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        };
        let mut chunk = BytesMut::from(&first[..]);
        for _ in 1..COALESCE {
            match body_rx.try_recv() {
                Ok(next) => chunk.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        std::task::Poll::Ready(Some(chunk.freeze()))
    });
    let body = futures::stream::iter(missed)
        .chain(futures::stream::iter(backlog))
        .chain(live)
        .map(Ok::<_, Infallible>);
    let reply = warp::reply::with_header(
        warp::reply::stream(body),
        "content-type",
        "text/event-stream",
    );
    warp::reply::with_header(reply, "cache-control", "no-cache").into_response()
}
