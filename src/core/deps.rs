//! Dependencies between PRs: `Depends-On: #N` and `Depends-On: owner/name#N`
//! lines in a PR's description.
//!
//! A PR enters its train only behind the open PRs of its own repository it
//! names (a car ahead of it holds each), and only once those of other
//! repositories have landed. A cycle, a dependency closed without merging
//! and one in a repository sluice does not gate are said in its status; it
//! waits. The train drops a car whose dependency is no longer ahead of it
//! (ejected, pushed to, closed), so a dependency never lands after what
//! depends on it.

use super::types::{PrKey, RepoName};

/// At most this many dependencies are read from one description: a PR
/// naming more is not a plan anyone can follow, and the rest is ignored.
pub const MAX_DEPENDENCIES: usize = 16;

/// The dependencies named in `body`, in order, without duplicates or the PR
/// itself. A line is `Depends-On:` (any case) then `#N` or
/// `owner/name#N`; anything else on the line, and quoted lines, are not
/// dependencies.
pub fn parse(body: &str, own: &PrKey) -> Vec<PrKey> {
    let mut found: Vec<PrKey> = Vec::new();
    for line in body.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("depends-on") {
            continue;
        }
        let Some(dep) = parse_reference(value.trim(), &own.repo) else {
            continue;
        };
        if dep != *own && !found.contains(&dep) {
            found.push(dep);
            if found.len() == MAX_DEPENDENCIES {
                break;
            }
        }
    }
    found
}

/// `#N` (in `own`) or `owner/name#N`.
fn parse_reference(value: &str, own: &RepoName) -> Option<PrKey> {
    let (repo, number) = value.split_once('#')?;
    let number: u64 = number.parse().ok().filter(|&n| n > 0)?;
    let repo = match repo {
        "" => own.clone(),
        other => RepoName::parse(other).ok()?,
    };
    Some(PrKey { repo, number })
}

/// Where a dependency stands, seen from the PR that depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Open, in a car of the same train ahead of the dependent's place.
    Ahead,
    /// Open, targets the same branch, not (yet) in a car ahead.
    NotAhead,
    /// Open, in another repository or for another branch: it must land
    /// first.
    OpenElsewhere,
    /// Closed without being merged: it will never land.
    ClosedUnmerged,
    /// Not open, and known to be merged (by sluice or anyone).
    Done,
    /// Not open, and sluice does not know whether it merged (a lost
    /// delivery, a re-read that found it gone): GitHub is asked.
    Unheard,
    /// In a repository sluice does not gate: it cannot tell.
    Unknown,
}

impl Standing {
    /// The dependent may stand where it is (or enter behind the train).
    pub fn satisfied(self) -> bool {
        matches!(self, Standing::Ahead | Standing::Done)
    }
}

/// Why `pr` may not enter (or stay in) its train for now, in words; `None`
/// when every dependency is satisfied. `cycle` is a dependency cycle through
/// `pr`, if any (`find_cycle`).
pub fn blocker(
    pr: &PrKey,
    deps: &[PrKey],
    standing: impl Fn(&PrKey) -> Standing,
    cycle: Option<&[u64]>,
) -> Option<String> {
    use super::text;
    if let Some(cycle) = cycle {
        return Some(text::dependency_cycle(cycle));
    }
    deps.iter().find_map(|dep| {
        let named = text::pr_reference(dep, &pr.repo);
        match standing(dep) {
            Standing::Ahead | Standing::Done => None,
            Standing::NotAhead => Some(text::dependency_not_in_train(&named)),
            Standing::OpenElsewhere => Some(text::dependency_not_landed(&named)),
            Standing::ClosedUnmerged => Some(text::dependency_closed(&named)),
            Standing::Unheard => Some(text::dependency_unheard(&named)),
            Standing::Unknown => Some(text::dependency_unknown(&named)),
        }
    })
}

