//! The one driver: feeds events to the core in order, carries out its
//! actions, and feeds what comes of them back as events. Also the timers:
//! the tick (retries waiting on time) and the reconcile loop (re-reads
//! GitHub so a lost webhook heals itself).

pub mod events;
pub mod history;
pub mod metrics;
pub mod outgoing;
mod reconcile;
mod status;
pub mod store;

pub use reconcile::{ReconcileMemory, reconcile};
use status::status_writer;

use crate::config::Config;
use crate::core::{
    Action, Answer, Candidate, Event, HistoryEntry, Landing, MergeResult, RepoName, RequestId,
    State, Timestamp,
};
use crate::executor::{CloneToken, Executor, JobResult, JobSpec, TokenMint};
use crate::forge::{CarStep, CommitStatus, Forge, PrClose, PrFetch, RefUpdate};
use crate::results::{BuildRecord, ResultsStore};
use history::History;
use metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{Inlet, Journaled, Keeper, Recovered, Store};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

/// How often the core's timers are checked.
pub const TICK: Duration = Duration::from_secs(5);

/// What reaches the driver.
pub enum Input {
    Event(Event),
    /// A webhook delivery id was accepted (journaled for restarts).
    Delivery(String),
    /// The App was given or denied gated repositories. Not journaled: it
    /// changes what the adapters remember, not what the core knows (a lost
    /// one is healed by the periodic re-read).
    Access {
        granted: Vec<RepoName>,
        revoked: Vec<RepoName>,
    },
    /// A person's request; the answer goes back on `reply`.
    Request {
        event: Event,
        request: RequestId,
        reply: oneshot::Sender<Answer>,
    },
    /// The driver asked for a snapshot; when this reaches it, it has applied
    /// every line before. `sealed`: the journal up to here was set aside.
    Checkpoint {
        sealed: bool,
    },
}

/// What the HTTP side shares with the driver: a way in, and read-only views.
pub struct Shared {
    /// Into the journal, and through it to the driver.
    pub inputs: Inlet,
    /// The repositories sluice gates (fixed at start).
    pub repos: BTreeSet<RepoName>,
    pub state: RwLock<State>,
    pub history: RwLock<History>,
    pub metrics: Metrics,
    /// What the driver decides and learns, for `GET /events`.
    pub events: Arc<events::EventBus>,
    /// Per target branch: the car id up to which every staging ref is
    /// known deleted (see [`delete_landed_staging_refs`]).
    staging_clean: std::sync::Mutex<std::collections::HashMap<(RepoName, String), u64>>,
    next_request: AtomicU64,
}

impl Shared {
    pub fn request_id(&self) -> RequestId {
        RequestId(self.next_request.fetch_add(1, Ordering::Relaxed))
    }
}

/// The adapters the driver works with.
#[derive(Clone)]
pub struct Adapters {
    pub forge: Arc<dyn Forge>,
    pub executor: Arc<dyn Executor>,
    pub results: Arc<dyn ResultsStore>,
}

pub fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// A build-id prefix unique to this process: the start time in base 36.
pub fn build_prefix(at: Timestamp) -> String {
    let mut n = at.0 / 1000;
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_else(|_| "b".into())
}

/// Creates the shared state and the driver. Run the driver with
/// `Driver::run`; hand `Shared` to the HTTP server.
pub fn build(
    config: Arc<Config>,
    adapters: Adapters,
    mut store: Store,
    recovered: Recovered,
) -> std::io::Result<(Arc<Shared>, Driver)> {
    // Check runs are cheap to read and show on the car commits too.
    let repos = || {
        config.repos.iter().map(|r| {
            let mut policy = r.policy();
            policy.car_statuses = config.github.check_runs;
            (r.repo(), policy)
        })
    };
    let restored = recovered.state.is_some();
    let state = match recovered.state {
        Some(mut state) => {
            let dropped = state.reconfigure(repos());
            for build in &dropped {
                adapters.executor.cancel(build);
            }
            info!(
                events = recovered.events_replayed,
                "state restored from the journal"
            );
            state
        }
        None => {
            let state = State::new(repos(), &build_prefix(now()));
            store.initialise(&state)?;
            state
        }
    };
    let (inlet, journaled, keeper) = store.start(config.state.fsync)?;
    let mut history = History::with_retention(Some(config.history.retain));
    for entry in recovered.history {
        history.push(entry);
    }
    let shared = Arc::new(Shared {
        inputs: inlet,
        repos: config.repos.iter().map(|r| r.repo()).collect(),
        state: RwLock::new(state),
        history: RwLock::new(history),
        metrics: Metrics::default(),
        // Microseconds since the epoch: sequence numbers keep increasing
        // across restarts, so an old `Last-Event-ID` never skips new events.
        events: Arc::new(events::EventBus::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64),
        )),
        staging_clean: Default::default(),
        next_request: AtomicU64::new(1),
    });
    tokio::spawn(shared.events.clone().fan_out());
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    tokio::spawn(status_writer(
        adapters.forge.clone(),
        adapters.results.clone(),
        status_rx,
        shared.clone(),
    ));
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let driver = Driver {
        config,
        adapters,
        shared: shared.clone(),
        journaled,
        jobs_tx,
        jobs_rx,
        status_tx,
        replies: HashMap::new(),
        reconcile_running: Arc::new(Mutex::new(BTreeSet::new())),
        reconcile_memory: Arc::new(ReconcileMemory::default()),
        keeper,
        restored,
        stalled: BTreeSet::new(),
        wakes: BTreeSet::new(),
        starting: Arc::new(Starting::default()),
    };
    Ok((shared, driver))
}

/// A status to write, and the build whose log tail a check run's summary
/// shows (a finished build's).
pub(crate) type StatusUpdate = (
    RepoName,
    crate::core::Sha,
    CommitStatus,
    Option<crate::core::ResultKey>,
);

