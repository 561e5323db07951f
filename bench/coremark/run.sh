#!/usr/bin/env bash
# CoreMark iterations per wall second on apf and on QEMU TCG, the same image on
# both, in one run; and with --profile, where apf's time goes. See README.md.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: bench/coremark/run.sh [--runs K] [--n1 N] [--n2 N] [--qemu-scale S] [--profile]
                              [--engine compiler|interpreter] [--apf FILE] [--qemu FILE]

  --runs K     timing rounds, each apf then QEMU at N1 and N2 iterations (default 1; 0: none)
  --n1, --n2   apf's two iteration counts (default 4000 and 12000, about 2.5 and 7 s with
               the compiler, 6 and 17 s interpreted);
               rate = (N2-N1) / (wall(N2)-wall(N1))
  --qemu-scale QEMU runs S times as many iterations, so its runs are not too short to
               time (default 3)
  --profile    also profile apf on CoreMark: perf report and host instructions per guest
               instruction, into target/coremark/profile.txt
  --engine E   how apf runs the guest: compiler (default: blocks compiled once hot) or
               interpreter
  --apf FILE   the apf binary (default: cargo build --release, then target/release/apf)
  --qemu FILE  the QEMU binary (default: qemu-system-aarch64)

CoreMark's source: $COREMARK_SRC (a directory) if set, else downloaded at a pinned commit into
target/coremark/src. Either way its files are checked against the sha256 sums in this script.
EOF
}

# EEMBC CoreMark at a fixed commit; the sums are of the extracted files, which
# is what the build reads (a tarball's bytes may change when GitHub regenerates it).
COREMARK_COMMIT=d5fad6bd094899101a4e5fd53af7298160ced6ab
COREMARK_URL="https://github.com/eembc/coremark/archive/${COREMARK_COMMIT}.tar.gz"
COREMARK_SUMS="\
ca00e4e010ece47d7f040cb92aa50a95345a00d3171b59d088f6b243be06ce7b  core_list_join.c
17884c93c5b94378eb0ff02b4df3725756cf2addb9b8cbcaa6200a4649ff5ca7  core_main.c
ecdff717b5a5c4907d221a606760e25499899cbf617582c05d40db71c91351e4  core_matrix.c
f4b84bb0a3452c45a4daa664ab502bfdccbd31cb57d93e9ac490c60937717a4e  core_state.c
a3fbfcb9bb943b638624b8ece01c5836dd56a96d7bcde2697b248d077447327f  core_util.c
29f7eb0f0bdf6002f6c7dccfa4f8f9f32c0b8f6709f6538c2b73221938a9c8f1  coremark.h"

# The machine both emulators get: one vCPU, 256 MiB (QEMU's as in guest/README.md).
QEMU_ARGS=(-nodefaults -M virt,gic-version=3 -cpu cortex-a57 -smp 1 -m 256M -display none
	-serial stdio)
APF_ARGS=(run --vcpus 1 --ram 256MiB --timeout 600s)
# Small counts for counting host instructions under valgrind (about 50x slower).
VALGRIND_N1=10
VALGRIND_N2=110

die() {
	echo "coremark: $*" >&2
	exit 2
}

fail() {
	echo "coremark: FAILED: $*" >&2
	exit 1
}

runs=1 n1=4000 n2=12000 qemu_scale=3 profile=0 apf="" qemu=qemu-system-aarch64 engine=compiler
while (($#)); do
	case "$1" in
	--runs | --n1 | --n2 | --qemu-scale | --apf | --qemu | --engine)
		(($# >= 2)) || die "$1 needs a value"
		case "$1" in
		--runs) runs=$2 ;;
		--n1) n1=$2 ;;
		--n2) n2=$2 ;;
		--qemu-scale) qemu_scale=$2 ;;
		--apf) apf=$2 ;;
		--engine) engine=$2 ;;
		--qemu) qemu=$2 ;;
		esac
		shift 2
		;;
	--profile)
		profile=1
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done
[[ $runs =~ ^[0-9]+$ ]] || die "--runs wants a whole number, got '$runs'"
[[ $n1 =~ ^[1-9][0-9]*$ && $n2 =~ ^[1-9][0-9]*$ ]] ||
	die "--n1 and --n2 want positive whole numbers, got '$n1' and '$n2'"
((n1 < n2)) || die "--n1 ($n1) must be smaller than --n2 ($n2)"
[[ $qemu_scale =~ ^[1-9][0-9]*$ ]] || die "--qemu-scale wants a positive whole number, got '$qemu_scale'"
((n2 * qemu_scale <= 2000000000)) ||
	die "--n2 times --qemu-scale ($n2 x $qemu_scale) must fit CoreMark's 32-bit iteration count"
