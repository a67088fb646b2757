//! Outgoing webhooks: every event of the stream POSTed to the URLs of
//! `[[events.webhooks]]`, one at a time and in order, signed with
//! HMAC-SHA256 and retried with backoff. Each webhook reads the bus like
//! any subscriber, so its queue is bounded by the bus's buffer: a receiver
//! down for long loses the events it fell behind on (counted as `dropped`),
//! never slows the driver.

use super::Shared;
use super::events::Published;
use crate::config::EventWebhookConfig;
use crate::runtime::metrics::Metrics;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `sha256=<hex>`: the signature header's value for `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `scheme://host[:port]` of `url`, for logs.
pub fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "(an unparsable URL)".to_string(),
    }
}

/// Delivers the bus's events to one webhook until shutdown.
pub async fn deliver(
    hook: EventWebhookConfig,
    secret: String,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(mut live) = shared.events.subscribe(None) else {
        return;
    };
    // Only the origin is logged: a chat service's webhook URL carries its
    // secret in the path.
    let origin = origin(&hook.url);
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(hook.timeout_secs))
        .connect_timeout(Duration::from_secs(hook.timeout_secs))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            warn!(url = %origin, error = %e, "cannot build the webhook client");
            return;
        }
    };
    let count = |result: &str| Metrics::count(&shared.metrics.event_webhooks, result);
    loop {
        let event = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            event = live.recv() => event,
        };
        let event = match event {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                warn!(url = %origin, missed, "the webhook fell behind; events dropped");
                for _ in 0..missed {
                    count("dropped");
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if !hook.kinds.is_empty() && !hook.kinds.iter().any(|k| k == event.kind) {
            continue;
        }
        let delivered = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            delivered = send_with_retries(&client, &hook, secret.as_bytes(), &event, &count) => delivered,
        };
        count(if delivered { "delivered" } else { "failed" });
    }
}

/// Tries `hook.max_attempts` times; a 2xx is delivered, a 4xx other than
/// 408 and 429 is refused for good (the receiver will not change its mind).
async fn send_with_retries(
    client: &reqwest::Client,
    hook: &EventWebhookConfig,
    secret: &[u8],
    event: &Published,
    count: &impl Fn(&str),
) -> bool {
    let origin = origin(&hook.url);
    let mut backoff = Duration::from_millis(hook.backoff_ms);
    for attempt in 1..=hook.max_attempts {
        let sent = client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("user-agent", "sluice")
            .header("x-sluice-event", event.kind)
            .header("x-sluice-delivery", event.seq.to_string())
            .header(
                "x-sluice-signature-256",
                signature(secret, event.json.as_bytes()),
            )
            .body(event.json.clone())
            .send()
            .await;
        let why = match sent {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 408 | 429) => {
                warn!(url = %origin, seq = event.seq, status = %r.status(), "the webhook refused an event; not retried");
                return false;
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => e.without_url().to_string(),
        };
        if attempt == hook.max_attempts {
            warn!(url = %origin, seq = event.seq, attempts = attempt, error = %why, "gave up delivering an event");
            return false;
        }
        debug!(url = %origin, seq = event.seq, attempt, error = %why, "webhook delivery failed; retrying");
        count("retried");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_show_a_webhook_url_without_its_secret_path() {
        assert_eq!(
            super::origin("https://hooks.slack.com/services/T0/B0/s3cr3t?x=1"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            super::origin("http://127.0.0.1:9000/hook/s3cr3t"),
            "http://127.0.0.1:9000"
        );
        assert!(!super::origin("not a url s3cr3t").contains("s3cr3t"));
    }

    #[test]
    fn the_signature_is_githubs_scheme() {
        // The example of GitHub's "Validating webhook deliveries" page.
        assert_eq!(
            super::signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