pub struct Driver {
    config: Arc<Config>,
    adapters: Adapters,
    shared: Arc<Shared>,
    journaled: mpsc::Receiver<Journaled>,
    jobs_tx: mpsc::UnboundedSender<JobResult>,
    jobs_rx: mpsc::UnboundedReceiver<JobResult>,
    status_tx: mpsc::UnboundedSender<StatusUpdate>,
    replies: HashMap<RequestId, oneshot::Sender<Answer>>,
    reconcile_running: Arc<Mutex<BTreeSet<RepoName>>>,
    /// What the re-reads saw last, so an idle one reads little.
    reconcile_memory: Arc<ReconcileMemory>,
    keeper: Keeper,
    /// The state came from a journal: the process before was stopped or
    /// killed.
    restored: bool,
    /// The stalls the watchdog has logged (repo:branch:kind), so each is
    /// logged once while it lasts.
    stalled: BTreeSet<String>,
    /// The times the core asked to be woken at (`Action::WakeAt`) with a
    /// timer armed, so one time gets one timer.
    wakes: BTreeSet<u64>,
    /// Builds between `StartBuild` and the executor's start.
    starting: Arc<Starting>,
}

/// Builds between `StartBuild` and the executor's start (their running
/// page comes first), and whether a cancel came meanwhile: the executor
/// does not know them yet, so the cancel is kept here and the build never
/// starts.
#[derive(Default)]
struct Starting(Mutex<BTreeMap<crate::core::BuildId, bool>>);

impl Starting {
    fn begin(&self, build: &crate::core::BuildId) {
        lock(&self.0).insert(build.clone(), false);
    }

    /// A cancel of `build`: kept if it is still starting.
    fn cancel(&self, build: &crate::core::BuildId) {
        if let Some(cancelled) = lock(&self.0).get_mut(build) {
            *cancelled = true;
        }
    }

    /// Runs `start` unless `build` was cancelled since [`Starting::begin`];
    /// under the lock, so a cancel is either seen here or comes after the
    /// start, and reaches a build the executor knows. Whether it started.
    fn start_unless_cancelled(&self, build: &crate::core::BuildId, start: impl FnOnce()) -> bool {
        let mut starting = lock(&self.0);
        if starting.remove(build) == Some(true) {
            return false;
        }
        start();
        true
    }
}

/// CPU time of the calling thread: what `apply` (which never awaits, so
/// stays on one thread) costs, without the time the thread was preempted.
fn thread_cpu_seconds() -> f64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

