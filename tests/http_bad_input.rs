//! Every endpoint's bad input, over real HTTP against the demo stack (the
//! fake GitHub plus sluice in-process). Each test checks the status code, that
//! the body is JSON with an `error` string, that nothing changed (the PRs
//! sluice lists, its history, the statuses and merges on the fake GitHub),
//! and that sluice still answers /healthz afterwards.

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};
use sluice::demo::{API_TOKEN, DEMO_REPO, Stack, WEBHOOK_SECRET};
use sluice::forge::webhook::sign;
use sluice::http::{MAX_REQUEST_BYTES, MAX_WEBHOOK_BYTES};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(90);

async fn start(dir: &Path) -> Stack {
    Stack::start(dir, "127.0.0.1:0".parse().unwrap(), |_| {})
        .await
        .expect("stack starts")
}

/// A stack with one open PR whose test has passed, and nothing in flight.
async fn stack_with_passing_pr(dir: &Path) -> (Stack, u64) {
    let stack = start(dir).await;
    let pr = stack
        .open_pr(
            "feature",
            &[("src/feature.txt", "works\n")],
            "Add a feature",
        )
        .await
        .expect("open PR");
    stack
        .wait_for("the PR to pass", WAIT, |s| {
            s.status_of(pr).is_some_and(|st| st.state == "success")
        })
        .await
        .unwrap();
    settle(&stack).await;
    (stack, pr)
}

/// Waits until the fake GitHub has sent everything and sluice has written
/// its statuses.
async fn settle(stack: &Stack) {
    stack.hub.idle().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// A commit status as (state, context, target URL).
type StatusRow = (String, String, Option<String>);

/// What must not change when a caller sends bad input.
#[derive(Debug, PartialEq)]
struct Snapshot {
    status: Value,
    history: Value,
    /// (PR, its head, every status on that head)
    statuses: Vec<(u64, String, Vec<StatusRow>)>,
    merges: usize,
}

async fn snapshot(stack: &Stack, prs: &[u64]) -> Snapshot {
    let statuses = prs
        .iter()
        .map(|&pr| {
            let head = stack.head_of(pr).expect("PR exists").as_str().to_string();
            let list = stack
                .hub
                .statuses(DEMO_REPO, &head)
                .into_iter()
                .map(|s| (s.state, s.context, s.target_url))
                .collect();
            (pr, head, list)
        })
        .collect();
    Snapshot {
        status: stack.get_json("/status").await.expect("GET /status"),
        history: stack.get_json("/history").await.expect("GET /history"),
        statuses,
        merges: stack.hub.merges().len(),
    }
}

/// The state is as before, nothing merged, and sluice is alive.
async fn assert_unchanged(stack: &Stack, prs: &[u64], before: &Snapshot) {
    settle(stack).await;
    let after = snapshot(stack, prs).await;
    assert_eq!(&after, before, "bad input changed sluice's state");
    assert!(stack.hub.merges().is_empty(), "bad input merged something");
    assert_healthy(stack).await;
}

async fn assert_healthy(stack: &Stack) {
    let r = stack
        .http
        .get(stack.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("healthz JSON");
    assert_eq!(body["status"], "ok");
}

/// Asserts the status and a JSON `{"error": "..."}` body; returns the message.
async fn expect_error(what: &str, response: reqwest::Response, status: u16) -> String {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.text().await.expect("body");
    assert_eq!(got, status, "{what}: body {body}");
    assert!(
        content_type.starts_with("application/json"),
        "{what}: content-type {content_type:?}"
    );
    let value: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    let message = value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error string: {body}"));
    assert!(!message.is_empty(), "{what}: empty error");
    message.to_string()
}

/// Asserts a 2xx JSON answer; returns the body.
async fn expect_ok(what: &str, response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let body = response.text().await.expect("body");
    assert_eq!(got, status, "{what}: body {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"))
}

struct Hook<'a> {
    event: Option<&'a str>,
    delivery: Option<&'a str>,
    signature: Option<String>,
}

impl Hook<'_> {
    /// A correctly signed delivery of `event`.
    fn signed<'a>(event: &'a str, body: &[u8]) -> Hook<'a> {
        Hook {
            event: Some(event),
            delivery: None,
            signature: Some(sign(WEBHOOK_SECRET.as_bytes(), body)),
        }
    }
}

