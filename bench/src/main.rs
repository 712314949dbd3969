//! `tether-bench`: load generator and baselines for Tether (see docs/bench.md).
//!
//! ```text
//! cargo build --release -p tether-server -p tether-bench
//! target/release/tether-bench pairs                      # max rate: Tether, the bare relay, the peers
//! target/release/tether-bench pairs --rate 30000         # fixed rate (open loop)
//! target/release/tether-bench idle --sessions 10000      # memory per idle session
//! target/release/tether-bench flood --connections 2500   # memory per connection waiting for login
//! ```

mod ffi;
mod flood;
mod idle;
mod load;
mod peers;
mod relay;
mod room;
mod wire;
mod writepath;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jsonwebtoken::{encode, EncodingKey, Header};
use tether_proto::Credential;

use crate::load::{Report, Shape, Target};

const SECRET: &str = "bench-secret";

#[derive(Parser)]
#[command(name = "tether-bench", about = "Tether load generator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// 1:1 pairs against a fresh node and, in the same run, against the bare-quinn relay and
    /// the peer brokers that are installed (Mosquitto with MQTT QoS 1, NATS JetStream).
    Pairs {
        /// The tether-server binary (default: next to this one).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Sender -> recipient pairs.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages per sender.
        #[arg(long, default_value_t = 3000)]
        messages: u64,
        /// Messages in flight per sender.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Fixed total rate in messages/s (open loop); default: max rate.
        #[arg(long)]
        rate: Option<f64>,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Skip the relay baseline.
        #[arg(long)]
        no_relay: bool,
        /// Skip the peer brokers (Mosquitto, NATS JetStream).
        #[arg(long)]
        no_peers: bool,
        /// Extra flags for the node (e.g. `--store-sync normal`), space separated.
        #[arg(long, default_value = "")]
        server_args: String,
        /// Prefix of the generated user names (distinct per run when several runs share one
        /// database, e.g. two nodes on one PostgreSQL).
        #[arg(long, default_value = "t")]
        user_prefix: String,
    },
    /// Memory per idle session with heartbeats.
    Idle {
        /// The tether-server binary (default: next to this one).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Sessions to open.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Heartbeat interval in seconds.
        #[arg(long, default_value_t = 20)]
        heartbeat: u64,
        /// How long to hold the sessions before measuring, in seconds.
        #[arg(long, default_value_t = 10)]
        hold: u64,
        /// Measure the bare-quinn relay instead of a node (the transport's own cost).
        #[arg(long)]
        relay: bool,
    },
    /// Room fan-out: one sender, N online members.
    Room {
        /// The tether-server binary (default: next to this one).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Online members.
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Messages sent into the room.
        #[arg(long, default_value_t = 500)]
        messages: u64,
        /// Sends in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Fixed rate of messages into the room per second (open loop); default: max rate.
        #[arg(long)]
        rate: Option<f64>,
        /// Extra flags for the node (e.g. `--database-url sqlite:///tmp/t.db`), space separated.
        #[arg(long, default_value = "")]
        server_args: String,
    },
    /// Login flood: connections that never log in; memory per waiting connection and after.
    Flood {
        /// The tether-server binary (default: next to this one).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Connections to open.
        #[arg(long, default_value_t = 2500)]
        connections: usize,
        /// Seconds to wait after they closed before measuring again.
        #[arg(long, default_value_t = 5)]
        settle: u64,
        /// Extra flags for the node, space separated.
        #[arg(long, default_value = "")]
        server_args: String,
    },
    /// FFI overhead baseline: `send_text` per call on a paused client and acks per event
    /// through a listener, on the Rust API (compare with bindings/scripts/kotlin-bench).
    Ffi {
        /// The tether-server binary (default: next to this one).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Messages.
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
    },
    /// Cluster routing: 1:1 pairs on one node without Redis (the single-node rate), then on a
    /// cluster of `--nodes` nodes (one database, one Redis) with sender and recipient on the
    /// same node, then on two different nodes (every message crosses nodes); and the pub/sub
    /// messages each node received that it did not need.
    Cluster {
        /// The tether-server binary (default: next to this one).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// The shared database (PostgreSQL or MySQL URL; a fresh one per run is best).
        #[arg(long)]
        database_url: String,
        /// Redis URL (comma-separated seeds with `--redis-cluster`).
        #[arg(long)]
        redis_url: String,
        /// The Redis URLs are a Redis Cluster's.
        #[arg(long)]
        redis_cluster: bool,
        /// Gateway nodes in the cluster (traffic runs between the first two).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Sender -> recipient pairs.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages per sender.
        #[arg(long, default_value_t = 2000)]
        messages: u64,
        /// Messages in flight per sender.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Prefix of the generated user names (distinct per run on one database).
        #[arg(long, default_value = "c")]
        user_prefix: String,
    },
    /// The durable write path alone: batches committed through the SQLite store (fsync per
    /// commit) against the same batches appended to a checksummed log with one fdatasync each.
    Writepath {
        /// Batches to commit.
        #[arg(long, default_value_t = 2000)]
        batches: u64,
        /// Messages per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Sender -> recipient pairs the messages rotate over.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Directory for the files (default: a temp dir; give one on the disk to measure).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Internal: run the bare relay (spawned by `pairs`).
    RelayServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn jwt(user: &str) -> String {
    #[derive(serde::Serialize)]
    struct C<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 86400;
    encode(&Header::default(), &C { sub: user, exp }, &EncodingKey::from_secret(SECRET.as_bytes())).expect("jwt")
}

struct Proc {
    child: Child,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sibling_bin(name: &str) -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join(name))).unwrap_or_else(|| PathBuf::from(name))
}