impl Driver {
    /// Runs until `shutdown` becomes true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.recover().await;
        let mut tick = tokio::time::interval(TICK);
        let interval = self.config.reconcile.interval_secs;
        let mut reconcile = tokio::time::interval(Duration::from_secs(if interval == 0 {
            u64::MAX / 4
        } else {
            interval
        }));
        // The first reconcile runs at once (interval's first tick is immediate).
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
                Some(input) = self.journaled.recv() => self.on_input(input),
                Some(job) = self.jobs_rx.recv() => self.on_job_result(job),
                Some(done) = self.keeper.done.recv() => self.on_snapshot(done),
                // Ticks are skipped when the journal is full: the next one
                // does the same.
                _ = tick.tick() => { let _ = self.shared.inputs.try_send(Input::Event(Event::Tick)); }
                _ = reconcile.tick() => self.start_reconcile(),
            }
        }
        info!("driver stopped");
    }

    /// After a restart: statuses decided last are written again, builds
    /// the executor no longer has are re-queued, and merges and landings
    /// that were in flight are settled from GitHub's answer.
    async fn recover(&mut self) {
        // Sent in order by a task of their own once this returns: the queue
        // they go into is emptied by the loop this comes before, and may be
        // full of webhooks already.
        let mut events = Vec::new();
        if self.restored {
            // Statuses the killed process decided but may not have written.
            events.push(Event::Restarted);
        }
        let (running, merges) = {
            let state = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
            let running: Vec<(crate::core::BuildId, Candidate)> = state
                .running_builds()
                .map(|b| (b.id.clone(), b.candidate.clone()))
                .collect();
            (running, state.merges_in_flight())
        };
        {
            let lost = self
                .adapters
                .executor
                .recover(running, self.jobs_tx.clone())
                .await;
            if !lost.is_empty() {
                info!(count = lost.len(), "re-queueing builds lost in the restart");
                events.push(Event::BuildsLost { builds: lost });
            }
        }
        // Train work whose answer died with the old process: a landing is
        // settled by reading the target; a car being built is built again.
        let trains = {
            let state = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
            state.train_work_in_flight()
        };
        for (repo, branch, landing, building) in trains {
            for car in building {
                events.push(Event::CarBuildFailed {
                    repo: repo.clone(),
                    branch: branch.clone(),
                    car,
                });
            }
            let Some(landing) = landing else { continue };
            let (forge, inputs, shared) = self.spawn_parts();
            tokio::spawn(async move {
                for event in
                    settle_interrupted_landing(&*forge, &shared, repo, branch, landing).await
                {
                    let _ = inputs.send(Input::Event(event)).await;
                }
            });
        }
        let inputs = self.shared.inputs.clone();
        tokio::spawn(async move {
            for event in events {
                let _ = inputs.send(Input::Event(event)).await;
            }
        });
        for (pr, pair, _branch) in merges {
            let (forge, inputs, shared) = self.spawn_parts();
            tokio::spawn(async move {
                let result = match forge.get_pr(&pr).await {
                    Ok(Some(PrFetch::Open(_))) => MergeResult::Failed {
                        reason: crate::core::text::interrupted_merge(),
                    },
                    Ok(Some(PrFetch::Closed {
                        merge_sha: Some(merge_sha),
                    })) => MergeResult::Merged { merge_sha },
                    // Closed without merging, or gone: nothing landed.
                    Ok(Some(PrFetch::Closed { merge_sha: None })) | Ok(None) => {
                        MergeResult::Refused {
                            reason: "the PR was closed without being merged".into(),
                        }
                    }
                    Err(e) => return forge_failed(&shared, "merge_recovery", &e),
                };
                let _ = inputs
                    .send(Input::Event(Event::MergeFinished { pr, pair, result }))
                    .await;
            });
        }
    }

    fn on_input(&mut self, journaled: Journaled) {
        let Journaled { seq, at, input } = journaled;
        match input {
            Input::Event(event) => self.apply(event, at, seq),
            Input::Delivery(id) => self.keeper.delivery(id),
            Input::Access { granted, revoked } => self.on_access(granted, revoked),
            Input::Request {
                event,
                request,
                reply,
            } => {
                self.replies.insert(request, reply);
                self.apply(event, at, seq);
                // A request the core did not answer (it always does) must not
                // leave its caller waiting.
                self.replies.remove(&request);
            }
            Input::Checkpoint { .. } => {
                let state = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
                self.keeper.checkpoint(seq, &state);
            }
        }
        if self.keeper.wants_checkpoint()
            && self
                .shared
                .inputs
                .try_send(Input::Checkpoint { sealed: false })
                .is_err()
        {
            self.keeper.checkpoint_not_sent();
        }
    }

    fn on_snapshot(&mut self, done: Result<u64, String>) {
        let error = done.as_ref().err().cloned();
        let first_failure = self.keeper.snapshot_finished(done);
        if let Some(error) = error {
            self.shared.metrics.snapshot_failures.inc();
            if first_failure {
                warn!(%error, "cannot write a snapshot; the journal is kept and the snapshot retried with backoff");
            }
        }
    }

    /// Feeds one journaled event to the core (at the time it was journaled,
    /// as a replay will) and carries out the actions.
    fn apply(&mut self, event: Event, at: Timestamp, seq: u64) {
        let started = thread_cpu_seconds();
        let kind = event_kind(&event);
        Metrics::count(&self.shared.metrics.events, kind);
        if let Some(learned) = events::of_event(&event, kind) {
            self.shared.events.publish("learned", at, learned);
        }
        let (actions, stalls) = {
            let mut state = self.shared.state.write().unwrap_or_else(|e| e.into_inner());
            let tick = matches!(event, Event::Tick);
            let actions = state.handle(event, at);
            let stalls = tick.then(|| state.stalls(at));
            let prs: usize = state.repos().map(|(_, r)| r.prs.len()).sum();
            self.shared.metrics.prs_tracked.set(prs as i64);
            self.shared
                .metrics
                .builds_running
                .set(state.running_builds().count() as i64);
            (actions, stalls)
        };
        if let Some(stalls) = stalls {
            self.watch(&stalls);
        }
        self.keeper.applied();
        self.execute(actions, seq, at);
        let busy = thread_cpu_seconds() - started;
        self.shared
            .metrics
            .driver_busy_seconds
            .inc_by(busy.max(0.0));
    }

    /// The watchdog: a gauge per kind of stall, and one log line when a
    /// stall starts.
    fn watch(&mut self, stalls: &[crate::core::Stall]) {
        for kind in ["passed_not_landing", "car_overdue"] {
            let n = stalls.iter().filter(|s| s.kind == kind).count();
            self.shared
                .metrics
                .train_stalls
                .get_or_create(&crate::runtime::metrics::KindLabel { kind: kind.into() })
                .set(n as i64);
        }
        for s in stalls {
            let key = format!("{}:{}:{}", s.repo, s.branch, s.kind);
            if self.stalled.insert(key) {
                warn!(repo = %s.repo, branch = %s.branch, kind = s.kind, "the train looks stuck: {}", s.message);
            }
        }
        self.stalled.retain(|key| {
            stalls
                .iter()
                .any(|s| format!("{}:{}:{}", s.repo, s.branch, s.kind) == *key)
        });
    }

    fn execute(&mut self, actions: Vec<Action>, seq: u64, at: Timestamp) {
        for action in actions {
            if let Some((kind, body)) = events::of_action(&action, &*self.adapters.results) {
                self.shared.events.publish(kind, at, body);
            }
            match action {
                Action::SetStatus {
                    repo,
                    sha,
                    state,
                    description,
                    link,
                    summary,
                } => {
                    let target_url = link.as_ref().map(|k| self.adapters.results.link(k));
                    // A failing build's log tail goes in a check run's
                    // summary (read by the writer, off this loop).
                    let log = link.filter(|_| state != crate::core::CommitState::Pending);
                    let _ = self.status_tx.send((
                        repo,
                        sha,
                        CommitStatus {
                            state,
                            description,
                            target_url,
                            summary,
                        },
                        log,
                    ));
                }
                Action::StartBuild { build, candidate } => self.start_build(build, candidate),
                Action::CancelBuild { build } => {
                    info!(%build, "cancelling build");
                    self.starting.cancel(&build);
                    self.adapters.executor.cancel(&build);
                }
                Action::Merge { pr, pair, build } => {
                    info!(%pr, head = %pair.head, target = %pair.target, %build, "merging");
                    let forge = self.adapters.forge.clone();
                    let inputs = self.shared.inputs.clone();
                    let shared = self.shared.clone();
                    let (method, title) = {
                        let repo = self.config.repo(&pr.repo);
                        let title = self
                            .shared
                            .state
                            .read()
                            .ok()
                            .and_then(|s| s.pr(&pr).map(|p| p.snapshot.title.clone()))
                            .unwrap_or_default();
                        (
                            repo.map(|r| r.merge_method).unwrap_or_default(),
                            format!("{title} (#{})", pr.number),
                        )
                    };
                    tokio::spawn(async move {
                        let result = forge.merge(&pr, &pair.head, method, &title).await;
                        let kind = match &result {
                            MergeResult::Merged { .. } => "merged",
                            MergeResult::HeadMoved => "head_moved",
                            MergeResult::Refused { .. } => "refused",
                            MergeResult::Failed { .. } => "failed",
                        };
                        info!(%pr, result = kind, "merge finished");
                        Metrics::count(&shared.metrics.merges, kind);
                        let _ = inputs
                            .send(Input::Event(Event::MergeFinished { pr, pair, result }))
                            .await;
                    });
                }
                Action::FetchReviews { pr } => {
                    let (forge, inputs, shared) = self.spawn_parts();
                    tokio::spawn(async move {
                        match forge.reviews(&pr).await {
                            Ok(reviews) => {
                                let _ = inputs
                                    .send(Input::Event(Event::Reviews { pr, reviews }))
                                    .await;
                            }
                            Err(e) => forge_failed(&shared, "reviews", &e),
                        }
                    });
                }
                Action::FetchBranch { repo, branch } => {
                    let (forge, inputs, shared) = self.spawn_parts();
                    tokio::spawn(async move {
                        let as_of = now();
                        match forge.branch_head(&repo, &branch).await {
                            Ok(sha) => {
                                let read = Event::BranchRead {
                                    repo,
                                    branch,
                                    sha,
                                    as_of,
                                };
                                let _ = inputs.send(Input::Event(read)).await;
                            }
                            Err(e) => forge_failed(&shared, "branch", &e),
                        }
                    });
                }
                Action::FetchPr { pr } => {
                    let (forge, inputs, shared) = self.spawn_parts();
                    tokio::spawn(async move {
                        let event = match forge.get_pr(&pr).await {
                            Ok(Some(PrFetch::Open(snapshot))) => Event::PrUpdated(snapshot),
                            Ok(Some(PrFetch::Closed { merge_sha: None })) => {
                                Event::PrClosedUnmerged(pr)
                            }
                            Ok(Some(PrFetch::Closed { .. })) | Ok(None) => Event::PrClosed(pr),
                            Err(e) => return forge_failed(&shared, "pull_request", &e),
                        };
                        let _ = inputs.send(Input::Event(event)).await;
                    });
                }
                Action::BuildCar {
                    repo,
                    branch,
                    car,
                    staging_ref,
                    parent,
                    pr,
                    head,
                    message,
                } => {
                    let method = self
                        .config
                        .repo(&repo)
                        .map(|r| r.merge_method)
                        .unwrap_or_default();
                    let (forge, inputs, shared) = self.spawn_parts();
                    tokio::spawn(async move {
                        let event = match build_car(
                            &*forge,
                            &repo,
                            &staging_ref,
                            &parent,
                            pr,
                            &head,
                            method,
                            &message,
                        )
                        .await
                        {
                            Ok(CarStep::Merged { sha } | CarStep::NothingToMerge { sha }) => {
                                Event::CarBuilt {
                                    repo,
                                    branch,
                                    car,
                                    parent,
                                    sha,
                                }
                            }
                            Ok(CarStep::Conflict { message }) => Event::CarConflict {
                                repo,
                                branch,
                                car,
                                message,
                            },
                            Err(e) => {
                                forge_failed(&shared, "car", &e);
                                // Built again, after a pause.
                                tokio::time::sleep(TRAIN_RETRY).await;
                                Event::CarBuildFailed { repo, branch, car }
                            }
                        };
                        let _ = inputs.send(Input::Event(event)).await;
                    });
                }
                Action::Land {
                    repo,
                    branch,
                    from,
                    to,
                    through,
                    cars,
                    description,
                    link,
                } => {
                    info!(%repo, %branch, %from, %to, "landing");
                    let prs: Vec<u64> = self
                        .shared
                        .state
                        .read()
                        .ok()
                        .and_then(|s| {
                            let train = s.repo(&repo)?.trains.get(&branch)?;
                            let last = train.cars.iter().position(|c| c.id == through)?;
                            Some(train.cars[..=last].iter().map(|c| c.pr.number).collect())
                        })
                        .unwrap_or_default();
                    let summary = crate::core::text::car_summary(&description, &prs);
                    let status = CommitStatus {
                        state: crate::core::CommitState::Success,
                        description,
                        target_url: Some(self.adapters.results.link(&link)),
                        summary,
                    };
                    let (forge, inputs, shared) = self.spawn_parts();
                    tokio::spawn(async move {
                        let event = land(&*forge, &shared, &repo, &branch, &cars, &status).await;
                        let _ = inputs.send(Input::Event(event)).await;
                    });
                }
                Action::ClosePr {
                    pr,
                    head,
                    landed,
                    branch,
                    method,
                    car,
                    link,
                } => {
                    let link = self.adapters.results.link(&link);
                    let comment =
                        crate::core::text::landed_comment(&branch, &landed, method, &car, &link);
                    let (forge, _, shared) = self.spawn_parts();
                    tokio::spawn(async move {
                        close_landed_pr(&*forge, &shared, &pr, &head, &landed, &comment).await;
                    });
                }
                Action::CheckWriteAccess {
                    repo,
                    user,
                    comment,
                } => {
                    let (forge, inputs, shared) = self.spawn_parts();
                    tokio::spawn(async move {
                        // The forge call retries; an error is said to the
                        // commenter (the core answers "comment again").
                        let can_write = match forge.user_can_write(&repo, &user).await {
                            Ok(can) => Some(can),
                            Err(e) => {
                                forge_failed(&shared, "reading a commenter's access", &e);
                                None
                            }
                        };
                        let answer = Event::WriteAccess {
                            repo,
                            comment,
                            can_write,
                        };
                        let _ = inputs.send(Input::Event(answer)).await;
                    });
                }
                Action::React {
                    repo,
                    comment,
                    content,
                } => {
                    let (forge, _, shared) = self.spawn_parts();
                    tokio::spawn(async move {
                        if let Err(e) = forge.react(&repo, comment, &content).await {
                            forge_failed(&shared, "reacting to a comment", &e);
                        }
                    });
                }
                Action::Answer { pr, comment, body } => {
                    let (forge, _, shared) = self.spawn_parts();
                    tokio::spawn(async move {
                        if let Err(e) = forge.answer(&pr, comment, &body).await {
                            forge_failed(&shared, "answering a comment", &e);
                        }
                    });
                }
                Action::Reply { request, answer } => {
                    if let Some(reply) = self.replies.remove(&request) {
                        let _ = reply.send(answer);
                    }
                }
                Action::WakeAt { at: wake } => self.wake_at(wake),
                Action::Drift { repo, differences } => {
                    info!(%repo, differences, "reconcile found differences no webhook reported");
                    self.shared
                        .metrics
                        .reconcile_drift
                        .inc_by(u64::from(differences));
                }
                Action::Record(entry) => {
                    if let HistoryEntry::BuildFinished {
                        build,
                        report,
                        current,
                        ..
                    } = &entry
                    {
                        info!(%build, outcome = ?report.outcome, current, "build finished");
                    }
                    if let Some(kind) = train_decision(&entry) {
                        Metrics::count(&self.shared.metrics.train_decisions, &kind);
                    }
                    if let Err(e) = self.keeper.append_history(seq, &entry) {
                        warn!(error = %e, "cannot write history");
                    }
                    if let Ok(mut h) = self.shared.history.write() {
                        h.push(entry);
                    }
                }
            }
        }
    }

    fn spawn_parts(&self) -> (Arc<dyn Forge>, Inlet, Arc<Shared>) {
        (
            self.adapters.forge.clone(),
            self.shared.inputs.clone(),
            self.shared.clone(),
        )
    }

    fn start_build(&self, build: crate::core::BuildId, candidate: Candidate) {
        let Some(repo) = self.config.repo(&candidate.repo) else {
            warn!(repo = %candidate.repo, "build for an unconfigured repository");
            return;
        };
        let Some(key) = candidate.results_key(&build) else {
            return;
        };
        info!(%build, repo = %candidate.repo, pr = key.pr, head = %key.head,
              target = %candidate.target_sha, "starting build");
        let spec = JobSpec {
            build: build.clone(),
            candidate: candidate.clone(),
            clone_url: self.config.clone_url(repo),
            command: repo.test_command.clone(),
            timeout: repo.job_timeout(),
            clone_token: None,
            // Only an App configured for it gives one. Without it a private
            // repository's fetch fails, an infrastructure error the core
            // retries.
            mint_token: Some(clone_token_mint(
                self.adapters.forge.clone(),
                candidate.repo.clone(),
                build.clone(),
            )),
        };
        let results = self.adapters.results.clone();
        let executor = self.adapters.executor.clone();
        let done = self.jobs_tx.clone();
        let starting = self.starting.clone();
        starting.begin(&build);
        // The "running" page first, so the pending status's link works.
        tokio::spawn(async move {
            if let Err(e) = results.started(&key, &candidate).await {
                warn!(error = %e, "could not write the running page");
            }
            if !starting.start_unless_cancelled(&build, || executor.start(spec, done)) {
                info!(%build, "cancelled before it started");
            }
        });
    }

    fn on_job_result(&self, job: JobResult) {
        Metrics::count(
            &self.shared.metrics.builds_finished,
            match job.report.outcome {
                crate::core::Outcome::Passed => "passed",
                crate::core::Outcome::Failed => "failed",
                crate::core::Outcome::Error => "error",
            },
        );
        let results = self.adapters.results.clone();
        let inputs = self.shared.inputs.clone();
        // Results are stored before the core hears of the build, so the
        // status it sets links to a page that exists.
        tokio::spawn(async move {
            if let Some(key) = job.candidate.results_key(&job.build) {
                let record = BuildRecord {
                    key,
                    candidate: job.candidate.clone(),
                    report: job.report.clone(),
                };
                if let Err(e) = results.finished(&record, &job.log).await {
                    warn!(build = %job.build, error = %e, "could not store results");
                }
            }
            let _ = inputs
                .send(Input::Event(Event::JobFinished {
                    build: job.build,
                    candidate: job.candidate,
                    report: job.report,
                }))
                .await;
        });
    }

    /// A `Tick` at `at` (the core's timers between the periodic ticks).
    fn wake_at(&mut self, at: Timestamp) {
        let now = now().0;
        self.wakes.retain(|&t| t > now);
        if !self.wakes.insert(at.0) {
            return;
        }
        let inputs = self.shared.inputs.clone();
        // A little late rather than early: the core compares with the time
        // the tick is journaled at.
        let delay = Duration::from_millis(at.0.saturating_sub(now) + 5);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inputs.try_send(Input::Event(Event::Tick));
        });
    }

    /// The App's access changed: forget what the forge remembers of those
    /// repositories' installations, and re-read the ones it can now reach.
    fn on_access(&self, granted: Vec<RepoName>, revoked: Vec<RepoName>) {
        for repo in &revoked {
            warn!(%repo, "the GitHub App lost access to this repository: sluice cannot read or write it until the App is given it again");
            self.adapters.forge.forget_installation(repo);
        }
        for repo in granted {
            info!(%repo, "the GitHub App was given this repository: re-reading it now");
            self.adapters.forge.forget_installation(&repo);
            self.start_reconcile_of(repo);
        }
    }

    /// Re-reads every repository from GitHub, in the background.
    fn start_reconcile(&self) {
        for repo in &self.config.repos {
            self.start_reconcile_of(repo.repo());
        }
    }

    /// Re-reads `name` from GitHub in the background, unless a re-read of
    /// it is already running.
    fn start_reconcile_of(&self, name: RepoName) {
        {
            let mut running = self
                .reconcile_running
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !running.insert(name.clone()) {
                return; // the previous re-read of this repository is still going
            }
        }
        let (forge, inputs, shared) = self.spawn_parts();
        let running = self.reconcile_running.clone();
        let memory = self.reconcile_memory.clone();
        tokio::spawn(async move {
            if let Err(e) = reconcile(&*forge, &name, &inputs, &memory).await {
                forge_failed(&shared, "reconcile", &e);
            }
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
        });
    }
}

