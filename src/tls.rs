//! TLS for both sides, with rustls (ring provider): TLS 1.2 and 1.3 only,
//! rustls' default (modern, AEAD-only) cipher suites, ALPN h2 and http/1.1
//! inbound; upstreams verified against the system roots or a CA file, with
//! an optional client certificate (mTLS).

use std::path::Path;
use std::sync::Arc;

use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every certificate of a PEM file (a chain: leaf first).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    certificates_in(&read(path)?, path)
}

/// A CA file's PEM text, for a client that takes PEM (the Redis client's),
/// checked here to hold certificates so that a bad file fails the config.
pub fn ca_pem(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path)?;
    certificates_in(&pem, path)?;
    Ok(pem)
}

fn certificates_in(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no CERTIFICATE in it", path.display()));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(&read(path)?)
        .map_err(|e| format!("{}: no usable private key ({e})", path.display()))
}

/// The listener's TLS: certificate chain and key from PEM files. A config
/// reload (SIGHUP) reads them again, so a renewed certificate is served to
/// new connections without a restart.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
}

pub fn server(cert: &Path, key: &Path) -> Result<ServerTls, String> {
    let pair = certified_key(cert, key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(pair)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
    })
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let both = || format!("{} and {}", cert.display(), key.display());
    let pair = CertifiedKey::from_der(certificates(cert)?, private_key(key)?, &provider())
        .map_err(|e| format!("{}: {e}", both()))?;
    pair.keys_match().map_err(|e| format!("{}: {e}", both()))?;
    Ok(pair)
}

/// TLS toward an upstream: `ca_file` replaces the system roots when given;
/// `client` is `(cert, key)` for mTLS.
pub fn client(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err("no system root certificates found; give ca_file".into());
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    // Requests are forwarded as HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
