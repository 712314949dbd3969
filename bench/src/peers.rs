//! Peer brokers under the same 1:1 pairs load as Tether: Mosquitto (MQTT QoS 1) and NATS
//! JetStream (file storage, every publish acknowledged). Each run starts its own server on a
//! free localhost port in its own temp dir, drives it with the same [`Shape`] (pairs, messages
//! per sender, window of unacknowledged publishes, open-loop rate, payload with the send time
//! in its first 8 bytes) and returns the same [`Report`].
//!
//! Neither peer syncs each message to disk before acknowledging it: Mosquitto's persistence
//! is a snapshot of its database (on `autosave_interval` and at shutdown) and JetStream's
//! file store acknowledges once the message is written to its block file (page cache), with
//! an fsync only every two minutes (nats-server 2.9 has no `sync_interval: always`). Read the
//! figures with that in mind. Delivery is acknowledged on both, as on Tether: MQTT QoS 1
//! PUBACKs from the subscriber, and a durable JetStream consumer per recipient with explicit
//! acks.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, Barrier, OwnedSemaphorePermit, Semaphore};

use crate::load::{Report, Shape, Tally};
use crate::wire::Pace;

/// The JetStream stream of a run (one server per run).
const STREAM: &str = "bench_pairs";

/// A recipient that has received nothing for this long gives up (its count stays short).
const STALL: Duration = Duration::from_secs(10);

/// A peer broker whose server is not installed on this machine; the message says how to get it.
#[derive(Debug, Clone)]
pub struct PeerMissing(pub String);

impl fmt::Display for PeerMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One peer run: the report and the CPU seconds of (server, generator) over it.
pub type PeerRun = (Report, (f64, f64));

/// The pairs load against a fresh Mosquitto: one MQTT connection (clean session) per sender
/// and per recipient, recipient `i` subscribed with QoS 1 to `<prefix>/<i>` before the senders
/// start, publishes at QoS 1 with at most `shape.window` of them waiting for their PUBACK.
pub async fn mosquitto(shape: Shape, prefix: &str) -> Result<PeerRun, PeerMissing> {
    let bin = find_bin("mosquitto")
        .ok_or_else(|| PeerMissing("mosquitto not installed (apt-get install mosquitto)".into()))?;
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    // `user root` only matters when run as root: it keeps mosquitto from dropping to the
    // `mosquitto` user, which could not write the persistence file in our temp dir. The
    // window, not the broker, bounds the messages in flight and queued.
    let text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
         max_inflight_messages 0\nmax_queued_messages 1000000\nuser root\nlog_dest stderr\n\
         log_type error\nlog_type warning\n",
        dir.path().display()
    );
    std::fs::write(&conf, text).expect("write mosquitto.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    let server = Server::start(cmd, port, dir).await;
    let run = drive(
        shape,
        server.pid(),
        |i, barrier, epoch| {
            mqtt_recipient(port, format!("{prefix}/{i}"), format!("{prefix}-r{i}"), shape, barrier, epoch)
        },
        |i, barrier, epoch| mqtt_sender(port, format!("{prefix}/{i}"), format!("{prefix}-s{i}"), shape, barrier, epoch),
    )
    .await;
    drop(server);
    Ok(run)
}

/// The pairs load against a fresh NATS server with JetStream: a file-storage stream on
/// `<prefix>.>` is created first; sender `i` publishes to `<prefix>.<i>` through JetStream and
/// awaits each publish ack, at most `shape.window` unacknowledged. Recipient `i` reads through
/// its own durable pull consumer filtered to `<prefix>.<i>` and acks every message.
pub async fn jetstream(shape: Shape, prefix: &str) -> Result<PeerRun, PeerMissing> {
    let bin = find_bin("nats-server")
        .ok_or_else(|| PeerMissing("nats-server not installed (apt-get install nats-server)".into()))?;
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["-js", "-sd"]).arg(dir.path()).args(["-p", &port.to_string(), "-a", "127.0.0.1"]);
    let server = Server::start(cmd, port, dir).await;
    let js = jetstream::new(nats_connect(port, shape).await);
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{prefix}.>")],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create the JetStream stream");
    let run = drive(
        shape,
        server.pid(),
        |i, barrier, epoch| nats_recipient(port, format!("{prefix}.{i}"), shape, barrier, epoch),
        |i, barrier, epoch| nats_sender(port, format!("{prefix}.{i}"), shape, barrier, epoch),
    )
    .await;
    drop(js);
    drop(server);
    Ok(run)
}

