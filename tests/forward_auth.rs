//! Forward-auth mode on loopback: the decision listener answers nginx
//! (`/nginx`), Traefik (`/traefik`) and Envoy (`/envoy/...`) exactly as the
//! proxy mode decides, and believes a description of the original request only
//! from a trusted edge proxy.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use common::{basic, free_port, send, Gate, RawResponse, Setup};
use recorder::Recorder;

/// A gate with generic, npm and OCI routes in front of `up`, and a decision
/// listener trusting `trusted`.
fn start(up: &Recorder, trusted: &str) -> (Gate, u16) {
    let dir = tempfile::tempdir().unwrap();
    let decision = free_port();
    let body = format!(
        r#"
[forward_auth]
listen = "127.0.0.1:{decision}"
trusted_peers = [{trusted}]

[signing]
key_file = "{key}"

[upstream.rec]
url = "{url}"

[[route]]
name = "web"
format = "generic"
path = "/generic/acme/web"
namespace = "acme/web"
upstream = "rec"

[[route]]
name = "npm"
format = "npm"
path = "/npm/acme/web"
namespace = "acme/web"
upstream = "rec"
strip_prefix = true

[[route]]
name = "containers"
format = "oci"
path = "/v2"
upstream = "rec"
"#,
        key = dir.path().join("signing.pem").display(),
        url = up.url()
    );
    let gate = Gate::launch(Setup {
        body: &body,
        server_extra: "failed_auth_per_minute = 0",
        ..Setup::default()
    });
    std::mem::forget(dir);
    common::wait_for_port(decision, std::time::Duration::from_secs(10));
    (gate, decision)
}

/// The verdict of one request in each mode: "allowed" or the refusal's status.
#[derive(Debug, PartialEq, Eq)]
struct Verdicts {
    proxy: String,
    nginx: String,
    traefik: String,
    envoy: String,
}

fn verdict(r: &RawResponse) -> String {
    if r.status == 200 {
        return "allowed".into();
    }
    // nginx is told 403 for refusals it cannot pass on; the real status rides along.
    let status = r
        .header("x-tokengate-status")
        .map_or(r.status.to_string(), str::to_string);
    let challenge = r.header("www-authenticate").unwrap_or("-");
    format!("{status} {challenge}")
}

fn ask_all(
    gate: &Gate,
    decision: u16,
    up: &Recorder,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Verdicts {
    let before = up.seen().len();
    let r = send(gate.port, method, target, headers, b"");
    let forwarded = up.seen().len() > before;
    let proxy = if forwarded {
        "allowed".to_string()
    } else {
        verdict(&r)
    };
    fn with<'h>(
        headers: &[(&'h str, &'h str)],
        extra: &[(&'h str, &'h str)],
    ) -> Vec<(&'h str, &'h str)> {
        let mut all = headers.to_vec();
        all.extend_from_slice(extra);
        all
    }
    let nginx = send(
        decision,
        "GET",
        "/nginx",
        &with(
            headers,
            &[("X-Original-Method", method), ("X-Original-URI", target)],
        ),
        b"",
    );
    let traefik = send(
        decision,
        "GET",
        "/traefik",
        &with(
            headers,
            &[("X-Forwarded-Method", method), ("X-Forwarded-Uri", target)],
        ),
        b"",
    );
    let envoy = send(decision, method, &format!("/envoy{target}"), headers, b"");
    assert_eq!(
        up.seen().len(),
        before + usize::from(forwarded),
        "the decision listener never forwards"
    );
    for allowed in [&nginx, &traefik, &envoy]
        .into_iter()
        .filter(|r| r.status == 200)
    {
        assert!(allowed.header("x-tokengate-token-id").is_some());
        assert!(allowed.body.is_empty());
    }
    Verdicts {
        proxy,
        nginx: verdict(&nginx),
        traefik: verdict(&traefik),
        envoy: verdict(&envoy),
    }
}

