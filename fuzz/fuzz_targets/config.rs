//! The config file reader on any text (and any environment override): problems are reported,
//! never a panic.
#![no_main]

use keygate::config::{Config, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, env) = text.split_once("\n--env--\n").unwrap_or((text, ""));
    let env = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("KEYGATE_{k}"), v.to_owned()))
        .collect::<Vec<_>>();
    if let Err(e) = Config::from_toml(file, "fuzz.toml", env, &Overrides::default()) {
        assert!(!e.0.is_empty(), "an error names at least one problem");
    }
});
