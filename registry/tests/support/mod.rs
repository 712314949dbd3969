//! Shared test plumbing: a raw HTTP helper, an in-process registry on a loopback port, the
//! `tether-registry` binary as a child process, and polling for conditions that other
//! processes make true.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tether_registry::{InstanceInfo, RegistrySettings, RegistryState};

/// One HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one request; `headers` are extra headers (no Accept is sent unless given).
pub async fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or("").to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: timeout"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp { status, content_type, body: String::from_utf8_lossy(&body).into_owned() }
}

pub async fn get(url: &str) -> Resp {
    http("GET", url, &[], None).await
}

pub async fn get_json(url: &str) -> Resp {
    http("GET", url, &[("accept", "application/json")], None).await
}

/// A registry served in-process on a loopback port; returns `http://127.0.0.1:PORT`.
pub async fn serve_in_process(settings: RegistrySettings) -> (String, RegistryState) {
    let state = RegistryState::new(settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = state.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), state)
}

/// A free loopback port (bound and released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 25 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `tether-registry` child process, killed on drop.
pub struct RegistryProcess {
    child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl RegistryProcess {
    /// Starts the binary on `port` with extra args and waits for its READY line.
    pub fn start(port: u16, extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("tether-registry-test-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether-registry"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--log", "tether_registry=debug,info"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn tether-registry");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            panic!("registry on {port} did not start; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        assert!(ready.starts_with("TETHER_REGISTRY_READY listen=127.0.0.1:"), "{ready}");
        Self { child, base: format!("http://127.0.0.1:{port}"), log }
    }

    /// The Eureka base URL (`http://127.0.0.1:PORT/eureka/`).
    pub fn eureka(&self) -> String {
        format!("{}/eureka/", self.base)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("--- log of {} ({}) ---\n{}", self.base, self.log.display(), self.log_text());
        }
    }
}

/// A test instance of app `app`.
pub fn instance(app: &str, id: &str, port: u16) -> InstanceInfo {
    let mut i = InstanceInfo::new(app, id, &format!("{id}.test"), "127.0.0.1", port);
    i.metadata.insert("node_id".into(), id.into());
    i
}
