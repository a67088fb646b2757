//! Local executor: runs each build as processes on this machine, in a fresh
//! workspace under `work_dir` that is removed afterwards.
//!
//! A job fetches the candidate's commits, checks out the PR head exactly,
//! merges the target into it and runs the test command. Every process runs
//! in its own process group with an environment built from an allow-list
//! (nothing of sluice's own environment, such as its tokens, reaches it), and
//! refs and shas travel only as argv or environment values, never through a
//! shell. On the job's timeout, or when it is cancelled, the whole process
//! group is killed, so grandchildren die too.

use super::{CloneToken, Executor, JobResult, JobSpec, LogPart, LogRead};
use crate::config::ExecutorConfig;
use crate::core::{BuildId, Candidate, JobReport, Outcome, Sha, Timestamp};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Semaphore, watch};

/// Default cap on a job's log; output beyond it is dropped with a note.
pub const DEFAULT_LOG_CAP: usize = 50 * 1024 * 1024;

/// How long the output pipe may stay open after a command's process group
/// was killed (a process that escaped the group may still hold it).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// PATH for jobs when sluice itself has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs jobs as local processes, at most `max_parallel` at once.
///
/// `start` spawns a tokio task, so it must be called inside a tokio runtime.
pub struct LocalExecutor {
    shared: Arc<Shared>,
}

struct Shared {
    work_dir: PathBuf,
    git_timeout: Duration,
    log_cap: usize,
    permits: Arc<Semaphore>,
    jobs: Mutex<HashMap<BuildId, Running>>,
    next_generation: AtomicU64,
    /// Whom jobs run as, or why the configured user or uids cannot be used.
    owners: Result<Owners, String>,
}

/// Whom a job's processes run as; the job's workspace is theirs.
enum Owners {
    /// sluice's own user.
    Sluice,
    /// `executor.run_as`: this uid and gid for every job.
    User(u32, u32),
    /// `executor.job_uids`: a uid of its own (and the same gid) for each
    /// running job, taken from this pool and given back when the job ends.
    PerJob(Arc<Mutex<Vec<u32>>>),
}

impl Owners {
    /// Whom jobs run as, for the log.
    fn describe(&self) -> String {
        match self {
            Owners::Sluice => "as sluice's own user (see executor.run_as, job_uids)".into(),
            Owners::User(uid, _) => format!("as uid {uid} (executor.run_as)"),
            Owners::PerJob(pool) => format!(
                "each as a uid of its own ({} in executor.job_uids)",
                lock(pool).len()
            ),
        }
    }
}

/// A uid lent to one running job. Given back (on drop) only after every
/// process left with it is killed, so the next job to get it meets none.
struct UidLease {
    uid: u32,
    pool: Arc<Mutex<Vec<u32>>>,
    /// Its processes were killed and none can have started since.
    cleared: bool,
}

impl UidLease {
    /// Kills every process left running with the uid. Blocking.
    fn clear(&mut self) {
        let killed = kill_processes_of(|uid| uid == self.uid);
        if killed > 0 {
            tracing::info!(uid = self.uid, killed, "killed what a job left running");
        }
        self.cleared = true;
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if !self.cleared {
            self.clear();
        }
        lock(&self.pool).push(self.uid);
    }
}

/// SIGKILLs every process whose real or effective uid is one of `uids`, in
/// passes until none is left (a process may fork while it is being
/// killed), and returns how many it killed. Blocking: reads `/proc`.
fn kill_processes_of(uids: impl Fn(u32) -> bool) -> usize {
    let mut killed = 0;
    for _ in 0..50 {
        let found: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| runs_as(*pid, &uids))
            .collect();
        if found.is_empty() {
            break;
        }
        for pid in found {
            if nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}

/// Whether process `pid` is alive (not a zombie) with a real or effective
/// uid among `uids`.
fn runs_as(pid: i32, uids: &impl Fn(u32) -> bool) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let zombie = field("State:").is_some_and(|s| s.starts_with('Z'));
    !zombie
        && field("Uid:")
            .unwrap_or("")
            .split_whitespace()
            .take(2)
            .filter_map(|u| u.parse().ok())
            .any(uids)
}

