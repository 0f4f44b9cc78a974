//! The unit of work the group driver schedules: one *step* of a collective,
//! without I/O.
//!
//! A step knows, before it starts, every message it will receive (so the
//! driver can post receives early), turns its input into messages when it
//! starts, and turns each arriving message into more messages and output
//! writes. Messages travel on one of two [`Lane`]s per ordered pair of
//! members; the driver keeps each lane in step order, which is what lets a
//! receiver post its receives in that order:
//!
//! * [`Lane::Contrib`] carries what a member sends at the start of a step
//!   (allreduce and reduce-scatter contributions);
//! * [`Lane::Result`] carries what is only known later (an owner's reduced
//!   shard) and allgather pieces.
//!
//! Steps: [`Step::AllReduce`] wraps one [`Member`] segment;
//! [`Step::AllGather`] and [`Step::ReduceScatter`] implement NCCL's windowed
//! `iallgather`/`ireducescatter` (exact only), see [`Window`].

use std::ops::Range;
use std::sync::Arc;

use super::algo::{
    CollError, DataType, InPlaceReducer, Member, Msg, Outgoing, Path, RedOp, Reducer, Spec,
};
use super::pool::{self, Shared};

/// Which of the two links from one member to another a message uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    Contrib = 0,
    Result = 1,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Contrib, Lane::Result];
}

/// A message for member `to`.
#[derive(Clone, Debug)]
pub struct Send {
    pub to: usize,
    pub lane: Lane,
    pub bytes: SendBytes,
}

/// What a message carries.
#[derive(Clone, Debug)]
pub enum SendBytes {
    /// Bytes the step produced.
    Owned(Shared),
    /// Bytes of the call's input, as they are (exact contributions): the
    /// driver may send them straight from the caller's buffer.
    Input(Range<usize>),
    /// Bytes of the call's output, once written (an exact reduced shard,
    /// folded in place): sent straight from the caller's buffer.
    Output(Range<usize>),
}

/// A message this step will receive from `from`, of exactly `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub from: usize,
    pub lane: Lane,
    pub len: usize,
    /// The message is the call's output at this byte offset, verbatim (an
    /// exact reduced shard, an allgather piece): the driver may receive it
    /// in place and report it with [`Step::in_place`] instead of
    /// [`Step::on_message`].
    pub into_output: Option<usize>,
}

/// Bytes to write at `offset` of the call's output.
#[derive(Debug)]
pub struct Write {
    pub offset: usize,
    pub bytes: Shared,
}

/// What handling an event produced.
#[derive(Debug, Default)]
pub struct Effects {
    pub sends: Vec<Send>,
    pub writes: Vec<Write>,
}

/// NCCL's window of an `iallgather` or `ireducescatter`: `bytes` bytes at
/// `offset` of the logical buffer of `n * bytes_per_rank` bytes, member
/// `r`'s slot being `r * bytes_per_rank..(r + 1) * bytes_per_rank`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub bytes_per_rank: usize,
    pub offset: usize,
    pub bytes: usize,
}

impl Window {
    /// The part of the window that belongs to member `r`, relative to the
    /// window's start. Empty when member `r`'s slot does not meet it.
    pub fn piece(&self, r: usize) -> Range<usize> {
        let slot_start = r.saturating_mul(self.bytes_per_rank);
        let slot_end = slot_start.saturating_add(self.bytes_per_rank);
        let end_of_window = self.offset.saturating_add(self.bytes);
        let start = slot_start.max(self.offset);
        let end = slot_end.min(end_of_window);
        if start >= end {
            return 0..0;
        }
        start - self.offset..end - self.offset
    }

    /// Every one of `n` members' pieces, into `out` (emptied first).
    fn pieces_into(&self, n: usize, out: &mut Vec<Range<usize>>) {
        out.clear();
        out.extend((0..n).map(|r| self.piece(r)));
    }
}

/// One allreduce segment: `count` elements starting at byte `offset` of the
/// call's buffers.
pub struct AllReduceStep {
    spec: Spec,
    rank: usize,
    offset: usize,
    member: Option<Member>,
    /// An exact reduction of two or more members runs without a
    /// [`Member`]: see [`InPlace`].
    in_place: Option<Box<InPlace>>,
    /// Its contributions went out before it started
    /// ([`Step::take_early_contributions`]).
    sent_early: bool,
    /// The member's messages on their way to [`Effects::sends`] (a list
    /// kept for the next segment).
    outgoing: Vec<Outgoing>,
}

