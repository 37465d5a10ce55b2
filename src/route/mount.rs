//! Servers mounted under a path of keygate's (`/dav/{provider}/{*path}`): where each provider's
//! server keeps its tree and how it reads paths ([`Mount`]), and the rewriting both ways of
//! what names a location ([`Forward`]): the request's target, `Destination` and the resource
//! tags of `If` towards the server; the `href`s of its 207 answers and its `Location` back.
//! Pure.

use std::borrow::Cow;

use super::canonical::{bad, canonicalize_in, encode_segments, PathDialect};
use crate::refusal::Refusal;

/// A provider's server: how it reads paths, and the folder its tree lives in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    pub dialect: PathDialect,
    /// Canonical segments of the folder on the server (`remote.php/dav/files/alice`); empty
    /// for its root.
    pub prefix: Vec<String>,
}

/// One request's mapping between keygate's mount of a provider and its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The mount's segments on keygate's side (`dav`, `nas`).
    pub client: Vec<String>,
    /// The provider's folder on its server.
    pub upstream: Vec<String>,
    pub dialect: PathDialect,
}

/// Splits `http[s]://authority/path` into (`http[s]://authority`, `/path`); a path alone is
/// (``, path). `None` for anything else.
fn split_origin(url: &str) -> Option<(&str, &str)> {
    if url.starts_with('/') {
        return Some(("", url));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let slash = rest.find('/')?;
    let at = url.len() - rest.len() + slash;
    Some((&url[..at], &url[at..]))
}

/// The path of an `href` a server wrote (its origin, if any, left out), read as
/// [`server_path`] reads it; `None` when it is neither a path nor an `http[s]` URL.
pub fn server_href_path(href: &str) -> Option<Cow<'_, str>> {
    server_path(split_origin(href)?.1)
}

/// A path as a server wrote it in an `href`, with the bytes some servers leave unescaped there
/// that cannot be delimiters (`[`, `]`, a space, `{`, …: nginx writes `/[b]%20x`) escaped, so
/// that it is read as the names the server meant rather than refused. `None` for a name the
/// server stores decomposed (NFD): keygate reads that spelling as its composed twin, a name
/// of its own on such a server, so the entry would be shown as another.
fn server_path(path: &str) -> Option<Cow<'_, str>> {
    const LOOSE: &[u8] = b" \"<>[]^`{|}";
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    if !unicode_normalization::is_nfc(&decoded) {
        return None;
    }
    if !path.bytes().any(|b| LOOSE.contains(&b)) {
        return Some(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len() + 8);
    for c in path.chars() {
        if c.is_ascii() && LOOSE.contains(&(c as u8)) {
            out.push_str(&format!("%{:02X}", c as u8));
        } else {
            out.push(c);
        }
    }
    Some(Cow::Owned(out))
}

impl Forward {
    /// The client's URL (`/dav/nas/a%20b`) for one a server wrote (`/a%20b`,
    /// `http://10.0.0.5/a%20b`): `None` when it is not under the provider's folder there, or
    /// not a path the dialect accepts (the entry is then not shown).
    pub fn client_href(&self, href: &str) -> Option<String> {
        let path = server_href_path(href)?;
        let target = canonicalize_in(path.as_bytes(), self.dialect).ok()?;
        if target.query.is_some() {
            return None;
        }
        let segments = target.path.segments();
        let rest = segments.strip_prefix(self.upstream.as_slice())?;
        Some(encode_segments(
            self.client.iter().chain(rest),
            path.ends_with('/'),
        ))
    }

    /// A URL of the client's under this mount (`http://keygate/dav/nas/a`) as the server knows
    /// it (`http://keygate/a`): the origin kept, the path moved. 400 when it is not under the
    /// mount of this request's provider.
    pub fn upstream_url(&self, url: &str) -> Result<String, Refusal> {
        let (origin, path) =
            split_origin(url).ok_or_else(|| bad("a URL in the If header is malformed"))?;
        let target = canonicalize_in(path.as_bytes(), self.dialect)?;
        if target.query.is_some() {
            return Err(bad("a URL in the If header carries a query"));
        }
        let rest = target
            .path
            .segments()
            .strip_prefix(self.client.as_slice())
            .ok_or_else(|| bad("the If header names a resource of another provider"))?;
        Ok(format!(
            "{origin}{}",
            encode_segments(self.upstream.iter().chain(rest), path.ends_with('/'))
        ))
    }

