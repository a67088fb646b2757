//! The configuration loader and `sluice check-config`: defaults, every
//! validation error naming its key, the real binary's exit codes, secrets
//! from the environment, and arbitrary text never panicking the parser.

use proptest::prelude::*;
use sluice::config::{
    AppKeySource, Config, ConfigError, ENV_WEBHOOK_SECRET, ExecutorKind, GithubAppConfig,
    LogFormat, ResultsKind,
};
use sluice::core::{MergeMethod, PrTests};
use sluice::fakehub::AppKeys;
use sluice::forge::github::app::AppKey;
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
    // A train by default: only a train lands exactly the tested commit.
    assert_eq!(parse(MINIMAL).unwrap().repos[0].policy().train_depth, 4);
    let serial = parse(&format!("{MINIMAL}train_depth = 0\n")).unwrap();
    assert_eq!(serial.repos[0].policy().train_depth, 0);
    error_naming(
        &format!("{MINIMAL}train_depth = 0\npr_tests = \"train_only\"\n"),
        "pr_tests",
    );
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
    assert_eq!(
        invalid_key(&format!(
            "[executor]\nrun_as = \"no-such-user-here\"\n{MINIMAL}"
        )),
        "executor.run_as"
    );
    // Per-job uids: a range, enough for max_parallel (default 4), held by
    // no user, and not together with run_as.
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a user nobody")
        .uid;
    let held = format!("{}-{}", nobody.as_raw().saturating_sub(4), nobody);
    for (range, says) in [
        ("10-5", "not a range of uids"),
        ("0-9", "not a range of uids"),
        ("200000-200001", "2 uids for max_parallel = 4"),
        (held.as_str(), "belongs to user"),
    ] {
        let text = format!("[executor]\njob_uids = \"{range}\"\n{MINIMAL}");
        let message = error_naming(&text, "executor.job_uids");
        assert!(message.contains(says), "{range}: {message}");
    }
    let both = format!("[executor]\nrun_as = \"nobody\"\njob_uids = \"200000-200063\"\n{MINIMAL}");
    let message = error_naming(&both, "executor.job_uids");
    assert!(message.contains("not both"), "{message}");
    // Timeouts past a week would overflow a deadline.
    assert_eq!(
        invalid_key(&format!(
            "{MINIMAL}job_timeout_secs = 9223372036854775807\n"
        )),
        "repos[0].job_timeout_secs"
    );
    assert_eq!(
        invalid_key(&format!("[executor]\ngit_timeout_secs = 604801\n{MINIMAL}")),
        "executor.git_timeout_secs"
    );
    // work_dir is emptied at every start: it may not hold the state or
    // the results.
    for (work, state, what) in [
        (".", "sluice-state", "state.dir"),
        ("/var/lib/sluice", "/var/lib/sluice/state", "state.dir"),
        ("/var/lib/sluice/x/..", "/var/lib/sluice/state", "state.dir"),
        ("/srv/s", "/srv/state", "results.dir"),
    ] {
        let text = format!(
            "[executor]\nwork_dir = \"{work}\"\n[state]\ndir = \"{state}\"\n[results]\ndir = \"/srv/s/results\"\n{MINIMAL}"
        );
        let message = error_naming(&text, "executor.work_dir");
        assert!(message.contains(what), "{work}: {message}");
    }
    assert!(
        parse(&format!(
            "[executor]\nwork_dir = \"/srv/work\"\n[state]\ndir = \"/srv/state\"\n{MINIMAL}"
        ))
        .is_ok(),
        "work_dir beside the state is fine"
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

// ---- the GitHub App's settings and key ----

fn app_toml(app: &str) -> String {
    format!("[github.app]\n{app}\n{MINIMAL}")
}

#[test]
fn github_app_is_off_by_default_and_takes_a_key_file_or_a_key_variable() {
    assert!(parse(MINIMAL).unwrap().github.app.is_none());
    let c = parse(&app_toml(
        "app_id = 42\nprivate_key_path = \"/etc/sluice/app.pem\"",
    ))
    .expect("a key file");
    let app = c.github.app.expect("[github.app]");
    assert_eq!(app.app_id, 42);
    assert_eq!(
        app.key_source(),
        AppKeySource::File("/etc/sluice/app.pem".into())
    );
    assert_eq!(app.key_setting(), "github.app.private_key_path");
    let c = parse(&app_toml(
        "app_id = 42\nprivate_key_env = \"SLUICE_GITHUB_APP_KEY\"",
    ))
    .expect("a key variable");
    let app = c.github.app.unwrap();
    assert_eq!(
        app.key_source(),
        AppKeySource::Env("SLUICE_GITHUB_APP_KEY".into())
    );
    assert_eq!(app.key_setting(), "github.app.private_key_env");
}

#[test]
fn github_app_settings_are_validated() {
    for (app, key) in [
        (
            "app_id = 0\nprivate_key_path = \"k.pem\"",
            "github.app.app_id",
        ),
        ("app_id = 1", "github.app"),
        (
            "app_id = 1\nprivate_key_path = \"k.pem\"\nprivate_key_env = \"K\"",
            "github.app",
        ),
        (
            "app_id = 1\nprivate_key_path = \"\"",
            "github.app.private_key_path",
        ),
        (
            "app_id = 1\nprivate_key_env = \"1KEY\"",
            "github.app.private_key_env",
        ),
        (
            "app_id = 1\nprivate_key_env = \"A-KEY\"",
            "github.app.private_key_env",
        ),
        (
            "app_id = 1\nprivate_key_env = \"$(id)\"",
            "github.app.private_key_env",
        ),
        // A key inline, even one that is not PEM-shaped, is refused by name.
        (
            "app_id = 1\nprivate_key = \"MIIEpAIBAAKCAQEA\"",
            "github.app.private_key",
        ),
    ] {
        assert_eq!(invalid_key(&app_toml(app)), key, "{app}");
    }
    let message = error_naming(&app_toml("app_id = 1"), "github.app");
    assert!(message.contains("private_key_path"), "{message}");
    assert!(message.contains("private_key_env"), "{message}");
    let message = error_naming(
        &app_toml("app_id = 1\nprivate_key = \"MIIEpAIBAAKCAQEA\""),
        "github.app.private_key",
    );
    assert!(!message.contains("MIIE"), "the key is quoted: {message}");
    assert!(message.contains("private_key_path"), "{message}");
    // Unknown keys and wrong types are named as everywhere else.
    error_naming(&app_toml("app_id = 1\nkey_path = \"k.pem\""), "key_path");
    error_naming(
        &app_toml("app_id = \"one\"\nprivate_key_env = \"K\""),
        "app_id",
    );
}

#[test]
fn a_pem_in_the_toml_is_refused_without_being_quoted() {
    const BODY: &str = "MIIEowIBAAKCAQEAsecretsecretsecret";
    let pem = format!("-----BEGIN RSA PRIVATE KEY-----\n{BODY}\n-----END RSA PRIVATE KEY-----");
    for text in [
        // Where it would seem to belong.
        app_toml(&format!("app_id = 1\nprivate_key = \"\"\"\n{pem}\n\"\"\"")),
        // Pasted into the path setting, on one line.
        app_toml(&format!(
            "app_id = 1\nprivate_key_path = \"{}\"",
            pem.replace('\n', "\\n")
        )),
        // Anywhere, in a file TOML cannot even parse (its error would
        // quote the line).
        format!("{MINIMAL}\nwhatever = [[ {pem}"),
        // PKCS#8.
        app_toml("app_id = 1\nprivate_key = \"-----BEGIN PRIVATE KEY-----MIIE\""),
    ] {
        let err = parse(&text).expect_err("a PEM in the configuration");
        let message = err.to_string();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "github.app"),
            "{err:?}"
        );
        assert!(message.contains("line "), "{message}");
        assert!(message.contains("private_key_path"), "{message}");
        assert!(
            !message.contains(BODY) && !message.contains("MIIE"),
            "{message}"
        );
    }
}

