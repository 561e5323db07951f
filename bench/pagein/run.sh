#!/bin/bash
# Page-ins against the device (issue 18, goal 1): 32 scan processes on 2 vCPUs,
# 320 MiB of guest RAM in a 64 MiB budget, 1 ms added to every store I/O, APF on;
# then, at once, `apf store-bench` at queue depth 32 with the same share of writes.
# Prints both rates and their ratio per run.
#
#   bench/pagein/run.sh [--write PCT] [--runs K] [--work N] [--apf FILE]
#
# --write 0 (reads only): page-ins/s against store-bench's reads/s. Any other PCT:
# reads+writes/s against a store-bench with the same share of writes.
# Each run is two runs, of N and 2N units of work. "Whole run" is the 2N run's
# rate, zeroing the working sets included (every page is written out once before
# it can be read back). "Steady" is the difference of the two (I/Os over seconds),
# so the zeroing, the same in both, cancels: the rate once the working sets are on
# the store, which is what a reads-only scan is for.
set -euo pipefail
write=0 runs=1 work=6000 apf=""
while [ $# -gt 0 ]; do
  case "$1" in
    --write) write=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --apf) apf=$2; shift 2 ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
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
scan() { # WORK JSON
  local procs=() i
  for i in $(seq 0 31); do procs+=(-p "scan,vcpu=$((i % 2)),mem=8MiB,work=$1,write=$write"); done
  "$apf" run --vcpus 2 --ram 320MiB --budget 64MiB --latency 1ms --apf on "${procs[@]}" \
    --json "$2" > "$out/run.txt"
}
device() { # WRITE_SHARE
  "$apf" store-bench --ram 320MiB --latency 1ms --depths 32 --time 3s --write-ratio "$1" |
    awk '$1 == 32 { gsub(",", "", $2); print $2 }'
}
for r in $(seq 1 "$runs"); do
  scan "$work" "$out/short.json"
  scan $((2 * work)) "$out/long.json"
  # whole: rate, write share of the long run; steady: the same of the difference.
  read -r wall whole whole_share steady steady_share < <(python3 - "$out/short.json" "$out/long.json" "$write" <<'PY'
import json, sys
def io(path):
    run = json.load(open(path))["runs"][0]
    if not run["checksums_ok"]:
        sys.exit("run.sh: a checksum is wrong")
    m = run["memory"]
    return run["wall_s"], m["pages_read"], m["pages_written"]
(t1, r1, w1), (t2, r2, w2) = io(sys.argv[1]), io(sys.argv[2])
def rate(t, r, w):
    if sys.argv[3] == "0":
        return round(r / t), 0
    return round((r + w) / t), round(100 * w / max(r + w, 1))
print(f"{t2:.1f}", *rate(t2, r2, w2), *rate(t2 - t1, r2 - r1, w2 - w1))
PY
)
  dev_whole=$(device "$whole_share")
  if [ "$steady_share" = "$whole_share" ]; then dev_steady=$dev_whole; else dev_steady=$(device "$steady_share"); fi
  ratio() { python3 -c "print(f'{$1 / $2:.3f}')"; }
  what=page-ins; [ "$write" = 0 ] || what="reads+writes"
  echo "run $r ($wall s): whole run: apf $whole $what/s, store-bench at depth 32 (${whole_share}% writes) $dev_whole/s: $(ratio "$whole" "$dev_whole");" \
    "steady: apf $steady/s, store-bench (${steady_share}% writes) $dev_steady/s: $(ratio "$steady" "$dev_steady")"
done
