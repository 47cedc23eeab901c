//! Config reload under load, and shutdown: the config file is changed three
//! times (a route added, an upstream changed, an invalid file written) while
//! a client sends requests without pause; every request is answered by the
//! config current when it arrived, none fails because of a reload, and the
//! invalid file changes nothing. SIGTERM: readiness drops first, the listener
//! closes after the delay, an upload in flight finishes, exit 0.

mod common;
#[path = "common/recorder.rs"]
mod recorder;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{send, Gate, Setup};
use recorder::Recorder;

fn route(name: &str, path: &str, upstream: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\nformat = \"generic\"\npath = \"{path}\"\nnamespace = \"acme/web\"\nupstream = \"{upstream}\"\nstrip_prefix = true\n")
}

fn upstream(name: &str, up: &Recorder) -> String {
    format!("[upstream.{name}]\nurl = \"{}\"\n", up.url())
}

/// Replaces the gate's config file in one step (write, then rename), as
/// config management tools do.
fn rewrite(gate: &Gate, head: &str, body: &str) {
    let next = gate.config.with_extension("next");
    std::fs::write(&next, format!("{head}\n{body}")).unwrap();
    std::fs::rename(&next, &gate.config).unwrap();
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reloads_under_load_never_fail_a_request_and_an_invalid_file_changes_nothing() {
    let first = Recorder::start();
    let second = Recorder::start();
    let body = format!(
        "{}\n{}",
        upstream("first", &first),
        route("a", "/a", "first")
    );
    let gate = Gate::launch(Setup {
        body: &body,
        ..Setup::default()
    });
    let text = std::fs::read_to_string(&gate.config).unwrap();
    let head = text[..text.find("[upstream.first]").unwrap()].to_string();
    let token = gate.token("project:acme/web", "read_package_registry", &[]);
    let (_, ready) = gate.readyz();
    let version0 = ready["config"]["version"].as_str().unwrap().to_string();

    // A client that never pauses, recording (path, status) in order.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(&'static str, u16)>::new()));
    let client = {
        let (stop, seen, port, secret) =
            (stop.clone(), seen.clone(), gate.port, token.secret.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for path in ["/a/fa", "/b/fb"] {
                    let status = send(port, "GET", path, &[("Deploy-Token", &secret)], b"").status;
                    seen.lock().unwrap().push((path, status));
                }
            }
        })
    };
    let status_of = |path: &str| {
        send(
            gate.port,
            "GET",
            path,
            &[("Deploy-Token", &token.secret)],
            b"",
        )
        .status
    };
    assert_eq!(status_of("/b/fb"), 404);

    // 1. A route added: served within about a second of the file changing.
    let with_b = format!(
        "{body}\n{}\n{}",
        upstream("second", &second),
        route("b", "/b", "second")
    );
    rewrite(&gate, &head, &with_b);
    wait_until("route b served", Duration::from_secs(5), || {
        status_of("/b/fb") == 200
    });
    // 2. An upstream changed: route a now goes to the second recorder.
    let moved = with_b.replace("upstream = \"first\"", "upstream = \"second\"");
    rewrite(&gate, &head, &moved);
    let a_requests = |up: &Recorder| up.seen().iter().filter(|s| s.target == "/fa").count();
    wait_until("route a moved", Duration::from_secs(5), || {
        let n = a_requests(&second);
        status_of("/a/fa") == 200 && a_requests(&second) > n
    });
    let (_, ready) = gate.readyz();
    let version2 = ready["config"]["version"].as_str().unwrap().to_string();
    assert_ne!(version2, version0);
    assert_eq!(ready["config"]["last_reload"], "ok");
    // 3. An invalid file: refused with file, line and key; nothing changes.
    let invalid = format!("{moved}\n[[route]]\nname = \"c\"\nformat = \"cobol\"\npath = \"/c\"\nnamespace = \"acme/web\"\nupstream = \"second\"\n");
    rewrite(&gate, &head, &invalid);
    wait_until("the invalid file refused", Duration::from_secs(5), || {
        gate.readyz().1["config"]["last_reload"]
            .as_str()
            .unwrap_or("")
            .starts_with("failed")
    });
    let (status, ready) = gate.readyz();
    assert_eq!(
        status, 200,
        "an invalid reload does not make the proxy unready"
    );
    let error = ready["config"]["last_reload"].as_str().unwrap();
    assert!(
        error.contains("proxy.toml:") && error.contains("route[2].format"),
        "{error}"
    );
    assert_eq!(ready["config"]["version"], version2.as_str());
    assert_eq!(
        gate.metric("tokengate_config_reloads_total{result=\"error\"}"),
        1.0
    );
    assert_eq!(
        gate.metric("tokengate_config_reloads_total{result=\"ok\"}"),
        2.0
    );
    std::thread::sleep(Duration::from_millis(300));
    let first_after = first.seen().len();
    assert_eq!(status_of("/a/fa"), 200);
    assert_eq!(status_of("/b/fb"), 200);
    assert_eq!(
        first.seen().len(),
        first_after,
        "route a stays on the second upstream"
    );

    // SIGHUP reloads the (now valid again) file too.
    rewrite(&gate, &head, &moved);
    wait_until("the valid file back", Duration::from_secs(5), || {
        gate.readyz().1["config"]["last_reload"] == "ok"
    });
    let ok_before = gate.metric("tokengate_config_reloads_total{result=\"ok\"}");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &gate.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until("SIGHUP reload", Duration::from_secs(5), || {
        gate.metric("tokengate_config_reloads_total{result=\"ok\"}") > ok_before
    });

    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 50, "the client kept sending: {}", seen.len());
    // Every answer is one of a config current at the time: /a always 200;
    // /b 404 until route b appeared, 200 from then on, never back.
    let mut b_served = false;
    for (path, status) in seen.iter() {
        match (*path, *status, b_served) {
            ("/a/fa", 200, _) => {}
            ("/b/fb", 404, false) => {}
            ("/b/fb", 200, _) => b_served = true,
            other => panic!("an answer no config gives: {other:?}"),
        }
    }
    assert!(b_served);
    println!(
        "{} requests answered across 4 reloads and 1 refused file",
        seen.len()
    );
}

