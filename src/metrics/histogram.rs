//! Fixed-bucket atomic histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `N - 1` finite buckets plus one overflow (`+Inf`) bucket. Buckets are
/// stored non-cumulatively and cumulated at render time; the count is the
/// sum of the buckets, so `+Inf == _count` holds in every snapshot even
/// while other threads observe concurrently.
pub(crate) struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

/// A point-in-time copy of a histogram, cumulated.
pub(crate) struct Snapshot<const N: usize> {
    /// Cumulative counts; the last one is `+Inf`, i.e. the total count.
    pub cumulative: [u64; N],
    /// Sum of the observed values, in the histogram's integer unit.
    pub sum: u64,
}

impl<const N: usize> Histogram<N> {
    pub(crate) const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; N],
            sum: AtomicU64::new(0),
        }
    }

    /// Record `v`; `bounds` are the inclusive upper bounds, ascending, and
    /// `bounds.len() == N - 1`.
    #[inline]
    pub(crate) fn observe(&self, bounds: &[u64], v: u64) {
        debug_assert_eq!(bounds.len() + 1, N);
        let i = bounds.partition_point(|&b| b < v);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot<N> {
        let mut cumulative = [0u64; N];
        let mut acc = 0u64;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            acc = acc.wrapping_add(b.load(Relaxed));
            *c = acc;
        }
        Snapshot {
            cumulative,
            sum: self.sum.load(Relaxed),
        }
    }
}
