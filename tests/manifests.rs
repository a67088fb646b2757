//! The Kubernetes deployment in `k8s/`: every manifest parses into
//! k8s-openapi types with no field left over (so a typo fails the build),
//! the kustomization lists every file, the RBAC rules are exactly the API
//! calls sluice makes (read from the executor's code and seen on the wire),
//! the Deployment is hardened and probed, the Secret is referenced but not
//! committed, the configuration passes sluice's own validation, and the
//! pieces agree with each other (namespaces, ports, paths, labels).

#[path = "support/fake_kube.rs"]
mod fake_kube;

use fake_kube::FakeKube;
use http::Method;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sluice::config::{
    Config, ENV_API_TOKEN, ENV_GITHUB_TOKEN, ENV_WEBHOOK_SECRET, ExecutorKind, GcsLink, ResultsKind,
};
use sluice::core::{BuildId, Candidate, CandidatePr, RepoName, Sha};
use sluice::executor::kubernetes::KubernetesExecutor;
use sluice::executor::kubernetes::manifest::{self, JobSettings, MANAGED_BY, MANAGED_BY_VALUE};
use sluice::executor::{Executor, JobSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Secret the Deployment reads; created by hand, never committed.
const SECRET: &str = "sluice-secrets";
/// Where the Deployment mounts the configuration, and the image reads it.
const CONFIG_PATH: &str = "/etc/sluice/config.toml";

/// (API group, resource, verb): one thing RBAC allows.
type Permission = (String, String, String);

/// What sluice's Kubernetes executor does, call by call
/// (src/executor/kubernetes.rs):
///   jobs.create (Shared::create), jobs.get (Shared::create on a 409),
///   jobs.list (adopt, relist; and the watcher's initial list),
///   jobs watch (Shared::watch, `kube::runtime::watcher`),
///   jobs.delete (Shared::delete), jobs.patch (mark_reported),
///   pods.list (relist, newest_pod), pods.log_stream (container_log),
///   secrets.create (Shared::resume: a build's clone token, owned by its
///   Job; never read back).
/// `rbac_rules_are_what_the_code_calls` re-derives this from the source
/// and `rbac_covers_every_request_the_executor_sends` from the wire.
const EXPECTED_RULES: &[(&str, &str, &[&str])] = &[
    (
        "batch",
        "jobs",
        &["create", "delete", "get", "list", "patch", "watch"],
    ),
    ("", "pods", &["list"]),
    ("", "pods/log", &["get"]),
    ("", "secrets", &["create"]),
];

fn expected_permissions() -> BTreeSet<Permission> {
    EXPECTED_RULES
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(|v| (group.to_string(), resource.to_string(), v.to_string()))
        })
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_dir() -> PathBuf {
    root().join("k8s")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- loading ---------------------------------------------------------------

/// One YAML document of a manifest file.
struct Doc {
    /// `file#index`, for messages.
    place: String,
    value: Value,
}

/// Every document of every manifest (all `*.yaml` but the kustomization).
fn documents() -> Vec<Doc> {
    let mut docs = Vec::new();
    for file in files_in_k8s() {
        if !(file.ends_with(".yaml") || file.ends_with(".yml")) || file == "kustomization.yaml" {
            continue;
        }
        let text = read(&k8s_dir().join(&file));
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("k8s/{file}: document {i} is not YAML: {e}"));
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            docs.push(Doc {
                place: format!("k8s/{file}#{i}"),
                value,
            });
        }
    }
    assert!(!docs.is_empty(), "no manifests found in k8s/");
    docs
}

/// The file names in k8s/ (it has no subdirectories).
fn files_in_k8s() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert!(
                e.file_type().unwrap().is_file(),
                "k8s/ holds files only; {:?} is not one",
                e.path()
            );
            e.file_name().into_string().unwrap()
        })
        .collect();
    files.sort();
    files
}

/// The parsed manifests, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    ingresses: Vec<Ingress>,
    network_policies: Vec<NetworkPolicy>,
    claims: Vec<PersistentVolumeClaim>,
}

