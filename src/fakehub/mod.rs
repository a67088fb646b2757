//! A fake GitHub for tests and the demo: real bare git repositories on disk,
//! real merges, the REST paths and response shapes of GitHub's API
//! description, and signed webhook deliveries.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let root = tempfile::tempdir()?;
//! let hub = sluice::fakehub::FakeHub::start(root.path(), None).await?;
//! hub.create_repo("octo/demo", "main", &[("README.md", "hi\n")]).await?;
//! hub.commit("octo/demo", "feature", Some("main"), &[("a.txt", "a\n")], "Add a").await?;
//! let n = hub.open_pr("octo/demo", "feature", "main", "Add a", "alice").await?;
//! # let _ = n; Ok(()) }
//! ```
//!
//! As a GitHub App (`apps.rs`, `checks.rs`, `comments.rs`): sluice gets the
//! app id and the private key; people's comments arrive as webhooks.
//!
//! ```no_run
//! # async fn demo(hub: sluice::fakehub::FakeHub, n: u64) -> anyhow::Result<()> {
//! let keys = hub.register_app(4242)?; // keys.private_key_pem, keys.app_id
//! let installation = hub.install_app(4242, "octo", &["octo/demo"])?;
//! hub.set_installation_token_lifetime(std::time::Duration::from_secs(2));
//! let comment = hub.comment("octo/demo", n, "alice", "/merge")?;
//! // ... sluice answers: a reaction by `sluice[bot]`, a check run ...
//! let reactions = hub.reactions("octo/demo", comment);
//! let head = hub.pr("octo/demo", n).expect("the PR").head_sha;
//! let runs = hub.check_runs("octo/demo", head.as_str());
//! hub.rerequest_check_run("octo/demo", runs[0].id, "alice")?;
//! hub.expire_installation_tokens(installation); // the next call is 401
//! # let _ = (keys, reactions); Ok(()) }
//! ```

mod apps;
mod budget;
mod chaos;
mod checks;
mod comments;
mod git;
mod hooks;
mod refs;
mod server;
mod shapes;
mod smart_http;
mod state;

pub use apps::{
    AppKeys, BAD_CREDENTIALS, DEFAULT_APP_EVENTS, DEFAULT_APP_PERMISSIONS, DEFAULT_TOKEN_LIFETIME,
    InstallationTokenView, JWT_BAD_IAT, JWT_EXPIRED, JWT_MAX_AHEAD_SECS, JWT_TOO_FAR,
    JWT_UNDECODABLE, NOT_ACCESSIBLE,
};
pub use budget::{ApiRequest, DEFAULT_RATE_LIMIT, REQUEST_LOG_CAP};
pub use chaos::{Chaos, ChaosStats, DeliveryFate, Dice, MAX_HOLD, MAX_HOLD_BEHIND, REORDER_RATE};
pub use checks::{APPS_ONLY, CheckRunState, CheckRunView, OUTPUT_MAX_CHARS};
pub use comments::{COMMENT_MAX_CHARS, REACTIONS, ReactionView};
pub use hooks::{DeliveryView, signature};

use crate::core::{MergeMethod, RepoName, Sha};
use anyhow::{Context, anyhow, bail};
use git::{Git, Ident};
use serde_json::{Value, json};
use shapes::{Mergeable, PushCommit, Urls};
use state::{PrState, Protection, RepoState, ReviewRec, State};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, oneshot};

/// The login the fake records as the merger of PRs merged through the API.
pub const MERGER: &str = "sluice-bot";

/// A fake GitHub server. Cheap to clone; the server stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct FakeHub {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

pub(crate) struct Inner {
    repos_dir: PathBuf,
    api_url: String,
    clone_base: String,
    token: Option<String>,
    state: Mutex<State>,
    /// Serializes everything that moves refs, so a merge's checks and its
    /// ref update see the same repository.
    ops: tokio::sync::Mutex<()>,
    hook: Mutex<Option<HookTarget>>,
    deliveries: Mutex<Vec<DeliveryView>>,
    merges: Mutex<Vec<MergeRecord>>,
    branch_moves: Mutex<Vec<BranchMove>>,
    faults: Mutex<Vec<Fault>>,
    /// Seeded chaos, when on.
    chaos: Mutex<Option<chaos::Dice>>,
    counters: chaos::Counters,
    /// The primary rate limit per token, and the log of API requests.
    budget: budget::Budget,
    queue: mpsc::UnboundedSender<hooks::Job>,
    /// How long each delivery waits after the event before it is sent
    /// (GitHub's webhook latency); zero by default.
    delivery_delay: Mutex<std::time::Duration>,
    pending: AtomicUsize,
    idle: Notify,
}

#[derive(Clone, Debug)]
pub(crate) struct HookTarget {
    url: String,
    secret: String,
    hook_id: u64,
}

/// A pull request as the fake sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrView {
    pub number: u64,
    /// "open" or "closed".
    pub state: String,
    pub merged: bool,
    pub merge_commit_sha: Option<Sha>,
    pub head_ref: String,
    pub head_sha: Sha,
    pub base_ref: String,
    pub title: String,
    pub author: String,
    pub labels: Vec<String>,
    pub draft: bool,
    /// Review ids and states, oldest first.
    pub reviews: Vec<(u64, String, String)>,
}

/// One commit status, as posted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusView {
    pub state: String,
    pub context: String,
    pub description: Option<String>,
    pub target_url: Option<String>,
}

/// One comment on a PR's conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommentView {
    pub id: u64,
    /// A person's login, or `<slug>[bot]` for an App's comment.
    pub user: String,
    pub body: String,
}

/// One successful merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeRecord {
    pub repo: String,
    pub number: u64,
    pub method: MergeMethod,
    pub head_sha: Sha,
    pub base_ref: String,
    pub base_sha_before: Sha,
    pub merge_sha: Sha,
}

/// One move of a branch (created, moved or deleted), in the order the
/// fake made them, whoever made it: a push, a PR merge, a ref update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchMove {
    pub repo: String,
    pub branch: String,
    /// None: the branch was created.
    pub before: Option<Sha>,
    /// None: the branch was deleted.
    pub after: Option<Sha>,
    /// Who moved it: the repository's owner for a push, [`MERGER`] for
    /// the API with the personal token, `<slug>[bot]` for an App's
    /// installation token.
    pub pusher: String,
    /// The contexts whose latest status on `after` was `success` when the
    /// branch moved (among the statuses stored before the ref update).
    pub successful_checks: Vec<String>,
}

