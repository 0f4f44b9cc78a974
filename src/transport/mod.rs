//! Transports: protocol logic without I/O (`wire`, `sched`, `matching`) and
//! the drivers that do the I/O (`tcp`).

pub mod iface;
pub mod matching;
pub mod sched;
pub mod tcp;
pub mod wire;
