//! sluice as a GitHub App, end to end over real HTTP against the fake
//! GitHub: JWTs signed by octocrab, verified by the fake; installation
//! tokens per account, renewed before they expire and minted anew after a
//! 401; a key that is not the App's refused at startup; a repository the
//! App is not installed on named in the error.

use sluice::config::Config;
use sluice::core::RepoName;
use sluice::demo::{CHECK_SCRIPT, DEMO_APP_ID, DEMO_REPO, Stack};
use sluice::fakehub::{AppKeys, FakeHub, Fault, JWT_UNDECODABLE};
use sluice::forge::Forge;
use sluice::forge::github::GitHub;
use sluice::forge::github::app::{AppKey, INSTALLATION_RECHECK};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);
/// A second account with its own installation.
const ACME_REPO: &str = "acme/widgets";
const OTHER_REPO: &str = "octo/other";

/// Merged, and the move of main recorded (the fake marks the PR merged
/// just before it logs the move).
fn merged(stack: &Stack, repo: &str, pr: u64) -> bool {
    stack.hub.pr(repo, pr).is_some_and(|p| p.merged)
        && stack.hub.branch_moves(repo).iter().any(|m| {
            m.branch == "main" && m.after == stack.hub.pr(repo, pr).and_then(|p| p.merge_commit_sha)
        })
}

/// Alice approves `pr` of the demo repository; waits until it is merged.
async fn approve_and_wait_for_the_merge(stack: &Stack, pr: u64) {
    stack
        .hub
        .review(DEMO_REPO, pr, "alice", "APPROVED")
        .await
        .unwrap();
    stack
        .wait_for("the merge", WAIT, |s| merged(s, DEMO_REPO, pr))
        .await
        .unwrap();
}

fn installation(stack: &Stack, repo: &str) -> u64 {
    stack
        .hub
        .installation_of(repo)
        .unwrap_or_else(|| panic!("the App is installed on {repo}"))
}

