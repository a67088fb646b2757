//! The GitHub adapter as a GitHub App: one App client (authenticated with
//! a JWT, which octocrab signs) and, per installation, an installation
//! client (octocrab mints its token, caches it and renews it when less than
//! 30 s are left).
//!
//! Every call sluice makes is under `/repos/{owner}/{repo}/…` (or under
//! `/app` for the App's own calls); [`route`] reads the repository from the
//! path and the call goes out on that repository's installation client. A
//! repository's installation is looked up once (`GET
//! /repos/{owner}/{repo}/installation`, with the JWT) and remembered, so
//! repositories of several accounts (several installations) work at once.
//!
//! A call answered `401` with an installation token (the token expired or
//! was revoked under us) drops that installation's client, so a new token
//! is minted, and is sent once more: an expired token never reaches the
//! rest of sluice as a failed call. (octocrab itself clears its token and
//! repeats once on a 401 when it can replay the body; this is the second,
//! explicit line.)
//!
//! A repository the App loses after its lookup (uninstalled, removed from
//! the installation) answers 404; a 404 on a repository not confirmed for
//! [`INSTALLATION_RECHECK`] looks the installation up again, so such calls
//! fail naming the repository instead of passing for "not found".
//!
//! Failures that no retry can mend (the JWT is refused: the key is not the
//! App's; the App is not installed on the repository) are reported at
//! once, naming the App, the key's source or the repository.

use super::{BudgetCell, GitHub, Reply, error_chain, path_only, send_on};
use crate::config::{AppKeySource, ConfigError, GithubAppConfig};
use crate::core::RepoName;
use crate::forge::{ApiBudget, ForgeError};
use http::{HeaderValue, Method, StatusCode};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A 404 on a repository whose installation was confirmed longer ago than
/// this looks the installation up again: the App may have lost the
/// repository (uninstalled, or the repository removed from it), and then
/// the call fails naming that, instead of passing for "not found".
pub const INSTALLATION_RECHECK: Duration = Duration::from_secs(5);

/// Remembered `/repositories/{id}` prefixes (GitHub's next-page links use
/// them) at most; past that the map is cleared.
const ALIASES: usize = 10_000;

/// A GitHub App's id and private key, checked: the PEM parses and signs a
/// JWT. `Debug` never shows the key.
#[derive(Clone)]
pub struct AppKey {
    app_id: u64,
    key: octocrab::EncodingKey,
    source: AppKeySource,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKey")
            .field("app_id", &self.app_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl AppKey {
    /// Reads `[github.app]`'s key (file or environment variable) and checks
    /// that it is an RSA private key that signs a JWT. Errors name the
    /// setting and the file or variable, never the key.
    pub fn load(config: &GithubAppConfig) -> Result<AppKey, ConfigError> {
        let pem = config.read_private_key()?;
        let bad = |message: String| ConfigError::AppKey {
            setting: config.key_setting(),
            from: config.key_source(),
            message,
        };
        let key = octocrab::EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| bad(format!("is not a usable RSA private key: {e}")))?;
        // A PEM whose body is not an RSA key can still be read as one:
        // signing once tells.
        octocrab::auth::create_jwt(AppId(config.app_id), &key).map_err(|e| {
            bad(format!(
                "does not sign a JWT (is it an RSA private key?): {e}"
            ))
        })?;
        Ok(AppKey {
            app_id: config.app_id,
            key,
            source: config.key_source(),
        })
    }

    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    pub fn source(&self) -> &AppKeySource {
        &self.source
    }

    pub(super) fn signing_key(&self) -> octocrab::EncodingKey {
        self.key.clone()
    }
}

/// Who GitHub says the App is (`GET /app`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppIdentity {
    pub id: u64,
    pub slug: String,
    pub name: String,
}

/// Where a call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// The App's own endpoints (`/app…`): the JWT.
    App,
    /// A repository's endpoints: its installation's token.
    Repo(RepoName),
}