/// Parses `value` as `T`, then checks that writing it back gives the same
/// JSON: k8s-openapi skips fields it does not know, so a misspelt or
/// misplaced field shows up as one missing from the round trip.
fn typed<T: DeserializeOwned + serde::Serialize>(place: &str, value: &Value) -> T {
    let parsed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{place}: not a valid {}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&parsed).unwrap();
    if let Some(diff) = first_difference(value, &back, "") {
        panic!("{place}: {diff} (an unknown or misplaced field?)");
    }
    parsed
}

/// Where `written` and `read_back` first differ, as a path and both sides.
fn first_difference(written: &Value, read_back: &Value, path: &str) -> Option<String> {
    match (written, read_back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = format!("{path}.{k}");
                match b.get(k) {
                    None => return Some(format!("field {here} is not part of the schema")),
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("field {path}.{k} appeared in the round trip"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        _ if written == read_back => None,
        _ => Some(format!("{path}: wrote {written}, read back {read_back}")),
    }
}

fn parse(doc: &Doc, into: &mut Manifests) {
    let (place, v) = (doc.place.as_str(), &doc.value);
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => into.namespaces.push(typed(place, v)),
        ("v1", "ServiceAccount") => into.service_accounts.push(typed(place, v)),
        ("rbac.authorization.k8s.io/v1", "Role") => into.roles.push(typed(place, v)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => into.role_bindings.push(typed(place, v)),
        ("apps/v1", "Deployment") => into.deployments.push(typed(place, v)),
        ("v1", "Service") => into.services.push(typed(place, v)),
        ("networking.k8s.io/v1", "Ingress") => into.ingresses.push(typed(place, v)),
        ("networking.k8s.io/v1", "NetworkPolicy") => into.network_policies.push(typed(place, v)),
        ("v1", "PersistentVolumeClaim") => into.claims.push(typed(place, v)),
        ("v1", "Secret") => panic!("{place}: a Secret is committed; create it by hand instead"),
        (_, "ClusterRole" | "ClusterRoleBinding") => {
            panic!("{place}: sluice needs no cluster-wide rights")
        }
        _ => panic!("{place}: {api_version} {kind} is not a kind this test knows; add it"),
    }
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for doc in documents() {
        let kind = doc.value["kind"].as_str().unwrap_or_default().to_string();
        if kind != "Namespace" {
            let ns = doc.value["metadata"]["namespace"].as_str();
            assert!(
                ns.is_some_and(|ns| !ns.is_empty()),
                "{}: names no namespace (the kustomization sets none)",
                doc.place
            );
        }
        parse(&doc, &mut m);
    }
    m
}

fn config() -> Config {
    let path = k8s_dir().join("config.toml");
    Config::parse(&read(&path), &path).unwrap_or_else(|e| panic!("{e}"))
}

fn kustomization() -> Value {
    let text = read(&k8s_dir().join("kustomization.yaml"));
    serde_yaml::from_str(&text).expect("kustomization.yaml is YAML")
}

fn deployment(m: &Manifests) -> &Deployment {
    assert_eq!(m.deployments.len(), 1, "one Deployment");
    &m.deployments[0]
}

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .expect("a pod spec")
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

// ---- every file ------------------------------------------------------------

#[test]
fn every_manifest_parses_into_kubernetes_types_without_leftovers() {
    let m = manifests();
    assert_eq!(m.namespaces.len(), 2);
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.roles.len(), 1);
    assert_eq!(m.role_bindings.len(), 1);
    assert_eq!(m.deployments.len(), 1);
    assert_eq!(m.services.len(), 1);
    assert_eq!(m.ingresses.len(), 1);
    assert_eq!(m.network_policies.len(), 2);
    assert_eq!(m.claims.len(), 1);
}

#[test]
fn the_round_trip_catches_a_misspelt_field() {
    let docs = documents();
    let doc = docs
        .iter()
        .find(|d| d.value["kind"] == "Deployment")
        .unwrap();
    typed::<Deployment>(&doc.place, &doc.value);

    let mut typo = doc.value.clone();
    let sc = &mut typo["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    let v = sc
        .as_object_mut()
        .unwrap()
        .remove("readOnlyRootFilesystem")
        .unwrap();
    sc["readOnlyRootFilesytem"] = v;
    let caught = std::panic::catch_unwind(|| typed::<Deployment>("typo", &typo));
    let message = *caught
        .expect_err("the typo went unnoticed")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains("readOnlyRootFilesytem"), "{message}");

    // A field in the wrong place, too.
    let mut misplaced = doc.value.clone();
    misplaced["spec"]["template"]["spec"]["readOnlyRootFilesystem"] = json!(true);
    assert!(std::panic::catch_unwind(|| typed::<Deployment>("misplaced", &misplaced)).is_err());
}

#[test]
fn the_kustomization_lists_every_file() {
    let k = kustomization();
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    assert!(
        k.get("namespace").is_none(),
        "a kustomization namespace would move sluice-jobs' objects"
    );
    let mut listed = BTreeSet::new();
    for r in k["resources"].as_array().expect("resources") {
        assert!(
            listed.insert(r.as_str().unwrap().to_string()),
            "{r} listed twice"
        );
    }
    for generator in k["configMapGenerator"].as_array().into_iter().flatten() {
        for f in generator["files"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            // `key=file` names the key; the file is what must exist.
            listed.insert(f.rsplit('=').next().unwrap().to_string());
        }
    }
    let present: BTreeSet<String> = files_in_k8s()
        .into_iter()
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml vs the files in k8s/");

    // The image it sets is the Deployment's.
    let m = manifests();
    let image = pod_spec(deployment(&m)).containers[0]
        .image
        .clone()
        .unwrap();
    let images = k["images"].as_array().expect("images");
    assert!(
        images.iter().any(|i| i["name"] == image.as_str()),
        "{image}"
    );
}

// ---- RBAC --------------------------------------------------------------------

#[test]
fn the_role_grants_exactly_the_expected_permissions() {
    let m = manifests();
    let role = &m.roles[0];
    let config = config();
    let jobs_ns = &config.executor.kubernetes.namespace;
    assert_eq!(
        namespace_of(&role.metadata),
        jobs_ns,
        "the Role is in the namespace the Jobs run in"
    );
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for word in [group, resource, verb] {
                        assert!(!word.contains('*'), "wildcard in {rule:?}");
                    }
                    assert!(
                        granted.insert((group.clone(), resource.clone(), verb.clone())),
                        "granted twice: {group} {resource} {verb}"
                    );
                }
            }
        }
    }
    assert_eq!(granted, expected_permissions());

    // Bound to sluice's own service account, the one the Deployment uses.
    let binding = &m.role_bindings[0];
    assert_eq!(namespace_of(&binding.metadata), jobs_ns);
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let d = deployment(&m);
    let sa = &m.service_accounts[0];
    let subjects = binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    assert_eq!(sa.metadata.namespace, d.metadata.namespace);
    assert_eq!(
        pod_spec(d).service_account_name.as_ref(),
        sa.metadata.name.as_ref()
    );
}

