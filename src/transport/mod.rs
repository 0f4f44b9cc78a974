//! Transports: protocol logic without I/O (`wire`, `sched`, `matching`,
//! `liveness`) and the drivers that do the I/O (`tcp`).

pub mod iface;
pub mod liveness;
pub mod matching;
pub mod sched;
pub mod tcp;
pub mod wire;
