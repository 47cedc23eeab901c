//! The registry token flow on loopback, in front of a recording upstream:
//! challenge, token endpoint, JWT-authorized pulls and pushes, and the
//! attacks on them (forged, foreign and stale JWTs, catalog, mounts).

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use std::time::{Duration, Instant};

use common::{basic, send, Gate, RawResponse, Setup, Token};
use recorder::Recorder;

fn start(up: &Recorder, extra_route: &str) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    let body = format!(
        r#"
[signing]
key_file = "{}"

[registry_auth]
service = "container_registry"

[upstream.registry]
url = "{}"

[[route]]
name = "containers"
format = "oci"
path = "/v2"
upstream = "registry"
{extra_route}
"#,
        key.display(),
        up.url()
    );
    let gate = Gate::launch(Setup {
        body: &body,
        ..Setup::default()
    });
    // The key lives as long as the test process; the gate's own dir is separate.
    std::mem::forget(dir);
    gate
}

/// Asks the token endpoint for `scopes` with `token`'s Basic credentials.
fn jwt(gate: &Gate, token: &Token, scopes: &[&str]) -> String {
    let r = token_request(gate, Some(&token.basic()), &query(scopes));
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["token"], body["access_token"]);
    assert!(body["expires_in"].as_i64().unwrap() >= 60);
    assert!(body["issued_at"].is_string());
    body["token"].as_str().unwrap().to_string()
}

fn query(scopes: &[&str]) -> String {
    let mut q = "service=container_registry&client_id=docker&offline_token=true".to_string();
    for s in scopes {
        q.push_str("&scope=");
        q.push_str(
            &s.replace(':', "%3A")
                .replace('/', "%2F")
                .replace(',', "%2C"),
        );
    }
    q
}

fn token_request(gate: &Gate, authorization: Option<&str>, query: &str) -> RawResponse {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    send(
        gate.port,
        "GET",
        &format!("/jwt/auth?{query}"),
        &headers,
        b"",
    )
}

fn bearer(gate: &Gate, method: &str, target: &str, jwt: &str) -> RawResponse {
    send(
        gate.port,
        method,
        target,
        &[("Authorization", &format!("Bearer {jwt}"))],
        b"",
    )
}

fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn the_token_flow_pulls_and_pushes_what_the_deploy_token_allows() {
    let up = Recorder::start();
    let gate = start(&up, "");
    let rw = gate.token("project:acme/web", "read_registry,write_registry", &[]);
    let ro = gate.token("project:acme/web", "read_registry", &[]);

    // 1. The challenge names the realm, the service and the scope.
    let r = send(gate.port, "GET", "/v2/", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate").unwrap(),
        format!(
            "Bearer realm=\"{}/jwt/auth\",service=\"container_registry\"",
            gate.url()
        )
    );
    let r = send(
        gate.port,
        "PUT",
        "/v2/acme/web/app/manifests/v1",
        &[],
        b"{}",
    );
    assert_eq!(r.status, 401);
    assert!(r
        .header("WWW-Authenticate")
        .unwrap()
        .ends_with(",scope=\"repository:acme/web/app:pull,push\""));
    let errors: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(errors["errors"][0]["code"], "UNAUTHORIZED");
    assert!(up.seen().is_empty(), "nothing forwarded without a token");

    // 2. `docker login`: /v2/ with a scope-less token.
    let login = jwt(&gate, &rw, &[]);
    assert_eq!(claims(&login)["access"], serde_json::json!([]));
    assert_eq!(bearer(&gate, "GET", "/v2/", &login).status, 200);

    // 3. Pull and push with the granted token; the upstream never sees it.
    let push = jwt(&gate, &rw, &["repository:acme/web/app:pull,push"]);
    assert_eq!(
        claims(&push)["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    assert_eq!(claims(&push)["sub"], rw.username.as_str());
    assert_eq!(
        bearer(&gate, "GET", "/v2/acme/web/app/manifests/v1", &push).status,
        200
    );
    assert_eq!(
        bearer(&gate, "PUT", "/v2/acme/web/app/manifests/v1", &push).status,
        200
    );
    assert_eq!(
        bearer(&gate, "POST", "/v2/acme/web/app/blobs/uploads/", &push).status,
        200
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter().all(|s| s.header("authorization").is_empty()),
        "{seen:?}"
    );
    assert_eq!(seen[1].target, "/v2/acme/web/app/manifests/v1");

    // 4. A read-only token pulls; its push is refused (403), and its JWT
    //    never carries push even when asked.
    let pull = jwt(&gate, &ro, &["repository:acme/web/app:pull,push"]);
    assert_eq!(
        claims(&pull)["access"][0]["actions"],
        serde_json::json!(["pull"])
    );
    assert_eq!(
        bearer(&gate, "GET", "/v2/acme/web/app/blobs/sha256:ab", &pull).status,
        200
    );
    let r = bearer(&gate, "PUT", "/v2/acme/web/app/manifests/v1", &pull);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("write_registry"));

    // 5. A pull-only JWT of a read+write token is sent back for push (insufficient_scope).
    let pull_only = jwt(&gate, &rw, &["repository:acme/web/app:pull"]);
    let r = bearer(&gate, "PUT", "/v2/acme/web/app/manifests/v1", &pull_only);
    assert_eq!(r.status, 401);
    assert!(r
        .header("WWW-Authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\""));
    // A JWT for one repository does not open another.
    let r = bearer(&gate, "GET", "/v2/acme/web/other/manifests/v1", &push);
    assert_eq!(r.status, 401);
    assert_eq!(
        up.seen().len(),
        5,
        "the refused requests were not forwarded"
    );
}

#[test]
fn foreign_forged_and_stale_registry_tokens_are_refused() {
    let up = Recorder::start();
    let gate = start(&up, "");
    let other = gate.token("project:acme/other", "read_registry,write_registry", &[]);
    let group = gate.token("group:acme", "read_registry", &[]);
    let victim = gate.token("project:acme/web", "read_registry", &[]);

    // Another project's token: granted nothing on acme/web, denied on use.
    let foreign = jwt(&gate, &other, &["repository:acme/web/app:pull,push"]);
    assert_eq!(claims(&foreign)["access"], serde_json::json!([]));
    assert_eq!(
        bearer(&gate, "GET", "/v2/acme/web/app/manifests/v1", &foreign).status,
        403
    );
    // A group token covers every project below it.
    let group_jwt = jwt(&gate, &group, &["repository:acme/web/app:pull"]);
    assert_eq!(
        bearer(&gate, "GET", "/v2/acme/web/app/manifests/v1", &group_jwt).status,
        200
    );

    // Forged: the payload edited to claim push on the victim's repository.
    let real = jwt(&gate, &victim, &["repository:acme/web/app:pull"]);
    let mut parts: Vec<String> = real.split('.').map(str::to_string).collect();
    let mut payload = claims(&real);
    payload["access"][0]["actions"] = serde_json::json!(["pull", "push"]);
    {
        use base64::Engine;
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string());
    }
    let forged = parts.join(".");
    let r = bearer(&gate, "PUT", "/v2/acme/web/app/manifests/v1", &forged);
    assert_eq!(r.status, 401);
    assert!(r
        .header("WWW-Authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    // A deploy token itself is not a registry token.
    assert_eq!(
        bearer(
            &gate,
            "GET",
            "/v2/acme/web/app/manifests/v1",
            &victim.secret
        )
        .status,
        401
    );
    // Neither is Basic.
    let r = send(
        gate.port,
        "GET",
        "/v2/acme/web/app/manifests/v1",
        &[("Authorization", &victim.basic())],
        b"",
    );
    assert_eq!(r.status, 401);
    // The catalog is never served; unknown API paths are 404.
    assert_eq!(bearer(&gate, "GET", "/v2/_catalog", &group_jwt).status, 403);
    assert_eq!(
        bearer(&gate, "GET", "/v2/acme/web/app/nonsense", &group_jwt).status,
        404
    );
    // Deleting images needs allow_delete on the route.
    assert_eq!(
        bearer(
            &gate,
            "DELETE",
            "/v2/acme/web/app/manifests/sha256:ab",
            &group_jwt
        )
        .status,
        403
    );

    // Revoked after the JWT was issued: refused at once, not at the JWT's expiry.
    assert_eq!(
        bearer(&gate, "GET", "/v2/acme/web/app/manifests/v1", &real).status,
        200
    );
    gate.revoke(victim.id);
    let started = Instant::now();
    while bearer(&gate, "GET", "/v2/acme/web/app/manifests/v1", &real).status != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the revoked token's JWT still works"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "JWT of a revoked token refused after {:?}",
        started.elapsed()
    );
    let forwarded = up.seen().len();
    for _ in 0..3 {
        assert_eq!(
            bearer(&gate, "GET", "/v2/acme/web/app/manifests/v1", &real).status,
            401
        );
    }
    assert_eq!(up.seen().len(), forwarded, "nothing forwarded once refused");
}

#[test]
fn the_token_endpoint_refuses_what_gitlab_refuses() {
    let up = Recorder::start();
    let gate = start(&up, "");
    let t = gate.token("project:acme/web", "read_registry", &[]);
    let scope = "scope=repository%3Aacme%2Fweb%2Fapp%3Apull";
    // No credentials: 401 with a Basic challenge (anonymous tokens are off by default).
    let r = token_request(&gate, None, scope);
    assert_eq!(r.status, 401);
    assert!(r.header("WWW-Authenticate").unwrap().starts_with("Basic"));
    // Wrong username, wrong secret, revoked: 401.
    assert_eq!(
        token_request(&gate, Some(&basic("someone", &t.secret)), scope).status,
        401
    );
    assert_eq!(
        token_request(&gate, Some(&basic(&t.username, "tgdt_nope")), scope).status,
        401
    );
    // Unknown service: 404; malformed scope: 400.
    assert_eq!(
        token_request(&gate, Some(&t.basic()), "service=other").status,
        404
    );
    let r = token_request(&gate, Some(&t.basic()), "scope=repository%3Aacme");
    assert_eq!(r.status, 400, "{}", r.text());
    // `account` naming someone else: 403; naming the token's user: fine.
    let r = token_request(&gate, Some(&t.basic()), "account=root");
    assert_eq!(r.status, 403, "{}", r.text());
    let own = format!("account={}", t.username.replace('+', "%2B"));
    assert_eq!(token_request(&gate, Some(&t.basic()), &own).status, 200);
    // OAuth2 POST is not offered: clients fall back to GET on its 404, so
    // it stays a 404 with the form body such a client sends.
    let auth = t.basic();
    let form = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let r = send(
        gate.port,
        "POST",
        "/jwt/auth",
        &form,
        b"grant_type=password&service=tokengate",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // The JWKS document lists the signing key.
    let jwks = send(gate.port, "GET", "/jwt/jwks.json", &[], b"");
    let jwks: serde_json::Value = serde_json::from_slice(&jwks.body).unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["kid"].as_str().unwrap().len(), 59);
    gate.revoke(t.id);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(token_request(&gate, Some(&t.basic()), scope).status, 401);
    assert!(up.seen().is_empty());
}

#[test]
fn blob_mounts_need_pull_on_the_source() {
    let up = Recorder::start();
    let gate = start(&up, "allow_delete = true");
    let web = gate.token("project:acme/web", "read_registry,write_registry", &[]);
    let scopes = [
        "repository:acme/web/app:pull,push",
        "repository:acme/secret/app:pull",
        "repository:acme/web/base:pull",
    ];
    let push = jwt(&gate, &web, &scopes);
    let mount = |from: &str| {
        let target = format!("/v2/acme/web/app/blobs/uploads/?mount=sha256%3Aab&from={from}");
        assert_eq!(bearer(&gate, "POST", &target, &push).status, 200);
        up.seen().last().unwrap().target.clone()
    };
    assert_eq!(
        mount("acme%2Fweb%2Fbase"),
        "/v2/acme/web/app/blobs/uploads/?mount=sha256%3Aab&from=acme%2Fweb%2Fbase",
        "a readable source is mounted"
    );
    assert_eq!(
        mount("acme%2Fsecret%2Fapp"),
        "/v2/acme/web/app/blobs/uploads/",
        "an unreadable source is dropped: the registry starts a plain upload"
    );
    assert_eq!(mount("..%2Fx"), "/v2/acme/web/app/blobs/uploads/");
    // `mount` alone: the registry may mount the blob from any repository it
    // holds (the spec's anonymous mount), so the mount is dropped too.
    let anonymous = "/v2/acme/web/app/blobs/uploads/?mount=sha256%3Aab";
    assert_eq!(bearer(&gate, "POST", anonymous, &push).status, 200);
    assert_eq!(
        up.seen().last().unwrap().target,
        "/v2/acme/web/app/blobs/uploads/"
    );
    // allow_delete: deleting needs write_registry (and a push grant).
    assert_eq!(
        bearer(
            &gate,
            "DELETE",
            "/v2/acme/web/app/manifests/sha256:ab",
            &push
        )
        .status,
        200
    );
    // It lets deletes of manifests and blobs through, nothing else.
    let forwarded = up.seen().len();
    for target in [
        "/v2/",
        "/v2/acme/web/app/tags/list",
        "/v2/acme/web/app/referrers/sha256:ab",
    ] {
        let r = bearer(&gate, "DELETE", target, &push);
        assert_eq!(r.status, 403, "DELETE {target}: {}", r.text());
    }
    assert_eq!(up.seen().len(), forwarded, "none was forwarded");
    let reader = gate.token("project:acme/web", "read_registry", &[]);
    let pull = jwt(&gate, &reader, &["repository:acme/web/app:pull"]);
    assert_eq!(
        bearer(
            &gate,
            "DELETE",
            "/v2/acme/web/app/manifests/sha256:ab",
            &pull
        )
        .status,
        403
    );
}

#[test]
fn a_mount_hidden_from_the_proxy_is_refused_and_not_forwarded() {
    let up = Recorder::start();
    let gate = start(&up, "");
    let web = gate.token("project:acme/web", "read_registry,write_registry", &[]);
    let push = jwt(&gate, &web, &["repository:acme/web/app:pull,push"]);
    let upload = "/v2/acme/web/app/blobs/uploads/";
    // A registry's form parser decodes names (`fr%6Fm` is `from`) and reads
    // POST form bodies: either would mount acme/secret's blob past the check.
    for query in [
        "?mount=sha256%3Aab&fr%6Fm=acme%2Fsecret%2Fapp",
        "?mount=sha256%3Aab&from=acme%2Fweb%2Fapp&from=acme%2Fsecret%2Fapp",
        // Go before 1.17 (distribution 2.7) splits pairs on `;` too.
        "?x=1;from=acme%2Fsecret%2Fapp&mount=sha256%3Aab&from=acme%2Fweb%2Fapp",
        "?x=1;mount=sha256%3Aab;from=acme%2Fsecret%2Fapp",
    ] {
        let r = bearer(&gate, "POST", &format!("{upload}{query}"), &push);
        assert_eq!(r.status, 403, "{query}: {}", r.text());
    }
    let auth = format!("Bearer {push}");
    // Form bodies are refused on every registry route (400).
    for content_type in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
    ] {
        let body = b"from=acme/secret/app&mount=sha256:ab";
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", content_type),
        ];
        let r = send(
            gate.port,
            "POST",
            &format!("{upload}?mount=sha256%3Aab"),
            &headers,
            body,
        );
        assert_eq!(r.status, 400, "{content_type}: {}", r.text());
    }
    assert!(
        up.seen().is_empty(),
        "nothing was forwarded: {:?}",
        up.seen()
    );
    // The plain upload and a literal mount still work.
    assert_eq!(bearer(&gate, "POST", upload, &push).status, 200);
    let literal = format!("{upload}?mount=sha256%3Aab&from=acme%2Fweb%2Fapp");
    assert_eq!(bearer(&gate, "POST", &literal, &push).status, 200);
    assert_eq!(up.seen().len(), 2);
}

