//! The periodic re-read of GitHub, so a lost webhook heals itself.

use super::{Input, now};
use crate::core::{Event, PrKey, RepoName};
use crate::forge::Forge;
use std::collections::BTreeSet;

/// One re-read of a repository: open PRs, their target heads, their reviews.
pub async fn reconcile(
    forge: &dyn Forge,
    repo: &RepoName,
    inputs: &super::store::Inlet,
) -> Result<(), crate::forge::ForgeError> {
    let started_at = now();
    let prs = forge.list_open_prs(repo).await?;
    let bases: BTreeSet<String> = prs.iter().map(|p| p.base_ref.clone()).collect();
    let mut branches = Vec::new();
    for base in bases {
        if let Some(sha) = forge.branch_head(repo, &base).await? {
            branches.push((base, sha));
        }
    }
    let keys: Vec<PrKey> = prs.iter().map(|p| p.key.clone()).collect();
    let _ = inputs
        .send(Input::Event(Event::Reconciled {
            repo: repo.clone(),
            started_at,
            prs,
            branches,
        }))
        .await;
    for pr in keys {
        let reviews = forge.reviews(&pr).await?;
        let _ = inputs
            .send(Input::Event(Event::Reviews { pr, reviews }))
            .await;
    }
    Ok(())
}
