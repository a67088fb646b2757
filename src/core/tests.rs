//! One test per rule of the brief, driving the core with events and a
//! virtual clock. No async, no I/O.

use super::*;

pub(crate) fn repo_name() -> RepoName {
    RepoName::parse("octo/demo").unwrap()
}

pub(crate) fn sha(n: u32) -> Sha {
    Sha::parse(&format!("{n:040x}")).unwrap()
}

pub(crate) fn key(n: u64) -> PrKey {
    PrKey {
        repo: repo_name(),
        number: n,
    }
}

pub(crate) fn snap(n: u64, head: u32, base: &str) -> PrSnapshot {
    PrSnapshot {
        key: key(n),
        head_sha: sha(head),
        head_ref: format!("feature-{n}"),
        base_ref: base.into(),
        base_sha: None,
        title: format!("PR {n}"),
        author: "author".into(),
        draft: false,
        mergeable: None,
        labels: vec![],
        created_at: Timestamp(n),
        depends_on: Vec::new(),
    }
}

struct Bot {
    state: State,
    now: u64,
    next_request: u64,
}

impl Bot {
    fn new(policy: RepoPolicy) -> Bot {
        let mut bot = Bot {
            state: State::new([(repo_name(), policy)], "t"),
            now: 1_000_000,
            next_request: 1,
        };
        bot.ev(Event::BranchMoved {
            before: None,
            repo: repo_name(),
            branch: "main".into(),
            sha: sha(0x100),
        });
        bot
    }
    fn default() -> Bot {
        Bot::new(RepoPolicy::default())
    }
    fn ev(&mut self, e: Event) -> Vec<Action> {
        self.now += 1000;
        self.state.handle(e, Timestamp(self.now))
    }
    fn open(&mut self, n: u64, head: u32) -> Vec<Action> {
        self.ev(Event::PrUpdated(snap(n, head, "main")))
    }
    fn target(&mut self, branch: &str, to: u32) -> Vec<Action> {
        self.ev(Event::BranchMoved {
            before: None,
            repo: repo_name(),
            branch: branch.into(),
            sha: sha(to),
        })
    }
    fn reviews(&mut self, n: u64, reviews: &[(&str, ReviewState, u64)]) -> Vec<Action> {
        let reviews = reviews
            .iter()
            .map(|(who, state, id)| ReviewFact {
                reviewer: who.to_string(),
                state: *state,
                id: *id,
                can_write: true,
            })
            .collect();
        self.ev(Event::Reviews {
            pr: key(n),
            reviews,
        })
    }
    fn approve(&mut self, n: u64) -> Vec<Action> {
        self.reviews(n, &[("ann", ReviewState::Approved, 1)])
    }
    fn finish(&mut self, build: &BuildId, outcome: Outcome) -> Vec<Action> {
        let candidate = self.state.builds[build].candidate.clone();
        self.finish_as(build, candidate, outcome)
    }
    fn finish_as(
        &mut self,
        build: &BuildId,
        candidate: Candidate,
        outcome: Outcome,
    ) -> Vec<Action> {
        self.finish_taking(build, candidate, outcome, 1)
    }
    fn finish_taking(
        &mut self,
        build: &BuildId,
        candidate: Candidate,
        outcome: Outcome,
        ms: u64,
    ) -> Vec<Action> {
        self.ev(Event::JobFinished {
            build: build.clone(),
            candidate,
            report: JobReport {
                outcome,
                exit_code: Some(if outcome == Outcome::Passed { 0 } else { 1 }),
                detail: "exit code 1".into(),
                started_at: Timestamp(1),
                finished_at: Timestamp(1 + ms),
            },
        })
    }
    fn merged(&mut self, n: u64, pair: Pair, merge_sha: u32) -> Vec<Action> {
        self.ev(Event::MergeFinished {
            pr: key(n),
            pair,
            result: MergeResult::Merged {
                merge_sha: sha(merge_sha),
            },
        })
    }
    fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }
    fn build_of(&self, n: u64) -> Option<BuildId> {
        self.state.pr(&key(n))?.build.clone()
    }
    fn view(&self, n: u64) -> PrView {
        self.state.pr_view_of(&key(n)).unwrap()
    }
}

fn started(actions: &[Action]) -> Vec<(BuildId, Candidate)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartBuild { build, candidate } => Some((build.clone(), candidate.clone())),
            _ => None,
        })
        .collect()
}

fn cancelled(actions: &[Action]) -> Vec<BuildId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CancelBuild { build } => Some(build.clone()),
            _ => None,
        })
        .collect()
}

fn merges(actions: &[Action]) -> Vec<(PrKey, Pair)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Merge { pr, pair, .. } => Some((pr.clone(), pair.clone())),
            _ => None,
        })
        .collect()
}

fn statuses(actions: &[Action]) -> Vec<(Sha, CommitState, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetStatus {
                sha,
                state,
                description,
                ..
            } => Some((sha.clone(), *state, description.clone())),
            _ => None,
        })
        .collect()
}

fn answer(actions: &[Action]) -> Answer {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Reply { answer, .. } => Some(answer.clone()),
            _ => None,
        })
        .expect("a reply")
}

fn pair(head: u32, target: u32) -> Pair {
    Pair {
        head: sha(head),
        target: sha(target),
    }
}

#[test]
fn opened_pr_goes_pending_and_is_tested_against_the_current_target() {
    let mut bot = Bot::default();
    let a = bot.open(1, 0xa1);
    let s = statuses(&a);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, sha(0xa1));
    assert_eq!(s[0].1, CommitState::Pending);
    let b = started(&a);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].1.pair(), Some(pair(0xa1, 0x100)));
    assert_eq!(b[0].1.target_branch, "main");
    assert!(a.contains(&Action::FetchReviews { pr: key(1) }));
}

#[test]
fn a_duplicate_delivery_changes_nothing() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    assert_eq!(bot.open(1, 0xa1), vec![]);
    assert_eq!(bot.target("main", 0x100), vec![]);
}

#[test]
fn an_unknown_target_is_fetched_before_testing() {
    let mut bot = Bot::default();
    let a = bot.ev(Event::PrUpdated(snap(1, 0xa1, "release")));
    assert!(a.contains(&Action::FetchBranch {
        repo: repo_name(),
        branch: "release".into()
    }));
    assert!(started(&a).is_empty());
    assert_eq!(statuses(&a)[0].2, text::waiting_for_target("release"));
    let a = bot.target("release", 0x200);
    assert_eq!(started(&a)[0].1.pair(), Some(pair(0xa1, 0x200)));
}

#[test]
fn an_unmergeable_pr_is_not_tested_and_its_status_says_why() {
    let mut bot = Bot::default();
    let mut s = snap(1, 0xa1, "main");
    s.mergeable = Some(false);
    let a = bot.ev(Event::PrUpdated(s));
    assert!(started(&a).is_empty());
    let st = statuses(&a);
    assert_eq!(st[0].1, CommitState::Failure);
    assert!(st[0].2.contains("merge conflict"), "{}", st[0].2);
    assert_eq!(bot.view(1).phase, Phase::Conflict);
}

/// GitHub's "conflict" is of the target it was computed on, and no webhook
/// says when it is recomputed: when the target moves (the conflicting
/// change reverted, say) the PR is tested again, and its test says.
#[test]
fn a_conflict_is_forgotten_when_the_target_moves() {
    let mut bot = Bot::default();
    let mut s = snap(1, 0xa1, "main");
    s.mergeable = Some(false);
    bot.ev(Event::PrUpdated(s));
    assert_eq!(bot.view(1).phase, Phase::Conflict);
    let a = bot.target("main", 0x101);
    assert_eq!(started(&a)[0].1.pair(), Some(pair(0xa1, 0x101)));
    assert_eq!(bot.view(1).phase, Phase::Testing);
}

#[test]
fn a_passing_approved_pr_is_merged_with_the_tested_head_as_guard() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.approve(1);
    let build = bot.build_of(1).unwrap();
    let a = bot.finish(&build, Outcome::Passed);
    let st = statuses(&a);
    assert_eq!(st[0].1, CommitState::Success);
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::SetStatus { link: Some(k), .. } if k.build == build))
    );
    assert_eq!(merges(&a), vec![(key(1), pair(0xa1, 0x100))]);
    assert!(bot.view(1).merging);
}

#[test]
fn a_pr_approved_after_passing_merges_without_a_retest() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    let build = bot.build_of(1).unwrap();
    let a = bot.finish(&build, Outcome::Passed);
    assert!(merges(&a).is_empty(), "not approved yet");
    let a = bot.approve(1);
    assert!(started(&a).is_empty());
    assert_eq!(merges(&a), vec![(key(1), pair(0xa1, 0x100))]);
}

#[test]
fn a_failing_pr_is_never_merged() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.approve(1);
    let build = bot.build_of(1).unwrap();
    let a = bot.finish(&build, Outcome::Failed);
    assert_eq!(statuses(&a)[0].1, CommitState::Failure);
    assert!(merges(&a).is_empty());
    let a = bot.ev(Event::TryMerge {
        pr: key(1),
        request: RequestId(9),
    });
    assert!(merges(&a).is_empty());
    match answer(&a) {
        Answer::NotReady { reasons, .. } => assert!(reasons[0].contains("failed"), "{reasons:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_push_while_a_job_runs_cancels_it_and_tests_the_new_head() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    let old = bot.build_of(1).unwrap();
    let a = bot.open(1, 0xa2);
    assert_eq!(cancelled(&a), vec![old.clone()]);
    let b = started(&a);
    assert_eq!(b[0].1.pair(), Some(pair(0xa2, 0x100)));
    assert_eq!(statuses(&a)[0].0, sha(0xa2));
    assert_eq!(statuses(&a)[0].1, CommitState::Pending);
}

#[test]
fn a_result_arriving_after_a_new_push_is_recorded_but_never_used() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.approve(1);
    let old = bot.build_of(1).unwrap();
    let old_candidate = bot.state.builds[&old].candidate.clone();
    bot.open(1, 0xa2);
    let a = bot.finish_as(&old, old_candidate, Outcome::Passed);
    assert!(merges(&a).is_empty());
    assert!(statuses(&a).is_empty());
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Record(HistoryEntry::BuildFinished { current: false, .. })
    )));
    assert_eq!(bot.view(1).phase, Phase::Testing);
}

#[test]
fn a_review_dismissed_after_success_stops_the_merge() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    let build = bot.build_of(1).unwrap();
    bot.reviews(
        1,
        &[
            ("ann", ReviewState::Approved, 1),
            ("bob", ReviewState::ChangesRequested, 2),
        ],
    );
    let a = bot.finish(&build, Outcome::Passed);
    assert!(merges(&a).is_empty(), "changes requested blocks");
    let a = bot.reviews(
        1,
        &[
            ("ann", ReviewState::Dismissed, 1),
            ("bob", ReviewState::ChangesRequested, 2),
        ],
    );
    assert!(merges(&a).is_empty());
    // Dismissing the change request (ann's approval already dismissed) still
    // leaves no approval.
    let a = bot.reviews(
        1,
        &[
            ("ann", ReviewState::Dismissed, 1),
            ("bob", ReviewState::Dismissed, 2),
        ],
    );
    assert!(merges(&a).is_empty());
    let a = bot.reviews(1, &[("bob", ReviewState::Approved, 3)]);
    assert_eq!(merges(&a).len(), 1);
}

#[test]
fn a_changed_base_retests_against_the_new_target() {
    let mut bot = Bot::default();
    bot.target("release", 0x200);
    bot.open(1, 0xa1);
    let old = bot.build_of(1).unwrap();
    let a = bot.ev(Event::PrUpdated(snap(1, 0xa1, "release")));
    assert_eq!(cancelled(&a), vec![old]);
    assert_eq!(started(&a)[0].1.pair(), Some(pair(0xa1, 0x200)));
    assert_eq!(started(&a)[0].1.target_branch, "release");
}

#[test]
fn a_moved_target_makes_every_pr_on_it_stale_and_approved_ones_go_first() {
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 1,
        ..RepoPolicy::default()
    });
    bot.target("other", 0x300);
    bot.open(1, 0xa1);
    bot.open(2, 0xa2);
    bot.open(3, 0xa3);
    bot.ev(Event::PrUpdated(snap(4, 0xa4, "other")));
    let b1 = bot.build_of(1).unwrap();
    bot.finish(&b1, Outcome::Failed);
    let b2 = bot.build_of(2).unwrap();
    bot.finish(&b2, Outcome::Failed);
    bot.approve(3);
    let b3 = bot.build_of(3).unwrap();
    bot.finish(&b3, Outcome::Failed);
    let b4 = bot.build_of(4).unwrap();
    bot.finish(&b4, Outcome::Passed);
    // #3 is approved; #1 and #2 are older but not.
    let a = bot.target("main", 0x101);
    let st = statuses(&a);
    assert_eq!(st.len(), 3, "only PRs on main: {st:?}");
    assert!(st.iter().all(|s| s.1 == CommitState::Pending));
    let b = started(&a);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].1.first_pr().unwrap().number, 3);
    assert_eq!(b[0].1.target_sha, sha(0x101));
    assert_eq!(bot.view(4).target_sha, Some(sha(0x300)));
}

#[test]
fn waiting_builds_go_by_priority_then_approval_then_age_within_the_bound() {
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 2,
        priority_labels: vec!["urgent".into()],
        ..RepoPolicy::default()
    });
    for n in 1..=5 {
        bot.open(n, 0xa0 + n as u32);
    }
    let running: Vec<u64> = bot
        .state
        .running_builds()
        .map(|b| b.candidate.prs[0].number)
        .collect();
    assert_eq!(running, vec![1, 2]);
    bot.approve(4);
    let mut s = snap(5, 0xa5, "main");
    s.labels = vec!["urgent".into()];
    bot.ev(Event::PrUpdated(s));
    let b1 = bot.build_of(1).unwrap();
    let a = bot.finish(&b1, Outcome::Failed);
    assert_eq!(started(&a)[0].1.prs[0].number, 5, "priority first");
    let b2 = bot.build_of(2).unwrap();
    let a = bot.finish(&b2, Outcome::Failed);
    assert_eq!(started(&a)[0].1.prs[0].number, 4, "approved before older");
    assert_eq!(bot.state.running_builds().count(), 2);
}