async fn post_webhook(stack: &Stack, hook: Hook<'_>, body: Vec<u8>) -> reqwest::Response {
    let mut request = stack
        .http
        .post(stack.url("/webhook"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(event) = hook.event {
        request = request.header("X-GitHub-Event", event);
    }
    if let Some(id) = hook.delivery {
        request = request.header("X-GitHub-Delivery", id);
    }
    if let Some(sig) = hook.signature {
        request = request.header("X-Hub-Signature-256", sig);
    }
    request.send().await.expect("POST /webhook")
}

/// The body of the `pull_request` `opened` delivery the fake GitHub sent
/// for `pr`, and its delivery id.
fn opened_delivery(stack: &Stack, pr: u64) -> (String, Value) {
    let d = stack
        .hub
        .deliveries()
        .into_iter()
        .find(|d| {
            d.event == "pull_request"
                && d.action.as_deref() == Some("opened")
                && serde_json::from_str::<Value>(&d.body)
                    .is_ok_and(|v| v["pull_request"]["number"] == pr)
        })
        .expect("the opened delivery");
    (d.id, serde_json::from_str(&d.body).unwrap())
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

// ---- /webhook: signatures ----

#[tokio::test]
async fn webhook_with_a_bad_signature_is_401_and_not_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let before = snapshot(&stack, &[pr]).await;
    let (_, opened) = opened_delivery(&stack, pr);
    // A delivery that would close the PR if it were believed.
    let mut closed = opened.clone();
    closed["action"] = json!("closed");
    closed["pull_request"]["state"] = json!("closed");
    let body = bytes(&closed);
    let good = sign(WEBHOOK_SECRET.as_bytes(), &body);
    let hex = good.strip_prefix("sha256=").unwrap().to_string();

    let cases: Vec<(&str, Option<String>, Vec<u8>, &str)> = vec![
        ("missing", None, body.clone(), "missing"),
        ("empty", Some(String::new()), body.clone(), "sha256="),
        ("no prefix", Some(hex.clone()), body.clone(), "sha256="),
        (
            "sha1 prefix",
            Some(format!("sha1={hex}")),
            body.clone(),
            "sha256=",
        ),
        (
            "bad hex",
            Some(format!("sha256={}", "zz".repeat(32))),
            body.clone(),
            "hexadecimal",
        ),
        (
            "too short",
            Some(format!("sha256={}", &hex[..62])),
            body.clone(),
            "62",
        ),
        (
            "too long",
            Some(format!("sha256={hex}00")),
            body.clone(),
            "66",
        ),
        (
            "wrong secret",
            Some(sign(b"not-the-secret", &body)),
            body.clone(),
            "does not match",
        ),
        (
            "empty secret",
            Some(sign(b"", &body)),
            body.clone(),
            "does not match",
        ),
        (
            "tampered body",
            Some(sign(WEBHOOK_SECRET.as_bytes(), &bytes(&opened))),
            body.clone(),
            "does not match",
        ),
        (
            "one byte appended",
            Some(good.clone()),
            [body.as_slice(), b" "].concat(),
            "does not match",
        ),
        (
            "signature of an empty body",
            Some(sign(WEBHOOK_SECRET.as_bytes(), b"")),
            body.clone(),
            "does not match",
        ),
    ];
    for (what, signature, body, needle) in cases {
        let r = post_webhook(
            &stack,
            Hook {
                event: Some("pull_request"),
                delivery: Some(&format!("bad-sig-{what}")),
                signature,
            },
            body,
        )
        .await;
        let message = expect_error(what, r, 401).await;
        assert!(
            message.contains(needle),
            "{what}: error should mention {needle:?}: {message}"
        );
        assert!(message.contains("X-Hub-Signature-256"), "{what}: {message}");
    }
    // Signature first: a delivery with neither signature nor event is a 401,
    // not a 400, and an unsigned garbage body is never parsed.
    let r = post_webhook(
        &stack,
        Hook {
            event: None,
            delivery: None,
            signature: None,
        },
        b"{not json".to_vec(),
    )
    .await;
    expect_error("no signature, no event", r, 401).await;

    // A rejected delivery id is not remembered: the genuine delivery with the
    // same id as a forged one is still applied (here: ignored as unused).
    let ping = b"{\"zen\":\"Keep it logically awesome.\"}".to_vec();
    let forged = post_webhook(
        &stack,
        Hook {
            event: Some("ping"),
            delivery: Some("same-id"),
            signature: Some(sign(b"wrong", &ping)),
        },
        ping.clone(),
    )
    .await;
    expect_error("forged ping", forged, 401).await;
    let mut genuine = Hook::signed("ping", &ping);
    genuine.delivery = Some("same-id");
    let body = expect_ok(
        "genuine ping",
        post_webhook(&stack, genuine, ping).await,
        200,
    )
    .await;
    assert_eq!(body["status"], "pong");

    // The sender's event header names no metric series unless signed: a
    // quote in it would break every scrape of /metrics, and random names
    // would add a series each.
    for event in ["a\"b} 1 fake_metric 2", "random-1", "random-2"] {
        let r = post_webhook(
            &stack,
            Hook {
                event: Some(event),
                delivery: None,
                signature: None,
            },
            b"{}".to_vec(),
        )
        .await;
        expect_error("unsigned", r, 401).await;
    }
    let (status, metrics) = raw_get(&stack, "/metrics").await;
    assert_eq!(status, 200);
    let deliveries: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_webhook_deliveries_total{"))
        .collect();
    assert!(
        !metrics.contains("fake_metric") && !metrics.contains("random-"),
        "{deliveries:?}"
    );
    assert!(
        deliveries.iter().any(|l| l.starts_with(
            "sluice_webhook_deliveries_total{event=\"unverified\",result=\"unauthorized\"}"
        )),
        "{deliveries:?}"
    );
    assert!(
        deliveries
            .iter()
            .all(|l| !l.contains("event=\"pull_request\",result=\"unauthorized\"")),
        "unsigned deliveries are not counted under the name they claim: {deliveries:?}"
    );

    assert_unchanged(&stack, &[pr], &before).await;
}

// ---- /webhook: size ----

/// Sends a signed `ping` delivery of `len` bytes over a raw connection,
/// streaming the body in chunks (never holding it whole), and returns the
/// status and body of the answer.
async fn stream_webhook(stack: &Stack, len: u64) -> (u16, String) {
    use hmac::{Hmac, Mac};
    const CHUNK: usize = 64 * 1024;
    let chunk = vec![b' '; CHUNK];
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        mac.update(&chunk[..n]);
        left -= n as u64;
    }
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));

    let stream = tokio::net::TcpStream::connect(stack.sluice.addr)
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: {}\r\nX-GitHub-Event: ping\r\n\
         X-Hub-Signature-256: {signature}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n",
        stack.sluice.addr
    );
    write.write_all(head.as_bytes()).await.unwrap();
    // The writer hands its half back rather than dropping it: dropping it
    // would half-close the connection, and hyper drops a connection whose
    // client half-closed before the answer.
    let writer = tokio::spawn(async move {
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            // The server may answer and close early; that ends the upload.
            if write.write_all(&chunk[..n]).await.is_err() {
                return write;
            }
            left -= n as u64;
        }
        let _ = write.flush().await;
        write
    });
    let answer = tokio::time::timeout(WAIT, read_response(&mut read))
        .await
        .expect("an answer in time");
    writer.abort();
    answer
}