/// How long a train's GitHub call that failed waits before it is made
/// again: a car's build (an error, not a conflict), the read that settles a
/// landing after a restart.
const TRAIN_RETRY: Duration = Duration::from_secs(5);

/// Builds one car from scratch: the staging ref at `parent`, PR `pr` at
/// `head` added to it.
#[allow(clippy::too_many_arguments)]
async fn build_car(
    forge: &dyn Forge,
    repo: &RepoName,
    staging_ref: &str,
    parent: &crate::core::Sha,
    pr: u64,
    head: &crate::core::Sha,
    method: crate::core::MergeMethod,
    message: &str,
) -> Result<CarStep, crate::forge::ForgeError> {
    forge.put_staging_ref(repo, staging_ref, parent).await?;
    forge
        .merge_into_staging(repo, staging_ref, pr, head, method, message)
        .await
}

/// How often closing a landed PR is tried (each attempt is safe to repeat).
const CLOSE_ATTEMPTS: u32 = 3;

/// Closes a PR whose car landed squashed or rebased and comments on it,
/// trying again after a pause if GitHub fails.
async fn close_landed_pr(
    forge: &dyn Forge,
    shared: &Shared,
    pr: &crate::core::PrKey,
    head: &crate::core::Sha,
    landed: &crate::core::Sha,
    comment: &str,
) {
    for attempt in 1..=CLOSE_ATTEMPTS {
        match forge.close_landed_pr(pr, head, landed, comment).await {
            Ok(PrClose::HeadMoved { head: now }) => {
                info!(%pr, landed_head = %head, head = %now,
                      "landed, but pushed to meanwhile: left open");
                return;
            }
            Ok(done) => {
                info!(%pr, %landed, closed = ?done, "closed the landed PR");
                return;
            }
            Err(e) => {
                forge_failed(shared, "close_pr", &e);
                if attempt < CLOSE_ATTEMPTS {
                    tokio::time::sleep(TRAIN_RETRY * attempt).await;
                }
            }
        }
    }
    warn!(%pr, %landed, "could not close the landed PR; it stays open on GitHub");
}

