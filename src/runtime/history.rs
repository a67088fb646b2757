//! The history of builds and merges, kept in memory for `GET /history`
//! and the pages (as long as `history.retain` says: by default everything,
//! read back from `history.jsonl` at start).

use crate::core::{HistoryEntry, ResultKey, Sha};
use crate::results::ResultsStore;
use std::collections::VecDeque;

/// A page holds this many entries unless `per_page` says otherwise.
pub const DEFAULT_PER_PAGE: usize = 1000;
/// The largest `page` a search takes.
pub const MAX_PAGE: usize = 1_000_000;
pub const MAX_PER_PAGE: usize = 10_000;

#[derive(Default)]
pub struct History {
    entries: VecDeque<HistoryEntry>,
    /// How many entries are kept; `None`: all of them.
    retain: Option<usize>,
}

/// Which entries to show. Every field narrows the search.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryFilter {
    pub repo: Option<String>,
    pub pr: Option<u64>,
    /// A head, target or merge commit sha (a prefix of 7+ digits is enough).
    pub sha: Option<String>,
    /// An entry kind: `merged`, `ejected`, `build_finished`, ...
    pub kind: Option<String>,
    /// Landings on this branch only, oldest first; with `from` and `to`,
    /// what landed between two commits of it (release notes).
    pub branch: Option<String>,
    /// The landing after which to start (exclusive), or the commit the
    /// first landing was tested on.
    pub from: Option<String>,
    /// The landing at which to stop (inclusive).
    pub to: Option<String>,
    /// 1-based.
    pub page: Option<usize>,
    pub per_page: Option<usize>,
}

/// One page of a search.
#[derive(Debug)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// How many entries matched in all.
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
    /// `newest_first`, or `oldest_first` for landings on a branch.
    pub order: &'static str,
}

/// A search that cannot be answered: a 400 (the query is wrong) or a 404
/// (a commit it names never landed).
#[derive(Debug, PartialEq, Eq)]
pub struct SearchError {
    pub status: u16,
    pub message: String,
}

fn bad(message: impl Into<String>) -> SearchError {
    SearchError {
        status: 400,
        message: message.into(),
    }
}

/// A sha or a prefix of one: 7 to 64 hex digits, lowercased.
fn sha_prefix(field: &str, value: &str) -> Result<String, SearchError> {
    let value = value.trim().to_ascii_lowercase();
    if !(7..=64).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "{field} must be a commit sha or a prefix of 7 to 64 hex digits"
        )));
    }
    Ok(value)
}

impl History {
    /// Keeps the last `retain` entries (`None` or 0: all of them).
    pub fn with_retention(retain: Option<usize>) -> History {
        History {
            entries: VecDeque::new(),
            retain: retain.filter(|n| *n > 0),
        }
    }

