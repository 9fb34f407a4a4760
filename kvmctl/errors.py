"""One exception hierarchy for the tool.

Every error a user can cause or a host can lack is a :class:`KvmctlError`
carrying a one-line message and a hint that says how to fix it. The CLI turns
them into ``kvmctl: error: <message> (<hint>)`` and the class's exit code; it
never prints a traceback for them.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Documented exit codes (README "Exit codes")."""

    OK = 0
    FAILURE = 1  # an operation failed at run time (KVM ioctl, I/O)
    USAGE = 2  # bad command line, spec file or report file
    UNSUPPORTED = 3  # the host lacks what the command needs
    GUEST_FAULT = 4  # the guest payload faulted, hung or exited wrongly
    PERMISSION = 5  # not root / cannot open a device
    INTERRUPTED = 130  # SIGINT (128 + 2)
    TERMINATED = 143  # SIGTERM (128 + 15)


class KvmctlError(Exception):
    """Base class: a message, a hint for the fix and an exit code."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split())


class UsageError(KvmctlError):
    """The user asked for something malformed or impossible."""

    exit_code = ExitCode.USAGE


class UnsupportedError(KvmctlError):
    """The host lacks a feature (module, capability, tracepoint, ager)."""

    exit_code = ExitCode.UNSUPPORTED


class PermissionDeniedError(KvmctlError):
    exit_code = ExitCode.PERMISSION


class KvmIoctlError(KvmctlError):
    """A KVM ioctl failed; carries the ioctl name and errno."""

    def __init__(self, name: str, errno_: int, hint: str | None = None):
        import os

        super().__init__(f"KVM ioctl {name} failed: {os.strerror(errno_)} (errno {errno_})", hint)
        self.ioctl = name
        self.errno = errno_


class GuestError(KvmctlError):
    """The guest did something other than the payload protocol allows.

    ``registers`` holds a snapshot of the vCPU registers when one was taken,
    so a report can show where the guest was.
    """

    exit_code = ExitCode.GUEST_FAULT

    def __init__(self, message: str, hint: str | None = None, registers: dict | None = None):
        super().__init__(message, hint)
        self.registers = registers or {}


class Interrupted(KvmctlError):
    """Raised from a signal handler so that cleanup runs on the way out."""

    def __init__(self, signum: int, hint: str | None = None):
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}",
                         hint or "host changes were undone; an experiment keeps its report, marked incomplete")
        self.signum = signum
        self.exit_code = ExitCode.INTERRUPTED if signum == signal.SIGINT else ExitCode.TERMINATED
