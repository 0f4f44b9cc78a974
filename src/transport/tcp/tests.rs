//! Loopback tests of the TCP driver through its Rust API.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;
use crate::error::{ErrorClass, NetError};
use crate::sys::RawBuf;
use crate::transport::iface::NetDevice;
use crate::transport::liveness::Liveness;
use crate::transport::wire::ListenHandle;

fn lo() -> NetDevice {
    NetDevice {
        ifname: "lo".into(),
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        scope_id: 0,
        loopback: true,
    }
}

fn settings(streams: usize) -> TcpSettings {
    TcpSettings {
        streams,
        chunk_bytes: 64 << 10,
        min_chunk_bytes: 64 << 10,
        peer_timeout: Duration::from_secs(2),
        ..TcpSettings::default()
    }
}

fn pair(s: &TcpSettings) -> (SendComm, RecvComm) {
    pair_with(s, s)
}

fn pair_with(send_side: &TcpSettings, recv_side: &TcpSettings) -> (SendComm, RecvComm) {
    let (mut listener, handle) = Listener::bind(&lo(), recv_side).unwrap();
    let mut connecting = Connecting::start(&handle, send_side).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut send, mut recv) = (None, None);
    while send.is_none() || recv.is_none() {
        assert!(Instant::now() < deadline, "connect/accept did not finish");
        if send.is_none() {
            send = connecting.progress().unwrap();
        }
        if recv.is_none() {
            recv = listener.accept().unwrap();
        }
    }
    (send.unwrap(), recv.unwrap())
}

fn buf(v: &mut [u8]) -> RawBuf {
    // SAFETY: every test keeps `v` alive and untouched until its request completes.
    unsafe { RawBuf::new(v.as_mut_ptr(), v.len()) }
}

fn wait<T>(mut f: impl FnMut() -> Result<Option<T>, NetError>) -> Result<T, NetError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        assert!(Instant::now() < deadline, "request never completed");
        std::thread::yield_now();
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Every way bytes can move: inline on the caller's thread, by the stream
/// threads, a mix (the default), and threads only (the collective network).
#[test]
fn messages_of_every_shape_arrive_intact() {
    for (streams, inline_bytes, caller_assists) in [
        (1, 64 << 10, true),
        (4, 64 << 10, true),
        (3, 0, true),
        (2, 1 << 30, true),
        (3, 64 << 10, false),
    ] {
        let s = TcpSettings {
            inline_bytes,
            ..settings(streams)
        };
        let (send, recv) = pair(&s);
        send.set_caller_assists(caller_assists);
        recv.set_caller_assists(caller_assists);
        for (i, len) in [
            0usize,
            1,
            7,
            4096,
            8159,
            8160,
            8161,
            8192,
            65_537,
            1 << 20,
            3_000_001,
        ]
        .into_iter()
        .enumerate()
        {
            let mut src = pattern(len, i as u8);
            let mut dst = vec![0u8; len + 100];
            let r = recv.irecv(&[(buf(&mut dst), 9)]).unwrap().unwrap();
            let t = send.isend(buf(&mut src), 9).unwrap().unwrap();
            assert_eq!(wait(|| t.test()).unwrap(), len as u64);
            assert_eq!(
                wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
                vec![len as u64]
            );
            assert_eq!(
                &dst[..len],
                &src[..],
                "payload of {len} bytes over {streams} streams, inline up to {inline_bytes}"
            );
        }
    }
}

/// Mid-size messages kept to the first two of four streams, larger ones on
/// all four, one at a time and queued behind each other: each arrives
/// intact and is taken by a thread it wakes, never left until a heartbeat
/// wakes one (every 15 s with this timeout). Narrow messages never touch
/// streams 2 and 3, whose threads sleep meanwhile (no spinning on a head
/// they may not take); a wide message wakes them. Without the caller's
/// assists (as on the collective network's links) only the wake-ups of
/// `isend` move the bytes; with them, the caller's tests wake threads too.
#[test]
fn narrow_and_wide_messages_never_wait_for_a_heartbeat() {
    for assists in [false, true] {
        narrow_and_wide_messages(assists);
    }
}

