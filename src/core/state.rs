//! What the core knows. Plain data; every decision is in `machine.rs`.

use super::RepoPolicy;
use super::approval::{Approval, approval};
use super::types::*;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// The whole state of the merge queue. Serialized as its facts only; the
/// indexes are rebuilt when it is read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StateFacts")]
pub struct State {
    pub(crate) repos: BTreeMap<RepoName, RepoState>,
    /// Builds running now (started and not finished or cancelled).
    pub(crate) builds: BTreeMap<BuildId, Build>,
    pub(crate) build_prefix: String,
    pub(crate) next_build: u64,
}

/// [`State`] as stored: the same fields, without derived indexes.
#[derive(Deserialize)]
struct StateFacts {
    repos: BTreeMap<RepoName, RepoState>,
    builds: BTreeMap<BuildId, Build>,
    build_prefix: String,
    next_build: u64,
}

impl From<StateFacts> for State {
    fn from(f: StateFacts) -> State {
        let mut state = State {
            repos: f.repos,
            builds: f.builds,
            build_prefix: f.build_prefix,
            next_build: f.next_build,
        };
        for repo in state.repos.values_mut() {
            repo.rebuild_index();
        }
        state
    }
}

/// The order PRs are tested and merged in: priority label, then approved,
/// then oldest, then number.
pub type QueueKey = (Reverse<bool>, Reverse<bool>, Timestamp, u64);

/// Derived from a repository's facts so that one event costs what it
/// touches, not what the repository holds. Never serialized; rebuilt from
/// the facts (`RepoState::rebuild_index`) and kept in step by `settle`,
/// which re-files every PR marked dirty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RepoIndex {
    /// Open PRs by target branch: a moved branch touches only these.
    pub by_base: BTreeMap<String, BTreeSet<u64>>,
    /// Unapproved PRs that want a build, in queue order.
    pub waiting: BTreeSet<QueueKey>,
    /// Per target branch, approved PRs that want a build, in queue order.
    /// They wait while a merge into their branch is in flight: the target
    /// they would be tested against is about to move.
    pub waiting_approved: BTreeMap<String, BTreeSet<QueueKey>>,
    /// Per target branch, PRs that could merge now but for the branch's
    /// merge lock, in queue order.
    pub ready: BTreeMap<String, BTreeSet<QueueKey>>,
    /// Merge blocks waiting on a timer: (retry at, PR).
    pub retries: BTreeSet<(Timestamp, u64)>,
    /// Where each PR is filed, so re-filing removes exactly that.
    pub filed: BTreeMap<u64, Filed>,
    /// PRs whose facts changed since the last settle.
    pub dirty: BTreeSet<u64>,
    /// Each train's PRs in order as last settled, each with whether its
    /// landing is held (their statuses name their position and that).
    pub train_order: BTreeMap<String, Vec<(u64, bool)>>,
    /// Other repositories its PRs depend on (Depends-On; only grows): an
    /// event there settles this repository too.
    pub depends_on_repos: BTreeSet<RepoName>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filed {
    pub base: String,
    pub waiting: Option<QueueKey>,
    pub waiting_approved: Option<QueueKey>,
    pub ready: Option<QueueKey>,
    pub retry: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    pub policy: RepoPolicy,
    pub branches: BTreeMap<String, Branch>,
    pub prs: BTreeMap<u64, Pr>,
    /// Recently closed PRs and when they closed, so a late or reordered
    /// delivery does not bring them back.
    pub closed: BTreeMap<u64, Timestamp>,
    /// At most one merge in flight per target branch: after it lands, every
    /// other PR on the branch is stale.
    pub merging: BTreeMap<String, MergeInFlight>,
    /// The merge train of each target branch (train mode).
    #[serde(default)]
    pub trains: BTreeMap<String, super::train::Train>,
    /// The last car id given out.
    #[serde(default)]
    pub next_car: u64,
    /// How long its tests take lately: the train's ETA.
    #[serde(default)]
    pub test_durations: super::train::TestDurations,
    /// Branches whose train is paused or draining (absent: running).
    #[serde(default)]
    pub branch_modes: BTreeMap<String, BranchMode>,
    /// Its trains' recent PRs, landed or ejected: the planner's failure
    /// rate.
    #[serde(default)]
    pub outcomes: super::planner::Outcomes,
    /// PRs closed without being merged (the latest `UNMERGED_MEMORY`): a
    /// PR that depends on one says so.
    #[serde(default)]
    pub closed_unmerged: BTreeSet<u64>,
    /// PRs known to be merged (landed, merged, or GitHub said so; the
    /// latest `UNMERGED_MEMORY`): a PR that depends on one may land. A
    /// dependency neither open nor in one of these sets is asked about.
    #[serde(default)]
    pub closed_merged: BTreeSet<u64>,
    /// Dependencies of its PRs whose fate sluice asked GitHub about
    /// (`Action::FetchPr`), and when: asked again after `MERGE_RETRY_MS`.
    #[serde(default, with = "entries")]
    pub dependency_reads: BTreeMap<PrKey, Timestamp>,
    /// Comments whose commands were answered (the latest
    /// `ANSWERED_MEMORY` ids; GitHub's ids grow): a delivery seen twice is
    /// answered once.
    #[serde(default)]
    pub answered_comments: BTreeSet<u64>,
    /// Comments waiting for GitHub to say whether their author may write
    /// (at most `PENDING_COMMENTS`; the oldest are dropped unanswered).
    #[serde(default)]
    pub pending_comments: BTreeMap<u64, PendingComment>,
    #[serde(skip)]
    pub(crate) index: RepoIndex,
}

