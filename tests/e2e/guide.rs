//! The operator guide's client snippets, run verbatim: each block marked
//! ```` ```sh tested=NAME ```` in `docs/guide.md` runs in bash with a fresh
//! HOME and the CI variables set, followed by the client commands the guide
//! says come next, against real registries through tokengate. A snippet that
//! stops working fails here, so the guide cannot drift from what works.

use std::path::Path;
use std::process::Command;

use crate::common::Token;
use crate::conan::{start as start_conan, Conan};
use crate::git::start_backend;
use crate::nuget::Feed;
use crate::oci::{oci_gate, require, same_file, skopeo_push, Image, Registry};
use crate::{e2e_home, registries, start_gate, Cast};

const GUIDE: &str = include_str!("../../docs/guide.md");

/// The guide's snippet tagged `tested=name`.
fn snippet(name: &str) -> &'static str {
    let marker = format!("```sh tested={name}\n");
    let start = GUIDE
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/guide.md has no snippet {name}"))
        + marker.len();
    let len = GUIDE[start..].find("```").unwrap();
    &GUIDE[start..start + len]
}

/// Runs the snippet, then `then`, in one bash with a fresh HOME (also the
/// working directory) and the CI variables; returns the output.
fn run(name: &str, url: &str, token: &Token, home: &Path, then: &str) -> String {
    let home_str = home.to_str().unwrap();
    let path = format!(
        "{}:{}:{}",
        e2e_home().join("venv/bin").display(),
        e2e_home().join("conan/bin").display(),
        std::env::var("PATH").unwrap()
    );
    let script = format!("set -euo pipefail\n{}\n{then}\n", snippet(name));
    let out = Command::new("timeout")
        .args(["-k", "10", "600", "bash", "-c", &script])
        .current_dir(home)
        .env("HOME", home_str)
        .env("CONAN_HOME", home.join(".conan2"))
        .env("PATH", path)
        .env("TOKENGATE_URL", url)
        .env("CI_DEPLOY_USER", &token.username)
        .env("CI_DEPLOY_PASSWORD", &token.secret)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("NPM_CONFIG_USERCONFIG")
        .env_remove("DOCKER_CONFIG")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    let (success, text) = crate::common::outcome(&out);
    assert!(
        success,
        "the guide's {name} snippet failed:\n{}\n{text}",
        snippet(name)
    );
    text
}

