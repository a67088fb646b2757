//! Durable state: a write-ahead journal of every event the core handles,
//! replayed at start, plus periodic snapshots so the journal stays short.
//!
//! The core is a pure function of (state, event, now), so replaying the
//! journal rebuilds exactly the state sluice had: results per pair, running
//! build ids, merges in flight, reviews, branch heads. Delivery ids seen and
//! the history of builds and merges are kept beside it.
//!
//! Files under the state directory:
//! - `snapshot.json`: the state after event `seq` (written to a temporary
//!   file, then renamed, so it is always whole);
//! - `journal.jsonl`: one line per event after the snapshot (a torn last
//!   line from a crash is ignored);
//! - `history.jsonl`: one line per history entry, append-only.
//!
//! Each line is written with one `write` before the event is acted on, so it
//! survives the process being killed. `fsync` runs on snapshots only: a power
//! loss may lose the last moments, which the reconcile loop re-reads from
//! GitHub.

use crate::core::{Action, Event, HistoryEntry, State, Timestamp};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Events between snapshots.
pub const SNAPSHOT_EVERY: u64 = 5_000;
/// Delivery ids kept across restarts.
pub const DELIVERIES_KEPT: usize = 100_000;

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one line at a time
enum Line {
    Event {
        seq: u64,
        at: Timestamp,
        event: Event,
    },
    Delivery {
        seq: u64,
        id: String,
    },
}

/// A history entry and the journal sequence number of the event that made
/// it.
#[derive(Serialize, Deserialize)]
struct HistoryLine {
    seq: u64,
    entry: HistoryEntry,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    seq: u64,
    state: State,
    deliveries: Vec<String>,
}

/// What a restart finds.
#[derive(Default)]
pub struct Recovered {
    pub state: Option<State>,
    pub deliveries: Vec<String>,
    pub history: Vec<HistoryEntry>,
    pub events_replayed: u64,
}