fn start_node(bin: &Path, dir: &Path, extra: &str) -> Proc {
    // Warnings only, unless the extra arguments set the log filter themselves.
    let log = if extra.split_whitespace().any(|a| a == "--log") { None } else { Some(["--log", "warn"]) };
    let mut child = Command::new(bin)
        .args(["--data-dir", &dir.display().to_string(), "--quic-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--jwt-secret", SECRET, "--admin-token", "bench"])
        .args(log.into_iter().flatten())
        .args(["--send-rate", "100000000", "--send-burst", "100000000"])
        // The load comes from one address: lift the per-address admission limits.
        .args(["--handshakes-per-ip", "1000000", "--handshake-burst", "1000000", "--max-pending-logins", "100000"])
        .args(extra.split_whitespace())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("start {}: {e} (build it with `cargo build --release -p tether-server`)", bin.display())
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    let addr = line
        .split_whitespace()
        .find_map(|p| p.strip_prefix("quic="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("node did not start: {line:?}"));
    let admin = line.split_whitespace().find_map(|p| p.strip_prefix("admin=")).and_then(|a| a.parse().ok());
    Proc { child, addr, admin }
}

/// A fresh node in `dir` and the load target for it (JWT logins, its dev certificate pinned).
fn node_target(server_bin: Option<PathBuf>, dir: &Path, extra: &str) -> (Proc, Target) {
    let bin = server_bin.unwrap_or_else(|| sibling_bin("tether-server"));
    let node = start_node(&bin, dir, extra);
    let target = Target {
        addr: node.addr,
        cert: dir.join("dev-cert.pem"),
        credential: Arc::new(|u: &str| Credential::Token(jwt(u))),
    };
    (node, target)
}

/// The load target for a node whose certificate is in `cert_dir`.
fn target_of(node: &Proc, cert_dir: &Path) -> Target {
    Target {
        addr: node.addr,
        cert: cert_dir.join("dev-cert.pem"),
        credential: Arc::new(|u: &str| Credential::Token(jwt(u))),
    }
}

fn start_relay(dir: &Path) -> Proc {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["relay-server", "--addr", "127.0.0.1:0", "--data-dir", &dir.display().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    let addr = line.trim().strip_prefix("RELAY_READY ").and_then(|a| a.parse().ok()).expect("relay addr");
    Proc { child, addr, admin: None }
}

/// Average store batch size and append latency, from the node's /metrics.
/// One metric's value from a node's `/metrics` (0 when absent).
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else { return 0.0 };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0.0;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn store_summary(admin: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else { return String::new() };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    let get = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let batches = get("tether_store_batch_messages_count");
    let msgs = get("tether_store_batch_messages_sum");
    let append_n = get("tether_store_latency_seconds_count{op=\"append\"}");
    let append_s = get("tether_store_latency_seconds_sum{op=\"append\"}");
    // The log store's writer thread CPU (absent on SQLite, whose writes run inside sqlx).
    let cpu = body.contains("tether_store_writer_cpu_seconds_total").then(|| {
        let cpu = get("tether_store_writer_cpu_seconds_total");
        format!(" writer_cpu={cpu:.2}s writer_cpu_per_msg={:.2}us", cpu / msgs.max(1.0) * 1e6)
    });
    format!(
        "store: batches={batches} avg_batch={:.0} msgs avg_append={:.2}ms append_busy={:.2}s{}",
        msgs / batches.max(1.0),
        append_s / append_n.max(1.0) * 1000.0,
        append_s,
        cpu.unwrap_or_default()
    )
}

fn print_report(name: &str, r: &Report, cpu: f64, gen_cpu: f64) {
    println!(
        "{name:<8} delivered={} elapsed={:.2}s rate={:.0} msg/s p50={:.2}ms p99={:.2}ms p999={:.2}ms max={:.2}ms server_cpu={:.0}% generator_cpu={:.0}%",
        r.delivered,
        r.elapsed.as_secs_f64(),
        r.rate(),
        r.ms(0.5),
        r.ms(0.99),
        r.ms(0.999),
        r.latency.max() as f64 / 1000.0,
        cpu * 100.0 / r.elapsed.as_secs_f64(),
        gen_cpu * 100.0 / r.elapsed.as_secs_f64(),
    );
}

/// A peer broker's line and its ratio line, like the relay's; or one line saying it is missing.
fn print_peer(name: &str, tether: &Report, run: Result<peers::PeerRun, peers::PeerMissing>) {
    match run {
        Ok((r, (cpu, gen_cpu))) => {
            print_report(name, &r, cpu, gen_cpu);
            println!(
                "ratio tether/{name}: throughput={:.2} p99_latency={:.2}",
                tether.rate() / r.rate(),
                tether.ms(0.99) / r.ms(0.99).max(0.001)
            );
        }
        Err(missing) => println!("{name:<8} skipped: {missing}"),
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        match cli.cmd {
            Cmd::RelayServer { addr, data_dir } => relay::serve(addr, &data_dir).await,
            Cmd::Pairs {
                server_bin,
                pairs,
                messages,
                window,
                rate,
                payload,
                no_relay,
                no_peers,
                server_args,
                user_prefix,
            } => {
                let shape = Shape { pairs, messages, window, rate, payload };
                println!(
                    "shape: pairs={pairs} messages/sender={messages} window={window} payload={payload}B mode={}",
                    rate.map(|r| format!("fixed {r:.0} msg/s")).unwrap_or_else(|| "max rate".into())
                );
                let dir = tempfile::tempdir().expect("dir");
                let (node, target) = node_target(server_bin, dir.path(), &server_args);
                let pid = node.child.id();
                let me = std::process::id();
                let (cpu0, gen0) = (idle::cpu_secs(pid), idle::cpu_secs(me));
                let tether = load::run(target, shape, &user_prefix).await;
                print_report("tether", &tether, idle::cpu_secs(pid) - cpu0, idle::cpu_secs(me) - gen0);
                println!("tether_server_rss_mb={:.1}", idle::rss_bytes(pid) as f64 / 1048576.0);
                if let Some(admin) = node.admin {
                    println!("{}", store_summary(admin).await);
                }
                drop(node);
                if !no_relay {
                    let rdir = tempfile::tempdir().expect("dir");
                    let relay = start_relay(rdir.path());
                    let target = Target {
                        addr: relay.addr,
                        cert: rdir.path().join("dev-cert.pem"),
                        credential: Arc::new(|u: &str| Credential::Token(u.to_string())),
                    };
                    let pid = relay.child.id();
                    let (cpu0, gen0) = (idle::cpu_secs(pid), idle::cpu_secs(me));
                    let base = load::run(target, shape, "r").await;
                    print_report("relay", &base, idle::cpu_secs(pid) - cpu0, idle::cpu_secs(me) - gen0);
                    println!(
                        "ratio tether/relay: throughput={:.2} p99_latency={:.2}",
                        tether.rate() / base.rate(),
                        tether.ms(0.99) / base.ms(0.99).max(0.001)
                    );
                }
                if !no_peers {
                    print_peer("mosquitto", &tether, peers::mosquitto(shape, "bench").await);
                    print_peer("jetstream", &tether, peers::jetstream(shape, "bench").await);
                }
            }
            Cmd::Cluster {
                server_bin,
                database_url,
                redis_url,
                redis_cluster,
                nodes,
                pairs,
                messages,
                window,
                payload,
                user_prefix,
            } => {
                let shape = Shape { pairs, messages, window, rate: None, payload };
                println!(
                    "shape: pairs={pairs} messages/sender={messages} window={window} payload={payload}B nodes={nodes}"
                );
                let bin = server_bin.unwrap_or_else(|| sibling_bin("tether-server"));
                let me = std::process::id();
                // 1. One node on the same database, no Redis: the single-node rate.
                let single_rate = {
                    let dir = tempfile::tempdir().expect("dir");
                    let node = start_node(&bin, dir.path(), &format!("--database-url {database_url} --node-id 90"));
                    let t = target_of(&node, dir.path());
                    let (cpu0, gen0) = (idle::cpu_secs(node.child.id()), idle::cpu_secs(me));
                    let r = load::run(t, shape, &format!("{user_prefix}a")).await;
                    print_report("single", &r, idle::cpu_secs(node.child.id()) - cpu0, idle::cpu_secs(me) - gen0);
                    r.rate()
                };
                // 2. The cluster: every node on the database and Redis, one certificate.
                let dirs: Vec<tempfile::TempDir> = (0..nodes.max(2)).map(|_| tempfile::tempdir().expect("dir")).collect();
                let mut procs = Vec::new();
                for (i, dir) in dirs.iter().enumerate() {
                    let mut args = format!(
                        "--database-url {database_url} --redis-url {redis_url} --node-id {} --resume-secret bench",
                        i + 1
                    );
                    if redis_cluster {
                        args.push_str(" --redis-cluster");
                    }
                    if i > 0 {
                        let first = dirs[0].path();
                        args.push_str(&format!(
                            " --tls-cert {} --tls-key {}",
                            first.join("dev-cert.pem").display(),
                            first.join("dev-key.pem").display()
                        ));
                    }
                    procs.push(start_node(&bin, dir.path(), &args));
                }
                let targets: Vec<Target> = procs.iter().map(|p| target_of(p, dirs[0].path())).collect();
                let admins: Vec<SocketAddr> = procs.iter().filter_map(|p| p.admin).collect();
                let bus = |used: &'static str| {
                    let admins = admins.clone();
                    async move {
                        let mut v = Vec::new();
                        for a in &admins {
                            v.push(metric(*a, &format!("tether_bus_received_total{{kind=\"inbox\",used=\"{used}\"}}")).await);
                        }
                        v
                    }
                };
                let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
                let cpu = |pids: &[u32]| pids.iter().map(|p| idle::cpu_secs(*p)).sum::<f64>();
                let (cpu0, gen0) = (cpu(&pids), idle::cpu_secs(me));
                let same = load::run_between(targets[0].clone(), targets[0].clone(), shape, &format!("{user_prefix}b")).await;
                print_report("same", &same, cpu(&pids) - cpu0, idle::cpu_secs(me) - gen0);
                let (n0, u0) = (bus("needed").await, bus("unneeded").await);
                let (cpu0, gen0) = (cpu(&pids), idle::cpu_secs(me));
                let cross = load::run_between(targets[0].clone(), targets[1].clone(), shape, &format!("{user_prefix}c")).await;
                print_report("cross", &cross, cpu(&pids) - cpu0, idle::cpu_secs(me) - gen0);
                let (n1, u1) = (bus("needed").await, bus("unneeded").await);
                println!(
                    "ratio cross/single: throughput={:.2} (cross {:.0} msg/s, single {:.0} msg/s, same-node on the cluster {:.0} msg/s)",
                    cross.rate() / single_rate,
                    cross.rate(),
                    single_rate,
                    same.rate()
                );
                for (i, _) in admins.iter().enumerate() {
                    println!(
                        "node-{} inbox pub/sub messages received during the cross-node run: needed={} unneeded={}",
                        i + 1,
                        n1[i] - n0[i],
                        u1[i] - u0[i]
                    );
                }
                // The seed design broadcasts every message to every node: each of the N nodes
                // receives each message, and only the recipient's node needs it.
                let n = procs.len() as u64;
                println!(
                    "broadcast-to-all baseline for the same run: {} deliveries to nodes, {} of them unneeded ({} per message); measured unneeded: {}",
                    cross.delivered * n,
                    cross.delivered * (n - 1),
                    n - 1,
                    u1.iter().zip(&u0).map(|(a, b)| a - b).sum::<f64>()
                );
            }
            Cmd::Writepath { batches, batch, payload, pairs, dir } => {
                let shape = writepath::WriteShape { batches, batch, payload, pairs };
                println!("shape: batches={batches} batch={batch} payload={payload}B pairs={pairs} (fsync per batch)");
                let base = dir.unwrap_or_else(std::env::temp_dir);
                let sqlite_dir = tempfile::tempdir_in(&base).expect("dir");
                println!("{}", writepath::sqlite(sqlite_dir.path(), shape).await.line("sqlite"));
                let store_dir = tempfile::tempdir_in(&base).expect("dir");
                println!("{}", writepath::log_store(store_dir.path(), shape).await.line("log-store"));
                let fjall_dir = tempfile::tempdir_in(&base).expect("dir");
                println!("{}", writepath::fjall(fjall_dir.path(), shape).line("fjall"));
                let log_dir = tempfile::tempdir_in(&base).expect("dir");
                println!("{}", writepath::log(log_dir.path(), shape).line("bare-append"));
            }
            Cmd::Room { server_bin, members, messages, window, payload, rate, server_args } => {
                println!(
                    "shape: room of {members} online members, 1 sender, {messages} messages, window={window}, payload={payload}B, mode={}",
                    rate.map(|r| format!("fixed {r:.0} msg/s")).unwrap_or_else(|| "max rate".into())
                );
                let dir = tempfile::tempdir().expect("dir");
                let (node, target) = node_target(server_bin, dir.path(), &server_args);
                let shape = room::RoomShape { members, messages, window, payload, rate };
                let (r, cpu) = room::run(target, shape, (node.child.id(), std::process::id())).await;
                print_report("room", &r, cpu.0, cpu.1);
                if let Some(admin) = node.admin {
                    println!("{}", store_summary(admin).await);
                }
            }
            Cmd::Ffi { server_bin, messages } => {
                let dir = tempfile::tempdir().expect("dir");
                let bin = server_bin.unwrap_or_else(|| sibling_bin("tether-server"));
                let node = start_node(&bin, dir.path(), "");
                // Warm-up run; its figures are not reported.
                ffi::run(node.addr, dir.path().join("dev-cert.pem"), jwt("ffi-warm"), 2000).await;
                let (send_us, event_us) =
                    ffi::run(node.addr, dir.path().join("dev-cert.pem"), jwt("ffi-rust"), messages).await;
                println!("ffi-baseline rust messages={messages} send_call_us={send_us:.2} ack_event_us={event_us:.2}");
            }
            Cmd::Flood { server_bin, connections, settle, server_args } => {
                let dir = tempfile::tempdir().expect("dir");
                let bin = server_bin.unwrap_or_else(|| sibling_bin("tether-server"));
                let args = format!("--login-timeout 300s {server_args}");
                let node = start_node(&bin, dir.path(), &args);
                let pid = node.child.id();
                let cert = dir.path().join("dev-cert.pem");
                // Warm up (allocator arenas, runtime) with a few, then measure.
                let (warm, _) = flood::open_waiting(node.addr, cert.clone(), 50).await;
                drop(warm);
                tokio::time::sleep(Duration::from_secs(2)).await;
                let before = idle::rss_bytes(pid);
                let (open, refused) = flood::open_waiting(node.addr, cert, connections).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let during = idle::rss_bytes(pid);
                let n = open.len();
                for c in &open {
                    c.close(0u32.into(), b"flood over");
                }
                drop(open);
                tokio::time::sleep(Duration::from_secs(settle)).await;
                let after = idle::rss_bytes(pid);
                if let Some(admin) = node.admin {
                    println!(
                        "after the flood: tether_connections={} tether_pending_logins={}",
                        metric(admin, "tether_connections").await,
                        metric(admin, "tether_pending_logins").await
                    );
                }
                println!(
                    "flood connections={n} refused={refused} server_rss_before={:.1}MiB during={:.1}MiB after={:.1}MiB \
                     per_waiting_connection={:.1}KiB still_held_after={:.1}MiB",
                    before as f64 / 1048576.0,
                    during as f64 / 1048576.0,
                    after as f64 / 1048576.0,
                    during.saturating_sub(before) as f64 / n.max(1) as f64 / 1024.0,
                    after.saturating_sub(before) as f64 / 1048576.0,
                );
            }
            Cmd::Idle { server_bin, sessions, heartbeat, hold, relay } => {
                let dir = tempfile::tempdir().expect("dir");
                let bin = server_bin.unwrap_or_else(|| sibling_bin("tether-server"));
                let node = if relay { start_relay(dir.path()) } else { start_node(&bin, dir.path(), "") };
                let pid = node.child.id();
                let cert = dir.path().join("dev-cert.pem");
                let cred: Arc<dyn Fn(&str) -> Credential + Send + Sync> = if relay {
                    Arc::new(|u: &str| Credential::Token(u.to_string()))
                } else {
                    Arc::new(|u: &str| Credential::Token(jwt(u)))
                };
                // Warm up (allocator arenas, store pools) with a few sessions, then measure.
                let warm = idle::open_sessions(node.addr, cert.clone(), cred.clone(), 50, Duration::from_secs(heartbeat)).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let before = idle::rss_bytes(pid);
                let t0 = std::time::Instant::now();
                let keep = idle::open_sessions(node.addr, cert, cred, sessions, Duration::from_secs(heartbeat)).await;
                let login_secs = t0.elapsed().as_secs_f64();
                tokio::time::sleep(Duration::from_secs(hold)).await;
                let after = idle::rss_bytes(pid);
                println!(
                    "idle target={} sessions={sessions} logins_in={login_secs:.1}s server_rss_before={:.1}MiB after={:.1}MiB per_session={:.1}KiB",
                    if relay { "relay" } else { "tether" },
                    before as f64 / 1048576.0,
                    after as f64 / 1048576.0,
                    (after.saturating_sub(before)) as f64 / sessions as f64 / 1024.0
                );
                drop(keep);
                drop(warm);
            }
        }
    });
}
