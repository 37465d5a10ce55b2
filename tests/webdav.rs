//! keygate in front of real WebDAV servers (nginx with its DAV modules, `rclone serve webdav`),
//! spoken to by real WebDAV clients (litmus, rclone), as `deploy/webdav.toml` and the files in
//! `deploy/webdav/` configure them.
//!
//! Needs Debian's `nginx`, `libnginx-mod-http-dav-ext`, `rclone` and `litmus`. Without them the
//! tests report themselves skipped, unless `KEYGATE_TEST_REQUIRE_WEBDAV` is set (CI sets it).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use unicode_normalization::UnicodeNormalization;

fn keygate_for(dav: &DavServer) -> Keygate {
    let config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/webdav.toml"))
            .unwrap();
    Keygate::start_config(&[dav.addr], &config, &["nas"])
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap()
}

/// Every litmus test that passes against the server directly passes through keygate, with the
/// full-access key given as litmus's Basic password.
fn litmus_passes_through_keygate_as_directly(kind: DavKind) {
    let Some(dav) = DavServer::start(kind) else {
        return;
    };
    let Some(direct) = litmus(&dav.url("/"), None) else {
        return;
    };
    let kg = keygate_for(&dav);
    let through = litmus(&kg.url("/"), Some(("litmus", &kg.key))).unwrap();
    let outcome = |list: &[LitmusResult], r: &LitmusResult| {
        list.iter()
            .find(|t| t.suite == r.suite && t.test == r.test)
            .map(|t| t.outcome.clone())
            .unwrap_or_else(|| "not run".to_owned())
    };
    println!("litmus against {kind:?}: suite, test, directly, through keygate");
    let mut lost = Vec::new();
    for r in &direct {
        let via = outcome(&through, r);
        println!("{}\t{}\t{}\t{}", r.suite, r.test, r.outcome, via);
        if r.outcome.starts_with("pass") && !via.starts_with("pass") {
            lost.push(format!("{} {}: {via}", r.suite, r.test));
        }
    }
    let passed = |l: &[LitmusResult]| l.iter().filter(|r| r.outcome.starts_with("pass")).count();
    println!(
        "{kind:?}: {} pass directly, {} through keygate",
        passed(&direct),
        passed(&through)
    );
    assert!(
        lost.is_empty(),
        "passing directly but not through keygate: {lost:#?}\nkeygate's log:\n{}",
        kg.proc.stderr()
    );
    assert!(passed(&direct) >= 30, "litmus hardly ran: {direct:#?}");
}

#[test]
fn litmus_against_nginx_passes_through_keygate_as_directly() {
    litmus_passes_through_keygate_as_directly(DavKind::Nginx);
}

#[test]
fn litmus_against_rclone_passes_through_keygate_as_directly() {
    litmus_passes_through_keygate_as_directly(DavKind::Rclone);
}

/// A tree of real people's names: spaces, `%`, `;`, `#`, `?`, `\`, quotes, names composed
/// (NFC) and decomposed (NFD, as macOS writes them), a few large files. (rclone's local side
/// writes a control character as its picture, `␉`, which only rclone's own server turns back,
/// so names with control characters are sent by hand in the COPY test below.) Returns every file's
/// path relative to `root` with its bytes.
fn real_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let folders = [
        "plain",
        "50% off",
        "semi;colon",
        "hash #1",
        "what?",
        "back\\slash",
        "it's \"quoted\"",
        "Ünïcödé",
        "café",
        "cafe\u{301} decomposed",
        "日本語 フォルダ",
        "... dots",
    ];
    let names = [
        "report {i}.pdf",
        "50% off {i}.txt",
        "a;b {i}",
        "#{i} hash",
        "why? {i}",
        "c:\\windows {i}",
        "\"{i}\" and 'single'",
        "résumé {i}.docx",
        "re\u{301}sume\u{301} {i} nfd.docx",
        "plus+and&amp {i}",
        "{i}",
        "~tilde {i}",
        "semi; colon;; {i}",
        "percent %20 literal {i}",
        "%2e%2e {i}",
        "emoji 🎉 {i}",
        "space at end {i} ",
        "...{i}",
        "a=b,c@d$e!f {i}",
        "[brackets] {i}",
        "<angle> {i}",
        "{braces} {i}",
        "back\\\\double {i}",
    ];
    let mut files = BTreeMap::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut bytes = |len: usize| {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out.truncate(len);
        out
    };
    for (f, folder) in folders.iter().enumerate() {
        for (n, name) in names.iter().enumerate() {
            let name = name.replace("{i}", &(f * 100 + n).to_string());
            files.insert(
                format!("{folder}/{name}"),
                bytes(100 + (f * 37 + n * 101) % 4000),
            );
        }
    }
    files.insert("large/one 8 MiB.bin".to_owned(), bytes(8 << 20));
    files.insert("large/two; 3 MiB #.bin".to_owned(), bytes(3 << 20));
    files.insert("top level 50%.txt".to_owned(), bytes(10));
    for (rel, content) in &files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    files
}

