//! The write pipeline: every send and cursor update of the node goes through a writer task that
//! groups what arrived while the previous batch was committing into the next transaction
//! (group commit), then fans the results out in commit order.
//!
//! One writer on SQLite (one writer connection). On a shared database a node runs several,
//! each owning the senders that hash to it: a sender's messages stay in one writer, so they
//! are stored in the order they came; batches of different writers commit concurrently. Seqs
//! stay in order per inbox because the database hands them out under the inbox's head-row lock;
//! a session that gets a later seq first reads the earlier one from the store (it is committed:
//! its batch held the lock the later one waited for).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tether_proto::{ErrorCode, SendAck, SendError};
use tokio::sync::{mpsc, oneshot};

use tether_proto::AddressKind;

use crate::hub::{Hub, RoomDelivery, SessionCmd, SessionTx, UserDelivery};
use crate::metrics::Metrics;
use crate::store::{Appended, CursorUpdate, NewMessage, Refusal, Store, StoreError};

/// Name prefix of the writer threads of stores that want one.
pub const WRITER_THREAD: &str = "tether-writer-";

/// Who asked for a send and wants its answer.
#[derive(Debug)]
pub enum Origin {
    /// A session: the answer is a `send_ack` / `send_error` frame; the session's other devices
    /// get the message, this one does not.
    Session {
        /// The sending session's id.
        id: u64,
        /// Its command queue.
        tx: SessionTx,
    },
    /// The admin API waits for the stored message.
    Admin(oneshot::Sender<Result<Result<Appended, Refusal>, String>>),
}

/// One unit of work for the pipeline.
#[derive(Debug)]
pub enum Job {
    /// Store a message and deliver it; a room message carries the room's membership as the
    /// sender's session checked it, for the fan-out.
    Send(NewMessage, Origin, Option<Arc<HashSet<String>>>),
    /// Store a device's cumulative ack.
    Cursor(CursorUpdate),
}

/// Handle for submitting jobs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    writers: Vec<mpsc::Sender<Job>>,
}

/// The pipeline is shut down.
#[derive(Debug, thiserror::Error)]
#[error("pipeline closed")]
pub struct Closed;

impl Pipeline {
    /// Starts `writers` writer tasks (at least one). `queue` bounds the jobs waiting per writer
    /// (senders wait beyond it), `batch` the messages per transaction.
    pub fn start(
        store: Arc<dyn Store>,
        hub: Arc<dyn Hub>,
        metrics: Arc<Metrics>,
        queue: usize,
        batch: usize,
        writers: usize,
    ) -> Self {
        let own_thread = store.wants_own_thread();
        let writers = (0..writers.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel(queue);
                let task = run(rx, store.clone(), hub.clone(), metrics.clone(), batch.max(1));
                if own_thread {
                    // The writer loop on a thread of its own (see `Store::wants_own_thread`); it
                    // ends when the pipeline's senders are gone.
                    spawn_writer_thread(i, task);
                } else {
                    tokio::spawn(task);
                }
                tx
            })
            .collect();
        Pipeline { writers }
    }

    /// Submits a job to the writer of its user (the sender, or the cursor's owner), waiting
    /// while that writer's queue is full.
    pub async fn submit(&self, job: Job) -> Result<(), Closed> {
        let user = match &job {
            Job::Send(m, _, _) => &m.sender,
            Job::Cursor(c) => &c.user,
        };
        let i = if self.writers.len() == 1 {
            0
        } else {
            use std::hash::BuildHasher;
            // A fixed hasher: a user always goes to the same writer.
            let h =
                std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(user);
            (h % self.writers.len() as u64) as usize
        };
        self.writers[i].send(job).await.map_err(|_| Closed)
    }
}

