//! The path canonicalizer on any bytes: it never panics, and its canonical form is a fixed
//! point (canonicalizing what goes upstream gives it back unchanged).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(target) = keygate::route::canonicalize(data) {
        let upstream = target.upstream_target();
        let again = keygate::route::canonicalize(upstream.as_bytes())
            .expect("the canonical form is itself accepted");
        assert_eq!(
            again.upstream_target(),
            upstream,
            "canonicalization is idempotent"
        );
        assert!(target.path.segments().len() <= keygate::route::MAX_PATH_DEPTH);
        for segment in target.path.segments() {
            assert!(!segment.is_empty() && !segment.contains('/'));
            assert!(
                segment.bytes().any(|b| b != b'.'),
                "no dot segment survives"
            );
        }
    }
});
