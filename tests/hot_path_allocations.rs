//! Heap allocations on the hot path (PoLA, F9: once NCCL's call pattern is
//! steady, the data path allocates nothing), counted over every thread by
//! a counting global allocator. This binary runs without libtest's harness
//! (whose timer thread allocates, to say a test runs long): its parts run
//! in `main`, one after another, so every allocation it counts is the
//! transport's or the collective network's: NCCL's proxy thread, the
//! stream threads and the workers.
//!
//! The collective network's parts count windows of calls until two in a
//! row allocate nothing (at most six): a busier moment than the warm-up
//! saw adds a pooled buffer once, while an allocation per call would show
//! in every window.
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
use std::ffi::{c_int, c_void};
use std::net::{IpAddr, Ipv4Addr};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use airamp::abi::bindings::{ncclNet_v10_t, ncclResult_t};
use airamp::codec::WireFormat;
use airamp::collnet::calibrate::probe::{Setup, PROBE_VALUES};
use airamp::collnet::device::Place;
use airamp::collnet::group::Group;
use airamp::collnet::steps;
use airamp::collnet::{DataType, RedOp};
use airamp::error::NetResult;
use airamp::gpu::{self, GpuContext, PrimaryContext};
use airamp::sys::RawBuf;
use airamp::transport::iface::NetDevice;
use airamp::transport::tcp::{
    Connecting, Listener, RecvComm, RecvRequest, SendComm, SendRequest, TcpSettings,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Set while a traced window is open.
static TRACING: AtomicBool = AtomicBool::new(false);
/// Where the traced allocations were made, and how many at each place.
static SITES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
/// Sites being recorded now (a backtrace takes milliseconds to resolve).
static RECORDING_NOW: AtomicU64 = AtomicU64::new(0);

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
    // SeqCst: an allocation counted in a window is traced in it.
    ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    if TRACING.load(Ordering::SeqCst) {
        RECORDING_NOW.fetch_add(1, Ordering::SeqCst);
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
        RECORDING_NOW.fetch_sub(1, Ordering::SeqCst);
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
        TRACING.store(trace, Ordering::SeqCst);
        Window {
            start: ALLOCATIONS.load(Ordering::SeqCst),
        }
    }

    /// The allocations counted since `open`; prints their sites if traced.
    fn close(self, what: &str) -> u64 {
        let counted = ALLOCATIONS.load(Ordering::SeqCst) - self.start;
        TRACING.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while RECORDING_NOW.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
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

/// Messages of `size` bytes, `in_flight` at a time (each in its own part
/// of `src` and `dst`), `rounds` times; `requests` is the caller's list,
/// empty, with room for them (so the test itself allocates nothing).
struct Traffic<'a> {
    send: &'a SendComm,
    recv: &'a RecvComm,
    size: usize,
    in_flight: usize,
}

impl Traffic<'_> {
    fn run(
        &self,
        src: &mut [u8],
        dst: &mut [u8],
        rounds: usize,
        requests: &mut Vec<(RecvRequest, SendRequest)>,
    ) {
        for _ in 0..rounds {
            for (s, d) in src
                .chunks_mut(self.size)
                .zip(dst.chunks_mut(self.size))
                .take(self.in_flight)
            {
                let r = wait("irecv", || self.recv.irecv(&[(raw(d), 7)]));
                let s = wait("isend", || self.send.isend(raw(s), 7));
                requests.push((r, s));
            }
            for (r, s) in requests.drain(..) {
                wait("send", || s.test());
                wait("receive", || Ok(r.test()?.map(|_| ())));
            }
        }
    }
}

/// How long a member may take to reach the gate. A window of 50 FP8
/// host-path allreduces of 2 MiB takes about 45 s in a debug build on an
/// idle 2-core machine (the codec unoptimised), and a CI machine
/// may be busier; 60 s failed there once. Generous, and still bounded.
const GATE_TIMEOUT: Duration = Duration::from_secs(300);

/// A barrier that fails the test after [`GATE_TIMEOUT`] instead of hanging when a
/// member thread died before reaching it.
struct Gate {
    parties: usize,
    /// Arrived so far, and how many times the gate opened.
    state: Mutex<(usize, u64)>,
    opened: Condvar,
}