#[test]
fn our_own_merge_moves_the_target_and_other_prs_are_retested_not_merged() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.open(2, 0xa2);
    bot.approve(1);
    bot.approve(2);
    let b1 = bot.build_of(1).unwrap();
    let b2 = bot.build_of(2).unwrap();
    let a = bot.finish(&b1, Outcome::Passed);
    assert_eq!(merges(&a).len(), 1);
    let a = bot.finish(&b2, Outcome::Passed);
    assert!(merges(&a).is_empty(), "one merge per branch at a time");
    assert!(bot.view(2).waiting_on[0].contains("#1 is being merged"));
    let a = bot.merged(1, pair(0xa1, 0x100), 0x101);
    assert!(merges(&a).is_empty(), "#2 was tested on the old target");
    let b = started(&a);
    assert_eq!(b[0].1.pair(), Some(pair(0xa2, 0x101)));
    assert!(bot.state.pr(&key(1)).is_none());
    assert!(a.iter().any(|x| matches!(x, Action::Record(HistoryEntry::Merged { merge_sha, .. }) if *merge_sha == sha(0x101))));
    // GitHub's closed and push deliveries arrive later and change nothing.
    assert_eq!(bot.ev(Event::PrClosed(key(1))), vec![]);
    assert_eq!(bot.target("main", 0x101), vec![]);
    assert_eq!(bot.open(1, 0xa1), vec![], "a late delivery about #1");
}

#[test]
fn a_merge_refused_because_the_head_moved_rereads_the_pr() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.approve(1);
    let b = bot.build_of(1).unwrap();
    bot.finish(&b, Outcome::Passed);
    let a = bot.ev(Event::MergeFinished {
        pr: key(1),
        pair: pair(0xa1, 0x100),
        result: MergeResult::HeadMoved,
    });
    assert!(a.contains(&Action::FetchPr { pr: key(1) }));
    assert!(merges(&a).is_empty(), "not the same merge again");
    assert!(merges(&bot.ev(Event::Tick)).is_empty());
    // The re-read shows the new head: it is tested, not merged.
    let a = bot.open(1, 0xa2);
    assert!(merges(&a).is_empty());
    assert_eq!(started(&a)[0].1.pair(), Some(pair(0xa2, 0x100)));
}

#[test]
fn a_refused_merge_waits_for_a_change_or_a_person() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.approve(1);
    let b = bot.build_of(1).unwrap();
    bot.finish(&b, Outcome::Passed);
    let a = bot.ev(Event::MergeFinished {
        pr: key(1),
        pair: pair(0xa1, 0x100),
        result: MergeResult::Refused {
            reason: "Pull Request is not mergeable".into(),
        },
    });
    assert!(merges(&a).is_empty());
    assert!(merges(&bot.ev(Event::Tick)).is_empty());
    assert!(bot.view(1).waiting_on[0].contains("refused"));
    let r = bot.request();
    let a = bot.ev(Event::TryMerge {
        pr: key(1),
        request: r,
    });
    assert_eq!(merges(&a).len(), 1);
    assert!(matches!(answer(&a), Answer::Merging { .. }));
}

#[test]
fn a_merge_that_failed_in_transit_is_retried_after_a_while() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.approve(1);
    let b = bot.build_of(1).unwrap();
    bot.finish(&b, Outcome::Passed);
    bot.ev(Event::MergeFinished {
        pr: key(1),
        pair: pair(0xa1, 0x100),
        result: MergeResult::Failed {
            reason: "HTTP 502".into(),
        },
    });
    assert!(merges(&bot.ev(Event::Tick)).is_empty());
    bot.now += MERGE_RETRY_MS;
    assert_eq!(merges(&bot.ev(Event::Tick)).len(), 1);
}

#[test]
fn infrastructure_errors_are_retried_a_bounded_number_of_times() {
    let mut bot = Bot::new(RepoPolicy {
        max_infra_retries: 2,
        ..RepoPolicy::default()
    });
    bot.open(1, 0xa1);
    for attempt in 2..=3 {
        let b = bot.build_of(1).unwrap();
        let a = bot.finish(&b, Outcome::Error);
        assert_eq!(started(&a).len(), 1, "retry {attempt}");
        // Recorded with its reason, and said in the JSON.
        let said = format!("infrastructure error; testing again (attempt {attempt} of 3)");
        let recorded = format!("{said} (exit code 1)");
        assert_eq!(
            retries(&a),
            vec![(1, "test".to_string(), RetryKind::Infrastructure, recorded)],
            "with the executor's detail"
        );
        let retrying = bot.view(1).retrying.expect("the JSON says it is retried");
        assert_eq!(
            (retrying.stage, retrying.kind),
            ("test", RetryKind::Infrastructure)
        );
        assert_eq!(retrying.message, said);
        assert!(statuses(&a).is_empty() || statuses(&a)[0].1 == CommitState::Pending);
        assert_ne!(
            statuses(&a).first().map(|s| s.1),
            Some(CommitState::Failure)
        );
    }
    let b = bot.build_of(1).unwrap();
    let a = bot.finish(&b, Outcome::Error);
    assert!(started(&a).is_empty());
    assert!(retries(&a).is_empty(), "the last error is not retried");
    assert_eq!(statuses(&a)[0].1, CommitState::Error);
    assert_eq!(bot.view(1).phase, Phase::Error);
    assert_eq!(bot.view(1).retrying, None);
}

/// The retries `actions` record: (PR, stage, kind, message).
fn retries(actions: &[Action]) -> Vec<(u64, String, RetryKind, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(HistoryEntry::Retried {
                pr,
                stage,
                cause,
                message,
                ..
            }) => Some((pr.number, stage.clone(), *cause, message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn retest_cancels_and_restarts_the_job() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    let b = bot.build_of(1).unwrap();
    bot.finish(&b, Outcome::Failed);
    let r = bot.request();
    let a = bot.ev(Event::Retest {
        pr: key(1),
        request: r,
    });
    assert!(matches!(answer(&a), Answer::RetestQueued { .. }));
    assert_eq!(started(&a).len(), 1);
    let running = bot.build_of(1).unwrap();
    let r = bot.request();
    let a = bot.ev(Event::Retest {
        pr: key(1),
        request: r,
    });
    assert_eq!(cancelled(&a), vec![running]);
    assert_eq!(started(&a).len(), 1);
    let r = bot.request();
    assert_eq!(
        answer(&bot.ev(Event::Retest {
            pr: key(9),
            request: r
        })),
        Answer::UnknownPr
    );
}

#[test]
fn try_merge_says_why_not() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    let r = bot.request();
    match answer(&bot.ev(Event::TryMerge {
        pr: key(1),
        request: r,
    })) {
        Answer::NotReady { reasons, .. } => {
            assert_eq!(
                reasons,
                vec![text::no_result_yet(true), text::not_approved(0, 1)]
            )
        }
        other => panic!("{other:?}"),
    }
    let other = PrKey {
        repo: RepoName::parse("someone/else").unwrap(),
        number: 1,
    };
    let r = bot.request();
    assert_eq!(
        answer(&bot.ev(Event::TryMerge {
            pr: other,
            request: r
        })),
        Answer::UnknownPr
    );
}

#[test]
fn drafts_are_tested_but_not_merged() {
    let mut bot = Bot::default();
    let mut s = snap(1, 0xa1, "main");
    s.draft = true;
    bot.ev(Event::PrUpdated(s));
    bot.approve(1);
    let b = bot.build_of(1).unwrap();
    let a = bot.finish(&b, Outcome::Passed);
    assert!(merges(&a).is_empty());
    let a = bot.open(1, 0xa1); // ready for review
    assert_eq!(merges(&a).len(), 1);
}

#[test]
fn closing_a_pr_cancels_its_job_and_forgets_it() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    let b = bot.build_of(1).unwrap();
    let a = bot.ev(Event::PrClosed(key(1)));
    assert_eq!(cancelled(&a), vec![b]);
    assert!(bot.state.pr(&key(1)).is_none());
    assert_eq!(bot.state.running_builds().count(), 0);
    // Reopening brings it back and tests it.
    let a = bot.ev(Event::PrReopened(snap(1, 0xa1, "main")));
    assert_eq!(started(&a).len(), 1);
}

#[test]
fn reconcile_heals_lost_deliveries_but_keeps_newer_facts() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.open(2, 0xa2);
    let started_at = Timestamp(bot.now + 1);
    // #3 opened and main moved without a webhook; #2 closed without one.
    // Meanwhile a push to #1 arrives after the re-read started.
    bot.now += 10;
    bot.open(1, 0xb1);
    let a = bot.ev(Event::Reconciled {
        repo: repo_name(),
        started_at,
        prs: vec![snap(1, 0xa1, "main"), snap(3, 0xa3, "main")],
        branches: vec![("main".into(), sha(0x101))],
    });
    assert!(bot.state.pr(&key(2)).is_none(), "closed PR forgotten");
    // main moved, #2 closed, #3 opened; #1's newer push is not drift.
    assert!(a.contains(&Action::Drift {
        repo: repo_name(),
        differences: 3
    }));
    assert_eq!(bot.view(1).head_sha, sha(0xb1), "newer push kept");
    assert_eq!(bot.view(3).target_sha, Some(sha(0x101)));
    assert!(!started(&a).is_empty());
}

#[test]
fn several_repositories_and_branches_are_independent() {
    let other = RepoName::parse("octo/other").unwrap();
    let mut state = State::new(
        [
            (
                repo_name(),
                RepoPolicy {
                    max_concurrent_builds: 1,
                    ..RepoPolicy::default()
                },
            ),
            (
                other.clone(),
                RepoPolicy {
                    max_concurrent_builds: 1,
                    ..RepoPolicy::default()
                },
            ),
        ],
        "t",
    );
    for repo in [repo_name(), other.clone()] {
        state.handle(
            Event::BranchMoved {
                before: None,
                repo: repo.clone(),
                branch: "main".into(),
                sha: sha(1),
            },
            Timestamp(1),
        );
        for n in 1..=2 {
            let mut s = snap(n, n as u32 + 10, "main");
            s.key.repo = repo.clone();
            state.handle(Event::PrUpdated(s), Timestamp(2));
        }
    }
    assert_eq!(state.running_builds().count(), 2, "one per repository");
    let a = state.handle(
        Event::BranchMoved {
            before: None,
            repo: other,
            branch: "main".into(),
            sha: sha(2),
        },
        Timestamp(3),
    );
    assert!(a.iter().all(|x| match x {
        Action::SetStatus { repo, .. } => repo.as_str() == "octo/other",
        _ => true,
    }));
}

#[test]
fn a_merge_answered_after_the_closed_webhook_is_still_recorded_and_moves_the_target() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.open(2, 0xa2);
    bot.approve(1);
    let b1 = bot.build_of(1).unwrap();
    let b2 = bot.build_of(2).unwrap();
    bot.finish(&b2, Outcome::Passed);
    assert_eq!(merges(&bot.finish(&b1, Outcome::Passed)).len(), 1);
    // GitHub's push and closed webhooks overtake the answer to our merge.
    let a = bot.target("main", 0x101);
    assert!(
        !started(&a).iter().any(|(_, c)| c.prs[0].number == 1),
        "the PR being merged is not tested again"
    );
    assert!(
        !statuses(&a).iter().any(|s| s.0 == sha(0xa1)),
        "the PR being merged keeps its status"
    );
    bot.ev(Event::PrClosed(key(1)));
    assert!(
        merges(&bot.approve(2)).is_empty(),
        "the lock holds until the answer"
    );
    let a = bot.merged(1, pair(0xa1, 0x100), 0x101);
    assert!(
        a.iter().any(|x| matches!(
            x,
            Action::Record(HistoryEntry::Merged { build, approvers, .. })
                if *build == b1 && approvers == &vec!["ann".to_string()]
        )),
        "{a:?}"
    );
    assert_eq!(bot.view(2).target_sha, Some(sha(0x101)), "#2 is stale");
}

#[test]
fn a_late_or_reordered_push_never_moves_a_target_back() {
    let mut bot = Bot::default();
    let push = |from: u32, to: u32| Event::BranchMoved {
        repo: repo_name(),
        branch: "main".into(),
        sha: sha(to),
        before: Some(sha(from)),
    };
    bot.ev(push(0x100, 0x101));
    bot.ev(push(0x101, 0x102));
    // The first push again, delivered late: refused, and the branch re-read.
    let a = bot.ev(push(0x100, 0x101));
    assert!(a.contains(&Action::FetchBranch {
        repo: repo_name(),
        branch: "main".into()
    }));
    bot.open(1, 0xa1);
    assert_eq!(bot.view(1).target_sha, Some(sha(0x102)));
    // A read that began before the last push cannot undo it either.
    let as_of = Timestamp(bot.now - 10_000);
    bot.ev(Event::BranchRead {
        repo: repo_name(),
        branch: "main".into(),
        sha: Some(sha(0x100)),
        as_of,
    });
    assert_eq!(bot.view(1).target_sha, Some(sha(0x102)));
    // A push that skips one (a lost delivery) is not trusted: re-read.
    let a = bot.ev(push(0x103, 0x104));
    assert!(a.contains(&Action::FetchBranch {
        repo: repo_name(),
        branch: "main".into()
    }));
    assert_eq!(bot.view(1).target_sha, Some(sha(0x102)));
    let a = bot.ev(Event::BranchRead {
        repo: repo_name(),
        branch: "main".into(),
        sha: Some(sha(0x104)),
        as_of: Timestamp(bot.now + 1),
    });
    assert_eq!(started(&a)[0].1.target_sha, sha(0x104));
}

