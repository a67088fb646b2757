//! The App side of the fake GitHub, over real HTTP: JWTs checked as GitHub
//! checks them, installation tokens that expire and stay in their
//! installation, check runs, reactions, comments, and the webhooks an App
//! receives, parsed with octocrab's models.

use octocrab::models::checks::ListCheckRuns;
use octocrab::models::issues::Comment;
use octocrab::models::reactions::Reaction;
use octocrab::models::webhook_events::{EventInstallation, WebhookEvent, WebhookEventPayload};
use octocrab::models::{Installation, InstallationToken};
use serde_json::{Value, json};
use sluice::fakehub::{
    APPS_ONLY, AppKeys, BAD_CREDENTIALS, COMMENT_MAX_CHARS, FakeHub, JWT_BAD_IAT, JWT_EXPIRED,
    JWT_TOO_FAR, JWT_UNDECODABLE, NOT_ACCESSIBLE, OUTPUT_MAX_CHARS, signature,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::Filter;

const REPO: &str = "octo/demo";
const OTHER: &str = "octo/other";
const ELSEWHERE: &str = "alice/elsewhere";
const PAT: &str = "t0k";
const APP: u64 = 4242;

struct World {
    _dir: tempfile::TempDir,
    hub: FakeHub,
    keys: AppKeys,
    installation: u64,
    /// PR #1 of REPO, from `feature`.
    pr: u64,
}

/// A fake with the personal token `PAT`, three repositories, a PR on
/// REPO, and App `APP` installed on REPO only.
async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = FakeHub::start(dir.path(), Some(PAT.into()))
        .await
        .expect("start");
    for r in [REPO, OTHER, ELSEWHERE] {
        hub.create_repo(r, "main", &[("README.md", "hello\n")])
            .await
            .expect("create repo");
    }
    hub.commit(REPO, "feature", Some("main"), &[("f.txt", "f\n")], "F")
        .await
        .unwrap();
    let pr = hub
        .open_pr(REPO, "feature", "main", "Feature", "alice")
        .await
        .unwrap();
    let keys = hub.register_app(APP).expect("register");
    let installation = hub.install_app(APP, "octo", &[REPO]).expect("install");
    World {
        _dir: dir,
        hub,
        keys,
        installation,
        pr,
    }
}

