//! Receive-side matching, without I/O.
//!
//! Messages arrive numbered in the order the peer posted its sends; chunks of
//! one message may arrive on any stream and in any order. Message `seq` is
//! matched only after `seq - 1`, against the oldest posted receive that still
//! has a free slot, and within it against the first free slot with the same
//! tag (NCCL's grouped-receive rule). Every chunk is checked against the slot
//! it lands in, so a broken peer gets an error, never an out-of-bounds write.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use super::wire::FrameHeader;

/// Most slots in one grouped receive (the `maxRecvs` NCCL is told).
pub const MAX_RECVS: usize = 8;

/// One value per slot of a grouped receive, held inline: posting and
/// completing receives allocates nothing.
#[derive(Clone, Copy)]
pub struct PerSlot<T: Copy> {
    len: usize,
    items: [T; MAX_RECVS],
}

impl<T: Copy + Default> PerSlot<T> {
    pub fn new() -> Self {
        PerSlot {
            len: 0,
            items: [T::default(); MAX_RECVS],
        }
    }

    /// Appends `item`; callers keep to [`MAX_RECVS`] slots.
    pub fn push(&mut self, item: T) {
        assert!(self.len < MAX_RECVS, "more than {MAX_RECVS} slots");
        self.items[self.len] = item;
        self.len += 1;
    }
}

impl<T: Copy + Default> Default for PerSlot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default> FromIterator<T> for PerSlot<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut out = Self::new();
        iter.into_iter().for_each(|item| out.push(item));
        out
    }
}

impl<T: Copy> Deref for PerSlot<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items[..self.len]
    }
}

impl<T: Copy> DerefMut for PerSlot<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items[..self.len]
    }
}

impl<T: Copy + PartialEq> PartialEq for PerSlot<T> {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl<T: Copy + Eq> Eq for PerSlot<T> {}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for PerSlot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchError {
    /// The message is larger than the receive buffer posted for it.
    Truncated { seq: u64, message: u64, posted: u64 },
    /// No free slot of the oldest receive carries the message's tag.
    TagMismatch { seq: u64, tag: i32 },
    /// A chunk for a message that is complete or was never announced.
    UnknownMessage { seq: u64 },
    /// Chunks of one message disagree, or overfill it.
    Inconsistent { seq: u64 },
}

impl std::fmt::Display for MatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MatchError::Truncated { seq, message, posted } => write!(
                f,
                "message #{seq} of {message} bytes is larger than the posted receive of {posted} bytes"
            ),
            MatchError::TagMismatch { seq, tag } => {
                write!(f, "message #{seq} has tag {tag}, which no posted receive expects")
            }
            MatchError::UnknownMessage { seq } => write!(f, "chunk of unknown message #{seq}"),
            MatchError::Inconsistent { seq } => write!(f, "inconsistent chunks for message #{seq}"),
        }
    }
}

/// Where a chunk's payload goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub request: u64,
    pub slot: usize,
    /// Byte offset inside the slot's buffer.
    pub offset: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeaderOutcome {
    /// Read the payload into this slot.
    Deliver(Placement),
    /// The receive for this message (or an earlier one) is not posted yet.
    Wait,
}

/// A posted receive is complete: the received size of each slot.
#[derive(Debug, PartialEq, Eq)]
pub struct Completed {
    pub request: u64,
    pub sizes: PerSlot<u64>,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    tag: i32,
    capacity: u64,
    /// Set when a message is matched to this slot.
    message: Option<u64>,
    received: u64,
}

struct Posted {
    request: u64,
    slots: PerSlot<Slot>,
    unmatched: usize,
    incomplete: usize,
}

struct Active {
    seq: u64,
    request: u64,
    slot: usize,
    total: u64,
    tag: i32,
    received: u64,
}

/// Its lists are made with room for a connection's receives in flight
/// ([`RecvMatcher::with_room`]), so posting and matching allocate nothing.
#[derive(Default)]
pub struct RecvMatcher {
    posted: VecDeque<Posted>,
    active: Vec<Active>,
    next_seq: u64,
}

