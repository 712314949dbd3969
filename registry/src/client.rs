//! The client gateway nodes use: [`EurekaClient`] (register, renew, status, metadata, cancel,
//! discovery) against one or more registries with failover, and [`Heartbeat`], a tokio task
//! that keeps one instance registered.
//!
//! The client speaks JSON (`Accept: application/json`) over plain HTTP/1.1. Failover: requests
//! go to the registry that answered last; a connection failure, a timeout or a 5xx answer moves
//! on to the next URL, any other answer (including 404) is final.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{self, DecodeError, Format};
use crate::model::{Application, Applications, InstanceInfo, InstanceStatus};
use crate::transport::{path_segment, query, Answer, BaseUrl, Transport, TransportError, UrlError};

/// Default per-request timeout of [`EurekaClient`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to the registries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A registry URL is unusable.
    #[error(transparent)]
    InvalidUrl(#[from] UrlError),
    /// No registry URL was given.
    #[error("no registry URL configured")]
    NoUrls,
    /// No registry answered (the error of the last one tried).
    #[error("no registry answered; last: {url}: {error}")]
    Unreachable {
        /// The last registry tried.
        url: String,
        /// Why it did not answer.
        error: TransportError,
    },
    /// The registry does not know the instance (404).
    #[error("{url}: instance {app}/{id} is not registered")]
    NotRegistered {
        /// The registry that answered.
        url: String,
        /// Application.
        app: String,
        /// Instance id.
        id: String,
    },
    /// An unexpected answer.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The registry that answered.
        url: String,
        /// HTTP status.
        status: u16,
        /// The start of the body (the registry's reason, e.g. "Missing ip address").
        body: String,
    },
    /// An answer that could not be decoded.
    #[error("{url} sent a body that could not be decoded: {error}")]
    Decode {
        /// The registry that answered.
        url: String,
        /// The decoding error.
        error: DecodeError,
    },
    /// The heartbeat task is gone.
    #[error("the heartbeat task has stopped")]
    HeartbeatStopped,
}

/// Outcome of [`EurekaClient::renew`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease was renewed.
    Renewed,
    /// The registry did not know the instance (404), so it was registered again.
    Reregistered,
}

/// A Eureka client over plain HTTP with failover between registries.
#[derive(Debug, Clone)]
pub struct EurekaClient {
    urls: Arc<[BaseUrl]>,
    preferred: Arc<AtomicUsize>,
    transport: Transport,
}

struct Reply {
    url: String,
    answer: Answer,
}

impl EurekaClient {
    /// A client for these registry base URLs (`http://host:port/eureka/`), tried in order.
    pub fn new<I, S>(urls: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_timeout(urls, DEFAULT_TIMEOUT)
    }

