//! Byte formats exchanged with peers: the listen handle, the per-stream hello
//! and the data frame header. Pure encode/decode with full validation; every
//! value read from the network is checked here before anything uses it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// NCCL reserves this many bytes for a listen handle.
pub const HANDLE_BYTES: usize = 128;
/// The last 8 bytes of the handle are ours to keep connect() state in (never sent).
pub const HANDLE_STAGE_OFFSET: usize = HANDLE_BYTES - 8;
pub const TOKEN_BYTES: usize = 16;
pub const HELLO_BYTES: usize = 48;
pub const FRAME_HEADER_BYTES: usize = 32;
/// Most streams one connection may use.
pub const MAX_STREAMS: usize = 16;
/// NCCL reports completed sizes as `int`, so no message may exceed this.
pub const MAX_MESSAGE_BYTES: u64 = i32::MAX as u64;
/// Largest chunk a peer may announce in one frame.
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;

const HANDLE_MAGIC: [u8; 4] = *b"AMP1";
const HELLO_MAGIC: [u8; 4] = *b"AMPH";
/// 2: heartbeats (frames forward, bytes back) and the heartbeat interval in
/// the handle and the hello. 3: the agreement digest in the handle and the
/// hello.
const PROTOCOL_VERSION: u8 = 3;

/// Shortest and longest heartbeat interval a peer may ask for: a quarter of
/// the peer timeout's range (`transport.peer_timeout_ms`, 100 ms..=1 h).
pub const MIN_HEARTBEAT_MS: u32 = 25;
pub const MAX_HEARTBEAT_MS: u32 = 900_000;

/// `seq` of a heartbeat frame; no message ever gets this number.
const HEARTBEAT_SEQ: u64 = u64::MAX;

/// A frame with no message: the sender's heartbeat on an otherwise quiet
/// stream. `seq` is all ones, every other byte zero.
pub const HEARTBEAT_FRAME: [u8; FRAME_HEADER_BYTES] = {
    let mut b = [0u8; FRAME_HEADER_BYTES];
    let mut i = 0;
    while i < 8 {
        b[i] = 0xFF;
        i += 1;
    }
    b
};

/// The receiving side's heartbeat: one byte, on the otherwise unused
/// direction of each stream (receiver to sender). Nothing else ever flows
/// that way.
pub const REVERSE_HEARTBEAT: u8 = 0xA7;

/// A per-listen secret: a connection that cannot present it is dropped
/// before any buffer of ours is touched.
pub type Token = [u8; TOKEN_BYTES];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenHandle {
    pub addr: SocketAddr,
    pub streams: u8,
    pub token: Token,
    /// How often the listener wants to hear from a connected peer.
    pub heartbeat_ms: u32,
    /// The listener's [`TcpSettings::agreement`](crate::transport::tcp::TcpSettings::agreement).
    pub agreement: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    BadMagic,
    BadVersion(u8),
    BadFamily(u8),
    BadStreams(u16),
    BadStreamIndex { index: u16, streams: u16 },
    BadHeartbeat(u32),
    BadHeartbeatFrame,
    BadLength { offset: u64, len: u32, total: u64 },
    TooLarge(u64),
    EmptyChunk,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadMagic => write!(f, "bad magic"),
            WireError::BadVersion(v) => write!(f, "unsupported protocol version {v}"),
            WireError::BadFamily(v) => write!(f, "unknown address family {v}"),
            WireError::BadStreams(n) => {
                write!(f, "stream count {n} out of range 1..={MAX_STREAMS}")
            }
            WireError::BadStreamIndex { index, streams } => {
                write!(f, "stream index {index} out of range for {streams} streams")
            }
            WireError::BadHeartbeat(ms) => write!(
                f,
                "heartbeat interval {ms} ms out of range {MIN_HEARTBEAT_MS}..={MAX_HEARTBEAT_MS}"
            ),
            WireError::BadHeartbeatFrame => write!(f, "malformed heartbeat frame"),
            WireError::BadLength { offset, len, total } => {
                write!(
                    f,
                    "chunk [{offset}, +{len}) outside message of {total} bytes"
                )
            }
            WireError::TooLarge(n) => write!(f, "message of {n} bytes exceeds {MAX_MESSAGE_BYTES}"),
            WireError::EmptyChunk => write!(f, "empty chunk of a non-empty message"),
        }
    }
}

