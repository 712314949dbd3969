//! The Tether client SDK.
//!
//! [`core`] is the sans-I/O session state machine: connection lifecycle, backoff, heartbeat,
//! outbox with retry until acknowledged, inbox deduplication and ordering, sync cursors. It does
//! no I/O and reads no clock; a driver feeds it transport events and the current time and carries
//! out what it asks for. [`state`] is the file-backed journal that makes the session's
//! [`core::PersistOp`]s durable across restarts.

pub mod core;
pub mod state;
