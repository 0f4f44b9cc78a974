//! Where a connection's requests spent their time, summed over its life and
//! logged when it closes (`NCCL_DEBUG=INFO`, subsystem NET).
//!
//! It separates the transport's share of a collective's step from NCCL's: a
//! request's time from post to the test that saw it complete, how many tests
//! NCCL's proxy made meanwhile (and so how far apart they were), and for a
//! receive how long until its first frame was matched. A few relaxed atomic
//! adds per completed request, and one clock read per matched frame.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// One request's clock: when it was posted, how often it was tested, and
/// whether a test has already seen it complete (so it is counted once).
pub(super) struct RequestClock {
    posted: Instant,
    tests: AtomicU64,
    reported: AtomicBool,
}

impl RequestClock {
    pub(super) fn start() -> Self {
        RequestClock {
            posted: Instant::now(),
            tests: AtomicU64::new(0),
            reported: AtomicBool::new(false),
        }
    }

    pub(super) fn posted(&self) -> Instant {
        self.posted
    }

    /// Counts one call of `test`; returns the count so far.
    pub(super) fn tested(&self) -> u64 {
        self.tests.fetch_add(1, Relaxed) + 1
    }

    /// The time since the post, for the first test that sees the request
    /// complete; `None` for any later one.
    pub(super) fn first_completion(&self) -> Option<Duration> {
        (!self.reported.swap(true, Relaxed)).then(|| self.posted.elapsed())
    }
}

#[derive(Default)]
pub(super) struct Timeline {
    requests: AtomicU64,
    bytes: AtomicU64,
    tests: AtomicU64,
    /// Posted → the test that saw it complete.
    pending_ns: AtomicU64,
    /// Receives only: posted → first frame matched to it.
    first_frame_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Timeline {
    /// One request, completed after `tests` calls of its test (the
    /// completing one included).
    pub(super) fn record(
        &self,
        bytes: u64,
        tests: u64,
        pending: Duration,
        first_frame: Option<Duration>,
    ) {
        self.requests.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.tests.fetch_add(tests, Relaxed);
        self.pending_ns.fetch_add(nanos(pending), Relaxed);
        if let Some(d) = first_frame {
            self.first_frame_ns.fetch_add(nanos(d), Relaxed);
        }
    }

    /// The closing line's figures, `None` if no request completed. `what`
    /// names the requests ("sends", "receives").
    pub(super) fn summary(&self, what: &str) -> Option<String> {
        let n = self.requests.load(Relaxed);
        if n == 0 {
            return None;
        }
        let per = |total: &AtomicU64| total.load(Relaxed) as f64 / n as f64;
        let tests = per(&self.tests);
        let pending_us = per(&self.pending_ns) / 1e3;
        let first = self.first_frame_ns.load(Relaxed);
        let first_frame = if first > 0 {
            format!("first frame matched {:.1}, ", first as f64 / n as f64 / 1e3)
        } else {
            String::new()
        };
        Some(format!(
            "{n} {what} of {:.0} B on average; mean us from post: {first_frame}complete and tested {pending_us:.1}; {tests:.1} tests each, {:.1} us apart",
            per(&self.bytes),
            pending_us / tests.max(1.0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_gives_means_per_request() {
        let t = Timeline::default();
        assert_eq!(t.summary("sends"), None);
        t.record(
            1000,
            4,
            Duration::from_micros(40),
            Some(Duration::from_micros(10)),
        );
        t.record(
            3000,
            2,
            Duration::from_micros(20),
            Some(Duration::from_micros(6)),
        );
        assert_eq!(
            t.summary("receives").unwrap(),
            "2 receives of 2000 B on average; mean us from post: first frame matched 8.0, \
             complete and tested 30.0; 3.0 tests each, 10.0 us apart"
        );
        let s = Timeline::default();
        s.record(8, 1, Duration::from_micros(5), None);
        assert_eq!(
            s.summary("sends").unwrap(),
            "1 sends of 8 B on average; mean us from post: complete and tested 5.0; 1.0 tests each, 5.0 us apart"
        );
    }
}
