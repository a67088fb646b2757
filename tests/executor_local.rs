//! The local executor against real git repositories and real processes.

use sluice::config::ExecutorConfig;
use sluice::core::{BuildId, Candidate, CandidatePr, Outcome, RepoName, Sha};
use sluice::executor::local::LocalExecutor;
use sluice::executor::{CloneToken, Executor, JobResult, JobSpec, TokenMint};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Once};
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const SECRETS: [(&str, &str); 3] = [
    ("GITHUB_TOKEN", "ghp-test-secret-token"),
    ("SLUICE_API_TOKEN", "api-test-secret-token"),
    ("SLUICE_WEBHOOK_SECRET", "hook-test-secret"),
];

/// Puts sluice's secrets into this process's environment, as in
/// production. Every test calls this before anything else, so the one write
/// happens before any test runs a process.
fn setup() {
    static ENV: Once = Once::new();
    ENV.call_once(|| {
        for (name, value) in SECRETS {
            // SAFETY: every test waits here before it starts a thread or a
            // process, so nothing reads the environment concurrently.
            unsafe { std::env::set_var(name, value) };
        }
    });
}

/// Runs git for the test's own set-up, ignoring any user configuration.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@localhost",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn commit(dir: &Path, files: &[(&str, &str)], message: &str) -> Sha {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    Sha::parse(&git(dir, &["rev-parse", "HEAD"])).unwrap()
}

/// A bare "origin" with a PR branch (adds `head.txt`) and a target branch
/// that moved on since (adds `target.txt`); with `conflict`, both also
/// change `common.txt`.
struct Fixture {
    tmp: TempDir,
    head: Sha,
    target: Sha,
    head_branch: String,
}

fn fixture(conflict: bool, head_branch: &str) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let origin = tmp.path().join("origin.git");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&origin).unwrap();
    std::fs::create_dir_all(&src).unwrap();
    git(&origin, &["init", "-q", "--bare"]);
    git(
        &origin,
        &["config", "uploadpack.allowAnySHA1InWant", "true"],
    );
    git(&src, &["init", "-q"]);
    commit(&src, &[("common.txt", "base\n")], "base");
    git(&src, &["checkout", "-q", "-b", head_branch]);
    let mut head_files = vec![("head.txt", "from head\n")];
    if conflict {
        head_files.push(("common.txt", "head's version\n"));
    }
    let head = commit(&src, &head_files, "head");
    git(&src, &["checkout", "-q", "main"]);
    let mut target_files = vec![("target.txt", "from target\n")];
    if conflict {
        target_files.push(("common.txt", "target's version\n"));
    }
    let target = commit(&src, &target_files, "target");
    let origin_str = origin.to_str().unwrap();
    git(&src, &["push", "-q", origin_str, "main", head_branch]);
    Fixture {
        tmp,
        head,
        target,
        head_branch: head_branch.to_string(),
    }
}

impl Fixture {
    fn clone_url(&self) -> String {
        format!("file://{}", self.tmp.path().join("origin.git").display())
    }
    fn work_dir(&self) -> PathBuf {
        self.tmp.path().join("work")
    }
    fn executor(&self, max_parallel: usize) -> LocalExecutor {
        LocalExecutor::new(&ExecutorConfig {
            work_dir: self.work_dir(),
            max_parallel,
            git_timeout_secs: 60,
            ..ExecutorConfig::default()
        })
    }
    fn spec(&self, build: &str, command: &[&str], timeout: Duration) -> JobSpec {
        JobSpec {
            build: BuildId::parse(build).unwrap(),
            candidate: Candidate {
                car: None,
                repo: RepoName::parse("octo/demo").unwrap(),
                target_branch: "main".into(),
                target_sha: self.target.clone(),
                prs: vec![CandidatePr {
                    number: 7,
                    head_sha: self.head.clone(),
                    head_ref: self.head_branch.clone(),
                }],
            },
            clone_url: self.clone_url(),
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout,
            clone_token: None,
            mint_token: None,
        }
    }
    fn path(&self, name: &str) -> String {
        self.tmp.path().join(name).to_str().unwrap().to_string()
    }
}

