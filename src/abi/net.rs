//! The version-independent body of every `ncclNet` call. Each `net_vN.rs`
//! is a thin layer that adapts its signatures and structs to these.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use super::bindings::ncclDebugLogger_t;
use super::object::{self, Kind, Recycled};
use super::{logger, write_out};
use crate::error::{NetError, NetResult};
use crate::gpu;
use crate::net::{self, Properties, MAX_REQUEST_BYTES};
use crate::sys::RawBuf;
use crate::transport::staged::{self, DeviceRegion, StagedRecv, StagedSend};
use crate::transport::tcp::{
    Connecting, Listener, PerSlot, RecvComm, RecvRequest, SendComm, SendRequest, MAX_RECVS,
};
use crate::transport::wire::{HANDLE_BYTES, HANDLE_STAGE_OFFSET};

pub const NAME: &std::ffi::CStr = c"airamp";
pub const PTR_HOST: c_int = 0x1;
/// `NCCL_PTR_CUDA`: device memory (the collective network, with GPUDirect).
pub const PTR_CUDA: c_int = 0x2;

/// Request objects' boxes, reused from one request to the next.
static REQUESTS: Recycled<Request> = Recycled::new();

enum Request {
    Send(SendRequest),
    Recv(RecvRequest),
    /// A send from a registered GPU buffer, and its comm (NCCL closes a
    /// comm only after its requests completed, so the pointer stays valid).
    StagedSend(StagedSend, *const SendComm),
    StagedRecv(StagedRecv),
}

/// A registered region: host memory needs nothing; a GPU buffer gets a
/// pinned mirror and a stream (`transport::staged`).
enum Region {
    Host,
    Device(Arc<DeviceRegion>),
}

/// Per-communicator context of net and collnet v11+: NCCL's communicator id
/// (the collective network files its calibration record under it).
pub struct Context {
    pub comm_id: u64,
}

pub fn init(logger_fn: ncclDebugLogger_t) -> NetResult<()> {
    logger::install(logger_fn);
    object::watch_forks();
    net::init();
    Ok(())
}

pub fn devices(ndev: *mut c_int) -> NetResult<()> {
    let n = net::plugin()?.devices.len() as c_int;
    // SAFETY: NCCL passes a valid int*; write_out refuses null.
    unsafe { write_out(ndev, n, "ndev") }
}

pub fn properties(dev: c_int) -> NetResult<Properties<'static>> {
    net::plugin()?.properties(dev)
}

/// # Safety
/// `handle` must point at NCCL_NET_HANDLE_MAXSIZE writable bytes.
pub unsafe fn listen(
    dev: c_int,
    handle: *mut c_void,
    listen_comm: *mut *mut c_void,
) -> NetResult<()> {
    if handle.is_null() {
        return Err(NetError::InvalidArgument("listen handle is NULL".into()));
    }
    // SAFETY: NCCL's handle buffer is NCCL_NET_HANDLE_MAXSIZE (128) bytes.
    let handle = unsafe { &mut *handle.cast::<[u8; HANDLE_BYTES]>() };
    let listener = net::plugin()?.listen(dev, handle)?;
    // SAFETY: out-pointer from NCCL.
    unsafe {
        write_out(
            listen_comm,
            object::into_raw(Kind::Listen, listener),
            "listenComm",
        )
    }
}

fn stage_of(handle: &[u8; HANDLE_BYTES]) -> *mut c_void {
    let bytes: [u8; 8] = handle[HANDLE_STAGE_OFFSET..].try_into().expect("8 bytes");
    usize::from_ne_bytes(bytes) as *mut c_void
}

fn set_stage(handle: &mut [u8; HANDLE_BYTES], p: *mut c_void) {
    handle[HANDLE_STAGE_OFFSET..].copy_from_slice(&(p as usize).to_ne_bytes());
}

