//! The agreement, the estimators and the record, without I/O; then the
//! rounds over in-memory links with N members on threads.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::probe::{self, RecordKey, Setup};
use super::*;
use crate::codec::WireFormat;
use crate::collnet::group::{Group, GroupParams};
use crate::collnet::link::mem::mesh;
use crate::collnet::link::PeerLinks;
use crate::collnet::sim::SplitMix;
use crate::config::Config;
use crate::tuner::{decide_allreduce, LinkProfile, Policy, ProfileSource, Tuner};

fn figures(gbps: f64, latency_us: f64, encode: f64, decode: f64) -> Figures {
    Figures {
        gbps,
        latency_us,
        encode_gvps: encode,
        decode_gvps: decode,
    }
}

fn report(rank: u32, f: Option<Figures>) -> MemberReport {
    MemberReport { rank, figures: f }
}

#[test]
fn report_round_trips_and_is_checked() {
    let r = report(3, Some(figures(2.5, 41.25, 1.9, 6.9)));
    let b = r.encode();
    assert_eq!(MemberReport::decode(&b, 3), Ok(r));
    assert_eq!(
        MemberReport::decode(&b, 2),
        Err(ReportError::WrongMember {
            expected: 2,
            got: 3
        })
    );
    let failed = report(1, None);
    assert_eq!(MemberReport::decode(&failed.encode(), 1), Ok(failed));
    let mut bad = b;
    bad[0] ^= 1;
    assert_eq!(MemberReport::decode(&bad, 3), Err(ReportError::BadMagic));
    let mut bad = b;
    bad[8] = 9;
    assert_eq!(
        MemberReport::decode(&bad, 3),
        Err(ReportError::BadStatus(9))
    );
    for x in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e300] {
        let bad = report(3, Some(figures(x, 1.0, 1.0, 1.0))).encode();
        assert_eq!(
            MemberReport::decode(&bad, 3),
            Err(ReportError::BadFigures),
            "{x}"
        );
    }
    assert!(MemberReport::decode(&b[..47], 3).is_err());
}

#[test]
fn agreement_takes_the_slowest_member_and_any_failure_fails_all() {
    let a = figures(10.0, 20.0, 2.0, 7.0);
    let b = figures(4.0, 50.0, 3.0, 5.0);
    assert_eq!(
        agree(&[report(0, Some(a)), report(1, Some(b))]),
        Agreed::Measured(figures(4.0, 50.0, 2.0, 5.0))
    );
    assert_eq!(
        agree(&[report(0, Some(a)), report(1, None), report(2, None)]),
        Agreed::Fallback(Fallback::Failed { member: 1 })
    );
    assert_eq!(agree(&[]), Agreed::Fallback(Fallback::NotRun));
}

#[test]
fn rate_skips_a_token_bucket_burst() {
    // 4 MiB arrive at once (the bucket), then 1 MiB every 3.2 ms (2.5
    // Gbit/s, both directions busy).
    let mib = 1usize << 20;
    let mut c: Vec<(u64, usize)> = (0..4).map(|i| (10_000 + i, mib)).collect();
    c.extend((1..=12u64).map(|i| (10_004 + i * 3_355_443, mib)));
    let gbps = rate_gbps(&c).expect("enough completions");
    assert!((gbps - 2.5).abs() < 0.01, "{gbps}");
    // Completions in clumps of the send window: 4 MiB every 6.71 ms
    // (5 Gbit/s). Counting from the first of a clump read 6.9.
    let c: Vec<(u64, usize)> = (0..16u64)
        .map(|i| (1_000 + i / 4 * 6_710_886 + i % 4 * 10, mib))
        .collect();
    let gbps = rate_gbps(&c).expect("enough completions");
    assert!((gbps - 5.0).abs() < 0.01, "{gbps}");
    // Three members: both peers' windows land together, clumps of 8 every
    // 13.42 ms (5 Gbit/s). A clock started at the end of the first quarter
    // (mid-clump) read 7.5.
    let c: Vec<(u64, usize)> = (0..16u64)
        .map(|i| (1_000 + i / 8 * 13_421_773 + i % 8 * 10, mib))
        .collect();
    let gbps = rate_gbps(&c).expect("enough completions");
    assert!((gbps - 5.0).abs() < 0.01, "{gbps}");
    // Two arrive early, the rest later: counted from the second one.
    let c: Vec<(u64, usize)> = [1000, 1000, 7900, 7900, 7900, 7900, 7900, 8000]
        .iter()
        .map(|&t| (t, mib))
        .collect();
    assert_eq!(rate_gbps(&c), Some(6.0 * mib as f64 * 8.0 / 7000.0));
    // Bunched completions (one poll saw most at once): whole burst.
    let c: Vec<(u64, usize)> = [5000, 5000, 7900, 7900, 7900, 7900, 7900, 8000]
        .iter()
        .map(|&t| (t, mib))
        .collect();
    let whole = 8.0 * mib as f64 * 8.0 / 8000.0;
    assert_eq!(rate_gbps(&c), Some(whole));
    assert_eq!(rate_gbps(&c[..3]), None);
    assert_eq!(rate_gbps(&[(0, 1), (0, 1), (0, 1), (0, 1)]), None);
}