/// A failure to inject, for retry tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next `times` API calls whose method matches (None: any) and whose
    /// path starts with `path_prefix` answer `status` with a GitHub-like
    /// error body, and `Retry-After: <secs>` if given (for 403/429).
    Status {
        method: Option<String>,
        path_prefix: String,
        status: u16,
        retry_after: Option<u64>,
        times: u32,
    },
    /// The next `times` successful calls of `method` (None: any) under
    /// `path_prefix` are carried out, but their answer is held back for
    /// `delay` (a client that dies meanwhile never hears that its call took
    /// effect).
    SlowAnswer {
        method: Option<String>,
        path_prefix: String,
        delay: std::time::Duration,
        times: u32,
    },
    /// The next `times` GETs of this PR report `mergeable: null`
    /// (`mergeable_state: "unknown"`), as while GitHub computes it.
    MergeableUnknown {
        repo: String,
        number: u64,
        times: u32,
    },
}

impl Fault {
    /// `times` calls of `method` under `path_prefix` answer `status`.
    pub fn status(method: &str, path_prefix: &str, status: u16, times: u32) -> Fault {
        Fault::Status {
            method: Some(method.to_ascii_uppercase()),
            path_prefix: path_prefix.to_string(),
            status,
            retry_after: None,
            times,
        }
    }
    /// Like [`Fault::status`] with a `Retry-After` header (GitHub's
    /// secondary rate limit: 403 or 429).
    pub fn rate_limited(
        method: &str,
        path_prefix: &str,
        status: u16,
        retry_after_secs: u64,
        times: u32,
    ) -> Fault {
        Fault::Status {
            method: Some(method.to_ascii_uppercase()),
            path_prefix: path_prefix.to_string(),
            status,
            retry_after: Some(retry_after_secs),
            times,
        }
    }
}

/// Why the merge endpoint refused.
#[derive(Debug)]
pub(crate) struct HttpError {
    pub status: u16,
    pub message: String,
}

fn http_err(status: u16, message: &str) -> HttpError {
    HttpError {
        status,
        message: message.to_string(),
    }
}

impl From<anyhow::Error> for HttpError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!("fakehub internal error: {e:#}");
        HttpError {
            status: 500,
            message: format!("fakehub internal error: {e:#}"),
        }
    }
}

fn to_sha(s: &str) -> anyhow::Result<Sha> {
    Sha::parse(s).map_err(|e| anyhow!(e))
}

/// Git always prints valid object ids; a view never fails on them.
fn view_sha(s: &str) -> Sha {
    Sha::parse(s).unwrap_or_else(|_| Sha::parse(&"0".repeat(40)).expect("zero sha is valid"))
}

/// A PR's head and base shas, and how many commits it adds.
async fn pr_range(
    g: &git::Git,
    repo: &str,
    head: &str,
    base: &str,
) -> anyhow::Result<(String, String, u64)> {
    let head_sha = g
        .branch(head)
        .await?
        .with_context(|| format!("no branch {head:?} in {repo}"))?;
    let base_sha = g
        .branch(base)
        .await?
        .with_context(|| format!("no branch {base:?} in {repo}"))?;
    let range = format!("{base_sha}..{head_sha}");
    let commits: u64 = g
        .ok(&["rev-list", "--count", &range, "--"])
        .await?
        .parse()
        .unwrap_or(1);
    Ok((head_sha, base_sha, commits))
}

fn check_branch_name(name: &str) -> anyhow::Result<()> {
    if !crate::core::valid_branch_name(name) {
        bail!("invalid branch name {name:?}");
    }
    Ok(())
}

impl FakeHub {
    /// Binds 127.0.0.1:0; bare repositories live under `root/repos`. With a
    /// `token`, API calls need `Authorization: Bearer <token>` (or `token
    /// <token>`), else 401 like GitHub.
    pub async fn start(root: &Path, token: Option<String>) -> anyhow::Result<FakeHub> {
        let repos_dir = root.join("repos");
        std::fs::create_dir_all(&repos_dir).context("creating the repositories directory")?;
        let repos_dir = repos_dir.canonicalize()?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            clone_base: format!("file://{}", repos_dir.display()),
            repos_dir,
            api_url: format!("http://{addr}"),
            token,
            state: Mutex::new(State::default()),
            ops: tokio::sync::Mutex::new(()),
            hook: Mutex::new(None),
            deliveries: Mutex::new(Vec::new()),
            merges: Mutex::new(Vec::new()),
            branch_moves: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            chaos: Mutex::new(None),
            counters: chaos::Counters::default(),
            budget: budget::Budget::default(),
            queue: tx,
            delivery_delay: Mutex::new(std::time::Duration::ZERO),
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let serve = tokio::spawn(server::serve(inner.clone(), listener));
        let deliver = tokio::spawn(hooks::run(inner.clone(), rx));
        Ok(FakeHub {
            inner,
            _tasks: Arc::new(Tasks(vec![serve, deliver])),
        })
    }

    /// `http://127.0.0.1:PORT`, the API base URL.
    pub fn api_url(&self) -> String {
        self.inner.api_url.clone()
    }

    /// `file:///…/repos`: a repository's clone URL is
    /// `{clone_base}/{owner}/{name}.git`.
    pub fn clone_base(&self) -> String {
        self.inner.clone_base.clone()
    }

    /// The clone URL of one repository.
    pub fn clone_url(&self, repo: &str) -> String {
        format!("{}/{repo}.git", self.inner.clone_base)
    }

    /// Where deliveries go from now on; sends a `ping`.
    pub fn set_webhook(&self, url: &str, secret: &str) {
        let hook_id = rand::random::<u32>() as u64 + 1;
        *self.inner.hook.lock().expect("hook lock") = Some(HookTarget {
            url: url.to_string(),
            secret: secret.to_string(),
            hook_id,
        });
        let now = shapes::now_iso();
        let api = format!("{}/hooks/{hook_id}", self.inner.api_url);
        let body = json!({
            "zen": "Keep it logically awesome.",
            "hook_id": hook_id,
            "hook": {
                "type": "Repository",
                "id": hook_id,
                "name": "web",
                "active": true,
                "events": ["*"],
                "config": {"content_type": "json", "url": url, "insecure_ssl": "0"},
                "updated_at": now,
                "created_at": now,
                "url": api,
                "test_url": format!("{api}/test"),
                "ping_url": format!("{api}/pings"),
                "deliveries_url": format!("{api}/deliveries"),
                "last_response": {"code": null, "status": "unused", "message": null}
            }
        });
        self.inner.enqueue("ping", body);
    }

