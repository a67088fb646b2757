//! Local results store: each build's files in a directory that sluice
//! serves under `/results/`.
//!
//! Layout: `<dir>/<owner>/<name>/pr-N/<head sha>/<build id>/` holding
//! `log.txt`, `result.json` (the [`BuildRecord`]) and `index.html`. Every
//! file is written to a temporary file in the same directory and renamed
//! into place, so a reader never sees half a file.

use super::{BuildRecord, ResultsError, ResultsStore};
use crate::core::{Candidate, Outcome, ResultKey};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// How much of the end of the log the HTML page shows.
const PAGE_LOG_TAIL: usize = 64 * 1024;

pub struct FsResults {
    dir: PathBuf,
    public_url: String,
}

impl FsResults {
    /// `dir` is where results are written; `public_url` is sluice's base URL
    /// (links are `{public_url}/results/...`).
    pub fn new(dir: PathBuf, public_url: &str) -> FsResults {
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        FsResults {
            dir,
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }

    /// The directory a build's files live in. The key's parts are validated
    /// types; this checks once more that the path stays under `dir`.
    pub fn build_dir(&self, key: &ResultKey) -> Result<PathBuf, ResultsError> {
        let relative = key.relative_path();
        let rel = Path::new(&relative);
        let safe = rel.components().all(|c| matches!(c, Component::Normal(_)));
        let path = self.dir.join(rel);
        if !safe || !path.starts_with(&self.dir) {
            return Err(ResultsError::Other(format!(
                "result path {relative:?} escapes the results directory"
            )));
        }
        Ok(path)
    }
}

#[async_trait::async_trait]
impl ResultsStore for FsResults {
    /// Only the three files of a build directory, by plain path parts; the
    /// resolved path must stay under the results directory.
    async fn read(&self, tail: &str) -> Result<Option<super::ResultFile>, ResultsError> {
        let mut parts: Vec<&str> = tail.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| p.starts_with('.') || p.contains('\\')) {
            return Ok(None);
        }
        let file = match parts.last().copied().and_then(super::content_type_of) {
            Some(_) => parts.pop().unwrap_or("index.html"),
            None => "index.html",
        };
        if parts.len() != 5 {
            return Ok(None);
        }
        let mut path = self.dir.clone();
        path.extend(&parts);
        path.push(file);
        let (Ok(real), Ok(root)) = (
            std::fs::canonicalize(&path),
            std::fs::canonicalize(&self.dir),
        ) else {
            return Ok(None);
        };
        if !real.starts_with(&root) {
            return Ok(None);
        }
        match tokio::fs::read(&real).await {
            Ok(bytes) => Ok(Some(super::ResultFile {
                bytes: bytes.into(),
                content_type: super::content_type_of(file)
                    .unwrap_or("text/plain")
                    .to_string(),
            })),
            Err(_) => Ok(None),
        }
    }

    async fn started(&self, key: &ResultKey, candidate: &Candidate) -> Result<(), ResultsError> {
        let page = running_page(key, candidate);
        let (root, dir) = (self.dir.clone(), self.build_dir(key)?);
        blocking(move || {
            prepare(&root, &dir)?;
            write_atomic(&dir, "index.html", page.as_bytes(), Readers::Everyone)
        })
        .await
    }

    async fn finished(&self, record: &BuildRecord, log: &[u8]) -> Result<(), ResultsError> {
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| ResultsError::Other(format!("encoding result.json: {e}")))?;
        let page = finished_page(record, log);
        let log = log.to_vec();
        let (root, dir) = (self.dir.clone(), self.build_dir(&record.key)?);
        // The page last, so the links on it work once it says "finished".
        blocking(move || {
            prepare(&root, &dir)?;
            write_atomic(&dir, "log.txt", &log, Readers::Everyone)?;
            write_atomic(&dir, "result.json", &json, Readers::Everyone)?;
            write_atomic(&dir, "index.html", page.as_bytes(), Readers::Everyone)
        })
        .await
    }

    fn link(&self, key: &ResultKey) -> String {
        format!("{}/results/{}/", self.public_url, key.relative_path())
    }
}

async fn blocking(
    f: impl FnOnce() -> Result<(), ResultsError> + Send + 'static,
) -> Result<(), ResultsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ResultsError::Other(format!("writing results: {e}")))?
}

/// Creates a build's directory and checks, after resolving symlinks, that
/// it is still inside `root`.
fn prepare(root: &Path, dir: &Path) -> Result<(), ResultsError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let real_root = root.canonicalize().map_err(|e| io_error(root, e))?;
    let real = dir.canonicalize().map_err(|e| io_error(dir, e))?;
    if !real.starts_with(&real_root) {
        return Err(ResultsError::Other(format!(
            "result path {} resolves outside the results directory",
            dir.display()
        )));
    }
    Ok(())
}

pub(super) fn io_error(path: &Path, source: std::io::Error) -> ResultsError {
    ResultsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Who may read a file [`write_atomic`] writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Readers {
    /// Served files: readable by the web server, not only by us (0644).
    Everyone,
    /// Spooled files: ours only (0600, the temporary file's mode).
    Us,
}

/// Writes `dir/name` through a temporary file in `dir` and a rename.
pub(super) fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    readers: Readers,
) -> Result<(), ResultsError> {
    let path = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .map_err(|e| io_error(&path, e))?;
    tmp.write_all(bytes).map_err(|e| io_error(&path, e))?;
    tmp.as_file().sync_all().map_err(|e| io_error(&path, e))?;
    if readers == Readers::Everyone {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(tmp.path(), mode).map_err(|e| io_error(&path, e))?;
    }
    tmp.persist(&path).map_err(|e| io_error(&path, e.error))?;
    Ok(())
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Terminal control codes (colours) are noise in a page.
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Passed => "passed",
        Outcome::Failed => "failed",
        Outcome::Error => "error",
    }
}

