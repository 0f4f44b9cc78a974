//! Heap allocations on the hot path (PoLA, F9: once NCCL's call pattern is
//! steady, the data path allocates nothing), counted over every thread by
//! a counting global allocator. This binary holds one test, so every
//! allocation it counts is the transport's or the collective network's:
//! NCCL's proxy thread, the stream threads and the workers.
//!
//! The GPU path is counted where a CUDA driver loads (the GPU host: build
//! this test here, run its binary there); elsewhere it says it skipped it.
//!
//! `AIRAMP_TRACE_ALLOCATIONS=1` prints where each counted allocation was
//! made (a backtrace per allocation site; slow, so not the default).

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use airamp::codec::WireFormat;
use airamp::collnet::calibrate::probe::{Setup, PROBE_VALUES};
use airamp::collnet::device::Place;
use airamp::collnet::group::Group;
use airamp::collnet::{DataType, RedOp};
use airamp::error::NetResult;
use airamp::gpu::{self, GpuContext, PrimaryContext};
use airamp::sys::RawBuf;
use airamp::transport::iface::NetDevice;
use airamp::transport::tcp::{Connecting, Listener, RecvComm, SendComm, TcpSettings};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Set while a traced window is open.
static TRACING: AtomicBool = AtomicBool::new(false);
/// Where the traced allocations were made, and how many at each place.
static SITES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// This thread is recording a site: its own allocations are not counted.
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

/// Counts one allocation (not the tracer's own), and records where it was
/// made while tracing.
fn counted() {
    if RECORDING.with(Cell::get) {
        return;
    }
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        RECORDING.with(|r| r.set(true));
        let trace = Backtrace::force_capture().to_string();
        let site: Vec<&str> = trace
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("airamp::") && !l.starts_with("at "))
            .take(6)
            .collect();
        let site = if site.is_empty() {
            trace
        } else {
            site.join("\n  <- ")
        };
        *SITES.lock().unwrap().entry(site).or_default() += 1;
        RECORDING.with(|r| r.set(false));
    }
}

// SAFETY: forwards every call to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A span of the test whose allocations are counted.
struct Window {
    start: u64,
}

impl Window {
    fn open() -> Window {
        let trace = std::env::var_os("AIRAMP_TRACE_ALLOCATIONS").is_some_and(|v| v == "1");
        TRACING.store(trace, Ordering::Relaxed);
        Window {
            start: ALLOCATIONS.load(Ordering::Relaxed),
        }
    }

    /// The allocations counted since `open`; prints their sites if traced.
    fn close(self, what: &str) -> u64 {
        let counted = ALLOCATIONS.load(Ordering::Relaxed) - self.start;
        TRACING.store(false, Ordering::Relaxed);
        let sites = std::mem::take(&mut *SITES.lock().unwrap());
        for (site, n) in sites {
            println!("{what}: {n} allocation(s) at\n  {site}");
        }
        counted
    }
}

fn lo() -> NetDevice {
    NetDevice {
        ifname: "lo".into(),
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        scope_id: 0,
        loopback: true,
    }
}

fn raw(v: &mut [u8]) -> RawBuf {
    // SAFETY: each vector outlives the requests on it and is not touched
    // while one is in flight.
    unsafe { RawBuf::new(v.as_mut_ptr(), v.len()) }
}

/// Polls `f` until it yields, for at most 30 s.
fn wait<T>(what: &str, mut f: impl FnMut() -> NetResult<Option<T>>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().expect(what) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} did not finish in 30 s");
    }
}

fn connected(settings: &TcpSettings) -> (SendComm, RecvComm) {
    let (mut listener, handle) = Listener::bind(&lo(), settings).expect("bind");
    let mut connecting = Connecting::start(&handle, settings).expect("connect");
    let (mut send, mut recv) = (None, None);
    wait("connect and accept", || {
        if send.is_none() {
            send = connecting.progress()?;
        }
        if recv.is_none() {
            recv = listener.accept()?;
        }
        Ok((send.is_some() && recv.is_some()).then_some(()))
    });
    (send.expect("send comm"), recv.expect("receive comm"))
}

/// `messages` messages of `src.len()` bytes, each received before the next
/// is sent (as NCCL's small steps go).
fn send_each(send: &SendComm, recv: &RecvComm, src: &mut [u8], dst: &mut [u8], messages: usize) {
    for _ in 0..messages {
        let r = wait("irecv", || recv.irecv(&[(raw(dst), 7)]));
        let s = wait("isend", || send.isend(raw(src), 7));
        wait("send", || s.test());
        wait("receive", || Ok(r.test()?.map(|_| ())));
    }
}

/// Where a member's allreduces read and write.
#[derive(Clone, Copy)]
enum Memory {
    /// Host buffers: the exact host path.
    Host,
    /// Device buffers with FP8 agreed: the GPU kernels.
    Gpu,
}

