//! Batches and bisection over a train's cars: which cars are tested, which
//! one lands, and which PR a failure is blamed on.
//!
//! Every car is still one PR on the car ahead (car k = car k−1 + PR k), and
//! every car's commit is built; what batching changes is which cars are
//! *tested*. With batch size b only every b-th car is tested: its test
//! covers the b PRs since the last tested car, and when it passes the
//! target moves to it, landing them all as the exact commit that was
//! tested (the commits of the cars inside the batch are in the history, but
//! the target never points at one of them untested).
//!
//! A failed car F is bisected between L, the last passed car before it (or
//! the train's base), and F: the cars strictly between them are tested
//! (their commits exist already), the middle one first (or
//! `bisect_parallel` evenly spaced ones at once; every one of them when at
//! most 3 are left, where splitting saves nothing). Each answer narrows
//! (L, F]: a passing car becomes the new L, a failing one the new F. When F
//! directly follows L (or the base), F's own PR is the culprit: it alone
//! turned a passing tree into a failing one. A failure of a set stays a
//! failure of any superset on the same base, so the cars behind F are not
//! tested (their tests are cancelled) until the culprit is out; a moved base
//! drops every result (the cars are rebuilt).
//!
//! Flakes: nothing is blamed while a car ahead of F is still testing (its
//! outcome can explain F's). With `optimistic`, nothing is blamed while a
//! car behind F still tests either, and a passing car behind a failed one
//! (it holds the failed car's PRs, on the same base) lands, the earlier
//! failure recorded as a suspected flake.

use super::train::{Car, CarState};

/// How a branch's train is run now (from the planner or the configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// PRs per tested car.
    pub batch: usize,
    /// Batch cars tested at once.
    pub depth: usize,
    /// Cars of one failed batch tested at once while bisecting.
    pub bisect_parallel: usize,
    pub optimistic: bool,
    /// The first this many tested cars hold one PR each (they land
    /// soonest, as speculation would), the rest `batch` PRs (they cover
    /// the queue): see `planner`.
    pub singles: usize,
}

impl Plan {
    /// How many cars have their commits built ahead: every car a test
    /// planned now may cover.
    pub fn built_window(&self) -> usize {
        let singles = self.singles.min(self.depth.max(1));
        singles + (self.depth.max(1) - singles) * self.batch.max(1)
    }

    /// PRs in the tested car that has `ahead` tested cars before it.
    pub fn batch_at(&self, ahead: usize) -> usize {
        batch_size(self.batch, self.singles, ahead)
    }
}

/// PRs in the tested car with `ahead` tested cars before it, when the first
/// `singles` hold one PR each and the rest `batch`.
pub fn batch_size(batch: usize, singles: usize, ahead: usize) -> usize {
    if ahead < singles { 1 } else { batch.max(1) }
}

/// Below this many cars between a passing and a failing one, each is
/// tested on its own at once: halving would take as many builds, one
/// cycle later.
pub const TEST_SINGLY_BELOW: usize = 4;

fn testing(car: &Car) -> bool {
    matches!(car.state, CarState::Testing { .. })
}
fn passed(car: &Car) -> bool {
    matches!(car.state, CarState::Passed { .. })
}
fn failed(car: &Car) -> bool {
    matches!(car.state, CarState::Failed { .. })
}

/// The first failed car, if any.
pub fn first_failed(cars: &[Car]) -> Option<usize> {
    cars.iter().position(failed)
}

/// The car to land through: the deepest passed car with no failed car
/// ahead of it (with `optimistic`, failed cars ahead of it are suspected
/// flakes and do not count: see [`suspected_flakes`]).
pub fn landing_point(cars: &[Car]) -> Option<usize> {
    let end = first_failed(cars).unwrap_or(cars.len());
    (0..end).rev().find(|&k| passed(&cars[k]))
}

/// With `optimistic`: failed cars ahead of a passing one (which holds their
/// PRs and passed on the same base).
pub fn suspected_flakes(cars: &[Car]) -> Vec<usize> {
    let Some(deepest) = cars.iter().rposition(passed) else {
        return Vec::new();
    };
    (0..deepest).filter(|&k| failed(&cars[k])).collect()
}

/// The car whose own PR is to blame: the first failed car, once the car
/// just ahead of it passed (or it is first). That pass holds every PR
/// ahead, so a car ahead still testing (a retry after a lost build) can
/// explain nothing: waiting for it would only wait for the landing that
/// makes it moot. With `optimistic`, also once no car behind it is testing
/// (a pass there would make the failure a suspected flake).
pub fn culprit(cars: &[Car], optimistic: bool) -> Option<usize> {
    let f = first_failed(cars)?;
    let settled = f == 0 || passed(&cars[f - 1]);
    let behind_done = !optimistic || !cars[f + 1..].iter().any(testing);
    (settled && behind_done).then_some(f)
}

