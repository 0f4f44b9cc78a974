//! The version-independent body of every `ncclCollNet` call. Each
//! `collnet_vN.rs` adapts its signatures and structs to these.
//!
//! The collective network shares the net plugin's devices, listener and
//! memory registration. Here NCCL's pointers and codes are checked and
//! converted; a collective comm is a [`CollComm`] (`collnet::comm`), whose
//! group the requests in flight keep alive.

use std::collections::BTreeMap;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};

use super::net::{PTR_CUDA, PTR_HOST};
use super::object::{self, Kind, Recycled};
use super::write_out;
use crate::collnet::comm::{lock, CollComm, SharedGroup};
use crate::collnet::device::{self, Place};
use crate::collnet::group::Group;
use crate::collnet::steps::Window;
use crate::collnet::{DataType, RedOp};
use crate::error::{NetError, NetResult};
use crate::gpu;
use crate::sys::RawBuf;
use crate::transport::tcp::Listener;
use crate::transport::wire::{ListenHandle, HANDLE_BYTES};

/// The communicator id of each live collective listen comm (by address),
/// from the v11+ context `listen` received: `connect` only gets the listen
/// comm, and files the group's calibration record under this id.
static LISTEN_COMM_IDS: Mutex<BTreeMap<usize, u64>> = Mutex::new(BTreeMap::new());

fn listen_comm_ids() -> std::sync::MutexGuard<'static, BTreeMap<usize, u64>> {
    LISTEN_COMM_IDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Request objects' boxes, reused from one call to the next.
static COLL_REQUESTS: Recycled<CollRequest> = Recycled::new();

enum CollRequest {
    Op {
        group: SharedGroup,
        op: u64,
    },
    /// iflush of host memory: nothing to do.
    Done,
}

/// # Safety
/// `handles` must hold `nranks` pointers to 128-byte handles; `listen_comm`
/// must come from listen; `coll_comm` must be writable.
pub unsafe fn connect(
    handles: *mut *mut c_void,
    nranks: c_int,
    rank: c_int,
    listen_comm: *mut c_void,
    coll_comm: *mut *mut c_void,
) -> NetResult<()> {
    let n = usize::try_from(nranks).unwrap_or(0);
    let rank = usize::try_from(rank).unwrap_or(usize::MAX);
    if handles.is_null() || n == 0 || rank >= n {
        return Err(NetError::InvalidArgument(format!(
            "collnet connect: rank {rank} of {nranks}, handles {handles:?}"
        )));
    }
    let mut decoded = Vec::with_capacity(n);
    let mut raw_handles = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: NCCL passes `nranks` handle pointers.
        let h = unsafe { *handles.add(i) };
        if h.is_null() {
            return Err(NetError::InvalidArgument(format!(
                "collnet handle {i} is NULL"
            )));
        }
        // SAFETY: each handle is NCCL_NET_HANDLE_MAXSIZE (128) bytes.
        let bytes = unsafe { &*h.cast::<[u8; HANDLE_BYTES]>() };
        raw_handles.push(*bytes);
        decoded.push(ListenHandle::decode(bytes).map_err(|e| {
            NetError::InvalidArgument(format!("collnet handle of member {i}: {e}"))
        })?);
    }
    let comm_id = listen_comm_ids().get(&(listen_comm as usize)).copied();
    // SAFETY: NCCL passes back our listen object.
    let listener = unsafe { object::get_mut::<Listener>(listen_comm, Kind::Listen)? };
    let comm = CollComm::connect(listener, &decoded, &raw_handles, rank, comm_id)?;
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe { write_out(coll_comm, object::into_raw(Kind::Coll, comm), "collComm") }
}

/// Whether `(dtype, op)` (NCCL's codes) can be reduced by the group.
pub fn reduce_support(dtype: c_int, op: c_int) -> bool {
    DataType::from_nccl(dtype).is_some() && RedOp::from_nccl(op).is_some()
}

/// # Safety
/// `supported` must be writable.
pub unsafe fn write_reduce_support(
    dtype: c_int,
    op: c_int,
    supported: *mut c_int,
) -> NetResult<()> {
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe {
        write_out(
            supported,
            c_int::from(reduce_support(dtype, op)),
            "supported",
        )
    }
}

