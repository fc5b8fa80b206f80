//! Worker coordination. A scenario runs as one or more workers, in-process
//! (a task) or as child processes of the harness (`--worker I/P`, JSON lines
//! on stdout and stdin). Workers meet the parent at named barriers; the parent
//! does its part of the scenario (measure memory, publish, ...) between them.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::{Stats, WorkerReport};

/// Worker to parent message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Up {
    /// The worker reached barrier `name` and waits for its release.
    Barrier {
        /// Barrier name.
        name: String,
    },
    /// Periodic progress counters.
    Progress {
        /// Connections ready.
        ready: u64,
        /// Units of work done (deliveries).
        done: u64,
        /// Units of work expected, when the worker computes it.
        expect: u64,
    },
    /// The worker's final measurements.
    Result {
        /// Measurements.
        report: Box<WorkerReport>,
    },
    /// The worker failed.
    Failed {
        /// Error text.
        error: String,
    },
    /// The worker's output ended (synthesized by the parent).
    Eof,
}

/// Parent to worker message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Down {
    /// Release barrier `name`; `epoch_ns` is a shared time origin.
    Release {
        /// Barrier name.
        name: String,
        /// Shared unix-ns time origin chosen by the parent.
        epoch_ns: u64,
    },
}

/// Which share of the work a worker owns: global indices `i` with `i % procs == index`.
#[derive(Debug, Clone, Copy)]
pub struct Shard {
    /// This worker's index.
    pub index: usize,
    /// Number of workers.
    pub procs: usize,
}

impl Shard {
    /// Parses the hidden `--worker I/P` value.
    pub fn parse(s: &str) -> Result<Self> {
        let (i, p) = s.split_once('/').context("--worker expects I/P")?;
        let shard = Shard {
            index: i.parse()?,
            procs: p.parse()?,
        };
        if shard.procs == 0 || shard.index >= shard.procs {
            bail!("bad worker spec {s}");
        }
        Ok(shard)
    }

    /// The global indices in `0..total` this worker owns.
    pub fn indices(&self, total: usize) -> impl Iterator<Item = usize> {
        (self.index..total).step_by(self.procs)
    }

    /// How many of `total` items this worker owns.
    pub fn count(&self, total: usize) -> usize {
        self.indices(total).count()
    }

    /// How many indices of `range` this worker owns.
    pub fn count_in(&self, range: std::ops::Range<usize>) -> usize {
        range.filter(|g| g % self.procs == self.index).count()
    }
}

#[derive(Clone)]
enum UpTx {
    Chan(mpsc::UnboundedSender<(usize, Up)>, usize),
    Stdout,
}

impl UpTx {
    fn send(&self, up: Up) {
        match self {
            UpTx::Chan(tx, i) => {
                let _ = tx.send((*i, up));
            }
            UpTx::Stdout => {
                if let Ok(line) = serde_json::to_string(&up) {
                    println!("{line}");
                }
            }
        }
    }
}

enum DownRx {
    Chan(mpsc::UnboundedReceiver<Down>),
    Stdin(Lines<BufReader<tokio::io::Stdin>>),
}

/// The worker's end of the coordination channel, with its live statistics.
pub struct WorkerLink {
    up: UpTx,
    down: DownRx,
    /// Live statistics of this worker.
    pub stats: Arc<Stats>,
    reporter: JoinHandle<()>,
}

fn spawn_reporter(up: UpTx, stats: Arc<Stats>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            up.send(progress_of(&stats));
        }
    })
}

fn progress_of(stats: &Stats) -> Up {
    Up::Progress {
        ready: stats.ready.load(Ordering::Relaxed),
        done: stats.progress.load(Ordering::Relaxed),
        expect: stats.expect.load(Ordering::Relaxed),
    }
}

impl WorkerLink {
    /// The link of a child process: JSON lines on stdout, releases on stdin.
    pub fn stdio() -> Self {
        let stats = Arc::new(Stats::default());
        WorkerLink {
            up: UpTx::Stdout,
            down: DownRx::Stdin(BufReader::new(tokio::io::stdin()).lines()),
            reporter: spawn_reporter(UpTx::Stdout, stats.clone()),
            stats,
        }
    }