    pub fn push(&mut self, entry: HistoryEntry) {
        if self.retain.is_some_and(|n| self.entries.len() >= n) {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every match, newest first (no paging; `branch`, `from` and `to` are
    /// ignored: see [`History::search`]).
    pub fn query(&self, filter: &HistoryFilter) -> Vec<HistoryEntry> {
        let sha = filter.sha.as_ref().map(|s| s.trim().to_ascii_lowercase());
        self.entries
            .iter()
            .rev()
            .filter(|e| matches(e, filter, sha.as_deref()))
            .cloned()
            .collect()
    }

    /// One page of the entries `filter` asks for. With `branch`: the
    /// landings on it in the order they landed, from `from` to `to`.
    pub fn search(&self, filter: &HistoryFilter) -> Result<HistoryPage, SearchError> {
        let per_page = filter.per_page.unwrap_or(DEFAULT_PER_PAGE);
        if !(1..=MAX_PER_PAGE).contains(&per_page) {
            return Err(bad(format!("per_page must be 1 to {MAX_PER_PAGE}")));
        }
        let page = filter.page.unwrap_or(1);
        if page == 0 {
            return Err(bad("page counts from 1"));
        }
        // Far past any history, and small enough that page × per_page
        // cannot overflow.
        if page > MAX_PAGE {
            return Err(bad(format!("page must be at most {MAX_PAGE}")));
        }
        let sha = filter
            .sha
            .as_deref()
            .map(|s| sha_prefix("sha", s))
            .transpose()?;
        let from = filter
            .from
            .as_deref()
            .map(|s| sha_prefix("from", s))
            .transpose()?;
        let to = filter
            .to
            .as_deref()
            .map(|s| sha_prefix("to", s))
            .transpose()?;
        let (matched, order): (Vec<&HistoryEntry>, _) = match &filter.branch {
            None if from.is_some() || to.is_some() => {
                return Err(bad("from and to need a branch"));
            }
            None => (
                self.entries
                    .iter()
                    .rev()
                    .filter(|e| matches(e, filter, sha.as_deref()))
                    .collect(),
                "newest_first",
            ),
            Some(branch) => {
                let landings: Vec<&HistoryEntry> = self
                    .entries
                    .iter()
                    .filter(|e| matches!(e, HistoryEntry::Merged { branch: b, .. } if b == branch))
                    .filter(|e| matches(e, filter, sha.as_deref()))
                    .collect();
                let between = landed_between(&landings, branch, from.as_deref(), to.as_deref())?;
                (between.to_vec(), "oldest_first")
            }
        };
        let total = matched.len();
        let entries = matched
            .into_iter()
            .skip((page - 1).saturating_mul(per_page))
            .take(per_page)
            .cloned()
            .collect();
        Ok(HistoryPage {
            entries,
            total,
            page,
            per_page,
            order,
        })
    }
}

fn merge_sha(entry: &HistoryEntry) -> &str {
    match entry {
        HistoryEntry::Merged { merge_sha, .. } => merge_sha.as_str(),
        _ => "",
    }
}

/// The landings after `from` up to `to`, both commits of the branch:
/// `from` is a landing (the search starts after it) or the commit the first
/// landing was tested on; `to` is a landing (included).
fn landed_between<'a, 'e>(
    landings: &'a [&'e HistoryEntry],
    branch: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<&'a [&'e HistoryEntry], SearchError> {
    let never = |field: &str, sha: &str| SearchError {
        status: 404,
        message: format!("{field} {sha}: no landing on {branch} is known at that commit"),
    };
    let start = match from {
        None => 0,
        Some(from) => {
            if let Some(i) = landings
                .iter()
                .rposition(|e| merge_sha(e).starts_with(from))
            {
                i + 1
            } else {
                landings
                    .iter()
                    .position(|e| {
                        matches!(e, HistoryEntry::Merged { pair, .. } if pair.target.as_str().starts_with(from))
                    })
                    .ok_or_else(|| never("from", from))?
            }
        }
    };
    let end = match to {
        None => landings.len(),
        Some(to) => {
            landings
                .iter()
                .rposition(|e| merge_sha(e).starts_with(to))
                .ok_or_else(|| never("to", to))?
                + 1
        }
    };
    if start > end {
        return Err(bad(format!("from landed after to on {branch}")));
    }
    Ok(&landings[start..end])
}

/// Its `kind` in the JSON.
pub fn kind_of(entry: &HistoryEntry) -> &'static str {
    match entry {
        HistoryEntry::BuildFinished { .. } => "build_finished",
        HistoryEntry::BuildCancelled { .. } => "build_cancelled",
        HistoryEntry::Merged { .. } => "merged",
        HistoryEntry::Ejected { .. } => "ejected",
        HistoryEntry::BranchMode { .. } => "branch_mode",
        HistoryEntry::SuspectedFlake { .. } => "suspected_flake",
        HistoryEntry::Retried { .. } => "retried",
    }
}

fn matches(entry: &HistoryEntry, f: &HistoryFilter, sha: Option<&str>) -> bool {
    let (repo, prs, shas): (&str, Vec<u64>, Vec<&Sha>) = match entry {
        HistoryEntry::BuildFinished { candidate, .. }
        | HistoryEntry::BuildCancelled { candidate, .. } => (
            candidate.repo.as_str(),
            candidate.prs.iter().map(|p| p.number).collect(),
            candidate
                .prs
                .iter()
                .map(|p| &p.head_sha)
                .chain([&candidate.target_sha])
                .collect(),
        ),
        HistoryEntry::Merged {
            pr,
            pair,
            merge_sha,
            ..
        } => (
            pr.repo.as_str(),
            vec![pr.number],
            vec![&pair.head, &pair.target, merge_sha],
        ),
        HistoryEntry::BranchMode { repo, .. } => (repo.as_str(), vec![], vec![]),
        HistoryEntry::Ejected { pr, head, .. } | HistoryEntry::Retried { pr, head, .. } => {
            (pr.repo.as_str(), vec![pr.number], vec![head])
        }
        HistoryEntry::SuspectedFlake { pr, head, car, .. } => {
            (pr.repo.as_str(), vec![pr.number], vec![head, car])
        }
    };
    f.repo.as_ref().is_none_or(|r| r == repo)
        && f.pr.is_none_or(|n| prs.contains(&n))
        && f.kind.as_ref().is_none_or(|k| k == kind_of(entry))
        && sha.is_none_or(|s| s.len() >= 7 && shas.iter().any(|sha| sha.as_str().starts_with(s)))
}

/// An entry's JSON, with the link to its build's results where it has one.
pub fn with_link(results: &dyn ResultsStore, entry: &HistoryEntry) -> serde_json::Value {
    let key = match entry {
        HistoryEntry::BuildFinished {
            build, candidate, ..
        }
        | HistoryEntry::BuildCancelled {
            build, candidate, ..
        } => candidate.results_key(build),
        HistoryEntry::Merged {
            pr, pair, build, ..
        } => Some(ResultKey {
            repo: pr.repo.clone(),
            pr: pr.number,
            head: pair.head.clone(),
            build: build.clone(),
        }),
        HistoryEntry::BranchMode { .. } => None,
        HistoryEntry::Ejected {
            pr, head, build, ..
        }
        | HistoryEntry::Retried {
            pr, head, build, ..
        } => build.as_ref().map(|build| ResultKey {
            repo: pr.repo.clone(),
            pr: pr.number,
            head: head.clone(),
            build: build.clone(),
        }),
        HistoryEntry::SuspectedFlake {
            pr, head, build, ..
        } => Some(ResultKey {
            repo: pr.repo.clone(),
            pr: pr.number,
            head: head.clone(),
            build: build.clone(),
        }),
    };
    let mut value = serde_json::to_value(entry).unwrap_or_default();
    if let (Some(key), Some(object)) = (key, value.as_object_mut()) {
        object.insert("link".into(), results.link(&key).into());
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{BranchMode, BuildId, Pair, PrKey, RepoName, Timestamp};

    fn sha(n: u32) -> Sha {
        Sha::parse(&format!("{n:040x}")).unwrap()
    }

    /// PR `n` landed on `branch` as commit n*16, tested on `on`.
    fn landed(n: u64, branch: &str, on: u32) -> HistoryEntry {
        HistoryEntry::Merged {
            pr: PrKey {
                repo: RepoName::parse("octo/demo").unwrap(),
                number: n,
            },
            title: format!("PR {n}"),
            branch: branch.into(),
            pair: Pair {
                head: sha(n as u32 + 0xa000),
                target: sha(on),
            },
            build: BuildId::parse(&format!("b-{n}")).unwrap(),
            approvers: vec!["alice".into()],
            merge_sha: sha(n as u32 * 16),
            at: Timestamp(n),
        }
    }

    /// main: 0x1 <- #1 (0x10) <- #2 (0x20) <- #3 (0x30); #4 on `release`.
    fn history() -> History {
        let mut h = History::default();
        h.push(landed(1, "main", 0x1));
        h.push(HistoryEntry::BranchMode {
            repo: RepoName::parse("octo/demo").unwrap(),
            branch: "main".into(),
            from: BranchMode::Running,
            to: BranchMode::Paused,
            at: Timestamp(5),
        });
        h.push(landed(2, "main", 0x10));
        h.push(landed(4, "release", 0x7));
        h.push(landed(3, "main", 0x20));
        h
    }

    fn numbers(page: &HistoryPage) -> Vec<u64> {
        page.entries
            .iter()
            .map(|e| match e {
                HistoryEntry::Merged { pr, .. } => pr.number,
                _ => 0,
            })
            .collect()
    }

    fn search(h: &History, query: &str) -> Result<HistoryPage, SearchError> {
        let filter: HistoryFilter = serde_urlencoded_like(query);
        h.search(&filter)
    }

    /// `a=b&c=d` into the filter, as warp's query filter would.
    fn serde_urlencoded_like(query: &str) -> HistoryFilter {
        let mut map = serde_json::Map::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            let value = match v.parse::<u64>() {
                Ok(n) if k == "pr" || k.contains("page") => serde_json::Value::from(n),
                _ => serde_json::Value::from(v),
            };
            map.insert(k.into(), value);
        }
        serde_json::from_value(serde_json::Value::Object(map)).unwrap()
    }

    #[test]
    fn what_landed_between_two_commits_of_a_branch_in_order() {
        let h = history();
        let all = search(&h, "branch=main").unwrap();
        assert_eq!(numbers(&all), vec![1, 2, 3]);
        assert_eq!(all.order, "oldest_first");
        // After #1's commit, through #3's.
        let notes = search(
            &h,
            &format!("branch=main&from={}&to={}", sha(0x10), sha(0x30)),
        )
        .unwrap();
        assert_eq!(numbers(&notes), vec![2, 3]);
        // From the commit the first landing was tested on (not itself a
        // landing).
        let from_base = search(
            &h,
            &format!("branch=main&from={}&to={}", sha(0x1), sha(0x20)),
        )
        .unwrap();
        assert_eq!(numbers(&from_base), vec![1, 2]);
        assert_eq!(numbers(&search(&h, "branch=release").unwrap()), vec![4]);
    }

    #[test]
    fn a_commit_that_never_landed_is_a_404_and_a_bad_query_a_400() {
        let h = history();
        let e = search(&h, &format!("branch=main&to={}", sha(0x999)))
            .err()
            .unwrap();
        assert_eq!(e.status, 404);
        assert!(e.message.contains("no landing on main"), "{}", e.message);
        let e = search(
            &h,
            &format!("branch=main&from={}&to={}", sha(0x30), sha(0x10)),
        )
        .err()
        .unwrap();
        assert_eq!(e.status, 400);
        for bad in [
            "sha=abc",
            "sha=zzzzzzzzz",
            "from=0000000",
            "page=0",
            "per_page=0",
            "per_page=100000",
        ] {
            let e = search(&h, bad).err().unwrap();
            assert_eq!(e.status, 400, "{bad}: {e:?}");
        }
    }

    #[test]
    fn any_sha_finds_its_landing_and_pages_do_not_overlap() {
        let h = history();
        // A PR head, the commit it was tested on, or the landed commit.
        for sha in [sha(0xa002), sha(0x10), sha(0x20)] {
            let found = search(&h, &format!("sha={sha}&kind=merged")).unwrap();
            assert!(numbers(&found).contains(&2), "{sha}");
        }
        let first = search(&h, "per_page=2").unwrap();
        let second = search(&h, "per_page=2&page=2").unwrap();
        let third = search(&h, "per_page=2&page=3").unwrap();
        assert_eq!(first.total, 5);
        assert_eq!(
            (
                first.entries.len(),
                second.entries.len(),
                third.entries.len()
            ),
            (2, 2, 1)
        );
        assert_eq!(numbers(&first), vec![3, 4], "newest first");
        assert_eq!(numbers(&third), vec![1]);
        assert_eq!(search(&h, "kind=branch_mode").unwrap().total, 1);
    }

    #[test]
    fn retention_keeps_the_newest_entries() {
        let mut h = History::with_retention(Some(2));
        for n in 1..=5 {
            h.push(landed(n, "main", 1));
        }
        assert_eq!(h.len(), 2);
        assert_eq!(numbers(&search(&h, "").unwrap()), vec![5, 4]);
        let mut unlimited = History::with_retention(Some(0));
        for n in 1..=50 {
            unlimited.push(landed(n, "main", 1));
        }
        assert_eq!(unlimited.len(), 50);
    }
}
