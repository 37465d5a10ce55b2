//! GraphQL requests: the JSON body of a `graphql` route → the operation's root fields, each one
//! action on a storage path (when the field's arguments name one) or on the field itself.
//! Pure: bytes and rules in, checks or a refusal out.
//!
//! Whatever cannot be authorized safely is refused: a batch, a document that does not parse,
//! several operations without `operationName`, a missing operation, a subscription or a
//! persisted query unless allowed, and documents over the depth, alias or root-field limits.
//! Fragments are followed (a cycle is refused) and counted once per use, so nesting them cannot
//! hide depth, aliases or root fields. `@skip` and `@include` are ignored: a field that might
//! run is authorized as if it will.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use apollo_parser::cst;
use serde_json::Value;

use super::canonical::check_decoded_path;
use super::{Resource, ResourceRole};
use crate::refusal::Refusal;

/// The largest body a GraphQL route reads before deciding. pingora replays at most this much
/// of a request body it has read (its retry buffer), so it is also the most that can be
/// forwarded after the decision.
pub const MAX_BODY: usize = 64 * 1024;

/// Tokens the parser reads at most per allowed field (apollo-parser counts whitespace and
/// punctuation too: a field with an argument and a directive takes about 12), and beyond:
/// parsing costs about 0.1 µs a token, so this, not the body's size, bounds the CPU a
/// document can take before it is refused.
const TOKENS_PER_FIELD: usize = 16;
const TOKENS_BEYOND_FIELDS: usize = 2000;

/// The three operation types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationType {
    Query,
    Mutation,
    Subscription,
}

impl OperationType {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationType::Query => "query",
            OperationType::Mutation => "mutation",
            OperationType::Subscription => "subscription",
        }
    }

    pub fn parse(s: &str) -> Option<OperationType> {
        match s {
            "query" => Some(OperationType::Query),
            "mutation" => Some(OperationType::Mutation),
            "subscription" => Some(OperationType::Subscription),
            _ => None,
        }
    }
}

/// Where a field argument (or a field of an input object inside one) names a value: `path`,
/// or `input.path` for `field(input: {path: …})`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgumentPath(pub Vec<String>);

impl ArgumentPath {
    pub fn parse(s: &str) -> Option<ArgumentPath> {
        let parts: Vec<String> = s.split('.').map(str::to_owned).collect();
        let name_ok = |p: &String| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !p.as_bytes()[0].is_ascii_digit()
        };
        (parts.len() <= 8 && parts.iter().all(name_ok)).then_some(ArgumentPath(parts))
    }
}

/// How one root field is authorized (`[graphql.fields]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRule {
    pub action: Arc<str>,
    /// The argument naming the provider; without it, the route's fixed provider.
    pub provider: Option<ArgumentPath>,
    /// The argument naming the path the field acts on.
    pub path: Option<ArgumentPath>,
    /// The argument naming a second path it acts on, in the same provider (a move's target):
    /// decided with the same action.
    pub destination: Option<ArgumentPath>,
    /// The argument giving a new name in the same folder (a rename): the renamed path is
    /// decided with the same action; a name that is not one segment is refused.
    pub new_name: Option<ArgumentPath>,
}

/// The `[graphql]` section, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphqlRules {
    pub max_body: usize,
    /// How long the whole body may take to arrive.
    pub body_timeout: std::time::Duration,
    pub max_depth: usize,
    pub max_aliases: usize,
    /// Most fields in all, counted per use of a fragment (what the server resolves).
    pub max_fields: usize,
    pub max_root_fields: usize,
    pub subscriptions: bool,
    pub persisted_queries: bool,
    /// The action of a root field with no rule of its own, by operation type.
    pub query_action: Arc<str>,
    pub mutation_action: Arc<str>,
    pub subscription_action: Arc<str>,
    /// Rules by `"<operation type>.<field>"` (`mutation.deleteFile`).
    pub fields: HashMap<String, FieldRule>,
}

impl GraphqlRules {
    /// Every action a GraphQL request can be decided on.
    pub fn action_names(&self) -> impl Iterator<Item = &Arc<str>> {
        [
            &self.query_action,
            &self.mutation_action,
            &self.subscription_action,
        ]
        .into_iter()
        .chain(self.fields.values().map(|f| &f.action))
    }
}

/// One decision a GraphQL request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCheck {
    pub action: Arc<str>,
    /// The storage path the field acts on; `None` when its rule names none.
    pub resource: Option<Resource>,
    /// `<operation type>.<field>` (`query.me`): how a field without a path is named to the
    /// policies (`Keygate::Unmapped`).
    pub field: String,
}

/// What a GraphQL request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub kind: OperationType,
    /// One check per distinct root field, in the document's order.
    pub checks: Vec<FieldCheck>,
}

fn bad(message: impl Into<std::borrow::Cow<'static, str>>) -> Refusal {
    Refusal::bad_request(message)
}