/// Every file of `tree` is on the server under `base`, byte for byte, under its name in
/// composed form (keygate forwards names in NFC).
fn assert_stored(server_root: &Path, base: &str, tree: &BTreeMap<String, Vec<u8>>) {
    for (rel, content) in tree {
        let stored = server_root.join(base).join(rel.nfc().collect::<String>());
        let got = std::fs::read(&stored).unwrap_or_else(|e| {
            let beside: Vec<_> = std::fs::read_dir(stored.parent().unwrap())
                .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                .unwrap_or_default();
            panic!("{stored:?} is not on the server ({e}); beside it: {beside:?}")
        });
        assert!(got == *content, "{rel}: the stored bytes differ");
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// rclone syncs a tree of real names through keygate and checks it byte for byte, with the
/// full-access key as a bearer token; then a key restricted to `/projects/alpha`, given as a
/// Basic password, syncs into its folder and is refused everywhere else, which stays untouched.
fn rclone_syncs_real_names_through_keygate(kind: DavKind) {
    let Some(dav) = DavServer::start(kind) else {
        return;
    };
    let kg = keygate_for(&dav);
    let local = tempfile::tempdir().unwrap();
    let mut tree = real_tree(local.path());
    assert!(tree.len() > 250);
    if kind == DavKind::Nginx {
        tree.retain(|rel, _| !rel.split('/').any(|name| name.starts_with('.')));
    }
    let src = local.path().to_str().unwrap();
    let url = kg.url("/");
    let full = [("RCLONE_WEBDAV_BEARER_TOKEN", kg.key.as_str())];
    // nginx's dav_ext module leaves names starting with '.' out of its listings (they are
    // stored, and checked on disk below): rclone must not compare what it cannot list.
    let hidden: &[&str] = match kind {
        DavKind::Nginx => &["--exclude", ".*", "--exclude", ".*/**"],
        DavKind::Rclone => &[],
    };
    let run = |env: &[(&str, &str)], args: &[&str]| rclone(&url, env, &[args, hidden].concat());

    let (ok, out) = run(
        &full,
        &["sync", src, ":webdav:everything", "--transfers", "4"],
    );
    assert!(
        ok,
        "rclone sync with the full key failed:\n{out}\n{}",
        kg.proc.stderr()
    );
    let (ok, out) = run(&full, &["check", src, ":webdav:everything", "--download"]);
    assert!(ok, "rclone check found differences:\n{out}");
    assert_stored(&dav.root(), "everything", &tree);

    // A second sync after a local delete deletes on the server too (it refuses to when it
    // could not list everything).
    std::fs::remove_file(local.path().join("50% off/50% off 101.txt")).unwrap();
    let (ok, out) = run(&full, &["sync", src, ":webdav:everything"]);
    assert!(ok, "the second sync failed:\n{out}");
    assert!(!dav
        .root()
        .join("everything/50% off/50% off 101.txt")
        .exists());
    tree.remove("50% off/50% off 101.txt");

    // A key restricted to /projects/alpha, as a WebDAV client is given one: a Basic password.
    // The folders are made through keygate (rclone's server caches what it has listed).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = bearer(&kg.key);
        for dir in ["/projects/", "/projects/alpha/", "/projects/beta/"] {
            let r = admin
                .request(method("MKCOL"), kg.url(dir))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED, "MKCOL {dir}");
        }
        let r = admin
            .put(kg.url("/projects/beta/keep.txt"))
            .body("beta's")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    });
    let restricted = rt.block_on(kg.create_key(json!({
        "name": "alpha sync",
        "owner": "ada@example.com",
        "scopes": ["write"],
        "providers": [{"provider": "nas", "basePath": "/projects/alpha"}],
    })));
    let secret = restricted["key"].as_str().unwrap().to_owned();
    let obscured = rclone_obscure(&secret);
    let basic = [
        ("RCLONE_WEBDAV_USER", "ada@example.com"),
        ("RCLONE_WEBDAV_PASS", obscured.as_str()),
    ];
    let (ok, out) = run(&basic, &["sync", src, ":webdav:projects/alpha"]);
    assert!(
        ok,
        "the restricted key cannot sync into its folder:\n{out}\n{}",
        kg.proc.stderr()
    );
    let (ok, out) = run(
        &basic,
        &["check", src, ":webdav:projects/alpha", "--download"],
    );
    assert!(
        ok,
        "rclone check with the restricted key found differences:\n{out}"
    );
    assert_stored(&dav.root(), "projects/alpha", &tree);

    let before: Vec<PathBuf> = files_under(&dav.root().join("projects/beta"));
    let (ok, out) = run(&basic, &["sync", src, ":webdav:projects/beta"]);
    assert!(!ok, "the restricted key synced outside its folder:\n{out}");
    assert!(out.contains("403"), "the refusal is a 403:\n{out}");
    assert_eq!(files_under(&dav.root().join("projects/beta")), before);
    assert_eq!(
        std::fs::read(dav.root().join("projects/beta/keep.txt")).unwrap(),
        b"beta's"
    );
    let (ok, out) = run(&basic, &["delete", ":webdav:everything"]);
    assert!(!ok, "the restricted key deleted outside its folder:\n{out}");
    assert_stored(&dav.root(), "everything", &tree);
}

