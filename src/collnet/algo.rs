//! One allreduce segment as a sans-IO state machine per member.
//!
//! Member `r` of `n` owns shard `r` ([`shard_range`]). The protocol is two
//! message kinds ([`Msg`]):
//!
//! 1. **Reduce-scatter.** At start every member sends shard `s` of its input
//!    to owner `s` as a [`Msg::Contribution`] (its own shard goes to itself
//!    without a message). On the FP8 path the payload is the block-scaled
//!    encoding of that shard, computed once.
//! 2. The owner folds the `n` contributions **in member order 0, 1, …, n-1**
//!    whatever order they arrive in (an early one waits for its
//!    predecessors), which makes the reduced value independent of the
//!    network.
//! 3. **All-gather.** The owner turns the reduced shard into wire bytes
//!    (exact: the reduced values; FP8: the reduced f32 shard quantized once),
//!    applies those bytes to its own output exactly as a receiver does, and
//!    sends them to every other member as a [`Msg::Reduced`].
//!
//! Every member, owner included, therefore derives each output element from
//! the same bytes: results are bit-identical on all members.
//!
//! # Exact path
//! Any supported dtype and op. Bytes are native-endian elements. f32/f64 and
//! integers are folded in their own type (integers wrap, as on the GPU);
//! **f16/bf16 are accumulated in f32 and rounded once** (round to nearest
//! even) when the shard is complete. Float min/max use IEEE `maxNum`/`minNum`
//! (`f32::max`), i.e. a NaN operand is ignored, as CUDA's `fmaxf` does.
//!
//! # FP8 path
//! f32/f16/bf16 with sum only ([`fp8_supported`]). The other members'
//! contributions arrive quantized and are decoded and accumulated into f32;
//! the owner's own shard never crosses the wire and is folded exactly. The
//! f32 sum is quantized once, and everyone decodes those bytes into the
//! input dtype. Each element is thus quantized at most twice, whatever `n`.
//!
//! Everything arriving from the network is validated (member/shard index,
//! direction, duplicates, exact byte length) and rejected with a
//! [`CollError`] without changing state; nothing here panics on bad input.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use super::plan::shard_range;
use super::pool::{self, Shared};
use crate::codec::{
    bf16_to_f32, encoded_len, f16_to_f32, f32_to_bf16, f32_to_f16, half_sum_acc, half_sum_pair,
    half_sum_pair_into, scales_len, Codec, CodecError, Dst, HalfType, Src, WireFormat,
};

/// Element types the collective supports (NCCL's numbering in
/// [`DataType::from_nccl`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    I8,
    U8,
    I32,
    U32,
    I64,
    U64,
    F16,
    F32,
    F64,
    Bf16,
}

impl DataType {
    pub const ALL: [DataType; 10] = [
        DataType::I8,
        DataType::U8,
        DataType::I32,
        DataType::U32,
        DataType::I64,
        DataType::U64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::Bf16,
    ];

    /// From `ncclDataType_t`; `None` for types we do not handle (fp8 ones).
    pub fn from_nccl(code: i32) -> Option<DataType> {
        Some(match code {
            0 => DataType::I8,
            1 => DataType::U8,
            2 => DataType::I32,
            3 => DataType::U32,
            4 => DataType::I64,
            5 => DataType::U64,
            6 => DataType::F16,
            7 => DataType::F32,
            8 => DataType::F64,
            9 => DataType::Bf16,
            _ => return None,
        })
    }

    /// The `ncclDataType_t` value.
    pub fn to_nccl(self) -> i32 {
        match self {
            DataType::I8 => 0,
            DataType::U8 => 1,
            DataType::I32 => 2,
            DataType::U32 => 3,
            DataType::I64 => 4,
            DataType::U64 => 5,
            DataType::F16 => 6,
            DataType::F32 => 7,
            DataType::F64 => 8,
            DataType::Bf16 => 9,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::I8 | DataType::U8 => 1,
            DataType::F16 | DataType::Bf16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::I64 | DataType::U64 | DataType::F64 => 8,
        }
    }
}

/// Reduction operators.
///
/// `ncclAvg` (4) maps to `None`: NCCL lowers avg to a sum with pre/post
/// scaling before the collective network sees it; should it ever arrive as
/// avg we refuse it (NCCL then does not use the CollNet) rather than
/// silently return a sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RedOp {
    Sum,
    Prod,
    Max,
    Min,
}

impl RedOp {
    pub const ALL: [RedOp; 4] = [RedOp::Sum, RedOp::Prod, RedOp::Max, RedOp::Min];

    /// From `ncclRedOp_t`; `None` for avg, PreMulSum and user ops.
    pub fn from_nccl(code: i32) -> Option<RedOp> {
        Some(match code {
            0 => RedOp::Sum,
            1 => RedOp::Prod,
            2 => RedOp::Max,
            3 => RedOp::Min,
            _ => return None,
        })
    }

    pub fn to_nccl(self) -> i32 {
        match self {
            RedOp::Sum => 0,
            RedOp::Prod => 1,
            RedOp::Max => 2,
            RedOp::Min => 3,
        }
    }
}

/// Which algorithm a segment runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// Bit-exact reduction.
    Exact,
    /// Block-scaled 8-bit compression in this wire format (lossy; opt-in).
    Compressed(WireFormat),
}

/// Whether the lossy path is allowed for this dtype/op (brief F4).
pub fn fp8_supported(dtype: DataType, op: RedOp) -> bool {
    op == RedOp::Sum && matches!(dtype, DataType::F32 | DataType::F16 | DataType::Bf16)
}

/// The path to run: FP8 only where the user opted in and it is safe.
/// Depends only on arguments that are identical on every rank.
pub fn choose_path(dtype: DataType, op: RedOp, fp8: Option<WireFormat>) -> Path {
    match fp8 {
        Some(f) if fp8_supported(dtype, op) => Path::Compressed(f),
        _ => Path::Exact,
    }
}

/// Everything that must be identical on all members for one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Spec {
    /// Number of members.
    pub n: usize,
    pub dtype: DataType,
    pub op: RedOp,
    pub path: Path,
    /// Elements in this segment.
    pub count: usize,
}

impl Spec {
    pub fn validate(&self) -> Result<(), CollError> {
        if self.n == 0 {
            return Err(CollError::NoMembers);
        }
        if let Path::Compressed(_) = self.path {
            if !fp8_supported(self.dtype, self.op) {
                return Err(CollError::Fp8Unsupported {
                    dtype: self.dtype,
                    op: self.op,
                });
            }
        }
        if self.count.checked_mul(self.dtype.size()).is_none() {
            return Err(CollError::TooLarge);
        }
        Ok(())
    }

