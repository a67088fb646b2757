//! What the JSON endpoints show, derived from the state (never stored twice).

use super::machine::why_not_mergeable;
use super::state::*;
use super::train::CarState;
use super::types::*;
use serde::Serialize;

/// Where a PR stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The head of the target branch is not known yet.
    WaitingForTarget,
    /// GitHub reports a merge conflict; not tested.
    Conflict,
    Queued,
    /// A `/cancel` stopped its test of this head: none starts by itself
    /// (a `/retest`, a `/merge` or a push tests it again).
    Cancelled,
    Testing,
    Passed,
    Failed,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildView {
    pub id: BuildId,
    pub pair: Pair,
    /// `running` or the outcome.
    pub state: String,
    /// Where its results live; the HTTP layer turns this into a URL.
    #[serde(skip)]
    pub result_key: ResultKey,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrView {
    pub repo: RepoName,
    pub number: u64,
    pub title: String,
    pub author: String,
    pub head_ref: String,
    pub head_sha: Sha,
    pub target_branch: String,
    pub target_sha: Option<Sha>,
    pub phase: Phase,
    pub approved: bool,
    pub approvers: Vec<String>,
    pub changes_requested_by: Vec<String>,
    pub required_approvals: u32,
    pub draft: bool,
    pub merging: bool,
    /// The build for the current pair (running or finished).
    pub build: Option<BuildView>,
    /// Why it is not merging now; empty when it is ready.
    pub waiting_on: Vec<String>,
    /// Train mode: why it left the train by itself with this head, if it
    /// did (`stage`: build, test or checks; `kind`; `message`).
    pub ejected: Option<EjectionView>,
    /// Train mode: its place in its branch's train (0 = first).
    pub train_position: Option<usize>,
    /// Train mode: when it is expected to land, in seconds from the
    /// train's last change (from the mean of recent test durations).
    pub eta_secs: Option<u64>,
    /// What is being tried again for it, if anything (`stage`: test or
    /// land; `kind`: infrastructure, land_refused, checks_pending;
    /// `message`): never a test failure, which ejects.
    pub retrying: Option<RetryView>,
    /// The PRs its description says it depends on (`Depends-On:` lines):
    /// `#N` in its own repository, `owner/name#N` in another.
    pub depends_on: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetryView {
    pub stage: &'static str,
    pub kind: super::train::RetryKind,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EjectionView {
    pub stage: &'static str,
    pub kind: super::train::EjectKind,
    pub message: String,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::WaitingForTarget,
        Phase::Conflict,
        Phase::Queued,
        Phase::Cancelled,
        Phase::Testing,
        Phase::Passed,
        Phase::Failed,
        Phase::Error,
    ];

    /// Its name in the JSON (`waiting_for_target`, `queued`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Phase::WaitingForTarget => "waiting_for_target",
            Phase::Conflict => "conflict",
            Phase::Queued => "queued",
            Phase::Cancelled => "cancelled",
            Phase::Testing => "testing",
            Phase::Passed => "passed",
            Phase::Failed => "failed",
            Phase::Error => "error",
        }
    }

    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// How many PRs are in each state (every state named, zeros included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseCounts([(Phase, usize); Phase::ALL.len()]);

impl Default for PhaseCounts {
    fn default() -> Self {
        PhaseCounts(Phase::ALL.map(|p| (p, 0)))
    }
}

impl PhaseCounts {
    pub fn add(&mut self, phase: Phase) {
        if let Some(slot) = self.0.iter_mut().find(|(p, _)| *p == phase) {
            slot.1 += 1;
        }
    }

    pub fn get(&self, phase: Phase) -> usize {
        self.0.iter().find(|(p, _)| *p == phase).map_or(0, |s| s.1)
    }

    /// Every state with its count, in [`Phase::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (Phase, usize)> + '_ {
        self.0.iter().copied()
    }
}

impl FromIterator<Phase> for PhaseCounts {
    fn from_iter<I: IntoIterator<Item = Phase>>(phases: I) -> Self {
        let mut counts = PhaseCounts::default();
        phases.into_iter().for_each(|p| counts.add(p));
        counts
    }
}