/// The route of `path` (`/repos/{owner}/{repo}/…`, `/app…`), or of a
/// `/repositories/{id}/…` path that `aliases` knows.
pub(super) fn route(path: &str, aliases: &HashMap<String, RepoName>) -> Option<Route> {
    let path = path_only(path);
    if path == "/app" || path.starts_with("/app/") {
        return Some(Route::App);
    }
    let mut segs = path.strip_prefix('/')?.split('/');
    match segs.next()? {
        "repos" => {
            let (owner, name) = (segs.next()?, segs.next()?);
            RepoName::parse(&format!("{owner}/{name}"))
                .ok()
                .map(Route::Repo)
        }
        "repositories" => {
            let id = segs.next()?;
            aliases
                .get(&format!("/repositories/{id}"))
                .cloned()
                .map(Route::Repo)
        }
        _ => None,
    }
}

/// `/repositories/{id}` if `path` starts with one.
fn alias_prefix(path: &str) -> Option<String> {
    let rest = path_only(path).strip_prefix("/repositories/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("/repositories/{id}"))
}

/// One installation's client (its token lives inside, with octocrab).
pub(super) struct InstallationClient {
    id: u64,
    client: Octocrab,
    budget: Arc<BudgetCell>,
    /// One token request at a time: calls that find no valid token wait
    /// for the one being minted instead of each minting their own.
    mint: tokio::sync::Mutex<()>,
}

/// A call that must not be retried, and why (the message names the App,
/// the key's source or the repository; never a token or the key).
pub(super) struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    /// The error of the call `what`.
    pub(super) fn into_error(self, what: &str) -> ForgeError {
        match self.status {
            0 => ForgeError::Invalid {
                what: what.to_string(),
                message: self.message,
            },
            status => ForgeError::Http {
                what: what.to_string(),
                status,
                message: self.message,
            },
        }
    }
}

/// What went wrong getting a call on its way: worth retrying, or not.
pub(super) enum Failure {
    /// Transport, timeout-like, 5xx: retried like any call.
    Transport(String),
    /// No retry mends it.
    Refused(Refusal),
}