/// Non-blocking connect: the connection in progress lives in the handle's
/// stage area, as NCCL calls us again with the same handle until we return
/// a comm.
///
/// # Safety
/// `handle` must point at the 128-byte handle NCCL got from the peer's
/// listen, and stay the same buffer across retries.
pub unsafe fn connect(
    dev: c_int,
    handle: *mut c_void,
    send_comm: *mut *mut c_void,
) -> NetResult<()> {
    if handle.is_null() || send_comm.is_null() {
        return Err(NetError::InvalidArgument(
            "connect handle or sendComm is NULL".into(),
        ));
    }
    // SAFETY: the handle buffer is 128 bytes and ours to update (see above).
    let handle = unsafe { &mut *handle.cast::<[u8; HANDLE_BYTES]>() };
    let mut stage = stage_of(handle);
    if stage.is_null() {
        let connecting = net::plugin()?.connect(dev, handle)?;
        stage = object::into_raw(Kind::Connecting, connecting);
        set_stage(handle, stage);
    }
    // SAFETY: `stage` is our Connecting object, stored by a previous call.
    let progress = unsafe { object::get_mut::<Connecting>(stage, Kind::Connecting)? }.progress();
    let comm = match progress {
        Ok(None) => std::ptr::null_mut(),
        done => {
            set_stage(handle, std::ptr::null_mut());
            // SAFETY: as above; the handle no longer refers to it.
            drop(unsafe { object::take::<Connecting>(stage, Kind::Connecting)? });
            match done? {
                Some(comm) => object::into_raw(Kind::Send, comm),
                None => unreachable!("handled above"),
            }
        }
    };
    // SAFETY: checked non-null; NCCL's out-pointer.
    unsafe { send_comm.write(comm) };
    Ok(())
}

/// # Safety
/// `listen_comm` must come from [`listen`]; `recv_comm` must be writable.
pub unsafe fn accept(listen_comm: *mut c_void, recv_comm: *mut *mut c_void) -> NetResult<()> {
    // SAFETY: NCCL passes back our listen object.
    let listener = unsafe { object::get_mut::<Listener>(listen_comm, Kind::Listen)? };
    let comm = match listener.accept()? {
        Some(c) => object::into_raw(Kind::Recv, c),
        None => std::ptr::null_mut(),
    };
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe { write_out(recv_comm, comm, "recvComm") }
}

/// # Safety
/// `mhandle` must be writable.
pub unsafe fn reg_mr(
    data: *mut c_void,
    size: usize,
    ptr_type: c_int,
    mhandle: *mut *mut c_void,
) -> NetResult<()> {
    let region = if ptr_type & PTR_CUDA != 0 && gpu::available() {
        // NCCL gives the point-to-point path GPU buffers once the collective
        // network (same device index) offers them: staged through a mirror.
        Region::Device(staged::register(data as usize, size)?)
    } else if ptr_type & PTR_HOST != 0 {
        Region::Host
    } else {
        return Err(NetError::InvalidArgument(format!(
            "memory type {ptr_type:#x} at {data:?}: airamp's TCP transport takes host memory, and GPU memory only with a CUDA driver"
        )));
    };
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe { write_out(mhandle, object::into_raw(Kind::Memory, region), "mhandle") }
}

/// # Safety
/// `mhandle` must come from [`reg_mr`].
pub unsafe fn dereg_mr(mhandle: *mut c_void) -> NetResult<()> {
    // SAFETY: NCCL passes back our region object.
    if let Region::Device(r) = unsafe { object::take::<Region>(mhandle, Kind::Memory) }? {
        staged::deregister(&r);
    }
    Ok(())
}

