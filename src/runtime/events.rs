//! The event stream: everything the driver decides and learns, one JSON
//! object per event with a sequence number, for `GET /events` (Server-Sent
//! Events) and outgoing webhooks.
//!
//! The driver publishes; it never waits for a subscriber and does not pay
//! for how many there are: `publish` appends to the ring and wakes one
//! fan-out task, which hands the events to a bounded broadcast buffer
//! (waking every subscriber) off the driver's thread. A subscriber that
//! falls behind by more than the buffer is dropped (its stream ends; it may
//! resume with `Last-Event-ID` while the events are still in the ring).
//! A [`Subscription`] yields each seq once, in order.

use crate::core::{Action, Candidate, Event, Timestamp};
use crate::results::ResultsStore;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

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

/// One subscriber's events: the backlog a resume asked for, then the
/// events to come, each seq once and in order.
pub struct Subscription {
    /// The events after the resumed id that were still in the ring.
    pub backlog: Vec<Arc<Published>>,
    live: broadcast::Receiver<Arc<Published>>,
    /// The newest seq this subscriber has (backlog included).
    seen: u64,
    /// An event read past a gap, handed out after the gap is reported.
    after_gap: Option<Arc<Published>>,
}

impl Subscription {
    /// The next event. `Lagged(n)`: `n` events were lost (this subscriber
    /// fell a buffer behind, or the fan-out fell a whole ring behind).
    pub async fn recv(&mut self) -> Result<Arc<Published>, RecvError> {
        loop {
            if let Some(next) = self.after_gap.take() {
                self.seen = next.seq;
                return Ok(next);
            }
            let next = self.live.recv().await?;
            if let Some(lost) = self.admit(next) {
                return Err(RecvError::Lagged(lost));
            }
        }
    }

    /// As [`Subscription::recv`], without waiting.
    pub fn try_recv(&mut self) -> Result<Arc<Published>, TryRecvError> {
        loop {
            if let Some(next) = self.after_gap.take() {
                self.seen = next.seq;
                return Ok(next);
            }
            let next = self.live.try_recv()?;
            if let Some(lost) = self.admit(next) {
                return Err(TryRecvError::Lagged(lost));
            }
        }
    }

    /// Files `next` to be handed out, unless already seen (the fan-out may
    /// hand over what a resume's backlog already held, or what was
    /// published just before subscribing). Returns how many events are
    /// missing before it, if any.
    fn admit(&mut self, next: Arc<Published>) -> Option<u64> {
        if next.seq <= self.seen {
            return None;
        }
        let lost = next.seq - self.seen - 1;
        self.after_gap = Some(next);
        (lost > 0).then_some(lost)
    }
}

pub struct EventBus {
    inner: Mutex<Ring>,
    /// Wakes the fan-out task (one waiter: one wake per publish, however
    /// many subscribers there are).
    published: tokio::sync::Notify,
}

struct Ring {
    next: u64,
    recent: VecDeque<Arc<Published>>,
    /// `None` once the fan-out has handed over the last events after a
    /// close: streams end.
    tx: Option<broadcast::Sender<Arc<Published>>>,
    /// The newest seq the fan-out has taken from the ring.
    fanned_out: u64,
    /// `close` was called: no new subscribers.
    closing: bool,
}

