//! Every byte format a peer (or a hostile client) can send us.
#![no_main]

use airamp::transport::wire::{Frame, FrameHeader, HEARTBEAT_FRAME, Hello, ListenHandle, FRAME_HEADER_BYTES, HANDLE_BYTES, HELLO_BYTES, MAX_MESSAGE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = <[u8; FRAME_HEADER_BYTES]>::try_from(data.get(..FRAME_HEADER_BYTES).unwrap_or(&[])) {
        if let Ok(h) = FrameHeader::decode(&b) {
            assert!(h.offset + u64::from(h.len) <= h.total && h.total <= MAX_MESSAGE_BYTES);
            assert_eq!(FrameHeader::decode(&h.encode()), Ok(h));
        }
        if let Ok(Frame::Heartbeat) = Frame::decode(&b) {
            assert_eq!(b, HEARTBEAT_FRAME);
        }
    }
    if let Ok(b) = <[u8; HELLO_BYTES]>::try_from(data.get(..HELLO_BYTES).unwrap_or(&[])) {
        if let Ok(h) = Hello::decode(&b) {
            assert!(h.stream < h.streams);
            assert_eq!(Hello::decode(&h.encode()), Ok(h));
        }
    }
    if let Ok(b) = <[u8; HANDLE_BYTES]>::try_from(data.get(..HANDLE_BYTES).unwrap_or(&[])) {
        if let Ok(h) = ListenHandle::decode(&b) {
            let mut again = [0u8; HANDLE_BYTES];
            h.encode(&mut again);
            assert_eq!(ListenHandle::decode(&again), Ok(h));
        }
    }
});
