//! A real `redis-server` for a test binary: started on a free port in its own temp dir (no
//! persistence), killed when dropped; or a local Redis Cluster of three masters.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    // Redis Cluster also uses port + 10000 for its bus: stay below 55535.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One redis-server process.
pub struct Redis {
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    cluster: bool,
    child: Option<Child>,
}

impl Redis {
    /// A standalone Redis on a free port.
    pub fn start() -> Redis {
        Redis::start_on(free_port(), false)
    }

    fn start_on(port: u16, cluster: bool) -> Redis {
        assert!(
            Command::new("redis-server").arg("--version").output().is_ok(),
            "redis-server is not installed (./scripts/test installs it)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = Redis { dir, port, cluster, child: None };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cli(self.port, &["ping"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not answer on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: every key and subscription is gone with it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs a command through redis-cli.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli(self.port, args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters, no replicas.
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them into one cluster.
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::start_on(free_port(), true)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|n| n.cli(&["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok")));
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// SIGKILL every master (keys and subscriptions are lost; the cluster configuration stays
    /// in each one's nodes.conf).
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Starts every master again on its port and waits until the cluster is ok.
    pub fn restart_all(&mut self) {
        for n in &mut self.nodes {
            n.spawn();
        }
        self.wait_ok();
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok =
                self.nodes.iter().all(|n| n.cli(&["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok")));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Seed URLs, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(Redis::url).collect::<Vec<_>>().join(",")
    }
}
