//! Results stores keep each build's log, machine-readable result and HTML
//! page where people can browse them for good: a local directory served by
//! sluice by default, a GCS bucket in production.

pub mod fs;
pub mod gcs;

use crate::core::{Candidate, JobReport, ResultKey};
use serde::{Deserialize, Serialize};

/// A result file as served over HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultFile {
    pub bytes: bytes::Bytes,
    pub content_type: String,
}

/// The content type of a result file, by name; `None` for any other file.
pub fn content_type_of(file: &str) -> Option<&'static str> {
    match file {
        "index.html" => Some("text/html; charset=utf-8"),
        "result.json" => Some("application/json"),
        "log.txt" => Some("text/plain; charset=utf-8"),
        _ => None,
    }
}

/// `result.json`: what a build tested and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub key: ResultKey,
    pub candidate: Candidate,
    pub report: JobReport,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("writing results for {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("results store: {0}")]
    Other(String),
}

#[async_trait::async_trait]
pub trait ResultsStore: Send + Sync {
    /// Writes a "running" page so the status link works from the start.
    async fn started(&self, key: &ResultKey, candidate: &Candidate) -> Result<(), ResultsError>;
    /// Writes the log, `result.json` and the final HTML page.
    async fn finished(&self, record: &BuildRecord, log: &[u8]) -> Result<(), ResultsError>;
    /// The URL of the build's page, for commit statuses and JSON answers.
    fn link(&self, key: &ResultKey) -> String;
    /// A file for sluice's own `/results/<tail>` route, where `tail` is
    /// `<owner>/<name>/pr-N/<sha>/<build>/[file]` (no file: the page);
    /// `Ok(None)` when there is no such result file.
    async fn read(&self, tail: &str) -> Result<Option<ResultFile>, ResultsError>;
}
