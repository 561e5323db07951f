#!/bin/bash
# Soak: restores and post-copy migrations of the built-in guest, over and over,
# several at once on a loaded host, counting the runs that do not finish. A rare
# hang (a restored or migrated guest's process asleep for good) shows here at a
# rate; each failed run is kept with its report, whose "at the timeout" lines say
# what each vCPU's APF engine held.
#
#   bench/soak/run.sh [--minutes M] [--lanes N] [--engine E] [--apf FILE] [--keep DIR]
#
# Each of N restore lanes loops: a snapshot of two scans and two calcs on 2 vCPUs
# at a random share of the work (5-94%), then its restore, lazy or lazy with the
# prefetcher (2 in 3), at 5 ms a store read, within 90 s. One more lane loops
# post-copy migrations over loopback at a random time (100-999 ms). Defaults:
# 20 minutes, 2 restore lanes, the default engine, failures kept in ./soak-failed.
set -euo pipefail
minutes=20 lanes=2 engine="" apf="" keep=soak-failed
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --lanes) lanes=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --apf) apf=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "$apf" ]; then
  (cd "$root" && cargo build --release -q -p apf)
  apf=$root/target/release/apf
fi
engine_arg=()
[ -n "$engine" ] && engine_arg=(--engine "$engine")
mkdir -p "$keep"
keep=$(cd "$keep" && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
end=$(( $(date +%s) + minutes * 60 ))

# One run's outcome: a line in the lane's tally, the run's files kept if it failed.
tally() { # LANE DIR WHAT OK
  echo "$3 $4" >> "$work/tally"
  if [ "$4" != ok ]; then
    local dest="$keep/$1-$(date +%H%M%S)-$RANDOM"
    cp -r "$2" "$dest"
    echo "FAILED: $3 (kept in $dest)"
  fi
}

restore_lane() { # ID
  local d=$work/r$1 procs=() v
  for v in 0 1; do procs+=(-p "scan,vcpu=$v,mem=20MiB,work=2500" -p "calc,vcpu=$v"); done
  while [ "$(date +%s)" -lt "$end" ]; do
    rm -rf "$d"; mkdir -p "$d"
    local at=$(( RANDOM % 90 + 5 ))% modes=(--prefetch --lazy --prefetch)
    local mode=${modes[$(( RANDOM % 3 ))]} seed=$RANDOM
    local what="restore $mode of a snapshot at $at (seed $seed)"
    if ! "$apf" snapshot --at "$at" --out "$d/snap" --vcpus 2 --ram 64MiB --budget 16MiB \
        --latency 200us --seed "$seed" "${engine_arg[@]}" "${procs[@]}" > "$d/snapshot.txt" 2>&1; then
      tally "r$1" "$d" "snapshot at $at" failed
      continue
    fi
    if "$apf" restore "$d/snap" "$mode" --latency 5ms --budget 64MiB --timeout 90s \
        "${engine_arg[@]}" > "$d/restore.txt" 2>&1; then
      tally "r$1" "$d" "$what" ok
    else
      tally "r$1" "$d" "$what" failed
    fi
  done
}

migration_lane() {
  local d=$work/m
  while [ "$(date +%s)" -lt "$end" ]; do
    rm -rf "$d"; mkdir -p "$d"
    local at=$(( RANDOM % 900 + 100 ))ms
    "$apf" listen --port 0 --bind 127.0.0.1 --timeout 90s "${engine_arg[@]}" \
      > "$d/destination.txt" 2>&1 &
    local listener=$! addr=""
    while [ -z "$addr" ] && kill -0 "$listener" 2>/dev/null; do
      addr=$(grep -so '127\.0\.0\.1:[0-9]*' "$d/destination.txt" || true)
      [ -n "$addr" ] || sleep 0.1
    done
    local what="post-copy migration at $at" src=0 dst=0
    "$apf" run --migrate-to "$addr" --mode postcopy --migrate-at "$at" "${engine_arg[@]}" \
      -p scan,mem=48MiB,work=8000 -p calc --ram 64MiB --budget 32MiB \
      > "$d/source.txt" 2>&1 || src=$?
    wait "$listener" || dst=$?
    if [ "$src" = 0 ] && [ "$dst" = 0 ]; then
      tally m "$d" "$what" ok
    else
      tally m "$d" "$what (source exit $src, destination exit $dst)" failed
    fi
  done
}

echo "soak: $lanes restore lane(s) and a migration lane for $minutes min: $apf ${engine_arg[*]}"
for i in $(seq 1 "$lanes"); do restore_lane "$i" & done
migration_lane &
wait
restores=$(grep -c '^restore' "$work/tally" || true)
migrations=$(grep -c '^post-copy' "$work/tally" || true)
failed=$(grep -c 'failed$' "$work/tally" || true)
echo "soak: $restores restores, $migrations migrations, $failed failed"
[ "$failed" = 0 ]
