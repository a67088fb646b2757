//! sluice's configuration: one TOML file, secrets from the environment.
//! Everything is validated at load, and every error names the key at fault.

use crate::core::planner::BatchSize;
use crate::core::{LandOn, MergeMethod, PrTests, RepoName, RepoPolicy};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable names for the secrets.
pub const ENV_GITHUB_TOKEN: &str = "GITHUB_TOKEN";
pub const ENV_WEBHOOK_SECRET: &str = "SLUICE_WEBHOOK_SECRET";
pub const ENV_API_TOKEN: &str = "SLUICE_API_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("environment variable {name} is not set ({why})")]
    MissingSecret {
        name: &'static str,
        why: &'static str,
    },
    /// The GitHub App's private key is missing, unreadable or malformed.
    /// The message never quotes the key.
    #[error("{setting}: the GitHub App's private key ({from}) {message}")]
    AppKey {
        setting: &'static str,
        from: AppKeySource,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub github: GithubConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub results: ResultsConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub repos: Vec<RepoConfig>,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub events: EventsConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// How many history entries are kept (in memory, and in
    /// `history.jsonl`, which is cut to this at start); 0: all of them.
    pub retain: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Where every event of `GET /events` is also POSTed.
    pub webhooks: Vec<EventWebhookConfig>,
}

/// An outgoing webhook: each event POSTed as JSON, signed like GitHub's
/// (`X-Sluice-Signature-256: sha256=<HMAC-SHA256 of the body>`), in order,
/// retried with backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventWebhookConfig {
    pub url: String,
    /// The environment variable holding the signing secret...
    #[serde(default)]
    pub secret_env: Option<String>,
    /// ... or a file holding it.
    #[serde(default)]
    pub secret_path: Option<PathBuf>,
    /// Only these kinds (`merged`, `ejected`, `status`, ...); empty: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Tries per event before it is given up (logged and counted).
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// The first retry waits this long; each next one twice as long (at
    /// most a minute).
    #[serde(default = "default_webhook_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_webhook_timeout")]
    pub timeout_secs: u64,
}

fn default_webhook_attempts() -> u32 {
    5
}
fn default_webhook_backoff_ms() -> u64 {
    1000
}
fn default_webhook_timeout() -> u64 {
    10
}

impl EventWebhookConfig {
    /// The signing secret, from the environment or the file.
    pub fn secret(&self) -> Result<String, String> {
        match (&self.secret_env, &self.secret_path) {
            (Some(name), None) => std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("environment variable {name} is not set")),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|s| {
                    if s.is_empty() {
                        Err(format!("{} is empty", path.display()))
                    } else {
                        Ok(s)
                    }
                }),
            _ => Err("set one of secret_env or secret_path".into()),
        }
    }
}

/// Every timeout and interval in seconds: at least one, at most a week
/// (larger values would overflow a deadline).
const IN_DURATION_RANGE: std::ops::RangeInclusive<u64> = 1..=604_800;
const DURATION_RANGE: &str = "must be 1 to 604800 seconds (7 days)";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Where the journal, snapshots and history live (survive restarts).
    pub dir: PathBuf,
    /// `always`: the journal is fdatasynced before a webhook is answered 202
    /// (survives a power loss); `never`: written to the kernel first
    /// (survives a kill of the process, not a power loss).
    pub fsync: crate::runtime::store::Fsync,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("sluice-state"),
            fsync: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Base URL people reach sluice at; result links start with it.
    pub public_url: String,
    /// `human` or `json`.
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            public_url: "http://127.0.0.1:8080".into(),
            log_format: LogFormat::Human,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// REST API base (GitHub Enterprise: `https://HOST/api/v3`).
    pub api_url: String,
    /// Where repositories are cloned from: `{clone_base}/{owner}/{name}.git`,
    /// unless a repository sets its own `clone_url`.
    pub clone_base: String,
    /// Timeout of each API call, in seconds.
    pub request_timeout_secs: u64,
    /// Retries of a call that failed with 5xx, a timeout or a rate limit.
    pub max_retries: u32,
    /// The commit status context sluice writes (and its check run's name).
    pub status_context: String,
    /// Write a check run per commit instead of a commit status (needs
    /// `[github.app]`: only Apps may write check runs).
    pub check_runs: bool,
    /// `[github.app]`: run as a GitHub App (installation tokens) instead of
    /// with a personal token. With both, the App is used.
    pub app: Option<GithubAppConfig>,
}

