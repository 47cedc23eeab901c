//! Conan end to end: the Conan 2 client (`conan remote login`, `upload`,
//! `install`, `list`, `remove`) through tokengate to a real `conan_server`
//! that lets only its own user in, so everything forwarded must carry the
//! proxy's upstream login, never the client's session.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, terminate, wait_for_port, Gate, Setup, Token};
use crate::{e2e_home, Cast, E2E_DIR, REVOCATION_BOUND};

/// The upstream Conan server's own user.
const UPSTREAM_USER: &str = "proxy";
const UPSTREAM_PASSWORD: &str = "upstream-secret";

/// Which Conan: the client and server of one major version, each in a venv of
/// its own (Conan 1 speaks the v1 API with pre-signed file URLs, Conan 2 the v2 API).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conan {
    V1,
    V2,
}

impl Conan {
    fn venv(self) -> PathBuf {
        e2e_home().join(match self {
            Conan::V1 => "conan1",
            Conan::V2 => "conan",
        })
    }

    /// A package reference as this version writes it.
    fn reference(self, version: &str) -> String {
        match self {
            Conan::V1 => format!("hello/{version}@demo/testing"),
            Conan::V2 => format!("hello/{version}"),
        }
    }
}

pub(crate) struct ConanServer {
    port: u16,
    child: Child,
}

impl ConanServer {
    fn start(conan: Conan, dir: &Path) -> ConanServer {
        let port = free_port();
        let python = conan.venv().join("bin/python");
        let log = std::fs::File::create(dir.join("conan_server.log")).unwrap();
        let child = Command::new(&python)
            .arg(format!("{E2E_DIR}/conan_server.py"))
            .arg(dir.join("server"))
            .arg(port.to_string())
            .args([UPSTREAM_USER, UPSTREAM_PASSWORD])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} (run tests/e2e/install.sh): {e}", python.display()));
        wait_for_port(port, Duration::from_secs(20));
        ConanServer { port, child }
    }
}

impl Drop for ConanServer {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// One Conan client home, logged in (or not) to the remote `tg`.
struct Client {
    conan: Conan,
    home: PathBuf,
}

impl Client {
    fn new(conan: Conan, work: &Path, name: &str, remote: &str) -> Client {
        let client = Client {
            conan,
            home: work.join(name),
        };
        std::fs::create_dir_all(&client.home).unwrap();
        let setup: &[&[&str]] = match conan {
            Conan::V1 => &[&["remote", "clean"]],
            Conan::V2 => &[&["profile", "detect"], &["remote", "remove", "conancenter"]],
        };
        for args in setup
            .iter()
            .copied()
            .chain([&["remote", "add", "tg", remote][..]])
        {
            let (ok, out) = client.run(args);
            assert!(ok, "conan {args:?}: {out}");
        }
        client
    }

    /// A client logged in with `token` (the login must succeed).
    fn logged_in(
        conan: Conan,
        work: &Path,
        name: &str,
        remote: &str,
        token: &Token,
        gate: &Gate,
    ) -> Client {
        let client = Client::new(conan, work, name, remote);
        let (ok, out) = client.login(token);
        assert!(ok, "conan login ({name}): {out}\n{}", gate.logs());
        client
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let home_var = match self.conan {
            Conan::V1 => "CONAN_USER_HOME",
            Conan::V2 => "CONAN_HOME",
        };
        let out = Command::new("timeout")
            .args(["-k", "5", "120"])
            .arg(self.conan.venv().join("bin/conan"))
            .args(args)
            .env(home_var, &self.home)
            .env("NO_COLOR", "1")
            .env("CONAN_NON_INTERACTIVE", "1")
            .current_dir(&self.home)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        crate::common::outcome(&out)
    }

    fn login(&self, token: &Token) -> (bool, String) {
        let (user, secret) = (token.username.as_str(), token.secret.as_str());
        match self.conan {
            Conan::V1 => self.run(&["user", "-p", secret, "-r", "tg", user]),
            Conan::V2 => self.run(&["remote", "login", "tg", user, "-p", secret]),
        }
    }

