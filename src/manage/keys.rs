//! Key management: create, list, show, update, revoke, rotate, usage. One implementation behind
//! the control-plane API and the `keygate keys` CLI, so both follow the same rules.
//!
//! Who may do what is the policy files' decision (`management.cedar`): each call asks Cedar
//! about the action (`createKey`, `readKey`, `updateKey`, `revokeKey`, `rotateKey`) on the
//! credential concerned. The operator (the control-plane token, or the CLI on the database)
//! acts as an admin of the credential's workspace.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{choose_workspace, Actor, ManageError};
use crate::clock::{format_time, now_millis};
use crate::identity::Identity;
use crate::model::{self, Grant, KeyStyle, Pepper, EXPIRY_WARNING_MS};
use crate::policy::{PolicyEngine, Target, Verdict};
use crate::principal::Principal;
use crate::store::{KeyChanges, KeyRecord, NewKey, Store, StoreError, UsageDay};
use crate::usage::UsageRecorder;

/// The body of a create request (and the CLI's flags).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub scopes: Vec<String>,
    /// Absent or null: every provider, now and future.
    #[serde(default)]
    pub providers: Option<Vec<Grant>>,
    /// `30d`, `90d`, `1y` or `never`.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// A date or an RFC 3339 time.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The owner's email (operator only; an owner acts for themselves).
    #[serde(default)]
    pub owner: Option<String>,
    /// The workspace's name; may be left out when the owner belongs to exactly one.
    #[serde(default)]
    pub workspace: Option<String>,
}

/// The body of an update request. A field left out stays as it is; `providers: null` opens
/// the key to every provider; `expiresIn: "never"` removes the expiry.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateKey {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub providers: Option<Option<Vec<Grant>>>,
    #[serde(default)]
    pub expires_in: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// Distinguishes a field that is present with `null` from one left out.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub display_prefix: String,
    pub owner: String,
    pub workspace: String,
    pub scopes: Vec<String>,
    pub providers: Option<Vec<Grant>>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    /// Why keygate revoked the key itself (e.g. it was sent over plain HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    /// Set when an active key expires within 7 days.
    pub expires_soon: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
}

/// A created or rotated key: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewKeyView {
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    pub id: String,
    pub last_used_at: Option<String>,
    pub totals: UsageDay,
    pub days: Vec<UsageDay>,
}

pub struct KeyManager {
    pub store: Store,
    pub style: KeyStyle,
    pub pepper: Pepper,
    pub max_active_per_user: u32,
    /// The running data plane, told at once about changes made here.
    pub identity: Option<Arc<Identity>>,
    /// Counts not yet flushed, added to usage answers.
    pub usage: Option<Arc<UsageRecorder>>,
    /// Decides every management action.
    pub policy: Arc<PolicyEngine>,
}

/// What a refused management action tells the client.
fn refusal_message(details: &serde_json::Map<String, serde_json::Value>) -> String {
    match details.get("restriction").and_then(|v| v.as_str()) {
        Some("api_key") => "an API key cannot create, change or rotate keys".to_owned(),
        Some("scoped_token") => {
            "a scoped token cannot create, change or rotate keys or mint tokens; sign in".to_owned()
        }
        Some("login_required") => "only a signed-in user can do this".to_owned(),
        Some("ownership") => "that key belongs to another workspace".to_owned(),
        Some("role") => "only a workspace admin manages other people's keys".to_owned(),
        Some(other) => format!("permission denied ({other})"),
        None => "permission denied".to_owned(),
    }
}

/// How a key is shown: its scopes in the deployment's spelling.
fn view(policy: &PolicyEngine, r: &KeyRecord, last_used_override: Option<i64>) -> KeyView {
    let now = now_millis();
    let expired = r.expires_at.is_some_and(|e| e <= now);
    let status = if r.revoked_at.is_some() {
        "revoked"
    } else if expired {
        "expired"
    } else {
        "active"
    };
    let last_used = match (r.last_used_at, last_used_override) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    KeyView {
        id: r.id.clone(),
        name: r.name.clone(),
        display_prefix: r.display_prefix.clone(),
        owner: r.owner_email.clone(),
        workspace: r.workspace.clone(),
        scopes: policy.spell_scopes(&r.scopes),
        providers: r.grants.clone(),
        created_at: format_time(r.created_at),
        expires_at: r.expires_at.map(format_time),
        last_used_at: last_used.map(format_time),
        revoked_at: r.revoked_at.map(format_time),
        revoked_reason: r.revoked_reason.clone(),
        status,
        expires_soon: status == "active"
            && r.expires_at.is_some_and(|e| e - now <= EXPIRY_WARNING_MS),
        rotated_from: None,
    }
}

