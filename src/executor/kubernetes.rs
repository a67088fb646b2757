//! Kubernetes executor: one batch/v1 Job per build.
//!
//! The Job's init container (`prepare`, the git image) fetches the exact
//! head and target shas into an emptyDir, checks out the head and merges the
//! target; its test container runs the repository's test command there.
//! Refs and shas reach the containers only as environment values, read by a
//! constant script (see [`manifest::PREPARE_SCRIPT`]).
//!
//! One watcher on `app.kubernetes.io/managed-by=sluice` observes every Job
//! sluice started, and a periodic re-list of Jobs and pods heals a missed
//! watch event and notices pods stuck where they will never leave (image
//! pull failures, no node). The verdict is the pure
//! [`outcome::outcome`]; the log is read back through `pods/log`. Every API
//! call has a timeout.

pub mod manifest;
pub mod outcome;

use super::{Executor, JobResult, JobSpec, LogPart, LogRead};
use crate::config::{Config, KubernetesConfig};
use crate::core::{BuildId, Candidate, JobReport, Outcome, RepoName, Timestamp};
use futures::{AsyncReadExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use manifest::{JobSettings, LABEL_BUILD, MANAGED_SELECTOR};
pub use outcome::{Verdict, outcome};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedSender;

/// Attempts at deleting a cancelled Job before giving up (its deadline
/// still ends it).
const DELETE_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes API call ({what}) timed out after {}s", .after.as_secs())]
    Timeout { what: String, after: Duration },
    #[error("kubernetes API call ({what}) failed: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot configure the kubernetes client: {0}")]
    Config(String),
}

impl KubeError {
    /// The HTTP status the API server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            KubeError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// What [`KubernetesExecutor::adopt`] did with the Jobs it found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// Jobs of current pairs, now tracked: their results will be sent.
    pub adopted: Vec<(BuildId, Candidate)>,
    /// Jobs of stale pairs, deleted.
    pub deleted: Vec<BuildId>,
}

/// Runs builds as Kubernetes Jobs.
///
/// Construct it inside a tokio runtime: it spawns its watcher, which stops
/// when the executor is dropped.
pub struct KubernetesExecutor {
    shared: Arc<Shared>,
    watcher: tokio::task::JoinHandle<()>,
}

struct Shared {
    jobs: Api<Job>,
    pods: Api<Pod>,
    /// Only ever created (a build's clone token, owned by its Job).
    secrets: Api<Secret>,
    config: KubernetesConfig,
    /// Test images of the repositories that set their own.
    images: HashMap<RepoName, String>,
    call_timeout: Duration,
    tracked: Mutex<HashMap<BuildId, Tracked>>,
    next_generation: AtomicU64,
    /// The last read of each running build's log: every page and live
    /// reader within [`LOG_FRESH`] shares it, so readers cost the API
    /// nothing more than one reader.
    logs: Mutex<HashMap<BuildId, Arc<tokio::sync::Mutex<CachedLog>>>>,
}

/// A log read this recently is served again rather than read again.
const LOG_FRESH: Duration = Duration::from_millis(400);

#[derive(Default)]
struct CachedLog {
    read_at: Option<Instant>,
    bytes: Arc<Vec<u8>>,
}

/// A build whose result is still to be sent.
struct Tracked {
    generation: u64,
    candidate: Candidate,
    done: UnboundedSender<JobResult>,
    /// When sluice knew the Job to exist (created or adopted); before that
    /// a Job missing from a list is not a lost one.
    exists_since: Option<Instant>,
    /// Its result is being collected.
    finishing: bool,
    started_at: Timestamp,
}