fn group_of<'a>(coll_comm: *mut c_void) -> NetResult<&'a SharedGroup> {
    // SAFETY: NCCL passes back our collective comm (checked by its tag).
    unsafe { object::get_mut::<CollComm>(coll_comm, Kind::Coll) }.map(|c| c.group())
}

fn finish_post(group: &SharedGroup, op: u64, request: *mut *mut c_void) -> NetResult<()> {
    let req = CollRequest::Op {
        group: Arc::clone(group),
        op,
    };
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe {
        write_out(
            request,
            COLL_REQUESTS.raw(Kind::CollRequest, req),
            "request",
        )
    }
}

/// # Safety
/// `send`/`recv` must be valid for `count` elements of `dtype` until the
/// request completes; `request` writable.
pub unsafe fn iallreduce(
    coll_comm: *mut c_void,
    send: *mut c_void,
    recv: *mut c_void,
    count: usize,
    dtype: c_int,
    op: c_int,
    request: *mut *mut c_void,
) -> NetResult<()> {
    let group = group_of(coll_comm)?;
    let (Some(dt), Some(rop)) = (DataType::from_nccl(dtype), RedOp::from_nccl(op)) else {
        return Err(NetError::InvalidArgument(format!(
            "iallreduce of datatype {dtype} with op {op}, which reduceSupport declined"
        )));
    };
    let bytes = count
        .checked_mul(dt.size())
        .ok_or_else(|| NetError::InvalidArgument(format!("iallreduce of {count} elements")))?;
    if bytes > 0 && (send.is_null() || recv.is_null()) {
        return Err(NetError::InvalidArgument(
            "iallreduce buffer is NULL".into(),
        ));
    }
    let mut g = lock(group);
    // SAFETY: NCCL keeps both buffers valid for the call's bytes until test()
    // reports the request done.
    let (input, output) = unsafe { (place(&g, send, bytes)?, place(&g, recv, bytes)?) };
    let id = g.all_reduce(input, output, count, dt, rop)?;
    drop(g);
    finish_post(group, id, request)
}

/// One scatter-gather element, whatever its version's size type.
pub struct Sge {
    pub address: *mut c_void,
    pub size: usize,
}

/// Where NCCL's buffer `ptr..ptr+len` lies: in a device region the group
/// registered (then the group stages it through its mirror), or in host
/// memory. Identified by pointer, not by the handle NCCL passes.
///
/// # Safety
/// `ptr` must be valid for `len` bytes until the request completes.
unsafe fn place(g: &Group, ptr: *mut c_void, len: usize) -> NetResult<Place> {
    if let Some(range) = g.device_range(ptr as usize, len) {
        return Ok(Place::Device(range));
    }
    if len > 0 && device::offers_gpu_buffers() && gpu::is_device_pointer(ptr as usize) {
        return Err(NetError::InvalidUsage(format!(
            "collnet buffer {ptr:?} (+{len} bytes) is device memory outside every region registered with regMr"
        )));
    }
    // SAFETY: host memory, valid per this function's contract.
    Ok(Place::Host(unsafe { RawBuf::new(ptr.cast(), len) }))
}

/// `parts` as places, in the group's list for them ([`Group::place_list`]).
///
/// # Safety
/// Each part must be valid until the request completes.
unsafe fn sge_places(g: &mut Group, parts: &[Sge], what: &str) -> NetResult<Vec<Place>> {
    let mut places = g.place_list();
    for p in parts {
        if p.address.is_null() && p.size > 0 {
            return Err(NetError::InvalidArgument(format!("{what} part is NULL")));
        }
        // SAFETY: per this function's contract.
        places.push(unsafe { place(g, p.address, p.size) }?);
    }
    Ok(places)
}