impl ListenHandle {
    pub fn encode(&self, out: &mut [u8; HANDLE_BYTES]) {
        out.fill(0);
        out[0..4].copy_from_slice(&HANDLE_MAGIC);
        out[4] = PROTOCOL_VERSION;
        out[6] = self.streams;
        let (ip, scope) = match self.addr {
            SocketAddr::V4(a) => {
                out[5] = 4;
                (a.ip().to_ipv6_mapped().octets(), 0)
            }
            SocketAddr::V6(a) => {
                out[5] = 6;
                (a.ip().octets(), a.scope_id())
            }
        };
        out[8..24].copy_from_slice(&ip);
        out[24..26].copy_from_slice(&self.addr.port().to_be_bytes());
        out[28..32].copy_from_slice(&scope.to_le_bytes());
        out[32..48].copy_from_slice(&self.token);
        out[48..52].copy_from_slice(&self.heartbeat_ms.to_le_bytes());
        out[56..64].copy_from_slice(&self.agreement.to_le_bytes());
    }

    pub fn decode(b: &[u8; HANDLE_BYTES]) -> Result<Self, WireError> {
        if b[0..4] != HANDLE_MAGIC {
            return Err(WireError::BadMagic);
        }
        if b[4] != PROTOCOL_VERSION {
            return Err(WireError::BadVersion(b[4]));
        }
        let streams = b[6];
        if streams == 0 || streams as usize > MAX_STREAMS {
            return Err(WireError::BadStreams(streams.into()));
        }
        let octets: [u8; 16] = b[8..24].try_into().expect("16 bytes");
        let port = u16::from_be_bytes([b[24], b[25]]);
        let scope = u32::from_le_bytes(b[28..32].try_into().expect("4 bytes"));
        let addr = match b[5] {
            4 => {
                let v6 = Ipv6Addr::from(octets);
                let v4 = v6.to_ipv4_mapped().ok_or(WireError::BadFamily(4))?;
                SocketAddr::new(IpAddr::V4(v4), port)
            }
            6 => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, scope)),
            f => return Err(WireError::BadFamily(f)),
        };
        Ok(ListenHandle {
            addr,
            streams,
            token: b[32..48].try_into().expect("16 bytes"),
            heartbeat_ms: heartbeat_ms(&b[48..52])?,
            agreement: u64::from_le_bytes(b[56..64].try_into().expect("8 bytes")),
        })
    }
}

/// First bytes on every stream: who we are and which connection we belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub token: Token,
    /// Random per connect(): groups the streams of one connection.
    pub connection: u64,
    pub stream: u16,
    pub streams: u16,
    /// How often the connecting side wants to hear from the listener.
    pub heartbeat_ms: u32,
    /// The connecting side's [`TcpSettings::agreement`](crate::transport::tcp::TcpSettings::agreement).
    pub agreement: u64,
}

/// Reads and range-checks a heartbeat interval (u32 LE).
fn heartbeat_ms(b: &[u8]) -> Result<u32, WireError> {
    let ms = u32::from_le_bytes(b.try_into().expect("4 bytes"));
    if (MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(WireError::BadHeartbeat(ms))
    }
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..4].copy_from_slice(&HELLO_MAGIC);
        b[4..6].copy_from_slice(&u16::from(PROTOCOL_VERSION).to_le_bytes());
        b[6..8].copy_from_slice(&self.stream.to_le_bytes());
        b[8..10].copy_from_slice(&self.streams.to_le_bytes());
        b[12..28].copy_from_slice(&self.token);
        b[28..36].copy_from_slice(&self.connection.to_le_bytes());
        b[36..40].copy_from_slice(&self.heartbeat_ms.to_le_bytes());
        b[40..48].copy_from_slice(&self.agreement.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_BYTES]) -> Result<Self, WireError> {
        if b[0..4] != HELLO_MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != u16::from(PROTOCOL_VERSION) {
            return Err(WireError::BadVersion(version.min(255) as u8));
        }
        let stream = u16::from_le_bytes([b[6], b[7]]);
        let streams = u16::from_le_bytes([b[8], b[9]]);
        if streams == 0 || streams as usize > MAX_STREAMS {
            return Err(WireError::BadStreams(streams));
        }
        if stream >= streams {
            return Err(WireError::BadStreamIndex {
                index: stream,
                streams,
            });
        }
        Ok(Hello {
            token: b[12..28].try_into().expect("16 bytes"),
            connection: u64::from_le_bytes(b[28..36].try_into().expect("8 bytes")),
            stream,
            streams,
            heartbeat_ms: heartbeat_ms(&b[36..40])?,
            agreement: u64::from_le_bytes(b[40..48].try_into().expect("8 bytes")),
        })
    }
}

