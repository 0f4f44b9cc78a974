use super::*;
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

fn profile(gbps: f64) -> LinkProfile {
    LinkProfile {
        gbps,
        ..LinkProfile::default()
    }
}

fn fp8_on() -> Policy {
    Policy {
        fp8: Some(WireFormat::E4M3),
        min_gain: 0.1,
        owns_collnet: true,
        single_channel_bytes: 512 << 10,
    }
}

fn fp8_off() -> Policy {
    Policy {
        fp8: None,
        ..fp8_on()
    }
}

fn allreduce(bytes: u64) -> Call {
    Call {
        func: FUNC_ALLREDUCE,
        bytes,
        pipe_ops: 1,
    }
}

/// A plausible NCCL table (7 algorithms x 3 protocols) for 2 nodes.
fn nccl_like(ring_simple: f32, collnet: f32) -> Vec<f32> {
    let mut t = vec![IGNORE; 21];
    t[ALGO_TREE * 3 + PROTO_LL] = ring_simple * 1.5;
    t[ALGO_TREE * 3 + PROTO_SIMPLE] = ring_simple * 1.1;
    t[ALGO_RING * 3 + PROTO_LL] = ring_simple * 2.0;
    t[ALGO_RING * 3 + PROTO_LL128] = ring_simple * 1.2;
    t[ALGO_RING * 3 + PROTO_SIMPLE] = ring_simple;
    t[ALGO_COLLNET_CHAIN * 3 + PROTO_SIMPLE] = collnet;
    t
}

#[test]
fn wire_ratio_is_33_over_64() {
    assert_eq!(wire_ratio(WireFormat::E4M3), 33.0 / 64.0);
    assert_eq!(wire_ratio(WireFormat::E5M2), 33.0 / 64.0);
    assert_eq!(wire_ratio(WireFormat::Int8), 34.0 / 64.0);
}

#[test]
fn compression_pays_on_a_slow_link_for_big_messages() {
    let c = decide_allreduce(256 * MIB, 2, 2, &profile(5.0), &fp8_on());
    assert_eq!(c.path, Path::CompressedCollNet, "{c:?}");
    assert!(c.collnet_us * 1.1 < c.raw_us);
    // More nodes: still pays.
    let c = decide_allreduce(256 * MIB, 16, 8, &profile(5.0), &fp8_on());
    assert_eq!(c.path, Path::CompressedCollNet, "{c:?}");
}

#[test]
fn compression_does_not_pay_for_small_messages() {
    let c = decide_allreduce(4 << 10, 2, 2, &profile(5.0), &fp8_on());
    assert_eq!(c.path, Path::Raw);
    assert_eq!(c.declined, Declined::DoesNotPay);
}

#[test]
fn compression_does_not_pay_on_a_fast_link() {
    for bytes in [4 << 10, MIB, 256 * MIB, 1 << 30] {
        let c = decide_allreduce(bytes, 2, 2, &profile(400.0), &fp8_on());
        assert_eq!(c.path, Path::Raw, "{bytes}: {c:?}");
    }
}

#[test]
fn uncalibrated_defaults_are_conservative() {
    let (p, src) = LinkProfile::from_config(&crate::config::Config::default().tuner);
    assert_eq!(src, ProfileSource::Defaults);
    assert_eq!(p, LinkProfile::default());
    for bytes in [4 << 10, MIB, 64 * MIB, 1 << 30] {
        assert_eq!(decide_allreduce(bytes, 2, 2, &p, &fp8_on()).path, Path::Raw);
    }
}

#[test]
fn profile_source() {
    let mut t = crate::config::Config::default().tuner;
    t.link_gbps = Some(5.0);
    let (p, src) = LinkProfile::from_config(&t);
    assert_eq!((p.gbps, src), (5.0, ProfileSource::Partial));
    t.link_latency_us = Some(20.0);
    t.encode_gvps = Some(2.0);
    t.decode_gvps = Some(7.0);
    assert_eq!(LinkProfile::from_config(&t).1, ProfileSource::Calibrated);
}

