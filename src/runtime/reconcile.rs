//! The periodic re-read of GitHub, so a lost webhook heals itself.
//!
//! What a re-read costs: the list pages, one branch per target, and the
//! reviews of the PRs that changed. Every GET is conditional (the adapter's
//! ETag cache), so what did not change comes back `304 Not Modified`, which
//! GitHub does not count against the rate limit; an idle re-read costs
//! (almost) nothing. On top of that, a re-read remembers per repository what
//! it saw of each PR (head and `updated_at`) and asks for reviews only where
//! something changed, so an idle re-read also sends few requests.
//!
//! Budget rule: when the forge's last reply said that less than
//! [`LOW_BUDGET_PERCENT`]% of the rate limit remains and its reset is still
//! ahead, a re-read is skipped (logged once per repository and window) until
//! the reset. Reads the core asks for (`FetchReviews`, `FetchPr`,
//! `FetchBranch`) do not pass through here and still go out.

use super::store::Inlet;
use super::{Input, now};
use crate::core::{Event, PrKey, RepoName, Sha, Timestamp};
use crate::forge::{ApiBudget, Forge, ForgeError, ListedPr};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// Below this share of the limit, in percent, re-reads wait for the reset.
pub const LOW_BUDGET_PERCENT: u64 = 10;
/// Every PR's reviews are re-read at least this often even when the PR did
/// not change (each a conditional GET: free if nothing changed), so what
/// the PR's `updated_at` does not show (a reviewer losing write access) is
/// picked up.
pub const REVIEWS_REFRESH: Duration = Duration::from_secs(30 * 60);

/// What the re-reads remember between runs, per repository. Plumbing, not
/// a decision: it only saves asking GitHub for what cannot have changed.
#[derive(Default)]
pub struct ReconcileMemory {
    repos: Mutex<HashMap<RepoName, RepoMemory>>,
}

#[derive(Default)]
struct RepoMemory {
    prs: HashMap<u64, Seen>,
    /// When every listed PR's reviews were last re-read.
    last_full: Option<Instant>,
    /// The reset (Unix seconds) of the window re-reads wait for, once the
    /// pause was logged.
    paused_until: Option<u64>,
}

/// A PR as the last re-read that read its reviews saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    head: Sha,
    updated_at: Timestamp,
    /// Read again next time even if unchanged: `updated_at` has whole
    /// seconds, so a change later in the same second as the one seen looks
    /// the same. The next re-read (a conditional GET) settles it.
    confirm: bool,
}

impl ReconcileMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RepoName, RepoMemory>> {
        self.repos.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Which listed PRs need their reviews read, and whether this is a full
    /// refresh. Forgets PRs no longer listed.
    fn plan(&self, repo: &RepoName, listed: &[ListedPr]) -> (Vec<ListedPr>, bool) {
        let mut repos = self.lock();
        let memory = repos.entry(repo.clone()).or_default();
        let numbers: HashSet<u64> = listed.iter().map(|l| l.snapshot.key.number).collect();
        memory.prs.retain(|n, _| numbers.contains(n));
        let full = memory
            .last_full
            .is_none_or(|at| at.elapsed() >= REVIEWS_REFRESH);
        let to_read = listed
            .iter()
            .filter(|l| {
                full || match (l.updated_at, memory.prs.get(&l.snapshot.key.number)) {
                    (Some(updated_at), Some(seen)) => {
                        seen.confirm
                            || seen.updated_at != updated_at
                            || seen.head != l.snapshot.head_sha
                    }
                    _ => true,
                }
            })
            .cloned()
            .collect();
        (to_read, full)
    }

    /// The reviews of `pr` were read and handed to the core.
    fn read(&self, pr: &ListedPr) {
        let Some(updated_at) = pr.updated_at else {
            return;
        };
        let mut repos = self.lock();
        let memory = repos.entry(pr.snapshot.key.repo.clone()).or_default();
        let number = pr.snapshot.key.number;
        let unchanged = memory
            .prs
            .get(&number)
            .is_some_and(|s| s.updated_at == updated_at && s.head == pr.snapshot.head_sha);
        memory.prs.insert(
            number,
            Seen {
                head: pr.snapshot.head_sha.clone(),
                updated_at,
                confirm: !unchanged,
            },
        );
    }