/// The verbs an API method of kube's `Api` needs, by method name.
fn verbs_of_method(resource: &str, method: &str) -> Vec<(String, String)> {
    let one = |r: &str, v: &str| vec![(r.to_string(), v.to_string())];
    match method {
        "clone" => vec![],
        "create" => one(resource, "create"),
        "get" | "get_opt" | "get_metadata" => one(resource, "get"),
        "list" | "list_metadata" => one(resource, "list"),
        "watch" | "watch_metadata" => one(resource, "watch"),
        "delete" => one(resource, "delete"),
        "delete_collection" => one(resource, "deletecollection"),
        "patch" | "patch_metadata" => one(resource, "patch"),
        "replace" => one(resource, "update"),
        "patch_status" => one(&format!("{resource}/status"), "patch"),
        "replace_status" => one(&format!("{resource}/status"), "update"),
        "get_status" => one(&format!("{resource}/status"), "get"),
        "logs" | "log_stream" => one(&format!("{resource}/log"), "get"),
        "evict" => one(&format!("{resource}/eviction"), "create"),
        "exec" | "attach" => one(&format!("{resource}/{method}"), "create"),
        other => panic!("map kube's Api::{other} to its RBAC verb in this test"),
    }
}

/// The permissions the executor's source asks for: every method called on
/// its `jobs` and `pods` APIs, and the watcher over them.
fn permissions_in_source() -> BTreeSet<Permission> {
    let path = root().join("src/executor/kubernetes.rs");
    let source: String = read(&path)
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let apis = [
        ("jobs", "batch", "jobs"),
        ("pods", "", "pods"),
        ("secrets", "", "secrets"),
    ];
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (field, group, resource) in apis {
        let needle = format!(".{field}.");
        for (at, _) in source.match_indices(&needle) {
            let method = ident(&source[at + needle.len()..]);
            for (r, v) in verbs_of_method(resource, &method) {
                found.insert((group.to_string(), r, v));
            }
        }
        // kube::runtime::watcher lists, then watches.
        let watched = format!("watcher(self.{field}.");
        if source.contains(&watched) {
            for v in ["list", "watch"] {
                found.insert((group.to_string(), resource.to_string(), v.to_string()));
            }
        }
    }
    // No API over anything else, anywhere in sluice.
    let mut kinds = BTreeSet::new();
    for file in rust_files(&root().join("src")) {
        let text: String = read(&file).chars().filter(|c| !c.is_whitespace()).collect();
        for (at, _) in text.match_indices("Api<") {
            kinds.insert(ident(&text[at + 4..]));
        }
        assert!(
            !text.contains("watcher(Api::") && !text.contains("Api::all("),
            "{}: a cluster-wide or unnamed API",
            file.display()
        );
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["Job".to_string(), "Pod".to_string(), "Secret".to_string()]),
        "sluice uses the API of other kinds: update the Role and this test"
    );
    found
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

