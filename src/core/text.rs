//! Every sentence sluice writes for people, in one place, as pure functions.

use super::types::*;

pub fn waiting_for_target(branch: &str) -> String {
    format!("waiting to learn the head of {branch}")
}

pub fn conflict(branch: &str) -> String {
    format!("merge conflict with {branch}: merge or rebase it onto {branch}")
}

/// Without the target sha: a queued PR whose target moves is still queued,
/// and its status need not be written again.
pub fn queued(branch: &str) -> String {
    format!("queued to test with the head of {branch}")
}

pub fn retrying(attempt: u32, of: u32) -> String {
    format!("infrastructure error; testing again (attempt {attempt} of {of})")
}

/// A car's test lost to infrastructure, run again.
pub fn retrying_car(attempt: u32, of: u32, detail: &str) -> String {
    let detail = detail.trim();
    if detail.is_empty() {
        retrying(attempt, of)
    } else {
        format!("{} ({})", retrying(attempt, of), bounded(detail, 120))
    }
}

/// At most `max` characters of `s`, an ellipsis marking a cut.
pub fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

pub fn testing(branch: &str, target: &Sha) -> String {
    format!("testing with {branch}@{}", target.short())
}

pub fn finished(outcome: Outcome, branch: &str, target: &Sha, detail: &str) -> String {
    let with = format!("{branch}@{}", target.short());
    match outcome {
        Outcome::Passed => format!("passed with {with}"),
        Outcome::Failed => format!("failed with {with}: {detail}"),
        Outcome::Error => format!("infrastructure error with {with}: {detail}"),
    }
}

pub fn not_approved(have: usize, need: u32) -> String {
    format!("not approved: {have} of {need} required approvals from reviewers with write access")
}

pub fn changes_requested(by: &[String]) -> String {
    format!("changes requested by {}", by.join(", "))
}

pub fn is_draft() -> String {
    "the PR is a draft".into()
}

pub fn no_result_yet(testing: bool) -> String {
    if testing {
        "the current head is being tested".into()
    } else {
        "the current head is queued for testing".into()
    }
}

pub fn test_did_not_pass(outcome: Outcome, detail: &str) -> String {
    match outcome {
        Outcome::Failed => format!("the test of the current head failed: {detail}"),
        Outcome::Error => {
            format!("the test of the current head hit an infrastructure error: {detail}")
        }
        Outcome::Passed => "the test passed".into(),
    }
}

pub fn merging_already() -> String {
    "a merge of this PR is already in progress".into()
}

pub fn other_merge_in_flight(branch: &str, other: u64) -> String {
    format!("#{other} is being merged into {branch}; this PR is re-tested after it lands")
}

pub fn merge_refused(reason: &str) -> String {
    format!("GitHub refused the last merge: {reason}")
}

pub fn cancelled_stale() -> String {
    "its head or target moved".into()
}

pub fn cancelled_retest() -> String {
    "a retest was requested".into()
}

pub fn cancelled_closed() -> String {
    "the PR was closed".into()
}

pub fn lost_on_restart() -> String {
    "sluice restarted and the executor no longer had it".into()
}

pub fn interrupted_merge() -> String {
    "sluice restarted while the merge call was in flight".into()
}

pub fn head_moved() -> String {
    "the head moved while merging; waiting for the new head".into()
}

pub fn car_conflict(branch: &str, message: &str) -> String {
    format!("left the train for {branch}: does not merge onto the PRs ahead of it ({message})")
}

pub fn car_failed(outcome: Outcome, branch: &str, ahead: &[u64], detail: &str) -> String {
    let with = if ahead.is_empty() {
        format!("on the head of {branch}")
    } else {
        let list: Vec<String> = ahead.iter().map(|n| format!("#{n}")).collect();
        format!("on the head of {branch} with {}", list.join(", "))
    };
    match outcome {
        Outcome::Error => format!("left the train: infrastructure error {with}: {detail}"),
        _ => format!("left the train: the car failed {with}: {detail}"),
    }
}

pub fn car_passed(branch: &str, prs: &[u64]) -> String {
    let list: Vec<String> = prs.iter().map(|n| format!("#{n}")).collect();
    format!("passed: lands on {branch} with {}", list.join(", "))
}

