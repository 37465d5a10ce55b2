//! Stage 3, identity: a request's credentials → [`Principal`], with its caches. Both planes
//! come in through one door, [`Identity::authenticate`] (`authenticate.rs`): the address gate,
//! the credential headers (`credentials.rs`), the CSRF check of a session, the lookup, and the
//! count of every failure. JWTs are verified in `jwt.rs`.
//!
//! May import: `principal`, `model`, `store`, `ratelimit::failures`, `refusal`, `telemetry`,
//! `usage`, `clock`, `background`. Never `policy`, `manage`, `proxy` or `control`.
//!
//! An API key is checked for shape and checksum first (no database work for garbage), then
//! found through a moka cache keyed by its keyed hash, and on a miss by one indexed lookup of
//! that hash, compared in constant time. Unknown keys go to a bounded negative cache. Addresses
//! that keep failing are answered 429 before any database work.
//!
//! Revocation is immediate and race-free through generations: every key row carries one, bumped
//! by each change that must retire cached copies. The in-memory table `generations` holds the
//! newest generation seen per key; a cached principal is used only while its generation equals
//! the table's, and a lookup that raced a revoke is retried. The table is a bounded cache: when
//! it evicts a key, that key's cached principals no longer match and are looked up again (it
//! fails closed, never open).
//!
//! Tokens go the same way. A JWT's signature and claims are verified once per cache fill
//! (`jwt.rs`); its database row (found by the `tokenId` claim) says whether it was revoked
//! and carries the generation, so a remote revoke refuses the next request. A session cookie is
//! found by its keyed hash, like a key. An external issuer's token is recorded as a row the
//! first time it is seen, so it is listed and revocable like keygate's own.

mod authenticate;
pub mod client;
pub mod credentials;
pub mod jwt;

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use subtle::ConstantTimeEq;

pub use authenticate::Presented;
use credentials::{CredentialRules, Credentials};
use jwt::{Tokens, Verified};

use crate::clock::now_millis;
use crate::model::{hex, KeyStyle, Pepper};
use crate::principal::Principal;
use crate::ratelimit::failures::AddressGate;
use crate::refusal::{AuthFailure, Refusal};
use crate::store::{KeyRecord, NewToken, Store, StoreError, TokenKind, TokenRecord};
use crate::telemetry::Metrics;
use crate::usage::UsageRecorder;

/// What a lookup found behind a credential.
struct Found {
    principal: Principal,
    revoked: bool,
    /// Note the use on the token's row (tokens have no usage counters).
    touch: bool,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub style: KeyStyle,
    /// The session cookie's name; `None`: cookies are not credentials.
    pub session_cookie: Option<String>,
    /// Origins allowed to send state-changing requests with the session cookie.
    pub allowed_origins: Vec<String>,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    /// Failed authentications per address and minute before the address is answered 429.
    pub failures_per_minute: u32,
    /// Requests refused 403 per address and minute before the address is answered 429.
    pub forbidden_per_minute: u32,
    /// Addresses the failure limiters track at most.
    pub limiter_capacity: u64,
    /// Redis, when the failure limiters are shared by every instance.
    pub shared_limits: Option<Arc<crate::ratelimit::shared::Shared>>,
}

pub struct Identity {
    store: Store,
    rules: CredentialRules,
    pepper: Pepper,
    /// Verifies JWTs; `None`: JWTs are not accepted.
    tokens: Option<Arc<Tokens>>,
    principals: Cache<[u8; 32], Arc<Principal>>,
    unknown: Cache<[u8; 32], ()>,
    generations: Cache<String, i64>,
    gate: AddressGate,
    shared_limits: Option<Arc<crate::ratelimit::shared::Shared>>,
    usage: Arc<UsageRecorder>,
    metrics: Arc<Metrics>,
}

impl Identity {
    /// Applies the caches' deferred bookkeeping now (see `Keygate::run_pending_cache_tasks`).
    pub fn run_pending_cache_tasks(&self) {
        self.principals.run_pending_tasks();
        self.unknown.run_pending_tasks();
        self.generations.run_pending_tasks();
        self.gate.run_pending_tasks();
    }

    pub fn new(
        store: Store,
        pepper: Pepper,
        config: &IdentityConfig,
        tokens: Option<Arc<Tokens>>,
        usage: Arc<UsageRecorder>,
        metrics: Arc<Metrics>,
    ) -> Identity {
        Identity {
            store,
            rules: CredentialRules {
                style: config.style.clone(),
                session_cookie: config.session_cookie.clone(),
                allowed_origins: config.allowed_origins.clone(),
            },
            pepper,
            tokens,
            principals: Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(config.cache_ttl)
                .build(),
            unknown: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            generations: Cache::builder().max_capacity(1_000_000).build(),
            gate: AddressGate::new(
                config.failures_per_minute,
                config.forbidden_per_minute,
                config.limiter_capacity,
                config.shared_limits.clone(),
                metrics.clone(),
            ),
            shared_limits: config.shared_limits.clone(),
            usage,
            metrics,
        }
    }

