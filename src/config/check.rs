//! Collecting config problems: each is kept with its place (`[section] key`) and reading goes
//! on, so that one run reports them all. The helpers read the shapes every section repeats: a
//! duration, an address, a secret given inline or in a file (not both).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::SecretSource;

/// One problem with the config and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub place: String,
    pub message: String,
}

/// Every problem found while loading a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "the config has {n} problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  {}: {}", p.place, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

pub(super) fn problem(
    problems: &mut Vec<Problem>,
    place: impl Into<String>,
    message: impl Into<String>,
) {
    problems.push(Problem {
        place: place.into(),
        message: message.into(),
    });
}

pub(super) fn address(
    problems: &mut Vec<Problem>,
    place: &str,
    raw: Option<&str>,
    default: &str,
) -> SocketAddr {
    let raw = raw.unwrap_or(default);
    match raw.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            problem(
                problems,
                place,
                format!("'{raw}' is not a host:port address"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

pub(super) fn duration(
    problems: &mut Vec<Problem>,
    place: &str,
    raw: Option<&str>,
    default: Duration,
) -> Duration {
    match raw {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                problem(
                    problems,
                    place,
                    format!("'{s}' is not a duration such as '5s' or '2m'"),
                );
                default
            }
        },
    }
}

/// `n` seconds, for defaults.
pub(super) const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Reads the durations of one section: `[section] key`, a default when left out.
pub(super) struct Durations<'a> {
    problems: &'a mut Vec<Problem>,
    section: &'a str,
}

impl<'a> Durations<'a> {
    pub(super) fn new(problems: &'a mut Vec<Problem>, section: &'a str) -> Durations<'a> {
        Durations { problems, section }
    }

    pub(super) fn read(&mut self, key: &str, raw: &Option<String>, default: Duration) -> Duration {
        let place = format!("[{}] {key}", self.section);
        duration(self.problems, &place, raw.as_deref(), default)
    }
}

/// A secret given inline (`inline`) or in a file (`file`), never both. An inline secret shorter
/// than `min_len` is a problem; `None` when neither is given.
pub(super) fn secret(
    problems: &mut Vec<Problem>,
    section: &str,
    (inline_key, inline): (&str, &Option<String>),
    (file_key, file): (&str, &Option<String>),
    min_len: usize,
) -> Option<SecretSource> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            problem(
                problems,
                format!("[{section}]"),
                format!("give {inline_key} or {file_key}, not both"),
            );
            None
        }
        (Some(v), None) => {
            if v.len() < min_len {
                problem(
                    problems,
                    format!("[{section}] {inline_key}"),
                    format!("must have at least {min_len} characters"),
                );
            }
            Some(SecretSource::Inline(v.clone()))
        }
        (None, Some(f)) => Some(SecretSource::File(PathBuf::from(f))),
        (None, None) => None,
    }
}