#[test]
fn sigterm_drops_readiness_then_closes_and_lets_a_1_gib_upload_finish() {
    let up = Recorder::start();
    let body = format!(
        "{}\n{}",
        upstream("files", &up),
        route("files", "/files", "files")
    );
    let mut gate = Gate::launch(Setup {
        body: &body,
        server_extra: "shutdown_delay_seconds = 1",
        ..Setup::default()
    });
    let t = gate.token("project:acme/web", "write_package_registry", &[]);
    const GIB: u64 = 1 << 30;
    let mut stream = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    write!(stream, "PUT /files/big.bin HTTP/1.1\r\nHost: x\r\nDeploy-Token: {}\r\nContent-Length: {GIB}\r\n\r\n", t.secret).unwrap();
    let chunk = vec![b'z'; 1 << 20];
    stream.write_all(&chunk).unwrap();
    let (admin_port, port, pid) = (gate.admin_port, gate.port, gate.pid());
    assert_eq!(gate.readyz().0, 200);
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Unready at once, while the listener still accepts for the delay.
    wait_until("unready", Duration::from_secs(2), || {
        let r = send(
            admin_port,
            "GET",
            "/readyz",
            &[("PRIVATE-TOKEN", common::ADMIN_TOKEN)],
            b"",
        );
        r.status == 503 && r.text().contains("draining")
    });
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "still accepting during the delay"
    );
    wait_until(
        "listener closed after the delay",
        Duration::from_secs(5),
        || TcpStream::connect(("127.0.0.1", port)).is_err(),
    );
    // The upload in flight completes.
    for _ in 1..(GIB >> 20) {
        stream.write_all(&chunk).unwrap();
    }
    let r = common::read_response(&mut BufReader::new(stream));
    assert_eq!(r.status, 200);
    assert_eq!(up.seen()[0].body_len, GIB);
    let status = gate.wait();
    assert!(status.success(), "tokengate {pid} exited with {status}");
}

