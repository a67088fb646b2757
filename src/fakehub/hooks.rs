//! Webhook deliveries: signed like GitHub's, sent in order by one task, never
//! retried, each recorded with the receiver's answer.

use super::Inner;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
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

pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    while let Some(job) = rx.recv().await {
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
        tracing::debug!(id = %job.id, event = %job.event, ?result, "fakehub delivery");
        inner
            .deliveries
            .lock()
            .expect("deliveries lock")
            .push(DeliveryView {
                id: job.id,
                event: job.event,
                action: job.action,
                status: result.as_ref().ok().copied(),
                error: result.as_ref().err().cloned(),
                redelivery: job.redelivery,
                body: String::from_utf8_lossy(&job.body).into_owned(),
            });
        if let Some(reply) = job.reply {
            let _ = reply.send(result);
        }
        inner.pending.fetch_sub(1, Ordering::SeqCst);
        inner.idle.notify_waiters();
    }
}
