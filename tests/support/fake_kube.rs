//! A small in-memory Kubernetes API for Jobs and Pods in one namespace:
//! create, get, list and watch (with resourceVersion), merge-patch,
//! delete, and pods/log; Secrets can be created (and are deleted with the
//! Job that owns them, as the garbage collector does); a suspended Job
//! runs once it is resumed. It speaks the real JSON, so sluice's real kube
//! client (watcher included) runs against it. Tests drive the cluster's
//! side by hand: they set a Job's status, add its pod, give containers
//! logs, and read back every request sluice sent.
//!
//! `serve_tower` answers a `tower_test::mock` handle; the handler itself
//! works on plain `http` types so an HTTP server can reuse it.

#![allow(dead_code)]

use http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a watch request is held open when nothing happens.
const WATCH_HOLD: Duration = Duration::from_millis(300);

/// One request sluice sent.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    jobs: BTreeMap<String, Value>,
    pods: BTreeMap<String, Value>,
    secrets: BTreeMap<String, Value>,
    logs: HashMap<(String, String), Vec<u8>>,
    /// (resourceVersion, type, object) of every Job change.
    events: Vec<(u64, &'static str, Value)>,
    requests: Vec<Recorded>,
    /// Answers to force for the next requests matching (method, path prefix).
    forced: Vec<(Method, String, u16)>,
    /// Answers to force after carrying the request out (an answer lost on
    /// its way back), for the next requests matching.
    forced_after: Vec<(Method, String, u16)>,
    /// Where the fake kubelet runs jobs, when it runs them.
    kubelet: Option<std::path::PathBuf>,
    /// Jobs the kubelet is running; aborting one kills its process.
    running: HashMap<String, tokio::task::AbortHandle>,
}