#[test]
fn a_pr_just_opened_reads_no_reviews_but_one_first_seen_otherwise_does() {
    let mut bot = Bot::default();
    bot.target("main", 0x100);
    let a = bot.ev(Event::PrOpened(snap(1, 0xa1, "main")));
    assert!(!a.iter().any(|x| matches!(x, Action::FetchReviews { .. })));
    assert_eq!(started(&a).len(), 1, "tested all the same");
    // First heard of through a later delivery (the opened one was lost).
    let a = bot.ev(Event::PrUpdated(snap(2, 0xa2, "main")));
    assert!(a.contains(&Action::FetchReviews { pr: key(2) }));
    // A reopened PR has its old reviews.
    bot.ev(Event::PrClosed(key(1)));
    let a = bot.ev(Event::PrReopened(snap(1, 0xa1, "main")));
    assert!(a.contains(&Action::FetchReviews { pr: key(1) }));
}

#[test]
fn approved_prs_wait_while_a_merge_into_their_branch_is_in_flight() {
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 1,
        ..RepoPolicy::default()
    });
    bot.open(1, 0xa1);
    bot.approve(1);
    bot.open(2, 0xa2);
    bot.approve(2);
    bot.open(3, 0xa3);
    // #1 passes and merges: #2 (approved) would be tested against a target
    // about to move, so the free slot goes to #3 (unapproved).
    let b1 = bot.build_of(1).unwrap();
    let a = bot.finish(&b1, Outcome::Passed);
    assert_eq!(merges(&a).len(), 1);
    let s: Vec<u64> = started(&a).iter().map(|(_, c)| c.prs[0].number).collect();
    assert_eq!(s, vec![3]);
    assert_eq!(bot.view(2).phase, Phase::Queued);
    // The merge lands: #2 is tested against the new head.
    let b3 = bot.build_of(3).unwrap();
    bot.finish(&b3, Outcome::Passed);
    let a = bot.merged(1, pair(0xa1, 0x100), 0x101);
    assert_eq!(started(&a)[0].1.pair(), Some(pair(0xa2, 0x101)));
    // A refused merge releases the branch too.
    bot.approve(3);
    let b2 = bot.build_of(2).unwrap();
    let a = bot.finish(&b2, Outcome::Passed);
    assert_eq!(merges(&a).len(), 1);
    assert!(started(&a).is_empty(), "#3 is approved now: it waits");
    let a = bot.ev(Event::MergeFinished {
        pr: key(2),
        pair: pair(0xa2, 0x101),
        result: MergeResult::Refused {
            reason: "required status".into(),
        },
    });
    assert_eq!(started(&a)[0].1.pair(), Some(pair(0xa3, 0x101)));
}

#[test]
fn reconcile_keeps_a_known_conflict_unless_github_says_otherwise() {
    let mut bot = Bot::default();
    let mut conflicting = snap(1, 0xa1, "main");
    conflicting.mergeable = Some(false);
    bot.ev(Event::PrUpdated(conflicting));
    assert_eq!(bot.view(1).phase, Phase::Conflict);
    // GitHub's PR list has no `mergeable`: a re-read says nothing about it.
    let later = Timestamp(bot.now + 10);
    bot.now += 20;
    let a = bot.ev(Event::Reconciled {
        repo: repo_name(),
        started_at: later,
        prs: vec![snap(1, 0xa1, "main")],
        branches: vec![("main".into(), sha(0x100))],
    });
    assert!(started(&a).is_empty(), "a known conflict is not tested");
    assert_eq!(bot.view(1).phase, Phase::Conflict);
    // A new head is a new question: unknown until GitHub answers.
    let started_at = Timestamp(bot.now + 10);
    bot.now += 20;
    let a = bot.ev(Event::Reconciled {
        repo: repo_name(),
        started_at,
        prs: vec![snap(1, 0xb1, "main")],
        branches: vec![("main".into(), sha(0x100))],
    });
    assert_eq!(started(&a).len(), 1);
    // And GitHub saying it merges now is heard.
    let mut fine = snap(1, 0xb1, "main");
    fine.mergeable = Some(true);
    bot.ev(Event::PrUpdated(fine));
    assert_eq!(
        bot.state.pr(&key(1)).unwrap().snapshot.mergeable,
        Some(true)
    );
}

// ---------------------------------------------------------------- trains

fn train_bot(depth: usize) -> Bot {
    Bot::new(RepoPolicy {
        max_concurrent_builds: 8,
        train_depth: depth,
        ..RepoPolicy::default()
    })
}

fn car_builds(actions: &[Action]) -> Vec<(u64, Sha, Sha)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::BuildCar {
                car, parent, head, ..
            } => Some((*car, parent.clone(), head.clone())),
            _ => None,
        })
        .collect()
}

fn lands(actions: &[Action]) -> Vec<(Sha, Sha)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Land { from, to, .. } => Some((from.clone(), to.clone())),
            _ => None,
        })
        .collect()
}

/// A car's commit, as the forge would name it: made from its parent and
/// the head merged in.
fn car_sha(parent: &Sha, head: &Sha) -> Sha {
    let n = u32::from_str_radix(&parent.as_str()[32..], 16).unwrap()
        ^ u32::from_str_radix(&head.as_str()[32..], 16)
            .unwrap()
            .rotate_left(7);
    sha(0x8000_0000 | (n & 0x7fff_ffff))
}

impl Bot {
    /// Answers every BuildCar in `actions` as built; returns the actions
    /// those answers produced.
    fn build_cars(&mut self, actions: &[Action]) -> Vec<Action> {
        let mut out = Vec::new();
        for (car, parent, head) in car_builds(actions) {
            out.extend(self.ev(Event::CarBuilt {
                repo: repo_name(),
                branch: "main".into(),
                car,
                sha: car_sha(&parent, &head),
                parent,
            }));
        }
        out
    }
    /// A `BuildCar` for each car of main's train being built.
    fn cars_building(&self) -> Vec<Action> {
        self.state.repo(&repo_name()).unwrap().trains["main"]
            .cars
            .iter()
            .filter_map(|c| match &c.state {
                CarState::Building { parent } => Some(Action::BuildCar {
                    repo: repo_name(),
                    branch: "main".into(),
                    car: c.id,
                    staging_ref: staging_ref("main", c.id),
                    parent: parent.clone(),
                    pr: c.pr.number,
                    head: c.pr.head_sha.clone(),
                    message: String::new(),
                }),
                _ => None,
            })
            .collect()
    }
    /// PRs 1..=count (heads 0xa1, 0xa2, ...) are opened, approved and pass
    /// their own test: they enter the train in that order.
    fn enter_train(&mut self, count: u64) {
        for n in 1..=count {
            self.open(n, 0xa0 + n as u32);
            self.approve(n);
            let b = self.build_of(n).unwrap();
            self.finish(&b, Outcome::Passed);
        }
    }
    /// Answers every car being built as built, car on car, until none is.
    fn build_train(&mut self) {
        loop {
            let building = self.cars_building();
            if building.is_empty() {
                return;
            }
            self.build_cars(&building);
        }
    }
    fn car_tests(&self) -> Vec<(BuildId, Candidate)> {
        self.state
            .running_builds()
            .filter(|b| b.candidate.car.is_some())
            .map(|b| (b.id.clone(), b.candidate.clone()))
            .collect()
    }
}

#[test]
fn a_train_lands_exactly_the_tested_car_with_every_pr_ahead_of_it() {
    let mut bot = train_bot(3);
    bot.enter_train(3);
    // Each own test passed: all three entered; car 1 is built on main.
    let train = &bot.state.repo(&repo_name()).unwrap().trains["main"];
    assert_eq!(train.cars.len(), 3);
    assert!(merges(&[]).is_empty());
    // Build the cars one on the other (each answer lets the next build).
    bot.build_train();
    let tests = bot.car_tests();
    assert_eq!(tests.len(), 3, "depth 3: all three cars tested at once");
    // The third car holds all three PRs, on main's head, as one commit.
    let third = tests.iter().find(|(_, c)| c.prs.len() == 3).unwrap();
    assert_eq!(third.1.target_sha, sha(0x100));
    let c1 = car_sha(&sha(0x100), &sha(0xa1));
    let c2 = car_sha(&c1, &sha(0xa2));
    let c3 = car_sha(&c2, &sha(0xa3));
    assert_eq!(third.1.car, Some(c3.clone()));
    // Car 3 passes first: its test covered all three PRs, so everything
    // lands at once, to car 3's exact sha, while cars 1 and 2 still test.
    let mut by_len: Vec<(BuildId, Candidate)> = tests.clone();
    by_len.sort_by_key(|(_, c)| c.prs.len());
    let a = bot.finish_as(&by_len[2].0, by_len[2].1.clone(), Outcome::Passed);
    assert_eq!(lands(&a), vec![(sha(0x100), c3.clone())]);
    assert!(
        merges(&a).is_empty(),
        "no GitHub merge: the target is moved"
    );
    let a = bot.ev(Event::Landed {
        repo: repo_name(),
        branch: "main".into(),
        sha: c3.clone(),
    });
    let landed: Vec<u64> = a
        .iter()
        .filter_map(|x| match x {
            Action::Record(HistoryEntry::Merged { pr, merge_sha, .. }) if *merge_sha == c3 => {
                Some(pr.number)
            }
            _ => None,
        })
        .collect();
    assert_eq!(landed, vec![1, 2, 3]);
    assert!(bot.state.pr(&key(1)).is_none());
    let repo = bot.state.repo(&repo_name()).unwrap();
    assert_eq!(repo.branch_head("main"), Some(&c3));
    assert!(repo.trains.is_empty());
}

#[test]
fn a_failing_car_ejects_its_pr_with_a_status_that_says_so_and_the_rest_move_up() {
    let mut bot = train_bot(2);
    bot.enter_train(2);
    // Car 1 (#1) is building; answer it, then car 2 (#2) builds on it.
    let car1 = bot.state.repo(&repo_name()).unwrap().trains["main"].cars[0].id;
    let a = bot.ev(Event::CarBuilt {
        repo: repo_name(),
        branch: "main".into(),
        car: car1,
        parent: sha(0x100),
        sha: sha(0xc1),
    });
    let (car2, parent, _) = car_builds(&a)[0].clone();
    assert_eq!(parent, sha(0xc1), "car 2 is built on car 1");
    bot.ev(Event::CarBuilt {
        repo: repo_name(),
        branch: "main".into(),
        car: car2,
        parent,
        sha: sha(0xc2),
    });
    assert_eq!(
        bot.view(2).waiting_on,
        vec!["2nd in the train for main, under a minute".to_string()],
        "2nd in the train"
    );
    let tests = bot.car_tests();
    let (b1, c1) = tests
        .iter()
        .find(|(_, c)| c.prs.len() == 1)
        .unwrap()
        .clone();
    let a = bot.finish_as(&b1, c1, Outcome::Failed);
    // #1 is out, with a failure status naming the car; #2's car is rebuilt
    // on main alone, and #2 is now first.
    let st = statuses(&a);
    let one = st.iter().find(|s| s.0 == sha(0xa1)).unwrap();
    assert_eq!(one.1, CommitState::Failure);
    assert!(one.2.contains("left the train"), "{}", one.2);
    let rebuilt = car_builds(&a);
    assert_eq!(rebuilt.len(), 1);
    assert_eq!(rebuilt[0].1, sha(0x100));
    assert_eq!(rebuilt[0].2, sha(0xa2));
    assert!(cancelled(&a).len() == 1, "car 2's test is cancelled");
    let two = st.iter().find(|s| s.0 == sha(0xa2)).unwrap();
    assert_eq!(two.2, "1st in the train for main, under a minute");
    // It does not come back by itself...
    assert!(bot.state.train_position(&key(1)).is_none());
    bot.ev(Event::Tick);
    assert!(bot.state.train_position(&key(1)).is_none());
    // ...but does when someone asks.
    let r = bot.request();
    bot.ev(Event::TryMerge {
        pr: key(1),
        request: r,
    });
    assert_eq!(bot.state.train_position(&key(1)), Some(1));
}

#[test]
fn pr_tests_chooses_which_prs_get_a_test_of_their_own() {
    let bot_with = |pr_tests: PrTests| {
        Bot::new(RepoPolicy {
            train_depth: 2,
            pr_tests,
            ..RepoPolicy::default()
        })
    };
    // Before approval: tested as soon as it is opened.
    let mut bot = bot_with(PrTests::BeforeApproval);
    assert_eq!(started(&bot.open(1, 0xa1)).len(), 1);

    // After approval: nothing until approved, then its own test (not a car).
    let mut bot = bot_with(PrTests::AfterApproval);
    assert!(started(&bot.open(1, 0xa1)).is_empty());
    let a = bot.approve(1);
    let own = started(&a);
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].1.car, None);
    assert!(car_builds(&a).is_empty(), "enters the train once it passed");
    let a = bot.finish(&own[0].0, Outcome::Passed);
    assert_eq!(car_builds(&a).len(), 1);

    // Train only: no test of its own; approval puts it in the train.
    let mut bot = bot_with(PrTests::TrainOnly);
    assert!(started(&bot.open(1, 0xa1)).is_empty());
    let a = bot.approve(1);
    assert!(started(&a).is_empty());
    assert_eq!(car_builds(&a).len(), 1);
}

#[test]
fn a_pr_in_the_train_says_its_place_and_when_it_should_land() {
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 8,
        train_depth: 2,
        ..RepoPolicy::default()
    });
    let five_min = 5 * 60_000;
    for n in 1..=3 {
        bot.open(n, 0xa0 + n as u32);
        bot.approve(n);
    }
    // Until a test finished there is no estimate.
    assert_eq!(bot.view(1).eta_secs, None);
    let mut all = Vec::new();
    for n in 1..=3 {
        let b = bot.build_of(n).unwrap();
        let candidate = bot.state.builds[&b].candidate.clone();
        all.extend(bot.finish_taking(&b, candidate, Outcome::Passed, five_min));
    }
    // Build every car: two are tested at once, the third waits for a slot.
    for _ in 0..3 {
        all = bot.build_cars(&all);
    }
    assert_eq!(bot.car_tests().len(), 2);
    // Cars 1 and 2 end in about 5 min; car 3 starts when car 1 lands.
    assert_eq!(
        bot.view(1).waiting_on[0],
        "1st in the train for main, about 5 min"
    );
    assert_eq!(
        bot.view(3).waiting_on[0],
        "3rd in the train for main, about 10 min"
    );
    // Its status said so when it entered (and is not re-sent as the
    // estimate drifts).
    let published = bot.state.pr(&key(3)).unwrap().published.clone().unwrap();
    assert_eq!(
        published.description,
        "3rd in the train for main, about 10 min"
    );
    let view = bot.view(3);
    assert_eq!(view.train_position, Some(2));
    let eta = view.eta_secs.unwrap();
    assert!((9 * 60..=10 * 60).contains(&eta), "{eta}");
    let queue = bot.state.queue_view();
    assert_eq!(queue[0].mean_test_secs, Some(300));
    assert_eq!(queue[0].cars[2].eta_secs, Some(eta));
}

