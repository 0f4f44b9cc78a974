//! Recycled byte buffers for the collective network's hot path.
//!
//! Every step needs staging memory of the same few sizes again and again
//! (NCCL cuts a job's collectives into the same chunk sizes every
//! iteration). Fresh large allocations cost page faults and zeroing on
//! every call, so buffers go back to a pool keyed by power-of-two capacity
//! once done, and after warm-up the hot path allocates nothing. Lookups
//! and the bytes held are metrics (`airamp_collnet_pool_*`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::metrics;

/// Bytes shared between a member's outgoing messages and its output.
pub type Shared = Arc<Vec<u8>>;

/// Most buffers kept per size class, and bytes kept over all classes.
const PER_CLASS: usize = 64;
const MAX_HELD: usize = 1 << 30;

struct Pool {
    classes: BTreeMap<usize, Vec<Vec<u8>>>,
    held: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    classes: BTreeMap::new(),
    held: 0,
});

fn class_of(len: usize) -> usize {
    len.max(64).next_power_of_two()
}

/// A buffer of exactly `len` bytes. Its contents are unspecified (a
/// recycled buffer keeps old bytes): callers overwrite all of it.
pub fn take(len: usize) -> Vec<u8> {
    let class = class_of(len);
    let reused = POOL.lock().ok().and_then(|mut p| {
        let v = p.classes.get_mut(&class)?.pop()?;
        p.held -= v.capacity();
        Some(v)
    });
    metrics::collnet().pool_lookup(reused.is_some());
    let mut v = reused.unwrap_or_else(|| Vec::with_capacity(class));
    // Only bytes never initialized before are written here.
    if v.len() < len {
        v.resize(len, 0);
    } else {
        v.truncate(len);
    }
    v
}

/// Returns a buffer for reuse (dropped if the pool is full or it was not
/// made by [`take`]).
pub fn give(v: Vec<u8>) {
    let class = v.capacity();
    if !class.is_power_of_two() || class < 64 {
        return;
    }
    // Keep the initialized length so the next `take` need not fill it.
    if let Ok(mut guard) = POOL.lock() {
        let p = &mut *guard;
        let list = p.classes.entry(class).or_default();
        if list.len() < PER_CLASS && p.held + class <= MAX_HELD {
            list.push(v);
            p.held += class;
            metrics::collnet().pool_held(p.held);
        }
    }
}

/// Returns shared bytes once their last user lets go.
pub fn give_shared(bytes: Shared) {
    if let Ok(v) = Arc::try_unwrap(bytes) {
        give(v);
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
}
