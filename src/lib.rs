//! keygate: an authorization reverse proxy for storage services.
//!
//! The request path runs route → credentials → identity → rate limit → decide → forward → log;
//! see ARCHITECTURE.md for the map. Each stage is a module with plain inputs and typed outputs.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod credentials;
pub mod demo;
pub mod deny;
pub mod forward;
pub mod identity;
pub mod keys;
pub mod manage;
pub mod policy;
pub mod policy_tool;
pub mod presets;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod scenarios;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
pub mod usage;