#[test]
fn rbac_rules_are_what_the_code_calls() {
    assert_eq!(
        permissions_in_source(),
        expected_permissions(),
        "the executor's API calls changed: update EXPECTED_RULES and k8s/rbac.yaml"
    );
}

/// The permission a request needs, as the API server's authorizer sees it.
fn permission_of(method: &Method, path: &str, query: &BTreeMap<String, String>) -> Permission {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not a resource path: {path}"),
    };
    let (resource, named) = match rest {
        ["namespaces", _, resource] => (resource.to_string(), false),
        ["namespaces", _, resource, _name] => (resource.to_string(), true),
        ["namespaces", _, resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("not a namespaced resource path: {path}"),
    };
    let verb = match (method.as_str(), named) {
        ("GET", false) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        ("GET", false) => "list",
        ("GET", true) if query.get("watch").is_some_and(|w| w == "true") => "watch",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        (m, _) => panic!("unexpected method {m} {path}"),
    };
    (group.to_string(), resource, verb.to_string())
}

fn fixture(name: &str) -> Value {
    let path = root().join(format!("testdata/kubernetes/{name}.json"));
    serde_json::from_str(&read(&path)).unwrap()
}

fn job_spec(build: &str) -> JobSpec {
    let sha = |c: char| Sha::parse(&c.to_string().repeat(40)).unwrap();
    JobSpec {
        build: BuildId::parse(build).unwrap(),
        candidate: Candidate {
            car: None,
            repo: RepoName::parse("octo/demo").unwrap(),
            target_branch: "main".into(),
            target_sha: sha('b'),
            prs: vec![CandidatePr {
                number: 7,
                head_sha: sha('a'),
                head_ref: "feature".into(),
            }],
        },
        clone_url: "https://github.com/octo/demo.git".into(),
        command: vec!["make".into(), "test".into()],
        timeout: Duration::from_secs(600),
        clone_token: None,
        mint_token: None,
    }
}

