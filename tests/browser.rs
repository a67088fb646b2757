//! The pages in a real browser: headless Chromium, driven over WebDriver
//! (chromedriver), against the end-to-end stack (the fake GitHub, sluice
//! with a merge train, real test processes).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test` installs
//! them). Without chromedriver this test fails, saying so: it never passes
//! without having looked. Screenshots go to `target/screenshots/`.

use fantoccini::{Client, ClientBuilder, Locator};
use sluice::demo::{DEMO_REPO, Stack};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const HOSTILE: &str = "<script>alert(1)</script>";
/// Every wait of the browser is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

/// chromedriver as a child process, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver(log: &Path) -> Driver {
    assert!(
        Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
        "{CHROMEDRIVER} or {CHROMIUM} is missing: the browser test needs Debian's chromium and \
         chromium-driver. scripts/test installs them (apt-get install -y chromium chromium-driver)"
    );
    let port = free_port();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
            && r.status().is_success()
        {
            return driver;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not answer on {} within {WAIT:?}",
            driver.url
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    caps.insert(
        "timeouts".into(),
        serde_json::json!({ "pageLoad": 30_000, "script": 30_000, "implicit": 0 }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    tokio::time::timeout(
        WAIT,
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url),
    )
    .await
    .expect("no WebDriver session within 30 s")
    .expect("cannot open a WebDriver session with headless Chromium")
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshots().join(name), png).unwrap();
}

async fn wait_css(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(WAIT)
        .every(Duration::from_millis(100))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} within {WAIT:?}: {e}"))
}

async fn text(client: &Client, css: &str) -> String {
    wait_css(client, css).await.text().await.unwrap()
}