/// Starts writer thread `i` running `task`. A thread that cannot be started leaves the task
/// to run among the sessions.
fn spawn_writer_thread(i: usize, task: impl std::future::Future<Output = ()> + Send + 'static) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "no runtime for a writer thread: the writer runs among the sessions");
            tokio::spawn(task);
            return;
        }
    };
    // The task is handed over once the thread runs.
    let (hand, take) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new().name(format!("{WRITER_THREAD}{i}")).spawn(move || {
        if let Ok(task) = take.recv() {
            rt.block_on(task);
        }
    });
    match spawned {
        Ok(_) => {
            if let Err(std::sync::mpsc::SendError(task)) = hand.send(task) {
                tokio::spawn(task);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not start the writer thread: the writer runs among the sessions");
            tokio::spawn(task);
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    store: Arc<dyn Store>,
    hub: Arc<dyn Hub>,
    metrics: Arc<Metrics>,
    batch: usize,
) {
    let mut jobs = Vec::with_capacity(batch);
    loop {
        jobs.clear();
        if rx.recv_many(&mut jobs, batch).await == 0 {
            return;
        }
        let mut msgs = Vec::with_capacity(jobs.len());
        let mut origins = Vec::with_capacity(jobs.len());
        let mut cursors = Vec::new();
        for job in jobs.drain(..) {
            match job {
                Job::Send(m, o, members) => {
                    msgs.push(m);
                    origins.push((o, members));
                }
                Job::Cursor(c) => cursors.push(c),
            }
        }
        let n = msgs.len();
        let started = Instant::now();
        let client_ids: Vec<String> = msgs.iter().map(|m| m.client_msg_id.clone()).collect();
        let res = store.append(msgs, cursors).await;
        metrics.store_op("append", started.elapsed().as_secs_f64());
        metrics.store_batch.observe(n as f64);
        match res {
            Ok(appended) => {
                // Message by message, its deliveries before its answer: a session then never
                // sees a later entry of its inbox before the ack of its own earlier one. (A
                // cluster hub batches what goes to other nodes on its own.)
                let mut deliveries = Vec::new();
                for ((a, (origin, members)), client_msg_id) in appended.into_iter().zip(origins).zip(client_ids) {
                    let answer = fan_out(&*hub, &metrics, a, origin, members, client_msg_id, &mut deliveries);
                    if !deliveries.is_empty() {
                        hub.deliver(std::mem::take(&mut deliveries));
                    }
                    answer.send();
                }
            }
            Err(e) => {
                fail(&metrics, e, origins.into_iter().map(|(o, _)| o).collect(), client_ids);
                // The batch may have committed although the store could not say so (a failed
                // fsync): nobody was told, and its recipients got nothing live. The senders
                // retry and get the original ack; the recipients read their inboxes again.
                hub.resync_all();
            }
        }
    }
}

/// The answer to one send, given once the batch's deliveries are handed over.
enum Answer {
    Ack(SessionTx, Box<SendAck>, Option<String>),
    Refused(SessionTx, Box<SendError>),
    Admin(oneshot::Sender<Result<Result<Appended, Refusal>, String>>, Result<Appended, Refusal>),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Ack(tx, ack, room) => {
                tx.send(SessionCmd::SendAck(ack, room));
            }
            Answer::Refused(tx, e) => {
                tx.send(SessionCmd::SendError(e));
            }
            Answer::Admin(reply, r) => {
                let _ = reply.send(Ok(r));
            }
        }
    }
}

/// Hands one stored message to the hub (a room's at once; its inbox entries are put in
/// `deliveries`) and returns the answer for its sender.
fn fan_out(
    hub: &dyn Hub,
    metrics: &Metrics,
    a: Result<Appended, Refusal>,
    origin: Origin,
    members: Option<Arc<HashSet<String>>>,
    client_msg_id: String,
    deliveries: &mut Vec<UserDelivery>,
) -> Answer {
    let a = match a {
        Ok(a) => a,
        Err(refusal) => {
            metrics
                .send_errors
                .get_or_create(&crate::metrics::ResultLabel { result: format!("{:?}", refusal.code) })
                .inc();
            return match origin {
                Origin::Session { tx, .. } => Answer::Refused(
                    tx,
                    Box::new(SendError { client_msg_id, code: refusal.code, message: refusal.message }),
                ),
                Origin::Admin(reply) => Answer::Admin(reply, Err(refusal)),
            };
        }
    };
    let origin_id = match &origin {
        Origin::Session { id, .. } => Some(*id),
        Origin::Admin(_) => None,
    };
    if a.duplicate {
        metrics.retries.inc();
    } else {
        metrics.messages_in.inc();
        if a.msg.to.kind == AddressKind::Room {
            // Everyone in the room, the sender's other devices too; not the sending session.
            match members {
                Some(members) => {
                    let mut frame = bytes::BytesMut::new();
                    if tether_proto::encode_deliver(&a.msg.deliver_ref(a.sender_seq), &mut frame).is_ok() {
                        let d = Arc::new(RoomDelivery { msg: a.msg.clone(), seq: a.sender_seq, frame: frame.freeze() });
                        hub.deliver_room(d, members, origin_id);
                    }
                }
                None => {
                    // No membership came with the job: the sessions read their rooms from the
                    // store instead.
                    tracing::warn!(room = %a.msg.to.id, "room message without its membership; sessions resync");
                    hub.resync_all();
                }
            }
        } else {
            for (user, seq) in &a.recipients {
                let except = if *user == a.msg.sender { origin_id } else { None };
                deliveries.push(UserDelivery { user: user.clone(), msg: a.msg.clone(), seq: *seq, except });
            }
        }
    }
    match origin {
        Origin::Session { tx, .. } => {
            let room = (a.msg.to.kind == AddressKind::Room).then(|| a.msg.to.id.clone());
            let ack = SendAck {
                client_msg_id: a.msg.client_msg_id.clone(),
                msg_id: a.msg.msg_id,
                seq: a.sender_seq,
                ts: a.msg.ts,
                duplicate: a.duplicate,
            };
            Answer::Ack(tx, Box::new(ack), room)
        }
        Origin::Admin(reply) => Answer::Admin(reply, Ok(a)),
    }
}

fn fail(metrics: &Metrics, e: StoreError, origins: Vec<Origin>, client_ids: Vec<String>) {
    tracing::error!(error = %e, messages = origins.len(), "store append failed; senders will retry");
    for (origin, client_msg_id) in origins.into_iter().zip(client_ids) {
        metrics.send_errors.get_or_create(&crate::metrics::ResultLabel { result: "unavailable".into() }).inc();
        match origin {
            Origin::Session { tx, .. } => {
                tx.send(SessionCmd::SendError(Box::new(SendError {
                    client_msg_id,
                    code: ErrorCode::Unavailable,
                    message: "store unavailable, retry".into(),
                })));
            }
            Origin::Admin(reply) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }
}
