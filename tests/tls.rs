//! TLS on both sides with a test CA made at test time: HTTP/2 and HTTP/1.1
//! negotiated by ALPN (curl), old protocol versions and handshake garbage
//! refused, and https upstreams verified against a CA file (tokengate in
//! front of tokengate).

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pki::test_pki;
use common::services::{self, RedisCluster, Sentinel, TlsFiles};
use common::{Gate, Setup};
use recorder::Recorder;

fn routes(upstream_url: &str, extra: &str) -> String {
    format!(
        "[upstream.up]\nurl = \"{upstream_url}\"\n{extra}\n\n[[route]]\nname = \"web\"\nformat = \"generic\"\npath = \"/generic/acme/web\"\nnamespace = \"acme/web\"\nupstream = \"up\"\nstrip_prefix = true\n"
    )
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    common::outcome(&out)
}

/// `curl` printing only the response's status code.
fn curl_status(args: &[&str]) -> (bool, String) {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    curl(&all)
}

#[test]
fn tls_listener_negotiates_h2_and_http1_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let up = Recorder::start();
    let gate = Gate::launch(Setup {
        body: &routes(&up.url(), ""),
        tls: Some((cert, key)),
        ..Setup::default()
    });
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let url = format!("https://127.0.0.1:{}/generic/acme/web/file.bin", gate.port);
    let header = format!("Deploy-Token: {}", t.secret);
    let ca = ca.to_str().unwrap();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, out) = curl(&[
            "--cacert",
            ca,
            flag,
            "-H",
            &header,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &url,
        ]);
        assert!(ok, "{out}");
        assert_eq!(out, format!("200 {version}"), "{flag}");
    }
    // The head limit holds over TLS too, and uploads pass.
    let big = format!("X-Big: {}", "x".repeat(70_000));
    let (_, out) = curl_status(&["--cacert", ca, "--http1.1", "-H", &header, "-H", &big, &url]);
    assert_eq!(out, "431");
    let writer = gate.token("project:acme/web", "write_package_registry", &[]);
    let writer = format!("Deploy-Token: {}", writer.secret);
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, vec![b'u'; 3 << 20]).unwrap();
    let (ok, out) = curl_status(&[
        "--cacert",
        ca,
        "--http1.1",
        "-H",
        &writer,
        "-T",
        upload.to_str().unwrap(),
        &url,
    ]);
    assert!(ok && out == "200", "{out}");
    assert_eq!(up.seen().last().unwrap().body_len, 3 << 20);
    // No credentials over TLS: the same 401.
    let (_, out) = curl_status(&["--cacert", ca, &url]);
    assert_eq!(out, "401");
    // The upstream is told the client came over https.
    assert_eq!(up.seen()[0].header("x-forwarded-proto"), ["https"]);
    // TLS 1.1 and below are refused; so is a client that does not trust the CA.
    let (ok, _) = curl(&[
        "--cacert",
        ca,
        "--tlsv1.1",
        "--tls-max",
        "1.1",
        "-H",
        &header,
        &url,
    ]);
    assert!(!ok, "TLS 1.1 must be refused");
    let (ok, _) = curl(&["-H", &header, &url]);
    assert!(!ok, "an unknown CA must not verify");
    // Plain HTTP and handshake garbage on the TLS port: closed, nothing forwarded, still serving.
    let before = up.seen().len();
    for garbage in [
        &b"GET /generic/acme/web/file.bin HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3][..],
        &[0u8; 4096][..],
    ] {
        let mut stream = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(garbage);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(
            !String::from_utf8_lossy(&answer).contains("200"),
            "{answer:?}"
        );
    }
    assert_eq!(up.seen().len(), before);
    let (ok, out) = curl_status(&["--cacert", ca, "-H", &header, &url]);
    assert!(ok && out == "200", "{out}");
}

