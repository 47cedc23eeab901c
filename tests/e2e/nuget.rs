//! NuGet end to end. No NuGet server installs here (they need .NET), so the
//! upstream is a store that keeps what it receives and serves a static v3
//! feed from files; the client is Debian's `nuget` (2.8, mono, v2 push):
//! `nuget push -ApiKey <deploy token>` through tokengate, and the read side
//! as clients send it (service index, registration, flat container), with
//! the feed's absolute URLs rewritten to the proxy.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{basic, send, Gate, Setup, Token};
use crate::recorder::Recorder;

const PACKAGE: &str = "Acme.Demo.1.0.0.nupkg";

/// Packs `Acme.Demo 1.0.0` with the real `nuget pack`.
fn pack(dir: &Path) -> Vec<u8> {
    std::fs::write(
        dir.join("demo.nuspec"),
        r#"<?xml version="1.0"?>
<package><metadata><id>Acme.Demo</id><version>1.0.0</version><authors>ci</authors><description>demo</description></metadata>
<files><file src="readme.txt" target="content" /></files></package>"#,
    )
    .unwrap();
    std::fs::write(dir.join("readme.txt"), "hello\n").unwrap();
    let out = nuget(dir, &["pack", "demo.nuspec", "-NonInteractive"]);
    assert!(out.0, "nuget pack: {}", out.1);
    std::fs::read(dir.join(PACKAGE)).unwrap()
}

fn nuget(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["-k", "5", "120", "nuget"])
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .expect("nuget (Debian package `nuget`) must be installed: run tests/e2e/install.sh");
    crate::common::outcome(&out)
}

