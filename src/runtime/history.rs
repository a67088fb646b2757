//! The history of builds and merges, kept in memory (bounded) for
//! `GET /history`.

use crate::core::{HistoryEntry, ResultKey, Sha};
use crate::results::ResultsStore;
use std::collections::VecDeque;

pub const HISTORY_CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct History {
    entries: VecDeque<HistoryEntry>,
}

/// Which entries to show.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryFilter {
    pub repo: Option<String>,
    pub pr: Option<u64>,
    /// A head, target or merge commit sha (a prefix of 7+ digits is enough).
    pub sha: Option<String>,
}

impl History {
    pub fn push(&mut self, entry: HistoryEntry) {
        if self.entries.len() == HISTORY_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Newest first.
    pub fn query(&self, filter: &HistoryFilter) -> Vec<HistoryEntry> {
        self.entries
            .iter()
            .rev()
            .filter(|e| matches(e, filter))
            .cloned()
            .collect()
    }
}

fn matches(entry: &HistoryEntry, f: &HistoryFilter) -> bool {
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
        && f.sha.as_ref().is_none_or(|s| {
            let s = s.to_ascii_lowercase();
            s.len() >= 7 && shas.iter().any(|sha| sha.as_str().starts_with(&s))
        })
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
