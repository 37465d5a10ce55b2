//! The subcommands that are not `serve`: administration on the database (`admin.rs`), the demo
//! (`demo.rs`), and the policy tools for security teams (`policy.rs`: validate, test, explain,
//! fmt). Each is a thin layer over the same code the server runs.
//!
//! May import everything below it; only `main.rs` imports it.

pub mod admin;
pub mod demo;
pub mod policy;
