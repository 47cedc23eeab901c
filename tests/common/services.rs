//! Real backing services for tests: a private `redis-server` (or cluster)
//! per test on its own port, a fresh PostgreSQL database per test on the
//! machine's server, and a TCP link that a test can cut to take a
//! dependency away without touching the shared server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{free_port, free_ports, outcome, send, wait_for_port, Gate, Token};

/// PEM files for a TLS server: the CA, the certificate chain and its key.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// A test PKI of its own, written into `dir`.
    pub fn made_in(dir: &Path) -> TlsFiles {
        let (ca, cert, key) = super::pki::test_pki(dir);
        TlsFiles { ca, cert, key }
    }
}

/// The key of a token's entry in the shared cache.
pub fn cache_key(token: &Token) -> String {
    tokengate::cache::entry_key(
        tokengate::cache::DEFAULT_KEY_PREFIX,
        &tokengate::token::Digest::of(&token.secret),
    )
}

/// A `redis-server` owned by one test, on its own port, keeping nothing on disk.
pub struct Redis {
    pub port: u16,
    /// The TLS port beside the plain one, when started with TLS.
    pub tls_port: Option<u16>,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        Redis::start_with(dir, &[])
    }

    /// With more `redis-server` arguments, e.g. `--replicaof 127.0.0.1 6379`.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            tls_port: None,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        redis.resume();
        redis
    }

    /// Also listening for TLS on a port of its own (`tls_port`).
    pub fn start_tls(dir: &Path, tls: &TlsFiles) -> Redis {
        let tls_port = free_port();
        let args = tls_args(tls, tls_port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut redis = Redis::start_with(dir, &args);
        redis.tls_port = Some(tls_port);
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether this server holds the token's cache entry.
    pub fn holds(&self, token: &Token) -> bool {
        !self.cli(&["GET", &cache_key(token)]).trim().is_empty()
    }

    /// Kills the server (as a crash would: no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = Some(redis_server(self.port, &self.dir, &extra));
        wait_for_port(self.port, Duration::from_secs(10));
    }

    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_server(port: u16, dir: &Path, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test.sh installs it)")
}

pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Sentinel watching `master` as `mymaster`, with quorum 1 and
/// one-second failure detection.
pub struct Sentinel {
    pub port: u16,
    /// With TLS: the port clients reach it on over TLS.
    pub tls_port: Option<u16>,
    child: Child,
}

impl Sentinel {
    pub fn start(dir: &Path, master: u16) -> Sentinel {
        Sentinel::start_with(dir, master, None)
    }

