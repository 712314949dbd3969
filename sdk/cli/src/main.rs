//! `tether`: a desktop command-line client on the Tether SDK.
//!
//! ```text
//! tether --server 127.0.0.1:7443 --pin tether-data/dev-cert.pem --ticket tk_... send --to bob hello
//! tether --server 127.0.0.1:7443 --ca ca.pem --token $JWT listen --count 10
//! tether --server 127.0.0.1:7443 --ca ca.pem --token $JWT --state-dir ~/.tether chat --to bob
//! tether --ca ca.pem --token $JWT room join lobby
//! tether --ca ca.pem --token $JWT --meta app=1.2.0 --meta locale=de room send lobby hi all
//! tether --ca ca.pem --token $JWT --state-dir ~/.tether listen --events
//! tether --registry http://10.0.0.5:8761/eureka/ --ca ca.pem --token $JWT listen
//! tether --ca ca.pem --token $JWT presence bob carol --count 2
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use clap::{Args, Parser, Subcommand};
use tether_sdk::{Client, ClientConfig, ConnectionState, Credential, Event, Message, SendAck, Target, Trust};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser, Debug)]
#[command(name = "tether", version, about = "Tether command-line client")]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug)]
struct ConnArgs {
    /// Server address, host:port (default 127.0.0.1:7443 without --registry; with it, the
    /// last resort when the registry lists no node).
    #[arg(long, env = "TETHER_SERVER", global = true)]
    server: Option<String>,
    /// Eureka base URL of a registry to discover nodes through, e.g.
    /// http://10.0.0.5:8761/eureka/ (repeatable, or comma-separated).
    #[arg(long = "registry", env = "TETHER_REGISTRY_URL", value_delimiter = ',', global = true)]
    registry: Vec<String>,
    /// Registry application of the gateway nodes.
    #[arg(long, env = "TETHER_REGISTRY_APP", default_value = "TETHER", global = true)]
    registry_app: String,
    /// Name to check in the server certificate (default: the host of --server).
    #[arg(long, env = "TETHER_SERVER_NAME", global = true)]
    server_name: Option<String>,
    /// JWT from the app's backend.
    #[arg(long, env = "TETHER_TOKEN", global = true, conflicts_with = "ticket")]
    token: Option<String>,
    /// One-time login ticket from the admin API.
    #[arg(long, env = "TETHER_TICKET", global = true)]
    ticket: Option<String>,
    /// Trust the CA certificates in this PEM file.
    #[arg(long, env = "TETHER_CA", global = true, conflicts_with = "pin")]
    ca: Option<PathBuf>,
    /// Trust exactly this server certificate (e.g. a node's dev-cert.pem).
    #[arg(long, env = "TETHER_PIN", global = true)]
    pin: Option<PathBuf>,
    /// Directory for the outbox, cursors and resume token.
    #[arg(long, env = "TETHER_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Device type.
    #[arg(long, env = "TETHER_DEVICE_TYPE", default_value = "desktop", global = true)]
    device_type: String,
    /// Device id (default: kept in the state dir).
    #[arg(long, env = "TETHER_DEVICE_ID", global = true)]
    device_id: Option<String>,
    /// Connection metadata sent at login, shown in presence and the admin API (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta, global = true)]
    meta: Vec<(String, String)>,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send one message and wait until the server has stored it.
    Send {
        /// Recipient user id.
        #[arg(long)]
        to: String,
        /// Payload type.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        /// Message text (words are joined with spaces).
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Print every delivered message (inbox and rooms) as one JSON line.
    Listen {
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Also print room events (enter, quit, online, offline), presence and history cuts as
        /// JSON lines with an "event" field.
        #[arg(long)]
        events: bool,
    },
    /// Join, leave or send to a room.
    Room {
        #[command(subcommand)]
        cmd: RoomCmd,
    },
    /// Subscribe to users' presence and print each presence frame as one JSON line.
    Presence {
        /// User ids.
        #[arg(required = true)]
        users: Vec<String>,
        /// Exit after this many presence frames.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Interactive chat: each line typed is sent to `--to`; incoming messages are printed.
    Chat {
        /// Peer user id.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand, Debug)]
enum RoomCmd {
    /// Become a member of a room; prints the room's head and counts as JSON.
    Join {
        /// Room id.
        room: String,
    },
    /// Stop being a member of a room.
    Leave {
        /// Room id.
        room: String,
    },
    /// Send one message to a room and wait until the server has stored it.
    Send {
        /// Room id.
        room: String,
        /// Payload type.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        /// Message text (words are joined with spaces).
        #[arg(required = true)]
        text: Vec<String>,
    },
}

fn ack_json(ack: &SendAck) -> serde_json::Value {
    serde_json::json!({
        "client_msg_id": ack.client_msg_id,
        "msg_id": ack.msg_id,
        "seq": ack.seq,
        "ts": ack.ts,
        "duplicate": ack.duplicate,
    })
}

/// `value` (a JSON object) with `"event": name` added.
fn event_json(name: &str, value: impl serde::Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("event".into(), name.into());
    }
    v
}

/// The JSON line `listen --events` prints for a non-message event, if any.
fn client_event_json(ev: &Event) -> Option<serde_json::Value> {
    Some(match ev {
        Event::RoomEvent(e) => event_json("room_event", e),
        Event::Presence(p) => event_json("presence", p),
        Event::HistoryTruncated(t) => event_json("history_truncated", t),
        Event::RoomJoined(j) => event_json("room_joined", j),
        Event::RoomLeft(room) => serde_json::json!({"event": "room_left", "room": room}),
        Event::RoomJoinFailed { room, code, message } => {
            serde_json::json!({"event": "room_join_failed", "room": room, "code": code, "message": message})
        }
        _ => return None,
    })
}

fn message_json(d: &Message) -> serde_json::Value {
    let mut v = serde_json::json!({
        "msg_id": d.msg_id,
        "seq": d.seq,
        "from": d.from,
        "from_device": d.from_device,
        "to": d.to.id(),
        "ts": d.ts,
        "content_type": d.content_type,
        "client_msg_id": d.client_msg_id,
    });
    if let Target::Room(room) = &d.to {
        v["room"] = room.clone().into();
    }
    match std::str::from_utf8(&d.payload) {
        Ok(t) if d.content_type.starts_with("text/") => v["text"] = t.into(),
        _ => v["payload_base64"] = base64::engine::general_purpose::STANDARD.encode(&d.payload).into(),
    }
    v
}

fn config(a: &ConnArgs) -> Result<ClientConfig, String> {
    let credential = match (&a.token, &a.ticket) {
        (Some(t), None) => Credential::Token(t.clone()),
        (None, Some(t)) => Credential::Ticket(t.clone()),
        _ => return Err("give --token or --ticket".into()),
    };
    let trust = match (&a.ca, &a.pin) {
        (Some(p), None) => Trust::ca_file(p),
        (None, Some(p)) => Trust::pinned(p),
        _ => Trust::SystemRoots,
    };
    let server = match &a.server {
        Some(s) => s.clone(),
        None if a.registry.is_empty() => "127.0.0.1:7443".to_owned(),
        None => String::new(),
    };
    let mut c = ClientConfig::new(server, trust, credential);
    c.registry_urls = a.registry.clone();
    c.registry_app = a.registry_app.clone();
    c.server_name = a.server_name.clone();
    c.state_dir = a.state_dir.as_ref().map(|d| d.display().to_string());
    c.device_type = a.device_type.clone();
    c.device_id = a.device_id.clone();
    c.metadata = a.meta.iter().cloned().collect::<HashMap<_, _>>();
    Ok(c)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let cfg = config(&cli.conn)?;
    let (client, mut events) = Client::start(cfg).await.map_err(|e| e.to_string())?;
    let result = match cli.cmd {
        Cmd::Send { to, content_type, text } => {
            client.wait_online().await.map_err(|e| e.to_string())?;
            let ack = client
                .send(Target::User(to.to_string()), content_type, text.join(" ").into_bytes())
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", ack_json(&ack));
            Ok(())
        }
        Cmd::Room { cmd } => room(&client, cmd).await,
        Cmd::Presence { users, count } => presence(&client, &mut events, users, count).await,
        Cmd::Listen { count, events: print_events } => {
            let mut seen = 0u64;
            loop {
                if count.is_some_and(|c| seen >= c) {
                    break Ok(());
                }
                match events.next().await {
                    Some(Event::Message(d)) => {
                        println!("{}", message_json(&d));
                        seen += 1;
                    }
                    Some(ev) => {
                        if let Some(err) = fatal(&ev) {
                            break Err(err);
                        }
                        if let Some(line) = client_event_json(&ev).filter(|_| print_events) {
                            println!("{line}");
                        }
                    }
                    None => break Err("client stopped".into()),
                }
            }
        }
        Cmd::Chat { to } => chat(&client, &mut events, &to).await,
    };
    client.close().await;
    result
}

async fn room(client: &Client, cmd: RoomCmd) -> Result<(), String> {
    client.wait_online().await.map_err(|e| e.to_string())?;
    match cmd {
        RoomCmd::Join { room } => {
            let joined = client.join_room(room).await.map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_value(&joined).map_err(|e| e.to_string())?);
        }
        RoomCmd::Leave { room } => {
            client.leave_room(room.clone()).await.map_err(|e| e.to_string())?;
            println!("{}", serde_json::json!({"room": room, "left": true}));
        }
        RoomCmd::Send { room, content_type, text } => {
            let ack = client
                .send_to_room(&room, content_type, text.join(" ").into_bytes())
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", ack_json(&ack));
        }
    }
    Ok(())
}

async fn presence(
    client: &Client,
    events: &mut tether_sdk::Events,
    users: Vec<String>,
    count: Option<u64>,
) -> Result<(), String> {
    client.subscribe_presence(users).map_err(|e| e.to_string())?;
    let mut seen = 0u64;
    loop {
        if count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        match events.next().await {
            Some(Event::Presence(p)) => {
                println!("{}", serde_json::to_value(&p).map_err(|e| e.to_string())?);
                seen += 1;
            }
            Some(ev) => {
                if let Some(err) = fatal(&ev) {
                    return Err(err);
                }
            }
            None => return Err("client stopped".into()),
        }
    }
}

/// The events after which the client will not reconnect by itself.
fn fatal(ev: &Event) -> Option<String> {
    match ev {
        Event::Kicked(k) => Some(format!("kicked: {:?}: {}", k.reason, k.message)),
        Event::LoginFailed { code, message } => Some(format!("login failed: {code:?}: {message}")),
        _ => None,
    }
}

async fn chat(client: &Client, events: &mut tether_sdk::Events, to: &str) -> Result<(), String> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    eprintln!("chatting with {to}; type a line and press enter, Ctrl-D to quit");
    // Acks still awaited. Each line is queued when it is read (`send_text` queues at the call,
    // in call order); only the wait for its ack runs in the background.
    let mut acks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if !l.trim().is_empty() => {
                    let ack = client.send_text(to, &l);
                    acks.spawn(async move {
                        if let Err(e) = ack.await {
                            eprintln!("! not sent: {e}");
                        }
                    });
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    // End of input: wait until every line is stored before logging out.
                    while acks.join_next().await.is_some() {}
                    return Ok(());
                }
            },
            Some(_) = acks.join_next(), if !acks.is_empty() => {}
            ev = events.next() => match ev {
                Some(Event::Message(d)) => {
                    let text = String::from_utf8_lossy(&d.payload);
                    match &d.to {
                        Target::Room(room) => println!("[{}#{}] {}: {}", room, d.seq, d.from, text),
                        Target::User(_) => println!("[{}] {}: {}", d.seq, d.from, text),
                    }
                }
                Some(Event::State(s)) => {
                    if !matches!(s, ConnectionState::Online) {
                        eprintln!("~ {s:?}");
                    }
                }
                Some(ev) => {
                    if let Some(err) = fatal(&ev) {
                        return Err(err);
                    }
                }
                None => return Err("client stopped".into()),
            }
        }
    }
}
