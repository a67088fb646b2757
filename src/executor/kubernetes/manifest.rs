//! The batch/v1 Job of one build, and the names, labels and annotations that
//! let sluice find it again. Pure: no API calls.

use crate::config::KubernetesConfig;
use crate::core::{BuildId, Candidate};
use crate::executor::JobSpec;
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{Job, JobSpec as K8sJobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PodSecurityContext,
    PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;

/// On every Job and pod sluice creates; the watcher selects on it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "sluice";
/// `app.kubernetes.io/managed-by=sluice`.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=sluice";

pub const LABEL_REPO: &str = "sluice.dev/repo";
pub const LABEL_PR: &str = "sluice.dev/pr";
pub const LABEL_HEAD_SHA: &str = "sluice.dev/head-sha";
pub const LABEL_TARGET_SHA: &str = "sluice.dev/target-sha";
pub const LABEL_BUILD: &str = "sluice.dev/build";

/// The whole candidate as JSON: what a restarted sluice reads back.
pub const ANNOTATION_CANDIDATE: &str = "sluice.dev/candidate";
pub const ANNOTATION_REPO: &str = "sluice.dev/repo";
pub const ANNOTATION_PR: &str = "sluice.dev/pr";
pub const ANNOTATION_HEAD_REF: &str = "sluice.dev/head-ref";
pub const ANNOTATION_HEAD_SHA: &str = "sluice.dev/head-sha";
pub const ANNOTATION_TARGET_BRANCH: &str = "sluice.dev/target-branch";
pub const ANNOTATION_TARGET_SHA: &str = "sluice.dev/target-sha";
pub const ANNOTATION_CLONE_URL: &str = "sluice.dev/clone-url";
pub const ANNOTATION_BUILD: &str = "sluice.dev/build";
/// Set once the Job's result was handed to sluice's driver, so a restarted
/// sluice does not report it twice.
pub const ANNOTATION_REPORTED: &str = "sluice.dev/reported";

/// The key of the clone Secret that holds the fetch's `Authorization`
/// header.
pub const CLONE_SECRET_KEY: &str = "authorization";

/// Container names.
pub const PREPARE_CONTAINER: &str = "prepare";
pub const TEST_CONTAINER: &str = "test";

/// Exit codes of the prepare script.
pub const EXIT_CONFLICT: i32 = 42;
pub const EXIT_FETCH: i32 = 43;
pub const EXIT_CHECKOUT: i32 = 44;
pub const EXIT_MERGE: i32 = 45;

/// Where the emptyDir is mounted, and what lives in it.
const VOLUME: &str = "workspace";
const MOUNT: &str = "/sluice";
const WORKSPACE: &str = "/sluice/src";
const HOME: &str = "/sluice/home";
const TMP: &str = "/sluice/tmp";

/// The init container's script. It is a constant: everything that varies
/// (shas, the clone URL) arrives in environment variables, always quoted, so
/// nothing a PR author controls is ever parsed by the shell. The list of
/// shas to merge is split on spaces with globbing off; the executor only
/// puts validated hex shas in it.
pub const PREPARE_SCRIPT: &str = r#"set -u
set -f
say() { printf 'sluice: %s\n' "$*"; }
mkdir -p "$SLUICE_WORKSPACE" "$HOME" "$TMPDIR" || exit 43
cd "$SLUICE_WORKSPACE" || exit 43
git -c init.defaultBranch=sluice init -q || { say "git init failed"; exit 43; }
say "fetching $SLUICE_CHECKOUT_SHA $SLUICE_MERGE_SHAS"
git fetch --no-tags -- "$SLUICE_CLONE_URL" "$SLUICE_CHECKOUT_SHA" $SLUICE_MERGE_SHAS || { say "git fetch failed"; exit 43; }
say "checking out $SLUICE_CHECKOUT_SHA"
git checkout -q --detach "$SLUICE_CHECKOUT_SHA" || { say "git checkout failed"; exit 44; }
for sha in $SLUICE_MERGE_SHAS; do
  say "merging $sha into $SLUICE_CHECKOUT_SHA"
  if ! git -c user.name=sluice -c user.email=sluice@localhost merge --no-edit "$sha"; then
    files=$(git diff --name-only --diff-filter=U | head -n 20 | tr '\n' ' ')
    if [ -n "$files" ]; then
      say "merge conflict: $SLUICE_CHECKOUT_SHA does not merge with $sha; conflicting files: $files"
      exit 42
    fi
    say "git merge failed without conflicts"
    exit 45
  fi
done
say "workspace ready"
"#;

/// The Job's name: `sluice-<build id>`, a valid DNS-1123 label (a build id
/// is lowercase letters, digits and '-', at most 40 long).
pub fn job_name(build: &BuildId) -> String {
    let name = format!("sluice-{build}");
    if name.ends_with('-') {
        format!("{name}0")
    } else {
        name
    }
}

/// A label value Kubernetes accepts: at most 63 characters of
/// `[A-Za-z0-9._-]`, beginning and ending with a letter or digit. The full
/// value is kept in an annotation.
pub fn label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '.'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// What a job runs with, resolved from the configuration.
#[derive(Clone, Debug)]
pub struct JobSettings {
    pub namespace: String,
    pub git_image: String,
    pub image: String,
    pub ttl_seconds_after_finished: i32,
    pub run_as_user: i64,
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl JobSettings {
    pub fn new(config: &KubernetesConfig, image: Option<&str>) -> JobSettings {
        JobSettings {
            namespace: config.namespace.clone(),
            git_image: config.git_image.clone(),
            image: image.unwrap_or(&config.default_image).to_string(),
            ttl_seconds_after_finished: config.ttl_seconds_after_finished,
            run_as_user: config.run_as_user,
            requests: config.requests.clone(),
            limits: config.limits.clone(),
        }
    }
}

/// The Job for one build.
pub fn build_job(job: &JobSpec, settings: &JobSettings) -> Job {
    let c = &job.candidate;
    let labels = labels(job);
    let annotations = annotations(job);
    let (checkout, merges) = checkout_and_merges(c);

    let env = |pairs: Vec<(&str, String)>| -> Vec<EnvVar> {
        pairs
            .into_iter()
            .map(|(name, value)| EnvVar {
                name: name.to_string(),
                value: Some(value),
                value_from: None,
            })
            .collect()
    };
    let mut common = vec![("HOME", HOME.to_string()), ("TMPDIR", TMP.to_string())];
    common.extend(job.sluice_env());
    let mut prepare_env = common.clone();
    prepare_env.extend([
        ("SLUICE_WORKSPACE", WORKSPACE.to_string()),
        ("SLUICE_CLONE_URL", job.clone_url.clone()),
        ("SLUICE_CHECKOUT_SHA", checkout),
        ("SLUICE_MERGE_SHAS", merges.join(" ")),
        ("GIT_TERMINAL_PROMPT", "0".to_string()),
        ("GIT_CONFIG_NOSYSTEM", "1".to_string()),
        ("LC_ALL", "C".to_string()),
    ]);
    // A read-only token for the fetch (a private repository): in the init
    // container's git configuration through its environment, never in the
    // test container, which runs after it has exited.
    // The token itself is in the build's own Secret ([`clone_secret`]),
    // not in the Job: whoever may read Jobs or pods does not see it.
    let mut prepare_env = env(prepare_env);
    if job.clone_token.is_some() {
        prepare_env.extend(env(vec![
            ("GIT_CONFIG_COUNT", "1".to_string()),
            ("GIT_CONFIG_KEY_0", "http.extraHeader".to_string()),
        ]));
        prepare_env.push(EnvVar {
            name: "GIT_CONFIG_VALUE_0".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: job_name(&job.build),
                    key: CLONE_SECRET_KEY.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        });
    }

    let mount = vec![VolumeMount {
        name: VOLUME.into(),
        mount_path: MOUNT.into(),
        ..VolumeMount::default()
    }];
    let resources = ResourceRequirements {
        requests: quantities(&settings.requests),
        limits: quantities(&settings.limits),
        ..ResourceRequirements::default()
    };
    let prepare = Container {
        name: PREPARE_CONTAINER.into(),
        image: Some(settings.git_image.clone()),
        command: Some(vec!["sh".into(), "-c".into(), PREPARE_SCRIPT.into()]),
        env: Some(prepare_env),
        working_dir: Some(MOUNT.into()),
        volume_mounts: Some(mount.clone()),
        resources: Some(resources.clone()),
        security_context: Some(container_security(true)),
        ..Container::default()
    };
    let test = Container {
        name: TEST_CONTAINER.into(),
        image: Some(settings.image.clone()),
        command: Some(job.command.clone()),
        env: Some(env(common)),
        working_dir: Some(WORKSPACE.into()),
        volume_mounts: Some(mount),
        resources: Some(resources),
        security_context: Some(container_security(false)),
        ..Container::default()
    };
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(10),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(settings.run_as_user),
            run_as_group: Some(settings.run_as_user),
            fs_group: Some(settings.run_as_user),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        init_containers: Some(vec![prepare]),
        containers: vec![test],
        volumes: Some(vec![Volume {
            name: VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&job.build)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(K8sJobSpec {
            backoff_limit: Some(0),
            // With a clone token the Job starts suspended: no pod runs
            // until its Secret exists (created owned by the Job, so it
            // goes with it), then sluice resumes it.
            suspend: job.clone_token.is_some().then_some(true),
            active_deadline_seconds: Some(deadline_secs(job.timeout)),
            ttl_seconds_after_finished: Some(settings.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..K8sJobSpec::default()
        }),
        status: None,
    }
}

/// The Secret holding a build's clone token (the fetch's `Authorization`
/// header), owned by its Job `owner` so the garbage collector deletes it
/// with the Job. `None` without a token.
pub fn clone_secret(job: &JobSpec, owner: &Job) -> Option<Secret> {
    let token = job.clone_token.as_ref()?;
    let uid = owner.metadata.uid.clone()?;
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(job_name(&job.build)),
            namespace: owner.metadata.namespace.clone(),
            labels: Some(labels(job)),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: job_name(&job.build),
                uid,
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            CLONE_SECRET_KEY.to_string(),
            ByteString(token.authorization().into_bytes()),
        )])),
        ..Secret::default()
    })
}