/// An exact allreduce segment as the host reduces it with the least memory
/// traffic (on these hosts its copies, not the wire, set the pace): the
/// other members' contributions are folded with this member's own input,
/// where it lies, and the last fold writes straight into the output
/// ([`Step::on_contribution`], [`InPlaceReducer`]); the reduced shard is
/// sent from there, and the others' land in the output as they arrive. The
/// protocol on the wire is [`Member`]'s: other members may run either. Bit
/// for bit the same result.
#[derive(Default)]
struct InPlace {
    /// The own shard's reduction; `None` once it is in the output and
    /// queued to the others, or when the shard is empty.
    reducer: Option<InPlaceReducer>,
    /// Other members whose reduced shard is not in the output yet.
    awaited: Vec<bool>,
    /// The reduction once done, kept for its memory ([`Step::renew_all_reduce`]).
    spent: Option<InPlaceReducer>,
}

/// One windowed allgather: member `r` contributes `pieces[r]` (window
/// relative) and everyone ends with the whole window.
pub struct AllGatherStep {
    rank: usize,
    pieces: Vec<Range<usize>>,
}

/// One windowed reduce-scatter: the input is the window; member `r` ends
/// with the reduction of `pieces[r]` written at offset 0 of its output.
pub struct ReduceScatterStep {
    rank: usize,
    window_bytes: usize,
    pieces: Vec<Range<usize>>,
    reducer: Option<Reducer>,
    sent_early: bool,
}

pub enum Step {
    AllReduce(AllReduceStep),
    AllGather(AllGatherStep),
    ReduceScatter(ReduceScatterStep),
}

/// What a step holds, as an index: a finished step is kept for a later
/// step of the same kind, which reuses its lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// An exact allreduce segment of two or more members ([`InPlace`]).
    AllReduceInPlace = 0,
    /// Any other allreduce segment: compressed, or one member ([`Member`]).
    AllReduceMember = 1,
    AllGather = 2,
    ReduceScatter = 3,
}

impl StepKind {
    pub const COUNT: usize = 4;

    /// The kind of an allreduce segment of `spec`.
    pub fn all_reduce(spec: &Spec) -> StepKind {
        if spec.n >= 2 && spec.path == Path::Exact {
            StepKind::AllReduceInPlace
        } else {
            StepKind::AllReduceMember
        }
    }
}

/// Moves a member's messages onto their lanes.
fn map_outgoing(out: &mut Vec<Outgoing>, sends: &mut Vec<Send>) {
    sends.extend(out.drain(..).map(|o| match o.msg {
        Msg::Contribution { bytes, .. } => Send {
            to: o.to,
            lane: Lane::Contrib,
            bytes: SendBytes::Owned(pool::share(bytes)),
        },
        Msg::Reduced { bytes, .. } => Send {
            to: o.to,
            lane: Lane::Result,
            bytes: SendBytes::Owned(bytes),
        },
    }));
}

/// What a finished allreduce segment leaves for the next one's memory.
#[derive(Default)]
struct AllReduceSpare {
    in_place: Option<Box<InPlace>>,
    member: Option<Member>,
    outgoing: Vec<Outgoing>,
}

impl Step {
    /// A segment of an allreduce; `offset` is in bytes.
    pub fn all_reduce(spec: Spec, rank: usize, offset: usize) -> Result<Step, CollError> {
        Self::all_reduce_in(AllReduceSpare::default(), spec, rank, offset)
    }

    /// [`Step::all_reduce`] in the memory of a finished step: its box and
    /// its lists (an exact segment's reduction, a compressed one's member).
    /// Calls of a steady pattern allocate no steps.
    pub fn renew_all_reduce(
        mut spare: Box<Step>,
        spec: Spec,
        rank: usize,
        offset: usize,
    ) -> Result<Box<Step>, CollError> {
        let kept = match &mut *spare {
            Step::AllReduce(s) => AllReduceSpare {
                in_place: s.in_place.take(),
                member: s.member.take(),
                outgoing: std::mem::take(&mut s.outgoing),
            },
            _ => AllReduceSpare::default(),
        };
        *spare = Self::all_reduce_in(kept, spec, rank, offset)?;
        Ok(spare)
    }