/// This member's piece of a window ([`Window::piece`]) as a buffer at `ptr`.
///
/// # Safety
/// `ptr` must be valid for the piece's length until the request completes.
unsafe fn own_piece(g: &Group, ptr: *mut c_void, window: Window, what: &str) -> NetResult<Place> {
    let piece = window.piece(g.params().rank);
    if ptr.is_null() && !piece.is_empty() {
        return Err(NetError::InvalidArgument(format!("{what} buffer is NULL")));
    }
    // SAFETY: per this function's contract.
    unsafe { place(g, ptr, piece.len()) }
}

/// # Safety
/// `send` valid for this member's piece of the window, `parts` valid until
/// the request completes; `request` writable.
pub unsafe fn iallgather(
    coll_comm: *mut c_void,
    send: *mut c_void,
    parts: &[Sge],
    bytes_per_rank: usize,
    window_offset: usize,
    window_bytes: usize,
    request: *mut *mut c_void,
) -> NetResult<()> {
    let group = group_of(coll_comm)?;
    let window = Window {
        bytes_per_rank,
        offset: window_offset,
        bytes: window_bytes,
    };
    let mut g = lock(group);
    // SAFETY: NCCL keeps the parts valid until the request completes.
    let output = unsafe { sge_places(&mut g, parts, "iallgather receive") }?;
    // SAFETY: NCCL passes this member's data for its piece of the window.
    let input = unsafe { own_piece(&g, send, window, "iallgather send") }?;
    let id = g.all_gather(input, output, window)?;
    drop(g);
    finish_post(group, id, request)
}

/// # Safety
/// `parts` valid for the window, `recv` for this member's piece, until the
/// request completes; `request` writable.
#[allow(clippy::too_many_arguments)]
pub unsafe fn ireducescatter(
    coll_comm: *mut c_void,
    parts: &[Sge],
    recv: *mut c_void,
    bytes_per_rank: usize,
    window_offset: usize,
    window_bytes: usize,
    dtype: c_int,
    op: c_int,
    request: *mut *mut c_void,
) -> NetResult<()> {
    let group = group_of(coll_comm)?;
    let (Some(dt), Some(rop)) = (DataType::from_nccl(dtype), RedOp::from_nccl(op)) else {
        return Err(NetError::InvalidArgument(format!(
            "ireducescatter of datatype {dtype} with op {op}, which reduceSupport declined"
        )));
    };
    let window = Window {
        bytes_per_rank,
        offset: window_offset,
        bytes: window_bytes,
    };
    let mut g = lock(group);
    // SAFETY: NCCL keeps the parts valid until the request completes.
    let input = unsafe { sge_places(&mut g, parts, "ireducescatter send") }?;
    // SAFETY: NCCL passes room for this member's piece of the window.
    let output = unsafe { own_piece(&g, recv, window, "ireducescatter receive") }?;
    let id = g.reduce_scatter(input, output, window, dt, rop)?;
    drop(g);
    finish_post(group, id, request)
}

/// Host memory needs no flush: a request that is already complete.
///
/// # Safety
/// `request` must be writable.
pub unsafe fn iflush(request: *mut *mut c_void) -> NetResult<()> {
    let req = COLL_REQUESTS.raw(Kind::CollRequest, CollRequest::Done);
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe { write_out(request, req, "request") }
}

/// # Safety
/// `request` must come from a collective call and not be completed yet;
/// `done` writable; `size` null or writable.
pub unsafe fn test(request: *mut c_void, done: *mut c_int, size: *mut c_int) -> NetResult<()> {
    // SAFETY: NCCL passes back our request object.
    let req = unsafe { object::get_mut::<CollRequest>(request, Kind::CollRequest)? };
    let finished = match req {
        CollRequest::Done => Some(0),
        CollRequest::Op { group, op } => lock(group).test(*op)?,
    };
    if let Some(bytes) = finished {
        if !size.is_null() {
            // SAFETY: non-null out-pointer from NCCL.
            unsafe { size.write(c_int::try_from(bytes).unwrap_or(c_int::MAX)) };
        }
        // SAFETY: done with the request; NCCL will not pass it again.
        drop(unsafe { COLL_REQUESTS.take(request, Kind::CollRequest)? });
    }
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe { write_out(done, c_int::from(finished.is_some()), "done") }
}

