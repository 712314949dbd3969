//! A real MariaDB server for tests: `mariadb-install-db` into a temp dir, `mariadbd` on a free
//! loopback port, one fresh database per case. Stopped (and its files removed) when dropped.
//! The binaries come from Debian's `mariadb-server` package, which the test command installs
//! when missing.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct MariaDb {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    next_db: AtomicU32,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

impl MariaDb {
    /// Starts a server with durable settings (`innodb_flush_log_at_trx_commit=1`).
    pub fn start() -> MariaDb {
        let install = ["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("no MariaDB server: install it with `apt-get install -y mariadb-server` (./scripts/test does)")
            });
        let dir = tempfile::Builder::new().prefix("tether-maria").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let user =
            if is_root() { "root".to_string() } else { std::env::var("USER").unwrap_or_else(|_| "nobody".into()) };
        let out = Command::new(install)
            .arg(format!("--user={user}"))
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .expect("run mariadb-install-db");
        assert!(out.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("mariadb.log")).expect("log file");
        let mut cmd = Command::new("/usr/sbin/mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--user={user}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .args(["--innodb-flush-log-at-trx-commit=1", "--max-connections=300", "--skip-name-resolve"]);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("start mariadbd");
        let db = MariaDb { dir, port, child, next_db: AtomicU32::new(0) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mariadbd did not start: {}", db.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        db
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mariadb.log")).unwrap_or_default()
    }

    /// A new empty database; its URL.
    pub async fn fresh_db(&self) -> String {
        use sqlx::Connection;
        let name = format!("t{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let admin = format!("mysql://root@127.0.0.1:{}/mysql", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut c = loop {
            match sqlx::MySqlConnection::connect(&admin).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "connect to mariadb: {e}\n{}", self.log());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await.expect("create db");
        format!("mysql://root@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}