/// `[github.app]`: the App's id and where its private key is. The key
/// itself is never in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubAppConfig {
    /// The App's id (its settings page: "App ID").
    pub app_id: u64,
    /// A PEM file holding the App's private key, as GitHub's "Generate a
    /// private key" downloads it.
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// The name of an environment variable holding the PEM.
    #[serde(default)]
    pub private_key_env: Option<String>,
    /// Jobs fetch with a token of the installation scoped to the one
    /// repository and `contents: read`, minted per job (so private
    /// repositories can be cloned). The test process never sees it.
    #[serde(default = "default_clone_with_token")]
    pub clone_with_token: bool,
    /// Only so that a key pasted here is refused with a clear message.
    #[serde(default)]
    private_key: Option<toml::Value>,
}

fn default_clone_with_token() -> bool {
    true
}

/// Where an App's private key is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppKeySource {
    File(PathBuf),
    Env(String),
}

impl std::fmt::Display for AppKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppKeySource::File(path) => write!(f, "file {}", path.display()),
            AppKeySource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// An App's private key as read: PEM text. Neither `Debug` nor any error
/// shows it.
#[derive(Clone)]
pub struct AppKeyPem(String);

impl AppKeyPem {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for AppKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKeyPem(..)")
    }
}

/// The PEM label GitHub's App keys carry (PKCS#1), and the PKCS#8 one.
const PEM_RSA_LABEL: &str = "-----BEGIN RSA PRIVATE KEY-----";
const PEM_PKCS8_LABEL: &str = "-----BEGIN PRIVATE KEY-----";

impl GithubAppConfig {
    fn validate(&self, bad: &dyn Fn(String, &str) -> ConfigError) -> Result<(), ConfigError> {
        let key = |k: &str| format!("github.app.{k}");
        if self.private_key.is_some() {
            return Err(bad(
                key("private_key"),
                "the private key never goes in the configuration file: put it in a file \
                 (private_key_path) or an environment variable (private_key_env)",
            ));
        }
        if self.app_id == 0 {
            return Err(bad(
                key("app_id"),
                "must be the App's id (> 0, on its settings page)",
            ));
        }
        match (&self.private_key_path, &self.private_key_env) {
            (None, None) => {
                return Err(bad(
                    "github.app".into(),
                    "needs private_key_path (a PEM file) or private_key_env (an environment \
                     variable holding the PEM)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "github.app".into(),
                    "set one of private_key_path and private_key_env, not both",
                ));
            }
            (Some(path), None) if path.as_os_str().is_empty() => {
                return Err(bad(key("private_key_path"), "must not be empty"));
            }
            (None, Some(name)) => {
                let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(bad(
                        key("private_key_env"),
                        "must be the name of an environment variable (A-Z, a-z, 0-9, _), \
                         e.g. \"SLUICE_GITHUB_APP_KEY\"",
                    ));
                }
            }
            (Some(_), None) => {}
        }
        Ok(())
    }

    /// An App configured with a key file.
    pub fn with_key_file(app_id: u64, path: impl Into<PathBuf>) -> GithubAppConfig {
        GithubAppConfig {
            app_id,
            private_key_path: Some(path.into()),
            private_key_env: None,
            clone_with_token: true,
            private_key: None,
        }
    }

    /// An App configured with a key in an environment variable.
    pub fn with_key_env(app_id: u64, name: impl Into<String>) -> GithubAppConfig {
        GithubAppConfig {
            app_id,
            private_key_path: None,
            private_key_env: Some(name.into()),
            clone_with_token: true,
            private_key: None,
        }
    }

    /// Where the key is read from (validated at load: exactly one).
    pub fn key_source(&self) -> AppKeySource {
        match (&self.private_key_path, &self.private_key_env) {
            (Some(path), _) => AppKeySource::File(path.clone()),
            (None, Some(name)) => AppKeySource::Env(name.clone()),
            (None, None) => AppKeySource::Env(String::new()),
        }
    }

    /// The configuration key that names the key's source.
    pub fn key_setting(&self) -> &'static str {
        match self.key_source() {
            AppKeySource::File(_) => "github.app.private_key_path",
            AppKeySource::Env(_) => "github.app.private_key_env",
        }
    }

    /// Reads the private key and checks it looks like one: a PEM RSA
    /// private key. Whether it parses (and whether it is the App's) is
    /// for the GitHub adapter ([`crate::forge::github::app`]) and GitHub.
    pub fn read_private_key(&self) -> Result<AppKeyPem, ConfigError> {
        let source = self.key_source();
        let bad = |message: String| ConfigError::AppKey {
            setting: self.key_setting(),
            from: source.clone(),
            message,
        };
        let text = match &source {
            AppKeySource::File(path) => match std::fs::read(path) {
                Ok(bytes) => String::from_utf8(bytes)
                    .map_err(|_| bad("is not text (a PEM file is ASCII)".into()))?,
                Err(e) => return Err(bad(format!("cannot be read: {e}"))),
            },
            AppKeySource::Env(name) => match std::env::var(name) {
                Ok(v) if v.trim().is_empty() => return Err(bad("is empty".into())),
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => return Err(bad("is not set".into())),
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(bad("is not text (a PEM key is ASCII)".into()));
                }
            },
        };
        check_pem_shape(&text).map_err(|m| bad(m.to_string()))?;
        Ok(AppKeyPem(text))
    }
}

