//! Token management with real clients: python-gitlab (a GitLab API client
//! library, unchanged) against the admin API, and the web page in headless
//! Chromium driven over WebDriver (chromedriver), from sign-in to revoke,
//! with the created token used through the proxy in between.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{free_port, send, terminate, wait_for_port, Gate, Setup, ADMIN_TOKEN};
use crate::recorder::Recorder;
use crate::{e2e_home, E2E_DIR, REVOCATION_BOUND};

fn gate(up: &Recorder) -> Gate {
    let body = format!(
        "[upstream.files]\nurl = \"{}\"\n\n[[route]]\nname = \"files\"\nformat = \"generic\"\npath = \"/api/v4/projects/{{namespace}}/packages/generic\"\nupstream = \"files\"\nstrip_prefix = true\n",
        up.url()
    );
    Gate::launch(Setup {
        body: &body,
        ..Setup::default()
    })
}

/// A GET through the proxy with a deploy token.
fn fetch(gate: &Gate, secret: &str) -> u16 {
    send(
        gate.port,
        "GET",
        "/api/v4/projects/acme%2Fweb/packages/generic/p/1/f.bin",
        &[("Deploy-Token", secret)],
        b"",
    )
    .status
}

#[test]
fn python_gitlab_manages_deploy_tokens_through_tokengate() {
    crate::require_prerequisites();
    let up = Recorder::start();
    let gate = gate(&up);
    let out = Command::new(e2e_home().join("venv/bin/python"))
        .arg(format!("{E2E_DIR}/python_gitlab.py"))
        .env("TG_URL", format!("http://127.0.0.1:{}", gate.admin_port))
        .env("TG_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("the venv's python (run tests/e2e/install.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-gitlab failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: HashMap<String, Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["step"].as_str().unwrap().to_string(), v))
        .collect();
    let made = &steps["project_created"];
    assert_eq!(made["username"], "py-deployer");
    assert_eq!(
        made["scopes"],
        json!(["read_package_registry", "write_package_registry"])
    );
    assert_eq!(made["expires_at"], "2099-01-02T00:00:00.000Z");
    assert_eq!(
        steps["project_listed"]["names"],
        json!(["page-0", "page-1", "page-2", "python-gitlab"]),
        "python-gitlab followed the pagination"
    );
    assert_eq!(steps["project_fetched"]["revoked"], false);
    assert_eq!(steps["instance_listed"]["count"], 5);
    assert_eq!(
        steps["group_listed"]["names"],
        json!(["python-gitlab-group"])
    );
    assert_eq!(steps["deleted_twice"]["error"], 404);
    assert_eq!(steps["bad_scope"]["error"], 400);
    assert_eq!(
        steps["active_listed"]["names"],
        json!(["page-0", "page-1", "page-2"])
    );
    // The token python-gitlab created was real, and its deletion is too.
    assert_eq!(fetch(&gate, made["token"].as_str().unwrap()), 401);
}

// ---------------------------------------------------------------------------- WebDriver

/// A chromedriver with one headless Chromium session.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    shots: PathBuf,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(profile: &std::path::Path) -> Browser {
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver; run tests/e2e/install.sh)");
        wait_for_port(port, Duration::from_secs(20));
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            shots: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"),
        };
        let created = browser.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--no-first-run",
                             format!("--user-data-dir={}", profile.display())]
                }
            }}}),
        );
        browser.session = created["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        std::fs::create_dir_all(&browser.shots).unwrap();
        browser
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let r = send(
            self.port,
            method,
            path,
            &[("Content-Type", "application/json")],
            &body,
        );
        let value: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("chromedriver: {}", r.text()));
        assert!(r.status == 200, "{method} {path}: {value}");
        value["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let found = self.session(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found[ELEMENT].as_str().unwrap().to_string()
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.session(
            "POST",
            "/elements",
            json!({"using": "css selector", "value": css}),
        );
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_string())
            .collect()
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.session(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        );
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.session("POST", &format!("/element/{element}/click"), json!({}));
    }

    fn value_of(&self, css: &str) -> String {
        let element = self.find(css);
        self.session(
            "GET",
            &format!("/element/{element}/property/value"),
            json!({}),
        )
        .as_str()
        .unwrap()
        .to_string()
    }

    fn text(&self) -> String {
        self.wait_for_text("")
    }

    /// The page's text; `None` while a navigation replaces the document.
    fn try_text(&self) -> Option<String> {
        let path = format!("/session/{}/element", self.session);
        let body = json!({"using": "css selector", "value": "body"}).to_string();
        let r = send(
            self.port,
            "POST",
            &path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        let found: Value = serde_json::from_slice(&r.body).ok()?;
        let element = found["value"][ELEMENT].as_str()?;
        let path = format!("/session/{}/element/{element}/text", self.session);
        let r = send(self.port, "GET", &path, &[], b"");
        let text: Value = serde_json::from_slice(&r.body).ok()?;
        text["value"].as_str().map(str::to_string)
    }

    /// Waits (a click may start a navigation) until the page says `needle`.
    fn wait_for_text(&self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(text) = self.try_text().filter(|t| t.contains(needle)) {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the page never said {needle:?}: {:?}",
                self.try_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn script(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let png = self.session("GET", "/screenshot", json!({}));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    fn resize(&self, width: u32, height: u32) {
        self.session(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = send(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                &[],
                b"",
            );
        }
        terminate(&mut self.driver);
    }
}

#[test]
fn the_web_page_creates_and_revokes_a_token_in_chromium() {
    let up = Recorder::start();
    let gate = gate(&up);
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(profile.path());
    let ui = format!("http://127.0.0.1:{}/ui", gate.admin_port);
    browser.resize(1200, 1000);

    // Sign in: a wrong token first.
    browser.goto(&ui);
    browser.type_into("#token", "not-the-admin-token");
    browser.click("form button[type=submit]");
    browser.wait_for_text("That is not an admin token.");
    browser.type_into("#token", ADMIN_TOKEN);
    browser.click("form button[type=submit]");
    browser.wait_for_text("Signed in as admin");

    // Choose the project; fill the form: name, expiry, two scopes.
    browser.type_into("#path", "acme/web");
    browser.click("form[action='/ui'] button");
    browser.wait_for_text("New deploy token for project acme/web");
    for scope in [
        "read_package_registry",
        "write_package_registry",
        "read_registry",
    ] {
        assert!(browser.text().contains(scope), "the form offers {scope}");
    }
    browser.type_into("#name", "browser-made");
    browser.script("document.getElementById('expires_at').value = '2099-03-04';");
    browser.click("input[value=read_package_registry]");
    browser.click("input[value=write_package_registry]");
    browser.screenshot("01-form");
    browser.click("#create button[type=submit]");

    // The token, shown once with its warning and copy buttons.
    browser.wait_for_text("Save the deploy token somewhere safe. Once you leave or refresh the page, you won't be able to access it again.");
    let secret = browser.value_of("#new-token");
    let username = browser.value_of("#new-username");
    assert!(secret.starts_with("tgdt_"), "{secret}");
    browser.screenshot("02-token-created");
    browser.click("button[data-copy=new-token]");
    browser.wait_for_text("Copied");

    // Listed as active, with scopes and expiry; usable through the proxy.
    let rows = browser.find_all("#tokens tbody tr");
    assert_eq!(rows.len(), 1);
    let text = browser.text();
    assert!(
        text.contains("browser-made") && text.contains(&username),
        "{text}"
    );
    assert!(
        text.contains("read_package_registry, write_package_registry"),
        "{text}"
    );
    assert!(text.contains("2099-03-04"), "{text}");
    assert_eq!(fetch(&gate, &secret), 200);
    // The admin API sees what the page made.
    let listed: Value = serde_json::from_slice(
        &gate
            .admin("GET", "/api/v4/projects/acme%2Fweb/deploy_tokens", &[], b"")
            .body,
    )
    .unwrap();
    assert_eq!(listed[0]["name"], "browser-made");
    assert_eq!(listed[0]["expires_at"], "2099-03-04T00:00:00.000Z");

    // A refresh does not show the secret again.
    browser.goto(&format!("{ui}?kind=project&path=acme%2Fweb"));
    assert!(!browser
        .wait_for_text("Active deploy tokens (1)")
        .contains(&secret));
    assert!(!browser
        .script("return document.documentElement.outerHTML;")
        .as_str()
        .unwrap()
        .contains(&secret));

    // Narrow screen: the table becomes cards, nothing wider than the viewport.
    browser.resize(390, 900);
    let overflow =
        browser.script("return document.documentElement.scrollWidth > window.innerWidth;");
    assert_eq!(
        overflow,
        json!(false),
        "the page scrolls sideways on a narrow screen"
    );
    browser.screenshot("03-narrow");
    browser.resize(1200, 1000);

    // Revoke: dismissing the confirmation keeps the token; accepting revokes it.
    browser.click("form.revoke button");
    browser.session("POST", "/alert/dismiss", json!({}));
    assert_eq!(browser.find_all("#tokens tbody tr").len(), 1);
    assert_eq!(fetch(&gate, &secret), 200);
    browser.click("form.revoke button");
    let alert = browser.session("GET", "/alert/text", json!({}));
    assert!(alert.as_str().unwrap().contains("browser-made"), "{alert}");
    browser.session("POST", "/alert/accept", json!({}));
    let started = Instant::now();
    while !browser
        .try_text()
        .is_some_and(|t| t.contains("Active deploy tokens (0)"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            browser.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    while fetch(&gate, &secret) != 401 {
        assert!(
            started.elapsed() < REVOCATION_BOUND,
            "the revoked token still works"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    browser.screenshot("04-revoked");

    // Sign out: the session is gone.
    browser.click("form[action='/ui/logout'] button");
    browser.wait_for_text("Admin token");
}
