//! Maven: Basic from `settings.xml`, or GitLab's `Deploy-Token` header via `httpHeaders`.

use http::Method;

use super::{read_or_write, Access, CredentialSource, Format};

pub struct Maven;

impl Format for Maven {
    fn name(&self) -> &'static str {
        "maven"
    }

    fn credential_sources(&self) -> &'static [CredentialSource] {
        &[CredentialSource::Basic, CredentialSource::DeployTokenHeader]
    }

    /// `maven-metadata.xml` (and its checksums) is read by `mvn deploy` between
    /// uploads, and a deploy fails unless that read answers 200 or 404: a
    /// write-only token may read it.
    fn access(&self, method: &Method, rest: &[&str], _query: Option<&str>) -> Access {
        let access = read_or_write(method, &[Method::PUT, Method::POST, Method::DELETE]);
        let is_metadata = rest.last().is_some_and(|f| is_metadata_file(f));
        if access == Access::Read && is_metadata {
            Access::ReadForWrite
        } else {
            access
        }
    }
}

/// `maven-metadata.xml` or one of its checksums or signature, and nothing
/// else that merely starts like it (`maven-metadata.xml.bak` is a file).
fn is_metadata_file(name: &str) -> bool {
    name.strip_prefix("maven-metadata.xml")
        .is_some_and(|suffix| {
            matches!(
                suffix,
                "" | ".md5" | ".sha1" | ".sha256" | ".sha512" | ".asc"
            )
        })
}
