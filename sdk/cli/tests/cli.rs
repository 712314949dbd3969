//! The `tether` CLI against a real node (in-process) over QUIC on loopback.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether_sdk::{Client, ClientConfig, Credential, Event, Trust};
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
    node_with(dir, |_| {}).await
}

/// A node on free loopback ports in `dir`, with `tune` applied to its configuration.
async fn node_with(dir: &std::path::Path, tune: impl FnOnce(&mut Config)) -> Node {
    let mut cfg = Config::for_data_dir(dir);
    cfg.quic_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.jwt_secret = Some(SECRET.into());
    cfg.admin_token = Some("admin".into());
    tune(&mut cfg);
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
    while node.ctx.hub.sessions(user).await.is_empty() {
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
        Trust::pinned(dir.path().join("dev-cert.pem")),
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
            Some(Event::Message(m)) => break m,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_piped_into_chat_arrive_in_order() {
    let dir = tempfile::tempdir().expect("dir");
    let node = node(dir.path()).await;
    let mut cfg = ClientConfig::new(
        node.quic_addr.to_string(),
        Trust::pinned(dir.path().join("dev-cert.pem")),
        Credential::Token(jwt("erin")),
    );
    cfg.device_id = Some("erin-phone".into());
    let (_erin, mut events) = Client::start(cfg).await.expect("client");
    const LINES: usize = 1000;
    let input: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    let mut chat = tether(&node, dir.path(), "finn")
        .args(["chat", "--to", "erin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chat");
    let mut stdin = chat.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("pipe");
    drop(stdin); // the whole file, then end of input
    let mut got = Vec::with_capacity(LINES);
    while got.len() < LINES {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("in time") {
            Some(Event::Message(m)) => got.push(String::from_utf8_lossy(&m.payload).into_owned()),
            Some(_) => continue,
            None => panic!("client stopped"),
        }
    }
    let want: Vec<String> = (0..LINES).map(|i| format!("line {i}")).collect();
    let inversions =
        got.windows(2).filter(|w| want.iter().position(|x| *x == w[0]) > want.iter().position(|x| *x == w[1])).count();
    assert_eq!(inversions, 0, "lines arrive in the order they were piped");
    assert_eq!(got, want);
    let status = tokio::task::spawn_blocking(move || chat.wait()).await.expect("join").expect("wait");
    assert!(status.success(), "chat exits after every line is stored");
}

fn run_json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("run tether");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out).lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_and_presence_commands_print_json() {
    let dir = tempfile::tempdir().expect("dir");
    let node = node_with(dir.path(), |c| c.rooms_auto_create = true).await;
    let d = dir.path();

    let joined = run_json(tether(&node, d, "bob").args(["room", "join", "lobby"]));
    assert_eq!(
        (joined["room"].as_str(), joined["head"].as_u64(), joined["members"].as_u64()),
        (Some("lobby"), Some(0), Some(1))
    );
    let joined = run_json(tether(&node, d, "alice").args(["room", "join", "lobby"]));
    assert_eq!(joined["members"], 2);

    // bob listens (with login metadata); carol watches his presence.
    let listen = tether(&node, d, "bob")
        .args(["--meta", "app=cli-test", "--meta", "locale=en", "listen", "--count", "3", "--events"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("listen");
    wait_online(&node, "bob").await;
    let presence = run_json(tether(&node, d, "carol").args(["presence", "bob", "--count", "1"]));
    assert_eq!(presence["user"], "bob");
    assert_eq!(presence["online"], true);
    assert_eq!(presence["devices"][0]["device_id"], "bob-cli");
    assert_eq!(presence["devices"][0]["metadata"]["app"], "cli-test");

    // Three runs of alice's CLI, each a login, a send and a logout: room events and messages
    // travel separately, so the listener stays for a third message, by which time the first
    // runs' online and offline events have long been sent.
    for i in 1..=3u64 {
        let ack = run_json(tether(&node, d, "alice").args(["room", "send", "lobby", "hello", "room", &i.to_string()]));
        assert_eq!(ack["seq"], i, "the seq in the room's log");
    }
    let out =
        tokio::task::spawn_blocking(move || listen.wait_with_output()).await.expect("join").expect("listen output");
    assert!(out.status.success());
    let lines = json_lines(&out.stdout);
    let messages: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("event").is_none()).collect();
    assert_eq!(messages.len(), 3, "{lines:?}");
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["room"], "lobby");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["seq"], i as u64 + 1);
        assert_eq!(m["text"], format!("hello room {}", i + 1));
    }
    // alice's CLI runs came online and went offline in bob's room.
    assert!(
        lines.iter().any(|l| l["event"] == "room_event" && l["room"] == "lobby" && l["user"] == "alice"),
        "{lines:?}"
    );

    // A non-member's send is refused.
    let out = tether(&node, d, "carol").args(["room", "send", "lobby", "intruder"]).output().expect("send");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotAMember"), "{}", String::from_utf8_lossy(&out.stderr));

    let left = run_json(tether(&node, d, "bob").args(["room", "leave", "lobby"]));
    assert_eq!(left, serde_json::json!({"room": "lobby", "left": true}));
}