/// # Safety
/// `coll_comm` must come from connect.
pub unsafe fn close_coll(coll_comm: *mut c_void) -> NetResult<()> {
    // SAFETY: NCCL passes back our collective comm, once.
    unsafe { object::take::<CollComm>(coll_comm, Kind::Coll) }.map(drop)
}

/// A collective-network registration: host memory needs nothing; a GPU
/// buffer gets a mirror and stream in its group.
enum CollRegion {
    Host,
    Device { base: usize },
}

/// `ptrSupport` of the collective network's devices.
pub fn ptr_support() -> c_int {
    if device::offers_gpu_buffers() {
        PTR_HOST | PTR_CUDA
    } else {
        PTR_HOST
    }
}

/// # Safety
/// `coll_comm` must come from connect; `data` valid for `size` bytes while
/// registered; `mhandle` writable.
pub unsafe fn reg_mr(
    coll_comm: *mut c_void,
    data: *mut c_void,
    size: usize,
    ptr_type: c_int,
    mhandle: *mut *mut c_void,
) -> NetResult<()> {
    let region = if ptr_type & PTR_CUDA != 0 {
        if !device::offers_gpu_buffers() {
            return Err(NetError::InvalidArgument(format!(
                "collnet regMr of GPU memory {data:?}, but GPU buffers were not offered"
            )));
        }
        let base = lock(group_of(coll_comm)?).register_device(data as usize, size)?;
        crate::info!(
            crate::log::SUBSYS_NET,
            "collnet: registered GPU buffer {data:?} ({size} bytes) with a pinned host mirror"
        );
        CollRegion::Device { base }
    } else if ptr_type & PTR_HOST != 0 {
        CollRegion::Host
    } else {
        return Err(NetError::InvalidArgument(format!(
            "collnet regMr of memory type {ptr_type:#x}"
        )));
    };
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe {
        write_out(
            mhandle,
            object::into_raw(Kind::CollMemory, region),
            "mhandle",
        )
    }
}

/// # Safety
/// `coll_comm` must come from connect, `mhandle` from [`reg_mr`] on it.
pub unsafe fn dereg_mr(coll_comm: *mut c_void, mhandle: *mut c_void) -> NetResult<()> {
    // SAFETY: NCCL passes back our registration object, once.
    let region = unsafe { object::take::<CollRegion>(mhandle, Kind::CollMemory) }?;
    if let CollRegion::Device { base } = region {
        lock(group_of(coll_comm)?).deregister_device(base);
    }
    Ok(())
}

/// The collective network's `getProperties` for one ABI version: the net
/// plugin's, plus GPU buffers when offered.
macro_rules! collnet_get_properties {
    ($props:ty) => {
        unsafe extern "C" fn collnet_get_properties(
            dev: std::ffi::c_int,
            props: *mut $props,
        ) -> $crate::abi::bindings::ncclResult_t {
            // SAFETY: NCCL's getProperties contract, forwarded.
            let rc = unsafe { get_properties(dev, props) };
            // SAFETY: non-null, and filled by the call above.
            if let Some(p) = unsafe { props.as_mut() } {
                p.ptrSupport = $crate::abi::collnet::ptr_support();
            }
            rc
        }
    };
}
pub(crate) use collnet_get_properties;

/// `extern "C"` entry points whose signature is the same in every version.
pub mod shared {
    use std::ffi::{c_int, c_void};

    use super::super::bindings::{
        ncclDataType_t, ncclDebugLogger_t, ncclNetSGE_v10_t, ncclNetSGE_v11_t, ncclNetSGE_v12_t,
        ncclNetSGE_v8_t, ncclNetSGE_v9_t, ncclRedOp_t, ncclResult_t,
    };
    use super::super::guard;
    use super::Sge;
    use crate::error::NetError;

    /// NCCL's per-version scatter-gather element.
    pub trait NcclSge {
        fn sge(&self) -> Sge;
    }

    macro_rules! sge_impl {
        ($($t:ty),*) => {$(
            impl NcclSge for $t {
                fn sge(&self) -> Sge {
                    Sge { address: self.address, size: self.size as usize }
                }
            }
        )*};
    }
    sge_impl!(
        ncclNetSGE_v8_t,
        ncclNetSGE_v9_t,
        ncclNetSGE_v10_t,
        ncclNetSGE_v11_t,
        ncclNetSGE_v12_t
    );

