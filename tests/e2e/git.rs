//! git over smart HTTP end to end: the stock `git` client clones and fetches
//! through tokengate from a real `git http-backend` (nginx + fcgiwrap on
//! loopback); `git push` is refused although the backend itself would
//! accept it; tokens without `read_repository` or of another project get nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{free_port, send, wait_for_port, Gate, Setup, Token};

pub(crate) struct Backend {
    port: u16,
    pub repos: PathBuf,
    children: Vec<Child>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        for child in &mut self.children {
            crate::common::terminate(child);
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=ci",
            "-c",
            "user.email=ci@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    crate::common::outcome(&out)
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out) = git(dir, args);
    assert!(ok, "git {args:?}: {out}");
    out
}

/// A bare repository `acme/web.git` with one commit, served by `git http-backend`.
pub(crate) fn start_backend(work: &Path) -> Backend {
    for tool in ["nginx", "fcgiwrap"] {
        let found = Path::new("/usr/sbin").join(tool).exists()
            || Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is missing: run tests/e2e/install.sh");
    }
    let repos = work.join("repos");
    let bare = repos.join("acme/web.git");
    std::fs::create_dir_all(&bare).unwrap();
    git_ok(&bare, &["init", "--bare", "-q"]);
    // The backend would take pushes: only tokengate stands in the way.
    git_ok(&bare, &["config", "http.receivepack", "true"]);
    let seed = work.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git_ok(&seed, &["init", "-q"]);
    std::fs::write(seed.join("README"), "first\n").unwrap();
    git_ok(&seed, &["add", "README"]);
    git_ok(&seed, &["commit", "-qm", "first"]);
    git_ok(&seed, &["push", "-q", bare.to_str().unwrap(), "HEAD:main"]);

    let nginx_dir = work.join("nginx");
    std::fs::create_dir_all(nginx_dir.join("tmp")).unwrap();
    let socket = nginx_dir.join("fcgi.sock");
    let fcgi = Command::new("fcgiwrap")
        .arg("-s")
        .arg(format!("unix:{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = free_port();
    let d = nginx_dir.display();
    let conf = format!(
        r#"worker_processes 1;
user root;  # workers must reach fcgiwrap's socket (the tests run as root)
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{}}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body;
  fastcgi_temp_path {d}/tmp/fastcgi;
  proxy_temp_path {d}/tmp/proxy;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    location ~ ^/git(/.*)$ {{
      client_max_body_size 0;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT {repos};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param REMOTE_USER ci;
      fastcgi_param PATH_INFO $1;
      fastcgi_pass unix:{sock};
    }}
  }}
}}
"#,
        repos = repos.display(),
        sock = socket.display()
    );
    let nginx = spawn_nginx(&nginx_dir, &conf, port);
    Backend {
        port,
        repos,
        children: vec![nginx, fcgi],
    }
}

impl Backend {
    /// A gate with the route `/git` to this backend.
    pub fn gate(&self) -> Gate {
        let body = format!(
            "[upstream.git]\nurl = \"http://127.0.0.1:{}\"\n\n[[route]]\nname = \"git\"\nformat = \"git\"\npath = \"/git\"\nupstream = \"git\"\n",
            self.port
        );
        Gate::launch(Setup {
            body: &body,
            ..Setup::default()
        })
    }
}

/// nginx in the foreground with `conf` as `dir/nginx.conf` (prefix and error
/// log in `dir`), once it listens on `port`.
pub(crate) fn spawn_nginx(dir: &Path, conf: &str, port: u16) -> Child {
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let child = Command::new(nginx)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(10));
    child
}

fn url(gate: &Gate, user: &str, secret: &str) -> String {
    format!(
        "http://{user}:{secret}@127.0.0.1:{}/git/acme/web.git",
        gate.port
    )
}

fn head(repo: &Path) -> String {
    git_ok(repo, &["rev-parse", "main"]).trim().to_string()
}

#[test]
fn git_clone_and_fetch_through_tokengate_and_push_refused() {
    let work = tempfile::tempdir().unwrap();
    let backend = start_backend(work.path());
    let gate = backend.gate();
    let reader = gate.token("project:acme/web", "read_repository", &[]);
    let group = gate.token("group:acme", "read_repository", &[]);
    let other = gate.token("project:acme/api", "read_repository", &[]);
    let packages = gate.token(
        "project:acme/web",
        "read_package_registry,write_package_registry",
        &[],
    );
    let clones = work.path().join("clones");
    std::fs::create_dir_all(&clones).unwrap();
    let clone = |t: &Token, dir: &str| {
        git(
            &clones,
            &["clone", "-q", &url(&gate, &t.username, &t.secret), dir],
        )
    };

    // Clone, then fetch a commit made upstream afterwards.
    let (ok, out) = clone(&reader, "web");
    assert!(
        ok,
        "clone: {out}\nbackend: {}\nproxy: {}",
        std::fs::read_to_string(work.path().join("nginx/error.log")).unwrap_or_default(),
        gate.logs()
    );
    let work_copy = clones.join("web");
    assert_eq!(
        std::fs::read_to_string(work_copy.join("README")).unwrap(),
        "first\n"
    );
    let bare = backend.repos.join("acme/web.git");
    let seed = work.path().join("seed");
    std::fs::write(seed.join("README"), "second\n").unwrap();
    git_ok(&seed, &["commit", "-qam", "second"]);
    git_ok(&seed, &["push", "-q", bare.to_str().unwrap(), "HEAD:main"]);
    git_ok(&work_copy, &["fetch", "-q", "origin"]);
    assert_eq!(
        git_ok(&work_copy, &["rev-parse", "origin/main"]).trim(),
        head(&bare),
        "fetch brought the new commit"
    );
    assert!(
        clone(&group, "web-group").0,
        "a group token covers the project"
    );

    // Push: refused with a clear message, the repository unchanged.
    git_ok(&work_copy, &["merge", "-q", "--ff-only", "origin/main"]);
    std::fs::write(work_copy.join("README"), "pushed by a deploy token\n").unwrap();
    git_ok(&work_copy, &["commit", "-qam", "third"]);
    let before = head(&bare);
    let (ok, out) = git(&work_copy, &["push", "origin", "HEAD:main"]);
    assert!(!ok, "git push must be refused: {out}");
    assert!(out.contains("403"), "{out}");
    assert_eq!(head(&bare), before, "nothing was pushed");
    let r = send(
        gate.port,
        "GET",
        "/git/acme/web.git/info/refs?service=git-receive-pack",
        &[("Authorization", &reader.basic())],
        b"",
    );
    assert_eq!(r.status, 403);
    assert!(r.text().contains("git push"), "{}", r.text());

    // Other project, package scopes only, wrong password: no clone.
    let (ok, out) = clone(&other, "web-other");
    assert!(!ok && out.contains("403"), "{out}");
    let (ok, out) = clone(&packages, "web-packages");
    assert!(!ok && out.contains("403"), "{out}");
    let (ok, out) = git(
        &clones,
        &[
            "clone",
            "-q",
            &url(&gate, &reader.username, "tgdt_wrong"),
            "web-bad",
        ],
    );
    assert!(!ok, "{out}");
    // The dumb protocol is refused.
    let r = send(
        gate.port,
        "GET",
        "/git/acme/web.git/HEAD",
        &[("Authorization", &reader.basic())],
        b"",
    );
    assert_eq!(r.status, 403);
}
