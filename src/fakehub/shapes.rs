//! JSON bodies with the field names and nesting of GitHub's REST API and
//! webhook payloads (mirroring the examples in `testdata/github-api/` and
//! `testdata/webhooks/`). Pure functions of the fake's state.

use super::MERGER;
use super::git::CommitInfo;
use super::refs::Comparison;
use super::state::{
    AppRec, CheckRunRec, CommentRec, InstallationRec, PrState, ReactionRec, RepoState, ReviewRec,
    Selection, StatusRec,
};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the fake lives, to build the `url` fields.
pub(crate) struct Urls<'a> {
    pub api: &'a str,
    pub clone_base: &'a str,
}

impl Urls<'_> {
    fn repo_api(&self, full: &str) -> String {
        format!("{}/repos/{full}", self.api)
    }
    fn repo_html(&self, full: &str) -> String {
        format!("{}/{full}", self.html())
    }
    fn html(&self) -> String {
        format!("{}/_html", self.api)
    }
}

/// A stable numeric id for a login, so the same user always has the same id.
pub(crate) fn user_id(login: &str) -> u64 {
    // FNV-1a, folded into the positive range GitHub ids use.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in login.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % 90_000_000) + 1_000_000
}

pub(crate) fn node_id(kind: &str, id: u64) -> String {
    // GitHub's legacy node ids are base64 of "<len>:<Kind><id>"; any opaque
    // string will do for clients, this one is at least unique.
    format!("{kind}_{id:x}")
}

/// A user; a login ending in `[bot]` is an App's bot user (type `Bot`,
/// its page the App's), as App-authored comments show on GitHub.
pub(crate) fn user(u: &Urls, login: &str) -> Value {
    let id = user_id(login);
    let api = format!("{}/users/{login}", u.api);
    if let Some(slug) = login.strip_suffix("[bot]") {
        let api = format!(
            "{}/users/{}",
            u.api,
            login.replace('[', "%5B").replace(']', "%5D")
        );
        return json!({
            "login": login,
            "id": id,
            "node_id": node_id("BOT", id),
            "avatar_url": format!("{}/avatars/apps/{slug}", u.html()),
            "gravatar_id": "",
            "url": api,
            "html_url": format!("{}/apps/{slug}", u.html()),
            "followers_url": format!("{api}/followers"),
            "following_url": format!("{api}/following{{/other_user}}"),
            "gists_url": format!("{api}/gists{{/gist_id}}"),
            "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
            "subscriptions_url": format!("{api}/subscriptions"),
            "organizations_url": format!("{api}/orgs"),
            "repos_url": format!("{api}/repos"),
            "events_url": format!("{api}/events{{/privacy}}"),
            "received_events_url": format!("{api}/received_events"),
            "type": "Bot",
            "site_admin": false
        });
    }
    json!({
        "login": login,
        "id": id,
        "node_id": node_id("U", id),
        "avatar_url": format!("{}/avatars/{login}", u.html()),
        "gravatar_id": "",
        "url": api,
        "html_url": format!("{}/{login}", u.html()),
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": "User",
        "site_admin": false
    })
}

