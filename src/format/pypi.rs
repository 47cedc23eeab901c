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

    fn access(&self, method: &Method, _rest: &[&str], _query: Option<&str>) -> Access {
        read_or_write(method, &[Method::POST])
    }

    /// Simple-index pages may link to files by absolute URL.
    fn rewrites_metadata(&self, method: &Method, rest: &[&str]) -> bool {
        method == Method::GET && rest.first() == Some(&"simple")
    }
}
