//! Interoperability with a Eureka client this project did not write: py-eureka-client from
//! PyPI, pinned, in a venv cached at `${TETHER_CACHE:-$HOME/.cache/tether}/venv-eureka-<version>`
//! (created here when missing). The library talks to the real `tether-registry` binary and,
//! like in production, sends no JSON Accept header, so it parses our XML.
//!
//! What it exercises: registration (its JSON body), heartbeats every second (observed here as
//! `lastRenewalTimestamp` moving), its discovery API (`get_applications`, `get_application`,
//! `get_app_instance`, `get_vip`, `get_delta`, its own cached registry kept by full and delta
//! fetches, `walk_nodes`), a status override made on our side reaching its cache through a
//! delta, and `stop()` (registers DOWN, then cancels).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{free_port, get, RegistryProcess};
use tether_registry::codec::{decode_application, decode_applications, Format};
use tether_registry::tether::GatewayRegistration;
use tether_registry::{ActionType, EurekaClient, InstanceStatus};

const PY_EUREKA_CLIENT_VERSION: &str = "0.13.3";

/// The venv with py-eureka-client, created when missing. `Err` says why it could not be.
fn venv() -> Result<PathBuf, String> {
    let cache = match std::env::var_os("TETHER_CACHE") {
        Some(c) if !c.is_empty() => PathBuf::from(c),
        _ => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?).join(".cache/tether"),
    };
    let venv = cache.join(format!("venv-eureka-{PY_EUREKA_CLIENT_VERSION}"));
    let python = venv.join("bin/python");
    let check =
        format!("import py_eureka_client, sys; sys.exit(py_eureka_client.version != '{PY_EUREKA_CLIENT_VERSION}')");
    let usable = || Command::new(&python).args(["-c", &check]).output().is_ok_and(|o| o.status.success());
    if usable() {
        return Ok(python);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let _ = std::fs::remove_dir_all(&venv);
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        Err(format!("{what} failed: {last}"))
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv")?;
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            &format!("py-eureka-client=={PY_EUREKA_CLIENT_VERSION}"),
        ]),
        "pip install py-eureka-client",
    )?;
    if usable() {
        Ok(python)
    } else {
        Err("py_eureka_client is not importable after installation".into())
    }
}

/// The Python driver process and its protocol lines.
struct PyClient {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl PyClient {
    fn start(python: &PathBuf, server: &str, app: &str, port: u16) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py_eureka_client_check.py");
        let mut child = Command::new(python)
            .arg("-u")
            .arg(&script)
            .args([server, app, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python");
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        Self { child, stdin, lines, log: Vec::new() }
    }

    /// The next protocol line (`PYCHECK {json}`), other output being kept for failure reports.
    fn next(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => match l.strip_prefix("PYCHECK ") {
                    Some(json) => {
                        let v: Value = serde_json::from_str(json).expect("protocol JSON");
                        assert_ne!(v["event"], "error", "py-eureka-client script failed: {v}\n{}", self.log.join("\n"));
                        return v;
                    }
                    None => self.log.push(l),
                },
                Err(_) => panic!("no answer from the py-eureka-client script; its output:\n{}", self.log.join("\n")),
            }
        }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to python");
        self.stdin.flush().expect("flush");
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_eureka_client_registers_renews_discovers_and_cancels() {
    let python = match venv() {
        Ok(p) => p,
        Err(why) => {
            let line = format!(
                "py-eureka-client {PY_EUREKA_CLIENT_VERSION} unavailable (no venv, no network?): {why}; this test cannot run"
            );
            println!("{line}");
            panic!("{line}");
        }
    };
    let registry = RegistryProcess::start(free_port(), &[]);
    let server = registry.eureka();

    // A gateway node registered by our own client (JSON), for the library to discover (XML).
    let ours = EurekaClient::new([server.as_str()]).unwrap();
    let gw = GatewayRegistration {
        node_id: "gw-py".into(),
        host_name: "gw-py.test".into(),
        ip_addr: "127.0.0.1".into(),
        quic: "gw-py.test:4433".into(),
        zone: "z1".into(),
        http_port: 7443,
    };
    ours.register(&gw.instance()).await.unwrap();

    let mut py = PyClient::start(&python, &server, "PYCHECK", 18080);
    let started = py.next(Duration::from_secs(30));
    assert_eq!(started["version"], PY_EUREKA_CLIENT_VERSION);

    // Its registration, read back as XML without an Accept header.
    let url = format!("{}/eureka/apps/PYCHECK", registry.base);
    let r = get(&url).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.content_type.starts_with("application/xml"));
    let app = decode_application(r.body.as_bytes(), Format::Xml).unwrap();
    assert_eq!(app.instances.len(), 1);
    let me = app.instances[0].clone();
    assert_eq!(me.app, "PYCHECK");
    assert_eq!(me.instance_id, "127.0.0.1:pycheck:18080");
    assert_eq!((me.port.port, me.port.enabled), (18080, true));
    assert_eq!(me.lease_info.renewal_interval_in_secs, 1);
    assert_eq!(me.lease_info.duration_in_secs, 30);
    assert_eq!(me.metadata.get("role").map(String::as_str), Some("py-check"));
    assert_eq!(me.metadata.get("management.port").map(String::as_str), Some("18080"));
    assert_eq!(me.vip_address.as_deref(), Some("pycheck"));
    assert_eq!(me.data_center_info.as_ref().and_then(|d| d.name.as_deref()), Some("MyOwn"));
    assert_eq!(me.status, InstanceStatus::Up);

