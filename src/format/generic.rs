//! Generic HTTP file stores: any of the common credential headers, REST verbs.

use http::Method;

use super::{read_or_write, Access, CredentialSource, Format};

pub struct Generic;

impl Format for Generic {
    fn name(&self) -> &'static str {
        "generic"
    }

    fn credential_sources(&self) -> &'static [CredentialSource] {
        &[
            CredentialSource::DeployTokenHeader,
            CredentialSource::Basic,
            CredentialSource::Bearer,
        ]
    }

    fn access(&self, method: &Method, _rest: &[&str], _query: Option<&str>) -> Access {
        read_or_write(method, &[Method::PUT, Method::POST, Method::DELETE])
    }
}