    /// Like [`EurekaClient::new`] with a per-request timeout (connect included).
    pub fn with_timeout<I, S>(urls: I, timeout: Duration) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<BaseUrl> = urls
            .into_iter()
            .map(|u| u.as_ref().trim().to_string())
            .filter(|u| !u.is_empty())
            .map(|u| BaseUrl::parse(&u))
            .collect::<Result<_, _>>()?;
        if urls.is_empty() {
            return Err(ClientError::NoUrls);
        }
        Ok(Self { urls: urls.into(), preferred: Arc::new(AtomicUsize::new(0)), transport: Transport::new(timeout) })
    }

    /// The registry base URLs, in failover order.
    pub fn urls(&self) -> impl Iterator<Item = String> + '_ {
        self.urls.iter().map(BaseUrl::to_string)
    }

    async fn call(&self, method: Method, relative: &str, body: Option<String>) -> Result<Reply, ClientError> {
        let n = self.urls.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let idx = (start + k) % n;
            let base = &self.urls[idx];
            let uri = base.join(relative)?;
            let url = uri.to_string();
            let body = body.clone().map(|b| (Format::Json, b));
            match self.transport.send(method.clone(), uri, &[], body).await {
                Ok(answer) if answer.status.is_server_error() => {
                    tracing::debug!(%url, status = %answer.status, "registry error, trying the next one");
                    last = Some(ClientError::Status { url, status: answer.status.as_u16(), body: answer.body_text() });
                }
                Ok(answer) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(Reply { url, answer });
                }
                Err(error) => {
                    tracing::debug!(%url, %error, "registry unreachable, trying the next one");
                    last = Some(ClientError::Unreachable { url, error });
                }
            }
        }
        Err(last.unwrap_or(ClientError::NoUrls))
    }

    fn expect_ok(reply: Reply, app: &str, id: &str) -> Result<Reply, ClientError> {
        match reply.answer.status {
            s if s.is_success() => Ok(reply),
            StatusCode::NOT_FOUND => Err(ClientError::NotRegistered { url: reply.url, app: app.into(), id: id.into() }),
            s => {
                Err(ClientError::Status { url: reply.url.clone(), status: s.as_u16(), body: reply.answer.body_text() })
            }
        }
    }

    fn instance_path(app: &str, id: &str) -> String {
        format!("apps/{}/{}", path_segment(&app.to_uppercase()), path_segment(id))
    }

    /// Registers an instance (`POST apps/{app}`, expects 204).
    pub async fn register(&self, info: &InstanceInfo) -> Result<(), ClientError> {
        let relative = format!("apps/{}", path_segment(&info.app.to_uppercase()));
        let reply = self.call(Method::POST, &relative, Some(codec::encode_instance(info, Format::Json))).await?;
        Self::expect_ok(reply, &info.app, info.id()).map(|_| ())
    }

    /// Renews the lease of `info` (`PUT apps/{app}/{id}?status=..&lastDirtyTimestamp=..`); when
    /// the registry answers 404 (unknown instance, or it wants a fresh copy) registers `info`.
    pub async fn renew(&self, info: &InstanceInfo) -> Result<Renewal, ClientError> {
        let dirty = info.last_dirty_timestamp.to_string();
        let relative = format!(
            "{}?{}",
            Self::instance_path(&info.app, info.id()),
            query([("status", info.status.as_str()), ("lastDirtyTimestamp", dirty.as_str())])
        );
        let reply = self.call(Method::PUT, &relative, None).await?;
        match Self::expect_ok(reply, &info.app, info.id()) {
            Ok(_) => Ok(Renewal::Renewed),
            Err(ClientError::NotRegistered { .. }) => {
                self.register(info).await?;
                Ok(Renewal::Reregistered)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets a status override (`PUT apps/{app}/{id}/status?value=..`), e.g. OUT_OF_SERVICE to
    /// drain a node or UP to put it back.
    pub async fn set_status(&self, app: &str, id: &str, status: InstanceStatus) -> Result<(), ClientError> {
        let relative = format!("{}/status?{}", Self::instance_path(app, id), query([("value", status.as_str())]));
        let reply = self.call(Method::PUT, &relative, None).await?;
        Self::expect_ok(reply, app, id).map(|_| ())
    }

    /// Removes a status override (`DELETE apps/{app}/{id}/status[?value=..]`). With `new_status`
    /// the instance gets that status at once; without, it becomes UNKNOWN until it re-registers
    /// (Eureka's behaviour; the next renewal gets 404 and re-registers).
    pub async fn delete_status_override(
        &self,
        app: &str,
        id: &str,
        new_status: Option<InstanceStatus>,
    ) -> Result<(), ClientError> {
        let mut relative = format!("{}/status", Self::instance_path(app, id));
        if let Some(s) = new_status {
            relative.push('?');
            relative.push_str(&query([("value", s.as_str())]));
        }
        let reply = self.call(Method::DELETE, &relative, None).await?;
        Self::expect_ok(reply, app, id).map(|_| ())
    }

    /// Adds or replaces metadata entries (`PUT apps/{app}/{id}/metadata?k=v&..`).
    pub async fn update_metadata<'a>(
        &self,
        app: &str,
        id: &str,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), ClientError> {
        let relative = format!("{}/metadata?{}", Self::instance_path(app, id), query(entries));
        let reply = self.call(Method::PUT, &relative, None).await?;
        Self::expect_ok(reply, app, id).map(|_| ())
    }

    /// Cancels the lease (`DELETE apps/{app}/{id}`): the instance leaves the registry.
    pub async fn cancel(&self, app: &str, id: &str) -> Result<(), ClientError> {
        let reply = self.call(Method::DELETE, &Self::instance_path(app, id), None).await?;
        Self::expect_ok(reply, app, id).map(|_| ())
    }

    async fn get_decoded<T>(
        &self,
        relative: &str,
        decode: fn(&[u8], Format) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, ClientError> {
        let reply = self.call(Method::GET, relative, None).await?;
        match reply.answer.status {
            StatusCode::OK => {
                let format =
                    Format::of_body(reply.answer.content_type.as_deref(), &reply.answer.body).unwrap_or(Format::Json);
                decode(&reply.answer.body, format)
                    .map(Some)
                    .map_err(|error| ClientError::Decode { url: reply.url, error })
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => {
                Err(ClientError::Status { url: reply.url.clone(), status: s.as_u16(), body: reply.answer.body_text() })
            }
        }
    }

    /// The full registry (`GET apps`).
    pub async fn apps(&self) -> Result<Applications, ClientError> {
        Ok(self.get_decoded("apps", codec::decode_applications).await?.unwrap_or_default())
    }

    /// The changes of the last few minutes (`GET apps/delta`).
    pub async fn delta(&self) -> Result<Applications, ClientError> {
        Ok(self.get_decoded("apps/delta", codec::decode_applications).await?.unwrap_or_default())
    }

    /// One application (`GET apps/{app}`); `None` when it has no instances.
    pub async fn app(&self, name: &str) -> Result<Option<Application>, ClientError> {
        self.get_decoded(&format!("apps/{}", path_segment(&name.to_uppercase())), codec::decode_application).await
    }

    /// One instance (`GET apps/{app}/{id}`); `None` when not registered.
    pub async fn instance(&self, app: &str, id: &str) -> Result<Option<InstanceInfo>, ClientError> {
        self.get_decoded(&Self::instance_path(app, id), codec::decode_instance).await
    }

    /// Instances behind a VIP address (`GET vips/{vip}`).
    pub async fn vip(&self, vip: &str) -> Result<Applications, ClientError> {
        Ok(self
            .get_decoded(&format!("vips/{}", path_segment(vip)), codec::decode_applications)
            .await?
            .unwrap_or_default())
    }
}

/// Settings of a [`Heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// How often to renew (Eureka's default: 30 s). Registration is retried at the same pace.
    pub renewal_interval: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self { renewal_interval: Duration::from_secs(30) }
    }
}

enum Command {
    SetStatus(InstanceStatus, oneshot::Sender<Result<(), ClientError>>),
    ClearOverride(oneshot::Sender<Result<(), ClientError>>),
    Metadata(Vec<(String, String)>, oneshot::Sender<Result<(), ClientError>>),
    Shutdown(oneshot::Sender<Result<(), ClientError>>),
}

/// A tokio task that keeps one instance registered: registers at once (retrying every
/// interval until it succeeds), renews every `renewal_interval` (re-registering when the
/// registry forgot the instance, then re-applying a status set through it), and on
/// [`Heartbeat::shutdown`] cancels the lease.
#[derive(Debug)]
pub struct Heartbeat {
    tx: mpsc::Sender<Command>,
    registered: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Starts the task (needs a tokio runtime).
    pub fn start(client: EurekaClient, info: InstanceInfo, config: HeartbeatConfig) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let registered = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_heartbeat(client, info, config, rx, registered.clone()));
        Self { tx, registered, task }
    }

    /// Whether the last registration or renewal succeeded.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), ClientError>>) -> Command,
    ) -> Result<(), ClientError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| ClientError::HeartbeatStopped)?;
        answer.await.map_err(|_| ClientError::HeartbeatStopped)?
    }

    /// Sets the instance's status in the registry (OUT_OF_SERVICE to drain, UP to resume); it is
    /// re-applied after any later re-registration.
    pub async fn set_status(&self, status: InstanceStatus) -> Result<(), ClientError> {
        self.ask(|r| Command::SetStatus(status, r)).await
    }

    /// Removes a status set with [`Heartbeat::set_status`]; the instance is UP again at once.
    pub async fn clear_status(&self) -> Result<(), ClientError> {
        self.ask(Command::ClearOverride).await
    }

    /// Adds or replaces metadata entries, in the registry and in the copy used to re-register.
    pub async fn update_metadata(&self, entries: Vec<(String, String)>) -> Result<(), ClientError> {
        self.ask(|r| Command::Metadata(entries, r)).await
    }

    /// Stops renewing and cancels the lease, through a shared reference (the task ends; later
    /// calls fail with [`ClientError::HeartbeatStopped`]).
    pub async fn stop(&self) -> Result<(), ClientError> {
        self.ask(Command::Shutdown).await
    }

    /// Stops renewing and cancels the lease (an instance the registry no longer knows counts
    /// as cancelled).
    pub async fn shutdown(self) -> Result<(), ClientError> {
        let result = self.ask(Command::Shutdown).await;
        let _ = self.task.await;
        result
    }
}