fn narrow_and_wide_messages(assists: bool) {
    let s = TcpSettings {
        inline_bytes: 64 << 10,
        narrow_bytes: 256 << 10,
        peer_timeout: Duration::from_secs(60),
        ..settings(4)
    };
    let (send, recv) = pair(&s);
    send.set_caller_assists(assists);
    recv.set_caller_assists(assists);
    let bound = Duration::from_secs(5);
    let run = |batch: &[usize], seed: u8| {
        let mut srcs: Vec<Vec<u8>> = batch.iter().map(|&len| pattern(len, seed)).collect();
        let mut dsts: Vec<Vec<u8>> = batch.iter().map(|&len| vec![0u8; len]).collect();
        let start = Instant::now();
        let rs: Vec<_> = dsts
            .iter_mut()
            .map(|d| recv.irecv(&[(buf(d), 3)]).unwrap().unwrap())
            .collect();
        let ts: Vec<_> = srcs
            .iter_mut()
            .map(|b| send.isend(buf(b), 3).unwrap().unwrap())
            .collect();
        let mut pending = batch.len() * 2;
        let (mut sent, mut received) = (vec![false; ts.len()], vec![false; rs.len()]);
        while pending > 0 {
            assert!(
                start.elapsed() < bound,
                "messages of {batch:?} B still in flight after {bound:?} (assists {assists})"
            );
            for (t, done) in ts.iter().zip(&mut sent) {
                if !*done && t.test().unwrap().is_some() {
                    (*done, pending) = (true, pending - 1);
                }
            }
            for (r, done) in rs.iter().zip(&mut received) {
                if !*done && r.test().unwrap().is_some() {
                    (*done, pending) = (true, pending - 1);
                }
            }
            std::thread::yield_now();
        }
        drop((ts, rs));
        assert!(srcs == dsts, "payloads of {batch:?} B");
    };
    // Let the threads settle into their first sleep.
    std::thread::sleep(Duration::from_millis(50));
    let before = send.stream_counts();
    for (i, len) in [128 << 10, 200_000, 256 << 10, (64 << 10) + 1]
        .into_iter()
        .cycle()
        .take(40)
        .enumerate()
    {
        run(&[len], i as u8);
    }
    let narrow = send.stream_counts();
    for stream in 2..4 {
        assert_eq!(
            narrow[stream].0, before[stream].0,
            "narrow messages on stream {stream} (assists {assists})"
        );
        // Not woken at all (a spurious wake-up is allowed).
        assert!(
            narrow[stream].1 - before[stream].1 < 4,
            "stream {stream}'s thread looked {} times while it could take nothing (assists {assists})",
            narrow[stream].1 - before[stream].1
        );
    }
    for (i, len) in [4 << 20, (256 << 10) + 1, 1 << 20].into_iter().enumerate() {
        run(&[len], 50 + i as u8);
    }
    let wide = send.stream_counts();
    for stream in 2..4 {
        assert!(
            wide[stream].1 > narrow[stream].1,
            "wide messages never woke stream {stream}'s thread (assists {assists})"
        );
    }
    // Narrow messages queued behind a wide one, which woke every thread:
    // streams 2 and 3 then find a head they may not take, and sleep.
    let rounds = 20;
    for round in 0..rounds {
        run(&[1 << 20, 128 << 10, 128 << 10, 200_000], 100 + round as u8);
    }
    let mixed = send.stream_counts();
    for stream in 2..4 {
        let looks = mixed[stream].1 - wide[stream].1;
        assert!(
            looks < 20 * rounds,
            "stream {stream}'s thread looked {looks} times in {rounds} rounds (assists {assists})"
        );
    }
    // A wide message queued behind narrow ones.
    for round in 0..3u8 {
        run(
            &[128 << 10, 128 << 10, 4 << 20, 200_000, 1 << 20],
            150 + round,
        );
    }
}

#[test]
fn many_requests_in_flight_complete_in_order_and_pool_is_bounded() {
    let s = settings(3);
    let (send, recv) = pair(&s);
    let mut srcs: Vec<Vec<u8>> = (0..MAX_REQUESTS)
        .map(|i| pattern(100_000 + i, i as u8))
        .collect();
    let mut dsts: Vec<Vec<u8>> = (0..MAX_REQUESTS).map(|_| vec![0u8; 200_000]).collect();
    let rs: Vec<_> = dsts
        .iter_mut()
        .map(|d| recv.irecv(&[(buf(d), 1)]).unwrap().unwrap())
        .collect();
    let ts: Vec<_> = srcs
        .iter_mut()
        .map(|d| send.isend(buf(d), 1).unwrap().unwrap())
        .collect();
    let mut extra = [0u8; 4];
    assert!(
        send.isend(buf(&mut extra), 1).unwrap().is_none(),
        "pool of {MAX_REQUESTS} is full"
    );
    assert!(recv.irecv(&[(buf(&mut extra), 1)]).unwrap().is_none());
    for (i, (t, r)) in ts.iter().zip(&rs).enumerate() {
        wait(|| t.test()).unwrap();
        assert_eq!(
            wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
            vec![100_000 + i as u64]
        );
    }
    drop((ts, rs));
    for (s, d) in srcs.iter().zip(&dsts) {
        assert_eq!(&d[..s.len()], &s[..]);
    }
}