#[test]
fn rclone_syncs_real_names_through_keygate_to_nginx() {
    rclone_syncs_real_names_through_keygate(DavKind::Nginx);
}

#[test]
fn rclone_syncs_real_names_through_keygate_to_rclone() {
    rclone_syncs_real_names_through_keygate(DavKind::Rclone);
}

/// WebDAV clients authenticate with Basic: a 401 asks for it, a key is taken as the password
/// (whatever the user name), a user's password never is.
#[tokio::test]
async fn webdav_clients_send_a_key_as_their_basic_password() {
    let Some(dav) = DavServer::rclone() else {
        return;
    };
    std::fs::write(dav.root().join("a.txt"), b"hello").unwrap();
    let kg = keygate_for(&dav);
    let plain = reqwest::Client::new();
    let r = plain
        .request(method("PROPFIND"), kg.url("/"))
        .header("depth", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<_> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        challenges,
        ["Basic realm=\"keygate\", charset=\"UTF-8\"", "Bearer"]
    );
    for user in ["ada@example.com", "anything", ""] {
        let r = plain
            .get(kg.url("/a.txt"))
            .basic_auth(user, Some(&kg.key))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "user name {user:?}");
        assert_eq!(r.text().await.unwrap(), "hello");
    }
    let r = plain
        .get(kg.url("/a.txt"))
        .basic_auth("ada@example.com", Some("ada's long password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["details"]["reason"], "malformed");
    let r = plain
        .get(kg.url("/a.txt"))
        .basic_auth("ada@example.com", Some(unissued_key()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // litmus's delete_fragment: a fragment in the request line is refused, never read as the
    // folder before it (which the server would then delete).
    std::fs::create_dir(dav.root().join("frag")).unwrap();
    let (status, _) = raw_request(
        kg.data,
        format!(
            "DELETE /frag/#ment HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            kg.data, kg.key
        )
        .as_bytes(),
    );
    assert_eq!(status, 400);
    assert!(dav.root().join("frag").is_dir());
}

/// COPY and MOVE against a real server: replacing what is at the destination needs the right
/// to delete it, unless the client says `Overwrite: F` (and the server then keeps it).
#[tokio::test]
async fn copy_and_move_are_decided_with_their_overwrite_against_a_real_server() {
    let Some(dav) = DavServer::nginx() else {
        return;
    };
    std::fs::write(dav.root().join("a.txt"), b"source").unwrap();
    std::fs::write(dav.root().join("b.txt"), b"keep me").unwrap();
    let kg = keygate_for(&dav);
    let key = kg
        .create_key(json!({
            "name": "no deletes",
            "owner": "ada@example.com",
            "scopes": ["files:read", "files:write", "folders:read"],
        }))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = bearer(&key);
    let dest = |name: &str| format!("http://{}/{name}", kg.data);
    let send = |m: &str, dest_name: &str, overwrite: Option<&str>| {
        let mut r = client
            .request(method(m), kg.url("/a.txt"))
            .header("destination", dest(dest_name));
        if let Some(o) = overwrite {
            r = r.header("overwrite", o);
        }
        r.send()
    };
    // A name with a control character, as POSIX allows, is stored as it is named.
    let r = client
        .put(kg.url("/tab%09name"))
        .body("tabbed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        std::fs::read(dav.root().join("tab\tname")).unwrap(),
        b"tabbed"
    );

    let r = send("COPY", "b.txt", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "replacing deletes b.txt");
    let r = send("COPY", "b.txt", Some("T")).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send("COPY", "b.txt", Some("F")).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::PRECONDITION_FAILED,
        "nginx keeps b.txt"
    );
    assert_eq!(std::fs::read(dav.root().join("b.txt")).unwrap(), b"keep me");
    let r = send("COPY", "c;%20new.txt", Some("F")).await.unwrap();
    // nginx answers 204 where RFC 4918 says 201 (litmus warns of it).
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        std::fs::read(dav.root().join("c; new.txt")).unwrap(),
        b"source"
    );
    let r = send("MOVE", "d.txt", Some("F")).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a move deletes its source"
    );
    assert!(dav.root().join("a.txt").exists() && !dav.root().join("d.txt").exists());
    let r = bearer(&kg.key)
        .request(method("MOVE"), kg.url("/a.txt"))
        .header("destination", dest("d%25.txt"))
        .header("overwrite", "F")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(std::fs::read(dav.root().join("d%.txt")).unwrap(), b"source");
}

