//! Bad input over real QUIC: each case gets its typed error or close reason, and a healthy
//! conversation running beside it, and the stored messages, are untouched.

mod common;

use common::*;
use tether_proto::{Address, CloseCode, Credential, ErrorCode, ErrorFrame, Frame, LoginError, Ping};
use tether_sdk::Client;

/// A conversation that must keep working while the bad input hits the same node.
struct Bystanders {
    alice: Client,
    bob_events: tether_sdk::Events,
    sent: usize,
}

impl Bystanders {
    async fn start(server: &Server) -> Bystanders {
        let (alice, _) = server.client("alice", "phone", "alice-phone").await;
        let (_bob, bob_events) = server.client("bob", "phone", "bob-phone").await;
        std::mem::forget(_bob);
        let mut b = Bystanders { alice, bob_events, sent: 0 };
        b.exchange().await;
        b
    }

    /// One more message from alice to bob, delivered in order.
    async fn exchange(&mut self) {
        self.sent += 1;
        self.alice.send_text("bob", &format!("still fine {}", self.sent)).await.expect("ack");
        let m = next_message(&mut self.bob_events, 10).await;
        assert_eq!(m.seq, self.sent as u64);
        assert_eq!(m.payload, format!("still fine {}", self.sent).into_bytes());
    }
}

