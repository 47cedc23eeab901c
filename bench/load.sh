#!/usr/bin/env bash
# Side-by-side load benchmark on loopback. The same small upstream (nginx
# returning a 1 KiB body) is reached four ways, and wrk loads each in turn,
# alternating the targets round by round so drift hits all of them alike:
#
#   direct        wrk -> upstream
#   nginx         wrk -> nginx proxy_pass (keep-alive to the upstream, setting the
#                 forwarding headers tokengate sets: NGINX_FORWARDING in common.sh) -> upstream
#   tokengate     wrk -> tokengate (warm deploy token) -> upstream
#   auth_request  wrk -> nginx auth_request (tokengate's forward-auth decision
#                 listener, GET /nginx) -> upstream: nginx stays in the data path
#
# For each: requests/s, p50/p99 latency and CPU time per request of the
# serving processes (from /proc), then the ratios against the targets.
#
# Then the p99 latency tokengate adds at half its peak (paced load, bench/paced.lua,
# alternating rounds as above; nginx proxy_pass's added p99 is printed for scale),
# and the latency each proxy adds with one connection (nothing queued).
#
#   bench/load.sh [SECONDS_PER_ROUND] [ROUNDS] [CONNECTIONS]     (default 10 3 64)
#
# Needs: wrk and nginx (apt), a release build (built here if missing).
# Environment: TOKENGATE_BIN (default target/release/tokengate; e.g. the
# `profiling` profile's build for perf), TARGETS (default the four above),
# NGINX_FORWARDING (on, the default, or off: see nginx_proxy in bench/common.sh).
# The ceiling targets `hyper-shared`, `hyper-per-core` and `hyper-own-pool`
# run bench/hyper-baseline, a bare hyper proxy (no auth) in each layout, to
# tell what hyper costs on this machine from what tokengate adds, e.g.
#   TARGETS="nginx tokengate hyper-shared hyper-per-core hyper-own-pool" bench/load.sh
# (HYPER_BASELINE_THREADS=4 on two cores: as many threads as tokengate's default).
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
SECS=${1:-10}
ROUNDS=${2:-3}
CONNS=${3:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/tokengate-bench.XXXXXX)
need wrk wrk
need nginx nginx
TG=${TOKENGATE_BIN:-$ROOT/target/release/tokengate}
[ -x "$TG" ] || (cd "$ROOT" && cargo build --release --bin tokengate)

UP=$(free_port); PROXY=$(free_port); AUTHREQ=$(free_port); GATE=$(free_port); ADMIN=$(free_port)
DECISION=$(free_port)

trap cleanup EXIT

# Every target fetches the same file, so the upstream's work is the same for all.
FILE=/generic/acme/web/file
mkdir -p "$WORK/www/generic/acme/web" "$WORK/logs"
chmod 755 "$WORK"   # nginx workers run unprivileged
head -c 1024 /dev/zero | tr '\0' 'x' > "$WORK/www$FILE"

# One nginx (a worker per core, as nginx advises; tokengate: its default) serves the
# upstream and the proxy_pass and auth_request servers. NGINX_LAYOUT=separate
# runs the proxies as a second nginx of their own instead: on a machine where
# wrk and every server share the cores, nginx then has twice the processes
# competing for them, which moved its proxy_pass figure by a sixth (BENCHMARKS.md).
NGINX_LAYOUT=${NGINX_LAYOUT:-shared}
upstream_server="server { listen 127.0.0.1:$UP; root $WORK/www; location / { } }"
proxy_servers=$(cat <<EOF
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  upstream decision { server 127.0.0.1:$DECISION; keepalive 64; }
  server {
    listen 127.0.0.1:$PROXY;
    location / { $(nginx_proxy up) }
  }
  server {
    listen 127.0.0.1:$AUTHREQ;
    location / {
      auth_request /check;
      $(nginx_proxy up)
    }
    location = /check {
      internal;
      proxy_pass http://decision/nginx;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Original-URI \$request_uri;
      proxy_http_version 1.1; proxy_set_header Connection "";
    }
  }
EOF
)
case $NGINX_LAYOUT in
  separate)
    nginx_conf nginx auto "$upstream_server"
    nginx_conf proxy-nginx auto "$proxy_servers"
    ;;
  shared) nginx_conf nginx auto "$upstream_server" "$proxy_servers" ;;
  *) echo "NGINX_LAYOUT is separate or shared" >&2; exit 2 ;;
