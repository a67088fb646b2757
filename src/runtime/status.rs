//! The status writer: commit statuses, in the order the core decided them.
//!
//! A status identical (state, description and link) to the last one written
//! for that commit is not sent again: the core dedups per PR, this also
//! covers a PR flipping back to a commit, and the core saying again what it
//! said before within this process's life. Being the one task that lives as
//! long as the driver and holds both the forge and the metrics, the writer
//! also copies the forge's API budget into the metrics.

use super::metrics::{KindLabel, Metrics};
use super::{Shared, StatusUpdate, forge_failed};
use crate::core::{CommitState, RepoName, Sha, text};
use crate::forge::{ApiBudget, CommitStatus, Forge, ForgeError};
use crate::results::ResultsStore;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How many commits' last status is remembered (the oldest first
/// remembered is forgotten first; forgetting costs at most one repeated
/// write).
pub const STATUS_MEMORY: usize = 10_000;
/// How long a pending status waits before it is written. A newer status of
/// the same commit within that time replaces it: "queued" then "testing"
/// then "passed" a moment later cost one write, not three. A final status
/// (success, failure, error) is written at once.
pub const PENDING_HOLD: Duration = Duration::from_secs(1);
/// How often the forge's API budget is copied into the metrics (also after
/// every batch of writes).
pub const BUDGET_MIRROR: Duration = Duration::from_secs(2);
/// A status GitHub would not take for a reason that passes (an outage
/// longer than the adapter's own retries, a rate limit) is tried again
/// this long after, the wait doubling up to [`STATUS_RETRY_MAX`], at most
/// [`STATUS_ATTEMPTS`] times in all; a newer status of the commit replaces
/// it. Without this a commit kept its stale status (a "pending" whose build
/// had long finished) until its status next changed.
#[cfg(not(test))]
pub const STATUS_RETRY_FIRST: Duration = Duration::from_secs(30);
#[cfg(test)]
pub const STATUS_RETRY_FIRST: Duration = Duration::from_millis(50);
pub const STATUS_RETRY_MAX: Duration = Duration::from_secs(600);
pub const STATUS_ATTEMPTS: u32 = 8;
/// At most this many statuses wait to be tried again (a long outage with
/// many PRs moving): beyond it a failed one is dropped as before, so the
/// writer's memory and its scans of what it holds stay bounded.
pub const STATUS_RETRYING_MAX: usize = 1000;

type Held = Vec<(StatusUpdate, tokio::time::Instant, u32)>;

/// Holds `retry` (a failed write to try again) unless
/// [`STATUS_RETRYING_MAX`] already wait.
fn retry_later(held: &mut Held, retry: Option<(StatusUpdate, tokio::time::Instant, u32)>) {
    if let Some(retry) = retry
        && held.iter().filter(|(_, _, failed)| *failed > 0).count() < STATUS_RETRYING_MAX
    {
        held.push(retry);
    }
}

/// The wait before a status's next attempt, after `failed` failed ones.
fn retry_wait(failed: u32) -> Duration {
    STATUS_RETRY_FIRST
        .saturating_mul(1u32 << failed.saturating_sub(1).min(16))
        .min(STATUS_RETRY_MAX)
}

/// Whether a failed write may succeed later as it is.
fn worth_retrying(e: &ForgeError) -> bool {
    match e {
        ForgeError::Timeout { .. } | ForgeError::Transport { .. } => true,
        ForgeError::Http {
            status, message, ..
        } => {
            *status >= 500
                || *status == 429
                || (*status == 403 && message.to_ascii_lowercase().contains("rate limit"))
        }
        _ => false,
    }
}

/// The last status written per (repository, commit), bounded.
struct LastWritten {
    cap: usize,
    last: HashMap<(RepoName, Sha), CommitStatus>,
    order: VecDeque<(RepoName, Sha)>,
}

