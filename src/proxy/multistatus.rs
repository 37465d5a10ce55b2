//! Filtering a WebDAV `207 Multi-Status` answer as it streams: each `<response>` element is
//! kept (its `<href>` perhaps rewritten) or dropped whole by what its `<href>` names, so a
//! listing decided on the way to a credential's base paths shows only the entries on the way
//! and never their siblings' names, and a server mounted under keygate's path names its
//! entries under that path.
//!
//! Fails closed: what cannot be read as a multistatus (another root, a `<response>` larger than
//! [`MAX_ENTRY`], content after the responses) is dropped, and the document is closed with the
//! multistatus end tag, so the client sees a well-formed listing of what was kept. Memory is
//! bounded by [`MAX_ENTRY`] plus one chunk; work is linear in the body. Pure: the decision on an
//! entry is the caller's `keep`.

/// Largest `<response>` element (and prologue before the first) kept, in bytes: entries of
/// real servers are well under 4 KiB.
pub const MAX_ENTRY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before the multistatus start tag.
    Prologue,
    /// Between responses: `prefix` is the multistatus element's namespace prefix (`D:`).
    Responses,
    /// The document is closed; the rest of the body is dropped.
    Done,
}

/// The filter of one answer.
#[derive(Debug)]
pub struct Multistatus {
    buf: Vec<u8>,
    state: State,
    prefix: Vec<u8>,
    closed: bool,
    /// How far the buffer was searched for the end of the entry it starts with, so each byte
    /// is searched once however the body is cut.
    searched: usize,
    /// The answer cannot be read (it is compressed): it is replaced by an empty listing.
    unreadable: bool,
    /// Entries kept and dropped, for the log.
    pub kept: usize,
    pub dropped: usize,
}

impl Default for Multistatus {
    fn default() -> Multistatus {
        Multistatus::new()
    }
}

impl Multistatus {
    pub fn new() -> Multistatus {
        Multistatus {
            buf: Vec::new(),
            state: State::Prologue,
            prefix: Vec::new(),
            closed: false,
            searched: 0,
            unreadable: false,
            kept: 0,
            dropped: 0,
        }
    }

    /// The filter of an answer that cannot be read (a `Content-Encoding`): whatever it holds
    /// is dropped, and the client gets an empty listing.
    pub fn unreadable() -> Multistatus {
        Multistatus {
            unreadable: true,
            ..Multistatus::new()
        }
    }

