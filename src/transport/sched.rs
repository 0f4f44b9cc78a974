//! Send-side chunk scheduling, without I/O.
//!
//! Messages are cut into chunks when they are queued; whichever stream is
//! free takes the next chunk. A slow stream therefore simply takes fewer
//! chunks and never holds back the others (dynamic scheduling), with one
//! exception: mid-size messages ([`SendScheduler::with_narrow`]) are kept to
//! the first [`NARROW_STREAMS`] streams, so the few threads that move them
//! stay warm, and while one is next in line only those streams take chunks.

use std::collections::VecDeque;

use super::wire::FrameHeader;

const CHUNK_ALIGN: u64 = 4096;
/// Streams that carry a narrow message. On the H200 host 1 MiB allreduces
/// (NCCL's 128 KiB messages) ran 13-17 % faster on connections of one or
/// two streams than of four, and larger ones 8-19 % slower; keeping only
/// the mid-size messages on two of four streams gave 1 MiB most of that
/// without the loss (docs/transport.md).
pub const NARROW_STREAMS: u64 = 2;

/// One chunk to put on a stream: the header, and the op it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk<T> {
    pub op: T,
    pub header: FrameHeader,
}

struct Queued<T> {
    op: T,
    seq: u64,
    tag: i32,
    total: u64,
    chunk: u64,
    next_offset: u64,
    /// A zero-byte message still sends one header-only frame.
    sent_empty: bool,
}

pub struct SendScheduler<T> {
    queue: VecDeque<Queued<T>>,
    next_seq: u64,
    max_chunk: u64,
    min_chunk: u64,
    streams: u64,
    /// Messages larger than `.0` and up to `.1` go on the first
    /// [`NARROW_STREAMS`] streams only.
    narrow: (u64, u64),
}

impl<T: Clone> SendScheduler<T> {
    /// Chunks of at most `max_chunk` bytes, and, where a message is spread
    /// over the `streams`, of at least `min_chunk` (a message up to that
    /// size travels whole on one stream); the floor is never below 4 KiB.
    pub fn new(max_chunk: u32, min_chunk: u32, streams: usize) -> Self {
        SendScheduler {
            queue: VecDeque::new(),
            next_seq: 0,
            max_chunk: u64::from(max_chunk.max(1)),
            min_chunk: u64::from(min_chunk).max(CHUNK_ALIGN),
            streams: streams.max(1) as u64,
            narrow: (0, 0),
        }
    }

    /// Keeps messages larger than `above` (those the caller's thread does
    /// not move itself) and up to `up_to` bytes on the first
    /// [`NARROW_STREAMS`] streams.
    pub fn with_narrow(mut self, above: u64, up_to: u64) -> Self {
        self.narrow = (above, up_to);
        self
    }

    /// How many streams, the first ones, may carry a message of `total`
    /// bytes.
    pub fn streams_for(&self, total: u64) -> u64 {
        if total > self.narrow.0 && total <= self.narrow.1 {
            NARROW_STREAMS.min(self.streams)
        } else {
            self.streams
        }
    }

    /// Whether stream `index` may take the next chunk (there is one, and
    /// its message may use that stream).
    pub fn head_allows(&self, index: usize) -> bool {
        self.queue
            .front()
            .is_some_and(|q| (index as u64) < self.streams_for(q.total))
    }

    /// Chunk size for a message of `total` bytes: spread it over the streams
    /// it may use, but keep chunks between the minimum and the maximum
    /// (which wins).
    pub fn chunk_size(&self, total: u64) -> u64 {
        let per_stream = total
            .div_ceil(self.streams_for(total))
            .next_multiple_of(CHUNK_ALIGN);
        per_stream.max(self.min_chunk).min(self.max_chunk)
    }

