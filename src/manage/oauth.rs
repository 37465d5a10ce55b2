//! "Grant access" for applications: OAuth 2.0 authorization code with PKCE (RFC 6749,
//! RFC 7636) as the Security BCP (RFC 9700) asks: registered clients with exact redirect URIs,
//! no implicit flow, PKCE with S256 required, `state` returned, codes that live one minute and
//! are used once (a code presented twice revokes what it was exchanged for). What an
//! application gets are the scoped tokens keygate already mints: a 10-minute access token and
//! a refresh token that rotates, capped by the user's role, listed with their devices,
//! revocable by the user, and all revoked when an admin removes the application.
//!
//! Clients are public (no secret): PKCE binds a code to the application that asked for it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::logins::{label, random_secret, Auth};
use super::{Actor, ManageError};
use crate::clock::{format_time, millis as ms, now_millis};
use crate::identity::jwt::JwtKind;
use crate::model::Grant;
use crate::principal::PrincipalKind;
use crate::refusal::{AuthFailure, Refusal};
use crate::store::{CodeUse, NewCode, NewToken, OAuthClient, StoreError, TokenKind};

/// The owner of an application as the policies see it: no user (user ids are UUIDs), so only
/// workspace administration reaches it.
const WORKSPACE_OWNED: &str = "(the workspace)";

/// How long an authorization code may wait for its exchange.
pub const CODE_TTL_MS: i64 = 60_000;

/// Most redirect URIs one client registers, and the longest one.
pub const MAX_REDIRECT_URIS: usize = 10;
pub const MAX_REDIRECT_URI_LEN: usize = 2000;

/// Longest `state`, scope list or base-path list an authorization request may carry.
pub const MAX_PARAM_LEN: usize = 2000;

/// `POST /v1/oauth/clients`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterClient {
    /// Shown to users on the consent page and in their devices.
    pub name: String,
    /// Where codes may be sent, each matched exactly: `https://…`, or `http://127.0.0.1:…`,
    /// `http://[::1]:…` for applications on the user's own machine.
    pub redirect_uris: Vec<String>,
}

/// A registered application as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientView {
    /// The `client_id` the application sends.
    pub client_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub workspace: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<String>,
}

fn client_view(c: &OAuthClient) -> ClientView {
    ClientView {
        client_id: c.id.clone(),
        name: c.name.clone(),
        redirect_uris: c.redirect_uris.clone(),
        workspace: c.workspace.clone(),
        created_at: format_time(c.created_at),
        removed_at: c.revoked_at.map(format_time),
    }
}

/// The parameters of an authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3), and the
/// base paths keygate adds (`providers`: `local:/photos local:/docs`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuthorizeRequest {
    #[serde(default)]
    pub response_type: String,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub redirect_uri: String,
    /// Permissions, space-separated (`files.read folders.read`).
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub code_challenge: String,
    #[serde(default)]
    pub code_challenge_method: String,
    /// Base paths, space-separated `provider:/path` (absent: every provider).
    #[serde(default)]
    pub providers: Option<String>,
}

/// `POST /v1/oauth/authorize`: the user's answer to an authorization request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Decision {
    pub request: AuthorizeRequest,
    /// `true`: grant the application what it asked for; `false`: refuse.
    pub approve: bool,
}

/// What the consent page shows (`GET /v1/oauth/authorize`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsentView {
    pub client: ClientView,
    /// The permissions asked for, in the deployment's spelling.
    pub permissions: Vec<String>,
    /// The base paths asked for; absent: every provider of the workspace.
    pub providers: Option<Vec<Grant>>,
    /// The user and workspace the grant would be for.
    pub user: String,
    pub workspace: String,
    /// How long its access tokens live (seconds), and its refresh token.
    pub access_token_ttl: i64,
    pub refresh_token_ttl: i64,
}

/// Where the browser goes next: back to the application, with a code or an error.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedirectView {
    pub redirect_to: String,
}

/// A request that cannot go back to the application (unknown client, unregistered redirect
/// URI): shown to the user, never redirected (RFC 6749 §4.1.2.1).
#[derive(Debug)]
pub struct Unsafe(pub String);

/// The outcome of checking an authorization request.
#[derive(Debug)]
pub enum Checked {
    /// Valid: the client, the scopes and the base paths.
    Valid(OAuthClient, Vec<String>, Option<Vec<Grant>>),
    /// Invalid, and the application is told at its redirect URI.
    Refused(RedirectView),
}

/// The token endpoint's answer (RFC 6749 §5.1).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenAnswer {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds the access token lives.
    pub expires_in: i64,
    pub refresh_token: String,
    /// The permissions granted, space-separated.
    pub scope: String,
}