/// Reads one HTTP/1.1 response: status and body (Content-Length framed, or
/// up to EOF).
async fn read_response(read: &mut (impl AsyncReadExt + Unpin)) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = read.read(&mut byte).await.expect("read response");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(n) => {
            while body.len() < n {
                let k = read.read(&mut byte).await.expect("read body");
                assert!(k > 0, "connection closed mid-body");
                body.extend_from_slice(&byte[..k]);
            }
            body.truncate(n);
        }
        None => {
            let _ = read.read_to_end(&mut body).await;
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn error_in(what: &str, body: &str) -> String {
    let value: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error string: {body}"))
        .to_string()
}

#[tokio::test]
async fn webhook_over_25_mib_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let before = snapshot(&stack, &[pr]).await;

    let (status, body) = stream_webhook(&stack, MAX_WEBHOOK_BYTES + 1).await;
    assert_eq!(status, 413, "{body}");
    let message = error_in("25 MiB + 1", &body);
    assert!(message.contains("too large"), "{message}");

    // Far over the cap, too (the declared length alone is refused).
    let (status, body) = stream_webhook(&stack, 4 * MAX_WEBHOOK_BYTES).await;
    assert_eq!(status, 413, "{body}");
    error_in("100 MiB", &body);

    // Exactly at the cap is accepted and verified: an all-space body is not
    // JSON, so it gets past the signature and fails parsing.
    let (status, body) = stream_webhook(&stack, MAX_WEBHOOK_BYTES).await;
    assert_eq!(status, 400, "{body}");
    let message = error_in("exactly 25 MiB", &body);
    assert!(message.contains("not valid JSON"), "{message}");

    assert_unchanged(&stack, &[pr], &before).await;
}

// ---- /webhook: malformed deliveries ----

#[tokio::test]
async fn webhook_with_a_malformed_body_or_headers_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let before = snapshot(&stack, &[pr]).await;
    let (_, opened) = opened_delivery(&stack, pr);

    let mut no_pr = opened.clone();
    no_pr.as_object_mut().unwrap().remove("pull_request");
    let mut no_repo = opened.clone();
    no_repo.as_object_mut().unwrap().remove("repository");
    let mut bad_number = opened.clone();
    bad_number["pull_request"]["number"] = json!("seven");
    let mut no_action = opened.clone();
    no_action.as_object_mut().unwrap().remove("action");
    let mut bad_repo_name = opened.clone();
    bad_repo_name["repository"]["full_name"] = json!("../../etc");
    let mut bad_push = json!({
        "ref": "refs/heads/main",
        "after": "not-a-sha",
        "repository": opened["repository"].clone(),
    });
    bad_push["deleted"] = json!(false);

    let cases: Vec<(&str, &str, Vec<u8>, &[&str])> = vec![
        (
            "invalid JSON",
            "pull_request",
            b"{\"action\": ".to_vec(),
            &["JSON"],
        ),
        ("binary", "pull_request", vec![0xff, 0x00, 0xfe], &["JSON"]),
        ("array", "pull_request", b"[1, 2]".to_vec(), &["object"]),
        (
            "pull_request event without pull_request",
            "pull_request",
            bytes(&no_pr),
            &["pull_request is missing"],
        ),
        (
            "pull_request without repository",
            "pull_request",
            bytes(&no_repo),
            &["repository.full_name is missing"],
        ),
        (
            "pull_request number not a number",
            "pull_request",
            bytes(&bad_number),
            &["\"seven\""],
        ),
        (
            "pull_request without action",
            "pull_request",
            bytes(&no_action),
            &["action"],
        ),
        (
            "bad repository name",
            "pull_request",
            bytes(&bad_repo_name),
            &["repository.full_name", "../../etc"],
        ),
        (
            "push without ref",
            "push",
            bytes(&json!({ "after": "0".repeat(40) })),
            &["ref"],
        ),
        (
            "push missing most fields",
            "push",
            bytes(&bad_push),
            &["push delivery", "after"],
        ),
        (
            "review without action",
            "pull_request_review",
            b"{}".to_vec(),
            &["action"],
        ),
    ];
    for (what, event, body, needles) in cases {
        let mut hook = Hook::signed(event, &body);
        let id = format!("malformed-{what}");
        hook.delivery = Some(&id);
        let message = expect_error(what, post_webhook(&stack, hook, body).await, 400).await;
        for needle in needles {
            assert!(
                message.contains(needle),
                "{what}: error should mention {needle:?}: {message}"
            );
        }
    }

    // An empty body, declared as such.
    let r = stack
        .http
        .post(stack.url("/webhook"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(WEBHOOK_SECRET.as_bytes(), b""))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    let message = expect_error("empty body", r, 400).await;
    assert!(message.contains("JSON"), "{message}");

    // A body without a Content-Length (chunked) is refused before it is
    // read: the 25 MiB cap is enforced on the declared length.
    let body = b"{}";
    let (status, answer) = raw_post(
        &stack,
        "/webhook",
        &[
            ("X-GitHub-Event", "ping"),
            (
                "X-Hub-Signature-256",
                &sign(WEBHOOK_SECRET.as_bytes(), body),
            ),
            ("Transfer-Encoding", "chunked"),
        ],
        b"2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 411, "{answer}");
    let message = error_in("chunked", &answer);
    assert!(message.contains("Content-Length"), "{message}");

    // Missing X-GitHub-Event, with a valid signature over a valid body.
    let body = bytes(&opened);
    let mut hook = Hook::signed("pull_request", &body);
    hook.event = None;
    let message = expect_error(
        "no event header",
        post_webhook(&stack, hook, body).await,
        400,
    )
    .await;
    assert!(message.contains("X-GitHub-Event"), "{message}");

    // A rejected delivery is not remembered as seen: its id is still free.
    let ping = b"{}".to_vec();
    let mut hook = Hook::signed("ping", &ping);
    hook.delivery = Some("malformed-invalid JSON");
    let body = expect_ok(
        "ping after 400",
        post_webhook(&stack, hook, ping).await,
        200,
    )
    .await;
    assert_eq!(body["status"], "pong");

    assert_unchanged(&stack, &[pr], &before).await;
}

// ---- /webhook: other repositories, unused events, duplicates ----

#[tokio::test]
async fn webhook_for_an_unconfigured_repository_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let before = snapshot(&stack, &[pr]).await;
    let (_, opened) = opened_delivery(&stack, pr);

    let mut elsewhere = opened.clone();
    elsewhere["repository"]["full_name"] = json!("someone/else");
    elsewhere["repository"]["name"] = json!("else");
    elsewhere["pull_request"]["number"] = json!(pr + 100);
    let mut sent = vec![("other repo", "pull_request", bytes(&elsewhere))];

    // GitHub's own example payload (for Codertocat/Hello-World).
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/webhooks/pull_request/opened.payload.json");
    let body = std::fs::read(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    sent.push(("octokit example", "pull_request", body));
    for (what, event, body) in sent {
        let mut hook = Hook::signed(event, &body);
        let id = format!("elsewhere-{what}");
        hook.delivery = Some(&id);
        let answer = expect_ok(what, post_webhook(&stack, hook, body).await, 202).await;
        assert_eq!(answer["status"], "ignored", "{what}: {answer}");
        let reason = answer["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("not configured"), "{what}: {reason}");
    }

    // Events sluice does not use are ignored too, as are unused actions.
    let mut assigned = opened.clone();
    assigned["action"] = json!("assigned");
    for (what, event, body) in [
        ("issues", "issues", b"{\"action\":\"opened\"}".to_vec()),
        ("unused action", "pull_request", bytes(&assigned)),
        ("tag push", "push", b"{\"ref\":\"refs/tags/v1\"}".to_vec()),
    ] {
        let answer = expect_ok(
            what,
            post_webhook(&stack, Hook::signed(event, &body), body).await,
            202,
        )
        .await;
        assert_eq!(answer["status"], "ignored", "{what}: {answer}");
    }

    let status = stack.get_json("/status").await.unwrap();
    let prs = status["prs"].as_array().unwrap();
    assert_eq!(prs.len(), 1, "only the demo PR is tracked: {status}");
    assert_eq!(prs[0]["number"], pr);
    assert_unchanged(&stack, &[pr], &before).await;
}

/// `build_finished` entries for `pr` in GET /history.
async fn builds_of(stack: &Stack, pr: u64) -> usize {
    let history = stack
        .get_json(&format!("/history?repo={DEMO_REPO}&pr={pr}"))
        .await
        .unwrap();
    history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "build_finished")
        .count()
}

#[tokio::test]
async fn a_duplicate_delivery_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    assert_eq!(builds_of(&stack, pr).await, 1);
    let before = snapshot(&stack, &[pr]).await;

    let (id, opened) = opened_delivery(&stack, pr);
    // GitHub's "Redeliver": same id, same body.
    let code = stack.hub.redeliver(&id).await.unwrap();
    assert_eq!(code, 200, "a redelivery is answered 200 (duplicate)");

    // The same delivery by hand: the answer says duplicate.
    let body = bytes(&opened);
    let mut hook = Hook::signed("pull_request", &body);
    hook.delivery = Some(&id);
    let answer = expect_ok(
        "duplicate",
        post_webhook(&stack, hook, body.clone()).await,
        200,
    )
    .await;
    assert_eq!(answer["status"], "duplicate", "{answer}");
    assert_eq!(answer["delivery"], id.as_str());

    // A duplicate is still authenticated first.
    let forged = post_webhook(
        &stack,
        Hook {
            event: Some("pull_request"),
            delivery: Some(&id),
            signature: Some(sign(b"wrong", &body)),
        },
        body,
    )
    .await;
    expect_error("forged duplicate", forged, 401).await;

    assert_unchanged(&stack, &[pr], &before).await;
    assert_eq!(builds_of(&stack, pr).await, 1, "the PR was tested once");
    let deliveries: Vec<_> = stack
        .hub
        .deliveries()
        .into_iter()
        .filter(|d| d.id == id)
        .collect();
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert!(deliveries[1].redelivery);
}

