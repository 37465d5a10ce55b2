//! Who is calling the control plane: the [`Caller`] extractor every authenticated endpoint uses,
//! and the client's address. The operator token is checked here; every user credential goes
//! through the same door as on the data plane ([`Identity::authenticate`]), which counts every
//! failure against the client's address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::ControlState;
use crate::identity::Presented;
use crate::manage::{Actor, ManageError};

/// The client's address, when the listener recorded it.
pub struct ClientAddr(pub Option<IpAddr>);

/// The peer, or the client a trusted proxy names (`identity::client`).
fn client_addr(parts: &Parts, st: &ControlState) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| st.trusted_proxies.client(c.0.ip(), &parts.headers))
}

impl FromRequestParts<ControlState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &ControlState,
    ) -> Result<ClientAddr, Self::Rejection> {
        Ok(ClientAddr(client_addr(parts, st)))
    }
}

/// True when the request carries the operator token (compared in constant time).
pub fn is_operator(st: &ControlState, headers: &axum::http::HeaderMap) -> bool {
    let (Some(token), Some(value)) = (&st.operator_token, headers.get(http::header::AUTHORIZATION))
    else {
        return false;
    };
    let presented = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
    presented.is_some_and(|p| bool::from(p.trim().as_bytes().ct_eq(token.as_bytes())))
}

/// The authenticated caller: the operator token, or a user through any credential.
pub struct Caller(pub Actor);

impl FromRequestParts<ControlState> for Caller {
    type Rejection = ManageError;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &ControlState,
    ) -> Result<Caller, ManageError> {
        if is_operator(st, &parts.headers) {
            return Ok(Caller(Actor::Operator));
        }
        let presented = Presented {
            method: &parts.method,
            headers: &parts.headers,
            query: None,
            client: client_addr(parts, st),
            basic: false,
        };
        let principal = st.identity.authenticate(presented).await?;
        Ok(Caller(Actor::User(principal)))
    }
}