impl LastWritten {
    fn new(cap: usize) -> LastWritten {
        LastWritten {
            cap: cap.max(1),
            last: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn is_repeat(&self, repo: &RepoName, sha: &Sha, status: &CommitStatus) -> bool {
        self.last
            .get(&(repo.clone(), sha.clone()))
            .is_some_and(|last| last == status)
    }

    fn wrote(&mut self, repo: RepoName, sha: Sha, status: CommitStatus) {
        let key = (repo, sha);
        if self.last.insert(key.clone(), status).is_none() {
            self.order.push_back(key);
        }
        while self.last.len() > self.cap {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.last.remove(&oldest);
        }
    }
}

/// Writes commit statuses in the order the core decided them. Updates that
/// queue up behind a slow call are coalesced: only the newest status of a
/// commit is sent, and only if it is not what was last written there.
pub(super) async fn status_writer(
    forge: Arc<dyn Forge>,
    results: Arc<dyn ResultsStore>,
    mut rx: mpsc::UnboundedReceiver<StatusUpdate>,
    shared: Arc<Shared>,
) {
    let out = Out {
        forge: &*forge,
        results: &*results,
        shared: &shared,
    };
    let mut written = LastWritten::new(STATUS_MEMORY);
    // Statuses not written yet (pending ones held back, failed ones to try
    // again), when they are due, and how many attempts failed.
    let mut held: Held = Vec::new();
    let mut mirrored = ApiBudget::default();
    let mut mirror = tokio::time::interval(BUDGET_MIRROR);
    mirror.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let due_at = held.iter().map(|(_, at, _)| *at).min();
        let first = tokio::select! {
            update = rx.recv() => match update {
                Some(update) => update,
                None => break,
            },
            _ = mirror.tick() => {
                mirror_budget(&*forge, &shared.metrics, &mut mirrored);
                continue;
            }
            _ = tokio::time::sleep_until(due_at.unwrap_or_else(far_future)), if due_at.is_some() => {
                let now = tokio::time::Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = held.drain(..).partition(|(_, at, _)| *at <= now);
                held = later;
                for (update, _, failed) in due {
                    let retry = out.write(&mut written, update, failed).await;
                    retry_later(&mut held, retry);
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut newest: Vec<StatusUpdate> = Vec::new();
        for update in batch {
            match newest
                .iter_mut()
                .find(|u| u.0 == update.0 && u.1 == update.1)
            {
                Some(slot) => *slot = update,
                None => newest.push(update),
            }
        }
        for update in newest {
            let earlier = held
                .iter()
                .position(|((r, s, _, _), _, _)| *r == update.0 && *s == update.1)
                .map(|i| held.remove(i));
            if update.2.state == crate::core::CommitState::Pending {
                // Held; a pending one already waiting keeps its time, so a
                // stream of changes cannot hold it back for ever.
                let at = earlier.map_or_else(
                    || tokio::time::Instant::now() + PENDING_HOLD,
                    |(_, at, _)| at,
                );
                held.push((update, at, 0));
                continue;
            }
            let retry = out.write(&mut written, update, 0).await;
            retry_later(&mut held, retry);
        }
        mirror_budget(&*forge, &shared.metrics, &mut mirrored);
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

/// Where statuses go.
struct Out<'a> {
    forge: &'a dyn Forge,
    results: &'a dyn ResultsStore,
    shared: &'a Shared,
}

impl Out<'_> {
    /// Writes one status unless it is what the commit has already; a check
    /// run of a finished build that did not pass shows its log's end.
    /// `failed`: the attempts that failed before. Returns the update and
    /// when to try it again, if this attempt failed for a reason that
    /// passes and attempts are left.
    async fn write(
        &self,
        written: &mut LastWritten,
        update: StatusUpdate,
        failed: u32,
    ) -> Option<(StatusUpdate, tokio::time::Instant, u32)> {
        let (repo, sha, status, log) = &update;
        if written.is_repeat(repo, sha, status) {
            return None;
        }
        let (repo, sha, mut status) = (repo.clone(), sha.clone(), status.clone());
        let did_not_pass = matches!(status.state, CommitState::Failure | CommitState::Error);
        if let (true, true, Some(key)) = (self.forge.writes_check_runs(), did_not_pass, log) {
            let tail = format!("{}/log.txt", key.relative_path());
            if let Ok(Some(file)) = self.results.read(&tail).await {
                status
                    .summary
                    .push_str(&text::log_tail(&last_lines(&file.bytes)));
            }
        }
        match self.forge.set_status(&repo, &sha, &status).await {
            Ok(()) => {
                written.wrote(repo, sha, status);
                None
            }
            Err(e) => {
                forge_failed(self.shared, "status", &e);
                let failed = failed + 1;
                (worth_retrying(&e) && failed < STATUS_ATTEMPTS).then(|| {
                    let at = tokio::time::Instant::now() + retry_wait(failed);
                    (update, at, failed)
                })
            }
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines of a log, at most
/// [`LOG_TAIL_BYTES`], as text.
fn last_lines(log: &[u8]) -> String {
    let start = log.len().saturating_sub(LOG_TAIL_BYTES);
    let text = String::from_utf8_lossy(&log[start..]);
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[keep..].join("\n")
}

/// How much of a failing log a check run shows.
pub const LOG_TAIL_LINES: usize = 30;
pub const LOG_TAIL_BYTES: usize = 8 * 1024;

/// Copies the forge's budget into the gauges, and what it spent since
/// `last` into the request counters.
fn mirror_budget(forge: &dyn Forge, metrics: &Metrics, last: &mut ApiBudget) {
    let Some(budget) = forge.api_budget() else {
        return;
    };
    let gauge = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    if let Some(v) = gauge(budget.remaining) {
        metrics.github_rate_limit_remaining.set(v);
    }
    if let Some(v) = gauge(budget.limit) {
        metrics.github_rate_limit_limit.set(v);
    }
    if let Some(v) = gauge(budget.reset_unix) {
        metrics.github_rate_limit_reset_seconds.set(v);
    }
    for (kind, now, before) in [
        ("counted", budget.counted, last.counted),
        ("not_modified", budget.not_modified, last.not_modified),
    ] {
        metrics
            .github_requests
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc_by(now.saturating_sub(before));
    }
    *last = budget;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GithubConfig;
    use crate::core::{CommitState, State};
    use crate::fakehub::FakeHub;
    use crate::forge::github::GitHub;
    use crate::runtime::history::History;
    use std::sync::RwLock;
    use std::sync::atomic::AtomicU64;

    fn status(state: CommitState, description: &str, link: Option<&str>) -> CommitStatus {
        CommitStatus {
            state,
            description: description.into(),
            target_url: link.map(str::to_string),
            summary: String::new(),
        }
    }

    #[test]
    fn repeats_are_recognised_and_the_memory_is_bounded() {
        let repo = RepoName::parse("o/r").unwrap();
        let sha = |c: char| Sha::parse(&c.to_string().repeat(40)).unwrap();
        let pending = status(CommitState::Pending, "Testing", Some("http://x/1"));
        let mut w = LastWritten::new(2);
        assert!(!w.is_repeat(&repo, &sha('a'), &pending));
        w.wrote(repo.clone(), sha('a'), pending.clone());
        assert!(w.is_repeat(&repo, &sha('a'), &pending));
        let other_link = status(CommitState::Pending, "Testing", Some("http://x/2"));
        assert!(!w.is_repeat(&repo, &sha('a'), &other_link));
        assert!(!w.is_repeat(&repo, &sha('b'), &pending));
        w.wrote(repo.clone(), sha('b'), pending.clone());
        w.wrote(repo.clone(), sha('c'), pending.clone());
        assert!(!w.is_repeat(&repo, &sha('a'), &pending), "evicted");
        assert!(w.is_repeat(&repo, &sha('c'), &pending));
        assert_eq!(w.last.len(), 2);
        assert_eq!(w.order.len(), 2);
    }

    /// The fake GitHub with repository `o/r`: `main`'s commit and one
    /// on `topic`.
    async fn hub_with_two_commits() -> (tempfile::TempDir, FakeHub, [Sha; 2]) {
        let dir = tempfile::tempdir().unwrap();
        let hub = FakeHub::start(dir.path(), Some("tok".into()))
            .await
            .unwrap();
        let main = hub
            .create_repo("o/r", "main", &[("a", "a\n")])
            .await
            .unwrap();
        let other = hub
            .commit("o/r", "topic", Some("main"), &[("b", "b\n")], "b")
            .await
            .unwrap();
        (dir, hub, [main, other])
    }

    /// A status writer with the GitHub adapter against `hub` (`max_retries`:
    /// the adapter's own retries, if not its default).
    fn writer_against(
        hub: &FakeHub,
        dir: &std::path::Path,
        max_retries: Option<u32>,
    ) -> (
        mpsc::UnboundedSender<StatusUpdate>,
        Arc<Shared>,
        tokio::task::JoinHandle<()>,
    ) {
        let mut config = GithubConfig {
            api_url: hub.api_url(),
            request_timeout_secs: 5,
            ..GithubConfig::default()
        };
        config.max_retries = max_retries.unwrap_or(config.max_retries);
        let forge: Arc<dyn Forge> = Arc::new(GitHub::new(&config, Some("tok".into())).unwrap());
        let (inputs, _keep) = crate::runtime::store::Inlet::channel(1);
        let shared = Arc::new(Shared {
            inputs,
            repos: Default::default(),
            state: RwLock::new(State::new(std::iter::empty(), "b")),
            history: RwLock::new(History::default()),
            metrics: Metrics::default(),
            events: Arc::new(crate::runtime::events::EventBus::new(1)),
            staging_clean: Default::default(),
            next_request: AtomicU64::new(1),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let results: Arc<dyn ResultsStore> = Arc::new(crate::results::fs::FsResults::new(
            dir.join("results"),
            "http://s",
        ));
        let writer = tokio::spawn(status_writer(forge, results, rx, shared.clone()));
        (tx, shared, writer)
    }

    /// Real HTTP: a final status GitHub answers 502 to (past the adapter's
    /// own retries) is written once GitHub answers again; one it refuses
    /// for good (422) is not tried again.
    #[tokio::test]
    async fn a_status_github_failed_to_take_is_written_when_it_answers_again() {
        let (dir, hub, [main, other]) = hub_with_two_commits().await;
        let (tx, _shared, writer) = writer_against(&hub, dir.path(), Some(0));
        let repo = RepoName::parse("o/r").unwrap();
        let fail = |sha: &Sha, status: u16, times: u32| {
            hub.inject_fault(crate::fakehub::Fault::Status {
                method: Some("POST".into()),
                path_prefix: format!("/repos/o/r/statuses/{sha}"),
                status,
                retry_after: None,
                times,
            })
        };
        fail(&main, 502, 3);
        fail(&other, 422, 1);
        let passed = status(CommitState::Success, "Passed", Some("http://s/1/"));
        tx.send((repo.clone(), main.clone(), passed.clone(), None))
            .unwrap();
        tx.send((repo.clone(), other.clone(), passed, None))
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while hub.statuses("o/r", main.as_str()).is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let states: Vec<String> = hub
            .statuses("o/r", main.as_str())
            .into_iter()
            .map(|s| s.state)
            .collect();
        assert_eq!(states, vec!["success"]);
        // Three retries' worth of waiting later, the refused one was tried
        // once.
        tokio::time::sleep(retry_wait(1) + retry_wait(2) + retry_wait(3)).await;
        let posts = |sha: &Sha| {
            hub.requests()
                .iter()
                .filter(|r| r.method == "POST" && r.path.contains(sha.as_str()))
                .count()
        };
        assert_eq!(posts(&main), 4, "3 answered 502, then written");
        assert_eq!(posts(&other), 1);
        assert!(hub.statuses("o/r", other.as_str()).is_empty());
        drop(tx);
        writer.await.unwrap();
    }

    /// Real HTTP: the writer, the GitHub adapter and the fake GitHub.
    #[tokio::test]
    async fn an_identical_status_for_a_commit_is_not_sent_again() {
        let (dir, hub, [main, other]) = hub_with_two_commits().await;
        let (tx, shared, writer) = writer_against(&hub, dir.path(), None);
        let repo = RepoName::parse("o/r").unwrap();
        let pending = status(CommitState::Pending, "Testing", Some("http://s/1/"));
        let passed = status(CommitState::Success, "Passed", Some("http://s/1/"));
        // One update at a time, each followed by a marker on another
        // commit: once the marker is posted, the update before it was
        // decided (the writer keeps order).
        let mut markers = 0;
        let mut send = |s: &CommitStatus| {
            tx.send((repo.clone(), main.clone(), s.clone(), None))
                .unwrap();
            markers += 1;
            let marker = status(CommitState::Pending, &format!("marker {markers}"), None);
            tx.send((repo.clone(), other.clone(), marker, None))
                .unwrap();
            markers
        };
        for s in [&pending, &pending, &passed, &passed, &pending] {
            let n = send(s);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while hub.statuses("o/r", other.as_str()).len() < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "marker {n} not posted"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let states: Vec<String> = hub
            .statuses("o/r", main.as_str())
            .into_iter()
            .map(|s| s.state)
            .collect();
        // The repeats were skipped; flipping back to pending is a change.
        assert_eq!(states, vec!["pending", "success", "pending"]);
        let posts = hub
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.contains(main.as_str()))
            .count();
        assert_eq!(posts, 3);
        // The budget reached the metrics: 8 POSTs counted by the fake.
        let deadline = tokio::time::Instant::now() + BUDGET_MIRROR * 3;
        loop {
            let text = shared.metrics.encode();
            let remaining = format!(
                "sluice_github_rate_limit_remaining {}",
                hub.rate_limit_remaining()
            );
            if text.contains(&remaining)
                && text.contains("sluice_github_rate_limit_limit 5000")
                && text.contains("sluice_github_requests_total{kind=\"counted\"} 8")
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "metrics: {text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(hub.rate_limit_used(), 8);
        // A pending status replaced within the hold is never written; a
        // final one is written at once.
        let testing = status(CommitState::Pending, "Testing again", Some("http://s/2/"));
        let failed = status(CommitState::Failure, "Failed", Some("http://s/2/"));
        tx.send((repo.clone(), main.clone(), testing, None))
            .unwrap();
        tx.send((repo.clone(), main.clone(), failed, None)).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while hub.statuses("o/r", main.as_str()).len() < 4 {
            assert!(tokio::time::Instant::now() < deadline, "failure not posted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(PENDING_HOLD * 2).await;
        let states: Vec<String> = hub
            .statuses("o/r", main.as_str())
            .into_iter()
            .map(|s| s.state)
            .collect();
        assert_eq!(states, vec!["pending", "success", "pending", "failure"]);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
    }
}
