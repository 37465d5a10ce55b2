//! Turns the provider and path of a request into a location on disk that is provably inside the
//! data root. Nothing else in the crate builds a filesystem path from request input.

use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// A provider name: a folder directly under the data root.
pub fn check_provider(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadPath(format!(
            "invalid provider name '{name}'"
        )))
    }
}

/// A path inside a provider, split into checked segments.
///
/// INVARIANT: every segment is non-empty, is not `.` or `..`, and holds no `/` or NUL, so
/// joining the segments onto a directory never leaves that directory. Every other name a
/// POSIX file system accepts is kept as it is (`\`, `;`, `%`, control characters included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    segments: Vec<String>,
}

impl RelPath {
    /// Parses a path as axum hands it over (already percent-decoded once). A leading or trailing
    /// `/` is allowed; anything that could climb out of the tree is refused.
    pub fn parse(raw: &str) -> Result<RelPath, StoreError> {
        let trimmed = raw.strip_prefix('/').unwrap_or(raw);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let mut segments = Vec::new();
        if trimmed.is_empty() {
            return Ok(RelPath { segments });
        }
        for seg in trimmed.split('/') {
            let bad = seg.is_empty()
                || seg == "."
                || seg == ".."
                || seg.contains('\0')
                || seg.len() > 255;
            if bad {
                return Err(StoreError::BadPath(format!("invalid path '{raw}'")));
            }
            segments.push(seg.to_owned());
        }
        Ok(RelPath { segments })
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The path as shown to clients: `/a/b`, or `/` for the root.
    pub fn display(&self) -> String {
        if self.segments.is_empty() {
            "/".to_owned()
        } else {
            let mut out = String::new();
            for s in &self.segments {
                out.push('/');
                out.push_str(s);
            }
            out
        }
    }

    /// The path of an entry named `name` inside this folder.
    pub fn child(&self, name: &str) -> Result<RelPath, StoreError> {
        let mut one = RelPath::parse(name)?;
        if one.segments.len() != 1 {
            return Err(StoreError::BadPath(format!("invalid name '{name}'")));
        }
        let mut segments = self.segments.clone();
        segments.append(&mut one.segments);
        Ok(RelPath { segments })
    }

    pub fn name(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.segments.len() >= other.segments.len()
            && self.segments[..other.segments.len()] == other.segments[..]
    }

    pub fn join_onto(&self, base: &Path) -> PathBuf {
        let mut out = base.to_path_buf();
        for s in &self.segments {
            out.push(s);
        }
        out
    }
}

/// Refuses a location whose real path (symlinks resolved) is not under `root`. The location
/// itself may not exist yet; its nearest existing ancestor is checked.
pub async fn confine(root: &Path, location: &Path) -> Result<(), StoreError> {
    let mut probe = location.to_path_buf();
    loop {
        match tokio::fs::canonicalize(&probe).await {
            Ok(real) => {
                return if real.starts_with(root) {
                    Ok(())
                } else {
                    Err(StoreError::BadPath("path leaves the data root".to_owned()))
                };
            }
            Err(_) => {
                if !probe.pop() {
                    return Err(StoreError::BadPath("path leaves the data root".to_owned()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_escape() {
        for raw in [
            "..",
            "/../etc/passwd",
            "a/../../b",
            "a/./b",
            "a//b",
            "a/\u{0}b",
        ] {
            assert!(RelPath::parse(raw).is_err(), "{raw:?} must be refused");
        }
    }

    #[test]
    fn keeps_ordinary_names() {
        for raw in [
            "",
            "/",
            "a",
            "/a/b/",
            ".hidden/x",
            "a..b",
            "db dump.tar",
            "café/ü",
            "a\\..\\b",
            "50% off;v2\\x",
            "line\nbreak",
            "...",
        ] {
            assert!(RelPath::parse(raw).is_ok(), "{raw:?} must pass");
        }
        assert_eq!(RelPath::parse("/a/b/").unwrap().display(), "/a/b");
        let root = RelPath::parse("/").unwrap();
        assert_eq!(root.child("docs").unwrap().display(), "/docs");
        assert_eq!(
            root.child("docs")
                .unwrap()
                .child("a.txt")
                .unwrap()
                .display(),
            "/docs/a.txt"
        );
        assert!(root.child("a/b").is_err());
        assert!(root.child("..").is_err());
    }

    #[test]
    fn provider_names() {
        assert!(check_provider("local").is_ok());
        assert!(check_provider("team-2").is_ok());
        for bad in ["", "..", "Local", "a/b", "-x", "a b"] {
            assert!(check_provider(bad).is_err(), "{bad:?}");
        }
    }
}