/// A repository as in `pulls__get` `head.repo` and the webhook `repository`.
pub(crate) fn repository(u: &Urls, r: &RepoState) -> Value {
    let full = r.full_name.as_str();
    let api = u.repo_api(full);
    let owner = r.full_name.split('/').next().unwrap_or_default();
    let name = r.full_name.split('/').nth(1).unwrap_or_default();
    let mut v = json!({
        "id": r.id,
        "node_id": node_id("R", r.id),
        "name": name,
        "full_name": full,
        "private": false,
        "owner": user(u, owner),
        "html_url": u.repo_html(full),
        "description": null,
        "fork": false,
        "url": api,
        "forks_url": format!("{api}/forks"),
        "keys_url": format!("{api}/keys{{/key_id}}"),
        "collaborators_url": format!("{api}/collaborators{{/collaborator}}"),
        "teams_url": format!("{api}/teams"),
        "hooks_url": format!("{api}/hooks"),
        "issue_events_url": format!("{api}/issues/events{{/number}}"),
        "events_url": format!("{api}/events"),
        "assignees_url": format!("{api}/assignees{{/user}}"),
        "branches_url": format!("{api}/branches{{/branch}}"),
        "tags_url": format!("{api}/tags"),
    });
    let mid = json!({
        "blobs_url": format!("{api}/git/blobs{{/sha}}"),
        "git_tags_url": format!("{api}/git/tags{{/sha}}"),
        "git_refs_url": format!("{api}/git/refs{{/sha}}"),
        "trees_url": format!("{api}/git/trees{{/sha}}"),
        "statuses_url": format!("{api}/statuses/{{sha}}"),
        "languages_url": format!("{api}/languages"),
        "stargazers_url": format!("{api}/stargazers"),
        "contributors_url": format!("{api}/contributors"),
        "subscribers_url": format!("{api}/subscribers"),
        "subscription_url": format!("{api}/subscription"),
        "commits_url": format!("{api}/commits{{/sha}}"),
        "git_commits_url": format!("{api}/git/commits{{/sha}}"),
        "comments_url": format!("{api}/comments{{/number}}"),
        "issue_comment_url": format!("{api}/issues/comments{{/number}}"),
        "contents_url": format!("{api}/contents/{{+path}}"),
        "compare_url": format!("{api}/compare/{{base}}...{{head}}"),
        "merges_url": format!("{api}/merges"),
        "archive_url": format!("{api}/{{archive_format}}{{/ref}}"),
        "downloads_url": format!("{api}/downloads"),
        "issues_url": format!("{api}/issues{{/number}}"),
        "pulls_url": format!("{api}/pulls{{/number}}"),
        "milestones_url": format!("{api}/milestones{{/number}}"),
        "notifications_url": format!("{api}/notifications{{?since,all,participating}}"),
        "labels_url": format!("{api}/labels{{/name}}"),
        "releases_url": format!("{api}/releases{{/id}}"),
        "deployments_url": format!("{api}/deployments"),
    });
    let more = json!({
        "created_at": r.created_at,
        "updated_at": r.created_at,
        "pushed_at": r.created_at,
        "git_url": format!("{}/{full}.git", u.clone_base),
        "ssh_url": format!("{}/{full}.git", u.clone_base),
        "clone_url": format!("{}/{full}.git", u.clone_base),
        "svn_url": u.repo_html(full),
        "homepage": null,
        "size": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "language": null,
        "has_issues": true,
        "has_projects": true,
        "has_downloads": true,
        "has_wiki": true,
        "has_pages": false,
        "has_discussions": false,
        "forks_count": 0,
        "mirror_url": null,
        "archived": false,
        "disabled": false,
        "open_issues_count": r.prs.values().filter(|p| p.is_open()).count(),
        "license": null,
        "allow_forking": true,
        "is_template": false,
        "web_commit_signoff_required": false,
        "topics": [],
        "visibility": "public",
        "forks": 0,
        "open_issues": r.prs.values().filter(|p| p.is_open()).count(),
        "watchers": 0,
        "default_branch": r.default_branch,
        "allow_squash_merge": true,
        "allow_merge_commit": true,
        "allow_rebase_merge": true
    });
    if let Some(obj) = v.as_object_mut() {
        for part in [mid, more] {
            if let Value::Object(part) = part {
                obj.extend(part);
            }
        }
    }
    v
}

pub(crate) fn label(u: &Urls, r: &RepoState, name: &str) -> Value {
    let id = user_id(&format!("{}:{name}", r.full_name));
    json!({
        "id": id,
        "node_id": node_id("LA", id),
        "url": format!("{}/labels/{name}", u.repo_api(&r.full_name)),
        "name": name,
        "color": "ededed",
        "default": false,
        "description": null
    })
}

/// Mergeability as GET /pulls/{n} reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mergeable {
    Clean,
    Conflict,
    /// GitHub has not computed it (yet), or the PR is closed.
    Unknown,
}

fn branch_end(u: &Urls, r: &RepoState, branch: &str, sha: &str) -> Value {
    let owner = r.full_name.split('/').next().unwrap_or_default();
    json!({
        "label": format!("{owner}:{branch}"),
        "ref": branch,
        "sha": sha,
        "user": user(u, owner),
        "repo": repository(u, r),
    })
}