/// The Job waits for sluice to resume it (see [`build_job`]).
pub fn suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// Whole seconds, rounded up, at least 1.
fn deadline_secs(timeout: std::time::Duration) -> i64 {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// One PR: check out its head, merge the target. Several (a merge train):
/// check out the target, merge the heads in order. As the local executor.
/// A train car: check it out exactly, merge nothing.
fn checkout_and_merges(c: &Candidate) -> (String, Vec<String>) {
    if let Some(car) = &c.car {
        return (car.to_string(), Vec::new());
    }
    match c.prs.as_slice() {
        [only] => (only.head_sha.to_string(), vec![c.target_sha.to_string()]),
        prs => (
            c.target_sha.to_string(),
            prs.iter().map(|p| p.head_sha.to_string()).collect(),
        ),
    }
}

fn container_security(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        run_as_non_root: Some(true),
        read_only_root_filesystem: read_only_root.then_some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

fn quantities(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!map.is_empty()).then(|| {
        map.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    })
}

fn labels(job: &JobSpec) -> BTreeMap<String, String> {
    let c = &job.candidate;
    let first = c.first_pr();
    let mut labels = BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (LABEL_REPO.to_string(), label_value(c.repo.as_str())),
        (
            LABEL_TARGET_SHA.to_string(),
            label_value(c.target_sha.as_str()),
        ),
        (LABEL_BUILD.to_string(), label_value(job.build.as_str())),
    ]);
    if let Some(first) = first {
        labels.insert(LABEL_PR.to_string(), first.number.to_string());
        labels.insert(
            LABEL_HEAD_SHA.to_string(),
            label_value(first.head_sha.as_str()),
        );
    }
    labels
}

