//! The event stream: everything the driver decides and learns, one JSON
//! object per event with a sequence number, for `GET /events` (Server-Sent
//! Events) and outgoing webhooks.
//!
//! The driver publishes; it never waits for a subscriber. Each subscriber
//! reads from a bounded broadcast buffer, and one that falls behind by more
//! than the buffer is dropped (its stream ends; it may resume with
//! `Last-Event-ID` while the events are still in the ring).

use crate::core::{Action, Candidate, Event, Timestamp};
use crate::results::ResultsStore;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// How many recent events a resume can reach back to.
pub const RING: usize = 4096;
/// How far one subscriber may fall behind before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// An event's Server-Sent Events frame: `id: N`, `data: JSON`, blank line.
pub fn frame(id: u64, json: &str) -> bytes::Bytes {
    format!("id: {id}\ndata: {json}\n\n").into()
}

/// One published event: its sequence number and its JSON, serialized once
/// for every subscriber.
#[derive(Debug)]
pub struct Published {
    pub seq: u64,
    pub kind: &'static str,
    pub json: String,
    /// Its Server-Sent Events frame (`id: N`, `data: JSON`, blank line),
    /// built once for every subscriber.
    pub frame: bytes::Bytes,
}

/// The events to come, for one subscriber.
pub type Live = broadcast::Receiver<Arc<Published>>;

pub struct EventBus {
    inner: Mutex<Ring>,
}

struct Ring {
    next: u64,
    recent: VecDeque<Arc<Published>>,
    /// `None` once the bus is closed (shutdown): streams end.
    tx: Option<broadcast::Sender<Arc<Published>>>,
}

/// Where a new subscriber starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// From the next event (no `Last-Event-ID`).
    Now,
    /// After this one: the events since are replayed from the ring.
    After(u64),
    /// The id was not one this process can resume from (malformed, from
    /// the future, or older than the ring): from now, and the subscriber is
    /// told it missed events.
    Lost,
}

