//! The Git database and branch endpoints the merge train needs, as GitHub
//! answers them: refs (create, read, list by prefix, update with or without
//! force, delete), `POST /merges`, `git/commits`, and branch protection's
//! required status checks, enforced on every update of a protected branch.
//!
//! What GitHub says and does, and where it is written down:
//! - "Update is not a fast forward" (422) for a `PATCH git/refs` that is not
//!   a fast-forward without `force: true`; "Reference already exists" (422)
//!   for creating one that exists; "Reference does not exist" (422) for
//!   updating or deleting one that does not; "Object does not exist" (422)
//!   for a sha it does not have.
//! - Protected branches (GitHub's change notice of 2015-09-03, "Ensure your
//!   app is ready for Protected Branches"): a protected branch cannot be
//!   deleted or moved to a non-descendant, even with `force: true`; with
//!   required status checks, it cannot be updated, nor a PR merged into it,
//!   until the commit has a `success` status for every required context;
//!   "these restrictions are all represented by 422 errors" (the merge
//!   endpoint answers 405). The message names the check
//!   (`Required status check "ci" is expected.`) or counts them
//!   (`2 of 2 required status checks are expected.`).
//! - `POST /merges` (`repos/merge` in the API description): 201 with the
//!   merge commit, 204 when there is nothing to merge, 404 when the base or
//!   head does not exist, 409 on a merge conflict.
//! - `GET /compare/{base}...{head}` (`repos/compare-commits`): `status` is
//!   `identical`, `ahead` (head has commits base lacks and not the other
//!   way), `behind` or `diverged`, with `ahead_by` and `behind_by`; 404 for
//!   a commit it does not have or no common ancestor.

use super::git::{CommitInfo, Git, Ident};
use super::{HttpError, Inner, MERGER, http_err};
use anyhow::Context;

const ZERO: &str = "0000000000000000000000000000000000000000";

/// What a ref endpoint answered: the commit it now points at.
pub(crate) struct RefAnswer {
    pub branch: String,
    pub sha: String,
}

/// What `POST /merges` did.
pub(crate) enum MergeAnswer {
    Created(Box<CommitInfo>),
    NothingToMerge,
}

/// GitHub's message for required checks that a commit lacks, if any.
pub(crate) fn missing_checks_message(missing: &[String], required: usize) -> Option<String> {
    match missing {
        [] => None,
        [one] if required == 1 => Some(format!("Required status check \"{one}\" is expected.")),
        _ => Some(format!(
            "{} of {required} required status checks are expected.",
            missing.len()
        )),
    }
}

fn is_full_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A branch's commit, or a full sha of a commit the repository has.
async fn resolve_commit(g: &Git, name: &str) -> anyhow::Result<Option<String>> {
    if let Some(sha) = g.branch(name).await? {
        return Ok(Some(sha));
    }
    let commit = is_full_sha(name) && g.object_type(name).await?.as_deref() == Some("commit");
    Ok(commit.then(|| name.to_ascii_lowercase()))
}

/// What `GET compare/{base}...{head}` found.
pub(crate) struct Comparison {
    pub base: CommitInfo,
    pub head: String,
    pub merge_base: CommitInfo,
    /// Commits on head that base lacks, and the other way round.
    pub ahead_by: u64,
    pub behind_by: u64,
}

impl Comparison {
    /// GitHub's `status`: where head stands to base.
    pub fn status(&self) -> &'static str {
        match (self.ahead_by, self.behind_by) {
            (0, 0) => "identical",
            (_, 0) => "ahead",
            (0, _) => "behind",
            _ => "diverged",
        }
    }
}

impl Inner {
    /// Why `branch` may not move to `sha` under its protection, if it may
    /// not: the required contexts with neither a latest status `success`
    /// nor a passed check run of that name on `sha`, as GitHub words it.
    pub(crate) fn protection_refusal(&self, repo: &str, branch: &str, sha: &str) -> Option<String> {
        let st = self.state.lock().expect("state");
        let r = st.repos.get(repo)?;
        let protection = r.protections.get(branch)?;
        let missing: Vec<String> = protection
            .contexts
            .iter()
            .filter(|context| {
                let status = r
                    .statuses
                    .iter()
                    .rev()
                    .find(|s| s.sha.eq_ignore_ascii_case(sha) && &&s.context == context);
                // A check run of that name counts too, as on GitHub.
                let run = r
                    .check_runs
                    .iter()
                    .rev()
                    .find(|c| c.head_sha.eq_ignore_ascii_case(sha) && &&c.name == context);
                let status_ok = status.is_some_and(|s| s.state == "success");
                let run_ok = run.is_some_and(|c| {
                    c.status == "completed"
                        && matches!(
                            c.conclusion.as_deref(),
                            Some("success" | "neutral" | "skipped")
                        )
                });
                !(status_ok || run_ok)
            })
            .cloned()
            .collect();
        missing_checks_message(&missing, protection.contexts.len())
    }

