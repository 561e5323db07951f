#!/bin/bash
# Page-ins against the device (issue 18, goal 1): 32 scan processes on 2 vCPUs,
# 320 MiB of guest RAM in a 64 MiB budget, 1 ms added to every store I/O, APF on;
# then, at once, `apf store-bench` at queue depth 32 with the run's own write share.
# Prints both rates and their ratio per run.
#
#   bench/pagein/run.sh [--write PCT] [--runs K] [--work N] [--apf FILE]
#
# --write 0 (reads only): page-ins/s against store-bench's reads/s. Any other PCT:
# reads+writes/s against a store-bench with the same share of writes. The rates
# cover the whole run, zeroing the working sets included.
set -euo pipefail
write=0 runs=1 work=12000 apf=""
while [ $# -gt 0 ]; do
  case "$1" in
    --write) write=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --apf) apf=$2; shift 2 ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "$apf" ]; then
  (cd "$root" && cargo build --release -q -p apf)
  apf=$root/target/release/apf
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
procs=()
for i in $(seq 0 31); do procs+=(-p "scan,vcpu=$((i % 2)),mem=8MiB,work=$work,write=$write"); done
for r in $(seq 1 "$runs"); do
  "$apf" run --vcpus 2 --ram 320MiB --budget 64MiB --latency 1ms --apf on "${procs[@]}" \
    --json "$out/run.json" > "$out/run.txt"
  read -r wall reads mixed share < <(python3 - "$out/run.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
if not run["checksums_ok"]:
    sys.exit("run.sh: a checksum is wrong")
m = run["memory"]
r, w, t = m["pages_read"], m["pages_written"], run["wall_s"]
print(f"{t:.1f}", round(r / t), round((r + w) / t), round(100 * w / max(r + w, 1)))
PY
)
  if [ "$write" = 0 ]; then rate=$reads share=0; else rate=$mixed; fi
  device=$("$apf" store-bench --ram 320MiB --latency 1ms --depths 32 --time 3s --write-ratio "$share" \
    | awk '$1 == 32 { gsub(",", "", $2); print $2 }')
  ratio=$(python3 -c "print(f'{$rate / $device:.3f}')")
  echo "run $r: ${wall} s; apf ${rate}/s (page-ins ${reads}/s, ${share}% of I/Os writes); store-bench at depth 32, ${share}% writes: ${device}/s; apf / store-bench ${ratio}"
done