    /// Creates a bare repository with one commit holding `files` on
    /// `default_branch`; returns that commit.
    pub async fn create_repo(
        &self,
        repo: &str,
        default_branch: &str,
        files: &[(&str, &str)],
    ) -> anyhow::Result<Sha> {
        let name = RepoName::parse(repo)?;
        check_branch_name(default_branch)?;
        let _ops = self.inner.ops.lock().await;
        if self
            .inner
            .state
            .lock()
            .expect("state")
            .repos
            .contains_key(repo)
        {
            bail!("repository {repo} exists");
        }
        let dir = self
            .inner
            .repos_dir
            .join(name.owner())
            .join(format!("{}.git", name.name()));
        std::fs::create_dir_all(&dir)?;
        let dir_s = dir.to_string_lossy().into_owned();
        let out = git::run_git(
            None,
            &[
                "init",
                "--bare",
                "--quiet",
                &format!("--initial-branch={default_branch}"),
                "--",
                &dir_s,
            ],
            None,
            &[],
            None,
        )
        .await?;
        if out.code != Some(0) {
            bail!("git init failed: {}", out.stderr.trim());
        }
        let g = Git::new(dir);
        g.ok(&["config", "uploadpack.allowAnySHA1InWant", "true"])
            .await?;
        g.ok(&["config", "uploadpack.allowReachableSHA1InWant", "true"])
            .await?;
        let owner = Ident::user(name.owner());
        let sha = g
            .commit_files(None, files, "Initial commit\n", &owner)
            .await?;
        g.update_ref(&format!("refs/heads/{default_branch}"), &sha, None)
            .await?;
        let mut st = self.inner.state.lock().expect("state");
        let id = st.fresh_id() + 100_000;
        let now = shapes::now_unix();
        st.repos.insert(
            repo.to_string(),
            RepoState {
                full_name: repo.to_string(),
                id,
                default_branch: default_branch.to_string(),
                created_at: shapes::iso8601(now),
                created_unix: now,
                prs: Default::default(),
                permissions: Default::default(),
                statuses: Vec::new(),
                next_number: 1,
                protections: Default::default(),
                check_runs: Vec::new(),
                comments: Default::default(),
            },
        );
        to_sha(&sha)
    }

    /// Sets a user's permission on a repository: "admin", "write",
    /// "read" or "none". The owner is an admin, others read by default.
    pub fn set_permission(&self, repo: &str, user: &str, permission: &str) {
        let mut st = self.inner.state.lock().expect("state");
        if let Some(r) = st.repos.get_mut(repo) {
            r.permissions
                .insert(user.to_string(), permission.to_string());
        }
    }

    /// Protects `branch` with required status checks `contexts` (the
    /// `sluice` check, say), replacing any rule it had: from now on the
    /// branch cannot be deleted or force-pushed, and it moves (a ref update,
    /// a merge, a PR merged into it) only to a commit with a `success`
    /// status for every one of them. `strict` ("require branches to be up
    /// to date") is reported as false.
    pub fn protect_branch(
        &self,
        repo: &str,
        branch: &str,
        contexts: &[&str],
    ) -> anyhow::Result<()> {
        check_branch_name(branch)?;
        let mut st = self.inner.state.lock().expect("state");
        let r = st
            .repos
            .get_mut(repo)
            .with_context(|| format!("no repository {repo}"))?;
        r.protections.insert(
            branch.to_string(),
            Protection {
                strict: false,
                contexts: contexts.iter().map(|c| c.to_string()).collect(),
            },
        );
        Ok(())
    }

    /// A check run reported on `sha` by another app (a CI): `status`
    /// `queued`, `in_progress` or `completed` with a `conclusion`. A later
    /// report of the same name replaces it, as a re-run does on GitHub.
    /// (An App of the fake creates its runs through the API.)
    pub fn report_check_run(
        &self,
        repo: &str,
        sha: &str,
        name: &str,
        status: &str,
        conclusion: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut st = self.inner.state.lock().expect("state");
        let id = st.fresh_id() + 4_000_000_000;
        let r = st
            .repos
            .get_mut(repo)
            .with_context(|| format!("no repository {repo}"))?;
        let now = shapes::now_iso();
        let mut rec = state::CheckRunRec {
            id,
            head_sha: sha.to_ascii_lowercase(),
            name: name.to_string(),
            status: status.to_string(),
            conclusion: conclusion.map(String::from),
            completed_at: (status == "completed").then(|| now.clone()),
            started_at: now,
            app_id: None,
            details_url: None,
            external_id: None,
            output: Default::default(),
            history: Vec::new(),
        };
        rec.history.push(rec.snapshot());
        r.check_runs.push(rec);
        Ok(())
    }

    /// Removes the protection of `branch`, if it has one.
    pub fn unprotect_branch(&self, repo: &str, branch: &str) {
        let mut st = self.inner.state.lock().expect("state");
        if let Some(r) = st.repos.get_mut(repo) {
            r.protections.remove(branch);
        }
    }

    /// From now on every delivery is sent `delay` after the event that
    /// caused it (in order; GitHub's deliveries commonly take hundreds of
    /// milliseconds), so a client can act before it hears of a push.
    /// Redeliveries are not delayed. Zero turns it off.
    pub fn set_delivery_delay(&self, delay: std::time::Duration) {
        *self.inner.delivery_delay.lock().expect("delay lock") = delay;
    }

    /// A new commit on `branch` (created from `from`, a branch name or sha,
    /// if it does not exist) writing `files`. Sends `push`, and
    /// `pull_request` `synchronize` for every open PR whose head is `branch`.
    /// Its author is the repository's owner.
    pub async fn commit(
        &self,
        repo: &str,
        branch: &str,
        from: Option<&str>,
        files: &[(&str, &str)],
        message: &str,
    ) -> anyhow::Result<Sha> {
        let owner = repo.split('/').next().unwrap_or("fakehub").to_string();
        self.commit_as(repo, branch, from, files, message, (&owner, None))
            .await
    }

    /// Like [`FakeHub::commit`], by `author`: (name, email); without an
    /// email, `name` is a login of the fake's (its noreply address).
    pub async fn commit_as(
        &self,
        repo: &str,
        branch: &str,
        from: Option<&str>,
        files: &[(&str, &str)],
        message: &str,
        author: (&str, Option<&str>),
    ) -> anyhow::Result<Sha> {
        let ident = match author.1 {
            Some(email) => Ident {
                name: author.0.to_string(),
                email: email.to_string(),
                date: None,
            },
            None => Ident::user(author.0),
        };
        check_branch_name(branch)?;
        let g = self.inner.git(repo)?;
        let _ops = self.inner.ops.lock().await;
        let old = g.branch(branch).await?;
        let parent = match (&old, from) {
            (Some(old), _) => old.clone(),
            (None, Some(from)) => match g.branch(from).await? {
                Some(sha) => sha,
                None => g
                    .rev_parse(from)
                    .await?
                    .with_context(|| format!("no branch or commit {from:?} in {repo}"))?,
            },
            (None, None) => bail!("branch {branch:?} does not exist in {repo} and no `from`"),
        };
        let pusher = repo.split('/').next().unwrap_or("fakehub").to_string();
        let new = g
            .commit_files(Some(&parent), files, message, &ident)
            .await?;
        let seen = self.inner.statuses_seen(repo);
        g.update_ref(&format!("refs/heads/{branch}"), &new, old.as_deref())
            .await?;
        let before = old.unwrap_or_else(|| "0".repeat(40));
        self.inner
            .branch_moved(&g, repo, branch, &before, &new, &pusher, seen)
            .await?;
        to_sha(&new)
    }