    fn is_protected(&self, repo: &str, branch: &str) -> bool {
        self.state
            .lock()
            .expect("state")
            .repos
            .get(repo)
            .is_some_and(|r| r.protections.contains_key(branch))
    }

    fn repo_git(&self, repo: &str) -> Result<Git, HttpError> {
        self.git(repo).map_err(|_| http_err(404, "Not Found"))
    }

    /// `POST /repos/{repo}/git/refs` `{ref, sha}`.
    pub(crate) async fn create_ref(
        &self,
        actor: &str,
        repo: &str,
        refname: &str,
        sha: &str,
    ) -> Result<RefAnswer, HttpError> {
        let g = self.repo_git(repo)?;
        // GitHub: "If it doesn't start with 'refs' and have at least two
        // slashes, it will be rejected." The fake keeps branches only.
        let branch = refname
            .strip_prefix("refs/heads/")
            .filter(|b| super::check_branch_name(b).is_ok())
            .ok_or_else(|| http_err(422, "Reference name is invalid"))?
            .to_string();
        let _ops = self.ops.lock().await;
        if g.object_type(sha).await?.as_deref() != Some("commit") {
            return Err(http_err(422, "Object does not exist"));
        }
        let sha = sha.to_ascii_lowercase();
        if g.branch(&branch).await?.is_some() {
            return Err(http_err(422, "Reference already exists"));
        }
        let seen = self.statuses_seen(repo);
        g.update_ref(&format!("refs/heads/{branch}"), &sha, None)
            .await?;
        self.branch_moved(&g, repo, &branch, ZERO, &sha, actor, seen)
            .await?;
        Ok(RefAnswer { branch, sha })
    }

    /// `PATCH /repos/{repo}/git/refs/heads/{branch}` `{sha, force}`.
    pub(crate) async fn update_ref(
        &self,
        actor: &str,
        repo: &str,
        branch: &str,
        sha: &str,
        force: bool,
    ) -> Result<RefAnswer, HttpError> {
        let g = self.repo_git(repo)?;
        let _ops = self.ops.lock().await;
        let current = g
            .branch(branch)
            .await?
            .ok_or_else(|| http_err(422, "Reference does not exist"))?;
        if g.object_type(sha).await?.as_deref() != Some("commit") {
            return Err(http_err(422, "Object does not exist"));
        }
        let sha = sha.to_ascii_lowercase();
        if current == sha {
            return Ok(RefAnswer {
                branch: branch.to_string(),
                sha,
            });
        }
        let fast_forward = g.is_ancestor(&current, &sha).await?;
        if !fast_forward && !force {
            return Err(http_err(422, "Update is not a fast forward"));
        }
        if self.is_protected(repo, branch) {
            if !fast_forward {
                return Err(http_err(422, "Cannot force-push to this branch"));
            }
            if let Some(message) = self.protection_refusal(repo, branch, &sha) {
                return Err(http_err(422, &message));
            }
        }
        let seen = self.statuses_seen(repo);
        g.update_ref(&format!("refs/heads/{branch}"), &sha, Some(&current))
            .await?;
        self.branch_moved(&g, repo, branch, &current, &sha, actor, seen)
            .await?;
        Ok(RefAnswer {
            branch: branch.to_string(),
            sha,
        })
    }

    /// `DELETE /repos/{repo}/git/refs/heads/{branch}`.
    pub(crate) async fn delete_ref(
        &self,
        actor: &str,
        repo: &str,
        branch: &str,
    ) -> Result<(), HttpError> {
        let g = self.repo_git(repo)?;
        let _ops = self.ops.lock().await;
        let current = g
            .branch(branch)
            .await?
            .ok_or_else(|| http_err(422, "Reference does not exist"))?;
        if self.is_protected(repo, branch) {
            return Err(http_err(422, "Cannot delete a protected branch"));
        }
        let seen = self.statuses_seen(repo);
        g.delete_ref(&format!("refs/heads/{branch}"), &current)
            .await?;
        self.branch_moved(&g, repo, branch, &current, ZERO, actor, seen)
            .await?;
        Ok(())
    }

    /// Branches whose full ref name (`refs/heads/...`) starts with
    /// `refs/{prefix}`, as `GET git/matching-refs/{prefix}` lists them.
    pub(crate) async fn matching_refs(
        &self,
        repo: &str,
        prefix: &str,
    ) -> Result<Vec<RefAnswer>, HttpError> {
        let g = self.repo_git(repo)?;
        let full = format!("refs/{prefix}");
        Ok(g.branches()
            .await?
            .into_iter()
            .filter(|(name, _)| format!("refs/heads/{name}").starts_with(&full))
            .map(|(branch, sha)| RefAnswer { branch, sha })
            .collect())
    }