/// A pull request. `full` adds the fields only GET /pulls/{n} and webhooks
/// carry (merged, mergeable, counts).
pub(crate) fn pull_request(
    u: &Urls,
    r: &RepoState,
    pr: &PrState,
    full: bool,
    mergeable: Mergeable,
) -> Value {
    let api = format!("{}/pulls/{}", u.repo_api(&r.full_name), pr.number);
    let html = format!("{}/pull/{}", u.repo_html(&r.full_name), pr.number);
    let issue = format!("{}/issues/{}", u.repo_api(&r.full_name), pr.number);
    let statuses = format!("{}/statuses/{}", u.repo_api(&r.full_name), pr.head_sha);
    let links = json!({
        "self": {"href": api},
        "html": {"href": html},
        "issue": {"href": issue},
        "comments": {"href": format!("{issue}/comments")},
        "review_comments": {"href": format!("{api}/comments")},
        "review_comment": {"href": format!("{}/pulls/comments{{/number}}", u.repo_api(&r.full_name))},
        "commits": {"href": format!("{api}/commits")},
        "statuses": {"href": statuses}
    });
    let mut v = json!({
        "url": api,
        "id": pr.id,
        "node_id": node_id("PR", pr.id),
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "issue_url": issue,
        "commits_url": format!("{api}/commits"),
        "review_comments_url": format!("{api}/comments"),
        "review_comment_url": format!("{}/pulls/comments{{/number}}", u.repo_api(&r.full_name)),
        "comments_url": format!("{issue}/comments"),
        "statuses_url": statuses,
        "number": pr.number,
        "state": if pr.is_open() { "open" } else { "closed" },
        "locked": false,
        "title": pr.title,
        "user": user(u, &pr.author),
        "body": pr.body,
        "labels": pr.labels.iter().map(|l| label(u, r, l)).collect::<Vec<_>>(),
        "milestone": null,
        "active_lock_reason": null,
        "created_at": pr.created_at,
        "updated_at": pr.updated_at,
        "closed_at": pr.closed_at,
        "merged_at": pr.merged_at,
        "merge_commit_sha": pr.merge_commit_sha,
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "head": branch_end(u, r, &pr.head_ref, &pr.head_sha),
        "base": branch_end(u, r, &pr.base_ref, &pr.base_sha),
        "_links": links,
        "author_association": if r.permission(&pr.author) == "none" { "CONTRIBUTOR" } else { "COLLABORATOR" },
        "auto_merge": null,
        "draft": pr.draft,
    });
    if full {
        let (mergeable, state) = match mergeable {
            Mergeable::Clean => (json!(true), "clean"),
            Mergeable::Conflict => (json!(false), "dirty"),
            Mergeable::Unknown => (Value::Null, "unknown"),
        };
        let obj = v.as_object_mut().expect("a pull request is an object");
        obj.insert("merged".into(), json!(pr.merged));
        obj.insert("mergeable".into(), mergeable.clone());
        obj.insert("rebaseable".into(), mergeable);
        obj.insert("mergeable_state".into(), json!(state));
        obj.insert(
            "merged_by".into(),
            match &pr.merged_by {
                Some(login) => user(u, login),
                None => Value::Null,
            },
        );
        obj.insert("comments".into(), json!(0));
        obj.insert("review_comments".into(), json!(0));
        obj.insert("maintainer_can_modify".into(), json!(false));
        obj.insert("commits".into(), json!(pr.commits.max(1)));
        obj.insert("additions".into(), json!(0));
        obj.insert("deletions".into(), json!(0));
        obj.insert("changed_files".into(), json!(0));
    }
    v
}

/// A review; `webhook` uses the lowercase states webhook payloads carry.
pub(crate) fn review(u: &Urls, r: &RepoState, number: u64, rv: &ReviewRec, webhook: bool) -> Value {
    let pr_api = format!("{}/pulls/{number}", u.repo_api(&r.full_name));
    let html = format!(
        "{}/pull/{number}#pullrequestreview-{}",
        u.repo_html(&r.full_name),
        rv.id
    );
    let state = if webhook {
        rv.state.to_ascii_lowercase()
    } else {
        rv.state.clone()
    };
    json!({
        "id": rv.id,
        "node_id": node_id("PRR", rv.id),
        "user": user(u, &rv.user),
        "body": rv.body,
        "state": state,
        "html_url": html,
        "pull_request_url": pr_api,
        "_links": {
            "html": {"href": html},
            "pull_request": {"href": pr_api}
        },
        "submitted_at": rv.submitted_at,
        "commit_id": rv.commit_id,
        "author_association": if r.permission(&rv.user) == "none" { "CONTRIBUTOR" } else { "COLLABORATOR" },
    })
}