#[test]
fn durations_read_as_people_say_them() {
    assert_eq!(text::about(0), "under a minute");
    assert_eq!(text::about(61_000), "about 2 min");
    assert_eq!(text::about(89 * 60_000), "about 89 min");
    assert_eq!(text::about(90 * 60_000 + 1), "about 2 h");
    assert_eq!(
        text::in_train("main", 10, None),
        "11th in the train for main"
    );
    assert_eq!(
        text::in_train("main", 21, None),
        "22nd in the train for main"
    );
}

/// Two approved PRs whose own tests passed, both cars built and passed:
/// returns the actions of the last car's pass (the `Land`).
fn two_passed_cars(bot: &mut Bot) -> Vec<Action> {
    let mut all = Vec::new();
    for n in 1..=2 {
        bot.open(n, 0xa0 + n as u32);
        bot.approve(n);
        let b = bot.build_of(n).unwrap();
        all.extend(bot.finish(&b, Outcome::Passed));
    }
    for _ in 0..2 {
        all = bot.build_cars(&all);
    }
    // The second car passes first: it holds both PRs and lands them.
    let mut tests = bot.car_tests();
    tests.sort_by_key(|(_, c)| std::cmp::Reverse(c.prs.len()));
    let (build, candidate) = tests[0].clone();
    let landing = bot.finish_as(&build, candidate, Outcome::Passed);
    let (build, candidate) = tests[1].clone();
    bot.finish_as(&build, candidate, Outcome::Passed);
    landing
}

fn train_cars(bot: &Bot) -> Vec<Car> {
    bot.state.repo(&repo_name()).unwrap().trains["main"]
        .cars
        .clone()
}

#[test]
fn a_landing_waits_for_the_branchs_other_required_checks_and_says_so() {
    let mut bot = train_bot(2);
    let a = two_passed_cars(&mut bot);
    assert_eq!(lands(&a).len(), 1);
    let car2 = train_cars(&bot)[1].id;
    // The driver found "ci/build" required and not passed on car 2.
    let a = bot.ev(Event::LandWaiting {
        repo: repo_name(),
        branch: "main".into(),
        pending: vec!["ci/build".into()],
    });
    assert!(lands(&a).is_empty());
    let waiting = format!(
        "waiting for required check \"ci/build\" on sluice/main/{car2} (not passed yet; does your CI run on pushes to sluice/**?)"
    );
    assert_eq!(
        retries(&a),
        vec![(2, "land".into(), RetryKind::ChecksPending, waiting.clone())],
        "the landing's retry is recorded under its car's PR"
    );
    let retrying = bot
        .view(1)
        .retrying
        .expect("both PRs of the landing say it");
    assert_eq!(
        (retrying.stage, retrying.kind),
        ("land", RetryKind::ChecksPending)
    );
    let st = statuses(&a);
    assert_eq!(st.len(), 2, "both PRs say what they wait for: {st:?}");
    assert_eq!(
        st[0].2,
        format!("1st in the train for main, passed; {waiting}")
    );
    assert_eq!(
        bot.view(2).waiting_on,
        vec![format!("2nd in the train for main, passed; {waiting}")],
        "the JSON says what the status says"
    );
    // Asked again after CHECKS_POLL_MS, not before; the same answer sends
    // no new status.
    assert!(lands(&bot.ev(Event::Tick)).is_empty());
    bot.now += CHECKS_POLL_MS;
    let a = bot.ev(Event::Tick);
    assert_eq!(lands(&a).len(), 1);
    let a = bot.ev(Event::LandWaiting {
        repo: repo_name(),
        branch: "main".into(),
        pending: vec!["ci/build".into()],
    });
    assert!(statuses(&a).is_empty(), "{:?}", statuses(&a));
    assert!(retries(&a).is_empty(), "the same reason is recorded once");
}

#[test]
fn a_car_lost_to_infrastructure_is_tested_again_and_says_so() {
    let mut bot = train_bot(1);
    bot.enter_train(2);
    bot.build_train();
    let tests = bot.car_tests();
    assert_eq!(tests.len(), 1);
    let (first, _) = tests[0].clone();
    let a = bot.finish(&first, Outcome::Error);
    assert_eq!(
        retries(&a),
        vec![(
            1,
            "test".into(),
            RetryKind::Infrastructure,
            "infrastructure error; testing again (attempt 2 of 3) (exit code 1)".into()
        )],
        "recorded with the executor's detail"
    );
    let (again, _) = bot.car_tests()[0].clone();
    assert_ne!(again, first, "car 1 is tested again");
    let retrying = bot.view(1).retrying.expect("the JSON says so");
    assert_eq!(
        (retrying.stage, retrying.kind),
        ("test", RetryKind::Infrastructure)
    );
    assert_eq!(
        retrying.message,
        "infrastructure error; testing again (attempt 2 of 3)"
    );
    assert_eq!(bot.view(2).retrying, None, "car 2 had no error");
    // Passing now: nothing is being retried.
    bot.finish(&again, Outcome::Passed);
    assert_eq!(bot.view(1).retrying, None);
}

#[test]
fn a_required_check_failing_on_a_car_ejects_its_pr_and_the_cars_ahead_land() {
    let mut bot = train_bot(2);
    two_passed_cars(&mut bot);
    let cars = train_cars(&bot);
    bot.ev(Event::LandWaiting {
        repo: repo_name(),
        branch: "main".into(),
        pending: vec!["ci/build".into()],
    });
    bot.now += CHECKS_POLL_MS;
    bot.ev(Event::Tick);
    let a = bot.ev(Event::CarCheckFailed {
        repo: repo_name(),
        branch: "main".into(),
        car: cars[1].id,
        context: "ci/build".into(),
        description: "2 tests failed".into(),
    });
    let st = statuses(&a);
    let two = st.iter().find(|s| s.0 == sha(0xa2)).unwrap();
    assert_eq!(two.1, CommitState::Failure);
    assert_eq!(
        two.2,
        format!(
            "left the train for main: required check \"ci/build\" failed on its car sluice/main/{}: 2 tests failed",
            cars[1].id
        )
    );
    // Structured, in the JSON and the history.
    let ejected = bot.view(2).ejected.unwrap();
    assert_eq!(
        (ejected.stage, ejected.kind),
        ("checks", EjectKind::CheckFailed)
    );
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Record(HistoryEntry::Ejected { stage, cause: EjectKind::CheckFailed, .. }) if stage == "checks"
    )));
    // Car 1 passed and lands at once, alone.
    let car1 = cars[0].state.sha().unwrap().clone();
    assert_eq!(lands(&a), vec![(sha(0x100), car1)]);
    // An answer about a landing no longer asked for changes nothing.
    let a = bot.ev(Event::CarCheckFailed {
        repo: repo_name(),
        branch: "main".into(),
        car: cars[1].id,
        context: "ci/build".into(),
        description: String::new(),
    });
    assert!(statuses(&a).is_empty());
}

#[test]
fn a_squashed_or_rebased_landing_closes_its_prs_and_a_merged_one_leaves_that_to_github() {
    for method in [MergeMethod::Merge, MergeMethod::Squash, MergeMethod::Rebase] {
        let mut bot = Bot::new(RepoPolicy {
            max_concurrent_builds: 8,
            train_depth: 3,
            merge_method: method,
            ..RepoPolicy::default()
        });
        for n in 1..=3 {
            bot.open(n, 0xa0 + n as u32);
            bot.approve(n);
            let b = bot.build_of(n).unwrap();
            bot.finish(&b, Outcome::Passed);
        }
        for _ in 0..3 {
            let cars = bot.cars_building();
            bot.build_cars(&cars);
        }
        let mut tests = bot.car_tests();
        tests.sort_by_key(|(_, c)| c.prs.len());
        assert_eq!(tests.len(), 3);
        // The last car passes first: all three land at once.
        let mut lands_to = Vec::new();
        for (build, candidate) in tests.iter().rev() {
            lands_to.extend(lands(&bot.finish_as(
                build,
                candidate.clone(),
                Outcome::Passed,
            )));
        }
        let car = |i: usize| tests[i].1.car.clone().unwrap();
        let (c1, c2, c3) = (car(0), car(1), car(2));
        assert_eq!(lands_to, vec![(sha(0x100), c3.clone())]);
        let ids: Vec<u64> = bot.state.repo(&repo_name()).unwrap().trains["main"]
            .cars
            .iter()
            .map(|c| c.id)
            .collect();
        // #3 is pushed to while its car lands: it stays open.
        bot.ev(Event::PrUpdated(snap(3, 0xd3, "main")));
        let a = bot.ev(Event::Landed {
            repo: repo_name(),
            branch: "main".into(),
            sha: c3.clone(),
        });
        let closes: Vec<&Action> = a
            .iter()
            .filter(|x| matches!(x, Action::ClosePr { .. }))
            .collect();
        if method == MergeMethod::Merge {
            assert!(closes.is_empty(), "GitHub marks them merged: {closes:?}");
            continue;
        }
        let expected: Vec<Action> = [(1, c1), (2, c2)]
            .into_iter()
            .map(|(n, landed)| Action::ClosePr {
                pr: key(n),
                head: sha(0xa0 + n as u32),
                landed,
                branch: "main".into(),
                method,
                car: staging_ref("main", ids[n as usize - 1]),
                link: ResultKey {
                    repo: repo_name(),
                    pr: n,
                    head: sha(0xa0 + n as u32),
                    build: tests[n as usize - 1].0.clone(),
                },
            })
            .collect();
        assert_eq!(
            closes,
            expected.iter().collect::<Vec<_>>(),
            "{method:?}: each landed PR with its own car's sha and test, not the pushed one"
        );
        assert!(bot.state.pr(&key(1)).is_none() && bot.state.pr(&key(2)).is_none());
        assert!(bot.state.pr(&key(3)).is_some(), "#3 is tested again");
    }
}

#[test]
fn the_landed_comment_names_the_sha_the_car_and_its_test_and_no_name_becomes_markup() {
    let c = text::landed_comment(
        "main",
        &sha(0xabc),
        MergeMethod::Squash,
        "sluice/main/7",
        "https://sluice.example/results/x/",
    );
    assert_eq!(
        c,
        format!(
            "Landed on `main` as {} by sluice (squash, car `sluice/main/7`, \
             [tested build](https://sluice.example/results/x/)). \
             GitHub does not mark a squashed PR merged, so sluice closed it.",
            sha(0xabc)
        )
    );
    assert_eq!(text::code("a`b"), "`` a`b ``");
    assert_eq!(text::code("``x"), "``` ``x ```");
    assert_eq!(text::code("$(x)"), "`$(x)`");
}

#[test]
fn a_paused_branch_takes_and_lands_nothing_and_a_draining_one_only_lands() {
    let mut bot = train_bot(2);
    let set = |bot: &mut Bot, mode: BranchMode| {
        let request = bot.request();
        bot.ev(Event::SetBranchMode {
            repo: repo_name(),
            branch: "main".into(),
            mode,
            request,
        })
    };
    bot.open(1, 0xa1);
    bot.approve(1);
    let a = set(&mut bot, BranchMode::Paused);
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Record(HistoryEntry::BranchMode {
            from: BranchMode::Running,
            to: BranchMode::Paused,
            ..
        })
    )));
    // Its own test passes, but it does not enter.
    let b = bot.build_of(1).unwrap();
    let a = bot.finish(&b, Outcome::Passed);
    assert!(car_builds(&a).is_empty());
    assert!(
        bot.view(1)
            .waiting_on
            .iter()
            .any(|w| w.contains("is paused")),
        "{:?}",
        bot.view(1).waiting_on
    );
    // Draining takes nothing new either; running again lets it in.
    set(&mut bot, BranchMode::Draining);
    assert!(bot.state.train_position(&key(1)).is_none());
    let a = set(&mut bot, BranchMode::Running);
    assert_eq!(car_builds(&a).len(), 1);
    // In the train, paused: its car's test passes but nothing lands.
    let a = bot.build_cars(&a);
    assert_eq!(bot.car_tests().len(), 1, "{a:?}");
    set(&mut bot, BranchMode::Paused);
    let (build, candidate) = bot.car_tests()[0].clone();
    let a = bot.finish_as(&build, candidate, Outcome::Passed);
    assert!(lands(&a).is_empty());
    assert!(
        bot.state
            .pr(&key(1))
            .unwrap()
            .published
            .as_ref()
            .unwrap()
            .description
            .contains("is paused")
    );
    // Draining lands what is in the train.
    let a = set(&mut bot, BranchMode::Draining);
    assert_eq!(lands(&a).len(), 1);
}

#[test]
fn an_urgent_pr_goes_to_the_front_of_the_train_and_the_cars_behind_are_rebuilt() {
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 8,
        train_depth: 3,
        urgent_label: Some("urgent".into()),
        ..RepoPolicy::default()
    });
    let mut all = Vec::new();
    for n in 1..=2 {
        bot.open(n, 0xa0 + n as u32);
        bot.approve(n);
        let b = bot.build_of(n).unwrap();
        all.extend(bot.finish(&b, Outcome::Passed));
    }
    for _ in 0..2 {
        all = bot.build_cars(&all);
    }
    assert_eq!(bot.car_tests().len(), 2);
    let order = |bot: &Bot| -> Vec<u64> { train_cars(bot).iter().map(|c| c.pr.number).collect() };
    assert_eq!(order(&bot), vec![1, 2]);
    // PR 3 is urgent: it enters in front, and both cars are rebuilt on it.
    let mut urgent = snap(3, 0xa3, "main");
    urgent.labels = vec!["urgent".into()];
    bot.ev(Event::PrUpdated(urgent.clone()));
    bot.approve(3);
    let b = bot.build_of(3).unwrap();
    let a = bot.finish(&b, Outcome::Passed);
    assert_eq!(order(&bot), vec![3, 1, 2]);
    assert_eq!(cancelled(&a).len(), 2, "the cars of #1 and #2 are rebuilt");
    let built = car_builds(&a);
    assert_eq!(built.len(), 1);
    assert_eq!(
        (built[0].1.clone(), built[0].2.clone()),
        (sha(0x100), sha(0xa3))
    );
    // A label added to a PR in the train moves it up too.
    let mut two = snap(2, 0xa2, "main");
    two.labels = vec!["urgent".into()];
    bot.ev(Event::PrUpdated(two));
    assert_eq!(order(&bot), vec![3, 2, 1]);
}

