//! Forward-auth mode end to end: real nginx stays in the data path in front
//! of Verdaccio and the distribution registry and asks tokengate's decision
//! listener about every request (`auth_request`); stock npm and skopeo talk
//! to nginx. The token matrix of the proxy-mode tests gives the same results.
//! The nginx config is `deploy/forward-auth/nginx.conf`'s, with this test's ports.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{free_port, send, wait_for_port, Gate, Setup, Token};
use crate::oci::{docker_login, require, same_file, skopeo_push, Image, Registry};
use crate::{client, registries, Cast, RW};

const EXAMPLE: &str = include_str!("../../deploy/forward-auth/nginx.conf");

struct Edge {
    port: u16,
    child: Child,
}

impl Drop for Edge {
    fn drop(&mut self) {
        crate::common::terminate(&mut self.child);
    }
}

/// nginx with the example's `server` block, its upstream addresses replaced by this test's.
fn start_edge(dir: &Path, port: u16, ports: &[(&str, String)], npm_token: &str) -> Edge {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let mut server = EXAMPLE.to_string();
    for (placeholder, value) in ports {
        assert!(
            server.contains(placeholder),
            "the example names {placeholder}"
        );
        server = server.replace(placeholder, value);
    }
    let server = server
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("${NPM_UPSTREAM_TOKEN}", npm_token);
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{}}\nhttp {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n{server}\n}}\n"
    );
    let child = crate::git::spawn_nginx(dir, &conf, port);
    Edge { port, child }
}

fn npm(args: &[&str]) -> bool {
    let run = client(&[], args);
    eprintln!("[e2e] forward-auth {}: {}", args[0], run.ok);
    if !run.ok {
        eprintln!("{}", crate::tail(&run.output, 15));
    }
    run.ok
}

