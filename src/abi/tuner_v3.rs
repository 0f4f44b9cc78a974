//! `ncclTunerPlugin_v3` (NCCL 2.22 .. 2.23): the tuner edits NCCL's cost table
//! (`float[numAlgo][numProto]`, 6 algorithms in 2.22, 7 from 2.23).

use std::ffi::{c_int, c_void};

use super::bindings::{ncclDebugLogger_t, ncclFunc_t, ncclResult_t, ncclTuner_v3_t};
use super::tuner;
use super::Vtable;

unsafe extern "C" fn init(
    n_ranks: usize,
    n_nodes: usize,
    logger: ncclDebugLogger_t,
    context: *mut *mut c_void,
) -> ncclResult_t {
    // SAFETY: NCCL passes a writable context pointer.
    unsafe { tuner::init_guarded(3, context, None, n_ranks, n_nodes, None, logger, "") }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn get_coll_info(
    context: *mut c_void,
    coll_type: ncclFunc_t,
    n_bytes: usize,
    num_pipe_ops: c_int,
    coll_cost_table: *mut *mut f32,
    num_algo: c_int,
    num_proto: c_int,
    n_channels: *mut c_int,
) -> ncclResult_t {
    // SAFETY: NCCL passes our context, its float[numAlgo][numProto] table and
    // its writable nChannels (or NULL).
    unsafe {
        tuner::coll_info_table(
            context,
            coll_type.0 as i32,
            n_bytes,
            num_pipe_ops,
            coll_cost_table,
            num_algo,
            num_proto,
            n_channels,
        )
    }
}

unsafe extern "C" fn destroy(context: *mut c_void) -> ncclResult_t {
    // SAFETY: NCCL passes the context our init wrote.
    unsafe { tuner::finalize_guarded(context) }
}

#[no_mangle]
pub static ncclTunerPlugin_v3: Vtable<ncclTuner_v3_t> = Vtable(ncclTuner_v3_t {
    name: tuner::NAME.as_ptr(),
    init: Some(init),
    getCollInfo: Some(get_coll_info),
    destroy: Some(destroy),
});
