//! The certificate keygate serves and the TLS settings of both planes: one [`Certificates`]
//! store behind rustls's certificate resolver, so that a reload (SIGHUP or a change of the
//! files) gives new connections the new certificate while open ones keep theirs, and a broken
//! new certificate keeps the old one and says why (log, metric, `/v1/admin/tls`).
//!
//! TLS 1.2 and 1.3 only, ALPN `http/1.1`, session resumption by tickets (TLS 1.3 and 1.2) and by
//! a bounded session cache.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde::Serialize;

use crate::clock::now_millis;
use crate::config::TlsConfig;
use crate::telemetry::Metrics;

/// TLS sessions remembered for resumption by id (each a few hundred bytes).
const SESSION_CACHE: usize = 10_000;

/// What `/v1/admin/tls` shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    pub cert_file: String,
    pub key_file: String,
    /// The served certificate's subject and `notAfter`.
    pub subject: String,
    pub not_after: String,
    /// When the served certificate was loaded.
    pub loaded_at: String,
    /// The last reload that failed since the served certificate was loaded, and why.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// The served certificate, swapped atomically on reload.
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The served certificate's names (see [`Certificates::serves`]).
    names: ArcSwap<Vec<String>>,
    /// Held across a whole reload, so that two reloads cannot store out of order.
    status: Mutex<CertificateStatus>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// A loaded certificate with what is shown of it.
struct Loaded {
    key: Arc<CertifiedKey>,
    subject: String,
    not_after: i64,
    /// Its subject alternative names: DNS names (lower case, maybe `*.` wildcards) and
    /// addresses.
    names: Vec<String>,
}

fn format_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn format_millis(ms: i64) -> String {
    format_unix(ms / 1000)
}

/// A certificate chain and its private key read from PEM files, checked to belong together:
/// the chain (leaf first), the key, and both as rustls's signing pair. For the served
/// certificate and for a client certificate to the backend alike.
pub struct PemPair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub certified: CertifiedKey,
}

pub fn read_pem_pair(cert_file: &Path, key_file: &Path) -> Result<PemPair, String> {
    let cert_pem = std::fs::read(cert_file)
        .map_err(|e| format!("cannot read {}: {e}", cert_file.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert_file.display()));
    }
    let key_pem =
        std::fs::read(key_file).map_err(|e| format!("cannot read {}: {e}", key_file.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{} is not PEM: {e}", key_file.display()))?
        .ok_or_else(|| format!("{} holds no private key", key_file.display()))?;
    let signer = ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: unsupported private key: {e}", key_file.display()))?;
    let certified = CertifiedKey::new(chain.clone(), signer);
    certified.keys_match().map_err(|e| {
        format!(
            "the key in {} does not belong to the certificate in {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(PemPair {
        chain,
        key,
        certified,
    })
}

/// Reads the served certificate and what is shown of it.
fn load(cert_file: &Path, key_file: &Path) -> Result<Loaded, String> {
    let PemPair {
        chain, certified, ..
    } = read_pem_pair(cert_file, key_file)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
        format!(
            "{}: the first certificate does not parse: {e}",
            cert_file.display()
        )
    })?;
    let subject = leaf.subject().to_string();
    let not_after = leaf.validity().not_after.timestamp();
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(Loaded {
        key: Arc::new(certified),
        subject,
        not_after,
        names,
    })
}

impl Certificates {
    /// Loads the certificate of `[tls]`; an error here stops keygate from starting.
    pub fn open(config: &TlsConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Certificates>> {
        let loaded =
            load(&config.cert_file, &config.key_file).map_err(|e| anyhow::anyhow!("[tls] {e}"))?;
        metrics.tls_certificate_expiry.set(loaded.not_after);
        let status = CertificateStatus {
            cert_file: config.cert_file.display().to_string(),
            key_file: config.key_file.display().to_string(),
            subject: loaded.subject,
            not_after: format_unix(loaded.not_after),
            loaded_at: format_millis(now_millis()),
            last_error: None,
            last_error_at: None,
        };
        Ok(Arc::new(Certificates {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            current: ArcSwap::new(loaded.key),
            names: ArcSwap::from_pointee(loaded.names),
            status: Mutex::new(status),
            metrics,
        }))
    }

    /// Reads the files again: on success new connections get the new certificate; on failure
    /// the served one stays and the reason is logged, counted and shown.
    pub fn reload(&self) -> Result<(), String> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match load(&self.cert_file, &self.key_file) {
            Ok(loaded) => {
                self.current.store(loaded.key);
                self.names.store(Arc::new(loaded.names));
                self.metrics.tls_certificate_expiry.set(loaded.not_after);
                self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                status.subject = loaded.subject;
                status.not_after = format_unix(loaded.not_after);
                status.loaded_at = format_millis(now_millis());
                status.last_error = None;
                status.last_error_at = None;
                tracing::info!(subject = %status.subject, not_after = %status.not_after, "TLS certificate reloaded");
                Ok(())
            }
            Err(why) => {
                self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %why, "TLS certificate not reloaded; still serving the previous one");
                status.last_error = Some(why.clone());
                status.last_error_at = Some(format_millis(now_millis()));
                Err(why)
            }
        }
    }

    /// True when the served certificate is valid for `host` (a DNS name, exactly or by a
    /// one-label wildcard, or an address).
    pub fn serves(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.names
            .load()
            .iter()
            .any(|name| match name.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => *name == host,
            })
    }

    pub fn status(&self) -> CertificateStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The folders to watch for changes (a renewal tool often replaces a symlink there).
    pub fn folders(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = [&self.cert_file, &self.key_file]
            .iter()
            .map(|f| match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        out.dedup();
        out
    }

    /// The names of the certificate and key files, to tell their changes from others'.
    pub fn file_names(&self) -> Vec<std::ffi::OsString> {
        [&self.cert_file, &self.key_file]
            .iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect()
    }

    /// The rustls configuration both planes accept with.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = ring::Ticketer::new()?;
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
