//! The vocabulary every part of keygate shares: key formats and the keyed hash, scopes and
//! roles, provider grants and names, key lifetimes. Pure values and checks, no I/O.
//!
//! May import: `clock`, `route` (the canonicalizer, for base paths). Imported by everything
//! above it; it must never import the store, identity or policy.

pub mod grant;
pub mod key;
pub mod scope;

pub use grant::{check_provider_name, parse_grants, Grant};
pub use key::{
    display_prefix, hex, parse_expiry, KeyFormat, KeyStyle, Pepper, EXPIRY_WARNING_MS,
    MIN_PEPPER_LEN,
};
pub use scope::{parse_scopes, Role};
