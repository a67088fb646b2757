//! The decisions: `State::handle(event, now) -> actions`.
//!
//! Handlers record facts; `settle` then derives everything else from the
//! facts, level-triggered: cancel builds whose pair went stale, start builds
//! in queue order up to the bound, publish statuses that changed, and merge
//! what is approved and passed. Handling the same fact twice changes nothing.

use super::PrTests;
use super::action::*;
use super::approval::latest_per_reviewer;
use super::event::Event;
use super::state::*;
use super::text;
use super::train::{EjectKind, RetryKind};
use super::types::*;

/// How sluice heard of a PR's snapshot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Heard {
    Opened,
    Updated,
    Reopened,
}

/// How long a closed PR is remembered, so a late delivery about it is ignored.
pub const CLOSED_MEMORY_MS: u64 = 10 * 60 * 1000;
/// How long a merge that failed for a passing reason (timeouts, 5xx) waits
/// before it is tried again.
pub const MERGE_RETRY_MS: u64 = 60 * 1000;
/// How often a landing waiting for other required checks looks again.
pub const CHECKS_POLL_MS: u64 = 5 * 1000;
/// How long a landing GitHub refused because the target moved waits for
/// sluice to learn the new head before it is asked for again as it was.
pub const LAND_MOVED_RETRY_MS: u64 = 15 * 1000;
/// After a restart, the statuses decided this long before the last one
/// are written again: they may have died unwritten with the old process.
pub const REPUBLISH_WINDOW_MS: u64 = 60 * 1000;