/// After a restart: what became of the landing the killed process asked
/// for, read from GitHub (asked until it answers: the train waits on it).
async fn settle_interrupted_landing(
    forge: &dyn Forge,
    shared: &Shared,
    repo: RepoName,
    branch: String,
    landing: Landing,
) -> Vec<Event> {
    loop {
        match landing_fate(forge, &repo, &branch, &landing).await {
            Ok(LandingFate::Landed { moved_on }) => {
                // What the killed process would have done next.
                let landed: Vec<u64> = landing.cars.iter().map(|c| c.id).collect();
                delete_landed_staging_refs(forge, shared, &repo, &branch, &landed, landing.through)
                    .await;
                let mut events = vec![Event::Landed {
                    repo: repo.clone(),
                    branch: branch.clone(),
                    sha: landing.to.clone(),
                }];
                // A push on top of it since: the cars are built on that.
                if let Some(head) = moved_on {
                    events.push(Event::BranchMoved {
                        repo,
                        branch,
                        sha: head,
                        before: Some(landing.to),
                    });
                }
                return events;
            }
            Ok(LandingFate::NeverMade) => return vec![Event::LandingLost { repo, branch }],
            Ok(LandingFate::TargetMoved) => {
                return vec![Event::LandRefused {
                    moved: true,
                    repo,
                    branch,
                    reason: crate::core::text::interrupted_merge(),
                }];
            }
            Err(e) => forge_failed(shared, "landing_recovery", &e),
        }
        tokio::time::sleep(TRAIN_RETRY).await;
    }
}

