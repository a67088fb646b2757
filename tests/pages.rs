//! The HTML pages over real HTTP against the demo stack: what they show,
//! hostile input rendered as text, and the status codes of bad requests.

use sluice::demo::{DEMO_REPO, Stack};
use std::time::Duration;

const HOSTILE: &str = "<script>alert(1)</script>";

async fn get(stack: &Stack, path: &str) -> (u16, String, String) {
    let response = stack.http.get(stack.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, kind, response.text().await.unwrap())
}

/// Waits until sluice tracks `n` PRs, each with a decided own test.
async fn settled(stack: &Stack, n: usize) {
    for _ in 0..1200 {
        let status = stack.get_json("/status").await.unwrap();
        let prs = status["prs"].as_array().cloned().unwrap_or_default();
        if prs.len() == n
            && prs
                .iter()
                .all(|p| p["phase"] == "passed" || p["phase"] == "failed")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sluice did not settle on {n} PRs");
}

/// The text between `<tag ... data-pr="N"` and its end, for one element.
fn element<'a>(body: &'a str, class: &str, pr: u64) -> &'a str {
    let start = body
        .find(&format!("class=\"{class}\" data-pr=\"{pr}\""))
        .unwrap_or_else(|| panic!("no {class} for #{pr} in {body}"));
    let rest = &body[start..];
    let end = rest.find("</tr>").or_else(|| rest.find("</li>")).unwrap();
    &rest[..end]
}

#[tokio::test]
async fn hostile_titles_render_as_text_and_waiting_prs_show_why() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), "127.0.0.1:0".parse().unwrap(), |_| {})
        .await
        .unwrap();
    let long = "a very long title ".repeat(556) + "end";
    assert!(long.len() >= 10_000);
    let rtl = "\u{202E}txet lanoitcerid-ib \u{0645}\u{0631}\u{062D}\u{0628}\u{0627}";
    let hostile = stack
        .open_pr("hostile", &[("src/h.txt", "h\n")], HOSTILE)
        .await
        .unwrap();
    let long_pr = stack
        .open_pr("long", &[("src/l.txt", "l\n")], &long)
        .await
        .unwrap();
    let rtl_pr = stack
        .open_pr("rtl", &[("src/r.txt", "r\n")], rtl)
        .await
        .unwrap();
    settled(&stack, 3).await;

    let (status, kind, body) = get(&stack, "/").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(body.contains("<main id=\"dashboard\">"), "{body}");
    // Escaped: the only <script> is the page's own.
    assert!(!body.contains(HOSTILE), "the title is not escaped");
    assert_eq!(body.matches("<script>").count(), 1, "{body}");
    assert!(
        body.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || body.contains("&lt;script&gt;")
    );
    assert!(body.contains(&long), "the long title is shown whole");
    assert!(body.contains(rtl), "the right-to-left title is shown");
    // Isolated from the text around it.
    assert!(body.contains("<bdi class=\"title\" dir=\"auto\">"));
    // Each waiting PR with its reason, the same words as the JSON.
    let json = stack.get_json("/status").await.unwrap();
    for pr in [hostile, long_pr, rtl_pr] {
        let row = element(&body, "waiting", pr);
        let want = json["prs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["number"] == pr)
            .unwrap()["waiting_on"][0]
            .as_str()
            .unwrap()
            .to_string();
        assert!(row.contains("class=\"reason\""), "{row}");
        assert!(row.contains(&want), "#{pr}: {want:?} not in {row}");
        assert!(
            row.contains(&format!("href=\"/pr/octo/demo/{pr}\"")),
            "{row}"
        );
    }
    assert!(
        body.contains("data-state=\"passed\""),
        "counts per state: {body}"
    );

    // The PR page: the title escaped, the explanation, the build link.
    let (status, _, page) = get(&stack, &format!("/pr/{DEMO_REPO}/{hostile}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains(HOSTILE));
    assert!(page.contains("id=\"explanation\""));
    assert!(page.contains("class=\"build\""), "{page}");
    let link = json["prs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"] == hostile)
        .unwrap()["link"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        page.contains(&format!("href=\"{link}\"")),
        "{link} in {page}"
    );

    // Approvals that do not count, and why; a change request blocks.
    stack
        .hub
        .review(DEMO_REPO, hostile, "alice", "CHANGES_REQUESTED")
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, hostile, "mallory", "APPROVED")
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, hostile, "carol", "APPROVED")
        .await
        .unwrap();
    let mut page = String::new();
    for _ in 0..200 {
        page = get(&stack, &format!("/pr/{DEMO_REPO}/{hostile}")).await.2;
        if ["alice", "carol", "mallory"]
            .iter()
            .all(|r| page.contains(&format!("data-reviewer=\"{r}\"")))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        page.contains("the author&#39;s own review") || page.contains("the author's own review"),
        "{page}"
    );
    assert!(page.contains("mallory has no write access"), "{page}");
    assert!(page.contains("not approved: 0 of 1"), "{page}");
    assert!(page.contains("changes requested by alice"), "{page}");
    assert!(page.contains("blocks: changes requested"), "{page}");
    stack.sluice.stop().await;
}

