//! Where a call's bytes live: one or more of NCCL's buffers, concatenated
//! (a scatter-gather list for allgather/reduce-scatter windows, one buffer
//! otherwise). Steps read and write them through range-checked copies, from
//! whichever thread runs the step.

use std::sync::Arc;

use super::lend::Payload;
use super::pool;
use super::steps::SendBytes;
use crate::error::{NetError, NetResult};
use crate::sys::RawBuf;

/// A call's input or output. Every job of a call holds a copy: none (a
/// call the GPU kernels run) or one buffer (each allreduce) is held inline,
/// and a list of parts (allgather and reduce-scatter windows) is shared and
/// reused from call to call ([`Buffers::recycle`]), so making and copying
/// them allocates nothing once warm.
#[derive(Clone)]
pub struct Buffers(Parts);

#[derive(Clone)]
enum Parts {
    None,
    One([RawBuf; 1]),
    Many(Arc<Vec<RawBuf>>),
}

/// Part lists of finished calls, for [`Buffers::new`] to fill again.
pub type SpareParts = Vec<Arc<Vec<RawBuf>>>;

impl Buffers {
    /// The concatenation of `parts`; a list of several reuses one of
    /// `spare` where it can.
    pub fn new(parts: impl ExactSizeIterator<Item = RawBuf>, spare: &mut SpareParts) -> Buffers {
        let mut parts = parts.peekable();
        Buffers(match (parts.len(), parts.peek()) {
            (0, _) => Parts::None,
            (1, Some(&one)) => Parts::One([one]),
            _ => {
                let mut list = spare.pop().unwrap_or_default();
                match Arc::get_mut(&mut list) {
                    Some(v) => {
                        v.clear();
                        v.extend(parts);
                    }
                    None => list = Arc::new(parts.collect()),
                }
                Parts::Many(list)
            }
        })
    }

    /// Keeps a finished call's list of parts for a later call, unless a
    /// job still holds a copy (or `spare` has `most` already).
    pub fn recycle(self, spare: &mut SpareParts, most: usize) {
        if let Parts::Many(mut list) = self.0 {
            if Arc::get_mut(&mut list).is_some() && spare.len() < most {
                spare.push(list);
            }
        }
    }

