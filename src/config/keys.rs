//! `[keys]`: the key format, the pepper, the per-user limit, cache and polling intervals.

use std::path::{Path, PathBuf};

use super::check::{problem, secret, secs, Durations, Problem};
use super::file::FileConfig;
use super::{KeysConfig, SecretSource};

const PEPPER_REQUIRED: &str =
    "[keys] pepper_file (or KEYGATE_KEYS_PEPPER) is required with PostgreSQL: every instance must hash keys with the same pepper";

pub(super) fn keys_config(
    file: &FileConfig,
    db_url: &str,
    problems: &mut Vec<Problem>,
) -> KeysConfig {
    use crate::model::{KeyFormat, KeyStyle};
    let k = &file.keys;
    let format = match k.format.as_deref() {
        None | Some("kg") => KeyFormat::Kg,
        Some("drv") => KeyFormat::Drv,
        Some("fo") => KeyFormat::Fo,
        Some(other) => {
            problem(
                problems,
                "[keys] format",
                format!("'{other}' is not one of 'kg', 'drv', 'fo'"),
            );
            KeyFormat::Kg
        }
    };
    let prefix = k.prefix.clone().unwrap_or_else(|| "kg".to_owned());
    if prefix.is_empty()
        || prefix.len() > 10
        || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        || prefix == "drv"
        || prefix == "fo"
    {
        problem(
            problems,
            "[keys] prefix",
            format!("'{prefix}' must be 1 to 10 letters or digits, and not 'drv' or 'fo'"),
        );
    }
    let given = secret(
        problems,
        "keys",
        ("pepper", &k.pepper),
        ("pepper_file", &k.pepper_file),
        crate::model::MIN_PEPPER_LEN,
    );
    let both = k.pepper.is_some() && k.pepper_file.is_some();
    let pepper = match given {
        Some(source) => source,
        None if both => SecretSource::Inline(String::new()),
        None => match db_url
            .strip_prefix("sqlite://")
            .or_else(|| db_url.strip_prefix("sqlite:"))
        {
            Some(path) => {
                let path = path.split('?').next().unwrap_or(path);
                let dir = Path::new(path)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty());
                SecretSource::Generated(dir.map_or_else(
                    || PathBuf::from("keygate.pepper"),
                    |d| d.join("keygate.pepper"),
                ))
            }
            None => SecretSource::Missing(PEPPER_REQUIRED),
        },
    };
    let mut d = Durations::new(problems, "keys");
    KeysConfig {
        style: KeyStyle { format, prefix },
        pepper,
        max_active_per_user: k.max_active_per_user.unwrap_or(10).max(1),
        cache_ttl: d.read("cache_ttl", &k.cache_ttl, secs(300)),
        usage_flush_interval: d.read("usage_flush_interval", &k.usage_flush_interval, secs(5)),
        change_poll_interval: d.read("change_poll_interval", &k.change_poll_interval, secs(1)),
    }
}