/// The App side of a [`GitHub`]: its client, the installations it found,
/// their clients and their budgets.
pub(super) struct AppAuth {
    app_id: u64,
    source: AppKeySource,
    /// Authenticated as the App (a fresh JWT per call).
    app: Octocrab,
    app_budget: BudgetCell,
    /// Repository → installation id, looked up once, and when GitHub last
    /// confirmed it.
    installations: Mutex<HashMap<RepoName, (u64, Instant)>>,
    /// Installation id → its client; dropped on a 401.
    clients: Mutex<HashMap<u64, Arc<InstallationClient>>>,
    /// Installation id → what its replies said about its rate limit (an
    /// installation's limit outlives its tokens).
    budgets: Mutex<HashMap<u64, Arc<BudgetCell>>>,
    /// `/repositories/{id}` → the repository (from next-page links).
    aliases: Mutex<HashMap<String, RepoName>>,
    /// One installation lookup at a time.
    lookup: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AppAuth {
    pub(super) fn new(app: Octocrab, key: &AppKey) -> AppAuth {
        AppAuth {
            app_id: key.app_id,
            source: key.source.clone(),
            app,
            app_budget: BudgetCell::new(),
            installations: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            aliases: Mutex::new(HashMap::new()),
            lookup: tokio::sync::Mutex::new(()),
        }
    }

    /// Remembers that `next` (a next-page link of a list of `first`'s
    /// repository) is that repository's, when it does not say so itself.
    pub(super) fn learn_alias(&self, first: &str, next: &str) {
        let (Some(prefix), Some(Route::Repo(repo))) =
            (alias_prefix(next), route(first, &HashMap::new()))
        else {
            return;
        };
        let mut aliases = lock(&self.aliases);
        if aliases.len() >= ALIASES && !aliases.contains_key(&prefix) {
            aliases.clear();
        }
        aliases.insert(prefix, repo);
    }

    fn jwt_refused(&self, message: &str) -> Refusal {
        Refusal {
            status: 401,
            message: format!(
                "GitHub refused the JWT of App {} ({message}): is the private key ({}) one of \
                 this App's keys, and github.app.app_id its id? (A clock more than a minute \
                 off also makes GitHub refuse it.)",
                self.app_id, self.source
            ),
        }
    }

    /// What an App-level call (`what`) answered that is not about the call
    /// itself: the JWT refused, or GitHub unavailable or rate limiting (worth
    /// trying again).
    fn jwt_or_unavailable(&self, reply: &Reply, what: &str) -> Option<Failure> {
        let s = reply.status;
        if s.is_success() {
            return None;
        }
        if s == StatusCode::UNAUTHORIZED {
            return Some(Failure::Refused(self.jwt_refused(&reply.message())));
        }
        // GitHub says "rate limited" with a 403 and its headers (or a 429).
        let limited = s == StatusCode::FORBIDDEN
            && super::limit_wait(reply, std::time::SystemTime::now()).is_some();
        (s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || limited).then(|| {
            Failure::Transport(format!("{what}: HTTP {}: {}", s.as_u16(), reply.message()))
        })
    }

    /// The installation of `repo`: remembered, or looked up with the JWT.
    async fn installation_id(&self, repo: &RepoName) -> Result<u64, Failure> {
        if let Some((id, _)) = lock(&self.installations).get(repo) {
            return Ok(*id);
        }
        let _one = self.lookup.lock().await;
        if let Some((id, _)) = lock(&self.installations).get(repo) {
            return Ok(*id);
        }
        let path = format!("/repos/{}/{}/installation", repo.owner(), repo.name());
        let reply = send_on(&self.app, &self.app_budget, &Method::GET, &path, None, None)
            .await
            .map_err(Failure::Transport)?;
        if let Some(failure) = self.jwt_or_unavailable(
            &reply,
            &format!("looking up the App's installation on {repo}"),
        ) {
            return Err(failure);
        }
        match reply.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(Failure::Refused(Refusal {
                    status: 404,
                    message: format!(
                        "the GitHub App {} is not installed on {repo} (GET {path}: 404): install \
                         it on {} for this repository, or add the repository to its installation",
                        self.app_id,
                        repo.owner()
                    ),
                }));
            }
            s => {
                return Err(Failure::Refused(Refusal {
                    status: s.as_u16(),
                    message: format!(
                        "looking up the App's installation on {repo} (GET {path}): {}",
                        reply.message()
                    ),
                }));
            }
        }
        #[derive(serde::Deserialize)]
        struct Found {
            id: u64,
        }
        let found: Found = serde_json::from_slice(&reply.body).map_err(|e| {
            Failure::Refused(Refusal {
                status: reply.status.as_u16(),
                message: format!("GET {path}: unexpected response: {e}"),
            })
        })?;
        tracing::info!(%repo, installation = found.id, app = self.app_id, "found the App's installation");
        lock(&self.installations).insert(repo.clone(), (found.id, Instant::now()));
        Ok(found.id)
    }

    /// The client of installation `id`, made if there is none.
    fn client(&self, id: u64) -> Result<Arc<InstallationClient>, Failure> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(&id) {
            return Ok(c.clone());
        }
        let client = self.app.installation(InstallationId(id)).map_err(|e| {
            Failure::Refused(Refusal {
                status: 0,
                message: format!(
                    "making the client of installation {id}: {}",
                    error_chain(&e)
                ),
            })
        })?;
        let budget = lock(&self.budgets)
            .entry(id)
            .or_insert_with(|| Arc::new(BudgetCell::new()))
            .clone();
        let made = Arc::new(InstallationClient {
            id,
            client,
            budget,
            mint: tokio::sync::Mutex::new(()),
        });
        clients.insert(id, made.clone());
        Ok(made)
    }

    /// Forgets `client` (not a newer one made meanwhile): its token is
    /// dropped with it, and the next call mints another.
    fn drop_client(&self, client: &Arc<InstallationClient>) {
        let mut clients = lock(&self.clients);
        if clients
            .get(&client.id)
            .is_some_and(|c| Arc::ptr_eq(c, client))
        {
            clients.remove(&client.id);
        }
    }

    /// The installation client of `repo`, with a token that is good for
    /// at least 30 more seconds (octocrab's cached one, or a new one).
    async fn ready_client(&self, repo: &RepoName) -> Result<Arc<InstallationClient>, Failure> {
        let id = self.installation_id(repo).await?;
        let client = self.client(id)?;
        let minted = {
            let _one = client.mint.lock().await;
            client.client.installation_token().await
        };
        match minted {
            Ok(_) => Ok(client),
            Err(e) => {
                let status = match &e {
                    octocrab::Error::GitHub { source, .. } => Some(source.status_code),
                    _ => None,
                };
                let message = match &e {
                    octocrab::Error::GitHub { source, .. } => source.message.clone(),
                    _ => error_chain(&e),
                };
                self.drop_client(&client);
                Err(match status {
                    Some(StatusCode::UNAUTHORIZED) => Failure::Refused(self.jwt_refused(&message)),
                    Some(StatusCode::NOT_FOUND) => {
                        // Uninstalled (or reinstalled under another id):
                        // look it up again next time.
                        lock(&self.installations).remove(repo);
                        Failure::Refused(Refusal {
                            status: 404,
                            message: format!(
                                "installation {id} of the GitHub App {} (found for {repo}) is \
                                 gone: was the App uninstalled? ({message})",
                                self.app_id
                            ),
                        })
                    }
                    Some(s) if s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS => {
                        Failure::Refused(Refusal {
                            status: s.as_u16(),
                            message: format!(
                                "GitHub refused an installation token for {repo} \
                                 (installation {id}): {message}"
                            ),
                        })
                    }
                    _ => Failure::Transport(format!(
                        "getting an installation token for {repo} (installation {id}): {message}"
                    )),
                })
            }
        }
    }

    /// One attempt on the right client; a 401 with an installation token
    /// drops that client and is sent once more with a new token.
    pub(super) async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<&serde_json::Value>,
        if_none_match: Option<&HeaderValue>,
    ) -> Result<Reply, Failure> {
        let route = route(path, &lock(&self.aliases)).ok_or_else(|| {
            Failure::Refused(Refusal {
                status: 0,
                message: format!(
                    "{} names no repository: as a GitHub App, sluice calls only /repos/{{owner}}/{{repo}}/… and /app",
                    path_only(path)
                ),
            })
        })?;
        let repo = match route {
            Route::App => {
                return send_on(
                    &self.app,
                    &self.app_budget,
                    method,
                    path,
                    body,
                    if_none_match,
                )
                .await
                .map_err(Failure::Transport);
            }
            Route::Repo(repo) => repo,
        };
        let client = self.ready_client(&repo).await?;
        let reply = on_installation(&client, method, path, body, if_none_match).await?;
        match reply.status {
            StatusCode::UNAUTHORIZED => {
                tracing::warn!(
                    %repo,
                    installation = client.id,
                    method = %method,
                    path = %path_only(path),
                    message = %reply.message(),
                    "the installation token was refused (401); minting a new one and sending the call again"
                );
                self.drop_client(&client);
                let client = self.ready_client(&repo).await?;
                on_installation(&client, method, path, body, if_none_match).await
            }
            StatusCode::NOT_FOUND if self.unconfirmed(&repo) => {
                // Not found, or no longer the App's to see?
                lock(&self.installations).remove(&repo);
                let id = self.installation_id(&repo).await?;
                if id == client.id {
                    return Ok(reply);
                }
                // Moved to another installation (reinstalled): once more
                // there.
                let client = self.ready_client(&repo).await?;
                on_installation(&client, method, path, body, if_none_match).await
            }
            _ => Ok(reply),
        }
    }

    /// Whether `repo`'s installation was last confirmed more than
    /// [`INSTALLATION_RECHECK`] ago.
    fn unconfirmed(&self, repo: &RepoName) -> bool {
        lock(&self.installations)
            .get(repo)
            .is_none_or(|(_, at)| at.elapsed() >= INSTALLATION_RECHECK)
    }

    /// The installations' rate limits, tightest first, and every call.
    pub(super) fn budget(&self) -> ApiBudget {
        let budgets: Vec<ApiBudget> = lock(&self.budgets).values().map(|b| b.snapshot()).collect();
        let app = self.app_budget.snapshot();
        let tightest = budgets
            .iter()
            .filter(|b| b.limit.is_some_and(|l| l > 0) && b.remaining.is_some())
            .min_by(|a, b| {
                // remaining / limit, compared without division.
                let (ra, la) = (a.remaining.unwrap_or(0), a.limit.unwrap_or(1));
                let (rb, lb) = (b.remaining.unwrap_or(0), b.limit.unwrap_or(1));
                (u128::from(ra) * u128::from(lb)).cmp(&(u128::from(rb) * u128::from(la)))
            });
        ApiBudget {
            limit: tightest.and_then(|b| b.limit),
            remaining: tightest.and_then(|b| b.remaining),
            reset_unix: tightest.and_then(|b| b.reset_unix),
            counted: app.counted + budgets.iter().map(|b| b.counted).sum::<u64>(),
            not_modified: app.not_modified + budgets.iter().map(|b| b.not_modified).sum::<u64>(),
        }
    }

    /// The installation of `repo` if the App has one there (`Ok(None)`:
    /// not installed).
    pub(super) async fn find_installation(&self, repo: &RepoName) -> Result<Option<u64>, String> {
        match self.installation_id(repo).await {
            Ok(id) => Ok(Some(id)),
            Err(Failure::Refused(r)) if r.status == 404 => Ok(None),
            Err(Failure::Refused(r)) => Err(r.message),
            Err(Failure::Transport(m)) => Err(m),
        }
    }

    pub(super) fn app_id(&self) -> u64 {
        self.app_id
    }

    /// A token for a job's fetch of `repo`: its installation's, scoped to
    /// that one repository and `contents: read` (it cannot push, comment
    /// or read other repositories), minted anew for each job and expiring
    /// within the hour.
    pub(super) async fn clone_token(&self, repo: &RepoName) -> Result<String, Failure> {
        let id = self.installation_id(repo).await?;
        let path = format!("/app/installations/{id}/access_tokens");
        let body = serde_json::json!({
            "repositories": [repo.name()],
            "permissions": {"contents": "read"},
        });
        let reply = send_on(
            &self.app,
            &self.app_budget,
            &Method::POST,
            &path,
            Some(&body),
            None,
        )
        .await
        .map_err(Failure::Transport)?;
        if let Some(failure) = self.jwt_or_unavailable(&reply, &format!("POST {path}")) {
            return Err(failure);
        }
        match reply.status {
            StatusCode::CREATED | StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                lock(&self.installations).remove(repo);
                return Err(Failure::Refused(Refusal {
                    status: 404,
                    message: format!(
                        "installation {id} of the GitHub App {} (found for {repo}) is gone: was \
                         the App uninstalled? ({})",
                        self.app_id,
                        reply.message()
                    ),
                }));
            }
            s => {
                return Err(Failure::Refused(Refusal {
                    status: s.as_u16(),
                    message: format!(
                        "GitHub refused a read-only token for {repo} (installation {id}): {} \
                         (does the App have the contents: read permission?)",
                        reply.message()
                    ),
                }));
            }
        }
        #[derive(serde::Deserialize)]
        struct Minted {
            token: String,
        }
        let minted: Minted = serde_json::from_slice(&reply.body).map_err(|e| {
            Failure::Refused(Refusal {
                status: reply.status.as_u16(),
                message: format!("POST {path}: unexpected response: {e}"),
            })
        })?;
        Ok(minted.token)
    }

    /// Forgets `repo`'s installation (given to or taken from the App).
    pub(super) fn forget(&self, repo: &RepoName) {
        lock(&self.installations).remove(repo);
    }
}

