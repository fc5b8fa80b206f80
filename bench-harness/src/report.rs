//! Run results: the scenario outcome, the JSON result document with its
//! validity section, and the human-readable summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::metrics::{LatencySummary, WorkerReport};
use crate::procfs::{window_use, TimedSample};

/// A rate the scenario aimed for and what it achieved.
#[derive(Debug, Clone, Serialize)]
pub struct RateCheck {
    /// What the rate counts, e.g. `publishes/s`.
    pub what: String,
    /// Requested rate.
    pub requested: f64,
    /// Achieved rate.
    pub achieved: f64,
    /// True when the harness drives this rate (missing it means the harness was the bottleneck).
    pub harness_driven: bool,
}

impl RateCheck {
    /// Achieved as a fraction of requested.
    pub fn ratio(&self) -> f64 {
        if self.requested > 0.0 {
            self.achieved / self.requested
        } else {
            1.0
        }
    }
}

/// What a scenario's parent side hands back for reporting.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every worker's report.
    pub reports: Vec<WorkerReport>,
    /// Headline numbers.
    pub metrics: BTreeMap<String, f64>,
    /// Requested versus achieved rates.
    pub rates: Vec<RateCheck>,
    /// Expected deliveries, when the scenario counts them.
    pub expected: Option<u64>,
    /// Actual deliveries.
    pub delivered: Option<u64>,
    /// Unix-ns window of the measured phase (for CPU figures).
    pub window: Option<(u64, u64)>,
    /// Shared time origin of the per-second timelines.
    pub epoch_ns: u64,
    /// Remarks for the summary.
    pub notes: Vec<String>,
}

/// Server process figures.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStats {
    /// PID read.
    pub pid: u32,
    /// RSS at the first sample.
    pub rss_start_bytes: u64,
    /// RSS at the last sample.
    pub rss_end_bytes: u64,
    /// Highest RSS sampled.
    pub rss_peak_bytes: u64,
    /// CPU seconds over the whole run.
    pub cpu_seconds_total: f64,
    /// CPU seconds within the measured window.
    pub cpu_seconds_window: Option<f64>,
    /// Average cores busy within the measured window.
    pub cores_in_window: Option<f64>,
}

/// Harness process figures.
#[derive(Debug, Clone, Serialize)]
pub struct HarnessStats {
    /// Harness processes (parent plus children, or one).
    pub processes: usize,
    /// Runtime threads per process.
    pub threads_per_process: usize,
    /// CPU seconds of all harness processes over the run.
    pub cpu_seconds_total: f64,
    /// Wall-clock seconds of the run.
    pub wall_seconds: f64,
    /// Cores used by the busiest harness process within the measured window.
    pub busiest_process_cores_in_window: Option<f64>,
    /// Cores used by all harness processes within the measured window.
    pub all_processes_cores_in_window: Option<f64>,
    /// Cores busy on the whole machine within the measured window.
    pub machine_cores_busy_in_window: Option<f64>,
    /// Cores in the machine.
    pub machine_cores: usize,
}

/// Whether the numbers can be trusted, and why not.
#[derive(Debug, Clone, Serialize)]
pub struct Validity {
    /// Requested versus achieved rates.
    pub rates: Vec<RateCheck>,
    /// Expected deliveries.
    pub expected: Option<u64>,
    /// Actual deliveries.
    pub delivered: Option<u64>,
    /// Expected minus delivered (0 when not counted).
    pub lost: u64,
    /// Total errors.
    pub errors: u64,
    /// The harness, not the server, limited the run.
    pub harness_bottleneck: bool,
    /// Rates were met and the harness was not the bottleneck.
    pub valid: bool,
    /// No errors and no lost messages.
    pub clean: bool,
    /// Explanations.
    pub notes: Vec<String>,
}

/// The JSON result document.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// User label.
    pub label: String,
    /// Scenario name.
    pub scenario: String,
    /// Scenario arguments.
    pub params: serde_json::Value,
    /// WebSocket target.
    pub target: String,
    /// Unix seconds at the start.
    pub started_unix: u64,
    /// Headline numbers.
    pub metrics: BTreeMap<String, f64>,
    /// Raw counters merged over workers.
    pub counters: BTreeMap<String, u64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latency summaries in microseconds.
    pub latency_us: BTreeMap<String, LatencySummary>,
    /// Per-second series (counts per second, server CPU %, RSS MiB).
    pub timeline_per_s: BTreeMap<String, Vec<f64>>,
    /// Server process figures (with --server-pid).
    pub server: Option<ServerStats>,
    /// Harness process figures.
    pub harness: HarnessStats,
    /// Validity verdict.
    pub validity: Validity,
}

