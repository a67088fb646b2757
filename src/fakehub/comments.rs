//! Issue comments on PRs and their reactions (`issues/create-comment`,
//! `issues/get-comment`, `issues/update-comment`, `issues/delete-comment`,
//! `reactions/create-for-issue-comment`,
//! `reactions/list-for-issue-comment`), and the `issue_comment` webhooks
//! they send: for people's comments (a test's [`FakeHub::comment`]) and for
//! the bot's own, as GitHub sends both.

use super::apps::Caller;
use super::checks::Answer;
use super::server::{json_object, required_str};
use super::state::{CommentRec, ReactionRec, State};
use super::{FakeHub, HttpError, Inner, http_err, shapes};
use anyhow::{Context, anyhow};
use serde_json::{Value, json};

/// The most characters a comment's body may have on GitHub.
pub const COMMENT_MAX_CHARS: usize = 65536;

/// The reactions GitHub knows.
pub const REACTIONS: &[&str] = &[
    "+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes",
];

/// One reaction to a comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactionView {
    pub id: u64,
    pub user: String,
    pub content: String,
}

/// Where comment `id` of `repo` is: (PR number, index in its list).
fn locate(st: &State, repo: &str, id: u64) -> Option<(u64, usize)> {
    st.repos
        .get(repo)?
        .comments
        .iter()
        .find_map(|(n, cs)| cs.iter().position(|c| c.id == id).map(|i| (*n, i)))
}

impl Inner {
    /// An `issue_comment` event body for comment `id` (on PR `number`).
    fn comment_event(
        &self,
        st: &State,
        repo: &str,
        number: u64,
        c: &CommentRec,
        action: &str,
        sender: &str,
    ) -> Option<Value> {
        let r = st.repos.get(repo)?;
        let pr = r.prs.get(&number)?;
        let u = self.urls();
        let app = c.app_id.and_then(|a| st.apps.get(&a));
        Some(json!({
            "action": action,
            "issue": shapes::issue(&u, r, pr),
            "comment": shapes::issue_comment(&u, r, number, c, app),
            "repository": shapes::repository(&u, r),
            "sender": shapes::user(&u, sender),
        }))
    }

    /// Records a comment by `user` (`app_id`: written by that App's
    /// installation) on PR `number`; sends `issue_comment` `created`.
    pub(crate) fn record_comment(
        &self,
        repo: &str,
        number: u64,
        user: &str,
        app_id: Option<u64>,
        body: &str,
    ) -> Result<Value, HttpError> {
        if body.chars().count() > COMMENT_MAX_CHARS {
            return Err(http_err(
                422,
                &format!(
                    "Validation Failed: body is too long (maximum is {COMMENT_MAX_CHARS} characters)"
                ),
            ));
        }
        let (shape, event) = {
            let mut st = self.state.lock().expect("state");
            let id = st.fresh_id() + 3_000_000_000;
            let r = st
                .repos
                .get_mut(repo)
                .ok_or_else(|| http_err(404, "Not Found"))?;
            if !r.prs.contains_key(&number) {
                return Err(http_err(404, "Not Found"));
            }
            let now = shapes::now_iso();
            let c = CommentRec {
                id,
                user: user.to_string(),
                body: body.to_string(),
                created_at: now.clone(),
                updated_at: now,
                app_id,
                reactions: Vec::new(),
            };
            r.comments.entry(number).or_default().push(c.clone());
            let r = &st.repos[repo];
            let app = app_id.and_then(|a| st.apps.get(&a));
            let shape = shapes::issue_comment(&self.urls(), r, number, &c, app);
            (
                shape,
                self.comment_event(&st, repo, number, &c, "created", user),
            )
        };
        if let Some(event) = event {
            self.enqueue("issue_comment", event);
        }
        Ok(shape)
    }

    /// `POST /repos/{repo}/issues/{n}/comments`, as the caller (sluice's
    /// bot: `<slug>[bot]` with an installation token).
    pub(crate) fn create_comment(
        &self,
        caller: &Caller,
        repo: &str,
        number: u64,
        body: &[u8],
    ) -> Answer {
        let req = json_object(body)?;
        let text = required_str(&req, "body")?;
        let (user, app_id) = self.actor(caller);
        Ok((201, self.record_comment(repo, number, &user, app_id, text)?))
    }

