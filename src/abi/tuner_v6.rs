//! `ncclTunerPlugin_v6` (NCCL 2.30+): v5 plus `getChunkSize`, which NCCL
//! calls only when non-NULL; airamp leaves chunk sizes to NCCL, so it is NULL.
//! The other slots are v5's (identical signatures).

use std::ffi::c_void;

use super::bindings::{
    ncclDebugLogger_t, ncclNvlDomainInfo_v6_t, ncclResult_t, ncclTunerConstants_v6_t,
    ncclTuner_v6_t,
};
use super::tuner;
use super::tuner_v5;
use super::Vtable;

unsafe extern "C" fn init(
    context: *mut *mut c_void,
    comm_id: u64,
    n_ranks: usize,
    n_nodes: usize,
    logger: ncclDebugLogger_t,
    nvl_domain_info: *mut ncclNvlDomainInfo_v6_t,
    constants: *mut ncclTunerConstants_v6_t,
) -> ncclResult_t {
    // SAFETY: NCCL passes its structs or NULL; we only read them.
    let (nvl, constants) = unsafe { (nvl_domain_info.as_ref(), constants.as_ref()) };
    let extra = tuner_v5::describe(comm_id, nvl, constants);
    // SAFETY: NCCL passes a writable context pointer.
    unsafe {
        tuner::init_guarded(
            6,
            context,
            Some(comm_id),
            n_ranks,
            n_nodes,
            tuner_v5::max_ranks_per_domain(nvl),
            logger,
            &extra,
        )
    }
}

#[no_mangle]
pub static ncclTunerPlugin_v6: Vtable<ncclTuner_v6_t> = Vtable(ncclTuner_v6_t {
    name: tuner::NAME.as_ptr(),
    init: Some(init),
    getCollInfo: Some(tuner_v5::get_coll_info),
    finalize: Some(tuner_v5::finalize),
    getChunkSize: None,
});