    /// Opens a PR from `head` into `base` (both branches of `repo`).
    pub async fn open_pr(
        &self,
        repo: &str,
        head: &str,
        base: &str,
        title: &str,
        author: &str,
    ) -> anyhow::Result<u64> {
        let g = self.inner.git(repo)?;
        let _ops = self.inner.ops.lock().await;
        let (head_sha, base_sha, commits) = pr_range(&g, repo, head, base).await?;
        let number = {
            let mut st = self.inner.state.lock().expect("state");
            let id = st.fresh_id() + 200_000_000;
            let r = st.repos.get_mut(repo).context("no such repository")?;
            let number = r.next_number;
            r.next_number += 1;
            let now = shapes::now_iso();
            r.prs.insert(
                number,
                PrState {
                    number,
                    id,
                    title: title.to_string(),
                    body: None,
                    author: author.to_string(),
                    head_ref: head.to_string(),
                    head_sha: head_sha.clone(),
                    base_ref: base.to_string(),
                    base_sha,
                    open: true,
                    merged: false,
                    merged_by: None,
                    merge_commit_sha: None,
                    merged_at: None,
                    closed_at: None,
                    created_at: now.clone(),
                    updated_at: now,
                    labels: Vec::new(),
                    draft: false,
                    commits,
                    reviews: Vec::new(),
                },
            );
            number
        };
        g.ok(&["update-ref", &format!("refs/pull/{number}/head"), &head_sha])
            .await?;
        self.inner
            .pr_event(repo, number, "opened", author, json!({}))?;
        Ok(number)
    }

    /// Opens `count` PRs into `base` at once, for tests that need many: each
    /// from its own new branch `{head}-{number}`, all at the commit branch
    /// `head` points at. One git call for all the refs; `opened` is sent
    /// for each. Returns the numbers, oldest first.
    pub async fn open_prs_bulk(
        &self,
        repo: &str,
        head: &str,
        base: &str,
        count: usize,
        author: &str,
    ) -> anyhow::Result<Vec<u64>> {
        let g = self.inner.git(repo)?;
        let _ops = self.inner.ops.lock().await;
        let (head_sha, base_sha, commits) = pr_range(&g, repo, head, base).await?;
        let first = {
            let st = self.inner.state.lock().expect("state");
            st.repos
                .get(repo)
                .context("no such repository")?
                .next_number
        };
        let numbers: Vec<u64> = (first..first + count as u64).collect();
        let mut refs = String::new();
        for n in &numbers {
            let branch = format!("{head}-{n}");
            check_branch_name(&branch)?;
            refs.push_str(&format!("create refs/heads/{branch} {head_sha}\n"));
            refs.push_str(&format!("update refs/pull/{n}/head {head_sha}\n"));
        }
        let out = g
            .run(&["update-ref", "--stdin"], Some(refs.as_bytes()), &[], None)
            .await?;
        if out.code != Some(0) {
            bail!("git update-ref --stdin failed: {}", out.stderr.trim());
        }
        {
            let mut st = self.inner.state.lock().expect("state");
            let now = shapes::now_iso();
            for &number in &numbers {
                let id = st.fresh_id() + 200_000_000;
                let r = st.repos.get_mut(repo).context("no such repository")?;
                r.next_number = number + 1;
                r.prs.insert(
                    number,
                    PrState {
                        number,
                        id,
                        title: format!("Bulk PR {number}"),
                        body: None,
                        author: author.to_string(),
                        head_ref: format!("{head}-{number}"),
                        head_sha: head_sha.clone(),
                        base_ref: base.to_string(),
                        base_sha: base_sha.clone(),
                        open: true,
                        merged: false,
                        merged_by: None,
                        merge_commit_sha: None,
                        merged_at: None,
                        closed_at: None,
                        created_at: now.clone(),
                        updated_at: now.clone(),
                        labels: Vec::new(),
                        draft: false,
                        commits,
                        reviews: Vec::new(),
                    },
                );
            }
        }
        for &number in &numbers {
            self.inner
                .pr_event(repo, number, "opened", author, json!({}))?;
        }
        Ok(numbers)
    }

    /// A review by `reviewer`: "APPROVED", "CHANGES_REQUESTED" or
    /// "COMMENTED". Returns the review id; sends `pull_request_review`
    /// `submitted`.
    pub async fn review(
        &self,
        repo: &str,
        number: u64,
        reviewer: &str,
        state: &str,
    ) -> anyhow::Result<u64> {
        let state = state.to_ascii_uppercase();
        if !matches!(
            state.as_str(),
            "APPROVED" | "CHANGES_REQUESTED" | "COMMENTED"
        ) {
            bail!("unknown review state {state:?}");
        }
        let id = self.inner.with_pr(repo, number, |st_id, pr| {
            let id = st_id + 80_000_000;
            pr.reviews.push(ReviewRec {
                id,
                user: reviewer.to_string(),
                state: state.clone(),
                body: String::new(),
                commit_id: pr.head_sha.clone(),
                submitted_at: shapes::now_iso(),
            });
            // As on GitHub, a review is an update of the PR.
            pr.updated_at = shapes::now_iso();
            Ok(id)
        })?;
        self.inner
            .review_event(repo, number, id, "submitted", reviewer)?;
        Ok(id)
    }

    /// Dismisses a review (its state becomes DISMISSED); sends
    /// `pull_request_review` `dismissed`.
    pub async fn dismiss_review(
        &self,
        repo: &str,
        number: u64,
        review_id: u64,
    ) -> anyhow::Result<()> {
        let owner = repo.split('/').next().unwrap_or_default().to_string();
        self.inner.with_pr(repo, number, |_, pr| {
            let rv = pr
                .reviews
                .iter_mut()
                .find(|r| r.id == review_id)
                .context("no such review")?;
            rv.state = "DISMISSED".into();
            pr.updated_at = shapes::now_iso();
            Ok(())
        })?;
        self.inner
            .review_event(repo, number, review_id, "dismissed", &owner)
    }

    /// Closes a PR without merging; sends `pull_request` `closed`.
    pub async fn close_pr(&self, repo: &str, number: u64) -> anyhow::Result<()> {
        let author = self.inner.with_pr(repo, number, |_, pr| {
            if !pr.open {
                bail!("PR #{number} is not open");
            }
            pr.open = false;
            pr.closed_at = Some(shapes::now_iso());
            pr.updated_at = shapes::now_iso();
            Ok(pr.author.clone())
        })?;
        self.inner
            .pr_event(repo, number, "closed", &author, json!({}))
    }