async fn metrics(stack: &Stack) -> String {
    stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of a counter family's samples (0 when it has none).
fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// No GitHub call failed as far as the core could see: no forge error and
/// no failed merge.
async fn assert_no_failed_calls(stack: &Stack) {
    let m = metrics(stack).await;
    assert_eq!(
        counter_sum(&m, "sluice_forge_errors_total"),
        0.0,
        "failed GitHub calls reached the core:\n{m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("sluice_merges_total") && l.contains("fail")),
        "{m}"
    );
}

/// The installation tokens sluice minted for its own calls (not the jobs'
/// clone tokens, which are narrowed to one repository).
fn call_tokens(hub: &FakeHub, inst: u64) -> Vec<sluice::fakehub::InstallationTokenView> {
    hub.installation_tokens(inst)
        .into_iter()
        .filter(|t| t.repositories.is_none())
        .collect()
}

/// Calls with the hub's personal token: none, when sluice runs as the App
/// (it was given the token too).
fn assert_no_personal_token(stack: &Stack) {
    assert_eq!(
        stack.hub.rate_limit_used(),
        0,
        "sluice used the personal token although it runs as an App"
    );
}

/// Opens a PR on `repo` from `branch` writing `files` on main, by carol.
async fn open_pr(hub: &FakeHub, repo: &str, branch: &str, files: &[(&str, &str)]) -> u64 {
    hub.commit(repo, branch, Some("main"), files, branch)
        .await
        .unwrap();
    hub.open_pr(repo, branch, "main", branch, "carol")
        .await
        .unwrap()
}

/// The demo fake with App [`DEMO_APP_ID`] installed on the demo repository.
async fn app_hub(dir: &std::path::Path) -> (FakeHub, AppKeys, u64) {
    let hub = Stack::demo_hub(dir).await.unwrap();
    let keys = hub.register_app(DEMO_APP_ID).unwrap();
    let inst = hub.install_app(DEMO_APP_ID, "octo", &[DEMO_REPO]).unwrap();
    (hub, keys, inst)
}

/// The GitHub adapter alone, as the App, against `hub` (the key in a file
/// under `dir`).
async fn app_adapter(hub: &FakeHub, keys: &AppKeys, dir: &std::path::Path) -> GitHub {
    app_adapter_with(hub, keys, dir, |_| {}).await
}

async fn app_adapter_with(
    hub: &FakeHub,
    keys: &AppKeys,
    dir: &std::path::Path,
    change: impl FnOnce(&mut Config),
) -> GitHub {
    let path = dir.join("adapter-key.pem");
    std::fs::write(&path, &keys.private_key_pem).unwrap();
    let mut config = sluice::demo::demo_config(hub, dir, "http://127.0.0.1:9");
    change(&mut config);
    config.github.app = Some(sluice::config::GithubAppConfig::with_key_file(
        keys.app_id,
        path,
    ));
    let key = AppKey::load(config.github.app.as_ref().unwrap()).expect("the key loads");
    GitHub::new_app(&config.github, key)
        .expect("client")
        .with_backoff_base(Duration::from_millis(10))
}

#[tokio::test]
async fn as_an_app_an_approved_passing_pr_lands_with_installation_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start_app(dir.path(), "127.0.0.1:0".parse().unwrap(), |_| {})
        .await
        .expect("sluice starts as the App");
    let inst = installation(&stack, DEMO_REPO);
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
            s.status_of(pr).is_some_and(|st| st.state == "success")
        })
        .await
        .unwrap();
    approve_and_wait_for_the_merge(&stack, pr).await;

    // The App's installation did the work: its tokens, its rate limit, and
    // GitHub records the merge as the App's bot.
    let tokens = stack.hub.installation_tokens(inst);
    assert!(!tokens.is_empty(), "no installation token was minted");
    assert!(stack.hub.installation_rate_limit_used(inst) > 0);
    assert_no_personal_token(&stack);
    let moved = stack.hub.branch_moves(DEMO_REPO);
    let landing = moved
        .iter()
        .rev()
        .find(|m| m.branch == "main")
        .expect("main moved");
    assert_eq!(landing.pusher, "sluice[bot]", "{landing:?}");
    // One token sufficed for sluice's calls (an hour's lifetime): not one
    // per call. The others are the jobs' clone tokens, one per build,
    // narrowed to the one repository.
    let (calls, clones): (Vec<_>, Vec<_>) = tokens.iter().partition(|t| t.repositories.is_none());
    assert_eq!(calls.len(), 1, "{tokens:?}");
    assert!(!clones.is_empty(), "{tokens:?}");
    for t in clones {
        assert_eq!(t.repositories, Some(vec![DEMO_REPO.to_string()]), "{t:?}");
    }
    // Every call was the App's (`/app…`) or a repository's; none refused.
    for r in stack.hub.requests() {
        assert!(
            r.path.starts_with("/repos/") || r.path.starts_with("/app"),
            "{r:?}"
        );
        assert_ne!(r.status, 401, "{r:?}");
    }
    assert_no_failed_calls(&stack).await;
    stack.sluice.stop().await;
}

#[tokio::test]
async fn an_installation_token_expired_mid_run_is_renewed_without_a_failed_call() {
    let dir = tempfile::tempdir().unwrap();
    // Re-reads every second keep calls going while the test runs.
    let stack = Stack::start_app(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.reconcile.interval_secs = 1;
    })
    .await
    .unwrap();
    let inst = installation(&stack, DEMO_REPO);
    let pr = stack
        .open_pr(
            "slow",
            &[("src/slow.txt", "ok\n"), ("delay", "2")],
            "A slow test",
        )
        .await
        .unwrap();
    stack
        .wait_for("the test to run", WAIT, |s| {
            s.status_of(pr).is_some_and(|st| st.state == "pending")
        })
        .await
        .unwrap();
    let before = call_tokens(&stack.hub, inst).len();
    assert!(before >= 1);

    // The hour passes while the test runs: every token sluice holds is
    // refused from now on.
    let mark = stack.hub.request_mark();
    stack.hub.expire_installation_tokens(inst);
    approve_and_wait_for_the_merge(&stack, pr).await;

    // The expired token was used and refused (so the renewal was needed),
    // a new one minted, and nothing failed as far as the core saw.
    let refused: Vec<_> = stack
        .hub
        .requests_since(mark)
        .into_iter()
        .filter(|r| r.status == 401)
        .collect();
    assert!(!refused.is_empty(), "the expired token was never used");
    assert!(
        refused.iter().all(|r| r.path.starts_with("/repos/")),
        "{refused:?}"
    );
    let tokens = call_tokens(&stack.hub, inst);
    assert!(tokens.len() > before, "no new token: {tokens:?}");
    let live = tokens
        .iter()
        .filter(|t| t.expires_at > std::time::SystemTime::now())
        .count();
    assert!(live >= 1, "{tokens:?}");
    assert_no_failed_calls(&stack).await;
    assert_no_personal_token(&stack);
    stack.sluice.stop().await;
}