pub(crate) fn status(u: &Urls, r: &RepoState, s: &StatusRec, with_creator: bool) -> Value {
    let mut v = json!({
        "url": format!("{}/statuses/{}", u.repo_api(&r.full_name), s.sha),
        "avatar_url": format!("{}/avatars/{}", u.html(), s.creator),
        "id": s.id,
        "node_id": node_id("SC", s.id),
        "state": s.state,
        "description": s.description,
        "target_url": s.target_url,
        "context": s.context,
        "created_at": s.created_at,
        "updated_at": s.created_at,
    });
    if with_creator {
        v["creator"] = user(u, &s.creator);
    }
    v
}

/// The combined status of a commit: the latest status per context.
pub(crate) fn combined_status(u: &Urls, r: &RepoState, sha: &str) -> Value {
    let mut latest: Vec<&StatusRec> = Vec::new();
    for s in r.statuses.iter().filter(|s| s.sha == sha).rev() {
        if !latest.iter().any(|l| l.context == s.context) {
            latest.push(s);
        }
    }
    let states: Vec<&str> = latest.iter().map(|s| s.state.as_str()).collect();
    let state = if states.iter().any(|s| *s == "failure" || *s == "error") {
        "failure"
    } else if states.is_empty() || states.contains(&"pending") {
        "pending"
    } else {
        "success"
    };
    let api = u.repo_api(&r.full_name);
    json!({
        "state": state,
        "statuses": latest.iter().map(|s| status(u, r, s, false)).collect::<Vec<_>>(),
        "sha": sha,
        "total_count": latest.len(),
        "repository": repository(u, r),
        "commit_url": format!("{api}/commits/{sha}"),
        "url": format!("{api}/commits/{sha}/status"),
    })
}

/// A check suite's id: one per App (or reporter) and commit.
pub(crate) fn check_suite_id(app_id: Option<u64>, sha: &str) -> u64 {
    user_id(&format!("{}:{sha}", app_id.unwrap_or_default())) + 6_000_000_000
}

/// A check run, as in `checks__create`, `checks__get` and the `check_run`
/// webhook (`webhook`: with the fuller `check_suite` the payloads carry).
/// `pull_requests`: the open PRs of the repository whose head is the run's
/// commit, as GitHub lists them.
pub(crate) fn check_run(
    u: &Urls,
    r: &RepoState,
    c: &CheckRunRec,
    app: Option<&AppRec>,
    webhook: bool,
) -> Value {
    let api = u.repo_api(&r.full_name);
    let pr_ref = |branch: &str, sha: &str| {
        json!({
            "ref": branch,
            "sha": sha,
            "repo": {"id": r.id, "url": api, "name": r.full_name.split('/').nth(1).unwrap_or_default()},
        })
    };
    let pull_requests: Vec<Value> = r
        .prs
        .values()
        .filter(|p| p.is_open() && p.head_sha.eq_ignore_ascii_case(&c.head_sha))
        .map(|p| {
            json!({
                "url": format!("{api}/pulls/{}", p.number),
                "id": p.id,
                "number": p.number,
                "head": pr_ref(&p.head_ref, &p.head_sha),
                "base": pr_ref(&p.base_ref, &p.base_sha),
            })
        })
        .collect();
    let suite_id = check_suite_id(c.app_id, &c.head_sha);
    let app_json = app.map_or(Value::Null, |a| integration(u, a));
    let mut suite = json!({"id": suite_id});
    if webhook {
        let head_branch = r
            .prs
            .values()
            .find(|p| p.head_sha.eq_ignore_ascii_case(&c.head_sha))
            .map(|p| p.head_ref.clone());
        suite = json!({
            "id": suite_id,
            "node_id": node_id("CS", suite_id),
            "head_branch": head_branch,
            "head_sha": c.head_sha,
            "status": c.status,
            "conclusion": c.conclusion,
            "url": format!("{api}/check-suites/{suite_id}"),
            "before": null,
            "after": c.head_sha,
            "pull_requests": pull_requests,
            "app": app_json,
            "created_at": c.started_at,
            "updated_at": c.completed_at.as_ref().unwrap_or(&c.started_at),
        });
    }
    json!({
        "id": c.id,
        "head_sha": c.head_sha,
        "node_id": node_id("CR", c.id),
        "external_id": c.external_id.clone().unwrap_or_default(),
        "url": format!("{api}/check-runs/{}", c.id),
        "html_url": format!("{}/runs/{}", u.repo_html(&r.full_name), c.id),
        "details_url": c.details_url.clone().or_else(|| app.map(|a| format!("{}/apps/{}", u.html(), a.slug))),
        "status": c.status,
        "conclusion": c.conclusion,
        "started_at": c.started_at,
        "completed_at": c.completed_at,
        "output": {
            "title": c.output.title,
            "summary": c.output.summary,
            "text": c.output.text,
            "annotations_count": 0,
            "annotations_url": format!("{api}/check-runs/{}/annotations", c.id),
        },
        "name": c.name,
        "check_suite": suite,
        "app": app_json,
        "pull_requests": pull_requests,
    })
}

