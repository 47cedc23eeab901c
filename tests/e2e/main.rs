//! End-to-end tests: the STOCK clients (npm, twine, pip, mvn, curl) talk to the real
//! `tokengate` binary, which forwards to REAL registries (Verdaccio, pypiserver and an
//! nginx WebDAV server for Maven and generic files).
//!
//! Prerequisites: `tests/e2e/install.sh` (CI runs it before `cargo test`). A missing tool
//! makes every test here FAIL with a message saying what is missing; nothing is skipped.
//!
//! One set of registries (`tests/e2e/registries.sh start`) serves the whole test binary:
//! the first test starts it on free loopback ports; a watchdog process stops it (and
//! removes its directory, unless `TOKENGATE_E2E_KEEP=1`) when this process exits, however
//! it exits. Each test starts its own `Gate` (own token store, own log) and uses package
//! names of its own, so tests can run in parallel.
//!
//! Every client run goes through `tests/e2e/clients.sh` (fresh HOME per run, see there).

mod admin;
#[path = "../common/mod.rs"]
mod common;
mod conan;
mod deploy;
mod forward_auth;
mod git;
mod guide;
mod nuget;
mod oci;
#[path = "../common/recorder.rs"]
mod recorder;
mod tls;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Gate, Token};

const E2E_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
const RW: &str = "read_package_registry,write_package_registry";
const RO: &str = "read_package_registry";
const WO: &str = "write_package_registry";
/// The revocation bound of DESIGN.md: "denied by every instance within 1 s".
const REVOCATION_BOUND: Duration = Duration::from_millis(1000);

/// The tokens every format is tried with.
struct Cast {
    /// acme/web, read and write.
    rw: Token,
    /// acme/web, read only.
    ro: Token,
    /// acme/web, write only.
    wo: Token,
    /// Another project's read+write token (acme/api).
    other: Token,
    /// The group acme, read only: covers acme/web.
    group: Token,
}

impl Cast {
    fn issue(gate: &Gate) -> Cast {
        Cast {
            rw: gate.token("project:acme/web", RW, &[]),
            ro: gate.token("project:acme/web", RO, &[]),
            wo: gate.token("project:acme/web", WO, &[]),
            other: gate.token("project:acme/api", RW, &[]),
            group: gate.token("group:acme", RO, &[]),
        }
    }
}

// ------------------------------------------------------------------------------ registries

struct Registries {
    /// WORKDIR of registries.sh: storage and logs of all three servers.
    dir: PathBuf,
    env: HashMap<String, String>,
    /// Holds the write end of the watchdog's stdin: when this process exits, the pipe
    /// closes and the watchdog stops the registries.
    _watchdog: Mutex<Child>,
}

impl Registries {
    fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("registries.env has no {key}"))
    }

    fn port(&self, key: &str) -> u16 {
        self.var(key).parse().unwrap()
    }

    /// All registry logs, concatenated (each prefixed by its file name).
    fn logs(&self) -> String {
        let mut all = String::new();
        for name in [
            "verdaccio.log",
            "pypiserver.log",
            "nginx-access.log",
            "nginx-error.log",
        ] {
            let text = std::fs::read(self.dir.join(name)).unwrap_or_default();
            all.push_str(&format!(
                "==> {name} <==\n{}\n",
                String::from_utf8_lossy(&text)
            ));
        }
        all
    }

    fn nginx_access_log(&self) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.dir.join("nginx-access.log")).unwrap_or_default(),
        )
        .into_owned()
    }

    fn verdaccio_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("verdaccio.log")).unwrap_or_default())
            .into_owned()
    }
}

fn registries() -> &'static Registries {
    static REGISTRIES: OnceLock<Registries> = OnceLock::new();
    REGISTRIES.get_or_init(start_registries)
}

fn e2e_home() -> PathBuf {
    match std::env::var_os("TOKENGATE_E2E_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
            .join(".cache/tokengate-e2e"),
    }
}

/// Fails (never skips) when something that install.sh provides is missing.
fn require_prerequisites() {
    let mut missing = Vec::new();
    for tool in [
        "node", "npm", "mvn", "jar", "curl", "python3", "openssl", "timeout", "base64", "sha1sum",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            missing.push(format!("command `{tool}` not on PATH"));
        }
    }
    let nginx = Command::new("sh")
        .args(["-c", "command -v nginx || test -x /usr/sbin/nginx"])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !nginx {
        missing.push("nginx (neither on PATH nor /usr/sbin/nginx)".into());
    }
    let home = e2e_home();
    let files = [
        home.join("verdaccio/node_modules/verdaccio/bin/verdaccio"),
        home.join("venv/bin/pypi-server"),
        home.join("venv/bin/twine"),
        home.join("venv/bin/python"),
        home.join("conan/bin/conan"),
        PathBuf::from("/usr/bin/chromium"),
        PathBuf::from("/usr/bin/chromedriver"),
        home.join("conan/bin/conan_server"),
        home.join("conan1/bin/conan"),
        PathBuf::from("/usr/share/maven-repo/org/apache/maven/plugins/maven-deploy-plugin/3.0.0"),
        PathBuf::from(
            "/usr/share/maven-repo/org/apache/maven/plugins/maven-dependency-plugin/3.5.0",
        ),
    ];
    for f in files {
        if !f.exists() {
            missing.push(format!("{} does not exist", f.display()));
        }
    }
    assert!(
        missing.is_empty(),
        "end-to-end prerequisites are missing:\n  - {}\nRun `tests/e2e/install.sh` (as root, Debian 12; TOKENGATE_E2E_HOME={}) before `cargo test --test e2e`.",
        missing.join("\n  - "),
        home.display()
    );
}