/// The uids of `executor.job_uids` (`"FIRST-LAST"`): enough for
/// `max_parallel` jobs at once, none of them a user's (a job could then
/// reach that user's files), and only when sluice runs as root.
pub fn job_uid_range(range: &str, max_parallel: usize) -> Result<Vec<u32>, String> {
    let parsed = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)));
    let Some((first, last)) = parsed.filter(|(a, b)| *a > 0 && a <= b) else {
        return Err(format!(
            "{range:?} is not a range of uids \"FIRST-LAST\" with 0 < FIRST <= LAST"
        ));
    };
    let count = (last - first) as usize + 1;
    if count < max_parallel.max(1) {
        return Err(format!(
            "{count} uids for max_parallel = {max_parallel}: each running job needs its own"
        ));
    }
    if count > 65_536 {
        return Err(format!("{count} uids: at most 65536"));
    }
    if let Some(user) = (first..=last)
        .find_map(|uid| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()?)
    {
        return Err(format!(
            "uid {} belongs to user {:?}: jobs must get uids nobody holds",
            user.uid, user.name
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("running jobs as other uids needs sluice to run as root".into());
    }
    Ok((first..=last).collect())
}

/// A job that was started and has not finished: `cancel` tells it to stop.
/// `generation` tells a job apart from a later one with the same build id.
struct Running {
    generation: u64,
    cancel: watch::Sender<bool>,
    /// The job's log as it grows (the live build page reads it).
    log: Log,
}

/// The uid and gid of local user `name`, whom jobs can be run as: only
/// when sluice runs as root (switching users needs it).
pub fn job_user(name: &str) -> Result<(u32, u32), String> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("no user {name:?} on this machine"))?;
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "running jobs as {name:?} needs sluice to run as root"
        ));
    }
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

impl LocalExecutor {
    pub fn new(config: &ExecutorConfig) -> LocalExecutor {
        LocalExecutor::with_log_cap(config, DEFAULT_LOG_CAP)
    }

    /// Like [`LocalExecutor::new`], capping each job's log at `log_cap`
    /// bytes.
    pub fn with_log_cap(config: &ExecutorConfig, log_cap: usize) -> LocalExecutor {
        // Jobs get HOME and TMPDIR inside their workspace: make it absolute
        // so those stay valid whatever directory a job runs in.
        let work_dir =
            std::path::absolute(&config.work_dir).unwrap_or_else(|_| config.work_dir.clone());
        LocalExecutor {
            shared: Arc::new(Shared {
                work_dir,
                git_timeout: Duration::from_secs(config.git_timeout_secs.max(1)),
                log_cap,
                permits: Arc::new(Semaphore::new(config.max_parallel.max(1))),
                jobs: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
                owners: match (&config.run_as, &config.job_uids) {
                    (Some(user), _) => job_user(user).map(|(uid, gid)| Owners::User(uid, gid)),
                    (None, Some(range)) => job_uid_range(range, config.max_parallel)
                        .map(|uids| Owners::PerJob(Arc::new(Mutex::new(uids)))),
                    (None, None) => Ok(Owners::Sluice),
                },
            }),
        }
    }

    /// Kills the process groups of jobs a previous sluice process left
    /// behind (it was killed before it could) and removes their workspaces.
    /// Returns how many workspaces were cleaned.
    pub fn clean_leftovers(&self) -> usize {
        // With a uid per job, anything still running as one of them is a
        // previous run's leftover (maybe one that left its process group):
        // it must be gone before the uid is lent to a new job.
        if let Ok(Owners::PerJob(pool)) = &self.shared.owners {
            let uids = lock(pool).clone();
            let killed = kill_processes_of(|uid| uids.contains(&uid));
            if killed > 0 {
                tracing::info!(killed, "killed processes left running as job uids");
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.shared.work_dir) else {
            return 0;
        };
        let mut cleaned = 0;
        for entry in entries.flatten() {
            let workspace = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Some(pgid) = std::fs::read_to_string(workspace.join(PGID_FILE))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|id| *id > 1)
            {
                // Only if that group's leader still works in this workspace:
                // a recycled id belongs to someone else.
                let cwd = std::fs::read_link(format!("/proc/{pgid}/cwd")).ok();
                if cwd.is_some_and(|c| c.starts_with(&workspace)) {
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
            }
            make_writable(&workspace);
            if std::fs::remove_dir_all(&workspace).is_ok() {
                cleaned += 1;
            }
        }
        cleaned
    }

    /// Whom jobs run as, in words for the log.
    pub fn runs_as(&self) -> String {
        match &self.shared.owners {
            Ok(owners) => owners.describe(),
            Err(e) => format!("nowhere: {e}"),
        }
    }

    /// Builds whose jobs are queued or running.
    pub fn running(&self) -> Vec<BuildId> {
        lock(&self.shared.jobs).keys().cloned().collect()
    }
}

/// The file in a workspace holding its running command's process group.
const PGID_FILE: &str = "pgid";

impl Executor for LocalExecutor {
    /// Local jobs die with the sluice process that ran them (their output
    /// went to it), so after a restart every build is lost: leftovers are
    /// killed and all are re-queued.
    fn recover(
        &self,
        running: Vec<(BuildId, crate::core::Candidate)>,
        _done: UnboundedSender<JobResult>,
    ) -> futures::future::BoxFuture<'_, Vec<BuildId>> {
        Box::pin(async move {
            let cleaned = self.clean_leftovers();
            if cleaned > 0 {
                tracing::info!(cleaned, "removed workspaces left by a previous run");
            }
            running.into_iter().map(|(build, _)| build).collect()
        })
    }

