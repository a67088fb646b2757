//! The merge train's rule, checked as a user would after a run: from the
//! fake's git repository (the target's first-parent history), the fake's
//! record of every move of the target and of the statuses its commits had
//! then, and the results page each landing's status links to.

use serde_json::Value;
use sluice::core::Sha;
use sluice::demo::DEMO_REPO;
use sluice::fakehub::{FakeHub, MERGER};
use std::collections::{BTreeMap, BTreeSet};

/// The target branch of the demo repository.
pub const TARGET: &str = "main";

/// `git <args>` in the fake's repository: its output.
fn git(hub: &FakeHub, args: &[&str]) -> String {
    let url = hub.clone_url(DEMO_REPO);
    let out = std::process::Command::new("git")
        .args(["--git-dir", url.trim_start_matches("file://")])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `git log --first-parent` of `range` in the fake's repository: each
/// commit with its parents, newest first.
pub fn first_parent_log(hub: &FakeHub, range: &str) -> Vec<(String, Vec<String>)> {
    git(
        hub,
        &["log", "--first-parent", "--format=%H %P", range, "--"],
    )
    .lines()
    .map(|line| {
        let mut shas = line.split(' ').map(str::to_string);
        let commit = shas.next().unwrap();
        (commit, shas.collect())
    })
    .collect()
}

/// The cars sluice saw pass (its history): car sha → the target sha its
/// train had when the car was tested.
pub fn passed_cars(history: &[Value]) -> BTreeMap<String, String> {
    history
        .iter()
        .filter(|e| e["kind"] == "build_finished" && e["report"]["outcome"] == "passed")
        .filter_map(|e| {
            let c = &e["candidate"];
            Some((
                c["car"].as_str()?.to_string(),
                c["target_sha"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// What landed on the target.
#[derive(Debug, Default)]
pub struct Landed {
    /// The PR heads merged into the target by the landed cars (each car's
    /// second parent), oldest first.
    pub heads: Vec<String>,
    /// How many times sluice moved the target.
    pub landings: usize,
}

/// Panics unless the rule held on the target since `start`, where
/// `pushes` are commits people pushed to it:
/// - every move of the target is a person's push, or sluice's move to a
///   commit that had a `sluice` success status when the target moved to it;
/// - that status links to a result saying exactly that commit passed, as a
///   car built on a target sha T with PRs p1..pk: the commit is T merged
///   with p1, then p2, ... (one merge commit each, car on car), the last
///   of them the car that passed (the ones inside it need not have: a
///   batch's, or one ahead still testing when it passed), and the sha the
///   target left is T or one of those cars (landed before);
/// - nothing else is on the target's first-parent history since `start`,
///   and no PR head is merged twice.
pub async fn assert_the_rule(
    hub: &FakeHub,
    http: &reqwest::Client,
    history: &[Value],
    start: &Sha,
    pushes: &[Sha],
) -> Landed {
    let pushes: BTreeSet<&str> = pushes.iter().map(Sha::as_str).collect();
    let cars = passed_cars(history);
    let mut moves: Vec<_> = hub
        .branch_moves(DEMO_REPO)
        .into_iter()
        .filter(|m| m.branch == TARGET)
        .collect();
    // The moves since the target was at `start`.
    if let Some(at_start) = moves.iter().rposition(|m| m.after.as_ref() == Some(start)) {
        moves.drain(..=at_start);
    }
    let mut landed = Landed::default();
    // Commits checked to be a car of a landing that passed (structurally
    // inside it, or itself).
    let mut in_landings: BTreeSet<String> = BTreeSet::new();
    let mut at = start.as_str().to_string();
    for m in &moves {
        let before = m.before.as_ref().expect("the target existed").as_str();
        let after = m
            .after
            .as_ref()
            .expect("the target is never deleted")
            .as_str();
        assert_eq!(
            before, at,
            "the target moved from {before}, not from where it was: {m:?}"
        );
        at = after.to_string();
        if pushes.contains(after) {
            assert_ne!(m.pusher, MERGER, "{m:?}");
            continue;
        }
        assert_eq!(
            m.pusher, MERGER,
            "the target moved to {after} and nobody knows why: {m:?}"
        );
        assert!(
            m.successful_checks.iter().any(|c| c == "sluice"),
            "the target moved to {after} before it had a sluice success status: {m:?}"
        );
        let tested = tested_candidate(hub, http, after).await;
        let target = tested["target_sha"].as_str().unwrap();
        let prs = tested["prs"].as_array().unwrap();
        // T merged with p1, then p2, ...: oldest first.
        let chain: Vec<(String, Vec<String>)> =
            first_parent_log(hub, &format!("{target}..{after}"))
                .into_iter()
                .rev()
                .collect();
        assert_eq!(
            chain.len(),
            prs.len(),
            "{after} is not {target} merged with the {} PRs it was tested with: {chain:?}",
            prs.len()
        );
        let mut parent = target.to_string();
        let mut new = before == target;
        for ((commit, parents), pr) in chain.iter().zip(prs) {
            let head = pr["head_sha"].as_str().unwrap();
            assert_eq!(
                parents,
                &[parent.clone(), head.to_string()],
                "{commit} in {after} is not {parent} merged with PR #{}",
                pr["number"]
            );
            // What lands is the car that passed; the cars inside it need
            // not have (a batch's, or one ahead whose test was still running
            // when this one passed: invariant 26). Each is checked above to
            // be exactly the car before it merged with its PR.
            assert!(
                commit != after || cars.contains_key(commit),
                "{commit} landed but is not a car that passed"
            );
            if new {
                assert!(
                    !landed.heads.iter().any(|h| h == head),
                    "PR head {head} landed twice (again in {commit})"
                );
                landed.heads.push(head.to_string());
            }
            new = new || *commit == before;
            in_landings.insert(commit.clone());
            parent = commit.clone();
        }
        assert!(
            new,
            "the target moved from {before} to {after}, whose cars are not built on it"
        );
        landed.landings += 1;
    }
    let head = hub.branch_head(DEMO_REPO, TARGET).await.unwrap();
    assert_eq!(head.as_str(), at, "the move log ends where the target is");
    // Nothing reached the target but through those moves.
    for (commit, _) in first_parent_log(hub, &format!("{start}..{TARGET}")) {
        assert!(
            pushes.contains(commit.as_str()) || in_landings.contains(&commit),
            "{commit} is on the target but neither a person's push nor a car of a passing landing"
        );
    }
    landed
}

/// Follows the `sluice` success status of `car` to its result, which must
/// say that exactly `car` passed; returns the candidate it tested.
async fn tested_candidate(hub: &FakeHub, http: &reqwest::Client, car: &str) -> Value {
    let status = hub
        .statuses(DEMO_REPO, car)
        .into_iter()
        .rev()
        .find(|s| s.context == "sluice" && s.state == "success")
        .unwrap_or_else(|| panic!("car {car} has no sluice success status"));
    let link = status
        .target_url
        .unwrap_or_else(|| panic!("the success status of car {car} links nowhere"));
    let answer = http.get(format!("{link}result.json")).send().await.unwrap();
    assert_eq!(
        answer.status(),
        200,
        "the success status of car {car} links to {link}, which is not there"
    );
    let result: Value = answer.json().await.unwrap();
    assert_eq!(result["report"]["outcome"], "passed", "{link}: {result}");
    assert_eq!(result["candidate"]["car"], car, "{link}: {result}");
    result["candidate"].clone()
}

/// sluice's staging refs for the target (`sluice/main/<car>`) in the fake's
/// repository: name → sha.
pub fn staging_refs(hub: &FakeHub) -> BTreeMap<String, String> {
    let prefix = format!("refs/heads/sluice/{TARGET}/");
    git(
        hub,
        &[
            "for-each-ref",
            "--format=%(refname:short) %(objectname)",
            &prefix,
        ],
    )
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(name, sha)| (name.to_string(), sha.to_string()))
    .collect()
}
