//! Networking helpers: target URL parsing, the loopback-only guard, client
//! sockets bound to chosen source addresses, and the open-file limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use anyhow::{anyhow, bail, Context, Result};
use tokio::net::{TcpSocket, TcpStream};

/// A parsed `ws://` or `http://` base URL.
#[derive(Debug, Clone)]
pub struct BaseUrl {
    /// Host as written in the URL (used for the Host header).
    pub host: String,
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// Path prefix without a trailing slash (often empty).
    pub prefix: String,
}

/// Parses `scheme://host[:port][/prefix]` and resolves the host.
///
/// Only loopback targets are accepted unless `allow_remote` is set.
pub async fn parse_base_url(url: &str, scheme: &str, allow_remote: bool) -> Result<BaseUrl> {
    let rest = url
        .strip_prefix(&format!("{scheme}://"))
        .ok_or_else(|| anyhow!("{url}: expected a {scheme}:// URL (TLS is not supported)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = split_host_port(authority)?;
    let addr = resolve(&host, port).await?;
    if !allow_remote && !addr.ip().is_loopback() {
        bail!("{url} resolves to {addr}, which is not a loopback address; pass --allow-remote to load-test a remote server");
    }
    Ok(BaseUrl {
        host: authority.to_string(),
        addr,
        prefix: path.trim_end_matches('/').to_string(),
    })
}

fn split_host_port(authority: &str) -> Result<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| anyhow!("bad IPv6 authority {authority}"))?;
        let port = p.strip_prefix(':').unwrap_or("80");
        return Ok((h.to_string(), port.parse().context("bad port")?));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), p.parse().context("bad port")?)),
        None => Ok((authority.to_string(), 80)),
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host == "localhost" {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} did not resolve"))
}

/// Checks the configured source addresses: loopback only unless remote use is allowed.
pub fn check_sources(sources: &[IpAddr], allow_remote: bool) -> Result<()> {
    for ip in sources {
        if !allow_remote && !ip.is_loopback() {
            bail!("source address {ip} is not a loopback address");
        }
    }
    Ok(())
}

/// Opens a TCP connection to `addr`, optionally bound to `source` with
/// IP_BIND_ADDRESS_NO_PORT so the kernel picks the port at connect time.
pub async fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        set_bind_no_port(&socket);
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn set_bind_no_port(socket: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt on a valid, owned socket fd with a c_int option value.
    // A failure only means the kernel allocates the port at bind time, which still works.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// File descriptors kept free in each process for the runtime, HTTP clients and /proc reads.
pub const FD_MARGIN: u64 = 200;

/// Ephemeral ports available per (source address, destination) pair, a little under the Linux default.
pub const PORTS_PER_SOURCE: usize = 28_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_and_guards_urls() {
        let u = parse_base_url("ws://127.0.0.1:6001", "ws", false)
            .await
            .unwrap();
        assert_eq!(u.addr.port(), 6001);
        assert_eq!(u.prefix, "");
        let u = parse_base_url("http://localhost:80/api/", "http", false)
            .await
            .unwrap();
        assert_eq!(u.prefix, "/api");
        assert!(parse_base_url("ws://10.0.0.1:6001", "ws", false)
            .await
            .is_err());
        assert!(parse_base_url("wss://127.0.0.1:6001", "ws", false)
            .await
            .is_err());
        assert!(check_sources(&["192.168.1.1".parse().unwrap()], false).is_err());
        assert!(check_sources(&["127.0.0.2".parse().unwrap()], false).is_ok());
    }
}
