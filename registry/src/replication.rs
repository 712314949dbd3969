//! Peer replication, as Eureka's `PeerEurekaNode` does it: every change a client makes
//! (register, renew, cancel, status change and removal, metadata) is sent to every peer with
//! `x-netflix-discovery-replication: true`; a peer applies it without replicating it again.
//!
//! One task per peer sends that peer's changes in order. A failure (no connection, timeout,
//! 5xx) is retried with exponential backoff (100 ms doubling to 5 s) until the change is older
//! than `replication_retry_for`; the client's own request never waits for replication. A
//! replicated renewal or status change that the peer answers with 404 is followed by a
//! replicated registration of our current copy of the instance; a replicated renewal the peer
//! answers with a newer copy (200 with a body) makes us take that copy.

use std::sync::Weak;
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::sync::mpsc;

use crate::codec::{self, Format};
use crate::config::Config;
use crate::model::{InstanceInfo, InstanceStatus};
use crate::service::Inner;
use crate::transport::{path_segment, query, BaseUrl, Transport};

/// Header marking a request replicated from a peer.
pub const REPLICATION_HEADER: &str = "x-netflix-discovery-replication";

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One change to replicate.
#[derive(Debug, Clone)]
pub(crate) enum Task {
    Register(Box<InstanceInfo>),
    Heartbeat { app: String, id: String, status: InstanceStatus, overridden: InstanceStatus, last_dirty: u64 },
    Cancel { app: String, id: String },
    StatusUpdate { app: String, id: String, status: InstanceStatus, last_dirty: u64 },
    DeleteStatusOverride { app: String, id: String, value: Option<InstanceStatus>, last_dirty: u64 },
}

impl Task {
    fn name(&self) -> &'static str {
        match self {
            Task::Register(_) => "register",
            Task::Heartbeat { .. } => "heartbeat",
            Task::Cancel { .. } => "cancel",
            Task::StatusUpdate { .. } => "status",
            Task::DeleteStatusOverride { .. } => "delete-status",
        }
    }

    fn target(&self) -> (&str, &str) {
        match self {
            Task::Register(i) => (&i.app, &i.instance_id),
            Task::Heartbeat { app, id, .. }
            | Task::Cancel { app, id }
            | Task::StatusUpdate { app, id, .. }
            | Task::DeleteStatusOverride { app, id, .. } => (app, id),
        }
    }
}

struct Queued {
    task: Task,
    enqueued: Instant,
}

struct Peer {
    url: BaseUrl,
    tx: mpsc::Sender<Queued>,
}

/// The per-peer replication queues.
pub(crate) struct Replicator {
    peers: Vec<Peer>,
}

enum Outcome {
    Done,
    Retry(String),
    SendRegistration,
    TakeCopy(Box<InstanceInfo>),
    GiveUp(String),
}

impl Replicator {
    pub fn start(peers: &[BaseUrl], config: &Config, registry: Weak<Inner>) -> Self {
        let peers = peers
            .iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(config.replication_queue.max(1));
                let worker = Worker {
                    url: url.clone(),
                    transport: Transport::new(config.peer_timeout),
                    retry_for: config.replication_retry_for,
                    registry: registry.clone(),
                };
                tokio::spawn(worker.run(rx));
                Peer { url: url.clone(), tx }
            })
            .collect();
        Self { peers }
    }

    pub fn replicate(&self, task: Task) {
        for peer in &self.peers {
            let queued = Queued { task: task.clone(), enqueued: Instant::now() };
            if let Err(e) = peer.tx.try_send(queued) {
                let (app, id) = task.target();
                tracing::warn!(peer = %peer.url, action = task.name(), %app, %id, error = %e, "replication queue full or closed: change dropped");
            }
        }
    }
}

