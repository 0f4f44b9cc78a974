//! One allreduce segment run by GPU kernels on NCCL's device buffers,
//! compressed (FP8 or INT8) or exact (a sum of f32/f16/bf16).
//!
//! The same algorithm as [`super::algo::Member`], with the same bytes on the
//! wire, so members on the host path and on the GPU agree bit for bit:
//!
//! 1. start: encode every other member's shard of the input straight into
//!    pinned staging slots (one kernel each; exact: a copy kernel); once
//!    their event completes the slots go out as contributions;
//! 2. when every contribution to the owned shard has arrived (into pinned
//!    slots), one kernel folds them in member order with the own shard kept
//!    exact, encodes the reduced shard into a slot (exact: writes its
//!    elements) and decodes it into the owned part of the output; once its
//!    event completes the slot goes to every other member;
//! 3. each other member's reduced shard is decoded (exact: copied) into the
//!    output.
//!
//! Kernel launches and event records are asynchronous; completion is an
//! event query. The step is done once every kernel that reads its input
//! slots or writes its output has completed (NCCL reuses the buffers at
//! once).

use super::algo::{Path, Spec};
use super::device::{PinnedSlot, SlotPool};
use super::lend::{Payload, RecvBuf};
use super::steps::Lane;
use crate::error::{NetError, NetResult, PeerFailure};
use crate::gpu::{DevAddr, Elem, Fence, Fold, GpuQueue};

/// A message this step sends: to member `to` on `lane`.
pub struct GpuSend {
    pub to: usize,
    pub lane: Lane,
    pub bytes: Payload,
}

/// A receive this step expects, with the slot it lands in.
pub struct GpuExpect {
    pub from: usize,
    pub lane: Lane,
    pub buf: RecvBuf,
}

pub struct GpuStep {
    spec: Spec,
    rank: usize,
    elem: Elem,
    /// Device address of this segment's input and output.
    input: DevAddr,
    output: DevAddr,
    /// Encoded contributions, waiting for the start kernels' event.
    contributions: Vec<(usize, PinnedSlot)>,
    start_fence: Option<Fence>,
    started: bool,
    /// Received contributions to the owned shard, by member.
    received: Vec<Option<PinnedSlot>>,
    contributions_left: usize,
    /// Pointer table of the fold kernel (one wire address per member).
    table: Option<PinnedSlot>,
    /// The reduced shard's slot, until it is sent.
    reduced: Option<PinnedSlot>,
    reduce_fence: Option<Fence>,
    results_sent: bool,
    /// Decode kernels in flight, with the slots they read.
    decodes: Vec<(Fence, PinnedSlot)>,
    /// Reduced shards of other members not yet received.
    reduced_left: usize,
}

fn protocol(rank: usize, why: String) -> NetError {
    NetError::peer(
        format_args!("collnet member {rank} (GPU path)"),
        PeerFailure::Protocol(why),
    )
}

impl GpuStep {
    /// Staging slots a step of `spec` takes from the pool.
    pub fn slots_needed(spec: &Spec, rank: usize) -> usize {
        let others = (0..spec.n)
            .filter(|&s| s != rank && !spec.shard(s).is_empty())
            .count();
        let own = !spec.shard(rank).is_empty();
        // Out contributions and in reduced shards per other shard; in
        // contributions, the table and the reduced shard for our own.
        2 * others + if own { spec.n - 1 + 2 } else { 0 }
    }

