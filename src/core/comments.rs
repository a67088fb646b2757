//! What sluice does with the commands in a PR comment (parsed by
//! `core/commands.rs`): who may give them, what each changes in the
//! state, and the one answer each comment gets (a reaction when every
//! command was done, a reply saying what was not and why, or the help).
//!
//! Commands change only facts the rest of the core already reads:
//! `Pr::asked` (what `ready_but_for_lock` and the train's settle check),
//! the PR's results (a retest), and its priority in the queue.

use super::action::*;
use super::commands::{self, Command};
use super::state::*;
use super::text;
use super::types::*;
use super::{LandOn, RepoPolicy};

/// GitHub's reaction for "done".
pub const DONE: &str = "+1";

impl Asked {
    /// Why what people asked keeps an approved, passing PR from landing,
    /// if it does.
    pub fn blocker(&self, policy: &RepoPolicy) -> Option<String> {
        if let Some(who) = &self.hold {
            return Some(text::held_by(who));
        }
        if let Some(who) = &self.cancel {
            return Some(text::cancelled_by(who));
        }
        (policy.land_on == LandOn::Command && self.merge.is_none())
            .then(text::waits_for_merge_command)
    }
}

/// Whether `author` may give `command` on a PR: people with write access
/// may give any; the PR's own author may `/retest` when the policy says
/// so; anyone may ask for help.
fn allowed(command: &Command, can_write: bool, is_author: bool, policy: &RepoPolicy) -> bool {
    can_write
        || matches!(command, Command::Help)
        || (matches!(command, Command::Retest) && is_author && policy.author_may_retest)
}

/// The answer to a comment on a PR sluice does not track.
fn untracked(pr: PrKey, comment: u64, author: &str) -> Action {
    Action::Answer {
        body: text::commands_answer(author, &[text::pr_not_tracked(pr.number)], false),
        pr,
        comment,
    }
}

fn remember_answered(repo: &mut RepoState, comment: u64) {
    repo.answered_comments.insert(comment);
    while repo.answered_comments.len() > ANSWERED_MEMORY {
        repo.answered_comments.pop_first();
    }
}

/// The configured label `asked` names (any case), if any.
fn priority_label(policy: &RepoPolicy, asked: &str) -> Option<String> {
    policy
        .priority_labels
        .iter()
        .chain(policy.urgent_label.iter())
        .find(|l| l.eq_ignore_ascii_case(asked))
        .cloned()
}

impl State {
    pub(crate) fn on_commented(
        &mut self,
        key: PrKey,
        comment: u64,
        author: String,
        body: String,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(repo) = self.repos.get_mut(&key.repo) else {
            return;
        };
        if repo.answered_comments.contains(&comment) || repo.pending_comments.contains_key(&comment)
        {
            return; // a delivery seen before
        }
        let parsed = commands::parse(&body);
        if parsed.is_empty() {
            return;
        }
        remember_answered(repo, comment);
        let Some(pr) = repo.prs.get(&key.number) else {
            out.push(untracked(key, comment, &author));
            return;
        };
        let is_author = pr.snapshot.author.eq_ignore_ascii_case(&author);
        let needs_access = parsed
            .commands
            .iter()
            .any(|(_, c)| !allowed(c, false, is_author, &repo.policy));
        if !needs_access {
            self.run_commands(key, comment, &author, &parsed, false, now, out);
            return;
        }
        // Asked of GitHub first; the answer runs them (`on_write_access`).
        while repo.pending_comments.len() >= PENDING_COMMENTS {
            repo.pending_comments.pop_first();
        }
        repo.pending_comments.insert(
            comment,
            PendingComment {
                pr: key.number,
                author: author.clone(),
                body,
            },
        );
        out.push(Action::CheckWriteAccess {
            repo: key.repo,
            user: author,
            comment,
        });
    }

    pub(crate) fn on_write_access(
        &mut self,
        name: &RepoName,
        comment: u64,
        can_write: Option<bool>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(pending) = self
            .repos
            .get_mut(name)
            .and_then(|r| r.pending_comments.remove(&comment))
        else {
            return; // answered already
        };
        let key = PrKey {
            repo: name.clone(),
            number: pending.pr,
        };
        let Some(can_write) = can_write else {
            out.push(Action::Answer {
                body: text::commands_answer(
                    &pending.author,
                    &[text::access_unknown(&pending.author, name)],
                    false,
                ),
                pr: key,
                comment,
            });
            return;
        };
        let parsed = commands::parse(&pending.body);
        self.run_commands(key, comment, &pending.author, &parsed, can_write, now, out);
    }