fn start_registries() -> Registries {
    require_prerequisites();
    let root = tempfile::Builder::new()
        .prefix("tokengate-e2e-")
        .tempdir()
        .unwrap()
        .keep();
    let workdir = root.join("registries");
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let p = common::free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let script = format!("{E2E_DIR}/registries.sh");
    let started = Instant::now();
    let out = Command::new(&script)
        .arg("start")
        .arg(&workdir)
        .args(ports.iter().map(|p| p.to_string()))
        .stdin(Stdio::null())
        .output()
        .expect("run registries.sh");
    // The watchdog: stops the registries once our end of its stdin closes (at exit, even
    // on a panic or a signal). It ignores INT/TERM/HUP so that a Ctrl-C still cleans up.
    let keep = std::env::var("TOKENGATE_E2E_KEEP").unwrap_or_default();
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' INT TERM HUP; cat >/dev/null; "$0" stop "$1" >/dev/null 2>&1; [ "$2" = 1 ] || rm -rf "$3""#)
        .arg(&script)
        .arg(&workdir)
        .arg(&keep)
        .arg(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the registries watchdog");
    assert!(
        out.status.success(),
        "registries.sh start {} {:?} failed ({}):\n{}{}",
        workdir.display(),
        ports,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "[e2e] registries started in {:?} under {}",
        started.elapsed(),
        workdir.display()
    );
    let text = std::fs::read_to_string(workdir.join("registries.env")).unwrap();
    let env: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Registries {
        dir: workdir,
        env,
        _watchdog: Mutex::new(watchdog),
    }
}

// ------------------------------------------------------------------------------ the proxy

fn gate_config(reg: &Registries) -> String {
    let npm = reg.port("NPM_PORT");
    let pypi = reg.port("PYPI_PORT");
    let dav = reg.port("DAV_PORT");
    format!(
        r#"
[upstream.verdaccio]
url = "http://127.0.0.1:{npm}"
token_env = "TG_NPM_TOKEN"

[upstream.pypi]
url = "http://127.0.0.1:{pypi}"
basic = {{ username = "proxy", password_env = "TG_PYPI_PASSWORD" }}

[upstream.maven]
url = "http://127.0.0.1:{dav}/maven"
basic = {{ username = "proxy", password_env = "TG_DAV_PASSWORD" }}

[upstream.files]
url = "http://127.0.0.1:{dav}/generic"
basic = {{ username = "proxy", password_env = "TG_DAV_PASSWORD" }}

[[route]]
name = "web-npm"
format = "npm"
path = "/npm/acme/web"
namespace = "acme/web"
upstream = "verdaccio"
strip_prefix = true

[[route]]
name = "web-pypi"
format = "pypi"
path = "/pypi/acme/web"
namespace = "acme/web"
upstream = "pypi"
strip_prefix = true

[[route]]
name = "web-maven"
format = "maven"
path = "/maven/acme/web"
namespace = "acme/web"
upstream = "maven"
strip_prefix = true

[[route]]
name = "web-generic"
format = "generic"
path = "/generic/acme/web"
namespace = "acme/web"
upstream = "files"
strip_prefix = true

[[route]]
name = "api-generic"
format = "generic"
path = "/api/v4/projects/{{namespace}}/packages/generic"
upstream = "files"
strip_prefix = true
"#
    )
}

fn start_gate(reg: &Registries) -> Gate {
    start_gate_with(reg, None)
}

/// The gate in front of the registries; `tls` is `(cert, key)` for an https listener.
fn start_gate_with(reg: &Registries, tls: Option<(PathBuf, PathBuf)>) -> Gate {
    Gate::launch(common::Setup {
        body: &gate_config(reg),
        env: &[
            ("TG_NPM_TOKEN", reg.var("NPM_UPSTREAM_TOKEN")),
            ("TG_PYPI_PASSWORD", reg.var("PYPI_PASSWORD")),
            ("TG_DAV_PASSWORD", reg.var("DAV_PASSWORD")),
        ],
        tls,
        ..common::Setup::default()
    })
}

/// An RFC 3339 time `secs` seconds from now (whole seconds, UTC), and that instant.
fn expiry_in(secs: i64) -> (String, chrono::DateTime<chrono::Utc>) {
    use chrono::{SubsecRound, Utc};
    let at = (Utc::now() + chrono::Duration::seconds(secs)).trunc_subsecs(0);
    (at.format("%Y-%m-%dT%H:%M:%SZ").to_string(), at)
}

fn sleep_until(at: chrono::DateTime<chrono::Utc>) {
    let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(left + Duration::from_millis(300));
}

// ------------------------------------------------------------------------------ access log

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone)]
struct Access {
    method: String,
    path: String,
    status: u16,
    line: String,
}

/// The access-log lines (target `tokengate::access`) in `logs`, text or JSON format.
fn access_entries(logs: &str) -> Vec<Access> {
    let clean = strip_ansi(logs);
    clean
        .lines()
        .filter(|l| l.contains("tokengate::access"))
        .filter_map(|line| {
            let mut fields: HashMap<String, String> = HashMap::new();
            let json = line
                .find('{')
                .and_then(|i| serde_json::from_str::<serde_json::Value>(&line[i..]).ok());
            if let Some(v) = json.filter(|v| v.is_object()) {
                let obj = if v["fields"].is_object() {
                    &v["fields"]
                } else {
                    &v
                };
                for (k, val) in obj.as_object().unwrap() {
                    let s = val
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| val.to_string());
                    fields.insert(k.clone(), s);
                }
            } else {
                for word in line.split_whitespace() {
                    if let Some((k, v)) = word.split_once('=') {
                        fields.insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                }
            }
            Some(Access {
                method: fields.get("method")?.clone(),
                path: fields.get("path")?.clone(),
                status: fields.get("status")?.parse().ok()?,
                line: line.to_string(),
            })
        })
        .collect()
}

/// A position in the gate's log: later checks look only at what came after it.
fn mark(gate: &Gate) -> usize {
    gate.logs().len()
}

fn access_since(gate: &Gate, mark: usize) -> Vec<Access> {
    let logs = gate.logs();
    access_entries(logs.get(mark..).unwrap_or(""))
}

fn access_tail(gate: &Gate, n: usize) -> String {
    let all = access_entries(&gate.logs());
    let skip = all.len().saturating_sub(n);
    all[skip..]
        .iter()
        .map(|a| format!("    {}\n", a.line.trim()))
        .collect()
}