    fn start(&self, job: JobSpec, done: UnboundedSender<JobResult>) {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let generation = self.shared.next_generation.fetch_add(1, Ordering::Relaxed);
        let build = job.build.clone();
        let log = Log::new(self.shared.log_cap);
        let replaced = lock(&self.shared.jobs).insert(
            build.clone(),
            Running {
                generation,
                cancel: cancel_tx,
                log: log.clone(),
            },
        );
        if let Some(old) = replaced {
            tracing::warn!(%build, "build started twice; cancelling the earlier job");
            let _ = old.cancel.send(true);
        }
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let candidate = job.candidate.clone();
            let finished =
                unless_it_panics(shared.run(job, cancel_rx, log.clone()), &build, log).await;
            // Deciding whether to report and forgetting the job happen under
            // the same lock `cancel` takes: a job cancelled before this point
            // reports nothing, one cancelled after it is an unknown id.
            let ours = {
                let mut jobs = lock(&shared.jobs);
                let ours = jobs.get(&build).is_some_and(|r| r.generation == generation);
                if ours {
                    jobs.remove(&build);
                }
                ours
            };
            match finished {
                Some((report, log)) if ours => {
                    tracing::info!(%build, outcome = ?report.outcome, detail = %report.detail, "job finished");
                    let _ = done.send(JobResult {
                        build,
                        candidate,
                        report,
                        log,
                    });
                }
                _ => tracing::info!(%build, "job cancelled"),
            }
        });
    }

    fn log_part(
        &self,
        build: &BuildId,
        part: LogPart,
    ) -> futures::future::BoxFuture<'_, Option<LogRead>> {
        let log = lock(&self.shared.jobs).get(build).map(|r| r.log.clone());
        Box::pin(async move { log.map(|log| log.part(part)) })
    }

    fn cancel(&self, build: &BuildId) {
        if let Some(running) = lock(&self.shared.jobs).remove(build) {
            tracing::info!(%build, "cancelling job");
            let _ = running.cancel.send(true);
        }
    }
}

/// Awaits a job; a panic in sluice's own code (a bug) ends it with an
/// infrastructure error, which the core retries a bounded number of times.
/// Without this the job's task would die silently and its build stay
/// "testing" until the next restart. The job's processes are killed as the
/// panic unwinds through their guard.
async fn unless_it_panics(
    job: impl std::future::Future<Output = Option<(JobReport, Vec<u8>)>>,
    build: &BuildId,
    log: Log,
) -> Option<(JobReport, Vec<u8>)> {
    use futures::FutureExt;
    let started_at = now_ms();
    let panic = match std::panic::AssertUnwindSafe(job).catch_unwind().await {
        Ok(finished) => return finished,
        Err(panic) => panic,
    };
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    tracing::error!(%build, panic = %what, "the job's runner panicked");
    let detail = format!("sluice's job runner failed: {what}");
    log.line(&format!("sluice: {detail}"));
    Some((
        JobReport {
            outcome: Outcome::Error,
            exit_code: None,
            detail,
            started_at,
            finished_at: now_ms(),
        },
        log.finish(),
    ))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Resolves once the job is cancelled (or its cancel handle is gone).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    let _ = cancel.wait_for(|c| *c).await;
}

/// How a job ended, when it was not cancelled.
struct Verdict {
    outcome: Outcome,
    exit_code: Option<i32>,
    detail: String,
}

impl Verdict {
    fn error(detail: String) -> Verdict {
        Verdict {
            outcome: Outcome::Error,
            exit_code: None,
            detail,
        }
    }
}

/// What the steps of a job come to: `Err(None)` means cancelled.
type Step<T> = Result<T, Option<Verdict>>;

/// How one process ended.
enum Ended {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

/// A job's deadline and cancel signal, shared by its steps.
struct Limits<'a> {
    deadline: Instant,
    timeout: Duration,
    cancel: &'a mut watch::Receiver<bool>,
}

