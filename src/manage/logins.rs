//! Logins and the tokens they issue: password login (mobile JWT, access + refresh tokens, or a
//! browser session), refresh with rotation and reuse detection, logout, the signed-in devices
//! and their remote revoke, and scoped tokens. One implementation behind the control plane.
//!
//! Passwords are verified with argon2id on threads of their own (`password.rs`), at most `password_workers` at
//! once; failed logins are limited per account and per client address, and an unknown email
//! costs the same verification as a known one.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use governor::Quota;
use serde::{Deserialize, Serialize};

use super::password::PasswordWorkers;
use super::{choose_workspace, Actor, KeyManager, ManageError};
use crate::clock::{format_time, millis as ms, now_millis, parse_time};
use crate::identity::credentials::csrf_token;
use crate::identity::jwt::{JwtKind, Tokens};
use crate::identity::Identity;
use crate::model::{Grant, Pepper, Role};
use crate::principal::{Principal, PrincipalKind};
use crate::ratelimit::failures::{address_bucket, text_key, FailureLimiter};
use crate::refusal::{AuthFailure, Refusal};
use crate::store::{Exchange, NewToken, Store, StoreError, TokenKind, TokenRecord};
use crate::telemetry::Metrics;

fn bad_request(m: impl Into<String>) -> ManageError {
    ManageError::BadRequest(m.into())
}

/// What a login returns, by the client's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoginType {
    /// A 30-day JWT recorded as a signed-in device.
    #[default]
    Mobile,
    /// A 10-minute access JWT and a refresh token.
    Access,
    /// A session cookie for the browser.
    Session,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    #[serde(default, rename = "type")]
    pub kind: LoginType,
    /// The workspace to act in; may be left out when the user belongs to exactly one.
    #[serde(default)]
    pub workspace: Option<String>,
    /// What the client calls itself ("Ada's phone"); shown in the device list.
    #[serde(default)]
    pub device: Option<String>,
}

/// A login's result; the secrets in it are shown this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub token_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Seconds the token (or access token) lives.
    pub expires_in: i64,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_expires_at: Option<String>,
    /// Sessions: send it back in `X-CSRF-Token` with every state-changing request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    pub user: UserView,
    #[serde(skip)]
    pub session_cookie: Option<SessionCookie>,
}

/// The cookie a session login sets.
#[derive(Debug, Clone)]
pub struct SessionCookie {
    pub secret: String,
    pub max_age: Duration,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub workspace: String,
    pub role: Option<&'static str>,
}

/// A signed-in device, session or scoped token as listed: never its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: TokenKind,
    pub label: Option<String>,
    pub workspace: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<Grant>>,
    /// The login this request is made with.
    pub current: bool,
}