#[test]
fn grouped_receive_matches_tags() {
    let (send, recv) = pair(&settings(2));
    let mut a = pattern(1000, 1);
    let mut b = pattern(70_000, 2);
    let (mut da, mut db) = (vec![0u8; 2000], vec![0u8; 80_000]);
    let r = recv
        .irecv(&[(buf(&mut da), 10), (buf(&mut db), 20)])
        .unwrap()
        .unwrap();
    let tb = send.isend(buf(&mut b), 20).unwrap().unwrap();
    let ta = send.isend(buf(&mut a), 10).unwrap().unwrap();
    wait(|| ta.test()).unwrap();
    wait(|| tb.test()).unwrap();
    assert_eq!(
        wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
        vec![1000, 70_000]
    );
    assert_eq!(&da[..1000], &a[..]);
    assert_eq!(&db[..70_000], &b[..]);
}

#[test]
fn oversized_message_is_invalid_usage_not_an_overrun() {
    let (send, recv) = pair(&settings(1));
    let mut src = pattern(100, 0);
    let mut dst = [0xEEu8; 64];
    let r = recv.irecv(&[(buf(&mut dst[..50]), 0)]).unwrap().unwrap();
    let _t = send.isend(buf(&mut src), 0).unwrap().unwrap();
    let err = wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap_err();
    assert_eq!(err.class(), ErrorClass::InvalidUsage, "{err}");
    assert!(
        dst[50..].iter().all(|&b| b == 0xEE),
        "nothing written past the buffer"
    );
}

#[test]
fn peer_close_fails_pending_receive() {
    let (send, recv) = pair(&settings(2));
    let mut dst = vec![0u8; 10];
    let r = recv.irecv(&[(buf(&mut dst), 0)]).unwrap().unwrap();
    drop(send);
    let err = wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Remote, "{err}");
}

/// The peer timeout of the liveness tests: short, but its 3/4 of slack
/// stays far above how long a loaded 2-core box stalls a thread.
const LIVE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Both directions stay quiet for several peer timeouts: heartbeats keep
/// the connection alive, and it still carries messages afterwards.
#[test]
fn idle_connection_outlives_the_peer_timeout() {
    let s = TcpSettings {
        peer_timeout: LIVE_TIMEOUT,
        ..settings(2)
    };
    let (send, recv) = pair(&s);
    std::thread::sleep(LIVE_TIMEOUT * 5 / 2);
    let mut src = pattern(100, 3);
    let mut dst = vec![0u8; 100];
    let r = recv.irecv(&[(buf(&mut dst), 0)]).unwrap().unwrap();
    let t = send.isend(buf(&mut src), 0).unwrap().unwrap();
    wait(|| t.test()).unwrap();
    wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap();
    assert_eq!(dst, src);
}

/// A receiver that posts nothing for several peer timeouts while the sender
/// has far more queued than the socket buffers hold (a zero window) is
/// alive: neither side fails, and every byte arrives once it posts.
#[test]
fn slow_receiver_is_never_failed() {
    let s = TcpSettings {
        peer_timeout: LIVE_TIMEOUT,
        socket_buffer: 64 << 10,
        ..settings(2)
    };
    let (send, recv) = pair(&s);
    const N: usize = 8;
    const LEN: usize = 1 << 20;
    let mut srcs: Vec<Vec<u8>> = (0..N).map(|i| pattern(LEN, i as u8)).collect();
    let sends: Vec<_> = srcs
        .iter_mut()
        .map(|b| send.isend(buf(b), 5).unwrap().unwrap())
        .collect();
    let start = Instant::now();
    while start.elapsed() < LIVE_TIMEOUT * 5 / 2 {
        assert!(
            sends.last().unwrap().test().unwrap().is_none(),
            "the window never closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut dsts: Vec<Vec<u8>> = (0..N).map(|_| vec![0u8; LEN]).collect();
    let recvs: Vec<_> = dsts
        .iter_mut()
        .map(|d| recv.irecv(&[(buf(d), 5)]).unwrap().unwrap())
        .collect();
    for (t, r) in sends.iter().zip(&recvs) {
        wait(|| t.test()).unwrap();
        wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap();
    }
    drop((sends, recvs));
    assert!(srcs == dsts, "payloads differ");
}

/// A fake listener that accepts, reads the hello and everything after it,
/// and never says a word back.
fn mute_listener(timeout_ms: u64) -> ListenHandle {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = ListenHandle {
        addr: l.local_addr().unwrap(),
        streams: 1,
        token: [9; 16],
        heartbeat_ms: Liveness::interval_for(timeout_ms),
        agreement: 0,
    };
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut sink = vec![0u8; 1 << 16];
        while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
    });
    handle
}

