//! `[routes]`: the preset and the operator's own rules, checked and turned into the route table.

use std::sync::Arc;

use std::collections::HashMap;

use super::check::{problem, secs, Durations, Problem};
use super::file::{DialectSpec, FileConfig, GraphqlSection, RouteRule};
use crate::route::graphql::{self, ArgumentPath, FieldRule, GraphqlRules, OperationType};
use crate::route::{Methods, Mount, PathDialect, Route, RouteTable, Template};

pub(super) fn check_name(problems: &mut Vec<Problem>, place: &str, what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'));
    if !ok {
        problem(problems, place, format!("'{name}' is not a valid {what}"));
    }
}

/// `[upstream] path_dialect`. Without one: `posix` for the presets of backends known to read
/// names literally (the bundled storage-backend; WebDAV servers on Linux), `strict` otherwise.
fn path_dialect(
    spec: Option<&DialectSpec>,
    place: &str,
    preset: &str,
    problems: &mut Vec<Problem>,
) -> PathDialect {
    let place = format!("{place} path_dialect");
    let named = |name: &str, problems: &mut Vec<Problem>| match name {
        "posix" => PathDialect::POSIX,
        "strict" => PathDialect::STRICT,
        other => {
            problem(
                problems,
                &place,
                format!("'{other}' is not one of 'posix', 'strict'"),
            );
            PathDialect::STRICT
        }
    };
    let table = match spec {
        None if matches!(preset, "storage-backend" | "webdav") => return PathDialect::POSIX,
        None => return PathDialect::STRICT,
        Some(DialectSpec::Named(name)) => return named(name, problems),
        Some(DialectSpec::Table(t)) => t,
    };
    let mut d = named(table.base.as_deref().unwrap_or("strict"), problems);
    for (name, value, field) in [
        ("percent", &table.percent, &mut d.percent),
        ("semicolon", &table.semicolon, &mut d.semicolon),
        ("backslash", &table.backslash, &mut d.backslash),
        ("lookalikes", &table.lookalikes, &mut d.lookalikes),
        ("controls", &table.controls, &mut d.controls),
        ("dots", &table.dots, &mut d.dots),
    ] {
        match value.as_deref() {
            None => {}
            Some("literal") => *field = true,
            Some("refuse") => *field = false,
            Some(other) => problem(
                problems,
                format!("{place}.{name}"),
                format!("'{other}' is not one of 'literal', 'refuse'"),
            ),
        }
    }
    d
}

