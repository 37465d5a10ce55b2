//! API keys as values: their formats (generation and the offline checksum check), the keyed
//! hash they are stored and found by, and their lifetimes. Pure: no I/O.
//!
//! | format | shape | secret | checksum |
//! | --- | --- | --- | --- |
//! | `kg` (default; prefix configurable) | `<prefix>_` + 32 base62 + 6 base62 | 190 bits | CRC32 of the text before it, base62 |
//! | `drv` (Drivebase) | `drv_` + 32 hex + 8 hex | 128 bits | CRC32 of the 32 hex, hex |
//! | `fo` (File Organizer) | `fo_` + 12 base62 id + `_` + 32 base62 + 6 base62 | 190 bits | CRC32 of the text before it, base62 |
use std::fmt;

use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Characters shown in listings to recognise a key: the first twelve.
pub const DISPLAY_PREFIX_LEN: usize = 12;

/// Which shape new keys take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// `<prefix>_<32 base62 secret><6 base62 CRC32>`.
    Kg,
    /// Drivebase: `drv_<32 hex secret><8 hex CRC32>`.
    Drv,
    /// File Organizer: `fo_<12 base62 id>_<32 base62 secret><6 base62 CRC32>`.
    Fo,
}

/// How keys are minted and recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStyle {
    pub format: KeyFormat,
    /// Prefix of the `kg` format (letters and digits, at most 10).
    pub prefix: String,
}

impl Default for KeyStyle {
    fn default() -> KeyStyle {
        KeyStyle {
            format: KeyFormat::Kg,
            prefix: "kg".to_owned(),
        }
    }
}

fn random_base62(n: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| BASE62[rng.gen_range(0..62)] as char)
        .collect()
}

fn base62_6(mut v: u32) -> String {
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(v % 62) as usize];
        v /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn crc(text: &str) -> u32 {
    crc32fast::hash(text.as_bytes())
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl KeyStyle {
    /// A new key in this style. The caller shows it once and keeps only its keyed hash.
    pub fn generate(&self) -> String {
        match self.format {
            KeyFormat::Kg => {
                let head = format!("{}_{}", self.prefix, random_base62(32));
                let sum = base62_6(crc(&head));
                head + &sum
            }
            KeyFormat::Fo => {
                let head = format!("fo_{}_{}", random_base62(12), random_base62(32));
                let sum = base62_6(crc(&head));
                head + &sum
            }
            KeyFormat::Drv => {
                let bytes: [u8; 16] = rand::rngs::OsRng.gen();
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("drv_{hex}{:08x}", crc(&hex))
            }
        }
    }

    /// True when `key` has the shape and the checksum of a key keygate could have issued (in
    /// the configured style or one of the compatible ones). No database work is done for keys
    /// that fail this.
    pub fn is_well_formed(&self, key: &str) -> bool {
        if key.len() > 128 {
            return false;
        }
        if let Some(body) = key.strip_prefix("drv_") {
            return body.len() == 40
                && body
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && u32::from_str_radix(&body[32..], 16).ok() == Some(crc(&body[..32]));
        }
        if let Some(body) = key.strip_prefix("fo_") {
            let Some((id, rest)) = body.split_once('_') else {
                return false;
            };
            return id.len() == 12
                && is_base62(id)
                && rest.len() == 38
                && is_base62(rest)
                && checksum_matches(key);
        }
        if let Some(body) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|b| b.strip_prefix('_'))
        {
            return body.len() == 38 && is_base62(body) && checksum_matches(key);
        }
        false
    }

    /// True when `s` starts like a key of any recognised style (to spot keys where they must
    /// not be, such as a query string), whether or not its checksum holds.
    pub fn looks_like_key(&self, s: &str) -> bool {
        s.starts_with("drv_")
            || s.starts_with("fo_")
            || s.strip_prefix(self.prefix.as_str())
                .is_some_and(|r| r.starts_with('_'))
    }
}

/// The last six characters are the base62 CRC32 of everything before them.
fn checksum_matches(key: &str) -> bool {
    let (head, sum) = key.split_at(key.len() - 6);
    base62_6(crc(head)) == sum
}

/// The first characters of a key, safe to show.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_PREFIX_LEN).collect()
}

/// HMAC-SHA-256 of a presented key under the server's pepper. The database holds only this.
#[derive(Clone)]
pub struct Pepper(Hmac<Sha256>);

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(…)")
    }
}

/// Shortest pepper accepted, in bytes.
pub const MIN_PEPPER_LEN: usize = 32;

