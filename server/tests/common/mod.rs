//! Test harness: the real `tether-server` binary as a child process on free loopback ports,
//! SDK clients pinned to its dev certificate, raw QUIC connections for protocol abuse, and a
//! small admin API client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;
use tether_proto::{CloseCode, Decoded, Decoder, Frame};
use tether_sdk::{Client, ClientConfig, Credential, Event, Events, SendAck, SendFailure, Trust};
use tokio::task::JoinHandle;

pub const JWT_SECRET: &str = "test-jwt-secret";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running `tether-server` process.
pub struct Server {
    pub dir: tempfile::TempDir,
    /// The node's data dir (`dir` itself unless the test chose another).
    pub data: PathBuf,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub extra: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// Starts a server in a fresh temp dir with `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().to_path_buf();
        Server::start_in(dir, data, extra)
    }

    /// Starts a server with its data in `data` (logs stay in `dir`).
    pub fn start_in(dir: tempfile::TempDir, data: PathBuf, extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, quic, admin) = spawn(dir.path(), &data, "127.0.0.1:0", &extra);
        Server { dir, data, quic, admin, extra, child: Some(child) }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a graceful stop: the node drains, leaves the registry and exits); waits for it.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: sending a signal to our own child process by its pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().ok()
    }

    /// Starts the server again on the same data dir and QUIC port.
    pub fn restart(&mut self) {
        self.kill();
        let (child, quic, admin) = spawn(self.dir.path(), &self.data, &self.quic.to_string(), &self.extra);
        assert_eq!(quic, self.quic);
        self.admin = admin;
        self.child = Some(child);
    }

    pub fn cert(&self) -> PathBuf {
        self.data.join("dev-cert.pem")
    }

    /// The store URL the server uses: `--database-url` when given, else the default log store.
    pub fn db_url(&self) -> String {
        match self.extra.iter().position(|a| a == "--database-url") {
            Some(i) => self.extra[i + 1].clone(),
            None => format!("log://{}", self.data.join("log").display()),
        }
    }

    /// Opens the server's store (the server must be stopped when it is the embedded one).
    #[allow(dead_code)]
    pub async fn open_store(&self) -> std::sync::Arc<dyn tether_server::store::Store> {
        tether_server::store::open(&self.db_url(), Default::default()).await.expect("open the server's store")
    }

    /// SDK client config for this server with fast timers.
    pub fn client_config(&self, credential: Credential, device_type: &str, device_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new(self.quic.to_string(), Trust::pinned(self.cert()), credential);
        c.server_name = Some("localhost".into());
        c.device_type = device_type.into();
        c.device_id = Some(device_id.into());
        c.session.heartbeat_interval = Duration::from_millis(500);
        c.session.heartbeat_timeout = Duration::from_millis(1000);
        c.session.backoff_base = Duration::from_millis(100);
        c.session.backoff_max = Duration::from_millis(1000);
        c.session.ack_timeout = Duration::from_secs(3);
        c
    }

    /// A started SDK client for `user`, waiting until online.
    pub async fn client(&self, user: &str, device_type: &str, device_id: &str) -> (Client, Events) {
        let cfg = self.client_config(Credential::Token(token(user, 3600)), device_type, device_id);
        let (c, e) = Client::start(cfg).await.expect("client start");
        tokio::time::timeout(Duration::from_secs(20), c.wait_online()).await.expect("online in time").expect("online");
        (c, e)
    }

    /// A client of `user` on `phone` device `device_id` that keeps its state (outbox, cursors)
    /// in `state_dir`, so restarting the client or the node loses nothing; at most
    /// `max_in_flight` sends unacknowledged. Started, not yet online.
    pub async fn durable_client(
        &self,
        user: &str,
        device_id: &str,
        state_dir: &Path,
        max_in_flight: usize,
    ) -> (Client, Events) {
        let mut cfg = self.client_config(Credential::Token(token(user, 3600)), "phone", device_id);
        cfg.state_dir = Some(state_dir.display().to_string());
        cfg.session.max_in_flight = max_in_flight;
        Client::start(cfg).await.expect("client start")
    }

    /// Admin API call; returns (status, JSON body).
    pub async fn admin(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        admin_call(self.admin, method, path, body, Some(ADMIN_TOKEN)).await
    }

    /// The value of a metric line (exact name with labels) from /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = http(self.admin, "GET", "/metrics", None, None).await.1;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        // For debugging: keep the node's log when TETHER_KEEP_LOGS names a directory.
        if let Ok(dir) = std::env::var("TETHER_KEEP_LOGS") {
            let _ = std::fs::create_dir_all(&dir);
            let to = Path::new(&dir).join(format!("node-{}.log", self.quic.port()));
            let _ = std::fs::copy(self.dir.path().join("server.log"), to);
        }
    }
}