/// The token endpoint's refusals (RFC 6749 §5.2): `invalid_request`, `invalid_client`,
/// `invalid_grant`, `unsupported_grant_type`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenError {
    pub error: &'static str,
    pub error_description: String,
}

fn token_error(error: &'static str, description: impl Into<String>) -> TokenError {
    TokenError {
        error,
        error_description: description.into(),
    }
}

/// The form of `POST /oauth/token`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct TokenRequest {
    #[serde(default)]
    pub grant_type: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub redirect_uri: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub code_verifier: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// A redirect URI a client may register.
fn check_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_REDIRECT_URI_LEN {
        return Err(format!(
            "a redirect URI has at most {MAX_REDIRECT_URI_LEN} characters"
        ));
    }
    let parsed = reqwest::Url::parse(uri).map_err(|_| format!("'{uri}' is not a URL"))?;
    if parsed.fragment().is_some() {
        return Err(format!("'{uri}' has a fragment; redirect URIs may not"));
    }
    // Loopback IP literals only (RFC 8252 §8.3): `localhost` may resolve elsewhere.
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "[::1]"));
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "'{uri}' is neither https:// nor http:// to this machine (127.0.0.1, [::1])"
        )),
    }
}

/// `BASE64URL(SHA-256(verifier))`, the S256 challenge of RFC 7636 §4.2.
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A PKCE code verifier or challenge: 43 to 128 unreserved characters (RFC 7636 §4.1).
fn pkce_shaped(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `redirect_uri` with `params` added to its query.
fn redirect(redirect_uri: &str, params: &[(&str, &str)]) -> RedirectView {
    let mut url = reqwest::Url::parse(redirect_uri).expect("registered redirect URIs parse");
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            query.append_pair(k, v);
        }
    }
    RedirectView {
        redirect_to: url.to_string(),
    }
}

impl Auth {
    /// The workspace admin's (or the operator's) right to manage the applications of
    /// `workspace_id`: the policies' `manageClients`, on a credential of the workspace that no
    /// user owns.
    fn may_manage_clients(
        &self,
        actor: &Actor,
        client: &str,
        workspace_id: &str,
    ) -> Result<(), ManageError> {
        self.keys.authorize(
            actor,
            "manageClients",
            client,
            WORKSPACE_OWNED,
            workspace_id,
        )
    }

    /// `POST /v1/oauth/clients`: registers an application in the caller's workspace.
    pub async fn register_client(
        &self,
        actor: &Actor,
        req: RegisterClient,
    ) -> Result<ClientView, ManageError> {
        let Actor::User(p) = actor else {
            return Err(ManageError::BadRequest(
                "applications are registered by a workspace admin, in their workspace".into(),
            ));
        };
        self.may_manage_clients(actor, "new", &p.workspace_id)?;
        let name = label(Some(&req.name))?
            .ok_or_else(|| ManageError::BadRequest("an application needs a name".into()))?;
        if req.redirect_uris.is_empty() || req.redirect_uris.len() > MAX_REDIRECT_URIS {
            return Err(ManageError::BadRequest(format!(
                "redirectUris lists between 1 and {MAX_REDIRECT_URIS} URIs"
            )));
        }
        for uri in &req.redirect_uris {
            check_redirect_uri(uri).map_err(ManageError::BadRequest)?;
        }
        let client = self
            .store
            .create_client(&p.workspace_id, &name, &req.redirect_uris)
            .await?;
        tracing::info!(client = %client.id, workspace = %client.workspace_id, "application registered");
        Ok(client_view(&client))
    }

    /// `GET /v1/oauth/clients`: the applications of the caller's workspace.
    pub async fn clients(&self, actor: &Actor) -> Result<Vec<ClientView>, ManageError> {
        let Actor::User(p) = actor else {
            return Err(ManageError::BadRequest(
                "the operator has no workspace; list a workspace's applications as its admin"
                    .into(),
            ));
        };
        self.may_manage_clients(actor, "any", &p.workspace_id)?;
        Ok(self
            .store
            .clients(&p.workspace_id)
            .await?
            .iter()
            .map(client_view)
            .collect())
    }