/// Method, target, headers, and what the proxy mode says (checked too).
type Row<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn both_modes_give_the_same_verdict_for_every_request() {
    let up = Recorder::start();
    let (gate, decision) = start(&up, r#""127.0.0.1""#);
    let rw = gate.token(
        "project:acme/web",
        "read_package_registry,write_package_registry",
        &[],
    );
    let ro = gate.token("project:acme/web", "read_package_registry", &[]);
    let wo = gate.token("project:acme/web", "write_package_registry", &[]);
    let other = gate.token(
        "project:acme/api",
        "read_package_registry,write_package_registry",
        &[],
    );
    let revoked = gate.token("project:acme/web", "read_package_registry", &[]);
    gate.revoke(revoked.id);
    let registry = gate.token("project:acme/web", "read_registry,write_registry", &[]);
    let pull = gate.registry_jwt(&registry, "repository:acme/web/app:pull");
    let pull = format!("Bearer {pull}");

    let rw_basic = rw.basic();
    let ro_basic = ro.basic();
    let wrong_user = basic("someone-else", &rw.secret);
    let bearer_ro = format!("Bearer {}", ro.secret);
    let bearer_wo = format!("Bearer {}", wo.secret);
    let bearer_other = format!("Bearer {}", other.secret);
    let bearer_revoked = format!("Bearer {}", revoked.secret);
    let rows: Vec<Row> = vec![
        (
            "GET",
            "/generic/acme/web/a.bin",
            vec![("Deploy-Token", &rw.secret)],
            "allowed",
        ),
        (
            "GET",
            "/generic/acme/web/a.bin",
            vec![("Authorization", &rw_basic)],
            "allowed",
        ),
        (
            "PUT",
            "/generic/acme/web/a.bin",
            vec![("Authorization", &ro_basic)],
            "403",
        ),
        (
            "PUT",
            "/generic/acme/web/a.bin",
            vec![("Deploy-Token", &wo.secret)],
            "allowed",
        ),
        (
            "GET",
            "/generic/acme/web/a.bin",
            vec![("Deploy-Token", &other.secret)],
            "403",
        ),
        (
            "GET",
            "/generic/acme/web/a.bin",
            vec![("Deploy-Token", &revoked.secret)],
            "401",
        ),
        (
            "GET",
            "/generic/acme/web/a.bin",
            vec![("Authorization", &wrong_user)],
            "401",
        ),
        ("GET", "/generic/acme/web/a.bin", vec![], "401"),
        (
            "GET",
            "/generic/acme/web/a.bin",
            vec![("Deploy-Token", "tgdt_wrong")],
            "401",
        ),
        // Path attacks: refused alike, before any credential is looked at.
        (
            "GET",
            "/generic/acme/web/../api/a.bin",
            vec![("Deploy-Token", &rw.secret)],
            "400",
        ),
        (
            "GET",
            "/generic/acme/web/..%2Fapi/a.bin",
            vec![("Deploy-Token", &rw.secret)],
            "400",
        ),
        (
            "GET",
            "/generic/acme/web/%2e%2e/api/a.bin",
            vec![("Deploy-Token", &rw.secret)],
            "400",
        ),
        (
            "GET",
            "/generic/acme/web/a%zz",
            vec![("Deploy-Token", &rw.secret)],
            "400",
        ),
        (
            "GET",
            "/generic/acme/web//a.bin",
            vec![("Deploy-Token", &rw.secret)],
            "400",
        ),
        (
            "GET",
            "/generic/acme/api/a.bin",
            vec![("Deploy-Token", &rw.secret)],
            "404",
        ),
        ("GET", "/nope", vec![("Deploy-Token", &rw.secret)], "404"),
        // npm: Bearer, reads and publishes.
        (
            "GET",
            "/npm/acme/web/left-pad",
            vec![("Authorization", &bearer_ro)],
            "allowed",
        ),
        (
            "PUT",
            "/npm/acme/web/left-pad",
            vec![("Authorization", &bearer_ro)],
            "403",
        ),
        (
            "PUT",
            "/npm/acme/web/left-pad",
            vec![("Authorization", &bearer_wo)],
            "allowed",
        ),
        (
            "GET",
            "/npm/acme/web/left-pad",
            vec![("Authorization", &bearer_other)],
            "403",
        ),
        (
            "GET",
            "/npm/acme/web/left-pad",
            vec![("Authorization", &bearer_revoked)],
            "401",
        ),
        // OCI: the Bearer challenge, a pull JWT, a push it does not grant, the catalog.
        ("GET", "/v2/", vec![], "401"),
        ("GET", "/v2/acme/web/app/manifests/v1", vec![], "401"),
        (
            "GET",
            "/v2/acme/web/app/manifests/v1",
            vec![("Authorization", &pull)],
            "allowed",
        ),
        (
            "HEAD",
            "/v2/acme/web/app/blobs/sha256:00",
            vec![("Authorization", &pull)],
            "allowed",
        ),
        (
            "PUT",
            "/v2/acme/web/app/manifests/v1",
            vec![("Authorization", &pull)],
            "401",
        ),
        (
            "GET",
            "/v2/acme/web/other/tags/list",
            vec![("Authorization", &pull)],
            "401",
        ),
        ("GET", "/v2/_catalog", vec![("Authorization", &pull)], "403"),
    ];
    for (method, target, headers, expected) in &rows {
        let v = ask_all(&gate, decision, &up, method, target, headers);
        assert!(
            v.proxy.starts_with(expected),
            "{method} {target}: proxy mode says {}",
            v.proxy
        );
        assert_eq!(
            (&v.nginx, &v.traefik, &v.envoy),
            (&v.proxy, &v.proxy, &v.proxy),
            "{method} {target}"
        );
    }
}

#[test]
fn an_untrusted_address_cannot_choose_the_rule() {
    let up = Recorder::start();
    // The only trusted edge proxy is elsewhere; this test's requests come from 127.0.0.1.
    let (gate, decision) = start(&up, r#""10.9.9.0/24", "::1""#);
    let rw = gate.token(
        "project:acme/web",
        "read_package_registry,write_package_registry",
        &[],
    );
    for (path, headers) in [
        (
            "/nginx",
            [
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/generic/acme/web/a.bin"),
            ],
        ),
        (
            "/traefik",
            [
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Uri", "/generic/acme/web/a.bin"),
            ],
        ),
    ] {
        let mut all = headers.to_vec();
        all.push(("Deploy-Token", &rw.secret));
        let r = send(decision, "GET", path, &all, b"");
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(
            r.text().contains("not a trusted edge proxy"),
            "{}",
            r.text()
        );
        assert!(r.header("x-tokengate-token-id").is_none());
    }
    let r = send(
        decision,
        "GET",
        "/envoy/generic/acme/web/a.bin",
        &[("Deploy-Token", &rw.secret)],
        b"",
    );
    assert_eq!(r.status, 403);
    assert!(gate.logs().contains("untrusted_peer"), "audited");
    // The proxy listener itself is not affected.
    let r = send(
        gate.port,
        "GET",
        "/generic/acme/web/a.bin",
        &[("Deploy-Token", &rw.secret)],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn a_description_that_is_missing_repeated_or_for_tokengate_itself_is_refused() {
    let up = Recorder::start();
    let (gate, decision) = start(&up, r#""127.0.0.1""#);
    let rw = gate.token(
        "project:acme/web",
        "read_package_registry,write_package_registry",
        &[],
    );
    let secret = rw.secret.as_str();
    // Missing the URI: 400, told to nginx as 403 with the real status.
    let r = send(
        decision,
        "GET",
        "/nginx",
        &[("X-Original-Method", "GET"), ("Deploy-Token", secret)],
        b"",
    );
    assert_eq!(
        (r.status, r.header("x-tokengate-status")),
        (403, Some("400"))
    );
    // Twice, as when a client's own header is passed through beside the edge proxy's.
    let r = send(
        decision,
        "GET",
        "/traefik",
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/generic/acme/api/a.bin"),
            ("X-Forwarded-Uri", "/generic/acme/web/a.bin"),
            ("Deploy-Token", secret),
        ],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // An absolute URI naming another host.
    let r = send(
        decision,
        "GET",
        "/traefik",
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "http://evil.test/generic/acme/web/a.bin"),
            ("Deploy-Token", secret),
        ],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // The token endpoint is served by the proxy listener, never "allowed" here.
    let r = send(
        decision,
        "GET",
        "/envoy/jwt/auth?service=container_registry",
        &[("Authorization", &rw.basic())],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("route it to tokengate"), "{}", r.text());
    // So is npm's whoami: forwarded, the upstream would name the proxy's account.
    let r = send(
        decision,
        "GET",
        "/envoy/npm/acme/web/-/whoami",
        &[("Authorization", &format!("Bearer {secret}"))],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("route it to tokengate"), "{}", r.text());
    // Unknown decision paths.
    assert_eq!(send(decision, "GET", "/", &[], b"").status, 404);
    assert_eq!(up.seen().len(), 0);
}

#[test]
fn trusted_peers_follow_a_config_reload() {
    let up = Recorder::start();
    let (gate, decision) = start(&up, r#""10.9.9.0/24""#);
    let rw = gate.token("project:acme/web", "read_package_registry", &[]);
    let ask = || {
        send(
            decision,
            "GET",
            "/envoy/generic/acme/web/a.bin",
            &[("Deploy-Token", &rw.secret)],
            b"",
        )
        .status
    };
    assert_eq!(ask(), 403);
    let text = std::fs::read_to_string(&gate.config).unwrap();
    std::fs::write(
        &gate.config,
        text.replace(
            r#"trusted_peers = ["10.9.9.0/24"]"#,
            r#"trusted_peers = ["127.0.0.0/8"]"#,
        ),
    )
    .unwrap();
    let start = std::time::Instant::now();
    while ask() != 200 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the reloaded trust did not apply:\n{}",
            gate.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
