//! keygate: an authorization reverse proxy for storage services.
//!
//! The request path runs framing → route → authenticate → limit → decide → forward → log; see
//! ARCHITECTURE.md for the map. The modules below are listed from the bottom of the import
//! graph to the top: each may import only modules listed before it (`tests/layout.rs` checks).

// Shared vocabulary and helpers: no I/O, no decisions.
#[cfg(test)]
pub mod testing;
pub mod background;
pub mod clock;
pub mod refusal;
pub mod telemetry;
pub mod route;
pub mod model;

// State and bookkeeping.
pub mod store;
pub mod usage;
pub mod audit;
pub mod notify;
pub mod principal;

// The stages and the rules.
pub mod ratelimit;
pub mod identity;
pub mod config;
pub mod tls;
pub mod policy;
pub mod manage;
pub mod cluster;

// The two planes, the process, the command line.
pub mod proxy;
pub mod control;
pub mod server;
pub mod cli;
pub mod commands;