const LONG: Duration = Duration::from_secs(120);

async fn next(rx: &mut UnboundedReceiver<JobResult>) -> Option<JobResult> {
    tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("the job ends")
}

async fn run(ex: &LocalExecutor, spec: JobSpec) -> (JobResult, String) {
    let (tx, mut rx) = unbounded_channel();
    ex.start(spec, tx);
    let result = next(&mut rx).await.expect("a result");
    assert!(next(&mut rx).await.is_none(), "exactly one result");
    let log = String::from_utf8_lossy(&result.log).into_owned();
    (result, log)
}

async fn wait_for_file(path: &str) {
    for _ in 0..600 {
        if Path::new(path).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never appeared");
}

fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name() == name {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.extend(find_named(&path, name));
            }
        }
    }
    found
}

#[tokio::test]
async fn a_passing_command_passes_with_its_output_in_the_log() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    let cmd = [
        "sh",
        "-c",
        "echo hello from the test; echo and from stderr >&2",
    ];
    let (result, log) = run(&ex, fx.spec("b-pass", &cmd, LONG)).await;
    assert_eq!(result.report.outcome, Outcome::Passed, "{log}");
    assert_eq!(result.report.exit_code, Some(0));
    assert_eq!(result.build.as_str(), "b-pass");
    for want in [
        "sluice: fetching ",
        &format!(
            "sluice: merging target main {} into head {}",
            fx.target, fx.head
        ),
        "sluice: running [\"sh\", \"-c\",",
        "hello from the test\n",
        "and from stderr\n",
        "sluice: exit code 0 after ",
    ] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }
    let r = &result.report;
    assert!(r.started_at.0 > 1_600_000_000_000 && r.started_at <= r.finished_at);
    let left: Vec<_> = std::fs::read_dir(fx.work_dir()).unwrap().collect();
    assert!(left.is_empty(), "workspace left behind: {left:?}");
}

#[tokio::test]
async fn a_failing_command_fails_with_its_exit_code() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    let (result, log) = run(&ex, fx.spec("b-fail", &["sh", "-c", "exit 3"], LONG)).await;
    assert_eq!(result.report.outcome, Outcome::Failed, "{log}");
    assert_eq!(result.report.exit_code, Some(3));
    assert_eq!(result.report.detail, "exit code 3");
    assert!(log.contains("sluice: exit code 3 after "), "{log}");
}

#[tokio::test]
async fn a_command_killed_by_a_signal_fails_naming_it() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    let (result, log) = run(&ex, fx.spec("b-sig", &["sh", "-c", "kill -9 $$"], LONG)).await;
    assert_eq!(result.report.outcome, Outcome::Failed, "{log}");
    assert_eq!(result.report.exit_code, None);
    assert!(result.report.detail.contains("SIGKILL"), "{result:?}");
}

#[tokio::test]
async fn the_test_sees_exactly_head_merged_with_target() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    let cmd = [
        "sh",
        "-c",
        "cat head.txt target.txt common.txt && git rev-parse HEAD^1 HEAD^2",
    ];
    let (result, log) = run(&ex, fx.spec("b-tree", &cmd, LONG)).await;
    assert_eq!(result.report.outcome, Outcome::Passed, "{log}");
    let expected = format!("from head\nfrom target\nbase\n{}\n{}\n", fx.head, fx.target);
    assert!(log.contains(&expected), "{log}");
}

#[tokio::test]
async fn a_merge_conflict_fails_without_running_the_test() {
    setup();
    let fx = fixture(true, "feature");
    let ex = fx.executor(2);
    let (result, log) = run(&ex, fx.spec("b-conflict", &["true"], LONG)).await;
    assert_eq!(result.report.outcome, Outcome::Failed, "{log}");
    let line = format!(
        "sluice: merge conflict: head {} does not merge with target main at {}; conflicting files: common.txt",
        fx.head, fx.target
    );
    assert!(log.contains(&line), "{log}");
    assert!(result.report.detail.contains("common.txt"), "{result:?}");
    assert!(!log.contains("sluice: running"), "{log}");
}