/// Inputs for building a [`RunReport`] besides the outcome.
pub struct BuildInfo<'a> {
    /// Label.
    pub label: String,
    /// Scenario name.
    pub scenario: &'a str,
    /// Scenario arguments.
    pub params: serde_json::Value,
    /// Target URL.
    pub target: String,
    /// Unix seconds at the start.
    pub started_unix: u64,
    /// Processes.
    pub procs: usize,
    /// Threads per process.
    pub threads: usize,
    /// Samples of the parent process.
    pub self_samples: Vec<TimedSample>,
    /// Server PID and samples.
    pub server: Option<(u32, Vec<TimedSample>)>,
    /// Busy CPU samples of the whole machine.
    pub system_samples: Vec<TimedSample>,
    /// Wall-clock seconds of the run.
    pub wall_seconds: f64,
}

fn per_second(samples: &[TimedSample], epoch: u64, f: impl Fn(&TimedSample) -> f64) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for s in samples.iter().filter(|s| s.t_ns >= epoch) {
        let sec = ((s.t_ns - epoch) / 1_000_000_000) as usize;
        if out.len() <= sec {
            out.resize(sec + 1, f64::NAN);
        }
        out[sec] = f(s);
    }
    out
}

fn cpu_percent_per_second(samples: &[TimedSample], epoch: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut sec_start: Option<&TimedSample> = None;
    for s in samples.iter().filter(|s| s.t_ns >= epoch) {
        let start = *sec_start.get_or_insert(s);
        if s.t_ns - start.t_ns >= 1_000_000_000 {
            let dt = (s.t_ns - start.t_ns) as f64 / 1e9;
            out.push(100.0 * (s.cpu_seconds - start.cpu_seconds) / dt);
            sec_start = Some(s);
        }
    }
    out
}

fn total_cpu(samples: &[TimedSample]) -> f64 {
    match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => (b.cpu_seconds - a.cpu_seconds).max(0.0),
        _ => 0.0,
    }
}

impl RunReport {
    /// Combines the outcome with process samples into the result document.
    pub fn build(info: BuildInfo<'_>, outcome: Outcome) -> RunReport {
        let (merged, child_cpu) = WorkerReport::merge_all(&outcome.reports);
        let epoch = outcome.epoch_ns;
        let mut notes = outcome.notes.clone();

        let latency_us = merged
            .histograms
            .iter()
            .filter_map(|(k, v)| LatencySummary::from_data(v).map(|s| (k.clone(), s)))
            .collect();
        let mut timeline: BTreeMap<String, Vec<f64>> = merged
            .timelines
            .iter()
            .map(|(k, v)| (format!("{k}_per_s"), v.iter().map(|&x| x as f64).collect()))
            .collect();

        // Harness CPU: the parent process (which also hosts in-process workers) plus children.
        let mut procs_samples = vec![info.self_samples.clone()];
        procs_samples.extend(child_cpu);
        let cpu_total: f64 = procs_samples.iter().map(|s| total_cpu(s)).sum();
        let busiest = outcome.window.and_then(|(a, b)| {
            procs_samples
                .iter()
                .filter_map(|s| window_use(s, a, b).map(|u| u.cores()))
                .reduce(f64::max)
        });
        let harness_window: Option<f64> = outcome.window.map(|(a, b)| {
            procs_samples
                .iter()
                .filter_map(|s| window_use(s, a, b).map(|u| u.cores()))
                .sum()
        });
        let machine_window = outcome
            .window
            .and_then(|(a, b)| window_use(&info.system_samples, a, b))
            .map(|u| u.cores());
        let machine_cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        timeline.insert(
            "machine_cpu_percent".into(),
            cpu_percent_per_second(&info.system_samples, epoch),
        );
        timeline.insert(
            "harness_parent_cpu_percent".into(),
            cpu_percent_per_second(&info.self_samples, epoch),
        );

        let server = info.server.as_ref().and_then(|(pid, samples)| {
            let first = samples.first()?;
            let last = samples.last()?;
            let win = outcome.window.and_then(|(a, b)| window_use(samples, a, b));
            timeline.insert(
                "server_cpu_percent".into(),
                cpu_percent_per_second(samples, epoch),
            );
            timeline.insert(
                "server_rss_mib".into(),
                per_second(samples, epoch, |s| s.rss_bytes as f64 / 1048576.0),
            );
            Some(ServerStats {
                pid: *pid,
                rss_start_bytes: first.rss_bytes,
                rss_end_bytes: last.rss_bytes,
                rss_peak_bytes: samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
                cpu_seconds_total: total_cpu(samples),
                cpu_seconds_window: win.map(|w| w.cpu_seconds),
                cores_in_window: win.map(|w| w.cores()),
            })
        });

        let mut bottleneck = false;
        if let Some(c) = busiest {
            if c >= 0.9 * info.threads as f64 {
                bottleneck = true;
                notes.push(format!(
                    "harness bottleneck: a harness process used {c:.2} cores with {} runtime thread(s) during the measurement; add --procs or --threads",
                    info.threads
                ));
            }
        }
        let mut rates_ok = true;
        let harness_busy = bottleneck;
        for r in &outcome.rates {
            if r.ratio() < 0.95 {
                rates_ok = false;
                // Publishers wait for each HTTP answer, so a missed publish rate is the harness's
                // fault only when the harness was busy; otherwise the server answered slowly.
                if r.harness_driven && harness_busy {
                    notes.push(format!(
                        "harness bottleneck: achieved {:.1} {} of {:.1} requested ({:.0}%)",
                        r.achieved,
                        r.what,
                        r.requested,
                        100.0 * r.ratio()
                    ));
                } else {
                    let why = if r.harness_driven {
                        " (the harness was not busy: the server answered slowly)"
                    } else {
                        ""
                    };
                    notes.push(format!(
                        "rate not reached{why}: {:.1} {} of {:.1} requested ({:.0}%)",
                        r.achieved,
                        r.what,
                        r.requested,
                        100.0 * r.ratio()
                    ));
                }
            }
        }
        let server_window = server.as_ref().and_then(|s| s.cores_in_window);
        if let (Some(busy), Some(h)) = (machine_window, harness_window) {
            let others = busy - h - server_window.unwrap_or(0.0);
            if busy >= 0.95 * machine_cores as f64 {
                rates_ok = false;
                notes.push(format!(
                    "machine CPU saturated while measuring ({busy:.2} of {machine_cores} cores busy; other processes {others:.2} cores): latency is not representative"
                ));
            } else if info.server.is_some() && others > 0.25 * machine_cores as f64 {
                notes.push(format!(
                    "other processes used {others:.2} cores while measuring: results may be disturbed"
                ));
            }
        }
        let lost = match (outcome.expected, outcome.delivered) {
            (Some(e), Some(d)) => e.saturating_sub(d),
            _ => 0,
        };
        if lost > 0 {
            notes.push(format!("{lost} expected deliveries did not arrive"));
        }
        let errors = merged.error_total();
        if errors > 0 {
            notes.push(format!("{errors} errors (see errors)"));
        }

        RunReport {
            label: info.label,
            scenario: info.scenario.to_string(),
            params: info.params,
            target: info.target,
            started_unix: info.started_unix,
            metrics: outcome.metrics,
            counters: merged.counters.clone(),
            errors: merged.errors.clone(),
            latency_us,
            timeline_per_s: timeline,
            server,
            harness: HarnessStats {
                processes: info.procs + usize::from(info.procs > 1),
                threads_per_process: info.threads,
                cpu_seconds_total: cpu_total,
                wall_seconds: info.wall_seconds,
                busiest_process_cores_in_window: busiest,
                all_processes_cores_in_window: harness_window,
                machine_cores_busy_in_window: machine_window,
                machine_cores,
            },
            validity: Validity {
                rates: outcome.rates,
                expected: outcome.expected,
                delivered: outcome.delivered,
                lost,
                errors,
                harness_bottleneck: bottleneck,
                valid: rates_ok && !bottleneck,
                clean: lost == 0 && errors == 0,
                notes,
            },
        }
    }

