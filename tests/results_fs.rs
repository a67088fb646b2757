//! The local results store, on a real directory.

use sluice::core::{
    BuildId, Candidate, CandidatePr, JobReport, Outcome, RepoName, ResultKey, Sha, Timestamp,
};
use sluice::results::fs::FsResults;
use sluice::results::{BuildRecord, ResultsStore};
use std::path::Path;

fn key() -> ResultKey {
    ResultKey {
        repo: RepoName::parse("octo/demo").unwrap(),
        pr: 7,
        head: Sha::parse(&"a".repeat(40)).unwrap(),
        build: BuildId::parse("k3-12").unwrap(),
    }
}

fn candidate(head_ref: &str) -> Candidate {
    Candidate {
        car: None,
        repo: RepoName::parse("octo/demo").unwrap(),
        target_branch: "main".into(),
        target_sha: Sha::parse(&"b".repeat(40)).unwrap(),
        prs: vec![CandidatePr {
            number: 7,
            head_sha: Sha::parse(&"a".repeat(40)).unwrap(),
            head_ref: head_ref.into(),
        }],
    }
}

fn record(head_ref: &str) -> BuildRecord {
    BuildRecord {
        key: key(),
        candidate: candidate(head_ref),
        report: JobReport {
            outcome: Outcome::Failed,
            exit_code: Some(3),
            detail: "exit code 3".into(),
            started_at: Timestamp(1_700_000_000_000),
            finished_at: Timestamp(1_700_000_003_200),
        },
    }
}

fn build_dir(root: &Path) -> std::path::PathBuf {
    root.join(key().relative_path())
}

/// Names in the build's directory, sorted (no temporary files left over).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn finished_writes_log_result_and_page() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsResults::new(tmp.path().join("results"), "https://sluice.example");
    let rec = record("feature");
    let log = b"sluice: running [\"make\", \"test\"]\nboom\nsluice: exit code 3 after 3.2s\n";
    store.finished(&rec, log).await.unwrap();

    let dir = build_dir(&tmp.path().join("results"));
    assert_eq!(names(&dir), ["index.html", "log.txt", "result.json"]);
    assert_eq!(std::fs::read(dir.join("log.txt")).unwrap(), log);

    let json = std::fs::read_to_string(dir.join("result.json")).unwrap();
    assert!(json.contains("\n  \"key\""), "not pretty: {json}");
    let back: BuildRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rec);

    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    for want in [
        "octo/demo",
        "#7 (feature)",
        &"a".repeat(40),
        &format!("main at {}", "b".repeat(40)),
        "k3-12",
        "failed",
        "exit code 3",
        "<td>3</td>",
        "3.2s",
        "href=\"log.txt\"",
        "href=\"result.json\"",
        "boom\n",
    ] {
        assert!(page.contains(want), "{want:?} missing from:\n{page}");
    }
    assert!(!page.contains("refresh"), "a finished page need not reload");
}

#[tokio::test]
async fn pages_escape_what_people_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsResults::new(tmp.path().to_path_buf(), "http://x");
    let evil = "<script>alert(1)</script>";
    let mut rec = record(evil);
    rec.candidate.target_branch = format!("main\"{evil}");
    store.started(&key(), &rec.candidate).await.unwrap();
    let page = std::fs::read_to_string(build_dir(tmp.path()).join("index.html")).unwrap();
    assert!(!page.contains("<script>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );

    let log = format!("output {evil} & more\n");
    store.finished(&rec, log.as_bytes()).await.unwrap();
    let page = std::fs::read_to_string(build_dir(tmp.path()).join("index.html")).unwrap();
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("main&quot;&lt;script&gt;"), "{page}");
    assert!(page.contains("output &lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
    // The raw log stays as it was.
    let raw = std::fs::read_to_string(build_dir(tmp.path()).join("log.txt")).unwrap();
    assert_eq!(raw, log);
}

#[tokio::test]
async fn started_writes_a_running_page_that_finished_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsResults::new(tmp.path().to_path_buf(), "http://x");
    let rec = record("feature");
    store.started(&key(), &rec.candidate).await.unwrap();
    let dir = build_dir(tmp.path());
    assert_eq!(names(&dir), ["index.html"]);
    let running = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(running.contains("running"), "{running}");
    assert!(running.contains("k3-12") && running.contains(&"a".repeat(40)));
    assert!(!running.contains("log.txt"), "no log yet: {running}");

    store.finished(&rec, b"done\n").await.unwrap();
    let done = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(!done.contains("is running"), "{done}");
    assert!(done.contains("failed") && done.contains("done\n"), "{done}");
    assert_eq!(names(&dir), ["index.html", "log.txt", "result.json"]);
}

#[tokio::test]
async fn links_point_under_results() {
    let store = FsResults::new("/srv/results".into(), "https://sluice.example/");
    assert_eq!(
        store.link(&key()),
        format!(
            "https://sluice.example/results/octo/demo/pr-7/{}/k3-12/",
            "a".repeat(40)
        )
    );
}

#[tokio::test]
async fn a_symlink_out_of_the_results_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("results");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("octo")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("octo/demo")).unwrap();
    let store = FsResults::new(root, "http://x");
    let err = store
        .finished(&record("feature"), b"log")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
    assert!(std::fs::read_dir(&outside).unwrap().all(|e| {
        let p = e.unwrap().path();
        !p.join("log.txt").exists()
    }));
}

/// A running build's page shows the part of the log it was given, says
/// where that part starts when it is not the beginning, and has its live
/// log continue from the byte after it (not from the part's length).
#[test]
fn the_running_page_continues_its_live_log_after_the_part_it_shows() {
    let whole = sluice::results::fs::live_page(&key(), &candidate("f"), 1_000, b"line 1\n", 0);
    assert!(whole.contains("line 1"), "{whole}");
    assert!(whole.contains("'live?from=' + 7"), "{whole}");
    assert!(!whole.contains("from byte"), "{whole}");
    let tail =
        sluice::results::fs::live_page(&key(), &candidate("f"), 1_000, b"<last> line\n", 5_000_000);
    assert!(tail.contains("&lt;last&gt; line"), "escaped: {tail}");
    assert!(tail.contains("from byte 5000000"), "{tail}");
    assert!(tail.contains("'live?from=' + 5000012"), "{tail}");
}