#[tokio::test]
async fn short_lived_installation_tokens_are_renewed_before_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, keys, inst) = app_hub(dir.path()).await;
    // octocrab renews a token with less than 30 s left: one of 31 s is
    // good for about a second, so a run of a few seconds needs several.
    hub.set_installation_token_lifetime(Duration::from_secs(31));
    let stack = Stack::start_app_on(hub, keys, dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.reconcile.interval_secs = 1;
    })
    .await
    .unwrap();
    let mark = stack.hub.request_mark();
    let pr = stack
        .open_pr(
            "renew",
            &[("src/renew.txt", "ok\n"), ("delay", "3")],
            "Renewals",
        )
        .await
        .unwrap();
    approve_and_wait_for_the_merge(&stack, pr).await;
    let tokens = call_tokens(&stack.hub, inst);
    assert!(tokens.len() >= 3, "tokens were not renewed: {tokens:?}");
    // Renewed ahead of time: no call was ever refused.
    let refused: Vec<_> = stack
        .hub
        .requests_since(mark)
        .into_iter()
        .filter(|r| r.status == 401)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert_no_failed_calls(&stack).await;
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_refused_installation_token_is_dropped_and_the_call_sent_once_more() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, keys, inst) = app_hub(dir.path()).await;
    let pr = open_pr(&hub, DEMO_REPO, "f", &[("src/f.txt", "f\n")]).await;
    let forge = app_adapter(&hub, &keys, dir.path()).await;
    let repo = RepoName::parse(DEMO_REPO).unwrap();
    let key = sluice::core::PrKey {
        repo: repo.clone(),
        number: pr,
    };
    forge.get_pr(&key).await.expect("a first call");
    assert_eq!(hub.installation_tokens(inst).len(), 1);

    // Each installation client repeats a 401 once itself (octocrab, with
    // a fresh token); the adapter then drops the client and sends the call
    // once more on a new one: three 401s in a row are absorbed...
    let path = format!("/repos/{DEMO_REPO}/pulls/{pr}");
    hub.inject_fault(Fault::status("GET", &path, 401, 3));
    let mark = hub.request_mark();
    let got = forge.get_pr(&key).await;
    assert!(got.is_ok(), "{got:?}");
    let sent: Vec<_> = hub
        .requests_since(mark)
        .into_iter()
        .filter(|r| r.path.starts_with(&path))
        .map(|r| r.status)
        .collect();
    // (The last is a 304: the adapter's ETag of the first call still holds.)
    assert!(
        sent.len() == 4 && sent[..3] == [401, 401, 401] && matches!(sent[3], 200 | 304),
        "{sent:?}"
    );
    assert_eq!(
        hub.installation_tokens(inst).len(),
        4,
        "a new token after each refusal"
    );

    // ... and four are not: the call is sent again once, not forever.
    hub.inject_fault(Fault::status("GET", &path, 401, 4));
    let err = forge
        .get_pr(&key)
        .await
        .expect_err("four 401s fail the call");
    let message = err.to_string();
    assert!(message.contains("401"), "{message}");
    assert!(message.contains(&path), "{message}");
}