/// The body of `POST /v1/auth/tokens`: a scoped token (Drivly style).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintRequest {
    #[serde(default)]
    pub name: Option<String>,
    /// `files.read`, `files.write`, ... or keygate scopes (`read`, `files:read`, ...).
    pub permissions: Vec<String>,
    /// `10m`, `1h`, `30d`, ... (default one year, at most `[tokens] scoped_max_ttl`).
    #[serde(default)]
    pub expires_in: Option<String>,
    /// An RFC 3339 time or a date.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Absent: every provider the user's workspace has.
    #[serde(default)]
    pub providers: Option<Vec<Grant>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Minted {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

pub struct Auth {
    pub(super) store: Store,
    pub(super) pepper: Pepper,
    pub tokens: Arc<Tokens>,
    pub(super) identity: Arc<Identity>,
    pub(super) keys: Arc<KeyManager>,
    metrics: Arc<Metrics>,
    /// Verifies passwords, at most `password_workers` at once and `password_queue` waiting.
    passwords: PasswordWorkers,
    /// Keyed by a hash of the account's normalized email.
    per_account: FailureLimiter<[u8; 16]>,
    /// Keyed by the address bucket (an IPv4 address, an IPv6 /64).
    per_address: FailureLimiter<IpAddr>,
    /// The accounts and addresses with a login being verified right now.
    in_flight: Arc<InFlight>,
    /// A hash verified when the email is unknown, so that both cost the same.
    decoy: String,
}

/// Longest email accepted at login (RFC 5321's limit for a path).
pub const MAX_EMAIL_LEN: usize = 254;

/// Longest password accepted at login, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

pub(super) fn random_secret(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub(super) fn label(device: Option<&str>) -> Result<Option<String>, ManageError> {
    match device.map(str::trim) {
        None | Some("") => Ok(None),
        Some(d) if d.chars().count() <= 100 && !d.chars().any(char::is_control) => {
            Ok(Some(d.to_owned()))
        }
        Some(_) => Err(bad_request(
            "a device or token name has at most 100 printable characters",
        )),
    }
}

/// Accounts and addresses with a login in progress. An entry lives only while its login does,
/// so the sets are bounded by the logins open at once (themselves bounded by connections).
#[derive(Default)]
struct InFlight {
    accounts: std::sync::Mutex<std::collections::HashSet<[u8; 16]>>,
    addresses: std::sync::Mutex<std::collections::HashSet<IpAddr>>,
}

/// A login's turn; leaving it frees the account and the address.
struct Turn {
    table: Arc<InFlight>,
    account: [u8; 16],
    address: Option<IpAddr>,
}

impl InFlight {
    /// The turn of a login for `account` from `address`, or `None` while another is running.
    fn enter(self: &Arc<Self>, account: [u8; 16], address: Option<IpAddr>) -> Option<Turn> {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if accounts.contains(&account) || address.is_some_and(|a| addresses.contains(&a)) {
            return None;
        }
        accounts.insert(account);
        if let Some(a) = address {
            addresses.insert(a);
        }
        Some(Turn {
            table: self.clone(),
            account,
            address,
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut accounts = self
            .table
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut addresses = self
            .table
            .addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        accounts.remove(&self.account);
        if let Some(a) = self.address {
            addresses.remove(&a);
        }
    }
}

/// The failures a login attempt took from the shared quotas before its password was tried:
/// given back when dropped, unless `keep` says the password was wrong.
struct Taken<'a> {
    auth: &'a Auth,
    account: Option<[u8; 16]>,
    address: Option<IpAddr>,
}

impl Taken<'_> {
    /// The password was wrong: the failures stay counted. Whether each was taken.
    fn keep(mut self) -> (bool, bool) {
        (self.account.take().is_some(), self.address.take().is_some())
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(account) = self.account.take() {
            self.auth.per_account.give_back(&account);
        }
        if let Some(address) = self.address.take() {
            self.auth.per_address.give_back(&address);
        }
    }
}

impl Auth {
    /// The CSRF token of the session whose cookie holds `session_secret`.
    pub fn csrf_token(&self, session_secret: &str) -> String {
        csrf_token(&self.pepper, session_secret)
    }

    pub fn new(
        store: Store,
        pepper: Pepper,
        tokens: Arc<Tokens>,
        identity: Arc<Identity>,
        keys: Arc<KeyManager>,
        metrics: Arc<Metrics>,
    ) -> Auth {
        let s = &tokens.settings;
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        // n failures in the window lock an account (or an address): the nth is the last one
        // verified, the attempts after it are answered 429 until the quota refills.
        let burst = |v: u32| n(v.saturating_sub(1).max(1));
        let per_account =
            Quota::with_period(Duration::from_secs(900) / s.login_failures_per_account.max(1))
                .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
                .allow_burst(burst(s.login_failures_per_account));
        let per_address =
            Quota::with_period(Duration::from_secs(60) / s.login_failures_per_address.max(1))
                .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
                .allow_burst(burst(s.login_failures_per_address));
        let decoy = {
            use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
            Argon2::default()
                .hash_password(b"keygate decoy password", &SaltString::generate(&mut OsRng))
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        Auth {
            passwords: PasswordWorkers::start(s.password_workers, s.password_queue),
            per_account: FailureLimiter::with_shared(
                per_account,
                s.limiter_capacity,
                identity.shared_limits().map(|l| ("login-account", l)),
            ),
            per_address: FailureLimiter::with_shared(
                per_address,
                s.limiter_capacity,
                identity.shared_limits().map(|l| ("login-address", l)),
            ),
            in_flight: Arc::default(),
            store,
            pepper,
            tokens,
            identity,
            keys,
            metrics,
            decoy,
        }
    }

    /// Verifies a password against a PHC hash on the password workers; a full queue or a
    /// long wait is a 503.
    async fn verify_password(&self, hash: String, password: String) -> Result<bool, Refusal> {
        self.passwords.verify(hash, password).await.map_err(|_| {
            self.metrics.logins.with_label_values(&["busy"]).inc();
            Refusal::Unavailable("too many logins at once; try again".into())
        })
    }

    /// Counts a failed login (unless its failure was taken before the attempt), before the
    /// next attempt on this account (one at a time) is checked.
    async fn login_failed(
        &self,
        addr: Option<IpAddr>,
        account: &[u8; 16],
        took_account: bool,
        took_address: bool,
    ) -> Refusal {
        self.metrics
            .auth_failures
            .with_label_values(&[AuthFailure::Unknown.as_str()])
            .inc();
        self.metrics.logins.with_label_values(&["failed"]).inc();
        if let (Some(a), false) = (addr, took_address) {
            self.per_address.fail_now(&address_bucket(a)).await;
        }
        if !took_account {
            self.per_account.fail_now(account).await;
        }
        Refusal::Unauthorized(AuthFailure::Unknown)
    }

    /// Accounts and addresses the login limiters track, for the metrics.
    pub fn limiter_entries(&self) -> (u64, u64) {
        (self.per_account.entries(), self.per_address.entries())
    }

    /// `POST /v1/auth/login`.
    pub async fn login(
        &self,
        req: LoginRequest,
        addr: Option<IpAddr>,
    ) -> Result<Issued, ManageError> {
        let limited = |r: Refusal| {
            self.metrics.logins.with_label_values(&["limited"]).inc();
            r
        };
        if let Some(a) = addr {
            self.per_address
                .check(&address_bucket(a))
                .map_err(limited)?;
        }
        // An email has at most 254 characters (RFC 5321); longer input is refused before it
        // is copied, hashed or counted.
        let email = req.email.trim();
        if email.len() > MAX_EMAIL_LEN || req.password.len() > MAX_PASSWORD_LEN {
            return Err(bad_request(format!(
                "an email has at most {MAX_EMAIL_LEN} characters and a password at most \
                 {MAX_PASSWORD_LEN} bytes"
            )));
        }
        let account = email.to_lowercase();
        let account_key = text_key(&account);
        self.per_account.check(&account_key).map_err(limited)?;
        // One attempt at a time per account and per address: a failure is counted before the
        // next attempt is checked, so a burst of concurrent guesses cannot all pass the check.
        let _turn = self
            .in_flight
            .enter(account_key, addr.map(address_bucket))
            .ok_or_else(|| {
                limited(Refusal::RateLimited {
                    retry_after_secs: 1,
                })
            })?;
        let device = label(req.device.as_deref())?;
        // Shared through Redis, the turn above holds on this instance only: this attempt's
        // failure is taken from the account's and the address's quotas before the password is
        // tried, so attempts on every instance at once are all counted. It is kept only if the
        // password is wrong: any other end (right, a 503, a dropped connection) gives it back.
        let bucket = addr.map(address_bucket);
        let mut taken = Taken {
            auth: self,
            account: None,
            address: None,
        };
        if self.per_account.take(&account_key).await.map_err(limited)? {
            taken.account = Some(account_key);
        }
        if let Some(b) = bucket {
            if self.per_address.take(&b).await.map_err(limited)? {
                taken.address = Some(b);
            }
        }
        let user = match self.store.user_by_email(&account).await {
            Ok(u) => Some(u),
            Err(StoreError::NotFound(_) | StoreError::Invalid(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let hash = match &user {
            Some(u) => self.store.password_hash(&u.id).await?,
            None => self.decoy.clone(),
        };
        let verified = self.verify_password(hash, req.password).await?;
        let Some(user) = user.filter(|_| verified) else {
            let (took_account, took_address) = taken.keep();
            return Err(self
                .login_failed(addr, &account_key, took_account, took_address)
                .await
                .into());
        };
        drop(taken);
        let memberships = self.store.memberships(&user.id).await?;
        let (workspace_id, workspace, role) = choose_workspace(
            &memberships,
            req.workspace.as_deref(),
            &user.email,
            ManageError::Forbidden,
        )?;
        let user_view = UserView {
            id: user.id.clone(),
            email: user.email.clone(),
            workspace,
            role: Some(role.as_str()),
        };
        let settings = &self.tokens.settings;
        let now = now_millis();
        let row = |kind, ttl: Duration, family: Option<String>, secret: Option<&str>| NewToken {
            id: None,
            kind,
            family_id: family,
            user_id: user.id.clone(),
            workspace_id: workspace_id.clone(),
            label: device.clone(),
            secret_hash: secret.map(|s| self.pepper.hash_hex(s)),
            scopes: None,
            grants: None,
            expires_at: now + ms(ttl),
        };
        let issued = match req.kind {
            LoginType::Mobile => {
                let r = self
                    .store
                    .insert_token(&row(TokenKind::Mobile, settings.mobile_ttl, None, None))
                    .await?;
                let token = self.sign(JwtKind::Mobile, &r)?;
                Issued {
                    kind: "mobile",
                    token_id: r.id,
                    token: Some(token),
                    access_token: None,
                    refresh_token: None,
                    expires_in: settings.mobile_ttl.as_secs() as i64,
                    expires_at: format_time(r.expires_at),
                    refresh_expires_at: None,
                    csrf_token: None,
                    token_type: Some("Bearer"),
                    user: user_view,
                    session_cookie: None,
                }
            }
            LoginType::Access => {
                let secret = random_secret("kgr");
                let refresh = self
                    .store
                    .insert_token(&row(
                        TokenKind::Refresh,
                        settings.refresh_ttl,
                        None,
                        Some(&secret),
                    ))
                    .await?;
                let access = self
                    .store
                    .insert_token(&row(
                        TokenKind::Access,
                        settings.access_ttl,
                        Some(refresh.family_id.clone()),
                        None,
                    ))
                    .await?;
                self.pair(access, refresh, secret, user_view)?
            }
            LoginType::Session => {
                let secret = random_secret("kgs");
                let r = self
                    .store
                    .insert_token(&row(
                        TokenKind::Session,
                        settings.session_ttl,
                        None,
                        Some(&secret),
                    ))
                    .await?;
                Issued {
                    kind: "session",
                    token_id: r.id,
                    token: None,
                    access_token: None,
                    refresh_token: None,
                    expires_in: settings.session_ttl.as_secs() as i64,
                    expires_at: format_time(r.expires_at),
                    refresh_expires_at: None,
                    csrf_token: Some(csrf_token(&self.pepper, &secret)),
                    token_type: None,
                    user: user_view,
                    session_cookie: Some(SessionCookie {
                        secret,
                        max_age: settings.session_ttl,
                    }),
                }
            }
        };
        self.metrics.logins.with_label_values(&["ok"]).inc();
        tracing::info!(user = %user.id, kind = issued.kind, token = %issued.token_id, "login");
        Ok(issued)
    }

    pub(super) fn sign(&self, kind: JwtKind, r: &TokenRecord) -> Result<String, ManageError> {
        let mut claims = self.tokens.claims(
            kind,
            &r.id,
            &r.user_id,
            &r.user_email,
            &r.workspace_id,
            r.expires_at,
        );
        claims.scopes = r.scopes.clone();
        claims.providers = r.grants.clone();
        Ok(self.tokens.sign(&claims)?)
    }

    pub(super) fn pair(
        &self,
        access: TokenRecord,
        refresh: TokenRecord,
        secret: String,
        user: UserView,
    ) -> Result<Issued, ManageError> {
        // An application's grant (OAuth) refreshes a scoped token; a login, an access token.
        let kind = if access.kind == TokenKind::Scoped {
            JwtKind::Scoped
        } else {
            JwtKind::Access
        };
        let token = self.sign(kind, &access)?;
        Ok(Issued {
            kind: "access",
            token_id: access.id.clone(),
            token: None,
            access_token: Some(token),
            refresh_token: Some(secret),
            expires_in: self.tokens.settings.access_ttl.as_secs() as i64,
            expires_at: format_time(access.expires_at),
            refresh_expires_at: Some(format_time(refresh.expires_at)),
            csrf_token: None,
            token_type: Some("Bearer"),
            user,
            session_cookie: None,
        })
    }

    /// `POST /v1/auth/refresh`: a new access token and a new refresh token for one that has
    /// not been used. A refresh token presented a second time revokes its whole family: it
    /// was stolen, or the client that holds the newer one was.
    /// `client`: the application presenting it (`/oauth/token`), or `None` for a login's own
    /// refresh (`/v1/auth/refresh`). A refresh token is honoured only where it was issued: an
    /// application's only by that application, a login's only without one.
    pub async fn refresh(
        &self,
        token: &str,
        addr: Option<IpAddr>,
        client: Option<&str>,
    ) -> Result<Issued, ManageError> {
        self.identity.gate().check(addr)?;
        let refuse = |f: AuthFailure| {
            self.identity.gate().record_failure(addr, f);
            ManageError::Refused(Refusal::Unauthorized(f))
        };
        let hex = self.pepper.hash_hex(token.trim());
        let Some((old, stored)) = self.store.token_by_secret(&hex).await? else {
            return Err(refuse(AuthFailure::Unknown));
        };
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            stored.as_bytes(),
            hex.as_bytes(),
        )) || old.kind != TokenKind::Refresh
        {
            return Err(refuse(AuthFailure::Unknown));
        }
        if self.store.grant_client(&old.family_id).await?.as_deref() != client {
            return Err(refuse(AuthFailure::Unknown));
        }
        let settings = &self.tokens.settings;
        let now = now_millis();
        let secret = random_secret("kgr");
        // A refresh token that carries scopes is an application's grant (OAuth): its access
        // tokens are scoped tokens with those scopes.
        let access_kind = if old.scopes.is_some() {
            TokenKind::Scoped
        } else {
            TokenKind::Access
        };
        let next = |kind, ttl: Duration, secret: Option<&str>| NewToken {
            id: None,
            kind,
            family_id: Some(old.family_id.clone()),
            user_id: old.user_id.clone(),
            workspace_id: old.workspace_id.clone(),
            label: old.label.clone(),
            secret_hash: secret.map(|s| self.pepper.hash_hex(s)),
            scopes: old.scopes.clone(),
            grants: old.grants.clone(),
            expires_at: now + ms(ttl),
        };
        let exchange = self
            .store
            .exchange_refresh(
                &old.id,
                &next(access_kind, settings.access_ttl, None),
                &next(TokenKind::Refresh, settings.refresh_ttl, Some(&secret)),
            )
            .await?;
        match exchange {
            Exchange::Rotated { access, refresh } => {
                self.metrics.logins.with_label_values(&["refreshed"]).inc();
                let user = UserView {
                    id: access.user_id.clone(),
                    email: access.user_email.clone(),
                    workspace: access.workspace.clone(),
                    role: access.role.map(|r| r.as_str()),
                };
                self.pair(*access, *refresh, secret, user)
            }
            Exchange::Reused { revoked } => {
                self.identity.observe_all(&revoked);
                self.metrics
                    .logins
                    .with_label_values(&["reuse_detected"])
                    .inc();
                tracing::warn!(family = %old.family_id, user = %old.user_id, "a used refresh token was presented again; its whole family is revoked");
                Err(refuse(AuthFailure::Revoked))
            }
            Exchange::Refused if old.revoked_at.is_none() && old.expires_at <= now => {
                Err(refuse(AuthFailure::Expired))
            }
            Exchange::Refused => Err(refuse(AuthFailure::Revoked)),
        }
    }

    /// The token row behind a login principal.
    async fn row_of(&self, p: &Principal) -> Result<Option<TokenRecord>, ManageError> {
        if matches!(p.kind, PrincipalKind::ApiKey | PrincipalKind::Operator) {
            return Ok(None);
        }
        match self.store.token(&p.key_id).await {
            Ok(r) => Ok(Some(r)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `POST /v1/auth/logout`: ends the login the request is made with (its whole family).
    pub async fn logout(&self, p: &Principal) -> Result<(), ManageError> {
        let Some(row) = self.row_of(p).await? else {
            return Err(bad_request(
                "an API key is not a login; revoke it with DELETE /v1/keys/{id}",
            ));
        };
        let revoked = self.store.revoke_family(&row.family_id).await?;
        self.identity.observe_all(&revoked);
        tracing::info!(user = %row.user_id, token = %row.id, "logout");
        Ok(())
    }

    /// How a token is shown: its scopes in the deployment's spelling.
    fn view(&self, r: &TokenRecord, current_family: Option<&str>) -> TokenView {
        TokenView {
            id: r.id.clone(),
            kind: r.kind,
            label: r.label.clone(),
            workspace: r.workspace.clone(),
            created_at: format_time(r.created_at),
            last_used_at: r.last_used_at.map(format_time),
            expires_at: format_time(r.expires_at),
            scopes: r
                .scopes
                .as_deref()
                .map(|s| self.keys.policy.spell_scopes(s)),
            providers: r.grants.clone(),
            current: current_family == Some(r.family_id.as_str()),
        }
    }

    /// `GET /v1/auth/tokens`: the caller's signed-in devices, sessions and scoped tokens that
    /// are still usable and that the caller may read (a login with a refresh token is listed
    /// once, by its refresh token).
    pub async fn list(&self, actor: &Actor) -> Result<Vec<TokenView>, ManageError> {
        let Actor::User(p) = actor else {
            return Err(bad_request(
                "the operator has no tokens; sign in as a user to list theirs",
            ));
        };
        let current = self.row_of(p).await?.map(|r| r.family_id);
        let now = now_millis();
        Ok(self
            .store
            .user_tokens(&p.user_id)
            .await?
            .iter()
            // A login (or an application's grant) is listed once, by its refresh token.
            .filter(|r| {
                !(r.kind == TokenKind::Access || r.kind == TokenKind::Scoped && r.family_id != r.id)
                    && r.is_active(now)
            })
            // The policies say which of them the caller may see (a scoped token: itself).
            .filter(|r| {
                self.keys
                    .authorize(actor, "readKey", &r.id, &r.user_id, &r.workspace_id)
                    .is_ok()
            })
            .map(|r| self.view(r, current.as_deref()))
            .collect())
    }

    /// `DELETE /v1/auth/tokens/{id}`: revokes a token and the rest of its login at once.
    pub async fn revoke(&self, actor: &Actor, id: &str) -> Result<TokenView, ManageError> {
        let not_found = || ManageError::NotFound(format!("no token with id '{id}'"));
        let row = match self.store.token(id).await {
            Ok(r) => r,
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        self.keys
            .authorize(actor, "readKey", &row.id, &row.user_id, &row.workspace_id)
            .map_err(|_| not_found())?;
        self.keys
            .authorize(actor, "revokeKey", &row.id, &row.user_id, &row.workspace_id)?;
        let revoked = self.store.revoke_family(&row.family_id).await?;
        self.identity.observe_all(&revoked);
        tracing::info!(token = %row.id, owner = %row.user_id, "token revoked");
        let row = self.store.token(id).await?;
        Ok(self.view(&row, None))
    }

    /// `POST /v1/auth/tokens`: a scoped token with a permission list and an expiry. It never
    /// exceeds the minting user's rights: each permission must lie within the user's role.
    pub async fn mint(&self, actor: &Actor, req: MintRequest) -> Result<Minted, ManageError> {
        let Actor::User(p) = actor else {
            return Err(bad_request(
                "scoped tokens are minted by a signed-in user, not by the operator",
            ));
        };
        self.keys
            .authorize(actor, "createToken", "new", &p.user_id, &p.workspace_id)?;
        let scopes = self.within_role(p, &req.permissions)?;
        let grants = self
            .keys
            .grants(&p.workspace_id, req.providers.as_deref())
            .await?;
        let settings = &self.tokens.settings;
        let now = now_millis();
        let expires_at = match (req.expires_in.as_deref(), req.expires_at.as_deref()) {
            (Some(_), Some(_)) => return Err(bad_request("give expiresIn or expiresAt, not both")),
            (Some(d), None) => {
                let d = humantime::parse_duration(d.trim()).map_err(|_| {
                    bad_request(format!("'{d}' is not a duration such as '10m' or '30d'"))
                })?;
                now + ms(d)
            }
            (None, Some(t)) => parse_time(t)
                .ok_or_else(|| bad_request(format!("'{t}' is not a date or an RFC 3339 time")))?,
            (None, None) => now + ms(settings.scoped_default_ttl),
        };
        if expires_at <= now {
            return Err(bad_request("the expiry must lie in the future"));
        }
        if expires_at > now + ms(settings.scoped_max_ttl) {
            return Err(bad_request(format!(
                "a scoped token lives at most {}",
                humantime::format_duration(settings.scoped_max_ttl)
            )));
        }
        let row = self
            .store
            .insert_scoped_token(
                &NewToken {
                    id: None,
                    kind: TokenKind::Scoped,
                    family_id: None,
                    user_id: p.user_id.clone(),
                    workspace_id: p.workspace_id.clone(),
                    label: label(req.name.as_deref())?,
                    secret_hash: None,
                    scopes: Some(scopes),
                    grants,
                    expires_at,
                },
                settings.max_scoped_per_user,
            )
            .await?;
        let token = self.sign(JwtKind::Scoped, &row)?;
        tracing::info!(user = %row.user_id, token = %row.id, "scoped token minted");
        Ok(Minted {
            token,
            view: self.view(&row, None),
        })
    }

    /// The scopes `permissions` name (any scope the policy schema declares: `files:read`,
    /// `files.read`, ...), if a token of `p` could use every one of them: never beyond the
    /// user's role.
    pub(super) fn within_role(
        &self,
        p: &Principal,
        permissions: &[String],
    ) -> Result<Vec<String>, ManageError> {
        if permissions.is_empty() {
            return Err(bad_request("a scoped token needs at least one permission"));
        }
        let scopes = self
            .keys
            .policy
            .parse_scopes(permissions)
            .map_err(bad_request)?;
        // A token never exceeds its owner's role. The policies say what a role allows (a
        // forbid marked `@restriction("role")`); a scope some of whose actions they would
        // always deny such a token is refused now rather than silently inert later.
        let candidate = Principal {
            kind: PrincipalKind::ScopedToken,
            key_id: "new".to_owned(),
            user_id: p.user_id.clone(),
            user_email: p.user_email.clone(),
            workspace_id: p.workspace_id.clone(),
            workspace: p.workspace.clone(),
            scopes: scopes.clone(),
            grants: None,
            role: p.role,
            expires_at: None,
            generation: 0,
            usage: Default::default(),
        };
        if let Some((scope, beyond)) = self
            .keys
            .policy
            .beyond_role(&candidate, &scopes)
            .into_iter()
            .next()
        {
            return Err(ManageError::Forbidden(format!(
                "'{}' exceeds your role in this workspace ({}): the policies would never let \
                 a token of yours do {}",
                self.keys.policy.spell_scopes(std::slice::from_ref(&scope))[0],
                p.role.map_or("none", Role::as_str),
                beyond.join(", ")
            )));
        }
        Ok(scopes)
    }
}
