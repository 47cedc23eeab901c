#!/usr/bin/env bash
# Streaming and idle-connection benchmark on loopback, release build:
#   1. 1 GiB download and 1 GiB upload (curl), direct to nginx vs through
#      tokengate, each the median of ROUNDS runs alternating the targets:
#      throughput ratio, and tokengate's peak RSS growth (VmHWM).
#      For scale, the same through nginx proxy_pass (its own nginx, one
#      worker, streaming both ways: proxy_buffering and request buffering off,
#      a 256 KiB buffer as hyper's grows to).
#   2. 10,000 idle keep-alive connections to tokengate, each after one
#      request: tokengate's RSS.
#
#   bench/stream.sh [SIZE_MIB] [IDLE_CONNECTIONS] [ROUNDS]     (default 1024 10000 5)
#
# LINK=<rate> (tc's units: 10gbit, 2500mbit; needs root) puts curl in a
# network namespace of its own behind a veth pair shaped to that rate each
# way (tbf), as a client across a network link would be; the servers listen
# on the pair's host end and tokengate reaches the upstream on the host
# itself. Loopback alone measures three processes copying on shared cores;
# the link shows whether the proxy keeps a real link's rate. The idle
# connections are left out then.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
SIZE_MIB=${1:-1024}
IDLE=${2:-10000}
ROUNDS=${3:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# In memory where there is a tmpfs: the uploads are written out by nginx,
# and a disk would measure itself (direct uploads to /tmp here: 324-801 MiB/s).
SHM=/dev/shm; [ -w "$SHM" ] || SHM=/tmp
WORK=$(mktemp -d "$SHM/tokengate-stream.XXXXXX")
chmod 755 "$WORK"
need nginx nginx
TG=${TOKENGATE_BIN:-$ROOT/target/release/tokengate}
[ -x "$TG" ] || (cd "$ROOT" && cargo build --release --bin tokengate)
UP=$(free_port); GATE=$(free_port); ADMIN=$(free_port); PROXY=$(free_port)
trap cleanup EXIT
# tc_rate_bytes RATE: a tc rate (10gbit, 2500mbit, 100kbit) in bytes per second.
tc_rate_bytes() {
  awk -v r="$1" 'BEGIN {
    n = r + 0; unit = tolower(substr(r, length(n "") + 1))
    m = unit == "gbit" ? 1e9 : unit == "mbit" ? 1e6 : unit == "kbit" ? 1e3 : 0
    if (m == 0) { print "LINK: a rate in kbit, mbit or gbit" > "/dev/stderr"; exit 1 }
    printf "%d\n", n * m / 8
  }'
}
CLIENT=()
if [ -n "${LINK:-}" ]; then
  NETNS=tgbench$$ BIND=10.231.$(($$ % 250)).1
  ip netns add "$NETNS"
  ip link add "tgb$$" type veth peer name eth0 netns "$NETNS"
  ip addr add "$BIND/30" dev "tgb$$"
  ip link set "tgb$$" up
  ip -n "$NETNS" addr add "${BIND%.1}.2/30" dev eth0
  ip -n "$NETNS" link set eth0 up
  # A burst of 1 ms at the rate, so the shaper is not what limits below it.
  burst=$(tc_rate_bytes "$LINK" | awk '{ printf "%d", ($1 / 1000 > 65536 ? $1 / 1000 : 65536) }')
  tc qdisc add dev "tgb$$" root tbf rate "$LINK" burst "$burst" latency 20ms
  tc -n "$NETNS" qdisc add dev eth0 root tbf rate "$LINK" burst "$burst" latency 20ms
  CLIENT=(ip netns exec "$NETNS")
  log "client behind a $LINK link (veth, tbf each way) to $BIND"
fi

mkdir -p "$WORK/www" "$WORK/logs"
truncate -s "${SIZE_MIB}M" "$WORK/www/big.bin"
file_upstream
nginx_conf proxy 1 "upstream up { server $BIND:$UP; keepalive 8; }
  server {
    listen $BIND:$PROXY;
    client_max_body_size 0;
    client_body_buffer_size 256k;
    location /files/ {
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
      proxy_buffer_size 256k;
      proxy_buffers 4 256k;
      proxy_busy_buffers_size 256k;
      proxy_request_buffering off;
    }
  }"
start_tokengate /files true read_package_registry,write_package_registry
rss() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
RSS0=$(rss "$TG_PID" VmRSS)

# transfer KIND TARGET -> MiB/s of one 1 GiB download or upload (curl).
transfer() {
  local url args=(-H "Deploy-Token: $TOKEN")   # the header is ignored by nginx
  case $2 in
    direct) url=http://$BIND:$UP ;;
    tokengate) url=http://$BIND:$GATE/files ;;
    nginx) url=http://$BIND:$PROXY/files ;;
  esac
  case $1 in
    down) args+=("$url/big.bin") ;;
    up) args+=(-T "$WORK/www/big.bin" "$url/up/$2.bin") ;;
  esac
  "${CLIENT[@]}" curl -fsS -o /dev/null -w '%{speed_download} %{speed_upload}' "${args[@]}" |
    awk '{ printf "%.0f\n", ($1 > $2 ? $1 : $2) / 1048576 }'
}
# ROUNDS rounds, the targets alternating in each (so drift hits all alike);
# the median of each. One download first warms the page cache.
transfer down direct > /dev/null
declare -A SPEED
for kind in down up; do
  for t in direct tokengate nginx; do : > "$WORK/$kind.$t"; done
  for round in $(seq "$ROUNDS"); do
    for t in direct tokengate nginx; do
      mib=$(transfer "$kind" "$t")
      echo "$mib" >> "$WORK/$kind.$t"
      log "$kind round $round $t: $mib MiB/s"
    done
  done
  for t in direct tokengate nginx; do
    SPEED[$kind.$t]=$(median < "$WORK/$kind.$t")
  done
done
HWM=$(rss "$TG_PID" VmHWM)

echo "| transfer (${SIZE_MIB} MiB, median of $ROUNDS${LINK:+, over a $LINK link}) | direct MiB/s | through tokengate MiB/s | ratio | through nginx proxy_pass MiB/s | ratio |"
echo "|---|---|---|---|---|---|"
for kind in down up; do
  direct=${SPEED[$kind.direct]} gate=${SPEED[$kind.tokengate]} nginx=${SPEED[$kind.nginx]}
  echo "| ${kind}load | $direct | $gate | $(ratio "$gate" "$direct") | $nginx | $(ratio "$nginx" "$direct") |"
done
echo "tokengate RSS: $((RSS0 / 1024)) MiB at start, peak $((HWM / 1024)) MiB: growth $(((HWM - RSS0) / 1024)) MiB (target < 32)"

[ -z "${LINK:-}" ] || exit 0
# Idle keep-alive connections: each sends one request, reads the answer, stays open.
ulimit -n 65536 2>/dev/null || true
python3 - "$GATE" "$IDLE" "$TOKEN" "$TG_PID" <<'PY'
import asyncio, sys
port, n, token, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
async def one(held):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /files/missing HTTP/1.1\r\nHost: x\r\nDeploy-Token: {token}\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    await r.readexactly(length)
    held.append(w)
async def main():
    held = []
    before = rss()
    for start in range(0, n, 500):
        await asyncio.gather(*(one(held) for _ in range(min(500, n - start))))
    await asyncio.sleep(1)
    print(f"{len(held)} idle keep-alive connections: tokengate RSS {before} MiB before, {rss()} MiB with them open (target < 200)")
    for w in held:
        w.close()
asyncio.run(main())
PY
