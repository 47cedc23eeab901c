//! The one place where request failures become responses. Each failure
//! knows which side caused it — the client (4xx), the upstream (502/504) or
//! tokengate itself (503/500) — and answers with a body the stock clients print.

use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};

use super::ResponseBody;
use crate::auth::Denial;
use crate::format::{CredentialError, Format};
use crate::oci::{JwtError, TokenRequestError};
use crate::route::{MatchError, PathError};
use crate::store::StoreError;

/// Why a request was not forwarded, or why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    BadPath(#[from] PathError),
    #[error("no route for this path")]
    NoRoute,
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("invalid namespace in the path")]
    BadNamespace,
    #[error("deploy token required")]
    NoCredentials,
    #[error(transparent)]
    BadCredentials(#[from] CredentialError),
    #[error("{0}")]
    Denied(#[from] Denial),
    /// A request the route's format never allows, in the format's words.
    #[error("{0}")]
    Refused(&'static str),
    #[error("too many failed authentication attempts from this address; try again later")]
    TooManyFailures,
    #[error("token store unavailable")]
    StoreUnavailable(Arc<StoreError>),
    /// The client's request body broke off while it was being forwarded.
    #[error("the request body was cut off or badly framed; the upload was not completed")]
    BodyBroken,
    #[error("the request body stalled: no data for longer than the proxy waits; the upload was not completed")]
    BodyStalled,
    #[error("upstream {0} unreachable")]
    UpstreamUnreachable(String),
    #[error("upstream {0} did not answer in time")]
    UpstreamTimeout(String),
    #[error("upstream {0} refused the proxy's own login")]
    UpstreamLogin(String),
    #[error("upstream {0} sent metadata that could not be rewritten")]
    UpstreamMetadata(String),
    /// Too much metadata is being rewritten at once (see `MetadataBudget`).
    #[error("the proxy is busy rewriting other metadata; try again shortly")]
    MetadataBusy,
    #[error(transparent)]
    TokenRequest(#[from] TokenRequestError),
    #[error(transparent)]
    BadRegistryToken(#[from] JwtError),
    #[error("the registry token does not grant this; ask the token endpoint for it")]
    InsufficientScope,
    /// A request the proxy will not pass in any form, and why.
    #[error("{0}")]
    BadRequest(&'static str),
    /// Forward auth: a check request that does not describe a request.
    #[error("{0}")]
    BadCheck(&'static str),
    #[error("this address is not a trusted edge proxy: it may not ask for decisions")]
    UntrustedPeer,
    #[error("tokengate answers this path itself: route it to tokengate's proxy listener")]
    OwnEndpoint,
    #[error("allowed only with a change the proxy mode makes to the request ({0}); forward auth cannot make it")]
    NeedsProxyMode(&'static str),
}

/// How refusals are told to a client: the challenge on 401 and the body's shape.
#[derive(Debug, Clone)]
pub struct ErrorStyle {
    pub challenge: HeaderValue,
    /// Registry error bodies (`{"errors":[{"code","message","detail"}]}`)
    /// instead of `{"message"}`.
    pub registry: bool,
}

impl Default for ErrorStyle {
    fn default() -> Self {
        ErrorStyle {
            challenge: HeaderValue::from_static("Basic realm=\"tokengate\""),
            registry: false,
        }
    }
}

impl From<MatchError> for ProxyError {
    fn from(e: MatchError) -> Self {
        match e {
            MatchError::NoRoute => ProxyError::NoRoute,
            MatchError::Path(p) => ProxyError::BadPath(p),
            MatchError::InvalidNamespace => ProxyError::BadNamespace,
        }
    }
}

/// Which side a failure belongs to, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

impl ProxyError {
    /// A denial, with outright refusals told in the format's words.
    pub fn denied(denial: Denial, format: &dyn Format) -> ProxyError {
        match denial {
            Denial::AccessRefused => ProxyError::Refused(format.refusal()),
            other => other.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_) | ProxyError::BadNamespace => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoCredentials | ProxyError::BadCredentials(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Denied(d) if d.is_unauthenticated() => StatusCode::UNAUTHORIZED,
            ProxyError::Denied(_)
            | ProxyError::Refused(_)
            | ProxyError::UntrustedPeer
            | ProxyError::OwnEndpoint
            | ProxyError::NeedsProxyMode(_) => StatusCode::FORBIDDEN,
            ProxyError::BadCheck(_) | ProxyError::BadRequest(_) | ProxyError::BodyBroken => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            ProxyError::TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::StoreUnavailable(_) | ProxyError::MetadataBusy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamLogin(_)
            | ProxyError::UpstreamMetadata(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::TokenRequest(TokenRequestError::UnknownService(_)) => StatusCode::NOT_FOUND,
            ProxyError::TokenRequest(TokenRequestError::BadScope(_)) => StatusCode::BAD_REQUEST,
            ProxyError::TokenRequest(TokenRequestError::OtherAccount) => StatusCode::FORBIDDEN,
            ProxyError::BadRegistryToken(_) | ProxyError::InsufficientScope => {
                StatusCode::UNAUTHORIZED
            }
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::StoreUnavailable(_) | ProxyError::MetadataBusy => Side::Internal,
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamLogin(_)
            | ProxyError::UpstreamMetadata(_) => Side::Upstream,
            _ => Side::Downstream,
        }
    }

    /// A wrong credential (not a missing one): counts towards the per-address limit.
    pub fn is_failed_authentication(&self) -> bool {
        match self {
            ProxyError::BadCredentials(_) | ProxyError::BadRegistryToken(_) => true,
            ProxyError::Denied(d) => d.is_unauthenticated(),
            _ => false,
        }
    }

    /// Why, in one word, for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::NoRoute => "no_route",
            ProxyError::HeadTooLarge(_) => "head_too_large",
            ProxyError::BadNamespace => "bad_namespace",
            ProxyError::NoCredentials => "no_credentials",
            ProxyError::BadCredentials(_) => "bad_credentials",
            ProxyError::Denied(d) => match d {
                Denial::UnknownToken => "unknown_token",
                Denial::Revoked => "revoked",
                Denial::Expired => "expired",
                Denial::UsernameMismatch => "wrong_username",
                Denial::AccessRefused => "refused",
                Denial::MissingScope(_) => "missing_scope",
                Denial::NamespaceNotCovered(_) => "namespace",
            },
            ProxyError::Refused(_) => "refused",
            ProxyError::TooManyFailures => "rate_limited",
            ProxyError::StoreUnavailable(_) => "store_unavailable",
            ProxyError::BodyBroken => "body_broken",
            ProxyError::BodyStalled => "body_stalled",
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamLogin(_) => "upstream_login",
            ProxyError::UpstreamMetadata(_) => "upstream_metadata",
            ProxyError::MetadataBusy => "metadata_busy",
            ProxyError::TokenRequest(_) => "bad_token_request",
            ProxyError::BadRegistryToken(_) => "bad_registry_token",
            ProxyError::InsufficientScope => "insufficient_scope",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadCheck(_) => "bad_check_request",
            ProxyError::UntrustedPeer => "untrusted_peer",
            ProxyError::OwnEndpoint => "own_endpoint",
            ProxyError::NeedsProxyMode(_) => "needs_proxy_mode",
        }
    }

    /// The decision label used in logs.
    pub fn decision(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "no_route",
            StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "bad_request",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            _ => "error",
        }
    }

    /// The response. `close` asks the client to drop the connection, for
    /// requests whose body was never read (`Expect: 100-continue` uploads).
    pub fn into_response(self, close: bool, style: &ErrorStyle) -> Response<ResponseBody> {
        let status = self.status();
        let message = self.to_string();
        let body = if style.registry {
            serde_json::json!({ "errors": [{
                "code": registry_code(status, &self),
                "message": message,
                "detail": null,
            }]})
        } else {
            serde_json::json!({ "message": message, "error": message })
        }
        .to_string();
        let mut response = super::own_response(body, "application/json");
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, style.challenge.clone());
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        if matches!(self, ProxyError::MetadataBusy) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The distribution API error code for a refusal.
fn registry_code(status: StatusCode, error: &ProxyError) -> &'static str {
    match (status, error) {
        (_, ProxyError::BadNamespace) => "NAME_INVALID",
        (StatusCode::NOT_FOUND, ProxyError::NoRoute) => "NAME_UNKNOWN",
        (StatusCode::UNAUTHORIZED, _) => "UNAUTHORIZED",
        (StatusCode::FORBIDDEN, _) => "DENIED",
        (StatusCode::TOO_MANY_REQUESTS, _) => "TOOMANYREQUESTS",
        (s, _) if s.is_client_error() => "UNSUPPORTED",
        _ => "UNAVAILABLE",
    }
}
