//! Webhook parsing and signature checks against GitHub's real payloads
//! (copied from octokit/webhooks into testdata/webhooks, with its licence).

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice::core::{Event, PrKey, PrSnapshot, RepoName, Sha, Timestamp};
use sluice::forge::webhook::{
    Delivery, SignatureError, WebhookError, parse_delivery, sign, verify_signature,
};
use std::path::{Path, PathBuf};

const HEAD: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
const BASE: &str = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e";
/// 2019-05-15T15:20:33Z
const CREATED_MS: u64 = 1_557_933_633_000;

fn webhooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/webhooks")
}

fn payload(event: &str, file: &str) -> Vec<u8> {
    let path = webhooks_dir().join(event).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn payloads(event: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(webhooks_dir().join(event))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no payloads for {event}");
    out
}

fn repo() -> RepoName {
    RepoName::parse("Codertocat/Hello-World").unwrap()
}

fn key() -> PrKey {
    PrKey {
        repo: repo(),
        number: 2,
    }
}

fn expected_snapshot(draft: bool, mergeable: Option<bool>) -> PrSnapshot {
    PrSnapshot {
        key: key(),
        head_sha: Sha::parse(HEAD).unwrap(),
        head_ref: "changes".into(),
        base_ref: "master".into(),
        base_sha: Some(Sha::parse(BASE).unwrap()),
        title: "Update the README with new information.".into(),
        author: "Codertocat".into(),
        draft,
        mergeable,
        labels: vec!["bug".into()],
        created_at: Timestamp(CREATED_MS),
        depends_on: Vec::new(),
    }
}

fn events(d: Delivery) -> Vec<Event> {
    match d {
        Delivery::Events(e) => e,
        other => panic!("expected events, got {other:?}"),
    }
}

#[test]
fn every_pull_request_payload_maps_to_its_event() {
    for (file, body) in payloads("pull_request") {
        let action = file.trim_end_matches(".payload.json");
        let got = parse_delivery("pull_request", &body).unwrap_or_else(|e| panic!("{file}: {e}"));
        let v: Value = serde_json::from_slice(&body).unwrap();
        let mergeable = v["pull_request"]["mergeable"].as_bool();
        match action {
            // Opened: no reviews exist yet, so sluice reads none.
            "opened" => assert_eq!(
                events(got),
                vec![Event::PrOpened(expected_snapshot(false, mergeable))],
                "{file}"
            ),
            "synchronize" | "ready_for_review" | "labeled" | "unlabeled" => {
                assert_eq!(
                    events(got),
                    vec![Event::PrUpdated(expected_snapshot(false, mergeable))],
                    "{file}"
                );
            }
            "converted_to_draft" => {
                assert_eq!(
                    events(got),
                    vec![Event::PrUpdated(expected_snapshot(true, mergeable))],
                    "{file}"
                );
            }
            "reopened" => assert_eq!(
                events(got),
                vec![Event::PrReopened(expected_snapshot(false, mergeable))],
                "{file}"
            ),
            // GitHub's sample closes the PR without merging it; merged, it
            // would be `PrClosed` (a PR depending on it may then enter).
            "closed" => {
                assert_eq!(events(got), vec![Event::PrClosedUnmerged(key())], "{file}");
                assert_eq!(v["pull_request"]["merged"], Value::Bool(false), "{file}");
                let mut merged = v.clone();
                merged["pull_request"]["merged"] = Value::Bool(true);
                let merged = serde_json::to_vec(&merged).unwrap();
                let got = parse_delivery("pull_request", &merged).unwrap();
                assert_eq!(events(got), vec![Event::PrClosed(key())], "{file}");
            }
            _ => assert!(
                matches!(got, Delivery::Ignored { .. }),
                "{file}: expected Ignored, got {got:?}"
            ),
        }
    }
}

#[test]
fn opened_snapshot_keeps_mergeable_unknown_and_synchronize_too() {
    // The real `opened` payload has `mergeable: null`: still being computed.
    let got = events(
        parse_delivery(
            "pull_request",
            &payload("pull_request", "opened.payload.json"),
        )
        .unwrap(),
    );
    let Event::PrOpened(s) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(s.mergeable, None);
    let got = events(
        parse_delivery(
            "pull_request",
            &payload("pull_request", "labeled.payload.json"),
        )
        .unwrap(),
    );
    let Event::PrUpdated(s) = &got[0] else {
        panic!()
    };
    assert_eq!(s.mergeable, Some(true));
    assert_eq!(s.created_at, Timestamp(CREATED_MS));
}

fn with_action(body: &[u8], action: &str, changes: Option<Value>) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    v["action"] = json!(action);
    if let Some(c) = changes {
        v["changes"] = c;
    }
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn edited_counts_only_when_the_base_changed() {
    let opened = payload("pull_request", "opened.payload.json");
    let title_only = with_action(
        &opened,
        "edited",
        Some(json!({"title": {"from": "old title"}})),
    );
    assert!(matches!(
        parse_delivery("pull_request", &title_only).unwrap(),
        Delivery::Ignored { .. }
    ));
    let no_changes = with_action(&opened, "edited", None);
    assert!(matches!(
        parse_delivery("pull_request", &no_changes).unwrap(),
        Delivery::Ignored { .. }
    ));
    let base = with_action(
        &opened,
        "edited",
        Some(json!({"base": {"ref": {"from": "develop"}, "sha": {"from": BASE}}})),
    );
    assert_eq!(
        events(parse_delivery("pull_request", &base).unwrap()),
        vec![Event::PrUpdated(expected_snapshot(false, None))]
    );
}

#[test]
fn unknown_pull_request_actions_are_ignored_not_rejected() {
    let body = with_action(
        &payload("pull_request", "opened.payload.json"),
        "some_future_action",
        None,
    );
    assert!(matches!(
        parse_delivery("pull_request", &body).unwrap(),
        Delivery::Ignored { .. }
    ));
}

#[test]
fn reviews_map_to_review_activity() {
    for (file, body) in payloads("pull_request_review") {
        let got =
            parse_delivery("pull_request_review", &body).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(events(got), vec![Event::ReviewActivity(key())], "{file}");
    }
    let edited = with_action(
        &payload("pull_request_review", "submitted.payload.json"),
        "edited",
        Some(json!({"body": {"from": "old"}})),
    );
    assert_eq!(
        events(parse_delivery("pull_request_review", &edited).unwrap()),
        vec![Event::ReviewActivity(key())]
    );
}

fn push_to(git_ref: &str, after: &str, deleted: bool) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&payload("push", "payload.json")).unwrap();
    v["ref"] = json!(git_ref);
    v["after"] = json!(after);
    v["deleted"] = json!(deleted);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn pushes_to_tags_are_ignored() {
    // The real payload is a deleted tag.
    assert!(matches!(
        parse_delivery("push", &payload("push", "payload.json")).unwrap(),
        Delivery::Ignored { .. }
    ));
}