fn skopeo_pull(out: &Path, host: &str, repo: &str, user: &str, secret: &str) -> bool {
    Command::new("timeout")
        .args(["-k", "10", "300", "skopeo", "--insecure-policy", "copy"])
        .arg("--src-tls-verify=false")
        .arg("--src-creds")
        .arg(format!("{user}:{secret}"))
        .arg(format!("docker://{host}/{repo}:v1"))
        .arg(format!("oci:{}:v1", out.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn nginx_auth_request_in_front_of_verdaccio_and_the_distribution_registry() {
    require("skopeo");
    let reg = registries();
    let work = tempfile::tempdir().unwrap();
    let registry_dir = work.path().join("registry");
    std::fs::create_dir_all(&registry_dir).unwrap();
    let registry = Registry::start(&registry_dir, None);
    let edge_port = free_port();
    let decision = free_port();
    let key = work.path().join("signing.pem");
    // tokengate: the same routes as the proxy mode (their upstreams unused
    // here: nginx forwards), its public URL nginx's, the decision listener
    // trusting loopback only.
    let body = format!(
        r#"
[forward_auth]
listen = "127.0.0.1:{decision}"
trusted_peers = ["127.0.0.1"]

[signing]
key_file = "{key}"

[upstream.verdaccio]
url = "http://127.0.0.1:{npm}"

[upstream.registry]
url = "http://127.0.0.1:{registry}"

[[route]]
name = "web-npm"
format = "npm"
path = "/npm/acme/web"
namespace = "acme/web"
upstream = "verdaccio"
strip_prefix = true

[[route]]
name = "containers"
format = "oci"
path = "/v2"
upstream = "registry"
"#,
        key = key.display(),
        npm = reg.port("NPM_PORT"),
        registry = registry.port,
    );
    let public = format!("http://127.0.0.1:{edge_port}");
    let gate = Gate::launch(Setup {
        body: &body,
        public_url: Some(&public),
        ..Setup::default()
    });
    wait_for_port(decision, Duration::from_secs(10));
    let edge = start_edge(
        &work.path().join("nginx"),
        edge_port,
        &[
            ("tokengate:9091", format!("127.0.0.1:{decision}")),
            ("tokengate:8080", format!("127.0.0.1:{}", gate.port)),
            (
                "verdaccio:4873",
                format!("127.0.0.1:{}", reg.port("NPM_PORT")),
            ),
            ("registry:5000", format!("127.0.0.1:{}", registry.port)),
        ],
        reg.var("NPM_UPSTREAM_TOKEN"),
    );
    let edge_url = format!("http://127.0.0.1:{}", edge.port);

    // npm through nginx: the matrix of the proxy-mode test.
    let Cast {
        rw,
        ro,
        wo,
        other,
        group,
    } = Cast::issue(&gate);
    let revoked = gate.token("project:acme/web", RW, &[]);
    let url = format!("{edge_url}/npm/acme/web");
    let pk = tempfile::tempdir().unwrap();
    let pk = pk.path().to_str().unwrap();
    let name = "tg-e2e-forward-auth";
    let publish = |t: &Token, version: &str, mode: &str| {
        npm(&[
            "npm-publish",
            &url,
            &t.username,
            &t.secret,
            pk,
            name,
            version,
            mode,
        ])
    };
    let install = |t: &Token, version: &str, mode: &str| {
        npm(&[
            "npm-install",
            &url,
            &t.username,
            &t.secret,
            name,
            version,
            mode,
        ])
    };
    assert!(publish(&rw, "1.0.0", "bearer"), "read+write publishes");
    assert!(install(&rw, "1.0.0", "bearer"), "read+write installs");
    assert!(install(&ro, "1.0.0", "basic"), "read-only installs (Basic)");
    assert!(
        install(&group, "1.0.0", "bearer"),
        "the group's token covers the project"
    );
    assert!(!publish(&ro, "1.0.1", "bearer"), "read-only cannot publish");
    assert!(publish(&wo, "1.0.2", "bearer"), "write-only publishes");
    assert!(
        !install(&wo, "1.0.2", "bearer"),
        "write-only cannot install"
    );
    assert!(
        !install(&other, "1.0.0", "bearer"),
        "another project's token"
    );
    assert!(
        !publish(&other, "1.0.3", "bearer"),
        "another project's token"
    );
    let wrong_user = Token {
        username: "someone-else".into(),
        ..ro.clone()
    };
    assert!(!install(&wrong_user, "1.0.0", "basic"), "wrong username");
    assert!(install(&revoked, "1.0.0", "bearer"));
    gate.revoke(revoked.id);
    std::thread::sleep(crate::REVOCATION_BOUND);
    assert!(!install(&revoked, "1.0.0", "bearer"), "revoked");
    // What nginx forwarded carried nginx's own credentials and the token's identity.
    let seen = send(
        edge.port,
        "GET",
        &format!("/npm/acme/web/{name}"),
        &[("Authorization", &format!("Bearer {}", ro.secret))],
        b"",
    );
    assert_eq!(seen.status, 200);
    assert!(
        seen.text().contains(&format!("{url}/{name}/-/")),
        "tarball URLs point at nginx's prefix: {}",
        seen.text()
    );
    // A path nginx normalizes into another location (here /v2/_catalog) is
    // refused on the raw URI tokengate sees (400, told to nginx as 403).
    let sneaky = send(
        edge.port,
        "GET",
        "/npm/acme/web/../../../v2/_catalog",
        &[("Authorization", &format!("Bearer {}", rw.secret))],
        b"",
    );
    assert_eq!(sneaky.status, 403, "{}", sneaky.text());

    // Containers through nginx: the Bearer challenge comes from tokengate,
    // the token endpoint is served by tokengate's proxy listener behind nginx.
    let challenge = send(edge.port, "GET", "/v2/", &[], b"");
    assert_eq!(challenge.status, 401);
    assert_eq!(
        challenge.header("www-authenticate"),
        Some(
            format!("Bearer realm=\"{edge_url}/jwt/auth\",service=\"container_registry\"").as_str()
        )
    );
    let image = Image::build(work.path(), 24 << 20);
    let host = format!("127.0.0.1:{}", edge.port);
    let registry_rw = gate.token("project:acme/web", "read_registry,write_registry", &[]);
    let registry_ro = gate.token("project:acme/web", "read_registry", &[]);
    let registry_other = gate.token("project:acme/api", "read_registry,write_registry", &[]);
    // docker login behind nginx: the challenge leads it to tokengate's token endpoint.
    let login = docker_login(
        &work.path().join("docker"),
        &host,
        &registry_rw.username,
        &registry_rw.secret,
    );
    assert!(login.ok, "{}", login.output);
    let bad = docker_login(
        &work.path().join("docker-bad"),
        &host,
        &registry_rw.username,
        "tgdt_wrong",
    );
    assert!(!bad.ok, "a wrong password must not log in: {}", bad.output);
    let push = skopeo_push(&image, &host, "acme/web/app", &registry_rw);
    assert!(push.ok, "{}\n{}", push.output, gate.logs());
    let pulled = work.path().join("pulled");
    assert!(skopeo_pull(
        &pulled,
        &host,
        "acme/web/app",
        &registry_ro.username,
        &registry_ro.secret
    ));
    assert!(same_file(
        &image.blob(&image.big),
        &crate::oci::blob_path(&pulled, &image.big)
    ));
    assert!(!skopeo_push(&image, &host, "acme/web/ro-app", &registry_ro).ok);
    assert!(!skopeo_pull(
        &work.path().join("other"),
        &host,
        "acme/web/app",
        &registry_other.username,
        &registry_other.secret
    ));
    assert!(!skopeo_push(&image, &host, "acme/web/other-app", &registry_other).ok);
    assert!(!skopeo_pull(
        &work.path().join("wrong-user"),
        &host,
        "acme/web/app",
        "someone-else",
        &registry_ro.secret
    ));
    gate.revoke(registry_ro.id);
    std::thread::sleep(crate::REVOCATION_BOUND);
    assert!(!skopeo_pull(
        &work.path().join("revoked"),
        &host,
        "acme/web/app",
        &registry_ro.username,
        &registry_ro.secret
    ));
    let audit = gate.logs();
    assert!(
        audit.contains("\"mode\":\"forward_auth\""),
        "decisions are logged as such"
    );
}
