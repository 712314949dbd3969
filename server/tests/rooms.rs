//! Rooms, presence, connection events and webhooks over real QUIC, the server as a process.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tether_proto::{ErrorCode, Frame, RoomEventKind};

fn texts(frames: &[Frame]) -> Vec<(u64, String)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some((d.seq, String::from_utf8_lossy(&d.payload).to_string())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_see_every_message_in_one_order() {
    let server = Server::start(&[]);
    let mut users = Vec::new();
    for u in ["alice", "bob", "carol"] {
        let (mut raw, _) = Raw::login(&server, u, &format!("{u}-d"), None, None).await;
        raw.join("r").await;
        users.push((u, raw));
    }
    // Each sends ten messages; acks give each sender the seq of its own.
    let mut seen: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); 3];
    for i in 0..10 {
        for (u, raw) in users.iter_mut() {
            raw.send_room("r", &format!("{u}-{i}"), &format!("{u} {i}")).await;
        }
    }
    for (k, (u, raw)) in users.iter_mut().enumerate() {
        let mut own = 0;
        while seen[k].len() < 30 {
            let f = raw.read().await.expect("frame");
            match f {
                Frame::Deliver(d) => {
                    assert_eq!(d.to, tether_proto::Address::room("r"));
                    assert!(seen[k].insert(d.seq, String::from_utf8_lossy(&d.payload).to_string()).is_none());
                }
                Frame::SendAck(a) => {
                    own += 1;
                    let i = a.client_msg_id.rsplit('-').next().unwrap_or_default().to_string();
                    seen[k].insert(a.seq, format!("{u} {i}"));
                }
                _ => {}
            }
        }
        assert_eq!(own, 10);
        // Deliveries came in seq order: the keys are exactly 1..=30.
        assert_eq!(seen[k].keys().copied().collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    // Each sender's own messages keep their order.
    for u in ["alice", "bob", "carol"] {
        let mine: Vec<&String> = seen[0].values().filter(|t| t.starts_with(u)).collect();
        let want: Vec<String> = (0..10).map(|i| format!("{u} {i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_gets_what_it_missed_in_order() {
    // On SQLite: the test reads the node's cursors from a second process while it runs.
    let db = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", db.path().join("rooms.db").display());
    let mut server = Server::start(&["--database-url", &url]);
    let (mut alice, _) = Raw::login(&server, "alice", "a1", None, None).await;
    alice.join("r").await;
    let (mut bob, _) = Raw::login(&server, "bob", "b1", None, None).await;
    let joined = bob.join("r").await;
    assert_eq!(joined.head, 0);
    bob.conn.close(0u32.into(), b"bye");
    for i in 0..100 {
        alice.send_room("r", &format!("m{i}"), &format!("m{i}")).await;
    }
    alice.expect(10, |f| matches!(f, Frame::SendAck(a) if a.client_msg_id == "m99").then_some(())).await;
    // Bob comes back with his room cursor.
    let cursors: BTreeMap<String, u64> = [("r".to_string(), 0)].into_iter().collect();
    let (mut bob, _) = Raw::login(&server, "bob", "b1", Some(cursors), None).await;
    let mut got = Vec::new();
    while got.len() < 100 {
        got.extend(texts(&[bob.read().await.expect("frame")]));
    }
    assert_eq!(got, (0..100).map(|i| (i as u64 + 1, format!("m{i}"))).collect::<Vec<_>>());
    // He acks 40; another login of the same device without a cursor resumes from the server's copy.
    bob.write(&Frame::Ack(tether_proto::Ack { inbox: 0, rooms: Some([("r".to_string(), 40)].into_iter().collect()) }))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.conn.close(0u32.into(), b"bye");
    // The device's cursor is stored when its session ends (through the write pipeline).
    let store = server.open_store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.room_cursor("bob", "b1", "r").await.expect("cursor") != Some(40) {
        assert!(tokio::time::Instant::now() < deadline, "bob's room cursor stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(store);
    let (mut bob, _) = Raw::login(&server, "bob", "b1", None, None).await;
    let first = bob.expect(10, |f| match f {
        Frame::Deliver(d) => Some(d.seq),
        _ => None,
    });
    assert_eq!(first.await, 41);

    // Membership and the log survive a restart of the node.
    drop(bob);
    drop(alice);
    server.restart();
    let (mut bob, _) =
        Raw::login(&server, "bob", "b1", Some([("r".to_string(), 100)].into_iter().collect()), None).await;
    let (code, p) =
        server.admin("POST", "/v1/rooms/r/messages", Some(serde_json::json!({"text": "after restart"}))).await;
    assert_eq!((code, &p["seq"]), (200, &serde_json::json!(101)));
    let d = bob
        .expect(10, |f| match f {
            Frame::Deliver(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert_eq!((d.seq, d.payload.as_slice()), (101, &b"after restart"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enter_quit_online_and_offline_events_with_counts() {
    let server = Server::start(&["--idle-timeout", "1s"]);
    let (mut alice, _) = Raw::login(&server, "alice", "a1", None, None).await;
    alice.join("r").await;
    let (mut bob, _) = Raw::login(&server, "bob", "b1", None, None).await;
    let j = bob.join("r").await;
    assert_eq!((j.members, j.online), (2, 2));
    let ev = alice
        .expect_pinging(10, |f| match f {
            Frame::RoomEvent(e) if e.user == "bob" => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!((ev.kind, ev.members, ev.online), (RoomEventKind::Enter, 2, 2));

    // Bob's app freezes (no frames, no leave): after the idle timeout the room hears he is gone.
    let ev = alice
        .expect_pinging(10, |f| match f {
            Frame::RoomEvent(e) if e.user == "bob" && e.kind == RoomEventKind::Offline => Some(e.clone()),
            Frame::Ping(_) => None,
            _ => None,
        })
        .await;
    assert_eq!((ev.members, ev.online), (2, 1), "offline keeps the membership");
    drop(bob);

    // He comes back: online again; then leaves for good: quit, one member left.
    let (mut bob, _) = Raw::login(&server, "bob", "b2", None, None).await;
    let ev = alice
        .expect_pinging(10, |f| match f {
            Frame::RoomEvent(e) if e.user == "bob" => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!((ev.kind, ev.online), (RoomEventKind::Online, 2));
    bob.write(&Frame::LeaveRoom(tether_proto::LeaveRoom { room: "r".into() })).await;
    bob.expect(10, |f| matches!(f, Frame::RoomLeft(_)).then_some(())).await;
    let ev = alice
        .expect_pinging(10, |f| match f {
            Frame::RoomEvent(e) if e.user == "bob" && e.kind == RoomEventKind::Quit => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ev.members, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_and_nothing_is_stored() {
    let server = Server::start(&["--rooms-auto-create", "false"]);
    let (code, _) = server.admin("POST", "/v1/rooms", Some(serde_json::json!({"room": "club"}))).await;
    assert_eq!(code, 200);
    let (mut alice, _) = Raw::login(&server, "alice", "a1", None, None).await;
    alice.join("club").await;
    let (mut mallory, _) = Raw::login(&server, "mallory", "m1", None, None).await;
    mallory.send_room("club", "x1", "let me in").await;
    let e = mallory
        .expect(10, |f| match f {
            Frame::SendError(e) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(e.code, ErrorCode::NotAMember);
    // A room that does not exist cannot be joined when auto-create is off.
    mallory.write(&Frame::JoinRoom(tether_proto::JoinRoom { room: "nowhere".into() })).await;
    let e = mallory
        .expect(10, |f| match f {
            Frame::Error(e) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!((e.code, e.fatal), (ErrorCode::NoSuchRoom, false));
    // Nor can a non-member read the room.
    mallory.write(&Frame::Sync(tether_proto::Sync { after: 0, until: None, room: Some("club".into()) })).await;
    let e = mallory
        .expect(10, |f| match f {
            Frame::Error(e) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(e.code, ErrorCode::NotAMember);
    let (_, h) = server.admin("GET", "/v1/rooms/club/messages", None).await;
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(0));
    // And nothing reached the member.
    assert!(texts(&alice.drain(300).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_subscription_sees_login_metadata_and_disconnect() {
    let server = Server::start(&[]);
    let (mut alice, _) = Raw::login(&server, "alice", "a1", None, None).await;
    alice.write(&Frame::SubscribePresence(tether_proto::SubscribePresence { users: vec!["bob".into()] })).await;
    let p = alice
        .expect(10, |f| match f {
            Frame::Presence(p) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert!(!p.online);
    let meta: BTreeMap<String, String> = [("app".to_string(), "2.1".to_string())].into_iter().collect();
    let (bob, _) = Raw::login(&server, "bob", "b1", None, Some(meta.clone())).await;
    let p = alice
        .expect(10, |f| match f {
            Frame::Presence(p) if p.online => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(p.devices.len(), 1);
    assert_eq!((p.devices[0].device_id.as_str(), &p.devices[0].metadata), ("b1", &meta));
    let (_, s) = server.admin("GET", "/v1/users/bob/sessions", None).await;
    assert_eq!(s["sessions"][0]["metadata"]["app"], "2.1");
    let (_, pr) = server.admin("POST", "/v1/presence", Some(serde_json::json!({"users": ["bob", "zed"]}))).await;
    assert_eq!(pr["presence"][0]["online"], true);
    assert_eq!(pr["presence"][1]["online"], false);
    bob.conn.close(0u32.into(), b"bye");
    let p = alice
        .expect(10, |f| match f {
            Frame::Presence(p) if !p.online => Some(p.clone()),
            _ => None,
        })
        .await;
    assert!(p.last_seen_ms > 0);

    // Oversized metadata is refused at login.
    let big: BTreeMap<String, String> = (0..20).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let mut raw = Raw::connect(&server).await;
    let Frame::Login(mut login) = Raw::login_frame(tether_sdk::Credential::Token(token("carl", 60)), "c1") else {
        unreachable!()
    };
    login.metadata = Some(big);
    raw.write(&Frame::Login(login)).await;
    assert!(matches!(raw.read().await, Some(Frame::LoginError(e)) if e.code == ErrorCode::InvalidField));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_past_retention_is_reported_as_truncated() {
    let server = Server::start(&["--room-history-max", "10", "--room-prune-every", "100ms"]);
    let (mut alice, _) = Raw::login(&server, "alice", "a1", None, None).await;
    alice.join("r").await;
    for i in 0..30 {
        alice.send_room("r", &format!("m{i}"), &format!("m{i}")).await;
    }
    alice.expect(10, |f| matches!(f, Frame::SendAck(a) if a.client_msg_id == "m29").then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.write(&Frame::Sync(tether_proto::Sync { after: 0, until: None, room: Some("r".into()) })).await;
    let t = alice
        .expect(10, |f| match f {
            Frame::HistoryTruncated(t) => Some(t.clone()),
            _ => None,
        })
        .await;
    assert_eq!((t.after, t.first_seq), (0, 21));
    let next = alice
        .expect(10, |f| match f {
            Frame::Deliver(d) => Some(d.seq),
            _ => None,
        })
        .await;
    assert_eq!(next, 21);
    let (_, h) = server.admin("GET", "/v1/rooms/r/messages?after=0&limit=5", None).await;
    assert_eq!(h["truncated"], true);
    assert_eq!(h["first_seq"], 21);
    assert_eq!(h["messages"][0]["seq"], 21);
    assert_eq!(h["next_after"], 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_manages_rooms_members_and_room_pushes() {
    let server = Server::start(&[]);
    let (_, r) = server.admin("POST", "/v1/rooms", Some(serde_json::json!({"room": "news"}))).await;
    assert_eq!(r["created"], true);
    let (mut bob, _) = Raw::login(&server, "bob", "b1", None, None).await;
    let (code, r) = server.admin("POST", "/v1/rooms/news/members", Some(serde_json::json!({"user": "bob"}))).await;
    assert_eq!((code, &r["added"]), (200, &serde_json::json!(true)));
    server.admin("POST", "/v1/rooms/news/members", Some(serde_json::json!({"user": "dora"}))).await;
    let ev = bob
        .expect(10, |f| match f {
            Frame::RoomEvent(e) if e.kind == RoomEventKind::Enter && e.user == "bob" => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ev.room, "news");
    let (_, m) = server.admin("GET", "/v1/rooms/news/members", None).await;
    assert_eq!(m["count"], 2);
    assert_eq!(m["online"], 1);
    assert_eq!(m["members"][0], serde_json::json!({"user": "bob", "online": true}));
    assert_eq!(m["members"][1], serde_json::json!({"user": "dora", "online": false}));
    let (code, p) =
        server.admin("POST", "/v1/rooms/news/messages", Some(serde_json::json!({"text": "breaking"}))).await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["seq"], 1);
    let d = bob
        .expect(10, |f| match f {
            Frame::Deliver(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert_eq!((d.from.as_str(), d.payload.as_slice(), d.seq), ("system", &b"breaking"[..], 1));
    let (code, _) = server.admin("POST", "/v1/rooms/nope/messages", Some(serde_json::json!({"text": "x"}))).await;
    assert_eq!(code, 404);
    let (_, r) = server.admin("DELETE", "/v1/rooms/news/members/dora", None).await;
    assert_eq!(r["removed"], true);
    let (_, r) = server.admin("DELETE", "/v1/rooms/news", None).await;
    assert_eq!(r["deleted"], true);
    let (code, _) = server.admin("GET", "/v1/rooms/news/members", None).await;
    assert_eq!(code, 404);
}

/// A webhook receiver: a real HTTP server that records (signature ok, event) pairs.
struct Receiver {
    addr: std::net::SocketAddr,
    events: Arc<Mutex<Vec<(bool, serde_json::Value)>>>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Receiver {
    async fn start(addr: &str, secret: &'static str) -> Receiver {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let events: Arc<Mutex<Vec<(bool, serde_json::Value)>>> = Arc::default();
        let ev = events.clone();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let cs = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let ev = ev.clone();
                let h = tokio::spawn(async move {
                    loop {
                        let mut buf = Vec::new();
                        let mut tmp = [0u8; 4096];
                        let (head, body) = loop {
                            let Ok(n) = s.read(&mut tmp).await else { return };
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&tmp[..n]);
                            let text = String::from_utf8_lossy(&buf).to_string();
                            if let Some((h, b)) = text.split_once("\r\n\r\n") {
                                let len: usize = h
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-length:")
                                            .map(|v| v.trim().to_string())
                                    })
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(0);
                                if b.len() >= len {
                                    break (h.to_string(), b[..len].to_string());
                                }
                            }
                        };
                        let header = |name: &str| {
                            head.lines()
                                .find_map(|l| {
                                    l.split_once(':')
                                        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                                        .map(|(_, v)| v.trim().to_string())
                                })
                                .unwrap_or_default()
                        };
                        let ts: u64 = header("x-tether-timestamp").parse().unwrap_or(0);
                        let ok = header("x-tether-signature")
                            == tether_server::webhook::signature(secret, ts, body.as_bytes());
                        ev.lock().expect("lock").push((ok, serde_json::from_str(&body).unwrap_or_default()));
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                            return;
                        }
                    }
                });
                cs.lock().expect("lock").push(h);
            }
        });
        Receiver { addr, events, task, conns }
    }

    /// Stops listening and drops every open connection.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    fn types(&self) -> Vec<String> {
        self.events.lock().expect("lock").iter().map(|(_, e)| e["type"].as_str().unwrap_or("").to_string()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_survive_a_receiver_outage() {
    let receiver = Receiver::start("127.0.0.1:0", "hook-secret").await;
    let addr = receiver.addr;
    let url = format!("http://{addr}/hooks");
    let server = Server::start(&["--webhook-url", &url, "--webhook-secret", "hook-secret"]);
    let meta: BTreeMap<String, String> = [("app".to_string(), "3.0".to_string())].into_iter().collect();
    let (mut alice, _) = Raw::login(&server, "alice", "a1", None, Some(meta)).await;
    alice.join("r").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while receiver.types().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "webhooks: {:?}", receiver.types());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.types(), vec!["session.connected", "room.entered"]);
    {
        let events = receiver.events.lock().expect("lock");
        assert!(events.iter().all(|(ok, _)| *ok), "bad signature");
        assert_eq!(events[0].1["metadata"]["app"], "3.0");
        assert_eq!(events[1].1["room"], "r");
    }

    // The receiver goes down; events keep happening.
    receiver.stop().await;
    alice.write(&Frame::LeaveRoom(tether_proto::LeaveRoom { room: "r".into() })).await;
    alice.expect(10, |f| matches!(f, Frame::RoomLeft(_)).then_some(())).await;
    alice.conn.close(0u32.into(), b"bye");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Back on the same address: the queued events arrive, in order, signed.
    let back = Receiver::start(&addr.to_string(), "hook-secret").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while back.types().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "after outage: {:?}", back.types());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back.types(), vec!["room.quit", "session.disconnected"]);
    {
        let events = back.events.lock().expect("lock");
        assert!(events.iter().all(|(ok, _)| *ok));
        assert_eq!(events[1].1["reason"], "normal");
    }
    assert!(server.metric("tether_webhooks_total{result=\"retry\"}").await >= 1.0);
}