impl Shared {
    /// Runs one job; `None` if it was cancelled.
    async fn run(
        &self,
        mut job: JobSpec,
        mut cancel: watch::Receiver<bool>,
        log: Log,
    ) -> Option<(JobReport, Vec<u8>)> {
        let _permit = tokio::select! {
            permit = Arc::clone(&self.permits).acquire_owned() => permit.ok()?,
            _ = cancelled(&mut cancel) => return None,
        };
        // Only now: the wait for a runner may outlast a token.
        tokio::select! {
            () = job.mint_clone_token() => {}
            _ = cancelled(&mut cancel) => return None,
        }
        let started_at = now_ms();
        let clock = Instant::now();
        let verdict = match self.workspace(&job.build) {
            Err(e) => {
                log.line(&format!("sluice: {e}"));
                Some(Verdict::error(e))
            }
            Ok(ws) => {
                let mut limits = Limits {
                    deadline: clock + job.timeout,
                    timeout: job.timeout,
                    cancel: &mut cancel,
                };
                let verdict = match self.run_in(&job, &ws, &log, &mut limits).await {
                    Ok(v) | Err(Some(v)) => Some(v),
                    Err(None) => None,
                };
                ws.remove().await;
                verdict
            }
        };
        // A cancel that raced the end of the job still wins.
        let verdict = verdict.filter(|_| !*cancel.borrow())?;
        Some((
            JobReport {
                outcome: verdict.outcome,
                exit_code: verdict.exit_code,
                detail: verdict.detail,
                started_at,
                finished_at: now_ms(),
            },
            log.finish(),
        ))
    }

    /// A fresh workspace for `build`, owned by the user or uid the job runs
    /// as.
    fn workspace(&self, build: &BuildId) -> Result<Workspace, String> {
        // Checked when the configuration was read: not running the job is
        // the safe answer if the machine changed since.
        let owners = self.owners.as_ref().map_err(|e| format!("executor: {e}"))?;
        let (owner, lease) = match owners {
            Owners::Sluice => (None, None),
            Owners::User(uid, gid) => (Some((*uid, *gid)), None),
            Owners::PerJob(pool) => {
                // The semaphore lets at most max_parallel jobs here, and
                // the range holds at least that many uids.
                let uid = lock(pool)
                    .pop()
                    .ok_or("executor.job_uids: no uid free for this job")?;
                let lease = UidLease {
                    uid,
                    pool: Arc::clone(pool),
                    cleared: false,
                };
                (Some((uid, uid)), Some(lease))
            }
        };
        Workspace::create(&self.work_dir, build, owner, lease).map_err(|e| {
            format!(
                "cannot create a workspace under {}: {e}",
                self.work_dir.display()
            )
        })
    }

    async fn run_in(
        &self,
        job: &JobSpec,
        ws: &Workspace,
        log: &Log,
        limits: &mut Limits<'_>,
    ) -> Step<Verdict> {
        let c = &job.candidate;
        let Some(first) = c.first_pr() else {
            log.line("sluice: the candidate holds no pull request");
            return Err(Some(Verdict::error(
                "candidate holds no pull request".into(),
            )));
        };
        log.line(&format!(
            "sluice: build {} of {} PR #{}: head {} ({}), target {} at {}",
            job.build,
            c.repo,
            first.number,
            first.head_sha,
            first.head_ref,
            c.target_branch,
            c.target_sha
        ));

        self.git(
            ws,
            log,
            limits,
            "init",
            &["-c", "init.defaultBranch=sluice", "init", "-q"],
            None,
        )
        .await?;

        // A train car is the commit sluice built: fetched and checked out
        // exactly, nothing merged here.
        let mut wanted: Vec<&Sha> = match &c.car {
            Some(car) => vec![car],
            None => c.prs.iter().map(|p| &p.head_sha).collect(),
        };
        if c.car.is_none() {
            wanted.push(&c.target_sha);
        }
        log.line(&format!(
            "sluice: fetching {} from {}{}",
            wanted
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            redact_url(&job.clone_url),
            if job.clone_token.is_some() {
                " with a read-only token (for the fetch only)"
            } else {
                ""
            }
        ));
        let mut fetch: Vec<&str> = vec!["fetch", "--no-tags", "--", &job.clone_url];
        fetch.extend(wanted.iter().map(|s| s.as_str()));
        self.git(ws, log, limits, "fetch", &fetch, job.clone_token.as_ref())
            .await?;

        // One PR: check out its head exactly and merge the target into it.
        // Several (a merge train): start from the target, merge them in order.
        let (base, base_name, merges): (&Sha, String, Vec<(&Sha, String)>) = match c.prs.as_slice()
        {
            _ if c.car.is_some() => {
                let car = c.car.as_ref().expect("checked");
                (car, format!("car {car}"), Vec::new())
            }
            [only] => (
                &only.head_sha,
                format!("head {}", only.head_sha),
                vec![(
                    &c.target_sha,
                    format!("target {} {}", c.target_branch, c.target_sha),
                )],
            ),
            prs => (
                &c.target_sha,
                format!("target {} {}", c.target_branch, c.target_sha),
                prs.iter()
                    .map(|p| (&p.head_sha, format!("PR #{} head {}", p.number, p.head_sha)))
                    .collect(),
            ),
        };
        log.line(&format!("sluice: checking out {base_name}"));
        self.git(
            ws,
            log,
            limits,
            "checkout",
            &["checkout", "-q", "--detach", base.as_str()],
            None,
        )
        .await?;
        for (sha, what) in merges {
            log.line(&format!("sluice: merging {what} into {base_name}"));
            let args = [
                "-c",
                "user.name=sluice",
                "-c",
                "user.email=sluice@localhost",
                "merge",
                "--no-edit",
                sha.as_str(),
            ];
            match self
                .git_status(ws, log, limits, "merge", &args, None)
                .await?
            {
                Ok(()) => {}
                Err(code) => return Err(Some(self.merge_failed(ws, log, limits, c, code).await?)),
            }
        }

        self.run_test(job, ws, log, limits).await
    }

