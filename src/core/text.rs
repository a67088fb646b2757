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

pub fn in_train(branch: &str, position: usize) -> String {
    let nth = match position + 1 {
        1 => "1st".to_string(),
        2 => "2nd".to_string(),
        3 => "3rd".to_string(),
        n => format!("{n}th"),
    };
    format!("{nth} in the train for {branch}")
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