    /// `DELETE /v1/oauth/clients/{id}`: removes an application and revokes every grant it
    /// holds, at once.
    pub async fn remove_client(&self, actor: &Actor, id: &str) -> Result<ClientView, ManageError> {
        let not_found = || ManageError::NotFound(format!("no application '{id}'"));
        let client = self.store.client(id).await?.ok_or_else(not_found)?;
        self.may_manage_clients(actor, &client.id, &client.workspace_id)
            .map_err(|_| not_found())?;
        let revoked = self.store.revoke_client(&client.id).await?;
        self.identity.observe_all(&revoked);
        tracing::info!(client = %client.id, tokens = revoked.len(), "application removed");
        let client = self.store.client(id).await?.ok_or_else(not_found)?;
        Ok(client_view(&client))
    }

    /// The registered, active application the request names, if it returns to one of the
    /// application's redirect URIs exactly; otherwise nothing may go back to it.
    pub async fn check_client(&self, req: &AuthorizeRequest) -> Result<OAuthClient, Unsafe> {
        let client = match self.store.client(&req.client_id).await {
            Ok(Some(c)) if c.revoked_at.is_none() => c,
            Ok(_) => {
                return Err(Unsafe(
                    "this application is not registered with keygate".into(),
                ))
            }
            Err(_) => return Err(Unsafe("keygate cannot check this request now".into())),
        };
        if !client.redirect_uris.contains(&req.redirect_uri) {
            return Err(Unsafe(
                "the address this request would return to is not registered for the application"
                    .into(),
            ));
        }
        Ok(client)
    }

