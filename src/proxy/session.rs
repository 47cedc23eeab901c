//! Session-JWT formats (Conan): the login endpoints tokengate answers itself,
//! and the session JWT that later requests carry, turned back into the
//! deploy token it was issued to. The decision stays in [`crate::auth`].

use std::sync::Arc;

use http::request::Parts;
use http::Response;

use super::{Outcome, Proxy, ProxyError, ResponseBody};
use crate::auth::{self, Ask, Denial};
use crate::format::{self, Access, Format, SessionEndpoint};
use crate::oci::RegistryAuth;
use crate::route::Matched;
use crate::token::TokenRecord;

impl Proxy {
    /// Answers a login endpoint. A login needs a deploy token that could use
    /// the route at all (either scope, the route's namespace), so a token of
    /// another project is refused here rather than on its first download.
    pub(super) async fn answer_session(
        &self,
        registry: &RegistryAuth,
        endpoint: SessionEndpoint,
        head: &Parts,
        matched: &Matched<'_>,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let format = &*matched.route.format;
        let (record, username) = match endpoint {
            SessionEndpoint::Login => {
                let presented =
                    format::basic_credentials(&head.headers)?.ok_or(ProxyError::NoCredentials)?;
                let record = self.token_for_secret(&presented.secret).await?;
                (record, presented.username)
            }
            SessionEndpoint::Check => self.session_token(registry, head, format).await?,
        };
        outcome.token_id = record.as_ref().map(|r| r.id);
        let ask = Ask {
            username: username.as_deref(),
            namespace: &matched.namespace,
            access: Access::ReadForWrite,
            scopes: format.scopes_for(Access::ReadForWrite),
        };
        let now = chrono::Utc::now();
        auth::decide(record.as_deref(), &ask, now).map_err(|d| ProxyError::denied(d, format))?;
        let token = record.expect("allowed implies a record");
        self.last_used.mark(token.id, now.timestamp());
        let body = match endpoint {
            SessionEndpoint::Login => {
                outcome.decision = "token_issued";
                registry.issue_session(&token, format.name(), now)
            }
            SessionEndpoint::Check => {
                outcome.decision = "allowed";
                token.username.clone()
            }
        };
        Ok(super::own_response(body, "text/plain"))
    }

    /// The deploy token behind a request's session JWT (`Bearer`), and the
    /// username the JWT was issued to. An invalid or expired JWT is a 401, on
    /// which clients log in again.
    pub(super) async fn session_token(
        &self,
        registry: &RegistryAuth,
        head: &Parts,
        format: &dyn Format,
    ) -> Result<(Option<Arc<TokenRecord>>, Option<String>), ProxyError> {
        let presented =
            format::credentials(format, &head.headers)?.ok_or(ProxyError::NoCredentials)?;
        let claims = registry.verify_session(&presented.secret, format.name())?;
        let id = claims.deploy_token_id.ok_or(Denial::UnknownToken)?;
        Ok((self.token_by_id(id).await?, Some(claims.sub)))
    }
}
