//! `[tls]`: the certificate both planes serve, HTTPS-only mode, the plain listener and
//! `Strict-Transport-Security`. The files themselves are read when keygate starts (and on every
//! reload), not here, so that `check-config` runs where the key is not readable.

use super::check::{address, duration, problem, Problem};
use super::file::FileConfig;
use super::TlsConfig;

pub(super) fn tls_config(file: &FileConfig, problems: &mut Vec<Problem>) -> Option<TlsConfig> {
    let t = file.tls.as_ref()?;
    let (cert_file, key_file) = match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => (c.into(), k.into()),
        _ => {
            problem(
                problems,
                "[tls]",
                "needs cert_file and key_file (PEM files)",
            );
            return None;
        }
    };
    let redirect_to = t.redirect_to.as_deref().map(|r| {
        let r = r.trim_end_matches('/');
        if !r.starts_with("https://") || r.len() <= "https://".len() {
            problem(
                problems,
                "[tls] redirect_to",
                format!("'{r}' is not an https:// URL such as 'https://files.example.com'"),
            );
        }
        r.to_owned()
    });
    let max_age = match t.hsts_max_age.as_deref() {
        Some("0" | "0s") => None,
        raw => Some(duration(
            problems,
            "[tls] hsts_max_age",
            raw,
            std::time::Duration::from_secs(365 * 24 * 3600),
        )),
    };
    let hsts = max_age.map(|age| {
        let mut v = format!("max-age={}", age.as_secs());
        if t.hsts_include_subdomains.unwrap_or(false) {
            v.push_str("; includeSubDomains");
        }
        v
    });
    Some(TlsConfig {
        cert_file,
        key_file,
        https_only: t.https_only.unwrap_or(true),
        plain_listen: t
            .plain_listen
            .as_deref()
            .map(|raw| address(problems, "[tls] plain_listen", Some(raw), "")),
        redirect_to,
        revoke_credentials_sent_in_clear: t.revoke_credentials_sent_in_clear.unwrap_or(false),
        hsts,
        watch: t.watch.unwrap_or(true),
    })
}