    /// Elements owned by member `s`.
    pub fn shard(&self, s: usize) -> Range<usize> {
        shard_range(self.count, self.n, s)
    }

    /// Byte length of a payload (contribution or reduced) for shard `s`;
    /// both directions have the same size.
    pub fn payload_len(&self, s: usize) -> usize {
        let len = self.shard(s).len();
        match self.path {
            Path::Exact => len * self.dtype.size(),
            Path::Compressed(f) => encoded_len(f, len),
        }
    }

    pub fn input_bytes(&self) -> usize {
        self.count * self.dtype.size()
    }
}

/// A protocol message. The transport adds the collective/segment id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Member `from`'s share of shard `shard`, sent to its owner.
    Contribution {
        from: usize,
        shard: usize,
        bytes: Vec<u8>,
    },
    /// The final bytes of shard `shard`, sent by its owner to every other
    /// member (one shared buffer for all destinations).
    Reduced { shard: usize, bytes: Shared },
}

/// A message to deliver to member `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: usize,
    pub msg: Msg,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CollError {
    NoMembers,
    TooLarge,
    Fp8Unsupported {
        dtype: DataType,
        op: RedOp,
    },
    /// `rank` is not below `n`.
    BadRank {
        rank: usize,
        n: usize,
    },
    /// The local input buffer has the wrong size.
    InputLength {
        expected: usize,
        actual: usize,
    },
    /// A message names a member index that does not exist.
    UnknownMember(usize),
    /// A message names a shard that does not exist or is empty.
    UnknownShard(usize),
    /// A contribution for a shard this member does not own.
    NotOwner {
        shard: usize,
    },
    /// A reduced shard sent back to its own owner.
    OwnShardReduced {
        shard: usize,
    },
    DuplicateContribution {
        from: usize,
        shard: usize,
    },
    DuplicateReduced {
        shard: usize,
    },
    /// Payload byte length does not match the spec.
    WrongLength {
        shard: usize,
        expected: usize,
        actual: usize,
    },
    Codec(CodecError),
}

impl fmt::Display for CollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollError::NoMembers => write!(f, "collnet: zero members"),
            CollError::TooLarge => write!(f, "collnet: size overflows"),
            CollError::Fp8Unsupported { dtype, op } => {
                write!(f, "collnet: FP8 path not allowed for {dtype:?}/{op:?}")
            }
            CollError::BadRank { rank, n } => write!(f, "collnet: rank {rank} of {n}"),
            CollError::InputLength { expected, actual } => {
                write!(f, "collnet: input has {actual} bytes, expected {expected}")
            }
            CollError::UnknownMember(m) => write!(f, "collnet: unknown member {m}"),
            CollError::UnknownShard(s) => write!(f, "collnet: unknown or empty shard {s}"),
            CollError::NotOwner { shard } => {
                write!(
                    f,
                    "collnet: contribution for shard {shard} sent to a non-owner"
                )
            }
            CollError::OwnShardReduced { shard } => {
                write!(f, "collnet: reduced shard {shard} sent to its owner")
            }
            CollError::DuplicateContribution { from, shard } => {
                write!(
                    f,
                    "collnet: duplicate contribution from {from} for shard {shard}"
                )
            }
            CollError::DuplicateReduced { shard } => {
                write!(f, "collnet: duplicate reduced shard {shard}")
            }
            CollError::WrongLength {
                shard,
                expected,
                actual,
            } => write!(
                f,
                "collnet: shard {shard} payload has {actual} bytes, expected {expected}"
            ),
            CollError::Codec(e) => write!(f, "collnet: {e}"),
        }
    }
}

impl std::error::Error for CollError {}

impl From<CodecError> for CollError {
    fn from(e: CodecError) -> Self {
        CollError::Codec(e)
    }
}

// ---------- element arithmetic ----------

trait Elem: Copy {
    const SIZE: usize;
    fn read(b: &[u8]) -> Self;
    fn write(self, b: &mut [u8]);
    fn apply(op: RedOp, a: Self, b: Self) -> Self;
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_ne_bytes(a)
            }
            fn write(self, b: &mut [u8]) {
                b.copy_from_slice(&self.to_ne_bytes());
            }
            fn apply(op: RedOp, a: Self, b: Self) -> Self {
                match op {
                    RedOp::Sum => a.wrapping_add(b),
                    RedOp::Prod => a.wrapping_mul(b),
                    RedOp::Max => a.max(b),
                    RedOp::Min => a.min(b),
                }
            }
        }
    )*};
}
int_elem!(i8, u8, i32, u32, i64, u64);

macro_rules! float_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_ne_bytes(a)
            }
            fn write(self, b: &mut [u8]) {
                b.copy_from_slice(&self.to_ne_bytes());
            }
            fn apply(op: RedOp, a: Self, b: Self) -> Self {
                match op {
                    RedOp::Sum => a + b,
                    RedOp::Prod => a * b,
                    RedOp::Max => a.max(b),
                    RedOp::Min => a.min(b),
                }
            }
        }
    )*};
}
float_elem!(f32, f64);

fn fold_native<T: Elem>(op: RedOp, acc: &mut [u8], src: &[u8]) {
    for (a, s) in acc.chunks_exact_mut(T::SIZE).zip(src.chunks_exact(T::SIZE)) {
        T::apply(op, T::read(a), T::read(s)).write(a);
    }
}

/// `acc = op(acc, src)` elementwise, both native-endian `dtype` bytes
/// (not f16/bf16, which fold into f32).
fn fold_bytes(dtype: DataType, op: RedOp, acc: &mut [u8], src: &[u8]) {
    match dtype {
        DataType::I8 => fold_native::<i8>(op, acc, src),
        DataType::U8 => fold_native::<u8>(op, acc, src),
        DataType::I32 => fold_native::<i32>(op, acc, src),
        DataType::U32 => fold_native::<u32>(op, acc, src),
        DataType::I64 => fold_native::<i64>(op, acc, src),
        DataType::U64 => fold_native::<u64>(op, acc, src),
        DataType::F32 => fold_native::<f32>(op, acc, src),
        DataType::F64 => fold_native::<f64>(op, acc, src),
        DataType::F16 | DataType::Bf16 => {}
    }
}

