//! The configuration loader and `sluice check-config`: defaults, every
//! validation error naming its key, the real binary's exit codes, secrets
//! from the environment, and arbitrary text never panicking the parser.

use proptest::prelude::*;
use sluice::config::{
    Config, ConfigError, ENV_WEBHOOK_SECRET, ExecutorKind, LogFormat, ResultsKind,
};
use sluice::core::{MergeMethod, PrTests};
use sluice::runtime::store::Fsync;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MINIMAL: &str = r#"
[[repos]]
name = "octo/demo"
test_command = ["make", "test"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("sluice.toml"))
}

/// Parses `text`, expects a validation or parse error, and returns its
/// message after checking it names `key`.
fn error_naming(text: &str, key: &str) -> String {
    let err = match parse(text) {
        Ok(c) => panic!("expected an error naming {key}, got {c:?}"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(
        message.contains(key),
        "error should name {key:?}: {message}"
    );
    assert!(
        message.contains("sluice.toml"),
        "error should name the file: {message}"
    );
    message
}

/// The `key` of a validation error (not a TOML parse error).
fn invalid_key(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn minimal_config_loads_with_defaults() {
    let c = parse(MINIMAL).expect("minimal config is valid");
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.server.public_url, "http://127.0.0.1:8080");
    assert_eq!(c.server.log_format, LogFormat::Human);
    assert_eq!(c.github.api_url, "https://api.github.com");
    assert_eq!(c.github.clone_base, "https://github.com");
    assert_eq!(c.github.status_context, "sluice");
    assert_eq!(c.github.request_timeout_secs, 30);
    assert_eq!(c.github.max_retries, 4);
    assert_eq!(c.reconcile.interval_secs, 300);
    assert_eq!(c.executor.kind, ExecutorKind::Local);
    assert_eq!(c.executor.max_parallel, 4);
    assert_eq!(c.executor.git_timeout_secs, 300);
    assert_eq!(c.executor.work_dir, PathBuf::from("sluice-work"));
    assert_eq!(c.results.kind, ResultsKind::Local);
    assert_eq!(c.results.dir, PathBuf::from("sluice-results"));
    assert_eq!(c.state.fsync, Fsync::Always, "a 202 survives a power loss");

    assert_eq!(c.repos.len(), 1);
    let r = &c.repos[0];
    assert_eq!(r.name, "octo/demo");
    assert_eq!(r.test_command, ["make", "test"]);
    assert_eq!(r.required_approvals, 1);
    assert_eq!(r.max_concurrent_builds, 2);
    assert_eq!(r.merge_method, MergeMethod::Merge);
    assert!(r.priority_labels.is_empty());
    assert_eq!(r.job_timeout_secs, 1800);
    assert_eq!(r.max_infra_retries, 2);
    assert_eq!(r.clone_url, None);
    assert_eq!(r.repo().as_str(), "octo/demo");
    assert_eq!(c.clone_url(r), "https://github.com/octo/demo.git");
    assert!(c.repo(&r.repo()).is_some());
}

#[test]
fn full_config_overrides_every_default() {
    let c = parse(
        r#"
[server]
listen = "0.0.0.0:9000"
public_url = "https://sluice.example.com"
log_format = "json"

[github]
api_url = "https://ghe.example.com/api/v3"
clone_base = "https://ghe.example.com/"
request_timeout_secs = 5
max_retries = 0
status_context = "ci/sluice"

[reconcile]
interval_secs = 0

[executor]
kind = "local"
work_dir = "/var/lib/sluice/work"
max_parallel = 8
git_timeout_secs = 60

[results]
kind = "local"
dir = "/var/lib/sluice/results"

[[repos]]
name = "octo/demo"
clone_url = "https://mirror.example.com/demo.git"
test_command = ["cargo", "test"]
required_approvals = 2
max_concurrent_builds = 3
merge_method = "squash"
priority_labels = ["urgent", "priority"]
job_timeout_secs = 60
max_infra_retries = 0

[[repos]]
name = "octo/other"
test_command = ["make"]
"#,
    )
    .expect("full config is valid");
    assert_eq!(c.server.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(c.server.log_format, LogFormat::Json);
    assert_eq!(c.github.status_context, "ci/sluice");
    assert_eq!(c.github.max_retries, 0);
    assert_eq!(c.reconcile.interval_secs, 0);
    assert_eq!(c.executor.max_parallel, 8);
    let r = &c.repos[0];
    assert_eq!(r.required_approvals, 2);
    assert_eq!(r.merge_method, MergeMethod::Squash);
    assert_eq!(r.priority_labels, ["urgent", "priority"]);
    assert_eq!(c.clone_url(r), "https://mirror.example.com/demo.git");
    // A trailing slash on clone_base does not double up.
    assert_eq!(
        c.clone_url(&c.repos[1]),
        "https://ghe.example.com/octo/other.git"
    );
    let policy = r.policy();
    assert_eq!(policy.required_approvals, 2);
    assert_eq!(policy.max_concurrent_builds, 3);
    assert_eq!(policy.max_infra_retries, 0);
}

#[test]
fn unknown_keys_are_named() {
    let message = error_naming(
        &format!("[github]\napi_ur = \"https://api.github.com\"\n{MINIMAL}"),
        "api_ur",
    );
    assert!(message.contains("unknown field"), "{message}");
    error_naming(&format!("colour = \"blue\"\n{MINIMAL}"), "colour");
    error_naming(
        &format!("[serverr]\nlisten = \"0.0.0.0:1\"\n{MINIMAL}"),
        "serverr",
    );
    error_naming(&format!("{MINIMAL}test_comand = [\"x\"]\n"), "test_comand");
}

#[test]
fn wrong_types_are_named() {
    error_naming(
        &format!("[github]\nrequest_timeout_secs = \"ten\"\n{MINIMAL}"),
        "request_timeout_secs",
    );
    error_naming(
        &format!("[server]\nlisten = \"not an address\"\n{MINIMAL}"),
        "listen",
    );
    error_naming(
        &format!("[server]\nlog_format = \"xml\"\n{MINIMAL}"),
        "log_format",
    );
    error_naming(
        "[[repos]]\nname = \"octo/demo\"\ntest_command = \"make test\"\n",
        "test_command",
    );
    error_naming(
        &format!("{MINIMAL}max_concurrent_builds = -1\n"),
        "max_concurrent_builds",
    );
    error_naming(
        &format!("{MINIMAL}merge_method = \"octopus\"\n"),
        "merge_method",
    );
    error_naming(
        &format!("[state]\nfsync = \"sometimes\"\n{MINIMAL}"),
        "fsync",
    );
    let c = parse(&format!("[state]\nfsync = \"never\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.state.fsync, Fsync::Never);
    error_naming(&format!("{MINIMAL}train_depth = 33\n"), "train_depth");
    // Trains take every method: squashed and rebased PRs are closed by
    // sluice once they land.
    for method in ["merge", "squash", "rebase"] {
        let c = parse(&format!(
            "{MINIMAL}train_depth = 4\nmerge_method = \"{method}\"\n"
        ))
        .unwrap();
        assert_eq!(c.repos[0].policy().merge_method.as_str(), method);
        assert_eq!(c.repos[0].policy().train_depth, 4);
    }
    let c = parse(&format!(
        "{MINIMAL}train_depth = 4\npr_tests = \"train_only\"\n"
    ))
    .unwrap();
    assert_eq!(c.repos[0].policy().train_depth, 4);
    assert_eq!(c.repos[0].policy().pr_tests, PrTests::TrainOnly);
    let c = parse(&format!("{MINIMAL}pr_tests = \"after_approval\"\n")).unwrap();
    assert_eq!(c.repos[0].policy().pr_tests, PrTests::AfterApproval);
    assert_eq!(
        parse(MINIMAL).unwrap().repos[0].policy().pr_tests,
        PrTests::BeforeApproval
    );
    error_naming(&format!("{MINIMAL}pr_tests = \"train_only\"\n"), "pr_tests");
    error_naming(&format!("{MINIMAL}pr_tests = \"sometimes\"\n"), "pr_tests");
    // `repos` must be an array of tables.
    error_naming("repos = \"octo/demo\"\n", "repos");
}

#[test]
fn invalid_values_name_their_key() {
    let two = |second: &str| format!("{MINIMAL}\n[[repos]]\n{second}\n");

    assert_eq!(
        invalid_key("[[repos]]\nname = \"octo/demo\"\ntest_command = []\n"),
        "repos[0].test_command"
    );
    assert_eq!(
        invalid_key("[[repos]]\nname = \"octo/demo\"\ntest_command = [\"  \"]\n"),
        "repos[0].test_command"
    );
    assert_eq!(
        invalid_key(&two("name = \"../x\"\ntest_command = [\"make\"]")),
        "repos[1].name"
    );
    assert_eq!(
        invalid_key(&two("name = \"no-slash\"\ntest_command = [\"make\"]")),
        "repos[1].name"
    );
    assert_eq!(
        invalid_key(&two("name = \"octo/$(evil)\"\ntest_command = [\"make\"]")),
        "repos[1].name"
    );
    let dup = error_naming(
        &two("name = \"octo/demo\"\ntest_command = [\"make\"]"),
        "repos[1].name",
    );
    assert!(dup.contains("twice"), "{dup}");
    // GitHub names are case-insensitive: a differently cased duplicate is one too.
    assert_eq!(
        invalid_key(&two("name = \"Octo/Demo\"\ntest_command = [\"make\"]")),
        "repos[1].name"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}max_concurrent_builds = 0\n")),
        "repos[0].max_concurrent_builds"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}job_timeout_secs = 0\n")),
        "repos[0].job_timeout_secs"
    );
    for bad in ["ftp://api.github.com", "api.github.com", "", "file:///etc"] {
        assert_eq!(
            invalid_key(&format!("[github]\napi_url = \"{bad}\"\n{MINIMAL}")),
            "github.api_url",
            "api_url = {bad:?}"
        );
    }
    assert_eq!(
        invalid_key(&format!(
            "[server]\npublic_url = \"sluice.local\"\n{MINIMAL}"
        )),
        "server.public_url"
    );
    assert_eq!(
        invalid_key(&format!("[github]\nrequest_timeout_secs = 0\n{MINIMAL}")),
        "github.request_timeout_secs"
    );
    assert_eq!(
        invalid_key(&format!("[github]\nstatus_context = \" \"\n{MINIMAL}")),
        "github.status_context"
    );
    assert_eq!(
        invalid_key(&format!("[executor]\nmax_parallel = 0\n{MINIMAL}")),
        "executor.max_parallel"
    );
    assert_eq!(
        invalid_key(&format!("[executor]\ngit_timeout_secs = 0\n{MINIMAL}")),
        "executor.git_timeout_secs"
    );
    assert_eq!(invalid_key(""), "repos");
    assert_eq!(invalid_key("repos = []\n"), "repos");
    let message = error_naming("[server]\n", "repos");
    assert!(message.contains("[[repos]]"), "{message}");
}

#[test]
fn load_reads_files_and_reports_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, MINIMAL).unwrap();
    assert_eq!(Config::load(&good).expect("loads").repos.len(), 1);

    let missing = dir.path().join("missing.toml");
    match Config::load(&missing) {
        Err(e @ ConfigError::Read { .. }) => {
            let message = e.to_string();
            assert!(message.contains("missing.toml"), "{message}");
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

// ---- the real binary ----

fn sluice(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run sluice")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, MINIMAL).unwrap();
    let out = sluice(&["check-config", "--config", good.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok"), "stdout: {stdout}");
    assert!(stdout.contains("good.toml"), "stdout: {stdout}");
}

#[test]
fn check_config_rejects_a_bad_file_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body, key) in [
        (
            "unknown.toml",
            format!("[github]\napi_ur = \"x\"\n{MINIMAL}"),
            "api_ur",
        ),
        (
            "zero.toml",
            format!("{MINIMAL}max_concurrent_builds = 0\n"),
            "repos[0].max_concurrent_builds",
        ),
        ("empty.toml", String::new(), "repos"),
        ("garbage.toml", "[[[ not toml".to_string(), "garbage.toml"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = sluice(&["check-config", "--config", path.to_str().unwrap()], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: stderr: {stderr}");
        assert!(
            stderr.contains(key),
            "{name}: stderr should name {key}: {stderr}"
        );
        assert!(stderr.starts_with("error:"), "{name}: {stderr}");
        assert!(
            !text(&out.stdout).contains("ok"),
            "{name}: stdout: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn check_config_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml");
    let out = sluice(
        &["check-config", "--config", missing.to_str().unwrap()],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("nowhere.toml"), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
    // The OS reason, not a panic or a backtrace.
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_config_without_config_is_a_usage_error() {
    let out = sluice(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--config"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_requires_the_webhook_secret() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    // Port 0 so that, were the check missing, nothing fixed would be bound.
    std::fs::write(
        &good,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{MINIMAL}"),
    )
    .unwrap();
    for env in [&[][..], &[(ENV_WEBHOOK_SECRET, "")][..]] {
        let out = sluice(&["serve", "--config", good.to_str().unwrap()], env);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "env {env:?}: stderr: {stderr}");
        assert!(
            stderr.contains("SLUICE_WEBHOOK_SECRET"),
            "env {env:?}: {stderr}"
        );
    }
}

#[test]
fn serve_checks_the_config_before_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[repos]]\nname = \"x\"\ntest_command = [\"make\"]\n").unwrap();
    let out = sluice(
        &["serve", "--config", bad.to_str().unwrap()],
        &[(ENV_WEBHOOK_SECRET, "s3cret")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("repos[0].name"), "{stderr}");
}

// ---- arbitrary input ----

/// Lines that look like sluice configuration, so that generated files reach
/// validation and not only the TOML parser.
fn config_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("name"),
        Just("test_command"),
        Just("listen"),
        Just("api_url"),
        Just("public_url"),
        Just("max_concurrent_builds"),
        Just("required_approvals"),
        Just("merge_method"),
        Just("status_context"),
        Just("max_parallel"),
        Just("kind"),
        Just("dir"),
    ];
    let value = prop_oneof![
        "\"[ -~]{0,20}\"".prop_map(|s| s.replace('\\', "/")),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("[]".to_string()),
        Just("[\"make\"]".to_string()),
        Just("\"octo/demo\"".to_string()),
        Just("true".to_string()),
        Just("1.5".to_string()),
    ];
    prop_oneof![
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        Just("[[repos]]".to_string()),
        Just("[server]".to_string()),
        Just("[github]".to_string()),
        Just("[executor]".to_string()),
        Just("[results]".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = parse(&text);
    }

    #[test]
    fn config_like_text_never_panics_and_valid_means_usable(
        lines in proptest::collection::vec(config_line(), 0..16)
    ) {
        let text = lines.join("\n");
        if let Ok(config) = parse(&text) {
            // What validation lets through is safe to use.
            prop_assert!(!config.repos.is_empty());
            for repo in &config.repos {
                let name = repo.repo();
                prop_assert!(config.repo(&name).is_some());
                prop_assert!(!repo.test_command.is_empty());
                prop_assert!(repo.max_concurrent_builds > 0);
                let _ = config.clone_url(repo);
            }
        }
    }
}
