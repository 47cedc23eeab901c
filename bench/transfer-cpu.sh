#!/usr/bin/env bash
# The proxy's CPU per transferred GiB, for several tokengate builds side by
# side: one instance per build in front of the same nginx, 1 GiB downloads
# or uploads (curl) through each in turn, ROUNDS rounds, so a VM's drifting
# speed hits every build alike. CPU time (from /proc) is steadier than
# throughput on a loopback shared by three processes.
#
#   bench/transfer-cpu.sh down|up ROUNDS BINARY...
#   e.g. bench/transfer-cpu.sh up 5 /tmp/tokengate-before target/release/tokengate
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
KIND=${1:?down or up}
ROUNDS=${2:?rounds}
shift 2
[ $# -gt 0 ] || { echo "usage: bench/transfer-cpu.sh down|up ROUNDS BINARY..." >&2; exit 2; }
need curl curl
need nginx nginx
WORK=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo /tmp )/tokengate-transfer.XXXXXX")
UP=$(free_port)
trap cleanup EXIT
mkdir -p "$WORK/www" "$WORK/logs"
chmod 755 "$WORK"
truncate -s 1024M "$WORK/www/big.bin"
file_upstream
BINS=("$@") PORTS=() PIDS=()
for bin in "${BINS[@]}"; do
  TG=$bin GATE=$(free_port) ADMIN=$(free_port)
  start_tokengate /files true read_package_registry,write_package_registry
  PORTS+=("$GATE") PIDS+=("$TG_PID")
done
BASELINE_PIDS="${PIDS[*]}"   # cleanup stops them all
HZ=$(getconf CLK_TCK)
cpu_ms() { awk -v hz="$HZ" '{printf "%d\n", ($14 + $15) * 1000 / hz}' "/proc/$1/stat"; }
: > "$WORK/results"
for round in $(seq "$ROUNDS"); do
  for i in "${!PORTS[@]}"; do
    url=http://127.0.0.1:${PORTS[$i]}/files
    args=(-H "Deploy-Token: $TOKEN")
    case $KIND in
      down) args+=(-w '%{speed_download}' "$url/big.bin") ;;
      up) args+=(-w '%{speed_upload}' -T "$WORK/www/big.bin" "$url/up/x.bin") ;;
      *) echo "down or up, not $KIND" >&2; exit 2 ;;
    esac
    before=$(cpu_ms "${PIDS[$i]}")
    speed=$(curl -fsS -o /dev/null "${args[@]}")
    after=$(cpu_ms "${PIDS[$i]}")
    log "round $round ${BINS[$i]}: $((after - before)) ms CPU"
    echo "$i $((after - before)) $speed" >> "$WORK/results"
  done
done
printf '| build | tokengate CPU per %sloaded GiB | MiB/s |\n|---|---|---|\n' "$KIND"
for i in "${!BINS[@]}"; do
  awk -v i="$i" -v bin="${BINS[$i]}" '$1 == i {c += $2; s += $3; n++}
    END {printf "| %s | %.0f ms | %.0f |\n", bin, c / n, s / n / 1048576}' "$WORK/results"
done
echo "$ROUNDS rounds, 1 GiB each, mean; $(nproc) cores; $(date -u +%F)"