/// The parts of a GraphQL-over-HTTP request body keygate reads.
struct Request {
    query: Option<String>,
    operation_name: Option<String>,
    variables: serde_json::Map<String, Value>,
    /// The request names a persisted document (a hash or an id).
    persisted: bool,
    /// `extensions.persistedQuery.sha256Hash` (Automatic Persisted Queries).
    hash: Option<String>,
}

/// JSON as serde_json reads it, except that an object with a key given twice is an error:
/// JSON parsers disagree on which of the two counts, so keygate and the GraphQL server could
/// read two different requests from one body.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.insert(key, value).is_some() {
                return Err(serde::de::Error::custom("a key is given twice"));
            }
        }
        Ok(Value::Object(out))
    }
}

fn read_request(body: &[u8]) -> Result<Request, Refusal> {
    let Strict(value) = serde_json::from_slice(body)
        .map_err(|_| bad("a GraphQL request body must be a JSON object, each key given once"))?;
    let Value::Object(mut o) = value else {
        return Err(bad(
            "a GraphQL request body must be one JSON object (batches are not accepted)",
        ));
    };
    let query = match o.remove("query") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad("the GraphQL \"query\" must be a string")),
    };
    let operation_name = match o.remove("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad("the GraphQL \"operationName\" must be a string")),
    };
    let variables = match o.remove("variables") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(v)) => v,
        Some(_) => return Err(bad("the GraphQL \"variables\" must be an object")),
    };
    let (persisted, hash) = match o.get("extensions") {
        None | Some(Value::Null) => (false, None),
        Some(Value::Object(e)) => match e.get("persistedQuery") {
            None => (false, None),
            Some(pq) => (
                true,
                pq.get("sha256Hash")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            ),
        },
        Some(_) => return Err(bad("the GraphQL \"extensions\" must be an object")),
    };
    // A persisted-document id instead of a document (`id`, `documentId`, `queryId`).
    let persisted = persisted
        || ["id", "documentId", "queryId"]
            .iter()
            .any(|k| o.contains_key(*k));
    if let Some(Value::Object(e)) = o.get("extensions") {
        if e.keys()
            .any(|k| k != "persistedQuery" && k.eq_ignore_ascii_case("persistedQuery"))
        {
            return Err(bad(
                "the GraphQL \"extensions\" spell persistedQuery another way",
            ));
        }
    }
    // A persisted-document id alone is refused below (keygate cannot read the document);
    // beside a document, a server preferring the id would run something else.
    let by_id = ["id", "documentId", "queryId"]
        .iter()
        .any(|k| o.contains_key(*k));
    if by_id && query.is_some() {
        return Err(bad(
            "a GraphQL request with its document must not also name a persisted document by id",
        ));
    }
    // Any other key is refused: servers that match keys case-insensitively (Go's encoding/json:
    // a later "Query" replaces "query") or know other spellings would read another request.
    o.remove("extensions");
    for k in ["id", "documentId", "queryId"] {
        o.remove(k);
    }
    if let Some(other) = o.keys().next() {
        return Err(bad(format!(
            "a GraphQL request body holds only query, operationName, variables and extensions, not {:?}",
            other.chars().take(40).collect::<String>()
        )));
    }
    Ok(Request {
        query,
        operation_name,
        variables,
        persisted,
        hash,
    })
}