    /// The segment of `spec` at device `input`/`output`, in the memory of
    /// a finished step if there is a `spare` (a steady call pattern then
    /// allocates nothing); takes its slots (the caller checked
    /// [`GpuStep::slots_needed`] are free) and appends the receives to
    /// post, in lane order, to `expects`.
    #[allow(clippy::too_many_arguments)]
    pub fn renew(
        spare: Option<Box<GpuStep>>,
        spec: Spec,
        rank: usize,
        elem: Elem,
        input: DevAddr,
        output: DevAddr,
        pool: &SlotPool,
        expects: &mut Vec<GpuExpect>,
    ) -> NetResult<Box<GpuStep>> {
        let mut spare = spare;
        let (mut contributions, mut received, mut decodes) = match spare.as_deref_mut() {
            Some(s) => (
                std::mem::take(&mut s.contributions),
                std::mem::take(&mut s.received),
                std::mem::take(&mut s.decodes),
            ),
            None => Default::default(),
        };
        contributions.clear();
        received.clear();
        decodes.clear();
        let n = spec.n;
        let no_slot = || NetError::Internal("GPU staging slots ran out".into());
        let own_len = spec.payload_len(rank);
        let own = !spec.shard(rank).is_empty();
        for j in (0..n).filter(|&j| j != rank) {
            if own {
                expects.push(GpuExpect {
                    from: j,
                    lane: Lane::Contrib,
                    buf: RecvBuf::Pinned(pool.take(own_len).ok_or_else(no_slot)?),
                });
            }
            if !spec.shard(j).is_empty() {
                let len = spec.payload_len(j);
                expects.push(GpuExpect {
                    from: j,
                    lane: Lane::Result,
                    buf: RecvBuf::Pinned(pool.take(len).ok_or_else(no_slot)?),
                });
            }
        }
        for s in (0..n).filter(|&s| s != rank && !spec.shard(s).is_empty()) {
            let len = spec.payload_len(s);
            contributions.push((s, pool.take(len).ok_or_else(no_slot)?));
        }
        let (table, reduced) = if own {
            (
                Some(pool.take(n * 8).ok_or_else(no_slot)?),
                Some(pool.take(own_len).ok_or_else(no_slot)?),
            )
        } else {
            (None, None)
        };
        let reduced_left = (0..n)
            .filter(|&s| s != rank && !spec.shard(s).is_empty())
            .count();
        received.resize_with(n, || None);
        let step = GpuStep {
            spec,
            rank,
            elem,
            input,
            output,
            contributions,
            start_fence: None,
            started: false,
            received,
            contributions_left: if own { n - 1 } else { 0 },
            table,
            reduced,
            reduce_fence: None,
            results_sent: !own,
            decodes,
            reduced_left,
        };
        Ok(match spare {
            Some(mut spare) => {
                *spare = step;
                spare
            }
            None => Box::new(step),
        })
    }

    fn at(&self, base: DevAddr, shard: usize) -> DevAddr {
        let first = self.spec.shard(shard).start;
        DevAddr(base.0 + (first * self.spec.dtype.size()) as u64)
    }

    /// Launches the encoders of every contribution.
    pub fn start(&mut self, q: &GpuQueue) -> NetResult<()> {
        for (s, slot) in &self.contributions {
            let n = self.spec.shard(*s).len();
            let src = self.at(self.input, *s);
            match self.spec.path {
                Path::Compressed(fmt) => q.encode(fmt, self.elem, src, n, slot.device_addr())?,
                Path::Exact => q.copy_async(slot.device_addr(), src, n * self.elem.size())?,
            }
        }
        self.start_fence = Some(q.record()?);
        // A lone member folds its own shard at once.
        self.maybe_reduce(q)
    }

    /// A message arrived in the slot this step gave for it.
    pub fn on_message(
        &mut self,
        q: &GpuQueue,
        from: usize,
        lane: Lane,
        buf: RecvBuf,
    ) -> NetResult<()> {
        let RecvBuf::Pinned(slot) = buf else {
            return Err(NetError::Internal(
                "GPU step received into heap memory".into(),
            ));
        };
        let rank = self.rank;
        if from >= self.spec.n || from == rank {
            return Err(protocol(rank, format!("message from member {from}")));
        }
        match lane {
            Lane::Contrib => {
                let want = self.spec.payload_len(rank);
                if slot.len() != want || self.received[from].is_some() {
                    return Err(protocol(
                        rank,
                        format!("contribution of {} bytes from member {from}", slot.len()),
                    ));
                }
                self.received[from] = Some(slot);
                self.contributions_left -= 1;
                self.maybe_reduce(q)
            }
            Lane::Result => {
                let count = self.spec.shard(from).len();
                if slot.len() != self.spec.payload_len(from) || self.reduced_left == 0 {
                    return Err(protocol(
                        rank,
                        format!("reduced shard of {} bytes from member {from}", slot.len()),
                    ));
                }
                let dst = self.at(self.output, from);
                match self.spec.path {
                    Path::Compressed(fmt) => {
                        q.decode(fmt, self.elem, slot.device_addr(), count, dst)?
                    }
                    Path::Exact => {
                        q.copy_async(dst, slot.device_addr(), count * self.elem.size())?
                    }
                }
                self.decodes.push((q.record()?, slot));
                self.reduced_left -= 1;
                Ok(())
            }
        }
    }