/// Member `group`'s allreduces of `count` bf16 values, one at a time.
fn all_reduce_each(group: &mut Group, input: &Place, output: &Place, count: usize, calls: usize) {
    for _ in 0..calls {
        let (input, output) = (input.clone(), output.clone());
        let op = group
            .all_reduce(input, output, count, DataType::Bf16, RedOp::Sum)
            .expect("allreduce");
        wait("allreduce", || group.test(op));
    }
}

/// Two members over TCP on loopback, two workers each, as the plugin runs
/// them by default (no help from the proxy thread), run `warm` allreduces
/// of 2 MiB (two segments) in `memory`, then `counted` more; returns the
/// allocations of those.
fn steady_allreduces(memory: Memory, settings: &TcpSettings, warm: usize, counted: usize) -> u64 {
    let n = 2;
    let bound: Vec<_> = (0..n)
        .map(|_| Listener::bind(&lo(), settings).expect("bind"))
        .collect();
    let handles: Vec<_> = bound.iter().map(|(_, h)| h.clone()).collect();
    // Each member waits at: warm, start counting, stop counting, close.
    let gate = Arc::new(Barrier::new(n + 1));
    let members: Vec<_> = bound
        .into_iter()
        .enumerate()
        .map(|(rank, (mut listener, _))| {
            let (handles, settings, gate) = (handles.clone(), settings.clone(), gate.clone());
            std::thread::spawn(move || {
                let no_calibration = Setup {
                    ask: false,
                    rates: Err("not asked".into()),
                    record: None,
                    call_overhead_us: 0.0,
                    probe_values: PROBE_VALUES,
                };
                let on_gpu = matches!(memory, Memory::Gpu);
                // NCCL's proxy thread has the application's context current.
                let _primary =
                    on_gpu.then(|| PrimaryContext::bind(0).expect("device 0's primary context"));
                let (mut group, _) = Group::join(
                    &mut listener,
                    &handles,
                    rank,
                    &settings,
                    on_gpu.then_some(WireFormat::E4M3),
                    Duration::from_secs(20),
                    2,
                    false,
                    !on_gpu,
                    no_calibration,
                )
                .expect("join");
                let count = 1 << 20;
                let bytes = 2 * count;
                let (mut host_in, mut host_out) = (vec![1u8; bytes], vec![0u8; bytes]);
                let mut device = Vec::new();
                let (input, output) = match memory {
                    Memory::Host => (
                        Place::Host(raw(&mut host_in)),
                        Place::Host(raw(&mut host_out)),
                    ),
                    Memory::Gpu => {
                        let ctx = GpuContext::current().expect("airamp's context");
                        let mut place = || {
                            let buf = ctx.alloc_device(bytes).expect("device memory");
                            let at = buf.device_addr(0).expect("address").0 as usize;
                            device.push(buf);
                            group.register_device(at, bytes).expect("register");
                            Place::Device(group.device_range(at, bytes).expect("registered"))
                        };
                        (place(), place())
                    }
                };
                all_reduce_each(&mut group, &input, &output, count, warm);
                gate.wait();
                gate.wait();
                all_reduce_each(&mut group, &input, &output, count, counted);
                gate.wait();
                gate.wait();
                drop((input, output, group));
            })
        })
        .collect();
    gate.wait();
    let window = Window::open();
    gate.wait();
    gate.wait();
    let counted = window.close("allreduces");
    gate.wait();
    for m in members {
        m.join().expect("member");
    }
    counted
}

#[test]
fn steady_traffic_allocates_nothing() {
    let settings = TcpSettings {
        streams: 4,
        ..TcpSettings::default()
    };
    let (send, recv) = connected(&settings);
    // 8 bytes move on the caller's thread, 1 MiB on the stream threads.
    // Both are warmed up first: the stream threads have started (a new
    // thread allocates as it starts) and the queues have grown.
    let mut buffers: Vec<_> = [8, 1 << 20]
        .into_iter()
        .map(|size| (vec![3u8; size], vec![0u8; size]))
        .collect();
    for (src, dst) in &mut buffers {
        send_each(&send, &recv, src, dst, 50);
    }
    for (src, dst) in &mut buffers {
        let window = Window::open();
        send_each(&send, &recv, src, dst, 200);
        let counted = window.close("messages");
        let size = src.len();
        println!("transport, {size} B messages: {counted} allocations in 200");
        assert_eq!(counted, 0, "the transport allocated for {size} B messages");
    }
    drop((send, recv));

    let counted = steady_allreduces(Memory::Host, &settings, 20, 50);
    println!("collective network, exact host path: {counted} allocations in 2 x 50 allreduces");
    assert_eq!(counted, 0, "the collective network's host path allocated");

    if !gpu::available() {
        println!("collective network, GPU path: not counted (no CUDA driver here)");
        return;
    }
    let counted = steady_allreduces(Memory::Gpu, &settings, 20, 50);
    println!("collective network, FP8 GPU path: {counted} allocations in 2 x 50 allreduces");
    assert_eq!(counted, 0, "the collective network's GPU path allocated");
}