    /// What this step holds ([`StepKind`]).
    pub fn kind(&self) -> StepKind {
        match self {
            Step::AllReduce(s) => StepKind::all_reduce(&s.spec),
            Step::AllGather(_) => StepKind::AllGather,
            Step::ReduceScatter(_) => StepKind::ReduceScatter,
        }
    }

    fn all_reduce_in(
        spare: AllReduceSpare,
        spec: Spec,
        rank: usize,
        offset: usize,
    ) -> Result<Step, CollError> {
        spec.validate()?;
        if rank >= spec.n {
            return Err(CollError::BadRank { rank, n: spec.n });
        }
        let AllReduceSpare {
            in_place,
            member,
            mut outgoing,
        } = spare;
        outgoing.clear();
        let mut step = AllReduceStep {
            spec,
            rank,
            offset,
            member: None,
            in_place: None,
            sent_early: false,
            outgoing,
        };
        if StepKind::all_reduce(&spec) == StepKind::AllReduceMember {
            step.member = Some(Member::renew_lending(member, spec, rank)?);
        } else {
            let own = step.shard_bytes(rank).len();
            let mut p = in_place.unwrap_or_default();
            let reducer = p.reducer.take().or(p.spent.take());
            if own > 0 {
                p.reducer = Some(InPlaceReducer::renew(
                    reducer, spec.dtype, spec.op, spec.n, rank, own,
                )?);
            } else {
                p.spent = reducer;
            }
            p.awaited.clear();
            p.awaited
                .extend((0..spec.n).map(|j| j != rank && !spec.shard(j).is_empty()));
            step.in_place = Some(p);
        }
        Ok(Step::AllReduce(step))
    }

    pub fn all_gather(n: usize, rank: usize, window: Window) -> Result<Step, CollError> {
        Self::all_gather_in(Vec::with_capacity(n), n, rank, window)
    }

    /// [`Step::all_gather`] in the memory of a finished step (its box, and
    /// an allgather's piece list).
    pub fn renew_all_gather(
        mut spare: Box<Step>,
        n: usize,
        rank: usize,
        window: Window,
    ) -> Result<Box<Step>, CollError> {
        let pieces = match &mut *spare {
            Step::AllGather(s) => std::mem::take(&mut s.pieces),
            _ => Vec::new(),
        };
        *spare = Self::all_gather_in(pieces, n, rank, window)?;
        Ok(spare)
    }

    fn all_gather_in(
        mut pieces: Vec<Range<usize>>,
        n: usize,
        rank: usize,
        window: Window,
    ) -> Result<Step, CollError> {
        if rank >= n {
            return Err(CollError::BadRank { rank, n });
        }
        window.pieces_into(n, &mut pieces);
        Ok(Step::AllGather(AllGatherStep { rank, pieces }))
    }

    pub fn reduce_scatter(
        n: usize,
        rank: usize,
        dtype: DataType,
        op: RedOp,
        window: Window,
    ) -> Result<Step, CollError> {
        Self::reduce_scatter_in(None, Vec::with_capacity(n), n, rank, dtype, op, window)
    }

    /// [`Step::reduce_scatter`] in the memory of a finished step (its box,
    /// and a reduce-scatter's piece list and reducer).
    pub fn renew_reduce_scatter(
        mut spare: Box<Step>,
        n: usize,
        rank: usize,
        dtype: DataType,
        op: RedOp,
        window: Window,
    ) -> Result<Box<Step>, CollError> {
        let (reducer, pieces) = match &mut *spare {
            Step::ReduceScatter(s) => (s.reducer.take(), std::mem::take(&mut s.pieces)),
            _ => (None, Vec::new()),
        };
        *spare = Self::reduce_scatter_in(reducer, pieces, n, rank, dtype, op, window)?;
        Ok(spare)
    }

