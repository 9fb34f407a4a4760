#!/usr/bin/env bash
# Set up kvmctl on a Debian 12 / Ubuntu KVM host, as root, from nothing but
# python3 and apt: system packages (BCC, bpftrace, toolchain, kernel headers,
# chromium), the kernel-headers links BCC needs, tracefs/debugfs mounts, and
# the project venv (.venv, which sees Debian's python3-bpfcc).
# Idempotent: quiet and takes seconds when everything is already in place.
#
# Environment:
#   KVMCTL_SETUP_LAB=0   skip scripts/setup-lab.sh (the emulated-kernel lab)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO/.venv
APT=(apt-get -o DPkg::Lock::Timeout=600 -qq -y)
export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1
log() { echo "setup: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root: sudo scripts/setup.sh"
command -v apt-get >/dev/null || die "needs apt (Debian 12 or Ubuntu)"
[[ -x /usr/bin/python3 ]] || die "needs /usr/bin/python3 (apt-get install python3)"

# shellcheck source=/dev/null
. /etc/os-release
release=$(uname -r)
arch=$(dpkg --print-architecture)

is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

apt_updated=0
apt_update_once() {
    if [[ $apt_updated -eq 0 ]]; then
        "${APT[@]}" update >/dev/null
        apt_updated=1
    fi
}

apt_install() {
    log "installing $*"
    apt_update_once
    "${APT[@]}" install --no-install-recommends "$@" >/dev/null
}

# 1. System packages. python3-bpfcc is BCC's Python module; never pip's "bcc".
# qemu-system-x86: the foreign VMs the kvmctl watch tests start (the lab needs it too).
required=(python3-venv python3-bpfcc bpfcc-tools bpftrace bpftool gcc make binutils qemu-system-x86)
missing=()
for pkg in "${required[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"

# Kernel headers, when the running kernel has none: its own package if the
# archive has one, else the distribution's default headers (unless some are
# installed already: any tree serves BCC's tracepoint programs).
build=/lib/modules/$release/build
has_headers() { compgen -G "/usr/src/linux-headers-*/include/generated/autoconf.h" >/dev/null; }
has_pkg() { apt-cache show "$1" >/dev/null 2>&1; }
if [[ ! -e $build ]]; then
    # A fresh machine has empty package lists.
    has_pkg "linux-headers-$release" || has_headers || apt_update_once
    if has_pkg "linux-headers-$release"; then
        apt_install "linux-headers-$release"
    elif ! has_headers; then
        if [[ ${ID:-} == ubuntu ]]; then apt_install linux-headers-generic; else apt_install "linux-headers-$arch"; fi
    fi
fi

# Chromium renders HTML reports in tests; optional (those tests skip without it).
browser=chromium
[[ ${ID:-} == ubuntu ]] && browser=chromium-browser
if ! is_installed "$browser" && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    apt_install "$browser" || log "warning: could not install $browser; HTML rendering tests will skip"
fi

# 2. BCC looks for headers under /lib/modules/$(uname -r)/{build,source}. With
# no headers for this kernel, point them at the newest installed tree (Debian
# splits it into -<flavour> and -common; Ubuntu's common tree has no suffix).
if [[ ! -e $build ]]; then
    tree=$(for d in /usr/src/linux-headers-*; do
               if [[ -f $d/include/generated/autoconf.h ]]; then echo "$d"; fi
           done | sort -V | tail -n 1)
    [[ -n $tree ]] || die "no kernel headers under /usr/src after installing them"
    base=${tree%-*}
    source_tree=$tree
    for cand in "$base-common" "$base"; do
        if [[ -d $cand && $cand != "$tree" ]]; then source_tree=$cand; break; fi
    done
    mkdir -p "/lib/modules/$release"
    ln -sfn "$tree" "$build"
    ln -sfn "$source_tree" "/lib/modules/$release/source"
    log "WARNING: there are no kernel headers for the running kernel $release."
    log "  linked $build -> $tree"
    log "  and /lib/modules/$release/source -> $source_tree."
    log "  These headers ($(basename "$tree" | sed 's/^linux-headers-//')) do NOT match the running kernel:"
    log "  BCC tracepoint programs work with them; anything reading kernel structs may not."
fi

# 3. tracefs and debugfs (BCC attaches tracepoints through tracefs).
mount_if_absent() {
    local fstype=$1 dir=$2
    if [[ -d $dir ]] && ! mountpoint -q "$dir"; then
        mount -t "$fstype" nodev "$dir" || log "warning: cannot mount $fstype at $dir; BPF tests will skip"
    fi
}
mount_if_absent debugfs /sys/kernel/debug
mount_if_absent tracefs /sys/kernel/tracing

# 4. The venv: system site packages so that Debian's bcc module imports.
venv_ok() {
    [[ -x $VENV/bin/python ]] && grep -qs "include-system-site-packages = true" "$VENV/pyvenv.cfg" \
        && "$VENV/bin/python" -c "" 2>/dev/null
}
if ! venv_ok; then
    log "creating $VENV"
    /usr/bin/python3 -m venv --system-site-packages --clear "$VENV"
fi
# Reinstall only when pyproject.toml changed or the install is broken.
stamp=$VENV/.kvmctl-setup-stamp
want=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
installed_ok() {
    [[ -f $stamp && $(cat "$stamp") == "$want" ]] && "$VENV/bin/python" - "$REPO" <<'EOF' 2>/dev/null
import sys
from pathlib import Path
import kvmctl, numpy, psutil, pytest, pytest_timeout, qemu.qmp, rich  # noqa: F401
sys.exit(0 if Path(kvmctl.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()) else 1)
EOF
}
if ! installed_ok; then
    log "installing kvmctl (editable) and its test dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test]"
    echo "$want" >"$stamp"
fi
"$VENV/bin/python" -c "from bcc import BPF" 2>/dev/null \
    || log "warning: BCC does not import in $VENV (is python3-bpfcc installed?); BPF tests will skip"

# 5. Where the README commands write (JUnit XML, reports); kvmctl creates no directories.
mkdir -p "$REPO/out/reports"

# 6. The emulated-kernel lab, when this checkout has it.
if [[ -f $REPO/scripts/setup-lab.sh && ${KVMCTL_SETUP_LAB:-1} != 0 ]]; then
    bash "$REPO/scripts/setup-lab.sh" || log "warning: lab setup failed (exit $?); lab tests will skip"
fi
