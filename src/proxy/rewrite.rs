//! Keeping clients on the proxy: upstream URLs in `Location` headers and in
//! registry metadata (npm `dist.tarball`, PyPI simple-index links) are mapped
//! from the upstream's path space to the proxy's public URL and route prefix.

/// Maps upstream URLs to public ones for one matched route.
pub struct UrlMap {
    /// The upstream as `http://authority` and `https://authority` (an upstream
    /// that honours `X-Forwarded-Proto` writes the public scheme).
    upstream_origins: [String; 2],
    /// The proxy's public origin, which an upstream honouring `X-Forwarded-Host` writes.
    public_origin: String,
    /// Upstream path that corresponds to `public_path`.
    upstream_base: String,
    /// Public base path plus, with `strip_prefix`, the matched route prefix.
    public_path: String,
}

impl UrlMap {
    pub fn new(
        upstream_authority: &str,
        upstream_base: &str,
        public_origin: &str,
        public_path: String,
    ) -> UrlMap {
        UrlMap {
            upstream_origins: [
                format!("http://{upstream_authority}"),
                format!("https://{upstream_authority}"),
            ],
            public_origin: public_origin.to_string(),
            upstream_base: upstream_base.to_string(),
            public_path,
        }
    }

    /// Maps an upstream-space path to a public one, if it lies under the upstream base.
    fn map_path<'a>(&self, path: &'a str) -> Option<(&str, &'a str)> {
        let rest = path.strip_prefix(self.upstream_base.as_str())?;
        (rest.is_empty() || rest.starts_with(['/', '?']))
            .then_some((self.public_path.as_str(), rest))
    }

    /// Rewrites a `Location` value; `None` leaves it as it is (another host).
    pub fn location(&self, value: &str) -> Option<String> {
        let path = self
            .upstream_origins
            .iter()
            .chain(std::iter::once(&self.public_origin))
            .find_map(|origin| {
                value
                    .strip_prefix(origin.as_str())
                    .filter(|p| p.is_empty() || p.starts_with('/'))
            })
            .or_else(|| {
                value
                    .starts_with('/')
                    .then_some(value)
                    .filter(|v| !v.starts_with("//"))
            })?;
        let (public, rest) = self.map_path(if path.is_empty() { "/" } else { path })?;
        Some(format!("{}{public}{rest}", self.public_origin))
    }

    /// Rewrites absolute upstream URLs and root-relative `href`s in a metadata document.
    pub fn body(&self, text: &str) -> String {
        let public = format!("{}{}/", self.public_origin, self.public_path);
        let mut out = text.to_string();
        for origin in &self.upstream_origins {
            out = out.replace(&format!("{origin}{}/", self.upstream_base), &public);
        }
        if self.upstream_base != self.public_path {
            for quote in ['"', '\''] {
                let from = format!("href={quote}{}/", self.upstream_base);
                let to = format!("href={quote}{}/", self.public_path);
                out = out.replace(&from, &to);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> UrlMap {
        UrlMap::new(
            "127.0.0.1:4873",
            "",
            "http://proxy.test:8080",
            "/npm/acme/web".into(),
        )
    }

    #[test]
    fn locations_move_under_the_route_prefix() {
        let m = map();
        assert_eq!(
            m.location("http://127.0.0.1:4873/x/y?z=1").as_deref(),
            Some("http://proxy.test:8080/npm/acme/web/x/y?z=1")
        );
        assert_eq!(
            m.location("https://127.0.0.1:4873/x").as_deref(),
            Some("http://proxy.test:8080/npm/acme/web/x")
        );
        assert_eq!(
            m.location("http://proxy.test:8080/simple/p/").as_deref(),
            Some("http://proxy.test:8080/npm/acme/web/simple/p/")
        );
        assert_eq!(
            m.location("/simple/p/").as_deref(),
            Some("http://proxy.test:8080/npm/acme/web/simple/p/")
        );
        assert_eq!(m.location("http://127.0.0.1:48730/x"), None);
        assert_eq!(m.location("https://elsewhere.test/x"), None);
        assert_eq!(m.location("//elsewhere.test/x"), None);
    }

    #[test]
    fn upstream_base_paths_are_swapped() {
        let m = UrlMap::new(
            "store:9000",
            "/repo",
            "https://p.test",
            "/maven/acme".into(),
        );
        assert_eq!(
            m.location("http://store:9000/repo/a/b").as_deref(),
            Some("https://p.test/maven/acme/a/b")
        );
        assert_eq!(m.location("http://store:9000/repository/a"), None);
        assert_eq!(m.location("http://store:9000/other"), None);
    }

    #[test]
    fn metadata_urls_and_hrefs_are_rewritten() {
        let m = map();
        let doc = r#"{"dist":{"tarball":"http://127.0.0.1:4873/p/-/p-1.0.0.tgz"},"x":"http://127.0.0.1:48731/p"}"#;
        assert_eq!(
            m.body(doc),
            r#"{"dist":{"tarball":"http://proxy.test:8080/npm/acme/web/p/-/p-1.0.0.tgz"},"x":"http://127.0.0.1:48731/p"}"#
        );
        let html = r#"<a href="/packages/p-1.0.tar.gz#sha256=ab">p</a><a href="p/">p</a>"#;
        assert_eq!(
            m.body(html),
            r#"<a href="/npm/acme/web/packages/p-1.0.tar.gz#sha256=ab">p</a><a href="p/">p</a>"#
        );
    }
}
