//! Conan sessions on loopback, in front of a recording upstream: the login
//! tokengate answers itself, the upstream login it keeps for its own, and the
//! attacks on session JWTs (expired, foreign, forged, other audience, other
//! project). The real client and server run in `tests/e2e/conan.rs`.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use common::{basic, send, Gate, RawResponse, Setup, Token};
use recorder::Recorder;

const ROUTE: &str = "/conan/acme/web";

struct Fixture {
    up: Recorder,
    gate: Gate,
    key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start_with(upstream_url: &str, server_extra: &str) -> Fixture {
    let up = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("signing.pem");
    let url = if upstream_url.is_empty() {
        up.url()
    } else {
        upstream_url.to_string()
    };
    let body = format!(
        r#"
[signing]
key_file = "{}"

[upstream.conan]
url = "{url}"
basic = {{ username = "proxy", password_env = "TG_CONAN_PW" }}

[[route]]
name = "conan"
format = "conan"
path = "/conan/acme/web"
namespace = "acme/web"
upstream = "conan"
strip_prefix = true

[[route]]
name = "conan-other"
format = "conan"
path = "/conan/acme/other"
namespace = "acme/other"
upstream = "conan"
strip_prefix = true
"#,
        key_file.display()
    );
    let gate = Gate::launch(Setup {
        server_extra,
        body: &body,
        env: &[("TG_CONAN_PW", "upstream-pw")],
        ..Setup::default()
    });
    Fixture {
        up,
        gate,
        key_file,
        _dir: dir,
    }
}

fn login(gate: &Gate, route: &str, authorization: &str) -> RawResponse {
    send(
        gate.port,
        "GET",
        &format!("{route}/v2/users/authenticate"),
        &[("Authorization", authorization)],
        b"",
    )
}

fn session(gate: &Gate, token: &Token) -> String {
    let r = login(gate, ROUTE, &token.basic());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    r.text()
}

fn get(gate: &Gate, path: &str, jwt: &str) -> RawResponse {
    send(
        gate.port,
        "GET",
        &format!("{ROUTE}{path}"),
        &[("Authorization", &format!("Bearer {jwt}"))],
        b"",
    )
}

fn decode(part: &str) -> serde_json::Value {
    use base64::Engine;
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// `jwt` with its claims edited and signed again with `pem` (ES256 or RS256).
fn resign(jwt: &str, pem: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut parts = jwt.split('.');
    let header = decode(parts.next().unwrap());
    let mut claims = decode(parts.next().unwrap());
    edit(&mut claims);
    let (alg, key) = match jsonwebtoken::EncodingKey::from_ec_pem(pem) {
        Ok(key) => (jsonwebtoken::Algorithm::ES256, key),
        Err(_) => (
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap(),
        ),
    };
    let mut new_header = jsonwebtoken::Header::new(alg);
    new_header.kid = header["kid"].as_str().map(str::to_string);
    jsonwebtoken::encode(&new_header, &claims, &key).unwrap()
}

#[test]
fn logins_and_sessions_follow_the_deploy_token() {
    let f = start_with("", "");
    let gate = &f.gate;
    let rw = gate.token(
        "project:acme/web",
        "read_package_registry,write_package_registry",
        &[],
    );
    let other = gate.token("project:acme/other", "read_package_registry", &[]);
    let registry_only = gate.token("project:acme/web", "read_registry", &[]);

    // The login is answered here; the session reads and writes as the token allows.
    let jwt = session(gate, &rw);
    let check = get(gate, "/v2/users/check_credentials", &jwt);
    assert_eq!((check.status, check.text()), (200, rw.username.clone()));
    assert_eq!(
        get(gate, "/v2/conans/zlib/1.3/_/_/latest", &jwt).status,
        200
    );
    let r = send(
        gate.port,
        "PUT",
        &format!("{ROUTE}/v2/conans/zlib/1.3/_/_/revisions/r1/files/conanfile.py"),
        &[("Authorization", &format!("Bearer {jwt}"))],
        b"recipe",
    );
    assert_eq!(r.status, 200);

    // Upstream: one login of the proxy's own, then its Bearer on everything;
    // the client's session and credentials never reach it.
    let seen = f.up.seen();
    let logins: Vec<_> = seen
        .iter()
        .filter(|s| s.target == "/v2/users/authenticate")
        .collect();
    assert_eq!(logins.len(), 1, "{seen:?}");
    assert_eq!(
        logins[0].header("authorization"),
        [basic("proxy", "upstream-pw")]
    );
    let forwarded: Vec<_> = seen
        .iter()
        .filter(|s| s.target.starts_with("/v2/conans/"))
        .collect();
    assert_eq!(forwarded.len(), 2);
    for s in &forwarded {
        assert_eq!(s.header("authorization"), ["Bearer ok"], "{s:?}");
    }
    assert!(!format!("{seen:?}").contains(&jwt));

    // Tokens that cannot use the route do not get a session.
    assert_eq!(login(gate, ROUTE, &other.basic()).status, 403);
    assert_eq!(login(gate, ROUTE, &registry_only.basic()).status, 403);
    let wrong_user = basic("someone", &rw.secret);
    assert_eq!(login(gate, ROUTE, &wrong_user).status, 401);
    assert_eq!(
        login(gate, ROUTE, &basic(&rw.username, "tgdt_nope")).status,
        401
    );
    assert_eq!(
        send(
            gate.port,
            "GET",
            &format!("{ROUTE}/v2/users/authenticate"),
            &[],
            b""
        )
        .status,
        401
    );
    // A session of another project, used here: the decision still applies.
    let foreign = {
        let r = login(gate, "/conan/acme/other", &other.basic());
        assert_eq!(r.status, 200);
        r.text()
    };
    assert_eq!(
        get(gate, "/v2/conans/zlib/1.3/_/_/latest", &foreign).status,
        403
    );
    assert_eq!(
        get(gate, "/v2/users/check_credentials", &foreign).status,
        403
    );
}

#[test]
fn forged_expired_and_foreign_sessions_are_refused() {
    let f = start_with("", "");
    let gate = &f.gate;
    let rw = gate.token(
        "project:acme/web",
        "read_package_registry,write_package_registry",
        &[],
    );
    let ro = gate.token("project:acme/web", "read_package_registry", &[]);
    let jwt = session(gate, &ro);
    let own_key = std::fs::read(&f.key_file).unwrap();
    let path = "/v2/conans/zlib/1.3/_/_/latest";
    assert_eq!(get(gate, path, &jwt).status, 200);
    let before = f.up.seen().len();

    let expired = resign(&jwt, &own_key, |c| {
        c["exp"] = serde_json::json!(c["iat"].as_i64().unwrap() - 3600);
        c["nbf"] = serde_json::json!(c["iat"].as_i64().unwrap() - 7200);
    });
    // Without tokengate's key: signed by another, or a payload swapped in.
    let foreign_key = resign(
        &jwt,
        include_bytes!("../src/oci/testdata/rsa-2048.pem"),
        |_| {},
    );
    let forged = {
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let upgraded = resign(&jwt, &own_key, |c| c["deploy_token_id"] = rw.id.into());
        let payload = upgraded.split('.').nth(1).unwrap().to_string();
        parts[1] = &payload;
        parts.join(".")
    };
    let other_issuer = resign(&jwt, &own_key, |c| c["iss"] = "someone-else".into());
    let other_audience = resign(&jwt, &own_key, |c| c["aud"] = "container_registry".into());
    let registry_jwt = {
        let r = send(
            gate.port,
            "GET",
            "/jwt/auth?service=container_registry",
            &[("Authorization", &ro.basic())],
            b"",
        );
        assert_eq!(r.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        body["token"].as_str().unwrap().to_string()
    };
    for (what, bad) in [
        ("expired", expired.as_str()),
        ("signed by another key", &foreign_key),
        ("payload swapped", &forged),
        ("another issuer", &other_issuer),
        ("another audience", &other_audience),
        ("a registry JWT", &registry_jwt),
        ("the deploy token itself", &ro.secret),
        ("garbage", "a.b.c"),
    ] {
        let r = get(gate, path, bad);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(
            get(gate, "/v2/users/check_credentials", bad).status,
            401,
            "{what}"
        );
    }
    // Basic is only for the login endpoint.
    let r = send(
        gate.port,
        "GET",
        &format!("{ROUTE}{path}"),
        &[("Authorization", &ro.basic())],
        b"",
    );
    assert_eq!(r.status, 401);
    // Writes with a read-only session, other methods, other API versions.
    let put = send(
        gate.port,
        "PUT",
        &format!("{ROUTE}/v2/conans/zlib/1.3/_/_/revisions/r1/files/conanfile.py"),
        &[("Authorization", &format!("Bearer {jwt}"))],
        b"x",
    );
    assert_eq!(put.status, 403);
    assert_eq!(get(gate, "/v3/ping", &jwt).status, 403);
    assert_eq!(f.up.seen().len(), before, "nothing refused was forwarded");
}

#[test]
fn the_upstream_login_is_renewed_after_a_401_and_fails_closed() {
    let f = start_with("", "");
    let gate = &f.gate;
    let ro = gate.token("project:acme/web", "read_package_registry", &[]);
    let jwt = session(gate, &ro);
    let logins = || {
        f.up.seen()
            .iter()
            .filter(|s| s.target == "/v2/users/authenticate")
            .count()
    };
    assert_eq!(get(gate, "/v2/conans/a/1/_/_/latest", &jwt).status, 200);
    assert_eq!(get(gate, "/v2/conans/b/1/_/_/latest", &jwt).status, 200);
    assert_eq!(logins(), 1, "the upstream token is reused");
    // The upstream no longer takes the proxy's token: the client sees its
    // 401 (and retries), and the proxy logs in again for the next request.
    let refused = get(gate, "/v2/conans/c/1/_/_/unauthorized", &jwt);
    assert_eq!(refused.status, 401);
    let challenge = refused.header("www-authenticate").unwrap_or_default();
    assert!(!challenge.contains("elsewhere"), "{challenge}");
    assert_eq!(get(gate, "/v2/conans/a/1/_/_/latest", &jwt).status, 200);
    assert_eq!(logins(), 2);

    // An upstream that cannot be logged in to: 502, nothing forwarded.
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let g = start_with(&closed, "");
    let ro = g
        .gate
        .token("project:acme/web", "read_package_registry", &[]);
    let jwt = session(&g.gate, &ro);
    let r = get(&g.gate, "/v2/conans/a/1/_/_/latest", &jwt);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("login"), "{}", r.text());
}

/// The upstream login is one exchange under `upstream_response_timeout`: a
/// login answer that stalls half-way gets 502, not a hang, and the requests
/// queued behind it fail with it rather than each trying again in turn.
#[test]
fn a_stalled_upstream_login_fails_the_requests_waiting_for_it_in_time() {
    let port = common::stalling_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\neyJ");
    let f = start_with(
        &format!("http://127.0.0.1:{port}"),
        "upstream_response_timeout_seconds = 1\n",
    );
    let ro = f
        .gate
        .token("project:acme/web", "read_package_registry", &[]);
    let jwt = session(&f.gate, &ro);
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let waiting: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| get(&f.gate, "/v2/conans/a/1/_/_/latest", &jwt).status))
            .collect();
        waiting.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(statuses, [502; 6]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "six requests behind a stalled login took {:?}",
        started.elapsed()
    );
}