/// Header in front of every chunk. Each chunk carries its message's
/// sequence number, tag and total size, so chunks of one message may travel
/// on any stream and arrive in any order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub seq: u64,
    pub total: u64,
    pub offset: u64,
    pub len: u32,
    pub tag: i32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut b = [0u8; FRAME_HEADER_BYTES];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.total.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..32].copy_from_slice(&self.tag.to_le_bytes());
        b
    }

    /// Decodes and checks everything that can be checked without state.
    pub fn decode(b: &[u8; FRAME_HEADER_BYTES]) -> Result<Self, WireError> {
        let h = FrameHeader {
            seq: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            total: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            offset: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
            tag: i32::from_le_bytes(b[28..32].try_into().expect("4 bytes")),
        };
        if h.total > MAX_MESSAGE_BYTES {
            return Err(WireError::TooLarge(h.total));
        }
        let bad = WireError::BadLength {
            offset: h.offset,
            len: h.len,
            total: h.total,
        };
        if h.len > MAX_CHUNK_BYTES {
            return Err(bad);
        }
        match h.offset.checked_add(u64::from(h.len)) {
            Some(end) if end <= h.total => {}
            _ => return Err(bad),
        }
        if h.len == 0 && h.total != 0 {
            return Err(WireError::EmptyChunk);
        }
        Ok(h)
    }
}

/// What one 32-byte frame header on a data stream announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A chunk of a message; `len` payload bytes follow.
    Data(FrameHeader),
    /// The sender is alive; nothing follows.
    Heartbeat,
}

impl Frame {
    pub fn decode(b: &[u8; FRAME_HEADER_BYTES]) -> Result<Self, WireError> {
        if b[0..8] == HEARTBEAT_SEQ.to_le_bytes() {
            return if *b == HEARTBEAT_FRAME {
                Ok(Frame::Heartbeat)
            } else {
                Err(WireError::BadHeartbeatFrame)
            };
        }
        FrameHeader::decode(b).map(Frame::Data)
    }
}

