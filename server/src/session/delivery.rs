//! Ordered delivery per log: the session's inbox and each of its rooms get their entries in
//! seq order, exactly once, whether they come live from the hub or are read from the store
//! to fill a gap; and the device's acknowledged cursors are written back.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use tether_proto::{CloseCode, Frame, GoAway, HistoryTruncated, KickReason, Kicked};
use tracing::{info, warn};

use super::io::{ByteSink, FrameWriter};
use super::{Flow, RoomCursor, Session};
use crate::hub::{RoomDelivery, SessionCmd};
use crate::limits::{InboxOrder, Step};
use crate::pipeline::Job;
use crate::store::{CursorUpdate, StoredMessage};
use crate::Ctx;

impl Session {
    /// Writes inbox entries `(after, until]` from the store, in pages. Boxed: a catch-up is
    /// rare, and its state should not enlarge every idle session.
    pub(super) fn fill<'a, W: ByteSink>(
        &'a mut self,
        ctx: &'a Ctx,
        writer: &'a mut FrameWriter<W>,
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
                    writer.push_deliver(&e.msg.deliver_ref(e.seq));
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
    pub(super) async fn save_cursors(&mut self, ctx: &Ctx) -> bool {
        self.cursors_written = tokio::time::Instant::now();
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
                at_ms: ctx.clock.now_ms(),
            };
            if ctx.pipeline.submit(Job::Cursor(c)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// What a room's order says about entry `seq`. A room first heard of through entry `seq`
    /// (joined on another device) starts right before it: [`Step::Send`].
    fn room_step(&self, room: &str, seq: u64) -> Step {
        self.rooms.get(room).map_or(Step::Send, |c| c.order.step(seq))
    }

    /// Records that entry `seq` of `room` was written (or is known to the device); a room first
    /// heard of here starts right after it. (Looked up before it is inserted: the entry API
    /// would copy the room's name per entry.)
    fn room_sent(&mut self, room: &str, seq: u64) {
        match self.rooms.get_mut(room) {
            Some(c) => c.order.sent(seq),
            None => {
                self.rooms.insert(room.to_owned(), RoomCursor { order: InboxOrder::after(seq), acked: 0 });
            }
        }
    }

    /// Handles `cmd` at once when it needs no store read and no wait: an answer, a frame, or
    /// an ack or delivery without a gap before it, which is almost every command. Hands it back
    /// otherwise (a gap to fill from the store, a kick, a catch-up) for [`Session::on_cmd`], so
    /// that the common path does without the boxed future the rare one needs.
    pub(super) fn on_cmd_now<W: ByteSink>(
        &mut self,
        cmd: SessionCmd,
        ctx: &Ctx,
        writer: &mut FrameWriter<W>,
    ) -> Result<Flow, SessionCmd> {
        match cmd {
            SessionCmd::SendAck(ack, room) => {
                let seq = ack.seq;
                let step = match &room {
                    Some(room) => self.room_step(room, seq),
                    None => self.order.step(seq),
                };
                if let Step::FillGap { .. } = step {
                    return Err(SessionCmd::SendAck(ack, room));
                }
                writer.push(&Frame::SendAck(*ack));
                match room {
                    Some(room) => self.room_sent(&room, seq),
                    None => self.order.sent(seq),
                }
            }
            SessionCmd::SendError(e) => writer.push(&Frame::SendError(*e)),
            SessionCmd::RoomLive(d) => match self.room_step(&d.msg.to.id, d.seq) {
                Step::Skip => {}
                Step::Send => self.write_room_live(&d, ctx, writer),
                Step::FillGap { .. } => return Err(SessionCmd::RoomLive(d)),
            },
            SessionCmd::Live { msg, seq } => match self.order.step(seq) {
                Step::Skip => {}
                Step::Send => self.write_live(&msg, seq, ctx, writer),
                Step::FillGap { .. } => return Err(SessionCmd::Live { msg, seq }),
            },
            SessionCmd::Frame(f) => {
                if matches!(*f, Frame::RoomEvent(_)) {
                    ctx.metrics.room_events.inc();
                }
                writer.push(&f);
            }
            other => return Err(other),
        }
        Ok(Flow::Continue)
    }

    /// Writes a room delivery (its gap, if any, filled before).
    fn write_room_live<W: ByteSink>(&mut self, d: &RoomDelivery, ctx: &Ctx, writer: &mut FrameWriter<W>) {
        writer.push_encoded(&d.frame);
        ctx.metrics.messages_out.inc();
        self.room_sent(&d.msg.to.id, d.seq);
    }

    /// Writes an inbox delivery (its gap, if any, filled before).
    fn write_live<W: ByteSink>(&mut self, msg: &StoredMessage, seq: u64, ctx: &Ctx, writer: &mut FrameWriter<W>) {
        writer.push_deliver(&msg.deliver_ref(seq));
        ctx.metrics.messages_out.inc();
        self.order.sent(seq);
    }

    /// Writes room log entries `(after, until]` from the store, in pages, preceded by
    /// `history_truncated` when part of the range is past retention.
    pub(super) fn fill_room<'a, W: ByteSink>(
        &'a mut self,
        ctx: &'a Ctx,
        writer: &'a mut FrameWriter<W>,
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
                    self.room_sent(room, first_seq - 1);
                }
                first_page = false;
                let n = entries.len();
                ctx.metrics.sync_messages.inc_by(n as u64);
                for e in entries {
                    writer.push_deliver(&e.msg.deliver_ref(e.seq));
                    ctx.metrics.messages_out.inc();
                    self.room_sent(room, e.seq);
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

    /// Handles one command from the session's queue: at once when it can be
    /// ([`Session::on_cmd_now`]), else through the boxed [`Session::on_cmd`].
    pub(super) async fn handle_cmd<W: ByteSink>(
        &mut self,
        cmd: SessionCmd,
        ctx: &Ctx,
        writer: &mut FrameWriter<W>,
    ) -> Flow {
        match self.on_cmd_now(cmd, ctx, writer) {
            Ok(flow) => flow,
            Err(cmd) => Box::pin(self.on_cmd(cmd, ctx, writer)).await,
        }
    }

    /// Handles any command, those that must first read the store (a gap, a catch-up) or wait
    /// (a kick's or drain's linger) included.
    async fn on_cmd<W: ByteSink>(&mut self, cmd: SessionCmd, ctx: &Ctx, writer: &mut FrameWriter<W>) -> Flow {
        match cmd {
            SessionCmd::SendAck(ack, Some(room)) => {
                // A room message: ack.seq is its place in the room's log.
                let seq = ack.seq;
                writer.push(&Frame::SendAck(*ack));
                if let Step::FillGap { after, until } = self.room_step(&room, seq) {
                    if let Err(c) = self.fill_room(ctx, writer, &room, after, Some(until)).await {
                        return Flow::End(c);
                    }
                }
                self.room_sent(&room, seq);
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
            SessionCmd::RoomLive(d) => {
                let room = &d.msg.to.id;
                match self.room_step(room, d.seq) {
                    Step::Skip => return Flow::Continue,
                    Step::Send => {}
                    Step::FillGap { after, until } => {
                        if let Err(c) = self.fill_room(ctx, writer, room, after, Some(until)).await {
                            return Flow::End(c);
                        }
                    }
                }
                self.write_room_live(&d, ctx, writer);
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
                self.write_live(&msg, seq, ctx, writer);
                Flow::Continue
            }
            // Written at once, never handed back by `on_cmd_now`.
            cmd @ (SessionCmd::SendError(_) | SessionCmd::Frame(_)) => {
                self.on_cmd_now(cmd, ctx, writer).unwrap_or(Flow::Continue)
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
            SessionCmd::GoAway => {
                info!("node draining: go_away");
                writer.push(&Frame::GoAway(GoAway { reason: "draining".into(), message: "node draining".into() }));
                writer.linger().await;
                Flow::End(CloseCode::GoingAway)
            }
            SessionCmd::Lagged => {
                // Live deliveries were dropped: read the inbox and every room from where this
                // device is.
                ctx.metrics.sync_gaps.inc();
                let after = self.order.next() - 1;
                if let Err(c) = self.fill(ctx, writer, after, None).await {
                    return Flow::End(c);
                }
                let rooms: Vec<(String, u64)> =
                    self.rooms.iter().map(|(r, c)| (r.clone(), c.order.next() - 1)).collect();
                for (room, after) in rooms {
                    if let Err(c) = self.fill_room(ctx, writer, &room, after, None).await {
                        return Flow::End(c);
                    }
                }
                Flow::Continue
            }
            SessionCmd::Superseded => {
                info!("superseded by a new connection of the same device");
                Flow::End(CloseCode::Superseded)
            }
        }
    }
}
