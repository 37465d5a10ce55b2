//! The file store on disk and its HTTP handlers.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::paths::{check_provider, confine, RelPath};

/// Name of the store's own folder under the data root. Provider names cannot start with a dot,
/// so no request can reach it.
const STORE_DIR: &str = ".store";

pub struct Store {
    root: PathBuf,
}

/// One entry of a listing or a search.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub name: String,
    pub path: String,
    pub kind: &'static str,
    pub size: u64,
    pub modified: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_by: Option<String>,
}

/// What the store remembers about a file beside its bytes.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileMeta {
    modified_by: Option<String>,
}

/// What the trash remembers about a deleted entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrashInfo {
    pub id: String,
    pub original_path: String,
    pub kind: String,
    pub deleted_at: u64,
    pub deleted_by: Option<String>,
}

impl Store {
    pub async fn open(root: &Path, providers: &[String]) -> anyhow::Result<Store> {
        tokio::fs::create_dir_all(root).await?;
        let root = tokio::fs::canonicalize(root).await?;
        for p in providers {
            check_provider(p)?;
            tokio::fs::create_dir_all(root.join(p)).await?;
        }
        tokio::fs::create_dir_all(root.join(STORE_DIR)).await?;
        Ok(Store { root })
    }

    /// The folder of a provider; it must exist.
    async fn provider_dir(&self, provider: &str) -> Result<PathBuf, StoreError> {
        check_provider(provider)?;
        let dir = self.root.join(provider);
        match tokio::fs::metadata(&dir).await {
            Ok(m) if m.is_dir() => Ok(dir),
            _ => Err(StoreError::NotFound(format!(
                "no provider named '{provider}'"
            ))),
        }
    }

    /// The store's own folder for a provider (`kind` is `tmp`, `meta` or `trash`).
    async fn private_dir(&self, provider: &str, kind: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join(STORE_DIR).join(provider).join(kind);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io(e, kind))?;
        Ok(dir)
    }

    /// Where `path` of `provider` lives on disk, checked to stay inside the data root.
    pub async fn locate(&self, provider: &str, path: &RelPath) -> Result<PathBuf, StoreError> {
        let base = self.provider_dir(provider).await?;
        let location = path.join_onto(&base);
        confine(&self.root, &location).await?;
        Ok(location)
    }

    async fn meta_path(&self, provider: &str, path: &RelPath) -> Result<PathBuf, StoreError> {
        Ok(path.join_onto(&self.private_dir(provider, "meta").await?))
    }

    async fn read_meta(&self, provider: &str, path: &RelPath) -> FileMeta {
        let Ok(p) = self.meta_path(provider, path).await else {
            return FileMeta::default();
        };
        match tokio::fs::read(&p).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => FileMeta::default(),
        }
    }

    async fn write_meta(&self, provider: &str, path: &RelPath, meta: &FileMeta) {
        let result = async {
            let p = self.meta_path(provider, path).await?;
            if let Some(parent) = p.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| StoreError::io(e, "meta"))?;
            }
            let bytes = serde_json::to_vec(meta).unwrap_or_default();
            tokio::fs::write(&p, bytes)
                .await
                .map_err(|e| StoreError::io(e, "meta"))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record the modifier of a file");
        }
    }

    async fn remove_meta(&self, provider: &str, path: &RelPath) {
        if let Ok(p) = self.meta_path(provider, path).await {
            let _ = tokio::fs::remove_file(&p).await;
            let _ = tokio::fs::remove_dir_all(&p).await;
        }
    }

    async fn entry(&self, provider: &str, path: &RelPath, location: &Path) -> Option<Entry> {
        let meta = tokio::fs::symlink_metadata(location).await.ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
        let is_dir = meta.is_dir();
        let modified_by = if is_dir {
            None
        } else {
            self.read_meta(provider, path).await.modified_by
        };
        Some(Entry {
            name: path.name().unwrap_or("").to_owned(),
            path: path.display(),
            kind: if is_dir { "folder" } else { "file" },
            size: if is_dir { 0 } else { meta.len() },
            modified: mtime_secs(&meta),
            etag: (!is_dir).then(|| etag(&meta)),
            modified_by,
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mtime_secs(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A strong validator from the size and the modification time in nanoseconds.
fn etag(meta: &std::fs::Metadata) -> String {
    let nanos = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{:x}-{:x}\"", meta.len(), nanos)
}

/// A single byte range of a file of `size` bytes, from a `Range` header.
/// `Ok(None)` means "serve the whole file" (no header, or a form this store does not serve).
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, StoreError> {
    let Some(value) = header else { return Ok(None) };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec
        .split_once('-')
        .ok_or(StoreError::RangeNotSatisfiable { size })?;
    let (start, end) = (start.trim(), end.trim());
    let parse = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| StoreError::RangeNotSatisfiable { size })
    };
    let range = if start.is_empty() {
        let suffix = parse(end)?;
        if suffix == 0 || size == 0 {
            return Err(StoreError::RangeNotSatisfiable { size });
        }
        (size.saturating_sub(suffix), size - 1)
    } else {
        let first = parse(start)?;
        let last = if end.is_empty() {
            size.saturating_sub(1)
        } else {
            parse(end)?.min(size.saturating_sub(1))
        };
        if first >= size || last < first {
            return Err(StoreError::RangeNotSatisfiable { size });
        }
        (first, last)
    };
    Ok(Some(range))
}

fn temp_name() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The value of the modifier header, if it is present and printable.
fn modifier(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get(crate::MODIFIER_HEADER)?.to_str().ok()?;
    let v = v.trim();
    (!v.is_empty() && v.len() <= 256).then(|| v.to_owned())
}

/// Walks `dir` for names containing `needle` (lower-cased), at most `limit` results.
fn search_blocking(dir: &Path, base: &RelPath, needle: &str, limit: usize) -> Vec<(RelPath, bool)> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), base.clone())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in read.flatten() {
            let Ok(ft) = item.file_type() else { continue };
            if ft.is_symlink() {
                continue;
            }
            let Some(name) = item.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(child) = rel.child(&name) else {
                continue;
            };
            if name.to_lowercase().contains(needle) {
                found.push((child.clone(), ft.is_dir()));
                if found.len() >= limit {
                    return found;
                }
            }
            if ft.is_dir() {
                stack.push((item.path(), child));
            }
        }
    }
    found
}