    // Its heartbeats: lastRenewalTimestamp moves (twice).
    let mut seen = vec![me.lease_info.last_renewal_timestamp];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "no heartbeats from py-eureka-client; renewals seen: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = get(&url).await;
        let Ok(app) = decode_application(r.body.as_bytes(), Format::Xml) else { continue };
        let Some(ts) = app.instances.first().map(|i| i.lease_info.last_renewal_timestamp) else { continue };
        if seen.last() != Some(&ts) {
            seen.push(ts);
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

    // Its discovery API, parsing our XML.
    py.send("discover TETHER");
    let d = py.next(Duration::from_secs(20));
    assert_eq!(d["full"]["apps__hashcode"], "UP_2_", "{d}");
    assert_eq!(d["full"]["versions__delta"], "1");
    let tether = &d["full"]["apps"]["TETHER"][0];
    assert_eq!(tether["instanceId"], "gw-py");
    assert_eq!(tether["hostName"], "gw-py.test");
    assert_eq!(tether["status"], "UP");
    assert_eq!(tether["overriddenstatus"], "UNKNOWN");
    assert_eq!((tether["port"].as_u64(), tether["portEnabled"].as_bool()), (Some(7443), Some(true)));
    assert_eq!((tether["securePort"].as_u64(), tether["securePortEnabled"].as_bool()), (Some(7002), Some(false)));
    assert_eq!(tether["vipAddress"], "tether");
    assert_eq!(
        tether["metadata"],
        serde_json::json!({"quic": "gw-py.test:4433", "zone": "z1", "sessions": "0", "node_id": "gw-py"})
    );
    assert_eq!(tether["dataCenterName"], "MyOwn");
    assert_eq!(tether["dataCenterClass"], "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo");
    assert_eq!(tether["durationInSecs"], 90);
    assert_eq!(d["full"]["apps"]["PYCHECK"][0]["instanceId"], "127.0.0.1:pycheck:18080");
    assert_eq!(d["app"]["name"], "TETHER");
    assert_eq!(d["instance"]["instanceId"], "gw-py");
    assert_eq!(d["vip"]["apps"]["TETHER"][0]["instanceId"], "gw-py");
    assert_eq!(d["delta"]["apps__hashcode"], "UP_2_");
    assert_eq!(d["delta"]["apps"]["TETHER"][0]["actionType"], "ADDED");
    assert_eq!(d["cached"]["TETHER"], serde_json::json!([["gw-py", "UP"]]));
    assert!(d["cached"]["PYCHECK"].is_array(), "{d}");
    assert_eq!(d["walk"], "http://gw-py.test:7443/probe");

    // Drain our node: the library's registry copy sees it through a delta fetch.
    ours.set_status("TETHER", "gw-py", InstanceStatus::OutOfService).await.unwrap();
    py.send("wait-status TETHER gw-py OUT_OF_SERVICE");
    let s = py.next(Duration::from_secs(30));
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["up"], serde_json::json!([]), "an OUT_OF_SERVICE node is not offered: {s}");

    // Stop: the library registers DOWN, then cancels.
    py.send("stop");
    let stopped = py.next(Duration::from_secs(30));
    assert_eq!(stopped["instanceId"], "127.0.0.1:pycheck:18080");
    let exit = tokio::task::spawn_blocking(move || {
        let status = py.child.wait();
        (status, py)
    })
    .await
    .unwrap();
    assert!(exit.0.as_ref().is_ok_and(|s| s.success()), "{:?}", exit.0);
    assert_eq!(get(&format!("{url}/127.0.0.1:pycheck:18080")).await.status, 404);
    let delta = get(&format!("{}/eureka/apps/delta", registry.base)).await;
    let delta = decode_applications(delta.body.as_bytes(), Format::Xml).unwrap();
    let gone = delta.instances().find(|i| i.instance_id == "127.0.0.1:pycheck:18080").expect("in the delta");
    assert_eq!(gone.action_type, Some(ActionType::Deleted));
    assert_eq!(gone.status, InstanceStatus::Down, "stop() registers DOWN before cancelling");
    assert_eq!(delta.apps_hashcode, "OUT_OF_SERVICE_1_");
}
