//! How a build's Job ended, as a pure function of the Job and its pod.
//!
//! kube's `conditions::is_job_completed` only looks at `Complete`; sluice
//! must tell a test failure (the PR's fault) from an infrastructure error
//! (retried, never reported as a failure), so it reads the conditions and
//! the containers' states itself.

use super::manifest::{
    ANNOTATION_TARGET_BRANCH, EXIT_CHECKOUT, EXIT_CONFLICT, EXIT_FETCH, EXIT_MERGE,
    PREPARE_CONTAINER, TEST_CONTAINER,
};
use crate::core::{Outcome, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;

/// Container waiting reasons that mean the container will not start by
/// itself.
const CANNOT_START: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// How a build ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// One line for people.
    pub detail: String,
    /// The test command's exit code, when it ran to the end.
    pub exit_code: Option<i32>,
}

impl Verdict {
    fn error(detail: String) -> Verdict {
        Verdict {
            outcome: Outcome::Error,
            detail,
            exit_code: None,
        }
    }
}

/// The verdict on a build's Job, or `None` while it is still running (or
/// still may). `pod` is the Job's newest pod, if any; `now` and
/// `schedule_timeout` decide when a pod that cannot be scheduled (or was
/// never created) becomes an error.
pub fn outcome(
    job: &Job,
    pod: Option<&Pod>,
    now: Timestamp,
    schedule_timeout: Duration,
) -> Option<Verdict> {
    if condition(job, "Complete").is_some() {
        return Some(Verdict {
            outcome: Outcome::Passed,
            detail: "exit code 0".into(),
            exit_code: Some(0),
        });
    }
    if let Some((reason, message)) = condition(job, "Failed") {
        if reason == "DeadlineExceeded" {
            let deadline = job
                .spec
                .as_ref()
                .and_then(|s| s.active_deadline_seconds)
                .map_or_else(|| "its deadline".to_string(), |s| format!("{s}s"));
            return Some(Verdict::error(format!(
                "timed out after {deadline} (DeadlineExceeded)"
            )));
        }
        if let Some(verdict) = pod.and_then(|p| from_pod(job, p)) {
            return Some(verdict);
        }
        let why = [reason, message]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        return Some(Verdict::error(match pod {
            None => format!("pod lost: the job failed ({why}) and its pod is gone"),
            Some(_) => format!("pod lost: the job failed ({why}) before the test finished"),
        }));
    }

    // Still running as far as the Job says: look for states it will not
    // leave by itself.
    match pod {
        Some(pod) => {
            if let Some(v) = evicted(pod)
                .or_else(|| disrupted(pod))
                .or_else(|| cannot_start(pod))
            {
                return Some(v);
            }
            let overdue = age(job, now).is_some_and(|a| a > schedule_timeout);
            unschedulable(pod).filter(|_| overdue).map(|message| {
                Verdict::error(format!(
                    "not scheduled within {}s: {message}",
                    schedule_timeout.as_secs()
                ))
            })
        }
        None if age(job, now).is_some_and(|a| a > schedule_timeout) => Some(Verdict::error(
            format!("no pod was created within {}s", schedule_timeout.as_secs()),
        )),
        None => None,
    }
}

/// Whether the Job reached `Complete` or `Failed`.
pub fn is_finished(job: &Job) -> bool {
    condition(job, "Complete").is_some() || condition(job, "Failed").is_some()
}

/// The reason and message of a condition that is `True`.
fn condition<'a>(job: &'a Job, kind: &str) -> Option<(&'a str, &'a str)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .map(|c| {
            (
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or(""),
            )
        })
}

