//! Joining a collective group, without I/O: the hello every member sends
//! on each of its links, and the parameters the group agrees on.
//!
//! Every member receives a hello from every other member and knows its own,
//! so each computes [`agree`] over the same `n` hellos and all reach the
//! same answer, with no extra round trip. A parameter that could make
//! members disagree about the bytes on the wire (the compressed wire
//! format) is agreed
//! this way, never taken from the local config alone.

use super::steps::Lane;
use crate::codec::WireFormat;

pub const MEMBER_HELLO_BYTES: usize = 32;
const MAGIC: &[u8; 8] = b"AIRCOLL1";
/// Bumped whenever the collective protocol changes incompatibly (2: the
/// hello carries flags, calibration rounds follow READY; 3: the streamed
/// probe agrees on its timed rounds' size after a warm-up round, one more
/// allgather, so members of different builds would issue different calls).
pub const PROTOCOL_VERSION: u32 = 3;
/// Hello flag: this member asks for the calibration rounds.
const FLAG_CALIBRATE: u32 = 1;
/// Sent on every contribution link once a member holds all its links.
pub const READY_BYTES: usize = 8;
pub const READY: &[u8; READY_BYTES] = b"AIRREADY";

/// What one member says about itself on each link it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberHello {
    pub rank: u32,
    pub nranks: u32,
    pub lane: Lane,
    /// The compressed wire format this member would use, `None` when it
    /// has compression off.
    pub fp8: Option<WireFormat>,
    /// This member asks for calibration in `connect` (they run only if
    /// every member asks).
    pub calibrate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinError {
    BadMagic,
    Version(u32),
    /// The peer counts a different number of members.
    GroupSize {
        ours: u32,
        theirs: u32,
    },
    BadRank(u32),
    BadLane(u32),
    BadFormat(u32),
    BadFlags(u32),
    /// Two links claim the same (member, lane).
    Duplicate {
        rank: u32,
        lane: Lane,
    },
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::BadMagic => write!(f, "not an airamp collective hello"),
            JoinError::Version(v) => write!(
                f,
                "collective protocol version {v}, this build speaks {PROTOCOL_VERSION}"
            ),
            JoinError::GroupSize { ours, theirs } => {
                write!(f, "peer counts {theirs} members, we count {ours}")
            }
            JoinError::BadRank(r) => write!(f, "member index {r} out of range"),
            JoinError::BadLane(l) => write!(f, "unknown link kind {l}"),
            JoinError::BadFormat(c) => write!(f, "unknown wire format code {c}"),
            JoinError::BadFlags(x) => write!(f, "unknown hello flags {x:#x}"),
            JoinError::Duplicate { rank, lane } => {
                write!(f, "member {rank} opened two {lane:?} links")
            }
        }
    }
}

fn format_code(f: Option<WireFormat>) -> u32 {
    match f {
        None => 0,
        Some(WireFormat::E4M3) => 1,
        Some(WireFormat::E5M2) => 2,
        Some(WireFormat::Int8) => 3,
    }
}

