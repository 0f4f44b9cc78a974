//! Arbitrary interleavings of posted receives and (possibly hostile) frame
//! headers: the matcher may refuse, but every placement it hands out must
//! stay inside the buffer that was posted.
#![no_main]

use std::collections::HashMap;

use airamp::transport::matching::{HeaderOutcome, RecvMatcher};
use airamp::transport::wire::FrameHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = RecvMatcher::new();
    let mut caps: HashMap<(u64, usize), u64> = HashMap::new();
    let mut next_req = 0u64;
    for op in data.chunks(8) {
        let b = |i: usize| u64::from(*op.get(i).unwrap_or(&0));
        match op[0] % 3 {
            0 => {
                let n = (b(1) % 4 + 1) as usize;
                let slots: Vec<(i32, u64)> = (0..n).map(|i| ((b(2 + i) % 3) as i32, b(6) * 37 + i as u64)).collect();
                for (i, s) in slots.iter().enumerate() {
                    caps.insert((next_req, i), s.1);
                }
                m.post(next_req, slots.iter().copied());
                next_req += 1;
            }
            1 => {
                let total = b(3) * 31;
                let len = b(4) * 7 % (total + 1);
                let h = FrameHeader { seq: b(1) % 8, tag: (b(2) % 3) as i32, total, offset: (total - len).min(b(5)), len: len as u32 };
                if let Ok(HeaderOutcome::Deliver(p)) = m.on_header(&h) {
                    let cap = caps[&(p.request, p.slot)];
                    assert!(p.offset + u64::from(h.len) <= cap, "placement outside the posted buffer");
                    let _ = m.on_chunk_done(h.seq, h.len);
                }
            }
            _ => {
                let _ = m.on_chunk_done(b(1) % 8, (b(2) * 13) as u32);
            }
        }
    }
});