enum LandingFate {
    /// The target is at the car, or holds it: `moved_on` is the push on
    /// top of it made since.
    Landed { moved_on: Option<crate::core::Sha> },
    /// The target is still where the car was built: the update was never
    /// made.
    NeverMade,
    /// The target moved elsewhere: nothing landed.
    TargetMoved,
}

async fn landing_fate(
    forge: &dyn Forge,
    repo: &RepoName,
    branch: &str,
    landing: &Landing,
) -> Result<LandingFate, crate::forge::ForgeError> {
    let Some(head) = forge.branch_head(repo, branch).await? else {
        return Ok(LandingFate::TargetMoved);
    };
    if head == landing.from {
        return Ok(LandingFate::NeverMade);
    }
    if head == landing.to {
        return Ok(LandingFate::Landed { moved_on: None });
    }
    match forge.is_ancestor(repo, &landing.to, &head).await {
        Ok(true) => Ok(LandingFate::Landed {
            moved_on: Some(head),
        }),
        Ok(false) => Ok(LandingFate::TargetMoved),
        // A forge that cannot tell: as if the target moved instead.
        Err(crate::forge::ForgeError::Unsupported { .. }) => Ok(LandingFate::TargetMoved),
        Err(e) => Err(e),
    }
}

/// Lands a car: its success status first (a required check must see it),
/// then the non-forced move of the target; then the staging refs of the
/// cars up to it are deleted.
async fn land(
    forge: &dyn Forge,
    shared: &Shared,
    repo: &RepoName,
    branch: &str,
    cars: &[(u64, crate::core::Sha)],
    status: &CommitStatus,
) -> Event {
    let Some((through, to)) = cars.last() else {
        return Event::LandRefused {
            repo: repo.clone(),
            branch: branch.to_string(),
            moved: false,
            reason: "a landing without cars".into(),
        };
    };
    let through = *through;
    // Checks the branch requires besides sluice's must have passed on the
    // car: GitHub would refuse the move, and sluice can say what is missing.
    match other_required_checks(forge, shared, repo, branch, cars).await {
        Gate::Open => {}
        Gate::Waiting(pending) => {
            return Event::LandWaiting {
                repo: repo.clone(),
                branch: branch.to_string(),
                pending,
            };
        }
        Gate::Failed(car, report) => {
            return Event::CarCheckFailed {
                repo: repo.clone(),
                branch: branch.to_string(),
                car,
                context: report.context,
                description: report.description,
            };
        }
    }
    let refused = |moved: bool, reason: String| Event::LandRefused {
        repo: repo.clone(),
        branch: branch.to_string(),
        moved,
        reason,
    };
    // No target moves to a commit without its success status, protected
    // branch or not: without it, nothing lands (retried like a refusal).
    if let Err(e) = forge.set_status(repo, to, status).await {
        forge_failed(shared, "status", &e);
        return refused(false, crate::core::text::car_status_not_set(&e.to_string()));
    }
    let landed = Event::Landed {
        repo: repo.clone(),
        branch: branch.to_string(),
        sha: to.clone(),
    };
    let event = match forge.fast_forward(repo, branch, to).await {
        RefUpdate::Moved => landed,
        RefUpdate::NotFastForward => refused(true, "the target moved".into()),
        RefUpdate::Refused { reason } => refused(false, reason),
        // Whether the update took effect is not known (its answer was lost,
        // it timed out): the branch says.
        RefUpdate::Failed { reason } => match forge.branch_head(repo, branch).await {
            Ok(Some(head)) if head == *to => landed,
            _ => refused(false, reason),
        },
    };
    if matches!(event, Event::Landed { .. }) {
        let landed: Vec<u64> = cars.iter().map(|(id, _)| *id).collect();
        delete_landed_staging_refs(forge, shared, repo, branch, &landed, through).await;
    }
    event
}

