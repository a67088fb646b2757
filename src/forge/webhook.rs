//! Webhook deliveries: signature verification and parsing into core events.
//! Pure: no I/O, no clock. Nothing a sender puts in a delivery can make these
//! functions panic; what is wrong comes back as an error naming it (the HTTP
//! layer answers 401 for a [`SignatureError`], 400 for a [`WebhookError`]).

use crate::core::{Event, PrKey, RepoName, Sha};
use crate::forge::convert::{SnapshotError, pr_snapshot};
use hmac::{Hmac, Mac};
use octocrab::models::webhook_events::{WebhookEvent, WebhookEventPayload};
use sha2::Sha256;

/// The header GitHub signs deliveries in.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// The header naming the event of a delivery.
pub const EVENT_HEADER: &str = "X-GitHub-Event";

const SIGNATURE_PREFIX: &str = "sha256=";
const SHA256_HEX_LEN: usize = 64;

/// Why a delivery's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {SIGNATURE_HEADER} header")]
    Missing,
    #[error("malformed {SIGNATURE_HEADER} header: expected it to start with \"sha256=\"")]
    NoPrefix,
    #[error("malformed {SIGNATURE_HEADER} header: the signature is not hexadecimal")]
    BadHex,
    #[error("malformed {SIGNATURE_HEADER} header: expected {SHA256_HEX_LEN} hex digits, got {0}")]
    WrongLength(usize),
    #[error("{SIGNATURE_HEADER} does not match the body (wrong secret or altered body)")]
    Mismatch,
}

/// Checks `X-Hub-Signature-256: sha256=<hex>`, an HMAC-SHA256 of the raw
/// body keyed with the webhook secret, in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let hex_sig = header
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(SignatureError::NoPrefix)?;
    if !hex_sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SignatureError::BadHex);
    }
    if hex_sig.len() != SHA256_HEX_LEN {
        return Err(SignatureError::WrongLength(hex_sig.len()));
    }
    let expected = hex::decode(hex_sig).map_err(|_| SignatureError::BadHex)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The `X-Hub-Signature-256` value GitHub would send for `body` (for tests
/// and the fake forge).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// What a delivery means to sluice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Events(Vec<Event>),
    /// GitHub's `ping` when a hook is created.
    Ping,
    /// A well-formed delivery sluice has no use for.
    Ignored {
        reason: String,
    },
}

