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
    let node = match Node::start(cfg).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tether-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // One machine-readable line on stdout for scripts and tests.
    println!("TETHER_READY quic={} admin={}", node.quic_addr, node.admin_addr);
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    std::process::ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