/// An upstream that refuses the proxy's credentials answers with its own
/// token service's challenge; docker would send that service the deploy
/// token. The client is sent to tokengate's token endpoint instead.
#[test]
fn an_upstream_challenge_never_reaches_the_client() {
    let up = Recorder::start();
    let gate = start(&up, "");
    let web = gate.token("project:acme/web", "read_registry", &[]);
    let pull = jwt(&gate, &web, &["repository:acme/web/app:pull"]);
    let r = bearer(
        &gate,
        "GET",
        "/v2/acme/web/app/manifests/unauthorized",
        &pull,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(up.seen().len(), 1, "the request was forwarded");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(&format!(
            "Bearer realm=\"http://127.0.0.1:{}/jwt/auth\"",
            gate.port
        )),
        "{challenge}"
    );
    assert!(!challenge.contains("elsewhere"), "{challenge}");
}

#[test]
fn the_version_check_answers_reads_only() {
    let up = Recorder::start();
    let gate = start(&up, "");
    let web = gate.token("project:acme/web", "read_registry,write_registry", &[]);
    let push = jwt(&gate, &web, &["repository:acme/web/app:pull,push"]);
    for method in ["TRACE", "DELETE", "POST", "PUT", "OPTIONS", "PROPFIND"] {
        let r = bearer(&gate, method, "/v2/", &push);
        assert_eq!(r.status, 403, "{method} /v2/: {}", r.text());
    }
    assert!(
        up.seen().is_empty(),
        "nothing was forwarded: {:?}",
        up.seen()
    );
    assert_eq!(bearer(&gate, "GET", "/v2/", &push).status, 200);
    assert_eq!(bearer(&gate, "HEAD", "/v2/", &push).status, 200);
}

#[test]
fn anonymous_tokens_grant_nothing() {
    let up = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[signing]\nkey_file = \"{}\"\n\n[registry_auth]\nanonymous = true\n\n[upstream.registry]\nurl = \"{}\"\n\n[[route]]\nname = \"c\"\nformat = \"oci\"\npath = \"/v2\"\nupstream = \"registry\"\n",
        dir.path().join("k.pem").display(),
        up.url()
    );
    let gate = Gate::launch(Setup {
        body: &body,
        ..Setup::default()
    });
    let r = token_request(&gate, None, &query(&["repository:acme/web/app:pull"]));
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let anonymous = body["token"].as_str().unwrap();
    assert_eq!(claims(anonymous)["access"], serde_json::json!([]));
    assert!(claims(anonymous).get("deploy_token_id").is_none());
    assert_eq!(bearer(&gate, "GET", "/v2/", anonymous).status, 401);
    assert_eq!(
        bearer(&gate, "GET", "/v2/acme/web/app/manifests/v1", anonymous).status,
        401
    );
    assert!(up.seen().is_empty());
    assert!(
        dir.path().join("k.jwks.json").exists(),
        "the JWKS file is written next to the key"
    );
}
