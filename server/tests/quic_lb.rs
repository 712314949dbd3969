//! QUIC-LB connection ids over real QUIC on loopback.
//!
//! Between quinn clients and quinn server endpoints built with
//! `tether_server::quic_lb::endpoint_config` sits a small QUIC-LB router, a user-space UDP
//! relay that behaves like a layer-4 load balancer: it routes every short-header packet by the
//! server id in its destination connection id (`quic_lb::packet_dcid` + `quic_lb::route`) and
//! drops the ones it cannot route; long-header packets with a client-chosen DCID go by 4-tuple
//! (the draft's fallback). Each client address gets its own upstream socket (like a NAT), so
//! when a client migrates the server sees a new peer address too. The router records every
//! client->server datagram, and the tests check that every short-header packet, before and
//! after migration, names the node that holds the connection.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_server::quic_lb::{self, Decoded, HeaderForm, QuicLbConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Echo rounds per phase (before / after the migration).
const ROUNDS: usize = 12;
/// Bytes per echo round (several packets each way).
const CHUNK: usize = 3000;
/// Short-header client->server packets each phase must show at least.
const MIN_SHORT: usize = 10;
/// Upper bound for one phase of traffic.
const PHASE_TIMEOUT: Duration = Duration::from_secs(20);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client->server datagram as the router saw it.
#[derive(Debug, Clone)]
struct Seen {
    from: SocketAddr,
    form: HeaderForm,
    dcid: Vec<u8>,
    /// Where it went; `None` = dropped as unroutable.
    backend: Option<usize>,
    /// Routed by the server id in its DCID (not by the 4-tuple fallback).
    by_cid: bool,
}

/// A QUIC-LB router in front of `backends`.
struct Router {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Backend for new flows whose DCID is unroutable (the fallback); the test sets it.
    fallback: Arc<Mutex<usize>>,
    /// (client address, backend) -> address of the router's socket towards that backend
    /// (the peer address the backend sees).
    upstream: Arc<Mutex<HashMap<(SocketAddr, usize), SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Router {
    async fn start(backends: Vec<SocketAddr>, configs: Vec<QuicLbConfig>) -> Router {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("router socket"));
        let addr = front.local_addr().expect("router addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let fallback = Arc::new(Mutex::new(0));
        let upstream = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(route_loop(
            front,
            backends,
            configs,
            Arc::clone(&seen),
            Arc::clone(&fallback),
            Arc::clone(&upstream),
        ));
        Router { addr, seen, fallback, upstream, task }
    }

    fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }

    fn upstream_of(&self, client: SocketAddr, backend: usize) -> Option<SocketAddr> {
        lock(&self.upstream).get(&(client, backend)).copied()
    }
}

async fn route_loop(
    front: Arc<UdpSocket>,
    backends: Vec<SocketAddr>,
    configs: Vec<QuicLbConfig>,
    seen: Arc<Mutex<Vec<Seen>>>,
    fallback: Arc<Mutex<usize>>,
    upstream: Arc<Mutex<HashMap<(SocketAddr, usize), SocketAddr>>>,
) {
    // All servers of one QUIC-LB config issue CIDs of the same length.
    let cid_len = configs.first().map(QuicLbConfig::cid_len).unwrap_or(0);
    let mut flows: HashMap<(SocketAddr, usize), Arc<UdpSocket>> = HashMap::new();
    let mut by_tuple: HashMap<SocketAddr, usize> = HashMap::new();
    let mut return_paths = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match front.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let pkt = &buf[..n];
        let Some(p) = quic_lb::packet_dcid(pkt, cid_len) else { continue };
        let routed = if p.form == HeaderForm::Short || p.dcid.len() == cid_len {
            quic_lb::route(p.dcid, &configs).and_then(|c| configs.iter().position(|x| x == c))
        } else {
            None
        };
        let backend = match (routed, p.form) {
            (Some(b), _) => Some(b),
            // A client-chosen DCID (Initial, 0-RTT) or a server CID we cannot read: 4-tuple.
            (None, HeaderForm::Long) => Some(*by_tuple.entry(from).or_insert_with(|| *lock(&fallback))),
            // An unroutable 1-RTT packet: a real balancer would fall back to the 4-tuple; this
            // one drops it, so a CID that does not name its node breaks the connection.
            (None, HeaderForm::Short) => None,
        };
        lock(&seen).push(Seen { from, form: p.form, dcid: p.dcid.to_vec(), backend, by_cid: routed.is_some() });
        let Some(b) = backend else { continue };
        let sock = match flows.get(&(from, b)) {
            Some(s) => Arc::clone(s),
            None => {
                let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("upstream socket"));
                s.connect(backends[b]).await.expect("connect upstream");
                lock(&upstream).insert((from, b), s.local_addr().expect("upstream addr"));
                return_paths.push(tokio::spawn(return_path(Arc::clone(&s), Arc::clone(&front), from)));
                flows.insert((from, b), Arc::clone(&s));
                s
            }
        };
        let _ = sock.send(pkt).await;
    }
}