impl EventBus {
    /// Sequence numbers start at `first`; the driver passes the start time
    /// in microseconds, so they keep increasing across restarts.
    pub fn new(first: u64) -> EventBus {
        let (tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        EventBus {
            inner: Mutex::new(Ring {
                next: first.max(1),
                recent: VecDeque::with_capacity(RING),
                tx: Some(tx),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes one event: `body` gains `seq`, `kind` and `at`.
    pub fn publish(&self, kind: &'static str, at: Timestamp, mut body: Value) {
        let mut ring = self.lock();
        let seq = ring.next;
        ring.next += 1;
        if let Some(object) = body.as_object_mut() {
            object.insert("seq".into(), seq.into());
            object.insert("kind".into(), kind.into());
            object.insert("at".into(), at.0.into());
        }
        let json = body.to_string();
        let frame = frame(seq, &json);
        let published = Arc::new(Published {
            seq,
            kind,
            json,
            frame,
        });
        if ring.recent.len() == RING {
            ring.recent.pop_front();
        }
        ring.recent.push_back(published.clone());
        if let Some(tx) = &ring.tx {
            // No receivers is not an error here.
            let _ = tx.send(published);
        }
    }

    /// What `Last-Event-ID` means: see [`Resume`].
    pub fn resume_from(&self, last_event_id: Option<&str>) -> Resume {
        let Some(id) = last_event_id else {
            return Resume::Now;
        };
        let ring = self.lock();
        match id.trim().parse::<u64>() {
            Ok(seq) if seq.saturating_add(1) == ring.next => Resume::After(seq),
            Ok(seq)
                if seq < ring.next
                    && ring
                        .recent
                        .front()
                        .is_some_and(|oldest| oldest.seq <= seq.saturating_add(1)) =>
            {
                Resume::After(seq)
            }
            _ => Resume::Lost,
        }
    }

    /// The events after `after` still in the ring, and a receiver for the
    /// ones to come (taken under one lock, so nothing is missed or seen
    /// twice). `None` once the bus is closed.
    pub fn subscribe(&self, after: Option<u64>) -> Option<(Vec<Arc<Published>>, Live)> {
        let ring = self.lock();
        let rx = ring.tx.as_ref()?.subscribe();
        let backlog = match after {
            Some(seq) => ring
                .recent
                .iter()
                .filter(|p| p.seq > seq)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Some((backlog, rx))
    }

    pub fn subscribers(&self) -> usize {
        self.lock().tx.as_ref().map_or(0, |tx| tx.receiver_count())
    }

    /// The next sequence number (for a subscriber told it missed events).
    pub fn next_seq(&self) -> u64 {
        self.lock().next
    }

    pub fn is_closed(&self) -> bool {
        self.lock().tx.is_none()
    }

    /// Ends every stream (at shutdown, so that the server's graceful stop
    /// does not wait for open streams).
    pub fn close(&self) {
        self.lock().tx = None;
    }
}

fn candidate_json(candidate: &Candidate) -> Value {
    json!({
        "repo": candidate.repo,
        "target_branch": candidate.target_branch,
        "target_sha": candidate.target_sha,
        "prs": candidate.prs.iter().map(|p| json!({"number": p.number, "head_sha": p.head_sha})).collect::<Vec<_>>(),
        "car": candidate.car,
    })
}

/// What an action says on the stream, if anything. Reads and replies are
/// not decisions anyone follows; they are left out.
pub fn of_action(action: &Action, results: &dyn ResultsStore) -> Option<(&'static str, Value)> {
    let link = |key: &crate::core::ResultKey| results.link(key);
    Some(match action {
        Action::SetStatus {
            repo,
            sha,
            state,
            description,
            link: key,
            ..
        } => (
            "status",
            json!({"repo": repo, "sha": sha, "state": state, "description": description,
                   "target_url": key.as_ref().map(link)}),
        ),
        Action::StartBuild { build, candidate } => (
            "build_started",
            json!({"build": build, "candidate": candidate_json(candidate),
                   "link": candidate.results_key(build).as_ref().map(link)}),
        ),
        Action::CancelBuild { build } => ("build_cancelled", json!({ "build": build })),
        Action::Merge { pr, pair, build } => (
            "merging",
            json!({"repo": pr.repo, "pr": pr.number, "head": pair.head, "target": pair.target, "build": build}),
        ),
        Action::BuildCar {
            repo,
            branch,
            car,
            parent,
            pr,
            head,
            ..
        } => (
            "car_started",
            json!({"repo": repo, "branch": branch, "car": car, "parent": parent, "pr": pr, "head": head}),
        ),
        Action::Land {
            repo,
            branch,
            from,
            to,
            cars,
            ..
        } => (
            "landing",
            json!({"repo": repo, "branch": branch, "from": from, "to": to,
                   "cars": cars.iter().map(|(id, sha)| json!({"car": id, "sha": sha})).collect::<Vec<_>>()}),
        ),
        Action::ClosePr {
            pr, head, landed, ..
        } => (
            "pr_closed_as_landed",
            json!({"repo": pr.repo, "pr": pr.number, "head": head, "landed": landed}),
        ),
        Action::Answer { pr, comment, .. } => (
            "answered",
            json!({"repo": pr.repo, "pr": pr.number, "comment": comment}),
        ),
        Action::React {
            repo,
            comment,
            content,
        } => (
            "reacted",
            json!({"repo": repo, "comment": comment, "content": content}),
        ),
        Action::Drift { repo, differences } => {
            ("drift", json!({"repo": repo, "differences": differences}))
        }
        Action::Record(entry) => (
            crate::runtime::history::kind_of(entry),
            crate::runtime::history::with_link(results, entry),
        ),
        Action::CheckWriteAccess { .. }
        | Action::FetchReviews { .. }
        | Action::FetchBranch { .. }
        | Action::FetchPr { .. }
        | Action::Reply { .. } => return None,
    })
}

/// What sluice learned, as one `learned` event (not the whole payload: the
/// kind of fact and where). Ticks are not news.
pub fn of_event(event: &Event, kind: &'static str) -> Option<Value> {
    if matches!(event, Event::Tick) {
        return None;
    }
    Some(json!({ "event": kind, "repo": event.repo() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus_with(n: u64) -> EventBus {
        let bus = EventBus::new(100);
        for i in 0..n {
            bus.publish("status", Timestamp(i), json!({ "i": i }));
        }
        bus
    }

    #[test]
    fn a_resume_replays_what_came_after_and_nothing_twice() {
        let bus = bus_with(5); // seqs 100..=104
        assert_eq!(bus.resume_from(Some("102")), Resume::After(102));
        let (backlog, mut rx) = bus.subscribe(Some(102)).unwrap();
        let seqs: Vec<u64> = backlog.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![103, 104]);
        bus.publish("merged", Timestamp(9), json!({}));
        let next = rx.try_recv().unwrap();
        assert_eq!(next.seq, 105);
        let value: Value = serde_json::from_str(&next.json).unwrap();
        assert_eq!(value["kind"], "merged");
        assert_eq!(value["seq"], 105);
    }

    #[test]
    fn bogus_or_stale_ids_start_from_now() {
        let bus = bus_with(RING as u64 + 10);
        assert_eq!(bus.resume_from(None), Resume::Now);
        assert_eq!(bus.resume_from(Some("banana")), Resume::Lost);
        assert_eq!(bus.resume_from(Some("-3")), Resume::Lost);
        assert_eq!(bus.resume_from(Some("99999999999")), Resume::Lost);
        assert_eq!(bus.resume_from(Some(&u64::MAX.to_string())), Resume::Lost);
        // Older than the ring holds.
        assert_eq!(bus.resume_from(Some("100")), Resume::Lost);
        // The newest: nothing to replay, but no gap either.
        let newest = bus.next_seq() - 1;
        assert_eq!(
            bus.resume_from(Some(&newest.to_string())),
            Resume::After(newest)
        );
        // The oldest still held, minus one: everything in the ring.
        let oldest = bus.next_seq() - RING as u64;
        assert_eq!(
            bus.resume_from(Some(&(oldest - 1).to_string())),
            Resume::After(oldest - 1)
        );
    }

    #[test]
    fn a_subscriber_that_stops_reading_falls_behind_and_never_blocks_the_publisher() {
        let bus = bus_with(0);
        let (_, mut slow) = bus.subscribe(None).unwrap();
        for i in 0..(SUBSCRIBER_BUFFER as u64 * 3) {
            bus.publish("status", Timestamp(i), json!({}));
        }
        assert!(matches!(
            slow.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }

    #[test]
    fn closing_ends_every_stream() {
        let bus = bus_with(1);
        let (_, mut rx) = bus.subscribe(None).unwrap();
        bus.close();
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        assert!(bus.subscribe(None).is_none());
    }
}
