//! One client connection: login, then the session loop that reads frames, writes deliveries
//! and answers, and enforces the login and idle timeouts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::json;
use tether_proto::{
    negotiate_version, Address, AddressKind, CloseCode, Credential, DecodeError, Decoded, Decoder, ErrorCode,
    ErrorFrame, Frame, HistoryTruncated, KickReason, Kicked, Login, LoginError, LoginOk, Pong, RoomEventKind,
    RoomJoined, RoomLeft, SendError,
};
use tracing::{debug, info, warn, Instrument};

use crate::admission::AdmissionGuard;
use crate::auth::{ticket_hash, AuthError};
use crate::hub::{session_channel, SessionCmd, SessionHandle, SessionRx};
use crate::ids::now_ms;
use crate::limits::{InboxOrder, Step, TokenBucket};
use crate::pipeline::{Job, Origin};
use crate::store::{CursorUpdate, NewMessage, TicketUse};
use crate::Ctx;

/// Longest id (user, device, client message id, content type) accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// How long a closing session waits for its last frame to be acknowledged.
const LINGER: Duration = Duration::from_secs(2);

/// Reads frames off a QUIC receive stream.
struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: Decoder,
}

enum ReadError {
    Decode(DecodeError),
    Closed,
}

impl FrameReader {
    /// Drops the buffer's allocation when nothing is buffered (after login: an idle session
    /// should hold no read buffer).
    fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Next frame. Cancel-safe: the only await point is `read_chunk`.
    async fn next(&mut self) -> Result<Decoded, ReadError> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(d)) => return Ok(d),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Decode(e)),
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) | Err(_) => return Err(ReadError::Closed),
            }
        }
    }
}

/// Buffers frames and writes them in one go.
struct FrameWriter {
    send: quinn::SendStream,
    buf: BytesMut,
}

impl FrameWriter {
    fn push(&mut self, frame: &Frame) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(4096);
        }
        if let Err(e) = tether_proto::encode(frame, &mut self.buf) {
            warn!(error = %e, "failed to encode a frame");
        }
    }

    /// Appends an already encoded frame.
    fn push_encoded(&mut self, frame: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(4096);
        }
        self.buf.extend_from_slice(frame);
    }

    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        // Take the buffer whole (not `split`, which would keep its spare capacity alive in
        // an idle session until the next write).
        let data = std::mem::take(&mut self.buf).freeze();
        self.send.write_chunk(data).await.is_ok()
    }

    /// Writes what is buffered, finishes the stream and waits (bounded) until the peer has it.
    /// Boxed: it runs once per session, so its state should not enlarge every idle session.
    fn linger(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.flush().await && self.send.finish().is_ok() {
                let _ = tokio::time::timeout(LINGER, self.send.stopped()).await;
            }
        })
    }
}

fn error_frame(code: ErrorCode, message: impl Into<String>, fatal: bool) -> Frame {
    Frame::Error(ErrorFrame { code, message: message.into(), fatal })
}

fn close(conn: &quinn::Connection, code: CloseCode) {
    conn.close(quinn::VarInt::from_u32(code.code()), code.reason().as_bytes());
}

/// Serves one admitted connection to its end.
pub async fn serve(incoming: quinn::Incoming, ctx: Arc<Ctx>, mut admission: AdmissionGuard) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "handshake failed");
            return;
        }
    };
    ctx.metrics.connections.inc();
    // Runs however this task ends (a panic included): the gauge and the connection are let go.
    let _open = OnDrop(|| {
        ctx.metrics.connections.dec();
        close(&conn, CloseCode::ServerShutdown);
    });
    let span = tracing::info_span!("conn", remote = %conn.remote_address(), id = conn.stable_id());
    let reason = run(&conn, &ctx, &mut admission).instrument(span).await;
    ctx.metrics.closed(reason.reason());
    close(&conn, reason);
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn bad_frame(e: &DecodeError) -> (ErrorCode, CloseCode) {
    match e {
        DecodeError::FrameTooLarge { .. } => (ErrorCode::FrameTooLarge, CloseCode::FrameTooLarge),
        _ => (ErrorCode::BadFrame, CloseCode::ProtocolError),
    }
}