#[tokio::test]
async fn a_key_the_app_does_not_have_is_refused_at_startup_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, keys, inst) = app_hub(dir.path()).await;
    // A well-formed RSA key, but not one of the App's: its JWTs are forged.
    let forged = AppKeys::unregistered(keys.app_id).unwrap();
    let err = match Stack::start_app_on(
        hub.clone(),
        forged.clone(),
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        |_| {},
    )
    .await
    {
        Ok(_) => panic!("sluice started with a key the App does not have"),
        Err(e) => format!("{e:#}"),
    };
    for needle in [
        "GitHub App 4242",
        "GET /app",
        "401",
        JWT_UNDECODABLE,
        "app-key.pem",
        "github.app.app_id",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    assert!(!err.contains("PRIVATE KEY"), "{err}");
    let body = forged
        .private_key_pem
        .lines()
        .nth(1)
        .expect("a PEM body line");
    assert!(!err.contains(body), "the error quotes the key: {err}");
    // It never got as far as a token.
    assert!(hub.installation_tokens(inst).is_empty());

    // The right key starts (the same fake, the same App), even while
    // GitHub fails the startup check (no verdict on the key: the calls
    // retry later).
    hub.inject_fault(Fault::status("GET", "/app", 502, 4));
    let stack = Stack::start_app_on(
        hub.clone(),
        keys,
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        |_| {},
    )
    .await
    .expect("the App's own key works");
    let failed = hub
        .requests()
        .iter()
        .filter(|r| r.path == "/app" && r.status == 502)
        .count();
    assert_eq!(failed, 4, "the startup check was retried, then given up");
    stack.sluice.stop().await;
}

#[tokio::test]
async fn two_installations_on_two_accounts_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Stack::demo_hub(dir.path()).await.unwrap();
    hub.create_repo(
        ACME_REPO,
        "main",
        &[("check.sh", CHECK_SCRIPT), ("src/main.txt", "hello\n")],
    )
    .await
    .unwrap();
    hub.set_permission(ACME_REPO, "alice", "write");
    let keys = hub.register_app(DEMO_APP_ID).unwrap();
    let octo = hub.install_app(DEMO_APP_ID, "octo", &[DEMO_REPO]).unwrap();
    let acme = hub.install_app(DEMO_APP_ID, "acme", &[ACME_REPO]).unwrap();
    assert_ne!(octo, acme);
    let stack = Stack::start_app_on(
        hub,
        keys,
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        |c: &mut Config| {
            let mut acme = c.repos[0].clone();
            acme.name = ACME_REPO.into();
            c.repos.push(acme);
        },
    )
    .await
    .unwrap();

    let a = open_pr(&stack.hub, DEMO_REPO, "a", &[("src/a.txt", "a\n")]).await;
    let b = open_pr(&stack.hub, ACME_REPO, "b", &[("src/b.txt", "b\n")]).await;
    for (repo, pr) in [(DEMO_REPO, a), (ACME_REPO, b)] {
        stack
            .hub
            .review(repo, pr, "alice", "APPROVED")
            .await
            .unwrap();
    }
    stack
        .wait_for("both merges", WAIT, |s| {
            merged(s, DEMO_REPO, a) && merged(s, ACME_REPO, b)
        })
        .await
        .unwrap();

    // Each account's calls went out with its own installation's tokens
    // (a token of one installation opens none of the other's repositories:
    // the fake answers 404, which would have failed a call).
    for (inst, repo) in [(octo, DEMO_REPO), (acme, ACME_REPO)] {
        assert!(
            !stack.hub.installation_tokens(inst).is_empty(),
            "no token for the installation on {repo}"
        );
        assert!(stack.hub.installation_rate_limit_used(inst) > 0, "{repo}");
        let landing = stack
            .hub
            .branch_moves(repo)
            .into_iter()
            .rev()
            .find(|m| m.branch == "main")
            .unwrap();
        assert_eq!(landing.pusher, "sluice[bot]", "{repo}: {landing:?}");
    }
    let octo_tokens = stack.hub.installation_tokens(octo);
    let acme_tokens = stack.hub.installation_tokens(acme);
    assert!(
        octo_tokens
            .iter()
            .all(|t| acme_tokens.iter().all(|u| u.token != t.token))
    );
    assert_no_personal_token(&stack);
    assert_no_failed_calls(&stack).await;
    stack.sluice.stop().await;
}

