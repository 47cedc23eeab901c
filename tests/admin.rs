//! The admin listener over real HTTP against the binary: the admin
//! credential and its rate limit, GitLab's deploy-token API (fields, status
//! codes, errors, pagination), the per-scope metrics, and the audit log in
//! JSON with no secret in any line.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use std::time::{Duration, Instant};

use common::{send, Gate, RawResponse, Setup, ADMIN_TOKEN};
use recorder::Recorder;
use serde_json::{json, Value};

fn start(up: &Recorder, setup: Setup<'_>) -> Gate {
    start_with_routes(up, "", setup)
}

/// The gate with a generic route to `up` (GitLab's path style) and `more` routes.
fn start_with_routes(up: &Recorder, more: &str, setup: Setup<'_>) -> Gate {
    let body = format!(
        "[upstream.files]\nurl = \"{}\"\n\n[[route]]\nname = \"files\"\nformat = \"generic\"\npath = \"/api/v4/projects/{{namespace}}/packages/generic\"\nupstream = \"files\"\nstrip_prefix = true\n\n{more}",
        up.url()
    );
    Gate::launch(Setup {
        body: &body,
        ..setup
    })
}

fn body(r: &RawResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("not JSON: {}", r.text()))
}

fn post_json(gate: &Gate, target: &str, value: &Value) -> RawResponse {
    gate.admin(
        "POST",
        target,
        &[("Content-Type", "application/json")],
        value.to_string().as_bytes(),
    )
}

/// A GET through the proxy with a deploy token in `Deploy-Token`.
fn fetch(gate: &Gate, project: &str, secret: &str) -> u16 {
    send(
        gate.port,
        "GET",
        &format!("/api/v4/projects/{project}/packages/generic/p/1/f.bin"),
        &[("Deploy-Token", secret)],
        b"",
    )
    .status
}

#[test]
fn every_admin_endpoint_but_healthz_needs_an_admin_token() {
    let up = Recorder::start();
    let gate = start(
        &up,
        Setup {
            admin_extra: "tokens = [{ name = \"next\", token_env = \"TG_NEXT_ADMIN\" }]",
            env: &[("TG_NEXT_ADMIN", "the-next-admin-token-0123")],
            ..Setup::default()
        },
    );
    assert_eq!(
        send(gate.admin_port, "GET", "/healthz", &[], b"").status,
        200
    );
    for target in [
        "/readyz",
        "/metrics",
        "/api/v4/deploy_tokens",
        "/api/v4/projects/acme%2Fweb/deploy_tokens",
    ] {
        let r = send(gate.admin_port, "GET", target, &[], b"");
        assert_eq!(r.status, 401, "{target}");
        assert_eq!(body(&r), json!({"message": "401 Unauthorized"}));
        let r = send(
            gate.admin_port,
            "GET",
            target,
            &[("PRIVATE-TOKEN", "not-the-admin-token")],
            b"",
        );
        assert_eq!(r.status, 401, "{target}");
    }
    // Both named admin tokens, in either header.
    for headers in [
        [("PRIVATE-TOKEN", ADMIN_TOKEN)],
        [("Authorization", "Bearer the-next-admin-token-0123")],
    ] {
        assert_eq!(
            send(
                gate.admin_port,
                "GET",
                "/api/v4/deploy_tokens",
                &headers,
                b""
            )
            .status,
            200
        );
    }
    // A deploy token is no admin token.
    let deploy = gate.token("project:acme/web", "read_package_registry", &[]);
    let r = send(
        gate.admin_port,
        "GET",
        "/api/v4/deploy_tokens",
        &[("PRIVATE-TOKEN", &deploy.secret)],
        b"",
    );
    assert_eq!(r.status, 401);
    // Guessing is rate-limited per address: after 10 failures even the right token waits.
    for _ in 0..10 {
        send(
            gate.admin_port,
            "GET",
            "/metrics",
            &[("PRIVATE-TOKEN", "guess-guess-guess")],
            b"",
        );
    }
    assert_eq!(gate.admin("GET", "/metrics", &[], b"").status, 429);
}

