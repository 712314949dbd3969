//! Connect, login, backoff, auth failure, kick, close, resume tokens.

use tether_proto::{ErrorCode, KickReason, Kicked, LoginError};

use super::*;
use crate::ResumeToken;

fn login_error(code: ErrorCode) -> Frame {
    Frame::LoginError(LoginError { code, message: format!("{code:?}") })
}

/// The ceiling of backoff attempt `n` with the default config.
fn ceiling(n: u32) -> Duration {
    let d = ms(500).saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX));
    d.min(secs(30))
}

#[test]
fn start_connect_login() {
    let mut h = H::new();
    assert_eq!(h.s.state(), &SessionState::Idle);
    assert_eq!(h.s.poll_timeout(), None);
    h.start();
    assert_eq!(h.take_actions(), [Action::Connect]);
    assert_eq!(h.states(), [ConnectionState::Connecting]);
    h.clear();

    h.connected();
    assert_eq!(h.s.state(), &SessionState::LoggingIn);
    let login = h.login_frame();
    assert_eq!(login.version, PROTOCOL_VERSION);
    assert_eq!(login.credential, Credential::Token("jwt".into()));
    assert_eq!(login.device_type, "phone");
    assert_eq!(login.device_id, DEVICE);
    assert_eq!(login.inbox_cursor, Some(0));
    assert!(login.client.as_deref().unwrap().starts_with("tether-sdk/"));
    assert_eq!(h.take_tx().len(), 1);
    h.clear();

    h.frame(Frame::LoginOk(login_ok(0)));
    assert_eq!(h.s.state(), &SessionState::Online);
    assert_eq!(h.s.user(), Some(USER));
    assert_eq!(
        h.take_events(),
        [
            Event::State(ConnectionState::Online),
            Event::LoggedIn { user: USER.into(), session_id: login_ok(0).session_id }
        ]
    );
    // start() while online changes nothing.
    h.start();
    assert!(h.take_actions().is_empty());
}

#[test]
fn backoff_schedule_has_equal_jitter_and_resets_after_login() {
    for seed in 0..200 {
        let mut h = H::with(config(), Credential::Token("jwt".into()), PersistedState::default(), seed);
        h.start();
        for n in 0..20u32 {
            h.clear();
            let failed_at = h.now;
            h.connect_failed();
            let SessionState::Backoff { attempt, retry_at, .. } = h.s.state().clone() else {
                panic!("not backing off: {:?}", h.s.state())
            };
            assert_eq!(attempt, n);
            let wait = retry_at - failed_at;
            let d = ceiling(n);
            assert!(wait >= d / 2 && wait <= d, "seed {seed} attempt {n}: wait {wait:?} outside [{:?}, {d:?}]", d / 2);
            assert_eq!(h.s.poll_timeout(), Some(retry_at));
            // Nothing happens before the deadline, even if the driver wakes up early.
            h.run_until(retry_at - Duration::from_nanos(1));
            assert_eq!(h.connects(), 0);
            h.run_until(retry_at);
            assert_eq!(h.take_actions(), [Action::Connect]);
            assert_eq!(h.s.state(), &SessionState::Connecting);
        }
        // A successful login resets the schedule.
        h.connected();
        h.frame(Frame::LoginOk(login_ok(0)));
        let lost_at = h.now;
        h.disconnected(None);
        let SessionState::Backoff { attempt, retry_at, .. } = h.s.state().clone() else { panic!("not backing off") };
        assert_eq!(attempt, 0);
        assert!(retry_at - lost_at >= ms(250) && retry_at - lost_at <= ms(500));
    }
}