/// A v3 feed naming its server by absolute URL, as nuget.org's does.
fn feed(root: &Path, package: &[u8]) {
    let write = |path: &str, text: &[u8]| {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    };
    write(
        "v3/index.json",
        br#"{"version":"3.0.0","resources":[
 {"@id":"{{upstream}}/v3/flat/","@type":"PackageBaseAddress/3.0.0"},
 {"@id":"{{upstream}}/v3/registration/","@type":"RegistrationsBaseUrl/3.6.0"},
 {"@id":"{{upstream}}/api/v2/package","@type":"PackagePublish/2.0.0"}]}"#,
    );
    write(
        "v3/registration/acme.demo/index.json",
        br#"{"@id":"{{upstream}}/v3/registration/acme.demo/index.json","count":1,"items":[{
 "@id":"{{upstream}}/v3/registration/acme.demo/index.json#page/1.0.0/1.0.0","count":1,"lower":"1.0.0","upper":"1.0.0",
 "items":[{"@id":"{{upstream}}/v3/registration/acme.demo/1.0.0.json",
  "catalogEntry":{"@id":"{{upstream}}/v3/catalog/acme.demo.1.0.0.json","id":"Acme.Demo","version":"1.0.0"},
  "packageContent":"{{upstream}}/v3/flat/acme.demo/1.0.0/acme.demo.1.0.0.nupkg"}]}]}"#,
    );
    write("v3/flat/acme.demo/index.json", br#"{"versions":["1.0.0"]}"#);
    write("v3/flat/acme.demo/1.0.0/acme.demo.1.0.0.nupkg", package);
    let huge = format!(
        r#"{{"@id":"{{{{upstream}}}}/x","pad":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    write("v3/huge/index.json", huge.as_bytes());
}

/// A packed `Acme.Demo 1.0.0`, a feed serving it (which keeps what is pushed)
/// and a gate with the route `/nuget/acme/web` to it.
pub(crate) struct Feed {
    pub package: Vec<u8>,
    pub up: Recorder,
    pub gate: Gate,
}

impl Feed {
    pub fn start(work: &Path) -> Feed {
        let package = pack(work);
        let root = work.join("feed");
        feed(&root, &package);
        let up = Recorder::start_serving(Some(root));
        let body = format!(
            "[upstream.feed]\nurl = \"{}\"\n\n[[route]]\nname = \"nuget\"\nformat = \"nuget\"\npath = \"/nuget/acme/web\"\nnamespace = \"acme/web\"\nupstream = \"feed\"\nstrip_prefix = true\n",
            up.url()
        );
        let gate = Gate::launch(Setup {
            body: &body,
            server_extra: "metadata_max_bytes = 32768",
            ..Setup::default()
        });
        Feed { package, up, gate }
    }
}

fn get(gate: &Gate, path: &str, token: &Token) -> crate::common::RawResponse {
    send(
        gate.port,
        "GET",
        &format!("/nuget/acme/web{path}"),
        &[("Authorization", &token.basic())],
        b"",
    )
}

#[test]
fn nuget_push_and_v3_feed_through_tokengate() {
    let work = tempfile::tempdir().unwrap();
    let Feed { package, up, gate } = Feed::start(work.path());
    let rw = gate.token(
        "project:acme/web",
        "read_package_registry,write_package_registry",
        &[],
    );
    let wo = gate.token("project:acme/web", "write_package_registry", &[]);
    let ro = gate.token("project:acme/web", "read_package_registry", &[]);
    let other = gate.token(
        "project:acme/api",
        "read_package_registry,write_package_registry",
        &[],
    );
    let source = format!("{}/nuget/acme/web/api/v2/package", gate.url());
    // As with GitLab: the source carries the deploy token's credentials (nuget
    // first GETs the source), the push its API key.
    let push_with = |token: &Token, api_key: &str| {
        let config = work.path().join("NuGet.config");
        std::fs::write(
            &config,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<configuration>\n</configuration>\n",
        )
        .unwrap();
        let config = config.to_str().unwrap().to_string();
        let (ok, out) = nuget(
            work.path(),
            &[
                "sources",
                "add",
                "-Name",
                "tokengate",
                "-Source",
                &source,
                "-UserName",
                &token.username,
                "-Password",
                &token.secret,
                "-ConfigFile",
                &config,
                "-NonInteractive",
            ],
        );
        assert!(ok, "nuget sources add: {out}");
        nuget(
            work.path(),
            &[
                "push",
                PACKAGE,
                "-Source",
                "tokengate",
                "-ApiKey",
                api_key,
                "-ConfigFile",
                &config,
                "-NonInteractive",
            ],
        )
    };
    let push = |token: &Token| push_with(token, &token.secret);

    // Push with the deploy token as API key: write scope needed and enough.
    let (ok, out) = push(&wo);
    assert!(ok, "nuget push: {out}\n{}", gate.logs());
    let stored: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT")
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].target, "/api/v2/package/");
    assert!(
        stored[0].header("x-nuget-apikey").is_empty(),
        "the API key is not forwarded"
    );
    assert!(
        stored[0].body.windows(package.len()).any(|w| w == package),
        "the upstream received the package byte for byte"
    );
    for token in [&ro, &other] {
        let (ok, out) = push(token);
        assert!(!ok, "push must be refused: {out}");
    }
    let (ok, out) = push_with(&rw, "tgdt_wrong");
    assert!(
        !ok,
        "a wrong API key beside valid source credentials: {out}"
    );
    assert_eq!(up.seen().iter().filter(|s| s.method == "PUT").count(), 1);
    // Push with Basic (dotnet with source credentials) and with both Basic and the API key.
    let r = send(
        gate.port,
        "PUT",
        "/nuget/acme/web/api/v2/package/",
        &[("Authorization", &rw.basic())],
        &package,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = send(
        gate.port,
        "PUT",
        "/nuget/acme/web/api/v2/package/",
        &[
            ("Authorization", &rw.basic()),
            ("X-NuGet-ApiKey", &rw.secret),
        ],
        &package,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = send(
        gate.port,
        "PUT",
        "/nuget/acme/web/api/v2/package/",
        &[("Authorization", &basic("someone-else", &rw.secret))],
        &package,
    );
    assert_eq!(r.status, 401, "the Basic username must be the token's");

    // Read side: the documents point back at the proxy, the package arrives intact.
    let public = format!("{}/nuget/acme/web", gate.url());
    let index = get(&gate, "/v3/index.json", &ro);
    assert_eq!(index.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&index.body).unwrap();
    let ids: Vec<&str> = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["@id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            format!("{public}/v3/flat/"),
            format!("{public}/v3/registration/"),
            format!("{public}/api/v2/package"),
        ]
    );
    let registration = get(&gate, "/v3/registration/acme.demo/index.json", &ro);
    let text = registration.text();
    assert!(!text.contains(&up.url()), "no upstream URL left: {text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let content = doc["items"][0]["items"][0]["packageContent"]
        .as_str()
        .unwrap();
    assert_eq!(
        content,
        format!("{public}/v3/flat/acme.demo/1.0.0/acme.demo.1.0.0.nupkg")
    );
    let versions = get(&gate, "/v3/flat/acme.demo/index.json", &ro);
    assert_eq!(versions.text(), r#"{"versions":["1.0.0"]}"#);
    let nupkg = get(&gate, "/v3/flat/acme.demo/1.0.0/acme.demo.1.0.0.nupkg", &ro);
    assert_eq!(nupkg.body, package);
    assert_eq!(
        get(&gate, "/v3/index.json", &wo).status,
        403,
        "reading needs the read scope"
    );
    assert_eq!(get(&gate, "/v3/index.json", &other).status, 403);
    // A document over the metadata cap: 502 with a clear error, not unbounded buffering.
    let huge = get(&gate, "/v3/huge/index.json", &ro);
    assert_eq!(huge.status, 502);
    assert!(
        huge.text().contains("could not be rewritten"),
        "{}",
        huge.text()
    );
}
