//! Loopback tests of the TCP driver through its Rust API.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;
use crate::error::{ErrorClass, NetError};
use crate::sys::RawBuf;
use crate::transport::iface::NetDevice;

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
        peer_timeout: Duration::from_secs(2),
        ..TcpSettings::default()
    }
}

fn pair(s: &TcpSettings) -> (SendComm, RecvComm) {
    let (mut listener, handle) = Listener::bind(&lo(), s).unwrap();
    let mut connecting = Connecting::start(&handle, s).unwrap();
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

#[test]
fn messages_of_every_shape_arrive_intact() {
    for streams in [1, 4] {
        let s = settings(streams);
        let (send, recv) = pair(&s);
        for (i, len) in [0usize, 1, 7, 4096, 65_537, 1 << 20, 3_000_001]
            .into_iter()
            .enumerate()
        {
            let mut src = pattern(len, i as u8);
            let mut dst = vec![0u8; len + 100];
            let r = recv.irecv(vec![(buf(&mut dst), 9)]).unwrap().unwrap();
            let t = send.isend(buf(&mut src), 9).unwrap().unwrap();
            assert_eq!(wait(|| t.test()).unwrap(), len as u64);
            assert_eq!(
                wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap(),
                vec![len as u64]
            );
            assert_eq!(
                &dst[..len],
                &src[..],
                "payload of {len} bytes over {streams} streams"
            );
        }
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
        .map(|d| recv.irecv(vec![(buf(d), 1)]).unwrap().unwrap())
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
    assert!(recv.irecv(vec![(buf(&mut extra), 1)]).unwrap().is_none());
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
        .irecv(vec![(buf(&mut da), 10), (buf(&mut db), 20)])
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
    let r = recv.irecv(vec![(buf(&mut dst[..50]), 0)]).unwrap().unwrap();
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
    let r = recv.irecv(vec![(buf(&mut dst), 0)]).unwrap().unwrap();
    drop(send);
    let err = wait(|| r.test().map(|o| o.map(<[u64]>::to_vec))).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Remote, "{err}");
}