/// `acc[i] = f(acc[i], half(bytes[i]))`, with the dtype dispatch hoisted
/// out of the loop so it vectorizes.
fn widen_half(dtype: DataType, bytes: &[u8], acc: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    let pairs = acc.iter_mut().zip(bytes.chunks_exact(2));
    if dtype == DataType::Bf16 {
        for (a, c) in pairs {
            *a = f(*a, bf16_to_f32(u16::from_ne_bytes([c[0], c[1]])));
        }
    } else {
        for (a, c) in pairs {
            *a = f(*a, f16_to_f32(u16::from_ne_bytes([c[0], c[1]])));
        }
    }
}

/// Calls `body` with the widening and rounding conversions of `dtype`
/// (f16 or bf16) as generic arguments, so each loop is compiled per type
/// with the conversions inlined (no dispatch, no call per element).
macro_rules! with_half_conversions {
    ($dtype:expr, $body:ident($($arg:expr),*)) => {
        if $dtype == DataType::Bf16 {
            $body($($arg,)* bf16_to_f32, f32_to_bf16)
        } else {
            $body($($arg,)* f16_to_f32, f32_to_f16)
        }
    };
}

fn half(c: &[u8]) -> u16 {
    u16::from_ne_bytes([c[0], c[1]])
}

/// `acc[i] = f(half(a[i]), half(b[i]))`: the first two contributions of
/// a longer exact f16/bf16 sum, in one pass.
fn widen_pair(dtype: DataType, a: &[u8], b: &[u8], acc: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    fn run(
        a: &[u8],
        b: &[u8],
        acc: &mut [f32],
        f: impl Fn(f32, f32) -> f32,
        widen: impl Fn(u16) -> f32,
        _narrow: impl Fn(f32) -> u16,
    ) {
        for ((o, x), y) in acc.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2)) {
            *o = f(widen(half(x)), widen(half(y)));
        }
    }
    with_half_conversions!(dtype, run(a, b, acc, f))
}

/// `b[i] = round(f(half(a[i]), half(b[i])))` in place: the last fold of an
/// exact f16/bf16 sum whose earlier contributions are one buffer of halves.
fn narrow_pair(dtype: DataType, a: &[u8], b: &mut [u8], f: impl Fn(f32, f32) -> f32) {
    fn run(
        a: &[u8],
        b: &mut [u8],
        f: impl Fn(f32, f32) -> f32,
        widen: impl Fn(u16) -> f32,
        narrow: impl Fn(f32) -> u16,
    ) {
        for (y, x) in b.chunks_exact_mut(2).zip(a.chunks_exact(2)) {
            let r = narrow(f(widen(half(x)), widen(half(y))));
            y.copy_from_slice(&r.to_ne_bytes());
        }
    }
    with_half_conversions!(dtype, run(a, b, f))
}

/// `b[i] = round(f(acc[i], half(b[i])))` in place: the last fold of a
/// longer exact f16/bf16 sum.
fn narrow_acc(dtype: DataType, acc: &[f32], b: &mut [u8], f: impl Fn(f32, f32) -> f32) {
    fn run(
        acc: &[f32],
        b: &mut [u8],
        f: impl Fn(f32, f32) -> f32,
        widen: impl Fn(u16) -> f32,
        narrow: impl Fn(f32) -> u16,
    ) {
        for (y, &a) in b.chunks_exact_mut(2).zip(acc) {
            let r = narrow(f(a, widen(half(y))));
            y.copy_from_slice(&r.to_ne_bytes());
        }
    }
    with_half_conversions!(dtype, run(acc, b, f))
}

/// The 16-bit type whose exact sums have SIMD folds (bit for bit the
/// scalar loops), if `dtype` and `op` are one of them.
fn vector_sum(dtype: DataType, op: RedOp) -> Option<HalfType> {
    match (dtype, op) {
        (DataType::Bf16, RedOp::Sum) => Some(HalfType::Bf16),
        (DataType::F16, RedOp::Sum) => Some(HalfType::F16),
        _ => None,
    }
}

/// The exact reduction of two members' contributions, in member order,
/// into a third buffer: `out = earlier ⊕ later` (all three `spec`-sized),
/// bit for bit what a [`Reducer`] of two members returns: the last fold of
/// an [`InPlaceReducer`] of two, which reads the owner's input where it
/// lies and writes straight into the caller's output.
pub fn fold_pair_into(dtype: DataType, op: RedOp, earlier: &[u8], later: &[u8], out: &mut [u8]) {
    debug_assert!(earlier.len() == out.len() && later.len() == out.len());
    if !matches!(dtype, DataType::F16 | DataType::Bf16) {
        fold_native_into(dtype, op, earlier, later, out);
        return;
    }
    let done = vector_sum(dtype, op).map_or(0, |h| 2 * half_sum_pair_into(h, earlier, later, out));
    // The rest (a tail of under 8 values; every value for other ops) is
    // the Reducer's own last fold, on a copy of `later`.
    let (earlier, out) = (&earlier[done..], &mut out[done..]);
    out.copy_from_slice(&later[done..]);
    match op {
        // `x + a`, the operand order of the Reducer's fold (NaNs).
        RedOp::Sum => narrow_pair(dtype, earlier, out, |a, x| x + a),
        _ => narrow_pair(dtype, earlier, out, |a, x| f32::apply(op, a, x)),
    }
}

/// Bytes of `out` a three-buffer fold fills per pass: a copy and an
/// in-place fold over it stay in L1/L2, so `out` is written to memory once.
const INTO_CHUNK_BYTES: usize = 16 * 1024;

/// `out = acc ⊕ later` for native types (not f16/bf16): the fold in
/// place ([`fold_bytes`]) on a copy of `acc`, a cache-sized chunk at a time.
fn fold_native_into(dtype: DataType, op: RedOp, acc: &[u8], later: &[u8], out: &mut [u8]) {
    for ((o, a), l) in out
        .chunks_mut(INTO_CHUNK_BYTES)
        .zip(acc.chunks(INTO_CHUNK_BYTES))
        .zip(later.chunks(INTO_CHUNK_BYTES))
    {
        o.copy_from_slice(a);
        fold_bytes(dtype, op, o, l);
    }
}