fn spawn(dir: &Path, data: &Path, quic: &str, extra: &[String]) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-server"))
        .args(["--data-dir", &data.display().to_string(), "--quic-addr", quic, "--admin-addr", "127.0.0.1:0"])
        .args(["--jwt-secret", JWT_SECRET, "--admin-token", ADMIN_TOKEN, "--log", "info,tether_server=debug"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).expect("log file"),
        ))
        .spawn()
        .expect("spawn tether-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("ready line");
    let mut quic = None;
    let mut admin = None;
    for part in line.split_whitespace() {
        if let Some(a) = part.strip_prefix("quic=") {
            quic = a.parse().ok();
        }
        if let Some(a) = part.strip_prefix("admin=") {
            admin = a.parse().ok();
        }
    }
    match (quic, admin) {
        (Some(q), Some(a)) => (child, q, a),
        _ => {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("server did not start: {line:?}\n{log}")
        }
    }
}

pub fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// An HS256 JWT for `user`, expiring `ttl` seconds from now (negative = already expired).
pub fn token(user: &str, ttl: i64) -> String {
    token_signed(user, ttl, JWT_SECRET)
}

pub fn token_signed(user: &str, ttl: i64, secret: &str) -> String {
    let exp = (now_s() as i64 + ttl) as u64;
    encode(&Header::default(), &Claims { sub: user, exp }, &EncodingKey::from_secret(secret.as_bytes())).expect("jwt")
}

/// Sends the texts "0", "1", ... "n-1" from `from` to `to` on tasks of their own (queued in
/// this order at the call); the counter counts the acks as they arrive. The tasks end with the
/// send's result.
pub fn send_numbered(
    from: &Client,
    to: &str,
    n: usize,
) -> (Arc<AtomicUsize>, Vec<JoinHandle<Result<SendAck, SendFailure>>>) {
    let acked = Arc::new(AtomicUsize::new(0));
    let sends = (0..n)
        .map(|i| {
            let acked = acked.clone();
            let fut = from.send_text(to, &i.to_string());
            tokio::spawn(async move {
                let r = fut.await;
                acked.fetch_add(1, Ordering::Relaxed);
                r
            })
        })
        .collect();
    (acked, sends)
}

/// The acks of `sends`, in order; panics unless every one was acknowledged within `secs`.
pub async fn expect_acks(sends: Vec<JoinHandle<Result<SendAck, SendFailure>>>, secs: u64) -> Vec<SendAck> {
    let mut acks = Vec::with_capacity(sends.len());
    for s in sends {
        let ack = tokio::time::timeout(Duration::from_secs(secs), s).await.expect("acked in time").expect("task");
        acks.push(ack.expect("every send acknowledged"));
    }
    acks
}

/// Checks that the app sees the texts "0".."n-1" of [`send_numbered`] next, each once, in
/// order, with seqs 1..=n.
pub async fn expect_numbered(events: &mut Events, n: usize) {
    for i in 0..n {
        let m = next_message(events, 60).await;
        assert_eq!(String::from_utf8_lossy(&m.payload), i.to_string(), "message {i} once, in order");
        assert_eq!(m.seq, i as u64 + 1);
    }
}

/// Waits for the next message event, skipping others; panics after `secs`.
pub async fn next_message(events: &mut Events, secs: u64) -> tether_sdk::Message {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Event::Message(d))) => return d,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("client stopped"),
            Err(_) => panic!("no message within {secs}s"),
        }
    }
}

/// Waits for the first event matching `f`; panics after `secs`.
pub async fn wait_event<T>(events: &mut Events, secs: u64, mut f: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(ev)) => {
                if let Some(t) = f(&ev) {
                    return t;
                }
            }
            Ok(None) => panic!("client stopped"),
            Err(_) => panic!("no matching event within {secs}s"),
        }
    }
}

/// A raw QUIC connection speaking frames by hand.
pub struct Raw {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    buf: BytesMut,
    _endpoint: quinn::Endpoint,
}

impl Raw {
    pub async fn connect(server: &Server) -> Raw {
        Raw::try_connect(server).await.expect("handshake")
    }

    /// Connects and opens the stream; the handshake's error if the server turned it away.
    pub async fn try_connect(server: &Server) -> Result<Raw, quinn::ConnectionError> {
        let crypto = tether_sdk::tls::client_crypto(&Trust::pinned(server.cert())).expect("tls");
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic tls");
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let conn = endpoint.connect(server.quic, "localhost").expect("connect").await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(Raw { conn, send, recv, buf: BytesMut::new(), _endpoint: endpoint })
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write");
    }

    pub async fn write(&mut self, frame: &Frame) {
        let mut b = BytesMut::new();
        tether_proto::encode(frame, &mut b).expect("encode");
        self.write_raw(&b).await;
    }

