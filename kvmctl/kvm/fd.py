"""What the KVM objects share: one owned fd each, and ioctls that fail as KvmIoctlError."""

from __future__ import annotations

import os
from typing import Self

from kvmctl import libc
from kvmctl.errors import KvmIoctlError


def ioctl(fd: int, request: int, arg: int | None = 0, name: str = "ioctl") -> int:
    """ioctl(2) on a KVM fd; a failure names the ioctl and its errno."""
    try:
        return libc.ioctl(fd, request, arg)
    except OSError as err:
        raise KvmIoctlError(name, err.errno) from None


class FdOwner:
    """Owns one fd, ``self.fd`` (-1 once closed): :meth:`close` releases it, and so does leaving a ``with``.

    Subclasses that hold more (mappings, child fds) release those first and then call ``super().close()``.
    """

    fd: int = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