fn check_name(name: &str) -> Result<String, ManageError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ManageError::BadRequest(
            "a key needs a name of 1 to 100 printable characters".to_owned(),
        ));
    }
    Ok(name.to_owned())
}

fn expiry(
    expires_in: Option<&str>,
    expires_at: Option<&str>,
) -> Result<Option<Option<i64>>, ManageError> {
    let now = now_millis();
    match (expires_in, expires_at) {
        (Some(_), Some(_)) => Err(ManageError::BadRequest(
            "give expiresIn or expiresAt, not both".to_owned(),
        )),
        (Some(spec), None) | (None, Some(spec)) => model::parse_expiry(spec, now)
            .map(Some)
            .map_err(ManageError::BadRequest),
        (None, None) => Ok(None),
    }
}

impl KeyManager {
    /// Finds the live keys and scoped tokens that hold scopes the running policies do not
    /// define, records them in the policy status (and its metric) and warns about them.
    ///
    /// A policy change that removes a scope still held is not refused: removing one only ever
    /// takes access away (the scope grants nothing once no `@scope` group has its name), it may
    /// be exactly what an incident needs at once, and every instance reading the same files
    /// must reach the same set whatever its database says. The holders are named instead, so
    /// they can be reissued or have the scope taken off.
    pub async fn check_inert_scopes(&self) -> Result<usize, ManageError> {
        let known = self.policy.scopes();
        let found = self
            .store
            .credentials_with_scopes_outside(&known, now_millis())
            .await?;
        let count = found.len();
        let listed: Vec<crate::policy::InertScopes> = found
            .into_iter()
            .take(crate::policy::INERT_LISTED)
            .map(|(credential, id, scopes)| crate::policy::InertScopes {
                credential,
                id,
                scopes,
            })
            .collect();
        if count > 0 {
            let names: Vec<String> = listed
                .iter()
                .map(|c| format!("{} {} ({})", c.credential, c.id, c.scopes.join(", ")))
                .collect();
            tracing::warn!(
                credentials = count,
                "{count} live credential(s) hold scopes the policies no longer define; those \
                 scopes grant nothing until they are defined again: {}{}",
                names.join("; "),
                if count > listed.len() { "; ..." } else { "" }
            );
        }
        self.policy.set_inert(listed, count);
        Ok(count)
    }

    /// Asks the policies whether `actor` may do `action` to a credential.
    pub fn authorize(
        &self,
        actor: &Actor,
        action: &str,
        id: &str,
        owner_id: &str,
        workspace_id: &str,
    ) -> Result<(), ManageError> {
        let target = Target::Credential {
            id,
            owner: owner_id,
            workspace: workspace_id,
        };
        let verdict = self.decide_as(actor, action, target);
        if verdict.allowed {
            Ok(())
        } else {
            Err(ManageError::Forbidden(refusal_message(&verdict.details)))
        }
    }

    /// Asks the policies whether `actor` may operate keygate: `action` is one of the
    /// `operate` group (`readPolicies`, `reloadPolicies`, `readCertificates`,
    /// `reloadCertificates`, `readCluster`) on `Keygate::Service::"keygate"`.
    pub fn authorize_operation(&self, actor: &Actor, action: &str) -> Result<(), ManageError> {
        if self.decide_as(actor, action, Target::Service).allowed {
            Ok(())
        } else {
            Err(ManageError::Forbidden(format!(
                "permission denied: no policy allows {action} for this credential"
            )))
        }
    }

    /// The policies' decision for `actor` (the operator is `Keygate::Operator`).
    fn verdict(&self, actor: &Actor, action: &str, target: Target<'_>) -> Verdict {
        let operator;
        let principal: &Principal = match actor {
            Actor::Operator => {
                operator = Principal::operator();
                &operator
            }
            Actor::User(p) => p,
        };
        self.policy.decide_on(principal, action, target)
    }