/// Cars behind the first failed one whose tests are running: they hold the
/// failing change, so their results would say nothing (not cancelled with
/// `optimistic`, where a pass among them is evidence of a flake).
pub fn doomed(cars: &[Car]) -> Vec<usize> {
    let Some(f) = first_failed(cars) else {
        return Vec::new();
    };
    (f + 1..cars.len()).filter(|&k| testing(&cars[k])).collect()
}

/// The cars to start testing now, in order (the caller stops at its free
/// build slots).
pub fn tests_to_start(cars: &[Car], plan: &Plan) -> Vec<usize> {
    let built = |k: usize| matches!(cars[k].state, CarState::Built { .. });
    if let Some(f) = first_failed(cars) {
        // Bisect (L, F).
        let low = (0..f).rev().find(|&k| passed(&cars[k]));
        let start = low.map_or(0, |l| l + 1);
        let interior: Vec<usize> = (start..f).collect();
        if interior.is_empty() {
            return Vec::new();
        }
        let parts = plan.bisect_parallel.max(1);
        if interior.len() < TEST_SINGLY_BELOW || parts >= interior.len() {
            return interior.into_iter().filter(|&k| built(k)).collect();
        }
        let in_flight = interior.iter().filter(|&&k| testing(&cars[k])).count();
        if in_flight >= parts {
            return Vec::new();
        }
        if interior.len() <= 2 * parts {
            // The first `parts` cars, each on its own: a culprit among them
            // is pinned this round (the first failing PR of a batch is
            // likelier early than late), and otherwise at most `parts` cars
            // are left, tested singly next round. Evenly spaced points
            // would only narrow the range to pairs, pinning almost nothing.
            return interior
                .into_iter()
                .filter(|&k| !passed(&cars[k]) && !testing(&cars[k]))
                .take(parts - in_flight)
                .filter(|&k| built(k))
                .collect();
        }
        // Evenly spaced points splitting [start, f] into parts + 1 pieces;
        // a point is the last car of its piece.
        let span = f - start + 1;
        let mut points: Vec<usize> = (1..=parts)
            .map(|i| start + span * i / (parts + 1) - 1)
            .filter(|&k| k >= start && k < f)
            .collect();
        points.dedup();
        return points
            .into_iter()
            .filter(|&k| built(k))
            .take(parts - in_flight)
            .collect();
    }
    // No failure: the next batch ends after the last car tested or testing.
    let window = plan.built_window().min(cars.len());
    let mut in_flight = cars.iter().filter(|c| testing(c)).count();
    let mut covered = cars[..window]
        .iter()
        .rposition(|c| testing(c) || passed(c))
        .map(|k| k + 1)
        .unwrap_or(0);
    let mut ahead = cars[..covered]
        .iter()
        .filter(|c| testing(c) || passed(c))
        .count();
    let mut out = Vec::new();
    while in_flight < plan.depth.max(1) && covered < window {
        let point = (covered + plan.batch_at(ahead) - 1).min(window - 1);
        if !built(point) {
            break;
        }
        out.push(point);
        in_flight += 1;
        ahead += 1;
        covered = point + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{BuildId, CandidatePr, Outcome, Sha};

    fn sha(n: u64) -> Sha {
        Sha::parse(&format!("{n:040x}")).unwrap()
    }

    /// Cars from a picture: `.` built, `t` testing, `P` passed, `F` failed.
    fn cars(picture: &str) -> Vec<Car> {
        picture
            .chars()
            .enumerate()
            .map(|(k, c)| {
                let k = k as u64;
                let build = BuildId::parse(&format!("b{k}")).unwrap();
                let state = match c {
                    '.' => CarState::Built { sha: sha(k + 1) },
                    't' => CarState::Testing {
                        sha: sha(k + 1),
                        build,
                    },
                    'P' => CarState::Passed {
                        sha: sha(k + 1),
                        build,
                    },
                    'F' => CarState::Failed {
                        sha: sha(k + 1),
                        build,
                        outcome: Outcome::Failed,
                        detail: String::new(),
                    },
                    _ => unreachable!(),
                };
                Car {
                    id: k + 1,
                    pr: CandidatePr {
                        number: k + 1,
                        head_sha: sha(0x100 + k),
                        head_ref: format!("b{k}"),
                    },
                    title: String::new(),
                    state,
                    errors: 0,
                    eta_ms: None,
                    entered_at: crate::core::Timestamp(0),
                }
            })
            .collect()
    }

    fn plan(batch: usize, depth: usize, parts: usize) -> Plan {
        Plan {
            batch,
            depth,
            bisect_parallel: parts,
            optimistic: false,
            singles: 0,
        }
    }

    #[test]
    fn batches_test_every_bth_car_and_a_short_tail() {
        assert_eq!(
            tests_to_start(&cars("........"), &plan(4, 2, 1)),
            vec![3, 7]
        );
        assert_eq!(tests_to_start(&cars("......"), &plan(4, 2, 1)), vec![3, 5]);
        // One batch testing, depth 2: the next batch starts behind it.
        assert_eq!(tests_to_start(&cars("...t...."), &plan(4, 2, 1)), vec![7]);
        assert!(tests_to_start(&cars("...t...t"), &plan(4, 2, 1)).is_empty());
        // Batch 1 is speculation: every car, up to the depth.
        assert_eq!(tests_to_start(&cars("...."), &plan(1, 3, 1)), vec![0, 1, 2]);
    }

    #[test]
    fn a_shaped_plan_tests_single_prs_at_the_front_then_whole_batches() {
        let shaped = Plan {
            singles: 3,
            ..plan(6, 8, 1)
        };
        // Three singles, then batches of 6.
        let all = cars(&".".repeat(40));
        assert_eq!(
            tests_to_start(&all, &shaped),
            vec![0, 1, 2, 8, 14, 20, 26, 32]
        );
        // Counted from the train's front: with three tested cars ahead,
        // the next one is a batch (and the last holds what is left).
        assert_eq!(tests_to_start(&cars("ttt......."), &shaped), vec![8, 9]);
    }

    #[test]
    fn a_failed_batch_is_halved_then_tested_singly() {
        // Batch of 8 failed: test the middle (car 3, the end of the first half).
        assert_eq!(tests_to_start(&cars(".......F"), &plan(8, 1, 1)), vec![3]);
        // Its first half passed: the second half's middle.
        assert_eq!(
            tests_to_start(&cars("...P...F"), &plan(8, 1, 1)),
            vec![4, 5, 6]
        );
        // Two parts at once split it in thirds.
        assert_eq!(
            tests_to_start(&cars(".......F"), &plan(8, 1, 2)),
            vec![1, 4]
        );
        // Nothing behind a failure is tested.
        assert_eq!(
            tests_to_start(&cars("...F...."), &plan(4, 2, 1)),
            vec![0, 1, 2]
        );
        // As many parts as cars between: every one of them at once (the
        // adaptive planner bisects with every runner), also when there are
        // more parts than cars (once an arithmetic underflow).
        assert_eq!(
            tests_to_start(&cars(".......F"), &plan(8, 8, 7)),
            (0..7).collect::<Vec<_>>()
        );
        assert_eq!(
            tests_to_start(&cars("P....F.."), &plan(8, 8, 8)),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn the_culprit_is_the_failed_car_right_behind_a_passing_one() {
        assert_eq!(culprit(&cars("F..."), false), Some(0));
        assert_eq!(culprit(&cars("PPF."), false), Some(2));
        assert_eq!(culprit(&cars("P.F."), false), None, "car 1 could be it");
        // A car ahead still testing (a retry) explains nothing once the
        // car just ahead passed: that pass holds its PR.
        assert_eq!(culprit(&cars("tPF."), false), Some(2));
        assert_eq!(
            culprit(&cars("tF.."), false),
            None,
            "wait for the car ahead"
        );
        assert_eq!(culprit(&cars("PFt"), false), Some(1));
        assert_eq!(culprit(&cars("PFt"), true), None, "optimistic: wait behind");
        assert_eq!(doomed(&cars("PFtt")), vec![2, 3]);
    }

    #[test]
    fn the_deepest_passing_car_before_any_failure_lands() {
        assert_eq!(landing_point(&cars("..P.P..")), Some(4));
        assert_eq!(landing_point(&cars("tP")), Some(1), "it holds car 0's PR");
        assert_eq!(landing_point(&cars("..P.F.P")), Some(2));
        assert_eq!(landing_point(&cars("....")), None);
        assert_eq!(suspected_flakes(&cars("PF.P")), vec![1]);
        assert_eq!(suspected_flakes(&cars("PF..")), Vec::<usize>::new());
    }
}
