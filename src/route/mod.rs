//! Stage 1, route: the raw request target and method → [`RouteMatch`] (action and resources).
//!
//! The target is read from the raw bytes on the wire, decoded exactly once into one canonical
//! form, and that form is both what the policy sees and what goes upstream. Anything that the
//! proxy and some backend could read differently is refused with 400 instead of being guessed at.
//! Pure: no I/O, no session, no clock. `canonical.rs` is the canonicalizer, `presets.rs` the
//! route tables keygate ships, `graphql.rs` reads the operation of a `graphql` route's body (the
//! data plane reads the body and hands it over before the decision).
//!
//! May import: `refusal`. Imported by `model` (base paths are canonical paths) and above.

mod canonical;
pub mod graphql;
mod mount;
pub mod presets;

use std::sync::Arc;

use crate::refusal::Refusal;

use canonical::{bad, join_segments};
pub use canonical::{
    canonicalize, canonicalize_in, canonicalize_path, canonicalize_path_in, check_decoded_path,
    check_name_path, CanonicalPath, CanonicalTarget, PathDialect, MAX_PATH_DEPTH, MAX_TARGET_LEN,
};
use graphql::{GraphqlRules, Operation};
pub use mount::{server_href_path, Forward, Mount};

/// One piece of a route template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `{provider}`: the provider segment.
    Provider,
    /// `{name}`: any one segment, not part of the resource.
    Param,
    /// `{*path}`: the rest of the path, possibly empty; the resource path.
    Tail,
}

/// A parsed path template such as `/v1/files/{provider}/{*path}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    source: String,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let rest = s
            .strip_prefix('/')
            .ok_or_else(|| format!("template '{s}' must start with '/'"))?;
        let mut pieces = Vec::new();
        let parts: Vec<&str> = if rest.is_empty() {
            vec![]
        } else {
            rest.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let piece = if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if let Some(tail) = name.strip_prefix('*') {
                    if i + 1 != parts.len() {
                        return Err(format!("in template '{s}', '{{*{tail}}}' must come last"));
                    }
                    Piece::Tail
                } else if name == "provider" {
                    Piece::Provider
                } else if !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    Piece::Param
                } else {
                    return Err(format!(
                        "in template '{s}', '{{{name}}}' is not a valid parameter"
                    ));
                }
            } else {
                if part.is_empty() {
                    return Err(format!("template '{s}' has an empty segment"));
                }
                let canonical = canonicalize_path(format!("/{part}").as_bytes()).map_err(|_| {
                    format!("template '{s}' has a segment that is not canonical: '{part}'")
                })?;
                Piece::Literal(canonical.decoded()[1..].to_owned())
            };
            pieces.push(piece);
        }
        if pieces.iter().filter(|p| **p == Piece::Provider).count() > 1 {
            return Err(format!("template '{s}' names {{provider}} more than once"));
        }
        Ok(Template {
            pieces,
            source: s.to_owned(),
        })
    }

    pub fn has_provider(&self) -> bool {
        self.pieces.contains(&Piece::Provider)
    }

    pub fn has_path(&self) -> bool {
        self.pieces.contains(&Piece::Tail)
    }

    /// Whether only literals and `{provider}` come before a final `{*path}`: a template a
    /// server can be mounted under (`forward_tail`).
    pub fn is_mount(&self) -> bool {
        self.pieces.last() == Some(&Piece::Tail)
            && self.pieces[..self.pieces.len() - 1]
                .iter()
                .all(|p| matches!(p, Piece::Literal(_) | Piece::Provider))
    }

    /// How many segments come before `{*path}`.
    fn tail_start(&self) -> usize {
        self.pieces
            .iter()
            .position(|p| *p == Piece::Tail)
            .unwrap_or(self.pieces.len())
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Matches canonical segments; returns (provider segment, resource path).
    fn matches<'a>(&self, segments: &'a [String]) -> Option<(Option<&'a str>, String)> {
        let mut provider = None;
        for (i, piece) in self.pieces.iter().enumerate() {
            match piece {
                Piece::Tail => {
                    return Some((provider, join_segments(&segments[i.min(segments.len())..])))
                }
                _ if i >= segments.len() => return None,
                Piece::Literal(l) => {
                    if *l != segments[i] {
                        return None;
                    }
                }
                Piece::Provider => provider = Some(segments[i].as_str()),
                Piece::Param => {}
            }
        }
        (segments.len() == self.pieces.len()).then(|| (provider, "/".to_owned()))
    }
}