/// An installation lookup GitHub never answers does not hold up the start
/// check: it is given up after the request timeout, and looked up again
/// on the next call.
#[tokio::test]
async fn a_stalled_installation_lookup_does_not_hang_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, keys, inst) = app_hub(dir.path()).await;
    let forge = app_adapter_with(&hub, &keys, dir.path(), |c| {
        c.github.request_timeout_secs = 1;
    })
    .await;
    hub.inject_fault(Fault::SlowAnswer {
        method: Some("GET".into()),
        path_prefix: format!("/repos/{DEMO_REPO}/installation"),
        delay: Duration::from_secs(600),
        times: 1,
    });
    let demo = RepoName::parse(DEMO_REPO).unwrap();
    let me = tokio::time::timeout(
        Duration::from_secs(60),
        forge.verify_app(std::slice::from_ref(&demo)),
    )
    .await
    .expect("the start check returns though the lookup hangs")
    .expect("the App authenticates");
    assert_eq!(me.id, DEMO_APP_ID);
    assert_eq!(forge.installation_of(&demo).await, Ok(Some(inst)));
}

#[tokio::test]
async fn a_repository_the_app_is_not_installed_on_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, keys, inst) = app_hub(dir.path()).await;
    hub.create_repo(OTHER_REPO, "main", &[("README.md", "x\n")])
        .await
        .unwrap();
    let forge = app_adapter(&hub, &keys, dir.path()).await;
    let demo = RepoName::parse(DEMO_REPO).unwrap();
    let other = RepoName::parse(OTHER_REPO).unwrap();
    // Startup's check passes (the key is good) and only logs the missing
    // installation.
    let me = forge
        .verify_app(&[demo.clone(), other.clone()])
        .await
        .expect("the App authenticates");
    assert_eq!((me.id, me.slug.as_str()), (DEMO_APP_ID, "sluice"));
    assert_eq!(forge.installation_of(&demo).await, Ok(Some(inst)));
    assert_eq!(forge.installation_of(&other).await, Ok(None));

    let mark = hub.request_mark();
    let err = forge
        .list_open_prs(&other)
        .await
        .expect_err("not installed there");
    let message = err.to_string();
    for needle in [OTHER_REPO, "not installed", "4242", "404"] {
        assert!(message.contains(needle), "{needle:?} missing: {message}");
    }
    // Refused at once: one lookup, no retries, no call on the repository.
    let sent: Vec<_> = hub
        .requests_since(mark)
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        sent,
        [(
            "GET".to_string(),
            format!("/repos/{OTHER_REPO}/installation")
        )],
        "{sent:?}"
    );
    // The installed repository works meanwhile, with the same adapter.
    forge
        .list_open_prs(&demo)
        .await
        .expect("the demo repository");

    // Once the owner adds the repository to the installation, its calls
    // work: a missing installation is not remembered.
    hub.add_installation_repos(inst, &[OTHER_REPO]).unwrap();
    let prs = forge.list_open_prs(&other).await.expect("now installed");
    assert!(prs.is_empty());

    // The owner takes the repository away again: once the installation is
    // due for a re-check, a 404 there is reported as what it is, not as
    // "no such branch"; a real 404 elsewhere stays one.
    hub.remove_installation_repos(inst, &[OTHER_REPO]).unwrap();
    tokio::time::sleep(INSTALLATION_RECHECK).await;
    let err = forge
        .branch_head(&other, "main")
        .await
        .expect_err("no longer installed");
    let message = err.to_string();
    assert!(
        message.contains("not installed") && message.contains(OTHER_REPO),
        "{message}"
    );
    assert_eq!(
        forge.branch_head(&demo, "no-such-branch").await.unwrap(),
        None
    );
    assert!(forge.branch_head(&demo, "main").await.unwrap().is_some());

    // The budget is the installation's: its limit, what it has left.
    let budget = forge.api_budget().expect("a budget");
    assert!(
        budget.limit.is_some() && budget.remaining.is_some(),
        "{budget:?}"
    );
    assert!(budget.remaining < budget.limit, "{budget:?}");
    assert!(budget.counted >= 4, "{budget:?}");
}

// ---- check runs (github.check_runs) ----

async fn checks_stack(dir: &std::path::Path, depth: usize) -> Stack {
    Stack::start_app(dir, "127.0.0.1:0".parse().unwrap(), |c| {
        c.github.check_runs = true;
        c.repos[0].train_depth = depth;
        c.repos[0].max_concurrent_builds = 4;
    })
    .await
    .expect("sluice starts as the App")
}

/// sluice's check run on the PR's head.
fn check_of(stack: &Stack, pr: u64) -> Option<sluice::fakehub::CheckRunView> {
    let head = stack.hub.pr(DEMO_REPO, pr)?.head_sha;
    stack
        .hub
        .check_runs(DEMO_REPO, head.as_str())
        .into_iter()
        .find(|c| c.name == "sluice")
}

