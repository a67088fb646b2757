//! The history of builds and merges, kept in memory (bounded) for
//! `GET /history`.

use crate::core::{HistoryEntry, Sha};
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