/// The first line (1-based) of `text` that holds a PEM private key's
/// header, or the start of one pasted into a single string.
fn pem_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.contains("-----BEGIN") && l.contains("PRIVATE KEY-----"))
        .map(|i| i + 1)
}

/// Why `text` is not a PEM RSA private key, judged by its labels only
/// (never quoting it).
fn check_pem_shape(text: &str) -> Result<(), &'static str> {
    if text.contains(PEM_RSA_LABEL) || text.contains(PEM_PKCS8_LABEL) {
        return Ok(());
    }
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(
            "holds an encrypted private key; GitHub's App keys are not encrypted: \
                    use the PEM file as downloaded",
        );
    }
    if text.contains("-----BEGIN PUBLIC KEY-----")
        || text.contains("-----BEGIN RSA PUBLIC KEY-----")
    {
        return Err("holds a public key, not the App's private key");
    }
    if text.contains("-----BEGIN") {
        return Err(
            "holds a PEM block that is not an RSA private key (expected -----BEGIN RSA PRIVATE KEY-----)",
        );
    }
    Err(
        "is not a PEM private key (expected -----BEGIN RSA PRIVATE KEY-----, \
         as GitHub's \"Generate a private key\" downloads it)",
    )
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            api_url: "https://api.github.com".into(),
            clone_base: "https://github.com".into(),
            request_timeout_secs: 30,
            max_retries: 4,
            status_context: "sluice".into(),
            check_runs: false,
            app: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Seconds between re-reads of GitHub (0 = only at startup).
    pub interval_secs: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig { interval_secs: 300 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    #[default]
    Local,
    Kubernetes,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    pub kind: ExecutorKind,
    /// Where local jobs get their workspaces.
    pub work_dir: PathBuf,
    /// Jobs running at once on this machine, all repositories together.
    pub max_parallel: usize,
    /// Timeout of each git command a job runs, in seconds.
    pub git_timeout_secs: u64,
    /// Local jobs run as this user (sluice must run as root), not as
    /// sluice's own: what the test can read is then that user's.
    pub run_as: Option<String>,
    /// Local jobs run each as a uid of its own from this range,
    /// `"FIRST-LAST"` (sluice must run as root; no user may hold them):
    /// jobs running at once cannot reach each other's workspaces.
    pub job_uids: Option<String>,
    /// Used when `kind = "kubernetes"`.
    pub kubernetes: KubernetesConfig,
}

