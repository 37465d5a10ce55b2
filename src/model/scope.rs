//! Scopes and roles: checking what a key or token is granted against the scopes the policy
//! schema declares, and the workspace roles (what each role allows is in the policy files).
//! Pure: no I/O.

use std::str::FromStr;

/// Checks a scope list against `known` (the policy schema's `@scope` groups) and
/// de-duplicates it (order kept).
pub fn parse_scopes(scopes: &[String], known: &[String]) -> Result<Vec<String>, String> {
    if scopes.is_empty() {
        return Err("a key needs at least one scope".to_owned());
    }
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for s in scopes {
        let s = s.trim();
        if !known.iter().any(|k| k == s) {
            return Err(format!(
                "'{s}' is not a scope (the policy schema's: {})",
                known.join(", ")
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

/// A workspace member's role; the policies say what it allows the member's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("'{s}' is not a role (viewer, editor or admin)")),
        }
    }
}