/// # Safety
/// `data` must be valid for `size` bytes until the request completes;
/// `request` must be writable.
pub unsafe fn isend(
    send_comm: *mut c_void,
    data: *mut c_void,
    size: usize,
    tag: c_int,
    request: *mut *mut c_void,
) -> NetResult<()> {
    // SAFETY: NCCL passes back our send comm.
    let comm = unsafe { object::get_mut::<SendComm>(send_comm, Kind::Send)? };
    if size > MAX_REQUEST_BYTES || (data.is_null() && size > 0) {
        return Err(NetError::InvalidArgument(format!(
            "isend of {size} bytes from {data:?} to {}",
            comm.peer()
        )));
    }
    if let Some(region) = staged::find(data as usize, size) {
        let send = StagedSend::start(comm, region, data as usize, size, tag)?;
        let req = Request::StagedSend(send, comm as *const SendComm);
        // SAFETY: NCCL's out-pointer; write_out refuses null.
        return unsafe { write_out(request, REQUESTS.raw(Kind::Request, req), "request") };
    }
    refuse_unregistered_device(data, size)?;
    // SAFETY: NCCL keeps `data` valid for `size` bytes until test() says done.
    let buf = unsafe { RawBuf::new(data.cast(), size) };
    // Messages of a comm reach the wire in posting order: behind a staged
    // send still copying, a host send waits its turn.
    let buf = match StagedSend::behind_staged(comm, buf, tag) {
        Ok(send) => {
            let req = Request::StagedSend(send, comm as *const SendComm);
            // SAFETY: NCCL's out-pointer; write_out refuses null.
            return unsafe { write_out(request, REQUESTS.raw(Kind::Request, req), "request") };
        }
        Err(buf) => buf,
    };
    let req = match comm.isend(buf, tag)? {
        Some(r) => REQUESTS.raw(Kind::Request, Request::Send(r)),
        None => std::ptr::null_mut(),
    };
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe { write_out(request, req, "request") }
}

/// # Safety
/// `data`, `tags` must hold `n` entries and `size_of(i)` must be valid for
/// `i < n`; each buffer valid until the request completes.
pub unsafe fn irecv(
    recv_comm: *mut c_void,
    n: c_int,
    data: *mut *mut c_void,
    size_of: impl Fn(usize) -> usize,
    tags: *const c_int,
    request: *mut *mut c_void,
) -> NetResult<()> {
    // SAFETY: NCCL passes back our receive comm.
    let comm = unsafe { object::get_mut::<RecvComm>(recv_comm, Kind::Recv)? };
    let n = usize::try_from(n).unwrap_or(0);
    if n == 0 || n > MAX_RECVS || data.is_null() || tags.is_null() {
        return Err(NetError::InvalidArgument(format!(
            "irecv of {n} buffers from {} (1..={MAX_RECVS}, non-NULL arrays)",
            comm.peer()
        )));
    }
    // Host buffers (the usual case) are collected without a heap
    // allocation; device buffers go through their mirrors.
    let mut slots = PerSlot::<(RawBuf, i32)>::new();
    let mut device = Vec::new();
    for i in 0..n {
        // SAFETY: NCCL passes arrays of `n` entries.
        let (ptr, tag) = unsafe { (*data.add(i), *tags.add(i)) };
        let size = size_of(i).min(MAX_REQUEST_BYTES);
        if ptr.is_null() && size > 0 {
            return Err(NetError::InvalidArgument(format!(
                "irecv buffer {i} is NULL"
            )));
        }
        if let Some((region, mirror)) = staged::recv_target(ptr as usize, size) {
            device.resize_with(i, || None);
            device.push(Some((region, ptr as usize)));
            slots.push((mirror, tag));
            continue;
        }
        refuse_unregistered_device(ptr, size)?;
        // SAFETY: NCCL keeps each buffer valid until test() says done.
        slots.push((unsafe { RawBuf::new(ptr.cast(), size) }, tag));
    }
    let req = if device.is_empty() {
        comm.irecv(&slots)?
            .map(|r| REQUESTS.raw(Kind::Request, Request::Recv(r)))
    } else {
        device.resize_with(n, || None);
        StagedRecv::start(comm, &slots, device)?
            .map(|r| REQUESTS.raw(Kind::Request, Request::StagedRecv(r)))
    }
    .unwrap_or(std::ptr::null_mut());
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe { write_out(request, req, "request") }
}

