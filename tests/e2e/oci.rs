//! Containers end to end: the real distribution registry (Debian's
//! `docker-registry` 2.8) and real OCI clients without a Docker engine —
//! skopeo for push and pull, `docker login` and `docker manifest inspect` —
//! in both modes:
//!
//! - proxy mode: the registry has no auth and listens on loopback; clients
//!   talk to tokengate's `oci` route, which checks each request's JWT and the
//!   deploy token behind it;
//! - token-server-only mode: clients talk to the registry, whose
//!   `auth.token` sends them to tokengate's token endpoint and verifies the
//!   JWTs itself (by `kid` / `x5c` against tokengate's certificate).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::common::pki::test_pki;
use crate::common::{free_port, send, wait_for_port, Gate, RawResponse, Setup, Token};

const RW: &str = "read_registry,write_registry";
const RO: &str = "read_registry";
/// The big layer: over 100 MiB, as the issue asks.
const BIG_LAYER: usize = 110 << 20;

pub(crate) fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is missing: run tests/e2e/install.sh (installs docker-registry and skopeo; the Docker CLI comes with the machine)");
}

/// A distribution registry on a free loopback port, storing under `dir`.
pub(crate) struct Registry {
    pub port: u16,
    data: PathBuf,
    child: Child,
}

impl Registry {
    /// `token_auth`: `(realm, rootcertbundle)` for token-server-only mode, which
    /// runs the shipped `deploy/registry-token-auth.yml` with only its
    /// paths and ports replaced.
    pub fn start(dir: &Path, token_auth: Option<(String, PathBuf)>) -> Registry {
        require("docker-registry");
        let port = free_port();
        let data = dir.join("data");
        let config = match token_auth {
            None => format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: e2e-only-secret\n",
                data.display()
            ),
            Some((realm, bundle)) => {
                let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/registry-token-auth.yml");
                let mut config = std::fs::read_to_string(shipped).unwrap();
                for (from, to) in [
                    ("/var/lib/docker-registry", data.display().to_string()),
                    ("127.0.0.1:5000", format!("127.0.0.1:{port}")),
                    ("https://tokengate.example.com/jwt/auth", realm),
                    ("/etc/tokengate/tokengate-signing.crt", bundle.display().to_string()),
                ] {
                    assert!(config.contains(from), "deploy/registry-token-auth.yml names {from}");
                    config = config.replace(from, &to);
                }
                config
            }
        };
        let config_path = dir.join("registry.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(port, Duration::from_secs(20));
        Registry { port, data, child }
    }

    /// Whether `repository` holds the blob: its link in the registry's storage
    /// (read from disk, so it needs no credentials in either mode).
    fn has_blob(&self, repository: &str, digest: &str) -> bool {
        let (algorithm, hex) = digest.split_once(':').expect("a digest");
        self.data
            .join("docker/registry/v2/repositories")
            .join(repository)
            .join("_layers")
            .join(algorithm)
            .join(hex)
            .join("link")
            .exists()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI image layout with a big random layer and a small one, gzipped
/// (so that no client recompresses them and pulled blobs can be compared byte for byte).
pub(crate) struct Image {
    dir: PathBuf,
    pub big: String,
    small: String,
}

fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{:x}", hasher.finalize())
}

fn shell(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Image {
    /// `big` bytes of random data in the first layer.
    pub fn build(work: &Path, big: usize) -> Image {
        let dir = work.join("image");
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let scratch = work.join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        shell(
            &format!(
                "head -c {big} /dev/urandom > big.bin && tar -cf big.tar big.bin && gzip -1 -n -c big.tar > big.tar.gz \
                 && printf 'hello from tokengate\\n' > small.txt && tar -cf small.tar small.txt && gzip -n -c small.tar > small.tar.gz"
            ),
            &scratch,
        );
        let mut layers = Vec::new();
        for name in ["big", "small"] {
            let gz = scratch.join(format!("{name}.tar.gz"));
            let digest = sha256_file(&gz);
            let diff_id = sha256_file(&scratch.join(format!("{name}.tar")));
            let size = std::fs::metadata(&gz).unwrap().len();
            std::fs::rename(&gz, blobs.join(digest.trim_start_matches("sha256:"))).unwrap();
            layers.push((digest, diff_id, size));
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.1.clone()).collect::<Vec<_>>() },
        })
        .to_string();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(&blobs, config.as_bytes()), "size": config.len() },
            "layers": layers.iter().map(|(d, _, s)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s,
            })).collect::<Vec<_>>(),
        })
        .to_string();
        let manifest_digest = put_blob(&blobs, manifest.as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": "v1" },
            }],
        });
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::remove_dir_all(&scratch).unwrap();
        Image {
            dir,
            big: layers[0].0.clone(),
            small: layers[1].0.clone(),
        }
    }

    pub fn blob(&self, digest: &str) -> PathBuf {
        blob_path(&self.dir, digest)
    }
}