    /// [`Self::verdict`], with a denial logged with its policies.
    fn decide_as(&self, actor: &Actor, action: &str, target: Target<'_>) -> Verdict {
        let verdict = self.verdict(actor, action, target);
        if !verdict.allowed {
            tracing::info!(action, policies = ?verdict.policies, "management action denied");
        }
        verdict
    }

    /// Whether the policies let `actor` read the key `r`: a listing's filter, which asks for
    /// every key it loads and so logs nothing when the answer is no.
    fn may_read(&self, actor: &Actor, r: &KeyRecord) -> bool {
        let target = Target::Credential {
            id: &r.id,
            owner: &r.owner_id,
            workspace: &r.workspace_id,
        };
        self.verdict(actor, "readKey", target).allowed
    }

    /// A key the actor may read, or not found (its existence is not revealed).
    async fn visible(&self, actor: &Actor, id: &str) -> Result<KeyRecord, ManageError> {
        let record = self.store.key(id).await?;
        self.authorize(
            actor,
            "readKey",
            &record.id,
            &record.owner_id,
            &record.workspace_id,
        )
        .map_err(|_| ManageError::NotFound(format!("no key with id '{id}'")))?;
        Ok(record)
    }

    /// Tells the running data plane about a change at once.
    fn announce(&self, r: &KeyRecord) {
        if let Some(identity) = &self.identity {
            identity.observe(&r.id, r.generation);
        }
    }

    /// Checks grants against the workspace's providers.
    pub async fn grants(
        &self,
        workspace_id: &str,
        grants: Option<&[Grant]>,
    ) -> Result<Option<Vec<Grant>>, ManageError> {
        let Some(grants) = grants else {
            return Ok(None);
        };
        let grants = model::parse_grants(grants).map_err(ManageError::BadRequest)?;
        if grants.is_empty() {
            return Err(ManageError::BadRequest(
                "providers must list at least one provider, or be left out for all".to_owned(),
            ));
        }
        for g in &grants {
            match self.store.provider_workspace(&g.provider).await? {
                Some(ws) if ws == workspace_id => {}
                _ => {
                    return Err(ManageError::BadRequest(format!(
                        "the key's workspace has no provider named '{}'",
                        g.provider
                    )))
                }
            }
        }
        Ok(Some(grants))
    }

    /// The owner and workspace of a key the operator creates: any user, in the workspace
    /// named (or their only one).
    async fn operator_target(&self, req: &CreateKey) -> Result<(String, String), ManageError> {
        let email = req.owner.as_deref().ok_or_else(|| {
            ManageError::BadRequest(
                "the operator must name the key's owner (owner: email)".to_owned(),
            )
        })?;
        let owner = self.store.user_by_email(email).await?;
        let memberships = self.store.memberships(&owner.id).await?;
        let (workspace_id, _, _) = choose_workspace(
            &memberships,
            req.workspace.as_deref(),
            &owner.email,
            ManageError::BadRequest,
        )?;
        Ok((owner.id, workspace_id))
    }

    /// The owner and workspace of a key a user creates. Always the workspace the user is
    /// signed in to. Another owner only for someone allowed to manage other people's keys
    /// there, asked before anything is looked up, and then only a member of that workspace:
    /// one refusal for every other case, so the answer never tells whether an email or a
    /// workspace exists elsewhere.
    async fn user_target(
        &self,
        actor: &Actor,
        p: &Principal,
        req: &CreateKey,
    ) -> Result<(String, String), ManageError> {
        if req.workspace.as_deref().is_some_and(|ws| ws != p.workspace) {
            return Err(ManageError::Forbidden(
                "keys are created in the workspace you are signed in to".to_owned(),
            ));
        }
        let email = match req.owner.as_deref().map(str::trim) {
            None => return Ok((p.user_id.clone(), p.workspace_id.clone())),
            Some(e) if e.eq_ignore_ascii_case(&p.user_email) => {
                return Ok((p.user_id.clone(), p.workspace_id.clone()))
            }
            Some(e) => e,
        };
        // Someone else's key: may this caller manage other people's keys here at all?
        self.authorize(actor, "createKey", "new", "\0another user", &p.workspace_id)?;
        let not_member = || {
            ManageError::NotFound(format!(
                "no member of this workspace has the email '{email}'"
            ))
        };
        let owner = match self.store.user_by_email(email).await {
            Ok(u) => u,
            Err(StoreError::NotFound(_) | StoreError::Invalid(_)) => return Err(not_member()),
            Err(e) => return Err(e.into()),
        };
        let member = self
            .store
            .memberships(&owner.id)
            .await?
            .iter()
            .any(|(ws, _, _)| *ws == p.workspace_id);
        if !member {
            return Err(not_member());
        }
        Ok((owner.id, p.workspace_id.clone()))
    }