async fn call(
    hub: &FakeHub,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(
        method.parse().expect("method"),
        format!("{}{path}", hub.api_url()),
    );
    if let Some(auth) = auth {
        req = req.header("Authorization", format!("Bearer {auth}"));
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn token_for(w: &World, body: Option<Value>) -> (u16, Value) {
    call(
        &w.hub,
        "POST",
        &format!("/app/installations/{}/access_tokens", w.installation),
        Some(&w.keys.jwt()),
        body,
    )
    .await
}

async fn token(w: &World) -> String {
    let (status, body) = token_for(w, None).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_string()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_jwt_signed_with_the_app_key_gets_an_installation_token() {
    let w = world().await;
    assert!(
        w.keys
            .private_key_pem
            .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
    );
    let jwt = w.keys.jwt();

    let (status, app) = call(&w.hub, "GET", "/app", Some(&jwt), None).await;
    assert_eq!(status, 200, "{app}");
    assert_eq!(app["id"], APP);
    assert_eq!(app["slug"], "sluice");
    assert_eq!(app["installations_count"], 1);
    let parsed: octocrab::models::apps::App = serde_json::from_value(app).expect("App parses");
    assert_eq!(parsed.slug.as_deref(), Some("sluice"));

    let (status, list) = call(&w.hub, "GET", "/app/installations", Some(&jwt), None).await;
    assert_eq!(status, 200);
    let list: Vec<Installation> = serde_json::from_value(list).expect("installations parse");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id.0, w.installation);
    assert_eq!(list[0].account.login, "octo");
    assert_eq!(list[0].app_id.map(|a| a.0), Some(APP));

    let (status, inst) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/installation"),
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let inst: Installation = serde_json::from_value(inst).unwrap();
    assert_eq!(inst.id.0, w.installation);
    for r in [OTHER, "octo/missing"] {
        let (status, body) = call(
            &w.hub,
            "GET",
            &format!("/repos/{r}/installation"),
            Some(&jwt),
            None,
        )
        .await;
        assert_eq!(status, 404, "{r}");
        assert_eq!(body["message"], "Not Found");
    }

    // GitHub takes `iss` as a string too.
    let as_string = w
        .keys
        .sign_claims(&json!({"iat": now() - 60, "exp": now() + 300, "iss": APP.to_string()}));
    let (status, _) = call(&w.hub, "GET", "/app", Some(&as_string), None).await;
    assert_eq!(status, 200);

    let (status, body) = token_for(&w, None).await;
    assert_eq!(status, 201, "{body}");
    let tok: InstallationToken = serde_json::from_value(body.clone()).expect("token parses");
    assert!(
        tok.token.starts_with("ghs_") && tok.token.len() == 40,
        "{}",
        tok.token
    );
    assert_eq!(body["repository_selection"], "selected");
    assert_eq!(body["permissions"]["checks"], "write");
    assert_eq!(body["repositories"][0]["full_name"], REPO);
    let expires = chrono::DateTime::parse_from_rfc3339(tok.expires_at.as_deref().unwrap()).unwrap();
    let ahead = expires.timestamp() - now();
    assert!((3590..=3600).contains(&ahead), "expires in {ahead}s");
    assert_eq!(
        w.hub.installation_tokens(w.installation)[0].token,
        tok.token
    );

    // The token opens its installation's repository, not another one.
    let (status, _) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/pulls"),
        Some(&tok.token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    for r in [OTHER, ELSEWHERE] {
        let (status, body) = call(
            &w.hub,
            "GET",
            &format!("/repos/{r}/pulls"),
            Some(&tok.token),
            None,
        )
        .await;
        assert_eq!(status, 404, "{r}");
        assert_eq!(body["message"], "Not Found");
    }
    // The personal token works as before, everywhere.
    for r in [REPO, OTHER, ELSEWHERE] {
        let (status, _) = call(&w.hub, "GET", &format!("/repos/{r}/pulls"), Some(PAT), None).await;
        assert_eq!(status, 200, "{r}");
    }
    // A token is not a JWT, and a JWT is not a token.
    let (status, body) = call(&w.hub, "GET", "/app/installations", Some(&tok.token), None).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some(JWT_UNDECODABLE))
    );
    let (status, body) = call(&w.hub, "GET", "/app", Some(PAT), None).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some(JWT_UNDECODABLE))
    );
    let (status, body) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/pulls"),
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (403, Some(NOT_ACCESSIBLE))
    );
    let (status, body) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/installation"),
        Some(PAT),
        None,
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some(JWT_UNDECODABLE))
    );

    // An installation of another App is not this App's to mint tokens for.
    let other = w
        .hub
        .register_app_with(7, "other", &[("metadata", "read")])
        .unwrap();
    let theirs = w.hub.install_app(7, "alice", &[ELSEWHERE]).unwrap();
    let (status, _) = call(
        &w.hub,
        "POST",
        &format!("/app/installations/{theirs}/access_tokens"),
        Some(&w.keys.jwt()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &w.hub,
        "POST",
        "/app/installations/999/access_tokens",
        Some(&other.jwt()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        w.hub.register_app(APP).is_err(),
        "an app id is registered once"
    );
}

#[tokio::test]
async fn bad_jwts_are_refused_with_githubs_messages() {
    let w = world().await;
    let path = format!("/app/installations/{}/access_tokens", w.installation);
    let t = now();
    let forged = AppKeys::unregistered(APP).unwrap();
    let hs256 = {
        let key = jsonwebtoken::EncodingKey::from_secret(b"secret");
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"iat": t - 60, "exp": t + 300, "iss": APP}),
            &key,
        )
        .unwrap()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("signed with another key", forged.jwt(), JWT_UNDECODABLE),
        ("expired", w.keys.jwt_with(t - 700, t - 100), JWT_EXPIRED),
        ("expiring now", w.keys.jwt_with(t - 60, t), JWT_EXPIRED),
        (
            "without exp",
            w.keys.sign_claims(&json!({"iat": t - 60, "iss": APP})),
            JWT_EXPIRED,
        ),
        (
            "exp 11 minutes out",
            w.keys.jwt_with(t - 60, t + 660),
            JWT_TOO_FAR,
        ),
        (
            "iat in the future",
            w.keys.jwt_with(t + 120, t + 300),
            JWT_BAD_IAT,
        ),
        (
            "iat not an integer",
            w.keys
                .sign_claims(&json!({"iat": "now", "exp": t + 300, "iss": APP})),
            JWT_BAD_IAT,
        ),
        (
            "an unknown app",
            w.keys
                .sign_claims(&json!({"iat": t - 60, "exp": t + 300, "iss": 99})),
            JWT_UNDECODABLE,
        ),
        (
            "without iss",
            w.keys.sign_claims(&json!({"iat": t - 60, "exp": t + 300})),
            JWT_UNDECODABLE,
        ),
        ("HS256", hs256, JWT_UNDECODABLE),
        (
            "a garbled payload",
            "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln".to_string(),
            JWT_UNDECODABLE,
        ),
        ("not a JWT at all", "not-a-jwt".to_string(), BAD_CREDENTIALS),
    ];
    for (what, jwt, message) in &cases {
        let (status, body) = call(&w.hub, "POST", &path, Some(jwt), None).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["message"], *message, "{what}");
        assert_eq!(
            body["documentation_url"], "https://docs.github.com/rest",
            "{what}"
        );
        let (status, _) = call(&w.hub, "GET", "/app", Some(jwt), None).await;
        assert_eq!(status, 401, "{what}");
    }
    // Exactly ten minutes ahead is still accepted.
    let (status, _) = call(
        &w.hub,
        "POST",
        &path,
        Some(&w.keys.jwt_with(t - 60, t + 600)),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = call(&w.hub, "GET", "/app", None, None).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("Requires authentication"))
    );
    assert!(w.hub.installation_tokens(w.installation).len() == 1);
    // Refused calls are not charged to anyone's rate limit.
    assert_eq!(w.hub.installation_rate_limit_used(w.installation), 0);
}

