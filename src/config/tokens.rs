//! `[tokens]`, `[sessions]`, `[auth]` (logins) and `[[issuers]]`: what logins issue and which
//! external issuers are trusted.

use super::check::{duration, problem, Problem};
use super::file::FileConfig;

pub(super) fn token_settings(
    file: &FileConfig,
    problems: &mut Vec<Problem>,
) -> crate::identity::jwt::TokenSettings {
    use crate::identity::jwt::{IssuerConfig, JwksSource, TokenSettings, MAX_LEEWAY};
    let d = TokenSettings::default();
    let t = &file.tokens;
    let mut ttl = |place: &str, raw: &Option<String>, default| {
        duration(problems, place, raw.as_deref(), default)
    };
    let mobile_ttl = ttl("[tokens] mobile_ttl", &t.mobile_ttl, d.mobile_ttl);
    let access_ttl = ttl("[tokens] access_ttl", &t.access_ttl, d.access_ttl);
    let refresh_ttl = ttl("[tokens] refresh_ttl", &t.refresh_ttl, d.refresh_ttl);
    let scoped_default_ttl = ttl(
        "[tokens] scoped_default_ttl",
        &t.scoped_default_ttl,
        d.scoped_default_ttl,
    );
    let scoped_max_ttl = ttl(
        "[tokens] scoped_max_ttl",
        &t.scoped_max_ttl,
        d.scoped_max_ttl,
    );
    let session_ttl = ttl("[sessions] ttl", &file.sessions.ttl, d.session_ttl);
    let leeway = match t.leeway.as_deref() {
        None => d.leeway,
        Some(raw) => match humantime::parse_duration(raw) {
            Ok(l) if l <= MAX_LEEWAY => l,
            _ => {
                problem(
                    problems,
                    "[tokens] leeway",
                    format!("'{raw}' is not a duration of at most 30s"),
                );
                d.leeway
            }
        },
    };
    if scoped_default_ttl > scoped_max_ttl {
        problem(
            problems,
            "[tokens] scoped_default_ttl",
            "must not exceed scoped_max_ttl",
        );
    }
    let non_empty = |problems: &mut Vec<Problem>,
                     place: &str,
                     v: &Option<String>,
                     default: &str| match v.as_deref().map(str::trim) {
        None => default.to_owned(),
        Some("") => {
            problem(problems, place, "must not be empty");
            default.to_owned()
        }
        Some(v) => v.to_owned(),
    };
    let issuer = non_empty(problems, "[tokens] issuer", &t.issuer, &d.issuer);
    let audience = non_empty(problems, "[tokens] audience", &t.audience, &d.audience);
    let session_cookie = non_empty(
        problems,
        "[sessions] cookie",
        &file.sessions.cookie,
        &d.session_cookie,
    );
    if !session_cookie
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        problem(
            problems,
            "[sessions] cookie",
            "may hold only letters, digits, '-' and '_'",
        );
    }
    let allowed_origins = file.sessions.allowed_origins.clone().unwrap_or_default();
    for (i, o) in allowed_origins.iter().enumerate() {
        let ok = http::Uri::try_from(o.as_str()).is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && matches!(u.path(), "" | "/")
        });
        if !ok {
            problem(
                problems,
                format!("[sessions] allowed_origins[{i}]"),
                format!("'{o}' is not an origin such as 'https://app.example'"),
            );
        }
    }
    let mut issuers = Vec::new();
    for (i, s) in file.issuers.iter().enumerate() {
        let place = format!("[[issuers]] {i} ({})", s.name);
        let jwks = match (&s.jwks_file, &s.jwks_url) {
            (Some(f), None) => JwksSource::File(f.into()),
            (None, Some(u)) if u.starts_with("https://") || u.starts_with("http://") => {
                JwksSource::Url(u.clone())
            }
            _ => {
                problem(
                    problems,
                    &place,
                    "needs jwks_file or jwks_url (an http(s) address), not both",
                );
                continue;
            }
        };
        let mut algorithms = Vec::new();
        for a in s
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["RS256".to_owned()])
        {
            match a.parse::<jsonwebtoken::Algorithm>() {
                Ok(
                    jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512,
                )
                | Err(_) => problem(
                    problems,
                    format!("{place} algorithms"),
                    format!("'{a}' is not an asymmetric JWS algorithm (RS256, ES256, EdDSA, ...)"),
                ),
                Ok(alg) => algorithms.push(alg),
            }
        }
        if algorithms.is_empty() {
            problem(
                problems,
                format!("{place} algorithms"),
                "needs at least one",
            );
            continue;
        }
        if s.issuer == issuer {
            problem(
                problems,
                format!("{place} issuer"),
                "is keygate's own issuer",
            );
        }
        let user_claim = s.user_claim.clone().unwrap_or_else(|| "email".to_owned());
        let subjects = s.subjects.clone().unwrap_or_default();
        if user_claim != "email" && subjects.is_empty() {
            problem(
                problems,
                format!("{place} user_claim"),
                format!(
                    "'{user_claim}' is not a verified email: bind its values to keygate users in \
                     [issuers.subjects] (claims such as preferred_username can be changed at the \
                     provider), or use 'email', which requires email_verified"
                ),
            );
        }
        if user_claim == "email" && !subjects.is_empty() {
            problem(
                problems,
                format!("{place} subjects"),
                "binds values of a claim other than email: set user_claim (to 'sub', say)",
            );
        }
        issuers.push(IssuerConfig {
            name: s.name.clone(),
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            jwks,
            algorithms,
            user_claim,
            subjects,
            workspace: s.workspace.clone(),
            refresh_interval: duration(
                problems,
                &format!("{place} jwks_refresh"),
                s.jwks_refresh.as_deref(),
                std::time::Duration::from_secs(600),
            ),
        });
    }
    let a = &file.auth;
    TokenSettings {
        issuer,
        audience,
        leeway,
        mobile_ttl,
        access_ttl,
        refresh_ttl,
        scoped_default_ttl,
        scoped_max_ttl,
        max_scoped_per_user: t
            .max_scoped_per_user
            .unwrap_or(d.max_scoped_per_user)
            .max(1),
        session_ttl,
        session_cookie,
        allowed_origins,
        login_failures_per_account: a
            .login_failures_per_account
            .unwrap_or(d.login_failures_per_account)
            .max(1),
        login_failures_per_address: a
            .login_failures_per_address
            .unwrap_or(d.login_failures_per_address)
            .max(1),
        password_workers: a.password_workers.unwrap_or(d.password_workers).max(1),
        password_queue: a.password_queue.unwrap_or(d.password_queue).max(1),
        limiter_capacity: a.limiter_capacity.unwrap_or(d.limiter_capacity).max(100),
        issuers,
    }
}
