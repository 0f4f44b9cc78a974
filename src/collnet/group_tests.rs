//! The group driver end to end in one process: N members over in-memory
//! links with seeded random delivery timing, several calls in flight, with
//! and without worker threads. Every member's output must equal the
//! sans-IO model's ([`super::sim::run`]) bit for bit.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::algo::{DataType, Path, RedOp};
use super::device::Place;
use super::group::{Group, GroupParams, SEGMENT_BYTES};
use super::link::mem::{mesh, Breaker};
use super::sim::{self, Call, SplitMix};
use crate::codec::{f32_to_bf16, WireFormat};
use crate::error::NetResult;
use crate::sys::RawBuf;

/// `n` groups joined by in-memory links, delivery timing drawn from
/// `seed`, and a breaker for every pipe (see [`mesh`]). With one worker,
/// light steps run on the caller's thread as in production; with more,
/// every step goes to the workers.
fn joined(
    n: usize,
    fp8: Option<WireFormat>,
    workers: usize,
    seed: u64,
) -> (Vec<Group>, Vec<Breaker>) {
    let (links, breakers) = mesh(n, seed);
    let groups = links
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let mut g = Group::from_links(GroupParams { rank, n, fp8 }, l, workers).expect("group");
            if workers > 1 {
                g.no_inline_steps();
            }
            g
        })
        .collect();
    (groups, breakers)
}

fn raw(v: &mut [u8]) -> Place {
    // SAFETY: the vectors outlive every call of the test and are not
    // touched by the test while the groups run.
    Place::Host(unsafe { RawBuf::new(v.as_mut_ptr(), v.len()) })
}

