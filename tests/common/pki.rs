//! A test PKI made at test time with rcgen: a CA, a server certificate for
//! 127.0.0.1 and localhost signed by it, and a client certificate.

use std::path::{Path, PathBuf};

/// Writes into `dir`: `ca.crt` (the CA; `.crt` is what skopeo's cert dirs
/// read), `cert.pem` (the chain: leaf, then the CA), `key.pem`, and
/// `client.pem` / `client-key.pem` for upstreams that ask for a client
/// certificate. Returns (ca, cert, key).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own per CA: verifiers look issuers up by name.
    let name = format!("tokengate test CA {}", dir.display());
    ca_params.distinguished_name.push(DnType::CommonName, name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "tokengate client");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    write("client.pem", client.pem());
    write("client-key.pem", client_key.serialize_pem());
    (
        write("ca.crt", ca.pem()),
        write("cert.pem", format!("{}{}", cert.pem(), ca.pem())),
        write("key.pem", key.serialize_pem()),
    )
}