    /// `GET /repos/{repo}/issues/comments/{id}`.
    pub(crate) fn get_comment(&self, repo: &str, id: u64) -> Answer {
        let st = self.state.lock().expect("state");
        let (number, i) = locate(&st, repo, id).ok_or_else(|| http_err(404, "Not Found"))?;
        let r = &st.repos[repo];
        let c = &r.comments[&number][i];
        let app = c.app_id.and_then(|a| st.apps.get(&a));
        Ok((200, shapes::issue_comment(&self.urls(), r, number, c, app)))
    }

    /// Changes a comment's body; sends `issue_comment` `edited` (with
    /// `changes.body.from`) as `sender`.
    fn edit(&self, repo: &str, id: u64, body: &str, sender: Option<&str>) -> Answer {
        let (shape, event) = {
            let mut st = self.state.lock().expect("state");
            let (number, i) = locate(&st, repo, id).ok_or_else(|| http_err(404, "Not Found"))?;
            let r = st
                .repos
                .get_mut(repo)
                .ok_or_else(|| http_err(404, "Not Found"))?;
            let c = &mut r.comments.get_mut(&number).expect("located")[i];
            let from = std::mem::replace(&mut c.body, body.to_string());
            c.updated_at = shapes::now_iso();
            let c = c.clone();
            let r = &st.repos[repo];
            let app = c.app_id.and_then(|a| st.apps.get(&a));
            let shape = shapes::issue_comment(&self.urls(), r, number, &c, app);
            let sender = sender.unwrap_or(&c.user).to_string();
            let mut event = self.comment_event(&st, repo, number, &c, "edited", &sender);
            if let Some(e) = event.as_mut() {
                e["changes"] = json!({"body": {"from": from}});
            }
            (shape, event)
        };
        if let Some(event) = event {
            self.enqueue("issue_comment", event);
        }
        Ok((200, shape))
    }

    /// Deletes a comment; sends `issue_comment` `deleted` as `sender`.
    fn delete(&self, repo: &str, id: u64, sender: Option<&str>) -> Result<(), HttpError> {
        let event = {
            let mut st = self.state.lock().expect("state");
            let (number, i) = locate(&st, repo, id).ok_or_else(|| http_err(404, "Not Found"))?;
            let r = st
                .repos
                .get_mut(repo)
                .ok_or_else(|| http_err(404, "Not Found"))?;
            let c = r.comments.get_mut(&number).expect("located").remove(i);
            let sender = sender.unwrap_or(&c.user).to_string();
            self.comment_event(&st, repo, number, &c, "deleted", &sender)
        };
        if let Some(event) = event {
            self.enqueue("issue_comment", event);
        }
        Ok(())
    }

    /// `PATCH /repos/{repo}/issues/comments/{id}` `{body}`.
    pub(crate) fn update_comment(
        &self,
        caller: &Caller,
        repo: &str,
        id: u64,
        body: &[u8],
    ) -> Answer {
        let req = json_object(body)?;
        let text = required_str(&req, "body")?;
        if text.chars().count() > COMMENT_MAX_CHARS {
            return Err(http_err(
                422,
                &format!(
                    "Validation Failed: body is too long (maximum is {COMMENT_MAX_CHARS} characters)"
                ),
            ));
        }
        let (user, _) = self.actor(caller);
        self.edit(repo, id, text, Some(&user))
    }

    /// `DELETE /repos/{repo}/issues/comments/{id}`.
    pub(crate) fn delete_comment(
        &self,
        caller: &Caller,
        repo: &str,
        id: u64,
    ) -> Result<(), HttpError> {
        let (user, _) = self.actor(caller);
        self.delete(repo, id, Some(&user))
    }