#[test]
fn https_upstreams_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let up = Recorder::start();
    // The inner proxy speaks TLS; the outer one forwards to it with a deploy token of its own.
    let inner = Gate::launch(Setup {
        body: &routes(&up.url(), ""),
        tls: Some((cert, key)),
        ..Setup::default()
    });
    let outer_secret = inner.token("project:acme/web", "read_package_registry", &[]);
    let inner_url = format!("https://127.0.0.1:{}/generic/acme/web", inner.port);
    let verified = Gate::launch(Setup {
        body: &routes(
            &inner_url,
            &format!(
                "ca_file = \"{}\"\nbasic = {{ username = \"{}\", password_env = \"INNER_TOKEN\" }}",
                ca.display(),
                outer_secret.username
            ),
        ),
        env: &[("INNER_TOKEN", &outer_secret.secret)],
        ..Setup::default()
    });
    let client = verified.token("project:acme/web", "read_package_registry", &[]);
    let r = common::send(
        verified.port,
        "GET",
        "/generic/acme/web/file.bin",
        &[("Deploy-Token", &client.secret)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/file.bin");

    // Without the CA file the system roots are used: the test CA is not among them.
    let unverified = Gate::launch(Setup {
        body: &routes(
            &inner_url,
            &format!(
                "basic = {{ username = \"{}\", password_env = \"INNER_TOKEN\" }}",
                outer_secret.username
            ),
        ),
        env: &[("INNER_TOKEN", &outer_secret.secret)],
        ..Setup::default()
    });
    let client = unverified.token("project:acme/web", "read_package_registry", &[]);
    let r = common::send(
        unverified.port,
        "GET",
        "/generic/acme/web/file.bin",
        &[("Deploy-Token", &client.secret)],
        b"",
    );
    assert_eq!(
        r.status,
        502,
        "an unverifiable upstream is unreachable: {}",
        r.text()
    );
    assert_eq!(up.seen().len(), 1, "nothing reached the upstream");
}

#[test]
fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let (client_cert, client_key) = (
        dir.path().join("client.pem"),
        dir.path().join("client-key.pem"),
    );
    // nginx as the upstream, requiring a client certificate from the test CA.
    let port = common::free_port();
    let d = dir.path().display();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_client_certificate {};\n    ssl_verify_client on;\n    location / {{ return 200 \"client=$ssl_client_s_dn\"; }}\n  }}\n}}\n",
        cert.display(),
        key.display(),
        ca.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let nginx_bin = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let mut nginx = Command::new(nginx_bin)
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .args(["-g", "daemon off;"])
        .spawn()
        .expect("nginx (tests/e2e/install.sh installs it)");
    common::wait_for_port(port, Duration::from_secs(10));
    let upstream = format!("https://127.0.0.1:{port}");
    let start = |client: &str| {
        Gate::launch(Setup {
            body: &routes(
                &upstream,
                &format!("ca_file = \"{}\"\n{client}", ca.display()),
            ),
            ..Setup::default()
        })
    };
    let with_cert = start(&format!(
        "client_cert = {{ cert = \"{}\", key = \"{}\" }}",
        client_cert.display(),
        client_key.display()
    ));
    let t = with_cert.token("project:acme/web", "read_package_registry", &[]);
    let r = common::send(
        with_cert.port,
        "GET",
        "/generic/acme/web/x",
        &[("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "client=CN=tokengate client");
    let without = start("");
    let t = without.token("project:acme/web", "read_package_registry", &[]);
    let r = common::send(
        without.port,
        "GET",
        "/generic/acme/web/x",
        &[("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!(
        r.status,
        400,
        "nginx refuses a client without a certificate: {}",
        r.text()
    );
    common::terminate(&mut nginx);
}

#[test]
fn tls_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:1\"\ntls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }\n",
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("proxy.toml:3: server.tls: cannot read /nonexistent/cert.pem"),
        "{err}"
    );
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_the_old_one_when_the_new_is_bad() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let (ca1, cert, key) = test_pki(first.path());
    let (ca2, cert2, key2) = test_pki(second.path());
    let up = Recorder::start();
    let gate = Gate::launch(Setup {
        body: &routes(&up.url(), ""),
        tls: Some((cert.clone(), key.clone())),
        ..Setup::default()
    });
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let url = format!("https://127.0.0.1:{}/generic/acme/web/f", gate.port);
    let header = format!("Deploy-Token: {}", t.secret);
    let status_with =
        |ca: &Path| curl_status(&["--cacert", ca.to_str().unwrap(), "-H", &header, &url]);
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &gate.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let wait_for_log = |needle: &str, count: usize| {
        let started = std::time::Instant::now();
        while gate.logs().matches(needle).count() < count {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{needle}:\n{}",
                gate.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(status_with(&ca1), (true, "200".to_string()));

    // A key that does not match the certificate: refused, the old pair stays.
    std::fs::copy(&key2, &key).unwrap();
    hup();
    wait_for_log("config not reloaded", 1);
    assert_eq!(status_with(&ca1), (true, "200".to_string()));

    // The renewed pair (another CA): new handshakes use it at once.
    std::fs::copy(&cert2, &cert).unwrap();
    hup();
    wait_for_log("config reloaded", 1);
    assert_eq!(status_with(&ca2), (true, "200".to_string()));
    let (ok, _) = status_with(&ca1);
    assert!(!ok, "the old certificate is still served");
}

/// A Redis that speaks TLS only on the port the proxy is given (its plain
/// port stays for the test's own inspection): entries reach it through TLS,
/// verified against `redis_ca_file`; without that file the test CA is not
/// trusted, Redis counts as down and requests are served from the store.
#[test]
fn redis_over_tls_is_verified_against_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::made_in(dir.path());
    let redis = services::Redis::start_tls(dir.path(), &files);
    let tls_port = redis.tls_port.unwrap();
    let up = Recorder::start();
    let body = routes(&up.url(), "");
    let gate_with = |name: &str, ca_line: &str| {
        let backends = format!(
            "[store]\nurl = \"sqlite://{}/{name}.db\"\n\n[cache]\nredis_url = \"rediss://127.0.0.1:{tls_port}/0\"\n{ca_line}\n",
            dir.path().display(),
        );
        Gate::launch(Setup {
            backends: Some(backends),
            body: &body,
            ..Setup::default()
        })
    };
    let get = |gate: &Gate, token: &common::Token| {
        let auth = token.basic();
        let headers = [("Authorization", auth.as_str())];
        common::send(gate.port, "GET", "/generic/acme/web/f", &headers, b"").status
    };
    let ca_line = format!("redis_ca_file = \"{}\"", files.ca.display());
    let trusting = gate_with("trusting", &ca_line);
    assert_eq!(trusting.readyz().1["redis"], "up", "{}", trusting.logs());
    let token = trusting.token("project:acme/web", "read_package_registry", &[]);
    assert_eq!(get(&trusting, &token), 200);
    assert!(redis.holds(&token), "the entry went to Redis over TLS");

    let untrusting = gate_with("untrusting", "");
    let token = untrusting.token("project:acme/web", "read_package_registry", &[]);
    assert_eq!(get(&untrusting, &token), 200, "served from the store");
    assert_ne!(untrusting.readyz().1["redis"], "up");
    assert!(
        !redis.holds(&token),
        "nothing reached a server it could not verify"
    );
    let logs = untrusting.logs();
    assert!(logs.contains("UnknownIssuer"), "{logs}");
}

/// A Redis Cluster whose nodes speak TLS to clients and to each other: two
/// proxies share entries through it over TLS (the second reads what the
/// first wrote), spread over the masters the cluster named by TLS port.
#[test]
fn redis_cluster_over_tls_carries_the_shared_cache() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::made_in(dir.path());
    let cluster = RedisCluster::start_with(dir.path(), Some(&files));
    let up = Recorder::start();
    let body = routes(&up.url(), "");
    let backends = format!(
        "[store]\nurl = \"sqlite://{}/tokens.db\"\n\n[cache]\nredis_url = \"{}\"\nredis_ca_file = \"{}\"\n",
        dir.path().display(),
        cluster.url(),
        files.ca.display()
    );
    assert!(cluster.url().starts_with("rediss+cluster://"));
    let gates: Vec<Gate> = (0..2)
        .map(|_| {
            Gate::launch(Setup {
                backends: Some(backends.clone()),
                body: &body,
                ..Setup::default()
            })
        })
        .collect();
    assert_eq!(gates[0].readyz().1["redis"], "up", "{}", gates[0].logs());
    cluster.share_entries(&gates[0], &gates[1]);
}

/// Sentinel and the master it names, both over TLS: the proxy asks the
/// sentinel over TLS and caches on the master over TLS, both verified
/// against `redis_ca_file`.
#[test]
fn redis_sentinel_over_tls_names_the_master_reached_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::made_in(dir.path());
    let master = services::Redis::start_tls(dir.path(), &files);
    let sentinel = Sentinel::start_with(dir.path(), master.tls_port.unwrap(), Some(&files));
    assert!(sentinel.url().starts_with("rediss+sentinel://"));
    let up = Recorder::start();
    let backends = format!(
        "[store]\nurl = \"sqlite://{}/tokens.db\"\n\n[cache]\nredis_url = \"{}\"\nredis_ca_file = \"{}\"\n",
        dir.path().display(),
        sentinel.url(),
        files.ca.display()
    );
    let gate = Gate::launch(Setup {
        backends: Some(backends),
        body: &routes(&up.url(), ""),
        ..Setup::default()
    });
    assert_eq!(gate.readyz().1["redis"], "up", "{}", gate.logs());
    let token = gate.token("project:acme/web", "read_package_registry", &[]);
    let auth = token.basic();
    let headers = [("Authorization", auth.as_str())];
    let r = common::send(gate.port, "GET", "/generic/acme/web/f", &headers, b"");
    assert_eq!(r.status, 200);
    assert!(master.holds(&token), "cached on the master");
}
