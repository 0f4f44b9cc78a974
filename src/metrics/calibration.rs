//! The link and codec figures each communicator's tuner uses (agreed in the
//! collective network's `connect`, configured, or built-in), its crossover
//! size, and how long the calibration took in `connect`:
//!
//! * `airamp_tuner_link_bytes_per_second{comm,source}`
//! * `airamp_tuner_link_latency_seconds{comm,source}`
//! * `airamp_tuner_codec_values_per_second{comm,source,stage}`
//! * `airamp_tuner_crossover_bytes{comm,source}` (`+Inf`: never compressed)
//! * `airamp_calibration_connect_seconds{comm}` (collective-network members)
//!
//! Written once per communicator, read by every scrape: fixed slots, each a
//! small seqlock of atomics (no lock, so rendering stays safe in a forked
//! child), the oldest overwritten when more communicators come. One series
//! per `comm` label: the newest entry wins (tuners before v5 have no id, so
//! their communicators share `comm="none"`; several ranks of one
//! communicator in one process record the same figures).

use std::fmt::Write as _;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

use super::render::header;

/// Communicators remembered (the newest).
const SLOTS: usize = 32;
/// Fields per slot: the values, then the write order.
const FIELDS: usize = 8;

/// What one communicator's tuner uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    /// NCCL's communicator id; `None` before tuner v5 (no id).
    pub comm: Option<u64>,
    /// Short word for where the figures came from (`agreed`, `config`, ...).
    pub source: &'static str,
    pub gbps: f64,
    pub latency_us: f64,
    pub encode_gvps: f64,
    pub decode_gvps: f64,
    /// Smallest allreduce the tuner compresses, `None`: none.
    pub crossover_bytes: Option<u64>,
}

/// Every `source` value [`Profile::source`] may take.
pub const SOURCES: [&str; 5] = [
    "agreed",
    "agreed_config",
    "config",
    "config_partial",
    "default",
];

struct Slot {
    /// Even: stable; odd: being written; 0: never written.
    seq: AtomicU64,
    fields: [AtomicU64; FIELDS],
}

struct Slots {
    next: AtomicU64,
    slots: [Slot; SLOTS],
}

impl Slots {
    const fn new() -> Slots {
        Slots {
            next: AtomicU64::new(0),
            slots: [const {
                Slot {
                    seq: AtomicU64::new(0),
                    fields: [const { AtomicU64::new(0) }; FIELDS],
                }
            }; SLOTS],
        }
    }

    fn put(&self, values: [u64; FIELDS - 1]) {
        let order = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(order as usize) % SLOTS];
        slot.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (f, v) in slot.fields.iter().zip(values.into_iter().chain([order])) {
            f.store(v, Ordering::Relaxed);
        }
        slot.seq.fetch_add(1, Ordering::Release);
    }

    /// The newest entry of each distinct first field (the communicator),
    /// newest first.
    fn read(&self) -> Vec<[u64; FIELDS]> {
        let mut all = self.read_all();
        all.sort_by_key(|f| std::cmp::Reverse(f[FIELDS - 1]));
        let mut seen = std::collections::BTreeSet::new();
        all.retain(|f| seen.insert(f[0]));
        all
    }

    fn read_all(&self) -> Vec<[u64; FIELDS]> {
        let mut out = Vec::new();
        for slot in &self.slots {
            let before = slot.seq.load(Ordering::Acquire);
            if before == 0 || before % 2 == 1 {
                continue;
            }
            let fields = std::array::from_fn(|i| slot.fields[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) == before {
                out.push(fields);
            }
        }
        out
    }
}

static PROFILES: Slots = Slots::new();
static CONNECTS: Slots = Slots::new();

/// Communicator id as a label value.
fn comm_label(comm: Option<u64>) -> String {
    comm.map_or("none".to_string(), |c| format!("{c:#018x}"))
}

const NO_COMM: u64 = u64::MAX;
const NEVER: u64 = u64::MAX;

/// The calibration and tuner-profile metrics.
pub struct CalibrationMetrics(());

static METRICS: CalibrationMetrics = CalibrationMetrics(());

pub fn calibration() -> &'static CalibrationMetrics {
    &METRICS
}

impl CalibrationMetrics {
    /// Records the profile a communicator's tuner uses (at its `init`).
    pub fn tuner_profile(&self, p: &Profile) {
        let source = SOURCES
            .iter()
            .position(|s| *s == p.source)
            .unwrap_or(SOURCES.len() - 1) as u64;
        PROFILES.put([
            p.comm.unwrap_or(NO_COMM),
            source,
            p.gbps.to_bits(),
            p.latency_us.to_bits(),
            p.encode_gvps.to_bits(),
            p.decode_gvps.to_bits(),
            p.crossover_bytes.unwrap_or(NEVER),
        ]);
    }

    /// Records how long calibration took in a collective network's `connect`.
    pub fn connect_took(&self, comm: u64, took: Duration) {
        CONNECTS.put([
            comm,
            took.as_nanos().min(u128::from(u64::MAX)) as u64,
            0,
            0,
            0,
            0,
            0,
        ]);
    }

