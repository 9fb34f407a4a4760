#!/usr/bin/env bash
# Build a lab kernel from Debian's linux-source package: a minimal virtme-ng
# config plus scripts/lab-kernel.config (idle page tracking, MGLRU, kprobes,
# KVM/kvm_amd), everything built in (no modules to install), optionally with a
# patch series applied and optionally with lockdep/RCU debugging.
#
#   scripts/build-lab-kernel.sh                                # the base tree
#   scripts/build-lab-kernel.sh --patches kernels/test-clear-young
#   scripts/build-lab-kernel.sh --patches kernels/test-clear-young --debug
#
# The last line printed is the tree to pass to `kvmctl lab --kernel`.
#
# Each tree is a git repository whose first commit (tag `base`) is the pristine
# source; a series is applied with `git am` on top of it, in its own tree
# (src/<package>+<series>, a worktree of the base tree), so the base tree stays
# buildable. Re-running reuses the tree: a changed series is re-applied (only
# the files it touches are rewritten) and make rebuilds what depends on them.
# Compiles go through ccache, so a new tree of the same source mostly hits the
# cache. The first build is 25-40 minutes of two CPUs; run it at nice 19.
#
# Environment:
#   KVMCTL_LAB_DIR   cache dir (default /var/lib/kvmctl/lab); trees land in $KVMCTL_LAB_DIR/src/
#   KVMCTL_LAB_SRC   another kernel source tree to configure and build as it is (no series)
#   CCACHE_DIR       ccache's cache (default $KVMCTL_LAB_DIR/ccache)
set -euo pipefail