/// The next event `pick` accepts, within 10 s.
async fn next_matching<T>(events: &mut tether_sdk::Events, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("in time") {
            Some(ev) => {
                if let Some(t) = pick(ev) {
                    return t;
                }
            }
            None => panic!("client stopped"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rooms_events_and_history() {
    let dir = tempfile::tempdir().expect("dir");
    let node = node_with(dir.path(), |c| c.rooms_auto_create = true).await;
    let client = |user: &str| {
        let mut c = ClientConfig::new(
            node.quic_addr.to_string(),
            Trust::pinned(dir.path().join("dev-cert.pem")),
            Credential::Token(jwt(user)),
        );
        c.device_id = Some(format!("{user}-app"));
        c.state_dir = Some(dir.path().join(format!("state-{user}")).display().to_string());
        Client::start(c)
    };
    let (alice, mut alice_ev) = client("alice").await.expect("alice");
    let joined = alice.join_room("hall").await.expect("join");
    assert_eq!((joined.head, joined.members), (0, 1));
    let (bob, mut bob_ev) = client("bob").await.expect("bob");
    bob.join_room("hall").await.expect("join");
    let enter = next_matching(&mut alice_ev, |e| match e {
        // (alice's own sessions are told of her own enter too.)
        Event::RoomEvent(e) if e.kind == tether_sdk::RoomEventKind::Enter && e.user == "bob" => Some(e),
        _ => None,
    })
    .await;
    assert_eq!((enter.user.as_str(), enter.members), ("bob", 2));

    for i in 1..=3u64 {
        let ack = bob.send_to_room("hall", "text/plain", format!("m{i}").into_bytes()).await.expect("ack");
        assert_eq!(ack.seq, i);
    }
    for i in 1..=3u64 {
        let m = next_matching(&mut alice_ev, |e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .await;
        assert_eq!(
            (m.to, m.seq, m.payload),
            (tether_sdk::Target::Room("hall".into()), i, format!("m{i}").into_bytes())
        );
    }

    // A late member starts at the head and fetches the history on demand.
    let (carol, mut carol_ev) = client("carol").await.expect("carol");
    assert_eq!(carol.join_room("hall").await.expect("join").head, 3);
    carol.sync_room("hall", 0).expect("sync");
    for i in 1..=3u64 {
        let m = next_matching(&mut carol_ev, |e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .await;
        assert_eq!((m.seq, m.from.as_str()), (i, "bob"));
    }
    assert_eq!(carol.status().await.expect("status").room_cursors.get("hall"), Some(&3));

    // Leaving: the cursor is forgotten, and sending is refused.
    carol.leave_room("hall").await.expect("leave");
    assert!(carol.status().await.expect("status").room_cursors.is_empty());
    match carol.send_to_room("hall", "text/plain", b"x".to_vec()).await {
        Err(tether_sdk::SendFailure::Refused { code, .. }) => assert_eq!(code, tether_sdk::ErrorCode::NotAMember),
        other => panic!("{other:?}"),
    }
    let _ = bob_ev.try_next();
    for c in [alice, bob, carol] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_process_goes_offline_in_its_rooms() {
    let dir = tempfile::tempdir().expect("dir");
    let node = node_with(dir.path(), |c| c.idle_timeout = Duration::from_secs(1)).await;

    let mut acfg = ClientConfig::new(
        node.quic_addr.to_string(),
        Trust::pinned(dir.path().join("dev-cert.pem")),
        Credential::Token(jwt("ada")),
    );
    acfg.device_id = Some("ada-phone".into());
    let (ada, mut events) = Client::start(acfg).await.expect("client");
    ada.wait_online().await.expect("online");
    ada.join_room("lobby").await.expect("join");

    // Carl's desktop app joins the lobby and stays connected, until its process is killed.
    let out = tether(&node, dir.path(), "carl").args(["room", "join", "lobby"]).output().expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The join command's own session must be gone first, or the listener's login would not be
    // carl's first session (no `online` event).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.ctx.hub.sessions("carl").await.is_empty() {
        assert!(Instant::now() < deadline, "the join command's session never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut carl = tether(&node, dir.path(), "carl").arg("listen").stdout(Stdio::null()).spawn().expect("listen");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "carl never came online in the lobby");
        match tokio::time::timeout(Duration::from_secs(1), events.next()).await {
            Ok(Some(Event::RoomEvent(e))) if e.user == "carl" && e.kind == tether_sdk::RoomEventKind::Online => break,
            _ => continue,
        }
    }
    carl.kill().expect("kill -9"); // SIGKILL: no leave, no logout, no connection close
    let _ = carl.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    let gone = loop {
        assert!(Instant::now() < deadline, "the room never heard carl went offline");
        match tokio::time::timeout(Duration::from_secs(1), events.next()).await {
            Ok(Some(Event::RoomEvent(e))) if e.user == "carl" && e.kind == tether_sdk::RoomEventKind::Offline => {
                break e
            }
            _ => continue,
        }
    };
    assert_eq!((gone.members, gone.online), (2, 1), "still a member, no longer online");
    assert!(node.ctx.hub.sessions("carl").await.is_empty());
}
