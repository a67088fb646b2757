//! The offline demo, and the stack it runs on: the fake GitHub with a sample
//! repository, and sluice with the local executor and local results,
//! wired together over real HTTP. The end-to-end tests use the same stack.

use crate::app::{self, Running};
use crate::config::{Config, GithubAppConfig, Secrets};
use crate::core::Sha;
use crate::fakehub::{AppKeys, FakeHub};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEMO_REPO: &str = "octo/demo";
pub const WEBHOOK_SECRET: &str = "demo-webhook-secret";
pub const API_TOKEN: &str = "demo-api-token";
pub const GITHUB_TOKEN: &str = "demo-github-token";
/// The id of the App [`Stack::start_app`] registers.
pub const DEMO_APP_ID: u64 = 4242;

/// The sample repository's test: fails if any file under src/ says BUG,
/// sleeps as long as the file `delay` says (so tests can catch a job
/// running), and prints what it tested. A file `flaky` naming a directory
/// that does not exist makes it a flaky test: the first run creates the
/// directory (atomically: one run only) and fails after the delay, every
/// later run passes.
pub const CHECK_SCRIPT: &str = r#"#!/bin/sh
set -eu
echo "testing $SLUICE_REPO PR $SLUICE_PR: $SLUICE_HEAD_SHA merged with $SLUICE_TARGET_BRANCH@$SLUICE_TARGET_SHA"
flake=0
if [ -f flaky ] && mkdir "$(cat flaky)" 2>/dev/null; then flake=1; fi
if [ -f delay ]; then sleep "$(cat delay)"; fi
if [ "$flake" = 1 ]; then echo "a flaky failure"; exit 1; fi
if grep -rl BUG src/; then echo "found a BUG"; exit 1; fi
echo "all good"
"#;

/// The fake GitHub and sluice, connected.
pub struct Stack {
    pub hub: FakeHub,
    pub sluice: Running,
    pub config: Config,
    pub dir: PathBuf,
    pub http: reqwest::Client,
    /// The App sluice runs as ([`Stack::start_app`]); `None` with a
    /// personal token.
    pub app: Option<AppKeys>,
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// A configuration for the demo repository against `hub`.
pub fn demo_config(hub: &FakeHub, dir: &Path, public_url: &str) -> Config {
    let text = demo_config_toml(hub, dir, public_url);
    Config::parse(&text, Path::new("demo.toml")).expect("the demo configuration is valid")
}

/// The demo configuration as TOML, for running sluice as its own process.
pub fn demo_config_toml(hub: &FakeHub, dir: &Path, public_url: &str) -> String {
    let listen = public_url.trim_start_matches("http://");
    format!(
        r#"
[server]
listen = "{listen}"
public_url = "{public_url}"

[github]
api_url = "{api}"
clone_base = "{clone}"
request_timeout_secs = 10
max_retries = 3

[reconcile]
interval_secs = 0

[executor]
work_dir = "{work}"
max_parallel = 4
git_timeout_secs = 60

[results]
dir = "{results}"

[state]
dir = "{state}"

[[repos]]
name = "{DEMO_REPO}"
test_command = ["sh", "check.sh"]
required_approvals = 1
max_concurrent_builds = 2
job_timeout_secs = 120
priority_labels = ["priority"]
"#,
        api = hub.api_url(),
        clone = hub.clone_base(),
        work = dir.join("work").display(),
        results = dir.join("results").display(),
        state = dir.join("state").display(),
    )
}

impl Stack {
    /// Starts the fake GitHub with the sample repository and sluice on
    /// `listen` (port 0 picks one). `tweak` may change the configuration.
    pub async fn start(
        dir: &Path,
        listen: SocketAddr,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(dir)?;
        let hub = Stack::demo_hub(dir).await?;
        Stack::launch(hub, None, dir, listen, tweak).await
    }

    /// The fake GitHub of [`Stack::start`], with the sample repository and
    /// its reviewers, and no sluice yet (to prepare more before
    /// [`Stack::start_app_on`]).
    pub async fn demo_hub(dir: &Path) -> anyhow::Result<FakeHub> {
        std::fs::create_dir_all(dir)?;
        let hub = FakeHub::start(&dir.join("github"), Some(GITHUB_TOKEN.into())).await?;
        hub.create_repo(
            DEMO_REPO,
            "main",
            &[("check.sh", CHECK_SCRIPT), ("src/main.txt", "hello\n")],
        )
        .await?;
        for reviewer in ["alice", "bob"] {
            hub.set_permission(DEMO_REPO, reviewer, "write");
        }
        hub.set_permission(DEMO_REPO, "mallory", "read");
        Ok(hub)
    }