#[test]
fn sender_fails_a_receiver_that_sends_no_heartbeat() {
    let s = TcpSettings {
        peer_timeout: LIVE_TIMEOUT,
        ..settings(1)
    };
    let handle = mute_listener(LIVE_TIMEOUT.as_millis() as u64);
    let mut c = Connecting::start(&handle, &s).unwrap();
    let send = wait(|| c.progress()).unwrap();
    let start = Instant::now();
    let mut src = pattern(10, 1);
    let err = loop {
        match send.isend(buf(&mut src), 0) {
            Ok(Some(t)) => {
                if let Err(e) = wait(|| t.test()) {
                    break e;
                }
            }
            Ok(None) => {}
            Err(e) => break e,
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no error after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(err.class(), ErrorClass::Remote, "{err}");
    assert!(err.to_string().contains("no heartbeat"), "{err}");
    assert!(start.elapsed() >= LIVE_TIMEOUT / 2, "{:?}", start.elapsed());
}

#[test]
fn receiver_fails_a_sender_that_sends_no_heartbeat() {
    let s = TcpSettings {
        peer_timeout: LIVE_TIMEOUT,
        ..settings(1)
    };
    let (raw, recv) = raw_sender(&s);
    let mut dst = vec![0u8; 8];
    let r = recv.irecv(&[(buf(&mut dst), 0)]).unwrap().unwrap();
    let start = Instant::now();
    let err = wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Remote, "{err}");
    assert!(err.to_string().contains("no heartbeat"), "{err}");
    assert!(start.elapsed() >= LIVE_TIMEOUT / 2, "{:?}", start.elapsed());
    drop(raw);
}

/// A raw peer that has sent its hello on a one-stream connection.
fn raw_sender(s: &TcpSettings) -> (std::net::TcpStream, RecvComm) {
    use std::io::Write;
    let (mut listener, handle) = Listener::bind(&lo(), s).unwrap();
    let mut raw = std::net::TcpStream::connect(handle.addr).unwrap();
    let hello = crate::transport::wire::Hello {
        token: handle.token,
        connection: 1,
        stream: 0,
        streams: 1,
        heartbeat_ms: handle.heartbeat_ms,
        agreement: handle.agreement,
    };
    raw.write_all(&hello.encode()).unwrap();
    let recv = wait(|| listener.accept()).unwrap();
    (raw, recv)
}

/// One data frame of `payload` as message `seq`, tag 0.
fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let header = crate::transport::wire::FrameHeader {
        seq,
        total: payload.len() as u64,
        offset: 0,
        len: payload.len() as u32,
        tag: 0,
    };
    [&header.encode()[..], payload].concat()
}

/// Small messages are peeked and dropped from the socket at the stream's
/// next read (`stage`): runs of small messages, large ones read straight
/// into their buffer between them, and small ones again all arrive intact
/// and in order, each exactly once.
#[test]
fn messages_arrive_intact_wherever_their_peeked_bytes_are_dropped() {
    use std::io::Write;
    let s = TcpSettings {
        inline_bytes: 1 << 30,
        ..settings(1)
    };
    let (mut raw, recv) = raw_sender(&s);
    let sizes = [
        8usize, 100, 3000, 8, 16, 24, 40, 200_000, 16, 24, 4064, 4065, 9000, 1, 0, 7,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let msg = pattern(n, i as u8);
        let mut dst = vec![0u8; n];
        raw.write_all(&frame(i as u64, &msg)).unwrap();
        let r = recv.irecv(&[(buf(&mut dst), 0)]).unwrap().unwrap();
        assert_eq!(
            wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
            vec![n as u64]
        );
        drop(r);
        assert!(dst == msg, "message {i} of {n} bytes differs");
    }
    drop(raw);
}

