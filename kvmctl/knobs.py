"""Kernel knobs (cgroupfs, sysfs, debugfs files): read and written with one set of error rules.

A knob acts on every write() separately, so a value goes out in one call,
the way ``echo value > knob`` does it. A failure becomes a KvmctlError that
names the file: permission (run as root), a knob this kernel lacks, or the
kernel's refusal with its errno (:class:`KnobError`), which callers inspect
(EBUSY: a limit reclaim could not reach; ESRCH: a process that exited).
"""

from __future__ import annotations

import os
from pathlib import Path

from kvmctl.errors import KvmctlError, PermissionDeniedError, UnsupportedError

ROOT_HINT = "run kvmctl as root"


class KnobError(KvmctlError):
    """The kernel refused a knob write (or a cgroup operation); ``errno`` says why."""

    def __init__(self, message: str, hint: str, errno_: int):
        super().__init__(message, hint)
        self.errno = errno_


def read_knob(path: Path, missing_ok: bool = False, missing_hint: str = "this kernel lacks that knob") -> str | None:
    """The knob's text; None for an absent knob when ``missing_ok``."""
    try:
        return path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise UnsupportedError(f"{path} does not exist", missing_hint) from None
    except PermissionError:
        raise PermissionDeniedError(f"cannot read {path}", ROOT_HINT) from None


def write_knob(path: Path, value: str, hint: str = "see the kernel log (dmesg)") -> None:
    """Write ``value`` in one write() call; ``hint`` explains a refusal by the kernel."""
    try:
        # O_TRUNC is a no-op on kernfs and keeps fake trees in tests honest.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except PermissionError:
        raise PermissionDeniedError(f"cannot write {path}", ROOT_HINT) from None
    except FileNotFoundError:
        raise UnsupportedError(f"{path} does not exist", "this kernel lacks that knob") from None
    except OSError as err:
        raise KnobError(f"writing {value.strip()!r} to {path} failed: {err.strerror}", hint, err.errno) from None
