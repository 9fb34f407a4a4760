"""The lab's side of `kvmctl lab`: runs as root inside the emulated machine.

It prepares the lab kernel for kvmctl (kvm_amd, tracefs/debugfs, headers for
BCC), records what the kernel offers in ``lab.json`` in the shared scratch
dir, announces readiness on stderr (the host times the boot by it) and then
runs the command under the no-progress watchdog (kvmctl.lab.watchdog).
Everything it changes lives in the lab VM and dies with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvmctl.errors import KvmctlError, UnsupportedError
from kvmctl.lab.watchdog import run_watched

READY_MARKER = "kvmctl-lab: ready"
FACTS_FILE = "lab.json"
LAB_ENV = "KVMCTL_LAB"  # set for the command, so tools can tell they run in a lab
TMPDIR_ENV = "KVMCTL_TMPDIR"  # where kvmctl puts file-backed guest memory

_SYSFS_PARAMS = Path("/sys/module")
_SHADOW_DIR = Path("/run/kvmctl-lab")


@dataclass
class LabFacts:
    """What the lab kernel offers, read once before the command runs."""

    release: str
    uptime_s: float  # kernel uptime when the command was about to start
    cpu_svm: bool
    cpu_npt: bool
    kvm_amd_loaded: bool
    npt: str | None  # /sys/module/kvm_amd/parameters/npt
    tdp_mmu: str | None  # /sys/module/kvm/parameters/tdp_mmu
    nested: str | None
    dev_kvm: bool
    kprobes: bool
    btf_vmlinux: bool
    btf_kvm: bool
    lru_gen: str | None  # /sys/kernel/mm/lru_gen/enabled, None if MGLRU is not built
    page_idle: bool
    headers: str | None  # where /lib/modules/<release>/build points
    disk: str | None  # ext4 on zram: page cache for file-backed guests (the lab's /tmp is tmpfs)
    swap_bytes: int  # zram swap, so reclaim can also age anonymous guest memory
    problems: list[str] = field(default_factory=list)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _param(module: str, name: str) -> str | None:
    return _read(_SYSFS_PARAMS / module / "parameters" / name)


def in_lab() -> bool:
    """True inside a virtme-ng guest; keeps modprobe and mounts off the host."""
    return "virtme_hostname=" in (_read(Path("/proc/cmdline")) or "")


def _run(argv: list[str]) -> str | None:
    """Run a setup command; return its error text, or None on success."""
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode == 0:
        return None
    return f"{' '.join(argv)}: {(res.stderr or res.stdout).strip() or f'exit {res.returncode}'}"


def _mounted(target: str) -> bool:
    return any(line.split()[1] == target for line in Path("/proc/self/mounts").read_text().splitlines())


def mount_pseudo_filesystems(problems: list[str]) -> None:
    for fstype, target in (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug")):
        if not _mounted(target):
            err = _run(["mount", "-t", fstype, "nodev", target])
            if err:
                problems.append(err)


def load_kvm_amd(problems: list[str]) -> None:
    if (_SYSFS_PARAMS / "kvm_amd").is_dir():
        return
    err = _run(["modprobe", "kvm_amd"])
    if err:
        problems.append(err)


def link_headers(release: str, headers: Path | None, common: Path | None, problems: list[str]) -> str | None:
    """Make /lib/modules/<release>/build point at ``headers`` inside the lab only.

    The modules dir is the host's read-only tree, so a tmpfs directory of
    symlinks (the original entries plus build/source) is bind-mounted over it.
    The original is first bind-mounted aside so the symlinks can still reach it.
    """
    moddir = Path("/lib/modules") / release
    build = moddir / "build"
    if build.exists():
        return str(build.resolve())
    if headers is None:
        problems.append(f"no headers for {release}: BCC programs cannot be compiled in this lab")
        return None
    try:
        moddir.mkdir(parents=True, exist_ok=True)  # virtme-ng's tmpfs /lib/modules when modules are absent
    except OSError as err:
        problems.append(f"cannot create {moddir}: {err.strerror}; BCC has no headers in this lab")
        return None
    orig, shadow = _SHADOW_DIR / "modules-orig", _SHADOW_DIR / "modules"
    orig.mkdir(parents=True, exist_ok=True)
    shadow.mkdir(parents=True, exist_ok=True)
    err = _run(["mount", "--bind", str(moddir.resolve()), str(orig)])
    if err:
        problems.append(err)
        return None
    for entry in orig.iterdir():
        if entry.name not in ("build", "source"):
            (shadow / entry.name).symlink_to(entry)
    (shadow / "build").symlink_to(headers)
    if common is not None:
        (shadow / "source").symlink_to(common)
    err = _run(["mount", "--bind", str(shadow), str(moddir.resolve())])
    if err:
        problems.append(err)
        return None
    return str(headers)


def _zram(index: int, size: int, problems: list[str]) -> Path | None:
    dev = Path(f"/dev/zram{index}")
    try:
        Path(f"/sys/block/zram{index}/disksize").write_text(str(size))
    except OSError as err:
        problems.append(f"zram{index}: cannot set disksize: {err.strerror}")
        return None
    return dev


def make_disks(disk_bytes: int, swap_bytes: int, problems: list[str]) -> tuple[str | None, int]:
    """RAM-backed block devices: an ext4 scratch disk and swap, both lab-only.

    Reclaim scans only page cache without swap, and tmpfs files are shmem:
    a real disk filesystem gives file-backed guests the host's semantics.
    """
    if not disk_bytes and not swap_bytes:
        return None, 0
    err = None if Path("/sys/class/zram-control").is_dir() else _run(["modprobe", "zram", "num_devices=2"])
    if err:
        problems.append(err)
        return None, 0
    for _ in range(2):  # a built-in zram ignores num_devices: add devices by hand
        if Path("/sys/block/zram1").exists():
            break
        try:
            Path("/sys/class/zram-control/hot_add").read_text()
        except OSError as err:
            problems.append(f"zram: cannot add a device: {err.strerror or err}")
            break
    disk = None
    if disk_bytes and (dev := _zram(0, disk_bytes, problems)):
        mnt = _SHADOW_DIR / "disk"
        mnt.mkdir(parents=True, exist_ok=True)
        err = _run(["mkfs.ext4", "-q", "-F", str(dev)]) or _run(["mount", str(dev), str(mnt)])
        if err:
            problems.append(err)
        else:
            disk = str(mnt)
    swapped = 0
    if swap_bytes and (dev := _zram(1, swap_bytes, problems)):
        err = _run(["mkswap", "-q", str(dev)]) or _run(["swapon", str(dev)])
        if err:
            problems.append(err)
        else:
            swapped = swap_bytes
    return disk, swapped


def collect_facts(release: str, headers: str | None, disk: str | None, swap_bytes: int,
                  problems: list[str]) -> LabFacts:
    flags: set[str] = set()
    for line in (_read(Path("/proc/cpuinfo")) or "").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    facts = LabFacts(
        release=os.uname().release,
        uptime_s=float((_read(Path("/proc/uptime")) or "0").split()[0]),
        cpu_svm="svm" in flags,
        cpu_npt="npt" in flags,
        kvm_amd_loaded=(_SYSFS_PARAMS / "kvm_amd").is_dir(),
        npt=_param("kvm_amd", "npt"),
        tdp_mmu=_param("kvm", "tdp_mmu"),
        nested=_param("kvm_amd", "nested"),
        dev_kvm=Path("/dev/kvm").exists(),
        kprobes=Path("/sys/kernel/tracing/kprobe_events").exists(),
        btf_vmlinux=Path("/sys/kernel/btf/vmlinux").exists(),
        btf_kvm=Path("/sys/kernel/btf/kvm").exists(),
        lru_gen=_read(Path("/sys/kernel/mm/lru_gen/enabled")),
        page_idle=Path("/sys/kernel/mm/page_idle/bitmap").exists(),
        headers=headers,
        disk=disk,
        swap_bytes=swap_bytes,
        problems=problems,
    )
    if facts.release != release:
        problems.append(f"booted {facts.release}, expected {release}")
    return facts


def prepare(release: str, headers: Path | None, common: Path | None, disk_bytes: int = 0,
            swap_bytes: int = 0) -> LabFacts:
    if not in_lab():
        raise UnsupportedError("kvmctl.lab.inside runs only inside a lab VM", "use 'kvmctl lab -- COMMAND' on the host")
    problems: list[str] = []
    mount_pseudo_filesystems(problems)
    load_kvm_amd(problems)
    built = link_headers(release, headers, common, problems)
    disk, swapped = make_disks(disk_bytes, swap_bytes, problems)
    return collect_facts(release, built, disk, swapped, problems)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kvmctl.lab.inside", allow_abbrev=False)
    p.add_argument("--scratch", type=Path, required=True)
    p.add_argument("--release", required=True)
    p.add_argument("--headers", type=Path)
    p.add_argument("--headers-common", type=Path)
    p.add_argument("--disk-bytes", type=int, default=0)
    p.add_argument("--swap-bytes", type=int, default=0)
    p.add_argument("--stall", type=float, default=0.0, help="end the command after this many seconds without output")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        facts = prepare(args.release, args.headers, args.headers_common, args.disk_bytes, args.swap_bytes)
    except KvmctlError as err:
        print(f"kvmctl: error: {err.one_line()}", file=sys.stderr)
        return int(err.exit_code)
    (args.scratch / FACTS_FILE).write_text(json.dumps(asdict(facts), indent=1) + "\n")
    for problem in facts.problems:
        print(f"kvmctl-lab: warning: {problem}", file=sys.stderr)
    print(f"{READY_MARKER} {facts.release} uptime={facts.uptime_s:.1f}s npt={facts.npt} tdp_mmu={facts.tdp_mmu}",
          file=sys.stderr, flush=True)
    if not command:
        return 0
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **{LAB_ENV: "1"})
    if facts.disk:
        env[TMPDIR_ENV] = facts.disk
    sys.stdout.flush()
    try:
        return run_watched(command, env, args.stall, args.scratch, kernel_log=True)
    except OSError as err:
        print(f"kvmctl: error: cannot run {command[0]}: {err.strerror} (check the command after --)",
              file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main())