#[tokio::test]
async fn an_unreachable_clone_url_is_an_infrastructure_error() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    let mut spec = fx.spec("b-nourl", &["true"], LONG);
    spec.clone_url = format!("file://{}", fx.path("no-such-repo.git"));
    let (result, log) = run(&ex, spec).await;
    assert_eq!(result.report.outcome, Outcome::Error, "{log}");
    assert!(
        result.report.detail.contains("git fetch failed"),
        "{result:?}"
    );
    assert!(!log.contains("sluice: running"), "{log}");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    let marker = fx.path("late-write");
    // The grandchild would write the marker after 4s; the job times out at 2s.
    let cmd = [
        "sh",
        "-c",
        "(sleep 4; touch \"$1\") & sleep 100",
        "sh",
        &marker,
    ];
    let (result, log) = run(&ex, fx.spec("b-timeout", &cmd, Duration::from_secs(2))).await;
    assert_eq!(result.report.outcome, Outcome::Error, "{log}");
    assert_eq!(result.report.detail, "timed out after 2s");
    assert!(log.contains("sluice: timed out after 2s"), "{log}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!Path::new(&marker).exists(), "the grandchild survived");
}

#[tokio::test]
async fn a_cancelled_job_is_killed_and_reports_nothing() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    let started = fx.path("started");
    let marker = fx.path("late-write");
    let cmd = [
        "sh",
        "-c",
        "touch \"$1\"; (sleep 3; touch \"$2\") & sleep 100",
        "sh",
        &started,
        &marker,
    ];
    let (tx, mut rx) = unbounded_channel();
    ex.start(fx.spec("b-cancel", &cmd, LONG), tx);
    wait_for_file(&started).await;
    ex.cancel(&BuildId::parse("b-cancel").unwrap());
    assert!(
        next(&mut rx).await.is_none(),
        "a cancelled job sent a result"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!Path::new(&marker).exists(), "the grandchild survived");
    let left: Vec<_> = std::fs::read_dir(fx.work_dir()).unwrap().collect();
    assert!(left.is_empty(), "workspace left behind: {left:?}");
    // Unknown ids are ignored.
    ex.cancel(&BuildId::parse("b-unknown").unwrap());
}

#[tokio::test]
async fn a_job_waiting_for_its_turn_can_be_cancelled() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(1);
    let started = fx.path("started");
    let (tx_a, mut rx_a) = unbounded_channel();
    let (tx_b, mut rx_b) = unbounded_channel();
    let cmd_a = ["sh", "-c", "touch \"$1\"; sleep 100", "sh", &started];
    ex.start(fx.spec("b-first", &cmd_a, LONG), tx_a);
    wait_for_file(&started).await;
    ex.start(fx.spec("b-second", &["true"], LONG), tx_b);
    ex.cancel(&BuildId::parse("b-second").unwrap());
    assert!(next(&mut rx_b).await.is_none());
    ex.cancel(&BuildId::parse("b-first").unwrap());
    assert!(next(&mut rx_a).await.is_none());
    assert!(ex.running().is_empty());
}

#[tokio::test]
async fn the_job_gets_only_allow_listed_environment() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    let (result, log) = run(&ex, fx.spec("b-env", &["env"], LONG)).await;
    assert_eq!(result.report.outcome, Outcome::Passed, "{log}");
    for (name, value) in SECRETS {
        assert_eq!(std::env::var(name).as_deref(), Ok(value));
        assert!(!log.contains(name), "{name} leaked:\n{log}");
        assert!(!log.contains(value), "{name}'s value leaked:\n{log}");
    }
    for want in [
        "SLUICE_REPO=octo/demo\n".to_string(),
        "SLUICE_PR=7\n".into(),
        format!("SLUICE_HEAD_SHA={}\n", fx.head),
        "SLUICE_HEAD_REF=feature\n".into(),
        "SLUICE_TARGET_BRANCH=main\n".into(),
        format!("SLUICE_TARGET_SHA={}\n", fx.target),
        "SLUICE_BUILD_ID=b-env\n".into(),
        "\nPATH=".into(),
    ] {
        assert!(log.contains(&want), "{want:?} missing:\n{log}");
    }
    let env_lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("sluice:") && l.contains('='))
        .collect();
    let allowed = ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PWD"];
    for line in env_lines {
        let name = line.split('=').next().unwrap();
        assert!(
            allowed.contains(&name) || name.starts_with("SLUICE_"),
            "unexpected variable {name}:\n{log}"
        );
    }
    let home = log.lines().find_map(|l| l.strip_prefix("HOME=")).unwrap();
    assert!(home.starts_with(fx.work_dir().to_str().unwrap()), "{home}");
}