esac

start_tokengate /generic/acme/web false read_package_registry

read -r -a TARGETS <<<"${TARGETS:-direct nginx tokengate auth_request}"
declare -A URL PIDS
for t in "${TARGETS[@]}"; do
  case $t in
    hyper-shared | hyper-per-core | hyper-own-pool)
      layout=${t#hyper-}
      [ "$layout" = own-pool ] && layout=per-core-own-pool
      cargo build -q --release --manifest-path "$ROOT/bench/hyper-baseline/Cargo.toml"
      port=$(free_port)
      "$ROOT/bench/hyper-baseline/target/release/hyper-baseline" "$layout" "127.0.0.1:$port" "127.0.0.1:$UP" &
      BASELINE_PIDS="${BASELINE_PIDS:-} $!"
      URL[$t]="http://127.0.0.1:$port$FILE"; PIDS[$t]="$! NGINX_PIDS"
      ;;
  esac
done
sleep 0.5

NGINX_PIDS=$(nginx_workers nginx)
PROXY_NGINX_PIDS=$NGINX_PIDS
[ "$NGINX_LAYOUT" = shared ] || PROXY_NGINX_PIDS="$(nginx_workers proxy-nginx) $NGINX_PIDS"
HZ=$(getconf CLK_TCK)

for t in "${!PIDS[@]}"; do PIDS[$t]=${PIDS[$t]/NGINX_PIDS/$NGINX_PIDS}; done
URL[direct]="http://127.0.0.1:$UP$FILE";             PIDS[direct]="$NGINX_PIDS"
URL[nginx]="http://127.0.0.1:$PROXY$FILE";           PIDS[nginx]="$PROXY_NGINX_PIDS"
URL[tokengate]="http://127.0.0.1:$GATE$FILE";        PIDS[tokengate]="$TG_PID $NGINX_PIDS"
URL[auth_request]="http://127.0.0.1:$AUTHREQ$FILE";  PIDS[auth_request]="$TG_PID $PROXY_NGINX_PIDS"

for t in "${TARGETS[@]}"; do : > "$WORK/$t.runs"; done
log "warm-up"
for t in "${TARGETS[@]}"; do wrk -t2 -c"$CONNS" -d2s -H "Deploy-Token: $TOKEN" "${URL[$t]}" >/dev/null; done
for round in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    before=$(cpu_ticks ${PIDS[$t]})
    out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -H "Deploy-Token: $TOKEN" "${URL[$t]}")
    # shellcheck disable=SC2086
    after=$(cpu_ticks ${PIDS[$t]})
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    [ -z "$non2xx" ] || { log "$t: $non2xx non-2xx answers"; exit 1; }
    cpu_us=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$total" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    echo "$rps $p50 $p99 $cpu_us" >> "$WORK/$t.runs"
    log "round $round $t: $rps req/s, p50 $p50, p99 $p99, ${cpu_us} µs CPU/req"
  done
done

to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms/,"",v) } else if (v ~ /s$/) { sub(/s/,"",v); v*=1000 } printf "%.3f", v }' <<<"$1"; }
declare -A RPS
printf '\n| target | requests/s | p50 | p99 | CPU µs/request |\n|---|---|---|---|---|\n'
for t in "${TARGETS[@]}"; do
  RPS[$t]=$(awk '{print $1}' "$WORK/$t.runs" | median)
  p50=$(awk '{print $2}' "$WORK/$t.runs" | while read -r v; do to_ms "$v"; echo; done | median)
  p99=$(awk '{print $3}' "$WORK/$t.runs" | while read -r v; do to_ms "$v"; echo; done | median)
  cpu=$(awk '{print $4}' "$WORK/$t.runs" | median)
  printf '| %s | %.0f | %s ms | %s ms | %s |\n' "$t" "${RPS[$t]}" "$p50" "$p99" "$cpu"
done
if [ "${TARGETS[*]}" != "direct nginx tokengate auth_request" ]; then
  if [ -n "${RPS[nginx]:-}" ]; then
    for t in "${TARGETS[@]}"; do
      case $t in hyper-* | tokengate) echo "$t / nginx proxy_pass throughput: $(ratio "${RPS[$t]}" "${RPS[nginx]}")" ;; esac
    done
  fi
  exit 0
fi