    fn reduce_scatter_in(
        spare: Option<Reducer>,
        mut pieces: Vec<Range<usize>>,
        n: usize,
        rank: usize,
        dtype: DataType,
        op: RedOp,
        window: Window,
    ) -> Result<Step, CollError> {
        if rank >= n {
            return Err(CollError::BadRank { rank, n });
        }
        window.pieces_into(n, &mut pieces);
        let size = dtype.size();
        if pieces
            .iter()
            .any(|p| p.start % size != 0 || p.len() % size != 0)
        {
            return Err(CollError::InputLength {
                expected: size,
                actual: window.offset % size + window.bytes % size + window.bytes_per_rank % size,
            });
        }
        let own = pieces[rank].len() / size;
        let reducer = (own > 0).then(|| Reducer::renew(spare, dtype, op, None, n, rank, own));
        Ok(Step::ReduceScatter(ReduceScatterStep {
            rank,
            window_bytes: window.bytes,
            pieces,
            reducer,
            sent_early: false,
        }))
    }

    /// Every contribution of this step, when they are ranges of the
    /// caller's input sent as they are (exact allreduce segments,
    /// reduce-scatter windows): the driver can send them when it admits the
    /// step, before a worker starts it, and [`Step::start`] then leaves
    /// them out. They are appended to `out`; false when producing them
    /// takes work (encoding).
    pub fn take_early_contributions(&mut self, out: &mut Vec<Send>) -> bool {
        match self {
            Step::AllReduce(s) if s.spec.path == Path::Exact => {
                s.sent_early = true;
                s.exact_contributions(out);
                true
            }
            Step::ReduceScatter(s) => {
                s.sent_early = true;
                s.contributions(out);
                true
            }
            Step::AllReduce(_) | Step::AllGather(_) => false,
        }
    }

    /// Bytes of the caller's input this step reads at start:
    /// `(offset, len)` in the call's send buffer.
    pub fn input_range(&self) -> Range<usize> {
        match self {
            Step::AllReduce(s) => s.offset..s.offset + s.spec.input_bytes(),
            Step::AllGather(s) => 0..s.pieces[s.rank].len(),
            Step::ReduceScatter(s) => 0..s.window_bytes,
        }
    }

    /// The bytes of the call this step covers, when it runs no codec (an
    /// exact allreduce segment, an allgather or reduce-scatter window):
    /// its work is then only copies and folds over about that many bytes.
    /// `None` for a compressed allreduce segment (encode and decode).
    pub fn exact_bytes(&self) -> Option<usize> {
        match self {
            Step::AllReduce(s) => (s.spec.path == Path::Exact).then(|| s.spec.input_bytes()),
            Step::AllGather(s) => Some(s.pieces.iter().map(|p| p.len()).sum()),
            Step::ReduceScatter(s) => Some(s.window_bytes),
        }
    }

    /// Every message this step will receive, known before it starts,
    /// appended to `out`.
    pub fn expects(&self, out: &mut Vec<Expect>) {
        match self {
            Step::AllReduce(s) => {
                let own = s.spec.payload_len(s.rank);
                for j in (0..s.spec.n).filter(|&j| j != s.rank) {
                    if !s.spec.shard(s.rank).is_empty() {
                        out.push(Expect {
                            from: j,
                            lane: Lane::Contrib,
                            len: own,
                            into_output: None,
                        });
                    }
                    if !s.spec.shard(j).is_empty() {
                        out.push(Expect {
                            from: j,
                            lane: Lane::Result,
                            len: s.spec.payload_len(j),
                            into_output: (s.spec.path == Path::Exact)
                                .then(|| s.shard_bytes(j).start),
                        });
                    }
                }
            }
            Step::AllGather(s) => {
                for (j, p) in s.pieces.iter().enumerate() {
                    if j != s.rank && !p.is_empty() {
                        out.push(Expect {
                            from: j,
                            lane: Lane::Result,
                            len: p.len(),
                            into_output: Some(p.start),
                        });
                    }
                }
            }
            Step::ReduceScatter(s) => {
                let own = s.pieces[s.rank].len();
                if own > 0 {
                    for j in (0..s.pieces.len()).filter(|&j| j != s.rank) {
                        out.push(Expect {
                            from: j,
                            lane: Lane::Contrib,
                            len: own,
                            into_output: None,
                        });
                    }
                }
            }
        }
    }

