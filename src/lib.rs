//! airamp: an NCCL network plugin.
//!
//! The C face lives in [`abi`]; everything below it is safe Rust with one
//! internal API that every ABI version shims onto.

pub mod abi;
pub mod codec;
