//! Reading a deploy token out of request headers.
//!
//! Exactly one credential may be presented: two different ones (say an
//! `Authorization` and a `Deploy-Token` header) would let the proxy and an
//! upstream disagree about who is calling, so they are refused. The same
//! token twice (NuGet clients send source credentials and the API key on a
//! push) is one credential.

use std::fmt;

use base64::Engine;
use http::header::{HeaderMap, HeaderName, AUTHORIZATION};

use super::CredentialSource;

/// Longest credential header value accepted; longer ones are malformed.
const MAX_CREDENTIAL_LEN: usize = 4096;

/// Why credentials could not be read. All answer 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("malformed Authorization header")]
    MalformedAuthorization,
    #[error("malformed Basic credentials: expected base64 of username:token")]
    MalformedBasic,
    #[error("more than one credential was presented")]
    Ambiguous,
    #[error("this registry does not accept {0} credentials")]
    UnsupportedScheme(&'static str),
}

/// A presented deploy token; `username` is set when Basic was used.
pub struct Presented<'h> {
    pub secret: std::borrow::Cow<'h, str>,
    pub username: Option<String>,
}

impl fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presented")
            .field("secret", &"<redacted>")
            .field("username", &self.username)
            .finish()
    }
}

// Names, not strings: a lookup by `&str` parses the name again each time.
static DEPLOY_TOKEN: HeaderName = HeaderName::from_static("deploy-token");
static NUGET_API_KEY: HeaderName = HeaderName::from_static("x-nuget-apikey");

/// Extracts the single credential the request carries among `sources`.
pub fn extract<'h>(
    sources: &[CredentialSource],
    headers: &'h HeaderMap,
) -> Result<Option<Presented<'h>>, CredentialError> {
    let mut found = None;
    let mut take = |p: Presented<'h>| match &mut found {
        None => {
            found = Some(p);
            Ok(())
        }
        Some(first) if first.secret == p.secret => {
            if first.username.is_none() {
                first.username = p.username;
            }
            Ok(())
        }
        Some(_) => Err(CredentialError::Ambiguous),
    };
    if let Some(value) = single(headers, &AUTHORIZATION)? {
        take(authorization(sources, value)?)?;
    }
    for (source, name) in [
        (CredentialSource::DeployTokenHeader, &DEPLOY_TOKEN),
        (CredentialSource::NuGetApiKey, &NUGET_API_KEY),
    ] {
        if !sources.contains(&source) {
            continue;
        }
        if let Some(value) = single(headers, name)? {
            take(Presented {
                secret: bare_token(value)?.into(),
                username: None,
            })?;
        }
    }
    Ok(found)
}

/// The one value of a header, as text; repeated headers are ambiguous.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h str>, CredentialError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialError::Ambiguous);
    }
    if value.len() > MAX_CREDENTIAL_LEN {
        return Err(CredentialError::MalformedAuthorization);
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| CredentialError::MalformedAuthorization)
}

fn bare_token(value: &str) -> Result<&str, CredentialError> {
    let token = value.trim();
    if token.is_empty() || token.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(CredentialError::MalformedAuthorization);
    }
    Ok(token)
}