/// Where a new subscriber starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// From the next event (no `Last-Event-ID`).
    Now,
    /// After this seq, replaying what the ring still holds.
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
        let first = first.max(1);
        EventBus {
            inner: Mutex::new(Ring {
                next: first,
                recent: VecDeque::with_capacity(RING),
                tx: Some(tx),
                fanned_out: first - 1,
                closing: false,
            }),
            published: tokio::sync::Notify::new(),
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
        ring.recent.push_back(published);
        drop(ring);
        self.published.notify_one();
    }

    /// Hands what was published since the last call to the subscribers;
    /// after a close, ends every stream and returns false.
    pub fn fan_out_now(&self) -> bool {
        let (batch, tx, closing) = {
            let mut ring = self.lock();
            let after = ring.fanned_out;
            let mut batch: Vec<Arc<Published>> = ring
                .recent
                .iter()
                .rev()
                .take_while(|p| p.seq > after)
                .cloned()
                .collect();
            batch.reverse();
            ring.fanned_out = ring.next - 1;
            (batch, ring.tx.clone(), ring.closing)
        };
        // Outside the lock: waking subscribers must not hold up `publish`.
        if let Some(tx) = &tx {
            for published in batch {
                // No receivers is not an error here.
                let _ = tx.send(published);
            }
        }
        if closing {
            self.lock().tx = None;
        }
        !closing
    }

    /// The fan-out task: runs until the bus is closed.
    pub async fn fan_out(self: Arc<Self>) {
        while self.fan_out_now() {
            self.published.notified().await;
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

    /// The events after `after` still in the ring, and the ones to come
    /// (taken under one lock, so nothing is missed or seen twice). `None`
    /// once the bus is closed.
    pub fn subscribe(&self, after: Option<u64>) -> Option<Subscription> {
        let ring = self.lock();
        if ring.closing {
            return None;
        }
        let live = ring.tx.as_ref()?.subscribe();
        let backlog = match after {
            Some(seq) => ring
                .recent
                .iter()
                .filter(|p| p.seq > seq)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Some(Subscription {
            backlog,
            live,
            seen: ring.next - 1,
            after_gap: None,
        })
    }

    pub fn subscribers(&self) -> usize {
        self.lock().tx.as_ref().map_or(0, |tx| tx.receiver_count())
    }

    /// The next sequence number (for a subscriber told it missed events).
    pub fn next_seq(&self) -> u64 {
        self.lock().next
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closing
    }

    /// Ends every stream once what was published is handed over (at
    /// shutdown, so that the server's graceful stop does not wait for open
    /// streams).
    pub fn close(&self) {
        self.lock().closing = true;
        self.published.notify_one();
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
        Action::WakeAt { .. } => return None,
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
        let mut rx = bus.subscribe(Some(102)).unwrap();
        let seqs: Vec<u64> = rx.backlog.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![103, 104]);
        bus.publish("merged", Timestamp(9), json!({}));
        assert!(rx.try_recv().is_err(), "handed over by the fan-out");
        // The fan-out hands over 100..=105; the backlog already held
        // 103 and 104, so only 105 is new.
        bus.fan_out_now();
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
        let mut slow = bus.subscribe(None).unwrap();
        for i in 0..(SUBSCRIBER_BUFFER as u64 * 3) {
            bus.publish("status", Timestamp(i), json!({}));
            bus.fan_out_now();
        }
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Lagged(_))));
    }

    #[test]
    fn a_fan_out_a_ring_behind_is_a_gap_the_subscriber_is_told_of() {
        let bus = bus_with(0);
        let mut rx = bus.subscribe(None).unwrap();
        bus.publish("status", Timestamp(0), json!({}));
        bus.fan_out_now();
        assert_eq!(rx.try_recv().unwrap().seq, 100);
        // The fan-out does not run while a ring and ten are published.
        for i in 0..(RING as u64 + 10) {
            bus.publish("status", Timestamp(i), json!({}));
        }
        bus.fan_out_now();
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(_))));
        // Then on, each once and in order, to the newest.
        let mut seqs = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(p) => seqs.push(p.seq),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(seqs.last(), Some(&(bus.next_seq() - 1)));
    }

    #[test]
    fn a_new_subscriber_starts_from_now_even_before_the_fan_out_ran() {
        let bus = bus_with(3);
        let mut rx = bus.subscribe(None).unwrap();
        bus.publish("merged", Timestamp(9), json!({}));
        bus.fan_out_now();
        let next = rx.try_recv().unwrap();
        assert_eq!((next.seq, next.kind), (103, "merged"));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn closing_ends_every_stream() {
        let bus = bus_with(1);
        let mut rx = bus.subscribe(None).unwrap();
        bus.publish("merged", Timestamp(2), json!({}));
        bus.close();
        assert!(bus.subscribe(None).is_none());
        assert!(!bus.fan_out_now());
        // What was published before the close still reaches the stream.
        assert_eq!(rx.try_recv().unwrap().kind, "merged");
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Closed)));
    }
}