/// The verdict a failed Job's pod explains, if it does.
fn from_pod(job: &Job, pod: &Pod) -> Option<Verdict> {
    // A pod killed under the test (eviction, preemption, node shutdown)
    // shows exit codes that say nothing about the code: look first.
    if let Some(v) = evicted(pod).or_else(|| disrupted(pod)) {
        return Some(v);
    }
    let status = pod.status.as_ref()?;
    let prepare = terminated(status.init_container_statuses.as_deref(), PREPARE_CONTAINER);
    if let Some(prepare) = prepare.filter(|p| p.exit_code != 0) {
        return Some(prepare_failed(job, prepare));
    }
    if let Some(test) = terminated(status.container_statuses.as_deref(), TEST_CONTAINER) {
        let code = test.exit_code;
        if test.reason.as_deref() == Some("ContainerStatusUnknown") {
            return Some(Verdict::error(format!(
                "pod lost: the test container's state is unknown (exit {code})"
            )));
        }
        if code != 0 {
            let detail = match test.reason.as_deref() {
                Some(r @ ("OOMKilled" | "ContainerCannotRun" | "StartError")) => {
                    format!("exit code {code} ({r})")
                }
                _ => format!("exit code {code}"),
            };
            // A test command that cannot even start is a configuration
            // error, not a verdict on the code.
            if matches!(
                test.reason.as_deref(),
                Some("ContainerCannotRun" | "StartError")
            ) {
                return Some(Verdict::error(detail));
            }
            return Some(Verdict {
                outcome: Outcome::Failed,
                detail,
                exit_code: Some(code),
            });
        }
    }
    cannot_start(pod)
}

fn prepare_failed(job: &Job, prepare: &ContainerStateTerminated) -> Verdict {
    let code = prepare.exit_code;
    match code {
        EXIT_CONFLICT => {
            let target = job
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_TARGET_BRANCH))
                .map_or("the target", |t| t.as_str());
            Verdict {
                outcome: Outcome::Failed,
                detail: format!("merge conflict with {target}"),
                exit_code: None,
            }
        }
        EXIT_FETCH => Verdict::error("git fetch failed".into()),
        EXIT_CHECKOUT => Verdict::error("git checkout failed".into()),
        EXIT_MERGE => Verdict::error("git merge failed without conflicts".into()),
        _ => Verdict::error(match prepare.reason.as_deref() {
            Some(reason) if reason != "Error" => {
                format!("workspace preparation failed (exit {code}, {reason})")
            }
            _ => format!("workspace preparation failed (exit {code})"),
        }),
    }
}

fn terminated<'a>(
    statuses: Option<&'a [ContainerStatus]>,
    name: &str,
) -> Option<&'a ContainerStateTerminated> {
    statuses?
        .iter()
        .find(|s| s.name == name)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

fn evicted(pod: &Pod) -> Option<Verdict> {
    let status = pod.status.as_ref()?;
    (status.reason.as_deref() == Some("Evicted")).then(|| {
        let message = status.message.as_deref().unwrap_or("no reason given");
        Verdict::error(format!("pod evicted: {message}"))
    })
}

/// Kubernetes' `DisruptionTarget` condition: the pod is being (or was)
/// killed for reasons outside it.
fn disrupted(pod: &Pod) -> Option<Verdict> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")?;
    let reason = c.reason.as_deref().unwrap_or("DisruptionTarget");
    Some(Verdict::error(match c.message.as_deref() {
        Some(m) if !m.is_empty() => format!("pod disrupted ({reason}): {m}"),
        _ => format!("pod disrupted ({reason})"),
    }))
}

fn cannot_start(pod: &Pod) -> Option<Verdict> {
    let status = pod.status.as_ref()?;
    let all = status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten();
    for s in all {
        let Some(waiting) = s.state.as_ref().and_then(|st| st.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = waiting.reason.as_deref() else {
            continue;
        };
        if CANNOT_START.contains(&reason) {
            let message = waiting.message.as_deref().unwrap_or("");
            let image = if s.image.is_empty() {
                String::new()
            } else {
                format!(" {}", s.image)
            };
            let detail = format!("container {} cannot start: {reason}{image}", s.name);
            return Some(Verdict::error(if message.is_empty() {
                detail
            } else {
                format!("{detail}: {message}")
            }));
        }
    }
    None
}

/// The scheduler's message when the pod is waiting for a node it cannot
/// get.
fn unschedulable(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let scheduled = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    (scheduled.status == "False" && scheduled.reason.as_deref() == Some("Unschedulable")).then(
        || {
            scheduled
                .message
                .clone()
                .unwrap_or_else(|| "Unschedulable".into())
        },
    )
}

/// How long ago the Job was created.
fn age(job: &Job, now: Timestamp) -> Option<Duration> {
    let created = millis(job.metadata.creation_timestamp.as_ref()?)?;
    Some(Duration::from_millis(now.0.saturating_sub(created)))
}

/// A Kubernetes time as milliseconds since the epoch.
pub fn millis(t: &Time) -> Option<u64> {
    u64::try_from(t.0.as_millisecond()).ok()
}