/// Reads a GraphQL request body and returns the checks its operation needs. `provider` is the
/// route's fixed provider, for fields whose rule names no provider argument.
pub fn authorize(
    rules: &GraphqlRules,
    body: &[u8],
    provider: Option<&Arc<str>>,
) -> Result<Operation, Refusal> {
    if body.len() > rules.max_body {
        return Err(Refusal::PayloadTooLarge {
            limit: rules.max_body,
        });
    }
    let request = read_request(body)?;
    if request.persisted && !rules.persisted_queries {
        return Err(bad(
            "persisted GraphQL queries are not accepted here: send the query text",
        ));
    }
    let Some(query) = request.query.as_deref() else {
        return Err(if request.persisted {
            Refusal::PersistedQueryNotFound
        } else {
            bad("a GraphQL request needs a \"query\"")
        });
    };
    // The upstream may run the document it has under this hash: it must be this one.
    if request.persisted {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(query.as_bytes());
        let matches = request.hash.as_deref().is_some_and(|h| {
            h.len() == 64
                && h.as_bytes()
                    .chunks(2)
                    .zip(digest.iter())
                    .all(|(hex, byte)| {
                        std::str::from_utf8(hex)
                            .ok()
                            .and_then(|s| u8::from_str_radix(s, 16).ok())
                            == Some(*byte)
                    })
        });
        if !matches {
            return Err(bad(
                "the persisted-query hash is not the SHA-256 of the GraphQL document",
            ));
        }
    }
    let tree = apollo_parser::Parser::new(query)
        .recursion_limit(rules.max_depth.saturating_mul(2) + 8)
        .token_limit(rules.max_fields.saturating_mul(TOKENS_PER_FIELD) + TOKENS_BEYOND_FIELDS)
        .parse();
    if let Some(e) = tree.errors().next() {
        return Err(bad(if e.message().contains("limit") {
            "the GraphQL document is nested too deeply or too long (see [graphql] max_depth and max_fields)"
        } else {
            "the GraphQL document does not parse"
        }));
    }
    let document = tree.document();
    let mut operations = Vec::new();
    let mut fragments: HashMap<String, cst::SelectionSet> = HashMap::new();
    for definition in document.definitions() {
        match definition {
            cst::Definition::OperationDefinition(op) => operations.push(op),
            cst::Definition::FragmentDefinition(f) => {
                let name = f
                    .fragment_name()
                    .and_then(|n| n.name())
                    .map(|n| n.text().to_string())
                    .ok_or_else(|| bad("a GraphQL fragment has no name"))?;
                let set = f
                    .selection_set()
                    .ok_or_else(|| bad("a GraphQL fragment has no selections"))?;
                if fragments.insert(name, set).is_some() {
                    return Err(bad("the GraphQL document defines a fragment twice"));
                }
            }
            _ => {
                return Err(bad(
                    "a GraphQL request may hold only operations and fragments",
                ))
            }
        }
    }
    let op = choose_operation(operations, request.operation_name.as_deref())?;
    let kind = match op.operation_type() {
        None => OperationType::Query,
        Some(t) if t.mutation_token().is_some() => OperationType::Mutation,
        Some(t) if t.subscription_token().is_some() => OperationType::Subscription,
        Some(_) => OperationType::Query,
    };
    if kind == OperationType::Subscription && !rules.subscriptions {
        return Err(bad("GraphQL subscriptions are not accepted here"));
    }
    let selections = op
        .selection_set()
        .ok_or_else(|| bad("the GraphQL operation has no selections"))?;
    let mut walk = Walk {
        fragments: &fragments,
        max_depth: rules.max_depth,
        shapes: HashMap::new(),
        visiting: HashSet::new(),
        nesting: 0,
    };
    let shape = walk.shape(&selections, 1)?;
    if shape.depth > rules.max_depth {
        return Err(bad(format!(
            "the GraphQL operation is nested deeper than {} levels",
            rules.max_depth
        )));
    }
    if shape.aliases > rules.max_aliases {
        return Err(bad(format!(
            "the GraphQL operation has more than {} aliases",
            rules.max_aliases
        )));
    }
    if shape.fields > rules.max_fields {
        return Err(bad(format!(
            "the GraphQL operation asks for more than {} fields",
            rules.max_fields
        )));
    }
    let mut roots = Vec::new();
    walk.root_fields(&selections, rules.max_root_fields, &mut roots)?;
    let defaults = variable_defaults(&op)?;
    let values = Values {
        variables: &request.variables,
        defaults: &defaults,
    };
    let mut checks: Vec<FieldCheck> = Vec::with_capacity(roots.len());
    for field in &roots {
        for check in check_field(rules, kind, field, &values, provider)? {
            if !checks.contains(&check) {
                checks.push(check);
            }
        }
    }
    if checks.is_empty() {
        return Err(bad("the GraphQL operation asks for nothing"));
    }
    Ok(Operation { kind, checks })
}

fn choose_operation(
    operations: Vec<cst::OperationDefinition>,
    wanted: Option<&str>,
) -> Result<cst::OperationDefinition, Refusal> {
    let name_of = |op: &cst::OperationDefinition| op.name().map(|n| n.text().to_string());
    match wanted {
        Some(wanted) => {
            let mut found = operations
                .into_iter()
                .filter(|op| name_of(op).as_deref() == Some(wanted));
            let op = found
                .next()
                .ok_or_else(|| bad("the GraphQL document has no operation of that name"))?;
            if found.next().is_some() {
                return Err(bad("the GraphQL document has two operations of that name"));
            }
            Ok(op)
        }
        None => {
            let mut all = operations.into_iter();
            let op = all
                .next()
                .ok_or_else(|| bad("the GraphQL document has no operation"))?;
            if all.next().is_some() {
                return Err(bad(
                    "the GraphQL document has several operations: name one in \"operationName\"",
                ));
            }
            Ok(op)
        }
    }
}

/// Depth, aliases and fields of a selection set, fragments included.
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    depth: usize,
    aliases: usize,
    /// Fields, counted per use of a fragment: what the server will resolve.
    fields: usize,
}

/// How deeply fragments may spread fragments (and inline fragments nest): the walk recurses
/// once per level, so this bounds its stack.
const MAX_FRAGMENT_NESTING: usize = 64;

struct Walk<'a> {
    fragments: &'a HashMap<String, cst::SelectionSet>,
    /// Deepest nesting allowed: the walk stops as soon as it is passed, so its stack is
    /// bounded by it (and by [`MAX_FRAGMENT_NESTING`]), not by the document.
    max_depth: usize,
    /// Each fragment's shape, computed once however often it is spread.
    shapes: HashMap<String, Shape>,
    visiting: HashSet<String>,
    /// Fragments and inline fragments being walked into, now.
    nesting: usize,
}