LAB_DIR=${KVMCTL_LAB_DIR:-/var/lib/kvmctl/lab}
HERE=$(cd "$(dirname "$0")" && pwd)
APT=(apt-get -o DPkg::Lock::Timeout=600 -qq -y)
GIT=(git -c user.name=kvmctl -c user.email=kvmctl@localhost -c advice.detachedHead=false)
log() { echo "build-lab-kernel: $*" >&2; }
die() { echo "build-lab-kernel: error: $1 ($2)" >&2; exit "${3:-1}"; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

series=""
debug=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --patches) [[ $# -ge 2 ]] || die "--patches needs a directory" "give --patches kernels/<series>" 2
                   series=$2; shift 2 ;;
        --patches=*) series=${1#--patches=}; shift ;;
        --debug) debug=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1'" "see scripts/build-lab-kernel.sh --help" 2 ;;
    esac
done

patches=()
if [[ -n $series ]]; then
    [[ -d $series ]] || die "patch series $series is not a directory" "give --patches kernels/<series>" 2
    series=$(cd "$series" && pwd)
    mapfile -t patches < <(find "$series" -maxdepth 1 -name '*.patch' | sort)
    [[ ${#patches[@]} -gt 0 ]] || die "$series holds no *.patch files" "give a directory of git format-patch files" 2
    [[ -z ${KVMCTL_LAB_SRC:-} ]] || die "KVMCTL_LAB_SRC and --patches together" "apply the series to that tree yourself" 2
fi

vng=$LAB_DIR/vng-venv/bin/vng
[[ -x $vng ]] || die "virtme-ng is missing" "run scripts/setup-lab.sh first"

# build tools (Debian names); the source package only when no tree is given
pkgs=(flex bison bc libelf-dev libssl-dev make gcc git ccache)
if [[ -z ${KVMCTL_LAB_SRC:-} ]]; then
    src_pkg=$(apt-cache depends linux-source 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-source-/ {print $2; exit}')
    [[ -n $src_pkg ]] || die "cannot resolve linux-source to a versioned package" "apt-get update, then retry"
    pkgs+=("$src_pkg")
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || die "must run as root to install ${missing[*]}" "sudo scripts/build-lab-kernel.sh"
    log "installing ${missing[*]}"
    "${APT[@]}" update >/dev/null
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
fi

# The pristine source as a git repository with the tag `base`.
base_tree() {
    local tree=$LAB_DIR/src/$src_pkg
    if [[ ! -f $tree/Makefile ]]; then
        local tarball
        tarball=$(ls /usr/src/"$src_pkg".tar.* | head -1)
        log "unpacking $tarball into $LAB_DIR/src"
        mkdir -p "$LAB_DIR/src"
        tar -C "$LAB_DIR/src" -xf "$tarball"
    fi
    if ! git -C "$tree" rev-parse -q --verify refs/tags/base >/dev/null 2>&1; then
        log "recording the pristine source of $tree in git (tag base)"
        # a tree built before it was a repository: drop its outputs first
        [[ ! -f $tree/vmlinux ]] || make -C "$tree" -s mrproper >&2
        # Debian's top-level .gitignore ignores everything (-f), which also keeps
        # build outputs out of `git status` later
        {
            "${GIT[@]}" -C "$tree" init -q
            "${GIT[@]}" -C "$tree" add -A -f
            "${GIT[@]}" -C "$tree" commit -q -m "$src_pkg as unpacked from /usr/src"
            "${GIT[@]}" -C "$tree" tag base
        } >&2
    fi
    echo "$tree"
}

# A worktree of the base tree at `base` plus the series; reuses an existing one.
series_tree() {
    local base=$1 name=$2 tree=$LAB_DIR/src/$src_pkg+$2 created=0
    if [[ ! -e $tree/.git ]]; then
        log "creating the tree $tree"
        created=1
        {
            "${GIT[@]}" -C "$base" worktree prune
            "${GIT[@]}" -C "$base" worktree add -q --detach "$tree" base
        } >&2
    fi
    local want have
    want=$(cat "${patches[@]}" | sha256sum | cut -d' ' -f1)
    have=$(cat "$tree/.kvmctl-series" 2>/dev/null || true)
    if [[ $want != "$have" ]]; then
        rm -f "$tree/.kvmctl-series"
        "${GIT[@]}" -C "$tree" am --abort >/dev/null 2>&1 || true
        "${GIT[@]}" -C "$tree" reset -q --hard base
        local p
        for p in "${patches[@]}"; do
            if ! "${GIT[@]}" -C "$tree" am -q "$p" >/dev/null 2>&1; then
                "${GIT[@]}" -C "$tree" am --abort >/dev/null 2>&1 || true
                local left="the tree was reset to base"
                if [[ $created -eq 1 ]]; then  # a tree made for this series alone goes with it
                    "${GIT[@]}" -C "$base" worktree remove --force "$tree" >&2
                    left="the tree made for it was removed"
                else
                    "${GIT[@]}" -C "$tree" reset -q --hard base
                fi
                die "$(basename "$p") does not apply to $src_pkg" \
                    "rebase the series on $("${GIT[@]}" -C "$base" log -1 --format=%s base); $left" 2
            fi
        done
        echo "$want" >"$tree/.kvmctl-series"
        log "applied ${#patches[@]} patches from $series"
    fi
    echo "$tree"
}

suffix=""
if [[ -n ${KVMCTL_LAB_SRC:-} ]]; then
    tree=$KVMCTL_LAB_SRC
else
    tree=$(base_tree)
    name=""
    [[ -z $series ]] || name=$(basename "$series")
    [[ $debug -eq 0 ]] || name=${name:+$name+}debug
    if [[ -n $name ]]; then
        if [[ ${#patches[@]} -gt 0 ]]; then
            tree=$(series_tree "$tree" "$name")
        else
            # debug build of the base: a worktree with no series
            tree=$LAB_DIR/src/$src_pkg+$name
            [[ -e $tree/.git ]] || "${GIT[@]}" -C "$LAB_DIR/src/$src_pkg" worktree add -q --detach "$tree" base >&2
        fi
        suffix=-${name//+/-}
    fi
fi
cd "$tree"

log "configuring $tree"
# the merge's "override" warnings are expected: the fragment overrides virtme-ng's defaults
PATH=$(dirname "$vng"):$PATH "$vng" --kconfig --config "$HERE/lab-kernel.config" >.kvmctl-kconfig.log 2>&1 \
    || { cat .kvmctl-kconfig.log >&2; die "virtme-ng could not configure $tree" "see the messages above"; }
# no DWARF (it triples the build) and nothing left as a module
./scripts/config --disable DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT --disable DEBUG_INFO_DWARF4 \
    --disable DEBUG_INFO_DWARF5 --enable DEBUG_INFO_NONE --set-str LOCALVERSION "-kvmctl-lab$suffix"
if [[ $debug -eq 1 ]]; then
    # lockdep and RCU checking, the way a kernel developer validates locking changes
    ./scripts/config --enable DEBUG_KERNEL --enable PROVE_LOCKING --enable PROVE_RCU \
        --enable DEBUG_ATOMIC_SLEEP --enable DEBUG_LOCK_ALLOC --enable DEBUG_SPINLOCK \
        --enable DEBUG_RWSEMS --enable DEBUG_MUTEXES
fi
make olddefconfig >/dev/null
for m in $(sed -n 's/^CONFIG_\(.*\)=m$/\1/p' .config); do ./scripts/config --disable "$m"; done
make olddefconfig >/dev/null
want_items=(KVM_AMD IDLE_PAGE_TRACKING LRU_GEN KPROBES BPF_SYSCALL ZRAM)
[[ $debug -eq 0 ]] || want_items+=(PROVE_LOCKING PROVE_RCU)
for item in "${want_items[@]}"; do
    grep -q "^CONFIG_$item=y" .config || die "CONFIG_$item did not stay enabled in $tree/.config" "check scripts/lab-kernel.config"
done

export CCACHE_DIR=${CCACHE_DIR:-$LAB_DIR/ccache}
# Relative paths in the cache key, so that another tree of the same source hits it.
export CCACHE_BASEDIR=$tree CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-8G}
log "building (make -j$(nproc) bzImage modules, through ccache in $CCACHE_DIR)"
make -j"$(nproc)" CC="ccache gcc" bzImage modules >/dev/null
log "built $(cat include/config/kernel.release); ccache: $(ccache -s 2>/dev/null | awk '/[Hh]its:/ {printf "%s ", $0}' | tr -s ' ')"
echo "$tree"