/// Names of the entries of a 207 answer, as their hrefs give them.
fn hrefs(body: &str) -> Vec<String> {
    let re =
        regex::Regex::new(r"<(?:[A-Za-z0-9]+:)?href>([^<]*)</(?:[A-Za-z0-9]+:)?href>").unwrap();
    let mut out: Vec<String> = re
        .captures_iter(body)
        .map(|c| {
            let h = c[1].trim();
            let path = h.find("://").map_or(h, |i| {
                let rest = &h[i + 3..];
                &rest[rest.find('/').unwrap_or(rest.len())..]
            });
            path.trim_end_matches('/').to_owned()
        })
        .map(|p| if p.is_empty() { "/".to_owned() } else { p })
        .collect();
    out.sort();
    out
}

/// A key restricted to /projects/alpha, mounted at the server's root as clients do, sees the
/// way to its folder and nothing beside it; a key whose base path does not exist yet creates
/// it, parents first, as rclone does.
fn restricted_keys_find_their_way(kind: DavKind) {
    let Some(dav) = DavServer::start(kind) else {
        return;
    };
    let kg = keygate_for(&dav);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = bearer(&kg.key);
    let propfind = |client: &reqwest::Client, path: &str, depth: Option<&str>| {
        let mut r = client.request(method("PROPFIND"), kg.url(path));
        if let Some(d) = depth {
            r = r.header("depth", d);
        }
        let r = r.send();
        rt.block_on(async {
            let r = r.await.unwrap();
            (r.status(), r.text().await.unwrap())
        })
    };
    rt.block_on(async {
        for dir in [
            "/projects/",
            "/projects/alpha/",
            "/projects/beta/",
            "/secret plans/",
        ] {
            let r = admin
                .request(method("MKCOL"), kg.url(dir))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED, "MKCOL {dir}");
        }
        for file in ["/top.txt", "/projects/beta/b.txt", "/projects/alpha/a.txt"] {
            let r = admin.put(kg.url(file)).body("x").send().await.unwrap();
            assert_eq!(r.status(), StatusCode::CREATED, "PUT {file}");
        }
    });
    let key = rt.block_on(kg.create_key(json!({
        "name": "alpha",
        "owner": "ada@example.com",
        "scopes": ["write"],
        "providers": [{"provider": "nas", "basePath": "/projects/alpha"}],
    })))["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let alpha = bearer(&key);

    let (status, body) = propfind(&alpha, "/", Some("1"));
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(hrefs(&body), ["/", "/projects"], "{body}");
    assert!(
        !body.contains("secret") && !body.contains("top.txt"),
        "{body}"
    );
    let (status, body) = propfind(&alpha, "/projects/", Some("1"));
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert_eq!(hrefs(&body), ["/projects", "/projects/alpha"], "{body}");
    assert!(!body.contains("beta"), "a sibling's name leaked: {body}");
    let (status, body) = propfind(&alpha, "/projects", Some("0"));
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert_eq!(hrefs(&body), ["/projects"], "{body}");
    // Inside its folder the listing is whole.
    let (status, body) = propfind(&alpha, "/projects/alpha/", Some("1"));
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert_eq!(
        hrefs(&body),
        ["/projects/alpha", "/projects/alpha/a.txt"],
        "{body}"
    );
    // Beside the way, and deeper than one level on it, nothing.
    for (path, depth) in [
        ("/projects/beta/", Some("0")),
        ("/secret%20plans/", Some("1")),
        ("/", Some("infinity")),
        ("/", None),
    ] {
        let (status, body) = propfind(&alpha, path, depth);
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "PROPFIND {path} {depth:?}: {body}"
        );
        assert!(!body.contains("beta/b.txt"));
    }
    let r = rt.block_on(alpha.get(kg.url("/top.txt")).send()).unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "the way lets nothing be read"
    );
    let r = rt
        .block_on(
            alpha
                .request(method("MKCOL"), kg.url("/projects/gamma/"))
                .send(),
        )
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "nor a folder beside it be made"
    );

    // rclone, mounted at the root, lists the way down.
    let url = kg.url("/");
    let env = [("RCLONE_WEBDAV_BEARER_TOKEN", key.as_str())];
    let (ok, out) = rclone(&url, &env, &["lsf", ":webdav:"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "projects/");
    let (ok, out) = rclone(&url, &env, &["lsf", ":webdav:projects"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "alpha/");
    let (ok, out) = rclone(&url, &env, &["lsf", "-R", ":webdav:projects/alpha"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "a.txt");

    // A base path that does not exist yet: rclone makes its parents first.
    let key = rt.block_on(kg.create_key(json!({
        "name": "new team",
        "owner": "ada@example.com",
        "scopes": ["write"],
        "providers": [{"provider": "nas", "basePath": "/teams/gamma/data"}],
    })))["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let local = tempfile::tempdir().unwrap();
    std::fs::create_dir(local.path().join("sub")).unwrap();
    std::fs::write(local.path().join("sub/report 1.txt"), b"gamma's").unwrap();
    let env = [("RCLONE_WEBDAV_BEARER_TOKEN", key.as_str())];
    let src = local.path().to_str().unwrap();
    let (ok, out) = rclone(&url, &env, &["copy", src, ":webdav:teams/gamma/data"]);
    assert!(
        ok,
        "rclone cannot create the base path:\n{out}\n{}",
        kg.proc.stderr()
    );
    assert_eq!(
        std::fs::read(dav.root().join("teams/gamma/data/sub/report 1.txt")).unwrap(),
        b"gamma's"
    );
    // The way is made of empty folders only.
    assert_eq!(
        files_under(&dav.root().join("teams")),
        [dav.root().join("teams/gamma/data/sub/report 1.txt")]
    );
}

#[test]
fn restricted_keys_find_their_way_on_nginx() {
    restricted_keys_find_their_way(DavKind::Nginx);
}

#[test]
fn restricted_keys_find_their_way_on_rclone() {
    restricted_keys_find_their_way(DavKind::Rclone);
}

/// Two servers under one keygate, each under `/dav/<provider>/` as `deploy/webdav-mounts.toml`
/// says: paths, `Destination`, `If` and the answers' `href`s are rewritten both ways.
#[test]
fn several_servers_are_mounted_under_dav() {
    let (Some(nginx), Some(rc)) = (DavServer::nginx(), DavServer::rclone()) else {
        return;
    };
    std::fs::create_dir(rc.root().join("library")).unwrap();
    std::fs::write(rc.root().join("outside.txt"), b"not photos'").unwrap();
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/webdav-mounts.toml"),
    )
    .unwrap()
    .replace("127.0.0.1:8081", &nginx.addr.to_string())
    .replace("127.0.0.1:8082", &rc.addr.to_string());
    let kg = Keygate::start_config(&[nginx.addr], &config, &["nas", "photos"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = bearer(&kg.key);
    let send = |r: reqwest::RequestBuilder| {
        rt.block_on(async {
            let r = r.send().await.unwrap();
            let status = r.status();
            let headers = r.headers().clone();
            (status, headers, r.text().await.unwrap())
        })
    };
    let (status, _, _) = send(admin.put(kg.url("/dav/nas/a%20b.txt")).body("on nginx"));
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        std::fs::read(nginx.root().join("a b.txt")).unwrap(),
        b"on nginx"
    );
    let (status, _, _) = send(admin.put(kg.url("/dav/photos/p;1.jpg")).body("on rclone"));
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        std::fs::read(rc.root().join("library/p;1.jpg")).unwrap(),
        b"on rclone"
    );

    // A provider of the workspace without a server of its own is not served under the mount
    // (`[upstream]`'s server holds nas's tree, not local's).
    let (status, _, _) = send(admin.get(kg.url("/dav/local/a%20b.txt")));
    assert_eq!(status, StatusCode::NOT_FOUND);

    let listing = |path: &str| {
        send(
            admin
                .request(method("PROPFIND"), kg.url(path))
                .header("depth", "1"),
        )
    };
    // nginx writes `[` and `]` unescaped in its hrefs: still listed.
    let (status, _, _) = send(admin.put(kg.url("/dav/nas/%5Bdraft%5D")).body("x"));
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, body) = listing("/dav/nas/");
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert_eq!(
        hrefs(&body),
        ["/dav/nas", "/dav/nas/%5Bdraft%5D", "/dav/nas/a%20b.txt"],
        "{body}"
    );
    let (status, _, body) = listing("/dav/photos/");
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert_eq!(
        hrefs(&body),
        ["/dav/photos", "/dav/photos/p%3B1.jpg"],
        "{body}"
    );
    assert!(!body.contains("outside"), "{body}");

    // A move within a server; a copy to another server is refused.
    let dest = |p: &str| format!("http://{}{p}", kg.data);
    let (status, _, _) = send(
        admin
            .request(method("MOVE"), kg.url("/dav/nas/a%20b.txt"))
            .header("destination", dest("/dav/nas/moved%3B.txt")),
    );
    assert!(status.is_success(), "{status}");
    assert!(nginx.root().join("moved;.txt").exists() && !nginx.root().join("a b.txt").exists());
    let (status, _, _) = send(
        admin
            .request(method("COPY"), kg.url("/dav/nas/moved%3B.txt"))
            .header("destination", dest("/dav/photos/x.txt")),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!rc.root().join("library/x.txt").exists());

    // A lock taken through the mount is honoured through the mount: the If header names the
    // resource as the client knows it, and rclone's server as it knows it.
    let lockinfo = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
        <D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope>\
        <D:locktype><D:write/></D:locktype><D:owner>test</D:owner></D:lockinfo>";
    let (status, headers, body) = send(
        admin
            .request(method("LOCK"), kg.url("/dav/photos/p;1.jpg"))
            .header("timeout", "Second-60")
            .body(lockinfo),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = headers["lock-token"].to_str().unwrap().to_owned();
    let (status, _, _) = send(admin.put(kg.url("/dav/photos/p;1.jpg")).body("no token"));
    assert_eq!(status, StatusCode::LOCKED);
    let tagged = format!("<{}> ({token})", dest("/dav/photos/p%3B1.jpg"));
    let (status, _, body) = send(
        admin
            .put(kg.url("/dav/photos/p;1.jpg"))
            .header("if", &tagged)
            .body("with the token"),
    );
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(
        std::fs::read(rc.root().join("library/p;1.jpg")).unwrap(),
        b"with the token"
    );
    let (status, _, _) = send(
        admin
            .put(kg.url("/dav/photos/p;1.jpg"))
            .header(
                "if",
                format!("<{}> ({token})", dest("/dav/nas/moved%3B.txt")),
            )
            .body("x"),
    );
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an If naming another server"
    );
    let (status, _, _) = send(
        admin
            .request(method("UNLOCK"), kg.url("/dav/photos/p;1.jpg"))
            .header("lock-token", &token),
    );
    assert!(status.is_success(), "{status}");

    // rclone against a mounted server: its listings must name what it asked for.
    let local = tempfile::tempdir().unwrap();
    std::fs::create_dir(local.path().join("2026 trip")).unwrap();
    for name in ["beach; 1.jpg", "50% sun.jpg", "café.jpg"] {
        std::fs::write(local.path().join("2026 trip").join(name), name.as_bytes()).unwrap();
    }
    let env = [("RCLONE_WEBDAV_BEARER_TOKEN", kg.key.as_str())];
    let url = kg.url("/dav/photos/");
    let src = local.path().to_str().unwrap();
    let (ok, out) = rclone(&url, &env, &["copy", src, ":webdav:albums"]);
    assert!(ok, "{out}");
    let (ok, out) = rclone(&url, &env, &["check", src, ":webdav:albums", "--download"]);
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read(rc.root().join("library/albums/2026 trip/50% sun.jpg")).unwrap(),
        b"50% sun.jpg"
    );

    // A restricted key finds its way under the mount too.
    let key = rt.block_on(kg.create_key(json!({
        "name": "albums",
        "owner": "ada@example.com",
        "scopes": ["read"],
        "providers": [{"provider": "photos", "basePath": "/albums/2026 trip"}],
    })))["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, body) = send(
        bearer(&key)
            .request(method("PROPFIND"), kg.url("/dav/photos/albums/"))
            .header("depth", "1"),
    );
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(
        hrefs(&body),
        ["/dav/photos/albums", "/dav/photos/albums/2026%20trip"],
        "{body}"
    );
}