#[test]
fn reconnect_storm_over_hours_then_recovery() {
    let mut h = H::with(config(), Credential::Token("jwt".into()), PersistedState::default(), 77);
    h.online(0);
    let first = h.send("before the outage");
    h.frame(Frame::SendAck(send_ack(&first, 1)));
    h.clear();

    // The server goes away for three hours; every attempt fails.
    let outage_start = h.now;
    h.disconnected(Some(CloseCode::ServerShutdown));
    let outage_end = outage_start + secs(3 * 3600);
    let mut queued = vec![];
    let mut attempts_at = vec![];
    while h.now < outage_end {
        let Some(deadline) = h.s.poll_timeout() else { panic!("no timer while backing off") };
        // Now and then the app queues a message while offline.
        if attempts_at.len() % 50 == 0 && queued.len() < 10 {
            queued.push(h.send(&format!("offline {}", queued.len())));
        }
        h.run_until(deadline);
        assert_eq!(h.take_actions(), [Action::Connect]);
        attempts_at.push(h.now);
        h.connect_failed();
    }
    assert!(h.tx.iter().all(|f| !matches!(f, Frame::Send(_))));
    // Gaps between attempts follow the schedule and stay within [15 s, 30 s] once capped.
    let mut prev = outage_start;
    for (n, at) in attempts_at.iter().enumerate() {
        let gap = *at - prev;
        let d = ceiling(n as u32);
        assert!(gap >= d / 2 && gap <= d, "attempt {n}: {gap:?}");
        prev = *at;
    }
    let n = attempts_at.len();
    assert!((360..=730).contains(&n), "{n} attempts in 3 h is outside [10800/30, 10800/15 + warm-up]");

    // The server is back: the next attempt succeeds and everything queued goes out, in order.
    let deadline = h.s.poll_timeout().unwrap();
    h.run_until(deadline);
    assert_eq!(h.take_actions(), [Action::Connect]);
    h.connected();
    h.frame(Frame::LoginOk(login_ok(1)));
    assert_eq!(h.sends(), queued);
    assert_eq!(h.s.outbox_len(), queued.len());
    // And the backoff starts from scratch again.
    let lost_at = h.now;
    h.disconnected(None);
    let SessionState::Backoff { attempt, retry_at, .. } = h.s.state().clone() else { panic!() };
    assert_eq!(attempt, 0);
    assert!(retry_at - lost_at <= ms(500));
}

#[test]
fn login_timeout_disconnects_and_backs_off() {
    let mut h = H::new();
    h.start();
    h.connected();
    h.clear();
    assert_eq!(h.s.poll_timeout(), Some(h.now + secs(10)));
    h.advance(secs(10) - ms(1));
    assert!(h.take_actions().is_empty());
    assert_eq!(h.s.state(), &SessionState::LoggingIn);
    h.advance(ms(1));
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::ProtocolError }]);
    assert!(matches!(h.s.state(), SessionState::Backoff { attempt: 0, .. }));
    // A late report of the abandoned connection's end is ignored.
    h.disconnected(None);
    assert!(matches!(h.s.state(), SessionState::Backoff { attempt: 0, .. }));
}

#[test]
fn auth_failure_stops_reconnecting_until_started_again() {
    for code in [
        ErrorCode::InvalidToken,
        ErrorCode::BadSignature,
        ErrorCode::TokenExpired,
        ErrorCode::TicketInvalid,
        ErrorCode::TicketExpired,
        ErrorCode::UnsupportedVersion,
    ] {
        let mut h = H::new();
        h.start();
        h.connected();
        h.clear();
        h.frame(login_error(code));
        assert_eq!(h.s.state(), &SessionState::AuthFailed(code));
        assert!(h.take_events().contains(&Event::LoginFailed { code, message: format!("{code:?}") }));
        assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::Normal }]);
        assert_eq!(h.s.poll_timeout(), None);
        h.disconnected(Some(CloseCode::AuthFailed));
        h.advance(secs(24 * 3600));
        assert_eq!(h.connects(), 0, "{code:?}: reconnected after auth failure");
        assert_eq!(h.s.state(), &SessionState::AuthFailed(code));

        // A new credential and start() try again.
        h.s.set_credential(Credential::Token("fresh".into()));
        h.start();
        assert_eq!(h.take_actions(), [Action::Connect]);
        h.connected();
        assert_eq!(h.login_frame().credential, Credential::Token("fresh".into()));
    }
}

