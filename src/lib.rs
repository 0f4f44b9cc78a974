//! airamp: an NCCL network plugin.
//!
//! The C face lives in [`abi`]; everything below it is safe Rust with one
//! internal API ([`net`]) that every ABI version shims onto.

pub mod abi;
pub mod codec;
pub mod collnet;
pub mod config;
pub mod error;
pub mod gpu;
pub mod log;
pub mod metrics;
pub mod net;
pub mod transport;
pub mod tuner;
