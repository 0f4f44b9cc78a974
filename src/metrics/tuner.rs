//! `airamp_tuner_decisions_total{collective,algorithm,protocol}`: what the
//! tuner left NCCL to pick for each `getCollInfo` call (one relaxed atomic
//! add per call, no lock, no allocation).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `ncclFunc_t` values 0..=14 (`tuner::COLLECTIVE_NAMES`), then `other`.
const COLLECTIVES: usize = crate::tuner::COLLECTIVE_NAMES.len() + 1;
/// NCCL's algorithm indices 0..=6, then `nccl`: NCCL decides after us and
/// the tuner cannot tell what (tuner v2 when it leaves the choice alone).
const ALGORITHMS: [&str; 8] = [
    "tree",
    "ring",
    "collnet_direct",
    "collnet_chain",
    "nvls",
    "nvls_tree",
    "pat",
    "nccl",
];
/// NCCL's protocol indices 0..=2, then `nccl`.
const PROTOCOLS: [&str; 4] = ["ll", "ll128", "simple", "nccl"];

static DECISIONS: [[[AtomicU64; PROTOCOLS.len()]; ALGORITHMS.len()]; COLLECTIVES] =
    [const { [const { [const { AtomicU64::new(0) }; PROTOCOLS.len()] }; ALGORITHMS.len()] };
        COLLECTIVES];

fn index(i: Option<usize>, len: usize) -> usize {
    i.filter(|&i| i < len - 1).unwrap_or(len - 1)
}

/// Count one tuner decision: `func` is the `ncclFunc_t`, `algo`/`proto` the
/// pair NCCL will run, `None` when NCCL decides after the tuner.
pub fn tuner_decision(func: i32, algo: Option<usize>, proto: Option<usize>) {
    let f = index(usize::try_from(func).ok(), COLLECTIVES);
    let a = index(algo, ALGORITHMS.len());
    let p = index(proto, PROTOCOLS.len());
    DECISIONS[f][a][p].fetch_add(1, Relaxed);
}

/// The allreduce (algorithm, protocol) pairs NCCL can run, plus `nccl`:
/// always rendered, so these series never appear out of nowhere.
const ALLREDUCE_ALWAYS: [(usize, usize); 11] = [
    (0, 0),
    (0, 1),
    (0, 2),
    (1, 0),
    (1, 1),
    (1, 2),
    (2, 2),
    (3, 2),
    (4, 2),
    (5, 2),
    (7, 3),
];
const ALLREDUCE: usize = 4;

/// Renders the family: the allreduce pairs always, every other series once
/// it has counted (the label space is 512 series, almost all zero forever).
pub(crate) fn render(out: &mut String) {
    let name = "airamp_tuner_decisions_total";
    let _ = writeln!(
        out,
        "# HELP {name} Tuner decisions (getCollInfo calls) by the algorithm and protocol NCCL runs; nccl = left to NCCL."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for (f, by_algo) in DECISIONS.iter().enumerate() {
        for (a, by_proto) in by_algo.iter().enumerate() {
            for (p, n) in by_proto.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 || (f == ALLREDUCE && ALLREDUCE_ALWAYS.contains(&(a, p))) {
                    let _ = writeln!(
                        out,
                        "{name}{{collective=\"{}\",algorithm=\"{}\",protocol=\"{}\"}} {n}",
                        crate::tuner::collective_name(f as i32),
                        ALGORITHMS[a],
                        PROTOCOLS[p]
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        tuner_decision(4, Some(3), Some(2));
        tuner_decision(4, Some(3), Some(2));
        tuner_decision(99, None, Some(17));
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("# TYPE airamp_tuner_decisions_total counter\n"));
        let line = |l: &str| {
            out.lines()
                .find(|x| x.starts_with(l))
                .and_then(|x| x.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert!(
            line("airamp_tuner_decisions_total{collective=\"allreduce\",algorithm=\"collnet_chain\",protocol=\"simple\"}") >= 2
        );
        assert!(
            line("airamp_tuner_decisions_total{collective=\"other\",algorithm=\"nccl\",protocol=\"nccl\"}") >= 1
        );
    }
}