/// The f16/bf16 exact path's last fold into a third buffer: `out[i] =
/// half(f(acc[i], later[i]))`, the [`Reducer`]'s last fold (which rounds
/// into the last contribution's own buffer) on a copy of `later`, a
/// cache-sized chunk at a time.
fn fold_wide_into(
    dtype: DataType,
    op: RedOp,
    acc: &[f32],
    later: &[u8],
    out: &mut [u8],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    let vector_sum = vector_sum(dtype, op);
    for ((o, a), l) in out
        .chunks_mut(INTO_CHUNK_BYTES)
        .zip(acc.chunks(INTO_CHUNK_BYTES / 2))
        .zip(later.chunks(INTO_CHUNK_BYTES))
    {
        o.copy_from_slice(l);
        let done = vector_sum.map_or(0, |h| half_sum_acc(h, a, o));
        narrow_acc(dtype, &a[done..], &mut o[2 * done..], f);
    }
}

/// Values converted per pass: a multiple of the FP8 block, small enough
/// that the typed copy stays in L1/L2 instead of a whole-shard temporary.
const CHUNK_VALUES: usize = 8 * 1024;

/// Quantize `count` elements of `dtype` (native bytes) into FP8 wire bytes.
fn fp8_encode(codec: &Codec, dtype: DataType, input: &[u8]) -> Result<Vec<u8>, CollError> {
    let size = dtype.size();
    let n = input.len() / size;
    let format = codec.format();
    let mut wire = pool::take(encoded_len(format, n));
    let (scales, codes) = crate::codec::split_wire_mut(format, &mut wire, n)?;
    let mut halves = [0u16; CHUNK_VALUES];
    let mut floats = [0f32; CHUNK_VALUES];
    for (i, chunk) in input.chunks(CHUNK_VALUES * size).enumerate() {
        let m = chunk.len() / size;
        let v0 = i * CHUNK_VALUES;
        let (s0, s1) = (scales_len(format, v0), scales_len(format, v0 + m));
        let (sc, co) = (&mut scales[s0..s1], &mut codes[v0..v0 + m]);
        let src = match dtype {
            DataType::F32 => {
                for (d, c) in floats.iter_mut().zip(chunk.chunks_exact(4)) {
                    *d = f32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                }
                Src::F32(&floats[..m])
            }
            DataType::F16 | DataType::Bf16 => {
                for (d, c) in halves.iter_mut().zip(chunk.chunks_exact(2)) {
                    *d = u16::from_ne_bytes([c[0], c[1]]);
                }
                if dtype == DataType::F16 {
                    Src::F16(&halves[..m])
                } else {
                    Src::Bf16(&halves[..m])
                }
            }
            _ => {
                return Err(CollError::Fp8Unsupported {
                    dtype,
                    op: RedOp::Sum,
                })
            }
        };
        codec.encode(src, sc, co)?;
    }
    Ok(wire)
}

/// Decode FP8 wire bytes into `out` (native bytes of `dtype`).
fn fp8_decode(
    codec: &Codec,
    dtype: DataType,
    wire: &[u8],
    out: &mut [u8],
) -> Result<(), CollError> {
    let size = dtype.size();
    let n = out.len() / size;
    let format = codec.format();
    let (scales, codes) = crate::codec::split_wire(format, wire, n)?;
    let mut halves = [0u16; CHUNK_VALUES];
    let mut floats = [0f32; CHUNK_VALUES];
    for (i, chunk) in out.chunks_mut(CHUNK_VALUES * size).enumerate() {
        let m = chunk.len() / size;
        let v0 = i * CHUNK_VALUES;
        let (s0, s1) = (scales_len(format, v0), scales_len(format, v0 + m));
        let (sc, co) = (&scales[s0..s1], &codes[v0..v0 + m]);
        match dtype {
            DataType::F32 => {
                codec.decode_into(sc, co, Dst::F32(&mut floats[..m]))?;
                for (o, x) in chunk.chunks_exact_mut(4).zip(&floats) {
                    o.copy_from_slice(&x.to_ne_bytes());
                }
            }
            DataType::F16 | DataType::Bf16 => {
                let dst = if dtype == DataType::F16 {
                    Dst::F16(&mut halves[..m])
                } else {
                    Dst::Bf16(&mut halves[..m])
                };
                codec.decode_into(sc, co, dst)?;
                for (o, x) in chunk.chunks_exact_mut(2).zip(&halves) {
                    o.copy_from_slice(&x.to_ne_bytes());
                }
            }
            _ => {
                return Err(CollError::Fp8Unsupported {
                    dtype,
                    op: RedOp::Sum,
                })
            }
        }
    }
    Ok(())
}

// ---------- fixed-order reduction ----------

/// Running reduction of one shard.
enum Acc {
    /// Nothing folded yet.
    Empty,
    /// Exact path: native bytes (the result once done; for f16/bf16 also
    /// the first contribution, kept as it is until the second arrives so
    /// that a sum of two needs no accumulator at all).
    Native(Vec<u8>),
    /// f16/bf16 exact path from the second of three or more contributions,
    /// and every FP8 path: f32 accumulator (pooled).
    Wide(Vec<f32>),
}

/// Folds the `n` contributions to one shard **in member order 0..n-1**,
/// whatever order they arrive in, and produces the shard's final bytes.
/// Shared by the allreduce [`Member`] and by reduce-scatter.
pub struct Reducer {
    dtype: DataType,
    op: RedOp,
    codec: Option<Codec>,
    shard: usize,
    /// Elements in the shard.
    len: usize,
    /// Byte length every contribution must have.
    payload_len: usize,
    received: Vec<bool>,
    /// Contributions waiting for their predecessors to be folded, and
    /// whether each is native elements rather than FP8 wire bytes.
    pending: Vec<Option<(Vec<u8>, bool)>>,
    next_fold: usize,
    acc: Acc,
    /// Relative L2 error of quantizing the first block of the reduced
    /// shard (FP8 path): a cheap sample for the metrics.
    sampled_error: Option<f64>,
}

impl Reducer {
    /// A reducer of `len` elements of shard `shard` over `n` members;
    /// with a codec, contributions are FP8 wire bytes.
    pub fn new(
        dtype: DataType,
        op: RedOp,
        codec: Option<Codec>,
        n: usize,
        shard: usize,
        len: usize,
    ) -> Reducer {
        Reducer::renew(None, dtype, op, codec, n, shard, len)
    }

    /// [`Reducer::new`] in the memory of a spent reducer (its lists).
    pub fn renew(
        spare: Option<Reducer>,
        dtype: DataType,
        op: RedOp,
        codec: Option<Codec>,
        n: usize,
        shard: usize,
        len: usize,
    ) -> Reducer {
        let payload_len = match codec {
            None => len * dtype.size(),
            Some(c) => encoded_len(c.format(), len),
        };
        let (mut received, mut pending) =
            spare.map_or_else(Default::default, |r| (r.received, r.pending));
        received.clear();
        received.resize(n, false);
        pending.clear();
        pending.resize_with(n, || None);
        Reducer {
            dtype,
            op,
            codec,
            shard,
            len,
            payload_len,
            received,
            pending,
            next_fold: 0,
            acc: Acc::Empty,
            sampled_error: None,
        }
    }

