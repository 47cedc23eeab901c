//! Test support: the real `tokengate` binary on loopback, its CLI, and a raw
//! HTTP/1.1 client that sends exactly the bytes a test writes (attack tests
//! need targets that a normal client library would clean up).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod pki;
pub mod services;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tokengate")
}

/// A finished command's success and its stdout followed by its stderr.
pub fn outcome(out: &Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports: each listener is held until all are picked, so
/// the kernel cannot hand the same port out twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect()
}

pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "port {port} did not open within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The admin token every test gate is started with (`[admin] token_env`).
pub const ADMIN_TOKEN: &str = "tg-test-admin-token-0123456789";

/// A running `tokengate serve` with its own config, store and log file.
pub struct Gate {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin_port: u16,
    pub config: PathBuf,
    child: Option<Child>,
    /// Every secret this gate's tests were given: none may appear in its log.
    issued: std::sync::Mutex<Vec<String>>,
}

/// How to start a gate, beyond the defaults.
#[derive(Default)]
pub struct Setup<'a> {
    /// More `[server]` keys, one per line.
    pub server_extra: &'a str,
    /// `[store]` and `[cache]` sections; default: a SQLite file of the gate's own.
    pub backends: Option<String>,
    /// `[upstream.*]` and `[[route]]` sections.
    pub body: &'a str,
    /// `(cert, key)` PEM files: the listener speaks TLS and the public URL is https.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub env: &'a [(&'a str, &'a str)],
    /// More `[admin]` keys, one per line.
    pub admin_extra: &'a str,
    /// The public URL, when not the listener's own (an edge proxy in front).
    pub public_url: Option<&'a str>,
}

impl Gate {
    /// Starts the proxy; `body` holds the `[upstream.*]` and `[[route]]` sections.
    pub fn start(body: &str) -> Gate {
        Gate::start_with(body, &[])
    }

    pub fn start_with(body: &str, env: &[(&str, &str)]) -> Gate {
        Gate::start_full("", body, env)
    }

    /// `server_extra` holds more `[server]` keys, one per line.
    pub fn start_full(server_extra: &str, body: &str, env: &[(&str, &str)]) -> Gate {
        Gate::launch(Setup {
            server_extra,
            body,
            env,
            ..Setup::default()
        })
    }