impl State {
    /// Applies one event at time `now` and returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        if let Event::BuildsLost { builds } = event {
            for id in builds {
                let Some(build) = self.builds.get(&id) else {
                    continue;
                };
                let repo = build.candidate.repo.clone();
                if build.candidate.car.is_some() {
                    let branch = build.candidate.target_branch.clone();
                    self.car_build_lost(&repo, &branch, &id);
                    self.builds.remove(&id);
                    continue;
                }
                let number = build.candidate.first_pr().map(|p| p.number);
                if let Some(pr) = number.and_then(|n| self.repos.get_mut(&repo)?.prs.get_mut(&n)) {
                    pr.build = None;
                }
                self.mark(&repo, number);
                self.cancel_build(id, text::lost_on_restart(), now, &mut out);
            }
            // The executor no longer has them: nothing to cancel there.
            out.retain(|a| !matches!(a, Action::CancelBuild { .. }));
            let names: Vec<RepoName> = self.repos.keys().cloned().collect();
            for name in names {
                self.settle(&name, now, &mut out);
            }
            return out;
        }
        if let Event::Restarted = event {
            self.on_restarted(now, &mut out);
            return out;
        }
        let Some(repo) = event.repo().cloned() else {
            // Tick: timers of every repository.
            let names: Vec<RepoName> = self.repos.keys().cloned().collect();
            for name in names {
                self.expire_timers(&name, now);
                self.settle(&name, now, &mut out);
            }
            return out;
        };
        if !self.repos.contains_key(&repo) {
            if let Event::Retest { request, .. } | Event::TryMerge { request, .. } = event {
                out.push(Action::Reply {
                    request,
                    answer: Answer::UnknownPr,
                });
            } else if let Event::SetBranchMode { request, repo, .. } = event {
                out.push(Action::Reply {
                    request,
                    answer: Answer::UnknownRepo { repo },
                });
            }
            return out;
        }
        match event {
            Event::PrUpdated(snapshot) => {
                self.on_pr_snapshot(snapshot, Heard::Updated, now, &mut out)
            }
            Event::PrOpened(snapshot) => {
                self.on_pr_snapshot(snapshot, Heard::Opened, now, &mut out)
            }
            Event::PrReopened(snapshot) => {
                self.on_pr_snapshot(snapshot, Heard::Reopened, now, &mut out)
            }
            Event::PrClosed(key) => {
                let repo = self.repos.get_mut(&key.repo).expect("checked above");
                repo.remember_merged(key.number);
                // A PR sluice never tracked is not kept out by the closed
                // memory: GitHub's answer for a number with no PR yet (a
                // `Depends-On` naming a future PR) is a 404, read as closed.
                if repo.prs.contains_key(&key.number) {
                    self.close_pr(&key, now, &mut out)
                }
            }
            Event::PrClosedUnmerged(key) => {
                if let Some(repo) = self.repos.get_mut(&key.repo) {
                    repo.remember_unmerged(key.number);
                }
                self.close_pr(&key, now, &mut out)
            }
            Event::ReviewActivity(key) => {
                if self.pr(&key).is_some() {
                    out.push(Action::FetchReviews { pr: key });
                }
            }
            Event::Reviews { pr, reviews } => {
                if let Some(p) = self.pr_mut(&pr) {
                    let latest = latest_per_reviewer(reviews);
                    if p.reviews != latest {
                        p.reviews = latest;
                        p.updated_at = now;
                        self.mark(&pr.repo, Some(pr.number));
                    }
                }
            }
            // sluice's own staging branches (train cars) are no target.
            Event::BranchMoved { branch, .. } | Event::BranchDeleted { branch, .. }
                if branch.starts_with(super::train::STAGING_PREFIX) => {}
            Event::BranchMoved {
                repo,
                branch,
                sha,
                before,
            } => self.on_push(&repo, branch, sha, before, now, &mut out),
            Event::BranchRead {
                repo,
                branch,
                sha,
                as_of,
            } => {
                let newer = self.repos[&repo]
                    .branches
                    .get(&branch)
                    .is_some_and(|b| b.learnt_at.is_some_and(|t| t >= as_of));
                match sha {
                    _ if newer => {}
                    Some(sha) => self.set_branch(&repo, branch, sha, now),
                    None => self.remove_branch(&repo, &branch),
                }
            }
            Event::BranchDeleted { repo, branch } => self.remove_branch(&repo, &branch),
            Event::Reconciled {
                repo,
                started_at,
                prs,
                branches,
            } => self.on_reconciled(&repo, started_at, prs, branches, now, &mut out),
            Event::JobFinished {
                build,
                candidate,
                report,
            } => self.on_job_finished(build, candidate, report, now, &mut out),
            Event::MergeFinished { pr, pair, result } => {
                self.on_merge_finished(pr, pair, result, now, &mut out)
            }
            Event::CarBuilt {
                repo,
                branch,
                car,
                parent,
                sha,
            } => self.on_car_built(&repo, &branch, car, &parent, sha),
            Event::CarConflict {
                repo,
                branch,
                car,
                message,
            } => self.on_car_conflict(&repo, &branch, car, message, now, &mut out),
            Event::CarBuildFailed { repo, branch, car } => {
                self.on_car_build_failed(&repo, &branch, car)
            }
            Event::Landed { repo, branch, sha } => {
                self.on_landed(&repo, &branch, sha, now, &mut out)
            }
            Event::LandRefused {
                repo,
                branch,
                moved,
                reason,
            } => self.on_land_refused(&repo, &branch, moved, reason, now, &mut out),
            Event::LandWaiting {
                repo,
                branch,
                pending,
            } => self.on_land_waiting(&repo, &branch, &pending, now, &mut out),
            Event::CarCheckFailed {
                repo,
                branch,
                car,
                context,
                description,
            } => {
                self.on_car_check_failed(&repo, &branch, car, &context, &description, now, &mut out)
            }
            Event::SetBranchMode {
                repo,
                branch,
                mode,
                request,
            } => self.on_set_branch_mode(&repo, branch, mode, request, now, &mut out),
            Event::LandingLost { repo, branch } => self.on_landing_lost(&repo, &branch),
            Event::Retest { pr, request } => self.on_retest(pr, request, now, &mut out),
            Event::TryMerge { pr, request } => self.on_try_merge(pr, request, now, &mut out),
            Event::Commented {
                pr,
                comment,
                author,
                body,
            } => self.on_commented(pr, comment, author, body, now, &mut out),
            Event::WriteAccess {
                repo,
                comment,
                can_write,
            } => self.on_write_access(&repo, comment, can_write, now, &mut out),
            Event::Rerun { pr, head } => {
                let current = self
                    .repos
                    .get(&pr.repo)
                    .and_then(|r| r.prs.get(&pr.number))
                    .is_some_and(|p| p.snapshot.head_sha == head);
                if current {
                    let _ = self.retest(&pr, now, &mut out);
                }
            }
            Event::Tick | Event::BuildsLost { .. } | Event::Restarted => {
                unreachable!("handled above: they have no repository")
            }
        }
        self.settle(&repo, now, &mut out);
        // A PR of another repository may wait for one of this repository's
        // (Depends-On): it may enter its train now.
        let dependents: Vec<RepoName> = self
            .repos
            .iter()
            .filter(|(name, r)| **name != repo && r.index.depends_on_repos.contains(&repo))
            .map(|(name, _)| name.clone())
            .collect();
        for name in dependents {
            self.settle(&name, now, &mut out);
        }
        out
    }

    pub(crate) fn pr_mut(&mut self, key: &PrKey) -> Option<&mut Pr> {
        self.repos.get_mut(&key.repo)?.prs.get_mut(&key.number)
    }

    /// Asks the next settle of `repo` to look at PR `number` again.
    pub(crate) fn mark(&mut self, repo: &RepoName, number: Option<u64>) {
        if let (Some(r), Some(n)) = (self.repos.get_mut(repo), number) {
            r.index.dirty.insert(n);
        }
    }

    fn remove_branch(&mut self, repo: &RepoName, branch: &str) {
        if let Some(r) = self.repos.get_mut(repo)
            && r.branches.remove(branch).is_some()
        {
            r.touch_branch(branch);
        }
    }

    fn on_pr_snapshot(
        &mut self,
        snap: PrSnapshot,
        heard: Heard,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let reopened = heard == Heard::Reopened;
        let Some(repo) = self.repos.get_mut(&snap.key.repo) else {
            return;
        };
        let number = snap.key.number;
        if reopened {
            repo.closed.remove(&number);
        } else if let Some(closed_at) = repo.closed.get(&number) {
            if now.0 < closed_at.0.saturating_add(CLOSED_MEMORY_MS) {
                return; // a late delivery about a PR that has since closed
            }
            repo.closed.remove(&number);
        }
        // A PR just opened has no reviews: nothing to read.
        self.apply_snapshot(snap, now, heard != Heard::Opened, out);
    }

    /// Records what the forge says about an open PR; a PR new to sluice has
    /// its reviews read if `read_reviews`.
    fn apply_snapshot(
        &mut self,
        snap: PrSnapshot,
        now: Timestamp,
        read_reviews: bool,
        out: &mut Vec<Action>,
    ) {
        let repo = self.repos.get_mut(&snap.key.repo).expect("caller checked");
        let base = snap.base_ref.clone();
        let number = snap.key.number;
        repo.closed_unmerged.remove(&number);
        repo.closed_merged.remove(&number);
        match repo.branches.get(&base) {
            Some(_) => {}
            None => {
                if let Some(hint) = &snap.base_sha {
                    repo.touch_branch(&base);
                    repo.branches.insert(
                        base.clone(),
                        Branch {
                            sha: hint.clone(),
                            learnt_at: None,
                        },
                    );
                }
                out.push(Action::FetchBranch {
                    repo: snap.key.repo.clone(),
                    branch: base,
                });
            }
        }
        match repo.prs.get_mut(&snap.key.number) {
            Some(pr) => {
                if pr.snapshot != snap {
                    pr.snapshot = snap;
                    pr.updated_at = now;
                    repo.index.dirty.insert(number);
                }
            }
            None => {
                let key = snap.key.clone();
                repo.index.dirty.insert(number);
                repo.prs.insert(
                    key.number,
                    Pr {
                        snapshot: snap,
                        first_seen: now,
                        updated_at: now,
                        reviews: Default::default(),
                        results: Default::default(),
                        infra_errors: Default::default(),
                        build: None,
                        merge_block: None,
                        published: None,
                        published_at: None,
                        in_train: false,
                        ejected: None,
                        waits_on_dependency: None,
                        asked: Asked::default(),
                    },
                );
                if read_reviews {
                    out.push(Action::FetchReviews { pr: key });
                }
            }
        }
    }

    /// A push applies only if it continues from the head sluice knows: a
    /// late or reordered push must never move a branch back (a merge would
    /// then be tested against a target that is no longer there).
    fn on_push(
        &mut self,
        repo: &RepoName,
        branch: String,
        sha: Sha,
        before: Option<Sha>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let known = self.repos[repo].branches.get(&branch);
        let follows = match (&before, known) {
            (None, _) | (_, None) => true,
            (_, Some(k)) if k.learnt_at.is_none() => true,
            (_, Some(k)) if k.sha == sha => return, // a duplicate
            (Some(before), Some(k)) => k.sha == *before,
        };
        if follows {
            self.set_branch(repo, branch, sha, now);
        } else {
            out.push(Action::FetchBranch {
                repo: repo.clone(),
                branch,
            });
        }
    }

    pub(crate) fn set_branch(&mut self, repo: &RepoName, branch: String, sha: Sha, now: Timestamp) {
        if let Some(r) = self.repos.get_mut(repo) {
            let known = r.branches.get(&branch);
            if known.is_none_or(|b| b.sha != sha || b.learnt_at.is_none()) {
                let moved = known.is_some_and(|b| b.sha != sha);
                if known.is_none_or(|b| b.sha != sha) {
                    r.touch_branch(&branch);
                }
                if moved {
                    // GitHub's "conflict" was of the old target, and no
                    // webhook says when it is recomputed.
                    r.forget_conflicts(&branch);
                }
                r.branches.insert(
                    branch,
                    Branch {
                        sha,
                        learnt_at: Some(now),
                    },
                );
            }
        }
    }

    pub(crate) fn close_pr(&mut self, key: &PrKey, now: Timestamp, out: &mut Vec<Action>) {
        let Some(repo) = self.repos.get_mut(&key.repo) else {
            return;
        };
        repo.closed.insert(key.number, now);
        let Some(pr) = repo.prs.remove(&key.number) else {
            return;
        };
        // Out of every index at once: nothing may pick a closed PR.
        repo.refile(key.number);
        repo.index.dirty.remove(&key.number);
        if let Some(build) = pr.build {
            self.cancel_build(build, text::cancelled_closed(), now, out);
        }
    }

    pub(crate) fn cancel_build(
        &mut self,
        id: BuildId,
        why: String,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if let Some(build) = self.builds.remove(&id) {
            out.push(Action::CancelBuild { build: id.clone() });
            // A car commit's status (and check run) would otherwise stay
            // "in progress" forever: nothing else ever writes to it.
            let candidate = &build.candidate;
            if let (Some(car), Some(last)) = (&candidate.car, candidate.prs.last())
                && self
                    .repos
                    .get(&candidate.repo)
                    .is_some_and(|r| r.policy.car_statuses)
            {
                let description = text::car_cancelled(&why);
                let prs: Vec<u64> = candidate.prs.iter().map(|p| p.number).collect();
                out.push(Action::SetStatus {
                    repo: candidate.repo.clone(),
                    sha: car.clone(),
                    state: CommitState::Cancelled,
                    summary: text::car_summary(&description, &prs),
                    description,
                    link: Some(ResultKey {
                        repo: candidate.repo.clone(),
                        pr: last.number,
                        head: last.head_sha.clone(),
                        build: id.clone(),
                    }),
                });
            }
            out.push(Action::Record(HistoryEntry::BuildCancelled {
                build: id,
                candidate: build.candidate,
                at: now,
                why,
            }));
        }
    }

    fn on_reconciled(
        &mut self,
        name: &RepoName,
        started_at: Timestamp,
        prs: Vec<PrSnapshot>,
        branches: Vec<(String, Sha)>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        // Differences no webhook reported: lost deliveries made visible.
        let mut drift = 0u32;
        // A fact learnt after the re-read started is newer than the re-read.
        for (branch, sha) in branches {
            let known = self.repos[name].branches.get(&branch);
            let newer = known.is_some_and(|b| b.learnt_at.is_some_and(|t| t >= started_at));
            if !newer {
                if known.is_none_or(|b| b.sha != sha) {
                    drift += 1;
                }
                self.set_branch(name, branch, sha, now);
            }
        }
        let repo = self.repos.get_mut(name).expect("caller checked");
        let listed: std::collections::BTreeSet<u64> = prs.iter().map(|s| s.key.number).collect();
        let gone: Vec<u64> = repo
            .prs
            .values()
            .filter(|pr| !listed.contains(&pr.snapshot.key.number) && pr.first_seen < started_at)
            .map(|pr| pr.snapshot.key.number)
            .collect();
        drift += gone.len() as u32;
        for number in gone {
            self.close_pr(
                &PrKey {
                    repo: name.clone(),
                    number,
                },
                now,
                out,
            );
        }
        for mut snap in prs {
            let repo = self.repos.get_mut(name).expect("caller checked");
            let number = snap.key.number;
            // GitHub's PR list has no `mergeable`: a conflict a webhook
            // reported for this head and base stands until GitHub says
            // otherwise.
            if let Some(known) = repo.prs.get(&number)
                && snap.mergeable.is_none()
                && known.snapshot.head_sha == snap.head_sha
                && known.snapshot.base_ref == snap.base_ref
            {
                snap.mergeable = known.snapshot.mergeable;
            }
            if let Some(closed_at) = repo.closed.get(&number) {
                if *closed_at >= started_at {
                    continue; // closed after the re-read started
                }
                repo.closed.remove(&number);
            }
            if repo
                .prs
                .get(&number)
                .is_some_and(|pr| pr.updated_at >= started_at)
            {
                continue;
            }
            let differs = repo.prs.get(&number).is_none_or(|pr| {
                pr.snapshot.head_sha != snap.head_sha || pr.snapshot.base_ref != snap.base_ref
            });
            drift += u32::from(differs);
            self.apply_snapshot(snap, now, true, out);
        }
        if drift > 0 {
            out.push(Action::Drift {
                repo: name.clone(),
                differences: drift,
            });
        }
    }

    fn on_job_finished(
        &mut self,
        id: BuildId,
        reported: Candidate,
        report: JobReport,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if matches!(report.outcome, Outcome::Passed | Outcome::Failed)
            && self.builds.contains_key(&id)
            && let Some(repo) = self.repos.get_mut(&reported.repo)
        {
            let ms = report.finished_at.0.saturating_sub(report.started_at.0);
            repo.test_durations.record(ms);
        }
        if reported.car.is_some() {
            // A train car's test: used only if it is the car's current one.
            let current = self.builds.remove(&id).is_some()
                && self.on_car_finished(
                    &reported.repo,
                    &reported.target_branch,
                    &id,
                    &report,
                    now,
                    out,
                );
            out.push(Action::Record(HistoryEntry::BuildFinished {
                build: id,
                candidate: reported,
                report,
                current,
            }));
            return;
        }
        let Some(build) = self.builds.remove(&id) else {
            // Cancelled or unknown: its pair is not current. Recorded only.
            out.push(Action::Record(HistoryEntry::BuildFinished {
                build: id,
                candidate: reported,
                report,
                current: false,
            }));
            return;
        };
        let candidate = build.candidate;
        let mut current = false;
        if let (Some(repo), Some(first), Some(pair)) = (
            self.repos.get_mut(&candidate.repo),
            candidate.first_pr(),
            candidate.pair(),
        ) {
            let max_retries = repo.policy.max_infra_retries;
            // In train mode a PR's own test counts for its head on any
            // target (the train tests what lands).
            let is_current = repo.prs.get(&first.number).is_some_and(|pr| {
                repo.current_pair(pr).as_ref() == Some(&pair)
                    || (repo.trains_on() && pr.snapshot.head_sha == pair.head)
            });
            repo.index.dirty.insert(first.number);
            if let Some(pr) = repo.prs.get_mut(&first.number) {
                if pr.build.as_ref() == Some(&id) {
                    pr.build = None;
                }
                if is_current {
                    current = true;
                    let errors = pr.infra_errors.entry(pair.clone()).or_insert(0);
                    let retry = report.outcome == Outcome::Error && {
                        *errors += 1;
                        *errors <= max_retries
                    };
                    if retry {
                        let (attempt, of) = (*errors + 1, max_retries + 1);
                        out.push(Action::Record(HistoryEntry::Retried {
                            pr: PrKey {
                                repo: candidate.repo.clone(),
                                number: first.number,
                            },
                            head: pair.head.clone(),
                            stage: RetryKind::Infrastructure.stage().to_string(),
                            cause: RetryKind::Infrastructure,
                            message: text::retrying_car(attempt, of, &report.detail),
                            build: Some(id.clone()),
                            attempt: Some(attempt),
                            of: Some(of),
                            at: now,
                        }));
                    } else {
                        pr.results.insert(
                            pair,
                            PairResult {
                                outcome: report.outcome,
                                build: id.clone(),
                                detail: report.detail.clone(),
                                finished_at: report.finished_at,
                            },
                        );
                    }
                }
            }
        }
        out.push(Action::Record(HistoryEntry::BuildFinished {
            build: id,
            candidate,
            report,
            current,
        }));
    }

    fn on_merge_finished(
        &mut self,
        key: PrKey,
        pair: Pair,
        result: MergeResult,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(repo) = self.repos.get_mut(&key.repo) else {
            return;
        };
        let in_flight = repo
            .merging
            .iter()
            .find(|(_, m)| m.pr == key.number && m.pair == pair)
            .map(|(b, m)| (b.clone(), m.clone()));
        if let Some((branch, m)) = &in_flight {
            repo.merging.remove(branch);
            repo.index.dirty.insert(m.pr);
        }
        repo.index.dirty.insert(key.number);
        match result {
            MergeResult::Merged { merge_sha } => {
                // The lock remembers what landed, even if the PR was closed
                // (GitHub's webhook) before this answer arrived.
                let (base, build, title, approvers) = match in_flight {
                    Some((branch, m)) => (Some(branch), Some(m.build), m.title, m.approvers),
                    None => {
                        let pr = repo.prs.get(&key.number);
                        (
                            pr.map(|p| p.snapshot.base_ref.clone()),
                            pr.and_then(|p| p.results.get(&pair))
                                .map(|r| r.build.clone()),
                            pr.map(|p| p.snapshot.title.clone()).unwrap_or_default(),
                            pr.map(|p| repo.approval(p).approvers).unwrap_or_default(),
                        )
                    }
                };
                let tested_target = pair.target.clone();
                if let Some(build) = build {
                    out.push(Action::Record(HistoryEntry::Merged {
                        pr: key.clone(),
                        title,
                        branch: base.clone().unwrap_or_default(),
                        pair,
                        build,
                        approvers,
                        merge_sha: merge_sha.clone(),
                        at: now,
                    }));
                }
                // The target moved: every other PR on it is now stale. Unless
                // sluice has heard of a later push already (then it is newer).
                if let Some(base) = base {
                    let known = self.repos[&key.repo].branches.get(&base).map(|b| &b.sha);
                    if known.is_none_or(|k| *k == tested_target) {
                        self.set_branch(&key.repo, base, merge_sha, now);
                    } else if known != Some(&merge_sha) {
                        out.push(Action::FetchBranch {
                            repo: key.repo.clone(),
                            branch: base,
                        });
                    }
                }
                if let Some(repo) = self.repos.get_mut(&key.repo) {
                    repo.remember_merged(key.number);
                }
                self.close_pr(&key, now, out);
            }
            MergeResult::HeadMoved => {
                // Not again for this pair: the re-read brings the new head.
                if let Some(pr) = repo.prs.get_mut(&key.number) {
                    pr.merge_block = Some(MergeBlock {
                        pair,
                        reason: text::head_moved(),
                        retry_at: None,
                    });
                    out.push(Action::FetchPr { pr: key });
                }
            }
            MergeResult::Refused { reason } => {
                if let Some(pr) = repo.prs.get_mut(&key.number) {
                    pr.merge_block = Some(MergeBlock {
                        pair,
                        reason,
                        retry_at: None,
                    });
                    out.push(Action::FetchPr { pr: key });
                }
            }
            MergeResult::Failed { reason } => {
                if let Some(pr) = repo.prs.get_mut(&key.number) {
                    pr.merge_block = Some(MergeBlock {
                        pair,
                        reason,
                        retry_at: Some(now.plus_ms(MERGE_RETRY_MS)),
                    });
                }
            }
        }
    }

    fn on_retest(&mut self, key: PrKey, request: RequestId, now: Timestamp, out: &mut Vec<Action>) {
        let answer = match self.retest(&key, now, out) {
            Ok(()) => Answer::RetestQueued { pr: key },
            Err(None) => Answer::UnknownPr,
            Err(Some(reason)) => Answer::CannotTest { pr: key, reason },
        };
        out.push(Action::Reply { request, answer });
    }

    /// Forgets the PR's results for its head and tests it again (an
    /// ejected PR may enter its train again). Err: the PR is not known
    /// (`None`), or why it cannot be tested.
    pub(crate) fn retest(
        &mut self,
        key: &PrKey,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Result<(), Option<String>> {
        let repo = self.repos.get_mut(&key.repo).ok_or(None)?;
        let pr = repo.prs.get(&key.number).ok_or(None)?;
        let Some(pair) = repo.current_pair(pr) else {
            return Err(Some(text::waiting_for_target(&pr.snapshot.base_ref)));
        };
        if pr.snapshot.mergeable == Some(false) {
            return Err(Some(text::conflict(&pr.snapshot.base_ref)));
        }
        repo.index.dirty.insert(key.number);
        let pr = repo.prs.get_mut(&key.number).expect("checked above");
        pr.results.retain(|p, _| p.head != pair.head);
        pr.infra_errors.remove(&pair);
        pr.merge_block = None;
        pr.ejected = None;
        pr.asked.stopped = None;
        pr.updated_at = now;
        if let Some(build) = pr.build.take() {
            self.cancel_build(build, text::cancelled_retest(), now, out);
        }
        Ok(())
    }

    fn on_try_merge(
        &mut self,
        key: PrKey,
        request: RequestId,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(repo) = self.repos.get_mut(&key.repo) else {
            return;
        };
        let Some(pr) = repo.prs.get_mut(&key.number) else {
            out.push(Action::Reply {
                request,
                answer: Answer::UnknownPr,
            });
            return;
        };
        // Asking is a reason to try again after a refusal.
        pr.merge_block = None;
        let trains = repo.policy.train_depth > 0;
        if trains {
            // The train lands it; asking lets an ejected PR enter again.
            pr.ejected = None;
            repo.index.dirty.insert(key.number);
            repo.refile(key.number);
            let mut reasons = why_not_mergeable(repo, &repo.prs[&key.number]);
            if reasons.is_empty() {
                reasons.push(text::entering_train(
                    &repo.prs[&key.number].snapshot.base_ref,
                ));
            }
            out.push(Action::Reply {
                request,
                answer: Answer::NotReady { pr: key, reasons },
            });
            return;
        }
        repo.refile(key.number);
        let pr = &repo.prs[&key.number];
        let reasons = why_not_mergeable(repo, pr);
        if !reasons.is_empty() {
            out.push(Action::Reply {
                request,
                answer: Answer::NotReady { pr: key, reasons },
            });
            return;
        }
        let merge = start_merge(repo, key.number).expect("no reasons means mergeable");
        if let Action::Merge { pr, pair, build } = &merge {
            out.push(Action::Reply {
                request,
                answer: Answer::Merging {
                    pr: pr.clone(),
                    pair: pair.clone(),
                    build: build.clone(),
                },
            });
        }
        let _ = now;
        out.push(merge);
    }

    /// sluice started again from its journal. A status counts as published
    /// when it is decided and is written a moment later (pending ones wait
    /// a second), so the last ones decided before a kill may never have
    /// been written: those of the last minute are published again.
    fn on_restarted(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let latest = self
            .repos
            .values()
            .flat_map(|r| r.prs.values())
            .filter_map(|pr| pr.published_at)
            .max();
        let names: Vec<RepoName> = self.repos.keys().cloned().collect();
        for name in names {
            let repo = self.repos.get_mut(&name).expect("listed");
            if let Some(latest) = latest {
                let since = Timestamp(latest.0.saturating_sub(REPUBLISH_WINDOW_MS));
                for (number, pr) in repo.prs.iter_mut() {
                    if pr.published_at.is_some_and(|at| at >= since) {
                        pr.published = None;
                        repo.index.dirty.insert(*number);
                    }
                }
            }
            // Comments whose author's access was being asked: ask again.
            for (comment, pending) in &repo.pending_comments {
                out.push(Action::CheckWriteAccess {
                    repo: name.clone(),
                    user: pending.author.clone(),
                    comment: *comment,
                });
            }
            self.settle(&name, now, out);
        }
    }

    fn expire_timers(&mut self, name: &RepoName, now: Timestamp) {
        let Some(repo) = self.repos.get_mut(name) else {
            return;
        };
        let due: Vec<u64> = repo
            .index
            .retries
            .range(..=(now, u64::MAX))
            .map(|(_, n)| *n)
            .collect();
        for number in due {
            if let Some(pr) = repo.prs.get_mut(&number) {
                pr.merge_block = None;
            }
            repo.refile(number);
            repo.index.dirty.insert(number);
        }
        repo.closed
            .retain(|_, at| now.0 < at.0.saturating_add(CLOSED_MEMORY_MS));
    }

    /// Derives everything from the facts of one repository, looking only
    /// at the PRs whose facts changed (the index keeps the rest in order):
    /// cancel builds whose pair went stale, start builds in queue order up
    /// to the bound, publish statuses that changed, and merge what is
    /// approved and passed.
    fn settle(&mut self, name: &RepoName, now: Timestamp, out: &mut Vec<Action>) {
        let mut touched =
            std::mem::take(&mut self.repos.get_mut(name).expect("exists").index.dirty);
        self.cancel_stale_builds(name, &touched, now, out);
        let repo = self.repos.get_mut(name).expect("exists");
        for &number in &touched {
            repo.refile(number);
        }
        if repo.trains_on() {
            // Trains land what they tested; cars get the slots first.
            self.settle_trains(name, now, out);
            let repo = self.repos.get_mut(name).expect("exists");
            touched.extend(std::mem::take(&mut repo.index.dirty));
        } else {
            // Merges before builds: a merge taking a branch's lock holds
            // back the approved PRs on it.
            self.start_merges(name, now, out);
        }
        touched.extend(self.start_builds(name, now, out));
        self.publish_statuses(name, &touched, now, out);
    }

    /// Re-derives every PR of every repository, as if each had changed: what
    /// the incremental settle must already have done (a test oracle).
    #[cfg(test)]
    pub(crate) fn settle_everything(&mut self, now: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        let names: Vec<RepoName> = self.repos.keys().cloned().collect();
        for name in names {
            let repo = self.repos.get_mut(&name).expect("exists");
            repo.index.dirty = repo.prs.keys().copied().collect();
            self.settle(&name, now, &mut out);
        }
        // A timer asked for again is not a decision missed.
        out.retain(|a| !matches!(a, Action::WakeAt { .. }));
        out
    }

    fn cancel_stale_builds(
        &mut self,
        name: &RepoName,
        touched: &std::collections::BTreeSet<u64>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let repo = &self.repos[name];
        let stale: Vec<(u64, BuildId)> = touched
            .iter()
            .filter_map(|n| repo.prs.get(n))
            .filter_map(|pr| {
                let id = pr.build.as_ref()?;
                let tested = self.builds.get(id).and_then(|b| b.candidate.pair());
                // In train mode a PR's own test is per head: a moved target
                // does not make it stale.
                let current = match (&tested, repo.trains_on()) {
                    (Some(t), true) => t.head == pr.snapshot.head_sha,
                    _ => tested.is_some() && tested == repo.current_pair(pr),
                };
                (!current).then(|| (pr.snapshot.key.number, id.clone()))
            })
            .collect();
        for (number, id) in stale {
            if let Some(pr) = self
                .repos
                .get_mut(name)
                .and_then(|r| r.prs.get_mut(&number))
            {
                pr.build = None;
            }
            self.cancel_build(id, text::cancelled_stale(), now, out);
        }
    }

    /// Starts builds for the first waiting PRs, up to the bound; returns
    /// the PRs it started.
    fn start_builds(&mut self, name: &RepoName, now: Timestamp, out: &mut Vec<Action>) -> Vec<u64> {
        let repo = &self.repos[name];
        let running = self
            .builds
            .values()
            .filter(|b| &b.candidate.repo == name)
            .count();
        let free = repo.policy.max_concurrent_builds.saturating_sub(running);
        // The first waiting PRs in queue order; approved ones only on
        // branches without a merge in flight (they would be tested against
        // a target about to move, and tested again after it lands).
        let mut next: Vec<QueueKey> = repo.index.waiting.iter().take(free).copied().collect();
        for (branch, keys) in &repo.index.waiting_approved {
            if !repo.merging.contains_key(branch) {
                next.extend(keys.iter().take(free).copied());
            }
        }
        next.sort();
        let chosen: Vec<u64> = next.iter().take(free).map(|key| key.3).collect();
        for &number in &chosen {
            let id = self.new_build_id();
            let repo = self.repos.get_mut(name).expect("exists");
            let target = repo
                .current_pair(&repo.prs[&number])
                .expect("wants_build checked")
                .target;
            let pr = repo.prs.get_mut(&number).expect("exists");
            let candidate = Candidate {
                car: None,
                repo: name.clone(),
                target_branch: pr.snapshot.base_ref.clone(),
                target_sha: target,
                prs: vec![CandidatePr {
                    number,
                    head_sha: pr.snapshot.head_sha.clone(),
                    head_ref: pr.snapshot.head_ref.clone(),
                }],
            };
            pr.build = Some(id.clone());
            repo.refile(number);
            self.launch(id, candidate, now, out);
        }
        chosen
    }

    /// Records a build as running and asks for it.
    pub(crate) fn launch(
        &mut self,
        id: BuildId,
        candidate: Candidate,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        self.builds.insert(
            id.clone(),
            Build {
                id: id.clone(),
                candidate: candidate.clone(),
                started_at: now,
            },
        );
        out.push(Action::StartBuild {
            build: id,
            candidate,
        });
    }

    fn publish_statuses(
        &mut self,
        name: &RepoName,
        touched: &std::collections::BTreeSet<u64>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let repo = self.repos.get_mut(name).expect("exists");
        Self::publish_in(repo, &self.builds, name, touched, now, out);
    }

    fn publish_in(
        repo: &mut RepoState,
        builds: &std::collections::BTreeMap<BuildId, Build>,
        name: &RepoName,
        touched: &std::collections::BTreeSet<u64>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        // A PR being merged keeps its status: the merge moving the target
        // does not make its tested result "queued" again.
        let merging: Vec<u64> = repo.merging.values().map(|m| m.pr).collect();
        let desired: Vec<(u64, PublishedStatus)> = touched
            .iter()
            .filter(|n| !merging.contains(n))
            .filter_map(|n| repo.prs.get(n))
            .map(|pr| (pr.snapshot.key.number, desired_status(repo, builds, pr)))
            .collect();
        for (number, status) in desired {
            let pr = &repo.prs[&number];
            if pr.published.as_ref() != Some(&status) {
                let summary = text::check_summary(&why_not_mergeable(repo, pr));
                out.push(Action::SetStatus {
                    repo: name.clone(),
                    sha: status.sha.clone(),
                    state: status.state,
                    description: status.description.clone(),
                    link: status.link.clone(),
                    summary,
                });
                let pr = repo.prs.get_mut(&number).expect("exists");
                pr.published = Some(status);
                pr.published_at = Some(now);
            }
        }
    }

    /// For each target branch without a merge in flight, merges the first
    /// PR that is ready (in queue order across branches).
    fn start_merges(&mut self, name: &RepoName, now: Timestamp, out: &mut Vec<Action>) {
        let repo = self.repos.get_mut(name).expect("exists");
        let mut firsts: Vec<QueueKey> = repo
            .index
            .ready
            .iter()
            .filter(|(branch, _)| !repo.merging.contains_key(*branch))
            .filter_map(|(_, set)| set.first().copied())
            .collect();
        firsts.sort();
        for key in firsts {
            let number = key.3;
            debug_assert!(why_not_mergeable(repo, &repo.prs[&number]).is_empty());
            // Its status first: a required status check must see the result
            // before GitHub is asked to merge.
            let single = std::collections::BTreeSet::from([number]);
            Self::publish_in(repo, &self.builds, name, &single, now, out);
            if let Some(merge) = start_merge(repo, number) {
                out.push(merge);
            }
        }
    }
}

