//! Process metrics from /proc: resident memory and consumed CPU time of the
//! server (by PID) and of the harness itself.

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

/// One reading of a process's memory and CPU counters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProcSample {
    /// Resident set size in bytes (VmRSS).
    pub rss_bytes: u64,
    /// User plus system CPU time in seconds.
    pub cpu_seconds: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Busy CPU seconds of the whole machine (all cores) from /proc/stat.
pub fn system_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    Ok(busy as f64 / clock_ticks())
}

/// Reads RSS and CPU time of `pid` ("self" for the harness process, "system"
/// for the busy CPU time of the whole machine with RSS 0).
pub fn sample(pid: &str) -> Result<ProcSample> {
    if pid == "system" {
        return Ok(ProcSample {
            rss_bytes: 0,
            cpu_seconds: system_busy_seconds()?,
        });
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(ProcSample {
        rss_bytes: rss_kb * 1024,
        cpu_seconds: cpu_seconds(pid)?,
    })
}

/// User plus system CPU seconds of `pid` from /proc/PID/stat (fields 14 and 15).
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces: fields are counted after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')' the first field is the state (field 3), so utime (14) is index 11.
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((utime + stime) as f64 / clock_ticks())
}

/// CPU use over a measured interval.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// CPU seconds consumed (user + system).
    pub cpu_seconds: f64,
    /// Wall-clock seconds of the interval.
    pub wall_seconds: f64,
}

impl CpuUse {
    /// Average number of cores busy over the interval.
    pub fn cores(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            self.cpu_seconds / self.wall_seconds
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = sample("self").unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_seconds >= 0.0);
    }
}

/// One timed reading of a process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TimedSample {
    /// Unix time of the reading in nanoseconds.
    pub t_ns: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Cumulative CPU seconds.
    pub cpu_seconds: f64,
}

/// Periodically samples a process in the background.
pub struct Sampler {
    samples: std::sync::Arc<std::sync::Mutex<Vec<TimedSample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `pid` ("self" for this process) every `every`.
    pub fn spawn(pid: String, every: std::time::Duration) -> Self {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Ok(s) = sample(&pid) else { break };
                let ts = TimedSample {
                    t_ns: crate::metrics::unix_ns(),
                    rss_bytes: s.rss_bytes,
                    cpu_seconds: s.cpu_seconds,
                };
                out.lock().unwrap_or_else(|e| e.into_inner()).push(ts);
            }
        });
        Sampler { samples, task }
    }

    /// Samples taken so far.
    pub fn snapshot(&self) -> Vec<TimedSample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops sampling and returns every sample.
    pub fn stop(self) -> Vec<TimedSample> {
        self.task.abort();
        self.snapshot()
    }
}

/// CPU use between the samples closest to `start_ns` and `end_ns` (inside the window).
pub fn window_use(samples: &[TimedSample], start_ns: u64, end_ns: u64) -> Option<CpuUse> {
    let first = samples.iter().find(|s| s.t_ns >= start_ns)?;
    let last = samples.iter().rev().find(|s| s.t_ns <= end_ns)?;
    if last.t_ns <= first.t_ns {
        return None;
    }
    Some(CpuUse {
        cpu_seconds: (last.cpu_seconds - first.cpu_seconds).max(0.0),
        wall_seconds: (last.t_ns - first.t_ns) as f64 / 1e9,
    })
}
