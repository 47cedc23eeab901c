//! Finding the deploy token behind a request's credential: by its secret
//! (digest lookup) or, for tokengate's own JWTs, by the id they name. Both go
//! through the cache; a store failure is a 503, never an allow.

use std::sync::Arc;

use super::{Proxy, ProxyError};
use crate::auth::Denial;
use crate::cache::Lookup;
use crate::token::{self, Digest, TokenRecord};

impl Proxy {
    /// The token a presented secret is (`None`: no such token). A secret
    /// that is not even well formed never reaches the cache or the store.
    pub(super) async fn token_for_secret(
        &self,
        secret: &str,
    ) -> Result<Option<Arc<TokenRecord>>, ProxyError> {
        if !token::well_formed(secret) {
            return Err(Denial::UnknownToken.into());
        }
        let lookup = self
            .resolver
            .resolve(Digest::of(secret))
            .await
            .map_err(ProxyError::StoreUnavailable)?;
        Ok(found(lookup))
    }

    /// The token a verified JWT names by id.
    pub(super) async fn token_by_id(
        &self,
        id: i64,
    ) -> Result<Option<Arc<TokenRecord>>, ProxyError> {
        let lookup = self
            .resolver
            .resolve_id(id)
            .await
            .map_err(ProxyError::StoreUnavailable)?;
        Ok(found(lookup))
    }
}

fn found(lookup: Lookup) -> Option<Arc<TokenRecord>> {
    match lookup {
        Lookup::Found(record) => Some(record),
        Lookup::Absent => None,
    }
}