impl RecvMatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `receives` posted receives and a message in every slot of
    /// each.
    pub fn with_room(receives: usize) -> Self {
        RecvMatcher {
            posted: VecDeque::with_capacity(receives),
            active: Vec::with_capacity(receives * MAX_RECVS),
            next_seq: 0,
        }
    }

    /// Posts one (possibly grouped) receive: `(tag, capacity)` per slot,
    /// at most [`MAX_RECVS`] of them.
    pub fn post(&mut self, request: u64, slots: impl ExactSizeIterator<Item = (i32, u64)>) {
        self.posted.push_back(Posted {
            request,
            unmatched: slots.len(),
            incomplete: slots.len(),
            slots: slots
                .map(|(tag, capacity)| Slot {
                    tag,
                    capacity,
                    message: None,
                    received: 0,
                })
                .collect(),
        });
    }

    /// True while a matched message is not complete: its header arrived,
    /// so the peer owes us the rest of it.
    pub fn mid_message(&self) -> bool {
        !self.active.is_empty()
    }

    pub fn on_header(&mut self, h: &FrameHeader) -> Result<HeaderOutcome, MatchError> {
        if let Some(a) = self.active.iter().find(|a| a.seq == h.seq) {
            if a.total != h.total || a.tag != h.tag {
                return Err(MatchError::Inconsistent { seq: h.seq });
            }
            return Ok(HeaderOutcome::Deliver(Placement {
                request: a.request,
                slot: a.slot,
                offset: h.offset,
            }));
        }
        if h.seq < self.next_seq {
            return Err(MatchError::UnknownMessage { seq: h.seq });
        }
        if h.seq > self.next_seq {
            return Ok(HeaderOutcome::Wait);
        }
        let Some(posted) = self.posted.iter_mut().find(|p| p.unmatched > 0) else {
            return Ok(HeaderOutcome::Wait);
        };
        let Some(slot_index) = posted
            .slots
            .iter()
            .position(|s| s.message.is_none() && s.tag == h.tag)
        else {
            return Err(MatchError::TagMismatch {
                seq: h.seq,
                tag: h.tag,
            });
        };
        let slot = &mut posted.slots[slot_index];
        if h.total > slot.capacity {
            return Err(MatchError::Truncated {
                seq: h.seq,
                message: h.total,
                posted: slot.capacity,
            });
        }
        slot.message = Some(h.seq);
        posted.unmatched -= 1;
        self.active.push(Active {
            seq: h.seq,
            request: posted.request,
            slot: slot_index,
            total: h.total,
            tag: h.tag,
            received: 0,
        });
        self.next_seq += 1;
        Ok(HeaderOutcome::Deliver(Placement {
            request: posted.request,
            slot: slot_index,
            offset: h.offset,
        }))
    }

    /// Records that a chunk's payload has been written; reports the receive
    /// it completes, if any.
    pub fn on_chunk_done(&mut self, seq: u64, len: u32) -> Result<Option<Completed>, MatchError> {
        let i = self
            .active
            .iter()
            .position(|a| a.seq == seq)
            .ok_or(MatchError::UnknownMessage { seq })?;
        let a = &mut self.active[i];
        a.received += u64::from(len);
        if a.received > a.total {
            return Err(MatchError::Inconsistent { seq });
        }
        if a.received < a.total {
            return Ok(None);
        }
        let a = self.active.swap_remove(i);
        let p = self
            .posted
            .iter()
            .position(|p| p.request == a.request)
            .expect("an active message always belongs to a posted receive");
        let posted = &mut self.posted[p];
        posted.slots[a.slot].received = a.total;
        posted.incomplete -= 1;
        if posted.incomplete > 0 {
            return Ok(None);
        }
        let done = self.posted.remove(p).expect("index is valid");
        Ok(Some(Completed {
            request: done.request,
            sizes: done.slots.iter().map(|s| s.received).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(seq: u64, tag: i32, total: u64, offset: u64, len: u32) -> FrameHeader {
        FrameHeader {
            seq,
            total,
            offset,
            len,
            tag,
        }
    }

    fn deliver(m: &mut RecvMatcher, h: FrameHeader) -> Placement {
        match m.on_header(&h).unwrap() {
            HeaderOutcome::Deliver(p) => p,
            HeaderOutcome::Wait => panic!("expected delivery for {h:?}"),
        }
    }

    #[test]
    fn waits_for_post_then_reports_real_size() {
        let mut m = RecvMatcher::new();
        let h = hdr(0, 5, 10, 0, 10);
        assert_eq!(m.on_header(&h), Ok(HeaderOutcome::Wait));
        m.post(1, [(5, 100)].into_iter());
        assert_eq!(deliver(&mut m, h).offset, 0);
        assert_eq!(
            m.on_chunk_done(0, 10).unwrap(),
            Some(Completed {
                request: 1,
                sizes: [10].into_iter().collect()
            })
        );
    }

    #[test]
    fn later_messages_wait_for_earlier_ones() {
        let mut m = RecvMatcher::new();
        m.post(1, [(0, 100)].into_iter());
        m.post(2, [(0, 100)].into_iter());
        assert_eq!(m.on_header(&hdr(1, 0, 4, 0, 4)), Ok(HeaderOutcome::Wait));
        assert_eq!(deliver(&mut m, hdr(0, 0, 4, 0, 4)).request, 1);
        assert_eq!(deliver(&mut m, hdr(1, 0, 4, 0, 4)).request, 2);
        assert!(m.on_chunk_done(1, 4).unwrap().is_some());
        assert!(m.on_chunk_done(0, 4).unwrap().is_some());
    }

    #[test]
    fn grouped_receive_matches_by_tag_and_completes_once() {
        let mut m = RecvMatcher::new();
        m.post(9, [(1, 64), (2, 64), (3, 64)].into_iter());
        assert_eq!(deliver(&mut m, hdr(0, 3, 8, 0, 8)).slot, 2);
        assert_eq!(deliver(&mut m, hdr(1, 1, 0, 0, 0)).slot, 0);
        assert_eq!(deliver(&mut m, hdr(2, 2, 16, 0, 16)).slot, 1);
        assert_eq!(m.on_chunk_done(0, 8).unwrap(), None);
        assert_eq!(m.on_chunk_done(1, 0).unwrap(), None);
        assert_eq!(
            m.on_chunk_done(2, 16).unwrap(),
            Some(Completed {
                request: 9,
                sizes: [0, 16, 8].into_iter().collect()
            })
        );
    }

    #[test]
    fn chunks_in_any_order_complete_the_message() {
        let mut m = RecvMatcher::new();
        m.post(1, [(0, 300)].into_iter());
        assert!(!m.mid_message());
        assert_eq!(deliver(&mut m, hdr(0, 0, 300, 200, 100)).offset, 200);
        assert!(m.mid_message());
        assert!(m.on_chunk_done(0, 100).unwrap().is_none());
        assert!(m.mid_message());
        assert_eq!(deliver(&mut m, hdr(0, 0, 300, 0, 200)).offset, 0);
        assert!(m.on_chunk_done(0, 200).unwrap().is_some());
        assert!(!m.mid_message());
    }

    #[test]
    fn errors_for_broken_peers() {
        let mut m = RecvMatcher::new();
        m.post(1, [(0, 10)].into_iter());
        assert_eq!(
            m.on_header(&hdr(0, 0, 11, 0, 11)),
            Err(MatchError::Truncated {
                seq: 0,
                message: 11,
                posted: 10
            })
        );
        assert_eq!(
            m.on_header(&hdr(0, 4, 1, 0, 1)),
            Err(MatchError::TagMismatch { seq: 0, tag: 4 })
        );
        deliver(&mut m, hdr(0, 0, 8, 0, 8));
        assert_eq!(
            m.on_header(&hdr(0, 0, 9, 0, 1)),
            Err(MatchError::Inconsistent { seq: 0 })
        );
        assert_eq!(
            m.on_chunk_done(0, 9),
            Err(MatchError::Inconsistent { seq: 0 })
        );
        let mut m = RecvMatcher::new();
        m.post(1, [(0, 10)].into_iter());
        deliver(&mut m, hdr(0, 0, 1, 0, 1));
        m.on_chunk_done(0, 1).unwrap();
        assert_eq!(
            m.on_header(&hdr(0, 0, 1, 0, 1)),
            Err(MatchError::UnknownMessage { seq: 0 })
        );
    }
}
