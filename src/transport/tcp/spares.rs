//! Request records kept for reuse, so that a steady stream of requests
//! allocates nothing (the plugin's hot path runs on NCCL's proxy thread).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use super::MAX_REQUESTS;

/// Request records of one connection, shared with the threads that move
/// their bytes. A record is reused once every other holder has let go of
/// it, oldest first (the one most likely let go of).
pub(super) struct Spares<T> {
    records: Mutex<VecDeque<Arc<T>>>,
}

impl<T> Spares<T> {
    /// A whole request pool of records, made by `blank`, allocated at
    /// connect.
    pub fn new(blank: impl Fn() -> T) -> Self {
        Spares {
            records: Mutex::new((0..MAX_REQUESTS).map(|_| Arc::new(blank())).collect()),
        }
    }

    /// `value` in a spare record, or in a new one when every spare is
    /// still held.
    pub fn record(&self, value: T) -> Arc<T> {
        let mut records = self.lock();
        for _ in 0..records.len() {
            let mut record = records.pop_front().expect("counted");
            if let Some(slot) = Arc::get_mut(&mut record) {
                *slot = value;
                return record;
            }
            // A stream thread still holds it (it lets go of a chunk just
            // after its last byte left): it stays a spare for later.
            records.push_back(record);
        }
        Arc::new(value)
    }

    /// Keeps a finished request's record for [`Spares::record`].
    pub fn keep(&self, record: Arc<T>) {
        let mut records = self.lock();
        if records.len() < MAX_REQUESTS {
            records.push_back(record);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<T>>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(spares: &Spares<usize>) -> Vec<*const usize> {
        spares.lock().iter().map(Arc::as_ptr).collect()
    }

    #[test]
    fn a_record_is_reused_only_when_nobody_else_holds_it() {
        let spares = Spares::new(|| 0);
        let made = addresses(&spares);
        let mut held = Vec::new();
        for (i, &at) in made.iter().enumerate() {
            let r = spares.record(i);
            assert_eq!(Arc::as_ptr(&r), at, "the pool's own, oldest first");
            assert_eq!(*r, i);
            held.push(Arc::clone(&r));
            spares.keep(r);
        }
        // Every spare is held elsewhere: a new record, and the spares stay.
        let fresh = spares.record(7);
        assert!(!made.contains(&Arc::as_ptr(&fresh)));
        assert_eq!(addresses(&spares), made);
        // One let go of: that one is found behind the held ones.
        drop(held.swap_remove(5));
        let reused = spares.record(8);
        assert_eq!((Arc::as_ptr(&reused), *reused), (made[5], 8));
    }

    #[test]
    fn keeps_at_most_a_request_pool() {
        let spares = Spares::new(|| 0);
        for i in 0..MAX_REQUESTS {
            spares.keep(Arc::new(i));
        }
        assert_eq!(spares.lock().len(), MAX_REQUESTS);
    }
}