fn authorization<'h>(
    sources: &[CredentialSource],
    value: &'h str,
) -> Result<Presented<'h>, CredentialError> {
    let (scheme, rest) = value
        .trim()
        .split_once(' ')
        .ok_or(CredentialError::MalformedAuthorization)?;
    if scheme.eq_ignore_ascii_case("basic") {
        if !sources.contains(&CredentialSource::Basic) {
            return Err(CredentialError::UnsupportedScheme("Basic"));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| CredentialError::MalformedBasic)?;
        let text = String::from_utf8(decoded).map_err(|_| CredentialError::MalformedBasic)?;
        let (user, secret) = text
            .split_once(':')
            .ok_or(CredentialError::MalformedBasic)?;
        if user.is_empty() || secret.is_empty() {
            return Err(CredentialError::MalformedBasic);
        }
        Ok(Presented {
            username: Some(user.to_string()),
            secret: secret.to_string().into(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if !sources.contains(&CredentialSource::Bearer) {
            return Err(CredentialError::UnsupportedScheme("Bearer"));
        }
        Ok(Presented {
            secret: bare_token(rest)?.into(),
            username: None,
        })
    } else {
        Err(CredentialError::MalformedAuthorization)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use CredentialSource::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn reads_each_source() {
        let all = [Basic, Bearer, DeployTokenHeader, NuGetApiKey];
        let h = headers(&[("authorization", &basic("bot:tok"))]);
        let p = extract(&all, &h).unwrap().unwrap();
        assert_eq!((p.username.as_deref(), &*p.secret), (Some("bot"), "tok"));
        let h = headers(&[("authorization", "bearer tok")]);
        assert_eq!(&*extract(&all, &h).unwrap().unwrap().secret, "tok");
        let h = headers(&[("deploy-token", "tok")]);
        assert_eq!(&*extract(&all, &h).unwrap().unwrap().secret, "tok");
        let h = headers(&[("x-nuget-apikey", "tok")]);
        assert_eq!(&*extract(&all, &h).unwrap().unwrap().secret, "tok");
        assert!(extract(&all, &HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn password_may_contain_colons() {
        let h = headers(&[("authorization", &basic("bot:a:b"))]);
        assert_eq!(&*extract(&[Basic], &h).unwrap().unwrap().secret, "a:b");
    }

    #[test]
    fn malformed_and_ambiguous_credentials_are_refused() {
        let cases: Vec<(HeaderMap, CredentialError)> = vec![
            (
                headers(&[("authorization", "Basic !!!")]),
                CredentialError::MalformedBasic,
            ),
            (
                headers(&[("authorization", &basic("nocolon"))]),
                CredentialError::MalformedBasic,
            ),
            (
                headers(&[("authorization", &basic(":tok"))]),
                CredentialError::MalformedBasic,
            ),
            (
                headers(&[("authorization", &basic("bot:"))]),
                CredentialError::MalformedBasic,
            ),
            (
                headers(&[("authorization", "Basic")]),
                CredentialError::MalformedAuthorization,
            ),
            (
                headers(&[("authorization", "")]),
                CredentialError::MalformedAuthorization,
            ),
            (
                headers(&[("authorization", "Bearer a b")]),
                CredentialError::MalformedAuthorization,
            ),
            (
                headers(&[("authorization", "Digest x")]),
                CredentialError::MalformedAuthorization,
            ),
            (
                headers(&[("authorization", &format!("Bearer {}", "a".repeat(5000)))]),
                CredentialError::MalformedAuthorization,
            ),
            (
                headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                CredentialError::Ambiguous,
            ),
            (
                headers(&[("authorization", "Bearer a"), ("deploy-token", "b")]),
                CredentialError::Ambiguous,
            ),
        ];
        for (h, want) in cases {
            let got = extract(&[Basic, Bearer, DeployTokenHeader], &h).unwrap_err();
            assert_eq!(got, want, "{h:?}");
        }
    }

    #[test]
    fn the_same_token_twice_is_one_credential() {
        let sources = [Basic, NuGetApiKey];
        let h = headers(&[
            ("x-nuget-apikey", "tok"),
            ("authorization", &basic("bot:tok")),
        ]);
        let p = extract(&sources, &h).unwrap().unwrap();
        assert_eq!((p.username.as_deref(), &*p.secret), (Some("bot"), "tok"));
        let h = headers(&[
            ("x-nuget-apikey", "other"),
            ("authorization", &basic("bot:tok")),
        ]);
        assert_eq!(
            extract(&sources, &h).unwrap_err(),
            CredentialError::Ambiguous
        );
    }

    #[test]
    fn schemes_outside_the_format_are_refused_or_ignored() {
        let h = headers(&[("authorization", "Bearer tok")]);
        assert_eq!(
            extract(&[Basic], &h).unwrap_err(),
            CredentialError::UnsupportedScheme("Bearer")
        );
        let h = headers(&[("deploy-token", "tok")]);
        assert!(extract(&[Basic], &h).unwrap().is_none());
    }
}