    /// The sampled FP8 quantization error of the reduced shard, once done.
    pub fn sampled_error(&self) -> Option<f64> {
        self.sampled_error
    }

    /// Byte length every contribution must have.
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// All contributions folded.
    pub fn is_done(&self) -> bool {
        self.next_fold == self.received.len()
    }

    /// Takes member `from`'s contribution. Returns the shard's final bytes
    /// (exact: native elements; FP8: the reduced shard quantized once) when
    /// this was the last one. On error nothing changed.
    pub fn accept(&mut self, from: usize, bytes: Vec<u8>) -> Result<Option<Vec<u8>>, CollError> {
        self.accept_as(from, bytes, false)
    }

    /// As [`Reducer::accept`] for a contribution of native elements that was
    /// never quantized: the owner's own shard on the FP8 path, which never
    /// crosses the wire, is folded exactly (one rounding fewer than the
    /// others, and no encode/decode work).
    pub fn accept_native(
        &mut self,
        from: usize,
        bytes: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, CollError> {
        self.accept_as(from, bytes, true)
    }

    fn accept_as(
        &mut self,
        from: usize,
        bytes: Vec<u8>,
        native: bool,
    ) -> Result<Option<Vec<u8>>, CollError> {
        let shard = self.shard;
        let expected = if native && self.codec.is_some() {
            self.len * self.dtype.size()
        } else {
            self.payload_len
        };
        if from >= self.received.len() {
            return Err(CollError::UnknownMember(from));
        }
        if self.received[from] {
            return Err(CollError::DuplicateContribution { from, shard });
        }
        if bytes.len() != expected {
            return Err(CollError::WrongLength {
                shard,
                expected,
                actual: bytes.len(),
            });
        }
        self.received[from] = true;
        self.pending[from] = Some((bytes, native));
        // Fold in member order; an early arrival waits for its predecessors.
        while self.next_fold < self.received.len() {
            let Some((b, native)) = self.pending[self.next_fold].take() else {
                break;
            };
            self.fold(b, native)?;
            self.next_fold += 1;
        }
        if self.is_done() {
            return self.finish().map(Some);
        }
        Ok(None)
    }

    /// Folds one contribution; its buffer goes back to the pool.
    fn fold(&mut self, bytes: Vec<u8>, native: bool) -> Result<(), CollError> {
        let dtype = self.dtype;
        let op = self.op;
        if let Some(codec) = &self.codec {
            if let Acc::Empty = self.acc {
                let mut acc = pool::take_wide(self.len);
                acc.fill(0.0);
                self.acc = Acc::Wide(acc);
            }
            if let Acc::Wide(acc) = &mut self.acc {
                match (native, dtype) {
                    (false, _) => codec.decode_accumulate_wire(&bytes, acc)?,
                    (true, DataType::F32) => {
                        for (a, c) in acc.iter_mut().zip(bytes.chunks_exact(4)) {
                            *a += f32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                        }
                    }
                    (true, _) => widen_half(dtype, &bytes, acc, |a, x| a + x),
                }
            }
            pool::give(bytes);
            return Ok(());
        }
        if matches!(dtype, DataType::F16 | DataType::Bf16) {
            self.fold_half(bytes);
            return Ok(());
        }
        match &mut self.acc {
            Acc::Empty => self.acc = Acc::Native(bytes),
            Acc::Native(acc) => {
                fold_bytes(dtype, op, acc, &bytes);
                pool::give(bytes);
            }
            Acc::Wide(_) => unreachable!("native dtypes never widen"),
        }
        Ok(())
    }

    /// Exact f16/bf16: the sum runs in f32 in member order and rounds once,
    /// in as few passes as the member count allows. The first contribution
    /// waits as it is; the last fold rounds straight into its own buffer,
    /// which becomes the result. Two members: one pass, no accumulator.
    fn fold_half(&mut self, bytes: Vec<u8>) {
        let op = self.op;
        match op {
            // Written `x + a`, the operand order the kernels' reference
            // (gpu::reference::sum_exact) and the AVX2 fold give NaNs. Rust
            // does not promise which NaN an add returns: this relies on the
            // compiler keeping the order, which
            // `sum_exact_matches_the_collnet_reducer` checks in release
            // builds.
            RedOp::Sum => self.fold_half_with(bytes, |a, x| x + a),
            _ => self.fold_half_with(bytes, |a, x| f32::apply(op, a, x)),
        }
    }

    fn fold_half_with(&mut self, mut bytes: Vec<u8>, f: impl Fn(f32, f32) -> f32 + Copy) {
        let dtype = self.dtype;
        // The rounding folds of a sum have SIMD kernels (bit for bit the
        // scalar loop's results).
        let vector_sum = vector_sum(dtype, self.op);
        let last = self.next_fold + 1 == self.received.len();
        self.acc = match std::mem::replace(&mut self.acc, Acc::Empty) {
            Acc::Empty if last => {
                // One member: the sum is its contribution rounded through f32.
                let first = pool::copy_of(&bytes);
                narrow_pair(dtype, &first, &mut bytes, |x, _| x);
                pool::give(first);
                Acc::Native(bytes)
            }
            Acc::Empty => Acc::Native(bytes),
            Acc::Native(first) if last => {
                let done = vector_sum.map_or(0, |h| half_sum_pair(h, &first, &mut bytes));
                narrow_pair(dtype, &first[2 * done..], &mut bytes[2 * done..], f);
                pool::give(first);
                Acc::Native(bytes)
            }
            Acc::Native(first) => {
                let mut acc = pool::take_wide(self.len);
                widen_pair(dtype, &first, &bytes, &mut acc, f);
                pool::give(first);
                pool::give(bytes);
                Acc::Wide(acc)
            }
            Acc::Wide(acc) if last => {
                let done = vector_sum.map_or(0, |h| half_sum_acc(h, &acc, &mut bytes));
                narrow_acc(dtype, &acc[done..], &mut bytes[2 * done..], f);
                pool::give_wide(acc);
                Acc::Native(bytes)
            }
            Acc::Wide(mut acc) => {
                widen_half(dtype, &bytes, &mut acc, f);
                pool::give(bytes);
                Acc::Wide(acc)
            }
        };
    }

    fn finish(&mut self) -> Result<Vec<u8>, CollError> {
        let acc = std::mem::replace(&mut self.acc, Acc::Empty);
        Ok(match (&self.codec, acc) {
            (Some(codec), Acc::Wide(acc)) => {
                let mut wire = pool::take(encoded_len(codec.format(), acc.len()));
                codec.encode_wire(Src::F32(&acc), &mut wire)?;
                self.sampled_error = sample_error(codec, &acc);
                pool::give_wide(acc);
                wire
            }
            (None, Acc::Wide(_)) => unreachable!("the last exact fold rounds into native bytes"),
            (_, Acc::Native(v)) => v,
            // A shard of zero elements with n >= 1 folds to nothing.
            (_, Acc::Empty) => Vec::new(),
        })
    }
}

/// Relative L2 error of quantizing the first block of `acc`.
fn sample_error(codec: &Codec, acc: &[f32]) -> Option<f64> {
    let n = acc.len().min(crate::codec::BLOCK);
    if n == 0 {
        return None;
    }
    // A block's wire bytes: at most a 2-byte scale and a byte per value.
    let mut block = [0u8; 2 + crate::codec::BLOCK];
    let block = &mut block[..encoded_len(codec.format(), n)];
    codec.encode_wire(Src::F32(&acc[..n]), block).ok()?;
    // Blocks are independent: the first block encodes alone exactly as it
    // did inside the shard.
    let mut back = [0f32; crate::codec::BLOCK];
    let back = &mut back[..n];
    codec.decode_into_wire(block, Dst::F32(back)).ok()?;
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in acc[..n].iter().zip(back.iter()) {
        num += (f64::from(*a) - f64::from(*b)).powi(2);
        den += f64::from(*a).powi(2);
    }
    (den > 0.0).then(|| (num / den).sqrt())
}

// ---------- exact reduction into the caller's output ----------

/// The exact reduction of an owner's shard, bit for bit the [`Reducer`]'s
/// (member order, f16/bf16 summed in f32 and rounded once), that reads the
/// owner's own input where it lies and whose last fold writes the result
/// straight into the caller's output. On the host path the copies, not the
/// wire, set the pace: this leaves out the copy of the own shard before the
/// first fold and the copy of the result after the last.
///
/// The caller passes the owner's input shard (`mine`) and output shard
/// (`out`) with every contribution; other members' contributions wait, as
/// received, for their turn. `out` is written only by the last fold, so
/// until then an in-place call's input shard is intact.
pub struct InPlaceReducer {
    dtype: DataType,
    op: RedOp,
    /// The owner's member index: its contribution is `mine`.
    owner: usize,
    /// Byte length of the shard.
    bytes: usize,
    received: Vec<bool>,
    pending: Vec<Option<Vec<u8>>>,
    next_fold: usize,
    /// The fold so far; `None` before the first member's turn and after
    /// the last.
    partial: Option<Partial>,
}

/// An [`InPlaceReducer`]'s fold so far.
enum Partial {
    /// The first member's bytes as they are; `None`: the owner's input.
    First(Option<Vec<u8>>),
    /// f16/bf16 from the second of three or more members: f32 (pooled).
    Wide(Vec<f32>),
    /// Native types from the second of three or more members.
    Native(Vec<u8>),
}

impl InPlaceReducer {
    /// The reduction of a shard of `bytes` bytes of `dtype` over `n >= 2`
    /// members, owned by member `owner`.
    pub fn new(
        dtype: DataType,
        op: RedOp,
        n: usize,
        owner: usize,
        bytes: usize,
    ) -> Result<InPlaceReducer, CollError> {
        Self::renew(None, dtype, op, n, owner, bytes)
    }