impl PrView {
    pub fn passing(&self) -> bool {
        self.phase == Phase::Passed
    }
    pub fn ready_for_merge(&self) -> bool {
        self.passing() && self.approved && !self.draft
    }
}

impl State {
    /// Every tracked PR, by repository and number.
    pub fn pr_views(&self) -> Vec<PrView> {
        self.pr_views_iter().collect()
    }

    /// [`State::pr_views`], one view at a time.
    pub fn pr_views_iter(&self) -> impl Iterator<Item = PrView> + '_ {
        self.repos
            .values()
            .flat_map(move |repo| repo.prs.values().map(move |pr| self.pr_view(repo, pr)))
    }

    pub fn pr_view_of(&self, key: &PrKey) -> Option<PrView> {
        let repo = self.repos.get(&key.repo)?;
        Some(self.pr_view(repo, repo.prs.get(&key.number)?))
    }

    /// Every tracked PR's repository and state, in [`State::pr_views`]'s
    /// order, without the rest of the view (for counting).
    pub fn pr_phases_iter(&self) -> impl Iterator<Item = (&RepoName, Phase)> + '_ {
        self.repos.iter().flat_map(|(name, repo)| {
            repo.prs.values().map(move |pr| {
                let has_pair = repo.current_pair(pr).is_some();
                let result = repo.own_result(pr);
                (name, phase_of(pr, has_pair, result))
            })
        })
    }

    fn pr_view(&self, repo: &RepoState, pr: &Pr) -> PrView {
        let pair = repo.current_pair(pr);
        // The result that counts now: the current pair's, or in train mode
        // the head's on an earlier target (its own test is per head there).
        let tested = repo.own_tested(pr);
        let result = tested.map(|(_, r)| r);
        let phase = phase_of(pr, pair.is_some(), result);
        let key_for = |build: &BuildId| ResultKey {
            repo: pr.snapshot.key.repo.clone(),
            pr: pr.snapshot.key.number,
            head: pr.snapshot.head_sha.clone(),
            build: build.clone(),
        };
        let build = match (tested, &pr.build) {
            (Some((tested, r)), _) => Some(BuildView {
                id: r.build.clone(),
                pair: tested.clone(),
                state: serde_json::to_value(r.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                result_key: key_for(&r.build),
            }),
            (None, Some(id)) => self.builds.get(id).and_then(|b| {
                Some(BuildView {
                    id: id.clone(),
                    pair: b.candidate.pair()?,
                    state: "running".into(),
                    result_key: key_for(id),
                })
            }),
            _ => None,
        };
        let approval = repo.approval(pr);
        PrView {
            repo: pr.snapshot.key.repo.clone(),
            number: pr.snapshot.key.number,
            title: pr.snapshot.title.clone(),
            author: pr.snapshot.author.clone(),
            head_ref: pr.snapshot.head_ref.clone(),
            head_sha: pr.snapshot.head_sha.clone(),
            target_branch: pr.snapshot.base_ref.clone(),
            target_sha: pair.as_ref().map(|p| p.target.clone()),
            phase,
            approved: approval.approved(),
            approvers: approval.approvers.clone(),
            changes_requested_by: approval.blockers.clone(),
            required_approvals: approval.required,
            draft: pr.snapshot.draft,
            merging: repo
                .merging
                .get(&pr.snapshot.base_ref)
                .is_some_and(|m| m.pr == pr.snapshot.key.number),
            build,
            waiting_on: why_not_mergeable(repo, pr),
            ejected: pr
                .ejected
                .as_ref()
                .filter(|e| e.head == pr.snapshot.head_sha)
                .map(|e| EjectionView {
                    stage: e.kind.stage(),
                    kind: e.kind,
                    message: e.reason.clone(),
                }),
            train_position: repo.train_spot(pr).map(|(at, _)| at),
            eta_secs: repo.train_spot(pr).and_then(|(_, eta)| eta).map(secs),
            retrying: self.retry_of(repo, pr, pair.as_ref(), result.is_some()),
            depends_on: pr
                .snapshot
                .depends_on
                .iter()
                .map(|d| super::text::pr_reference(d, &pr.snapshot.key.repo))
                .collect(),
        }
    }
}

