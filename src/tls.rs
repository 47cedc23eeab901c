//! TLS for both sides, with rustls (ring provider): TLS 1.2 and 1.3 only,
//! rustls' default (modern, AEAD-only) cipher suites, ALPN h2 and http/1.1
//! inbound; upstreams verified against the system roots or a CA file, with
//! an optional client certificate (mTLS). The listener's certificate is
//! re-read on SIGHUP ([`ServerCert::reload`]) without dropping a connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
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
    let pem = read(path)?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
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

/// The listener's TLS: certificate chain and key from PEM files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub cert: Arc<ServerCert>,
}

pub fn server(cert: &Path, key: &Path) -> Result<ServerTls, String> {
    let cert = Arc::new(ServerCert {
        current: ArcSwap::from_pointee(certified_key(cert, key)?),
        cert_file: cert.to_path_buf(),
        key_file: key.to_path_buf(),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        cert,
    })
}

/// The listener's certificate, swapped atomically on reload: handshakes in
/// progress keep the one they started with.
#[derive(Debug)]
pub struct ServerCert {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl ServerCert {
    /// Re-reads the certificate and key files. On any error (unreadable,
    /// not PEM, key not matching the certificate) the old pair stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = certified_key(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
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
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    // ALPN (http/1.1: requests are forwarded as HTTP/1.1) is set by the connector.
    Ok(Arc::new(config))
}