fn annotations(job: &JobSpec) -> BTreeMap<String, String> {
    let c = &job.candidate;
    let mut annotations = BTreeMap::from([
        (
            ANNOTATION_CANDIDATE.to_string(),
            serde_json::to_string(c).unwrap_or_default(),
        ),
        (ANNOTATION_REPO.to_string(), c.repo.to_string()),
        (
            ANNOTATION_TARGET_BRANCH.to_string(),
            c.target_branch.clone(),
        ),
        (ANNOTATION_TARGET_SHA.to_string(), c.target_sha.to_string()),
        (ANNOTATION_CLONE_URL.to_string(), job.clone_url.clone()),
        (ANNOTATION_BUILD.to_string(), job.build.to_string()),
    ]);
    if let Some(first) = c.first_pr() {
        annotations.insert(ANNOTATION_PR.to_string(), first.number.to_string());
        annotations.insert(ANNOTATION_HEAD_REF.to_string(), first.head_ref.clone());
        annotations.insert(ANNOTATION_HEAD_SHA.to_string(), first.head_sha.to_string());
    }
    annotations
}

/// The build id and candidate a Job of sluice's carries, if it is one.
pub fn identity(job: &Job) -> Option<(BuildId, Candidate)> {
    let annotations = job.metadata.annotations.as_ref()?;
    let build = BuildId::parse(annotations.get(ANNOTATION_BUILD)?).ok()?;
    let candidate = serde_json::from_str(annotations.get(ANNOTATION_CANDIDATE)?).ok()?;
    Some((build, candidate))
}