    /// Explains a failed merge: a conflict is the PR's fault (`Failed`);
    /// anything else is an infrastructure `Error`.
    async fn merge_failed(
        &self,
        ws: &Workspace,
        log: &Log,
        limits: &mut Limits<'_>,
        c: &Candidate,
        code: Option<i32>,
    ) -> Step<Verdict> {
        let names = Log::new(1024 * 1024);
        let args = ["diff", "--name-only", "--diff-filter=U", "-z"];
        let listed = self
            .git_status(ws, &names, limits, "diff", &args, None)
            .await?;
        let bytes = names.finish();
        let files: Vec<String> = bytes
            .split(|b| *b == 0)
            .filter(|f| !f.is_empty())
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let heads: Vec<&str> = c.prs.iter().map(|p| p.head_sha.as_str()).collect();
        if listed.is_ok() && !files.is_empty() {
            let shown = files
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = files.len().saturating_sub(20);
            let shown = if more > 0 {
                format!("{shown} and {more} more")
            } else {
                shown
            };
            log.line(&format!(
                "sluice: merge conflict: head {} does not merge with target {} at {}; conflicting files: {shown}",
                heads.join(", "),
                c.target_branch,
                c.target_sha
            ));
            Ok(Verdict {
                outcome: Outcome::Failed,
                exit_code: None,
                detail: format!("merge conflict with {} in {shown}", c.target_branch),
            })
        } else {
            let code = code.map_or_else(|| "a signal".to_string(), |c| c.to_string());
            log.line(&format!(
                "sluice: git merge failed (exit {code}) without conflicts"
            ));
            Ok(Verdict::error(format!("git merge failed (exit {code})")))
        }
    }

    /// Runs the repository's test command and judges its exit.
    async fn run_test(
        &self,
        job: &JobSpec,
        ws: &Workspace,
        log: &Log,
        limits: &mut Limits<'_>,
    ) -> Step<Verdict> {
        let Some((program, args)) = job.command.split_first() else {
            log.line("sluice: no test command configured");
            return Err(Some(Verdict::error("no test command configured".into())));
        };
        log.line(&format!("sluice: running {:?}", job.command));
        let env = job_env(job, ws);
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let began = Instant::now();
        let ended = run_process(
            OsStr::new(program),
            &args,
            ws,
            &env,
            log,
            limits.deadline,
            limits.cancel,
        )
        .await;
        let took = fmt_secs(began.elapsed());
        match ended {
            Err(e) => {
                log.line(&format!("sluice: cannot run {program:?}: {e}"));
                Err(Some(Verdict::error(format!("cannot run {program:?}: {e}"))))
            }
            Ok(Ended::Cancelled) => Err(None),
            Ok(Ended::TimedOut) => Err(Some(timed_out(log, limits.timeout))),
            Ok(Ended::Exited(status)) => Ok(match (status.code(), status.signal()) {
                (Some(0), _) => {
                    log.line(&format!("sluice: exit code 0 after {took}"));
                    Verdict {
                        outcome: Outcome::Passed,
                        exit_code: Some(0),
                        detail: "exit code 0".into(),
                    }
                }
                (Some(code), _) => {
                    log.line(&format!("sluice: exit code {code} after {took}"));
                    Verdict {
                        outcome: Outcome::Failed,
                        exit_code: Some(code),
                        detail: format!("exit code {code}"),
                    }
                }
                (None, signal) => {
                    let name = signal_name(signal);
                    log.line(&format!("sluice: killed by {name} after {took}"));
                    Verdict {
                        outcome: Outcome::Failed,
                        exit_code: None,
                        detail: format!("killed by {name}"),
                    }
                }
            }),
        }
    }

