//! Pattern of Life Analysis (PoLA, F9): learns the repeating sequence of a
//! collective group's calls and tells whether the next call follows it.
//!
//! Training repeats itself: every iteration issues the same collectives
//! with the same sizes, and NCCL cuts each one into the same chunks, so the
//! calls a group sees form a cycle. [`Pattern`] finds its period and
//! *locks* once the last [`REPEATS`] periods were identical. While locked,
//! every call is a hit (the call one period back, as the cycle predicts) or
//! a miss, which unlocks it until a cycle qualifies again.
//!
//! How the period is found without trying every length on every call: a
//! call that recurs `d` calls after its last occurrence proposes `d`.
//! At most [`CANDIDATES`] proposals are followed, each with a count of the
//! calls in a row that equalled the call `d` before them; a proposal with
//! `(REPEATS - 1) * d` of them locks. A cycle is found when some call of it
//! occurs once per period (NCCL's last, shorter chunk of a collective
//! does), whatever came before it, and when the cycle has at most
//! [`MAX_KEYS`] distinct calls. Memory is bounded ([`MAX_PERIOD`] calls of
//! history, [`MAX_KEYS`] distinct calls); each call costs a hash lookup
//! and a scan of at most [`CANDIDATES`] candidates, locked or not. Nothing here touches the data: it cannot change a result.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Longest cycle learned, in calls. NCCL hands the collective network
/// chunks of 512 KiB to 1 MiB at most (measured under NCCL 2.28.9), so
/// 8192 calls cover an iteration of 4 to 8 GiB through the collective
/// network.
pub const MAX_PERIOD: usize = 8192;
/// Identical periods in a row that lock the pattern.
pub const REPEATS: usize = 3;
/// Periods followed at once.
pub const CANDIDATES: usize = 16;
/// Distinct calls remembered for their last occurrence; past that the
/// memory is cleared (a job whose calls never repeat), so a cycle of more
/// distinct calls than this never locks.
pub const MAX_KEYS: usize = 4096;

/// What a call was, against the pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// No pattern yet (or not since the last miss).
    Learning,
    /// This call completed [`REPEATS`] identical periods: locked from the
    /// next call on.
    Locked { period: usize },
    /// Locked, and the call was the predicted one.
    Hit,
    /// Locked, and the call was not the predicted one: learning again.
    Miss,
}

/// A [`Pattern`]'s state and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The locked cycle's period, in calls.
    pub locked: Option<usize>,
    pub hits: u64,
    pub misses: u64,
    pub locks: u64,
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    period: usize,
    /// Calls in a row equal to the call `period` before them.
    run: usize,
}

/// The learner of one group; `K` identifies a call (collective, size,
/// datatype, path).
#[derive(Debug)]
pub struct Pattern<K> {
    /// The last [`MAX_PERIOD`] calls, newest at the back.
    history: VecDeque<K>,
    calls: u64,
    last_seen: HashMap<K, u64>,
    candidates: Vec<Candidate>,
    locked: Option<usize>,
    hits: u64,
    misses: u64,
    locks: u64,
}

impl<K: Eq + Hash + Clone> Default for Pattern<K> {
    fn default() -> Self {
        Pattern::new()
    }
}

impl<K: Eq + Hash + Clone> Pattern<K> {
    /// Its history is allocated whole here (for the group's calls, 16
    /// bytes each: 128 KiB), so that observing a call never allocates.
    pub fn new() -> Pattern<K> {
        Pattern {
            history: VecDeque::with_capacity(MAX_PERIOD),
            calls: 0,
            last_seen: HashMap::new(),
            candidates: Vec::with_capacity(CANDIDATES),
            locked: None,
            hits: 0,
            misses: 0,
            locks: 0,
        }
    }

    /// Records the next call.
    pub fn observe(&mut self, call: K) -> Seen {
        let qualified = self.follow(&call);
        let seen = match self.locked {
            Some(period) if self.back(period) == &call => {
                self.hits += 1;
                Seen::Hit
            }
            Some(_) => {
                // Learning again; a candidate that qualifies locks from the
                // next call.
                self.misses += 1;
                self.locked = None;
                Seen::Miss
            }
            None => match qualified {
                Some(period) => {
                    self.locked = Some(period);
                    self.locks += 1;
                    Seen::Locked { period }
                }
                None => Seen::Learning,
            },
        };
        self.remember(&call);
        if self.history.len() == MAX_PERIOD {
            self.history.pop_front();
        }
        self.history.push_back(call);
        self.calls += 1;
        seen
    }