    /// `POST /repos/{repo}/merges` `{base, head, commit_message}`.
    pub(crate) async fn merge_branches(
        &self,
        actor: &str,
        repo: &str,
        base: &str,
        head: &str,
        message: Option<&str>,
    ) -> Result<MergeAnswer, HttpError> {
        let g = self.repo_git(repo)?;
        let _ops = self.ops.lock().await;
        let base_sha = g
            .branch(base)
            .await?
            .ok_or_else(|| http_err(404, "Base does not exist"))?;
        let head_sha = resolve_commit(&g, head)
            .await?
            .ok_or_else(|| http_err(404, "Head does not exist"))?;
        if g.is_ancestor(&head_sha, &base_sha).await? {
            return Ok(MergeAnswer::NothingToMerge);
        }
        let tree = g
            .merge_tree(&base_sha, &head_sha, None)
            .await?
            .ok_or_else(|| http_err(409, "Merge conflict"))?;
        let message = match message {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => format!("Merge {head} into {base}"),
        };
        let new = g
            .commit_tree(
                &tree,
                vec![&base_sha, &head_sha],
                &format!("{}\n", message.trim_end_matches('\n')),
                &Ident::user(actor),
            )
            .await?;
        if self.is_protected(repo, base)
            && let Some(refusal) = self.protection_refusal(repo, base, &new)
        {
            return Err(http_err(409, &refusal));
        }
        let seen = self.statuses_seen(repo);
        g.update_ref(&format!("refs/heads/{base}"), &new, Some(&base_sha))
            .await?;
        self.branch_moved(&g, repo, base, &base_sha, &new, actor, seen)
            .await?;
        let info = g
            .commit_info(&new)
            .await?
            .context("the merge commit just written")?;
        Ok(MergeAnswer::Created(Box::new(info)))
    }

    /// `GET /repos/{repo}/compare/{base}...{head}`, each a branch or a
    /// full commit sha.
    pub(crate) async fn compare(
        &self,
        repo: &str,
        base: &str,
        head: &str,
    ) -> Result<Comparison, HttpError> {
        let g = self.repo_git(repo)?;
        let not_found = || http_err(404, "Not Found");
        let base = resolve_commit(&g, base).await?.ok_or_else(not_found)?;
        let head = resolve_commit(&g, head).await?.ok_or_else(not_found)?;
        let out = g
            .run(&["merge-base", &base, &head], None, &[], None)
            .await?;
        if out.code != Some(0) {
            return Err(http_err(
                404,
                &format!("No common ancestor between {base} and {head}."),
            ));
        }
        let merge_base = out.stdout.trim().to_string();
        let count = |range: String| {
            let g = &g;
            async move {
                let n = g.ok(&["rev-list", "--count", &range, "--"]).await?;
                anyhow::Ok(n.trim().parse::<u64>().unwrap_or_default())
            }
        };
        let ahead_by = count(format!("{base}..{head}")).await?;
        let behind_by = count(format!("{head}..{base}")).await?;
        let info = |sha: String| {
            let g = &g;
            async move { g.commit_info(&sha).await?.context("a commit just resolved") }
        };
        Ok(Comparison {
            head: head.clone(),
            base: info(base).await?,
            merge_base: info(merge_base).await?,
            ahead_by,
            behind_by,
        })
    }

    /// `POST /repos/{repo}/git/commits` `{message, tree, parents, author?}`.
    pub(crate) async fn create_commit(
        &self,
        repo: &str,
        message: &str,
        tree: &str,
        parents: &[String],
        author: Option<Ident>,
    ) -> Result<CommitInfo, HttpError> {
        let g = self.repo_git(repo)?;
        if g.object_type(tree).await?.as_deref() != Some("tree") {
            return Err(http_err(422, "Tree SHA does not exist"));
        }
        for p in parents {
            if g.object_type(p).await?.as_deref() != Some("commit") {
                return Err(http_err(
                    422,
                    "Parent SHA does not exist or is not a commit object",
                ));
            }
        }
        let author = author.unwrap_or_else(|| Ident::user(MERGER));
        let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
        let sha = g.commit_tree(tree, parents, message, &author).await?;
        Ok(g.commit_info(&sha)
            .await?
            .context("the commit just written")?)
    }

    /// `GET /repos/{repo}/git/commits/{sha}`.
    pub(crate) async fn get_commit(&self, repo: &str, sha: &str) -> Result<CommitInfo, HttpError> {
        let g = self.repo_git(repo)?;
        g.commit_info(sha)
            .await?
            .ok_or_else(|| http_err(404, "Not Found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_checks_are_named_or_counted() {
        assert_eq!(missing_checks_message(&[], 1), None);
        assert_eq!(
            missing_checks_message(&["sluice".into()], 1).as_deref(),
            Some("Required status check \"sluice\" is expected.")
        );
        assert_eq!(
            missing_checks_message(&["a".into()], 2).as_deref(),
            Some("1 of 2 required status checks are expected.")
        );
        assert_eq!(
            missing_checks_message(&["a".into(), "b".into()], 2).as_deref(),
            Some("2 of 2 required status checks are expected.")
        );
    }
}