    /// Takes the next chunk of the body; returns what may be sent on. `keep` is asked about
    /// each entry's `href` (its text, XML entities decoded): `None` drops the entry, `Some`
    /// keeps it with that `href`.
    pub fn push(&mut self, chunk: &[u8], keep: &mut Keep<'_>) -> Vec<u8> {
        if self.state == State::Done || self.unreadable {
            return Vec::new();
        }
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Prologue => match multistatus_start(&self.buf) {
                    Some((end, prefix)) => {
                        out.extend_from_slice(&self.buf[..end]);
                        self.buf.drain(..end);
                        self.prefix = prefix;
                        self.state = State::Responses;
                    }
                    None if self.buf.len() > MAX_ENTRY || ends_root(&self.buf) => {
                        return self.fail(out);
                    }
                    None => return out,
                },
                State::Responses => {
                    let start = self
                        .buf
                        .iter()
                        .position(|b| !b.is_ascii_whitespace())
                        .unwrap_or(self.buf.len());
                    self.buf.drain(..start);
                    if self.buf.is_empty() {
                        return out;
                    }
                    let open = tag(b"<", &self.prefix, b"response");
                    let close_ms = tag(b"</", &self.prefix, b"multistatus>");
                    if self.buf.starts_with(b"<!--") {
                        match find(&self.buf, b"-->") {
                            Some(i) => {
                                self.buf.drain(..i + 3);
                                continue;
                            }
                            None if self.buf.len() > MAX_ENTRY => return self.fail(out),
                            None => return out,
                        }
                    }
                    if self.buf.starts_with(&close_ms) {
                        return self.fail(out);
                    }
                    // Too short yet to tell what comes: wait for more.
                    if close_ms.starts_with(&self.buf)
                        || b"<!--".starts_with(&self.buf)
                        || (self.buf.len() <= open.len() && open.starts_with(&self.buf))
                    {
                        return out;
                    }
                    let after = self.buf.get(open.len()).copied();
                    if !self.buf.starts_with(&open)
                        || !matches!(after, Some(b'>' | b' ' | b'\t' | b'\r' | b'\n'))
                    {
                        return self.fail(out);
                    }
                    let close = tag(b"</", &self.prefix, b"response>");
                    let from = self.searched.saturating_sub(close.len());
                    let found = find(&self.buf[from..], &close).map(|i| from + i + close.len());
                    let end = match found {
                        Some(end) if end <= MAX_ENTRY => end,
                        Some(_) => return self.fail(out),
                        None if self.buf.len() > MAX_ENTRY => return self.fail(out),
                        None => {
                            self.searched = self.buf.len();
                            return out;
                        }
                    };
                    self.searched = 0;
                    let element = &self.buf[..end];
                    let kept = href(element, &self.prefix)
                        .and_then(|(span, text)| Some((span, keep(&text)?)));
                    match kept {
                        Some(((from, to), new)) => {
                            out.extend_from_slice(&element[..from]);
                            escape_into(&mut out, &new);
                            out.extend_from_slice(&element[to..]);
                            out.push(b'\n');
                            self.kept += 1;
                        }
                        None => self.dropped += 1,
                    }
                    self.buf.drain(..end);
                }
                State::Done => return out,
            }
        }
    }

    /// The end of the body: closes the document if the answer did not.
    pub fn finish(&mut self, keep: &mut Keep<'_>) -> Vec<u8> {
        let out = self.push(&[], keep);
        self.fail(out)
    }

    /// Whether the end of the document has been written.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Drops whatever is left and closes the document (once).
    fn fail(&mut self, mut out: Vec<u8>) -> Vec<u8> {
        if self.state == State::Prologue {
            // Nothing was sent: an empty listing in its place.
            out.extend_from_slice(
                b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:multistatus xmlns:D=\"DAV:\">\n",
            );
            self.prefix = b"D:".to_vec();
        }
        if !self.closed {
            out.extend_from_slice(&tag(b"</", &self.prefix, b"multistatus>"));
            out.push(b'\n');
            self.closed = true;
        }
        self.state = State::Done;
        self.buf = Vec::new();
        out
    }
}

/// What decides an entry: its `href` in, `None` to drop it or the `href` to show.
pub type Keep<'a> = dyn FnMut(&str) -> Option<String> + 'a;

/// `text` as XML character data.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    for b in text.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            _ => out.push(b),
        }
    }
}