/// "1st", "2nd", "11th", ... for place `position` (0 = first).
fn nth(position: usize) -> String {
    let n = position + 1;
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// "2nd in the train for main, about 9 min".
pub fn in_train(branch: &str, position: usize, eta_ms: Option<u64>) -> String {
    let nth = nth(position);
    match eta_ms {
        Some(ms) => format!("{nth} in the train for {branch}, {}", about(ms)),
        None => format!("{nth} in the train for {branch}"),
    }
}

pub fn branch_paused(branch: &str) -> String {
    format!("the train for {branch} is paused: nothing enters or lands until it runs again")
}

pub fn branch_draining(branch: &str) -> String {
    format!("the train for {branch} is draining: nothing new enters until it runs again")
}

/// A PR whose car passed but cannot land yet, and why.
pub fn in_train_held(branch: &str, position: usize, why: &str) -> String {
    format!("{} in the train for {branch}, passed; {why}", nth(position))
}

/// GitHub refused a landing as not a fast-forward: the target moved.
pub fn target_moved_under_landing(branch: &str) -> String {
    format!("{branch} moved under the landing; reading it again")
}

/// The landing car lacks required checks other than sluice's.
pub fn waiting_for_checks(pending: &[String], car_ref: &str) -> String {
    let names: Vec<String> = pending.iter().map(|c| format!("\"{c}\"")).collect();
    let noun = if names.len() == 1 { "check" } else { "checks" };
    format!(
        "waiting for required {noun} {} on {car_ref} (not passed yet; does your CI run on pushes to sluice/**?)",
        names.join(", ")
    )
}

/// A required check other than sluice's failed on a car.
pub fn car_check_failed(branch: &str, context: &str, car_ref: &str, description: &str) -> String {
    let detail = if description.is_empty() {
        String::new()
    } else {
        format!(": {description}")
    };
    format!(
        "left the train for {branch}: required check \"{context}\" failed on its car {car_ref}{detail}"
    )
}

/// Whether `description` is `in_train(branch, position, _)`, whatever its
/// ETA.
pub fn is_in_train(description: &str, branch: &str, position: usize) -> bool {
    let place = in_train(branch, position, None);
    description.strip_prefix(&place).is_some_and(|rest| {
        rest.is_empty() || rest.starts_with(", about ") || rest == ", under a minute"
    })
}

/// A rough duration, rounded up: "under a minute", "about 9 min",
/// "about 2 h".
pub fn about(ms: u64) -> String {
    let minutes = ms.div_ceil(60_000);
    match minutes {
        _ if ms < 60_000 => "under a minute".into(),
        2..=89 => format!("about {minutes} min"),
        _ => format!("about {} h", minutes.div_ceil(60)),
    }
}

pub fn cancelled_car_landed() -> String {
    "a car behind it that holds its PRs passed and landed".into()
}

/// Why a car did not land: GitHub would not take its success status.
pub fn car_status_not_set(error: &str) -> String {
    format!("its success status could not be set ({error}), so it did not land")
}

pub fn cancelled_car_rebuilt() -> String {
    "the car is rebuilt (a PR ahead of it changed or the target moved)".into()
}

pub fn entering_train(branch: &str) -> String {
    format!("enters the train for {branch} now")
}

/// The comment on a PR sluice closed after its squashed or rebased car
/// landed (GitHub cannot see it merged). The full sha: GitHub links it
/// and shows it short. Names are put in code spans, so no branch name can
/// turn into markup.
pub fn landed_comment(
    branch: &str,
    landed: &Sha,
    method: MergeMethod,
    car: &str,
    link: &str,
) -> String {
    let how = match method {
        MergeMethod::Rebase => "rebased",
        MergeMethod::Squash => "squashed",
        MergeMethod::Merge => "merged",
    };
    format!(
        "Landed on {} as {landed} by sluice ({}, car {}, [tested build]({link})). \
         GitHub does not mark a {} PR merged, so sluice closed it.",
        code(branch),
        method.as_str(),
        code(car),
        how
    )
}

/// The longest run of backticks in `s` (a fence must be longer).
fn longest_backtick_run(s: &str) -> usize {
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

/// `s` as a Markdown code span: fenced by more backticks than it holds in
/// a row, padded so it may start or end with one.
pub fn code(s: &str) -> String {
    let longest = longest_backtick_run(s);
    let fence = "`".repeat(longest + 1);
    if longest == 0 {
        format!("{fence}{s}{fence}")
    } else {
        format!("{fence} {s} {fence}")
    }
}

/// A rebased car could not be built: one of its PR's commits conflicts.
pub fn commit_conflicts(commit: &Sha, message: &str) -> String {
    format!("its commit {} conflicts: {message}", commit.short())
}

/// A rebased car could not be built: GitHub lists only `listed` commits of
/// a PR.
pub fn too_many_commits(listed: usize) -> String {
    format!(
        "it has {listed} commits or more, more than GitHub lists, so sluice cannot replay them: squash it or use merge_method \"merge\""
    )
}

/// `#N` in its own repository, `owner/name#N` in another.
pub fn pr_reference(pr: &PrKey, own: &RepoName) -> String {
    if pr.repo == *own {
        format!("#{}", pr.number)
    } else {
        pr.to_string()
    }
}

pub fn dependency_not_in_train(dep: &str) -> String {
    format!("approved and passing; waits for {dep} to enter the train first (Depends-On)")
}

pub fn dependency_not_landed(dep: &str) -> String {
    format!("approved and passing; waits for {dep} to land first (Depends-On)")
}

pub fn dependency_closed(dep: &str) -> String {
    format!(
        "depends on {dep}, which was closed without merging; remove the Depends-On line or reopen it"
    )
}

pub fn dependency_unheard(dep: &str) -> String {
    format!("approved and passing; waits to learn whether {dep} merged (Depends-On)")
}

pub fn dependency_unknown(dep: &str) -> String {
    format!(
        "depends on {dep}, in a repository sluice does not gate; remove the Depends-On line once it has landed"
    )
}

pub fn dependency_cycle(cycle: &[u64]) -> String {
    let path: Vec<String> = cycle.iter().map(|n| format!("#{n}")).collect();
    format!(
        "Depends-On cycle: {}; none of them can enter the train",
        path.join(" → ")
    )
}

// ------------------------------------------------------- comment commands

/// The commands sluice knows, for replies.
const COMMANDS_KNOWN: &str =
    "`/merge`, `/retest`, `/cancel`, `/hold`, `/unhold`, `/priority <label>`, `/sluice help`";

/// The command reference (`/sluice help`, the README), in Markdown.
pub fn commands_help() -> String {
    format!(
        "sluice reads one command per line, at the start of the line, in comments on a PR:\n\
         \n\
         - `/merge`: land the PR once it is approved and passing (remembered until then)\n\
         - `/retest`: test the PR again\n\
         - `/cancel`: take the PR out of the train and stop its build\n\
         - `/hold`: keep the PR from landing, until `/unhold`\n\
         - `/unhold`: let a held PR land again\n\
         - `/priority <label>`: give the PR one of the repository's priority labels\n\
         - `/sluice help`: this list\n\
         \n\
         `/sluice merge` is `/merge`, and so on. Quoted lines and code blocks are not commands; \
         sluice reads at most {} per comment.",
        super::commands::MAX_COMMANDS
    )
}

pub fn command_unknown(word: &str) -> String {
    format!(
        "unknown command {}; commands sluice knows: {COMMANDS_KNOWN}",
        code(word)
    )
}

/// A known command written wrongly: the line and why.
pub fn command_refused(line: &str, why: &str) -> String {
    format!("did not run {}: {why}", code(line))
}

/// `dropped` command lines after the first `MAX_COMMANDS` were not read.
pub fn commands_dropped(dropped: usize) -> String {
    let max = super::commands::MAX_COMMANDS;
    format!(
        "{} commands; sluice reads at most {max} per comment, so the last {dropped} were not read: \
         write them in another comment",
        max + dropped
    )
}

pub fn command_takes_no_argument(command: &str) -> String {
    format!(
        "{command} takes no argument; write {} alone on its line",
        code(command)
    )
}

pub fn priority_label_missing() -> String {
    "/priority needs a label: `/priority <label>`".into()
}

pub fn priority_label_too_long(chars: usize) -> String {
    format!(
        "a label has at most {} characters, this one {chars}",
        super::commands::MAX_LABEL_CHARS
    )
}

pub fn priority_label_control() -> String {
    "a label cannot hold control characters (tabs and the like)".into()
}

/// `/hold` keeps the PR out of the train.
pub fn held_by(who: &str) -> String {
    format!("held by @{who} (/hold); /unhold lets it land")
}

/// `/cancel` took the PR out of the train.
pub fn cancelled_by(who: &str) -> String {
    format!("taken out of the train by @{who} (/cancel); /merge puts it back")
}

/// `land_on = "command"`: an approved, passing PR waits for `/merge`.
pub fn waits_for_merge_command() -> String {
    "waits for /merge from someone with write access".into()
}

pub fn cancelled_by_command(who: &str) -> String {
    format!("cancelled by @{who} (/cancel)")
}

/// GitHub did not say whether the commenter may write.
pub fn access_unknown(who: &str, repo: &RepoName) -> String {
    format!("could not ask GitHub whether @{who} may write to {repo}; comment again to retry")
}

pub fn pr_not_tracked(number: u64) -> String {
    format!("sluice does not track #{number} (closed, or not open against a gated branch)")
}

/// A command from someone who may not give it.
pub fn command_not_allowed(
    command: &str,
    who: &str,
    repo: &RepoName,
    author_may_retest: bool,
) -> String {
    let also = if author_may_retest {
        " (a PR's author may /retest it)"
    } else {
        ""
    };
    format!("@{who} cannot /{command} here: only people with write access to {repo} can{also}")
}

/// `/priority` with a label the repository does not configure.
pub fn priority_unknown(label: &str, known: &[String]) -> String {
    if known.is_empty() {
        format!(
            "{} is not a priority label here: this repository has none",
            code(label)
        )
    } else {
        let known: Vec<String> = known.iter().map(|l| code(l)).collect();
        format!(
            "{} is not a priority label here; the labels are {}",
            code(label),
            known.join(", ")
        )
    }
}

/// sluice's one reply to a comment: what it did not do and why, and the
/// command reference when asked or when something went wrong.
pub fn commands_answer(who: &str, said: &[String], help: bool) -> String {
    let mut body = format!("@{who}");
    for line in said {
        body.push_str("\n- ");
        body.push_str(line);
    }
    if help || !said.is_empty() {
        body.push_str("\n\n");
        body.push_str(&commands_help());
    }
    body
}

/// A check run's summary: what stands between the PR and landing, one
/// line each (the JSON's `waiting_on`).
pub fn check_summary(reasons: &[String]) -> String {
    if reasons.is_empty() {
        return "Approved and passing: nothing stands between this PR and landing.".into();
    }
    let mut out = String::from("What stands between this PR and landing:\n");
    for reason in reasons {
        out.push_str("\n- ");
        out.push_str(reason);
    }
    out
}

/// A check run's summary for a car sluice tested: the PRs it holds.
pub fn car_summary(description: &str, prs: &[u64]) -> String {
    let prs: Vec<String> = prs.iter().map(|n| format!("#{n}")).collect();
    format!("{description}\n\nThis commit holds {}.", prs.join(", "))
}

/// The end of a failing build's log, for a check run's summary.
pub fn log_tail(tail: &str) -> String {
    format!("\n\nThe end of the log:\n\n{}", fenced(tail))
}

/// `s` as a fenced Markdown code block (a fence longer than any run of
/// backticks in it).
pub fn fenced(s: &str) -> String {
    let fence = "`".repeat((longest_backtick_run(s) + 1).max(3));
    format!("{fence}\n{}\n{fence}", s.trim_end())
}

/// A car commit's status while its test runs.
pub fn car_testing(branch: &str, prs: &[u64]) -> String {
    let list: Vec<String> = prs.iter().map(|n| format!("#{n}")).collect();
    format!("testing for {branch}: {}", list.join(", "))
}

/// A car commit's status when its build was stopped before a result.
pub fn car_cancelled(why: &str) -> String {
    format!("cancelled: {why}")
}

/// A car commit's status when its test did not pass (which PR is to blame
/// is the train's to find).
pub fn car_test_failed(outcome: Outcome, detail: &str) -> String {
    match outcome {
        Outcome::Error => format!("infrastructure error: {detail}"),
        _ => format!("failed: {detail}"),
    }
}