/// PRs approved one after another share batches: a train with nothing
/// tested yet waits until no PR entered for `gather_ms`, asks to be woken
/// then, and tests them as one plan; without batches it never waits.
#[test]
fn a_train_gathers_prs_entering_together_before_its_first_tests() {
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 2,
        train_depth: 2,
        batch: planner::BatchSize::Fixed(3),
        gather_ms: 10_000,
        ..RepoPolicy::default()
    });
    // Four PRs enter a second apart (each `ev` is a second).
    bot.enter_train(4);
    bot.build_train();
    assert!(
        bot.car_tests().is_empty(),
        "nothing tested while PRs arrive"
    );
    let train = &bot.state.repo(&repo_name()).unwrap().trains["main"];
    let last = train.cars.iter().map(|c| c.entered_at.0).max().unwrap();
    assert_eq!(train.cars.len(), 4);
    // A settle inside the window asks to be woken when it is quiet.
    let a = bot.ev(Event::Tick);
    assert!(
        a.contains(&Action::WakeAt {
            at: Timestamp(last + 10_000)
        }),
        "{a:?}"
    );
    assert!(bot.car_tests().is_empty());
    // Then both batches start: cars 3 and 4 (PRs 1-3, and 4).
    bot.now = last + 10_000;
    bot.ev(Event::Tick);
    let tested: Vec<usize> = bot.car_tests().iter().map(|(_, c)| c.prs.len()).collect();
    assert_eq!(tested.len(), 2, "{tested:?}");
    assert!(tested.contains(&3) && tested.contains(&4), "{tested:?}");

    // A train holding what one round can test (2 runners, batches of 2:
    // four PRs) does not wait for more.
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 2,
        train_depth: 2,
        batch: planner::BatchSize::Fixed(2),
        gather_ms: 10_000,
        ..RepoPolicy::default()
    });
    bot.enter_train(4);
    bot.build_train();
    assert_eq!(bot.car_tests().len(), 2);

    // Speculation one PR per car gains nothing from waiting.
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 2,
        train_depth: 2,
        gather_ms: 5_000,
        ..RepoPolicy::default()
    });
    bot.enter_train(1);
    bot.build_train();
    assert_eq!(bot.car_tests().len(), 1);
}

/// The tests a failure stops (the cars behind it hold the failing change)
/// free their runners for the bisection at once, not a CI cycle later.
#[test]
fn a_failed_batch_is_bisected_on_the_runners_its_doomed_cars_held() {
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 4,
        train_depth: 4,
        batch: planner::BatchSize::Fixed(4),
        bisect_parallel: 3,
        ..RepoPolicy::default()
    });
    bot.enter_train(16);
    bot.build_train();
    let mut tests = bot.car_tests();
    tests.sort_by_key(|(_, c)| c.prs.len());
    let sizes: Vec<usize> = tests.iter().map(|(_, c)| c.prs.len()).collect();
    assert_eq!(sizes, vec![4, 8, 12, 16], "four batches of four");
    // The first batch fails while the three behind it still run.
    bot.finish(&tests[0].0, Outcome::Failed);
    let mut now: Vec<usize> = bot.car_tests().iter().map(|(_, c)| c.prs.len()).collect();
    now.sort();
    assert_eq!(
        now,
        vec![1, 2, 3],
        "the batch's first three cars, each on the runner a stopped test held"
    );
}

/// A car whose build is stopped (the train was rebuilt) gets a final
/// status: its check run must not stay "in progress" forever.
#[test]
fn a_cancelled_cars_commit_is_marked_cancelled() {
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 8,
        train_depth: 3,
        urgent_label: Some("urgent".into()),
        car_statuses: true,
        ..RepoPolicy::default()
    });
    let mut all = Vec::new();
    for n in 1..=2 {
        bot.open(n, 0xa0 + n as u32);
        bot.approve(n);
        let b = bot.build_of(n).unwrap();
        all.extend(bot.finish(&b, Outcome::Passed));
    }
    for _ in 0..2 {
        all = bot.build_cars(&all);
    }
    let cars: Vec<Sha> = bot
        .car_tests()
        .iter()
        .filter_map(|(_, c)| c.car.clone())
        .collect();
    assert_eq!(cars.len(), 2);
    let mut urgent = snap(3, 0xa3, "main");
    urgent.labels = vec!["urgent".into()];
    bot.ev(Event::PrUpdated(urgent));
    bot.approve(3);
    let b = bot.build_of(3).unwrap();
    let a = bot.finish(&b, Outcome::Passed);
    for car in &cars {
        let status = a.iter().find_map(|x| match x {
            Action::SetStatus {
                sha,
                state,
                description,
                link,
                ..
            } if sha == car => Some((*state, description.clone(), link.clone())),
            _ => None,
        });
        let (state, description, link) = status.expect("the stopped car gets a status");
        assert_eq!(state, CommitState::Cancelled);
        assert!(
            description.starts_with("cancelled: the car is rebuilt"),
            "{description}"
        );
        assert!(link.is_some(), "it still links its (partial) build");
    }
}

/// The driver stores a build's results at `Candidate::results_key`; every
/// link the train writes must name that page. Car 2 holds #1 and #2: its
/// page is under #2, whose car it is (not under #1, which lands first).
#[test]
fn a_cars_landing_merge_records_and_ejection_link_to_the_page_its_test_wrote() {
    let mut bot = train_bot(3);
    bot.enter_train(3);
    bot.build_train();
    let mut tests = bot.car_tests();
    tests.sort_by_key(|(_, c)| c.prs.len());
    let page = |(build, candidate): &(BuildId, Candidate)| candidate.results_key(build).unwrap();
    // Car 2 passes (it lands at once, holding #1 too), then car 1: the
    // landing (through car 2) links to car 2's page.
    let a = bot.finish_as(&tests[1].0, tests[1].1.clone(), Outcome::Passed);
    bot.finish_as(&tests[0].0, tests[0].1.clone(), Outcome::Passed);
    let (to, link) = a
        .iter()
        .find_map(|x| match x {
            Action::Land { to, link, .. } => Some((to.clone(), link.clone())),
            _ => None,
        })
        .expect("cars 1 and 2 land");
    assert_eq!(Some(&to), tests[1].1.car.as_ref());
    assert_eq!(link, page(&tests[1]));
    // Car 3 (#3) fails: #3's failure status links to car 3's page.
    let a = bot.finish_as(&tests[2].0, tests[2].1.clone(), Outcome::Failed);
    let ejected = a
        .iter()
        .find_map(|x| match x {
            Action::SetStatus { sha: on, link, .. } if *on == sha(0xa3) => link.clone(),
            _ => None,
        })
        .expect("#3 gets a failure status with a link");
    assert_eq!(ejected, page(&tests[2]));
    assert_eq!(ejected.pr, 3);
    // Each PR's merge record names its own car's build, whose page is under
    // that PR and head (what `GET /history` links to).
    let a = bot.ev(Event::Landed {
        repo: repo_name(),
        branch: "main".into(),
        sha: to,
    });
    let records: Vec<ResultKey> = a
        .iter()
        .filter_map(|x| match x {
            Action::Record(HistoryEntry::Merged {
                pr, pair, build, ..
            }) => Some(ResultKey {
                repo: pr.repo.clone(),
                pr: pr.number,
                head: pair.head.clone(),
                build: build.clone(),
            }),
            _ => None,
        })
        .collect();
    assert_eq!(records, vec![page(&tests[0]), page(&tests[1])]);
}

/// GitHub's `push` webhook for sluice's own landing often arrives before
/// the answer to the ref update. A car tested meanwhile still holds the
/// landing car's PR: its candidate names the base that car was built on,
/// not the target it is landing on.
#[test]
fn a_car_tested_while_its_train_lands_names_the_base_its_cars_were_built_on() {
    let mut bot = train_bot(2);
    bot.enter_train(2);
    let cars: Vec<u64> = bot.state.repo(&repo_name()).unwrap().trains["main"]
        .cars
        .iter()
        .map(|c| c.id)
        .collect();
    let c1 = car_sha(&sha(0x100), &sha(0xa1));
    let a = bot.ev(Event::CarBuilt {
        repo: repo_name(),
        branch: "main".into(),
        car: cars[0],
        parent: sha(0x100),
        sha: c1.clone(),
    });
    assert_eq!(car_builds(&a), vec![(cars[1], c1.clone(), sha(0xa2))]);
    let (b1, first) = bot.car_tests()[0].clone();
    let a = bot.finish_as(&b1, first, Outcome::Passed);
    assert_eq!(lands(&a), vec![(sha(0x100), c1.clone())]);
    // The push of our own landing, before its answer.
    bot.ev(Event::BranchMoved {
        before: Some(sha(0x100)),
        repo: repo_name(),
        branch: "main".into(),
        sha: c1.clone(),
    });
    let c2 = car_sha(&c1, &sha(0xa2));
    bot.ev(Event::CarBuilt {
        repo: repo_name(),
        branch: "main".into(),
        car: cars[1],
        parent: c1.clone(),
        sha: c2.clone(),
    });
    let (_, second) = bot.car_tests()[0].clone();
    assert_eq!(second.car, Some(c2));
    assert_eq!(second.prs.len(), 2, "it holds #1 and #2");
    assert_eq!(
        second.target_sha,
        sha(0x100),
        "#1 and #2 are merged on the base, not on car 1"
    );
}

/// A restart lost a landing before GitHub moved the target: it is asked for
/// again at once, from the same base to the same car. (A refusal waits.)
#[test]
fn a_landing_lost_in_a_restart_is_asked_for_again_at_once() {
    let land_one = |bot: &mut Bot| {
        bot.open(1, 0xa1);
        bot.approve(1);
        let b = bot.build_of(1).unwrap();
        bot.finish(&b, Outcome::Passed);
        let car = bot.state.repo(&repo_name()).unwrap().trains["main"].cars[0].id;
        let c1 = car_sha(&sha(0x100), &sha(0xa1));
        bot.ev(Event::CarBuilt {
            repo: repo_name(),
            branch: "main".into(),
            car,
            parent: sha(0x100),
            sha: c1.clone(),
        });
        let (b1, candidate) = bot.car_tests()[0].clone();
        let a = bot.finish_as(&b1, candidate, Outcome::Passed);
        assert_eq!(lands(&a), vec![(sha(0x100), c1.clone())]);
        c1
    };
    let mut bot = train_bot(2);
    let c1 = land_one(&mut bot);
    let a = bot.ev(Event::LandingLost {
        repo: repo_name(),
        branch: "main".into(),
    });
    assert_eq!(lands(&a), vec![(sha(0x100), c1)]);

    let mut bot = train_bot(2);
    land_one(&mut bot);
    let a = bot.ev(Event::LandRefused {
        repo: repo_name(),
        branch: "main".into(),
        moved: false,
        reason: "Required status check \"sluice\" is expected.".into(),
    });
    assert!(lands(&a).is_empty());
    assert!(lands(&bot.ev(Event::Tick)).is_empty(), "it waits a minute");
}

/// A car fails while a car ahead of it is still tested: the failure may be
/// the car ahead's, so nobody is ejected until the cars ahead are decided.
/// Here car 3 (#1 #2 #3) and car 2 (#1 #2) fail before car 1 passes: #2 is
/// the culprit, and #3 stays in the train, rebuilt without #2.
#[test]
fn a_car_failing_behind_an_undecided_car_ejects_nobody_until_the_cars_ahead_pass() {
    let mut bot = train_bot(3);
    bot.enter_train(3);
    bot.build_train();
    let mut tests = bot.car_tests();
    tests.sort_by_key(|(_, c)| c.prs.len());
    assert_eq!(tests.len(), 3);
    let failure_of = |actions: &[Action], n: u32| {
        statuses(actions)
            .into_iter()
            .any(|(on, state, _)| on == sha(0xa0 + n) && state == CommitState::Failure)
    };
    let a = bot.finish_as(&tests[2].0, tests[2].1.clone(), Outcome::Failed);
    assert!(
        !failure_of(&a, 3),
        "car 2 is still tested: #3 is not to blame yet"
    );
    assert_eq!(bot.state.train_position(&key(3)), Some(2));
    let a = bot.finish_as(&tests[1].0, tests[1].1.clone(), Outcome::Failed);
    assert!(!failure_of(&a, 2), "car 1 is still tested");
    assert!(lands(&a).is_empty());
    // Car 1 passes: car 2 failed with only passed cars ahead: #2 is out,
    // and #3's car is rebuilt on car 1; car 1 lands.
    let a = bot.finish_as(&tests[0].0, tests[0].1.clone(), Outcome::Passed);
    assert!(failure_of(&a, 2), "#2 is ejected");
    assert!(!failure_of(&a, 3), "#3 was never to blame");
    let c1 = tests[0].1.car.clone().unwrap();
    assert_eq!(
        car_builds(&a)
            .iter()
            .map(|b| (&b.1, &b.2))
            .collect::<Vec<_>>(),
        vec![(&c1, &sha(0xa3))]
    );
    assert_eq!(lands(&a), vec![(sha(0x100), c1)]);
    assert_eq!(bot.state.train_position(&key(3)), Some(1));
    assert_eq!(bot.state.train_position(&key(2)), None);

    // The other way: car 2 fails, then car 1 fails: #1 is the culprit,
    // #2 is rebuilt on main without it and stays.
    let mut bot = train_bot(2);
    bot.enter_train(2);
    bot.build_train();
    let mut tests = bot.car_tests();
    tests.sort_by_key(|(_, c)| c.prs.len());
    let a = bot.finish_as(&tests[1].0, tests[1].1.clone(), Outcome::Failed);
    assert!(!failure_of(&a, 2));
    let a = bot.finish_as(&tests[0].0, tests[0].1.clone(), Outcome::Failed);
    assert!(failure_of(&a, 1));
    assert!(!failure_of(&a, 2));
    assert_eq!(
        car_builds(&a)
            .iter()
            .map(|b| (&b.1, &b.2))
            .collect::<Vec<_>>(),
        vec![(&sha(0x100), &sha(0xa2))]
    );
    assert_eq!(bot.state.train_position(&key(2)), Some(0));
}