impl ExecutorConfig {
    /// Sluice empties `work_dir` at every start (a killed sluice's
    /// workspaces), so it must not be, or hold, the state or the results.
    fn check_work_dir(
        &self,
        state_dir: &Path,
        results_dir: &Path,
        bad: &dyn Fn(String, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        // Resolved if it exists, else made absolute and `..` taken
        // lexically.
        let full = |p: &Path| {
            let p = p.canonicalize().or_else(|_| std::path::absolute(p))?;
            let mut plain = PathBuf::new();
            for part in p.components() {
                match part {
                    std::path::Component::ParentDir => {
                        plain.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => plain.push(other),
                }
            }
            std::io::Result::Ok(plain)
        };
        let Ok(work) = full(&self.work_dir) else {
            return Ok(());
        };
        for (what, dir) in [("state.dir", state_dir), ("results.dir", results_dir)] {
            if full(dir).is_ok_and(|dir| dir.starts_with(&work)) {
                return Err(bad(
                    "executor.work_dir".into(),
                    &format!(
                        "must not be or hold {what} ({}): sluice empties work_dir at every start",
                        dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            kind: ExecutorKind::Local,
            work_dir: PathBuf::from("sluice-work"),
            max_parallel: 4,
            git_timeout_secs: 300,
            run_as: None,
            job_uids: None,
            kubernetes: KubernetesConfig::default(),
        }
    }
}

/// `[executor.kubernetes]`: one batch/v1 Job per build.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Namespace the Jobs run in.
    pub namespace: String,
    /// A kubeconfig file; without it, the usual inference (KUBECONFIG,
    /// ~/.kube/config, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// Image of the init container that fetches and merges (needs `sh` and
    /// `git`).
    pub git_image: String,
    /// Image of the test container, unless a repository sets `image`.
    pub default_image: String,
    /// Finished Jobs are deleted by Kubernetes this long after they end.
    pub ttl_seconds_after_finished: i32,
    /// A pod not scheduled (or never created) within this is an
    /// infrastructure error.
    pub schedule_timeout_secs: u64,
    /// Seconds between full re-lists of the Jobs, healing missed watch
    /// events.
    pub relist_interval_secs: u64,
    /// Timeout of each Kubernetes API call, in seconds.
    pub api_timeout_secs: u64,
    /// The user id the job's containers run as (never root).
    pub run_as_user: i64,
    /// Bytes of each container's log read back through the API.
    pub log_limit_bytes: i64,
    /// Resource requests and limits of each container
    /// (`{ cpu = "500m", memory = "1Gi" }`).
    pub requests: std::collections::BTreeMap<String, String>,
    pub limits: std::collections::BTreeMap<String, String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: "sluice-jobs".into(),
            kubeconfig: None,
            git_image: "alpine/git:2.47.2".into(),
            default_image: "debian:bookworm-slim".into(),
            ttl_seconds_after_finished: 3600,
            schedule_timeout_secs: 600,
            relist_interval_secs: 60,
            api_timeout_secs: 30,
            run_as_user: 65532,
            log_limit_bytes: 50 * 1024 * 1024,
            requests: [("cpu", "500m"), ("memory", "512Mi")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            limits: [("memory", "2Gi")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultsKind {
    #[default]
    Local,
    Gcs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsConfig {
    pub kind: ResultsKind,
    /// Where local results are written; served under `/results/`. With
    /// `kind = "gcs"` this is the spool: results wait here until uploaded
    /// (keep it on a persistent volume).
    pub dir: PathBuf,
    /// `[results.gcs]`, needed when `kind = "gcs"`.
    pub gcs: Option<GcsConfig>,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            kind: ResultsKind::Local,
            dir: PathBuf::from("sluice-results"),
            gcs: None,
        }
    }
}

/// Where commit statuses link to with GCS results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GcsLink {
    /// The object itself: `{public_base}/<bucket>/<prefix>/<path>/index.html`.
    #[default]
    Public,
    /// sluice's own page: `{server.public_url}/results/<path>/`.
    Sluice,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsConfig {
    /// The bucket's name (not `gs://...`).
    pub bucket: String,
    /// Object names start with `<prefix>/`; empty for the bucket's root.
    #[serde(default = "default_gcs_prefix")]
    pub prefix: String,
    /// Another endpoint than Google's (an emulator); credentials are then
    /// anonymous. Unset in production: default credentials are used.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub link: GcsLink,
    /// Base of public object URLs.
    #[serde(default = "default_gcs_public_base")]
    pub public_base: String,
    /// Retries of a failed upload before it is left to the background loop.
    #[serde(default = "default_gcs_upload_retries")]
    pub upload_retries: u32,
    /// Timeout of each call to GCS, in seconds.
    #[serde(default = "default_gcs_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Seconds between re-uploads of what is left in the spool (0 = never).
    #[serde(default = "default_gcs_retry_interval_secs")]
    pub retry_interval_secs: u64,
}

fn default_gcs_prefix() -> String {
    "sluice".into()
}
fn default_gcs_public_base() -> String {
    "https://storage.googleapis.com".into()
}
fn default_gcs_upload_retries() -> u32 {
    3
}
fn default_gcs_request_timeout_secs() -> u64 {
    30
}
fn default_gcs_retry_interval_secs() -> u64 {
    60
}

impl GcsConfig {
    /// The first key at fault and why.
    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        let b = &self.bucket;
        let bucket_ok = (3..=222).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c))
            && b.starts_with(|c: char| c.is_ascii_alphanumeric())
            && b.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err((
                "results.gcs.bucket",
                "must be a bucket name (a-z, 0-9, -, _, .)",
            ));
        }
        let p = &self.prefix;
        let prefix_ok = p.is_empty()
            || p.split('/').all(|part| {
                !part.is_empty()
                    && !part.starts_with('.')
                    && part
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            });
        if !prefix_ok {
            return Err((
                "results.gcs.prefix",
                "must be empty or names of a-z, A-Z, 0-9, -, _, . joined by /, without leading or trailing /",
            ));
        }
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if self.endpoint.as_deref().is_some_and(|e| !url_ok(e)) {
            return Err(("results.gcs.endpoint", "must be an http:// or https:// URL"));
        }
        if !url_ok(&self.public_base) {
            return Err((
                "results.gcs.public_base",
                "must be an http:// or https:// URL",
            ));
        }
        if !IN_DURATION_RANGE.contains(&self.request_timeout_secs) {
            return Err(("results.gcs.request_timeout_secs", DURATION_RANGE));
        }
        if self.retry_interval_secs > *IN_DURATION_RANGE.end() {
            return Err((
                "results.gcs.retry_interval_secs",
                "must be 0 (never) to 604800 seconds (7 days)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// `owner/name`.
    pub name: String,
    /// Overrides `github.clone_base`.
    #[serde(default)]
    pub clone_url: Option<String>,
    /// The test command, as argv (never a shell string).
    pub test_command: Vec<String>,
    #[serde(default = "default_required_approvals")]
    pub required_approvals: u32,
    #[serde(default = "default_max_concurrent_builds")]
    pub max_concurrent_builds: usize,
    #[serde(default)]
    pub merge_method: MergeMethod,
    #[serde(default)]
    pub priority_labels: Vec<String>,
    #[serde(default = "default_job_timeout_secs")]
    pub job_timeout_secs: u64,
    #[serde(default = "default_max_infra_retries")]
    pub max_infra_retries: u32,
    /// Image of the test container on Kubernetes; overrides
    /// `executor.kubernetes.default_image`.
    #[serde(default)]
    pub image: Option<String>,
    /// 1 to 32 (default 4): a merge train that tests up to this many cars
    /// at once (never more than `max_concurrent_builds`) and lands exactly
    /// the tested car by fast-forward. 0: serial mode, where GitHub merges
    /// each PR after its own test: GitHub makes the merge commit and a push
    /// racing it is not caught, so the landed commit is not the tested one.
    #[serde(default = "default_train_depth")]
    pub train_depth: usize,
    /// When a PR is tested on its own: `before_approval` (every PR),
    /// `after_approval`, or `train_only` (only in the train's cars).
    #[serde(default)]
    pub pr_tests: PrTests,
    /// Train mode: PRs per tested car, a number (1: every car is tested,
    /// no batching) or `"adaptive"` (the planner chooses, up to
    /// `max_batch`).
    #[serde(default)]
    pub batch: BatchSetting,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Cars of a failed batch tested at once while bisecting.
    #[serde(default = "default_bisect_parallel")]
    pub bisect_parallel: usize,
    /// A passing car behind a failed one lands; the failure is recorded as
    /// a suspected flake.
    #[serde(default)]
    pub optimistic: bool,
    /// Train mode: a PR with this label goes to the front of its train.
    #[serde(default)]
    pub urgent_label: Option<String>,
    /// What lets an approved, passing PR land: `"approval"` (its approvals)
    /// or `"command"` (also a `/merge` comment from a writer).
    #[serde(default)]
    pub land_on: LandOn,
    /// The PR's author may `/retest` it without write access.
    #[serde(default = "default_author_may_retest")]
    pub author_may_retest: bool,
    /// Train mode with batches: a train with nothing tested waits until no
    /// PR entered for this many milliseconds (at most ten times as long)
    /// before it tests, so PRs approved together share batches. 0: never.
    #[serde(default = "default_gather_ms")]
    pub gather_ms: u64,
}

/// A train by default: it is what lands exactly the tested commit.
fn default_train_depth() -> usize {
    4
}

fn default_gather_ms() -> u64 {
    1000
}

fn default_author_may_retest() -> bool {
    true
}

/// `batch = 4` or `batch = "adaptive"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum BatchSetting {
    Size(usize),
    Word(String),
}

impl Default for BatchSetting {
    fn default() -> Self {
        BatchSetting::Size(1)
    }
}

fn default_max_batch() -> usize {
    8
}
fn default_bisect_parallel() -> usize {
    1
}

fn default_required_approvals() -> u32 {
    1
}
fn default_max_concurrent_builds() -> usize {
    2
}
fn default_job_timeout_secs() -> u64 {
    1800
}
fn default_max_infra_retries() -> u32 {
    2
}

impl KubernetesConfig {
    fn validate(&self, bad: &dyn Fn(String, &str) -> ConfigError) -> Result<(), ConfigError> {
        let key = |k: &str| format!("executor.kubernetes.{k}");
        if !is_dns_label(&self.namespace) {
            return Err(bad(key("namespace"), "must be a DNS-1123 label"));
        }
        for (k, image) in [
            ("git_image", &self.git_image),
            ("default_image", &self.default_image),
        ] {
            if image.trim().is_empty() {
                return Err(bad(key(k), "must not be empty"));
            }
        }
        for (k, v) in [
            ("schedule_timeout_secs", self.schedule_timeout_secs),
            ("relist_interval_secs", self.relist_interval_secs),
            ("api_timeout_secs", self.api_timeout_secs),
        ] {
            if !IN_DURATION_RANGE.contains(&v) {
                return Err(bad(key(k), DURATION_RANGE));
            }
        }
        // A finished Job must outlive sluice's reading of its log, and a
        // missed watch event's re-list: with less, its result is lost and
        // the test runs again (or, at 0, has no log at all).
        let ttl = i64::from(self.ttl_seconds_after_finished);
        if ttl < 300 || ttl <= self.relist_interval_secs as i64 {
            return Err(bad(
                key("ttl_seconds_after_finished"),
                "must be at least 300 and more than relist_interval_secs (a finished Job must \
                 outlive the reading of its log)",
            ));
        }
        if self.run_as_user <= 0 {
            return Err(bad(key("run_as_user"), "must be a non-root uid (> 0)"));
        }
        if self.log_limit_bytes <= 0 {
            return Err(bad(key("log_limit_bytes"), "must be > 0"));
        }
        Ok(())
    }
}

/// A DNS-1123 label: what Kubernetes accepts as a namespace.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl RepoConfig {
    pub fn repo(&self) -> RepoName {
        RepoName::parse(&self.name).expect("validated at load")
    }
    pub fn policy(&self) -> RepoPolicy {
        RepoPolicy {
            required_approvals: self.required_approvals,
            max_concurrent_builds: self.max_concurrent_builds,
            max_infra_retries: self.max_infra_retries,
            priority_labels: self.priority_labels.clone(),
            train_depth: self.train_depth,
            pr_tests: self.pr_tests,
            merge_method: self.merge_method,
            batch: match self.batch {
                BatchSetting::Size(n) => BatchSize::Fixed(n),
                BatchSetting::Word(_) => BatchSize::Adaptive {
                    max: self.max_batch,
                },
            },
            bisect_parallel: self.bisect_parallel,
            optimistic: self.optimistic,
            urgent_label: self.urgent_label.clone(),
            land_on: self.land_on,
            author_may_retest: self.author_may_retest,
            car_statuses: false,
            gather_ms: self.gather_ms,
        }
    }
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout_secs)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // Before TOML sees it: a parse error would quote the line.
        if let Some(line) = pem_line(text) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "github.app".into(),
                message: format!(
                    "line {line} holds a PEM private key; a key never goes in the configuration file: \
                     put it in a file (github.app.private_key_path) or an environment variable \
                     (github.app.private_key_env)"
                ),
            });
        }
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: String, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message: message.to_string(),
        };
        for (key, url) in [
            ("server.public_url", &self.server.public_url),
            ("github.api_url", &self.github.api_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad(key.into(), "must be an http:// or https:// URL"));
            }
        }
        if !IN_DURATION_RANGE.contains(&self.github.request_timeout_secs) {
            return Err(bad("github.request_timeout_secs".into(), DURATION_RANGE));
        }
        if self.github.status_context.trim().is_empty() {
            return Err(bad("github.status_context".into(), "must not be empty"));
        }
        if self.github.check_runs && self.github.app.is_none() {
            return Err(bad(
                "github.check_runs".into(),
                "needs [github.app]: GitHub lets only Apps write check runs (with a personal token,                  leave it off and sluice writes commit statuses)",
            ));
        }
        if let Some(app) = &self.github.app {
            app.validate(&bad)?;
        }
        if self.reconcile.interval_secs > *IN_DURATION_RANGE.end() {
            return Err(bad(
                "reconcile.interval_secs".into(),
                "must be 0 (only at startup) to 604800 seconds (7 days)",
            ));
        }
        for (i, hook) in self.events.webhooks.iter().enumerate() {
            let key = |field: &str| format!("events.webhooks[{i}].{field}");
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(bad(key("url"), "must be an http:// or https:// URL"));
            }
            if hook.secret_env.is_some() == hook.secret_path.is_some() {
                return Err(bad(
                    key("secret_env"),
                    "set one of secret_env or secret_path: every delivery is signed",
                ));
            }
            if hook.max_attempts == 0 || !IN_DURATION_RANGE.contains(&hook.timeout_secs) {
                return Err(bad(
                    key("max_attempts"),
                    "max_attempts must be > 0 and timeout_secs 1 to 604800 (7 days)",
                ));
            }
        }
        if self.executor.max_parallel == 0 {
            return Err(bad("executor.max_parallel".into(), "must be > 0"));
        }
        if !IN_DURATION_RANGE.contains(&self.executor.git_timeout_secs) {
            return Err(bad("executor.git_timeout_secs".into(), DURATION_RANGE));
        }
        if self.executor.kind == ExecutorKind::Local {
            self.executor
                .check_work_dir(&self.state.dir, &self.results.dir, &bad)?;
        }
        if self.executor.kind == ExecutorKind::Kubernetes {
            self.executor.kubernetes.validate(&bad)?;
        }
        if self.executor.kind == ExecutorKind::Local
            && let Some(user) = &self.executor.run_as
        {
            crate::executor::local::job_user(user)
                .map_err(|e| bad("executor.run_as".into(), &e))?;
        }
        if self.executor.kind == ExecutorKind::Local
            && let Some(range) = &self.executor.job_uids
        {
            if self.executor.run_as.is_some() {
                return Err(bad(
                    "executor.job_uids".into(),
                    "set either run_as (one user for every job) or job_uids, not both",
                ));
            }
            crate::executor::local::job_uid_range(range, self.executor.max_parallel)
                .map_err(|e| bad("executor.job_uids".into(), &e))?;
        }
        match (&self.results.kind, &self.results.gcs) {
            (ResultsKind::Gcs, None) => {
                return Err(bad(
                    "results.gcs".into(),
                    "kind = \"gcs\" needs a [results.gcs] section with a bucket",
                ));
            }
            (_, Some(gcs)) => {
                if let Err((key, message)) = gcs.check() {
                    return Err(bad(key.into(), message));
                }
            }
            (ResultsKind::Local, None) => {}
        }
        if self.repos.is_empty() {
            return Err(bad(
                "repos".into(),
                "at least one [[repos]] entry is needed",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, repo) in self.repos.iter().enumerate() {
            let key = |field: &str| format!("repos[{i}].{field}");
            if let Err(e) = RepoName::parse(&repo.name) {
                return Err(bad(key("name"), &e.to_string()));
            }
            if !seen.insert(repo.name.to_ascii_lowercase()) {
                return Err(bad(key("name"), "repository listed twice"));
            }
            if repo.test_command.is_empty() || repo.test_command[0].trim().is_empty() {
                return Err(bad(
                    key("test_command"),
                    "must be a non-empty argv list, e.g. [\"make\", \"test\"]",
                ));
            }
            if repo.max_concurrent_builds == 0 {
                return Err(bad(key("max_concurrent_builds"), "must be > 0"));
            }
            if !IN_DURATION_RANGE.contains(&repo.job_timeout_secs) {
                return Err(bad(key("job_timeout_secs"), DURATION_RANGE));
            }
            if repo.train_depth > 32 {
                return Err(bad(key("train_depth"), "must be at most 32"));
            }
            match &repo.batch {
                BatchSetting::Size(n) if (1..=64).contains(n) => {}
                BatchSetting::Word(w) if w == "adaptive" => {}
                _ => {
                    return Err(bad(
                        key("batch"),
                        "must be a number of PRs from 1 to 64, or \"adaptive\"",
                    ));
                }
            }
            if !(1..=64).contains(&repo.max_batch) {
                return Err(bad(key("max_batch"), "must be from 1 to 64"));
            }
            if repo.gather_ms > 60_000 {
                return Err(bad(key("gather_ms"), "must be at most 60000 (a minute)"));
            }
            if !(1..=8).contains(&repo.bisect_parallel) {
                return Err(bad(key("bisect_parallel"), "must be from 1 to 8"));
            }
            if repo.train_depth == 0 && repo.pr_tests == PrTests::TrainOnly {
                return Err(bad(
                    key("pr_tests"),
                    "\"train_only\" needs a merge train (train_depth > 0): without one a PR's own test is its only test",
                ));
            }
        }
        Ok(())
    }

    pub fn repo(&self, name: &RepoName) -> Option<&RepoConfig> {
        self.repos.iter().find(|r| r.name == name.as_str())
    }

    /// The URL a job clones `repo` from.
    pub fn clone_url(&self, repo: &RepoConfig) -> String {
        match &repo.clone_url {
            Some(url) => url.clone(),
            None => format!(
                "{}/{}.git",
                self.github.clone_base.trim_end_matches('/'),
                repo.name
            ),
        }
    }
}

/// Secrets, read from the environment only.
#[derive(Clone)]
pub struct Secrets {
    pub github_token: Option<String>,
    pub webhook_secret: String,
    pub api_token: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

impl Secrets {
    pub fn from_env() -> Result<Secrets, ConfigError> {
        let get = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Ok(Secrets {
            github_token: get(ENV_GITHUB_TOKEN),
            webhook_secret: get(ENV_WEBHOOK_SECRET).ok_or(ConfigError::MissingSecret {
                name: ENV_WEBHOOK_SECRET,
                why: "webhooks cannot be verified without it",
            })?,
            api_token: get(ENV_API_TOKEN),
        })
    }
}