/// The PR's `waiting_on` in the JSON, joined as the pages join it.
async fn explanation(stack: &Stack, n: u64) -> String {
    let status = stack.get_json("/status").await.unwrap();
    let pr = status["prs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"] == n)
        .cloned()
        .unwrap_or_default();
    pr["waiting_on"]
        .as_array()
        .map(|reasons| {
            reasons
                .iter()
                .map(|r| r.as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

async fn js(client: &Client, script: &str) -> serde_json::Value {
    client.execute(script, vec![]).await.unwrap()
}

#[tokio::test]
async fn the_pages_in_a_real_browser() {
    // One bound for the whole test, besides each wait's own.
    tokio::time::timeout(Duration::from_secs(240), run())
        .await
        .expect("the browser test took more than 240 s");
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let driver = start_driver(&dir.path().join("chromedriver.log")).await;
    let stack = Stack::start(dir.path(), "127.0.0.1:0".parse().unwrap(), |c| {
        c.repos[0].train_depth = 2;
        c.repos[0].max_concurrent_builds = 4;
    })
    .await
    .unwrap();
    // Two PRs nobody approved (one with a hostile title), and one that is
    // approved and enters the train; its test takes a few seconds, so its
    // car is seen before it lands.
    let waiting = stack
        .open_pr("waits", &[("src/w.txt", "w\n")], "Waits for a review")
        .await
        .unwrap();
    let hostile = stack
        .open_pr("hostile", &[("src/h.txt", "h\n")], HOSTILE)
        .await
        .unwrap();
    let lands = stack
        .open_pr(
            "lands",
            &[("src/l.txt", "l\n"), ("delay", "4")],
            "Lands through the train",
        )
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, lands, "alice", "APPROVED")
        .await
        .unwrap();
    // Reviews that do not make it approved: no write access, a change
    // request that blocks.
    stack
        .hub
        .review(DEMO_REPO, waiting, "mallory", "APPROVED")
        .await
        .unwrap();
    stack
        .hub
        .review(DEMO_REPO, waiting, "bob", "CHANGES_REQUESTED")
        .await
        .unwrap();
    stack
        .wait_for("a car in the train", Duration::from_secs(60), |s| {
            s.sluice
                .shared
                .state
                .read()
                .unwrap()
                .queue_view()
                .iter()
                .any(|t| t.cars.iter().any(|c| c.pr == lands))
        })
        .await
        .unwrap();
    let decided = |s: &Stack| {
        let state = s.sluice.shared.state.read().unwrap();
        let key = |number| sluice::core::PrKey {
            repo: sluice::core::RepoName::parse(DEMO_REPO).unwrap(),
            number,
        };
        state
            .review_views(&key(waiting))
            .is_some_and(|r| r.len() == 2)
            && [waiting, hostile].iter().all(|n| {
                state
                    .pr_view_of(&sluice::core::PrKey {
                        repo: sluice::core::RepoName::parse(DEMO_REPO).unwrap(),
                        number: *n,
                    })
                    .is_some_and(|v| v.build.is_some_and(|b| b.state == "passed"))
            })
    };
    stack
        .wait_for("the waiting PRs' tests", Duration::from_secs(60), decided)
        .await
        .unwrap();

    let client = browser(&driver, &dir.path().join("chromium-profile")).await;
    let result = browse(&client, &stack, waiting, hostile, lands).await;
    let _ = client.close().await;
    stack.sluice.stop().await;
    drop(driver);
    result
}

async fn browse(client: &Client, stack: &Stack, waiting: u64, hostile: u64, lands: u64) {
    // The dashboard: the train with its car, the waiting PRs with why.
    client.goto(&stack.url("/")).await.unwrap();
    wait_css(
        client,
        &format!("section.train[data-repo=\"{DEMO_REPO}\"][data-branch=\"main\"] li.car[data-pr=\"{lands}\"]"),
    )
    .await;
    assert_eq!(text(client, "section.train .branch-state").await, "running");
    assert!(
        text(client, "section.train .failure-rate")
            .await
            .ends_with('%')
    );
    for n in [waiting, hostile] {
        let reason = text(client, &format!("tr.waiting[data-pr=\"{n}\"] td.reason")).await;
        assert_eq!(reason, explanation(stack, n).await, "#{n}");
        assert!(!reason.is_empty());
    }
    // A hostile title is text: no alert, the text is the title.
    assert_eq!(
        text(client, &format!("tr.waiting[data-pr=\"{hostile}\"] .title")).await,
        HOSTILE
    );
    assert!(
        client.get_alert_text().await.is_err(),
        "an alert is open: the title ran"
    );
    assert_eq!(js(client, "return document.scripts.length").await, 1);
    shoot(client, "dashboard.png").await;

    // It updates without a reload when the car lands.
    js(client, "window.__marker = 1; return 1").await;
    assert!(
        client
            .find(Locator::Css(&format!("li.landed[data-pr=\"{lands}\"]")))
            .await
            .is_err(),
        "landed before the page was watched"
    );
    stack
        .wait_for("the car landed", Duration::from_secs(60), |s| {
            s.hub.pr(DEMO_REPO, lands).is_some_and(|p| p.merged)
        })
        .await
        .unwrap();
    let landed = wait_css(client, &format!("li.landed[data-pr=\"{lands}\"]")).await;
    let landed_sha = landed.attr("data-sha").await.unwrap().unwrap();
    assert_eq!(
        js(client, "return window.__marker").await,
        1,
        "the page was reloaded"
    );
    assert_eq!(
        landed_sha,
        stack
            .hub
            .branch_head(DEMO_REPO, "main")
            .await
            .unwrap()
            .as_str(),
        "the landed sha is main's head"
    );

    // The PR page: the explanation (the JSON's words, read on both sides
    // of the page: main moved, so its test may be re-run meanwhile), the
    // approvals, the builds, whose links open.
    let mut explained = Vec::new();
    for _ in 0..5 {
        let before = explanation(stack, waiting).await;
        client
            .goto(&stack.url(&format!("/pr/{DEMO_REPO}/{waiting}")))
            .await
            .unwrap();
        let shown = text(client, "#explanation").await;
        let after = explanation(stack, waiting).await;
        explained.push((before.clone(), shown.clone(), after.clone()));
        if before == after && shown == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (before, shown, _) = explained.last().unwrap();
    assert_eq!(shown, before, "{explained:?}");
    let approvals = text(client, "#approvals").await;
    assert!(approvals.contains("not approved"), "{approvals}");
    assert!(
        approvals.contains("mallory has no write access"),
        "{approvals}"
    );
    assert!(
        approvals.contains("blocks: changes requested"),
        "{approvals}"
    );
    assert!(!text(client, "#history").await.is_empty());
    shoot(client, "pr.png").await;
    let link = wait_css(client, ".build a[href]").await;
    let href = link.attr("href").await.unwrap().unwrap();
    let build = link.text().await.unwrap();
    link.click().await.unwrap();
    client
        .wait()
        .at_most(WAIT)
        .for_url(&href.parse().unwrap())
        .await
        .unwrap();
    let source = client.source().await.unwrap();
    assert!(source.contains(&build), "the build page names {build}");
    assert!(
        source.contains("log.txt"),
        "the build page links its log: {source}"
    );

    // The PR page of the landed PR, drawn from the history.
    client
        .goto(&stack.url(&format!("/pr/{DEMO_REPO}/{lands}")))
        .await
        .unwrap();
    assert!(text(client, "#explanation").await.contains(&landed_sha));

    // History search finds the landed sha by a prefix.
    client.goto(&stack.url("/search")).await.unwrap();
    let form = client.form(Locator::Css("form.search")).await.unwrap();
    form.set_by_name("sha", &landed_sha[..10]).await.unwrap();
    form.submit().await.unwrap();
    let entry = wait_css(
        client,
        &format!("li.entry[data-kind=\"merged\"][data-sha=\"{landed_sha}\"]"),
    )
    .await;
    assert!(entry.text().await.unwrap().contains(&format!("#{lands}")));

    // The hostile PR's own page: the title is text there too.
    client
        .goto(&stack.url(&format!("/pr/{DEMO_REPO}/{hostile}")))
        .await
        .unwrap();
    assert_eq!(text(client, "#title").await, HOSTILE);
    assert!(client.get_alert_text().await.is_err());
}