# Added latency at half of tokengate's peak: direct, nginx and tokengate under
# the same paced load (bench/paced.lua), each connection pausing so that all
# together offer about half the peak, alternating over the rounds as above; the
# median p99 difference from direct is what a proxy adds (nginx's, for scale).
HALF=$(awk -v r="${RPS[tokengate]}" 'BEGIN { printf "%d", r / 2 }')
DELAY=$(awk -v c="$CONNS" -v r="$HALF" 'BEGIN { printf "%d", c * 1000 / r }')
PACED=(direct nginx tokengate)

# latency_rounds NAME LABEL WRK_ARGS...: $ROUNDS rounds over the PACED targets in
# turn, each a line "requests/s p50 p99" (ms) of $WORK/<target>.NAME.
latency_rounds() {
  local name=$1 label=$2 round t out rps p50 p99
  shift 2
  for t in "${PACED[@]}"; do : > "$WORK/$t.$name"; done
  for round in $(seq "$ROUNDS"); do
    for t in "${PACED[@]}"; do
      out=$(wrk "$@" -d"${SECS}s" --latency -H "Deploy-Token: $TOKEN" "${URL[$t]}")
      rps=$(awk '/^Requests\/sec/ {printf "%d", $2}' <<<"$out")
      p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
      p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
      echo "$rps $p50 $p99" >> "$WORK/$t.$name"
      log "$label round $round $t: $rps req/s, p50 $p50 ms, p99 $p99 ms"
    done
  done
}
# column NAME TARGET N: the median over the rounds of field N.
column() { awk -v n="$3" '{print $n}' "$WORK/$2.$1" | median; }

export WRK_DELAY_MS=$DELAY
latency_rounds paced paced -t2 -c"$CONNS" -s "$ROOT/bench/paced.lua"
# What one hop costs with nothing queued: one connection, one request at a
# time, so the paced figure's share of waiting for the shared cores shows
# apart from the hop itself.
latency_rounds single "one connection," -t1 -c1
declare -A PACED_RPS PACED_P99 SINGLE_RPS SINGLE_P50 SINGLE_P99
for t in "${PACED[@]}"; do
  PACED_RPS[$t]=$(column paced "$t" 1)
  SINGLE_RPS[$t]=$(column single "$t" 1)
  PACED_P99[$t]=$(column paced "$t" 3)
  SINGLE_P50[$t]=$(column single "$t" 2)
  SINGLE_P99[$t]=$(column single "$t" 3)
done
added() { awk -v a="${PACED_P99[$1]}" -v b="${PACED_P99[direct]}" 'BEGIN { printf "%.3f", a - b }'; }
single_added() {
  awk -v a50="${SINGLE_P50[$1]}" -v b50="${SINGLE_P50[direct]}" -v a99="${SINGLE_P99[$1]}" \
    -v b99="${SINGLE_P99[direct]}" 'BEGIN { printf "p50 %.3f ms, p99 %.3f ms", a50 - b50, a99 - b99 }'
}
echo
echo "tokengate / nginx proxy_pass throughput: $(ratio "${RPS[tokengate]}" "${RPS[nginx]}") (target >= 0.9)"
echo "tokengate / nginx auth_request throughput: $(ratio "${RPS[tokengate]}" "${RPS[auth_request]}") (target >= 1.5)"
echo "p99 added latency at half of peak (~$HALF req/s offered; direct ${PACED_RPS[direct]}, tokengate ${PACED_RPS[tokengate]} req/s served): $(added tokengate) ms (p99 ${PACED_P99[tokengate]} vs ${PACED_P99[direct]} ms; target <= 1 ms)"
echo "  for scale, nginx proxy_pass under the same pacing (${PACED_RPS[nginx]} req/s served): $(added nginx) ms (p99 ${PACED_P99[nginx]} ms)"
echo "added with one connection (nothing queued): tokengate $(single_added tokengate); nginx proxy_pass $(single_added nginx); tokengate / nginx requests/s $(ratio "${SINGLE_RPS[tokengate]}" "${SINGLE_RPS[nginx]}")"
echo "runs: $ROUNDS x ${SECS}s per target, $CONNS connections, wrk -t2; nginx layout: $NGINX_LAYOUT, forwarding headers $NGINX_FORWARDING; tokengate: ${TG_SERVER_EXTRA:-defaults}; $(nproc) cores; $(date -u +%F)"