/// Any IPv4 address as a socket address on `port`, for tests and defaults.
pub fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn handle_round_trips_v4_and_v6() {
        for addr in [
            v4([10, 1, 2, 3], 4242),
            "[fe80::1%3]:9"
                .parse::<SocketAddrV6>()
                .map(SocketAddr::V6)
                .unwrap(),
            "[::1]:65535".parse().unwrap(),
        ] {
            let h = ListenHandle {
                addr,
                streams: 4,
                token: [7; 16],
                heartbeat_ms: 7500,
                agreement: 0x0123_4567_89ab_cdef,
            };
            let mut b = [0xAA; HANDLE_BYTES];
            h.encode(&mut b);
            assert_eq!(b[HANDLE_STAGE_OFFSET..], [0; 8], "stage area starts zeroed");
            assert_eq!(ListenHandle::decode(&b).unwrap(), h);
        }
    }

    #[test]
    fn handle_rejects_garbage() {
        let h = ListenHandle {
            addr: v4([127, 0, 0, 1], 1),
            streams: 2,
            token: [1; 16],
            heartbeat_ms: MIN_HEARTBEAT_MS,
            agreement: u64::MAX,
        };
        let mut b = [0; HANDLE_BYTES];
        h.encode(&mut b);
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(ListenHandle::decode(&bad), Err(WireError::BadMagic));
        let mut bad = b;
        bad[6] = 17;
        assert_eq!(ListenHandle::decode(&bad), Err(WireError::BadStreams(17)));
        let mut bad = b;
        bad[5] = 9;
        assert_eq!(ListenHandle::decode(&bad), Err(WireError::BadFamily(9)));
        let mut bad = b;
        bad[48..52].copy_from_slice(&(MIN_HEARTBEAT_MS - 1).to_le_bytes());
        assert_eq!(
            ListenHandle::decode(&bad),
            Err(WireError::BadHeartbeat(MIN_HEARTBEAT_MS - 1))
        );
        let mut old = b;
        old[4] = 1;
        assert_eq!(ListenHandle::decode(&old), Err(WireError::BadVersion(1)));
        // Version 2 had no agreement digest: refused, not read as zero.
        old[4] = 2;
        assert_eq!(ListenHandle::decode(&old), Err(WireError::BadVersion(2)));
    }

    #[test]
    fn hello_checks_stream_index() {
        let h = Hello {
            token: [3; 16],
            connection: 99,
            stream: 3,
            streams: 4,
            heartbeat_ms: MAX_HEARTBEAT_MS,
            agreement: 0xfeed_f00d,
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        let mut v2 = h.encode();
        v2[4] = 2;
        assert_eq!(Hello::decode(&v2), Err(WireError::BadVersion(2)));
        let fast = Hello {
            heartbeat_ms: MAX_HEARTBEAT_MS + 1,
            ..h
        };
        assert_eq!(
            Hello::decode(&fast.encode()),
            Err(WireError::BadHeartbeat(MAX_HEARTBEAT_MS + 1))
        );
        let bad = Hello { stream: 4, ..h };
        assert_eq!(
            Hello::decode(&bad.encode()),
            Err(WireError::BadStreamIndex {
                index: 4,
                streams: 4
            })
        );
    }

    #[test]
    fn frame_bounds_are_enforced() {
        let ok = FrameHeader {
            seq: 1,
            total: 100,
            offset: 60,
            len: 40,
            tag: -1,
        };
        assert_eq!(FrameHeader::decode(&ok.encode()), Ok(ok));
        let past_end = FrameHeader { len: 41, ..ok };
        assert!(FrameHeader::decode(&past_end.encode()).is_err());
        let overflow = FrameHeader {
            offset: u64::MAX,
            len: 2,
            total: 10,
            ..ok
        };
        assert!(FrameHeader::decode(&overflow.encode()).is_err());
        let huge = FrameHeader {
            total: MAX_MESSAGE_BYTES + 1,
            offset: 0,
            len: 1,
            ..ok
        };
        assert_eq!(
            FrameHeader::decode(&huge.encode()),
            Err(WireError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
        let empty = FrameHeader {
            total: 5,
            offset: 0,
            len: 0,
            ..ok
        };
        assert_eq!(
            FrameHeader::decode(&empty.encode()),
            Err(WireError::EmptyChunk)
        );
        let zero_msg = FrameHeader {
            total: 0,
            offset: 0,
            len: 0,
            ..ok
        };
        assert!(FrameHeader::decode(&zero_msg.encode()).is_ok());
    }

    #[test]
    fn heartbeat_frames_are_told_from_data() {
        assert_eq!(Frame::decode(&HEARTBEAT_FRAME), Ok(Frame::Heartbeat));
        let mut bent = HEARTBEAT_FRAME;
        bent[20] = 1;
        assert_eq!(Frame::decode(&bent), Err(WireError::BadHeartbeatFrame));
        let data = FrameHeader {
            seq: HEARTBEAT_SEQ - 1,
            total: 4,
            offset: 0,
            len: 4,
            tag: 0,
        };
        assert_eq!(Frame::decode(&data.encode()), Ok(Frame::Data(data)));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), HANDLE_BYTES)) {
            let handle: [u8; HANDLE_BYTES] = bytes[..].try_into().unwrap();
            let _ = ListenHandle::decode(&handle);
            let hello: [u8; HELLO_BYTES] = bytes[..HELLO_BYTES].try_into().unwrap();
            let _ = Hello::decode(&hello);
            let frame: [u8; FRAME_HEADER_BYTES] = bytes[..FRAME_HEADER_BYTES].try_into().unwrap();
            if let Ok(h) = FrameHeader::decode(&frame) {
                prop_assert!(h.offset + u64::from(h.len) <= h.total);
                prop_assert!(h.total <= MAX_MESSAGE_BYTES);
            }
            match Frame::decode(&frame) {
                Ok(Frame::Heartbeat) => prop_assert_eq!(frame, HEARTBEAT_FRAME),
                Ok(Frame::Data(h)) => prop_assert_eq!(Ok(h), FrameHeader::decode(&frame)),
                Err(_) => {}
            }
        }
    }
}