pub struct Store {
    dir: PathBuf,
    journal: File,
    history: File,
    seq: u64,
    since_snapshot: u64,
    deliveries: std::collections::VecDeque<String>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Store {
    /// Opens the state directory and replays what it holds.
    pub fn open(dir: &Path) -> io::Result<(Store, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let open_append = |p: PathBuf| OpenOptions::new().create(true).append(true).open(p);
        let mut recovered = Recovered::default();
        let mut seq = 0;
        let snapshot_path = dir.join("snapshot.json");
        if snapshot_path.exists() {
            let snapshot: Snapshot =
                serde_json::from_reader(BufReader::new(File::open(&snapshot_path)?))
                    .map_err(|e| other(format!("{}: {e}", snapshot_path.display())))?;
            seq = snapshot.seq;
            recovered.state = Some(snapshot.state);
            recovered.deliveries = snapshot.deliveries;
        }
        // The history first: its lines carry the sequence number of the
        // event that made them, so replay can add what a kill cut off.
        let history_path = dir.join("history.jsonl");
        let mut history_seq = 0;
        if history_path.exists() {
            for line in BufReader::new(File::open(&history_path)?).lines() {
                if let Ok(h) = serde_json::from_str::<HistoryLine>(&line?) {
                    history_seq = history_seq.max(h.seq);
                    recovered.history.push(h.entry);
                }
            }
        }
        let mut history = open_append(history_path)?;
        let journal_path = dir.join("journal.jsonl");
        if journal_path.exists() {
            for line in BufReader::new(File::open(&journal_path)?).lines() {
                let line = line?;
                // A torn last line (killed mid-write) is not an event.
                let Ok(entry) = serde_json::from_str::<Line>(&line) else {
                    tracing::warn!("ignoring an unreadable journal line (torn write?)");
                    continue;
                };
                match entry {
                    Line::Event { seq: s, at, event } if s > seq => {
                        seq = s;
                        if let Some(state) = recovered.state.as_mut() {
                            let actions = state.handle(event, at);
                            recovered.events_replayed += 1;
                            if s > history_seq {
                                // Killed before its history was written.
                                for action in actions {
                                    if let Action::Record(entry) = action {
                                        write_line(
                                            &mut history,
                                            &HistoryLine {
                                                seq: s,
                                                entry: entry.clone(),
                                            },
                                        )?;
                                        recovered.history.push(entry);
                                    }
                                }
                            }
                        }
                    }
                    Line::Delivery { seq: s, id } if s > seq => {
                        seq = s;
                        recovered.deliveries.push(id);
                    }
                    _ => {}
                }
            }
        }
        let start = recovered.deliveries.len().saturating_sub(DELIVERIES_KEPT);
        let store = Store {
            journal: open_append(journal_path)?,
            history,
            dir: dir.to_path_buf(),
            seq,
            since_snapshot: recovered.events_replayed,
            deliveries: recovered.deliveries[start..].iter().cloned().collect(),
        };
        Ok((store, recovered))
    }

    /// The first state of a fresh store, written so the journal has a base
    /// to replay onto.
    pub fn initialise(&mut self, state: &State) -> io::Result<()> {
        self.snapshot(state)
    }

    /// Records an event before it is acted on.
    pub fn append_event(&mut self, at: Timestamp, event: &Event) -> io::Result<()> {
        self.seq += 1;
        self.since_snapshot += 1;
        let line = Line::Event {
            seq: self.seq,
            at,
            event: event.clone(),
        };
        write_line(&mut self.journal, &line)
    }

    /// Records a delivery id, so a redelivery after a restart is still
    /// recognised.
    pub fn append_delivery(&mut self, id: &str) -> io::Result<()> {
        self.seq += 1;
        if self.deliveries.len() == DELIVERIES_KEPT {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(id.to_string());
        write_line(
            &mut self.journal,
            &Line::Delivery {
                seq: self.seq,
                id: id.to_string(),
            },
        )
    }

    /// Records a history entry made by the last event appended.
    pub fn append_history(&mut self, entry: &HistoryEntry) -> io::Result<()> {
        write_line(
            &mut self.history,
            &HistoryLine {
                seq: self.seq,
                entry: entry.clone(),
            },
        )
    }

    /// Writes a snapshot when enough events have passed since the last.
    pub fn maybe_snapshot(&mut self, state: &State) -> io::Result<()> {
        if self.since_snapshot >= SNAPSHOT_EVERY {
            self.snapshot(state)?;
        }
        Ok(())
    }

    fn snapshot(&mut self, state: &State) -> io::Result<()> {
        let tmp = self.dir.join("snapshot.json.tmp");
        {
            let mut file = io::BufWriter::new(File::create(&tmp)?);
            serde_json::to_writer(
                &mut file,
                &Snapshot {
                    seq: self.seq,
                    state: state.clone(),
                    deliveries: self.deliveries.iter().cloned().collect(),
                },
            )
            .map_err(other)?;
            file.flush()?;
            file.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join("snapshot.json"))?;
        // Everything in the journal is now in the snapshot: empty it.
        File::create(self.dir.join("journal.jsonl"))?;
        self.journal = OpenOptions::new()
            .append(true)
            .open(self.dir.join("journal.jsonl"))?;
        self.since_snapshot = 0;
        Ok(())
    }
}

fn write_line<T: Serialize>(file: &mut File, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(other)?;
    line.push(b'\n');
    // One write per line: a kill leaves at most a torn last line.
    file.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{RepoName, RepoPolicy, Sha};

    fn state() -> State {
        State::new(
            [(RepoName::parse("o/r").unwrap(), RepoPolicy::default())],
            "t",
        )
    }

    fn moved(n: u32) -> Event {
        Event::BranchMoved {
            before: None,
            repo: RepoName::parse("o/r").unwrap(),
            branch: "main".into(),
            sha: Sha::parse(&format!("{n:040x}")).unwrap(),
        }
    }

    #[test]
    fn replaying_the_journal_rebuilds_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = state();
        {
            let (mut store, rec) = Store::open(dir.path()).unwrap();
            assert!(rec.state.is_none());
            store.initialise(&live).unwrap();
            for n in 1..=3 {
                store.append_event(Timestamp(n as u64), &moved(n)).unwrap();
                live.handle(moved(n), Timestamp(n as u64));
            }
            store.append_delivery("d-1").unwrap();
        }
        // A torn line at the end, as after a kill mid-write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.jsonl"))
            .unwrap();
        f.write_all(b"{\"kind\":\"event\",\"seq\":9").unwrap();
        let (_, rec) = Store::open(dir.path()).unwrap();
        assert_eq!(rec.state.unwrap(), live);
        assert_eq!(rec.deliveries, vec!["d-1"]);
        assert_eq!(rec.events_replayed, 3);
    }

    #[test]
    fn a_snapshot_replaces_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = state();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.initialise(&live).unwrap();
        for n in 1..=(SNAPSHOT_EVERY as u32 + 2) {
            store.append_event(Timestamp(n as u64), &moved(n)).unwrap();
            live.handle(moved(n), Timestamp(n as u64));
            store.maybe_snapshot(&live).unwrap();
        }
        let journal = std::fs::read_to_string(dir.path().join("journal.jsonl")).unwrap();
        assert!(journal.lines().count() < 5, "journal compacted");
        drop(store);
        let (_, rec) = Store::open(dir.path()).unwrap();
        assert_eq!(rec.state.unwrap(), live);
    }

    #[test]
    fn history_cut_off_by_a_kill_is_restored_once_from_the_journal() {
        use crate::core::{BuildId, Candidate, CandidatePr, JobReport, Outcome};
        let dir = tempfile::tempdir().unwrap();
        let finished = Event::JobFinished {
            build: BuildId::parse("x-1").unwrap(),
            candidate: Candidate {
                repo: RepoName::parse("o/r").unwrap(),
                target_branch: "main".into(),
                target_sha: Sha::parse(&"1".repeat(40)).unwrap(),
                prs: vec![CandidatePr {
                    number: 1,
                    head_sha: Sha::parse(&"2".repeat(40)).unwrap(),
                    head_ref: "f".into(),
                }],
            },
            report: JobReport {
                outcome: Outcome::Passed,
                exit_code: Some(0),
                detail: "exit code 0".into(),
                started_at: Timestamp(1),
                finished_at: Timestamp(2),
            },
        };
        {
            let (mut store, _) = Store::open(dir.path()).unwrap();
            store.initialise(&state()).unwrap();
            // Journaled, then killed before the history line was written.
            store.append_event(Timestamp(5), &finished).unwrap();
        }
        for _ in 0..2 {
            let (_, rec) = Store::open(dir.path()).unwrap();
            assert_eq!(rec.history.len(), 1, "restored exactly once");
        }
    }
}
