//! The real binary on loopback in front of a recording upstream: what is
//! forwarded, what is not, and how.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{basic, send, send_raw, Gate};
use recorder::Recorder;

fn config(up: &Recorder) -> String {
    format!(
        r#"
[upstream.rec]
url = "{url}/base"

[[route]]
name = "web"
format = "generic"
path = "/generic/acme/web"
namespace = "acme/web"
upstream = "rec"
strip_prefix = true

[[route]]
name = "npm"
format = "npm"
path = "/npm/acme/web"
namespace = "acme/web"
upstream = "rec"
strip_prefix = true

[[route]]
name = "api"
format = "generic"
path = "/api/v4/projects/{{namespace}}/packages/generic"
upstream = "rec"
strip_prefix = true

[[route]]
name = "keep"
format = "maven"
path = "/maven"
namespace = "acme"
upstream = "rec"

[[route]]
name = "pypi"
format = "pypi"
path = "/pypi/acme/web"
namespace = "acme/web"
upstream = "rec"
strip_prefix = true
"#,
        url = up.url()
    )
}

/// In every connection layout: two workers per core (the default), a given
/// number of them, the shared runtime (`workers = 0`).
#[test]
fn credentials_never_reach_the_upstream_and_identity_is_the_proxys() {
    for layout in ["", "workers = 3", "workers = 0"] {
        credentials_never_reach_the_upstream(layout);
    }
}