    /// The `If` header (RFC 4918 §10.4) as the server must read it: each resource tag (a
    /// `<URL>` outside parentheses) moved under the server's folder; state tokens and entity
    /// tags kept. 400 when it cannot be read.
    pub fn upstream_if(&self, value: &[u8]) -> Result<String, Refusal> {
        let value = std::str::from_utf8(value).map_err(|_| bad("the If header is not text"))?;
        let mut out = String::with_capacity(value.len() + 16);
        let mut depth = 0u32;
        let mut rest = value;
        while let Some(c) = rest.chars().next() {
            match c {
                '(' => depth += 1,
                ')' if depth > 0 => depth -= 1,
                ')' => return Err(bad("the If header is malformed")),
                '[' => {
                    // An entity tag: copied up to its `]`, whatever it holds.
                    let end = rest
                        .find(']')
                        .ok_or_else(|| bad("the If header is malformed"))?;
                    out.push_str(&rest[..=end]);
                    rest = &rest[end + 1..];
                    continue;
                }
                '<' => {
                    let end = rest
                        .find('>')
                        .ok_or_else(|| bad("the If header is malformed"))?;
                    let url = &rest[1..end];
                    let moved: Cow<'_, str> = if depth == 0 {
                        Cow::Owned(self.upstream_url(url)?)
                    } else {
                        Cow::Borrowed(url)
                    };
                    out.push('<');
                    out.push_str(&moved);
                    out.push('>');
                    rest = &rest[end + 1..];
                    continue;
                }
                _ => {}
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if depth != 0 {
            return Err(bad("the If header is malformed"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    fn nas() -> Forward {
        Forward {
            client: segs(&["dav", "nas"]),
            upstream: Vec::new(),
            dialect: PathDialect::POSIX,
        }
    }

    fn nextcloud() -> Forward {
        Forward {
            client: segs(&["dav", "nc"]),
            upstream: segs(&["remote.php", "dav", "files", "alice"]),
            dialect: PathDialect::POSIX,
        }
    }

    #[test]
    fn hrefs_come_back_under_the_mount() {
        let f = nas();
        assert_eq!(f.client_href("/").as_deref(), Some("/dav/nas/"));
        assert_eq!(f.client_href("/a%20b/").as_deref(), Some("/dav/nas/a%20b/"));
        // nginx leaves `[`, `]` and the like unescaped in its hrefs.
        assert_eq!(
            f.client_href("/[b] x").as_deref(),
            Some("/dav/nas/%5Bb%5D%20x")
        );
        assert_eq!(f.client_href("/a#b"), None, "a fragment is no name");
        // A name the server keeps decomposed is not its composed twin.
        assert_eq!(f.client_href("/cafe%CC%81"), None);
        assert_eq!(
            f.client_href("/caf%C3%A9").as_deref(),
            Some("/dav/nas/caf%C3%A9")
        );
        assert_eq!(
            f.client_href("/50%25%20off").as_deref(),
            Some("/dav/nas/50%25%20off")
        );
        assert_eq!(
            f.client_href("http://127.0.0.1:8081/x;y").as_deref(),
            Some("/dav/nas/x%3By")
        );
        let nc = nextcloud();
        assert_eq!(
            nc.client_href("/remote.php/dav/files/alice/Photos/")
                .as_deref(),
            Some("/dav/nc/Photos/")
        );
        // Outside the provider's folder on its server: not shown.
        assert_eq!(nc.client_href("/remote.php/dav/files/bob/x"), None);
        assert_eq!(nc.client_href("/remote.php/dav/files/alice/../bob"), None);
        assert_eq!(nc.client_href("/x?y"), None);
        assert_eq!(nc.client_href("ftp://h/remote.php/dav/files/alice/x"), None);
    }

    #[test]
    fn if_headers_name_the_servers_resources() {
        let f = nextcloud();
        let token = "(<opaquelocktoken:e71d4fae-5dec-22d6-fea5-00a0c91e6be4>)";
        assert_eq!(
            f.upstream_if(format!("<http://kg:8080/dav/nc/a.txt> {token}").as_bytes())
                .unwrap(),
            format!("<http://kg:8080/remote.php/dav/files/alice/a.txt> {token}")
        );
        // No tag: the request's own resource; tokens and entity tags are kept.
        let untagged = "(<urn:uuid:181d4fae-7d8c-11d0-a765-00a0c91e6bf2> [\"I am <an> ETag)\"]) (Not <DAV:no-lock>)";
        assert_eq!(f.upstream_if(untagged.as_bytes()).unwrap(), untagged);
        for bad_if in [
            "<http://kg/dav/other/a.txt> (<opaquelocktoken:x>)",
            "</dav/nc/../../etc> (<x>)",
            "(<x>",
            "<http://kg/dav/nc/a",
            ")",
        ] {
            assert!(f.upstream_if(bad_if.as_bytes()).is_err(), "{bad_if}");
        }
    }
}