    /// Reopens a closed, unmerged PR; sends `pull_request` `reopened`.
    pub async fn reopen_pr(&self, repo: &str, number: u64) -> anyhow::Result<()> {
        let g = self.inner.git(repo)?;
        let _ops = self.inner.ops.lock().await;
        let (head_ref, base_ref) = self.inner.with_pr(repo, number, |_, pr| {
            if pr.open || pr.merged {
                bail!("PR #{number} is open or merged");
            }
            Ok((pr.head_ref.clone(), pr.base_ref.clone()))
        })?;
        let head = g.branch(&head_ref).await?.context("head branch is gone")?;
        let base = g.branch(&base_ref).await?.context("base branch is gone")?;
        g.ok(&["update-ref", &format!("refs/pull/{number}/head"), &head])
            .await?;
        let author = self.inner.with_pr(repo, number, |_, pr| {
            pr.open = true;
            pr.closed_at = None;
            pr.head_sha = head;
            pr.base_sha = base;
            pr.updated_at = shapes::now_iso();
            Ok(pr.author.clone())
        })?;
        self.inner
            .pr_event(repo, number, "reopened", &author, json!({}))
    }

    /// Adds a label; sends `pull_request` `labeled`.
    pub async fn add_label(&self, repo: &str, number: u64, label: &str) -> anyhow::Result<()> {
        let author = self.inner.with_pr(repo, number, |_, pr| {
            if !pr.labels.iter().any(|l| l == label) {
                pr.labels.push(label.to_string());
            }
            Ok(pr.author.clone())
        })?;
        let label_json = {
            let st = self.inner.state.lock().expect("state");
            let r = st.repos.get(repo).context("no such repository")?;
            shapes::label(&self.inner.urls(), r, label)
        };
        self.inner.pr_event(
            repo,
            number,
            "labeled",
            &author,
            json!({ "label": label_json }),
        )
    }

    /// Retargets a PR to another base branch; sends `pull_request` `edited`
    /// with `changes.base`.
    pub async fn set_base(&self, repo: &str, number: u64, base: &str) -> anyhow::Result<()> {
        let g = self.inner.git(repo)?;
        let _ops = self.inner.ops.lock().await;
        let base_sha = g
            .branch(base)
            .await?
            .with_context(|| format!("no branch {base:?} in {repo}"))?;
        let (author, old_ref, old_sha) = self.inner.with_pr(repo, number, |_, pr| {
            let old = (pr.base_ref.clone(), pr.base_sha.clone());
            pr.base_ref = base.to_string();
            pr.base_sha = base_sha;
            pr.updated_at = shapes::now_iso();
            Ok((pr.author.clone(), old.0, old.1))
        })?;
        let changes =
            json!({"changes": {"base": {"ref": {"from": old_ref}, "sha": {"from": old_sha}}}});
        self.inner
            .pr_event(repo, number, "edited", &author, changes)
    }

    /// A PR as the fake sees it now.
    pub fn pr(&self, repo: &str, number: u64) -> Option<PrView> {
        let st = self.inner.state.lock().expect("state");
        let pr = st.repos.get(repo)?.prs.get(&number)?;
        Some(PrView {
            number,
            state: if pr.open { "open" } else { "closed" }.into(),
            merged: pr.merged,
            merge_commit_sha: pr.merge_commit_sha.as_deref().map(view_sha),
            head_ref: pr.head_ref.clone(),
            head_sha: view_sha(&pr.head_sha),
            base_ref: pr.base_ref.clone(),
            title: pr.title.clone(),
            author: pr.author.clone(),
            labels: pr.labels.clone(),
            draft: pr.draft,
            reviews: pr
                .reviews
                .iter()
                .map(|r| (r.id, r.user.clone(), r.state.clone()))
                .collect(),
        })
    }

