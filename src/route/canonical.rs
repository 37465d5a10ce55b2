//! The canonicalizer: a raw request target → one canonical form, or 400. The target is read
//! from the raw bytes on the wire and decoded exactly once; that form is both what the policy
//! sees and what goes upstream. Anything the proxy and some backend could read differently is
//! refused rather than guessed at. Pure.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

use crate::refusal::Refusal;

/// Longest request target accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// Most segments a path may have (folders and the name). Deeper paths are refused with 400:
/// no file system people use nests this deep, and every stage after this one is linear in it.
pub const MAX_PATH_DEPTH: usize = 256;

/// A request target in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTarget {
    pub path: CanonicalPath,
    /// The query exactly as received; checked to be printable ASCII with well-formed escapes.
    pub query: Option<String>,
}

impl CanonicalTarget {
    /// The target to send upstream: the canonical path, re-encoded, and the query.
    pub fn upstream_target(&self) -> String {
        let mut out = self.path.encoded();
        if let Some(q) = &self.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// A decoded path: non-empty segments, each valid NFC UTF-8 with no separator or dot-segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CanonicalPath {
    segments: Vec<String>,
    trailing_slash: bool,
}

impl CanonicalPath {
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The decoded path (`/a/b`), as the policy sees it; `/` for the root.
    pub fn decoded(&self) -> String {
        join_segments(&self.segments)
    }

    /// The length of [`CanonicalPath::encoded`], without building it.
    pub fn encoded_len(&self) -> usize {
        let bytes: usize = self
            .segments
            .iter()
            .map(|s| {
                1 + s
                    .bytes()
                    .map(|b| if is_unreserved(b) { 1 } else { 3 })
                    .sum::<usize>()
            })
            .sum();
        bytes + usize::from(bytes == 0 || self.trailing_slash)
    }