    /// Runs the commands `author` may give and answers the comment once.
    #[allow(clippy::too_many_arguments)]
    fn run_commands(
        &mut self,
        key: PrKey,
        comment: u64,
        author: &str,
        parsed: &commands::Parsed,
        can_write: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(pr) = self.repos[&key.repo].prs.get(&key.number) else {
            out.push(untracked(key, comment, author));
            return;
        };
        let is_author = pr.snapshot.author.eq_ignore_ascii_case(author);
        let mut said = parsed.complaints();
        let mut help = false;
        for (_, command) in &parsed.commands {
            let policy = &self.repos[&key.repo].policy;
            if !allowed(command, can_write, is_author, policy) {
                let retest = matches!(command, Command::Retest) && policy.author_may_retest;
                said.push(text::command_not_allowed(
                    command.name(),
                    author,
                    &key.repo,
                    retest,
                ));
                continue;
            }
            if let Err(why) = self.run_command(&key, command, author, now, out) {
                said.push(text::command_refused(&format!("/{}", command.name()), &why));
            }
            help |= matches!(command, Command::Help);
        }
        let repo = self.repos.get_mut(&key.repo).expect("checked above");
        repo.index.dirty.insert(key.number);
        if said.is_empty() && !help {
            out.push(Action::React {
                repo: key.repo.clone(),
                comment,
                content: DONE.into(),
            });
        } else {
            out.push(Action::Answer {
                body: text::commands_answer(author, &said, help),
                pr: key,
                comment,
            });
        }
    }

    /// Does what one allowed command asks. Err: why it could not.
    fn run_command(
        &mut self,
        key: &PrKey,
        command: &Command,
        author: &str,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        if let Command::Retest = command {
            return self
                .retest(key, now, out)
                .map_err(|why| why.unwrap_or_else(|| text::pr_not_tracked(key.number)));
        }
        let repo = self.repos.get_mut(&key.repo).expect("known repository");
        let label = match command {
            Command::Priority(asked) => Some(
                priority_label(&repo.policy, asked)
                    .ok_or_else(|| text::priority_unknown(asked, &repo.policy.priority_labels))?,
            ),
            _ => None,
        };
        let pr = repo
            .prs
            .get_mut(&key.number)
            .expect("checked by the caller");
        let who = Some(author.to_string());
        match command {
            Command::Merge => {
                pr.asked.merge = who;
                pr.asked.cancel = None;
                pr.asked.stopped = None;
                // As with `try-merge`: asking is a reason to try again.
                pr.merge_block = None;
                pr.ejected = None;
            }
            Command::Cancel => {
                pr.asked.merge = None;
                pr.asked.cancel = who;
                // Its own test stops too, and does not start again for this
                // head by itself; its car's leaves with the train's settle.
                pr.asked.stopped = Some(pr.snapshot.head_sha.clone());
                if let Some(build) = pr.build.take() {
                    self.cancel_build(build, text::cancelled_by_command(author), now, out);
                }
            }
            Command::Hold => pr.asked.hold = who,
            Command::Unhold => pr.asked.hold = None,
            Command::Priority(_) => pr.asked.priority = label,
            Command::Retest | Command::Help => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writers_command_but_authors_may_retest_and_anyone_may_ask_for_help() {
        let policy = RepoPolicy::default();
        assert!(allowed(&Command::Merge, true, false, &policy));
        assert!(!allowed(&Command::Merge, false, true, &policy));
        assert!(allowed(&Command::Retest, false, true, &policy));
        assert!(!allowed(&Command::Retest, false, false, &policy));
        assert!(allowed(&Command::Help, false, false, &policy));
        let strict = RepoPolicy {
            author_may_retest: false,
            ..RepoPolicy::default()
        };
        assert!(!allowed(&Command::Retest, false, true, &strict));
    }

    #[test]
    fn a_priority_names_a_configured_label_in_any_case() {
        let policy = RepoPolicy {
            priority_labels: vec!["high".into()],
            urgent_label: Some("urgent".into()),
            ..RepoPolicy::default()
        };
        assert_eq!(priority_label(&policy, "HIGH"), Some("high".into()));
        assert_eq!(priority_label(&policy, "urgent"), Some("urgent".into()));
        assert_eq!(priority_label(&policy, "$(rm -rf /)"), None);
    }
}