    /// Like [`Stack::start`], with sluice running as a GitHub App: App
    /// [`DEMO_APP_ID`] is registered on the fake and installed on the
    /// demo repository's account for that repository, its private key is
    /// written to `dir/app-key.pem`, and `[github.app]` points there.
    /// sluice also gets the personal token, which it must leave unused
    /// (the App wins).
    pub async fn start_app(
        dir: &Path,
        listen: SocketAddr,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Stack> {
        let hub = Stack::demo_hub(dir).await?;
        let keys = hub.register_app(DEMO_APP_ID)?;
        let owner = DEMO_REPO.split('/').next().unwrap_or_default();
        hub.install_app(DEMO_APP_ID, owner, &[DEMO_REPO])?;
        Stack::start_app_on(hub, keys, dir, listen, tweak).await
    }

    /// sluice as the App of `keys` against `hub`, which the caller has
    /// prepared (Apps registered and installed, more repositories): the
    /// key is written to `dir/app-key.pem` (mode 0600) and `[github.app]`
    /// points there. Keys the fake does not know
    /// ([`crate::fakehub::AppKeys::unregistered`]) make it fail at startup.
    pub async fn start_app_on(
        hub: FakeHub,
        keys: AppKeys,
        dir: &Path,
        listen: SocketAddr,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(dir)?;
        let key_path = dir.join("app-key.pem");
        write_private(&key_path, &keys.private_key_pem)?;
        let app = GithubAppConfig::with_key_file(keys.app_id, key_path);
        Stack::launch(hub, Some(keys), dir, listen, move |config| {
            config.github.app = Some(app);
            tweak(config);
        })
        .await
    }

    async fn launch(
        hub: FakeHub,
        app: Option<AppKeys>,
        dir: &Path,
        listen: SocketAddr,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Stack> {
        // The public URL is only known once bound; bind first, then build.
        let listener = std::net::TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let mut config = demo_config(&hub, dir, &format!("http://{addr}"));
        tweak(&mut config);
        let secrets = Secrets {
            github_token: Some(GITHUB_TOKEN.into()),
            webhook_secret: WEBHOOK_SECRET.into(),
            api_token: Some(API_TOKEN.into()),
        };
        let adapters = app::adapters_from_config(&config, &secrets).await?;
        let sluice = app::start(
            config.clone(),
            secrets,
            adapters,
            app::Listen::Bound(listener),
        )
        .await?;
        hub.set_webhook(&format!("{}/webhook", sluice.url()), WEBHOOK_SECRET);
        Ok(Stack {
            hub,
            sluice,
            config,
            dir: dir.to_path_buf(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            app,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sluice.url())
    }

    /// GET a JSON endpoint of sluice.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.http.get(self.url(path)).send().await?.json().await?)
    }

    /// POST /retest or /try-merge with the API token; returns status and body.
    pub async fn request(&self, path: &str, pr: u64) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(API_TOKEN)
            .json(&serde_json::json!({ "repo": DEMO_REPO, "pr": pr }))
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// POSTs `body` to `path`, with the API token if `token`; returns
    /// status and body.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        token: bool,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut request = self.http.post(self.url(path)).json(body);
        if token {
            request = request.bearer_auth(API_TOKEN);
        }
        let response = request.send().await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// Opens a PR from a new branch that writes `files` on top of main.
    pub async fn open_pr(
        &self,
        branch: &str,
        files: &[(&str, &str)],
        title: &str,
    ) -> anyhow::Result<u64> {
        self.hub
            .commit(DEMO_REPO, branch, Some("main"), files, title)
            .await?;
        self.hub
            .open_pr(DEMO_REPO, branch, "main", title, "carol")
            .await
    }

    /// The latest sluice status of the PR's current head, if any.
    pub fn status_of(&self, pr: u64) -> Option<crate::fakehub::StatusView> {
        let head = self.hub.pr(DEMO_REPO, pr)?.head_sha;
        self.hub
            .statuses(DEMO_REPO, head.as_str())
            .into_iter()
            .rev()
            .find(|s| s.context == self.config.github.status_context)
    }

    /// Polls `check` every 50 ms until it holds or `timeout` passes.
    pub async fn wait_for<F: FnMut(&Stack) -> bool>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if check(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn head_of(&self, pr: u64) -> Option<Sha> {
        self.hub.pr(DEMO_REPO, pr).map(|p| p.head_sha)
    }
}

/// `sluice demo`: runs the whole flow and prints what happens.
pub async fn run(dir: PathBuf, keep_running: bool, port: u16) -> anyhow::Result<()> {
    // Only a directory an earlier demo made is cleared.
    const MARKER: &str = ".sluice-demo";
    if dir.exists() {
        anyhow::ensure!(
            dir.join(MARKER).exists(),
            "{} exists and was not made by `sluice demo`; pick another --dir",
            dir.display()
        );
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(MARKER),
        "made by `sluice demo`; removed by the next run\n",
    )?;
    let dir = std::path::absolute(&dir)?;
    let stack = Stack::start(&dir, ([127, 0, 0, 1], port).into(), |_| {}).await?;
    println!("\n== sluice demo ==");
    println!(
        "fake GitHub: {}   sluice: {}",
        stack.hub.api_url(),
        stack.sluice.url()
    );
    println!("repository {DEMO_REPO}: main holds check.sh (the test) and src/main.txt\n");

    let a = stack
        .open_pr(
            "feature-a",
            &[("src/a.txt", "feature a\n")],
            "Add feature A",
        )
        .await?;
    let b = stack
        .open_pr(
            "feature-b",
            &[("src/b.txt", "BUG here\n")],
            "Add feature B (has a bug)",
        )
        .await?;
    let c = stack
        .open_pr(
            "feature-c",
            &[("src/c.txt", "feature c\n")],
            "Add feature C",
        )
        .await?;
    println!("opened #{a} (passes), #{b} (fails), #{c} (passes); alice approves all three");
    for pr in [a, b, c] {
        stack.hub.review(DEMO_REPO, pr, "alice", "APPROVED").await?;
    }
    let merged = |s: &Stack, pr| s.hub.pr(DEMO_REPO, pr).is_some_and(|p| p.merged);
    stack
        .wait_for(
            "#a and #c to merge and #b to fail",
            Duration::from_secs(120),
            |s| {
                merged(s, a)
                    && merged(s, c)
                    && s.status_of(b).is_some_and(|st| st.state == "failure")
            },
        )
        .await?;

    // Each merge moved main, so the failing PR is tested again against the
    // new head; wait until sluice has settled: only it is left, failed.
    for _ in 0..1200 {
        let status = stack.get_json("/status").await?;
        let settled = status["prs"]
            .as_array()
            .is_some_and(|prs| prs.len() == 1 && prs[0]["phase"] == "failed");
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("\nGET /status, /passing, /ready-for-merge while the failing PR stays open:");
    for path in ["/status", "/passing", "/ready-for-merge"] {
        let body = stack.get_json(path).await?;
        let prs: Vec<String> = body["prs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        format!(
                            "#{} {} ({})",
                            p["number"],
                            p["phase"].as_str().unwrap_or(""),
                            p["link"].as_str().unwrap_or("-")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "  {path:<17} {}",
            if prs.is_empty() {
                "[]".into()
            } else {
                prs.join(", ")
            }
        );
    }
    let (code, body) = stack.request("/try-merge", b).await?;
    println!("\nPOST /try-merge #{b} -> {code}: {}", body["reasons"]);

    // The train lands by moving main to the car it tested: the sha on main
    // is the sha whose test passed, sha for sha.
    println!("\nwhat landed on main (each landing is a car sluice built and tested):");
    let landed = stack.get_json("/history").await?;
    for mv in stack.hub.branch_moves(DEMO_REPO) {
        let (Some(before), Some(after)) = (&mv.before, &mv.after) else {
            continue;
        };
        if mv.branch != "main" {
            continue;
        }
        let prs: Vec<String> = landed["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == "merged" && e["merge_sha"] == after.as_str())
            .map(|e| format!("#{}", e["pr"]["number"]))
            .collect();
        let tested = stack
            .hub
            .statuses(DEMO_REPO, after.as_str())
            .into_iter()
            .rev()
            .find(|s| s.state == "success")
            .and_then(|s| s.target_url)
            .unwrap_or_default();
        println!(
            "  main {} -> {} ({}) by {}; tested: {tested}",
            before.short(),
            after.short(),
            prs.join(", "),
            mv.pusher
        );
    }
    for m in stack.hub.merges() {
        println!(
            "  #{} merged by GitHub (serial mode) as {}",
            m.number,
            m.merge_sha.short()
        );
    }
    if let Some(st) = stack.status_of(b) {
        println!(
            "  #{b} status: {} \"{}\" {}",
            st.state,
            st.description.unwrap_or_default(),
            st.target_url.unwrap_or_default()
        );
    }
    println!("\nhistory: GET {}", stack.url("/history"));
    println!(
        "dashboard: {} (the failing PR's page: {})",
        stack.url("/"),
        stack.url(&format!("/pr/{DEMO_REPO}/{b}"))
    );
    if keep_running {
        println!(
            "\nsluice keeps running at {} (Ctrl-C to stop); the dashboard: {}",
            stack.sluice.url(),
            stack.url("/")
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    stack.sluice.stop().await;
    println!("\ndemo done; files are under {}", dir.display());
    Ok(())
}