impl Walk<'_> {
    /// Walks into a fragment, or refuses when that nests too deeply.
    fn enter(&mut self) -> Result<(), Refusal> {
        self.nesting += 1;
        if self.nesting > MAX_FRAGMENT_NESTING {
            return Err(bad(format!(
                "the GraphQL document nests fragments deeper than {MAX_FRAGMENT_NESTING} levels"
            )));
        }
        Ok(())
    }

    fn fragment(
        &self,
        spread: &cst::FragmentSpread,
    ) -> Result<(String, cst::SelectionSet), Refusal> {
        let name = spread
            .fragment_name()
            .and_then(|n| n.name())
            .map(|n| n.text().to_string())
            .ok_or_else(|| bad("a GraphQL fragment spread has no name"))?;
        let set = self
            .fragments
            .get(&name)
            .cloned()
            .ok_or_else(|| bad("the GraphQL document spreads a fragment it does not define"))?;
        Ok((name, set))
    }

    /// The shape of `set`, found at nesting `level` (the operation's own set is 1): its depth
    /// counts the set itself; aliases and fields are counted per use.
    fn shape(&mut self, set: &cst::SelectionSet, level: usize) -> Result<Shape, Refusal> {
        if level > self.max_depth {
            return Err(bad(format!(
                "the GraphQL operation is nested deeper than {} levels",
                self.max_depth
            )));
        }
        let mut total = Shape {
            depth: 1,
            aliases: 0,
            fields: 0,
        };
        for selection in set.selections() {
            let inner = match selection {
                cst::Selection::Field(f) => {
                    let mut s = match f.selection_set() {
                        Some(sub) => {
                            let s = self.shape(&sub, level + 1)?;
                            Shape {
                                depth: s.depth + 1,
                                ..s
                            }
                        }
                        None => Shape {
                            depth: 1,
                            aliases: 0,
                            fields: 0,
                        },
                    };
                    s.aliases = s.aliases.saturating_add(usize::from(f.alias().is_some()));
                    s.fields = s.fields.saturating_add(1);
                    s
                }
                cst::Selection::InlineFragment(i) => match i.selection_set() {
                    Some(sub) => {
                        self.enter()?;
                        let s = self.shape(&sub, level)?;
                        self.nesting -= 1;
                        s
                    }
                    None => Shape::default(),
                },
                cst::Selection::FragmentSpread(spread) => {
                    let (name, sub) = self.fragment(&spread)?;
                    match self.shapes.get(&name) {
                        Some(s) => {
                            // Computed where first spread; here it may sit deeper.
                            if level + s.depth - 1 > self.max_depth {
                                return Err(bad(format!(
                                    "the GraphQL operation is nested deeper than {} levels",
                                    self.max_depth
                                )));
                            }
                            *s
                        }
                        None => {
                            if !self.visiting.insert(name.clone()) {
                                return Err(bad("the GraphQL document's fragments form a cycle"));
                            }
                            self.enter()?;
                            let s = self.shape(&sub, level)?;
                            self.nesting -= 1;
                            self.visiting.remove(&name);
                            self.shapes.insert(name, s);
                            s
                        }
                    }
                }
            };
            total.depth = total.depth.max(inner.depth);
            total.aliases = total.aliases.saturating_add(inner.aliases);
            total.fields = total.fields.saturating_add(inner.fields);
        }
        Ok(total)
    }

    /// The root fields of `set`, through inline fragments and spreads, at most `max`.
    /// (Called after [`Walk::shape`], which refused cycles and deep nesting.)
    fn root_fields(
        &mut self,
        set: &cst::SelectionSet,
        max: usize,
        out: &mut Vec<cst::Field>,
    ) -> Result<(), Refusal> {
        for selection in set.selections() {
            match selection {
                cst::Selection::Field(f) => {
                    if out.len() == max {
                        return Err(bad(format!(
                            "the GraphQL operation asks for more than {max} root fields"
                        )));
                    }
                    out.push(f);
                }
                cst::Selection::InlineFragment(i) => {
                    if let Some(sub) = i.selection_set() {
                        self.enter()?;
                        self.root_fields(&sub, max, out)?;
                        self.nesting -= 1;
                    }
                }
                cst::Selection::FragmentSpread(spread) => {
                    let (_, sub) = self.fragment(&spread)?;
                    self.enter()?;
                    self.root_fields(&sub, max, out)?;
                    self.nesting -= 1;
                }
            }
        }
        Ok(())
    }
}

/// The default values of the operation's variables, as JSON.
/// The default values of the operation's variables, as JSON; a variable defined twice is
/// refused.
fn variable_defaults(op: &cst::OperationDefinition) -> Result<HashMap<String, Value>, Refusal> {
    let mut out = HashMap::new();
    let mut seen = HashSet::new();
    let Some(defs) = op.variable_definitions() else {
        return Ok(out);
    };
    for def in defs.variable_definitions() {
        let Some(name) = def.variable().and_then(|v| v.name()) else {
            continue;
        };
        let name = name.text().to_string();
        if !seen.insert(name.clone()) {
            return Err(bad("the GraphQL operation defines a variable twice"));
        }
        if let Some(json) = def
            .default_value()
            .and_then(|d| d.value())
            .and_then(|v| constant(&v))
        {
            out.insert(name, json);
        }
    }
    Ok(out)
}