    fn finished_full(&self, repo: &RepoName, at: Instant) {
        self.lock().entry(repo.clone()).or_default().last_full = Some(at);
    }

    /// Records a pause until `reset`; true if it is new (to be logged).
    fn pause(&self, repo: &RepoName, reset: u64) -> bool {
        let mut repos = self.lock();
        let memory = repos.entry(repo.clone()).or_default();
        let new = memory.paused_until != Some(reset);
        memory.paused_until = Some(reset);
        new
    }

    /// Ends a pause; true if there was one.
    fn resume(&self, repo: &RepoName) -> bool {
        self.lock()
            .get_mut(repo)
            .and_then(|m| m.paused_until.take())
            .is_some()
    }
}

/// The reset to wait for if the budget is low at `now_unix` (see the
/// module's rule); `None` if a re-read may go ahead.
pub fn low_budget_until(budget: Option<ApiBudget>, now_unix: u64) -> Option<u64> {
    let budget = budget?;
    let (limit, remaining, reset) = (budget.limit?, budget.remaining?, budget.reset_unix?);
    let low = u128::from(remaining) * 100 < u128::from(limit) * u128::from(LOW_BUDGET_PERCENT);
    (low && reset > now_unix).then_some(reset)
}

/// One re-read of a repository: open PRs, their target heads, the reviews
/// of the PRs that changed. `memory` (the driver's) is what it saw last
/// time, and is updated for the next re-read.
pub async fn reconcile(
    forge: &dyn Forge,
    repo: &RepoName,
    inputs: &Inlet,
    memory: &ReconcileMemory,
) -> Result<(), ForgeError> {
    let budget = forge.api_budget();
    if let Some(reset) = low_budget_until(budget, unix_now()) {
        if memory.pause(repo, reset) {
            let b = budget.unwrap_or_default();
            warn!(
                %repo,
                remaining = b.remaining,
                limit = b.limit,
                reset_in_secs = reset.saturating_sub(unix_now()),
                "GitHub API budget is low: periodic re-reads wait for its reset"
            );
        }
        return Ok(());
    }
    if memory.resume(repo) {
        info!(%repo, "GitHub API budget was reset: periodic re-reads resume");
    }
    let started_at = now();
    let started = Instant::now();
    let listed = forge.list_open_pr_listings(repo).await?;
    let bases: BTreeSet<String> = listed.iter().map(|l| l.snapshot.base_ref.clone()).collect();
    let mut branches = Vec::new();
    for base in bases {
        if let Some(sha) = forge.branch_head(repo, &base).await? {
            branches.push((base, sha));
        }
    }
    let (to_read, full) = memory.plan(repo, &listed);
    let prs = listed.into_iter().map(|l| l.snapshot).collect();
    let _ = inputs
        .send(Input::Event(Event::Reconciled {
            repo: repo.clone(),
            started_at,
            prs,
            branches,
        }))
        .await;
    for listed in to_read {
        let pr: PrKey = listed.snapshot.key.clone();
        let reviews = forge.reviews(&pr).await?;
        let _ = inputs
            .send(Input::Event(Event::Reviews { pr, reviews }))
            .await;
        memory.read(&listed);
    }
    if full {
        memory.finished_full(repo, started);
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PrSnapshot;

    fn listed(number: u64, head: char, updated: u64) -> ListedPr {
        ListedPr {
            snapshot: PrSnapshot {
                key: PrKey {
                    repo: RepoName::parse("o/r").unwrap(),
                    number,
                },
                head_sha: Sha::parse(&head.to_string().repeat(40)).unwrap(),
                head_ref: format!("b{number}"),
                base_ref: "main".into(),
                base_sha: None,
                title: String::new(),
                author: "a".into(),
                draft: false,
                mergeable: None,
                labels: Vec::new(),
                created_at: Timestamp(0),
                depends_on: Vec::new(),
            },
            updated_at: Some(Timestamp(updated)),
        }
    }

    fn numbers(prs: &[ListedPr]) -> Vec<u64> {
        prs.iter().map(|l| l.snapshot.key.number).collect()
    }

    /// Runs one planned re-read, marking everything planned as read.
    fn run(m: &ReconcileMemory, prs: &[ListedPr]) -> (Vec<u64>, bool) {
        let repo = RepoName::parse("o/r").unwrap();
        let (to_read, full) = m.plan(&repo, prs);
        for l in &to_read {
            m.read(l);
        }
        if full {
            m.finished_full(&repo, Instant::now());
        }
        (numbers(&to_read), full)
    }

    #[test]
    fn reviews_are_reread_only_for_new_or_changed_prs_and_once_more_after() {
        let m = ReconcileMemory::default();
        let prs = vec![listed(1, 'a', 1000), listed(2, 'b', 1000)];
        assert_eq!(run(&m, &prs), (vec![1, 2], true), "first: everything");
        assert_eq!(run(&m, &prs), (vec![1, 2], false), "confirming read");
        assert_eq!(run(&m, &prs), (vec![], false), "idle");
        // #1 gets a review (updated_at moves), #2 a new head, #3 opens.
        let prs = vec![
            listed(1, 'a', 2000),
            listed(2, 'c', 1000),
            listed(3, 'd', 5),
        ];
        assert_eq!(run(&m, &prs), (vec![1, 2, 3], false));
        assert_eq!(run(&m, &prs), (vec![1, 2, 3], false));
        assert_eq!(run(&m, &prs), (vec![], false));
        // A PR without updated_at is always read.
        let mut unknown = listed(4, 'e', 0);
        unknown.updated_at = None;
        let prs = vec![listed(1, 'a', 2000), unknown];
        assert_eq!(run(&m, &prs), (vec![4], false));
        assert_eq!(run(&m, &prs), (vec![4], false));
        assert_eq!(m.lock()[&RepoName::parse("o/r").unwrap()].prs.len(), 1);
    }

    #[test]
    fn a_failed_read_is_tried_again() {
        let m = ReconcileMemory::default();
        let repo = RepoName::parse("o/r").unwrap();
        let prs = vec![listed(1, 'a', 1000), listed(2, 'b', 1000)];
        let (to_read, _) = m.plan(&repo, &prs);
        m.read(&to_read[0]); // #2's read failed: the re-read stopped there
        let (to_read, _) = m.plan(&repo, &prs);
        assert_eq!(numbers(&to_read), vec![1, 2]);
    }

    #[test]
    fn a_full_refresh_rereads_everything_when_due() {
        let m = ReconcileMemory::default();
        let prs = vec![listed(1, 'a', 1000)];
        run(&m, &prs);
        run(&m, &prs);
        assert_eq!(run(&m, &prs), (vec![], false));
        m.finished_full(
            &RepoName::parse("o/r").unwrap(),
            Instant::now() - REVIEWS_REFRESH,
        );
        assert_eq!(run(&m, &prs), (vec![1], true));
    }

    #[test]
    fn the_budget_rule() {
        let b = |remaining, reset| {
            Some(ApiBudget {
                limit: Some(5000),
                remaining: Some(remaining),
                reset_unix: Some(reset),
                ..ApiBudget::default()
            })
        };
        assert_eq!(low_budget_until(None, 100), None);
        assert_eq!(low_budget_until(b(500, 200), 100), None, "10% is enough");
        assert_eq!(low_budget_until(b(499, 200), 100), Some(200));
        assert_eq!(low_budget_until(b(0, 200), 100), Some(200));
        assert_eq!(low_budget_until(b(0, 100), 100), None, "reset passed");
        let unknown = Some(ApiBudget {
            remaining: Some(0),
            ..ApiBudget::default()
        });
        assert_eq!(low_budget_until(unknown, 100), None);
    }

    #[test]
    fn pauses_are_logged_once_per_window() {
        let m = ReconcileMemory::default();
        let repo = RepoName::parse("o/r").unwrap();
        assert!(m.pause(&repo, 200));
        assert!(!m.pause(&repo, 200));
        assert!(m.pause(&repo, 300));
        assert!(m.resume(&repo));
        assert!(!m.resume(&repo));
    }
}
