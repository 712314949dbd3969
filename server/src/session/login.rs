//! Login: the first frame of a session, checked within the login timeout, and the session it
//! establishes (registered with the hub, its heads and cursors read).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;
use tether_proto::{
    negotiate_version, CloseCode, Credential, Decoded, ErrorCode, Frame, Login, LoginError, LoginOk, Pong,
};
use tokio::time::Instant;
use tracing::{info, warn};

use super::io::{ByteSink, ByteSource, FrameReader, FrameWriter, ReadError};
use super::{bad_frame, error_frame, session_event, RoomCursor, Session, MAX_ID_LEN};
use crate::admission::AdmissionGuard;
use crate::auth::{ticket_hash, AuthError};
use crate::hub::{session_channel, Peer, SessionHandle};
use crate::limits::{InboxOrder, TokenBucket};
use crate::store::TicketUse;
use crate::Ctx;

/// The session's stream halves and the established session.
type Established<R, W> = (FrameReader<R>, FrameWriter<W>, Box<Session>);

/// Waits for a valid login until `login_deadline` and establishes the session.
pub(super) async fn establish<R: ByteSource, W: ByteSink>(
    mut reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    peer: Arc<dyn Peer>,
    ctx: &Arc<Ctx>,
    admission: &AdmissionGuard,
    login_deadline: Instant,
) -> Result<Established<R, W>, CloseCode> {
    let login = loop {
        let next = match tokio::time::timeout_at(login_deadline, reader.next()).await {
            Err(_) => {
                admission.login_failed(std::time::Instant::now());
                writer.push(&error_frame(ErrorCode::NotLoggedIn, "no login within the login timeout", true));
                writer.linger().await;
                return Err(CloseCode::LoginTimeout);
            }
            Ok(n) => n,
        };
        match next {
            Err(ReadError::Closed) => return Err(CloseCode::Normal),
            Err(ReadError::Decode(e)) => {
                ctx.metrics.bad_frames.inc();
                let (code, close) = bad_frame(&e);
                writer.push(&error_frame(code, e.to_string(), true));
                writer.linger().await;
                return Err(close);
            }
            Ok(Decoded::Unknown { frame_type }) => {
                writer.push(&error_frame(
                    ErrorCode::UnknownFrameType,
                    format!("unknown frame type `{frame_type}` skipped"),
                    false,
                ));
                writer.flush().await;
            }
            Ok(Decoded::Frame(Frame::Login(l))) => break l,
            Ok(Decoded::Frame(Frame::Ping(p))) => {
                writer.push(&Frame::Pong(Pong { nonce: p.nonce }));
                writer.flush().await;
            }
            Ok(Decoded::Frame(f)) => {
                writer.push(&error_frame(ErrorCode::NotLoggedIn, format!("`{}` before `login`", f.type_name()), true));
                writer.linger().await;
                return Err(CloseCode::ProtocolError);
            }
        }
    };

    // Boxed: a connection waiting for its login should not carry the login check's state.
    match Box::pin(login_session(peer, ctx, &login)).await {
        Ok((session, ok)) => {
            writer.push(&Frame::LoginOk(ok));
            reader.shrink();
            Ok((reader, writer, session))
        }
        Err((code, message, label)) => {
            ctx.metrics.login(label);
            info!(?code, %message, "login refused");
            // The client's fault (not the store's) counts against its address.
            if code != ErrorCode::Unavailable {
                if let Some(backoff) = admission.login_failed(std::time::Instant::now()) {
                    info!(?backoff, "address backed off after failed logins");
                }
            }
            writer.push(&Frame::LoginError(LoginError { code, message }));
            writer.linger().await;
            Err(CloseCode::AuthFailed)
        }
    }
}