    /// The call `period` calls back (`period` <= the history's length).
    fn back(&self, period: usize) -> &K {
        &self.history[self.history.len() - period]
    }

    /// Extends or breaks every candidate's run with `call`; returns the
    /// shortest period that now qualifies to lock. Followed while locked
    /// too, so that when a short, spurious cycle (the same chunk three
    /// times in a row) breaks, the true one has kept its count.
    fn follow(&mut self, call: &K) -> Option<usize> {
        let mut qualified: Option<usize> = None;
        let len = self.history.len();
        for c in &mut self.candidates {
            debug_assert!(
                c.period <= len,
                "a candidate period longer than the history"
            );
            if self.history[len - c.period] == *call {
                c.run += 1;
                if c.run >= (REPEATS - 1) * c.period && qualified.is_none_or(|p| p > c.period) {
                    qualified = Some(c.period);
                }
            } else {
                c.run = 0;
            }
        }
        qualified
    }

    /// Notes where `call` occurred; a recurrence proposes its distance.
    fn remember(&mut self, call: &K) {
        if self.last_seen.len() >= MAX_KEYS && !self.last_seen.contains_key(call) {
            self.last_seen.clear();
        }
        let Some(before) = self.last_seen.insert(call.clone(), self.calls) else {
            return;
        };
        let period = (self.calls - before) as usize;
        if period > MAX_PERIOD || self.candidates.iter().any(|c| c.period == period) {
            return;
        }
        // This call equals the one `period` back: a run of one.
        let proposal = Candidate { period, run: 1 };
        if self.candidates.len() < CANDIDATES {
            self.candidates.push(proposal);
        } else if let Some(weakest) = self.candidates.iter_mut().min_by_key(|c| c.run) {
            *weakest = proposal;
        }
    }

    /// Where the pattern stands, for logs and tests.
    pub fn summary(&self) -> Summary {
        Summary {
            locked: self.locked,
            hits: self.hits,
            misses: self.misses,
            locks: self.locks,
        }
    }

    /// The period of the locked cycle, in calls.
    pub fn locked(&self) -> Option<usize> {
        self.locked
    }

    /// The call the locked cycle expects next.
    pub fn predicted(&self) -> Option<&K> {
        self.locked.map(|period| self.back(period))
    }