/// Host memory needs no flush: report an already-complete (NULL) request.
///
/// # Safety
/// `request` must be writable.
pub unsafe fn iflush(request: *mut *mut c_void) -> NetResult<()> {
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe { write_out(request, std::ptr::null_mut(), "request") }
}

/// # Safety
/// `request` must come from isend/irecv and not be completed yet; `done`
/// writable; `sizes` null or holding one int per receive slot.
pub unsafe fn test(request: *mut c_void, done: *mut c_int, sizes: *mut c_int) -> NetResult<()> {
    // SAFETY: NCCL passes back our request object.
    let req = unsafe { object::get_mut::<Request>(request, Kind::Request)? };
    let finished = match req {
        Request::Send(r) => r.test()?.map(|size| {
            if !sizes.is_null() {
                // SAFETY: non-null sizes has room for one int for a send.
                unsafe { sizes.write(size as c_int) };
            }
        }),
        Request::Recv(r) => r.test()?.map(|got| {
            if !sizes.is_null() {
                for (i, &s) in got.iter().enumerate() {
                    // SAFETY: NCCL's sizes array has one entry per slot.
                    unsafe { sizes.add(i).write(s as c_int) };
                }
            }
        }),
        Request::StagedSend(r, comm) => {
            // SAFETY: the comm outlives its requests (NCCL's contract).
            let comm = unsafe { &**comm };
            r.test(comm)?.map(|size| {
                if !sizes.is_null() {
                    // SAFETY: non-null sizes has room for one int for a send.
                    unsafe { sizes.write(size as c_int) };
                }
            })
        }
        Request::StagedRecv(r) => r.test()?.map(|got| {
            if !sizes.is_null() {
                for (i, &s) in got.iter().enumerate() {
                    // SAFETY: NCCL's sizes array has one entry per slot.
                    unsafe { sizes.add(i).write(s as c_int) };
                }
            }
        }),
    };
    if finished.is_some() {
        // SAFETY: done with the request; NCCL will not pass it again.
        drop(unsafe { REQUESTS.take(request, Kind::Request)? });
    }
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe { write_out(done, c_int::from(finished.is_some()), "done") }
}

/// # Safety
/// `comm` must come from connect.
pub unsafe fn close_send(comm: *mut c_void) -> NetResult<()> {
    // SAFETY: NCCL passes back our send comm, once.
    let comm = unsafe { object::take::<SendComm>(comm, Kind::Send) }?;
    staged::forget_comm(&comm);
    Ok(())
}

/// A device pointer outside every registered region is refused (never
/// dereferenced as host memory). Only checked when GPU buffers are offered
/// at all: otherwise NCCL hands host memory only, and the hot path pays no
/// driver query.
fn refuse_unregistered_device(ptr: *mut c_void, len: usize) -> NetResult<()> {
    if len > 0
        && crate::collnet::device::offers_gpu_buffers()
        && gpu::is_device_pointer(ptr as usize)
    {
        return Err(NetError::InvalidUsage(format!(
            "buffer {ptr:?} (+{len} bytes) is GPU memory outside every region registered with regMr"
        )));
    }
    Ok(())
}

/// # Safety
/// `comm` must come from accept.
pub unsafe fn close_recv(comm: *mut c_void) -> NetResult<()> {
    // SAFETY: NCCL passes back our receive comm, once.
    unsafe { object::take::<RecvComm>(comm, Kind::Recv) }.map(drop)
}

/// # Safety
/// `comm` must come from listen.
pub unsafe fn close_listen(comm: *mut c_void) -> NetResult<()> {
    // SAFETY: NCCL passes back our listen comm, once.
    unsafe { object::take::<Listener>(comm, Kind::Listen) }.map(drop)
}

/// v11+: one context per NCCL communicator.
///
/// # Safety
/// `ctx` must be writable.
pub unsafe fn init_context(
    ctx: *mut *mut c_void,
    comm_id: u64,
    traffic_class: i32,
) -> NetResult<()> {
    crate::trace!(
        "context for communicator {comm_id:#x}; traffic class {traffic_class} is not used by TCP"
    );
    // SAFETY: NCCL's out-pointer; write_out refuses null.
    unsafe {
        write_out(
            ctx,
            object::into_raw(Kind::Context, Context { comm_id }),
            "ctx",
        )
    }?;
    net::context_opened();
    Ok(())
}

