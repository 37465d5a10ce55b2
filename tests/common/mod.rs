//! The integration-test harness: starts storage-backend and keygate as real processes on port 0,
//! a recording upstream, and a database of the test's own (SQLite, or PostgreSQL when
//! `KEYGATE_TEST_POSTGRES_URL` is set). One file per concern; everything is re-exported here.
// Each test binary uses part of this module; the rest would warn as dead code there.
#![allow(dead_code)]

mod process;
mod database;
mod keygate;
mod http;
mod upstream;
mod raw;
mod values;
mod tls;
mod dav;
mod relay;
mod browser;
mod smtp;

#[allow(unused_imports)] // each test binary uses part of the harness
pub use browser::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use database::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use dav::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use http::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use keygate::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use process::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use raw::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use relay::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use smtp::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use tls::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use upstream::*;
#[allow(unused_imports)] // each test binary uses part of the harness
pub use values::*;