fn credentials_never_reach_the_upstream(layout: &str) {
    let up = Recorder::start();
    let gate = Gate::start_full(layout, &config(&up), &[]);
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let r = send(
        gate.port,
        "GET",
        "/generic/acme/web/file.bin?x=1&y=%2F",
        &[
            ("Authorization", &t.basic()),
            ("Private-Token", "glpat-leak"),
            ("Job-Token", "job-leak"),
            ("X-NuGet-ApiKey", "nuget-leak"),
            ("X-JFrog-Art-Api", "jfrog-leak"),
            ("Cookie", "_gitlab_session=leak"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "evil.test"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Forwarded-Scheme", "http"),
            ("X-Forwarded-Ssl", "off"),
            ("X-Artifactory-Override-Base-Url", "https://evil.test/leak"),
            ("X-JFrog-Override-Base-Url", "https://evil.test/leak"),
            ("X-Forwarded-User", "admin"),
            ("Remote-User", "admin"),
            ("X-WEBAUTH-USER", "admin"),
            ("X-Tokengate-Token-Id", "999"),
            ("X-Tokengate-Scopes", "write_registry"),
            ("Connection", "close, X-Tokengate-User, X-Forwarded-For"),
            ("Keep-Alive", "timeout=5"),
            ("X-Custom", "kept"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{layout}: {}", r.text());
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.target, "/base/file.bin?x=1&y=%2F");
    for h in [
        "authorization",
        "private-token",
        "job-token",
        "x-nuget-apikey",
        "x-jfrog-art-api",
        "cookie",
        "forwarded",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-artifactory-override-base-url",
        "x-jfrog-override-base-url",
        "x-forwarded-user",
        "remote-user",
        "x-webauth-user",
        "keep-alive",
        "connection",
    ] {
        assert!(
            s.header(h).is_empty(),
            "{h} was forwarded: {:?}",
            s.header(h)
        );
    }
    assert_eq!(s.header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(
        s.header("x-forwarded-host"),
        [format!("127.0.0.1:{}", gate.port)]
    );
    assert_eq!(s.header("x-forwarded-proto"), ["http"]);
    assert_eq!(s.header("x-tokengate-token-id"), [t.id.to_string()]);
    assert_eq!(s.header("x-tokengate-user"), [t.username.as_str()]);
    assert_eq!(s.header("x-tokengate-scopes"), ["read_package_registry"]);
    assert_eq!(s.header("x-custom"), ["kept"]);
    assert_eq!(s.header("host"), [format!("127.0.0.1:{}", up.port)]);
    let all = format!("{:?}", s.headers);
    assert!(!all.contains(&t.secret) && !all.contains("leak"), "{all}");
}

#[test]
fn the_upstreams_own_credentials_replace_the_clients() {
    let up = Recorder::start();
    let body = config(&up).replace(
        &format!("url = \"{}/base\"", up.url()),
        &format!("url = \"{}/base\"\nbasic = {{ username = \"proxy\", password_env = \"TG_TEST_UP_PW\" }}", up.url()),
    );
    let gate = Gate::start_with(&body, &[("TG_TEST_UP_PW", "s3cret")]);
    let t = gate.token("group:acme", "read_package_registry", &[]);
    let r = send(
        gate.port,
        "GET",
        "/generic/acme/web/f",
        &[("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        up.seen()[0].header("authorization"),
        [basic("proxy", "s3cret")]
    );
    assert!(!gate.logs().contains("s3cret"));
    // A session the upstream opens for the proxy's account stays with the proxy.
    let r = send(
        gate.port,
        "GET",
        "/generic/acme/web/session",
        &[("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("set-cookie"), None, "{:?}", r.headers);
    // The upstream refusing the proxy's credentials: the client is told to
    // authenticate with tokengate, never sent to the upstream's realm
    // (docker would send it the deploy token).
    let r = send(
        gate.port,
        "GET",
        "/generic/acme/web/unauthorized",
        &[("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Basic realm="tokengate""#),
        "{:?}",
        r.headers
    );
    assert!(gate
        .logs()
        .contains("upstream refused the proxy's credentials"));
}

/// Forwarded, npm's whoami would tell any deploy token the proxy's upstream
/// account name; tokengate answers with the token's own username.
#[test]
fn npm_whoami_names_the_deploy_token_and_is_never_forwarded() {
    let up = Recorder::start();
    let gate = Gate::start(&config(&up));
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let bearer = format!("Bearer {}", t.secret);
    let r = send(
        gate.port,
        "GET",
        "/npm/acme/web/-/whoami",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(body, serde_json::json!({ "username": t.username }));
    // Still a decision: no token, another project's token, a revoked one.
    let other = gate.token("project:acme/api", "read_package_registry", &[]);
    let revoked = gate.token("project:acme/web", "read_package_registry", &[]);
    gate.cli(&["token", "revoke", &revoked.id.to_string()]);
    for (auth, status) in [
        (String::new(), 401),
        (format!("Bearer {}", other.secret), 403),
        (format!("Bearer {}", revoked.secret), 401),
    ] {
        let headers: &[(&str, &str)] = if auth.is_empty() {
            &[]
        } else {
            &[("Authorization", &auth)]
        };
        let r = send(gate.port, "GET", "/npm/acme/web/-/whoami", headers, b"");
        assert_eq!(r.status, status, "{auth}: {}", r.text());
    }
    assert_eq!(up.seen().len(), 0);
}

#[test]
fn the_forwarded_path_is_exactly_the_matched_one() {
    let up = Recorder::start();
    let gate = Gate::start(&config(&up));
    let t = gate.token("group:acme", "read_package_registry", &[]);
    let auth = [("Deploy-Token", t.secret.as_str())];
    let cases = [
        ("/generic/acme/web/a%20b/c", "/base/a%20b/c"),
        ("/generic/acme/web/%61bc", "/base/abc"),
        ("/generic/acme/web/x/", "/base/x/"),
        ("/generic/acme/web/sha256:ab@c+d", "/base/sha256:ab@c+d"),
        ("/generic/acme/web/%C3%A9t%C3%A9", "/base/%C3%A9t%C3%A9"),
        (
            "/api/v4/projects/acme%2Fweb/packages/generic/p/1.0/f.tgz",
            "/base/acme/web/p/1.0/f.tgz",
        ),
        (
            "/maven/com/acme/a/1/a-1.jar",
            "/base/maven/com/acme/a/1/a-1.jar",
        ),
    ];
    for (sent, want) in cases {
        up.clear();
        let r = send(gate.port, "GET", sent, &auth, b"");
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        assert_eq!(up.seen()[0].target, want, "{sent}");
    }
    let npm_auth = [("Authorization", &*format!("Bearer {}", t.secret))];
    up.clear();
    assert_eq!(
        send(
            gate.port,
            "GET",
            "/npm/acme/web/@scope%2fpkg",
            &npm_auth,
            b""
        )
        .status,
        200
    );
    assert_eq!(up.seen()[0].target, "/base/@scope%2Fpkg");
}

#[test]
fn every_denial_has_its_status_and_is_never_forwarded() {
    let up = Recorder::start();
    let gate = Gate::start(&config(&up));
    let reader = gate.token("project:acme/web", "read_package_registry", &[]);
    let writer = gate.token("project:acme/web", "write_package_registry", &[]);
    let other = gate.package_writer("project:acme/api");
    let sibling = gate.token("group:acme-other", "read_package_registry", &[]);
    let registry = gate.token("project:acme/web", "read_registry,write_registry", &[]);
    let revoked = gate.token("project:acme/web", "read_package_registry", &[]);
    gate.revoke(revoked.id);
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let expired = gate.token(
        "project:acme/web",
        "read_package_registry",
        &["--expires-at", &soon],
    );
    std::thread::sleep(Duration::from_millis(2200));

    let fake = "tgdt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000";
    let unknown = {
        // Well-formed (valid checksum) but never issued.
        let other_store = format!(
            "[store]\nurl = \"sqlite://{}\"\n",
            gate.dir.path().join("other.db").display()
        );
        let other = common::write(gate.dir.path(), "other.toml", &other_store);
        let out = std::process::Command::new(common::bin())
            .args([
                "token",
                "create",
                "--project",
                "x/y",
                "--name",
                "n",
                "--scopes",
                "read_package_registry",
            ])
            .env("TOKENGATE_CONFIG", other)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().last().unwrap().to_string()
    };
    let b = |t: &common::Token| t.basic();
    // method, target, headers, status, part of the message
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/generic/acme/web/f",
            vec![],
            401,
            "deploy token required",
        ),
        (
            "GET",
            "/generic/acme/web/f",
            vec![("Deploy-Token", fake.into())],
            401,
            "invalid deploy token",
        ),
        (
            "GET",
            "/generic/acme/web/f",
            vec![("Deploy-Token", unknown.clone())],
            401,
            "invalid deploy token",
        ),
        (
            "GET",
            "/generic/acme/web/f",
            vec![("Authorization", basic("someone-else", &reader.secret))],
            401,
            "username",
        ),
        (
            "GET",
            "/generic/acme/web/f",
            vec![("Authorization", b(&revoked))],
            401,
            "revoked",
        ),
        (
            "GET",
            "/generic/acme/web/f",
            vec![("Authorization", b(&expired))],
            401,
            "expired",
        ),
        (
            "PUT",
            "/generic/acme/web/f",
            vec![("Authorization", b(&reader))],
            403,
            "write_package_registry",
        ),
        (
            "GET",
            "/generic/acme/web/f",
            vec![("Authorization", b(&writer))],
            403,
            "read_package_registry",
        ),
        (
            "GET",
            "/generic/acme/web/f",
            vec![("Authorization", b(&other))],
            403,
            "namespace acme/web",
        ),
        (
            "GET",
            "/generic/acme/web/f",
            vec![("Authorization", b(&sibling))],
            403,
            "namespace",
        ),
        (
            "GET",
            "/generic/acme/web/f",
            vec![("Authorization", b(&registry))],
            403,
            "read_package_registry",
        ),
        (
            "PATCH",
            "/generic/acme/web/f",
            vec![("Authorization", b(&writer))],
            403,
            "not allowed",
        ),
        (
            "GET",
            "/api/v4/projects/acme%2Fapi/packages/generic/f",
            vec![("Authorization", b(&reader))],
            403,
            "namespace acme/api",
        ),
        (
            "GET",
            "/nothing/here",
            vec![("Authorization", b(&reader))],
            404,
            "no route",
        ),
        (
            "GET",
            "/generic/acme/webx/f",
            vec![("Authorization", b(&reader))],
            404,
            "no route",
        ),
    ];
    for (method, target, headers, status, message) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = send(gate.port, method, target, &headers, b"");
        assert_eq!(
            r.status,
            *status,
            "{method} {target} {headers:?}: {}",
            r.text()
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "{method} {target}: {body}"
        );
        if *status == 401 {
            assert_eq!(
                r.header("www-authenticate"),
                Some("Basic realm=\"tokengate\"")
            );
        }
    }
    assert!(
        up.seen().is_empty(),
        "denied requests reached the upstream: {:?}",
        up.seen()
    );
}

#[test]
fn bad_input_gets_a_clear_4xx_and_nothing_is_forwarded() {
    let up = Recorder::start();
    let gate = Gate::start(&config(&up));
    let t = gate.package_writer("group:acme");
    let good = t.basic();
    let paths = [
        "/generic/acme/web/%2e%2e/%2e%2e/etc/passwd",
        "/generic/acme/web/../web/f",
        "/generic/acme/web/./f",
        "/generic/acme/web/a%2Fb",
        "/generic/acme/web/a%2fb",
        "/generic%2Facme/web/f",
        "/generic/acme/web//f",
        "//generic/acme/web/f",
        "/generic/acme/web/a\\b",
        "/generic/acme/web/a%5Cb",
        "/generic/acme/web/a%00b",
        "/generic/acme/web/a%0d%0aX-Injected:%201",
        "/generic/acme/web/a;jsessionid=x",
        "/generic/acme/web/a%3Bx",
        "/generic/acme/web/a%3Fx=1",
        "/generic/acme/web/a%23x",
        "/generic/acme/web/%252e%252e/f",
        "/generic/acme/web/a%zz",
        "/generic/acme/web/f?x=%00",
        "/generic/acme/web/f?private_token=glpat-x",
        "/generic/acme/web/f?a=1&job%5Ftoken=x",
        // Upstream diagnostics that would show the proxy's own credentials.
        "/generic/acme/web/f?describe=json",
        "/generic/acme/web/f?trace",
        "/api/v4/projects/acme%2F..%2Fother/packages/generic/f",
        // A dot step inside an npm scoped name's encoded slash.
        "/npm/acme/web/@x%2F../-/npm/v1/tokens",
        "/npm/acme/web/@x%2F..%2F..%2Fother/p",
        "http://evil.test/generic/acme/web/f",
        "*",
    ];
    // Absolute-form naming another host whose name ends like the proxy's.
    let suffix = format!("http://0.1:{}/generic/acme/web/f", gate.port);
    for target in paths.iter().copied().chain([suffix.as_str()]) {
        let r = send(gate.port, "GET", target, &[("Authorization", &good)], b"");
        assert_eq!(r.status, 400, "{target}: {}", r.text());
    }
    // Headers some upstreams take as the real method or URL.
    for (name, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "PUT"),
        ("X-Method-Override", "DELETE"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        // Artifactory upload directives: a checksum deploy copies whatever
        // artifact has the checksum, any project's.
        ("X-Checksum-Deploy", "true"),
        ("X-Explode-Archive", "true"),
        ("X-Explode-Archive-Atomic", "true"),
        // A form body: servers read its fields (`describe=`,
        // `private_token=`) as parameters beside the checked query.
        (
            "Content-Type",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        ),
    ] {
        let headers = [("Authorization", good.as_str()), (name, value)];
        let r = send(gate.port, "PUT", "/generic/acme/web/f", &headers, b"");
        assert_eq!(r.status, 400, "{name}: {}", r.text());
    }
    // A GET or HEAD with a body, however it is framed.
    for method in ["GET", "HEAD"] {
        let headers = [("Authorization", good.as_str())];
        let r = send(gate.port, method, "/generic/acme/web/f", &headers, b"GET /");
        assert_eq!(r.status, 400, "{method} with Content-Length: {}", r.text());
    }
    let chunked = format!(
        "GET /generic/acme/web/f HTTP/1.1\r\nHost: x\r\nAuthorization: {good}\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nGET /\r\n0\r\n\r\n"
    );
    let r = send_raw(gate.port, chunked.as_bytes());
    assert_eq!(r.status, 400, "GET with a chunked body: {}", r.text());
    let authorizations = [
        "Basic !!!notbase64".to_string(),
        "Basic".to_string(),
        "Basic ".to_string(),
        format!("Basic {}", base64_of("no-colon")),
        format!("Basic {}", base64_of(":nouser")),
        "Bearer".to_string(),
        "Bearer a b".to_string(),
        "Negotiate abc".to_string(),
        format!("Bearer {}", "A".repeat(6000)),
        "tgdt_short".to_string(),
        format!("Bearer {}x", t.secret),
        format!("Bearer {}", t.secret.to_lowercase()),
    ];
    for auth in &authorizations {
        let r = send(
            gate.port,
            "GET",
            "/generic/acme/web/f",
            &[("Authorization", auth)],
            b"",
        );
        assert_eq!(r.status, 401, "{auth:.40}: {}", r.text());
    }
    // Two different credentials: refused. The same token twice is one credential.
    let other = gate.token("project:acme/web", "read_package_registry", &[]);
    let two = send(
        gate.port,
        "GET",
        "/generic/acme/web/f",
        &[("Authorization", &good), ("Deploy-Token", &other.secret)],
        b"",
    );
    assert_eq!(two.status, 401, "{}", two.text());
    let same = send(
        gate.port,
        "GET",
        "/generic/acme/web/f",
        &[("Authorization", &good), ("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!(same.status, 200, "{}", same.text());
    let huge = "x".repeat(70_000);
    let r = send(
        gate.port,
        "GET",
        "/generic/acme/web/f",
        &[("Authorization", &good), ("X-Big", &huge)],
        b"",
    );
    assert_eq!(r.status, 431);
    let absolute = send(
        gate.port,
        "GET",
        &format!("http://127.0.0.1:{}/generic/acme/web/f", gate.port),
        &[("Authorization", &good)],
        b"",
    );
    assert_eq!(
        absolute.status, 200,
        "absolute-form naming the proxy itself is allowed"
    );
    assert_eq!(
        up.seen().len(),
        2,
        "only the same-token and absolute-form requests were forwarded: {:?}",
        up.seen()
    );
}

/// A Helm chart repository behind a generic route: its upload endpoint
/// takes a multipart form, and the route's write rule says so.
const CHARTS_ROUTE: &str = r#"
[[route]]
name = "charts"
format = "generic"
path = "/charts/acme/web"
namespace = "acme/web"
upstream = "rec"
strip_prefix = true

[[route.access]]
method = "POST"
path = "/api/*/charts"
access = "write"
multipart = true
"#;

/// Rack (GitLab) reads a multipart body's fields as parameters, as it does
/// a URL-encoded form's: `private_token=` in one would pass the query check.
/// Only the uploads that are multipart by protocol (twine's) carry one, and
/// those a route's write rule names (`multipart = true`).
#[test]
fn multipart_bodies_pass_only_as_the_uploads_that_send_them() {
    let up = Recorder::start();
    let gate = Gate::start(&(config(&up) + CHARTS_ROUTE));
    let auth = gate.package_writer("project:acme/web").basic();
    let form = b"--b\r\nContent-Disposition: form-data; name=\"private_token\"\r\n\r\nglpat-x\r\n--b--\r\n";
    let multipart = "multipart/form-data; boundary=b";
    for (method, target) in [
        ("PUT", "/generic/acme/web/f"),
        ("PUT", "/npm/acme/web/pkg"),
        ("PUT", "/maven/acme/web/a/1/a-1.jar"),
        // A PyPI request that is no upload: the index, another POST.
        ("GET", "/pypi/acme/web/simple/pkg/"),
        ("POST", "/pypi/acme/web/RPC2"),
        // Beside the chart upload the rule names: another method, another path.
        ("PUT", "/charts/acme/web/api/stable/charts"),
        ("POST", "/charts/acme/web/api/stable/charts/x"),
        ("POST", "/charts/acme/web/api/stable"),
    ] {
        for content_type in [multipart, "Multipart/Form-Data;boundary=b"] {
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Type", content_type),
            ];
            let body: &[u8] = if method == "GET" { b"" } else { form };
            let r = send(gate.port, method, target, &headers, body);
            assert_eq!(r.status, 400, "{method} {target}: {}", r.text());
            assert!(r.text().contains("multipart"), "{}", r.text());
        }
    }
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
    // twine's upload, to the route's root and to `legacy/`, is forwarded whole.
    for target in ["/pypi/acme/web/", "/pypi/acme/web/legacy/"] {
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", multipart),
        ];
        let r = send(gate.port, "POST", target, &headers, form);
        assert_eq!(r.status, 200, "{target}: {}", r.text());
    }
    // So is a chart upload where the rule allows it, to a writer only.
    let chart = "/charts/acme/web/api/stable/charts";
    let reader = gate.token("project:acme/web", "read_package_registry", &[]);
    for (auth, status) in [(auth.clone(), 200), (reader.basic(), 403)] {
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", multipart),
        ];
        let r = send(gate.port, "POST", chart, &headers, form);
        assert_eq!(r.status, status, "{}", r.text());
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].target, "/base/legacy/");
    assert_eq!(seen[1].body, form);
    assert_eq!(seen[2].target, "/base/api/stable/charts");
    assert_eq!(seen[2].body, form);
}

/// The head limit (64 KiB) holds however the head arrives: in one piece
/// or a kilobyte at a time, each read small but the head not. Bodies are
/// not heads: an upload many times the limit passes.
#[test]
fn a_head_over_the_limit_is_refused_however_it_arrives() {
    let up = Recorder::start();
    let gate = Gate::start(&config(&up));
    let t = gate.package_writer("project:acme/web");
    let token = ("Deploy-Token", t.secret.as_str());
    let fits = "x".repeat(60_000);
    let r = send(
        gate.port,
        "GET",
        "/generic/acme/web/fits",
        &[token, ("X-Big", &fits)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let mut stream = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /generic/acme/web/dribbled HTTP/1.1\r\nHost: x\r\nDeploy-Token: {}\r\n",
        t.secret
    )
    .unwrap();
    let line = format!("X-Pad: {}\r\n", "p".repeat(1000));
    // 66 lines of 1 KiB: past the limit, and the head never ends.
    for _ in 0..66 {
        stream.write_all(line.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = common::read_response(&mut BufReader::new(stream));
    assert_eq!(r.status, 431, "{}", r.text());

    let body = vec![b'b'; 1 << 20];
    let r = send(gate.port, "PUT", "/generic/acme/web/big", &[token], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/base/fits", "/base/big"]);
    assert_eq!(seen[1].body_len, 1 << 20);
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn redirects_and_metadata_point_back_at_the_proxy() {
    let up = Recorder::start();
    let gate = Gate::start(&config(&up).replace("/base\"", "\""));
    let t = gate.token("group:acme", "read_package_registry", &[]);
    let r = send(
        gate.port,
        "GET",
        "/generic/acme/web/redirect",
        &[("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").unwrap(),
        format!("{}/generic/acme/web/elsewhere/x?y=1", gate.url())
    );
    // A placeholder route's upstream prefix holds the namespace: its URLs map
    // back under the route's public prefix.
    let placeholder = "/api/v4/projects/acme%2Fweb/packages/generic";
    let r = send(
        gate.port,
        "GET",
        &format!("{placeholder}/redirect"),
        &[("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").unwrap(),
        format!("{}{placeholder}/elsewhere/x?y=1", gate.url())
    );
    let r = send(
        gate.port,
        "GET",
        "/npm/acme/web/meta",
        &[("Authorization", &format!("Bearer {}", t.secret))],
        b"",
    );
    assert_eq!(r.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        doc["dist"]["tarball"],
        format!("{}/npm/acme/web/pkg/-/pkg-1.0.0.tgz", gate.url())
    );
    assert_eq!(
        up.seen().last().unwrap().header("accept-encoding"),
        ["identity"]
    );
}

/// Metadata is read whole to be rewritten, so all rewrites share one byte
/// budget: while a client is slow to take a large rewritten document, a
/// second one that would pass the budget gets 503 at once, small ones still
/// pass, and the budget comes back when the slow client has its answer.
#[test]
fn metadata_rewrites_share_one_memory_budget() {
    const DOC: usize = 16 << 20;
    let root = tempfile::tempdir().unwrap();
    let doc = format!("{{\"name\":\"big\",\"pad\":\"{}\"}}", "x".repeat(DOC));
    std::fs::write(root.path().join("big.json"), &doc).unwrap();
    let up = Recorder::start_serving(Some(root.path().to_path_buf()));
    let server = format!(
        "metadata_max_bytes = {}\nmetadata_budget_bytes = {}\n",
        DOC + 1024,
        3 * (DOC + 1024) + 8192
    );
    let gate = Gate::start_full(&server, &config(&up).replace("/base\"", "\""), &[]);
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let auth = t.basic();
    let get = |path: &str| send(gate.port, "GET", path, &[("Authorization", &auth)], b"");

    // Asks, and reads nothing for now: more than the socket buffers hold
    // stays with the proxy, and so does its share of the budget.
    let mut slow = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    write!(
        slow,
        "GET /npm/acme/web/big.json HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"
    )
    .unwrap();
    assert!(
        !up.seen_at_least(1, Duration::from_secs(10)).is_empty(),
        "never forwarded"
    );
    std::thread::sleep(Duration::from_millis(500));

    let busy = get("/npm/acme/web/big.json");
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(get("/npm/acme/web/meta").status, 200, "a small one fits");

    let answer = common::read_response(&mut BufReader::new(&mut slow));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), doc.len());
    let again = get("/npm/acme/web/big.json");
    assert_eq!(again.status, 200, "the budget came back");
    assert_eq!(again.body, doc.as_bytes());
}

#[test]
fn revocation_beside_a_running_proxy_takes_effect_within_a_second() {
    let up = Recorder::start();
    let gate = Gate::start(&config(&up));
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let get = || {
        send(
            gate.port,
            "GET",
            "/generic/acme/web/f",
            &[("Deploy-Token", &t.secret)],
            b"",
        )
        .status
    };
    assert_eq!(get(), 200);
    assert_eq!(get(), 200, "now cached");
    gate.revoke(t.id);
    let revoked_at = Instant::now();
    while get() != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "revoked token still allowed after 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("revocation took effect after {:?}", revoked_at.elapsed());
}

#[test]
fn gigabyte_bodies_stream_both_ways_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let up = Recorder::start();
    let gate = Gate::start(&config(&up));
    let t = gate.package_writer("project:acme/web");
    let (rss_before, _) = gate.rss_kib();

    // Upload: 1 GiB written in 1 MiB chunks.
    let mut stream = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    write!(
        stream,
        "PUT /generic/acme/web/big.bin HTTP/1.1\r\nHost: x\r\nDeploy-Token: {}\r\nContent-Length: {GIB}\r\nConnection: close\r\n\r\n",
        t.secret
    )
    .unwrap();
    let chunk = vec![b'y'; 1 << 20];
    for _ in 0..(GIB >> 20) {
        stream.write_all(&chunk).unwrap();
    }
    let r = common::read_response(&mut BufReader::new(stream));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.seen()[0].body_len, GIB);

    // Download: 1 GiB streamed from the upstream.
    let mut stream = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    write!(stream, "GET /generic/acme/web/big/{GIB} HTTP/1.1\r\nHost: x\r\nDeploy-Token: {}\r\nConnection: close\r\n\r\n", t.secret).unwrap();
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    loop {
        line.clear();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    let received = std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
    assert_eq!(received, GIB);

    let (rss_after, peak) = gate.rss_kib();
    println!("proxy RSS: before {rss_before} KiB, after {rss_after} KiB, peak {peak} KiB for 2 GiB moved");
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB: bodies were buffered"
    );
}

#[test]
fn sigterm_lets_an_in_flight_upload_finish_then_exits_zero() {
    let up = Recorder::start();
    let mut gate = Gate::start(&config(&up));
    let t = gate.token("project:acme/web", "write_package_registry", &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    let total = 8u64 << 20;
    write!(stream, "PUT /generic/acme/web/slow.bin HTTP/1.1\r\nHost: x\r\nDeploy-Token: {}\r\nContent-Length: {total}\r\n\r\n", t.secret).unwrap();
    let chunk = vec![b'z'; 1 << 20];
    stream.write_all(&chunk).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = gate.pid();
    let port = gate.port;
    let waiter = std::thread::spawn(move || gate.terminate());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener closed on SIGTERM"
    );
    for _ in 1..(total >> 20) {
        stream.write_all(&chunk).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = common::read_response(&mut BufReader::new(stream));
    assert_eq!(r.status, 200);
    assert_eq!(up.seen()[0].body_len, total);
    let status = waiter.join().unwrap();
    assert!(status.success(), "tokengate {pid} exited with {status}");
}

#[test]
fn h2c_prior_knowledge_is_served() {
    let up = Recorder::start();
    let gate = Gate::start(&config(&up));
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let req = http::Request::get(format!("{}/generic/acme/web/h2", gate.url()))
            .header("deploy-token", &t.secret)
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        resp.status()
    });
    assert_eq!(status, 200);
    assert_eq!(up.seen()[0].target, "/base/h2");
}

#[test]
fn no_secret_appears_in_any_log_line() {
    let up = Recorder::start();
    let gate = Gate::start(&config(&up));
    let good = gate.token("project:acme/web", "read_package_registry", &[]);
    let other = gate.token("project:acme/api", "read_package_registry", &[]);
    let revoked = gate.token("project:acme/web", "read_package_registry", &[]);
    gate.revoke(revoked.id);
    for t in [&good, &other, &revoked] {
        send(
            gate.port,
            "GET",
            "/generic/acme/web/f",
            &[("Authorization", &t.basic())],
            b"",
        );
        send(
            gate.port,
            "GET",
            "/generic/acme/web/f",
            &[("Deploy-Token", &t.secret)],
            b"",
        );
        send(
            gate.port,
            "PUT",
            "/generic/acme/web/f",
            &[("Authorization", &format!("Bearer {}", t.secret))],
            b"data",
        );
        send(
            gate.port,
            "GET",
            "/npm/acme/web/x",
            &[("Authorization", &format!("Bearer {}", t.secret))],
            b"",
        );
        send(
            gate.port,
            "GET",
            "/generic/acme/web/%2e%2e",
            &[("Deploy-Token", &t.secret)],
            b"",
        );
        send(
            gate.port,
            "GET",
            "/generic/acme/web/f",
            &[("Authorization", &basic("wrong", &t.secret))],
            b"",
        );
    }
    let logs = gate.logs() + &std::fs::read_to_string(gate.dir.path().join("cli.log")).unwrap();
    assert!(
        logs.contains(r#""decision":"allowed""#),
        "the access log is there: {logs}"
    );
    for t in [&good, &other, &revoked] {
        assert!(!logs.contains(&t.secret), "a secret was logged");
        assert!(
            !logs.contains(&base64_of(&format!("{}:{}", t.username, t.secret))),
            "a Basic credential was logged"
        );
        assert!(
            !logs.contains(&t.secret[5..20]),
            "part of a secret was logged"
        );
    }
}

#[test]
fn silent_connections_and_stalled_bodies_are_cut() {
    let up = Recorder::start();
    let gate = Gate::start_full(
        "header_read_timeout_seconds = 1\nbody_idle_timeout_seconds = 1",
        &config(&up),
        &[],
    );
    let t = gate.token("project:acme/web", "write_package_registry", &[]);

    // A connection that never sends its headers is closed.
    let mut silent = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut silent, &mut buf);
    common::assert_within(
        started,
        Duration::from_secs(5),
        "silent connection held for",
    );

    // Nor does one that sends only the HTTP/2 preface (prior knowledge): it
    // is pinged and, not answering, dropped.
    let mut h2 = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    h2.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut h2, &mut buf);
    common::assert_within(
        started,
        Duration::from_secs(8),
        "silent HTTP/2 connection held for",
    );

    // An upload that stalls half-way is cut, and the upstream never gets a complete body.
    let mut stalled = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stalled, "PUT /generic/acme/web/stall HTTP/1.1\r\nHost: x\r\nDeploy-Token: {}\r\nContent-Length: 1000\r\n\r\nhalf", t.secret).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stalled, &mut buf);
    common::assert_within(started, Duration::from_secs(5), "stalled upload held for");
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        up.seen().iter().all(|s| s.body_len < 1000),
        "{:?}",
        up.seen()
    );
}

/// `upstream_response_timeout` counts from the request body's latest byte:
/// an upload that keeps moving for longer than it is not cut, and an upstream
/// that stops reading the body (so it stops moving) still times out.
#[test]
fn the_upstream_answer_is_due_after_the_upload_not_from_its_start() {
    let up = Recorder::start();
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_port = stuck.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Reads the head, then neither the body nor an answer.
        let held: Vec<_> = stuck.incoming().flatten().collect();
        drop(held);
    });
    let routes = config(&up)
        + &format!(
            "\n[upstream.stuck]\nurl = \"http://127.0.0.1:{stuck_port}\"\n\n[[route]]\nname = \"stuck\"\nformat = \"generic\"\npath = \"/generic/acme/stuck\"\nnamespace = \"acme/stuck\"\nupstream = \"stuck\"\nstrip_prefix = true\n"
        );
    let gate = Gate::start_full("upstream_response_timeout_seconds = 1", &routes, &[]);
    let t = gate.token("group:acme", "write_package_registry", &[]);

    let chunk = vec![b'u'; 1 << 20];
    let mut slow = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        slow,
        "PUT /generic/acme/web/slow.bin HTTP/1.1\r\nHost: x\r\nDeploy-Token: {}\r\nContent-Length: {}\r\n\r\n",
        t.secret,
        4 * chunk.len()
    )
    .unwrap();
    for _ in 0..4 {
        slow.write_all(&chunk).unwrap();
        std::thread::sleep(Duration::from_millis(800));
    }
    let answer = common::read_response(&mut BufReader::new(&mut slow));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(up.seen().last().unwrap().body_len, 4 << 20);

    let started = Instant::now();
    let mut stuck = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    stuck
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stuck.try_clone().unwrap();
    let secret = t.secret.clone();
    std::thread::spawn(move || {
        let size = 32 << 20;
        let _ = write!(
            writer,
            "PUT /generic/acme/stuck/f.bin HTTP/1.1\r\nHost: x\r\nDeploy-Token: {secret}\r\nContent-Length: {size}\r\n\r\n"
        );
        let _ = writer.write_all(&vec![b's'; size]);
    });
    let r = common::read_response(&mut BufReader::new(&mut stuck));
    assert_eq!(r.status, 504, "{}", r.text());
    common::assert_within(
        started,
        Duration::from_secs(10),
        "an upstream that stopped reading held the upload for",
    );
}

/// A client that stops reading a response is cut after the body idle
/// timeout: hyper asks the body for more only when it can write, so without
/// a deadline on the writes themselves the response (and its upstream
/// connection) would wait for as long as the client keeps the socket open.
#[test]
fn a_client_that_stops_reading_is_cut() {
    let up = Recorder::start();
    let gate = Gate::start_full("body_idle_timeout_seconds = 1", &config(&up), &[]);
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    const SIZE: usize = 256 << 20;
    let mut reader = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    write!(
        reader,
        "GET /generic/acme/web/big/{SIZE} HTTP/1.1\r\nHost: x\r\nDeploy-Token: {}\r\n\r\n",
        t.secret
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match std::io::Read::read(&mut reader, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got < SIZE,
        "the whole response waited for a client that stopped reading"
    );
}

/// Metadata read whole for rewriting is under the body idle timeout too: an
/// upstream that stalls half-way through a packument gets the client a 502.
#[test]
fn a_stalled_metadata_body_is_cut() {
    let port = common::stalling_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"half",
    );
    let routes = format!(
        "[upstream.stalling]\nurl = \"http://127.0.0.1:{port}\"\n\n[[route]]\nname = \"npm\"\nformat = \"npm\"\npath = \"/npm/acme/web\"\nnamespace = \"acme/web\"\nupstream = \"stalling\"\nstrip_prefix = true\n"
    );
    let gate = Gate::start_full("body_idle_timeout_seconds = 1", &routes, &[]);
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let started = Instant::now();
    let r = send(
        gate.port,
        "GET",
        "/npm/acme/web/left-pad",
        &[("Authorization", &format!("Bearer {}", t.secret))],
        b"",
    );
    assert_eq!(r.status, 502, "{}", r.text());
    common::assert_within(started, Duration::from_secs(5), "stalled metadata held for");
}

#[test]
fn wrong_credentials_are_limited_per_address_not_per_token() {
    let up = Recorder::start();
    let gate = Gate::start_full("failed_auth_per_minute = 5", &config(&up), &[]);
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    // Missing credentials (the challenge step) never count.
    for _ in 0..10 {
        assert_eq!(
            send(gate.port, "GET", "/generic/acme/web/f", &[], b"").status,
            401
        );
    }
    assert_eq!(
        send(
            gate.port,
            "GET",
            "/generic/acme/web/f",
            &[("Deploy-Token", &t.secret)],
            b""
        )
        .status,
        200
    );
    // Five wrong secrets for this token's username from 127.0.0.1 ...
    for _ in 0..5 {
        let r = send(
            gate.port,
            "GET",
            "/generic/acme/web/f",
            &[("Authorization", &basic(&t.username, "tgdt_guess"))],
            b"",
        );
        assert_eq!(r.status, 401);
    }
    // ... block that address, even with the right secret, and nothing is forwarded ...
    up.clear();
    let r = send(
        gate.port,
        "GET",
        "/generic/acme/web/f",
        &[("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("60"));
    assert!(up.seen().is_empty());
    // ... but the token itself is not locked out: another address still gets through.
    let r = common::send_from(
        [127, 0, 0, 2],
        gate.port,
        "GET",
        "/generic/acme/web/f",
        &[("Deploy-Token", &t.secret)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(up.seen()[0].header("x-forwarded-for"), ["127.0.0.2"]);
}

#[test]
fn behind_a_trusted_load_balancer_the_forwarded_client_is_limited_not_the_balancer() {
    let up = Recorder::start();
    // 127.0.0.1 plays the load balancer; 127.0.0.2 is a client reaching the proxy directly.
    let (balancer, direct) = ([127, 0, 0, 1], [127, 0, 0, 2]);
    let server = "failed_auth_per_minute = 3\ntrusted_proxies = [\"127.0.0.1\"]";
    let gate = Gate::start_full(server, &config(&up), &[]);
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let get = |from: [u8; 4], forwarded_for: &str, secret: &str| {
        let headers = [("X-Forwarded-For", forwarded_for), ("Deploy-Token", secret)];
        common::send_from(from, gate.port, "GET", "/generic/acme/web/f", &headers, b"")
    };
    // A client behind the balancer fails three times, a spoofed entry before
    // the balancer's own changing nothing ...
    for spoofed in ["", "6.6.6.1, ", "6.6.6.2, "] {
        let forwarded_for = format!("{spoofed}203.0.113.7");
        assert_eq!(get(balancer, &forwarded_for, "tgdt_guess").status, 401);
    }
    // ... and is refused, even with the right secret; nothing is forwarded.
    up.clear();
    let r = get(balancer, "9.9.9.9, 203.0.113.7", &t.secret);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(up.seen().is_empty());
    // Another client behind the same balancer is not.
    assert_eq!(get(balancer, "203.0.113.8", &t.secret).status, 200);
    // The upstream is told the client, not the balancer or a spoofed entry.
    assert_eq!(up.seen()[0].header("x-forwarded-for"), ["203.0.113.8"]);
    let logs = gate.logs();
    assert!(logs.contains("203.0.113.7"), "{logs}");

    // An untrusted peer's X-Forwarded-For is ignored: changing it evades nothing.
    for n in 1..=3 {
        let forwarded_for = format!("198.51.100.{n}");
        assert_eq!(get(direct, &forwarded_for, "tgdt_guess").status, 401);
    }
    up.clear();
    assert_eq!(get(direct, "198.51.100.9", &t.secret).status, 429);
    assert!(up.seen().is_empty());
}
