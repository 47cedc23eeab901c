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

struct ConanServer {
    port: u16,
    child: Child,
}

impl ConanServer {
    fn start(dir: &Path) -> ConanServer {
        let port = free_port();
        let python = conan_venv().join("bin/python");
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

fn conan_venv() -> PathBuf {
    e2e_home().join("conan")
}

/// One Conan client home, logged in (or not) to the remote `tg`.
struct Client {
    home: PathBuf,
}

impl Client {
    fn new(work: &Path, name: &str, remote: &str) -> Client {
        let client = Client {
            home: work.join(name),
        };
        std::fs::create_dir_all(&client.home).unwrap();
        for args in [
            &["profile", "detect"][..],
            &["remote", "remove", "conancenter"],
            &["remote", "add", "tg", remote],
        ] {
            let (ok, out) = client.run(args);
            assert!(ok, "conan {args:?}: {out}");
        }
        client
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("timeout")
            .args(["-k", "5", "120"])
            .arg(conan_venv().join("bin/conan"))
            .args(args)
            .env("CONAN_HOME", &self.home)
            .env("NO_COLOR", "1")
            .current_dir(&self.home)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn login(&self, token: &Token) -> (bool, String) {
        self.run(&[
            "remote",
            "login",
            "tg",
            &token.username,
            "-p",
            &token.secret,
        ])
    }

    /// Creates `hello/VERSION` in the local cache (a recipe that needs no compiler).
    fn create(&self, version: &str) {
        let dir = self.home.join(format!("hello-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("conanfile.py"),
            format!(
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
        )
        .unwrap();
        let (ok, out) = self.run(&["create", dir.to_str().unwrap()]);
        assert!(ok, "conan create: {out}");
    }

    fn upload(&self, version: &str) -> (bool, String) {
        self.run(&["upload", &format!("hello/{version}"), "-r", "tg", "-c"])
    }

    /// Installs `hello/VERSION` from the remote into an empty cache.
    fn install(&self, version: &str) -> (bool, String) {
        let (ok, out) = self.run(&["remove", "hello/*", "-c"]);
        assert!(ok, "conan remove (local): {out}");
        self.run(&[
            "install",
            "--requires",
            &format!("hello/{version}"),
            "-r",
            "tg",
        ])
    }
}

fn start(work: &Path) -> (ConanServer, Gate) {
    let server = ConanServer::start(work);
    let body = format!(
        r#"
[upstream.conan]
url = "http://127.0.0.1:{}"
basic = {{ username = "{UPSTREAM_USER}", password_env = "TG_CONAN_UPSTREAM_PASSWORD" }}

[[route]]
name = "conan"
format = "conan"
path = "/api/v4/projects/{{namespace}}/packages/conan"
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

fn remote(gate: &Gate, project: &str) -> String {
    format!(
        "{}/api/v4/projects/{}/packages/conan",
        gate.url(),
        project.replace('/', "%2F")
    )
}

#[test]
fn conan_upload_and_install_with_each_kind_of_token() {
    crate::require_prerequisites();
    let work = tempfile::tempdir().unwrap();
    let (_server, gate) = start(work.path());
    let cast = Cast::issue(&gate);
    let web = remote(&gate, "acme/web");
    let client = |name: &str, token: &Token| {
        let c = Client::new(work.path(), name, &web);
        let (ok, out) = c.login(token);
        assert!(ok, "conan remote login ({name}): {out}\n{}", gate.logs());
        c
    };

    // Read+write: upload, then install from an empty cache.
    let rw = client("rw", &cast.rw);
    rw.create("1.0");
    let (ok, out) = rw.upload("1.0");
    assert!(ok, "upload with a read+write token: {out}\n{}", gate.logs());
    let (ok, out) = rw.install("1.0");
    assert!(ok, "install with a read+write token: {out}");

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
    let other = Client::new(work.path(), "other", &web);
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
    let (_server, gate) = start(work.path());
    let cast = Cast::issue(&gate);
    let rw = Client::new(work.path(), "rw", &remote(&gate, "acme/web"));
    let (ok, out) = rw.login(&cast.rw);
    assert!(ok, "{out}");
    rw.create("2.0");
    let (ok, out) = rw.upload("2.0");
    assert!(ok, "{out}");

    // A session JWT as the client holds one, replayed until it stops working.
    let jwt = login_by_hand(&gate, &cast.rw);
    let path = "/api/v4/projects/acme%2Fweb/packages/conan/v2/conans/hello/2.0/_/_/latest";
    let bearer = format!("Bearer {jwt}");
    let status =
        || crate::common::send(gate.port, "GET", path, &[("Authorization", &bearer)], b"").status;
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

/// `GET …/v2/users/authenticate` with Basic, as `conan remote login` sends it.
fn login_by_hand(gate: &Gate, token: &Token) -> String {
    let r = crate::common::send(
        gate.port,
        "GET",
        "/api/v4/projects/acme%2Fweb/packages/conan/v2/users/authenticate",
        &[("Authorization", &token.basic())],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}
