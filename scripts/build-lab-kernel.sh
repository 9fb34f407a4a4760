#!/usr/bin/env bash
# Build a lab kernel with what Debian's stock kernel lacks (CONFIG_IDLE_PAGE_TRACKING)
# from Debian's linux-source package: a minimal virtme-ng config plus
# scripts/lab-kernel.config, everything built in (no modules to install).
# Idempotent: an existing tree is reconfigured and rebuilt incrementally.
# About 25 minutes of two CPUs from scratch. Needs scripts/setup-lab.sh first.
#
#   scripts/build-lab-kernel.sh            # prints the tree to pass to kvmctl lab --kernel
#
# Environment:
#   KVMCTL_LAB_DIR   cache dir (default /var/lib/kvmctl/lab); the tree lands in $KVMCTL_LAB_DIR/src/
#   KVMCTL_LAB_SRC   another kernel source tree to configure and build instead (e.g. a patched one)
set -euo pipefail

LAB_DIR=${KVMCTL_LAB_DIR:-/var/lib/kvmctl/lab}
HERE=$(cd "$(dirname "$0")" && pwd)
APT=(apt-get -o DPkg::Lock::Timeout=600 -qq -y)
log() { echo "build-lab-kernel: $*" >&2; }

vng=$LAB_DIR/vng-venv/bin/vng
[[ -x $vng ]] || { log "virtme-ng is missing: run scripts/setup-lab.sh first"; exit 1; }

# build tools (Debian names); the source package only when no tree is given
pkgs=(flex bison bc libelf-dev libssl-dev make gcc)
if [[ -z ${KVMCTL_LAB_SRC:-} ]]; then
    src_pkg=$(apt-cache depends linux-source 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-source-/ {print $2; exit}')
    [[ -n $src_pkg ]] || { log "cannot resolve linux-source to a versioned package"; exit 1; }
    pkgs+=("$src_pkg")
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || { log "must run as root to install ${missing[*]}"; exit 1; }
    log "installing ${missing[*]}"
    "${APT[@]}" update >/dev/null
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ -n ${KVMCTL_LAB_SRC:-} ]]; then
    tree=$KVMCTL_LAB_SRC
else
    tree=$LAB_DIR/src/$src_pkg
    if [[ ! -f $tree/Makefile ]]; then
        tarball=$(ls /usr/src/"$src_pkg".tar.* | head -1)
        log "unpacking $tarball into $LAB_DIR/src"
        mkdir -p "$LAB_DIR/src"
        tar -C "$LAB_DIR/src" -xf "$tarball"
    fi
fi
cd "$tree"

log "configuring $tree"
PATH=$(dirname "$vng"):$PATH "$vng" --kconfig --config "$HERE/lab-kernel.config" >/dev/null
# no DWARF (it triples the build) and nothing left as a module
./scripts/config --disable DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT --disable DEBUG_INFO_DWARF4 \
    --disable DEBUG_INFO_DWARF5 --enable DEBUG_INFO_NONE --set-str LOCALVERSION "-kvmctl-lab"
make olddefconfig >/dev/null
for m in $(sed -n 's/^CONFIG_\(.*\)=m$/\1/p' .config); do ./scripts/config --disable "$m"; done
make olddefconfig >/dev/null
for item in KVM_AMD IDLE_PAGE_TRACKING LRU_GEN KPROBES BPF_SYSCALL ZRAM; do
    grep -q "^CONFIG_$item=y" .config || { log "CONFIG_$item did not stay enabled in $tree/.config"; exit 1; }
done

log "building (make -j$(nproc) bzImage modules)"
make -j"$(nproc)" bzImage modules >/dev/null
log "built $(cat include/config/kernel.release)"
echo "$tree"
