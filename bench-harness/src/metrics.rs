//! Measurement collection: per-worker live statistics (counters, errors,
//! HDR latency histograms, per-second timelines) and the serializable
//! [`WorkerReport`] that workers hand back and the parent merges.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::procfs::TimedSample;

/// Highest latency the histograms track, in microseconds (10 minutes).
const MAX_US: u64 = 600_000_000;

/// Nanoseconds since the Unix epoch on the real-time clock (shared by all processes).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// A histogram as (value, count) pairs of its non-empty buckets, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

impl HistData {
    fn from_hist(h: &Histogram<u64>) -> Self {
        HistData(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Rebuilds an HDR histogram from the buckets.
    pub fn to_hist(&self) -> Histogram<u64> {
        let mut h = new_hist();
        for &(v, n) in &self.0 {
            let _ = h.record_n(v.clamp(1, MAX_US), n);
        }
        h
    }
}

/// Everything one worker measured; mergeable across workers and processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Named event counts (e.g. `delivered`, `connected`).
    pub counters: BTreeMap<String, u64>,
    /// Error counts by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latency histograms in microseconds, by name.
    pub histograms: BTreeMap<String, HistData>,
    /// Per-second counts since the run epoch, by name.
    pub timelines: BTreeMap<String, Vec<u64>>,
    /// Vectors added element-wise when merging (e.g. sends per channel).
    pub vectors: BTreeMap<String, Vec<u64>>,
    /// (min, max) of named values, merged by min and max (e.g. first/last connect time).
    #[serde(default)]
    pub extremes: BTreeMap<String, (u64, u64)>,
    /// CPU samples of the worker's own process (only set by child processes).
    #[serde(default)]
    pub cpu_samples: Vec<TimedSample>,
}

fn add_vec(dst: &mut Vec<u64>, src: &[u64]) {
    if dst.len() < src.len() {
        dst.resize(src.len(), 0);
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

impl WorkerReport {
    /// Adds another worker's measurements into this one.
    pub fn merge(&mut self, other: &WorkerReport) {
        for (k, v) in &other.counters {
            *self.counters.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.histograms {
            let dst = self.histograms.entry(k.clone()).or_default();
            dst.0.extend_from_slice(&v.0);
        }
        for (k, v) in &other.timelines {
            add_vec(self.timelines.entry(k.clone()).or_default(), v);
        }
        for (k, v) in &other.vectors {
            add_vec(self.vectors.entry(k.clone()).or_default(), v);
        }
        for (k, &(lo, hi)) in &other.extremes {
            let e = self.extremes.entry(k.clone()).or_insert((lo, hi));
            e.0 = e.0.min(lo);
            e.1 = e.1.max(hi);
        }
    }

    /// Merges all reports; also returns each child process's CPU samples.
    pub fn merge_all(reports: &[WorkerReport]) -> (WorkerReport, Vec<Vec<TimedSample>>) {
        let mut merged = WorkerReport::default();
        let mut cpu = Vec::new();
        for r in reports {
            merged.merge(r);
            if !r.cpu_samples.is_empty() {
                cpu.push(r.cpu_samples.clone());
            }
        }
        (merged, cpu)
    }

    /// Value of a counter (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Sum of all error counts.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[derive(Default)]
struct Live {
    counters: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    hists: BTreeMap<&'static str, Histogram<u64>>,
    timelines: BTreeMap<&'static str, Vec<u64>>,
    vectors: BTreeMap<&'static str, Vec<u64>>,
    extremes: BTreeMap<&'static str, (u64, u64)>,
}

/// Live statistics shared by the tasks of one worker.
pub struct Stats {
    live: Mutex<Live>,
    epoch_ns: AtomicU64,
    /// Connections ready (established / subscribed), reported to the parent.
    pub ready: AtomicU64,
    /// Units of work done (deliveries), reported to the parent.
    pub progress: AtomicU64,
    /// Number of errors so far.
    pub errors_total: AtomicU64,
    /// Expected total for the progress counter, when workers compute it (0 = parent knows).
    pub expect: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            live: Mutex::new(Live::default()),
            epoch_ns: AtomicU64::new(unix_ns()),
            ready: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            expect: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
        }
    }
}

impl Stats {
    fn with<R>(&self, f: impl FnOnce(&mut Live) -> R) -> R {
        let mut g = self.live.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Sets the time origin of the per-second timelines.
    pub fn set_epoch(&self, epoch_ns: u64) {
        self.epoch_ns.store(epoch_ns, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn count(&self, name: &'static str, n: u64) {
        self.with(|l| *l.counters.entry(name).or_default() += n);
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: impl Into<String>) {
        self.errors_n(kind, 1);
    }

    /// Counts `n` errors of one kind at once.
    pub fn errors_n(&self, kind: impl Into<String>, n: u64) {
        let kind = kind.into();
        self.errors_total.fetch_add(n, Ordering::Relaxed);
        self.with(|l| *l.errors.entry(kind).or_default() += n);
    }

    /// Records a latency in microseconds.
    pub fn record_us(&self, hist: &'static str, us: u64) {
        self.with(|l| {
            let h = l.hists.entry(hist).or_insert_with(new_hist);
            let _ = h.record(us.clamp(1, MAX_US));
        });
    }

    /// Counts one event at unix time `at_ns` in a per-second timeline.
    pub fn tick(&self, timeline: &'static str, at_ns: u64) {
        let epoch = self.epoch_ns.load(Ordering::Relaxed);
        let sec = (at_ns.saturating_sub(epoch) / 1_000_000_000) as usize;
        if sec > 24 * 3600 {
            return;
        }
        self.with(|l| {
            let v = l.timelines.entry(timeline).or_default();
            if v.len() <= sec {
                v.resize(sec + 1, 0);
            }
            v[sec] += 1;
        });
    }

    /// Records one delivered message: latency from its scheduled time, a
    /// counter, a timeline tick and one unit of progress, under one lock.
    pub fn delivery(&self, name: &'static str, hist: &'static str, sched_ns: u64, now_ns: u64) {
        let epoch = self.epoch_ns.load(Ordering::Relaxed);
        let us = now_ns.saturating_sub(sched_ns) / 1000;
        let sec = (now_ns.saturating_sub(epoch) / 1_000_000_000) as usize;
        self.with(|l| {
            *l.counters.entry(name).or_default() += 1;
            let h = l.hists.entry(hist).or_insert_with(new_hist);
            let _ = h.record(us.clamp(1, MAX_US));
            let e = l.extremes.entry(name).or_insert((now_ns, now_ns));
            e.0 = e.0.min(now_ns);
            e.1 = e.1.max(now_ns);
            if sec <= 24 * 3600 {
                let v = l.timelines.entry(name).or_default();
                if v.len() <= sec {
                    v.resize(sec + 1, 0);
                }
                v[sec] += 1;
            }
        });
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Tracks the smallest and largest `v` seen under `name`.
    pub fn extreme(&self, name: &'static str, v: u64) {
        self.with(|l| {
            let e = l.extremes.entry(name).or_insert((v, v));
            e.0 = e.0.min(v);
            e.1 = e.1.max(v);
        });
    }

    /// Adds `n` at index `i` of a vector.
    pub fn add_at(&self, vector: &'static str, i: usize, n: u64) {
        self.with(|l| {
            let v = l.vectors.entry(vector).or_default();
            if v.len() <= i {
                v.resize(i + 1, 0);
            }
            v[i] += n;
        });
    }

    /// Current value of a counter.
    pub fn counter(&self, name: &'static str) -> u64 {
        self.with(|l| l.counters.get(name).copied().unwrap_or(0))
    }

    /// Snapshot of everything measured so far.
    pub fn report(&self) -> WorkerReport {
        self.with(|l| WorkerReport {
            counters: l
                .counters
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            errors: l.errors.clone(),
            histograms: l
                .hists
                .iter()
                .map(|(k, h)| (k.to_string(), HistData::from_hist(h)))
                .collect(),
            timelines: l
                .timelines
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            vectors: l
                .vectors
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            extremes: l
                .extremes
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            cpu_samples: Vec::new(),
        })
    }
}

/// Percentile summary of a latency histogram, in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// (percentile, value) points for plotting.
    pub curve: Vec<(f64, u64)>,
}

/// Percentiles drawn in the latency plots.
pub const CURVE_PERCENTILES: [f64; 10] =
    [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0];

impl LatencySummary {
    /// Summarizes histogram data (None when it holds no samples).
    pub fn from_data(d: &HistData) -> Option<Self> {
        let h = d.to_hist();
        if h.is_empty() {
            return None;
        }
        Some(LatencySummary {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            curve: CURVE_PERCENTILES
                .iter()
                .map(|&p| (p, h.value_at_quantile(p / 100.0)))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_summarize() {
        let a = Stats::default();
        a.set_epoch(0);
        for i in 1..=100u64 {
            a.delivery("delivered", "latency", 0, i * 1000);
        }
        a.error("x");
        let b = Stats::default();
        b.delivery("delivered", "latency", 0, 500_000);
        let mut r = a.report();
        r.merge(&b.report());
        assert_eq!(r.counter("delivered"), 101);
        assert_eq!(r.error_total(), 1);
        let s = LatencySummary::from_data(&r.histograms["latency"]).unwrap();
        assert_eq!(s.count, 101);
        assert!(s.max >= 499 && s.max <= 501);
        assert!(s.p50 >= 49 && s.p50 <= 52);
    }
}