/// A PR needs a build: its pair is known, has no result and no build, and
/// GitHub has not said it conflicts.
pub(crate) fn wants_build(repo: &RepoState, pr: &Pr) -> bool {
    // Being merged: its own merge moving the target must not start a build.
    let merging = repo
        .merging
        .values()
        .any(|m| m.pr == pr.snapshot.key.number);
    let wanted = match repo.policy.pr_tests {
        PrTests::BeforeApproval => true,
        PrTests::AfterApproval => repo.approval(pr).approved(),
        PrTests::TrainOnly => !repo.trains_on(),
    };
    // Its test of this head was stopped by a `/cancel`.
    let stopped = pr.asked.stopped.as_ref() == Some(&pr.snapshot.head_sha);
    wanted
        && !merging
        && !stopped
        && pr.build.is_none()
        && !pr.in_train
        && pr.snapshot.mergeable != Some(false)
        && repo.current_pair(pr).is_some()
        && repo.own_result(pr).is_none()
}

/// The PR could merge now, but for its branch's merge lock (the ready
/// index holds these; `why_not_mergeable` says the same in words).
pub(crate) fn ready_but_for_lock(repo: &RepoState, pr: &Pr) -> bool {
    if pr.snapshot.draft || pr.asked.blocker(&repo.policy).is_some() {
        return false;
    }
    let Some(pair) = repo.current_pair(pr) else {
        return false;
    };
    if repo.trains_on() {
        // May enter the train: its own test passed for this head, and it
        // has not left the train by itself with this head.
        let passed = repo.policy.pr_tests == PrTests::TrainOnly
            || repo
                .own_result(pr)
                .is_some_and(|r| r.outcome == Outcome::Passed);
        let ejected = pr
            .ejected
            .as_ref()
            .is_some_and(|e| e.head == pr.snapshot.head_sha);
        // A merge of serial mode still in flight (trains switched on at a
        // restart) lands it or not; the train waits for its answer.
        let merging = repo
            .merging
            .values()
            .any(|m| m.pr == pr.snapshot.key.number);
        return passed && !ejected && !merging && !pr.in_train && repo.approval(pr).approved();
    }
    let passed = pr
        .results
        .get(&pair)
        .is_some_and(|r| r.outcome == Outcome::Passed);
    let blocked = pr.merge_block.as_ref().is_some_and(|b| b.pair == pair);
    let merging = repo
        .merging
        .get(&pr.snapshot.base_ref)
        .is_some_and(|m| m.pr == pr.snapshot.key.number);
    passed && !blocked && !merging && repo.approval(pr).approved()
}

