"""Loading ebpf/*.c with BCC: preflight checks and the kernel headers BCC compiles against.

The host probe finds the headers (:func:`kvmctl.probe.bpf.find_headers`).
Exact headers for the running kernel live at /lib/modules/<release>/build
and BCC finds them itself. Debian's fallback headers are split into an arch
tree and a common tree: :func:`kernel_source_env` merges the two with
symlinks in a private temporary directory and points BCC_KERNEL_SOURCE at it
for the compile, never touching /lib/modules. Tracepoint programs only read
their own records, whose layout BCC takes from the tracefs format files, so
mismatched headers are safe for them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmctl.errors import KvmctlError, PermissionDeniedError, UnsupportedError
from kvmctl.probe.bpf import Headers, find_headers
from kvmctl.probe.tracing import require_tracefs


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionDeniedError("loading BPF programs needs root", "run kvmctl as root (sudo)")


def import_bcc():
    """BCC's Python module (Debian python3-bpfcc), or UnsupportedError."""
    try:
        import bcc  # noqa: PLC0415 - optional dependency, imported only when tracing
    except ImportError:
        raise UnsupportedError(
            "BCC's Python module is not importable",
            "apt-get install python3-bpfcc bpfcc-tools, and make the venv with --system-site-packages "
            "(never pip-install the unrelated PyPI package 'bcc')",
        ) from None
    if not hasattr(bcc, "BPF"):
        raise UnsupportedError(f"the 'bcc' module at {getattr(bcc, '__file__', '?')} is not BCC",
                               "pip uninstall bcc (an unrelated PyPI package) and apt-get install python3-bpfcc")
    return bcc


def merge_trees(dest: Path, trees: list[Path], depth: int = 4) -> None:
    """Populate ``dest`` with symlinks so it reads as the union of ``trees``.

    Directories present in several trees are merged recursively (Debian puts
    include/generated in the arch tree and include/linux in the common tree);
    for anything else the first tree wins.
    """
    dest.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[Path]] = {}
    for tree in trees:
        if tree.is_dir():
            for entry in tree.iterdir():
                entries.setdefault(entry.name, []).append(entry)
    for name, paths in entries.items():
        if depth > 0 and len(paths) > 1 and all(p.is_dir() for p in paths):
            merge_trees(dest / name, paths, depth - 1)
        else:
            (dest / name).symlink_to(paths[0])


@contextlib.contextmanager
def kernel_source_env(headers: Headers) -> Iterator[None]:
    """Point BCC at ``headers`` for the duration of a compile."""
    if headers.bcc_finds_them:
        yield  # BCC finds /lib/modules/<release>/build{,source} and kheaders itself
        return
    tmp = Path(tempfile.mkdtemp(prefix="kvmctl-kheaders-"))
    saved = os.environ.get("BCC_KERNEL_SOURCE")
    try:
        trees = [headers.build] + ([headers.source] if headers.source else [])
        merge_trees(tmp / "tree", trees)
        os.environ["BCC_KERNEL_SOURCE"] = str(tmp / "tree")
        yield
    finally:
        if saved is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


def ebpf_dir() -> Path:
    """The directory holding the programs (ebpf/ at the top of the source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "ebpf", here / "ebpf"):
        if (candidate / "aging.c").is_file():
            return candidate
    raise UnsupportedError("the BPF programs (ebpf/*.c) are not installed next to kvmctl",
                           "run kvmctl from its source tree (pip install -e .)")


@dataclass
class LoadedProgram:
    """A compiled BCC module and what was said while building it."""

    name: str
    bpf: object  # bcc.BPF
    notes: list[str]


def load_program(name: str, cflags: list[str], headers: Headers | None = None) -> LoadedProgram:
    """Compile and load ebpf/<name> with BCC; its tracepoint programs attach at once.

    The programs count nothing until Python opens their window
    (config START_NS/END_NS), so attaching at load time is harmless.
    """
    require_root()
    require_tracefs()
    bcc = import_bcc()
    headers = headers or find_headers()
    src = ebpf_dir() / name
    flags = [f"-I{src.parent}"] + list(cflags)
    with kernel_source_env(headers):
        try:
            bpf = bcc.BPF(src_file=str(src).encode(), cflags=flags)
        except KvmctlError:  # Interrupted by a signal mid-compile: not the kernel's verdict
            raise
        except Exception as err:  # BCC raises bare Exception for compile, load and attach failures
            text = str(err)
            if "Failed to compile" in text:
                raise KvmctlError(f"BCC could not compile {src.name} against headers {headers.release}",
                                  "see the compiler messages above; install linux-headers-amd64") from None
            if "Failed to attach" in text or "No such file" in text:
                raise UnsupportedError(f"{src.name}: a tracepoint could not be attached ({text})",
                                       "run 'kvmctl info' to see which tracepoints this kernel has") from None
            raise KvmctlError(f"the kernel rejected {src.name}: {text}",
                              "see the verifier log above; rerun with a smaller size option") from None
    notes = [n for n in (headers.note(),) if n]
    return LoadedProgram(name, bpf, notes)
