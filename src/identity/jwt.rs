//! The JWTs keygate signs and accepts: its own EdDSA keyring (kept in the database, the private
//! halves sealed under the pepper, rotated with `kid`), the claims of mobile, access and scoped
//! tokens, the JWKS document, and the external OIDC issuers whose tokens stand for users.
//!
//! Validation is pinned server-side: the algorithm comes from the issuer's config, never from
//! the token; `exp`, `iss` and `aud` are required, `nbf` is checked, the clock skew allowed is
//! at most 30 s, and the verifying key is looked up by `kid` in keys keygate already holds
//! (`jku`, `x5u` and embedded `jwk` headers are never read).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::clock::now_millis;
use crate::model::{Grant, Pepper};
use crate::refusal::AuthFailure;
use crate::store::{SigningKeyRow, Store, StoreError};

/// The most clock skew any token is allowed.
pub const MAX_LEEWAY: Duration = Duration::from_secs(30);

/// keygate's lifetimes, names and login limits (the `[tokens]`, `[sessions]`, `[auth]` and
/// `[[issuers]]` config).
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss` of keygate's tokens.
    pub issuer: String,
    /// `aud` of keygate's tokens.
    pub audience: String,
    pub leeway: Duration,
    pub mobile_ttl: Duration,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub scoped_default_ttl: Duration,
    pub scoped_max_ttl: Duration,
    /// Scoped tokens one user may hold at once.
    pub max_scoped_per_user: u32,
    pub session_ttl: Duration,
    /// The session cookie's name.
    pub session_cookie: String,
    /// Origins whose pages may send state-changing requests with the session cookie; empty:
    /// the request's own origin (its `Host`).
    pub allowed_origins: Vec<String>,
    /// Failed logins one account may have per 15 minutes before it is answered 429.
    pub login_failures_per_account: u32,
    /// Failed logins one client address may have per minute before it is answered 429.
    pub login_failures_per_address: u32,
    /// Password verifications that run at once (argon2id, off the request threads).
    pub password_workers: usize,
    /// Logins that may wait for a password worker; more are answered 503 at once.
    pub password_queue: usize,
    /// Accounts (and addresses) each login failure limiter tracks at most.
    pub limiter_capacity: u64,
    pub issuers: Vec<IssuerConfig>,
}

impl Default for TokenSettings {
    fn default() -> TokenSettings {
        const DAY: u64 = 86_400;
        TokenSettings {
            issuer: "keygate".to_owned(),
            audience: "keygate".to_owned(),
            leeway: MAX_LEEWAY,
            mobile_ttl: Duration::from_secs(30 * DAY),
            access_ttl: Duration::from_secs(600),
            refresh_ttl: Duration::from_secs(30 * DAY),
            scoped_default_ttl: Duration::from_secs(365 * DAY),
            scoped_max_ttl: Duration::from_secs(365 * DAY),
            max_scoped_per_user: 20,
            session_ttl: Duration::from_secs(12 * 3600),
            session_cookie: "__Host-keygate_session".to_owned(),
            allowed_origins: Vec::new(),
            login_failures_per_account: 5,
            login_failures_per_address: 10,
            password_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            password_queue: 64,
            limiter_capacity: 100_000,
            issuers: Vec::new(),
        }
    }
}

impl TokenSettings {
    /// The longest any token signed now can live: how long a rotated key keeps verifying.
    pub fn longest_ttl(&self) -> Duration {
        [self.mobile_ttl, self.access_ttl, self.scoped_max_ttl]
            .into_iter()
            .max()
            .unwrap_or_default()
            + self.leeway
    }
}

/// An external OIDC issuer whose tokens stand for keygate users.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Names the issuer in listings and logs.
    pub name: String,
    /// The `iss` its tokens carry, exactly.
    pub issuer: String,
    /// The `aud` its tokens must carry.
    pub audience: String,
    pub jwks: JwksSource,
    /// The algorithms accepted (the issuer's signing algorithm; default RS256).
    pub algorithms: Vec<Algorithm>,
    /// The claim that names the keygate user: `email` (default; the token must also say
    /// `email_verified: true`), or another claim whose values `subjects` binds to users.
    pub user_claim: String,
    /// Value of `user_claim` → the email of the keygate user it stands for. Claims other than
    /// a verified email (`sub`, say) name a user only through this table: names such as
    /// `preferred_username` can be changed by whoever controls the account at the provider.
    pub subjects: HashMap<String, String>,
    /// The workspace its users act in; unset: the user's only workspace.
    pub workspace: Option<String>,
    /// How often a JWKS URL is fetched again.
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// What kind of token a keygate JWT is (its `kind` claim; the database row agrees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JwtKind {
    Mobile,
    Access,
    Scoped,
}

/// The claims of a token keygate signs. `sub`, `userId`, `email`, `tokenId`, `iat` and `exp`
/// are the mobile token of the reference pages; the rest pins and describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub user_id: String,
    pub email: String,
    pub token_id: String,
    pub kind: JwtKind,
    /// The workspace the token acts in (its id).
    pub workspace: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<Grant>>,
}

/// A token whose signature and claims checked out.
#[derive(Debug, Clone)]
pub enum Verified {
    Own(Box<Claims>),
    External {
        /// Index into the configured issuers.
        issuer: usize,
        /// The user claim's value (an email).
        user: String,
        /// `exp`, in unix seconds.
        exp: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Key(String),
}

struct Signer {
    kid: String,
    key: EncodingKey,
}

/// The keys in force: the one that signs, every one that still verifies, and their JWKS.
struct KeySet {
    signer: Option<Signer>,
    verifiers: HashMap<String, DecodingKey>,
    jwks: Value,
}

struct External {
    config: IssuerConfig,
    validation: Validation,
    /// By `kid` (a key without one under "").
    keys: ArcSwap<HashMap<String, (DecodingKey, Option<Algorithm>)>>,
    /// Held while the JWKS is fetched: one fetch at a time per issuer, and callers that find
    /// it held wait for that fetch instead of starting another.
    fetch: tokio::sync::Mutex<FetchState>,
}

/// When an issuer's JWKS was last asked for, and how many asks in a row failed.
#[derive(Debug, Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    failures: u32,
}

impl FetchState {
    /// The shortest wait before the next fetch an unknown `kid` may start: the floor, doubled
    /// for each failure in a row, at most five minutes. It counts from the last attempt,
    /// whether or not it succeeded.
    fn floor(&self) -> Duration {
        let backoff = RELOAD_AT_MOST_EVERY.saturating_mul(1 << self.failures.min(5));
        backoff.min(Duration::from_secs(300))
    }

    fn due(&self, interval: Duration) -> bool {
        self.last_attempt
            .is_none_or(|at| at.elapsed() >= interval.max(self.floor()))
    }
}

/// Largest JWKS document read from an issuer.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub struct Tokens {
    pub settings: TokenSettings,
    store: Store,
    seal: [u8; 32],
    keys: ArcSwap<KeySet>,
    keys_loaded: Mutex<Instant>,
    own: Validation,
    issuers: Vec<External>,
    http: reqwest::Client,
    metrics: Option<Arc<crate::telemetry::Metrics>>,
}

/// At most one reload of keys (own or an issuer's) per this interval on an unknown `kid`.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(10);

fn validation(
    algorithms: &[Algorithm],
    issuer: &str,
    audience: &str,
    leeway: Duration,
) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms.to_vec();
    v.leeway = leeway.min(MAX_LEEWAY).as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v
}

fn failure(e: &jsonwebtoken::errors::Error) -> AuthFailure {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthFailure::Malformed,
        _ => AuthFailure::Invalid,
    }
}

/// The `iss` of a token, read before verification only to choose the issuer whose pinned
/// settings then verify it.
pub fn peek_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

impl Tokens {
    /// Loads the keyring (creating the first signing key on first start) and the external
    /// issuers' key sets. An issuer whose JWKS file is unreadable stops the start; a JWKS URL
    /// that does not answer yet is retried, and its tokens are refused meanwhile.
    pub async fn open(
        store: Store,
        pepper: &Pepper,
        settings: TokenSettings,
    ) -> Result<Tokens, TokenError> {
        let seal = pepper.hash("keygate signing-key seal v1");
        let issuers = settings
            .issuers
            .iter()
            .map(|c| External {
                validation: validation(&c.algorithms, &c.issuer, &c.audience, settings.leeway),
                config: c.clone(),
                keys: ArcSwap::from_pointee(HashMap::new()),
                fetch: tokio::sync::Mutex::new(FetchState::default()),
            })
            .collect();
        let tokens = Tokens {
            own: validation(
                &[Algorithm::EdDSA],
                &settings.issuer,
                &settings.audience,
                settings.leeway,
            ),
            settings,
            store,
            seal,
            keys: ArcSwap::from_pointee(KeySet {
                signer: None,
                verifiers: HashMap::new(),
                jwks: json!({"keys": []}),
            }),
            keys_loaded: Mutex::new(Instant::now()),
            issuers,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| TokenError::Key(format!("cannot build the JWKS client: {e}")))?,
            metrics: None,
        };
        if !tokens
            .store
            .signing_keys()
            .await?
            .iter()
            .any(|k| k.rotated_at.is_none())
        {
            tokens.add_key().await?;
            tracing::info!("created the first token signing key");
        }
        tokens.reload_keys().await?;
        for i in 0..tokens.issuers.len() {
            let mut state = tokens.issuers[i].fetch.lock().await;
            state.last_attempt = Some(Instant::now());
            let fetched = tokens.fetch_issuer_keys(i).await;
            if fetched.is_err() {
                state.failures += 1;
            }
            drop(state);
            if let Err(e) = fetched {
                match &tokens.issuers[i].config.jwks {
                    JwksSource::File(_) => return Err(e),
                    JwksSource::Url(_) => {
                        tracing::warn!(issuer = %tokens.issuers[i].config.name, error = %e, "cannot load the issuer's JWKS yet; its tokens are refused until it loads")
                    }
                }
            }
        }
        Ok(tokens)
    }

    /// Generates a signing key, seals it and makes it the one that signs; the keys it
    /// replaces keep verifying for as long as a token they signed can live.
    pub async fn add_key(&self) -> Result<String, TokenError> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = key
            .to_pkcs8_der()
            .map_err(|e| TokenError::Key(format!("cannot encode the signing key: {e}")))?;
        let kid = uuid::Uuid::now_v7().simple().to_string();
        let row = SigningKeyRow {
            public_key: URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
            sealed_key: self.seal(&kid, der.as_bytes())?,
            kid: kid.clone(),
            alg: "EdDSA".to_owned(),
            created_at: now_millis(),
            rotated_at: None,
            retire_at: None,
        };
        let retire_after = self.settings.longest_ttl().as_millis() as i64;
        self.store.add_signing_key(&row, retire_after).await?;
        self.reload_keys().await?;
        Ok(kid)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new((&self.seal).into())
    }

    fn seal(&self, kid: &str, secret: &[u8]) -> Result<String, TokenError> {
        use rand::RngCore;
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: secret,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| TokenError::Key("cannot seal the signing key".to_owned()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    fn unseal(&self, kid: &str, sealed: &str) -> Result<Vec<u8>, TokenError> {
        let unsealable = || {
            TokenError::Key(format!(
                "signing key {kid} cannot be unsealed: it was sealed under another pepper, or altered"
            ))
        };
        let bytes = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| unsealable())?;
        if bytes.len() < 12 {
            return Err(unsealable());
        }
        let (nonce, sealed) = bytes.split_at(12);
        self.cipher()
            .decrypt(
                nonce.into(),
                Payload {
                    msg: sealed,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| unsealable())
    }

    /// Reads the keyring again (other instances and `keygate tokens rotate-key` change it).
    pub async fn reload_keys(&self) -> Result<(), TokenError> {
        let rows = self.store.signing_keys().await?;
        let mut verifiers = HashMap::new();
        let mut jwks = Vec::new();
        let mut signer = None;
        for row in &rows {
            if row.alg != "EdDSA" {
                continue;
            }
            let key = DecodingKey::from_ed_components(&row.public_key)
                .map_err(|e| TokenError::Key(format!("signing key {} is corrupt: {e}", row.kid)))?;
            verifiers.insert(row.kid.clone(), key);
            jwks.push(json!({"kty": "OKP", "crv": "Ed25519", "x": row.public_key,
                "kid": row.kid, "alg": "EdDSA", "use": "sig"}));
            if signer.is_none() && row.rotated_at.is_none() {
                let der = self.unseal(&row.kid, &row.sealed_key)?;
                signer = Some(Signer {
                    kid: row.kid.clone(),
                    key: EncodingKey::from_ed_der(&der),
                });
            }
        }
        self.keys.store(Arc::new(KeySet {
            signer,
            verifiers,
            jwks: json!({ "keys": jwks }),
        }));
        *self.keys_loaded.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(())
    }

    /// The public keys, as published at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        self.keys.load().jwks.clone()
    }

    /// The `kid` of the key that signs now.
    pub fn signing_kid(&self) -> Option<String> {
        self.keys.load().signer.as_ref().map(|s| s.kid.clone())
    }

    /// Signs `claims` with the current key.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let keys = self.keys.load();
        let signer = keys
            .signer
            .as_ref()
            .ok_or_else(|| TokenError::Key("no signing key is in force".to_owned()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.kid.clone());
        jsonwebtoken::encode(&header, claims, &signer.key)
            .map_err(|e| TokenError::Key(format!("cannot sign a token: {e}")))
    }

    /// Claims for a token of `kind` issued now, living `ttl`.
    #[allow(clippy::too_many_arguments)]
    pub fn claims(
        &self,
        kind: JwtKind,
        token_id: &str,
        user_id: &str,
        email: &str,
        workspace_id: &str,
        expires_at_ms: i64,
    ) -> Claims {
        let now = now_millis() / 1000;
        Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: user_id.to_owned(),
            user_id: user_id.to_owned(),
            email: email.to_owned(),
            token_id: token_id.to_owned(),
            kind,
            workspace: workspace_id.to_owned(),
            iat: now,
            nbf: now,
            exp: expires_at_ms / 1000,
            scopes: None,
            providers: None,
        }
    }

    /// Verifies a JWT: keygate's own, or a configured issuer's.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| failure(&e))?;
        let iss = peek_issuer(token).ok_or(AuthFailure::Malformed)?;
        if iss == self.settings.issuer {
            let kid = header.kid.as_deref().ok_or(AuthFailure::Invalid)?;
            if !self.keys.load().verifiers.contains_key(kid) && self.reload_due() {
                if let Err(e) = self.reload_keys().await {
                    tracing::warn!(error = %e, "cannot reload the signing keys");
                }
            }
            let keys = self.keys.load();
            let key = keys.verifiers.get(kid).ok_or(AuthFailure::Invalid)?;
            return jsonwebtoken::decode::<Claims>(token, key, &self.own)
                .map(|d| Verified::Own(Box::new(d.claims)))
                .map_err(|e| failure(&e));
        }
        let Some(index) = self.issuers.iter().position(|i| i.config.issuer == iss) else {
            return Err(AuthFailure::Invalid);
        };
        let issuer = &self.issuers[index];
        let kid = header.kid.clone().unwrap_or_default();
        if !issuer.keys.load().contains_key(&kid) {
            self.refetch_on_unknown_kid(index).await;
        }
        let keys = issuer.keys.load();
        let (key, alg) = match keys.get(&kid) {
            Some(k) => k,
            // A token without `kid` is accepted only when the issuer has exactly one key.
            None if header.kid.is_none() && keys.len() == 1 => {
                keys.values().next().ok_or(AuthFailure::Invalid)?
            }
            None => return Err(AuthFailure::Invalid),
        };
        if alg.is_some_and(|a| a != header.alg) {
            return Err(AuthFailure::Invalid);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &issuer.validation)
            .map_err(|e| failure(&e))?;
        let named = data
            .claims
            .get(&issuer.config.user_claim)
            .and_then(Value::as_str)
            .ok_or(AuthFailure::Invalid)?;
        let user = if issuer.config.user_claim == "email" {
            // An address the provider has not verified proves nothing about who holds it.
            let verified = match data.claims.get("email_verified") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => s == "true",
                _ => false,
            };
            if !verified {
                return Err(AuthFailure::Invalid);
            }
            named.to_owned()
        } else {
            issuer
                .config
                .subjects
                .get(named)
                .cloned()
                .ok_or(AuthFailure::Invalid)?
        };
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(AuthFailure::Invalid)?;
        Ok(Verified::External {
            issuer: index,
            user,
            exp,
        })
    }

    fn reload_due(&self) -> bool {
        let mut last = self.keys_loaded.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= RELOAD_AT_MOST_EVERY {
            *last = Instant::now();
            true
        } else {
            false
        }
    }

    pub fn issuer(&self, index: usize) -> &IssuerConfig {
        &self.issuers[index].config
    }

    /// Counts fetches in the metrics, when the server gave them.
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::Metrics>) -> Tokens {
        self.metrics = Some(metrics);
        self
    }

    fn count_fetch(&self, result: &str) {
        if let Some(m) = &self.metrics {
            m.jwks_fetches.with_label_values(&[result]).inc();
        }
    }

    /// A token named a `kid` the issuer's key set lacks: the issuer may have rotated. Fetches
    /// the set again, but one fetch at a time (callers that arrive meanwhile wait for it, up
    /// to the fetch's own timeout), and never sooner than the floor after the last attempt,
    /// successful or not, doubled for each failure in a row: tokens with made-up `kid`s
    /// cannot turn keygate into an amplifier against the identity provider.
    async fn refetch_on_unknown_kid(&self, index: usize) {
        let issuer = &self.issuers[index];
        let mut state =
            match tokio::time::timeout(Duration::from_secs(11), issuer.fetch.lock()).await {
                Ok(state) => state,
                Err(_) => return,
            };
        if !state.due(Duration::ZERO) {
            self.count_fetch("skipped");
            return;
        }
        self.fetch_locked(index, &mut state).await;
    }

    /// Fetches while holding the issuer's fetch lock; records the attempt first.
    async fn fetch_locked(&self, index: usize, state: &mut FetchState) {
        let issuer = &self.issuers[index];
        state.last_attempt = Some(Instant::now());
        match self.fetch_issuer_keys(index).await {
            Ok(()) => {
                state.failures = 0;
                self.count_fetch("ok");
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                self.count_fetch("error");
                tracing::warn!(issuer = %issuer.config.name, error = %e, failures = state.failures, "cannot fetch the issuer's JWKS");
            }
        }
    }

    /// GETs a JWKS document, reading at most [`MAX_JWKS_BYTES`] of it.
    async fn fetch_bounded(&self, url: &str) -> Result<String, TokenError> {
        let failed = |e: String| TokenError::Key(format!("cannot fetch the JWKS: {e}"));
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| failed(e.to_string()))?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(failed(format!(
                    "the document exceeds {MAX_JWKS_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| failed("the document is not UTF-8".to_owned()))
    }

    /// Loads (again) an issuer's JWKS from its file or URL.
    pub async fn fetch_issuer_keys(&self, index: usize) -> Result<(), TokenError> {
        let issuer = &self.issuers[index];
        let text = match &issuer.config.jwks {
            JwksSource::File(path) => std::fs::read_to_string(path).map_err(|e| {
                TokenError::Key(format!("cannot read the JWKS file {}: {e}", path.display()))
            })?,
            JwksSource::Url(url) => self.fetch_bounded(url).await?,
        };
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| TokenError::Key(format!("the JWKS is not valid: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // Symmetric keys are never accepted from a key set: anyone holding the set could sign.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(jwk.common.key_id.clone().unwrap_or_default(), (key, alg));
                }
                Err(e) => {
                    tracing::warn!(issuer = %issuer.config.name, error = %e, "a key of the issuer's JWKS is skipped")
                }
            }
        }
        tracing::info!(issuer = %issuer.config.name, keys = keys.len(), "issuer keys loaded");
        issuer.keys.store(Arc::new(keys));
        Ok(())
    }

    /// Refreshes the key sets that are due: own keys (another instance may have rotated) and
    /// issuers fetched by URL.
    pub async fn refresh(&self) {
        if self.reload_due() {
            if let Err(e) = self.reload_keys().await {
                tracing::warn!(error = %e, "cannot reload the signing keys");
            }
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            if !matches!(issuer.config.jwks, JwksSource::Url(_)) {
                continue;
            }
            // A fetch in progress (for an unknown kid) does this one's work.
            let Ok(mut state) = issuer.fetch.try_lock() else {
                continue;
            };
            if state.due(issuer.config.refresh_interval) {
                self.fetch_locked(i, &mut state).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuer_is_read_only_from_a_three_part_token() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://idp.example"}"#);
        assert_eq!(
            peek_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://idp.example")
        );
        assert_eq!(peek_issuer(&format!("e30.{payload}")), None);
        assert_eq!(peek_issuer(&format!("e30.{payload}.a.b")), None);
        assert_eq!(peek_issuer("e30.!!!.sig"), None);
    }

    #[test]
    fn validation_is_pinned() {
        let v = validation(
            &[Algorithm::EdDSA],
            "keygate",
            "keygate",
            Duration::from_secs(600),
        );
        assert_eq!(v.algorithms, vec![Algorithm::EdDSA]);
        assert_eq!(v.leeway, 30, "skew is capped at 30 s");
        assert!(v.validate_nbf && v.validate_exp && v.validate_aud);
        for claim in ["exp", "iss", "aud"] {
            assert!(v.required_spec_claims.contains(claim), "{claim}");
        }
    }
}