/// A receive comm closed right after a small message drops the bytes it
/// peeked first: a socket closed with unread bytes would reset the
/// connection, and the peer's next write would fail as a reset instead of
/// finding a closed peer.
#[test]
fn closing_after_a_small_message_is_a_clean_close() {
    use std::io::{Read, Write};
    let (mut raw, recv) = raw_sender(&settings(1));
    let mut dst = vec![0u8; 8];
    raw.write_all(&frame(0, &pattern(8, 5))).unwrap();
    let r = recv.irecv(&[(buf(&mut dst), 0)]).unwrap().unwrap();
    wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap();
    drop(r);
    drop(recv);
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = [0u8; 64];
    // Heartbeat bytes may come first; then the end.
    loop {
        match raw.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("the close came as {e} ({:?})", e.kind()),
        }
    }
    // After a reset, a write fails at once (EPIPE); after a close it is
    // accepted.
    if let Err(e) = raw.write(b"x") {
        panic!("the connection was reset: {e}");
    }
}

/// A sender that goes silent right after a small message is still failed
/// after the timeout, with no receive posted, so the caller never reads the
/// socket again: the stream's thread, which reads (never peeks) before it
/// asks whether the peer has spoken, drops the peeked bytes, so they cannot
/// pass for new ones, nor be read twice.
#[test]
fn a_peer_silent_after_a_small_message_is_still_failed() {
    use std::io::Write;
    let s = TcpSettings {
        peer_timeout: LIVE_TIMEOUT,
        inline_bytes: 1 << 30,
        ..settings(1)
    };
    let (mut raw, recv) = raw_sender(&s);
    let mut dst = vec![0u8; 8];
    raw.write_all(&frame(0, &pattern(8, 5))).unwrap();
    let r = recv.irecv(&[(buf(&mut dst), 0)]).unwrap().unwrap();
    wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap();
    drop(r);
    std::thread::sleep(LIVE_TIMEOUT * 5 / 2);
    let mut next = vec![0u8; 8];
    let err = match recv.irecv(&[(buf(&mut next), 0)]) {
        Err(e) => e,
        Ok(_) => panic!(
            "no error {:?} after the peer fell silent",
            LIVE_TIMEOUT * 5 / 2
        ),
    };
    assert_eq!(err.class(), ErrorClass::Remote, "{err}");
    assert!(err.to_string().contains("no heartbeat"), "{err}");
    drop(raw);
}

/// Many small messages queued before any receive is posted: one read of the
/// staging buffer then holds several frames, split anywhere.
#[test]
fn small_messages_piled_up_arrive_intact() {
    let (send, recv) = pair(&settings(1));
    let sizes: Vec<usize> = (0..30).map(|i| (i * 977) % 3001).collect();
    let mut srcs: Vec<Vec<u8>> = sizes.iter().map(|&n| pattern(n, n as u8)).collect();
    let sends: Vec<_> = srcs
        .iter_mut()
        .map(|b| send.isend(buf(b), 3).unwrap().unwrap())
        .collect();
    for t in &sends {
        wait(|| t.test()).unwrap();
    }
    let mut dsts: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n + 7]).collect();
    let recvs: Vec<_> = dsts
        .iter_mut()
        .map(|d| recv.irecv(&[(buf(d), 3)]).unwrap().unwrap())
        .collect();
    for (r, &n) in recvs.iter().zip(&sizes) {
        assert_eq!(
            wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
            vec![n as u64]
        );
    }
    drop((sends, recvs));
    for (s, d) in srcs.iter().zip(&dsts) {
        assert_eq!(&d[..s.len()], &s[..]);
    }
}

