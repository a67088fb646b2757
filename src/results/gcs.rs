//! GCS results store: each build's `log.txt`, `result.json` and `index.html`
//! as objects `<prefix>/<owner>/<name>/pr-N/<head sha>/<build id>/<file>` in
//! a bucket, written with the official `google-cloud-storage` client.
//!
//! Nothing is lost when GCS is slow or down. Every file is first written to
//! a local spool directory (same layout as the local store, so sluice serves
//! it under `/results/` meanwhile), then uploaded, and deleted from the spool
//! only once the upload succeeded. A failed upload is retried with backoff;
//! what is still left is re-uploaded by a background loop, which also runs
//! at startup, so files spooled before a restart are uploaded after it.
//!
//! Credentials: Google's default credentials (workload identity,
//! `GOOGLE_APPLICATION_CREDENTIALS`) in production; anonymous when an
//! emulator endpoint is configured. Every call to GCS has a timeout.

use super::fs::{Readers, finished_page, io_error, running_page, write_atomic};
use super::{BuildRecord, ResultsError, ResultsStore};
use crate::config::{GcsConfig, GcsLink};
use crate::core::{Candidate, ResultKey};
use bytes::Bytes;
use google_cloud_storage::client::Storage;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{debug, info, warn};

pub const LOG_FILE: &str = "log.txt";
pub const RESULT_FILE: &str = "result.json";
pub const PAGE_FILE: &str = "index.html";

/// The files of a build and their content types, in upload order: the page
/// last, so the links on a "finished" page work once it is visible.
pub const FILES: [(&str, &str); 3] = [
    (LOG_FILE, "text/plain; charset=utf-8"),
    (RESULT_FILE, "application/json"),
    (PAGE_FILE, "text/html; charset=utf-8"),
];

/// Single-shot uploads up to this size against an emulator: resumable
/// uploads hang against fake-gcs-server on a port other than 80.
const EMULATOR_RESUMABLE_THRESHOLD: usize = 256 * 1024 * 1024;
/// Stripes of the per-build locks that keep spool writes and uploads of one
/// build apart.
const LOCK_STRIPES: usize = 64;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// The content type of a result file, `None` for names that are not one.
pub fn content_type(file: &str) -> Option<&'static str> {
    FILES.iter().find(|(f, _)| *f == file).map(|(_, ct)| *ct)
}

/// What one pass over the spool did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolPass {
    /// Builds whose spooled files were all uploaded.
    pub uploaded: usize,
    /// Builds whose files are still in the spool.
    pub left: usize,
}

pub use super::ResultFile;

pub struct GcsResults {
    inner: Arc<Inner>,
}

