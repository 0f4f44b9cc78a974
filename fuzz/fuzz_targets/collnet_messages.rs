//! Everything a collective-network member reads from its peers: the join
//! hello, and step messages of any member, lane and length. Each must be
//! accepted or rejected with an error, never panic or corrupt the step.
#![no_main]

use airamp::codec::WireFormat;
use airamp::collnet::join::MemberHello;
use airamp::collnet::steps::{Effects, Lane, Step};
use airamp::collnet::{DataType, Path, RedOp, Spec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    let _ = MemberHello::decode(rest, u32::from(head % 9) + 1, u32::from(head >> 4));
    let n = usize::from(head % 4) + 2;
    let path = match head >> 6 {
        0 => Path::Exact,
        f => Path::Compressed(WireFormat::ALL[usize::from(f) - 1]),
    };
    let spec = Spec { n, dtype: DataType::Bf16, op: RedOp::Sum, path, count: 100 };
    let Ok(mut step) = Step::all_reduce(spec, 0, 0) else { return };
    let mut fx = Effects::default();
    if step.start(&[0u8; 200], &mut fx).is_err() {
        return;
    }
    // Chop the rest into messages: [from, lane, len] + payload.
    let mut msgs = rest;
    while let [from, lane, len, tail @ ..] = msgs {
        let take = usize::from(*len).min(tail.len());
        let lane = if lane & 1 == 0 { Lane::Contrib } else { Lane::Result };
        let _ = step.on_message(usize::from(*from % 8), lane, tail[..take].to_vec(), &mut fx);
        msgs = &tail[take..];
    }
});