#[test]
fn fp8_off_never_compresses() {
    let c = decide_allreduce(1 << 30, 2, 2, &profile(1.0), &fp8_off());
    assert_eq!((c.path, c.declined), (Path::Raw, Declined::Fp8Off));
}

#[test]
fn min_gain_is_a_margin() {
    // A stricter margin only ever turns compression off, never on.
    let p = profile(10.0);
    let lenient = Policy {
        min_gain: 0.0,
        ..fp8_on()
    };
    let mut differ = 0;
    for b in (12..=30).map(|s| 1u64 << s) {
        let l = decide_allreduce(b, 2, 2, &p, &lenient);
        let s = decide_allreduce(b, 2, 2, &p, &fp8_on());
        if s.path == Path::CompressedCollNet {
            assert_eq!(l.path, Path::CompressedCollNet);
        }
        differ += usize::from(l.path != s.path);
    }
    assert!(differ <= 2, "the margin only matters near the crossover");
}

#[test]
fn table_chooses_collnet_when_it_pays() {
    let p = profile(5.0);
    let t = Tuner::new(2, 2, p, fp8_on());
    let bytes = 256 * MIB;
    let ring = ring_allreduce_us(bytes, 2, &p) as f32;
    let mut cells = nccl_like(ring, ring * 0.5);
    let mut table = CostTable::new(&mut cells, 7, 3).unwrap();
    let (edit, choice) = t.edit_cost_table(allreduce(bytes), &mut table);
    assert!(
        matches!(
            edit,
            TableEdit::ChoseCollNet {
                algo: ALGO_COLLNET_CHAIN,
                proto: PROTO_SIMPLE,
                ..
            }
        ),
        "{edit:?}"
    );
    assert_eq!(choice.path, Path::CompressedCollNet);
    assert_eq!(table.nccl_pick(), Some((ALGO_COLLNET_CHAIN, PROTO_SIMPLE)));
}

#[test]
fn table_raises_collnet_that_nccl_would_wrongly_pick() {
    // NCCL believes CollNet (in-network reduction) is 10x faster; on a
    // 400 Gbit/s link airamp's host-side CollNet is not.
    let p = profile(400.0);
    let t = Tuner::new(2, 2, p, fp8_on());
    let bytes = 64 * MIB;
    let ring = ring_allreduce_us(bytes, 2, &p) as f32;
    let mut cells = nccl_like(ring, ring * 0.1);
    let before = cells.clone();
    let mut table = CostTable::new(&mut cells, 7, 3).unwrap();
    let (edit, _) = t.edit_cost_table(allreduce(bytes), &mut table);
    assert!(matches!(edit, TableEdit::RaisedCollNet { .. }), "{edit:?}");
    assert_eq!(table.nccl_pick(), Some((ALGO_RING, PROTO_SIMPLE)));
    let after = cells;
    assert!(after[ALGO_COLLNET_CHAIN * 3 + PROTO_SIMPLE] > ring);
    for i in 0..21 {
        if i / 3 != ALGO_COLLNET_CHAIN {
            assert_eq!(after[i].to_bits(), before[i].to_bits());
        }
    }
}

#[test]
fn pessimistic_nccl_raw_estimate_does_not_buy_compression() {
    // Seen on the H100 host: NCCL's ring estimate used the 10 Gbit/s the
    // plugin reports for loopback, the calibrated link is 120 Gbit/s.
    // Against NCCL's estimate compression looked 5x faster; against the
    // calibrated ring it loses. The tuner must keep NCCL on Ring.
    let p = profile(120.0);
    let t = Tuner::new(2, 2, p, fp8_on());
    let bytes = 64 * MIB;
    let nccl_ring = ring_allreduce_us(bytes, 2, &profile(10.0)) as f32;
    let mut cells = nccl_like(nccl_ring, nccl_ring * 0.5);
    let mut table = CostTable::new(&mut cells, 7, 3).unwrap();
    let (edit, choice) = t.edit_cost_table(allreduce(bytes), &mut table);
    assert_eq!(choice.path, Path::Raw, "{edit:?} {choice:?}");
    assert_eq!(table.nccl_pick(), Some((ALGO_RING, PROTO_SIMPLE)));
}