fn fmt_duration_ms(ms: u64) -> String {
    let secs = ms / 1000;
    if secs >= 60 {
        format!("{}m {}s", secs / 60, secs % 60)
    } else {
        format!("{}.{}s", secs, (ms % 1000) / 100)
    }
}

/// The facts both pages show, as table rows.
fn candidate_rows(key: &ResultKey, candidate: &Candidate) -> Vec<(&'static str, String)> {
    let mut rows = vec![("Repository", candidate.repo.to_string())];
    for pr in &candidate.prs {
        rows.push(("Pull request", format!("#{} ({})", pr.number, pr.head_ref)));
        rows.push(("Head", pr.head_sha.to_string()));
    }
    rows.push((
        "Target",
        format!("{} at {}", candidate.target_branch, candidate.target_sha),
    ));
    rows.push(("Build", key.build.to_string()));
    rows
}

fn page(title: &str, head: &str, rows: &[(&'static str, String)], body: &str) -> String {
    let mut table = String::new();
    for (name, value) in rows {
        table.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            html_escape(name),
            html_escape(value)
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n{head}\
         <title>{title}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; }}\n\
         th {{ text-align: left; padding-right: 1em; }}\n\
         td {{ font-family: monospace; }}\n\
         pre {{ background: #f4f4f4; padding: 1em; overflow-x: auto; }}\n\
         </style>\n</head>\n<body>\n<h1>{title}</h1>\n<table>\n{table}</table>\n{body}</body>\n</html>\n",
        title = html_escape(title),
    )
}

fn page_title(key: &ResultKey, candidate: &Candidate, state: &str) -> String {
    format!(
        "{} #{} build {}: {state}",
        candidate.repo, key.pr, key.build
    )
}

/// The page shown while a build runs.
pub fn running_page(key: &ResultKey, candidate: &Candidate) -> String {
    let rows = candidate_rows(key, candidate);
    let body =
        "<p>This build is running. This page will show its result and log when it ends.</p>\n";
    let refresh = "<meta http-equiv=\"refresh\" content=\"30\">\n";
    page(&page_title(key, candidate, "running"), refresh, &rows, body)
}

/// The page sluice serves while a build runs: its log so far, followed
/// live from `live` (Server-Sent Events) by a small script; without
/// JavaScript the page reloads every 3 s. Reloaded when the build ends.
/// The page of a running build: `log` is its log from byte `from` on (the
/// tail of it when it is long), and the live log continues it.
pub fn live_page(
    key: &ResultKey,
    candidate: &Candidate,
    elapsed_ms: u64,
    log: &[u8],
    from: usize,
) -> String {
    let mut rows = candidate_rows(key, candidate);
    rows.push(("Running for", fmt_duration_ms(elapsed_ms)));
    let head = "<noscript><meta http-equiv=\"refresh\" content=\"3\"></noscript>\n";
    let heading = if from > 0 {
        format!("Log so far (from byte {from}: the last part)")
    } else {
        "Log so far".to_string()
    };
    let body = format!(
        "<p id=\"live-state\">This build is running; its log grows below.</p>\n\
         <h2>{heading}</h2>\n<pre id=\"log\">{}</pre>\n\
         <script>\n\
         (function () {{\n\
           var log = document.getElementById('log');\n\
           var source = new EventSource('live?from=' + {});\n\
           source.onmessage = function (m) {{ var e = JSON.parse(m.data); if (e.text) {{ log.textContent += e.text; }} if (e.end) {{ source.close(); location.reload(); }} }};\n\
         }})();\n\
         </script>\n",
        html_escape(&String::from_utf8_lossy(log)),
        from + log.len()
    );
    page(&page_title(key, candidate, "running"), head, &rows, &body)
}

/// The page of a finished build, with the tail of its log.
pub fn finished_page(record: &BuildRecord, log: &[u8]) -> String {
    let r = &record.report;
    let mut rows = candidate_rows(&record.key, &record.candidate);
    rows.push(("Outcome", outcome_word(r.outcome).to_string()));
    rows.push(("Detail", r.detail.clone()));
    rows.push((
        "Exit code",
        r.exit_code
            .map_or_else(|| "none".to_string(), |c| c.to_string()),
    ));
    rows.push((
        "Duration",
        fmt_duration_ms(r.finished_at.0.saturating_sub(r.started_at.0)),
    ));
    let start = log.len().saturating_sub(PAGE_LOG_TAIL);
    let tail = String::from_utf8_lossy(&log[start..]);
    let heading = if start > 0 {
        format!("Last {} KiB of the log", PAGE_LOG_TAIL / 1024)
    } else {
        "Log".to_string()
    };
    let body = format!(
        "<p><a href=\"log.txt\">Full log (log.txt)</a> · <a href=\"result.json\">result.json</a></p>\n\
         <h2>{heading}</h2>\n<pre>{}</pre>\n",
        html_escape(&tail)
    );
    let title = page_title(&record.key, &record.candidate, outcome_word(r.outcome));
    page(&title, "", &rows, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            html_escape("<script>alert('x' & \"y\")</script>\u{1b}[31m"),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;[31m"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration_ms(3_250), "3.2s");
        assert_eq!(fmt_duration_ms(125_000), "2m 5s");
    }
}