    /// Once every contribution is in: one kernel folds, encodes the reduced
    /// shard and decodes it into the owned part of the output.
    fn maybe_reduce(&mut self, q: &GpuQueue) -> NetResult<()> {
        if self.contributions_left > 0 || self.reduce_fence.is_some() || self.results_sent {
            return Ok(());
        }
        let own_src = self.at(self.input, self.rank);
        let own_dst = self.at(self.output, self.rank);
        let (Some(table), Some(reduced)) = (self.table.as_mut(), self.reduced.as_ref()) else {
            return Ok(());
        };
        table.write_u64s(
            self.received
                .iter()
                .map(|s| s.as_ref().map_or(0, |s| s.device_addr().0)),
        );
        let count = self.spec.shard(self.rank).len();
        let fold = Fold {
            members: self.spec.n,
            own_index: self.rank,
            own_src,
            wire_table: table.device_addr(),
            n: count,
            wire_out: reduced.device_addr(),
            dst: own_dst,
        };
        match self.spec.path {
            Path::Compressed(fmt) => q.reduce_encode(fmt, self.elem, &fold)?,
            Path::Exact => q.reduce_exact(self.elem, &fold)?,
        }
        self.reduce_fence = Some(q.record()?);
        Ok(())
    }

    /// Appends to `out` the messages whose kernels have completed, ready
    /// to go out.
    pub fn poll(&mut self, out: &mut Vec<GpuSend>) -> NetResult<()> {
        if !self.started && fence_done(&self.start_fence)? {
            self.started = true;
            self.start_fence = None;
            out.extend(self.contributions.drain(..).map(|(to, slot)| GpuSend {
                to,
                lane: Lane::Contrib,
                bytes: Payload::Pinned(slot),
            }));
        }
        if !self.results_sent && self.reduce_fence.is_some() && fence_done(&self.reduce_fence)? {
            self.results_sent = true;
            self.reduce_fence = None;
            // The fold read its inputs: their slots can be reused.
            self.received.iter_mut().for_each(|s| *s = None);
            self.table = None;
            let bytes = self.reduced.take().expect("reduced slot of an owned shard");
            out.extend(
                (0..self.spec.n)
                    .filter(|&to| to != self.rank)
                    .map(|to| GpuSend {
                        to,
                        lane: Lane::Result,
                        bytes: Payload::Pinned(bytes.clone()),
                    }),
            );
        }
        let mut i = 0;
        while i < self.decodes.len() {
            if self.decodes[i].0.is_complete()? {
                self.decodes.swap_remove(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Every contribution has been handed out.
    pub fn started(&self) -> bool {
        self.started
    }

    /// This step sends nothing more on the result lane.
    pub fn result_lane_closed(&self) -> bool {
        self.results_sent
    }

    /// Every kernel reading NCCL's input or writing its output completed.
    pub fn is_done(&self) -> bool {
        self.started && self.results_sent && self.reduced_left == 0 && self.decodes.is_empty()
    }
}

fn fence_done(fence: &Option<Fence>) -> NetResult<bool> {
    match fence {
        Some(f) => Ok(f.is_complete()?),
        None => Ok(true),
    }
}