#[tokio::test]
async fn installation_tokens_expire_narrow_and_follow_the_installation() {
    let w = world().await;
    w.hub
        .set_installation_token_lifetime(Duration::from_millis(1500));
    let tok = token(&w).await;
    let pulls = format!("/repos/{REPO}/pulls");
    let (status, _) = call(&w.hub, "GET", &pulls, Some(&tok), None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (status, body) = call(&w.hub, "GET", &pulls, Some(&tok), None).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some(BAD_CREDENTIALS))
    );
    // A renewed token works, and counts against the same installation.
    w.hub
        .set_installation_token_lifetime(Duration::from_secs(3600));
    let fresh = token(&w).await;
    assert_ne!(fresh, tok);
    let (status, _) = call(&w.hub, "GET", &pulls, Some(&fresh), None).await;
    assert_eq!(status, 200);
    assert_eq!(w.hub.installation_rate_limit_used(w.installation), 2);
    w.hub.expire_installation_tokens(w.installation);
    let (status, _) = call(&w.hub, "GET", &pulls, Some(&fresh), None).await;
    assert_eq!(status, 401);

    // Narrowed to repositories and permissions.
    let (status, body) = token_for(
        &w,
        Some(json!({"repositories": ["demo"], "permissions": {"pull_requests": "read"}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["permissions"], json!({"pull_requests": "read"}));
    let narrow = body["token"].as_str().unwrap().to_string();
    let (status, _) = call(&w.hub, "GET", &pulls, Some(&narrow), None).await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &w.hub,
        "POST",
        &format!("/repos/{REPO}/issues/{}/comments", w.pr),
        Some(&narrow),
        Some(json!({"body": "hi"})),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (403, Some(NOT_ACCESSIBLE))
    );
    for (req, message) in [
        (
            json!({"repositories": ["other"]}),
            "There is at least one repository that does not exist or is not accessible to the parent installation.",
        ),
        (
            json!({"permissions": {"members": "read"}}),
            "The permissions requested are not granted to this installation.",
        ),
    ] {
        let (status, body) = token_for(&w, Some(req.clone())).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (422, Some(message)),
            "{req}"
        );
    }

    // Repositories added to and removed from the installation.
    let tok = token(&w).await;
    let other_pulls = format!("/repos/{OTHER}/pulls");
    let (status, _) = call(&w.hub, "GET", &other_pulls, Some(&tok), None).await;
    assert_eq!(status, 404);
    w.hub
        .add_installation_repos(w.installation, &[OTHER])
        .unwrap();
    let (status, _) = call(&w.hub, "GET", &other_pulls, Some(&tok), None).await;
    assert_eq!(status, 200);
    w.hub
        .remove_installation_repos(w.installation, &[REPO])
        .unwrap();
    let (status, _) = call(&w.hub, "GET", &pulls, Some(&tok), None).await;
    assert_eq!(status, 404);
    let jwt = w.keys.jwt();
    let (status, _) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/installation"),
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        w.hub
            .add_installation_repos(w.installation, &[ELSEWHERE])
            .is_err()
    );
    w.hub.uninstall_app(w.installation).unwrap();
    let (status, body) = call(&w.hub, "GET", &other_pulls, Some(&tok), None).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some(BAD_CREDENTIALS))
    );

    // Installed on all of an account's repositories, later ones too.
    let all = w.hub.install_app_on_all(APP, "alice").unwrap();
    w.hub
        .create_repo("alice/later", "main", &[("a", "a")])
        .await
        .unwrap();
    let (status, body) = call(
        &w.hub,
        "POST",
        &format!("/app/installations/{all}/access_tokens"),
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["repository_selection"], "all");
    assert!(body.get("repositories").is_none());
    let tok = body["token"].as_str().unwrap();
    for r in [ELSEWHERE, "alice/later"] {
        let (status, _) = call(&w.hub, "GET", &format!("/repos/{r}/pulls"), Some(tok), None).await;
        assert_eq!(status, 200, "{r}");
    }
    assert_eq!(w.hub.installation_of("alice/later"), Some(all));
    assert_eq!(w.hub.installation_of(REPO), None);
}

