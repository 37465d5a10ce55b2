//! The canonicalizer: a raw request target → one canonical form, or 400. The target is read
//! from the raw bytes on the wire and decoded exactly once; that form is both what the policy
//! sees and what goes upstream. Anything the proxy and the backend could read differently is
//! refused rather than guessed at; what that is depends on the backend's [`PathDialect`]. Pure.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

use crate::refusal::Refusal;

/// Longest request target accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// Most segments a path may have (folders and the name). Deeper paths are refused with 400:
/// no file system people use nests this deep, and every stage after this one is linear in it.
pub const MAX_PATH_DEPTH: usize = 256;

/// What the backend behind keygate does with the characters some servers read specially. For
/// each, `true` means the backend reads it literally, as a character of a name; `false` means
/// it may read it otherwise, so keygate refuses it (400). A literal character is authorized as
/// the exact name and forwarded percent-encoded, so `backups;` is always a folder other than
/// `backups`. Whatever the dialect: `/` and NUL are never name characters, `.` and `..` are
/// never names, the path must be UTF-8, and a name in decomposed Unicode (NFD, as macOS
/// clients send it) is authorized and forwarded in composed form (NFC), so both spellings are
/// one name to the policies and the backend stores the one keygate forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathDialect {
    /// `%` (a backend that decodes twice would read `%252e` as `.`).
    pub percent: bool,
    /// `;` (path parameters to Tomcat, Jetty and Spring: `/a;x/b` is `/a/b` there).
    pub semicolon: bool,
    /// `\` (a separator on Windows servers and some normalizers).
    pub backslash: bool,
    /// Characters that look like or fold (NFKC) to `.`, `/`, `\`, `%` or `;`.
    pub lookalikes: bool,
    /// Control characters other than NUL (U+0001–U+001F, U+007F), which POSIX names may hold.
    pub controls: bool,
    /// Names made only of three or more dots (`...`), or ending in a dot or a space (Windows
    /// drops trailing dots and spaces: `hr.` and `hr ` are `hr` there).
    pub dots: bool,
}

impl PathDialect {
    /// Refuses everything any backend could read specially: for backends keygate knows
    /// nothing about.
    pub const STRICT: PathDialect = PathDialect {
        percent: false,
        semicolon: false,
        backslash: false,
        lookalikes: false,
        controls: false,
        dots: false,
    };

    /// A server that decodes the target once and stores names as bytes on a POSIX file
    /// system: the bundled storage-backend, nginx's and Apache's WebDAV on Linux, `rclone serve
    /// webdav`. Every name such a file system accepts (all but `/`, NUL, `.` and `..`) passes.
    pub const POSIX: PathDialect = PathDialect {
        percent: true,
        semicolon: true,
        backslash: true,
        lookalikes: true,
        controls: true,
        dots: true,
    };
}

impl Default for PathDialect {
    fn default() -> PathDialect {
        PathDialect::STRICT
    }
}

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

    /// `prefix` then the segments from `start` on, encoded as [`CanonicalPath::encoded`] does
    /// (a mounted server's path for a request under keygate's mount).
    pub fn encoded_under(&self, prefix: &[String], start: usize) -> String {
        let rest = self.segments.get(start..).unwrap_or_default();
        encode_segments(prefix.iter().chain(rest), self.trailing_slash)
    }

    /// The path percent-encoded in one fixed way: every byte outside RFC 3986's unreserved set
    /// is escaped. A trailing slash the client sent is kept.
    pub fn encoded(&self) -> String {
        encode_segments(self.segments.iter(), self.trailing_slash)
    }
}

