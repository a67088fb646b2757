//! Webhook deliveries: signed like GitHub's, sent in order by one task, never
//! retried, each recorded with the receiver's answer. Under chaos
//! ([`super::Chaos`]) some are dropped, duplicated or held back and sent
//! after later ones.

use super::Inner;
use super::chaos::{Counters, DeliveryFate, MAX_HOLD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// One delivery as the fake recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryView {
    /// The `X-GitHub-Delivery` GUID (a redelivery keeps it).
    pub id: String,
    /// The `X-GitHub-Event` header.
    pub event: String,
    /// The payload's `action`, if it has one.
    pub action: Option<String>,
    /// The HTTP status the receiver answered, or None if it could not be reached.
    pub status: Option<u16>,
    /// Why it could not be delivered.
    pub error: Option<String>,
    /// Whether this was sent by [`super::FakeHub::redeliver`].
    pub redelivery: bool,
    /// Chaos dropped it: never sent (`status` and `error` say so).
    pub dropped: bool,
    /// Chaos sent it a second time (same id); this record is the copy.
    pub duplicate: bool,
    /// The exact body sent.
    pub body: String,
}

pub(crate) struct Job {
    pub id: String,
    pub event: String,
    pub action: Option<String>,
    pub body: Vec<u8>,
    pub redelivery: bool,
    pub reply: Option<oneshot::Sender<Result<u16, String>>>,
    /// When the event happened (a delivery delay counts from here).
    pub at: Instant,
}

/// `sha256=<hex>` of the body, as in `X-Hub-Signature-256`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A random GUID, like GitHub's delivery ids.
pub(crate) fn guid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A delivery held back by chaos, sent after `behind` later ones were sent
/// or at `until`, whichever comes first.
struct Held {
    job: Job,
    behind: usize,
    until: Instant,
}

pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut held: Vec<Held> = Vec::new();
    loop {
        let next_due = held.iter().map(|h| h.until).min();
        let job = tokio::select! {
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
            _ = sleep_until_or_forever(next_due) => {
                let now = Instant::now();
                let (due, keep): (Vec<Held>, Vec<Held>) =
                    held.drain(..).partition(|h| h.until <= now);
                held = keep;
                for h in due {
                    send(&inner, &client, h.job, false).await;
                }
                continue;
            }
        };
        // Redeliveries (asked for by a test) are never delayed, nor subject
        // to chaos. The delay counts from the event, so it does not add up
        // over a queue of deliveries.
        if job.reply.is_none() {
            let delay = *inner.delivery_delay.lock().expect("delay lock");
            if !delay.is_zero() {
                tokio::time::sleep_until((job.at + delay).into()).await;
            }
        }
        let fate = if job.reply.is_some() {
            None
        } else {
            inner
                .chaos
                .lock()
                .expect("chaos lock")
                .as_mut()
                .map(|d| d.delivery())
        };
        match fate {
            Some(DeliveryFate::Drop) => {
                Counters::bump(&inner.counters.dropped);
                tracing::debug!(id = %job.id, event = %job.event, "fakehub chaos: dropped");
                record(&inner, &job, Err("dropped by chaos".into()), true, false);
                inner.pending.fetch_sub(1, Ordering::SeqCst);
                inner.idle.notify_waiters();
                continue;
            }
            Some(DeliveryFate::Send {
                duplicate,
                hold_behind,
            }) => {
                let copy = duplicate.then(|| {
                    Counters::bump(&inner.counters.duplicated);
                    inner.pending.fetch_add(1, Ordering::SeqCst);
                    Job {
                        id: job.id.clone(),
                        event: job.event.clone(),
                        action: job.action.clone(),
                        body: job.body.clone(),
                        redelivery: false,
                        reply: None,
                        at: job.at,
                    }
                });
                if let Some(behind) = hold_behind {
                    Counters::bump(&inner.counters.reordered);
                    held.push(Held {
                        job,
                        behind,
                        until: Instant::now() + MAX_HOLD,
                    });
                } else {
                    send(&inner, &client, job, false).await;
                    release_one_behind(&inner, &client, &mut held).await;
                }
                if let Some(copy) = copy {
                    send(&inner, &client, copy, true).await;
                }
            }
            None => send(&inner, &client, job, false).await,
        }
    }
    for h in held {
        send(&inner, &client, h.job, false).await;
    }
}

/// One more delivery went out: held ones waiting behind it come closer.
async fn release_one_behind(inner: &Inner, client: &reqwest::Client, held: &mut Vec<Held>) {
    for h in held.iter_mut() {
        h.behind = h.behind.saturating_sub(1);
    }
    let (due, keep): (Vec<Held>, Vec<Held>) = held.drain(..).partition(|h| h.behind == 0);
    *held = keep;
    for h in due {
        send(inner, client, h.job, false).await;
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends one delivery and records the answer.
async fn send(inner: &Inner, client: &reqwest::Client, job: Job, duplicate: bool) {
    let target = inner.hook.lock().expect("hook lock").clone();
    let result = match target {
        None => Err("no webhook configured".to_string()),
        Some(t) => client
            .post(&t.url)
            .header("X-GitHub-Event", &job.event)
            .header("X-GitHub-Delivery", &job.id)
            .header("X-GitHub-Hook-ID", t.hook_id.to_string())
            .header("X-GitHub-Hook-Installation-Target-Type", "repository")
            .header("User-Agent", "GitHub-Hookshot/fakehub")
            .header("Content-Type", "application/json")
            .header("X-Hub-Signature-256", signature(&t.secret, &job.body))
            .body(job.body.clone())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string()),
    };
    tracing::debug!(id = %job.id, event = %job.event, ?result, duplicate, "fakehub delivery");
    record(inner, &job, result.clone(), false, duplicate);
    if let Some(reply) = job.reply {
        let _ = reply.send(result);
    }
    inner.pending.fetch_sub(1, Ordering::SeqCst);
    inner.idle.notify_waiters();
}

fn record(inner: &Inner, job: &Job, result: Result<u16, String>, dropped: bool, duplicate: bool) {
    inner
        .deliveries
        .lock()
        .expect("deliveries lock")
        .push(DeliveryView {
            id: job.id.clone(),
            event: job.event.clone(),
            action: job.action.clone(),
            status: result.as_ref().ok().copied(),
            error: result.err(),
            redelivery: job.redelivery,
            dropped,
            duplicate,
            body: String::from_utf8_lossy(&job.body).into_owned(),
        });
}