async fn run(conn: &quinn::Connection, ctx: &Arc<Ctx>, admission: &mut AdmissionGuard) -> CloseCode {
    // The handshake-to-login phase runs in its own allocation, freed once the session is
    // established: its futures are larger than the session loop's, and an idle session should
    // not carry them.
    let (reader, writer, session, device_id) = match Box::pin(establish(conn, ctx, admission)).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    admission.logged_in();
    ctx.metrics.login("ok");
    ctx.metrics.sessions.inc();
    let span =
        tracing::info_span!("session", user = %session.handle.user, device = %device_id, sid = session.handle.id);
    // From here the session is registered: whatever ends it (a close, a panic, the task being
    // dropped), the guard unregisters it and announces it offline.
    let mut guard = SessionGuard { session: Some(session), ctx: ctx.clone() };
    let reason = match guard.session.as_mut() {
        Some(s) => s.run(reader, writer, ctx).instrument(span).await,
        None => CloseCode::ServerShutdown,
    };
    if let Some(mut session) = guard.session.take() {
        let linger = session.linger.take();
        // Boxed: it runs once per session, so its state should not enlarge every idle session.
        Box::pin(end_session(ctx.clone(), session, reason)).await;
        if let Some(mut writer) = linger {
            writer.linger().await;
        }
    }
    reason
}

/// Ends a registered session on every path out of [`run`].
struct SessionGuard {
    session: Option<Box<Session>>,
    ctx: Arc<Ctx>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        // Only reached when the normal path did not run: the session task panicked or was
        // dropped. Unregister now, announce from a task of its own.
        if let Some(session) = self.session.take() {
            warn!(user = %session.handle.user, sid = session.handle.id, "session ended abnormally; cleaning up");
            self.ctx.hub.unregister(&session.handle.user, session.handle.id);
            tokio::spawn(end_session(self.ctx.clone(), session, CloseCode::ServerShutdown));
        }
    }
}

/// Everything that follows the end of a logged-in session: its cursors stored, the hub told,
/// and the user announced offline in rooms, to presence watchers and to the webhook.
async fn end_session(ctx: Arc<Ctx>, mut session: Box<Session>, reason: CloseCode) {
    let user = session.handle.user.clone();
    let sid = session.handle.id;
    session.save_cursors(&ctx).await;
    ctx.hub.unregister(&user, sid);
    let last = !ctx.hub.is_online(&user);
    ctx.hub.unwatch(sid, session.watching.iter());
    ctx.hub.touch(&user, now_ms());
    ctx.metrics.sessions.dec();
    if last {
        announce_in_rooms(&ctx, session.rooms.keys(), RoomEventKind::Offline, &user).await;
    }
    ctx.hub.notify_presence(&user);
    let mut event = session_event(&session.handle);
    event["reason"] = json!(reason.reason());
    event["last_session"] = json!(last);
    ctx.webhooks.emit("session.disconnected", event);
}

/// Tells each of `rooms` that `user` came online or went offline.
async fn announce_in_rooms(ctx: &Ctx, rooms: impl Iterator<Item = &String>, kind: RoomEventKind, user: &str) {
    for room in rooms {
        ctx.rooms.announce(&ctx.hub, room, kind, user, None).await;
    }
}

/// The fields every session webhook event carries.
fn session_event(h: &SessionHandle) -> serde_json::Value {
    json!({
        "user": h.user,
        "device_type": h.device_type,
        "device_id": h.device_id,
        "session_id": h.id,
        "metadata": h.metadata,
    })
}