#[test]
fn table_untouched_without_collnet_or_when_foreign() {
    let t = Tuner::new(2, 2, profile(5.0), fp8_on());
    let mut cells = nccl_like(1000.0, IGNORE);
    let before = cells.clone();
    let mut table = CostTable::new(&mut cells, 7, 3).unwrap();
    let (edit, _) = t.edit_cost_table(allreduce(256 * MIB), &mut table);
    assert_eq!(edit, TableEdit::Untouched(Declined::NoCollNet));
    assert_eq!(cells, before);

    let mut foreign = fp8_on();
    foreign.owns_collnet = false;
    let t = Tuner::new(2, 2, profile(5.0), foreign);
    let mut cells = nccl_like(1000.0, 10.0);
    let before = cells.clone();
    let mut table = CostTable::new(&mut cells, 7, 3).unwrap();
    let (edit, _) = t.edit_cost_table(allreduce(256 * MIB), &mut table);
    assert_eq!(edit, TableEdit::Untouched(Declined::ForeignCollNet));
    assert_eq!(cells, before);
}

#[test]
fn six_algorithm_table_of_nccl_2_22() {
    let p = profile(5.0);
    let t = Tuner::new(2, 2, p, fp8_on());
    let mut cells = vec![IGNORE; 18];
    cells[ALGO_RING * 3 + PROTO_SIMPLE] = 450_000.0;
    cells[ALGO_COLLNET_DIRECT * 3 + PROTO_SIMPLE] = 500_000.0;
    let mut table = CostTable::new(&mut cells, 6, 3).unwrap();
    let (edit, _) = t.edit_cost_table(allreduce(256 * MIB), &mut table);
    assert!(
        matches!(
            edit,
            TableEdit::ChoseCollNet {
                algo: ALGO_COLLNET_DIRECT,
                ..
            }
        ),
        "{edit:?}"
    );
    assert_eq!(table.nccl_pick(), Some((ALGO_COLLNET_DIRECT, PROTO_SIMPLE)));
}

#[test]
fn v2_picks_chain_simple_only_when_it_pays() {
    let t = Tuner::new(2, 2, profile(5.0), fp8_on());
    let (pick, _) = t.choose_v2(allreduce(256 * MIB), true);
    assert_eq!(pick, Some((ALGO_COLLNET_CHAIN, PROTO_SIMPLE)));
    assert_eq!(t.choose_v2(allreduce(256 * MIB), false).0, None);
    assert_eq!(t.choose_v2(allreduce(4096), true).0, None);
    let bcast = Call {
        func: 0,
        ..allreduce(256 * MIB)
    };
    assert_eq!(t.choose_v2(bcast, true).0, None);
}

#[test]
fn cost_table_shape_is_checked() {
    let mut cells = vec![0.0; 20];
    assert!(CostTable::new(&mut cells, 7, 3).is_none());
    assert!(CostTable::new(&mut cells, usize::MAX, 2).is_none());
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// A cost cell: ignored, NaN, infinite, zero or any float.
fn cell() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => Just(IGNORE),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(0.0f32),
        1 => Just(-7.5f32),
        1 => Just(f32::MAX),
        6 => 0.0f32..1e7,
        2 => any::<f32>(),
    ]
}

fn table_shape() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..=8, 1usize..=4)
        .prop_flat_map(|(a, p)| (Just(a), Just(p), prop::collection::vec(cell(), a * p)))
}

fn any_profile() -> impl Strategy<Value = LinkProfile> {
    (
        0.01f64..1000.0,
        0.0f64..1000.0,
        0.01f64..50.0,
        0.01f64..50.0,
        0.0f64..1000.0,
    )
        .prop_map(
            |(gbps, latency_us, encode_gvps, decode_gvps, call_overhead_us)| LinkProfile {
                gbps,
                latency_us,
                encode_gvps,
                decode_gvps,
                call_overhead_us,
            },
        )
}

