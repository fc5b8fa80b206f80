//! HTTP client side: one keep-alive HTTP/1.1 connection ([`HttpConn`]), its parsed
//! responses ([`HttpResponse`]) and the signed Pusher HTTP API client ([`Api`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::raw::{find, Raw};
use super::server::App;
use super::sign::{signed_target, SignOpts};
use super::util::WAIT;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header (name lowercased, value).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// Body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }

    /// First header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and that an error body is `{"error": "..."}`.
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "status; body {:?}", self.text());
        let v = self.json();
        assert!(
            v["error"].is_string(),
            "error body must be {{\"error\":...}}: {v}"
        );
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    raw: Raw,
}

impl HttpConn {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> HttpConn {
        HttpConn {
            raw: Raw::connect(addr).await,
        }
    }

    /// Sends one request and reads its response.
    pub async fn request(&mut self, method: &str, target: &str, body: &[u8]) -> HttpResponse {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if !body.is_empty() || method == "POST" {
            req += "Content-Type: application/json\r\n";
            req += &format!("Content-Length: {}\r\n", body.len());
        }
        req += "\r\n";
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        assert!(self.raw.write(&bytes).await, "write HTTP request");
        self.read_response().await
    }

    /// Writes `bytes` as they are, reading nothing; false when the write failed (the server
    /// may have closed).
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        self.raw.write(bytes).await
    }

    /// Writes `bytes` as they are (any request, well-formed or not) and reads one response.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> HttpResponse {
        assert!(self.raw.write(bytes).await, "write raw HTTP request");
        self.read_response().await
    }

    /// Reads one response.
    pub async fn read_response(&mut self) -> HttpResponse {
        let head = self.raw.read_head(WAIT).await.unwrap_or_else(|| {
            panic!(
                "no HTTP response head; got {:?}",
                String::from_utf8_lossy(&self.raw.buf)
            )
        });
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.split(' ');
        let version = parts.next().unwrap_or("");
        assert!(
            version.starts_with("HTTP/1."),
            "status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if let Some(len) = get("content-length") {
            let len: usize = len.parse().expect("content-length");
            self.read_exact_buf(len).await
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            self.read_chunked().await
        } else {
            let (b, _) = self.raw.read_to_eof(WAIT).await;
            b
        };
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    async fn read_exact_buf(&mut self, len: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        while self.raw.buf.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.raw.fill(left).await {
                Ok(0) | Err(()) => panic!("HTTP body shorter than content-length"),
                Ok(_) => {}
            }
        }
        self.raw.buf.drain(..len).collect()
    }

    async fn read_line(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(pos) = find(&self.raw.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.raw.buf[..pos]).to_string();
                self.raw.buf.drain(..pos + 2);
                return line;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.raw.fill(left).await {
                Ok(0) | Err(()) => panic!("chunked body ended early"),
                Ok(_) => {}
            }
        }
    }

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            if size == 0 {
                let _ = self.read_line().await;
                return body;
            }
            body.extend(self.read_exact_buf(size).await);
            let _ = self.read_line().await;
        }
    }

    /// Whether the server closed the connection (EOF) within `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let (_, eof) = self.raw.read_to_eof(limit).await;
        eof
    }
}

/// Signed HTTP API client for one app.
#[derive(Clone, Debug)]
pub struct Api {
    /// Server address.
    pub addr: SocketAddr,
    /// The app whose credentials sign requests.
    pub app: App,
}

impl Api {
    /// `/apps/{id}{suffix}`.
    pub fn path(&self, suffix: &str) -> String {
        format!("/apps/{}{suffix}", self.app.id)
    }

    /// Builds the signed request target (path + query).
    pub fn signed_target(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
        opts: &SignOpts,
    ) -> String {
        signed_target(&self.app, method, path, query, body, opts)
    }

    /// A signed request on a fresh connection.
    pub async fn request_opts(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
        opts: &SignOpts,
    ) -> HttpResponse {
        let target = self.signed_target(method, path, query, body, opts);
        let mut conn = HttpConn::connect(self.addr).await;
        conn.request(method, &target, body).await
    }

    /// A signed request with default signing.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        self.request_opts(method, path, query, body, &SignOpts::default())
            .await
    }

    /// Signed GET of `/apps/{id}{suffix}`.
    pub async fn get(&self, suffix: &str, query: &[(&str, &str)]) -> HttpResponse {
        self.request("GET", &self.path(suffix), query, b"").await
    }

    /// Signed POST of JSON to `/apps/{id}{suffix}`.
    pub async fn post(&self, suffix: &str, body: &Value) -> HttpResponse {
        self.request("POST", &self.path(suffix), &[], body.to_string().as_bytes())
            .await
    }

    /// POST /events with `body`.
    pub async fn events(&self, body: &Value) -> HttpResponse {
        self.post("/events", body).await
    }

    /// Triggers `name` with string `data` on `channel` and asserts 200.
    pub async fn trigger(&self, channel: &str, name: &str, data: &str) {
        let r = self
            .events(&json!({"name":name,"channel":channel,"data":data}))
            .await;
        assert_eq!(r.status, 200, "trigger to {channel}: {}", r.text());
    }

    /// GET /channels/{c} with info; asserts 200 and returns the JSON body.
    pub async fn channel_info(&self, channel: &str, info: &str) -> Value {
        let suffix = format!("/channels/{channel}");
        let r = if info.is_empty() {
            self.get(&suffix, &[]).await
        } else {
            self.get(&suffix, &[("info", info)]).await
        };
        assert_eq!(r.status, 200, "channel info {channel}: {}", r.text());
        r.json()
    }
}
