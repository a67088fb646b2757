//! End to end: sluice in-process over real HTTP against the project's fake
//! GitHub, with real git repositories, real test processes and real signed
//! webhooks. Each test asserts what a user would see on GitHub and in the
//! JSON endpoints.

use sluice::demo::{DEMO_REPO, Stack};
use sluice::fakehub::Fault;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

async fn stack(dir: &Path) -> Stack {
    stack_with(dir, |_| {}).await
}

async fn stack_with(dir: &Path, tweak: impl FnOnce(&mut sluice::config::Config)) -> Stack {
    Stack::start(dir, "127.0.0.1:0".parse().unwrap(), tweak)
        .await
        .expect("stack starts")
}

fn state_of(stack: &Stack, pr: u64) -> Option<String> {
    stack.status_of(pr).map(|s| s.state)
}

fn merged(stack: &Stack, pr: u64) -> bool {
    stack.hub.pr(DEMO_REPO, pr).is_some_and(|p| p.merged)
}

/// Builds that finished for a PR (newest first), from GET /history.
async fn builds_of(stack: &Stack, pr: u64) -> Vec<serde_json::Value> {
    let history = stack
        .get_json(&format!("/history?repo={DEMO_REPO}&pr={pr}"))
        .await
        .unwrap();
    history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "build_finished")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_passing_pr_gets_success_with_a_working_link_and_merges_once_approved() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path()).await;
    let pr = stack
        .open_pr(
            "feature",
            &[("src/feature.txt", "works\n")],
            "Add a feature",
        )
        .await
        .unwrap();
    stack
        .wait_for("success", WAIT, |s| {
            state_of(s, pr).as_deref() == Some("success")
        })
        .await
        .unwrap();
    let status = stack.status_of(pr).unwrap();
    let link = status.target_url.expect("the status links to the results");
    assert!(link.starts_with(&stack.sluice.url()), "{link}");
    assert!(status.description.unwrap().starts_with("passed with main@"));

    // The link serves the build's page, and the page's log is the test's.
    let page = stack.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("passed") || html.contains("Passed"), "{html}");
    let log = stack
        .http
        .get(format!("{link}log.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), 200);
    let log = log.text().await.unwrap();
    assert!(log.contains("all good"), "{log}");
    let result: serde_json::Value = stack
        .http
        .get(format!("{link}result.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["report"]["outcome"], "passed");

    // Passing but not approved: listed as passing, not ready, not merged.
    let passing = stack.get_json("/passing").await.unwrap();
    assert_eq!(passing["prs"][0]["number"], pr);
    assert_eq!(
        stack.get_json("/ready-for-merge").await.unwrap()["prs"],
        serde_json::json!([])
    );
    assert!(!merged(&stack, pr));

    // A review from someone without write access does not count.
    stack
        .hub
        .review(DEMO_REPO, pr, "mallory", "APPROVED")
        .await
        .unwrap();
    stack.hub.idle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!merged(&stack, pr));
    assert_eq!(
        stack.get_json("/review-status").await.unwrap()["prs"],
        serde_json::json!([])
    );

    // Approved after passing: merged without a re-test, guarded by the
    // tested head.
    let head = stack.head_of(pr).unwrap();
    stack
        .hub
        .review(DEMO_REPO, pr, "alice", "APPROVED")
        .await
        .unwrap();
    stack
        .wait_for("merge", WAIT, |s| merged(s, pr))
        .await
        .unwrap();
    let merges = stack.hub.merges();
    assert_eq!(merges.len(), 1);
    assert_eq!(merges[0].head_sha, head);
    assert_eq!(
        builds_of(&stack, pr).await.len(),
        1,
        "no re-test before the merge"
    );
    let main = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    assert_eq!(main, merges[0].merge_sha);

    // The history answers "when did this commit land and on which test"
    // (once sluice has heard GitHub's answer to the merge).
    let deadline = tokio::time::Instant::now() + WAIT;
    let landed = loop {
        let history = stack
            .get_json(&format!("/history?sha={}", head.short()))
            .await
            .unwrap();
        if let Some(entry) = history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "merged")
        {
            break entry.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no merge record: {history}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(landed["merge_sha"], main.as_str());
    assert_eq!(landed["approvers"], serde_json::json!(["alice"]));
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_failing_pr_gets_failure_and_is_never_merged() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path()).await;
    let pr = stack
        .open_pr("broken", &[("src/broken.txt", "a BUG\n")], "Break things")
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, pr, "alice", "APPROVED")
        .await
        .unwrap();
    stack
        .wait_for("failure", WAIT, |s| {
            state_of(s, pr).as_deref() == Some("failure")
        })
        .await
        .unwrap();
    let (code, body) = stack.request("/try-merge", pr).await.unwrap();
    assert_eq!(code, 409);
    assert!(
        body["reasons"][0].as_str().unwrap().contains("failed"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!merged(&stack, pr));
    assert!(stack.hub.merges().is_empty());
    let status = stack.get_json("/status").await.unwrap();
    assert_eq!(status["prs"][0]["phase"], "failed");
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_push_to_a_pr_cancels_its_running_job_and_tests_the_new_head() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path()).await;
    let pr = stack
        .open_pr("slow", &[("src/slow.txt", "ok\n"), ("delay", "60")], "Slow")
        .await
        .unwrap();
    let old_head = stack.head_of(pr).unwrap();
    stack
        .wait_for("the job to run", WAIT, |s| {
            s.status_of(pr)
                .and_then(|st| st.description)
                .is_some_and(|d| d.starts_with("testing"))
        })
        .await
        .unwrap();
    stack
        .hub
        .commit(DEMO_REPO, "slow", None, &[("delay", "0")], "faster")
        .await
        .unwrap();
    let new_head = stack.head_of(pr).unwrap();
    assert_ne!(old_head, new_head);
    stack
        .wait_for("the new head to pass", WAIT, |s| {
            state_of(s, pr).as_deref() == Some("success")
        })
        .await
        .unwrap();
    let history = stack.get_json(&format!("/history?pr={pr}")).await.unwrap();
    let cancelled: Vec<_> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "build_cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1, "{history}");
    assert_eq!(
        cancelled[0]["candidate"]["prs"][0]["head_sha"],
        old_head.as_str()
    );
    // The old head never got a verdict.
    let old = stack.hub.statuses(DEMO_REPO, old_head.as_str());
    assert!(old.iter().all(|s| s.state == "pending"), "{old:?}");
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_push_to_the_target_retests_every_pr_on_it_approved_first() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_with(dir.path(), |c| c.repos[0].max_concurrent_builds = 1).await;
    let a = stack
        .open_pr("a", &[("src/a.txt", "a\n")], "A")
        .await
        .unwrap();
    let b = stack
        .open_pr("b", &[("src/b.txt", "b\n")], "B")
        .await
        .unwrap();
    // The newest PR is approved but fails, so it stays open.
    let c = stack
        .open_pr("c", &[("src/c.txt", "BUG\n")], "C")
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, c, "alice", "APPROVED")
        .await
        .unwrap();
    stack
        .wait_for("all three tested", WAIT, |s| {
            state_of(s, a).as_deref() == Some("success")
                && state_of(s, b).as_deref() == Some("success")
                && state_of(s, c).as_deref() == Some("failure")
        })
        .await
        .unwrap();
    let new_main = stack
        .hub
        .commit(
            DEMO_REPO,
            "main",
            None,
            &[("README", "moved\n")],
            "direct push",
        )
        .await
        .unwrap();
    stack
        .wait_for("all three re-tested", WAIT, |s| {
            [a, b, c].iter().all(|&pr| {
                s.status_of(pr)
                    .and_then(|st| st.description)
                    .is_some_and(|d| {
                        d.contains(new_main.short())
                            && !d.starts_with("testing")
                            && !d.starts_with("queued")
                    })
            })
        })
        .await
        .unwrap();
    // One build at a time, so the finish order is the start order.
    let history = stack
        .get_json(&format!("/history?sha={}", new_main.short()))
        .await
        .unwrap();
    let mut order: Vec<(u64, u64)> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "build_finished")
        .map(|e| {
            (
                e["report"]["started_at"].as_u64().unwrap(),
                e["candidate"]["prs"][0]["number"].as_u64().unwrap(),
            )
        })
        .collect();
    order.sort();
    let prs: Vec<u64> = order.iter().map(|(_, n)| *n).collect();
    assert_eq!(prs, vec![c, a, b], "approved first, then oldest");
    stack.sluice.stop().await;
}