pub(crate) fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn put_blob(blobs: &Path, bytes: &[u8]) -> String {
    let hex = format!("{:x}", Sha256::digest(bytes));
    std::fs::write(blobs.join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::metadata(a).unwrap().len() == std::fs::metadata(b).unwrap().len()
        && sha256_file(a) == sha256_file(b)
}

pub(crate) struct Run {
    pub ok: bool,
    pub output: String,
}

fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let out = Command::new("timeout")
        .args(["-k", "10", "300", program])
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        ok: out.status.success(),
        output: format!(
            "{program} {}: {}\n{}{}",
            args.first().unwrap_or(&""),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

pub(crate) fn skopeo_push(image: &Image, host: &str, repo: &str, token: &Token) -> Run {
    let started = Instant::now();
    let r = run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{}:{}", token.username, token.secret),
            &format!("oci:{}:v1", image.dir.display()),
            &format!("docker://{host}/{repo}:v1"),
        ],
        &[],
    );
    eprintln!(
        "[e2e] skopeo push {repo} as {}: {} in {:.1?}",
        token.username,
        r.ok,
        started.elapsed()
    );
    r
}

fn skopeo_pull(out: &Path, host: &str, repo: &str, token: &Token) -> Run {
    run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            &format!("{}:{}", token.username, token.secret),
            &format!("docker://{host}/{repo}:v1"),
            &format!("oci:{}:v1", out.display()),
        ],
        &[],
    )
}

pub(crate) fn docker(config: &Path, args: &[&str]) -> Run {
    require("docker");
    run("docker", args, &[("DOCKER_CONFIG", config)])
}

/// `docker login HOST -u USER -p PASSWORD`, storing the login under `config`.
pub(crate) fn docker_login(config: &Path, host: &str, user: &str, password: &str) -> Run {
    docker(config, &["login", host, "-u", user, "-p", password])
}

