//! End-to-end delivery over real QUIC on loopback, with the server as a real process.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tether_proto::Frame;
use tether_sdk::{ConnectionState, Credential, Event, KickReason, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_arrive_in_order_at_next_login() {
    let server = Server::start(&[]);
    let (alice, _ae) = server.client("alice", "phone", "alice-phone").await;
    for i in 0..50 {
        let ack = alice.send_text("bob", &format!("m{i}")).await.expect("acked");
        assert!(!ack.duplicate);
    }
    // Bob has never been online: everything waits in his inbox.
    let (_bob, mut be) = server.client("bob", "phone", "bob-phone").await;
    for i in 0..50u64 {
        let m = next_message(&mut be, 10).await;
        assert_eq!(m.seq, i + 1);
        assert_eq!(m.from, "alice");
        assert_eq!(m.payload, format!("m{i}").into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_the_recipient_and_the_senders_other_devices_get_the_message() {
    let server = Server::start(&[]);
    let (alice_phone, _) = server.client("alice", "phone", "a-phone").await;
    let (_alice_desk, mut alice_desk_ev) = server.client("alice", "desktop", "a-desk").await;
    let (_bob_phone, mut bob_phone_ev) = server.client("bob", "phone", "b-phone").await;
    let (_bob_desk, mut bob_desk_ev) = server.client("bob", "desktop", "b-desk").await;

    let ack = alice_phone.send_text("bob", "hello both").await.expect("acked");
    for ev in [&mut bob_phone_ev, &mut bob_desk_ev] {
        let m = next_message(ev, 10).await;
        assert_eq!((m.from.as_str(), m.payload.as_slice(), m.msg_id), ("alice", &b"hello both"[..], ack.msg_id));
    }
    // Alice's desktop sees what her phone sent, at the seq of her own copy.
    let m = next_message(&mut alice_desk_ev, 10).await;
    assert_eq!((m.from.as_str(), m.from_device.as_str(), m.seq), ("alice", "a-phone", ack.seq));
    assert_eq!(m.to, Target::User("bob".into()));
    let (_, sessions) = server.admin("GET", "/v1/users/bob/sessions", None).await;
    assert_eq!(sessions["sessions"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_of_the_same_type_kicks_the_first_which_stays_down() {
    let server = Server::start(&[]);
    let (old, mut old_ev) = server.client("bob", "phone", "bob-old-phone").await;
    let (_new, _new_ev) = server.client("bob", "phone", "bob-new-phone").await;
    let reason = wait_event(&mut old_ev, 10, |e| match e {
        Event::Kicked(k) => Some(k.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, KickReason::Replaced);
    assert_eq!(
        old.wait_for_state(|s| matches!(s, ConnectionState::Kicked { .. })).await.expect("state"),
        ConnectionState::Kicked { reason: KickReason::Replaced }
    );
    // Several backoff periods later the old device has not come back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(old.state(), ConnectionState::Kicked { .. }));
    let (_, s) = server.admin("GET", "/v1/users/bob/sessions", None).await;
    let devices: Vec<&str> =
        s["sessions"].as_array().expect("list").iter().filter_map(|x| x["device_id"].as_str()).collect();
    assert_eq!(devices, vec!["bob-new-phone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_device_reconnecting_takes_over_its_session_quietly() {
    let server = Server::start(&[]);
    let (_first, mut first_ev) = server.client("carol", "phone", "carol-phone").await;
    let (second, mut second_ev) = server.client("carol", "phone", "carol-phone").await;
    let (alice, _) = server.client("alice", "phone", "alice-phone").await;
    alice.send_text("carol", "to the new connection").await.expect("ack");
    let m = next_message(&mut second_ev, 10).await;
    assert_eq!(m.payload, b"to the new connection");
    assert_eq!(second.state(), ConnectionState::Online);
    // The superseded connection was closed without a kick.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Some(ev) = first_ev.try_next() {
        assert!(!matches!(ev, Event::Kicked(_)), "same device must not be kicked: {ev:?}");
    }
    let (_, s) = server.admin("GET", "/v1/users/carol/sessions", None).await;
    assert_eq!(s["sessions"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_to_the_app_across_a_server_kill() {
    const N: usize = 1000;
    let mut server = Server::start(&[]);
    let sender_state = tempfile::tempdir().expect("dir");
    let receiver_state = tempfile::tempdir().expect("dir");
    let (alice, _ae) = server.durable_client("alice", "alice-phone", sender_state.path(), 32).await;
    let (bob, mut be) = server.durable_client("bob", "bob-phone", receiver_state.path(), 32).await;
    alice.wait_online().await.expect("online");
    bob.wait_online().await.expect("online");

    // `send` queues at the call, so the outbox holds the messages in this order.
    let (acked, sends) = send_numbered(&alice, "bob", N);
    // Kill the server mid-stream, then bring it back on the same port and data.
    while acked.load(std::sync::atomic::Ordering::Relaxed) < N / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let at_kill = acked.load(std::sync::atomic::Ordering::Relaxed);
    assert!(at_kill < N, "the kill must interrupt the stream");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();

    let acks = expect_acks(sends, 60).await;
    let ids: HashSet<u64> = acks.iter().map(|a| a.msg_id).collect();
    assert_eq!(ids.len(), N, "one stored message per send");

    // Bob's app sees each message exactly once, in send order.
    expect_numbered(&mut be, N).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Some(ev) = be.try_next() {
        assert!(!matches!(ev, Event::Message(_)), "duplicate delivery: {ev:?}");
    }
    alice.close().await;
    bob.close().await;
    server.kill();

    let store = server.open_store().await;
    assert_eq!(store.count_from("alice").await.expect("count"), N as u64);
    let inbox = store.fetch_inbox("bob", 0, None, 10_000).await.expect("inbox");
    let payloads: Vec<String> = inbox.iter().map(|e| String::from_utf8_lossy(&e.msg.payload).to_string()).collect();
    assert_eq!(payloads, (0..N).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_survives_a_client_network_change() {
    let server = Server::start(&[]);
    let (alice, _ae) = server.client("alice", "phone", "alice-phone").await;
    let (_bob, mut be) = server.client("bob", "phone", "bob-phone").await;
    for i in 0..10 {
        alice.send_text("bob", &format!("before {i}")).await.expect("ack");
    }
    let before = alice.status().await.expect("status").local_addr.expect("addr");
    let (_, s) = server.admin("GET", "/v1/users/alice/sessions", None).await;
    let remote_before = s["sessions"][0]["remote"].as_str().expect("remote").to_string();
    let session_before = s["sessions"][0]["session_id"].clone();

    let after = alice.network_changed().await.expect("rebind");
    assert_ne!(before.port(), after.port());
    for i in 0..10 {
        alice.send_text("bob", &format!("after {i}")).await.expect("ack");
    }
    for i in 0..20 {
        let m = next_message(&mut be, 10).await;
        let want = if i < 10 { format!("before {i}") } else { format!("after {}", i - 10) };
        assert_eq!(m.payload, want.into_bytes());
    }
    // Same session on the server, now at the new address; no second login happened.
    let (_, s) = server.admin("GET", "/v1/users/alice/sessions", None).await;
    assert_eq!(s["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(s["sessions"][0]["session_id"], session_before);
    let remote_after = s["sessions"][0]["remote"].as_str().expect("remote").to_string();
    assert_ne!(remote_before, remote_after);
    assert!(remote_after.ends_with(&format!(":{}", after.port())), "{remote_after} vs {after}");
    assert_eq!(server.metric("tether_logins_total{result=\"ok\"}").await, 2.0);
    assert_eq!(alice.state(), ConnectionState::Online);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_send_with_the_same_id_is_stored_once_and_gets_the_original_ack() {
    let server = Server::start(&[]);
    let mut raw = Raw::connect(&server).await;
    raw.write(&Raw::login_frame(Credential::Token(token("dave", 60)), "dave-raw")).await;
    assert!(matches!(raw.read().await, Some(tether_proto::Frame::LoginOk(_))));
    let send = tether_proto::Frame::Send(tether_proto::Send {
        client_msg_id: "same-id".into(),
        to: tether_proto::Address::user("erin"),
        content_type: "text/plain".into(),
        payload: b"once".to_vec(),
    });
    raw.write(&send).await;
    let Some(tether_proto::Frame::SendAck(first)) = raw.read().await else { panic!("ack") };
    raw.write(&send).await;
    let Some(tether_proto::Frame::SendAck(second)) = raw.read().await else { panic!("ack") };
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!((first.msg_id, first.seq, first.ts), (second.msg_id, second.seq, second.ts));
    assert_eq!(server.metric("tether_send_retries_total").await, 1.0);
    let (_erin, mut ee) = server.client("erin", "phone", "erin-phone").await;
    assert_eq!(next_message(&mut ee, 10).await.payload, b"once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_cursor_and_resume_token_survive_an_app_restart() {
    let mut server = Server::start(&[]);
    let alice_state = tempfile::tempdir().expect("dir");
    let bob_state = tempfile::tempdir().expect("dir");

    // Bob reads three messages, then quits the app.
    let mut bcfg = server.client_config(Credential::Token(token("bob", 3600)), "phone", "bob-phone");
    bcfg.state_dir = Some(bob_state.path().display().to_string());
    let (bob, mut be) = tether_sdk::Client::start(bcfg.clone()).await.expect("start");
    bob.wait_online().await.expect("online");
    let (carol, _) = server.client("carol", "phone", "carol-phone").await;
    for i in 0..3 {
        carol.send_text("bob", &format!("early {i}")).await.expect("ack");
        assert_eq!(next_message(&mut be, 10).await.payload, format!("early {i}").into_bytes());
    }
    bob.close().await;

    // Alice logs in with a one-time ticket; then the server dies and she writes two messages
    // that cannot leave, and quits the app.
    let (_, t) = server.admin("POST", "/v1/tickets", Some(serde_json::json!({"user": "alice"}))).await;
    let ticket = t["ticket"].as_str().expect("ticket").to_string();
    let mut acfg = server.client_config(Credential::Ticket(ticket), "desktop", "alice-desk");
    acfg.state_dir = Some(alice_state.path().display().to_string());
    let (alice, _ae) = tether_sdk::Client::start(acfg.clone()).await.expect("start");
    alice.wait_online().await.expect("online");
    server.kill();
    let first = alice.send_text("bob", "written offline 1");
    let second = alice.send_text("bob", "written offline 2");
    let ids = [first.client_msg_id().to_string(), second.client_msg_id().to_string()];
    alice.close().await;
    assert_eq!(first.await, Err(tether_sdk::SendFailure::Closed));
    assert_eq!(second.await, Err(tether_sdk::SendFailure::Closed));

    // The app starts while the server is still down: the pending sends are listed (for local
    // echo) from the state dir, in order.
    let (alice, _) = tether_sdk::Client::start(acfg.clone()).await.expect("start offline");
    let pending = alice.outbox().await.expect("outbox");
    let listed: Vec<(&str, &[u8])> = pending.iter().map(|e| (e.client_msg_id.as_str(), e.payload.as_slice())).collect();
    assert_eq!(listed, [(ids[0].as_str(), &b"written offline 1"[..]), (ids[1].as_str(), &b"written offline 2"[..])]);
    alice.close().await;

    // Both apps start again. Alice's ticket is spent: she gets back in with the resume token
    // from her state dir, and her outbox goes out.
    server.restart();
    let (alice, mut ae) = tether_sdk::Client::start(acfg).await.expect("restart");
    alice.wait_online().await.expect("resumed with the stored token");
    let mut acked = Vec::new();
    while acked.len() < 2 {
        acked.push(
            wait_event(&mut ae, 20, |e| match e {
                Event::SendAcked(a) => Some(a.seq),
                _ => None,
            })
            .await,
        );
    }
    // Bob's cursor was kept: he gets exactly the two new messages, after the three he had.
    let (_bob, mut be) = tether_sdk::Client::start(bcfg).await.expect("restart");
    let m = next_message(&mut be, 20).await;
    assert_eq!((m.seq, m.payload.as_slice()), (4, &b"written offline 1"[..]));
    let m = next_message(&mut be, 20).await;
    assert_eq!((m.seq, m.payload.as_slice()), (5, &b"written offline 2"[..]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Some(ev) = be.try_next() {
        assert!(!matches!(ev, Event::Message(_)), "redelivered: {ev:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_certificate_works_as_a_ca_file_and_a_wrong_pin_is_refused() {
    let server = Server::start(&[]);
    let mut cfg = server.client_config(Credential::Token(token("gus", 60)), "phone", "gus-phone");
    cfg.trust = tether_sdk::Trust::ca_file(server.cert());
    let (c, _) = tether_sdk::Client::start(cfg).await.expect("start");
    tokio::time::timeout(Duration::from_secs(20), c.wait_online()).await.expect("in time").expect("online");

    // Pinning another certificate: the handshake fails and the client never logs in.
    let other = tempfile::tempdir().expect("dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let pin = other.path().join("other.pem");
    std::fs::write(&pin, ck.cert.pem()).expect("write");
    let mut cfg = server.client_config(Credential::Token(token("gus", 60)), "desktop", "gus-desk");
    cfg.trust = tether_sdk::Trust::pinned(pin);
    let (c, _) = tether_sdk::Client::start(cfg).await.expect("start");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(c.state(), ConnectionState::Backoff { .. } | ConnectionState::Connecting), "{:?}", c.state());
    // The platform verifier does not trust a node's self-signed development certificate.
    let mut cfg = server.client_config(Credential::Token(token("gus", 60)), "tablet", "gus-tablet");
    cfg.trust = tether_sdk::Trust::Platform;
    let (c, _) = tether_sdk::Client::start(cfg).await.expect("start");
    let failed = c.wait_for_state(|s| matches!(s, ConnectionState::Backoff { .. } | ConnectionState::Online));
    let state = tokio::time::timeout(Duration::from_secs(10), failed).await.expect("in time").expect("state");
    assert!(matches!(state, ConnectionState::Backoff { .. }), "{state:?}");
    let (_, s) = server.admin("GET", "/v1/users/gus/sessions", None).await;
    assert_eq!(s["sessions"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_then_resume_delivers_what_arrived_meanwhile_exactly_once() {
    let server = Server::start(&[]);
    let (alice, _) = server.client("alice", "phone", "alice-phone").await;
    let (bob, mut be) = server.client("bob", "phone", "bob-phone").await;
    alice.send_text("bob", "before").await.expect("ack");
    assert_eq!(next_message(&mut be, 10).await.payload, b"before".to_vec());

    bob.pause().expect("pause");
    bob.wait_for_state(|s| matches!(s, ConnectionState::Paused)).await.expect("paused");
    // The server sees bob go away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.admin("GET", "/v1/users/bob/sessions", None).await.1["online"] != false {
        assert!(tokio::time::Instant::now() < deadline, "bob's session ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..3 {
        alice.send_text("bob", &format!("while paused {i}")).await.expect("ack");
    }
    // Bob writes while paused: it waits in his outbox.
    let pending = tokio::spawn(bob.send_text("alice", "from the background"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "not sent while paused");

    bob.resume().expect("resume");
    for i in 0..3 {
        let m = next_message(&mut be, 10).await;
        assert_eq!(m.payload, format!("while paused {i}").into_bytes());
        assert_eq!(m.seq, i + 2);
    }
    let ack = tokio::time::timeout(Duration::from_secs(10), pending).await.expect("in time").expect("task");
    assert!(ack.is_ok(), "the outbox went out after resume");
    // Exactly once: nothing else arrives.
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match be.next().await {
                Some(Event::Message(m)) if m.from == "alice" => return Some(m),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await;
    assert!(extra.is_err(), "no repeat: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_gets_events_until_its_handle_is_dropped() {
    let server = Server::start(&[]);
    let (alice, _) = server.client("alice", "phone", "alice-phone").await;
    let (bob, mut be) = server.client("bob", "phone", "bob-phone").await;
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let handle = bob.add_listener(move |ev: Event| {
        if let Event::Message(m) = ev {
            sink.lock().expect("lock").push(String::from_utf8_lossy(&m.payload).into_owned());
        }
    });
    for i in 0..3 {
        alice.send_text("bob", &format!("m{i}")).await.expect("ack");
        next_message(&mut be, 10).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("lock").len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the listener got the messages");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*seen.lock().expect("lock"), ["m0", "m1", "m2"], "in order, besides the stream");
    drop(handle);
    alice.send_text("bob", "after the handle").await.expect("ack");
    assert_eq!(next_message(&mut be, 10).await.payload, b"after the handle".to_vec(), "the stream goes on");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.lock().expect("lock").len(), 3, "a dropped handle stops its listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cancelled_before_it_left_is_never_delivered() {
    let server = Server::start(&[]);
    let (alice, _) = server.client("alice", "phone", "alice-phone").await;
    let (_bob, mut be) = server.client("bob", "phone", "bob-phone").await;
    alice.pause().expect("pause");
    alice.wait_for_state(|s| matches!(s, ConnectionState::Paused)).await.expect("paused");
    let oops = alice.send_text("bob", "oops");
    let fine = alice.send_text("bob", "fine");
    assert_eq!(alice.outbox().await.expect("outbox").len(), 2);
    assert_eq!(alice.cancel(oops.client_msg_id()).await.expect("cancel"), Some(false), "it never left");
    assert_eq!(oops.await, Err(tether_sdk::SendFailure::Cancelled { maybe_delivered: false }));
    alice.resume().expect("resume");
    fine.await.expect("the other one is sent");
    assert_eq!(next_message(&mut be, 10).await.payload, b"fine".to_vec());
    assert!(alice.outbox().await.expect("outbox").is_empty());
    // Acknowledged: nothing to cancel.
    let ack = alice.send_text("bob", "done").await.expect("ack");
    assert_eq!(alice.cancel(&ack.client_msg_id).await.expect("cancel"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sends_without_awaiting_arrive_in_call_order() {
    let server = Server::start(&[]);
    let (alice, _) = server.client("alice", "phone", "alice-phone").await;
    let (_bob, mut be) = server.client("bob", "phone", "bob-phone").await;
    let handles: Vec<_> = (0..1000).map(|i| alice.send_text("bob", &format!("n{i}"))).collect();
    for i in 0..1000 {
        assert_eq!(next_message(&mut be, 20).await.payload, format!("n{i}").into_bytes());
    }
    for h in handles {
        h.await.expect("acked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_close_fail_with_a_typed_error_not_a_hang() {
    let server = Server::start(&[]);
    let (alice, _events) = server.client("alice", "phone", "alice-phone").await;
    alice.close().await;
    let t = Duration::from_secs(5);
    let send = tokio::time::timeout(t, alice.send_text("bob", "late")).await.expect("no hang");
    assert_eq!(send, Err(tether_sdk::SendFailure::Closed));
    let join = tokio::time::timeout(t, alice.join_room("r")).await.expect("no hang");
    assert!(matches!(join, Err(tether_sdk::RoomFailure::Closed)), "{join:?}");
    assert!(matches!(
        tokio::time::timeout(t, alice.outbox()).await.expect("no hang"),
        Err(tether_sdk::ClientError::Closed)
    ));
    assert!(matches!(
        tokio::time::timeout(t, alice.cancel("x")).await.expect("no hang"),
        Err(tether_sdk::ClientError::Closed)
    ));
    assert!(matches!(
        tokio::time::timeout(t, alice.status()).await.expect("no hang"),
        Err(tether_sdk::ClientError::Closed)
    ));
    assert!(tokio::time::timeout(t, alice.wait_online()).await.expect("no hang").is_err());
    assert!(matches!(alice.pause(), Err(tether_sdk::ClientError::Closed)));
    assert!(matches!(alice.resume(), Err(tether_sdk::ClientError::Closed)));
    assert!(matches!(alice.subscribe_presence(vec!["bob".into()]), Err(tether_sdk::ClientError::Closed)));
    assert!(matches!(
        tokio::time::timeout(t, alice.network_changed()).await.expect("no hang"),
        Err(tether_sdk::ClientError::Closed)
    ));
    assert_eq!(alice.state(), ConnectionState::LoggedOut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_falls_back_to_the_store_and_misses_nothing() {
    const N: usize = 3000;
    // Eight live deliveries queued per session at most; past that the session reads the store.
    let server = Server::start(&["--session-queue", "8"]);
    // Bob's device reads nothing for now: its QUIC receive window (1.25 MB) fills, the node's
    // writes to it wait, and his session's queue overflows again and again.
    let (mut bob, _) = Raw::login(&server, "bob", "bob-raw", None, None).await;
    let (alice, _ae) = server.client("alice", "phone", "alice-phone").await;
    alice.wait_online().await.expect("online");
    let pad = "x".repeat(1024);
    let sends = (0..N)
        .map(|i| {
            let send = alice.send_text("bob", &format!("{i} {pad}"));
            tokio::spawn(send)
        })
        .collect();
    expect_acks(sends, 120).await;
    // Now he reads: every message once, in order, though most never sat in his queue.
    let mut next = 1u64;
    while next <= N as u64 {
        match bob.read().await {
            Some(Frame::Deliver(d)) => {
                assert_eq!(d.seq, next, "in order, once");
                let text = String::from_utf8_lossy(&d.payload);
                assert_eq!(text.split(' ').next(), Some((next - 1).to_string().as_str()));
                next += 1;
            }
            Some(_) => {}
            None => panic!("bob's stream ended before seq {next}"),
        }
    }
    assert!(server.metric("tether_sync_gaps_total").await > 0.0, "bob's session read what it dropped from the store");
    alice.close().await;
}
