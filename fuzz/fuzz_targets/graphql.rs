//! The GraphQL pre-parse of a `graphql` route's body: never a panic, never more root-field
//! checks than the limit, and every path it authorizes is canonical. The first byte chooses
//! whether the rest is the whole body or the text of its `query` (which reaches the GraphQL
//! parser far more often).
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keygate::route::check_decoded_path;
use keygate::route::graphql::{authorize, ArgumentPath, FieldRule, GraphqlRules, MAX_BODY};
use libfuzzer_sys::fuzz_target;

fn rules() -> &'static GraphqlRules {
    static RULES: OnceLock<GraphqlRules> = OnceLock::new();
    RULES.get_or_init(|| {
        let field = |action: &str, provider: Option<&str>, path: &str| FieldRule {
            action: Arc::from(action),
            provider: provider.and_then(ArgumentPath::parse),
            path: ArgumentPath::parse(path),
            destination: None,
            new_name: None,
        };
        GraphqlRules {
            max_body: MAX_BODY,
            body_timeout: Duration::from_secs(10),
            max_depth: 15,
            max_aliases: 30,
            max_fields: 1000,
            max_root_fields: 20,
            subscriptions: true,
            persisted_queries: true,
            query_action: Arc::from("read"),
            mutation_action: Arc::from("admin"),
            subscription_action: Arc::from("read"),
            fields: HashMap::from([
                ("query.file".to_owned(), field("readFile", Some("provider"), "path")),
                ("query.folder".to_owned(), field("listFolder", None, "path")),
                (
                    "mutation.move".to_owned(),
                    FieldRule {
                        destination: ArgumentPath::parse("to"),
                        ..field("moveFile", Some("provider"), "path")
                    },
                ),
                (
                    "mutation.upload".to_owned(),
                    field("writeFile", Some("input.provider"), "input.path"),
                ),
            ]),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let body = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let query = String::from_utf8_lossy(rest);
        serde_json::json!({ "query": query, "variables": { "p": "/a/b", "i": { "provider": "s3", "path": "/x" } } })
            .to_string()
            .into_bytes()
    };
    let fixed: Arc<str> = Arc::from("dav");
    if let Ok(op) = authorize(rules(), &body, Some(&fixed)) {
        assert!(!op.checks.is_empty() && op.checks.len() <= 20);
        for check in &op.checks {
            if let Some(r) = &check.resource {
                assert_eq!(check_decoded_path(&r.path).as_deref(), Ok(r.path.as_str()));
            }
        }
    }
});
