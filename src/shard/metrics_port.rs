//! The optional metrics listener (`server.metrics_port`): `/metrics`, `/up` and `/ready` on a
//! plain socket of their own, bound to `server.metrics_host` (loopback by default), so the
//! exposition can stay off the public port. Scrapes are rare and small, so one thread serves
//! them one at a time with blocking IO, each bounded in size and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::service::SharedHealth;
use super::Shared;
use crate::http::api::health;
use crate::http::request::{self, Parsed};
use crate::http::response::Response;

/// Longest request head accepted on this port.
const MAX_HEAD: usize = 8 * 1024;
/// How long one scrape may take to send its request or read its answer.
const IO_LIMIT: Duration = Duration::from_secs(5);

/// Binds and starts the listener thread when a metrics port is configured; returns its address.
pub(super) fn start(shared: &Arc<Shared>) -> Result<Option<SocketAddr>> {
    let s = &shared.config.server;
    if s.metrics_port == 0 {
        return Ok(None);
    }
    let host: std::net::IpAddr = s.metrics_host.parse().context("server.metrics_host")?;
    let listener = TcpListener::bind((host, s.metrics_port)).with_context(|| {
        format!(
            "binding server.metrics_host:metrics_port {host}:{}",
            s.metrics_port
        )
    })?;
    let addr = listener.local_addr()?;
    let health = SharedHealth(shared.clone());
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => serve(&health, s),
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener: accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .context("spawning the metrics listener")?;
    tracing::info!(%addr, "metrics, /up and /ready served here");
    Ok(Some(addr))
}

fn serve(h: &SharedHealth, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IO_LIMIT));
    let _ = stream.set_write_timeout(Some(IO_LIMIT));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX_HEAD {
            break Response::error(431, "request head too large");
        }
        match request::parse(&buf, 0) {
            Parsed::Partial => continue,
            Parsed::Complete(req, _) if req.method == "GET" => break health(h, &req.path),
            Parsed::Complete(..) => break Response::error(405, "only GET is served here"),
            Parsed::NeedBody { .. } => break Response::error(413, "no bodies here"),
            Parsed::Error(status, msg) => break Response::error(status, msg),
        }
    };
    let _ = stream.write_all(&response.to_bytes(false));
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
