//! The path canonicalizer on any bytes, in the strict and the POSIX dialect: it never panics,
//! its canonical form is a fixed point (canonicalizing what goes upstream gives it back
//! unchanged), and what goes upstream, decoded once, is exactly the names that were authorized.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use keygate::route::{canonicalize_in, PathDialect};
    for dialect in [PathDialect::STRICT, PathDialect::POSIX] {
        check(data, dialect, |raw| canonicalize_in(raw, dialect));
    }
});

fn check(
    data: &[u8],
    dialect: keygate::route::PathDialect,
    canonicalize: impl Fn(&[u8]) -> Result<keygate::route::CanonicalTarget, keygate::refusal::Refusal>,
) {
    if let Ok(target) = canonicalize(data) {
        let upstream = target.upstream_target();
        let path = upstream.split('?').next().unwrap_or_default();
        let read: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .expect("forwarded names are UTF-8")
                    .into_owned()
            })
            .collect();
        assert_eq!(read, target.path.segments(), "{dialect:?}: the backend reads other names");
        let again = canonicalize(upstream.as_bytes())
            .expect("the canonical form is itself accepted");
        assert_eq!(
            again.upstream_target(),
            upstream,
            "canonicalization is idempotent"
        );
        assert!(target.path.segments().len() <= keygate::route::MAX_PATH_DEPTH);
        for segment in target.path.segments() {
            assert!(!segment.is_empty() && !segment.contains('/'));
            assert!(segment != "." && segment != "..", "no dot segment survives");
            assert!(dialect.dots || segment.bytes().any(|b| b != b'.'));
            assert!(!segment.contains('\0'));
        }
    }
}
