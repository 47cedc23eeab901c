#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: unlike
# wall-clock figures they repeat on a noisy VM (BENCHMARKS.md, "Changes,
# measured"). The same 1 KiB file from nginx, through the proxy, wrk -t1 -c4
# for 20 s after a 3 s warm-up; counters zeroed after start-up, so the count
# is the whole process's steady state divided by the requests served.
#
#   bench/callgrind.sh [tokengate|hyper-baseline]     (default tokengate)
#
# CONNS (default 4) sets wrk's connections: work that grows with the number
# of connections in flight (idle pools, say) shows only with more.
#
# tokengate runs the `profiling` build (release code with line tables, built
# here if missing; TOKENGATE_BIN names another build, e.g. target/release/tokengate);
# hyper-baseline the bare hyper proxy (per core, own pool).
# The callgrind file is kept as $OUT (default /tmp/tokengate.callgrind) for
# `callgrind_annotate --inclusive=yes $OUT`.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
TARGET=${1:-tokengate}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/tokengate-callgrind.XXXXXX)
OUT=${OUT:-/tmp/$TARGET.callgrind}
need wrk wrk
need nginx nginx
need valgrind valgrind
UP=$(free_port); GATE=$(free_port); ADMIN=$(free_port)
trap cleanup EXIT
mkdir -p "$WORK/www" "$WORK/logs"
chmod 755 "$WORK"
head -c 1024 /dev/zero | tr '\0' 'x' > "$WORK/www/file"
nginx_conf nginx 1 "server { listen 127.0.0.1:$UP; root $WORK/www; location / { } }"

valgrind=(valgrind --tool=callgrind "--callgrind-out-file=$WORK/out.%p")
case $TARGET in
  tokengate)
    bin=${TOKENGATE_BIN:-$ROOT/target/profiling/tokengate}
    [ -x "$bin" ] || (cd "$ROOT" && cargo build --profile profiling --bin tokengate)
    # start_tokengate runs $TG for `token create` too: only `serve` runs under valgrind.
    TG=$WORK/tokengate
    printf '#!/bin/sh\n[ "$1" = serve ] && exec %s %s "$@"\nexec %s "$@"\n' \
      "${valgrind[*]}" "$bin" "$bin" > "$TG"
    chmod +x "$TG"
    start_tokengate / false read_package_registry
    PID=$TG_PID
    URL=http://127.0.0.1:$GATE/file
    ;;
  hyper-baseline)
    cargo build -q --release --manifest-path "$ROOT/bench/hyper-baseline/Cargo.toml"
    "${valgrind[@]}" "$ROOT/bench/hyper-baseline/target/release/hyper-baseline" \
      per-core-own-pool "127.0.0.1:$GATE" "127.0.0.1:$UP" 2> "$WORK/baseline.log" &
    PID=$!
    BASELINE_PIDS=$PID
    for _ in $(seq 300); do curl -fsS -o /dev/null "http://127.0.0.1:$GATE/file" 2>/dev/null && break; sleep 0.1; done
    URL=http://127.0.0.1:$GATE/file
    ;;
  *) echo "usage: bench/callgrind.sh [tokengate|hyper-baseline]" >&2; exit 2 ;;
esac

CONNS=${CONNS:-4}
wrk -t1 -c"$CONNS" -d3s -H "Deploy-Token: ${TOKEN:-}" "$URL" > /dev/null
callgrind_control -z "$PID" > /dev/null 2>&1
out=$(wrk -t1 -c"$CONNS" -d20s -H "Deploy-Token: ${TOKEN:-}" "$URL")
requests=$(awk '/requests in/ {print $1}' <<<"$out")
callgrind_control -d "$PID" > /dev/null 2>&1
sleep 1
# The dump after zeroing is the largest file (the start-up one is written at exit).
dump=$(ls -S "$WORK"/out.* | head -1)
cp "$dump" "$OUT"
callgrind_annotate "$OUT" 2>/dev/null | awk -v n="$requests" -v t="$TARGET" \
  '/PROGRAM TOTALS/ { x = $1; gsub(",", "", x); printf "%s: %.1f k instructions per request (%d requests)\n", t, x / n / 1000, n }'
