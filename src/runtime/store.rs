//! Durable state: a write-ahead journal of every input the core handles,
//! written by one thread with group commit, plus snapshots written in the
//! background so the journal stays short.
//!
//! The core is a pure function of (state, event, now), so replaying the
//! journal rebuilds exactly the state sluice had: results per pair, running
//! build ids, merges in flight, reviews, branch heads. Delivery ids seen and
//! the history of builds and merges are kept beside it.
//!
//! Files under the state directory:
//! - `snapshot.json`: the state after line `seq` (written to a temporary
//!   file, fsynced, then renamed, so it is always whole);
//! - `journal.jsonl`: one line per event or delivery id (a torn last line
//!   from a crash is ignored);
//! - `journal.sealed.jsonl`: the journal up to the snapshot being written;
//!   deleted once that snapshot is on disk;
//! - `history.jsonl`: one line per history entry, append-only.
//!
//! The flow: everything that reaches the core is submitted to the journal
//! thread ([`Inlet`]). It takes every submission waiting, numbers the lines,
//! writes them with one `write` (and one `fdatasync` under
//! [`Fsync::Always`]), then acknowledges each submission and forwards its
//! inputs, in order, to the driver. A webhook is answered 202 only after its
//! acknowledgement: a 202 means the delivery is on disk. Concurrent
//! deliveries share one write and one fsync, so durability costs latency in
//! the order of one fsync, not throughput.
//!
//! Snapshots: after [`SNAPSHOT_EVERY`] lines the driver asks for a
//! checkpoint. The journal thread seals the journal (renames it) and
//! forwards a checkpoint marker; when the driver reaches the marker it has
//! applied exactly the sealed lines, so it clones the state and hands it to
//! the snapshot thread, which writes it and deletes the sealed journal. The
//! driver never waits on the disk for a snapshot. A failed snapshot keeps
//! the sealed journal (nothing is lost), is logged once, counted, and
//! retried with exponential backoff.

use super::Input;
use crate::core::{Action, Event, HistoryEntry, State, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Journal lines between snapshots.
pub const SNAPSHOT_EVERY: u64 = 5_000;
/// Delivery ids kept across restarts.
pub const DELIVERIES_KEPT: usize = 100_000;
/// Submissions waiting for the journal thread before webhooks get a 503.
pub const SUBMISSIONS_QUEUED: usize = 10_000;
/// Journaled inputs waiting for the driver before the journal thread waits.
pub const JOURNALED_QUEUED: usize = 10_000;
/// Submissions written in one group commit, at most.
const GROUP_MAX: usize = 4_096;
/// The longest wait between two attempts at a failed snapshot.
const SNAPSHOT_BACKOFF_MAX: Duration = Duration::from_secs(300);

const SNAPSHOT: &str = "snapshot.json";
const JOURNAL: &str = "journal.jsonl";
const SEALED: &str = "journal.sealed.jsonl";
/// The next journal while it is being put in place (never holds a line).
const NEXT: &str = "journal.next.jsonl";
const HISTORY: &str = "history.jsonl";

/// When the journal is flushed to the disk itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// `fdatasync` every group commit before anything is acknowledged: a
    /// 202 survives a power loss.
    #[default]
    Always,
    /// The kernel has every line before it is acknowledged: a 202 survives
    /// the process being killed, not a power loss (snapshots are still
    /// fsynced).
    Never,
}

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

#[derive(Serialize)]
struct SnapshotOut<'a> {
    seq: u64,
    state: &'a State,
    deliveries: &'a VecDeque<String>,
}

