//! The command line as a user meets it: output shapes, exit codes, errors.

mod common;

use std::process::{Command, Output};

fn run(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .current_dir(dir)
        .env_remove("TOKENGATE_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn token_create_prints_the_secret_alone_on_the_last_stdout_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[
            "token",
            "create",
            "--project",
            "acme/web",
            "--name",
            "ci",
            "--scopes",
            "read_package_registry,write_container_registry",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.lines().count(),
        1,
        "stdout is the secret alone: {text:?}"
    );
    let secret = text.trim_end();
    assert!(
        secret.starts_with("tgdt_") && secret.len() == 43,
        "{secret}"
    );
    assert!(stderr(&out).contains("tokengate+deploy-token-1"));
    assert!(
        stderr(&out).contains("scopes write_registry,read_package_registry"),
        "alias normalized: {}",
        stderr(&out)
    );
    assert!(
        dir.path().join("tokengate.db").exists(),
        "embedded default store created in the working directory"
    );
}

#[test]
fn json_output_has_gitlabs_shape() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[
            "token",
            "create",
            "--group",
            "acme",
            "--name",
            "deployer",
            "--scopes",
            "read_registry",
            "--username",
            "acme-bot",
            "--expires-at",
            "2099-01-31",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], 1);
    assert_eq!(v["name"], "deployer");
    assert_eq!(v["username"], "acme-bot");
    assert_eq!(v["expires_at"], "2099-01-31T00:00:00.000Z");
    assert_eq!(v["scopes"], serde_json::json!(["read_registry"]));
    assert_eq!(v["revoked"], false);
    assert_eq!(v["expired"], false);
    assert!(v["token"].as_str().unwrap().starts_with("tgdt_"));

    let list = run(dir.path(), &["token", "list", "--group", "acme", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert!(
        v[0].get("token").is_none(),
        "the secret is never shown again"
    );
    let none = run(
        dir.path(),
        &["token", "list", "--project", "acme", "--json"],
    );
    assert_eq!(stdout(&none).trim(), "[]");
}

#[test]
fn revoke_and_list() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        assert!(run(
            dir.path(),
            &[
                "token",
                "create",
                "--project",
                "acme/web",
                "--name",
                name,
                "--scopes",
                "read_package_registry"
            ]
        )
        .status
        .success());
    }
    let out = run(dir.path(), &["token", "revoke", "1"]);
    assert!(out.status.success());
    let list = stdout(&run(dir.path(), &["token", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("1 ") && l.contains(" revoked ") && l.ends_with(" never")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("2 ") && l.contains(" active ")),
        "{list}"
    );
    let active = stdout(&run(dir.path(), &["token", "list", "--active"]));
    assert!(!active.lines().any(|l| l.starts_with("1 ")), "{active}");
    let missing = run(dir.path(), &["token", "revoke", "42"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr(&missing).trim(),
        "tokengate: no deploy token with id 42"
    );
}

#[test]
fn bad_input_is_a_one_line_error_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[&[&str]] = &[
        &[
            "token",
            "create",
            "--project",
            "acme/web",
            "--name",
            "x",
            "--scopes",
            "api",
        ],
        &[
            "token",
            "create",
            "--project",
            "acme/web",
            "--name",
            "x",
            "--scopes",
            "",
        ],
        &[
            "token",
            "create",
            "--project",
            "acme/../x",
            "--name",
            "x",
            "--scopes",
            "read_registry",
        ],
        &[
            "token",
            "create",
            "--project",
            "acme/web",
            "--name",
            "x",
            "--scopes",
            "read_registry",
            "--expires-at",
            "2001-01-01",
        ],
        &[
            "token",
            "create",
            "--project",
            "acme/web",
            "--name",
            "x",
            "--scopes",
            "read_registry",
            "--expires-at",
            "soon",
        ],
        &[
            "token",
            "create",
            "--project",
            "acme/web",
            "--name",
            "x",
            "--scopes",
            "read_registry",
            "--username",
            "has space",
        ],
        &[
            "token",
            "create",
            "--project",
            "a",
            "--group",
            "b",
            "--name",
            "x",
            "--scopes",
            "read_registry",
        ],
        &[
            "token",
            "create",
            "--name",
            "x",
            "--scopes",
            "read_registry",
        ],
        &["frobnicate"],
        // A group's path is no project.
        &[
            "token",
            "create",
            "--project",
            "acme",
            "--name",
            "x",
            "--scopes",
            "read_registry",
        ],
    ];
    for args in cases {
        let out = run(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?} printed to stdout");
    }
    assert!(
        !dir.path().join("tokengate.db").exists()
            || stdout(&run(dir.path(), &["token", "list", "--json"])).trim() == "[]"
    );
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write(dir.path(), "proxy.toml", "[server]\nlisten = \"127.0.0.1:8080\"\n\n[upstream.a]\nurl = \"http://127.0.0.1:1\"\n\n[[route]]\nname = \"r\"\nformat = \"npm\"\npath = \"/npm\"\nnamespace = \"acme\"\nupstream = \"b\"\n");
    for cmd in [&["check-config"][..], &["serve"][..]] {
        let out = run(dir.path(), cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        assert_eq!(
            stderr(&out).trim(),
            format!(
                "tokengate: {}:12: route[0].upstream: unknown upstream \"b\"",
                "proxy.toml"
            )
        );
    }
    std::fs::write(&path, "[server]\nlisen = \"x\"\n").unwrap();
    let out = run(
        dir.path(),
        &["check-config", "--config", path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(":2: server.lisen: unknown field `lisen`"),
        "{err}"
    );
    // Key files are read at check time: what check-config passes, serve starts with.
    std::fs::write(&path, "[signing]\nverify_key_files = [\"old.pem\"]\n").unwrap();
    for cmd in ["check-config", "serve"] {
        let out = run(dir.path(), &[cmd, "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = stderr(&out);
        assert!(
            err.contains(":2: signing.verify_key_files: old.pem: cannot read"),
            "{err}"
        );
    }
    let ok = run(
        dir.path(),
        &[
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml.example"),
        ],
    );
    assert!(
        ok.status.success(),
        "the shipped example is valid: {}",
        stderr(&ok)
    );
}

#[test]
fn explain_shows_route_scope_and_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml.example");
    let out = run(
        dir.path(),
        &[
            "explain",
            "PUT",
            "/api/v4/projects/acme%2Fweb/packages/maven/com/acme/a/1/a-1.jar",
            "--config",
            example,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "route:     maven",
        "format:    maven",
        "namespace: acme/web",
        "needs:     write_package_registry",
        "upstream:  http://127.0.0.1:8082/maven/acme/web/com/acme/a/1/a-1.jar",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("multipart"), "{text}");
    // twine's upload: the one kind of request here that may be a form.
    let upload = stdout(&run(
        dir.path(),
        &["explain", "POST", "/pypi/acme/web/", "--config", example],
    ));
    assert!(
        upload.contains("body:      may be a multipart form"),
        "{upload}"
    );
    let denied = stdout(&run(
        dir.path(),
        &[
            "explain",
            "DELETE",
            "/api/v4/projects/acme/packages/maven/x",
            "--config",
            example,
        ],
    ));
    assert!(denied.contains("needs:     nothing: refused"), "{denied}");
    let bad = run(
        dir.path(),
        &[
            "explain",
            "GET",
            "/npm/acme/web/%2e%2e/x",
            "--config",
            example,
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("dot segments"));
    let none = run(
        dir.path(),
        &["explain", "GET", "/nowhere", "--config", example],
    );
    assert!(stderr(&none).contains("no route"));
    let own = run(
        dir.path(),
        &["explain", "GET", "/jwt/auth?service=x", "--config", example],
    );
    assert!(own.status.success(), "{}", stderr(&own));
    assert!(stdout(&own).contains("answered by tokengate itself"));
    // Route paths tokengate answers itself: npm's whoami, Conan's logins.
    for (path, want) in [
        (
            "/npm/acme/web/-/whoami",
            "answered:  by tokengate itself, with the deploy token's username",
        ),
        (
            "/conan/acme/web/v2/users/authenticate",
            "answered:  by tokengate itself, a login",
        ),
    ] {
        let out = run(dir.path(), &["explain", "GET", path, "--config", example]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains(want) && !text.contains("upstream:"),
            "{path}:\n{text}"
        );
    }
}

#[test]
fn explain_with_a_token_id_says_which_rule_denies_it() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml.example");
    let create = |owner: &str, scopes: &str, extra: &[&str]| -> i64 {
        let (flag, path) = owner.split_once(':').unwrap();
        let flag = format!("--{flag}");
        let mut args = vec![
            "token", "create", &flag, path, "--name", "x", "--scopes", scopes, "--json",
            "--config", example,
        ];
        args.extend_from_slice(extra);
        let out = run(dir.path(), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let reader = create("project:acme/web", "read_package_registry", &[]);
    let other = create(
        "project:acme/other",
        "read_package_registry,write_package_registry",
        &[],
    );
    let jar = "/api/v4/projects/acme%2Fweb/packages/maven/com/acme/a/1/a-1.jar";
    let explain = |method: &str, id: i64| {
        run(
            dir.path(),
            &[
                "explain",
                method,
                jar,
                "--token-id",
                &id.to_string(),
                "--config",
                example,
            ],
        )
    };
    let out = explain("GET", reader);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("token {reader}:   allowed")),
        "{}",
        stdout(&out)
    );
    for (method, id, why) in [
        (
            "PUT",
            reader,
            "deploy token needs the write_package_registry scope",
        ),
        ("GET", other, "does not cover namespace acme/web"),
        ("DELETE", reader, "not allowed"),
    ] {
        let out = explain(method, id);
        assert_eq!(out.status.code(), Some(1), "{method}");
        assert!(
            stdout(&out).contains(&format!("token {id}:   denied: ")) && stdout(&out).contains(why),
            "{method}: {}",
            stdout(&out)
        );
    }
    let out = run(
        dir.path(),
        &["token", "revoke", &reader.to_string(), "--config", example],
    );
    assert!(out.status.success());
    assert!(stdout(&explain("GET", reader)).contains("deploy token has been revoked"));
    let missing = explain("GET", 999);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no deploy token with id 999"));

    // Tokens about to expire.
    let day = |days: i64| {
        (chrono::Utc::now() + chrono::Duration::days(days))
            .format("%Y-%m-%d")
            .to_string()
    };
    let soon = create(
        "project:acme/web",
        "read_registry",
        &["--expires-at", &day(3)],
    );
    let later = create(
        "project:acme/web",
        "read_registry",
        &["--expires-at", &day(90)],
    );
    let out = run(
        dir.path(),
        &[
            "token",
            "list",
            "--expiring-within",
            "30d",
            "--json",
            "--config",
            example,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<i64> = serde_json::from_str::<serde_json::Value>(&stdout(&out))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [soon],
        "only the token expiring within 30 days, not {later} nor those without expiry"
    );
    let bad = run(
        dir.path(),
        &[
            "token",
            "list",
            "--expiring-within",
            "soon",
            "--config",
            example,
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
}

/// The configuration reference is `proxy.toml.example`: every key the
/// config structs accept must be shown there (set or commented).
#[test]
fn the_example_config_shows_every_key() {
    let source = include_str!("../src/config.rs");
    let example = include_str!("../proxy.toml.example");
    let mut missing = Vec::new();
    let mut checked = 0;
    for block in source.split("\nstruct Raw").skip(1) {
        let body = &block[block.find('{').unwrap() + 1..block.find("\n}").unwrap()];
        for line in body.lines().map(str::trim) {
            let Some((name, _)) = line.split_once(':') else {
                continue;
            };
            if name.starts_with("//") || name.starts_with('#') || name.contains(' ') {
                continue;
            }
            checked += 1;
            let shown = [
                format!("{name} ="),
                format!("[{name}]"),
                format!("[{name}."),
                format!("[[{name}"),
                format!(".{name}]"),
            ]
            .iter()
            .any(|form| example.contains(form.as_str()));
            if !shown {
                missing.push(name.to_string());
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} keys found: is the parser still right?"
    );
    assert!(
        missing.is_empty(),
        "proxy.toml.example does not show: {missing:?}"
    );
}