#[test]
fn latency_is_the_median_round() {
    assert_eq!(latency_us(&[30_000, 10_000, 20_000]), Some(20.0));
    assert_eq!(latency_us(&[]), None);
    assert_eq!(latency_us(&[0, 0, 0]), None);
}

#[test]
fn record_round_trips_and_rejects_damage() {
    for agreed in [
        Agreed::Measured(figures(2.5, 41.0, 1.9, 6.9)),
        Agreed::Fallback(Fallback::NotRun),
        Agreed::Fallback(Fallback::Failed { member: 5 }),
    ] {
        let r = Record {
            comm_id: 0xfeed,
            group_key: 42,
            members: 8,
            agreed,
        };
        let b = r.encode();
        assert_eq!(Record::decode(&b), Some(r));
        for i in 0..RECORD_BYTES {
            let mut bad = b;
            bad[i] ^= 0x40;
            assert_ne!(Record::decode(&bad), Some(r), "byte {i}");
        }
    }
}

#[test]
fn combine_is_the_slowest_group_and_any_fallback_wins() {
    let rec = |key, agreed| Record {
        comm_id: 1,
        group_key: key,
        members: 2,
        agreed,
    };
    let a = rec(7, Agreed::Measured(figures(10.0, 20.0, 2.0, 7.0)));
    let b = rec(3, Agreed::Measured(figures(4.0, 50.0, 3.0, 5.0)));
    let view = NodeView::Measured {
        figures: figures(4.0, 50.0, 2.0, 5.0),
        groups: 2,
    };
    assert_eq!(combine(&[a, b]), view);
    assert_eq!(combine(&[b, a]), view);
    let failed = rec(9, Agreed::Fallback(Fallback::Failed { member: 1 }));
    assert_eq!(
        combine(&[a, failed, b]),
        NodeView::Fallback(Fallback::Failed { member: 1 })
    );
    assert_eq!(combine(&[]), NodeView::NoRecord);
}

