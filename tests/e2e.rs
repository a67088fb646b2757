//! End to end: sluice in-process over real HTTP against the project's fake
//! GitHub, with real git repositories, real test processes and real signed
//! webhooks. Each test asserts what a user would see on GitHub and in the
//! JSON endpoints.
//!
//! Every scenario runs on each backend (see `Backend`), as its own test:
//! `local::<scenario>`, `kubernetes::<scenario>` and `gcs::<scenario>`.
//!
//! These run serial mode (`train_depth = 0`: GitHub merges, and every PR
//! is re-tested when its target moves); the merge train, the default, has
//! its own end-to-end tests (`train_e2e.rs`, `chaos_train.rs`, the
//! Kubernetes executor's in `executor_kubernetes.rs`, `demo.rs`).

#[path = "support/fake_kube.rs"]
mod fake_kube;
#[path = "support/gcs_emulator.rs"]
mod gcs_emulator;

use fake_kube::FakeKube;
use gcs_emulator::{Emulator, create_bucket};
use sluice::config::{Config, ExecutorKind, GcsConfig, GcsLink, ResultsKind};
use sluice::demo::{DEMO_REPO, Stack};
use sluice::fakehub::Fault;
use std::path::{Path, PathBuf};

use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------- backends

/// Where sluice runs its jobs and keeps its results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// Local executor, local results directory.
    Local,
    /// Kubernetes executor against the fake API server (reached through a
    /// kubeconfig; its fake kubelet runs the Jobs as local processes), local
    /// results.
    Kubernetes,
    /// Local executor, results in the GCS emulator, linked through sluice's
    /// own `/results/` route (which reads the spool, then the bucket).
    Gcs,
}

const KUBE_NAMESPACE: &str = "sluice-e2e";

/// A running stack on one backend, and what it needs kept alive.
struct Env {
    stack: Stack,
    /// The fake cluster (Kubernetes backend).
    kube: Option<FakeKube>,
    /// The bucket (GCS backend).
    bucket: Option<String>,
    _emulator: Option<Emulator>,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl Env {
    /// The demo stack on `backend`; `tweak` changes the configuration
    /// further (after the backend's settings).
    async fn start(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut kube = None;
        let mut bucket = None;
        let mut emulator = None;
        let setup: Box<dyn FnOnce(&mut Config)> = match backend {
            Backend::Local => Box::new(|_| {}),
            Backend::Kubernetes => {
                let fake = FakeKube::new(KUBE_NAMESPACE).with_kubelet(&dir.path().join("kubelet"));
                let kubeconfig = fake.clone().serve_http(dir.path()).await;
                kube = Some(fake);
                Box::new(move |c| {
                    c.executor.kind = ExecutorKind::Kubernetes;
                    let k = &mut c.executor.kubernetes;
                    k.kubeconfig = Some(kubeconfig);
                    k.namespace = KUBE_NAMESPACE.into();
                    k.relist_interval_secs = 2;
                })
            }
            Backend::Gcs => {
                let emu = gcs_emulator::emulator().await;
                let name = format!("sluice-e2e-{:016x}", rand::random::<u64>());
                create_bucket(&emu.url, &name).await;
                let gcs = GcsConfig {
                    bucket: name.clone(),
                    prefix: "e2e".into(),
                    endpoint: Some(emu.url.clone()),
                    link: GcsLink::Sluice,
                    public_base: emu.url.clone(),
                    upload_retries: 1,
                    request_timeout_secs: 5,
                    retry_interval_secs: 1,
                };
                bucket = Some(name);
                emulator = Some(emu);
                Box::new(move |c| {
                    c.results.kind = ResultsKind::Gcs;
                    c.results.gcs = Some(gcs);
                })
            }
        };
        let stack = Stack::start(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
            c.repos[0].train_depth = 0;
            setup(c);
            tweak(c);
        })
        .await
        .expect("stack starts");
        Env {
            stack,
            kube,
            bucket,
            _emulator: emulator,
            dir,
        }
    }

    async fn stop(self) {
        self.stack.sluice.stop().await;
    }
}

