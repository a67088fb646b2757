//! Results stores keep each build's log, machine-readable result and HTML
//! page where people can browse them for good: a local directory served by
//! sluice by default, a GCS bucket in production.

pub mod fs;
pub mod gcs;

use crate::core::{Candidate, JobReport, ResultKey};
use serde::{Deserialize, Serialize};

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
}
