//! Objects handed to NCCL as `void*`: tagged boxes.
//!
//! NCCL gives back whatever pointer it holds; the tag catches a comm passed
//! to the wrong call, a double close, or a comm inherited across `fork()`.

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, PoisonError};

use crate::error::{NetError, NetResult};

/// Bumped in a forked child: objects from the parent's threads are dead there.
static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Registers the fork handler once per process.
pub fn watch_forks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a handler that only touches an atomic, which
        // is async-signal-safe as a fork child handler must be.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Kind {
    Listen = 0x4C53_4E31,
    Connecting = 0x434F_4E31,
    Send = 0x534E_4431,
    Recv = 0x5243_5631,
    Request = 0x5251_5431,
    Memory = 0x4D45_4D31,
    Context = 0x4354_5831,
    Coll = 0x434F_4C31,
    CollRequest = 0x4352_5131,
    CollMemory = 0x434D_5231,
    Tuner = 0x5455_4E31,
}

#[repr(C)]
struct Tagged<T> {
    kind: u32,
    generation: u32,
    value: T,
}

pub fn into_raw<T>(kind: Kind, value: T) -> *mut c_void {
    Box::into_raw(Box::new(Tagged {
        kind: kind as u32,
        generation: FORK_GENERATION.load(Ordering::Acquire),
        value,
    }))
    .cast()
}

fn check(kind: u32, generation: u32, want: Kind) -> NetResult<()> {
    if kind != want as u32 {
        return Err(NetError::InvalidArgument(format!(
            "pointer is not a live {want:?} object of this plugin"
        )));
    }
    if generation != FORK_GENERATION.load(Ordering::Acquire) {
        return Err(NetError::InvalidUsage(format!(
            "{want:?} object was created before fork() and cannot be used in the child"
        )));
    }
    Ok(())
}

/// # Safety
/// `p` must be null or a pointer returned by [`into_raw`] with the same `T`
/// that has not been freed, and no other reference to it may be live.
pub unsafe fn get_mut<'a, T>(p: *mut c_void, kind: Kind) -> NetResult<&'a mut T> {
    if p.is_null() {
        return Err(NetError::InvalidArgument(format!(
            "{kind:?} pointer is NULL"
        )));
    }
    // SAFETY: per the contract, `p` points at a live Tagged<T>.
    let tagged = unsafe { &mut *p.cast::<Tagged<T>>() };
    check(tagged.kind, tagged.generation, kind)?;
    Ok(&mut tagged.value)
}

/// Takes the object back; its tag is cleared so a second free is caught
/// while the memory is still ours (best effort after that).
///
/// # Safety
/// As for [`get_mut`].
pub unsafe fn take<T>(p: *mut c_void, kind: Kind) -> NetResult<T> {
    // SAFETY: same contract as get_mut.
    unsafe { get_mut::<T>(p, kind)? };
    // SAFETY: `p` came from Box::into_raw of a Tagged<T> and is live.
    let mut boxed = unsafe { Box::from_raw(p.cast::<Tagged<T>>()) };
    boxed.kind = 0;
    Ok(boxed.value)
}

/// Boxes of freed objects of one type, reused for the next ones: NCCL makes
/// and frees a request per call, and the data path should not allocate.
/// A kept box holds no value.
pub struct Recycled<T> {
    spare: Mutex<Vec<SpareBox<T>>>,
}

/// A box whose value was moved out.
struct SpareBox<T>(Box<Tagged<MaybeUninit<T>>>);

// SAFETY: a spare box holds no `T` (its value is uninitialized), only
// memory, which any thread may reuse.
unsafe impl<T> Send for SpareBox<T> {}

/// Most boxes kept per type (NCCL's requests in flight at once, over every
/// connection, are far fewer).
const MAX_SPARE: usize = 4096;

impl<T> Recycled<T> {
    pub const fn new() -> Self {
        Recycled {
            spare: Mutex::new(Vec::new()),
        }
    }

    /// As [`into_raw`], in a kept box when there is one.
    pub fn raw(&self, kind: Kind, value: T) -> *mut c_void {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut boxed = spare.map_or_else(
            || {
                Box::new(Tagged {
                    kind: 0,
                    generation: 0,
                    value: MaybeUninit::uninit(),
                })
            },
            |s| s.0,
        );
        boxed.kind = kind as u32;
        boxed.generation = FORK_GENERATION.load(Ordering::Acquire);
        boxed.value.write(value);
        // `MaybeUninit<T>` has `T`'s layout: [`get_mut`] and [`take`] see a
        // `Tagged<T>`.
        Box::into_raw(boxed).cast()
    }

    /// As [`take`], keeping the box for the next [`Recycled::raw`].
    ///
    /// # Safety
    /// `p` must come from this `Recycled`'s [`Recycled::raw`], under
    /// [`get_mut`]'s contract.
    pub unsafe fn take(&self, p: *mut c_void, kind: Kind) -> NetResult<T> {
        // SAFETY: the caller's contract; this checks the tag.
        unsafe { get_mut::<T>(p, kind)? };
        // SAFETY: `p` came from `Box::into_raw` of a `Tagged<MaybeUninit<T>>`
        // (this type's `raw`) and is live.
        let mut boxed = unsafe { Box::from_raw(p.cast::<Tagged<MaybeUninit<T>>>()) };
        boxed.kind = 0;
        // SAFETY: `raw` wrote the value and nothing has moved it out:
        // the tag, cleared only here, was still set.
        let value = unsafe { boxed.value.assume_init_read() };
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < MAX_SPARE {
            spare.push(SpareBox(boxed));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_freed_box_carries_the_next_object() {
        let boxes = Recycled::<Arc<u32>>::new();
        let first = Arc::new(1);
        let p = boxes.raw(Kind::Request, Arc::clone(&first));
        // SAFETY: `p` came from `boxes` and is live.
        assert_eq!(
            **unsafe { get_mut::<Arc<u32>>(p, Kind::Request) }.unwrap(),
            1
        );
        // SAFETY: as above.
        assert!(unsafe { boxes.take(p, Kind::Coll) }.is_err(), "wrong kind");
        // SAFETY: as above.
        let back = unsafe { boxes.take(p, Kind::Request) }.unwrap();
        assert!(Arc::ptr_eq(&back, &first));
        drop(back);
        assert_eq!(Arc::strong_count(&first), 1, "moved out, not copied");
        // SAFETY: the box is kept (not freed) with its tag cleared.
        assert!(unsafe { get_mut::<Arc<u32>>(p, Kind::Request) }.is_err());

        let second = Arc::new(2);
        let q = boxes.raw(Kind::Request, Arc::clone(&second));
        assert_eq!(q, p, "the kept box");
        // SAFETY: `q` came from `boxes` and is live.
        assert_eq!(*unsafe { boxes.take(q, Kind::Request) }.unwrap(), 2);
        drop(boxes);
        assert_eq!(Arc::strong_count(&second), 1, "a kept box drops no value");
    }
}