/// Segments percent-encoded in one fixed way, joined with `/`; `/` for none.
pub(super) fn encode_segments<'a>(
    segments: impl Iterator<Item = &'a String>,
    trailing_slash: bool,
) -> String {
    let mut out = String::new();
    for seg in segments {
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
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
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

/// Canonicalizes a raw request target (origin-form only) in the strict dialect.
pub fn canonicalize(raw: &[u8]) -> Result<CanonicalTarget, Refusal> {
    canonicalize_in(raw, PathDialect::STRICT)
}

/// Canonicalizes a raw request target (origin-form only) for a backend of `dialect`.
pub fn canonicalize_in(raw: &[u8], dialect: PathDialect) -> Result<CanonicalTarget, Refusal> {
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
    let path = canonicalize_path_in(path, dialect)?;
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

/// Canonicalizes the path part of a target (starting with `/`, no query), strictly.
pub fn canonicalize_path(raw: &[u8]) -> Result<CanonicalPath, Refusal> {
    canonicalize_path_in(raw, PathDialect::STRICT)
}

/// Canonicalizes the path part of a target (starting with `/`, no query) for `dialect`.
pub fn canonicalize_path_in(raw: &[u8], dialect: PathDialect) -> Result<CanonicalPath, Refusal> {
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
                segments.push(finish_segment(std::mem::take(&mut current), dialect)?);
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
                    0x00 => return Err(bad("the path has an encoded NUL")),
                    b'\\' if !dialect.backslash => return Err(bad("the path has an encoded '\\'")),
                    b'%' if !dialect.percent => return Err(bad("the path has an encoded '%'")),
                    b';' if !dialect.semicolon => return Err(bad("the path has an encoded ';'")),
                    0x01..=0x1f | 0x7f if !dialect.controls => {
                        return Err(bad("the path has an encoded control byte"))
                    }
                    _ => current.push(d),
                }
                i += 2;
            }
            b'\\' if dialect.backslash => current.push(b),
            b';' if dialect.semicolon => current.push(b),
            b'\\' => return Err(bad("the path has a '\\'")),
            b';' => return Err(bad("the path has a ';' parameter")),
            _ if is_plain_path_byte(b) => current.push(b),
            _ => return Err(bad("the path has a byte that must be percent-encoded")),
        }
        i += 1;
    }
    if !current.is_empty() {
        segments.push(finish_segment(current, dialect)?);
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
    decoded_path(raw, PathDialect::STRICT, |seg| {
        if seg
            .bytes()
            .any(|b| matches!(b, b'\\' | b'%' | b';' | 0x00..=0x1f | 0x7f))
        {
            return Err(bad(
                "a path argument has a '\\', '%', ';' or control character",
            ));
        }
        // The argument goes upstream as it came, so a decomposed name is refused here rather
        // than authorized in a form the backend never sees.
        if !unicode_normalization::is_nfc(seg) {
            return Err(bad(
                "a path argument is not in Unicode normalization form C",
            ));
        }
        Ok(())
    })
}

/// A path written as names (`/albums/2026 trip`), as an operator writes a base path: `/` then
/// names separated by `/`, each neither empty, `.` nor `..`, without NUL, at most
/// [`MAX_PATH_DEPTH`] deep and [`MAX_TARGET_LEN`] long; decomposed Unicode is composed (NFC).
/// Returns it joined canonically (a trailing slash dropped), as the policies see paths.
pub fn check_name_path(raw: &str) -> Result<String, Refusal> {
    decoded_path(raw, PathDialect::POSIX, |seg| {
        if seg.contains('\0') {
            return Err(bad("the path has a NUL"));
        }
        Ok(())
    })
}

