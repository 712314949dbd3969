//! A session's command queue: what the rest of the node tells a session task, bounded for live
//! deliveries so that a slow device costs no unbounded memory.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tether_proto::{Frame, KickReason, SendAck, SendError};
use tokio::sync::mpsc;

use crate::store::StoredMessage;

/// What the rest of the node tells a session task.
#[derive(Debug)]
pub enum SessionCmd {
    /// Answer to one of the session's own sends, with the room when it went to one (boxed to
    /// keep the command, and so every session's queue block, small).
    SendAck(Box<SendAck>, Option<String>),
    /// Refusal of one of the session's own sends.
    SendError(Box<SendError>),
    /// A room message, its `deliver` frame encoded once for every member.
    RoomLive(Arc<RoomDelivery>),
    /// A message landed in the session's inbox at `seq`.
    Live {
        /// The message.
        msg: Arc<StoredMessage>,
        /// Its seq in this session's user's inbox.
        seq: u64,
    },
    /// Write this frame (room events, presence, ...).
    Frame(Box<Frame>),
    /// End the session with a `kicked` frame.
    Kick(KickReason),
    /// The same device logged in again elsewhere: close quietly.
    Superseded,
    /// The node is draining: send `go_away` and close.
    GoAway,
    /// Live deliveries were dropped (the queue was full), or the node lost track of what it
    /// delivered: read the inbox and every room from where this device is. Queued once until
    /// the session takes it.
    Lagged,
}

/// A room message as every member's session writes it.
#[derive(Debug)]
pub struct RoomDelivery {
    /// The stored message (its `to` is the room).
    pub msg: Arc<StoredMessage>,
    /// Its seq in the room log.
    pub seq: u64,
    /// The encoded `deliver` frame, length prefix included.
    pub frame: bytes::Bytes,
}

/// The sending half of a session's command queue.
///
/// Live deliveries are bounded: past `limit` queued ones the session is sent
/// [`SessionCmd::Lagged`] (once, until it takes it) and reads what it missed from the store
/// instead, so a slow device never costs unbounded memory and never loses a message.
#[derive(Debug, Clone)]
pub struct SessionTx {
    tx: mpsc::UnboundedSender<SessionCmd>,
    queued: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
    limit: usize,
}

/// The receiving half of a session's command queue.
#[derive(Debug)]
pub struct SessionRx {
    rx: mpsc::UnboundedReceiver<SessionCmd>,
    queued: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
}

/// A session's command queue with `limit` live deliveries.
pub fn session_channel(limit: usize) -> (SessionTx, SessionRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let lagged = Arc::new(AtomicBool::new(false));
    (SessionTx { tx, queued: queued.clone(), lagged: lagged.clone(), limit }, SessionRx { rx, queued, lagged })
}

impl SessionTx {
    /// Queues a command that must not be dropped (acks, kicks). False if the session is gone.
    pub fn send(&self, cmd: SessionCmd) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Queues a live delivery, or marks the session lagged when its queue is full.
    pub fn deliver(&self, msg: Arc<StoredMessage>, seq: u64) {
        self.queue_live(SessionCmd::Live { msg, seq });
    }

    /// Queues a room delivery, or marks the session lagged when its queue is full.
    pub fn deliver_room(&self, d: Arc<RoomDelivery>) {
        self.queue_live(SessionCmd::RoomLive(d));
    }

    /// Makes the session read its inbox and rooms from the store, as if it had lagged.
    pub fn resync(&self) {
        // One marker in the queue until the session takes it (it clears the flag first).
        if !self.lagged.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(SessionCmd::Lagged);
        }
    }

    fn queue_live(&self, cmd: SessionCmd) {
        if self.queued.load(Ordering::Relaxed) >= self.limit {
            self.resync();
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(cmd).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl SessionRx {
    /// Next command; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<SessionCmd> {
        let cmd = self.rx.recv().await;
        self.account(&cmd);
        cmd
    }

    /// Next command if one is queued.
    pub fn try_recv(&mut self) -> Option<SessionCmd> {
        let cmd = self.rx.try_recv().ok();
        self.account(&cmd);
        cmd
    }

    fn account(&self, cmd: &Option<SessionCmd>) {
        match cmd {
            Some(SessionCmd::Live { .. } | SessionCmd::RoomLive(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
            // Taken: a drop from now on queues a new marker (the catch-up it starts reads
            // from the store what was dropped before this point).
            Some(SessionCmd::Lagged) => self.lagged.store(false, Ordering::Release),
            _ => {}
        }
    }
}
