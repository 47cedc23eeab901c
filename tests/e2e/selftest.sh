#!/usr/bin/env bash
# Checks registries.sh and clients.sh against the real registries directly (no proxy):
# starts a fresh set on free loopback ports, publishes/uploads/deploys then installs/gets
# with the stock clients, checks that wrong credentials fail, and stops everything.
#
#   tests/e2e/selftest.sh            (run install.sh first)
#
# Prints 'N passed, N failed' at the end; exits non-zero when a check failed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REG=$HERE/registries.sh
CLI=$HERE/clients.sh

WD=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-e2e-selftest.XXXXXX")
cleanup() {
  "$REG" stop "$WD" || true
  if [ "${E2E_KEEP_TMP:-0}" = 1 ]; then echo "kept $WD"; else rm -rf "$WD"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

t0=$(date +%s)
"$REG" start "$WD" "$(free_port)" "$(free_port)" "$(free_port)"
echo "start took $(($(date +%s) - t0))s"
# shellcheck disable=SC1091
. "$WD/registries.env"

pass=0 fail=0
expect() { # expect ok|fail DESCRIPTION CMD...
  local want=$1 what=$2 rc=0
  shift 2
  "$@" >"$WD/last.out" 2>&1 || rc=$?
  if { [ "$want" = ok ] && [ "$rc" = 0 ]; } || { [ "$want" = fail ] && [ "$rc" != 0 ]; }; then
    echo "PASS: $what (exit $rc)"
    pass=$((pass + 1))
  else
    echo "FAIL: $what (exit $rc, wanted $want)"
    sed 's/^/    /' "$WD/last.out" | tail -n 30
    fail=$((fail + 1))
  fi
}

PK=$WD/npm-packages
# npm, Bearer = Verdaccio token; URL without trailing slash on purpose for publish.
expect ok "npm publish (bearer)" "$CLI" npm-publish "${NPM_URL%/}" "$NPM_USER" "$NPM_UPSTREAM_TOKEN" "$PK" e2e-demo 1.0.0
expect ok "npm install (bearer)" "$CLI" npm-install "$NPM_URL" "$NPM_USER" "$NPM_UPSTREAM_TOKEN" e2e-demo 1.0.0
# Basic: Verdaccio takes user:password (not the token) in Basic.
expect ok "npm publish scoped (basic)" "$CLI" npm-publish "$NPM_URL" "$NPM_USER" "$NPM_PASSWORD" "$PK" @acme/lib 2.1.0 basic
expect ok "npm install scoped (basic)" "$CLI" npm-install "$NPM_URL" "$NPM_USER" "$NPM_PASSWORD" @acme/lib 2.1.0 basic
expect fail "npm install, wrong token" "$CLI" npm-install "$NPM_URL" "$NPM_USER" wrong e2e-demo 1.0.0
expect fail "npm publish, wrong token" "$CLI" npm-publish "$NPM_URL" "$NPM_USER" wrong "$PK" e2e-demo 1.0.1

expect ok "twine upload" "$CLI" twine-upload "$PYPI_URL" "$PYPI_USER" "$PYPI_PASSWORD" e2e-demo 1.0.0
expect ok "pip install" "$CLI" pip-install "$PYPI_SIMPLE_URL" "$PYPI_USER" "$PYPI_PASSWORD" e2e-demo 1.0.0
expect fail "twine upload, wrong password" "$CLI" twine-upload "$PYPI_URL" "$PYPI_USER" wrong e2e-demo 1.0.1
expect fail "pip install, wrong password" "$CLI" pip-install "$PYPI_SIMPLE_URL" "$PYPI_USER" wrong e2e-demo 1.0.0

expect ok "mvn deploy (basic)" "$CLI" mvn-deploy "$DAV_MAVEN_URL" "$DAV_USER" "$DAV_PASSWORD" com.acme.e2e demo-lib 1.0.0
expect ok "mvn get (basic)" "$CLI" mvn-get "$DAV_MAVEN_URL" "$DAV_USER" "$DAV_PASSWORD" com.acme.e2e demo-lib 1.0.0
expect fail "mvn deploy, wrong password" "$CLI" mvn-deploy "$DAV_MAVEN_URL" "$DAV_USER" wrong com.acme.e2e demo-lib 1.0.1
expect fail "mvn get, wrong password" "$CLI" mvn-get "$DAV_MAVEN_URL" "$DAV_USER" wrong com.acme.e2e demo-lib 1.0.0
expect ok "mvn deploy (Deploy-Token header, /noauth/)" "$CLI" mvn-deploy "$DAV_NOAUTH_URL" x tok-1 com.acme.e2e demo-lib 1.0.0 header
expect ok "mvn get (Deploy-Token header, /noauth/)" "$CLI" mvn-get "$DAV_NOAUTH_URL" x tok-1 com.acme.e2e demo-lib 1.0.0 header
if grep -q '"PUT /noauth/com/acme/e2e/demo-lib/1.0.0/demo-lib-1.0.0.jar HTTP/1.1" 201 .* deploy-token' "$WD/nginx-access.log"; then
  echo "PASS: nginx saw Deploy-Token on the maven PUT"; pass=$((pass + 1))
else
  echo "FAIL: nginx did not see Deploy-Token on the maven PUT"; fail=$((fail + 1))
fi

head -c 100000 /dev/urandom >"$WD/blob.bin"
expect ok "generic put (basic)" "$CLI" generic-put "${DAV_GENERIC_URL}acme/tools/1.0/blob.bin" "$DAV_PASSWORD" "$WD/blob.bin" "$DAV_USER"
expect ok "generic get (basic)" "$CLI" generic-get "${DAV_GENERIC_URL}acme/tools/1.0/blob.bin" "$DAV_PASSWORD" "$WD/blob.out" "$DAV_USER"
expect ok "generic round trip" cmp "$WD/blob.bin" "$WD/blob.out"
expect fail "generic get, Deploy-Token only (nginx wants Basic)" "$CLI" generic-get "${DAV_GENERIC_URL}acme/tools/1.0/blob.bin" tok-1 "$WD/blob.out2"
expect ok "generic put (Deploy-Token, /noauth/)" "$CLI" generic-put "${DAV_NOAUTH_URL}generic/blob.bin" tok-1 "$WD/blob.bin"
expect ok "generic get (Deploy-Token, /noauth/)" "$CLI" generic-get "${DAV_NOAUTH_URL}generic/blob.bin" tok-1 "$WD/blob.out3"

echo "selftest took $(($(date +%s) - t0))s"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