    /// Queues a message; returns its sequence number and how many chunks
    /// must be written before it is complete.
    pub fn push(&mut self, op: T, tag: i32, total: u64) -> (u64, u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let chunk = self.chunk_size(total);
        let chunks = total.div_ceil(chunk).max(1);
        self.queue.push_back(Queued {
            op,
            seq,
            tag,
            total,
            chunk,
            next_offset: 0,
            sent_empty: false,
        });
        (seq, u32::try_from(chunks).unwrap_or(u32::MAX))
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Size of the message whose chunk `next_chunk` would return.
    pub fn head_total(&self) -> Option<u64> {
        self.queue.front().map(|q| q.total)
    }

    /// The next chunk in send order, if any remains.
    pub fn next_chunk(&mut self) -> Option<Chunk<T>> {
        let head = self.queue.front_mut()?;
        let len = (head.total - head.next_offset).min(head.chunk);
        let chunk = Chunk {
            op: head.op.clone(),
            header: FrameHeader {
                seq: head.seq,
                total: head.total,
                offset: head.next_offset,
                len: len as u32,
                tag: head.tag,
            },
        };
        head.next_offset += len;
        if head.total == 0 {
            head.sent_empty = true;
        }
        if head.next_offset == head.total && (head.total > 0 || head.sent_empty) {
            self.queue.pop_front();
        }
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn large_message_is_spread_over_streams() {
        let mut s = SendScheduler::new(512 << 10, 64 << 10, 4);
        let (seq, chunks) = s.push('a', 7, 1 << 20);
        assert_eq!((seq, chunks), (0, 4));
        assert_eq!(s.head_total(), Some(1 << 20));
        let got: Vec<_> = std::iter::from_fn(|| s.next_chunk()).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(s.head_total(), None);
        assert!(got
            .iter()
            .all(|c| c.header.len == 256 << 10 && c.header.tag == 7));
    }

    #[test]
    fn message_up_to_the_minimum_chunk_travels_whole() {
        let mut s = SendScheduler::new(512 << 10, 256 << 10, 4);
        assert_eq!(s.push('a', 0, 256 << 10).1, 1);
        assert_eq!(s.push('b', 0, 1 << 20).1, 4);
        let lens: Vec<_> = std::iter::from_fn(|| s.next_chunk())
            .map(|c| (c.op, c.header.len))
            .collect();
        assert_eq!(
            lens,
            [
                ('a', 256 << 10),
                ('b', 256 << 10),
                ('b', 256 << 10),
                ('b', 256 << 10),
                ('b', 256 << 10)
            ]
        );
        let mut small_floor = SendScheduler::new(512 << 10, 64 << 10, 4);
        assert_eq!(small_floor.push('a', 0, 256 << 10).1, 4);
    }

    #[test]
    fn narrow_messages_keep_to_the_first_streams() {
        let mut s = SendScheduler::new(512 << 10, 64 << 10, 4).with_narrow(64 << 10, 256 << 10);
        assert!(!s.head_allows(0), "nothing queued");
        // Up to the lower end (the caller's own messages): every stream.
        assert_eq!(s.streams_for(64 << 10), 4);
        assert_eq!(s.streams_for((64 << 10) + 1), 2);
        // 128 KiB: two chunks, for streams 0 and 1 only.
        assert_eq!(s.push('a', 0, 128 << 10).1, 2);
        assert_eq!(
            (0..4).map(|i| s.head_allows(i)).collect::<Vec<_>>(),
            [true, true, false, false]
        );
        // Just above the cut: spread over all four.
        assert_eq!(s.push('b', 0, (256 << 10) + 4096).1, 4);
        let a: Vec<_> = (0..2).map(|_| s.next_chunk().unwrap()).collect();
        assert!(a.iter().all(|c| c.op == 'a' && c.header.len == 64 << 10));
        assert!((0..4).all(|i| s.head_allows(i)));
        // Off, and a connection of one stream: every stream may take
        // everything it has.
        let mut off = SendScheduler::new(512 << 10, 64 << 10, 4);
        off.push('c', 0, 128 << 10);
        assert!(off.head_allows(3));
        let mut one = SendScheduler::new(512 << 10, 64 << 10, 1).with_narrow(0, 1 << 20);
        assert_eq!(one.push('d', 0, 128 << 10).1, 1);
        assert!(one.head_allows(0) && !one.head_allows(1));
    }

    #[test]
    fn zero_floor_still_cuts_whole_chunks() {
        let mut s = SendScheduler::new(512 << 10, 0, 4);
        assert_eq!(s.push('a', 0, 0).1, 1);
        assert_eq!(s.push('b', 0, 10).1, 1);
        assert_eq!(s.chunk_size(16 << 10), 4096);
    }

    #[test]
    fn zero_byte_message_sends_one_empty_frame() {
        let mut s = SendScheduler::new(512 << 10, 64 << 10, 4);
        assert_eq!(s.push(1u8, 0, 0), (0, 1));
        assert_eq!(s.push(2u8, 0, 10), (1, 1));
        let a = s.next_chunk().unwrap();
        assert_eq!((a.op, a.header.len, a.header.total), (1, 0, 0));
        let b = s.next_chunk().unwrap();
        assert_eq!((b.op, b.header.seq, b.header.len), (2, 1, 10));
        assert!(s.next_chunk().is_none());
    }

    proptest! {
        /// Chunks of every message tile it exactly, in order, and their count
        /// is what push() promised.
        #[test]
        fn chunks_tile_messages(sizes in proptest::collection::vec(0u64..5_000_000, 1..20),
                                max_chunk in 4096u32..2_000_000, min_chunk in 0u32..2_000_000,
                                streams in 1usize..16) {
            let mut s = SendScheduler::new(max_chunk, min_chunk, streams);
            let sizes: Vec<u64> = std::iter::once(0).chain(sizes).collect();
            let promised: Vec<u32> = sizes.iter().enumerate().map(|(i, &n)| s.push(i, i as i32, n).1).collect();
            let mut seen = vec![(0u64, 0u32); sizes.len()];
            while let Some(c) = s.next_chunk() {
                let h = c.header;
                prop_assert_eq!(h.seq as usize, c.op);
                prop_assert_eq!(h.offset, seen[c.op].0, "in-order tiling");
                prop_assert!(h.len <= max_chunk.max(1));
                if h.offset + u64::from(h.len) < h.total {
                    prop_assert!(h.len >= min_chunk.min(max_chunk), "only a message's last chunk is short");
                }
                seen[c.op].0 += u64::from(h.len);
                seen[c.op].1 += 1;
            }
            for (i, &n) in sizes.iter().enumerate() {
                prop_assert_eq!(seen[i], (n, promised[i]));
            }
        }
    }
}