/// The admin credential is checked before the body is read: a client
/// without it gets 401 at once and makes the listener hold nothing; an
/// admin's body that trickles in is cut off (408) rather than holding its
/// connection. Either way the connection is closed.
#[test]
fn bodies_are_read_only_for_admins_and_one_that_never_finishes_is_answered_408() {
    use std::io::{Read, Write};
    let up = Recorder::start();
    let gate = start(&up, Setup::default());
    let exchange = |credential: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", gate.admin_port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let started = Instant::now();
        let head = format!(
            "POST /api/v4/projects/acme%2Fweb/deploy_tokens HTTP/1.1\r\nHost: x\r\n{credential}Content-Length: 1000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        (answer, started.elapsed())
    };
    let (answer, took) = exchange("");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (answer, took) = exchange(&format!("PRIVATE-TOKEN: {ADMIN_TOKEN}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn the_gitlab_deploy_token_api() {
    let up = Recorder::start();
    let gate = start(&up, Setup::default());
    let project = "/api/v4/projects/acme%2Fweb/deploy_tokens";

    // Create (JSON, as python-gitlab sends it).
    let r = post_json(
        &gate,
        project,
        &json!({"name": "ci", "scopes": ["read_package_registry", "write_package_registry"], "expires_at": "2099-01-02"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let created = body(&r);
    let keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "id",
        "name",
        "username",
        "expires_at",
        "scopes",
        "revoked",
        "expired",
        "token",
    ] {
        assert!(keys.contains(&key), "{key} missing from {created}");
    }
    assert_eq!(created["name"], "ci");
    assert_eq!(
        created["scopes"],
        json!(["read_package_registry", "write_package_registry"])
    );
    assert_eq!(created["expires_at"], "2099-01-02T00:00:00.000Z");
    assert_eq!(created["revoked"], false);
    assert_eq!(created["expired"], false);
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["username"], format!("tokengate+deploy-token-{id}"));
    let secret = created["token"].as_str().unwrap().to_string();
    assert_eq!(
        fetch(&gate, "acme%2Fweb", &secret),
        200,
        "the new token works through the proxy"
    );

    // Create (form, as curl scripts send it) with a username; and for a group.
    let r = gate.admin(
        "POST",
        project,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=deployer&username=deployer.bot&scopes%5B%5D=read_registry&scopes%5B%5D=write_registry",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let form = body(&r);
    assert_eq!(form["username"], "deployer.bot");
    assert_eq!(form["expires_at"], Value::Null);
    let r = post_json(
        &gate,
        "/api/v4/groups/acme/deploy_tokens",
        &json!({"name": "group", "scopes": "read_repository"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let group = body(&r);

    // Read back: the secret is never shown again.
    let r = gate.admin("GET", &format!("{project}/{id}"), &[], b"");
    assert_eq!(r.status, 200);
    let shown = body(&r);
    assert!(shown.get("token").is_none());
    assert_eq!(shown["id"], id);
    let listed = body(&gate.admin("GET", project, &[], b""));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(&secret));
    let all = body(&gate.admin("GET", "/api/v4/deploy_tokens", &[], b""));
    assert_eq!(all.as_array().unwrap().len(), 3);
    let groups = body(&gate.admin("GET", "/api/v4/groups/acme/deploy_tokens", &[], b""));
    assert_eq!(groups[0]["id"], group["id"]);
    // A token is found only under its own owner.
    let r = gate.admin(
        "GET",
        &format!("/api/v4/projects/acme%2Fother/deploy_tokens/{id}"),
        &[],
        b"",
    );
    assert_eq!(
        (r.status, body(&r)),
        (404, json!({"message": "404 Deploy Token Not Found"}))
    );
    assert_eq!(
        gate.admin(
            "GET",
            &format!("/api/v4/groups/acme/deploy_tokens/{id}"),
            &[],
            b""
        )
        .status,
        404
    );

    // Delete: 204, denied by the proxy at once, 404 the second time, filtered by ?active=true.
    let r = gate.admin("DELETE", &format!("{project}/{id}"), &[], b"");
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let started = Instant::now();
    while fetch(&gate, "acme%2Fweb", &secret) != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the deleted token still works"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        gate.admin("DELETE", &format!("{project}/{id}"), &[], b"")
            .status,
        404
    );
    let r = body(&gate.admin("GET", &format!("{project}/{id}"), &[], b""));
    assert_eq!(r["revoked"], true);
    let active = body(&gate.admin("GET", "/api/v4/deploy_tokens?active=true", &[], b""));
    let ids: Vec<i64> = active
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert!(!ids.contains(&id) && ids.len() == 2, "{active}");

    // Errors as GitLab gives them.
    let bad: &[(&str, Value, &str)] = &[
        (
            project,
            json!({"scopes": ["read_registry"]}),
            "name is missing",
        ),
        (project, json!({"name": "x"}), "scopes is missing"),
        (
            project,
            json!({"name": "x", "scopes": ["api"]}),
            "unknown scope",
        ),
        (
            project,
            json!({"name": "x", "scopes": ["read_registry"], "expires_at": "tomorrow"}),
            "",
        ),
        (
            project,
            json!({"name": "x", "scopes": ["read_registry"], "expires_at": "2001-01-01"}),
            "",
        ),
        (
            project,
            json!({"name": "x", "scopes": ["read_registry"], "username": "no spaces"}),
            "",
        ),
    ];
    for (target, value, says) in bad {
        let r = post_json(&gate, target, value);
        assert_eq!(r.status, 400, "{value}: {}", r.text());
        let message = body(&r)["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{value}: {message}");
    }
    let r = gate.admin(
        "POST",
        project,
        &[("Content-Type", "application/json")],
        b"{not json",
    );
    assert_eq!(r.status, 400);
    let r = gate.admin("GET", "/api/v4/projects/..%2Fetc/deploy_tokens", &[], b"");
    assert_eq!(
        (r.status, body(&r)),
        (404, json!({"message": "404 Project Not Found"}))
    );
    // A group's path (or a numeric id) names no project: a "project" token
    // for it would cover every project of the group.
    for not_a_project in ["acme", "42"] {
        let r = gate.admin(
            "POST",
            &format!("/api/v4/projects/{not_a_project}/deploy_tokens"),
            &[("Content-Type", "application/json")],
            br#"{"name":"x","scopes":["read_registry"]}"#,
        );
        assert_eq!(
            (r.status, body(&r)),
            (404, json!({"message": "404 Project Not Found"}))
        );
        let rotate = format!("/api/v4/projects/{not_a_project}/deploy_tokens/1/rotate");
        assert_eq!(gate.admin("POST", &rotate, &[], b"").status, 404);
    }
    assert_eq!(
        gate.admin("GET", &format!("{project}/abc"), &[], b"")
            .status,
        404
    );
    assert_eq!(gate.admin("PUT", project, &[], b"").status, 405);
    assert_eq!(gate.admin("GET", "/api/v4/users", &[], b"").status, 404);
    assert_eq!(
        body(&gate.admin("GET", "/api/v4/deploy_tokens", &[], b""))
            .as_array()
            .unwrap()
            .len(),
        3,
        "nothing bad was created"
    );
}

/// Makes `n` tokens of project acme/web (`t0`, `t1`, …); returns the
/// project's token list path.
fn create_project_tokens(gate: &Gate, n: usize) -> &'static str {
    let project = "/api/v4/projects/acme%2Fweb/deploy_tokens";
    for i in 0..n {
        let r = post_json(
            gate,
            project,
            &json!({"name": format!("t{i}"), "scopes": ["read_registry"]}),
        );
        assert_eq!(r.status, 201);
    }
    project
}

#[test]
fn lists_are_paginated_like_gitlab() {
    let up = Recorder::start();
    let gate = start(&up, Setup::default());
    let project = create_project_tokens(&gate, 5);
    let r = gate.admin(
        "GET",
        &format!("{project}?per_page=2&page=2"),
        &[("Host", "admin.example:9090")],
        b"",
    );
    assert_eq!(r.status, 200);
    let names: Vec<String> = body(&r)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["t2", "t3"]);
    for (header, value) in [
        ("x-page", "2"),
        ("x-per-page", "2"),
        ("x-total", "5"),
        ("x-total-pages", "3"),
        ("x-next-page", "3"),
        ("x-prev-page", "1"),
    ] {
        assert_eq!(r.header(header), Some(value), "{header}");
    }
    let link = r.header("link").unwrap();
    let origin = format!("http://127.0.0.1:{}", gate.admin_port);
    for rel in [
        format!("<{origin}{project}?page=3&per_page=2>; rel=\"next\""),
        format!("<{origin}{project}?page=1&per_page=2>; rel=\"prev\""),
        format!("<{origin}{project}?page=1&per_page=2>; rel=\"first\""),
        format!("<{origin}{project}?page=3&per_page=2>; rel=\"last\""),
    ] {
        assert!(link.contains(&rel), "{rel} not in {link}");
    }
    let last = gate.admin("GET", &format!("{project}?per_page=2&page=3"), &[], b"");
    assert_eq!(body(&last).as_array().unwrap().len(), 1);
    assert_eq!(last.header("x-next-page"), Some(""));
    let default = gate.admin("GET", project, &[], b"");
    assert_eq!(default.header("x-per-page"), Some("20"));
    let capped = gate.admin("GET", &format!("{project}?per_page=1000"), &[], b"");
    assert_eq!(capped.header("x-per-page"), Some("100"));
}

#[test]
fn metrics_count_tokens_per_scope_and_requests_per_decision() {
    let up = Recorder::start();
    let gate = start(&up, Setup::default());
    let project = "/api/v4/projects/acme%2Fweb/deploy_tokens";
    let sample =
        |name: &str, scope: &str| gate.metric(&format!("tokengate_{name}{{scope=\"{scope}\"}}"));
    let scopes = [
        "read_registry",
        "write_registry",
        "read_package_registry",
        "write_package_registry",
        "read_repository",
    ];
    let before: Vec<(f64, f64)> = scopes
        .iter()
        .map(|s| {
            (
                sample("deploy_tokens_created_total", s),
                sample("deploy_tokens_revoked_total", s),
            )
        })
        .collect();

    let create = |scopes: &[&str]| {
        let r = post_json(&gate, project, &json!({"name": "m", "scopes": scopes}));
        assert_eq!(r.status, 201);
        let v = body(&r);
        (
            v["id"].as_i64().unwrap(),
            v["token"].as_str().unwrap().to_string(),
        )
    };
    let (a, secret) = create(&["read_registry", "write_registry"]);
    create(&["read_registry"]);
    create(&["read_package_registry", "write_package_registry"]);
    assert_eq!(
        gate.admin("DELETE", &format!("{project}/{a}"), &[], b"")
            .status,
        204
    );

    let created = [2.0, 1.0, 1.0, 1.0, 0.0];
    let revoked = [1.0, 1.0, 0.0, 0.0, 0.0];
    let active = [1.0, 0.0, 1.0, 1.0, 0.0];
    for (i, scope) in scopes.iter().enumerate() {
        assert_eq!(
            sample("deploy_tokens_created_total", scope) - before[i].0,
            created[i],
            "created {scope}"
        );
        assert_eq!(
            sample("deploy_tokens_revoked_total", scope) - before[i].1,
            revoked[i],
            "revoked {scope}"
        );
        assert_eq!(
            sample("deploy_tokens_active", scope),
            active[i],
            "active {scope}"
        );
    }

    // Tokens about to expire.
    let soon = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string();
    let later = (chrono::Utc::now() + chrono::Duration::days(20))
        .format("%Y-%m-%d")
        .to_string();
    for expires in [&soon, &later] {
        let r = post_json(
            &gate,
            project,
            &json!({"name": "e", "scopes": ["read_repository"], "expires_at": expires}),
        );
        assert_eq!(r.status, 201);
    }
    assert_eq!(
        gate.metric(r#"tokengate_deploy_tokens_expiring{within="7d"}"#),
        1.0
    );
    assert_eq!(
        gate.metric(r#"tokengate_deploy_tokens_expiring{within="30d"}"#),
        2.0
    );

    // Requests per route, format, decision and reason; a route's allowed
    // series is there from the start, so a rate over it has a first point.
    let allowed =
        r#"tokengate_requests_total{route="files",format="generic",decision="allowed",reason="-"}"#;
    assert!(gate.metrics().contains(&format!("{allowed} 0\n")));
    let (_, reader) = create(&["read_package_registry"]);
    assert_eq!(fetch(&gate, "acme%2Fweb", &reader), 200);
    assert_eq!(fetch(&gate, "acme%2Fother", &reader), 403);
    assert_eq!(fetch(&gate, "acme%2Fweb", &secret), 401);
    let metrics = gate.metrics();
    for line in [
        r#"tokengate_requests_total{route="files",format="generic",decision="allowed",reason="-"} 1"#,
        r#"tokengate_requests_total{route="files",format="generic",decision="forbidden",reason="namespace"} 1"#,
        r#"tokengate_requests_total{route="files",format="generic",decision="unauthenticated",reason="revoked"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(gate.metric("tokengate_auth_decision_seconds_count") >= 3.0);
    assert!(gate.metric("tokengate_upstream_response_seconds_count{upstream=\"files\"}") >= 1.0);

    // A rotation makes a new token, counted as created.
    let (id, _) = create(&["write_package_registry"]);
    let before = sample("deploy_tokens_created_total", "write_package_registry");
    let rotated = gate.admin("POST", &format!("{project}/{id}/rotate"), &[], b"");
    assert_eq!(rotated.status, 201, "{}", rotated.text());
    assert_eq!(
        sample("deploy_tokens_created_total", "write_package_registry") - before,
        1.0
    );
}

#[test]
fn audit_events_in_json_and_no_secret_in_any_line() {
    let up = Recorder::start();
    let gate = start(
        &up,
        Setup {
            env: &[("TOKENGATE_LOG_FORMAT", "json")],
            ..Setup::default()
        },
    );
    let project = "/api/v4/projects/acme%2Fweb/deploy_tokens";
    let r = post_json(
        &gate,
        project,
        &json!({"name": "audited", "scopes": ["read_package_registry"]}),
    );
    let created = body(&r);
    let id = created["id"].as_i64().unwrap();
    let secret = created["token"].as_str().unwrap().to_string();
    assert_eq!(fetch(&gate, "acme%2Fother", &secret), 403);
    assert_eq!(
        gate.admin("DELETE", &format!("{project}/{id}"), &[], b"")
            .status,
        204
    );
    assert_eq!(fetch(&gate, "acme%2Fweb", &secret), 401);
    send(
        gate.admin_port,
        "GET",
        "/metrics",
        &[("PRIVATE-TOKEN", "wrong-admin-token")],
        b"",
    );
    let cli_token = gate.token("group:acme", "read_registry", &[]);
    gate.revoke(cli_token.id);
    std::thread::sleep(Duration::from_millis(200));

    let logs = gate.logs();
    let events: Vec<Value> = logs
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not a JSON line: {l}"))
        })
        .filter(|v| v["target"] == "tokengate::audit")
        .collect();
    let find = |event: &str, check: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .find(|e| e["fields"]["event"] == event && check(&e["fields"]))
            .unwrap_or_else(|| panic!("no {event} event in {events:#?}"))
            .clone()
    };
    let created = find("token_created", &|f| f["token_id"] == id);
    assert_eq!(created["fields"]["actor"], "admin");
    assert_eq!(created["fields"]["owner"], "project:acme/web");
    assert_eq!(created["fields"]["scopes"], "read_package_registry");
    assert_eq!(created["fields"]["name"], "audited");
    find("token_revoked", &|f| {
        f["token_id"] == id && f["actor"] == "admin"
    });
    let denied = find("request_denied", &|f| f["reason"] == "namespace");
    assert_eq!(denied["fields"]["token_id"], id);
    assert_eq!(denied["fields"]["route"], "files");
    assert_eq!(denied["fields"]["needed"], "read_package_registry");
    assert_eq!(denied["fields"]["client"], "127.0.0.1");
    find("request_denied", &|f| {
        f["reason"] == "revoked" && f["token_id"] == id
    });
    find("admin_login_failed", &|f| f["client"] == "127.0.0.1");
    let cli_log = std::fs::read_to_string(gate.dir.path().join("cli.log")).unwrap_or_default();
    assert!(
        cli_log.contains("token_revoked"),
        "the CLI audits too: {cli_log}"
    );

    for text in [&logs, &cli_log] {
        for secret in [secret.as_str(), cli_token.secret.as_str(), ADMIN_TOKEN] {
            assert!(!text.contains(secret), "a secret reached the log");
        }
    }
}

/// The hidden CSRF field of a page.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 64].to_string()
}

/// Logs in to the web page with the admin token.
fn log_in(gate: &Gate) -> RawResponse {
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let login = format!("token={ADMIN_TOKEN}");
    send(
        gate.admin_port,
        "POST",
        "/ui/login",
        &form,
        login.as_bytes(),
    )
}

fn session_cookie(r: &RawResponse) -> String {
    let cookie = r.header("set-cookie").expect("a session cookie");
    cookie.split(';').next().unwrap().to_string()
}

/// Behind a TLS-terminating ingress (`[admin] public_url`), pagination links
/// name the URL clients use and the web page's cookie is `Secure`, though
/// the listener itself speaks plain HTTP.
#[test]
fn behind_an_ingress_links_and_cookies_follow_the_public_url() {
    let up = Recorder::start();
    let gate = start(
        &up,
        Setup {
            admin_extra: "public_url = \"https://tokens.example.com\"",
            ..Setup::default()
        },
    );
    let project = create_project_tokens(&gate, 3);
    let r = gate.admin("GET", &format!("{project}?per_page=2"), &[], b"");
    let link = r.header("link").unwrap();
    let next = format!("<https://tokens.example.com{project}?page=2&per_page=2>; rel=\"next\"");
    assert!(link.contains(&next), "{next} not in {link}");
    assert!(!link.contains("http://"), "{link}");

    let r = log_in(&gate);
    assert_eq!(r.status, 303);
    let set = r.header("set-cookie").unwrap();
    assert!(set.contains("; Secure"), "{set}");
}

#[test]
fn web_page_sessions_are_cookies_and_forms_need_the_csrf_token() {
    let up = Recorder::start();
    let gate = start(&up, Setup::default());
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let page = send(gate.admin_port, "GET", "/ui", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Admin token"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(
        !page.text().contains("http://") && !page.text().contains("https://"),
        "nothing from elsewhere"
    );

    // A page elsewhere posting sign-ins from the admin's browser is refused
    // before anything counts: it cannot lock the address out.
    for _ in 0..12 {
        let forged = send(
            gate.admin_port,
            "POST",
            "/ui/login",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Origin", "https://evil.test"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            format!("token={ADMIN_TOKEN}").as_bytes(),
        );
        assert_eq!(forged.status, 403);
        assert!(forged.header("set-cookie").is_none());
    }
    let wrong = send(
        gate.admin_port,
        "POST",
        "/ui/login",
        &form,
        b"token=wrong-token-123456789",
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let r = log_in(&gate);
    assert_eq!(r.status, 303);
    let set = r.header("set-cookie").unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = session_cookie(&r);
    assert!(
        !set.contains(ADMIN_TOKEN),
        "the cookie is a session id, not the admin token"
    );
    let with_cookie = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = vec![("Cookie", cookie.as_str())];
        h.extend_from_slice(extra);
        h
    };
    let page = send(
        gate.admin_port,
        "GET",
        "/ui?kind=project&path=acme%2Fweb",
        &with_cookie(&[]),
        b"",
    );
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page.text());

    // Forms without the session's CSRF token, or without a session, change nothing.
    let form_id = {
        let text = page.text();
        let at = text.find("name=\"form\" value=\"").expect("a form id") + 20;
        text[at..at + 64].to_string()
    };
    let create = |csrf: &str, headers: &[(&str, &str)]| {
        let body = format!(
            "csrf={csrf}&form={form_id}&kind=project&path=acme%2Fweb&name=from-page&scopes=read_registry"
        );
        send(
            gate.admin_port,
            "POST",
            "/ui/tokens",
            headers,
            body.as_bytes(),
        )
    };
    let mut form_with_cookie = with_cookie(&form);
    assert_eq!(create("", &form_with_cookie).status, 403);
    assert_eq!(create(&"0".repeat(64), &form_with_cookie).status, 403);
    assert_eq!(
        create(&csrf, &form).status,
        303,
        "no session: back to sign-in"
    );
    let listed = body(&gate.admin("GET", "/api/v4/deploy_tokens", &[], b""));
    assert_eq!(listed, json!([]), "nothing was created");

    // With it: created, and the secret is on that one page.
    let made = create(&csrf, &form_with_cookie);
    assert_eq!(made.status, 200);
    let text = made.text();
    assert!(text.contains("Save the deploy token somewhere safe"));
    let at = text.find("id=\"new-token\" readonly value=\"").unwrap() + 31;
    let secret = &text[at..at + 41];
    assert!(secret.starts_with("tgdt_"), "{secret}");
    assert_eq!(
        fetch(&gate, "acme%2Fweb", secret),
        401,
        "read_registry is no package scope"
    );
    // The same form again (a refresh of that page, a double click): no second token.
    let again = create(&csrf, &form_with_cookie);
    assert_eq!(again.status, 200);
    assert!(again.text().contains("This form was sent already"));
    assert!(!again.text().contains("id=\"new-token\""));
    let listed = body(&gate.admin("GET", "/api/v4/deploy_tokens", &[], b""));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // Names are escaped, never markup.
    let r = post_json(
        &gate,
        "/api/v4/projects/acme%2Fweb/deploy_tokens",
        &json!({"name": "<script>alert(1)</script>", "scopes": ["read_registry"]}),
    );
    assert_eq!(r.status, 201);
    let page = send(
        gate.admin_port,
        "GET",
        "/ui?kind=project&path=acme%2Fweb",
        &with_cookie(&[]),
        b"",
    )
    .text();
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
            && !page.contains("<script>alert(1)")
    );

    // Revoke needs the CSRF token too; signing out ends the session.
    let id = body(&gate.admin("GET", "/api/v4/deploy_tokens", &[], b""))[0]["id"]
        .as_i64()
        .unwrap();
    let revoke = |csrf: &str| {
        let body = format!("csrf={csrf}&kind=project&path=acme%2Fweb");
        send(
            gate.admin_port,
            "POST",
            &format!("/ui/tokens/{id}/revoke"),
            &form_with_cookie,
            body.as_bytes(),
        )
    };
    assert_eq!(revoke("nope").status, 403);
    assert_eq!(
        body(&gate.admin(
            "GET",
            &format!("/api/v4/projects/acme%2Fweb/deploy_tokens/{id}"),
            &[],
            b""
        ))["revoked"],
        false
    );
    assert_eq!(revoke(&csrf).status, 303);
    assert_eq!(
        body(&gate.admin(
            "GET",
            &format!("/api/v4/projects/acme%2Fweb/deploy_tokens/{id}"),
            &[],
            b""
        ))["revoked"],
        true
    );
    // Sent again (a stale tab): nothing more happens, nothing is counted twice.
    assert_eq!(revoke(&csrf).status, 303);
    assert_eq!(
        gate.metric(r#"tokengate_deploy_tokens_revoked_total{scope="read_registry"}"#),
        1.0
    );
    let out = send(
        gate.admin_port,
        "POST",
        "/ui/logout",
        &form_with_cookie,
        format!("csrf={csrf}").as_bytes(),
    );
    assert_eq!(out.status, 303);
    form_with_cookie.truncate(1);
    let after = send(
        gate.admin_port,
        "GET",
        "/ui?kind=project&path=acme%2Fweb",
        &form_with_cookie,
        b"",
    );
    assert!(after.text().contains("Admin token"), "signed out");
}

#[test]
fn the_admin_listener_speaks_tls_and_its_cookies_are_secure() {
    let up = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::pki::test_pki(dir.path());
    let extra = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let gate = start(
        &up,
        Setup {
            admin_extra: &extra,
            ..Setup::default()
        },
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--cacert", ca.to_str().unwrap(), "--data"])
        .arg(format!("token={ADMIN_TOKEN}"))
        .arg(format!("https://127.0.0.1:{}/ui/login", gate.admin_port))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/2 303"), "HTTP/2 by ALPN: {head}");
    let cookie = head.lines().find(|l| l.starts_with("set-cookie:")).unwrap();
    assert!(
        cookie.contains("; secure") && cookie.contains("httponly"),
        "{cookie}"
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert", ca.to_str().unwrap(), "-H"])
        .arg(format!("PRIVATE-TOKEN: {ADMIN_TOKEN}"))
        .arg(format!(
            "https://127.0.0.1:{}/api/v4/deploy_tokens",
            gate.admin_port
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]");
}

#[test]
fn the_grafana_dashboard_queries_metrics_that_exist() {
    let up = Recorder::start();
    let down = format!(
        "[upstream.down]\nurl = \"http://127.0.0.1:{}\"\n\n[[route]]\nname = \"down\"\nformat = \"generic\"\npath = \"/down\"\nnamespace = \"acme/web\"\nupstream = \"down\"\n",
        common::free_port()
    );
    let gate = start_with_routes(&up, &down, Setup::default());
    // Every family has a sample: a forwarded request and a failed one.
    let reader = gate.token("project:acme/web", "read_package_registry", &[]);
    assert_eq!(fetch(&gate, "acme%2Fweb", &reader.secret), 200);
    let r = send(
        gate.port,
        "GET",
        "/down/x",
        &[("Deploy-Token", &reader.secret)],
        b"",
    );
    assert_eq!(r.status, 502);
    let exported = gate.metrics();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("tokengate_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    exported.contains(&format!("# TYPE {family} ")),
                    "{} queries {name}, which tokengate does not export",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "{checked}");
}

/// A peer that connects and sends nothing, or only the HTTP/2 preface, is
/// dropped after the head timeout (10 s; the preface: an unanswered ping,
/// 20 s), not kept for as long as it likes.
#[test]
fn silent_admin_connections_are_dropped() {
    let up = Recorder::start();
    let gate = start(&up, Setup::default());
    let silent = |opening: &[u8]| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", gate.admin_port)).unwrap();
        std::io::Write::write_all(&mut stream, opening).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
    };
    let streams = [silent(b""), silent(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")];
    let started = Instant::now();
    for mut stream in streams {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    }
    common::assert_within(
        started,
        Duration::from_secs(40),
        "silent admin connections held for",
    );
}