async fn run_heartbeat(
    client: EurekaClient,
    mut info: InstanceInfo,
    config: HeartbeatConfig,
    mut rx: mpsc::Receiver<Command>,
    registered: Arc<AtomicBool>,
) {
    let app = info.app.clone();
    let id = info.id().to_string();
    let mut status_override: Option<InstanceStatus> = None;
    let mut ticker = tokio::time::interval(config.renewal_interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let fresh_registration = if registered.load(Ordering::Relaxed) {
                    match client.renew(&info).await {
                        Ok(Renewal::Renewed) => false,
                        Ok(Renewal::Reregistered) => {
                            tracing::info!(%app, %id, "registry had forgotten the instance: registered again");
                            true
                        }
                        Err(e) => {
                            // Register afresh on the next beat (registration is idempotent).
                            tracing::warn!(%app, %id, error = %e, "renewal failed");
                            registered.store(false, Ordering::Relaxed);
                            false
                        }
                    }
                } else {
                    match client.register(&info).await {
                        Ok(()) => {
                            tracing::info!(%app, %id, "registered");
                            registered.store(true, Ordering::Relaxed);
                            true
                        }
                        Err(e) => {
                            tracing::warn!(%app, %id, error = %e, "registration failed, retrying");
                            false
                        }
                    }
                };
                if fresh_registration {
                    if let Some(s) = status_override {
                        if let Err(e) = client.set_status(&app, &id, s).await {
                            tracing::warn!(%app, %id, error = %e, "re-applying status failed");
                        }
                    }
                }
            }
            cmd = rx.recv() => match cmd {
                Some(Command::SetStatus(status, reply)) => {
                    status_override = Some(status);
                    let _ = reply.send(client.set_status(&app, &id, status).await);
                }
                Some(Command::ClearOverride(reply)) => {
                    status_override = None;
                    let _ = reply.send(client.delete_status_override(&app, &id, Some(info.status)).await);
                }
                Some(Command::Metadata(entries, reply)) => {
                    info.metadata.extend(entries.iter().cloned());
                    let r = client.update_metadata(&app, &id, entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))).await;
                    let _ = reply.send(r);
                }
                Some(Command::Shutdown(reply)) => {
                    let r = match client.cancel(&app, &id).await {
                        Ok(()) | Err(ClientError::NotRegistered { .. }) => Ok(()),
                        Err(e) => Err(e),
                    };
                    registered.store(false, Ordering::Relaxed);
                    tracing::info!(%app, %id, ok = r.is_ok(), "cancelled");
                    let _ = reply.send(r);
                    return;
                }
                None => {
                    // Every handle was dropped without shutdown: stop renewing; the lease expires.
                    return;
                }
            }
        }
    }
}