    /// Runs a git step that must succeed: any failure is an infrastructure
    /// error.
    async fn git(
        &self,
        ws: &Workspace,
        log: &Log,
        limits: &mut Limits<'_>,
        step: &str,
        args: &[&str],
        token: Option<&CloneToken>,
    ) -> Step<()> {
        match self.git_status(ws, log, limits, step, args, token).await? {
            Ok(()) => Ok(()),
            Err(code) => {
                let code = code.map_or_else(|| "a signal".to_string(), |c| c.to_string());
                log.line(&format!("sluice: git {step} failed (exit {code})"));
                Err(Some(Verdict::error(format!(
                    "git {step} failed (exit {code})"
                ))))
            }
        }
    }

    /// Runs a git command under the git timeout and the job's deadline:
    /// `Ok(Err(code))` when git ran but failed. `token` goes with git's
    /// HTTP requests through its environment (`GIT_CONFIG_*`), so it is in
    /// no argv, no file of the workspace and no later process (the test
    /// never sees it).
    async fn git_status(
        &self,
        ws: &Workspace,
        log: &Log,
        limits: &mut Limits<'_>,
        step: &str,
        args: &[&str],
        token: Option<&CloneToken>,
    ) -> Step<Result<(), Option<i32>>> {
        let git_deadline = Instant::now() + self.git_timeout;
        let deadline = git_deadline.min(limits.deadline);
        let mut env = git_env(ws);
        if let Some(token) = token {
            env.extend(
                [
                    ("GIT_CONFIG_COUNT", "1".to_string()),
                    ("GIT_CONFIG_KEY_0", "http.extraHeader".to_string()),
                    ("GIT_CONFIG_VALUE_0", token.authorization()),
                ]
                .map(|(k, v)| (k.into(), v.into())),
            );
        }
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let ended = run_process(
            OsStr::new("git"),
            &args,
            ws,
            &env,
            log,
            deadline,
            limits.cancel,
        )
        .await;
        match ended {
            Err(e) => {
                log.line(&format!("sluice: cannot run git: {e}"));
                Err(Some(Verdict::error(format!("cannot run git: {e}"))))
            }
            Ok(Ended::Cancelled) => Err(None),
            Ok(Ended::TimedOut) if git_deadline < limits.deadline => {
                let after = fmt_secs(self.git_timeout);
                log.line(&format!(
                    "sluice: git {step} timed out after {after}; killed it"
                ));
                Err(Some(Verdict::error(format!(
                    "git {step} timed out after {after}"
                ))))
            }
            Ok(Ended::TimedOut) => Err(Some(timed_out(log, limits.timeout))),
            Ok(Ended::Exited(status)) if status.success() => Ok(Ok(())),
            Ok(Ended::Exited(status)) => Ok(Err(status.code())),
        }
    }
}

fn timed_out(log: &Log, timeout: Duration) -> Verdict {
    let after = fmt_secs(timeout);
    log.line(&format!(
        "sluice: timed out after {after}; killed the job's processes"
    ));
    Verdict::error(format!("timed out after {after}"))
}

/// The test command's environment: an allow-list, nothing inherited.
fn job_env(job: &JobSpec, ws: &Workspace) -> Vec<(OsString, OsString)> {
    let mut env = base_env(ws);
    for name in ["LANG", "LC_ALL"] {
        if let Some(v) = std::env::var_os(name) {
            env.push((name.into(), v));
        }
    }
    env.push(("TMPDIR".into(), ws.tmp.clone().into()));
    env.extend(job.sluice_env().map(|(k, v)| (k.into(), v.into())));
    env
}

/// git's environment: enough to run, no credentials, no prompts, no
/// system or user configuration.
fn git_env(ws: &Workspace) -> Vec<(OsString, OsString)> {
    let mut env = base_env(ws);
    env.extend(
        [
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("LC_ALL", "C"),
        ]
        .map(|(k, v)| (k.into(), v.into())),
    );
    env
}