#[test]
fn the_log_level_follows_the_config_unless_tokengate_log_is_set() {
    let up = Recorder::start();
    let body = format!(
        "{}\n{}",
        upstream("files", &up),
        route("files", "/files", "files")
    );
    let gate = Gate::launch(Setup {
        body: &body,
        server_extra: "log_level = \"warn\"",
        env: &[("TOKENGATE_LOG", "")],
        ..Setup::default()
    });
    let t = gate.token("project:acme/web", "read_package_registry", &[]);
    let get = || {
        send(
            gate.port,
            "GET",
            "/files/x",
            &[("Deploy-Token", &t.secret)],
            b"",
        )
        .status
    };
    assert_eq!(get(), 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !gate.logs().contains("tokengate::access"),
        "warn hides the access log"
    );
    let text = std::fs::read_to_string(&gate.config).unwrap();
    let next = gate.config.with_extension("next");
    std::fs::write(
        &next,
        text.replace("log_level = \"warn\"", "log_level = \"info\""),
    )
    .unwrap();
    std::fs::rename(&next, &gate.config).unwrap();
    wait_until("info after the reload", Duration::from_secs(5), || {
        get() == 200 && gate.logs().contains("tokengate::access")
    });
    // A log filter that does not parse is refused like any invalid key.
    let text = std::fs::read_to_string(&gate.config).unwrap();
    std::fs::write(
        &next,
        text.replace("log_level = \"info\"", "log_level = \"tokengate=loud\""),
    )
    .unwrap();
    std::fs::rename(&next, &gate.config).unwrap();
    wait_until("the bad filter refused", Duration::from_secs(5), || {
        gate.readyz().1["config"]["last_reload"]
            .as_str()
            .is_some_and(|r| r.contains("server.log_level"))
    });
}

/// An admin token dropped from the config stops working at the reload, and
/// the others keep working: a leaked admin token is revoked without a restart.
#[test]
fn a_reload_replaces_the_admin_tokens() {
    const OLD: &str = "tg-test-old-admin-token-0123456789";
    let gate = Gate::launch(Setup {
        admin_extra: "tokens = [{ name = \"old\", token_env = \"TG_TEST_OLD_ADMIN\" }]",
        env: &[("TG_TEST_OLD_ADMIN", OLD)],
        ..Setup::default()
    });
    let list = |token: &str| {
        let headers = [("PRIVATE-TOKEN", token)];
        send(
            gate.admin_port,
            "GET",
            "/api/v4/deploy_tokens",
            &headers,
            b"",
        )
        .status
    };
    assert_eq!(list(OLD), 200);
    assert_eq!(list(common::ADMIN_TOKEN), 200);
    let text = std::fs::read_to_string(&gate.config).unwrap();
    let without_old = text.replace(
        "tokens = [{ name = \"old\", token_env = \"TG_TEST_OLD_ADMIN\" }]",
        "",
    );
    assert_ne!(text, without_old);
    let next = gate.config.with_extension("next");
    std::fs::write(&next, without_old).unwrap();
    std::fs::rename(&next, &gate.config).unwrap();
    wait_until(
        "the old admin token refused",
        Duration::from_secs(5),
        || list(OLD) == 401,
    );
    assert_eq!(list(common::ADMIN_TOKEN), 200);
    assert!(gate.logs().contains("admin tokens reloaded"));

    // Without `[admin]` at all, no token is left (the listener stays until a restart).
    let text = std::fs::read_to_string(&gate.config).unwrap();
    let start = text.find("[admin]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    std::fs::write(&next, format!("{}{}", &text[..start], &text[end..])).unwrap();
    std::fs::rename(&next, &gate.config).unwrap();
    wait_until("every admin token refused", Duration::from_secs(5), || {
        list(common::ADMIN_TOKEN) == 401
    });
}

/// SIGHUP is taken over first thing: one that arrives while the store is
/// still connecting (`systemctl reload` right after start) must not end the
/// process, as the signal's default action would.
#[test]
fn a_sighup_during_start_up_does_not_end_the_process() {
    // A "database" that accepts and never answers: start-up waits on it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n\n[store]\nurl = \"postgres://tg@127.0.0.1:{port}/tg\"\ntimeout_seconds = 5\n",
            common::free_port()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until the store answers (it never does here) the process is starting up.
    silent.set_nonblocking(true).unwrap();
    let asked = Instant::now();
    let _held = loop {
        match silent.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if asked.elapsed() < Duration::from_secs(10) => {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "exited before connecting"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("never connected to the store: {e}"),
        }
    };
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    let ended = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ended.is_none(),
        "ended by SIGHUP during start-up: {ended:?}"
    );
}
