//! One handler per client frame of a logged-in session.

use std::collections::HashSet;

use serde_json::json;
use tether_proto::{
    Ack, Address, AddressKind, CloseCode, Decoded, ErrorCode, Frame, JoinRoom, LeaveRoom, Pong, RoomEventKind,
    RoomJoined, RoomLeft, Send as SendFrame, SendError, SubscribePresence, Sync as SyncFrame, UnsubscribePresence,
};
use tracing::info;

use super::io::{ByteSink, FrameWriter};
use super::{error_frame, Flow, RoomCursor, Session, CURSOR_EVERY, MAX_ID_LEN, MAX_WATCHED};
use crate::limits::InboxOrder;
use crate::pipeline::{Job, Origin};
use crate::store::NewMessage;
use crate::Ctx;

/// The metric label of a refused send.
fn count_refusal(ctx: &Ctx, code: ErrorCode) {
    ctx.metrics.send_errors.get_or_create(&crate::metrics::ResultLabel { result: format!("{code:?}") }).inc();
}

impl Session {
    /// Handles one frame from the client.
    pub(super) async fn on_frame<W: ByteSink>(&mut self, d: Decoded, ctx: &Ctx, writer: &mut FrameWriter<W>) -> Flow {
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
            Frame::Send(s) => self.on_send(s, ctx, writer).await,
            Frame::Ack(a) => self.on_ack(a, ctx).await,
            Frame::Sync(s) => self.on_sync(s, ctx, writer).await,
            Frame::JoinRoom(j) => self.on_join(j, ctx, writer).await,
            Frame::LeaveRoom(l) => self.on_leave(l, ctx, writer).await,
            Frame::SubscribePresence(sp) => self.on_subscribe(sp, ctx, writer).await,
            Frame::UnsubscribePresence(up) => self.on_unsubscribe(up, ctx).await,
            Frame::Ping(p) => {
                ctx.hub.touch(&self.handle.user, ctx.clock.now_ms());
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

    /// `send`: checked, rate limited, then handed to the write pipeline, which answers with
    /// `send_ack` once the message is durable (or `send_error`).
    async fn on_send<W: ByteSink>(&mut self, s: SendFrame, ctx: &Ctx, writer: &mut FrameWriter<W>) -> Flow {
        if let Err((code, message)) = self.check_send(&s.to, &s.client_msg_id, &s.content_type) {
            count_refusal(ctx, code);
            writer.push(&Frame::SendError(SendError { client_msg_id: s.client_msg_id, code, message }));
            return Flow::Continue;
        }
        // A room send carries the membership it was checked against to the fan-out.
        let mut members = None;
        if s.to.kind == AddressKind::Room {
            let refusal = match ctx.rooms.members(&s.to.id).await {
                Ok(Some(m)) if m.contains(&self.handle.user) => {
                    members = Some(m);
                    None
                }
                Ok(Some(_)) => Some((ErrorCode::NotAMember, format!("not a member of `{}`", s.to.id))),
                Ok(None) => Some((ErrorCode::NoSuchRoom, format!("no room `{}`", s.to.id))),
                Err(e) => Some((ErrorCode::Unavailable, e.to_string())),
            };
            if let Some((code, message)) = refusal {
                count_refusal(ctx, code);
                writer.push(&Frame::SendError(SendError { client_msg_id: s.client_msg_id, code, message }));
                return Flow::Continue;
            }
        }
        if !self.bucket.try_take(tokio::time::Instant::now().into_std()) {
            count_refusal(ctx, ErrorCode::RateLimited);
            writer.push(&Frame::SendError(SendError {
                client_msg_id: s.client_msg_id,
                code: ErrorCode::RateLimited,
                message: format!("more than {} sends per second", ctx.cfg.send_rate),
            }));
            return Flow::Continue;
        }
        let ts = ctx.clock.now_ms();
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
        if ctx.pipeline.submit(Job::Send(msg, origin, members)).await.is_err() {
            return Flow::End(CloseCode::ServerShutdown);
        }
        Flow::Continue
    }

    /// `ack`: the device's cumulative cursors, clamped to what it was given.
    async fn on_ack(&mut self, a: Ack, ctx: &Ctx) -> Flow {
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

    /// `sync`: a range of the inbox or of a room the user is in, from the store.
    async fn on_sync<W: ByteSink>(&mut self, s: SyncFrame, ctx: &Ctx, writer: &mut FrameWriter<W>) -> Flow {
        ctx.metrics.sync_gaps.inc();
        let res = match &s.room {
            None => self.fill(ctx, writer, s.after, s.until).await,
            Some(room) => match ctx.rooms.is_member(room, &self.handle.user).await {
                Ok(true) => self.fill_room(ctx, writer, room, s.after, s.until).await,
                Ok(false) => {
                    writer.push(&error_frame(ErrorCode::NotAMember, format!("not a member of `{room}`"), false));
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

    /// `join_room`: membership, then `room_joined` with the counts, then `enter` for the room.
    async fn on_join<W: ByteSink>(&mut self, j: JoinRoom, ctx: &Ctx, writer: &mut FrameWriter<W>) -> Flow {
        if j.room.is_empty() || j.room.len() > MAX_ID_LEN {
            writer.push(&error_frame(ErrorCode::InvalidField, format!("room must be 1..={MAX_ID_LEN} bytes"), false));
            return Flow::Continue;
        }
        let user = self.handle.user.clone();
        match ctx.rooms.join(&j.room, &user, ctx.clock.now_ms()).await {
            Ok((new, head)) => {
                if new {
                    ctx.hub.membership_changed(&j.room, &user, true).await;
                }
                if !self.rooms.contains_key(&j.room) {
                    self.rooms.insert(j.room.clone(), RoomCursor { order: InboxOrder::after(head), acked: head });
                    // Stored with the next cursor write: should `room_joined` be lost
                    // with the connection, this device resumes from the head it joined at.
                    self.dirty.insert(Some(j.room.clone()));
                }
                let (members, online) = match ctx.rooms.members(&j.room).await {
                    Ok(Some(m)) => (m.len() as u64, ctx.hub.online_among(&m).await.len() as u64),
                    _ => (0, 0),
                };
                writer.push(&Frame::RoomJoined(RoomJoined { room: j.room.clone(), head, members, online }));
                if new {
                    ctx.hub.room_event(&j.room, RoomEventKind::Enter, &user, None).await;
                    ctx.webhooks.emit("room.entered", json!({ "room": j.room, "user": user }));
                }
            }
            Err(e) => writer.push(&error_frame(e.code(), e.to_string(), false)),
        }
        Flow::Continue
    }

    /// `leave_room`: membership ended, `room_left`, then `quit` for the room and the user.
    async fn on_leave<W: ByteSink>(&mut self, l: LeaveRoom, ctx: &Ctx, writer: &mut FrameWriter<W>) -> Flow {
        let user = self.handle.user.clone();
        match ctx.rooms.leave(&l.room, &user).await {
            Ok(was) => {
                self.rooms.remove(&l.room);
                writer.push(&Frame::RoomLeft(RoomLeft { room: l.room.clone() }));
                if was {
                    ctx.hub.membership_changed(&l.room, &user, false).await;
                    ctx.hub.room_event(&l.room, RoomEventKind::Quit, &user, Some(&user)).await;
                    ctx.webhooks.emit("room.quit", json!({ "room": l.room, "user": user }));
                }
            }
            Err(e) => writer.push(&error_frame(e.code(), e.to_string(), false)),
        }
        Flow::Continue
    }

    /// `subscribe_presence`: current presence now, changes as they happen.
    async fn on_subscribe<W: ByteSink>(
        &mut self,
        sp: SubscribePresence,
        ctx: &Ctx,
        writer: &mut FrameWriter<W>,
    ) -> Flow {
        let fresh: Vec<String> =
            sp.users.into_iter().collect::<HashSet<_>>().into_iter().filter(|u| !self.watching.contains(u)).collect();
        if self.watching.len() + fresh.len() > MAX_WATCHED {
            writer.push(&error_frame(
                ErrorCode::InvalidField,
                format!("at most {MAX_WATCHED} users watched per session"),
                false,
            ));
            return Flow::Continue;
        }
        for p in ctx.hub.watch(self.handle.id, &self.handle.tx, &fresh).await {
            writer.push(&Frame::Presence(p));
        }
        self.watching.extend(fresh);
        Flow::Continue
    }

    /// `unsubscribe_presence`.
    async fn on_unsubscribe(&mut self, up: UnsubscribePresence, ctx: &Ctx) -> Flow {
        ctx.hub.unwatch(self.handle.id, &up.users).await;
        for u in &up.users {
            self.watching.remove(u);
        }
        Flow::Continue
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