/// How many unmerged closed PRs a repository remembers.
pub const UNMERGED_MEMORY: usize = 10_000;
/// How many answered comment ids a repository remembers.
pub const ANSWERED_MEMORY: usize = 10_000;
/// How many comments may wait for their author's access at once.
pub const PENDING_COMMENTS: usize = 1_000;

/// A comment whose commands wait for its author's access to be known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingComment {
    pub pr: u64,
    pub author: String,
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub sha: Sha,
    /// When sluice learnt this head. `None` for a hint from a PR payload,
    /// which any real report of the branch replaces.
    pub learnt_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeInFlight {
    pub pr: u64,
    pub pair: Pair,
    /// What the history records when it lands, kept here because the PR
    /// itself may be closed (GitHub's webhook) before the answer arrives.
    pub build: BuildId,
    pub title: String,
    pub approvers: Vec<String>,
}

/// One open pull request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pr {
    pub snapshot: PrSnapshot,
    pub first_seen: Timestamp,
    /// When a fact about this PR last changed.
    pub updated_at: Timestamp,
    /// The latest decisive review of each reviewer.
    pub reviews: BTreeMap<String, ReviewFact>,
    /// Results of finished builds, by the pair they tested (a list of
    /// entries when serialized: JSON keys must be strings).
    #[serde(with = "entries")]
    pub results: BTreeMap<Pair, PairResult>,
    /// Infrastructure errors seen for a pair (retried up to the policy).
    #[serde(with = "entries")]
    pub infra_errors: BTreeMap<Pair, u32>,
    /// The build running for the current pair.
    pub build: Option<BuildId>,
    /// GitHub refused or failed to merge this pair; not retried until the
    /// pair changes, someone asks, or `retry_at` passes.
    pub merge_block: Option<MergeBlock>,
    /// The status last sent for this PR, so it is sent once per change.
    pub published: Option<PublishedStatus>,
    /// When `published` was decided (a restart writes the last minute's
    /// again).
    #[serde(default)]
    pub published_at: Option<Timestamp>,
    /// In its branch's train (train mode).
    #[serde(default)]
    pub in_train: bool,
    /// Why it left the train by itself; it re-enters with a new head or a
    /// retest.
    #[serde(default)]
    pub ejected: Option<super::train::Ejection>,
    /// Ready, but its dependencies keep it out of the train, in words
    /// (derived by the train's settle; `core/deps.rs`).
    #[serde(skip)]
    pub waits_on_dependency: Option<String>,
    /// What people asked for it in comment commands (`core/comments.rs`).
    #[serde(default, skip_serializing_if = "Asked::is_empty")]
    pub asked: Asked,
}

/// What people asked for a PR in comment commands, and who.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    /// `/merge`: land once approved and passing (needed with
    /// `land_on = "command"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<String>,
    /// `/hold`: stays out of the train (and is not merged) until `/unhold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// `/cancel`: out of the train until a `/merge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
    /// The head whose own test `/cancel` stopped: none starts again for
    /// it until a `/retest` or a `/merge` (a new head is tested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Sha>,
    /// `/priority <label>`: one of the repository's priority labels, as
    /// if the PR carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