/// A header read before its receive was posted leaves no bytes in the
/// socket for the receive test's readiness set to report; once the receive
/// is posted, the test itself must read it. Here the sender's threads put
/// small messages on different streams and the receiver reads on the
/// caller's thread (NCCL's proxy path), so one stage read takes several
/// frames and later headers wait on several streams. Every message must
/// arrive intact and in order, and none may wait for a stream thread's
/// look at an absent caller (`CALLER_ABSENT_MS`, 100 ms): with the waiting
/// headers left out of the test, 2–3 receives per run took about 99 ms,
/// against under 5 ms each otherwise.
#[test]
fn headers_waiting_for_a_post_are_read_once_it_is_posted() {
    const LEN: usize = 100;
    let send_side = TcpSettings {
        inline_bytes: 0,
        min_chunk_bytes: 4096,
        ..settings(4)
    };
    let recv_side = TcpSettings {
        inline_bytes: 1 << 30,
        ..settings(4)
    };
    let (send, recv) = pair_with(&send_side, &recv_side);
    let mut dst = vec![0u8; LEN];
    let mut slowest = Duration::ZERO;
    for round in 0..100usize.div_ceil(MAX_REQUESTS) {
        let mut srcs: Vec<Vec<u8>> = (0..MAX_REQUESTS.min(100 - round * MAX_REQUESTS))
            .map(|i| pattern(LEN, (round * MAX_REQUESTS + i) as u8))
            .collect();
        // One at a time: each wakes the next sleeping thread, so the
        // messages land on different streams.
        let sends: Vec<_> = srcs
            .iter_mut()
            .map(|b| {
                let t = send.isend(buf(b), 5).unwrap().unwrap();
                wait(|| t.test()).unwrap();
                t
            })
            .collect();
        for (i, src) in srcs.iter().enumerate() {
            let posted = Instant::now();
            let r = recv.irecv(&[(buf(&mut dst), 5)]).unwrap().unwrap();
            assert_eq!(
                wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
                vec![LEN as u64]
            );
            slowest = slowest.max(posted.elapsed());
            drop(r);
            assert!(dst == *src, "message {i} of round {round}");
        }
        drop(sends);
    }
    assert!(
        slowest < Duration::from_millis(super::recv::CALLER_ABSENT_MS * 3 / 4),
        "a receive took {slowest:?}: its waiting header was left to a stream thread"
    );
}

/// Settings for the progress tests: everything inline on the caller's
/// thread, small socket buffers (so a message does not fit in the kernel),
/// and heartbeats so rare that a stream thread's liveness wake-up cannot be
/// what moves the bytes within the test's bound.
fn inline_everything(streams: usize) -> TcpSettings {
    TcpSettings {
        inline_bytes: 1 << 30,
        socket_buffer: 128 << 10,
        peer_timeout: Duration::from_secs(600),
        ..settings(streams)
    }
}

/// A message the caller's `isend` could only partly write (the socket
/// filled) must go on leaving while the caller tests something else: a ring
/// waits on its receive before it tests its send, and so does its
/// neighbour. Before the fix the rest waited for a stream thread's
/// heartbeat wake-up (a quarter of the peer timeout): 16 MiB rings crawled
/// at 0.15 Gbit/s.
#[test]
fn inline_send_progresses_while_the_caller_tests_only_its_receive() {
    for streams in [1, 2] {
        let (send, recv) = pair(&inline_everything(streams));
        let len = 8 << 20;
        let mut src = pattern(len, 5);
        let mut dst = vec![0u8; len];
        let r = recv.irecv(&[(buf(&mut dst), 1)]).unwrap().unwrap();
        let t = send.isend(buf(&mut src), 1).unwrap().unwrap();
        assert_eq!(
            wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
            vec![len as u64],
            "{streams} streams"
        );
        assert_eq!(wait(|| t.test()).unwrap(), len as u64);
        assert!(dst == src, "{streams} streams: payload differs");
    }
}

/// The mirror image: both ends of an exchange test only their sends, which
/// need the other end to read. Received bytes must not wait for a caller
/// that tests no receive (before the fix: until a heartbeat wake-up).
#[test]
fn inline_receive_progresses_while_the_caller_tests_only_its_send() {
    let s = inline_everything(2);
    let (a_to_b, b_from_a) = pair(&s);
    let (b_to_a, a_from_b) = pair(&s);
    let len = 8 << 20;
    let (mut src_a, mut src_b) = (pattern(len, 1), pattern(len, 2));
    let (mut dst_a, mut dst_b) = (vec![0u8; len], vec![0u8; len]);
    let ra = a_from_b.irecv(&[(buf(&mut dst_a), 4)]).unwrap().unwrap();
    let rb = b_from_a.irecv(&[(buf(&mut dst_b), 4)]).unwrap().unwrap();
    let ta = a_to_b.isend(buf(&mut src_a), 4).unwrap().unwrap();
    let tb = b_to_a.isend(buf(&mut src_b), 4).unwrap().unwrap();
    let (mut a_done, mut b_done) = (false, false);
    wait(|| {
        a_done = a_done || ta.test()?.is_some();
        b_done = b_done || tb.test()?.is_some();
        Ok((a_done && b_done).then_some(()))
    })
    .unwrap();
    for (r, dst, src) in [(&ra, &dst_a, &src_b), (&rb, &dst_b, &src_a)] {
        assert_eq!(
            wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
            vec![len as u64]
        );
        assert!(dst == src, "payload differs");
    }
}