((runs > 0 || profile)) || die "--runs 0 without --profile does nothing"
case "$engine" in
compiler | interpreter) APF_ARGS+=(--engine "$engine") ;;
*) die "--engine must be compiler or interpreter, not $engine" ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/target/coremark"
mkdir -p "$out"

need() {
	command -v "$1" >/dev/null 2>&1 || die "$1 not found: install $2"
}
need aarch64-linux-gnu-gcc "gcc-aarch64-linux-gnu"
need make make
need jq jq
need sha256sum coreutils
((runs == 0)) || need "$qemu" "qemu-system-arm (or pass --qemu FILE)"

# --- CoreMark's source ---

verify_source() {
	(cd "$1" && sha256sum --quiet -c - <<<"$COREMARK_SUMS" >/dev/null 2>&1)
}

if [[ -n ${COREMARK_SRC:-} ]]; then
	src=$(cd "$COREMARK_SRC" 2>/dev/null && pwd) ||
		die "COREMARK_SRC=$COREMARK_SRC is not a directory"
	verify_source "$src" ||
		die "COREMARK_SRC=$src does not hold eembc/coremark at $COREMARK_COMMIT (sha256 mismatch or missing files)"
else
	src="$out/src"
	if ! verify_source "$src" 2>/dev/null; then
		need curl curl
		rm -rf "$src" && mkdir -p "$src"
		echo "coremark: downloading $COREMARK_URL" >&2
		curl -fsSL --connect-timeout 30 "$COREMARK_URL" | tar -xz --strip-components=1 -C "$src" ||
			die "could not download CoreMark; set COREMARK_SRC to a checkout of eembc/coremark at $COREMARK_COMMIT"
		verify_source "$src" ||
			die "the downloaded CoreMark does not match the pinned sums (commit $COREMARK_COMMIT)"
	fi
fi

# --- Images and apf ---

build_image() { # N -> prints the image's path
	make -s -C "$here" COREMARK_SRC="$src" ITERATIONS="$1" OUT="$out/n$1" \
		"$out/n$1/coremark.bin" >&2 || fail "building CoreMark with ITERATIONS=$1"
	echo "$out/n$1/coremark.bin"
}

if [[ -z $apf ]]; then
	(cd "$root" && cargo build --release --locked -p apf) >&2 || fail "cargo build of apf"
	apf="${CARGO_TARGET_DIR:-$root/target}/release/apf"
fi
[[ -x $apf ]] || die "--apf $apf is not an executable"

# --- One run, checked ---

# CoreMark checks its own CRCs for the performance seeds. Its "must execute for
# at least 10 secs" complaint is about its self-timed score, which we do not
# use (on apf the counter is not wall time); every other ERROR fails the run.
check_output() { # log N what
	local log=$1 n=$2 what=$3 bad
	grep -q '^2K performance run parameters for coremark\.' "$log" ||
		fail "$what: CoreMark did not run with the performance seeds (see $log)"
	bad=$(grep 'ERROR' "$log" | grep -v 'Must execute for at least 10 secs' || true)
	[[ -z $bad ]] || fail "$what: CoreMark reports: $bad (see $log)"
	grep -q "^Iterations *: $n\$" "$log" || fail "$what: CoreMark did not report $n iterations (see $log)"
	grep -q '^\[0\]crcfinal *: 0x' "$log" || fail "$what: no final CRC (see $log)"
	grep -q '^apf-coremark: end status=0' "$log" || fail "$what: did not reach the end (see $log)"
}

# Runs one emulator on the image for N; sets $wall and $cpu (user + system, all
# its threads: on a busy machine this moves less than wall time) in seconds, and
# for apf $instr, its retired guest instructions.
run_once() { # apf|qemu N
	local emu=$1 n=$2 img="$out/n$2/coremark.bin" log="$out/$1-n$2.log" times="$out/$1-n$2.time"
	local rc=0 TIMEFORMAT='%3R %3U %3S'
	if [[ $emu == apf ]]; then
		{ time "$apf" "${APF_ARGS[@]}" --image "$img" --json "$out/apf-n$n.json" >"$log" 2>&1; } \
			2>"$times" || rc=$?
	else
		{ time timeout 600 "$qemu" "${QEMU_ARGS[@]}" -kernel "$img" >"$log" 2>&1 </dev/null; } \
			2>"$times" || rc=$?
	fi
	((rc == 0)) || fail "$emu with $n iterations exited with status $rc (see $log)"
	check_output "$log" "$n" "$emu n=$n"
	read -r wall user sys <"$times"
	cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.3f", u + s }')
	instr=""
	if [[ $emu == apf ]]; then
		[[ $(jq -r '.runs[0].end' "$out/apf-n$n.json") == system_off ]] ||
			fail "apf n=$n did not end with SYSTEM_OFF (see $log)"
		instr=$(jq '[.runs[0].vcpus[].instructions] | add' "$out/apf-n$n.json")
	fi
}