fn tag(open: &[u8], prefix: &[u8], name: &[u8]) -> Vec<u8> {
    [open, prefix, name].concat()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// True once the prologue shows an element that is not the multistatus.
fn ends_root(buf: &[u8]) -> bool {
    let mut i = 0;
    while let Some(lt) = buf[i..].iter().position(|&b| b == b'<') {
        let at = i + lt;
        match buf.get(at + 1) {
            Some(b'?' | b'!') | None => {
                match buf[at..].iter().position(|&b| b == b'>') {
                    Some(gt) => i = at + gt + 1,
                    None => return false,
                }
                continue;
            }
            Some(_) => {
                let name_end = buf[at + 1..]
                    .iter()
                    .position(|&b| matches!(b, b' ' | b'>' | b'\t' | b'\r' | b'\n' | b'/'));
                return match name_end {
                    Some(n) => !buf[at + 1..at + 1 + n].ends_with(b"multistatus"),
                    None => false,
                };
            }
        }
    }
    false
}

/// The end of the multistatus start tag (after its `>`) and its prefix (`D:` or empty), once
/// the buffer holds it; the XML declaration and comments before it are kept.
fn multistatus_start(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut i = 0;
    loop {
        let at = i + buf[i..].iter().position(|&b| b == b'<')?;
        let next = *buf.get(at + 1)?;
        let gt = at + buf[at..].iter().position(|&b| b == b'>')?;
        if matches!(next, b'?' | b'!') {
            i = gt + 1;
            continue;
        }
        let name_end = buf[at + 1..gt]
            .iter()
            .position(|&b| b.is_ascii_whitespace() || b == b'/')
            .map_or(gt, |n| at + 1 + n);
        let name = &buf[at + 1..name_end];
        let prefix = name.strip_suffix(b"multistatus")?;
        if !(prefix.is_empty() || prefix.ends_with(b":")) || buf[gt - 1] == b'/' {
            return None;
        }
        return Some((gt + 1, prefix.to_vec()));
    }
}

/// Where an entry's `<href>` text is and what it says, entities decoded; `None` when the
/// entry has not exactly one.
fn href(element: &[u8], prefix: &[u8]) -> Option<((usize, usize), String)> {
    let open = tag(b"<", prefix, b"href>");
    let close = tag(b"</", prefix, b"href>");
    let start = find(element, &open)? + open.len();
    let len = find(&element[start..], &close)?;
    if find(&element[start + len..], &open).is_some() {
        return None;
    }
    let text = std::str::from_utf8(&element[start..start + len]).ok()?;
    Some(((start, start + len), decode_entities(text.trim())?))
}

/// XML's five named entities and character references; `None` for anything else.
fn decode_entities(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let semi = rest[amp..].find(';')? + amp;
        let entity = &rest[amp + 1..semi];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let n = match entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                    None => entity.strip_prefix('#')?.parse().ok()?,
                };
                char::from_u32(n)?
            }
        };
        out.push(c);
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &str = "<?xml version=\"1.0\" encoding=\"utf-8\" ?>\n\
        <D:multistatus xmlns:D=\"DAV:\">\n\
        <D:response>\n<D:href>/projects/</D:href>\n<D:propstat><D:prop><D:resourcetype><D:collection/></D:resourcetype></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>\n</D:response>\n\
        <D:response>\n<D:href>/projects/alpha/</D:href>\n<D:propstat><D:prop/></D:propstat>\n</D:response>\n\
        <D:response>\n<D:href>/projects/beta%20secret/</D:href>\n<D:propstat><D:prop/></D:propstat>\n</D:response>\n\
        <D:response>\n<D:href>/projects/a&amp;b.txt</D:href>\n<D:propstat><D:prop/></D:propstat>\n</D:response>\n\
        </D:multistatus>\n";

    fn keep_way(href: &str) -> bool {
        matches!(href, "/projects/" | "/projects/alpha/")
    }

    fn filter_in_chunks(body: &str, size: usize) -> (String, Vec<String>) {
        let mut seen = Vec::new();
        let mut keep = |h: &str| {
            seen.push(h.to_owned());
            keep_way(h).then(|| h.to_owned())
        };
        let mut m = Multistatus::new();
        let mut out = Vec::new();
        for chunk in body.as_bytes().chunks(size.max(1)) {
            out.extend(m.push(chunk, &mut keep));
        }
        out.extend(m.finish(&mut keep));
        (String::from_utf8(out).unwrap(), seen)
    }

    #[test]
    fn keeps_only_the_entries_on_the_way_whatever_the_chunking() {
        for size in [1, 2, 3, 7, 64, 4096] {
            let (out, seen) = filter_in_chunks(NGINX, size);
            assert!(out.starts_with("<?xml"), "{size}: {out}");
            assert!(out.contains("<D:href>/projects/alpha/</D:href>"));
            assert!(out.contains("<D:href>/projects/</D:href>"));
            assert!(
                !out.contains("beta"),
                "{size}: a sibling's name leaked: {out}"
            );
            assert!(!out.contains("a&amp;b"));
            assert!(out.trim_end().ends_with("</D:multistatus>"));
            assert_eq!(out.matches("</D:multistatus>").count(), 1);
            assert_eq!(
                seen,
                [
                    "/projects/",
                    "/projects/alpha/",
                    "/projects/beta%20secret/",
                    "/projects/a&b.txt"
                ]
            );
        }
    }

    #[test]
    fn other_prefixes_and_no_prefix() {
        let body = "<multistatus xmlns=\"DAV:\"><response><href>/projects/alpha/</href></response>\
                    <response><href>/x</href></response></multistatus>";
        let (out, _) = filter_in_chunks(body, 5);
        assert_eq!(
            out,
            "<multistatus xmlns=\"DAV:\"><response><href>/projects/alpha/</href></response>\n</multistatus>\n"
        );
        let go = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><D:multistatus xmlns:D=\"DAV:\"><D:response><D:href>/projects/beta/</D:href></D:response></D:multistatus>";
        let (out, _) = filter_in_chunks(go, 3);
        assert!(
            !out.contains("beta") && out.ends_with("</D:multistatus>\n"),
            "{out}"
        );
    }

    #[test]
    fn fails_closed_on_what_it_cannot_read() {
        for body in [
            // Not a multistatus at all.
            "<html><body>/projects/beta</body></html>",
            "{\"files\": [\"/projects/beta\"]}",
            // Another element among the responses, and whatever follows it.
            "<D:multistatus xmlns:D=\"DAV:\"><D:other>/projects/beta</D:other><D:response><D:href>/projects/alpha/</D:href></D:response></D:multistatus>",
            // An entry with two hrefs (one on the way, one beside it).
            "<D:multistatus xmlns:D=\"DAV:\"><D:response><D:href>/projects/alpha/</D:href><D:href>/projects/beta</D:href></D:response></D:multistatus>",
            // A response of another prefix than its multistatus.
            "<D:multistatus xmlns:D=\"DAV:\"><E:response xmlns:E=\"DAV:\"><E:href>/projects/beta</E:href></E:response></D:multistatus>",
            // Cut short.
            "<D:multistatus xmlns:D=\"DAV:\"><D:response><D:href>/projects/beta",
        ] {
            let (out, _) = filter_in_chunks(body, 4);
            assert!(!out.contains("beta"), "{body}\n→ {out}");
            assert!(out.trim_end().ends_with("multistatus>"), "{out}");
        }
        // An entry larger than the bound is dropped, with everything after it.
        let huge = format!(
            "<D:multistatus xmlns:D=\"DAV:\"><D:response><D:href>/projects/alpha/</D:href>{}</D:response></D:multistatus>",
            "x".repeat(MAX_ENTRY + 1)
        );
        let (out, _) = filter_in_chunks(&huge, 8192);
        assert!(
            !out.contains("<D:response>") && out.len() < 200,
            "{}",
            out.len()
        );
    }

    #[test]
    fn hrefs_are_rewritten_in_place() {
        let mut keep = |h: &str| Some(format!("/dav/nas{h}?&<"));
        let mut m = Multistatus::new();
        let mut out = m.push(NGINX.as_bytes(), &mut keep);
        out.extend(m.finish(&mut keep));
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("<D:href>/dav/nas/projects/alpha/?&amp;&lt;</D:href>"),
            "{out}"
        );
        assert!(out.contains("<D:href>/dav/nas/projects/a&amp;b.txt?&amp;&lt;</D:href>"));
        assert_eq!(out.matches("<D:response>").count(), 4);
        assert_eq!(
            out.matches("<D:propstat>").count(),
            4,
            "the rest is kept as it was"
        );
    }

    #[test]
    fn entities_decode_once() {
        assert_eq!(decode_entities("a&amp;b").as_deref(), Some("a&b"));
        assert_eq!(decode_entities("a&amp;amp;b").as_deref(), Some("a&amp;b"));
        assert_eq!(decode_entities("&#x2F;&#47;").as_deref(), Some("//"));
        assert_eq!(decode_entities("&bogus;"), None);
        assert_eq!(decode_entities("a&b"), None);
    }
}
