//! Small values and readers: a never-issued key, metrics from a Prometheus page, hashes.

use std::path::{Path, PathBuf};

/// A key shaped right, with a valid checksum, that was never issued.
pub fn unissued_key() -> String {
    let body: String = "0123456789abcdefghijABCDEFGHIJ01".to_owned();
    let head = format!("kg_{body}");
    let sum = crc32fast::hash(head.as_bytes());
    let mut v = sum;
    let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = digits[(v % 62) as usize];
        v /= 62;
    }
    head + std::str::from_utf8(&out).unwrap()
}

/// The value of one series (`name{labels}` exactly as exposed) in a Prometheus text page; 0
/// when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn file_under(root: &Path, rel: &str) -> PathBuf {
    rel.split('/')
        .filter(|s| !s.is_empty())
        .fold(root.to_path_buf(), |p, s| p.join(s))
}
