//! `tether-server`: starts one gateway node (see `--help`; every flag has a `TETHER_*` variable).

use clap::Parser;
use tether_server::{Config, Node};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cfg.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(tether_server::config::Command::Store { op }) = &cfg.command {
        return store_command(op).await;
    }
    let node = match Node::start(cfg).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tether-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // One machine-readable line on stdout for scripts and tests.
    println!("TETHER_READY quic={} admin={}", node.quic_addr, node.admin_addr);
    tether_registry::node::shutdown_signal().await;
    tracing::info!("draining, then shutting down");
    node.drain_and_shutdown().await;
    std::process::ExitCode::SUCCESS
}

/// Runs a `tether-server store ...` command.
async fn store_command(op: &tether_server::config::StoreCommand) -> std::process::ExitCode {
    use std::io::Write;
    let (from, to, chunk) = match op {
        tether_server::config::StoreCommand::Copy { from, to, chunk } => (from, to, chunk),
        tether_server::config::StoreCommand::Repair { log } => return repair_command(log),
    };
    let mut last = String::new();
    let mut progress = |table: &str, done: u64, total: u64| {
        // A progress bar on stderr, redrawn in place.
        let pct = (done * 100).checked_div(total).unwrap_or(100).min(100);
        let filled = (pct / 5) as usize;
        let line = format!("{table:>15} [{}{}] {pct:>3}% {done}/{total}", "#".repeat(filled), ".".repeat(20 - filled));
        if line != last {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{line}");
            if done >= total {
                let _ = writeln!(err);
            }
            last = line;
        }
    };
    match tether_server::store::copy::copy(from, to, *chunk, &mut progress).await {
        Ok(r) => {
            println!(
                "copied: {} messages, {} room log entries, {} rooms, {} members, {} cursors, {} tickets (rows already there not counted)",
                r.messages, r.room_log, r.rooms, r.members, r.cursors, r.tickets
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ntether-server store copy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs `tether-server store repair --log DIR`.
fn repair_command(dir: &std::path::Path) -> std::process::ExitCode {
    match tether_server::store::log::repair(dir) {
        Ok(r) if r.repaired.is_empty() => {
            println!("{}: no damaged record found, nothing changed", dir.display());
            std::process::ExitCode::SUCCESS
        }
        Ok(r) => {
            for s in &r.repaired {
                let bytes: u64 = s.cut.iter().map(|c| c.1).sum();
                println!(
                    "segment {}: cut {} damaged range(s), {bytes} bytes {:?} (offset, length); the original is kept as {}",
                    s.id,
                    s.cut.len(),
                    s.cut,
                    s.backup.display()
                );
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether-server store repair: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
