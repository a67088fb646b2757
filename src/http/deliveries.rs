//! Delivery ids seen recently, so a redelivered webhook is applied once.

use std::collections::{HashSet, VecDeque};

/// How many delivery ids are remembered.
pub const REMEMBERED_DELIVERIES: usize = 100_000;

/// What [`DeliveryLog::claim`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    Yes,
    /// Applied already.
    Seen,
    /// A copy is being handled; it may still fail.
    InFlight,
}

#[derive(Default)]
pub struct DeliveryLog {
    order: VecDeque<String>,
    ids: HashSet<String>,
    /// Deliveries being handled now: a copy arriving meanwhile is a
    /// duplicate too (GitHub may send one delivery twice at once).
    in_flight: HashSet<String>,
}

impl DeliveryLog {
    pub fn seen(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
    /// Claims `id` for handling, unless it was seen or a copy of it is
    /// being handled now. Check and claim are one step, so of concurrent
    /// copies one wins.
    pub fn claim(&mut self, id: &str) -> Claimed {
        if self.ids.contains(id) {
            Claimed::Seen
        } else if self.in_flight.insert(id.to_string()) {
            Claimed::Yes
        } else {
            Claimed::InFlight
        }
    }
    /// Ends the handling of a claimed `id`. Unless it was [`Self::insert`]ed
    /// meanwhile (applied), it is free again.
    pub fn release(&mut self, id: &str) {
        self.in_flight.remove(id);
    }
    pub fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > REMEMBERED_DELIVERIES
                && let Some(old) = self.order.pop_front()
            {
                self.ids.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_id_is_taken_until_released() {
        let mut log = DeliveryLog::default();
        assert_eq!(log.claim("a"), Claimed::Yes);
        assert_eq!(log.claim("a"), Claimed::InFlight);
        log.release("a");
        assert_eq!(
            log.claim("a"),
            Claimed::Yes,
            "a delivery not applied may come again"
        );
        log.insert("a");
        log.release("a");
        assert!(log.seen("a"));
        assert_eq!(log.claim("a"), Claimed::Seen);
    }
}