struct Inner {
    client: Storage,
    bucket: String,
    /// `projects/_/buckets/<bucket>`, as the client names buckets.
    bucket_path: String,
    prefix: String,
    link: GcsLink,
    public_base: String,
    sluice_url: String,
    spool: PathBuf,
    retries: u32,
    timeout: Duration,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl GcsResults {
    /// Builds the client and, if `retry_interval_secs` > 0, starts the loop
    /// that re-uploads what is left in `spool` (at once, then periodically;
    /// it ends when the store is dropped). `sluice_url` is sluice's public
    /// base URL, for `link = "sluice"`. Needs a tokio runtime.
    pub async fn new(
        config: &GcsConfig,
        spool: PathBuf,
        sluice_url: &str,
    ) -> Result<GcsResults, ResultsError> {
        let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        let mut builder = Storage::builder();
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint.trim_end_matches('/'))
                .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
                .with_resumable_upload_threshold(EMULATOR_RESUMABLE_THRESHOLD);
        }
        let client = tokio::time::timeout(timeout, builder.build())
            .await
            .map_err(|_| ResultsError::Other("building the GCS client timed out".into()))?
            .map_err(|e| ResultsError::Other(format!("building the GCS client: {e}")))?;
        std::fs::create_dir_all(&spool).map_err(|e| io_error(&spool, e))?;
        let spool = spool.canonicalize().map_err(|e| io_error(&spool, e))?;
        let inner = Arc::new(Inner {
            client,
            bucket: config.bucket.clone(),
            bucket_path: format!("projects/_/buckets/{}", config.bucket),
            prefix: config.prefix.trim_matches('/').to_string(),
            link: config.link,
            public_base: config.public_base.trim_end_matches('/').to_string(),
            sluice_url: sluice_url.trim_end_matches('/').to_string(),
            spool,
            retries: config.upload_retries,
            timeout,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        if config.retry_interval_secs > 0 {
            let interval = Duration::from_secs(config.retry_interval_secs);
            tokio::spawn(retry_loop(Arc::downgrade(&inner), interval));
        }
        Ok(GcsResults { inner })
    }

    /// Where results wait until uploaded, laid out as
    /// `<owner>/<name>/pr-N/<head sha>/<build id>/<file>` like the local
    /// store. sluice serves `/results/<path>` from here first.
    pub fn spool_dir(&self) -> &Path {
        &self.inner.spool
    }

    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The object name of one of a build's files; always under the prefix.
    pub fn object_name(&self, key: &ResultKey, file: &str) -> Result<String, ResultsError> {
        self.inner
            .object_name(Path::new(&key.relative_path()), file)
    }

    /// The public URL of a build's page in the bucket.
    pub fn public_url(&self, key: &ResultKey) -> Result<String, ResultsError> {
        Ok(self.inner.public_url(&self.object_name(key, PAGE_FILE)?))
    }

    /// Uploads what is in the spool once; what fails stays for the next
    /// pass. The background loop calls this.
    pub async fn flush_spool(&self) -> SpoolPass {
        self.inner.flush_spool().await
    }

    /// A result file for sluice's `/results/<tail>` route: `tail` is
    /// `<owner>/<name>/pr-N/<sha>/<build>/[file]` (no file: the page). From
    /// the spool while it is not uploaded, else from the bucket; `Ok(None)`
    /// when it exists in neither or `tail` is not a result file's path.
    pub async fn fetch(&self, tail: &str) -> Result<Option<ResultFile>, ResultsError> {
        self.inner.fetch(tail).await
    }
}

impl Inner {
    /// `<prefix>/<relative>/<file>`, refusing anything that could leave the
    /// prefix: only plain, non-hidden path parts and a known file name.
    fn object_name(&self, relative: &Path, file: &str) -> Result<String, ResultsError> {
        let escape = || {
            ResultsError::Other(format!(
                "result path {relative:?}/{file} is not a plain path under the prefix"
            ))
        };
        if content_type(file).is_none() {
            return Err(escape());
        }
        let mut parts = Vec::new();
        for c in relative.components() {
            let Component::Normal(part) = c else {
                return Err(escape());
            };
            let part = part.to_str().ok_or_else(escape)?;
            if part.is_empty() || part.starts_with('.') || part.contains(['/', '\\']) {
                return Err(escape());
            }
            parts.push(part);
        }
        if parts.is_empty() {
            return Err(escape());
        }
        let under = format!("{}/{file}", parts.join("/"));
        let name = if self.prefix.is_empty() {
            under
        } else {
            format!("{}/{under}", self.prefix)
        };
        // Belt and braces: the name starts with the prefix and has no part
        // that a URL or a path resolver would climb with.
        let inside = self.prefix.is_empty() || name.starts_with(&format!("{}/", self.prefix));
        if !inside
            || name
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(escape());
        }
        Ok(name)
    }

    fn public_url(&self, object: &str) -> String {
        format!("{}/{}/{object}", self.public_base, self.bucket)
    }

