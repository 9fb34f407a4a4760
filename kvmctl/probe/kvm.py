"""KVM facts of the host: the vendor module behind /dev/kvm."""

from __future__ import annotations

from pathlib import Path

SYS_MODULE = Path("/sys/module")
VENDOR_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")


def kvm_module(sys_module: Path = SYS_MODULE) -> str | None:
    """The vendor module that backs /dev/kvm: kvm_intel, kvm_amd, kvm_pvm."""
    return next((name for name in VENDOR_MODULES if (sys_module / name).exists()), None)
