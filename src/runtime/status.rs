//! The status writer: commit statuses, in the order the core decided them.

use super::{Shared, StatusUpdate, forge_failed};
use crate::forge::Forge;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Writes commit statuses in the order the core decided them. Updates that
/// queue up behind a slow call are coalesced: only the newest status of a
/// commit is sent.
pub(super) async fn status_writer(
    forge: Arc<dyn Forge>,
    mut rx: mpsc::UnboundedReceiver<StatusUpdate>,
    shared: Arc<Shared>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut newest: Vec<StatusUpdate> = Vec::new();
        for update in batch {
            match newest
                .iter_mut()
                .find(|u| u.0 == update.0 && u.1 == update.1)
            {
                Some(slot) => *slot = update,
                None => newest.push(update),
            }
        }
        for (repo, sha, status) in newest {
            if let Err(e) = forge.set_status(&repo, &sha, &status).await {
                forge_failed(&shared, "status", &e);
            }
        }
    }
}