#[test]
fn pushes_to_branches_move_or_delete_them() {
    let sha = "1".repeat(40);
    let body = push_to("refs/heads/feature/x", &sha, false);
    assert_eq!(
        events(parse_delivery("push", &body).unwrap()),
        vec![Event::BranchMoved {
            repo: repo(),
            branch: "feature/x".into(),
            sha: Sha::parse(&sha).unwrap(),
            // The payload's own `before`, so a late push can be refused.
            before: Some(Sha::parse("6113728f27ae82c7b1a177c8d03f9e96e0adf246").unwrap()),
        }]
    );
    for (after, deleted) in [("0".repeat(40), true), ("0".repeat(40), false)] {
        let body = push_to("refs/heads/main", &after, deleted);
        assert_eq!(
            events(parse_delivery("push", &body).unwrap()),
            vec![Event::BranchDeleted {
                repo: repo(),
                branch: "main".into(),
            }]
        );
    }
    let err = parse_delivery("push", &push_to("refs/heads/main", "not-a-sha", false)).unwrap_err();
    assert!(err.to_string().contains("after"), "{err}");
}

#[test]
fn ping_is_ping() {
    assert_eq!(
        parse_delivery("ping", &payload("ping", "payload.json")).unwrap(),
        Delivery::Ping
    );
}

