//! `tether-registry`: a standalone Eureka-compatible registry (see `--help`; every flag has a
//! `TETHER_REGISTRY_*` variable).

use clap::Parser;
use tether_registry::node::shutdown_signal;
use tether_registry::{Config, RegistryNode};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let node = match RegistryNode::start(config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("tether-registry: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let instances = node.state().with_registry(|r| r.len());
    // One machine-readable line on stdout for scripts and tests.
    println!("TETHER_REGISTRY_READY listen={} instances={instances}", node.local_addr());
    shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    std::process::ExitCode::SUCCESS
}