impl Pepper {
    pub fn new(secret: &[u8]) -> Result<Pepper, String> {
        if secret.len() < MIN_PEPPER_LEN {
            return Err(format!(
                "the pepper must have at least {MIN_PEPPER_LEN} bytes"
            ));
        }
        Hmac::<Sha256>::new_from_slice(secret)
            .map(Pepper)
            .map_err(|e| e.to_string())
    }

    /// The keyed hash of `key`, as 32 bytes.
    pub fn hash(&self, key: &str) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The keyed hash as stored (lower-case hex).
    pub fn hash_hex(&self, key: &str) -> String {
        hex(&self.hash(key))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Keys expiring within this many milliseconds are flagged (7 days).
pub const EXPIRY_WARNING_MS: i64 = 7 * 86_400_000;

/// Parses `30d`, `90d`, `1y`, `never` (relative to `now_ms`) or a date (`2027-01-31`, midnight
/// UTC) or an RFC 3339 time. `None` means the key never expires.
pub fn parse_expiry(spec: &str, now_ms: i64) -> Result<Option<i64>, String> {
    const DAY: i64 = 86_400_000;
    let spec = spec.trim();
    let at = match spec {
        "never" => return Ok(None),
        "30d" => now_ms + 30 * DAY,
        "90d" => now_ms + 90 * DAY,
        "1y" => now_ms + 365 * DAY,
        _ => crate::clock::parse_time(spec).ok_or_else(|| {
            format!("'{spec}' is not an expiry (30d, 90d, 1y, never, a date like 2027-01-31 or an RFC 3339 time)")
        })?,
    };
    if at <= now_ms {
        return Err(format!("the expiry '{spec}' is in the past"));
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_check_out_in_every_format() {
        for format in [KeyFormat::Kg, KeyFormat::Drv, KeyFormat::Fo] {
            let style = KeyStyle {
                format,
                prefix: "kg".into(),
            };
            for _ in 0..50 {
                let key = style.generate();
                assert!(style.is_well_formed(&key), "{key}");
                assert!(style.looks_like_key(&key));
            }
        }
        let drv = KeyStyle {
            format: KeyFormat::Drv,
            prefix: "kg".into(),
        }
        .generate();
        assert_eq!(drv.len(), 44, "drv_ + 40 hex");
        let kg = KeyStyle::default().generate();
        assert_eq!(kg.len(), 3 + 38);
        assert_eq!(display_prefix(&kg).len(), 12);
    }

    #[test]
    fn one_wrong_character_fails_the_checksum() {
        let style = KeyStyle::default();
        let key = style.generate();
        let mut bytes = key.clone().into_bytes();
        let i = 10;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert!(!style.is_well_formed(&typo));
        assert!(!style.is_well_formed(&key[..key.len() - 1]));
        assert!(!style.is_well_formed(&format!("{key}x")));
        assert!(!style.is_well_formed("kg_"));
        assert!(!style.is_well_formed(""));
        assert!(!style.is_well_formed("xx_0123456789012345678901234567890123456"));
        let custom = KeyStyle {
            format: KeyFormat::Kg,
            prefix: "acme".into(),
        };
        let k = custom.generate();
        assert!(k.starts_with("acme_") && custom.is_well_formed(&k));
        assert!(
            !style.is_well_formed(&k),
            "another deployment's prefix is not ours"
        );
    }

    #[test]
    fn the_pepper_keys_the_hash() {
        let a = Pepper::new(&[1u8; 32]).unwrap();
        let b = Pepper::new(&[2u8; 32]).unwrap();
        assert_eq!(a.hash_hex("kg_x"), a.hash_hex("kg_x"));
        assert_ne!(a.hash_hex("kg_x"), b.hash_hex("kg_x"));
        assert_eq!(a.hash_hex("kg_x").len(), 64);
        assert!(Pepper::new(b"short").is_err());
    }

    #[test]
    fn expiries() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_expiry("never", now).unwrap(), None);
        assert_eq!(
            parse_expiry("30d", now).unwrap(),
            Some(now + 30 * 86_400_000)
        );
        assert_eq!(
            parse_expiry("1y", now).unwrap(),
            Some(now + 365 * 86_400_000)
        );
        assert_eq!(
            parse_expiry("2030-01-01", now).unwrap(),
            Some(1_893_456_000_000)
        );
        assert_eq!(
            parse_expiry("2030-01-01T00:00:01Z", now).unwrap(),
            Some(1_893_456_001_000)
        );
        assert!(parse_expiry("2020-01-01", now).is_err());
        assert!(parse_expiry("soon", now).is_err());
    }
}