/// # Safety
/// `ctx` must come from [`init_context`].
pub unsafe fn finalize_context(ctx: *mut c_void) -> NetResult<()> {
    // SAFETY: NCCL passes back our context, once.
    unsafe { object::take::<Context>(ctx, Kind::Context) }?;
    net::context_closed();
    Ok(())
}

/// Fills the fields every properties version shares.
macro_rules! fill_common_properties {
    ($props:expr, $p:expr) => {{
        let out = $props;
        crate::abi::net::fill_common_properties!(v7: &mut *out, $p);
        out.regIsGlobal = 0;
    }};
    // The fields every version has (v7 lacks `regIsGlobal`).
    (v7: $props:expr, $p:expr) => {{
        let p: &crate::net::Properties = $p;
        let out = $props;
        out.name = p.device.name.as_ptr().cast_mut();
        out.pciPath = p
            .device
            .pci_path
            .as_ref()
            .map_or(std::ptr::null_mut(), |s| s.as_ptr().cast_mut());
        out.guid = p.guid;
        out.ptrSupport = crate::abi::net::PTR_HOST;
        out.speed = p.device.speed_mbps;
        out.port = 0;
        out.latency = p.latency_us;
        out.maxComms = p.max_comms;
        out.maxRecvs = p.max_recvs;
        out.netDeviceType = crate::abi::bindings::ncclNetDeviceType::NCCL_NET_DEVICE_HOST;
        out.netDeviceVersion = 0;
    }};
}
pub(crate) use fill_common_properties;

/// Fills the v9+ additions (virtual-device list, size limits).
macro_rules! fill_v9_properties {
    ($props:expr, $p:expr, $dev:expr) => {{
        let out = $props;
        fill_common_properties!(&mut *out, $p);
        out.forceFlush = 0;
        out.vProps.ndevs = 1;
        out.vProps.devs[0] = $dev;
        out.maxP2pBytes = $p.max_bytes;
        out.maxCollBytes = $p.max_bytes;
    }};
}
pub(crate) use fill_v9_properties;

/// `extern "C"` entry points whose signature is the same in every version.
pub mod shared {
    use std::ffi::{c_int, c_void};

    use super::super::bindings::{ncclNetDeviceHandle_v8_t, ncclResult_t};
    use super::super::guard;
    use crate::error::NetError;

    pub unsafe extern "C" fn devices(ndev: *mut c_int) -> ncclResult_t {
        guard("devices", || super::devices(ndev))
    }

    pub unsafe extern "C" fn accept(
        listen_comm: *mut c_void,
        recv_comm: *mut *mut c_void,
        _recv_dev_comm: *mut *mut ncclNetDeviceHandle_v8_t,
    ) -> ncclResult_t {
        // SAFETY: arguments as NCCL's accept contract describes.
        guard("accept", || unsafe {
            super::accept(listen_comm, recv_comm)
        })
    }

    pub unsafe extern "C" fn reg_mr(
        _comm: *mut c_void,
        data: *mut c_void,
        size: usize,
        ptr_type: c_int,
        mhandle: *mut *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: NCCL passes a writable mhandle.
        guard("regMr", || unsafe {
            super::reg_mr(data, size, ptr_type, mhandle)
        })
    }

    pub unsafe extern "C" fn reg_mr_dma_buf(
        _comm: *mut c_void,
        _data: *mut c_void,
        _size: usize,
        _ptr_type: c_int,
        _offset: u64,
        _fd: c_int,
        _mhandle: *mut *mut c_void,
    ) -> ncclResult_t {
        guard("regMrDmaBuf", || {
            Err(NetError::Unsupported(
                "DMA-BUF registration (TCP transport serves host memory only)",
            ))
        })
    }

