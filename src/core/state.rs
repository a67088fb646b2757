//! What the core knows. Plain data; every decision is in `machine.rs`.

use super::RepoPolicy;
use super::approval::{Approval, approval};
use super::types::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole state of the merge queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub(crate) repos: BTreeMap<RepoName, RepoState>,
    /// Builds running now (started and not finished or cancelled).
    pub(crate) builds: BTreeMap<BuildId, Build>,
    pub(crate) build_prefix: String,
    pub(crate) next_build: u64,
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
    /// Results of finished builds, by the pair they tested.
    pub results: BTreeMap<Pair, PairResult>,
    /// Infrastructure errors seen for a pair (retried up to the policy).
    pub infra_errors: BTreeMap<Pair, u32>,
    /// The build running for the current pair.
    pub build: Option<BuildId>,
    /// GitHub refused or failed to merge this pair; not retried until the
    /// pair changes, someone asks, or `retry_at` passes.
    pub merge_block: Option<MergeBlock>,
    /// The status last sent for this PR, so it is sent once per change.
    pub published: Option<PublishedStatus>,
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
                            merging: BTreeMap::new(),
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
    /// their builds, which the caller cancels).
    pub fn reconfigure(
        &mut self,
        repos: impl IntoIterator<Item = (RepoName, RepoPolicy)>,
    ) -> Vec<BuildId> {
        let wanted: BTreeMap<RepoName, RepoPolicy> = repos.into_iter().collect();
        self.repos.retain(|name, _| wanted.contains_key(name));
        for (name, policy) in wanted {
            match self.repos.get_mut(&name) {
                Some(repo) => repo.policy = policy,
                None => {
                    let fresh = State::new([(name.clone(), policy)], &self.build_prefix);
                    self.repos.extend(fresh.repos);
                }
            }
        }
        let orphaned: Vec<BuildId> = self
            .builds
            .values()
            .filter(|b| !self.repos.contains_key(&b.candidate.repo))
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

    /// Tested first: priority label, then approved, then oldest.
    pub fn queue_key(
        &self,
        pr: &Pr,
    ) -> (
        std::cmp::Reverse<bool>,
        std::cmp::Reverse<bool>,
        Timestamp,
        u64,
    ) {
        let priority = pr
            .snapshot
            .labels
            .iter()
            .any(|l| self.policy.priority_labels.contains(l));
        (
            std::cmp::Reverse(priority),
            std::cmp::Reverse(self.approval(pr).approved()),
            pr.snapshot.created_at,
            pr.snapshot.key.number,
        )
    }

    /// The result for the PR's current pair, if it has one.
    pub fn current_result<'a>(&self, pr: &'a Pr) -> Option<&'a PairResult> {
        pr.results.get(&self.current_pair(pr)?)
    }
}