/// Server -> client: whatever the backend sends on this flow goes back to the client address.
async fn return_path(upstream: Arc<UdpSocket>, front: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(n) => {
                let _ = front.send_to(&buf[..n], client).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// A quinn server endpoint that echoes every bidi stream.
struct Backend {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<quinn::Connection>,
}

/// The dev certificate (shared by all backends of a test) in `dir`.
fn cert(dir: &Path) -> (PathBuf, PathBuf) {
    tether_server::tls::ensure_dev_cert(dir, &[]).expect("dev cert")
}

fn backend(dir: &Path, endpoint_config: quinn::EndpointConfig) -> Backend {
    let (cert, key) = cert(dir);
    let (certs, key) = tether_server::tls::load_pem(&cert, &key).expect("load pem");
    let crypto = tether_server::tls::quic_server_crypto(certs, key).expect("server crypto");
    let server_config = quinn::ServerConfig::with_crypto(crypto);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("server socket");
    let runtime = quinn::default_runtime().expect("runtime");
    let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime).expect("endpoint");
    let addr = endpoint.local_addr().expect("server addr");
    let (tx, conns) = mpsc::unbounded_channel();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let _ = tx.send(conn.clone());
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(Some(n)) = recv.read(&mut buf).await {
                            if send.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    });
    Backend { endpoint, addr, conns }
}

fn client(dir: &Path) -> quinn::Endpoint {
    let (cert, _) = cert(dir);
    let crypto = tether_sdk::tls::client_crypto(&tether_sdk::Trust::pinned(cert)).expect("client tls");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic client tls");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep
}

/// `ROUNDS` echo rounds of `CHUNK` bytes on one stream.
async fn exchange(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, tag: u8) {
    for round in 0..ROUNDS {
        let msg: Vec<u8> = (0..CHUNK).map(|i| (i as u8) ^ (round as u8) ^ tag).collect();
        send.write_all(&msg).await.expect("write");
        let mut back = vec![0u8; CHUNK];
        recv.read_exact(&mut back).await.expect("read echo");
        assert_eq!(back, msg, "echo of round {round}");
    }
}

/// A client connection through the router to backend `b`, with its stream.
struct Session {
    ep: quinn::Endpoint,
    conn: quinn::Connection,
    server_conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    before: SocketAddr,
}

async fn connect(dir: &Path, router: &Router, backend: &mut Backend, b: usize) -> Session {
    *lock(&router.fallback) = b;
    let ep = client(dir);
    let before = ep.local_addr().expect("client addr");
    let conn = tokio::time::timeout(PHASE_TIMEOUT, async {
        ep.connect(router.addr, "localhost").expect("connect").await.expect("handshake")
    })
    .await
    .expect("handshake in time");
    let (send, recv) = conn.open_bi().await.expect("open stream");
    Session { ep, conn, server_conn: accepted(backend).await, send, recv, before }
}