/// Everything that stands between a PR and its merge, in words; empty when
/// it can merge now.
pub(crate) fn why_not_mergeable(repo: &RepoState, pr: &Pr) -> Vec<String> {
    let mut reasons = Vec::new();
    let base = &pr.snapshot.base_ref;
    if pr.snapshot.draft {
        reasons.push(text::is_draft());
    }
    if let Some(why) = pr.asked.blocker(&repo.policy) {
        reasons.push(why);
    }
    if repo.trains_on() {
        if let Some(e) = pr
            .ejected
            .as_ref()
            .filter(|e| e.head == pr.snapshot.head_sha)
        {
            reasons.push(e.reason.clone());
        }
        if let Some(why) = pr.waits_on_dependency.as_ref().filter(|_| !pr.in_train) {
            reasons.push(why.clone());
        }
        match repo.branch_mode(base) {
            BranchMode::Paused => reasons.push(text::branch_paused(base)),
            BranchMode::Draining if !pr.in_train => reasons.push(text::branch_draining(base)),
            _ => {}
        }
        if let Some(train) = repo.trains.get(base)
            && let Some((position, eta)) = repo.train_spot(pr)
        {
            if let Some(why) = repo.landing_held(pr) {
                reasons.push(text::in_train_held(base, position, why));
            } else {
                reasons.push(text::in_train(base, position, eta));
                if let Some((why, _)) = &train.blocked {
                    reasons.push(why.clone());
                }
            }
        }
    }
    match repo.current_pair(pr) {
        None => reasons.push(text::waiting_for_target(base)),
        Some(pair) => match repo.own_result(pr) {
            None if pr.snapshot.mergeable == Some(false) => reasons.push(text::conflict(base)),
            // Stopped by a `/cancel`, which `blocker` said above.
            None if pr.asked.stopped.as_ref() == Some(&pr.snapshot.head_sha) => {}
            None => reasons.push(text::no_result_yet(pr.build.is_some())),
            Some(r) if r.outcome != Outcome::Passed => {
                reasons.push(text::test_did_not_pass(r.outcome, &r.detail))
            }
            Some(_) => {
                if let Some(block) = pr.merge_block.as_ref().filter(|b| b.pair == pair) {
                    reasons.push(text::merge_refused(&block.reason));
                }
            }
        },
    }
    let approval = repo.approval(pr);
    if !approval.blockers.is_empty() {
        reasons.push(text::changes_requested(&approval.blockers));
    }
    if approval.approvers.len() < approval.required as usize {
        reasons.push(text::not_approved(
            approval.approvers.len(),
            approval.required,
        ));
    }
    if let Some(m) = repo.merging.get(base) {
        if m.pr == pr.snapshot.key.number {
            reasons.push(text::merging_already());
        } else {
            reasons.push(text::other_merge_in_flight(base, m.pr));
        }
    }
    reasons
}