/// Which methods a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Methods {
    Any,
    List(Vec<String>),
}

impl Methods {
    fn allows(&self, method: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::List(l) => l.iter().any(|m| m == method),
        }
    }
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct Route {
    pub methods: Methods,
    pub template: Template,
    pub action: Arc<str>,
    /// The provider when the template has no `{provider}` (a WebDAV mount, say).
    pub provider: Option<Arc<str>>,
    /// The request names a second resource in its `Destination` header (move, copy).
    pub destination: bool,
    /// Also required on the source (a move deletes it).
    pub source_action: Option<Arc<str>>,
    /// Also required on the destination, unless the request says `Overwrite: F`.
    pub overwrite_action: Option<Arc<str>>,
    /// A GraphQL endpoint: the actions come from the operation in the body (`[graphql]`), and
    /// `action` is only what the request is counted under until the body is read.
    pub graphql: bool,
    /// The query parameters naming the provider and the path the request acts on, when the
    /// API carries them there rather than in the path.
    pub provider_param: Option<Arc<str>>,
    pub path_param: Option<Arc<str>>,
    /// An API key is also taken as the password of HTTP Basic authentication.
    pub basic: bool,
    /// Decided instead of `action` when that is denied (on the way to a base path).
    pub ancestor_action: Option<Arc<str>>,
    /// Forward only the `{*path}` part, under the provider's folder on its server.
    pub forward_tail: bool,
}

/// A decision a request needs on something that is not a storage path: a request no route
/// maps to a path (named by its canonical path), or a GraphQL root field without a path
/// argument (named `<operation type>.<field>`). The policies see it as `Keygate::Unmapped`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub action: Arc<str>,
    pub name: String,
}

/// One decision of a request: an action on a storage path or on an [`Unmapped`] name.
#[derive(Debug, Clone, Copy)]
pub enum Check<'a> {
    Path(&'a Arc<str>, &'a Resource),
    Unmapped(&'a Arc<str>, &'a str),
}

/// A further action a request needs on one of its resources (a move deletes its source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Also {
    pub action: Arc<str>,
    pub resource: Resource,
}

/// Where a resource sits in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceRole {
    Source,
    Destination,
}

/// A storage location the request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub role: ResourceRole,
    pub provider: Arc<str>,
    /// Canonical decoded path inside the provider; `/` for its root.
    pub path: String,
}

/// The outcome of the route stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub action: Arc<str>,
    pub resources: Vec<Resource>,
    /// What to send upstream as the request target.
    pub upstream_target: String,
    /// The rewritten `Destination` header, when the route has one.
    pub upstream_destination: Option<String>,
    /// `Overwrite` as the upstream receives it (`T` or `F`), when the route has a destination.
    pub upstream_overwrite: Option<&'static str>,
    /// Actions the request also needs, each on one resource; decided like the main one.
    pub also: Vec<Also>,
    /// Decisions on things that are not storage paths (GraphQL fields without a path).
    pub unmapped: Vec<Unmapped>,
    /// The route is a GraphQL endpoint: the body must be read, and its operation applied
    /// ([`RouteMatch::apply_graphql`]), before the decision.
    pub graphql: Option<Arc<GraphqlRules>>,
    /// The route's fixed provider (for GraphQL fields whose rule names no provider argument).
    pub provider: Option<Arc<str>>,
    /// The resource was read from query parameters (`path_param`): the request must not carry
    /// a form body, whose fields some servers read in their place.
    pub resource_in_query: bool,
    /// The route takes an API key as a Basic password, and its 401s ask for one.
    pub basic: bool,
    /// Decided instead of `action` when that is denied ([`RouteMatch::on_the_way`]).
    pub ancestor_action: Option<Arc<str>>,
    /// A provider's server mounted under keygate's path: how its answers' URLs come back.
    pub forward: Option<Arc<Forward>>,
    /// The `If` header as the mounted server must read it.
    pub upstream_if: Option<String>,
}

impl RouteMatch {
    /// A request decided as `action` on nothing yet (resources and further decisions are
    /// added by the caller), going upstream as `upstream_target`.
    pub fn new(action: Arc<str>, upstream_target: String) -> RouteMatch {
        RouteMatch {
            action,
            resources: Vec::new(),
            upstream_target,
            upstream_destination: None,
            upstream_overwrite: None,
            also: Vec::new(),
            unmapped: Vec::new(),
            graphql: None,
            provider: None,
            resource_in_query: false,
            basic: false,
            ancestor_action: None,
            forward: None,
            upstream_if: None,
        }
    }

