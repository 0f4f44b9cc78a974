//! Lending the plugin's own buffers (heap, or pinned host staging that
//! GPU kernels read and write) to the transport.
//!
//! NCCL's buffers reach the transport as [`RawBuf`]s whose lifetime NCCL
//! guarantees. The collective network also sends and receives from memory
//! it owns (staging, encoded shards); these wrappers tie that memory to the
//! request, so safe code cannot free or read it while the transport may
//! still use it. A request dropped before it completes (a failed or closed
//! group) leaks its buffer rather than risk a late write into freed memory.

use std::sync::Arc;

use super::device::PinnedSlot;
use crate::error::NetResult;
use crate::sys::RawBuf;
use crate::transport::tcp::{RecvComm, RecvRequest, SendComm, SendRequest};

/// Bytes to send: shared heap bytes, a pinned staging slot a kernel filled
/// (its fence completed before the send was queued), or a range of the
/// call's own input, which NCCL keeps until the call (and so this send)
/// completes.
#[derive(Clone, Debug)]
pub enum Payload {
    Heap(Arc<Vec<u8>>),
    /// A GPU staging slot (clones share it, see [`PinnedSlot`]).
    Pinned(PinnedSlot),
    Borrowed(RawBuf),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Payload::Heap(b) => b.len(),
            Payload::Pinned(s) => s.len(),
            Payload::Borrowed(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as the transport takes them.
    fn raw(&self) -> RawBuf {
        let (ptr, len) = match self {
            Payload::Heap(b) => (b.as_ptr(), b.len()),
            Payload::Pinned(s) => (s.as_ptr().cast_const(), s.len()),
            Payload::Borrowed(r) => return *r,
        };
        // SAFETY: the payload keeps the bytes alive and unmodified (no one
        // can get `&mut` through a shared Arc, and a pinned slot is only
        // written by a kernel whose fence completed before it was sent)
        // while the send that holds it is in flight or leaked by Drop; the
        // transport only reads send buffers.
        unsafe { RawBuf::new(ptr.cast_mut(), len) }
    }
}

/// Where a message is received: a heap buffer, a pinned staging slot a
/// kernel will read, or a range of the call's own output that the message
/// fills verbatim (NCCL keeps that buffer until the call, and so this
/// receive, completes).
#[derive(Debug)]
pub enum RecvBuf {
    Heap(Vec<u8>),
    Pinned(PinnedSlot),
    Output(RawBuf),
}

impl RecvBuf {
    pub fn len(&self) -> usize {
        match self {
            RecvBuf::Heap(b) => b.len(),
            RecvBuf::Pinned(s) => s.len(),
            RecvBuf::Output(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of a heap buffer (`None` for a pinned slot).
    pub fn into_heap(self) -> Option<Vec<u8>> {
        match self {
            RecvBuf::Heap(b) => Some(b),
            RecvBuf::Pinned(_) | RecvBuf::Output(_) => None,
        }
    }

    /// The memory the transport writes into.
    fn raw(&mut self) -> RawBuf {
        let (ptr, len) = match self {
            RecvBuf::Heap(b) => (b.as_mut_ptr(), b.len()),
            RecvBuf::Pinned(s) => (s.as_ptr(), s.len()),
            RecvBuf::Output(r) => return *r,
        };
        // SAFETY: neither a Vec's heap memory nor a pinned slot moves when
        // its owner is moved into the request that holds it, and nothing
        // reads or frees it until the request completes (`OwnedRecv::take`
        // checks) or Drop leaks it.
        unsafe { RawBuf::new(ptr, len) }
    }

    /// Shortens the buffer to the `len` bytes that arrived.
    fn truncate(&mut self, len: usize) {
        match self {
            RecvBuf::Heap(b) => b.truncate(len),
            RecvBuf::Pinned(s) => s.truncate(len),
            RecvBuf::Output(r) => *r = r.prefix(len),
        }
    }
}

/// A send of bytes the plugin owns.
pub struct OwnedSend {
    request: Option<SendRequest>,
    bytes: Option<Payload>,
}

impl OwnedSend {
    /// Queues `bytes` on `comm`; gives them back when the request pool is full.
    pub fn start(
        comm: &SendComm,
        bytes: Payload,
        tag: i32,
    ) -> NetResult<Result<OwnedSend, Payload>> {
        let buf = bytes.raw();
        Ok(match comm.isend(buf, tag)? {
            Some(request) => Ok(OwnedSend {
                request: Some(request),
                bytes: Some(bytes),
            }),
            None => Err(bytes),
        })
    }

    /// True once every byte has been handed to the kernel.
    pub fn test(&mut self) -> NetResult<bool> {
        let Some(request) = &self.request else {
            return Ok(true);
        };
        if request.test()?.is_none() {
            return Ok(false);
        }
        self.request = None;
        Ok(true)
    }

    /// The bytes back, once [`OwnedSend::test`] said true.
    pub fn take(mut self) -> Option<Payload> {
        if self.request.is_some() {
            return None;
        }
        self.bytes.take()
    }
}

impl Drop for OwnedSend {
    fn drop(&mut self) {
        if self.request.is_some() {
            // The stream threads may still read the bytes.
            std::mem::forget(self.bytes.take());
        }
    }
}

/// A receive into a buffer the plugin owns.
pub struct OwnedRecv {
    request: Option<RecvRequest>,
    buf: Option<RecvBuf>,
    received: usize,
}

impl OwnedRecv {
    /// Posts a receive of up to `buf.len()` bytes with `tag`; gives the
    /// buffer back when the request pool is full.
    pub fn start(
        comm: &RecvComm,
        mut buf: RecvBuf,
        tag: i32,
    ) -> NetResult<Result<OwnedRecv, RecvBuf>> {
        let raw = buf.raw();
        Ok(match comm.irecv(&[(raw, tag)])? {
            Some(request) => Ok(OwnedRecv {
                request: Some(request),
                buf: Some(buf),
                received: 0,
            }),
            None => Err(buf),
        })
    }

    /// True once the message has arrived.
    pub fn test(&mut self) -> NetResult<bool> {
        let Some(request) = &self.request else {
            return Ok(true);
        };
        let Some(sizes) = request.test()? else {
            return Ok(false);
        };
        self.received = sizes.first().copied().unwrap_or(0) as usize;
        self.request = None;
        Ok(true)
    }

    /// The received bytes, once [`OwnedRecv::test`] said true.
    pub fn take(mut self) -> Option<RecvBuf> {
        if self.request.is_some() {
            return None;
        }
        let mut buf = self.buf.take()?;
        buf.truncate(self.received);
        Some(buf)
    }
}

impl Drop for OwnedRecv {
    fn drop(&mut self) {
        if self.request.is_some() {
            // The stream threads may still write into the buffer.
            std::mem::forget(self.buf.take());
        }
    }
}
