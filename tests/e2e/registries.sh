#!/usr/bin/env bash
# Starts / stops the real upstream registries used by the end-to-end tests, all on 127.0.0.1.
#
#   tests/e2e/registries.sh start WORKDIR NPM_PORT PYPI_PORT DAV_PORT
#   tests/e2e/registries.sh stop  WORKDIR
#
# start: WORKDIR should be a fresh (empty or missing) directory; everything (config, storage,
#   logs, pid files, temp files) lives under it. Starts
#     - Verdaccio 6.8.0 on 127.0.0.1:NPM_PORT (htpasswd auth, self-registration disabled,
#       packages '**' access/publish/unpublish $authenticated, no uplinks, web UI off) with a
#       user `proxy`; its bearer token (from PUT /-/user/org.couchdb.user:proxy) is recorded,
#     - pypiserver on 127.0.0.1:PYPI_PORT (htpasswd user `proxy`, -a update,download,list,
#       --disable-fallback),
#     - nginx WebDAV on 127.0.0.1:DAV_PORT: /maven/ and /generic/ (PUT DELETE MKCOL,
#       create_full_put_path, Basic auth user `proxy`), and /noauth/ (same, no auth).
#   waits until each answers (60 s max each) and writes WORKDIR/registries.env (KEY=VALUE).
#   Logs: WORKDIR/verdaccio.log, WORKDIR/pypiserver.log, WORKDIR/nginx-access.log (which records
#   the VALUES of the Authorization, Deploy-Token, Private-Token and Job-Token headers, so that
#   tests can prove no client secret is forwarded upstream), WORKDIR/nginx-error.log.
#   On failure, whatever was started is stopped again.
# stop: kills the servers whose pids are recorded under WORKDIR (TERM, then KILL after 10 s).
#
# Environment:
#   TOKENGATE_E2E_HOME  where install.sh put Verdaccio and the venv (default $HOME/.cache/tokengate-e2e)
#   E2E_DAV_AUTH        basic (default) or none: Basic auth on nginx /maven/ and /generic/
#   E2E_READY_TIMEOUT   seconds to wait for each server (default 60)
set -euo pipefail

E2E_HOME=${TOKENGATE_E2E_HOME:-$HOME/.cache/tokengate-e2e}
VD=$E2E_HOME/verdaccio
VENV=$E2E_HOME/venv
READY_TIMEOUT=${E2E_READY_TIMEOUT:-60}
DAV_AUTH=${E2E_DAV_AUTH:-basic}
UPSTREAM_USER=proxy

