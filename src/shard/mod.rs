//! Thread-per-core shards: each pinned thread runs its own monoio runtime, its own SO_REUSEPORT
//! listener, its connections and its slice of home-shard facts.

mod bodies;
mod conn;
mod effects;
pub(crate) mod frames;
mod inbox;
mod metrics_port;
mod outbound;
mod pusher;
mod rate;
mod refusal;
mod remote;
mod service;
mod session;
mod sock;
mod state;
mod timer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use monoio::net::TcpListener;

use crate::bus::{Bus, BusMsg};
use crate::channels::home::AppRules;
use crate::cluster::Cluster;
use crate::config::{AppConfig, Config};
use crate::ids::{AppIdx, NodeId, ShardId};
use crate::metrics::ShardMetrics;
use crate::webhooks::{Hook, HookKind, Webhooks};
use state::State;

/// Read-only state shared by every shard, plus a few process-wide atomics.
pub(crate) struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Apps by key (WebSocket path).
    pub by_key: HashMap<String, AppIdx>,
    /// Apps by id (HTTP API path).
    pub by_id: HashMap<String, AppIdx>,
    /// The cross-core bus.
    pub bus: Bus,
    /// Per-app open connection counts (for `max_connections`), touched only on connect/close.
    pub app_connections: Vec<AtomicUsize>,
    /// Per-shard metrics blocks.
    pub metrics: Vec<ShardMetrics>,
    /// Process start, the zero of every shard's millisecond clock.
    pub started: Instant,
    /// Set once SIGTERM/SIGINT arrives.
    pub shutting_down: AtomicBool,
    /// Whether shards run on io_uring (false: epoll fallback).
    pub uring: bool,
    /// The webhook side-car, when any app has webhooks.
    pub webhooks: Option<Webhooks>,
    /// This node's id (meaningful in a cluster).
    pub node: NodeId,
    /// The cluster side-car, when `[cluster]` names a broker.
    pub cluster: Option<Cluster>,
}

impl Shared {
    /// The app at `idx`.
    pub fn app(&self, idx: AppIdx) -> &AppConfig {
        &self.config.apps[idx.0 as usize]
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.bus.shards()
    }
}

/// One shard: its id, the shared state, and its own mutable state behind a RefCell that is never
/// borrowed across an `.await`.
pub(crate) struct Shard {
    /// This shard.
    pub id: ShardId,
    /// Process-wide read-only state.
    pub shared: Arc<Shared>,
    /// Connections, local channel index, home facts.
    pub state: RefCell<State>,
    /// Read buffer shared by every connection of the shard.
    pub scratch: RefCell<Vec<u8>>,
    /// Bytes reserved by HTTP request bodies being received (`max_pending_body_bytes`).
    pub bodies: bodies::BodyBudget,
}

impl Shard {
    /// Milliseconds since process start.
    pub fn now_ms(&self) -> u64 {
        self.shared.started.elapsed().as_millis() as u64
    }

    /// This shard's metrics block.
    pub fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics[self.id.0 as usize]
    }

    /// Reports a webhook event, when the app has webhooks.
    pub fn hook(&self, app: AppIdx, channel: &std::sync::Arc<str>, kind: HookKind) {
        if let Some(w) = &self.shared.webhooks {
            if !self.shared.app(app).webhooks.is_empty() {
                ShardMetrics::add(&self.metrics().webhooks_queued, 1);
                w.emit(Hook {
                    app,
                    channel: channel.clone(),
                    kind,
                });
            }
        }
    }
}

/// Stack reserved for each shard thread. JSON parsing recurses once per nesting level, up to
/// `protocol::json::MAX_DEPTH` levels; an optimised build needs a few hundred bytes a level, an
/// unoptimised one (the test suite's) tens of kilobytes. 8 MiB covers both with room to spare;
/// it is address space, and only the pages a shard touches become resident.
const SHARD_STACK: usize = 8 << 20;

/// A running server: the bound address and the shard threads.
pub struct Server {
    /// The address every shard listens on.
    pub addr: SocketAddr,
    /// The metrics listener's address, when `server.metrics_port` is set.
    pub metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Reads a running server's liveness and load (for the service manager).
pub struct Probe(Arc<Shared>);

impl Probe {
    /// How many times each shard's timer sweep has run: a shard whose count stops moving is
    /// stuck (its event loop is not turning).
    pub fn loop_turns(&self) -> Vec<u64> {
        let turns = self.0.metrics.iter();
        turns
            .map(|m| m.loop_turns.load(Ordering::Relaxed))
            .collect()
    }