    /// The provider the request is for: its first resource's, or the route's fixed one.
    pub fn provider_name(&self) -> Option<&str> {
        self.resources
            .first()
            .map(|r| &*r.provider)
            .or(self.provider.as_deref())
    }

    /// The request decided as its route's ancestor action instead (a folder on the way to a
    /// restricted credential's base paths), when it has one: a request on one path only.
    pub fn on_the_way(&self) -> Option<RouteMatch> {
        let action = self.ancestor_action.clone()?;
        if self.resources.len() != 1 || !self.also.is_empty() || !self.unmapped.is_empty() {
            return None;
        }
        let mut m = self.clone();
        m.action = action;
        m.ancestor_action = None;
        Some(m)
    }

    /// Every decision the request needs, in order: the route's action on each resource, the
    /// further actions, then the unmapped ones. A request with none of these (the default
    /// action) is one decision on its canonical path, unmapped.
    pub fn checks(&self) -> Vec<Check<'_>> {
        if self.resources.is_empty() && self.also.is_empty() && self.unmapped.is_empty() {
            return vec![Check::Unmapped(&self.action, self.unmapped_path())];
        }
        let mut out: Vec<Check<'_>> = self
            .resources
            .iter()
            .map(|r| Check::Path(&self.action, r))
            .collect();
        out.extend(
            self.also
                .iter()
                .map(|a| Check::Path(&a.action, &a.resource)),
        );
        out.extend(
            self.unmapped
                .iter()
                .map(|u| Check::Unmapped(&u.action, &u.name)),
        );
        out
    }

    /// The canonical path of the request (its query left out).
    pub fn unmapped_path(&self) -> &str {
        self.upstream_target
            .split_once('?')
            .map_or(self.upstream_target.as_str(), |(path, _)| path)
    }

    /// Replaces the decisions of a GraphQL route with its operation's: one per root field. The
    /// request is counted (metrics, rate-limit rules) under its first field's action.
    pub fn apply_graphql(&mut self, op: Operation) {
        self.graphql = None;
        self.resources.clear();
        self.also.clear();
        self.unmapped.clear();
        if let Some(first) = op.checks.first() {
            self.action = first.action.clone();
        }
        for check in op.checks {
            match check.resource {
                Some(resource) => self.also.push(Also {
                    action: check.action,
                    resource,
                }),
                None => self.unmapped.push(Unmapped {
                    action: check.action,
                    name: check.field,
                }),
            }
        }
    }

    /// The query as received (checked printable ASCII), if any.
    pub fn query(&self) -> Option<&str> {
        self.upstream_target.split_once('?').map(|(_, q)| q)
    }
}

/// The route table from the config: first match wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    default_action: Option<Arc<str>>,
    /// How GraphQL routes are authorized (`[graphql]`).
    graphql: Option<Arc<GraphqlRules>>,
    /// The dialect a target is first read in: every character some provider's server reads
    /// literally. A provider's own is checked once the route names it.
    dialect: PathDialect,
    /// `[upstream]`'s server.
    default_mount: Mount,
    /// Providers with a server of their own (`[upstreams.<provider>]`).
    mounts: std::collections::HashMap<String, Mount>,
    /// Some route forwards only its `{*path}` (servers are mounted).
    mounted: bool,
}

