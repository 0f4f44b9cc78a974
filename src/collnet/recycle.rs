//! Emptied vectors kept for the next step: once NCCL's call pattern is
//! steady, the scheduler's per-step lists reuse earlier steps' memory
//! instead of allocating on the proxy thread (PoLA, F9).

/// Spare vectors of `T`, at most `most` of them kept.
pub struct Recycler<T> {
    spare: Vec<Vec<T>>,
    most: usize,
}

impl<T> Recycler<T> {
    pub fn new(most: usize) -> Recycler<T> {
        Recycler {
            spare: Vec::new(),
            most,
        }
    }

    /// An empty vector, with the capacity an earlier one grew to if any.
    pub fn take(&mut self) -> Vec<T> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps `v`'s memory for [`Recycler::take`] (its items are dropped).
    pub fn give(&mut self, mut v: Vec<T>) {
        v.clear();
        if v.capacity() > 0 && self.spare.len() < self.most {
            self.spare.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_back_emptied_memory_up_to_its_bound() {
        let mut r = Recycler::new(1);
        let mut v = r.take();
        v.extend([1, 2, 3]);
        let at = v.as_ptr();
        r.give(v);
        r.give(vec![4]);
        let again = r.take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at, "the first vector's memory, kept");
        assert_eq!(r.take().capacity(), 0, "one kept at most");
    }
}
