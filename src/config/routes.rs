//! `[routes]`: the preset and the operator's own rules, checked and turned into the route table.

use std::sync::Arc;

use super::check::{problem, Problem};
use super::file::{FileConfig, RouteRule};
use crate::route::{Methods, Route, RouteTable, Template};

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
    match crate::route::presets::rules(preset, &dav_provider) {
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
        check_name(problems, &place, "action name", &rule.action);
        for also in [&rule.source_action, &rule.overwrite_action]
            .into_iter()
            .flatten()
        {
            check_name(problems, &place, "action name", also);
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
            action: Arc::from(rule.action.as_str()),
            provider: rule.provider.as_deref().map(Arc::from),
            destination: rule.destination,
            source_action: rule.source_action.as_deref().map(Arc::from),
            overwrite_action: rule.overwrite_action.as_deref().map(Arc::from),
        });
    }
    let default_action = r.default_action.as_deref().map(|a| {
        check_name(problems, "[routes] default_action", "action name", a);
        Arc::from(a)
    });
    RouteTable::new(routes, default_action)
}