    /// Starts the step on the bytes of [`Step::input_range`]; what that
    /// produced is appended to `fx`.
    pub fn start(&mut self, input: &[u8], fx: &mut Effects) -> Result<(), CollError> {
        match self {
            Step::AllReduce(s) if s.in_place.is_some() => {
                if input.len() != s.spec.input_bytes() {
                    return Err(CollError::InputLength {
                        expected: s.spec.input_bytes(),
                        actual: input.len(),
                    });
                }
                if !s.sent_early {
                    s.exact_contributions(&mut fx.sends);
                }
            }
            Step::AllReduce(s) => {
                let member = s
                    .member
                    .as_mut()
                    .expect("a segment not folded in place has a member");
                member.start(input, &mut s.outgoing)?;
                if s.spec.path == Path::Exact && !s.sent_early {
                    s.exact_contributions(&mut fx.sends);
                }
                map_outgoing(&mut s.outgoing, &mut fx.sends);
                s.collect_output(fx);
            }
            Step::AllGather(s) => {
                let own = &s.pieces[s.rank];
                if input.len() != own.len() {
                    return Err(CollError::InputLength {
                        expected: own.len(),
                        actual: input.len(),
                    });
                }
                if !own.is_empty() {
                    let bytes: Shared = pool::share(pool::copy_of(input));
                    for to in (0..s.pieces.len()).filter(|&to| to != s.rank) {
                        fx.sends.push(Send {
                            to,
                            lane: Lane::Result,
                            bytes: SendBytes::Owned(Arc::clone(&bytes)),
                        });
                    }
                    fx.writes.push(Write {
                        offset: own.start,
                        bytes,
                    });
                }
            }
            Step::ReduceScatter(s) => {
                if let Some(p) = s.pieces.iter().find(|p| p.end > input.len()) {
                    return Err(CollError::InputLength {
                        expected: p.end,
                        actual: input.len(),
                    });
                }
                if !s.sent_early {
                    s.contributions(&mut fx.sends);
                }
                let own = s.pieces[s.rank].clone();
                if !own.is_empty() {
                    let mine = pool::copy_of(&input[own]);
                    s.fold(s.rank, mine, fx)?;
                }
            }
        }
        Ok(())
    }

    /// Handles the message this step expected from `from` on `lane`; what
    /// that produced is appended to `fx`.
    pub fn on_message(
        &mut self,
        from: usize,
        lane: Lane,
        bytes: Vec<u8>,
        fx: &mut Effects,
    ) -> Result<(), CollError> {
        match self {
            Step::AllReduce(s) if s.in_place.is_some() => {
                // Contributions are folded in `on_contribution`; a reduced
                // shard comes here when it could not land in place.
                let range = s.other_result(from, lane, bytes.len())?;
                fx.writes.push(Write {
                    offset: range.start,
                    bytes: pool::share(bytes),
                });
            }
            Step::AllReduce(s) => {
                let member = s.member.as_mut().ok_or(CollError::UnknownMember(from))?;
                let msg = match lane {
                    Lane::Contrib => Msg::Contribution {
                        from,
                        shard: s.rank,
                        bytes,
                    },
                    Lane::Result => Msg::Reduced {
                        shard: from,
                        bytes: pool::share(bytes),
                    },
                };
                member.on_message_into(msg, &mut s.outgoing)?;
                map_outgoing(&mut s.outgoing, &mut fx.sends);
                s.collect_output(fx);
            }
            Step::AllGather(s) => {
                let offset = s.piece_of(from, lane, bytes.len())?.start;
                fx.writes.push(Write {
                    offset,
                    bytes: pool::share(bytes),
                });
            }
            Step::ReduceScatter(s) => {
                if lane != Lane::Contrib {
                    return Err(CollError::UnknownMember(from));
                }
                s.fold(from, bytes, fx)?;
            }
        }
        Ok(())
    }

    /// Whether a message on `lane` is handled with the step's input and
    /// output bytes ([`Step::on_contribution`]) rather than by
    /// [`Step::on_message`].
    pub fn folds_in_place(&self, lane: Lane) -> bool {
        matches!(self, Step::AllReduce(s) if s.in_place.is_some() && lane == Lane::Contrib)
    }