    pub async fn create(&self, actor: &Actor, req: CreateKey) -> Result<NewKeyView, ManageError> {
        let name = check_name(&req.name)?;
        let scopes = self
            .policy
            .parse_scopes(&req.scopes)
            .map_err(ManageError::BadRequest)?;
        let (owner_id, workspace_id) = match actor {
            Actor::Operator => self.operator_target(&req).await?,
            Actor::User(p) => self.user_target(actor, p, &req).await?,
        };
        self.authorize(actor, "createKey", "new", &owner_id, &workspace_id)?;
        let grants = self.grants(&workspace_id, req.providers.as_deref()).await?;
        let expires_at = expiry(req.expires_in.as_deref(), req.expires_at.as_deref())?.flatten();
        self.insert(
            owner_id,
            workspace_id,
            name,
            scopes,
            grants,
            expires_at,
            None,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert(
        &self,
        owner_id: String,
        workspace_id: String,
        name: String,
        scopes: Vec<String>,
        grants: Option<Vec<Grant>>,
        expires_at: Option<i64>,
        rotated_from: Option<String>,
    ) -> Result<NewKeyView, ManageError> {
        let secret = self.style.generate();
        let new = NewKey {
            name,
            owner_id,
            workspace_id,
            display_prefix: model::display_prefix(&secret),
            secret_hash: self.pepper.hash_hex(&secret),
            scopes,
            grants,
            expires_at,
            rotated_from: rotated_from.clone(),
        };
        let record = self
            .store
            .insert_key(&new, self.max_active_per_user, rotated_from.as_deref())
            .await?;
        if let Some(old) = &rotated_from {
            if let Ok(old) = self.store.key(old).await {
                self.announce(&old);
            }
        }
        let mut view = view(&self.policy, &record, None);
        view.rotated_from = rotated_from;
        Ok(NewKeyView { key: secret, view })
    }

    pub async fn list(
        &self,
        actor: &Actor,
        owner: Option<&str>,
        workspace: Option<&str>,
        whole_workspace: bool,
    ) -> Result<Vec<KeyView>, ManageError> {
        let owner_id = match (actor, owner) {
            // Every key of the user's workspace that the policies let them read: a workspace
            // admin's whole workspace, anyone else's own keys.
            (Actor::User(_), _) if whole_workspace => None,
            (Actor::User(p), _) => Some(p.user_id.clone()),
            (Actor::Operator, Some(email)) => Some(self.store.user_by_email(email).await?.id),
            (Actor::Operator, None) => None,
        };
        let workspace_id = match (actor, workspace) {
            // The whole workspace is the one the user acts in, whatever else is named: a
            // listing never loads another workspace's keys only to filter every one out.
            (Actor::User(p), _) if whole_workspace => Some(p.workspace_id.clone()),
            (_, None) => None,
            (Actor::Operator, Some(name)) => Some(self.store.workspace_by_name(name).await?.id),
            // A user lists their own keys: a workspace they are not in, or one that does not
            // exist, has none of them, and both answer alike (an empty list).
            (Actor::User(_), Some(name)) => match self.store.workspace_by_name(name).await {
                Ok(ws) => Some(ws.id),
                Err(StoreError::NotFound(_) | StoreError::Invalid(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            },
        };
        let records = self
            .store
            .list_keys(owner_id.as_deref(), workspace_id.as_deref())
            .await?;
        Ok(records
            .iter()
            .filter(|r| self.may_read(actor, r))
            .map(|r| self.view_with_pending(r))
            .collect())
    }

    fn view_with_pending(&self, r: &KeyRecord) -> KeyView {
        let pending = self
            .usage
            .as_ref()
            .and_then(|u| u.pending(&r.id))
            .map(|(_, last)| last)
            .filter(|l| *l > 0);
        view(&self.policy, r, pending)
    }

    pub async fn show(&self, actor: &Actor, id: &str) -> Result<KeyView, ManageError> {
        let r = self.visible(actor, id).await?;
        Ok(self.view_with_pending(&r))
    }

    pub async fn update(
        &self,
        actor: &Actor,
        id: &str,
        req: UpdateKey,
    ) -> Result<KeyView, ManageError> {
        let current = self.visible(actor, id).await?;
        self.authorize(
            actor,
            "updateKey",
            &current.id,
            &current.owner_id,
            &current.workspace_id,
        )?;
        let changes = KeyChanges {
            name: req.name.as_deref().map(check_name).transpose()?,
            scopes: req
                .scopes
                .as_deref()
                .map(|s| self.policy.parse_scopes(s))
                .transpose()
                .map_err(ManageError::BadRequest)?,
            grants: match &req.providers {
                None => None,
                Some(list) => Some(self.grants(&current.workspace_id, list.as_deref()).await?),
            },
            expires_at: expiry(req.expires_in.as_deref(), req.expires_at.as_deref())?,
        };
        let r = self.store.update_key(id, &changes).await?;
        self.announce(&r);
        Ok(view(&self.policy, &r, None))
    }

    pub async fn revoke(&self, actor: &Actor, id: &str) -> Result<KeyView, ManageError> {
        let current = self.visible(actor, id).await?;
        self.authorize(
            actor,
            "revokeKey",
            &current.id,
            &current.owner_id,
            &current.workspace_id,
        )?;
        let r = self.store.revoke_key(id).await?;
        self.announce(&r);
        Ok(view(&self.policy, &r, None))
    }

    /// Revokes a key keygate found leaked (no actor: keygate itself acts), with the reason its
    /// owner sees.
    pub async fn revoke_leaked(&self, id: &str, reason: &str) -> Result<KeyView, ManageError> {
        let r = self.store.revoke_key_because(id, Some(reason)).await?;
        self.announce(&r);
        Ok(view(&self.policy, &r, None))
    }

    /// A new secret with the same settings; the old key is revoked in the same transaction.
    pub async fn rotate(&self, actor: &Actor, id: &str) -> Result<NewKeyView, ManageError> {
        let old = self.visible(actor, id).await?;
        self.authorize(
            actor,
            "rotateKey",
            &old.id,
            &old.owner_id,
            &old.workspace_id,
        )?;
        if old.revoked_at.is_some() {
            return Err(ManageError::Conflict(format!(
                "key '{id}' is revoked; create a new one"
            )));
        }
        self.insert(
            old.owner_id,
            old.workspace_id,
            old.name,
            old.scopes,
            old.grants,
            old.expires_at,
            Some(old.id),
        )
        .await
    }

    pub async fn usage(&self, actor: &Actor, id: &str) -> Result<UsageView, ManageError> {
        let r = self.visible(actor, id).await?;
        let mut days = self.store.usage(id).await?;
        let mut last = r.last_used_at;
        if let Some((pending, pending_last)) = self.usage.as_ref().and_then(|u| u.pending(id)) {
            if pending_last > 0 {
                last = Some(last.map_or(pending_last, |l| l.max(pending_last)));
            }
            if pending.requests > 0 || pending.bytes_in > 0 || pending.bytes_out > 0 {
                match days.iter_mut().find(|d| d.day == pending.day) {
                    Some(d) => {
                        d.requests += pending.requests;
                        d.denied += pending.denied;
                        d.bytes_in += pending.bytes_in;
                        d.bytes_out += pending.bytes_out;
                    }
                    None => days.push(pending),
                }
            }
        }
        let totals = days.iter().fold(
            UsageDay {
                day: "total".to_owned(),
                ..UsageDay::default()
            },
            |mut t, d| {
                t.requests += d.requests;
                t.denied += d.denied;
                t.bytes_in += d.bytes_in;
                t.bytes_out += d.bytes_out;
                t
            },
        );
        Ok(UsageView {
            id: r.id,
            last_used_at: last.map(format_time),
            totals,
            days,
        })
    }
}
