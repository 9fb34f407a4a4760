#!/usr/bin/env bash
# Set up `kvmctl lab`: QEMU, Debian's stock kernel (unpacked into a cache dir,
# never installed, so the host's /boot and bootloader stay untouched), its
# matching headers (for BCC inside the lab) and virtme-ng in its own venv.
# Idempotent and quiet when everything is already there.
#
# Environment:
#   KVMCTL_LAB_DIR   cache dir (default /var/lib/kvmctl/lab; not under /var/cache,
#                    which virtme-ng hides behind a tmpfs inside the lab)
#   KVMCTL_LAB_KPKG  another Debian kernel package to unpack beside the stock one (A/B runs:
#                    kvmctl lab --kernel $KVMCTL_LAB_DIR/kernels/<release>/boot/vmlinuz-<release>)
set -euo pipefail

LAB_DIR=${KVMCTL_LAB_DIR:-/var/lib/kvmctl/lab}
APT=(apt-get -o DPkg::Lock::Timeout=600 -qq -y)
log() { echo "setup-lab: $*" >&2; }

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        log "must run as root to install packages (re-run with sudo)"
        exit 1
    fi
}

apt_updated=0
apt_update_once() {
    if [[ $apt_updated -eq 0 ]]; then
        "${APT[@]}" update >/dev/null
        apt_updated=1
    fi
}

# Resolve a Debian metapackage (linux-image-amd64) to the versioned package it
# depends on (linux-image-6.1.0-NN-amd64).
resolve_dep() {
    apt-cache depends "$1" 2>/dev/null | awk -v pfx="$2" '$1 == "Depends:" && index($2, pfx) == 1 {print $2; exit}'
}

# 1. QEMU; kmod: depmod here, modprobe inside the lab (it shares our root);
# file: virtme-ng reads kernel versions with it.
missing=()
command -v file >/dev/null || missing+=(file)
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[[ -x /usr/sbin/depmod || -x /sbin/depmod ]] || missing+=(kmod)
# virtme-ng packs a static busybox into its initramfs
[[ -x /bin/busybox ]] && file -L /bin/busybox | grep -q "statically linked" || missing+=(busybox-static)
if [[ ${#missing[@]} -gt 0 ]]; then
    need_root
    log "installing ${missing[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The stock kernel, unpacked into the cache (not installed)
kpkg=${KVMCTL_LAB_KPKG:-$(resolve_dep linux-image-amd64 linux-image-)}
if [[ -z $kpkg ]]; then
    need_root
    apt_update_once
    kpkg=$(resolve_dep linux-image-amd64 linux-image-)
fi
[[ -n $kpkg ]] || { log "cannot resolve linux-image-amd64 to a kernel package"; exit 1; }
kver=${kpkg#linux-image-}
kver=${kver%-unsigned}
tree=$LAB_DIR/kernels/$kver
if [[ ! -f $tree/boot/vmlinuz-$kver || ! -d $tree/lib/modules/$kver/kernel ]]; then
    need_root
    log "unpacking $kpkg into $tree"
    apt_update_once
    mkdir -p "$tree"
    debs=$(mktemp -d)
    # apt's download sandbox user must be able to write the target dir
    chown _apt "$debs" 2>/dev/null || true
    (cd "$debs" && "${APT[@]}" download "$kpkg" >/dev/null)
    dpkg -x "$debs/${kpkg}_"*.deb "$tree"
    rm -rf "$debs"
fi
# Debian builds modules.dep in postinst, which we skip: make it for modprobe.
if [[ ! -s $tree/lib/modules/$kver/modules.dep ]]; then
    need_root
    PATH=$PATH:/usr/sbin:/sbin depmod -b "$tree" "$kver"
fi
# The stock link follows linux-image-amd64 only, never an extra package.
[[ -n ${KVMCTL_LAB_KPKG:-} ]] || ln -sfn "kernels/$kver" "$LAB_DIR/stock"

# 3. Matching headers: installing them is harmless to the host's boot.
hpkg=linux-headers-$kver
if ! dpkg-query -W -f='${Status}' "$hpkg" 2>/dev/null | grep -q "install ok installed"; then
    need_root
    log "installing $hpkg"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "$hpkg" >/dev/null
fi

# 4. virtme-ng in its own venv (it is a PyPI package; its deps stay out of ours)
venv=$LAB_DIR/vng-venv
if [[ ! -x $venv/bin/vng ]]; then
    need_root
    log "installing virtme-ng into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check virtme-ng
fi