/// Since `mark`, at least one `method` request whose path contains `path_part` got
/// `status`, and none of them was answered with a success (nothing was forwarded and
/// accepted).
fn assert_refused(
    gate: &Gate,
    mark: usize,
    method: &str,
    path_part: &str,
    status: u16,
    what: &str,
) {
    let entries: Vec<Access> = access_since(gate, mark)
        .into_iter()
        .filter(|a| a.method == method && a.path.contains(path_part))
        .collect();
    let dump = || {
        entries
            .iter()
            .map(|a| format!("    {}\n", a.line.trim()))
            .collect::<String>()
    };
    assert!(
        entries.iter().any(|a| a.status == status),
        "{what}: no `{method} …{path_part}…` request with status={status} in the proxy's access log; matching lines:\n{}last access lines:\n{}",
        dump(),
        access_tail(gate, 20)
    );
    assert!(
        !entries.iter().any(|a| a.status < 400),
        "{what}: a `{method} …{path_part}…` request succeeded through the proxy:\n{}",
        dump()
    );
}

// ------------------------------------------------------------------------------ clients

struct Run {
    ok: bool,
    output: String,
}

/// Runs `clients.sh ARGS` with `env` added.
fn client(env: &[(&str, &str)], args: &[&str]) -> Run {
    let script = format!("{E2E_DIR}/clients.sh");
    let out = Command::new("timeout")
        .args(["-k", "10", "240"])
        .arg(&script)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run clients.sh");
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Run {
        ok: out.status.success(),
        output: format!("exit status: {}\n{}", out.status, output),
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

fn expect_ok(gate: &Gate, what: &str, args: &[&str]) -> String {
    expect_client(gate, &[], what, args, true)
}

fn expect_fail(gate: &Gate, what: &str, args: &[&str]) -> String {
    expect_client(gate, &[], what, args, false)
}

/// Runs a client and asserts it succeeded (`succeed`) or failed; returns its output.
fn expect_client(
    gate: &Gate,
    env: &[(&str, &str)],
    what: &str,
    args: &[&str],
    succeed: bool,
) -> String {
    let t = Instant::now();
    let run = client(env, args);
    let verdict = match (succeed, run.ok) {
        (true, true) => "ok",
        (true, false) => "FAILED",
        (false, false) => "failed as expected",
        (false, true) => "SUCCEEDED",
    };
    eprintln!("[e2e] {what}: {verdict} in {:.1?}", t.elapsed());
    let expected = if succeed {
        "expected success, the client failed"
    } else {
        "expected the client to fail, it succeeded"
    };
    assert!(
        run.ok == succeed,
        "{what}: {expected}.\nclients.sh {}\n{}proxy access log (last lines):\n{}",
        args.first().unwrap(),
        tail(&run.output, 60),
        access_tail(gate, 25)
    );
    run.output
}

/// After `gate.revoke(id)`, `probe` (a raw request with the token) must give 401 within
/// the revocation bound. Returns how long it took.
fn assert_revoked_within_bound(
    gate: &Gate,
    token: &Token,
    probe: impl Fn() -> common::RawResponse,
) -> Duration {
    let before = probe();
    assert!(
        before.status < 400,
        "token {} should work before revocation, got {} {}",
        token.id,
        before.status,
        before.text()
    );
    let start = Instant::now();
    gate.revoke(token.id);
    loop {
        let r = probe();
        if r.status == 401 {
            let took = start.elapsed();
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.contains("Basic") && v.contains("tokengate")),
                "401 for a revoked token lacks `WWW-Authenticate: Basic realm=\"tokengate\"`: {:?}",
                r.headers
            );
            eprintln!("[e2e] token {} refused {took:?} after revocation", token.id);
            assert!(
                took <= REVOCATION_BOUND,
                "revoked token refused only after {took:?}"
            );
            return took;
        }
        assert!(
            start.elapsed() <= REVOCATION_BOUND,
            "revoked token {} still answered {} {:?} after {:?}",
            token.id,
            r.status,
            r.text(),
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------------------ secrets

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Every form in which a token's secret could end up somewhere: the secret itself, and
/// base64 of `user:secret` for each Basic username used with it.
fn secret_forms(tokens: &[&Token], extra_users: &[&str]) -> Vec<(String, String)> {
    let mut forms = Vec::new();
    for t in tokens {
        forms.push((format!("secret of token {}", t.id), t.secret.clone()));
        for user in std::iter::once(t.username.as_str()).chain(extra_users.iter().copied()) {
            forms.push((
                format!("base64({user}:secret of token {})", t.id),
                b64(&format!("{user}:{}", t.secret)),
            ));
        }
    }
    forms
}

fn assert_no_secret_in(name: &str, text: &str, forms: &[(String, String)]) {
    for (what, needle) in forms {
        if let Some(pos) = text.find(needle.as_str()) {
            let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
            let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
            panic!(
                "{what} appears in {name}:\n    {}",
                text[start..end].replace(needle.as_str(), "<SECRET>")
            );
        }
    }
}

fn assert_no_secret_leaks(reg: &Registries, gate: &Gate, tokens: &[&Token], extra_users: &[&str]) {
    let forms = secret_forms(tokens, extra_users);
    assert_no_secret_in("the proxy's log", &gate.logs(), &forms);
    assert_no_secret_in("the registries' logs", &reg.logs(), &forms);
}

fn file_exists(path: &Path, what: &str) {
    assert!(
        path.is_file(),
        "{what}: {} is not in the registry's storage",
        path.display()
    );
}

fn file_absent(path: &Path, what: &str) {
    assert!(
        !path.exists(),
        "{what}: {} is in the registry's storage",
        path.display()
    );
}

// ------------------------------------------------------------------------------ npm

#[test]
fn npm_through_tokengate() {
    let reg = registries();
    let gate = start_gate(reg);
    let url = format!("{}/npm/acme/web", gate.url());
    let pk = tempfile::tempdir().unwrap();
    let pk = pk.path().to_str().unwrap().to_string();
    let storage = reg.dir.join("verdaccio/storage");
    let Cast {
        rw,
        ro,
        wo,
        other,
        group,
    } = Cast::issue(&gate);
    let rv = gate.token("project:acme/web", RW, &[]);
    let name = "tg-e2e-npm-demo";

    // Happy path: a read+write token publishes (Bearer `_authToken`) and installs.
    expect_ok(
        &gate,
        "npm publish, read+write token (bearer)",
        &[
            "npm-publish",
            &url,
            &rw.username,
            &rw.secret,
            &pk,
            name,
            "1.0.0",
        ],
    );
    file_exists(
        &storage.join(name).join(format!("{name}-1.0.0.tgz")),
        "npm publish",
    );
    expect_ok(
        &gate,
        "npm install, read+write token (bearer)",
        &["npm-install", &url, &rw.username, &rw.secret, name, "1.0.0"],
    );
    // `npm whoami` names the deploy token, not the proxy's upstream account.
    expect_ok(
        &gate,
        "npm whoami, read+write token",
        &["npm-whoami", &url, &rw.username, &rw.secret, &rw.username],
    );
    // npm's Basic mode (`_auth`), with a scoped package (`@scope%2fname` packument, tarball
    // URL rewritten to the proxy).
    expect_ok(
        &gate,
        "npm publish scoped, read+write token (basic)",
        &[
            "npm-publish",
            &url,
            &rw.username,
            &rw.secret,
            &pk,
            "@acme/tg-e2e-scoped",
            "2.0.0",
            "basic",
        ],
    );
    let m = mark(&gate);
    expect_ok(
        &gate,
        "npm install scoped, read+write token (basic)",
        &[
            "npm-install",
            &url,
            &rw.username,
            &rw.secret,
            "@acme/tg-e2e-scoped",
            "2.0.0",
            "basic",
        ],
    );
    assert!(
        access_since(&gate, m).iter().any(|a| a.method == "GET"
            && a.path.ends_with(".tgz")
            && a.path.starts_with("/npm/acme/web/")
            && a.status == 200),
        "the scoped tarball was not fetched through the proxy:\n{}",
        access_tail(&gate, 10)
    );
    // Verdaccio saw the proxy's own identity, not the client's token.
    assert!(
        reg.verdaccio_log()
            .lines()
            .any(|l| l.contains("user: proxy") && l.contains(&format!("PUT /{name}"))),
        "Verdaccio did not log the publish as user `proxy`"
    );

    // Read-only: installs, cannot publish (403 on the PUT).
    let m = mark(&gate);
    expect_fail(
        &gate,
        "npm publish, read-only token",
        &[
            "npm-publish",
            &url,
            &ro.username,
            &ro.secret,
            &pk,
            name,
            "1.0.1",
        ],
    );
    assert_refused(
        &gate,
        m,
        "PUT",
        &format!("/npm/acme/web/{name}"),
        403,
        "npm publish with a read-only token",
    );
    file_absent(
        &storage.join(name).join(format!("{name}-1.0.1.tgz")),
        "npm publish with a read-only token",
    );
    expect_ok(
        &gate,
        "npm install, read-only token",
        &["npm-install", &url, &ro.username, &ro.secret, name, "1.0.0"],
    );

    // Write-only: publishes, cannot install (403 on the packument).
    expect_ok(
        &gate,
        "npm publish, write-only token",
        &[
            "npm-publish",
            &url,
            &wo.username,
            &wo.secret,
            &pk,
            name,
            "1.0.2",
        ],
    );
    file_exists(
        &storage.join(name).join(format!("{name}-1.0.2.tgz")),
        "npm publish with a write-only token",
    );
    let m = mark(&gate);
    expect_fail(
        &gate,
        "npm install, write-only token",
        &["npm-install", &url, &wo.username, &wo.secret, name, "1.0.2"],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        &format!("/npm/acme/web/{name}"),
        403,
        "npm install with a write-only token",
    );

    // Another project's token: refused (403, namespace).
    let m = mark(&gate);
    expect_fail(
        &gate,
        "npm install, token of project acme/api",
        &[
            "npm-install",
            &url,
            &other.username,
            &other.secret,
            name,
            "1.0.0",
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        &format!("/npm/acme/web/{name}"),
        403,
        "npm install with another project's token",
    );

    // A group token covers the project.
    expect_ok(
        &gate,
        "npm install, token of group acme",
        &[
            "npm-install",
            &url,
            &group.username,
            &group.secret,
            name,
            "1.0.0",
        ],
    );

    // Basic with a username that is not the token's: 401.
    let m = mark(&gate);
    expect_fail(
        &gate,
        "npm install, basic with a wrong username",
        &[
            "npm-install",
            &url,
            "someone-else",
            &rw.secret,
            name,
            "1.0.0",
            "basic",
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        &format!("/npm/acme/web/{name}"),
        401,
        "npm install with a wrong Basic username",
    );

    // Revoked: works, revoke, refused within the bound, and npm fails.
    expect_ok(
        &gate,
        "npm install, token about to be revoked",
        &["npm-install", &url, &rv.username, &rv.secret, name, "1.0.0"],
    );
    let bearer = format!("Bearer {}", rv.secret);
    let path = format!("/npm/acme/web/{name}");
    assert_revoked_within_bound(&gate, &rv, || {
        common::send(
            gate.port,
            "GET",
            &path,
            &[("Authorization", bearer.as_str())],
            b"",
        )
    });
    let m = mark(&gate);
    expect_fail(
        &gate,
        "npm install, revoked token",
        &["npm-install", &url, &rv.username, &rv.secret, name, "1.0.0"],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        &path,
        401,
        "npm install with a revoked token",
    );

    assert_no_secret_leaks(
        reg,
        &gate,
        &[&rw, &ro, &wo, &other, &group, &rv],
        &["someone-else"],
    );
}

// ------------------------------------------------------------------------------ PyPI

fn pypi_files(reg: &Registries, stem: &str, version: &str) -> Vec<String> {
    let dir = reg.dir.join("pypi/packages");
    let norm = |s: &str| s.to_lowercase().replace(['-', '.'], "_");
    let prefix = format!("{}_{}", norm(stem), norm(version));
    std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| norm(f).starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pypi_through_tokengate() {
    let reg = registries();
    let gate = start_gate(reg);
    let upload = format!("{}/pypi/acme/web/", gate.url());
    let index = format!("{}/pypi/acme/web/simple/", gate.url());
    let Cast {
        rw,
        ro,
        wo,
        other,
        group,
    } = Cast::issue(&gate);
    let name = "tg-e2e-pypi-demo";

    // Happy path: twine upload (sdist + wheel), then pip install from the rewritten index.
    expect_ok(
        &gate,
        "twine upload, read+write token",
        &[
            "twine-upload",
            &upload,
            &rw.username,
            &rw.secret,
            name,
            "1.0.0",
        ],
    );
    let files = pypi_files(reg, name, "1.0.0");
    assert!(
        files.len() >= 2,
        "pypiserver did not store the sdist and the wheel: {files:?}"
    );
    let m = mark(&gate);
    expect_ok(
        &gate,
        "pip install, read+write token",
        &[
            "pip-install",
            &index,
            &rw.username,
            &rw.secret,
            name,
            "1.0.0",
        ],
    );
    assert!(
        access_since(&gate, m).iter().any(|a| a.method == "GET" && a.path.starts_with("/pypi/acme/web/packages/") && a.status == 200),
        "pip did not download the file through the proxy prefix (simple-index hrefs not rewritten?):\n{}",
        access_tail(&gate, 10)
    );

    // pypiserver redirects a non-normalised project name to an absolute URL of its own
    // (without the route prefix): the proxy rewrites that Location to itself + prefix.
    let r = common::send(
        gate.port,
        "GET",
        "/pypi/acme/web/simple/TG.E2E_Pypi.Demo/",
        &[("Authorization", &rw.basic())],
        b"",
    );
    let want = format!("{}/pypi/acme/web/simple/{name}/", gate.url());
    assert!(
        (300..400).contains(&r.status) && r.header("location") == Some(want.as_str()),
        "redirect not rewritten to the proxy: {} Location {:?}, wanted {want}",
        r.status,
        r.header("location")
    );

    // A token that expires in a few seconds; it works now and is checked again at the end.
    let (expires, expires_at) = expiry_in(3);
    let exp = gate.token("project:acme/web", RO, &["--expires-at", &expires]);
    let simple = format!("/pypi/acme/web/simple/{name}/");
    let r = common::send(
        gate.port,
        "GET",
        &simple,
        &[("Authorization", &exp.basic())],
        b"",
    );
    assert_eq!(
        r.status,
        200,
        "the token expiring at {expires} does not work before its expiry: {}",
        r.text()
    );

    // Read-only: cannot upload (403 on the POST), installs.
    let m = mark(&gate);
    expect_fail(
        &gate,
        "twine upload, read-only token",
        &[
            "twine-upload",
            &upload,
            &ro.username,
            &ro.secret,
            name,
            "1.0.1",
        ],
    );
    assert_refused(
        &gate,
        m,
        "POST",
        "/pypi/acme/web",
        403,
        "twine upload with a read-only token",
    );
    assert!(
        pypi_files(reg, name, "1.0.1").is_empty(),
        "a read-only upload reached pypiserver"
    );
    expect_ok(
        &gate,
        "pip install, read-only token",
        &[
            "pip-install",
            &index,
            &ro.username,
            &ro.secret,
            name,
            "1.0.0",
        ],
    );

    // Write-only: uploads, cannot install (403 on the index).
    expect_ok(
        &gate,
        "twine upload, write-only token",
        &[
            "twine-upload",
            &upload,
            &wo.username,
            &wo.secret,
            name,
            "1.0.2",
        ],
    );
    assert!(
        !pypi_files(reg, name, "1.0.2").is_empty(),
        "the write-only upload did not reach pypiserver"
    );
    let m = mark(&gate);
    expect_fail(
        &gate,
        "pip install, write-only token",
        &[
            "pip-install",
            &index,
            &wo.username,
            &wo.secret,
            name,
            "1.0.2",
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/pypi/acme/web/simple/",
        403,
        "pip install with a write-only token",
    );

    // Another project's token: 403. A group token: installs.
    let m = mark(&gate);
    expect_fail(
        &gate,
        "pip install, token of project acme/api",
        &[
            "pip-install",
            &index,
            &other.username,
            &other.secret,
            name,
            "1.0.0",
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/pypi/acme/web/simple/",
        403,
        "pip install with another project's token",
    );
    expect_ok(
        &gate,
        "pip install, token of group acme",
        &[
            "pip-install",
            &index,
            &group.username,
            &group.secret,
            name,
            "1.0.0",
        ],
    );

    // A Basic username that is not the token's: 401.
    let m = mark(&gate);
    expect_fail(
        &gate,
        "pip install, wrong username",
        &[
            "pip-install",
            &index,
            "someone-else",
            &rw.secret,
            name,
            "1.0.0",
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/pypi/acme/web/simple/",
        401,
        "pip install with a wrong Basic username",
    );

    // The expired token: 401, for pip too (the record is cached; expiry is checked anyway).
    sleep_until(expires_at);
    let r = common::send(
        gate.port,
        "GET",
        &simple,
        &[("Authorization", &exp.basic())],
        b"",
    );
    assert_eq!(
        r.status,
        401,
        "token expired at {expires} still answered {}: {}",
        r.status,
        r.text()
    );
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.contains("Basic")),
        "401 without a Basic challenge: {:?}",
        r.headers
    );
    let m = mark(&gate);
    expect_fail(
        &gate,
        "pip install, expired token",
        &[
            "pip-install",
            &index,
            &exp.username,
            &exp.secret,
            name,
            "1.0.0",
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/pypi/acme/web/simple/",
        401,
        "pip install with an expired token",
    );

    assert_no_secret_leaks(
        reg,
        &gate,
        &[&rw, &ro, &wo, &other, &group, &exp],
        &["someone-else"],
    );
}

// ------------------------------------------------------------------------------ Maven

#[test]
fn maven_through_tokengate() {
    let reg = registries();
    let gate = start_gate(reg);
    let url = format!("{}/maven/acme/web", gate.url());
    let Cast {
        rw,
        ro,
        wo,
        other,
        group,
    } = Cast::issue(&gate);
    let (g, a) = ("com.acme.tge2e", "mvn-demo");
    let stored = |v: &str| {
        reg.dir
            .join(format!("dav/maven/com/acme/tge2e/{a}/{v}/{a}-{v}.jar"))
    };

    // Happy path: deploy-file (preemptive Basic PUTs) and dependency:get (challenge, then Basic).
    expect_ok(
        &gate,
        "mvn deploy, read+write token",
        &["mvn-deploy", &url, &rw.username, &rw.secret, g, a, "1.0.0"],
    );
    file_exists(&stored("1.0.0"), "mvn deploy");
    file_exists(
        &reg.dir
            .join(format!("dav/maven/com/acme/tge2e/{a}/maven-metadata.xml")),
        "mvn deploy",
    );
    expect_ok(
        &gate,
        "mvn get, read+write token",
        &["mvn-get", &url, &rw.username, &rw.secret, g, a, "1.0.0"],
    );

    // Read-only: cannot deploy (403 on the PUT).
    let m = mark(&gate);
    expect_fail(
        &gate,
        "mvn deploy, read-only token",
        &["mvn-deploy", &url, &ro.username, &ro.secret, g, a, "1.0.1"],
    );
    assert_refused(
        &gate,
        m,
        "PUT",
        "/maven/acme/web/com/acme/tge2e/",
        403,
        "mvn deploy with a read-only token",
    );
    file_absent(&stored("1.0.1"), "mvn deploy with a read-only token");

    // Write-only: deploys (maven-metadata.xml reads are allowed to writers by design),
    // but cannot fetch the artifact.
    expect_ok(
        &gate,
        "mvn deploy, write-only token",
        &["mvn-deploy", &url, &wo.username, &wo.secret, g, a, "1.0.2"],
    );
    file_exists(&stored("1.0.2"), "mvn deploy with a write-only token");
    let m = mark(&gate);
    expect_fail(
        &gate,
        "mvn get, write-only token",
        &["mvn-get", &url, &wo.username, &wo.secret, g, a, "1.0.2"],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/1.0.2/mvn-demo-1.0.2",
        403,
        "mvn get with a write-only token",
    );

    // Another project's token: 403. A (read-only) group token: fetches.
    let m = mark(&gate);
    expect_fail(
        &gate,
        "mvn get, token of project acme/api",
        &[
            "mvn-get",
            &url,
            &other.username,
            &other.secret,
            g,
            a,
            "1.0.0",
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/1.0.0/mvn-demo-1.0.0",
        403,
        "mvn get with another project's token",
    );
    expect_ok(
        &gate,
        "mvn get, read-only token of group acme",
        &[
            "mvn-get",
            &url,
            &group.username,
            &group.secret,
            g,
            a,
            "1.0.0",
        ],
    );

    // A Basic username that is not the token's: 401.
    let m = mark(&gate);
    expect_fail(
        &gate,
        "mvn get, wrong username",
        &["mvn-get", &url, "someone-else", &rw.secret, g, a, "1.0.0"],
    );
    let with_credentials: Vec<Access> = access_since(&gate, m)
        .into_iter()
        .filter(|e| e.path.contains("/1.0.0/mvn-demo-1.0.0"))
        .collect();
    assert!(
        with_credentials.len() >= 2 && with_credentials.iter().all(|e| e.status == 401),
        "mvn get with a wrong username: expected the challenge and the Basic retry, both 401:\n{with_credentials:#?}"
    );

    assert_no_secret_leaks(
        reg,
        &gate,
        &[&rw, &ro, &wo, &other, &group],
        &["someone-else"],
    );
}

// ------------------------------------------------------------------------------ generic

#[test]
fn generic_through_tokengate() {
    let reg = registries();
    let gate = start_gate(reg);
    let work = tempfile::tempdir().unwrap();
    let w = |name: &str| work.path().join(name).to_str().unwrap().to_string();
    let blob: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(w("blob.bin"), &blob).unwrap();
    let api = |ns: &str, file: &str| {
        format!(
            "{}/api/v4/projects/{ns}/packages/generic/tg-e2e/1.0/{file}",
            gate.url()
        )
    };
    let fixed = |file: &str| format!("{}/generic/acme/web/tg-e2e/1.0/{file}", gate.url());
    // The api route forwards the namespace in place of its prefix: each project
    // has its own directory; the fixed route's prefix is stripped whole.
    let stored_in = |namespace: &str, file: &str| {
        reg.dir
            .join(format!("dav/generic/{namespace}tg-e2e/1.0/{file}"))
    };
    let stored = |file: &str| stored_in("acme/web/", file);
    let (expires, expires_at) = expiry_in(3);
    let exp = gate.token("project:acme/web", RO, &["--expires-at", &expires]);
    let Cast {
        rw,
        ro,
        wo,
        other,
        group,
    } = Cast::issue(&gate);
    let rv = gate.token("project:acme/web", RW, &[]);
    let web = "acme%2Fweb";
    let api_ns = "acme%2Fapi";
    let blob_path = w("blob.bin");
    let same = |out: &str, what: &str| {
        assert!(
            std::fs::read(out).unwrap() == blob,
            "{what}: downloaded bytes differ from the upload"
        );
    };

    // The expiring token works before its expiry (nginx answers 404 for a missing file:
    // the request was allowed and forwarded).
    let probe = "/generic/acme/web/tg-e2e/1.0/nothing-here";
    let r = common::send(
        gate.port,
        "GET",
        probe,
        &[("Deploy-Token", exp.secret.as_str())],
        b"",
    );
    assert_eq!(
        r.status,
        404,
        "the token expiring at {expires} does not work before its expiry: {} {}",
        r.status,
        r.text()
    );

    // Happy path, both routes, both credential styles; bytes identical; nginx stored them.
    expect_ok(
        &gate,
        "curl PUT (Deploy-Token), read+write token, api route",
        &["generic-put", &api(web, "rw.bin"), &rw.secret, &blob_path],
    );
    assert!(
        std::fs::read(stored("rw.bin")).unwrap() == blob,
        "nginx stored different bytes"
    );
    expect_ok(
        &gate,
        "curl GET (Basic), read+write token, api route",
        &[
            "generic-get",
            &api(web, "rw.bin"),
            &rw.secret,
            &w("rw.out"),
            &rw.username,
        ],
    );
    same(&w("rw.out"), "api route");
    expect_ok(
        &gate,
        "curl PUT (Basic), read+write token, fixed route",
        &[
            "generic-put",
            &fixed("fixed.bin"),
            &rw.secret,
            &blob_path,
            &rw.username,
        ],
    );
    file_exists(&stored_in("", "fixed.bin"), "curl PUT on the fixed route");
    expect_ok(
        &gate,
        "curl GET (Deploy-Token), read+write token, fixed route",
        &[
            "generic-get",
            &fixed("fixed.bin"),
            &rw.secret,
            &w("fixed.out"),
        ],
    );
    same(&w("fixed.out"), "fixed route");

    // Read-only: cannot upload (403), downloads.
    let m = mark(&gate);
    expect_fail(
        &gate,
        "curl PUT, read-only token",
        &["generic-put", &api(web, "ro.bin"), &ro.secret, &blob_path],
    );
    assert_refused(
        &gate,
        m,
        "PUT",
        "/tg-e2e/1.0/ro.bin",
        403,
        "curl PUT with a read-only token",
    );
    file_absent(&stored("ro.bin"), "curl PUT with a read-only token");
    expect_ok(
        &gate,
        "curl GET, read-only token",
        &["generic-get", &api(web, "rw.bin"), &ro.secret, &w("ro.out")],
    );
    same(&w("ro.out"), "read-only download");

    // Write-only: uploads, cannot download (403).
    expect_ok(
        &gate,
        "curl PUT, write-only token",
        &["generic-put", &api(web, "wo.bin"), &wo.secret, &blob_path],
    );
    file_exists(&stored("wo.bin"), "curl PUT with a write-only token");
    let m = mark(&gate);
    expect_fail(
        &gate,
        "curl GET, write-only token",
        &["generic-get", &api(web, "wo.bin"), &wo.secret, &w("wo.out")],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/tg-e2e/1.0/wo.bin",
        403,
        "curl GET with a write-only token",
    );

    // Another project's token: refused on acme/web (both routes), allowed on its own
    // namespace through the {namespace} placeholder.
    let m = mark(&gate);
    expect_fail(
        &gate,
        "curl GET, token of project acme/api, api route acme%2Fweb",
        &[
            "generic-get",
            &api(web, "rw.bin"),
            &other.secret,
            &w("other.out"),
        ],
    );
    expect_fail(
        &gate,
        "curl GET, token of project acme/api, fixed route",
        &[
            "generic-get",
            &fixed("fixed.bin"),
            &other.secret,
            &w("other.out"),
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/tg-e2e/1.0/",
        403,
        "curl GET with another project's token",
    );
    expect_ok(
        &gate,
        "curl PUT, token of project acme/api on acme%2Fapi",
        &[
            "generic-put",
            &api(api_ns, "api.bin"),
            &other.secret,
            &blob_path,
        ],
    );
    file_exists(
        &stored_in("acme/api/", "api.bin"),
        "curl PUT on the project's own namespace",
    );
    file_absent(
        &stored("api.bin"),
        "another project's upload in acme/web's directory",
    );
    // Nor does its own namespace's URL reach acme/web's files upstream.
    expect_fail(
        &gate,
        "curl GET, token of project acme/api, acme/web's file on acme%2Fapi",
        &[
            "generic-get",
            &api(api_ns, "rw.bin"),
            &other.secret,
            &w("crossed.out"),
        ],
    );

    // A group token covers both projects.
    expect_ok(
        &gate,
        "curl GET, token of group acme, acme%2Fweb",
        &[
            "generic-get",
            &api(web, "rw.bin"),
            &group.secret,
            &w("group.out"),
        ],
    );
    same(&w("group.out"), "group token download");
    expect_ok(
        &gate,
        "curl GET, token of group acme, acme%2Fapi",
        &[
            "generic-get",
            &api(api_ns, "api.bin"),
            &group.secret,
            &w("group2.out"),
            &group.username,
        ],
    );

    // A Basic username that is not the token's: 401.
    let m = mark(&gate);
    expect_fail(
        &gate,
        "curl GET, wrong Basic username",
        &[
            "generic-get",
            &api(web, "rw.bin"),
            &rw.secret,
            &w("wrong.out"),
            "someone-else",
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/tg-e2e/1.0/rw.bin",
        401,
        "curl -u someone-else:secret",
    );

    // Revoked: refused within the bound, then curl fails with 401.
    let probe_path = "/generic/acme/web/tg-e2e/1.0/fixed.bin";
    assert_revoked_within_bound(&gate, &rv, || {
        common::send(
            gate.port,
            "GET",
            probe_path,
            &[("Deploy-Token", rv.secret.as_str())],
            b"",
        )
    });
    let m = mark(&gate);
    expect_fail(
        &gate,
        "curl GET, revoked token",
        &["generic-get", &fixed("fixed.bin"), &rv.secret, &w("rv.out")],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/tg-e2e/1.0/fixed.bin",
        401,
        "curl GET with a revoked token",
    );

    // Expired: 401.
    sleep_until(expires_at);
    let m = mark(&gate);
    expect_fail(
        &gate,
        "curl GET, expired token",
        &[
            "generic-get",
            &fixed("fixed.bin"),
            &exp.secret,
            &w("exp.out"),
        ],
    );
    assert_refused(
        &gate,
        m,
        "GET",
        "/tg-e2e/1.0/fixed.bin",
        401,
        "curl GET with an expired token",
    );

    assert_no_secret_leaks(
        reg,
        &gate,
        &[&rw, &ro, &wo, &other, &group, &rv, &exp],
        &["someone-else"],
    );
}

// ------------------------------------------------------------------------------ no leaks

/// One run of every client (npm Bearer and Basic, twine and pip, mvn with the Deploy-Token
/// header, curl with Deploy-Token and Basic), plus refused attempts (wrong username,
/// revoked token); then no form of any secret may appear in the proxy's log or in any
/// registry's log. nginx logs the VALUES of Authorization and Deploy-Token (registries.sh),
/// so its log also proves what was forwarded: the proxy's own credentials, no Deploy-Token.
#[test]
fn secrets_never_logged_nor_forwarded() {
    let reg = registries();
    let gate = start_gate(reg);
    let work = tempfile::tempdir().unwrap();
    let wd = work.path().to_str().unwrap().to_string();
    let rw = gate.token("project:acme/web", RW, &[]);
    let group = gate.token("group:acme", RW, &[]);
    let rv = gate.token("project:acme/web", RW, &[]);
    let g = gate.url();

    let npm = format!("{g}/npm/acme/web");
    let pkg = "tg-e2e-leak-npm";
    expect_ok(
        &gate,
        "npm publish (bearer)",
        &[
            "npm-publish",
            &npm,
            &rw.username,
            &rw.secret,
            &wd,
            pkg,
            "1.0.0",
        ],
    );
    expect_ok(
        &gate,
        "npm install (basic)",
        &[
            "npm-install",
            &npm,
            &group.username,
            &group.secret,
            pkg,
            "1.0.0",
            "basic",
        ],
    );
    expect_fail(
        &gate,
        "npm install, wrong username",
        &[
            "npm-install",
            &npm,
            "someone-else",
            &rw.secret,
            pkg,
            "1.0.0",
            "basic",
        ],
    );

    let pypi = format!("{g}/pypi/acme/web/");
    expect_ok(
        &gate,
        "twine upload",
        &[
            "twine-upload",
            &pypi,
            &rw.username,
            &rw.secret,
            "tg-e2e-leak-pypi",
            "1.0.0",
        ],
    );
    expect_ok(
        &gate,
        "pip install",
        &[
            "pip-install",
            &format!("{pypi}simple/"),
            &group.username,
            &group.secret,
            "tg-e2e-leak-pypi",
            "1.0.0",
        ],
    );

    let mvn = format!("{g}/maven/acme/web");
    expect_ok(
        &gate,
        "mvn deploy (Deploy-Token header)",
        &[
            "mvn-deploy",
            &mvn,
            "unused",
            &rw.secret,
            "com.acme.tge2eleak",
            "leak",
            "1.0.0",
            "header",
        ],
    );
    expect_ok(
        &gate,
        "mvn get (Deploy-Token header)",
        &[
            "mvn-get",
            &mvn,
            "unused",
            &group.secret,
            "com.acme.tge2eleak",
            "leak",
            "1.0.0",
            "header",
        ],
    );

    let file = format!("{wd}/blob.bin");
    std::fs::write(&file, b"leak check\n").unwrap();
    let url = format!("{g}/api/v4/projects/acme%2Fweb/packages/generic/tg-e2e-leak/1.0/blob.bin");
    expect_ok(
        &gate,
        "curl PUT (Deploy-Token)",
        &["generic-put", &url, &rw.secret, &file],
    );
    expect_ok(
        &gate,
        "curl GET (Basic)",
        &[
            "generic-get",
            &url,
            &group.secret,
            &format!("{wd}/out"),
            &group.username,
        ],
    );
    expect_fail(
        &gate,
        "curl GET, wrong username",
        &[
            "generic-get",
            &url,
            &rw.secret,
            &format!("{wd}/out2"),
            "someone-else",
        ],
    );
    expect_ok(
        &gate,
        "curl GET, token about to be revoked",
        &["generic-get", &url, &rv.secret, &format!("{wd}/out3")],
    );
    gate.revoke(rv.id);
    std::thread::sleep(REVOCATION_BOUND);
    expect_fail(
        &gate,
        "curl GET, revoked token",
        &["generic-get", &url, &rv.secret, &format!("{wd}/out4")],
    );

    assert_no_secret_leaks(reg, &gate, &[&rw, &group, &rv], &["someone-else", "unused"]);

    // The proxy's own upstream credentials are not logged by the proxy either.
    let upstream_secrets: Vec<(String, String)> = [
        (
            "NPM_UPSTREAM_TOKEN",
            reg.var("NPM_UPSTREAM_TOKEN").to_string(),
        ),
        ("PYPI_PASSWORD", reg.var("PYPI_PASSWORD").to_string()),
        ("DAV_PASSWORD", reg.var("DAV_PASSWORD").to_string()),
        (
            "base64(proxy:PYPI_PASSWORD)",
            b64(&format!("proxy:{}", reg.var("PYPI_PASSWORD"))),
        ),
        (
            "base64(proxy:DAV_PASSWORD)",
            b64(&format!("proxy:{}", reg.var("DAV_PASSWORD"))),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_no_secret_in("the proxy's log", &gate.logs(), &upstream_secrets);

    // What nginx received for this test's requests: the proxy's Basic credentials and no
    // client credential header.
    let proxy_basic = format!(
        "authorization=\"Basic {}\"",
        b64(&format!("proxy:{}", reg.var("DAV_PASSWORD")))
    );
    let nginx = reg.nginx_access_log();
    let ours: Vec<&str> = nginx
        .lines()
        .filter(|l| l.contains("/tg-e2e-leak/") || l.contains("/tge2eleak/"))
        .collect();
    assert!(
        ours.len() >= 4,
        "nginx logged too few of this test's requests:\n{}",
        ours.join("\n")
    );
    for line in &ours {
        assert!(
            line.contains(&proxy_basic),
            "nginx got other credentials than the proxy's own: {line}"
        );
        for header in ["deploy_token", "private_token", "job_token"] {
            assert!(
                line.contains(&format!("{header}=\"-\"")),
                "a client credential header reached nginx ({header}): {line}"
            );
        }
    }
    // Verdaccio authenticated the publish as the proxy's own user.
    assert!(
        reg.verdaccio_log()
            .lines()
            .any(|l| l.contains("user: proxy") && l.contains(&format!("PUT /{pkg}"))),
        "Verdaccio did not log the publish of {pkg} as user `proxy`"
    );
}
