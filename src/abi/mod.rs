//! The C face of the plugin: NCCL's vtables and the shims behind them.

pub mod bindings;
