//! The deploy kit, checked with what runs here (no Docker engine, no
//! cluster, no systemd as PID 1): the Kubernetes manifests against the API
//! schemas, the compose file against the compose spec, the systemd unit
//! with `systemd-analyze`, every shipped `proxy.toml` with `check-config`,
//! and the health and readiness probe commands against a running tokengate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{bin, Gate, Setup, ADMIN_TOKEN};
use crate::e2e_home;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn venv_tool(name: &str) -> PathBuf {
    let tool = e2e_home().join("venv/bin").join(name);
    assert!(
        tool.exists(),
        "{} missing: run tests/e2e/install.sh",
        tool.display()
    );
    tool
}

fn ok(out: &Output, what: &str) -> String {
    let (success, text) = crate::common::outcome(out);
    assert!(success, "{what}:\n{text}");
    text
}

/// A YAML document's field, read with the venv's PyYAML.
fn yaml_field(file: &Path, python_expr: &str) -> String {
    let script = format!(
        "import sys, yaml\ndocs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\nprint({python_expr}, end='')"
    );
    let out = Command::new(venv_tool("python"))
        .args(["-c", &script])
        .arg(file)
        .output()
        .unwrap();
    ok(&out, "reading YAML")
}

fn check_config(text: &str, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&file)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    ok(&out, "tokengate check-config");
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let dir = Path::new(DEPLOY).join("kubernetes");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let mut files = vec![dir.join("secret.example.yaml")];
    for line in kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
    {
        let file = dir.join(line);
        assert!(
            file.exists(),
            "kustomization lists {line}, which does not exist"
        );
        files.push(file);
    }
    let out = Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "-k", "1.30.0"])
        .args(&files)
        .output()
        .unwrap();
    let report = ok(&out, "kubernetes-validate");
    for kind in [
        "configmap",
        "deployment",
        "service",
        "poddisruptionbudget",
        "secret",
    ] {
        assert!(
            report.contains(&format!("resource {kind}/")),
            "{kind} not validated:\n{report}"
        );
    }
    // The ConfigMap's proxy.toml is a valid config.
    let toml = yaml_field(&dir.join("configmap.yaml"), "docs[0]['data']['proxy.toml']");
    check_config(
        &toml,
        &[
            ("TOKENGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("VERDACCIO_TOKEN", "x"),
        ],
    );
    // Probes, security context and the grace period fit the config.
    let deployment = dir.join("deployment.yaml");
    let pod = "docs[0]['spec']['template']['spec']";
    assert_eq!(
        yaml_field(
            &deployment,
            &format!("{pod}['securityContext']['runAsNonRoot']")
        ),
        "True"
    );
    assert_eq!(
        yaml_field(
            &deployment,
            &format!("{pod}['containers'][0]['livenessProbe']['httpGet']['path']")
        ),
        "/healthz"
    );
    let grace: u64 = yaml_field(
        &deployment,
        &format!("{pod}['terminationGracePeriodSeconds']"),
    )
    .parse()
    .unwrap();
    assert!(
        grace > 5 + 60,
        "terminationGracePeriodSeconds {grace} must exceed shutdown delay + grace"
    );
}