/// The server side of the connection just made (the backend reports each accepted one).
async fn accepted(backend: &mut Backend) -> quinn::Connection {
    tokio::time::timeout(PHASE_TIMEOUT, backend.conns.recv()).await.expect("server conn in time").expect("server conn")
}

/// Moves the client to a fresh UDP socket (a new address: connection migration).
fn migrate(s: &Session) -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("new client socket");
    s.ep.rebind(socket).expect("rebind");
    let after = s.ep.local_addr().expect("new client addr");
    assert_ne!(after, s.before, "rebind gave a new address");
    after
}

/// Every short-header packet `from` sent went by CID to backend `b` and names `cfg`'s server;
/// returns their DCIDs.
fn check_phase(seen: &[Seen], from: SocketAddr, b: usize, configs: &[QuicLbConfig], phase: &str) -> HashSet<Vec<u8>> {
    let want = Decoded { config_id: configs[b].config_id, server_id: configs[b].server_id.clone() };
    let shorts: Vec<&Seen> = seen.iter().filter(|s| s.from == from && s.form == HeaderForm::Short).collect();
    assert!(
        shorts.len() >= MIN_SHORT,
        "{phase}: only {} short-header packets from {from} (want >= {MIN_SHORT})",
        shorts.len()
    );
    for s in &shorts {
        assert_eq!(quic_lb::decode(&s.dcid, configs), Some(want.clone()), "{phase}: DCID {}", hex::encode(&s.dcid));
        assert_eq!(s.dcid.len(), configs[b].cid_len(), "{phase}: DCID length");
        assert_eq!((s.backend, s.by_cid), (Some(b), true), "{phase}: routed by CID to backend {b}");
    }
    shorts.iter().map(|s| s.dcid.clone()).collect()
}

/// Checks one connection, before and after its migration, against backend `b`.
fn check_connection(router: &Router, s: &Session, after: SocketAddr, b: usize, configs: &[QuicLbConfig]) -> usize {
    let seen = router.seen();
    let before_ids = check_phase(&seen, s.before, b, configs, "before migration");
    let after_ids = check_phase(&seen, after, b, configs, "after migration");
    // After moving, the client switched to a CID the server issued in NEW_CONNECTION_ID: new
    // CIDs keep the layout.
    assert!(
        after_ids.difference(&before_ids).next().is_some(),
        "the client did not switch to a fresh CID after migrating"
    );
    // Handshake packets carried the server's first CID (its Initial's SCID): routed by CID too.
    let long_by_cid = seen
        .iter()
        .filter(|x| x.from == s.before && x.form == HeaderForm::Long && x.by_cid && x.backend == Some(b))
        .count();
    assert!(long_by_cid >= 1, "no long-header packet was routed by the server's first CID");
    // The server followed the client to its new address.
    let up_before = router.upstream_of(s.before, b).expect("flow before");
    let up_after = router.upstream_of(after, b).expect("flow after");
    assert_ne!(up_before, up_after);
    assert_eq!(s.server_conn.remote_address(), up_after, "server migrated to the new path");
    seen.iter().filter(|x| (x.from == s.before || x.from == after) && x.form == HeaderForm::Short).count()
}