impl Pr {
    /// Its labels, with the one a `/priority` command gave it.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.snapshot
            .labels
            .iter()
            .map(String::as_str)
            .chain(self.asked.priority.as_deref())
    }

    pub fn has_label(&self, label: &str) -> bool {
        self.labels().any(|l| l == label)
    }
}

impl Asked {
    pub fn is_empty(&self) -> bool {
        *self == Asked::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairResult {
    pub outcome: Outcome,
    pub build: BuildId,
    pub detail: String,
    pub finished_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeBlock {
    pub pair: Pair,
    pub reason: String,
    pub retry_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedStatus {
    pub sha: Sha,
    pub state: CommitState,
    pub description: String,
    pub link: Option<ResultKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub id: BuildId,
    pub candidate: Candidate,
    pub started_at: Timestamp,
}

impl State {
    /// A fresh state for the given repositories. `build_prefix` makes build
    /// ids unique across restarts (the driver passes something like the start
    /// time); it must be lowercase letters and digits.
    pub fn new(
        repos: impl IntoIterator<Item = (RepoName, RepoPolicy)>,
        build_prefix: &str,
    ) -> State {
        State {
            repos: repos
                .into_iter()
                .map(|(name, policy)| {
                    (
                        name,
                        RepoState {
                            policy,
                            branches: BTreeMap::new(),
                            prs: BTreeMap::new(),
                            closed: BTreeMap::new(),
                            closed_unmerged: BTreeSet::new(),
                            closed_merged: BTreeSet::new(),
                            dependency_reads: BTreeMap::new(),
                            answered_comments: BTreeSet::new(),
                            pending_comments: BTreeMap::new(),
                            merging: BTreeMap::new(),
                            trains: BTreeMap::new(),
                            next_car: 0,
                            test_durations: Default::default(),
                            outcomes: Default::default(),
                            branch_modes: Default::default(),
                            index: RepoIndex::default(),
                        },
                    )
                })
                .collect(),
            builds: BTreeMap::new(),
            build_prefix: build_prefix.to_string(),
            next_build: 1,
        }
    }

    /// Applies the current configuration to a restored state: new
    /// repositories are added, policies updated, removed ones dropped (with
    /// their builds, which the caller cancels). A repository whose trains
    /// are switched off loses them and its car tests (cancelled by the
    /// caller too); its PRs are merged serially from then on.
    pub fn reconfigure(
        &mut self,
        repos: impl IntoIterator<Item = (RepoName, RepoPolicy)>,
    ) -> Vec<BuildId> {
        let wanted: BTreeMap<RepoName, RepoPolicy> = repos.into_iter().collect();
        self.repos.retain(|name, _| wanted.contains_key(name));
        // Repositories whose trains were switched off: their car tests stop.
        let mut trains_off = BTreeSet::new();
        for (name, policy) in wanted {
            match self.repos.get_mut(&name) {
                Some(repo) if repo.policy != policy => {
                    if repo.trains_on() && policy.train_depth == 0 {
                        // Serial mode merges them one by one: nothing is in
                        // a train any more.
                        repo.trains.clear();
                        for pr in repo.prs.values_mut() {
                            pr.in_train = false;
                        }
                        trains_off.insert(name.clone());
                    }
                    repo.policy = policy;
                    // The policy orders and gates every PR: file them anew,
                    // and let settle look at each (statuses may change).
                    repo.rebuild_index();
                    repo.index.dirty = repo.prs.keys().copied().collect();
                }
                Some(_) => {}
                None => {
                    let fresh = State::new([(name.clone(), policy)], &self.build_prefix);
                    self.repos.extend(fresh.repos);
                }
            }
        }
        let orphaned: Vec<BuildId> = self
            .builds
            .values()
            .filter(|b| {
                !self.repos.contains_key(&b.candidate.repo)
                    || (b.candidate.car.is_some() && trains_off.contains(&b.candidate.repo))
            })
            .map(|b| b.id.clone())
            .collect();
        for id in &orphaned {
            self.builds.remove(id);
        }
        orphaned
    }

    /// Merges asked for and not yet answered: (PR, pair, target branch).
    pub fn merges_in_flight(&self) -> Vec<(PrKey, Pair, String)> {
        self.repos
            .iter()
            .flat_map(|(name, repo)| {
                repo.merging.iter().map(move |(branch, m)| {
                    (
                        PrKey {
                            repo: name.clone(),
                            number: m.pr,
                        },
                        m.pair.clone(),
                        branch.clone(),
                    )
                })
            })
            .collect()
    }

    pub fn repo(&self, name: &RepoName) -> Option<&RepoState> {
        self.repos.get(name)
    }

    pub fn repos(&self) -> impl Iterator<Item = (&RepoName, &RepoState)> {
        self.repos.iter()
    }

    pub fn pr(&self, key: &PrKey) -> Option<&Pr> {
        self.repos.get(&key.repo)?.prs.get(&key.number)
    }

    pub fn running_builds(&self) -> impl Iterator<Item = &Build> {
        self.builds.values()
    }

    pub(crate) fn new_build_id(&mut self) -> BuildId {
        let id = format!("{}-{}", self.build_prefix, self.next_build);
        self.next_build += 1;
        BuildId::parse(&id).unwrap_or_else(|_| {
            BuildId::parse(&format!("b-{}", self.next_build - 1)).expect("digits are a valid id")
        })
    }
}

impl RepoState {
    pub fn branch_head(&self, branch: &str) -> Option<&Sha> {
        self.branches.get(branch).map(|b| &b.sha)
    }

    /// The pair a PR must be tested as now: its head and its target's head.
    pub fn current_pair(&self, pr: &Pr) -> Option<Pair> {
        Some(Pair {
            head: pr.snapshot.head_sha.clone(),
            target: self.branch_head(&pr.snapshot.base_ref)?.clone(),
        })
    }

    pub fn approval(&self, pr: &Pr) -> Approval {
        approval(
            pr.reviews.values(),
            &pr.snapshot.author,
            self.policy.required_approvals,
        )
    }

    /// Re-derives the index from the facts (after a restore or a policy
    /// change).
    pub(crate) fn rebuild_index(&mut self) {
        self.index = RepoIndex::default();
        let all: Vec<u64> = self.prs.keys().copied().collect();
        for number in all {
            self.refile(number);
        }
        for (branch, train) in &self.trains {
            let order = train.status_facts();
            if !order.is_empty() {
                self.index.train_order.insert(branch.clone(), order);
            }
        }
    }

    /// Marks every PR targeting `branch` as changed.
    /// The PRs on `branch` GitHub reported as conflicting become unknown
    /// again (the branch moved: the conflict may be gone). Their test says.
    pub(crate) fn forget_conflicts(&mut self, branch: &str) {
        let Some(numbers) = self.index.by_base.get(branch) else {
            return;
        };
        for number in numbers {
            if let Some(pr) = self.prs.get_mut(number)
                && pr.snapshot.mergeable == Some(false)
            {
                pr.snapshot.mergeable = None;
            }
        }
    }

    pub(crate) fn touch_branch(&mut self, branch: &str) {
        if let Some(prs) = self.index.by_base.get(branch) {
            self.index.dirty.extend(prs.iter().copied());
        }
    }

    /// Files PR `number` in the indexes as its facts say now (or removes it
    /// if it is gone).
    /// `number` closed without being merged (bounded: the oldest numbers
    /// are forgotten first).
    pub(crate) fn remember_unmerged(&mut self, number: u64) {
        // sluice's own close of a squashed or rebased PR it landed is
        // "closed without merging" to GitHub: what sluice knows wins.
        if self.closed_merged.contains(&number) {
            return;
        }
        self.closed_unmerged.insert(number);
        while self.closed_unmerged.len() > UNMERGED_MEMORY {
            self.closed_unmerged.pop_first();
        }
    }

    /// `number` was merged (bounded like [`RepoState::remember_unmerged`]).
    pub(crate) fn remember_merged(&mut self, number: u64) {
        self.closed_unmerged.remove(&number);
        self.closed_merged.insert(number);
        while self.closed_merged.len() > UNMERGED_MEMORY {
            self.closed_merged.pop_first();
        }
    }

    pub(crate) fn refile(&mut self, number: u64) {
        let old = self.index.filed.remove(&number).unwrap_or_default();
        let index = &mut self.index;
        if !old.base.is_empty()
            && let Some(set) = index.by_base.get_mut(&old.base)
        {
            set.remove(&number);
            if set.is_empty() {
                index.by_base.remove(&old.base);
            }
        }
        if let Some(key) = old.waiting {
            index.waiting.remove(&key);
        }
        if let Some(key) = old.waiting_approved {
            remove_from(&mut index.waiting_approved, &old.base, &key);
        }
        if let Some(key) = old.ready
            && let Some(set) = index.ready.get_mut(&old.base)
        {
            set.remove(&key);
            if set.is_empty() {
                index.ready.remove(&old.base);
            }
        }
        if let Some(at) = old.retry {
            index.retries.remove(&(at, number));
        }
        let Some(pr) = self.prs.get(&number) else {
            return;
        };
        for dep in &pr.snapshot.depends_on {
            if dep.repo != pr.snapshot.key.repo && !self.index.depends_on_repos.contains(&dep.repo)
            {
                self.index.depends_on_repos.insert(dep.repo.clone());
            }
        }
        let key = self.queue_key(pr);
        // A draft cannot land: it need not wait for a merge to be tested.
        let approved = key.1.0 && !pr.snapshot.draft;
        let base = pr.snapshot.base_ref.clone();
        let wants_build = super::machine::wants_build(self, pr);
        let ready = super::machine::ready_but_for_lock(self, pr);
        let stale_dependency_wait = !ready && pr.waits_on_dependency.is_some();
        let filed = Filed {
            waiting: (wants_build && !approved).then_some(key),
            waiting_approved: (wants_build && approved).then_some(key),
            ready: ready.then_some(key),
            retry: pr.merge_block.as_ref().and_then(|b| b.retry_at),
            base,
        };
        if stale_dependency_wait {
            // Only a ready PR waits on its dependencies.
            self.prs.get_mut(&number).expect("open").waits_on_dependency = None;
        }
        let index = &mut self.index;
        index
            .by_base
            .entry(filed.base.clone())
            .or_default()
            .insert(number);
        if let Some(key) = filed.waiting {
            index.waiting.insert(key);
        }
        if let Some(key) = filed.waiting_approved {
            index
                .waiting_approved
                .entry(filed.base.clone())
                .or_default()
                .insert(key);
        }
        if let Some(key) = filed.ready {
            index
                .ready
                .entry(filed.base.clone())
                .or_default()
                .insert(key);
        }
        if let Some(at) = filed.retry {
            index.retries.insert((at, number));
        }
        index.filed.insert(number, filed);
    }

    /// Tested first: priority label, then approved, then oldest.
    pub fn queue_key(&self, pr: &Pr) -> QueueKey {
        let priority = pr.labels().any(|l| {
            self.policy.priority_labels.iter().any(|p| p == l)
                || self.policy.urgent_label.as_deref() == Some(l)
        });
        (
            Reverse(priority),
            Reverse(self.approval(pr).approved()),
            pr.snapshot.created_at,
            pr.snapshot.key.number,
        )
    }

    /// The result for the PR's current pair, if it has one.
    pub fn current_result<'a>(&self, pr: &'a Pr) -> Option<&'a PairResult> {
        pr.results.get(&self.current_pair(pr)?)
    }

    /// A merge train gates this repository (`train_depth > 0`).
    pub fn trains_on(&self) -> bool {
        self.policy.train_depth > 0
    }

    /// The PR's own test result that counts now: for the current pair in
    /// serial mode; in train mode, for the current head on any target (the
    /// train tests what lands; the PR's own test is early feedback, once
    /// per head), the current target's if there is one.
    pub fn own_result<'a>(&self, pr: &'a Pr) -> Option<&'a PairResult> {
        self.own_tested(pr).map(|(_, r)| r)
    }

    /// [`RepoState::own_result`] with the pair it tested (in train mode
    /// not necessarily the current one).
    pub fn own_tested<'a>(&self, pr: &'a Pr) -> Option<(&'a Pair, &'a PairResult)> {
        let current = self
            .current_pair(pr)
            .and_then(|pair| pr.results.get_key_value(&pair));
        if current.is_some() || !self.trains_on() {
            return current;
        }
        pr.results
            .iter()
            .filter(|(pair, _)| pair.head == pr.snapshot.head_sha)
            .max_by_key(|(_, r)| r.finished_at)
    }
}

fn remove_from<T: Ord>(map: &mut BTreeMap<String, BTreeSet<T>>, key: &str, item: &T) {
    if let Some(set) = map.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// A map serialized as a list of `[key, value]` entries, for keys JSON
/// cannot hold (structs).
mod entries {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}