    pub unsafe extern "C" fn dereg_mr(_comm: *mut c_void, mhandle: *mut c_void) -> ncclResult_t {
        // SAFETY: NCCL passes back a handle from regMr.
        guard("deregMr", || unsafe { super::dereg_mr(mhandle) })
    }

    pub unsafe extern "C" fn iflush(
        _recv_comm: *mut c_void,
        _n: c_int,
        _data: *mut *mut c_void,
        _sizes: *mut c_int,
        _mhandles: *mut *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: NCCL passes a writable request pointer.
        guard("iflush", || unsafe { super::iflush(request) })
    }

    pub unsafe extern "C" fn test(
        request: *mut c_void,
        done: *mut c_int,
        sizes: *mut c_int,
    ) -> ncclResult_t {
        // SAFETY: arguments as NCCL's test contract describes.
        guard("test", || unsafe { super::test(request, done, sizes) })
    }

    pub unsafe extern "C" fn close_send(comm: *mut c_void) -> ncclResult_t {
        // SAFETY: NCCL passes back a send comm, once.
        guard("closeSend", || unsafe { super::close_send(comm) })
    }

    pub unsafe extern "C" fn close_recv(comm: *mut c_void) -> ncclResult_t {
        // SAFETY: NCCL passes back a receive comm, once.
        guard("closeRecv", || unsafe { super::close_recv(comm) })
    }

    pub unsafe extern "C" fn close_listen(comm: *mut c_void) -> ncclResult_t {
        // SAFETY: NCCL passes back a listen comm, once.
        guard("closeListen", || unsafe { super::close_listen(comm) })
    }

    pub unsafe extern "C" fn finalize(ctx: *mut c_void) -> ncclResult_t {
        // SAFETY: NCCL passes back a context from init, once.
        guard("finalize", || unsafe { super::finalize_context(ctx) })
    }

    /// isend with `size_t` sizes (v9+).
    pub unsafe extern "C" fn isend_sized(
        comm: *mut c_void,
        data: *mut c_void,
        size: usize,
        tag: c_int,
        _mhandle: *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: NCCL's isend contract.
        guard("isend", || unsafe {
            super::isend(comm, data, size, tag, request)
        })
    }

    /// isend with a profiler handle, which we accept and do not use (v10+).
    pub unsafe extern "C" fn isend_profiled(
        comm: *mut c_void,
        data: *mut c_void,
        size: usize,
        tag: c_int,
        mhandle: *mut c_void,
        _phandle: *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: same contract as isend_sized.
        unsafe { isend_sized(comm, data, size, tag, mhandle, request) }
    }

    /// irecv with `size_t` sizes (v9+).
    pub unsafe extern "C" fn irecv_sized(
        comm: *mut c_void,
        n: c_int,
        data: *mut *mut c_void,
        sizes: *mut usize,
        tags: *mut c_int,
        _mhandles: *mut *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        guard("irecv", || {
            if sizes.is_null() {
                return Err(NetError::InvalidArgument("irecv sizes is NULL".into()));
            }
            // SAFETY: `sizes` holds `n` entries (NCCL's irecv contract).
            let size_of = |i: usize| unsafe { *sizes.add(i) };
            // SAFETY: NCCL's irecv contract.
            unsafe { super::irecv(comm, n, data, size_of, tags, request) }
        })
    }

    /// irecv with profiler handles, accepted and unused (v10+).
    #[allow(clippy::too_many_arguments)]
    pub unsafe extern "C" fn irecv_profiled(
        comm: *mut c_void,
        n: c_int,
        data: *mut *mut c_void,
        sizes: *mut usize,
        tags: *mut c_int,
        mhandles: *mut *mut c_void,
        _phandles: *mut *mut c_void,
        request: *mut *mut c_void,
    ) -> ncclResult_t {
        // SAFETY: same contract as irecv_sized.
        unsafe { irecv_sized(comm, n, data, sizes, tags, mhandles, request) }
    }
}