#[test]
fn store_files_reads_and_removes_records() {
    let dir = std::env::temp_dir().join(format!("airamp-calib-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let comm = SplitMix::new(std::process::id() as u64).next_u64();
    let rec = |key| Record {
        comm_id: comm,
        group_key: key,
        members: 2,
        agreed: Agreed::Measured(figures(2.5, 40.0, 1.9, 6.9)),
    };
    let a = store::write_in(&dir, &rec(1)).unwrap();
    let b = store::write_in(&dir, &rec(2)).unwrap();
    let other = store::write_in(
        &dir,
        &Record {
            comm_id: comm ^ 1,
            ..rec(3)
        },
    )
    .unwrap();
    let mut got = store::read_in(&dir, comm).unwrap();
    got.sort_by_key(|r| r.group_key);
    assert_eq!(got, vec![rec(1), rec(2)]);
    // A damaged file of ours is an error, never silently skipped.
    std::fs::write(a.path(), b"garbage").unwrap();
    assert!(store::read_in(&dir, comm).is_err());
    drop(a);
    assert_eq!(store::read_in(&dir, comm).unwrap(), vec![rec(2)]);
    drop(b);
    drop(other);
    assert!(store::read_in(&dir, comm).unwrap().is_empty());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no files left");
    std::fs::remove_dir(&dir).unwrap();
}

fn fp8_policy() -> Policy {
    let mut cfg = Config::default();
    cfg.compression.fp8_allreduce = true;
    cfg.compression.format = WireFormat::E4M3;
    Policy::from_config(&cfg)
}

#[test]
fn codec_rates_are_fitted_to_the_probing_calls_never_sped_up() {
    let link = probe::LinkFigures {
        gbps: 10.0,
        latency_us: 40.0,
    };
    let one_call = (probe::PROBE_VALUES * 2) as u64;
    let streamed = one_call / 2 * probe::PROBE_CALLS_PER_ROUND as u64;
    let model = |bytes, r: ExecutorRates| {
        let p = LinkProfile {
            gbps: link.gbps,
            latency_us: link.latency_us,
            encode_gvps: r.encode_gvps,
            decode_gvps: r.decode_gvps,
            call_overhead_us: 60.0,
        };
        crate::tuner::collnet_allreduce_us(bytes, 2, 1, &p, Some(WireFormat::E4M3))
    };
    for bytes in [one_call, streamed] {
        let predicted = model(bytes, RATES);
        // Faster than the model: the executor's own rates stand.
        assert_eq!(
            probe::fit_codec(bytes, 2, predicted / 2.0, link, RATES, 60.0),
            RATES
        );
        // Slower: rates slowed in proportion until the model says the same.
        for slower in [1.5, 4.0, 30.0] {
            let fitted = probe::fit_codec(bytes, 2, predicted * slower, link, RATES, 60.0);
            let k = RATES.encode_gvps / fitted.encode_gvps;
            assert!(k > 1.0, "{bytes} {slower}: {fitted:?}");
            assert!((RATES.decode_gvps / fitted.decode_gvps - k).abs() < 1e-9 * k);
            let got = model(bytes, fitted);
            assert!(
                (got / (predicted * slower) - 1.0).abs() < 1e-6,
                "{bytes} {slower}: {got}"
            );
            assert_eq!(
                probe::fit_codec(bytes, 2, predicted * slower, link, RATES, 60.0),
                fitted,
                "deterministic"
            );
        }
    }
}

/// The probe times a path would show if its codec ran at `RATES / k`,
/// with `lone_extra_us` more on the lone call (hand-offs) and the streamed
/// round's wire `wire_noise` (a fraction) slower than the model's.
fn probe_times(
    link: probe::LinkFigures,
    k: f64,
    lone_extra_us: f64,
    wire_noise: f64,
) -> probe::ProbeTimes {
    let p = LinkProfile {
        gbps: link.gbps,
        latency_us: link.latency_us,
        encode_gvps: RATES.encode_gvps / k,
        decode_gvps: RATES.decode_gvps / k,
        call_overhead_us: 60.0,
    };
    // Wire time is inversely proportional to the link's rate.
    let noisy = LinkProfile {
        gbps: link.gbps / (1.0 + wire_noise),
        ..p
    };
    let one = (probe::PROBE_VALUES * 2) as u64;
    let round = one / 2 * probe::PROBE_CALLS_PER_ROUND as u64;
    let lone = crate::tuner::collnet_allreduce_us(one, 2, 1, &p, Some(WireFormat::E4M3));
    let streamed = crate::tuner::collnet_allreduce_us(round, 2, 1, &noisy, Some(WireFormat::E4M3));
    let us = |x: f64| std::time::Duration::from_secs_f64(x / 1e6);
    probe::ProbeTimes {
        one_call: us(lone + lone_extra_us),
        streamed: Some((probe::PROBE_CALLS_PER_ROUND, us(streamed))),
    }
}

#[test]
fn the_faster_probe_fit_wins_on_slow_and_fast_links() {
    let fit = |link, times| probe::fit_probes(times, probe::PROBE_VALUES, 2, link, RATES, 60.0);
    let k_of = |r: ExecutorRates| RATES.encode_gvps / r.encode_gvps;
    // 1 Gbit/s: the wire bounds the streamed round, where the codec shows
    // only in the fill and drain, so 3% of wire noise would slow it ~4x;
    // the lone call, where codec and wire add up, tells the codec's speed
    // (2x slower than timed alone).
    let slow = probe::LinkFigures {
        gbps: 1.0,
        latency_us: 40.0,
    };
    let times = probe_times(slow, 2.0, 0.0, 0.03);
    let r = fit(slow, times);
    assert!((k_of(r) - 2.0).abs() < 0.01, "{r:?}");
    let round = (probe::PROBE_VALUES * probe::PROBE_CALLS_PER_ROUND) as u64;
    let round_us = times.streamed.expect("a round").1.as_secs_f64() * 1e6;
    let round_alone = probe::fit_codec(round, 2, round_us, slow, RATES, 60.0);
    assert!(k_of(round_alone) > 3.0, "{round_alone:?}");
    // 100 Gbit/s: the codec bounds the streamed round (1.5x slower than
    // timed alone); the lone call also paid 800 us of hand-offs, which the
    // streamed round does not charge to the codec.
    let fast = probe::LinkFigures {
        gbps: 100.0,
        latency_us: 10.0,
    };
    let r = fit(fast, probe_times(fast, 1.5, 800.0, 0.0));
    assert!((k_of(r) - 1.5).abs() < 0.01, "{r:?}");
    // Both probes faster than the model: the executor's rates stand.
    assert_eq!(fit(fast, probe_times(fast, 0.5, 0.0, 0.0)), RATES);
    // No streamed round (a slow host): the lone call alone.
    let lone_only = probe::ProbeTimes {
        streamed: None,
        ..probe_times(fast, 1.5, 800.0, 0.0)
    };
    assert!(k_of(fit(fast, lone_only)) > 2.0);
}

#[test]
fn streamed_rounds_shrink_with_slow_calls_and_stop_below_the_minimum() {
    let ms = |x: f64| std::time::Duration::from_secs_f64(x / 1e3);
    // The H200 host's lone calls (1.7-3.6 ms): full 32 MiB rounds.
    for lone in [0.3, 1.7, 3.6] {
        assert_eq!(
            probe::streamed_calls_for(ms(lone)),
            probe::PROBE_CALLS_PER_ROUND
        );
    }
    // Slower calls: fewer, then none.
    assert_eq!(probe::streamed_calls_for(ms(10.0)), 24);
    assert_eq!(probe::streamed_calls_for(ms(30.0)), 8);
    assert_eq!(probe::streamed_calls_for(ms(31.0)), 0);
    assert_eq!(probe::streamed_calls_for(ms(500.0)), 0);
    assert_eq!(
        probe::streamed_calls_for(ms(0.0)),
        probe::PROBE_CALLS_PER_ROUND
    );
}

#[test]
fn timed_rounds_keep_the_agreed_calls_on_fast_links_and_shrink_on_slow_ones() {
    let ms = |x: f64| std::time::Duration::from_secs_f64(x / 1e3);
    let full = probe::PROBE_CALLS_PER_ROUND;
    // 25 Gbit/s on the H200 host: 64 calls in 23 ms, so a 32-call warm-up
    // of about 12 ms; the timed rounds keep all 64.
    assert_eq!(probe::timed_calls_for(full, full / 2, ms(12.0)), full);
    // 5 Gbit/s: 64 calls took 53-90 ms; the timed rounds fit 40 ms.
    assert_eq!(probe::timed_calls_for(full, full / 2, ms(30.0)), 42);
    assert_eq!(probe::timed_calls_for(full, full / 2, ms(45.0)), 28);
    // Never below the minimum round, nor above the agreed calls.
    assert_eq!(probe::timed_calls_for(full, full / 2, ms(900.0)), 8);
    assert_eq!(probe::timed_calls_for(5, 5, ms(900.0)), 5);
    assert_eq!(probe::timed_calls_for(full, full / 2, ms(0.0)), full);
}

#[test]
fn configured_keys_override_agreed_figures() {
    let agreed = figures(2.5, 40.0, 1.5, 5.5);
    let mut t = Config::default().tuner;
    let (p, src) = LinkProfile::resolve(&t, Some(&agreed));
    assert_eq!(
        (p.gbps, p.latency_us, p.encode_gvps, p.decode_gvps),
        (2.5, 40.0, 1.5, 5.5)
    );
    assert_eq!(src, ProfileSource::Agreed);
    assert!(LinkProfile::link_known(&t, Some(&agreed)));
    assert!(!LinkProfile::link_known(&t, None));
    t.link_gbps = Some(25.0);
    let (p, src) = LinkProfile::resolve(&t, Some(&agreed));
    assert_eq!((p.gbps, p.latency_us), (25.0, 40.0));
    assert_eq!(src, ProfileSource::AgreedWithConfig);
    t.link_latency_us = Some(5.0);
    t.encode_gvps = Some(1.0);
    t.decode_gvps = Some(2.0);
    let (p, src) = LinkProfile::resolve(&t, Some(&agreed));
    assert_eq!(LinkProfile::resolve(&t, None), (p, src));
    assert_eq!(src, ProfileSource::Calibrated);
}

fn arb_figures() -> impl Strategy<Value = Figures> {
    (0.1f64..400.0, 1.0f64..2000.0, 0.05f64..50.0, 0.05f64..100.0)
        .prop_map(|(g, l, e, d)| figures(g, l, e, d))
}

proptest! {
    /// Members measure different figures; whichever member computes the
    /// agreement (in member order) and however the reports are permuted,
    /// the result and every decision the tuner then makes are bit-identical.
    #[test]
    fn every_member_decides_alike_from_differing_measurements(
        local in prop::collection::vec(arb_figures(), 2..9),
        rot in 0usize..8,
        failed in prop::option::of(0usize..8),
    ) {
        let n = local.len();
        let reports: Vec<MemberReport> = local
            .iter()
            .enumerate()
            .map(|(i, f)| report(i as u32, (failed != Some(i)).then_some(*f)))
            .collect();
        let agreed = agree(&reports);
        let mut permuted = reports.clone();
        permuted.rotate_left(rot % n);
        let again = agree(&permuted);
        match (agreed, again) {
            (Agreed::Measured(a), Agreed::Measured(b)) => {
                prop_assert_eq!(words_of(&a).map(f64::to_bits), words_of(&b).map(f64::to_bits));
                prop_assert!(local.iter().all(|f| a.gbps <= f.gbps && a.latency_us >= f.latency_us));
            }
            (Agreed::Fallback(Fallback::Failed { .. }), Agreed::Fallback(Fallback::Failed { .. })) => {
                prop_assert!(failed.is_some_and(|f| f < n));
            }
            other => prop_assert!(false, "{:?}", other),
        }
        // Every member files the same record, so every rank resolves the
        // same profile and makes the same decisions.
        let figures = match agreed { Agreed::Measured(f) => Some(f), _ => None };
        let cfg = Config::default().tuner;
        let policy = fp8_policy();
        let decisions = |fig: Option<Figures>| -> Vec<u64> {
            let (p, _) = LinkProfile::resolve(&cfg, fig.as_ref());
            (10..31).map(|log2| {
                let c = decide_allreduce(1 << log2, n, n, &p, &policy);
                c.collnet_us.to_bits() ^ c.raw_us.to_bits() ^ (c.path as u64)
            }).collect()
        };
        let filed = Record { comm_id: 9, group_key: 5, members: n as u32, agreed }.encode();
        let read = Record::decode(&filed).expect("round trip");
        let fig = match combine(&[read]) { NodeView::Measured { figures, .. } => Some(figures), _ => None };
        prop_assert_eq!(decisions(fig), decisions(figures));
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..100), from in 0u32..9) {
        let _ = MemberReport::decode(&bytes, from);
        let _ = Record::decode(&bytes);
    }

    /// With the link known, compression is chosen only if predicted faster
    /// than the ring's bandwidth bound on that link, even when NCCL's table
    /// (built on a faster assumed NIC) says raw is cheaper.
    #[test]
    fn known_link_raises_raw_to_its_bandwidth_bound(gbps in 0.5f64..200.0, log2 in 12u32..31, nccl_scale in 0.01f32..2.0) {
        let p = LinkProfile { gbps, ..LinkProfile::default() };
        let bytes = 1u64 << log2;
        let bound = crate::tuner::ring_bandwidth_us(bytes, 2, &p);
        let ring = crate::tuner::ring_allreduce_us(bytes, 2, &p);
        let mut cells = [[crate::tuner::IGNORE; 3]; 7];
        cells[crate::tuner::ALGO_RING][crate::tuner::PROTO_SIMPLE] = (ring as f32) * nccl_scale;
        cells[crate::tuner::ALGO_COLLNET_CHAIN][crate::tuner::PROTO_SIMPLE] = 1.0;
        let call = crate::tuner::Call { func: crate::tuner::FUNC_ALLREDUCE, bytes, pipe_ops: 1 };
        for known in [false, true] {
            let t = Tuner::new(2, 2, p, fp8_policy()).with_link_known(known);
            let mut c = cells;
            let flat: &mut [f32] = c.as_flattened_mut();
            let mut table = crate::tuner::CostTable::new(flat, 7, 3).expect("7x3");
            let (_, choice) = t.edit_cost_table(call, &mut table);
            let nccl = f64::from((ring as f32) * nccl_scale);
            let want = if known { nccl.min(ring).max(bound) } else { nccl.min(ring) };
            prop_assert_eq!(choice.raw_us.to_bits(), want.to_bits());
        }
    }
}

// ---------------------------------------------------------------------------
// The rounds over in-memory links
// ---------------------------------------------------------------------------

fn setup(rates: Result<ExecutorRates, String>, record: Option<RecordKey>) -> Setup {
    Setup {
        ask: true,
        rates,
        record,
        call_overhead_us: 60.0,
        probe_values: 64 << 10,
    }
}

const RATES: ExecutorRates = ExecutorRates {
    encode_gvps: 1.9,
    decode_gvps: 6.9,
};

/// Runs the rounds on every member at once; each member's result.
fn run_all(
    links: Vec<Vec<Option<PeerLinks>>>,
    setups: Vec<Setup>,
    run: bool,
    timeout: Duration,
) -> Vec<crate::error::NetResult<probe::Calibrated>> {
    let deadline = Instant::now() + timeout;
    let threads: Vec<_> = links
        .into_iter()
        .zip(setups)
        .enumerate()
        .map(|(rank, (mut l, s))| {
            std::thread::spawn(move || {
                // As the join does: the links, then the started group.
                let started = Instant::now();
                let n = l.len();
                let link = if run {
                    probe::measure_links(&mut l, rank, deadline)?
                } else {
                    None
                };
                let params = GroupParams {
                    rank,
                    n,
                    fp8: Some(WireFormat::E4M3),
                };
                let group = Group::from_links(params, l, 1)?;
                probe::finish(group, run, link, s, deadline, started)
            })
        })
        .collect();
    // A member that succeeds keeps its group (so its links) until every
    // member is done, as a joined group does; one that fails has closed
    // its links, as a failed join does.
    let (results, _groups): (Vec<_>, Vec<_>) = threads
        .into_iter()
        .map(|t| match t.join().expect("member thread") {
            Ok((g, c)) => (Ok(c), Some(g)),
            Err(e) => (Err(e), None),
        })
        .unzip();
    results
}

#[test]
fn members_agree_over_links_and_file_one_record_each() {
    for (n, seed) in [(2, 1), (3, 2)] {
        let comm = SplitMix::new(seed * 977 + u64::from(std::process::id())).next_u64();
        let (links, _breakers) = mesh(n, seed);
        // Members differ in codec speed; one has a slower executor.
        let setups = (0..n)
            .map(|r| {
                let rates = ExecutorRates {
                    encode_gvps: 1.0 + r as f64,
                    decode_gvps: 4.0 + r as f64,
                };
                setup(
                    Ok(rates),
                    Some(RecordKey {
                        comm_id: comm,
                        group_key: 77 + r as u64,
                    }),
                )
            })
            .collect();
        let results = run_all(links, setups, true, Duration::from_secs(60));
        let cal: Vec<_> = results
            .into_iter()
            .map(|r| r.expect("calibration succeeds"))
            .collect();
        let Agreed::Measured(f) = cal[0].agreed else {
            panic!("n={n}: {:?}", cal[0].agreed)
        };
        // The slowest executor, slowed further to what the probing calls
        // took through these (debug-speed, in-memory) links.
        assert!(f.encode_gvps <= 1.0 && f.decode_gvps <= 4.0, "{f:?}");
        for c in &cal {
            assert_eq!(c.agreed, cal[0].agreed, "n={n}: identical on every member");
            assert!(c.local.is_some());
        }
        let records = store::read(comm).unwrap();
        assert_eq!(records.len(), n, "one record per member (keys differ here)");
        assert!(records.iter().all(|r| r.agreed == cal[0].agreed));
        drop(cal);
        assert!(store::read(comm).unwrap().is_empty(), "removed on drop");
    }
}

#[test]
fn a_member_that_fails_its_measurement_makes_everyone_fall_back() {
    let (links, _b) = mesh(3, 11);
    let setups = (0..3)
        .map(|r| {
            setup(
                if r == 1 {
                    Err("no codec".into())
                } else {
                    Ok(RATES)
                },
                None,
            )
        })
        .collect();
    for r in run_all(links, setups, true, Duration::from_secs(60)) {
        assert_eq!(
            r.expect("the join still succeeds").agreed,
            Agreed::Fallback(Fallback::Failed { member: 1 })
        );
    }
}

#[test]
fn not_run_sends_nothing_and_agrees_on_fallback() {
    let (links, _b) = mesh(3, 5);
    let setups = (0..3).map(|_| setup(Ok(RATES), None)).collect();
    for r in run_all(links, setups, false, Duration::from_secs(5)) {
        let c = r.expect("nothing to fail");
        assert_eq!(c.agreed, Agreed::Fallback(Fallback::NotRun));
        assert!(c.local.is_none() && c.record.is_none());
    }
}

#[test]
fn a_silent_member_fails_the_others_by_the_deadline() {
    let (mut links, _b) = mesh(3, 8);
    // Member 2 holds its links open but never takes part.
    let silent = links.pop().expect("member 2");
    let setups = (0..2).map(|_| setup(Ok(RATES), None)).collect();
    let start = Instant::now();
    let results = run_all(links, setups, true, Duration::from_millis(300));
    let took = start.elapsed();
    // The first to give up closes its links, so the other may fail on those.
    let errors: Vec<String> = results
        .into_iter()
        .map(|r| r.err().expect("fails").to_string())
        .collect();
    assert!(errors.iter().any(|e| e.contains("deadline")), "{errors:?}");
    // Generous: the bound is the deadline plus scheduling on a loaded box.
    assert!(took < Duration::from_secs(20), "{took:?}");
    drop(silent);
}

#[test]
fn a_broken_link_fails_every_member() {
    let (links, breakers) = mesh(3, 9);
    // Member 0's receive from member 1 on the contribution lane is broken:
    // both fail, close their links, and member 2 fails on those.
    breakers[2].break_pipe();
    let setups = (0..3).map(|_| setup(Ok(RATES), None)).collect();
    let start = Instant::now();
    for (rank, r) in run_all(links, setups, true, Duration::from_secs(30))
        .into_iter()
        .enumerate()
    {
        assert!(r.is_err(), "member {rank} succeeded");
    }
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "failed by breakage, not the deadline"
    );
}
