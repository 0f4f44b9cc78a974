//! When to send a heartbeat and when a peer counts as gone, without I/O and
//! without a clock of its own: every time is milliseconds of one monotonic
//! clock, passed in by the driver.
//!
//! Both ends of every stream send something at least every
//! `heartbeat_ms` (data, or a heartbeat when there is none), from their own
//! stream threads, whatever NCCL posts. A side that has heard nothing for
//! longer than `timeout_ms` while it was listening fails the connection.
//! The heartbeat is a quarter of the timeout, so a live peer is only ever
//! failed if its stream threads stall for three quarters of the timeout.

use super::wire::{MAX_HEARTBEAT_MS, MIN_HEARTBEAT_MS};

/// Liveness parameters of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Fail the connection after this long without a byte from the peer.
    pub timeout_ms: u64,
    /// Send something at least this often: the shorter of our own interval
    /// and the one the peer asked for in the handshake, so each side hears
    /// from the other as often as its own timeout needs.
    pub heartbeat_ms: u64,
}

impl Liveness {
    /// The heartbeat interval we ask of our peers for a given timeout.
    pub fn interval_for(timeout_ms: u64) -> u32 {
        (timeout_ms / 4).clamp(u64::from(MIN_HEARTBEAT_MS), u64::from(MAX_HEARTBEAT_MS)) as u32
    }

    pub fn new(timeout_ms: u64, peer_heartbeat_ms: u32) -> Self {
        let own = Self::interval_for(timeout_ms);
        Liveness {
            timeout_ms,
            heartbeat_ms: u64::from(own.min(peer_heartbeat_ms).max(MIN_HEARTBEAT_MS)),
        }
    }
}

/// The clock of one stream: when we last sent and last heard something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamClock {
    sent_ms: u64,
    heard_ms: u64,
}

impl StreamClock {
    pub fn new(now_ms: u64) -> Self {
        StreamClock {
            sent_ms: now_ms,
            heard_ms: now_ms,
        }
    }

    pub fn sent(&mut self, now_ms: u64) {
        self.sent_ms = self.sent_ms.max(now_ms);
    }

    /// Something arrived, or we start listening again after a pause of our
    /// own (a stream that waited for NCCL to post a receive did not read,
    /// so its silence says nothing about the peer).
    pub fn heard(&mut self, now_ms: u64) {
        self.heard_ms = self.heard_ms.max(now_ms);
    }

    /// Nothing has gone out for a whole heartbeat interval.
    pub fn heartbeat_due(&self, l: &Liveness, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.sent_ms) >= l.heartbeat_ms
    }

    /// How long the peer has been silent, once that exceeds the timeout.
    /// Only meaningful while this side was listening the whole time.
    pub fn silent(&self, l: &Liveness, now_ms: u64) -> Option<u64> {
        let quiet = now_ms.saturating_sub(self.heard_ms);
        (quiet > l.timeout_ms).then_some(quiet)
    }

    /// When the stream's thread must look again: the next heartbeat, or the
    /// moment the peer's silence would exceed the timeout.
    pub fn next_check(&self, l: &Liveness, listening: bool) -> u64 {
        let beat = self.sent_ms + l.heartbeat_ms;
        if listening {
            beat.min(self.heard_ms + l.timeout_ms + 1)
        } else {
            beat
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn interval_is_a_quarter_of_the_timeout_within_wire_limits() {
        assert_eq!(Liveness::interval_for(30_000), 7_500);
        assert_eq!(Liveness::interval_for(100), MIN_HEARTBEAT_MS);
        assert_eq!(Liveness::interval_for(3_600_000), MAX_HEARTBEAT_MS);
        // The peer may ask for more frequent heartbeats, never for fewer.
        assert_eq!(Liveness::new(30_000, 1_000).heartbeat_ms, 1_000);
        assert_eq!(Liveness::new(30_000, 60_000).heartbeat_ms, 7_500);
    }

    #[test]
    fn heartbeat_and_silence_deadlines() {
        let l = Liveness::new(2_000, 500);
        let mut c = StreamClock::new(1_000);
        assert!(!c.heartbeat_due(&l, 1_499));
        assert!(c.heartbeat_due(&l, 1_500));
        assert_eq!(c.next_check(&l, true), 1_500);
        c.sent(1_500);
        assert_eq!(c.next_check(&l, false), 2_000);
        assert_eq!(
            c.silent(&l, 3_000),
            None,
            "exactly the timeout is not over it"
        );
        assert_eq!(c.silent(&l, 3_001), Some(2_001));
        c.heard(2_900);
        assert_eq!(c.silent(&l, 3_001), None);
        // A late report of an earlier event never moves the clock back.
        c.heard(100);
        c.sent(100);
        assert_eq!(
            c,
            StreamClock {
                sent_ms: 1_500,
                heard_ms: 2_900
            }
        );
    }

    /// Drives one direction the way the driver does: the sender's thread
    /// wakes at its `next_check` (late by up to `jitter`) and sends if a
    /// heartbeat is due; the receiver's thread checks at its own
    /// `next_check`. Returns when the receiver first calls the peer silent.
    fn simulate(l: Liveness, jitter: &[u64], dies_at: u64, until: u64) -> Option<u64> {
        let mut tx = StreamClock::new(0);
        let mut rx = StreamClock::new(0);
        let mut arrivals = Vec::new();
        let mut j = jitter.iter().cycle();
        let mut t_tx = 0;
        while t_tx < dies_at.min(until) {
            if tx.heartbeat_due(&l, t_tx) {
                tx.sent(t_tx);
                arrivals.push(t_tx);
            }
            t_tx = tx.next_check(&l, false) + j.next().copied().unwrap_or(0);
        }
        let mut t_rx = 0;
        let mut next = arrivals.iter().peekable();
        while t_rx <= until {
            while let Some(&&a) = next.peek().filter(|&&&a| a <= t_rx) {
                rx.heard(a);
                next.next();
            }
            if rx.silent(&l, t_rx).is_some() {
                return Some(t_rx);
            }
            if rx.heartbeat_due(&l, t_rx) {
                rx.sent(t_rx);
            }
            t_rx = rx.next_check(&l, true).max(t_rx + 1);
        }
        None
    }

    proptest! {
        /// A peer whose threads are late by less than the slack between
        /// the heartbeat and the timeout is never failed.
        #[test]
        fn live_peer_is_never_failed(timeout in 100u64..100_000,
                                     jitter in proptest::collection::vec(0u64..1_000_000, 1..16)) {
            let l = Liveness::new(timeout, Liveness::interval_for(timeout));
            let slack = l.timeout_ms - l.heartbeat_ms;
            let jitter: Vec<u64> = jitter.iter().map(|j| j % slack).collect();
            prop_assert_eq!(simulate(l, &jitter, u64::MAX, 20 * timeout), None);
        }

        /// A peer that dies is called silent within
        /// [timeout - heartbeat, timeout] of its death (plus the 1 ms tick).
        #[test]
        fn dead_peer_is_found_within_the_bound(timeout in 100u64..100_000, dies in 0u64..1_000_000) {
            let l = Liveness::new(timeout, Liveness::interval_for(timeout));
            let found = simulate(l, &[0], dies, dies + 3 * timeout);
            let found = found.expect("a dead peer is always found");
            prop_assert!(found + l.heartbeat_ms > dies + l.timeout_ms, "{found} too early for death at {dies}");
            prop_assert!(found <= dies + l.timeout_ms + 1, "{found} too late for death at {dies}");
        }
    }
}