#[tokio::test]
async fn a_token_mode_hub_without_apps_behaves_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(dir.path(), None).await.unwrap();
    hub.create_repo(REPO, "main", &[("README.md", "x")])
        .await
        .unwrap();
    // Without a hub token, anything goes, as before Apps.
    for auth in [None, Some("whatever")] {
        let (status, _) = call(&hub, "GET", &format!("/repos/{REPO}/pulls"), auth, None).await;
        assert_eq!(status, 200, "{auth:?}");
    }
    // But the App endpoints want a JWT.
    let (status, _) = call(&hub, "GET", "/app", None, None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn app_permissions_limit_what_its_tokens_can_do() {
    let w = world().await;
    let reader = w
        .hub
        .register_app_with(
            9,
            "reader",
            &[("metadata", "read"), ("pull_requests", "read")],
        )
        .unwrap();
    assert_eq!(reader.bot_login(), "reader[bot]");
    let inst = w.hub.install_app(9, "octo", &[REPO]).unwrap();
    let mint = format!("/app/installations/{inst}/access_tokens");
    // A key of another App does not sign for this one.
    let forged = AppKeys::unregistered(9).unwrap();
    let (status, _) = call(&w.hub, "POST", &mint, Some(&forged.jwt()), None).await;
    assert_eq!(status, 401);
    let (status, body) = call(&w.hub, "POST", &mint, Some(&reader.jwt()), None).await;
    assert_eq!(status, 201, "{body}");
    let tok = body["token"].as_str().unwrap();
    let (status, _) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/pulls"),
        Some(tok),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &w.hub,
        "POST",
        &format!("/repos/{REPO}/issues/{}/comments", w.pr),
        Some(tok),
        Some(json!({"body": "hi"})),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (403, Some(NOT_ACCESSIBLE))
    );
    let protection = format!("/repos/{REPO}/branches/main/protection/required_status_checks");
    let (status, _) = call(&w.hub, "GET", &protection, Some(tok), None).await;
    assert_eq!(status, 403, "branch protection needs administration:read");
    // The default App has what a merge bot needs.
    let (status, _) = call(&w.hub, "GET", &protection, Some(&token(&w).await), None).await;
    assert_eq!(status, 404, "readable: main is not protected");
    // A narrower token cannot ask for more than the App has.
    let (status, _) = call(
        &w.hub,
        "POST",
        &mint,
        Some(&reader.jwt()),
        Some(json!({"permissions": {"issues": "write"}})),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn check_runs_are_created_updated_listed_and_validated() {
    let w = world().await;
    let tok = token(&w).await;
    let head = w.hub.pr(REPO, w.pr).unwrap().head_sha;
    let runs = format!("/repos/{REPO}/check-runs");

    let (status, created) = call(
        &w.hub,
        "POST",
        &runs,
        Some(&tok),
        Some(json!({"name": "sluice", "head_sha": head.as_str(), "details_url": "http://sluice/builds/1", "external_id": "car-1"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "queued");
    assert_eq!(created["conclusion"], Value::Null);
    assert_eq!(created["app"]["slug"], "sluice");
    assert_eq!(created["pull_requests"][0]["number"], w.pr);
    assert_eq!(created["details_url"], "http://sluice/builds/1");
    let id = created["id"].as_u64().unwrap();
    let one = format!("{runs}/{id}");

    let (status, body) = call(
        &w.hub,
        "PATCH",
        &one,
        Some(&tok),
        Some(json!({"status": "in_progress", "output": {"title": "Testing", "summary": "Position 1 of 2"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "in_progress");
    let (status, body) = call(
        &w.hub,
        "PATCH",
        &one,
        Some(&tok),
        Some(json!({"conclusion": "success", "output": {"title": "Landed", "summary": "Merged as abc", "text": "log"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["status"], "completed",
        "a conclusion completes the run"
    );
    assert_eq!(body["output"]["title"], "Landed");
    assert!(body["completed_at"].is_string());

    let (status, got) = call(&w.hub, "GET", &one, Some(&tok), None).await;
    assert_eq!(status, 200);
    let parsed: octocrab::models::checks::CheckRun = serde_json::from_value(got).expect("parses");
    assert_eq!(parsed.conclusion.as_deref(), Some("success"));
    assert_eq!(parsed.output.summary.as_deref(), Some("Merged as abc"));

    w.hub
        .report_check_run(
            REPO,
            head.as_str(),
            "ci/build",
            "completed",
            Some("failure"),
        )
        .unwrap();
    let (status, list) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/commits/{head}/check-runs"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let list: ListCheckRuns = serde_json::from_value(list).expect("list parses");
    assert_eq!(list.total_count, 2);
    let names: Vec<&str> = list.check_runs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ci/build", "sluice"], "newest first");
    let (_, by_branch) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/commits/feature/check-runs?check_name=sluice"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(by_branch["total_count"], 1);
    let (_, by_app) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/commits/{head}/check-runs?app_id={APP}&status=completed"),
        Some(PAT),
        None,
    )
    .await;
    assert_eq!(by_app["check_runs"][0]["id"], id);

    let view = w.hub.check_runs(REPO, head.as_str());
    assert_eq!(view.len(), 2);
    let mine = &view[0];
    assert_eq!(
        (mine.status.as_str(), mine.conclusion.as_deref()),
        ("completed", Some("success"))
    );
    assert_eq!(mine.summary.as_deref(), Some("Merged as abc"));
    assert_eq!(mine.details_url.as_deref(), Some("http://sluice/builds/1"));
    let steps: Vec<(&str, Option<&str>, Option<&str>)> = mine
        .history
        .iter()
        .map(|h| {
            (
                h.status.as_str(),
                h.conclusion.as_deref(),
                h.title.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("queued", None, None),
            ("in_progress", None, Some("Testing")),
            ("completed", Some("success"), Some("Landed"))
        ]
    );
    assert_eq!(view[1].app_id, None);

    // What GitHub refuses.
    let bad: Vec<(Value, u16, &str)> = vec![
        (
            json!({"name": "x", "head_sha": head.as_str(), "status": "completed"}),
            422,
            "Invalid request.\n\n\"conclusion\" wasn't supplied.",
        ),
        (
            json!({"name": "x", "head_sha": head.as_str(), "completed_at": "2024-01-01T00:00:00Z"}),
            422,
            "Invalid request.\n\n\"conclusion\" wasn't supplied.",
        ),
        (
            json!({"name": "x", "head_sha": head.as_str(), "status": "bogus"}),
            422,
            "Invalid request.\n\nFor 'properties/status', \"bogus\" is not a member of [\"queued\", \"in_progress\", \"completed\", \"waiting\", \"requested\", \"pending\"].",
        ),
        (
            json!({"name": "x", "head_sha": head.as_str(), "conclusion": "meh"}),
            422,
            "",
        ),
        (
            json!({"name": "x", "head_sha": head.as_str(), "conclusion": "stale"}),
            422,
            "",
        ),
        (
            json!({"name": "x", "head_sha": head.as_str(), "status": "waiting"}),
            422,
            "",
        ),
        (
            json!({"name": "x", "head_sha": head.as_str(), "output": {"title": "t"}}),
            422,
            "Invalid request.\n\n\"summary\" wasn't supplied.",
        ),
        (
            json!({"name": "x", "head_sha": head.as_str(), "output": {"title": "t", "summary": "s".repeat(OUTPUT_MAX_CHARS + 1)}}),
            422,
            "Invalid request.\n\nOnly 65535 characters are allowed; 65536 were supplied.",
        ),
        (
            json!({"head_sha": head.as_str()}),
            422,
            "Invalid request.\n\n\"name\" wasn't supplied.",
        ),
        (json!({"name": "x", "head_sha": "0".repeat(40)}), 422, ""),
        (
            json!({"name": "x", "head_sha": "main"}),
            422,
            "No commit found for SHA: main",
        ),
        (json!({"name": 5, "head_sha": head.as_str()}), 422, ""),
    ];
    for (req, want_status, want_message) in bad {
        let (status, body) = call(&w.hub, "POST", &runs, Some(&tok), Some(req.clone())).await;
        assert_eq!(status, want_status, "{req}: {body}");
        if !want_message.is_empty() {
            assert_eq!(body["message"], want_message, "{req}");
        }
    }
    let max = "s".repeat(OUTPUT_MAX_CHARS);
    let (status, _) = call(&w.hub, "POST", &runs, Some(&tok), Some(json!({"name": "x", "head_sha": head.as_str(), "output": {"title": "t", "summary": max}}))).await;
    assert_eq!(status, 201);
    let (status, body) = call(
        &w.hub,
        "PATCH",
        &one,
        Some(&tok),
        Some(json!({"status": "completed"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = call(
        &w.hub,
        "PATCH",
        &format!("{runs}/1"),
        Some(&tok),
        Some(json!({"status": "queued"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(&w.hub, "GET", &format!("{runs}/1"), Some(&tok), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&w.hub, "POST", &runs, Some(&tok), None).await;
    assert_eq!(status, 400, "no JSON body");
    // Only an App creates check runs, and only its own it updates.
    let (status, body) = call(
        &w.hub,
        "POST",
        &runs,
        Some(PAT),
        Some(json!({"name": "x", "head_sha": head.as_str()})),
    )
    .await;
    assert_eq!((status, body["message"].as_str()), (403, Some(APPS_ONLY)));
    w.hub
        .register_app_with(77, "intruder", &[("checks", "write")])
        .unwrap();
    let other_keys = w
        .hub
        .register_app_with(78, "intruder2", &[("checks", "write")])
        .unwrap();
    let theirs = w.hub.install_app(78, "octo", &[REPO]).unwrap();
    let (_, t) = call(
        &w.hub,
        "POST",
        &format!("/app/installations/{theirs}/access_tokens"),
        Some(&other_keys.jwt()),
        None,
    )
    .await;
    let (status, body) = call(
        &w.hub,
        "PATCH",
        &one,
        Some(t["token"].as_str().unwrap()),
        Some(json!({"conclusion": "failure"})),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (403, Some(NOT_ACCESSIBLE))
    );
    assert_eq!(
        w.hub.check_run(REPO, id).unwrap().conclusion.as_deref(),
        Some("success")
    );
}

#[tokio::test]
async fn a_check_run_counts_for_required_checks() {
    let w = world().await;
    let tok = token(&w).await;
    w.hub.protect_branch(REPO, "main", &["sluice"]).unwrap();
    let head = w.hub.pr(REPO, w.pr).unwrap().head_sha;
    let merge = format!("/repos/{REPO}/pulls/{}/merge", w.pr);
    let (status, _) = call(
        &w.hub,
        "PUT",
        &merge,
        Some(&tok),
        Some(json!({"sha": head.as_str()})),
    )
    .await;
    assert_eq!(status, 405, "the required check has not passed");
    let (status, run) = call(
        &w.hub,
        "POST",
        &format!("/repos/{REPO}/check-runs"),
        Some(&tok),
        Some(json!({"name": "sluice", "head_sha": head.as_str(), "status": "in_progress"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        &w.hub,
        "PUT",
        &merge,
        Some(&tok),
        Some(json!({"sha": head.as_str()})),
    )
    .await;
    assert_eq!(status, 405, "in progress is not passed");
    let (status, _) = call(
        &w.hub,
        "PATCH",
        &format!("/repos/{REPO}/check-runs/{}", run["id"]),
        Some(&tok),
        Some(json!({"status": "completed", "conclusion": "success"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &w.hub,
        "PUT",
        &merge,
        Some(&tok),
        Some(json!({"sha": head.as_str()})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(w.hub.pr(REPO, w.pr).unwrap().merged);
    // Merged by the App's bot, as GitHub records it.
    let moves = w.hub.branch_moves(REPO);
    assert_eq!(moves.last().unwrap().pusher, "sluice[bot]");
    let (_, pr) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/pulls/{}", w.pr),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(pr["merged_by"]["login"], "sluice[bot]");
    assert_eq!(pr["merged_by"]["type"], "Bot");
}

#[tokio::test]
async fn comments_and_reactions_by_the_bot() {
    let w = world().await;
    let tok = token(&w).await;
    let (status, c) = call(
        &w.hub,
        "POST",
        &format!("/repos/{REPO}/issues/{}/comments", w.pr),
        Some(&tok),
        Some(json!({"body": "Queued at position 1."})),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["user"]["login"], "sluice[bot]");
    assert_eq!(c["user"]["type"], "Bot");
    assert_eq!(c["performed_via_github_app"]["slug"], "sluice");
    let parsed: Comment = serde_json::from_value(c.clone()).expect("comment parses");
    assert_eq!(parsed.user.login, "sluice[bot]");
    let bot_comment = c["id"].as_u64().unwrap();

    let person = w.hub.comment(REPO, w.pr, "alice", "/merge").unwrap();
    let (status, got) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/issues/comments/{person}"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["body"], "/merge");
    assert_eq!(got["user"]["login"], "alice");
    assert_eq!(got["user"]["type"], "User");
    let (status, _) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/issues/comments/1"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(status, 404);

    let react = format!("/repos/{REPO}/issues/comments/{person}/reactions");
    let (status, r1) = call(
        &w.hub,
        "POST",
        &react,
        Some(&tok),
        Some(json!({"content": "+1"})),
    )
    .await;
    assert_eq!(status, 201, "{r1}");
    let parsed: Reaction = serde_json::from_value(r1.clone()).expect("reaction parses");
    assert_eq!(parsed.user.login, "sluice[bot]");
    let (status, r2) = call(
        &w.hub,
        "POST",
        &react,
        Some(&tok),
        Some(json!({"content": "+1"})),
    )
    .await;
    assert_eq!(status, 200, "the same reaction again is the existing one");
    assert_eq!(r2["id"], r1["id"]);
    let (status, _) = call(
        &w.hub,
        "POST",
        &react,
        Some(&tok),
        Some(json!({"content": "rocket"})),
    )
    .await;
    assert_eq!(status, 201);
    for bad in [
        json!({"content": "thumbsup"}),
        json!({}),
        json!({"content": 1}),
    ] {
        let (status, _) = call(&w.hub, "POST", &react, Some(&tok), Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad}");
    }
    let (status, _) = call(
        &w.hub,
        "POST",
        &format!("/repos/{REPO}/issues/comments/1/reactions"),
        Some(&tok),
        Some(json!({"content": "+1"})),
    )
    .await;
    assert_eq!(status, 404);
    let seen: Vec<(String, String)> = w
        .hub
        .reactions(REPO, person)
        .into_iter()
        .map(|r| (r.user, r.content))
        .collect();
    assert_eq!(
        seen,
        [
            ("sluice[bot]".to_string(), "+1".to_string()),
            ("sluice[bot]".to_string(), "rocket".to_string())
        ]
    );
    let (_, listed) = call(
        &w.hub,
        "GET",
        &format!("{react}?content=rocket"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let (_, got) = call(
        &w.hub,
        "GET",
        &format!("/repos/{REPO}/issues/comments/{person}"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(got["reactions"]["total_count"], 2);
    assert_eq!(got["reactions"]["+1"], 1);

    let users: Vec<String> = w
        .hub
        .comments(REPO, w.pr)
        .into_iter()
        .map(|c| c.user)
        .collect();
    assert_eq!(users, ["sluice[bot]", "alice"]);
    assert_eq!(w.hub.comments(REPO, w.pr)[0].id, bot_comment);
    // With the personal token, comments are by the fake's merger, as before.
    let (_, c) = call(
        &w.hub,
        "POST",
        &format!("/repos/{REPO}/issues/{}/comments", w.pr),
        Some(PAT),
        Some(json!({"body": "x"})),
    )
    .await;
    assert_eq!(c["user"]["login"], sluice::fakehub::MERGER);
    // The bot edits and deletes its own comment.
    let (status, edited) = call(
        &w.hub,
        "PATCH",
        &format!("/repos/{REPO}/issues/comments/{bot_comment}"),
        Some(&tok),
        Some(json!({"body": "Landed."})),
    )
    .await;
    assert_eq!((status, edited["body"].as_str()), (200, Some("Landed.")));
    let (status, _) = call(
        &w.hub,
        "DELETE",
        &format!("/repos/{REPO}/issues/comments/{bot_comment}"),
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(w.hub.comments(REPO, w.pr).len(), 2);
    // GitHub's limit on a comment's length, for the bot and for people.
    let at_limit = "x".repeat(COMMENT_MAX_CHARS);
    let over = format!("{at_limit}y");
    let post = format!("/repos/{REPO}/issues/{}/comments", w.pr);
    let (status, _) = call(
        &w.hub,
        "POST",
        &post,
        Some(&tok),
        Some(json!({"body": over})),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = call(
        &w.hub,
        "POST",
        &post,
        Some(&tok),
        Some(json!({"body": at_limit})),
    )
    .await;
    assert_eq!(status, 201);
    assert!(w.hub.comment(REPO, w.pr, "mallory", &over).is_err());
    assert!(w.hub.comment(REPO, w.pr, "mallory", &at_limit).is_ok());
    assert!(
        w.hub.comment(REPO, 999, "mallory", "hi").is_err(),
        "no such PR"
    );
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>);

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
async fn app_webhooks_carry_the_installation_and_parse_as_octocrab_events() {
    let dir = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(dir.path(), None).await.unwrap();
    let (url, got) = receiver().await;
    hub.set_webhook(&url, "s3cret");
    hub.create_repo(REPO, "main", &[("README.md", "x")])
        .await
        .unwrap();
    hub.create_repo(OTHER, "main", &[("README.md", "x")])
        .await
        .unwrap();
    let keys = hub.register_app(APP).unwrap();
    let inst = hub.install_app(APP, "octo", &[REPO]).unwrap();
    hub.commit(REPO, "feature", Some("main"), &[("f", "f")], "F")
        .await
        .unwrap();
    let pr = hub
        .open_pr(REPO, "feature", "main", "F", "alice")
        .await
        .unwrap();
    let head = hub.pr(REPO, pr).unwrap().head_sha;
    let c = hub.comment(REPO, pr, "alice", "/merge").unwrap();
    hub.edit_comment(REPO, c, "/retest").unwrap();
    hub.delete_comment(REPO, c).unwrap();
    let (_, t) = call(
        &hub,
        "POST",
        &format!("/app/installations/{inst}/access_tokens"),
        Some(&keys.jwt()),
        None,
    )
    .await;
    let tok = t["token"].as_str().unwrap().to_string();
    call(
        &hub,
        "POST",
        &format!("/repos/{REPO}/issues/{pr}/comments"),
        Some(&tok),
        Some(json!({"body": "ok"})),
    )
    .await;
    let (_, run) = call(
        &hub,
        "POST",
        &format!("/repos/{REPO}/check-runs"),
        Some(&tok),
        Some(json!({"name": "sluice", "head_sha": head.as_str()})),
    )
    .await;
    let run_id = run["id"].as_u64().unwrap();
    call(
        &hub,
        "PATCH",
        &format!("/repos/{REPO}/check-runs/{run_id}"),
        Some(&tok),
        Some(json!({"conclusion": "failure"})),
    )
    .await;
    hub.rerequest_check_run(REPO, run_id, "bob").unwrap();
    hub.report_check_run(REPO, head.as_str(), "ci", "completed", Some("success"))
        .unwrap();
    let ci_run = hub.check_runs(REPO, head.as_str())[1].id;
    assert!(
        hub.rerequest_check_run(REPO, ci_run, "bob").is_err(),
        "not this App's run"
    );
    hub.add_installation_repos(inst, &[OTHER]).unwrap();
    hub.remove_installation_repos(inst, &[OTHER]).unwrap();
    hub.commit(OTHER, "main", None, &[("o", "o")], "O")
        .await
        .unwrap();
    hub.uninstall_app(inst).unwrap();
    hub.commit(REPO, "main", None, &[("m", "m")], "M")
        .await
        .unwrap();
    hub.idle().await;

    let received = got.0.lock().unwrap().clone();
    let mut seen = Vec::new();
    for (headers, body) in &received {
        let event = headers["x-github-event"].to_str().unwrap().to_string();
        assert_eq!(
            headers["x-hub-signature-256"].to_str().unwrap(),
            signature("s3cret", body)
        );
        let parsed = WebhookEvent::try_from_header_and_body(&event, body).unwrap_or_else(|e| {
            panic!(
                "{event} does not parse: {e}\n{}",
                String::from_utf8_lossy(body)
            )
        });
        let raw: Value = serde_json::from_slice(body).unwrap();
        let action = raw["action"].as_str().map(str::to_string);
        let installation = match &parsed.installation {
            Some(EventInstallation::Full(i)) => Some(("full", i.id.0)),
            Some(EventInstallation::Minimal(i)) => Some(("minimal", i.id.0)),
            None => None,
        };
        seen.push((event.clone(), action.clone(), installation));
        match (&parsed.specific, action.as_deref()) {
            (WebhookEventPayload::IssueComment(p), _) => {
                assert!(p.issue.pull_request.is_some(), "a PR comment");
                assert_eq!(p.issue.number, pr);
                if action.as_deref() == Some("edited") {
                    assert_eq!(raw["changes"]["body"]["from"], "/merge");
                    assert_eq!(p.comment.body.as_deref(), Some("/retest"));
                }
            }
            (WebhookEventPayload::CheckRun(p), Some("rerequested")) => {
                assert_eq!(p.check_run["id"], run_id);
                assert_eq!(p.check_run["app"]["id"], APP);
                assert_eq!(p.check_run["pull_requests"][0]["number"], pr);
                assert_eq!(parsed.sender.as_ref().unwrap().login, "bob");
            }
            (WebhookEventPayload::InstallationRepositories(p), Some("added")) => {
                assert_eq!(p.repositories_added[0].full_name, OTHER);
                assert!(p.repositories_removed.is_empty());
            }
            (WebhookEventPayload::Installation(p), Some("created")) => {
                let repos = p.repositories.as_ref().unwrap();
                assert_eq!(repos[0].full_name, REPO);
            }
            _ => {}
        }
    }
    let full = Some(("full", inst));
    let minimal = Some(("minimal", inst));
    let s = |e: &str, a: Option<&str>, i| (e.to_string(), a.map(str::to_string), i);
    let want = vec![
        s("ping", None, None),
        s("installation", Some("created"), full),
        s("push", None, minimal),
        s("pull_request", Some("opened"), minimal),
        s("issue_comment", Some("created"), minimal),
        s("issue_comment", Some("edited"), minimal),
        s("issue_comment", Some("deleted"), minimal),
        s("issue_comment", Some("created"), minimal),
        s("check_run", Some("created"), minimal),
        s("check_run", Some("completed"), minimal),
        s("check_run", Some("rerequested"), minimal),
        s("installation_repositories", Some("added"), full),
        s("installation_repositories", Some("removed"), full),
        s("push", None, None),
        s("installation", Some("deleted"), full),
        s("push", None, None),
    ];
    assert_eq!(seen, want);
    let bot = serde_json::from_slice::<Value>(&received[7].1).unwrap();
    assert_eq!(bot["sender"]["login"], "sluice[bot]");
    assert_eq!(bot["comment"]["performed_via_github_app"]["id"], APP);
}