    /// Waits at barrier `name` until the parent releases it; returns the shared epoch.
    pub async fn barrier(&mut self, name: &str) -> Result<u64> {
        self.up.send(progress_of(&self.stats));
        self.up.send(Up::Barrier {
            name: name.to_string(),
        });
        loop {
            let down = match &mut self.down {
                DownRx::Chan(rx) => rx.recv().await,
                DownRx::Stdin(lines) => match lines.next_line().await? {
                    Some(l) => serde_json::from_str(&l).ok(),
                    None => None,
                },
            };
            match down {
                Some(Down::Release { name: n, epoch_ns }) if n == name => {
                    self.stats.set_epoch(epoch_ns);
                    return Ok(epoch_ns);
                }
                Some(_) => continue,
                None => bail!("parent went away while waiting at barrier {name}"),
            }
        }
    }

    /// Sends the final result (or failure) to the parent.
    pub fn finish(self, result: Result<WorkerReport>) {
        self.reporter.abort();
        self.up.send(progress_of(&self.stats));
        match result {
            Ok(report) => self.up.send(Up::Result {
                report: Box::new(report),
            }),
            Err(e) => self.up.send(Up::Failed {
                error: format!("{e:#}"),
            }),
        }
    }
}

enum DownTx {
    Chan(mpsc::UnboundedSender<Down>),
    Stdin(ChildStdin),
}

/// Which progress counter the progress bar shows.
#[derive(Debug, Clone, Copy)]
pub enum BarKind {
    /// Ready connections.
    Ready,
    /// Work done (deliveries).
    Done,
}

/// The parent's view of all workers.
pub struct Group {
    rx: mpsc::UnboundedReceiver<(usize, Up)>,
    downs: Vec<DownTx>,
    progress: Vec<(u64, u64, u64)>,
    arrived: Vec<HashSet<String>>,
    results: Vec<Option<WorkerReport>>,
    failure: Option<String>,
    children: Vec<Child>,
    bar: ProgressBar,
    bar_kind: BarKind,
    bar_len: u64,
}

/// Runs one worker; implemented by the scenario dispatcher.
pub type WorkerFn = Arc<
    dyn Fn(Shard, WorkerLink) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