#[derive(Clone)]
pub struct FakeKube {
    pub namespace: String,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Civil time from days since the epoch (Howard Hinnant's algorithm).
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl FakeKube {
    pub fn new(namespace: &str) -> FakeKube {
        FakeKube {
            namespace: namespace.to_string(),
            state: Arc::new(Mutex::new(State {
                rv: 100,
                ..State::default()
            })),
            changed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The requests with this method whose path ends with `suffix`.
    pub fn requests_to(&self, method: Method, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.ends_with(suffix))
            .collect()
    }

    /// Waits until a request like that has arrived (at most 10 s).
    pub async fn wait_for(&self, method: Method, suffix: &str) -> Recorded {
        for _ in 0..1000 {
            if let Some(r) = self.requests_to(method.clone(), suffix).pop() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no {method} ..{suffix} arrived; got {:#?}", self.summary());
    }

    pub fn summary(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// The next request `method` to a path starting with `prefix` gets
    /// `status` (with a Status body) instead of its normal answer.
    pub fn force(&self, method: Method, prefix: &str, status: u16) {
        self.lock()
            .forced
            .push((method, prefix.to_string(), status));
    }

    /// The next request `method` to a path starting with `prefix` is
    /// carried out, but answered `status` (as a proxy whose upstream
    /// timed out after doing it).
    pub fn force_after(&self, method: Method, prefix: &str, status: u16) {
        self.lock()
            .forced_after
            .push((method, prefix.to_string(), status));
    }

    pub fn job(&self, name: &str) -> Option<Value> {
        self.lock().jobs.get(name).cloned()
    }

    pub fn secret(&self, name: &str) -> Option<Value> {
        self.lock().secrets.get(name).cloned()
    }

    /// Puts a Job in the cluster as is (a Job a previous sluice started).
    pub fn insert_job(&self, mut job: Value) {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        job["metadata"]["resourceVersion"] = json!(rv.to_string());
        if job["metadata"]["creationTimestamp"].is_null() {
            job["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        }
        let name = job["metadata"]["name"].as_str().unwrap().to_string();
        let kind = if st.jobs.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.events.push((rv, kind, job.clone()));
        st.jobs.insert(name, job);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Sets a Job's status, as the Job controller would.
    pub fn set_job_status(&self, name: &str, status: Value) {
        let mut job = self.job(name).expect("no such job");
        job["status"] = status;
        self.insert_job(job);
    }

    /// Sets a Job's status without a watch event (one the watch missed).
    pub fn set_job_status_quietly(&self, name: &str, status: Value) {
        let mut st = self.lock();
        if let Some(job) = st.jobs.get_mut(name) {
            job["status"] = status;
        }
    }

    /// Removes a Job as someone else (or a TTL) would.
    pub fn remove_job(&self, name: &str) {
        let mut st = self.lock();
        if let Some(run) = st.running.remove(name) {
            run.abort();
        }
        st.pods
            .retain(|_, p| p["metadata"]["labels"]["job-name"].as_str() != Some(name));
        if let Some(mut job) = st.jobs.remove(name) {
            // The garbage collector: what the Job owned goes with it.
            let uid = job["metadata"]["uid"].clone();
            st.secrets.retain(|_, secret| {
                !secret["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|o| o["uid"] == uid)
            });
            st.rv += 1;
            let rv = st.rv;
            job["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.events.push((rv, "DELETED", job));
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Adds (or replaces) a pod; its labels decide which Job it belongs to.
    pub fn put_pod(&self, pod: Value) {
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        self.lock().pods.insert(name, pod);
    }

    pub fn set_log(&self, pod: &str, container: &str, text: &str) {
        self.lock()
            .logs
            .insert((pod.into(), container.into()), text.as_bytes().to_vec());
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Vec<u8>>) -> Response<Vec<u8>> {
        let lost = {
            let mut st = self.lock();
            let path = req.uri().path();
            st.forced_after
                .iter()
                .position(|(m, p, _)| m == req.method() && path.starts_with(p.as_str()))
                .map(|i| st.forced_after.remove(i).2)
        };
        let answer = self.answer(req).await;
        match lost {
            Some(code) => status(code, "Forced", "the answer was lost (forced by the test)"),
            None => answer,
        }
    }

    async fn answer(&self, req: Request<Vec<u8>>) -> Response<Vec<u8>> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                url_decode_pairs(q)
                    .into_iter()
                    .collect::<BTreeMap<String, String>>()
            })
            .unwrap_or_default();
        let body: Option<Value> = if req.body().is_empty() {
            None
        } else {
            serde_json::from_slice(req.body()).ok()
        };
        {
            let mut st = self.lock();
            st.requests.push(Recorded {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                body: body.clone(),
            });
            if let Some(i) = st
                .forced
                .iter()
                .position(|(m, p, _)| *m == method && path.starts_with(p.as_str()))
            {
                let (_, _, code) = st.forced.remove(i);
                return status(code, "Forced", "forced by the test");
            }
        }
        let jobs = format!("/apis/batch/v1/namespaces/{}/jobs", self.namespace);
        let pods = format!("/api/v1/namespaces/{}/pods", self.namespace);
        let secrets = format!("/api/v1/namespaces/{}/secrets", self.namespace);
        if path == secrets && method == Method::POST {
            let secret = body.unwrap_or(Value::Null);
            let name = secret["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let mut st = self.lock();
            if st.secrets.contains_key(&name) {
                let message = format!("secrets \"{name}\" already exists");
                return status(409, "AlreadyExists", &message);
            }
            st.secrets.insert(name, secret.clone());
            return Response::builder()
                .status(201)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&secret).unwrap())
                .unwrap();
        }
        if let Some(rest) = path.strip_prefix(&jobs) {
            let name = rest.trim_start_matches('/');
            match (method.clone(), name.is_empty()) {
                (Method::GET, true) if query.get("watch").is_some_and(|w| w == "true") => {
                    self.watch(&query).await
                }
                (Method::GET, true) => {
                    let st = self.lock();
                    let items: Vec<Value> = st
                        .jobs
                        .values()
                        .filter(|j| selects(&query, j))
                        .cloned()
                        .collect();
                    ok(json!({
                        "apiVersion": "batch/v1", "kind": "JobList",
                        "metadata": {"resourceVersion": st.rv.to_string()},
                        "items": items,
                    }))
                }
                (Method::POST, true) => self.create_job(body.unwrap_or(Value::Null)),
                (Method::GET, false) => match self.job(name) {
                    Some(j) => ok(j),
                    None => not_found(name),
                },
                (Method::PATCH, false) => {
                    let Some(mut job) = self.job(name) else {
                        return not_found(name);
                    };
                    let was_suspended = job["spec"]["suspend"] == json!(true);
                    merge(&mut job, body.unwrap_or(Value::Null));
                    self.insert_job(job.clone());
                    if was_suspended && job["spec"]["suspend"] != json!(true) {
                        self.run_with_kubelet(name);
                    }
                    ok(self.job(name).unwrap_or(job))
                }
                (Method::DELETE, false) => {
                    let Some(job) = self.job(name) else {
                        return not_found(name);
                    };
                    self.remove_job(name);
                    ok(job)
                }
                _ => status(405, "MethodNotAllowed", "not supported by the fake"),
            }
        } else if let Some(rest) = path.strip_prefix(&pods) {
            let rest = rest.trim_start_matches('/');
            if rest.is_empty() && method == Method::GET {
                let st = self.lock();
                let items: Vec<Value> = st
                    .pods
                    .values()
                    .filter(|p| selects(&query, p))
                    .cloned()
                    .collect();
                return ok(json!({
                    "apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": st.rv.to_string()},
                    "items": items,
                }));
            }
            if let Some(pod) = rest.strip_suffix("/log") {
                let container = query.get("container").cloned().unwrap_or_default();
                let st = self.lock();
                if !st.pods.contains_key(pod) {
                    return not_found(pod);
                }
                let mut log = st
                    .logs
                    .get(&(pod.to_string(), container))
                    .cloned()
                    .unwrap_or_default();
                if let Some(limit) = query.get("limitBytes").and_then(|l| l.parse().ok()) {
                    log.truncate(limit);
                }
                return Response::builder()
                    .status(200)
                    .header("content-type", "text/plain")
                    .body(log)
                    .unwrap();
            }
            status(404, "NotFound", "not supported by the fake")
        } else {
            status(404, "NotFound", "not supported by the fake")
        }
    }

    fn create_job(&self, mut job: Value) -> Response<Vec<u8>> {
        let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
        if self.job(&name).is_some() {
            return status(
                409,
                "AlreadyExists",
                &format!("jobs.batch \"{name}\" already exists"),
            );
        }
        job["metadata"]["uid"] = json!(format!("uid-{name}"));
        job["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        job["status"] = json!({});
        let suspended = job["spec"]["suspend"] == json!(true);
        self.insert_job(job);
        if !suspended {
            self.run_with_kubelet(&name);
        }
        let mut created = self.job(&name).unwrap();
        created["kind"] = json!("Job");
        created["apiVersion"] = json!("batch/v1");
        Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&created).unwrap())
            .unwrap()
    }

    /// Has the fake kubelet (if any) run the Job's pod.
    fn run_with_kubelet(&self, name: &str) {
        let root = self.lock().kubelet.clone();
        if let Some(root) = root {
            let run = tokio::spawn(self.clone().run_job(name.to_string(), root.join(name)));
            self.lock()
                .running
                .insert(name.to_string(), run.abort_handle());
        }
    }

    /// Answers a watch with the events after its resourceVersion, holding
    /// it open a little while when there are none yet.
    async fn watch(&self, query: &BTreeMap<String, String>) -> Response<Vec<u8>> {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for round in 0..2 {
            let notified = self.changed.notified();
            let lines: Vec<u8> = {
                let st = self.lock();
                st.events
                    .iter()
                    .filter(|(rv, _, obj)| *rv > from && selects(query, obj))
                    .flat_map(|(_, kind, obj)| {
                        let mut obj = obj.clone();
                        obj["kind"] = json!("Job");
                        obj["apiVersion"] = json!("batch/v1");
                        let mut line =
                            serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap();
                        line.push(b'\n');
                        line
                    })
                    .collect()
            };
            if !lines.is_empty() || round == 1 {
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(lines)
                    .unwrap();
            }
            let _ = tokio::time::timeout(WATCH_HOLD, notified).await;
        }
        unreachable!()
    }

    /// Serves a `tower_test` mock handle until it closes.
    pub async fn serve_tower(
        self,
        mut handle: tower_test::mock::Handle<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >,
    ) {
        use http_body_util::BodyExt;
        while let Some((req, send)) = handle.next_request().await {
            let fake = self.clone();
            tokio::spawn(async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes().to_vec();
                let res = fake.handle(Request::from_parts(parts, bytes)).await;
                let (parts, body) = res.into_parts();
                send.send_response(Response::from_parts(parts, kube::client::Body::from(body)));
            });
        }
    }
}

impl FakeKube {
    /// Makes the fake run the Jobs it is given, as local processes in
    /// directories under `root`: the init containers, then the test
    /// container, with exactly the containers' environment (plus PATH), the
    /// pod's `/sluice` volume mapped to a directory of its own. Pod status,
    /// logs and the Job's conditions follow, as a cluster would set them.
    pub fn with_kubelet(self, root: &std::path::Path) -> FakeKube {
        self.lock().kubelet = Some(root.to_path_buf());
        self
    }

    /// Serves the API over HTTP on 127.0.0.1 and writes a kubeconfig for
    /// it; returns the kubeconfig's path.
    pub async fn serve_http(self, dir: &std::path::Path) -> std::path::PathBuf {
        use warp::Filter;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = self.clone();
        let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
        let route = warp::any()
            .and(warp::any().map(move || fake.clone()))
            .and(warp::method())
            .and(warp::path::full())
            .and(raw_query)
            .and(warp::body::bytes())
            .then(
                |fake: FakeKube,
                 method: Method,
                 path: warp::path::FullPath,
                 query: String,
                 body: bytes::Bytes| async move {
                    let uri = if query.is_empty() {
                        path.as_str().to_string()
                    } else {
                        format!("{}?{query}", path.as_str())
                    };
                    let req = Request::builder()
                        .method(method)
                        .uri(uri)
                        .body(body.to_vec())
                        .unwrap();
                    fake.handle(req).await
                },
            );
        tokio::spawn(warp::serve(route).incoming(listener).run());
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {ns}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            ns = self.namespace
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig).unwrap();
        path
    }

    /// Names of the Jobs the kubelet is running now.
    pub fn running_jobs(&self) -> Vec<String> {
        self.lock().running.keys().cloned().collect()
    }

    /// Evicts a running Job's pod, as a kubelet short of memory or disk
    /// would: the process is killed, the pod fails with reason `Evicted`
    /// and, with backoffLimit 0, the Job fails.
    pub fn evict(&self, name: &str) {
        let pod_name = format!("{name}-fake0");
        {
            let mut st = self.lock();
            if let Some(run) = st.running.remove(name) {
                run.abort();
            }
            if let Some(pod) = st.pods.get_mut(&pod_name) {
                pod["status"]["phase"] = json!("Failed");
                pod["status"]["reason"] = json!("Evicted");
                pod["status"]["message"] = json!("The node was low on resource: memory.");
            }
        }
        let at = now_rfc3339();
        let cond = |t: &str| {
            json!({
                "type": t, "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
                "lastProbeTime": at, "lastTransitionTime": at,
            })
        };
        self.set_job_status(
            name,
            json!({"failed": 1, "conditions": [cond("FailureTarget"), cond("Failed")]}),
        );
    }

    async fn run_job(self, name: String, root: std::path::PathBuf) {
        let Some(job) = self.job(&name) else { return };
        let template = job["spec"]["template"].clone();
        let pod_name = format!("{name}-fake0");
        let mut labels = template["metadata"]["labels"].clone();
        labels["job-name"] = json!(name);
        labels["batch.kubernetes.io/job-name"] = json!(name);
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name, "namespace": self.namespace,
                "labels": labels, "creationTimestamp": now_rfc3339(),
            },
            "spec": template["spec"].clone(),
            "status": {"phase": "Running", "initContainerStatuses": [], "containerStatuses": []},
        });
        self.put_pod(pod.clone());
        std::fs::create_dir_all(&root).unwrap();
        let deadline = job["spec"]["activeDeadlineSeconds"]
            .as_u64()
            .unwrap_or(3600);
        let inits: Vec<Value> = template["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mains: Vec<Value> = template["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let fake = self.clone();
        let pod_ref = &mut pod;
        let run = async move {
            for (list, containers) in [
                ("initContainerStatuses", inits),
                ("containerStatuses", mains),
            ] {
                for c in containers {
                    let cname = c["name"].as_str().unwrap_or("").to_string();
                    // A Secret the container needs and cannot have: it
                    // waits, as a kubelet leaves it, and never runs.
                    if let Err(missing) = fake.env_of(&c) {
                        pod_ref["status"][list].as_array_mut().unwrap().push(json!({
                            "name": cname, "image": c["image"], "ready": false, "restartCount": 0,
                            "state": {"waiting": {"reason": "CreateContainerConfigError",
                                "message": format!("secret \"{missing}\" not found")}},
                        }));
                        fake.put_pod(pod_ref.clone());
                        return None;
                    }
                    // Running (its log readable) while it runs, as a
                    // kubelet reports it.
                    let started_at = now_rfc3339();
                    pod_ref["status"][list].as_array_mut().unwrap().push(json!({
                        "name": cname, "image": c["image"], "ready": true, "restartCount": 0,
                        "state": {"running": {"startedAt": started_at}},
                    }));
                    fake.put_pod(pod_ref.clone());
                    let code = fake.run_container(&pod_name, &c, &root).await;
                    let statuses = pod_ref["status"][list].as_array_mut().unwrap();
                    statuses.pop();
                    statuses.push(json!({
                        "name": cname, "image": c["image"], "ready": false, "restartCount": 0,
                        "state": {"terminated": {
                            "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                            "startedAt": started_at, "finishedAt": now_rfc3339(),
                        }},
                    }));
                    if code != 0 {
                        return Some(false);
                    }
                }
            }
            Some(true)
        };
        let passed = match tokio::time::timeout(Duration::from_secs(deadline), run).await {
            Ok(None) => {
                // Stuck waiting; the pod says why.
                self.lock().running.remove(&name);
                return;
            }
            Ok(Some(passed)) => Ok(passed),
            Err(e) => Err(e),
        };
        let at = now_rfc3339();
        let cond = |t: &str, reason: &str| {
            json!({
                "type": t, "status": "True", "reason": reason, "message": "",
                "lastProbeTime": at, "lastTransitionTime": at,
            })
        };
        let status = match passed {
            Ok(true) => {
                pod["status"]["phase"] = json!("Succeeded");
                json!({"succeeded": 1, "completionTime": at, "conditions": [
                    cond("SuccessCriteriaMet", "CompletionsReached"), cond("Complete", "CompletionsReached")]})
            }
            Ok(false) => {
                pod["status"]["phase"] = json!("Failed");
                json!({"failed": 1, "conditions": [
                    cond("FailureTarget", "BackoffLimitExceeded"), cond("Failed", "BackoffLimitExceeded")]})
            }
            Err(_) => {
                pod["status"]["phase"] = json!("Failed");
                json!({"failed": 1, "conditions": [
                    cond("FailureTarget", "DeadlineExceeded"), cond("Failed", "DeadlineExceeded")]})
            }
        };
        self.put_pod(pod);
        if self.job(&name).is_some() {
            self.set_job_status(&name, status);
        }
        self.lock().running.remove(&name);
    }

    /// A container's environment, values from Secrets resolved; `Err`
    /// names a Secret (or key) that is not there.
    fn env_of(&self, c: &Value) -> Result<Vec<(String, String)>, String> {
        use base64::Engine as _;
        let st = self.lock();
        let mut out = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or("").to_string();
            let from = &e["valueFrom"]["secretKeyRef"];
            let value = if from.is_null() {
                e["value"].as_str().unwrap_or("").to_string()
            } else {
                let secret = from["name"].as_str().unwrap_or("");
                let key = from["key"].as_str().unwrap_or("");
                let data = st
                    .secrets
                    .get(secret)
                    .and_then(|s| s["data"][key].as_str())
                    .ok_or_else(|| secret.to_string())?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|_| secret.to_string())?;
                String::from_utf8_lossy(&bytes).into_owned()
            };
            out.push((name, value));
        }
        Ok(out)
    }

    /// Runs one container as a local process; its output becomes its log.
    async fn run_container(&self, pod: &str, c: &Value, root: &std::path::Path) -> i64 {
        let remap = |v: &str| match v.strip_prefix("/sluice") {
            Some(rest) => format!("{}{rest}", root.display()),
            None => v.to_string(),
        };
        let argv: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .chain(c["args"].as_array())
            .flatten()
            .map(|a| a.as_str().unwrap_or("").to_string())
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return 128;
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).env_clear().kill_on_drop(true);
        cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
        for (name, value) in self.env_of(c).unwrap_or_default() {
            cmd.env(name, remap(&value));
        }
        let cwd = remap(c["workingDir"].as_str().unwrap_or("/sluice"));
        let _ = std::fs::create_dir_all(&cwd);
        cmd.current_dir(cwd);
        let name = c["name"].as_str().unwrap_or("");
        // As a kubelet does, the log grows while the container runs.
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let key = (pod.to_string(), name.to_string());
        self.lock().logs.insert(key.clone(), Vec::new());
        match cmd.spawn() {
            Ok(mut child) => {
                let mut readers = Vec::new();
                let outputs: [Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>; 2] = [
                    child.stdout.take().map(|o| Box::new(o) as _),
                    child.stderr.take().map(|e| Box::new(e) as _),
                ];
                for mut output in outputs.into_iter().flatten() {
                    let fake = self.clone();
                    let key = key.clone();
                    readers.push(tokio::spawn(async move {
                        use tokio::io::AsyncReadExt as _;
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = output.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            fake.lock()
                                .logs
                                .entry(key.clone())
                                .or_default()
                                .extend_from_slice(&buf[..n]);
                        }
                    }));
                }
                let status = child.wait().await;
                for reader in readers {
                    let _ = reader.await;
                }
                match status {
                    Ok(status) => i64::from(status.code().unwrap_or(137)),
                    Err(_) => 137,
                }
            }
            Err(e) => {
                self.set_log(pod, name, &format!("cannot run {program}: {e}\n"));
                128
            }
        }
    }
}

/// Whether `obj` matches the request's `labelSelector` (`k=v,k=v` only).
fn selects(query: &BTreeMap<String, String>, obj: &Value) -> bool {
    let Some(selector) = query.get("labelSelector") else {
        return true;
    };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(map) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in map {
                if v.is_null() {
                    target.as_object_mut().unwrap().remove(&k);
                } else {
                    merge(&mut target[&k], v);
                }
            }
        }
        other => *target = other,
    }
}

fn url_decode_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ok(v: Value) -> Response<Vec<u8>> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&v).unwrap())
        .unwrap()
}

fn not_found(name: &str) -> Response<Vec<u8>> {
    status(404, "NotFound", &format!("\"{name}\" not found"))
}

fn status(code: u16, reason: &str, message: &str) -> Response<Vec<u8>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap()
}