/// Runs `calls` allreduces of `count` elements on every member at once
/// and returns each member's outputs, call by call.
fn run_calls(
    groups: &mut [Group],
    inputs: &mut [Vec<Vec<u8>>],
    dtype: DataType,
    op: RedOp,
    count: usize,
) -> NetResult<Vec<Vec<Vec<u8>>>> {
    let n = groups.len();
    let calls = inputs[0].len();
    let mut outputs: Vec<Vec<Vec<u8>>> = (0..n)
        .map(|_| {
            (0..calls)
                .map(|_| vec![0xAA; count * dtype.size()])
                .collect()
        })
        .collect();
    let mut ids = vec![vec![]; n];
    for c in 0..calls {
        for (m, g) in groups.iter_mut().enumerate() {
            let input = raw(&mut inputs[m][c]);
            let output = raw(&mut outputs[m][c]);
            ids[m].push(Some(g.all_reduce(input, output, count, dtype, op)?));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.iter().flatten().any(Option::is_some) {
        assert!(Instant::now() < deadline, "group made no progress for 60 s");
        for (m, g) in groups.iter_mut().enumerate() {
            for slot in &mut ids[m] {
                if let Some(id) = *slot {
                    if g.test(id)?.is_some() {
                        *slot = None;
                    }
                }
            }
        }
        std::thread::yield_now();
    }
    Ok(outputs)
}

fn bf16_inputs(n: usize, calls: usize, count: usize, seed: u64) -> Vec<Vec<Vec<u8>>> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| {
            (0..calls)
                .map(|_| {
                    (0..count)
                        .flat_map(|_| f32_to_bf16(rng.gaussian() as f32).to_ne_bytes())
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn check(n: usize, fp8: Option<WireFormat>, workers: usize, count: usize, seed: u64) {
    let dtype = DataType::Bf16;
    let calls = 2;
    let mut inputs = bf16_inputs(n, calls, count, seed);
    let (mut groups, _) = joined(n, fp8, workers, seed);
    let outputs = run_calls(&mut groups, &mut inputs, dtype, RedOp::Sum, count).expect("calls");
    let call = Call {
        n,
        dtype,
        op: RedOp::Sum,
        path: fp8.map_or(Path::Exact, Path::Compressed),
        count,
        segment_elems: SEGMENT_BYTES / dtype.size(),
    };
    // Exact reduced shards arrive straight in the output; compressed ones
    // are decoded into it.
    for (m, g) in groups.iter().enumerate() {
        let in_place = g.received_in_place();
        match fp8 {
            None if count >= n * crate::codec::BLOCK => {
                assert!(in_place > 0, "member {m}: no result received in place")
            }
            None => {}
            Some(_) => assert_eq!(in_place, 0, "member {m}"),
        }
    }
    for c in 0..calls {
        let per_member: Vec<Vec<u8>> = inputs.iter().map(|m| m[c].clone()).collect();
        let want = sim::run(&call, &per_member, seed).expect("model");
        for m in 0..n {
            assert!(
                outputs[m][c] == want[m],
                "member {m} call {c}: output differs from the model (n={n}, fp8={fp8:?}, workers={workers}, count={count})"
            );
        }
    }
}

/// A training-like cycle of calls locks every member's call pattern at
/// the same period; the results stay the model's, and a call off the
/// cycle is a miss.
#[test]
fn the_call_pattern_locks_on_every_member_without_changing_results() {
    let (n, dtype, fp8) = (2, DataType::Bf16, Some(WireFormat::E4M3));
    let (mut groups, _) = joined(n, fp8, 2, 11);
    let cycle = [1000, 1000, 77];
    for (i, &count) in cycle.iter().cycle().take(5 * cycle.len()).enumerate() {
        let mut inputs = bf16_inputs(n, 1, count, i as u64);
        let outputs = run_calls(&mut groups, &mut inputs, dtype, RedOp::Sum, count).expect("call");
        let call = Call {
            n,
            dtype,
            op: RedOp::Sum,
            path: Path::Compressed(WireFormat::E4M3),
            count,
            segment_elems: SEGMENT_BYTES / dtype.size(),
        };
        let per_member: Vec<Vec<u8>> = inputs.iter().map(|m| m[0].clone()).collect();
        let want = sim::run(&call, &per_member, 11).expect("model");
        for m in 0..n {
            assert!(outputs[m][0] == want[m], "member {m} call {i}");
        }
    }
    for g in &groups {
        let p = g.call_pattern();
        assert_eq!((p.locked, p.misses, p.locks), (Some(3), 0, 1), "{p:?}");
        assert!(p.hits >= 1, "{p:?}");
    }
    let mut inputs = bf16_inputs(n, 1, 500, 99);
    run_calls(&mut groups, &mut inputs, dtype, RedOp::Sum, 500).expect("call");
    for g in &groups {
        let p = g.call_pattern();
        assert_eq!((p.locked, p.misses), (None, 1), "{p:?}");
    }
}

#[test]
fn exact_and_fp8_match_the_model_with_and_without_workers() {
    for n in [2, 3, 4] {
        for fp8 in [None, Some(WireFormat::E4M3)] {
            for workers in [0, 1, 2] {
                // A segment and a tail, so steps of one call overlap.
                check(n, fp8, workers, SEGMENT_BYTES / 2 + 77, 7 + n as u64);
            }
        }
    }
}

/// An in-place call (input and output one buffer, as NCCL allows): each
/// owner folds copies of its own input while the other members' results
/// land around it, and the result is the model's, with and without
/// workers.
#[test]
fn in_place_calls_reduce_to_the_model() {
    let (dtype, count) = (DataType::Bf16, SEGMENT_BYTES / 2 + 77);
    for (n, workers) in [(2, 0), (2, 2), (3, 2), (4, 0), (4, 2)] {
        let mut buffers = bf16_inputs(n, 1, count, 21 + workers as u64);
        let inputs: Vec<Vec<u8>> = buffers.iter().map(|m| m[0].clone()).collect();
        let (mut groups, _) = joined(n, None, workers, 21);
        let ids: Vec<u64> = groups
            .iter_mut()
            .zip(&mut buffers)
            .map(|(g, b)| {
                let place = raw(&mut b[0]);
                g.all_reduce(place.clone(), place, count, dtype, RedOp::Sum)
                    .expect("call")
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut done = vec![false; n];
        while !done.iter().all(|&d| d) {
            assert!(Instant::now() < deadline, "group made no progress for 60 s");
            for (m, g) in groups.iter_mut().enumerate() {
                done[m] = done[m] || g.test(ids[m]).expect("test").is_some();
            }
            std::thread::yield_now();
        }
        let call = Call {
            n,
            dtype,
            op: RedOp::Sum,
            path: Path::Exact,
            count,
            segment_elems: SEGMENT_BYTES / dtype.size(),
        };
        let want = sim::run(&call, &inputs, 21).expect("model");
        for m in 0..n {
            assert!(
                buffers[m][0] == want[m],
                "member {m} of {n}, {workers} workers"
            );
        }
    }
}

#[test]
fn eight_members_small_calls() {
    check(8, Some(WireFormat::E4M3), 2, 1000, 3);
    check(8, None, 0, 33, 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn any_delivery_order_gives_the_model_bytes(
        n in 2usize..6,
        count in 0usize..5000,
        fp8 in any::<bool>(),
        workers in 0usize..3,
        seed in any::<u64>(),
    ) {
        check(n, fp8.then_some(WireFormat::E4M3), workers, count, seed);
    }
}

/// Starts one bf16 allreduce on every member.
fn start_all(
    groups: &mut [Group],
    inputs: &mut [Vec<Vec<u8>>],
    outputs: &mut [Vec<u8>],
) -> Vec<u64> {
    let count = outputs[0].len() / 2;
    groups
        .iter_mut()
        .enumerate()
        .map(|(m, g)| {
            let (input, output) = (raw(&mut inputs[m][0]), raw(&mut outputs[m]));
            g.all_reduce(input, output, count, DataType::Bf16, RedOp::Sum)
                .expect("start")
        })
        .collect()
}

#[test]
fn a_slow_member_is_waited_for_not_failed() {
    let (n, count) = (3, 4096);
    let (mut groups, _) = joined(n, None, 1, 11);
    let mut inputs = bf16_inputs(n, 1, count, 11);
    let mut outputs = vec![vec![0u8; count * 2]; n];
    let ids = start_all(&mut groups, &mut inputs, &mut outputs);
    // Member 0 is never driven for 200 ms: the others keep waiting.
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        for m in 1..n {
            assert_eq!(groups[m].test(ids[m]).expect("no error"), None);
        }
    }
    let mut done = vec![false; n];
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.iter().any(|d| !d) {
        assert!(Instant::now() < deadline, "no progress once member 0 runs");
        for m in 0..n {
            if !done[m] {
                done[m] = groups[m].test(ids[m]).expect("no error").is_some();
            }
        }
    }
}

#[test]
fn a_broken_link_fails_its_member_and_closing_that_member_fails_the_rest() {
    let (n, count) = (3, 4096);
    let (mut groups, breakers) = joined(n, Some(WireFormat::E4M3), 1, 12);
    let mut inputs = bf16_inputs(n, 1, count, 12);
    let mut outputs = vec![vec![0u8; count * 2]; n];
    let ids = start_all(&mut groups, &mut inputs, &mut outputs);
    // Member 1's result lane from member 0 goes down before member 0 can
    // have reduced anything (nobody has been driven since the start), so
    // member 1 still waits on it and fails; once it is closed (as NCCL
    // does after an error), the members waiting for it fail too.
    breakers[n * 2 + 1].break_pipe();
    let deadline = Instant::now() + Duration::from_secs(10);
    while groups[1].test(ids[1]).is_ok() {
        assert!(
            Instant::now() < deadline,
            "member 1 did not see its broken link"
        );
    }
    drop(groups.remove(1));
    for m in [0, 1] {
        while groups[m].test(ids[if m == 0 { 0 } else { 2 }]).is_ok() {
            assert!(
                Instant::now() < deadline,
                "a closed member was not reported"
            );
        }
    }
}

/// How the same reduction cut into different calls on two members ended.
#[derive(Debug, PartialEq)]
enum Cut {
    /// Every call completed, both members with the same output bytes.
    Agreed,
    /// A member's call failed, naming the cause.
    Failed,
}

/// Member 0 reduces `count` bf16 values in one call, member 1 in two calls
/// split at `split` (NCCL does this when one rank registered a user
/// buffer and the other could not: one call per tensor on the first,
/// NCCL's chunks on the second). Fails the test if nothing ends in 20 s.
fn cut_differently(fp8: Option<WireFormat>, count: usize, split: usize) -> Cut {
    // The buffers are declared first so that they outlive the groups:
    // a failed member's other calls may still be in flight when this
    // returns.
    let mut inputs = bf16_inputs(2, 1, count, 13);
    let mut outputs = vec![vec![0u8; count * 2]; 2];
    let (mut groups, _) = joined(2, fp8, 1, 13);
    let whole = {
        let (input, output) = (raw(&mut inputs[0][0]), raw(&mut outputs[0]));
        groups[0].all_reduce(input, output, count, DataType::Bf16, RedOp::Sum)
    };
    let mut pending = vec![];
    match whole {
        Ok(id) => pending.push((0, id)),
        Err(_) => return Cut::Failed,
    }
    for (from, to) in [(0, split), (split, count)] {
        let input = raw(&mut inputs[1][0][from * 2..to * 2]);
        let output = raw(&mut outputs[1][from * 2..to * 2]);
        match groups[1].all_reduce(input, output, to - from, DataType::Bf16, RedOp::Sum) {
            Ok(id) => pending.push((1, id)),
            Err(_) => return Cut::Failed,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{fp8:?}, {count} split at {split}: {} calls still pending after 20 s",
            pending.len()
        );
        let mut still = Vec::new();
        for (m, id) in pending {
            match groups[m].test(id) {
                Ok(None) => still.push((m, id)),
                Ok(Some(_)) => {}
                Err(_) => return Cut::Failed,
            }
        }
        pending = still;
        std::thread::yield_now();
    }
    assert_eq!(
        outputs[0], outputs[1],
        "{fp8:?}, {count} split at {split}: outputs differ"
    );
    Cut::Agreed
}

/// Calls cut at segment boundaries carry the same messages, so the members
/// agree bit for bit; any other cut sends a message of another size than
/// the peer posted, and the members fail instead of hanging or returning
/// different sums. (A `gpu.mirror_budget` refusal on one rank only is one
/// way NCCL cuts a reduction differently on two ranks.)
#[test]
fn members_that_cut_a_reduction_into_different_calls_agree_or_fail() {
    let seg = SEGMENT_BYTES / DataType::Bf16.size();
    for fp8 in [None, Some(WireFormat::E4M3)] {
        assert_eq!(cut_differently(fp8, 2 * seg, seg), Cut::Agreed);
        assert_eq!(cut_differently(fp8, 3 * seg, seg + seg / 2), Cut::Failed);
        assert_eq!(cut_differently(fp8, 5 * seg / 2, seg / 2), Cut::Failed);
        assert_eq!(cut_differently(fp8, 4096, 1000), Cut::Failed);
    }
}