/// A broker process started for one run; killed, and its temp dir removed, on drop.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Spawns `cmd` (output to `server.log` in `dir`) and waits until `port` accepts TCP.
    async fn start(mut cmd: Command, port: u16, dir: tempfile::TempDir) -> Server {
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).expect("server log");
        let child = cmd
            .stdout(log.try_clone().expect("server log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let mut server = Server { child, _dir: dir };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("{cmd:?} exited ({status}) before accepting connections:\n{log}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return server;
            }
            if Instant::now() > deadline {
                panic!("{cmd:?} does not accept connections on {addr} after 15 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name` on PATH, or in the sbin directories Debian installs brokers into (often not on a
/// non-root user's PATH).
fn find_bin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].into_iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// A localhost TCP port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Spawns the recipients and senders, starts the clock once all of them are connected (and the
/// recipients subscribed), and merges what the recipients saw.
async fn drive<R, RF, S, SF>(shape: Shape, server_pid: u32, recipient: R, sender: S) -> PeerRun
where
    R: Fn(usize, Arc<Barrier>, Instant) -> RF,
    RF: Future<Output = Tally> + Send + 'static,
    S: Fn(usize, Arc<Barrier>, Instant) -> SF,
    SF: Future<Output = ()> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(shape.pairs * 2 + 1));
    let epoch = Instant::now();
    let recv_tasks: Vec<_> = (0..shape.pairs).map(|i| tokio::spawn(recipient(i, barrier.clone(), epoch))).collect();
    let send_tasks: Vec<_> = (0..shape.pairs).map(|i| tokio::spawn(sender(i, barrier.clone(), epoch))).collect();
    barrier.wait().await;
    let me = std::process::id();
    let cpu0 = (crate::idle::cpu_secs(server_pid), crate::idle::cpu_secs(me));
    let report = crate::load::merge(Instant::now(), recv_tasks).await;
    for t in send_tasks {
        t.await.expect("sender");
    }
    let cpu = (crate::idle::cpu_secs(server_pid) - cpu0.0, crate::idle::cpu_secs(me) - cpu0.1);
    (report, cpu)
}

fn mqtt_client(port: u16, id: String, shape: Shape) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_clean_session(true);
    opts.set_keep_alive(Duration::from_secs(60));
    opts.set_inflight(shape.window.clamp(1, u16::MAX as usize) as u16);
    let max = (shape.payload + 1024).max(10 * 1024);
    opts.set_max_packet_size(max, max);
    AsyncClient::new(opts, shape.window.max(1) + 8)
}

/// Polls `el` until `done` accepts an event; panics if the connection fails first.
async fn mqtt_until(el: &mut EventLoop, what: &str, done: impl Fn(&Event) -> bool) {
    loop {
        match el.poll().await {
            Ok(ev) if done(&ev) => return,
            Ok(_) => {}
            Err(e) => panic!("mqtt {what}: {e}"),
        }
    }
}

/// Sends DISCONNECT and polls until it is written (or the connection is gone).
async fn mqtt_close(client: &AsyncClient, el: &mut EventLoop) {
    if client.disconnect().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = el.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                return;
            }
        }
    })
    .await;
}

async fn mqtt_recipient(
    port: u16,
    topic: String,
    id: String,
    shape: Shape,
    barrier: Arc<Barrier>,
    epoch: Instant,
) -> Tally {
    let (client, mut el) = mqtt_client(port, id, shape);
    client.subscribe(topic.as_str(), QoS::AtLeastOnce).await.expect("mqtt subscribe request");
    mqtt_until(&mut el, "subscribe", |ev| matches!(ev, Event::Incoming(Packet::SubAck(_)))).await;
    barrier.wait().await;
    let mut tally = Tally::new();
    while tally.n < shape.messages {
        // rumqttc answers each QoS 1 PUBLISH with its PUBACK inside `poll`.
        match tokio::time::timeout(STALL, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => tally.record(&p.payload, epoch),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!("mqtt recipient {topic}: {e} after {} messages", tally.n);
                return tally;
            }
            Err(_) => {
                eprintln!("mqtt recipient {topic}: nothing for {STALL:?} after {} messages", tally.n);
                break;
            }
        }
    }
    mqtt_close(&client, &mut el).await;
    tally
}

