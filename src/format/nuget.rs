//! NuGet (v3 API, and v2 push as `nuget.exe` sends it): Basic with the
//! deploy token's username, or the token as `X-NuGet-ApiKey` on pushes and
//! deletes. The service index and the other JSON documents carry absolute
//! upstream URLs (`@id`, `packageContent`, resource URLs); they are rewritten
//! to the proxy's public URL so that clients keep coming through tokengate.

use http::Method;

use super::{read_or_write, Access, CredentialSource, Format};

pub struct NuGet;

impl Format for NuGet {
    fn name(&self) -> &'static str {
        "nuget"
    }

    fn credential_sources(&self) -> &'static [CredentialSource] {
        &[CredentialSource::Basic, CredentialSource::NuGetApiKey]
    }

    /// `nuget push` first GETs the publish endpoint itself (`api/v2/package`)
    /// and gives up unless that succeeds, so either scope may read that one
    /// URL (it lists nothing), and a write-only token can push.
    ///
    /// NuGet.Server's `clear-cache` rebuilds the server's package cache on a
    /// GET: an act on the whole server, refused.
    fn access(&self, method: &Method, rest: &[&str], _query: Option<&str>) -> Access {
        let access = read_or_write(method, &[Method::PUT, Method::DELETE]);
        // ASP.NET routes ignore case.
        if rest
            .last()
            .is_some_and(|s| s.eq_ignore_ascii_case("clear-cache"))
        {
            Access::Refused
        } else if access == Access::Read && rest.ends_with(&["api", "v2", "package"]) {
            Access::ReadForWrite
        } else {
            access
        }
    }

    /// Every JSON document may name upstream URLs; packages are never read.
    fn rewrites_metadata(&self, method: &Method, rest: &[&str]) -> bool {
        method == Method::GET
            && !rest
                .last()
                .is_some_and(|f| f.ends_with(".nupkg") || f.ends_with(".snupkg"))
    }

    /// `nuget push` sends the package as a multipart form.
    fn uploads_multipart(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pushes_and_documents() {
        assert_eq!(
            NuGet.access(&Method::GET, &["v3", "index.json"], None),
            Access::Read
        );
        assert_eq!(
            NuGet.access(&Method::PUT, &["api", "v2", "package"], None),
            Access::Write
        );
        assert_eq!(
            NuGet.access(
                &Method::DELETE,
                &["api", "v2", "package", "x", "1.0.0"],
                None
            ),
            Access::Write
        );
        assert_eq!(
            NuGet.access(&Method::POST, &["api", "v2", "package"], None),
            Access::Refused
        );
        assert_eq!(
            NuGet.access(&Method::GET, &["api", "v2", "package"], None),
            Access::ReadForWrite
        );
        assert_eq!(
            NuGet.access(&Method::GET, &["api", "clear-cache"], None),
            Access::Refused
        );
        assert_eq!(
            NuGet.access(&Method::GET, &["nuget", "Clear-Cache"], None),
            Access::Refused
        );
        assert!(NuGet.rewrites_metadata(&Method::GET, &["v3", "index.json"]));
        assert!(NuGet.rewrites_metadata(&Method::GET, &["v3", "registration", "x", "index.json"]));
        assert!(
            !NuGet.rewrites_metadata(&Method::GET, &["v3", "flat", "x", "1.0.0", "x.1.0.0.nupkg"])
        );
        assert!(!NuGet.rewrites_metadata(&Method::PUT, &["api", "v2", "package"]));
    }
}
