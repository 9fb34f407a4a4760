"""Output files written safely: atomically, 0644, never through a symlink.

kvmctl runs as root, often under sudo, and writes into directories users
control. A report must never be half-written (a reader sees the old file or
the new one), never follow a symlink planted at the output path (that would
let anyone overwrite a file of root's choosing), and end up owned by the user
who invoked sudo.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from kvmctl.errors import KvmctlError, PermissionDeniedError, UsageError

FILE_MODE = 0o644


def _sudo_owner() -> tuple[int, int] | None:
    """(uid, gid) of the user who ran sudo, when we are root under sudo."""
    if os.geteuid() != 0:
        return None
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if not uid.isdigit():
        return None
    return int(uid), int(gid) if gid.isdigit() else -1


def _check_target(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(
            f"refusing to write {path}: it is a symbolic link",
            "remove the link or choose another output path",
        )
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"refusing to write {path}: it is not a regular file", "choose another output path")


def _os_error(path: Path, err: OSError) -> KvmctlError:
    if err.errno in (errno.EACCES, errno.EPERM):
        return PermissionDeniedError(f"cannot write {path}: permission denied", "choose a writable directory")
    if err.errno == errno.ENOENT:
        return UsageError(f"cannot write {path}: directory {path.parent} does not exist", "create it first")
    if err.errno == errno.ENOSPC:
        return KvmctlError(f"cannot write {path}: no space left on device", "free space or write elsewhere")
    if err.errno == errno.EROFS:
        return KvmctlError(f"cannot write {path}: read-only file system", "write to a writable file system")
    return KvmctlError(f"cannot write {path}: {os.strerror(err.errno or 0)}", "check the output path")


def check_writable(path: str | Path) -> Path:
    """Fail before a long run, not after it: the directory exists and takes files, the target is no link."""
    path = Path(path)
    _check_target(path)
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(f"cannot write {path}: directory {directory} does not exist", "create it first")
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        raise UsageError(f"cannot write {path}: {directory} is on a read-only file system",
                         "write the report to a writable file system")
    if not os.access(directory, os.W_OK):
        raise PermissionDeniedError(f"cannot write {path}: permission denied", "choose a writable directory")
    return path


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file + fsync + rename."""
    path = Path(path)
    _check_target(path)
    directory = path.parent
    tmp: str | None = None
    try:
        # mkstemp opens with O_CREAT|O_EXCL|O_NOFOLLOW in the target directory
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            owner = _sudo_owner()
            if owner:
                os.fchown(f.fileno(), *owner)
            os.fsync(f.fileno())
        _check_target(path)  # narrow the window; rename replaces, never follows, a link
        os.rename(tmp, path)
        tmp = None
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as err:
        raise _os_error(path, err) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    return path