#[tokio::test]
async fn a_prs_check_run_goes_queued_in_progress_success_and_says_where_it_stands() {
    let dir = tempfile::tempdir().unwrap();
    let stack = checks_stack(dir.path(), 2).await;
    let pr = stack
        .open_pr(
            "checked",
            &[("src/checked.txt", "ok\n"), ("delay", "2")],
            "Checked",
        )
        .await
        .unwrap();
    stack
        .wait_for("its own test passes", WAIT, |s| {
            check_of(s, pr).is_some_and(|c| c.conclusion.as_deref() == Some("success"))
        })
        .await
        .unwrap();
    let run = check_of(&stack, pr).unwrap();
    let states: Vec<&str> = run.history.iter().map(|h| h.status.as_str()).collect();
    assert!(
        states.contains(&"in_progress") && states.last() == Some(&"completed"),
        "{states:?}"
    );
    let running = run
        .history
        .iter()
        .find(|h| h.status == "in_progress")
        .unwrap();
    assert!(
        running
            .details_url
            .as_deref()
            .is_some_and(|u| u.contains("/results/")),
        "links its build: {running:?}"
    );
    // Not approved yet: the summary says so, in the JSON's words.
    let summary = run.summary.clone().unwrap_or_default();
    let view = stack.get_json(&format!("/status?pr={pr}")).await.unwrap();
    for reason in view["prs"][0]["waiting_on"].as_array().unwrap() {
        assert!(
            summary.contains(reason.as_str().unwrap()),
            "{summary} lacks {reason}"
        );
    }
    assert!(summary.contains("approval"), "{summary}");
    // Approved: in the train, then landed; the summary named its place.
    approve_and_wait_for_the_merge(&stack, pr).await;
    let run = check_of(&stack, pr).unwrap();
    assert!(
        run.history.iter().any(|h| h
            .summary
            .as_deref()
            .is_some_and(|s| s.contains("1st in the train for main"))),
        "{:?}",
        run.history
    );
    // The car it landed with has its own check run: tested, then passed.
    let main = stack.hub.branch_head(DEMO_REPO, "main").await.unwrap();
    let car = stack
        .hub
        .check_runs(DEMO_REPO, main.as_str())
        .into_iter()
        .find(|c| c.name == "sluice")
        .expect("the landed car has a check run");
    let states: Vec<&str> = car.history.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(states.first(), Some(&"in_progress"), "{:?}", car.history);
    assert_eq!(car.conclusion.as_deref(), Some("success"));
    assert!(
        car.summary
            .as_deref()
            .is_some_and(|s| s.contains(&format!("#{pr}"))),
        "names its PR: {car:?}"
    );
    // No commit status was written: check runs replace them.
    let head = stack.hub.pr(DEMO_REPO, pr).unwrap().head_sha;
    assert!(stack.hub.statuses(DEMO_REPO, head.as_str()).is_empty());
    assert_no_failed_calls(&stack).await;
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_failing_check_shows_its_log_tail_and_re_run_tests_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let stack = checks_stack(dir.path(), 0).await;
    let marker = dir.path().join("flaked");
    let pr = stack
        .open_pr(
            "fails-once",
            &[("src/f.txt", "ok\n"), ("flaky", marker.to_str().unwrap())],
            "Fails once",
        )
        .await
        .unwrap();
    stack
        .wait_for("the check fails", WAIT, |s| {
            check_of(s, pr).is_some_and(|c| c.conclusion.as_deref() == Some("failure"))
        })
        .await
        .unwrap();
    let run = check_of(&stack, pr).unwrap();
    let summary = run.summary.clone().unwrap_or_default();
    assert!(summary.contains("The end of the log"), "{summary}");
    assert!(
        summary.contains("a flaky failure"),
        "the log's last lines: {summary}"
    );
    // "Re-run" on GitHub: sluice tests it again, and now it passes.
    stack
        .hub
        .rerequest_check_run(DEMO_REPO, run.id, "alice")
        .unwrap();
    stack
        .wait_for("the re-run passes", WAIT, |s| {
            check_of(s, pr).is_some_and(|c| c.conclusion.as_deref() == Some("success"))
        })
        .await
        .unwrap();
    assert_eq!(
        check_of(&stack, pr).unwrap().id,
        run.id,
        "the same check run is updated, not a new one"
    );
    stack.sluice.stop().await;
}