/// Drives the executor, configured from k8s/config.toml, through its whole
/// life against the fake API (a build that finishes, one whose Job name is
/// taken, one cancelled, a re-list, a restart's adoption) and checks that
/// every request it sent is allowed by the Role, in the Jobs' namespace,
/// and that together they use every permission the Role grants.
#[tokio::test]
async fn rbac_covers_every_request_the_executor_sends() {
    let config = config();
    let mut k = config.executor.kubernetes.clone();
    k.relist_interval_secs = 1;
    k.api_timeout_secs = 5;
    let ns = k.namespace.clone();
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let fake = FakeKube::new(&ns);
    tokio::spawn(fake.clone().serve_tower(handle));
    let client = kube::Client::new(service, ns.clone());
    let ex = KubernetesExecutor::new(client, &k, HashMap::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();

    // A build that passes: create, watch, pods list, pods/log, patch.
    ex.start(job_spec("m-1"), tx.clone());
    fake.wait_for(Method::POST, "/jobs").await;
    let mut pod = fixture("pod-succeeded");
    pod["metadata"]["name"] = json!("sluice-m-1-x7k2p");
    pod["metadata"]["namespace"] = json!(ns);
    pod["metadata"]["labels"]["sluice.dev/build"] = json!("m-1");
    fake.put_pod(pod);
    fake.set_log("sluice-m-1-x7k2p", "prepare", "ready\n");
    fake.set_log("sluice-m-1-x7k2p", "test", "ok\n");
    fake.set_job_status("sluice-m-1", fixture("job-complete")["status"].clone());
    let done = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a result")
        .unwrap();
    assert_eq!(done.build.as_str(), "m-1");
    fake.wait_for(Method::PATCH, "/jobs/sluice-m-1").await;

    // A Job name already taken: create answers 409, sluice reads the Job.
    fake.force(
        Method::POST,
        &format!("/apis/batch/v1/namespaces/{ns}/jobs"),
        409,
    );
    ex.start(job_spec("m-2"), tx.clone());
    fake.wait_for(Method::GET, "/jobs/sluice-m-2").await;

    // A build with a clone token: its Secret, then the Job resumed.
    let mut private = job_spec("m-4");
    private.clone_token = Some(sluice::executor::CloneToken::new("ghs_x".into()));
    ex.start(private, tx.clone());
    fake.wait_for(Method::PATCH, "/jobs/sluice-m-4").await;

    // A cancelled build: delete.
    ex.start(job_spec("m-3"), tx.clone());
    while fake.job("sluice-m-3").is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ex.cancel(&BuildId::parse("m-3").unwrap());
    fake.wait_for(Method::DELETE, "/jobs/sluice-m-3").await;

    // The periodic re-list, and a restart's adoption (list jobs).
    let relisted = |f: &FakeKube| {
        f.requests()
            .iter()
            .any(|r| r.path.ends_with("/pods") && !r.query.contains_key("watch"))
    };
    for _ in 0..300 {
        if relisted(&fake) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ex.adopt(&|_, _| true, tx.clone()).await.unwrap();
    drop(ex);

    let mut seen = BTreeSet::new();
    for r in fake.requests() {
        assert!(
            r.path.contains(&format!("/namespaces/{ns}/")),
            "a request outside the Jobs' namespace: {} {}",
            r.method,
            r.path
        );
        seen.insert(permission_of(&r.method, &r.path, &r.query));
    }
    let granted = expected_permissions();
    let denied: Vec<_> = seen.difference(&granted).collect();
    assert!(
        denied.is_empty(),
        "requests the Role would refuse: {denied:?}"
    );
    let unused: Vec<_> = granted.difference(&seen).collect();
    assert!(unused.is_empty(), "permissions never used: {unused:?}");
}

// ---- the Deployment --------------------------------------------------------

#[test]
fn the_deployment_is_one_hardened_replica() {
    let m = manifests();
    let d = deployment(&m);
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1), "one writer of the journal");
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "never two pods at once"
    );
    let pod = pod_spec(d);
    assert_eq!(
        pod.automount_service_account_token,
        Some(true),
        "sluice's kube client needs its token"
    );
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.is_some_and(|u| u > 0));
    assert!(psc.fs_group.is_some(), "the volume must be writable");
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert!(pod.init_containers.is_none());
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert!(caps.add.is_none());

    let resources = c.resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));

    // Probes on /healthz, on the port sluice listens on.
    let config = config();
    let port = config.server.listen.port();
    assert!(
        config.server.listen.ip().is_unspecified(),
        "sluice must listen on the pod's address, not loopback"
    );
    let ports = c.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].container_port, i32::from(port));
    let port_name = ports[0].name.clone().unwrap();
    for (what, probe) in [
        ("liveness", &c.liveness_probe),
        ("readiness", &c.readiness_probe),
        ("startup", &c.startup_probe),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("no {what} probe over HTTP"));
        assert_eq!(get.path.as_deref(), Some("/healthz"), "{what}");
        assert_eq!(get.port, IntOrString::String(port_name.clone()), "{what}");
    }
}

