//! Command-line interface: common options shared by every scenario and one
//! subcommand per scenario.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

/// Load harness for Pusher-protocol-compatible WebSocket servers.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench-harness", version, about)]
pub struct Cli {
    /// Options shared by every scenario.
    #[command(flatten)]
    pub common: Common,
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Scenario,
}

/// Options shared by every scenario.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// WebSocket base URL of the server (the harness appends /app/{key}).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:6001")]
    pub ws_url: String,
    /// HTTP base URL of the server's Pusher REST API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:6001")]
    pub http_url: String,
    /// Application id used in the REST API path.
    #[arg(long, global = true, default_value = "app-id")]
    pub app_id: String,
    /// Application key used in the WebSocket path and request signing.
    #[arg(long, global = true, default_value = "app-key")]
    pub key: String,
    /// Application secret used to sign REST requests and channel auth.
    #[arg(long, global = true, default_value = "app-secret")]
    pub secret: String,
    /// PID of the server: its RSS and CPU time are read from /proc/PID.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Write the JSON result to this file.
    #[arg(long, global = true)]
    pub json_out: Option<PathBuf>,
    /// Write SVG plots (latency percentiles, throughput over time) into this directory.
    #[arg(long, global = true)]
    pub plot_dir: Option<PathBuf>,
    /// Comma-separated loopback source addresses to bind client sockets to (round robin).
    #[arg(long, global = true, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Free-form name recorded in the result.
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// Permit non-loopback targets and sources (off by default: only loopback is load-tested).
    #[arg(long, global = true)]
    pub allow_remote: bool,
    /// Number of harness processes (default: as many as the open-file limit requires).
    #[arg(long, global = true)]
    pub procs: Option<usize>,
    /// Runtime threads per harness process (1 = single-threaded runtime).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Hard wall-clock limit for the whole run, in seconds (default: the scenario's nominal time + 60).
    #[arg(long, global = true)]
    pub timeout: Option<f64>,
    /// Limit for one connection to reach pusher:connection_established / a subscription to succeed, in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Prefix of the channel names the harness uses.
    #[arg(long, global = true, default_value = "bench")]
    pub channel_prefix: String,
    /// Exit with status 3 when the run saw errors or lost messages.
    #[arg(long, global = true)]
    pub strict: bool,
    /// Do not draw a progress bar.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Internal: run as worker INDEX/PROCS of a parent harness (JSON lines on stdout).
    #[arg(long, global = true, hide = true)]
    pub worker: Option<String>,
}

/// The load scenarios.
#[derive(Subcommand, Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Open N connections at a target rate; measure time to pusher:connection_established.
    Connect(ConnectArgs),
    /// Open N/2 then N subscribed idle connections; memory per connection and keep-alive health.
    Idle(IdleArgs),
    /// N subscribers over K channels, HTTP-API publishers on a fixed schedule; delivery latency.
    Fanout(FanoutArgs),
    /// Subscribers on private channels sending client-* events at a rate; delivery latency.
    ClientEvents(ClientEventsArgs),
    /// Connections joining and leaving presence channels at a rate; join and member_added latency.
    PresenceChurn(PresenceArgs),
}

impl Scenario {
    /// Short scenario name as used in results.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Connect(_) => "connect",
            Scenario::Idle(_) => "idle",
            Scenario::Fanout(_) => "fanout",
            Scenario::ClientEvents(_) => "client-events",
            Scenario::PresenceChurn(_) => "presence-churn",
        }
    }

    /// Rough length of the scenario in seconds when everything goes to plan.
    pub fn nominal_seconds(&self) -> f64 {
        match self {
            Scenario::Connect(a) => a.n as f64 / a.rate.max(0.001) + a.hold,
            Scenario::Idle(a) => a.n as f64 / a.rate.max(0.001) + 2.0 * a.settle + a.hold + 10.0,
            Scenario::Fanout(a) => a.n as f64 / a.connect_rate.max(0.001) + a.duration + a.drain,
            Scenario::ClientEvents(a) => {
                a.n as f64 / a.connect_rate.max(0.001) + a.duration + a.drain
            }
            Scenario::PresenceChurn(a) => {
                self.connections() as f64 / a.connect_rate.max(0.001)
                    + a.duration
                    + a.stay
                    + a.drain
            }
        }
    }

    /// Total number of client connections the scenario opens.
    pub fn connections(&self) -> usize {
        match self {
            Scenario::Connect(a) => a.n,
            Scenario::Idle(a) => a.n,
            Scenario::Fanout(a) => a.n,
            Scenario::ClientEvents(a) => a.n,
            Scenario::PresenceChurn(a) => a.channels * a.observers + a.churners,
        }
    }
}

/// Arguments of `connect`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectArgs {
    /// Number of connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub n: usize,
    /// Target connection rate (connections per second, all processes together).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to keep the connections open after the last one is established.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
}

/// Arguments of `idle`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct IdleArgs {
    /// Total number of connections (the first measurement is taken at N/2).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub n: usize,
    /// Connection rate while opening.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Number of public channels the connections subscribe to.
    #[arg(short = 'k', long, default_value_t = 10)]
    pub channels: usize,
    /// Longest wait for the server RSS to settle before each reading, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Seconds to hold the full population before the keep-alive check.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
}

/// Arguments of `fanout`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    /// Number of subscriber connections.
    #[arg(short = 'n', long, default_value_t = 200)]
    pub n: usize,
    /// Number of channels (subscriber i joins channel i mod K).
    #[arg(short = 'k', long, default_value_t = 1)]
    pub channels: usize,
    /// Published messages per second (all publishers together); message m goes to channel m mod K.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Publishing duration in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Approximate size of each event's data in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Concurrent HTTP publisher connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Connection rate while subscribing.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Longest wait after the last publish for deliveries to arrive, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
}

/// Arguments of `client-events`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ClientEventsArgs {
    /// Number of connections (each subscribes to one private channel and sends).
    #[arg(short = 'n', long, default_value_t = 100)]
    pub n: usize,
    /// Number of private channels.
    #[arg(short = 'k', long, default_value_t = 10)]
    pub channels: usize,
    /// Client events per second, all senders together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Sending duration in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Approximate size of each event's data in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Connection rate while subscribing.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Longest wait after the last send for deliveries to arrive, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
}

/// Arguments of `presence-churn`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct PresenceArgs {
    /// Number of presence channels.
    #[arg(short = 'k', long, default_value_t = 5)]
    pub channels: usize,
    /// Observers per channel that stay subscribed and measure member_added.
    #[arg(long, default_value_t = 2)]
    pub observers: usize,
    /// Connections that repeatedly join and leave.
    #[arg(long, default_value_t = 50)]
    pub churners: usize,
    /// Joins per second, all churners together (join j goes to channel j mod K).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds a churner stays in the channel before it unsubscribes.
    #[arg(long, default_value_t = 0.5)]
    pub stay: f64,
    /// Churn duration in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Connection rate while connecting.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Longest wait after the last join for member events to arrive, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
}