/// As in production, the server runs on a multi-threaded runtime, so copies
/// are handled in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_copies_of_one_delivery_are_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let (_, opened) = opened_delivery(&stack, pr);
    // A `synchronize` for the same head: each copy that is applied is one
    // event for the core.
    let mut sync = opened.clone();
    sync["action"] = json!("synchronize");
    let body = bytes(&sync);
    let answers = futures::future::join_all((0..32).map(|_| {
        let mut hook = Hook::signed("pull_request", &body);
        hook.delivery = Some("one-delivery");
        let body = body.clone();
        let stack = &stack;
        async move {
            let r = post_webhook(stack, hook, body).await;
            let status = r.status().as_u16();
            let answer: Value = r.json().await.expect("JSON answer");
            (
                status,
                answer["status"].as_str().unwrap_or_default().to_string(),
            )
        }
    }))
    .await;
    let accepted = answers.iter().filter(|a| a.1 == "accepted").count();
    let duplicates = answers.iter().filter(|a| a.1 == "duplicate").count();
    assert_eq!(accepted, 1, "{answers:?}");
    assert_eq!(duplicates, answers.len() - 1, "{answers:?}");
    assert_healthy(&stack).await;
}

// ---- methods and paths ----

#[tokio::test]
async fn wrong_methods_are_405_and_unknown_paths_404() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let before = snapshot(&stack, &[pr]).await;

    use reqwest::Method;
    for (method, path) in [
        (Method::GET, "/webhook"),
        (Method::PUT, "/webhook"),
        (Method::PUT, "/status"),
        (Method::POST, "/status"),
        (Method::DELETE, "/ready-for-merge"),
        (Method::POST, "/review-status"),
        (Method::PATCH, "/passing"),
        (Method::POST, "/history"),
        (Method::POST, "/healthz"),
        (Method::DELETE, "/metrics"),
        (Method::GET, "/retest"),
        (Method::PUT, "/retest"),
        (Method::DELETE, "/try-merge"),
        (Method::GET, "/try-merge"),
        (Method::GET, "/branch"),
        (Method::PUT, "/branch"),
        (Method::POST, "/queue"),
        (Method::POST, "/events"),
    ] {
        let what = format!("{method} {path}");
        let r = stack
            .http
            .request(method, stack.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        let message = expect_error(&what, r, 405).await;
        assert!(message.contains("method"), "{what}: {message}");
    }

    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::POST, "/nope"),
        (Method::GET, "/status/extra"),
        (Method::GET, "/webhook/x"),
        (Method::POST, "/retest/1"),
        (Method::GET, "/STATUS"),
        (Method::DELETE, "/nope"),
    ] {
        let what = format!("{method} {path}");
        let r = stack
            .http
            .request(method, stack.url(path))
            .send()
            .await
            .unwrap();
        expect_error(&what, r, 404).await;
    }

    assert_unchanged(&stack, &[pr], &before).await;
}