/// Runs each scenario (an `async fn(Backend)`) once per backend, each as
/// its own test.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Backend::Local).await
            })*
        }
        mod kubernetes {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Backend::Kubernetes).await
            })*
        }
        mod gcs {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Backend::Gcs).await
            })*
        }
    };
}

on_every_backend!(
    a_passing_pr_gets_success_with_a_working_link_and_merges_once_approved,
    a_failing_pr_gets_failure_and_is_never_merged,
    a_push_to_a_pr_cancels_its_running_job_and_tests_the_new_head,
    a_push_to_the_target_retests_every_pr_on_it_approved_first,
    retest_and_try_merge_work_and_refuse_correctly,
    a_hostile_branch_name_runs_nothing_but_the_test,
    a_lost_webhook_is_healed_by_reconcile,
    a_running_build_page_shows_its_log_as_it_grows,
);

// ---------------------------------------------------------------- GCS emulator

/// Names of the objects in a bucket (emulator JSON API).
async fn objects_in(url: &str, bucket: &str) -> Vec<String> {
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/storage/v1/b/{bucket}/o"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str().map(String::from))
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

// ---------------------------------------------------------------- helpers

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

// ---------------------------------------------------------------- scenarios

async fn a_passing_pr_gets_success_with_a_working_link_and_merges_once_approved(backend: Backend) {
    let stack = Env::start(backend, |_| {}).await;
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
    if let (Some(bucket), Some(emulator)) = (&stack.bucket, &stack._emulator) {
        // What the link served came from the bucket: the build's files were
        // uploaded before the status was set, and the spool is empty.
        let spooled = files_under(&stack.config.results.dir);
        assert!(spooled.is_empty(), "left in the spool: {spooled:?}");
        let objects = objects_in(&emulator.url, bucket).await;
        for file in ["index.html", "log.txt", "result.json"] {
            assert!(
                objects.iter().any(|o| o.ends_with(&format!("/{file}"))),
                "{file} not in the bucket: {objects:?}"
            );
        }
    }

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
    assert_eq!(landed["pair"]["head"], head.as_str());
    assert_eq!(
        landed["link"],
        link.as_str(),
        "the merge record links to the tested build"
    );
    stack.stop().await;
}

async fn a_failing_pr_gets_failure_and_is_never_merged(backend: Backend) {
    let stack = Env::start(backend, |_| {}).await;
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
    stack.stop().await;
}

async fn a_push_to_a_pr_cancels_its_running_job_and_tests_the_new_head(backend: Backend) {
    let stack = Env::start(backend, |_| {}).await;
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
    stack.stop().await;
}

async fn a_running_build_page_shows_its_log_as_it_grows(backend: Backend) {
    let stack = Env::start(backend, |_| {}).await;
    let pr = stack
        .open_pr(
            "slowlog",
            &[("src/slow.txt", "ok\n"), ("delay", "4")],
            "Slow log",
        )
        .await
        .unwrap();
    stack
        .wait_for("the job to run", WAIT, |s| {
            s.status_of(pr)
                .and_then(|st| st.description)
                .is_some_and(|d| d.starts_with("testing"))
        })
        .await
        .unwrap();
    let link = stack.status_of(pr).unwrap().target_url.unwrap();
    // The check script prints what it tests, then sleeps: while it sleeps
    // the build's own page shows that line.
    let said = format!("testing {DEMO_REPO} PR {pr}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let page = loop {
        let page = stack
            .http
            .get(&link)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if page.contains(&said) {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the running page never showed the log: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(page.contains("id=\"log\""), "{page}");
    assert!(page.contains("Running for"), "{page}");
    assert!(
        page.contains("#") && page.contains("slowlog"),
        "the PR list: {page}"
    );
    // Live logs open at once are bounded: one more than the limit is a
    // 503.
    let client = reqwest::Client::new();
    let mut open = Vec::new();
    for _ in 0..sluice::http::live::MAX_STREAMS {
        let r = client
            .get(format!("{link}live?from=0"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let refused = client
        .get(format!("{link}live?from=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let message: serde_json::Value = refused.json().await.unwrap();
    assert!(
        message["error"].as_str().unwrap().contains("live logs"),
        "{message}"
    );
    // One of them, the live log from the start, is read until the build
    // ends.
    let mut live = open.pop().unwrap();
    drop(open);
    let mut body = String::new();
    while !body.contains("\"end\":true") {
        let chunk = tokio::time::timeout(WAIT, live.chunk())
            .await
            .expect("the live log moves or ends")
            .unwrap()
            .expect("the stream ends with an end event");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<serde_json::Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    let text: String = events.iter().filter_map(|e| e["text"].as_str()).collect();
    assert!(text.contains(&said), "{events:?}");
    assert_eq!(events.last().unwrap()["page"], link.as_str());
    // Then the page is the finished one, with the whole log.
    stack
        .wait_for("the build to pass", WAIT, |s| {
            state_of(s, pr).as_deref() == Some("success")
        })
        .await
        .unwrap();
    let done = stack
        .http
        .get(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        done.contains("all good") && done.contains("passed"),
        "{done}"
    );
    // A finished build's live log ends at once.
    let after = client
        .get(format!("{link}live"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(after.contains("\"end\":true"), "{after}");
    stack.stop().await;
}

async fn a_push_to_the_target_retests_every_pr_on_it_approved_first(backend: Backend) {
    let stack = Env::start(backend, |c| c.repos[0].max_concurrent_builds = 1).await;
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
    stack.stop().await;
}

async fn retest_and_try_merge_work_and_refuse_correctly(backend: Backend) {
    let stack = Env::start(backend, |_| {}).await;
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
    stack.stop().await;
}

async fn a_hostile_branch_name_runs_nothing_but_the_test(backend: Backend) {
    let stack = Env::start(backend, |_| {}).await;
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
    // The merged head's last word from sluice is its passing build.
    let statuses = stack
        .hub
        .statuses(DEMO_REPO, stack.head_of(pr).unwrap().as_str());
    let last = statuses.last().expect("a status");
    assert_eq!(last.state, "success", "{statuses:#?}");
    let log_url = last.target_url.clone().unwrap();
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
    if let Some(kube) = &stack.kube {
        // On a cluster, the branch reaches the pod as data only: never in a
        // command or argument, and labels stay valid label values.
        let creates = kube.requests_to(
            http::Method::POST,
            &format!("/namespaces/{KUBE_NAMESPACE}/jobs"),
        );
        assert!(!creates.is_empty());
        for job in creates.iter().filter_map(|r| r.body.as_ref()) {
            let spec = &job["spec"]["template"]["spec"];
            let containers = spec["initContainers"]
                .as_array()
                .into_iter()
                .chain(spec["containers"].as_array())
                .flatten();
            let mut head_refs = Vec::new();
            for c in containers {
                for field in ["command", "args"] {
                    let argv = c[field].to_string();
                    assert!(!argv.contains("pwned"), "{field} of {}: {argv}", c["name"]);
                }
                head_refs.extend(
                    c["env"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|e| e["name"] == "SLUICE_HEAD_REF")
                        .map(|e| e["value"].clone()),
                );
            }
            assert!(!head_refs.is_empty(), "no SLUICE_HEAD_REF in {job}");
            assert!(head_refs.iter().all(|v| v == branch), "{head_refs:?}");
            for (k, v) in job["metadata"]["labels"].as_object().unwrap() {
                let v = v.as_str().unwrap();
                assert!(
                    v.len() <= 63
                        && v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                    "label {k}={v:?}"
                );
            }
        }
    }
    for root in [stack.dir.path(), Path::new("."), &std::env::temp_dir()] {
        assert!(
            !find(root, "pwned", 6),
            "a file named pwned appeared under {}",
            root.display()
        );
    }
    stack.stop().await;
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

async fn a_lost_webhook_is_healed_by_reconcile(backend: Backend) {
    let stack = Env::start(backend, |c| c.reconcile.interval_secs = 1).await;
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
    stack.stop().await;
}