    fn lock(&self, relative: &Path) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        relative.hash(&mut h);
        &self.locks[(h.finish() as usize) % self.locks.len()]
    }

    /// Writes files of a build into the spool, each atomically.
    async fn spool_write(
        &self,
        relative: &Path,
        files: Vec<(&'static str, Vec<u8>)>,
    ) -> Result<(), ResultsError> {
        for (name, _) in &files {
            self.object_name(relative, name)?;
        }
        let _guard = self.lock(relative).lock().await;
        let (root, dir) = (self.spool.clone(), self.spool.join(relative));
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
            let real = dir.canonicalize().map_err(|e| io_error(&dir, e))?;
            if !real.starts_with(&root) {
                return Err(ResultsError::Other(format!(
                    "spool path {} resolves outside the spool",
                    dir.display()
                )));
            }
            for (name, bytes) in files {
                write_atomic(&dir, name, &bytes, Readers::Us)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ResultsError::Other(format!("writing to the spool: {e}")))?
    }

    /// Uploads the spooled files of one build, deleting each once uploaded.
    /// Returns how many were uploaded; on error the rest stays spooled.
    async fn upload_spooled(&self, relative: &Path) -> Result<usize, ResultsError> {
        let _guard = self.lock(relative).lock().await;
        let dir = self.spool.join(relative);
        let mut uploaded = 0;
        for (file, content_type) in FILES {
            let path = dir.join(file);
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => Bytes::from(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&path, e)),
            };
            let object = self.object_name(relative, file)?;
            self.put(&object, bytes, content_type).await?;
            // The build's lock is held: nobody rewrote the file meanwhile.
            tokio::fs::remove_file(&path)
                .await
                .map_err(|e| io_error(&path, e))?;
            uploaded += 1;
        }
        // Only the build's own directory: its parents may be shared with
        // builds being written right now.
        let _ = tokio::fs::remove_dir(&dir).await;
        Ok(uploaded)
    }

    async fn put(
        &self,
        object: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), ResultsError> {
        let mut write = self
            .client
            .write_object(&self.bucket_path, object, bytes)
            .set_content_type(content_type);
        if object.ends_with(PAGE_FILE) {
            // The page changes from "running" to "finished": no stale copies
            // in caches (public objects are cached for an hour by default).
            write = write.set_cache_control("no-cache");
        }
        // Buffered single-shot upload: fake-gcs-server corrupts unbuffered
        // small uploads (it appends the checksums part to the body).
        let written = self
            .timed(
                &format!("uploading gs://{}/{object}", self.bucket),
                write.send_buffered(),
            )
            .await?;
        written.map_err(|e| {
            ResultsError::Other(format!("uploading gs://{}/{object}: {e}", self.bucket))
        })?;
        debug!(object, "uploaded");
        Ok(())
    }

    /// Uploads a build's spooled files, retrying with backoff; on the last
    /// failure they stay spooled for the background loop.
    async fn upload_with_retries(&self, relative: &Path) -> Result<(), ResultsError> {
        let mut attempt = 0;
        loop {
            match self.upload_spooled(relative).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt >= self.retries => return Err(e),
                Err(e) => {
                    let wait = backoff(attempt);
                    debug!(error = %e, ?wait, "upload failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn flush_spool(&self) -> SpoolPass {
        let root = self.spool.clone();
        let builds = tokio::task::spawn_blocking(move || spooled_builds(&root))
            .await
            .unwrap_or_default();
        let mut pass = SpoolPass::default();
        for relative in builds {
            match self.upload_spooled(&relative).await {
                Ok(_) => pass.uploaded += 1,
                Err(e) => {
                    pass.left += 1;
                    warn!(build = %relative.display(), error = %e,
                        "results still not uploaded; kept in the spool");
                }
            }
        }
        pass
    }

    async fn fetch(&self, tail: &str) -> Result<Option<ResultFile>, ResultsError> {
        let mut parts: Vec<&str> = tail.split('/').filter(|p| !p.is_empty()).collect();
        let file = match parts.last() {
            Some(last) if content_type(last).is_some() => parts.pop().unwrap_or(PAGE_FILE),
            _ => PAGE_FILE,
        };
        let relative: PathBuf = parts.iter().collect();
        let Ok(object) = self.object_name(&relative, file) else {
            return Ok(None);
        };
        let content_type = content_type(file).unwrap_or("application/octet-stream");
        let spooled = self.spool.join(&relative).join(file);
        match tokio::fs::read(&spooled).await {
            Ok(bytes) => {
                return Ok(Some(ResultFile {
                    bytes: bytes.into(),
                    content_type: content_type.into(),
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&spooled, e)),
        }
        let what = format!("reading gs://{}/{object}", self.bucket);
        let read = async {
            let mut response = match self
                .client
                .read_object(&self.bucket_path, &object)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) if e.http_status_code() == Some(404) => return Ok(None),
                Err(e) => return Err(e),
            };
            let content_type = response.object().content_type;
            let mut bytes = Vec::new();
            while let Some(chunk) = response.next().await.transpose()? {
                bytes.extend_from_slice(&chunk);
            }
            Ok(Some(ResultFile {
                bytes: bytes.into(),
                content_type,
            }))
        };
        self.timed(&what, read)
            .await?
            .map_err(|e: google_cloud_storage::Error| ResultsError::Other(format!("{what}: {e}")))
    }

    async fn timed<T>(&self, what: &str, f: impl Future<Output = T>) -> Result<T, ResultsError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| ResultsError::Other(format!("{what}: timed out after {:?}", self.timeout)))
    }
}

