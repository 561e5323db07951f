#!/usr/bin/env bash
# Gets Debian's stock arm64 Linux 6.12 kernel and builds the initramfs that runs
# apf's workloads on it (README.md beside this script says what the init does),
# with the apf guest module (apf/) cross-built against that kernel's headers.
#
# Prints, as its last two lines of stdout, the kernel Image's absolute path and
# then the initramfs's; everything else goes to stderr.
#
# Needs: bash, coreutils, make, gcc-aarch64-linux-gnu (its aarch64-linux-gnu-gcc-12,
# the compiler Debian built the kernel with), binutils-aarch64-linux-gnu, pahole
# (package dwarves: the kernel has BTF for modules), and for the first download dpkg + apt (Debian or Ubuntu), network, and root (or
# sudo) if the arm64 architecture must be added or apt's lists updated.
# No cpio tool: the archive is written here (newc is a simple format).
#
# Environment:
#   APF_LINUX_CACHE    cache directory (default: <repo>/target/linux)
#   APF_LINUX_PACKAGE  the kernel package to use, e.g.
#                      linux-image-6.12.118+deb12-arm64-unsigned (default: the
#                      newest cached kernel, else the newest apt offers)
#   CROSS              cross-compiler prefix (default: aarch64-linux-gnu-)
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)
cache=${APF_LINUX_CACHE:-$repo/target/linux}
cross=${CROSS:-aarch64-linux-gnu-}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# Changing apt's configuration needs root: sudo when not root (as .ci/run does).
sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

package_prefix=linux-image-
package_suffix=-arm64-unsigned

# The kernel release a package name carries: linux-image-<release>-unsigned.
release_of() {
    local name=${1#"$package_prefix"}
    printf '%s\n' "${name%-unsigned}"
}

# Newest linux-image-6.12.*+deb12-arm64-unsigned that apt can download.
newest_package() {
    local candidates name
    candidates=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-arm64-unsigned$' |
        cut -d' ' -f1 | sort -rV)
    for name in $candidates; do
        # A name can be known (e.g. from a Provides) without a version to download.
        # Not `| grep -q`: under pipefail, apt-cache's SIGPIPE would fail the test.
        if [[ $(apt-cache policy "$name:arm64") == *"Candidate: "[0-9]* ]]; then
            printf '%s\n' "$name"
            return 0
        fi
    done
    return 1
}

fetch_kernel() {
    local package=$1 release dir work deb
    release=$(release_of "$package")
    dir=$cache/$release
    [ -s "$dir/Image" ] && return 0
    prepare_apt
    log "downloading $package:arm64"
    work=$(mktemp -d "$cache/download.XXXXXX")
    # shellcheck disable=SC2064 # expand now: work is local
    trap "rm -rf '$work'" EXIT
    apt_download "$work" "$package:arm64"
    deb=$(find "$work" -maxdepth 1 -name '*.deb' | head -n 1)
    [ -n "$deb" ] || die "apt-get download left no .deb in $work"
    # Only the Image: the whole package unpacks to hundreds of MB of modules.
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*' ||
        die "no ./boot/vmlinuz-* in $deb"
    mkdir -p "$dir"
    mv "$work/boot/vmlinuz-$release" "$dir/Image.tmp" ||
        die "$deb has no boot/vmlinuz-$release"
    mv "$dir/Image.tmp" "$dir/Image"
    rm -rf "$work"
    trap - EXIT
    log "kernel $release cached in $dir"
}

# Downloads into $2 (a directory) the packages named after $1, with apt as root
# when root (the _apt user cannot enter a root-owned mktemp directory).
apt_download() {
    local dir=$1
    shift
    local as_root=()
    [ "$(id -u)" -eq 0 ] && as_root=(-o APT::Sandbox::User=root)
    (cd "$dir" && apt-get download -q "${as_root[@]}" "$@" >&2) ||
        die "apt-get download $* failed"
}

