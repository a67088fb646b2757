//! sluice killed with SIGKILL and started again: it forgets nothing that
//! matters, re-runs what was lost, and never merges anything stale.

mod support;

use sluice::demo::DEMO_REPO;
use support::World;

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
    let statuses_before = world.hub.statuses(DEMO_REPO, head.as_str()).len();

    world.kill();
    world.start().await;
    // Let the startup re-read of GitHub happen, and a few more.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let status = world.get("/status").await;
    assert_eq!(status["prs"][0]["phase"], "passed", "{status}");
    assert_eq!(
        world.hub.statuses(DEMO_REPO, head.as_str()).len(),
        statuses_before,
        "no new status: nothing was re-tested"
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

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
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