    /// Calls that were the predicted one.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Calls that broke a locked cycle.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Times the pattern locked.
    pub fn locks(&self) -> u64 {
        self.locks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(p: &mut Pattern<u32>, calls: &[u32]) -> Vec<Seen> {
        calls.iter().map(|&c| p.observe(c)).collect()
    }

    #[test]
    fn a_cycle_locks_after_three_periods_and_then_hits() {
        let cycle = [1u32, 2, 2, 3];
        let mut p = Pattern::new();
        let calls: Vec<u32> = cycle
            .iter()
            .copied()
            .cycle()
            .take(4 * cycle.len())
            .collect();
        let seen = feed(&mut p, &calls);
        let lock_at = seen
            .iter()
            .position(|s| matches!(s, Seen::Locked { .. }))
            .expect("locks");
        assert_eq!(lock_at, REPEATS * cycle.len() - 1, "{seen:?}");
        assert_eq!(seen[lock_at], Seen::Locked { period: 4 });
        assert!(seen[..lock_at].iter().all(|s| *s == Seen::Learning));
        assert!(seen[lock_at + 1..].iter().all(|s| *s == Seen::Hit));
        assert_eq!((p.hits(), p.misses(), p.locks()), (4, 0, 1));
        assert_eq!(p.predicted(), Some(&1));
    }

    #[test]
    fn a_call_off_the_cycle_is_a_miss_and_a_new_cycle_locks() {
        let mut p = Pattern::new();
        feed(&mut p, &[5, 6, 5, 6, 5, 6]);
        assert_eq!(p.locked(), Some(2));
        assert_eq!(p.observe(7), Seen::Miss);
        assert_eq!(p.locked(), None);
        let seen = feed(&mut p, &[8, 8, 9].repeat(4));
        assert!(seen.contains(&Seen::Locked { period: 3 }), "{seen:?}");
        assert_eq!(seen.last(), Some(&Seen::Hit));
        assert_eq!((p.locked(), p.misses(), p.locks()), (Some(3), 1, 2));
    }

    #[test]
    fn constant_calls_lock_with_period_one() {
        let mut p = Pattern::new();
        assert_eq!(
            feed(&mut p, &[4, 4, 4]).last(),
            Some(&Seen::Locked { period: 1 })
        );
    }

    /// NCCL's chunks: a collective of 1 MiB chunks and a shorter last one.
    /// The same chunk three times in a row locks a period of one, which
    /// the last chunk breaks; the true cycle locks after that and stays.
    #[test]
    fn runs_of_equal_chunks_settle_on_the_collective_cycle() {
        let mut cycle = vec![1u32 << 20; 25];
        cycle.push(300_000);
        let mut p = Pattern::new();
        let seen = feed(&mut p, &cycle.repeat(6));
        assert_eq!(p.locked(), Some(26));
        let last_miss = seen
            .iter()
            .rposition(|s| *s == Seen::Miss)
            .expect("spurious locks");
        assert!(last_miss < 4 * 26, "{last_miss}");
        assert!(seen[seen.len() - 26..].iter().all(|s| *s == Seen::Hit));
    }

    /// Few distinct calls and a marker once per period, one call longer
    /// than the history: the marker's recurrence is too far back to follow
    /// (and must not be followed: it would index past the history).
    #[test]
    fn a_cycle_longer_than_max_period_never_locks() {
        let mut cycle: Vec<u32> = (0..MAX_PERIOD as u32).map(|i| i % 3).collect();
        cycle.push(100);
        let mut p = Pattern::new();
        let seen = feed(&mut p, &cycle.repeat(REPEATS + 1));
        assert_eq!(p.locked(), None);
        assert!(!seen.contains(&Seen::Locked {
            period: MAX_PERIOD + 1
        }));
    }

    proptest! {
        /// A cycle with a call that occurs once per period, after any
        /// junk, ends locked at that period with every call a hit.
        #[test]
        fn a_cycle_with_a_marker_locks_at_its_period(
            body in prop::collection::vec(0u32..4, 0..64),
            marker_at in 0usize..64,
            junk in prop::collection::vec(4u32..8, 0..20),
        ) {
            let mut cycle = body;
            cycle.insert(marker_at.min(cycle.len()), 100);
            let period = cycle.len();
            let mut p = Pattern::new();
            feed(&mut p, &junk);
            let seen = feed(&mut p, &cycle.repeat(7));
            prop_assert_eq!(p.locked(), Some(period));
            prop_assert!(seen[seen.len() - period..].iter().all(|s| *s == Seen::Hit), "{:?}", seen);
        }

        /// Hits are exactly the calls equal to the one a locked period
        /// before them; a lock follows REPEATS identical periods.
        #[test]
        fn hits_are_correct_predictions(calls in prop::collection::vec(0u32..3, 0..300)) {
            let mut p = Pattern::new();
            let mut locks = 0u64;
            for (i, &c) in calls.iter().enumerate() {
                let before = p.locked();
                match p.observe(c) {
                    Seen::Hit => prop_assert_eq!(calls[i - before.expect("locked")], c),
                    Seen::Miss => prop_assert_ne!(calls[i - before.expect("locked")], c),
                    Seen::Locked { period } => {
                        locks += 1;
                        prop_assert!(before.is_none());
                        prop_assert!((0..(REPEATS - 1) * period).all(|k| calls[i - k] == calls[i - k - period]));
                    }
                    Seen::Learning => prop_assert!(before.is_none()),
                }
            }
            prop_assert_eq!(p.locks(), locks);
            prop_assert!(p.hits() + p.misses() <= calls.len() as u64);
        }
    }
}