fn base_env(ws: &Workspace) -> Vec<(OsString, OsString)> {
    let path = std::env::var_os("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| FALLBACK_PATH.into());
    vec![
        ("PATH".into(), path),
        ("HOME".into(), ws.home.clone().into()),
    ]
}

/// Runs one process in its own process group with exactly `env`, its stdout
/// and stderr going through one pipe into `log`. On the deadline or a cancel
/// the group is killed; it is killed too when the process exits, so nothing
/// it started outlives it.
async fn run_process(
    program: &OsStr,
    args: &[&OsStr],
    ws: &Workspace,
    env: &[(OsString, OsString)],
    log: &Log,
    deadline: Instant,
    cancel: &mut watch::Receiver<bool>,
) -> io::Result<Ended> {
    if *cancel.borrow() {
        return Ok(Ended::Cancelled);
    }
    if Instant::now() >= deadline {
        return Ok(Ended::TimedOut);
    }
    let (sender, receiver) = tokio::net::unix::pipe::pipe()?;
    let mut child = {
        let out = sender.into_blocking_fd()?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&ws.repo)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        if let Some((uid, gid)) = ws.owner {
            // std drops root's supplementary groups along with the ids.
            cmd.uid(uid).gid(gid);
        }
        cmd.spawn()?
        // `cmd` drops here with our copies of the pipe's write end, so the
        // reader sees EOF once every process of the group is gone.
    };
    let mut group = GroupGuard(child.id().map(|id| Pid::from_raw(id as i32)));
    // Commands run in `<workspace>/repo`; the group id beside it lets a
    // restarted sluice kill what a killed sluice left running.
    if let Some(id) = child.id() {
        let _ = std::fs::write(ws.root.path().join(PGID_FILE), id.to_string());
    }
    let mut reader = tokio::spawn(read_into(receiver, log.clone()));
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status?),
        _ = tokio::time::sleep_until(deadline.into()) => Ended::TimedOut,
        _ = cancelled(cancel) => Ended::Cancelled,
    };
    group.kill();
    if !matches!(ended, Ended::Exited(_)) {
        child.wait().await?;
    }
    if tokio::time::timeout(DRAIN_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
        log.line("sluice: the output pipe stayed open after the command ended; stopped reading");
    }
    Ok(ended)
}

/// Kills a process group with SIGKILL when told to or when dropped (so a
/// job task that is dropped leaves nothing running).
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (the group is already gone) is the usual, fine answer.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn read_into(mut pipe: tokio::net::unix::pipe::Receiver, log: Log) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => log.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log.line(&format!("sluice: reading the command's output failed: {e}"));
                break;
            }
        }
    }
}

/// A job's log: output in arrival order, capped, with sluice's own lines.
#[derive(Clone)]
struct Log(Arc<Mutex<LogBuf>>);

struct LogBuf {
    bytes: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl Log {
    fn new(cap: usize) -> Log {
        Log(Arc::new(Mutex::new(LogBuf {
            bytes: Vec::new(),
            cap,
            dropped: 0,
        })))
    }

    /// Appends command output, up to the cap.
    fn push(&self, data: &[u8]) {
        let mut buf = lock(&self.0);
        let room = buf.cap.saturating_sub(buf.bytes.len());
        let take = room.min(data.len());
        buf.bytes.extend_from_slice(&data[..take]);
        if take < data.len() {
            if buf.dropped == 0 {
                let note = format!(
                    "\nsluice: log truncated at {} bytes; further output is dropped\n",
                    buf.cap
                );
                buf.bytes.extend_from_slice(note.as_bytes());
            }
            buf.dropped += (data.len() - take) as u64;
        }
    }

    /// Appends one of sluice's own lines (always kept, even past the cap),
    /// on a line of its own.
    fn line(&self, text: &str) {
        let mut buf = lock(&self.0);
        if buf.bytes.last().is_some_and(|b| *b != b'\n') {
            buf.bytes.push(b'\n');
        }
        buf.bytes.extend_from_slice(text.as_bytes());
        buf.bytes.push(b'\n');
    }

    /// `part` of what it holds so far (copied under the lock: only that).
    fn part(&self, part: LogPart) -> LogRead {
        part.of(&lock(&self.0).bytes)
    }

    fn finish(self) -> Vec<u8> {
        let dropped = lock(&self.0).dropped;
        if dropped > 0 {
            self.line(&format!("sluice: {dropped} bytes of output were dropped"));
        }
        std::mem::take(&mut lock(&self.0).bytes)
    }
}

/// A job's directory: `repo/` (the checkout), `home/` and `tmp/`.
struct Workspace {
    root: tempfile::TempDir,
    repo: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
    /// The uid and gid its processes run as (`executor.run_as`, or one of
    /// `executor.job_uids`).
    owner: Option<(u32, u32)>,
    /// The job's own uid, given back after the workspace is removed.
    lease: Option<UidLease>,
}

impl Workspace {
    /// `owner`: the uid and gid the job runs as, who gets the workspace.
    fn create(
        work_dir: &Path,
        build: &BuildId,
        owner: Option<(u32, u32)>,
        lease: Option<UidLease>,
    ) -> io::Result<Workspace> {
        std::fs::create_dir_all(work_dir)?;
        // Its owner's alone: another job's uid must not read or change it.
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o700);
        let root = tempfile::Builder::new()
            .prefix(&format!("{build}-"))
            .permissions(private)
            .tempdir_in(work_dir)?;
        let [repo, home, tmp] = ["repo", "home", "tmp"].map(|d| root.path().join(d));
        for dir in [&repo, &home, &tmp] {
            std::fs::create_dir(dir)?;
        }
        if let Some((uid, gid)) = owner {
            for dir in [root.path(), &repo, &home, &tmp] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
            }
        }
        Ok(Workspace {
            root,
            repo,
            home,
            tmp,
            owner,
            lease,
        })
    }

    /// Removes the workspace, making read-only directories writable first
    /// if that is what stood in the way.
    async fn remove(self) {
        let path = self.root.path().to_path_buf();
        let removed = tokio::task::spawn_blocking(move || {
            // What the job left running goes first: it could write on. The
            // uid is given back (the lease dropped) only after the removal.
            let mut lease = self.lease;
            if let Some(lease) = lease.as_mut() {
                lease.clear();
            }
            let root = self.root.keep();
            let removed = std::fs::remove_dir_all(&root).or_else(|_| {
                make_writable(&root);
                std::fs::remove_dir_all(&root)
            });
            drop(lease);
            removed
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(path = %path.display(), "cannot remove workspace: {e}"),
            Err(e) => tracing::warn!(path = %path.display(), "cannot remove workspace: {e}"),
        }
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}

/// A clone URL without any `user:password@` part, for the log.
fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some((_, host)) = authority.rsplit_once('@') {
            return format!("{scheme}://***@{host}{path}");
        }
    }
    url.to_string()
}

