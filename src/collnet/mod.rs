//! Collective-network allreduce algorithms, without I/O.
//!
//! * [`plan`]: which member owns which elements, and segmentation of a
//!   large call for pipelining.
//! * [`algo`]: the per-member state machine of one segment (reduce-scatter
//!   to shard owners, fixed-order reduction, all-gather of the owner's
//!   bytes), exact or FP8-compressed.
//! * [`calibrate`]: the link and codec figures the members measure and
//!   agree on in `connect`, filed for the tuner of every local rank.
//! * [`sim`]: an in-process simulation with seeded random delivery orders,
//!   the error measurements and the re-round-every-hop baseline.
//!
//! See `docs/collnet.md`.

pub mod algo;
pub mod buffers;
pub mod calibrate;
pub mod comm;
#[allow(unsafe_code)] // host views of pinned mirrors
pub mod device;
pub mod gpu_step;
pub mod group;
pub mod join;
#[allow(unsafe_code)] // lends owned buffers to the transport as RawBufs
pub mod lend;
pub mod link;
pub mod plan;
pub mod pola;
pub mod pool;
pub mod recycle;
#[cfg(any(test, feature = "tools"))] // a simulator for tests and `airamp bench collnet`
pub mod sim;
pub mod steps;
pub mod workers;

pub use algo::{
    choose_path, fp8_supported, CollError, DataType, Member, Msg, Outgoing, Path, RedOp, Reducer,
    Spec,
};
pub use plan::{shard_range, Plan};

#[cfg(test)]
#[allow(unsafe_code)] // lends the test's vectors to the group as RawBufs
mod group_tests;
#[cfg(test)]
mod tests;
