"""The running kernel: release, build configuration and lockdown mode."""

from __future__ import annotations

import functools
import gzip
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmctl.probe.item import Item, is_root, missing, ok, read

PROC_CONFIG = Path("/proc/config.gz")
BOOT_CONFIG = "/boot/config-{release}"
LOCKDOWN = Path("/sys/kernel/security/lockdown")
CMDLINE = Path("/proc/cmdline")


def parse_kconfig(text: str) -> dict[str, str]:
    """Kernel .config text -> {'CONFIG_X': 'y'|'m'|'n'|value}; 'is not set' becomes 'n'."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"# (CONFIG_\w+) is not set", line):
            out[m.group(1)] = "n"
        elif m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line):
            out[m.group(1)] = m.group(2).strip('"')
    return out


def parse_kernel_version(release: str) -> tuple[int, int, int]:
    """'6.18.44-fc-v669' -> (6, 18, 44); missing parts are 0."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def parse_bracketed_choice(text: str) -> str | None:
    """'none [integrity] confidentiality' -> 'integrity' (lockdown, THP modes)."""
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else None


@dataclass(frozen=True)
class KernelConfig:
    options: dict[str, str]
    source: str | None  # None when no config was found

    def get(self, name: str) -> str | None:
        return self.options.get(name)


@functools.cache
def kernel_config(release: str | None = None) -> KernelConfig:
    """The running kernel's build configuration: /proc/config.gz, else /boot/config-<release>."""
    release = release or platform.release()
    try:
        return KernelConfig(parse_kconfig(gzip.decompress(PROC_CONFIG.read_bytes()).decode()), str(PROC_CONFIG))
    except (OSError, EOFError, gzip.BadGzipFile):
        pass
    boot = Path(BOOT_CONFIG.format(release=release))
    text, _ = read(boot)
    if text is not None:
        return KernelConfig(parse_kconfig(text), str(boot))
    return KernelConfig({}, None)


@dataclass(frozen=True)
class KernelInfo:
    release: str
    version: tuple[int, int, int]
    machine: str
    root: bool
    config: KernelConfig

    @property
    def config_source(self) -> str | None:
        return self.config.source

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "version": ".".join(map(str, self.version)), "machine": self.machine,
                "root": self.root, "config_source": self.config_source}


def probe_kernel_info() -> KernelInfo:
    release = platform.release()
    return KernelInfo(release, parse_kernel_version(release), platform.machine(), is_root(), kernel_config(release))


def _lockdown_via_private_mount() -> str | None:
    """securityfs is not mounted: mount it in a private mount namespace that dies with the command."""
    if not is_root() or not shutil.which("unshare"):
        return None
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount -t securityfs securityfs {LOCKDOWN.parent} && cat {LOCKDOWN}"],
                              capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def probe_lockdown(config: KernelConfig) -> Item:
    """The lockdown mode (none, integrity, confidentiality), read from securityfs or inferred from the boot."""
    text, _ = read(LOCKDOWN)
    source = str(LOCKDOWN)
    if text is None and (text := _lockdown_via_private_mount()) is not None:
        source = f"{LOCKDOWN} (securityfs mounted in a private mount namespace)"
    if text is not None and (mode := parse_bracketed_choice(text)):
        return ok(mode, source=source)
    forced = next((m for m in ("confidentiality", "integrity", "none")
                   if config.get(f"CONFIG_LOCK_DOWN_KERNEL_FORCE_{m.upper()}") == "y"), None)
    cmdline = re.search(r"\blockdown=(\w+)", read(CMDLINE)[0] or "")
    mode = cmdline.group(1) if cmdline else forced
    if mode:
        return ok(mode, source=str(CMDLINE) if cmdline else config.source,
                  reason=f"{LOCKDOWN} is unreadable; mode inferred from the boot configuration")
    if config.source is not None and config.get("CONFIG_SECURITY_LOCKDOWN_LSM") != "y":
        return ok("none", source=config.source, reason="the kernel is built without the lockdown LSM "
                                                       "(CONFIG_SECURITY_LOCKDOWN_LSM is not set)")
    return missing(f"cannot read {LOCKDOWN}", "mount -t securityfs securityfs /sys/kernel/security", "unknown",
                   str(LOCKDOWN))