fn signal_name(signal: Option<i32>) -> String {
    match signal.map(Signal::try_from) {
        Some(Ok(s)) => format!("signal {} ({})", s.as_str(), s as i32),
        Some(Err(_)) => format!("signal {}", signal.unwrap_or_default()),
        None => "an unknown signal".into(),
    }
}

/// `3s`, `0.5s`, `3.2s`.
fn fmt_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn now_ms() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("https://x:tok@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(redact_url("file:///srv/r.git"), "file:///srv/r.git");
        assert_eq!(
            redact_url("https://github.com/o/r@x.git"),
            "https://github.com/o/r@x.git"
        );
    }

    #[test]
    fn log_is_capped_with_a_note_and_keeps_sluice_lines() {
        let log = Log::new(10);
        log.push(b"0123456789abcdef");
        log.line("sluice: done");
        let text = String::from_utf8(log.finish()).unwrap();
        assert!(text.starts_with("0123456789\nsluice: log truncated"));
        assert!(text.contains("sluice: done\n"));
        assert!(text.ends_with("sluice: 6 bytes of output were dropped\n"));
    }

    /// A bug in the runner panics while the job's test runs: the build
    /// still gets a result (an infrastructure error the core retries), its
    /// log says why, and the test's process group is killed.
    #[tokio::test]
    async fn a_panicking_job_runner_reports_an_error_and_kills_the_test() {
        let dir = tempfile::tempdir().unwrap();
        let build = BuildId::parse("b-panic").unwrap();
        let ws = Workspace::create(dir.path(), &build, None, None).unwrap();
        let pid_file = dir.path().join("test.pid");
        let log = Log::new(1 << 16);
        let (_keep, mut cancel) = watch::channel(false);
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let job = async {
            log.line("sluice: running the test");
            let (args, env) = ([OsStr::new("-c"), OsStr::new(&script)], base_env(&ws));
            let test = run_process(
                OsStr::new("sh"),
                &args,
                &ws,
                &env,
                &log,
                Instant::now() + Duration::from_secs(60),
                &mut cancel,
            );
            tokio::select! {
                _ = test => None,
                _ = async {
                    while !pid_file.exists() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                } => panic!("an index out of range"),
            }
        };
        let (report, log) = unless_it_panics(job, &build, log.clone())
            .await
            .expect("a panic is a result, not a cancel");
        assert_eq!(report.outcome, Outcome::Error);
        assert_eq!(
            report.detail,
            "sluice's job runner failed: an index out of range"
        );
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("sluice: running the test\n"), "{log}");
        assert!(
            log.contains("sluice: sluice's job runner failed: an index out of range"),
            "{log}"
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed, then reaped by tokio's child handling; poll briefly
        // rather than race the reaper.
        let mut alive = true;
        for _ in 0..200 {
            alive = nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "));
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive, "the test's process {pid} outlived the panic");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_secs(Duration::from_secs(600)), "600s");
        assert_eq!(fmt_secs(Duration::from_millis(3200)), "3.2s");
        assert_eq!(signal_name(Some(9)), "signal SIGKILL (9)");
    }
}
