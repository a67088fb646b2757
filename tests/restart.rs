//! sluice killed with SIGKILL and started again: it forgets nothing that
//! matters, re-runs what was lost, and never merges anything stale.

mod support;

use sluice::demo::{DEMO_REPO, WEBHOOK_SECRET};
use support::{World, alive};

#[tokio::test]
async fn a_passing_result_survives_a_kill_and_is_not_tested_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(dir.path(), 1, 2).await;
    world.start().await;
    let pr = world.open_pr("feature", &[("src/f.txt", "f\n")]).await;
    world
        .wait("success", 60, |w| {
            w.status_of(pr).is_some_and(|s| s.state == "success")
        })
        .await;
    let head = world.hub.pr(DEMO_REPO, pr).unwrap().head_sha;
    let statuses_before = world.hub.statuses(DEMO_REPO, head.as_str());

    world.kill();
    world.start().await;
    // Let the startup re-read of GitHub happen, and a few more.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let status = world.get("/status").await;
    assert_eq!(status["prs"][0]["phase"], "passed", "{status}");
    // Nothing was re-tested: no new status but the last one written again
    // (a restart writes again what was decided just before it).
    let statuses = world.hub.statuses(DEMO_REPO, head.as_str());
    let last = statuses_before.last().unwrap();
    assert!(
        statuses[statuses_before.len()..].iter().all(|s| s == last),
        "{statuses:?}"
    );

    world
        .hub
        .review(DEMO_REPO, pr, "alice", "APPROVED")
        .await
        .unwrap();
    world.wait("merge", 60, |w| w.merged(pr)).await;
    assert_eq!(
        world.builds_of(pr).await.len(),
        1,
        "one build, before the kill"
    );
    // sluice records the merge when GitHub's answer reaches it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let landed = world.get(&format!("/history?sha={}", head.short())).await;
        if landed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "merged")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no merge record: {landed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_job_running_at_the_kill_is_stopped_and_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(dir.path(), 1, 2).await;
    world.start().await;
    let pr = world
        .open_pr("slow", &[("src/s.txt", "s\n"), ("delay", "4")])
        .await;
    world
        .wait("the job to run", 60, |w| {
            w.status_of(pr)
                .and_then(|s| s.description)
                .is_some_and(|d| d.starts_with("testing"))
        })
        .await;
    // The job's process group, as the executor recorded it.
    let work = dir.path().join("work");
    let find_pgid = || {
        std::fs::read_dir(&work)
            .ok()?
            .flatten()
            .map(|e| e.path().join("pgid"))
            .find(|p| p.exists())
    };
    world
        .wait("the job's process group", 30, |_| find_pgid().is_some())
        .await;
    // The test command (the last one started) is the one still running.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let pgid_file = find_pgid().unwrap();
    let pgid: i32 = std::fs::read_to_string(&pgid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    world.kill();
    // The job outlives a killed sluice...
    assert!(
        alive(pgid),
        "the orphaned test process should still be running"
    );
    world.start().await;
    // ...until the restarted one kills it and removes its workspace.
    world
        .wait("the old workspace to be removed", 10, |_| {
            !pgid_file.exists()
        })
        .await;
    world.wait("the orphan to die", 10, |_| !alive(pgid)).await;
    world
        .wait("success after the restart", 60, |w| {
            w.status_of(pr).is_some_and(|s| s.state == "success")
        })
        .await;
    let history = world.get(&format!("/history?pr={pr}")).await;
    let entries = history["entries"].as_array().unwrap();
    let lost = entries
        .iter()
        .filter(|e| {
            e["kind"] == "build_cancelled" && e["why"].as_str().unwrap_or("").contains("restarted")
        })
        .count();
    assert_eq!(lost, 1, "{history}");
    let finished: Vec<_> = entries
        .iter()
        .filter(|e| e["kind"] == "build_finished")
        .collect();
    assert_eq!(finished.len(), 1, "exactly one build reported: {history}");
    assert_eq!(finished[0]["report"]["outcome"], "passed");
}

#[tokio::test]
async fn a_delivery_replayed_after_a_restart_is_still_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(dir.path(), 0, 2).await;
    world.start().await;
    let pr = world.open_pr("f", &[("src/f.txt", "f\n")]).await;
    world
        .wait("success", 60, |w| {
            w.status_of(pr).is_some_and(|s| s.state == "success")
        })
        .await;
    world.hub.idle().await;
    let opened = world
        .hub
        .deliveries()
        .into_iter()
        .find(|d| d.event == "pull_request" && d.status == Some(202))
        .expect("the opened delivery was accepted");
    world.kill();
    world.start().await;
    let status = world.hub.redeliver(&opened.id).await.unwrap();
    assert_eq!(status, 200, "answered as a duplicate");
    assert_eq!(world.builds_of(pr).await.len(), 1);
}

/// A 202 means the delivery is on disk: deliveries stream in from several
/// connections, sluice is SIGKILLed in the middle, and after the restart
/// every PR whose delivery was answered 202 is tracked. (GitHub is out of
/// reach, so nothing but the journal can bring them back.)
#[tokio::test]
async fn every_delivery_answered_202_survives_a_kill() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(dir.path(), 0, 1).await;
    // GitHub unreachable: the startup reconcile cannot heal (or close) what
    // the journal lost.
    let toml = std::fs::read_to_string(&world.config).unwrap();
    let toml: String = toml
        .lines()
        .map(|l| {
            if l.starts_with("api_url") {
                "api_url = \"http://127.0.0.1:9\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&world.config, toml).unwrap();
    world.start().await;
    let template: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata/webhooks/pull_request/opened.payload.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let accepted = Arc::new(Mutex::new(Vec::<u64>::new()));
    let url = format!("{}/webhook", world.url);
    let senders: Vec<_> = (0..8u64)
        .map(|lane| {
            let (template, accepted, url) = (template.clone(), accepted.clone(), url.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for i in 0..2_000u64 {
                    let number = 1 + lane + 8 * i;
                    let mut body = template.clone();
                    body["repository"]["full_name"] = DEMO_REPO.into();
                    body["number"] = number.into();
                    body["pull_request"]["number"] = number.into();
                    body["pull_request"]["head"]["sha"] =
                        format!("{:040x}", 0xbeef_0000 + number).into();
                    let body = serde_json::to_vec(&body).unwrap();
                    let signature = sluice::forge::webhook::sign(WEBHOOK_SECRET.as_bytes(), &body);
                    let sent = http
                        .post(&url)
                        .header("X-GitHub-Event", "pull_request")
                        .header("X-GitHub-Delivery", format!("kill-{number}"))
                        .header("X-Hub-Signature-256", signature)
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 202 => accepted.lock().unwrap().push(number),
                        Ok(_) => {}
                        Err(_) => return, // killed
                    }
                }
            })
        })
        .collect();
    // Kill it in the middle of the stream.
    while accepted.lock().unwrap().len() < 400 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    world.kill();
    for sender in senders {
        let _ = sender.await;
    }
    let accepted = accepted.lock().unwrap().clone();
    world.start().await;
    let status = world.get("/status").await;
    let tracked: std::collections::BTreeSet<u64> = status["prs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    let lost: Vec<u64> = accepted
        .iter()
        .copied()
        .filter(|n| !tracked.contains(n))
        .collect();
    assert!(accepted.len() >= 400);
    assert!(
        lost.is_empty(),
        "{} of {} accepted deliveries lost: {lost:?}",
        lost.len(),
        accepted.len()
    );
}
