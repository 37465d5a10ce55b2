//! Provider grants: which providers a restricted credential may use, and the folder it is
//! confined to in each; provider names. Pure: no I/O.

use serde::{Deserialize, Serialize};

use crate::route::check_name_path;

/// One provider a restricted key may use, and the folder it is confined to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub provider: String,
    /// Canonical path, `/` for the whole provider.
    pub base_path: String,
}

/// Deepest base path, in segments: the folders on the way to it are entities of every decision
/// of a restricted credential.
pub const MAX_BASE_PATH_DEPTH: usize = 32;

/// Longest base path, in bytes.
pub const MAX_BASE_PATH_LEN: usize = 1024;

/// Checks a grant list: known shape of provider names, canonical base paths, no duplicates.
pub fn parse_grants(grants: &[Grant]) -> Result<Vec<Grant>, String> {
    let mut out: Vec<Grant> = Vec::with_capacity(grants.len());
    for g in grants {
        check_provider_name(&g.provider)?;
        let raw = if g.base_path.is_empty() {
            "/"
        } else {
            g.base_path.as_str()
        };
        if !raw.starts_with('/') {
            return Err(format!("base path '{raw}' must start with '/'"));
        }
        // Written as names, as the policies see paths (`/albums/2026 trip`), not as a URL.
        let canonical =
            check_name_path(raw).map_err(|e| format!("base path '{raw}': {}", e.message()))?;
        if canonical.len() > MAX_BASE_PATH_LEN
            || canonical.matches('/').count() > MAX_BASE_PATH_DEPTH
        {
            return Err(format!(
                "base path '{raw}' is longer than {MAX_BASE_PATH_LEN} bytes or deeper than \
                 {MAX_BASE_PATH_DEPTH} folders"
            ));
        }
        if out.iter().any(|o| o.provider == g.provider) {
            return Err(format!("provider '{}' is listed twice", g.provider));
        }
        out.push(Grant {
            provider: g.provider.clone(),
            base_path: canonical,
        });
    }
    Ok(out)
}

/// Provider names are path segments of the storage API: lower-case letters, digits, `-`, `_`.
pub fn check_provider_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '_'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid provider name (lower-case letters, digits, '-', '_')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::scope::parse_scopes;

    #[test]
    fn scopes_and_grants() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let known = s(&["read", "files:delete"]);
        assert_eq!(
            parse_scopes(&s(&["read", "files:delete", "read"]), &known).unwrap(),
            ["read", "files:delete"]
        );
        assert!(parse_scopes(&s(&[]), &known).is_err());
        assert!(parse_scopes(&s(&["root"]), &known).is_err());
        let g = |p: &str, b: &str| Grant {
            provider: p.into(),
            base_path: b.into(),
        };
        // Written as names, as the policies see them: `%` is a character of a name.
        assert_eq!(
            parse_grants(&[g("local", "/backups/50% off 2025")]).unwrap()[0].base_path,
            "/backups/50% off 2025"
        );
        assert_eq!(parse_grants(&[g("local", "")]).unwrap()[0].base_path, "/");
        assert_eq!(
            parse_grants(&[g("local", "/a/")]).unwrap()[0].base_path,
            "/a"
        );
        let deep = "/a".repeat(MAX_BASE_PATH_DEPTH);
        assert!(parse_grants(&[g("local", &deep)]).is_ok());
        assert!(parse_grants(&[g("local", &format!("{deep}/a"))]).is_err());
        assert!(
            parse_grants(&[g("local", &format!("/{}", "x".repeat(MAX_BASE_PATH_LEN)))]).is_err()
        );
        for bad in [
            g("local", "backups"),
            g("local", "/a/../b"),
            g("Local", "/"),
            g("local", "/a//b"),
        ] {
            assert!(parse_grants(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        assert!(parse_grants(&[g("local", "/a"), g("local", "/b")]).is_err());
    }
}