pub(super) fn route_table(file: &FileConfig, problems: &mut Vec<Problem>) -> RouteTable {
    let r = &file.routes;
    let mut rules: Vec<(String, RouteRule)> = r
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| (format!("[[routes.rule]] #{}", i + 1), rule.clone()))
        .collect();
    let preset = r.preset.as_deref().unwrap_or("storage-backend");
    let dav_provider = r
        .webdav_provider
        .clone()
        .unwrap_or_else(|| "dav".to_owned());
    let mount = r.webdav_mount.as_deref();
    if let Some(m) = mount {
        if !m.starts_with('/') {
            problem(problems, "[routes] webdav_mount", "must start with '/'");
        }
        if r.webdav_provider.is_some() {
            problem(
                problems,
                "[routes] webdav_provider",
                "a webdav_mount serves every provider under it; webdav_provider is for one at '/'",
            );
        }
    }
    match crate::route::presets::rules(preset, &dav_provider, mount) {
        Some(preset_rules) => rules.extend(
            preset_rules
                .into_iter()
                .map(|rule| (format!("preset '{preset}' ({})", rule.path), rule)),
        ),
        None => problem(
            problems,
            "[routes] preset",
            format!("'{preset}' is not one of 'storage-backend', 'webdav', 'none'"),
        ),
    }
    let mut routes = Vec::with_capacity(rules.len());
    for (place, rule) in rules {
        let template = match Template::parse(&rule.path) {
            Ok(t) => t,
            Err(e) => {
                problem(problems, &place, e);
                continue;
            }
        };
        if rule.graphql {
            // Its fields name their providers; the path's would choose a server the
            // operation's resources may not live on.
            if template.has_provider() {
                problem(
                    problems,
                    &place,
                    "a graphql route has no {provider} in its path: its fields name theirs",
                );
            }
            if rule.methods != ["POST"] {
                problem(
                    problems,
                    &place,
                    "a graphql route answers POST only: methods = [\"POST\"]",
                );
            }
            if !rule.action.is_empty() || rule.destination || rule.source_action.is_some() {
                problem(
                    problems,
                    &place,
                    "a graphql route takes its actions from [graphql]: no action, destination or source_action",
                );
            }
        } else {
            check_name(problems, &place, "action name", &rule.action);
        }
        for also in [
            &rule.source_action,
            &rule.overwrite_action,
            &rule.ancestor_action,
        ]
        .into_iter()
        .flatten()
        {
            check_name(problems, &place, "action name", also);
        }
        // Decided on the way, a request must not return what lies beside the way: only a
        // PROPFIND's answer is filtered, and OPTIONS and MKCOL return no listing.
        if rule.ancestor_action.is_some()
            && !rule
                .methods
                .iter()
                .all(|m| matches!(m.as_str(), "PROPFIND" | "OPTIONS" | "MKCOL"))
        {
            problem(
                problems,
                &place,
                "ancestor_action is for PROPFIND (whose answer keygate filters), OPTIONS and MKCOL only",
            );
        }
        if !rule.destination && rule.overwrite_action.is_some() {
            problem(
                problems,
                &place,
                "overwrite_action needs destination = true",
            );
        }
        let methods = if rule.methods.iter().any(|m| m == "*") {
            Methods::Any
        } else {
            for m in &rule.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    problem(
                        problems,
                        &place,
                        format!("'{m}' is not an upper-case HTTP method"),
                    );
                }
            }
            Methods::List(rule.methods.clone())
        };
        if rule.methods.is_empty() {
            problem(problems, &place, "needs at least one method");
        }
        for param in [&rule.provider_param, &rule.path_param]
            .into_iter()
            .flatten()
        {
            check_name(problems, &place, "query parameter name", param);
        }
        if rule.path_param.is_some() && (template.has_path() || rule.destination || rule.graphql) {
            problem(
                problems,
                &place,
                "path_param names the path: the template has no {*path}, and no destination or graphql",
            );
        }
        if rule.path_param.is_some()
            && rule.provider_param.is_none()
            && !template.has_provider()
            && rule.provider.is_none()
        {
            problem(
                problems,
                &place,
                "path_param needs a provider: provider_param, {provider} or provider",
            );
        }
        if rule.provider_param.is_some()
            && (rule.path_param.is_none() || template.has_provider() || rule.provider.is_some())
        {
            problem(
                problems,
                &place,
                "provider_param needs path_param, and neither {provider} nor provider",
            );
        }
        if rule.forward_tail && !template.is_mount() {
            problem(
                problems,
                &place,
                "forward_tail needs a path of literals and {provider} ending in {*path}",
            );
        }
        if let Some(p) = &rule.provider {
            check_name(problems, &place, "provider name", p);
            if template.has_provider() {
                problem(
                    problems,
                    &place,
                    "names a provider and has {provider} in its path",
                );
            }
        }
        routes.push(Route {
            methods,
            template,
            // Until its body is read, a GraphQL request is counted under "graphql".
            action: Arc::from(if rule.graphql {
                "graphql"
            } else {
                rule.action.as_str()
            }),
            provider: rule.provider.as_deref().map(Arc::from),
            destination: rule.destination,
            source_action: rule.source_action.as_deref().map(Arc::from),
            overwrite_action: rule.overwrite_action.as_deref().map(Arc::from),
            graphql: rule.graphql,
            provider_param: rule.provider_param.as_deref().map(Arc::from),
            path_param: rule.path_param.as_deref().map(Arc::from),
            basic: rule.basic_auth,
            ancestor_action: rule.ancestor_action.as_deref().map(Arc::from),
            forward_tail: rule.forward_tail,
        });
    }
    let has_graphql = routes.iter().any(|r| r.graphql);
    if r.webdav_mount.is_some() && r.default_action.is_some() {
        problem(
            problems,
            "[routes] default_action",
            "under a webdav_mount every request names its provider's server; a default action would send the rest to [upstream]",
        );
    }
    let default_action = r.default_action.as_deref().map(|a| {
        check_name(problems, "[routes] default_action", "action name", a);
        Arc::from(a)
    });
    let mount =
        |section: &super::file::UpstreamSection, place: &str, problems: &mut Vec<Problem>| {
            let dialect = path_dialect(section.path_dialect.as_ref(), place, preset, problems);
            let prefix = match section.prefix.as_deref().unwrap_or("/") {
                p if p.starts_with('/') => {
                    match crate::route::canonicalize_path_in(p.as_bytes(), dialect) {
                        Ok(c) => c.segments().to_vec(),
                        Err(_) => {
                            problem(
                                problems,
                                format!("{place} prefix"),
                                "is not a canonical path",
                            );
                            Vec::new()
                        }
                    }
                }
                _ => {
                    problem(problems, format!("{place} prefix"), "must start with '/'");
                    Vec::new()
                }
            };
            Mount { dialect, prefix }
        };
    if file.upstream.prefix.is_some() {
        problem(
            problems,
            "[upstream] prefix",
            "a folder on the server is for a provider mounted with a server of its own: [upstreams.<provider>] prefix",
        );
    }
    let default_mount = mount(&file.upstream, "[upstream]", problems);
    let mut mounts = HashMap::new();
    for (provider, section) in &file.upstreams {
        let place = format!("[upstreams.{provider}]");
        if crate::model::check_provider_name(provider).is_err() {
            problem(
                problems,
                &place,
                format!("'{provider}' is not a valid provider name"),
            );
        }
        mounts.insert(provider.clone(), mount(section, &place, problems));
    }
    let table = RouteTable::new(routes, default_action).with_mounts(default_mount, mounts);
    match (&file.graphql, has_graphql) {
        (Some(section), _) => table.with_graphql(graphql_rules(section, problems)),
        (None, true) => {
            problem(
                problems,
                "[graphql]",
                "a route is marked graphql, so [graphql] must say at least its query and mutation actions",
            );
            table
        }
        (None, false) => table,
    }
}

