//! Transports: protocol logic without I/O (`wire`, `sched`, `matching`,
//! `liveness`) and the drivers that do the I/O (`tcp`).

pub mod iface;
pub mod liveness;
pub mod matching;
pub mod sched;
#[allow(unsafe_code)] // host views (RawBuf) of pinned mirrors of NCCL's GPU buffers
pub mod staged;
pub mod tcp;
pub mod wire;