    /// The newest profile of each communicator, newest first.
    pub fn profiles(&self) -> Vec<Profile> {
        PROFILES
            .read()
            .into_iter()
            .map(|f| Profile {
                comm: (f[0] != NO_COMM).then_some(f[0]),
                source: SOURCES.get(f[1] as usize).copied().unwrap_or("default"),
                gbps: f64::from_bits(f[2]),
                latency_us: f64::from_bits(f[3]),
                encode_gvps: f64::from_bits(f[4]),
                decode_gvps: f64::from_bits(f[5]),
                crossover_bytes: (f[6] != NEVER).then_some(f[6]),
            })
            .collect()
    }
}

/// Renders the families (headers always, one series per remembered
/// communicator).
pub(crate) fn render(out: &mut String) {
    let profiles = calibration().profiles();
    let labels = |p: &Profile| format!("comm=\"{}\",source=\"{}\"", comm_label(p.comm), p.source);
    header(
        out,
        "airamp_tuner_link_bytes_per_second",
        "gauge",
        "Link bandwidth (each direction, under two-way load) the tuner of a communicator uses; source: agreed in the collective network's connect, config, or default.",
    );
    for p in &profiles {
        let _ = writeln!(
            out,
            "airamp_tuner_link_bytes_per_second{{{}}} {}",
            labels(p),
            p.gbps * 1e9 / 8.0
        );
    }
    header(
        out,
        "airamp_tuner_link_latency_seconds",
        "gauge",
        "One-way link latency the tuner of a communicator uses.",
    );
    for p in &profiles {
        let _ = writeln!(
            out,
            "airamp_tuner_link_latency_seconds{{{}}} {}",
            labels(p),
            p.latency_us / 1e6
        );
    }
    header(
        out,
        "airamp_tuner_codec_values_per_second",
        "gauge",
        "FP8 codec speed (stage: encode, or decode and accumulate) the tuner of a communicator uses.",
    );
    for p in &profiles {
        for (stage, v) in [("encode", p.encode_gvps), ("decode", p.decode_gvps)] {
            let _ = writeln!(
                out,
                "airamp_tuner_codec_values_per_second{{{},stage=\"{stage}\"}} {}",
                labels(p),
                v * 1e9
            );
        }
    }
    header(
        out,
        "airamp_tuner_crossover_bytes",
        "gauge",
        "Smallest power-of-two allreduce (4 KiB .. 1 GiB) the tuner's model sends through compressed CollNet on this profile; +Inf: none.",
    );
    for p in &profiles {
        let v = p
            .crossover_bytes
            .map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(out, "airamp_tuner_crossover_bytes{{{}}} {v}", labels(p));
    }
    header(
        out,
        "airamp_calibration_connect_seconds",
        "gauge",
        "Time the calibration rounds took in a collective network's connect (members only).",
    );
    for f in CONNECTS.read() {
        let _ = writeln!(
            out,
            "airamp_calibration_connect_seconds{{comm=\"{}\"}} {}",
            comm_label(Some(f[0])),
            f[1] as f64 / 1e9
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_renders_profiles() {
        let p = Profile {
            comm: Some(0xabc),
            source: "agreed",
            gbps: 2.5,
            latency_us: 40.0,
            encode_gvps: 1.5,
            decode_gvps: 6.5,
            crossover_bytes: Some(1 << 18),
        };
        calibration().tuner_profile(&p);
        calibration().tuner_profile(&Profile {
            comm: None,
            source: "default",
            crossover_bytes: None,
            ..p
        });
        calibration().connect_took(0xabc, Duration::from_millis(31));
        assert!(calibration().profiles().contains(&p));
        let mut out = String::new();
        render(&mut out);
        for line in [
            "airamp_tuner_link_bytes_per_second{comm=\"0x0000000000000abc\",source=\"agreed\"} 312500000",
            "airamp_tuner_link_latency_seconds{comm=\"0x0000000000000abc\",source=\"agreed\"} 0.00004",
            "airamp_tuner_codec_values_per_second{comm=\"0x0000000000000abc\",source=\"agreed\",stage=\"decode\"} 6500000000",
            "airamp_tuner_crossover_bytes{comm=\"0x0000000000000abc\",source=\"agreed\"} 262144",
            "airamp_tuner_crossover_bytes{comm=\"none\",source=\"default\"} +Inf",
            "airamp_calibration_connect_seconds{comm=\"0x0000000000000abc\"} 0.031",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
    }

    #[test]
    fn keeps_the_newest_communicators_once_each() {
        let slots = Slots::new();
        let put = |comm: u64, v: u64| slots.put([comm, v, 0, 0, 0, 0, 0]);
        for i in 0..(SLOTS as u64 + 5) {
            put(0x1000 + i, 1);
        }
        let kept: Vec<u64> = slots.read().iter().map(|f| f[0]).collect();
        assert_eq!(kept.len(), SLOTS);
        assert!(kept.contains(&(0x1000 + SLOTS as u64 + 4)));
        assert!(!kept.contains(&0x1000));
        // The same communicator again: one series, the newest value.
        put(0x1010, 7);
        put(0x1010, 9);
        let same: Vec<u64> = slots
            .read()
            .iter()
            .filter(|f| f[0] == 0x1010)
            .map(|f| f[1])
            .collect();
        assert_eq!(same, vec![9]);
    }
}