    /// Checks an authorization request for the signed-in user `actor`. `Err`: it cannot go
    /// back to the application; `Refused`: the application is told why at its redirect URI.
    pub async fn check_authorization(
        &self,
        actor: &Actor,
        req: &AuthorizeRequest,
    ) -> Result<Checked, Unsafe> {
        let client = self.check_client(req).await?;
        let state = req.state.as_deref().unwrap_or_default();
        let refuse = |error: &str, description: &str| {
            let mut params = vec![("error", error), ("error_description", description)];
            if !state.is_empty() {
                params.push(("state", state));
            }
            Ok(Checked::Refused(redirect(&req.redirect_uri, &params)))
        };
        if [&req.scope, &req.code_challenge]
            .iter()
            .any(|p| p.len() > MAX_PARAM_LEN)
            || state.len() > MAX_PARAM_LEN
            || req
                .providers
                .as_ref()
                .is_some_and(|p| p.len() > MAX_PARAM_LEN)
        {
            return refuse("invalid_request", "a parameter is too long");
        }
        if req.response_type != "code" {
            return refuse(
                "unsupported_response_type",
                "only the authorization code flow (response_type=code) is supported",
            );
        }
        if req.code_challenge_method != "S256" || !pkce_shaped(&req.code_challenge) {
            return refuse(
                "invalid_request",
                "PKCE is required: code_challenge (43 to 128 characters) with \
                 code_challenge_method=S256",
            );
        }
        let Actor::User(p) = actor else {
            return refuse("access_denied", "the operator cannot grant access");
        };
        if p.kind != PrincipalKind::Login {
            return refuse("access_denied", "only a signed-in user can grant access");
        }
        if p.workspace_id != client.workspace_id {
            return refuse(
                "access_denied",
                "the application belongs to another workspace than the one signed in to",
            );
        }
        let permissions: Vec<String> = req.scope.split_whitespace().map(str::to_owned).collect();
        // The application learns that it may not have what it asked, never why (the user's
        // role stays the user's).
        let Ok(scopes) = self.within_role(p, &permissions) else {
            return refuse(
                "invalid_scope",
                "the request names a permission this user cannot grant",
            );
        };
        let grants = match req.providers.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(list) => {
                let mut grants = Vec::new();
                for item in list.split_whitespace() {
                    let Some((provider, path)) = item.split_once(':') else {
                        return refuse("invalid_request", "providers lists provider:/path");
                    };
                    grants.push(Grant {
                        provider: provider.to_owned(),
                        base_path: path.to_owned(),
                    });
                }
                match self.keys.grants(&p.workspace_id, Some(&grants)).await {
                    Ok(g) => g,
                    Err(_) => {
                        return refuse("invalid_request", "providers names no base path here")
                    }
                }
            }
        };
        Ok(Checked::Valid(client, scopes, grants))
    }

    /// What the consent page shows for a valid request.
    pub fn consent(
        &self,
        actor: &Actor,
        client: &OAuthClient,
        scopes: &[String],
        grants: Option<Vec<Grant>>,
    ) -> ConsentView {
        let (user, workspace) = match actor {
            Actor::User(p) => (p.user_email.clone(), p.workspace.clone()),
            Actor::Operator => (String::new(), String::new()),
        };
        let settings = &self.tokens.settings;
        ConsentView {
            client: client_view(client),
            permissions: self.keys.policy.spell_scopes(scopes),
            providers: grants,
            user,
            workspace,
            access_token_ttl: settings.access_ttl.as_secs() as i64,
            refresh_token_ttl: settings.refresh_ttl.as_secs() as i64,
        }
    }

    /// The user's decision on a valid request: a one-time code for the application, or its
    /// refusal (`access_denied`), as the redirect back to it.
    pub async fn decide(
        &self,
        actor: &Actor,
        req: &AuthorizeRequest,
        client: &OAuthClient,
        (scopes, grants): (Vec<String>, Option<Vec<Grant>>),
        approve: bool,
    ) -> Result<RedirectView, ManageError> {
        let Actor::User(p) = actor else {
            return Err(ManageError::BadRequest(
                "the operator cannot grant access".into(),
            ));
        };
        let state = req.state.as_deref().unwrap_or_default();
        let with_state = |mut params: Vec<(&'static str, String)>| {
            if !state.is_empty() {
                params.push(("state", state.to_owned()));
            }
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            redirect(&req.redirect_uri, &pairs)
        };
        if !approve {
            tracing::info!(client = %client.id, user = %p.user_id, "access refused by the user");
            return Ok(with_state(vec![
                ("error", "access_denied".to_owned()),
                ("error_description", "the user refused".to_owned()),
            ]));
        }
        // Granting access mints tokens for the user: the right to mint scoped tokens.
        self.keys
            .authorize(actor, "createToken", "new", &p.user_id, &p.workspace_id)?;
        let code = random_secret("kga");
        self.store
            .insert_code(&NewCode {
                code_hash: self.pepper.hash_hex(&code),
                client_id: client.id.clone(),
                user_id: p.user_id.clone(),
                workspace_id: p.workspace_id.clone(),
                redirect_uri: req.redirect_uri.clone(),
                scopes,
                grants,
                code_challenge: req.code_challenge.clone(),
                expires_at: now_millis() + CODE_TTL_MS,
            })
            .await?;
        tracing::info!(client = %client.id, user = %p.user_id, "access granted to an application");
        Ok(with_state(vec![("code", code)]))
    }

    /// `POST /oauth/token`: a code (with its PKCE verifier) or a refresh token for tokens.
    /// Failures count against the client's address like failed logins.
    pub async fn token(
        &self,
        req: TokenRequest,
        addr: Option<std::net::IpAddr>,
    ) -> Result<TokenAnswer, TokenError> {
        if self.identity.gate().check(addr).is_err() {
            return Err(token_error(
                "slow_down",
                "this address failed too often; try again later",
            ));
        }
        // Only what a guesser would cause counts against the address: a bad code or client.
        let failed = |e: TokenError| {
            if matches!(e.error, "invalid_grant" | "invalid_client") {
                self.identity
                    .gate()
                    .record_failure(addr, AuthFailure::Invalid);
            }
            e
        };
        let client_id = req.client_id.clone().unwrap_or_default();
        let client = match self.store.client(&client_id).await {
            Ok(Some(c)) if c.revoked_at.is_none() => c,
            Ok(_) => {
                return Err(failed(token_error(
                    "invalid_client",
                    "no such application (client_id)",
                )))
            }
            Err(_) => return Err(token_error("temporarily_unavailable", "try again")),
        };
        match req.grant_type.as_str() {
            "authorization_code" => self.exchange_code(&client, &req).await.map_err(failed),
            "refresh_token" => self.refresh_grant(&client, &req, addr).await,
            _ => Err(token_error(
                "unsupported_grant_type",
                "grant_type is authorization_code or refresh_token",
            )),
        }
    }

    async fn exchange_code(
        &self,
        client: &OAuthClient,
        req: &TokenRequest,
    ) -> Result<TokenAnswer, TokenError> {
        let (Some(code), Some(verifier), Some(redirect_uri)) =
            (&req.code, &req.code_verifier, &req.redirect_uri)
        else {
            return Err(token_error(
                "invalid_request",
                "code, code_verifier and redirect_uri are required",
            ));
        };
        let invalid = || token_error("invalid_grant", "the code is unknown, expired or spent");
        let hash = self.pepper.hash_hex(code.trim());
        let used = self
            .store
            .use_code(&hash)
            .await
            .map_err(|_| token_error("temporarily_unavailable", "try again"))?;
        let c = match used {
            CodeUse::Fresh(c) => c,
            CodeUse::Invalid => return Err(invalid()),
            CodeUse::Replayed(revoked) => {
                self.identity.observe_all(&revoked);
                tracing::warn!(client = %client.id, "an authorization code was presented twice; what it was exchanged for is revoked");
                return Err(token_error(
                    "invalid_grant",
                    "the code was used before; the tokens issued for it are revoked",
                ));
            }
        };
        let pkce_ok = pkce_shaped(verifier)
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                s256(verifier).as_bytes(),
                c.code_challenge.as_bytes(),
            ));
        if c.client_id != client.id || c.redirect_uri != *redirect_uri || !pkce_ok {
            return Err(invalid());
        }
        let settings = &self.tokens.settings;
        let now = now_millis();
        let secret = random_secret("kgr");
        let row = |kind, ttl, secret: Option<&str>| NewToken {
            id: None,
            kind,
            family_id: None,
            user_id: c.user_id.clone(),
            workspace_id: c.workspace_id.clone(),
            label: Some(client.name.clone()),
            secret_hash: secret.map(|s| self.pepper.hash_hex(s)),
            scopes: Some(c.scopes.clone()),
            grants: c.grants.clone(),
            expires_at: now + ms(ttl),
        };
        let (access, _) = self
            .store
            .issue_grant(
                &c.code_hash,
                &client.id,
                &row(TokenKind::Refresh, settings.refresh_ttl, Some(&secret)),
                &row(TokenKind::Scoped, settings.access_ttl, None),
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict(why) => token_error("invalid_grant", why),
                _ => token_error("temporarily_unavailable", "try again"),
            })?;
        let token = self
            .sign(JwtKind::Scoped, &access)
            .map_err(|_| token_error("temporarily_unavailable", "try again"))?;
        tracing::info!(client = %client.id, user = %access.user_id, token = %access.id, "code exchanged");
        Ok(TokenAnswer {
            access_token: token,
            token_type: "Bearer",
            expires_in: settings.access_ttl.as_secs() as i64,
            refresh_token: secret,
            scope: self.keys.policy.spell_scopes(&c.scopes).join(" "),
        })
    }

    async fn refresh_grant(
        &self,
        client: &OAuthClient,
        req: &TokenRequest,
        addr: Option<std::net::IpAddr>,
    ) -> Result<TokenAnswer, TokenError> {
        let Some(refresh) = &req.refresh_token else {
            return Err(token_error("invalid_request", "refresh_token is required"));
        };
        // Only a refresh token this application was given (failures are counted there).
        match self.refresh(refresh, addr, Some(&client.id)).await {
            Ok(issued) => Ok(TokenAnswer {
                access_token: issued.access_token.unwrap_or_default(),
                token_type: "Bearer",
                expires_in: issued.expires_in,
                refresh_token: issued.refresh_token.unwrap_or_default(),
                scope: issued_scope(&self.keys.policy, &issued.token_id, &self.store).await,
            }),
            Err(ManageError::Refused(Refusal::Unauthorized(_))) => Err(token_error(
                "invalid_grant",
                "the refresh token is unknown, spent or revoked",
            )),
            Err(_) => Err(token_error("temporarily_unavailable", "try again")),
        }
    }
}

