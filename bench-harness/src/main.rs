//! bench-harness: load generator for Pusher-protocol-compatible WebSocket
//! servers. Parses the command line, sizes the run (processes from the
//! open-file limit), runs the scenario and writes the summary, JSON and plots.

mod cli;
mod http;
mod metrics;
mod net;
mod plot;
mod procfs;
mod pusher;
mod report;
mod scenarios;
mod signing;
mod workers;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::cli::Cli;
use crate::net::{raise_nofile_limit, FD_MARGIN, PORTS_PER_SOURCE};
use crate::procfs::Sampler;
use crate::report::{BuildInfo, RunReport};
use crate::scenarios::Ctx;
use crate::workers::{Group, Shard, WorkerFn, WorkerLink};

/// Exit status when `--strict` is given and the run saw errors or losses.
const EXIT_NOT_CLEAN: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let nofile = raise_nofile_limit();
    let threads = cli.common.threads.max(1);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-harness: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(run(cli, nofile));
    // Connection tasks may still be closing; do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(200));
    match code {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench-harness: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli, nofile: u64) -> Result<ExitCode> {
    let ctx = Arc::new(Ctx::new(cli.common.clone(), cli.command.clone()).await?);
    match &cli.common.worker {
        Some(spec) => worker_main(ctx, Shard::parse(spec)?).await,
        None => parent_main(ctx, nofile).await,
    }
}

async fn worker_main(ctx: Arc<Ctx>, shard: Shard) -> Result<ExitCode> {
    let sampler = Sampler::spawn("self".into(), Duration::from_millis(250));
    let mut link = WorkerLink::stdio();
    // Children outlive the parent's deadline a little so the parent reports the timeout.
    let limit = ctx.timeout + Duration::from_secs(10);
    let result =
        match tokio::time::timeout(limit, scenarios::run_worker(ctx.clone(), shard, &mut link))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("worker timed out")),
        };
    let result = result.map(|mut r| {
        r.cpu_samples = sampler.stop();
        r
    });
    link.finish(result);
    Ok(ExitCode::SUCCESS)
}

fn plan_procs(ctx: &Ctx, nofile: u64) -> Result<usize> {
    let conns = ctx.scenario.connections();
    let per_proc = nofile.saturating_sub(FD_MARGIN).max(1) as usize;
    let needed = conns.div_ceil(per_proc).max(1);
    let procs = ctx.common.procs.unwrap_or(needed).max(1);
    if conns.div_ceil(procs) > per_proc {
        bail!(
            "{conns} connections over {procs} process(es) exceed the open-file limit of {nofile} per process; use --procs {needed} or more"
        );
    }
    let sources = ctx.common.source_ips.len().max(1);
    if conns > sources * PORTS_PER_SOURCE {
        bail!(
            "{conns} connections need about {} source addresses (~{PORTS_PER_SOURCE} ephemeral ports each); pass --source-ips 127.0.0.1,127.0.0.2,...",
            conns.div_ceil(PORTS_PER_SOURCE)
        );
    }
    Ok(procs)
}

async fn parent_main(ctx: Arc<Ctx>, nofile: u64) -> Result<ExitCode> {
    let procs = plan_procs(&ctx, nofile)?;
    let started = Instant::now();
    let started_unix = metrics::unix_ns() / 1_000_000_000;
    let self_sampler = Sampler::spawn("self".into(), Duration::from_millis(250));
    let system_sampler = Sampler::spawn("system".into(), Duration::from_millis(250));
    let server_sampler = ctx.common.server_pid.map(|pid| {
        (
            pid,
            Sampler::spawn(pid.to_string(), Duration::from_millis(250)),
        )
    });
    if let Some(pid) = ctx.common.server_pid {
        procfs::sample(&pid.to_string()).with_context(|| format!("--server-pid {pid}"))?;
    }

    let quiet = ctx.common.quiet;
    let mut group = if procs == 1 {
        let wctx = ctx.clone();
        let f: WorkerFn = Arc::new(move |shard, mut link| {
            let wctx = wctx.clone();
            Box::pin(async move {
                let r = scenarios::run_worker(wctx, shard, &mut link).await;
                link.finish(r);
            })
        });
        Group::in_process(1, quiet, f)
    } else {
        Group::spawn_children(procs, quiet, (scenarios::RUN_TAG_ENV, &ctx.run_tag))?
    };

    let outcome =
        tokio::time::timeout_at(ctx.deadline, scenarios::run_parent(ctx.clone(), &mut group))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "run exceeded --timeout ({:.0} s)",
                    ctx.timeout.as_secs_f64()
                )
            })
            .and_then(|r| r);
    group.finish_bar();
    let outcome = outcome?;
    drop(group);

    let info = BuildInfo {
        label: ctx.common.label.clone().unwrap_or_default(),
        scenario: ctx.scenario.name(),
        params: serde_json::to_value(&ctx.scenario)?,
        target: ctx.common.ws_url.clone(),
        started_unix,
        procs,
        threads: ctx.common.threads.max(1),
        self_samples: self_sampler.stop(),
        server: server_sampler.map(|(pid, s)| (pid, s.stop())),
        system_samples: system_sampler.stop(),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let report = RunReport::build(info, outcome);
    print!("{}", report.summary());
    if let Some(path) = &ctx.common.json_out {
        report.write_json(path)?;
        println!("json: {}", path.display());
    }
    if let Some(dir) = &ctx.common.plot_dir {
        for f in plot::write_all(dir, &report)? {
            println!("plot: {}", f.display());
        }
    }
    if ctx.common.strict && !report.validity.clean {
        return Ok(ExitCode::from(EXIT_NOT_CLEAN));
    }
    Ok(ExitCode::SUCCESS)
}