impl Group {
    fn empty(procs: usize, quiet: bool) -> (Self, mpsc::UnboundedSender<(usize, Up)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {msg:24} {wide_bar} {pos}/{len}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        };
        let g = Group {
            rx,
            downs: Vec::new(),
            progress: vec![(0, 0, 0); procs],
            arrived: vec![HashSet::new(); procs],
            results: (0..procs).map(|_| None).collect(),
            failure: None,
            children: Vec::new(),
            bar,
            bar_kind: BarKind::Ready,
            bar_len: 0,
        };
        (g, tx)
    }

    /// Runs `procs` workers as tasks of this process.
    pub fn in_process(procs: usize, quiet: bool, worker: WorkerFn) -> Self {
        let (mut g, tx) = Self::empty(procs, quiet);
        for index in 0..procs {
            let (dtx, drx) = mpsc::unbounded_channel();
            let stats = Arc::new(Stats::default());
            let up = UpTx::Chan(tx.clone(), index);
            let link = WorkerLink {
                reporter: spawn_reporter(up.clone(), stats.clone()),
                up,
                down: DownRx::Chan(drx),
                stats,
            };
            g.downs.push(DownTx::Chan(dtx));
            tokio::spawn(worker(Shard { index, procs }, link));
        }
        g
    }

    /// Runs `procs` workers as child processes of this executable with the same arguments.
    pub fn spawn_children(procs: usize, quiet: bool, env: (&str, &str)) -> Result<Self> {
        let (mut g, tx) = Self::empty(procs, quiet);
        let exe = std::env::current_exe().context("locating the harness executable")?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        for index in 0..procs {
            let mut child = Command::new(&exe)
                .args(&args)
                .arg("--worker")
                .arg(format!("{index}/{procs}"))
                .env(env.0, env.1)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawning a worker process")?;
            let stdin = child.stdin.take().context("child stdin")?;
            let stdout = child.stdout.take().context("child stdout")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(up) = serde_json::from_str::<Up>(&line) {
                        let _ = tx.send((index, up));
                    }
                }
                let _ = tx.send((index, Up::Eof));
            });
            g.downs.push(DownTx::Stdin(stdin));
            g.children.push(child);
        }
        Ok(g)
    }

    /// Sets the progress bar's phase text, counter and length.
    pub fn set_bar(&mut self, msg: &str, kind: BarKind, len: u64) {
        self.bar_kind = kind;
        self.bar_len = len;
        self.bar.set_message(msg.to_string());
        self.bar.set_length(len);
        self.update_bar();
    }

    fn update_bar(&self) {
        let pos = match self.bar_kind {
            BarKind::Ready => self.ready(),
            BarKind::Done => self.done(),
        };
        let len = match self.bar_kind {
            BarKind::Done => self.bar_len.max(self.expect()),
            BarKind::Ready => self.bar_len,
        };
        self.bar.set_length(len.max(pos));
        self.bar.set_position(pos);
    }

    /// Hides the progress bar for good.
    pub fn finish_bar(&self) {
        self.bar.finish_and_clear();
    }

    /// Sum of the workers' ready counters.
    pub fn ready(&self) -> u64 {
        self.progress.iter().map(|p| p.0).sum()
    }

    /// Sum of the workers' done counters.
    pub fn done(&self) -> u64 {
        self.progress.iter().map(|p| p.1).sum()
    }

    /// Sum of the workers' expected counters.
    pub fn expect(&self) -> u64 {
        self.progress.iter().map(|p| p.2).sum()
    }

    fn handle(&mut self, index: usize, up: Up) {
        match up {
            Up::Barrier { name } => {
                self.arrived[index].insert(name);
            }
            Up::Progress {
                ready,
                done,
                expect,
            } => {
                self.progress[index] = (ready, done, expect);
                self.update_bar();
            }
            Up::Result { report } => self.results[index] = Some(*report),
            Up::Failed { error } => {
                self.failure
                    .get_or_insert(format!("worker {index}: {error}"));
            }
            Up::Eof => {
                if self.results[index].is_none() {
                    self.failure
                        .get_or_insert(format!("worker {index} exited without a result"));
                }
            }
        }
    }

    fn check(&self) -> Result<()> {
        match &self.failure {
            Some(f) => Err(anyhow!("{f}")),
            None => Ok(()),
        }
    }

    async fn next(&mut self, deadline: Instant) -> bool {
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Ok(Some((i, up))) => {
                self.handle(i, up);
                true
            }
            Ok(None) => {
                // Every worker is gone; avoid spinning until the deadline.
                tokio::time::sleep(Duration::from_millis(20)).await;
                false
            }
            Err(_) => false,
        }
    }

    /// Waits until every worker reached barrier `name` (error on failure or timeout).
    pub async fn wait_barrier(&mut self, name: &str, deadline: Instant) -> Result<()> {
        loop {
            self.check()?;
            if self.arrived.iter().all(|a| a.contains(name)) {
                return Ok(());
            }
            if !self.next(deadline).await && Instant::now() >= deadline {
                bail!("timed out waiting for workers at barrier {name}");
            }
        }
    }

    /// Releases barrier `name` in every worker with the shared epoch.
    pub async fn release(&mut self, name: &str, epoch_ns: u64) -> Result<()> {
        for d in &mut self.downs {
            let msg = Down::Release {
                name: name.to_string(),
                epoch_ns,
            };
            match d {
                DownTx::Chan(tx) => {
                    let _ = tx.send(msg);
                }
                DownTx::Stdin(stdin) => {
                    let mut line = serde_json::to_string(&msg)?;
                    line.push('\n');
                    stdin.write_all(line.as_bytes()).await?;
                    stdin.flush().await?;
                }
            }
        }
        Ok(())
    }

    /// Processes worker messages until `cond` holds or `deadline` passes; returns whether `cond` held.
    pub async fn pump_until(&mut self, deadline: Instant, cond: impl Fn(&Group) -> bool) -> bool {
        loop {
            if cond(self) {
                return true;
            }
            if self.failure.is_some() || Instant::now() >= deadline {
                return false;
            }
            self.next(deadline).await;
        }
    }

    /// Runs `fut` while processing worker messages; returns its output.
    pub async fn pump_during<F: std::future::Future>(&mut self, fut: F) -> F::Output {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                m = self.rx.recv() => {
                    if let Some((i, up)) = m {
                        self.handle(i, up);
                    }
                }
            }
        }
    }

    /// Collects every worker's final report.
    pub async fn results(&mut self, deadline: Instant) -> Result<Vec<WorkerReport>> {
        loop {
            self.check()?;
            if self.results.iter().all(|r| r.is_some()) {
                break;
            }
            if !self.next(deadline).await && Instant::now() >= deadline {
                bail!("timed out waiting for worker results");
            }
        }
        for c in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
        Ok(self.results.iter_mut().filter_map(|r| r.take()).collect())
    }
}