/// A decoded path: `/`, then names separated by `/` (a trailing one dropped), each passing
/// `check` and then read as a name of `dialect`. Joined canonically.
fn decoded_path(
    raw: &str,
    dialect: PathDialect,
    check: impl Fn(&str) -> Result<(), Refusal>,
) -> Result<String, Refusal> {
    let rest = raw
        .strip_prefix('/')
        .ok_or_else(|| bad("a path must start with '/'"))?;
    if raw.len() > MAX_TARGET_LEN {
        return Err(bad("the path is too long"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments = Vec::new();
    if !rest.is_empty() {
        for seg in rest.split('/') {
            if seg.is_empty() {
                return Err(bad("the path has an empty segment"));
            }
            check(seg)?;
            segments.push(finish_segment(seg.as_bytes().to_vec(), dialect)?);
            if segments.len() > MAX_PATH_DEPTH {
                return Err(bad("the path is deeper than 256 segments"));
            }
        }
    }
    Ok(join_segments(&segments))
}

fn finish_segment(bytes: Vec<u8>, dialect: PathDialect) -> Result<String, Refusal> {
    let mut seg = String::from_utf8(bytes).map_err(|_| bad("the path is not valid UTF-8"))?;
    if !seg.is_ascii() && !unicode_normalization::is_nfc(&seg) {
        seg = seg.nfc().collect();
        // Composing can yield a character the dialect refuses: U+037E GREEK QUESTION MARK is
        // `;` in NFC (found by fuzz/fuzz_targets/canonicalize.rs).
        let refused = |c: char| match c {
            '/' | '\0' => true,
            ';' => !dialect.semicolon,
            '\\' => !dialect.backslash,
            '%' => !dialect.percent,
            c if c.is_ascii_control() => !dialect.controls,
            _ => false,
        };
        if seg.chars().any(refused) {
            return Err(bad(
                "the path has a name whose composed form (NFC) holds a character this server reads otherwise",
            ));
        }
    }
    if matches!(seg.as_str(), "." | "..") {
        return Err(bad("the path has a dot segment"));
    }
    if !dialect.dots && seg.bytes().all(|b| b == b'.') {
        return Err(bad("the path has a name made only of dots"));
    }
    if !dialect.dots && seg.ends_with(['.', ' ']) {
        return Err(bad("the path has a name ending in a dot or a space"));
    }
    if !dialect.lookalikes && !seg.is_ascii() && seg.chars().any(is_lookalike) {
        return Err(bad(
            "the path has a character that looks like '.', '/' or '\\'",
        ));
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
    fn paths_written_as_names() {
        assert_eq!(
            check_name_path("/albums/2026 trip/").unwrap(),
            "/albums/2026 trip"
        );
        assert_eq!(check_name_path("/50% off;x\\y").unwrap(), "/50% off;x\\y");
        assert_eq!(check_name_path("/cafe\u{301}").unwrap(), "/café");
        assert_eq!(check_name_path("/").unwrap(), "/");
        for bad in ["", "a", "/a//b", "/a/../b", "/.", "/a\0b"] {
            assert!(check_name_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn composing_never_makes_a_character_the_dialect_refuses() {
        // fuzz/regressions/canonicalize-cf534ec9: U+037E GREEK QUESTION MARK composes to `;`.
        let artifact = include_bytes!("../../fuzz/regressions/canonicalize-cf534ec9");
        refused(artifact);
        refused("/a\u{37E}b".as_bytes());
        refused(b"/a%CD%BEb");
        let posix = canonicalize_in(b"/a%CD%BEb", PathDialect::POSIX).unwrap();
        assert_eq!(posix.path.decoded(), "/a;b");
        assert_eq!(posix.upstream_target(), "/a%3Bb");
    }

    #[test]
    fn decomposed_names_are_authorized_and_forwarded_composed() {
        for dialect in [PathDialect::STRICT, PathDialect::POSIX] {
            for raw in ["/cafe\u{301}", "/cafe%CC%81", "/caf%C3%A9"] {
                let t = canonicalize_in(raw.as_bytes(), dialect).unwrap();
                assert_eq!(t.path.decoded(), "/café", "{raw}");
                assert_eq!(t.upstream_target(), "/caf%C3%A9", "{raw}");
            }
        }
        // A path argument goes upstream as it came, so it is refused instead.
        assert!(check_decoded_path("/cafe\u{301}").is_err());
    }

    /// Reads a forwarded target as a backend of the POSIX dialect does: percent-decoded once,
    /// split at `/`.
    fn as_posix_backend_reads(forwarded: &str) -> Vec<String> {
        forwarded
            .trim_start_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .unwrap()
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn the_posix_dialect_reads_names_literally() {
        let posix = |raw: &str| {
            canonicalize_in(raw.as_bytes(), PathDialect::POSIX)
                .unwrap_or_else(|e| panic!("{raw:?} refused: {e:?}"))
        };
        for (raw, decoded, forwarded) in [
            ("/50%25%20off.pdf", "/50% off.pdf", "/50%25%20off.pdf"),
            ("/backups;", "/backups;", "/backups%3B"),
            (
                "/a;jsessionid=1/b",
                "/a;jsessionid=1/b",
                "/a%3Bjsessionid%3D1/b",
            ),
            ("/a/..;/b", "/a/..;/b", "/a/..%3B/b"),
            ("/a%3bb", "/a;b", "/a%3Bb"),
            ("/a\\b", "/a\\b", "/a%5Cb"),
            ("/a%5Cb", "/a\\b", "/a%5Cb"),
            ("/a%252e%252e/b", "/a%2e%2e/b", "/a%252e%252e/b"),
            ("/a/...", "/a/...", "/a/..."),
            ("/line%0Abreak", "/line\nbreak", "/line%0Abreak"),
            ("/a%EF%BC%8Fb", "/a\u{FF0F}b", "/a%EF%BC%8Fb"),
            ("/it's%20%22q%22", "/it's \"q\"", "/it%27s%20%22q%22"),
        ] {
            let t = posix(raw);
            assert_eq!(t.path.decoded(), decoded, "{raw}");
            assert_eq!(t.upstream_target(), forwarded, "{raw}");
            assert_eq!(
                as_posix_backend_reads(forwarded),
                t.path.segments(),
                "{raw}"
            );
            assert_eq!(
                posix(forwarded),
                t,
                "{raw}: the forwarded form is a fixed point"
            );
        }
        assert_ne!(posix("/backups;").path, posix("/backups").path);
        assert_ne!(posix("/a%5Cb").path.segments().len(), 2);
        // Whatever the dialect: no `/` inside a name, no NUL, no `.` or `..`, UTF-8 only.
        for raw in [
            &b"/a%2fb"[..],
            b"/a%00b",
            b"/a/../b",
            b"/a/%2e%2e/b",
            b"/a/%2E",
            b"/a%ff",
            b"/a%c0%af",
            b"//a",
            b"/a b",
            b"/a\x01b",
            b"/a#b",
            b"http://evil/a",
        ] {
            assert!(
                canonicalize_in(raw, PathDialect::POSIX).is_err(),
                "{:?} must be refused in the POSIX dialect too",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn trailing_dots_and_spaces_are_names_only_where_the_server_keeps_them() {
        for raw in ["/hr.", "/hr%20", "/hr.%20", "/a/b./c"] {
            assert!(
                canonicalize_in(raw.as_bytes(), PathDialect::STRICT).is_err(),
                "{raw}"
            );
            assert!(
                canonicalize_in(raw.as_bytes(), PathDialect::POSIX).is_ok(),
                "{raw}"
            );
        }
        assert!(canonicalize(b"/a..b/.hidden/x.y").is_ok());
    }

    /// Every attack-corpus target, in every dialect, is either refused or authorized as
    /// exactly the names the backend will read from what keygate forwards.
    #[test]
    fn the_attack_corpus_holds_in_every_dialect() {
        let corpus: &[&[u8]] = &[
            b"/a/../b",
            b"/a/%2e%2e/b",
            b"/a/.%2e/b",
            b"/a%2fb",
            b"/a%5cb",
            b"/a%25b",
            b"/a%252e%252e/b",
            b"/a%3bb",
            b"/a\\b",
            b"/a\\..\\b",
            b"/a;jsessionid=1/b",
            b"/a/..;/b",
            b"/a;/b",
            b"/a%00b",
            b"/a%0d%0ab",
            b"/a%c0%ae%c0%ae/b",
            b"/a%e0%80%afb",
            b"/a/%E2%80%A4%E2%80%A4/b",
            b"/a%EF%BC%8Fb",
            b"/a%E2%88%95b",
            b"/cafe%CC%81",
            b"/a/...",
            b"/backups;",
            b"/%2e",
            b"/a//b",
        ];
        let mut dialects = vec![PathDialect::STRICT, PathDialect::POSIX];
        for bit in 0..6 {
            let mut d = PathDialect::STRICT;
            *[
                &mut d.percent,
                &mut d.semicolon,
                &mut d.backslash,
                &mut d.lookalikes,
                &mut d.controls,
                &mut d.dots,
            ][bit] = true;
            dialects.push(d);
        }
        for dialect in dialects {
            for raw in corpus {
                let Ok(t) = canonicalize_in(raw, dialect) else {
                    continue;
                };
                let forwarded = t.upstream_target();
                assert_eq!(
                    as_posix_backend_reads(&forwarded),
                    t.path.segments(),
                    "{dialect:?} {:?}",
                    String::from_utf8_lossy(raw)
                );
                for seg in t.path.segments() {
                    assert!(seg != "." && seg != ".." && !seg.contains(['/', '\0']));
                    assert!(dialect.semicolon || !seg.contains(';'));
                    assert!(dialect.backslash || !seg.contains('\\'));
                    assert!(dialect.percent || !seg.contains('%'));
                }
            }
        }
        assert!(canonicalize_in(b"/a;b", PathDialect::STRICT).is_err());
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