#[test]
fn transient_login_errors_back_off() {
    for code in [ErrorCode::Unavailable, ErrorCode::Internal, ErrorCode::Unknown] {
        let mut h = H::new();
        h.start();
        h.connected();
        h.clear();
        h.frame(login_error(code));
        assert!(matches!(h.s.state(), SessionState::Backoff { attempt: 0, .. }));
        assert!(!h.events.iter().any(|e| matches!(e, Event::LoginFailed { .. })));
        h.advance(secs(1));
        assert_eq!(h.connects(), 1);
    }
}

#[test]
fn kicked_frame_stops_reconnecting_and_keeps_the_outbox() {
    let mut h = H::new();
    h.online(0);
    let id = h.send("pending");
    h.clear();
    let kicked = Kicked { reason: KickReason::Replaced, message: "another phone logged in".into() };
    h.frame(Frame::Kicked(kicked.clone()));
    assert_eq!(h.s.state(), &SessionState::Kicked(KickReason::Replaced));
    assert_eq!(
        h.take_events(),
        [Event::Kicked(kicked.into()), Event::State(ConnectionState::Kicked { reason: KickReason::Replaced.into() })]
    );
    assert!(h.take_actions().is_empty(), "the server closes");
    assert_eq!(h.s.poll_timeout(), None);
    h.disconnected(Some(CloseCode::Replaced));
    h.advance(secs(3600));
    assert_eq!(h.connects(), 0);
    assert_eq!(h.s.outbox_len(), 1);
    assert_eq!(h.durable.outbox.len(), 1);

    // The app decides to take over again.
    h.start();
    assert_eq!(h.take_actions(), [Action::Connect]);
    h.connected();
    h.frame(Frame::LoginOk(login_ok(0)));
    assert_eq!(h.sends(), [id]);
}

#[test]
fn replaced_or_kicked_close_without_frame_stops_reconnecting() {
    for (code, reason) in [(CloseCode::Replaced, KickReason::Replaced), (CloseCode::Kicked, KickReason::Admin)] {
        let mut h = H::new();
        h.online(0);
        h.clear();
        h.disconnected(Some(code));
        assert_eq!(h.s.state(), &SessionState::Kicked(reason));
        assert!(h.events.iter().any(|e| matches!(e, Event::Kicked(k) if k.reason == reason.into())));
        h.advance(secs(3600));
        assert_eq!(h.connects(), 0);
    }
    // Other close codes reconnect.
    for code in [None, Some(CloseCode::ServerShutdown), Some(CloseCode::IdleTimeout), Some(CloseCode::Superseded)] {
        let mut h = H::new();
        h.online(0);
        h.clear();
        h.disconnected(code);
        h.advance(secs(1));
        assert_eq!(h.connects(), 1, "{code:?}");
    }
}

#[test]
fn close_logs_out_and_never_reconnects() {
    let mut h = H::new();
    h.online(0);
    h.frame(Frame::Deliver(deliver(1)));
    h.clear();
    h.s.close(h.now);
    h.drain();
    assert_eq!(
        h.take_tx(),
        [Frame::Ack(tether_proto::Ack { inbox: 1, rooms: None }), Frame::Logout(tether_proto::Logout {})]
    );
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::Normal }]);
    assert_eq!(h.s.state(), &SessionState::LoggedOut);
    h.disconnected(Some(CloseCode::Normal));
    h.advance(secs(3600));
    assert!(h.actions.is_empty() && h.tx.is_empty());
    assert_eq!(h.s.poll_timeout(), None);

    // Closing while connecting abandons the attempt; closing in backoff just stops.
    let mut h = H::new();
    h.start();
    h.clear();
    h.s.close(h.now);
    h.drain();
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::Normal }]);
    h.connected();
    assert_eq!(h.s.state(), &SessionState::LoggedOut);
    let mut h = H::new();
    h.start();
    h.connect_failed();
    h.clear();
    h.s.close(h.now);
    h.drain();
    assert!(h.take_actions().is_empty());
    h.advance(secs(3600));
    assert_eq!(h.connects(), 0);
}