impl KubernetesExecutor {
    /// Connects with `executor.kubernetes.kubeconfig`, or the usual
    /// inference (KUBECONFIG, ~/.kube/config, in-cluster).
    pub async fn from_config(config: &Config) -> Result<KubernetesExecutor, KubeError> {
        let k = &config.executor.kubernetes;
        let mut client_config = match &k.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?,
        };
        client_config.connect_timeout = Some(Duration::from_secs(k.api_timeout_secs.max(1)));
        let client =
            Client::try_from(client_config).map_err(|e| KubeError::Config(e.to_string()))?;
        let images = config
            .repos
            .iter()
            .filter_map(|r| Some((r.repo(), r.image.clone()?)))
            .collect();
        Ok(KubernetesExecutor::new(client, k, images))
    }

    /// An executor over `client`, in `config.namespace`. `images` are the
    /// test images of repositories that do not use the default one.
    pub fn new(
        client: Client,
        config: &KubernetesConfig,
        images: HashMap<RepoName, String>,
    ) -> KubernetesExecutor {
        let shared = Arc::new(Shared {
            jobs: Api::namespaced(client.clone(), &config.namespace),
            pods: Api::namespaced(client.clone(), &config.namespace),
            secrets: Api::namespaced(client, &config.namespace),
            config: config.clone(),
            images,
            call_timeout: Duration::from_secs(config.api_timeout_secs.max(1)),
            tracked: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(0),
        });
        let watcher = tokio::spawn(Arc::clone(&shared).watch());
        KubernetesExecutor { shared, watcher }
    }

    /// Builds whose results are still to be sent.
    pub fn running(&self) -> Vec<BuildId> {
        lock(&self.shared.tracked).keys().cloned().collect()
    }

    /// After a restart: lists sluice's Jobs and, for each not yet reported,
    /// tracks it again if `current` says its pair is still current (its
    /// result goes to `done`, as if `start` had been called) or deletes it.
    /// Jobs whose results were already sent are left to their TTL.
    pub async fn adopt(
        &self,
        current: &(dyn Fn(&BuildId, &Candidate) -> bool + Sync),
        done: UnboundedSender<JobResult>,
    ) -> Result<Adoption, KubeError> {
        let shared = &self.shared;
        let params = ListParams::default().labels(MANAGED_SELECTOR);
        let list = shared.call("list jobs", shared.jobs.list(&params)).await?;
        let mut adoption = Adoption::default();
        for job in list.items {
            let Some((build, candidate)) = manifest::identity(&job) else {
                tracing::warn!(job = ?job.metadata.name, "a managed Job without sluice's annotations; left alone");
                continue;
            };
            if manifest::reported(&job) || lock(&shared.tracked).contains_key(&build) {
                continue;
            }
            // A Job still waiting for its clone Secret never ran; its
            // token is not at hand here: the build starts again.
            if current(&build, &candidate) && !manifest::suspended(&job) {
                tracing::info!(%build, "adopting the Job of a current pair");
                let generation = shared.next_generation.fetch_add(1, Ordering::Relaxed);
                lock(&shared.tracked).insert(
                    build.clone(),
                    Tracked {
                        generation,
                        candidate: candidate.clone(),
                        done: done.clone(),
                        exists_since: Some(Instant::now()),
                        finishing: false,
                        started_at: created_ms(&job).unwrap_or_else(now_ms),
                    },
                );
                Arc::clone(shared).observe(job);
                adoption.adopted.push((build, candidate));
            } else if manifest::suspended(&job) {
                tracing::info!(%build, "deleting a Job that never got its clone Secret");
                shared.delete(&build).await?;
                adoption.deleted.push(build);
            } else {
                tracing::info!(%build, "deleting the Job of a stale pair");
                shared.delete(&build).await?;
                adoption.deleted.push(build);
            }
        }
        Ok(adoption)
    }
}

impl Drop for KubernetesExecutor {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Executor for KubernetesExecutor {
    /// Re-adopts the Jobs of builds the restored state still runs, deletes
    /// the rest, and reports as lost the builds that have no Job. If the
    /// Jobs cannot be listed, the builds count as lost only after a few
    /// tries, so a passing API hiccup does not start duplicates.
    fn recover(
        &self,
        running: Vec<(BuildId, Candidate)>,
        done: UnboundedSender<JobResult>,
    ) -> futures::future::BoxFuture<'_, Vec<BuildId>> {
        Box::pin(async move {
            let wanted: std::collections::HashSet<BuildId> =
                running.iter().map(|(b, _)| b.clone()).collect();
            for attempt in 1..=5u32 {
                match self.adopt(&|b, _| wanted.contains(b), done.clone()).await {
                    Ok(adoption) => {
                        let adopted: std::collections::HashSet<&BuildId> =
                            adoption.adopted.iter().map(|(b, _)| b).collect();
                        return running
                            .iter()
                            .map(|(b, _)| b.clone())
                            .filter(|b| !adopted.contains(b))
                            .collect();
                    }
                    Err(e) => {
                        tracing::warn!(attempt, error = %e, "cannot list Jobs to re-adopt them");
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                }
            }
            running.into_iter().map(|(b, _)| b).collect()
        })
    }