/// What the route stage reads from a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub method: &'a str,
    pub raw_target: &'a [u8],
    pub destination: Option<&'a [u8]>,
    /// The `Overwrite` header (move, copy): `T` (the default) or `F`.
    pub overwrite: Option<&'a [u8]>,
    /// The `Depth` header (WebDAV).
    pub depth: Option<&'a [u8]>,
    /// The `If` header (WebDAV), rewritten for a mounted server.
    pub if_header: Option<&'a [u8]>,
    pub host: Option<&'a str>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>, default_action: Option<Arc<str>>) -> RouteTable {
        RouteTable {
            mounted: routes.iter().any(|r| r.forward_tail),
            routes,
            default_action,
            graphql: None,
            dialect: PathDialect::STRICT,
            default_mount: Mount::default(),
            mounts: Default::default(),
        }
    }

    /// The table for a backend of `dialect` (the default is [`PathDialect::STRICT`]).
    pub fn with_dialect(mut self, dialect: PathDialect) -> RouteTable {
        self.default_mount.dialect = dialect;
        self.dialect = dialect;
        self
    }

    /// The table with `[upstream]`'s server and the providers' own.
    pub fn with_mounts(
        mut self,
        default: Mount,
        mounts: std::collections::HashMap<String, Mount>,
    ) -> RouteTable {
        let mut union = default.dialect;
        for m in mounts.values() {
            let d = m.dialect;
            union.percent |= d.percent;
            union.semicolon |= d.semicolon;
            union.backslash |= d.backslash;
            union.lookalikes |= d.lookalikes;
            union.controls |= d.controls;
            union.dots |= d.dots;
        }
        self.dialect = union;
        self.default_mount = default;
        self.mounts = mounts;
        self
    }

    /// `[upstream]`'s dialect.
    pub fn dialect(&self) -> PathDialect {
        self.default_mount.dialect
    }

    /// The server of `provider`: its own, or `[upstream]`'s.
    fn mount_of(&self, provider: Option<&str>) -> &Mount {
        provider
            .and_then(|p| self.mounts.get(p))
            .unwrap_or(&self.default_mount)
    }

    /// The table with its GraphQL rules.
    pub fn with_graphql(mut self, rules: GraphqlRules) -> RouteTable {
        self.graphql = Some(Arc::new(rules));
        self
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Every action a request can be decided on: each route's, its source and overwrite
    /// actions, and the default action; sorted, without repeats.
    pub fn action_names(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for r in &self.routes {
            if r.graphql {
                continue;
            }
            names.insert(r.action.to_string());
            names.extend(r.source_action.iter().map(|a| a.to_string()));
            names.extend(r.overwrite_action.iter().map(|a| a.to_string()));
            names.extend(r.ancestor_action.iter().map(|a| a.to_string()));
        }
        names.extend(self.default_action.iter().map(|a| a.to_string()));
        if self.routes.iter().any(|r| r.graphql) {
            names.extend(
                self.graphql
                    .iter()
                    .flat_map(|g| g.action_names())
                    .map(|a| a.to_string()),
            );
        }
        names.into_iter().collect()
    }

    /// The route stage.
    pub fn route(&self, input: RouteInput<'_>) -> Result<RouteMatch, Refusal> {
        let target = canonicalize_in(input.raw_target, self.dialect)?;
        let upstream_target = target.upstream_target();
        let segments = target.path.segments();
        for route in &self.routes {
            if !route.methods.allows(input.method) {
                // A GraphQL endpoint's path never falls through to another rule (or the
                // default action) for another method: its operation would go undecided.
                if route.graphql && route.template.matches(segments).is_some() {
                    return Err(bad("a GraphQL endpoint answers POST only"));
                }
                continue;
            }
            let Some((provider, path)) = route.template.matches(segments) else {
                continue;
            };
            let mut resources = Vec::with_capacity(1 + route.destination as usize);
            let (provider, path) = match &route.path_param {
                None => (provider.map(Arc::from), path),
                Some(name) => {
                    let query = target.query.as_deref();
                    let provider = match &route.provider_param {
                        Some(p) => {
                            let value = query_param(query, p)?;
                            graphql::check_provider(&value)?;
                            Some(Arc::from(value))
                        }
                        None => provider.map(Arc::from),
                    };
                    (provider, check_decoded_path(&query_param(query, name)?)?)
                }
            };
            let provider = provider.or_else(|| route.provider.clone());
            // Under a mount, a provider is served only by a server of its own: `[upstream]`'s
            // root is no provider's tree. And a server whose tree lives in a folder (`prefix`)
            // is reached only through routes that put it there.
            let own = provider.as_deref().and_then(|p| self.mounts.get(p));
            let mount = own.unwrap_or(&self.default_mount);
            // And where servers are mounted, a provider's server is named one way only: a
            // route forwarding the whole path would reach `/files/nas/x` on it, which the mount
            // calls `nas:/files/nas/x`.
            if (route.forward_tail && own.is_none())
                || (!route.forward_tail && !mount.prefix.is_empty())
                || (!route.forward_tail && own.is_some() && self.mounted)
            {
                return Err(Refusal::NotFound);
            }
            // The provider's server may read fewer characters literally than the most
            // permissive server's dialect the target was first read in.
            if mount.dialect != self.dialect {
                canonicalize_in(input.raw_target, mount.dialect)?;
            }
            let mut upstream_target = upstream_target;
            let mut forward = None;
            let mut upstream_if = None;
            if route.forward_tail {
                let start = route.template.tail_start();
                upstream_target = target.path.encoded_under(&mount.prefix, start);
                if let Some(q) = &target.query {
                    upstream_target.push('?');
                    upstream_target.push_str(q);
                }
                let f = Forward {
                    client: segments[..start.min(segments.len())].to_vec(),
                    upstream: mount.prefix.clone(),
                    dialect: mount.dialect,
                };
                upstream_if = input.if_header.map(|v| f.upstream_if(v)).transpose()?;
                forward = Some(Arc::new(f));
            }
            if let Some(provider) = provider {
                resources.push(Resource {
                    role: ResourceRole::Source,
                    provider,
                    path,
                });
            }
            let mut upstream_destination = None;
            let mut upstream_overwrite = None;
            let mut also = Vec::new();
            if route.destination {
                let (resource, origin, dest) = destination(route, input, mount.dialect)?;
                // A move or copy stays on one server.
                let dest_provider = resource.as_ref().map(|r| &*r.provider);
                if !std::ptr::eq(self.mount_of(dest_provider), mount) {
                    return Err(bad(
                        "the Destination header names a location on another server",
                    ));
                }
                let header = match &forward {
                    Some(_) => {
                        let start = route.template.tail_start();
                        format!("{origin}{}", dest.encoded_under(&mount.prefix, start))
                    }
                    None => format!("{origin}{}", dest.encoded()),
                };
                // Without `Overwrite: F`, a move or copy may replace the destination, and
                // replacing deletes what was there (RFC 4918: absent means T).
                let overwrite = match input.overwrite.map(<[u8]>::trim_ascii) {
                    None => true,
                    Some(v) if v.eq_ignore_ascii_case(b"T") => true,
                    Some(v) if v.eq_ignore_ascii_case(b"F") => false,
                    Some(_) => return Err(bad("the Overwrite header must be T or F")),
                };
                upstream_overwrite = Some(if overwrite { "T" } else { "F" });
                if let (Some(action), Some(dest), true) =
                    (&route.overwrite_action, &resource, overwrite)
                {
                    also.push(Also {
                        action: action.clone(),
                        resource: dest.clone(),
                    });
                }
                resources.extend(resource);
                upstream_destination = Some(header);
            }
            if let (Some(action), Some(source)) = (&route.source_action, resources.first()) {
                also.push(Also {
                    action: action.clone(),
                    resource: source.clone(),
                });
            }
            return Ok(RouteMatch {
                action: route.action.clone(),
                resources,
                upstream_target,
                upstream_destination,
                upstream_overwrite,
                also,
                unmapped: Vec::new(),
                graphql: if route.graphql {
                    Some(self.graphql.clone().ok_or(Refusal::NotFound)?)
                } else {
                    None
                },
                provider: route.provider.clone(),
                resource_in_query: route.path_param.is_some(),
                basic: route.basic,
                // A listing falls back only at depth 0 or 1 (RFC 4918: absent is infinity):
                // its answer is then filtered entry by entry.
                ancestor_action: route.ancestor_action.clone().filter(|_| {
                    input.method != "PROPFIND"
                        || matches!(input.depth.map(<[u8]>::trim_ascii), Some(b"0" | b"1"))
                }),
                forward,
                upstream_if,
            });
        }
        match &self.default_action {
            Some(action) => {
                // Forwarded to `[upstream]`'s server: read as it reads paths.
                if self.default_mount.dialect != self.dialect {
                    canonicalize_in(input.raw_target, self.default_mount.dialect)?;
                }
                Ok(RouteMatch::new(action.clone(), upstream_target))
            }
            None => Err(Refusal::NotFound),
        }
    }
}