fn no_unroutable_short_packets(router: &Router) {
    let dropped: Vec<String> = router
        .seen()
        .iter()
        .filter(|s| s.form == HeaderForm::Short && s.backend.is_none())
        .map(|s| hex::encode(&s.dcid))
        .collect();
    assert!(dropped.is_empty(), "unroutable 1-RTT packets: {dropped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrated_client_keeps_routing_to_its_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = QuicLbConfig::for_node(7);
    let mut node = backend(dir.path(), quic_lb::endpoint_config(&cfg));
    let configs = vec![cfg];
    let router = Router::start(vec![node.addr], configs.clone()).await;

    let mut s = connect(dir.path(), &router, &mut node, 0).await;
    tokio::time::timeout(PHASE_TIMEOUT, exchange(&mut s.send, &mut s.recv, 0x11)).await.expect("echo before");
    assert_eq!(s.server_conn.remote_address(), router.upstream_of(s.before, 0).expect("flow"));

    let after = migrate(&s);
    tokio::time::timeout(PHASE_TIMEOUT, exchange(&mut s.send, &mut s.recv, 0x22)).await.expect("echo after");

    let shorts = check_connection(&router, &s, after, 0, &configs);
    no_unroutable_short_packets(&router);
    eprintln!("{shorts} short-header packets, all named server id {}", configs[0].server_id_hex());

    s.conn.close(0u32.into(), b"done");
    s.ep.wait_idle().await;
    node.endpoint.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_each_connection_routes_to_its_own_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let configs = vec![QuicLbConfig::for_node(1), QuicLbConfig::new(0, vec![0x00, 0x02], 6).expect("config of node 2")];
    let mut nodes: Vec<Backend> = configs.iter().map(|c| backend(dir.path(), quic_lb::endpoint_config(c))).collect();
    let router = Router::start(nodes.iter().map(|n| n.addr).collect(), configs.clone()).await;

    let mut a = connect(dir.path(), &router, &mut nodes[0], 0).await;
    let mut b = connect(dir.path(), &router, &mut nodes[1], 1).await;
    let (ra, rb) = tokio::join!(
        tokio::time::timeout(PHASE_TIMEOUT, exchange(&mut a.send, &mut a.recv, 0xa0)),
        tokio::time::timeout(PHASE_TIMEOUT, exchange(&mut b.send, &mut b.recv, 0xb0)),
    );
    ra.expect("echo a before");
    rb.expect("echo b before");

    let a_after = migrate(&a);
    let b_after = migrate(&b);
    let (ra, rb) = tokio::join!(
        tokio::time::timeout(PHASE_TIMEOUT, exchange(&mut a.send, &mut a.recv, 0xa1)),
        tokio::time::timeout(PHASE_TIMEOUT, exchange(&mut b.send, &mut b.recv, 0xb1)),
    );
    ra.expect("echo a after");
    rb.expect("echo b after");

    check_connection(&router, &a, a_after, 0, &configs);
    check_connection(&router, &b, b_after, 1, &configs);
    no_unroutable_short_packets(&router);
    // Each node only ever saw its own connection.
    for s in [&a, &b] {
        s.conn.close(0u32.into(), b"done");
        s.ep.wait_idle().await;
    }
    for n in &mut nodes {
        assert!(n.conns.try_recv().is_err(), "a node accepted a second connection");
        n.endpoint.close(0u32.into(), b"done");
    }
}

/// Control: a node that issues quinn's default (random) connection ids cannot be reached
/// through the router once the handshake is over, so the tests above are sensitive to the CID
/// layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_default_cids_are_not_routable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = backend(dir.path(), quinn::EndpointConfig::default());
    let configs = vec![QuicLbConfig::for_node(1)];
    let router = Router::start(vec![node.addr], configs).await;

    // The handshake goes through on the 4-tuple fallback (long headers only).
    let mut s = connect(dir.path(), &router, &mut node, 0).await;
    let stuck = tokio::time::timeout(Duration::from_secs(2), exchange(&mut s.send, &mut s.recv, 0x33)).await;
    assert!(stuck.is_err(), "1-RTT data got through without routable CIDs");
    let dropped = router.seen().iter().filter(|x| x.form == HeaderForm::Short && x.backend.is_none()).count();
    assert!(dropped > 0, "the router dropped no 1-RTT packet");
    s.conn.close(0u32.into(), b"done");
    node.endpoint.close(0u32.into(), b"done");
}
