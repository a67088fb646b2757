//! Executors run builds: local processes on a laptop, Kubernetes Jobs in
//! production. They are told what to run and report what came of it; they
//! decide nothing.

pub mod kubernetes;
pub mod local;

use crate::core::{BuildId, Candidate, JobReport};
use futures::future::BoxFuture;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Everything a job needs. PR code gets only what is in here, never a
/// credential.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub build: BuildId,
    pub candidate: Candidate,
    /// Where to fetch the commits from.
    pub clone_url: String,
    /// The repository's test command, as argv.
    pub command: Vec<String>,
    /// The whole job (fetch, merge, test) is killed after this.
    pub timeout: Duration,
    /// A short-lived read-only token for the fetch (a GitHub App's, for
    /// private repositories): given to git for the fetch only, never to
    /// the test.
    pub clone_token: Option<CloneToken>,
    /// Where `clone_token` comes from, asked when the job is about to
    /// fetch, not when it is queued: an installation token lives an hour,
    /// and a job may wait longer than that for a free runner.
    pub mint_token: Option<TokenMint>,
}

/// Mints a clone token (`None`: the fetch goes without one).
#[derive(Clone)]
pub struct TokenMint(
    pub std::sync::Arc<dyn Fn() -> BoxFuture<'static, Option<CloneToken>> + Send + Sync>,
);

impl std::fmt::Debug for TokenMint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenMint")
    }
}

impl JobSpec {
    /// Fills `clone_token` from `mint_token`, if there is one to ask.
    pub async fn mint_clone_token(&mut self) {
        if let Some(mint) = &self.mint_token {
            self.clone_token = (mint.0)().await;
        }
    }
}

impl JobSpec {
    /// The `SLUICE_*` variables a test sees, the same on every executor:
    /// what it tests (the first PR of a car, empty for a car of none).
    pub fn sluice_env(&self) -> [(&'static str, String); 7] {
        let c = &self.candidate;
        let first = c.first_pr();
        [
            ("SLUICE_REPO", c.repo.to_string()),
            (
                "SLUICE_PR",
                first.map(|p| p.number.to_string()).unwrap_or_default(),
            ),
            (
                "SLUICE_HEAD_SHA",
                first.map(|p| p.head_sha.to_string()).unwrap_or_default(),
            ),
            (
                "SLUICE_HEAD_REF",
                first.map(|p| p.head_ref.clone()).unwrap_or_default(),
            ),
            ("SLUICE_TARGET_BRANCH", c.target_branch.clone()),
            ("SLUICE_TARGET_SHA", c.target_sha.to_string()),
            ("SLUICE_BUILD_ID", self.build.to_string()),
        ]
    }
}

/// A credential for fetching, never printed (`Debug` shows only that
/// there is one).
#[derive(Clone, PartialEq, Eq)]
pub struct CloneToken(String);

impl CloneToken {
    pub fn new(token: String) -> CloneToken {
        CloneToken(token)
    }

    /// The HTTP `Authorization` header value git sends with the fetch
    /// (GitHub's form for installation tokens: Basic `x-access-token`).
    pub fn authorization(&self) -> String {
        use base64::Engine;
        let pair = format!("x-access-token:{}", self.0);
        format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// The token itself (for a Kubernetes Secret).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CloneToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloneToken(redacted)")
    }
}

/// A finished job: what happened and its log (stdout and stderr, with
/// sluice's own lines about the fetch and merge).
#[derive(Clone, Debug)]
pub struct JobResult {
    pub build: BuildId,
    pub candidate: Candidate,
    pub report: JobReport,
    pub log: Vec<u8>,
}

/// At most this much of a running job's log is read at a time: a page or
/// a live log's reader never costs more, however long the log.
pub const LOG_READ_MAX: usize = 1 << 20;

/// Which part of a running job's log to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogPart {
    /// From this byte on.
    From(usize),
    /// The last this many bytes.
    Tail(usize),
}

/// A part of a running job's log: `bytes` start at byte `start` of the
/// `total` so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogRead {
    pub start: usize,
    pub bytes: Vec<u8>,
    pub total: usize,
}

impl LogPart {
    /// This part of `log` (at most [`LOG_READ_MAX`] bytes of it).
    pub fn of(self, log: &[u8]) -> LogRead {
        let total = log.len();
        let start = match self {
            LogPart::From(n) => n.min(total),
            LogPart::Tail(n) => total.saturating_sub(n.min(LOG_READ_MAX)),
        };
        let end = total.min(start.saturating_add(LOG_READ_MAX));
        LogRead {
            start,
            bytes: log[start..end].to_vec(),
            total,
        }
    }
}

pub trait Executor: Send + Sync {
    /// Starts the job in the background; its result is sent on `done`. A
    /// cancelled job sends nothing.
    fn start(&self, job: JobSpec, done: UnboundedSender<JobResult>);
    /// Stops a job and everything it started. Unknown ids are ignored.
    fn cancel(&self, build: &BuildId);
    /// `part` of the log of a running job so far, for its live build page;
    /// `None` if the job is not running here (or has no log yet).
    fn log_part(&self, build: &BuildId, part: LogPart) -> BoxFuture<'_, Option<LogRead>> {
        let _ = (build, part);
        Box::pin(async { None })
    }
    /// After a restart: the builds sluice believed running. Re-adopts what it
    /// can (their results will be sent on `done`, as if `start` had been
    /// called) and returns the builds it lost, making sure none of them still
    /// runs. The default has nothing to re-adopt.
    fn recover(
        &self,
        running: Vec<(BuildId, Candidate)>,
        done: UnboundedSender<JobResult>,
    ) -> BoxFuture<'_, Vec<BuildId>> {
        let _ = done;
        Box::pin(async move { running.into_iter().map(|(build, _)| build).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_part_is_at_most_a_read_and_says_where_it_starts() {
        let log: Vec<u8> = (0..3 * LOG_READ_MAX).map(|i| (i % 251) as u8).collect();
        let tail = LogPart::Tail(10).of(&log);
        assert_eq!((tail.start, tail.total), (log.len() - 10, log.len()));
        assert_eq!(tail.bytes, &log[log.len() - 10..]);
        let huge_tail = LogPart::Tail(usize::MAX).of(&log);
        assert_eq!(huge_tail.bytes.len(), LOG_READ_MAX, "a read is bounded");
        assert_eq!(huge_tail.start, log.len() - LOG_READ_MAX);
        let from = LogPart::From(5).of(&log);
        assert_eq!(from.start, 5);
        assert_eq!(from.bytes, &log[5..5 + LOG_READ_MAX]);
        let past = LogPart::From(usize::MAX).of(&log);
        assert_eq!((past.start, past.bytes.len()), (log.len(), 0));
        assert_eq!(LogPart::Tail(10).of(b"short").bytes, b"short");
    }
}