/// Most parameters a query that names a resource may have: some parsers keep only the first
/// 1000 pairs, so a parameter after those would be read by keygate alone.
pub const MAX_QUERY_PARAMS: usize = 100;

/// The value of the query parameter `name`, decoded once. Refused (400) when it is missing or
/// given twice (under any spelling of its name), or when backends could read the query
/// differently: a `+` (a space to form decoders, a plus to others) or a `;` (a separator to
/// some) anywhere in it, a name with `[` or `]` (an array or object to Express's and Rack's
/// parsers), a name PHP would turn into this one (`.` and space read as `_`), or more than
/// [`MAX_QUERY_PARAMS`] parameters.
fn query_param(query: Option<&str>, name: &str) -> Result<String, Refusal> {
    let query = query.unwrap_or_default();
    if query.split('&').count() > MAX_QUERY_PARAMS {
        return Err(bad(
            "a query that names the resource has too many parameters",
        ));
    }
    if query.contains(['+', ';']) {
        return Err(bad(
            "a query that names the resource must not contain '+' or ';' (encode them)",
        ));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| bad("a query parameter is not valid UTF-8"))
    };
    let mut found = None;
    // PHP drops leading spaces, cuts a name at NUL and reads `.` and space as `_`; ASP.NET
    // ignores case. A name that any of them reads as this one, but is not it, is refused.
    let mangled = |k: &str| {
        k.trim_start_matches(' ')
            .split('\0')
            .next()
            .unwrap_or_default()
            .replace(['.', ' '], "_")
            .to_ascii_lowercase()
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        if key.contains(['[', ']']) {
            return Err(bad(
                "a query that names the resource must not have '[' or ']' in a name",
            ));
        }
        if key != name && mangled(&key) == mangled(name) {
            return Err(Refusal::bad_request(format!(
                "the query has a name some servers read as '{name}'"
            )));
        }
        if key == name {
            if found.is_some() {
                return Err(Refusal::bad_request(format!(
                    "the query names '{name}' more than once"
                )));
            }
            found = Some(decode(value)?);
        }
    }
    found.ok_or_else(|| {
        Refusal::bad_request(format!("this request needs the query parameter '{name}'"))
    })
}

