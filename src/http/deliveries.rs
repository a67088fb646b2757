//! Delivery ids seen recently, so a redelivered webhook is applied once,
//! and the claim a delivery holds while it is handled.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

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

/// The delivery log with the wake-up of copies waiting on a delivery in
/// flight.
#[derive(Default)]
pub struct Deliveries {
    log: Mutex<DeliveryLog>,
    /// Woken when a delivery's handling ends, for a copy that waits on it.
    released: Notify,
}

impl Deliveries {
    pub fn new(log: DeliveryLog) -> Deliveries {
        Deliveries {
            log: Mutex::new(log),
            released: Notify::new(),
        }
    }

    /// Claims the delivery `id` (an empty id: nothing to claim). A copy
    /// being handled now may still fail (a 503), so this waits for its end,
    /// for `wait` at most, rather than answer "duplicate" for a delivery
    /// nothing applied: `Err(Seen)` once applied, `Err(InFlight)` if the
    /// copy is still in flight after `wait`.
    pub async fn claim<'a>(&'a self, id: &'a str, wait: Duration) -> Result<Claim<'a>, Claimed> {
        if id.is_empty() {
            return Ok(Claim {
                deliveries: self,
                id,
            });
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a release in between wakes it.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let claimed = self.lock().claim(id);
            match claimed {
                Claimed::Yes => {
                    return Ok(Claim {
                        deliveries: self,
                        id,
                    });
                }
                Claimed::Seen => return Err(Claimed::Seen),
                Claimed::InFlight => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(Claimed::InFlight);
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeliveryLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A delivery being handled. Dropped without [`Claim::applied`] (it
/// failed), the id is free again for a copy.
pub struct Claim<'a> {
    deliveries: &'a Deliveries,
    id: &'a str,
}

impl Claim<'_> {
    /// Remembers the id as seen (before the claim is let go, so no copy
    /// slips in between).
    pub fn applied(self) {
        if !self.id.is_empty() {
            self.deliveries.lock().insert(self.id);
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        self.deliveries.lock().release(self.id);
        self.deliveries.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// GitHub sends one delivery twice at once and the first copy fails
    /// (its journal write does, a 503): the second is applied, not
    /// answered "duplicate" for a delivery nothing applied.
    #[tokio::test]
    async fn a_copy_waits_for_the_original_and_is_applied_when_it_failed() {
        let deliveries = Deliveries::default();
        let original = deliveries.claim("d-1", WAIT).await.ok().unwrap();
        let copy = deliveries.claim("d-1", WAIT);
        tokio::pin!(copy);
        assert!(
            futures::poll!(copy.as_mut()).is_pending(),
            "the copy waits while the original is in flight"
        );
        drop(original); // failed: not applied
        let Ok(copy) = copy.await else {
            panic!("the copy gets the claim")
        };
        copy.applied();
        assert!(matches!(
            deliveries.claim("d-1", WAIT).await,
            Err(Claimed::Seen)
        ));
    }

    /// The original applied: the waiting copy is a duplicate.
    #[tokio::test]
    async fn a_copy_of_an_applied_delivery_is_a_duplicate() {
        let deliveries = Deliveries::default();
        let original = deliveries.claim("d-2", WAIT).await.ok().unwrap();
        let copy = deliveries.claim("d-2", WAIT);
        tokio::pin!(copy);
        assert!(futures::poll!(copy.as_mut()).is_pending());
        original.applied();
        assert!(matches!(copy.await, Err(Claimed::Seen)));
    }

    /// An original that never ends: the copy gives up after the wait (the
    /// handler answers 503, "send it again").
    #[tokio::test(start_paused = true)]
    async fn a_copy_gives_up_on_an_original_that_never_ends() {
        let deliveries = Deliveries::default();
        let _original = deliveries.claim("d-3", WAIT).await.ok().unwrap();
        assert!(matches!(
            deliveries.claim("d-3", WAIT).await,
            Err(Claimed::InFlight)
        ));
        // Deliveries without an id are never held.
        assert!(deliveries.claim("", WAIT).await.is_ok());
        assert!(deliveries.claim("", WAIT).await.is_ok());
    }

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