async fn mqtt_sender(port: u16, topic: String, id: String, shape: Shape, barrier: Arc<Barrier>, epoch: Instant) {
    let pace = Pace::per_sender(&shape);
    let (client, mut el) = mqtt_client(port, id, shape);
    mqtt_until(&mut el, "connect", |ev| matches!(ev, Event::Incoming(Packet::ConnAck(_)))).await;
    // A permit per publish in flight, handed back by each PUBACK the event loop reads.
    let permits = Arc::new(Semaphore::new(pace.window));
    let acked = permits.clone();
    let driver = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked.add_permits(1),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("mqtt sender: {e}");
                    acked.close();
                    return;
                }
            }
        }
    });
    barrier.wait().await;
    let start = Instant::now();
    for i in 0..pace.messages {
        let (stamp, wait) = pace.turn(start, i, epoch);
        if let Some(due) = wait {
            tokio::time::sleep_until(due.into()).await;
        }
        let Ok(permit) = permits.acquire().await else { break };
        permit.forget();
        if client.publish(topic.as_str(), QoS::AtLeastOnce, false, pace.payload(stamp)).await.is_err() {
            break;
        }
    }
    // Every permit back: every publish acknowledged.
    if permits.acquire_many(pace.window as u32).await.is_ok() {
        let _ = client.disconnect().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
}

async fn nats_connect(port: u16, shape: Shape) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        // A recipient's whole share fits in its subscription buffer: nothing dropped as a slow
        // consumer on the client side.
        .subscription_capacity((shape.messages as usize).max(65_536))
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .expect("connect to nats-server")
}

/// A recipient reads through its own durable JetStream pull consumer (filtered to its subject,
/// explicit acks) and acknowledges every message: the stream tracks what each recipient has
/// consumed, as Tether tracks each device's cursor. (A core NATS subscription on the subject
/// would skip JetStream on the delivery side altogether.)
async fn nats_recipient(port: u16, subject: String, shape: Shape, barrier: Arc<Barrier>, epoch: Instant) -> Tally {
    let js = jetstream::new(nats_connect(port, shape).await);
    let stream = js.get_stream(STREAM).await.expect("get the JetStream stream");
    let name: String = subject.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(name),
            filter_subject: subject.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .expect("create the recipient's consumer");
    let mut messages = consumer.messages().await.expect("consume");
    barrier.wait().await;
    let mut tally = Tally::new();
    while tally.n < shape.messages {
        match tokio::time::timeout(STALL, messages.next()).await {
            Ok(Some(Ok(m))) => {
                tally.record(&m.payload, epoch);
                if let Err(e) = m.ack().await {
                    eprintln!("jetstream ack {subject}: {e}");
                }
            }
            Ok(Some(Err(e))) => eprintln!("jetstream consumer {subject}: {e}"),
            Ok(None) => {
                eprintln!("nats recipient {subject}: consumer ended after {} messages", tally.n);
                break;
            }
            Err(_) => {
                eprintln!("nats recipient {subject}: nothing for {STALL:?} after {} messages", tally.n);
                break;
            }
        }
    }
    tally
}

async fn nats_sender(port: u16, subject: String, shape: Shape, barrier: Arc<Barrier>, epoch: Instant) {
    let pace = Pace::per_sender(&shape);
    let js = jetstream::new(nats_connect(port, shape).await);
    let subject = async_nats::Subject::from(subject);
    // Ack futures in publish order with the permit each holds; the ack task awaits them in
    // turn and so hands a permit back per JetStream publish ack.
    let permits = Arc::new(Semaphore::new(pace.window));
    let (tx, mut rx) = mpsc::unbounded_channel::<(jetstream::context::PublishAckFuture, OwnedSemaphorePermit)>();
    let acks = tokio::spawn(async move {
        while let Some((ack, permit)) = rx.recv().await {
            if let Err(e) = ack.await {
                eprintln!("jetstream publish ack: {e}");
            }
            drop(permit);
        }
    });
    barrier.wait().await;
    let start = Instant::now();
    for i in 0..pace.messages {
        let (stamp, wait) = pace.turn(start, i, epoch);
        if let Some(due) = wait {
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = permits.clone().acquire_owned().await.expect("permits");
        match js.publish(subject.clone(), Bytes::from(pace.payload(stamp))).await {
            Ok(ack) => {
                let _ = tx.send((ack, permit));
            }
            Err(e) => {
                eprintln!("jetstream publish: {e}");
                break;
            }
        }
    }
    drop(tx);
    acks.await.expect("jetstream acks");
}