/// A key file under `dir` holding `text`, and the `[github.app]` naming it.
fn key_file(dir: &Path, name: &str, text: &[u8]) -> GithubAppConfig {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    GithubAppConfig::with_key_file(42, path)
}

#[test]
fn the_app_key_is_read_and_checked_with_errors_naming_the_file_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = AppKeys::unregistered(42).unwrap();
    let app = key_file(dir.path(), "good.pem", good.private_key_pem.as_bytes());
    let key = AppKey::load(&app).expect("a GitHub-style PKCS#1 key loads");
    assert_eq!(key.app_id(), 42);
    assert!(!format!("{key:?}").contains("MII"), "{key:?}");

    let body = good.private_key_pem.lines().nth(1).unwrap().to_string();
    let cut: String = good
        .private_key_pem
        .lines()
        .take(4)
        .collect::<Vec<_>>()
        .join("\n");
    let missing = GithubAppConfig::with_key_file(42, dir.path().join("nowhere.pem"));
    let cases: Vec<(GithubAppConfig, &str)> = vec![
        (missing, "cannot be read"),
        // A directory: readable by no one as a file (also as root).
        (
            GithubAppConfig::with_key_file(42, dir.path().to_path_buf()),
            "cannot be read",
        ),
        (key_file(dir.path(), "binary.pem", &[0xff, 0xfe, 0x00]), "not text"),
        (key_file(dir.path(), "empty.pem", b""), "not a PEM private key"),
        (
            key_file(dir.path(), "id.txt", b"Iv1.0123456789abcdef\n"),
            "not a PEM private key",
        ),
        (
            key_file(
                dir.path(),
                "public.pem",
                b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----\n",
            ),
            "public key",
        ),
        (
            key_file(
                dir.path(),
                "cert.pem",
                b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            ),
            "not an RSA private key",
        ),
        (
            key_file(
                dir.path(),
                "encrypted.pem",
                b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            ),
            "encrypted",
        ),
        // The right label, a body that is not a key: cut short, or garbage.
        (key_file(dir.path(), "cut.pem", cut.as_bytes()), "RSA private key"),
        (
            key_file(
                dir.path(),
                "garbage.pem",
                format!("-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n", "QUJD".repeat(40)).as_bytes(),
            ),
            "RSA private key",
        ),
    ];
    for (app, why) in cases {
        let path = match app.key_source() {
            AppKeySource::File(p) => p,
            other => panic!("{other:?}"),
        };
        let err = AppKey::load(&app).expect_err(&format!("{}", path.display()));
        let message = err.to_string();
        assert!(matches!(err, ConfigError::AppKey { .. }), "{err:?}");
        assert!(message.contains("github.app.private_key_path"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(why), "{why:?} missing: {message}");
        assert!(!message.contains(&body), "the key is quoted: {message}");
        assert!(
            !message.contains("QUJDQUJD"),
            "the key is quoted: {message}"
        );
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

#[test]
fn check_config_checks_the_app_key_from_a_file_or_a_variable() {
    let dir = tempfile::tempdir().unwrap();
    let key = AppKeys::unregistered(42).unwrap();
    let body = key.private_key_pem.lines().nth(1).unwrap().to_string();
    let pem = dir.path().join("app.pem");
    std::fs::write(&pem, &key.private_key_pem).unwrap();
    let write = |name: &str, app: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("[github.app]\napp_id = 42\n{app}\n{MINIMAL}"),
        )
        .unwrap();
        path
    };
    let by_file = write(
        "file.toml",
        &format!("private_key_path = {:?}", pem.display().to_string()),
    );
    let by_env = write("env.toml", "private_key_env = \"SLUICE_GITHUB_APP_KEY\"");

    // Good: ok, saying where the key is; with GITHUB_TOKEN set, that the
    // App wins.
    let out = sluice(
        &["check-config", "--config", by_file.to_str().unwrap()],
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("GitHub App 42"), "{stdout}");
    assert!(stdout.contains("app.pem"), "{stdout}");
    assert!(!stdout.contains("GITHUB_TOKEN"), "{stdout}");
    let out = sluice(
        &["check-config", "--config", by_env.to_str().unwrap()],
        &[
            ("SLUICE_GITHUB_APP_KEY", key.private_key_pem.as_str()),
            ("GITHUB_TOKEN", "ghp_x"),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("environment variable SLUICE_GITHUB_APP_KEY"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GITHUB_TOKEN is set but not used"),
        "{stdout}"
    );
    assert!(!stdout.contains(&body), "{stdout}");

    // Missing, unreadable, malformed: exit code 2, the setting, the file or
    // variable, what is wrong; never the key.
    std::fs::write(
        dir.path().join("bad.pem"),
        format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\n"),
    )
    .unwrap();
    /// A configuration, the environment, what stderr must say.
    type Case<'a> = (PathBuf, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            write(
                "missing.toml",
                "private_key_path = \"/nonexistent/app.pem\"",
            ),
            vec![],
            vec![
                "github.app.private_key_path",
                "/nonexistent/app.pem",
                "cannot be read",
            ],
        ),
        (
            write(
                "dir.toml",
                &format!("private_key_path = {:?}", dir.path().display().to_string()),
            ),
            vec![],
            vec!["github.app.private_key_path", "cannot be read"],
        ),
        (
            write(
                "bad.toml",
                &format!(
                    "private_key_path = {:?}",
                    dir.path().join("bad.pem").display().to_string()
                ),
            ),
            vec![],
            vec!["github.app.private_key_path", "bad.pem", "RSA private key"],
        ),
        (
            by_env.clone(),
            vec![],
            vec![
                "github.app.private_key_env",
                "SLUICE_GITHUB_APP_KEY",
                "is not set",
            ],
        ),
        (
            by_env.clone(),
            vec![("SLUICE_GITHUB_APP_KEY", body.as_str())],
            vec![
                "github.app.private_key_env",
                "SLUICE_GITHUB_APP_KEY",
                "not a PEM private key",
            ],
        ),
    ];
    for (config, env, needles) in cases {
        let out = sluice(
            &["check-config", "--config", config.to_str().unwrap()],
            &env,
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", config.display());
        assert!(stderr.starts_with("error:"), "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
        }
        assert!(!stderr.contains(&body), "the key is quoted: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!text(&out.stdout).contains("ok"), "{}", text(&out.stdout));
    }

    // `serve` refuses the same, as a configuration error, before the
    // secrets.
    let missing = dir.path().join("missing.toml");
    let out = sluice(&["serve", "--config", missing.to_str().unwrap()], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("github.app.private_key_path"), "{stderr}");
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

#[test]
fn check_runs_need_an_app_and_land_on_reads_its_two_words() {
    let checks = format!("[github]\ncheck_runs = true\n{MINIMAL}");
    assert_eq!(invalid_key(&checks), "github.check_runs");
    let message = error_naming(&checks, "github.check_runs");
    assert!(message.contains("only Apps write check runs"), "{message}");
    let command = parse(&format!(
        "{MINIMAL}land_on = \"command\"\nauthor_may_retest = false\n"
    ))
    .unwrap();
    assert_eq!(command.repos[0].land_on, sluice::core::LandOn::Command);
    assert!(!command.repos[0].author_may_retest);
    let default = parse(MINIMAL).unwrap();
    assert_eq!(default.repos[0].land_on, sluice::core::LandOn::Approval);
    assert!(default.repos[0].author_may_retest);
    error_naming(&format!("{MINIMAL}land_on = \"comment\"\n"), "land_on");
}