// ---- /retest and /try-merge ----

#[tokio::test]
async fn retest_and_try_merge_reject_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let before = snapshot(&stack, &[pr]).await;
    let good = json!({ "repo": DEMO_REPO, "pr": pr });

    for path in ["/retest", "/try-merge"] {
        let post = || stack.http.post(stack.url(path));

        // Authentication, checked before the body is even read as JSON.
        let r = post().json(&good).send().await.unwrap();
        expect_error(&format!("{path} without a token"), r, 401).await;
        let r = post()
            .bearer_auth("wrong")
            .json(&good)
            .send()
            .await
            .unwrap();
        expect_error(&format!("{path} wrong token"), r, 401).await;
        let r = post()
            .bearer_auth(format!("{API_TOKEN}x"))
            .json(&good)
            .send()
            .await
            .unwrap();
        expect_error(&format!("{path} token with a suffix"), r, 401).await;
        let r = post()
            .bearer_auth(&API_TOKEN[..API_TOKEN.len() - 1])
            .json(&good)
            .send()
            .await
            .unwrap();
        expect_error(&format!("{path} token prefix"), r, 401).await;
        let r = post()
            .basic_auth("sluice", Some(API_TOKEN))
            .json(&good)
            .send()
            .await
            .unwrap();
        expect_error(&format!("{path} Basic"), r, 401).await;
        let r = post()
            .header("authorization", API_TOKEN)
            .json(&good)
            .send()
            .await
            .unwrap();
        expect_error(&format!("{path} bare token"), r, 401).await;
        let r = post()
            .header("authorization", "Bearer ")
            .json(&good)
            .send()
            .await
            .unwrap();
        expect_error(&format!("{path} empty bearer"), r, 401).await;
        let r = post()
            .bearer_auth("wrong")
            .body("{not json")
            .send()
            .await
            .unwrap();
        expect_error(&format!("{path} bad token and bad body"), r, 401).await;

        // Bodies.
        let r = post()
            .bearer_auth(API_TOKEN)
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        let message = expect_error(&format!("{path} empty body"), r, 400).await;
        assert!(message.contains("expected"), "{message}");
        // No Content-Length at all: refused before reading.
        let (status, answer) = raw_post(
            &stack,
            path,
            &[
                ("Authorization", &format!("Bearer {API_TOKEN}")),
                ("Transfer-Encoding", "chunked"),
            ],
            b"0\r\n\r\n",
        )
        .await;
        assert_eq!(status, 411, "{path} chunked: {answer}");
        error_in("chunked", &answer);

        let bodies: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            ("malformed", b"{\"repo\": ".to_vec(), 400, "expected"),
            (
                "not an object",
                b"[\"octo/demo\", 1]".to_vec(),
                400,
                "expected",
            ),
            ("binary", vec![0xff, 0xfe, 0x00], 400, "expected"),
            (
                "pr as a string",
                bytes(&json!({ "repo": DEMO_REPO, "pr": "1" })),
                400,
                "pr",
            ),
            (
                "negative pr",
                bytes(&json!({ "repo": DEMO_REPO, "pr": -1 })),
                400,
                "expected",
            ),
            (
                "fractional pr",
                bytes(&json!({ "repo": DEMO_REPO, "pr": 1.5 })),
                400,
                "expected",
            ),
            (
                "repo as a number",
                bytes(&json!({ "repo": 7, "pr": pr })),
                400,
                "expected",
            ),
            (
                "missing pr",
                bytes(&json!({ "repo": DEMO_REPO })),
                400,
                "pr",
            ),
            ("missing repo", bytes(&json!({ "pr": pr })), 400, "repo"),
            (
                "unknown field",
                bytes(&json!({ "repo": DEMO_REPO, "pr": pr, "force": true })),
                400,
                "force",
            ),
            (
                "repo ../x",
                bytes(&json!({ "repo": "../x", "pr": pr })),
                400,
                "repository",
            ),
            (
                "repo without owner",
                bytes(&json!({ "repo": "demo", "pr": pr })),
                400,
                "repository",
            ),
            (
                "repo with a shell",
                bytes(&json!({ "repo": "octo/$(id)", "pr": pr })),
                400,
                "repository",
            ),
            (
                "unknown PR",
                bytes(&json!({ "repo": DEMO_REPO, "pr": pr + 1000 })),
                404,
                "does not track",
            ),
            (
                "unconfigured repository",
                bytes(&json!({ "repo": "someone/else", "pr": pr })),
                404,
                "does not track",
            ),
        ];
        for (what, body, status, needle) in bodies {
            let what = format!("{path} {what}");
            let r = post()
                .bearer_auth(API_TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let message = expect_error(&what, r, status).await;
            assert!(
                message.contains(needle),
                "{what}: error should mention {needle:?}: {message}"
            );
        }

        // Over 64 KiB.
        let padding = "x".repeat(MAX_REQUEST_BYTES as usize);
        let big = bytes(&json!({ "repo": DEMO_REPO, "pr": pr, "padding": padding }));
        let r = post()
            .bearer_auth(API_TOKEN)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap();
        let message = expect_error(&format!("{path} 64 KiB + more"), r, 413).await;
        assert!(message.contains("too large"), "{message}");
    }

    assert_unchanged(&stack, &[pr], &before).await;
}