#[tokio::test]
async fn retest_and_try_merge_work_and_refuse_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path()).await;
    let pr = stack
        .open_pr("f", &[("src/f.txt", "f\n")], "F")
        .await
        .unwrap();
    stack
        .wait_for("success", WAIT, |s| {
            state_of(s, pr).as_deref() == Some("success")
        })
        .await
        .unwrap();

    let (code, body) = stack.request("/try-merge", pr).await.unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("not approved"),
        "{body}"
    );
    assert_eq!(stack.request("/try-merge", 999).await.unwrap().0, 404);
    assert_eq!(stack.request("/retest", 999).await.unwrap().0, 404);

    let (code, body) = stack.request("/retest", pr).await.unwrap();
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["answer"], "retest_queued");
    let deadline = tokio::time::Instant::now() + WAIT;
    while builds_of(&stack, pr).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retest ran no build"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // GitHub refuses the first merge (405); sluice waits for a person.
    stack.hub.inject_fault(Fault::Status {
        method: Some("PUT".into()),
        path_prefix: format!("/repos/{DEMO_REPO}/pulls/{pr}/merge"),
        status: 405,
        retry_after: None,
        times: 1,
    });
    stack
        .wait_for("success again", WAIT, |s| {
            state_of(s, pr).as_deref() == Some("success")
        })
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, pr, "bob", "APPROVED")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = stack.request("/try-merge", pr).await.unwrap();
        if code == 409
            && body["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains("refused"))
        {
            break; // the refusal is reported; this try-merge cleared it
        }
        if code == 202 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{code} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !merged(&stack, pr) {
        let (code, _) = stack.request("/try-merge", pr).await.unwrap();
        assert!(code == 202 || code == 409 || code == 404);
        assert!(tokio::time::Instant::now() < deadline, "never merged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stack.hub.merges().len(), 1);
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_hostile_branch_name_runs_nothing_but_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path()).await;
    let branch = "$(touch${IFS}pwned)";
    let pr = stack
        .open_pr(
            branch,
            &[("src/x.txt", "x\n")],
            "$(touch${IFS}pwned) <script>alert(1)</script>",
        )
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, pr, "alice", "APPROVED")
        .await
        .unwrap();
    stack
        .wait_for("merge", WAIT, |s| merged(s, pr))
        .await
        .unwrap();
    let log_url = stack
        .hub
        .statuses(DEMO_REPO, stack.head_of(pr).unwrap().as_str())
        .into_iter()
        .rev()
        .find_map(|s| s.target_url)
        .unwrap();
    let log = stack
        .http
        .get(format!("{log_url}log.txt"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("all good"), "{log}");
    for root in [dir.path(), Path::new("."), &std::env::temp_dir()] {
        assert!(
            !find(root, "pwned", 6),
            "a file named pwned appeared under {}",
            root.display()
        );
    }
    stack.sluice.stop().await;
}

fn find(dir: &Path, name: &str, depth: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name() == name
            || (depth > 0
                && e.file_type().is_ok_and(|t| t.is_dir())
                && find(&e.path(), name, depth - 1))
    })
}

#[tokio::test]
async fn a_lost_webhook_is_healed_by_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_with(dir.path(), |c| c.reconcile.interval_secs = 1).await;
    stack.hub.idle().await;
    // Deliveries go nowhere from now on, like lost webhooks.
    stack.hub.set_webhook("http://127.0.0.1:9/webhook", "x");
    let pr = stack
        .open_pr("lost", &[("src/l.txt", "l\n")], "Lost")
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, pr, "alice", "APPROVED")
        .await
        .unwrap();
    stack
        .wait_for("merge", WAIT, |s| merged(s, pr))
        .await
        .unwrap();
    let metrics = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let drift = metrics
        .lines()
        .find(|l| l.starts_with("sluice_reconcile_drift_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(drift >= 1.0, "drift not counted:\n{metrics}");
    stack.sluice.stop().await;
}