fn any_policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![
            Just(None),
            Just(Some(WireFormat::E4M3)),
            Just(Some(WireFormat::E5M2)),
            Just(Some(WireFormat::Int8))
        ],
        0.0f64..=1.0,
        any::<bool>(),
        prop_oneof![Just(0u64), 0u64..(1 << 30)],
    )
        .prop_map(
            |(fp8, min_gain, owns_collnet, single_channel_bytes)| Policy {
                fp8,
                min_gain,
                owns_collnet,
                single_channel_bytes,
            },
        )
}

fn any_call() -> impl Strategy<Value = Call> {
    (
        prop_oneof![3 => Just(FUNC_ALLREDUCE), 1 => -2i32..20],
        prop_oneof![0u64..(1 << 12), 0u64..(1 << 31), Just(u64::MAX)],
        0u32..64,
    )
        .prop_map(|(func, bytes, pipe_ops)| Call {
            func,
            bytes,
            pipe_ops,
        })
}

fn ignored(v: f32) -> bool {
    v.is_nan() || v < 0.0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn table_rule_is_deterministic_and_safe(
        (n_algo, n_proto, cells) in table_shape(),
        profile in any_profile(),
        policy in any_policy(),
        call in any_call(),
        ranks in 1usize..512,
        nodes in 1usize..64,
    ) {
        let t = Tuner::new(ranks, nodes, profile, policy);
        let mut a = cells.clone();
        let mut b = cells.clone();
        let (ea, ca) = t.edit_cost_table(call, &mut CostTable::new(&mut a, n_algo, n_proto).unwrap());
        let (eb, cb) = t.clone().edit_cost_table(call, &mut CostTable::new(&mut b, n_algo, n_proto).unwrap());
        // Same inputs, same bits out.
        prop_assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        prop_assert_eq!(format!("{ea:?}{ca:?}"), format!("{eb:?}{cb:?}"));

        for (i, (&before, &after)) in cells.iter().zip(&a).enumerate() {
            let algo = i / n_proto;
            if !is_collnet(algo) || ignored(before) || !live(before) {
                // Non-CollNet entries, ignored, NaN and unselectable entries never change.
                prop_assert_eq!(before.to_bits(), after.to_bits(), "cell {} algo {}", i, algo);
            } else {
                // CollNet entries stay selectable.
                prop_assert!(live(after), "cell {} {} -> {}", i, before, after);
            }
        }
        // CollNet is only ever made cheaper for an allreduce with FP8 on, ours.
        if let TableEdit::ChoseCollNet { algo, proto, cost } = ea {
            prop_assert!(call.func == FUNC_ALLREDUCE && policy.fp8.is_some() && policy.owns_collnet);
            prop_assert!(is_collnet(algo));
            let table = CostTable::new(&mut a, n_algo, n_proto).unwrap();
            prop_assert_eq!(table.nccl_pick(), Some((algo, proto)));
            prop_assert_eq!(table.get(algo, proto), Some(cost));
        }
        if matches!(ea, TableEdit::RaisedCollNet { .. }) {
            prop_assert!(policy.owns_collnet);
            let table = CostTable::new(&mut a, n_algo, n_proto).unwrap();
            if let Some((algo, _)) = table.nccl_pick() {
                prop_assert!(!is_collnet(algo));
            }
        }
        if !policy.owns_collnet {
            prop_assert_eq!(&a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), &cells.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
        // Whatever NCCL could pick before, it can still pick something.
        let mut orig = cells.clone();
        let had_pick = CostTable::new(&mut orig, n_algo, n_proto).unwrap().nccl_pick().is_some();
        let has_pick = CostTable::new(&mut a, n_algo, n_proto).unwrap().nccl_pick().is_some();
        prop_assert_eq!(had_pick, has_pick);
    }

    #[test]
    fn channels_capped_only_for_mid_size_raw_allreduce_one_rank_per_node(
        (n_algo, n_proto, cells) in table_shape(),
        policy in any_policy(),
        call in any_call(),
        nodes in 1usize..64,
        ranks_per_node in prop_oneof![3 => Just(1usize), 1 => 2usize..=8],
        nvlink in prop_oneof![Just(None), (0usize..=8).prop_map(Some)],
    ) {
        let ranks = nodes * ranks_per_node;
        let t = Tuner::new(ranks, nodes, LinkProfile::default(), policy)
            .with_max_ranks_per_nvlink_domain(nvlink);
        let mut a = cells.clone();
        let pick = CostTable::new(&mut a, n_algo, n_proto).unwrap().nccl_pick();
        let expected = call.func == FUNC_ALLREDUCE
            && nodes >= 2
            && ranks_per_node == 1
            && nvlink.is_none_or(|r| r <= 1)
            && policy.single_channel_bytes > 0
            && call.bytes <= policy.single_channel_bytes
            && matches!(pick, Some((ALGO_RING | ALGO_TREE, _)));
        prop_assert_eq!(t.channels(call, pick), expected.then_some(1));
    }

    #[test]
    fn never_collnet_when_fp8_off_not_allreduce_or_unavailable(
        (n_algo, n_proto, cells) in table_shape(),
        profile in any_profile(),
        policy in any_policy(),
        call in any_call(),
        nodes in 1usize..64,
    ) {
        let t = Tuner::new(nodes, nodes, profile, policy);
        let mut a = cells.clone();
        let (edit, _) = t.edit_cost_table(call, &mut CostTable::new(&mut a, n_algo, n_proto).unwrap());
        let collnet_live = cells.iter().enumerate().any(|(i, &v)| is_collnet(i / n_proto) && live(v));
        if policy.fp8.is_none() || call.func != FUNC_ALLREDUCE || !collnet_live {
            let chose = matches!(edit, TableEdit::ChoseCollNet { .. });
            prop_assert!(!chose);
        }
        for support in [false, true] {
            let (pick, _) = t.choose_v2(call, support);
            if policy.fp8.is_none() || call.func != FUNC_ALLREDUCE || !support || !policy.owns_collnet {
                prop_assert_eq!(pick, None);
            } else if let Some(p) = pick {
                prop_assert_eq!(p, (ALGO_COLLNET_CHAIN, PROTO_SIMPLE));
            }
        }
    }

    #[test]
    fn decide_allreduce_is_deterministic(
        bytes in any::<u64>(),
        ranks in 1usize..4096,
        nodes in 1usize..1024,
        profile in any_profile(),
        policy in any_policy(),
    ) {
        let a = decide_allreduce(bytes, ranks, nodes, &profile, &policy);
        let b = decide_allreduce(bytes, ranks, nodes, &profile.clone(), &policy.clone());
        prop_assert_eq!(a.raw_us.to_bits(), b.raw_us.to_bits());
        prop_assert_eq!(a.collnet_us.to_bits(), b.collnet_us.to_bits());
        prop_assert_eq!(a.path, b.path);
        prop_assert!(a.raw_us.is_finite() && a.collnet_us.is_finite());
        if a.path == Path::CompressedCollNet {
            prop_assert!(policy.fp8.is_some() && policy.owns_collnet);
            prop_assert!(a.collnet_us * (1.0 + policy.min_gain) < a.raw_us);
        }
    }
}

#[test]
fn one_channel_up_to_the_threshold_where_every_hop_is_the_net() {
    const ALLGATHER: i32 = 2;
    let ring = Some((ALGO_RING, PROTO_SIMPLE));
    let one_per_node = Tuner::new(2, 2, LinkProfile::default(), fp8_on());
    assert_eq!(one_per_node.channels(allreduce(256 << 10), ring), Some(1));
    assert_eq!(one_per_node.channels(allreduce(512 << 10), ring), Some(1));
    assert_eq!(
        one_per_node.channels(allreduce((512 << 10) + 1), ring),
        None
    );
    assert_eq!(
        one_per_node.channels(allreduce(8), Some((ALGO_TREE, PROTO_LL))),
        Some(1)
    );
    // CollNet (the tuner's own choice or NCCL's), NVLS, PAT: NCCL's count.
    for algo in [
        ALGO_COLLNET_CHAIN,
        ALGO_COLLNET_DIRECT,
        ALGO_NVLS,
        ALGO_NVLS_TREE,
        ALGO_PAT,
    ] {
        assert_eq!(
            one_per_node.channels(allreduce(256 << 10), Some((algo, PROTO_SIMPLE))),
            None,
            "{}",
            ALGO_NAMES[algo]
        );
    }
    assert_eq!(one_per_node.channels(allreduce(256 << 10), None), None);
    let other = Call {
        func: ALLGATHER,
        ..allreduce(256 << 10)
    };
    assert_eq!(one_per_node.channels(other, ring), None, "allgather");
    // One rank in all: no hop at all.
    let alone = Tuner::new(1, 1, LinkProfile::default(), fp8_on());
    assert_eq!(alone.channels(allreduce(256 << 10), ring), None);
    // Eight GPUs per node: the other hops are NVLink, channels stay.
    let eight_per_node = Tuner::new(16, 2, LinkProfile::default(), fp8_on());
    assert_eq!(eight_per_node.channels(allreduce(256 << 10), ring), None);
    // One rank per node, but nodes share an NVLink domain (multi-node NVLink).
    let shared_domain = one_per_node
        .clone()
        .with_max_ranks_per_nvlink_domain(Some(2));
    assert_eq!(shared_domain.channels(allreduce(256 << 10), ring), None);
    let own_domain = one_per_node
        .clone()
        .with_max_ranks_per_nvlink_domain(Some(1));
    assert_eq!(own_domain.channels(allreduce(256 << 10), ring), Some(1));
    let off = Policy {
        single_channel_bytes: 0,
        ..fp8_on()
    };
    let t = Tuner::new(2, 2, LinkProfile::default(), off);
    assert_eq!(t.channels(allreduce(256 << 10), ring), None);
    assert_eq!(t.channels(allreduce(0), ring), None, "0 turns it off");
}

/// A configuration with one key set through its environment variable.
fn config_with(key: &str, value: &str) -> Config {
    let env = crate::config::KEYS
        .iter()
        .find(|k| k.name == key)
        .unwrap_or_else(|| panic!("no key {key}"))
        .env;
    let (cfg, diags) = Config::from_sources(None, [(env, value)]);
    assert!(diags.is_empty(), "{key}={value}: {diags:?}");
    cfg
}

#[test]
fn the_agreement_digest_covers_exactly_the_keys_ranks_must_share() {
    let base = agreement_digest(&Config::default());
    assert_eq!(base, agreement_digest(&Config::default()));
    let changed = [
        ("tuner.enabled", "0"),
        ("tuner.single_channel_bytes", "1M"),
        ("tuner.min_gain", "0.2"),
        ("tuner.call_overhead_us", "10"),
        ("tuner.link_gbps", "25"),
        ("tuner.link_latency_us", "3"),
        ("tuner.encode_gvps", "2"),
        ("tuner.decode_gvps", "5"),
    ];
    assert_eq!(
        changed.map(|(k, _)| k),
        crate::config::AGREED_KEYS,
        "every agreed key is tried"
    );
    for (key, value) in changed {
        assert_ne!(agreement_digest(&config_with(key, value)), base, "{key}");
    }
    // What the collective network's members agree on when they join, and
    // what only shapes this host's own transport or workers.
    for (key, value) in [
        ("tuner.calibrate", "0"),
        ("compression.fp8_allreduce", "1"),
        ("compression.format", "int8"),
        ("transport.streams", "8"),
        ("collnet.workers", "3"),
    ] {
        assert_eq!(agreement_digest(&config_with(key, value)), base, "{key}");
    }
}
