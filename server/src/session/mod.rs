//! One client connection: login, then the session loop that reads frames, writes deliveries
//! and answers, and enforces the login and idle timeouts.
//!
//! A session is a function of an ordered, reliable byte stream ([`io`]), the node's shared
//! context and its clock: [`serve`] runs it over a QUIC stream, [`serve_stream`] over anything
//! else (an in-process pipe in tests). The parts, by job: [`io`] frame I/O, [`login`] the login
//! check, [`delivery`] ordered delivery per log (inbox and rooms), [`frames`] one handler per
//! client frame.

mod delivery;
mod frames;
pub mod io;
mod login;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tether_proto::{CloseCode, DecodeError, ErrorCode, ErrorFrame, Frame};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::admission::AdmissionGuard;
use crate::hub::{Peer, SessionHandle, SessionRx};
use crate::limits::{InboxOrder, TokenBucket};
use crate::Ctx;
use io::{ByteSink, ByteSource, FrameReader, FrameWriter, ReadError};

/// Longest id (user, device, client message id, content type) accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

fn error_frame(code: ErrorCode, message: impl Into<String>, fatal: bool) -> Frame {
    Frame::Error(ErrorFrame { code, message: message.into(), fatal })
}

fn close(conn: &quinn::Connection, code: CloseCode) {
    conn.close(quinn::VarInt::from_u32(code.code()), code.reason().as_bytes());
}

/// Serves one admitted QUIC connection to its end.
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
    let reason = async {
        let login_deadline = Instant::now() + ctx.cfg.login_timeout;
        let (send, recv) = match tokio::time::timeout_at(login_deadline, conn.accept_bi()).await {
            Err(_) => {
                admission.login_failed(std::time::Instant::now());
                return CloseCode::LoginTimeout;
            }
            Ok(Err(_)) => return CloseCode::Normal,
            Ok(Ok(s)) => s,
        };
        let peer: Arc<dyn Peer> = Arc::new(conn.clone());
        run(recv, send, peer, &ctx, &mut admission, login_deadline).await
    }
    .instrument(span)
    .await;
    ctx.metrics.closed(reason.reason());
    close(&conn, reason);
}

/// The peer of an in-process stream: it has no network address.
#[derive(Debug)]
pub struct LocalPeer;

