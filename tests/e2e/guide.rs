//! The operator guide's client snippets, run verbatim: each block marked
//! ```` ```sh tested=NAME ```` in `docs/guide.md` runs in bash with a fresh
//! HOME and the CI variables set, followed by the client commands the guide
//! says come next, against real registries through tokengate. A snippet that
//! stops working fails here, so the guide cannot drift from what works.

use std::path::Path;
use std::process::Command;

use crate::common::Token;
use crate::conan::{start as start_conan, Conan};
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
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(home)
        .env("HOME", home_str)
        .env("CONAN_HOME", home.join(".conan2"))
        .env("PATH", path)
        .env("TOKENGATE_URL", url)
        .env("CI_DEPLOY_USER", &token.username)
        .env("CI_DEPLOY_PASSWORD", &token.secret)
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("NPM_CONFIG_USERCONFIG")
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