    /// Writes the JSON document.
    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== {} [{}] against {} ==",
            self.scenario, self.label, self.target
        );
        let _ = writeln!(
            s,
            "harness: {} process(es) x {} thread(s), {:.2} CPU s over {:.1} s{}",
            self.harness.processes,
            self.harness.threads_per_process,
            self.harness.cpu_seconds_total,
            self.harness.wall_seconds,
            self.harness
                .busiest_process_cores_in_window
                .map(|c| format!(", busiest process {c:.2} cores while measuring"))
                .unwrap_or_default()
        );
        if let Some(busy) = self.harness.machine_cores_busy_in_window {
            let _ = writeln!(
                s,
                "machine: {busy:.2} of {} cores busy while measuring",
                self.harness.machine_cores
            );
        }
        for (k, v) in &self.metrics {
            let _ = writeln!(s, "  {k:<40} {}", fmt_num(*v));
        }
        if !self.latency_us.is_empty() {
            let _ = writeln!(
                s,
                "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
            );
            for (k, l) in &self.latency_us {
                let ms = |v: u64| format!("{:.3}", v as f64 / 1000.0);
                let _ = writeln!(
                    s,
                    "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    k,
                    l.count,
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.p999),
                    ms(l.max)
                );
            }
        }
        if let Some(sv) = &self.server {
            let _ = writeln!(
                s,
                "server pid {}: RSS {:.1} -> {:.1} MiB (peak {:.1}), CPU {:.2} s total{}",
                sv.pid,
                sv.rss_start_bytes as f64 / 1048576.0,
                sv.rss_end_bytes as f64 / 1048576.0,
                sv.rss_peak_bytes as f64 / 1048576.0,
                sv.cpu_seconds_total,
                sv.cores_in_window
                    .map(|c| format!(", {c:.2} cores while measuring"))
                    .unwrap_or_default()
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "errors: {}", list.join(" "));
        }
        let v = &self.validity;
        let _ = writeln!(
            s,
            "validity: {}{}{}",
            if v.valid { "VALID" } else { "NOT VALID" },
            if v.harness_bottleneck {
                " (harness bottleneck)"
            } else {
                ""
            },
            if v.clean {
                ", no errors, nothing lost"
            } else {
                ", errors or losses"
            }
        );
        for n in &v.notes {
            let _ = writeln!(s, "  - {n}");
        }
        s
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}