#[async_trait::async_trait]
impl ResultsStore for GcsResults {
    async fn read(&self, tail: &str) -> Result<Option<ResultFile>, ResultsError> {
        self.fetch(tail).await
    }

    async fn started(&self, key: &ResultKey, candidate: &Candidate) -> Result<(), ResultsError> {
        let relative = PathBuf::from(key.relative_path());
        let page = running_page(key, candidate).into_bytes();
        self.inner
            .spool_write(&relative, vec![(PAGE_FILE, page)])
            .await?;
        // The job need not wait for the upload: sluice serves the page from
        // the spool meanwhile.
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = inner.upload_with_retries(&relative).await {
                warn!(build = %relative.display(), error = %e,
                    "running page not uploaded; kept in the spool");
            }
        });
        Ok(())
    }

    async fn finished(&self, record: &BuildRecord, log: &[u8]) -> Result<(), ResultsError> {
        let relative = PathBuf::from(record.key.relative_path());
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| ResultsError::Other(format!("encoding result.json: {e}")))?;
        let page = finished_page(record, log).into_bytes();
        self.inner
            .spool_write(
                &relative,
                vec![
                    (LOG_FILE, log.to_vec()),
                    (RESULT_FILE, json),
                    (PAGE_FILE, page),
                ],
            )
            .await?;
        // Spooled: from here on nothing is lost, so a failed upload is not
        // an error of this call; the background loop will retry it.
        if let Err(e) = self.inner.upload_with_retries(&relative).await {
            warn!(build = %relative.display(), error = %e,
                "results not uploaded yet; kept in the spool and served by sluice");
        }
        Ok(())
    }

    fn link(&self, key: &ResultKey) -> String {
        let relative = key.relative_path();
        match self.inner.link {
            GcsLink::Sluice => format!("{}/results/{relative}/", self.inner.sluice_url),
            GcsLink::Public => match self.public_url(key) {
                Ok(url) => url,
                // Unreachable for a validated key; sluice's page still works.
                Err(_) => format!("{}/results/{relative}/", self.inner.sluice_url),
            },
        }
    }
}

async fn retry_loop(inner: Weak<Inner>, interval: Duration) {
    loop {
        let Some(store) = inner.upgrade() else { return };
        let pass = store.flush_spool().await;
        if pass.uploaded > 0 || pass.left > 0 {
            info!(
                uploaded = pass.uploaded,
                left = pass.left,
                "re-uploaded spooled results"
            );
        }
        drop(store);
        tokio::time::sleep(interval).await;
    }
}

/// Exponential backoff with jitter, capped.
fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    exp.mul_f64(jitter)
}

/// The build directories (relative to `root`) that hold spooled files.
fn spooled_builds(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut has_file = false;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue; // temporary files of writes in progress
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < 8 {
                walk(root, &entry.path(), depth + 1, out);
            } else if kind.is_file() && content_type(name).is_some() {
                has_file = true;
            }
        }
        if has_file && let Ok(relative) = dir.strip_prefix(root) {
            out.push(relative.to_path_buf());
        }
    }
    let mut out = Vec::new();
    walk(root, root, 0, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_of_the_three_files() {
        assert_eq!(content_type("log.txt"), Some("text/plain; charset=utf-8"));
        assert_eq!(content_type("result.json"), Some("application/json"));
        assert_eq!(content_type("index.html"), Some("text/html; charset=utf-8"));
        assert_eq!(content_type("../x"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(650));
        assert!(backoff(1) >= Duration::from_millis(700));
        assert!(backoff(30) <= BACKOFF_CAP.mul_f64(1.25));
    }

    #[test]
    fn spool_walk_finds_builds_and_skips_temporary_files() {
        let tmp = tempfile::tempdir().unwrap();
        let build = tmp.path().join("o/r/pr-1/abc/b1");
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(build.join("log.txt"), "x").unwrap();
        let half = tmp.path().join("o/r/pr-2/abc/b2");
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join(".log.txt.tmp123"), "x").unwrap();
        std::fs::create_dir_all(tmp.path().join("o/r/pr-3/abc/empty")).unwrap();
        assert_eq!(
            spooled_builds(tmp.path()),
            vec![PathBuf::from("o/r/pr-1/abc/b1")]
        );
    }
}