async fn copy_tree(from: PathBuf, to: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || copy_tree_blocking(&from, &to))
        .await
        .map_err(std::io::Error::other)?
}

fn copy_tree_blocking(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir(to)?;
        for item in std::fs::read_dir(from)? {
            let item = item?;
            copy_tree_blocking(&item.path(), &to.join(item.file_name()))?;
        }
        Ok(())
    } else if meta.is_file() {
        std::fs::copy(from, to).map(|_| ())
    } else {
        Ok(())
    }
}

pub mod handlers {
    use std::collections::HashMap;
    use std::io::SeekFrom;

    use axum::body::Body;
    use axum::extract::{Path as UrlPath, Query, State};
    use axum::http::{header, HeaderMap, Method, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::Json;
    use futures_util::TryStreamExt;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    use tokio_util::io::ReaderStream;

    use super::*;
    use crate::AppState;

    type Res = Result<Response, StoreError>;

    pub async fn not_found() -> StoreError {
        StoreError::NotFound("no such endpoint".to_owned())
    }

    pub async fn download(
        State(st): State<AppState>,
        UrlPath((provider, path)): UrlPath<(String, String)>,
        headers: HeaderMap,
    ) -> Res {
        let rel = RelPath::parse(&path)?;
        let location = st.store.locate(&provider, &rel).await?;
        let mut file = tokio::fs::File::open(&location)
            .await
            .map_err(|e| StoreError::io(e, &rel.display()))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| StoreError::io(e, &rel.display()))?;
        if meta.is_dir() {
            return Err(StoreError::Conflict(format!(
                "'{}' is a folder; list it under /v1/folders",
                rel.display()
            )));
        }
        let size = meta.len();
        let tag = etag(&meta);
        if headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
        {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
        }
        let range = parse_range(
            headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
            size,
        )?;
        let (status, start, len) = match range {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            None => (StatusCode::OK, 0, size),
        };
        if start > 0 {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| StoreError::io(e, &rel.display()))?;
        }
        let body = Body::from_stream(ReaderStream::with_capacity(file.take(len), 64 * 1024));
        let mut resp = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .header(header::ETAG, tag)
            .header(header::ACCEPT_RANGES, "bytes");
        if status == StatusCode::PARTIAL_CONTENT {
            resp = resp.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", start, start + len - 1, size),
            );
        }
        resp.body(body)
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))
    }

    pub async fn upload(
        State(st): State<AppState>,
        UrlPath((provider, path)): UrlPath<(String, String)>,
        headers: HeaderMap,
        body: Body,
    ) -> Res {
        let rel = RelPath::parse(&path)?;
        if rel.is_root() {
            return Err(StoreError::BadPath(
                "an upload needs a file name".to_owned(),
            ));
        }
        let target = st.store.locate(&provider, &rel).await?;
        if tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir()) {
            return Err(StoreError::Conflict(format!(
                "'{}' is a folder",
                rel.display()
            )));
        }
        let tmp_dir = st.store.private_dir(&provider, "tmp").await?;
        let tmp = tmp_dir.join(temp_name());
        let written = write_body(&tmp, body).await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let finish = async {
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| StoreError::io(e, &rel.display()))?;
                confine(&st.store.root, parent).await?;
            }
            let existed = tokio::fs::metadata(&target).await.is_ok();
            if existed {
                // The version it replaces goes to the trash and can be restored.
                to_trash(&st, &provider, &rel, &target, &headers, true).await?;
            }
            tokio::fs::rename(&tmp, &target)
                .await
                .map_err(|e| StoreError::io(e, &rel.display()))?;
            Ok::<bool, StoreError>(existed)
        }
        .await;
        let existed = match finish {
            Ok(existed) => existed,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        st.store
            .write_meta(
                &provider,
                &rel,
                &FileMeta {
                    modified_by: modifier(&headers),
                },
            )
            .await;
        let entry = st.store.entry(&provider, &rel, &target).await;
        let status = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((status, Json(json!({"success": true, "data": entry}))).into_response())
    }

    /// Streams `body` into a new file at `tmp` and syncs it to disk.
    async fn write_body(tmp: &Path, body: Body) -> Result<(), StoreError> {
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| StoreError::io(e, "upload"))?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| StoreError::BadRequest(format!("the upload was interrupted: {e}")))?
        {
            file.write_all(&chunk)
                .await
                .map_err(|e| StoreError::io(e, "upload"))?;
        }
        file.flush()
            .await
            .map_err(|e| StoreError::io(e, "upload"))?;
        file.sync_all()
            .await
            .map_err(|e| StoreError::io(e, "upload"))
    }

    pub async fn delete_entry(
        State(st): State<AppState>,
        UrlPath((provider, path)): UrlPath<(String, String)>,
        headers: HeaderMap,
    ) -> Res {
        let rel = RelPath::parse(&path)?;
        if rel.is_root() {
            return Err(StoreError::BadPath(
                "the root of a provider cannot be deleted".to_owned(),
            ));
        }
        let location = st.store.locate(&provider, &rel).await?;
        let info = to_trash(&st, &provider, &rel, &location, &headers, false).await?;
        Ok((StatusCode::OK, Json(json!({"success": true, "data": info}))).into_response())
    }

    /// Moves a file or folder into the provider's trash, where it can be listed, restored or
    /// purged: what a delete, or a move or copy that replaces it, leaves behind. With `keep`,
    /// a file is linked into the trash and stays where it is (an upload then replaces it in
    /// one rename, so readers never see it missing).
    async fn to_trash(
        st: &AppState,
        provider: &str,
        rel: &RelPath,
        location: &std::path::Path,
        headers: &HeaderMap,
        keep: bool,
    ) -> Result<TrashInfo, StoreError> {
        let meta = tokio::fs::symlink_metadata(location)
            .await
            .map_err(|e| StoreError::io(e, &rel.display()))?;
        let id = temp_name();
        let slot = st.store.private_dir(provider, "trash").await?.join(&id);
        tokio::fs::create_dir(&slot)
            .await
            .map_err(|e| StoreError::io(e, "trash"))?;
        let info = TrashInfo {
            id: id.clone(),
            original_path: rel.display(),
            kind: if meta.is_dir() { "folder" } else { "file" }.to_owned(),
            deleted_at: now_secs(),
            deleted_by: modifier(headers),
        };
        tokio::fs::write(
            slot.join("info.json"),
            serde_json::to_vec(&info).unwrap_or_default(),
        )
        .await
        .map_err(|e| StoreError::io(e, "trash"))?;
        let moved = if keep {
            tokio::fs::hard_link(location, slot.join("item")).await
        } else {
            tokio::fs::rename(location, slot.join("item")).await
        };
        if let Err(e) = moved {
            let _ = tokio::fs::remove_dir_all(&slot).await;
            return Err(StoreError::io(e, &rel.display()));
        }
        if !keep {
            st.store.remove_meta(provider, rel).await;
        }
        Ok(info)
    }

    /// `MOVE` and `COPY`, with the destination in the `Destination` header (an absolute path
    /// `/v1/files/{provider}/{path}` or a full URL ending in one) and `Overwrite: T` to replace.
    pub async fn move_or_copy(
        State(st): State<AppState>,
        UrlPath((provider, path)): UrlPath<(String, String)>,
        method: Method,
        headers: HeaderMap,
    ) -> Res {
        let is_move = match method.as_str() {
            "MOVE" => true,
            "COPY" => false,
            _ => {
                return Ok((
                    StatusCode::METHOD_NOT_ALLOWED,
                    Json(
                        json!({"success": false, "error": {"code": "METHOD_NOT_ALLOWED",
                        "message": format!("{method} is not allowed here")}}),
                    ),
                )
                    .into_response())
            }
        };
        let rel = RelPath::parse(&path)?;
        let source = st.store.locate(&provider, &rel).await?;
        let (dest_provider, dest_rel) = parse_destination(&headers)?;
        let dest = st.store.locate(&dest_provider, &dest_rel).await?;
        if dest_rel.is_root() || rel.is_root() {
            return Err(StoreError::BadPath(
                "the root of a provider cannot be moved".to_owned(),
            ));
        }
        if dest_provider == provider && dest_rel.starts_with(&rel) {
            return Err(StoreError::Conflict(
                "cannot move or copy a folder into itself".to_owned(),
            ));
        }
        tokio::fs::symlink_metadata(&source)
            .await
            .map_err(|e| StoreError::io(e, &rel.display()))?;
        let overwrite = headers
            .get("overwrite")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"t"));
        let dest_exists = tokio::fs::symlink_metadata(&dest).await.is_ok();
        if dest_exists && !overwrite {
            return Err(StoreError::Conflict(format!(
                "'{}' already exists (send Overwrite: T to replace it)",
                dest_rel.display()
            )));
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io(e, &dest_rel.display()))?;
        }
        if dest_exists {
            // What is replaced goes to the trash, like a delete: it can be restored.
            to_trash(&st, &dest_provider, &dest_rel, &dest, &headers, false).await?;
        }
        if is_move {
            tokio::fs::rename(&source, &dest)
                .await
                .map_err(|e| StoreError::io(e, &rel.display()))?;
            if let (Ok(from), Ok(to)) = (
                st.store.meta_path(&provider, &rel).await,
                st.store.meta_path(&dest_provider, &dest_rel).await,
            ) {
                if let Some(parent) = to.parent() {
                    let _ = tokio::fs::create_dir_all(parent).await;
                }
                let _ = tokio::fs::rename(from, to).await;
            }
        } else {
            copy_tree(source, dest.clone())
                .await
                .map_err(|e| StoreError::io(e, &dest_rel.display()))?;
        }
        if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.is_file()) {
            st.store
                .write_meta(
                    &dest_provider,
                    &dest_rel,
                    &FileMeta {
                        modified_by: modifier(&headers),
                    },
                )
                .await;
        }
        let entry = st.store.entry(&dest_provider, &dest_rel, &dest).await;
        let status = if dest_exists {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((status, Json(json!({"success": true, "data": entry}))).into_response())
    }

    /// Reads `Destination: [scheme://authority]/v1/files/{provider}/{path}`.
    fn parse_destination(headers: &HeaderMap) -> Result<(String, RelPath), StoreError> {
        let raw = headers
            .get("destination")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| StoreError::BadRequest("a Destination header is required".to_owned()))?;
        let path_part = match raw.find("://") {
            Some(i) => {
                let rest = &raw[i + 3..];
                &rest[rest.find('/').unwrap_or(rest.len())..]
            }
            None => raw,
        };
        let decoded = percent_decode(path_part).ok_or_else(|| {
            StoreError::BadRequest("the Destination header is malformed".to_owned())
        })?;
        let tail = decoded.strip_prefix("/v1/files/").ok_or_else(|| {
            StoreError::BadRequest("the Destination must be a /v1/files/ path".to_owned())
        })?;
        let (provider, path) = tail.split_once('/').unwrap_or((tail, ""));
        check_provider(provider)?;
        Ok((provider.to_owned(), RelPath::parse(path)?))
    }

    fn percent_decode(s: &str) -> Option<String> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    }

    pub async fn list_root(st: State<AppState>, UrlPath(provider): UrlPath<String>) -> Res {
        list(st, provider, String::new()).await
    }

    pub async fn list_folder(
        st: State<AppState>,
        UrlPath((provider, path)): UrlPath<(String, String)>,
    ) -> Res {
        list(st, provider, path).await
    }

    async fn list(State(st): State<AppState>, provider: String, path: String) -> Res {
        let rel = RelPath::parse(&path)?;
        let location = st.store.locate(&provider, &rel).await?;
        let mut read = tokio::fs::read_dir(&location)
            .await
            .map_err(|e| StoreError::io(e, &rel.display()))?;
        let mut entries = Vec::new();
        while let Some(item) = read
            .next_entry()
            .await
            .map_err(|e| StoreError::io(e, &rel.display()))?
        {
            let Some(name) = item.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(child) = rel.child(&name) else {
                continue;
            };
            if let Some(e) = st.store.entry(&provider, &child, &item.path()).await {
                entries.push(e);
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Json(json!({"success": true, "data": {
            "provider": provider, "path": rel.display(), "entries": entries}}))
        .into_response())
    }

    pub async fn create_folder(
        State(st): State<AppState>,
        UrlPath((provider, path)): UrlPath<(String, String)>,
    ) -> Res {
        let rel = RelPath::parse(&path)?;
        let location = st.store.locate(&provider, &rel).await?;
        if let Some(parent) = location.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io(e, &rel.display()))?;
        }
        tokio::fs::create_dir(&location)
            .await
            .map_err(|e| StoreError::io(e, &rel.display()))?;
        let entry = st.store.entry(&provider, &rel, &location).await;
        Ok((
            StatusCode::CREATED,
            Json(json!({"success": true, "data": entry})),
        )
            .into_response())
    }

    pub async fn search_root(
        st: State<AppState>,
        UrlPath(provider): UrlPath<String>,
        q: Query<HashMap<String, String>>,
    ) -> Res {
        search_in(st, provider, String::new(), q).await
    }

    pub async fn search(
        st: State<AppState>,
        UrlPath((provider, path)): UrlPath<(String, String)>,
        q: Query<HashMap<String, String>>,
    ) -> Res {
        search_in(st, provider, path, q).await
    }

    const SEARCH_LIMIT: usize = 1000;

    async fn search_in(
        State(st): State<AppState>,
        provider: String,
        path: String,
        Query(q): Query<HashMap<String, String>>,
    ) -> Res {
        let needle = q
            .get("q")
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| StoreError::BadRequest("a search needs ?q=NAME".to_owned()))?;
        let rel = RelPath::parse(&path)?;
        let location = st.store.locate(&provider, &rel).await?;
        let base = rel.clone();
        let found = tokio::task::spawn_blocking(move || {
            search_blocking(&location, &base, &needle, SEARCH_LIMIT)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let mut entries = Vec::with_capacity(found.len());
        for (child, _) in found {
            let loc = st.store.locate(&provider, &child).await?;
            if let Some(e) = st.store.entry(&provider, &child, &loc).await {
                entries.push(e);
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Json(json!({"success": true, "data": {"entries": entries,
            "truncated": entries.len() >= SEARCH_LIMIT}}))
        .into_response())
    }

    pub async fn list_trash(State(st): State<AppState>, UrlPath(provider): UrlPath<String>) -> Res {
        st.store.provider_dir(&provider).await?;
        let dir = st.store.private_dir(&provider, "trash").await?;
        let mut read = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| StoreError::io(e, "trash"))?;
        let mut items = Vec::new();
        while let Some(item) = read
            .next_entry()
            .await
            .map_err(|e| StoreError::io(e, "trash"))?
        {
            if let Ok(bytes) = tokio::fs::read(item.path().join("info.json")).await {
                if let Ok(info) = serde_json::from_slice::<TrashInfo>(&bytes) {
                    items.push(info);
                }
            }
        }
        items.sort_by(|a, b| b.deleted_at.cmp(&a.deleted_at).then(a.id.cmp(&b.id)));
        Ok(Json(json!({"success": true, "data": {"entries": items}})).into_response())
    }

    fn check_trash_id(id: &str) -> Result<(), StoreError> {
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("no trash entry '{id}'")))
        }
    }

    pub async fn restore_trash(
        State(st): State<AppState>,
        UrlPath((provider, id)): UrlPath<(String, String)>,
    ) -> Res {
        check_trash_id(&id)?;
        st.store.provider_dir(&provider).await?;
        let slot = st.store.private_dir(&provider, "trash").await?.join(&id);
        let bytes = tokio::fs::read(slot.join("info.json"))
            .await
            .map_err(|_| StoreError::NotFound(format!("no trash entry '{id}'")))?;
        let info: TrashInfo =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let rel = RelPath::parse(&info.original_path)?;
        let target = st.store.locate(&provider, &rel).await?;
        if tokio::fs::symlink_metadata(&target).await.is_ok() {
            return Err(StoreError::Conflict(format!(
                "'{}' exists again; move it away before restoring",
                rel.display()
            )));
        }
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io(e, &rel.display()))?;
        }
        tokio::fs::rename(slot.join("item"), &target)
            .await
            .map_err(|e| StoreError::io(e, &rel.display()))?;
        let _ = tokio::fs::remove_dir_all(&slot).await;
        let entry = st.store.entry(&provider, &rel, &target).await;
        Ok(Json(json!({"success": true, "data": entry})).into_response())
    }

    pub async fn purge_trash(
        State(st): State<AppState>,
        UrlPath((provider, id)): UrlPath<(String, String)>,
    ) -> Res {
        check_trash_id(&id)?;
        st.store.provider_dir(&provider).await?;
        let slot = st.store.private_dir(&provider, "trash").await?.join(&id);
        tokio::fs::remove_dir_all(&slot)
            .await
            .map_err(|_| StoreError::NotFound(format!("no trash entry '{id}'")))?;
        Ok(Json(json!({"success": true})).into_response())
    }

    pub async fn empty_trash(
        State(st): State<AppState>,
        UrlPath(provider): UrlPath<String>,
    ) -> Res {
        st.store.provider_dir(&provider).await?;
        let dir = st.store.private_dir(&provider, "trash").await?;
        let mut read = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| StoreError::io(e, "trash"))?;
        let mut purged = 0u64;
        while let Some(item) = read
            .next_entry()
            .await
            .map_err(|e| StoreError::io(e, "trash"))?
        {
            tokio::fs::remove_dir_all(item.path())
                .await
                .map_err(|e| StoreError::io(e, "trash"))?;
            purged += 1;
        }
        Ok(Json(json!({"success": true, "data": {"purged": purged}})).into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-3"), 10).unwrap(), Some((0, 3)));
        assert_eq!(parse_range(Some("bytes=5-"), 10).unwrap(), Some((5, 9)));
        assert_eq!(parse_range(Some("bytes=-4"), 10).unwrap(), Some((6, 9)));
        assert_eq!(parse_range(Some("bytes=2-100"), 10).unwrap(), Some((2, 9)));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10).unwrap(), None);
        assert!(parse_range(Some("bytes=10-"), 10).is_err());
        assert!(parse_range(Some("bytes=5-2"), 10).is_err());
        assert!(parse_range(Some("bytes=x-2"), 10).is_err());
    }
}