struct Worker {
    url: BaseUrl,
    transport: Transport,
    retry_for: Duration,
    registry: Weak<Inner>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        while let Some(Queued { mut task, enqueued }) = rx.recv().await {
            let deadline = enqueued + self.retry_for;
            let mut backoff = FIRST_BACKOFF;
            loop {
                let (app, id) = task.target();
                let (app, id) = (app.to_string(), id.to_string());
                if Instant::now() > deadline {
                    tracing::warn!(peer = %self.url, action = task.name(), %app, %id, "replication given up after retrying");
                    break;
                }
                match self.send(&task).await {
                    Outcome::Done => {
                        tracing::debug!(peer = %self.url, action = task.name(), %app, %id, "replicated");
                        break;
                    }
                    Outcome::Retry(reason) => {
                        tracing::debug!(peer = %self.url, action = task.name(), %app, %id, %reason, "replication failed, will retry");
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(backoff.min(left)).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Outcome::SendRegistration => {
                        let current = self.registry.upgrade().and_then(|r| r.with_registry(|r| r.instance(&app, &id)));
                        match current {
                            Some(info) => {
                                tracing::info!(peer = %self.url, %app, %id, "peer lacks the instance: replicating its registration");
                                task = Task::Register(Box::new(info));
                            }
                            None => break,
                        }
                    }
                    Outcome::TakeCopy(info) => {
                        tracing::info!(peer = %self.url, %app, %id, "peer has a newer copy: taking it");
                        if let Some(r) = self.registry.upgrade() {
                            r.apply_peer_copy(*info);
                        }
                        break;
                    }
                    Outcome::GiveUp(reason) => {
                        tracing::warn!(peer = %self.url, action = task.name(), %app, %id, %reason, "peer refused a replicated change");
                        break;
                    }
                }
            }
        }
    }

    async fn send(&self, task: &Task) -> Outcome {
        let inst = |app: &str, id: &str| format!("apps/{}/{}", path_segment(app), path_segment(id));
        let (method, relative, body) = match task {
            Task::Register(info) => (
                Method::POST,
                format!("apps/{}", path_segment(&info.app)),
                Some((Format::Json, codec::encode_instance(info, Format::Json))),
            ),
            Task::Heartbeat { app, id, status, overridden, last_dirty } => {
                let dirty = last_dirty.to_string();
                let mut q = vec![("status", status.as_str()), ("lastDirtyTimestamp", dirty.as_str())];
                if *overridden != InstanceStatus::Unknown {
                    q.push(("overriddenstatus", overridden.as_str()));
                }
                (Method::PUT, format!("{}?{}", inst(app, id), query(q)), None)
            }
            Task::Cancel { app, id } => (Method::DELETE, inst(app, id), None),
            Task::StatusUpdate { app, id, status, last_dirty } => {
                let dirty = last_dirty.to_string();
                let q = query([("value", status.as_str()), ("lastDirtyTimestamp", dirty.as_str())]);
                (Method::PUT, format!("{}/status?{q}", inst(app, id)), None)
            }
            Task::DeleteStatusOverride { app, id, value, last_dirty } => {
                let dirty = last_dirty.to_string();
                let mut q = vec![("lastDirtyTimestamp", dirty.as_str())];
                if let Some(v) = value {
                    q.push(("value", v.as_str()));
                }
                (Method::DELETE, format!("{}/status?{}", inst(app, id), query(q)), None)
            }
        };
        let uri = match self.url.join(&relative) {
            Ok(u) => u,
            Err(e) => return Outcome::GiveUp(e.to_string()),
        };
        let header = [(HeaderName::from_static(REPLICATION_HEADER), HeaderValue::from_static("true"))];
        let answer = match self.transport.send(method, uri, &header, body).await {
            Ok(a) => a,
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        let status = answer.status;
        if status.is_server_error() {
            return Outcome::Retry(format!("{status}: {}", answer.body_text()));
        }
        match (task, status) {
            (Task::Heartbeat { .. }, StatusCode::OK) if !answer.body.is_empty() => {
                let format = Format::of_body(answer.content_type.as_deref(), &answer.body).unwrap_or(Format::Json);
                match codec::decode_instance(&answer.body, format) {
                    Ok(info) => Outcome::TakeCopy(Box::new(info)),
                    Err(e) => Outcome::GiveUp(format!("undecodable copy from peer: {e}")),
                }
            }
            (
                Task::Heartbeat { .. } | Task::StatusUpdate { .. } | Task::DeleteStatusOverride { .. },
                StatusCode::NOT_FOUND,
            ) => Outcome::SendRegistration,
            (Task::Cancel { .. }, StatusCode::NOT_FOUND) => Outcome::Done,
            (_, s) if s.is_success() => Outcome::Done,
            (_, s) => Outcome::GiveUp(format!("{s}: {}", answer.body_text())),
        }
    }
}