/// A constant GraphQL value as JSON: strings and objects of strings are all keygate reads.
fn constant(value: &cst::Value) -> Option<Value> {
    match value {
        cst::Value::StringValue(s) => Some(Value::String(String::from(s))),
        cst::Value::ObjectValue(o) => {
            let mut map = serde_json::Map::new();
            for f in o.object_fields() {
                let name = f.name()?.text().to_string();
                // A field given twice: servers keep one or the other.
                if map.insert(name, constant(&f.value()?)?).is_some() {
                    return None;
                }
            }
            Some(Value::Object(map))
        }
        _ => None,
    }
}

struct Values<'a> {
    variables: &'a serde_json::Map<String, Value>,
    defaults: &'a HashMap<String, Value>,
}

impl Values<'_> {
    /// A variable's value: as given, or its default when not given at all. An explicit
    /// `null` overrides the default (the server receives `null`), so it is no string.
    fn variable(&self, name: &str) -> Option<&Value> {
        match self.variables.get(name) {
            Some(v) => Some(v),
            None => self.defaults.get(name),
        }
    }

    /// The string at `path` in the field's arguments, through variables and input objects.
    fn string(&self, field: &cst::Field, path: &ArgumentPath) -> Option<String> {
        let (first, rest) = path.0.split_first()?;
        // An argument or input field given twice is no string: servers keep the last one.
        let mut arguments = field.arguments()?.arguments().filter(|a| {
            a.name()
                .is_some_and(|n| n.text().as_ref() == first.as_str())
        });
        let argument = arguments.next()?;
        if arguments.next().is_some() {
            return None;
        }
        let mut value = argument.value()?;
        for (i, part) in rest.iter().enumerate() {
            match value {
                cst::Value::ObjectValue(o) => {
                    let mut fields = o
                        .object_fields()
                        .filter(|f| f.name().is_some_and(|n| n.text().as_ref() == part.as_str()));
                    let found = fields.next()?;
                    if fields.next().is_some() {
                        return None;
                    }
                    value = found.value()?;
                }
                cst::Value::Variable(v) => {
                    return json_at(self.variable(v.name()?.text().as_ref())?, &rest[i..]);
                }
                _ => return None,
            }
        }
        match value {
            cst::Value::StringValue(s) => Some(String::from(&s)),
            cst::Value::Variable(v) => json_at(self.variable(v.name()?.text().as_ref())?, &[]),
            _ => None,
        }
    }
}

fn json_at(mut value: &Value, path: &[String]) -> Option<String> {
    for part in path {
        value = value.as_object()?.get(part)?;
    }
    value.as_str().map(str::to_owned)
}

fn check_field(
    rules: &GraphqlRules,
    kind: OperationType,
    field: &cst::Field,
    values: &Values<'_>,
    route_provider: Option<&Arc<str>>,
) -> Result<Vec<FieldCheck>, Refusal> {
    let name = field
        .name()
        .map(|n| n.text().to_string())
        .ok_or_else(|| bad("a GraphQL field has no name"))?;
    let key = format!("{}.{name}", kind.as_str());
    let Some(rule) = rules.fields.get(&key) else {
        let action = match kind {
            OperationType::Query => &rules.query_action,
            OperationType::Mutation => &rules.mutation_action,
            OperationType::Subscription => &rules.subscription_action,
        };
        return Ok(vec![FieldCheck {
            action: action.clone(),
            resource: None,
            field: key,
        }]);
    };
    let Some(path_arg) = &rule.path else {
        return Ok(vec![FieldCheck {
            action: rule.action.clone(),
            resource: None,
            field: key,
        }]);
    };
    let argument = |arg: &ArgumentPath| {
        values.string(field, arg).ok_or_else(|| {
            bad(format!(
                "{key} needs its argument {} as a string",
                arg.0.join(".")
            ))
        })
    };
    let provider: Arc<str> = match &rule.provider {
        Some(arg) => {
            let p = argument(arg)?;
            check_provider(&p)?;
            Arc::from(p)
        }
        None => route_provider
            .cloned()
            .ok_or_else(|| bad(format!("{key} names no provider")))?,
    };
    let raw_source = argument(path_arg)?;
    let source = check_decoded_path(&raw_source)?;
    let check = |path: String, role| FieldCheck {
        action: rule.action.clone(),
        resource: Some(Resource {
            role,
            provider: provider.clone(),
            path,
        }),
        field: key.clone(),
    };
    let mut out = vec![check(source.clone(), ResourceRole::Source)];
    if let Some(arg) = &rule.destination {
        out.push(check(
            check_decoded_path(&argument(arg)?)?,
            ResourceRole::Destination,
        ));
    }
    if let Some(arg) = &rule.new_name {
        // The folder of `/a/b/` is `/a/b` to some servers and `/a` to keygate's canonical form.
        if raw_source.ends_with('/') || source == "/" {
            return Err(bad(format!(
                "{key}: what is renamed must be named without a trailing '/'"
            )));
        }
        let name = argument(arg)?;
        let renamed = check_decoded_path(&format!("/{name}"))?;
        if renamed == "/" || renamed[1..].contains('/') || name.ends_with('/') {
            return Err(bad(format!(
                "{key}: a new name is one path segment, without '/'"
            )));
        }
        let parent = source.rsplit_once('/').map_or("", |(p, _)| p);
        out.push(check(
            format!("{parent}{renamed}"),
            ResourceRole::Destination,
        ));
    }
    Ok(out)
}

