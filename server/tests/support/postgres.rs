//! A real PostgreSQL server for tests: initdb into a temp dir, `postgres` on a free loopback
//! port, one fresh database per case. Stopped (and its files removed) when dropped.
//!
//! The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<v>/bin`), which
//! the test command installs when missing. `initdb` refuses to run as root, so as root the
//! cluster is created and run as the `postgres` user.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    next_db: AtomicU32,
    bin: PathBuf,
    root: bool,
    durable: bool,
}

/// The directory of the newest installed PostgreSQL server binaries.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: install them with \
             `apt-get install -y postgresql` (./scripts/test does)"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

/// `cmd` as the `postgres` user when running as root.
fn as_pg_user(root: bool, program: PathBuf) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Postgres {
    /// Starts a server; `durable` keeps PostgreSQL's defaults (fsync, synchronous commit),
    /// otherwise both are off to make tests quick.
    pub fn start(durable: bool) -> Postgres {
        let bin = bin_dir();
        let root = is_root();
        let dir = tempfile::Builder::new().prefix("tether-pg").tempdir().expect("temp dir");
        if root {
            let ok = Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status().expect("chown");
            assert!(ok.success(), "chown postgres {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let out = as_pg_user(root, bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        // A test CA and a server certificate it signed, for TLS (clients choose; tests of
        // `sslmode=verify-full` trust the CA).
        let script = "set -e; cd \"$1\"; EC='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; \
            openssl req -x509 $EC -keyout ca.key -out ca.crt -subj /CN=tether-test-ca -days 2; \
            openssl req $EC -keyout data/server.key -out server.csr -subj /CN=localhost; \
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > server.ext; \
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
              -extfile server.ext -out data/server.crt";
        let ok = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(ok.success(), "openssl could not make the test certificates");
        if root {
            let _ = Command::new("chown")
                .args(["postgres"])
                .arg(data.join("server.key"))
                .arg(data.join("server.crt"))
                .status();
        }
        let _ = Command::new("chmod").arg("600").arg(data.join("server.key")).status();
        let port = free_port();
        let child = Self::spawn(&bin, root, dir.path(), port, durable);
        let pg = Postgres { dir, port, child, next_db: AtomicU32::new(0), bin, root, durable };
        pg.wait_ready();
        pg
    }

    fn spawn(bin: &std::path::Path, root: bool, dir: &std::path::Path, port: u16, durable: bool) -> Child {
        let mut cmd = as_pg_user(root, bin.join("postgres"));
        cmd.arg("-D").arg(dir.join("data")).args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"]).arg(dir);
        cmd.args(["-c", "max_connections=200", "-c", "shared_buffers=128MB", "-c", "ssl=on"]);
        if !durable {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join("postgres.log")).expect("log file");
        // Its own process group, so that a kill takes the backends with the postmaster.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdout(Stdio::null()).stderr(log).spawn().expect("start postgres")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let ok = Command::new(self.bin.join("psql"))
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-c", "select 1"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "postgres did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again on the same data and port (after [`Postgres::kill`]).
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.bin, self.root, self.dir.path(), self.port, self.durable);
        self.wait_ready();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The test CA that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// URL of the `postgres` maintenance database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new empty database; its URL.
    pub async fn fresh_db(&self) -> String {
        use sqlx::Connection;
        let name = format!("t{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let mut c = sqlx::PgConnection::connect(&self.admin_url()).await.expect("connect to postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await.expect("create db");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The postmaster's pid (the child may be `runuser` around it).
    fn postmaster_pid(&self) -> Option<String> {
        let pidfile = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).ok()?;
        pidfile.lines().next().map(|l| l.trim().to_owned())
    }

    /// Stops the server abruptly (SIGKILL of the postmaster and every backend), for outage
    /// tests.
    pub fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (disconnects clients, no waiting).
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill").args(["-INT", &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
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
