//! The `ringpush` binary: reads the configuration, starts the shards, waits for a signal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use ringpush::config::{Config, Overrides};
use ringpush::shard::Server;
use ringpush::supervisor::Supervisor;
use signal_hook::consts::{SIGINT, SIGTERM};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Pusher-compatible WebSocket server. Without --config it runs a development default on
/// 127.0.0.1:6001 with one app (id `app-id`, key `app-key`, secret `app-secret`).
///
/// Every configuration key can also be set through the environment as
/// RINGPUSH_<SECTION>__<KEY>, e.g. RINGPUSH_SERVER__PORT=7000 or RINGPUSH_APPS__0__SECRET=...
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML configuration file (see README.md for every key).
    #[arg(short, long, env = "RINGPUSH_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (overrides server.host).
    #[arg(long)]
    host: Option<String>,
    /// Listen port; 0 picks a free one (overrides server.port).
    #[arg(long)]
    port: Option<u16>,
    /// Number of shards, 0 = one per core (overrides server.workers).
    #[arg(long)]
    workers: Option<usize>,
    /// Validate the configuration (file, environment, flags), print a summary and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // A panic is a bug. A shard that died would leave its SO_REUSEPORT listener in the kernel's
    // group, silently swallowing its share of new connections; exiting lets the service manager
    // restart the whole process instead.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!(panic = %info, "internal error; exiting so the service restarts");
        std::process::exit(70);
    }));
    if let Err(e) = run() {
        eprintln!("ringpush: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let overrides = Overrides {
        host: cli.host,
        port: cli.port,
        workers: cli.workers,
    };
    if cli.config.is_none() {
        tracing::warn!("no --config given: running the development default (app-id / app-key / app-secret); do not use it in production");
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    if cli.check_config {
        let cluster = match config.cluster.adapter {
            ringpush::config::Adapter::Local => "single node".to_string(),
            ringpush::config::Adapter::Redis => format!(
                "cluster over Redis (prefix {}, node_timeout {} s)",
                config.cluster.prefix, config.cluster.node_timeout
            ),
        };
        println!(
            "configuration ok: {}:{}, {} shard(s), {cluster}, {} app(s): {}",
            config.server.host,
            config.server.port,
            config.shard_count(),
            config.apps.len(),
            config
                .apps
                .iter()
                .map(|a| format!("{} (key {}, {} webhook(s))", a.id, a.key, a.webhooks.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let grace = Duration::from_secs(config.server.shutdown_grace);
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let server = Server::start(config)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ringpush listening on {}", server.addr)?;
        if let Some(m) = server.metrics_addr {
            writeln!(out, "ringpush metrics on {m}")?;
        }
        out.flush()?;
    }
    tracing::info!(addr = %server.addr, "accepting connections");
    // The service manager hears from a thread of its own; this one waits for a signal.
    let probe = server.probe();
    let mut supervisor = Supervisor::new();
    supervisor.ready(probe.connections(), probe.loop_turns());
    std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || loop {
            std::thread::sleep(supervisor.tick_every());
            supervisor.tick(probe.connections(), probe.loop_turns());
        })?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down: asking clients to reconnect");
    }
    ringpush::supervisor::stopping();
    server.shutdown();
    let deliver_by = Instant::now() + grace;
    let deadline = deliver_by + Duration::from_secs(2);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.join(deliver_by);
        let _ = tx.send(());
    });
    if rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_err()
    {
        tracing::warn!("shards did not stop within the grace period; exiting anyway");
    }
    Ok(())
}
