//! airamp: an NCCL network plugin.
//!
//! The C face lives in [`abi`]; everything below it is safe Rust with one
//! internal API ([`net`]) that every ABI version shims onto.
//!
//! `unsafe` is denied everywhere except the modules that must have it:
//! the C face ([`abi`]), the OS calls on raw memory ([`sys`]), the SIMD
//! codec kernels, the collective network's buffer lending, and the
//! exporter's fork handler. Each such block carries a `// SAFETY:` line.

#![deny(unsafe_code)]

#[allow(unsafe_code)] // the C face: vtables, NCCL's pointers
pub mod abi;
pub mod codec;
pub mod collnet;
pub mod config;
pub mod error;
#[allow(unsafe_code)] // the CUDA driver and NVRTC through cudarc: raw device addresses
pub mod gpu;
pub mod log;
pub mod metrics;
pub mod net;
#[allow(unsafe_code)] // OS calls on raw memory: getifaddrs, poll, I/O into NCCL's buffers
pub mod sys;
pub mod transport;
pub mod tuner;
