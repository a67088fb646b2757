//! Seeded chaos: webhook deliveries dropped, duplicated and reordered, and
//! API calls answered 502, as a real GitHub does on a bad day. The same seed
//! gives the same sequence of decisions (the n-th delivery and the n-th API
//! call always get the same fate), so a failing run can be replayed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What goes wrong, and how often. Rates are probabilities in 0..=1.
#[derive(Clone, Debug, PartialEq)]
pub struct Chaos {
    pub seed: u64,
    /// Share of webhook deliveries never sent (recorded as dropped).
    pub drop: f64,
    /// Share of deliveries sent twice with the same `X-GitHub-Delivery` id.
    pub duplicate: f64,
    /// Whether some deliveries are held back and sent after later ones
    /// (at most [`MAX_HOLD_BEHIND`] deliveries later, or [`MAX_HOLD`] later
    /// in time, whichever comes first).
    pub reorder: bool,
    /// Share of REST API calls answered `502` (the git transport is not
    /// affected).
    pub api_error_rate: f64,
}

impl Chaos {
    /// No faults at all (but a seed).
    pub fn none(seed: u64) -> Chaos {
        Chaos {
            seed,
            drop: 0.0,
            duplicate: 0.0,
            reorder: false,
            api_error_rate: 0.0,
        }
    }
}

/// Share of deliveries held back when reordering.
pub const REORDER_RATE: f64 = 0.3;
/// A held delivery is sent after at most this many later ones...
pub const MAX_HOLD_BEHIND: usize = 3;
/// ...or after this long, whichever comes first.
pub const MAX_HOLD: Duration = Duration::from_millis(1500);

/// What happens to one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryFate {
    /// Never sent.
    Drop,
    /// Sent (twice if `duplicate`); if `hold_behind` is Some(n), only after
    /// n later deliveries were sent (or [`MAX_HOLD`] passed). The duplicate,
    /// if any, is sent right after the original.
    Send {
        duplicate: bool,
        hold_behind: Option<usize>,
    },
}

/// The decision maker: two independent seeded streams, one for deliveries
/// (decided in the order they are queued) and one for API calls.
pub struct Dice {
    pub chaos: Chaos,
    deliveries: StdRng,
    api: StdRng,
}

impl Dice {
    pub fn new(chaos: Chaos) -> Dice {
        Dice {
            deliveries: StdRng::seed_from_u64(chaos.seed),
            api: StdRng::seed_from_u64(chaos.seed ^ 0x9e37_79b9_7f4a_7c15),
            chaos,
        }
    }

    /// The fate of the next delivery.
    pub fn delivery(&mut self) -> DeliveryFate {
        // Always draw the same number of values, so one rate does not shift
        // the decisions made for the others.
        let drop = self.deliveries.r#gen::<f64>() < self.chaos.drop;
        let duplicate = self.deliveries.r#gen::<f64>() < self.chaos.duplicate;
        let hold = self.deliveries.r#gen::<f64>() < REORDER_RATE;
        let behind = self.deliveries.gen_range(1..=MAX_HOLD_BEHIND);
        if drop {
            return DeliveryFate::Drop;
        }
        DeliveryFate::Send {
            duplicate,
            hold_behind: (self.chaos.reorder && hold).then_some(behind),
        }
    }

    /// Whether the next API call answers 502.
    pub fn api_error(&mut self) -> bool {
        self.api.r#gen::<f64>() < self.chaos.api_error_rate
    }
}

/// What chaos (and injected faults) did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChaosStats {
    pub deliveries_dropped: u64,
    pub deliveries_duplicated: u64,
    pub deliveries_reordered: u64,
    /// 502s served by chaos.
    pub api_errors: u64,
    /// Answers changed by injected faults ([`super::Fault::Status`],
    /// [`super::Fault::SlowAnswer`]).
    pub faults_served: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub api_errors: AtomicU64,
    pub faults_served: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ChaosStats {
        ChaosStats {
            deliveries_dropped: self.dropped.load(Ordering::Relaxed),
            deliveries_duplicated: self.duplicated.load(Ordering::Relaxed),
            deliveries_reordered: self.reordered.load(Ordering::Relaxed),
            api_errors: self.api_errors.load(Ordering::Relaxed),
            faults_served: self.faults_served.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chaos(seed: u64) -> Chaos {
        Chaos {
            seed,
            drop: 0.2,
            duplicate: 0.1,
            reorder: true,
            api_error_rate: 0.05,
        }
    }

    fn decisions(seed: u64) -> (Vec<DeliveryFate>, Vec<bool>) {
        let mut d = Dice::new(chaos(seed));
        let fates = (0..500).map(|_| d.delivery()).collect();
        let api = (0..500).map(|_| d.api_error()).collect();
        (fates, api)
    }

    #[test]
    fn the_same_seed_makes_the_same_decisions() {
        assert_eq!(decisions(42), decisions(42));
        assert_ne!(decisions(42), decisions(43));
    }

    #[test]
    fn api_decisions_do_not_depend_on_deliveries() {
        let mut a = Dice::new(chaos(7));
        let mut b = Dice::new(chaos(7));
        for _ in 0..100 {
            a.delivery();
        }
        let x: Vec<bool> = (0..200).map(|_| a.api_error()).collect();
        let y: Vec<bool> = (0..200).map(|_| b.api_error()).collect();
        assert_eq!(x, y);
    }

    #[test]
    fn rates_are_roughly_kept() {
        let (fates, api) = decisions(1);
        let dropped = fates.iter().filter(|f| **f == DeliveryFate::Drop).count();
        let dup = fates
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    DeliveryFate::Send {
                        duplicate: true,
                        ..
                    }
                )
            })
            .count();
        let held = fates
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    DeliveryFate::Send {
                        hold_behind: Some(1..=MAX_HOLD_BEHIND),
                        ..
                    }
                )
            })
            .count();
        let errors = api.iter().filter(|e| **e).count();
        assert!((60..=140).contains(&dropped), "{dropped}");
        assert!((20..=80).contains(&dup), "{dup}");
        assert!((70..=170).contains(&held), "{held}");
        assert!((8..=45).contains(&errors), "{errors}");
    }

    #[test]
    fn no_chaos_sends_everything_once_in_order() {
        let mut d = Dice::new(Chaos::none(3));
        for _ in 0..100 {
            assert_eq!(
                d.delivery(),
                DeliveryFate::Send {
                    duplicate: false,
                    hold_behind: None
                }
            );
            assert!(!d.api_error());
        }
    }
}