    pub fn style(&self) -> &KeyStyle {
        &self.rules.style
    }

    /// Where credentials are looked for.
    pub fn rules(&self) -> &CredentialRules {
        &self.rules
    }

    pub fn tokens(&self) -> Option<&Arc<Tokens>> {
        self.tokens.as_ref()
    }

    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// The per-address gate both planes pass before any credential is looked at.
    pub fn gate(&self) -> &AddressGate {
        &self.gate
    }

    /// Redis, when the limits are shared by every instance.
    pub fn shared_limits(&self) -> Option<Arc<crate::ratelimit::shared::Shared>> {
        self.shared_limits.clone()
    }

    /// The principal behind a credential, from the cache or the database. Counts nothing:
    /// callers come through [`Identity::authenticate`], which does.
    pub async fn principal_for(&self, creds: &Credentials) -> Result<Arc<Principal>, Refusal> {
        let secret = match creds {
            Credentials::ApiKey(key) => {
                if !self.rules.style.is_well_formed(key) {
                    return Err(Refusal::Unauthorized(AuthFailure::Malformed));
                }
                key
            }
            Credentials::Jwt(token) | Credentials::Session(token) => token,
        };
        let hash = self.pepper.hash(secret);
        if let Some(p) = self.principals.get(&hash) {
            if self.generations.get(&p.key_id) == Some(p.generation) {
                self.metrics.identity_hit.inc();
                return self.admit(p);
            }
            self.principals.invalidate(&hash);
        }
        if self.unknown.contains_key(&hash) {
            self.metrics.identity_negative_hit.inc();
            return Err(Refusal::Unauthorized(AuthFailure::Unknown));
        }
        self.metrics.identity_miss.inc();
        let verified = match creds {
            Credentials::Jwt(token) => {
                let tokens = self
                    .tokens
                    .as_ref()
                    .ok_or(Refusal::Unauthorized(AuthFailure::Invalid))?;
                Some(tokens.verify(token).await.map_err(Refusal::Unauthorized)?)
            }
            _ => None,
        };
        // A lookup that raced a change (the table moved past what we read) is read again.
        for _ in 0..3 {
            self.metrics.identity_db_lookups.inc();
            let Some(found) = self.lookup(creds, &hash, verified.as_ref()).await? else {
                self.unknown.insert(hash, ());
                return Err(Refusal::Unauthorized(AuthFailure::Unknown));
            };
            if found.revoked {
                return Err(Refusal::Unauthorized(AuthFailure::Revoked));
            }
            let p = found.principal;
            let current = self.observe(&p.key_id, p.generation);
            if current != p.generation {
                continue;
            }
            if found.touch {
                let store = self.store.clone();
                let id = p.key_id.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.touch_token(&id, now_millis()).await {
                        tracing::debug!(error = %e, "cannot note a token's use");
                    }
                });
            }
            let principal = Arc::new(p);
            self.principals.insert(hash, principal.clone());
            return self.admit(principal);
        }
        Err(Refusal::Unavailable(
            "the credential is changing; try again".into(),
        ))
    }

    /// Reads what stands behind a credential from the database; `None` when nothing does.
    async fn lookup(
        &self,
        creds: &Credentials,
        hash: &[u8; 32],
        verified: Option<&Verified>,
    ) -> Result<Option<Found>, Refusal> {
        let unavailable = |e: StoreError| {
            tracing::error!(error = %e, "identity lookup failed");
            Refusal::Unavailable("keygate cannot check credentials right now".into())
        };
        let hex = hex(hash);
        match (creds, verified) {
            (Credentials::ApiKey(_), _) => {
                let Some((record, stored)) =
                    self.store.key_by_hash(&hex).await.map_err(unavailable)?
                else {
                    return Ok(None);
                };
                if !bool::from(stored.as_bytes().ct_eq(hex.as_bytes())) {
                    return Ok(None);
                }
                Ok(Some(Found {
                    revoked: record.revoked_at.is_some(),
                    principal: self.principal(record),
                    touch: false,
                }))
            }
            (Credentials::Session(_), _) => {
                let Some((record, stored)) = self
                    .store
                    .token_by_secret(&hex)
                    .await
                    .map_err(unavailable)?
                else {
                    return Ok(None);
                };
                if !bool::from(stored.as_bytes().ct_eq(hex.as_bytes()))
                    || record.kind != TokenKind::Session
                {
                    return Ok(None);
                }
                Ok(Some(self.found_token(record)))
            }
            (Credentials::Jwt(_), Some(Verified::Own(claims))) => {
                let record = match self.store.token(&claims.token_id).await {
                    Ok(r) => r,
                    Err(StoreError::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(unavailable(e)),
                };
                let kind_matches = matches!(
                    (claims.kind, record.kind),
                    (jwt::JwtKind::Mobile, TokenKind::Mobile)
                        | (jwt::JwtKind::Access, TokenKind::Access)
                        | (jwt::JwtKind::Scoped, TokenKind::Scoped)
                );
                if !kind_matches
                    || record.user_id != claims.sub
                    || record.workspace_id != claims.workspace
                {
                    return Ok(None);
                }
                Ok(Some(self.found_token(record)))
            }
            (Credentials::Jwt(_), Some(Verified::External { issuer, user, exp })) => self
                .external(*issuer, user, *exp, hash)
                .await
                .map_err(unavailable),
            (Credentials::Jwt(_), None) => Ok(None),
        }
    }

    fn found_token(&self, record: TokenRecord) -> Found {
        Found {
            revoked: record.revoked_at.is_some() || record.used_at.is_some(),
            principal: Principal::from_token(record, Arc::default()),
            touch: true,
        }
    }

    /// The row of an external issuer's token, recorded the first time it is seen (the same id
    /// on every instance, so recording twice is harmless).
    async fn external(
        &self,
        issuer: usize,
        user: &str,
        exp: i64,
        hash: &[u8; 32],
    ) -> Result<Option<Found>, StoreError> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let config = tokens.issuer(issuer);
        let user = match self.store.user_by_email(user).await {
            Ok(u) => u,
            Err(StoreError::NotFound(_) | StoreError::Invalid(_)) => {
                tracing::info!(issuer = %config.name, "an external token names no keygate user");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let memberships = self.store.memberships(&user.id).await?;
        let workspace = match &config.workspace {
            Some(name) => memberships.iter().find(|(_, n, _)| n == name),
            None if memberships.len() == 1 => memberships.first(),
            None => None,
        };
        let Some((workspace_id, _, _)) = workspace else {
            tracing::info!(issuer = %config.name, "an external token's user has no workspace to act in");
            return Ok(None);
        };
        let id = format!("ext-{}", &hex(hash)[..32]);
        let record = self
            .store
            .insert_token(&NewToken {
                id: Some(id),
                kind: TokenKind::External,
                family_id: None,
                user_id: user.id,
                workspace_id: workspace_id.clone(),
                label: Some(config.name.clone()),
                secret_hash: None,
                scopes: None,
                grants: None,
                expires_at: exp.saturating_mul(1000),
            })
            .await?;
        Ok(Some(self.found_token(record)))
    }

    fn admit(&self, p: Arc<Principal>) -> Result<Arc<Principal>, Refusal> {
        if p.is_expired(now_millis()) {
            return Err(Refusal::Unauthorized(AuthFailure::Expired));
        }
        Ok(p)
    }

    /// True while `p` is still the current version of its key (checked again just before a
    /// request is forwarded, so a revoke that returned has stopped every later forward).
    pub fn is_current(&self, p: &Principal) -> bool {
        self.generations.get(&p.key_id) == Some(p.generation) && !p.is_expired(now_millis())
    }

    /// Records that `key_id` has reached `generation`; returns the newest generation known.
    pub fn observe(&self, key_id: &str, generation: i64) -> i64 {
        *self
            .generations
            .entry(key_id.to_owned())
            .and_upsert_with(|old| old.map_or(generation, |o| (*o.value()).max(generation)))
            .value()
    }

    fn principal(&self, r: KeyRecord) -> Principal {
        let usage = self.usage.counters(&r.id);
        Principal::from_key(r, usage)
    }

    /// Retires every cached copy of the tokens listed (after a revoke made here).
    pub fn observe_all(&self, changed: &[(String, i64)]) {
        for (id, generation) in changed {
            self.observe(id, *generation);
        }
    }

    /// Applies a change made elsewhere (another instance, the CLI): cached copies of older
    /// generations are used no more. True when it was news to this instance.
    pub fn apply_change(&self, key_id: &str, generation: i64) -> bool {
        let before = self.generations.get(key_id);
        self.observe(key_id, generation) > before.unwrap_or(i64::MIN)
    }
}
