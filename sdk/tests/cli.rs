//! The `tether` CLI against a real node (in-process) over QUIC on loopback.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether_sdk::{Client, ClientConfig, ClientEvent, Credential, Trust};
use tether_server::{Config, Node};

const SECRET: &str = "cli-secret";

fn jwt(user: &str) -> String {
    #[derive(serde::Serialize)]
    struct C<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &C { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("jwt")
}

async fn node(dir: &std::path::Path) -> Node {
    let mut cfg = Config::for_data_dir(dir);
    cfg.quic_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.jwt_secret = Some(SECRET.into());
    cfg.admin_token = Some("admin".into());
    Node::start(cfg).await.expect("node")
}

fn tether(node: &Node, dir: &std::path::Path, user: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
    c.args(["--server", &node.quic_addr.to_string(), "--pin", &dir.join("dev-cert.pem").display().to_string()]).args([
        "--token",
        &jwt(user),
        "--device-id",
        &format!("{user}-cli"),
    ]);
    c
}

async fn wait_online(node: &Node, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.ctx.hub.sessions(user).is_empty() {
        assert!(Instant::now() < deadline, "{user} never came online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_listen_print_json() {
    let dir = tempfile::tempdir().expect("dir");
    let node = node(dir.path()).await;
    let listen = tether(&node, dir.path(), "bob")
        .args(["listen", "--count", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("listen");
    wait_online(&node, "bob").await;
    for i in 0..3 {
        let out = tether(&node, dir.path(), "alice")
            .args(["send", "--to", "bob", "hello", &i.to_string()])
            .output()
            .expect("send");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ack: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ack json");
        assert_eq!(ack["seq"], i + 1, "alice's own copy is seq {} of her inbox", i + 1);
        assert_eq!(ack["duplicate"], false);
    }
    let out =
        tokio::task::spawn_blocking(move || listen.wait_with_output()).await.expect("join").expect("listen output");
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 3);
    for (i, m) in lines.iter().enumerate() {
        assert_eq!(m["from"], "alice");
        assert_eq!(m["text"], format!("hello {i}"));
        assert_eq!(m["seq"], i as u64 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_mode_sends_lines_and_prints_messages() {
    let dir = tempfile::tempdir().expect("dir");
    let node = node(dir.path()).await;
    let mut cfg = ClientConfig::new(
        node.quic_addr.to_string(),
        Trust::Pinned(dir.path().join("dev-cert.pem")),
        Credential::Token(jwt("dora")),
    );
    cfg.device_id = Some("dora-phone".into());
    let (dora, mut events) = Client::start(cfg).await.expect("client");
    dora.wait_online().await.expect("online");

    let mut chat = tether(&node, dir.path(), "carl")
        .args(["chat", "--to", "dora"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chat");
    wait_online(&node, "carl").await;
    let mut stdin = chat.stdin.take().expect("stdin");
    writeln!(stdin, "hi dora, typed in chat").expect("type");
    let m = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("in time") {
            Some(ClientEvent::Message(m)) => break m,
            Some(_) => continue,
            None => panic!("client stopped"),
        }
    };
    assert_eq!((m.from.as_str(), m.payload.as_slice()), ("carl", &b"hi dora, typed in chat"[..]));

    dora.send_text("carl", "hi carl").await.expect("ack");
    let stdout = chat.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        BufReader::new(stdout).read_line(&mut l).map(|_| l)
    })
    .await
    .expect("join")
    .expect("read");
    assert_eq!(line.trim(), "[2] dora: hi carl", "carl's inbox: 1 = his own line, 2 = dora's answer");
    drop(stdin); // Ctrl-D
    let status = tokio::task::spawn_blocking(move || chat.wait()).await.expect("join").expect("wait");
    assert!(status.success());
}