    /// [`InPlaceReducer::new`] in the lists of a `spare` one.
    pub fn renew(
        spare: Option<InPlaceReducer>,
        dtype: DataType,
        op: RedOp,
        n: usize,
        owner: usize,
        bytes: usize,
    ) -> Result<InPlaceReducer, CollError> {
        if n < 2 || owner >= n {
            return Err(CollError::BadRank { rank: owner, n });
        }
        let (mut received, mut pending) =
            spare.map_or_else(Default::default, |r| (r.received, r.pending));
        received.clear();
        received.extend((0..n).map(|j| j == owner));
        pending.clear();
        pending.resize_with(n, || None);
        Ok(InPlaceReducer {
            dtype,
            op,
            owner,
            bytes,
            received,
            pending,
            next_fold: 0,
            partial: None,
        })
    }

    /// Every member's contribution is folded and the result is in `out`.
    pub fn is_done(&self) -> bool {
        self.next_fold == self.received.len()
    }

    /// Whether taking member `from`'s contribution now reads the owner's
    /// input: the fold of the owner's turn does, or, when the owner is
    /// member 0, the fold of the next turn, which meets its bytes. A driver
    /// that must copy the input first (an in-place call) copies it only for
    /// such a contribution.
    pub fn reads_mine(&self, from: usize) -> bool {
        let reading_turn = if self.owner == 0 { 1 } else { self.owner };
        (self.next_fold..self.received.len())
            .take_while(|&turn| turn == from || self.received[turn])
            .any(|turn| turn == reading_turn)
    }

    /// Takes member `from`'s contribution and folds every one whose turn
    /// has come, the owner's from `mine` (which may be empty when
    /// [`InPlaceReducer::reads_mine`] says it is not read); returns whether
    /// the result is now in `out`. On error nothing changed.
    pub fn accept(
        &mut self,
        from: usize,
        bytes: Vec<u8>,
        mine: &[u8],
        out: &mut [u8],
    ) -> Result<bool, CollError> {
        let shard = self.owner;
        if from >= self.received.len() || from == self.owner {
            return Err(CollError::UnknownMember(from));
        }
        if self.received[from] {
            return Err(CollError::DuplicateContribution { from, shard });
        }
        let read = self.reads_mine(from).then_some(mine.len());
        for actual in [Some(bytes.len()), read, Some(out.len())]
            .into_iter()
            .flatten()
        {
            if actual != self.bytes {
                return Err(CollError::WrongLength {
                    shard,
                    expected: self.bytes,
                    actual,
                });
            }
        }
        self.received[from] = true;
        self.pending[from] = Some(bytes);
        while self.next_fold < self.received.len() {
            let turn = self.next_fold;
            // `None`: the owner's turn, whose bytes are `mine`.
            let theirs = match self.pending[turn].take() {
                Some(b) => Some(b),
                None if turn == self.owner => None,
                None => break,
            };
            match self.op {
                // `x + a`, the operand order of the Reducer's fold (NaNs).
                RedOp::Sum => self.fold(theirs, mine, out, |a, x| x + a),
                op => self.fold(theirs, mine, out, move |a, x| f32::apply(op, a, x)),
            }
            self.next_fold += 1;
        }
        Ok(self.is_done())
    }

