#!/usr/bin/env bash
# Where a proxied request's CPU goes, process by process: nginx proxy_pass
# and tokengate in turn in front of the same upstream nginx (1 KiB file),
# each loaded by wrk, reporting per request the proxy's user and system CPU
# and context switches (voluntary: it slept waiting for work; involuntary:
# preempted), the upstream's CPU and wrk's own CPU.
#
#   bench/breakdown.sh [shared|dedicated] [SECONDS] [CONNECTIONS] [ROUNDS]
#                                                     (default shared 10 64 2)
#
# shared: every process may run on every core (as bench/load.sh), the proxies
#   nginx with a worker per core, tokengate with its default (two per core).
# dedicated: the proxy alone on CPU 0 (nginx: one worker), wrk (one thread)
#   and the upstream on the other cores: a proxy with a core of its own.
#   Throughput is then capped by the load side (compare the `direct` row);
#   CPU per request is the figure to read.
#
# TG_SERVER_EXTRA adds [server] keys to tokengate's config, e.g.
#   TG_SERVER_EXTRA="workers = 1" bench/breakdown.sh dedicated
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
LAYOUT=${1:-shared}
SECS=${2:-10}
CONNS=${3:-64}
ROUNDS=${4:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/tokengate-breakdown.XXXXXX)
TG=${TOKENGATE_BIN:-$ROOT/target/release/tokengate}
need wrk wrk
need nginx nginx
[ -x "$TG" ] || (cd "$ROOT" && cargo build --release --bin tokengate)
UP=$(free_port); PROXY=$(free_port); GATE=$(free_port); ADMIN=$(free_port)
trap cleanup EXIT

mkdir -p "$WORK/www/generic/acme/web" "$WORK/logs"
chmod 755 "$WORK"
FILE=/generic/acme/web/file   # every target fetches the same file
head -c 1024 /dev/zero | tr '\0' 'x' > "$WORK/www$FILE"

LOAD_CPUS=1-$(($(nproc) - 1))   # dedicated: wrk's and the upstream's
case $LAYOUT in
  shared) PROXY_WORKERS=auto; WRK=(wrk -t"$(( CONNS < 2 ? 1 : 2 ))") ;;
  dedicated) PROXY_WORKERS=1; WRK=(taskset -c "$LOAD_CPUS" wrk -t1) ;;
  *) echo "usage: bench/breakdown.sh [shared|dedicated] [SECONDS] [CONNECTIONS] [ROUNDS]" >&2; exit 2 ;;
esac
nginx_conf upstream auto "server { listen 127.0.0.1:$UP; root $WORK/www; location / { } }"
nginx_conf proxy "$PROXY_WORKERS" "upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$PROXY;
    location / { $(nginx_proxy up) }
  }"
start_tokengate /generic/acme/web false read_package_registry
sleep 0.5
UPSTREAM_PIDS=$(nginx_workers upstream)
PROXY_PIDS=$(nginx_workers proxy)
if [ "$LAYOUT" = dedicated ]; then
  # -a: every thread; threads started later inherit their creator's CPUs.
  for p in $(cat "$WORK/proxy.pid") $PROXY_PIDS $TG_PID; do taskset -a -c -p 0 "$p" >/dev/null; done
  for p in $(cat "$WORK/upstream.pid") $UPSTREAM_PIDS; do taskset -a -c -p "$LOAD_CPUS" "$p" >/dev/null; done
fi

# usage PID...: utime and stime ticks, voluntary and involuntary switches, over all their threads.
usage() {
  local p
  for p in "$@"; do cat /proc/"$p"/task/*/stat; done | awk '{u += $14; s += $15} END {printf "%d %d ", u, s}'
  for p in "$@"; do cat /proc/"$p"/task/*/status; done |
    awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v, n}'
}
HZ=$(getconf CLK_TCK)
printf '| round | target | requests/s | p99 | proxy user µs | proxy system µs | proxy sleeps | proxy preemptions | upstream µs | wrk µs |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
for round in $(seq "$ROUNDS"); do
  for target in direct nginx tokengate; do
    case $target in
      direct) url=http://127.0.0.1:$UP$FILE; pids="" ;;
      nginx) url=http://127.0.0.1:$PROXY$FILE; pids=$PROXY_PIDS ;;
      tokengate) url=http://127.0.0.1:$GATE$FILE; pids=$TG_PID ;;
    esac
    # shellcheck disable=SC2086
    read -r user0 system0 v0 n0 < <(usage $pids)
    # shellcheck disable=SC2086
    u0=$(cpu_ticks $UPSTREAM_PIDS)
    out=$({ TIMEFORMAT='%U %S'; time "${WRK[@]}" -c"$CONNS" -d"${SECS}s" --latency \
      -H "Deploy-Token: $TOKEN" "$url"; } 2>"$WORK/wrk.time")
    # shellcheck disable=SC2086
    read -r user1 system1 v1 n1 < <(usage $pids)
    # shellcheck disable=SC2086
    u1=$(cpu_ticks $UPSTREAM_PIDS)
    awk -v round="$round" -v target="$target" -v hz="$HZ" -v user=$((user1 - user0)) \
      -v sys=$((system1 - system0)) -v v=$((v1 - v0)) -v n=$((n1 - n0)) -v u=$((u1 - u0)) \
      -v rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")" \
      -v p99="$(awk '$1=="99%" {print $2}' <<<"$out")" \
      -v requests="$(awk '/requests in/ {print $1}' <<<"$out")" \
      -v wrk="$(cat "$WORK/wrk.time")" 'BEGIN {
        per = 1e6 / hz / requests
        split(wrk, w, " ")
        if (target == "direct") { printf "| %d | direct | %.0f | %s | - | - | - | - |", round, rps, p99 }
        else printf "| %d | %s | %.0f | %s | %.1f | %.1f | %.3f | %.3f |", round, target, rps, p99,
          user * per, sys * per, v / requests, n / requests
        printf " %.1f | %.1f |\n", u * per, (w[1] + w[2]) * 1e6 / requests
      }'
  done
done
echo "layout: $LAYOUT; $CONNS connections; ${SECS}s per row; nginx forwarding headers $NGINX_FORWARDING; $(nproc) cores; ${TG_SERVER_EXTRA:-tokengate defaults}; $(date -u +%F)"