log() { printf '[registries] %s\n' "$*" >&2; }
die() { printf '[registries] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

randpw() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# pid_ours PID WORKDIR: true when PID runs and its command line or its working directory
# mentions WORKDIR (so a recycled pid is never killed). Verdaccio overwrites its process
# title with "verdaccio", so it is recognised by its cwd (WORKDIR/verdaccio).
pid_ours() {
  local pid=$1 wd=$2 cwd
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$wd" && return 0
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
  case $cwd in "$wd" | "$wd"/*) return 0 ;; esac
  return 1
}

stop_all() {
  local wd=$1 name pid n
  for name in verdaccio pypiserver nginx; do
    [ -f "$wd/$name.pid" ] || continue
    pid=$(cat "$wd/$name.pid")
    if pid_ours "$pid" "$wd"; then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      n=0
      while pid_ours "$pid" "$wd" && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
      if pid_ours "$pid" "$wd"; then
        log "$name (pid $pid) still running, KILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    rm -f "$wd/$name.pid"
  done
}

# wait_http NAME PID URL: poll until URL gives any HTTP status, or the process dies, or timeout.
wait_http() {
  local name=$1 pid=$2 url=$3 log=$4 t0 code
  t0=$(date +%s)
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null || true)
    if [ -n "$code" ] && [ "$code" != 000 ]; then
      log "$name ready on $url (HTTP $code) after $(($(date +%s) - t0))s"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) exited; last lines of $log:"
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    if [ $(($(date +%s) - t0)) -ge "$READY_TIMEOUT" ]; then
      log "$name not ready after ${READY_TIMEOUT}s; last lines of $log:"
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

check_port() {
  case $1 in '' | *[!0-9]*) die "bad port: '$1'" ;; esac
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; then
    die "something already answers on 127.0.0.1:$1"
  fi
}

json_field() { # json_field FIELD  (JSON on stdin)
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s)[process.argv[1]];if(v===undefined)process.exit(1);console.log(v)})' "$1"
}

start_verdaccio() {
  local wd=$1 port=$2 pw=$3 d=$1/verdaccio
  mkdir -p "$d/storage"
  # Pre-create the user (self-registration is off: max_users -1); {SHA} is one of
  # the formats Verdaccio's htpasswd plugin reads.
  printf '%s:{SHA}%s\n' "$UPSTREAM_USER" \
    "$(printf '%s' "$pw" | openssl dgst -binary -sha1 | openssl base64 -A)" >"$d/htpasswd"
  cat >"$d/config.yaml" <<EOF
storage: $d/storage
auth:
  htpasswd:
    file: $d/htpasswd
    max_users: -1
uplinks: {}
packages:
  '@*/*':
    access: \$authenticated
    publish: \$authenticated
    unpublish: \$authenticated
  '**':
    access: \$authenticated
    publish: \$authenticated
    unpublish: \$authenticated
listen: 127.0.0.1:$port
web:
  enable: false
log: { type: stdout, format: pretty, level: http }
EOF
  log "starting verdaccio on 127.0.0.1:$port"
  (cd "$d" && exec env -u VERDACCIO_PUBLIC_URL node "$VD/node_modules/verdaccio/bin/verdaccio" \
    --config "$d/config.yaml" >"$wd/verdaccio.log" 2>&1 </dev/null) &
  echo $! >"$wd/verdaccio.pid"
  wait_http verdaccio "$!" "http://127.0.0.1:$port/-/ping" "$wd/verdaccio.log"
}

start_pypiserver() {
  local wd=$1 port=$2 pw=$3 d=$1/pypi
  mkdir -p "$d/packages"
  "$VENV/bin/python" - "$d/htpasswd" "$UPSTREAM_USER" "$pw" <<'EOF'
import sys
from passlib.apache import HtpasswdFile
h = HtpasswdFile(sys.argv[1], new=True)
h.set_password(sys.argv[2], sys.argv[3])
h.save()
EOF
  log "starting pypiserver on 127.0.0.1:$port"
  (cd "$d" && exec "$VENV/bin/pypi-server" run -i 127.0.0.1 -p "$port" -P "$d/htpasswd" \
    -a update,download,list --disable-fallback -v "$d/packages" \
    >"$wd/pypiserver.log" 2>&1 </dev/null) &
  echo $! >"$wd/pypiserver.pid"
  wait_http pypiserver "$!" "http://127.0.0.1:$port/" "$wd/pypiserver.log"
}

start_nginx() {
  local wd=$1 port=$2 pw=$3 d=$1/nginx auth_lines=""
  mkdir -p "$d/tmp" "$wd/dav/maven" "$wd/dav/generic" "$wd/dav/noauth"
  if [ "$DAV_AUTH" = basic ]; then
    printf '%s:%s\n' "$UPSTREAM_USER" "$(openssl passwd -apr1 "$pw")" >"$d/htpasswd"
    auth_lines="auth_basic \"tokengate-e2e\"; auth_basic_user_file $d/htpasswd;"
  fi
  local user_line=""
  [ "$(id -u)" = 0 ] && user_line="user root;"
  cat >"$d/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $d/nginx.pid;
error_log $wd/nginx-error.log info;
events { worker_connections 256; }
http {
  default_type application/octet-stream;
  map \$http_authorization \$has_authz { "" "-"; default "authz"; }
  map \$http_deploy_token \$has_deploy_token { "" "-"; default "deploy-token"; }
  log_format e2e '\$remote_addr [\$time_local] "\$request" \$status \$body_bytes_sent '
                 'user=\$remote_user \$has_authz \$has_deploy_token expect=\$http_expect len=\$http_content_length "\$http_user_agent" '
                 'authorization="\$http_authorization" deploy_token="\$http_deploy_token" private_token="\$http_private_token" job_token="\$http_job_token"';
  access_log $wd/nginx-access.log e2e;
  client_body_temp_path $d/tmp/client_body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  client_max_body_size 0;
  sendfile on;
  server {
    listen 127.0.0.1:$port;
    server_name localhost;
    root $wd/dav;
    location / { return 404; }
    location /maven/ {
      $auth_lines
      dav_methods PUT DELETE MKCOL;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
      autoindex on;
    }
    location /generic/ {
      $auth_lines
      dav_methods PUT DELETE MKCOL;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
      autoindex on;
    }
    location /noauth/ {
      dav_methods PUT DELETE MKCOL;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
      autoindex on;
    }
  }
}
EOF
  local nginx_bin
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
  "$nginx_bin" -t -q -c "$d/nginx.conf" -p "$d/" -e "$wd/nginx-error.log" || die "nginx -t failed"
  log "starting nginx WebDAV on 127.0.0.1:$port (auth: $DAV_AUTH)"
  (cd "$d" && exec "$nginx_bin" -c "$d/nginx.conf" -p "$d/" -e "$wd/nginx-error.log" -g 'daemon off;' \
    >"$wd/nginx.out" 2>&1 </dev/null) &
  echo $! >"$wd/nginx.pid"
  wait_http nginx "$!" "http://127.0.0.1:$port/" "$wd/nginx-error.log"
}

cmd_start() {
  [ $# -eq 4 ] || usage
  local wd=$1 npm_port=$2 pypi_port=$3 dav_port=$4
  local t0
  t0=$(date +%s)
  for p in "$npm_port" "$pypi_port" "$dav_port"; do check_port "$p"; done
  [ -f "$VD/node_modules/verdaccio/bin/verdaccio" ] || die "verdaccio missing in $VD: run tests/e2e/install.sh"
  [ -x "$VENV/bin/pypi-server" ] || die "pypi-server missing in $VENV: run tests/e2e/install.sh"
  mkdir -p "$wd"
  wd=$(cd "$wd" && pwd)
  if [ -f "$wd/registries.env" ] || [ -f "$wd/verdaccio.pid" ]; then
    die "$wd already holds a started set; stop it and use a fresh WORKDIR"
  fi
  STARTED_WD=$wd
  trap 'if [ $? -ne 0 ]; then log "start failed, stopping what was started"; stop_all "$STARTED_WD"; fi' EXIT

  local npm_pw pypi_pw dav_pw
  npm_pw=$(randpw)
  pypi_pw=$(randpw)
  dav_pw=$(randpw)

  start_verdaccio "$wd" "$npm_port" "$npm_pw"
  start_pypiserver "$wd" "$pypi_port" "$pypi_pw"
  start_nginx "$wd" "$dav_port" "$dav_pw"

  # Log the upstream user in; Verdaccio answers 201 {"ok":...,"token":"..."}.
  local resp token
  resp=$(curl -sS --max-time 20 -u "$UPSTREAM_USER:$npm_pw" -X PUT -H 'Content-Type: application/json' \
    -d "{\"name\":\"$UPSTREAM_USER\",\"password\":\"$npm_pw\"}" \
    "http://127.0.0.1:$npm_port/-/user/org.couchdb.user:$UPSTREAM_USER") || die "verdaccio login failed"
  token=$(printf '%s' "$resp" | json_field token) || die "no token in verdaccio answer: $resp"
  # Check the token works.
  local who
  who=$(curl -sS --max-time 20 -H "Authorization: Bearer $token" "http://127.0.0.1:$npm_port/-/whoami" |
    json_field username) || die "verdaccio whoami with the token failed"
  [ "$who" = "$UPSTREAM_USER" ] || die "verdaccio whoami says '$who'"

  local env=$wd/registries.env
  {
    echo "E2E_WORKDIR=$wd"
    echo "NPM_URL=http://127.0.0.1:$npm_port/"
    echo "NPM_PORT=$npm_port"
    echo "NPM_USER=$UPSTREAM_USER"
    echo "NPM_PASSWORD=$npm_pw"
    echo "NPM_UPSTREAM_TOKEN=$token"
    echo "NPM_PID=$(cat "$wd/verdaccio.pid")"
    echo "PYPI_URL=http://127.0.0.1:$pypi_port/"
    echo "PYPI_SIMPLE_URL=http://127.0.0.1:$pypi_port/simple/"
    echo "PYPI_PORT=$pypi_port"
    echo "PYPI_USER=$UPSTREAM_USER"
    echo "PYPI_PASSWORD=$pypi_pw"
    echo "PYPI_PID=$(cat "$wd/pypiserver.pid")"
    echo "DAV_URL=http://127.0.0.1:$dav_port/"
    echo "DAV_MAVEN_URL=http://127.0.0.1:$dav_port/maven/"
    echo "DAV_GENERIC_URL=http://127.0.0.1:$dav_port/generic/"
    echo "DAV_NOAUTH_URL=http://127.0.0.1:$dav_port/noauth/"
    echo "DAV_PORT=$dav_port"
    echo "DAV_AUTH=$DAV_AUTH"
    if [ "$DAV_AUTH" = basic ]; then
      echo "DAV_USER=$UPSTREAM_USER"
      echo "DAV_PASSWORD=$dav_pw"
    else
      echo "DAV_USER="
      echo "DAV_PASSWORD="
    fi
    echo "DAV_PID=$(cat "$wd/nginx.pid")"
  } >"$env.tmp"
  mv "$env.tmp" "$env"
  trap - EXIT
  log "all started in $(($(date +%s) - t0))s; wrote $env"
}

cmd_stop() {
  [ $# -eq 1 ] || usage
  local wd=$1
  [ -d "$wd" ] || die "no such WORKDIR: $wd"
  wd=$(cd "$wd" && pwd)
  stop_all "$wd"
  log "stopped"
}

case ${1:-} in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) usage ;;
esac