    /// Starts `tokengate serve`. Ports are picked free but may be taken by
    /// another test before the gate binds them; then it starts again on others.
    pub fn launch(setup: Setup<'_>) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proxy.toml");
        let backends = setup.backends.clone().unwrap_or_else(|| {
            format!(
                "[store]\nurl = \"sqlite://{}\"\n",
                dir.path().join("tokens.db").display()
            )
        });
        let (scheme, tls) = match &setup.tls {
            Some((cert, key)) => (
                "https",
                format!(
                    "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
                    cert.display(),
                    key.display()
                ),
            ),
            None => ("http", String::new()),
        };
        let mut gate = Gate {
            dir,
            port: 0,
            admin_port: 0,
            config,
            child: None,
            issued: std::sync::Mutex::new(vec![ADMIN_TOKEN.to_string()]),
        };
        for attempt in 1.. {
            gate.port = free_port();
            gate.admin_port = free_port();
            let (port, admin_port) = (gate.port, gate.admin_port);
            let public_url = setup
                .public_url
                .map_or_else(|| format!("{scheme}://127.0.0.1:{port}"), str::to_string);
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{public_url}\"\nshutdown_grace_seconds = 20\n{tls}{}\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_env = \"TG_TEST_ADMIN_TOKEN\"\n{}\n\n{backends}\n{}",
                setup.server_extra, setup.admin_extra, setup.body
            );
            std::fs::write(&gate.config, text).unwrap();
            if attempt == 1 {
                // Create the store before serving, so the proxy and the CLI never race on migrations.
                gate.cli(&["token", "list"]);
            }
            let log = std::fs::File::create(gate.log_path()).unwrap();
            let child = Command::new(bin())
                .args(["serve", "--config"])
                .arg(&gate.config)
                .env("TOKENGATE_LOG", "debug,hyper=info,sqlx=warn,h2=info")
                .env("TG_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
                // JSON lines, as in production; tests may ask for another format.
                .env("TOKENGATE_LOG_FORMAT", "json")
                .envs(setup.env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            gate.child = Some(child);
            if gate.wait_until_listening() {
                break;
            }
            let logs = gate.logs();
            assert!(
                attempt < 3 && logs.contains("in use"),
                "tokengate exited before listening:\n{logs}"
            );
        }
        gate
    }

    /// Waits for both listeners; false when the process exited first.
    fn wait_until_listening(&mut self) -> bool {
        let start = Instant::now();
        for port in [self.port, self.admin_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    self.child = None;
                    eprintln!("tokengate exited with {status} before listening on {port}");
                    return false;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "port {port} did not open within 30s:\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        true
    }

    /// A request to the admin listener with the admin token (`PRIVATE-TOKEN`).
    pub fn admin(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        let mut all = vec![("PRIVATE-TOKEN", ADMIN_TOKEN)];
        all.extend_from_slice(headers);
        send(self.admin_port, method, target, &all, body)
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics(&self) -> String {
        let r = self.admin("GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        r.text()
    }

    /// One sample's value, e.g. `tokengate_store_lookups_total`; 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// `/readyz`: status code and JSON body.
    pub fn readyz(&self) -> (u16, serde_json::Value) {
        let r = self.admin("GET", "/readyz", &[], b"");
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tokengate.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Runs a CLI command against this proxy's config; its stderr (never stdout,
    /// which carries new secrets) is appended to `cli.log`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("cli.log"))
            .unwrap();
        let _ = log.write_all(&out.stderr);
        out
    }

    /// Creates a token and returns (id, username, secret).
    /// A registry JWT for `scope` (`repository:acme/web/app:pull`) from the
    /// token endpoint, asked with `token`'s Basic credentials.
    pub fn registry_jwt(&self, token: &Token, scope: &str) -> String {
        let scope = scope
            .replace(':', "%3A")
            .replace('/', "%2F")
            .replace(',', "%2C")
            .replace(' ', "%20");
        let r = send(
            self.port,
            "GET",
            &format!("/jwt/auth?service=container_registry&scope={scope}"),
            &[("Authorization", &token.basic())],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A token that reads and writes `owner`'s packages.
    pub fn package_writer(&self, owner: &str) -> Token {
        self.token(owner, "read_package_registry,write_package_registry", &[])
    }

    pub fn token(&self, owner: &str, scopes: &str, extra: &[&str]) -> Token {
        let (flag, path) = owner.split_once(':').expect("owner like project:acme/web");
        let flag = format!("--{flag}");
        let mut args = vec![
            "token",
            "create",
            flag.as_str(),
            path,
            "--name",
            "ci",
            "--scopes",
            scopes,
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let secret = json["token"].as_str().unwrap().to_string();
        self.issued.lock().unwrap().push(secret.clone());
        Token {
            id: json["id"].as_i64().unwrap(),
            username: json["username"].as_str().unwrap().to_string(),
            secret,
        }
    }

    pub fn revoke(&self, id: i64) {
        let out = self.cli(&["token", "revoke", &id.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Resident memory of the proxy: (current, peak) in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends SIGTERM and waits for the exit status.
    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe_kill(child.id(), "TERM");
        child.wait().unwrap()
    }
}

/// Stops a server the way its operator would (SIGTERM), so that servers
/// with worker processes (nginx) take their workers with them.
pub fn terminate(child: &mut Child) {
    unsafe_kill(child.id(), "TERM");
    let _ = child.wait();
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Every test's gate is checked as it goes: its log is JSON lines only (no
/// panic or stray print), and no secret issued to the test is in it.
impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            return;
        }
        let logs = self.logs();
        for line in logs.lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "a log line that is not JSON: {line}"
            );
        }
        for secret in self.issued.lock().unwrap().iter() {
            assert!(
                !logs.contains(secret.as_str()),
                "a secret reached the proxy's log"
            );
        }
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub id: i64,
    pub username: String,
    pub secret: String,
}

impl Token {
    pub fn basic(&self) -> String {
        basic(&self.username, &self.secret)
    }
}

/// Config for one `generic` route, `/generic/acme/web` for the namespace
/// acme/web, to `upstream` + `/base` (prefix stripped).
pub fn acme_web_route(upstream: &str) -> String {
    format!(
        r#"
[upstream.up]
url = "{upstream}/base"

[[route]]
name = "web"
format = "generic"
path = "/generic/acme/web"
namespace = "acme/web"
upstream = "up"
strip_prefix = true
"#
    )
}

pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An upstream on a port of its own that answers each connection's first
/// request with `answer` (the start of a response) and then stalls, the
/// connection held open for 30 s.
pub fn stalling_upstream(answer: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head);
                let _ = stream.write_all(answer);
                std::thread::sleep(Duration::from_secs(30));
            });
        }
    });
    port
}

/// Asserts that what began at `started` is over within `limit`.
pub fn assert_within(started: Instant, limit: Duration, what: &str) {
    let took = started.elapsed();
    assert!(took < limit, "{what} {took:?} (limit {limit:?})");
}

/// Sends `METHOD target` with `headers` and `body` as exact bytes, with `Connection: close`.
pub fn send(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    send_from([127, 0, 0, 1], port, method, target, headers, body)
}

/// `send` from the loopback address `local` (127.0.0.2, ...: another client).
pub fn send_from(
    local: [u8; 4],
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let mut stream = connect_from(local, port);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(&bytes).unwrap();
    read_response_with(&mut BufReader::new(stream), method != "HEAD")
}

/// A connection to 127.0.0.1:`port` from the loopback address `local`.
pub fn connect_from(local: [u8; 4], port: u16) -> TcpStream {
    if local == [127, 0, 0, 1] {
        return TcpStream::connect(("127.0.0.1", port)).unwrap();
    }
    // std cannot bind before connecting; tokio's socket can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((local, 0).into()).unwrap();
        let stream = socket.connect(([127, 0, 0, 1], port).into()).await;
        stream.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Writes raw bytes and reads one response until the server closes.
pub fn send_raw(port: u16, bytes: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    read_response(&mut BufReader::new(stream))
}

pub fn read_response<R: Read>(reader: &mut BufReader<R>) -> RawResponse {
    read_response_with(reader, true)
}

/// Reads one response; `with_body` is false for answers to HEAD, whose
/// `Content-Length` describes a body that is not sent.
pub fn read_response_with<R: Read>(reader: &mut BufReader<R>, with_body: bool) -> RawResponse {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut body = Vec::new();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if !with_body {
    } else if let Some(len) = len {
        body.resize(len, 0);
        reader.read_exact(&mut body).unwrap();
    } else if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Writes a file and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