pub(crate) fn branch(u: &Urls, r: &RepoState, name: &str, sha: &str) -> Value {
    let api = u.repo_api(&r.full_name);
    let protection = r.protections.get(name);
    let contexts: Vec<&str> = protection
        .map(|p| p.contexts.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let checks: Vec<Value> = contexts
        .iter()
        .map(|c| json!({"context": c, "app_id": null}))
        .collect();
    json!({
        "name": name,
        "commit": {
            "sha": sha,
            "node_id": node_id("C", user_id(sha)),
            "url": format!("{api}/commits/{sha}"),
            "html_url": format!("{}/commit/{sha}", u.repo_html(&r.full_name)),
            "comments_url": format!("{api}/commits/{sha}/comments"),
            "parents": [],
        },
        "_links": {
            "self": format!("{api}/branches/{name}"),
            "html": format!("{}/tree/{name}", u.repo_html(&r.full_name)),
        },
        "protected": protection.is_some(),
        "protection": {
            "enabled": protection.is_some(),
            "required_status_checks": {
                "enforcement_level": if protection.is_some_and(|p| !p.contexts.is_empty()) { "non_admins" } else { "off" },
                "contexts": contexts,
                "checks": checks,
            }
        },
        "protection_url": format!("{api}/branches/{name}/protection"),
    })
}

pub(crate) fn git_ref(u: &Urls, r: &RepoState, name: &str, sha: &str) -> Value {
    let api = u.repo_api(&r.full_name);
    json!({
        "ref": format!("refs/heads/{name}"),
        "node_id": node_id("REF", user_id(name)),
        "url": format!("{api}/git/refs/heads/{name}"),
        "object": {
            "type": "commit",
            "sha": sha,
            "url": format!("{api}/git/commits/{sha}"),
        }
    })
}

/// `GET /branches/{branch}/protection/required_status_checks`.
pub(crate) fn required_status_checks(
    u: &Urls,
    r: &RepoState,
    branch: &str,
    contexts: &[String],
    strict: bool,
) -> Value {
    let url = format!(
        "{}/branches/{branch}/protection/required_status_checks",
        u.repo_api(&r.full_name)
    );
    json!({
        "url": url,
        "strict": strict,
        "contexts": contexts,
        "contexts_url": format!("{url}/contexts"),
        "checks": contexts.iter().map(|c| json!({"context": c, "app_id": null})).collect::<Vec<_>>(),
    })
}

fn git_person(name: &str, email: &str, at: u64) -> Value {
    json!({"name": name, "email": email, "date": iso8601(at)})
}

fn unsigned() -> Value {
    json!({"verified": false, "reason": "unsigned", "signature": null, "payload": null, "verified_at": null})
}

/// A commit of the Git database (`git/commits`), as in `git/get-commit`.
pub(crate) fn git_commit(u: &Urls, r: &RepoState, c: &CommitInfo) -> Value {
    let api = u.repo_api(&r.full_name);
    let html = u.repo_html(&r.full_name);
    json!({
        "sha": c.sha,
        "node_id": node_id("C", user_id(&c.sha)),
        "url": format!("{api}/git/commits/{}", c.sha),
        "html_url": format!("{html}/commit/{}", c.sha),
        "author": git_person(&c.author_name, &c.author_email, c.author_at),
        "committer": git_person(&c.committer_name, &c.committer_email, c.committer_at),
        "message": c.message,
        "tree": {"sha": c.tree, "url": format!("{api}/git/trees/{}", c.tree)},
        "parents": c.parents.iter().map(|p| json!({
            "sha": p,
            "url": format!("{api}/git/commits/{p}"),
            "html_url": format!("{html}/commit/{p}"),
        })).collect::<Vec<_>>(),
        "verification": unsigned(),
    })
}

/// A commit as the commits API (and `POST /merges`) answers it.
pub(crate) fn repo_commit(u: &Urls, r: &RepoState, c: &CommitInfo, login: &str) -> Value {
    let api = u.repo_api(&r.full_name);
    let html = u.repo_html(&r.full_name);
    json!({
        "url": format!("{api}/commits/{}", c.sha),
        "sha": c.sha,
        "node_id": node_id("C", user_id(&c.sha)),
        "html_url": format!("{html}/commit/{}", c.sha),
        "comments_url": format!("{api}/commits/{}/comments", c.sha),
        "commit": {
            "url": format!("{api}/git/commits/{}", c.sha),
            "author": git_person(&c.author_name, &c.author_email, c.author_at),
            "committer": git_person(&c.committer_name, &c.committer_email, c.committer_at),
            "message": c.message,
            "tree": {"sha": c.tree, "url": format!("{api}/git/trees/{}", c.tree)},
            "comment_count": 0,
            "verification": unsigned(),
        },
        "author": user(u, login),
        "committer": user(u, login),
        "parents": c.parents.iter().map(|p| json!({
            "sha": p,
            "url": format!("{api}/commits/{p}"),
            "html_url": format!("{html}/commit/{p}"),
        })).collect::<Vec<_>>(),
    })
}

/// A commit as `GET pulls/{n}/commits` lists it (the commits API's
/// shape): its GitHub users are the fake's logins behind the noreply
/// addresses, `null` for any other address (as for an email GitHub does
/// not know).
pub(crate) fn pr_commit(u: &Urls, r: &RepoState, c: &CommitInfo) -> Value {
    let mut v = repo_commit(u, r, c, "");
    let login = |email: &str| match email.strip_suffix(super::git::NOREPLY) {
        Some(login) if !login.is_empty() => user(u, login),
        _ => Value::Null,
    };
    v["author"] = login(&c.author_email);
    v["committer"] = login(&c.committer_email);
    v
}

/// An issue comment, as in `issues__create-comment` (and the webhook
/// `comment`); `app` is the App that wrote it, if one did.
pub(crate) fn issue_comment(
    u: &Urls,
    r: &RepoState,
    number: u64,
    c: &CommentRec,
    app: Option<&AppRec>,
) -> Value {
    let api = u.repo_api(&r.full_name);
    let html = u.repo_html(&r.full_name);
    let association = if app.is_some() || r.permission(&c.user) == "none" {
        "NONE"
    } else if r.full_name.split('/').next() == Some(c.user.as_str()) {
        "OWNER"
    } else {
        "COLLABORATOR"
    };
    json!({
        "id": c.id,
        "node_id": node_id("IC", c.id),
        "url": format!("{api}/issues/comments/{}", c.id),
        "html_url": format!("{html}/pull/{number}#issuecomment-{}", c.id),
        "body": c.body,
        "user": user(u, &c.user),
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "issue_url": format!("{api}/issues/{number}"),
        "author_association": association,
        "performed_via_github_app": app.map(|a| integration(u, a)),
        "reactions": reactions_summary(
            &format!("{api}/issues/comments/{}/reactions", c.id),
            &c.reactions,
        ),
        "pin": null,
        "minimized": null,
    })
}

/// The `reactions` rollup of a comment or issue.
fn reactions_summary(url: &str, reactions: &[ReactionRec]) -> Value {
    let count = |c: &str| reactions.iter().filter(|r| r.content == c).count();
    json!({
        "url": url,
        "total_count": reactions.len(),
        "+1": count("+1"),
        "-1": count("-1"),
        "laugh": count("laugh"),
        "hooray": count("hooray"),
        "confused": count("confused"),
        "heart": count("heart"),
        "rocket": count("rocket"),
        "eyes": count("eyes"),
    })
}

/// A reaction, as in `reactions__create-for-issue-comment`.
pub(crate) fn reaction(u: &Urls, rec: &ReactionRec) -> Value {
    json!({
        "id": rec.id,
        "node_id": node_id("REA", rec.id),
        "user": user(u, &rec.user),
        "content": rec.content,
        "created_at": rec.created_at,
    })
}

/// A PR as an issue, as an `issue_comment` payload carries it (with its
/// `pull_request` links, which say the comment is on a PR).
pub(crate) fn issue(u: &Urls, r: &RepoState, pr: &PrState) -> Value {
    let api = u.repo_api(&r.full_name);
    let html = u.repo_html(&r.full_name);
    let n = pr.number;
    let issue_api = format!("{api}/issues/{n}");
    let pr_html = format!("{html}/pull/{n}");
    let comments = r.comments.get(&n).map_or(0, Vec::len);
    // An issue's id is not its PR's id on GitHub.
    let id = pr.id + 700_000_000;
    json!({
        "url": issue_api,
        "repository_url": api,
        "labels_url": format!("{issue_api}/labels{{/name}}"),
        "comments_url": format!("{issue_api}/comments"),
        "events_url": format!("{issue_api}/events"),
        "html_url": pr_html,
        "id": id,
        "node_id": node_id("PR", pr.id),
        "number": n,
        "title": pr.title,
        "user": user(u, &pr.author),
        "labels": pr.labels.iter().map(|l| label(u, r, l)).collect::<Vec<_>>(),
        "state": if pr.is_open() { "open" } else { "closed" },
        "locked": false,
        "assignee": null,
        "assignees": [],
        "milestone": null,
        "comments": comments,
        "created_at": pr.created_at,
        "updated_at": pr.updated_at,
        "closed_at": pr.closed_at,
        "author_association": if r.permission(&pr.author) == "none" { "CONTRIBUTOR" } else { "COLLABORATOR" },
        "active_lock_reason": null,
        "draft": pr.draft,
        "pull_request": {
            "url": format!("{api}/pulls/{n}"),
            "html_url": pr_html,
            "diff_url": format!("{pr_html}.diff"),
            "patch_url": format!("{pr_html}.patch"),
            "merged_at": pr.merged_at,
        },
        "body": pr.body,
        "reactions": reactions_summary(&format!("{issue_api}/reactions"), &[]),
        "timeline_url": format!("{issue_api}/timeline"),
        "performed_via_github_app": null,
        "state_reason": null,
    })
}

/// A GitHub App, as `GET /app` answers it (less `installations_count`) and
/// as check runs carry it.
pub(crate) fn integration(u: &Urls, app: &AppRec) -> Value {
    json!({
        "id": app.id,
        "slug": app.slug,
        "client_id": format!("Iv1.{:016x}", user_id(&app.slug)),
        "node_id": node_id("A", app.id),
        "owner": user(u, &app.owner),
        "name": app.name,
        "description": "",
        "external_url": format!("{}/apps/{}", u.html(), app.slug),
        "html_url": format!("{}/apps/{}", u.html(), app.slug),
        "created_at": app.created_at,
        "updated_at": app.created_at,
        "permissions": app.permissions,
        "events": app.events,
    })
}

/// An installation, as the `/app/installations` endpoints answer it, or
/// (`webhook`) as `installation` events carry it (dates as Unix seconds,
/// as in GitHub's payloads).
pub(crate) fn installation(u: &Urls, app: &AppRec, inst: &InstallationRec, webhook: bool) -> Value {
    let at = if webhook {
        json!(inst.created_unix)
    } else {
        json!(iso8601(inst.created_unix))
    };
    json!({
        "id": inst.id,
        "node_id": node_id("II", inst.id),
        "account": user(u, &inst.account),
        "repository_selection": match inst.selection {
            Selection::All => "all",
            Selection::Selected(_) => "selected",
        },
        "access_tokens_url": format!("{}/app/installations/{}/access_tokens", u.api, inst.id),
        "repositories_url": format!("{}/installation/repositories", u.api),
        "html_url": format!("{}/settings/installations/{}", u.html(), inst.id),
        "app_id": app.id,
        "app_slug": app.slug,
        "client_id": format!("Iv1.{:016x}", user_id(&app.slug)),
        "target_id": user_id(&inst.account),
        "target_type": "User",
        "permissions": app.permissions,
        "events": app.events,
        "created_at": at,
        "updated_at": at,
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "suspended_at": null,
        "suspended_by": null,
    })
}

/// The minimal `installation` every webhook of an installed App carries.
pub(crate) fn event_installation(id: u64) -> Value {
    json!({"id": id, "node_id": node_id("II", id)})
}

/// `GET /compare/{base}...{head}`, without its `commits` and `files`
/// lists (empty here).
pub(crate) fn comparison(u: &Urls, r: &RepoState, c: &Comparison) -> Value {
    let api = u.repo_api(&r.full_name);
    let html = u.repo_html(&r.full_name);
    let spec = format!("{}...{}", c.base.sha, c.head);
    json!({
        "url": format!("{api}/compare/{spec}"),
        "html_url": format!("{html}/compare/{spec}"),
        "base_commit": repo_commit(u, r, &c.base, MERGER),
        "merge_base_commit": repo_commit(u, r, &c.merge_base, MERGER),
        "status": c.status(),
        "ahead_by": c.ahead_by,
        "behind_by": c.behind_by,
        "total_commits": c.ahead_by,
        "commits": [],
        "files": [],
    })
}

pub(crate) fn permission(u: &Urls, login: &str, permission: &str) -> Value {
    let role = match permission {
        "admin" => "admin",
        "write" => "write",
        "read" => "read",
        _ => "none",
    };
    let mut who = user(u, login);
    who["permissions"] = json!({
        "admin": permission == "admin",
        "maintain": permission == "admin",
        "push": permission == "admin" || permission == "write",
        "triage": permission != "none",
        "pull": permission != "none",
    });
    who["role_name"] = json!(role);
    json!({"permission": permission, "role_name": role, "user": who})
}

/// GitHub's error body.
pub(crate) fn error(status: u16, message: &str, doc: &str) -> Value {
    json!({
        "message": message,
        "documentation_url": format!("https://docs.github.com/rest{doc}"),
        "status": status.to_string(),
    })
}

/// A commit as a `push` payload lists it.
pub(crate) struct PushCommit {
    pub id: String,
    pub tree_id: String,
    pub message: String,
    pub timestamp: String,
    pub author_name: String,
    pub author_email: String,
    pub added: Vec<String>,
}

// One payload, one argument per field it varies in.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_payload(
    u: &Urls,
    r: &RepoState,
    branch: &str,
    before: &str,
    after: &str,
    commits: &[PushCommit],
    pusher: &str,
    forced: bool,
) -> Value {
    let commit = |c: &PushCommit| {
        let who =
            json!({"name": c.author_name, "email": c.author_email, "username": c.author_name});
        json!({
            "id": c.id,
            "tree_id": c.tree_id,
            "distinct": true,
            "message": c.message,
            "timestamp": c.timestamp,
            "url": format!("{}/commit/{}", u.repo_html(&r.full_name), c.id),
            "author": who,
            "committer": who,
            "added": c.added,
            "removed": [],
            "modified": [],
        })
    };
    let created = before.bytes().all(|b| b == b'0');
    let mut repo = repository(u, r);
    // Push payloads carry these two as Unix seconds, and `master_branch`.
    repo["created_at"] = json!(r.created_unix);
    repo["pushed_at"] = json!(now_unix());
    repo["stargazers"] = json!(0);
    repo["master_branch"] = json!(r.default_branch);
    let sender = user(u, pusher);
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": before,
        "after": after,
        "repository": repo,
        "pusher": {"name": pusher, "email": format!("{pusher}@users.noreply.fakehub.invalid")},
        "sender": sender,
        "created": created,
        "deleted": after.bytes().all(|b| b == b'0'),
        "forced": forced,
        "base_ref": null,
        "compare": format!("{}/compare/{}...{}", u.repo_html(&r.full_name), &before[..12.min(before.len())], &after[..12.min(after.len())]),
        "commits": commits.iter().map(commit).collect::<Vec<_>>(),
        "head_commit": commits.last().map(commit),
    })
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// `2024-01-02T03:04:05Z` for a Unix time.
pub(crate) fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

pub(crate) fn now_iso() -> String {
    iso8601(now_unix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso8601_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_557_933_657), "2019-05-15T15:20:57Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }
}