/// Deletes the staging refs of the cars up to `through`, which landed (car
/// ids grow along a train, so none of them is in it any more). When every
/// car since the last clean-up is among `landed`, their refs are deleted by
/// name; otherwise (cars were rebuilt, leaving refs of their old ids, or
/// this is the first landing since the start) the staging refs are listed
/// and every one up to `through` goes: one call fewer per landing in the
/// common case.
async fn delete_landed_staging_refs(
    forge: &dyn Forge,
    shared: &Shared,
    repo: &RepoName,
    branch: &str,
    landed: &[u64],
    through: u64,
) {
    let prefix = format!("{}{branch}/", crate::core::STAGING_PREFIX);
    let key = (repo.clone(), branch.to_string());
    let clean = lock_clean(shared).get(&key).copied();
    let only_landed =
        clean.is_some_and(|clean| (clean + 1..=through).all(|id| landed.contains(&id)));
    let names: Vec<String> = if only_landed {
        landed.iter().map(|id| format!("{prefix}{id}")).collect()
    } else {
        match forge.staging_refs(repo).await {
            Ok(refs) => refs
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| {
                    name.strip_prefix(&prefix)
                        .and_then(|id| id.parse::<u64>().ok())
                        .is_some_and(|id| id <= through)
                })
                .collect(),
            Err(e) => return forge_failed(shared, "staging_refs", &e),
        }
    };
    let mut all_gone = true;
    for name in names {
        if let Err(e) = forge.delete_staging_ref(repo, &name).await {
            forge_failed(shared, "staging_ref", &e);
            all_gone = false;
        }
    }
    let mut clean = lock_clean(shared);
    if all_gone {
        clean.insert(key, through);
    } else {
        clean.remove(&key);
    }
}