    /// Open WebSocket connections on this node, over all apps.
    pub fn connections(&self) -> usize {
        let counts = self.0.app_connections.iter();
        counts.map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Size of the per-shard read buffer.
const SCRATCH_BYTES: usize = 64 * 1024;

impl Server {
    /// Binds the listeners and starts one pinned shard per worker.
    pub fn start(config: Config) -> Result<Server> {
        let shards = config.shard_count();
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, a) in config.apps.iter().enumerate() {
            by_key.insert(a.key.clone(), AppIdx(i as u16));
            by_id.insert(a.id.clone(), AppIdx(i as u16));
        }
        let uring = monoio::utils::detect_uring();
        let webhooks = Webhooks::start(&config)?;
        let node = Cluster::new_node_id();
        let cell = Arc::new(std::sync::OnceLock::new());
        let cluster = Cluster::start(&config, node, Arc::new(remote::Shards(cell.clone())))?;
        let shared = Arc::new(Shared {
            bus: Bus::new(shards, config.server.bus_capacity),
            app_connections: config.apps.iter().map(|_| AtomicUsize::new(0)).collect(),
            metrics: (0..shards).map(|_| ShardMetrics::default()).collect(),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            uring,
            webhooks,
            node,
            cluster,
            by_key,
            by_id,
            config,
        });
        let _ = cell.set(shared.clone());
        let metrics_addr = metrics_port::start(&shared)?;
        tracing::info!(
            shards,
            driver = if uring { "io_uring" } else { "epoll (legacy)" },
            "starting shards"
        );
        let host: std::net::IpAddr = shared.config.server.host.parse().context("server.host")?;
        // The first listener picks the port (it may be 0); the others join it with SO_REUSEPORT.
        let first = bind_std(SocketAddr::new(host, shared.config.server.port))?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners.push(bind_std(addr)?);
        }
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let shared = shared.clone();
            let core = if cores.is_empty() {
                None
            } else {
                Some(cores[i % cores.len()])
            };
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .stack_size(SHARD_STACK)
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    if let Err(e) = run_shard(ShardId(i as u16), shared, listener, ready) {
                        tracing::error!(shard = i, error = %e, "shard failed");
                    }
                })
                .context("spawning shard thread")?;
            threads.push(t);
        }
        drop(ready_tx);
        for _ in 0..shards {
            ready_rx
                .recv()
                .context("a shard failed to start")?
                .context("a shard failed to start")?;
        }
        Ok(Server {
            addr,
            metrics_addr,
            shared,
            threads,
        })
    }

    /// Starts the graceful shutdown: every shard stops accepting and closes its clients with 4200.
    /// In a cluster the node first announces its departure, so the others drop its clients'
    /// state at once instead of after `node_timeout`.
    pub fn shutdown(&self) {
        if let Some(c) = &self.shared.cluster {
            c.leave(Duration::from_secs(1));
        }
        if !self.shared.shutting_down.swap(true, Ordering::SeqCst) {
            for i in 0..self.shared.shards() {
                self.shared.bus.send(ShardId(i as u16), BusMsg::Shutdown);
            }
        }
    }

    /// A handle that reads the server's liveness and load from another thread.
    pub fn probe(&self) -> Probe {
        Probe(self.shared.clone())
    }

    /// Waits for every shard thread to finish, then lets the webhook side-car deliver what is
    /// pending until `deadline`.
    pub fn join(self, deadline: Instant) {
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(w) = &self.shared.webhooks {
            w.finish(deadline);
        }
    }
}

fn bind_std(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    // The kernel caps the backlog at net.core.somaxconn (4096 by default; the sysctl drop-in in
    // systemd/ raises it), so ask for the most it may allow.
    s.listen(65535)?;
    Ok(s.into())
}

fn run_shard(
    id: ShardId,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    ready: mpsc::Sender<Result<()>>,
) -> Result<()> {
    let mut rt = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(4096)
        .enable_timer()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("building runtime: {e}")));
            return Err(e.into());
        }
    };
    let rules = shared
        .config
        .apps
        .iter()
        .map(|a| AppRules {
            max_presence_members: a.max_presence_members,
            subscription_count: a.subscription_count,
        })
        .collect();
    let in_cluster = shared.cluster.is_some();
    let max_pending_body_bytes = shared.config.server.max_pending_body_bytes;
    let first_nodes = Arc::new(if in_cluster {
        vec![shared.node]
    } else {
        Vec::new()
    });
    rt.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(anyhow::anyhow!("listener: {e}")));
                return;
            }
        };
        let shard = Rc::new(Shard {
            id,
            shared,
            state: RefCell::new(State::new(rules, in_cluster, first_nodes)),
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES]),
            bodies: bodies::BodyBudget::new(max_pending_body_bytes),
        });
        let _ = ready.send(Ok(()));
        monoio::spawn(inbox::run(shard.clone()));
        monoio::spawn(timer::tick(shard.clone()));
        accept_loop(shard.clone(), listener).await;
        drain(&shard).await;
    });
    Ok(())
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let canceller = monoio::io::Canceller::new();
    let handle = canceller.handle();
    shard.state.borrow_mut().accept_canceller = Some(canceller);
    let mut backoff = Duration::from_millis(5);
    loop {
        if shard.shared.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        match listener.cancelable_accept(handle.clone()).await {
            Ok((stream, _peer)) => {
                backoff = Duration::from_millis(5);
                monoio::spawn(session::run(shard.clone(), stream));
            }
            Err(e) => {
                if shard.shared.shutting_down.load(Ordering::Relaxed) {
                    return;
                }
                ShardMetrics::add(&shard.metrics().accept_errors, 1);
                // EMFILE and friends: back off instead of spinning on a full fd table.
                tracing::warn!(shard = shard.id.0, error = %e, "accept failed; backing off");
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// After the accept loop stops: wait for clients to leave, at most the grace period.
async fn drain(shard: &Rc<Shard>) {
    let mut grace = Duration::from_secs(shard.shared.config.server.shutdown_grace);
    if shard.shared.webhooks.is_some() {
        // Lingering clients may not take all of it: the webhooks their leaving causes (and any
        // still delayed or retrying) are sent in the other half, before the grace ends.
        grace /= 2;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if shard.state.borrow().conns.is_empty() {
            break;
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
}