#[tokio::test]
async fn refs_are_never_run_through_a_shell() {
    setup();
    // git refuses spaces in ref names, so the real branch uses ${IFS}.
    let branch = "$(touch${IFS}pwned)";
    let fx = fixture(false, branch);
    let ex = fx.executor(2);
    let mut spec = fx.spec(
        "b-pwned",
        &[
            "sh",
            "-c",
            "printf 'ref=%s\\n' \"$SLUICE_HEAD_REF\" \"$SLUICE_TARGET_BRANCH\"; test ! -e pwned",
        ],
        LONG,
    );
    spec.candidate.target_branch = "$(touch pwned)".into();
    let (result, log) = run(&ex, spec).await;
    assert_eq!(result.report.outcome, Outcome::Passed, "{log}");
    assert!(
        log.contains("ref=$(touch${IFS}pwned)\nref=$(touch pwned)\n"),
        "{log}"
    );
    assert_eq!(find_named(fx.tmp.path(), "pwned"), Vec::<PathBuf>::new());
    assert!(!Path::new("pwned").exists());
}

#[tokio::test]
async fn max_parallel_one_runs_jobs_one_after_the_other() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(1);
    let script = "date +%s%N > \"$1\"; sleep 1; date +%s%N > \"$2\"";
    let (tx, mut rx) = unbounded_channel();
    let files: Vec<[String; 2]> = ["a", "b"]
        .iter()
        .map(|j| [fx.path(&format!("{j}-start")), fx.path(&format!("{j}-end"))])
        .collect();
    for (j, [start, end]) in ["b-a", "b-b"].iter().zip(&files) {
        let cmd = ["sh", "-c", script, "sh", start, end];
        ex.start(fx.spec(j, &cmd, LONG), tx.clone());
    }
    drop(tx);
    for _ in 0..2 {
        let result = next(&mut rx).await.expect("a result");
        assert_eq!(result.report.outcome, Outcome::Passed);
    }
    let read = |p: &str| -> u128 { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
    let [a, b] = [&files[0], &files[1]].map(|[s, e]| (read(s), read(e)));
    assert!(a.1 <= b.0 || b.1 <= a.0, "jobs overlapped: {a:?} {b:?}");
}

#[tokio::test]
async fn a_huge_log_is_truncated_with_a_note() {
    setup();
    let fx = fixture(false, "feature");
    let ex = LocalExecutor::with_log_cap(
        &ExecutorConfig {
            work_dir: fx.work_dir(),
            ..ExecutorConfig::default()
        },
        10_000,
    );
    let cmd = ["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a"];
    let (result, log) = run(&ex, fx.spec("b-big", &cmd, LONG)).await;
    assert_eq!(result.report.outcome, Outcome::Passed, "{log}");
    assert!(
        log.contains("sluice: log truncated at 10000 bytes"),
        "{log}"
    );
    assert!(log.len() < 20_000);
    assert!(log.contains("sluice: exit code 0"));
}

#[tokio::test]
async fn a_test_command_that_cannot_start_is_an_error() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    let cmd = ["sluice-no-such-command"];
    let (result, log) = run(&ex, fx.spec("b-nocmd", &cmd, LONG)).await;
    assert_eq!(result.report.outcome, Outcome::Error, "{log}");
    assert!(result.report.detail.contains("cannot run"), "{result:?}");
    assert!(
        log.contains("sluice: cannot run \"sluice-no-such-command\""),
        "{log}"
    );
}