/// A provider named in an argument or a query parameter: the characters a provider name may
/// have.
pub(super) fn check_provider(p: &str) -> Result<(), Refusal> {
    let ok = !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            "a GraphQL argument names a provider keygate does not accept",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> GraphqlRules {
        let field = |action: &str, provider: Option<&str>, path: Option<&str>| FieldRule {
            action: Arc::from(action),
            provider: provider.and_then(ArgumentPath::parse),
            path: path.and_then(ArgumentPath::parse),
            destination: None,
            new_name: None,
        };
        GraphqlRules {
            max_body: MAX_BODY,
            body_timeout: std::time::Duration::from_secs(10),
            max_depth: 6,
            max_aliases: 3,
            max_fields: 40,
            max_root_fields: 4,
            subscriptions: false,
            persisted_queries: false,
            query_action: Arc::from("browse"),
            mutation_action: Arc::from("manage"),
            subscription_action: Arc::from("browse"),
            fields: HashMap::from([
                (
                    "mutation.deleteFile".to_owned(),
                    field("deleteFile", Some("providerId"), Some("path")),
                ),
                (
                    "mutation.upload".to_owned(),
                    field("writeFile", Some("input.providerId"), Some("input.path")),
                ),
                (
                    "query.listFolder".to_owned(),
                    field("listFolder", None, Some("path")),
                ),
                ("query.me".to_owned(), field("browse", None, None)),
                (
                    "mutation.rename".to_owned(),
                    FieldRule {
                        new_name: ArgumentPath::parse("name"),
                        ..field("moveFile", Some("providerId"), Some("path"))
                    },
                ),
            ]),
        }
    }

    fn run(body: Value) -> Result<Operation, Refusal> {
        let fixed: Arc<str> = Arc::from("dav");
        authorize(&rules(), body.to_string().as_bytes(), Some(&fixed))
    }

    fn checks(body: Value) -> Vec<(String, Option<String>)> {
        run(body)
            .unwrap()
            .checks
            .into_iter()
            .map(|c| {
                (
                    c.action.to_string(),
                    c.resource.map(|r| format!("{}:{}", r.provider, r.path)),
                )
            })
            .collect()
    }

    fn refused(body: Value) -> String {
        match run(body) {
            Err(Refusal::BadRequest(m)) => m.into_owned(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn root_fields_become_actions_on_their_paths() {
        let q = serde_json::json!({
            "query": "mutation M($p: String!) { deleteFile(providerId: \"s3\", path: $p) { ok } me { id } other }",
            "variables": {"p": "/backups/2025/a.txt"}
        });
        assert_eq!(
            checks(q),
            [
                ("deleteFile".into(), Some("s3:/backups/2025/a.txt".into())),
                // `me` has a rule only as a query field: in a mutation, the mutation default.
                ("manage".into(), None),
                ("manage".into(), None),
            ]
        );
        // Input objects, literal or from a variable; the route's provider when none is named.
        let q = serde_json::json!({
            "query": "mutation($i: UploadInput!) { a: upload(input: $i) { id } b: upload(input: {providerId: \"gd\", path: \"/x\"}) { id } }",
            "variables": {"i": {"providerId": "local", "path": "/team/assets/logo.png"}}
        });
        assert_eq!(
            checks(q),
            [
                (
                    "writeFile".into(),
                    Some("local:/team/assets/logo.png".into())
                ),
                ("writeFile".into(), Some("gd:/x".into())),
            ]
        );
        let q = serde_json::json!({"query": "query($p: String = \"/docs\") { listFolder(path: $p) { name } }"});
        assert_eq!(checks(q), [("listFolder".into(), Some("dav:/docs".into()))]);
        // Shorthand queries, fragments and inline fragments at the root.
        let q = serde_json::json!({
            "query": "{ ...F ... on Query { listFolder(path: \"/a\") { name } } } fragment F on Query { me { id } }"
        });
        assert_eq!(
            checks(q),
            [
                ("browse".into(), None),
                ("listFolder".into(), Some("dav:/a".into())),
            ]
        );
    }

    #[test]
    fn the_named_operation_is_the_one_authorized() {
        let doc = "query Q { me { id } } mutation M { deleteFile(providerId: \"s3\", path: \"/a\") { ok } }";
        let q = serde_json::json!({"query": doc, "operationName": "M"});
        assert_eq!(run(q).unwrap().kind, OperationType::Mutation);
        assert!(refused(serde_json::json!({"query": doc})).contains("operationName"));
        assert!(
            refused(serde_json::json!({"query": doc, "operationName": "Z"}))
                .contains("no operation of that name")
        );
    }

    #[test]
    fn what_cannot_be_authorized_is_refused() {
        let cases = [
            (serde_json::json!([{"query": "{ me { id } }"}]), "batches"),
            (serde_json::json!({"query": "{ me { id "}), "does not parse"),
            (
                serde_json::json!({"query": "subscription { changes { id } }"}),
                "subscriptions",
            ),
            (
                serde_json::json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ab"}}}),
                "persisted",
            ),
            (serde_json::json!({"documentId": "abc"}), "persisted"),
            (serde_json::json!({"variables": {}}), "needs a \"query\""),
            (
                serde_json::json!({"query": "{ a { b { c { d { e { f { g } } } } } } }"}),
                "deeper",
            ),
            (
                serde_json::json!({"query": "{ a: me { id } b: me { id } c: me { id } d: me { id } }"}),
                "aliases",
            ),
            (serde_json::json!({"query": "{ a b c d e }"}), "root fields"),
            (
                serde_json::json!({"query": "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"}),
                "cycle",
            ),
            (
                serde_json::json!({"query": "{ ...Missing }"}),
                "does not define",
            ),
            (
                serde_json::json!({"query": "type Query { a: Int }"}),
                "only operations",
            ),
            (
                serde_json::json!({"query": "mutation { deleteFile(providerId: \"s3\") { ok } }"}),
                "path",
            ),
            (
                serde_json::json!({"query": "mutation { deleteFile(providerId: \"s3\", path: \"/a/../b\") { ok } }"}),
                "dot segment",
            ),
            (
                serde_json::json!({"query": "mutation { deleteFile(providerId: \"s3\", path: 7) { ok } }"}),
                "path",
            ),
            (
                serde_json::json!({"query": "mutation { deleteFile(providerId: \"s/3\", path: \"/a\") { ok } }"}),
                "provider",
            ),
            (
                serde_json::json!({"query": "mutation($p: String) { deleteFile(providerId: \"s3\", path: $p) { ok } }", "variables": {"p": null}}),
                "path",
            ),
        ];
        for (body, why) in cases {
            let message = refused(body.clone());
            assert!(message.contains(why), "{body}: {message}");
        }
    }

    #[test]
    fn renames_nulls_and_unknown_keys() {
        // A rename is decided on the old path and on the new one, in the same folder.
        let q = serde_json::json!({"query": "mutation { rename(providerId: \"s3\", path: \"/backups/a.tar\", name: \"b.tar\") { id } }"});
        assert_eq!(
            checks(q),
            [
                ("moveFile".into(), Some("s3:/backups/a.tar".into())),
                ("moveFile".into(), Some("s3:/backups/b.tar".into())),
            ]
        );
        for name in ["../documents/a", "a/b", "..", "", "a/"] {
            let q = serde_json::json!({"query": format!("mutation {{ rename(providerId: \"s3\", path: \"/backups/a\", name: {name:?}) {{ id }} }}")});
            assert!(run(q).is_err(), "{name}");
        }
        // An explicit null is what the server receives, not the default.
        let q = serde_json::json!({
            "query": "query($p: String = \"/docs\") { listFolder(path: $p) { name } }",
            "variables": {"p": null}
        });
        assert!(refused(q).contains("path"));
        // Keys a server might read as query, operationName or variables are refused.
        for key in ["Query", "QUERY", "operationname", "Variables", "doc_id"] {
            let mut body = serde_json::json!({"query": "{ me { id } }"});
            body[key] = serde_json::json!(
                "mutation { deleteFile(providerId: \"s3\", path: \"/a\") { ok } }"
            );
            assert!(refused(body).contains("holds only"), "{key}");
        }
        // Beside its document, a persisted-document id a server could prefer; persistedQuery
        // spelled another way; an input field twice in a variable's default.
        let mut with_pq = rules();
        with_pq.persisted_queries = true;
        let fixed: Arc<str> = Arc::from("dav");
        for body in [
            serde_json::json!({"query": "{ me { id } }", "documentId": "stored-mutation"}),
            serde_json::json!({"query": "{ me { id } }", "extensions": {"PersistedQuery": {"sha256Hash": "x"}}}),
        ] {
            assert!(
                matches!(
                    authorize(&with_pq, body.to_string().as_bytes(), Some(&fixed)),
                    Err(Refusal::BadRequest(_))
                ),
                "{body}"
            );
        }
        assert!(refused(serde_json::json!({"query": "mutation($i: UploadInput = {providerId: \"s3\", path: \"/x\", path: \"/y\"}) { upload(input: $i) { id } }"})).contains("needs its argument"));
        // A rename of something named with a trailing '/', or of the root, is refused.
        for path in ["/backups/a.tar/", "/"] {
            let q = serde_json::json!({"query": format!("mutation {{ rename(providerId: \"s3\", path: {path:?}, name: \"b\") {{ id }} }}")});
            assert!(refused(q).contains("trailing"), "{path}");
        }
        // An argument or a variable given twice is refused.
        assert!(refused(serde_json::json!({"query": "mutation { deleteFile(providerId: \"s3\", path: \"/a\", path: \"/b\") { ok } }"})).contains("path"));
        assert!(refused(
            serde_json::json!({"query": "query($p: String, $p: String) { me { id } }"})
        )
        .contains("twice"));
    }

    #[test]
    fn deep_fragment_chains_stop_at_the_depth_limit_on_a_small_stack() {
        // 60 fragments, each 5 levels deep, each spreading the next at its bottom: 300 levels
        // in all. Refused once the limit is passed, on a 256 KiB stack.
        let mut doc = String::from("{ ...F0 }");
        for i in 0..60 {
            let inner = if i + 1 < 60 {
                format!("...F{}", i + 1)
            } else {
                "x".to_owned()
            };
            doc.push_str(&format!(
                " fragment F{i} on Q {{ a {{ a {{ a {{ a {{ a {{ {inner} }} }} }} }} }} }}"
            ));
        }
        let body = serde_json::json!({ "query": doc }).to_string();
        let verdict = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut r = rules();
                r.max_depth = 64;
                r.max_fields = 1000;
                match authorize(&r, body.as_bytes(), None) {
                    Err(Refusal::BadRequest(m)) => m.into_owned(),
                    other => format!("{other:?}"),
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(verdict.contains("deeper than 64"), "{verdict}");
        // Fields are counted per use of a fragment.
        let q = serde_json::json!({"query": "{ me { ...A ...A ...A } } fragment A on U { a b c d e f g h i j k l m n }"});
        assert!(refused(q).contains("fields"));
    }

    #[test]
    fn persisted_queries_when_allowed_carry_their_document() {
        use sha2::Digest;
        let mut r = rules();
        r.persisted_queries = true;
        let doc = "{ me { id } }";
        let hash: String = sha2::Sha256::digest(doc.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let apq = |query: Option<&str>, hash: &str| {
            let mut body = serde_json::json!({
                "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}}
            });
            if let Some(q) = query {
                body["query"] = serde_json::json!(q);
            }
            authorize(&r, body.to_string().as_bytes(), None)
        };
        // The document with its own hash is authorized like any other.
        assert_eq!(apq(Some(doc), &hash).unwrap().checks.len(), 1);
        // Another document under that hash could make the server run what it stored.
        let other = apq(
            Some("mutation { deleteFile(providerId: \"s3\", path: \"/a\") { ok } }"),
            &hash,
        );
        assert!(matches!(other, Err(Refusal::BadRequest(m)) if m.contains("SHA-256")));
        // A hash alone: the client is asked for the document, in the shape APQ clients know.
        let alone = apq(None, &hash).unwrap_err();
        assert_eq!(alone, Refusal::PersistedQueryNotFound);
        let body: serde_json::Value = serde_json::from_slice(&alone.render("r").body).unwrap();
        assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");
        assert_eq!(body["error"]["code"], "PERSISTED_QUERY_NOT_FOUND");
    }

    #[test]
    fn a_key_given_twice_is_refused_anywhere_in_the_body() {
        let fixed: Arc<str> = Arc::from("dav");
        for body in [
            r#"{"query": "{ me { id } }", "query": "mutation { deleteFile(providerId: \"s3\", path: \"/a\") { ok } }"}"#,
            r#"{"query": "mutation($p: String!) { deleteFile(providerId: \"s3\", path: $p) { ok } }", "variables": {"p": "/a", "p": "/b"}}"#,
            r#"{"query": "{ me { id } }", "operationName": null, "operationName": "X"}"#,
        ] {
            assert!(
                matches!(
                    authorize(&rules(), body.as_bytes(), Some(&fixed)),
                    Err(Refusal::BadRequest(m)) if m.contains("each key given once")
                ),
                "{body}"
            );
        }
        // Trailing bytes after the object are no JSON either.
        assert!(authorize(&rules(), br#"{"query": "{ me { id } }"} x"#, Some(&fixed)).is_err());
    }

    #[test]
    fn fragments_count_per_use_without_blowing_up() {
        // Each fragment is spread twice by the one above it: counted per use, computed once.
        let mut doc = String::from("{ ...F0 } fragment F0 on Query { x: me { id } }");
        for i in 1..40 {
            doc.push_str(&format!(
                " fragment F{i} on Query {{ ...F{} ...F{} }}",
                i - 1,
                i - 1
            ));
        }
        doc = doc.replace("{ ...F0 }", "{ ...F39 }");
        assert!(refused(serde_json::json!({ "query": doc })).contains("aliases"));
    }

    #[test]
    fn bodies_over_the_limit_are_too_large() {
        let mut r = rules();
        r.max_body = 10;
        assert!(matches!(
            authorize(&r, br#"{"query": "{ me { id } }"}"#, None),
            Err(Refusal::PayloadTooLarge { limit: 10 })
        ));
    }
}
