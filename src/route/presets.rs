//! Route presets: the route tables keygate ships for storage APIs it knows.
//! The action names are the ones the policy schema defines.

use serde::Deserialize;

/// A route rule as written in `[[routes.rule]]` and in the presets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Methods this rule answers; `["*"]` for any.
    pub methods: Vec<String>,
    /// Path template: literals, `{provider}`, `{name}` and a final `{*path}`.
    pub path: String,
    /// The action; none for a `graphql` route, whose actions come from `[graphql]`.
    #[serde(default)]
    pub action: String,
    /// Fixed provider for templates without `{provider}`.
    pub provider: Option<String>,
    /// The request names a second resource in its `Destination` header.
    #[serde(default)]
    pub destination: bool,
    /// An action also required on the source (a move removes it: `deleteFile`).
    #[serde(default)]
    pub source_action: Option<String>,
    /// An action also required on the destination unless the request says `Overwrite: F`
    /// (replacing what is there deletes it: `deleteFile`).
    #[serde(default)]
    pub overwrite_action: Option<String>,
    /// A GraphQL endpoint: each root field of the body's operation is decided as `[graphql]`
    /// says.
    #[serde(default)]
    pub graphql: bool,
    /// The query parameter naming the provider (`/api/download/proxy?providerId=…`).
    #[serde(default)]
    pub provider_param: Option<String>,
    /// The query parameter naming the path the request acts on (`…&path=/backups/a.tar`).
    #[serde(default)]
    pub path_param: Option<String>,
    /// An API key is also taken as the password of HTTP Basic authentication, and a 401 asks
    /// for it (`WWW-Authenticate: Basic`): what WebDAV clients speak.
    #[serde(default)]
    pub basic_auth: bool,
    /// Decided instead of `action` when that is denied: what a credential may do on the
    /// folders on the way to its base paths (`traverse`: a PROPFIND at depth 0 or 1, answered
    /// with only the entries on the way; `createAncestor`: a MKCOL). The shipped policies
    /// allow these only there.
    #[serde(default)]
    pub ancestor_action: Option<String>,
    /// Forward only the `{*path}` part, under the provider's upstream `prefix`: a server
    /// mounted under a path of keygate's (`/dav/{provider}/{*path}`). `Destination`, `If` and
    /// the `href`s of 207 answers are rewritten both ways.
    #[serde(default)]
    pub forward_tail: bool,
}

fn rule(methods: &[&str], path: &str, action: &str) -> RouteRule {
    RouteRule {
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        path: path.to_owned(),
        action: action.to_owned(),
        provider: None,
        destination: false,
        source_action: None,
        overwrite_action: None,
        graphql: false,
        provider_param: None,
        path_param: None,
        basic_auth: false,
        ancestor_action: None,
        forward_tail: false,
    }
}

/// A COPY: writes the destination, and may replace (delete) what is there.
fn copy(path: &str) -> RouteRule {
    let mut r = rule(&["COPY"], path, "copyFile");
    r.destination = true;
    r.overwrite_action = Some("deleteFile".to_owned());
    r
}

/// A MOVE: a COPY that also deletes the source.
fn move_(path: &str) -> RouteRule {
    let mut r = copy(path);
    r.methods = vec!["MOVE".to_owned()];
    r.action = "moveFile".to_owned();
    r.source_action = Some("deleteFile".to_owned());
    r
}

/// The rules of a preset, or `None` for an unknown preset name. A WebDAV `mount` serves every
/// provider's server under `<mount>/<provider>/`; without one, `webdav_provider` is at `/`.
pub fn rules(preset: &str, webdav_provider: &str, mount: Option<&str>) -> Option<Vec<RouteRule>> {
    match preset {
        "none" => Some(Vec::new()),
        "storage-backend" => Some(storage_backend()),
        "webdav" => Some(webdav(webdav_provider, mount)),
        _ => None,
    }
}

/// The API of the bundled `storage-backend`.
pub fn storage_backend() -> Vec<RouteRule> {
    const FILES: &str = "/v1/files/{provider}/{*path}";
    vec![
        rule(&["GET", "HEAD"], FILES, "readFile"),
        rule(&["PUT"], FILES, "writeFile"),
        rule(&["DELETE"], FILES, "deleteFile"),
        move_(FILES),
        copy(FILES),
        rule(
            &["GET", "HEAD"],
            "/v1/folders/{provider}/{*path}",
            "listFolder",
        ),
        rule(&["POST"], "/v1/folders/{provider}/{*path}", "createFolder"),
        rule(&["GET"], "/v1/search/{provider}/{*path}", "searchFiles"),
        rule(&["GET"], "/v1/trash/{provider}", "listTrash"),
        rule(
            &["POST"],
            "/v1/trash/{provider}/{id}/restore",
            "restoreTrash",
        ),
        rule(&["DELETE"], "/v1/trash/{provider}/{id}", "purgeTrash"),
        rule(&["DELETE"], "/v1/trash/{provider}", "purgeTrash"),
    ]
}

/// A WebDAV server (RFC 4918) mounted at `/`, all of it one provider; or, with a `mount`, each
/// provider's server under `<mount>/<provider>/`.
pub fn webdav(provider: &str, mount: Option<&str>) -> Vec<RouteRule> {
    let all = match mount {
        None => "/{*path}".to_owned(),
        Some(m) => format!("{}/{{provider}}/{{*path}}", m.trim_end_matches('/')),
    };
    let all = all.as_str();
    let fixed = |mut r: RouteRule| {
        r.basic_auth = true;
        match mount {
            None => r.provider = Some(provider.to_owned()),
            Some(_) => r.forward_tail = true,
        }
        r
    };
    // Clients open the root first (OPTIONS, PROPFIND) and create parents first (MKCOL): on
    // the way to a restricted credential's base paths, these are decided as the ancestor
    // actions.
    let on_the_way = |mut r: RouteRule, action: &str| {
        r.ancestor_action = Some(action.to_owned());
        r
    };
    vec![
        fixed(rule(&["GET", "HEAD"], all, "readFile")),
        fixed(on_the_way(rule(&["OPTIONS"], all, "readFile"), "traverse")),
        fixed(on_the_way(
            rule(&["PROPFIND"], all, "listFolder"),
            "traverse",
        )),
        fixed(rule(
            &["PUT", "PROPPATCH", "LOCK", "UNLOCK"],
            all,
            "writeFile",
        )),
        fixed(rule(&["DELETE"], all, "deleteFile")),
        fixed(on_the_way(
            rule(&["MKCOL"], all, "createFolder"),
            "createAncestor",
        )),
        fixed(move_(all)),
        fixed(copy(all)),
    ]
}