#[tokio::test]
async fn a_train_car_is_checked_out_exactly_and_nothing_is_merged() {
    setup();
    let fx = fixture(false, "feature");
    let ex = fx.executor(2);
    // The car: a commit sluice built (here the target commit itself).
    let mut spec = fx.spec(
        "b-car",
        &[
            "sh",
            "-c",
            "git rev-parse HEAD && if git rev-parse -q --verify HEAD^2; then echo TWO-PARENTS; fi",
        ],
        LONG,
    );
    spec.candidate.car = Some(fx.target.clone());
    let (result, log) = run(&ex, spec).await;
    assert_eq!(result.report.outcome, Outcome::Passed, "{log}");
    assert!(log.contains(&format!("\n{}\n", fx.target)), "{log}");
    assert!(!log.contains("\nTWO-PARENTS\n"), "{log}");
    assert!(!log.contains("sluice: merging"), "{log}");
}

/// With `executor.run_as`, the test runs as that user and cannot read what
/// only sluice's user can: a key file, or sluice's environment (its
/// tokens) through `/proc`. Without it, as root, it can: the contrast shows
/// what the setting is for. Switching users needs root; elsewhere this
/// test says so and checks nothing.
#[tokio::test]
async fn with_run_as_the_test_cannot_read_what_sluice_can() {
    setup();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running jobs as another user needs root");
        return;
    }
    let fx = fixture(false, "feature");
    let key = fx.tmp.path().join("app.pem");
    std::fs::write(&key, "KEY-TEST-SECRET\n").unwrap();
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&key, private).unwrap();
    let sluice_pid = std::process::id().to_string();
    let key_path = key.to_str().unwrap();
    let command = [
        "sh",
        "-c",
        "cat \"$1\"; tr '\\0' '\\n' < /proc/\"$2\"/environ; echo \"uid $(id -u)\"; exit 0",
        "sh",
        key_path,
        &sluice_pid,
    ];
    // What /proc shows of a process's environment is what it started
    // with (sluice's tokens, in production; cargo's variables here).
    let started_with = "CARGO_PKG_NAME=sluice\n";
    // As sluice's own user (root here), the test reads both.
    let (_, log) = run(&fx.executor(1), fx.spec("b-as-root", &command, LONG)).await;
    assert!(log.contains("KEY-TEST-SECRET"), "{log}");
    assert!(log.contains(started_with), "{log}");
    // The job's user must reach its workspace and the repository it
    // fetches (git refuses a repository someone else owns).
    let open = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(fx.tmp.path(), open).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "nobody:"])
        .arg(fx.tmp.path().join("origin.git"))
        .status()
        .unwrap();
    assert!(chown.success());
    let as_nobody = LocalExecutor::new(&ExecutorConfig {
        work_dir: fx.work_dir(),
        max_parallel: 1,
        git_timeout_secs: 60,
        run_as: Some("nobody".into()),
        ..ExecutorConfig::default()
    });
    let (result, log) = run(&as_nobody, fx.spec("b-run-as", &command, LONG)).await;
    assert_eq!(result.report.outcome, Outcome::Passed, "{log}");
    let nobody = sluice::executor::local::job_user("nobody").unwrap().0;
    assert!(log.contains(&format!("uid {nobody}\n")), "{log}");
    assert!(!log.contains("KEY-TEST-SECRET"), "the key leaked:\n{log}");
    assert!(
        !log.contains(started_with),
        "sluice's environment leaked:\n{log}"
    );
    assert_eq!(log.matches("Permission denied").count(), 2, "{log}");
}

