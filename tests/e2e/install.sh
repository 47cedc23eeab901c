#!/usr/bin/env bash
# Installs the real registries and clients used by the end-to-end tests.
# Idempotent: every step is skipped when what it installs is already there.
#
#   tests/e2e/install.sh
#
# Environment:
#   TOKENGATE_E2E_HOME  where Verdaccio and the Python venv go
#                       (default: $HOME/.cache/tokengate-e2e)
#
# Installs (Debian 12, as root): nginx (with http_dav_module), maven and the Debian
# Maven plugin packages used offline (file:///usr/share/maven-repo), junit4, curl,
# openssl; Verdaccio 6.8.0 under $TOKENGATE_E2E_HOME/verdaccio; a venv with
# pypiserver, passlib, twine, build under $TOKENGATE_E2E_HOME/venv.
set -euo pipefail

E2E_HOME=${TOKENGATE_E2E_HOME:-$HOME/.cache/tokengate-e2e}
VERDACCIO_VERSION=6.8.0
# Pinned Python packages (the versions that were verified; see NOTES.md).
PY_PACKAGES=(pypiserver==2.4.2 passlib==1.7.4 twine==7.0.0 build==1.6.1 python-gitlab==8.6.0 kubernetes-validate==1.37.0 check-jsonschema==0.39.0 setuptools wheel)
# Conan 2 client and server, in a venv of their own (they pin their own dependencies).
CONAN_PACKAGES=(conan==2.34.0 conan-server==2.33.0)
# Conan 1 (client and server in one package): the v1 API with pre-signed file URLs.
CONAN1_PACKAGES=(conan==1.66.0)

log() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

start_ts=$(date +%s)
mkdir -p "$E2E_HOME"

# ---------------------------------------------------------------- apt packages
APT_PACKAGES=(nginx curl openssl ca-certificates maven libmaven-deploy-plugin-java
  libmaven-dependency-plugin-java libmaven-install-plugin-java junit4
  docker-registry skopeo fcgiwrap nuget chromium chromium-driver)

pkg_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    die "need root to apt-get install: $*"
  fi
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  # Never let a package's postinst start a system service (Debian's nginx would
  # listen on 0.0.0.0:80). Use a temporary policy-rc.d when none exists.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  log "apt-get install $*"
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" || rc=$?
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  [ "$rc" = 0 ] || die "apt-get install failed ($rc)"
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  pkg_installed "$p" || missing+=("$p")
done
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
else
  log "apt packages present: ${APT_PACKAGES[*]}"
fi

# The Debian nginx service must not be running (it binds 0.0.0.0:80); we start
# our own instances. Stop it only if the package just started it.
if [ "${#missing[@]}" -gt 0 ] && [ -f /run/nginx.pid ]; then
  log "stopping the system nginx started by the package install"
  kill "$(cat /run/nginx.pid)" 2>/dev/null || true
fi

NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX_BIN" ] || die "nginx binary not found"
if ! "$NGINX_BIN" -V 2>&1 | grep -q -- '--with-http_dav_module'; then
  die "$NGINX_BIN lacks http_dav_module"
fi
log "nginx: $("$NGINX_BIN" -v 2>&1) (http_dav_module ok)"

for plugin in maven-deploy-plugin maven-dependency-plugin maven-install-plugin; do
  d=/usr/share/maven-repo/org/apache/maven/plugins/$plugin
  [ -d "$d" ] || die "$d missing"
  log "maven plugin $plugin: $(ls "$d" | tr '\n' ' ')"
done
log "maven: $(mvn -B -v 2>/dev/null | head -1 | sed "s/\x1b\[[0-9;]*m//g")"

# ---------------------------------------------------------------- Verdaccio
VD=$E2E_HOME/verdaccio
verdaccio_ok() {
  [ -x "$VD/node_modules/.bin/verdaccio" ] &&
    [ "$(node -p "require('$VD/node_modules/verdaccio/package.json').version" 2>/dev/null)" = "$VERDACCIO_VERSION" ]
}
if verdaccio_ok; then
  log "verdaccio $VERDACCIO_VERSION present in $VD"
else
  log "installing verdaccio@$VERDACCIO_VERSION into $VD"
  mkdir -p "$VD"
  # verdaccio 6.9+ needs Node 22; its install fails on node-fetch@cjs without this override.
  cat >"$VD/package.json" <<'EOF'
{"private":true,"overrides":{"node-fetch@cjs":"2.7.0"}}
EOF
  (cd "$VD" && npm install --no-audit --no-fund --loglevel=error "verdaccio@$VERDACCIO_VERSION") ||
    die "npm install verdaccio failed"
  verdaccio_ok || die "verdaccio install did not produce node_modules/.bin/verdaccio $VERDACCIO_VERSION"
fi

# ---------------------------------------------------------------- Python venv
VENV=$E2E_HOME/venv
venv_ok() {
  [ -x "$VENV/bin/pypi-server" ] && [ -x "$VENV/bin/twine" ] &&
    "$VENV/bin/python" -c 'import build, check_jsonschema, gitlab, kubernetes_validate, passlib, pypiserver, twine, setuptools, wheel' 2>/dev/null
}
if venv_ok; then
  log "venv present in $VENV"
else
  if [ ! -x "$VENV/bin/python" ]; then
    PY=${PYTHON:-python3}
    log "creating venv $VENV with $PY"
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      log "'$PY -m venv' failed; installing python3-venv"
      pkg_installed python3-venv || apt_install python3-venv
      /usr/bin/python3 -m venv "$VENV" || die "venv creation failed"
    fi
  fi
  log "pip install ${PY_PACKAGES[*]}"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}" ||
    die "pip install failed"
  venv_ok || die "venv incomplete after pip install"
fi
log "python packages: $("$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null |
  grep -iE '^(pypiserver|passlib|twine|build|setuptools|wheel) ' | tr -s ' ' | tr '\n' ';')"

# ---------------------------------------------------------------- Conan venvs
# conan_venv DIR LABEL PACKAGES...: a venv with conan (and conan_server) unless present.
conan_venv() {
  local dir=$1 label=$2
  shift 2
  if [ -x "$dir/bin/conan" ] && [ -x "$dir/bin/conan_server" ]; then
    log "$label venv present in $dir"
  else
    [ -x "$dir/bin/python" ] || "$VENV/bin/python" -m venv "$dir" || die "$label venv creation failed"
    log "pip install $*"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" ||
      die "pip install of $label failed"
  fi
  log "$label: $("$dir/bin/conan" --version 2>/dev/null)"
}
conan_venv "$E2E_HOME/conan" "conan" "${CONAN_PACKAGES[@]}"
conan_venv "$E2E_HOME/conan1" "conan 1" "${CONAN1_PACKAGES[@]}"

log "done in $(($(date +%s) - start_ts))s (home: $E2E_HOME)"
