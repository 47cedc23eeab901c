//! The package formats of the first issue (npm, PyPI, Maven, generic) once
//! more, with tokengate serving TLS from a test CA made at test time that each
//! stock client is told to trust (clients.sh `E2E_CA_FILE`); and HTTP/2
//! negotiated by ALPN, checked with curl. OCI over TLS is in `oci.rs`.

use std::process::Command;

use crate::common::pki::test_pki;
use crate::{expect_client, registries, start_gate_with, Cast};

#[test]
fn package_clients_over_tls() {
    let reg = registries();
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let gate = start_gate_with(reg, Some((cert, key)));
    let base = format!("https://127.0.0.1:{}", gate.port);
    let ca = ca.to_str().unwrap();
    let trust = [("E2E_CA_FILE", ca)];
    let Cast { rw, ro, .. } = Cast::issue(&gate);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_str().unwrap();
    let ok = |what: &str, args: &[&str]| expect_client(&gate, &trust, what, args, true);
    let refused = |what: &str, args: &[&str]| expect_client(&gate, &trust, what, args, false);

    let npm = format!("{base}/npm/acme/web");
    let name = "tg-e2e-tls-npm";
    ok(
        "npm publish over TLS",
        &[
            "npm-publish",
            &npm,
            &rw.username,
            &rw.secret,
            dir,
            name,
            "1.0.0",
        ],
    );
    ok(
        "npm install over TLS",
        &["npm-install", &npm, &ro.username, &ro.secret, name, "1.0.0"],
    );
    refused(
        "npm publish over TLS, read-only token",
        &[
            "npm-publish",
            &npm,
            &ro.username,
            &ro.secret,
            dir,
            name,
            "1.0.1",
        ],
    );
    let pypi = format!("{base}/pypi/acme/web/");
    let name = "tg-e2e-tls-pypi";
    ok(
        "twine upload over TLS",
        &[
            "twine-upload",
            &pypi,
            &rw.username,
            &rw.secret,
            name,
            "1.0.0",
        ],
    );
    ok(
        "pip install over TLS",
        &[
            "pip-install",
            &format!("{pypi}simple/"),
            &ro.username,
            &ro.secret,
            name,
            "1.0.0",
        ],
    );

    let maven = format!("{base}/maven/acme/web");
    let (g, a) = ("com.acme.tge2e", "tls-demo");
    ok(
        "mvn deploy over TLS",
        &[
            "mvn-deploy",
            &maven,
            &rw.username,
            &rw.secret,
            g,
            a,
            "1.0.0",
        ],
    );
    ok(
        "mvn get over TLS",
        &["mvn-get", &maven, &ro.username, &ro.secret, g, a, "1.0.0"],
    );
    refused(
        "mvn deploy over TLS, read-only token",
        &[
            "mvn-deploy",
            &maven,
            &ro.username,
            &ro.secret,
            g,
            a,
            "1.0.1",
        ],
    );

    let file = work.path().join("blob.bin");
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &blob).unwrap();
    let url = format!("{base}/generic/acme/web/tg-e2e-tls/1.0/blob.bin");
    let out = work.path().join("blob.out");
    ok(
        "curl PUT over TLS",
        &["generic-put", &url, &rw.secret, file.to_str().unwrap()],
    );
    ok(
        "curl GET over TLS",
        &["generic-get", &url, &ro.secret, out.to_str().unwrap()],
    );
    assert!(std::fs::read(&out).unwrap() == blob, "bytes differ");
    // A client that does not trust the CA never gets to send its token.
    expect_client(
        &gate,
        &[],
        "curl GET over TLS, CA not trusted",
        &["generic-get", &url, &ro.secret, out.to_str().unwrap()],
        false,
    );

    // HTTP/2 by ALPN, end to end to nginx behind.
    let h2 = Command::new("curl")
        .args(["-sS", "--http2", "--cacert", ca, "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code}", "-H"])
        .arg(format!("Deploy-Token: {}", ro.secret))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&h2.stdout), "2 200");
}
