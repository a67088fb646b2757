//! sluice as a real process against the fake GitHub: for tests that kill
//! it (SIGKILL) and start it again.
#![allow(dead_code)]

use sluice::demo::{
    API_TOKEN, CHECK_SCRIPT, DEMO_REPO, GITHUB_TOKEN, WEBHOOK_SECRET, demo_config_toml,
};
use sluice::fakehub::{Chaos, FakeHub};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod trains;

pub struct World {
    pub hub: FakeHub,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub url: String,
    pub http: reqwest::Client,
    pub sluice: Option<Child>,
    pub starts: u32,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl World {
    /// The fake GitHub with the demo repository, and a config for sluice
    /// with a `reconcile_secs` re-read interval, in serial mode
    /// (`train_depth = 0`: GitHub merges each PR; these tests check what
    /// GitHub recorded merging).
    pub async fn new(dir: &Path, reconcile_secs: u64, max_concurrent: usize) -> World {
        World::with_repo_settings(dir, reconcile_secs, max_concurrent, "train_depth = 0\n").await
    }

    /// The same, with merge trains of `depth` cars on the demo repository.
    pub async fn with_train(
        dir: &Path,
        reconcile_secs: u64,
        max_concurrent: usize,
        depth: usize,
    ) -> World {
        let settings = format!("train_depth = {depth}\nmerge_method = \"merge\"\n");
        World::with_repo_settings(dir, reconcile_secs, max_concurrent, &settings).await
    }

    /// `repo_settings`: TOML lines added to the demo repository's table.
    async fn with_repo_settings(
        dir: &Path,
        reconcile_secs: u64,
        max_concurrent: usize,
        repo_settings: &str,
    ) -> World {
        let hub = FakeHub::start(&dir.join("github"), Some(GITHUB_TOKEN.into()))
            .await
            .unwrap();
        hub.create_repo(
            DEMO_REPO,
            "main",
            &[("check.sh", CHECK_SCRIPT), ("src/main.txt", "hi\n")],
        )
        .await
        .unwrap();
        for reviewer in ["alice", "bob"] {
            hub.set_permission(DEMO_REPO, reviewer, "write");
        }
        let url = format!("http://127.0.0.1:{}", free_port());
        let toml = demo_config_toml(&hub, dir, &url)
            .replace(
                "interval_secs = 0",
                &format!("interval_secs = {reconcile_secs}"),
            )
            .replace(
                "max_concurrent_builds = 2",
                &format!("max_concurrent_builds = {max_concurrent}"),
            );
        // The repository's table is the last one: what follows is in it.
        let toml = format!("{toml}{repo_settings}");
        let config = dir.join("sluice.toml");
        std::fs::write(&config, toml).unwrap();
        hub.set_webhook(&format!("{url}/webhook"), WEBHOOK_SECRET);
        World {
            hub,
            dir: dir.to_path_buf(),
            config,
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            sluice: None,
            starts: 0,
        }
    }

    /// Starts `sluice serve` and waits until it answers /healthz.
    pub async fn start(&mut self) {
        assert!(self.sluice.is_none(), "already running");
        let log =
            std::fs::File::create(self.dir.join(format!("sluice-{}.log", self.starts))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("GITHUB_TOKEN", GITHUB_TOKEN)
            .env("SLUICE_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("SLUICE_API_TOKEN", API_TOKEN)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.sluice = Some(child);
        self.starts += 1;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sluice did not start; see {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no flushing, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.sluice.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn status_of(&self, pr: u64) -> Option<sluice::fakehub::StatusView> {
        let head = self.hub.pr(DEMO_REPO, pr)?.head_sha;
        self.hub
            .statuses(DEMO_REPO, head.as_str())
            .into_iter()
            .last()
    }

    pub fn merged(&self, pr: u64) -> bool {
        self.hub.pr(DEMO_REPO, pr).is_some_and(|p| p.merged)
    }

    pub async fn open_pr(&self, branch: &str, files: &[(&str, &str)]) -> u64 {
        self.hub
            .commit(DEMO_REPO, branch, Some("main"), files, branch)
            .await
            .unwrap();
        self.hub
            .open_pr(DEMO_REPO, branch, "main", branch, "carol")
            .await
            .unwrap()
    }

    /// Polls `check` until it holds, failing after `secs`.
    pub async fn wait(&self, what: &str, secs: u64, mut check: impl FnMut(&World) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while !check(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Finished builds of a PR, from /history (newest first).
    pub async fn builds_of(&self, pr: u64) -> Vec<serde_json::Value> {
        let history = self.get(&format!("/history?pr={pr}")).await;
        history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "build_finished")
            .cloned()
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill();
    }
}

impl World {
    /// `reviewer` approves the PR.
    pub async fn approve(&self, pr: u64, reviewer: &str) {
        self.hub
            .review(DEMO_REPO, pr, reviewer, "APPROVED")
            .await
            .unwrap();
    }
}

/// A temporary directory removed at the end, unless the test failed: then
/// its logs and state stay for a look.
pub struct KeepOnPanic(pub tempfile::TempDir);

impl KeepOnPanic {
    pub fn new() -> KeepOnPanic {
        KeepOnPanic(tempfile::tempdir().unwrap())
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.0, tempfile::tempdir().unwrap());
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// A bad day at GitHub, as both chaos runs have it: a fifth of the
/// deliveries dropped, a tenth duplicated, some reordered, one API call in
/// twenty answered 502.
pub fn bad_day(seed: u64) -> Chaos {
    Chaos {
        seed,
        drop: 0.20,
        duplicate: 0.10,
        reorder: true,
        api_error_rate: 0.05,
    }
}

/// The chaos seed: `SLUICE_CHAOS_SEED` if set (to replay a run), else
/// `default`.
pub fn chaos_seed(default: u64) -> u64 {
    match std::env::var("SLUICE_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SLUICE_CHAOS_SEED={s:?} is not a number")),
        Err(_) => default,
    }
}

/// A job's workspace and process group, if one is running its test now.
pub fn running_job(dir: &Path) -> Option<(PathBuf, i32)> {
    std::fs::read_dir(dir.join("work"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find_map(|ws| {
            let pgid: i32 = std::fs::read_to_string(ws.join("pgid"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            alive(pgid).then_some((ws, pgid))
        })
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}