    /// # Safety
    /// `parts` must hold `n` elements.
    unsafe fn read_sges<S: NcclSge>(
        parts: *const S,
        n: c_int,
        what: &str,
    ) -> Result<Vec<Sge>, NetError> {
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 || parts.is_null() {
            return Err(NetError::InvalidArgument(format!(
                "{what}: {n} parts at {parts:?}"
            )));
        }
        // SAFETY: NCCL passes `n` elements.
        Ok((0..n).map(|i| unsafe { &*parts.add(i) }.sge()).collect())
    }

    #[allow(clippy::too_many_arguments)]
    pub unsafe extern "C" fn iallgather<S: NcclSge>(
        coll_comm: *mut c_void,
        send: *mut c_void,
        n_parts: c_int,
        parts: *mut S,
        bytes_per_rank: usize,
        window_offset: usize,
        window_bytes: usize,
        _send_mh: *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        guard("collnet iallgather", || {
            // SAFETY: NCCL passes `n_parts` elements.
            let parts = unsafe { read_sges(parts, n_parts, "iallgather") }?;
            // SAFETY: NCCL's iallgather contract.
            unsafe {
                super::iallgather(
                    coll_comm,
                    send,
                    &parts,
                    bytes_per_rank,
                    window_offset,
                    window_bytes,
                    request,
                )
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub unsafe extern "C" fn ireducescatter<S: NcclSge>(
        coll_comm: *mut c_void,
        n_parts: c_int,
        parts: *mut S,
        recv: *mut c_void,
        bytes_per_rank: usize,
        window_offset: usize,
        window_bytes: usize,
        dtype: ncclDataType_t,
        op: ncclRedOp_t,
        _recv_mh: *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        guard("collnet ireducescatter", || {
            // SAFETY: NCCL passes `n_parts` elements.
            let parts = unsafe { read_sges(parts, n_parts, "ireducescatter") }?;
            // SAFETY: NCCL's ireducescatter contract.
            unsafe {
                super::ireducescatter(
                    coll_comm,
                    &parts,
                    recv,
                    bytes_per_rank,
                    window_offset,
                    window_bytes,
                    dtype.0 as c_int,
                    op.0 as c_int,
                    request,
                )
            }
        })
    }

    pub unsafe extern "C" fn connect(
        handles: *mut *mut c_void,
        nranks: c_int,
        rank: c_int,
        listen_comm: *mut c_void,
        coll_comm: *mut *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: arguments as NCCL's CollNet connect contract describes.
        guard("collnet connect", || unsafe {
            super::connect(handles, nranks, rank, listen_comm, coll_comm)
        })
    }

    pub unsafe extern "C" fn reg_mr(
        coll_comm: *mut c_void,
        data: *mut c_void,
        size: usize,
        ptr_type: c_int,
        mhandle: *mut *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: arguments as NCCL's regMr contract describes.
        guard("collnet regMr", || unsafe {
            super::reg_mr(coll_comm, data, size, ptr_type, mhandle)
        })
    }

    pub unsafe extern "C" fn dereg_mr(
        coll_comm: *mut c_void,
        mhandle: *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: NCCL passes back a handle from regMr on this comm.
        guard("collnet deregMr", || unsafe {
            super::dereg_mr(coll_comm, mhandle)
        })
    }

    pub unsafe extern "C" fn reduce_support(
        dtype: ncclDataType_t,
        op: ncclRedOp_t,
        supported: *mut c_int,
    ) -> ncclResult_t {
        // SAFETY: NCCL passes a writable int.
        guard("collnet reduceSupport", || unsafe {
            super::write_reduce_support(dtype.0 as c_int, op.0 as c_int, supported)
        })
    }

    pub unsafe extern "C" fn init(logger: ncclDebugLogger_t) -> ncclResult_t {
        guard("collnet init", || crate::abi::net::init(logger))
    }

    /// v11+: the net plugin's listen, noting the communicator id of the
    /// context NCCL passes (the collective network's own, per communicator)
    /// for `connect`.
    pub unsafe extern "C" fn listen_in_context(
        ctx: *mut c_void,
        dev: c_int,
        handle: *mut c_void,
        listen_comm: *mut *mut c_void,
    ) -> ncclResult_t {
        guard("collnet listen", || {
            // SAFETY: NCCL passes a 128-byte handle buffer and an out-pointer.
            unsafe { crate::abi::net::listen(dev, handle, listen_comm) }?;
            // SAFETY: NCCL passes back the context our init wrote; the tag
            // check rejects anything else (then no id is noted).
            let context = unsafe {
                super::object::get_mut::<crate::abi::net::Context>(ctx, super::Kind::Context)
            };
            if let Ok(c) = context {
                // SAFETY: listen succeeded, so the out-pointer holds our comm.
                let comm = unsafe { *listen_comm } as usize;
                super::listen_comm_ids().insert(comm, c.comm_id);
            }
            Ok(())
        })
    }

    /// v11+: forgets the listen comm's communicator id, then closes it.
    pub unsafe extern "C" fn close_listen(listen_comm: *mut c_void) -> ncclResult_t {
        super::listen_comm_ids().remove(&(listen_comm as usize));
        // SAFETY: NCCL passes back our listen comm, once.
        guard("collnet closeListen", || unsafe {
            crate::abi::net::close_listen(listen_comm)
        })
    }

    /// v11+: one context per NCCL communicator.
    pub unsafe extern "C" fn init_context(
        ctx: *mut *mut c_void,
        comm_id: u64,
        logger: ncclDebugLogger_t,
    ) -> ncclResult_t {
        guard("collnet init", || {
            crate::abi::net::init(logger)?;
            // SAFETY: NCCL passes a writable context pointer.
            unsafe { crate::abi::net::init_context(ctx, comm_id, -1) }
        })
    }

    /// v8: `int` element count.
    #[allow(clippy::too_many_arguments)]
    pub unsafe extern "C" fn iallreduce_int(
        coll_comm: *mut c_void,
        send: *mut c_void,
        recv: *mut c_void,
        count: c_int,
        dtype: ncclDataType_t,
        op: ncclRedOp_t,
        send_mh: *mut c_void,
        recv_mh: *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        let Ok(count) = usize::try_from(count) else {
            return guard("collnet iallreduce", || {
                Err(crate::error::NetError::InvalidArgument(format!(
                    "count {count}"
                )))
            });
        };
        // SAFETY: same contract as the size_t version.
        unsafe {
            iallreduce_sized(
                coll_comm, send, recv, count, dtype, op, send_mh, recv_mh, request,
            )
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub unsafe extern "C" fn iallreduce_sized(
        coll_comm: *mut c_void,
        send: *mut c_void,
        recv: *mut c_void,
        count: usize,
        dtype: ncclDataType_t,
        op: ncclRedOp_t,
        _send_mh: *mut c_void,
        _recv_mh: *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: NCCL's iallreduce contract.
        guard("collnet iallreduce", || unsafe {
            super::iallreduce(
                coll_comm,
                send,
                recv,
                count,
                dtype.0 as c_int,
                op.0 as c_int,
                request,
            )
        })
    }

    pub unsafe extern "C" fn iflush(
        _coll_comm: *mut c_void,
        _data: *mut c_void,
        _size: c_int,
        _mhandle: *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: NCCL passes a writable request pointer.
        guard("collnet iflush", || unsafe { super::iflush(request) })
    }

    pub unsafe extern "C" fn test(
        request: *mut c_void,
        done: *mut c_int,
        size: *mut c_int,
    ) -> ncclResult_t {
        // SAFETY: NCCL's test contract.
        guard("collnet test", || unsafe {
            super::test(request, done, size)
        })
    }

    pub unsafe extern "C" fn close_coll(coll_comm: *mut c_void) -> ncclResult_t {
        // SAFETY: NCCL passes back a collective comm, once.
        guard("collnet closeColl", || unsafe {
            super::close_coll(coll_comm)
        })
    }
}