    /// The path percent-encoded in one fixed way: every byte outside RFC 3986's unreserved set
    /// is escaped. A trailing slash the client sent is kept.
    pub fn encoded(&self) -> String {
        let mut out = String::with_capacity(self.segments.iter().map(|s| s.len() + 1).sum());
        for seg in &self.segments {
            out.push('/');
            for &b in seg.as_bytes() {
                if is_unreserved(b) {
                    out.push(b as char);
                } else {
                    out.push('%');
                    out.push(HEX[(b >> 4) as usize] as char);
                    out.push(HEX[(b & 15) as usize] as char);
                }
            }
        }
        if out.is_empty() || self.trailing_slash {
            out.push('/');
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

pub(super) fn join_segments(segments: &[String]) -> String {
    if segments.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum());
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    out
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that may appear unescaped in a path: RFC 3986 `pchar` without `;` (path parameters),
/// plus raw UTF-8 (bytes ≥ 0x80, validated after decoding).
fn is_plain_path_byte(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
        || b >= 0x80
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

pub(super) fn bad(message: &'static str) -> Refusal {
    Refusal::BadRequest(Cow::Borrowed(message))
}

/// Canonicalizes a raw request target (origin-form only).
pub fn canonicalize(raw: &[u8]) -> Result<CanonicalTarget, Refusal> {
    if raw.len() > MAX_TARGET_LEN {
        return Err(bad("the request target is too long"));
    }
    if raw.first() != Some(&b'/') {
        return Err(bad("the request target must be an absolute path"));
    }
    let (path, query) = match raw.iter().position(|&b| b == b'?') {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    let path = canonicalize_path(path)?;
    let query = match query {
        Some(q) => Some(check_query(q)?),
        None => None,
    };
    // What goes upstream is held to the same limit: escaping can triple a target's length, and
    // keygate must not forward what it would itself refuse.
    let forwarded = path.encoded_len() + query.as_ref().map_or(0, |q| q.len() + 1);
    if forwarded > MAX_TARGET_LEN {
        return Err(bad("the request target is too long once encoded"));
    }
    Ok(CanonicalTarget { path, query })
}

/// Canonicalizes the path part of a target (starting with `/`, no query).
pub fn canonicalize_path(raw: &[u8]) -> Result<CanonicalPath, Refusal> {
    debug_assert_eq!(raw.first(), Some(&b'/'));
    let mut segments = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut i = 1;
    let mut trailing_slash = false;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'/' => {
                if current.is_empty() {
                    return Err(bad("the path has an empty segment"));
                }
                segments.push(finish_segment(std::mem::take(&mut current))?);
                if segments.len() > MAX_PATH_DEPTH {
                    return Err(bad("the path is deeper than 256 segments"));
                }
                if i + 1 == raw.len() {
                    trailing_slash = true;
                }
            }
            b'%' => {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).copied().and_then(hex_value),
                    raw.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(bad("the path has a malformed percent-escape"));
                };
                let d = (h << 4) | l;
                match d {
                    b'/' => return Err(bad("the path has an encoded '/'")),
                    b'\\' => return Err(bad("the path has an encoded '\\'")),
                    b'%' => return Err(bad("the path has an encoded '%'")),
                    b';' => return Err(bad("the path has an encoded ';'")),
                    0x00..=0x1f | 0x7f => return Err(bad("the path has an encoded control byte")),
                    _ => current.push(d),
                }
                i += 2;
            }
            b'\\' => return Err(bad("the path has a '\\'")),
            b';' => return Err(bad("the path has a ';' parameter")),
            _ if is_plain_path_byte(b) => current.push(b),
            _ => return Err(bad("the path has a byte that must be percent-encoded")),
        }
        i += 1;
    }
    if !current.is_empty() {
        segments.push(finish_segment(current)?);
    }
    if segments.len() > MAX_PATH_DEPTH {
        return Err(bad("the path is deeper than 256 segments"));
    }
    Ok(CanonicalPath {
        segments,
        trailing_slash,
    })
}

/// Checks a path given already decoded (a GraphQL argument): `/` then segments, each checked
/// like a URL's (no dot segment, NFC, no look-alike separators), with no `\\`, `%`, `;` or
/// control character, at most [`MAX_PATH_DEPTH`] deep. Returns it joined canonically (a
/// trailing slash dropped); refuses what a backend could read as another path.
pub fn check_decoded_path(raw: &str) -> Result<String, Refusal> {
    let rest = raw
        .strip_prefix('/')
        .ok_or_else(|| bad("a path argument must start with '/'"))?;
    if raw.len() > MAX_TARGET_LEN {
        return Err(bad("a path argument is too long"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments = Vec::new();
    if !rest.is_empty() {
        for seg in rest.split('/') {
            if seg.is_empty() {
                return Err(bad("the path has an empty segment"));
            }
            if seg
                .bytes()
                .any(|b| matches!(b, b'\\' | b'%' | b';' | 0x00..=0x1f | 0x7f))
            {
                return Err(bad(
                    "a path argument has a '\\', '%', ';' or control character",
                ));
            }
            segments.push(finish_segment(seg.as_bytes().to_vec())?);
            if segments.len() > MAX_PATH_DEPTH {
                return Err(bad("the path is deeper than 256 segments"));
            }
        }
    }
    Ok(join_segments(&segments))
}

fn finish_segment(bytes: Vec<u8>) -> Result<String, Refusal> {
    let seg = String::from_utf8(bytes).map_err(|_| bad("the path is not valid UTF-8"))?;
    if seg.bytes().all(|b| b == b'.') {
        return Err(bad("the path has a dot segment"));
    }
    if !seg.is_ascii() {
        if seg.chars().any(is_lookalike) {
            return Err(bad(
                "the path has a character that looks like '.', '/' or '\\'",
            ));
        }
        if !unicode_normalization::is_nfc(&seg) {
            return Err(bad("the path is not in Unicode normalization form C"));
        }
    }
    Ok(seg)
}

/// Characters that fold (NFKC) to, or are drawn as, a separator or a dot.
fn is_lookalike(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    if matches!(
        c,
        '\u{2215}' // DIVISION SLASH
            | '\u{2044}' // FRACTION SLASH
            | '\u{29F8}' // BIG SOLIDUS
            | '\u{29F9}' // BIG REVERSE SOLIDUS
            | '\u{2216}' // SET MINUS
            | '\u{2571}' // BOX DRAWINGS LIGHT DIAGONAL UPPER RIGHT TO LOWER LEFT
            | '\u{2572}' // BOX DRAWINGS LIGHT DIAGONAL UPPER LEFT TO LOWER RIGHT
            | '\u{0338}' // COMBINING LONG SOLIDUS OVERLAY
            | '\u{0337}' // COMBINING SHORT SOLIDUS OVERLAY
            | '\u{1735}' // PHILIPPINE SINGLE PUNCTUATION
            | '\u{0701}' // SYRIAC SUPRALINEAR FULL STOP
            | '\u{0702}' // SYRIAC SUBLINEAR FULL STOP
            | '\u{A60E}' // VAI FULL STOP
            | '\u{2E31}' // WORD SEPARATOR MIDDLE DOT
            | '\u{2E33}' // RAISED DOT
    ) {
        return true;
    }
    std::iter::once(c)
        .nfkc()
        .any(|d| matches!(d, '.' | '/' | '\\' | '%' | ';'))
}

/// Checks a query: printable ASCII, no `#`, well-formed escapes. Returned unchanged.
fn check_query(q: &[u8]) -> Result<String, Refusal> {
    let mut i = 0;
    while i < q.len() {
        match q[i] {
            b'%' => {
                if q.get(i + 1).copied().and_then(hex_value).is_none()
                    || q.get(i + 2).copied().and_then(hex_value).is_none()
                {
                    return Err(bad("the query has a malformed percent-escape"));
                }
                i += 2;
            }
            b'#' => return Err(bad("the request target has a fragment")),
            0x21..=0x7e => {}
            _ => return Err(bad("the query has a byte that must be percent-encoded")),
        }
        i += 1;
    }
    // INVARIANT: every byte was checked to be printable ASCII above.
    Ok(String::from_utf8_lossy(q).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> CanonicalTarget {
        canonicalize(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw:?} refused: {e:?}"))
    }

    fn refused(raw: &[u8]) {
        match canonicalize(raw) {
            Err(Refusal::BadRequest(_)) => {}
            other => panic!(
                "{:?} must be refused with 400, got {other:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    #[test]
    fn forms_that_must_pass() {
        assert_eq!(ok("/backups/.hidden").path.decoded(), "/backups/.hidden");
        assert_eq!(ok("/backups/a..b").path.decoded(), "/backups/a..b");
        let t = ok("/backups/db%20dump.tar");
        assert_eq!(t.path.decoded(), "/backups/db dump.tar");
        assert_eq!(t.upstream_target(), "/backups/db%20dump.tar");
        let t = ok("/docs/caf%C3%A9/%E6%97%A5%E6%9C%AC.txt");
        assert_eq!(t.path.decoded(), "/docs/café/日本.txt");
        assert_eq!(
            ok("/docs/café").path.decoded(),
            "/docs/café",
            "raw NFC UTF-8"
        );
        assert_eq!(ok("/").path.decoded(), "/");
        assert_eq!(ok("/a/b/").upstream_target(), "/a/b/");
        assert_eq!(ok("/a?x=1&y=%20").upstream_target(), "/a?x=1&y=%20");
        assert_eq!(ok("/%7Euser/a+b").upstream_target(), "/~user/a%2Bb");
        assert_eq!(ok("/a%2eb").path.decoded(), "/a.b");
    }

    #[test]
    fn one_canonical_form_for_equivalent_spellings() {
        assert_eq!(ok("/a%41").upstream_target(), ok("/aA").upstream_target());
        assert_eq!(ok("/x%3a").upstream_target(), ok("/x:").upstream_target());
    }

    #[test]
    fn dot_segments_raw_and_encoded() {
        for raw in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/.",
            "/a/%2e%2e/b",
            "/a/%2E%2E",
            "/a/.%2e/b",
            "/a/%2e/b",
            "/a/...",
            "/a/..../b",
        ] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn empty_segments() {
        for raw in ["//a", "/a//b", "/a/b//"] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn encoded_separators_and_escapes() {
        for raw in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a%5Cb",
            "/a%25b",
            "/a%252e%252e/b",
            "/a%3bb",
        ] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn backslashes_and_path_parameters() {
        for raw in [
            "/a\\b",
            "/a\\..\\b",
            "/a;jsessionid=1/b",
            "/a/..;/b",
            "/a;/b",
        ] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn the_forwarded_target_is_held_to_the_same_length_limit() {
        // Found by fuzz/fuzz_targets/canonicalize.rs: 3 KiB of raw UTF-8 escapes to over 8 KiB.
        for artifact in [
            include_bytes!("../../fuzz/regressions/canonicalize-7f8580af").as_slice(),
            include_bytes!("../../fuzz/regressions/canonicalize-c36f5f53").as_slice(),
        ] {
            refused(artifact);
        }
        let raw_utf8 = format!("/{}", "é".repeat(2000));
        assert!(raw_utf8.len() < MAX_TARGET_LEN);
        refused(raw_utf8.as_bytes());
        let fits = format!("/{}", "é".repeat(1000));
        let t = ok(&fits);
        assert_eq!(t.path.encoded_len(), t.upstream_target().len());
        assert!(t.upstream_target().len() <= MAX_TARGET_LEN);
    }

    #[test]
    fn depth_is_capped() {
        let at_limit = "/a".repeat(MAX_PATH_DEPTH);
        assert_eq!(ok(&at_limit).path.segments().len(), MAX_PATH_DEPTH);
        assert_eq!(
            ok(&format!("{at_limit}/")).path.segments().len(),
            MAX_PATH_DEPTH
        );
        refused("/a".repeat(MAX_PATH_DEPTH + 1).as_bytes());
        refused(format!("{}/", "/a".repeat(MAX_PATH_DEPTH + 1)).as_bytes());
        // A target of one-letter segments that fits in 8 KiB is still refused.
        refused("/a".repeat(4000).as_bytes());
    }

    #[test]
    fn nul_and_control_bytes() {
        for raw in [
            &b"/a\0b"[..],
            b"/a%00b",
            b"/a%0ab",
            b"/a%0d%0ab",
            b"/a\tb",
            b"/a b",
            b"/a%7f",
            b"/a\x7f",
        ] {
            refused(raw);
        }
    }

    #[test]
    fn invalid_and_overlong_utf8() {
        for raw in [
            &b"/a%c0%ae%c0%ae/b"[..], // overlong "."
            b"/a%c0%afb",             // overlong "/"
            b"/a%e0%80%afb",          // 3-byte overlong "/"
            b"/a%ff",
            b"/a%c3",       // truncated
            b"/a\xc3(",     // raw invalid
            b"/a%ed%a0%80", // surrogate
        ] {
            refused(raw);
        }
    }

    #[test]
    fn unicode_lookalikes() {
        for raw in [
            "/a/%E2%80%A4%E2%80%A4/b", // ONE DOT LEADER
            "/a/%EF%BC%8E%EF%BC%8E",   // FULLWIDTH FULL STOP
            "/a%EF%BC%8Fb",            // FULLWIDTH SOLIDUS
            "/a%E2%88%95b",            // DIVISION SLASH
            "/a%E2%81%84b",            // FRACTION SLASH
            "/a%EF%BC%BCb",            // FULLWIDTH REVERSE SOLIDUS
            "/a%EF%B9%A8b",            // SMALL REVERSE SOLIDUS
            "/a/\u{2025}",             // TWO DOT LEADER, raw
        ] {
            refused(raw.as_bytes());
        }
    }

    #[test]
    fn non_nfc_is_refused() {
        refused("/cafe\u{301}".as_bytes()); // e + combining acute
        refused(b"/cafe%CC%81");
    }

    #[test]
    fn target_forms_and_unsafe_bytes() {
        for raw in [
            &b"http://evil/a"[..],
            b"*",
            b"",
            b"a/b",
            b"/a#frag",
            b"/a?x#y",
            b"/a?x y",
            b"/a?x=%zz",
            b"/a?\xc3\xa9",
            b"/a\"b",
            b"/a<b>",
            b"/a^b",
            b"/a`b",
            b"/a{b}",
            b"/a|b",
            b"/a%",
            b"/a%4",
            b"/a%g0",
        ] {
            refused(raw);
        }
        refused(
            &vec![b'a'; MAX_TARGET_LEN + 1]
                .into_iter()
                .fold(vec![b'/'], |mut v, b| {
                    v.push(b);
                    v
                }),
        );
    }
}