fn lock_clean(
    shared: &Shared,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<(RepoName, String), u64>> {
    shared
        .staging_clean
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a car may land as far as the branch's other required checks go.
enum Gate {
    Open,
    /// These have not passed yet on the last car (not reported, or still
    /// running).
    Waiting(Vec<String>),
    /// It failed on this car, and passed on every car ahead of it.
    Failed(u64, crate::forge::CheckReport),
}

/// Reads the last car's checks; only if they did not all pass, the cars
/// from the front, to blame a failure on the first car it fails on (a car
/// holds every PR ahead of it).
async fn other_required_checks(
    forge: &dyn Forge,
    shared: &Shared,
    repo: &RepoName,
    branch: &str,
    cars: &[(u64, crate::core::Sha)],
) -> Gate {
    use crate::forge::ForgeError;
    let own = forge.status_context().to_string();
    let required: Vec<String> = match forge.required_checks(repo, branch).await {
        Ok(all) => all.into_iter().filter(|c| *c != own).collect(),
        Err(ForgeError::Unsupported { .. }) => return Gate::Open,
        // Not known now: GitHub decides, and a refusal says why.
        Err(e) => {
            forge_failed(shared, "required_checks", &e);
            return Gate::Open;
        }
    };
    let Some((_, last)) = cars.last() else {
        return Gate::Open;
    };
    if required.is_empty() {
        return Gate::Open;
    }
    let (pending, failed) = match car_checks(forge, repo, last, &required).await {
        Ok(found) => found,
        Err(e) => {
            forge_failed(shared, "commit_checks", &e);
            return Gate::Open;
        }
    };
    if pending.is_empty() && failed.is_none() {
        return Gate::Open;
    }
    for (id, sha) in cars {
        let found = if sha == last {
            Ok((pending.clone(), failed.clone()))
        } else {
            car_checks(forge, repo, sha, &required).await
        };
        match found {
            Ok((_, Some(report))) => return Gate::Failed(*id, report),
            Ok((ahead_pending, None)) if ahead_pending.is_empty() => continue,
            // Not known on this car yet: a failure behind it may be its.
            Ok(_) => break,
            Err(e) => {
                forge_failed(shared, "commit_checks", &e);
                break;
            }
        }
    }
    let mut waiting = pending;
    if let Some(report) = failed {
        waiting.push(report.context);
    }
    Gate::Waiting(waiting)
}

/// The required checks not passed yet on `sha`, and the first that failed.
async fn car_checks(
    forge: &dyn Forge,
    repo: &RepoName,
    sha: &crate::core::Sha,
    required: &[String],
) -> Result<(Vec<String>, Option<crate::forge::CheckReport>), crate::forge::ForgeError> {
    use crate::forge::CheckState;
    let reports = forge.commit_checks(repo, sha).await?;
    let mut pending = Vec::new();
    for context in required {
        match reports.iter().find(|r| r.context == *context) {
            Some(r) if r.state == CheckState::Passed => {}
            Some(r) if r.state == CheckState::Failed => return Ok((pending, Some(r.clone()))),
            _ => pending.push(context.clone()),
        }
    }
    Ok((pending, None))
}

pub(crate) fn forge_failed(shared: &Shared, what: &str, error: &crate::forge::ForgeError) {
    warn!(%error, "GitHub call failed: {what}");
    Metrics::count(&shared.metrics.forge_errors, what);
}

fn event_kind(event: &Event) -> &'static str {
    match event {
        // Every PR snapshot a delivery or a read brought, opened or not.
        Event::PrUpdated(_) | Event::PrOpened(_) => "pr_updated",
        Event::PrReopened(_) => "pr_reopened",
        Event::PrClosed(_) => "pr_closed",
        Event::PrClosedUnmerged(_) => "pr_closed_unmerged",
        Event::ReviewActivity(_) => "review_activity",
        Event::Reviews { .. } => "reviews",
        Event::BranchMoved { .. } => "branch_moved",
        Event::BranchRead { .. } => "branch_read",
        Event::BranchDeleted { .. } => "branch_deleted",
        Event::Reconciled { .. } => "reconciled",
        Event::JobFinished { .. } => "job_finished",
        Event::MergeFinished { .. } => "merge_finished",
        Event::Retest { .. } => "retest",
        Event::TryMerge { .. } => "try_merge",
        Event::Commented { .. } => "commented",
        Event::WriteAccess { .. } => "write_access",
        Event::Rerun { .. } => "rerun",
        Event::BuildsLost { .. } => "builds_lost",
        Event::CarBuilt { .. } => "car_built",
        Event::CarConflict { .. } => "car_conflict",
        Event::CarBuildFailed { .. } => "car_build_failed",
        Event::Landed { .. } => "landed",
        Event::LandRefused { .. } => "land_refused",
        Event::LandWaiting { .. } => "land_waiting",
        Event::SetBranchMode { .. } => "set_branch_mode",
        Event::CarCheckFailed { .. } => "car_check_failed",
        Event::LandingLost { .. } => "landing_lost",
        Event::Tick => "tick",
        Event::Restarted => "restarted",
    }
}

/// The `sluice_train_decisions_total` kind of a history entry, if it is
/// one: `ejected_<kind>`, `suspected_flake` or `retried_<kind>`.
fn train_decision(entry: &HistoryEntry) -> Option<String> {
    // The kinds' snake_case names, as the JSON writes them.
    let name = |kind: serde_json::Result<serde_json::Value>| {
        kind.ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    match entry {
        HistoryEntry::Ejected { cause, .. } => {
            Some(format!("ejected_{}", name(serde_json::to_value(cause))))
        }
        HistoryEntry::SuspectedFlake { .. } => Some("suspected_flake".into()),
        HistoryEntry::Retried { cause, .. } => {
            Some(format!("retried_{}", name(serde_json::to_value(cause))))
        }
        _ => None,
    }
}

/// Asks the forge for a clone token for `repo` when the executor calls.
fn clone_token_mint(
    forge: Arc<dyn Forge>,
    repo: RepoName,
    build: crate::core::BuildId,
) -> TokenMint {
    TokenMint(Arc::new(move || {
        let (forge, repo, build) = (forge.clone(), repo.clone(), build.clone());
        Box::pin(async move {
            match forge.clone_token(&repo).await {
                Ok(token) => token.map(CloneToken::new),
                Err(e) => {
                    warn!(%build, error = %e, "no clone token for the job: it fetches without one");
                    None
                }
            }
        })
    }))
}

/// A lock whose holder panicked is still good here (plain maps).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::Starting;
    use crate::core::BuildId;

    /// A cancel that arrives while the build's running page is written (the
    /// executor does not know the build yet): the build never starts.
    #[test]
    fn a_build_cancelled_before_its_start_never_starts() {
        let starting = Starting::default();
        let build = BuildId::parse("b-1").unwrap();
        starting.begin(&build);
        starting.cancel(&build);
        let mut started = false;
        assert!(!starting.start_unless_cancelled(&build, || started = true));
        assert!(!started);
    }

    /// Not cancelled: it starts, once; a cancel after that is the
    /// executor's, and leaves nothing behind here.
    #[test]
    fn a_build_not_cancelled_starts_and_a_later_cancel_is_the_executors() {
        let starting = Starting::default();
        let build = BuildId::parse("b-2").unwrap();
        starting.begin(&build);
        let mut started = 0;
        assert!(starting.start_unless_cancelled(&build, || started += 1));
        assert_eq!(started, 1);
        starting.cancel(&build);
        let other = BuildId::parse("b-3").unwrap();
        starting.cancel(&other);
        assert!(super::lock(&starting.0).is_empty());
    }
}
