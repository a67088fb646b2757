//! Comment commands end to end: people comment on PRs in the fake GitHub,
//! which delivers `issue_comment` webhooks to sluice over real HTTP; sluice
//! asks GitHub for the commenter's access, acts, and answers each comment
//! once (a reaction, or a reply).

use sluice::core::{LandOn, PrTests};
use sluice::demo::{DEMO_REPO, Stack};
use std::time::Duration;

/// A stack where approved PRs land only after a `/merge`; `alice` and
/// `bob` may write, `mallory` may only read.
async fn command_stack(dir: &std::path::Path, train_depth: usize) -> Stack {
    Stack::start(dir, "127.0.0.1:0".parse().unwrap(), |c| {
        let repo = &mut c.repos[0];
        repo.land_on = LandOn::Command;
        repo.train_depth = train_depth;
        repo.max_concurrent_builds = 4;
        if train_depth > 0 {
            repo.pr_tests = PrTests::TrainOnly;
        }
    })
    .await
    .unwrap()
}

async fn open_approved(stack: &Stack, name: &str, delay: &str) -> u64 {
    let n = stack
        .open_pr(
            name,
            &[(&format!("src/{name}.txt"), "ok\n"), ("delay", delay)],
            name,
        )
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, n, "alice", "APPROVED")
        .await
        .unwrap();
    n
}

/// sluice's answers on PR `n` (comments by someone other than the people
/// of these tests).
fn answers(stack: &Stack, n: u64) -> Vec<String> {
    stack
        .hub
        .comments(DEMO_REPO, n)
        .into_iter()
        .filter(|c| !["alice", "bob", "mallory", "carol"].contains(&c.user.as_str()))
        .map(|c| c.body)
        .collect()
}

fn reacted(stack: &Stack, comment: u64) -> bool {
    stack
        .hub
        .reactions(DEMO_REPO, comment)
        .iter()
        .any(|r| r.content == "+1")
}

async fn wait(stack: &Stack, what: &str, check: impl FnMut(&Stack) -> bool) {
    stack
        .wait_for(what, Duration::from_secs(60), check)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_writers_merge_lands_a_readers_is_refused_and_a_quoted_one_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stack = command_stack(dir.path(), 0).await;
    let n = open_approved(&stack, "by-command", "0").await;
    wait(&stack, "the PR passes and waits for /merge", |s| {
        s.status_of(n)
            .and_then(|st| st.description)
            .is_some_and(|d| d.ends_with("waits for /merge from someone with write access"))
    })
    .await;
    // A reader's /merge: a reply that says why; nothing lands.
    stack
        .hub
        .comment(DEMO_REPO, n, "mallory", "/merge please")
        .unwrap();
    stack
        .hub
        .comment(DEMO_REPO, n, "mallory", "/merge")
        .unwrap();
    wait(&stack, "sluice answers the reader", |s| {
        answers(s, n)
            .iter()
            .any(|a| a.contains("@mallory cannot /merge here"))
    })
    .await;
    let replies = answers(&stack, n);
    assert_eq!(replies.len(), 2, "one answer per comment: {replies:?}");
    assert!(
        replies[0].contains("did not run `/merge please`: /merge takes no argument"),
        "{replies:?}"
    );
    // A quoted /merge and one in a code block, by a writer: no answer.
    let quoted = stack
        .hub
        .comment(
            DEMO_REPO,
            n,
            "alice",
            "> /merge\n\nas they said, but:\n```\n/merge\n```",
        )
        .unwrap();
    // A writer's /merge: a reaction, and the PR lands.
    let merge = stack.hub.comment(DEMO_REPO, n, "alice", "/merge").unwrap();
    wait(&stack, "the PR lands after alice's /merge", |s| {
        s.hub.pr(DEMO_REPO, n).is_some_and(|p| p.merged)
    })
    .await;
    wait(&stack, "a reaction to alice's /merge", |s| {
        reacted(s, merge)
    })
    .await;
    assert!(!reacted(&stack, quoted), "a quoted /merge is not a command");
    assert_eq!(answers(&stack, n).len(), 2, "nothing more was said");
    stack.sluice.stop().await;
}