impl State {
    fn retry_of(
        &self,
        repo: &RepoState,
        pr: &Pr,
        pair: Option<&Pair>,
        decided: bool,
    ) -> Option<RetryView> {
        let view = |(kind, message): (super::train::RetryKind, String)| RetryView {
            stage: kind.stage(),
            kind,
            message,
        };
        if let Some(retry) = repo.train_retry(pr) {
            return Some(view(retry));
        }
        let errors = *pr.infra_errors.get(pair?)?;
        (errors > 0 && !decided).then(|| {
            let of = repo.policy.max_infra_retries + 1;
            view((
                super::train::RetryKind::Infrastructure,
                super::text::retrying(errors + 1, of),
            ))
        })
    }
}

/// One branch's train, as `GET /queue` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainView {
    pub repo: RepoName,
    pub branch: String,
    /// The target sha the first car is built on.
    pub base: Option<Sha>,
    pub cars: Vec<CarView>,
    /// The car sha being landed, if a landing is in flight.
    pub landing: Option<Sha>,
    /// Why the last landing was refused (it is retried).
    pub blocked: Option<String>,
    /// The mean of the repository's recent test durations, the ETA's base.
    pub mean_test_secs: Option<u64>,
    /// The batch size and depth the train runs with, and why ("batch 4,
    /// depth 3: p ≈ 0.06 over the last 40 PRs, 6 runners free ...").
    pub plan: Option<String>,
    /// The failure rate the planner uses (recent PRs, with its prior).
    pub failure_rate: f64,
    /// `running`, `paused` or `draining` (`POST /branch`).
    pub state: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CarView {
    pub id: u64,
    /// The PR this car adds (the car holds every PR before it too).
    pub pr: u64,
    pub head_sha: Sha,
    pub title: String,
    /// `waiting`, `building`, `built`, `testing`, `passed` or `failed`
    /// (waiting for the cars ahead to be decided).
    pub state: &'static str,
    pub sha: Option<Sha>,
    pub build: Option<BuildId>,
    /// When it is expected to land, in seconds from the train's last
    /// change; `None` until a test duration is known.
    pub eta_secs: Option<u64>,
}

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl State {
    /// Every train, by repository and branch.
    pub fn queue_view(&self) -> Vec<TrainView> {
        let mut all = Vec::new();
        for (name, repo) in &self.repos {
            for (branch, train) in &repo.trains {
                all.push(TrainView {
                    repo: name.clone(),
                    branch: branch.clone(),
                    base: train.base.clone(),
                    landing: train.landing.as_ref().map(|l| l.to.clone()),
                    blocked: train.blocked.as_ref().map(|(why, _)| why.clone()),
                    mean_test_secs: repo.test_durations.mean_ms().map(secs),
                    plan: train.plan.clone(),
                    failure_rate: repo.outcomes.failure_rate(),
                    state: repo.branch_mode(branch).as_str(),
                    cars: train
                        .cars
                        .iter()
                        .map(|c| {
                            let (state, build) = match &c.state {
                                CarState::Waiting => ("waiting", None),
                                CarState::Building { .. } => ("building", None),
                                CarState::Built { .. } => ("built", None),
                                CarState::Testing { build, .. } => ("testing", Some(build.clone())),
                                CarState::Passed { build, .. } => ("passed", Some(build.clone())),
                                CarState::Failed { build, .. } => ("failed", Some(build.clone())),
                            };
                            CarView {
                                id: c.id,
                                pr: c.pr.number,
                                head_sha: c.pr.head_sha.clone(),
                                title: c.title.clone(),
                                state,
                                sha: c.state.sha().cloned(),
                                build,
                                eta_secs: c.eta_ms.map(secs),
                            }
                        })
                        .collect(),
                });
            }
            // A paused or draining branch shows even with no train.
            for (branch, mode) in &repo.branch_modes {
                if !repo.trains.contains_key(branch) {
                    all.push(TrainView {
                        repo: name.clone(),
                        branch: branch.clone(),
                        base: repo.branch_head(branch).cloned(),
                        cars: Vec::new(),
                        landing: None,
                        blocked: None,
                        mean_test_secs: repo.test_durations.mean_ms().map(secs),
                        plan: None,
                        failure_rate: repo.outcomes.failure_rate(),
                        state: mode.as_str(),
                    });
                }
            }
        }
        all
    }
}