/// The driver deletes the staging refs of landed cars as "every id up to
/// the last car landed": car ids must grow along the train, also after the
/// train is rebuilt with cars that were still waiting behind.
#[test]
fn car_ids_grow_along_the_train_after_it_is_rebuilt() {
    let mut bot = train_bot(1);
    bot.enter_train(3);
    let ids = |bot: &Bot| -> Vec<u64> {
        bot.state.repo(&repo_name()).unwrap().trains["main"]
            .cars
            .iter()
            .map(|c| c.id)
            .collect()
    };
    // Depth 1: car 1 is building, cars 2 and 3 wait. A push rebuilds all.
    bot.target("main", 0x200);
    let after = ids(&bot);
    assert_eq!(after.len(), 3);
    assert!(after.windows(2).all(|w| w[0] < w[1]), "{after:?}");
}

/// A status is marked published when decided; the process may be killed
/// before it is written. After a restart the last minute's decisions are
/// published again, older ones (written long ago) are not.
#[test]
fn a_restart_publishes_again_the_statuses_decided_just_before_it() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    let b = bot.build_of(1).unwrap();
    bot.finish(&b, Outcome::Failed);
    bot.now += 5 * 60 * 1000;
    bot.open(2, 0xa2);
    let b = bot.build_of(2).unwrap();
    let decided = bot.finish(&b, Outcome::Failed);
    let two = statuses(&decided)
        .into_iter()
        .find(|s| s.0 == sha(0xa2))
        .expect("#2's failure");
    let a = bot.ev(Event::Restarted);
    assert_eq!(statuses(&a), vec![two], "only #2's, decided last");
    assert!(started(&a).is_empty(), "nothing is tested again");
    assert!(statuses(&bot.ev(Event::Tick)).is_empty(), "once");
}

#[test]
fn the_watchdog_reports_cars_that_passed_but_do_not_land_and_cars_overdue() {
    let mut bot = train_bot(2);
    two_passed_cars(&mut bot);
    // GitHub keeps refusing: the landing is blocked, retried, never made.
    let refuse = |bot: &mut Bot| {
        bot.ev(Event::LandRefused {
            repo: repo_name(),
            branch: "main".into(),
            moved: false,
            reason: "Required status check \"x\" is expected.".into(),
        })
    };
    refuse(&mut bot);
    assert!(bot.state.stalls(Timestamp(bot.now)).is_empty(), "not yet");
    bot.now += STALL_MS + 1;
    let stalls = bot.state.stalls(Timestamp(bot.now));
    assert_eq!(stalls.len(), 1, "{stalls:?}");
    assert_eq!(stalls[0].kind, "passed_not_landing");
    assert!(
        stalls[0].message.contains("is expected"),
        "{}",
        stalls[0].message
    );
    // Landing clears it.
    let to = train_cars(&bot)[1].state.sha().unwrap().clone();
    bot.now += MERGE_RETRY_MS;
    bot.ev(Event::Tick);
    bot.ev(Event::Landed {
        repo: repo_name(),
        branch: "main".into(),
        sha: to,
    });
    assert!(bot.state.stalls(Timestamp(bot.now)).is_empty());
    // A car test that runs far past the usual: overdue.
    bot.open(5, 0xa5);
    bot.approve(5);
    let b = bot.build_of(5).unwrap();
    let a = bot.finish(&b, Outcome::Passed);
    bot.build_cars(&a);
    assert_eq!(bot.car_tests().len(), 1);
    bot.now += STALL_MS + 1;
    let stalls = bot.state.stalls(Timestamp(bot.now));
    assert!(stalls.iter().any(|s| s.kind == "car_overdue"), "{stalls:?}");
}

// ---------------------------------------------------------- dependencies

impl Bot {
    /// PR `n` (head 0xa0 + n) opened with `Depends-On` lines for `deps`,
    /// approved, its own test passed.
    fn ready_depending_on(&mut self, n: u64, deps: &[PrKey]) {
        let mut s = snap(n, 0xa0 + n as u32, "main");
        s.depends_on = deps.to_vec();
        self.ev(Event::PrUpdated(s));
        self.approve(n);
        let b = self.build_of(n).unwrap();
        self.finish(&b, Outcome::Passed);
    }
    fn published(&self, n: u64) -> PublishedStatus {
        self.state.pr(&key(n)).unwrap().published.clone().unwrap()
    }
}

fn train_order(bot: &Bot) -> Vec<u64> {
    bot.state
        .repo(&repo_name())
        .unwrap()
        .trains
        .get("main")
        .map(|t| t.cars.iter().map(|c| c.pr.number).collect())
        .unwrap_or_default()
}

#[test]
fn a_pr_enters_the_train_only_behind_what_it_depends_on() {
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 8,
        train_depth: 3,
        urgent_label: Some("urgent".into()),
        ..RepoPolicy::default()
    });
    // #2 depends on #1, which is not approved yet: #2 waits and says why.
    bot.open(1, 0xa1);
    bot.ready_depending_on(2, &[key(1)]);
    assert_eq!(train_order(&bot), Vec::<u64>::new());
    let status = bot.published(2);
    assert_eq!(status.state, CommitState::Pending);
    assert_eq!(status.description, text::dependency_not_in_train("#1"));
    assert!(
        bot.view(2)
            .waiting_on
            .contains(&text::dependency_not_in_train("#1"))
    );
    assert_eq!(bot.view(2).depends_on, vec!["#1".to_string()]);
    // #1 enters, and #2 behind it, in the same settle.
    bot.approve(1);
    let b = bot.build_of(1).unwrap();
    bot.finish(&b, Outcome::Passed);
    assert_eq!(train_order(&bot), vec![1, 2]);
    // An urgent label does not put #2 ahead of what it depends on, and does
    // not make it leave and re-enter at every settle.
    let mut urgent = snap(2, 0xa2, "main");
    urgent.labels = vec!["urgent".into()];
    urgent.depends_on = vec![key(1)];
    let a = bot.ev(Event::PrUpdated(urgent));
    assert_eq!(train_order(&bot), vec![1, 2]);
    assert!(cancelled(&a).is_empty(), "{a:?}");
    let a = bot.ev(Event::Tick);
    assert!(cancelled(&a).is_empty() && car_builds(&a).is_empty());
    // #1 gets a new commit: it leaves, and #2 (no longer behind it) too.
    bot.open(1, 0xb1);
    assert_eq!(train_order(&bot), Vec::<u64>::new());
    assert_eq!(
        bot.published(2).description,
        text::dependency_not_in_train("#1")
    );
}

#[test]
fn a_cycle_or_a_dependency_closed_without_merging_is_said_and_nothing_enters() {
    let mut bot = train_bot(3);
    bot.ready_depending_on(1, &[key(2)]);
    bot.ready_depending_on(2, &[key(1)]);
    assert_eq!(train_order(&bot), Vec::<u64>::new());
    assert_eq!(
        bot.published(1).description,
        text::dependency_cycle(&[1, 2, 1])
    );
    assert_eq!(
        bot.published(2).description,
        text::dependency_cycle(&[2, 1, 2])
    );
    // #2 is closed without merging: #1 can never have it ahead.
    bot.ev(Event::PrClosedUnmerged(key(2)));
    assert_eq!(train_order(&bot), Vec::<u64>::new());
    assert_eq!(bot.published(1).description, text::dependency_closed("#2"));
    // A dependency merged by someone else is done: #3 enters at once.
    bot.ev(Event::PrUpdated(snap(4, 0xa4, "main")));
    bot.ev(Event::PrClosed(key(4)));
    bot.ready_depending_on(3, &[key(4)]);
    assert_eq!(train_order(&bot), vec![3]);
}

#[test]
fn a_dependency_in_another_repository_lands_first() {
    let other = RepoName::parse("octo/lib").unwrap();
    let policy = RepoPolicy {
        max_concurrent_builds: 8,
        train_depth: 3,
        ..RepoPolicy::default()
    };
    let mut bot = Bot {
        state: State::new(
            [(repo_name(), policy.clone()), (other.clone(), policy)],
            "t",
        ),
        now: 1_000_000,
        next_request: 1,
    };
    bot.target("main", 0x100);
    let lib = PrKey {
        repo: other.clone(),
        number: 5,
    };
    let mut s = snap(5, 0xc5, "main");
    s.key = lib.clone();
    bot.ev(Event::PrUpdated(s));
    let unknown = PrKey {
        repo: RepoName::parse("elsewhere/thing").unwrap(),
        number: 9,
    };
    bot.ready_depending_on(1, std::slice::from_ref(&lib));
    bot.ready_depending_on(2, &[unknown]);
    assert_eq!(train_order(&bot), Vec::<u64>::new());
    assert_eq!(
        bot.published(1).description,
        text::dependency_not_landed("octo/lib#5")
    );
    assert_eq!(
        bot.published(2).description,
        text::dependency_unknown("elsewhere/thing#9")
    );
    // octo/lib#5 merges: #1 enters without anything else happening in its
    // own repository.
    bot.ev(Event::PrClosed(lib));
    assert_eq!(train_order(&bot), vec![1]);
}

// ---- comment commands (core/comments.rs) ----

impl Bot {
    /// Comment `id` by `who` on PR `n`.
    /// Comment `id` by `who` on PR `n`, and GitHub's answer when sluice
    /// asks whether `who` may write (the actions of both, in order).
    fn comment(&mut self, n: u64, id: u64, who: &str, can_write: bool, body: &str) -> Vec<Action> {
        let mut a = self.ev(Event::Commented {
            pr: key(n),
            comment: id,
            author: who.into(),
            body: body.into(),
        });
        let asked = a.iter().any(
            |x| matches!(x, Action::CheckWriteAccess { user, comment, .. } if user == who && *comment == id),
        );
        if asked {
            a.extend(self.ev(Event::WriteAccess {
                repo: repo_name(),
                comment: id,
                can_write: Some(can_write),
            }));
        }
        a
    }
    /// PR `n` opened, approved and passing its own test.
    fn ready(&mut self, n: u64) -> Vec<Action> {
        self.open(n, 0xa0 + n as u32);
        self.approve(n);
        let b = self.build_of(n).unwrap();
        self.finish(&b, Outcome::Passed)
    }
}

/// The answers in `actions`: reactions as ("react", "+1"), replies as
/// ("answer", body).
fn answers(actions: &[Action]) -> Vec<(&'static str, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::React { content, .. } => Some(("react", content.clone())),
            Action::Answer { body, .. } => Some(("answer", body.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn with_land_on_command_a_writers_merge_lands_and_a_readers_is_refused_with_a_reply() {
    let mut bot = Bot::new(RepoPolicy {
        land_on: LandOn::Command,
        ..RepoPolicy::default()
    });
    let a = bot.ready(1);
    assert!(merges(&a).is_empty(), "approved and passing is not enough");
    assert!(
        bot.view(1)
            .waiting_on
            .contains(&text::waits_for_merge_command()),
        "{:?}",
        bot.view(1).waiting_on
    );
    let said = statuses(&a).last().unwrap().2.clone();
    assert!(
        said.ends_with("waits for /merge from someone with write access"),
        "{said}"
    );
    // A reader's /merge: refused, said why, nothing lands.
    let a = bot.comment(1, 10, "rita", false, "/merge");
    assert!(merges(&a).is_empty());
    let got = answers(&a);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "answer");
    assert!(
        got[0]
            .1
            .contains("@rita cannot /merge here: only people with write access to octo/demo can"),
        "{}",
        got[0].1
    );
    // A writer's: a reaction, and the PR lands.
    let a = bot.comment(1, 11, "wendy", true, "Looks good.\n/merge\n");
    assert_eq!(answers(&a), vec![("react", "+1".to_string())]);
    assert_eq!(merges(&a).len(), 1);
    assert_eq!(
        bot.state.pr(&key(1)).unwrap().asked.merge.as_deref(),
        Some("wendy")
    );
}

#[test]
fn a_merge_asked_before_approval_is_remembered_until_the_pr_can_land() {
    let mut bot = Bot::new(RepoPolicy {
        land_on: LandOn::Command,
        ..RepoPolicy::default()
    });
    bot.open(1, 0xa1);
    assert_eq!(
        answers(&bot.comment(1, 10, "wendy", true, "/merge")).len(),
        1
    );
    let b = bot.build_of(1).unwrap();
    assert!(
        merges(&bot.finish(&b, Outcome::Passed)).is_empty(),
        "not approved yet"
    );
    assert_eq!(merges(&bot.approve(1)).len(), 1, "approved: it lands now");
}

#[test]
fn hold_and_cancel_take_a_pr_out_of_the_train_and_unhold_and_merge_bring_it_back() {
    let mut bot = train_bot(2);
    bot.enter_train(2);
    bot.build_train();
    assert_eq!(bot.car_tests().len(), 2);
    // /hold: #1 leaves the train, its car's test stops; #2 is rebuilt alone.
    let a = bot.comment(1, 10, "wendy", true, "/hold");
    assert_eq!(answers(&a), vec![("react", "+1".to_string())]);
    assert!(
        !cancelled(&a).is_empty(),
        "its car's test is stopped: {a:?}"
    );
    assert_eq!(bot.view(1).train_position, None);
    assert!(
        bot.view(1)
            .waiting_on
            .iter()
            .any(|w| w == &text::held_by("wendy")),
        "{:?}",
        bot.view(1).waiting_on
    );
    assert_eq!(bot.view(2).train_position, Some(0));
    // /unhold: it enters again, behind #2.
    bot.comment(1, 11, "wendy", true, "/unhold");
    assert_eq!(bot.view(1).train_position, Some(1));
    // /cancel: out again, until a /merge.
    bot.comment(1, 12, "wendy", true, "/cancel");
    assert_eq!(bot.view(1).train_position, None);
    assert!(
        bot.view(1)
            .waiting_on
            .contains(&text::cancelled_by("wendy"))
    );
    bot.ev(Event::Tick);
    assert_eq!(bot.view(1).train_position, None, "it stays out");
    bot.comment(1, 13, "wendy", true, "/merge");
    assert_eq!(bot.view(1).train_position, Some(1));
}

#[test]
fn a_comment_is_answered_once_and_quotes_code_and_prose_do_nothing() {
    let mut bot = Bot::new(RepoPolicy {
        land_on: LandOn::Command,
        ..RepoPolicy::default()
    });
    bot.ready(1);
    for body in [
        "> /merge",
        "```\n/merge\n```",
        "    /merge",
        "please /merge this",
        "see /usr/bin/env",
    ] {
        let a = bot.comment(1, 20, "wendy", true, body);
        assert!(a.is_empty(), "{body:?}: {a:?}");
        // A comment with nothing for sluice is not remembered as answered.
        bot.state
            .repos
            .get_mut(&repo_name())
            .unwrap()
            .answered_comments
            .clear();
    }
    // The same delivery twice: one answer, one merge.
    let a = bot.comment(1, 21, "wendy", true, "/merge");
    assert_eq!(answers(&a).len(), 1);
    assert_eq!(merges(&a).len(), 1);
    assert!(bot.comment(1, 21, "wendy", true, "/merge").is_empty());
    // 100 lines of commands, some unknown: one answer, naming the dropped ones.
    let mut body = String::new();
    for k in 0..100 {
        body.push_str(if k % 2 == 0 {
            "/hold\n"
        } else {
            "/frobnicate\n"
        });
    }
    let got = answers(&bot.comment(1, 22, "wendy", true, &body));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].1.contains("80 were not read"), "{}", got[0].1);
    assert!(
        got[0].1.contains("unknown command `/frobnicate`"),
        "{}",
        got[0].1
    );
}