#[test]
fn the_timeline_counts_each_completed_request_once() {
    let (send, recv) = pair(&settings(2));
    assert_eq!((send.timeline(), recv.timeline()), (None, None));
    for i in 0..3u8 {
        let mut src = pattern(1000, i);
        let mut dst = vec![0u8; 1000];
        let r = recv.irecv(&[(buf(&mut dst), 1)]).unwrap().unwrap();
        let t = send.isend(buf(&mut src), 1).unwrap().unwrap();
        wait(|| t.test()).unwrap();
        wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap();
        // A test after completion is not a second message.
        assert!(t.test().unwrap().is_some() && r.test().unwrap().is_some());
    }
    let sent = send.timeline().unwrap();
    let received = recv.timeline().unwrap();
    assert!(
        sent.starts_with("3 sends of 1000 B on average; mean us from post: complete"),
        "{sent}"
    );
    // Two streams; the 3,000 bytes were written on them, in any split.
    let per_stream = sent
        .split_once("; per stream: bytes ")
        .and_then(|(_, rest)| rest.split_once(','))
        .map(|(bytes, _)| {
            bytes
                .split(" / ")
                .map(|b| b.parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        })
        .expect("per-stream bytes in the closing line");
    assert_eq!(
        (per_stream.len(), per_stream.iter().sum::<u64>()),
        (2, 3000),
        "{sent}"
    );
    assert!(
        received
            .starts_with("3 receives of 1000 B on average; mean us from post: first frame matched"),
        "{received}"
    );
}

/// Peers whose airamp would decide collectives differently (their agreement
/// digests differ) are refused on both ends, promptly: the connect fails
/// once its hellos are out, the accept on the first of them, both with the
/// same typed error. A stranger (wrong token) is still only dropped, and
/// equal digests connect as before.
#[test]
fn peers_that_would_decide_differently_are_refused_on_both_ends() {
    use std::io::Write;
    let listener_side = TcpSettings {
        agreement: 1,
        ..settings(2)
    };
    let connector_side = TcpSettings {
        agreement: 2,
        ..settings(2)
    };
    let (mut listener, handle) = Listener::bind(&lo(), &listener_side).unwrap();

    // A stranger with another digest: dropped, never an error.
    let mut stranger = std::net::TcpStream::connect(handle.addr).unwrap();
    let hello = crate::transport::wire::Hello {
        token: [0x55; 16],
        connection: 3,
        stream: 0,
        streams: 2,
        heartbeat_ms: handle.heartbeat_ms,
        agreement: 99,
    };
    stranger.write_all(&hello.encode()).unwrap();
    let quiet_until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < quiet_until {
        assert!(
            matches!(listener.accept(), Ok(None)),
            "a stranger failed the accept"
        );
    }

    let mut connecting = Connecting::start(&handle, &connector_side).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut connect_err, mut accept_err) = (None, None);
    while connect_err.is_none() || accept_err.is_none() {
        assert!(
            Instant::now() < deadline,
            "a side neither connected nor failed"
        );
        if connect_err.is_none() {
            match connecting.progress() {
                Ok(Some(_)) => panic!("connected with a different digest"),
                Ok(None) => {}
                Err(e) => connect_err = Some(e),
            }
        }
        if accept_err.is_none() {
            match listener.accept() {
                Ok(Some(_)) => panic!("accepted a different digest"),
                Ok(None) => {}
                Err(e) => accept_err = Some(e),
            }
        }
    }
    for (side, err, ours, theirs) in [
        ("connect", connect_err.unwrap(), 2, 1),
        ("accept", accept_err.unwrap(), 1, 2),
    ] {
        assert_eq!(err.class(), ErrorClass::InvalidUsage, "{side}: {err}");
        let NetError::Peer { cause, .. } = &err else {
            panic!("{side}: {err}")
        };
        assert_eq!(*cause, PeerFailure::Disagrees { ours, theirs }, "{side}");
        assert!(
            err.to_string().contains("tuner.single_channel_bytes"),
            "{err}"
        );
    }

    let agreed = TcpSettings {
        agreement: 7,
        ..settings(2)
    };
    let (send, recv) = pair(&agreed);
    drop((send, recv));
}