/// One attempt on an installation's client.
async fn on_installation(
    client: &InstallationClient,
    method: &Method,
    path: &str,
    body: Option<&serde_json::Value>,
    if_none_match: Option<&HeaderValue>,
) -> Result<Reply, Failure> {
    send_on(
        &client.client,
        &client.budget,
        method,
        path,
        body,
        if_none_match,
    )
    .await
    .map_err(Failure::Transport)
}

impl GitHub {
    /// Asks GitHub who the App is (`GET /app`, with a JWT): a key that is
    /// not the App's, or a wrong app id, fails here with a clear message.
    /// Then looks up the installation of each of `repos`, logging the ones
    /// the App is not installed on (their calls fail, naming them, until it
    /// is).
    pub async fn verify_app(&self, repos: &[RepoName]) -> Result<AppIdentity, ForgeError> {
        let Some(app) = &self.app else {
            return Err(ForgeError::Unsupported {
                what: "GET /app".into(),
                message: "sluice is not configured as a GitHub App ([github.app])".into(),
            });
        };
        let what = "GET /app";
        let reply = self.call(Method::GET, "/app", None).await?;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                return Err(ForgeError::Http {
                    what: what.into(),
                    status: 401,
                    message: app.jwt_refused(&reply.message()).message,
                });
            }
            _ => return Err(reply.error(what)),
        }
        #[derive(serde::Deserialize)]
        struct Me {
            id: u64,
            #[serde(default)]
            slug: Option<String>,
            #[serde(default)]
            name: Option<String>,
        }
        let me: Me = reply.decode(what)?;
        if me.id != app.app_id() {
            return Err(ForgeError::Decode {
                what: what.into(),
                message: format!(
                    "GitHub says the key is App {}'s, not App {}'s (github.app.app_id)",
                    me.id,
                    app.app_id()
                ),
            });
        }
        let identity = AppIdentity {
            id: me.id,
            slug: me.slug.unwrap_or_default(),
            name: me.name.unwrap_or_default(),
        };
        tracing::info!(app = identity.id, slug = %identity.slug, "authenticated as a GitHub App");
        for repo in repos {
            let found = tokio::time::timeout(self.timeout, app.find_installation(repo))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
            match found {
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!(
                    %repo,
                    app = identity.id,
                    "the GitHub App is not installed on this repository: its calls fail until it is"
                ),
                Err(message) => tracing::warn!(
                    %repo,
                    %message,
                    "could not look up the GitHub App's installation; it is looked up again on the next call"
                ),
            }
        }
        Ok(identity)
    }

    /// The installation of `repo` the App uses (looked up if need be);
    /// `None` when the App is not installed there or sluice is not an App.
    pub async fn installation_of(&self, repo: &RepoName) -> Result<Option<u64>, String> {
        match &self.app {
            Some(app) => tokio::time::timeout(self.timeout, app.find_installation(repo))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn calls_are_routed_by_the_repository_in_their_path() {
        let none = HashMap::new();
        assert_eq!(
            route("/repos/octo/demo/pulls?state=open&per_page=100", &none),
            Some(Route::Repo(repo("octo/demo")))
        );
        assert_eq!(
            route("/repos/acme/w.x/git/ref/heads/sluice%2Fmain%2F1", &none),
            Some(Route::Repo(repo("acme/w.x")))
        );
        assert_eq!(
            route("/repos/octo/demo", &none),
            Some(Route::Repo(repo("octo/demo")))
        );
        assert_eq!(route("/app", &none), Some(Route::App));
        assert_eq!(route("/app/installations/1", &none), Some(Route::App));
        for path in [
            "/apps/x",
            "/user",
            "/repos/octo",
            "/repos/../x/y",
            "",
            "/repositories/1/pulls",
        ] {
            assert_eq!(route(path, &none), None, "{path}");
        }
        let aliases = HashMap::from([("/repositories/77".to_string(), repo("octo/demo"))]);
        assert_eq!(
            route("/repositories/77/pulls?page=2", &aliases),
            Some(Route::Repo(repo("octo/demo")))
        );
        assert_eq!(route("/repositories/78/pulls?page=2", &aliases), None);
    }

    #[test]
    fn next_page_links_by_repository_id_are_learned() {
        assert_eq!(
            alias_prefix("/repositories/77/pulls?page=2").as_deref(),
            Some("/repositories/77")
        );
        assert_eq!(alias_prefix("/repositories/x7/pulls"), None);
        assert_eq!(alias_prefix("/repos/octo/demo/pulls"), None);
    }
}
