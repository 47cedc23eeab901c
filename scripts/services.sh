#!/usr/bin/env bash
# Makes sure the real services the tests use are installed and running:
# PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth on loopback) and
# Redis on 127.0.0.1:6379. Tests that kill a server start their own
# redis-server on their own port; only the binaries are needed for those.
# Idempotent; installs with apt-get (Debian) when something is missing.
#
# Environment: TOKENGATE_TEST_POSTGRES (default postgres://postgres@127.0.0.1:5432)
# names another PostgreSQL server; then none is installed or started here.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to apt-get install: $*"
  log "apt-get install $*"
  apt-get update -qq
  # Package scripts must not start services on their own; started below.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  [ "$made_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
}

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$name did not come up"
}

# ------------------------------------------------------------------- Redis
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server redis-tools
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
fi
log "Redis: $(redis-server --version | cut -d' ' -f3) on 127.0.0.1:6379"

# -------------------------------------------------------------- PostgreSQL
if [ -n "${TOKENGATE_TEST_POSTGRES:-}" ]; then
  log "PostgreSQL: using $TOKENGATE_TEST_POSTGRES"
  exit 0
fi
command -v psql >/dev/null || apt_install postgresql-client
pg_ok() { psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1'; }
if ! pg_ok >/dev/null 2>&1; then
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql
  fi
  version=$(ls /etc/postgresql | sort -V | tail -1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    log "allowing trust auth for loopback in $hba (test machines only)"
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  wait_for PostgreSQL pg_ok
fi
log "PostgreSQL: $(pg_ok >/dev/null && psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'show server_version') on 127.0.0.1:5432"