#[test]
fn stale_transport_reports_are_ignored() {
    let mut h = H::new();
    h.connected();
    h.connect_failed();
    h.disconnected(None);
    h.frame(Frame::LoginOk(login_ok(0)));
    assert_eq!(h.s.state(), &SessionState::Idle);
    assert!(h.tx.is_empty() && h.actions.is_empty() && h.events.is_empty());

    h.online(0);
    h.clear();
    h.connected();
    h.connect_failed();
    h.frame(Frame::LoginOk(login_ok(5)));
    assert_eq!(h.s.state(), &SessionState::Online);
    assert!(h.tx.is_empty() && h.events.is_empty());
}

#[test]
fn disconnect_while_logging_in_backs_off() {
    let mut h = H::new();
    h.start();
    h.connected();
    h.clear();
    h.disconnected(Some(CloseCode::LoginTimeout));
    assert!(matches!(h.s.state(), SessionState::Backoff { attempt: 0, .. }));
}

fn ticket_session() -> H {
    let mut h = H::with(config(), Credential::Ticket("ticket-1".into()), PersistedState::default(), 5);
    h.start();
    h.connected();
    assert_eq!(h.login_frame().credential, Credential::Ticket("ticket-1".into()));
    let mut ok = login_ok(0);
    ok.resume_token = Some("resume-1".into());
    ok.resume_expires_ms = Some(ok.server_time_ms + 86_400_000);
    h.frame(Frame::LoginOk(ok));
    h
}

#[test]
fn resume_token_is_used_to_reconnect_after_a_ticket_login() {
    let mut h = ticket_session();
    let token = ResumeToken { token: "resume-1".into(), expires_ms: 1_700_000_000_000 + 86_400_000 };
    assert!(h.persists.contains(&PersistOp::Resume(Some(token.clone()))));
    assert_eq!(h.durable.resume, Some(token.clone()));
    h.clear();
    h.disconnected(None);
    h.advance(secs(1));
    h.connected();
    assert_eq!(h.login_frame().credential, Credential::Resume("resume-1".into()));

    // After a restart the persisted token is used as well.
    let mut h2 = H::with(config(), Credential::Ticket("ticket-1".into()), h.durable.clone(), 6);
    h2.start();
    h2.connected();
    assert_eq!(h2.login_frame().credential, Credential::Resume("resume-1".into()));
}

#[test]
fn refused_resume_token_is_dropped_and_the_app_credential_retried_at_once() {
    let mut h = ticket_session();
    h.disconnected(None);
    h.advance(secs(1));
    h.connected();
    h.clear();
    h.frame(login_error(ErrorCode::InvalidToken));
    assert_eq!(h.take_persists(), [PersistOp::Resume(None)]);
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::Normal }, Action::Connect]);
    assert_eq!(h.s.state(), &SessionState::Connecting);
    assert!(!h.events.iter().any(|e| matches!(e, Event::LoginFailed { .. })));
    h.connected();
    assert_eq!(h.login_frame().credential, Credential::Ticket("ticket-1".into()));
    // The (used) ticket fails too: now it is final.
    h.frame(login_error(ErrorCode::TicketInvalid));
    assert_eq!(h.s.state(), &SessionState::AuthFailed(ErrorCode::TicketInvalid));
}

#[test]
fn expired_resume_token_is_not_presented() {
    let mut h = ticket_session();
    h.disconnected(None);
    h.clear();
    // A day and a bit later by the wall clock.
    let later = h.now + secs(90_000);
    h.run_until(later);
    h.s.set_wall_clock(h.now, 1_700_000_000_000 + 90_000_000);
    assert_eq!(h.s.state(), &SessionState::Connecting);
    h.connected();
    assert_eq!(h.login_frame().credential, Credential::Ticket("ticket-1".into()));
    assert!(h.persists.contains(&PersistOp::Resume(None)));
}