/// With `executor.job_uids`, two jobs running at once run as two uids of
/// their own: neither can read or change the other's workspace (a test
/// could otherwise alter what another PR's test runs on), and a process a
/// job left running outside its process group is killed before its uid is
/// lent again. Needs root; elsewhere this test says so and checks nothing.
#[tokio::test]
async fn with_job_uids_jobs_running_at_once_cannot_reach_each_other() {
    setup();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running jobs as other uids needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Served over HTTP: git refuses a local repository another uid owns.
    let hub = sluice::fakehub::FakeHub::start(&tmp.path().join("hub"), None)
        .await
        .unwrap();
    let target = hub
        .create_repo("octo/demo", "main", &[("a.txt", "a\n")])
        .await
        .unwrap();
    let head = hub
        .commit(
            "octo/demo",
            "feature",
            Some("main"),
            &[("b.txt", "b\n")],
            "b",
        )
        .await
        .unwrap();
    let open = |path: &Path, mode| {
        std::fs::create_dir_all(path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(mode);
        std::fs::set_permissions(path, mode).unwrap();
    };
    open(tmp.path(), 0o755);
    let shared = tmp.path().join("shared");
    open(&shared, 0o1777);
    let ex = LocalExecutor::new(&ExecutorConfig {
        work_dir: tmp.path().join("work"),
        max_parallel: 2,
        git_timeout_secs: 60,
        job_uids: Some("200100-200101".into()),
        ..ExecutorConfig::default()
    });
    let spec = |build: &str, script: &str| JobSpec {
        build: BuildId::parse(build).unwrap(),
        candidate: Candidate {
            car: None,
            repo: RepoName::parse("octo/demo").unwrap(),
            target_branch: "main".into(),
            target_sha: target.clone(),
            prs: vec![CandidatePr {
                number: 7,
                head_sha: head.clone(),
                head_ref: "feature".into(),
            }],
        },
        clone_url: format!("{}/git/octo/demo.git", hub.api_url()),
        command: ["sh", "-c", script, "sh", shared.to_str().unwrap()]
            .map(String::from)
            .to_vec(),
        timeout: LONG,
        clone_token: None,
        mint_token: None,
    };
    // A keeps a file in its checkout and leaves a process behind in a
    // session of its own; B, once A is ready, tries A's workspace.
    let a = spec(
        "b-uid-a",
        "id -u > \"$1/uid-a\"; echo secret-of-a > mine.txt; \
         setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > \"$1/leftover\"; \
         touch \"$1/a-ready\"; \
         while [ ! -e \"$1/b-done\" ]; do sleep 0.05; done; \
         cat mine.txt; [ -e evil.txt ] && echo TAMPERED; exit 0",
    );
    let b = spec(
        "b-uid-b",
        "while [ ! -e \"$1/a-ready\" ]; do sleep 0.05; done; id -u > \"$1/uid-b\"; \
         mine=\"$(dirname \"$PWD\")\"; \
         for ws in \"$(dirname \"$mine\")\"/*; do \
           [ \"$ws\" = \"$mine\" ] && continue; echo \"trying $ws\"; \
           ls \"$ws\"; cat \"$ws/repo/mine.txt\"; echo evil > \"$ws/repo/evil.txt\"; \
         done; touch \"$1/b-done\"; exit 0",
    );
    let (tx, mut rx) = unbounded_channel();
    ex.start(a, tx.clone());
    ex.start(b, tx);
    let mut logs = std::collections::HashMap::new();
    for _ in 0..2 {
        let result = next(&mut rx).await.expect("a result");
        let log = String::from_utf8_lossy(&result.log).into_owned();
        assert_eq!(result.report.outcome, Outcome::Passed, "{log}");
        logs.insert(result.build.to_string(), log);
    }
    let (log_a, log_b) = (&logs["b-uid-a"], &logs["b-uid-b"]);
    assert!(log_a.contains("secret-of-a\n"), "{log_a}");
    // (The log's first lines quote the script: match whole output lines.)
    assert!(!log_a.contains("\nTAMPERED\n"), "{log_a}");
    assert!(
        log_b.contains("\ntrying /"),
        "B saw no other workspace:\n{log_b}"
    );
    assert!(!log_b.contains("secret-of-a"), "B read A's file:\n{log_b}");
    assert_eq!(log_b.matches("Permission denied").count(), 3, "{log_b}");
    let uid = |name: &str| -> u32 {
        let text = std::fs::read_to_string(shared.join(name)).unwrap();
        text.trim().parse().unwrap()
    };
    let (uid_a, uid_b) = (uid("uid-a"), uid("uid-b"));
    assert_ne!(uid_a, uid_b);
    assert!([200100, 200101].contains(&uid_a) && [200100, 200101].contains(&uid_b));
    // A's result came after its workspace was removed and its uid given
    // back: its leftover was killed first (at most a zombie now).
    let leftover = uid("leftover");
    let stat = std::fs::read_to_string(format!("/proc/{leftover}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "A's leftover {leftover} still runs: {stat}"
    );
}

/// After a restart with `executor.job_uids`, a process still running as
/// one of the range's uids (a killed sluice's job, or what it left behind)
/// is killed before any uid is lent to a new job. Needs root.
#[tokio::test]
async fn with_job_uids_a_restart_kills_what_runs_as_them() {
    setup();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running jobs as other uids needs root");
        return;
    }
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let tmp = tempfile::tempdir().unwrap();
    let spawn_as = |uid: u32| {
        Command::new("sleep")
            .arg("300")
            .uid(uid)
            .gid(uid)
            .spawn()
            .unwrap()
    };
    let (mut in_range, mut outside) = (spawn_as(200203), spawn_as(200299));
    let ex = LocalExecutor::new(&ExecutorConfig {
        work_dir: tmp.path().join("work"),
        max_parallel: 2,
        job_uids: Some("200202-200203".into()),
        ..ExecutorConfig::default()
    });
    let (tx, _rx) = unbounded_channel();
    assert!(ex.recover(Vec::new(), tx).await.is_empty());
    let mut ended = None;
    for _ in 0..200 {
        ended = in_range.try_wait().unwrap();
        if ended.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ended.and_then(|s| s.signal()), Some(9), "{ended:?}");
    assert!(
        outside.try_wait().unwrap().is_none(),
        "a uid outside the range was killed"
    );
    outside.kill().unwrap();
    outside.wait().unwrap();
}

/// A clone token is minted when the job gets a runner, not when it is
/// queued: an installation token lives an hour, and a queued job may wait
/// longer. Here B waits behind A (one runner); its token is asked for only
/// once A has ended, and its fetch uses it.
#[tokio::test]
async fn a_queued_job_mints_its_clone_token_when_it_gets_a_runner() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let fx = fixture(false, "feature");
    let ex = fx.executor(1);
    let started = fx.path("a-started");
    let release = fx.path("a-release");
    let script = format!("echo > {started}; while [ ! -e {release} ]; do sleep 0.1; done");
    let (tx, mut rx) = unbounded_channel();
    ex.start(fx.spec("a-1", &["sh", "-c", &script], LONG), tx.clone());
    wait_for_file(&started).await;

    let minted = Arc::new(AtomicUsize::new(0));
    let mut b = fx.spec("b-1", &["true"], LONG);
    let count = minted.clone();
    b.mint_token = Some(TokenMint(Arc::new(move || {
        count.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Some(CloneToken::new("ghs_fresh".into())) })
    })));
    ex.start(b, tx);
    // B is queued behind A: give a wrong executor time to mint early.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(minted.load(Ordering::SeqCst), 0, "minted while queued");

    std::fs::write(&release, "").unwrap();
    let a = next(&mut rx).await.expect("A's result");
    assert_eq!(a.build.to_string(), "a-1");
    let b = next(&mut rx).await.expect("B's result");
    assert_eq!(b.report.outcome, Outcome::Passed, "{b:?}");
    assert_eq!(minted.load(Ordering::SeqCst), 1, "minted once, when it ran");
    let log = String::from_utf8_lossy(&b.log);
    assert!(log.contains("with a read-only token"), "{log}");
    assert!(
        !log.contains("ghs_fresh"),
        "the token is never logged: {log}"
    );
}
