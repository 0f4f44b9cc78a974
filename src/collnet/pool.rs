//! Recycled byte buffers for the collective network's hot path.
//!
//! Every step needs staging memory of the same few sizes again and again
//! (NCCL cuts a job's collectives into the same chunk sizes every
//! iteration). Fresh large allocations cost page faults and zeroing on
//! every call, so buffers go back to a pool keyed by power-of-two capacity
//! once done, and after warm-up the hot path allocates nothing. Lookups
//! and the bytes held are metrics (`airamp_collnet_pool_*`). Shared bytes
//! ([`Shared`]) come apart when their last user gives them back: the bytes
//! go to the pool and the empty `Arc` to a list of shells, since an `Arc`
//! costs an allocation of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::metrics;

/// Bytes shared between a member's outgoing messages and its output.
pub type Shared = Arc<Vec<u8>>;

/// Most buffers kept per size class, and bytes kept over all classes of
/// both pools (a soft limit: the two pools check it apart, so together
/// they may pass it by a buffer).
const PER_CLASS: usize = 64;
const MAX_HELD: usize = 1 << 30;

/// Buffers of one element type, by power-of-two capacity (in elements).
struct Pool<T> {
    classes: BTreeMap<usize, Vec<Vec<T>>>,
}

/// Byte buffers: staging, messages, outputs.
static BYTES: Mutex<Pool<u8>> = Mutex::new(Pool {
    classes: BTreeMap::new(),
});
/// f32 accumulators of f16/bf16 and compressed reductions.
static WIDE: Mutex<Pool<f32>> = Mutex::new(Pool {
    classes: BTreeMap::new(),
});
/// Bytes held by both pools.
static HELD: AtomicUsize = AtomicUsize::new(0);
/// Empty [`Shared`]s, each owned by this list alone, for [`share`].
static SHELLS: Mutex<Vec<Shared>> = Mutex::new(Vec::new());
/// Most shells kept (about 40 bytes each): every group of the process
/// adds its window's worth at join ([`add_shells`]), up to this many.
/// Beyond it (groups of hundreds of members, or dozens of groups) a
/// busier moment than any before allocates the shells it adds.
const MAX_SHELLS: usize = 1 << 14;

fn class_of(len: usize) -> usize {
    len.max(64).next_power_of_two()
}

fn take_from<T: Copy + Default>(pool: &Mutex<Pool<T>>, len: usize) -> Vec<T> {
    let class = class_of(len);
    let reused = pool.lock().ok().and_then(|mut p| {
        let v = p.classes.get_mut(&class)?.pop()?;
        HELD.fetch_sub(v.capacity() * size_of::<T>(), Relaxed);
        Some(v)
    });
    metrics::collnet().pool_lookup(reused.is_some());
    let mut v = reused.unwrap_or_else(|| Vec::with_capacity(class));
    // Only elements never initialized before are written here.
    if v.len() < len {
        v.resize(len, T::default());
    } else {
        v.truncate(len);
    }
    v
}

fn give_to<T>(pool: &Mutex<Pool<T>>, v: Vec<T>) {
    let class = v.capacity();
    if !class.is_power_of_two() || class < 64 {
        return;
    }
    let bytes = class * size_of::<T>();
    // Keep the initialized length so the next `take` need not fill it.
    if let Ok(mut p) = pool.lock() {
        // The whole list at once: growing it would allocate on later gives.
        let list = p
            .classes
            .entry(class)
            .or_insert_with(|| Vec::with_capacity(PER_CLASS));
        let held = HELD.load(Relaxed);
        if list.len() < PER_CLASS && held + bytes <= MAX_HELD {
            list.push(v);
            metrics::collnet().pool_held(HELD.fetch_add(bytes, Relaxed) + bytes);
        }
    }
}

/// A buffer of exactly `len` bytes. Its contents are unspecified (a
/// recycled buffer keeps old bytes): callers overwrite all of it.
pub fn take(len: usize) -> Vec<u8> {
    take_from(&BYTES, len)
}

/// Returns a buffer for reuse (dropped if the pool is full or it was not
/// made by [`take`]).
pub fn give(v: Vec<u8>) {
    give_to(&BYTES, v);
}

/// An f32 accumulator of exactly `len` values, contents unspecified (as
/// [`take`]): a fresh one per shard would cost page faults and zeroing on
/// every call.
pub fn take_wide(len: usize) -> Vec<f32> {
    take_from(&WIDE, len)
}

/// Returns an accumulator made by [`take_wide`] for reuse.
pub fn give_wide(v: Vec<f32>) {
    give_to(&WIDE, v);
}

/// `v` as shared bytes, in a recycled `Arc` where one is spare.
pub fn share(v: Vec<u8>) -> Shared {
    if let Some(mut shell) = SHELLS.lock().ok().and_then(|mut shells| shells.pop()) {
        if let Some(bytes) = Arc::get_mut(&mut shell) {
            *bytes = v;
            return shell;
        }
    }
    Arc::new(v)
}

/// Adds `count` spare shells to the process's (at most [`MAX_SHELLS`] in
/// all): a group adds what a window of its steps may hold, so that no
/// moment of its traffic waits on an allocation for one.
pub fn add_shells(count: usize) {
    if let Ok(mut shells) = SHELLS.lock() {
        let count = count.min(MAX_SHELLS.saturating_sub(shells.len()));
        shells.reserve(count);
        shells.extend((0..count).map(|_| Arc::new(Vec::new())));
    }
}

/// Lets go of shared bytes; the last user's call returns the bytes and the
/// `Arc` for reuse (a user that drops its clone instead only costs that).
pub fn give_shared(mut bytes: Shared) {
    let Some(v) = Arc::get_mut(&mut bytes) else {
        return;
    };
    give(std::mem::take(v));
    if let Ok(mut shells) = SHELLS.lock() {
        if shells.len() < MAX_SHELLS {
            shells.push(bytes);
        }
    }
}

/// A pooled copy of `src`.
pub fn copy_of(src: &[u8]) -> Vec<u8> {
    let mut v = take(src.len());
    v.copy_from_slice(src);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_with_the_requested_length() {
        let v = take(1000);
        assert_eq!(v.len(), 1000);
        assert_eq!(v.capacity(), 1024);
        let p = v.as_ptr();
        give(v);
        // Another test may take it first; when we get one back it is sized.
        let w = take(900);
        assert_eq!(w.len(), 900);
        assert!(w.capacity() >= 900);
        let _ = p;
        give(w);
        give(Vec::with_capacity(1000)); // not a pool buffer: ignored
    }

    #[test]
    fn shared_bytes_come_apart_only_when_the_last_user_gives_them() {
        let bytes = share(take(300));
        let clone = Arc::clone(&bytes);
        give_shared(bytes);
        // Still held: the clone's bytes are untouched.
        assert_eq!(clone.len(), 300);
        give_shared(clone);
        // A shell comes back empty and is filled anew.
        let again = share(vec![7u8; 5]);
        assert_eq!(*again, vec![7u8; 5]);
        give_shared(again);
    }

    #[test]
    fn accumulators_come_back_with_the_requested_length() {
        let mut v = take_wide(3000);
        assert_eq!(v.len(), 3000);
        assert_eq!(v.capacity(), 4096);
        v[2999] = 1.5;
        give_wide(v);
        let w = take_wide(4096);
        assert_eq!(w.len(), 4096);
        give_wide(w);
    }
}