#[test]
fn expired_jwt_falls_back_to_the_resume_token() {
    let mut h = H::new();
    h.start();
    h.connected();
    let mut ok = login_ok(0);
    ok.resume_token = Some("resume-9".into());
    h.frame(Frame::LoginOk(ok));
    h.disconnected(None);
    h.advance(secs(1));
    h.connected();
    assert_eq!(h.login_frame().credential, Credential::Token("jwt".into()));
    h.clear();
    h.frame(login_error(ErrorCode::TokenExpired));
    assert_eq!(h.s.state(), &SessionState::Connecting);
    h.connected();
    assert_eq!(h.login_frame().credential, Credential::Resume("resume-9".into()));
    h.frame(Frame::LoginOk(login_ok(0)));
    // Later reconnects keep using it until the app sets a new credential.
    h.disconnected(None);
    h.advance(secs(1));
    h.connected();
    assert_eq!(h.login_frame().credential, Credential::Resume("resume-9".into()));
    h.s.set_credential(Credential::Token("jwt-2".into()));
    h.disconnected(None);
    h.advance(secs(2));
    h.connected();
    assert_eq!(h.login_frame().credential, Credential::Token("jwt-2".into()));
}

#[test]
fn reconnect_now_skips_the_wait() {
    let mut h = H::new();
    h.start();
    h.connect_failed();
    h.clear();
    h.s.reconnect_now(h.now);
    h.drain();
    assert_eq!(h.take_actions(), [Action::Connect]);
    // Not in other states.
    h.s.reconnect_now(h.now);
    h.drain();
    assert!(h.take_actions().is_empty());
}

#[test]
fn pause_closes_politely_keeps_the_outbox_and_resume_reconnects_at_once() {
    let mut h = H::new();
    h.online(0);
    h.frame(Frame::Deliver(deliver(1)));
    h.clear();
    h.s.pause(h.now);
    h.drain();
    // The delivered message is acked, then logout, then the connection closes.
    assert!(matches!(h.tx.as_slice(), [Frame::Ack(a), Frame::Logout(_)] if a.inbox == 1), "{:?}", h.tx);
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::Normal }]);
    assert_eq!(h.states(), [ConnectionState::Paused]);
    assert_eq!(h.s.poll_timeout(), None, "no heartbeat, no reconnect while paused");
    h.clear();

    // Hours in the background: nothing happens; a send is queued and persisted, not sent.
    h.advance(secs(3 * 3600));
    let id = h.send("written while paused");
    assert!(h.tx.is_empty() && h.actions.is_empty());
    assert!(h.persists.iter().any(|p| matches!(p, PersistOp::OutboxAdd(e) if e.client_msg_id == id)));
    assert_eq!(h.s.outbox_len(), 1);
    // The transport's late report of the close changes nothing.
    h.disconnected(Some(CloseCode::Normal));
    assert_eq!(h.s.state(), &SessionState::Paused);
    h.clear();

    // Back in the foreground: connect at once, log in from the cursor, send the outbox.
    h.s.resume(h.now);
    h.drain();
    assert_eq!(h.take_actions(), [Action::Connect]);
    h.connected();
    assert_eq!(h.login_frame().inbox_cursor, Some(1));
    h.frame(Frame::LoginOk(login_ok(1)));
    assert_eq!(h.sends(), [id]);
}

#[test]
fn pause_from_any_connecting_state_and_resume_only_from_paused() {
    // Backoff: the wait is dropped.
    let mut h = H::new();
    h.start();
    h.connect_failed();
    assert!(matches!(h.s.state(), SessionState::Backoff { .. }));
    h.s.pause(h.now);
    h.drain();
    assert_eq!(h.s.state(), &SessionState::Paused);
    h.advance(secs(60));
    h.run_until(h.now);
    assert_eq!(h.connects(), 1, "no reconnect while paused");
    // Connecting: the attempt is dropped; a late `connected` is ignored.
    let mut h = H::new();
    h.start();
    h.clear();
    h.s.pause(h.now);
    h.drain();
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::Normal }]);
    h.connected();
    assert_eq!(h.s.state(), &SessionState::Paused);
    assert!(h.tx.is_empty(), "no login on a connection that came up after the pause");
    // Resume is ignored unless paused; pause is ignored after a close.
    let mut h = H::new();
    h.online(0);
    h.clear();
    h.s.resume(h.now);
    h.drain();
    assert!(h.actions.is_empty());
    h.s.close(h.now);
    h.s.pause(h.now);
    h.drain();
    assert_eq!(h.s.state(), &SessionState::LoggedOut);
}
