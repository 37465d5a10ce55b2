//! The route stage with a `Destination` and an `Overwrite` header, on the shipped storage
//! preset: never a panic, and every resource it names is a canonical path.
#![no_main]

use std::sync::OnceLock;

use keygate::config::{Config, Overrides};
use keygate::route::{RouteInput, RouteTable};
use libfuzzer_sys::fuzz_target;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        Config::from_toml("", "fuzz", std::iter::empty(), &Overrides::default())
            .expect("the default config")
            .routes
    })
}

fuzz_target!(|data: &[u8]| {
    // method \n target \n destination \n overwrite
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let method = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("GET");
    let target = parts.next().unwrap_or_default();
    let destination = parts.next();
    let overwrite = parts.next();
    if let Ok(m) = table().route(RouteInput {
        method,
        raw_target: target,
        destination,
        overwrite,
        depth: Some(b"1"),
        if_header: None,
        host: Some("fuzz"),
    }) {
        for r in m.resources.iter().chain(m.also.iter().map(|a| &a.resource)) {
            assert!(r.path.starts_with('/'));
            assert!(!r.path.contains("//") && !r.path.contains("/../"));
        }
    }
});