// ---- /history ----

#[tokio::test]
async fn history_with_a_bad_query_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let before = snapshot(&stack, &[pr]).await;

    for query in ["pr=abc", "pr=-1", "pr=1.5", "pr=", "colour=blue"] {
        let r = stack
            .http
            .get(stack.url(&format!("/history?{query}")))
            .send()
            .await
            .unwrap();
        let message = expect_error(query, r, 400).await;
        assert!(message.contains("query"), "{query}: {message}");
    }
    // Good queries still work.
    let all = stack.get_json(&format!("/history?pr={pr}")).await.unwrap();
    assert!(!all["entries"].as_array().unwrap().is_empty());
    let none = stack.get_json("/history?sha=0000000000").await.unwrap();
    assert_eq!(none["entries"], json!([]), "no such commit: no entries");
    // A query that parses but asks for nothing sensible names what is wrong.
    for (query, what) in [
        ("sha=abc", "sha"),
        ("sha=not-hex-at-all", "sha"),
        ("from=0000000", "branch"),
        ("page=0", "page"),
        ("page=18446744073709551615", "page"),
        ("page=1000001", "page"),
        ("per_page=0", "per_page"),
    ] {
        let r = stack
            .http
            .get(stack.url(&format!("/history?{query}")))
            .send()
            .await
            .unwrap();
        let message = expect_error(query, r, 400).await;
        assert!(message.contains(what), "{query}: {message}");
    }

    assert_unchanged(&stack, &[pr], &before).await;
}

/// `GET /prs`: counts per state (every state named) and the PRs in one;
/// an unknown state or parameter is a 400 naming what would work.
#[tokio::test]
async fn prs_by_state_count_every_state_and_a_bad_query_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let all = stack.get_json("/prs").await.unwrap();
    let counts = all["counts"].as_object().unwrap();
    assert_eq!(counts.len(), 8, "{all}");
    assert_eq!(counts["cancelled"], 0, "{all}");
    assert_eq!(counts["passed"], 1, "{all}");
    assert_eq!(counts.values().map(|v| v.as_u64().unwrap()).sum::<u64>(), 1);
    let passed = stack.get_json("/prs?state=passed").await.unwrap();
    assert_eq!(passed["prs"][0]["number"], pr, "{passed}");
    assert!(passed["prs"][0]["link"].is_string(), "{passed}");
    let testing = stack.get_json("/prs?state=testing").await.unwrap();
    assert_eq!(testing["prs"], json!([]));
    assert_eq!(testing["counts"]["passed"], 1, "counts are of every state");
    let other = stack.get_json("/prs?repo=octo/other").await.unwrap();
    assert_eq!(other["prs"], json!([]));
    for query in ["state=merged", "state=", "colour=blue", "state=%00"] {
        let r = stack
            .http
            .get(stack.url(&format!("/prs?{query}")))
            .send()
            .await
            .unwrap();
        let message = expect_error(query, r, 400).await;
        assert!(
            message.contains("the states are waiting_for_target, conflict, queued")
                || message.contains("query"),
            "{query}: {message}"
        );
    }
    let r = stack.http.post(stack.url("/prs")).send().await.unwrap();
    expect_error("POST /prs", r, 405).await;
}

// ---- /results ----

/// GET `path` sent exactly as written (no client-side normalisation of
/// `..` or `%2e%2e`).
async fn raw_get(stack: &Stack, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(stack.sluice.addr)
        .await
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        stack.sluice.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), read_response(&mut stream))
        .await
        .expect("an answer in time")
}

/// POST `body` (sent as is, after the given headers) over a raw connection.
async fn raw_post(
    stack: &Stack,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(stack.sluice.addr)
        .await
        .unwrap();
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: {}\r\n", stack.sluice.addr);
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), read_response(&mut stream))
        .await
        .expect("an answer in time")
}

#[tokio::test]
async fn results_paths_cannot_escape_the_results_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let before = snapshot(&stack, &[pr]).await;
    let results = &stack.config.results.dir;
    assert!(results.starts_with(dir.path()), "{}", results.display());
    // Secrets next to and above the results directory.
    const SECRET: &str = "s3cret-not-for-the-web";
    std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
    std::fs::write(results.join(".hidden"), SECRET).unwrap();

    // The real link works (so the 404s below are not just a broken route).
    let link = stack.status_of(pr).unwrap().target_url.unwrap();
    let path = link.strip_prefix(&stack.sluice.url()).unwrap().to_string();
    assert!(path.starts_with("/results/"), "{path}");
    let (status, page) = raw_get(&stack, &path).await;
    assert_eq!(status, 200, "{page}");
    let (status, log) = raw_get(&stack, &format!("{path}log.txt")).await;
    assert_eq!(status, 200, "{log}");
    assert!(log.contains("all good"), "{log}");

    let tail = path.trim_start_matches("/results/");
    for evil in [
        "/results/../secret.txt".to_string(),
        "/results/../../etc/passwd".to_string(),
        "/results/../../../../../../../../etc/passwd".to_string(),
        "/results/%2e%2e/secret.txt".to_string(),
        "/results/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd".to_string(),
        "/results/%2E%2E/secret.txt".to_string(),
        "/results/.%2e/secret.txt".to_string(),
        "/results/..%2fsecret.txt".to_string(),
        "/results/..%2Fsecret.txt".to_string(),
        "/results/%2e%2e%2fsecret.txt".to_string(),
        "/results/..%5csecret.txt".to_string(),
        "/results/%2fetc%2fpasswd".to_string(),
        "/results//etc/passwd".to_string(),
        "/results/.hidden".to_string(),
        format!("/results/{tail}../../../../secret.txt"),
        format!("/results/{tail}%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt"),
        "/results/%00".to_string(),
        "/results/".to_string(),
    ] {
        let (status, body) = raw_get(&stack, &evil).await;
        assert_eq!(status, 404, "{evil}: {body}");
        error_in(&evil, &body);
        assert!(!body.contains(SECRET), "{evil} leaked a file: {body}");
        assert!(!body.contains("root:"), "{evil} leaked /etc/passwd: {body}");
    }

    assert_unchanged(&stack, &[pr], &before).await;
}