/// A cycle of same-repository dependencies through `start`, as PR numbers
/// from `start` back to it (`[1, 2, 1]`), or `None`. `deps_of` gives the
/// same-repository dependencies of an open PR. Depth-first, bounded by the
/// PRs reachable from `start`.
pub fn find_cycle(start: u64, deps_of: impl Fn(u64) -> Vec<u64>) -> Option<Vec<u64>> {
    let mut path = vec![start];
    let mut seen = std::collections::BTreeSet::new();
    // Each frame: a PR on the path and its dependencies not yet explored.
    let mut stack: Vec<Vec<u64>> = vec![deps_of(start)];
    while let Some(next) = stack.last_mut() {
        let Some(n) = next.pop() else {
            stack.pop();
            path.pop();
            continue;
        };
        if n == start {
            path.push(start);
            return Some(path);
        }
        if !seen.insert(n) {
            continue;
        }
        path.push(n);
        stack.push(deps_of(n));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(repo: &str, number: u64) -> PrKey {
        PrKey {
            repo: RepoName::parse(repo).unwrap(),
            number,
        }
    }

    #[test]
    fn reads_dependencies_of_the_same_and_other_repositories() {
        let own = key("acme/widgets", 7);
        let body = "Fixes the frobnicator.\r\n\r\nDepends-On: #3\r\ndepends-on:  acme/gears#12 \n\
                    Depends-On: #3\nDepends-On: #7\nDepends-On: #0\nDepends-On: #x\n\
                    Depends-On: not/a/repo#2\n> Depends-On: #9\nSee Depends-On: #5\n";
        assert_eq!(
            parse(body, &own),
            vec![key("acme/widgets", 3), key("acme/gears", 12)]
        );
    }

    #[test]
    fn hostile_descriptions_are_bounded_and_never_panic() {
        let own = key("acme/widgets", 1);
        let many: String = (2..100).map(|n| format!("Depends-On: #{n}\n")).collect();
        assert_eq!(parse(&many, &own).len(), MAX_DEPENDENCIES);
        for body in [
            "Depends-On: #99999999999999999999999",
            "Depends-On:",
            "Depends-On: #",
            "Depends-On: ../..#1",
            "Depends-On: $(rm -rf /)#1",
            ":::#:#",
        ] {
            assert_eq!(parse(body, &own), vec![], "{body}");
        }
    }

    #[test]
    fn says_what_a_pr_waits_for() {
        let own = key("acme/widgets", 5);
        let deps = [key("acme/widgets", 3), key("acme/gears", 12)];
        let of = |three: Standing, twelve: Standing| {
            move |k: &PrKey| if k.number == 3 { three } else { twelve }
        };
        use Standing::*;
        assert_eq!(blocker(&own, &deps, of(Done, Done), None), None);
        assert_eq!(blocker(&own, &deps, of(Ahead, Done), None), None);
        let why = blocker(&own, &deps, of(NotAhead, Done), None).unwrap();
        assert!(why.contains("#3 to enter the train"), "{why}");
        let why = blocker(&own, &deps, of(Ahead, OpenElsewhere), None).unwrap();
        assert!(why.contains("acme/gears#12 to land"), "{why}");
        let why = blocker(&own, &deps, of(ClosedUnmerged, Done), None).unwrap();
        assert!(
            why.contains("#3, which was closed without merging"),
            "{why}"
        );
        let why = blocker(&own, &deps, of(Done, Unknown), None).unwrap();
        assert!(why.contains("does not gate"), "{why}");
        let why = blocker(&own, &deps, of(Done, Done), Some(&[5, 3, 5])).unwrap();
        assert!(why.contains("#5 → #3 → #5"), "{why}");
    }

    #[test]
    fn finds_cycles_through_the_start_only() {
        let graph = |n: u64| match n {
            1 => vec![2],
            2 => vec![3],
            3 => vec![1, 4],
            4 => vec![4],
            _ => vec![],
        };
        assert_eq!(find_cycle(1, graph), Some(vec![1, 2, 3, 1]));
        // 5 depends on nothing; 4's self-loop does not pass through 6.
        assert_eq!(find_cycle(5, graph), None);
        let into_loop = |n: u64| match n {
            6 => vec![4],
            4 => vec![4],
            _ => vec![],
        };
        assert_eq!(find_cycle(6, into_loop), None);
    }
}