#[test]
fn retest_priority_and_help_from_authors_and_writers() {
    let mut bot = Bot::new(RepoPolicy {
        priority_labels: vec!["high".into()],
        ..RepoPolicy::default()
    });
    bot.open(1, 0xa1);
    let first = bot.build_of(1).unwrap();
    // The PR's author (snap's author) may /retest without write access.
    let author = bot.state.pr(&key(1)).unwrap().snapshot.author.clone();
    let a = bot.comment(1, 30, &author, false, "/retest");
    assert_eq!(answers(&a), vec![("react", "+1".to_string())]);
    assert!(cancelled(&a).contains(&first), "the old build stops");
    assert_eq!(started(&a).len(), 1, "and a new one starts");
    // But not /hold.
    let got = answers(&bot.comment(1, 31, &author, false, "/hold"));
    assert!(got[0].1.contains("cannot /hold here"), "{got:?}");
    // A priority label the repository configures, in any case; a hostile
    // one is refused, said back as code, and runs nothing.
    let a = bot.comment(1, 32, "wendy", true, "/priority HIGH");
    assert_eq!(answers(&a), vec![("react", "+1".to_string())]);
    assert!(bot.state.pr(&key(1)).unwrap().has_label("high"));
    let got = answers(&bot.comment(1, 33, "wendy", true, "/priority $(rm -rf /)"));
    assert_eq!(got.len(), 1);
    assert!(
        got[0]
            .1
            .contains("`$(rm -rf /)` is not a priority label here; the labels are `high`"),
        "{}",
        got[0].1
    );
    // Help: a reply with the reference, from anyone.
    let got = answers(&bot.comment(1, 34, "rita", false, "/sluice help"));
    assert_eq!(got.len(), 1);
    assert!(got[0].1.contains("`/merge`: land the PR"), "{}", got[0].1);
}

#[test]
fn a_commenters_access_is_asked_once_again_after_a_restart_and_an_unknown_answer_is_said() {
    let mut bot = Bot::default();
    bot.ready(1);
    let a = bot.ev(Event::Commented {
        pr: key(1),
        comment: 40,
        author: "wendy".into(),
        body: "/hold".into(),
    });
    let asks = |a: &[Action]| {
        a.iter()
            .filter(|x| matches!(x, Action::CheckWriteAccess { comment: 40, .. }))
            .count()
    };
    assert_eq!(asks(&a), 1);
    assert!(answers(&a).is_empty(), "nothing is done before the answer");
    assert_eq!(
        asks(&bot.ev(Event::Restarted)),
        1,
        "asked again after a restart"
    );
    // The same delivery again: not asked twice.
    let again = bot.ev(Event::Commented {
        pr: key(1),
        comment: 40,
        author: "wendy".into(),
        body: "/hold".into(),
    });
    assert_eq!(asks(&again), 0);
    let a = bot.ev(Event::WriteAccess {
        repo: repo_name(),
        comment: 40,
        can_write: None,
    });
    let got = answers(&a);
    assert_eq!(got.len(), 1);
    assert!(
        got[0]
            .1
            .contains("could not ask GitHub whether @wendy may write"),
        "{}",
        got[0].1
    );
    assert!(bot.state.pr(&key(1)).unwrap().asked.hold.is_none());
    // A late second answer changes nothing.
    assert!(
        bot.ev(Event::WriteAccess {
            repo: repo_name(),
            comment: 40,
            can_write: Some(true),
        })
        .is_empty()
    );
}

#[test]
fn phases_are_counted_for_every_state() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    bot.open(2, 0xa2);
    let b = bot.build_of(1).unwrap();
    bot.finish(&b, Outcome::Passed);
    let counts: PhaseCounts = bot.state.pr_phases_iter().map(|(_, p)| p).collect();
    assert_eq!(counts.iter().count(), Phase::ALL.len(), "every state named");
    assert_eq!(
        (counts.get(Phase::Passed), counts.get(Phase::Testing)),
        (1, 1)
    );
    assert_eq!(counts.get(Phase::Failed), 0);
    let views = bot.state.pr_views();
    assert_eq!(
        views.iter().map(|v| v.phase).collect::<PhaseCounts>(),
        counts,
        "the counting pass agrees with the views"
    );
    assert_eq!(
        Phase::parse("waiting_for_target"),
        Some(Phase::WaitingForTarget)
    );
    assert_eq!(Phase::parse("merged"), None);
    for p in Phase::ALL {
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            p.name(),
            "the JSON's name"
        );
    }
}

// ------------------------------------------------- landings in flight

fn merged_records(actions: &[Action]) -> Vec<(u64, Sha)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(HistoryEntry::Merged { pr, merge_sha, .. }) => {
                Some((pr.number, merge_sha.clone()))
            }
            _ => None,
        })
        .collect()
}

fn ejections(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(HistoryEntry::Ejected { pr, .. }) => Some(pr.number),
            _ => None,
        })
        .collect()
}

/// Car 2 (#1 #2) passed while car 1 (#1) still tested: the landing through
/// car 2 is asked for. Car 1's test then fails: its PR is landing (car 2's
/// test covered it), so nobody is blamed, and the landing's answer records
/// both PRs as merged at car 2's sha.
#[test]
fn a_failure_inside_a_landing_in_flight_ejects_nobody_and_the_landing_is_recorded() {
    let mut bot = train_bot(2);
    bot.enter_train(2);
    bot.build_train();
    let mut tests = bot.car_tests();
    tests.sort_by_key(|(_, c)| c.prs.len());
    assert_eq!(tests.len(), 2);
    let c2 = tests[1].1.car.clone().unwrap();
    let a = bot.finish_as(&tests[1].0, tests[1].1.clone(), Outcome::Passed);
    assert_eq!(lands(&a), vec![(sha(0x100), c2.clone())]);
    // Car 1's own test, still running, fails.
    let a = bot.finish_as(&tests[0].0, tests[0].1.clone(), Outcome::Failed);
    assert!(ejections(&a).is_empty(), "nobody is blamed: {a:?}");
    assert!(
        !statuses(&a)
            .iter()
            .any(|(on, state, _)| *on == sha(0xa1) && *state == CommitState::Failure),
        "#1 is landing, not failing"
    );
    assert!(bot.view(1).ejected.is_none());
    // GitHub moved main to car 2: both PRs are merged there.
    let a = bot.ev(Event::Landed {
        repo: repo_name(),
        branch: "main".into(),
        sha: c2.clone(),
    });
    assert_eq!(merged_records(&a), vec![(1, c2.clone()), (2, c2.clone())]);
    assert!(bot.state.pr(&key(1)).is_none());
    assert!(bot.state.pr(&key(2)).is_none());
    let repo = bot.state.repo(&repo_name()).unwrap();
    assert_eq!(repo.branch_head("main"), Some(&c2));
    assert!(repo.trains.is_empty());
}

/// Whatever became of the train while a landing was in flight, a `Landed`
/// for it means its PRs are on the target: they are recorded merged, and
/// what is left of the train is rebuilt on the new head.
#[test]
fn a_landing_whose_train_changed_in_flight_still_records_what_landed() {
    let mut bot = train_bot(2);
    let a = two_passed_cars(&mut bot);
    let (_, to) = lands(&a)[0].clone();
    bot.open(3, 0xa3);
    bot.approve(3);
    let b = bot.build_of(3).unwrap();
    bot.finish(&b, Outcome::Passed);
    assert_eq!(train_order(&bot), vec![1, 2, 3]);
    // The train is rebuilt under the landing (new car ids, nothing built).
    {
        let repo = bot.state.repos.get_mut(&repo_name()).unwrap();
        let train = repo.trains.get_mut("main").unwrap();
        for car in &mut train.cars {
            repo.next_car += 1;
            car.id = repo.next_car;
            car.state = CarState::Waiting;
        }
    }
    let a = bot.ev(Event::Landed {
        repo: repo_name(),
        branch: "main".into(),
        sha: to.clone(),
    });
    assert_eq!(merged_records(&a), vec![(1, to.clone()), (2, to.clone())]);
    assert!(bot.state.pr(&key(1)).is_none());
    assert!(bot.state.pr(&key(2)).is_none());
    assert_eq!(train_order(&bot), vec![3]);
    assert_eq!(
        car_builds(&a)
            .iter()
            .map(|b| (b.1.clone(), b.2.clone()))
            .collect::<Vec<_>>(),
        vec![(to, sha(0xa3))],
        "#3 is rebuilt on the landed car"
    );
}

/// GitHub refused a landing because main moved (a push raced it) before
/// sluice heard of the push: the landing is not asked for again from the
/// same base at once (that would refuse again, a call each time), but
/// after a read of the branch: a new head rebuilds the train on it; the
/// old head again is only retried after a while.
#[test]
fn a_landing_refused_because_the_target_moved_waits_for_the_branch_before_it_is_retried() {
    let mut bot = train_bot(2);
    let a = two_passed_cars(&mut bot);
    let (from, to) = lands(&a)[0].clone();
    let refused = |bot: &mut Bot| {
        bot.ev(Event::LandRefused {
            repo: repo_name(),
            branch: "main".into(),
            moved: true,
            reason: "Update is not a fast forward".into(),
        })
    };
    let a = refused(&mut bot);
    assert!(a.contains(&Action::FetchBranch {
        repo: repo_name(),
        branch: "main".into()
    }));
    assert!(lands(&a).is_empty(), "not again at once: {a:?}");
    assert!(lands(&bot.ev(Event::Tick)).is_empty());
    // The read says main is where it was (GitHub lagging): not at once.
    let as_of = Timestamp(bot.now);
    let a = bot.ev(Event::BranchRead {
        repo: repo_name(),
        branch: "main".into(),
        sha: Some(from.clone()),
        as_of,
    });
    assert!(lands(&a).is_empty());
    // After a while it is tried again, from the same base to the same car.
    bot.now += LAND_MOVED_RETRY_MS;
    assert_eq!(lands(&bot.ev(Event::Tick)), vec![(from, to)]);
    // Refused again; this time the read finds the push: the cars are
    // rebuilt on it, nothing lands meanwhile.
    refused(&mut bot);
    let as_of = Timestamp(bot.now);
    let a = bot.ev(Event::BranchRead {
        repo: repo_name(),
        branch: "main".into(),
        sha: Some(sha(0x200)),
        as_of,
    });
    assert!(lands(&a).is_empty());
    let built = car_builds(&a);
    assert_eq!(built.len(), 1);
    assert_eq!(
        (built[0].1.clone(), built[0].2.clone()),
        (sha(0x200), sha(0xa1))
    );
}

/// An urgent PR that entered behind a landing stays behind it while the
/// landing waits for other required checks: running, the passed car ahead
/// is not rebuilt behind it; draining, it is not dropped from the train
/// (it could not enter again).
#[test]
fn an_urgent_pr_behind_a_held_landing_keeps_its_place_running_or_draining() {
    for mode in [BranchMode::Running, BranchMode::Draining] {
        let mut bot = Bot::new(RepoPolicy {
            max_concurrent_builds: 8,
            train_depth: 2,
            urgent_label: Some("urgent".into()),
            ..RepoPolicy::default()
        });
        bot.enter_train(1);
        bot.build_train();
        let (build, candidate) = bot.car_tests()[0].clone();
        let a = bot.finish_as(&build, candidate, Outcome::Passed);
        let landing = lands(&a);
        assert_eq!(landing.len(), 1);
        // #2 is urgent: it enters behind the landing in flight.
        let mut urgent = snap(2, 0xa2, "main");
        urgent.labels = vec!["urgent".into()];
        bot.ev(Event::PrUpdated(urgent));
        bot.approve(2);
        let b = bot.build_of(2).unwrap();
        bot.finish(&b, Outcome::Passed);
        assert_eq!(train_order(&bot), vec![1, 2]);
        let request = bot.request();
        bot.ev(Event::SetBranchMode {
            repo: repo_name(),
            branch: "main".into(),
            mode,
            request,
        });
        // The landing waits for another required check.
        bot.ev(Event::LandWaiting {
            repo: repo_name(),
            branch: "main".into(),
            pending: vec!["ci/build".into()],
        });
        assert_eq!(train_order(&bot), vec![1, 2], "{mode:?}");
        assert_eq!(bot.state.train_position(&key(2)), Some(1), "{mode:?}");
        // Asked again: the same passed car lands.
        bot.now += CHECKS_POLL_MS;
        assert_eq!(lands(&bot.ev(Event::Tick)), landing, "{mode:?}");
    }
}

