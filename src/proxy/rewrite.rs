//! Keeping clients on the proxy: upstream URLs in `Location` headers and in
//! registry metadata (npm `dist.tarball`, PyPI simple-index links) are mapped
//! from the upstream's path space to the proxy's public URL and route prefix.
//!
//! A document is read whole to be rewritten, so all rewrites together draw on
//! one byte budget ([`MetadataBudget`]): many concurrent large packuments
//! must not take the process's memory.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::BoxError;

/// The bytes all metadata rewrites may hold at once. A document reserves
/// three times its size as it arrives (itself, its rewritten copy and the copy
/// a replacement pass is making) and keeps its rewritten size reserved until
/// the client has taken it. A rewrite that
/// would pass the budget fails at once (503) rather than waiting: waiting
/// rewrites would each hold part of the budget while asking for more.
pub struct MetadataBudget {
    bytes: Arc<Semaphore>,
    per_document: usize,
}

/// Bytes reserved per document byte while it is read and rewritten.
pub const HELD_PER_BYTE: usize = 3;

/// Why a metadata document was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("metadata larger than {0} bytes")]
    TooLarge(usize),
    #[error("the metadata rewrite budget is spent")]
    Spent,
    #[error(transparent)]
    Body(BoxError),
}

impl MetadataBudget {
    /// `total` bytes for all rewrites, `per_document` for one document.
    pub fn new(total: usize, per_document: usize) -> MetadataBudget {
        MetadataBudget {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            per_document,
        }
    }

    /// Reads a whole document, with its share of the budget.
    pub async fn collect<B>(&self, mut body: B) -> Result<(Bytes, Share), CollectError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut share = Share(self.reserve(0)?);
        let expected = body.size_hint().exact().unwrap_or(0) as usize;
        if expected > self.per_document {
            return Err(CollectError::TooLarge(self.per_document));
        }
        share.fit(self, HELD_PER_BYTE * expected)?;
        let mut document = BytesMut::with_capacity(expected);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CollectError::Body(e.into()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if document.len() + data.len() > self.per_document {
                return Err(CollectError::TooLarge(self.per_document));
            }
            share.fit(self, HELD_PER_BYTE * (document.len() + data.len()))?;
            document.extend_from_slice(&data);
        }
        Ok((document.freeze(), share))
    }

    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, CollectError> {
        let bytes = u32::try_from(bytes).map_err(|_| CollectError::Spent)?;
        self.bytes
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| CollectError::Spent)
    }
}

/// A rewrite's reservation from the [`MetadataBudget`].
pub struct Share(OwnedSemaphorePermit);

impl Share {
    /// Holds exactly `bytes` (at least; more only while growing fails).
    pub fn fit(&mut self, budget: &MetadataBudget, bytes: usize) -> Result<(), CollectError> {
        let held = self.0.num_permits();
        if bytes > held {
            self.0.merge(budget.reserve(bytes - held)?);
        } else if bytes < held {
            drop(self.0.split(held - bytes));
        }
        Ok(())
    }

    /// The reservation, for the body that holds it until sent.
    pub fn into_permit(self) -> OwnedSemaphorePermit {
        self.0
    }
}

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
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    /// A body of `n` chunks of `size` bytes, with no length announced.
    fn chunked(n: usize, size: usize) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames =
            (0..n).map(move |_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'a'; size]))));
        StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<_>>()))
    }

    #[tokio::test]
    async fn rewrites_share_one_budget_and_release_it() {
        let budget = MetadataBudget::new(1500, 400);
        let (first, share) = budget.collect(chunked(4, 100)).await.unwrap();
        assert_eq!(first.len(), 400);
        assert_eq!(
            budget.bytes.available_permits(),
            300,
            "three times the document held"
        );
        // Announced (200 B needs 600) or not, the next one does not fit.
        let spent = budget
            .collect(Full::new(Bytes::from(vec![b'a'; 200])))
            .await;
        assert!(matches!(spent, Err(CollectError::Spent)));
        let spent = budget.collect(chunked(2, 100)).await;
        assert!(matches!(spent, Err(CollectError::Spent)));
        assert_eq!(
            budget.bytes.available_permits(),
            300,
            "a failed collect holds nothing"
        );

        // Rewritten to 300 bytes: only that stays held while it is sent.
        let mut share = share;
        share.fit(&budget, 300).unwrap();
        assert_eq!(budget.bytes.available_permits(), 1200);
        drop(share);
        assert_eq!(budget.bytes.available_permits(), 1500);
        let too_large = budget.collect(chunked(5, 100)).await;
        assert!(matches!(too_large, Err(CollectError::TooLarge(400))));
        let announced = budget
            .collect(Full::new(Bytes::from(vec![b'a'; 401])))
            .await;
        assert!(matches!(announced, Err(CollectError::TooLarge(400))));
        assert_eq!(budget.bytes.available_permits(), 1500);
    }

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