/// A server that wants credentials of its own (Nextcloud's WebDAV endpoint) is sent its service
/// account's, from `authorization_file`, under its folder; never the client's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_credentials_of_its_own_gets_its_service_accounts() {
    // Nextcloud-like: records what it was sent, and opens a session for whoever signs in.
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let log = log.clone();
        async move {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            log.lock().unwrap().push((req.uri().to_string(), auth));
            (
                [
                    ("set-cookie", "oc123=session-of-the-service-account; path=/"),
                    ("set-cookie", "oc_sessionPassphrase=secret; path=/"),
                    (
                        "location",
                        "/remote.php/dav/files/keygate/Photos/new%20one.jpg",
                    ),
                    (
                        "content-location",
                        "/remote.php/dav/files/keygate/Photos/x.jpg",
                    ),
                ],
                "ok",
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("nextcloud.auth");
    // "Basic " + base64("keygate:app-password")
    std::fs::write(&auth, "Basic a2V5Z2F0ZTphcHAtcGFzc3dvcmQ=\n").unwrap();
    let config = format!(
        "[routes]\npreset = \"webdav\"\nwebdav_mount = \"/dav\"\n\
         [upstreams.nc]\npeers = [\"{}\"]\nprefix = \"/remote.php/dav/files/keygate\"\n\
         authorization_file = {:?}\n",
        addr,
        auth.display().to_string()
    );
    let kg = Keygate::start_config(&[addr], &config, &["nc"]);
    let r = reqwest::Client::new()
        .get(kg.url("/dav/nc/Photos/a%20b.jpg"))
        .basic_auth("ada@example.com", Some(&kg.key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers().get("set-cookie").is_none(),
        "the service account's session reached the client: {:?}",
        r.headers()
    );
    // Where the server says something is, that is said under the mount.
    assert_eq!(r.headers()["location"], "/dav/nc/Photos/new%20one.jpg");
    assert!(r.headers().get("content-location").is_none());
    let (target, auth) = seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(target, "/remote.php/dav/files/keygate/Photos/a%20b.jpg");
    assert_eq!(
        auth, "Basic a2V5Z2F0ZTphcHAtcGFzc3dvcmQ=",
        "not the client's key"
    );
    // TRACE would echo the credential back.
    let r = reqwest::Client::new()
        .request(method("TRACE"), kg.url("/dav/nc/x"))
        .basic_auth("ada@example.com", Some(&kg.key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(seen.lock().unwrap().len(), 1);
    // The service account's credential is no secret of keygate's logs either.
    let log = kg.proc.stderr();
    assert!(!log.contains("a2V5Z2F0ZTphcHAtcGFzc3dvcmQ"), "{log}");
}

/// Locks never widen what a key may do: a key that may only read can neither lock nor write
/// with somebody's lock token.
#[test]
fn a_lock_token_never_widens_a_key() {
    let Some(dav) = DavServer::rclone() else {
        return;
    };
    let kg = keygate_for(&dav);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = bearer(&kg.key);
    let lockinfo = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
        <D:lockinfo xmlns:D=\"DAV:\"><D:lockscope><D:exclusive/></D:lockscope>\
        <D:locktype><D:write/></D:locktype></D:lockinfo>";
    let (token, reader) = rt.block_on(async {
        let r = admin
            .put(kg.url("/doc.txt"))
            .body("v1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = admin
            .request(method("LOCK"), kg.url("/doc.txt"))
            .body(lockinfo)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let token = r.headers()["lock-token"].to_str().unwrap().to_owned();
        let reader = kg
            .create_key(json!({"name": "reader", "owner": "ada@example.com", "scopes": ["read"]}))
            .await["key"]
            .as_str()
            .unwrap()
            .to_owned();
        (token, reader)
    });
    let reader = bearer(&reader);
    rt.block_on(async {
        for attempt in [
            reader
                .request(method("LOCK"), kg.url("/doc.txt"))
                .body(lockinfo),
            reader
                .put(kg.url("/doc.txt"))
                .header("if", format!("({token})"))
                .body("v2"),
            reader
                .request(method("UNLOCK"), kg.url("/doc.txt"))
                .header("lock-token", &token),
        ] {
            attempt.expect(StatusCode::FORBIDDEN).await;
        }
        // The lock holder writes with it.
        let r = admin
            .put(kg.url("/doc.txt"))
            .header("if", format!("({token})"))
            .body("v2")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    });
    assert_eq!(std::fs::read(dav.root().join("doc.txt")).unwrap(), b"v2");
}