    /// The bytes [`Step::on_contribution`] folds: this member's shard, of
    /// the input it reads and of the output it fills.
    pub fn fold_range(&self) -> Range<usize> {
        match self {
            Step::AllReduce(s) => s.shard_bytes(s.rank),
            _ => 0..0,
        }
    }

    /// Whether [`Step::on_contribution`] reads `mine` for the contribution
    /// `from` sent on `lane`; when not, the caller may pass it empty.
    pub fn reads_own_input(&self, from: usize, lane: Lane) -> bool {
        match self {
            Step::AllReduce(AllReduceStep {
                in_place: Some(p), ..
            }) if lane == Lane::Contrib => p.reducer.as_ref().is_some_and(|r| r.reads_mine(from)),
            _ => false,
        }
    }

    /// Folds the contribution that `from` sent on `lane` with `mine` (the
    /// input's bytes of [`Step::fold_range`], empty unless
    /// [`Step::reads_own_input`]) into `out` (the output's), for steps that
    /// [`Step::folds_in_place`]. Once the shard is reduced, the messages
    /// that send it on are appended to `sends`.
    pub fn on_contribution(
        &mut self,
        from: usize,
        lane: Lane,
        bytes: Vec<u8>,
        mine: &[u8],
        out: &mut [u8],
        sends: &mut Vec<Send>,
    ) -> Result<(), CollError> {
        let Step::AllReduce(s) = self else {
            return Err(CollError::UnknownMember(from));
        };
        let own = s.shard_bytes(s.rank);
        let Some(p) = s.in_place.as_mut().filter(|_| lane == Lane::Contrib) else {
            return Err(CollError::UnknownMember(from));
        };
        let Some(reducer) = p.reducer.as_mut() else {
            return Err(if own.is_empty() {
                CollError::UnknownShard(s.rank)
            } else {
                CollError::DuplicateContribution {
                    from,
                    shard: s.rank,
                }
            });
        };
        if out.len() != own.len() {
            return Err(CollError::InputLength {
                expected: own.len(),
                actual: out.len(),
            });
        }
        if !reducer.accept(from, bytes, mine, out)? {
            return Ok(());
        }
        p.spent = p.reducer.take();
        sends.extend((0..s.spec.n).filter(|&to| to != s.rank).map(|to| Send {
            to,
            lane: Lane::Result,
            bytes: SendBytes::Output(own.clone()),
        }));
        Ok(())
    }

    /// The message this step expected from `from` on `lane` arrived as
    /// `len` bytes straight into the call's output, where its
    /// [`Expect::into_output`] said: nothing to copy, only to account for.
    pub fn in_place(&mut self, from: usize, lane: Lane, len: usize) -> Result<(), CollError> {
        match self {
            Step::AllReduce(s) if s.in_place.is_some() => s.other_result(from, lane, len).map(drop),
            Step::AllReduce(s) if lane == Lane::Result && s.spec.path == Path::Exact => s
                .member
                .as_mut()
                .ok_or(CollError::UnknownMember(from))?
                .reduced_in_place(from, len),
            Step::AllGather(s) => s.piece_of(from, lane, len).map(drop),
            _ => Err(CollError::UnknownMember(from)),
        }
    }

    /// Every output byte of this step has been written.
    pub fn is_done(&self) -> bool {
        match self {
            // Shards are written out in the event that made them final.
            Step::AllReduce(AllReduceStep {
                in_place: Some(p), ..
            }) => p.reducer.is_none() && !p.awaited.contains(&true),
            Step::AllReduce(s) => s.member.as_ref().is_some_and(Member::is_done),
            // Done once every expected piece arrived: the driver counts them.
            Step::AllGather(_) => true,
            Step::ReduceScatter(s) => s.reducer.as_ref().is_none_or(Reducer::is_done),
        }
    }

    /// The sampled FP8 quantization error of this member's reduction.
    pub fn sampled_error(&self) -> Option<f64> {
        match self {
            Step::AllReduce(s) => s.member.as_ref().and_then(Member::sampled_error),
            _ => None,
        }
    }