fn bearer(
    port: u16,
    method: &str,
    target: &str,
    jwt: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let auth = format!("Bearer {jwt}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    send(port, method, target, &all, body)
}

/// `docker manifest inspect` of `acme/web/app:v1` (with the login stored in
/// `work/docker`) names the big layer, and a pull with `token` into
/// `work/pulled` brings both layers back byte for byte.
fn inspect_and_pull(image: &Image, work: &Path, host: &str, token: &Token) {
    let (docker_config, out) = (work.join("docker"), work.join("pulled"));
    let (docker_config, out) = (docker_config.as_path(), out.as_path());
    let reference = format!("{host}/acme/web/app:v1");
    let inspect = docker(
        docker_config,
        &["manifest", "inspect", "--insecure", &reference],
    );
    assert!(
        inspect.ok && inspect.output.contains(&image.big),
        "{}",
        inspect.output
    );
    let pull = skopeo_pull(out, host, "acme/web/app", token);
    assert!(pull.ok, "{}", pull.output);
    for layer in [&image.big, &image.small] {
        assert!(
            same_file(&image.blob(layer), &blob_path(out, layer)),
            "layer {layer} differs"
        );
    }
}

/// Asks to mount the image's small layer from `acme/web/app` into `repository`.
fn mount(port: u16, repository: &str, image: &Image, jwt: &str) -> RawResponse {
    let target = format!(
        "/v2/{repository}/blobs/uploads/?mount={}&from=acme%2Fweb%2Fapp",
        image.small.replace(':', "%3A")
    );
    bearer(port, "POST", &target, jwt, &[], b"")
}

/// The path and query of an absolute or relative `Location`.
fn location_target(location: &str, gate: &Gate) -> String {
    assert!(
        location.starts_with(&gate.url()) || location.starts_with('/'),
        "upload sessions must continue through the proxy: {location}"
    );
    location.trim_start_matches(&gate.url()).to_string()
}

pub(crate) fn oci_gate(work: &Path, upstream: Option<u16>) -> Gate {
    oci_gate_with(work, upstream, None)
}

/// `tls`: `(cert, key)` to serve HTTPS.
fn oci_gate_with(work: &Path, upstream: Option<u16>, tls: Option<(PathBuf, PathBuf)>) -> Gate {
    let key = work.join("signing.pem");
    let route = upstream.map_or_else(String::new, |port| {
        format!("[upstream.registry]\nurl = \"http://127.0.0.1:{port}\"\n\n[[route]]\nname = \"containers\"\nformat = \"oci\"\npath = \"/v2\"\nupstream = \"registry\"\n")
    });
    let body = format!("[signing]\nkey_file = \"{}\"\n\n[registry_auth]\nservice = \"container_registry\"\nissuer = \"tokengate\"\n\n{route}", key.display());
    Gate::launch(Setup {
        body: &body,
        tls,
        ..Setup::default()
    })
}

#[test]
fn oci_proxy_mode_with_skopeo_and_docker() {
    require("skopeo");
    let work = tempfile::tempdir().unwrap();
    let image = Image::build(work.path(), BIG_LAYER);
    let reg_dir = work.path().join("reg");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let registry = Registry::start(&reg_dir, None);
    let gate = oci_gate(work.path(), Some(registry.port));
    let host = format!("127.0.0.1:{}", gate.port);
    let rw = gate.token("project:acme/web", RW, &[]);
    let ro = gate.token("project:acme/web", RO, &[]);
    let other = gate.token("project:acme/api", RW, &[]);

    // docker login, right and wrong.
    let docker_config = work.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let login = docker_login(&docker_config, &host, &rw.username, &rw.secret);
    assert!(login.ok, "{}", login.output);
    let bad = docker_login(
        &work.path().join("docker-bad"),
        &host,
        &rw.username,
        "tgdt_wrong",
    );
    assert!(!bad.ok, "a wrong password must not log in: {}", bad.output);

    // Push a multi-layer image (one layer > 100 MiB) and pull it back byte-identical.
    let rss_before = gate.rss_kib().0;
    let push = skopeo_push(&image, &host, "acme/web/app", &rw);
    assert!(
        push.ok,
        "{}\n{}",
        push.output,
        gate.logs()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let rss_after = gate.rss_kib();
    println!(
        "proxy RSS before/after the {} MiB push: {} / {} KiB (peak {} KiB)",
        BIG_LAYER >> 20,
        rss_before,
        rss_after.0,
        rss_after.1
    );
    assert!(registry.has_blob("acme/web/app", &image.big));
    inspect_and_pull(&image, work.path(), &host, &ro);

    // A read-only token pulls but cannot push; another project's token can do neither.
    let refused = skopeo_push(&image, &host, "acme/web/ro-app", &ro);
    assert!(!refused.ok, "read-only push must fail");
    assert!(!registry.has_blob("acme/web/ro-app", &image.small));
    assert!(
        !skopeo_pull(
            &work.path().join("other-pull"),
            &host,
            "acme/web/app",
            &other
        )
        .ok
    );
    assert!(!skopeo_push(&image, &host, "acme/web/other-app", &other).ok);
    assert!(!registry.has_blob("acme/web/other-app", &image.small));

    // A mount from a repository the token cannot read does not leak the blob.
    let thief = gate.registry_jwt(&other, "repository:acme/api/loot:pull,push");
    let r = mount(gate.port, "acme/api/loot", &image, &thief);
    assert_eq!(r.status, 202, "a plain upload, not a mount: {}", r.text());
    assert!(
        !registry.has_blob("acme/api/loot", &image.small),
        "the blob leaked through a mount"
    );

    // A chunked upload (POST, PATCH, PATCH, PUT) keeps going through the proxy.
    let push_jwt = gate.registry_jwt(&rw, "repository:acme/web/chunky:pull,push");
    let r = bearer(
        gate.port,
        "POST",
        "/v2/acme/web/chunky/blobs/uploads/",
        &push_jwt,
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let mut target = location_target(r.header("Location").unwrap(), &gate);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for (start, chunk) in [(0usize, &data[..100_000]), (100_000, &data[100_000..])] {
        let range = format!("{}-{}", start, start + chunk.len() - 1);
        let r = bearer(
            gate.port,
            "PATCH",
            &target,
            &push_jwt,
            &[
                ("Content-Range", &range),
                ("Content-Type", "application/octet-stream"),
            ],
            chunk,
        );
        assert_eq!(r.status, 202, "{}", r.text());
        target = location_target(r.header("Location").unwrap(), &gate);
    }
    let digest = format!("sha256:{:x}", Sha256::digest(&data));
    let sep = if target.contains('?') { '&' } else { '?' };
    let r = bearer(
        gate.port,
        "PUT",
        &format!("{target}{sep}digest={}", digest.replace(':', "%3A")),
        &push_jwt,
        &[],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let back = bearer(
        gate.port,
        "GET",
        &format!("/v2/acme/web/chunky/blobs/{digest}"),
        &push_jwt,
        &[],
        b"",
    );
    assert_eq!(back.body, data);

    // Revoked: the unexpired JWT stops working on the next request.
    let victim = gate.token("project:acme/web", RO, &[]);
    let victim_jwt = gate.registry_jwt(&victim, "repository:acme/web/app:pull");
    let manifest = "/v2/acme/web/app/manifests/v1";
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    assert_eq!(
        bearer(gate.port, "GET", manifest, &victim_jwt, &accept, b"").status,
        200
    );
    gate.revoke(victim.id);
    let started = Instant::now();
    while bearer(gate.port, "GET", manifest, &victim_jwt, &accept, b"").status != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "revoked token's JWT still pulls"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "revoked deploy token's JWT refused after {:?}",
        started.elapsed()
    );
}

#[test]
fn oci_proxy_memory_stays_flat_for_a_1_gib_layer() {
    let work = tempfile::tempdir().unwrap();
    let reg_dir = work.path().join("reg");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let registry = Registry::start(&reg_dir, None);
    let gate = oci_gate(work.path(), Some(registry.port));
    let rw = gate.token("project:acme/web", RW, &[]);
    let push = gate.registry_jwt(&rw, "repository:acme/web/huge:pull,push");
    let r = bearer(
        gate.port,
        "POST",
        "/v2/acme/web/huge/blobs/uploads/",
        &push,
        &[],
        b"",
    );
    assert_eq!(r.status, 202);
    let target = location_target(r.header("Location").unwrap(), &gate);
    let (rss_before, _) = gate.rss_kib();
    // One streamed PATCH of 1 GiB (chunked transfer encoding), generated on the fly.
    let mut stream = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    write!(
        stream,
        "PATCH {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {push}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut hasher = Sha256::new();
    let mut peak = 0;
    for i in 0..1024 {
        write!(stream, "{:x}\r\n", chunk.len()).unwrap();
        stream.write_all(&chunk).unwrap();
        stream.write_all(b"\r\n").unwrap();
        hasher.update(&chunk);
        if i % 64 == 0 {
            peak = peak.max(gate.rss_kib().0);
        }
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let response = crate::common::read_response(&mut std::io::BufReader::new(stream));
    assert_eq!(response.status, 202, "{}", response.text());
    let growth = peak.saturating_sub(rss_before);
    println!("1 GiB layer through the proxy: RSS {rss_before} KiB before, {peak} KiB at most during (growth {growth} KiB)");
    assert!(growth < 32 * 1024, "proxy memory grew by {growth} KiB");
    let next = location_target(response.header("Location").unwrap(), &gate);
    let digest = format!("sha256:{:x}", hasher.finalize());
    let sep = if next.contains('?') { '&' } else { '?' };
    let r = bearer(
        gate.port,
        "PUT",
        &format!("{next}{sep}digest={}", digest.replace(':', "%3A")),
        &push,
        &[],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(registry.has_blob("acme/web/huge", &digest));
}

#[test]
fn oci_token_server_only_mode() {
    require("skopeo");
    let work = tempfile::tempdir().unwrap();
    // tokengate first: its first start writes the signing key and certificate the registry trusts.
    let gate = oci_gate(work.path(), None);
    let cert = work.path().join("signing.crt");
    assert!(cert.exists(), "tokengate wrote its certificate");
    let reg_dir = work.path().join("reg");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let registry = Registry::start(&reg_dir, Some((format!("{}/jwt/auth", gate.url()), cert)));
    let host = format!("127.0.0.1:{}", registry.port);
    let image = Image::build(work.path(), BIG_LAYER);
    let rw = gate.token("project:acme/web", RW, &[]);
    let ro = gate.token("project:acme/web", RO, &[]);
    let other = gate.token("project:acme/api", RW, &[]);

    let docker_config = work.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let login = docker_login(&docker_config, &host, &rw.username, &rw.secret);
    assert!(login.ok, "{}", login.output);
    let push = skopeo_push(&image, &host, "acme/web/app", &rw);
    assert!(
        push.ok,
        "the registry accepts tokengate's JWTs: {}",
        push.output
    );
    inspect_and_pull(&image, work.path(), &host, &ro);
    assert!(
        !skopeo_push(&image, &host, "acme/web/ro-app", &ro).ok,
        "read-only push refused by the registry"
    );
    assert!(!registry.has_blob("acme/web/ro-app", &image.small));
    assert!(!skopeo_pull(&work.path().join("o"), &host, "acme/web/app", &other).ok);
    assert!(!skopeo_push(&image, &host, "acme/web/x", &other).ok);
    assert!(!registry.has_blob("acme/web/x", &image.small));

    // A mount from a repository the token cannot read: tokengate grants only
    // the token's own repository, so the registry refuses the mount.
    let thief = gate.registry_jwt(
        &other,
        "repository:acme/api/loot:pull,push repository:acme/web/app:pull",
    );
    let r = mount(registry.port, "acme/api/loot", &image, &thief);
    assert_ne!(r.status, 201, "the registry mounted: {}", r.text());
    assert!(
        !registry.has_blob("acme/api/loot", &image.small),
        "the blob leaked through a mount"
    );
    // The same mount with a token that may read the source works: the refusal above was the grant's.
    let owner = gate.registry_jwt(
        &rw,
        "repository:acme/web/copy:pull,push repository:acme/web/app:pull",
    );
    let r = mount(registry.port, "acme/web/copy", &image, &owner);
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(registry.has_blob("acme/web/copy", &image.small));
}

#[test]
fn oci_over_tls_with_a_verified_certificate() {
    require("skopeo");
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    // skopeo trusts the *.crt files of --dest-cert-dir / --src-cert-dir.
    let (_ca, cert, key) = test_pki(&certs);
    let reg_dir = work.path().join("reg");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let registry = Registry::start(&reg_dir, None);
    let gate = oci_gate_with(work.path(), Some(registry.port), Some((cert, key)));
    let host = format!("127.0.0.1:{}", gate.port);
    let image = Image::build(work.path(), 1 << 20);
    let rw = gate.token("project:acme/web", RW, &[]);
    let creds = format!("{}:{}", rw.username, rw.secret);
    let cert_dir = certs.to_str().unwrap();
    let push = run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--dest-cert-dir",
            cert_dir,
            "--dest-creds",
            &creds,
            &format!("oci:{}:v1", image.dir.display()),
            &format!("docker://{host}/acme/web/tls-app:v1"),
        ],
        &[],
    );
    assert!(push.ok, "push over verified TLS: {}", push.output);
    assert!(registry.has_blob("acme/web/tls-app", &image.small));
    let out = work.path().join("pulled");
    let pull = run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--src-cert-dir",
            cert_dir,
            "--src-creds",
            &creds,
            &format!("docker://{host}/acme/web/tls-app:v1"),
            &format!("oci:{}:v1", out.display()),
        ],
        &[],
    );
    assert!(pull.ok, "pull over verified TLS: {}", pull.output);
    assert!(same_file(
        &image.blob(&image.big),
        &blob_path(&out, &image.big)
    ));
    // The challenge sends clients to the https realm.
    let ca = format!("{cert_dir}/ca.crt");
    let challenge = run(
        "curl",
        &[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            &ca,
            &format!("https://{host}/v2/"),
        ],
        &[],
    );
    assert!(
        challenge
            .output
            .contains(&format!("realm=\"https://{host}/jwt/auth\"")),
        "{}",
        challenge.output
    );
}