    /// Every comment on PR `number`'s conversation, oldest first.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<CommentView> {
        let st = self.inner.state.lock().expect("state");
        st.repos
            .get(repo)
            .and_then(|r| r.comments.get(&number))
            .map(|cs| {
                cs.iter()
                    .map(|c| CommentView {
                        id: c.id,
                        user: c.user.clone(),
                        body: c.body.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every status posted for `sha`, oldest first.
    pub fn statuses(&self, repo: &str, sha: &str) -> Vec<StatusView> {
        let st = self.inner.state.lock().expect("state");
        st.repos
            .get(repo)
            .map(|r| {
                r.statuses
                    .iter()
                    .filter(|s| s.sha == sha)
                    .map(|s| StatusView {
                        state: s.state.clone(),
                        context: s.context.clone(),
                        description: s.description.clone(),
                        target_url: s.target_url.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The commit a branch points at (read from git).
    pub async fn branch_head(&self, repo: &str, branch: &str) -> Option<Sha> {
        let g = self.inner.git(repo).ok()?;
        g.branch(branch)
            .await
            .ok()?
            .and_then(|s| Sha::parse(&s).ok())
    }

    /// Every successful merge, in order.
    pub fn merges(&self) -> Vec<MergeRecord> {
        self.inner.merges.lock().expect("merges").clone()
    }

    /// Every move of a branch of `repo`, oldest first.
    pub fn branch_moves(&self, repo: &str) -> Vec<BranchMove> {
        self.inner
            .branch_moves
            .lock()
            .expect("branch moves")
            .iter()
            .filter(|m| m.repo == repo)
            .cloned()
            .collect()
    }

    /// Every delivery sent, in order.
    pub fn deliveries(&self) -> Vec<DeliveryView> {
        self.inner.deliveries.lock().expect("deliveries").clone()
    }

    /// Sends a recorded delivery again: same body, same `X-GitHub-Delivery`
    /// (a duplicate, as GitHub's "Redeliver" button). Returns the answer.
    pub async fn redeliver(&self, delivery_id: &str) -> anyhow::Result<u16> {
        let original = self
            .deliveries()
            .into_iter()
            .find(|d| d.id == delivery_id)
            .with_context(|| format!("no delivery {delivery_id}"))?;
        let (tx, rx) = oneshot::channel();
        self.inner.pending.fetch_add(1, Ordering::SeqCst);
        self.inner
            .queue
            .send(hooks::Job {
                id: original.id,
                event: original.event,
                action: original.action,
                body: original.body.into_bytes(),
                redelivery: true,
                reply: Some(tx),
                at: std::time::Instant::now(),
            })
            .map_err(|_| anyhow!("the delivery task has stopped"))?;
        rx.await
            .context("the delivery task has stopped")?
            .map_err(|e| anyhow!("redelivery failed: {e}"))
    }

    /// Waits until every queued delivery has been sent.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Makes upcoming calls fail, for retry tests.
    pub fn inject_fault(&self, fault: Fault) {
        self.inner.faults.lock().expect("faults").push(fault);
    }

    /// Turns seeded chaos on (replacing any earlier chaos): from now on
    /// webhook deliveries are dropped, duplicated and reordered, and API
    /// calls answer 502, as `chaos` says. Redeliveries and the git
    /// transport are not affected. Injected [`Fault`]s still apply first.
    pub fn set_chaos(&self, chaos: Chaos) {
        *self.inner.chaos.lock().expect("chaos lock") = Some(chaos::Dice::new(chaos));
    }

    /// Turns chaos off: every delivery is sent once, in order, and no API
    /// call fails unless a [`Fault`] says so. Deliveries already held back
    /// are still sent.
    pub fn clear_chaos(&self) {
        *self.inner.chaos.lock().expect("chaos lock") = None;
    }

    /// Every API request the fake answered (the last [`REQUEST_LOG_CAP`]),
    /// oldest first.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.inner.budget.requests_since(0)
    }

    /// The `seq` the next API request will get: read the log from here with
    /// [`FakeHub::requests_since`].
    pub fn request_mark(&self) -> u64 {
        self.inner.budget.mark()
    }

    /// The API requests from `mark` on, oldest first.
    pub fn requests_since(&self, mark: u64) -> Vec<ApiRequest> {
        self.inner.budget.requests_since(mark)
    }

    /// Calls counted against the hub's token (or, without one, against
    /// calls without a token) in the current hour.
    pub fn rate_limit_used(&self) -> u64 {
        self.inner
            .budget
            .used(self.inner.token.as_deref().unwrap_or_default())
    }

    /// `x-ratelimit-remaining` for the hub's token now.
    pub fn rate_limit_remaining(&self) -> u64 {
        self.inner
            .budget
            .limit()
            .saturating_sub(self.rate_limit_used())
    }

    /// Sets the primary rate limit per token and hour (default
    /// [`DEFAULT_RATE_LIMIT`]), to test what happens when it runs low.
    pub fn set_rate_limit(&self, limit: u64) {
        self.inner.budget.set_limit(limit);
    }

    /// What chaos and injected faults did so far.
    pub fn chaos_stats(&self) -> ChaosStats {
        self.inner.counters.snapshot()
    }
}

impl Inner {
    fn urls(&self) -> Urls<'_> {
        Urls {
            api: &self.api_url,
            clone_base: &self.clone_base,
        }
    }

    fn git(&self, repo: &str) -> anyhow::Result<Git> {
        let name = RepoName::parse(repo)?;
        if !self.state.lock().expect("state").repos.contains_key(repo) {
            bail!("no repository {repo}");
        }
        Ok(Git::new(
            self.repos_dir
                .join(name.owner())
                .join(format!("{}.git", name.name())),
        ))
    }

    /// Runs `f` on a PR with a fresh id at hand.
    fn with_pr<T>(
        &self,
        repo: &str,
        number: u64,
        f: impl FnOnce(u64, &mut PrState) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut st = self.state.lock().expect("state");
        let id = st.fresh_id();
        let pr = st
            .repos
            .get_mut(repo)
            .with_context(|| format!("no repository {repo}"))?
            .prs
            .get_mut(&number)
            .with_context(|| format!("no PR #{number} in {repo}"))?;
        f(id, pr)
    }

    /// Queues a delivery if a webhook is set. A payload about a repository
    /// an App is installed on carries that installation (`{id, node_id}`),
    /// as GitHub's App webhooks do. Never call it holding the state lock.
    fn enqueue(&self, event: &str, mut body: Value) {
        if self.hook.lock().expect("hook lock").is_none() {
            return;
        }
        if body.get("installation").is_none()
            && let Some(repo) = body["repository"]["full_name"].as_str()
        {
            let st = self.state.lock().expect("state");
            if let Some(id) = self.installation_for(&st, repo) {
                drop(st);
                body["installation"] = shapes::event_installation(id);
            }
        }
        let action = body
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_string);
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        self.pending.fetch_add(1, Ordering::SeqCst);
        let job = hooks::Job {
            id: hooks::guid(),
            event: event.to_string(),
            action,
            body,
            redelivery: false,
            reply: None,
            at: std::time::Instant::now(),
        };
        if self.queue.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Sends `pull_request` `action` for a PR, with `extra` fields merged in.
    fn pr_event(
        &self,
        repo: &str,
        number: u64,
        action: &str,
        sender: &str,
        extra: Value,
    ) -> anyhow::Result<()> {
        let body = {
            let st = self.state.lock().expect("state");
            let r = st.repos.get(repo).context("no such repository")?;
            let pr = r.prs.get(&number).context("no such PR")?;
            let u = self.urls();
            let mut body = json!({
                "action": action,
                "number": number,
                "pull_request": shapes::pull_request(&u, r, pr, true, Mergeable::Unknown),
                "repository": shapes::repository(&u, r),
                "sender": shapes::user(&u, sender),
            });
            if let (Some(obj), Value::Object(extra)) = (body.as_object_mut(), extra) {
                obj.extend(extra);
            }
            body
        };
        self.enqueue("pull_request", body);
        Ok(())
    }

    fn review_event(
        &self,
        repo: &str,
        number: u64,
        review_id: u64,
        action: &str,
        sender: &str,
    ) -> anyhow::Result<()> {
        let body = {
            let st = self.state.lock().expect("state");
            let r = st.repos.get(repo).context("no such repository")?;
            let pr = r.prs.get(&number).context("no such PR")?;
            let rv = pr
                .reviews
                .iter()
                .find(|rv| rv.id == review_id)
                .context("no such review")?;
            let u = self.urls();
            json!({
                "action": action,
                "review": shapes::review(&u, r, number, rv, true),
                "pull_request": shapes::pull_request(&u, r, pr, false, Mergeable::Unknown),
                "repository": shapes::repository(&u, r),
                "sender": shapes::user(&u, sender),
            })
        };
        self.enqueue("pull_request_review", body);
        Ok(())
    }

    /// After `branch` moved from `before` to `after` (all zeros: created,
    /// or deleted): sends `push`, updates PRs whose head or base it is,
    /// sends `synchronize` for heads, and, as GitHub does, marks merged
    /// (and sends `closed` for) every open PR into `branch` whose head is
    /// now reachable from it. `statuses_seen`: how many statuses the
    /// repository had before the ref update (for the move log).
    #[allow(clippy::too_many_arguments)]
    async fn branch_moved(
        &self,
        g: &Git,
        repo: &str,
        branch: &str,
        before: &str,
        after: &str,
        pusher: &str,
        statuses_seen: usize,
    ) -> anyhow::Result<()> {
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        let created = zero(before);
        let deleted = zero(after);
        let mut commits = Vec::new();
        let mut forced = false;
        if !deleted {
            let range = if created {
                after.to_string()
            } else {
                format!("{before}..{after}")
            };
            let list = g
                .ok(&["rev-list", "--reverse", "--max-count=20", &range, "--"])
                .await?;
            for sha in list.lines().filter(|l| !l.is_empty()) {
                commits.push(push_commit(g, sha).await?);
            }
            forced = !created && !g.is_ancestor(before, after).await?;
        }
        // Open PRs into `branch`, to see which of them it now holds.
        let into: Vec<(u64, String)> = {
            let st = self.state.lock().expect("state");
            let r = st.repos.get(repo).context("no such repository")?;
            r.prs
                .values()
                .filter(|p| p.open && p.base_ref == branch)
                .map(|p| (p.number, p.head_sha.clone()))
                .collect()
        };
        let mut landed = Vec::new();
        if !deleted {
            for (number, head) in into {
                if g.is_ancestor(&head, after).await? {
                    landed.push(number);
                }
            }
        }
        let synced: Vec<u64> = {
            let mut st = self.state.lock().expect("state");
            let r = st.repos.get_mut(repo).context("no such repository")?;
            self.record_move(r, branch, before, after, pusher, statuses_seen);
            let now = shapes::now_iso();
            let mut synced = Vec::new();
            for pr in r.prs.values_mut().filter(|p| p.open) {
                if pr.base_ref == branch && !deleted {
                    pr.base_sha = after.to_string();
                }
                if landed.contains(&pr.number) {
                    pr.open = false;
                    pr.merged = true;
                    pr.merged_by = Some(pusher.to_string());
                    pr.merge_commit_sha = Some(after.to_string());
                    pr.merged_at = Some(now.clone());
                    pr.closed_at = Some(now.clone());
                    pr.updated_at = now.clone();
                    continue;
                }
                if pr.head_ref == branch && !deleted {
                    pr.head_sha = after.to_string();
                    pr.commits += 1;
                    pr.updated_at = now.clone();
                    synced.push(pr.number);
                }
            }
            let push = shapes::push_payload(
                &self.urls(),
                r,
                branch,
                before,
                after,
                &commits,
                pusher,
                forced,
            );
            drop(st);
            self.enqueue("push", push);
            synced
        };
        for number in synced {
            g.ok(&["update-ref", &format!("refs/pull/{number}/head"), after])
                .await?;
            self.pr_event(
                repo,
                number,
                "synchronize",
                pusher,
                json!({"before": before, "after": after}),
            )?;
        }
        for number in landed {
            self.pr_event(repo, number, "closed", pusher, json!({}))?;
        }
        Ok(())
    }

    /// How many statuses `repo` has: a mover reads it before it updates a
    /// ref, so its move record counts only the statuses stored before.
    fn statuses_seen(&self, repo: &str) -> usize {
        let st = self.state.lock().expect("state");
        st.repos.get(repo).map_or(0, |r| r.statuses.len())
    }

    /// Records a branch move with the checks `after` had passed among the
    /// first `statuses_seen` statuses (those stored before the ref update).
    fn record_move(
        &self,
        r: &RepoState,
        branch: &str,
        before: &str,
        after: &str,
        pusher: &str,
        statuses_seen: usize,
    ) {
        let sha = |s: &str| (!s.bytes().all(|b| b == b'0')).then(|| view_sha(s));
        let mut latest: Vec<(&str, &str)> = Vec::new();
        let before_the_move = r.statuses.iter().take(statuses_seen);
        for s in before_the_move.filter(|s| s.sha.eq_ignore_ascii_case(after)) {
            latest.retain(|(context, _)| *context != s.context);
            latest.push((&s.context, &s.state));
        }
        let mut successful_checks: Vec<String> = latest
            .into_iter()
            .filter(|(_, state)| *state == "success")
            .map(|(context, _)| context.to_string())
            .collect();
        successful_checks.sort();
        self.branch_moves
            .lock()
            .expect("branch moves")
            .push(BranchMove {
                repo: r.full_name.clone(),
                branch: branch.to_string(),
                before: sha(before),
                after: sha(after),
                pusher: pusher.to_string(),
                successful_checks,
            });
    }

    /// Whether a PR merges cleanly into its base now.
    pub(crate) async fn mergeable(&self, repo: &str, number: u64) -> anyhow::Result<Mergeable> {
        let (open, head, base_ref, unknown) = {
            let mut faults = self.faults.lock().expect("faults");
            let mut unknown = false;
            for f in faults.iter_mut() {
                if let Fault::MergeableUnknown {
                    repo: r,
                    number: n,
                    times,
                } = f
                    && r == repo
                    && *n == number
                    && *times > 0
                {
                    *times -= 1;
                    unknown = true;
                    break;
                }
            }
            let st = self.state.lock().expect("state");
            let pr = st
                .repos
                .get(repo)
                .and_then(|r| r.prs.get(&number))
                .context("no such PR")?;
            (pr.open, pr.head_sha.clone(), pr.base_ref.clone(), unknown)
        };
        if !open || unknown {
            return Ok(Mergeable::Unknown);
        }
        let g = self.git(repo)?;
        let Some(base) = g.branch(&base_ref).await? else {
            return Ok(Mergeable::Conflict);
        };
        Ok(match g.merge_tree(&base, &head, None).await? {
            Some(_) => Mergeable::Clean,
            None => Mergeable::Conflict,
        })
    }

    /// `PUT /repos/{repo}/pulls/{n}/merge`, by `actor` ([`MERGER`] in
    /// personal-token mode, `<slug>[bot]` for an App).
    // One argument per field of the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn merge(
        &self,
        actor: &str,
        repo: &str,
        number: u64,
        sha: Option<&str>,
        method: &str,
        title: Option<&str>,
        message: Option<&str>,
    ) -> Result<String, HttpError> {
        let method = match method {
            "merge" => MergeMethod::Merge,
            "squash" => MergeMethod::Squash,
            "rebase" => MergeMethod::Rebase,
            other => {
                return Err(http_err(
                    422,
                    &format!(
                        "Invalid request.\n\n{other:?} is not a member of [\"merge\", \"squash\", \"rebase\"]."
                    ),
                ));
            }
        };
        let g = self.git(repo).map_err(|_| http_err(404, "Not Found"))?;
        let _ops = self.ops.lock().await;
        let pr = {
            let st = self.state.lock().expect("state");
            st.repos
                .get(repo)
                .and_then(|r| r.prs.get(&number))
                .cloned()
                .ok_or_else(|| http_err(404, "Not Found"))?
        };
        if !pr.open {
            return Err(http_err(405, "Pull Request is not mergeable"));
        }
        if let Some(sha) = sha
            && !sha.eq_ignore_ascii_case(&pr.head_sha)
        {
            return Err(http_err(
                409,
                "Head branch was modified. Review and try the merge again.",
            ));
        }
        // Required status checks are read on the PR's head commit.
        if let Some(refusal) = self.protection_refusal(repo, &pr.base_ref, &pr.head_sha) {
            return Err(http_err(405, &refusal));
        }
        let base_before = g
            .branch(&pr.base_ref)
            .await?
            .ok_or_else(|| http_err(405, "Pull Request is not mergeable"))?;
        let not_mergeable = || http_err(405, "Pull Request is not mergeable");
        let owner = repo.split('/').next().unwrap_or_default();
        let merger = Ident::user(actor);
        let new = match method {
            MergeMethod::Merge | MergeMethod::Squash => {
                let tree = g
                    .merge_tree(&base_before, &pr.head_sha, None)
                    .await?
                    .ok_or_else(not_mergeable)?;
                if method == MergeMethod::Merge {
                    let msg = format!(
                        "{}\n\n{}\n",
                        title.map(str::to_string).unwrap_or_else(|| format!(
                            "Merge pull request #{number} from {owner}/{}",
                            pr.head_ref
                        )),
                        message.unwrap_or(&pr.title)
                    );
                    g.commit_tree(&tree, vec![&base_before, &pr.head_sha], &msg, &merger)
                        .await?
                } else {
                    let msg = format!(
                        "{}\n\n{}\n",
                        title
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("{} (#{number})", pr.title)),
                        message.unwrap_or("")
                    );
                    g.commit_tree(&tree, vec![&base_before], &msg, &Ident::user(&pr.author))
                        .await?
                }
            }
            MergeMethod::Rebase => {
                let range = format!("{base_before}..{}", pr.head_sha);
                let list = g
                    .ok(&["rev-list", "--reverse", "--no-merges", &range, "--"])
                    .await?;
                let mut cur = base_before.clone();
                for c in list.lines().filter(|l| !l.is_empty()) {
                    let parent = g.ok(&["rev-parse", &format!("{c}^")]).await?;
                    let tree = g
                        .merge_tree(&cur, c, Some(&parent))
                        .await?
                        .ok_or_else(not_mergeable)?;
                    let msg = g.ok(&["log", "-1", "--format=%B", c, "--"]).await?;
                    let author = g.author_of(c).await?;
                    cur = g
                        .commit_tree(&tree, vec![&cur], &format!("{msg}\n"), &author)
                        .await?;
                }
                cur
            }
        };
        let seen = self.statuses_seen(repo);
        g.update_ref(
            &format!("refs/heads/{}", pr.base_ref),
            &new,
            Some(&base_before),
        )
        .await?;
        {
            let mut st = self.state.lock().expect("state");
            if let Some(p) = st.repos.get_mut(repo).and_then(|r| r.prs.get_mut(&number)) {
                let now = shapes::now_iso();
                p.open = false;
                p.merged = true;
                p.merged_by = Some(actor.to_string());
                p.merge_commit_sha = Some(new.clone());
                p.merged_at = Some(now.clone());
                p.closed_at = Some(now.clone());
                p.updated_at = now;
            }
        }
        self.merges.lock().expect("merges").push(MergeRecord {
            repo: repo.to_string(),
            number,
            method,
            head_sha: to_sha(&pr.head_sha)?,
            base_ref: pr.base_ref.clone(),
            base_sha_before: to_sha(&base_before)?,
            merge_sha: to_sha(&new)?,
        });
        self.branch_moved(&g, repo, &pr.base_ref, &base_before, &new, actor, seen)
            .await?;
        self.pr_event(repo, number, "closed", actor, json!({}))?;
        Ok(new)
    }
}

/// GitHub lists at most this many commits of a PR.
const PR_COMMITS_LISTED: usize = 250;

impl Inner {
    /// `GET /repos/{repo}/pulls/{n}/commits`: the commits the head adds to
    /// the base branch (as it is now), oldest first, at most 250.
    pub(crate) async fn pr_commits(
        &self,
        repo: &str,
        number: u64,
    ) -> Result<Vec<git::CommitInfo>, HttpError> {
        let g = self.git(repo).map_err(|_| http_err(404, "Not Found"))?;
        let (head, base_ref, base_sha) = {
            let st = self.state.lock().expect("state");
            let pr = st
                .repos
                .get(repo)
                .and_then(|r| r.prs.get(&number))
                .ok_or_else(|| http_err(404, "Not Found"))?;
            (
                pr.head_sha.clone(),
                pr.base_ref.clone(),
                pr.base_sha.clone(),
            )
        };
        let base = g.branch(&base_ref).await?.unwrap_or(base_sha);
        Ok(g.commits_in(&format!("{base}..{head}"), PR_COMMITS_LISTED)
            .await?)
    }

    /// `PATCH /repos/{repo}/pulls/{n}` `{state: "closed"}` (the only change
    /// the fake takes besides `title` and `body`); sends `closed`.
    pub(crate) fn update_pull(
        &self,
        repo: &str,
        number: u64,
        state: Option<&str>,
        title: Option<&str>,
        body: Option<&str>,
    ) -> Result<(), HttpError> {
        let closing = {
            let mut st = self.state.lock().expect("state");
            let pr = st
                .repos
                .get_mut(repo)
                .and_then(|r| r.prs.get_mut(&number))
                .ok_or_else(|| http_err(404, "Not Found"))?;
            let closing = match state {
                None => false,
                Some("closed") => pr.open,
                Some("open") if pr.open => false,
                Some("open") => {
                    return Err(http_err(
                        422,
                        "Validation Failed (fakehub: reopening through the API is not implemented)",
                    ));
                }
                Some(_) => return Err(http_err(422, "Validation Failed")),
            };
            let now = shapes::now_iso();
            if let Some(title) = title {
                pr.title = title.to_string();
            }
            if let Some(body) = body {
                pr.body = Some(body.to_string());
            }
            if closing {
                pr.open = false;
                pr.closed_at = Some(now.clone());
            }
            pr.updated_at = now;
            closing
        };
        if closing {
            self.pr_event(repo, number, "closed", MERGER, json!({}))?;
        }
        Ok(())
    }
}

async fn push_commit(g: &Git, sha: &str) -> anyhow::Result<PushCommit> {
    let info = g
        .ok(&[
            "log",
            "-1",
            "--format=%T%x00%an%x00%ae%x00%at%x00%B",
            sha,
            "--",
        ])
        .await?;
    let mut parts = info.splitn(5, '\0');
    let tree_id = parts.next().unwrap_or_default().to_string();
    let author_name = parts.next().unwrap_or_default().to_string();
    let author_email = parts.next().unwrap_or_default().to_string();
    let at: u64 = parts.next().unwrap_or_default().parse().unwrap_or_default();
    let message = parts.next().unwrap_or_default().trim_end().to_string();
    let added = g
        .ok(&[
            "diff-tree",
            "--no-commit-id",
            "--name-only",
            "-r",
            "--root",
            "--diff-filter=A",
            sha,
        ])
        .await?
        .lines()
        .map(str::to_string)
        .collect();
    Ok(PushCommit {
        id: sha.to_string(),
        tree_id,
        message,
        timestamp: shapes::iso8601(at),
        author_name,
        author_email,
        added,
    })
}