    /// This step will produce no more [`Lane::Result`] messages, so later
    /// steps may use that lane.
    pub fn result_lane_closed(&self) -> bool {
        match self {
            Step::AllReduce(AllReduceStep {
                in_place: Some(p), ..
            }) => p.reducer.is_none(),
            Step::AllReduce(s) => s.member.as_ref().is_some_and(Member::sent_everything),
            Step::AllGather(_) | Step::ReduceScatter(_) => true,
        }
    }
}

impl AllReduceStep {
    /// Member `j`'s shard as bytes of the call's buffers.
    fn shard_bytes(&self, j: usize) -> Range<usize> {
        let (r, size) = (self.spec.shard(j), self.spec.dtype.size());
        self.offset + r.start * size..self.offset + r.end * size
    }

    /// The exact path's contributions: every other member's shard of the
    /// input, as it is.
    fn exact_contributions(&self, out: &mut Vec<Send>) {
        out.extend(
            (0..self.spec.n)
                .filter(|&to| to != self.rank && !self.spec.shard(to).is_empty())
                .map(|to| Send {
                    to,
                    lane: Lane::Contrib,
                    bytes: SendBytes::Input(self.shard_bytes(to)),
                }),
        );
    }

    /// Member `from`'s reduced shard, `len` bytes on `lane`, for an
    /// in-place segment: checked, and counted as in.
    fn other_result(
        &mut self,
        from: usize,
        lane: Lane,
        len: usize,
    ) -> Result<Range<usize>, CollError> {
        if from >= self.spec.n {
            return Err(CollError::UnknownMember(from));
        }
        if from == self.rank {
            return Err(CollError::OwnShardReduced { shard: from });
        }
        if self.spec.shard(from).is_empty() {
            return Err(CollError::UnknownShard(from));
        }
        let range = self.shard_bytes(from);
        let Some(p) = self.in_place.as_mut() else {
            return Err(CollError::UnknownMember(from));
        };
        if !p.awaited[from] {
            return Err(CollError::DuplicateReduced { shard: from });
        }
        if lane != Lane::Result {
            return Err(CollError::UnknownMember(from));
        }
        if len != range.len() {
            return Err(CollError::WrongLength {
                shard: from,
                expected: range.len(),
                actual: len,
            });
        }
        p.awaited[from] = false;
        Ok(range)
    }

    /// Writes each shard into the caller's output as soon as it is final.
    fn collect_output(&mut self, fx: &mut Effects) {
        if let Some(m) = &mut self.member {
            let at = self.offset;
            fx.writes
                .extend(m.drain_ready().map(|(offset, bytes)| Write {
                    offset: at + offset,
                    bytes,
                }));
        }
    }
}

impl AllGatherStep {
    /// Member `from`'s piece, checked against a message of `len` bytes on
    /// `lane`.
    fn piece_of(&self, from: usize, lane: Lane, len: usize) -> Result<Range<usize>, CollError> {
        let piece = self
            .pieces
            .get(from)
            .filter(|p| lane == Lane::Result && from != self.rank && !p.is_empty())
            .ok_or(CollError::UnknownMember(from))?;
        if len != piece.len() {
            return Err(CollError::WrongLength {
                shard: from,
                expected: piece.len(),
                actual: len,
            });
        }
        Ok(piece.clone())
    }
}

impl ReduceScatterStep {
    /// Every other member's piece of the window, as it is.
    fn contributions(&self, out: &mut Vec<Send>) {
        out.extend(
            self.pieces
                .iter()
                .enumerate()
                .filter(|(to, p)| *to != self.rank && !p.is_empty())
                .map(|(to, p)| Send {
                    to,
                    lane: Lane::Contrib,
                    bytes: SendBytes::Input(p.clone()),
                }),
        );
    }

    fn fold(&mut self, from: usize, bytes: Vec<u8>, fx: &mut Effects) -> Result<(), CollError> {
        let Some(reducer) = self.reducer.as_mut() else {
            return Err(CollError::UnknownShard(self.rank));
        };
        if let Some(out) = reducer.accept(from, bytes)? {
            fx.writes.push(Write {
                offset: 0,
                bytes: pool::share(out),
            });
        }
        Ok(())
    }
}