/// Polls `done` until it holds; panics after `bound`.
fn wait_until(bound: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {bound:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// One message of each size through the pollers and the stream threads.
fn exchange_every_size(send: &SendComm, recv: &RecvComm, mode: PollerMode) {
    for (i, len) in [0usize, 8, 4096, 65_536, 65_537, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let mut src = pattern(len, i as u8);
        let mut dst = vec![0u8; len + 3];
        let r = recv.irecv(&[(buf(&mut dst), 2)]).unwrap().unwrap();
        let t = send.isend(buf(&mut src), 2).unwrap().unwrap();
        assert_eq!(wait(|| t.test()).unwrap(), len as u64);
        assert_eq!(
            wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
            vec![len as u64]
        );
        assert_eq!(&dst[..len], &src[..], "{len} bytes, pollers {mode:?}");
    }
}

/// `transport.poller`: the poller threads move small messages for a caller
/// that only waits, sleep once nothing small flows, are not woken by bulk
/// traffic, and wake again for small messages. The sleeping and waking are
/// checked on the `one` poller, which nothing else in this process uses
/// (`auto` may pick `two` on a large host).
#[test]
fn pollers_move_small_messages_and_sleep_when_none_flow() {
    let two = TcpSettings {
        poller: PollerMode::Two,
        ..settings(2)
    };
    let (send, recv) = pair(&two);
    exchange_every_size(&send, &recv, PollerMode::Two);
    drop((send, recv));

    let one = TcpSettings {
        poller: PollerMode::One,
        ..settings(2)
    };
    let poller = poller::Poller::for_sends(PollerMode::One).expect("a poller");
    let (send, recv) = pair(&one);
    exchange_every_size(&send, &recv, PollerMode::One);
    // Nobody tests: the poller moves them. Without it, a receive would
    // wait for a stream thread's look at the absent caller
    // (CALLER_ABSENT_MS). The send's nudge wakes the poller (the same one
    // in mode `one`) should it have fallen asleep meanwhile.
    const SMALL: usize = 2 * poller::TINY_BYTES as usize;
    let mut slowest = Duration::ZERO;
    for i in 0..200u8 {
        let mut src = pattern(SMALL, i);
        let mut dst = vec![0u8; SMALL];
        let posted = Instant::now();
        let r = recv.irecv(&[(buf(&mut dst), 3)]).unwrap().unwrap();
        let t = send.isend(buf(&mut src), 3).unwrap().unwrap();
        wait_until(
            Duration::from_secs(20),
            "an untested exchange completes",
            || r.completed() && t.completed(),
        );
        slowest = slowest.max(posted.elapsed());
        drop((r, t));
        assert!(dst == src, "message {i}");
    }
    assert!(
        slowest < Duration::from_millis(super::recv::CALLER_ABSENT_MS * 3 / 4),
        "an untested exchange took {slowest:?}: the poller did not move it"
    );
    // Nothing small flows: it sleeps.
    wait_until(Duration::from_secs(10), "the poller sleeps", || {
        !poller.covering()
    });
    let asleep = poller.wakeups();
    // Bulk and tiny messages alone do not wake it.
    for (i, len) in [1 << 20, 8, 1 << 20, poller::TINY_BYTES as usize]
        .into_iter()
        .enumerate()
    {
        let i = i as u8;
        let mut src = pattern(len, i);
        let mut dst = vec![0u8; len];
        let r = recv.irecv(&[(buf(&mut dst), 4)]).unwrap().unwrap();
        let t = send.isend(buf(&mut src), 4).unwrap().unwrap();
        wait(|| t.test()).unwrap();
        wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap();
        assert!(dst == src, "message {i} of {len} bytes");
    }
    assert_eq!(
        poller.wakeups(),
        asleep,
        "bulk or tiny traffic woke the poller"
    );
    // A small message does.
    let mut src = pattern(SMALL, 7);
    let mut dst = vec![0u8; SMALL];
    let r = recv.irecv(&[(buf(&mut dst), 5)]).unwrap().unwrap();
    let t = send.isend(buf(&mut src), 5).unwrap().unwrap();
    wait(|| t.test()).unwrap();
    wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap();
    assert_eq!(dst, src);
    wait_until(Duration::from_secs(10), "a small message wakes it", || {
        poller.wakeups() > asleep
    });
}
