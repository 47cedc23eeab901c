# Sourced by the bench scripts: a free port, and a release tokengate with one
# generic route to the upstream on $UP, its token in $TOKEN, its pid in $TG_PID.
# Needs $WORK, $TG, $UP, $GATE, $ADMIN; with $DECISION, the forward-auth
# decision listener too (trusting loopback). TG_SERVER_EXTRA: more [server]
# keys (e.g. TG_SERVER_EXTRA="workers = 0"). $BIND (default 127.0.0.1) is
# the address the upstream, the proxies and tokengate listen on.
BIND=${BIND:-127.0.0.1}

log() { printf '[bench] %s\n' "$*" >&2; }

# Stops the nginx instances and tokengate of the run and removes $WORK (trap cleanup EXIT).
cleanup() {
  local pid
  [ -n "${NETNS:-}" ] && ip netns del "$NETNS" 2>/dev/null
  for pid in "$WORK"/*.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  [ -n "${TG_PID:-}" ] && kill "$TG_PID" 2>/dev/null || true
  # shellcheck disable=SC2086
  [ -n "${BASELINE_PIDS:-}" ] && kill $BASELINE_PIDS 2>/dev/null || true
  sleep 0.5
  rm -rf "$WORK"
}

# need COMMAND PACKAGE: installs the Debian package when the command is missing.
need() {
  command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || {
    log "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  }
}

# nginx_conf NAME WORKERS SERVERS...: starts an nginx of WORKERS processes
# (`auto`: one per core) whose http block holds SERVERS; its pid in $WORK/NAME.pid.
nginx_conf() {
  local name=$1 workers=$2
  shift 2
  cat > "$WORK/$name.conf" <<EOF
worker_processes $workers;
pid $WORK/$name.pid;
error_log $WORK/logs/$name.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  $*
}
EOF
  "$(command -v nginx || echo /usr/sbin/nginx)" -c "$WORK/$name.conf" -p "$WORK/"
}

# nginx_proxy UPSTREAM: the location directives of an nginx proxy_pass to the
# upstream block UPSTREAM, keep-alive. With NGINX_FORWARDING=on (the default)
# nginx tells the upstream what tokengate tells it (X-Forwarded-For, -Proto
# and -Host, set rather than appended), as an nginx in front of a registry
# must for the registry to build its URLs; NGINX_FORWARDING=off is the bare
# proxy_pass of the benchmarks before the twenty-first machine (BENCHMARKS.md).
# Checked here, once: an `exit` inside the `$(nginx_proxy ...)` that writes a
# config would end only that subshell, and nginx would start on a broken file.
case ${NGINX_FORWARDING:=on} in
  on | off) ;;
  *) echo "NGINX_FORWARDING is on or off, not \"$NGINX_FORWARDING\"" >&2; exit 2 ;;
esac
nginx_proxy() {
  printf 'proxy_pass http://%s; proxy_http_version 1.1; proxy_set_header Connection "";' "$1"
  [ "$NGINX_FORWARDING" = off ] ||
    printf ' proxy_set_header X-Forwarded-%s;' 'For $remote_addr' 'Proto $scheme' 'Host $http_host'
}

# file_upstream: one nginx worker on $UP serving $WORK/www and taking PUTs
# under /up/ (WebDAV), bodies of any size: the streaming benchmarks' upstream.
file_upstream() {
  mkdir -p "$WORK/www/up" "$WORK/tmp"
  chmod 777 "$WORK/www/up" "$WORK/tmp"
  nginx_conf nginx 1 "server {
    listen $BIND:$UP;
    root $WORK/www;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    location /up/ { dav_methods PUT; create_full_put_path on; client_body_temp_path $WORK/tmp; }
  }"
}

# nginx_workers NAME: the pids of the worker processes of the nginx NAME.
nginx_workers() { pgrep -f "nginx: worker process" -P "$(cat "$WORK/$1.pid")" | tr '\n' ' '; }

# cpu_ticks PID...: the processes' summed utime+stime (all threads), in clock ticks.
cpu_ticks() {
  local total=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# median: the median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END { print a[int((NR+1)/2)] }'; }

# ratio A B: A / B to two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_tokengate ROUTE_PATH STRIP_PREFIX SCOPES
start_tokengate() {
  local forward_auth=""
  [ -z "${DECISION:-}" ] ||
    forward_auth=$(printf '[forward_auth]\nlisten = "127.0.0.1:%s"\ntrusted_peers = ["127.0.0.1"]' "$DECISION")
  cat > "$WORK/proxy.toml" <<CONF
[server]
listen = "$BIND:$GATE"
log_level = "warn"
${TG_SERVER_EXTRA:-}
[admin]
listen = "127.0.0.1:$ADMIN"
[store]
url = "sqlite://$WORK/tokens.db"
$forward_auth
[upstream.up]
url = "http://$BIND:$UP"
[[route]]
name = "web"
format = "generic"
path = "$1"
namespace = "acme/web"
upstream = "up"
strip_prefix = $2
CONF
  TOKEN=$("$TG" token create --project acme/web --name bench --scopes "$3" --config "$WORK/proxy.toml" 2>/dev/null | tail -1)
  "$TG" serve --config "$WORK/proxy.toml" 2> "$WORK/tokengate.log" &
  TG_PID=$!
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/healthz" 2>/dev/null && return 0
    sleep 0.1
  done
  log "tokengate did not start: $(tail -3 "$WORK/tokengate.log")"
  exit 1
}