#[test]
fn the_deployment_mounts_config_and_state_where_the_config_says() {
    let m = manifests();
    let d = deployment(&m);
    let pod = pod_spec(d);
    let c = &pod.containers[0];
    let mounts = c.volume_mounts.as_ref().unwrap();
    let volume = |name: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };

    // The configuration: the generated ConfigMap, at CONFIG_PATH.
    let (dir, file) = CONFIG_PATH.rsplit_once('/').unwrap();
    let mount = mounts.iter().find(|m| m.mount_path == dir).expect(dir);
    assert_eq!(mount.read_only, Some(true));
    let cm = volume(&mount.name)
        .config_map
        .as_ref()
        .expect("a ConfigMap");
    let items = cm.items.as_ref().unwrap();
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        (file, file)
    );
    let k = kustomization();
    let generator = k["configMapGenerator"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == cm.name.as_str())
        .expect("the ConfigMap is generated by the kustomization");
    assert_eq!(generator["namespace"], namespace_of(&d.metadata));
    assert_eq!(generator["files"], json!([file]));
    let dockerfile = read(&root().join("Dockerfile"));
    let entrypoint = dockerfile
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("an ENTRYPOINT");
    assert!(
        entrypoint.contains(&format!("\"{CONFIG_PATH}\"")),
        "{entrypoint}"
    );
    assert!(entrypoint.contains("\"serve\""), "{entrypoint}");
    assert!(
        c.command.is_none() && c.args.is_none(),
        "the image's ENTRYPOINT runs"
    );

    // Everything sluice writes is on a writable volume (the root filesystem
    // is read-only); the journal and the spool on the claim.
    let config = config();
    let writable = |path: &Path| {
        mounts
            .iter()
            .filter(|m| m.read_only != Some(true) && path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .map(|m| volume(&m.name))
    };
    let claim = &m.claims[0];
    for (key, path) in [
        ("state.dir", &config.state.dir),
        ("results.dir", &config.results.dir),
    ] {
        assert!(path.is_absolute(), "{key}");
        let v = writable(path).unwrap_or_else(|| panic!("{key} is on no writable volume"));
        let pvc = v
            .persistent_volume_claim
            .as_ref()
            .unwrap_or_else(|| panic!("{key} must survive restarts: not on the claim"));
        assert_eq!(Some(&pvc.claim_name), claim.metadata.name.as_ref());
        assert_eq!(claim.metadata.namespace, d.metadata.namespace);
    }
    let access = claim.spec.as_ref().unwrap().access_modes.clone().unwrap();
    assert_eq!(access, vec!["ReadWriteOnce".to_string()]);
}