/// Accepts the stream and waits for a valid login within the login timeout.
async fn establish(
    conn: &quinn::Connection,
    ctx: &Arc<Ctx>,
    admission: &AdmissionGuard,
) -> Result<(FrameReader, FrameWriter, Box<Session>, String), CloseCode> {
    let login_deadline = tokio::time::Instant::now() + ctx.cfg.login_timeout;
    let (send, recv) = match tokio::time::timeout_at(login_deadline, conn.accept_bi()).await {
        Err(_) => {
            admission.login_failed(Instant::now());
            return Err(CloseCode::LoginTimeout);
        }
        Ok(Err(_)) => return Err(CloseCode::Normal),
        Ok(Ok(s)) => s,
    };
    let mut reader = FrameReader { recv, buf: BytesMut::new(), decoder: Decoder::new(ctx.cfg.max_frame) };
    let mut writer = FrameWriter { send, buf: BytesMut::new() };

    let login = loop {
        let next = match tokio::time::timeout_at(login_deadline, reader.next()).await {
            Err(_) => {
                admission.login_failed(Instant::now());
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
    match Box::pin(login_session(conn, ctx, &login)).await {
        Ok((session, ok)) => {
            writer.push(&Frame::LoginOk(ok));
            reader.shrink();
            Ok((reader, writer, session, login.device_id))
        }
        Err((code, message, label)) => {
            ctx.metrics.login(label);
            info!(?code, %message, "login refused");
            // The client's fault (not the store's) counts against its address.
            if code != ErrorCode::Unavailable {
                if let Some(backoff) = admission.login_failed(Instant::now()) {
                    info!(?backoff, "address backed off after failed logins");
                }
            }
            writer.push(&Frame::LoginError(LoginError { code, message }));
            writer.linger().await;
            Err(CloseCode::AuthFailed)
        }
    }
}

type LoginFailure = (ErrorCode, String, &'static str);

fn check_id(what: &str, v: &str) -> Result<(), LoginFailure> {
    if v.is_empty() || v.len() > MAX_ID_LEN {
        Err((ErrorCode::InvalidField, format!("{what} must be 1..={MAX_ID_LEN} bytes"), "invalid_field"))
    } else {
        Ok(())
    }
}

async fn login_session(
    conn: &quinn::Connection,
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
        Credential::Resume(t) => ctx.auth.verify_resume(t, &login.device_id, now_ms()).map_err(auth_fail)?,
        Credential::Ticket(t) if !crate::auth::is_ticket_shaped(t) => return Err(auth_fail(AuthError::TicketInvalid)),
        Credential::Ticket(t) => {
            let started = Instant::now();
            let r = ctx.store.consume_ticket(&ticket_hash(t), now_ms()).await;
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
        connected_ms: now_ms(),
        conn: conn.clone(),
        metadata,
        tx,
    });
    // Register before reading the heads: whatever is stored after this point also arrives
    // live, and the order trackers drop what was already sent from the store.
    let first = ctx.hub.register(handle.clone());
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
        for room in ctx.store.rooms_of(&user).await? {
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
            ctx.hub.unregister(&user, handle.id);
            return Err(unavailable(e));
        }
    };
    ctx.hub.touch(&user, now_ms());
    if first {
        announce_in_rooms(ctx, rooms.keys(), RoomEventKind::Online, &user).await;
    }
    ctx.hub.notify_presence(&user);
    let mut event = session_event(&handle);
    event["first_session"] = json!(first);
    ctx.webhooks.emit("session.connected", event);
    let resume_expires = now_ms() + ctx.cfg.resume_ttl.as_millis() as u64;
    let ok = LoginOk {
        version,
        session_id: format!("{}-{}", ctx.cfg.node_id, handle.id),
        user: user.clone(),
        inbox_head: head,
        server_time_ms: now_ms(),
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
        bucket: TokenBucket::new(ctx.cfg.send_rate, ctx.cfg.send_burst, Instant::now()),
        rooms,
        room_backlog,
        watching: HashSet::new(),
        dirty: unstored,
        linger: None,
        cursors_written: Instant::now(),
    });
    Ok((session, ok))
}

/// Most users one session may watch the presence of.
pub const MAX_WATCHED: usize = 1000;

/// Checks login metadata against the shared limits, with `max_total` bytes in all.
fn check_metadata(m: &BTreeMap<String, String>, max_total: usize) -> Result<(), LoginFailure> {
    tether_proto::metadata::check_metadata(m, max_total)
        .map_err(|e| (ErrorCode::InvalidField, e.to_string(), "invalid_field"))
}

/// Where a session is in one room's log.
struct RoomCursor {
    order: InboxOrder,
    acked: u64,
}

/// A logged-in session.
struct Session {
    handle: Arc<SessionHandle>,
    rx: SessionRx,
    order: InboxOrder,
    backlog_until: u64,
    acked: u64,
    bucket: TokenBucket,
    /// The user's rooms and this device's place in each.
    rooms: HashMap<String, RoomCursor>,
    /// Rooms whose missed messages are sent after login: (room, cursor, head).
    room_backlog: Vec<(String, u64, u64)>,
    /// Users whose presence this session watches.
    watching: HashSet<String>,
    /// Cursors (None = inbox, Some = room) acked since they were last written.
    dirty: HashSet<Option<String>>,
    /// When cursors were last written.
    cursors_written: Instant,
    /// A writer whose last frames wait for the peer after the session has ended.
    linger: Option<FrameWriter>,
}

/// Stored cursors are written at most this often per session (and when it ends).
const CURSOR_EVERY: Duration = Duration::from_secs(1);

enum Flow {
    Continue,
    End(CloseCode),
    /// End now, and let the last frames linger only after the session is announced gone.
    EndThenLinger(CloseCode),
}

impl Session {
    async fn run(&mut self, mut reader: FrameReader, mut writer: FrameWriter, ctx: &Arc<Ctx>) -> CloseCode {
        let backlog = self.order.next() - 1;
        if backlog < self.backlog_until {
            let until = self.backlog_until;
            if let Err(code) = self.fill(ctx, &mut writer, backlog, Some(until)).await {
                return code;
            }
        }
        for (room, cursor, head) in std::mem::take(&mut self.room_backlog) {
            if let Err(code) = self.fill_room(ctx, &mut writer, &room, cursor, Some(head)).await {
                return code;
            }
        }
        if !writer.flush().await {
            return CloseCode::Normal;
        }
        let lag = self.rx.lag_signal();
        // One timer for the whole session, moved on when a frame arrives: re-creating it on
        // every wake-up would cost a timer-wheel insert and removal per delivery.
        let idle = tokio::time::sleep(ctx.cfg.idle_timeout);
        tokio::pin!(idle);
        loop {
            let flow = tokio::select! {
                biased;
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        let mut flow = Box::pin(self.on_cmd(cmd, ctx, &mut writer)).await;
                        // Batch what else is queued into the same write; when the queue runs
                        // dry, yield once so that deliveries fanned out right now join this
                        // write instead of costing a packet each.
                        let mut n = 0;
                        let mut yielded = false;
                        while matches!(flow, Flow::Continue) && n < 512 {
                            let cmd = match self.rx.try_recv() {
                                Some(cmd) => cmd,
                                None if !yielded => {
                                    yielded = true;
                                    tokio::task::yield_now().await;
                                    continue;
                                }
                                None => break,
                            };
                            flow = Box::pin(self.on_cmd(cmd, ctx, &mut writer)).await;
                            n += 1;
                        }
                        flow
                    }
                    None => Flow::End(CloseCode::ServerShutdown),
                },
                _ = lag.wait() => {
                    // Live deliveries were dropped: read the inbox and every room from where
                    // this device is.
                    ctx.metrics.sync_gaps.inc();
                    let after = self.order.next() - 1;
                    let mut flow = match self.fill(ctx, &mut writer, after, None).await {
                        Ok(()) => Flow::Continue,
                        Err(c) => Flow::End(c),
                    };
                    let rooms: Vec<(String, u64)> = self.rooms.iter().map(|(r, c)| (r.clone(), c.order.next() - 1)).collect();
                    for (room, after) in rooms {
                        if matches!(flow, Flow::Continue) {
                            if let Err(c) = self.fill_room(ctx, &mut writer, &room, after, None).await {
                                flow = Flow::End(c);
                            }
                        }
                    }
                    flow
                }
                r = reader.next() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + ctx.cfg.idle_timeout);
                    match r {
                        Ok(d) => Box::pin(self.on_frame(d, ctx, &mut writer)).await,
                        Err(ReadError::Closed) => Flow::End(CloseCode::Normal),
                        Err(ReadError::Decode(e)) => {
                            ctx.metrics.bad_frames.inc();
                            let (code, close) = bad_frame(&e);
                            writer.push(&error_frame(code, e.to_string(), true));
                            writer.linger().await;
                            Flow::End(close)
                        }
                    }
                }
                _ = &mut idle => {
                    // The peer has most likely vanished: no lingering for its acknowledgement,
                    // so it is announced offline when the idle timer fires, not later.
                    info!("idle timeout");
                    writer.push(&error_frame(ErrorCode::Unavailable, "idle timeout", true));
                    Flow::EndThenLinger(CloseCode::IdleTimeout)
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::End(code) => return code,
                Flow::EndThenLinger(code) => {
                    self.linger = Some(writer);
                    return code;
                }
            }
            if !writer.flush().await {
                return CloseCode::Normal;
            }
        }
    }

    /// Writes inbox entries `(after, until]` from the store, in pages. Boxed: a catch-up is
    /// rare, and its state should not enlarge every idle session.
    fn fill<'a>(
        &'a mut self,
        ctx: &'a Ctx,
        writer: &'a mut FrameWriter,
        mut after: u64,
        until: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Result<(), CloseCode>> + Send + 'a>> {
        Box::pin(async move {
            let page = ctx.cfg.sync_page.max(1);
            loop {
                let started = Instant::now();
                let entries = match ctx.store.fetch_inbox(&self.handle.user, after, until, page).await {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(error = %e, "store read failed while syncing");
                        return Err(CloseCode::ServerShutdown);
                    }
                };
                ctx.metrics.store_op("fetch_inbox", started.elapsed().as_secs_f64());
                let n = entries.len();
                ctx.metrics.sync_messages.inc_by(n as u64);
                for e in entries {
                    writer.push(&Frame::Deliver(e.msg.deliver(e.seq)));
                    ctx.metrics.messages_out.inc();
                    self.order.sent(e.seq);
                    after = e.seq;
                }
                if !writer.flush().await {
                    return Err(CloseCode::Normal);
                }
                if n < page as usize {
                    return Ok(());
                }
            }
        })
    }

    /// Writes the acked cursors that moved since the last write. False if the node is
    /// shutting down.
    async fn save_cursors(&mut self, ctx: &Ctx) -> bool {
        self.cursors_written = Instant::now();
        for room in std::mem::take(&mut self.dirty) {
            let seq = match &room {
                None => self.acked,
                Some(r) => match self.rooms.get(r) {
                    Some(c) => c.acked,
                    None => continue,
                },
            };
            let c = CursorUpdate {
                user: self.handle.user.clone(),
                device_id: self.handle.device_id.clone(),
                room,
                seq,
                at_ms: now_ms(),
            };
            if ctx.pipeline.submit(Job::Cursor(c)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The order tracker of `room`; a room first heard of through entry `seq` (joined on
    /// another device) starts right before it.
    fn room_order(&mut self, room: &str, seq: u64) -> &mut InboxOrder {
        &mut self
            .rooms
            .entry(room.to_owned())
            .or_insert_with(|| RoomCursor { order: InboxOrder::after(seq.saturating_sub(1)), acked: 0 })
            .order
    }

    /// Writes room log entries `(after, until]` from the store, in pages, preceded by
    /// `history_truncated` when part of the range is past retention.
    fn fill_room<'a>(
        &'a mut self,
        ctx: &'a Ctx,
        writer: &'a mut FrameWriter,
        room: &'a str,
        mut after: u64,
        until: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Result<(), CloseCode>> + Send + 'a>> {
        Box::pin(async move {
            ctx.metrics.sync_gaps.inc();
            let page = ctx.cfg.sync_page.max(1);
            let mut first_page = true;
            loop {
                let started = Instant::now();
                let (entries, first_seq) = match ctx.store.fetch_room(room, after, until, page).await {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(error = %e, "store read failed while syncing a room");
                        return Err(CloseCode::ServerShutdown);
                    }
                };
                ctx.metrics.store_op("fetch_room", started.elapsed().as_secs_f64());
                if first_page && first_seq > after.saturating_add(1) {
                    writer.push(&Frame::HistoryTruncated(HistoryTruncated { room: room.to_owned(), after, first_seq }));
                    self.room_order(room, first_seq).sent(first_seq - 1);
                }
                first_page = false;
                let n = entries.len();
                ctx.metrics.sync_messages.inc_by(n as u64);
                for e in entries {
                    writer.push(&Frame::Deliver(e.msg.deliver(e.seq)));
                    ctx.metrics.messages_out.inc();
                    self.room_order(room, e.seq).sent(e.seq);
                    after = e.seq;
                }
                if !writer.flush().await {
                    return Err(CloseCode::Normal);
                }
                if n < page as usize {
                    return Ok(());
                }
            }
        })
    }

    async fn on_cmd(&mut self, cmd: SessionCmd, ctx: &Ctx, writer: &mut FrameWriter) -> Flow {
        match cmd {
            SessionCmd::SendAck(ack, Some(room)) => {
                // A room message: ack.seq is its place in the room's log.
                let seq = ack.seq;
                writer.push(&Frame::SendAck(*ack));
                let step = self.room_order(&room, seq).step(seq);
                if let Step::FillGap { after, until } = step {
                    if let Err(c) = self.fill_room(ctx, writer, &room, after, Some(until)).await {
                        return Flow::End(c);
                    }
                }
                self.room_order(&room, seq).sent(seq);
                Flow::Continue
            }
            SessionCmd::SendAck(ack, None) => {
                // The sender's own copy sits in its inbox at ack.seq.
                let seq = ack.seq;
                writer.push(&Frame::SendAck(*ack));
                if let Step::FillGap { after, until } = self.order.step(seq) {
                    ctx.metrics.sync_gaps.inc();
                    if let Err(c) = self.fill(ctx, writer, after, Some(until)).await {
                        return Flow::End(c);
                    }
                }
                self.order.sent(seq);
                Flow::Continue
            }
            SessionCmd::SendError(e) => {
                writer.push(&Frame::SendError(*e));
                Flow::Continue
            }
            SessionCmd::RoomLive(d) => {
                let room = &d.msg.to.id;
                let seq = d.seq;
                match self.room_order(room, seq).step(seq) {
                    Step::Skip => return Flow::Continue,
                    Step::Send => {}
                    Step::FillGap { after, until } => {
                        if let Err(c) = self.fill_room(ctx, writer, room, after, Some(until)).await {
                            return Flow::End(c);
                        }
                    }
                }
                writer.push_encoded(&d.frame);
                ctx.metrics.messages_out.inc();
                self.room_order(room, seq).sent(seq);
                Flow::Continue
            }
            SessionCmd::Frame(f) => {
                if matches!(*f, Frame::RoomEvent(_)) {
                    ctx.metrics.room_events.inc();
                }
                writer.push(&f);
                Flow::Continue
            }
            SessionCmd::Live { msg, seq } => {
                match self.order.step(seq) {
                    Step::Skip => return Flow::Continue,
                    Step::Send => {}
                    Step::FillGap { after, until } => {
                        ctx.metrics.sync_gaps.inc();
                        if let Err(c) = self.fill(ctx, writer, after, Some(until)).await {
                            return Flow::End(c);
                        }
                    }
                }
                writer.push(&Frame::Deliver(msg.deliver(seq)));
                ctx.metrics.messages_out.inc();
                self.order.sent(seq);
                Flow::Continue
            }
            SessionCmd::Kick(reason) => {
                info!(?reason, "kicked");
                let message = match reason {
                    KickReason::Replaced => "another device of the same type logged in",
                    _ => "kicked by the server",
                };
                writer.push(&Frame::Kicked(Kicked { reason, message: message.into() }));
                writer.linger().await;
                Flow::End(match reason {
                    KickReason::Replaced => CloseCode::Replaced,
                    _ => CloseCode::Kicked,
                })
            }
            SessionCmd::Superseded => {
                info!("superseded by a new connection of the same device");
                Flow::End(CloseCode::Superseded)
            }
        }
    }

    async fn on_frame(&mut self, d: Decoded, ctx: &Ctx, writer: &mut FrameWriter) -> Flow {
        let frame = match d {
            Decoded::Unknown { frame_type } => {
                writer.push(&error_frame(
                    ErrorCode::UnknownFrameType,
                    format!("unknown frame type `{frame_type}` skipped"),
                    false,
                ));
                return Flow::Continue;
            }
            Decoded::Frame(f) => f,
        };
        match frame {
            Frame::Send(s) => {
                if let Err((code, message)) = self.check_send(&s.to, &s.client_msg_id, &s.content_type) {
                    ctx.metrics
                        .send_errors
                        .get_or_create(&crate::metrics::ResultLabel { result: format!("{code:?}") })
                        .inc();
                    writer.push(&Frame::SendError(SendError { client_msg_id: s.client_msg_id, code, message }));
                    return Flow::Continue;
                }
                if s.to.kind == AddressKind::Room {
                    let refusal = match ctx.rooms.members(&s.to.id).await {
                        Ok(Some(m)) if m.contains(&self.handle.user) => None,
                        Ok(Some(_)) => Some((ErrorCode::NotAMember, format!("not a member of `{}`", s.to.id))),
                        Ok(None) => Some((ErrorCode::NoSuchRoom, format!("no room `{}`", s.to.id))),
                        Err(e) => Some((ErrorCode::Unavailable, e.to_string())),
                    };
                    if let Some((code, message)) = refusal {
                        ctx.metrics
                            .send_errors
                            .get_or_create(&crate::metrics::ResultLabel { result: format!("{code:?}") })
                            .inc();
                        writer.push(&Frame::SendError(SendError { client_msg_id: s.client_msg_id, code, message }));
                        return Flow::Continue;
                    }
                }
                if !self.bucket.try_take(Instant::now()) {
                    ctx.metrics
                        .send_errors
                        .get_or_create(&crate::metrics::ResultLabel { result: "RateLimited".into() })
                        .inc();
                    writer.push(&Frame::SendError(SendError {
                        client_msg_id: s.client_msg_id,
                        code: ErrorCode::RateLimited,
                        message: format!("more than {} sends per second", ctx.cfg.send_rate),
                    }));
                    return Flow::Continue;
                }
                let ts = now_ms();
                let msg = NewMessage {
                    msg_id: ctx.ids.next_at(ts),
                    sender: self.handle.user.clone(),
                    sender_device: self.handle.device_id.clone(),
                    client_msg_id: s.client_msg_id,
                    to: s.to,
                    ts,
                    content_type: s.content_type,
                    payload: s.payload,
                };
                let origin = Origin::Session { id: self.handle.id, tx: self.handle.tx.clone() };
                if ctx.pipeline.submit(Job::Send(msg, origin)).await.is_err() {
                    return Flow::End(CloseCode::ServerShutdown);
                }
                Flow::Continue
            }
            Frame::Ack(a) => {
                ctx.metrics.acks.inc();
                // A device can only acknowledge what it was given (in this session or before
                // it): an ack beyond that is clamped, so it can never hide later messages.
                let inbox = a.inbox.min(self.order.next() - 1);
                if a.inbox > inbox {
                    ctx.metrics.acks_clamped.inc();
                }
                if inbox > self.acked {
                    self.acked = inbox;
                    self.dirty.insert(None);
                }
                for (room, seq) in a.rooms.into_iter().flatten() {
                    if let Some(r) = self.rooms.get_mut(&room) {
                        let seq_ok = seq.min(r.order.next() - 1);
                        if seq > seq_ok {
                            ctx.metrics.acks_clamped.inc();
                        }
                        if seq_ok > r.acked {
                            r.acked = seq_ok;
                            self.dirty.insert(Some(room));
                        }
                    }
                }
                // Stored cursors only serve a device that lost its own: write them at most
                // once per CURSOR_EVERY per session (and at its end), not per ack.
                if self.cursors_written.elapsed() >= CURSOR_EVERY && !self.save_cursors(ctx).await {
                    return Flow::End(CloseCode::ServerShutdown);
                }
                Flow::Continue
            }
            Frame::Sync(s) => {
                ctx.metrics.sync_gaps.inc();
                let res = match &s.room {
                    None => self.fill(ctx, writer, s.after, s.until).await,
                    Some(room) => match ctx.rooms.is_member(room, &self.handle.user).await {
                        Ok(true) => self.fill_room(ctx, writer, room, s.after, s.until).await,
                        Ok(false) => {
                            writer.push(&error_frame(
                                ErrorCode::NotAMember,
                                format!("not a member of `{room}`"),
                                false,
                            ));
                            Ok(())
                        }
                        Err(e) => {
                            writer.push(&error_frame(ErrorCode::Unavailable, e.to_string(), false));
                            Ok(())
                        }
                    },
                };
                match res {
                    Ok(()) => Flow::Continue,
                    Err(c) => Flow::End(c),
                }
            }
            Frame::JoinRoom(j) => {
                if j.room.is_empty() || j.room.len() > MAX_ID_LEN {
                    writer.push(&error_frame(
                        ErrorCode::InvalidField,
                        format!("room must be 1..={MAX_ID_LEN} bytes"),
                        false,
                    ));
                    return Flow::Continue;
                }
                let user = self.handle.user.clone();
                match ctx.rooms.join(&j.room, &user, now_ms()).await {
                    Ok((new, head)) => {
                        if !self.rooms.contains_key(&j.room) {
                            self.rooms
                                .insert(j.room.clone(), RoomCursor { order: InboxOrder::after(head), acked: head });
                            // Stored with the next cursor write: should `room_joined` be lost
                            // with the connection, this device resumes from the head it joined at.
                            self.dirty.insert(Some(j.room.clone()));
                        }
                        let (members, online) = match ctx.rooms.members(&j.room).await {
                            Ok(Some(m)) => ctx.rooms.counts(&m, &ctx.hub),
                            _ => (0, 0),
                        };
                        writer.push(&Frame::RoomJoined(RoomJoined { room: j.room.clone(), head, members, online }));
                        if new {
                            ctx.rooms.announce(&ctx.hub, &j.room, RoomEventKind::Enter, &user, None).await;
                            ctx.webhooks.emit("room.entered", json!({ "room": j.room, "user": user }));
                        }
                    }
                    Err(e) => writer.push(&error_frame(e.code(), e.to_string(), false)),
                }
                Flow::Continue
            }
            Frame::LeaveRoom(l) => {
                let user = self.handle.user.clone();
                match ctx.rooms.leave(&l.room, &user).await {
                    Ok(was) => {
                        self.rooms.remove(&l.room);
                        writer.push(&Frame::RoomLeft(RoomLeft { room: l.room.clone() }));
                        if was {
                            ctx.rooms.announce(&ctx.hub, &l.room, RoomEventKind::Quit, &user, Some(&user)).await;
                            ctx.webhooks.emit("room.quit", json!({ "room": l.room, "user": user }));
                        }
                    }
                    Err(e) => writer.push(&error_frame(e.code(), e.to_string(), false)),
                }
                Flow::Continue
            }
            Frame::SubscribePresence(sp) => {
                let fresh: Vec<String> = sp.users.into_iter().filter(|u| !self.watching.contains(u)).collect();
                if self.watching.len() + fresh.len() > MAX_WATCHED {
                    writer.push(&error_frame(
                        ErrorCode::InvalidField,
                        format!("at most {MAX_WATCHED} users watched per session"),
                        false,
                    ));
                    return Flow::Continue;
                }
                for p in ctx.hub.watch(self.handle.id, &self.handle.tx, &fresh) {
                    writer.push(&Frame::Presence(p));
                }
                self.watching.extend(fresh);
                Flow::Continue
            }
            Frame::UnsubscribePresence(up) => {
                ctx.hub.unwatch(self.handle.id, up.users.iter());
                for u in &up.users {
                    self.watching.remove(u);
                }
                Flow::Continue
            }
            Frame::Ping(p) => {
                ctx.hub.touch(&self.handle.user, now_ms());
                writer.push(&Frame::Pong(Pong { nonce: p.nonce }));
                Flow::Continue
            }
            Frame::Logout(_) => {
                info!("logout");
                writer.linger().await;
                Flow::End(CloseCode::Normal)
            }
            Frame::Login(_) => {
                writer.push(&error_frame(ErrorCode::AlreadyLoggedIn, "this session is already logged in", false));
                Flow::Continue
            }
            other => {
                writer.push(&error_frame(
                    ErrorCode::UnexpectedFrame,
                    format!("`{}` is a server-to-client frame", other.type_name()),
                    false,
                ));
                Flow::Continue
            }
        }
    }

    fn check_send(&self, to: &Address, client_msg_id: &str, content_type: &str) -> Result<(), (ErrorCode, String)> {
        if client_msg_id.is_empty() || client_msg_id.len() > MAX_ID_LEN {
            return Err((ErrorCode::InvalidField, format!("client_msg_id must be 1..={MAX_ID_LEN} bytes")));
        }
        if content_type.len() > MAX_ID_LEN {
            return Err((ErrorCode::InvalidField, format!("content_type longer than {MAX_ID_LEN} bytes")));
        }
        if !matches!(to.kind, AddressKind::User | AddressKind::Room) {
            return Err((ErrorCode::Unsupported, "unknown address kind".into()));
        }
        if to.id.is_empty() || to.id.len() > MAX_ID_LEN {
            return Err((ErrorCode::InvalidField, format!("recipient must be 1..={MAX_ID_LEN} bytes")));
        }
        Ok(())
    }
}