#[tokio::test]
async fn a_landed_pr_is_found_by_sha_and_its_page_says_where_it_landed() {
    let dir = tempfile::tempdir().unwrap();
    // Serial mode: GitHub's merge record names the merge commit.
    let stack = Stack::start(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.repos[0].train_depth = 0;
    })
    .await
    .unwrap();
    let pr = stack
        .open_pr("lands", &[("src/lands.txt", "ok\n")], "Lands")
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, pr, "alice", "APPROVED")
        .await
        .unwrap();
    stack
        .wait_for("the PR merged", Duration::from_secs(60), |s| {
            !s.hub.merges().is_empty()
        })
        .await
        .unwrap();
    let merge = stack.hub.merges()[0].clone();
    // The history records the landing once GitHub answered.
    let mut body = String::new();
    for _ in 0..200 {
        body = get(&stack, "/").await.2;
        if body.contains("class=\"landed\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let landed = element(&body, "landed", pr);
    assert!(
        landed.contains(&format!("data-sha=\"{}\"", merge.merge_sha.as_str())),
        "{landed}"
    );
    assert!(landed.contains("/results/"), "the tested build: {landed}");

    // Search by a 7-digit prefix of the landed commit.
    let short = &merge.merge_sha.as_str()[..7];
    let (status, _, found) = get(&stack, &format!("/search?sha={short}&repo=&pr=")).await;
    assert_eq!(status, 200, "{found}");
    assert!(
        found.contains(&format!(
            "class=\"entry\" data-kind=\"merged\" data-sha=\"{}\"",
            merge.merge_sha.as_str()
        )),
        "{found}"
    );
    // By the PR's head too: its builds.
    let (_, _, by_head) = get(&stack, &format!("/search?sha={}", merge.head_sha.as_str())).await;
    assert!(
        by_head.contains("data-kind=\"build_finished\""),
        "{by_head}"
    );

    // The PR is no longer tracked; its page is drawn from the history.
    let (status, _, page) = get(&stack, &format!("/pr/{DEMO_REPO}/{pr}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("landed as {}", merge.merge_sha.as_str())),
        "{page}"
    );
    assert!(page.contains("data-outcome=\"passed\""), "{page}");
    stack.sluice.stop().await;
}

#[tokio::test]
async fn bad_requests_get_400_and_404_pages_and_wrong_methods_405() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), "127.0.0.1:0".parse().unwrap(), |_| {})
        .await
        .unwrap();
    for (path, want) in [
        ("/?page=x", 400),
        ("/?page=0", 400),
        ("/?page=-1", 400),
        ("/?nope=1", 400),
        ("/?page=99", 200),
        ("/pr/octo/demo/abc", 400),
        ("/pr/octo/demo/-3", 400),
        ("/pr/octo/demo/99999999999999999999999", 400),
        ("/pr/octo/demo/4242", 404),
        ("/pr/nobody/nothing/1", 404),
        ("/pr/..%2F../x/1", 404),
        ("/search?sha=xyz", 400),
        ("/search?sha=abc", 400),
        ("/search?pr=one", 400),
        ("/search?repo=noslash", 400),
        ("/search?what=1", 400),
        ("/search?sha=%3Cscript%3E", 400),
        ("/search", 200),
        ("/search?sha=&repo=&pr=", 200),
        ("/search?sha=0000000", 200),
        ("/search?page=0", 400),
        ("/search?from=abcdef0", 400),
        ("/search?branch=main&from=0000000", 404),
        ("/search?branch=main&page=7", 200),
    ] {
        let (status, kind, body) = get(&stack, path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(kind.starts_with("text/html"), "{path}: {kind}");
        assert!(
            !body.contains("<script>alert") && !body.contains("<script>\""),
            "{path}"
        );
        if want != 200 && path.starts_with("/search") {
            // The form stays, to correct the query.
            assert!(body.contains("<form class=\"search\""), "{path}: {body}");
        }
    }
    // What a bad sha echoes back is escaped.
    let (_, _, body) = get(&stack, "/search?sha=%3Cscript%3E").await;
    assert!(!body.contains("value=\"<script>"), "{body}");
    for path in ["/", "/search", "/pr/octo/demo/1"] {
        let response = stack.http.post(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405, "POST {path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    // Unknown paths stay JSON 404s.
    let response = stack
        .http
        .get(stack.url("/nope/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let response = stack
        .http
        .get(stack.url("/pr/octo/demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    // The JSON endpoints are unchanged beside the pages.
    let (code, body) = (
        stack
            .http
            .get(stack.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        stack.get_json("/status").await.unwrap(),
    );
    assert_eq!(code, 200);
    assert!(body["prs"].is_array());
    // Pages carry a policy that lets no other script run.
    let response = stack.http.get(stack.url("/")).send().await.unwrap();
    let csp = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    stack.sluice.stop().await;
}