/// A refused login: the wire code, the message, and the metric label.
type LoginFailure = (ErrorCode, String, &'static str);

fn check_id(what: &str, v: &str) -> Result<(), LoginFailure> {
    if v.is_empty() || v.len() > MAX_ID_LEN {
        Err((ErrorCode::InvalidField, format!("{what} must be 1..={MAX_ID_LEN} bytes"), "invalid_field"))
    } else {
        Ok(())
    }
}

async fn login_session(
    peer: Arc<dyn Peer>,
    ctx: &Arc<Ctx>,
    login: &Login,
) -> Result<(Box<Session>, LoginOk), LoginFailure> {
    let Some(version) = negotiate_version(login.version) else {
        return Err((
            ErrorCode::UnsupportedVersion,
            format!("version {} is not supported (min {})", login.version, tether_proto::MIN_PROTOCOL_VERSION),
            "unsupported_version",
        ));
    };
    check_id("device_type", &login.device_type)?;
    check_id("device_id", &login.device_id)?;
    let auth_fail = |e: AuthError| (e.code(), e.to_string(), e.metric_label());
    let user = match &login.credential {
        Credential::Token(t) => ctx.auth.verify_jwt(t).map_err(auth_fail)?,
        Credential::Resume(t) => ctx.auth.verify_resume(t, &login.device_id, ctx.clock.now_ms()).map_err(auth_fail)?,
        Credential::Ticket(t) if !crate::auth::is_ticket_shaped(t) => return Err(auth_fail(AuthError::TicketInvalid)),
        Credential::Ticket(t) => {
            let started = Instant::now();
            let r = ctx.store.consume_ticket(&ticket_hash(t), ctx.clock.now_ms()).await;
            ctx.metrics.store_op("consume_ticket", started.elapsed().as_secs_f64());
            match r.map_err(|e| auth_fail(AuthError::Store(e)))? {
                TicketUse::Valid(u) => u,
                TicketUse::Expired => return Err(auth_fail(AuthError::TicketExpired)),
                TicketUse::Invalid => return Err(auth_fail(AuthError::TicketInvalid)),
            }
        }
    };
    check_id("user", &user)?;
    let metadata = login.metadata.clone().unwrap_or_default();
    check_metadata(&metadata, ctx.cfg.max_metadata)?;
    let unavailable = |e: crate::store::StoreError| (ErrorCode::Unavailable, e.to_string(), "store_error");
    // The device's own cursor, or the one stored for it (which may need repair below).
    let (cursor, stored) = match login.inbox_cursor {
        Some(c) => (c, false),
        None => (ctx.store.device_cursor(&user, &login.device_id).await.map_err(unavailable)?.unwrap_or(0), true),
    };

    let (tx, rx) = session_channel(ctx.cfg.session_queue);
    let handle = Arc::new(SessionHandle {
        id: ctx.next_session.fetch_add(1, Ordering::Relaxed),
        user: user.clone(),
        device_type: login.device_type.clone(),
        device_id: login.device_id.clone(),
        connected_ms: ctx.clock.now_ms(),
        peer,
        metadata,
        tx,
    });
    // Attach before reading the heads: whatever is stored after this point also arrives
    // live, and the order trackers drop what was already sent from the store.
    let first = ctx.hub.attach(&handle).await;
    let heads = async {
        let head = ctx.store.inbox_head(&user).await?;
        // A stored cursor above the head (written before acks were clamped, or a store
        // restored from an older backup) would hide every message up to it: repair it.
        if stored && cursor > head {
            warn!(user = %user, device = %login.device_id, cursor, head, "stored inbox cursor above the head; repaired");
            ctx.metrics.cursors_repaired.inc();
            ctx.store.set_cursor(&user, &login.device_id, None, head).await?;
        }
        let mut rooms = HashMap::new();
        let mut room_backlog = Vec::new();
        // Rooms where this device starts at the head with nothing stored: the start is stored
        // with the next cursor write, so what arrives meanwhile is not skipped next time.
        let mut unstored = HashSet::new();
        let mut room_heads = BTreeMap::new();
        let user_rooms = ctx.store.rooms_of(&user).await?;
        // Room traffic reaches this node before the room heads are read.
        ctx.hub.track_rooms(&user, &user_rooms).await;
        for room in user_rooms {
            let room_head = ctx.store.room_head(&room).await?.unwrap_or(0);
            room_heads.insert(room.clone(), room_head);
            let cursor = match login.room_cursors.as_ref().and_then(|c| c.get(&room)) {
                Some(c) => *c,
                None => {
                    let c = match ctx.store.room_cursor(&user, &login.device_id, &room).await? {
                        Some(c) => c,
                        None => {
                            unstored.insert(Some(room.clone()));
                            room_head
                        }
                    };
                    if c > room_head {
                        warn!(user = %user, room = %room, cursor = c, room_head, "stored room cursor above the head; repaired");
                        ctx.metrics.cursors_repaired.inc();
                        ctx.store.set_cursor(&user, &login.device_id, Some(&room), room_head).await?;
                    }
                    c
                }
            };
            let cursor = cursor.min(room_head);
            if cursor < room_head {
                room_backlog.push((room.clone(), cursor, room_head));
            }
            rooms.insert(room, RoomCursor { order: InboxOrder::after(cursor), acked: cursor });
        }
        Ok::<_, crate::store::StoreError>((head, rooms, room_backlog, unstored, room_heads))
    };
    let (head, rooms, room_backlog, unstored, room_heads) = match heads.await {
        Ok(v) => v,
        Err(e) => {
            ctx.hub.detach(&handle, &[], &HashSet::new()).await;
            return Err(unavailable(e));
        }
    };
    let room_list: Vec<String> = rooms.keys().cloned().collect();
    ctx.hub.started(&handle, &room_list, first).await;
    let mut event = session_event(&handle);
    event["first_session"] = json!(first);
    ctx.webhooks.emit("session.connected", event);
    let resume_expires = ctx.clock.now_ms() + ctx.cfg.resume_ttl.as_millis() as u64;
    let ok = LoginOk {
        version,
        session_id: format!("{}-{}", ctx.cfg.node_id, handle.id),
        user: user.clone(),
        inbox_head: head,
        server_time_ms: ctx.clock.now_ms(),
        idle_timeout_ms: ctx.cfg.idle_timeout.as_millis() as u64,
        max_frame: ctx.cfg.max_frame,
        resume_token: Some(ctx.auth.mint_resume(&user, &login.device_id, resume_expires)),
        resume_expires_ms: Some(resume_expires),
        room_heads: Some(room_heads),
    };
    info!(user = %user, device_type = %login.device_type, device = %login.device_id, cursor, head, "login");
    // Boxed: the session task moves it between its stages (login, loop, end) as a pointer.
    let session = Box::new(Session {
        handle,
        rx,
        order: InboxOrder::after(cursor.min(head)),
        backlog_until: head,
        acked: cursor.min(head),
        bucket: TokenBucket::new(ctx.cfg.send_rate, ctx.cfg.send_burst, Instant::now().into_std()),
        rooms,
        room_backlog,
        watching: HashSet::new(),
        dirty: unstored,
        cursors_written: Instant::now(),
    });
    Ok((session, ok))
}

/// Checks login metadata against the shared limits, with `max_total` bytes in all.
fn check_metadata(m: &BTreeMap<String, String>, max_total: usize) -> Result<(), LoginFailure> {
    tether_proto::metadata::check_metadata(m, max_total)
        .map_err(|e| (ErrorCode::InvalidField, e.to_string(), "invalid_field"))
}