# The headers the module is built against, for exactly the kernel's release:
# linux-headers-<release> (arm64), the -common headers it includes (all) and the
# linux-kbuild host tools (this machine's architecture), extracted into
# <cache>/<release>/headers/; prints that headers tree's path.
fetch_headers() {
    local release=$1 dir tree common work deb kbuild
    dir=$(printf '%s/%s/headers' "$cache" "$release")
    tree=$dir/usr/src/linux-headers-$release
    if [ ! -e "$dir/.complete" ]; then
        prepare_apt
        # The -common and -kbuild names come from the headers' own dependencies:
        # linux-headers-6.12.118+deb12-arm64 needs ...-6.12.118+deb12-common.
        local deps
        deps=$(apt-cache depends "linux-headers-$release:arm64") ||
            die "apt-cache knows no linux-headers-$release:arm64"
        # A dependency can show as <name:arm64> (virtual) with the real name below:
        # the bare names are what to download.
        common=$(grep -oP 'linux-headers-[^\s:<>]+-common' <<<"$deps" | head -n 1)
        kbuild=$(grep -oP 'linux-kbuild-[^\s:<>]+' <<<"$deps" | head -n 1)
        [ -n "$common" ] && [ -n "$kbuild" ] ||
            die "no -common or linux-kbuild dependency of linux-headers-$release:arm64 in:$(printf '\n%s' "$deps")"
        log "downloading linux-headers-$release:arm64 $common $kbuild:$(dpkg --print-architecture)"
        work=$(mktemp -d "$cache/download.XXXXXX")
        # shellcheck disable=SC2064 # expand now: work is local
        trap "rm -rf '$work'" EXIT
        apt_download "$work" "linux-headers-$release:arm64" "$common" \
            "$kbuild:$(dpkg --print-architecture)"
        rm -rf "$dir"
        mkdir -p "$dir"
        for deb in "$work"/*.deb; do
            dpkg-deb -x "$deb" "$dir" || die "extracting $deb failed"
        done
        rm -rf "$work"
        trap - EXIT
        # The headers' Makefile is one line including /usr/src/<common>/Makefile:
        # point it at the extracted copy, so nothing is written outside the cache.
        [ -f "$tree/Makefile" ] || die "linux-headers-$release has no Makefile at $tree"
        sed -i -E "s#^include /usr/src/(linux-headers-[^/]+-common)/Makefile\$#include $dir/usr/src/\1/Makefile#" \
            "$tree/Makefile"
        grep -q "^include $dir/usr/src/linux-headers-.*-common/Makefile\$" "$tree/Makefile" ||
            die "$tree/Makefile does not include the -common headers as expected: $(cat "$tree/Makefile")"
        touch "$dir/.complete"
        log "headers for $release cached in $dir"
    fi
    printf '%s\n' "$tree"
}

# Makes apt able to see arm64 packages; updates its lists only when needed.
apt_ready=0
prepare_apt() {
    [ $apt_ready -eq 1 ] && return 0
    command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
        die "no apt-get or dpkg: the kernel download needs Debian's apt"
    local updated=0
    if [ "$(dpkg --print-architecture)" != arm64 ] &&
        ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "dpkg --add-architecture arm64"
        $sudo dpkg --add-architecture arm64
        $sudo apt-get update -q >&2
        updated=1
    fi
    if [ $updated -eq 0 ] && ! newest_package >/dev/null; then
        $sudo apt-get update -q >&2
    fi
    apt_ready=1
}

# Sets package to the kernel package to use.
choose_package() {
    if [ -n "${APF_LINUX_PACKAGE:-}" ]; then
        case $APF_LINUX_PACKAGE in
        "$package_prefix"*"$package_suffix") package=$APF_LINUX_PACKAGE ;;
        *) die "APF_LINUX_PACKAGE=$APF_LINUX_PACKAGE is not a linux-image-*-arm64-unsigned package" ;;
        esac
        return
    fi
    # A cached kernel wins over asking apt: repeat runs stay offline and fast.
    local newest
    newest=$(find "$cache" -mindepth 2 -maxdepth 2 -name Image -size +0 -printf '%h\n' |
        xargs -r -n1 basename | sort -V | tail -n 1)
    if [ -n "$newest" ]; then
        package=$package_prefix$newest-unsigned
        return
    fi
    prepare_apt
    package=$(newest_package) ||
        die "apt offers no linux-image-6.12.*+deb12-arm64-unsigned package"
}

# --- the init ---
cflags=(-std=gnu11 -O2 -Wall -Wextra -Werror
    -static -nostdlib -ffreestanding -fno-builtin -mgeneral-regs-only
    -march=armv8-a -mno-outline-atomics -fno-stack-protector -fno-pic -no-pie
    -fno-tree-loop-distribute-patterns -fno-asynchronous-unwind-tables -fno-unwind-tables
    "-ffile-prefix-map=$repo=." -Wl,--build-id=none
    "-I$repo/guest" "-I$repo/guest/include")

build_init() {
    local out=$1 scratch
    scratch=$(mktemp -d)
    check_fp_detector "$scratch"
    rm -rf "$scratch"
    "${cross}gcc" "${cflags[@]}" -o "$out.tmp" "$script_dir/init.c" "$script_dir/cases.c" >&2 ||
        die "compiling $script_dir/init.c and cases.c failed"
    check_no_fp "$out.tmp"
    mv "$out.tmp" "$out"
}

# The interpreter has no FP/SIMD and Linux keeps FP trapped: one FP/SIMD
# instruction in the init would be a SIGILL, and init dying panics the kernel.
# An instruction with an operand naming a b/h/s/d/q/v/z register or FPCR/FPSR is
# one; fp_instructions prints them.
fp_instructions() {
    "${cross}objdump" -d --no-show-raw-insn "$1" |
        grep -P '^\s+[0-9a-f]+:\t' |
        sed -e 's#//.*##' -e 's#<[^>]*>##g' |
        grep -P '\t\S+\t.*(?<![\w#])([bhsdqvz]\d{1,2}(\.\w+)?|fpcr|fpsr)(?!\w)' || true
}

check_no_fp() {
    local elf=$1 found
    found=$(fp_instructions "$elf")
    if [ -n "$found" ]; then
        printf '%s\n' "$found" | head -n 20 >&2
        die "$elf has FP/SIMD instructions (above)"
    fi
    log "$(basename "${elf%.tmp}"): no FP/SIMD instruction"
}

# The check above must itself see FP/SIMD: it is run on code full of it (scalar
# and vector arithmetic, FPCR, SIMD loads and stores), every time.
check_fp_detector() {
    local dir=$1 found missing=""
    cat >"$dir/fp.c" <<'FP'
double scale(double x, long n) { return x * (double)n + 0.5; }
float ratio(float x, float y) { return x / y; }
void copy(unsigned long *d, const unsigned long *s) { for (int i = 0; i < 64; i++) d[i] = s[i]; }
void add4(int *d, const int *s) { for (int i = 0; i < 64; i++) d[i] += s[i]; }
unsigned long rounding(void) { unsigned long r; __asm__ volatile("mrs %0, fpcr" : "=r"(r)); return r; }
FP
    "${cross}gcc" -O3 -c -o "$dir/fp.o" "$dir/fp.c" >&2
    found=$(fp_instructions "$dir/fp.o")
    for want in $'\tscvtf\t' $'\tfmov\t' $'\tfdiv\t' $'\tmrs\t.*fpcr' $'\tadd\tv' $'\tldr\tq'; do
        grep -qP -- "$want" <<<"$found" || missing+=" $want"
    done
    [ -z "$missing" ] || die "the FP/SIMD check misses:$missing in$(printf '\n%s' "$found")"
}

# --- the guest module ---
# Kbuild writes its objects beside the sources: build a copy in the cache, so the
# source tree stays clean. Only changed files are copied, so make rebuilds only
# what changed.
build_module() {
    local headers=$1 out=$2 build=$3 f
    command -v "${cross}gcc-12" >/dev/null ||
        die "no ${cross}gcc-12: the kernel was built with gcc 12 (package gcc-aarch64-linux-gnu on Debian 12)"
    command -v pahole >/dev/null ||
        die "no pahole: the kernel has BTF for modules (package dwarves)"
    mkdir -p "$build"
    for f in "$script_dir"/apf/*; do
        cmp -s "$f" "$build/$(basename "$f")" || cp "$f" "$build/"
    done
    make -s -C "$headers" M="$build" ARCH=arm64 CROSS_COMPILE="$cross" CC="${cross}gcc-12" \
        modules >&2 || die "building the apf module against $headers failed"
    # Debug info is most of the file and the guest would copy it at every load;
    # --strip-debug keeps .BTF and the symbols.
    "${cross}strip" --strip-debug -o "$out.tmp" "$build/apf.ko" ||
        die "strip --strip-debug $build/apf.ko failed"
    mv "$out.tmp" "$out"
    log "apf.ko: $(stat -c %s "$out") bytes"
}

# --- the initramfs: an uncompressed newc cpio (decompressing costs guest time) ---
cpio_ino=0
# cpio_entry NAME MODE SIZE [FILE]: one newc header, the name, then the data.
cpio_entry() {
    local name=$1 mode=$2 size=$3 file=${4:-} namesize pad nlink=1
    cpio_ino=$((cpio_ino + 1))
    namesize=$((${#name} + 1))
    [ $((mode & 0170000)) -eq $((0040000)) ] && nlink=2
    # magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    # rdevmajor, rdevminor, namesize, check; mtime 0 keeps the archive reproducible.
    printf '070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x' \
        "$cpio_ino" "$mode" 0 0 "$nlink" 0 "$size" 0 0 0 0 "$namesize" 0
    printf '%s\0' "$name"
    pad=$(((4 - (110 + namesize) % 4) % 4))
    head -c "$pad" /dev/zero
    if [ -n "$file" ]; then
        cat "$file"
        head -c $(((4 - size % 4) % 4)) /dev/zero
    fi
}

build_initramfs() {
    local init=$1 module=$2 out=$3
    {
        cpio_entry dev $((0040755)) 0
        cpio_entry proc $((0040755)) 0
        cpio_entry init $((0100755)) "$(stat -c %s "$init")" "$init"
        cpio_entry apf.ko $((0100644)) "$(stat -c %s "$module")" "$module"
        cpio_ino=-1
        cpio_entry 'TRAILER!!!' 0 0
    } >"$out.tmp"
    mv "$out.tmp" "$out"
}

package=""
choose_package
fetch_kernel "$package"
image=$cache/$(release_of "$package")/Image
headers=$(fetch_headers "$(release_of "$package")")
build_init "$cache/init"
build_module "$headers" "$cache/apf.ko" "$cache/$(release_of "$package")/apf-build"
build_initramfs "$cache/init" "$cache/apf.ko" "$cache/initramfs.cpio"
log "kernel $(release_of "$package"), initramfs $(stat -c %s "$cache/initramfs.cpio") bytes"
printf '%s\n%s\n' "$image" "$cache/initramfs.cpio"