/// Whether the Job's result was already handed over.
pub fn reported(job: &Job) -> bool {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_REPORTED))
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_label_safe() {
        assert_eq!(label_value("octo/demo"), "octo.demo");
        assert_eq!(label_value(&"a".repeat(64)), "a".repeat(63));
        assert_eq!(label_value("-x_"), "x");
        assert_eq!(label_value("$(curl evil)"), "curl.evil");
    }

    #[test]
    fn job_names_are_dns_labels() {
        assert_eq!(job_name(&BuildId::parse("k3-12").unwrap()), "sluice-k3-12");
        assert_eq!(job_name(&BuildId::parse("k3-").unwrap()), "sluice-k3-0");
        let long = BuildId::parse(&"a".repeat(40)).unwrap();
        assert!(job_name(&long).len() <= 63 - 6, "room for a pod suffix");
    }

    #[test]
    fn deadline_rounds_up() {
        use std::time::Duration;
        assert_eq!(deadline_secs(Duration::from_millis(1500)), 2);
        assert_eq!(deadline_secs(Duration::from_secs(600)), 600);
        assert_eq!(deadline_secs(Duration::ZERO), 1);
    }

    fn sha(c: char) -> crate::core::Sha {
        crate::core::Sha::parse(&c.to_string().repeat(40)).unwrap()
    }

    /// PR #1 (head 22…) of o/r on main at 11….
    fn candidate() -> Candidate {
        Candidate {
            car: None,
            repo: crate::core::RepoName::parse("o/r").unwrap(),
            target_branch: "main".into(),
            target_sha: sha('1'),
            prs: vec![crate::core::CandidatePr {
                number: 1,
                head_sha: sha('2'),
                head_ref: "f".into(),
            }],
        }
    }

    #[test]
    fn a_car_is_checked_out_exactly_and_a_pr_merges_its_target() {
        let mut c = candidate();
        assert_eq!(
            checkout_and_merges(&c),
            (sha('2').to_string(), vec![sha('1').to_string()])
        );
        c.car = Some(sha('3'));
        assert_eq!(checkout_and_merges(&c), (sha('3').to_string(), vec![]));
    }

    #[test]
    fn a_clone_token_is_in_the_builds_secret_not_in_its_job() {
        use crate::core::BuildId;
        use crate::executor::{CloneToken, JobSpec};
        let mut job = JobSpec {
            build: BuildId::parse("k1-1").unwrap(),
            candidate: Candidate {
                car: Some(sha('3')),
                ..candidate()
            },
            clone_url: "https://github.com/o/r.git".into(),
            command: vec!["make".into()],
            timeout: std::time::Duration::from_secs(60),
            clone_token: Some(CloneToken::new("ghs_secret".into())),
            mint_token: None,
        };
        let settings = JobSettings::new(&crate::config::KubernetesConfig::default(), None);
        let mut manifest = build_job(&job, &settings);
        let header = CloneToken::new("ghs_secret".into()).authorization();
        let encoded = header
            .trim_start_matches("Authorization: Basic ")
            .to_string();

        // Nowhere in the Job (not an env value, a label or an annotation;
        // the token is base64 in the header: look for both).
        let text = serde_json::to_string(&manifest).unwrap();
        assert!(
            !text.contains("ghs_secret") && !text.contains(&encoded),
            "{text}"
        );
        assert!(suspended(&manifest), "no pod before its Secret exists");
        let pod = manifest
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        let init = &pod.init_containers.as_ref().unwrap()[0];
        let from_secret = init
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "GIT_CONFIG_VALUE_0")
            .and_then(|e| e.value_from.clone()?.secret_key_ref)
            .expect("the fetch's header comes from a Secret");
        assert_eq!(from_secret.name, "sluice-k1-1");
        assert_eq!(from_secret.key, CLONE_SECRET_KEY);
        assert!(init.env.iter().flatten().any(
            |e| e.name == "GIT_CONFIG_KEY_0" && e.value.as_deref() == Some("http.extraHeader")
        ));
        let test = &pod.containers[0];
        assert!(
            !test.env.iter().flatten().any(|e| e.value_from.is_some()),
            "the test container reads no Secret"
        );

        // The Secret: the header, owned by the Job (deleted with it).
        manifest.metadata.uid = Some("uid-1".into());
        let secret = clone_secret(&job, &manifest).expect("a Secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("sluice-k1-1"));
        assert_eq!(
            secret.data.as_ref().unwrap()[CLONE_SECRET_KEY].0,
            header.as_bytes()
        );
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Job", "sluice-k1-1", "uid-1")
        );
        assert!(
            !format!("{job:?}").contains("ghs_secret"),
            "Debug redacts it"
        );

        // Without a token: no Secret, and the Job runs at once.
        job.clone_token = None;
        let plain = build_job(&job, &settings);
        assert!(!suspended(&plain));
        assert!(clone_secret(&job, &manifest).is_none());
    }
}