    fn start(&self, job: JobSpec, done: UnboundedSender<JobResult>) {
        let shared = &self.shared;
        let generation = shared.next_generation.fetch_add(1, Ordering::Relaxed);
        let build = job.build.clone();
        let replaced = lock(&shared.tracked).insert(
            build.clone(),
            Tracked {
                generation,
                candidate: job.candidate.clone(),
                done,
                exists_since: None,
                finishing: false,
                started_at: now_ms(),
            },
        );
        if replaced.is_some() {
            tracing::warn!(%build, "build started twice; the earlier start reports nothing");
        }
        tokio::spawn(Arc::clone(shared).create(job, generation));
    }

    /// The newest pod's containers' output so far, as the API serves it
    /// (each read bounded by `log_limit_bytes` and the call timeout).
    fn log_part(
        &self,
        build: &BuildId,
        part: LogPart,
    ) -> futures::future::BoxFuture<'_, Option<LogRead>> {
        let build = build.clone();
        Box::pin(async move {
            let cached = {
                let tracked = lock(&self.shared.tracked);
                if !tracked.contains_key(&build) {
                    return None;
                }
                lock(&self.shared.logs)
                    .entry(build.clone())
                    .or_default()
                    .clone()
            };
            // One read at a time per build; who waited gets that read.
            let mut cached = cached.lock().await;
            if cached.read_at.is_none_or(|at| at.elapsed() > LOG_FRESH) {
                cached.bytes = Arc::new(self.shared.log_so_far(&build).await?);
                cached.read_at = Some(Instant::now());
            }
            Some(part.of(&cached.bytes))
        })
    }

    fn cancel(&self, build: &BuildId) {
        let known = lock(&self.shared.tracked).remove(build).is_some();
        lock(&self.shared.logs).remove(build);
        if !known {
            return;
        }
        tracing::info!(%build, "cancelling job");
        let shared = Arc::clone(&self.shared);
        let build = build.clone();
        tokio::spawn(async move {
            for attempt in 1..=DELETE_ATTEMPTS {
                match shared.delete(&build).await {
                    Ok(()) => return,
                    Err(e) if attempt == DELETE_ATTEMPTS => {
                        tracing::warn!(%build, error = %e, "cannot delete a cancelled Job; its deadline will end it");
                    }
                    Err(e) => {
                        tracing::warn!(%build, error = %e, attempt, "deleting a cancelled Job failed; retrying");
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                }
            }
        });
    }
}

impl Shared {
    /// A running Job's whole log so far (its newest pod's containers).
    async fn log_so_far(&self, build: &BuildId) -> Option<Vec<u8>> {
        let pod = self.newest_pod(build).await.ok()??;
        let name = pod.metadata.name.clone()?;
        let mut log = Vec::new();
        for container in [manifest::PREPARE_CONTAINER, manifest::TEST_CONTAINER] {
            if started(Some(&pod), container)
                && let Ok(bytes) = self.container_log(&name, container).await
            {
                log.extend_from_slice(&bytes);
            }
        }
        Some(log)
    }