    /// Creates `hello/VERSION` in the local cache (a recipe that needs no compiler).
    fn create(&self, version: &str) {
        let dir = self.home.join(format!("hello-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        let recipe = match self.conan {
            Conan::V1 => format!(
                r#"from conans import ConanFile, tools

class Hello(ConanFile):
    name = "hello"
    version = "{version}"

    def package(self):
        tools.save("include/hello.h", "// hello {version}\n")
        self.copy("*.h")
"#
            ),
            Conan::V2 => format!(
                r#"import os
from conan import ConanFile
from conan.tools.files import save

class Hello(ConanFile):
    name = "hello"
    version = "{version}"

    def package(self):
        save(self, os.path.join(self.package_folder, "include", "hello.h"), "// hello {version}\n")
"#
            ),
        };
        std::fs::write(dir.join("conanfile.py"), recipe).unwrap();
        let dir = dir.to_str().unwrap();
        let (ok, out) = match self.conan {
            Conan::V1 => self.run(&["create", dir, "demo/testing"]),
            Conan::V2 => self.run(&["create", dir]),
        };
        assert!(ok, "conan create: {out}");
    }

    fn upload(&self, version: &str) -> (bool, String) {
        let reference = self.conan.reference(version);
        match self.conan {
            Conan::V1 => self.run(&["upload", &reference, "-r", "tg", "--all", "--confirm"]),
            Conan::V2 => self.run(&["upload", &reference, "-r", "tg", "-c"]),
        }
    }

    /// Creates, uploads and installs `hello/VERSION` again; each step must succeed.
    fn upload_then_install(&self, version: &str, gate: &Gate) {
        self.create(version);
        let (ok, out) = self.upload(version);
        assert!(ok, "upload: {out}\n{}", gate.logs());
        let (ok, out) = self.install(version);
        assert!(ok, "install: {out}");
    }

    /// Installs `hello/VERSION` from the remote into an empty cache.
    fn install(&self, version: &str) -> (bool, String) {
        let reference = self.conan.reference(version);
        let (ok, out) = match self.conan {
            Conan::V1 => self.run(&["remove", "-f", "hello/*"]),
            Conan::V2 => self.run(&["remove", "hello/*", "-c"]),
        };
        assert!(ok, "conan remove (local): {out}");
        match self.conan {
            Conan::V1 => self.run(&["install", &reference, "-r", "tg"]),
            Conan::V2 => self.run(&["install", "--requires", &reference, "-r", "tg"]),
        }
    }
}

pub(crate) fn start(conan: Conan, work: &Path) -> (ConanServer, Gate) {
    let server = ConanServer::start(conan, work);
    let body = format!(
        r#"
[upstream.conan]
url = "http://127.0.0.1:{}"
basic = {{ username = "{UPSTREAM_USER}", password_env = "TG_CONAN_UPSTREAM_PASSWORD" }}

[[route]]
name = "conan"
format = "conan"
path = "/conan/acme/web"
namespace = "acme/web"
upstream = "conan"
strip_prefix = true
"#,
        server.port
    );
    let gate = Gate::launch(Setup {
        body: &body,
        env: &[("TG_CONAN_UPSTREAM_PASSWORD", UPSTREAM_PASSWORD)],
        ..Setup::default()
    });
    (server, gate)
}

/// The route's path for the project acme/web.
const ROUTE: &str = "/conan/acme/web";

fn remote(gate: &Gate, project: &str) -> String {
    format!("{}/conan/{project}", gate.url())
}

#[test]
fn conan_upload_and_install_with_each_kind_of_token() {
    crate::require_prerequisites();
    let work = tempfile::tempdir().unwrap();
    let (_server, gate) = start(Conan::V2, work.path());
    let cast = Cast::issue(&gate);
    let web = remote(&gate, "acme/web");
    let client = |name: &str, token: &Token| {
        Client::logged_in(Conan::V2, work.path(), name, &web, token, &gate)
    };

    // Read+write: upload, then install from an empty cache.
    let rw = client("rw", &cast.rw);
    rw.upload_then_install("1.0", &gate);

    // Write-only: uploads (its revision checks are allowed), cannot download.
    let wo = client("wo", &cast.wo);
    wo.create("1.1");
    let (ok, out) = wo.upload("1.1");
    assert!(ok, "upload with a write-only token: {out}\n{}", gate.logs());
    let (ok, out) = wo.install("1.0");
    assert!(!ok, "a write-only token must not download: {out}");
    assert!(
        out.contains("403") || out.contains("Permission denied"),
        "{out}"
    );

    // Read-only: installs what the others uploaded, cannot upload or remove.
    let ro = client("ro", &cast.ro);
    let (ok, out) = ro.install("1.1");
    assert!(ok, "install with a read-only token: {out}");
    ro.create("1.2");
    let (ok, out) = ro.upload("1.2");
    assert!(!ok, "a read-only token must not upload: {out}");
    let (ok, out) = ro.run(&["remove", "hello/1.0", "-r", "tg", "-c"]);
    assert!(!ok, "a read-only token must not remove: {out}");
    let (ok, out) = ro.run(&["list", "hello/*", "-r", "tg"]);
    assert!(
        ok && out.contains("hello/1.0") && out.contains("hello/1.1"),
        "{out}"
    );
    assert!(!out.contains("hello/1.2"), "{out}");

    // A group token covers the project.
    let group = client("group", &cast.group);
    let (ok, out) = group.install("1.0");
    assert!(ok, "install with the group's token: {out}");

    // Another project's token cannot even log in here; a wrong username neither.
    let other = Client::new(Conan::V2, work.path(), "other", &web);
    let (ok, out) = other.login(&cast.other);
    assert!(!ok, "another project's token logged in: {out}");
    let wrong_user = Token {
        username: "someone-else".into(),
        ..cast.rw.clone()
    };
    let (ok, out) = other.login(&wrong_user);
    assert!(!ok, "a wrong username logged in: {out}");

    // Removal needs write.
    let (ok, out) = rw.run(&["remove", "hello/1.1", "-r", "tg", "-c"]);
    assert!(ok, "remove with a read+write token: {out}");
    let (ok, out) = ro.run(&["list", "hello/*", "-r", "tg"]);
    assert!(ok && !out.contains("hello/1.1"), "{out}");

    let logs = gate.logs();
    assert!(
        !logs.contains(&cast.rw.secret) && !logs.contains(UPSTREAM_PASSWORD),
        "a secret reached the log"
    );
}

#[test]
fn a_revoked_token_s_conan_session_ends_within_the_bound() {
    crate::require_prerequisites();
    let work = tempfile::tempdir().unwrap();
    let (_server, gate) = start(Conan::V2, work.path());
    let cast = Cast::issue(&gate);
    let rw = Client::new(Conan::V2, work.path(), "rw", &remote(&gate, "acme/web"));
    let (ok, out) = rw.login(&cast.rw);
    assert!(ok, "{out}");
    rw.create("2.0");
    let (ok, out) = rw.upload("2.0");
    assert!(ok, "{out}");

    // A session JWT as the client holds one, replayed until it stops working.
    let jwt = login_by_hand(&gate, &cast.rw, "v2");
    let path = format!("{ROUTE}/v2/conans/hello/2.0/_/_/latest");
    let bearer = format!("Bearer {jwt}");
    let status =
        || crate::common::send(gate.port, "GET", &path, &[("Authorization", &bearer)], b"").status;
    assert_eq!(status(), 200);
    gate.revoke(cast.rw.id);
    let started = Instant::now();
    while status() != 401 {
        assert!(
            started.elapsed() < REVOCATION_BOUND,
            "the revoked token's session still works"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "Conan session of a revoked token refused after {:?}",
        started.elapsed()
    );
    let (ok, out) = rw.install("2.0");
    assert!(!ok, "the client's session outlived the revocation: {out}");
    assert!(out.contains("needs authentication"), "{out}");
}

/// `GET …/{api}/users/authenticate` with Basic, as `conan remote login` sends it.
fn login_by_hand(gate: &Gate, token: &Token, api: &str) -> String {
    let r = crate::common::send(
        gate.port,
        "GET",
        &format!("{ROUTE}/{api}/users/authenticate"),
        &[("Authorization", &token.basic())],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[test]
fn conan_1_uploads_and_installs_through_granted_file_urls() {
    crate::require_prerequisites();
    let work = tempfile::tempdir().unwrap();
    let (_server, gate) = start(Conan::V1, work.path());
    let cast = Cast::issue(&gate);
    let web = remote(&gate, "acme/web");
    let client = |name: &str, token: &Token| {
        Client::logged_in(Conan::V1, work.path(), name, &web, token, &gate)
    };
    // Conan 1 uploads and downloads files by pre-signed URLs, sent without
    // credentials: they go through on tokengate's grants.
    let rw = client("rw", &cast.rw);
    rw.upload_then_install("1.0", &gate);
    let ro = client("ro", &cast.ro);
    let (ok, out) = ro.install("1.0");
    assert!(ok, "install with a read-only token: {out}");
    ro.create("1.1");
    let (ok, out) = ro.upload("1.1");
    assert!(!ok, "a read-only token must not upload: {out}");

    // The grants, by hand.
    let send = crate::common::send;
    let jwt = login_by_hand(&gate, &cast.ro, "v1");
    let bearer = format!("Bearer {jwt}");
    let r = send(
        gate.port,
        "GET",
        &format!("{ROUTE}/v1/conans/hello/1.0/demo/testing/download_urls"),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let urls: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let manifest = urls["conanmanifest.txt"].as_str().unwrap();
    let target = manifest
        .strip_prefix(&gate.url())
        .unwrap_or_else(|| panic!("not a URL of the proxy: {manifest}"));
    assert!(
        target.contains("signature=") && target.contains("tokengate_grant="),
        "{target}"
    );
    let get = |target: &str| send(gate.port, "GET", target, &[], b"").status;
    assert_eq!(get(target), 200);
    // Without the grant, for another file, or for another access: refused.
    let (path, query) = target.split_once('?').unwrap();
    let upstream_signature: String = query
        .split('&')
        .filter(|p| !p.starts_with("tokengate_grant="))
        .collect::<Vec<_>>()
        .join("&");
    assert_eq!(get(&format!("{path}?{upstream_signature}")), 401);
    let elsewhere = target.replace("conanmanifest.txt", "conan_sources.tgz");
    assert_eq!(get(&elsewhere), 403);
    let put = send(gate.port, "PUT", target, &[], b"overwritten");
    assert_eq!(put.status, 403);
    // Revoked: the URLs stop within the bound, long before the upstream's signature expires.
    gate.revoke(cast.ro.id);
    let started = Instant::now();
    while get(target) != 401 {
        assert!(
            started.elapsed() < REVOCATION_BOUND,
            "a revoked token's URL still works"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
