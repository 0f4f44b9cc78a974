//! Work partition for one allreduce, without I/O.
//!
//! * [`shard_range`]: which elements member `s` owns (reduces and
//!   broadcasts). Shards are cut on 32-value FP8 block boundaries
//!   ([`BLOCK`]), so a block never straddles two owners; only the last
//!   block of the whole call may be partial. When there are fewer blocks
//!   than members, the trailing shards are empty (their owners receive and
//!   send nothing for them).
//! * [`Plan`]: a large call is cut into segments of a fixed number of
//!   elements (a multiple of [`BLOCK`]); each segment runs the same
//!   algorithm independently, so codec work on one segment can overlap the
//!   wire transfer of another.
//!
//! Everything here depends only on `(count, n, segment size)`, which are
//! identical on all ranks (brief §2 rule 4), so every member computes the
//! same partition without talking to the others.

use std::ops::Range;

/// Values per FP8 scale block; shard boundaries are multiples of it.
pub const BLOCK: usize = crate::codec::BLOCK;

/// Default segment size: 1 Mi elements (2 MiB of bf16, ~1 MiB of FP8 wire).
pub const DEFAULT_SEGMENT_ELEMS: usize = 1 << 20;

/// Elements `[start, end)` owned by member `s` among `n` for a call of
/// `count` elements. Blocks are spread as evenly as possible (the first
/// `blocks % n` shards get one block more). `n == 0` or `s >= n` gives an
/// empty range.
pub fn shard_range(count: usize, n: usize, s: usize) -> Range<usize> {
    if n == 0 || s >= n {
        return 0..0;
    }
    let blocks = count.div_ceil(BLOCK);
    let (q, r) = (blocks / n, blocks % n);
    let b0 = s * q + s.min(r);
    let b1 = b0 + q + usize::from(s < r);
    (b0 * BLOCK).min(count)..(b1 * BLOCK).min(count)
}

/// Number of members whose shard is non-empty (they are always the first
/// ones: `0..active_shards`).
pub fn active_shards(count: usize, n: usize) -> usize {
    count.div_ceil(BLOCK).min(n)
}

/// Pipelining of one call into equal segments (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    count: usize,
    n: usize,
    segment: usize,
}

impl Plan {
    /// `segment_elems` is rounded up to a non-zero multiple of [`BLOCK`].
    pub fn new(count: usize, n: usize, segment_elems: usize) -> Plan {
        let segment = segment_elems.max(1).next_multiple_of(BLOCK);
        Plan { count, n, segment }
    }

    /// Segment size chosen from a byte budget per segment of input
    /// (`elem_size` bytes per element), rounded to whole blocks.
    pub fn with_segment_bytes(count: usize, n: usize, elem_size: usize, bytes: usize) -> Plan {
        Plan::new(count, n, bytes / elem_size.max(1))
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn members(&self) -> usize {
        self.n
    }

    /// Elements per segment (a multiple of [`BLOCK`]).
    pub fn segment_elems(&self) -> usize {
        self.segment
    }

    /// Number of segments; 0 for an empty call.
    pub fn num_segments(&self) -> usize {
        self.count.div_ceil(self.segment)
    }

    /// Element range of segment `i` within the call (empty if out of range).
    pub fn segment(&self, i: usize) -> Range<usize> {
        let start = i.saturating_mul(self.segment).min(self.count);
        let end = start.saturating_add(self.segment).min(self.count);
        start..end
    }

    /// All segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.num_segments()).map(|i| self.segment(i))
    }

    /// Elements of the call owned by member `s` in segment `i` (absolute
    /// indices). Because segments are whole blocks, blocks never straddle
    /// shards across the whole call either.
    pub fn shard(&self, i: usize, s: usize) -> Range<usize> {
        let seg = self.segment(i);
        let r = shard_range(seg.len(), self.n, s);
        seg.start + r.start..seg.start + r.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_cases() {
        assert_eq!(shard_range(0, 4, 0), 0..0);
        assert_eq!(shard_range(1, 4, 0), 0..1);
        assert_eq!(shard_range(1, 4, 1), 1..1);
        assert_eq!(shard_range(100, 1, 0), 0..100);
        // 4 blocks (last partial) over 3 members: 2,1,1 blocks.
        assert_eq!(shard_range(100, 3, 0), 0..64);
        assert_eq!(shard_range(100, 3, 1), 64..96);
        assert_eq!(shard_range(100, 3, 2), 96..100);
        assert_eq!(shard_range(100, 0, 0), 0..0);
        assert_eq!(shard_range(100, 3, 3), 0..0);
        assert_eq!(active_shards(100, 3), 3);
        assert_eq!(active_shards(100, 8), 4);
        let p = Plan::new(100, 2, 40);
        assert_eq!(p.segment_elems(), 64);
        assert_eq!(p.segments().collect::<Vec<_>>(), vec![0..64, 64..100]);
        assert_eq!(p.shard(1, 0), 64..96);
        assert_eq!(p.shard(1, 1), 96..100);
        assert_eq!(Plan::new(0, 3, 0).num_segments(), 0);
        assert_eq!(
            Plan::with_segment_bytes(10, 1, 2, 4096).segment_elems(),
            2048
        );
    }

    proptest! {
        #[test]
        fn shards_tile_exactly(count in 0usize..5000, n in 1usize..300) {
            let mut next = 0;
            let mut nonempty = 0;
            for s in 0..n {
                let r = shard_range(count, n, s);
                prop_assert_eq!(r.start, next, "gap or overlap at shard {}", s);
                prop_assert!(r.start <= r.end);
                // Block aligned except at the end of the call.
                prop_assert!(r.start.is_multiple_of(BLOCK) || r.start == count);
                prop_assert!(r.end.is_multiple_of(BLOCK) || r.end == count);
                // Balanced to within one block.
                let blocks = count.div_ceil(BLOCK);
                prop_assert!(r.len() <= (blocks / n + 1) * BLOCK);
                if !r.is_empty() {
                    prop_assert_eq!(s, nonempty, "non-empty shards come first");
                    nonempty += 1;
                }
                next = r.end;
            }
            prop_assert_eq!(next, count);
            prop_assert_eq!(nonempty, active_shards(count, n));
        }

        #[test]
        fn every_element_has_one_owner(count in 0usize..3000, n in 1usize..40, seg in 0usize..700) {
            let p = Plan::new(count, n, seg);
            prop_assert_eq!(p.segment_elems() % BLOCK, 0);
            let mut owners = vec![0u32; count];
            for i in 0..p.num_segments() {
                let sr = p.segment(i);
                prop_assert!(!sr.is_empty());
                prop_assert!(sr.start.is_multiple_of(p.segment_elems()));
                for s in 0..n {
                    let r = p.shard(i, s);
                    prop_assert!(r.start >= sr.start && r.end <= sr.end);
                    for o in &mut owners[r] {
                        *o += 1;
                    }
                }
            }
            prop_assert!(owners.iter().all(|&o| o == 1));
            prop_assert_eq!(p.segment(p.num_segments()), count..count);
        }
    }
}