    /// Next frame, or `None` when the stream ends; panics after 10 s.
    pub async fn read(&mut self) -> Option<Frame> {
        let mut d = Decoder::new(1 << 24);
        loop {
            if let Some(Decoded::Frame(f)) = d.decode(&mut self.buf).expect("decode") {
                return Some(f);
            }
            match tokio::time::timeout(Duration::from_secs(10), self.recv.read_chunk(65536, true)).await {
                Ok(Ok(Some(c))) => self.buf.extend_from_slice(&c.bytes),
                Ok(_) => return None,
                Err(_) => panic!("no frame within 10s"),
            }
        }
    }

    /// The close code the server closed the connection with.
    pub async fn closed(&self) -> Option<CloseCode> {
        match tokio::time::timeout(Duration::from_secs(10), self.conn.closed()).await.expect("closed in time") {
            quinn::ConnectionError::ApplicationClosed(ac) => CloseCode::from_code(ac.error_code.into_inner()),
            other => panic!("closed otherwise: {other}"),
        }
    }

    pub fn login_frame(credential: Credential, device_id: &str) -> Frame {
        Frame::Login(tether_proto::Login {
            version: tether_proto::PROTOCOL_VERSION,
            credential,
            device_type: "raw".into(),
            device_id: device_id.into(),
            inbox_cursor: None,
            client: Some("raw-test".into()),
            room_cursors: None,
            metadata: None,
        })
    }
}

pub async fn admin_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, text) = http(addr, method, path, body, token).await;
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// A minimal HTTP/1.1 client (one request per connection).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("admin write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.expect("admin read");
    let resp = String::from_utf8_lossy(&resp).to_string();
    let status: u16 = resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let text =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, text)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Raw {
    /// Connects and logs in `user` with a token; returns the session after `login_ok`.
    pub async fn login(
        server: &Server,
        user: &str,
        device_id: &str,
        room_cursors: Option<std::collections::BTreeMap<String, u64>>,
        metadata: Option<std::collections::BTreeMap<String, String>>,
    ) -> (Raw, tether_proto::LoginOk) {
        let mut raw = Raw::connect(server).await;
        let Frame::Login(mut login) = Raw::login_frame(Credential::Token(token(user, 3600)), device_id) else {
            unreachable!()
        };
        login.room_cursors = room_cursors;
        login.metadata = metadata;
        raw.write(&Frame::Login(login)).await;
        match raw.read().await {
            Some(Frame::LoginOk(ok)) => (raw, ok),
            other => panic!("login of {user}: {other:?}"),
        }
    }

    /// Reads frames until `f` picks one (others are skipped); panics after `secs`.
    pub async fn expect<T>(&mut self, secs: u64, mut f: impl FnMut(&Frame) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read()).await.expect("expected frame in time");
            match frame {
                Some(fr) => {
                    if let Some(t) = f(&fr) {
                        return t;
                    }
                }
                None => panic!("stream ended"),
            }
        }
    }

    /// Like [`Raw::expect`], but keeps the session alive with a ping every 300 ms meanwhile.
    pub async fn expect_pinging<T>(&mut self, secs: u64, mut f: impl FnMut(&Frame) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            assert!(tokio::time::Instant::now() < deadline, "expected frame in time");
            self.write(&Frame::Ping(tether_proto::Ping { nonce: 0 })).await;
            let until = tokio::time::Instant::now() + Duration::from_millis(300);
            while let Ok(frame) = tokio::time::timeout_at(until, self.read()).await {
                match frame {
                    Some(fr) => {
                        if let Some(t) = f(&fr) {
                            return t;
                        }
                    }
                    None => panic!("stream ended"),
                }
            }
        }
    }

    /// Frames that arrive within `ms` (none expected to be missing).
    pub async fn drain(&mut self, ms: u64) -> Vec<Frame> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        while let Ok(Some(f)) = tokio::time::timeout_at(deadline, self.read()).await {
            out.push(f);
        }
        out
    }

    /// Joins `room` and returns the `room_joined` answer.
    pub async fn join(&mut self, room: &str) -> tether_proto::RoomJoined {
        self.write(&Frame::JoinRoom(tether_proto::JoinRoom { room: room.into() })).await;
        self.expect(10, |f| match f {
            Frame::RoomJoined(j) if j.room == room => Some(j.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a text message to a room (no wait).
    pub async fn send_room(&mut self, room: &str, client_msg_id: &str, text: &str) {
        self.write(&Frame::Send(tether_proto::Send {
            client_msg_id: client_msg_id.into(),
            to: tether_proto::Address::room(room),
            content_type: "text/plain".into(),
            payload: text.as_bytes().to_vec(),
        }))
        .await;
    }
}