fn fatal_error(f: Option<Frame>) -> ErrorFrame {
    match f {
        Some(Frame::Error(e)) => {
            assert!(e.fatal, "{e:?}");
            e
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}

fn login_error(f: Option<Frame>) -> LoginError {
    match f {
        Some(Frame::LoginError(e)) => e,
        other => panic!("expected login_error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_harms_no_one_else() {
    let server = Server::start(&["--login-timeout", "1s", "--max-frame", "4096"]);
    let mut by = Bystanders::start(&server).await;

    // Oversized frame: refused from the length prefix alone.
    let mut raw = Raw::connect(&server).await;
    raw.write_raw(&(10_000_000u32).to_be_bytes()).await;
    assert_eq!(fatal_error(raw.read().await).code, ErrorCode::FrameTooLarge);
    assert_eq!(raw.closed().await, Some(CloseCode::FrameTooLarge));
    by.exchange().await;

    // Garbage bytes with a plausible length.
    let mut raw = Raw::connect(&server).await;
    raw.write_raw(&[0, 0, 0, 6, 0xc1, 0xff, 0x00, 0x13, 0x37, 0x42]).await;
    assert_eq!(fatal_error(raw.read().await).code, ErrorCode::BadFrame);
    assert_eq!(raw.closed().await, Some(CloseCode::ProtocolError));
    by.exchange().await;

    // A send before login.
    let mut raw = Raw::connect(&server).await;
    raw.write(&Frame::Send(tether_proto::Send {
        client_msg_id: "x".into(),
        to: Address::user("bob"),
        content_type: "text/plain".into(),
        payload: b"sneaky".to_vec(),
    }))
    .await;
    assert_eq!(fatal_error(raw.read().await).code, ErrorCode::NotLoggedIn);
    assert_eq!(raw.closed().await, Some(CloseCode::ProtocolError));
    by.exchange().await;

    // No login within the login timeout.
    let mut raw = Raw::connect(&server).await;
    raw.write(&Frame::Ping(Ping { nonce: 5 })).await; // opens the stream; a ping is answered
    assert!(matches!(raw.read().await, Some(Frame::Pong(p)) if p.nonce == 5));
    assert_eq!(fatal_error(raw.read().await).code, ErrorCode::NotLoggedIn);
    assert_eq!(raw.closed().await, Some(CloseCode::LoginTimeout));
    by.exchange().await;

    // Bad signature.
    let mut raw = Raw::connect(&server).await;
    raw.write(&Raw::login_frame(Credential::Token(token_signed("mallory", 60, "not-the-secret")), "m1")).await;
    assert_eq!(login_error(raw.read().await).code, ErrorCode::BadSignature);
    assert_eq!(raw.closed().await, Some(CloseCode::AuthFailed));

    // Expired token.
    let mut raw = Raw::connect(&server).await;
    raw.write(&Raw::login_frame(Credential::Token(token("alice", -120)), "a2")).await;
    assert_eq!(login_error(raw.read().await).code, ErrorCode::TokenExpired);
    assert_eq!(raw.closed().await, Some(CloseCode::AuthFailed));

    // Not a JWT at all.
    let mut raw = Raw::connect(&server).await;
    raw.write(&Raw::login_frame(Credential::Token("garbage".into()), "a3")).await;
    assert_eq!(login_error(raw.read().await).code, ErrorCode::InvalidToken);
    by.exchange().await;

    // A ticket works once; the second use is refused.
    let (status, t) = server.admin("POST", "/v1/tickets", Some(serde_json::json!({"user": "frank"}))).await;
    assert_eq!(status, 200);
    let ticket = t["ticket"].as_str().expect("ticket").to_string();
    let mut raw = Raw::connect(&server).await;
    raw.write(&Raw::login_frame(Credential::Ticket(ticket.clone()), "f1")).await;
    match raw.read().await {
        Some(Frame::LoginOk(ok)) => assert_eq!(ok.user, "frank"),
        other => panic!("{other:?}"),
    }
    let mut again = Raw::connect(&server).await;
    again.write(&Raw::login_frame(Credential::Ticket(ticket), "f2")).await;
    assert_eq!(login_error(again.read().await).code, ErrorCode::TicketInvalid);
    assert_eq!(again.closed().await, Some(CloseCode::AuthFailed));

    // An expired ticket.
    let (_, t) = server.admin("POST", "/v1/tickets", Some(serde_json::json!({"user": "frank", "ttl_secs": 0}))).await;
    let mut raw2 = Raw::connect(&server).await;
    raw2.write(&Raw::login_frame(Credential::Ticket(t["ticket"].as_str().expect("t").into()), "f3")).await;
    assert_eq!(login_error(raw2.read().await).code, ErrorCode::TicketExpired);

    // On the logged-in raw session: an unknown frame type is skipped with a non-fatal error,
    // and the session goes on.
    #[derive(serde::Serialize)]
    struct Future<'a> {
        #[serde(rename = "type")]
        t: &'a str,
        power: u32,
    }
    let body = rmp_serde::to_vec_named(&Future { t: "teleport", power: 9 }).expect("encode");
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    raw.write_raw(&framed).await;
    match raw.read().await {
        Some(Frame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::UnknownFrameType);
            assert!(!e.fatal);
        }
        other => panic!("{other:?}"),
    }
    // A server-to-client frame from a client is refused, not fatal.
    raw.write(&Frame::Pong(tether_proto::Pong { nonce: 1 })).await;
    assert!(matches!(raw.read().await, Some(Frame::Error(e)) if e.code == ErrorCode::UnexpectedFrame && !e.fatal));
    // A send to an empty recipient gets a send_error and stores nothing.
    raw.write(&Frame::Send(tether_proto::Send {
        client_msg_id: "bad-to".into(),
        to: Address::user(""),
        content_type: "text/plain".into(),
        payload: vec![],
    }))
    .await;
    assert!(matches!(raw.read().await, Some(Frame::SendError(e)) if e.code == ErrorCode::InvalidField));
    raw.write(&Frame::Ping(Ping { nonce: 77 })).await;
    assert!(matches!(raw.read().await, Some(Frame::Pong(p)) if p.nonce == 77));

    // Everything stored is intact: exactly the bystanders' messages, and nothing from the
    // refused sessions.
    by.exchange().await;
    let (_, metrics) = (0, server.metric("tether_messages_in_total").await);
    assert_eq!(metrics, by.sent as f64);
    assert_eq!(server.metric("tether_bad_frames_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_with_a_reason() {
    let server = Server::start(&["--idle-timeout", "1s"]);
    let mut raw = Raw::connect(&server).await;
    raw.write(&Raw::login_frame(Credential::Token(token("ivy", 60)), "ivy-raw")).await;
    assert!(matches!(raw.read().await, Some(Frame::LoginOk(_))));
    // Say nothing: the server gives up after the idle timeout.
    assert_eq!(fatal_error(raw.read().await).code, ErrorCode::Unavailable);
    assert_eq!(raw.closed().await, Some(CloseCode::IdleTimeout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_the_token_and_pushes_and_kicks() {
    let server = Server::start(&[]);
    let (code, _) = admin_call(server.admin, "POST", "/v1/tickets", Some(serde_json::json!({"user": "x"})), None).await;
    assert_eq!(code, 401);
    let (code, _) =
        admin_call(server.admin, "POST", "/v1/tickets", Some(serde_json::json!({"user": "x"})), Some("wrong")).await;
    assert_eq!(code, 401);
    assert_eq!(http(server.admin, "GET", "/healthz", None, None).await.0, 200);
    assert_eq!(http(server.admin, "GET", "/readyz", None, None).await.0, 200);

    let (bob, mut be) = server.client("bob", "phone", "bob-phone").await;
    let (code, r) = server
        .admin("POST", "/v1/messages", Some(serde_json::json!({"to": "bob", "from": "backend", "text": "hi from the app", "client_msg_id": "promo-1"})))
        .await;
    assert_eq!(code, 200, "{r}");
    let m = next_message(&mut be, 10).await;
    assert_eq!(
        (m.from.as_str(), m.payload.as_slice(), m.from_device.as_str()),
        ("backend", &b"hi from the app"[..], "")
    );
    // The same idempotency key again: stored once.
    let (_, r2) = server
        .admin("POST", "/v1/messages", Some(serde_json::json!({"to": "bob", "from": "backend", "text": "hi from the app", "client_msg_id": "promo-1"})))
        .await;
    assert_eq!(r2["duplicate"], true);
    assert_eq!(r2["msg_id"], r["msg_id"]);
    let (code, _) = server.admin("POST", "/v1/messages", Some(serde_json::json!({"to": "", "text": "x"}))).await;
    assert_eq!(code, 400);

    let (_, k) = server.admin("POST", "/v1/users/bob/kick", Some(serde_json::json!({}))).await;
    assert_eq!(k["kicked"], 1);
    let reason = wait_event(&mut be, 10, |e| match e {
        tether_sdk::Event::Kicked(k) => Some(k.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, tether_sdk::KickReason::Admin);
    bob.wait_for_state(|s| matches!(s, tether_sdk::ConnectionState::Kicked { .. })).await.expect("kicked state");
}