    /// Folds the next member's bytes: `theirs`, or `mine` for the owner.
    fn fold(
        &mut self,
        theirs: Option<Vec<u8>>,
        mine: &[u8],
        out: &mut [u8],
        f: impl Fn(f32, f32) -> f32 + Copy,
    ) {
        let (dtype, op) = (self.dtype, self.op);
        let half = matches!(dtype, DataType::F16 | DataType::Bf16);
        let last = self.next_fold + 1 == self.received.len();
        let Some(prev) = self.partial.take() else {
            // Kept as it is until the next member's bytes come (n >= 2).
            self.partial = Some(Partial::First(theirs));
            return;
        };
        let src = theirs.as_deref().unwrap_or(mine);
        let (partial, spent) = match prev {
            Partial::First(first) if last => {
                fold_pair_into(dtype, op, first.as_deref().unwrap_or(mine), src, out);
                (None, first)
            }
            Partial::First(first) if half => {
                let mut acc = pool::take_wide(self.bytes / 2);
                widen_pair(dtype, first.as_deref().unwrap_or(mine), src, &mut acc, f);
                (Some(Partial::Wide(acc)), first)
            }
            Partial::First(Some(mut first)) => {
                fold_bytes(dtype, op, &mut first, src);
                (Some(Partial::Native(first)), None)
            }
            Partial::First(None) => {
                let mut acc = pool::take(self.bytes);
                fold_native_into(dtype, op, mine, src, &mut acc);
                (Some(Partial::Native(acc)), None)
            }
            Partial::Wide(mut acc) if !last => {
                widen_half(dtype, src, &mut acc, f);
                (Some(Partial::Wide(acc)), None)
            }
            Partial::Wide(acc) => {
                fold_wide_into(dtype, op, &acc, src, out, f);
                pool::give_wide(acc);
                (None, None)
            }
            Partial::Native(mut acc) if !last => {
                fold_bytes(dtype, op, &mut acc, src);
                (Some(Partial::Native(acc)), None)
            }
            Partial::Native(acc) => {
                fold_native_into(dtype, op, &acc, src, out);
                pool::give(acc);
                (None, None)
            }
        };
        self.partial = partial;
        spent.into_iter().chain(theirs).for_each(pool::give);
    }
}

// ---------- the member state machine ----------

/// One member's state for one allreduce segment.
pub struct Member {
    spec: Spec,
    rank: usize,
    codec: Option<Codec>,
    /// Reduction of the owned shard; `None` when it is empty.
    reducer: Option<Reducer>,
    /// Shards whose final bytes are in `output`.
    have: Vec<bool>,
    remaining: usize,
    /// The assembled result; stays empty for a lending member.
    output: Vec<u8>,
    /// Lending members hand each final shard out instead of copying it into
    /// `output`: `(byte offset in the segment, bytes)`, for the driver to
    /// write straight into the caller's buffer.
    lending: bool,
    ready: Vec<(usize, Shared)>,
}

impl Member {
    /// Starts member `rank` on `input` (`spec.count` native-endian elements).
    /// Returns the contributions to send; its own contribution is applied
    /// locally (and, for `n == 1`, the call is already done).
    pub fn new(
        spec: Spec,
        rank: usize,
        input: &[u8],
    ) -> Result<(Member, Vec<Outgoing>), CollError> {
        Member::with_codec(spec, rank, input, None)
    }

    /// As [`Member::new`] with an explicit codec (tests pin the backend).
    pub fn with_codec(
        spec: Spec,
        rank: usize,
        input: &[u8],
        codec: Option<Codec>,
    ) -> Result<(Member, Vec<Outgoing>), CollError> {
        let mut m = Member::prepare(None, spec, rank, codec, false)?;
        let mut out = Vec::new();
        m.start(input, &mut out)?;
        Ok((m, out))
    }

    /// A member, not started yet, for a driver that moves bytes straight
    /// between the caller's buffers: on the exact path the contributions
    /// are not copied (the driver sends the other members' shards of its
    /// input as they are), and final shards are not assembled into
    /// [`Member::output`] but handed out by [`Member::drain_ready`]. It
    /// reuses the lists of `spare`, a finished member, so a steady
    /// pattern's segments allocate nothing.
    pub fn renew_lending(
        spare: Option<Member>,
        spec: Spec,
        rank: usize,
    ) -> Result<Member, CollError> {
        Member::prepare(spare, spec, rank, None, true)
    }

    fn prepare(
        spare: Option<Member>,
        spec: Spec,
        rank: usize,
        codec: Option<Codec>,
        lend: bool,
    ) -> Result<Member, CollError> {
        spec.validate()?;
        if rank >= spec.n {
            return Err(CollError::BadRank { rank, n: spec.n });
        }
        let codec = match (spec.path, codec) {
            (Path::Exact, _) => None,
            (Path::Compressed(f), Some(c)) if c.format() == f => Some(c),
            (Path::Compressed(f), _) => Some(Codec::new(f)),
        };
        let n = spec.n;
        let own = spec.shard(rank);
        let (reducer, mut have, mut ready) = spare.map_or_else(Default::default, |m| {
            // A lending member's output is empty: the pool ignores it.
            pool::give(m.output);
            (m.reducer, m.have, m.ready)
        });
        have.clear();
        have.resize(n, false);
        for (_, bytes) in ready.drain(..) {
            pool::give_shared(bytes);
        }
        Ok(Member {
            spec,
            rank,
            codec,
            reducer: (!own.is_empty())
                .then(|| Reducer::renew(reducer, spec.dtype, spec.op, codec, n, rank, own.len())),
            have,
            remaining: (0..n).filter(|&s| !spec.shard(s).is_empty()).count(),
            output: if lend {
                Vec::new()
            } else {
                pool::take(spec.input_bytes())
            },
            lending: lend,
            ready,
        })
    }

