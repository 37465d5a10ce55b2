//! Secrets in the config: given inline, in a file, or generated on first start. Never printed.

use std::fmt;
use std::path::PathBuf;

/// A secret given inline or in a file.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(String),
    File(PathBuf),
    /// A file created with a random secret if it does not exist yet.
    Generated(PathBuf),
    /// Not configured, and nothing sensible to fall back on; says what to set.
    Missing(&'static str),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(…)"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Generated(p) => write!(f, "Generated({})", p.display()),
            SecretSource::Missing(why) => write!(f, "Missing({why})"),
        }
    }
}

impl SecretSource {
    /// Reads the secret (creating a generated one, readable by its owner only).
    pub fn load(&self) -> std::io::Result<String> {
        match self {
            SecretSource::Missing(why) => {
                Err(std::io::Error::new(std::io::ErrorKind::NotFound, *why))
            }
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File(p) => Ok(std::fs::read_to_string(p)?.trim().to_owned()),
            SecretSource::Generated(p) => match std::fs::read_to_string(p) {
                Ok(s) => Ok(s.trim().to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    use rand::RngCore;
                    let mut bytes = [0u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut bytes);
                    let secret = crate::model::hex(&bytes);
                    let mut options = std::fs::OpenOptions::new();
                    options.write(true).create_new(true);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                    use std::io::Write;
                    options.open(p)?.write_all(secret.as_bytes())?;
                    tracing::info!(path = %p.display(), "created a new key pepper");
                    Ok(secret)
                }
                Err(e) => Err(e),
            },
        }
    }
}
