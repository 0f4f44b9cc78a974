//! Heap allocations on the hot path (PoLA, F9: once NCCL's call pattern is
//! steady, the data path allocates nothing), counted over every thread by
//! a counting global allocator. This binary holds one test, so every
//! allocation it counts is the transport's or the collective network's:
//! NCCL's proxy thread, the stream threads and the workers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use airamp::collnet::calibrate::probe::{Setup, PROBE_VALUES};
use airamp::collnet::device::Place;
use airamp::collnet::group::Group;
use airamp::collnet::{DataType, RedOp};
use airamp::error::NetResult;
use airamp::sys::RawBuf;
use airamp::transport::iface::NetDevice;
use airamp::transport::tcp::{Connecting, Listener, RecvComm, SendComm, TcpSettings};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
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

/// Member `group`'s allreduces of `count` bf16 values, one at a time.
fn all_reduce_each(
    group: &mut Group,
    input: &mut [u8],
    output: &mut [u8],
    count: usize,
    calls: usize,
) {
    for _ in 0..calls {
        let place = |v: &mut [u8]| Place::Host(raw(v));
        let op = group
            .all_reduce(
                place(input),
                place(output),
                count,
                DataType::Bf16,
                RedOp::Sum,
            )
            .expect("allreduce");
        wait("allreduce", || group.test(op));
    }
}

/// Two members over TCP on loopback, two workers each, as the plugin runs
/// them by default (no help from the proxy thread), run `warm` exact
/// allreduces of 2 MiB (two segments), then `counted` more; returns the
/// allocations of those.
fn steady_allreduces(settings: &TcpSettings, warm: usize, counted: usize) -> u64 {
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
                let (mut group, _) = Group::join(
                    &mut listener,
                    &handles,
                    rank,
                    &settings,
                    None,
                    Duration::from_secs(20),
                    2,
                    false,
                    true,
                    no_calibration,
                )
                .expect("join");
                let count = 1 << 20;
                let (mut input, mut output) = (vec![1u8; 2 * count], vec![0u8; 2 * count]);
                all_reduce_each(&mut group, &mut input, &mut output, count, warm);
                gate.wait();
                gate.wait();
                all_reduce_each(&mut group, &mut input, &mut output, count, counted);
                gate.wait();
                gate.wait();
            })
        })
        .collect();
    gate.wait();
    let start = allocations();
    gate.wait();
    gate.wait();
    let counted_allocations = allocations() - start;
    gate.wait();
    for m in members {
        m.join().expect("member");
    }
    counted_allocations
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
        let start = allocations();
        send_each(&send, &recv, src, dst, 200);
        let counted = allocations() - start;
        let size = src.len();
        println!("transport, {size} B messages: {counted} allocations in 200");
        assert_eq!(counted, 0, "the transport allocated for {size} B messages");
    }
    drop((send, recv));

    let counted = steady_allreduces(&settings, 20, 50);
    println!("collective network, exact host path: {counted} allocations in 2 x 50 allreduces");
    assert_eq!(counted, 0, "the collective network's host path allocated");
}