#[test]
fn secrets_are_referenced_but_not_committed() {
    // documents() refuses a Secret of any name; none hides in other files.
    for file in files_in_k8s() {
        let text = read(&k8s_dir().join(&file));
        assert!(!text.contains("kind: Secret"), "k8s/{file}");
    }
    let m = manifests();
    let c = &pod_spec(deployment(&m)).containers[0];
    assert!(c.env_from.is_none());
    let mut from_secret = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let Some(r) = e
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
        else {
            let upper = e.name.to_ascii_uppercase();
            assert!(
                !upper.contains("TOKEN") && !upper.contains("SECRET"),
                "{} must come from the Secret",
                e.name
            );
            continue;
        };
        assert_eq!(r.name, SECRET, "{}", e.name);
        from_secret.insert(e.name.clone(), (r.key.clone(), r.optional));
    }
    let key = |k: &str| k.to_string();
    assert_eq!(
        from_secret,
        BTreeMap::from([
            (ENV_GITHUB_TOKEN.to_string(), (key("github-token"), None)),
            (
                ENV_WEBHOOK_SECRET.to_string(),
                (key("webhook-secret"), None)
            ),
            (ENV_API_TOKEN.to_string(), (key("api-token"), Some(true))),
        ])
    );
    // The README says how to create it, with the same keys.
    let readme = read(&root().join("README.md"));
    assert!(
        readme.contains(&format!("create secret generic {SECRET}")),
        "README: how to create the Secret"
    );
    for (k, _) in from_secret.values() {
        assert!(
            readme.contains(&format!("--from-literal={k}=")),
            "README: key {k}"
        );
    }
}

// ---- the configuration -----------------------------------------------------

#[test]
fn the_config_map_config_passes_validation_and_fits_the_manifests() {
    let config = config();
    assert_eq!(config.executor.kind, ExecutorKind::Kubernetes);
    assert_eq!(config.executor.kubernetes.kubeconfig, None, "in-cluster");
    assert_eq!(config.results.kind, ResultsKind::Gcs);
    let gcs = config.results.gcs.as_ref().unwrap();
    assert_eq!(gcs.endpoint, None, "Google's endpoint, default credentials");

    let m = manifests();
    let jobs_ns = &config.executor.kubernetes.namespace;
    let names: Vec<&str> = m
        .namespaces
        .iter()
        .map(|n| n.metadata.name.as_deref().unwrap())
        .collect();
    assert!(names.contains(&jobs_ns.as_str()), "{jobs_ns} is created");
    let sluice_ns = namespace_of(&deployment(&m).metadata);
    assert!(names.contains(&sluice_ns));
    assert_ne!(sluice_ns, jobs_ns, "PR code runs apart from sluice");
    for n in &m.namespaces {
        let labels = n.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels
                .get("pod-security.kubernetes.io/enforce")
                .map(String::as_str),
            Some("restricted"),
            "{:?}",
            n.metadata.name
        );
    }

    // The Ingress serves the public URL's host, and /results only when
    // links point at sluice.
    let url = &config.server.public_url;
    let host = url
        .trim_start_matches("https://")
        .split(['/', ':'])
        .next()
        .unwrap();
    assert!(url.starts_with("https://"), "{url}");
    let ingress = m.ingresses[0].spec.as_ref().unwrap();
    let rules = ingress.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].host.as_deref(), Some(host));
    let tls_hosts = ingress.tls.as_ref().unwrap()[0].hosts.clone().unwrap();
    assert_eq!(tls_hosts, vec![host.to_string()]);
    let paths: Vec<(String, String)> = rules[0]
        .http
        .as_ref()
        .unwrap()
        .paths
        .iter()
        .map(|p| (p.path.clone().unwrap(), p.path_type.clone()))
        .collect();
    let mut expected = vec![("/webhook".to_string(), "Exact".to_string())];
    if gcs.link == GcsLink::Sluice {
        expected.push(("/results".to_string(), "Prefix".to_string()));
    }
    assert_eq!(paths, expected, "only the webhook (and result pages)");
    let service = &m.services[0];
    let service_port = &service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    for p in &rules[0].http.as_ref().unwrap().paths {
        let backend = p.backend.service.as_ref().unwrap();
        assert_eq!(Some(&backend.name), service.metadata.name.as_ref());
        let port = backend.port.as_ref().unwrap();
        assert_eq!(port.name, service_port.name);
    }
    // The Service targets the container's port, and selects its pod.
    let c = &pod_spec(deployment(&m)).containers[0];
    let container_port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(
        service_port.target_port,
        Some(IntOrString::String(container_port.name.clone().unwrap()))
    );
    let pod_labels = deployment(&m)
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in service.spec.as_ref().unwrap().selector.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v));
    }
}