fn provider_of(route: &Route, segment: Option<&str>) -> Option<Arc<str>> {
    match segment {
        Some(s) => Some(Arc::from(s)),
        None => route.provider.clone(),
    }
}

/// Reads the `Destination` header: an absolute path, or an absolute URI whose authority is the
/// request's own `Host`. It must match the same route template as the request.
fn destination<'a>(
    route: &Route,
    input: RouteInput<'a>,
    dialect: PathDialect,
) -> Result<(Option<Resource>, &'a str, CanonicalPath), Refusal> {
    let raw = input
        .destination
        .ok_or_else(|| bad("this request needs a Destination header"))?;
    let (origin, path) = split_destination(raw, input.host)?;
    let target = canonicalize_in(path, dialect)?;
    if target.query.is_some() {
        return Err(bad("the Destination header must not carry a query"));
    }
    let (provider, dest_path) = route
        .template
        .matches(target.path.segments())
        .ok_or_else(|| bad("the Destination header names a location outside this route"))?;
    let resource = provider_of(route, provider).map(|provider| Resource {
        role: ResourceRole::Destination,
        provider,
        path: dest_path,
    });
    Ok((resource, origin, target.path))
}

fn split_destination<'a>(
    raw: &'a [u8],
    host: Option<&str>,
) -> Result<(&'a str, &'a [u8]), Refusal> {
    if raw.first() == Some(&b'/') {
        return Ok(("", raw));
    }
    let s = std::str::from_utf8(raw).map_err(|_| bad("the Destination header is malformed"))?;
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| bad("the Destination header must be an absolute path or URI"))?;
    let slash = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..slash];
    if host.is_none_or(|h| !h.eq_ignore_ascii_case(authority)) {
        return Err(bad("the Destination header names another host"));
    }
    let origin_len = s.len() - rest.len() + slash;
    if slash == rest.len() {
        return Err(bad("the Destination header has no path"));
    }
    Ok((&s[..origin_len], &raw[origin_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let route = |methods: &[&str], t: &str, action: &str, destination: bool| Route {
            methods: Methods::List(methods.iter().map(|m| m.to_string()).collect()),
            template: Template::parse(t).unwrap(),
            action: Arc::from(action),
            provider: None,
            destination,
            source_action: None,
            overwrite_action: None,
            graphql: false,
            provider_param: None,
            path_param: None,
            basic: false,
            ancestor_action: None,
            forward_tail: false,
        };
        RouteTable::new(
            vec![
                route(
                    &["GET", "HEAD"],
                    "/v1/files/{provider}/{*path}",
                    "readFile",
                    false,
                ),
                route(&["MOVE"], "/v1/files/{provider}/{*path}", "moveFile", true),
                route(
                    &["GET"],
                    "/v1/folders/{provider}/{*path}",
                    "listFolder",
                    false,
                ),
                route(
                    &["POST"],
                    "/v1/trash/{provider}/{id}/restore",
                    "restoreTrash",
                    false,
                ),
            ],
            None,
        )
    }

    fn input<'a>(method: &'a str, target: &'a str, dest: Option<&'a str>) -> RouteInput<'a> {
        RouteInput {
            method,
            raw_target: target.as_bytes(),
            destination: dest.map(str::as_bytes),
            overwrite: None,
            depth: None,
            if_header: None,
            host: Some("proxy.example:8080"),
        }
    }

    /// `/dav/{provider}/{*path}` over `nas` (a server of its own, POSIX) and `photos` (its tree
    /// in `/library`), `[upstream]` strict, and `/v1/files/{provider}/{*path}` besides.
    fn mounted() -> RouteTable {
        let rule = |path: &str, forward_tail: bool| {
            let mut r = crate::route::presets::webdav("unused", None).remove(0);
            r.path = path.to_owned();
            r.provider = None;
            r.forward_tail = forward_tail;
            r
        };
        let route = |r: crate::route::presets::RouteRule| Route {
            methods: Methods::List(r.methods.clone()),
            template: Template::parse(&r.path).unwrap(),
            action: Arc::from(r.action.as_str()),
            provider: None,
            destination: false,
            source_action: None,
            overwrite_action: None,
            graphql: false,
            provider_param: None,
            path_param: None,
            basic: true,
            ancestor_action: None,
            forward_tail: r.forward_tail,
        };
        let mounts = std::collections::HashMap::from([
            (
                "nas".to_owned(),
                Mount {
                    dialect: PathDialect::POSIX,
                    prefix: Vec::new(),
                },
            ),
            (
                "photos".to_owned(),
                Mount {
                    dialect: PathDialect::POSIX,
                    prefix: vec!["library".to_owned()],
                },
            ),
        ]);
        RouteTable::new(
            vec![
                route(rule("/dav/{provider}/{*path}", true)),
                route(rule("/v1/files/{provider}/{*path}", false)),
            ],
            Some(Arc::from("readFile")),
        )
        .with_mounts(Mount::default(), mounts)
    }

    #[test]
    fn mounted_servers_serve_their_own_providers_only() {
        let t = mounted();
        let get = |target: &str| t.route(input("GET", target, None));
        let m = get("/dav/photos/a%3Bb/").unwrap();
        assert_eq!(m.upstream_target, "/library/a%3Bb/");
        assert_eq!(m.resources[0].path, "/a;b");
        assert_eq!(get("/dav/nas/x?y=1").unwrap().upstream_target, "/x?y=1");
        // A provider without a server of its own is not served under the mount: `[upstream]`'s
        // root is nobody's tree.
        assert_eq!(get("/dav/local/x"), Err(Refusal::NotFound));
        // A server whose tree lives in a folder is reached only through the mount.
        assert_eq!(get("/v1/files/photos/x"), Err(Refusal::NotFound));
        // Nor is any server mounted: `/v1/files/nas/x` there is `nas:/v1/files/nas/x`.
        assert_eq!(get("/v1/files/nas/x"), Err(Refusal::NotFound));
        assert!(get("/v1/files/local/x").is_ok());
        // Each server reads paths in its own dialect; the default action in `[upstream]`'s.
        assert!(get("/dav/nas/a;b").is_ok());
        assert!(get("/v1/files/local/a;b").is_err(), "[upstream] is strict");
        assert!(
            get("/elsewhere/a%252e%252e").is_err(),
            "the default action too"
        );
        assert!(get("/elsewhere/a").is_ok());
    }

    #[test]
    fn routes_to_action_and_resources() {
        let m = table()
            .route(input(
                "GET",
                "/v1/files/local/backups/2025/db%20dump.tar",
                None,
            ))
            .unwrap();
        assert_eq!(&*m.action, "readFile");
        assert_eq!(m.resources.len(), 1);
        assert_eq!(&*m.resources[0].provider, "local");
        assert_eq!(m.resources[0].path, "/backups/2025/db dump.tar");
        assert_eq!(
            m.upstream_target,
            "/v1/files/local/backups/2025/db%20dump.tar"
        );

        let root = table()
            .route(input("GET", "/v1/folders/local", None))
            .unwrap();
        assert_eq!(root.resources[0].path, "/");
        let root = table()
            .route(input("GET", "/v1/folders/local/", None))
            .unwrap();
        assert_eq!(root.resources[0].path, "/");

        let r = table()
            .route(input("POST", "/v1/trash/local/abc/restore", None))
            .unwrap();
        assert_eq!(&*r.action, "restoreTrash");
        assert_eq!(r.resources[0].path, "/");
    }

    #[test]
    fn unknown_routes_are_not_found() {
        assert_eq!(
            table().route(input("GET", "/v2/x", None)),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            table().route(input("DELETE", "/v1/files/local/a", None)),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            table().route(input("GET", "/v1/trash/local/x/y", None)),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn move_needs_and_canonicalizes_destination() {
        let t = table();
        let m = t
            .route(input(
                "MOVE",
                "/v1/files/local/a.txt",
                Some("/v1/files/other/b%20c.txt"),
            ))
            .unwrap();
        assert_eq!(m.resources.len(), 2);
        assert_eq!(m.resources[1].role, ResourceRole::Destination);
        assert_eq!(&*m.resources[1].provider, "other");
        assert_eq!(m.resources[1].path, "/b c.txt");
        assert_eq!(
            m.upstream_destination.as_deref(),
            Some("/v1/files/other/b%20c.txt")
        );

        let abs = t
            .route(input(
                "MOVE",
                "/v1/files/local/a",
                Some("http://proxy.example:8080/v1/files/local/%7eb"),
            ))
            .unwrap();
        assert_eq!(
            abs.upstream_destination.as_deref(),
            Some("http://proxy.example:8080/v1/files/local/~b")
        );

        for dest in [
            None,
            Some("/v1/files/local/../../etc"),
            Some("/v1/folders/local/x"),
            Some("http://elsewhere/v1/files/local/x"),
            Some("/v1/files/local/x?y=1"),
            Some("v1/files/local/x"),
        ] {
            assert!(
                matches!(
                    t.route(input("MOVE", "/v1/files/local/a", dest)),
                    Err(Refusal::BadRequest(_)) | Err(Refusal::NotFound)
                ),
                "{dest:?}"
            );
        }
    }

    #[test]
    fn query_parameters_name_a_resource_only_when_unambiguous() {
        assert_eq!(
            query_param(Some("a=1&path=%2Fx%20y"), "path"),
            Ok("/x y".to_owned())
        );
        assert_eq!(query_param(Some("pa%74h=/x"), "path"), Ok("/x".to_owned()));
        assert!(query_param(Some(&format!("{}path=/x", "a=1&".repeat(100))), "path").is_err());
        assert_eq!(
            query_param(Some("provider_id=t"), "provider_id"),
            Ok("t".to_owned())
        );
        for q in [
            "provider.id=s3&provider_id=t",
            "provider%20id=s3&provider_id=t",
            "provider_id=t&%20provider_id=s3",
            "provider_id=t&provider_id%00=s3",
            "provider_id=t&PROVIDER_ID=s3",
        ] {
            assert!(query_param(Some(q), "provider_id").is_err(), "{q}");
        }
        for q in [
            None,
            Some("a=1"),
            Some("path=/x&path=/y"),
            Some("path=/x&p%61th=/y"),
            Some("path=/x+y"),
            Some("path=/x;/y"),
            Some("path=%FF"),
            Some("path=/x&path%5B%5D=/y"),
            Some("path=/x&path[a]=/y"),
        ] {
            assert!(
                matches!(query_param(q, "path"), Err(Refusal::BadRequest(_))),
                "{q:?}"
            );
        }
    }

    #[test]
    fn a_graphql_path_never_falls_through_to_another_rule() {
        let graphql = Route {
            methods: Methods::List(vec!["POST".to_owned()]),
            template: Template::parse("/graphql").unwrap(),
            action: Arc::from("graphql"),
            provider: Some(Arc::from("dav")),
            destination: false,
            source_action: None,
            overwrite_action: None,
            graphql: true,
            provider_param: None,
            path_param: None,
            basic: false,
            ancestor_action: None,
            forward_tail: false,
        };
        let catch_all = Route {
            methods: Methods::Any,
            template: Template::parse("/{*path}").unwrap(),
            action: Arc::from("readFile"),
            graphql: false,
            ..graphql.clone()
        };
        let table = RouteTable::new(vec![graphql, catch_all], Some(Arc::from("readFile")));
        assert!(matches!(
            table.route(input("GET", "/graphql?query=%7Bme%7D", None)),
            Err(Refusal::BadRequest(_))
        ));
        assert_eq!(
            &*table.route(input("GET", "/other", None)).unwrap().action,
            "readFile"
        );
    }

    #[test]
    fn templates_are_checked() {
        assert!(Template::parse("v1/x").is_err());
        assert!(Template::parse("/v1/{*path}/x").is_err());
        assert!(Template::parse("/v1//x").is_err());
        assert!(Template::parse("/v1/{provider}/{provider}").is_err());
        assert!(Template::parse("/v1/{bad name}").is_err());
        assert!(Template::parse("/v1/../x").is_err());
        assert!(Template::parse("/").is_ok());
    }
}
