"""Can this host run `kvmctl lab`?  One answer with a reason, for the CLI and tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from kvmctl.errors import KvmctlError, UnsupportedError
from kvmctl.lab.kernel import SETUP_HINT, LabKernel, lab_dir, stock_kernel

QEMU = "qemu-system-x86_64"


def find_qemu() -> Path:
    found = shutil.which(QEMU)
    if not found:
        raise UnsupportedError(f"{QEMU} is not installed (Debian package qemu-system-x86)", SETUP_HINT)
    return Path(found)


def find_vng() -> Path:
    """virtme-ng's ``vng``: its own venv in the lab dir first, then PATH."""
    venv = lab_dir() / "vng-venv" / "bin" / "vng"
    if venv.is_file():
        return venv
    found = shutil.which("vng")
    if not found:
        raise UnsupportedError("virtme-ng (vng) is not installed", SETUP_HINT)
    return Path(found)


def find_busybox() -> Path:
    # virtme-ng builds its initramfs around a static busybox.
    for cand in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if cand.is_file():
            return cand
    raise UnsupportedError("busybox is not installed (virtme-ng needs busybox-static)", SETUP_HINT)


def check_lab(kernel: LabKernel | None = None) -> LabKernel:
    """Raise UnsupportedError naming the first missing piece; return the kernel."""
    find_qemu()
    find_vng()
    find_busybox()
    return kernel or stock_kernel()


def lab_available() -> tuple[bool, str]:
    """(True, kernel release) or (False, one-line reason with the fix)."""
    try:
        kernel = check_lab()
    except KvmctlError as err:
        return False, err.one_line()
    return True, f"lab kernel {kernel.release}"