#[test]
fn the_compose_file_follows_the_compose_spec_and_its_config_loads() {
    let out = Command::new(venv_tool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(Path::new(DEPLOY).join("compose.yaml"))
        .output()
        .unwrap();
    ok(&out, "check-jsonschema (compose spec)");
    let toml = std::fs::read_to_string(Path::new(DEPLOY).join("proxy.toml")).unwrap();
    check_config(&toml, &[("TOKENGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
}

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let unit = std::fs::read_to_string(Path::new(DEPLOY).join("tokengate.service")).unwrap();
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
    // verify wants ExecStart to exist: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokengate.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/tokengate", bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    let text = ok(&out, "systemd-analyze verify");
    assert!(!text.contains("Unknown key"), "{text}");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&file)
        .output()
        .unwrap();
    let report = ok(&out, "systemd-analyze security");
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for tokengate.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in\n{report}"));
    println!("systemd exposure level: {score}");
    assert!(
        score <= 2.0,
        "exposure {score} (0 = locked down, 10 = unprotected)"
    );
}

#[test]
fn the_probe_commands_of_the_image_and_the_deployment_work() {
    let gate = Gate::launch(Setup::default());
    let on_port = |command: &str| {
        command.replace(
            "/127.0.0.1/9090",
            &format!("/127.0.0.1/{}", gate.admin_port),
        )
    };
    let dockerfile = std::fs::read_to_string(Path::new(DEPLOY).join("Dockerfile")).unwrap();
    let health = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("CMD [\"bash\", \"-c\", \""))
        .and_then(|rest| rest.strip_suffix("\"]"))
        .expect("the HEALTHCHECK command")
        .replace("\\\\", "\\");
    let out = Command::new("bash")
        .args(["-c", &on_port(&health)])
        .output()
        .unwrap();
    ok(&out, "the image's HEALTHCHECK");
    let readiness = yaml_field(
        &Path::new(DEPLOY).join("kubernetes/deployment.yaml"),
        "docs[0]['spec']['template']['spec']['containers'][0]['readinessProbe']['exec']['command'][2]",
    );
    let probe = |token: &str| {
        Command::new("bash")
            .args(["-c", &on_port(&readiness)])
            .env("TOKENGATE_ADMIN_TOKEN", token)
            .output()
            .unwrap()
    };
    ok(&probe(ADMIN_TOKEN), "the readiness probe");
    assert!(
        !probe("not-the-admin-token").status.success(),
        "readiness needs the admin token"
    );
}

/// The Traefik and Envoy examples cannot run here (neither is packaged for
/// Debian 12); their shape is checked instead: each asks the decision
/// listener's path for its protocol, passes the identity headers upstream
/// and the challenge to clients, and keeps credentials from the registry.
/// The requests they send are those tests/forward_auth.rs sends.
#[test]
fn the_forward_auth_examples_ask_the_decision_listener() {
    let dir = Path::new(DEPLOY).join("forward-auth");
    let toml = std::fs::read_to_string(dir.join("proxy.toml")).unwrap();
    check_config(&toml, &[("TOKENGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let decision = "tokengate:9091";
    assert!(toml.contains("listen = \"0.0.0.0:9091\""));

    let traefik = dir.join("traefik.yml");
    let auth = "docs[0]['http']['middlewares']['tokengate']['forwardAuth']";
    assert_eq!(
        yaml_field(&traefik, &format!("{auth}['address']")),
        format!("http://{decision}/traefik")
    );
    assert_eq!(
        yaml_field(&traefik, &format!("{auth}['trustForwardHeader']")),
        "False"
    );
    assert_eq!(
        yaml_field(&traefik, &format!("sorted({auth}['authResponseHeaders'])")),
        "['X-Tokengate-Scopes', 'X-Tokengate-Token-Id', 'X-Tokengate-User']"
    );
    assert_eq!(
        yaml_field(
            &traefik,
            "docs[0]['http']['routers']['containers']['middlewares']"
        ),
        "['tokengate', 'drop-credentials']"
    );

    let envoy = dir.join("envoy.yaml");
    let manager = "docs[0]['static_resources']['listeners'][0]['filter_chains'][0]['filters'][0]['typed_config']";
    let service = format!("{manager}['http_filters'][0]['typed_config']['http_service']");
    assert_eq!(
        yaml_field(&envoy, &format!("{manager}['http_filters'][0]['name']")),
        "envoy.filters.http.ext_authz"
    );
    assert_eq!(
        yaml_field(&envoy, &format!("{service}['server_uri']['uri']")),
        format!("http://{decision}")
    );
    assert_eq!(
        yaml_field(&envoy, &format!("{service}['path_prefix']")),
        "/envoy",
        "tokengate's default envoy_path_prefix"
    );
    // Envoy passes the check only the headers it lists: every header the
    // decision refuses must be among them, or Envoy would forward it.
    let allowed = yaml_field(
        &envoy,
        &format!("[p['exact'] for p in {service}['authorization_request']['allowed_headers']['patterns']]"),
    );
    for refused in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x-checksum-deploy",
        "x-explode-archive",
        "x-explode-archive-atomic",
        "content-type",
        "authorization",
        "deploy-token",
        "x-nuget-apikey",
    ] {
        assert!(
            allowed.contains(&format!("'{refused}'")),
            "{refused}: {allowed}"
        );
    }
    let response = format!("{service}['authorization_response']");
    assert_eq!(
        yaml_field(
            &envoy,
            &format!("{response}['allowed_upstream_headers']['patterns']")
        ),
        "[{'prefix': 'x-tokengate-'}]"
    );
    assert_eq!(
        yaml_field(
            &envoy,
            &format!("{response}['allowed_client_headers']['patterns']")
        ),
        "[{'exact': 'www-authenticate'}]"
    );
    let routes = format!("{manager}['route_config']['virtual_hosts'][0]['routes']");
    assert_eq!(
        yaml_field(
            &envoy,
            &format!("[r['match']['prefix'] for r in {routes} if 'authorization' in r.get('request_headers_to_remove', [])]")
        ),
        "['/v2/']"
    );
}