// ---- installation events ----

/// A repository the App is given later: its open PRs are gated at once
/// (the `installation_repositories` delivery starts a re-read), not at the
/// next periodic re-read, which here never comes.
#[tokio::test]
async fn a_repository_added_to_the_installation_is_read_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Stack::demo_hub(dir.path()).await.unwrap();
    let keys = hub.register_app(DEMO_APP_ID).unwrap();
    let inst = hub.install_app(DEMO_APP_ID, "octo", &[]).unwrap();
    // Approved and passing before sluice can see the repository at all.
    let pr = open_pr(&hub, DEMO_REPO, "early", &[("src/early.txt", "works\n")]).await;
    hub.review(DEMO_REPO, pr, "alice", "APPROVED")
        .await
        .unwrap();
    let stack = Stack::start_app_on(hub, keys, dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.reconcile.interval_secs = 0
    })
    .await
    .expect("sluice starts (and warns) although the App is not installed there");
    // Its first re-read found nothing it could read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(stack.status_of(pr).is_none(), "no status without access");
    assert!(!merged(&stack, DEMO_REPO, pr));

    stack
        .hub
        .add_installation_repos(inst, &[DEMO_REPO])
        .unwrap();
    stack
        .wait_for("the merge", WAIT, |s| merged(s, DEMO_REPO, pr))
        .await
        .unwrap();
    let m = metrics(&stack).await;
    assert!(
        m.lines().any(|l| l
            .starts_with("sluice_webhook_deliveries_total{event=\"installation_repositories\",result=\"accepted\"}")),
        "{m}"
    );

    stack.sluice.stop().await;
}

// ---- private repositories ----

/// Every job log under the results directory, concatenated.
fn all_logs(dir: &std::path::Path) -> String {
    let mut text = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "log.txt") {
                text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    text
}

/// A private repository is fetched over HTTP with an installation token
/// minted per job (one repository, `contents: read`): the PR lands, and
/// the PR's own code, which goes looking for credentials in its
/// environment and its clone's configuration, finds none.
#[tokio::test]
async fn a_private_repository_is_fetched_with_a_token_the_test_never_sees() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, keys, _) = app_hub(dir.path()).await;
    hub.set_private(DEMO_REPO, true);
    let base = hub.http_clone_base();
    // Anonymous clones of it are refused, as GitHub refuses them.
    let url = format!("{base}/{DEMO_REPO}.git");
    let anonymous = tokio::process::Command::new("git")
        .args(["ls-remote", "--", &url])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .unwrap();
    assert!(!anonymous.status.success(), "an anonymous clone worked");
    let stack = Stack::start_app_on(hub, keys, dir.path(), "127.0.0.1:0".parse().unwrap(), {
        let base = base.clone();
        move |c| c.github.clone_base = base
    })
    .await
    .unwrap();
    let snoop = "#!/bin/sh\nset -u\necho '--- env'; env\necho '--- .git/config'; cat .git/config\n\
                 echo '--- git config'; git config --list\necho '--- snooped'\n";
    let pr = open_pr(&stack.hub, DEMO_REPO, "snoop", &[("check.sh", snoop)]).await;
    approve_and_wait_for_the_merge(&stack, pr).await;
    let logs = all_logs(&dir.path().join("results"));
    assert!(logs.contains("--- snooped"), "the check ran: {logs}");
    assert!(
        logs.contains("with a read-only token (for the fetch only)"),
        "{logs}"
    );
    let tokens = stack.hub.issued_tokens();
    assert!(tokens.len() >= 2, "sluice's own token and the job's");
    for token in &tokens {
        assert!(
            !logs.contains(token.as_str()),
            "a token reached the job's log"
        );
    }
    for secret in [
        "x-access-token",
        "Authorization",
        "extraheader",
        sluice::demo::GITHUB_TOKEN,
    ] {
        assert!(
            !logs.contains(secret),
            "{secret:?} in the job's log: {logs}"
        );
    }
    stack.sluice.stop().await;
}