#[tokio::test]
async fn hold_cancel_and_retest_work_and_a_hundred_commands_get_one_answer() {
    let dir = tempfile::tempdir().unwrap();
    let stack = command_stack(dir.path(), 2).await;
    let held = open_approved(&stack, "held", "1").await;
    let other = open_approved(&stack, "other", "1").await;
    // /hold first, then /merge: it stays out until /unhold.
    stack
        .hub
        .comment(DEMO_REPO, held, "alice", "/hold\n/merge")
        .unwrap();
    let go = stack
        .hub
        .comment(DEMO_REPO, other, "bob", "/merge")
        .unwrap();
    wait(&stack, "the other PR lands", |s| {
        s.hub.pr(DEMO_REPO, other).is_some_and(|p| p.merged)
    })
    .await;
    assert!(reacted(&stack, go));
    assert!(!stack.hub.pr(DEMO_REPO, held).unwrap().merged, "held");
    let view = stack.get_json(&format!("/status?pr={held}")).await.unwrap();
    assert!(
        view.to_string().contains("held by @alice (/hold)"),
        "the JSON says why: {view}"
    );
    // /retest by the PR's author (carol, who has no write access): allowed.
    let retest = stack
        .hub
        .comment(DEMO_REPO, held, "carol", "/retest")
        .unwrap();
    wait(&stack, "a reaction to the author's /retest", |s| {
        reacted(s, retest)
    })
    .await;
    // 100 lines of commands: one answer, which says what was not read.
    let mut body = String::new();
    for k in 0..100 {
        body.push_str(if k % 2 == 0 {
            "/hold\n"
        } else {
            "/frobnicate\n"
        });
    }
    stack.hub.comment(DEMO_REPO, held, "bob", &body).unwrap();
    wait(&stack, "one answer to 100 commands", |s| {
        answers(s, held).iter().any(|a| a.contains("were not read"))
    })
    .await;
    // /unhold: it lands.
    let unhold = stack
        .hub
        .comment(DEMO_REPO, held, "alice", "/unhold")
        .unwrap();
    wait(&stack, "the held PR lands after /unhold", |s| {
        s.hub.pr(DEMO_REPO, held).is_some_and(|p| p.merged)
    })
    .await;
    assert!(reacted(&stack, unhold));
    assert_eq!(
        answers(&stack, held).len(),
        1,
        "{:?}",
        answers(&stack, held)
    );
    stack.sluice.stop().await;
}

#[tokio::test]
async fn cancel_takes_a_pr_out_of_the_train_and_stops_its_build() {
    let dir = tempfile::tempdir().unwrap();
    let stack = command_stack(dir.path(), 2).await;
    let n = open_approved(&stack, "cancelled", "30").await;
    stack.hub.comment(DEMO_REPO, n, "alice", "/merge").unwrap();
    wait(&stack, "its car's test runs", |s| {
        s.status_of(n)
            .and_then(|st| st.description)
            .is_some_and(|d| d.contains("in the train"))
    })
    .await;
    let cancel = stack.hub.comment(DEMO_REPO, n, "bob", "/cancel").unwrap();
    wait(&stack, "a reaction to /cancel", |s| reacted(s, cancel)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let history = stack.get_json("/history").await.unwrap();
        let cancelled = history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "build_cancelled");
        if cancelled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no build cancelled: {history}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = stack.get_json(&format!("/status?pr={n}")).await.unwrap();
    assert!(
        view.to_string()
            .contains("taken out of the train by @bob (/cancel)"),
        "{view}"
    );
    assert_eq!(view["prs"][0]["train_position"], serde_json::Value::Null);
    stack.sluice.stop().await;
}
