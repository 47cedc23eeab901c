#!/usr/bin/env bash
# Streaming and idle-connection benchmark on loopback, release build:
#   1. 1 GiB download and 1 GiB upload (curl), direct to nginx vs through
#      tokengate: throughput ratio, and tokengate's peak RSS growth (VmHWM).
#   2. 10,000 idle keep-alive connections to tokengate, each after one
#      request: tokengate's RSS.
#
#   bench/stream.sh [SIZE_MIB] [IDLE_CONNECTIONS]     (default 1024 10000)
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
SIZE_MIB=${1:-1024}
IDLE=${2:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/tokengate-stream.XXXXXX)
chmod 755 "$WORK"
need nginx nginx
TG=${TOKENGATE_BIN:-$ROOT/target/release/tokengate}
[ -x "$TG" ] || (cd "$ROOT" && cargo build --release --bin tokengate)
UP=$(free_port); GATE=$(free_port); ADMIN=$(free_port)
trap cleanup EXIT

mkdir -p "$WORK/www/up" "$WORK/logs"
chmod 777 "$WORK/www/up"
truncate -s "${SIZE_MIB}M" "$WORK/www/big.bin"
mkdir -p "$WORK/tmp"; chmod 777 "$WORK/tmp"
nginx_conf nginx 1 "server {
    listen 127.0.0.1:$UP;
    root $WORK/www;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    location /up/ { dav_methods PUT; create_full_put_path on; client_body_temp_path $WORK/tmp; }
  }"
start_tokengate /files true read_package_registry,write_package_registry
rss() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
RSS0=$(rss "$TG_PID" VmRSS)

speed() { # curl ARGS... -> MiB/s, the best of 3 runs (the first warms caches)
  local best=0 bytes_per_s
  for _ in 1 2 3; do
    bytes_per_s=$(curl -fsS -o /dev/null -w '%{speed_download} %{speed_upload}' "$@" | awk '{print ($1 > $2 ? $1 : $2)}')
    best=$(awk -v a="$best" -v b="$bytes_per_s" 'BEGIN { print (b > a ? b : a) }')
  done
  awk -v b="$best" 'BEGIN { printf "%.0f", b / 1048576 }'
}
DIRECT_DOWN=$(speed "http://127.0.0.1:$UP/big.bin")
GATE_DOWN=$(speed -H "Deploy-Token: $TOKEN" "http://127.0.0.1:$GATE/files/big.bin")
DIRECT_UP=$(speed -T "$WORK/www/big.bin" "http://127.0.0.1:$UP/up/direct.bin")
GATE_UP=$(speed -T "$WORK/www/big.bin" -H "Deploy-Token: $TOKEN" "http://127.0.0.1:$GATE/files/up/gate.bin")
HWM=$(rss "$TG_PID" VmHWM)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "| transfer (${SIZE_MIB} MiB) | direct MiB/s | through tokengate MiB/s | ratio |"
echo "|---|---|---|---|"
echo "| download | $DIRECT_DOWN | $GATE_DOWN | $(ratio "$GATE_DOWN" "$DIRECT_DOWN") |"
echo "| upload | $DIRECT_UP | $GATE_UP | $(ratio "$GATE_UP" "$DIRECT_UP") |"
echo "tokengate RSS: $((RSS0 / 1024)) MiB at start, peak $((HWM / 1024)) MiB: growth $(((HWM - RSS0) / 1024)) MiB (target < 32)"

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
