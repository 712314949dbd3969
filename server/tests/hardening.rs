//! Findings of the outside fault test, each over real QUIC against the server process: acks
//! beyond what was delivered, stored cursors above the head, integers near `u64::MAX`, and how
//! soon a vanished client is announced offline.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use tether_proto::{Ack, Frame, Ping, SubscribePresence, Sync};
use tether_server::store::CursorUpdate;

async fn push(server: &Server, to: &str, text: &str) {
    let (status, body) =
        server.admin("POST", "/v1/messages", Some(serde_json::json!({ "to": to, "text": text }))).await;
    assert_eq!(status, 200, "{body}");
}

async fn push_room(server: &Server, room: &str, text: &str) {
    let path = format!("/v1/rooms/{room}/messages");
    let (status, body) = server.admin("POST", &path, Some(serde_json::json!({ "text": text }))).await;
    assert_eq!(status, 200, "{body}");
}

/// Reads `n` deliveries; returns their payloads.
async fn delivers(raw: &mut Raw, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = raw
            .expect_pinging(10, |f| match f {
                Frame::Deliver(d) => Some(d.clone()),
                _ => None,
            })
            .await;
        out.push(String::from_utf8_lossy(&d.payload).into_owned());
    }
    out
}

/// Closes a raw session and waits until the server has ended it (its cursors are stored then).
async fn leave(server: &Server, raw: Raw, user: &str) {
    raw.conn.close(0u32.into(), b"bye");
    drop(raw);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, s) = server.admin("GET", &format!("/v1/users/{user}/sessions"), None).await;
        if s["online"] == false {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{user}'s session ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The cursor write at session end goes through the write pipeline: give it a batch.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_beyond_what_was_delivered_hides_no_later_message() {
    let server = Server::start(&[]);
    for (round, bad) in [1_000_000_000u64, u64::MAX].into_iter().enumerate() {
        let device = format!("bob-{round}");
        let (mut bob, _) = Raw::login(&server, "bob", &device, None, None).await;
        bob.join("r").await;
        let mut rooms = BTreeMap::new();
        rooms.insert("r".to_string(), bad);
        bob.write(&Frame::Ack(Ack { inbox: bad, rooms: Some(rooms) })).await;
        // Frames are handled in order: once the pong is back, the ack was.
        bob.write(&Frame::Ping(Ping { nonce: 7 })).await;
        bob.expect(10, |f| matches!(f, Frame::Pong(_)).then_some(())).await;
        leave(&server, bob, "bob").await;

        // Messages that arrive while the device is away...
        push(&server, "bob", &format!("inbox {round}")).await;
        push_room(&server, "r", &format!("room {round}")).await;
        // ...all reach it at its next login without a cursor of its own.
        let (mut bob, ok) = Raw::login(&server, "bob", &device, None, None).await;
        assert_eq!(ok.inbox_head, round as u64 + 1);
        let got = delivers(&mut bob, 2).await;
        assert!(got.contains(&format!("inbox {round}")), "{got:?}");
        assert!(got.contains(&format!("room {round}")), "{got:?}");
        leave(&server, bob, "bob").await;
    }
    assert!(server.metric("tether_acks_clamped_total").await >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_cursor_above_the_head_is_repaired_at_login() {
    // On SQLite: the test writes the node's store from a second handle while it runs.
    let db = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", db.path().join("tether.db").display());
    let server = Server::start(&["--database-url", &url]);
    push(&server, "bob", "before").await;
    // A cursor far above the head, as an older node could store it.
    let store = server.open_store().await;
    let cu = CursorUpdate { user: "bob".into(), device_id: "bob-phone".into(), room: None, seq: 1 << 40, at_ms: 1 };
    store.append(vec![], vec![cu]).await.expect("plant cursor");
    let (bob, ok) = Raw::login(&server, "bob", "bob-phone", None, None).await;
    assert_eq!(ok.inbox_head, 1);
    assert_eq!(server.metric("tether_cursors_repaired_total").await, 1.0);
    assert_eq!(store.device_cursor("bob", "bob-phone").await.expect("cursor"), Some(1), "repaired to the head");
    leave(&server, bob, "bob").await;
    push(&server, "bob", "after").await;
    let (mut bob, _) = Raw::login(&server, "bob", "bob-phone", None, None).await;
    assert_eq!(delivers(&mut bob, 1).await, vec!["after".to_string()]);
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_near_u64_max_are_answered_and_the_session_lives_on() {
    let server = Server::start(&[]);
    let (mut alice, _) = Raw::login(&server, "alice", "alice-raw", None, None).await;
    alice.join("r").await;
    alice.send_room("r", "c1", "hello").await;
    alice.expect(10, |f| matches!(f, Frame::SendAck(_)).then_some(())).await;
    for (room, after, until) in [
        (Some("r"), u64::MAX, None),
        (Some("r"), u64::MAX - 1, Some(u64::MAX)),
        (None, u64::MAX, None),
        (None, u64::MAX - 1, Some(u64::MAX)),
        (Some("r"), 0, Some(u64::MAX)),
    ] {
        alice.write(&Frame::Sync(Sync { after, until, room: room.map(String::from) })).await;
        alice.write(&Frame::Ping(Ping { nonce: after })).await;
        let nonce = alice
            .expect(10, |f| match f {
                Frame::Pong(p) => Some(p.nonce),
                _ => None,
            })
            .await;
        assert_eq!(nonce, after, "the session answers after sync{{after: {after}}}");
    }
    let (status, body) = server.admin("GET", "/v1/rooms/r/messages?after=18446744073709551615", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(0));
    assert_eq!(body["truncated"], false);
    let (status, _) = server.admin("GET", "/v1/rooms/r/messages?after=18446744073709551616", None).await;
    assert_eq!(status, 400, "an after beyond u64 is a bad request");
    let (_, s) = server.admin("GET", "/v1/users/alice/sessions", None).await;
    assert_eq!(s["sessions"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_is_announced_offline_when_the_idle_timer_fires() {
    let server = Server::start(&["--idle-timeout", "1s"]);
    let (mut bob, _) = Raw::login(&server, "bob", "bob-raw", None, None).await;
    bob.write(&Frame::SubscribePresence(SubscribePresence { users: vec!["alice".into()] })).await;
    let (mut alice, _) = Raw::login(&server, "alice", "alice-raw", None, None).await;
    bob.expect_pinging(10, |f| matches!(f, Frame::Presence(p) if p.user == "alice" && p.online).then_some(())).await;
    // Alice's last frame; then she goes silent without closing (the phone left the network).
    alice.write(&Frame::Ping(Ping { nonce: 1 })).await;
    let last_frame = Instant::now();
    bob.expect_pinging(10, |f| matches!(f, Frame::Presence(p) if p.user == "alice" && !p.online).then_some(())).await;
    let after = last_frame.elapsed();
    // The idle timeout is 1 s; lingering for the vanished peer's acknowledgement added 2 s.
    assert!(after < Duration::from_millis(2500), "offline {after:?} after the last frame");
    drop(alice);
}

fn refused(r: Result<Raw, quinn::ConnectionError>) -> bool {
    matches!(r, Err(quinn::ConnectionError::ConnectionClosed(c)) if c.error_code == quinn_proto_refused())
}

/// QUIC's CONNECTION_REFUSED transport error code.
fn quinn_proto_refused() -> quinn::TransportErrorCode {
    quinn::TransportErrorCode::CONNECTION_REFUSED
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_their_login_are_capped() {
    let server = Server::start(&["--max-pending-logins", "2"]);
    let first = Raw::connect(&server).await;
    let _second = Raw::connect(&server).await;
    // Both slots taken: a third waits for nothing, it is refused (after proving its address).
    assert!(refused(Raw::try_connect(&server).await), "a third pending connection is refused");
    // The first logs in and frees its slot.
    let mut first = first;
    first.write(&Raw::login_frame(tether_proto::Credential::Token(token("ann", 60)), "ann-raw")).await;
    first.expect(10, |f| matches!(f, Frame::LoginOk(_)).then_some(())).await;
    assert_eq!(server.metric("tether_pending_logins").await, 1.0, "the logged-in one left the count");
    let third = Raw::try_connect(&server).await;
    assert!(third.is_ok(), "a slot is free again: {:?}", third.err());
    assert_eq!(server.metric("tether_pending_logins").await, 2.0);
    drop(third);
    drop(_second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.metric("tether_pending_logins").await != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "closed connections leave the count");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.metric(r#"tether_admission_total{result="refused_pending_logins"}"#).await >= 1.0);
    assert!(server.metric(r#"tether_admission_total{result="retry"}"#).await >= 1.0, "validated under load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_whose_logins_keep_failing_is_backed_off() {
    let server = Server::start(&["--login-failures-per-ip", "3"]);
    for i in 0..3 {
        let mut raw = Raw::connect(&server).await;
        let t = if i == 0 {
            tether_proto::Credential::Ticket("tk_nope".into())
        } else {
            tether_proto::Credential::Token("bad".into())
        };
        raw.write(&Raw::login_frame(t, "x")).await;
        raw.expect(10, |f| matches!(f, Frame::LoginError(_)).then_some(())).await;
    }
    assert!(refused(Raw::try_connect(&server).await), "backed off after 3 failures");
    assert_eq!(server.metric(r#"tether_admission_total{result="refused_login_backoff"}"#).await, 1.0);
    // A ticket of the wrong shape never reached the store.
    assert_eq!(server.metric(r#"tether_store_latency_seconds_count{op="consume_ticket"}"#).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_opening_connections_too_fast_is_refused() {
    let server = Server::start(&["--handshakes-per-ip", "1", "--handshake-burst", "3"]);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Raw::connect(&server).await);
    }
    assert!(refused(Raw::try_connect(&server).await), "the fourth within a second is refused");
    assert_eq!(server.metric(r#"tether_admission_total{result="refused_handshake_rate"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_ok_carries_the_room_heads_the_backlog_ends_at() {
    let server = Server::start(&[]);
    let (mut bob, ok) = Raw::login(&server, "bob", "bob-raw", None, None).await;
    assert_eq!(ok.room_heads, Some(BTreeMap::new()), "in no room yet");
    bob.join("quiet").await;
    bob.join("busy").await;
    leave(&server, bob, "bob").await;
    for i in 0..3 {
        push_room(&server, "busy", &format!("b{i}")).await;
    }
    let (mut bob, ok) = Raw::login(&server, "bob", "bob-raw", None, None).await;
    let heads = ok.room_heads.expect("room heads");
    assert_eq!(heads.get("busy"), Some(&3));
    assert_eq!(heads.get("quiet"), Some(&0));
    // The backlog ends exactly at the announced head.
    let mut last = 0;
    while last < heads["busy"] {
        last = bob
            .expect_pinging(10, |f| match f {
                Frame::Deliver(d) if d.to.id == "busy" => Some(d.seq),
                _ => None,
            })
            .await;
    }
    assert_eq!(last, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_audience_and_issuer_are_required_at_login() {
    let server = Server::start(&["--jwt-audience", "chat,chat-beta", "--jwt-issuer", "https://auth.example"]);
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .expect("jwt")
    };
    let exp = now_s() + 600;
    let server = &server;
    let login = |t: String| async move {
        let mut raw = Raw::connect(server).await;
        raw.write(&Raw::login_frame(tether_proto::Credential::Token(t), "aud-raw")).await;
        raw.read().await
    };
    let good = serde_json::json!({ "sub": "al", "exp": exp, "aud": "chat-beta", "iss": "https://auth.example" });
    assert!(matches!(login(sign(good.clone())).await, Some(Frame::LoginOk(_))));
    for (claims, want) in [
        (serde_json::json!({ "sub": "al", "exp": exp, "iss": "https://auth.example" }), "required claim `aud` missing"),
        (
            serde_json::json!({ "sub": "al", "exp": exp, "aud": "x", "iss": "https://auth.example" }),
            "audience (aud) not accepted",
        ),
        (serde_json::json!({ "sub": "al", "exp": exp, "aud": "chat" }), "required claim `iss` missing"),
        (
            serde_json::json!({ "sub": "al", "exp": exp, "aud": "chat", "iss": "https://evil" }),
            "issuer (iss) not accepted",
        ),
        (
            serde_json::json!({ "sub": "al", "exp": exp, "nbf": exp, "aud": "chat", "iss": "https://auth.example" }),
            "token not valid yet (nbf is in the future)",
        ),
    ] {
        match login(sign(claims)).await {
            Some(Frame::LoginError(e)) => {
                assert_eq!(e.code, tether_proto::ErrorCode::InvalidToken);
                assert_eq!(e.message, format!("invalid token: {want}"));
            }
            other => panic!("{want}: {other:?}"),
        }
    }
}