impl MemberHello {
    pub fn encode(&self) -> [u8; MEMBER_HELLO_BYTES] {
        let mut b = [0u8; MEMBER_HELLO_BYTES];
        b[..8].copy_from_slice(MAGIC);
        let words = [
            PROTOCOL_VERSION,
            self.rank,
            self.nranks,
            self.lane as u32,
            format_code(self.fp8),
            if self.calibrate { FLAG_CALIBRATE } else { 0 },
        ];
        for (i, w) in words.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Decodes and checks a hello from a peer of a group of `nranks`
    /// in which we are `rank`.
    pub fn decode(b: &[u8], nranks: u32, rank: u32) -> Result<MemberHello, JoinError> {
        if b.len() != MEMBER_HELLO_BYTES || &b[..8] != MAGIC {
            return Err(JoinError::BadMagic);
        }
        let word = |i: usize| u32::from_le_bytes(b[8 + 4 * i..12 + 4 * i].try_into().unwrap());
        if word(0) != PROTOCOL_VERSION {
            return Err(JoinError::Version(word(0)));
        }
        let (from, theirs) = (word(1), word(2));
        if theirs != nranks {
            return Err(JoinError::GroupSize {
                ours: nranks,
                theirs,
            });
        }
        if from >= nranks || from == rank {
            return Err(JoinError::BadRank(from));
        }
        let lane = match word(3) {
            0 => Lane::Contrib,
            1 => Lane::Result,
            l => return Err(JoinError::BadLane(l)),
        };
        let fp8 = match word(4) {
            0 => None,
            1 => Some(WireFormat::E4M3),
            2 => Some(WireFormat::E5M2),
            3 => Some(WireFormat::Int8),
            c => return Err(JoinError::BadFormat(c)),
        };
        let flags = word(5);
        if flags & !FLAG_CALIBRATE != 0 {
            return Err(JoinError::BadFlags(flags));
        }
        Ok(MemberHello {
            rank: from,
            nranks,
            lane,
            fp8,
            calibrate: flags & FLAG_CALIBRATE != 0,
        })
    }
}

/// The wire format the whole group uses: a format only when every member
/// enabled compression with that same format; otherwise the exact path for
/// all.
pub fn agree(fp8_of_each_member: &[Option<WireFormat>]) -> Option<WireFormat> {
    let first = *fp8_of_each_member.first()?;
    fp8_of_each_member
        .iter()
        .all(|f| *f == first)
        .then_some(first)
        .flatten()
}

/// Whether the calibration rounds run: only when every member asked (a
/// group of one has no link to measure).
pub fn agree_calibration(asked_by_each_member: &[bool]) -> bool {
    asked_by_each_member.len() > 1 && asked_by_each_member.iter().all(|&a| a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_round_trips_and_is_checked() {
        let h = MemberHello {
            rank: 2,
            nranks: 4,
            lane: Lane::Result,
            fp8: Some(WireFormat::E5M2),
            calibrate: true,
        };
        let b = h.encode();
        assert_eq!(MemberHello::decode(&b, 4, 0), Ok(h));
        assert_eq!(
            MemberHello::decode(&b, 5, 0),
            Err(JoinError::GroupSize { ours: 5, theirs: 4 })
        );
        assert_eq!(MemberHello::decode(&b, 4, 2), Err(JoinError::BadRank(2)));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(MemberHello::decode(&bad, 4, 0), Err(JoinError::BadMagic));
        let mut bad = b;
        bad[20] = 7;
        assert_eq!(MemberHello::decode(&bad, 4, 0), Err(JoinError::BadLane(7)));
        let mut bad = b;
        bad[28] = 3;
        assert_eq!(MemberHello::decode(&bad, 4, 0), Err(JoinError::BadFlags(3)));
        let quiet = MemberHello {
            calibrate: false,
            ..h
        };
        assert_eq!(MemberHello::decode(&quiet.encode(), 4, 0), Ok(quiet));
        assert!(MemberHello::decode(&b[..31], 4, 0).is_err());
        let mut bad = b;
        bad[24] = 4;
        assert_eq!(
            MemberHello::decode(&bad, 4, 0),
            Err(JoinError::BadFormat(4))
        );
    }

    #[test]
    fn every_format_round_trips() {
        for fp8 in WireFormat::ALL.map(Some).into_iter().chain([None]) {
            let h = MemberHello {
                rank: 1,
                nranks: 2,
                lane: Lane::Contrib,
                fp8,
                calibrate: false,
            };
            assert_eq!(MemberHello::decode(&h.encode(), 2, 0), Ok(h));
        }
    }

    #[test]
    fn agreement_needs_everyone() {
        let e4 = Some(WireFormat::E4M3);
        assert_eq!(agree(&[e4, e4, e4]), e4);
        assert_eq!(agree(&[e4, None, e4]), None);
        assert_eq!(agree(&[e4, Some(WireFormat::E5M2)]), None);
        let i8 = Some(WireFormat::Int8);
        assert_eq!(agree(&[i8, i8]), i8);
        assert_eq!(agree(&[i8, e4, i8]), None);
        assert_eq!(agree(&[None, None]), None);
        assert_eq!(agree(&[]), None);
    }

    #[test]
    fn calibration_needs_everyone_and_a_peer() {
        assert!(agree_calibration(&[true, true, true]));
        assert!(!agree_calibration(&[true, false, true]));
        assert!(!agree_calibration(&[true]));
        assert!(!agree_calibration(&[]));
    }

    proptest! {
        /// Every member sees the same multiset of hellos in its own order
        /// (its own first, then peers in arrival order): all agree.
        #[test]
        fn agreement_ignores_order(codes in prop::collection::vec(0u8..4, 1..16), rot in 0usize..16) {
            let of = |c: u8| c.checked_sub(1).map(|i| WireFormat::ALL[usize::from(i)]);
            let v: Vec<_> = codes.iter().map(|&c| of(c)).collect();
            let mut w = v.clone();
            w.rotate_left(rot % v.len());
            prop_assert_eq!(agree(&v), agree(&w));
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..40), n in 1u32..300, r in 0u32..300) {
            let _ = MemberHello::decode(&bytes, n, r);
        }
    }
}