/// Why a delivery could not be understood (a 400 to GitHub).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{event} delivery: body is not valid JSON: {message}")]
    InvalidJson { event: String, message: String },
    #[error("{event} delivery: {message}")]
    BadPayload { event: String, message: String },
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Parses a (verified) delivery of event `event` into core events.
pub fn parse_delivery(event: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    let bad = |message: String| WebhookError::BadPayload {
        event: short(event),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::InvalidJson {
            event: short(event),
            message: e.to_string(),
        })?;
    if !value.is_object() {
        return Err(bad("expected a JSON object".into()));
    }
    let action = || {
        value
            .get("action")
            .and_then(|a| a.as_str())
            .ok_or_else(|| bad("\"action\" is missing or not a string".into()))
    };
    match event {
        "ping" => Ok(Delivery::Ping),
        "pull_request" => {
            let action = action()?;
            let kind = match action {
                "opened" | "synchronize" | "ready_for_review" | "converted_to_draft"
                | "labeled" | "unlabeled" => PrChange::Updated,
                "edited" => {
                    let base_changed = value
                        .get("changes")
                        .and_then(|c| c.get("base"))
                        .is_some_and(|b| !b.is_null());
                    if !base_changed {
                        return Ok(ignored(format!(
                            "pull_request {action} without a base change"
                        )));
                    }
                    PrChange::Updated
                }
                "reopened" => PrChange::Reopened,
                "closed" => PrChange::Closed,
                other => return Ok(ignored(format!("pull_request action {:?}", short(other)))),
            };
            let parsed = octocrab_event("pull_request", body).map_err(bad)?;
            let WebhookEventPayload::PullRequest(payload) = &parsed.specific else {
                return Err(bad("not a pull_request payload".into()));
            };
            let repo = repo_of(&parsed).map_err(bad)?;
            let pr = &payload.pull_request;
            let event = match kind {
                PrChange::Closed => Event::PrClosed(PrKey {
                    repo,
                    number: pr.number,
                }),
                PrChange::Updated => Event::PrUpdated(snapshot(&repo, pr).map_err(bad)?),
                PrChange::Reopened => Event::PrReopened(snapshot(&repo, pr).map_err(bad)?),
            };
            Ok(Delivery::Events(vec![event]))
        }
        "pull_request_review" => {
            let action = action()?;
            if !matches!(action, "submitted" | "edited" | "dismissed") {
                return Ok(ignored(format!(
                    "pull_request_review action {:?}",
                    short(action)
                )));
            }
            let parsed = octocrab_event("pull_request_review", body).map_err(bad)?;
            let WebhookEventPayload::PullRequestReview(payload) = &parsed.specific else {
                return Err(bad("not a pull_request_review payload".into()));
            };
            let repo = repo_of(&parsed).map_err(bad)?;
            Ok(Delivery::Events(vec![Event::ReviewActivity(PrKey {
                repo,
                number: payload.pull_request.number,
            })]))
        }
        "push" => {
            let git_ref = value
                .get("ref")
                .and_then(|r| r.as_str())
                .ok_or_else(|| bad("\"ref\" is missing or not a string".into()))?;
            let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
                return Ok(ignored(format!(
                    "push to {:?}, not a branch",
                    short(git_ref)
                )));
            };
            if branch.is_empty() {
                return Err(bad("\"ref\" names an empty branch".into()));
            }
            let parsed = octocrab_event("push", body).map_err(bad)?;
            let WebhookEventPayload::Push(payload) = &parsed.specific else {
                return Err(bad("not a push payload".into()));
            };
            let repo = repo_of(&parsed).map_err(bad)?;
            let after = Sha::parse(&payload.after).map_err(|e| bad(format!("after: {e}")))?;
            let event = if payload.deleted || after.is_zero() {
                Event::BranchDeleted {
                    repo,
                    branch: branch.to_string(),
                }
            } else {
                // `before` lets the core refuse a push that arrives late.
                let before = Sha::parse(&payload.before).ok();
                Event::BranchMoved {
                    repo,
                    branch: branch.to_string(),
                    sha: after,
                    before,
                }
            };
            Ok(Delivery::Events(vec![event]))
        }
        other => Ok(ignored(format!("event {:?} is not used", short(other)))),
    }
}

enum PrChange {
    Updated,
    Reopened,
    Closed,
}

fn ignored(reason: String) -> Delivery {
    Delivery::Ignored { reason }
}

fn octocrab_event(kind: &str, body: &[u8]) -> Result<WebhookEvent, String> {
    WebhookEvent::try_from_header_and_body(kind, body).map_err(|e| e.to_string())
}

fn repo_of(event: &WebhookEvent) -> Result<RepoName, String> {
    let full_name = event
        .repository
        .as_ref()
        .and_then(|r| r.full_name.as_deref())
        .ok_or_else(|| "repository.full_name is missing".to_string())?;
    RepoName::parse(full_name).map_err(|e| format!("repository.full_name: {e}"))
}

fn snapshot(
    repo: &RepoName,
    pr: &octocrab::models::pulls::PullRequest,
) -> Result<crate::core::PrSnapshot, String> {
    pr_snapshot(repo, pr).map_err(|e: SnapshotError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip() {
        let sig = sign(b"s3cret", b"{}");
        assert_eq!(verify_signature(b"s3cret", b"{}", Some(&sig)), Ok(()));
        assert_eq!(
            verify_signature(b"other", b"{}", Some(&sig)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn non_object_bodies_are_rejected() {
        assert!(matches!(
            parse_delivery("push", b"[]"),
            Err(WebhookError::BadPayload { .. })
        ));
    }
}
