//! `ncclTunerPlugin_v2` (NCCL 2.21): NCCL says whether CollNet is supported
//! and the tuner sets `algorithm`/`protocol` directly (NCCL 2.21 uses them
//! as given; later NCCLs' v2 adapter zeroes that cost-table entry unless it
//! is ignored). The tuner writes them only to choose CollNet Chain / Simple
//! and never touches `nChannels`.

use std::ffi::{c_int, c_void};

use super::bindings::{ncclDebugLogger_t, ncclFunc_t, ncclResult_t, ncclTuner_v2_t};
use super::tuner;
use super::Vtable;

unsafe extern "C" fn init(
    n_ranks: usize,
    n_nodes: usize,
    logger: ncclDebugLogger_t,
    context: *mut *mut c_void,
) -> ncclResult_t {
    // SAFETY: NCCL passes a writable context pointer.
    unsafe { tuner::init_guarded(2, context, None, n_ranks, n_nodes, None, logger, "") }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn get_coll_info(
    context: *mut c_void,
    coll_type: ncclFunc_t,
    n_bytes: usize,
    coll_net_support: c_int,
    _nvls_support: c_int,
    num_pipe_ops: c_int,
    algorithm: *mut c_int,
    protocol: *mut c_int,
    _n_channels: *mut c_int,
) -> ncclResult_t {
    // SAFETY: NCCL passes our context and writable int pointers.
    unsafe {
        tuner::coll_info_v2(
            context,
            coll_type.0 as i32,
            n_bytes,
            coll_net_support,
            num_pipe_ops,
            algorithm,
            protocol,
        )
    }
}

unsafe extern "C" fn destroy(context: *mut c_void) -> ncclResult_t {
    // SAFETY: NCCL passes the context our init wrote.
    unsafe { tuner::finalize_guarded(context) }
}

#[no_mangle]
pub static ncclTunerPlugin_v2: Vtable<ncclTuner_v2_t> = Vtable(ncclTuner_v2_t {
    name: tuner::NAME.as_ptr(),
    init: Some(init),
    getCollInfo: Some(get_coll_info),
    destroy: Some(destroy),
});