/// The permissions of the token `id`, space-separated.
async fn issued_scope(
    policy: &crate::policy::PolicyEngine,
    id: &str,
    store: &crate::store::Store,
) -> String {
    match store.token(id).await {
        Ok(row) => policy
            .spell_scopes(row.scopes.as_deref().unwrap_or_default())
            .join(" "),
        Err(StoreError::NotFound(_)) | Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(pkce_shaped("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert!(!pkce_shaped("short"));
        assert!(!pkce_shaped(&"a".repeat(129)));
        assert!(!pkce_shaped(&format!("{}+", "a".repeat(50))));
    }

    #[test]
    fn redirect_uris_are_https_or_loopback_and_never_carry_a_fragment() {
        assert!(check_redirect_uri("https://app.example.com/callback").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:8123/cb").is_ok());
        assert!(check_redirect_uri("http://[::1]:9000/cb").is_ok());
        assert!(check_redirect_uri("http://localhost/cb").is_err());
        assert!(check_redirect_uri("http://app.example.com/cb").is_err());
        assert!(check_redirect_uri("https://app.example.com/cb#x").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
        assert!(check_redirect_uri("not a url").is_err());
    }

    #[test]
    fn the_redirect_keeps_the_registered_query_and_encodes_what_it_adds() {
        let r = redirect(
            "https://app.example.com/cb?tenant=1",
            &[("code", "kga_x"), ("state", "a b&c")],
        );
        assert_eq!(
            r.redirect_to,
            "https://app.example.com/cb?tenant=1&code=kga_x&state=a+b%26c"
        );
    }
}