/// Takes the branch's merge lock and returns the merge action, guarded by
/// the tested head.
fn start_merge(repo: &mut RepoState, number: u64) -> Option<Action> {
    let pr = repo.prs.get(&number)?;
    let pair = repo.current_pair(pr)?;
    let result = pr.results.get(&pair)?;
    let action = Action::Merge {
        pr: pr.snapshot.key.clone(),
        pair: pair.clone(),
        build: result.build.clone(),
    };
    let in_flight = MergeInFlight {
        pr: number,
        pair,
        build: result.build.clone(),
        title: pr.snapshot.title.clone(),
        approvers: repo.approval(pr).approvers,
    };
    repo.merging.insert(pr.snapshot.base_ref.clone(), in_flight);
    // It holds the lock now: out of the ready set.
    repo.refile(number);
    Some(action)
}

/// The commit status a PR's head should carry, derived from the facts.
fn desired_status(
    repo: &RepoState,
    builds: &std::collections::BTreeMap<BuildId, Build>,
    pr: &Pr,
) -> PublishedStatus {
    let base = &pr.snapshot.base_ref;
    let status = |state, description: String, link: Option<&BuildId>| PublishedStatus {
        sha: pr.snapshot.head_sha.clone(),
        state,
        description,
        link: link.map(|build| ResultKey {
            repo: pr.snapshot.key.repo.clone(),
            pr: pr.snapshot.key.number,
            head: pr.snapshot.head_sha.clone(),
            build: build.clone(),
        }),
    };
    let Some(pair) = repo.current_pair(pr) else {
        return status(CommitState::Pending, text::waiting_for_target(base), None);
    };
    if repo.trains_on() {
        if let Some(e) = pr
            .ejected
            .as_ref()
            .filter(|e| e.head == pr.snapshot.head_sha)
        {
            // Infrastructure is never reported as a test failure.
            let state = match e.kind {
                EjectKind::Error => CommitState::Error,
                _ => CommitState::Failure,
            };
            return PublishedStatus {
                sha: pr.snapshot.head_sha.clone(),
                state,
                description: e.reason.clone(),
                link: e.link.clone(),
            };
        }
        if pr.in_train {
            let (position, eta) = repo.train_spot(pr).unwrap_or((0, None));
            if repo.branch_mode(base) == BranchMode::Paused {
                return status(
                    CommitState::Pending,
                    text::in_train_held(base, position, &text::branch_paused(base)),
                    None,
                );
            }
            if let Some(why) = repo.landing_held(pr) {
                return status(
                    CommitState::Pending,
                    text::in_train_held(base, position, why),
                    None,
                );
            }
            // The ETA is refreshed when the place changes, not whenever the
            // estimate drifts: a status a minute per PR would spend the
            // API budget. The JSON views have the live estimate.
            if let Some(published) = pr.published.as_ref().filter(|p| {
                p.sha == pr.snapshot.head_sha
                    && p.state == CommitState::Pending
                    && p.link.is_none()
                    && text::is_in_train(&p.description, base, position)
            }) {
                return published.clone();
            }
            return status(
                CommitState::Pending,
                text::in_train(base, position, eta),
                None,
            );
        }
        if let Some(why) = &pr.waits_on_dependency {
            return status(CommitState::Pending, why.clone(), None);
        }
    }
    // What its own test tested: in train mode its head on the target of
    // then, which a moved target does not change (nor its status).
    let own = repo.own_tested(pr);
    // Approved and passing, but held back by a command: the status says so.
    if let Some(why) = pr.asked.blocker(&repo.policy)
        && repo.approval(pr).approved()
        && let Some((tested, _)) = own.filter(|(_, r)| r.outcome == Outcome::Passed)
    {
        let passed = text::finished(Outcome::Passed, base, &tested.target, "");
        return status(CommitState::Pending, format!("{passed}; {why}"), None);
    }
    if let Some((tested, result)) = own {
        let state = match result.outcome {
            Outcome::Passed => CommitState::Success,
            Outcome::Failed => CommitState::Failure,
            Outcome::Error => CommitState::Error,
        };
        let description = text::finished(result.outcome, base, &tested.target, &result.detail);
        return status(state, description, Some(&result.build));
    }
    if let Some(build) = &pr.build {
        // The target it tests (in train mode, maybe not the current one).
        let target = builds
            .get(build)
            .map_or(&pair.target, |b| &b.candidate.target_sha);
        return status(
            CommitState::Pending,
            text::testing(base, target),
            Some(build),
        );
    }
    if pr.snapshot.mergeable == Some(false) {
        return status(CommitState::Failure, text::conflict(base), None);
    }
    if pr.asked.stopped.as_ref() == Some(&pr.snapshot.head_sha)
        && let Some(why) = pr.asked.blocker(&repo.policy)
    {
        return status(CommitState::Pending, why, None);
    }
    match pr.infra_errors.get(&pair) {
        Some(&errors) if errors > 0 => status(
            CommitState::Pending,
            text::retrying(errors + 1, repo.policy.max_infra_retries + 1),
            None,
        ),
        _ => status(CommitState::Pending, text::queued(base), None),
    }
}
