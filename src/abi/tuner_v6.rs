//! `ncclTunerPlugin_v6` (NCCL 2.30+): v5 plus `getChunkSize`, which NCCL
//! calls only when non-NULL; airamp leaves chunk sizes to NCCL, so it is NULL.
//! The other slots are v5's (identical signatures).

use super::bindings::ncclTuner_v6_t;
use super::tuner;
use super::tuner_v5;
use super::Vtable;

#[no_mangle]
pub static ncclTunerPlugin_v6: Vtable<ncclTuner_v6_t> = Vtable(ncclTuner_v6_t {
    name: tuner::NAME.as_ptr(),
    init: Some(tuner_v5::init::<6>),
    getCollInfo: Some(tuner_v5::get_coll_info),
    finalize: Some(tuner_v5::finalize),
    getChunkSize: None,
});