/// One reviewer's latest verdict on a PR, whether it counts and why: the
/// approvals section of the PR page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReviewView {
    pub reviewer: String,
    /// `approved`, `changes_requested`, `dismissed` (comments never
    /// change a verdict, so they are not kept).
    pub state: &'static str,
    /// It takes part in the approval: an approval that counts, or a change
    /// request that blocks.
    pub counts: bool,
    /// Why it counts or does not, in words.
    pub why: String,
}

impl State {
    /// The latest decisive review of each reviewer of `key`, with whether
    /// it counts (as [`super::approval::approval`] decided) and why; `None`
    /// for an untracked PR.
    pub fn review_views(&self, key: &PrKey) -> Option<Vec<ReviewView>> {
        let repo = self.repos.get(&key.repo)?;
        let pr = repo.prs.get(&key.number)?;
        let approval = repo.approval(pr);
        let author = &pr.snapshot.author;
        Some(
            pr.reviews
                .values()
                .map(|review| {
                    let who = &review.reviewer;
                    let approves = approval.approvers.contains(who);
                    let blocks = approval.blockers.contains(who);
                    let (state, decisive) = match review.state {
                        ReviewState::Approved => ("approved", true),
                        ReviewState::ChangesRequested => ("changes_requested", true),
                        ReviewState::Dismissed => ("dismissed", false),
                        ReviewState::Commented => ("commented", false),
                        ReviewState::Pending => ("pending", false),
                    };
                    let why = if approves {
                        "counts: an approval from someone with write access".to_string()
                    } else if blocks {
                        format!(
                            "blocks: changes requested by someone with write access; it counts until {who} approves or the review is dismissed"
                        )
                    } else if who == author {
                        "does not count: the author's own review".to_string()
                    } else if !review.can_write {
                        format!("does not count: {who} has no write access to {}", key.repo)
                    } else if review.state == ReviewState::Dismissed {
                        "does not count: dismissed".to_string()
                    } else if !decisive {
                        "does not count: only a comment, which does not change a verdict"
                            .to_string()
                    } else {
                        "does not count".to_string()
                    };
                    ReviewView {
                        reviewer: who.clone(),
                        state,
                        counts: approves || blocks,
                        why,
                    }
                })
                .collect(),
        )
    }

    /// When the running build `id` started, if it runs.
    pub fn build_started_at(&self, id: &BuildId) -> Option<Timestamp> {
        self.builds.get(id).map(|b| b.started_at)
    }
}

/// A PR's state from its current pair (if its target is known) and that
/// pair's result.
fn phase_of(pr: &Pr, has_pair: bool, result: Option<&PairResult>) -> Phase {
    match (has_pair, result, &pr.build) {
        (false, _, _) => Phase::WaitingForTarget,
        (_, Some(r), _) => match r.outcome {
            Outcome::Passed => Phase::Passed,
            Outcome::Failed => Phase::Failed,
            Outcome::Error => Phase::Error,
        },
        (_, None, Some(_)) => Phase::Testing,
        (_, None, None) if pr.snapshot.mergeable == Some(false) => Phase::Conflict,
        // What its status says too (`publish_in`).
        (_, None, None) if pr.asked.stopped.as_ref() == Some(&pr.snapshot.head_sha) => {
            Phase::Cancelled
        }
        _ => Phase::Queued,
    }
}