img1=$(build_image "$n1")
build_image "$n2" >/dev/null
if ((runs > 0)); then
	build_image $((n1 * qemu_scale)) >/dev/null
	build_image $((n2 * qemu_scale)) >/dev/null
fi

# --- Timing ---

if ((runs > 0)); then
	echo "CoreMark: apf $apf, QEMU $("$qemu" --version | sed -n 1p)"
	echo "rate = (N2 - N1) / (wall(N2) - wall(N1)), N1 and N2 = $n1 and $n2 on apf," \
		"$((n1 * qemu_scale)) and $((n2 * qemu_scale)) on QEMU; startup cancels"
	echo
	echo "cpu: user + system seconds of the emulator's process; per cpu s = (N2 - N1) / (cpu(N2) - cpu(N1))"
	echo
	row='%-4s %-10s %10s %9s %9s %13s %15s %8s %8s %12s\n'
	# shellcheck disable=SC2059 # the format is the table's
	printf "$row" run emulator iterations "wall(N1)" "wall(N2)" iterations/s "guest instr/s" \
		"cpu(N1)" "cpu(N2)" "per cpu s"
	ratios=() cpu_ratios=()
	for ((k = 1; k <= runs; k++)); do
		declare -A rate=() cpu_rate=()
		for emu in apf qemu; do
			scale=1
			[[ $emu == apf ]] || scale=$qemu_scale
			m1=$((n1 * scale)) m2=$((n2 * scale))
			run_once "$emu" "$m1"
			w1=$wall c1=$cpu i1=$instr
			run_once "$emu" "$m2"
			w2=$wall c2=$cpu i2=$instr
			awk -v a="$w1" -v b="$w2" -v c="$c1" -v d="$c2" 'BEGIN { exit !(b > a && d > c) }' ||
				fail "$emu: time did not grow from N1 to N2 (wall $w1 s, $w2 s; cpu $c1 s, $c2 s): raise --n2"
			rate[$emu]=$(awk -v n="$((m2 - m1))" -v a="$w1" -v b="$w2" \
				'BEGIN { printf "%.1f", n / (b - a) }')
			cpu_rate[$emu]=$(awk -v n="$((m2 - m1))" -v a="$c1" -v b="$c2" \
				'BEGIN { printf "%.1f", n / (b - a) }')
			ips="-"
			if [[ $emu == apf ]]; then
				ips=$(awk -v i="$((i2 - i1))" -v a="$w1" -v b="$w2" \
					'BEGIN { printf "%.1f M", i / (b - a) / 1e6 }')
			fi
			# shellcheck disable=SC2059
			printf "$row" "$k" "$emu" "$((m2 - m1))" "$w1" "$w2" "${rate[$emu]}" "$ips" "$c1" "$c2" \
				"${cpu_rate[$emu]}"
		done
		ratio=$(awk -v a="${rate[apf]}" -v q="${rate[qemu]}" 'BEGIN { printf "%.3f", a / q }')
		cpu_ratio=$(awk -v a="${cpu_rate[apf]}" -v q="${cpu_rate[qemu]}" 'BEGIN { printf "%.3f", a / q }')
		ratios+=("$ratio")
		cpu_ratios+=("$cpu_ratio")
		# shellcheck disable=SC2059
		printf "$row" "$k" "apf / QEMU" "" "" "" "${ratio}x" "" "" "" "${cpu_ratio}x"
		unset rate cpu_rate
	done
	if ((runs > 1)); then
		summary() { # label ratio...
			local label=$1
			shift
			printf '%s\n' "$@" | sort -n | awk -v l="$label" -v k="$runs" '{ r[NR] = $1 }
				END { printf "apf / QEMU %s over %d runs: min %.3fx, median %.3fx, max %.3fx\n", l, k,
					r[1], (NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2), r[NR] }'
		}
		echo
		summary "per wall s" "${ratios[@]}"
		summary "per cpu s " "${cpu_ratios[@]}"
	fi