/// `[graphql]`, checked.
fn graphql_rules(g: &GraphqlSection, problems: &mut Vec<Problem>) -> GraphqlRules {
    let mut action = |key: &str, value: &Option<String>| -> Arc<str> {
        match value {
            Some(a) => {
                check_name(problems, &format!("[graphql] {key}"), "action name", a);
                Arc::from(a.as_str())
            }
            None => {
                problem(
                    problems,
                    format!("[graphql] {key}"),
                    "is required: the action of a root field without a rule of its own",
                );
                Arc::from("")
            }
        }
    };
    let query_action = action("query", &g.query);
    let mutation_action = action("mutation", &g.mutation);
    let subscription_action = match &g.subscription {
        Some(_) => action("subscription", &g.subscription),
        None => query_action.clone(),
    };
    let bounded = |problems: &mut Vec<Problem>, key: &str, v: Option<usize>, default, max| {
        let v = v.unwrap_or(default);
        if v == 0 || v > max {
            problem(
                problems,
                format!("[graphql] {key}"),
                format!("must be between 1 and {max}"),
            );
        }
        v.clamp(1, max)
    };
    let max_body = bounded(
        problems,
        "max_body",
        g.max_body,
        graphql::MAX_BODY,
        graphql::MAX_BODY,
    );
    let max_depth = bounded(problems, "max_depth", g.max_depth, 15, 64);
    let max_aliases = bounded(problems, "max_aliases", g.max_aliases, 30, 1000);
    let max_fields = bounded(problems, "max_fields", g.max_fields, 1000, 10_000);
    let max_root_fields = bounded(problems, "max_root_fields", g.max_root_fields, 20, 100);
    let body_timeout =
        Durations::new(problems, "graphql").read("body_timeout", &g.body_timeout, secs(10));
    let mut fields = HashMap::new();
    for (key, f) in &g.fields {
        let place = format!("[graphql.fields] \"{key}\"");
        let well_formed = key.split_once('.').is_some_and(|(op, field)| {
            OperationType::parse(op).is_some()
                && !field.is_empty()
                && field
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if !well_formed {
            problem(
                problems,
                &place,
                "must be \"query.<field>\", \"mutation.<field>\" or \"subscription.<field>\"",
            );
        }
        check_name(problems, &place, "action name", &f.action);
        let mut argument = |which: &str, raw: &Option<String>| {
            raw.as_ref().and_then(|raw| {
                let parsed = ArgumentPath::parse(raw);
                if parsed.is_none() {
                    problem(
                        problems,
                        &place,
                        format!("{which} '{raw}' is not an argument name (or input.field)"),
                    );
                }
                parsed
            })
        };
        let provider = argument("provider", &f.provider);
        let path = argument("path", &f.path);
        let destination = argument("destination", &f.destination);
        let new_name = argument("new_name", &f.new_name);
        if f.new_name.is_some() && f.path.is_none() {
            problem(
                problems,
                &place,
                "names a new_name argument but no path argument",
            );
        }
        if f.destination.is_some() && f.path.is_none() {
            problem(
                problems,
                &place,
                "names a destination argument but no path argument",
            );
        }
        if f.provider.is_some() && f.path.is_none() {
            problem(
                problems,
                &place,
                "names a provider argument but no path argument",
            );
        }
        fields.insert(
            key.clone(),
            FieldRule {
                action: Arc::from(f.action.as_str()),
                provider,
                path,
                destination,
                new_name,
            },
        );
    }
    GraphqlRules {
        max_body,
        body_timeout,
        max_depth,
        max_aliases,
        max_fields,
        max_root_fields,
        subscriptions: g.subscriptions.unwrap_or(false),
        persisted_queries: g.persisted_queries.unwrap_or(false),
        query_action,
        mutation_action,
        subscription_action,
        fields,
    }
}