#[test]
fn other_events_are_ignored() {
    for event in [
        "check_run",
        "check_suite",
        "issue_comment",
        "merge_group",
        "pull_request_review_comment",
        "status",
    ] {
        for (file, body) in payloads(event) {
            let got =
                parse_delivery(event, &body).unwrap_or_else(|e| panic!("{event}/{file}: {e}"));
            assert!(
                matches!(got, Delivery::Ignored { .. }),
                "{event}/{file}: {got:?}"
            );
        }
    }
}

#[test]
fn broken_payloads_are_errors_that_name_the_problem() {
    let opened = payload("pull_request", "opened.payload.json");
    let err = parse_delivery("pull_request", b"{not json").unwrap_err();
    assert!(matches!(err, WebhookError::InvalidJson { .. }), "{err}");

    let mut v: Value = serde_json::from_slice(&opened).unwrap();
    v["repository"]["full_name"] = json!("../etc");
    let err = parse_delivery("pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("repository"), "{err}");

    let mut v: Value = serde_json::from_slice(&opened).unwrap();
    v["pull_request"]["head"]["sha"] = json!("zzz");
    let err = parse_delivery("pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("head.sha"), "{err}");

    let mut v: Value = serde_json::from_slice(&opened).unwrap();
    v.as_object_mut().unwrap().remove("pull_request");
    let err = parse_delivery("pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("pull_request"), "{err}");

    let mut v: Value = serde_json::from_slice(&opened).unwrap();
    v.as_object_mut().unwrap().remove("action");
    let err = parse_delivery("pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("action"), "{err}");

    let mut v: Value = serde_json::from_slice(&opened).unwrap();
    v.as_object_mut().unwrap().remove("repository");
    let err = parse_delivery("pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("repository"), "{err}");
}

#[test]
fn truncated_real_payloads_never_panic() {
    for event in ["pull_request", "pull_request_review", "push", "ping"] {
        for (_, body) in payloads(event) {
            for len in (0..body.len()).step_by(97) {
                let _ = parse_delivery(event, &body[..len]);
            }
        }
    }
}

/// Replaces every scalar at any depth with each of a few odd values, one at a
/// time; parsing must answer (Ok or Err), never panic.
#[test]
fn mutated_real_payloads_never_panic() {
    fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    out.push(prefix.clone());
                    paths(child, prefix, out);
                    prefix.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate().take(2) {
                    prefix.push(i.to_string());
                    out.push(prefix.clone());
                    paths(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => {}
        }
    }
    fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
        path.iter().fold(v, |v, k| match v {
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            other => &mut other[k.as_str()],
        })
    }
    let odd = [json!(null), json!(-1), json!("\u{0}$(x)")];
    for (event, file) in [
        ("pull_request", "synchronize.payload.json"),
        ("pull_request_review", "submitted.payload.json"),
        ("push", "payload.json"),
    ] {
        let mut base: Value = serde_json::from_slice(&payload(event, file)).unwrap();
        if event == "push" {
            base["ref"] = json!("refs/heads/main");
            base["after"] = json!("1".repeat(40));
        }
        let mut all = Vec::new();
        paths(&base, &mut Vec::new(), &mut all);
        for path in all {
            for value in &odd {
                let mut v = base.clone();
                *at(&mut v, &path) = value.clone();
                let _ = parse_delivery(event, &serde_json::to_vec(&v).unwrap());
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_deliveries_never_panic(
        event in prop_oneof![
            Just("pull_request".to_string()),
            Just("pull_request_review".to_string()),
            Just("push".to_string()),
            Just("ping".to_string()),
            ".*",
        ],
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = parse_delivery(&event, &body);
    }

    #[test]
    fn arbitrary_json_objects_never_panic(
        event in prop_oneof![
            Just("pull_request"),
            Just("pull_request_review"),
            Just("push"),
        ],
        action in ".{0,20}",
        git_ref in prop_oneof![Just("refs/heads/main".to_string()), ".{0,30}"],
        number in any::<i64>(),
    ) {
        let body = json!({
            "action": action,
            "ref": git_ref,
            "number": number,
            "pull_request": {"number": number, "head": {"sha": "x"}},
            "repository": {"full_name": action},
        });
        let _ = parse_delivery(event, &serde_json::to_vec(&body).unwrap());
    }

    #[test]
    fn arbitrary_signature_headers_never_panic(header in ".*", body in ".*") {
        let _ = verify_signature(b"secret", body.as_bytes(), Some(&header));
    }
}

const SECRET: &[u8] = b"It's a Secret to Everybody";

#[test]
fn signature_of_a_known_secret_and_body() {
    // GitHub's documented example:
    // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    let body = b"Hello, World!";
    let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(sign(SECRET, body), header);
    assert_eq!(verify_signature(SECRET, body, Some(header)), Ok(()));
}

#[test]
fn signature_failures_are_distinct() {
    let body = payload("pull_request", "opened.payload.json");
    let good = sign(SECRET, &body);
    assert_eq!(verify_signature(SECRET, &body, Some(&good)), Ok(()));

    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(
        verify_signature(SECRET, &tampered, Some(&good)),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature(b"wrong secret", &body, Some(&good)),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature(SECRET, &body, None),
        Err(SignatureError::Missing)
    );
    let hex = good.trim_start_matches("sha256=");
    assert_eq!(
        verify_signature(SECRET, &body, Some(hex)),
        Err(SignatureError::NoPrefix)
    );
    assert_eq!(
        verify_signature(SECRET, &body, Some(&format!("sha1={hex}"))),
        Err(SignatureError::NoPrefix)
    );
    assert_eq!(
        verify_signature(SECRET, &body, Some(&format!("sha256={}", "zz".repeat(32)))),
        Err(SignatureError::BadHex)
    );
    assert_eq!(
        verify_signature(SECRET, &body, Some(&good[..good.len() - 2])),
        Err(SignatureError::WrongLength(62))
    );
    assert_eq!(
        verify_signature(SECRET, &body, Some(&format!("{good}00"))),
        Err(SignatureError::WrongLength(66))
    );
    for e in [
        SignatureError::Missing,
        SignatureError::NoPrefix,
        SignatureError::BadHex,
        SignatureError::WrongLength(3),
        SignatureError::Mismatch,
    ] {
        assert!(e.to_string().contains("X-Hub-Signature-256"), "{e}");
    }
}

/// GitHub's `issue_comment` payload as on a PR (`issue.pull_request`
/// present), with `body` and the author's `type`.
fn pr_comment(file: &str, body: &str, user_type: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&payload("issue_comment", file)).unwrap();
    v["issue"]["pull_request"] = json!({
        "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1",
        "html_url": "https://github.com/Codertocat/Hello-World/pull/1",
        "diff_url": "https://github.com/Codertocat/Hello-World/pull/1.diff",
        "patch_url": "https://github.com/Codertocat/Hello-World/pull/1.patch"
    });
    v["comment"]["body"] = json!(body);
    v["comment"]["user"]["type"] = json!(user_type);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn a_new_comment_on_a_pr_by_a_person_is_read_and_others_are_ignored() {
    let pr = PrKey {
        repo: repo(),
        number: 1,
    };
    let got = parse_delivery(
        "issue_comment",
        &pr_comment("created.payload.json", "/merge", "User"),
    );
    assert_eq!(
        got,
        Ok(Delivery::Events(vec![Event::Commented {
            pr,
            comment: 492700400,
            author: "Codertocat".into(),
            body: "/merge".into(),
        }]))
    );
    // GitHub's own sample is a comment on an issue: nothing for sluice.
    for (file, body) in payloads("issue_comment") {
        let got = parse_delivery("issue_comment", &body).unwrap();
        assert!(matches!(got, Delivery::Ignored { .. }), "{file}: {got:?}");
    }
    // Edited and deleted comments, and comments by bots (sluice's own
    // answers), are never commands.
    for (file, kind) in [
        ("edited.payload.json", "User"),
        ("deleted.payload.json", "User"),
        ("created.payload.json", "Bot"),
    ] {
        let got = parse_delivery("issue_comment", &pr_comment(file, "/merge", kind)).unwrap();
        assert!(
            matches!(got, Delivery::Ignored { .. }),
            "{file} {kind}: {got:?}"
        );
    }
    // A 70 KiB body is cut to the 64 KiB sluice reads, on a char boundary.
    let long = "é".repeat(35 * 1024);
    let Ok(Delivery::Events(events)) = parse_delivery(
        "issue_comment",
        &pr_comment("created.payload.json", &long, "User"),
    ) else {
        panic!("a long comment is still a comment");
    };
    let Event::Commented { body, .. } = &events[0] else {
        panic!("{events:?}");
    };
    assert!(body.len() <= sluice::core::commands::MAX_BODY && body.len() > 60 * 1024);
}

#[test]
fn a_rerun_of_the_check_retests_the_prs_on_its_head() {
    // GitHub's sample names no PR: nothing to retest.
    let sample = payload("check_run", "rerequested.payload.json");
    assert!(matches!(
        parse_delivery("check_run", &sample),
        Ok(Delivery::Ignored { .. })
    ));
    let mut v: Value = serde_json::from_slice(&sample).unwrap();
    v["check_run"]["pull_requests"] = json!([{
        "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2",
        "id": 279147437,
        "number": 2,
        "head": {"ref": "changes", "sha": "d6fde92930d4715a2b49857d24b940956b26d2d3", "repo": {"id": 186853002, "url": "https://api.github.com/repos/Codertocat/Hello-World", "name": "Hello-World"}},
        "base": {"ref": "master", "sha": BASE, "repo": {"id": 186853002, "url": "https://api.github.com/repos/Codertocat/Hello-World", "name": "Hello-World"}}
    }]);
    let got = parse_delivery("check_run", &serde_json::to_vec(&v).unwrap());
    assert_eq!(
        got,
        Ok(Delivery::Events(vec![Event::Rerun {
            pr: PrKey {
                repo: RepoName::parse("github/hello-world").unwrap(),
                number: 2,
            },
            head: Sha::parse("d6fde92930d4715a2b49857d24b940956b26d2d3").unwrap(),
        }]))
    );
    // Created and completed check runs are sluice's own doing.
    for file in ["created.payload.json", "completed.payload.json"] {
        let got = parse_delivery("check_run", &payload("check_run", file)).unwrap();
        assert!(matches!(got, Delivery::Ignored { .. }), "{file}: {got:?}");
    }
    // Installations: read with octocrab's models into the repositories
    // the App was given or denied (the driver re-reads the given ones).
    for (file, body) in payloads("installation") {
        let got = parse_delivery("installation", &body).unwrap();
        let Delivery::Access(change) = got else {
            panic!("{file}: {got:?}");
        };
        assert!(
            change.what.starts_with("installation "),
            "{file}: {change:?}"
        );
    }
    let created = payload("installation", "created.payload.json");
    let Ok(Delivery::Access(change)) = parse_delivery("installation", &created) else {
        panic!("created");
    };
    let hello = RepoName::parse("Codertocat/Hello-World").unwrap();
    assert_eq!(change.granted, vec![hello.clone()]);
    assert!(change.revoked.is_empty());
    let mut v: Value = serde_json::from_slice(&created).unwrap();
    v["action"] = json!("removed");
    v["repository_selection"] = json!("selected");
    v["repositories_added"] = json!([]);
    v["repositories_removed"] = v["repositories"].clone();
    let got = parse_delivery(
        "installation_repositories",
        &serde_json::to_vec(&v).unwrap(),
    );
    let Ok(Delivery::Access(change)) = got else {
        panic!("{got:?}");
    };
    assert_eq!(change.what, "installation_repositories removed");
    assert_eq!((change.granted.len(), change.revoked), (0, vec![hello]));
    assert!(parse_delivery("installation_repositories", b"{\"action\": \"added\"}").is_err());
}
