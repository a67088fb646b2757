//! Load test: signed webhook deliveries at a fixed rate against a real
//! sluice process on 127.0.0.1, checking that every one is accepted and
//! applied exactly once. Run with `scripts/load` (release build).
//!
//! Each delivery is a `push` to a distinct branch, so each must become one
//! `branch_moved` event in the core; 1% are redeliveries of an earlier id,
//! which must be answered as duplicates and applied zero times.

use sluice::demo::{
    API_TOKEN, CHECK_SCRIPT, DEMO_REPO, GITHUB_TOKEN, WEBHOOK_SECRET, demo_config_toml,
};
use sluice::fakehub::FakeHub;
use sluice::forge::webhook::sign;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = arg("--rate", 500).clamp(1, 5_000);
    let secs = arg("--secs", 60).clamp(1, 120);
    let dir = tempfile::tempdir()?;
    let hub = FakeHub::start(&dir.path().join("github"), Some(GITHUB_TOKEN.into())).await?;
    hub.create_repo(DEMO_REPO, "main", &[("check.sh", CHECK_SCRIPT)])
        .await?;

    // A real push body from the fake GitHub, as a template.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    hub.set_webhook(&format!("{url}/webhook"), WEBHOOK_SECRET);
    hub.commit(
        DEMO_REPO,
        "template",
        Some("main"),
        &[("t", "t")],
        "template",
    )
    .await?;
    hub.idle().await;
    let template: serde_json::Value = serde_json::from_str(
        &hub.deliveries()
            .into_iter()
            .find(|d| d.event == "push")
            .expect("a push delivery")
            .body,
    )?;

    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, demo_config_toml(&hub, dir.path(), &url))?;
    let exe = std::env::current_exe()?;
    let sluice_bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("sluice"))
        .expect("target dir");
    let mut sluice = Command::new(&sluice_bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("GITHUB_TOKEN", GITHUB_TOKEN)
        .env("SLUICE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("SLUICE_API_TOKEN", API_TOKEN)
        .stdin(Stdio::null())
        .spawn()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()?;
    let started = Instant::now();
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "sluice did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied_before = branch_moved(&http, &url).await?;

    let total = rate * secs;
    println!("sending {total} signed deliveries at {rate}/s for {secs}s to {url} ...");
    let http = Arc::new(http);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        // Every 100th delivery repeats an earlier one: same id, same body.
        let (n, duplicate) = if i % 100 == 99 {
            (i - 50, true)
        } else {
            (i, false)
        };
        let mut body = template.clone();
        body["ref"] = format!("refs/heads/load/{n}").into();
        body["after"] = format!("{:040x}", n + 1).into();
        let body = serde_json::to_vec(&body)?;
        let http = http.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = http
                .post(format!("{url}/webhook"))
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", format!("load-{n}"))
                .header(
                    "X-Hub-Signature-256",
                    sign(WEBHOOK_SECRET.as_bytes(), &body),
                )
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await;
            let status = response.map(|r| r.status().as_u16()).unwrap_or(0);
            (sent.elapsed(), status, duplicate)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let (mut accepted, mut duplicates, mut bad) = (0u64, 0u64, 0u64);
    for task in tasks {
        let (latency, status, duplicate) = task.await?;
        latencies.push(latency);
        match (status, duplicate) {
            (202, false) => accepted += 1,
            (200, true) => duplicates += 1,
            _ => bad += 1,
        }
    }
    let elapsed = t0.elapsed();
    // Every accepted delivery must become exactly one event.
    let deadline = Instant::now() + Duration::from_secs(30);
    let applied = loop {
        let applied = branch_moved(&http, &url).await? - applied_before;
        if applied >= accepted || Instant::now() > deadline {
            break applied;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Give a late double-application a moment to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied_final = branch_moved(&http, &url).await? - applied_before;
    let _ = sluice.kill();
    let _ = sluice.wait();

    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "deliveries sent:        {total} in {:.1}s ({:.0}/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!("accepted (202):         {accepted}");
    println!("duplicates (200):       {duplicates}");
    println!("other answers:          {bad}");
    println!("applied (core events):  {applied_final}");
    println!(
        "latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3
    );
    anyhow::ensure!(bad == 0, "{bad} deliveries were not answered as expected");
    anyhow::ensure!(
        applied == accepted && applied_final == accepted,
        "applied {applied_final} events for {accepted} accepted deliveries"
    );
    println!("ok: every delivery accepted and applied exactly once");
    Ok(())
}

/// The core's count of `branch_moved` events, from /metrics.
async fn branch_moved(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(metrics
        .lines()
        .find(|l| l.starts_with("sluice_events_total") && l.contains("kind=\"branch_moved\""))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}
