"""Which kernel a lab boots: the stock Debian kernel, a bzImage or a build tree.

The stock kernel is unpacked (never installed) by scripts/setup-lab.sh into
the lab directory, so the host's /boot and bootloader are never touched.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kvmctl.errors import UnsupportedError, UsageError

SETUP_HINT = "run scripts/setup-lab.sh"
DEFAULT_LAB_DIR = Path("/var/lib/kvmctl/lab")
LAB_DIR_ENV = "KVMCTL_LAB_DIR"
HEADERS_ROOT = Path("/usr/src")
BZIMAGE_PATH = Path("arch/x86/boot/bzImage")

# x86 boot protocol (Documentation/arch/x86/boot.rst): "HdrS" at 0x202, the
# protocol version at 0x206 and kernel_version (a pointer minus 0x200) at 0x20e.
_HDRS_OFFSET = 0x202
_KERNEL_VERSION_PTR = 0x20E
_SETUP_SECTOR = 0x200
_RELEASE_RE = re.compile(rb"^(\S+)")


class KernelSource(enum.Enum):
    STOCK = "stock"
    IMAGE = "image"  # a bare bzImage / vmlinuz
    TREE = "tree"  # a kernel build tree (arch/x86/boot/bzImage + modules)


@dataclass(frozen=True)
class LabKernel:
    """A kernel the lab can boot, with where its modules and headers are."""

    source: KernelSource
    image: Path
    release: str
    modules: Path | None  # lib/modules/<release> holding kvm-amd.ko, or None if built in / absent
    headers: Path | None  # what /lib/modules/<release>/build must point at for BCC
    headers_common: Path | None  # Debian splits headers into -amd64 and -common (.../source)

    @property
    def tree(self) -> Path | None:
        return self.image.parents[3] if self.source is KernelSource.TREE else None


def lab_dir() -> Path:
    return Path(os.environ.get(LAB_DIR_ENV, DEFAULT_LAB_DIR))


def bzimage_release(image: Path) -> str:
    """The kernel release string ("6.1.0-56-amd64") stored in a bzImage header."""
    try:
        with image.open("rb") as f:
            head = f.read(0x4000)
            if head[_HDRS_OFFSET:_HDRS_OFFSET + 4] != b"HdrS":
                raise UsageError(f"{image} is not an x86 bzImage (no HdrS boot header)",
                                 "pass arch/x86/boot/bzImage, a vmlinuz or a kernel build tree")
            ptr = int.from_bytes(head[_KERNEL_VERSION_PTR:_KERNEL_VERSION_PTR + 2], "little")
            if ptr == 0:
                raise UsageError(f"{image} has no kernel version string", "pass a bzImage built by Kbuild")
            f.seek(ptr + _SETUP_SECTOR)
            raw = f.read(256)
    except OSError as err:
        raise UsageError(f"cannot read kernel image {image}: {err.strerror}", "check the path given to --kernel") from err
    m = _RELEASE_RE.match(raw)
    if not m:
        raise UsageError(f"{image} has an empty kernel version string", "pass a bzImage built by Kbuild")
    return m.group(1).decode("ascii", "replace")


def debian_headers(release: str, root: Path = HEADERS_ROOT) -> tuple[Path | None, Path | None]:
    """Debian's split header trees for a release: (linux-headers-R, linux-headers-<abi>-common)."""
    arch_dir = root / f"linux-headers-{release}"
    if not (arch_dir / "Makefile").exists():
        return None, None
    # 6.1.0-56-amd64 -> 6.1.0-56-common
    common = root / f"linux-headers-{release.rsplit('-', 1)[0]}-common"
    return arch_dir, common if common.is_dir() else None


def _modules_beside(root: Path, release: str) -> Path | None:
    moddir = root / "lib" / "modules" / release
    return moddir if (moddir / "kernel").is_dir() else None


def stock_kernel(base: Path | None = None) -> LabKernel:
    """The Debian kernel unpacked by scripts/setup-lab.sh (``<lab dir>/stock``)."""
    base = base or lab_dir()
    root = base / "stock"
    images = sorted((root / "boot").glob("vmlinuz-*")) if root.is_dir() else []
    if not images:
        raise UnsupportedError(f"no stock lab kernel under {root}", SETUP_HINT)
    image = images[-1].resolve()
    release = image.name.removeprefix("vmlinuz-")
    modules = _modules_beside(root.resolve(), release)
    if modules is None:
        raise UnsupportedError(f"the stock lab kernel {release} has no modules tree", SETUP_HINT)
    headers, common = debian_headers(release)
    if headers is None:
        raise UnsupportedError(f"headers for the lab kernel {release} are missing (BCC needs them)", SETUP_HINT)
    return LabKernel(KernelSource.STOCK, image, release, modules, headers, common)


def user_kernel(path: Path) -> LabKernel:
    """A kernel named by --kernel: a build tree or a bzImage/vmlinuz file."""
    path = path.expanduser()
    if not path.exists():
        raise UsageError(f"kernel {path} does not exist", "give a bzImage or a kernel build tree to --kernel")
    if path.is_dir():
        image = path / BZIMAGE_PATH
        if not image.is_file():
            raise UsageError(f"{path} has no {BZIMAGE_PATH}", "build it first: make -j$(nproc) bzImage modules")
        if not (path / ".config").is_file():
            raise UsageError(f"{path} is not a kernel build tree (no .config)", "pass the tree you ran make in")
        release = (path / "include/config/kernel.release").read_text().strip() \
            if (path / "include/config/kernel.release").is_file() else bzimage_release(image)
        # virtme-ng links the tree's built modules itself; a tree is its own header tree.
        modules = path if any(path.glob("arch/x86/kvm/*.ko")) else None
        return LabKernel(KernelSource.TREE, image.resolve(), release, modules, path.resolve(), None)
    image = path.resolve()
    release = bzimage_release(image)
    # A Debian-style unpacked package: <root>/boot/vmlinuz-R next to <root>/lib/modules/R.
    modules = _modules_beside(image.parent.parent, release) if image.parent.name == "boot" else None
    headers, common = debian_headers(release)
    return LabKernel(KernelSource.IMAGE, image, release, modules, headers, common)


def resolve_kernel(spec: str | None) -> LabKernel:
    """``None`` or "stock" -> the stock kernel; anything else is a path."""
    if spec is None or spec == "stock":
        return stock_kernel()
    return user_kernel(Path(spec))