    fn parts(&self) -> &[RawBuf] {
        match &self.0 {
            Parts::None => &[],
            Parts::One(one) => one,
            Parts::Many(many) => many,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.parts().iter().map(RawBuf::len).sum()
    }

    fn visit(
        &self,
        mut offset: usize,
        len: usize,
        mut f: impl FnMut(&RawBuf, usize, std::ops::Range<usize>) -> std::io::Result<()>,
    ) -> NetResult<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(NetError::InvalidArgument(format!(
                "collnet buffer range {offset}+{len} exceeds {} bytes",
                self.len()
            )));
        }
        let mut done = 0;
        for part in self.parts() {
            if done == len {
                break;
            }
            if offset >= part.len() {
                offset -= part.len();
                continue;
            }
            let take = (part.len() - offset).min(len - done);
            f(part, offset, done..done + take)
                .map_err(|e| NetError::io("collnet buffer copy", e))?;
            done += take;
            offset = 0;
        }
        Ok(())
    }

    /// Runs `f` on input bytes `range`: in place when they lie in one part
    /// (always, for NCCL's calls), else on a pooled copy.
    pub fn with_bytes<R>(
        &self,
        range: std::ops::Range<usize>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> NetResult<R> {
        if range.is_empty() {
            return Ok(f(&[]));
        }
        let mut offset = range.start;
        for part in self.parts() {
            if offset < part.len() {
                if offset + range.len() <= part.len() {
                    return part
                        .with_bytes(offset, range.len(), f)
                        .map_err(|e| NetError::io("collnet input", e));
                }
                break;
            }
            offset -= part.len();
        }
        let mut copy = pool::take(range.len());
        let len = copy.len();
        self.visit(range.start, len, |part, off, r| {
            part.read_at(off, &mut copy[r])
        })?;
        let out = f(&copy);
        pool::give(copy);
        Ok(out)
    }

    /// Runs `f` on output bytes `range`, which it may fill or leave alone:
    /// in place when they lie in one part (always, for NCCL's calls), else
    /// on a pooled copy of them, written back after.
    pub fn with_bytes_mut<R>(
        &self,
        range: std::ops::Range<usize>,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> NetResult<R> {
        if let Some(raw) = self.slice(range.start, range.len()) {
            return raw
                .with_bytes_mut(0, range.len(), f)
                .map_err(|e| NetError::io("collnet output", e));
        }
        let mut buf = pool::take(range.len());
        let len = buf.len();
        self.visit(range.start, len, |part, off, r| {
            part.read_at(off, &mut buf[r])
        })?;
        let out = f(&mut buf);
        self.write(range.start, &buf)?;
        pool::give(buf);
        Ok(out)
    }

    /// Whether bytes `range` of these buffers and `other_range` of `other`
    /// may be the same memory (an in-place call); `true` when either range
    /// spans several parts, where it is not worth finding out.
    pub fn may_overlap(
        &self,
        range: std::ops::Range<usize>,
        other: &Buffers,
        other_range: std::ops::Range<usize>,
    ) -> bool {
        match (
            self.slice(range.start, range.len()),
            other.slice(other_range.start, other_range.len()),
        ) {
            (Some(a), Some(b)) => a.overlaps(&b),
            _ => true,
        }
    }

    /// Bytes `range` (of an input, or of an output once written) to send as
    /// they are: lent straight from NCCL's buffer when they lie in one part
    /// (always, for NCCL's calls; it keeps the buffer until the call
    /// completes, which waits for the send), else a pooled copy.
    pub fn lend(&self, range: std::ops::Range<usize>) -> NetResult<Payload> {
        if let Some(raw) = self.slice(range.start, range.len()) {
            return Ok(Payload::Borrowed(raw));
        }
        let bytes = self.with_bytes(range, pool::copy_of)?;
        Ok(Payload::Heap(pool::share(bytes)))
    }

    /// A step's message as the transport takes it: bytes the step made, or
    /// a range of the call's `input` or `output`, lent ([`Buffers::lend`]).
    pub fn payload(input: &Buffers, output: &Buffers, bytes: SendBytes) -> NetResult<Payload> {
        match bytes {
            SendBytes::Owned(b) => Ok(Payload::Heap(b)),
            SendBytes::Input(range) => input.lend(range),
            SendBytes::Output(range) => output.lend(range),
        }
    }

    /// Bytes `offset..offset + len` as one buffer, if they lie in one part
    /// (always, for NCCL's allreduce calls).
    pub fn slice(&self, mut offset: usize, len: usize) -> Option<RawBuf> {
        for part in self.parts() {
            if offset < part.len() {
                return part.slice(offset, len);
            }
            offset -= part.len();
        }
        None
    }

    pub fn write(&self, offset: usize, src: &[u8]) -> NetResult<()> {
        self.visit(offset, src.len(), |part, off, r| {
            part.write_at(off, &src[r])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output bytes that span two parts go through a pooled copy: bytes
    /// the caller leaves alone come back unchanged, bytes it writes land.
    #[test]
    #[allow(unsafe_code)]
    fn output_across_parts_keeps_what_the_caller_leaves() {
        let (mut a, mut b) = (vec![1u8; 4], vec![2u8; 4]);
        // SAFETY: both vectors outlive `out` and are read only after its
        // last use.
        let parts = unsafe {
            [
                RawBuf::new(a.as_mut_ptr(), a.len()),
                RawBuf::new(b.as_mut_ptr(), b.len()),
            ]
        };
        let mut spare = SpareParts::new();
        let out = Buffers::new(parts.into_iter(), &mut spare);
        out.with_bytes_mut(2..6, |_| ()).unwrap();
        out.with_bytes_mut(3..5, |bytes| bytes.fill(9)).unwrap();
        drop(out);
        assert_eq!((a, b), (vec![1, 1, 1, 9], vec![9, 2, 2, 2]));
    }

    /// A call's list of parts is kept only once no copy holds it, and the
    /// next call of several parts fills the same list.
    #[test]
    #[allow(unsafe_code)]
    fn part_lists_are_reused_once_no_job_holds_them() {
        let mut bytes = vec![0u8; 8];
        let at = bytes.as_mut_ptr();
        // SAFETY: never read or written through; `bytes` outlives them.
        let parts = unsafe { [RawBuf::new(at, 4), RawBuf::new(at.wrapping_add(4), 4)] };
        let mut spare = SpareParts::new();
        let call = Buffers::new(parts.into_iter(), &mut spare);
        let job = call.clone();
        call.recycle(&mut spare, 4);
        assert!(spare.is_empty(), "a job still holds the list");
        job.recycle(&mut spare, 4);
        assert_eq!(spare.len(), 1);
        let list = Arc::as_ptr(&spare[0]);
        let next = Buffers::new(parts.into_iter().rev(), &mut spare);
        assert!(spare.is_empty());
        assert!(matches!(&next.0, Parts::Many(l) if Arc::as_ptr(l) == list));
        assert_eq!(next.len(), 8);
        // One part is held inline: nothing to keep.
        Buffers::new(parts[..1].iter().copied(), &mut spare).recycle(&mut spare, 4);
        assert!(spare.is_empty());
    }
}