    /// Runs one API call under the call timeout.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, KubeError> {
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(KubeError::Api {
                what: what.to_string(),
                source,
            }),
            Err(_) => Err(KubeError::Timeout {
                what: what.to_string(),
                after: self.call_timeout,
            }),
        }
    }

    /// Whether `build` is still tracked as `generation`.
    fn is_current(&self, build: &BuildId, generation: u64) -> bool {
        lock(&self.tracked)
            .get(build)
            .is_some_and(|t| t.generation == generation)
    }

    /// Creates the build's Job; an existing Job of the same build is
    /// adopted, never duplicated.
    async fn create(self: Arc<Self>, mut job: JobSpec, generation: u64) {
        // The Job fetches as soon as its pod is scheduled.
        job.mint_clone_token().await;
        let image = self.images.get(&job.candidate.repo).map(String::as_str);
        let manifest = manifest::build_job(&job, &JobSettings::new(&self.config, image));
        let build = job.build.clone();
        let name = manifest::job_name(&build);
        let created = self
            .call(
                "create job",
                self.jobs.create(&PostParams::default(), &manifest),
            )
            .await;
        let existing = match created {
            Ok(created) => created,
            // A 409: a Job of that name exists. Any other failure (a
            // timeout, a 5xx) may have come after the Job was created, its
            // answer lost: either way the Job is looked for.
            Err(e) => match self.call("get job", self.jobs.get(&name)).await {
                Ok(existing)
                    if manifest::identity(&existing)
                        .is_some_and(|(b, c)| b == build && c == job.candidate) =>
                {
                    tracing::info!(%build, "the build's Job exists already; adopting it");
                    existing
                }
                Ok(_) if e.status() == Some(409) => {
                    let detail = format!("a Job named {name} exists for another build");
                    return self.fail_early(&build, generation, detail);
                }
                Err(read) if e.status() == Some(409) => {
                    let detail = format!("cannot read Job {name}: {read}");
                    return self.fail_early(&build, generation, detail);
                }
                Err(read) if read.status() != Some(404) => {
                    // Unknown: delete what may exist, so no Job of a build
                    // reported failed runs unseen.
                    if let Err(d) = self.delete(&build).await {
                        tracing::warn!(%build, error = %d, "cannot delete a Job whose creation failed");
                    }
                    let detail = format!("cannot create Job {name}: {e}");
                    return self.fail_early(&build, generation, detail);
                }
                _ => {
                    let detail = format!("cannot create Job {name}: {e}");
                    return self.fail_early(&build, generation, detail);
                }
            },
        };
        if manifest::suspended(&existing)
            && let Err(e) = self.resume(&job, &existing).await
        {
            if let Err(d) = self.delete(&build).await {
                tracing::warn!(%build, error = %d, "cannot delete a Job that could not be resumed");
            }
            let detail = format!("cannot start Job {name}: {e}");
            return self.fail_early(&build, generation, detail);
        }
        let still_wanted = {
            let mut tracked = lock(&self.tracked);
            match tracked.get_mut(&build) {
                Some(t) if t.generation == generation => {
                    t.exists_since = Some(Instant::now());
                    true
                }
                _ => false,
            }
        };
        if still_wanted {
            tracing::info!(%build, job = %name, "job created");
            self.observe(existing);
        } else if !lock(&self.tracked).contains_key(&build) {
            // Cancelled while being created.
            if let Err(e) = self.delete(&build).await {
                tracing::warn!(%build, error = %e, "cannot delete the Job of a cancelled build");
            }
        }
    }

    /// Lets a suspended Job run: first its clone Secret (owned by the Job,
    /// made from `job`'s token), then `suspend: false`.
    async fn resume(&self, job: &JobSpec, created: &Job) -> Result<(), KubeError> {
        if let Some(secret) = manifest::clone_secret(job, created) {
            let made = self
                .call(
                    "create secret",
                    self.secrets.create(&PostParams::default(), &secret),
                )
                .await;
            match made {
                // 409: an earlier attempt at this build made it (its
                // answer lost); it holds a token of the same build.
                Err(e) if e.status() != Some(409) => return Err(e),
                _ => {}
            }
        }
        let name = manifest::job_name(&job.build);
        let patch = Patch::Merge(serde_json::json!({"spec": {"suspend": false}}));
        self.call(
            "resume job",
            self.jobs.patch(&name, &PatchParams::default(), &patch),
        )
        .await?;
        Ok(())
    }

    /// Reports an infrastructure error for a build whose Job could not be
    /// created.
    fn fail_early(&self, build: &BuildId, generation: u64, detail: String) {
        tracing::warn!(%build, %detail, "job not started");
        let Some(t) = take_if(&mut lock(&self.tracked), build, generation) else {
            return;
        };
        let log = format!("sluice: {detail}\n").into_bytes();
        let _ = t.done.send(JobResult {
            build: build.clone(),
            candidate: t.candidate,
            report: JobReport {
                outcome: Outcome::Error,
                exit_code: None,
                detail,
                started_at: t.started_at,
                finished_at: now_ms(),
            },
            log,
        });
    }

    /// Deletes the build's Job and its pods; a Job already gone is fine.
    async fn delete(&self, build: &BuildId) -> Result<(), KubeError> {
        let name = manifest::job_name(build);
        match self
            .call(
                "delete job",
                self.jobs.delete(&name, &DeleteParams::background()),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The watcher and the periodic re-list; runs until aborted.
    async fn watch(self: Arc<Self>) {
        let config = watcher::Config::default().labels(MANAGED_SELECTOR);
        let events = watcher(self.jobs.clone(), config).default_backoff();
        let mut events = std::pin::pin!(events);
        let every = Duration::from_secs(self.config.relist_interval_secs.max(1));
        let mut relist = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                        Arc::clone(&self).observe(job);
                    }
                    Some(Ok(watcher::Event::Delete(job))) => Arc::clone(&self).deleted(job),
                    Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "watching Jobs failed; retrying"),
                    None => {
                        tracing::error!("the Job watcher ended");
                        return;
                    }
                },
                _ = relist.tick() => {
                    if let Err(e) = Arc::clone(&self).relist().await {
                        tracing::warn!(error = %e, "re-listing Jobs failed");
                    }
                }
            }
        }
    }

    /// A Job was seen: if it is tracked and finished, collect its result.
    /// Stuck pods are the re-list's business.
    fn observe(self: Arc<Self>, job: Job) {
        if outcome::is_finished(&job) {
            self.collect(job, None);
        }
    }

    /// A Job was deleted: one sluice did not cancel is a lost build, unless
    /// it had finished (a short TTL can delete it before sluice looks).
    fn deleted(self: Arc<Self>, job: Job) {
        let Some((build, _)) = manifest::identity(&job) else {
            return;
        };
        if outcome::is_finished(&job) {
            return self.collect(job, None);
        }
        let lost = lock(&self.tracked)
            .get(&build)
            .is_some_and(|t| t.exists_since.is_some() && !t.finishing);
        if lost {
            self.collect(
                job,
                Some(Verdict {
                    outcome: Outcome::Error,
                    detail: "the Job was deleted before it finished".into(),
                    exit_code: None,
                }),
            );
        }
    }

    /// Lists Jobs and pods: finds results a missed event hid, pods stuck
    /// where they will stay, and Jobs that vanished.
    async fn relist(self: Arc<Self>) -> Result<(), KubeError> {
        let began = Instant::now();
        let params = ListParams::default().labels(MANAGED_SELECTOR);
        let jobs = self.call("list jobs", self.jobs.list(&params)).await?;
        let pods = self.call("list pods", self.pods.list(&params)).await?;
        let mut newest: HashMap<String, Pod> = HashMap::new();
        for pod in pods.items {
            let Some(build) = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_BUILD))
                .cloned()
            else {
                continue;
            };
            let newer = newest
                .get(&build)
                .is_none_or(|p| p.metadata.creation_timestamp <= pod.metadata.creation_timestamp);
            if newer {
                newest.insert(build, pod);
            }
        }
        let now = now_ms();
        let schedule_timeout = Duration::from_secs(self.config.schedule_timeout_secs);
        let mut seen = Vec::new();
        for job in jobs.items {
            let Some((build, _)) = manifest::identity(&job) else {
                continue;
            };
            seen.push(build.clone());
            if !lock(&self.tracked).contains_key(&build) {
                continue;
            }
            let pod = newest.get(&manifest::label_value(build.as_str()));
            if outcome(&job, pod, now, schedule_timeout).is_some() {
                Arc::clone(&self).collect(job, None);
            }
        }
        let lost: Vec<BuildId> = lock(&self.tracked)
            .iter()
            .filter(|(b, t)| {
                !t.finishing && t.exists_since.is_some_and(|s| s < began) && !seen.contains(b)
            })
            .map(|(b, _)| b.clone())
            .collect();
        for build in lost {
            tracing::warn!(%build, "the build's Job is gone");
            self.finish(
                &build,
                None,
                Verdict {
                    outcome: Outcome::Error,
                    detail: "the Job disappeared before it finished".into(),
                    exit_code: None,
                },
                b"sluice: the Job disappeared before it finished\n".to_vec(),
            );
        }
        Ok(())
    }

    /// Collects the result of a tracked build in the background: its pod,
    /// its verdict (unless given), its log; then sends it.
    fn collect(self: Arc<Self>, job: Job, given: Option<Verdict>) {
        let Some((build, _)) = manifest::identity(&job) else {
            return;
        };
        let generation = {
            let mut tracked = lock(&self.tracked);
            let Some(t) = tracked.get_mut(&build).filter(|t| !t.finishing) else {
                return;
            };
            t.finishing = true;
            t.generation
        };
        tokio::spawn(async move {
            let pod = match self.newest_pod(&build).await {
                Ok(pod) => pod,
                Err(e) => {
                    tracing::warn!(%build, error = %e, "cannot read the build's pod; retrying at the next re-list");
                    return self.unfinish(&build, generation);
                }
            };
            let schedule_timeout = Duration::from_secs(self.config.schedule_timeout_secs);
            let verdict = given.or_else(|| outcome(&job, pod.as_ref(), now_ms(), schedule_timeout));
            let Some(verdict) = verdict else {
                return self.unfinish(&build, generation);
            };
            let log = self.read_log(&build, &job, pod.as_ref(), &verdict).await;
            if !outcome::is_finished(&job) && self.is_current(&build, generation) {
                // Stuck: it would never end by itself.
                if let Err(e) = self.delete(&build).await {
                    tracing::warn!(%build, error = %e, "cannot delete a stuck Job");
                }
            }
            if self.finish(&build, Some(generation), verdict, log) {
                self.mark_reported(&build).await;
            }
        });
    }

    fn unfinish(&self, build: &BuildId, generation: u64) {
        if let Some(t) = lock(&self.tracked)
            .get_mut(build)
            .filter(|t| t.generation == generation)
        {
            t.finishing = false;
        }
    }

    /// Sends the result of a build still tracked (as `generation`, if
    /// given) and forgets it; a cancelled build sends nothing.
    fn finish(
        &self,
        build: &BuildId,
        generation: Option<u64>,
        verdict: Verdict,
        log: Vec<u8>,
    ) -> bool {
        let taken = {
            let mut tracked = lock(&self.tracked);
            match generation {
                Some(g) => take_if(&mut tracked, build, g),
                None => tracked.remove(build),
            }
        };
        // After `tracked`: a reader either saw the build gone or cached
        // its log before this.
        lock(&self.logs).remove(build);
        let Some(t) = taken else {
            tracing::info!(%build, "job cancelled");
            return false;
        };
        tracing::info!(%build, outcome = ?verdict.outcome, detail = %verdict.detail, "job finished");
        let _ = t.done.send(JobResult {
            build: build.clone(),
            candidate: t.candidate,
            report: JobReport {
                outcome: verdict.outcome,
                exit_code: verdict.exit_code,
                detail: verdict.detail,
                started_at: t.started_at,
                finished_at: now_ms(),
            },
            log,
        });
        true
    }

    /// Marks the Job as reported, so a restarted sluice leaves it alone.
    async fn mark_reported(&self, build: &BuildId) {
        let name = manifest::job_name(build);
        let patch = serde_json::json!({
            "metadata": { "annotations": { manifest::ANNOTATION_REPORTED: "true" } }
        });
        let done = self
            .call(
                "annotate job",
                self.jobs
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await;
        match done {
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => tracing::warn!(%build, error = %e, "cannot mark the Job as reported"),
        }
    }

    /// The build's newest pod, if it has one.
    async fn newest_pod(&self, build: &BuildId) -> Result<Option<Pod>, KubeError> {
        let selector = format!(
            "{MANAGED_SELECTOR},{LABEL_BUILD}={}",
            manifest::label_value(build.as_str())
        );
        let pods = self
            .call(
                "list pods",
                self.pods.list(&ListParams::default().labels(&selector)),
            )
            .await?;
        Ok(pods.items.into_iter().max_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        }))
    }

    /// The build's log: sluice's lines, then the prepare and test
    /// containers' output as the API serves it.
    async fn read_log(
        &self,
        build: &BuildId,
        job: &Job,
        pod: Option<&Pod>,
        verdict: &Verdict,
    ) -> Vec<u8> {
        let mut log = Vec::new();
        let line = |log: &mut Vec<u8>, text: &str| {
            if log.last().is_some_and(|b| *b != b'\n') {
                log.push(b'\n');
            }
            log.extend_from_slice(text.as_bytes());
            log.push(b'\n');
        };
        let candidate = manifest::identity(job).map(|(_, c)| c);
        if let Some((c, first)) = candidate.as_ref().and_then(|c| Some((c, c.first_pr()?))) {
            line(
                &mut log,
                &format!(
                    "sluice: build {build} of {} PR #{}: head {} ({}), target {} at {}",
                    c.repo,
                    first.number,
                    first.head_sha,
                    first.head_ref,
                    c.target_branch,
                    c.target_sha
                ),
            );
        }
        let job_name = job.metadata.name.clone().unwrap_or_default();
        match pod.and_then(|p| p.metadata.name.clone()) {
            None => line(
                &mut log,
                &format!("sluice: Job {job_name} has no pod; no log to read"),
            ),
            Some(pod_name) => {
                line(&mut log, &format!("sluice: Job {job_name}, pod {pod_name}"));
                for container in [manifest::PREPARE_CONTAINER, manifest::TEST_CONTAINER] {
                    if !started(pod, container) {
                        continue;
                    }
                    match self.container_log(&pod_name, container).await {
                        Ok(bytes) => log.extend_from_slice(&bytes),
                        Err(e) => line(
                            &mut log,
                            &format!("sluice: cannot read the log of container {container}: {e}"),
                        ),
                    }
                }
            }
        }
        line(
            &mut log,
            &format!(
                "sluice: {}: {}",
                outcome_word(verdict.outcome),
                verdict.detail
            ),
        );
        log
    }

    async fn container_log(&self, pod: &str, container: &str) -> Result<Vec<u8>, KubeError> {
        let params = LogParams {
            container: Some(container.to_string()),
            limit_bytes: Some(self.config.log_limit_bytes),
            ..LogParams::default()
        };
        let what = format!("read log of {pod}/{container}");
        let read = async {
            let mut stream = self.pods.log_stream(pod, &params).await?;
            let mut bytes = Vec::new();
            stream
                .read_to_end(&mut bytes)
                .await
                .map_err(kube::Error::ReadEvents)?;
            Ok(bytes)
        };
        self.call(&what, read).await
    }
}

/// Whether a container of the pod got as far as running (so it has a log).
fn started(pod: Option<&Pod>, container: &str) -> bool {
    let Some(status) = pod.and_then(|p| p.status.as_ref()) else {
        return false;
    };
    status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten()
        .filter(|s| s.name == container)
        .any(|s| {
            s.state
                .as_ref()
                .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
                || s.last_state
                    .as_ref()
                    .is_some_and(|st| st.terminated.is_some())
        })
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Passed => "passed",
        Outcome::Failed => "failed",
        Outcome::Error => "error",
    }
}

fn take_if(
    tracked: &mut HashMap<BuildId, Tracked>,
    build: &BuildId,
    generation: u64,
) -> Option<Tracked> {
    if tracked.get(build)?.generation == generation {
        tracked.remove(build)
    } else {
        None
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn created_ms(job: &Job) -> Option<Timestamp> {
    outcome::millis(job.metadata.creation_timestamp.as_ref()?).map(Timestamp)
}

fn now_ms() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
}