    /// Reads `input` (`spec.count` native-endian elements): appends the
    /// contributions to send to `out` and applies its own locally (for
    /// `n == 1` the call is then done).
    pub fn start(&mut self, input: &[u8], out: &mut Vec<Outgoing>) -> Result<(), CollError> {
        let spec = self.spec;
        if input.len() != spec.input_bytes() {
            return Err(CollError::InputLength {
                expected: spec.input_bytes(),
                actual: input.len(),
            });
        }
        let size = spec.dtype.size();
        let mut mine = None;
        for s in 0..spec.n {
            let r = spec.shard(s);
            if r.is_empty() {
                continue;
            }
            let raw = &input[r.start * size..r.end * size];
            if s == self.rank {
                // Never on the wire: kept exact (see Reducer::accept_native).
                mine = Some(pool::copy_of(raw));
                continue;
            }
            let bytes = match &self.codec {
                None if self.lending => continue,
                None => pool::copy_of(raw),
                Some(c) => fp8_encode(c, spec.dtype, raw)?,
            };
            out.push(Outgoing {
                to: s,
                msg: Msg::Contribution {
                    from: self.rank,
                    shard: s,
                    bytes,
                },
            });
        }
        if let Some(bytes) = mine {
            self.accept_contribution(self.rank, bytes, true, out)?;
        }
        Ok(())
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Every non-empty shard of the output is final.
    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }

    /// The owned shard is reduced and its bytes were handed out (or it is
    /// empty): this member sends nothing more.
    pub fn sent_everything(&self) -> bool {
        self.reducer.as_ref().is_none_or(Reducer::is_done)
    }

    /// The sampled FP8 error of the owned shard's reduction, once reduced.
    pub fn sampled_error(&self) -> Option<f64> {
        self.reducer.as_ref().and_then(Reducer::sampled_error)
    }

    /// The result (native-endian `spec.count` elements); only complete when
    /// [`Member::is_done`].
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Consumes the member, returning the output buffer.
    pub fn into_output(self) -> Vec<u8> {
        self.output
    }

    /// Final shards not yet handed out (lending members only): `(byte
    /// offset in the segment, bytes)`.
    pub fn drain_ready(&mut self) -> std::vec::Drain<'_, (usize, Shared)> {
        self.ready.drain(..)
    }

    /// Handles one message from the network. On error nothing changed.
    pub fn on_message(&mut self, msg: Msg) -> Result<Vec<Outgoing>, CollError> {
        let mut out = Vec::new();
        self.on_message_into(msg, &mut out)?;
        Ok(out)
    }

    /// [`Member::on_message`], appending the messages to send to `out`.
    pub fn on_message_into(&mut self, msg: Msg, out: &mut Vec<Outgoing>) -> Result<(), CollError> {
        match msg {
            Msg::Contribution { from, shard, bytes } => {
                self.check_shard(shard)?;
                if shard != self.rank {
                    return Err(CollError::NotOwner { shard });
                }
                if from >= self.spec.n {
                    return Err(CollError::UnknownMember(from));
                }
                self.accept_contribution(from, bytes, false, out)
            }
            Msg::Reduced { shard, bytes } => {
                self.check_shard(shard)?;
                if shard == self.rank {
                    return Err(CollError::OwnShardReduced { shard });
                }
                if self.have[shard] {
                    return Err(CollError::DuplicateReduced { shard });
                }
                self.check_len(shard, bytes.len())?;
                self.apply_reduced(shard, bytes)
            }
        }
    }

    /// Owner `shard`'s reduced bytes (`len` of them) arrived straight in
    /// the caller's output (exact, lending members only): the shard is
    /// final, with nothing to write.
    pub fn reduced_in_place(&mut self, shard: usize, len: usize) -> Result<(), CollError> {
        self.check_shard(shard)?;
        if shard == self.rank {
            return Err(CollError::OwnShardReduced { shard });
        }
        if self.codec.is_some() || !self.lending {
            return Err(CollError::UnknownShard(shard));
        }
        if self.have[shard] {
            return Err(CollError::DuplicateReduced { shard });
        }
        self.check_len(shard, len)?;
        self.have[shard] = true;
        self.remaining -= 1;
        Ok(())
    }

    fn check_shard(&self, shard: usize) -> Result<(), CollError> {
        if shard >= self.spec.n || self.spec.shard(shard).is_empty() {
            return Err(CollError::UnknownShard(shard));
        }
        Ok(())
    }

    fn check_len(&self, shard: usize, actual: usize) -> Result<(), CollError> {
        let expected = self.spec.payload_len(shard);
        if actual != expected {
            return Err(CollError::WrongLength {
                shard,
                expected,
                actual,
            });
        }
        Ok(())
    }

    /// Folds a contribution to the owned shard; once all are in, applies the
    /// reduced bytes locally exactly as receivers will, and appends their
    /// broadcast to `out`.
    fn accept_contribution(
        &mut self,
        from: usize,
        bytes: Vec<u8>,
        native: bool,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), CollError> {
        let reducer = self
            .reducer
            .as_mut()
            .ok_or(CollError::UnknownShard(self.rank))?;
        let accepted = if native {
            reducer.accept_native(from, bytes)?
        } else {
            reducer.accept(from, bytes)?
        };
        let Some(bytes) = accepted else {
            return Ok(());
        };
        let bytes = pool::share(bytes);
        self.apply_reduced(self.rank, Arc::clone(&bytes))?;
        let shard = self.rank;
        out.extend(
            (0..self.spec.n)
                .filter(|&to| to != shard)
                .map(|to| Outgoing {
                    to,
                    msg: Msg::Reduced {
                        shard,
                        bytes: Arc::clone(&bytes),
                    },
                }),
        );
        pool::give_shared(bytes);
        Ok(())
    }

    /// Shard `shard`'s final bytes: into the output, or handed out; FP8
    /// wire bytes are decoded first and then let go.
    fn apply_reduced(&mut self, shard: usize, bytes: Shared) -> Result<(), CollError> {
        let size = self.spec.dtype.size();
        let r = self.spec.shard(shard);
        let range = r.start * size..r.end * size;
        match (&self.codec, self.lending) {
            (None, false) => self.output[range].copy_from_slice(&bytes),
            (Some(c), false) => fp8_decode(c, self.spec.dtype, &bytes, &mut self.output[range])?,
            (None, true) => self.ready.push((range.start, bytes)),
            (Some(c), true) => {
                let mut out = pool::take(range.len());
                fp8_decode(c, self.spec.dtype, &bytes, &mut out)?;
                self.ready.push((range.start, pool::share(out)));
                pool::give_shared(bytes);
            }
        }
        self.have[shard] = true;
        self.remaining -= 1;
        Ok(())
    }
}