#[test]
fn the_guide_s_tested_snippets_work_verbatim() {
    crate::require_prerequisites();
    let reg = registries();
    let gate = start_gate(reg);
    let Cast { rw, .. } = Cast::issue(&gate);
    let url = gate.url();

    // npm: the .npmrc, then publish and install.
    let home = tempfile::tempdir().unwrap();
    run(
        "npm",
        &url,
        &rw,
        home.path(),
        r#"mkdir pkg && cd pkg
printf '{"name":"tg-guide-npm","version":"1.0.0"}' > package.json
npm publish --no-audit --no-fund
mkdir ../app && cd ../app && printf '{"name":"app","version":"1.0.0"}' > package.json
npm install --no-audit --no-fund tg-guide-npm@1.0.0
test -f node_modules/tg-guide-npm/package.json"#,
    );

    // PyPI: the environment, then twine upload and pip install.
    let home = tempfile::tempdir().unwrap();
    run(
        "pypi",
        &url,
        &rw,
        home.path(),
        r#"mkdir -p src/tg_guide_pypi && touch src/tg_guide_pypi/__init__.py
printf '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n[project]\nname = "tg-guide-pypi"\nversion = "1.0.0"\n' > src/pyproject.toml
(cd src && python -m build --no-isolation --sdist --wheel --outdir ../dist . > /dev/null)
twine upload --non-interactive --disable-progress-bar dist/*
pip install --no-cache-dir --no-deps --target installed tg-guide-pypi==1.0.0
test -f installed/tg_guide_pypi/__init__.py"#,
    );

    // Generic: the upload and download lines themselves.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("app.tar.gz"), b"guide bytes \x00\x01\x02").unwrap();
    run(
        "generic",
        &url,
        &rw,
        home.path(),
        "cmp app.tar.gz app-copy.tar.gz",
    );

    // Conan 2: remote and login, then an authenticated listing.
    let work = tempfile::tempdir().unwrap();
    let (_server, conan_gate) = start_conan(Conan::V2, work.path());
    let conan_token = conan_gate.token(
        "project:acme/web",
        "read_package_registry,write_package_registry",
        &[],
    );
    let home = tempfile::tempdir().unwrap();
    let out = run(
        "conan",
        &conan_gate.url(),
        &conan_token,
        home.path(),
        "conan remote list-users",
    );
    assert!(
        out.contains(&conan_token.username) && out.contains("True"),
        "{out}"
    );
}

/// What the test adds after a Maven snippet: Debian's offline Maven repository
/// as the mirror of central (global settings, merged with the snippet's user
/// settings), then a deploy and, into an empty local repository, a download of
/// `com.acme.guide:ARTIFACT:1.0.0`.
fn maven_deploy_and_get(artifact: &str) -> String {
    format!(
        r#"cat > global.xml <<'EOF'
<settings>
  <mirrors><mirror><id>debian</id><mirrorOf>central</mirrorOf><url>file:///usr/share/maven-repo</url></mirror></mirrors>
  <profiles><profile><id>debian</id>
    <repositories><repository><id>central</id><url>file:///usr/share/maven-repo</url><releases><checksumPolicy>ignore</checksumPolicy></releases></repository></repositories>
    <pluginRepositories><pluginRepository><id>central</id><url>file:///usr/share/maven-repo</url><releases><checksumPolicy>ignore</checksumPolicy></releases></pluginRepository></pluginRepositories>
  </profile></profiles>
  <activeProfiles><activeProfile>debian</activeProfile></activeProfiles>
</settings>
EOF
mkdir content && echo '{artifact}' > content/guide.txt && (cd content && jar cf ../{artifact}.jar guide.txt)
mvn -B -ntp -Duser.home="$HOME" -gs global.xml org.apache.maven.plugins:maven-deploy-plugin:3.0.0:deploy-file \
  -Dfile={artifact}.jar -DgroupId=com.acme.guide -DartifactId={artifact} -Dversion=1.0.0 -Dpackaging=jar \
  -DgeneratePom=true -DrepositoryId=tokengate -Durl="$TOKENGATE_URL/maven/acme/web"
mvn -B -ntp -Duser.home="$HOME" -gs global.xml -Dmaven.repo.local="$HOME/fresh-m2" \
  org.apache.maven.plugins:maven-dependency-plugin:3.5.0:get -Dartifact=com.acme.guide:{artifact}:1.0.0 \
  -Dtransitive=false -DremoteRepositories="tokengate::default::$TOKENGATE_URL/maven/acme/web"
unzip -p fresh-m2/com/acme/guide/{artifact}/1.0.0/{artifact}-1.0.0.jar guide.txt"#
    )
}

#[test]
fn the_guide_s_maven_snippets_work_verbatim() {
    crate::require_prerequisites();
    let reg = registries();
    let gate = start_gate(reg);
    let Cast { rw, .. } = Cast::issue(&gate);
    for (snippet, artifact) in [("maven", "guide-basic"), ("maven-header", "guide-header")] {
        let home = tempfile::tempdir().unwrap();
        let out = run(
            snippet,
            &gate.url(),
            &rw,
            home.path(),
            &maven_deploy_and_get(artifact),
        );
        assert!(out.contains(artifact), "{out}");
        let settings = std::fs::read_to_string(home.path().join(".m2/settings.xml")).unwrap();
        assert!(
            !settings.contains(&rw.secret),
            "the settings name the variable, not the secret"
        );
        let stored = reg.dir.join(format!(
            "dav/maven/com/acme/guide/{artifact}/1.0.0/{artifact}-1.0.0.jar"
        ));
        assert!(stored.exists(), "{} was not deployed", stored.display());
    }
}

#[test]
fn the_guide_s_nuget_snippet_works_verbatim() {
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::start(work.path());
    let rw = feed.gate.token(
        "project:acme/web",
        "read_package_registry,write_package_registry",
        &[],
    );
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("my.1.0.0.nupkg"), &feed.package).unwrap();
    run("nuget", &feed.gate.url(), &rw, home.path(), "");
    let pushed: Vec<_> = feed
        .up
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT")
        .collect();
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert!(
        pushed[0]
            .body
            .windows(feed.package.len())
            .any(|w| w == feed.package),
        "the feed received the package"
    );
}

#[test]
fn the_guide_s_container_snippet_works_verbatim() {
    require("skopeo");
    require("docker");
    let work = tempfile::tempdir().unwrap();
    let image = Image::build(work.path(), 1 << 20);
    let reg_dir = work.path().join("reg");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let registry = Registry::start(&reg_dir, None);
    let gate = oci_gate(work.path(), Some(registry.port));
    let rw = gate.token("project:acme/web", "read_registry,write_registry", &[]);
    let host = format!("127.0.0.1:{}", gate.port);
    let push = skopeo_push(&image, &host, "acme/web/app", &rw);
    assert!(push.ok, "{}", push.output);

    // After the login, skopeo pulls with the credentials docker stored.
    let home = tempfile::tempdir().unwrap();
    run(
        "containers",
        &gate.url(),
        &rw,
        home.path(),
        r#"skopeo --insecure-policy copy --src-tls-verify=false "docker://${TOKENGATE_URL#*://}/acme/web/app:v1" oci:pulled:v1"#,
    );
    let pulled = home.path().join("pulled");
    assert!(same_file(
        &image.blob(&image.big),
        &crate::oci::blob_path(&pulled, &image.big)
    ));
}

#[test]
fn the_guide_s_git_snippet_works_verbatim() {
    let work = tempfile::tempdir().unwrap();
    let backend = start_backend(work.path());
    let gate = backend.gate();
    let reader = gate.token("project:acme/web", "read_repository", &[]);
    let home = tempfile::tempdir().unwrap();
    run("git", &gate.url(), &reader, home.path(), "cat web/README");
    assert_eq!(
        std::fs::read_to_string(home.path().join("web/README")).unwrap(),
        "first\n"
    );
    let config = std::fs::read_to_string(home.path().join(".gitconfig")).unwrap();
    assert!(!config.contains(&reader.secret), "{config}");
}
