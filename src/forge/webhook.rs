//! Webhook deliveries: signature verification and parsing into core events.
//! Pure: no I/O, no clock. Nothing a sender puts in a delivery can make these
//! functions panic; what is wrong comes back as an error naming it (the HTTP
//! layer answers 401 for a [`SignatureError`], 400 for a [`WebhookError`]).

use crate::core::{Event, PrKey, RepoName, Sha};
use hmac::{Hmac, Mac};
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
    /// The App's access to repositories changed (`installation`,
    /// `installation_repositories`).
    Access(AccessChange),
    /// A well-formed delivery sluice has no use for.
    Ignored {
        reason: String,
    },
}

/// Repositories the App was given (installed, unsuspended, added) or
/// denied (uninstalled, suspended, removed) in one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessChange {
    /// The event and its action, e.g. `installation_repositories added`.
    pub what: String,
    pub installation: u64,
    pub granted: Vec<RepoName>,
    pub revoked: Vec<RepoName>,
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
///
/// One pass of the JSON parser into [`payload::Payload`], which borrows the
/// few fields sluice uses and skips the rest without building it (a
/// delivery's body is mostly URLs and nested users sluice never reads).
/// The unit tests check it against octocrab's webhook models on every real
/// payload under `testdata/webhooks/`.
pub fn parse_delivery(event: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    let bad = |message: String| WebhookError::BadPayload {
        event: short(event),
        message,
    };
    let value: payload::Payload<'_> = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(WebhookError::InvalidJson {
                event: short(event),
                message: e.to_string(),
            });
        }
        Err(e) if e.is_data() && body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') => {
            return Err(bad("expected a JSON object".into()));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let action = || {
        value
            .action
            .as_deref()
            .ok_or_else(|| bad("\"action\" is missing or not a string".into()))
    };
    let repo = || {
        let full_name = value
            .repository
            .as_ref()
            .and_then(|r| r.full_name.as_deref())
            .ok_or_else(|| bad("repository.full_name is missing".into()))?;
        RepoName::parse(full_name).map_err(|e| bad(format!("repository.full_name: {e}")))
    };
    let pull_request = || {
        value
            .pull_request
            .as_ref()
            .ok_or_else(|| bad("pull_request is missing".into()))
    };
    match event {
        "ping" => Ok(Delivery::Ping),
        "pull_request" => {
            let action = action()?;
            let kind = match action {
                "opened" => PrChange::Opened,
                "synchronize" | "ready_for_review" | "converted_to_draft" | "labeled"
                | "unlabeled" => PrChange::Updated,
                "edited" => {
                    let base_changed = value.changes.as_ref().is_some_and(|c| c.base.is_some());
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
            let repo = repo()?;
            let pr = pull_request()?;
            let number = pr
                .number
                .ok_or_else(|| bad("pull_request.number is missing".into()))?;
            let event = match kind {
                // Merged or not decides what a PR depending on it waits for.
                PrChange::Closed if pr.merged == Some(false) => {
                    Event::PrClosedUnmerged(PrKey { repo, number })
                }
                PrChange::Closed => Event::PrClosed(PrKey { repo, number }),
                PrChange::Updated => Event::PrUpdated(pr.snapshot(&repo).map_err(bad)?),
                PrChange::Opened => Event::PrOpened(pr.snapshot(&repo).map_err(bad)?),
                PrChange::Reopened => Event::PrReopened(pr.snapshot(&repo).map_err(bad)?),
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
            let repo = repo()?;
            let number = pull_request()?
                .number
                .ok_or_else(|| bad("pull_request.number is missing".into()))?;
            Ok(Delivery::Events(vec![Event::ReviewActivity(PrKey {
                repo,
                number,
            })]))
        }
        "push" => {
            let git_ref = value
                .git_ref
                .as_deref()
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
            let repo = repo()?;
            let after = value
                .after
                .as_deref()
                .ok_or_else(|| bad("after is missing".into()))?;
            let after = Sha::parse(after).map_err(|e| bad(format!("after: {e}")))?;
            let event = if value.deleted.unwrap_or(false) || after.is_zero() {
                Event::BranchDeleted {
                    repo,
                    branch: branch.to_string(),
                }
            } else {
                // `before` lets the core refuse a push that arrives late.
                let before = value.before.as_deref().and_then(|b| Sha::parse(b).ok());
                Event::BranchMoved {
                    repo,
                    branch: branch.to_string(),
                    sha: after,
                    before,
                }
            };
            Ok(Delivery::Events(vec![event]))
        }
        // Rare deliveries, read with octocrab's models whole.
        "issue_comment" | "check_run" => app_delivery(event, body),
        "installation" | "installation_repositories" => installation_delivery(event, body),
        other => Ok(ignored(format!("event {:?} is not used", short(other)))),
    }
}

/// An App installed, removed, or given or denied repositories, read with
/// octocrab's models. sluice acts on the repositories it gates: a cached
/// installation is forgotten (the next call looks it up again), and a
/// repository the App can now reach is re-read at once, so its open PRs are
/// gated without waiting for the periodic re-read.
fn installation_delivery(event: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    use octocrab::models::webhook_events::payload::InstallationWebhookEventAction as Action;
    use octocrab::models::webhook_events::{WebhookEvent, WebhookEventPayload};
    let bad = |message: String| WebhookError::BadPayload {
        event: event.to_string(),
        message,
    };
    let parsed =
        WebhookEvent::try_from_header_and_body(event, body).map_err(|e| bad(e.to_string()))?;
    let repos = |listed: &[octocrab::models::webhook_events::InstallationEventRepository]| {
        listed
            .iter()
            .filter_map(|r| RepoName::parse(&r.full_name).ok())
            .collect::<Vec<RepoName>>()
    };
    let (granted, revoked) = match &parsed.specific {
        WebhookEventPayload::Installation(p) => {
            let listed = repos(p.repositories.as_deref().unwrap_or_default());
            match p.action {
                Action::Created | Action::Unsuspend | Action::NewPermissionsAccepted => {
                    (listed, Vec::new())
                }
                Action::Deleted | Action::Suspend => (Vec::new(), listed),
                _ => (Vec::new(), Vec::new()),
            }
        }
        WebhookEventPayload::InstallationRepositories(p) => {
            (repos(&p.repositories_added), repos(&p.repositories_removed))
        }
        _ => return Ok(ignored(format!("event {:?}", short(event)))),
    };
    let action = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("action")?.as_str().map(str::to_string))
        .unwrap_or_default();
    let installation = match &parsed.installation {
        Some(octocrab::models::webhook_events::EventInstallation::Full(i)) => i.id.0,
        Some(octocrab::models::webhook_events::EventInstallation::Minimal(i)) => i.id.0,
        None => 0,
    };
    Ok(Delivery::Access(AccessChange {
        what: format!("{event} {}", short(&action)),
        installation,
        granted,
        revoked,
    }))
}

/// An `issue_comment` or `check_run` delivery, through octocrab's models:
/// a new comment by a person on a PR (its commands are the core's to
/// read), or a "Re-run" of sluice's check run.
fn app_delivery(event: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    use octocrab::models::webhook_events::payload::{
        CheckRunWebhookEventAction, IssueCommentWebhookEventAction,
    };
    use octocrab::models::webhook_events::{WebhookEvent, WebhookEventPayload};
    let bad = |message: String| WebhookError::BadPayload {
        event: event.to_string(),
        message,
    };
    let parsed =
        WebhookEvent::try_from_header_and_body(event, body).map_err(|e| bad(e.to_string()))?;
    let repo = parsed
        .repository
        .as_ref()
        .and_then(|r| r.full_name.as_deref())
        .ok_or_else(|| bad("repository.full_name is missing".into()))?;
    let repo = RepoName::parse(repo).map_err(|e| bad(format!("repository.full_name: {e}")))?;
    match parsed.specific {
        WebhookEventPayload::IssueComment(p) => {
            if p.action != IssueCommentWebhookEventAction::Created {
                return Ok(ignored(
                    "issue_comment not created: commands are read from new comments only".into(),
                ));
            }
            if p.issue.pull_request.is_none() {
                return Ok(ignored("issue_comment on an issue, not a PR".into()));
            }
            // sluice's own answers, and other bots: never commands.
            if p.comment.user.r#type == "Bot" {
                return Ok(ignored("issue_comment by a bot".into()));
            }
            let mut body = p.comment.body.unwrap_or_default();
            body.truncate(body.floor_char_boundary(crate::core::commands::MAX_BODY));
            Ok(Delivery::Events(vec![Event::Commented {
                pr: PrKey {
                    repo,
                    number: p.issue.number,
                },
                comment: p.comment.id.into_inner(),
                author: p.comment.user.login,
                body,
            }]))
        }
        WebhookEventPayload::CheckRun(p) => {
            if p.action != CheckRunWebhookEventAction::Rerequested {
                return Ok(ignored("check_run: only a re-run is acted on".into()));
            }
            let run = &p.check_run;
            let head = run["head_sha"]
                .as_str()
                .ok_or_else(|| bad("check_run.head_sha is missing".into()))?;
            let head = Sha::parse(head).map_err(|e| bad(format!("check_run.head_sha: {e}")))?;
            let events: Vec<Event> = run["pull_requests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|pr| pr["number"].as_u64())
                .map(|number| Event::Rerun {
                    pr: PrKey {
                        repo: repo.clone(),
                        number,
                    },
                    head: head.clone(),
                })
                .collect();
            if events.is_empty() {
                return Ok(ignored("check_run re-run on a commit of no PR".into()));
            }
            Ok(Delivery::Events(events))
        }
        _ => Ok(ignored(format!("event {:?} is not used", short(event)))),
    }
}

enum PrChange {
    Opened,
    Updated,
    Reopened,
    Closed,
}

fn ignored(reason: String) -> Delivery {
    Delivery::Ignored { reason }
}

/// The fields of a delivery sluice reads, borrowed from the body where the
/// JSON holds them unescaped. Everything else is skipped by the parser.
mod payload {
    use crate::core::{PrKey, PrSnapshot, RepoName, Sha, Timestamp};
    use serde::Deserialize;
    use serde::de::IgnoredAny;
    use std::borrow::Cow;

    type Str<'a> = Option<Cow<'a, str>>;

    #[derive(Deserialize)]
    pub struct Payload<'a> {
        #[serde(borrow, default)]
        pub action: Str<'a>,
        #[serde(borrow, default)]
        pub repository: Option<Repository<'a>>,
        #[serde(borrow, default)]
        pub pull_request: Option<PullRequest<'a>>,
        #[serde(default)]
        pub changes: Option<Changes>,
        #[serde(borrow, default, rename = "ref")]
        pub git_ref: Str<'a>,
        #[serde(borrow, default)]
        pub before: Str<'a>,
        #[serde(borrow, default)]
        pub after: Str<'a>,
        #[serde(default)]
        pub deleted: Option<bool>,
    }

    #[derive(Deserialize)]
    pub struct Repository<'a> {
        #[serde(borrow, default)]
        pub full_name: Str<'a>,
    }

    #[derive(Deserialize)]
    pub struct Changes {
        #[serde(default)]
        pub base: Option<IgnoredAny>,
    }

    #[derive(Deserialize)]
    pub struct PullRequest<'a> {
        #[serde(default)]
        pub number: Option<u64>,
        #[serde(borrow, default)]
        pub head: Option<GitRef<'a>>,
        #[serde(borrow, default)]
        pub base: Option<GitRef<'a>>,
        #[serde(borrow, default)]
        pub title: Str<'a>,
        #[serde(borrow, default)]
        pub user: Option<User<'a>>,
        #[serde(default)]
        pub draft: Option<bool>,
        #[serde(default)]
        pub mergeable: Option<bool>,
        #[serde(borrow, default)]
        pub labels: Option<Vec<Label<'a>>>,
        #[serde(borrow, default)]
        pub created_at: Str<'a>,
        #[serde(borrow, default)]
        pub body: Str<'a>,
        #[serde(default)]
        pub merged: Option<bool>,
    }

    #[derive(Deserialize)]
    pub struct GitRef<'a> {
        #[serde(borrow, default, rename = "ref")]
        pub name: Str<'a>,
        #[serde(borrow, default)]
        pub sha: Str<'a>,
    }

    #[derive(Deserialize)]
    pub struct User<'a> {
        #[serde(borrow, default)]
        pub login: Str<'a>,
    }

    #[derive(Deserialize)]
    pub struct Label<'a> {
        #[serde(borrow, default)]
        pub name: Str<'a>,
    }

    impl PullRequest<'_> {
        /// The core's snapshot; the same rules as `forge::convert` applies
        /// to octocrab's model (shas validated, `created_at` required).
        pub fn snapshot(&self, repo: &RepoName) -> Result<PrSnapshot, String> {
            let missing = |what: &str| format!("pull_request.{what} is missing");
            let number = self.number.ok_or_else(|| missing("number"))?;
            let head = self.head.as_ref().ok_or_else(|| missing("head"))?;
            let base = self.base.as_ref().ok_or_else(|| missing("base"))?;
            let head_sha = head.sha.as_deref().ok_or_else(|| missing("head.sha"))?;
            let head_sha =
                Sha::parse(head_sha).map_err(|e| format!("pull_request.head.sha: {e}"))?;
            let base_sha = match base.sha.as_deref() {
                None | Some("") => None,
                Some(s) => Some(Sha::parse(s).map_err(|e| format!("pull_request.base.sha: {e}"))?),
            };
            let created_at = self
                .created_at
                .as_deref()
                .ok_or_else(|| missing("created_at"))?;
            let created_at = chrono::DateTime::parse_from_rfc3339(created_at)
                .map_err(|e| format!("pull_request.created_at: {e}"))?;
            Ok(PrSnapshot {
                key: PrKey {
                    repo: repo.clone(),
                    number,
                },
                head_sha,
                head_ref: head
                    .name
                    .as_deref()
                    .ok_or_else(|| missing("head.ref"))?
                    .to_string(),
                base_ref: base
                    .name
                    .as_deref()
                    .ok_or_else(|| missing("base.ref"))?
                    .to_string(),
                base_sha,
                title: self.title.as_deref().unwrap_or_default().to_string(),
                author: self
                    .user
                    .as_ref()
                    .and_then(|u| u.login.as_deref())
                    .unwrap_or_default()
                    .to_string(),
                draft: self.draft.unwrap_or(false),
                mergeable: self.mergeable,
                labels: self
                    .labels
                    .iter()
                    .flatten()
                    .filter_map(|l| l.name.as_deref().map(str::to_string))
                    .collect(),
                created_at: Timestamp(u64::try_from(created_at.timestamp_millis()).unwrap_or(0)),
                depends_on: Vec::new(),
            }
            .with_dependencies(self.body.as_deref().unwrap_or_default()))
        }
    }
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

    /// octocrab's webhook models, as the reference for what a payload says.
    fn with_octocrab(event: &str, body: &[u8]) -> Option<Vec<Event>> {
        use crate::forge::convert::pr_snapshot;
        use octocrab::models::webhook_events::{WebhookEvent, WebhookEventPayload};
        let parsed = WebhookEvent::try_from_header_and_body(event, body).ok()?;
        let repo = RepoName::parse(parsed.repository.as_ref()?.full_name.as_deref()?).ok()?;
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let action = value["action"].as_str()?;
        Some(match parsed.specific {
            WebhookEventPayload::PullRequest(p) => {
                let pr = &p.pull_request;
                match action {
                    "closed" if pr.merged_at.is_none() => vec![Event::PrClosedUnmerged(PrKey {
                        repo,
                        number: pr.number,
                    })],
                    "closed" => vec![Event::PrClosed(PrKey {
                        repo,
                        number: pr.number,
                    })],
                    "reopened" => vec![Event::PrReopened(pr_snapshot(&repo, pr).ok()?)],
                    "opened" => vec![Event::PrOpened(pr_snapshot(&repo, pr).ok()?)],
                    _ => vec![Event::PrUpdated(pr_snapshot(&repo, pr).ok()?)],
                }
            }
            WebhookEventPayload::PullRequestReview(p) => vec![Event::ReviewActivity(PrKey {
                repo,
                number: p.pull_request.number,
            })],
            _ => return None,
        })
    }

    #[test]
    fn the_light_parser_agrees_with_octocrab_on_every_real_payload() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/webhooks");
        let mut compared = 0;
        for event in ["pull_request", "pull_request_review"] {
            for entry in std::fs::read_dir(root.join(event)).unwrap() {
                let path = entry.unwrap().path();
                let body = std::fs::read(&path).unwrap();
                let Some(expected) = with_octocrab(event, &body) else {
                    continue;
                };
                match parse_delivery(event, &body).unwrap() {
                    Delivery::Events(got) => assert_eq!(got, expected, "{}", path.display()),
                    // Actions sluice has no use for (assigned, ...).
                    Delivery::Ignored { .. } => {}
                    other => panic!("{}: {other:?}", path.display()),
                }
                compared += 1;
            }
        }
        assert!(compared >= 15, "only {compared} payloads compared");
    }

    #[test]
    fn installation_events_name_the_repositories_granted_and_revoked() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/webhooks/installation");
        let read = |name: &str| {
            let body = std::fs::read(root.join(name)).unwrap();
            match parse_delivery("installation", &body).unwrap() {
                Delivery::Access(change) => change,
                other => panic!("{name}: {other:?}"),
            }
        };
        let created = read("created.payload.json");
        assert!(!created.granted.is_empty() && created.revoked.is_empty());
        assert!(created.installation > 0);
        assert_eq!(created.what, "installation created");
        let deleted = read("deleted.payload.json");
        assert!(deleted.granted.is_empty() && !deleted.revoked.is_empty());
        let suspended = read("suspend.payload.json");
        assert!(suspended.granted.is_empty());
        assert_eq!(suspended.revoked.len(), suspended.revoked.len());

        let body = serde_json::json!({
            "action": "removed",
            "installation": {"id": 7, "node_id": "x"},
            "repository_selection": "selected",
            "repositories_added": [],
            "repositories_removed": [
                {"id": 1, "node_id": "a", "name": "app", "full_name": "acme/app", "private": true}
            ],
            "requester": null,
            "sender": {"login": "o", "id": 1, "node_id": "u", "avatar_url": "http://x/a",
                "gravatar_id": "", "url": "http://x/u", "html_url": "http://x/o",
                "followers_url": "http://x/f", "following_url": "http://x/g",
                "gists_url": "http://x/h", "starred_url": "http://x/s",
                "subscriptions_url": "http://x/b", "organizations_url": "http://x/o",
                "repos_url": "http://x/r", "events_url": "http://x/e",
                "received_events_url": "http://x/v", "type": "User", "site_admin": false}
        });
        let body = serde_json::to_vec(&body).unwrap();
        match parse_delivery("installation_repositories", &body).unwrap() {
            Delivery::Access(change) => {
                assert_eq!(change.revoked, vec![RepoName::parse("acme/app").unwrap()]);
                assert!(change.granted.is_empty());
                assert_eq!(change.installation, 7);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_object_bodies_are_rejected() {
        assert!(matches!(
            parse_delivery("push", b"[]"),
            Err(WebhookError::BadPayload { .. })
        ));
    }
}