fi

# --- Profile ---

if ((profile)); then
	need perf "linux-perf"
	report="$out/profile.txt"
	log="$out/apf-profile.log"
	perf record -g -o "$out/perf.data" -- "$apf" "${APF_ARGS[@]}" --image "$img1" \
		--json "$out/apf-profile.json" >"$log" 2>"$out/perf-record.log" ||
		fail "perf record of apf (see $out/perf-record.log)"
	check_output "$log" "$n1" "apf under perf"
	# Whole reports go to files first: head closing a pipe early would fail the
	# script under pipefail.
	perf report -i "$out/perf.data" --no-children --percent-limit 1 --stdio \
		>"$out/perf-report.txt" 2>/dev/null || fail "perf report (see $out/perf.data)"
	{
		echo "# perf record -g of apf on CoreMark, $n1 iterations ($img1)"
		sed -n 1,80p "$out/perf-report.txt" | sed 's/ *$//' | cut -c1-160
		echo
	} >"$report"

	# Host instructions per guest instruction, over the difference of two runs
	# so startup cancels: perf's hardware counter when the machine has one,
	# else valgrind's exact count (at small N: it is about 50x slower).
	has_counter() { # perf stat -x output -> whether it counted instructions
		awk -F, '$3 == "instructions" && $1 ~ /^[0-9]+$/ { found = 1 } END { exit !found }' "$1"
	}
	counter=none c1=$n1 c2=$n2
	if perf stat -x, -e instructions -o "$out/perf-stat-probe.txt" -- true >/dev/null 2>&1 &&
		has_counter "$out/perf-stat-probe.txt"; then
		counter=perf
	elif command -v valgrind >/dev/null 2>&1; then
		counter=valgrind c1=$VALGRIND_N1 c2=$VALGRIND_N2
		build_image "$c1" >/dev/null
		build_image "$c2" >/dev/null
	fi
	host_instr() { # N -> host instructions of apf running CoreMark for N iterations
		local n=$1 img="$out/n$1/coremark.bin" stem="$out/apf-count-n$1"
		if [[ $counter == perf ]]; then
			perf stat -x, -e instructions -o "$stem.perf" -- "$apf" "${APF_ARGS[@]}" \
				--image "$img" --json "$stem.json" >"$stem.log" 2>&1 ||
				fail "perf stat of apf (see $stem.log)"
			awk -F, '$3 == "instructions" { print $1 }' "$stem.perf"
		else
			valgrind --tool=callgrind --callgrind-out-file="$stem.callgrind" "$apf" \
				"${APF_ARGS[@]}" --image "$img" --json "$stem.json" >"$stem.log" \
				2>"$stem.valgrind" || fail "valgrind of apf (see $stem.valgrind)"
			sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p' "$stem.valgrind"
		fi
		check_output "$stem.log" "$n" "apf counting instructions"
	}
	guest_instr() { jq '[.runs[0].vcpus[].instructions] | add' "$out/apf-count-n$1.json"; }
	if [[ $counter == none ]]; then
		echo "host instructions per guest instruction: not measured (no hardware counter, no valgrind)" >>"$report"
	else
		h1=$(host_instr "$c1")
		h2=$(host_instr "$c2")
		g1=$(guest_instr "$c1")
		g2=$(guest_instr "$c2")
		awk -v h="$((h2 - h1))" -v g="$((g2 - g1))" -v m="$counter" -v a="$c1" -v b="$c2" \
			'BEGIN { printf "host instructions per guest instruction: %.1f (%.0f host / %.0f guest, from N=%d to N=%d, counted with %s)\n", h / g, h, g, a, b, m }' \
			>>"$report"
	fi
	# perf puts nearly all of the interpreter in one function (everything is
	# inlined into run_page); callgrind's count splits it by source file.
	if [[ $counter == valgrind ]] && command -v callgrind_annotate >/dev/null 2>&1; then
		{
			echo
			echo "# callgrind, apf on CoreMark for N=$c2: host instructions by source file:function (top 30)"
			callgrind_annotate --threshold=99 "$out/apf-count-n$c2.callgrind" \
				>"$out/callgrind-annotate.txt" 2>/dev/null
			sed -n '/file:function/,$p' "$out/callgrind-annotate.txt" | sed '1,2d' |
				sed "s|$root/||; s|/rustc/[0-9a-f]*/||" | cut -c1-160 | sed -n 1,30p
		} >>"$report"
	fi
	echo
	cat "$report"
fi
