//! `ncclNetPlugin_v7` and `ncclCollNetPlugin_v7` (NCCL 2.19): v8 without
//! `regIsGlobal` in the properties, an `int` size in `regMr`, and a
//! collective network with allreduce only. Every other call is v8's shim.

use std::ffi::{c_int, c_void};

use super::bindings::{ncclCollNet_v7_t, ncclNetProperties_v7_t, ncclNet_v7_t, ncclResult_t};
use super::collnet;
use super::net::{self, fill_common_properties, shared};
// Calls whose v7 signature is v8's.
use super::net_v8::{connect, init, irecv, isend, listen};
use super::{guard, Vtable};
use crate::error::NetError;

unsafe extern "C" fn get_properties(
    dev: c_int,
    props: *mut ncclNetProperties_v7_t,
) -> ncclResult_t {
    guard("getProperties", || {
        let p = net::properties(dev)?;
        // SAFETY: NCCL passes a writable v7 properties struct.
        let out =
            unsafe { props.as_mut() }.ok_or(NetError::InvalidArgument("props is NULL".into()))?;
        fill_common_properties!(v7: &mut *out, &p);
        Ok(())
    })
}

fn int_size(what: &str, size: c_int) -> Result<usize, NetError> {
    usize::try_from(size).map_err(|_| NetError::InvalidArgument(format!("{what} size {size}")))
}

unsafe extern "C" fn reg_mr(
    _comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    ptr_type: c_int,
    mhandle: *mut *mut c_void,
) -> ncclResult_t {
    guard("regMr", || {
        let size = int_size("regMr", size)?;
        // SAFETY: NCCL's regMr contract.
        unsafe { net::reg_mr(data, size, ptr_type, mhandle) }
    })
}

#[no_mangle]
pub static ncclNetPlugin_v7: Vtable<ncclNet_v7_t> = Vtable(ncclNet_v7_t {
    name: net::NAME.as_ptr(),
    init: Some(init),
    devices: Some(shared::devices),
    getProperties: Some(get_properties),
    listen: Some(listen),
    connect: Some(connect),
    accept: Some(shared::accept),
    regMr: Some(reg_mr),
    regMrDmaBuf: Some(shared::reg_mr_dma_buf),
    deregMr: Some(shared::dereg_mr),
    isend: Some(isend),
    irecv: Some(irecv),
    iflush: Some(shared::iflush),
    test: Some(shared::test),
    closeSend: Some(shared::close_send),
    closeRecv: Some(shared::close_recv),
    closeListen: Some(shared::close_listen),
    getDeviceMr: None,
    irecvConsumed: None,
});

collnet::collnet_get_properties!(ncclNetProperties_v7_t);

unsafe extern "C" fn collnet_reg_mr(
    coll_comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    ptr_type: c_int,
    mhandle: *mut *mut c_void,
) -> ncclResult_t {
    guard("collnet regMr", || {
        let size = int_size("collnet regMr", size)?;
        // SAFETY: NCCL's regMr contract.
        unsafe { collnet::reg_mr(coll_comm, data, size, ptr_type, mhandle) }
    })
}

/// The collective network of NCCL 2.19: allreduce only (NCCL then never
/// runs allgather or reduce-scatter through it).
#[no_mangle]
pub static ncclCollNetPlugin_v7: Vtable<ncclCollNet_v7_t> = Vtable(ncclCollNet_v7_t {
    name: net::NAME.as_ptr(),
    init: Some(collnet::shared::init),
    devices: Some(shared::devices),
    getProperties: Some(collnet_get_properties),
    listen: Some(listen),
    connect: Some(collnet::shared::connect),
    reduceSupport: Some(collnet::shared::reduce_support),
    regMr: Some(collnet_reg_mr),
    regMrDmaBuf: Some(shared::reg_mr_dma_buf),
    deregMr: Some(collnet::shared::dereg_mr),
    iallreduce: Some(collnet::shared::iallreduce_int),
    iflush: Some(collnet::shared::iflush),
    test: Some(collnet::shared::test),
    closeColl: Some(collnet::shared::close_coll),
    closeListen: Some(shared::close_listen),
});
