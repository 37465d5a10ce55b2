//! Helpers for the unit tests of every module (compiled only for tests).
//!
//! May import: nothing of keygate's.

use http::{HeaderMap, HeaderName};

/// A header map from (name, value) pairs, in order (repeated names append).
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}