// ---- arbitrary deliveries ----

#[derive(Clone, Debug)]
enum Signature {
    None,
    Valid,
    ValidForOtherBody,
    Raw(Vec<u8>),
}

fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    // What a header value may legally hold (visible ASCII, space, tab, obs-text).
    proptest::collection::vec(
        prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff],
        0..max,
    )
}

fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("action".to_string()),
        Just("pull_request".to_string()),
        Just("repository".to_string()),
        Just("full_name".to_string()),
        Just("number".to_string()),
        Just("head".to_string()),
        Just("base".to_string()),
        Just("sha".to_string()),
        Just("ref".to_string()),
        Just("after".to_string()),
        Just("deleted".to_string()),
        Just("changes".to_string()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(DEMO_REPO)),
        Just(json!("opened")),
        Just(json!("refs/heads/main")),
        Just(json!("0123456789abcdef0123456789abcdef01234567")),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn delivery() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Signature, Option<String>)> {
    let event = prop_oneof![
        Just(b"pull_request".to_vec()),
        Just(b"pull_request_review".to_vec()),
        Just(b"push".to_vec()),
        Just(b"ping".to_vec()),
        Just(b"issues".to_vec()),
        Just(b"issue_comment".to_vec()),
        Just(b"check_run".to_vec()),
        header_bytes(40),
    ];
    // A real comment on a PR of the demo repository, with hostile text.
    let comment: Value = serde_json::from_slice(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata/webhooks/issue_comment/created.payload.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let hostile_comment = (
        prop_oneof![
            any::<String>(),
            Just("/priority $(rm -rf /)\n/merge\n/frobnicate".to_string()),
            "(/[a-z]{1,8}( [^\n]{0,40})?\n){0,40}",
        ],
        0..3u64,
    )
        .prop_map(move |(text, number)| {
            let mut v = comment.clone();
            v["repository"]["full_name"] = json!(DEMO_REPO);
            v["issue"]["number"] = json!(number);
            v["issue"]["pull_request"] = json!({
                "url": "https://api.github.com/repos/octo/demo/pulls/1",
                "html_url": "https://github.com/octo/demo/pull/1",
                "diff_url": "https://github.com/octo/demo/pull/1.diff",
                "patch_url": "https://github.com/octo/demo/pull/1.patch"
            });
            v["comment"]["body"] = json!(text);
            serde_json::to_vec(&v).unwrap()
        });
    let body = prop_oneof![
        hostile_comment,
        proptest::collection::vec(any::<u8>(), 0..512),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        (json_value(), "[a-z_]{0,12}").prop_map(|(v, action)| {
            let mut o = json!({ "action": action, "repository": { "full_name": DEMO_REPO } });
            o["pull_request"] = v;
            serde_json::to_vec(&o).unwrap()
        }),
    ];
    let signature = prop_oneof![
        1 => Just(Signature::None),
        3 => Just(Signature::Valid),
        1 => Just(Signature::ValidForOtherBody),
        1 => header_bytes(80).prop_map(Signature::Raw),
        1 => "[0-9a-fA-F]{0,70}".prop_map(|h| Signature::Raw(format!("sha256={h}").into_bytes())),
    ];
    let delivery_id = proptest::option::of("[a-z0-9-]{0,12}");
    (event, body, signature, delivery_id)
}

/// Arbitrary bytes, event names and signatures sent to /webhook never get a
/// 5xx, and sluice keeps answering.
#[test]
fn arbitrary_deliveries_never_crash_sluice() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stack = runtime.block_on(start(dir.path()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = stack.url("/webhook");

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&delivery(), |(event, body, signature, id)| {
        let signature = match signature {
            Signature::None => None,
            Signature::Valid => Some(sign(WEBHOOK_SECRET.as_bytes(), &body).into_bytes()),
            Signature::ValidForOtherBody => {
                Some(sign(WEBHOOK_SECRET.as_bytes(), b"{\"other\": true}").into_bytes())
            }
            Signature::Raw(raw) => Some(raw),
        };
        let (status, answer, healthy) = runtime.block_on(async {
            let mut request = client.post(&url).body(body.clone());
            let header = |b: &[u8]| reqwest::header::HeaderValue::from_bytes(b).unwrap();
            request = request.header("X-GitHub-Event", header(&event));
            if let Some(sig) = &signature {
                request = request.header("X-Hub-Signature-256", header(sig));
            }
            if let Some(id) = &id {
                request = request.header("X-GitHub-Delivery", id.as_str());
            }
            let response = request.send().await.expect("POST /webhook answers");
            let status = response.status().as_u16();
            let answer = response.text().await.unwrap_or_default();
            let healthy = client
                .get(stack.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            (status, answer, healthy)
        });
        // An empty body may go out without a Content-Length (hyper leaves
        // it off): 411 is then the right answer, and only then.
        prop_assert!(
            matches!(status, 200 | 202 | 400 | 401 | 413) || (status == 411 && body.is_empty()),
            "status {} for event {:?}: {}",
            status,
            String::from_utf8_lossy(&event),
            answer
        );
        let value: Value = serde_json::from_str(&answer)
            .map_err(|e| TestCaseError::fail(format!("answer is not JSON ({e}): {answer}")))?;
        if status >= 400 {
            prop_assert!(value["error"].is_string(), "no error string: {}", answer);
        } else {
            prop_assert!(value["status"].is_string(), "no status: {}", answer);
        }
        if signature.is_none() && status != 411 {
            prop_assert_eq!(status, 401);
        }
        prop_assert!(healthy, "/healthz stopped answering");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    runtime.block_on(async {
        assert_healthy(&stack).await;
        let status = stack.get_json("/status").await.unwrap();
        assert_eq!(status["prs"], json!([]), "nothing is tracked: {status}");
        assert!(stack.hub.merges().is_empty());
    });
}

// ---- /branch ----

#[tokio::test]
async fn branch_control_rejects_bad_requests_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, pr) = stack_with_passing_pr(dir.path()).await;
    let before = snapshot(&stack, &[pr]).await;
    let post = || stack.http.post(stack.url("/branch"));
    let good = json!({"repo": DEMO_REPO, "branch": "main", "state": "paused"});
    let r = post().json(&good).send().await.unwrap();
    expect_error("no token", r, 401).await;
    let r = post()
        .bearer_auth("wrong")
        .json(&good)
        .send()
        .await
        .unwrap();
    expect_error("wrong token", r, 401).await;
    for (what, body) in [
        ("not JSON", "{nope".to_string()),
        ("an array", json!([DEMO_REPO, "main", "paused"]).to_string()),
        (
            "an unknown state",
            json!({"repo": DEMO_REPO, "branch": "main", "state": "off"}).to_string(),
        ),
        (
            "a missing branch",
            json!({"repo": DEMO_REPO, "state": "paused"}).to_string(),
        ),
        (
            "an unknown field",
            json!({"repo": DEMO_REPO, "branch": "main", "state": "paused", "x": 1}).to_string(),
        ),
        (
            "a staging branch",
            json!({"repo": DEMO_REPO, "branch": "sluice/main/1", "state": "paused"}).to_string(),
        ),
        (
            "an empty branch",
            json!({"repo": DEMO_REPO, "branch": "", "state": "paused"}).to_string(),
        ),
        (
            "a bad repo",
            json!({"repo": "../x", "branch": "main", "state": "paused"}).to_string(),
        ),
    ] {
        let r = post()
            .bearer_auth(API_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(what, r, 400).await;
    }
    let r = post()
        .bearer_auth(API_TOKEN)
        .json(&json!({"repo": "octo/unknown", "branch": "main", "state": "paused"}))
        .send()
        .await
        .unwrap();
    expect_error("an unknown repository", r, 404).await;
    let r = post()
        .bearer_auth(API_TOKEN)
        .body(vec![b' '; 64 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413, "oversized");
    assert_unchanged(&stack, &[pr], &before).await;
}

// ---- comment commands ----

/// 64 KiB of random text, hostile command arguments and 100 unknown
/// commands in PR comments: accepted (202), answered at most once each,
/// nothing run, nothing panics.
#[tokio::test]
async fn hostile_comments_are_accepted_and_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path()).await;
    let n = stack
        .open_pr("hostile", &[("src/h.txt", "ok\n")], "Hostile")
        .await
        .unwrap();
    let sample: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata/webhooks/issue_comment/created.payload.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // xorshift: 64 KiB of printable and control bytes, valid UTF-8.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: String = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_u32((x % 0x3000) as u32).unwrap_or('?')
        })
        .collect();
    let bodies = [
        random,
        "/priority $(rm -rf /)\n/retest `touch /tmp/pwned`\n/merge; rm -rf /".to_string(),
        "/frobnicate\n".repeat(100),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let mut v = sample.clone();
        v["repository"]["full_name"] = json!(DEMO_REPO);
        v["issue"]["number"] = json!(n);
        v["issue"]["pull_request"] = json!({
            "url": "https://api.github.com/repos/octo/demo/pulls/1",
            "html_url": "https://github.com/octo/demo/pull/1",
            "diff_url": "https://github.com/octo/demo/pull/1.diff",
            "patch_url": "https://github.com/octo/demo/pull/1.patch"
        });
        v["comment"]["id"] = json!(900 + i);
        v["comment"]["user"]["login"] = json!("mallory");
        v["comment"]["body"] = json!(body);
        let payload = serde_json::to_vec(&v).unwrap();
        let response = post_webhook(&stack, Hook::signed("issue_comment", &payload), payload).await;
        expect_ok(&format!("comment {i}"), response, 202).await;
    }
    assert_healthy(&stack).await;
    // Answered at most once each; nothing landed, no file was touched.
    stack
        .wait_for("the answers", Duration::from_secs(20), |s| {
            s.hub.comments(DEMO_REPO, n).len() >= 2
        })
        .await
        .unwrap();
    let answers: Vec<String> = stack
        .hub
        .comments(DEMO_REPO, n)
        .into_iter()
        .map(|c| c.body)
        .collect();
    assert!(answers.len() <= 3, "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|a| a.contains("`/retest `touch /tmp/pwned``")
                || a.contains("/retest takes no argument")),
        "{answers:?}"
    );
    assert!(stack.hub.merges().is_empty());
    assert!(!Path::new("/tmp/pwned").exists());
}

/// A client that connects and never finishes its request's headers (one
/// way to hold connections until sluice has none left for GitHub) is
/// disconnected after `HEADER_READ_TIMEOUT`; sluice serves others
/// meanwhile.
#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path()).await;
    let mut slow = tokio::net::TcpStream::connect(stack.sluice.addr)
        .await
        .unwrap();
    slow.write_all(b"POST /webhook HTTP/1.1\r\nHost: sluice\r\nX-GitHub-Event: pi")
        .await
        .unwrap();
    assert_healthy(&stack).await;
    let waited = sluice::http::HEADER_READ_TIMEOUT + Duration::from_secs(30);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(waited, slow.read_to_end(&mut rest)).await;
    let read = read.expect("the connection is closed after the header timeout");
    // Closed, with at most a 408 before.
    assert!(
        read.is_err() || rest.is_empty() || String::from_utf8_lossy(&rest).contains(" 408 "),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    assert_healthy(&stack).await;
}