impl Gate {
    fn new(parties: usize) -> Gate {
        Gate {
            parties,
            state: Mutex::new((0, 0)),
            opened: Condvar::new(),
        }
    }

    fn wait(&self) {
        let mut state = self.state.lock().unwrap();
        let round = state.1;
        state.0 += 1;
        if state.0 == self.parties {
            *state = (0, round + 1);
            self.opened.notify_all();
            return;
        }
        let (_state, waited) = self
            .opened
            .wait_timeout_while(state, GATE_TIMEOUT, |s| s.1 == round)
            .unwrap();
        assert!(
            !waited.timed_out(),
            "a member did not reach the gate in {GATE_TIMEOUT:?}"
        );
    }
}

/// Where a member's allreduces read and write.
#[derive(Clone, Copy)]
enum Memory {
    /// Host buffers: the exact host path.
    Host,
    /// Host buffers with FP8 agreed: the host path's codec on the workers.
    HostFp8,
    /// Device buffers with FP8 agreed: the GPU kernels.
    Gpu,
    /// Host buffers, each call an allgather window into two parts and a
    /// reduce-scatter window from two parts (NCCL's `iallgather` and
    /// `ireducescatter`), instead of an allreduce.
    Windows,
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

/// Member `group`'s windows, one at a time: an allgather of each member's
/// `piece` bytes (this member's from the front of `host_in`) into
/// `host_out`, given as two parts, then a reduce-scatter of `host_in` as
/// two parts (bf16) into the front of `host_out`. The part lists come from
/// the group, as the C ABI gets them.
fn windows_each(
    group: &mut Group,
    host_in: &mut [u8],
    host_out: &mut [u8],
    piece: usize,
    calls: usize,
) {
    let n = group.params().n;
    let window = n * piece;
    let whole = steps::Window {
        bytes_per_rank: piece,
        offset: 0,
        bytes: window,
    };
    let rank = group.params().rank;
    for _ in 0..calls {
        let (front, back) = host_out[..window].split_at_mut(window / 2 + 2);
        let mut parts = group.place_list();
        parts.extend([Place::Host(raw(front)), Place::Host(raw(back))]);
        let mine = Place::Host(raw(&mut host_in[..piece]));
        let op = group.all_gather(mine, parts, whole).expect("allgather");
        wait("allgather", || group.test(op));

        let (front, back) = host_in[..window].split_at_mut(rank * piece + 6);
        let mut parts = group.place_list();
        parts.extend([Place::Host(raw(front)), Place::Host(raw(back))]);
        let out = Place::Host(raw(&mut host_out[..piece]));
        let op = group
            .reduce_scatter(parts, out, whole, DataType::Bf16, RedOp::Sum)
            .expect("reduce-scatter");
        wait("reduce-scatter", || group.test(op));
    }
}

/// Counted windows a part may take to reach two in a row without
/// allocations.
const WINDOWS: usize = 6;

/// `n` members over TCP on loopback, two workers each, as the plugin runs
/// them by default (no help from the proxy thread), run `warm` calls (2 MiB
/// allreduces of two segments in `memory`, or windows), then windows of
/// `counted` calls until two in a row allocate nothing, [`WINDOWS`] at
/// most; returns each window's allocations.
///
/// Steady calls allocate nothing, but a moment busier than any before (more
/// buffers of a size in use at once, across members and workers) adds what
/// it needs once: on a 2-core machine the warm-up does not always reach
/// that peak. An allocation made per call shows in every window, and a
/// list that keeps growing shows in one of two windows in a row (it
/// doubles within 100 calls until it holds more than 64 items).
fn steady_calls(
    memory: Memory,
    n: usize,
    settings: &TcpSettings,
    warm: usize,
    counted: usize,
) -> Vec<u64> {
    let bound: Vec<_> = (0..n)
        .map(|_| Listener::bind(&lo(), settings).expect("bind"))
        .collect();
    let handles: Vec<_> = bound.iter().map(|(_, h)| h.clone()).collect();
    // Each window: whether to go on, the window opened, its calls done.
    let gate = Arc::new(Gate::new(n + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let members: Vec<_> = bound
        .into_iter()
        .enumerate()
        .map(|(rank, (mut listener, _))| {
            let (handles, settings) = (handles.clone(), settings.clone());
            let (gate, stop) = (gate.clone(), stop.clone());
            std::thread::spawn(move || {
                let no_calibration = Setup {
                    ask: false,
                    rates: Err("not asked".into()),
                    record: None,
                    call_overhead_us: 0.0,
                    probe_values: PROBE_VALUES,
                };
                let on_gpu = matches!(memory, Memory::Gpu);
                let wire =
                    matches!(memory, Memory::HostFp8 | Memory::Gpu).then_some(WireFormat::E4M3);
                // NCCL's proxy thread has the application's context current.
                let _primary =
                    on_gpu.then(|| PrimaryContext::bind(0).expect("device 0's primary context"));
                let (mut group, _) = Group::join(
                    &mut listener,
                    &handles,
                    rank,
                    &settings,
                    wire,
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
                let places = match memory {
                    Memory::Windows => None,
                    Memory::Host | Memory::HostFp8 => Some((
                        Place::Host(raw(&mut host_in)),
                        Place::Host(raw(&mut host_out)),
                    )),
                    Memory::Gpu => {
                        let ctx = GpuContext::current().expect("airamp's context");
                        let mut place = || {
                            let buf = ctx.alloc_device(bytes).expect("device memory");
                            let at = buf.device_addr(0).expect("address").0 as usize;
                            device.push(buf);
                            group.register_device(at, bytes).expect("register");
                            Place::Device(group.device_range(at, bytes).expect("registered"))
                        };
                        Some((place(), place()))
                    }
                };
                let mut calls = |k| match &places {
                    Some((input, output)) => all_reduce_each(&mut group, input, output, count, k),
                    // 3 x 512 KiB windows of 1.5 MiB, within the buffers.
                    None => windows_each(&mut group, &mut host_in, &mut host_out, bytes / 4, k),
                };
                calls(warm);
                loop {
                    gate.wait();
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    gate.wait();
                    calls(counted);
                    gate.wait();
                }
                drop((places, group, device));
            })
        })
        .collect();
    let mut counts = Vec::new();
    loop {
        let last = counts.ends_with(&[0, 0]) || counts.len() == WINDOWS;
        stop.store(last, Ordering::SeqCst);
        gate.wait();
        if last {
            break;
        }
        let window = Window::open();
        gate.wait();
        gate.wait();
        counts.push(window.close("calls"));
    }
    for m in members {
        m.join().expect("member");
    }
    counts
}

/// Runs `memory`'s part and fails unless its last two windows counted
/// nothing.
fn steady_part(memory: Memory, what: &str, n: usize, settings: &TcpSettings, calls: &str) {
    let counts = steady_calls(memory, n, settings, 40, 50);
    println!("collective network, {what}, {n} members: allocations in windows of {n} x 50 {calls}: {counts:?}");
    assert!(
        counts.ends_with(&[0, 0]),
        "{what}: allocations in {counts:?}"
    );
}

extern "C" {
    /// The net plugin's v10 vtable, as NCCL finds it in the library.
    static ncclNetPlugin_v10: ncclNet_v10_t;
}

/// Fails the test unless NCCL's call succeeded.
fn ok(what: &str, r: ncclResult_t) {
    assert_eq!(r, ncclResult_t::ncclSuccess, "{what} failed");
}

/// 8-byte messages through the C ABI, as NCCL makes them: `rounds` times a
/// receive, a send and `test` on both until done. Returns the allocations
/// of the last `counted` rounds.
fn abi_messages(rounds: usize, counted: usize) -> u64 {
    // SAFETY: the vtable is a static of this library, complete at link
    // time; each call below follows NCCL's net plugin contract (pointers
    // valid for the call, buffers until their request is done, requests
    // tested until done, comms closed once).
    unsafe {
        let net = &ncclNetPlugin_v10;
        ok("init", net.init.unwrap()(None, None));
        let mut handle = [0u8; 128];
        let (mut listen, mut send, mut recv): (*mut c_void, *mut c_void, *mut c_void) =
            (null_mut(), null_mut(), null_mut());
        ok(
            "listen",
            net.listen.unwrap()(0, handle.as_mut_ptr().cast(), &mut listen),
        );
        wait("connect and accept", || {
            if send.is_null() {
                ok(
                    "connect",
                    net.connect.unwrap()(
                        0,
                        null_mut(),
                        handle.as_mut_ptr().cast(),
                        &mut send,
                        null_mut(),
                    ),
                );
            }
            if recv.is_null() {
                ok("accept", net.accept.unwrap()(listen, &mut recv, null_mut()));
            }
            Ok((!send.is_null() && !recv.is_null()).then_some(()))
        });
        let (mut src, mut dst) = ([5u8; 8], [0u8; 8]);
        let poll = |request: *mut c_void| {
            let (mut done, mut size) = (0 as c_int, 0 as c_int);
            wait("test", || {
                ok("test", net.test.unwrap()(request, &mut done, &mut size));
                Ok((done != 0).then_some(()))
            });
        };
        let mut window = None;
        for round in 0..rounds {
            if round + counted == rounds {
                window = Some(Window::open());
            }
            let (mut receive, mut sending) = (null_mut(), null_mut());
            let mut data = [dst.as_mut_ptr().cast::<c_void>()];
            let (mut sizes, mut tags) = ([8usize], [7 as c_int]);
            let mut mhandles = [null_mut()];
            ok(
                "irecv",
                net.irecv.unwrap()(
                    recv,
                    1,
                    data.as_mut_ptr(),
                    sizes.as_mut_ptr(),
                    tags.as_mut_ptr(),
                    mhandles.as_mut_ptr(),
                    null_mut(),
                    &mut receive,
                ),
            );
            let data = src.as_mut_ptr().cast();
            ok(
                "isend",
                net.isend.unwrap()(send, data, 8, 7, null_mut(), null_mut(), &mut sending),
            );
            assert!(
                !receive.is_null() && !sending.is_null(),
                "a request pool is full"
            );
            poll(sending);
            poll(receive);
        }
        let counted = window.expect("opened").close("C ABI messages");
        ok("closeSend", net.closeSend.unwrap()(send));
        ok("closeRecv", net.closeRecv.unwrap()(recv));
        ok("closeListen", net.closeListen.unwrap()(listen));
        counted
    }
}

fn main() {
    let counted = abi_messages(250, 200);
    println!("C ABI, 8 B messages: {counted} allocations in 200");
    assert_eq!(counted, 0, "NCCL's calls allocated");

    let settings = TcpSettings {
        streams: 4,
        ..TcpSettings::default()
    };
    let (send, recv) = connected(&settings);
    // 8 bytes one at a time move on the caller's thread, 1 MiB eight at a
    // time on the stream threads. Both are warmed up first: the stream
    // threads have started (a new thread allocates as it starts) and the
    // queues have grown.
    let mut requests = Vec::with_capacity(8);
    let mut traffic: Vec<_> = [(8, 1), (1 << 20, 8)]
        .into_iter()
        .map(|(size, in_flight)| {
            let t = Traffic {
                send: &send,
                recv: &recv,
                size,
                in_flight,
            };
            (t, vec![3u8; size * in_flight], vec![0u8; size * in_flight])
        })
        .collect();
    for (t, src, dst) in &mut traffic {
        t.run(src, dst, 50, &mut requests);
    }
    for (t, src, dst) in &mut traffic {
        let window = Window::open();
        t.run(src, dst, 200 / t.in_flight, &mut requests);
        let counted = window.close("messages");
        let size = t.size;
        println!(
            "transport, {size} B messages, {} in flight: {counted} allocations in 200",
            t.in_flight
        );
        assert_eq!(counted, 0, "the transport allocated for {size} B messages");
    }
    drop(traffic);
    drop((send, recv));

    steady_part(Memory::Host, "exact host path", 3, &settings, "allreduces");
    steady_part(Memory::HostFp8, "FP8 host path", 3, &settings, "allreduces");
    steady_part(
        Memory::Windows,
        "allgather and reduce-scatter windows",
        3,
        &settings,
        "of each",
    );

    if !gpu::available() {
        println!("collective network, GPU path: not counted (no CUDA driver here)");
        return;
    }
    steady_part(Memory::Gpu, "FP8 GPU path", 2, &settings, "allreduces");
}