/// A restart with the trains switched off (`train_depth` 0): the car tests
/// are stopped and the PRs that were in the train are merged one by one as
/// serial mode does; switched on again, they enter a train.
#[test]
fn switching_trains_off_and_on_at_a_restart_leaves_no_pr_stranded() {
    let mut bot = train_bot(2);
    bot.enter_train(2);
    bot.build_train();
    let car_tests: Vec<BuildId> = bot.car_tests().into_iter().map(|(b, _)| b).collect();
    assert_eq!(car_tests.len(), 2);
    let serial = RepoPolicy {
        max_concurrent_builds: 8,
        ..RepoPolicy::default()
    };
    let mut stopped = bot.state.reconfigure([(repo_name(), serial)]);
    stopped.sort();
    assert_eq!(stopped, car_tests, "the car tests are stopped");
    assert!(bot.car_tests().is_empty());
    let a = bot.ev(Event::Restarted);
    assert_eq!(
        merges(&a),
        vec![(key(1), pair(0xa1, 0x100))],
        "#1 passed on main's head and is approved: merged"
    );
    assert!(bot.state.train_position(&key(2)).is_none());
    // #1 merges; #2 is tested on the new head and merged.
    bot.merged(1, pair(0xa1, 0x100), 0x101);
    let b = bot.build_of(2).expect("#2 is tested on the new head");
    let a = bot.finish(&b, Outcome::Passed);
    assert_eq!(merges(&a), vec![(key(2), pair(0xa2, 0x101))]);

    // On again while #3 merges: #4 enters a train, #3 does not (its merge
    // is in flight).
    let mut bot = Bot::new(RepoPolicy {
        max_concurrent_builds: 8,
        ..RepoPolicy::default()
    });
    for n in [3, 4] {
        bot.open(n, 0xa0 + n as u32);
        bot.approve(n);
    }
    let b = bot.build_of(3).unwrap();
    assert_eq!(merges(&bot.finish(&b, Outcome::Passed)).len(), 1);
    let b = bot.build_of(4).unwrap();
    bot.finish(&b, Outcome::Passed);
    assert!(
        bot.state
            .reconfigure([(
                repo_name(),
                RepoPolicy {
                    max_concurrent_builds: 8,
                    train_depth: 2,
                    ..RepoPolicy::default()
                }
            )])
            .is_empty()
    );
    bot.ev(Event::Restarted);
    assert_eq!(train_order(&bot), vec![4]);
}

/// `/cancel` stops the PR's own test, and no new one starts for that head
/// by itself; `/retest`, a new push or `/merge` test it again.
#[test]
fn cancel_stops_a_prs_own_test_until_a_retest_a_push_or_a_merge() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    let b = bot.build_of(1).unwrap();
    let a = bot.comment(1, 10, "wendy", true, "/cancel");
    assert_eq!(cancelled(&a), vec![b]);
    assert!(started(&a).is_empty(), "not started again: {a:?}");
    assert!(bot.build_of(1).is_none());
    assert!(started(&bot.ev(Event::Tick)).is_empty());
    assert_eq!(
        statuses(&a),
        vec![(sha(0xa1), CommitState::Pending, text::cancelled_by("wendy"))],
        "its status says why it is not tested"
    );
    let a = bot.comment(1, 11, "wendy", true, "/retest");
    assert_eq!(started(&a).len(), 1, "{a:?}");
    // Cancelled again; a push tests the new head.
    bot.comment(1, 12, "wendy", true, "/cancel");
    assert!(bot.build_of(1).is_none());
    let a = bot.open(1, 0xb1);
    assert_eq!(started(&a)[0].1.pair(), Some(pair(0xb1, 0x100)));
    // Cancelled again; /merge puts it back.
    bot.comment(1, 13, "wendy", true, "/cancel");
    assert!(bot.build_of(1).is_none());
    let a = bot.comment(1, 14, "wendy", true, "/merge");
    assert_eq!(started(&a).len(), 1);
}

/// After `/cancel` the JSON says what its status says: the PR is not
/// queued for a test (none starts by itself) but cancelled, and it is
/// counted so; a `/retest` tests it again.
#[test]
fn a_cancelled_prs_phase_is_cancelled_not_queued() {
    let mut bot = Bot::default();
    bot.open(1, 0xa1);
    assert_eq!(bot.view(1).phase, Phase::Testing);
    bot.comment(1, 10, "wendy", true, "/cancel");
    assert_eq!(bot.view(1).phase, Phase::Cancelled);
    assert_eq!(Phase::Cancelled.name(), "cancelled");
    assert_eq!(Phase::parse("cancelled"), Some(Phase::Cancelled));
    let counts: PhaseCounts = bot.state.pr_phases_iter().map(|(_, p)| p).collect();
    assert_eq!(
        (counts.get(Phase::Cancelled), counts.get(Phase::Queued)),
        (1, 0)
    );
    bot.comment(1, 11, "wendy", true, "/retest");
    assert_eq!(bot.view(1).phase, Phase::Testing);
}

/// A car whose tests infrastructure kept losing ejects its PR with an
/// `error` status, never a `failure`: nothing says its change is wrong.
#[test]
fn a_pr_ejected_for_infrastructure_errors_gets_an_error_status_not_a_failure() {
    let mut bot = train_bot(1);
    bot.enter_train(1);
    bot.build_train();
    let mut a = Vec::new();
    for _ in 0..3 {
        let (build, _) = bot.car_tests()[0].clone();
        a = bot.finish(&build, Outcome::Error);
    }
    let ejected = bot.view(1).ejected.expect("ejected after 3 attempts");
    assert_eq!(ejected.kind, EjectKind::Error);
    let own: Vec<_> = statuses(&a)
        .into_iter()
        .filter(|(on, _, _)| *on == sha(0xa1))
        .collect();
    assert_eq!(own.len(), 1, "{a:?}");
    assert_eq!(own[0].1, CommitState::Error, "{}", own[0].2);
}

/// In train mode a PR's own test counts for its head on any target: when
/// the target moves, its status still names the target it passed with and
/// is not written again, and the JSON still calls it passing. (Serial mode
/// tests it again: `a_moved_target_makes_every_pr_on_it_stale_...`.)
#[test]
fn in_train_mode_a_passed_own_test_is_shown_with_the_target_it_was_tested_on() {
    let mut bot = train_bot(2);
    bot.open(1, 0xa1);
    let b = bot.build_of(1).unwrap();
    let a = bot.finish(&b, Outcome::Passed);
    assert_eq!(
        statuses(&a),
        vec![(
            sha(0xa1),
            CommitState::Success,
            text::finished(Outcome::Passed, "main", &sha(0x100), "")
        )]
    );
    let moved = Sha::parse("2000000000000000000000000000000000000000").unwrap();
    let a = bot.ev(Event::BranchMoved {
        before: Some(sha(0x100)),
        repo: repo_name(),
        branch: "main".into(),
        sha: moved.clone(),
    });
    assert!(started(&a).is_empty(), "not tested again");
    assert!(statuses(&a).is_empty(), "its status stands: {a:?}");
    let view = bot.view(1);
    assert!(view.passing(), "{:?}", view.phase);
    assert_eq!(view.target_sha, Some(moved));
    assert_eq!(
        view.build.map(|b| b.pair),
        Some(pair(0xa1, 0x100)),
        "the build shown is the one that passed, with what it tested"
    );
    assert!(
        bot.state
            .pr_views()
            .iter()
            .any(|v| v.number == 1 && v.passing())
    );
}

/// #2 does not merge onto #1's car, so it leaves the train; but #1 then
/// fails and leaves too: the conflict may have been with #1 alone, so #2
/// enters again and is built on main (where it conflicts again, it leaves
/// again: a car ahead must leave for it to come back, so there is no loop).
#[test]
fn a_pr_that_conflicted_with_a_car_ahead_enters_again_when_that_car_leaves() {
    let mut bot = train_bot(2);
    bot.enter_train(2);
    let cars = train_cars(&bot);
    let c1 = car_sha(&sha(0x100), &sha(0xa1));
    bot.ev(Event::CarBuilt {
        repo: repo_name(),
        branch: "main".into(),
        car: cars[0].id,
        parent: sha(0x100),
        sha: c1,
    });
    let a = bot.ev(Event::CarConflict {
        repo: repo_name(),
        branch: "main".into(),
        car: cars[1].id,
        message: "merge conflict in README".into(),
    });
    assert_eq!(ejections(&a), vec![2]);
    assert_eq!(train_order(&bot), vec![1]);
    // #1's car fails: #1 is ejected, and #2 comes back, built on main.
    let (build, _) = bot.car_tests()[0].clone();
    let a = bot.finish(&build, Outcome::Failed);
    assert_eq!(ejections(&a), vec![1]);
    assert_eq!(train_order(&bot), vec![2]);
    assert!(bot.view(2).ejected.is_none());
    let built = car_builds(&a);
    assert_eq!(
        built.iter().map(|b| (&b.1, &b.2)).collect::<Vec<_>>(),
        vec![(&sha(0x100), &sha(0xa2))]
    );
    // It conflicts with main too: out again, and it stays out.
    let car = train_cars(&bot)[0].id;
    let a = bot.ev(Event::CarConflict {
        repo: repo_name(),
        branch: "main".into(),
        car,
        message: "merge conflict in README".into(),
    });
    assert_eq!(ejections(&a), vec![2]);
    assert!(bot.ev(Event::Tick).is_empty());
    assert_eq!(train_order(&bot), Vec::<u64>::new());
}

/// A dependency sluice does not know to be merged is not taken as merged:
/// #3 is found gone by a re-read (its `closed` delivery was lost), so #5,
/// which depends on it, waits while sluice asks GitHub about #3, and then
/// waits for good (closed without merging) or enters (merged).
#[test]
fn a_dependency_of_unknown_fate_is_asked_about_and_blocks_until_known() {
    for merged in [false, true] {
        let mut bot = train_bot(3);
        bot.open(3, 0xa3);
        let started_at = Timestamp(bot.now + 1);
        let mut five = snap(5, 0xa5, "main");
        five.depends_on = vec![key(3)];
        bot.ev(Event::Reconciled {
            repo: repo_name(),
            started_at,
            prs: vec![five],
            branches: vec![("main".into(), sha(0x100))],
        });
        assert!(bot.state.pr(&key(3)).is_none(), "the re-read dropped #3");
        bot.approve(5);
        let b = bot.build_of(5).unwrap();
        let a = bot.finish(&b, Outcome::Passed);
        assert_eq!(train_order(&bot), Vec::<u64>::new(), "#5 waits");
        assert!(
            a.contains(&Action::FetchPr { pr: key(3) }),
            "GitHub is asked about #3: {a:?}"
        );
        assert_eq!(bot.published(5).description, text::dependency_unheard("#3"));
        // Asked once, not at every event.
        assert!(
            !bot.ev(Event::Tick)
                .contains(&Action::FetchPr { pr: key(3) })
        );
        if merged {
            bot.ev(Event::PrClosed(key(3)));
            assert_eq!(train_order(&bot), vec![5]);
        } else {
            bot.ev(Event::PrClosedUnmerged(key(3)));
            assert_eq!(train_order(&bot), Vec::<u64>::new());
            assert_eq!(bot.published(5).description, text::dependency_closed("#3"));
        }
    }
}

/// Lines GitHub shows inside a quote or hides in an HTML comment are not
/// commands, even when they do not look so line by line: a line right
/// after a quoted paragraph continues the quote (a lazy continuation), and
/// a comment opened mid-line runs on to its `-->`. A blank line ends both.
#[test]
fn a_quote_continued_on_the_next_line_or_a_comment_opened_mid_line_hides_commands() {
    let mut bot = Bot::new(RepoPolicy {
        land_on: LandOn::Command,
        ..RepoPolicy::default()
    });
    bot.ready(1);
    for (id, body) in [
        "> you wrote\n/merge",
        "> - an item\n/merge",
        "thanks <!-- note to self\n/merge\n-->",
    ]
    .into_iter()
    .enumerate()
    {
        let a = bot.comment(1, 30 + id as u64, "wendy", true, body);
        assert!(a.is_empty(), "{body:?}: {a:?}");
    }
    for (id, body) in [
        "> you wrote\n\n/merge",
        "thanks <!-- note -->\n/merge",
        "thanks <!-- no end\n\n/merge",
    ]
    .into_iter()
    .enumerate()
    {
        let a = bot.comment(1, 40 + id as u64, "wendy", true, body);
        assert_eq!(answers(&a).len(), 1, "{body:?} is a command: {a:?}");
    }
}

/// The same for a PR's own test still running when the target moves in
/// train mode (it is not stopped: it counts for its head): its status keeps
/// naming the target it tests, and is not written again.
#[test]
fn in_train_mode_a_running_own_test_keeps_naming_the_target_it_tests() {
    let mut bot = train_bot(2);
    let a = bot.open(1, 0xa1);
    assert_eq!(
        statuses(&a)[0].2,
        text::testing("main", &sha(0x100)),
        "{a:?}"
    );
    let a = bot.ev(Event::BranchMoved {
        before: Some(sha(0x100)),
        repo: repo_name(),
        branch: "main".into(),
        sha: Sha::parse("2000000000000000000000000000000000000000").unwrap(),
    });
    assert!(cancelled(&a).is_empty(), "it goes on");
    assert!(statuses(&a).is_empty(), "its status stands: {a:?}");
}
