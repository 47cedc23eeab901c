//! PyPI: pip and twine send Basic; uploads are POSTs of the legacy upload API.

use http::Method;

use super::{read_or_write, Access, CredentialSource, Format};

pub struct PyPi;

impl Format for PyPi {
    fn name(&self) -> &'static str {
        "pypi"
    }

    fn credential_sources(&self) -> &'static [CredentialSource] {
        &[CredentialSource::Basic]
    }

    /// Uploads are POSTs to the upload URL itself (the route's root, or
    /// `legacy/` as on pypi.org); a POST anywhere else is no upload:
    /// pypiserver's `RPC2`, an XML-RPC search of every package on the
    /// server, would give write-only tokens a read.
    fn access(&self, method: &Method, rest: &[&str], _query: Option<&str>) -> Access {
        match rest {
            [] | ["legacy"] => read_or_write(method, &[Method::POST]),
            _ => read_or_write(method, &[]),
        }
    }

    /// Simple-index pages may link to files by absolute URL.
    fn rewrites_metadata(&self, method: &Method, rest: &[&str]) -> bool {
        method == Method::GET && rest.first() == Some(&"simple")
    }

    /// twine uploads a multipart form.
    fn uploads_multipart(&self) -> bool {
        true
    }
}