    /// With `tls`, Sentinel also listens on a TLS port and talks TLS to the
    /// servers it watches (`master` is then the master's TLS port).
    pub fn start_with(dir: &Path, master: u16, tls: Option<&TlsFiles>) -> Sentinel {
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut extra = Vec::new();
        if let (Some(tls), Some(tls_port)) = (tls, tls_port) {
            extra = tls_args(tls, tls_port);
            extra.extend(["--tls-replication", "yes"].map(String::from));
        }
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, Duration::from_secs(10));
        Sentinel {
            port,
            tls_port,
            child,
        }
    }

    pub fn url(&self) -> String {
        match self.tls_port {
            Some(tls_port) => format!("rediss+sentinel://127.0.0.1:{tls_port}/mymaster/0"),
            None => format!("redis+sentinel://127.0.0.1:{}/mymaster/0", self.port),
        }
    }

    /// The port of the server Sentinel currently calls master.
    pub fn master_port(&self) -> Option<u16> {
        let out = redis_cli(
            self.port,
            &["sentinel", "get-master-addr-by-name", "mymaster"],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of three masters on loopback, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    /// The plain ports (for the tests' own inspection in the TLS cluster too).
    pub ports: Vec<u16>,
    /// The TLS ports of a TLS cluster, where clients are told of TLS ports.
    pub tls_ports: Vec<u16>,
    children: Vec<Child>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> RedisCluster {
        RedisCluster::start_with(dir, None)
    }

    /// With `tls`, the nodes also listen on TLS ports, talk to each other
    /// over TLS, and tell TLS clients of their TLS ports.
    ///
    /// Ports picked by `free_port` can be taken by another test's process
    /// before a node binds them, so a failed start is retried on new ports
    /// (twice at most) and the last failure names every node's log.
    pub fn start_with(dir: &Path, tls: Option<&TlsFiles>) -> RedisCluster {
        let mut failure = String::new();
        for attempt in 1..=3 {
            match RedisCluster::try_start(dir, tls, attempt) {
                Ok(cluster) => return cluster,
                Err(why) => failure = why,
            }
        }
        panic!("Redis Cluster did not start in three tries: {failure}");
    }

    fn try_start(dir: &Path, tls: Option<&TlsFiles>, attempt: u32) -> Result<RedisCluster, String> {
        // Plain, bus and (with TLS) client TLS ports, all distinct.
        let mut ports = free_ports(if tls.is_some() { 9 } else { 6 });
        let mut bus_ports = ports.split_off(3);
        let tls_ports = bus_ports.split_off(3);
        let mut cluster = RedisCluster {
            ports,
            tls_ports,
            children: Vec::new(),
        };
        let logs: Vec<PathBuf> = cluster
            .ports
            .iter()
            .map(|port| dir.join(format!("node-{attempt}-{port}.log")))
            .collect();
        let logs_text = || {
            logs.iter()
                .map(|log| {
                    format!(
                        "\n{}:\n{}",
                        log.display(),
                        std::fs::read_to_string(log).unwrap_or_default()
                    )
                })
                .collect::<String>()
        };
        for (i, port) in cluster.ports.clone().into_iter().enumerate() {
            let conf = dir.join(format!("nodes-{attempt}-{port}.conf"));
            // The bus port is named: its default (port + 10000) does not
            // exist for the ephemeral ports above 55535.
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus_ports[i].to_string(),
                "--cluster-config-file",
                conf.to_str().unwrap(),
                "--cluster-node-timeout",
                "5000",
                "--logfile",
                logs[i].to_str().unwrap(),
            ]
            .map(String::from)
            .into();
            if let Some(tls) = tls {
                args.extend(tls_args(tls, cluster.tls_ports[i]));
                args.extend(["--tls-cluster", "yes"].map(String::from));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut child = redis_server(port, dir, &args);
            let start = Instant::now();
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(10)
                {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("node on port {port} did not start{}", logs_text()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            cluster.children.push(child);
            // Whatever answers on the port must be this node, not another
            // test's server that took the port first.
            let answer = redis_cli(port, &["config", "get", "cluster-config-file"]);
            if !answer.contains(conf.to_str().unwrap()) {
                return Err(format!(
                    "port {port} is not this node ({answer:?}){}",
                    logs_text()
                ));
            }
        }
        let (create_ports, create_tls) = match tls {
            Some(tls) => (
                &cluster.tls_ports,
                vec!["--tls", "--cacert", tls.ca.to_str().unwrap()],
            ),
            None => (&cluster.ports, vec![]),
        };
        let nodes: Vec<String> = create_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(create_tls)
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                outcome(&out).1,
                logs_text()
            ));
        }
        let start = Instant::now();
        while !cluster
            .ports
            .iter()
            .all(|p| redis_cli(*p, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!("cluster never became ok{}", logs_text()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    /// Six tokens served through `first` are read by `second` from the
    /// cluster (six keys hash to slots on different masters), and the entries
    /// lie on at least two masters. Both proxies route `/generic/acme/web`.
    pub fn share_entries(&self, first: &Gate, second: &Gate) -> Vec<Token> {
        let get = |gate: &Gate, token: &Token| {
            let auth = token.basic();
            let headers = [("Authorization", auth.as_str())];
            send(gate.port, "GET", "/generic/acme/web/f", &headers, b"").status
        };
        let tokens: Vec<Token> = (0..6)
            .map(|_| first.token("project:acme/web", "read_package_registry", &[]))
            .collect();
        for token in &tokens {
            assert_eq!(get(first, token), 200);
        }
        for token in &tokens {
            assert_eq!(get(second, token), 200);
        }
        assert_eq!(
            second.metric(r#"tokengate_cache_lookups_total{layer="redis",result="hit"}"#),
            6.0
        );
        let holders = self
            .ports
            .iter()
            .filter(|p| redis_cli(**p, &["dbsize"]).trim() != "0")
            .count();
        assert!(holders >= 2, "entries spread over the masters ({holders})");
        tokens
    }

    /// `redis+cluster://` on the plain ports, or `rediss+cluster://` on the TLS ones.
    pub fn url(&self) -> String {
        let (scheme, ports) = if self.tls_ports.is_empty() {
            ("redis", &self.ports)
        } else {
            ("rediss", &self.tls_ports)
        };
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("{scheme}+cluster://{}", nodes.join(","))
    }
}

/// `redis-server` arguments for a TLS port beside the plain one; clients need no certificate.
fn tls_args(tls: &TlsFiles, port: u16) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        path(&tls.cert),
        "--tls-key-file".into(),
        path(&tls.key),
        "--tls-ca-cert-file".into(),
        path(&tls.ca),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The machine's PostgreSQL (override with `TOKENGATE_TEST_POSTGRES`, a URL without a database).
pub fn postgres_server() -> String {
    std::env::var("TOKENGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A fresh PostgreSQL database, dropped at the end of the test.
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        let name = format!("tokengate_test_{}_{}", std::process::id(), rand_suffix());
        psql(&format!("CREATE DATABASE {name}"));
        PgDatabase { name }
    }

    /// The URL, optionally through another port (a [`Link`] to the server).
    pub fn url_via(&self, port: Option<u16>) -> String {
        let server = postgres_server();
        match port {
            None => format!("{server}/{}", self.name),
            Some(port) => {
                let (head, _) = server.rsplit_once(':').expect("URL with a port");
                format!("{head}:{port}/{}", self.name)
            }
        }
    }

    pub fn url(&self) -> String {
        self.url_via(None)
    }

    /// The server's port, for a [`Link`] in front of it.
    pub fn server_port() -> u16 {
        postgres_server()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("TOKENGATE_TEST_POSTGRES ends with :port")
    }

    /// Runs SQL in this database and returns psql's unaligned output.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .arg(self.url())
            .args(["-Atqc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(format!("{}/postgres", postgres_server()))
            .args([
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .arg(format!("{}/postgres", postgres_server()))
        .args(["-qc", sql])
        .output()
        .expect("psql must be installed");
    assert!(
        out.status.success(),
        "PostgreSQL is required for this test ({}): {}",
        postgres_server(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rand_suffix() -> u128 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    nanos % 1_000_000_000 + u128::from(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A TCP link to a server that a test can cut (every connection closed,
/// new ones closed on accept) and restore, like a network partition.
pub struct Link {
    pub port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Link {
    pub fn to(target_port: u16) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let link = Link {
            port: listener.local_addr().unwrap().port(),
            cut: Arc::default(),
            open: Arc::default(),
            stop: Arc::default(),
        };
        let (cut, open, stop) = (link.cut.clone(), link.open.clone(), link.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if cut.load(Ordering::Relaxed) {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let mut list = open.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        link
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
