//! Who approved a PR: the latest decisive review of each reviewer with write
//! access counts; a change request blocks.

use super::types::{ReviewFact, ReviewState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approvers: Vec<String>,
    /// Reviewers whose latest verdict is "changes requested".
    pub blockers: Vec<String>,
    pub required: u32,
}

impl Approval {
    pub fn approved(&self) -> bool {
        self.blockers.is_empty() && self.approvers.len() as u64 >= u64::from(self.required)
    }
}

/// The latest decisive review of each reviewer. A comment does not change a
/// reviewer's verdict (as on GitHub); a dismissal clears it.
pub fn latest_per_reviewer(mut reviews: Vec<ReviewFact>) -> BTreeMap<String, ReviewFact> {
    reviews.sort_by_key(|r| r.id);
    let mut latest = BTreeMap::new();
    for review in reviews {
        match review.state {
            ReviewState::Approved | ReviewState::ChangesRequested | ReviewState::Dismissed => {
                latest.insert(review.reviewer.clone(), review);
            }
            ReviewState::Commented | ReviewState::Pending => {}
        }
    }
    latest
}

/// Approval from the latest reviews. Reviews by people without write access,
/// or by the author, do not count.
pub fn approval<'a>(
    latest: impl IntoIterator<Item = &'a ReviewFact>,
    author: &str,
    required: u32,
) -> Approval {
    let mut result = Approval {
        required,
        ..Approval::default()
    };
    for review in latest {
        if !review.can_write || review.reviewer == author {
            continue;
        }
        match review.state {
            ReviewState::Approved => result.approvers.push(review.reviewer.clone()),
            ReviewState::ChangesRequested => result.blockers.push(review.reviewer.clone()),
            _ => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(id: u64, who: &str, state: ReviewState, can_write: bool) -> ReviewFact {
        ReviewFact {
            reviewer: who.into(),
            state,
            id,
            can_write,
        }
    }

    fn approved(reviews: Vec<ReviewFact>, required: u32) -> Approval {
        let latest = latest_per_reviewer(reviews);
        approval(latest.values(), "author", required)
    }

    #[test]
    fn latest_review_per_reviewer_wins() {
        use ReviewState::*;
        let a = approved(
            vec![
                review(2, "ann", Approved, true),
                review(1, "ann", ChangesRequested, true),
            ],
            1,
        );
        assert!(a.approved());
        let a = approved(
            vec![
                review(1, "ann", Approved, true),
                review(2, "ann", ChangesRequested, true),
            ],
            1,
        );
        assert!(!a.approved());
        assert_eq!(a.blockers, vec!["ann"]);
    }

    #[test]
    fn comments_keep_the_verdict_and_dismissal_clears_it() {
        use ReviewState::*;
        let a = approved(
            vec![
                review(1, "ann", Approved, true),
                review(2, "ann", Commented, true),
            ],
            1,
        );
        assert!(a.approved());
        let a = approved(
            vec![
                review(1, "ann", Approved, true),
                review(2, "ann", Dismissed, true),
            ],
            1,
        );
        assert!(!a.approved());
    }

    #[test]
    fn changes_requested_blocks_other_approvals() {
        use ReviewState::*;
        let a = approved(
            vec![
                review(1, "ann", Approved, true),
                review(2, "bob", Approved, true),
                review(3, "cat", ChangesRequested, true),
            ],
            1,
        );
        assert!(!a.approved());
    }

    #[test]
    fn only_writers_other_than_the_author_count() {
        use ReviewState::*;
        let a = approved(vec![review(1, "eve", Approved, false)], 1);
        assert!(!a.approved());
        let a = approved(vec![review(1, "author", Approved, true)], 1);
        assert!(!a.approved());
        // A change request from someone without write access does not block.
        let a = approved(
            vec![
                review(1, "ann", Approved, true),
                review(2, "eve", ChangesRequested, false),
            ],
            1,
        );
        assert!(a.approved());
    }

    #[test]
    fn the_number_of_approvals_is_configurable() {
        use ReviewState::*;
        let reviews = vec![
            review(1, "ann", Approved, true),
            review(2, "bob", Approved, true),
        ];
        assert!(approved(reviews.clone(), 2).approved());
        assert!(!approved(reviews, 3).approved());
        assert!(approved(vec![], 0).approved());
    }
}
