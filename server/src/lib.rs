//! Tether gateway node.
//!
//! [`Node::start`] brings up a complete node from a [`Config`]: the store (SQLite by default),
//! the write pipeline, the QUIC listener with its sessions, and the admin HTTP API.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod clock;
pub mod config;
pub mod ctx;
pub mod hub;
pub mod ids;
pub mod limits;
pub mod memory;
pub mod metrics;
mod node;
pub mod pipeline;
pub mod quic_lb;
pub mod registration;
pub mod rooms;
pub mod session;
pub mod store;
pub mod tls;
pub mod webhook;

pub use config::Config;
pub use ctx::Ctx;
pub use node::{transport_config, udp_socket, Node, StartError};