    /// `POST /repos/{repo}/issues/comments/{id}/reactions` `{content}`: 201
    /// for a new reaction, 200 with the existing one if the caller already
    /// reacted so.
    pub(crate) fn react(&self, caller: &Caller, repo: &str, id: u64, body: &[u8]) -> Answer {
        let req = json_object(body)?;
        let content = required_str(&req, "content")?;
        if !REACTIONS.contains(&content) {
            let list: Vec<String> = REACTIONS.iter().map(|s| format!("{s:?}")).collect();
            return Err(http_err(
                422,
                &format!(
                    "Invalid request.\n\nFor 'properties/content', {content:?} is not a member of [{}].",
                    list.join(", ")
                ),
            ));
        }
        let (user, _) = self.actor(caller);
        let mut st = self.state.lock().expect("state");
        let (number, i) = locate(&st, repo, id).ok_or_else(|| http_err(404, "Not Found"))?;
        let rid = st.fresh_id() + 5_000_000_000;
        let r = st
            .repos
            .get_mut(repo)
            .ok_or_else(|| http_err(404, "Not Found"))?;
        let c = &mut r.comments.get_mut(&number).expect("located")[i];
        let u = self.urls();
        if let Some(existing) = c
            .reactions
            .iter()
            .find(|x| x.user == user && x.content == content)
        {
            return Ok((200, shapes::reaction(&u, existing)));
        }
        let rec = ReactionRec {
            id: rid,
            user,
            content: content.to_string(),
            created_at: shapes::now_iso(),
        };
        c.reactions.push(rec.clone());
        Ok((201, shapes::reaction(&u, &rec)))
    }

    /// `GET /repos/{repo}/issues/comments/{id}/reactions` (`content`
    /// filters), oldest first.
    pub(crate) fn list_reactions(
        &self,
        repo: &str,
        id: u64,
        content: Option<&str>,
    ) -> Result<Vec<Value>, HttpError> {
        let st = self.state.lock().expect("state");
        let (number, i) = locate(&st, repo, id).ok_or_else(|| http_err(404, "Not Found"))?;
        let c = &st.repos[repo].comments[&number][i];
        let u = self.urls();
        Ok(c.reactions
            .iter()
            .filter(|x| content.is_none_or(|want| want == x.content))
            .map(|x| shapes::reaction(&u, x))
            .collect())
    }
}

impl FakeHub {
    /// `user` comments `body` on PR `number` (as a person does in the
    /// browser); sends `issue_comment` `created`. Returns the comment id.
    /// Fails, as GitHub would, for a body over [`COMMENT_MAX_CHARS`].
    pub fn comment(&self, repo: &str, number: u64, user: &str, body: &str) -> anyhow::Result<u64> {
        let shape = self
            .inner
            .record_comment(repo, number, user, None, body)
            .map_err(|e| anyhow!("commenting on #{number} in {repo}: {}", e.message))?;
        shape["id"].as_u64().context("a comment has an id")
    }

    /// Its author edits comment `id` to `body`; sends `issue_comment`
    /// `edited` with `changes.body.from`.
    pub fn edit_comment(&self, repo: &str, id: u64, body: &str) -> anyhow::Result<()> {
        if body.chars().count() > COMMENT_MAX_CHARS {
            anyhow::bail!("a comment has at most {COMMENT_MAX_CHARS} characters");
        }
        self.inner
            .edit(repo, id, body, None)
            .map(|_| ())
            .map_err(|_| anyhow!("no comment {id} in {repo}"))
    }

    /// Its author deletes comment `id`; sends `issue_comment` `deleted`.
    pub fn delete_comment(&self, repo: &str, id: u64) -> anyhow::Result<()> {
        self.inner
            .delete(repo, id, None)
            .map_err(|_| anyhow!("no comment {id} in {repo}"))
    }

    /// The reactions to comment `id`, oldest first.
    pub fn reactions(&self, repo: &str, id: u64) -> Vec<ReactionView> {
        let st = self.inner.state.lock().expect("state");
        locate(&st, repo, id)
            .map(|(n, i)| {
                st.repos[repo].comments[&n][i]
                    .reactions
                    .iter()
                    .map(|x| ReactionView {
                        id: x.id,
                        user: x.user.clone(),
                        content: x.content.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