#[derive(Deserialize)]
struct SnapshotIn {
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

/// The state directory, opened and replayed; [`Store::start`] hands it to
/// the journal thread and the driver.
pub struct Store {
    dir: PathBuf,
    journal: File,
    history: File,
    seq: u64,
    since_snapshot: u64,
    deliveries: VecDeque<String>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Opens `path` to append lines, first cutting off a torn last line (a
/// write a kill, a crash or a full disk stopped part-way), which was never
/// acknowledged: appending after it would glue the next line onto it and
/// make that line unreadable too.
fn open_append(path: PathBuf) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let whole = whole_lines_len(&mut file)?;
    if whole < file.metadata()?.len() {
        tracing::warn!(cut_at = whole, "cutting off a torn last line");
        file.set_len(whole)?;
        file.sync_data()?;
    }
    Ok(file)
}

/// The length of `file` up to and including its last newline.
fn whole_lines_len(file: &mut File) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut end = file.metadata()?.len();
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(at) = part.iter().rposition(|b| *b == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The lines of `path` as bytes: a line need not be valid UTF-8 (a write
/// torn inside a character) for the others to be read.
fn byte_lines(path: &Path) -> io::Result<impl Iterator<Item = io::Result<Vec<u8>>>> {
    let mut reader = BufReader::new(File::open(path)?);
    Ok(std::iter::from_fn(move || {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

/// Writes `bytes` to the end of `file` whole or not at all: a write that
/// fails part-way is cut off again, so the next one starts on a new line.
fn append_whole(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    let before = file.metadata()?.len();
    file.write_all(bytes).inspect_err(|_| {
        if let Err(e) = file.set_len(before) {
            tracing::error!(error = %e, "cannot cut off a part-written line");
        }
    })
}

/// Cuts `history.jsonl` in `dir` to its last `keep` lines (at start, before
/// [`Store::open`]; `history.retain`). Written beside and renamed over, so a
/// kill leaves the old file or the new one. Returns how many lines went.
pub fn compact_history(dir: &Path, keep: usize) -> io::Result<usize> {
    let path = dir.join(HISTORY);
    if keep == 0 || !path.exists() {
        return Ok(0);
    }
    let lines: Vec<Vec<u8>> = byte_lines(&path)?.collect::<io::Result<_>>()?;
    if lines.len() <= keep {
        return Ok(0);
    }
    let cut = lines.len() - keep;
    let next = dir.join("history.jsonl.next");
    {
        let mut file = File::create(&next)?;
        for line in &lines[cut..] {
            file.write_all(line)?;
            file.write_all(b"\n")?;
        }
        file.sync_all()?;
    }
    std::fs::rename(&next, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(cut)
}

impl Store {
    /// Opens the state directory and replays what it holds.
    pub fn open(dir: &Path) -> io::Result<(Store, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let mut recovered = Recovered::default();
        let mut seq = 0;
        let snapshot_path = dir.join(SNAPSHOT);
        if snapshot_path.exists() {
            let snapshot: SnapshotIn =
                serde_json::from_reader(BufReader::new(File::open(&snapshot_path)?))
                    .map_err(|e| other(format!("{}: {e}", snapshot_path.display())))?;
            seq = snapshot.seq;
            recovered.state = Some(snapshot.state);
            recovered.deliveries = snapshot.deliveries;
        }
        // The history first: its lines carry the sequence number of the
        // event that made them, so replay can add what a kill cut off.
        let history_path = dir.join(HISTORY);
        let mut history_seq = 0;
        if history_path.exists() {
            for line in byte_lines(&history_path)? {
                if let Ok(h) = serde_json::from_slice::<HistoryLine>(&line?) {
                    history_seq = history_seq.max(h.seq);
                    recovered.history.push(h.entry);
                }
            }
        }
        let mut history = open_append(history_path)?;
        let mut lines = 0;
        for name in [SEALED, JOURNAL] {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            for line in byte_lines(&path)? {
                let line = line?;
                lines += 1;
                // A torn line (killed mid-write) is not an event.
                let Ok(entry) = serde_json::from_slice::<Line>(&line) else {
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
        // Left by a kill in the middle of sealing: it never holds a line.
        let _ = std::fs::remove_file(dir.join(NEXT));
        let start = recovered.deliveries.len().saturating_sub(DELIVERIES_KEPT);
        let store = Store {
            journal: open_append(dir.join(JOURNAL))?,
            history,
            dir: dir.to_path_buf(),
            seq,
            since_snapshot: lines,
            deliveries: recovered.deliveries[start..].iter().cloned().collect(),
        };
        Ok((store, recovered))
    }

    /// The first state of a fresh store, written so the journal has a base
    /// to replay onto.
    pub fn initialise(&mut self, state: &State) -> io::Result<()> {
        write_snapshot(&self.dir, self.seq, state, &self.deliveries)
    }

    /// Starts the journal thread. Returns the way in, the journaled inputs
    /// for the driver (in journal order), and the driver's side of the
    /// store.
    pub fn start(self, fsync: Fsync) -> io::Result<(Inlet, mpsc::Receiver<Journaled>, Keeper)> {
        let (submit_tx, submit_rx) = mpsc::channel(SUBMISSIONS_QUEUED);
        let (journaled_tx, journaled_rx) = mpsc::channel(JOURNALED_QUEUED);
        let writer = JournalWriter {
            dir: self.dir.clone(),
            file: self.journal,
            seq: self.seq,
            last_at: Timestamp(0),
            fsync,
        };
        std::thread::Builder::new()
            .name("sluice-journal".into())
            .spawn(move || writer.run(submit_rx, journaled_tx))?;
        let (snapshot_tx, snapshot_rx) = std::sync::mpsc::channel::<SnapshotJob>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let dir = self.dir.clone();
        let history = self.history.try_clone()?;
        std::thread::Builder::new()
            .name("sluice-snapshot".into())
            .spawn(move || {
                for job in snapshot_rx {
                    // The history lines of the events a snapshot covers are
                    // rebuilt from the sealed journal if lost, so they must
                    // be on disk before that journal is deleted.
                    let result = history
                        .sync_data()
                        .and_then(|()| write_snapshot(&dir, job.seq, &job.state, &job.deliveries))
                        .map(|()| job.seq)
                        .map_err(|e| e.to_string());
                    if done_tx.send(result).is_err() {
                        break;
                    }
                }
            })?;
        let keeper = Keeper {
            history: self.history,
            deliveries: self.deliveries,
            since_snapshot: self.since_snapshot,
            snapshot_tx,
            done: done_rx,
            snapshot: SnapshotProgress::Idle,
            failures: 0,
            retry_at: None,
        };
        Ok((Inlet { tx: submit_tx }, journaled_rx, keeper))
    }
}

/// Writes `state` as the snapshot after line `seq`, then drops the sealed
/// journal it covers.
fn write_snapshot(
    dir: &Path,
    seq: u64,
    state: &State,
    deliveries: &VecDeque<String>,
) -> io::Result<()> {
    let tmp = dir.join("snapshot.json.tmp");
    {
        let mut file = io::BufWriter::new(File::create(&tmp)?);
        serde_json::to_writer(
            &mut file,
            &SnapshotOut {
                seq,
                state,
                deliveries,
            },
        )
        .map_err(other)?;
        file.flush()?;
        file.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT))?;
    // The rename itself must reach the disk before the journal it replaces
    // is deleted.
    File::open(dir)?.sync_all()?;
    match std::fs::remove_file(dir.join(SEALED)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn write_line<T: Serialize>(file: &mut File, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(other)?;
    line.push(b'\n');
    // One write per line: a kill leaves at most a torn last line.
    append_whole(file, &line)
}

/// Inputs submitted together, acknowledged once they are on disk.
pub struct Submission {
    inputs: Vec<Input>,
    ack: Option<oneshot::Sender<Result<(), String>>>,
}

impl Submission {
    pub fn into_inputs(self) -> Vec<Input> {
        self.inputs
    }
}

/// An input as the driver receives it: with its journal sequence number and
/// the time it was journaled (the core's `now` for it, also on replay).
pub struct Journaled {
    pub seq: u64,
    pub at: Timestamp,
    pub input: Input,
}

/// The way into the journal (and through it, to the driver).
#[derive(Clone)]
pub struct Inlet {
    tx: mpsc::Sender<Submission>,
}

/// Why a submission was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Full,
    Closed,
}

impl Inlet {
    /// An inlet and the submissions it receives, for tests of what a task
    /// sends to the core.
    pub fn channel(capacity: usize) -> (Inlet, mpsc::Receiver<Submission>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Inlet { tx }, rx)
    }

    /// Waits for room, then submits (for sluice's own tasks).
    pub async fn send(&self, input: Input) -> Result<(), Refused> {
        self.tx
            .send(Submission {
                inputs: vec![input],
                ack: None,
            })
            .await
            .map_err(|_| Refused::Closed)
    }

    /// Submits if there is room now.
    pub fn try_send(&self, input: Input) -> Result<(), Refused> {
        self.try_submit(vec![input], None)
    }

    /// Submits `inputs` as one; the answer says when they are durable (or
    /// why they could not be written).
    pub fn submit_durable(
        &self,
        inputs: Vec<Input>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, Refused> {
        let (ack, done) = oneshot::channel();
        self.try_submit(inputs, Some(ack))?;
        Ok(done)
    }

    fn try_submit(
        &self,
        inputs: Vec<Input>,
        ack: Option<oneshot::Sender<Result<(), String>>>,
    ) -> Result<(), Refused> {
        use mpsc::error::TrySendError;
        self.tx
            .try_send(Submission { inputs, ack })
            .map_err(|e| match e {
                TrySendError::Full(_) => Refused::Full,
                TrySendError::Closed(_) => Refused::Closed,
            })
    }
}

/// The journal thread's state.
struct JournalWriter {
    dir: PathBuf,
    file: File,
    seq: u64,
    last_at: Timestamp,
    fsync: Fsync,
}

impl JournalWriter {
    fn run(mut self, mut rx: mpsc::Receiver<Submission>, out: mpsc::Sender<Journaled>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(more) => group.push(more),
                    Err(_) => break,
                }
            }
            for journaled in self.commit(group) {
                if out.blocking_send(journaled).is_err() {
                    return; // the driver stopped
                }
            }
        }
    }

    /// Writes a group of submissions with one write (and one fsync), then
    /// acknowledges them; returns what to forward to the driver, in order.
    /// A checkpoint in the group seals the journal after the lines before it.
    fn commit(&mut self, group: Vec<Submission>) -> Vec<Journaled> {
        let mut buffer = Vec::new();
        let mut forward = Vec::new();
        let mut acks = Vec::new();
        let mut failed: Option<String> = None;
        let at = Timestamp(super::now().0.max(self.last_at.0));
        self.last_at = at;
        for submission in group {
            for input in submission.inputs {
                let line = match &input {
                    Input::Event(event) | Input::Request { event, .. } => {
                        self.seq += 1;
                        Some(serde_json::to_vec(&Line::Event {
                            seq: self.seq,
                            at,
                            event: event.clone(),
                        }))
                    }
                    Input::Delivery(id) => {
                        self.seq += 1;
                        Some(serde_json::to_vec(&Line::Delivery {
                            seq: self.seq,
                            id: id.clone(),
                        }))
                    }
                    // Forwarded, not written: nothing to replay.
                    Input::Access { .. } => None,
                    Input::Checkpoint { .. } => {
                        // Everything before it must be in the sealed file.
                        if let Err(e) = self.flush(&mut buffer) {
                            failed.get_or_insert(e.to_string());
                        }
                        let sealed = failed.is_none() && self.seal();
                        forward.push(Journaled {
                            seq: self.seq,
                            at,
                            input: Input::Checkpoint { sealed },
                        });
                        continue;
                    }
                };
                match line {
                    Some(Ok(mut bytes)) => {
                        bytes.push(b'\n');
                        buffer.extend_from_slice(&bytes);
                    }
                    Some(Err(e)) => {
                        failed.get_or_insert(e.to_string());
                    }
                    None => {}
                }
                forward.push(Journaled {
                    seq: self.seq,
                    at,
                    input,
                });
            }
            acks.push(submission.ack);
        }
        if let Err(e) = self.flush(&mut buffer) {
            failed.get_or_insert(e.to_string());
        }
        let answer = match &failed {
            None => Ok(()),
            Some(error) => {
                // Not durable: the callers hear so (a webhook gets a 503 and
                // may be redelivered). The inputs are applied all the same,
                // as the core takes each fact once however often it comes.
                tracing::error!(%error, "cannot write the journal");
                Err(error.clone())
            }
        };
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(answer.clone());
        }
        forward
    }

    fn flush(&mut self, buffer: &mut Vec<u8>) -> io::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let written = append_whole(&mut self.file, buffer);
        buffer.clear();
        written?;
        if self.fsync == Fsync::Always {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Renames the journal to the sealed file and starts a new one, unless a
    /// sealed file is still waiting for its snapshot.
    ///
    /// The new journal is created first under another name, so that at no
    /// step can lines be written to a file a snapshot will delete.
    fn seal(&mut self) -> bool {
        let (journal, sealed, next) = (
            self.dir.join(JOURNAL),
            self.dir.join(SEALED),
            self.dir.join(NEXT),
        );
        if sealed.exists() {
            return false;
        }
        let result = open_append(next.clone()).and_then(|file| {
            std::fs::rename(&journal, &sealed)?;
            if let Err(e) = std::fs::rename(&next, &journal) {
                // Undo: the old journal stays the journal.
                std::fs::rename(&sealed, &journal)?;
                return Err(e);
            }
            Ok(file)
        });
        match result {
            Ok(file) => {
                self.file = file;
                true
            }
            Err(e) => {
                let _ = std::fs::remove_file(&next);
                tracing::warn!(error = %e, "cannot seal the journal for a snapshot");
                false
            }
        }
    }
}

struct SnapshotJob {
    seq: u64,
    state: State,
    deliveries: VecDeque<String>,
}

enum SnapshotProgress {
    Idle,
    /// A checkpoint was asked for; its marker has not reached the driver.
    Asked,
    /// The snapshot thread is writing.
    Writing,
}

/// The driver's side of the store: the history file, the delivery ids, and
/// when to snapshot.
pub struct Keeper {
    history: File,
    deliveries: VecDeque<String>,
    since_snapshot: u64,
    snapshot_tx: std::sync::mpsc::Sender<SnapshotJob>,
    /// Answers of the snapshot thread: the seq written, or why not.
    pub done: mpsc::UnboundedReceiver<Result<u64, String>>,
    snapshot: SnapshotProgress,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Keeper {
    /// A line was applied.
    pub fn applied(&mut self) {
        self.since_snapshot += 1;
    }

    /// A delivery id was journaled.
    pub fn delivery(&mut self, id: String) {
        self.since_snapshot += 1;
        if self.deliveries.len() == DELIVERIES_KEPT {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(id);
    }

    /// Records a history entry made by the event journaled as `seq`.
    pub fn append_history(&mut self, seq: u64, entry: &HistoryEntry) -> io::Result<()> {
        write_line(
            &mut self.history,
            &HistoryLine {
                seq,
                entry: entry.clone(),
            },
        )
    }

    /// Whether to ask for a checkpoint now (and remembers that it did).
    pub fn wants_checkpoint(&mut self) -> bool {
        let due = matches!(self.snapshot, SnapshotProgress::Idle)
            && self.since_snapshot >= SNAPSHOT_EVERY
            && self.retry_at.is_none_or(|t| Instant::now() >= t);
        if due {
            self.snapshot = SnapshotProgress::Asked;
        }
        due
    }

    /// The checkpoint could not be asked for (the journal is busy).
    pub fn checkpoint_not_sent(&mut self) {
        self.snapshot = SnapshotProgress::Idle;
    }

    /// The checkpoint marker reached the driver: `state` is the state after
    /// line `seq`. Hands a copy to the snapshot thread.
    pub fn checkpoint(&mut self, seq: u64, state: &State) {
        let job = SnapshotJob {
            seq,
            state: state.clone(),
            deliveries: self.deliveries.clone(),
        };
        self.since_snapshot = 0;
        self.snapshot = SnapshotProgress::Writing;
        if self.snapshot_tx.send(job).is_err() {
            self.snapshot_finished(Err("the snapshot thread stopped".into()));
        }
    }

    /// What the snapshot thread answered. Returns true when this is the first
    /// failure of a streak (worth a log line).
    pub fn snapshot_finished(&mut self, result: Result<u64, String>) -> bool {
        self.snapshot = SnapshotProgress::Idle;
        match result {
            Ok(_) => {
                self.failures = 0;
                self.retry_at = None;
                false
            }
            Err(_) => {
                self.failures += 1;
                let wait = Duration::from_secs(1)
                    .saturating_mul(2u32.saturating_pow(self.failures.min(16) - 1))
                    .min(SNAPSHOT_BACKOFF_MAX);
                self.retry_at = Some(Instant::now() + wait);
                // Lines keep counting: the next attempt is due at once when
                // the wait is over.
                self.since_snapshot = SNAPSHOT_EVERY;
                self.failures == 1
            }
        }
    }
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

    /// Submits `inputs` through a started store and applies what comes out
    /// to `live`, as the driver does; returns the keeper.
    fn drive(dir: &Path, live: &mut State, inputs: Vec<Input>) -> Keeper {
        let (mut store, _) = Store::open(dir).unwrap();
        store.initialise(live).unwrap();
        let (inlet, mut journaled, mut keeper) = store.start(Fsync::Always).unwrap();
        let n = inputs.len();
        let ack = inlet.submit_durable(inputs).unwrap();
        assert_eq!(ack.blocking_recv().unwrap(), Ok(()));
        for _ in 0..n {
            let j = journaled.blocking_recv().unwrap();
            if let Input::Event(e) = j.input {
                live.handle(e, j.at);
            }
        }
        keeper.applied();
        keeper
    }

    #[test]
    fn replaying_the_journal_rebuilds_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = state();
        let mut inputs: Vec<Input> = (1..=3).map(|n| Input::Event(moved(n))).collect();
        inputs.push(Input::Delivery("d-1".into()));
        drop(drive(dir.path(), &mut live, inputs));
        // A torn line at the end, as after a kill mid-write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        f.write_all(b"{\"kind\":\"event\",\"seq\":9").unwrap();
        let (_, rec) = Store::open(dir.path()).unwrap();
        assert_eq!(rec.state.unwrap(), live);
        assert_eq!(rec.deliveries, vec!["d-1"]);
        assert_eq!(rec.events_replayed, 3);
    }

    #[test]
    fn history_cut_off_by_a_kill_is_restored_once_from_the_journal() {
        use crate::core::{BuildId, Candidate, CandidatePr, JobReport, Outcome};
        let dir = tempfile::tempdir().unwrap();
        let finished = Event::JobFinished {
            build: BuildId::parse("x-1").unwrap(),
            candidate: Candidate {
                car: None,
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
        // Journaled, then killed before the history line was written.
        drop(drive(
            dir.path(),
            &mut state(),
            vec![Input::Event(finished)],
        ));
        for _ in 0..2 {
            let (_, rec) = Store::open(dir.path()).unwrap();
            assert_eq!(rec.history.len(), 1, "restored exactly once");
        }
    }

    #[test]
    fn a_torn_line_is_cut_off_so_nothing_acknowledged_after_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = state();
        drop(drive(dir.path(), &mut live, vec![Input::Event(moved(1))]));
        // Writes stopped part-way (a kill, a full disk), torn inside a
        // two-byte character ("é" is C3 A9), in both appended files.
        for name in [JOURNAL, HISTORY] {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join(name))
                .unwrap();
            f.write_all(b"{\"kind\":\"event\",\"seq\":7,\"title\":\"caf\xC3")
                .unwrap();
        }
        // The next life appends an event, a delivery and a history line,
        // each acknowledged.
        let mut keeper = drive(
            dir.path(),
            &mut live,
            vec![Input::Event(moved(2)), Input::Delivery("d-2".into())],
        );
        let entry = HistoryEntry::BranchMode {
            repo: RepoName::parse("o/r").unwrap(),
            branch: "café".into(),
            from: crate::core::BranchMode::Running,
            to: crate::core::BranchMode::Paused,
            at: Timestamp(5),
        };
        keeper.append_history(9, &entry).unwrap();
        drop(keeper);
        let (_, rec) = Store::open(dir.path()).unwrap();
        assert_eq!(rec.state.unwrap(), live, "the event after the torn line");
        assert_eq!(rec.deliveries, vec!["d-2"]);
        assert_eq!(rec.history, vec![entry], "the history line after it");
        for name in [JOURNAL, HISTORY] {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                assert!(
                    serde_json::from_slice::<serde_json::Value>(line).is_ok(),
                    "{name} still holds a torn line: {}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }

    #[test]
    fn history_cut_to_its_retention_keeps_the_newest_lines_and_is_not_refilled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        let line = |seq: u64, n: u64| {
            format!(
                "{{\"seq\":{seq},\"entry\":{{\"kind\":\"branch_mode\",\"repo\":\"o/r\",\"branch\":\"b{n}\",\"from\":\"running\",\"to\":\"paused\",\"at\":{n}}}}}\n"
            )
        };
        let text: String = (1..=5).map(|n| line(n, n)).collect();
        std::fs::write(dir.path().join(HISTORY), text).unwrap();
        assert_eq!(
            compact_history(dir.path(), 10).unwrap(),
            0,
            "under the limit"
        );
        assert_eq!(compact_history(dir.path(), 2).unwrap(), 3);
        for _ in 0..2 {
            let (_, rec) = Store::open(dir.path()).unwrap();
            let branches: Vec<String> = rec
                .history
                .iter()
                .map(|e| match e {
                    HistoryEntry::BranchMode { branch, .. } => branch.clone(),
                    _ => String::new(),
                })
                .collect();
            assert_eq!(branches, vec!["b4", "b5"]);
        }
    }

    #[test]
    fn a_failed_snapshot_backs_off_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut keeper = drive(dir.path(), &mut state(), vec![]);
        keeper.since_snapshot = SNAPSHOT_EVERY;
        assert!(keeper.wants_checkpoint());
        assert!(!keeper.wants_checkpoint(), "one checkpoint at a time");
        assert!(keeper.snapshot_finished(Err("disk full".into())), "logged");
        assert!(!keeper.wants_checkpoint(), "backing off");
        keeper.retry_at = Some(Instant::now());
        assert!(keeper.wants_checkpoint(), "due after the wait");
        assert!(
            !keeper.snapshot_finished(Err("again".into())),
            "logged once"
        );
        assert!(!keeper.snapshot_finished(Ok(7)));
        assert_eq!(keeper.failures, 0);
    }

    /// Drives the store as the driver does: submit, apply what comes back
    /// in order, ask for checkpoints and hand them to the snapshot thread.
    struct Driven {
        inlet: Inlet,
        journaled: mpsc::Receiver<Journaled>,
        keeper: Keeper,
        live: State,
        snapshots: u32,
        failures: u32,
    }

    impl Driven {
        fn start(dir: &Path, live: State) -> Driven {
            let (mut store, _) = Store::open(dir).unwrap();
            store.initialise(&live).unwrap();
            let (inlet, journaled, keeper) = store.start(Fsync::Never).unwrap();
            Driven {
                inlet,
                journaled,
                keeper,
                live,
                snapshots: 0,
                failures: 0,
            }
        }

        /// Submits one event; returns the actions the core took for it.
        fn event(&mut self, event: Event) -> Vec<Action> {
            let id = format!("d-{}", self.keeper.since_snapshot);
            let ack = self
                .inlet
                .submit_durable(vec![Input::Event(event), Input::Delivery(id)])
                .unwrap();
            assert_eq!(ack.blocking_recv().unwrap(), Ok(()));
            let mut actions = Vec::new();
            for _ in 0..2 {
                let j = self.journaled.blocking_recv().unwrap();
                match j.input {
                    Input::Event(e) => {
                        actions = self.live.handle(e, j.at);
                        self.keeper.applied();
                    }
                    Input::Delivery(id) => self.keeper.delivery(id),
                    _ => unreachable!(),
                }
            }
            if self.keeper.wants_checkpoint() {
                self.inlet
                    .try_send(Input::Checkpoint { sealed: false })
                    .unwrap();
                let j = self.journaled.blocking_recv().unwrap();
                assert!(matches!(j.input, Input::Checkpoint { .. }));
                self.keeper.checkpoint(j.seq, &self.live);
                let done = self.keeper.done.blocking_recv().unwrap();
                if done == Ok(j.seq) {
                    self.snapshots += 1;
                } else {
                    self.failures += 1;
                }
                self.keeper.snapshot_finished(done);
            }
            actions
        }
    }

    #[test]
    fn snapshots_with_results_truncate_the_journal_and_restore_the_same_state() {
        use crate::core::{JobReport, Outcome, PrKey, PrSnapshot};
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoName::parse("o/r").unwrap();
        let policy = RepoPolicy {
            max_concurrent_builds: 50,
            ..RepoPolicy::default()
        };
        let mut d = Driven::start(dir.path(), State::new([(repo.clone(), policy)], "t"));
        d.event(moved(1));
        let mut n = 0u64;
        // Open PRs and finish their builds until well past two snapshots.
        while d.snapshots < 2 || n < 2 * SNAPSHOT_EVERY / 3 {
            n += 1;
            let actions = d.event(Event::PrUpdated(PrSnapshot {
                key: PrKey {
                    repo: repo.clone(),
                    number: n,
                },
                head_sha: Sha::parse(&format!("{:040x}", 0x1000 + n)).unwrap(),
                head_ref: format!("f{n}"),
                base_ref: "main".into(),
                base_sha: None,
                title: format!("PR {n}"),
                author: "a".into(),
                draft: false,
                mergeable: None,
                labels: vec![],
                created_at: Timestamp(n),
                depends_on: Vec::new(),
            }));
            for action in actions {
                if let Action::StartBuild { build, candidate } = action {
                    let outcome = [Outcome::Passed, Outcome::Failed][n as usize % 2];
                    d.event(Event::JobFinished {
                        build,
                        candidate,
                        report: JobReport {
                            outcome,
                            exit_code: Some(n as i32 % 2),
                            detail: "exit".into(),
                            started_at: Timestamp(1),
                            finished_at: Timestamp(2),
                        },
                    });
                }
            }
        }
        let with_results = d
            .live
            .repo(&repo)
            .unwrap()
            .prs
            .values()
            .filter(|p| !p.results.is_empty())
            .count();
        assert!(with_results > 1000, "{with_results} PRs with results");
        // Killed: nothing is shut down cleanly.
        let live = d.live.clone();
        std::mem::forget(d);
        let journal = std::fs::read_to_string(dir.path().join(JOURNAL)).unwrap();
        assert!(
            (journal.lines().count() as u64) < 2 * SNAPSHOT_EVERY,
            "journal truncated: {} lines",
            journal.lines().count()
        );
        assert!(!dir.path().join(SEALED).exists());
        let (_, rec) = Store::open(dir.path()).unwrap();
        assert!(rec.events_replayed < 2 * SNAPSHOT_EVERY);
        assert_eq!(
            rec.state.unwrap(),
            live,
            "recovered state equals the live one"
        );
        assert_eq!(rec.deliveries.len() as u64, (n + 1) + with_results as u64);
    }

    #[test]
    fn a_failed_snapshot_loses_nothing_and_the_next_one_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Driven::start(dir.path(), state());
        // The snapshot's temporary file cannot be created.
        std::fs::create_dir(dir.path().join("snapshot.json.tmp")).unwrap();
        let mut n = 0;
        while d.failures == 0 {
            n += 1;
            d.event(moved(n));
        }
        assert!(
            dir.path().join(SEALED).exists(),
            "the sealed journal is kept"
        );
        let (_, rec) = Store::open(dir.path()).unwrap();
        assert_eq!(rec.state.unwrap(), d.live, "nothing lost");
        // The disk is fine again: the next attempt (after the backoff)
        // writes the snapshot and drops the sealed journal.
        std::fs::remove_dir(dir.path().join("snapshot.json.tmp")).unwrap();
        d.keeper.retry_at = Some(Instant::now());
        while d.snapshots == 0 {
            n += 1;
            d.event(moved(n));
        }
        assert!(!dir.path().join(SEALED).exists());
        let live = d.live.clone();
        std::mem::forget(d);
        let (_, rec) = Store::open(dir.path()).unwrap();
        assert!(rec.events_replayed < 10, "{} replayed", rec.events_replayed);
        assert_eq!(rec.state.unwrap(), live);
    }
}