impl Peer for LocalPeer {
    fn remote_address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// Serves a session over any ordered, reliable byte stream (`recv`, `send`), from its login to
/// its end, and returns why it ended. The login timeout runs from the call.
pub async fn serve_stream<R: ByteSource, W: ByteSink>(recv: R, send: W, ctx: Arc<Ctx>) -> CloseCode {
    let mut admission = crate::admission::AdmissionGuard::new(
        ctx.admission.clone(),
        Ipv4Addr::UNSPECIFIED.into(),
        ctx.metrics.pending_logins.clone(),
    );
    ctx.metrics.connections.inc();
    let login_deadline = Instant::now() + ctx.cfg.login_timeout;
    let reason = run(recv, send, Arc::new(LocalPeer), &ctx, &mut admission, login_deadline).await;
    ctx.metrics.connections.dec();
    ctx.metrics.closed(reason.reason());
    reason
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

async fn run<R: ByteSource, W: ByteSink>(
    recv: R,
    send: W,
    peer: Arc<dyn Peer>,
    ctx: &Arc<Ctx>,
    admission: &mut AdmissionGuard,
    login_deadline: Instant,
) -> CloseCode {
    let reader = FrameReader::new(recv, ctx.cfg.max_frame);
    let writer = FrameWriter::new(send);
    // The handshake-to-login phase runs in its own allocation, freed once the session is
    // established: its futures are larger than the session loop's, and an idle session should
    // not carry them.
    let (reader, writer, session) =
        match Box::pin(login::establish(reader, writer, peer, ctx, admission, login_deadline)).await {
            Ok(v) => v,
            Err(code) => return code,
        };
    admission.logged_in();
    ctx.metrics.login("ok");
    ctx.metrics.sessions.inc();
    let span = tracing::info_span!(
        "session",
        user = %session.handle.user,
        device = %session.handle.device_id,
        sid = session.handle.id
    );
    // From here the session is registered: whatever ends it (a close, a panic, the task being
    // dropped), the guard detaches it from the hub and announces it offline.
    let mut guard = SessionGuard { session: Some(session), ctx: ctx.clone() };
    let (reason, linger) = match guard.session.as_mut() {
        Some(s) => s.run(reader, writer, ctx).instrument(span).await,
        None => (CloseCode::ServerShutdown, None),
    };
    if let Some(session) = guard.session.take() {
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
        // dropped. Detach and announce from a task of its own.
        if let Some(session) = self.session.take() {
            warn!(user = %session.handle.user, sid = session.handle.id, "session ended abnormally; cleaning up");
            tokio::spawn(end_session(self.ctx.clone(), session, CloseCode::ServerShutdown));
        }
    }
}

/// Everything that follows the end of a logged-in session: its cursors stored, then the hub
/// detaches it (announcing the user offline in rooms and to presence watchers when it was the
/// last session), and the webhook hears of it.
async fn end_session(ctx: Arc<Ctx>, mut session: Box<Session>, reason: CloseCode) {
    session.save_cursors(&ctx).await;
    let rooms: Vec<String> = session.rooms.keys().cloned().collect();
    let last = ctx.hub.detach(&session.handle, &rooms, &session.watching).await;
    ctx.metrics.sessions.dec();
    let mut event = session_event(&session.handle);
    event["reason"] = json!(reason.reason());
    event["last_session"] = json!(last);
    ctx.webhooks.emit("session.disconnected", event);
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

/// Most users one session may watch the presence of.
pub const MAX_WATCHED: usize = 1000;

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
    /// Runs the logged-in session to its end. Returns why it ended, and the writer when its
    /// last frames should linger only after the session is announced gone.
    async fn run<R: ByteSource, W: ByteSink>(
        &mut self,
        mut reader: FrameReader<R>,
        mut writer: FrameWriter<W>,
        ctx: &Arc<Ctx>,
    ) -> (CloseCode, Option<FrameWriter<W>>) {
        let backlog = self.order.next() - 1;
        if backlog < self.backlog_until {
            let until = self.backlog_until;
            if let Err(code) = self.fill(ctx, &mut writer, backlog, Some(until)).await {
                return (code, None);
            }
        }
        for (room, cursor, head) in std::mem::take(&mut self.room_backlog) {
            if let Err(code) = self.fill_room(ctx, &mut writer, &room, cursor, Some(head)).await {
                return (code, None);
            }
        }
        if !writer.flush().await {
            return (CloseCode::Normal, None);
        }
        // One timer for the whole session. A frame only notes when it came; when the timer
        // fires early (frames came since it was set) it is moved to the new deadline. Moving
        // it per frame would cost a timer-wheel removal and insert per message.
        let idle = tokio::time::sleep(ctx.cfg.idle_timeout);
        tokio::pin!(idle);
        let mut last_frame = Instant::now();
        loop {
            let flow = tokio::select! {
                biased;
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        let mut flow = self.handle_cmd(cmd, ctx, &mut writer).await;
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
                            flow = self.handle_cmd(cmd, ctx, &mut writer).await;
                            n += 1;
                        }
                        flow
                    }
                    None => Flow::End(CloseCode::ServerShutdown),
                },
                r = reader.next() => {
                    last_frame = Instant::now();
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
                    let deadline = last_frame + ctx.cfg.idle_timeout;
                    if deadline > Instant::now() {
                        idle.as_mut().reset(deadline);
                        Flow::Continue
                    } else {
                        // The peer has most likely vanished: no lingering for its
                        // acknowledgement, so it is announced offline when the idle timer
                        // fires, not later.
                        info!("idle timeout");
                        writer.push(&error_frame(ErrorCode::Unavailable, "idle timeout", true));
                        Flow::EndThenLinger(CloseCode::IdleTimeout)
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::End(code) => return (code, None),
                Flow::EndThenLinger(code) => return (code, Some(writer)),
            }
            if !writer.flush().await {
                return (CloseCode::Normal, None);
            }
        }
    }
}
