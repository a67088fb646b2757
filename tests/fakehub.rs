//! The fake GitHub over real HTTP and real git: response shapes parse into
//! octocrab's models, merges really land, webhooks are signed and parse.

use octocrab::models::pulls::{PullRequest, Review};
use octocrab::models::webhook_events::{WebhookEvent, WebhookEventPayload};
use serde_json::{Value, json};
use sluice::fakehub::{FakeHub, Fault, signature};
use std::path::Path;
use std::sync::{Arc, Mutex};
use warp::Filter;

const REPO: &str = "octo/demo";

async fn hub(token: Option<&str>) -> (tempfile::TempDir, FakeHub) {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = FakeHub::start(dir.path(), token.map(str::to_string))
        .await
        .expect("start");
    hub.create_repo(REPO, "main", &[("README.md", "hello\n")])
        .await
        .expect("create repo");
    (dir, hub)
}

/// A repository with one open PR from `feature` adding `feature.txt`.
async fn hub_with_pr() -> (tempfile::TempDir, FakeHub, u64) {
    let (dir, hub) = hub(None).await;
    hub.commit(
        REPO,
        "feature",
        Some("main"),
        &[("feature.txt", "new\n")],
        "Add feature",
    )
    .await
    .expect("commit");
    let n = hub
        .open_pr(REPO, "feature", "main", "Add a feature", "alice")
        .await
        .expect("open");
    (dir, hub, n)
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(hub: &FakeHub, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", hub.api_url()))
        .send()
        .await
        .expect("GET")
}

async fn get_json(hub: &FakeHub, path: &str) -> Value {
    let r = get(hub, path).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.expect("json")
}

async fn put_merge(hub: &FakeHub, n: u64, body: Value) -> (u16, Value) {
    let r = client()
        .put(format!("{}/repos/{REPO}/pulls/{n}/merge", hub.api_url()))
        .json(&body)
        .send()
        .await
        .expect("PUT");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

/// Whether `path` exists at `rev` in the fake's bare repository.
async fn git_has(hub: &FakeHub, rev: &str, path: &str) -> bool {
    let dir = hub.clone_base().trim_start_matches("file://").to_string();
    let spec = format!("{rev}:{path}");
    tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(format!("{dir}/{REPO}.git"))
        .args(["cat-file", "-e", &spec])
        .status()
        .await
        .expect("git")
        .success()
}

#[tokio::test]
async fn pull_requests_and_reviews_parse_as_octocrab_models() {
    let (_dir, hub, n) = hub_with_pr().await;
    hub.set_permission(REPO, "bob", "write");
    let rid = hub.review(REPO, n, "bob", "APPROVED").await.unwrap();
    hub.review(REPO, n, "carol", "CHANGES_REQUESTED")
        .await
        .unwrap();

    let list: Vec<PullRequest> =
        serde_json::from_value(get_json(&hub, &format!("/repos/{REPO}/pulls?state=open")).await)
            .expect("list parses");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].number, n);

    let raw = get_json(&hub, &format!("/repos/{REPO}/pulls/{n}")).await;
    let pr: PullRequest = serde_json::from_value(raw.clone()).expect("PR parses");
    let head = hub.branch_head(REPO, "feature").await.unwrap();
    let main = hub.branch_head(REPO, "main").await.unwrap();
    assert_eq!(pr.head.sha, head.as_str());
    assert_eq!(pr.head.ref_field, "feature");
    assert_eq!(pr.base.ref_field, "main");
    assert_eq!(pr.base.sha, main.as_str());
    assert_eq!(pr.mergeable, Some(true));
    assert_eq!(pr.merged, Some(false));
    assert_eq!(raw["mergeable_state"], "clean");
    assert_eq!(raw["user"]["login"], "alice");
    assert_eq!(raw["head"]["repo"]["full_name"], REPO);

    let reviews: Vec<Review> = serde_json::from_value(
        get_json(
            &hub,
            &format!("/repos/{REPO}/pulls/{n}/reviews?per_page=100"),
        )
        .await,
    )
    .expect("reviews parse");
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[0].id.0, rid);
    assert_eq!(
        reviews[0].state,
        Some(octocrab::models::pulls::ReviewState::Approved)
    );
    assert_eq!(reviews[0].commit_id.as_deref(), Some(head.as_str()));
    hub.dismiss_review(REPO, n, rid).await.unwrap();
    let raw = get_json(&hub, &format!("/repos/{REPO}/pulls/{n}/reviews")).await;
    assert_eq!(raw[0]["state"], "DISMISSED");
    assert_eq!(raw[1]["state"], "CHANGES_REQUESTED");

    let perm = get_json(&hub, &format!("/repos/{REPO}/collaborators/bob/permission")).await;
    assert_eq!(perm["permission"], "write");
    assert_eq!(perm["user"]["login"], "bob");
    let perm = get_json(
        &hub,
        &format!("/repos/{REPO}/collaborators/carol/permission"),
    )
    .await;
    assert_eq!(perm["permission"], "read");
    let perm = get_json(
        &hub,
        &format!("/repos/{REPO}/collaborators/octo/permission"),
    )
    .await;
    assert_eq!(perm["permission"], "admin");

    let branch = get_json(&hub, &format!("/repos/{REPO}/branches/main")).await;
    assert_eq!(branch["name"], "main");
    assert_eq!(branch["commit"]["sha"], main.as_str());
    let r = get(&hub, &format!("/repos/{REPO}/branches/nope")).await;
    assert_eq!(r.status(), 404);
    let git_ref = get_json(&hub, &format!("/repos/{REPO}/git/ref/heads/feature")).await;
    assert_eq!(git_ref["ref"], "refs/heads/feature");
    assert_eq!(git_ref["object"]["sha"], head.as_str());

    for path in [
        "/nope",
        "/repos/octo/missing/pulls",
        "/repos/octo/demo/pulls/999",
    ] {
        let r = get(&hub, path).await;
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["message"], "Not Found");
        assert!(body["documentation_url"].is_string());
    }
    let r = client()
        .delete(format!("{}/repos/{REPO}/pulls/{n}", hub.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_conflicting_pr_is_not_mergeable_and_unknown_can_be_injected() {
    let (_dir, hub, n) = hub_with_pr().await;
    hub.commit(REPO, "main", None, &[("feature.txt", "other\n")], "Race")
        .await
        .unwrap();
    let raw = get_json(&hub, &format!("/repos/{REPO}/pulls/{n}")).await;
    assert_eq!(raw["mergeable"], false);
    assert_eq!(raw["mergeable_state"], "dirty");
    hub.inject_fault(Fault::MergeableUnknown {
        repo: REPO.into(),
        number: n,
        times: 1,
    });
    let raw = get_json(&hub, &format!("/repos/{REPO}/pulls/{n}")).await;
    assert_eq!(raw["mergeable"], Value::Null);
    let raw = get_json(&hub, &format!("/repos/{REPO}/pulls/{n}")).await;
    assert_eq!(raw["mergeable"], false);
}

#[tokio::test]
async fn lists_are_paginated_with_a_link_header() {
    let (_dir, hub) = hub(None).await;
    for i in 0..5 {
        let b = format!("b{i}");
        hub.commit(REPO, &b, Some("main"), &[(&format!("{b}.txt"), "x")], "c")
            .await
            .unwrap();
        hub.open_pr(REPO, &b, "main", &b, "alice").await.unwrap();
    }
    let r = get(&hub, &format!("/repos/{REPO}/pulls?state=open&per_page=2")).await;
    let link = r.headers()["link"].to_str().unwrap().to_string();
    let base = format!("{}/repos/{REPO}/pulls", hub.api_url());
    assert_eq!(
        link,
        format!(
            "<{base}?state=open&per_page=2&page=2>; rel=\"next\", <{base}?state=open&per_page=2&page=3>; rel=\"last\""
        )
    );
    let first: Vec<PullRequest> = r.json().await.unwrap();
    // Newest first, as GitHub's default sort.
    assert_eq!(
        first.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![5, 4]
    );
    let r = get(
        &hub,
        &format!("/repos/{REPO}/pulls?state=open&per_page=2&page=3"),
    )
    .await;
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert!(link.contains("page=2>; rel=\"prev\""), "{link}");
    assert!(link.contains("page=1>; rel=\"first\""), "{link}");
    assert!(!link.contains("rel=\"next\""), "{link}");
    let last: Vec<PullRequest> = r.json().await.unwrap();
    assert_eq!(last.len(), 1);
    let r = get(&hub, &format!("/repos/{REPO}/pulls?per_page=100")).await;
    assert!(r.headers().get("link").is_none());
}

#[tokio::test]
async fn statuses_round_trip() {
    let (_dir, hub, n) = hub_with_pr().await;
    let head = hub.pr(REPO, n).unwrap().head_sha;
    let post = |state: &str, ctx: &str| {
        client()
            .post(format!("{}/repos/{REPO}/statuses/{head}", hub.api_url()))
            .json(&json!({"state": state, "context": ctx, "description": "d", "target_url": "http://x/1"}))
            .send()
    };
    let r = post("pending", "sluice").await.unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["state"], "pending");
    assert_eq!(body["context"], "sluice");
    assert!(body["creator"]["login"].is_string());
    post("success", "sluice").await.unwrap();
    post("pending", "other").await.unwrap();
    let r = post("bogus", "sluice").await.unwrap();
    assert_eq!(r.status(), 422);

    let seen = hub.statuses(REPO, head.as_str());
    assert_eq!(
        seen.iter()
            .map(|s| (s.state.as_str(), s.context.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("pending", "sluice"),
            ("success", "sluice"),
            ("pending", "other")
        ]
    );
    assert_eq!(seen[0].target_url.as_deref(), Some("http://x/1"));

    let combined = get_json(&hub, &format!("/repos/{REPO}/commits/{head}/status")).await;
    assert_eq!(combined["state"], "pending");
    assert_eq!(combined["total_count"], 2);
    assert_eq!(combined["sha"], head.as_str());
    let by_branch = get_json(&hub, &format!("/repos/{REPO}/commits/feature/status")).await;
    assert_eq!(by_branch["total_count"], 2);
    let r = client()
        .post(format!(
            "{}/repos/{REPO}/statuses/{}",
            hub.api_url(),
            "0".repeat(40)
        ))
        .json(&json!({"state": "success"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}

#[tokio::test]
async fn merge_rebase_and_squash_land_the_pr() {
    for method in ["merge", "squash", "rebase"] {
        let (_dir, hub, n) = hub_with_pr().await;
        // Move main so the merge is not a fast-forward.
        hub.commit(REPO, "main", None, &[("other.txt", "o\n")], "Other")
            .await
            .unwrap();
        let before = hub.branch_head(REPO, "main").await.unwrap();
        let head = hub.pr(REPO, n).unwrap().head_sha;
        let (status, body) = put_merge(
            &hub,
            n,
            json!({"sha": head.as_str(), "merge_method": method, "commit_title": format!("Land #{n}")}),
        )
        .await;
        assert_eq!(status, 200, "{method}: {body}");
        assert_eq!(body["merged"], true);
        let after = hub.branch_head(REPO, "main").await.unwrap();
        assert_eq!(body["sha"], after.as_str());
        assert_ne!(after, before);
        assert!(git_has(&hub, "main", "feature.txt").await, "{method}");
        assert!(git_has(&hub, "main", "other.txt").await, "{method}");
        let view = hub.pr(REPO, n).unwrap();
        assert!(view.merged);
        assert_eq!(view.state, "closed");
        assert_eq!(view.merge_commit_sha.as_ref(), Some(&after));
        let merges = hub.merges();
        assert_eq!(merges.len(), 1);
        assert_eq!(merges[0].head_sha, head);
        assert_eq!(merges[0].base_sha_before, before);
        assert_eq!(merges[0].merge_sha, after);
        let pr: PullRequest =
            serde_json::from_value(get_json(&hub, &format!("/repos/{REPO}/pulls/{n}")).await)
                .unwrap();
        assert_eq!(pr.merged, Some(true));
        assert_eq!(pr.merge_commit_sha.as_deref(), Some(after.as_str()));
        let r = get(&hub, &format!("/repos/{REPO}/pulls/{n}/merge")).await;
        assert_eq!(r.status(), 204);
        // A second merge of a closed PR is refused.
        let (status, _) = put_merge(&hub, n, json!({"merge_method": method})).await;
        assert_eq!(status, 405);
    }
}

#[tokio::test]
async fn stale_sha_conflict_and_bad_method_are_refused() {
    let (_dir, hub, n) = hub_with_pr().await;
    let tested = hub.pr(REPO, n).unwrap().head_sha;
    hub.commit(REPO, "feature", None, &[("more.txt", "m\n")], "More")
        .await
        .unwrap();
    let (status, body) = put_merge(&hub, n, json!({"sha": tested.as_str()})).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["message"],
        "Head branch was modified. Review and try the merge again."
    );
    let (status, _) = put_merge(&hub, n, json!({"merge_method": "octopus"})).await;
    assert_eq!(status, 422);

    hub.commit(REPO, "main", None, &[("feature.txt", "clash\n")], "Clash")
        .await
        .unwrap();
    let main = hub.branch_head(REPO, "main").await.unwrap();
    let head = hub.pr(REPO, n).unwrap().head_sha;
    let (status, body) = put_merge(&hub, n, json!({"sha": head.as_str()})).await;
    assert_eq!(status, 405);
    assert_eq!(body["message"], "Pull Request is not mergeable");
    assert_eq!(hub.branch_head(REPO, "main").await.unwrap(), main);
    assert!(hub.merges().is_empty());

    hub.close_pr(REPO, n).await.unwrap();
    let (status, _) = put_merge(&hub, n, json!({})).await;
    assert_eq!(status, 405);
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>);

/// A webhook receiver answering 200 to everything; returns its URL.
async fn receiver() -> (String, Received) {
    let got = Received::default();
    let sink = got.clone();
    let route = warp::post()
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(move |h: http::HeaderMap, b: bytes::Bytes| {
            sink.0.lock().unwrap().push((h, b));
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}/webhook"), got)
}

#[tokio::test]
async fn webhooks_are_signed_ordered_and_parse_as_octocrab_events() {
    let (_dir, hub) = hub(None).await;
    let (url, got) = receiver().await;
    hub.set_webhook(&url, "s3cret");
    hub.commit(REPO, "feature", Some("main"), &[("f.txt", "1")], "One")
        .await
        .unwrap();
    let n = hub
        .open_pr(REPO, "feature", "main", "Feature", "alice")
        .await
        .unwrap();
    hub.commit(REPO, "feature", None, &[("f.txt", "2")], "Two")
        .await
        .unwrap();
    let rid = hub.review(REPO, n, "bob", "APPROVED").await.unwrap();
    hub.dismiss_review(REPO, n, rid).await.unwrap();
    hub.add_label(REPO, n, "ready").await.unwrap();
    hub.commit(REPO, "release", Some("main"), &[("r.txt", "r")], "Rel")
        .await
        .unwrap();
    hub.set_base(REPO, n, "release").await.unwrap();
    hub.close_pr(REPO, n).await.unwrap();
    hub.reopen_pr(REPO, n).await.unwrap();
    let head = hub.pr(REPO, n).unwrap().head_sha;
    let (status, _) = put_merge(&hub, n, json!({"sha": head.as_str()})).await;
    assert_eq!(status, 200);
    hub.idle().await;

    let seen: Vec<(String, Option<String>)> = hub
        .deliveries()
        .iter()
        .map(|d| (d.event.clone(), d.action.clone()))
        .collect();
    let want: Vec<(&str, Option<&str>)> = vec![
        ("ping", None),
        ("push", None),
        ("pull_request", Some("opened")),
        ("push", None),
        ("pull_request", Some("synchronize")),
        ("pull_request_review", Some("submitted")),
        ("pull_request_review", Some("dismissed")),
        ("pull_request", Some("labeled")),
        ("push", None),
        ("pull_request", Some("edited")),
        ("pull_request", Some("closed")),
        ("pull_request", Some("reopened")),
        ("push", None),
        ("pull_request", Some("closed")),
    ];
    assert_eq!(
        seen,
        want.iter()
            .map(|(e, a)| (e.to_string(), a.map(str::to_string)))
            .collect::<Vec<_>>()
    );
    assert!(hub.deliveries().iter().all(|d| d.status == Some(200)));

    let received = got.0.lock().unwrap().clone();
    assert_eq!(received.len(), want.len());
    for (headers, body) in &received {
        let h = |k: &str| headers[k].to_str().unwrap().to_string();
        assert_eq!(h("x-hub-signature-256"), signature("s3cret", body));
        assert!(h("user-agent").starts_with("GitHub-Hookshot/"));
        assert_eq!(h("content-type"), "application/json");
        assert_eq!(h("x-github-delivery").len(), 36);
        assert!(!h("x-github-hook-id").is_empty());
        let event = h("x-github-event");
        let parsed = WebhookEvent::try_from_header_and_body(&event, body)
            .unwrap_or_else(|e| panic!("{event} does not parse: {e}"));
        if event != "ping" {
            assert_eq!(parsed.repository.unwrap().full_name.as_deref(), Some(REPO));
            assert!(parsed.sender.is_some());
        }
    }
    // Spot checks of payload contents.
    let body = |i: usize| serde_json::from_slice::<Value>(&received[i].1).unwrap();
    assert_eq!(body(1)["ref"], "refs/heads/feature");
    assert_eq!(body(1)["before"], "0".repeat(40));
    assert_eq!(body(1)["created"], true);
    let sync = body(4);
    assert_eq!(sync["after"], sync["pull_request"]["head"]["sha"]);
    assert_eq!(body(5)["review"]["state"], "approved");
    assert_eq!(body(6)["review"]["state"], "dismissed");
    assert_eq!(body(7)["label"]["name"], "ready");
    assert_eq!(body(9)["changes"]["base"]["ref"]["from"], "main");
    assert_eq!(body(9)["pull_request"]["base"]["ref"], "release");
    assert_eq!(body(12)["ref"], "refs/heads/release");
    let closed = body(13);
    assert_eq!(closed["pull_request"]["merged"], true);
    match WebhookEvent::try_from_header_and_body("pull_request", &received[13].1)
        .unwrap()
        .specific
    {
        WebhookEventPayload::PullRequest(p) => {
            assert_eq!(p.pull_request.merged, Some(true));
            assert_eq!(p.number, n);
        }
        other => panic!("unexpected payload {other:?}"),
    }
    assert!(git_has(&hub, "release", "f.txt").await);

    // A redelivery is a duplicate: same id, same body.
    let first = hub.deliveries()[2].clone();
    assert_eq!(hub.redeliver(&first.id).await.unwrap(), 200);
    let again = got.0.lock().unwrap().last().unwrap().clone();
    assert_eq!(again.0["x-github-delivery"].to_str().unwrap(), first.id);
    assert_eq!(again.1, first.body.as_bytes());
    assert!(hub.deliveries().last().unwrap().redelivery);
}

#[tokio::test]
async fn a_failed_delivery_is_recorded_not_retried() {
    let (_dir, hub) = hub(None).await;
    // Nothing listens on this port.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/webhook", l.local_addr().unwrap());
    drop(l);
    hub.set_webhook(&url, "s");
    hub.commit(REPO, "main", None, &[("x", "x")], "x")
        .await
        .unwrap();
    hub.idle().await;
    let d = hub.deliveries();
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|d| d.status.is_none() && d.error.is_some()));
}

#[tokio::test]
async fn a_hostile_branch_name_is_only_a_name() {
    let (dir, hub) = hub(None).await;
    // Git refuses spaces in ref names (so does GitHub): this is the form a
    // real attack takes, as in the brief.
    let evil = "$(touch${IFS}pwned)";
    assert!(
        hub.commit(REPO, "$(touch pwned)", Some("main"), &[("x", "x")], "x")
            .await
            .is_err()
    );
    hub.commit(
        REPO,
        evil,
        Some("main"),
        &[("evil.txt", "e")],
        "$(touch pwned2)",
    )
    .await
    .unwrap();
    let n = hub
        .open_pr(REPO, evil, "main", evil, "mallory")
        .await
        .unwrap();
    let pr: PullRequest =
        serde_json::from_value(get_json(&hub, &format!("/repos/{REPO}/pulls/{n}")).await).unwrap();
    assert_eq!(pr.head.ref_field, evil);
    let b = get_json(
        &hub,
        &format!("/repos/{REPO}/branches/%24%28touch%24%7BIFS%7Dpwned%29"),
    )
    .await;
    assert_eq!(b["name"], evil);
    let (status, _) = put_merge(&hub, n, json!({"merge_method": "merge"})).await;
    assert_eq!(status, 200);
    assert!(git_has(&hub, "main", "evil.txt").await);
    for base in [Path::new("."), dir.path()] {
        assert!(!base.join("pwned").exists());
        assert!(!base.join("pwned2").exists());
    }
    let repos = dir.path().join("repos");
    assert!(!repos.join("pwned").exists());
}

#[tokio::test]
async fn tokens_are_required_when_set() {
    let (_dir, hub) = hub(Some("t0k")).await;
    let url = format!("{}/repos/{REPO}/pulls", hub.api_url());
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Requires authentication");
    let r = client()
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(&url).bearer_auth("t0k").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(&url)
        .header("Authorization", "token t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn injected_faults_answer_then_clear() {
    let (_dir, hub, n) = hub_with_pr().await;
    let path = format!("/repos/{REPO}/pulls/{n}");
    hub.inject_fault(Fault::status("GET", &path, 502, 2));
    hub.inject_fault(Fault::rate_limited(
        "PUT",
        &format!("{path}/merge"),
        429,
        7,
        1,
    ));
    assert_eq!(get(&hub, &path).await.status(), 502);
    assert_eq!(get(&hub, &path).await.status(), 502);
    assert_eq!(get(&hub, &path).await.status(), 200);
    let r = client()
        .put(format!("{}{path}/merge", hub.api_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let (status, _) = put_merge(&hub, n, json!({})).await;
    assert_eq!(status, 200);
}
