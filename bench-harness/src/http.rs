//! Minimal HTTP/1.1 keep-alive client for the Pusher REST API, with request
//! signing applied on every call.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::net::{connect_tcp, BaseUrl};
use crate::signing::signed_query;

/// Application credentials for signing.
#[derive(Debug, Clone)]
pub struct AppCreds {
    /// App id (path segment).
    pub app_id: String,
    /// App key.
    pub key: String,
    /// App secret.
    pub secret: String,
}

/// One keep-alive HTTP connection to the REST API; reconnects when needed.
pub struct ApiClient {
    base: BaseUrl,
    creds: AppCreds,
    source: Option<IpAddr>,
    conn: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

/// Status and body of a response.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response body as text.
    pub body: String,
}

impl ApiClient {
    /// Creates a client; the connection is opened on first use.
    pub fn new(base: BaseUrl, creds: AppCreds, source: Option<IpAddr>, timeout: Duration) -> Self {
        ApiClient {
            base,
            creds,
            source,
            conn: None,
            timeout,
        }
    }

    /// Sends a signed request to `/apps/{id}{sub_path}` and returns the response.
    pub async fn signed(&mut self, method: &str, sub_path: &str, body: &str) -> Result<Response> {
        let path = format!("/apps/{}{}", self.creds.app_id, sub_path);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let query = signed_query(
            &self.creds.key,
            &self.creds.secret,
            method,
            &path,
            body.as_bytes(),
            ts,
            &[],
        );
        let target = format!("{}{}?{}", self.base.prefix, path, query);
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.request(method, &target, body)).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                bail!("http request timed out")
            }
        }
    }

    /// Publishes one event to one channel.
    pub async fn trigger(&mut self, channel: &str, name: &str, data: &str) -> Result<Response> {
        let body =
            serde_json::json!({ "name": name, "channel": channel, "data": data }).to_string();
        self.signed("POST", "/events", &body).await
    }

    async fn request(&mut self, method: &str, target: &str, body: &str) -> Result<Response> {
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.base.host,
            body.len()
        );
        // A reused keep-alive connection may have been closed by the server: retry once on a fresh one.
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            if self.conn.is_none() {
                let tcp = connect_tcp(self.base.addr, self.source)
                    .await
                    .context("connecting to the HTTP API")?;
                self.conn = Some(BufReader::new(tcp));
            }
            let conn = self.conn.as_mut().expect("connection just set");
            let result = exchange(conn, &head, body).await;
            match result {
                Ok((resp, keep)) => {
                    if !keep {
                        self.conn = None;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    self.conn = None;
                    if !(reused && attempt == 0) {
                        return Err(e);
                    }
                }
            }
        }
        Err(anyhow!("http request failed"))
    }
}

async fn exchange(
    conn: &mut BufReader<TcpStream>,
    head: &str,
    body: &str,
) -> Result<(Response, bool)> {
    let mut req = Vec::with_capacity(head.len() + body.len());
    req.extend_from_slice(head.as_bytes());
    req.extend_from_slice(body.as_bytes());
    conn.get_mut().write_all(&req).await?;

    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        bail!("connection closed before the response");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut keep_alive = !line.starts_with("HTTP/1.0");
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed in the headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut raw = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .context("bad chunk size")?;
            let mut chunk = vec![0u8; size + 2];
            conn.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        raw.resize(n, 0);
        conn.read_exact(&mut raw).await?;
    } else {
        conn.read_to_end(&mut raw).await?;
        keep_alive = false;
    }
    Ok((
        Response {
            status,
            body: String::from_utf8_lossy(&raw).into_owned(),
        },
        keep_alive,
    ))
}