// ---- network policies ------------------------------------------------------

#[test]
fn test_pods_accept_no_connections_and_sluice_only_on_its_port() {
    let config = config();
    let m = manifests();
    let jobs_ns = &config.executor.kubernetes.namespace;

    // A Job as sluice builds it with this configuration.
    let job = manifest::build_job(
        &job_spec("np-1"),
        &JobSettings::new(&config.executor.kubernetes, None),
    );
    assert_eq!(job.metadata.namespace.as_ref(), Some(jobs_ns));
    let template = &job.spec.as_ref().unwrap().template;
    let pod_labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(
        pod_labels.get(MANAGED_BY).map(String::as_str),
        Some(MANAGED_BY_VALUE)
    );

    let deny = m
        .network_policies
        .iter()
        .find(|p| namespace_of(&p.metadata) == jobs_ns)
        .expect("a NetworkPolicy in the Jobs' namespace");
    let spec = deny.spec.as_ref().unwrap();
    let selector = spec.pod_selector.as_ref().unwrap();
    assert!(selector.match_expressions.is_none());
    let match_labels = selector.match_labels.as_ref().unwrap();
    assert_eq!(
        match_labels,
        &BTreeMap::from([(MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string())])
    );
    for (k, v) in match_labels {
        assert_eq!(pod_labels.get(k), Some(v), "selects sluice's test pods");
    }
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    assert!(
        spec.ingress.as_ref().is_none_or(Vec::is_empty),
        "no ingress allowed at all"
    );

    // The namespace enforces the restricted Pod Security Standard: sluice's
    // test pods must meet it, or every Job would be refused.
    let pod = template.spec.as_ref().unwrap();
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_ne!(sc.privileged, Some(true), "{}", c.name);
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{}", c.name);
        assert!(caps.add.is_none(), "{}", c.name);
    }
    for v in pod.volumes.iter().flatten() {
        assert!(v.host_path.is_none(), "{}", v.name);
    }
    assert_eq!(pod.automount_service_account_token, Some(false));

    // sluice: its pod, its port, nothing else.
    let d = deployment(&m);
    let allow = m
        .network_policies
        .iter()
        .find(|p| p.metadata.namespace == d.metadata.namespace)
        .expect("a NetworkPolicy for sluice");
    let spec = allow.spec.as_ref().unwrap();
    let template_labels = d
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in spec
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap()
    {
        assert_eq!(template_labels.get(k), Some(v));
    }
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let ingress = spec.ingress.as_ref().unwrap();
    assert_eq!(ingress.len(), 1);
    let ports = ingress[0].ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        ports[0].port,
        Some(IntOrString::Int(i32::from(config.server.listen.port())))
    );
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    // Test pods (PR code) cannot call sluice: its JSON views list every PR
    // it tracks. Every peer is a namespace selector that leaves out the
    // Jobs' namespace.
    let peers = ingress[0].from.as_ref().expect("`from` is restricted");
    assert!(!peers.is_empty());
    for peer in peers {
        assert!(peer.ip_block.is_none() && peer.pod_selector.is_none());
        let expressions = peer
            .namespace_selector
            .as_ref()
            .and_then(|n| n.match_expressions.as_ref())
            .expect("a namespace selector");
        assert!(
            expressions
                .iter()
                .any(|e| e.key == "kubernetes.io/metadata.name"
                    && e.operator == "NotIn"
                    && e.values.as_ref().is_some_and(|v| v.contains(jobs_ns))),
            "{expressions:?} must leave out {jobs_ns}"
        );
    }
}
